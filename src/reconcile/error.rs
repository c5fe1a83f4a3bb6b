//! Why a run failed. One variant per operation that can fail, the cause
//! kept as its source; the run record keeps the `Display` text (the
//! messages operators and tests read), and [`RunError::outcome`] says how
//! the run ended.

use super::Outcome;
use super::run::Verdict;
use std::path::PathBuf;

/// A cause from a port (the store's, Asterisk's or a live target's error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The spec source could not be read (git remote down, branch deleted).
    #[error("{reason}; the last good config stays in force")]
    ReadSource { reason: String },
    /// The specs have errors (the diagnostics are in the record).
    #[error("the specs have {errors} error(s); the last good config stays in force")]
    Validate { errors: usize },
    #[error("render: {0}")]
    Render(#[source] crate::core::render::RenderError),
    /// A secret the specs name could not be read for its md5 hash.
    #[error("render: {0}")]
    ResolveSecret(#[source] crate::secret::SecretError),
    #[error("database: {0}")]
    ReadApplied(#[source] BoxError),
    #[error("{}: {source}", path.display())]
    ReadManagedFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The prune guard refused the deletions (its message says why).
    #[error("{0}")]
    PruneGuard(String),
    #[error("Asterisk is unreachable ({reason}); nothing was changed")]
    Unreachable { reason: String },
    #[error("writing {}: {source}", path.display())]
    WriteManagedFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The reload failed or Asterisk does not hold what the file sets;
    /// `restored` says what the rollback did.
    #[error("{}; {restored}", verdict.message)]
    Verify { verdict: Verdict, restored: String },
    #[error("reading the record of what was pushed {}: {source}", path.display())]
    ReadPushRecord {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The live target could not push at all (nothing was pushed).
    #[error("{0}")]
    Push(#[source] BoxError),
    /// The live target pushed nothing: every change was refused.
    #[error("{message}")]
    PushRefused { message: String },
    /// A state the code should never reach.
    #[error("internal: {0}")]
    Internal(&'static str),
}

impl RunError {
    /// How a run that failed this way ended.
    pub fn outcome(&self) -> Outcome {
        match self {
            RunError::Validate { .. } => Outcome::Invalid,
            RunError::PruneGuard(_) => Outcome::Blocked,
            _ => Outcome::Failed,
        }
    }
}
