//! One reconcile ([`Reconciler::run`]): validate, render, plan, prune
//! guard, write (or push), reload, verify, roll back on failure, record.
//! Every outcome is recorded; a run never panics.

use super::error::{BoxError, RunError};
use super::ports::{AsteriskControl, ConfigFile, LiveApply, NoLive, StateStore};
use super::source::{Desired, Fingerprint, secret_files_fingerprint};
use super::{AppliedRow, Outcome, PruneGuard, RunRecord, RunReport, Trigger};
use crate::core::diag::Diagnostic;
use crate::core::plan::{self, Action, Fields, Observed, ObservedEndpoint, Plan, PlanInput};
use crate::core::render::Renderer;
use crate::core::spec::DesiredSet;
use crate::core::status::{self, StatusUpdate, Step, SyncState};
use crate::secret::{AuthCredential, SecretSource, credential, md5_cred};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many changed endpoints are verified in detail (every option); above
/// this, the endpoint list is checked for all of them and the detail for
/// this many. Asked 16 at a time, a real Asterisk holding 10k endpoints
/// answers 100 details in about 18 ms (BENCHMARKS.md), so 2,000 take well
/// under a second; listing the 10k takes 1.4 s.
pub const VERIFY_DETAIL_LIMIT: usize = 2000;

/// How many endpoint details verification asks for at once.
pub const VERIFY_CONCURRENCY: usize = 16;

/// The reconciler over its ports: the store `S`, Asterisk `A`, the file it
/// writes and, with `apply.target: ari`, the live target `L`.
pub struct Reconciler<S, A, L = NoLive> {
    pub store: S,
    pub asterisk: Option<A>,
    /// The managed file (or, with a live target, the record of what was
    /// pushed, which Asterisk never reads).
    pub managed: Box<dyn ConfigFile>,
    pub renderer: Arc<Renderer>,
    pub secrets: Arc<dyn SecretSource + Send + Sync>,
    pub realm: String,
    pub prune: PruneGuard,
    pub self_heal: bool,
    /// `apply.target: ari`: changes are pushed through ARI's dynamic
    /// configuration instead of written and reloaded.
    pub live: Option<L>,
    /// What the last run that found nothing to change saw (see [`Settled`]).
    pub settled: SettledCache,
    /// Where Asterisk's endpoint list is read beside the loop, when the live
    /// target asks for that (`LiveApply::lists_endpoints_beside`); `None`:
    /// in the run.
    pub beside: Option<BesideList>,
}

/// The endpoint list as Asterisk gives it, or why not.
pub type EndpointList = Result<BTreeMap<String, ObservedEndpoint>, String>;

type ListEndpoints = dyn Fn() -> futures_util::future::BoxFuture<'static, EndpointList> + Send + Sync;

/// Asterisk's endpoint list read beside the reconcile loop, on a connection
/// of its own: a run that wants it starts the reading and goes on without
/// it (`Observed::NotListed`); a later run compares it, provided no run
/// changed anything since the reading began (else it is read again). With
/// 10,000 realtime endpoints the reading takes about 6 s, and in a run it
/// held up the first run after every start and take-over.
pub struct BesideList {
    list: Box<ListEndpoints>,
    slot: Arc<std::sync::Mutex<Reading>>,
    /// Runs that changed something so far.
    changes: std::sync::atomic::AtomicU64,
}

enum Reading {
    Idle,
    /// Under way since the given change count.
    Running(u64),
    /// Done: begun at the given change count.
    Ready(u64, EndpointList),
}

impl BesideList {
    pub fn new(
        list: impl Fn() -> futures_util::future::BoxFuture<'static, EndpointList> + Send + Sync + 'static,
    ) -> Self {
        BesideList {
            list: Box::new(list),
            slot: Arc::new(std::sync::Mutex::new(Reading::Idle)),
            changes: Default::default(),
        }
    }

    /// The list, when one is ready that began after the last change; else
    /// starts a reading (unless one is under way) and answers `None`.
    fn take_or_start(&self) -> Option<BTreeMap<String, ObservedEndpoint>> {
        let now = self.changes.load(std::sync::atomic::Ordering::SeqCst);
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *slot, Reading::Idle) {
            Reading::Ready(at, Ok(endpoints)) if at == now => return Some(endpoints),
            Reading::Ready(_, Err(e)) => tracing::debug!("reading the endpoint list beside the loop failed: {e}"),
            Reading::Running(at) => {
                *slot = Reading::Running(at);
                return None;
            }
            _ => {}
        }
        *slot = Reading::Running(now);
        let (reading, done) = ((self.list)(), self.slot.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = reading.await;
            tracing::debug!(took_ms = ms(started.elapsed()), ok = answer.is_ok(), "endpoint list read beside the loop");
            let mut slot = done.lock().unwrap_or_else(|p| p.into_inner());
            if let Reading::Running(at) = *slot {
                *slot = Reading::Ready(at, answer);
            }
        });
        None
    }

    /// A run changed something: a list begun before it is stale.
    fn changed(&self) {
        self.changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a reading has finished (and is not yet taken).
    pub fn ready(&self) -> bool {
        matches!(*self.slot.lock().unwrap_or_else(|p| p.into_inner()), Reading::Ready(..))
    }
}

/// Secret hashes (md5Cred) by extension number.
type Md5s = BTreeMap<String, String>;

/// A plan, with what it was made from. Made the whole way it has the
/// rendered file and the secret hashes; from the settled cache (inputs equal
/// to the last run that found nothing to change) it has neither, and has no
/// changes.
struct Planned {
    plan: Plan,
    rendered: Option<String>,
    md5s: Option<Md5s>,
    observed: Observed,
    applied_count: usize,
    /// A delta run: the plan and the rendering cover only these ids.
    delta: Option<Delta>,
}

/// Runs `f`, a run's blocking work (rendering, planning, splicing and
/// writing the record), where it stands, on the run's own task. Not under
/// `tokio::task::block_in_place`: that was tried, and it retires runtime
/// workers as blocking threads that later exit, and a child process started
/// from such a thread with `PR_SET_PDEATHSIG` (the test harness's Asterisk,
/// sipp and baresip) was killed with it: the hundred-calls test lost its
/// sipp mid-call. Moving this work off the runtime needs owned inputs
/// (`spawn_blocking`); this marks where.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// How many extensions whose specs changed a delta run takes at most;
/// past this the run takes the whole way (rendering 10k takes about 70 ms,
/// a thousand about 7).
pub const DELTA_MAX: usize = 1000;

/// A delta run (the ari target): only the extensions whose specs differ
/// from the [`Baseline`] are rendered, planned and pushed; their objects
/// before come from the record the target remembers (fingerprint
/// `record`), and the pushed ones are spliced back into it. At 10k
/// extensions this is what makes one change live in milliseconds rather
/// than the few hundred that rendering, diffing and rewriting the whole
/// estate take.
struct Delta {
    ids: BTreeSet<String>,
    record: u64,
    excerpt: String,
}

/// What the last clean run left applied, with the ari target: every
/// extension of `set` is in Asterisk as it renders, with the secret files
/// as `secret_files` says, and the record of what was pushed has
/// fingerprint `record`. The next run compares its specs with `set` to
/// find what changed.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub set: DesiredSet,
    pub secret_files: u64,
    pub record: u64,
}

/// What a run leaves for the next run's [`Baseline`].
#[derive(Clone, Debug)]
enum NextBaseline {
    Keep,
    Clear,
    Set(Baseline),
}

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
    baseline: std::sync::Mutex<Option<Baseline>>,
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
    /// What the last clean run left applied (the ari target).
    pub fn baseline(&self) -> Option<Baseline> {
        self.baseline.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set_baseline(&self, b: Option<Baseline>) {
        *self.baseline.lock().unwrap_or_else(|p| p.into_inner()) = b;
    }
}

/// The ids whose specs differ between `before` and `after` (added,
/// removed, or changed in any field), both sorted by number; `None` when
/// there are more than `max`.
fn changed_ids(before: &DesiredSet, after: &DesiredSet, max: usize) -> Option<BTreeSet<String>> {
    let (a, b) = (before.extensions.as_slice(), after.extensions.as_slice());
    let (mut i, mut j) = (0, 0);
    let mut out = BTreeSet::new();
    while i < a.len() || j < b.len() {
        let id = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.extension == y.extension => {
                (i, j) = (i + 1, j + 1);
                // A file that did not change shares its extensions with the last load.
                if Arc::ptr_eq(x, y) || x == y {
                    continue;
                }
                &y.extension
            }
            (Some(x), Some(y)) if x.extension < y.extension => {
                i += 1;
                &x.extension
            }
            (Some(x), None) => {
                i += 1;
                &x.extension
            }
            (_, Some(y)) => {
                j += 1;
                &y.extension
            }
            (None, None) => break,
        };
        out.insert(id.clone());
        if out.len() > max {
            return None;
        }
    }
    Some(out)
}

/// What a run needs to apply a plan.
#[derive(Clone, Copy)]
struct ApplyInput<'a, 'd> {
    desired: &'d Desired,
    plan: &'a Plan,
    rendered: Option<&'a str>,
    md5s: Option<&'a Md5s>,
    observed: &'a Observed,
    delta: Option<&'a Delta>,
}

/// What applying a plan came to.
#[derive(Default)]
struct Applied<'d> {
    /// `Ok`: how the run ended; `Err`: why it failed (or was blocked).
    result: Option<Result<Outcome, RunError>>,
    /// A degraded run: which extensions were refused (the run's error line).
    refused: Option<String>,
    /// Why the run did what it did, in order.
    reasons: Vec<String>,
    reloaded: bool,
    rollback_failed: bool,
    upserts: Vec<AppliedRow<'d>>,
    deletes: Vec<String>,
    /// Per extension, why verification (or Asterisk) refused it.
    failures: BTreeMap<String, String>,
    /// With a live target: the fingerprint of the record now on disk, when
    /// the target remembers that record.
    record: Option<u64>,
}

impl<'d> Applied<'d> {
    fn failed(mut self, e: RunError) -> Self {
        self.result = Some(Err(e));
        self
    }
    fn ended(mut self, outcome: Outcome) -> Self {
        self.result = Some(Ok(outcome));
        self
    }
    fn reason(mut self, why: impl Into<String>) -> Self {
        self.reasons.push(why.into());
        self
    }
    fn result(&self) -> Result<Outcome, &RunError> {
        match &self.result {
            Some(Ok(o)) => Ok(*o),
            Some(Err(e)) => Err(e),
            None => Ok(Outcome::NoOp),
        }
    }
}

/// What a run's steps came to, before it is recorded.
struct Stepped<'d> {
    applied: Applied<'d>,
    plan: Option<Plan>,
    diagnostics: Vec<Diagnostic>,
    states: StatusUpdate<'d>,
    next: NextBaseline,
    /// Why Asterisk did not answer the run, when it did not.
    unreachable: Option<String>,
}

/// What a rollback did: in words, and whether Asterisk holds the previous
/// definitions again.
struct Rollback {
    what: String,
    ok: bool,
}

/// A run's secrets, each read once: rendering and the md5 hashes recorded
/// for the rows see the same value even if a secret file changes during
/// the run. Dropped with the run.
struct ResolvedSecrets<'a> {
    source: &'a (dyn SecretSource + Send + Sync),
    env: Mutex<HashMap<String, Option<String>>>,
    files: Mutex<FileReads>,
}

/// Each secret file's one reading, by path.
type FileReads = HashMap<PathBuf, Result<String, Arc<std::io::Error>>>;

impl<'a> ResolvedSecrets<'a> {
    fn new(source: &'a (dyn SecretSource + Send + Sync)) -> Self {
        ResolvedSecrets { source, env: Default::default(), files: Default::default() }
    }
}

impl SecretSource for ResolvedSecrets<'_> {
    fn env(&self, name: &str) -> Option<String> {
        let mut env = self.env.lock().unwrap_or_else(|p| p.into_inner());
        env.entry(name.to_string()).or_insert_with(|| self.source.env(name)).clone()
    }
    fn file(&self, dir: &Path, path: &Path) -> std::io::Result<String> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .entry(dir.join(path))
            .or_insert_with(|| self.source.file(dir, path).map_err(Arc::new))
            .clone()
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
    }
}

fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> BoxError {
    Box::new(e)
}

impl<S: StateStore, A: AsteriskControl, L: LiveApply> Reconciler<S, A, L> {
    /// Plans without changing anything (the `plan` command): the plan and
    /// the rendered file.
    pub async fn plan(&self, desired: &Desired) -> Result<(Plan, String), RunError> {
        let full = self.full_plan(desired, None).await?;
        Ok((full.plan, full.rendered.unwrap_or_default()))
    }

    /// Render (secrets are read here, once), read the applied rows (from
    /// the cache when `applied_sig` matches it) and the managed file, and
    /// plan.
    ///
    /// When the specs ask for changes, Asterisk is only pinged, not asked
    /// for its whole endpoint list (1.4 s at 10k on a real one): the run
    /// verifies what it changes after the reload, and drift is looked for by
    /// the next run that has nothing to change. Otherwise the list is read
    /// and compared. Errors say which step failed.
    async fn full_plan(&self, desired: &Desired, applied_sig: Option<&str>) -> Result<Planned, RunError> {
        let (rendered, md5s) = blocking(|| -> Result<_, RunError> {
            let (rendered, md5s) = self.render(desired)?;
            // A live target compares and records its objects, in their one form.
            let rendered = match &self.live {
                Some(live) => live.canonical(&rendered, true).map_err(|e| RunError::Push(boxed(e)))?,
                None => rendered,
            };
            Ok((rendered, md5s))
        })?;
        let applied = self.applied_rows(applied_sig).await?;
        let (current, mut plan) = blocking(|| -> Result<_, RunError> {
            let current = self
                .managed
                .read()
                .map_err(|source| RunError::ReadManagedFile { path: self.managed.path().to_path_buf(), source })?;
            let plan = plan::plan(&PlanInput {
                desired: &desired.set,
                secret_md5: &md5s,
                applied: &applied,
                observed: &Observed::NotListed,
                current_file: current.as_deref(),
                rendered: &rendered,
            });
            Ok((current, plan))
        })?;
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
                    plan.drift = self.with_live_drift(record, std::mem::take(&mut plan.drift)).await;
                }
                observed
            }
        };
        Ok(Planned {
            plan,
            rendered: Some(rendered),
            md5s: Some(md5s),
            observed,
            applied_count: applied.len(),
            delta: None,
        })
    }

    /// The plan of a delta run (see [`Delta`]): with a live target and a
    /// [`Baseline`], when at most [`DELTA_MAX`] extensions' specs changed
    /// and the secret files did not, only those are rendered and planned,
    /// against their objects in the remembered record. `None` when any of
    /// that does not hold, or the rendering of those extensions holds
    /// objects of others (a template that does not render each extension
    /// on its own): the run then takes the whole way.
    async fn delta_plan(&self, desired: &Desired, secret_files: u64, applied_sig: Option<&str>) -> Option<Planned> {
        let live = self.live.as_ref()?;
        let base = self.settled.baseline()?;
        if base.secret_files != secret_files {
            return None;
        }
        let t0 = Instant::now();
        let ids = changed_ids(&base.set, &desired.set, DELTA_MAX)?;
        if ids.is_empty() {
            return None;
        }
        let t_ids = t0.elapsed();
        let excerpt = live.excerpt(base.record, &ids)?;
        let t_excerpt = t0.elapsed();
        let applied = self.applied_rows(applied_sig).await.ok()?;
        let t_applied = t0.elapsed();
        let part = DesiredSet::new(ids.iter().filter_map(|id| desired.set.get(id).cloned()).collect());
        let part_desired = Desired { set: part, source: desired.source.clone(), ..Default::default() };
        let (rendered, md5s) = self.render(&part_desired).ok()?;
        let rendered = live.canonical(&rendered, false).ok()?;
        let t_render = t0.elapsed();
        tracing::debug!(
            ids_ms = t_ids.as_secs_f64() * 1000.0,
            excerpt_ms = (t_excerpt - t_ids).as_secs_f64() * 1000.0,
            applied_ms = (t_applied - t_excerpt).as_secs_f64() * 1000.0,
            render_ms = (t_render - t_applied).as_secs_f64() * 1000.0,
            "delta plan steps"
        );
        let foreign = section_ids(&rendered).find(|id| !ids.contains(*id));
        if let Some(id) = foreign {
            tracing::debug!(id, "the rendering of some extensions holds objects of another: the whole way");
            return None;
        }
        let applied_part: BTreeMap<String, Fields> =
            ids.iter().filter_map(|id| applied.get(id).map(|f| (id.clone(), f.clone()))).collect();
        let mut plan = plan::plan(&PlanInput {
            desired: &part_desired.set,
            secret_md5: &md5s,
            applied: &applied_part,
            observed: &Observed::NotListed,
            current_file: Some(&excerpt),
            rendered: &rendered,
        });
        plan.unchanged += desired.set.extensions.len() - part_desired.set.extensions.len();
        plan.applied_before = applied.len();
        // The pushes find an ARI that does not answer; Asterisk's whole list
        // is for the runs with nothing to change. A commit that does not
        // need Asterisk asks whether it answers, so the run can say.
        let observed = match &self.asterisk {
            Some(a) if live.commits_without_asterisk() => match a.ping().await {
                Ok(()) => Observed::NotListed,
                Err(e) => Observed::Unreachable { reason: e.to_string() },
            },
            _ => Observed::NotListed,
        };
        Some(Planned {
            plan,
            rendered: Some(rendered),
            md5s: Some(md5s),
            observed,
            applied_count: applied.len(),
            delta: Some(Delta { ids, record: base.record, excerpt }),
        })
    }

    /// The rendered file and every extension's md5Cred, from one reading of
    /// each secret.
    fn render(&self, desired: &Desired) -> Result<(String, Md5s), RunError> {
        let secrets = ResolvedSecrets::new(self.secrets.as_ref());
        let rendered = self.renderer.render(&desired.set, &desired.source, &secrets).map_err(RunError::Render)?;
        let mut md5s = BTreeMap::new();
        for ext in desired.set.extensions.iter() {
            let hash = match credential(&**ext, &secrets).map_err(RunError::ResolveSecret)? {
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
    /// Returns the signature it read, if it read one.
    async fn remember_commit(&self, upserts: &[AppliedRow<'_>], deletes: &[String]) -> Option<String> {
        if upserts.is_empty() && deletes.is_empty() {
            return None;
        }
        let cache = self.settled.forget_applied()?;
        let signature = self.store.applied_signature().await.ok()?;
        let mut rows = Arc::unwrap_or_clone(cache.rows);
        for d in deletes {
            rows.remove(d);
        }
        for u in upserts {
            rows.insert(u.extension.extension.clone(), u.fields());
        }
        self.settled.set_applied(signature.clone(), Arc::new(rows), cache.read_at);
        Some(signature)
    }

    /// After a commit with a live target: the baseline the run left, and,
    /// when it applied everything it was asked to, the settled inputs, so
    /// that the next run with nothing to change is a settled one rather
    /// than a whole render and plan. (With the file target the next run
    /// takes the whole way and settles itself.)
    async fn after_commit(&self, desired: &Desired, next: NextBaseline, outcome: Outcome, signature: Option<String>) {
        match next {
            NextBaseline::Keep => {}
            NextBaseline::Clear => self.settled.set_baseline(None),
            NextBaseline::Set(base) => {
                if outcome == Outcome::Applied
                    && let Some(fingerprint) = desired.fingerprint
                {
                    let signature = match signature {
                        Some(s) => Some(s),
                        None => self.store.applied_signature().await.ok(),
                    };
                    if let Some(applied) = signature {
                        self.settled.set(Some(Settled {
                            fingerprint,
                            secret_files: base.secret_files,
                            applied,
                            file_hash: base.record,
                            applied_count: desired.set.extensions.len(),
                        }));
                    }
                }
                self.settled.set_baseline(Some(base));
            }
        }
    }

    /// The plan of a run whose inputs equal the last settled run's (see
    /// [`Settled`]): no changes, only what Asterisk shows now. `None` when
    /// any input differs.
    async fn settled_plan(&self, desired: &Desired, secret_files: u64, applied_sig: Option<&str>) -> Option<Planned> {
        let s = self.settled.get()?;
        if desired.fingerprint != Some(s.fingerprint)
            || s.secret_files != secret_files
            || applied_sig != Some(&s.applied)
        {
            return None;
        }
        let current = self.managed.read().ok()??;
        if Fingerprint::of(&current) != s.file_hash {
            return None;
        }
        let observed = self.observe().await;
        // Settled means every desired extension is applied as it is and nothing else is.
        let drift = plan::observed_drift(&desired.set, &|n| desired.set.get(n).is_some(), &observed);
        let drift = self.with_live_drift(&current, drift).await;
        let plan = Plan {
            changes: Vec::new(),
            unchanged: desired.set.extensions.len(),
            drift,
            file_changed: false,
            diff: String::new(),
            applied_before: s.applied_count,
        };
        Some(Planned { plan, rendered: None, md5s: None, observed, applied_count: s.applied_count, delta: None })
    }

    /// With a live target: `drift` and what reading the pushed objects back
    /// shows (see `LiveApply::drift`), without repeating what the endpoint
    /// list already said; an orphaned endpoint of our astdb family is ours
    /// to delete, so it is not reported as unmanaged too.
    async fn with_live_drift(&self, record: &str, mut drift: Vec<plan::Drift>) -> Vec<plan::Drift> {
        let Some(live) = &self.live else { return drift };
        let keys = match &self.asterisk {
            Some(a) if live.sweep_starts() => a.astdb_keys(live.astdb_family()).await.unwrap_or_else(|e| {
                tracing::debug!("listing the astdb family failed: {e}");
                Vec::new()
            }),
            _ => Vec::new(),
        };
        for d in live.drift(record, &keys).await {
            if let plan::Drift::Orphaned { object_type: kind, id } = &d
                && kind == "endpoint"
            {
                drift.retain(|x| !matches!(x, plan::Drift::Unmanaged { endpoint } if endpoint == id));
            }
            if !drift.contains(&d) {
                drift.push(d);
            }
        }
        drift
    }

    async fn observe(&self) -> Observed {
        let Some(a) = &self.asterisk else { return Observed::NotConfigured };
        let not_listed = || async move {
            match a.ping().await {
                Ok(()) => Observed::NotListed,
                Err(e) => Observed::Unreachable { reason: e.to_string() },
            }
        };
        match (&self.live, &self.beside) {
            // A live target on a large estate: the list once a sweep (see `LiveApply::lists_endpoints`).
            (Some(l), _) if !l.lists_endpoints() => not_listed().await,
            // Read beside the loop: a list ready and still true, or none this run.
            (Some(l), Some(beside)) if l.lists_endpoints_beside() => match beside.take_or_start() {
                Some(endpoints) => {
                    l.endpoints_listed();
                    Observed::Endpoints { endpoints }
                }
                None => not_listed().await,
            },
            _ => match a.endpoints().await {
                Ok(endpoints) => {
                    if let Some(l) = &self.live {
                        l.endpoints_listed();
                    }
                    Observed::Endpoints { endpoints }
                }
                Err(e) => Observed::Unreachable { reason: e.to_string() },
            },
        }
    }

    /// One reconcile. Never panics; every outcome is recorded (when the
    /// database can be reached) and returned.
    pub async fn run(&self, trigger: Trigger, desired: Desired) -> RunReport {
        let started = Instant::now();
        let started_at = chrono::Utc::now();
        self.progress(Step::Planning).await;
        let Stepped { applied, plan, diagnostics, states, next, unreachable } = self.step(&desired).await;
        self.progress(Step::Recording).await;
        let Applied { result, refused, reasons, reloaded, rollback_failed, upserts, deletes, .. } = applied;
        let (outcome, error) = match result {
            None => (Outcome::NoOp, refused),
            Some(Ok(outcome)) => (outcome, refused),
            Some(Err(e)) => (e.outcome(), Some(e.to_string())),
        };
        // Anything but a run with nothing to do may have changed what
        // Asterisk lists (a failed run, part of its changes).
        if outcome != Outcome::NoOp
            && let Some(b) = &self.beside
        {
            b.changed();
        }
        let mut record = RunRecord {
            trigger,
            revision: desired.source.revision.clone(),
            subject: desired.subject.clone(),
            started_at,
            finished_at: chrono::Utc::now(),
            outcome,
            plan,
            error,
            diagnostics,
            reloaded,
            warning: desired.warning.clone(),
            reasons,
            rollback_failed,
        };
        let committing = Instant::now();
        let run_id = match self.store.commit(&record, &upserts, &deletes, &states).await {
            Ok(id) => {
                tracing::debug!(took_ms = ms(committing.elapsed()), "recorded");
                let signature = self.remember_commit(&upserts, &deletes).await;
                self.after_commit(&desired, next, record.outcome, signature).await;
                Some(id)
            }
            Err(e) => {
                // The rows are not what Asterisk now holds: the next run takes the whole way.
                self.settled.set_baseline(None);
                self.settled.set(None);
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
        RunReport { record, run_id, duration: started.elapsed(), unreachable }
    }

    /// Says which step the run is in (the Reconciling condition). A store
    /// that cannot be written to only loses the progress, not the run.
    async fn progress(&self, step: Step) {
        if let Err(e) = self.store.progress(step).await {
            tracing::debug!(step = step.as_str(), "recording the run's step failed: {e}");
        }
    }

    /// The applied rows, from the cache when `applied_sig` matches it.
    async fn applied_rows(&self, applied_sig: Option<&str>) -> Result<Arc<BTreeMap<String, Fields>>, RunError> {
        if let Some(a) = applied_sig.and_then(|sig| self.settled.applied(sig)) {
            return Ok(a);
        }
        let a = Arc::new(self.store.applied().await.map_err(|e| RunError::ReadApplied(boxed(e)))?);
        if let Some(sig) = applied_sig {
            self.settled.set_applied(sig.to_string(), a.clone(), Instant::now());
        }
        Ok(a)
    }

    /// Steps 0–8 of a run: the source and the specs must be good, then
    /// plan (from the settled cache when nothing changed) and apply.
    async fn step<'d>(&self, desired: &'d Desired) -> Stepped<'d> {
        let stopped = |e: RunError, diagnostics: Vec<Diagnostic>, states: StatusUpdate<'d>| Stepped {
            applied: Applied::default().failed(e),
            plan: None,
            diagnostics,
            states,
            next: NextBaseline::Clear,
            unreachable: None,
        };
        // 0. The source must be readable: otherwise nothing changes.
        if let Some(e) = &desired.error {
            return stopped(RunError::ReadSource { reason: e.clone() }, Vec::new(), StatusUpdate::default());
        }
        // 1. The specs must be valid as a whole: otherwise nothing changes.
        let errors = desired.diagnostics.iter().filter(|d| d.is_error()).count();
        if errors > 0 {
            let e = RunError::Validate { errors };
            // What the valid files declare anew waits for the others to be fixed.
            let applied_sig = self.store.applied_signature().await.ok();
            let states = match self.applied_rows(applied_sig.as_deref()).await {
                Ok(applied) => status::states_when_invalid(
                    &desired.set,
                    &|n| applied.contains_key(n),
                    &format!("not applied yet: {e}"),
                ),
                Err(_) => StatusUpdate::default(),
            };
            return stopped(e, desired.diagnostics.clone(), states);
        }
        let diagnostics = desired.diagnostics.clone();
        // 2–3. Plan: from the settled cache, or the whole way.
        let planning = Instant::now();
        let secret_files = secret_files_fingerprint(&desired.set);
        let fingerprinted = planning.elapsed();
        let applied_sig = self.store.applied_signature().await.ok();
        tracing::debug!(
            secret_files_ms = fingerprinted.as_secs_f64() * 1000.0,
            signature_ms = (planning.elapsed() - fingerprinted).as_secs_f64() * 1000.0,
            "plan inputs read"
        );
        let mut settled = false;
        let planned = match self.settled_plan(desired, secret_files, applied_sig.as_deref()).await {
            Some(p) => {
                settled = true;
                p
            }
            None => {
                self.settled.set(None);
                if let Some(p) = self.delta_plan(desired, secret_files, applied_sig.as_deref()).await {
                    p
                } else {
                    let planned = match self.full_plan(desired, applied_sig.as_deref()).await {
                        Ok(p) => p,
                        Err(e) => return stopped(e, diagnostics, StatusUpdate::default()),
                    };
                    if let (Some(fingerprint), Some(applied_sig), Some(rendered), false) = (
                        desired.fingerprint,
                        applied_sig,
                        &planned.rendered,
                        planned.plan.has_changes() || planned.plan.file_changed,
                    ) {
                        self.settled.set(Some(Settled {
                            fingerprint,
                            secret_files,
                            applied: applied_sig,
                            file_hash: Fingerprint::of(rendered),
                            applied_count: planned.applied_count,
                        }));
                    }
                    planned
                }
            }
        };
        let Planned { plan: p, rendered, md5s, observed, delta, .. } = planned;
        let planned_at = Instant::now();
        tracing::debug!(
            how = if settled {
                "settled"
            } else if delta.is_some() {
                "delta"
            } else {
                "whole"
            },
            took_ms = ms(planning.elapsed()),
            "planned"
        );
        let heal = self.self_heal && p.has_healable_drift();
        let mut applied = self
            .apply_plan(ApplyInput {
                desired,
                plan: &p,
                rendered: rendered.as_deref(),
                md5s: md5s.as_ref(),
                observed: &observed,
                delta: delta.as_ref(),
            })
            .await;
        tracing::debug!(took_ms = ms(planned_at.elapsed()), "applied");
        if let Some(d) = &delta {
            applied.reasons.insert(
                0,
                format!(
                    "delta run: only the {} extension(s) whose specs changed were rendered and planned, against the remembered record of what was pushed",
                    d.ids.len()
                ),
            );
        }
        let result = applied.result();
        // What the next run compares its specs with (the ari target).
        let next = match (&self.live, &result) {
            (None, _) => NextBaseline::Clear,
            (Some(_), Ok(Outcome::NoOp)) if settled => NextBaseline::Keep,
            (Some(_), Ok(Outcome::NoOp | Outcome::Applied)) if applied.failures.is_empty() => {
                // A run with nothing to push left the record as it was.
                let record = applied.record.or_else(|| match (&delta, &rendered) {
                    (Some(d), _) => Some(d.record),
                    (None, Some(r)) if !p.file_changed => Some(Fingerprint::of(r.as_str())),
                    _ => None,
                });
                match record {
                    Some(record) => NextBaseline::Set(Baseline { set: desired.set.clone(), secret_files, record }),
                    None => NextBaseline::Clear,
                }
            }
            _ => NextBaseline::Clear,
        };
        let ending = match &result {
            Ok(Outcome::Applied) => status::Ending::Applied,
            Ok(Outcome::DriftReported) => status::Ending::DriftReported,
            Ok(Outcome::Degraded) => status::Ending::Degraded,
            Ok(_) => status::Ending::NoOp,
            Err(e) if e.outcome() == Outcome::Blocked => status::Ending::Blocked,
            Err(_) => status::Ending::Failed,
        };
        let error = result.err().map(|e| e.to_string());
        let states = status::states_after(&status::RunFacts {
            set: &desired.set,
            plan: &p,
            ending,
            error: error.as_deref(),
            failures: &applied.failures,
            healed: heal,
            observed: matches!(observed, Observed::Endpoints { .. }),
        });
        let unreachable = match observed {
            Observed::Unreachable { reason } => Some(reason),
            _ => None,
        };
        // The plan moves into the record (at 100k extensions a copy would cost hundreds of MB).
        Stepped { applied, plan: Some(p), diagnostics, states, next, unreachable }
    }

    /// Steps 4–8 of a run: guard, write, reload, verify, and the rows to
    /// record; `reasons` say why the run did what it did.
    async fn apply_plan<'d>(&self, input: ApplyInput<'_, 'd>) -> Applied<'d> {
        let ApplyInput { desired, plan: p, rendered, md5s, observed, .. } = input;
        let mut out = Applied::default();
        // 4. Prune guard.
        if let Some(why) = self.prune.check(p.count(Action::Delete), p.applied_before) {
            return out.reason("nothing written: the prune guard stopped the run").failed(RunError::PruneGuard(why));
        }
        // 5. Nothing to do?
        let heal = self.self_heal && p.has_healable_drift();
        let repairs: Vec<String> = p.drift.iter().filter(|d| d.healable()).map(status::describe_drift).collect();
        if !p.has_changes() && !heal {
            if p.has_healable_drift() {
                return out
                    .reason(format!("reload skipped: self-heal is off; drift reported: {}", list(&repairs)))
                    .ended(Outcome::DriftReported);
            }
            let why = match observed {
                Observed::Endpoints { .. } => {
                    "reload skipped: nothing to change, and Asterisk holds what was applied".to_string()
                }
                Observed::NotConfigured => "nothing to change (no Asterisk configured)".to_string(),
                Observed::Unreachable { reason } => {
                    format!("nothing to change; drift not checked: Asterisk is unreachable ({reason})")
                }
                Observed::NotListed => "reload skipped: nothing to change".to_string(),
            };
            return out.reason(why).ended(Outcome::NoOp);
        }
        if let Observed::Unreachable { reason } = observed {
            // Tables that other nodes read too: the commit serves them, and
            // this Asterisk is verified when it answers again (`fleet`).
            if !self.live.as_ref().is_some_and(|l| l.commits_without_asterisk()) {
                return out
                    .reason("nothing written: Asterisk is unreachable")
                    .failed(RunError::Unreachable { reason: reason.clone() });
            }
            out.reasons.push(format!(
                "Asterisk is unreachable ({reason}): committed for the other nodes reading the same tables; this one is verified when it answers again"
            ));
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
            return self.apply_live(live, input, heal, out).await;
        }
        // 6. Write the file if its content changes.
        if p.file_changed {
            // A settled plan never changes the file, so a changed file always comes with its text.
            let Some(text) = rendered else {
                return out.failed(RunError::Internal("a changed file without its rendering"));
            };
            self.progress(Step::Writing).await;
            if let Err(source) = self.managed.write(text) {
                return out.failed(RunError::WriteManagedFile { path: self.managed.path().to_path_buf(), source });
            }
        }
        // 7. Reload and verify.
        if let Some(asterisk) = &self.asterisk
            && (p.file_changed || heal)
        {
            out.reloaded = true;
            out.reasons.push(reload_reason(p, heal, &repairs));
            self.progress(Step::Reloading).await;
            let verdict = match asterisk.reload().await {
                Err(e) => Err(Verdict::whole(format!("reload failed: {e}"))),
                Ok(()) => {
                    self.progress(Step::Verifying).await;
                    verify(asterisk, &desired.set, p, md5s).await
                }
            };
            match verdict {
                Ok(checked) => out.reasons.push(checked),
                Err(verdict) => {
                    out.failures = verdict.by_extension.clone();
                    self.progress(Step::RollingBack).await;
                    let Rollback { what: restored, ok } = self.roll_back(asterisk, p).await;
                    out.rollback_failed = !ok;
                    if !ok {
                        for reason in out.failures.values_mut() {
                            reason.push_str("; ");
                            reason.push_str(&restored);
                        }
                    }
                    out.reasons.push(if ok {
                        "rolled back: the previous file is in force again".to_string()
                    } else {
                        format!("ROLLBACK FAILED: {restored}")
                    });
                    return out.failed(RunError::Verify { verdict, restored });
                }
            }
        } else if p.file_changed {
            out.reasons.push(if self.asterisk.is_none() {
                "file written; no Asterisk configured, so nothing was reloaded".to_string()
            } else {
                "file written".to_string()
            });
        }
        // 8. The rows that change land with the run record, in one transaction.
        (out.upserts, out.deletes) = rows(desired, p, md5s, &BTreeMap::new());
        out.ended(Outcome::Applied)
    }

    /// Steps 6–8 with a live target: push the objects of the extensions
    /// that changed (and of the drift to repair), each verified from
    /// Asterisk's answer, no reload; record what was pushed; the rows of
    /// what worked. An extension Asterisk refuses fails alone (the run is
    /// then `degraded`) and stays as it was in Asterisk.
    async fn apply_live<'d>(
        &self,
        live: &L,
        input: ApplyInput<'_, 'd>,
        heal: bool,
        mut out: Applied<'d>,
    ) -> Applied<'d> {
        let ApplyInput { desired, plan: p, rendered, md5s, delta, .. } = input;
        let current = match delta {
            // A delta run: the objects before are those of the remembered record.
            Some(d) => Some(d.excerpt.clone()),
            None => match self.managed.read() {
                Ok(c) => c,
                Err(source) => {
                    return out.failed(RunError::ReadPushRecord { path: self.managed.path().to_path_buf(), source });
                }
            },
        };
        // A settled plan (only drift to repair) pushes what the record says.
        let Some(text) = rendered.map(str::to_string).or_else(|| current.clone()) else {
            return out.failed(RunError::Internal("nothing rendered and no record of what was pushed"));
        };
        let mut asked: BTreeSet<String> = p.changes.iter().map(|c| c.extension.clone()).collect();
        let mut repair = BTreeSet::new();
        let mut orphans = Vec::new();
        if heal {
            repair.extend(p.drift.iter().filter_map(status::drift_extension).map(str::to_string));
            asked.extend(repair.iter().cloned());
            for d in &p.drift {
                if let plan::Drift::Orphaned { object_type: kind, id } = d {
                    orphans.push((kind.clone(), id.clone()));
                }
            }
        }
        self.progress(Step::Writing).await;
        let started = Instant::now();
        let run = match live.push_changes(current.as_deref(), &text, &asked, &repair, &orphans).await {
            Ok(run) => run,
            Err(e) => return out.failed(RunError::Push(boxed(e))),
        };
        let took = started.elapsed();
        let recording = Instant::now();
        // Splicing and writing the record (6 MB at 10k) is blocking work:
        // on a runtime worker it held up every other task for 40–200 ms.
        out.record = blocking(|| {
            // The whole record: a delta run's part spliced into the remembered one.
            let record = match delta {
                Some(d) => live.splice(d.record, &d.ids, &run.record),
                None => Some(run.record.clone()),
            };
            match record {
                Some(record) if delta.is_some() || current.as_deref() != Some(record.as_str()) => {
                    match self.managed.replace(&record) {
                        Ok(()) => Some(Fingerprint::of(record.as_str())),
                        // Asterisk holds the pushes; without the record the next run pushes them again.
                        Err(e) => {
                            tracing::warn!("writing the record of what was pushed failed: {e}");
                            out.record
                        }
                    }
                }
                Some(record) => Some(Fingerprint::of(record.as_str())),
                None => {
                    // The remembered record moved under the run: the next one reads the whole file.
                    tracing::warn!(
                        "the remembered record of what was pushed changed during the run; the next run takes the whole way"
                    );
                    out.record
                }
            }
        });
        tracing::debug!(push_ms = ms(took), record_ms = ms(recording.elapsed()), "pushed");
        out.reasons.push(format!(
            "{}: {} extension(s) live and verified from Asterisk's answers, {} refused; {} request(s) in {} ms",
            live.applied_how(),
            run.pushed.len(),
            run.failures.len(),
            run.requests,
            took.as_millis()
        ));
        out.reasons.extend(run.notes);
        (out.upserts, out.deletes) = rows(desired, p, md5s, &run.failures);
        if run.failures.is_empty() {
            return out.ended(Outcome::Applied);
        }
        let shown: Vec<String> = run.failures.iter().take(5).map(|(id, why)| format!("{id}: {why}")).collect();
        let more =
            if run.failures.len() > 5 { format!(" (and {} more)", run.failures.len() - 5) } else { String::new() };
        let message = format!(
            "{} of {} extension(s) refused, the others are live: {}{more}",
            run.failures.len(),
            run.failures.len() + run.pushed.len(),
            shown.join("; ")
        );
        out.failures = run.failures;
        if run.pushed.is_empty() {
            // Nothing went through (ARI down, or every change refused): a failed run.
            return out.failed(RunError::PushRefused { message });
        }
        out.refused = Some(message);
        out.ended(Outcome::Degraded)
    }

    /// Puts the previous file back and reloads it, then checks that
    /// Asterisk holds the previous state for what the run touched: every
    /// endpoint it changed or deleted is loaded, every one it created is
    /// not (the previous file may be refused too, or the reload may fail
    /// after the new file took effect).
    async fn roll_back(&self, asterisk: &A, p: &Plan) -> Rollback {
        let failed = |what: String| Rollback { what, ok: false };
        if !p.file_changed {
            return Rollback { what: "the file was not changed".to_string(), ok: true };
        }
        if let Err(e) = self.managed.restore_previous() {
            return failed(format!("restoring the previous file failed: {e}"));
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
                Err(e) => return failed(format!("{done}; checking what Asterisk holds failed: {e}")),
            }
        } else {
            for (n, was) in touched {
                match asterisk.endpoint(n).await {
                    Ok(seen) if seen.is_some() == was => {}
                    Ok(_) => wrong.push(n.to_string()),
                    Err(e) => return failed(format!("{done}; checking what Asterisk holds failed: {e}")),
                }
            }
        }
        if wrong.is_empty() {
            if done.contains("failed") {
                done.push_str(", but Asterisk holds the previous definitions");
            }
            Rollback { what: done, ok: true }
        } else {
            failed(format!(
                "{done}, but Asterisk does not hold the previous definitions of {} (see its log)",
                list(&wrong)
            ))
        }
    }
}

/// The rows a plan's changes write (upserts with their md5Cred, deletes),
/// leaving out the extensions in `failed`.
fn rows<'d>(
    desired: &'d Desired,
    p: &Plan,
    md5s: Option<&Md5s>,
    failed: &BTreeMap<String, String>,
) -> (Vec<AppliedRow<'d>>, Vec<String>) {
    let (mut upserts, mut deletes) = (Vec::new(), Vec::new());
    for c in p.changes.iter().filter(|c| !failed.contains_key(&c.extension)) {
        match c.action {
            Action::Delete => deletes.push(c.extension.clone()),
            Action::Create | Action::Update => {
                if let Some(ext) = desired.set.get(&c.extension) {
                    let md5 = md5s.and_then(|m| m.get(&ext.extension)).cloned().unwrap_or_default();
                    upserts.push(AppliedRow { extension: std::borrow::Cow::Borrowed(ext), secret_md5: md5 });
                }
            }
        }
    }
    (upserts, deletes)
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
        Err(Verdict { message: failure_message(&problems), by_extension: problems })
    }
}

/// A failed verification in one line: the first five extensions' problems,
/// and how many more there are.
pub(crate) fn failure_message(problems: &BTreeMap<String, String>) -> String {
    let shown: Vec<&str> = problems.values().take(5).map(String::as_str).collect();
    let more = if problems.len() > 5 { format!(" (and {} more)", problems.len() - 5) } else { String::new() };
    format!("verification failed: {}{more}", shown.join("; "))
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The ids of a record's `[id]` headers (a live target's record form).
fn section_ids(record: &str) -> impl Iterator<Item = &str> {
    record.lines().filter_map(|l| l.trim().strip_prefix('[').and_then(|r| r.strip_suffix(']')))
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
