//! The reconcile rules, from tables of cases over the in-memory fakes:
//! each case applies `before` with everything working, then changes the
//! specs to `after` under a script of what goes wrong, and checks the
//! run's outcome and what the store, the file and Asterisk saw.

use super::fake::{FakeAsterisk, FakeLive, FakeStore, MemFile, Script};
use super::{Outcome, PruneGuard, Reconciler, RunReport, Trigger, load_dir};
use crate::core::render::Renderer;
use crate::secret::{ProcessSecrets, SecretSource};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

type Rec = Reconciler<FakeStore, FakeAsterisk, FakeLive>;

fn spec(entries: &[(String, &str)]) -> String {
    let mut s = String::from("defaults: {transport: transport-udp, codecs: [ulaw]}\nextensions:\n");
    for (n, context) in entries {
        s.push_str(&format!(
            "  - {{extension: \"{n}\", context: {context}, md5Cred: 0123456789abcdef0123456789abcdef}}\n"
        ));
    }
    s
}

fn numbers(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

fn rig(live: Option<FakeLive>, secrets: Arc<dyn SecretSource + Send + Sync>) -> (Rec, Arc<MemFile>) {
    let file = Arc::new(MemFile::default());
    let rec = Reconciler {
        store: FakeStore::default(),
        asterisk: Some(FakeAsterisk::new(file.clone(), Script::default())),
        managed: Box::new(file.clone()),
        renderer: Arc::new(Renderer::new(None).expect("the built-in template")),
        secrets,
        realm: "asterisk".into(),
        prune: PruneGuard { max_share: 0.3, max_count: None, allow_mass_delete: false },
        self_heal: true,
        live,
        settled: Default::default(),
        beside: None,
    };
    (rec, file)
}

async fn run(rec: &Rec, dir: &Path, text: &str) -> RunReport {
    std::fs::write(dir.join("team.yaml"), text).expect("write the spec");
    rec.run(Trigger::Manual, load_dir(dir)).await
}

/// The endpoints a rendered file declares.
fn declared(text: Option<String>) -> Vec<String> {
    let text = text.unwrap_or_default();
    let mut out = Vec::new();
    let mut last = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            last = Some(name.to_string());
        } else if line == "type = endpoint"
            && let Some(n) = last.take()
        {
            out.push(n);
        }
    }
    out
}

struct Case {
    name: &'static str,
    before: Vec<String>,
    /// (number, context) after the change; `None`: a broken spec file.
    after: Option<Vec<(String, &'static str)>>,
    script: Script,
    /// A live target refusing these ids (`None`: the managed file and reloads).
    live: Option<&'static [&'static str]>,
    /// The live target's tables are read by other nodes too.
    shared: bool,
    outcome: Outcome,
    error: Option<&'static str>,
    /// Reloads during the second run.
    reloads: usize,
    /// Endpoints in the managed file after it.
    file: Vec<String>,
    /// Endpoints Asterisk holds after it (`None`: not checked, the live target).
    loaded: Option<Vec<String>>,
    upserts: Vec<String>,
    deletes: Vec<String>,
    rollback_failed: bool,
}

fn at(ids: &[String], context: &'static str) -> Vec<(String, &'static str)> {
    ids.iter().map(|n| (n.clone(), context)).collect()
}

fn s(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn cases() -> Vec<Case> {
    let one = s(&["1001"]);
    let two = s(&["1001", "1002"]);
    let ten = numbers(1001..=1010);
    let base = |name| Case {
        name,
        before: one.clone(),
        after: Some(at(&two, "from-internal")),
        script: Script::default(),
        live: None,
        shared: false,
        outcome: Outcome::Failed,
        error: None,
        reloads: 2,
        file: one.clone(),
        loaded: Some(one.clone()),
        upserts: Vec::new(),
        deletes: Vec::new(),
        rollback_failed: false,
    };
    vec![
        Case {
            outcome: Outcome::Applied,
            reloads: 1,
            file: two.clone(),
            loaded: Some(two.clone()),
            upserts: s(&["1002"]),
            ..base("a create is written, reloaded, verified and recorded")
        },
        Case {
            script: Script { failing_reloads: [2].into(), ..Default::default() },
            error: Some(
                "reload failed: Module res_pjsip.so failed to reload; the previous file was restored and reloaded",
            ),
            ..base("a failed reload rolls the file back and records nothing")
        },
        Case {
            script: Script { refused: ["1002".to_string()].into(), ..Default::default() },
            error: Some("endpoint 1002 is not loaded after the reload"),
            ..base("an endpoint Asterisk drops fails verification and is rolled back")
        },
        Case {
            after: Some(at(&one, "elsewhere")),
            script: Script { wrong_context: ["1001".to_string()].into(), ..Default::default() },
            error: Some("endpoint 1001 has context \"somewhere-else\" after the reload"),
            ..base("a context Asterisk does not hold is a verification mismatch")
        },
        Case {
            script: Script {
                wrong_context: ["1002".to_string()].into(),
                failing_reloads: [3].into(),
                ..Default::default()
            },
            error: Some("but Asterisk does not hold the previous definitions of 1002"),
            loaded: Some(two.clone()),
            rollback_failed: true,
            ..base("a rollback Asterisk does not take is a failed rollback")
        },
        Case {
            before: ten.clone(),
            after: Some(at(&ten[..3], "from-internal")),
            outcome: Outcome::Blocked,
            error: Some("prune guard: the run would delete 7 of 10 extensions"),
            reloads: 0,
            file: ten.clone(),
            loaded: Some(ten.clone()),
            ..base("the prune guard refuses a prune above its share")
        },
        Case {
            before: ten.clone(),
            after: Some(at(&ten[..7], "from-internal")),
            outcome: Outcome::Applied,
            reloads: 1,
            file: ten[..7].to_vec(),
            loaded: Some(ten[..7].to_vec()),
            deletes: ten[7..].to_vec(),
            ..base("the prune guard lets a prune at its share through")
        },
        Case {
            script: Script { down: true, ..Default::default() },
            error: Some("Asterisk is unreachable (connection refused); nothing was changed"),
            reloads: 0,
            loaded: None,
            ..base("an unreachable Asterisk changes nothing")
        },
        Case {
            script: Script { down: true, ..Default::default() },
            live: Some(&[]),
            error: Some("Asterisk is unreachable (connection refused); nothing was changed"),
            reloads: 0,
            loaded: None,
            ..base("an unreachable Asterisk changes nothing with a live target of its own")
        },
        Case {
            script: Script { down: true, ..Default::default() },
            live: Some(&[]),
            shared: true,
            outcome: Outcome::Applied,
            reloads: 0,
            file: two.clone(),
            loaded: None,
            upserts: s(&["1002"]),
            ..base("tables other nodes read are committed while this Asterisk is unreachable")
        },
        Case {
            after: None,
            outcome: Outcome::Invalid,
            error: Some("the specs have 1 error(s); the last good config stays in force"),
            reloads: 0,
            ..base("specs that do not validate change nothing")
        },
        Case {
            after: Some(at(&s(&["1001", "1002", "1003"]), "from-internal")),
            live: Some(&["1003"]),
            outcome: Outcome::Degraded,
            error: Some("1 of 2 extension(s) refused, the others are live: 1003: Asterisk refused endpoint 1003"),
            reloads: 0,
            file: s(&["1001", "1002"]),
            loaded: None,
            upserts: s(&["1002"]),
            ..base("a live target records what it pushed and fails the refused alone: degraded")
        },
        Case {
            live: Some(&["1002"]),
            error: Some("1 of 1 extension(s) refused"),
            reloads: 0,
            loaded: None,
            ..base("a live target that pushes nothing fails the run")
        },
    ]
}

#[tokio::test]
async fn the_reconcile_rules() {
    for case in cases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = case.live.map(|refused| FakeLive {
            refused: refused.iter().map(|s| s.to_string()).collect(),
            shared: case.shared,
            ..Default::default()
        });
        let (rec, file) = rig(live, Arc::new(ProcessSecrets));
        let first = run(&rec, dir.path(), &spec(&at(&case.before, "from-internal"))).await;
        assert_eq!(first.record.outcome, Outcome::Applied, "{}: the first run: {:?}", case.name, first.record.error);
        let asterisk = rec.asterisk.as_ref().expect("configured");
        *asterisk.script.lock().expect("script") = case.script.clone();
        let reloads = asterisk.reloads.load(Ordering::Relaxed);
        let text = match &case.after {
            Some(after) => spec(after),
            None => "extensions: [".to_string(),
        };
        let report = run(&rec, dir.path(), &text).await;
        let r = &report.record;
        assert_eq!(r.outcome, case.outcome, "{}: {:?}", case.name, r.error);
        assert_eq!(report.unreachable.is_some(), case.script.down, "{}: the report says Asterisk answered", case.name);
        match case.error {
            Some(want) => {
                let got = r.error.as_deref().unwrap_or("");
                assert!(got.contains(want), "{}: error {got:?} does not say {want:?}", case.name);
            }
            None => assert_eq!(r.error, None, "{}", case.name),
        }
        assert_eq!(asterisk.reloads.load(Ordering::Relaxed) - reloads, case.reloads, "{}: reloads", case.name);
        assert_eq!(r.reloaded, case.reloads > 0 && case.live.is_none(), "{}: the record's reloaded", case.name);
        assert_eq!(r.rollback_failed, case.rollback_failed, "{}: rollback failed", case.name);
        assert_eq!(
            declared(file.text()),
            case.file,
            "{}: the managed file (or the record of what was pushed)",
            case.name
        );
        if let Some(loaded) = &case.loaded {
            assert_eq!(&asterisk.names(), loaded, "{}: what Asterisk holds", case.name);
        }
        let committed = rec.store.last().expect("every run is recorded");
        assert_eq!(committed.outcome, r.outcome, "{}", case.name);
        assert_eq!(committed.error, r.error, "{}: the recorded error", case.name);
        assert_eq!(
            (committed.reloaded, committed.rollback_failed),
            (r.reloaded, case.rollback_failed),
            "{}: the recorded reload and rollback",
            case.name
        );
        if let Some(live) = &rec.live {
            // A run that may not commit without Asterisk pushes nothing.
            let pushes = if case.script.down && !case.shared { 1 } else { 2 };
            assert_eq!(live.pushes.load(Ordering::Relaxed), pushes, "{}: one push a run", case.name);
        }
        assert_eq!(committed.upserts, case.upserts, "{}: rows written", case.name);
        assert_eq!(committed.deletes, case.deletes, "{}: rows deleted", case.name);
        let applied: BTreeSet<String> = rec.store.applied.lock().expect("rows").keys().cloned().collect();
        let want: BTreeSet<String> =
            case.before.iter().chain(&case.upserts).filter(|n| !case.deletes.contains(n)).cloned().collect();
        assert_eq!(applied, want, "{}: the applied rows", case.name);
    }
}

/// A secret that changes while a run reads it: the rendered file and the
/// recorded md5Cred come from one reading.
#[tokio::test]
async fn a_run_reads_each_secret_once() {
    #[derive(Default)]
    struct Rotating(std::sync::atomic::AtomicUsize);
    impl SecretSource for Rotating {
        fn env(&self, _name: &str) -> Option<String> {
            Some(format!("pw-{}", self.0.fetch_add(1, Ordering::Relaxed) + 1))
        }
        fn file(&self, _dir: &Path, _path: &Path) -> std::io::Result<String> {
            Err(std::io::Error::other("no files here"))
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (rec, file) = rig(None, Arc::new(Rotating::default()));
    let text = "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\n\
                extensions:\n  - {extension: \"1001\", passwordEnv: EXT_1001}\n";
    let report = run(&rec, dir.path(), text).await;
    assert_eq!(report.record.outcome, Outcome::Applied, "{:?}", report.record.error);
    let rendered = file.text().expect("written");
    assert!(rendered.contains("password = pw-1\n"), "rendered with the first reading");
    let committed = rec.store.last().expect("recorded");
    assert_eq!(
        committed.md5s["1001"],
        crate::secret::md5_cred("1001", "asterisk", "pw-1"),
        "hashed from the same reading"
    );
}

/// A large realtime estate's endpoint list is read beside the loop: the run
/// that asks for it goes on without it; a list begun before a run that
/// changed something is read again; a list still true is compared (here it
/// shows an endpoint no spec declares); once one is compared, no more are read.
#[tokio::test]
async fn an_endpoint_list_read_beside_the_loop_is_compared_only_while_still_true() {
    use super::plan::Drift;
    let dir = tempfile::tempdir().expect("tempdir");
    let live = FakeLive { beside: true, ..Default::default() };
    let (mut rec, file) = rig(Some(live), Arc::new(ProcessSecrets));
    let gate = Arc::new(tokio::sync::Notify::new());
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    rec.beside = Some(super::run::BesideList::new({
        let (gate, reads, file) = (gate.clone(), reads.clone(), file.clone());
        move || {
            let (gate, file) = (gate.clone(), file.clone());
            reads.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                gate.notified().await;
                let mut endpoints: std::collections::BTreeMap<_, _> =
                    super::fake::endpoints_of(&file.text().unwrap_or_default())
                        .into_iter()
                        .map(|e| (e.name.clone(), e))
                        .collect();
                endpoints.insert(
                    "9999".to_string(),
                    super::plan::ObservedEndpoint { name: "9999".into(), ..Default::default() },
                );
                Ok(endpoints)
            })
        }
    }));
    let ready = |rec: &Rec| rec.beside.as_ref().is_some_and(super::run::BesideList::ready);
    let until_ready = async |rec: &Rec| {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ready(rec) {
            assert!(tokio::time::Instant::now() < deadline, "the reading never finished");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    let unmanaged = |r: &RunReport| {
        r.record.plan.as_ref().is_some_and(|p| p.drift.contains(&Drift::Unmanaged { endpoint: "9999".into() }))
    };
    let two = spec(&[("1001".to_string(), "from-internal"), ("1002".to_string(), "from-internal")]);
    let three = spec(&[
        ("1001".to_string(), "from-internal"),
        ("1002".to_string(), "from-internal"),
        ("1003".to_string(), "from-internal"),
    ]);
    let count = || reads.load(Ordering::SeqCst);

    let applied = run(&rec, dir.path(), &two).await;
    assert_eq!(applied.record.outcome, Outcome::Applied, "{:?}", applied.record.error);
    let asked = run(&rec, dir.path(), &two).await;
    assert_eq!(asked.record.outcome, Outcome::NoOp, "{:?}", asked.record.error);
    assert!(!unmanaged(&asked), "the run waited for the list");
    assert_eq!(count(), 1, "the run with nothing to change did not start a reading");
    // A run that changes something while the list is being read: stale.
    let changed = run(&rec, dir.path(), &three).await;
    assert_eq!(changed.record.outcome, Outcome::Applied, "{:?}", changed.record.error);
    gate.notify_one();
    until_ready(&rec).await;
    let stale = run(&rec, dir.path(), &three).await;
    assert_eq!(stale.record.outcome, Outcome::NoOp, "{:?}", stale.record.error);
    assert!(!unmanaged(&stale), "a list begun before a run's changes was compared");
    assert_eq!(count(), 2, "the stale list was not read again");
    gate.notify_one();
    until_ready(&rec).await;
    let compared = run(&rec, dir.path(), &three).await;
    assert!(unmanaged(&compared), "the list still true was not compared: {:?}", compared.record.plan);
    let fourth = run(&rec, dir.path(), &three).await;
    assert!(!ready(&rec));
    assert_eq!(count(), 2, "a list was read again after one was compared: {:?}", fourth.record.plan);
}
