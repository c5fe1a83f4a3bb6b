//! `apply.target: ari` on a real Asterisk started with the astdb sorcery
//! wizard first (examples/asterisk/sorcery.conf.snippet): every change is
//! pushed through ARI's dynamic configuration and live with no reload; a
//! value Asterisk refuses fails only its extension; pushed objects survive
//! an Asterisk restart.

use super::{Daemon, SEED_BODY, Source, Store, codecs, contacts, endpoint, reloads, wait};
use asterisk_gitops::asterisk::ari::{Ari, AriConfig};
use asterisk_gitops::config::{ApplyFileConfig, FileConfig, SecretString};
use asterisk_real::{ARI_USER, Asterisk, Options, require, sipp};
use serde_json::Value;
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);
const MD5: &str = "0123456789abcdef0123456789abcdef";

fn ari_target(f: &mut FileConfig) {
    f.apply = Some(ApplyFileConfig { target: Some("ari".into()), ..Default::default() });
}

async fn live_asterisk(build: &asterisk_real::Build, name: &str) -> Asterisk {
    let opts = Options::live(name).expect("examples/asterisk/sorcery.conf.snippet");
    Asterisk::start(build, opts).await.unwrap_or_else(|e| panic!("Asterisk starts: {e}"))
}

/// Asterisk's own last reload time (ARI's `/asterisk/info`, absolute),
/// and how many times its log says res_pjsip was reloaded: both unchanged
/// means no reload.
async fn reload_marks(ast: &Asterisk) -> (String, usize) {
    let ari = Ari::new(AriConfig {
        url: ast.ari_url(),
        user: ARI_USER.into(),
        password: SecretString::new(&ast.ari_password),
        app: "callcenter".into(),
        timeout: Duration::from_secs(5),
    })
    .expect("an ARI client");
    let info = ari.info().await.expect("ARI answers /asterisk/info");
    (info.status.last_reload_time, reloads(ast))
}

/// What Asterisk's astdb holds under the daemon's family.
async fn astdb(ast: &Asterisk) -> String {
    ast.cli("database show asterisk-gitops").await
}

async fn run_after(d: &Daemon, after: i64, outcome: &str, what: &str) -> Value {
    d.run_where(what, |r| r["id"].as_i64().is_some_and(|id| id > after) && r["outcome"] == outcome).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_flow_with_the_ari_target_is_live_with_no_reload_and_survives_a_restart() {
    let Some(build) = require("real::live::the_seeds_flow_with_the_ari_target") else { return };
    let mut ast = live_asterisk(&build, "live-seed").await;
    let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, "", ari_target).await;
    let marks = reload_marks(&ast).await;

    // POST the seed's body: live, pushed into the astdb wizard, not through a file.
    let before = d.last_run_id().await;
    let (status, body) = d.call("POST", "/extensions", Some(SEED_BODY)).await;
    assert_eq!(status, 201, "{body}");
    wait("1001 live in Asterisk", LIVE, || async { endpoint(&ast, "1001").await.is_some() }).await;
    wait("1001 synced", LIVE, || async { d.get("/extensions/1001").await.1["syncStatus"] == "synced" }).await;
    let run = run_after(&d, before, "applied", "the run creating 1001").await;
    assert_eq!(run["reloaded"], false, "{run:#}");
    assert!(run["reasons"].to_string().contains("pushed through ARI (no reload): 1 extension(s) live"), "{run:#}");
    assert_eq!(codecs(&ast, "1001").await.as_deref(), Some("(ulaw|alaw|g729)"));
    let text = endpoint(&ast, "1001").await.unwrap_or_default();
    assert!(text.contains("\"Test User\" <1001>"), "callerid as Asterisk holds it:\n{text}");
    let db = astdb(&ast).await;
    for kind in ["endpoint", "auth", "aor"] {
        assert!(db.contains(&format!("/asterisk-gitops/{kind}/1001")), "{kind} 1001 is in the astdb family:\n{db}");
    }
    let managed = std::fs::read_to_string(ast.managed_file()).expect("the managed file");
    assert!(!managed.contains("[1001]"), "the ari target writes no file Asterisk reads:\n{managed}");

    // A phone registers with the seed's password (md5Cred in the YAML).
    let phone = sipp::Phone::new("1001", "Soundz2025");
    let reg = phone.register(ast.sip_addr()).await;
    assert!(reg.ok(), "sipp could not register:\n{}", reg.log);
    assert!(!sipp::Phone::new("1001", "not-the-password").register(ast.sip_addr()).await.ok(), "a wrong password");
    let uri = format!("sip:1001@127.0.0.1:{}", phone.port);

    // PUT codecs: live, the registration kept.
    let before = d.last_run_id().await;
    let (status, body) = d.call("PUT", "/extensions/1001", Some(r#"{"codecs":"ulaw"}"#)).await;
    assert_eq!(status, 200, "{body}");
    wait("codecs ulaw live", LIVE, || async { codecs(&ast, "1001").await.as_deref() == Some("(ulaw)") }).await;
    run_after(&d, before, "applied", "the run updating 1001").await;
    assert_eq!(contacts(&ast, "1001").await, std::slice::from_ref(&uri), "the registration was kept");

    assert_eq!(reload_marks(&ast).await, marks, "Asterisk was reloaded by a create or an update");

    // Asterisk restarted: every pushed object comes back from astdb, and the
    // next run finds Asterisk holding what was applied.
    ast.stop().await;
    ast.start_again().await.expect("Asterisk starts again");
    assert_eq!(codecs(&ast, "1001").await.as_deref(), Some("(ulaw)"), "1001 came back from astdb as pushed");
    let reg = phone.register(ast.sip_addr()).await;
    assert!(reg.ok(), "sipp registers after the restart:\n{}", reg.log);
    let marks_after_restart = reload_marks(&ast).await;
    let before = d.last_run_id().await;
    assert_eq!(d.call("POST", "/reconcile", None).await.0, 202);
    let run = run_after(&d, before, "noop", "the run after the restart").await;
    assert!(
        run["reasons"].to_string().contains("Asterisk holds what was applied"),
        "the run after the restart compared Asterisk with what was applied: {run:#}"
    );

    // DELETE: gone from Asterisk and astdb; the phone can no longer register.
    let (status, body) = d.call("DELETE", "/extensions/1001", None).await;
    assert!(status == 200 || status == 204, "{status} {body}");
    wait("1001 gone from Asterisk", LIVE, || async { endpoint(&ast, "1001").await.is_none() }).await;
    wait("1001 gone from the API", LIVE, || async { d.get("/extensions/1001").await.0 == 404 }).await;
    assert!(!astdb(&ast).await.contains("/1001"), "1001's objects are gone from astdb");
    assert!(!phone.register(ast.sip_addr()).await.ok(), "a deleted extension still registers");

    // Not one reload through all of it (a restart resets Asterisk's own reload time).
    assert_eq!(reload_marks(&ast).await, marks_after_restart, "Asterisk was reloaded after the restart");
    assert_eq!(marks.1, 0, "Asterisk was reloaded before the restart: {marks:?}");
    let seen = d.seen.lock().expect("lock").join("\n");
    assert!(!seen.contains("Soundz2025"), "a response carried the password");
    d.stop().await;
}

fn team(entries: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw, alaw]}\nextensions:\n",
    );
    for (n, name) in entries {
        s.push_str(&format!("  - extension: \"{n}\"\n    displayName: {name}\n    md5Cred: {MD5}\n"));
    }
    s
}

/// The project's template with a codec Asterisk does not have for 1003 and
/// for any extension whose name says "Refused": an operator's template
/// emitting what Asterisk refuses for some extensions.
fn refusing_template() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = crate::support::repo_root().join("templates/pjsip_gitops.conf.j2");
    let base = std::fs::read_to_string(path).expect("the template");
    let extra = "{% if e.extension == \"1003\" or \"Refused\" in e.callerid %}allow = nosuchcodec\n{% endif %}";
    let changed = base.replacen("type = endpoint\n", &format!("type = endpoint\n{extra}"), 1);
    assert_ne!(base, changed, "the template's endpoint section moved: update this test");
    std::fs::write(dir.path().join("pjsip_gitops.conf.j2"), changed).expect("write template");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_asterisk_refuses_fails_only_that_extension_with_asterisks_reason() {
    let Some(build) = require("real::live::a_value_asterisk_refuses") else { return };
    let ast = live_asterisk(&build, "live-refused").await;
    let tpl = refusing_template();
    let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, &team(&[("1001", "One")]), |f| {
        ari_target(f);
        f.templates = Some(tpl.path().to_path_buf());
    })
    .await;
    wait("1001 live", LIVE, || async { endpoint(&ast, "1001").await.is_some() }).await;

    // A new extension Asterisk refuses, beside one it takes.
    let before = d.last_run_id().await;
    std::fs::write(d.specs.join("team.yaml"), team(&[("1001", "One"), ("1002", "Two"), ("1003", "Three")]))
        .expect("write");
    let run = run_after(&d, before, "degraded", "the run adding 1002 and 1003").await;
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("1 of 2 extension(s) refused"), "{run:#}");
    wait("1002 live", LIVE, || async { endpoint(&ast, "1002").await.is_some() }).await;
    assert!(endpoint(&ast, "1003").await.is_none(), "the refused endpoint is not in Asterisk");
    let auths = ast.cli("pjsip show auths").await;
    assert!(!auths.contains("1003"), "the refused extension left no auth behind:\n{auths}");
    let (_, e1003) = d.get("/extensions/1003").await;
    assert_eq!(e1003["syncStatus"], "failed", "{e1003}");
    let why = e1003["lastError"].as_str().unwrap_or_default();
    assert!(why.contains("Creation of object '1003' failed field value validation"), "Asterisk's message: {why}");
    assert!(why.contains("the field it refuses: allow = nosuchcodec"), "the field: {why}");
    assert_eq!(d.get("/extensions/1002").await.1["syncStatus"], "synced");
    let (_, status) = d.get("/status").await;
    assert!(status.to_string().contains("Degraded"), "the Ready condition says degraded: {status}");

    // An existing extension's refused update keeps what Asterisk held.
    let before = d.last_run_id().await;
    std::fs::write(d.specs.join("team.yaml"), team(&[("1001", "Refused One"), ("1002", "Two Again")])).expect("write");
    let run = run_after(&d, before, "degraded", "the run renaming 1001 and 1002").await;
    assert!(run["error"].as_str().unwrap_or_default().contains("1001"), "{run:#}");
    wait("1002 renamed", LIVE, || async {
        endpoint(&ast, "1002").await.is_some_and(|t| t.contains("\"Two Again\" <1002>"))
    })
    .await;
    let held = endpoint(&ast, "1001").await.unwrap_or_default();
    assert!(held.contains("\"One\" <1001>") && held.contains("(ulaw|alaw)"), "1001 is as before:\n{held}");
    assert_eq!(d.get("/extensions/1001").await.1["syncStatus"], "failed");

    // Fixed: the next run applies it.
    let before = d.last_run_id().await;
    std::fs::write(d.specs.join("team.yaml"), team(&[("1001", "One Fixed"), ("1002", "Two Again")])).expect("write");
    run_after(&d, before, "applied", "the run fixing 1001").await;
    assert!(endpoint(&ast, "1001").await.unwrap_or_default().contains("\"One Fixed\" <1001>"));
    assert_eq!(reloads(&ast), 0, "Asterisk was never reloaded");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_changed_or_added_in_the_astdb_family_are_healed_and_file_objects_are_never_touched() {
    let Some(build) = require("real::live::astdb_drift") else { return };
    let mut opts = Options::live("live-drift").expect("sorcery snippet");
    // An endpoint from pjsip.conf: the config wizard's, never ours.
    opts.pjsip_extra = "[7000]\ntype = endpoint\ncontext = from-internal\nallow = ulaw\n".into();
    let ast = Asterisk::start(&build, opts).await.expect("Asterisk starts");
    let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, &team(&[("1001", "One")]), ari_target).await;
    wait("1001 synced", LIVE, || async { d.get("/extensions/1001").await.1["syncStatus"] == "synced" }).await;
    // One run with nothing to change: the first drift check after a start
    // reads objects back but does not list the astdb family yet.
    let before = d.last_run_id().await;
    assert_eq!(d.call("POST", "/reconcile", None).await.0, 202);
    run_after(&d, before, "noop", "the first run with nothing to change").await;

    // Behind the daemon's back, through ARI: 1001's caller id changed, and
    // an endpoint no spec declares pushed into the daemon's astdb family.
    let ari = Ari::new(AriConfig {
        url: ast.ari_url(),
        user: ARI_USER.into(),
        password: SecretString::new(&ast.ari_password),
        app: "callcenter".into(),
        timeout: Duration::from_secs(5),
    })
    .expect("an ARI client");
    let set = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    ari.put_object("endpoint", "1001", &set("callerid", "\"Changed\" <1001>")).await.expect("PUT 1001");
    ari.put_object("endpoint", "9999", &set("context", "from-internal")).await.expect("PUT 9999");
    assert!(astdb(&ast).await.contains("/asterisk-gitops/endpoint/9999"));

    let before = d.last_run_id().await;
    assert_eq!(d.call("POST", "/reconcile", None).await.0, 202);
    let run = d
        .run_where("the run repairing the drift", |r| {
            r["id"].as_i64().is_some_and(|id| id > before) && r["outcome"] == "applied"
        })
        .await;
    let drift = run["plan"]["drift"].to_string();
    assert!(drift.contains("orphaned") && drift.contains("9999"), "the orphan is reported: {run:#}");
    assert!(drift.contains("objectDiffers") && drift.contains("Changed"), "the changed object is reported: {run:#}");
    assert!(endpoint(&ast, "9999").await.is_none(), "the orphan was deleted");
    let held = endpoint(&ast, "1001").await.unwrap_or_default();
    assert!(held.contains("\"One\" <1001>"), "1001 is as pushed again:\n{held}");
    assert!(endpoint(&ast, "7000").await.is_some(), "the file's endpoint is untouched");
    assert!(!drift.contains("\"7000\"") || drift.contains("unmanaged"), "7000 is only reported as unmanaged: {drift}");
    assert_eq!(reloads(&ast), 0, "no reload");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_between_two_pushes_converges_on_the_next_start() {
    let Some(build) = require("real::live::killed_between_pushes") else { return };
    let ast = live_asterisk(&build, "live-killed").await;
    const N: usize = 2000;
    let dir = tempfile::tempdir().expect("tempdir");
    asterisk_gitops::estate::write(&dir.path().join("extensions.d"), N).expect("estate");
    let bin = env!("CARGO_BIN_EXE_asterisk-gitops");
    let cmd = |args: &[&str]| {
        let mut c = tokio::process::Command::new(bin);
        c.current_dir(dir.path())
            .args(["--spec-dir", "extensions.d", "--state-dir", "state", "--apply-target", "ari"])
            .args(["--ami-addr", &ast.ami_addr().to_string(), "--ami-user", asterisk_real::AMI_USER])
            .args(["--ari-url", &ast.ari_url(), "--ari-user", ARI_USER])
            .env("ASTERISK_GITOPS_AMI_SECRET", &ast.ami_secret)
            .env("ASTERISK_GITOPS_ARI_PASSWORD", &ast.ari_password)
            .env_remove("DATABASE_URL")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        c
    };
    let pushed = || async { astdb(&ast).await.lines().filter(|l| l.starts_with("/asterisk-gitops/")).count() };
    // Killed once Asterisk holds some of the estate's objects, not all.
    // (stdout unread: the plan it prints would fill the pipe and stop it)
    let mut child = cmd(&["apply", "--yes"]).stdout(std::process::Stdio::null()).spawn().expect("spawn apply");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while pushed().await == 0 {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().await.expect("output");
            panic!("apply ended ({status}) before it pushed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            let out = child.wait_with_output().await.expect("output");
            panic!("nothing pushed within 120 s:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let held = pushed().await;
    assert!(held > 0 && held < 3 * N, "killed between two pushes: Asterisk holds {held} of {} objects", 3 * N);
    assert!(!dir.path().join("state/ari-pushed.conf").exists(), "no record of a run that did not finish");

    // The next start pushes the rest (and again what it had pushed: PUT is idempotent).
    let out = cmd(&["apply", "--yes"]).output().await.expect("apply");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(pushed().await, 3 * N, "every object of the estate is in astdb");
    let plan = cmd(&["plan", "--detailed-exitcode"]).output().await.expect("plan");
    assert_eq!(plan.status.code(), Some(0), "nothing left to do: {}", String::from_utf8_lossy(&plan.stdout));
    let last = 100_000 + N - 1;
    let text = endpoint(&ast, &last.to_string()).await;
    assert!(text.is_some(), "the last extension is live");
    assert_eq!(reloads(&ast), 0, "no reload");
}
