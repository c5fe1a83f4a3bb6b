//! `apply.target: realtime` on a real Asterisk reading PJSIP objects from a
//! PostgreSQL database the test creates (res_config_pgsql;
//! examples/asterisk/{sorcery.conf.realtime,extconfig.conf,res_pgsql.conf}.snippet):
//! rows written in one transaction are live with no reload; only rows the
//! inventory holds are changed; a value Asterisk refuses, a conflict and a
//! missing column each fail only what they concern.

use super::{Daemon, SEED_BODY, Source, Store, endpoint, wait};
use asterisk_gitops::asterisk::ari::{Ari, AriConfig};
use asterisk_gitops::config::{ApplyFileConfig, FileConfig, RealtimeFileConfig, SecretString};
use asterisk_real::{ARI_USER, Asterisk, Options, RealtimeDb, require, sipp};
use serde_json::Value;
use sqlx::PgPool;
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);
const MD5: &str = "0123456789abcdef0123456789abcdef";

/// A fresh PostgreSQL database for Asterisk's realtime tables (dropped on drop).
struct RealtimeDatabase {
    server: String,
    name: String,
    url: String,
    pool: PgPool,
}

impl RealtimeDatabase {
    async fn create() -> RealtimeDatabase {
        let server = std::env::var("DATABASE_URL").expect("DATABASE_URL: the realtime target needs PostgreSQL");
        let admin = PgPool::connect(&server).await.expect("PostgreSQL answers");
        let name = format!("agt_rt_{}_{}", std::process::id(), crate::support::db::uuid_ish());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create database");
        admin.close().await;
        let url = crate::support::db::replace_db(&server, &name);
        let pool = PgPool::connect(&url).await.expect("the realtime database answers");
        RealtimeDatabase { server, name, url, pool }
    }

    /// `asterisk-gitops realtime init`, the binary, pointed at this database.
    fn init(&self) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_asterisk-gitops"))
            .args(["realtime", "init"])
            .env("ASTERISK_GITOPS_REALTIME_DATABASE_URL", &self.url)
            .env_remove("DATABASE_URL")
            .output()
            .expect("runs the binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "realtime init: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("ps_endpoints"), "{stdout}");
    }

    async fn value(&self, table: &str, id: &str, column: &str) -> Option<Option<String>> {
        sqlx::query_scalar(&format!("select {column}::text from {table} where id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .expect("select")
    }

    async fn inventory(&self) -> Vec<(String, String)> {
        sqlx::query_as("select object_type::text, id::text from asterisk_gitops_realtime order by 1, 2")
            .fetch_all(&self.pool)
            .await
            .expect("the inventory")
    }

    async fn exec(&self, sql: &str) {
        sqlx::query(sql).execute(&self.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn drop(self) {
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&self.server).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&admin).await;
            admin.close().await;
        }
    }
}

fn realtime_target(url: &str) -> impl FnOnce(&mut FileConfig) + '_ {
    move |f: &mut FileConfig| {
        f.apply = Some(ApplyFileConfig {
            target: Some("realtime".into()),
            realtime: Some(RealtimeFileConfig { database_url: Some(SecretString::new(url)) }),
        });
    }
}

async fn realtime_asterisk(build: &asterisk_real::Build, name: &str, db: &RealtimeDatabase) -> Asterisk {
    let opts = Options::realtime(name, RealtimeDb::from_url(&db.url).expect("a postgres:// URL"))
        .expect("examples/asterisk/*realtime* snippets");
    Asterisk::start(build, opts).await.unwrap_or_else(|e| panic!("Asterisk starts: {e}"))
}

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

async fn attribute(ast: &Asterisk, kind: &str, id: &str, name: &str) -> Option<String> {
    let held = ari(ast).get_object(kind, id).await.expect("ARI answers")?;
    held.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

async fn run_after(d: &Daemon, after: i64, outcome: &str, what: &str) -> Value {
    d.run_where(what, |r| r["id"].as_i64().is_some_and(|id| id > after) && r["outcome"] == outcome).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_flow_with_the_realtime_target_is_live_at_once_with_no_reload() {
    let Some(build) = require("real::realtime::the_seeds_flow_with_the_realtime_target") else { return };
    let db = RealtimeDatabase::create().await;
    db.init();
    let ast = realtime_asterisk(&build, "rt-seed", &db).await;
    let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, "", realtime_target(&db.url)).await;
    let reload_time = ari(&ast).info().await.expect("ARI info").status.last_reload_time;
    d.run_where("the first run", |_| true).await;

    // Create: rows in the three tables, live in Asterisk, a phone registers.
    let before = d.last_run_id().await;
    let (status, body) = d.call("POST", "/extensions", Some(SEED_BODY)).await;
    assert_eq!(status, 201, "{body}");
    let run = run_after(&d, before, "applied", "the run creating 1001").await;
    assert_eq!(run["reloaded"], false, "{run:#}");
    assert!(
        run["reasons"].to_string().contains("realtime tables in one transaction (no reload): 1 extension(s) live"),
        "{run:#}"
    );
    assert_eq!(db.value("ps_endpoints", "1001", "context").await, Some(Some("from-internal".into())));
    assert_eq!(db.value("ps_endpoints", "1001", "allow").await, Some(Some("ulaw,alaw,g729".into())));
    assert_eq!(db.value("ps_auths", "1001", "auth_type").await, Some(Some("md5".into())));
    assert!(db.value("ps_aors", "1001", "max_contacts").await.is_some(), "the aor row");
    let managed: Vec<(String, String)> =
        ["aor", "auth", "endpoint"].iter().map(|k| (k.to_string(), "1001".to_string())).collect();
    assert_eq!(db.inventory().await, managed, "the inventory holds what was written");
    assert!(endpoint(&ast, "1001").await.is_some(), "Asterisk finds 1001 at once");
    let phone = sipp::Phone::new("1001", "Soundz2025");
    let reg = phone.register(ast.sip_addr()).await;
    assert!(reg.ok(), "sipp could not register:\n{}", reg.log);

    // Update: the row and Asterisk's view change.
    let before = d.last_run_id().await;
    let (status, body) = d.call("PUT", "/extensions/1001", Some(r#"{"displayName":"Desk One"}"#)).await;
    assert_eq!(status, 200, "{body}");
    run_after(&d, before, "applied", "the run updating 1001").await;
    assert_eq!(db.value("ps_endpoints", "1001", "callerid").await, Some(Some("\"Desk One\" <1001>".into())));
    assert_eq!(attribute(&ast, "endpoint", "1001", "callerid").await.as_deref(), Some("\"Desk One\" <1001>"));

    // Delete: rows and inventory gone, Asterisk no longer finds it.
    let before = d.last_run_id().await;
    let (status, body) = d.call("DELETE", "/extensions/1001", None).await;
    assert!(status == 200 || status == 204, "{status} {body}");
    run_after(&d, before, "applied", "the run deleting 1001").await;
    for table in ["ps_endpoints", "ps_auths", "ps_aors"] {
        assert_eq!(db.value(table, "1001", "id").await, None, "{table} 1001 is gone");
    }
    assert!(db.inventory().await.is_empty());
    wait("1001 gone from Asterisk", LIVE, || async { endpoint(&ast, "1001").await.is_none() }).await;
    let after = ari(&ast).info().await.expect("ARI info").status.last_reload_time;
    assert_eq!(after, reload_time, "no reload");
    let seen = d.seen.lock().expect("lock").join("\n");
    assert!(!seen.contains("Soundz2025"), "a response carried the password");
    let (_, status) = d.get("/status").await;
    assert!(!status.to_string().contains(&db.url), "/status shows no realtime URL");
    d.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_realtime_target_leaves_foreign_rows_alone_heals_its_own_and_fails_only_what_it_must() {
    let Some(build) = require("real::realtime::the_realtime_target_leaves_foreign_rows_alone") else { return };
    let db = RealtimeDatabase::create().await;
    db.init();
    // Rows the daemon did not write: one of an id no spec names, one of an id a spec names.
    db.exec("insert into ps_endpoints (id, context) values ('2999', 'foreign'), ('2002', 'foreign')").await;
    // And one the inventory says is the daemon's, which no spec declares.
    db.exec("insert into ps_aors (id, max_contacts) values ('2500', 1)").await;
    db.exec("insert into asterisk_gitops_realtime (object_type, id) values ('aor', '2500')").await;
    let ast = realtime_asterisk(&build, "rt-foreign", &db).await;
    let entry = |n: &str, extra: &str| format!("  - extension: \"{n}\"\n    md5Cred: {MD5}\n{extra}");
    let specs = |first_name: &str, extra: &str| {
        format!(
            "defaults:\n  context: from-internal\n  transport: transport-udp\n  codecs: [ulaw]\nextensions:\n{}{}{}{extra}",
            entry("2001", &format!("    displayName: {first_name}\n")),
            entry("2002", ""),
            entry("2003", "    options:\n      endpoint:\n        tos_audio: not-a-tos\n"),
        )
    };
    let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, &specs("One", ""), realtime_target(&db.url)).await;
    let run = d.run_where("the first run, degraded", |r| r["outcome"] == "degraded").await;
    let dr = &d;
    let ext = move |n: &'static str| async move { dr.get(&format!("/extensions/{n}")).await.1 };
    wait("2001 synced", LIVE, || async { ext("2001").await["syncStatus"] == "synced" }).await;
    let e2002 = ext("2002").await;
    assert_eq!(e2002["syncStatus"], "failed", "{e2002:#}");
    assert!(e2002.to_string().contains("did not write"), "the conflict is the reason: {e2002:#}");
    let e2003 = ext("2003").await;
    assert_eq!(e2003["syncStatus"], "failed", "{e2003:#}");
    assert!(e2003.to_string().contains("tos_audio"), "Asterisk's refusal names the field: {e2003:#}");
    assert!(run["error"].to_string().contains("2003"), "{run:#}");
    assert_eq!(db.value("ps_endpoints", "2002", "context").await, Some(Some("foreign".into())), "not overwritten");
    assert_eq!(db.value("ps_endpoints", "2999", "context").await, Some(Some("foreign".into())), "never touched");
    assert_eq!(db.value("ps_endpoints", "2003", "id").await, None, "nothing of 2003 written");
    assert_eq!(db.value("ps_auths", "2003", "id").await, None, "nothing of 2003 written");
    assert!(endpoint(&ast, "2001").await.is_some(), "2001 live");
    for table in ["ps_endpoints", "ps_auths", "ps_aors"] {
        let sql = format!("select count(*) from {table} where id like 'asterisk-gitops-scratch-%'");
        let left: i64 = sqlx::query_scalar(&sql).fetch_one(&db.pool).await.expect("count");
        assert_eq!(left, 0, "no scratch object left in {table}");
    }

    // 2002 and 2003 taken out of the specs: 2002's foreign row stays as it is.
    let before = d.last_run_id().await;
    let only_2001 = |name: &str, extra: &str| {
        format!(
            "defaults:\n  context: from-internal\n  transport: transport-udp\n  codecs: [ulaw]\nextensions:\n{}{extra}",
            entry("2001", &format!("    displayName: {name}\n"))
        )
    };
    std::fs::write(d.specs.join("team.yaml"), only_2001("One", "")).expect("write specs");
    d.run_where("a run after 2002 and 2003 left", |r| {
        r["id"].as_i64().is_some_and(|id| id > before) && (r["outcome"] == "applied" || r["outcome"] == "noop")
    })
    .await;
    assert_eq!(db.value("ps_endpoints", "2002", "context").await, Some(Some("foreign".into())), "not deleted");

    // A hand edit of a managed row is drift, and heals; so does the inventory's orphan.
    db.exec("update ps_endpoints set context = 'hacked' where id = '2001'").await;
    assert_eq!(d.call("POST", "/reconcile", None).await.0, 202);
    wait("2001's row healed", LIVE, || async {
        db.value("ps_endpoints", "2001", "context").await == Some(Some("from-internal".into()))
    })
    .await;
    wait("the inventory's orphan 2500 removed", LIVE, || async { db.value("ps_aors", "2500", "id").await.is_none() })
        .await;
    assert!(!db.inventory().await.iter().any(|(_, id)| id == "2500"));
    assert_eq!(db.value("ps_endpoints", "2999", "context").await, Some(Some("foreign".into())), "never touched");
    assert_eq!(db.value("ps_endpoints", "2002", "context").await, Some(Some("foreign".into())), "never touched");

    // A column the tables lack (Asterisk 22 knows rtp_port_start; its migrations give it no column):
    // the run fails naming it and writes nothing, not even 2001's change beside it.
    let before = d.last_run_id().await;
    let extra = entry("2004", "    options:\n      endpoint:\n        rtp_port_start: \"10000\"\n");
    std::fs::write(d.specs.join("team.yaml"), only_2001("Renamed", &extra)).expect("write specs");
    let run = run_after(&d, before, "failed", "the run with a missing column").await;
    assert!(run["error"].to_string().contains("ps_endpoints has no column rtp_port_start"), "{run:#}");
    assert_eq!(db.value("ps_endpoints", "2001", "callerid").await, Some(Some("\"One\" <2001>".into())), "unchanged");
    assert_eq!(db.value("ps_endpoints", "2004", "id").await, None);
    d.stop().await;
    db.drop().await;
}

/// The `nodes` entry of `/status` named `name`.
async fn node_status(d: &Daemon, name: &str) -> Value {
    let (code, st) = d.get("/status").await;
    assert_eq!(code, 200, "{st}");
    st["nodes"].as_array().and_then(|n| n.iter().find(|n| n["name"] == name).cloned()).unwrap_or(Value::Null)
}

/// Waits for node `name`'s last run, one that ended after `after`, to say
/// one of `outcomes`. With shared tables a node's `noop` follows only a
/// verification that passed: what changed stays pending for a node until
/// it is verified (`failed` or `unreachable` until then), so a later run
/// with nothing new may already have replaced the `applied`.
async fn node_run_after(d: &Daemon, name: &str, after: chrono::DateTime<chrono::Utc>, outcomes: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + LIVE;
    loop {
        let s = node_status(d, name).await;
        let at = s["lastApply"]["at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if at.is_some_and(|t| t > after) && outcomes.iter().any(|o| s["lastApply"]["outcome"] == *o) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {name}: no run after {after} ending {outcomes:?}: {s:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three Asterisks (`{prefix}-a`, `-b`, `-c`) reading one fresh realtime
/// database, and a daemon naming them as nodes a, b and c (a first), its
/// first run done.
async fn three_nodes(build: &asterisk_real::Build, prefix: &str) -> (RealtimeDatabase, [Asterisk; 3], Daemon) {
    let db = RealtimeDatabase::create().await;
    db.init();
    let mut nodes = Vec::new();
    for n in ["a", "b", "c"] {
        nodes.push(realtime_asterisk(build, &format!("{prefix}-{n}"), &db).await);
    }
    let Ok(asterisks) = <[Asterisk; 3]>::try_from(nodes) else { panic!("three Asterisks") };
    let node = crate::support::real::node_config;
    let [a, b, c] = &asterisks;
    let nodes = vec![node("a", a), node("b", b), node("c", c)];
    let d = Daemon::start_with(a, Store::Sqlite, Source::Dir, "", |f| {
        realtime_target(&db.url)(f);
        f.ami = None;
        f.ari = None;
        f.nodes = Some(nodes);
    })
    .await;
    d.run_where("the first run", |_| true).await;
    (db, asterisks, d)
}

/// Node `name`, started again, is verified: a run is asked for until one
/// reaches it and it says `applied` or `noop` (its AMI client may still be
/// pausing between reconnects).
async fn verified_once_back(d: &Daemon, name: &str) {
    let deadline = tokio::time::Instant::now() + LIVE;
    loop {
        let asked = chrono::Utc::now();
        assert_eq!(d.call("POST", "/reconcile", None).await.0, 202);
        let deadline_run = tokio::time::Instant::now() + LIVE;
        let s = loop {
            let s = node_status(d, name).await;
            let at = s["lastApply"]["at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            if at.is_some_and(|t| t > asked) {
                break s;
            }
            assert!(tokio::time::Instant::now() < deadline_run, "no run reached node {name} after the ask: {s:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if s["lastApply"]["outcome"] == "applied" || s["lastApply"]["outcome"] == "noop" {
            assert_eq!(s["reachable"], true, "{s:#}");
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {name} never converged once back: {s:#}");
    }
}

/// No response of `d` carried a node's AMI secret or ARI password.
fn no_node_secret_seen(d: &Daemon, nodes: &[Asterisk]) {
    let seen = d.seen.lock().expect("lock").join("\n");
    for ast in nodes {
        assert!(!seen.contains(&ast.ami_secret) && !seen.contains(&ast.ari_password), "a secret in a response");
    }
}

/// Three Asterisks reading one realtime database, one daemon naming them
/// as nodes: one commit serves all three, each verified through its own
/// AMI; one stopped is reported unreachable and holds no other back, and
/// once started again it is verified with what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_realtime_database_are_each_verified() {
    let Some(build) = require("real::realtime::three_nodes_on_one_realtime_database_are_each_verified") else {
        return;
    };
    let (db, mut nodes, d) = three_nodes(&build, "rt-node").await;

    // Created through the API: one commit, live on all three, each verified.
    let (before, asked) = (d.last_run_id().await, chrono::Utc::now());
    let (status, body) = d.call("POST", "/extensions", Some(SEED_BODY)).await;
    assert_eq!(status, 201, "{body}");
    run_after(&d, before, "applied", "the run creating 1001").await;
    for ast in &nodes {
        assert!(endpoint(ast, "1001").await.is_some(), "{}: PJSIPShowEndpoint finds 1001", ast.name);
    }
    for n in ["b", "c"] {
        let s = node_run_after(&d, n, asked, &["applied", "noop"]).await;
        assert_eq!(s["lastApply"]["reloaded"], false, "{s:#}");
    }
    assert_eq!(db.inventory().await.len(), 3, "one set of rows for the three nodes");

    // Node b stopped: a change still goes live on a and c; b is reported.
    nodes[1].stop().await;
    let (before, asked) = (d.last_run_id().await, chrono::Utc::now());
    let (status, body) = d.call("PUT", "/extensions/1001", Some(r#"{"displayName":"Desk Two"}"#)).await;
    assert_eq!(status, 200, "{body}");
    run_after(&d, before, "applied", "the run updating 1001 with b down").await;
    for ast in [&nodes[0], &nodes[2]] {
        assert_eq!(attribute(ast, "endpoint", "1001", "callerid").await.as_deref(), Some("\"Desk Two\" <1001>"));
    }
    node_run_after(&d, "c", asked, &["applied", "noop"]).await;
    let down = node_run_after(&d, "b", asked, &["unreachable"]).await;
    assert_eq!(down["reachable"], false, "{down:#}");
    assert!(down["error"].as_str().is_some_and(|e| !e.contains(&nodes[1].ami_secret)), "{down:#}");

    // Started again: it reads the same tables, and the next run verifies
    // the change it missed.
    nodes[1].start_again().await.expect("node b starts again");
    verified_once_back(&d, "b").await;
    assert_eq!(attribute(&nodes[1], "endpoint", "1001", "callerid").await.as_deref(), Some("\"Desk Two\" <1001>"));
    no_node_secret_seen(&d, &nodes);
    d.stop().await;
    db.drop().await;
}

/// The FIRST node stopped (the one whose run commits): the create is still
/// committed, live on the other two (through their AMI) and verified
/// there; the first is reported unreachable with the change pending, and
/// once started again it is verified and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_node_down_holds_no_commit_back_and_is_verified_once_back() {
    let Some(build) = require("real::realtime::the_first_node_down_holds_no_commit_back_and_is_verified_once_back")
    else {
        return;
    };
    let (db, mut nodes, d) = three_nodes(&build, "rt-first").await;
    nodes[0].stop().await;

    let (before, asked) = (d.last_run_id().await, chrono::Utc::now());
    let (status, body) = d.call("POST", "/extensions", Some(SEED_BODY)).await;
    assert_eq!(status, 201, "{body}");
    let run = run_after(&d, before, "applied", "the run creating 1001 with the first node down").await;
    assert!(run["reasons"].to_string().contains("Asterisk is unreachable"), "the run says it went ahead: {run:#}");
    assert_eq!(db.inventory().await.len(), 3, "committed: the three rows of 1001");
    for ast in &nodes[1..] {
        assert!(endpoint(ast, "1001").await.is_some(), "{}: PJSIPShowEndpoint finds 1001", ast.name);
    }
    for n in ["b", "c"] {
        node_run_after(&d, n, asked, &["applied", "noop"]).await;
    }
    let down = node_run_after(&d, "a", asked, &["unreachable"]).await;
    assert_eq!(down["reachable"], false, "{down:#}");
    assert!(down["error"].as_str().is_some_and(|e| !e.contains(&nodes[0].ami_secret)), "{down:#}");

    // Started again: verified with the change it missed, through its AMI.
    nodes[0].start_again().await.expect("node a starts again");
    verified_once_back(&d, "a").await;
    assert!(endpoint(&nodes[0], "1001").await.is_some(), "a: PJSIPShowEndpoint finds 1001");
    let e1001 = d.get("/extensions/1001").await.1;
    assert_eq!(e1001["syncStatus"], "synced", "{e1001:#}");
    no_node_secret_seen(&d, &nodes);
    d.stop().await;
    db.drop().await;
}

/// A daemon with no record of what it wrote (a replica that never led, a
/// state directory lost) over tables that already hold its rows writes
/// again only the rows that differ from the rendering: the others keep
/// their row version (PostgreSQL's `xmin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_record_of_its_own_only_the_rows_that_differ_are_written_again() {
    let Some(build) = require("real::realtime::with_no_record_of_its_own_only_the_rows_that_differ") else {
        return;
    };
    let db = RealtimeDatabase::create().await;
    db.init();
    let ast = realtime_asterisk(&build, "rt-norecord", &db).await;
    let specs = format!(
        "defaults:\n  context: from-internal\n  transport: transport-udp\n  codecs: [ulaw]\nextensions:\n  - extension: \"3001\"\n    md5Cred: {MD5}\n  - extension: \"3002\"\n    md5Cred: {MD5}\n"
    );
    let mut d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, &specs, realtime_target(&db.url)).await;
    d.run_where("the first run, applied", |r| r["outcome"] == "applied").await;
    wait("3001 and 3002 live", LIVE, || async {
        endpoint(&ast, "3001").await.is_some() && endpoint(&ast, "3002").await.is_some()
    })
    .await;
    d.halt().await;
    let record = d.settings.state_dir.join(asterisk_gitops::asterisk::realtime::RECORD_FILE);
    std::fs::remove_file(&record).unwrap_or_else(|e| panic!("{}: {e}", record.display()));
    db.exec("update ps_endpoints set context = 'elsewhere' where id = '3002'").await;
    let versions = async || {
        let mut v = Vec::new();
        for table in ["ps_endpoints", "ps_auths", "ps_aors"] {
            v.push((table, db.value(table, "3001", "xmin").await));
        }
        v
    };
    let before = versions().await;
    assert!(before.iter().all(|(_, x)| x.is_some()), "{before:?}");
    d.start_again().await;
    wait("3002's row written again as rendered", LIVE, || async {
        db.value("ps_endpoints", "3002", "context").await == Some(Some("from-internal".into()))
    })
    .await;
    assert_eq!(versions().await, before, "3001's rows, already as rendered, were written again");
    // The run writes its record after the rows are committed: wait for it.
    wait("the record written again", LIVE, || async { record.exists() }).await;
    assert!(endpoint(&ast, "3001").await.is_some() && endpoint(&ast, "3002").await.is_some());
    d.stop().await;
    db.drop().await;
}
