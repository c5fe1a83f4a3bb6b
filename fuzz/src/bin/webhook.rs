//! Fuzz target `webhook`: see `asterisk_gitops::fuzzing::webhook` for what it feeds and checks.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        asterisk_gitops::fuzzing::webhook(data);
    });
}
