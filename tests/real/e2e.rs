//! The seed's flow on a real Asterisk, as its users run it: through `serve`
//! and the HTTP API (and through a YAML edit, and a git push + webhook),
//! with sipp registering with the seed's password and calling.

use super::{Daemon, SEED_BODY, Source, Store, asterisk, codecs, contacts, endpoint, reloads, wait};
use asterisk_real::{require, sipp};
use serde_json::Value;
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_flow_through_the_api_on_a_real_asterisk() {
    let Some(build) = require("real::e2e::the_seeds_flow_through_the_api_on_a_real_asterisk") else { return };
    for store in Store::both().await {
        let label = store.label();
        let ast = asterisk(&build, &format!("seed-{label}")).await;
        let d = Daemon::start(&ast, store, Source::Dir, "").await;

        // POST the seed's body: the endpoint is live in Asterisk.
        let (status, body) = d.call("POST", "/extensions", Some(SEED_BODY)).await;
        assert_eq!(status, 201, "{label}: {body}");
        wait("1001 live in Asterisk", LIVE, || async { endpoint(&ast, "1001").await.is_some() }).await;
        wait("1001 synced", LIVE, || async { d.get("/extensions/1001").await.1["syncStatus"] == "synced" }).await;
        assert_eq!(codecs(&ast, "1001").await.as_deref(), Some("(ulaw|alaw|g729)"), "{label}");
        let text = endpoint(&ast, "1001").await.unwrap_or_default();
        assert!(text.contains("\"Test User\" <1001>"), "{label}: callerid as Asterisk holds it:\n{text}");

        // A phone registers with the seed's password (written to YAML as md5Cred).
        let phone = sipp::Phone::new("1001", "Soundz2025");
        let reg = phone.register(ast.sip_addr()).await;
        assert!(reg.ok(), "{label}: sipp could not register:\n{}", reg.log);
        let wrong = sipp::Phone::new("1001", "not-the-password");
        assert!(!wrong.register(ast.sip_addr()).await.ok(), "{label}: a wrong password registered");

        // Status shows the contact and the user agent, live from Asterisk.
        let (status, live) = d.get("/extensions/1001/status").await;
        assert_eq!(status, 200, "{label}: {live}");
        assert_eq!(live["registered"], true, "{label}: {live}");
        let uri = format!("sip:1001@127.0.0.1:{}", phone.port);
        assert_eq!(live["contacts"][0]["uri"], Value::from(uri.clone()), "{label}: {live}");
        assert_eq!(live["contacts"][0]["userAgent"], "sipp-1001", "{label}: {live}");
        assert_eq!(live["endpoint"]["context"], "from-internal", "{label}: {live}");

        // A call to 998901234567 goes through Stasis(callcenter), is continued
        // to the trunk (a sipp carrier answers) and is logged complete.
        let carrier = sipp::answer_on(ast.trunk_port);
        let placed = phone.call(ast.sip_addr(), "998901234567", Duration::from_millis(1500)).await;
        assert!(placed.ok(), "{label}: the call failed:\n{}\nAsterisk:\n{}", placed.log, ast.log_tail(30));
        let carried = carrier.done(Duration::from_secs(20)).await;
        assert!(carried.ok(), "{label}: the carrier saw no complete call:\n{}", carried.log);
        wait("the call's row complete", LIVE, || async {
            let row = d.get("/calls?extension=1001").await.1["calls"][0].clone();
            row["endTime"].is_string() && row["disposition"] != "unknown"
        })
        .await;
        let row = d.get("/calls?extension=1001").await.1["calls"][0].clone();
        assert_eq!(calls_len(&d).await, 1, "{label}: exactly one row for the one call");
        assert_eq!(
            (row["callee"].as_str(), row["direction"].as_str(), row["disposition"].as_str()),
            (Some("998901234567"), Some("outbound"), Some("answered")),
            "{label}: {row}"
        );
        assert!(row["answerTime"].is_string(), "{label}: {row}");
        assert!(row["durationSeconds"].as_i64().is_some_and(|s| (1..=5).contains(&s)), "{label}: {row}");
        assert!(row["hangupCause"].is_i64(), "{label}: Asterisk's hangup cause is recorded: {row}");

        // PUT codecs: live, and the registration survives the reload.
        let (status, body) = d.call("PUT", "/extensions/1001", Some(r#"{"codecs":"ulaw"}"#)).await;
        assert_eq!(status, 200, "{label}: {body}");
        wait("codecs ulaw live", LIVE, || async { codecs(&ast, "1001").await.as_deref() == Some("(ulaw)") }).await;
        assert_eq!(contacts(&ast, "1001").await, std::slice::from_ref(&uri), "{label}: the registration was kept");
        wait("the update synced", LIVE, || async {
            d.get("/extensions/1001").await.1["codecs"] == serde_json::json!(["ulaw"])
        })
        .await;

        // DELETE: gone from Asterisk; the phone can no longer register.
        let (status, body) = d.call("DELETE", "/extensions/1001", None).await;
        assert!(status == 200 || status == 204, "{label}: {status} {body}");
        wait("1001 gone from Asterisk", LIVE, || async { endpoint(&ast, "1001").await.is_none() }).await;
        wait("1001 gone from the API", LIVE, || async { d.get("/extensions/1001").await.0 == 404 }).await;
        let again = phone.register(ast.sip_addr()).await;
        assert!(!again.ok(), "{label}: a deleted extension still registers:\n{}", again.log);

        // No response carried the password or its hash.
        let seen = d.seen.lock().expect("lock").join("\n");
        assert!(!seen.contains("Soundz2025"), "{label}: a response carried the password");
        assert!(!seen.contains(&asterisk_gitops::secret::md5_cred("1001", "asterisk", "Soundz2025")));
        d.stop().await;
    }
}

async fn calls_len(d: &Daemon) -> usize {
    d.get("/calls?limit=100").await.1["calls"].as_array().map(Vec::len).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_edit_reaches_a_real_asterisk_and_a_phone_registers() {
    let Some(build) = require("real::e2e::a_yaml_edit") else { return };
    let ast = asterisk(&build, "yaml").await;
    // The md5Cred of the password the phone knows; no password in the file.
    let md5 = asterisk_gitops::secret::md5_cred("2002", "asterisk", "Yaml-Pass-2002");
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, "").await;
    std::fs::write(
        d.specs.join("team.yaml"),
        format!(
            "defaults: {{context: from-internal, transport: transport-udp, codecs: [ulaw]}}\nextensions:\n  - extension: \"2002\"\n    displayName: Agent Two\n    md5Cred: {md5}\n"
        ),
    )
    .expect("write");
    wait("2002 live", LIVE, || async { endpoint(&ast, "2002").await.is_some() }).await;
    let phone = sipp::Phone::new("2002", "Yaml-Pass-2002");
    let reg = phone.register(ast.sip_addr()).await;
    assert!(reg.ok(), "an md5Cred extension registers with its password:\n{}", reg.log);

    // Edited again: codecs change, the registration is kept.
    std::fs::write(
        d.specs.join("team.yaml"),
        format!(
            "defaults: {{context: from-internal, transport: transport-udp, codecs: [alaw, ulaw]}}\nextensions:\n  - extension: \"2002\"\n    displayName: Agent Two\n    md5Cred: {md5}\n"
        ),
    )
    .expect("write");
    wait("codecs alaw,ulaw live", LIVE, || async { codecs(&ast, "2002").await.as_deref() == Some("(alaw|ulaw)") })
        .await;
    assert_eq!(contacts(&ast, "2002").await, [format!("sip:2002@127.0.0.1:{}", phone.port)]);

    // A run with nothing to change reloads nothing (Asterisk's own log says so).
    let reloads_before = reloads(&ast);
    let before = d.last_run_id().await;
    assert_eq!(d.call("POST", "/reconcile", None).await.0, 202);
    let run = d
        .run_where("the asked-for run", |r| r["id"].as_i64().is_some_and(|id| id > before) && r["trigger"] == "manual")
        .await;
    assert_eq!((run["outcome"].as_str(), run["reloaded"].as_bool()), (Some("noop"), Some(false)), "{run:#}");
    assert_eq!(reloads(&ast), reloads_before, "a no-op run reloaded Asterisk");

    // The file removed: the extension is deleted (one of one: under the prune floor).
    std::fs::remove_file(d.specs.join("team.yaml")).expect("remove");
    wait("2002 gone", LIVE, || async { endpoint(&ast, "2002").await.is_none() }).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_push_and_its_webhook_reach_a_real_asterisk() {
    let Some(build) = require("real::e2e::a_git_push") else { return };
    let ast = asterisk(&build, "git").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let bare = tmp.path().join("pbx.git");
    git2::Repository::init_bare(&bare).expect("bare");
    let bob = git2::Repository::init(tmp.path().join("bob")).expect("bob");
    bob.remote("origin", &format!("file://{}", bare.display())).expect("remote");
    let md5 = asterisk_gitops::secret::md5_cred("3001", "asterisk", "Git-Pass-3001");
    let team = |codecs: &str| {
        format!(
            "defaults: {{context: from-internal, transport: transport-udp, codecs: [{codecs}]}}\nextensions:\n  - extension: \"3001\"\n    displayName: Agent Git\n    md5Cred: {md5}\n"
        )
    };
    push(&bob, &team("ulaw"), "Add 3001");
    let d = Daemon::start(&ast, Store::Sqlite, Source::Git { url: format!("file://{}", bare.display()) }, "").await;
    wait("3001 live", LIVE, || async { endpoint(&ast, "3001").await.is_some() }).await;
    let phone = sipp::Phone::new("3001", "Git-Pass-3001");
    assert!(phone.register(ast.sip_addr()).await.ok(), "registers");

    let commit = push(&bob, &team("ulaw, alaw"), "3001 gets alaw");
    assert_eq!(d.webhook().await, 202);
    wait("alaw live", LIVE, || async { codecs(&ast, "3001").await.as_deref() == Some("(ulaw|alaw)") }).await;
    let run = d.run_where("the pushed commit's run", |r| r["revision"].as_str() == Some(commit.as_str())).await;
    assert_eq!((run["outcome"].as_str(), run["trigger"].as_str()), (Some("applied"), Some("webhook")), "{run:#}");
    assert_eq!(run["subject"], "3001 gets alaw");
    assert_eq!(contacts(&ast, "3001").await.len(), 1, "the registration survived the reload");
    d.stop().await;
}

pub(crate) fn push(repo: &git2::Repository, text: &str, message: &str) -> String {
    let root = repo.workdir().expect("workdir").to_path_buf();
    std::fs::create_dir_all(root.join("extensions.d")).expect("mkdir");
    std::fs::write(root.join("extensions.d/team.yaml"), text).expect("write");
    let mut index = repo.index().expect("index");
    index.add_path(std::path::Path::new("extensions.d/team.yaml")).expect("add");
    index.write().expect("index");
    let tree = repo.find_tree(index.write_tree().expect("tree")).expect("tree");
    let sig = git2::Signature::now("Bob Admin", "bob@example.com").expect("sig");
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    let oid = repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).expect("commit");
    repo.find_remote("origin").expect("origin").push(&["HEAD:refs/heads/main"], None).expect("push");
    oid.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_call_between_two_phones_created_through_the_api_is_answered() {
    let Some(build) = require("real::e2e::an_internal_call") else { return };
    let ast = asterisk(&build, "internal").await;
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, "").await;
    for body in [SEED_BODY.to_string(), SEED_BODY.replace("1001", "1002").replace("Test User", "Callee")] {
        assert_eq!(d.call("POST", "/extensions", Some(&body)).await.0, 201);
    }
    wait("1001 and 1002 live", LIVE, || async {
        endpoint(&ast, "1001").await.is_some() && endpoint(&ast, "1002").await.is_some()
    })
    .await;
    let caller = sipp::Phone::new("1001", "Soundz2025");
    let callee = sipp::Phone::new("1002", "Soundz2025");
    assert!(caller.register(ast.sip_addr()).await.ok());
    assert!(callee.register(ast.sip_addr()).await.ok());
    // The callee answers on the port it registered from.
    let answering = callee.answer();
    let placed = caller.call(ast.sip_addr(), "1002", Duration::from_millis(500)).await;
    assert!(placed.ok(), "1001 → 1002:\n{}\nAsterisk:\n{}", placed.log, ast.log_tail(20));
    let answered = answering.done(Duration::from_secs(20)).await;
    assert!(answered.ok(), "the callee saw a complete call:\n{}", answered.log);
    assert!(answered.log.contains("INVITE sip:1002@127.0.0.1"), "Asterisk rang the registered contact");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_crashed_registers_again_at_once_with_the_seeds_defaults() {
    // The seed's exact body, nothing else: max 1 contact. A softphone that
    // crashed comes back on another local port; its dead contact must not
    // lock it out until it expires (remove_existing).
    let Some(build) = require("real::e2e::crash_and_come_back") else { return };
    let ast = asterisk(&build, "crash").await;
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, "").await;
    assert_eq!(d.call("POST", "/extensions", Some(SEED_BODY)).await.0, 201);
    wait("1001 live", LIVE, || async { endpoint(&ast, "1001").await.is_some() }).await;
    let before = sipp::Phone::new("1001", "Soundz2025");
    assert!(before.register(ast.sip_addr()).await.ok(), "first registration");
    let after = sipp::Phone::new("1001", "Soundz2025");
    assert_ne!(before.port, after.port);
    let again = after.register(ast.sip_addr()).await;
    assert!(again.ok(), "the phone that came back is refused:\n{}\nAsterisk:\n{}", again.log, ast.log_tail(10));
    assert_eq!(contacts(&ast, "1001").await, [format!("sip:1001@127.0.0.1:{}", after.port)], "only the new contact");
    let (_, live) = d.get("/extensions/1001/status").await;
    assert_eq!(live["contacts"].as_array().map(Vec::len), Some(1), "{live}");
    assert_eq!(live["contacts"][0]["uri"], Value::from(format!("sip:1001@127.0.0.1:{}", after.port)), "{live}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_goes_silent_turns_unreachable_within_two_qualify_periods() {
    let Some(build) = require("real::e2e::silent_phone") else { return };
    let ast = asterisk(&build, "silent").await;
    let md5 = asterisk_gitops::secret::md5_cred("4001", "asterisk", "Qualify-Pass-4001");
    let spec = format!(
        "defaults: {{context: from-internal, transport: transport-udp, codecs: [ulaw], qualifyFrequency: 2}}\nextensions:\n  - extension: \"4001\"\n    md5Cred: {md5}\n"
    );
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, &spec).await;
    wait("4001 live", LIVE, || async { endpoint(&ast, "4001").await.is_some() }).await;
    let phone = sipp::Phone::new("4001", "Qualify-Pass-4001");
    assert!(phone.register(ast.sip_addr()).await.ok());
    // Alive: a sipp on the phone's port answers Asterisk's qualify OPTIONS.
    let alive = phone.answer();
    wait("the contact reachable, with a round trip time", LIVE, || async {
        let c = first_contact(&d, "4001").await;
        c["status"] == "Reachable" && c["roundtripUsec"].is_u64()
    })
    .await;
    assert_eq!(d.get("/extensions/4001/status").await.1["registered"], true);
    // Silent (the phone's process is gone): unreachable within two periods.
    drop(alive);
    let silent = std::time::Instant::now();
    wait("the contact unreachable", LIVE, || async { first_contact(&d, "4001").await["status"] == "Unreachable" })
        .await;
    // Registered means a live contact exists: not any more, here and in the list.
    let (_, live) = d.get("/extensions/4001/status").await;
    assert_eq!(
        (live["registered"].as_bool(), live["contacts"].as_array().map(Vec::len)),
        (Some(false), Some(1)),
        "{live}"
    );
    wait("the list to say unregistered", LIVE, || async {
        d.get("/extensions/4001").await.1["registration"]["registered"] == false
    })
    .await;
    // How long it took is reported, not asserted (no timing in tests): two
    // qualify periods plus the 3 s Asterisk waits for an answer is expected.
    eprintln!("silent phone → Unreachable in {:?} (qualifyFrequency 2 s)", silent.elapsed());
    d.stop().await;
}

async fn first_contact(d: &Daemon, ext: &str) -> Value {
    d.get(&format!("/extensions/{ext}/status")).await.1["contacts"][0].clone()
}
