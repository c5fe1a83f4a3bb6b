//! Secrets: hashing passwords into md5Cred, and reading `passwordEnv` /
//! `passwordFile` when the config is rendered.
//!
//! Architecture invariant: no error, log line or `Debug` output of this
//! module contains a secret's value; errors name the extension and where
//! the secret was looked for, never what was found.

use crate::spec::{Extension, Secret, check};
use md5::{Digest as _, Md5};
use std::path::Path;

/// The realm Asterisk uses for digest auth unless configured otherwise.
pub const DEFAULT_REALM: &str = "asterisk";

/// md5("EXTENSION:REALM:PASSWORD") in lower-case hex: pjsip's `md5_cred`.
pub fn md5_cred(extension: &str, realm: &str, password: &str) -> String {
    let digest = Md5::digest(format!("{extension}:{realm}:{password}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// An md5Cred digest read back from Asterisk: compared, never shown.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Digest(String);

impl Digest {
    pub fn new(md5: String) -> Self {
        Digest(md5.to_ascii_lowercase())
    }

    /// Compares in constant time.
    pub fn matches(&self, md5: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(md5.to_ascii_lowercase().as_bytes()).into()
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(<redacted>)")
    }
}

/// Where secrets named by `passwordEnv` and `passwordFile` come from.
/// The process environment and file system in production; a map in tests.
pub trait SecretSource: Sync {
    fn env(&self, name: &str) -> Option<String>;
    /// The file `path` (relative) under the secrets directory `dir`.
    fn file(&self, dir: &Path, path: &Path) -> std::io::Result<String>;
}

/// Reads the process environment and the file system.
pub struct ProcessSecrets;

impl SecretSource for ProcessSecrets {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    /// Resolves symlinks again now (the specs were checked when they
    /// loaded; the file system may have changed since): a path that leads
    /// out of `dir` is refused, never read.
    fn file(&self, dir: &Path, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(crate::spec::policy::contained(dir, path)?)
    }
}

/// The credential pjsip's auth section gets.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthCredential {
    /// `auth_type = userpass`, `password = …`
    UserPass(String),
    /// `auth_type = md5`, `md5_cred = …`
    Md5(String),
}

impl std::fmt::Debug for AuthCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthCredential::UserPass(_) => f.write_str("UserPass(<redacted>)"),
            AuthCredential::Md5(_) => f.write_str("Md5(<redacted>)"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("extension {extension}: environment variable {name} (passwordEnv) is not set")]
    EnvMissing { extension: String, name: String },
    #[error("extension {extension}: environment variable {name} (passwordEnv) is empty")]
    EnvEmpty { extension: String, name: String },
    #[error("extension {extension}: cannot read passwordFile {path}: {reason}")]
    FileUnreadable { extension: String, path: String, reason: String },
    #[error("extension {extension}: passwordFile {path} is empty")]
    FileEmpty { extension: String, path: String },
    #[error("extension {extension}: {field} {name} is not allowed (one of the daemon's own variables)")]
    NotAllowed { extension: String, field: &'static str, name: String },
    #[error("extension {extension}: the password from {origin} is not usable in pjsip.conf: {reason}")]
    Unsafe { extension: String, origin: String, reason: String },
}

/// Resolves an extension's secret into what its auth section needs.
/// A missing or empty secret is an error, never an empty password.
pub fn credential(ext: &Extension, source: &dyn SecretSource) -> Result<AuthCredential, SecretError> {
    let extension = ext.extension.clone();
    let checked = |password: String, origin: String| -> Result<AuthCredential, SecretError> {
        // The value is never part of the error: only why it is refused.
        check::line_safe(&password, check::MAX_TEXT).map_err(|reason| SecretError::Unsafe {
            extension: ext.extension.clone(),
            origin,
            reason: redact_reason(&reason),
        })?;
        Ok(AuthCredential::UserPass(password))
    };
    match &ext.secret {
        Secret::Password(p) => checked(p.clone(), "password".into()),
        Secret::Md5Cred(h) => Ok(AuthCredential::Md5(h.clone())),
        Secret::PasswordEnv(name) if crate::spec::policy::reserved_env(name).is_err() => {
            Err(SecretError::NotAllowed { extension, field: "passwordEnv", name: name.clone() })
        }
        Secret::PasswordEnv(name) => match source.env(name) {
            None => Err(SecretError::EnvMissing { extension, name: name.clone() }),
            Some(v) if v.is_empty() => Err(SecretError::EnvEmpty { extension, name: name.clone() }),
            Some(v) => checked(v, format!("environment variable {name}")),
        },
        Secret::PasswordFile { dir, path } => {
            let shown = dir.join(path).display().to_string();
            let text = source.file(dir, path).map_err(|e| SecretError::FileUnreadable {
                extension: extension.clone(),
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            // A trailing newline is how editors and `echo` save a file; it is not part of the password.
            let password =
                text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string();
            if password.is_empty() {
                return Err(SecretError::FileEmpty { extension, path: shown });
            }
            checked(password, format!("file {shown}"))
        }
    }
}

/// `line_safe` reasons name a character class or a length, never the value;
/// this keeps it that way even if that function changes.
fn redact_reason(reason: &str) -> String {
    if reason.contains("characters long") { "it is too long".into() } else { reason.to_string() }
}

/// A secret string (an AMI secret, a token, a password from the config):
/// usable, never printed. A leaf type every layer may use.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `scheme://user:password@host/db` → `scheme://user:***@host/db`, for
/// logs, errors and status.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_cred_matches_the_capture() {
        // shared/asterisk/config/pjsip_gitops.conf: extension 1002 registered
        // with this md5_cred, and the seed's password, under realm "asterisk".
        assert_eq!(md5_cred("1002", DEFAULT_REALM, "Soundz2025"), "281036cc5c24788fe74c0ae5d9c07baf");
        assert_ne!(md5_cred("1002", "other-realm", "Soundz2025"), "281036cc5c24788fe74c0ae5d9c07baf");
    }

    #[test]
    fn debug_never_shows_a_password() {
        let shown = format!("{:?}", AuthCredential::UserPass("Soundz2025".into()));
        assert!(!shown.contains("Soundz2025"));
    }
}
