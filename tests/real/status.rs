//! Status that cannot be fooled, on a real Asterisk: each of the five
//! per-extension states (synced, pending, failed, drifted, disabled) is
//! reached by what the test does, and shown the same by the JSON API, its
//! `?sync=` filter, the UI and the metrics.

use super::{Daemon, SEED_BODY, Source, Store, asterisk, endpoint, wait};
use asterisk_gitops::config::{FileConfig, ReconcileFileConfig};
use asterisk_real::require;
use serde_json::Value;
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);

/// The project's template, plus a codec Asterisk does not have for any
/// extension whose display name says "Broken": Asterisk drops it.
fn breaking_template() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = asterisk_gitops::core::render::DEFAULT_TEMPLATE;
    let changed = base.replacen(
        "type = endpoint\n",
        "type = endpoint\n{% if e.callerid and \"Broken\" in e.callerid %}allow = nosuchcodec\n{% endif %}",
        1,
    );
    assert_ne!(base, changed, "the template's endpoint section moved: update this test");
    std::fs::write(dir.path().join(asterisk_gitops::core::render::TEMPLATE_NAME), changed).expect("write template");
    dir
}

async fn state_of(d: &Daemon, n: &str) -> Value {
    d.get(&format!("/extensions/{n}")).await.1
}

/// Waits until `n` is in `state`, then checks the filter, the UI list and
/// the UI page show it so. Returns the API's record.
async fn reaches(d: &Daemon, n: &str, state: &str) -> Value {
    wait(&format!("{n} {state}"), LIVE, || async { state_of(d, n).await["syncStatus"] == state }).await;
    let (code, listed) = d.get(&format!("/extensions?sync={state}")).await;
    assert_eq!(code, 200);
    let numbers: Vec<&str> = listed.as_array().expect("a list").iter().filter_map(|e| e["number"].as_str()).collect();
    assert!(numbers.contains(&n), "?sync={state} lists {n}: {numbers:?}");
    assert!(
        listed.as_array().expect("list").iter().all(|e| e["syncStatus"] == state),
        "?sync={state} lists only that state: {listed:#}"
    );
    let (_, page) = d.get(&format!("/ui/extensions?sync={state}")).await;
    let page = page.as_str().unwrap_or_default().to_string();
    assert!(page.contains(&format!("data-extension=\"{n}\"")), "the UI list filtered by {state} shows {n}");
    let (_, page) = d.get(&format!("/ui/extensions/{n}")).await;
    let page = page.as_str().unwrap_or_default().to_string();
    let mut label = state.to_string();
    label[..1].make_ascii_uppercase();
    assert!(page.contains(&format!("id=\"sync\">{label}</span>")), "the UI page of {n} shows {label}");
    state_of(d, n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_extension_state_is_reached_and_shown_by_the_api_the_ui_and_the_metrics() {
    let Some(build) = require("real::status::each_extension_state") else { return };
    let ast = asterisk(&build, "states").await;
    let tpl = breaking_template();
    let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, "", |f: &mut FileConfig| {
        f.templates = Some(tpl.path().to_path_buf());
        // Drift is reported, not repaired, so it stays visible.
        f.reconcile = Some(ReconcileFileConfig { self_heal: Some(false), ..Default::default() });
    })
    .await;

    // synced: the seed's body.
    assert_eq!(d.call("POST", "/extensions", Some(SEED_BODY)).await.0, 201);
    let synced = reaches(&d, "1001", "synced").await;
    assert_eq!(synced["lastError"], Value::Null, "{synced:#}");

    // disabled: `enabled: false` takes it out of Asterisk.
    let body = r#"{"extension":"1002","password":"Pass-1002-x","context":"from-internal","transport":"transport-udp","codecs":"ulaw"}"#;
    assert_eq!(d.call("POST", "/extensions", Some(body)).await.0, 201);
    reaches(&d, "1002", "synced").await;
    assert_eq!(d.call("PUT", "/extensions/1002", Some(r#"{"enabled":false}"#)).await.0, 200);
    reaches(&d, "1002", "disabled").await;
    wait("1002 gone from Asterisk", LIVE, || async { endpoint(&ast, "1002").await.is_none() }).await;

    // pending: another file does not validate, so what a valid file adds waits.
    std::fs::write(d.specs.join("broken.yaml"), "extensions:\n  - extension: \"1009\"\n    codecs: [nosuch]\n")
        .expect("write");
    std::fs::write(
        d.specs.join("later.yaml"),
        "extensions:\n  - extension: \"1004\"\n    context: from-internal\n    transport: transport-udp\n    codecs: [ulaw]\n    md5Cred: 0123456789abcdef0123456789abcdef\n",
    )
    .expect("write");
    let pending = reaches(&d, "1004", "pending").await;
    assert!(pending["lastError"].as_str().is_some_and(|e| e.contains("error")), "{pending:#}");
    assert_eq!(state_of(&d, "1002").await["syncStatus"], "disabled", "an invalid run leaves other states alone");
    std::fs::remove_file(d.specs.join("broken.yaml")).expect("rm");
    reaches(&d, "1004", "synced").await;

    // drifted: Asterisk loses 1001 behind the daemon's back (a hand edit
    // and a reload); self-heal is off, so it is reported, with what differs.
    let managed = std::fs::read_to_string(ast.managed_file()).expect("managed file");
    let edited = managed.replacen("[1001]\ntype = endpoint", "[1001x]\ntype = endpoint", 1);
    assert_ne!(managed, edited);
    std::fs::write(ast.managed_file(), edited).expect("hand edit");
    ast.cli("module reload res_pjsip.so").await;
    wait("1001 gone", LIVE, || async { endpoint(&ast, "1001").await.is_none() }).await;
    assert_eq!(d.call("POST", "/reconcile", None).await.0, 202);
    let drifted = reaches(&d, "1001", "drifted").await;
    assert!(drifted["lastError"].as_str().is_some_and(|e| e.contains("1001 is missing from Asterisk")), "{drifted:#}");

    // failed: Asterisk drops the new definition; the run that failed and why are
    // named. (The run is all or nothing, so this comes last: until 1003 is
    // fixed, every run that tries it fails.)
    let before = d.last_run_id().await;
    let body = r#"{"extension":"1003","password":"Pass-1003-x","displayName":"Broken","context":"from-internal","transport":"transport-udp","codecs":"ulaw"}"#;
    assert_eq!(d.call("POST", "/extensions", Some(body)).await.0, 201);
    let failed = reaches(&d, "1003", "failed").await;
    let run = d
        .run_where("the run that failed 1003", |r| {
            r["id"].as_i64().is_some_and(|i| i > before) && r["outcome"] == "failed"
        })
        .await;
    assert_eq!(failed["syncRunId"], run["id"], "{failed:#}");
    assert_eq!(failed["appliedAt"], Value::Null, "never applied: {failed:#}");
    assert!(failed["lastError"].as_str().is_some_and(|e| e.contains("1003 is not loaded")), "{failed:#}");
    assert!(endpoint(&ast, "1003").await.is_none());

    assert_eq!(state_of(&d, "1001").await["syncStatus"], "drifted", "a run that did not look keeps the drift");

    // The metrics and /status count each state.
    let (_, metrics) = d.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for (state, n) in [("synced", 1), ("pending", 0), ("failed", 1), ("drifted", 1), ("disabled", 1)] {
        let line = format!("asterisk_gitops_extensions{{status=\"{state}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    let (_, status) = d.get("/status").await;
    assert_eq!(status["sync"]["failed"], 1, "{status:#}");
    assert_eq!(status["conditions"][1]["type"], "Reconciling", "{status:#}");
    assert_eq!(d.get("/extensions?sync=nonsense").await.0, 400);
    d.stop().await;
}
