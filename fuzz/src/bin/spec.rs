//! Fuzz target `spec`: see `asterisk_gitops::fuzzing::spec` for what it feeds and checks.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        asterisk_gitops::fuzzing::spec(data);
    });
}
