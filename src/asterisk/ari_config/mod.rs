//! Apply targets other than the managed file: how a run's changes reach
//! Asterisk when `apply.target` is `ari`.
//!
//! The run renders the managed config as always; [`sections`] reads that
//! text back as objects, and [`live`] pushes the objects of exactly the
//! extensions that changed through ARI's dynamic configuration (no reload),
//! verifying each from Asterisk's answer. What was pushed is recorded in a
//! file of the same shape under the state directory (never read by
//! Asterisk): the next run's "before", the plan's diff, and what a crash
//! between two pushes is repaired from (the rows are only written once the
//! pushes are done, so the next run pushes again: PUT is idempotent).

pub mod handover;
pub mod live;
pub mod sections;

pub use crate::reconcile::LiveRun;
pub use live::{DynamicConfig, LiveTarget, PushError, Pushed};
use sections::{Section, SectionError};
use std::collections::{BTreeMap, BTreeSet};

/// Why nothing could be pushed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The rendering is not in the shape the ari target reads as objects.
    #[error("the ari target cannot push it: {0}")]
    Unreadable(#[source] SectionError),
}

/// The ari target of a daemon: the real ARI client.
pub type AriTarget = LiveTarget<crate::asterisk::ari::Ari>;

/// The record's name in the state directory.
pub const RECORD_FILE: &str = "ari-pushed.conf";

/// The first lines of the record of what was pushed.
pub const RECORD_HEADER: &str = "; Pushed to Asterisk through ARI by asterisk-gitops (apply.target: ari).\n\
; A record of what Asterisk holds in its astdb wizard, kept by the daemon: Asterisk never reads this file.\n";

/// Pushes, one extension at a time, every id in `asked` (the plan's
/// changes and the drift to repair) and every id whose sections differ
/// between `record` (what was pushed before) and `rendered`. Errors only
/// when the rendering cannot be read as objects: then nothing was pushed.
pub async fn push<D: DynamicConfig>(
    target: &LiveTarget<D>,
    record: Option<&str>,
    rendered: &str,
    asked: &BTreeSet<String>,
    orphans: &[(String, String)],
) -> Result<LiveRun, ApplyError> {
    let new = sections::by_id(sections::parse(rendered).map_err(ApplyError::Unreadable)?);
    let old = match record.map(sections::parse) {
        None => BTreeMap::new(),
        Some(Ok(s)) => sections::by_id(s),
        Some(Err(e)) => {
            tracing::warn!("the record of what was pushed is unreadable ({e}); every object is pushed again");
            BTreeMap::new()
        }
    };
    let none: Vec<Section> = Vec::new();
    let mut ids: BTreeSet<&str> = asked.iter().map(String::as_str).collect();
    for id in new.keys().chain(old.keys()) {
        if !sections::same(old.get(id).unwrap_or(&none), new.get(id).unwrap_or(&none)) {
            ids.insert(id);
        }
    }
    let mut run = LiveRun::default();
    let mut down: Option<String> = None;
    for id in ids {
        if let Some(why) = &down {
            run.failures.insert(id.to_string(), format!("not pushed: {why}"));
            continue;
        }
        let (before, after) = (old.get(id).unwrap_or(&none), new.get(id).unwrap_or(&none));
        match target.push(id, before, after).await {
            Pushed::Done { requests } => {
                run.requests += requests;
                run.pushed.insert(id.to_string());
            }
            Pushed::Failed { reason, down: d } => {
                if d {
                    down = Some(reason.clone());
                }
                run.failures.insert(id.to_string(), reason);
            }
        }
    }
    // Objects of our astdb family that no spec declares: endpoints first.
    let mut orphans: Vec<&(String, String)> = orphans.iter().filter(|(_, id)| !new.contains_key(id)).collect();
    orphans.sort_by_key(|(kind, _)| std::cmp::Reverse(live::rank(kind)));
    for (kind, id) in orphans {
        if down.is_some() {
            break;
        }
        run.requests += 1;
        match target.delete_one(kind, id).await {
            Ok(()) => {
                run.pushed.insert(id.clone());
            }
            Err(e) => {
                run.failures.insert(id.clone(), e.to_string());
            }
        }
    }
    run.record = if run.failures.is_empty() {
        rendered.to_string()
    } else {
        let mut groups = new;
        for id in run.failures.keys() {
            match old.get(id) {
                Some(s) => groups.insert(id.clone(), s.clone()),
                None => groups.remove(id),
            };
        }
        sections::write(RECORD_HEADER, &groups)
    };
    Ok(run)
}

/// The astdb family the sorcery wizard stores pushed objects under
/// (`examples/asterisk/sorcery.conf.snippet`).
pub const ASTDB_FAMILY: &str = "asterisk-gitops";

/// How many extensions one resync reads back through ARI (three GETs
/// each, about 0.2 s on a real Asterisk); the next resync goes on after
/// the last, so a 10k estate is read back in full every 100 resyncs (50
/// minutes at the 30 s default), and its astdb family listed for orphans
/// once in that time.
pub const DRIFT_BATCH: usize = 100;

/// Drift the ari target sees: objects of the next [`DRIFT_BATCH`] recorded
/// extensions read back and compared with what was pushed (missing:
/// `MissingFromAsterisk`; other attributes: `ObjectDiffers`), and every key
/// of our astdb family (`astdb_keys`, as `DBGetTree` lists them) whose id
/// the record does not hold (`Orphaned`). A GET that fails ends the check
/// quietly: the run's own Asterisk check reports an unreachable Asterisk.
pub async fn drift<D: DynamicConfig>(
    target: &LiveTarget<D>,
    record: &str,
    astdb_keys: &[String],
) -> Vec<crate::core::plan::Drift> {
    use crate::core::plan::Drift;
    let Ok(sections) = sections::parse(record) else { return Vec::new() };
    let pushed = sections::by_id(sections);
    let mut out = Vec::new();
    let prefix = format!("/{ASTDB_FAMILY}/");
    for key in astdb_keys {
        let Some((kind, id)) = key.strip_prefix(&prefix).and_then(|rest| rest.split_once('/')) else { continue };
        if !pushed.contains_key(id) && !kind.is_empty() && !id.is_empty() {
            out.push(Drift::Orphaned { object_type: kind.to_string(), id: id.to_string() });
        }
    }
    let start = target.cursor.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let batch: Vec<&String> = pushed
        .range::<String, _>((std::ops::Bound::Excluded(&start), std::ops::Bound::Unbounded))
        .chain(pushed.range::<String, _>(..=&start))
        .map(|(id, _)| id)
        .take(DRIFT_BATCH.min(pushed.len()))
        .collect();
    let mut last = None;
    'ids: for id in batch {
        for s in &pushed[id] {
            match target.client.get(&s.kind, id).await {
                Ok(None) => {
                    out.push(Drift::MissingFromAsterisk { extension: id.clone() });
                    last = Some(id);
                    continue 'ids;
                }
                Ok(Some(held)) => {
                    let differences = live::mismatches(&s.fields, &held);
                    if !differences.is_empty() {
                        out.push(Drift::ObjectDiffers {
                            extension: id.clone(),
                            object_type: s.kind.clone(),
                            differences,
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!("reading back pushed objects stopped: {e}");
                    break 'ids;
                }
            }
        }
        last = Some(id);
    }
    if let Some(id) = last {
        *target.cursor.lock().unwrap_or_else(|p| p.into_inner()) = id.clone();
    }
    let checks = target.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let due = pushed.len() <= DRIFT_BATCH || checks % ORPHAN_SCAN_EVERY == 0;
    target.sweep_starts.store(due, std::sync::atomic::Ordering::Relaxed);
    out
}

/// A large estate's astdb family is listed for orphans once this many drift
/// checks (50 minutes at the default interval).
pub const ORPHAN_SCAN_EVERY: usize = 100;

/// Whether the next drift check lists the astdb family for orphans (not
/// the first after a start: the record's size is not known yet).
pub fn sweep_starts<D>(target: &LiveTarget<D>) -> bool {
    target.sweep_starts.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the next drift check reads Asterisk's whole endpoint list
/// (`PJSIPShowEndpoints`). With the astdb wizard Asterisk rebuilds every
/// endpoint, and looks up its aor, from astdb for that list: 14–16 s at
/// 10k (0.6–0.9 s at 1k), against 0.2–0.4 s for the read-back batch. So a large estate
/// has it once a sweep, with the orphan scan (and on the first check after
/// a start); the batch read-back finds missing and changed objects in
/// between. A small estate (at most one batch) has it every time.
pub fn lists_endpoints<D>(target: &LiveTarget<D>) -> bool {
    sweep_starts(target) || target.checks.load(std::sync::atomic::Ordering::Relaxed) == 0
}

/// The reconciler's port for a live target.
impl<D: DynamicConfig> crate::reconcile::LiveApply for LiveTarget<D> {
    type Error = ApplyError;
    fn astdb_family(&self) -> &str {
        ASTDB_FAMILY
    }
    async fn push_changes(
        &self,
        record: Option<&str>,
        rendered: &str,
        asked: &BTreeSet<String>,
        orphans: &[(String, String)],
    ) -> Result<LiveRun, ApplyError> {
        push(self, record, rendered, asked, orphans).await
    }
    async fn drift(&self, record: &str, astdb_keys: &[String]) -> Vec<crate::core::plan::Drift> {
        drift(self, record, astdb_keys).await
    }
    fn sweep_starts(&self) -> bool {
        sweep_starts(self)
    }
    fn lists_endpoints(&self) -> bool {
        lists_endpoints(self)
    }
}

#[cfg(test)]
mod tests {
    use super::live::tests::Fake;
    use super::*;

    fn rendered(exts: &[(&str, &str)]) -> String {
        let mut s = String::from("; Managed by asterisk-gitops\n");
        for (id, context) in exts {
            s.push_str(&format!(
                "\n[{id}]\ntype = endpoint\ncontext = {context}\nauth = {id}\naors = {id}\n\n[{id}]\ntype = auth\nusername = {id}\n\n[{id}]\ntype = aor\nmax_contacts = 1\n"
            ));
        }
        s
    }

    #[tokio::test]
    async fn only_the_extensions_whose_objects_changed_are_pushed_and_a_refused_one_keeps_its_old_record() {
        let t = LiveTarget::new(Fake::default());
        let first = rendered(&[("1001", "a"), ("1002", "a")]);
        let run = push(&t, None, &first, &BTreeSet::new(), &[]).await.expect("pushes");
        assert_eq!(run.pushed.len(), 2);
        assert_eq!(run.record, first, "all pushed: the record is the rendering");
        t.client.requests();
        // 1002 changes, 1003 is new and refused, 1001 is as before.
        let second = rendered(&[("1001", "a"), ("1002", "b"), ("1003", "nosuchcodec")]);
        let run = push(&t, Some(&first), &second, &BTreeSet::new(), &[]).await.expect("pushes");
        assert_eq!(run.pushed.iter().collect::<Vec<_>>(), ["1002"]);
        assert!(run.failures["1003"].contains("refused endpoint 1003"), "{:?}", run.failures);
        assert!(t.client.requests().iter().all(|r| !r.contains("1001")), "1001 was not touched");
        let record = sections::by_id(sections::parse(&run.record).expect("the record parses"));
        assert_eq!(record.keys().collect::<Vec<_>>(), ["1001", "1002"], "1003 is not in the record");
        assert_eq!(record["1002"][0].fields[0].1, "b");
        // Asked for (drift), an unchanged extension is pushed again; gone from the rendering, deleted.
        let third = rendered(&[("1001", "a")]);
        let asked: BTreeSet<String> = ["1001".to_string()].into();
        let run = push(&t, Some(&run.record), &third, &asked, &[]).await.expect("pushes");
        assert_eq!(run.pushed.iter().collect::<Vec<_>>(), ["1001", "1002"]);
        assert!(t.client.get("endpoint", "1002").is_none());
        assert!(
            push(&t, None, "junk\n", &BTreeSet::new(), &[]).await.is_err(),
            "an unreadable rendering pushes nothing"
        );
    }

    #[tokio::test]
    async fn a_large_estate_reads_the_endpoint_list_on_the_first_check_and_then_once_a_sweep() {
        let t = LiveTarget::new(Fake::default());
        let ids: Vec<String> = (0..=DRIFT_BATCH).map(|i| format!("{}", 2000 + i)).collect();
        let text = rendered(&ids.iter().map(|i| (i.as_str(), "a")).collect::<Vec<_>>());
        assert!(lists_endpoints(&t), "the first check after a start reads the list");
        let mut listed = Vec::new();
        for check in 1..=2 * ORPHAN_SCAN_EVERY {
            drift(&t, &text, &[]).await;
            if lists_endpoints(&t) {
                listed.push(check + 1);
                assert!(sweep_starts(&t), "the orphan scan is due too");
            }
        }
        assert_eq!(
            listed,
            [ORPHAN_SCAN_EVERY + 1, 2 * ORPHAN_SCAN_EVERY + 1],
            "then once every {ORPHAN_SCAN_EVERY} checks, with the orphan scan"
        );
        let small = LiveTarget::new(Fake::default());
        let text = rendered(&[("1001", "a")]);
        for _ in 0..3 {
            drift(&small, &text, &[]).await;
            assert!(lists_endpoints(&small), "an estate of one batch reads the list every time");
        }
    }

    #[tokio::test]
    async fn drift_reads_back_a_batch_reports_changed_missing_and_orphaned_objects_and_heals_orphans() {
        use crate::core::plan::Drift;
        let t = LiveTarget::new(Fake::default());
        let text = rendered(&[("1001", "a"), ("1002", "a")]);
        push(&t, None, &text, &BTreeSet::new(), &[]).await.expect("pushes");
        // Someone changes 1001's context through ARI, deletes 1002's aor, and pushes 9999.
        t.client.set("endpoint", "1001", "context", "elsewhere");
        t.client.objects.lock().unwrap().remove(&("aor".to_string(), "1002".to_string()));
        let stray = "[9999]\ntype = endpoint\ncontext = x\n";
        push(&t, None, stray, &BTreeSet::new(), &[]).await.expect("pushes");
        let keys: Vec<String> =
            ["/asterisk-gitops/endpoint/1001", "/asterisk-gitops/endpoint/9999", "/other/endpoint/7"]
                .iter()
                .map(|k| k.to_string())
                .collect();
        assert!(!sweep_starts(&t), "the first check after a start does not list the family");
        let found = drift(&t, &text, &keys).await;
        assert!(sweep_starts(&t), "a record smaller than a batch has its family listed every time after");
        assert!(found.contains(&Drift::Orphaned { object_type: "endpoint".into(), id: "9999".into() }), "{found:?}");
        assert!(
            !found.iter().any(|d| matches!(d, Drift::Orphaned { id, .. } if id == "7")),
            "other families are not ours"
        );
        assert!(found.contains(&Drift::MissingFromAsterisk { extension: "1002".into() }), "{found:?}");
        assert!(
            found.iter().any(|d| matches!(d, Drift::ObjectDiffers { extension, object_type: kind, differences }
                if extension == "1001" && kind == "endpoint" && differences[0].contains("\"elsewhere\""))),
            "{found:?}"
        );
        // Healed: the differing and missing ones pushed again, the orphan deleted.
        let asked: BTreeSet<String> = ["1001".to_string(), "1002".to_string()].into();
        let run = push(&t, Some(&text), &text, &asked, &[("endpoint".into(), "9999".into())]).await.expect("heals");
        assert!(run.failures.is_empty(), "{:?}", run.failures);
        assert!(t.client.get("endpoint", "9999").is_none());
        assert_eq!(t.client.get("endpoint", "1001").unwrap()["context"], "a");
        assert!(drift(&t, &text, &[]).await.is_empty(), "nothing drifts after the repair");
    }

    #[tokio::test]
    async fn with_ari_not_answering_the_run_stops_at_the_first_extension_instead_of_trying_each() {
        let t = LiveTarget::new(Fake::default());
        t.client.down.store(true, std::sync::atomic::Ordering::Relaxed);
        let text = rendered(&[("1001", "a"), ("1002", "a"), ("1003", "a")]);
        let run = push(&t, None, &text, &BTreeSet::new(), &[]).await.expect("runs");
        assert!(run.pushed.is_empty());
        assert_eq!(run.failures.len(), 3);
        assert!(run.failures["1001"].contains("unreachable"), "{:?}", run.failures);
        assert!(run.failures["1003"].starts_with("not pushed: "), "{:?}", run.failures);
        assert_eq!(t.client.requests(), ["PUT auth 1001"], "one request, not one per object");
    }
}
