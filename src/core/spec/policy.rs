//! Where secrets may come from: the operator's rule for `passwordFile` and
//! `passwordEnv`.
//!
//! A spec file is written by whoever can push to the repository, and the
//! managed file is read by Asterisk: without a rule, `passwordFile:
//! /etc/shadow` or `passwordEnv: ASTERISK_GITOPS_ADMIN_TOKEN` would copy a
//! host secret into it. So:
//!
//! - `passwordFile` is a path relative to the secrets directory (config
//!   `secrets.dir`, default the spec directory's `secrets/`): never
//!   absolute, never `..`, and it must resolve (symlinks followed) inside
//!   that directory — checked when the specs load and again when the file
//!   is read at render time;
//! - `passwordEnv` names a variable matching `secrets.envPattern` (a glob,
//!   default `EXT_*`), and never one of the daemon's own
//!   (`ASTERISK_GITOPS_*`, `DATABASE_URL`), whatever the pattern says.
//!
//! The static rules ([`file_path`], [`reserved_env`]) need no
//! configuration and are checked by `resolve` (so the HTTP API refuses
//! them too); the configured ones by [`SecretPolicy`] while loading.

use std::path::{Path, PathBuf};

/// The static rules and the symlink check live in `secret` (a leaf), beside
/// the code that reads a secret; re-exported here, where the spec uses them.
pub use crate::secret::{Refused as PolicyError, contained, file_path, reserved_env};

/// The default `secrets.envPattern`.
pub const DEFAULT_ENV_PATTERN: &str = "EXT_*";

/// The operator's rule for secrets named in spec files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretPolicy {
    /// `passwordFile` paths are relative to this directory.
    pub dir: PathBuf,
    /// `passwordEnv` names must match this glob (`*` any run, `?` one character).
    pub env_pattern: String,
}

impl SecretPolicy {
    /// The default for a spec directory: its `secrets/`, and `EXT_*`.
    pub fn for_spec_dir(spec_dir: &Path) -> Self {
        SecretPolicy { dir: spec_dir.join("secrets"), env_pattern: DEFAULT_ENV_PATTERN.into() }
    }

    /// Whether the configured pattern allows this variable (the reserved
    /// names are refused by [`reserved_env`] before this is asked).
    pub fn check_env(&self, name: &str) -> Result<(), PolicyError> {
        if glob(&self.env_pattern, name) {
            Ok(())
        } else {
            Err(PolicyError::EnvPattern { name: name.to_string(), pattern: self.env_pattern.clone() })
        }
    }

    /// Where a `passwordFile` (already checked by [`file_path`]) points,
    /// and whether it stays inside the secrets directory once symlinks are
    /// followed. A file that does not exist yet is not an error here (the
    /// render says it is missing); one that leads outside is.
    pub fn check_file(&self, relative: &Path) -> Result<(), PolicyError> {
        match contained(&self.dir, relative) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PolicyError::Unresolvable(e.to_string())),
        }
    }
}

/// A glob over the whole name: `*` matches any run (also empty), `?` one
/// character, everything else itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut ni, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob("EXT_*", "EXT_1001_PASSWORD"));
        assert!(glob("EXT_*", "EXT_"));
        assert!(!glob("EXT_*", "XEXT_1"));
        assert!(!glob("EXT_*", "ASTERISK_GITOPS_ADMIN_TOKEN"));
        assert!(glob("*_PASSWORD", "EXT_1_PASSWORD"));
        assert!(glob("EXT_????", "EXT_1001"));
        assert!(!glob("EXT_????", "EXT_10011"));
        assert!(glob("*", "ANY"));
    }

    #[test]
    fn paths_stay_relative_and_inside() {
        let paths = [("3001.password", true), ("lobby/3001.password", true), ("/etc/hostname", false)];
        let more = [("../outside.txt", false), ("a/../../b", false)];
        for (path, ok) in paths.into_iter().chain(more) {
            assert_eq!(file_path(path).is_ok(), ok, "{path}");
        }
        for (name, ok) in [("ASTERISK_GITOPS_ADMIN_TOKEN", false), ("DATABASE_URL", false), ("EXT_1001", true)] {
            assert_eq!(reserved_env(name).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn a_symlink_out_of_the_secrets_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).expect("mkdir");
        std::fs::write(dir.path().join("outside.txt"), "host secret\n").expect("write");
        std::fs::write(secrets.join("inside.txt"), "pw\n").expect("write");
        std::os::unix::fs::symlink(dir.path().join("outside.txt"), secrets.join("link.txt")).expect("symlink");
        std::os::unix::fs::symlink("inside.txt", secrets.join("ok-link.txt")).expect("symlink");
        let policy = SecretPolicy { dir: secrets.clone(), env_pattern: DEFAULT_ENV_PATTERN.into() };
        assert!(policy.check_file(Path::new("inside.txt")).is_ok());
        assert!(policy.check_file(Path::new("ok-link.txt")).is_ok());
        assert!(policy.check_file(Path::new("missing.txt")).is_ok(), "missing is the render's error");
        let err = policy.check_file(Path::new("link.txt")).expect_err("leads outside").to_string();
        assert!(err.contains("outside the secrets directory"), "{err}");
        let e = contained(&secrets, Path::new("link.txt")).expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    }
}
