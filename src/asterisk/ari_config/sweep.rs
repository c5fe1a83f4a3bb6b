//! The ari target's read-back of a large estate, in the background.
//!
//! On an estate of more than [`DRIFT_BATCH`](super::DRIFT_BATCH)
//! extensions, runs no longer read pushed objects back themselves (300
//! GETs, about 0.2 s, in every run with nothing to change), list
//! Asterisk's endpoints (14–16 s at 10k with the astdb wizard) or list the
//! astdb family (20 s and more at 10k): a sweeper task does it, one
//! extension at a time at a gentle pace, a whole pass taking at least
//! [`PASS_MIN`], and the family listed for orphans at most once every
//! [`ORPHAN_SCAN_MIN`]. What it finds waits in the target and asks for a
//! run, which reads each finding back once more (a push may have moved
//! it on) and repairs what still differs. So a run with nothing to change
//! costs milliseconds, and drift is still found within a pass (about
//! 8 minutes at 10k).

use super::live::{DynamicConfig, LiveTarget};
use super::sections::Section;
use super::{ASTDB_FAMILY, DRIFT_BATCH, lock_known};
use crate::core::plan::Drift;
use crate::reconcile::AsteriskControl;
use std::future::Future;
use std::time::{Duration, Instant};

/// The shortest pause between two extensions read back.
pub const PACE: Duration = Duration::from_millis(50);
/// The shortest time a whole pass over the estate takes.
pub const PASS_MIN: Duration = Duration::from_secs(60);
/// The astdb family is listed for orphans at most this often.
pub const ORPHAN_SCAN_MIN: Duration = Duration::from_secs(600);

/// How fast a sweep goes.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// The shortest pause between two extensions.
    pub each: Duration,
    /// The shortest time a whole pass takes.
    pub pass: Duration,
    /// The shortest time between two orphan scans.
    pub orphan_scan: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace { each: PACE, pass: PASS_MIN, orphan_scan: ORPHAN_SCAN_MIN }
    }
}

/// The first id after `cursor` in the remembered record (or the first of
/// all, `true`: a pass begins), with its objects, and how many ids the
/// record holds.
fn next_after<D>(target: &LiveTarget<D>, cursor: &str) -> (Option<(String, Vec<Section>, bool)>, usize) {
    let known = lock_known(target);
    let Some(k) = known.as_ref() else { return (None, 0) };
    let groups = k.groups();
    let after = groups.range::<str, _>((std::ops::Bound::Excluded(cursor), std::ops::Bound::Unbounded)).next();
    let next = match after {
        Some((id, s)) => Some((id.clone(), s.clone(), false)),
        None => groups.iter().next().map(|(id, s)| (id.clone(), s.clone(), true)),
    };
    (next, groups.len())
}

/// Reads the objects of one extension back: what differs from `sections`
/// (a missing object is the whole extension missing). `None` when ARI did
/// not answer. Runs on small estates and the sweeper on large ones both
/// read back through here.
pub(crate) async fn read_back<D: DynamicConfig>(
    target: &LiveTarget<D>,
    id: &str,
    sections: &[Section],
) -> Option<Vec<Drift>> {
    let mut out = Vec::new();
    for s in sections {
        match target.client.get(&s.kind, id).await {
            Ok(None) => return Some(vec![Drift::MissingFromAsterisk { extension: id.to_string() }]),
            Ok(Some(held)) => {
                let differences = super::live::mismatches(&s.fields, &held);
                if !differences.is_empty() {
                    out.push(Drift::ObjectDiffers {
                        extension: id.to_string(),
                        object_type: s.kind.clone(),
                        differences,
                    });
                }
            }
            Err(e) => {
                tracing::debug!("reading back pushed objects stopped: {e}");
                return None;
            }
        }
    }
    Some(out)
}

/// Runs until `stop`: reads the remembered record's objects back, one
/// extension at a time, and lists the astdb family for orphans once a
/// pass (at most every [`ORPHAN_SCAN_MIN`]); keeps what it finds in the
/// target and calls `wake` to ask for a run. Does nothing while the estate
/// fits one run's batch (runs read it all back themselves).
pub async fn sweep<D: DynamicConfig, A: AsteriskControl>(
    target: &LiveTarget<D>,
    asterisk: Option<&A>,
    pace: Pace,
    wake: impl Fn(),
    stop: impl Future<Output = ()>,
) {
    target.sweeper.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::pin!(stop);
    let mut cursor = String::new();
    let mut last_scan: Option<Instant> = None;
    loop {
        let (next, n) = next_after(target, &cursor);
        let pause = if n == 0 { Duration::from_secs(1) } else { pace.each.max(pace.pass / n as u32) };
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(pause) => {}
        }
        if n <= DRIFT_BATCH {
            continue;
        }
        let Some((id, sections, begins)) = next else { continue };
        let mut found = Vec::new();
        if begins
            && let Some(a) = asterisk
            && last_scan.is_none_or(|t| t.elapsed() >= pace.orphan_scan)
        {
            last_scan = Some(Instant::now());
            match a.astdb_keys(ASTDB_FAMILY).await {
                Ok(keys) => found.extend(super::orphans(target, &keys)),
                Err(e) => tracing::debug!("listing the astdb family failed: {e}"),
            }
        }
        match read_back(target, &id, &sections).await {
            Some(drift) => found.extend(drift),
            // ARI is not answering: the next run says so; try this one again later.
            None => continue,
        }
        cursor = id;
        if !found.is_empty() {
            let mut waiting = target.found.lock().unwrap_or_else(|p| p.into_inner());
            for d in found {
                if !waiting.contains(&d) {
                    waiting.push(d);
                }
            }
            drop(waiting);
            wake();
        }
    }
    target.sweeper.store(false, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::super::live::tests::Fake;
    use super::super::{DRIFT_BATCH, canonical, drift, lists_endpoints, push, sweep_starts};
    use super::*;
    use crate::reconcile::fake::FakeAsterisk;
    use std::collections::BTreeSet;

    fn rendered(n: usize) -> String {
        let mut s = String::new();
        for i in 0..n {
            let id = 3000 + i;
            s.push_str(&format!("[{id}]\ntype = endpoint\ncontext = a\nauth = {id}\naors = {id}\n\n[{id}]\ntype = auth\nusername = {id}\n\n[{id}]\ntype = aor\nmax_contacts = 1\n"));
        }
        s
    }

    /// On a large estate the sweeper, not the run, reads the objects back:
    /// what it finds wakes a run, which reads each finding again and
    /// reports only what still differs; the run lists neither Asterisk's
    /// endpoints nor the astdb family.
    #[tokio::test]
    async fn the_sweeper_finds_drift_in_the_background_and_the_run_reports_what_still_differs() {
        let t = std::sync::Arc::new(LiveTarget::new(Fake::default()));
        let text = canonical(&*t, &rendered(DRIFT_BATCH + 20), true).expect("canonical");
        push(&*t, None, &text, &BTreeSet::new(), &BTreeSet::new(), &[]).await.expect("pushes");
        let (woke, mut wakes) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let pace = Pace { each: Duration::from_millis(1), pass: Duration::ZERO, orphan_scan: Duration::ZERO };
        let task = {
            let t = t.clone();
            tokio::spawn(async move {
                let stop = async {
                    let _ = stopped.await;
                };
                sweep(
                    &*t,
                    None::<&FakeAsterisk>,
                    pace,
                    || {
                        let _ = woke.send(());
                    },
                    stop,
                )
                .await;
            })
        };
        // Someone changes 3050's context behind our back.
        t.client.set("endpoint", "3050", "context", "elsewhere");
        tokio::time::timeout(Duration::from_secs(30), wakes.recv()).await.expect("the sweeper wakes a run");
        assert!(!lists_endpoints(&*t) && !sweep_starts(&*t), "runs leave the lists to the sweeper");
        let found = drift(&*t, &text, &[]).await;
        assert!(
            found.iter().any(|d| matches!(d, Drift::ObjectDiffers { extension, .. } if extension == "3050")),
            "{found:?}"
        );
        assert!(drift(&*t, &text, &[]).await.is_empty(), "a finding is handed to one run");
        // Found, then repaired before the run reads it: not reported.
        t.client.set("endpoint", "3060", "context", "elsewhere");
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                wakes.recv().await;
                if t.found.lock().unwrap().iter().any(|d| format!("{d:?}").contains("3060")) {
                    break;
                }
            }
        })
        .await
        .expect("the sweeper finds 3060");
        t.client.set("endpoint", "3060", "context", "a");
        let found = drift(&*t, &text, &[]).await;
        assert!(!found.iter().any(|d| format!("{d:?}").contains("3060")), "repaired meanwhile: {found:?}");
        let _ = stop.send(());
        task.await.expect("the sweeper stops");
        assert!(!t.sweeper.load(std::sync::atomic::Ordering::Relaxed), "once stopped, runs read back again");
    }
}
