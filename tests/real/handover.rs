//! Switching a running installation between `apply.target: file` and `ari`
//! (and back) on a real Asterisk started with the astdb-first sorcery.conf
//! (examples/asterisk/sorcery.conf.snippet): what Asterisk does with an
//! object held by both wizards, and the daemon's hand-over with sipp phones
//! registered throughout.

use super::{Daemon, Source, Store, codecs, contacts, endpoint, reloads, wait};
use crate::support::real::node_config;
use asterisk_gitops::asterisk::ari::{Ari, AriConfig};
use asterisk_gitops::asterisk::{AmiClient, AmiConfig, Message};
use asterisk_gitops::config::{ApplyTarget, SecretString};
use asterisk_real::{AMI_USER, ARI_USER, Asterisk, Options, require, sipp};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);

fn ari(ast: &Asterisk) -> Ari {
    Ari::new(AriConfig {
        url: ast.ari_url(),
        user: ARI_USER.into(),
        password: SecretString::new(&ast.ari_password),
        app: "callcenter".into(),
        timeout: Duration::from_secs(5),
    })
    .expect("an ARI client")
}

fn ami_config(ast: &Asterisk) -> AmiConfig {
    AmiConfig {
        addr: ast.ami_addr().to_string(),
        user: AMI_USER.into(),
        secret: ast.ami_secret.clone(),
        timeout: Duration::from_secs(10),
        events: false,
    }
}

/// A line of the CLI's `pjsip show endpoint` naming the option.
async fn option(ast: &Asterisk, id: &str, name: &str) -> Option<String> {
    let text = endpoint(ast, id).await?;
    text.lines()
        .find(|l| l.trim_start().starts_with(&format!("{name} ")))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

async fn astdb(ast: &Asterisk) -> String {
    ast.cli("database show asterisk-gitops").await
}

fn file_objects(id: &str, name: &str) -> String {
    format!(
        "\n[{id}]\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw,alaw\ntransport = transport-udp\nauth = {id}\naors = {id}\ncallerid = {name} <{id}>\n\n[{id}]\ntype = auth\nauth_type = userpass\nusername = {id}\npassword = pw{id}\n\n[{id}]\ntype = aor\nmax_contacts = 1\n"
    )
}

/// The facts the hand-over is built on (src/asterisk/ari_config/handover.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_in_astdb_and_in_the_file_is_astdbs_and_dbdel_hands_it_back_with_its_contacts() {
    let Some(build) = require("real::handover::astdb_and_file") else { return };
    let ast = Asterisk::start(&build, Options::live("handover-facts").expect("snippet")).await.expect("starts");
    let a = ari(&ast);
    let m = AmiClient::connect(ami_config(&ast)).await.expect("AMI");
    let put = |kind: &str, json: &str| {
        Message::action("DBPut")
            .with("Family", &format!("asterisk-gitops/{kind}"))
            .with("Key", "1001")
            .with("Val", json)
    };
    let del =
        |kind: &str| Message::action("DBDel").with("Family", &format!("asterisk-gitops/{kind}")).with("Key", "1001");
    std::fs::write(ast.managed_file(), format!("; header\n{}", file_objects("1001", "File"))).expect("write");
    ast.cli("module reload res_pjsip.so").await;
    let phone = sipp::Phone::new("1001", "pw1001");
    let reg = phone.register_for(ast.sip_addr(), 3600).await;
    assert!(reg.ok(), "{}", reg.log);
    let contact = contacts(&ast, "1001").await;
    assert_eq!(contact.len(), 1, "registered: {contact:?}");

    // ARI cannot write over the file's object; AMI DBPut can, and wins every lookup by id.
    let refused = a.put_object("endpoint", "1001", &[("callerid".into(), "Put <1001>".into())]).await;
    assert!(format!("{refused:?}").contains("403"), "{refused:?}");
    let json = r#"{"context":"from-internal","allow":"ulaw,alaw","transport":"transport-udp","auth":"1001","aors":"1001","callerid":"Astdb <1001>"}"#;
    m.request(put("endpoint", json)).await.expect("DBPut");
    assert_eq!(option(&ast, "1001", "callerid").await.as_deref(), Some("\"Astdb\" <1001>"), "the CLI sees astdb's");
    let held = a.get_object("endpoint", "1001").await.expect("GET").expect("found");
    assert!(held.contains(&("callerid".into(), "\"Astdb\" <1001>".into())), "ARI GET sees astdb's");
    let (_, list) = m.request_list(Message::action("PJSIPShowEndpoints")).await.expect("list");
    let listed: Vec<_> = list.iter().filter_map(|e| e.get("ObjectName")).filter(|n| *n == "1001").collect();
    assert_eq!(listed.len(), 1, "listed once");
    assert_eq!(codecs(&ast, "1001").await.as_deref(), Some("(ulaw|alaw)"), "no disallow needed in astdb's JSON");

    // With astdb holding a copy, an ARI PUT is an update (200) of that copy.
    let answer = a.put_object("endpoint", "1001", &[("callerid".into(), "\"Put\" <1001>".into())]).await.expect("PUT");
    assert!(answer.contains(&("context".into(), "from-internal".into())), "an update keeps the other fields");
    // Asterisk now stores its own JSON of the endpoint (every option): too
    // long for one AMI line, so it cannot be written back with DBPut.
    let get = Message::action("DBGet").with("Family", "asterisk-gitops/endpoint").with("Key", "1001");
    let (_, got) = m.request_list(get).await.expect("DBGet");
    let stored = got.iter().find_map(|e| e.get("Val")).unwrap_or_default().to_string();
    assert!(stored.len() > 1024 && stored.contains("\"callerid\":\"\\\"Put\\\" <1001>\""), "{} bytes", stored.len());
    let long = m.request(put("endpoint", &stored)).await;
    assert!(format!("{long:?}").contains("line too long"), "{long:?}");
    m.request(put("aor", r#"{"max_contacts":"1"}"#)).await.expect("DBPut aor");
    m.request(put("auth", r#"{"auth_type":"userpass","username":"1001","password":"pw1001"}"#)).await.expect("auth");

    // The file emptied and reloaded: astdb's copies stay, and so does the contact.
    std::fs::write(ast.managed_file(), "; header\n").expect("write");
    ast.cli("module reload res_pjsip.so").await;
    assert_eq!(option(&ast, "1001", "callerid").await.as_deref(), Some("\"Put\" <1001>"));
    assert_eq!(contacts(&ast, "1001").await, contact, "the contact survived the reload");
    assert!(phone.register_for(ast.sip_addr(), 3600).await.ok(), "registers against astdb's objects");

    // Back: the file again, reloaded; astdb's still win; DBDel hands each
    // object to the file at once and keeps the contact.
    std::fs::write(ast.managed_file(), format!("; header\n{}", file_objects("1001", "Again"))).expect("write");
    ast.cli("module reload res_pjsip.so").await;
    assert_eq!(option(&ast, "1001", "callerid").await.as_deref(), Some("\"Put\" <1001>"));
    for kind in ["endpoint", "aor", "auth"] {
        m.request(del(kind)).await.expect("DBDel");
    }
    assert_eq!(option(&ast, "1001", "callerid").await.as_deref(), Some("\"Again\" <1001>"), "the file's copy");
    assert_eq!(contacts(&ast, "1001").await, contact, "the contact survived DBDel of its aor");
    assert!(astdb(&ast).await.contains("0 results"), "astdb is empty");
    assert!(phone.register_for(ast.sip_addr(), 3600).await.ok(), "registers against the file's objects");

    // But an ARI DELETE of an aor held by both takes the aor's contacts with it.
    m.request(put("aor", r#"{"max_contacts":"1"}"#)).await.expect("DBPut aor");
    assert!(a.delete_object("aor", "1001").await.expect("DELETE"), "204");
    assert!(contacts(&ast, "1001").await.is_empty(), "ARI DELETE of the aor removed its contacts");
    assert!(a.get_object("aor", "1001").await.expect("GET").is_some(), "the file's aor is still there");
    let refused = a.delete_object("aor", "1001").await;
    assert!(format!("{refused:?}").contains("403"), "a file-only object cannot be deleted: {refused:?}");
}

fn spec(names: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw, alaw]}\nextensions:\n",
    );
    for (n, name) in names {
        let md5 = asterisk_gitops::secret::md5_cred(n, "asterisk", &format!("pw{n}"));
        s.push_str(&format!("  - extension: \"{n}\"\n    displayName: {name}\n    md5Cred: {md5}\n"));
    }
    s
}

/// What the poller saw: polls done, and every miss (`poll N: what`).
#[derive(Default)]
struct Seen {
    polls: AtomicUsize,
    misses: std::sync::Mutex<Vec<String>>,
}

/// Checks, over and over until `stop`, that every extension's endpoint,
/// auth and aor exist (ARI GET) and that every phone's contact is listed
/// (AMI PJSIPShowContacts); a failed request counts as a miss too.
fn poll(ast: &Asterisk, ids: Vec<String>, seen: Arc<Seen>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let a = ari(ast);
    let ami = asterisk_gitops::asterisk::Asterisk::new(ami_config(ast));
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let n = seen.polls.load(Ordering::Relaxed);
            let mut misses = Vec::new();
            for id in &ids {
                for kind in ["endpoint", "auth", "aor"] {
                    match a.get_object(kind, id).await {
                        Ok(Some(_)) => {}
                        other => misses.push(format!("poll {n}: {kind} {id}: {other:?}")),
                    }
                }
            }
            match ami.contacts().await {
                Ok(list) => {
                    for id in &ids {
                        if !list.iter().any(|c| c.uri.starts_with(&format!("sip:{id}@"))) {
                            misses.push(format!("poll {n}: no contact for {id}"));
                        }
                    }
                }
                Err(e) => misses.push(format!("poll {n}: PJSIPShowContacts: {e}")),
            }
            seen.misses.lock().expect("lock").extend(misses);
            seen.polls.fetch_add(1, Ordering::Relaxed);
        }
        ami.close().await;
    })
}

async fn polls_past(seen: &Seen, more: usize) {
    let target = seen.polls.load(Ordering::Relaxed) + more;
    wait("the poller to go on", LIVE, || async { seen.polls.load(Ordering::Relaxed) >= target }).await;
}

/// Starts the daemon again on `target` (same state directory) and waits for
/// its hand-over run (`direction`: "file → ari" or "ari → file") after run `after`.
async fn restarted_on(d: &mut Daemon, target: ApplyTarget, after: i64, direction: &str) -> Value {
    d.settings.apply_target = target;
    d.start_again().await;
    let needle = format!("hand-over {direction}");
    d.run_where(&format!("the {needle}"), |r| {
        r["id"].as_i64().is_some_and(|id| id > after) && r["reasons"].to_string().contains(&needle)
    })
    .await
}

async fn last_reload(ast: &Asterisk) -> String {
    ari(ast).info().await.expect("ARI /asterisk/info").status.last_reload_time
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_to_ari_and_back_with_phones_registered_throughout_loses_no_registration_and_no_extension() {
    let Some(build) = require("real::handover::file_to_ari_and_back") else { return };
    let ast = Asterisk::start(&build, Options::live("handover").expect("snippet")).await.expect("Asterisk starts");
    let ids = ["2001", "2002", "2003", "2004"];
    let team: Vec<(&str, &str)> = ids.iter().map(|i| (*i, "Agent")).collect();
    let mut d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, &spec(&team), |_| {}).await;
    for id in ids {
        wait("the file target's extensions live", LIVE, || async { endpoint(&ast, id).await.is_some() }).await;
    }
    assert!(std::fs::read_to_string(ast.managed_file()).expect("managed").contains("[2004]"), "on the file target");
    let phones: Vec<sipp::Phone> = ids.iter().map(|i| sipp::Phone::new(i, &format!("pw{i}"))).collect();
    for p in &phones {
        let reg = p.register_for(ast.sip_addr(), 3600).await;
        assert!(reg.ok(), "sipp registers:\n{}", reg.log);
    }
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll(&ast, ids.iter().map(|s| s.to_string()).collect(), seen.clone(), stop.clone());
    polls_past(&seen, 3).await;
    assert!(seen.misses.lock().expect("lock").is_empty(), "all present before the switch");

    // file → ari: the same state directory, the new target.
    let before = d.last_run_id().await;
    d.halt().await;
    let run = restarted_on(&mut d, ApplyTarget::Ari, before, "file → ari").await;
    assert_eq!(run["outcome"], "applied", "{run:#}");
    assert_eq!(run["reloaded"], true, "one reload empties the file: {run:#}");
    assert!(run["reasons"].to_string().contains("4 extension(s) copied into astdb"), "{run:#}");
    let handover = run["id"].as_i64().unwrap_or_default();
    let next = d.run_where("the first run on ari", |r| r["id"].as_i64().is_some_and(|id| id > handover)).await;
    assert!(next["outcome"] == "noop" || next["outcome"] == "applied", "{next:#}");
    let managed = std::fs::read_to_string(ast.managed_file()).expect("managed");
    assert!(!managed.contains('['), "the managed file holds its header only:\n{managed}");
    let db = astdb(&ast).await;
    for id in ids {
        for kind in ["endpoint", "auth", "aor"] {
            assert!(db.contains(&format!("/asterisk-gitops/{kind}/{id}")), "{kind} {id} in astdb:\n{db}");
        }
        assert_eq!(option(&ast, id, "callerid").await, Some(format!("\"Agent\" <{id}>")));
        assert_eq!(codecs(&ast, id).await.as_deref(), Some("(ulaw|alaw)"));
    }
    polls_past(&seen, 3).await;

    // On ari: a change is pushed, no reload.
    let reloaded_at = last_reload(&ast).await;
    let reload_count = reloads(&ast);
    let before = d.last_run_id().await;
    let renamed: Vec<(&str, &str)> = ids.iter().map(|i| (*i, if *i == "2001" { "Lead" } else { "Agent" })).collect();
    std::fs::write(d.specs.join("team.yaml"), spec(&renamed)).expect("write");
    let run = d
        .run_where("the run renaming 2001", |r| {
            r["id"].as_i64().is_some_and(|id| id > before) && r["outcome"] == "applied"
        })
        .await;
    assert_eq!(run["reloaded"], false, "{run:#}");
    assert_eq!(option(&ast, "2001", "callerid").await.as_deref(), Some("\"Lead\" <2001>"));
    polls_past(&seen, 3).await;
    assert_eq!(last_reload(&ast).await, reloaded_at, "no reload in the ari phase");
    assert_eq!(reloads(&ast), reload_count, "no reload in the ari phase (Asterisk's log)");

    // ari → file.
    let before = d.last_run_id().await;
    d.halt().await;
    let run = restarted_on(&mut d, ApplyTarget::File, before, "ari → file").await;
    assert_eq!(run["outcome"], "applied", "{run:#}");
    assert!(run["reasons"].to_string().contains("4 extension(s) written into the managed file"), "{run:#}");
    let handover = run["id"].as_i64().unwrap_or_default();
    let next = d.run_where("the first run on file", |r| r["id"].as_i64().is_some_and(|id| id > handover)).await;
    assert!(next["outcome"] == "noop" || next["outcome"] == "applied", "{next:#}");
    let db = astdb(&ast).await;
    assert!(!db.contains("/asterisk-gitops/"), "astdb's copies are gone:\n{db}");
    assert!(!d.settings.state_dir.join("ari-pushed.conf").exists(), "the record is gone with them");
    let managed = std::fs::read_to_string(ast.managed_file()).expect("managed");
    for id in ids {
        assert!(managed.contains(&format!("[{id}]")), "{id} in the managed file:\n{managed}");
        let name = if id == "2001" { "Lead" } else { "Agent" };
        assert_eq!(option(&ast, id, "callerid").await, Some(format!("\"{name}\" <{id}>")));
        assert_eq!(codecs(&ast, id).await.as_deref(), Some("(ulaw|alaw)"));
    }
    polls_past(&seen, 3).await;
    stop.store(true, Ordering::Relaxed);
    poller.await.expect("the poller ends");
    let misses = seen.misses.lock().expect("lock").clone();
    assert!(
        misses.is_empty(),
        "missing at some poll ({} polls):\n{}",
        seen.polls.load(Ordering::Relaxed),
        misses.join("\n")
    );
    for p in &phones {
        let uri = format!("sip:{}@127.0.0.1:{}", p.extension, p.port);
        assert_eq!(contacts(&ast, &p.extension).await, [uri], "still registered at the end");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_whose_file_copy_asterisk_refuses_keeps_its_astdb_copy_and_the_next_start_finishes() {
    let Some(build) = require("real::handover::refused_file_copy") else { return };
    let ast = Asterisk::start(&build, Options::live("handover-refused").expect("snippet")).await.expect("starts");
    let ids = ["2001", "2002"];
    let team: Vec<(&str, &str)> = ids.iter().map(|i| (*i, "Agent")).collect();
    let mut d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, &spec(&team), |f| {
        f.apply = Some(asterisk_gitops::config::ApplyFileConfig { target: Some("ari".into()), ..Default::default() });
    })
    .await;
    for id in ids {
        wait("pushed", LIVE, || async { astdb(&ast).await.contains(&format!("/asterisk-gitops/endpoint/{id}")) }).await;
    }
    let phones: Vec<sipp::Phone> = ids.iter().map(|i| sipp::Phone::new(i, &format!("pw{i}"))).collect();
    for p in &phones {
        assert!(p.register_for(ast.sip_addr(), 3600).await.ok(), "sipp registers");
    }
    let registered: Vec<Vec<String>> = {
        let mut v = Vec::new();
        for id in ids {
            v.push(contacts(&ast, id).await);
        }
        v
    };
    let before = d.last_run_id().await;
    d.halt().await;
    // The record says 2002's endpoint has a codec Asterisk does not know:
    // written into the managed file, Asterisk refuses that copy.
    let record_path = d.settings.state_dir.join("ari-pushed.conf");
    let record = std::fs::read_to_string(&record_path).expect("the record");
    let broken = record.replacen("[2002]\ntype = endpoint\n", "[2002]\ntype = endpoint\nallow = nosuchcodec\n", 1);
    assert_ne!(broken, record, "the record's shape changed: update this test");
    std::fs::write(&record_path, broken).expect("write");

    let run = restarted_on(&mut d, ApplyTarget::File, before, "ari → file").await;
    assert_eq!(run["outcome"], "failed", "{run:#}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("endpoint 2002") && error.contains("put back"), "{run:#}");
    assert!(!error.contains("2001"), "2001 moved: {run:#}");
    assert_eq!(option(&ast, "2002", "callerid").await.as_deref(), Some("\"Agent\" <2002>"), "astdb's copy serves");
    let db = astdb(&ast).await;
    assert!(db.contains("/asterisk-gitops/endpoint/2002"), "{db}");
    assert!(!db.contains("2001") && !db.contains("/aor/2002") && !db.contains("/auth/2002"), "the rest moved:\n{db}");
    assert!(record_path.exists(), "the record stays while astdb holds some of it");

    // The first run on file writes the managed file as rendered; the next
    // start finishes the hand-over.
    let handover = run["id"].as_i64().unwrap_or_default();
    let next = d
        .run_where("the first run on file", |r| {
            r["id"].as_i64().is_some_and(|id| id > handover) && r["outcome"] == "applied"
        })
        .await;
    let after = next["id"].as_i64().unwrap_or_default();
    d.halt().await;
    let run = restarted_on(&mut d, ApplyTarget::File, after, "ari → file").await;
    assert_eq!(run["outcome"], "applied", "{run:#}");
    assert!(!astdb(&ast).await.contains("/asterisk-gitops/"), "astdb's copies are gone");
    assert!(!record_path.exists(), "and the record with them");
    assert_eq!(codecs(&ast, "2002").await.as_deref(), Some("(ulaw|alaw)"), "the file's 2002");
    for (id, was) in ids.iter().zip(&registered) {
        assert_eq!(&contacts(&ast, id).await, was, "{id} still registered");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_astdb_wizard_nothing_is_handed_over_and_the_file_stays_in_force() {
    let Some(build) = require("real::handover::without_astdb_wizard") else { return };
    // Step 1 of the procedure forgotten: Asterisk's sorcery.conf as it ships.
    let ast = Asterisk::start(&build, Options::named("handover-no-astdb")).await.expect("Asterisk starts");
    let mut d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, &spec(&[("2001", "Agent")]), |_| {}).await;
    wait("2001 live", LIVE, || async { endpoint(&ast, "2001").await.is_some() }).await;
    let phone = sipp::Phone::new("2001", "pw2001");
    assert!(phone.register_for(ast.sip_addr(), 3600).await.ok(), "sipp registers");
    let managed = std::fs::read_to_string(ast.managed_file()).expect("managed");

    let before = d.last_run_id().await;
    d.halt().await;
    let run = restarted_on(&mut d, ApplyTarget::Ari, before, "file → ari").await;
    assert_eq!(run["outcome"], "failed", "{run:#}");
    assert!(run["error"].to_string().contains("is the astdb wizard first in sorcery.conf?"), "{run:#}");
    assert_eq!(run["reloaded"], false, "{run:#}");
    assert_eq!(std::fs::read_to_string(ast.managed_file()).expect("managed"), managed, "the file is untouched");
    assert!(!astdb(&ast).await.contains("/asterisk-gitops/"), "no copy left in astdb");
    assert_eq!(option(&ast, "2001", "callerid").await.as_deref(), Some("\"Agent\" <2001>"));
    assert_eq!(contacts(&ast, "2001").await.len(), 1, "still registered");
    d.stop().await;
}

/// With two nodes (`nodes:`), the second is handed over too, with its own
/// files: on `file → ari` its managed file moves into its astdb (without
/// it, its first run's ARI PUTs are refused: the file holds the objects),
/// and on `ari → file` what its own record says was pushed moves back
/// into its managed file (without it, astdb's copies would win every
/// lookup). A phone registered on it stays registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_nodes_the_second_is_handed_over_too_with_its_own_files() {
    let Some(build) = require("real::handover::with_two_nodes") else { return };
    let a = Asterisk::start(&build, Options::live("handover-node-a").expect("snippet")).await.expect("a starts");
    let b = Asterisk::start(&build, Options::live("handover-node-b").expect("snippet")).await.expect("b starts");
    let ids = ["2101", "2102"];
    let team: Vec<(&str, &str)> = ids.iter().map(|i| (*i, "Agent")).collect();
    let mut d = Daemon::start_with(&a, Store::Sqlite, Source::Dir, &spec(&team), |f| {
        f.ami = None;
        f.ari = None;
        f.nodes = Some(vec![node_config("a", &a), node_config("b", &b)]);
    })
    .await;
    for ast in [&a, &b] {
        for id in ids {
            wait("the file target's extensions live on both", LIVE, || async { endpoint(ast, id).await.is_some() })
                .await;
        }
    }
    let b_state = d.settings.nodes.get(1).map(|n| n.state_dir.clone()).expect("node b's state directory");
    let phone = sipp::Phone::new("2101", "pw2101");
    let reg = phone.register_for(b.sip_addr(), 3600).await;
    assert!(reg.ok(), "sipp registers on b:\n{}", reg.log);
    let contact = contacts(&b, "2101").await;
    assert_eq!(contact.len(), 1, "{contact:?}");

    // file → ari: b's managed file emptied into b's astdb.
    let before = d.last_run_id().await;
    d.halt().await;
    restarted_on(&mut d, ApplyTarget::Ari, before, "file → ari").await;
    wait("node b's managed file handed into its astdb", LIVE, || async {
        let db = astdb(&b).await;
        ids.iter().all(|id| db.contains(&format!("/asterisk-gitops/endpoint/{id}")))
            && !std::fs::read_to_string(b.managed_file()).unwrap_or_default().contains('[')
    })
    .await;
    wait("node b on ari: its first run pushed what it holds", LIVE, || async {
        let (_, st) = d.get("/status").await;
        let b = st["nodes"].as_array().and_then(|n| n.iter().find(|n| n["name"] == "b").cloned());
        b.is_some_and(|b| b["lastApply"]["outcome"] == "applied" || b["lastApply"]["outcome"] == "noop")
    })
    .await;
    assert!(b_state.join("ari-pushed.conf").exists(), "node b's own record of what it pushed");
    for id in ids {
        assert_eq!(option(&b, id, "callerid").await, Some(format!("\"Agent\" <{id}>")), "{id} on b");
    }
    assert_eq!(contacts(&b, "2101").await, contact, "the contact on b survived");

    // ari → file: b's astdb copies back into b's managed file.
    let before = d.last_run_id().await;
    d.halt().await;
    restarted_on(&mut d, ApplyTarget::File, before, "ari → file").await;
    wait("node b's astdb handed back into its managed file", LIVE, || async {
        let managed = std::fs::read_to_string(b.managed_file()).unwrap_or_default();
        !astdb(&b).await.contains("/asterisk-gitops/") && ids.iter().all(|id| managed.contains(&format!("[{id}]")))
    })
    .await;
    wait("node b's record gone with its astdb copies", LIVE, || async { !b_state.join("ari-pushed.conf").exists() })
        .await;
    for id in ids {
        assert_eq!(option(&b, id, "callerid").await, Some(format!("\"Agent\" <{id}>")), "{id} on b");
    }
    assert_eq!(contacts(&b, "2101").await, contact, "the contact on b survived both hand-overs");
    d.stop().await;
}
