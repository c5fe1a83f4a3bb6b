//! The `asterisk-gitops` binary: see `asterisk_gitops::cli`.

fn main() -> std::process::ExitCode {
    asterisk_gitops::cli::main()
}
