//! The loop around the reconciler: one reconcile at a time, triggered by
//! file changes in the spec directory (run once it is quiet), a periodic
//! resync (jittered), manual requests (the API) and webhooks; failures
//! retry with the [`Backoff`](super::Backoff); shutdown flows in from the
//! caller.

use super::backoff::BackoffConfig;
use super::ports::{AsteriskControl, LiveApply, StateStore};
use super::run::Reconciler;
use super::source::DesiredSource;
use super::{Outcome, RunReport, Trigger};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{RwLock, mpsc};

/// Timing of the loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub interval: Duration,
    pub debounce: Duration,
    /// The retry delay after failed runs (1 s doubling up to 5 min).
    pub backoff: BackoffConfig,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            interval: Duration::from_secs(30),
            debounce: Duration::from_millis(20),
            backoff: BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(300)),
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
pub async fn run_loop<S, A, L>(
    reconciler: Arc<Reconciler<S, A, L>>,
    source: DesiredSource,
    cfg: LoopConfig,
    handle: LoopHandle,
    rx: mpsc::Receiver<Trigger>,
    shutdown: impl std::future::Future<Output = ()>,
) where
    S: StateStore + 'static,
    A: AsteriskControl + 'static,
    L: LiveApply + 'static,
{
    run_loop_with(reconciler, Arc::new(super::fleet::Alone), source, cfg, handle, rx, shutdown).await
}

/// [`run_loop`] with followers (`nodes:`): after each run of `reconciler`
/// (the lead), `followers` reconcile the other nodes with the same specs.
pub async fn run_loop_with<S, A, L, F>(
    reconciler: Arc<Reconciler<S, A, L>>,
    followers: Arc<F>,
    source: DesiredSource,
    cfg: LoopConfig,
    handle: LoopHandle,
    mut rx: mpsc::Receiver<Trigger>,
    shutdown: impl std::future::Future<Output = ()>,
) where
    S: StateStore + 'static,
    A: AsteriskControl + 'static,
    L: LiveApply + 'static,
    F: super::fleet::Followers + 'static,
{
    tokio::pin!(shutdown);
    let warm = Warm::start(&source);
    let mut next = Trigger::Startup;
    loop {
        let (report, desired) = run_one(&reconciler, &source, next.clone(), followers.any()).await;
        let mut failed = report.record.outcome.is_failure();
        if let Some(desired) = desired {
            let lead_reachable = match (&reconciler.asterisk, failed) {
                _ if report.unreachable.is_some() => false,
                (Some(a), true) => a.ping().await.is_ok(),
                _ => true,
            };
            let followed = followers.follow(&next, &desired, &report, lead_reachable).await;
            // The lead unreachable but the others applied: no back-off for
            // them; the lead converges at the next periodic run.
            failed = (failed && lead_reachable) || !followed;
        }
        let failures = if failed {
            handle.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
        } else {
            handle.failures.store(0, std::sync::atomic::Ordering::Relaxed);
            0
        };
        *handle.last.write().await = Some(report);
        let wait = if failed { cfg.backoff.delay(failures) } else { jitter(cfg.interval) };
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
                        warm.poke();
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
                                    Some(_) if tokio::time::Instant::now() < settle_by => {
                                        warm.poke();
                                        continue;
                                    }
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

/// Parses a spec directory's changed files while the quiet period runs,
/// so the run that follows finds them parsed (its load reads and hashes
/// the files, and reuses a parse only for the very bytes it read: a file
/// still being written when warmed is parsed again by the run). One load
/// at a time; pokes while one is under way ask for one more after it.
/// Nothing for a git source: its run fetches first.
struct Warm(Option<(Arc<tokio::sync::Notify>, tokio::task::JoinHandle<()>)>);

impl Warm {
    fn start(source: &DesiredSource) -> Warm {
        let DesiredSource::Dir(dir) = source else { return Warm(None) };
        let (dir, poke) = (dir.clone(), Arc::new(tokio::sync::Notify::new()));
        let poked = poke.clone();
        let task = tokio::spawn(async move {
            loop {
                poked.notified().await;
                let dir = dir.clone();
                let warming = std::time::Instant::now();
                let _ = tokio::task::spawn_blocking(move || drop(dir.load())).await;
                tracing::debug!(took_ms = warming.elapsed().as_secs_f64() * 1000.0, "specs warmed");
            }
        });
        Warm(Some((poke, task)))
    }

    fn poke(&self) {
        if let Some((poke, _)) = &self.0 {
            poke.notify_one();
        }
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.0 {
            task.abort();
        }
    }
}

async fn run_one<S: StateStore, A: AsteriskControl, L: LiveApply>(
    reconciler: &Reconciler<S, A, L>,
    source: &DesiredSource,
    trigger: Trigger,
    keep: bool,
) -> (RunReport, Option<super::source::Desired>) {
    use tracing::Instrument;
    let span = tracing::info_span!("reconcile", trigger = trigger.as_str(), revision = tracing::field::Empty);
    let loading = std::time::Instant::now();
    let desired = source.load().instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(took_ms = loading.elapsed().as_secs_f64() * 1000.0, "specs loaded"));
    if let Some(rev) = &desired.source.revision {
        span.record("revision", rev.as_str());
    }
    let kept = keep.then(|| desired.clone());
    let report = reconciler.run(trigger, desired).instrument(span.clone()).await;
    let _enter = span.enter();
    let r = &report.record;
    let (creates, updates, deletes) = r.plan.as_ref().map_or((0, 0, 0), |p| {
        use crate::core::plan::Action;
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
    (report, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A save poked while the quiet period runs is parsed then: the run's
    /// load after it parses nothing; a file changed again is parsed again.
    #[tokio::test]
    async fn a_saved_file_is_parsed_during_the_quiet_period_and_the_run_reuses_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("team.yaml");
        let team = |name: &str| {
            format!(
                "defaults: {{context: from-internal, transport: transport-udp, codecs: [ulaw]}}\nextensions:\n  - {{extension: \"1001\", displayName: {name}, md5Cred: 0123456789abcdef0123456789abcdef}}\n"
            )
        };
        std::fs::write(&file, team("First")).expect("write");
        let src = Arc::new(super::super::source::DirSource::new(dir.path().to_path_buf()));
        let warm = Warm::start(&DesiredSource::Dir(src.clone()));
        let parsed = |n: usize| {
            let src = src.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while src.files_parsed() < n {
                    assert!(tokio::time::Instant::now() < deadline, "the warm load did not parse the file");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        warm.poke();
        parsed(1).await;
        let d = src.load();
        assert_eq!(src.files_parsed(), 1, "the run's load parsed the file again");
        assert_eq!(d.set.get("1001").and_then(|e| e.display_name.clone()).as_deref(), Some("First"));
        std::fs::write(&file, team("Second")).expect("write");
        warm.poke();
        parsed(2).await;
        let d = src.load();
        assert_eq!(src.files_parsed(), 2, "the run's load parsed the changed file again");
        assert_eq!(d.set.get("1001").and_then(|e| e.display_name.clone()).as_deref(), Some("Second"));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(30)).as_secs_f64();
            assert!((27.0..=33.0).contains(&j), "{j}");
        }
    }
}
