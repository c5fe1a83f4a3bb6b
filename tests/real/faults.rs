//! Faults on a real Asterisk: definitions it refuses (on a new and on an
//! existing extension), Asterisk restarted in the middle of a run, killed
//! and back, and AMI and ARI refusing the daemon's credentials.

use super::{Daemon, SEED_BODY, Source, Store, asterisk, contacts, endpoint, wait};
use asterisk_gitops::config::{AmiFileConfig, AriFileConfig, FileConfig, SecretString};
use asterisk_real::{require, sipp};
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);
const MD5: &str = "0123456789abcdef0123456789abcdef";

fn team(entries: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw, alaw]}\nextensions:\n",
    );
    for (n, name) in entries {
        s.push_str(&format!("  - extension: \"{n}\"\n    displayName: {name}\n    md5Cred: {MD5}\n"));
    }
    s
}

/// The project's template with `extra` inserted after the endpoint's
/// `type = endpoint` line: an operator's template that emits what Asterisk
/// refuses for some extensions.
fn template_with(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = crate::support::repo_root().join("templates/pjsip_gitops.conf.j2");
    let base = std::fs::read_to_string(path).expect("the template");
    let changed = base.replacen("type = endpoint\n", &format!("type = endpoint\n{extra}"), 1);
    assert_ne!(base, changed, "the template's endpoint section moved: update this test");
    std::fs::write(dir.path().join("pjsip_gitops.conf.j2"), changed).expect("write template");
    dir
}

fn with_templates(dir: &tempfile::TempDir) -> impl FnOnce(&mut FileConfig) + '_ {
    move |f: &mut FileConfig| f.templates = Some(dir.path().to_path_buf())
}

async fn failed_run_after(d: &Daemon, after: i64, what: &str) -> serde_json::Value {
    d.run_where(what, |r| r["id"].as_i64().is_some_and(|id| id > after) && r["outcome"] == "failed").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_option_asterisk_refuses_on_a_new_extension_fails_the_run_and_rolls_back() {
    let Some(build) = require("real::faults::refused_on_a_new_extension") else { return };
    let ast = asterisk(&build, "refused-new").await;
    // A codec Asterisk does not have (an unknown option *name* is refused
    // before anything is written: see the catalogue test).
    let tpl = template_with("{% if e.extension == \"1003\" %}allow = nosuchcodec\n{% endif %}");
    let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, &team(&[("1001", "One")]), with_templates(&tpl)).await;
    wait("1001 live", LIVE, || async { endpoint(&ast, "1001").await.is_some() }).await;
    let before = d.last_run_id().await;
    let log_from = ast.log().len();

    std::fs::write(d.specs.join("team.yaml"), team(&[("1001", "One"), ("1003", "Three")])).expect("write");
    let run = failed_run_after(&d, before, "the run adding 1003 fails").await;
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("1003"), "the failure names the extension: {run:#}");
    // Asterisk said why, in its own log.
    ast.wait_log(log_from, "nosuchcodec", LIVE).await;
    // Rolled back: the file on disk is the previous one, 1001 untouched.
    let on_disk = std::fs::read_to_string(ast.managed_file()).expect("managed file");
    assert!(!on_disk.contains("[1003]"), "the refused file stayed on disk:\n{on_disk}");
    assert!(endpoint(&ast, "1001").await.is_some());
    // Never reported as applied: listed as failed, with the run and the reason.
    let (status, failed) = d.get("/extensions/1003").await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["syncStatus"], "failed", "{failed:#}");
    assert_eq!(failed["appliedAt"], serde_json::Value::Null, "{failed:#}");
    assert_eq!(failed["syncRunId"], run["id"], "{failed:#}");
    assert!(failed["lastError"].as_str().is_some_and(|e| e.contains("1003")), "{failed:#}");
    assert_eq!(d.get("/extensions/1001").await.1["syncStatus"], "synced");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_asterisk_refuses_on_an_existing_extension_is_not_reported_applied() {
    // Fact 13: Asterisk keeps the old definition of an existing object whose
    // new one it refuses, and still answers "Module Reloaded".
    let Some(build) = require("real::faults::refused_on_an_existing_extension") else { return };
    for (label, extra) in [
        ("value", "{% if e.callerid and \"Renamed\" in e.callerid %}dtmf_mode = nosuchmode\n{% endif %}"),
        ("codec", "{% if e.callerid and \"Renamed\" in e.callerid %}allow = nosuchcodec\n{% endif %}"),
    ] {
        let ast = asterisk(&build, &format!("refused-existing-{label}")).await;
        let tpl = template_with(extra);
        let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, "", with_templates(&tpl)).await;
        assert_eq!(d.call("POST", "/extensions", Some(SEED_BODY)).await.0, 201);
        wait("1001 synced", LIVE, || async { d.get("/extensions/1001").await.1["syncStatus"] == "synced" }).await;
        let phone = sipp::Phone::new("1001", "Soundz2025");
        assert!(phone.register(ast.sip_addr()).await.ok(), "{label}: registers");
        let before = d.last_run_id().await;
        let log_from = ast.log().len();

        let (status, body) = d.call("PUT", "/extensions/1001", Some(r#"{"displayName":"Renamed"}"#)).await;
        assert_eq!(status, 200, "{label}: {body}");
        let run = failed_run_after(&d, before, "the refused update fails").await;
        let error = run["error"].as_str().unwrap_or_default();
        assert!(error.contains("1001"), "{label}: the failure names the extension: {run:#}");
        ast.wait_log(log_from, "Retaining existing configuration for object of type 'endpoint' with id '1001'", LIVE)
            .await;
        // Rolled back: the file Asterisk would read at its next start is the
        // previous one, and the API still shows what is really live.
        let on_disk = std::fs::read_to_string(ast.managed_file()).expect("managed file");
        assert!(!on_disk.contains("Renamed"), "{label}: the refused file stayed on disk:\n{on_disk}");
        let (_, now) = d.get("/extensions/1001").await;
        assert_eq!(now["displayName"], "Test User", "{label}: {now:#}");
        // The state says so: failed, by this run, naming what Asterisk holds instead.
        assert_eq!(now["syncStatus"], "failed", "{label}: {now:#}");
        assert_eq!(now["syncRunId"], run["id"], "{label}: {now:#}");
        let reason = now["lastError"].as_str().unwrap_or_default();
        assert!(reason.contains("1001") && reason.contains("Renamed"), "{label}: {reason}");

        // After an Asterisk restart the extension is still live, and the phone registers.
        let mut ast = ast;
        ast.stop().await;
        ast.start_again().await.expect("Asterisk starts again");
        assert!(endpoint(&ast, "1001").await.is_some(), "{label}: 1001 lost at the restart");
        assert!(phone.register(ast.sip_addr()).await.ok(), "{label}: registers after the restart");
        d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_killed_and_back_and_restarted_mid_run_converges() {
    let Some(build) = require("real::faults::killed_and_restarted") else { return };
    let mut ast = asterisk(&build, "killed").await;
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, &team(&[("1001", "One")])).await;
    wait("1001 live", LIVE, || async { endpoint(&ast, "1001").await.is_some() }).await;
    // 1001 is live before the run that wrote it has verified and recorded it:
    // killing Asterisk now would fail that run and roll it back. Wait for it.
    d.run_where("the first run applied", |r| r["outcome"] == "applied").await;

    // Killed: a change fails softly (nothing written), status says so.
    let before = d.last_run_id().await;
    ast.kill().await;
    let on_disk = std::fs::read_to_string(ast.managed_file()).expect("managed file");
    std::fs::write(d.specs.join("team.yaml"), team(&[("1001", "One"), ("1002", "Two")])).expect("write");
    let run = failed_run_after(&d, before, "a run while Asterisk is down").await;
    assert!(run["error"].as_str().is_some_and(|e| !e.is_empty()), "{run:#}");
    assert_eq!(std::fs::read_to_string(ast.managed_file()).expect("managed"), on_disk, "nothing written");
    let (_, status) = d.get("/status").await;
    assert_ne!(status["ready"]["status"], "True", "{status:#}");

    // Back: the change converges without anyone asking.
    ast.start_again().await.expect("Asterisk starts again");
    wait("1002 live after Asterisk is back", Duration::from_secs(90), || async {
        endpoint(&ast, "1002").await.is_some()
    })
    .await;
    wait("Ready again", LIVE, || async { d.get("/status").await.1["ready"]["status"] == "True" }).await;

    // Restarted while a run is under way: the change lands all the same.
    let before = d.last_run_id().await;
    std::fs::write(d.specs.join("team.yaml"), team(&[("1001", "One"), ("1002", "Two"), ("1004", "Four")]))
        .expect("write");
    ast.stop().await;
    ast.start_again().await.expect("Asterisk starts again");
    wait("1004 live after the restart", Duration::from_secs(90), || async { endpoint(&ast, "1004").await.is_some() })
        .await;
    let applied = d
        .run_where("an applied run after the restart", |r| {
            r["id"].as_i64().is_some_and(|id| id > before) && r["outcome"] == "applied"
        })
        .await;
    assert!(applied["id"].as_i64() > Some(before));
    for n in ["1001", "1002", "1004"] {
        assert!(endpoint(&ast, n).await.is_some(), "{n} live");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ami_and_ari_refusing_the_daemons_credentials_are_reported_and_change_nothing() {
    let Some(build) = require("real::faults::refused_credentials") else { return };
    let ast = asterisk(&build, "credentials").await;
    let managed_before = std::fs::read_to_string(ast.managed_file()).expect("managed");
    let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, &team(&[("1001", "One")]), |f| {
        f.ami = Some(AmiFileConfig {
            addr: Some(ast.ami_addr().to_string()),
            user: Some(asterisk_real::AMI_USER.into()),
            secret: Some(SecretString::new("not-the-ami-secret")),
            ..Default::default()
        });
        f.ari = Some(AriFileConfig {
            url: Some(ast.ari_url()),
            user: Some(asterisk_real::ARI_USER.into()),
            password: Some(SecretString::new("not-the-ari-password")),
            ..Default::default()
        });
    })
    .await;
    let run = d.run_where("the first run fails", |r| r["outcome"] == "failed").await;
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("Authentication failed"), "AMI's own words reach the run: {run:#}");
    assert!(!error.contains("not-the-ami-secret"));
    assert_eq!(std::fs::read_to_string(ast.managed_file()).expect("managed"), managed_before, "nothing written");
    assert!(endpoint(&ast, "1001").await.is_none());
    wait("the call logger reports ARI refusing it", LIVE, || async {
        let (_, s) = d.get("/status").await;
        s["callLogger"]["connected"] == false && s["ready"]["status"] != "True"
    })
    .await;
    let seen = d.seen.lock().expect("lock").join("\n");
    assert!(!seen.contains("not-the-ari-password") && !seen.contains("not-the-ami-secret"));
    assert!(contacts(&ast, "1001").await.is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_sent_while_asterisk_is_still_reloading_is_waited_out() {
    let Some(build) = require("real::faults::reload_in_progress") else { return };
    // Enough endpoints that a reload takes a while.
    let managed = (0..5000)
        .map(|i| {
            let n = 50_000 + i;
            format!("[{n}]\ntype = endpoint\ncontext = from-internal\nallow = ulaw\nauth = {n}\naors = {n}\n[{n}]\ntype = auth\nauth_type = md5\nusername = {n}\nmd5_cred = {MD5}\n[{n}]\ntype = aor\nmax_contacts = 1\n")
        })
        .collect::<String>();
    let opts = asterisk_real::Options { managed, ..asterisk_real::Options::named("reload-busy") };
    let ast = std::sync::Arc::new(asterisk_real::Asterisk::start(&build, opts).await.expect("Asterisk starts"));
    let client = asterisk_gitops::asterisk::Asterisk::new(asterisk_gitops::asterisk::ami::AmiConfig {
        addr: ast.ami_addr().to_string(),
        user: asterisk_real::AMI_USER.into(),
        secret: ast.ami_secret.clone(),
        timeout: Duration::from_secs(30),
        events: false,
    });
    client.version().await.expect("AMI answers");
    // Someone else's reload is under way when ours is sent: ours waits and succeeds.
    let mut hit = false;
    for _ in 0..5 {
        let from = ast.log().len();
        let other = {
            let ast = ast.clone();
            tokio::spawn(async move { ast.cli("module reload res_pjsip.so").await })
        };
        ast.wait_log(from, "Reloading module 'res_pjsip.so'", LIVE).await;
        client.reload().await.expect("our reload succeeds once Asterisk's own has finished");
        other.await.expect("joins");
        if ast.log()[from..].contains("The previous reload command didn't finish yet") {
            hit = true;
            break;
        }
    }
    assert!(hit, "never sent a reload while another ran; Asterisk's log ends:\n{}", ast.log_tail(20));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_run_the_moment_asterisk_starts_waits_for_it_and_succeeds() {
    // While Asterisk boots, AMI accepts the login but refuses PJSIP actions
    // ("Permission denied") and only queues a Reload; apply must wait.
    let Some(build) = require("real::faults::apply_at_boot") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = dir.path().join("extensions.d");
    std::fs::create_dir_all(&specs).expect("mkdir");
    std::fs::write(specs.join("team.yaml"), team(&[("1001", "One"), ("1002", "Two")])).expect("write");
    let started = std::time::Instant::now();
    let mut ast = asterisk_real::Asterisk::spawn(&build, asterisk_real::Options::named("apply-at-boot"))
        .expect("Asterisk spawns");
    let out = apply(&ast, dir.path(), "60").output();
    let launched = started.elapsed();
    let out = out.await.expect("apply runs");
    assert!(launched < Duration::from_secs(1), "apply was started {launched:?} after Asterisk");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "apply failed:\n{stdout}\n{stderr}\nAsterisk:\n{}", ast.log_tail(20));
    assert!(stdout.contains("applied"), "{stdout}");
    ast.wait_booted().await.expect("booted");
    for n in ["1001", "1002"] {
        assert!(endpoint(&ast, n).await.is_some(), "{n} live after apply");
    }
    // Asterisk not there at all: a clear failure after the bound.
    ast.kill().await;
    let out = apply(&ast, dir.path(), "1").output().await.expect("apply runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Asterisk is not ready") && stderr.contains("--wait-for-asterisk"), "{stderr}");
    assert!(!stderr.contains(&ast.ami_secret), "the secret stays out of the error");
}

/// `asterisk-gitops apply --yes` on `dir`'s specs against `ast`, configured
/// through the environment as an operator's script would.
fn apply(ast: &asterisk_real::Asterisk, dir: &std::path::Path, wait: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_asterisk-gitops"));
    c.args(["apply", "--yes", "--wait-for-asterisk", wait])
        .env("ASTERISK_GITOPS_SPEC_DIR", dir.join("extensions.d"))
        .env("ASTERISK_GITOPS_STATE_DIR", dir.join("state"))
        .env("ASTERISK_GITOPS_MANAGED_FILE", ast.managed_file())
        .env("ASTERISK_GITOPS_AMI_ADDR", ast.ami_addr().to_string())
        .env("ASTERISK_GITOPS_AMI_USER", asterisk_real::AMI_USER)
        .env("ASTERISK_GITOPS_AMI_SECRET", &ast.ami_secret)
        .env_remove("DATABASE_URL");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_that_fails_too_says_so_loudly_and_the_next_good_change_recovers() {
    // The previous file is what was on disk before the run: here someone had
    // hand-edited it (1001's endpoint renamed) without reloading. The run's
    // change is refused, the rollback puts that file back, and Asterisk then
    // no longer holds 1001 at all: the rollback failed, and status says so.
    let Some(build) = require("real::faults::a_rollback_that_fails_too") else { return };
    let ast = asterisk(&build, "rollback-failed").await;
    let tpl = template_with("{% if e.callerid and \"Renamed\" in e.callerid %}allow = nosuchcodec\n{% endif %}");
    let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, "", with_templates(&tpl)).await;
    assert_eq!(d.call("POST", "/extensions", Some(SEED_BODY)).await.0, 201);
    wait("1001 synced", LIVE, || async { d.get("/extensions/1001").await.1["syncStatus"] == "synced" }).await;
    let managed = std::fs::read_to_string(ast.managed_file()).expect("managed file");
    let edited = managed.replacen("[1001]\ntype = endpoint", "[1001x]\ntype = endpoint", 1);
    assert_ne!(managed, edited);
    std::fs::write(ast.managed_file(), edited).expect("hand edit");
    let before = d.last_run_id().await;

    assert_eq!(d.call("PUT", "/extensions/1001", Some(r#"{"displayName":"Renamed"}"#)).await.0, 200);
    let run = failed_run_after(&d, before, "the refused update fails").await;
    let (_, status) = d.get("/status").await;
    assert_eq!(status["ready"]["status"], "False", "{status:#}");
    assert_eq!(status["ready"]["reason"], "RollbackFailed", "{status:#}");
    let (_, detail) = d.get(&format!("/runs/{}", run["id"])).await;
    let reasons = detail["reasons"].to_string();
    assert!(reasons.contains("ROLLBACK FAILED") && reasons.contains("1001"), "{detail:#}");
    let (_, ext) = d.get("/extensions/1001").await;
    assert_eq!(ext["syncStatus"], "failed", "{ext:#}");
    assert!(ext["lastError"].as_str().is_some_and(|e| e.contains("previous definitions of 1001")), "{ext:#}");
    // The database still holds what was last applied, not the refused change.
    assert_eq!(ext["displayName"], "Test User", "{ext:#}");
    assert!(endpoint(&ast, "1001").await.is_none(), "Asterisk really lost 1001: the status was true");

    // A good change repairs it: 1001 is live and synced again, Ready again.
    let before = d.last_run_id().await;
    assert_eq!(d.call("PUT", "/extensions/1001", Some(r#"{"displayName":"Fine"}"#)).await.0, 200);
    d.run_where("the good change applies", |r| {
        r["id"].as_i64().is_some_and(|id| id > before) && r["outcome"] == "applied"
    })
    .await;
    wait("1001 synced again", LIVE, || async { d.get("/extensions/1001").await.1["syncStatus"] == "synced" }).await;
    assert!(endpoint(&ast, "1001").await.is_some());
    assert_eq!(d.get("/status").await.1["ready"]["status"], "True");
    d.stop().await;
}
