//! Secrets: hashing passwords into md5Cred, and reading `passwordEnv` /
//! `passwordFile` when the config is rendered.
//!
//! Architecture invariant: no error, log line or `Debug` output of this
//! module contains a secret's value; errors name the extension and where
//! the secret was looked for, never what was found.
//!
//! A leaf: it uses nothing else of the crate, so every layer may use it.
//! The static rules for where a secret may be named ([`file_path`],
//! [`reserved_env`]) and where a `passwordFile` really points
//! ([`contained`]) live here, beside the code that reads it.

use md5::{Digest as _, Md5};
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// The secret an extension authenticates with.
///
/// `Debug` never prints a password: this type may end up in a log line.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A plain-text password (seed compatible; flagged by `--strict`).
    Password(String),
    /// md5("EXTENSION:REALM:PASSWORD"), lower-case hex.
    Md5Cred(String),
    /// The password is in this environment variable at render time.
    PasswordEnv(String),
    /// The password is in the file `path` (relative, no `..`) under the
    /// secrets directory `dir` at render time; it must resolve inside `dir`
    /// (see [`contained`]). `dir` is empty until the loader sets it.
    PasswordFile { dir: PathBuf, path: PathBuf },
}

impl Secret {
    /// The field name that declares this kind of secret.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Password(_) => "password",
            Secret::Md5Cred(_) => "md5Cred",
            Secret::PasswordEnv(_) => "passwordEnv",
            Secret::PasswordFile { .. } => "passwordFile",
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Password(<redacted>)"),
            Secret::Md5Cred(_) => f.write_str("Md5Cred(<redacted>)"),
            Secret::PasswordEnv(name) => f.debug_tuple("PasswordEnv").field(name).finish(),
            Secret::PasswordFile { dir, path } => {
                f.debug_struct("PasswordFile").field("dir", dir).field("path", path).finish()
            }
        }
    }
}

/// Why a `passwordEnv` or `passwordFile` may not be used. The texts name
/// the variable or the path, never a secret's value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("{0:?} is absolute: write a path relative to the secrets directory (secrets.dir in the config file)")]
    AbsolutePath(String),
    #[error("{0:?} contains `..`: a passwordFile stays inside the secrets directory")]
    ParentDir(String),
    #[error("{0:?} is absolute: write a path relative to the secrets directory")]
    RootComponent(String),
    #[error(
        "passwordEnv {0:?} is one of the daemon's own variables (ASTERISK_GITOPS_*, DATABASE_URL): \
         a spec file may not read it"
    )]
    ReservedEnv(String),
    #[error(
        "passwordEnv {name:?} does not match the allowed pattern {pattern:?} (secrets.envPattern in the config file)"
    )]
    EnvPattern { name: String, pattern: String },
    #[error("{0}")]
    Unresolvable(String),
}

/// The rules a `passwordFile` path meets whatever the configuration:
/// relative, with no `..` and no root or drive prefix.
pub fn file_path(path: &str) -> Result<(), Refused> {
    let p = Path::new(path);
    if p.is_absolute() || path.starts_with('/') || path.starts_with('\\') {
        return Err(Refused::AbsolutePath(path.to_string()));
    }
    for c in p.components() {
        match c {
            Component::ParentDir => return Err(Refused::ParentDir(path.to_string())),
            Component::RootDir | Component::Prefix(_) => return Err(Refused::RootComponent(path.to_string())),
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(())
}

/// The daemon's own variables: never a `passwordEnv`, whatever the pattern.
pub fn reserved_env(name: &str) -> Result<(), Refused> {
    if name.starts_with("ASTERISK_GITOPS_") || name == "DATABASE_URL" {
        Err(Refused::ReservedEnv(name.to_string()))
    } else {
        Ok(())
    }
}

/// `dir/relative` with symlinks resolved, if it lies inside `dir` (also
/// resolved); an error of kind `PermissionDenied` if it leads outside,
/// `NotFound` if it does not exist.
pub fn contained(dir: &Path, relative: &Path) -> std::io::Result<PathBuf> {
    if let Err(e) = file_path(&relative.to_string_lossy()) {
        return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string()));
    }
    let real = std::fs::canonicalize(dir.join(relative))?;
    let base = std::fs::canonicalize(dir)?;
    if real.starts_with(&base) && real != base {
        Ok(real)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} leads outside the secrets directory {} (a symlink?)", relative.display(), dir.display()),
        ))
    }
}

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
        std::fs::read_to_string(contained(dir, path)?)
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

/// What a secret belongs to: the extension number it authenticates, and
/// the secret itself (`spec::Extension` is one).
pub trait Owner {
    fn number(&self) -> &str;
    fn secret(&self) -> &Secret;
}

/// Resolves an extension's secret into what its auth section needs.
/// A missing or empty secret is an error, never an empty password.
///
/// The value is not checked against pjsip.conf's line rules here (this
/// module is a leaf and knows no spec rule): the renderer checks every
/// credential it prints (`render::credential`, [`SecretError::Unsafe`]).
pub fn credential(owner: &(impl Owner + ?Sized), source: &dyn SecretSource) -> Result<AuthCredential, SecretError> {
    let extension = owner.number().to_string();
    match owner.secret() {
        Secret::Password(p) => Ok(AuthCredential::UserPass(p.clone())),
        Secret::Md5Cred(h) => Ok(AuthCredential::Md5(h.clone())),
        Secret::PasswordEnv(name) if reserved_env(name).is_err() => {
            Err(SecretError::NotAllowed { extension, field: "passwordEnv", name: name.clone() })
        }
        Secret::PasswordEnv(name) => match source.env(name) {
            None => Err(SecretError::EnvMissing { extension, name: name.clone() }),
            Some(v) if v.is_empty() => Err(SecretError::EnvEmpty { extension, name: name.clone() }),
            Some(v) => Ok(AuthCredential::UserPass(v)),
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
            Ok(AuthCredential::UserPass(password))
        }
    }
}

/// Where a plain password came from, for [`SecretError::Unsafe`]: the
/// field, the variable or the file, never the value.
pub fn origin(secret: &Secret) -> String {
    match secret {
        Secret::Password(_) | Secret::Md5Cred(_) => "password".into(),
        Secret::PasswordEnv(name) => format!("environment variable {name}"),
        Secret::PasswordFile { dir, path } => format!("file {}", dir.join(path).display()),
    }
}

/// `line_safe` reasons name a character class or a length, never the value;
/// this keeps it that way even if that function changes.
pub fn redact_reason(reason: &str) -> String {
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

/// Every URL in a message (a word with `://`, e.g. in a libgit2 error)
/// through [`redact_url`]; the rest of the message as it is.
pub fn redact_urls_in(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        // Quotes and brackets around a URL stay outside it.
        let lead = word.len() - word.trim_start_matches(['\'', '"', '(', '<', '[']).len();
        let (open, url) = word.split_at(lead);
        out.push_str(open);
        if url.contains("://") {
            out.push_str(&redact_url(url))
        } else {
            out.push_str(url)
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
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
    fn passwords_in_urls_inside_a_message_are_redacted() {
        let m = "cannot fetch 'https://bot:s3cr3t-token@git.example.com/pbx.git': reference 'refs/x' not found";
        let r = redact_urls_in(m);
        assert!(!r.contains("s3cr3t-token"), "{r}");
        assert_eq!(r, "cannot fetch 'https://bot:***@git.example.com/pbx.git': reference 'refs/x' not found");
        assert_eq!(redact_urls_in("push  rejected:\tfile:///tmp/r  x"), "push  rejected:\tfile:///tmp/r  x");
        assert_eq!(redact_urls_in("(ssh://u:pw@h)"), "(ssh://u:***@h)");
    }

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
