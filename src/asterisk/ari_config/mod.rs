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
pub mod sweep;

pub use crate::reconcile::LiveRun;
use futures_util::StreamExt;
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

/// How many extensions a run pushes at once (see [`push`]); each has up
/// to two requests in flight (its auth and aor). Asterisk spends about a
/// millisecond of CPU on each object it takes, so enough requests wait to
/// keep both of its cores busy: `cargo bench --bench ari_push` measured 8
/// against 4, 1 and 16 (BENCHMARKS.md, session 9).
pub const PUSHES_IN_FLIGHT: usize = 8;

/// Pushes, a few extensions at a time, every id in `asked` (the plan's
/// changes and the drift to repair) and every id whose sections differ
/// between `record` (what was pushed before) and `rendered`. Of an id that
/// changed and is not in `repair`, only the objects that differ from the
/// record go (a changed caller id: the endpoint alone, not its unchanged
/// auth and aor); an id in `repair`, or asked for with nothing changed,
/// has every object pushed again. Errors only when the rendering cannot be
/// read as objects: then nothing was pushed.
pub async fn push<D: DynamicConfig>(
    target: &LiveTarget<D>,
    record: Option<&str>,
    rendered: &str,
    asked: &BTreeSet<String>,
    repair: &BTreeSet<String>,
    orphans: &[(String, String)],
) -> Result<LiveRun, ApplyError> {
    let sections::Changes { new, old, ids } =
        sections::changes(record, rendered, asked, "pushed").map_err(ApplyError::Unreadable)?;
    let mut run = LiveRun::default();
    // Extensions are independent (each has its own auth, aor and endpoint,
    // pushed in order by `LiveTarget::push`), so several are in flight at
    // once: one request at a time left Asterisk idle between the answer and
    // the next request, and a cold apply of 10k took 23.6 s. Once ARI stops
    // answering, the extensions not yet started are not pushed.
    let down: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    // Owned, so the stream's closure takes no borrowed argument (rustc
    // cannot prove such a future `Send`, rust-lang/rust#102211).
    let work: Vec<(String, Vec<Section>, Vec<Section>, bool)> = ids
        .into_iter()
        .map(|id| {
            let of = |m: &BTreeMap<String, Vec<Section>>| m.get(&id).cloned().unwrap_or_default();
            let (before, after) = (of(&old), of(&new));
            let whole = repair.contains(&id) || sections::same(&before, &after);
            (id, before, after, whole)
        })
        .collect();
    let down = &down;
    let pushes = futures_util::stream::iter(work)
        .map(move |(id, before, after, whole)| async move { push_one(target, down, id, &before, &after, whole).await });
    // Unordered: an ordered buffer counts the answers it holds back behind a
    // slow head, and starts no new push until the head is answered.
    let results: Vec<(String, Pushed)> = pushes.buffer_unordered(PUSHES_IN_FLIGHT).collect().await;
    for (id, pushed) in results {
        match pushed {
            Pushed::Done { requests } => {
                run.requests += requests;
                run.pushed.insert(id);
            }
            Pushed::Failed { reason, .. } => {
                run.failures.insert(id, reason);
            }
        }
    }
    let down = down.lock().unwrap_or_else(|p| p.into_inner()).clone();
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
    run.record = sections::record_after(new, &old, rendered, &run.failures, RECORD_HEADER);
    Ok(run)
}

/// One extension's push in [`push`]: not started once ARI was found not
/// answering (`down`), and noting it when this push finds that.
async fn push_one<D: DynamicConfig>(
    target: &LiveTarget<D>,
    down: &std::sync::Mutex<Option<String>>,
    id: String,
    before: &[Section],
    after: &[Section],
    whole: bool,
) -> (String, Pushed) {
    let known_down = down.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(why) = known_down {
        return (id, Pushed::Failed { reason: format!("not pushed: {why}"), down: true });
    }
    let pushed = target.push(&id, before, after, whole).await;
    if let Pushed::Failed { reason, down: true } = &pushed {
        down.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| reason.clone());
    }
    (id, pushed)
}

/// A whole record the target keeps in memory: its fingerprint and its
/// objects by id. A run that changes a few extensions of a large estate
/// takes their objects from here and splices the pushed ones back, instead
/// of reading and writing every object of the estate (see
/// `reconcile::run`'s delta runs).
pub struct Known {
    hash: u64,
    groups: BTreeMap<String, Vec<Section>>,
}

impl Known {
    pub(crate) fn groups(&self) -> &BTreeMap<String, Vec<Section>> {
        &self.groups
    }
}

/// Whether a background [`sweep`] reads this target's estate back (then
/// runs do not: see `sweep`).
fn swept<D>(target: &LiveTarget<D>) -> bool {
    target.sweeper.load(std::sync::atomic::Ordering::Relaxed)
        && lock_known(target).as_ref().is_some_and(|k| k.groups.len() > DRIFT_BATCH)
}

/// The keys of our astdb family (as `DBGetTree` lists them) whose id the
/// remembered record does not hold.
pub(crate) fn orphans<D>(target: &LiveTarget<D>, astdb_keys: &[String]) -> Vec<crate::core::plan::Drift> {
    let known = lock_known(target);
    let Some(k) = known.as_ref() else { return Vec::new() };
    orphans_of(&k.groups, astdb_keys)
}

fn orphans_of(pushed: &BTreeMap<String, Vec<Section>>, astdb_keys: &[String]) -> Vec<crate::core::plan::Drift> {
    let prefix = format!("/{ASTDB_FAMILY}/");
    let mut out = Vec::new();
    for key in astdb_keys {
        let Some((kind, id)) = key.strip_prefix(&prefix).and_then(|rest| rest.split_once('/')) else { continue };
        if !pushed.contains_key(id) && !kind.is_empty() && !id.is_empty() {
            out.push(crate::core::plan::Drift::Orphaned { object_type: kind.to_string(), id: id.to_string() });
        }
    }
    out
}

/// What the sweeper found, each finding read back once more now (a push
/// since may have repaired it): what still differs.
async fn recheck<D: DynamicConfig>(target: &LiveTarget<D>) -> Vec<crate::core::plan::Drift> {
    use crate::core::plan::Drift;
    let found = std::mem::take(&mut *target.found.lock().unwrap_or_else(|p| p.into_inner()));
    let mut ids = BTreeSet::new();
    let mut orphans = Vec::new();
    for d in found {
        match d {
            Drift::MissingFromAsterisk { extension } | Drift::ObjectDiffers { extension, .. } => {
                ids.insert(extension);
            }
            Drift::Orphaned { object_type, id } => orphans.push((object_type, id)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for id in ids {
        let sections = lock_known(target).as_ref().and_then(|k| k.groups.get(&id).cloned());
        let Some(sections) = sections else { continue };
        if let Some(drift) = sweep::read_back(target, &id, &sections).await {
            out.extend(drift);
        }
    }
    for (kind, id) in orphans {
        let ours = lock_known(target).as_ref().is_some_and(|k| k.groups.contains_key(&id));
        if !ours && matches!(target.client.get(&kind, &id).await, Ok(Some(_))) {
            out.push(Drift::Orphaned { object_type: kind, id });
        }
    }
    out
}

fn fingerprint(text: &str) -> u64 {
    crate::reconcile::Fingerprint::of(text)
}

fn lock_known<D>(target: &LiveTarget<D>) -> std::sync::MutexGuard<'_, Option<Known>> {
    target.known.lock().unwrap_or_else(|p| p.into_inner())
}

/// The record of `rendered` in its one form: its objects by id (ids in
/// order, each id's sections as rendered), comments dropped, under
/// [`RECORD_HEADER`]. Equal objects, equal text, so a record compares
/// with a rendering as text. With `remember`, the objects are kept for
/// [`excerpt`] and [`splice`].
pub fn canonical<D>(target: &LiveTarget<D>, rendered: &str, remember: bool) -> Result<String, ApplyError> {
    canonical_in(&target.known, RECORD_HEADER, rendered, remember).map_err(ApplyError::Unreadable)
}

/// [`canonical`] for any live target that keeps a [`Known`] record (the
/// realtime target too), under its own `header`.
pub fn canonical_in(
    known: &std::sync::Mutex<Option<Known>>,
    header: &str,
    rendered: &str,
    remember: bool,
) -> Result<String, SectionError> {
    let groups = sections::by_id(sections::parse(rendered)?);
    let text = sections::write(header, &groups);
    if remember {
        *known.lock().unwrap_or_else(|p| p.into_inner()) = Some(Known { hash: fingerprint(&text), groups });
    }
    Ok(text)
}

/// The objects of `ids` in the remembered record `record` (its
/// fingerprint), as a record of their own.
pub fn excerpt<D>(target: &LiveTarget<D>, record: u64, ids: &BTreeSet<String>) -> Option<String> {
    excerpt_in(&target.known, RECORD_HEADER, record, ids)
}

/// [`excerpt`] of any [`Known`] record.
pub fn excerpt_in(
    known: &std::sync::Mutex<Option<Known>>,
    header: &str,
    record: u64,
    ids: &BTreeSet<String>,
) -> Option<String> {
    let known = known.lock().unwrap_or_else(|p| p.into_inner());
    let k = known.as_ref().filter(|k| k.hash == record)?;
    let part: BTreeMap<String, Vec<Section>> =
        ids.iter().filter_map(|id| k.groups.get(id).map(|g| (id.clone(), g.clone()))).collect();
    Some(sections::write(header, &part))
}

/// The remembered record `record` with the objects of `ids` replaced by
/// those of `part` (an id `part` lacks is gone; objects of other ids in
/// `part` are ignored): the new whole record, remembered in its place.
pub fn splice<D>(target: &LiveTarget<D>, record: u64, ids: &BTreeSet<String>, part: &str) -> Option<String> {
    splice_in(&target.known, RECORD_HEADER, record, ids, part)
}

/// [`splice`] into any [`Known`] record.
pub fn splice_in(
    known: &std::sync::Mutex<Option<Known>>,
    header: &str,
    record: u64,
    ids: &BTreeSet<String>,
    part: &str,
) -> Option<String> {
    let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
    let k = known.as_mut().filter(|k| k.hash == record)?;
    let new = match sections::parse(part) {
        Ok(s) => sections::by_id(s),
        Err(e) => {
            tracing::warn!("a pushed part of the record is unreadable ({e}); the next run reads the whole record");
            *known = None;
            return None;
        }
    };
    for id in ids {
        k.groups.remove(id);
    }
    for (id, g) in new {
        if ids.contains(&id) {
            k.groups.insert(id, g);
        }
    }
    let text = sections::write(header, &k.groups);
    k.hash = fingerprint(&text);
    Some(text)
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
    if swept(target) {
        return recheck(target).await;
    }
    let Ok(sections) = sections::parse(record) else { return Vec::new() };
    let pushed = sections::by_id(sections);
    let mut out = orphans_of(&pushed, astdb_keys);
    let start = target.cursor.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let batch: Vec<&String> = pushed
        .range::<String, _>((std::ops::Bound::Excluded(&start), std::ops::Bound::Unbounded))
        .chain(pushed.range::<String, _>(..=&start))
        .map(|(id, _)| id)
        .take(DRIFT_BATCH.min(pushed.len()))
        .collect();
    let mut last = None;
    for id in batch {
        match sweep::read_back(target, id, &pushed[id]).await {
            Some(drift) => out.extend(drift),
            // ARI stopped answering: the run's own Asterisk check says so.
            None => break,
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
    target.sweep_starts.load(std::sync::atomic::Ordering::Relaxed) && !swept(target)
}

/// Whether the next drift check reads Asterisk's whole endpoint list
/// (`PJSIPShowEndpoints`). With the astdb wizard Asterisk rebuilds every
/// endpoint, and looks up its aor, from astdb for that list: 14–16 s at
/// 10k (0.6–0.9 s at 1k), against 0.2–0.4 s for the read-back batch. So a large estate
/// has it once a sweep, with the orphan scan (and on the first check after
/// a start); the batch read-back finds missing and changed objects in
/// between. A small estate (at most one batch) has it every time.
pub fn lists_endpoints<D>(target: &LiveTarget<D>) -> bool {
    !swept(target) && (sweep_starts(target) || target.checks.load(std::sync::atomic::Ordering::Relaxed) == 0)
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
        repair: &BTreeSet<String>,
        orphans: &[(String, String)],
    ) -> Result<LiveRun, ApplyError> {
        push(self, record, rendered, asked, repair, orphans).await
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
    fn canonical(&self, rendered: &str, remember: bool) -> Result<String, ApplyError> {
        canonical(self, rendered, remember)
    }
    fn excerpt(&self, record: u64, ids: &BTreeSet<String>) -> Option<String> {
        excerpt(self, record, ids)
    }
    fn splice(&self, record: u64, ids: &BTreeSet<String>, part: &str) -> Option<String> {
        splice(self, record, ids, part)
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
        let run = push(&t, None, &first, &BTreeSet::new(), &BTreeSet::new(), &[]).await.expect("pushes");
        assert_eq!(run.pushed.len(), 2);
        assert_eq!(run.record, first, "all pushed: the record is the rendering");
        t.client.requests();
        // 1002 changes, 1003 is new and refused, 1001 is as before.
        let second = rendered(&[("1001", "a"), ("1002", "b"), ("1003", "nosuchcodec")]);
        let run = push(&t, Some(&first), &second, &BTreeSet::new(), &BTreeSet::new(), &[]).await.expect("pushes");
        assert_eq!(run.pushed.iter().collect::<Vec<_>>(), ["1002"]);
        assert!(run.failures["1003"].contains("refused endpoint 1003"), "{:?}", run.failures);
        assert!(t.client.requests().iter().all(|r| !r.contains("1001")), "1001 was not touched");
        let record = sections::by_id(sections::parse(&run.record).expect("the record parses"));
        assert_eq!(record.keys().collect::<Vec<_>>(), ["1001", "1002"], "1003 is not in the record");
        assert_eq!(record["1002"][0].fields[0].1, "b");
        // Asked for (drift), an unchanged extension is pushed again; gone from the rendering, deleted.
        let third = rendered(&[("1001", "a")]);
        let asked: BTreeSet<String> = ["1001".to_string()].into();
        let run = push(&t, Some(&run.record), &third, &asked, &asked, &[]).await.expect("pushes");
        assert_eq!(run.pushed.iter().collect::<Vec<_>>(), ["1001", "1002"]);
        assert!(t.client.get("endpoint", "1002").is_none());
        assert!(
            push(&t, None, "junk\n", &BTreeSet::new(), &BTreeSet::new(), &[]).await.is_err(),
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
        push(&t, None, &text, &BTreeSet::new(), &BTreeSet::new(), &[]).await.expect("pushes");
        // Someone changes 1001's context through ARI, deletes 1002's aor, and pushes 9999.
        t.client.set("endpoint", "1001", "context", "elsewhere");
        t.client.objects.lock().unwrap().remove(&("aor".to_string(), "1002".to_string()));
        let stray = "[9999]\ntype = endpoint\ncontext = x\n";
        push(&t, None, stray, &BTreeSet::new(), &BTreeSet::new(), &[]).await.expect("pushes");
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
        let run =
            push(&t, Some(&text), &text, &asked, &asked, &[("endpoint".into(), "9999".into())]).await.expect("heals");
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
        let run = push(&t, None, &text, &BTreeSet::new(), &BTreeSet::new(), &[]).await.expect("runs");
        assert!(run.pushed.is_empty());
        assert_eq!(run.failures.len(), 3);
        assert!(run.failures["1001"].contains("unreachable"), "{:?}", run.failures);
        assert!(run.failures["1003"].starts_with("not pushed: "), "{:?}", run.failures);
        assert_eq!(
            t.client.requests(),
            ["PUT auth 1001", "PUT aor 1001"],
            "the first extension's first requests (auth and aor at once), not one per object"
        );
    }

    mod delta {
        use super::*;
        use crate::core::render::Renderer;
        use crate::reconcile::fake::{FakeAsterisk, FakeStore, MemFile};
        use crate::reconcile::{DirSource, Outcome, PruneGuard, Reconciler, RunReport, Trigger};
        use std::sync::Arc;

        type Rec = Reconciler<FakeStore, FakeAsterisk, LiveTarget<Fake>>;

        fn rig() -> (Rec, Arc<MemFile>) {
            let file = Arc::new(MemFile::default());
            let rec = Reconciler {
                store: FakeStore::default(),
                asterisk: None,
                managed: Box::new(file.clone()),
                renderer: Arc::new(Renderer::new(None).expect("the built-in template")),
                secrets: Arc::new(crate::secret::ProcessSecrets),
                realm: "asterisk".into(),
                prune: PruneGuard { max_share: 0.9, max_count: None, allow_mass_delete: false },
                self_heal: true,
                live: Some(LiveTarget::new(Fake { lenient: true, ..Default::default() })),
                settled: Default::default(),
                beside: None,
            };
            (rec, file)
        }

        /// A spec file of `(number, context, codecs)`.
        fn team(entries: &[(u32, &str, &str)]) -> String {
            let mut s = String::from("defaults: {transport: transport-udp}\nextensions:\n");
            for (n, context, codecs) in entries {
                s.push_str(&format!(
                    "  - {{extension: \"{n}\", context: {context}, codecs: [{codecs}], md5Cred: 0123456789abcdef0123456789abcdef}}\n"
                ));
            }
            s
        }

        fn is_delta(r: &RunReport) -> bool {
            r.record.reasons.iter().any(|x| x.starts_with("delta run"))
        }

        /// What a whole run records and pushes for what `src` loads now:
        /// the record, and the objects by (type, id).
        type Objects = BTreeMap<(String, String), Vec<(String, String)>>;

        fn whole(rec: &Rec, src: &DirSource) -> (String, Objects) {
            let d = src.load();
            let rendered = rec.renderer.render(&d.set, &d.source, &crate::secret::ProcessSecrets).expect("renders");
            let text = canonical(&LiveTarget::new(Fake::default()), &rendered, false).expect("canonical");
            let objects = sections::parse(&text)
                .expect("parses")
                .into_iter()
                .map(|s| ((s.kind.clone(), s.id.clone()), s.fields))
                .collect();
            (text, objects)
        }

        /// Asterisk holds exactly the objects a whole run would push, each
        /// with every field as rendered.
        fn holds(rec: &Rec, want: &Objects, step: &str) {
            let fake = &rec.live.as_ref().expect("live").client;
            let held = fake.objects.lock().unwrap().clone();
            assert_eq!(held.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{step}: the objects");
            for (key, fields) in want {
                let attrs: crate::asterisk::ari::Attributes =
                    held[key].iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let off = live::mismatches(fields, &attrs);
                assert!(off.is_empty(), "{step}: {key:?} differs: {off:?}");
            }
        }

        /// Edit after edit, a delta run leaves the record and Asterisk
        /// exactly as a whole run over the same specs would, touching only
        /// the extensions whose specs changed; a refused one falls back to
        /// whole runs until it is fixed.
        #[tokio::test]
        async fn delta_runs_record_and_push_exactly_what_a_whole_run_would() {
            let dir = tempfile::tempdir().expect("tempdir");
            let src = DirSource::new(dir.path().to_path_buf());
            let (rec, file) = rig();
            let fake = || &rec.live.as_ref().expect("live").client;
            let mut a: Vec<(u32, &str, &str)> = (1001..=1030).map(|n| (n, "from-internal", "ulaw")).collect();
            let b: Vec<(u32, &str, &str)> = (2001..=2010).map(|n| (n, "sales", "alaw")).collect();
            std::fs::write(dir.path().join("b.yaml"), team(&b)).expect("write");
            let write_a = |a: &[(u32, &str, &str)]| std::fs::write(dir.path().join("a.yaml"), team(a)).expect("write");
            write_a(&a);
            let r = rec.run(Trigger::Manual, src.load()).await;
            assert_eq!(r.record.outcome, Outcome::Applied, "{:?}", r.record.error);
            assert!(!is_delta(&r), "the first run takes the whole way");
            let (text, objects) = whole(&rec, &src);
            assert_eq!(file.text().as_deref(), Some(text.as_str()), "the first record");
            holds(&rec, &objects, "first run");
            fake().requests();

            // (what changes, the ids it touches)
            type Edit = Box<dyn Fn(&mut Vec<(u32, &'static str, &'static str)>)>;
            let edits: Vec<(&str, Edit, &[&str])> = vec![
                ("one context", Box::new(|a| a[4].1 = "support"), &["1005"]),
                ("one added", Box::new(|a| a.push((1031, "from-internal", "ulaw"))), &["1031"]),
                ("one deleted", Box::new(|a| a.retain(|e| e.0 != 1002)), &["1002"]),
                (
                    "three codecs",
                    Box::new(|a| {
                        for e in a.iter_mut().filter(|e| [1010, 1011, 1012].contains(&e.0)) {
                            e.2 = "ulaw, alaw";
                        }
                    }),
                    &["1010", "1011", "1012"],
                ),
                ("one added before the others", Box::new(|a| a.insert(0, (1000, "from-internal", "g722"))), &["1000"]),
            ];
            for (step, edit, touched) in edits {
                edit(&mut a);
                write_a(&a);
                let r = rec.run(Trigger::FileChange, src.load()).await;
                assert_eq!(r.record.outcome, Outcome::Applied, "{step}: {:?}", r.record.error);
                assert!(is_delta(&r), "{step}: a delta run: {:?}", r.record.reasons);
                let (text, objects) = whole(&rec, &src);
                assert_eq!(file.text().as_deref(), Some(text.as_str()), "{step}: the record a whole run would write");
                holds(&rec, &objects, step);
                let requests = fake().requests();
                assert!(!requests.is_empty(), "{step}: something was pushed");
                for req in &requests {
                    assert!(touched.iter().any(|id| req.ends_with(&format!(" {id}"))), "{step}: {req} touches another");
                }
                let plan = r.record.plan.as_ref().expect("a plan");
                let asked: BTreeSet<&str> = plan.changes.iter().map(|c| c.extension.as_str()).collect();
                assert_eq!(asked, touched.iter().copied().collect(), "{step}: the plan's changes");
                assert_eq!(
                    plan.unchanged
                        + plan.changes.iter().filter(|c| c.extension != "1002" || step != "one deleted").count(),
                    a.len() + b.len(),
                    "{step}: every other extension counts as unchanged"
                );
            }

            // A value Asterisk refuses: that extension fails alone; the runs after take the whole way until it is fixed.
            a[0].1 = "nosuchcodec-here";
            a[3].1 = "support";
            write_a(&a);
            let r = rec.run(Trigger::FileChange, src.load()).await;
            assert_eq!(r.record.outcome, Outcome::Degraded, "{:?}", r.record.error);
            assert!(is_delta(&r));
            a[0].1 = "from-internal";
            a[1].1 = "support";
            write_a(&a);
            let r = rec.run(Trigger::FileChange, src.load()).await;
            assert_eq!(r.record.outcome, Outcome::Applied, "{:?}", r.record.error);
            assert!(!is_delta(&r), "after a refusal the next run takes the whole way");
            let (text, objects) = whole(&rec, &src);
            assert_eq!(file.text().as_deref(), Some(text.as_str()), "the record after the fix");
            holds(&rec, &objects, "after the fix");
            // And the run after that is a delta run again.
            a[2].1 = "support";
            write_a(&a);
            let r = rec.run(Trigger::FileChange, src.load()).await;
            assert!(is_delta(&r), "{:?}", r.record.reasons);
            assert_eq!(file.text().as_deref(), Some(whole(&rec, &src).0.as_str()));
        }
    }
}
