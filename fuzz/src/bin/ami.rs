//! Fuzz target `ami`: see `asterisk_gitops::fuzzing::ami` for what it feeds and checks.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        asterisk_gitops::fuzzing::ami(data);
    });
}
