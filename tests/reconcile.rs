//! The reconcile loop end to end: real spec files, a real SQLite database,
//! the managed file on disk, and the Asterisk stand-in loading it.

use asterisk_gitops::asterisk::managed::ManagedFile;
use asterisk_gitops::asterisk::{AmiConfig, Asterisk};
use asterisk_gitops::core::plan::{Action, Drift};
use asterisk_gitops::core::render::Renderer;
use asterisk_gitops::db::{Db, Retry};
use asterisk_gitops::reconcile::{self, BackoffConfig, DesiredSource, LoopConfig, LoopHandle};
use asterisk_gitops::reconcile::{Outcome, PruneGuard, Reconciler, RunReport, Trigger};
use asterisk_gitops::secret::ProcessSecrets;
use asterisk_standin::{StandIn, StandInConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

struct Rig {
    dir: tempfile::TempDir,
    spec: PathBuf,
    managed: PathBuf,
    standin: StandIn,
    rec: Reconciler<Db, Asterisk>,
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn entry(number: &str, name: &str) -> String {
    format!("  - extension: \"{number}\"\n    displayName: {name}\n    md5Cred: {SECRET}\n")
}

fn team(entries: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw, alaw]}\nextensions:\n",
    );
    for (n, name) in entries {
        s.push_str(&entry(n, name));
    }
    s
}

async fn rig_with(templates: Option<&Path>) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("extensions.d");
    let ast = dir.path().join("asterisk");
    std::fs::create_dir_all(&spec).expect("mkdir");
    std::fs::create_dir_all(&ast).expect("mkdir");
    let managed = ast.join("pjsip_gitops.conf");
    let conf = asterisk_standin::write_operator_conf(&ast, "pjsip_gitops.conf").expect("operator conf");
    let standin =
        StandIn::start(StandInConfig { pjsip_conf: conf, user: "gitops".into(), secret: "gitops-secret".into() })
            .await
            .expect("stand-in");
    let url = format!("sqlite://{}/state/db.sqlite", dir.path().display());
    let db = Db::connect(&url, &Retry::default()).await.expect("db");
    let asterisk = Asterisk::new(AmiConfig {
        addr: standin.ami_addr.to_string(),
        user: "gitops".into(),
        secret: "gitops-secret".into(),
        timeout: Duration::from_secs(2),
        events: false,
    });
    let rec = Reconciler {
        store: db,
        asterisk: Some(asterisk),
        managed: Box::new(ManagedFile::new(&managed)),
        renderer: Arc::new(Renderer::new(templates).expect("templates")),
        secrets: Arc::new(ProcessSecrets),
        realm: "asterisk".into(),
        prune: PruneGuard { max_share: 0.3, max_count: None, allow_mass_delete: false },
        self_heal: true,
        live: None,
        settled: Default::default(),
        beside: None,
    };
    Rig { dir, spec, managed, standin, rec }
}

async fn rig() -> Rig {
    rig_with(None).await
}

impl Rig {
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.spec.join(name), text).expect("write spec");
    }
    async fn run(&self) -> RunReport {
        self.rec.run(Trigger::Manual, reconcile::load_dir(&self.spec)).await
    }
    fn loaded(&self) -> Vec<String> {
        self.standin.control().endpoints()
    }
    fn mtime(&self) -> SystemTime {
        std::fs::metadata(&self.managed).and_then(|m| m.modified()).expect("managed file exists")
    }
}

/// Waits (up to 30 s) for `f`, and says what it waited for if it never comes.
async fn wait<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let within = Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn outcome(r: &RunReport) -> (Outcome, Option<&str>) {
    (r.record.outcome, r.record.error.as_deref())
}

#[tokio::test]
async fn create_update_and_delete_reach_asterisk_and_the_database() {
    let r = rig().await;
    r.write("team.yaml", &team(&[("1001", "Ann"), ("1002", "Bob")]));
    let run = r.run().await;
    assert_eq!(outcome(&run), (Outcome::Applied, None));
    assert!(run.record.reloaded);
    assert_eq!(r.loaded(), ["1001", "1002"]);
    let ep = r.standin.control().endpoint("1001").expect("loaded");
    assert_eq!(
        (ep.get("context"), ep.get("allow"), ep.get("callerid")),
        (Some("from-internal"), Some("ulaw,alaw"), Some("\"Ann\" <1001>"))
    );
    let row = r.rec.store.extension("1001").await.expect("query").expect("row");
    assert_eq!(
        (row.display_name.as_deref(), row.codecs.clone(), row.sync_status.as_str()),
        (Some("Ann"), vec!["ulaw".to_string(), "alaw".to_string()], "synced")
    );
    let runs = r.rec.store.runs(10).await.expect("runs");
    assert_eq!((runs[0].outcome.as_str(), runs[0].creates, runs[0].id), ("applied", 2, run.run_id.expect("recorded")));

    // Update one field, delete the other.
    r.write("team.yaml", &team(&[("1001", "Ann Lee")]).replace("[ulaw, alaw]", "[g722, ulaw]"));
    let run = r.run().await;
    assert_eq!(outcome(&run), (Outcome::Applied, None));
    assert_eq!(r.loaded(), ["1001"]);
    assert_eq!(
        r.standin.control().endpoint("1001").and_then(|e| e.get("allow").map(str::to_string)).as_deref(),
        Some("g722,ulaw")
    );
    let rows = r.rec.store.extensions().await.expect("list");
    assert_eq!(
        rows.iter().map(|e| (e.number.as_str(), e.display_name.as_deref())).collect::<Vec<_>>(),
        [("1001", Some("Ann Lee"))]
    );
    let detail = r.rec.store.run(run.run_id.expect("id")).await.expect("query").expect("run");
    assert!(
        detail
            .diff
            .as_deref()
            .is_some_and(|d| d.contains("-callerid = \"Ann\" <1001>") && d.contains("+callerid = \"Ann Lee\" <1001>")),
        "{:?}",
        detail.diff
    );
}

#[tokio::test]
async fn a_second_run_on_the_same_input_writes_nothing_and_reloads_nothing() {
    let r = rig().await;
    r.write("team.yaml", &team(&[("1001", "Ann"), ("1002", "Bob"), ("1003", "Cy")]));
    assert_eq!(r.run().await.record.outcome, Outcome::Applied);
    let (reloads, mtime) = (r.standin.control().reloads(), r.mtime());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let run = r.run().await;
    assert_eq!(outcome(&run), (Outcome::NoOp, None));
    assert!(!run.record.reloaded);
    assert_eq!(r.standin.control().reloads(), reloads, "no reload");
    assert_eq!(r.mtime(), mtime, "the managed file was not rewritten");
}

#[tokio::test]
async fn a_settled_run_still_sees_a_changed_secret_file_and_rows_changed_behind_its_back() {
    let r = rig().await;
    std::fs::create_dir_all(r.spec.join("secrets")).expect("mkdir");
    let pw = r.spec.join("secrets/1004.pw");
    std::fs::write(&pw, "first-password-1\n").expect("write secret");
    let mut text = team(&[("1001", "Ann"), ("1002", "Bob"), ("1003", "Cy")]);
    text.push_str("  - extension: \"1004\"\n    displayName: Dee\n    passwordFile: 1004.pw\n");
    r.write("team.yaml", &text);
    assert_eq!(r.run().await.record.outcome, Outcome::Applied);
    assert_eq!(r.run().await.record.outcome, Outcome::NoOp);
    // Settled now: the next no-op takes the short path, and must still see these.
    assert_eq!(r.run().await.record.outcome, Outcome::NoOp);

    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&pw, "second-password-22\n").expect("rewrite secret");
    let run = r.run().await;
    assert_eq!(outcome(&run), (Outcome::Applied, None));
    let changed = &run.record.plan.as_ref().expect("plan").changes;
    assert_eq!(changed.iter().map(|c| c.extension.as_str()).collect::<Vec<_>>(), ["1004"]);
    assert_eq!(r.run().await.record.outcome, Outcome::NoOp);

    // Another writer removes a row: the next run puts it back.
    let url = format!("sqlite://{}/state/db.sqlite", r.dir.path().display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("sqlite");
    sqlx::query("DELETE FROM extensions WHERE number = '1002'").execute(&pool).await.expect("delete");
    pool.close().await;
    let run = r.run().await;
    assert_eq!(outcome(&run), (Outcome::Applied, None));
    let changed = &run.record.plan.as_ref().expect("plan").changes;
    assert_eq!(
        changed.iter().map(|c| (c.extension.as_str(), c.action)).collect::<Vec<_>>(),
        [("1002", Action::Create)]
    );

    // Drift in Asterisk is still seen on the short path.
    assert_eq!(r.run().await.record.outcome, Outcome::NoOp);
    let reloads = r.standin.control().reloads();
    std::fs::write(&r.managed, "").expect("empty the managed file");
    assert_eq!(r.standin.control().reloads(), reloads);
    let run = r.run().await;
    assert_eq!(outcome(&run), (Outcome::Applied, None), "a hand edit is healed");
}

#[tokio::test]
async fn a_run_with_changes_pings_asterisk_instead_of_listing_every_endpoint() {
    let r = rig().await;
    let c = r.standin.control();
    r.write("team.yaml", &team(&[("1001", "Ann"), ("1002", "Bob")]));
    assert_eq!(r.run().await.record.outcome, Outcome::Applied);
    let (lists, pings) = (c.actions("PJSIPShowEndpoints"), c.actions("Ping"));
    r.write("team.yaml", &team(&[("1001", "Ann"), ("1002", "Bob"), ("1003", "Cy")]));
    let run = r.run().await;
    assert_eq!(outcome(&run), (Outcome::Applied, None));
    assert_eq!(r.loaded(), ["1001", "1002", "1003"], "applied and verified");
    assert_eq!(c.actions("PJSIPShowEndpoints"), lists, "no full list on the way to the reload");
    assert!(c.actions("Ping") > pings, "but Asterisk was asked whether it answers");
    // The next run has nothing to change: it lists, and looks for drift.
    assert_eq!(r.run().await.record.outcome, Outcome::NoOp);
    assert_eq!(c.actions("PJSIPShowEndpoints"), lists + 1);
}

#[tokio::test]
async fn an_invalid_file_changes_nothing_and_fixing_it_resumes() {
    let r = rig().await;
    r.write("team.yaml", &team(&[("1001", "Ann")]));
    r.run().await;
    let (reloads, before) = (r.standin.control().reloads(), std::fs::read_to_string(&r.managed).expect("read"));
    r.write("team.yaml", &team(&[("1001", "Ann"), ("1002", "Bob")]).replace("[ulaw, alaw]", "[ulaw, g7299]"));
    let run = r.run().await;
    assert_eq!(run.record.outcome, Outcome::Invalid);
    let d = &run.record.diagnostics[0];
    assert_eq!((d.location.file.as_str(), d.location.line, d.code), ("team.yaml", 1, "unknown-codec"));
    assert_eq!(std::fs::read_to_string(&r.managed).expect("read"), before);
    assert_eq!(r.standin.control().reloads(), reloads);
    assert_eq!(r.loaded(), ["1001"]);
    let stored = r.rec.store.run(run.run_id.expect("recorded")).await.expect("query").expect("run");
    assert_eq!(stored.diagnostics[0]["file"], "team.yaml", "status shows the file:line errors");
    assert_eq!(stored.diagnostics[0]["line"], 1);
    let status = r.rec.store.status().await.expect("query").expect("row");
    assert_eq!((status.ready.as_str(), status.ready_reason.as_str()), ("False", "ValidationFailed"));

    r.write("team.yaml", &team(&[("1001", "Ann"), ("1002", "Bob")]));
    assert_eq!(r.run().await.record.outcome, Outcome::Applied);
    assert_eq!(r.loaded(), ["1001", "1002"]);
}

#[tokio::test]
async fn a_failed_reload_restores_the_previous_file_and_the_next_run_retries() {
    let r = rig().await;
    r.write("team.yaml", &team(&[("1001", "Ann")]));
    r.run().await;
    let good = std::fs::read_to_string(&r.managed).expect("read");
    r.standin.control().fail_reloads(true);
    r.write("team.yaml", &team(&[("1001", "Ann"), ("1002", "Bob")]));
    let run = r.run().await;
    assert_eq!(run.record.outcome, Outcome::Failed);
    let err = run.record.error.clone().unwrap_or_default();
    assert!(
        err.contains("reload failed") && err.contains("A reload failed") && err.contains("previous file was restored"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&r.managed).expect("read"), good);
    let failed = r.rec.store.extension("1002").await.expect("query").expect("the failed create is listed");
    assert_eq!(failed.applied_at, None, "no applied row for what did not apply");
    assert_eq!(failed.sync_status, "failed");
    assert_eq!(failed.sync_run_id, run.run_id, "the run that failed is named");
    assert!(failed.last_error.as_deref().is_some_and(|e| e.contains("reload failed")), "{:?}", failed.last_error);
    let status = r.rec.store.status().await.expect("query").expect("row");
    assert_eq!((status.ready.as_str(), status.ready_reason.as_str()), ("False", "ReconciliationFailed"));

    r.standin.control().fail_reloads(false);
    assert_eq!(outcome(&r.run().await), (Outcome::Applied, None));
    assert_eq!(r.loaded(), ["1001", "1002"]);
}

#[tokio::test]
async fn an_object_asterisk_drops_fails_verification_and_is_rolled_back() {
    // An operator template that adds a codec Asterisk does not have: Asterisk
    // answers "Module Reloaded" and silently drops the endpoint.
    let tpl = tempfile::tempdir().expect("tempdir");
    let text = asterisk_gitops::core::render::DEFAULT_TEMPLATE.replace(
        "type = endpoint\n",
        "type = endpoint\n{% if e.extension == \"1002\" %}allow = nosuchcodec\n{% endif %}",
    );
    std::fs::write(tpl.path().join(asterisk_gitops::core::render::TEMPLATE_NAME), text).expect("template");
    let r = rig_with(Some(tpl.path())).await;
    r.write("team.yaml", &team(&[("1001", "Ann")]));
    assert_eq!(r.run().await.record.outcome, Outcome::Applied);
    let good = std::fs::read_to_string(&r.managed).expect("read");
    r.write("team.yaml", &team(&[("1001", "Ann"), ("1002", "Bob")]));
    let run = r.run().await;
    assert_eq!(run.record.outcome, Outcome::Failed);
    let err = run.record.error.clone().unwrap_or_default();
    assert!(
        err.contains("endpoint 1002 is not loaded after the reload") && err.contains("restored and reloaded"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&r.managed).expect("read"), good, "the previous file is back");
    assert_eq!(r.loaded(), ["1001"]);
    // Each extension's state says what came of it, and the run says why.
    let failed = r.rec.store.extension("1002").await.expect("query").expect("listed");
    assert_eq!((failed.sync_status.as_str(), failed.sync_run_id), ("failed", run.run_id));
    assert!(failed.last_error.as_deref().is_some_and(|e| e.contains("endpoint 1002 is not loaded")), "{failed:?}");
    assert_eq!(r.rec.store.extension("1001").await.expect("query").expect("row").sync_status, "synced");
    assert!(run.record.reasons.iter().any(|r| r.starts_with("reloaded: 1 create(s)")), "{:?}", run.record.reasons);
    assert!(run.record.reasons.iter().any(|r| r.starts_with("rolled back")), "{:?}", run.record.reasons);
    assert!(!run.record.rollback_failed);
}

#[tokio::test]
async fn a_hand_edit_of_the_managed_file_is_drift_and_is_healed() {
    let r = rig().await;
    r.write("team.yaml", &team(&[("1001", "Ann"), ("1002", "Bob")]));
    r.run().await;
    let rendered = std::fs::read_to_string(&r.managed).expect("read");
    let edited = rendered.replace("context = from-internal", "context = hacked");
    std::fs::write(&r.managed, &edited).expect("hand edit");
    let run = r.run().await;
    assert_eq!(outcome(&run), (Outcome::Applied, None));
    let plan = run.record.plan.expect("plan");
    assert!(plan.drift.contains(&Drift::ManagedFileEdited), "{:?}", plan.drift);
    assert_eq!(std::fs::read_to_string(&r.managed).expect("read"), rendered, "healed");

    // With self-heal off it is reported and left alone.
    let mut r = r;
    r.rec.self_heal = false;
    std::fs::write(&r.managed, &edited).expect("hand edit");
    let reloads = r.standin.control().reloads();
    let run = r.run().await;
    assert_eq!(run.record.outcome, Outcome::DriftReported);
    assert_eq!(std::fs::read_to_string(&r.managed).expect("read"), edited);
    assert_eq!(r.standin.control().reloads(), reloads);
}

#[tokio::test]
async fn drift_in_asterisk_is_reported_and_healed_by_a_reload() {
    let r = rig().await;
    r.write("team.yaml", &team(&[("1001", "Ann"), ("1002", "Bob")]));
    r.run().await;
    // Asterisk lost the endpoints (restarted without the include, say): the file is
    // right, Asterisk is not. The next run reloads to repair it.
    let managed = std::fs::read_to_string(&r.managed).expect("read");
    std::fs::write(&r.managed, "").expect("empty");
    r.rec.asterisk.as_ref().expect("configured").reload().await.expect("reload");
    std::fs::write(&r.managed, &managed).expect("restore file");
    assert!(r.loaded().is_empty());
    let run = r.run().await;
    assert_eq!(outcome(&run), (Outcome::Applied, None));
    let plan = run.record.plan.expect("plan");
    assert!(plan.drift.contains(&Drift::MissingFromAsterisk { extension: "1001".into() }), "{:?}", plan.drift);
    assert!(!plan.file_changed && run.record.reloaded);
    assert_eq!(r.loaded(), ["1001", "1002"]);
}

#[tokio::test]
async fn emptying_the_spec_directory_is_stopped_by_the_prune_guard() {
    let r = rig().await;
    r.write("team.yaml", &team(&[("1001", "A"), ("1002", "B"), ("1003", "C"), ("1004", "D")]));
    r.run().await;
    let before = std::fs::read_to_string(&r.managed).expect("read");
    std::fs::remove_file(r.spec.join("team.yaml")).expect("rm");
    let run = r.run().await;
    assert_eq!(run.record.outcome, Outcome::Blocked);
    assert!(
        run.record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("would delete 4 of 4") && e.contains("--allow-mass-delete")),
        "{:?}",
        run.record.error
    );
    assert_eq!(std::fs::read_to_string(&r.managed).expect("read"), before);
    assert_eq!(r.rec.store.extensions().await.expect("list").len(), 4, "nothing deleted");
    assert_eq!(r.loaded().len(), 4);

    // One deletion out of four is 25%: allowed.
    r.write("team.yaml", &team(&[("1001", "A"), ("1002", "B"), ("1003", "C")]));
    assert_eq!(r.run().await.record.outcome, Outcome::Applied);
    // An explicit override lets the mass delete through.
    let mut r = r;
    std::fs::remove_file(r.spec.join("team.yaml")).expect("rm");
    r.rec.prune.allow_mass_delete = true;
    assert_eq!(r.run().await.record.outcome, Outcome::Applied);
    assert!(r.loaded().is_empty());
}

#[tokio::test]
async fn with_asterisk_down_runs_fail_softly_and_converge_when_it_returns() {
    let r = rig().await;
    r.write("team.yaml", &team(&[("1001", "Ann")]));
    r.standin.stop();
    let run = r.run().await;
    assert_eq!(run.record.outcome, Outcome::Failed);
    assert!(run.record.error.as_deref().is_some_and(|e| e.contains("unreachable")), "{:?}", run.record.error);
    assert!(!r.managed.exists(), "nothing written while Asterisk cannot confirm it");

    // The daemon loop retries with back-off and converges once Asterisk is back.
    let Rig { dir, spec, managed: _managed, standin, rec } = r;
    let rec = Arc::new(rec);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let handle = LoopHandle { triggers: tx, last: Default::default(), failures: Default::default() };
    let cfg = LoopConfig {
        interval: Duration::from_secs(60),
        debounce: Duration::from_millis(10),
        backoff: BackoffConfig::new(Duration::from_millis(100), Duration::from_millis(400)),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(reconcile::run_loop(
        rec.clone(),
        DesiredSource::Dir(std::sync::Arc::new(reconcile::DirSource::new(spec))),
        cfg,
        handle.clone(),
        rx,
        async {
            let _ = stop_rx.await;
        },
    ));
    // Two failed runs in a row: the first, and a retry after the back-off.
    wait("the loop to fail twice while Asterisk is down", || {
        let handle = handle.clone();
        async move { handle.failures.load(std::sync::atomic::Ordering::SeqCst) >= 2 }
    })
    .await;
    standin.restart().await.expect("back");
    wait("the loop to converge without a restart", || {
        let handle = handle.clone();
        async move { handle.last.read().await.as_ref().is_some_and(|r| r.record.outcome == Outcome::Applied) }
    })
    .await;
    let _ = stop_tx.send(());
    task.await.expect("loop ends on shutdown");
    assert_eq!(standin.control().endpoints(), ["1001"]);
    drop(dir);
}

#[test]
fn killed_mid_apply_the_next_start_converges_and_no_half_written_file_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("extensions.d");
    asterisk_gitops::estate::write(&spec, 30_000).expect("estate");
    let bin = env!("CARGO_BIN_EXE_asterisk-gitops");
    let cmd = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin);
        c.current_dir(dir.path())
            .args(["--spec-dir", "extensions.d", "--state-dir", "state"])
            .args(extra)
            .env_remove("DATABASE_URL");
        c
    };
    let managed = dir.path().join("state/pjsip_gitops.conf");
    // Kill the apply at growing delays until one kill lands mid-run (after the
    // file is written, before the database commit, or inside either).
    for delay_ms in [50u64, 150, 300, 600] {
        let mut child = cmd(&["apply", "--yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        if let Ok(text) = std::fs::read_to_string(&managed) {
            assert!(
                text.starts_with("; Managed by asterisk-gitops") && text.ends_with("max_contacts = 1\n")
                    || text.ends_with("max_contacts = 2\n"),
                "a managed file is whole or absent"
            );
            assert!(asterisk_gitops::core::render::check_structure(&text).is_ok());
        }
    }
    // The next start converges.
    let out = cmd(&["apply", "--yes"]).output().expect("apply");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan = cmd(&["plan", "--detailed-exitcode"]).output().expect("plan");
    assert_eq!(plan.status.code(), Some(0), "nothing left to do: {}", String::from_utf8_lossy(&plan.stdout));
    let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("state"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "temporaries cleaned: {leftovers:?}");
    let text = std::fs::read_to_string(&managed).expect("written");
    assert_eq!(text.matches("type = endpoint").count(), 30_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_saves_makes_one_run_once_the_directory_is_quiet() {
    let r = rig().await;
    r.write("team.yaml", &team(&[("1001", "Ann")]));
    let Rig { dir: _dir, spec, managed: _managed, standin, rec } = r;
    let rec = Arc::new(rec);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let _watcher = reconcile::watch(&spec, tx.clone()).expect("watch");
    let handle = LoopHandle { triggers: tx, last: Default::default(), failures: Default::default() };
    let cfg =
        LoopConfig { interval: Duration::from_secs(60), debounce: Duration::from_millis(800), ..Default::default() };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(reconcile::run_loop(
        rec.clone(),
        DesiredSource::Dir(Arc::new(reconcile::DirSource::new(spec.clone()))),
        cfg,
        handle.clone(),
        rx,
        async {
            let _ = stop_rx.await;
        },
    ));
    let c = standin.control();
    wait("the startup run", || {
        let (c, handle) = (c.clone(), handle.clone());
        async move { c.endpoints() == ["1001"] && handle.last.read().await.is_some() }
    })
    .await;
    let reloads = c.reloads();
    // Eight saves 40 ms apart: never quiet for the debounce (800 ms, ample
    // room for a loaded machine to be slow between two saves) until the last.
    let names = ["Ann", "Bob", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ida"];
    let numbers = ["1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009"];
    for n in 2..=9 {
        let entries: Vec<(&str, &str)> = numbers[..n].iter().copied().zip(names[..n].iter().copied()).collect();
        std::fs::write(spec.join("team.yaml"), team(&entries)).expect("write");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // The run that applied the burst's end state has finished (it is the
    // loop's last report): every reload the burst caused has happened.
    wait("the run that applies the burst's end state", || {
        let (c, handle) = (c.clone(), handle.clone());
        async move {
            c.endpoints().len() == 9
                && handle.last.read().await.as_ref().is_some_and(|r| {
                    r.record.outcome == Outcome::Applied
                        && r.record.plan.as_ref().is_some_and(|p| p.changes.iter().any(|ch| ch.extension == "1009"))
                })
        }
    })
    .await;
    let creates =
        handle.last.read().await.as_ref().and_then(|r| r.record.plan.as_ref().map(|p| p.count(Action::Create)));
    let _ = stop_tx.send(());
    task.await.expect("loop ends");
    assert_eq!(c.reloads(), reloads + 1, "one run, one reload for the whole burst");
    assert_eq!(creates, Some(8), "that one run created all eight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_write_runs_at_once_not_after_the_watchers_quiet_period() {
    // The API edits a spec file (the watcher sees it) and then asks for a
    // run (Manual): that run must not wait for the directory to be quiet.
    // With an hour's debounce, only the Manual trigger can start it.
    let r = rig().await;
    r.write("team.yaml", &team(&[("1001", "Ann")]));
    let Rig { dir: _dir, spec, managed: _managed, standin, rec } = r;
    let rec = Arc::new(rec);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let _watcher = reconcile::watch(&spec, tx.clone()).expect("watch");
    let handle = LoopHandle { triggers: tx, last: Default::default(), failures: Default::default() };
    let cfg =
        LoopConfig { interval: Duration::from_secs(3600), debounce: Duration::from_secs(3600), ..Default::default() };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(reconcile::run_loop(
        rec.clone(),
        DesiredSource::Dir(Arc::new(reconcile::DirSource::new(spec.clone()))),
        cfg,
        handle.clone(),
        rx,
        async {
            let _ = stop_rx.await;
        },
    ));
    let c = standin.control();
    wait("the startup run", || {
        let (c, handle) = (c.clone(), handle.clone());
        async move { c.endpoints() == ["1001"] && handle.last.read().await.is_some() }
    })
    .await;
    // The edit, as the API's write-back makes it, then the watcher's event
    // (sent here too, so it is queued before the API's ask whatever the
    // watcher's latency), then the API's ask for a run.
    std::fs::write(spec.join("team.yaml"), team(&[("1001", "Ann"), ("1002", "Bob")])).expect("write");
    handle.trigger(Trigger::FileChange);
    handle.trigger(Trigger::Manual);
    wait("the API write's run", || {
        let handle = handle.clone();
        async move {
            handle.last.read().await.as_ref().is_some_and(|r| {
                r.record.trigger == Trigger::Manual
                    && r.record.plan.as_ref().is_some_and(|p| p.changes.iter().any(|ch| ch.extension == "1002"))
            })
        }
    })
    .await;
    assert_eq!(c.endpoints(), ["1001", "1002"]);
    let _ = stop_tx.send(());
    task.await.expect("loop ends");
}

/// A managed file from somewhere else: as many sections as the estate, none of the same name.
fn foreign_managed_file(n: usize) -> String {
    let mut out = String::from("; another host's managed file\n");
    for i in 0..n {
        out.push_str(&format!(
            "\n[foreign-{i}]\ntype = endpoint\ncontext = default\nauth = foreign-{i}\n\n[foreign-{i}]\ntype = auth\nauth_type = userpass\nusername = foreign-{i}\npassword = foreign-secret-{i}\n"
        ));
    }
    out
}

/// Before the diff was bounded, a plan against a foreign managed file took
/// the square of the estate (over a minute at 10k). This asserts that it
/// completes and still says what matters, not how fast (the diff benchmark
/// measures that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_or_truncated_managed_file_at_20k_is_planned_as_drift() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("extensions.d");
    asterisk_gitops::estate::write(&spec, 20_000).expect("estate");
    let managed = dir.path().join("pjsip_gitops.conf");
    let url = format!("sqlite://{}/db.sqlite", dir.path().display());
    let rec: Reconciler<Db, Asterisk> = Reconciler {
        store: Db::connect(&url, &Retry::default()).await.expect("db"),
        asterisk: None,
        managed: Box::new(ManagedFile::new(&managed)),
        renderer: Arc::new(Renderer::new(None).expect("template")),
        secrets: Arc::new(ProcessSecrets),
        realm: "asterisk".into(),
        prune: PruneGuard { max_share: 0.3, max_count: None, allow_mass_delete: false },
        self_heal: true,
        live: None,
        settled: Default::default(),
        beside: None,
    };
    let first = rec.run(Trigger::Cli, reconcile::load_dir(&spec)).await;
    assert_eq!(outcome(&first), (Outcome::Applied, None));
    let rendered = std::fs::read_to_string(&managed).expect("managed file");

    std::fs::write(&managed, foreign_managed_file(20_000)).expect("overwrite");
    let (plan, _) = rec.plan(&reconcile::load_dir(&spec)).await.expect("plan");
    assert!(plan.file_changed && plan.changes.is_empty());
    assert!(plan.drift.contains(&Drift::ManagedFileEdited), "{:?}", plan.drift);
    assert!(plan.diff.contains("@@ replaced: ") && plan.diff.contains("[100000]"), "{}", &plan.diff[..400]);
    assert!(!plan.diff.contains("foreign-secret"), "secrets stay masked");

    let cut = rendered.find("username = 110000").expect("present") + 5;
    std::fs::write(&managed, &rendered[..cut]).expect("truncate");
    let (plan, _) = rec.plan(&reconcile::load_dir(&spec)).await.expect("plan");
    assert!(plan.file_changed && plan.drift.contains(&Drift::ManagedFileEdited), "{:?}", plan.drift);
    assert!(plan.diff.contains("+username = 110000\n"), "{}", &plan.diff[..400]);
    assert!(!plan.diff.contains("Pw-"), "secrets stay masked");

    // Self-heal writes the rendered file back.
    let healed = rec.run(Trigger::Manual, reconcile::load_dir(&spec)).await;
    assert_eq!(outcome(&healed).1, None);
    assert_eq!(std::fs::read_to_string(&managed).expect("managed file"), rendered);
}

/// A spec that names a secret from outside where the operator allows is
/// refused: the run is invalid, nothing is rendered, Asterisk is not touched.
#[tokio::test]
async fn a_secret_from_outside_the_secrets_directory_or_the_daemons_env_is_refused_and_nothing_is_rendered() {
    let r = rig().await;
    std::fs::create_dir_all(r.spec.join("secrets")).expect("mkdir");
    let outside = r.dir.path().join("outside.txt");
    std::fs::write(&outside, "host-secret-value\n").expect("write");
    std::os::unix::fs::symlink(&outside, r.spec.join("secrets/link.pw")).expect("symlink");
    let spec = |secret: &str| format!("{}  - extension: \"1009\"\n    {secret}\n", team(&[("1001", "Ann")]));
    for (secret, field) in [
        (format!("passwordFile: {}", outside.display()), "passwordFile"),
        ("passwordFile: ../../outside.txt".to_string(), "passwordFile"),
        ("passwordFile: link.pw".to_string(), "passwordFile"),
        ("passwordEnv: ASTERISK_GITOPS_ADMIN_TOKEN".to_string(), "passwordEnv"),
    ] {
        r.write("team.yaml", &spec(&secret));
        let run = r.run().await;
        assert_eq!(run.record.outcome, Outcome::Invalid, "{secret}: {:?}", run.record.error);
        let d = run.record.diagnostics.iter().find(|d| d.code == "secret-not-allowed").expect("refused");
        assert_eq!((d.location.file.as_str(), d.location.line), ("team.yaml", 7), "{secret}");
        assert_eq!(d.field, format!("extensions[1].{field}"), "{secret}");
        assert!(!r.managed.exists(), "{secret}: nothing rendered");
        assert!(r.loaded().is_empty() && r.standin.control().reloads() == 0, "{secret}: Asterisk untouched");
    }
}

/// `plan` (text and Markdown) shows what each created extension's profile
/// expands to, and a profile switch after `apply` as an update with it.
#[test]
fn the_plan_command_shows_what_each_profile_expands_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("extensions.d");
    std::fs::create_dir_all(&spec).expect("mkdir");
    let team = |second: &str| {
        format!(
            "defaults: {{context: from-internal, transport: transport-udp, codecs: [ulaw]}}\nextensions:\n  - {{extension: \"1001\", md5Cred: 0123456789abcdef0123456789abcdef}}\n  - {{extension: \"1002\", md5Cred: 0123456789abcdef0123456789abcdef{second}}}\n"
        )
    };
    std::fs::write(spec.join("team.yaml"), team(", profile: webrtc, transport: transport-wss")).expect("write");
    let bin = env!("CARGO_BIN_EXE_asterisk-gitops");
    let cmd = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin);
        c.current_dir(dir.path())
            .args(["--spec-dir", "extensions.d", "--state-dir", "state"])
            .args(extra)
            .env_remove("DATABASE_URL");
        c
    };
    let out = cmd(&["plan"]).output().expect("plan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("+ 1001 (create)")
            && text.contains(
                "    profile nat: rewrite_contact=yes, rtp_symmetric=yes, force_rport=yes, direct_media=no\n"
            ),
        "{text}"
    );
    assert!(
        text.contains("    profile webrtc: webrtc=yes (Asterisk then sets use_avpf=yes, media_encryption=dtls"),
        "{text}"
    );
    let out = cmd(&["plan", "--format", "markdown"]).output().expect("plan");
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("`profile webrtc: webrtc=yes"), "{md}");

    let out = cmd(&["apply", "--yes"]).output().expect("apply");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(spec.join("team.yaml"), team(", profile: lan")).expect("write");
    let out = cmd(&["plan"]).output().expect("plan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("~ 1002 (update)\n"), "{text}");
    assert!(text.contains("    profile: \"webrtc\" → \"lan\"\n"), "{text}");
    assert!(text.contains("    transport: \"transport-wss\" → \"transport-udp\"\n"), "{text}");
    assert!(text.contains("    profile lan: writes nothing, Asterisk's defaults hold"), "{text}");
    assert!(!text.contains("1001"), "1001 is unchanged: {text}");
}
