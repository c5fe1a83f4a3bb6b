//! The daemon's reconcile loop: one reconcile at a time, triggered by file
//! changes in the spec directory (debounced), a periodic resync (jittered),
//! manual requests (the API) and webhooks; failures retry with exponential
//! back-off; shutdown flows in from the caller.

use crate::git::GitSource;
use crate::reconcile::{AsteriskControl, Desired, Outcome, Reconciler, RunReport, StateStore, Trigger};
use crate::render::SourceInfo;
use crate::spec::{self, LoadOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{RwLock, mpsc};

/// Where each run reads the desired state from.
#[derive(Clone, Debug)]
pub enum DesiredSource {
    /// A directory of spec files, as it is on disk.
    Dir(Arc<DirSource>),
    /// A branch of a git remote: each run fetches, then reads the specs from
    /// the fetched commit's tree.
    Git(Arc<std::sync::Mutex<GitSource>>),
}

impl DesiredSource {
    /// Loads the desired state (blocking work runs off the async runtime).
    pub async fn load(&self) -> Desired {
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || match this {
            DesiredSource::Dir(dir) => dir.load(),
            DesiredSource::Git(git) => {
                let mut git = git.lock().unwrap_or_else(|p| p.into_inner());
                load_git(&mut git)
            }
        })
        .await;
        joined
            .unwrap_or_else(|e| Desired { error: Some(format!("loading the specs failed: {e}")), ..Default::default() })
    }
}

/// A spec directory, with the last load kept: when no file's name or bytes
/// changed, the next load reuses it instead of parsing again (reading and
/// hashing 10k extensions' files takes under a millisecond; parsing them
/// tens). When some files changed, only those are parsed again.
#[derive(Debug)]
pub struct DirSource {
    pub path: PathBuf,
    /// Where `passwordFile` and `passwordEnv` may point.
    pub secrets: spec::SecretPolicy,
    last: std::sync::Mutex<Option<Desired>>,
    /// Each file's content hash and parse outcome, by displayed name.
    files: std::sync::Mutex<std::collections::HashMap<String, (u64, spec::load::FileOutcome)>>,
}

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired")
            .field("extensions", &self.set.extensions.len())
            .field("source", &self.source.source)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl DirSource {
    /// A directory with the default secret policy (its `secrets/`, `EXT_*`).
    pub fn new(path: PathBuf) -> Self {
        let secrets = spec::SecretPolicy::for_spec_dir(&path);
        Self::with_secrets(path, secrets)
    }

    pub fn with_secrets(path: PathBuf, secrets: spec::SecretPolicy) -> Self {
        DirSource { path, secrets, last: Default::default(), files: Default::default() }
    }

    /// Loads the directory, reusing the last load when nothing changed and
    /// the last parse of every file whose bytes did not change.
    pub fn load(&self) -> Desired {
        let (sources, mut diagnostics) = read_dir_sources(&self.path);
        let fp = fingerprint(&sources, &diagnostics);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = last.as_ref().filter(|d| d.fingerprint == Some(fp)) {
            return d.clone();
        }
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let hashes: Vec<u64> = sources.iter().map(file_hash).collect();
        let changed: Vec<spec::load::Source> = sources
            .iter()
            .zip(&hashes)
            .filter(|((shown, _, _), h)| files.get(shown).is_none_or(|(old, _)| old != *h))
            .map(|(source, _)| source.clone())
            .collect();
        let mut parsed: std::collections::HashMap<String, spec::load::FileOutcome> = changed
            .iter()
            .map(|(shown, _, _)| shown.clone())
            .zip(spec::load::parse_sources(&changed, &self.secrets))
            .collect();
        let mut next = std::collections::HashMap::with_capacity(sources.len());
        let mut outcomes = Vec::with_capacity(sources.len());
        for ((shown, _, _), h) in sources.iter().zip(hashes) {
            let outcome = match parsed.remove(shown) {
                Some(o) => o,
                None => files.remove(shown).map(|(_, o)| o).unwrap_or_default(),
            };
            next.insert(shown.clone(), (h, outcome.clone()));
            outcomes.push((shown.clone(), outcome));
        }
        *files = next;
        let mut loaded = spec::load::assemble(outcomes);
        diagnostics.append(&mut loaded.diagnostics);
        let d = Desired {
            set: loaded.set,
            diagnostics,
            source: SourceInfo { source: self.path.display().to_string(), revision: None },
            fingerprint: Some(fp),
            ..Default::default()
        };
        *last = Some(d.clone());
        d
    }
}

fn file_hash(source: &spec::load::Source) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match &source.2 {
        Ok(bytes) => bytes.hash(&mut h),
        Err(e) => e.hash(&mut h),
    }
    h.finish()
}

fn read_dir_sources(dir: &Path) -> (Vec<spec::load::Source>, Vec<crate::diag::Diagnostic>) {
    let (sources, mut diagnostics) = spec::load::read_paths(&[dir.to_path_buf()], &LoadOptions::for_dir(dir));
    if !dir.is_dir() {
        diagnostics.push(crate::diag::Diagnostic::error(
            "io-error",
            crate::diag::Location { file: dir.display().to_string(), line: 1, column: 1 },
            "",
            format!("the spec directory {} does not exist", dir.display()),
        ));
    }
    (sources, diagnostics)
}

/// Hashes what a load depends on: every file's name and bytes (or read
/// error), and the diagnostics of reading.
fn fingerprint(sources: &[spec::load::Source], diagnostics: &[crate::diag::Diagnostic]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (shown, _, content) in sources {
        shown.hash(&mut h);
        match content {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.hash(&mut h),
        }
    }
    for d in diagnostics {
        d.message.hash(&mut h);
    }
    h.finish()
}

fn desired_from_sources(
    dir: &Path,
    secrets: &spec::SecretPolicy,
    sources: Vec<spec::load::Source>,
    mut diagnostics: Vec<crate::diag::Diagnostic>,
    fingerprint: u64,
) -> Desired {
    let mut loaded = spec::load::load_sources(sources, secrets);
    diagnostics.append(&mut loaded.diagnostics);
    Desired {
        set: loaded.set,
        diagnostics,
        source: SourceInfo { source: dir.display().to_string(), revision: None },
        fingerprint: Some(fingerprint),
        ..Default::default()
    }
}

/// Fetches the tracked branch and loads the specs of the fetched commit.
/// When the fetch fails, the mirror's last commit is not used either: the
/// run records the failure and changes nothing.
pub fn load_git(git: &mut GitSource) -> Desired {
    let cfg = git.config().clone();
    let source_name = format!("{} ({}:{})", crate::secret::redact_url(&cfg.url), cfg.branch, cfg.path);
    let fetched = match git.fetch() {
        Ok(f) => f,
        Err(e) => {
            return Desired {
                error: Some(e.to_string()),
                source: SourceInfo { source: source_name, revision: git.current() },
                ..Default::default()
            };
        }
    };
    let warning = fetched.forced.then(|| {
        format!(
            "the branch was force-pushed: {} is not a descendant of {}",
            short(&fetched.commit),
            fetched.previous.as_deref().map(short).unwrap_or("?")
        )
    });
    let source = SourceInfo { source: source_name, revision: Some(fetched.commit.clone()) };
    match git.read_specs(&fetched.commit) {
        Ok(files) => {
            let loaded = spec::load::load_sources(files, git.secrets());
            let fingerprint = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (&fetched.commit, &cfg.path).hash(&mut h);
                h.finish()
            };
            Desired {
                set: loaded.set,
                diagnostics: loaded.diagnostics,
                source,
                error: None,
                warning,
                subject: Some(fetched.subject.clone()),
                fingerprint: Some(fingerprint),
            }
        }
        Err(e) => Desired { error: Some(e.to_string()), source, warning, ..Default::default() },
    }
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

/// Loads a spec directory, diagnostics relative to it (no cache: the
/// one-shot commands).
pub fn load_dir(dir: &Path) -> Desired {
    load_dir_with(dir, &spec::SecretPolicy::for_spec_dir(dir))
}

/// [`load_dir`] with the operator's secret policy.
pub fn load_dir_with(dir: &Path, secrets: &spec::SecretPolicy) -> Desired {
    let (sources, diagnostics) = read_dir_sources(dir);
    let fp = fingerprint(&sources, &diagnostics);
    desired_from_sources(dir, secrets, sources, diagnostics, fp)
}

/// Timing of the loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub interval: Duration,
    pub debounce: Duration,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            interval: Duration::from_secs(30),
            debounce: Duration::from_millis(50),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// The longest a stream of file changes can hold a run back.
pub const MAX_SETTLE: Duration = Duration::from_secs(2);

/// What the loop shares with the HTTP API: the last run, and a way to ask for one.
#[derive(Clone)]
pub struct LoopHandle {
    pub triggers: mpsc::Sender<Trigger>,
    pub last: Arc<RwLock<Option<RunReport>>>,
    /// Consecutive failed runs.
    pub failures: Arc<std::sync::atomic::AtomicU32>,
}

impl LoopHandle {
    /// Asks for a reconcile soon; several requests coalesce into one run.
    pub fn trigger(&self, t: Trigger) {
        let _ = self.triggers.try_send(t);
    }
}

/// Delay before retry number `failures` (1-based): min × 2^(n-1), capped.
pub fn backoff(cfg: &LoopConfig, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    cfg.min_backoff.saturating_mul(factor).min(cfg.max_backoff)
}

/// `d` ± 10%, varied per call so replicas do not resync in lock-step.
pub fn jitter(d: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
    let spread = (nanos % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
    d.mul_f64(1.0 + 0.1 * spread)
}

/// Watches `dir` recursively and sends `FileChange` for every change.
/// Returns the watcher, which stops when dropped.
pub fn watch(dir: &Path, tx: mpsc::Sender<Trigger>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !matches!(e.kind, notify::EventKind::Access(_))
        {
            let _ = tx.try_send(Trigger::FileChange);
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Runs the loop until `shutdown` resolves. The first run happens at once.
pub async fn run_loop<S, A>(
    reconciler: Arc<Reconciler<S, A>>,
    source: DesiredSource,
    cfg: LoopConfig,
    handle: LoopHandle,
    mut rx: mpsc::Receiver<Trigger>,
    shutdown: impl std::future::Future<Output = ()>,
) where
    S: StateStore + 'static,
    A: AsteriskControl + 'static,
{
    tokio::pin!(shutdown);
    let mut next = Trigger::Startup;
    loop {
        let report = run_one(&reconciler, &source, next.clone()).await;
        let failed = report.record.outcome.is_failure();
        let failures = if failed {
            handle.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
        } else {
            handle.failures.store(0, std::sync::atomic::Ordering::Relaxed);
            0
        };
        *handle.last.write().await = Some(report);
        let wait = if failed { backoff(&cfg, failures) } else { jitter(cfg.interval) };
        next = tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => if failed { Trigger::Retry } else { Trigger::Periodic },
            t = rx.recv() => match t {
                None => return,
                Some(mut t) => {
                    if t == Trigger::FileChange {
                        // Let a burst of saves settle: run once the directory
                        // has been quiet for `debounce` (a single save waits
                        // just that; a long `git pull` is waited out, up to
                        // MAX_SETTLE), then take everything queued as one run.
                        // An API or UI write (or a webhook, a POST /reconcile)
                        // asks for its run at once: its edit is complete when
                        // it asks, so the quiet period would only delay it
                        // (the watcher sees that edit's own file first).
                        let settle_by = tokio::time::Instant::now() + MAX_SETTLE;
                        loop {
                            let quiet = tokio::time::sleep(cfg.debounce);
                            tokio::select! {
                                _ = &mut shutdown => return,
                                _ = quiet => break,
                                more = rx.recv() => match more {
                                    None => return,
                                    Some(asked) if asked != Trigger::FileChange => {
                                        t = asked;
                                        break;
                                    }
                                    Some(_) if tokio::time::Instant::now() < settle_by => continue,
                                    Some(_) => break,
                                },
                            }
                        }
                    }
                    while rx.try_recv().is_ok() {}
                    t
                }
            },
        };
    }
}

async fn run_one<S: StateStore, A: AsteriskControl>(
    reconciler: &Reconciler<S, A>,
    source: &DesiredSource,
    trigger: Trigger,
) -> RunReport {
    use tracing::Instrument;
    let span = tracing::info_span!("reconcile", trigger = trigger.as_str(), revision = tracing::field::Empty);
    let desired = source.load().instrument(span.clone()).await;
    if let Some(rev) = &desired.source.revision {
        span.record("revision", rev.as_str());
    }
    let report = reconciler.run(trigger, desired).instrument(span.clone()).await;
    let _enter = span.enter();
    let r = &report.record;
    let (creates, updates, deletes) = r.plan.as_ref().map_or((0, 0, 0), |p| {
        use crate::plan::Action;
        (p.count(Action::Create), p.count(Action::Update), p.count(Action::Delete))
    });
    let ms = report.duration.as_secs_f64() * 1000.0;
    match r.outcome {
        Outcome::Failed | Outcome::Degraded | Outcome::Invalid | Outcome::Blocked => tracing::warn!(
            outcome = r.outcome.as_str(),
            duration_ms = ms,
            creates,
            updates,
            deletes,
            error = r.error.as_deref().unwrap_or(""),
            "reconcile did not apply"
        ),
        _ => tracing::info!(
            outcome = r.outcome.as_str(),
            duration_ms = ms,
            creates,
            updates,
            deletes,
            reloaded = r.reloaded,
            "reconcile finished"
        ),
    }
    drop(_enter);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(numbers: &[&str]) -> String {
        let mut s =
            String::from("defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n");
        for n in numbers {
            s.push_str(&format!("  - {{extension: \"{n}\", md5Cred: 0123456789abcdef0123456789abcdef}}\n"));
        }
        s
    }

    /// Whatever changes between loads, the cached load equals a fresh one.
    #[test]
    fn a_cached_directory_load_equals_a_fresh_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = DirSource::new(dir.path().to_path_buf());
        let same = |src: &DirSource| {
            let (cached, fresh) = (src.load(), load_dir(dir.path()));
            assert_eq!(cached.set, fresh.set);
            assert_eq!(cached.diagnostics, fresh.diagnostics);
            assert_eq!(cached.fingerprint, fresh.fingerprint);
            cached.set.extensions.iter().map(|e| e.extension.clone()).collect::<Vec<_>>()
        };
        std::fs::write(dir.path().join("a.yaml"), team(&["1001", "1002"])).expect("write");
        std::fs::write(dir.path().join("b.yaml"), team(&["2001"])).expect("write");
        assert_eq!(same(&src), ["1001", "1002", "2001"]);
        assert_eq!(same(&src), ["1001", "1002", "2001"], "unchanged");
        std::fs::write(dir.path().join("b.yaml"), team(&["2001", "2002"])).expect("write");
        assert_eq!(same(&src), ["1001", "1002", "2001", "2002"], "one file changed");
        std::fs::write(dir.path().join("b.yaml"), team(&["1001"])).expect("write");
        assert_eq!(same(&src), ["1001", "1002"], "a duplicate across files: b.yaml is refused");
        assert!(src.load().diagnostics.iter().any(|d| d.code == "duplicate-extension"));
        std::fs::remove_file(dir.path().join("b.yaml")).expect("remove");
        assert_eq!(same(&src), ["1001", "1002"], "a file removed");
        std::fs::write(dir.path().join("a.yaml"), "extensions: [").expect("write");
        assert!(same(&src).is_empty(), "a broken file contributes nothing");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = LoopConfig {
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..Default::default()
        };
        let got: Vec<u64> = (1..=6).map(|n| backoff(&cfg, n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(&cfg, 1000), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(30)).as_secs_f64();
            assert!((27.0..=33.0).contains(&j), "{j}");
        }
    }
}
