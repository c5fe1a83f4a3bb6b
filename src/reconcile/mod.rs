//! Reconcile: desired (the specs) against applied (the database) and
//! observed (the live Asterisk), then render → write → reload → verify →
//! record, or roll back; and the loop around it.
//!
//! - [`run`]: one reconcile ([`Reconciler`]): plan, prune guard, apply,
//!   verify, roll back, record.
//! - [`source`]: where the desired state comes from ([`Desired`]): a
//!   directory, or a git revision through the [`SpecRevisions`] port.
//! - [`scheduler`]: triggers, the quiet period, the periodic resync
//!   ([`run_loop`], [`LoopHandle`]).
//! - [`backoff`]: the one [`Backoff`] every retry loop in the program uses.
//! - [`error`]: [`RunError`], why a run failed.
//! - [`ports`]: what a run needs of the world, as traits this module owns
//!   ([`StateStore`], [`AsteriskControl`], [`ConfigFile`], [`LiveApply`]);
//!   `db`, `asterisk`, `managed` and `apply` implement them and `app`
//!   wires them in.
//!
//! The reconciler is deliberately not told why it runs beyond a label for
//! the record (kube-runtime's rule): every run does the whole comparison,
//! so it is idempotent, and a run with nothing to change writes nothing and
//! reloads nothing.
//!
//! Architecture invariant: nothing under `reconcile/` names an adapter
//! (`db`, `asterisk`, `apply`, `managed`, `git`, `http`, `calls`); it uses
//! the pure core (`spec`, `render`, `plan`, `status`) and its ports.

pub mod backoff;
pub mod error;
#[cfg(test)]
pub(crate) mod fake;
pub mod fleet;
pub mod ports;
#[cfg(test)]
mod rules;
pub mod run;
pub mod scheduler;
pub mod source;

pub use backoff::{Backoff, BackoffConfig};
pub use error::RunError;
pub use ports::{AsteriskControl, ConfigFile, LiveApply, LiveRun, NoLive, StateStore};
pub use run::{
    APPLIED_CACHE_MAX_AGE, Reconciler, Settled, SettledCache, VERIFY_CONCURRENCY, VERIFY_DETAIL_LIMIT, Verdict, verify,
};
pub use scheduler::{LoopConfig, LoopHandle, MAX_SETTLE, jitter, run_loop, run_loop_with, watch};
pub use source::{Desired, DesiredSource, DirSource, Fingerprint, Revision, SpecRevisions, load_dir, load_dir_with};

use crate::core::diag::Diagnostic;
use crate::core::plan::{self, Fields, Plan};
use crate::core::spec::Extension;
pub use crate::core::status::{Reset, Step, SyncState};
use serde::Serialize;
use std::time::Duration;

/// Why a run happened; recorded, never used to decide what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    Startup,
    FileChange,
    Periodic,
    Manual,
    Webhook,
    Retry,
    Cli,
    /// The ari target's background read-back found drift.
    Drift,
}

impl Trigger {
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::FileChange => "file-change",
            Trigger::Periodic => "periodic",
            Trigger::Manual => "manual",
            Trigger::Webhook => "webhook",
            Trigger::Retry => "retry",
            Trigger::Cli => "cli",
            Trigger::Drift => "drift",
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Changes were written, reloaded, verified and recorded.
    Applied,
    /// Nothing to change: nothing written, nothing reloaded.
    NoOp,
    /// The specs have errors: nothing changed.
    Invalid,
    /// The prune guard stopped a mass deletion: nothing changed.
    Blocked,
    /// Something failed (render, Asterisk, verification, database); the last good config is in force.
    Failed,
    /// Drift was found and self-heal is off: reported only.
    DriftReported,
    /// Some extensions were applied and verified, others refused (the ari
    /// target applies each extension on its own): those are `failed`.
    Degraded,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::NoOp => "noop",
            Outcome::Invalid => "invalid",
            Outcome::Blocked => "blocked",
            Outcome::Failed => "failed",
            Outcome::DriftReported => "drift-reported",
            Outcome::Degraded => "degraded",
        }
    }

    /// Whether the next run should come sooner, with back-off.
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Degraded)
    }
}

/// One extension row as the reconciler hands it to the store; it borrows
/// the extension from the desired set (a cold apply of 100k extensions
/// would otherwise copy them all).
#[derive(Clone, Debug)]
pub struct AppliedRow<'a> {
    pub extension: std::borrow::Cow<'a, Extension>,
    /// md5Cred of the extension's secret (never the password itself).
    pub secret_md5: String,
}

impl AppliedRow<'_> {
    /// The plan's view of the row (computed when needed: a cold apply of
    /// 100k extensions would otherwise hold 100k of them at once).
    pub fn fields(&self) -> Fields {
        plan::desired_fields(&self.extension, &self.secret_md5)
    }
}

/// The record of one run, written together with its row changes.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub trigger: Trigger,
    pub revision: Option<String>,
    /// The commit's subject line, for a git source.
    pub subject: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub outcome: Outcome,
    /// The plan (None when the specs could not even be loaded).
    pub plan: Option<Plan>,
    /// Why it failed, was blocked or invalid.
    pub error: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
    pub reloaded: bool,
    /// A note about the source (a force-push).
    pub warning: Option<String>,
    /// Why the run did what it did, in order: why it reloaded (or did not),
    /// which drift it repaired, what verification checked, a rollback.
    pub reasons: Vec<String>,
    /// Verification failed and putting the previous file back failed too
    /// (Ready=False, reason RollbackFailed).
    pub rollback_failed: bool,
}

/// The prune guard's limits.
#[derive(Clone, Debug)]
pub struct PruneGuard {
    pub max_share: f64,
    pub max_count: Option<usize>,
    pub allow_mass_delete: bool,
}

/// Deleting this many extensions is never stopped by the share rule, so a
/// small office can remove a phone (1 of 2 is 50%).
pub const PRUNE_SHARE_FLOOR: usize = 2;

impl PruneGuard {
    /// Why `deletes` out of `applied` is too many, if it is.
    pub fn check(&self, deletes: usize, applied: usize) -> Option<String> {
        if self.allow_mass_delete || deletes == 0 {
            return None;
        }
        if let Some(max) = self.max_count
            && deletes > max
        {
            return Some(format!(
                "prune guard: the run would delete {deletes} extensions, more than the limit of {max}; nothing was deleted. \
                 If this is intended, run `asterisk-gitops apply --allow-mass-delete` or set reconcile.allowMassDelete"
            ));
        }
        let share = deletes as f64 / applied.max(1) as f64;
        if deletes > PRUNE_SHARE_FLOOR && share > self.max_share {
            return Some(format!(
                "prune guard: the run would delete {deletes} of {applied} extensions ({:.0}%, more than {:.0}%); nothing was deleted. \
                 If this is intended, run `asterisk-gitops apply --allow-mass-delete` or set reconcile.allowMassDelete",
                share * 100.0,
                self.max_share * 100.0
            ));
        }
        None
    }
}

/// What one run did, for logs, status and the CLI.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub record: RunRecord,
    pub run_id: Option<i64>,
    pub duration: Duration,
    /// Why the run's Asterisk did not answer, when it did not (with
    /// `nodes:` the first node is then reported `unreachable`).
    pub unreachable: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prune_guard_counts_shares_and_counts() {
        let g = PruneGuard { max_share: 0.3, max_count: None, allow_mass_delete: false };
        assert!(g.check(3, 10).is_none());
        assert!(g.check(4, 10).is_some_and(|w| w.contains("4 of 10")));
        assert!(g.check(2, 2).is_none(), "a small office may delete a phone or two");
        assert!(g.check(3, 3).is_some(), "an emptied checkout is stopped");
        assert!(g.check(3, 0).is_some(), "never divides by zero");
        let g = PruneGuard { max_share: 1.0, max_count: Some(2), allow_mass_delete: false };
        assert!(g.check(3, 100).is_some_and(|w| w.contains("limit of 2")));
        let g = PruneGuard { max_share: 0.0, max_count: Some(0), allow_mass_delete: true };
        assert!(g.check(100, 100).is_none());
    }
}
