//! The `asterisk-gitops` binary: see `asterisk_gitops::cli`.

fn main() -> std::process::ExitCode {
    one_malloc_arena();
    asterisk_gitops::cli::main()
}

/// glibc gives each thread that allocates its own malloc arena (up to 8 per
/// core). tokio moves tasks between its threads, so memory allocated in one
/// thread's arena is freed from another's, and each arena's free space is
/// fragmented by the few chunks still live in it: under the soak the arenas'
/// mapped size grew about 2 MB a minute while the live heap stayed at 5 MB
/// (BENCHMARKS.md, "The RSS growth, found: glibc's per-thread arenas").
/// With one arena the freed memory coalesces and RSS stays flat.
/// `MALLOC_ARENA_MAX` in the environment still wins. Called before any
/// thread exists.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; no thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
