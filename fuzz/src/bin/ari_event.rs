//! Fuzz target `ari_event`: see `asterisk_gitops::fuzzing::ari_event` for what it feeds and checks.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        asterisk_gitops::fuzzing::ari_event(data);
    });
}
