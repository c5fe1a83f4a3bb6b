//! The reconcile loop's one step: desired (the specs) against applied (the
//! database) and observed (the live Asterisk), then render → write →
//! reload → verify → record, or roll back.
//!
//! The reconciler is deliberately not told why it runs beyond a label for
//! the record (kube-runtime's rule): every run does the whole comparison,
//! so it is idempotent, and a run with nothing to change writes nothing and
//! reloads nothing.
//!
//! It talks to the database and Asterisk through two small traits,
//! [`StateStore`] and [`AsteriskControl`], implemented over `db` and
//! `asterisk`; everything else it needs is pure (`spec`, `render`, `plan`)
//! or a file (`managed`).

use crate::diag::Diagnostic;
use crate::managed::ManagedFile;
use crate::plan::{self, Action, Fields, Observed, ObservedEndpoint, Plan, PlanInput};
use crate::render::{Renderer, SourceInfo};
use crate::secret::{AuthCredential, SecretSource, credential, md5_cred};
use crate::spec::{DesiredSet, Extension};
use crate::status::{self, StatusUpdate};
pub use crate::status::{Reset, Step, SyncState};
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// What the store must do for the reconciler.
pub trait StateStore: Send + Sync {
    type Error: std::fmt::Display + Send;
    /// The applied extensions, as plan fields, by number.
    fn applied(&self) -> impl Future<Output = Result<BTreeMap<String, Fields>, Self::Error>> + Send;
    /// A cheap value that changes whenever the applied rows change (their
    /// count and latest write), so a run can tell that nothing did.
    fn applied_signature(&self) -> impl Future<Output = Result<String, Self::Error>> + Send;
    /// Records the run and, in the same transaction, upserts `upserts`,
    /// deletes `deletes` and sets the extensions' states. All or nothing.
    fn commit(
        &self,
        run: &RunRecord,
        upserts: &[AppliedRow<'_>],
        deletes: &[String],
        states: &StatusUpdate<'_>,
    ) -> impl Future<Output = Result<i64, Self::Error>> + Send;
    /// Marks a run under way, in `step` (the Reconciling condition); the
    /// commit clears it.
    fn progress(&self, step: Step) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Sets some extensions' states while a run is under way (what it is
    /// about to apply is pending); the commit then sets the outcome.
    fn mark(&self, states: &StatusUpdate<'_>) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What the reconciler asks of Asterisk.
pub trait AsteriskControl: Send + Sync {
    type Error: std::fmt::Display + Send;
    /// Every endpoint Asterisk has loaded (name and transport).
    fn endpoints(&self) -> impl Future<Output = Result<BTreeMap<String, ObservedEndpoint>, Self::Error>> + Send;
    /// One endpoint's detail (context, transport, codecs); `None` if Asterisk has no such endpoint.
    fn endpoint(&self, name: &str) -> impl Future<Output = Result<Option<ObservedEndpoint>, Self::Error>> + Send;
    /// Reloads res_pjsip.
    fn reload(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Whether Asterisk answers at all (cheap: no list).
    fn ping(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// The keys Asterisk's astdb holds under `family` (`/family/endpoint/1001`),
    /// never their values (an auth's holds its secret). Only the ari target
    /// asks: the objects its sorcery wizard stores there.
    fn astdb_keys(&self, family: &str) -> impl Future<Output = Result<Vec<String>, Self::Error>> + Send {
        let _ = family;
        async { Ok(Vec::new()) }
    }
}

/// Where the desired state comes from for one run.
#[derive(Clone, Default)]
pub struct Desired {
    pub set: DesiredSet,
    pub diagnostics: Vec<Diagnostic>,
    pub source: SourceInfo,
    /// The source could not be read (git remote down, branch deleted): the
    /// run changes nothing and records why.
    pub error: Option<String>,
    /// Something worth telling (a force-push) that does not stop the run.
    pub warning: Option<String>,
    /// The commit's subject line, for a git source.
    pub subject: Option<String>,
    /// A hash of everything the set was loaded from (file names and bytes,
    /// or commit and path): equal fingerprints, equal sets. `None`: unknown.
    pub fingerprint: Option<u64>,
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

/// How many changed endpoints are verified in detail (every option); above
/// this, the endpoint list is checked for all of them and the detail for
/// this many. Asked 16 at a time, a real Asterisk holding 10k endpoints
/// answers 100 details in about 18 ms (BENCHMARKS.md), so 2,000 take well
/// under a second; listing the 10k takes 1.4 s.
pub const VERIFY_DETAIL_LIMIT: usize = 2000;

/// How many endpoint details verification asks for at once.
pub const VERIFY_CONCURRENCY: usize = 16;

pub struct Reconciler<S, A> {
    pub store: S,
    pub asterisk: Option<A>,
    pub managed: ManagedFile,
    pub renderer: Arc<Renderer>,
    pub secrets: Arc<dyn SecretSource + Send + Sync>,
    pub realm: String,
    pub prune: PruneGuard,
    pub self_heal: bool,
    /// `apply.target: ari`: changes are pushed through ARI's dynamic
    /// configuration instead of written and reloaded; `managed` is then the
    /// record of what was pushed, which Asterisk never reads.
    pub live: Option<crate::apply::AriTarget>,
    /// What the last run that found nothing to change saw (see [`Settled`]).
    pub settled: SettledCache,
}

/// A plan made the whole way, with what it was made from.
struct FullPlan {
    plan: Plan,
    rendered: String,
    md5s: BTreeMap<String, String>,
    applied_count: usize,
    observed: Observed,
}

/// A plan, with the rendered file and secret hashes when they were computed.
type SettledPlan = (Plan, Option<String>, Option<BTreeMap<String, String>>, Observed);

/// The inputs of the last run that found nothing to change. When the next
/// run sees the same inputs — the same specs (by fingerprint), the same
/// secret files, the same applied rows (by signature) and the same managed
/// file on disk (by hash) — rendering and diffing would find nothing again,
/// so the run skips them and only looks at Asterisk for drift. This is what
/// makes a no-op run at 10k extensions cost a few milliseconds, not a
/// hundred and fifty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub fingerprint: u64,
    pub secret_files: u64,
    pub applied: String,
    pub file_hash: u64,
    pub applied_count: usize,
}

/// What a reconciler remembers between runs: the last settled inputs, and
/// the applied rows as of a signature (reading 10k rows back costs tens of
/// milliseconds; a run that changed one knows exactly what it wrote). The
/// rows are read afresh at least every [`APPLIED_CACHE_MAX_AGE`].
#[derive(Debug, Default)]
pub struct SettledCache {
    settled: std::sync::Mutex<Option<Settled>>,
    applied: std::sync::Mutex<Option<AppliedCache>>,
}

#[derive(Debug)]
struct AppliedCache {
    signature: String,
    rows: Arc<BTreeMap<String, Fields>>,
    read_at: Instant,
}

pub const APPLIED_CACHE_MAX_AGE: Duration = Duration::from_secs(300);

impl SettledCache {
    fn get(&self) -> Option<Settled> {
        self.settled.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set(&self, s: Option<Settled>) {
        *self.settled.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
    fn applied(&self, signature: &str) -> Option<Arc<BTreeMap<String, Fields>>> {
        let guard = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|c| c.signature == signature && c.read_at.elapsed() < APPLIED_CACHE_MAX_AGE)
            .map(|c| c.rows.clone())
    }
    fn set_applied(&self, signature: String, rows: Arc<BTreeMap<String, Fields>>, read_at: Instant) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = Some(AppliedCache { signature, rows, read_at });
    }
    fn forget_applied(&self) -> Option<AppliedCache> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn hash_text(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Size and modification time of every `passwordFile` the set reads: a
/// changed secret file must re-render even when no spec file changed.
fn secret_files_signature(set: &DesiredSet) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for ext in set.extensions.iter() {
        if let crate::spec::Secret::PasswordFile { dir, path } = &ext.secret {
            let path = dir.join(path);
            path.hash(&mut h);
            match std::fs::metadata(&path) {
                Ok(m) => (m.len(), m.modified().ok()).hash(&mut h),
                Err(e) => e.kind().hash(&mut h),
            }
        }
    }
    h.finish()
}

/// What one run did, for logs, status and the CLI.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub record: RunRecord,
    pub run_id: Option<i64>,
    pub duration: Duration,
}

impl<S: StateStore, A: AsteriskControl> Reconciler<S, A> {
    /// Plans without changing anything (the `plan` command).
    pub async fn plan(&self, desired: &Desired) -> Result<(Plan, String), String> {
        let full = self.full_plan(desired, None).await?;
        Ok((full.plan, full.rendered))
    }

    /// Render (secrets are read here), read the applied rows (from the
    /// cache when `applied_sig` matches it) and the managed file, look at
    /// Asterisk, and plan. Errors say which step failed.
    /// Render (secrets are read here), read the applied rows (from the
    /// cache when `applied_sig` matches it) and the managed file, and plan.
    ///
    /// When the specs ask for changes, Asterisk is only pinged, not asked
    /// for its whole endpoint list (1.4 s at 10k on a real one): the run
    /// verifies what it changes after the reload, and drift is looked for by
    /// the next run that has nothing to change. Otherwise the list is read
    /// and compared. Errors say which step failed.
    async fn full_plan(&self, desired: &Desired, applied_sig: Option<&str>) -> Result<FullPlan, String> {
        let (rendered, md5s) = self.render(desired).map_err(|e| format!("render: {e}"))?;
        let applied = self.applied_rows(applied_sig).await?;
        let current = self.managed.read().map_err(|e| format!("{}: {e}", self.managed.path().display()))?;
        let mut plan = plan::plan(&PlanInput {
            desired: &desired.set,
            secret_md5: &md5s,
            applied: &applied,
            observed: &Observed::NotListed,
            current_file: current.as_deref(),
            rendered: &rendered,
        });
        let observed = match &self.asterisk {
            None => Observed::NotConfigured,
            Some(a) if plan.has_changes() => match a.ping().await {
                Ok(()) => Observed::NotListed,
                Err(e) => Observed::Unreachable { reason: e.to_string() },
            },
            Some(_) => {
                let observed = self.observe().await;
                plan.drift.extend(plan::observed_drift(&desired.set, &|n| applied.contains_key(n), &observed));
                if let Some(record) = &current {
                    self.live_drift(record, &mut plan.drift).await;
                }
                observed
            }
        };
        Ok(FullPlan { plan, rendered, md5s, applied_count: applied.len(), observed })
    }

    fn render(&self, desired: &Desired) -> Result<(String, BTreeMap<String, String>), String> {
        let rendered =
            self.renderer.render(&desired.set, &desired.source, self.secrets.as_ref()).map_err(|e| e.to_string())?;
        let mut md5s = BTreeMap::new();
        for ext in desired.set.extensions.iter() {
            let hash = match credential(ext, self.secrets.as_ref()).map_err(|e| e.to_string())? {
                AuthCredential::Md5(h) => h,
                AuthCredential::UserPass(p) => md5_cred(&ext.extension, &self.realm, &p),
            };
            md5s.insert(ext.extension.clone(), hash);
        }
        Ok((rendered, md5s))
    }

    /// After a commit: the cached applied rows plus what was written, under
    /// the signature the store reports now. Without a cached copy, or if the
    /// signature cannot be read, the next run reads the rows again.
    async fn remember_commit(&self, upserts: &[AppliedRow<'_>], deletes: &[String]) {
        if upserts.is_empty() && deletes.is_empty() {
            return;
        }
        let Some(cache) = self.settled.forget_applied() else { return };
        let Ok(signature) = self.store.applied_signature().await else { return };
        let mut rows = Arc::unwrap_or_clone(cache.rows);
        for d in deletes {
            rows.remove(d);
        }
        for u in upserts {
            rows.insert(u.extension.extension.clone(), u.fields());
        }
        self.settled.set_applied(signature, Arc::new(rows), cache.read_at);
    }

    /// The plan of a run whose inputs equal the last settled run's (see
    /// [`Settled`]): no changes, only what Asterisk shows now. `None` when
    /// any input differs.
    async fn settled_plan(
        &self,
        desired: &Desired,
        secret_files: u64,
        applied_sig: Option<&str>,
    ) -> Option<SettledPlan> {
        let s = self.settled.get()?;
        if desired.fingerprint != Some(s.fingerprint)
            || s.secret_files != secret_files
            || applied_sig != Some(&s.applied)
        {
            return None;
        }
        let current = self.managed.read().ok()??;
        if hash_text(&current) != s.file_hash {
            return None;
        }
        let observed = self.observe().await;
        // Settled means every desired extension is applied as it is and nothing else is.
        let mut drift = plan::observed_drift(&desired.set, &|n| desired.set.get(n).is_some(), &observed);
        self.live_drift(&current, &mut drift).await;
        let p = Plan {
            changes: Vec::new(),
            unchanged: desired.set.extensions.len(),
            drift,
            file_changed: false,
            diff: String::new(),
            applied_before: s.applied_count,
        };
        Some((p, None, None, observed))
    }

    /// With the ari target: what reading the pushed objects back shows
    /// (see `apply::drift`), added to `drift` without repeating what the
    /// endpoint list already said; an orphaned endpoint of our astdb family
    /// is ours to delete, so it is not reported as unmanaged too.
    async fn live_drift(&self, record: &str, drift: &mut Vec<plan::Drift>) {
        let Some(live) = &self.live else { return };
        let keys = match &self.asterisk {
            Some(a) if crate::apply::sweep_starts(live) => {
                a.astdb_keys(crate::apply::ASTDB_FAMILY).await.unwrap_or_else(|e| {
                    tracing::debug!("listing the astdb family failed: {e}");
                    Vec::new()
                })
            }
            _ => Vec::new(),
        };
        for d in crate::apply::drift(live, record, &keys).await {
            if let plan::Drift::Orphaned { object_type: kind, id } = &d
                && kind == "endpoint"
            {
                drift.retain(|x| !matches!(x, plan::Drift::Unmanaged { endpoint } if endpoint == id));
            }
            if !drift.contains(&d) {
                drift.push(d);
            }
        }
    }

    async fn observe(&self) -> Observed {
        match &self.asterisk {
            None => Observed::NotConfigured,
            // The ari target on a large estate: the list once a sweep (see `apply::lists_endpoints`).
            Some(a) if self.live.as_ref().is_some_and(|l| !crate::apply::lists_endpoints(l)) => match a.ping().await {
                Ok(()) => Observed::NotListed,
                Err(e) => Observed::Unreachable { reason: e.to_string() },
            },
            Some(a) => match a.endpoints().await {
                Ok(endpoints) => Observed::Endpoints { endpoints },
                Err(e) => Observed::Unreachable { reason: e.to_string() },
            },
        }
    }

    /// One reconcile. Never panics; every outcome is recorded (when the
    /// database can be reached) and returned.
    pub async fn run(&self, trigger: Trigger, desired: Desired) -> RunReport {
        let started = Instant::now();
        let mut record = RunRecord {
            trigger,
            revision: desired.source.revision.clone(),
            subject: desired.subject.clone(),
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
            outcome: Outcome::NoOp,
            plan: None,
            error: None,
            diagnostics: Vec::new(),
            reloaded: false,
            warning: desired.warning.clone(),
            reasons: Vec::new(),
            rollback_failed: false,
        };
        self.progress(Step::Planning).await;
        let mut work = Work::default();
        self.step(&desired, &mut record, &mut work).await;
        self.progress(Step::Recording).await;
        record.finished_at = chrono::Utc::now();
        let Work { upserts, deletes, states, .. } = work;
        let run_id = match self.store.commit(&record, &upserts, &deletes, &states).await {
            Ok(id) => {
                self.remember_commit(&upserts, &deletes).await;
                Some(id)
            }
            Err(e) => {
                if record.outcome == Outcome::Applied {
                    // The file is live but the rows are not: the next run sees the
                    // same changes pending against an unchanged file and records them.
                    record.outcome = Outcome::Failed;
                }
                record.error = Some(match record.error.take() {
                    Some(prev) => format!("{prev}; and recording the run failed: {e}"),
                    None => format!("recording the run failed: {e}"),
                });
                None
            }
        };
        RunReport { record, run_id, duration: started.elapsed() }
    }

    /// Says which step the run is in (the Reconciling condition). A store
    /// that cannot be written to only loses the progress, not the run.
    async fn progress(&self, step: Step) {
        if let Err(e) = self.store.progress(step).await {
            tracing::debug!(step = step.as_str(), "recording the run's step failed: {e}");
        }
    }

    /// The applied rows, from the cache when `applied_sig` matches it.
    async fn applied_rows(&self, applied_sig: Option<&str>) -> Result<Arc<BTreeMap<String, Fields>>, String> {
        if let Some(a) = applied_sig.and_then(|sig| self.settled.applied(sig)) {
            return Ok(a);
        }
        let a = Arc::new(self.store.applied().await.map_err(|e| format!("database: {e}"))?);
        if let Some(sig) = applied_sig {
            self.settled.set_applied(sig.to_string(), a.clone(), Instant::now());
        }
        Ok(a)
    }

    async fn step<'d>(&self, desired: &'d Desired, record: &mut RunRecord, work: &mut Work<'d>) {
        let fail = |record: &mut RunRecord, outcome: Outcome, error: String| {
            record.outcome = outcome;
            record.error = Some(error);
        };
        // 0. The source must be readable: otherwise nothing changes.
        if let Some(e) = &desired.error {
            return fail(record, Outcome::Failed, format!("{e}; the last good config stays in force"));
        }
        // 1. The specs must be valid as a whole: otherwise nothing changes.
        if desired.diagnostics.iter().any(Diagnostic::is_error) {
            record.diagnostics = desired.diagnostics.clone();
            let n = desired.diagnostics.iter().filter(|d| d.is_error()).count();
            let why = format!("the specs have {n} error(s); the last good config stays in force");
            // What the valid files declare anew waits for the others to be fixed.
            let applied_sig = self.store.applied_signature().await.ok();
            if let Ok(applied) = self.applied_rows(applied_sig.as_deref()).await {
                work.states = status::states_when_invalid(
                    &desired.set,
                    &|n| applied.contains_key(n),
                    &format!("not applied yet: {why}"),
                );
            }
            return fail(record, Outcome::Invalid, why);
        }
        record.diagnostics = desired.diagnostics.clone();
        let secret_files = secret_files_signature(&desired.set);
        let applied_sig = self.store.applied_signature().await.ok();
        let p = match self.settled_plan(desired, secret_files, applied_sig.as_deref()).await {
            Some(p) => p,
            None => {
                self.settled.set(None);
                let full = match self.full_plan(desired, applied_sig.as_deref()).await {
                    Ok(f) => f,
                    Err(e) => return fail(record, Outcome::Failed, e),
                };
                let FullPlan { plan: p, rendered, md5s, applied_count, observed } = full;
                if let (Some(fingerprint), Some(applied_sig), false) =
                    (desired.fingerprint, applied_sig, p.has_changes() || p.file_changed)
                {
                    self.settled.set(Some(Settled {
                        fingerprint,
                        secret_files,
                        applied: applied_sig,
                        file_hash: hash_text(&rendered),
                        applied_count,
                    }));
                }
                (p, Some(rendered), Some(md5s), observed)
            }
        };
        let (p, rendered, md5s, observed) = p;
        let heal = self.self_heal && p.has_healable_drift();
        let result = self.apply_plan(desired, &p, rendered.as_deref(), md5s.as_ref(), &observed, record, work).await;
        let ending = match &result {
            Ok(Outcome::Applied) => status::Ending::Applied,
            Ok(Outcome::DriftReported) => status::Ending::DriftReported,
            Ok(Outcome::Degraded) => status::Ending::Degraded,
            Ok(_) => status::Ending::NoOp,
            Err((Outcome::Blocked, _)) => status::Ending::Blocked,
            Err(_) => status::Ending::Failed,
        };
        work.states = status::states_after(&status::RunFacts {
            set: &desired.set,
            plan: &p,
            ending,
            error: result.as_ref().err().map(|(_, e)| e.as_str()),
            failures: &work.failures,
            healed: heal,
            observed: matches!(observed, Observed::Endpoints { .. }),
        });
        // The plan moves into the record (at 100k extensions a copy would cost hundreds of MB).
        record.plan = Some(p);
        match result {
            Ok(outcome) => record.outcome = outcome,
            Err((outcome, error)) => fail(record, outcome, error),
        }
    }

    /// Steps 4–8 of a run: guard, write, reload, verify, and the rows to
    /// record. `Err` carries the outcome and the reason; `record.reasons`
    /// says why the run did what it did.
    #[allow(clippy::too_many_arguments)]
    async fn apply_plan<'d>(
        &self,
        desired: &'d Desired,
        p: &Plan,
        rendered: Option<&str>,
        md5s: Option<&BTreeMap<String, String>>,
        observed: &Observed,
        record: &mut RunRecord,
        work: &mut Work<'d>,
    ) -> Result<Outcome, (Outcome, String)> {
        // 4. Prune guard.
        if let Some(why) = self.prune.check(p.count(Action::Delete), p.applied_before) {
            record.reasons.push("nothing written: the prune guard stopped the run".into());
            return Err((Outcome::Blocked, why));
        }
        // 5. Nothing to do?
        let heal = self.self_heal && p.has_healable_drift();
        let repairs: Vec<String> = p.drift.iter().filter(|d| d.healable()).map(status::describe_drift).collect();
        if !p.has_changes() && !heal {
            if p.has_healable_drift() {
                record.reasons.push(format!("reload skipped: self-heal is off; drift reported: {}", list(&repairs)));
                return Ok(Outcome::DriftReported);
            }
            record.reasons.push(match observed {
                Observed::Endpoints { .. } => {
                    "reload skipped: nothing to change, and Asterisk holds what was applied".to_string()
                }
                Observed::NotConfigured => "nothing to change (no Asterisk configured)".to_string(),
                Observed::Unreachable { reason } => {
                    format!("nothing to change; drift not checked: Asterisk is unreachable ({reason})")
                }
                Observed::NotListed => "reload skipped: nothing to change".to_string(),
            });
            return Ok(Outcome::NoOp);
        }
        if let Observed::Unreachable { reason } = observed {
            record.reasons.push("nothing written: Asterisk is unreachable".into());
            return Err((Outcome::Failed, format!("Asterisk is unreachable ({reason}); nothing was changed")));
        }
        // What is about to be applied is pending until the commit says what came of it.
        let pending: Vec<status::ExtensionState<'_>> = p
            .changes
            .iter()
            .map(|c| status::ExtensionState {
                number: c.extension.clone(),
                state: SyncState::Pending,
                reason: Some(format!("being applied ({})", c.action.as_str())),
                declared: if c.action == Action::Create { desired.set.get(&c.extension) } else { None },
            })
            .collect();
        if !pending.is_empty()
            && let Err(e) =
                self.store.mark(&StatusUpdate { reset: status::Reset::Nothing, states: pending, only_new: false }).await
        {
            tracing::debug!("marking the changes pending failed: {e}");
        }
        if let Some(live) = &self.live {
            return self.apply_live(live, desired, p, rendered, md5s, heal, record, work).await;
        }
        // 6. Write the file if its content changes.
        if p.file_changed {
            // A settled plan never changes the file, so a changed file always comes with its text.
            let Some(text) = rendered else {
                return Err((Outcome::Failed, "internal: a changed file without its rendering".into()));
            };
            self.progress(Step::Writing).await;
            if let Err(e) = self.managed.write(text) {
                return Err((Outcome::Failed, format!("writing {}: {e}", self.managed.path().display())));
            }
        }
        // 7. Reload and verify.
        if let Some(asterisk) = &self.asterisk
            && (p.file_changed || heal)
        {
            record.reloaded = true;
            record.reasons.push(reload_reason(p, heal, &repairs));
            self.progress(Step::Reloading).await;
            let verdict = match asterisk.reload().await {
                Err(e) => Err(Verdict::whole(format!("reload failed: {e}"))),
                Ok(()) => {
                    self.progress(Step::Verifying).await;
                    verify(asterisk, &desired.set, p, md5s).await
                }
            };
            match verdict {
                Ok(checked) => record.reasons.push(checked),
                Err(v) => {
                    work.failures = v.by_extension;
                    self.progress(Step::RollingBack).await;
                    let (restored, ok) = self.roll_back(asterisk, p).await;
                    record.rollback_failed = !ok;
                    let text = format!("{}; {restored}", v.message);
                    if !ok {
                        for reason in work.failures.values_mut() {
                            reason.push_str("; ");
                            reason.push_str(&restored);
                        }
                    }
                    record.reasons.push(if ok {
                        "rolled back: the previous file is in force again".to_string()
                    } else {
                        format!("ROLLBACK FAILED: {restored}")
                    });
                    return Err((Outcome::Failed, text));
                }
            }
        } else if p.file_changed {
            record.reasons.push(if self.asterisk.is_none() {
                "file written; no Asterisk configured, so nothing was reloaded".to_string()
            } else {
                "file written".to_string()
            });
        }
        // 8. The rows that change land with the run record, in one transaction.
        for c in &p.changes {
            match c.action {
                Action::Delete => work.deletes.push(c.extension.clone()),
                Action::Create | Action::Update => {
                    if let Some(ext) = desired.set.get(&c.extension) {
                        let md5 = md5s.and_then(|m| m.get(&ext.extension)).cloned().unwrap_or_default();
                        work.upserts.push(AppliedRow { extension: std::borrow::Cow::Borrowed(ext), secret_md5: md5 });
                    }
                }
            }
        }
        Ok(Outcome::Applied)
    }

    /// Steps 6–8 with `apply.target: ari`: push the objects of the
    /// extensions that changed (and of the drift to repair), each verified
    /// from Asterisk's answer, no reload; record what was pushed; the rows
    /// of what worked. An extension Asterisk refuses fails alone (the run
    /// is then `degraded`) and stays as it was in Asterisk.
    #[allow(clippy::too_many_arguments)]
    async fn apply_live<'d>(
        &self,
        live: &crate::apply::AriTarget,
        desired: &'d Desired,
        p: &Plan,
        rendered: Option<&str>,
        md5s: Option<&BTreeMap<String, String>>,
        heal: bool,
        record: &mut RunRecord,
        work: &mut Work<'d>,
    ) -> Result<Outcome, (Outcome, String)> {
        let current = self.managed.read().map_err(|e| {
            (Outcome::Failed, format!("reading the record of what was pushed {}: {e}", self.managed.path().display()))
        })?;
        // A settled plan (only drift to repair) pushes what the record says.
        let Some(text) = rendered.map(str::to_string).or_else(|| current.clone()) else {
            return Err((Outcome::Failed, "internal: nothing rendered and no record of what was pushed".into()));
        };
        let mut asked: std::collections::BTreeSet<String> = p.changes.iter().map(|c| c.extension.clone()).collect();
        let mut orphans = Vec::new();
        if heal {
            asked.extend(p.drift.iter().filter_map(status::drift_extension).map(str::to_string));
            for d in &p.drift {
                if let plan::Drift::Orphaned { object_type: kind, id } = d {
                    orphans.push((kind.clone(), id.clone()));
                }
            }
        }
        self.progress(Step::Writing).await;
        let started = Instant::now();
        let run = crate::apply::push(live, current.as_deref(), &text, &asked, &orphans)
            .await
            .map_err(|e| (Outcome::Failed, e))?;
        let took = started.elapsed();
        if current.as_deref() != Some(run.record.as_str())
            && let Err(e) = self.managed.write(&run.record)
        {
            // Asterisk holds the pushes; without the record the next run pushes them again.
            tracing::warn!("writing the record of what was pushed failed: {e}");
        }
        record.reasons.push(format!(
            "pushed through ARI (no reload): {} extension(s) live and verified from Asterisk's answers, {} refused; {} request(s) in {} ms",
            run.pushed.len(),
            run.failures.len(),
            run.requests,
            took.as_millis()
        ));
        for c in &p.changes {
            if run.failures.contains_key(&c.extension) {
                continue;
            }
            match c.action {
                Action::Delete => work.deletes.push(c.extension.clone()),
                Action::Create | Action::Update => {
                    if let Some(ext) = desired.set.get(&c.extension) {
                        let md5 = md5s.and_then(|m| m.get(&ext.extension)).cloned().unwrap_or_default();
                        work.upserts.push(AppliedRow { extension: std::borrow::Cow::Borrowed(ext), secret_md5: md5 });
                    }
                }
            }
        }
        if run.failures.is_empty() {
            return Ok(Outcome::Applied);
        }
        let shown: Vec<String> = run.failures.iter().take(5).map(|(id, why)| format!("{id}: {why}")).collect();
        let more =
            if run.failures.len() > 5 { format!(" (and {} more)", run.failures.len() - 5) } else { String::new() };
        record.error = Some(format!(
            "{} of {} extension(s) refused, the others are live: {}{more}",
            run.failures.len(),
            run.failures.len() + run.pushed.len(),
            shown.join("; ")
        ));
        work.failures = run.failures;
        if run.pushed.is_empty() {
            // Nothing went through (ARI down, or every change refused): a failed run.
            return Err((Outcome::Failed, record.error.clone().unwrap_or_default()));
        }
        Ok(Outcome::Degraded)
    }

    /// Puts the previous file back and reloads it, then checks that
    /// Asterisk holds the previous state for what the run touched: every
    /// endpoint it changed or deleted is loaded, every one it created is
    /// not (the previous file may be refused too, or the reload may fail
    /// after the new file took effect). `(what happened, whether it worked)`.
    async fn roll_back(&self, asterisk: &A, p: &Plan) -> (String, bool) {
        if !p.file_changed {
            return ("the file was not changed".to_string(), true);
        }
        if let Err(e) = self.managed.restore_previous() {
            return (format!("restoring the previous file failed: {e}"), false);
        }
        let mut done = match asterisk.reload().await {
            Ok(()) => "the previous file was restored and reloaded".to_string(),
            Err(e) => format!("the previous file was restored; reloading it failed: {e}"),
        };
        let touched: Vec<(&str, bool)> =
            p.changes.iter().map(|c| (c.extension.as_str(), c.action != Action::Create)).collect();
        let mut wrong = Vec::new();
        if touched.len() > VERIFY_DETAIL_LIMIT {
            match asterisk.endpoints().await {
                Ok(list) => wrong.extend(
                    touched.iter().filter(|(n, was)| list.contains_key(*n) != *was).map(|(n, _)| n.to_string()),
                ),
                Err(e) => return (format!("{done}; checking what Asterisk holds failed: {e}"), false),
            }
        } else {
            for (n, was) in touched {
                match asterisk.endpoint(n).await {
                    Ok(seen) if seen.is_some() == was => {}
                    Ok(_) => wrong.push(n.to_string()),
                    Err(e) => return (format!("{done}; checking what Asterisk holds failed: {e}"), false),
                }
            }
        }
        if wrong.is_empty() {
            if done.contains("failed") {
                done.push_str(", but Asterisk holds the previous definitions");
            }
            (done, true)
        } else {
            (
                format!(
                    "{done}, but Asterisk does not hold the previous definitions of {} (see its log)",
                    list(&wrong)
                ),
                false,
            )
        }
    }
}

/// After a reload: every endpoint the run created or changed (and that
/// is enabled) is there and holds every option the file sets; every
/// deleted or disabled one is gone. A real Asterisk answers "Module
/// Reloaded" even when it dropped an object or the whole file, and keeps
/// the previous definition of an object whose new one it refuses.
/// `Ok` says what was checked.
pub async fn verify<A: AsteriskControl>(
    asterisk: &A,
    set: &DesiredSet,
    p: &Plan,
    md5s: Option<&BTreeMap<String, String>>,
) -> Result<String, Verdict> {
    let mut present = Vec::new();
    let mut absent = Vec::new();
    for c in &p.changes {
        match (c.action, set.get(&c.extension)) {
            (Action::Delete, _) => absent.push(c.extension.clone()),
            (_, Some(ext)) if ext.enabled => present.push(ext),
            (_, Some(ext)) => absent.push(ext.extension.clone()),
            (_, None) => {}
        }
    }
    // Drift repairs are verified too.
    for d in &p.drift {
        if let plan::Drift::MissingFromAsterisk { extension } | plan::Drift::DiffersInAsterisk { extension, .. } = d
            && let Some(ext) = set.get(extension)
            && !present.iter().any(|e| e.extension == *extension)
        {
            present.push(ext);
        }
    }
    let listed = if present.len() + absent.len() > VERIFY_DETAIL_LIMIT {
        Some(
            asterisk
                .endpoints()
                .await
                .map_err(|e| Verdict::whole(format!("verification: listing endpoints failed: {e}")))?,
        )
    } else {
        None
    };
    let mut problems: BTreeMap<String, String> = BTreeMap::new();
    // The details are asked for several at a time: AMI answers by
    // ActionID, so one connection carries them without a round trip each.
    let in_detail = present.len().min(VERIFY_DETAIL_LIMIT);
    let mut details: Vec<Option<ObservedEndpoint>> = Vec::with_capacity(in_detail);
    for chunk in present[..in_detail].chunks(VERIFY_CONCURRENCY) {
        let asked: Vec<_> = chunk.iter().map(|ext| asterisk.endpoint(&ext.extension)).collect();
        for answer in futures_util::future::join_all(asked).await {
            details.push(answer.map_err(|e| Verdict::whole(format!("verification: {e}")))?);
        }
    }
    let mut details = details.into_iter();
    for ext in present.iter() {
        let seen = match details.next() {
            Some(d) => d,
            None => listed.as_ref().and_then(|list| list.get(&ext.extension).cloned()),
        };
        match seen {
            None => {
                problems.insert(
                    ext.extension.clone(),
                    format!(
                        "endpoint {} is not loaded after the reload (Asterisk dropped it: an option or codec it does not accept? see Asterisk's log)",
                        ext.extension
                    ),
                );
            }
            Some(seen) => {
                let mut wrong = Vec::new();
                if seen.context.as_ref().is_some_and(|c| *c != ext.context) {
                    wrong.push(format!("context {:?}", seen.context.as_deref().unwrap_or("")));
                }
                if seen.transport.as_ref().is_some_and(|t| !t.is_empty() && *t != ext.transport) {
                    wrong.push(format!("transport {:?}", seen.transport.as_deref().unwrap_or("")));
                }
                if seen.codecs.as_ref().is_some_and(|c| *c != ext.codecs) {
                    wrong.push(format!("codecs {:?}", seen.codecs.as_ref().map(|c| c.join(",")).unwrap_or_default()));
                }
                if !wrong.is_empty() {
                    problems.insert(
                        ext.extension.clone(),
                        format!("endpoint {} has {} after the reload", ext.extension, wrong.join(", ")),
                    );
                } else if let Some(options) = &seen.options {
                    // Context, transport and codecs match, but Asterisk
                    // keeps the previous definition of an object whose new
                    // one it refused: compare every other option set.
                    let mut off = options.mismatches(ext);
                    if md5s.and_then(|m| m.get(&ext.extension)).is_some_and(|want| options.credential_differs(want)) {
                        off.push(
                            "auth: Asterisk holds another credential than the file sets (compared as md5 digests)"
                                .to_string(),
                        );
                    }
                    if !off.is_empty() {
                        problems.insert(
                            ext.extension.clone(),
                            format!(
                                "endpoint {} does not hold what the file sets ({}): Asterisk refused the new definition and kept the previous one? see its log",
                                ext.extension,
                                off.join("; ")
                            ),
                        );
                    }
                }
            }
        }
    }
    for number in &absent {
        let still = match &listed {
            Some(list) => list.contains_key(number),
            None => {
                asterisk.endpoint(number).await.map_err(|e| Verdict::whole(format!("verification: {e}")))?.is_some()
            }
        };
        if still {
            problems.insert(number.clone(), format!("endpoint {number} is still loaded after the reload"));
        }
    }
    if problems.is_empty() {
        let mut what = vec![format!("verified {} endpoint(s) loaded with every option the file sets", in_detail)];
        if present.len() > in_detail {
            what.push(format!("{} more present in the endpoint list", present.len() - in_detail));
        }
        if !absent.is_empty() {
            what.push(format!("{} gone", absent.len()));
        }
        Ok(what.join(", "))
    } else {
        let shown: Vec<&str> = problems.values().take(5).map(String::as_str).collect();
        let more = if problems.len() > 5 { format!(" (and {} more)", problems.len() - 5) } else { String::new() };
        Err(Verdict { message: format!("verification failed: {}{more}", shown.join("; ")), by_extension: problems })
    }
}

/// What one run produces besides its record.
#[derive(Default)]
struct Work<'d> {
    upserts: Vec<AppliedRow<'d>>,
    deletes: Vec<String>,
    /// Per extension, why verification (or Asterisk) refused it.
    failures: BTreeMap<String, String>,
    states: StatusUpdate<'d>,
}

/// Why verification failed: the whole message, and each extension's part.
#[derive(Debug)]
pub struct Verdict {
    pub message: String,
    pub by_extension: BTreeMap<String, String>,
}

impl Verdict {
    fn whole(message: String) -> Self {
        Verdict { message, by_extension: BTreeMap::new() }
    }
}

/// Why a run reloads, in words.
fn reload_reason(p: &Plan, heal: bool, repairs: &[String]) -> String {
    let (c, u, d) = (p.count(Action::Create), p.count(Action::Update), p.count(Action::Delete));
    let mut why = Vec::new();
    if p.has_changes() {
        why.push(format!("{c} create(s), {u} update(s), {d} delete(s)"));
    } else if p.file_changed {
        why.push(
            "the managed file on disk is not what the applied specs render (edited by hand, or a template change)"
                .into(),
        );
    }
    if heal && !repairs.is_empty() {
        why.push(format!("repairing drift: {}", list(repairs)));
    }
    format!("reloaded: {}", why.join("; "))
}

/// The first few items, and how many more.
fn list(items: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
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
