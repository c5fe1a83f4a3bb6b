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

pub mod live;
pub mod sections;

pub use live::{DynamicConfig, LiveTarget, Pushed};
use sections::Section;
use std::collections::{BTreeMap, BTreeSet};

/// The ari target of a daemon: the real ARI client.
pub type AriTarget = LiveTarget<crate::asterisk::ari::Ari>;

/// The record's name in the state directory.
pub const RECORD_FILE: &str = "ari-pushed.conf";

/// The first lines of the record of what was pushed.
pub const RECORD_HEADER: &str = "; Pushed to Asterisk through ARI by asterisk-gitops (apply.target: ari).\n\
; A record of what Asterisk holds in its astdb wizard, kept by the daemon: Asterisk never reads this file.\n";

/// What one run's pushes came to.
#[derive(Debug, Default)]
pub struct LiveRun {
    /// Ids whose objects are now as rendered.
    pub pushed: BTreeSet<String>,
    /// Ids Asterisk refused (or that are not as rendered), with the reason.
    pub failures: BTreeMap<String, String>,
    /// The new record: the rendering when every push worked, else the
    /// rendering with the failed ids as they were before.
    pub record: String,
    /// Requests sent.
    pub requests: usize,
}

/// Pushes, one extension at a time, every id in `asked` (the plan's
/// changes and the drift to repair) and every id whose sections differ
/// between `record` (what was pushed before) and `rendered`. Errors only
/// when the rendering cannot be read as objects: then nothing was pushed.
pub async fn push<D: DynamicConfig>(
    target: &LiveTarget<D>,
    record: Option<&str>,
    rendered: &str,
    asked: &BTreeSet<String>,
) -> Result<LiveRun, String> {
    let new = sections::by_id(sections::parse(rendered).map_err(|e| format!("the ari target cannot push it: {e}"))?);
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
    for id in ids {
        let (before, after) = (old.get(id).unwrap_or(&none), new.get(id).unwrap_or(&none));
        match target.push(id, before, after).await {
            Pushed::Done { requests } => {
                run.requests += requests;
                run.pushed.insert(id.to_string());
            }
            Pushed::Failed { reason } => {
                run.failures.insert(id.to_string(), reason);
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
        let run = push(&t, None, &first, &BTreeSet::new()).await.expect("pushes");
        assert_eq!(run.pushed.len(), 2);
        assert_eq!(run.record, first, "all pushed: the record is the rendering");
        t.client.requests();
        // 1002 changes, 1003 is new and refused, 1001 is as before.
        let second = rendered(&[("1001", "a"), ("1002", "b"), ("1003", "nosuchcodec")]);
        let run = push(&t, Some(&first), &second, &BTreeSet::new()).await.expect("pushes");
        assert_eq!(run.pushed.iter().collect::<Vec<_>>(), ["1002"]);
        assert!(run.failures["1003"].contains("refused endpoint 1003"), "{:?}", run.failures);
        assert!(t.client.requests().iter().all(|r| !r.contains("1001")), "1001 was not touched");
        let record = sections::by_id(sections::parse(&run.record).expect("the record parses"));
        assert_eq!(record.keys().collect::<Vec<_>>(), ["1001", "1002"], "1003 is not in the record");
        assert_eq!(record["1002"][0].fields[0].1, "b");
        // Asked for (drift), an unchanged extension is pushed again; gone from the rendering, deleted.
        let third = rendered(&[("1001", "a")]);
        let asked: BTreeSet<String> = ["1001".to_string()].into();
        let run = push(&t, Some(&run.record), &third, &asked).await.expect("pushes");
        assert_eq!(run.pushed.iter().collect::<Vec<_>>(), ["1001", "1002"]);
        assert!(t.client.get("endpoint", "1002").is_none());
        assert!(push(&t, None, "junk\n", &BTreeSet::new()).await.is_err(), "an unreadable rendering pushes nothing");
    }
}
