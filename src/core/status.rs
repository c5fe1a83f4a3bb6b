//! Per-extension sync state, and the step a run is in.
//!
//! Every run that gets as far as a plan says where each extension stands
//! afterwards ([`states_after`]): `synced` (applied and, where Asterisk was
//! asked, as Asterisk holds it), `pending` (declared, not applied yet),
//! `failed` (the run tried and Asterisk or the verifier refused it, with the
//! reason), `drifted` (Asterisk differs and self-heal is off, with what
//! differs) or `disabled` (`enabled: false`). The store keeps a row only
//! for the extensions that are not plainly synced, so a run at 100k that
//! changes nothing writes nothing here. Pure: no I/O.

use crate::core::plan::{Action, Drift, Plan};
use crate::core::spec::{DesiredSet, Extension};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where one extension stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    Synced,
    Pending,
    Failed,
    Drifted,
    Disabled,
}

impl SyncState {
    pub const ALL: [SyncState; 5] =
        [SyncState::Synced, SyncState::Pending, SyncState::Failed, SyncState::Drifted, SyncState::Disabled];

    pub fn as_str(&self) -> &'static str {
        match self {
            SyncState::Synced => "synced",
            SyncState::Pending => "pending",
            SyncState::Failed => "failed",
            SyncState::Drifted => "drifted",
            SyncState::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<SyncState> {
        SyncState::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One extension's state as a run sets it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtensionState<'a> {
    pub number: String,
    pub state: SyncState,
    pub reason: Option<String>,
    /// The declared extension, kept for one that has no applied row (a
    /// pending or failed create) so lists can show it.
    pub declared: Option<&'a Extension>,
}

/// Which earlier states a run's states replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// The run knows every extension's state: earlier rows go.
    All,
    /// The run did not list Asterisk's endpoints (it had changes to apply,
    /// and drift is looked for by the next run): earlier `drifted` rows
    /// stay unless the run sets them.
    KeepDrifted,
    /// The run knows only the states it sets (its specs did not validate).
    Nothing,
}

/// The states a run leaves behind.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate<'a> {
    pub reset: Reset,
    /// Only these change (besides what `reset` clears); `Synced` clears a row.
    pub states: Vec<ExtensionState<'a>>,
    /// Set a state only where the extension has none yet (or the same one):
    /// a run that could not plan must not turn a failure into "pending".
    pub only_new: bool,
}

impl Default for StatusUpdate<'_> {
    /// Changes nothing.
    fn default() -> Self {
        StatusUpdate { reset: Reset::Nothing, states: Vec::new(), only_new: false }
    }
}

/// The step a run is in, for the Reconciling condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    Planning,
    Writing,
    Reloading,
    Verifying,
    RollingBack,
    Recording,
}

impl Step {
    pub fn as_str(&self) -> &'static str {
        match self {
            Step::Planning => "planning",
            Step::Writing => "writing",
            Step::Reloading => "reloading",
            Step::Verifying => "verifying",
            Step::RollingBack => "rolling back",
            Step::Recording => "recording",
        }
    }
}

/// How a run that planned ended, as far as the states care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Written, reloaded (or no Asterisk), verified.
    Applied,
    /// Nothing to change.
    NoOp,
    /// Drift found, self-heal off: reported only.
    DriftReported,
    /// The prune guard stopped the run: nothing changed, the changes wait.
    Blocked,
    /// The run tried and failed (unreachable, write, reload, verification).
    Failed,
    /// Applied, except the extensions in `failures` (the ari target).
    Degraded,
}

/// What a run that planned knows afterwards.
pub struct RunFacts<'a, 'd> {
    pub set: &'d DesiredSet,
    pub plan: &'a Plan,
    pub ending: Ending,
    /// Why the run failed or was blocked.
    pub error: Option<&'a str>,
    /// Per extension, what the verifier (or Asterisk) said was wrong.
    pub failures: &'a BTreeMap<String, String>,
    /// Whether drift was repaired by this run (self-heal on and the run applied).
    pub healed: bool,
    /// Whether the run listed Asterisk's endpoints (so it knows every drift).
    pub observed: bool,
}

/// Every extension's state after a run that planned.
pub fn states_after<'d>(f: &RunFacts<'_, 'd>) -> StatusUpdate<'d> {
    let mut out: BTreeMap<String, ExtensionState<'d>> = BTreeMap::new();
    fn put<'d>(
        out: &mut BTreeMap<String, ExtensionState<'d>>,
        number: &str,
        state: SyncState,
        reason: Option<String>,
        declared: Option<&'d Extension>,
    ) {
        out.insert(number.to_string(), ExtensionState { number: number.to_string(), state, reason, declared });
    }
    let error = f.error.unwrap_or("the run failed");
    let failed_reason = |n: &str| Some(f.failures.get(n).cloned().unwrap_or_else(|| error.to_string()));
    for c in &f.plan.changes {
        let ext = f.set.get(&c.extension);
        let declared = if c.action == Action::Create { ext } else { None };
        let ending = match f.ending {
            Ending::Degraded if f.failures.contains_key(&c.extension) => Ending::Failed,
            Ending::Degraded => Ending::Applied,
            e => e,
        };
        match (ending, c.action) {
            (Ending::Applied, Action::Delete) => put(&mut out, &c.extension, SyncState::Synced, None, None),
            (Ending::Applied, _) => match ext {
                Some(e) if !e.enabled => put(&mut out, &c.extension, SyncState::Disabled, None, None),
                _ => put(&mut out, &c.extension, SyncState::Synced, None, None),
            },
            (Ending::Blocked, _) => {
                put(&mut out, &c.extension, SyncState::Pending, f.error.map(str::to_string), declared)
            }
            (Ending::Failed, _) => {
                put(&mut out, &c.extension, SyncState::Failed, failed_reason(&c.extension), declared)
            }
            // A plan with changes always tries to apply them.
            (Ending::NoOp | Ending::DriftReported | Ending::Degraded, _) => {
                put(&mut out, &c.extension, SyncState::Pending, None, declared);
            }
        }
    }
    for d in &f.plan.drift {
        let Some(number) = drift_extension(d) else { continue };
        if out.contains_key(number) {
            continue;
        }
        match f.ending {
            Ending::Degraded if f.failures.contains_key(number) => {
                put(&mut out, number, SyncState::Failed, failed_reason(number), None)
            }
            Ending::Applied | Ending::Degraded if f.healed => put(&mut out, number, SyncState::Synced, None, None),
            Ending::Failed if f.healed || f.failures.contains_key(number) => {
                put(&mut out, number, SyncState::Failed, failed_reason(number), None)
            }
            _ => put(&mut out, number, SyncState::Drifted, Some(describe_drift(d)), None),
        }
    }
    for e in f.set.extensions.iter() {
        if !e.enabled && !out.contains_key(&e.extension) {
            put(&mut out, &e.extension, SyncState::Disabled, None, None);
        }
    }
    StatusUpdate {
        reset: if f.observed { Reset::All } else { Reset::KeepDrifted },
        states: out.into_values().collect(),
        only_new: false,
    }
}

/// The extension a drift item is about, if it is about one.
pub fn drift_extension(d: &Drift) -> Option<&str> {
    match d {
        Drift::MissingFromAsterisk { extension }
        | Drift::DiffersInAsterisk { extension, .. }
        | Drift::ObjectDiffers { extension, .. } => Some(extension),
        Drift::ManagedFileEdited | Drift::Unmanaged { .. } | Drift::Orphaned { .. } => None,
    }
}

/// Defined beside `Drift` in `plan`; kept here, where the states use it.
pub use crate::core::plan::drift_reason as describe_drift;

/// The states after a run whose specs did not validate: extensions
/// declared in the files that did validate but never applied are pending;
/// nothing else changes.
pub fn states_when_invalid<'d>(
    set: &'d DesiredSet,
    is_applied: &dyn Fn(&str) -> bool,
    reason: &str,
) -> StatusUpdate<'d> {
    let states = set
        .extensions
        .iter()
        .filter(|e| !is_applied(&e.extension))
        .map(|e| ExtensionState {
            number: e.extension.clone(),
            state: if e.enabled { SyncState::Pending } else { SyncState::Disabled },
            reason: Some(reason.to_string()),
            declared: Some(e),
        })
        .collect();
    StatusUpdate { reset: Reset::Nothing, states, only_new: true }
}
