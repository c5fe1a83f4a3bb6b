//! Daemons that take over from each other (issue 17, part B): two `serve`
//! replicas, real processes, on one PostgreSQL database (the test's own),
//! one real Asterisk. One leads (the advisory lock), the other serves reads
//! and hands writes to the spec directory; SIGKILL of the leader in the
//! middle of a run, a call up while the leader changes, and the lock
//! connection terminated under the leader (fencing).

use super::{SEED_BODY, TOKEN, asterisk, endpoint, wait};
use asterisk_real::{AMI_USER, ARI_USER, Asterisk, require, sipp};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);

/// The test's own PostgreSQL database, dropped at the end.
struct Database {
    server: String,
    name: String,
    url: String,
}

impl Database {
    async fn create() -> Option<Database> {
        let (db, server, name) = crate::support::db::postgres().await?;
        db.close().await;
        let url = crate::support::db::replace_db(&server, &name);
        Some(Database { server, name, url })
    }

    async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.expect("PostgreSQL")
    }

    async fn drop_db(self) {
        if let Ok(admin) = sqlx::PgPool::connect(&self.server).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&admin).await;
            admin.close().await;
        }
    }
}

/// One `serve` replica: the binary, on the shared spec directory, managed
/// file and database, its own state directory, its log (JSON lines) kept.
struct Replica {
    id: String,
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    log: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Replica {
    async fn start(id: &str, ast: &Asterisk, db: &Database, specs: &Path, state: &Path, extra: &[String]) -> Replica {
        let mut args: Vec<String> = vec!["--managed-file".into(), ast.managed_file().display().to_string()];
        args.extend(["--ami-addr".into(), ast.ami_addr().to_string(), "--ami-user".into(), AMI_USER.into()]);
        args.extend(["--ari-url".into(), ast.ari_url(), "--ari-user".into(), ARI_USER.into()]);
        args.extend(extra.iter().cloned());
        let secrets =
            [("ASTERISK_GITOPS_AMI_SECRET", &ast.ami_secret), ("ASTERISK_GITOPS_ARI_PASSWORD", &ast.ari_password)];
        Replica::spawn(id, db, specs, state, &args, &secrets).await
    }

    /// A replica whose Asterisk servers are all named in the config file
    /// among `extra` (`nodes:`).
    async fn start_on_nodes(id: &str, db: &Database, specs: &Path, state: &Path, extra: &[String]) -> Replica {
        Replica::spawn(id, db, specs, state, extra, &[]).await
    }

    async fn spawn(
        id: &str,
        db: &Database,
        specs: &Path,
        state: &Path,
        args: &[String],
        secrets: &[(&str, &String)],
    ) -> Replica {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_asterisk-gitops"));
        c.args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0", "--instance-id", id])
            .args(args)
            .arg("--spec-dir")
            .arg(specs)
            .arg("--state-dir")
            .arg(state)
            .envs(secrets.iter().map(|(k, v)| (*k, v.as_str())))
            .env("DATABASE_URL", &db.url)
            .env("ASTERISK_GITOPS_ADMIN_TOKEN", TOKEN)
            .env("ASTERISK_GITOPS_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().expect("spawn serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        {
            let log = log.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                let mut addr_tx = Some(addr_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && v["message"] == "asterisk-gitops is running"
                        && let Some(tx) = addr_tx.take()
                    {
                        let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_string());
                    }
                    log.lock().expect("lock").push_str(&format!("{line}\n"));
                }
            });
        }
        let listen = tokio::time::timeout(LIVE, addr_rx).await;
        let addr = match listen {
            Ok(Ok(a)) => a.parse().expect("listen address"),
            _ => panic!("replica {id} did not start:\n{}", log.lock().expect("lock")),
        };
        Replica { id: id.to_string(), child, addr, log, http: reqwest::Client::new() }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.addr))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(e) => (0, Value::String(format!("no answer: {e}"))),
        }
    }

    async fn status(&self) -> Value {
        self.call("GET", "/status", None).await.1
    }

    async fn metrics(&self) -> String {
        match self.call("GET", "/metrics", None).await.1 {
            Value::String(s) => s,
            other => other.to_string(),
        }
    }

    async fn wait_leading(&self, within: Duration) {
        wait(&format!("{} leads", self.id), within, || async { self.status().await["leader"] == true }).await;
    }

    fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// How many runs this replica's log says it finished.
    fn runs_logged(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"reconcile finished\"") || l.contains("\"reconcile did not apply\""))
            .count()
    }

    async fn sigkill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM: a clean stop.
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
        }
    }
}

/// The shared directories of a pair of replicas.
struct Pair {
    dir: tempfile::TempDir,
    specs: PathBuf,
    /// Passed to both (a git remote, a config file).
    extra: Vec<String>,
}

impl Pair {
    fn new(yaml: &str) -> Pair {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs = dir.path().join("extensions.d");
        std::fs::create_dir_all(&specs).expect("mkdir");
        if !yaml.is_empty() {
            std::fs::write(specs.join("team.yaml"), yaml).expect("write specs");
        }
        Pair { dir, specs, extra: Vec::new() }
    }

    /// Both replicas following the branch main of a bare repository (its
    /// first commit pushed by `bob`), resyncing only every 10 minutes: a
    /// change reaches the leader by a trigger, not by a poll.
    fn on_git() -> (Pair, git2::Repository) {
        let mut pair = Pair::new("");
        let bare = pair.dir.path().join("pbx.git");
        git2::Repository::init_bare(&bare).expect("bare");
        let bob = git2::Repository::init(pair.dir.path().join("bob")).expect("bob");
        bob.remote("origin", &format!("file://{}", bare.display())).expect("remote");
        super::e2e::push(&bob, "extensions: []\n", "Start");
        let config = pair.dir.path().join("config.yaml");
        std::fs::write(&config, "reconcile:\n  interval: 600\n").expect("config");
        pair.extra = ["--git-url", &format!("file://{}", bare.display()), "--git-interval", "600", "--config"]
            .iter()
            .map(|s| s.to_string())
            .chain([config.display().to_string()])
            .collect();
        (pair, bob)
    }

    async fn replica(&self, id: &str, ast: &Asterisk, db: &Database) -> Replica {
        Replica::start(id, ast, db, &self.specs, &self.dir.path().join(format!("state-{id}")), &self.extra).await
    }

    /// `a` started first and leading, then `b` (a follower).
    async fn start(&self, ast: &Asterisk, db: &Database) -> (Replica, Replica) {
        let a = self.replica("replica-a", ast, db).await;
        a.wait_leading(LIVE).await;
        // Its start-up run recorded: whatever the test does next is a run of its own.
        wait("replica-a's first run", LIVE, || async {
            a.call("GET", "/runs?limit=1", None).await.1.as_array().is_some_and(|r| !r.is_empty())
        })
        .await;
        let b = self.replica("replica-b", ast, db).await;
        wait("replica-b answers", LIVE, || async { b.call("GET", "/readyz", None).await.0 == 200 }).await;
        (a, b)
    }
}

/// `n` generated extensions moved into the spec directory at once (so the
/// watcher sees the change whole); returns once `leader`'s run of them is
/// under way (its Reconciling step began after the move).
async fn a_large_change_under_way(pair: &Pair, leader: &Replica, n: usize) {
    let staging = pair.dir.path().join("staging");
    asterisk_gitops::estate::write(&staging, n).expect("estate");
    let mark = chrono::Utc::now();
    for entry in std::fs::read_dir(&staging).expect("staging") {
        let entry = entry.expect("entry");
        std::fs::rename(entry.path(), pair.specs.join(entry.file_name())).expect("move in");
    }
    wait("the leader's run of the change is under way", LIVE, || async {
        let s = leader.status().await;
        s["reconciling"] == true
            && s["reconcilingSince"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t >= mark)
    })
    .await;
}

/// `b` leads within 10 s, in an epoch after `epoch`, and then holds
/// `extensions` extensions, every one synced.
async fn took_over_and_synced(b: &Replica, epoch: i64, extensions: usize) {
    b.wait_leading(Duration::from_secs(10)).await;
    let sb = b.status().await;
    assert_eq!(sb["leaderId"], b.id, "{sb:#}");
    assert!(sb["leaderEpoch"].as_i64().is_some_and(|e| e > epoch), "a new epoch: {sb:#}");
    wait(&format!("{extensions} extensions synced"), Duration::from_secs(120), || async {
        let s = b.status().await;
        s["extensions"] == extensions as i64 && s["notSynced"] == 0
    })
    .await;
}

/// (creates, deletes) of every applied run that created at least `creates`.
async fn applied_runs_creating(db: &Database, creates: usize) -> Vec<(i64, i64)> {
    let pool = db.pool().await;
    let rows =
        sqlx::query_as("SELECT creates, deletes FROM reconcile_runs WHERE outcome = 'applied' AND creates >= $1")
            .bind(creates as i64)
            .fetch_all(&pool)
            .await
            .expect("runs");
    pool.close().await;
    rows
}

/// The calls `r` lists that started at or after `since`.
async fn calls_since(r: &Replica, since: &str) -> Vec<Value> {
    r.call("GET", &format!("/calls?since={since}&limit=100"), None).await.1["calls"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A call from 2101 to 2102 placed on `at` (both registered there), held
/// for `hold`, answered; `since` is when it was placed.
struct UpCall {
    placing: tokio::task::JoinHandle<sipp::Outcome>,
    answering: sipp::Answering,
    since: String,
}

impl UpCall {
    /// Places the call and returns once `logger`'s log has it answered.
    async fn place(at: std::net::SocketAddr, logger: &Replica, hold: Duration) -> UpCall {
        let (caller, callee) = (sipp::Phone::new("2101", "Calls2026"), sipp::Phone::new("2102", "Calls2026"));
        for p in [&caller, &callee] {
            assert!(p.register(at).await.ok(), "{} registers", p.extension);
        }
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let answering = callee.answer();
        let placing = tokio::spawn(async move { caller.call(at, "2102", hold).await });
        let call = UpCall { placing, answering, since };
        wait("the call's row, answered", LIVE, || async {
            call.rows(logger).await.first().is_some_and(|c| c["answeredBy"] == "2102")
        })
        .await;
        call
    }

    /// The calls `r` lists since the call was placed.
    async fn rows(&self, r: &Replica) -> Vec<Value> {
        calls_since(r, &self.since).await
    }

    /// Waits for the call to complete and for `r`'s log to say so; the log
    /// holds it exactly once, answered, hung up by the caller: that row.
    async fn completed_once(self, r: &Replica) -> Value {
        let UpCall { placing, answering, since } = self;
        let placed = placing.await.expect("joins");
        assert!(placed.ok(), "the call completes:\n{}", placed.log);
        assert!(answering.done(Duration::from_secs(20)).await.ok());
        wait("the call completed in the log", LIVE, || async {
            calls_since(r, &since)
                .await
                .first()
                .is_some_and(|c| c["endTime"].is_string() && c["disposition"] != "unknown")
        })
        .await;
        let rows = calls_since(r, &since).await;
        assert_eq!(rows.len(), 1, "exactly one row: {rows:#?}");
        let call = rows[0].clone();
        assert_eq!(
            (&call["caller"], &call["callee"], &call["disposition"], &call["hangupBy"]),
            (&Value::from("2101"), &Value::from("2102"), &Value::from("answered"), &Value::from("2101")),
            "{call:#}"
        );
        call
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_a_write_through_the_follower_is_applied_by_the_leader() {
    let Some(build) = require("real::leader::one_replica_leads") else { return };
    let Some(db) = Database::create().await else { return };
    let ast = asterisk(&build, "leader-pair").await;
    let pair = Pair::new("");
    let (a, b) = pair.start(&ast, &db).await;

    let (sa, sb) = (a.status().await, b.status().await);
    assert_eq!((&sa["leader"], &sb["leader"]), (&Value::Bool(true), &Value::Bool(false)), "{sa:#}\n{sb:#}");
    assert_eq!(sb["leaderId"], "replica-a", "the follower names the leader: {sb:#}");
    assert_eq!(sa["leaderId"], "replica-a", "{sa:#}");
    assert!(sb["leaderSince"].is_string() && sb["leaderEpoch"].as_i64().is_some_and(|e| e >= 1), "{sb:#}");
    assert!(a.metrics().await.contains("\nasterisk_gitops_leader 1\n"), "{}", a.metrics().await);
    assert!(b.metrics().await.contains("\nasterisk_gitops_leader 0\n"), "{}", b.metrics().await);
    let page = reqwest::get(format!("http://{}/ui", b.addr)).await.expect("page").text().await.expect("text");
    assert!(page.contains("another replica: replica-a"), "the overview names the leader:\n{page}");

    // A write through the follower: written to the spec directory, applied
    // by the leader, visible through both.
    let (status, body) = b.call("POST", "/extensions", Some(SEED_BODY)).await;
    assert_eq!(status, 201, "{body}");
    wait("1001 live in Asterisk", LIVE, || async { endpoint(&ast, "1001").await.is_some() }).await;
    wait("1001 synced, seen by the follower", LIVE, || async {
        b.call("GET", "/extensions/1001", None).await.1["syncStatus"] == "synced"
    })
    .await;
    // The run that applied it is the leader's: the follower ran none.
    let pool = db.pool().await;
    let (applied,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM reconcile_runs WHERE outcome = 'applied' AND creates = 1")
            .fetch_one(&pool)
            .await
            .expect("runs");
    assert_eq!(applied, 1, "one run created 1001");
    assert!(a.runs_logged() >= 1, "the leader ran:\n{}", a.log());
    assert_eq!(b.runs_logged(), 0, "the follower never reconciles:\n{}", b.log());
    pool.close().await;
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_git_remote_a_write_through_the_follower_is_committed_and_the_leader_applies_that_revision() {
    let Some(build) = require("real::leader::git_write_through_the_follower") else { return };
    let Some(db) = Database::create().await else { return };
    let ast = asterisk(&build, "leader-git").await;
    let (pair, _bob) = Pair::on_git();
    let (a, b) = pair.start(&ast, &db).await;

    let (status, body) = b.call("POST", "/extensions", Some(SEED_BODY)).await;
    assert_eq!(status, 201, "{body}");
    let commit = body["change"]["commit"].as_str().expect("the write's commit").to_string();
    // The run carrying that revision: the leader's, asked for by the
    // follower (trigger manual; the resync is 10 minutes away).
    let deadline = tokio::time::Instant::now() + LIVE;
    let run = loop {
        let (_, runs) = b.call("GET", "/runs?limit=50", None).await;
        if let Some(r) = runs.as_array().and_then(|r| r.iter().find(|r| r["revision"] == commit.as_str())).cloned() {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "no run of {commit} within {LIVE:?}: {runs:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((&run["outcome"], &run["trigger"]), (&Value::from("applied"), &Value::from("manual")), "{run:#}");
    assert!(endpoint(&ast, "1001").await.is_some(), "1001 is live");
    assert_eq!(b.call("GET", "/extensions/1001", None).await.1["syncStatus"], "synced");
    assert_eq!(b.runs_logged(), 0, "the follower never reconciles:\n{}", b.log());
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_in_the_middle_of_a_run_is_replaced_and_nothing_is_applied_twice_or_lost() {
    let Some(build) = require("real::leader::killed_in_the_middle_of_a_run") else { return };
    let Some(db) = Database::create().await else { return };
    let ast = asterisk(&build, "leader-kill").await;
    let pair = Pair::new("");
    let (mut a, b) = pair.start(&ast, &db).await;
    let epoch = a.status().await["leaderEpoch"].as_i64().expect("epoch");

    // A change of N extensions at once; its run under way: kill the leader.
    const N: usize = 1000;
    a_large_change_under_way(&pair, &a, N).await;
    a.sigkill().await;

    // The follower takes over (a new epoch), finishes, every extension live.
    took_over_and_synced(&b, epoch, N).await;
    let listed = ast.cli("pjsip show endpoints").await;
    let names: std::collections::BTreeSet<&str> = listed
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("Endpoint:"))
        // `100000/"Agent 100000" <100000>`: the id, then the caller id.
        .filter_map(|rest| rest.trim_start().split('/').next())
        .collect();
    let held = (0..N).filter(|i| names.contains((100_000 + i).to_string().as_str())).count();
    assert_eq!(held, N, "Asterisk holds every extension of the change");
    // Exactly one run applied the creates (the killed one never committed, or
    // committed and the new leader found nothing to do): nothing twice.
    assert_eq!(applied_runs_creating(&db, 1).await, [(N as i64, 0)], "one applied run created the {N}");
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_up_while_the_leader_changes_is_logged_once_and_completed() {
    let Some(build) = require("real::leader::a_call_up_while_the_leader_changes") else { return };
    let Some(db) = Database::create().await else { return };
    let ast = asterisk(&build, "leader-call").await;
    let pair = Pair::new(&super::calls::spec(&["2101", "2102"]));
    let (mut a, b) = pair.start(&ast, &db).await;
    wait("2101, 2102 live", LIVE, || async {
        endpoint(&ast, "2101").await.is_some() && endpoint(&ast, "2102").await.is_some()
    })
    .await;
    // Answered, in the log (the leader's CEL logger), then the leader dies.
    let up = UpCall::place(ast.sip_addr(), &b, Duration::from_secs(8)).await;
    a.sigkill().await;
    b.wait_leading(Duration::from_secs(10)).await;
    let call = up.completed_once(&b).await;
    let (_, detail) = b.call("GET", &format!("/calls/{}", call["channelId"].as_str().unwrap_or_default()), None).await;
    assert_eq!(detail["legs"].as_array().map(Vec::len), Some(2), "one leg per channel, none twice: {detail:#}");
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lock_connection_is_terminated_stops_reconciling_and_the_other_takes_over() {
    let Some(build) = require("real::leader::lock_connection_terminated") else { return };
    let Some(db) = Database::create().await else { return };
    let ast = asterisk(&build, "leader-fence").await;
    let pair = Pair::new("");
    let (a, b) = pair.start(&ast, &db).await;
    let pool = db.pool().await;
    let pids: Vec<(i32,)> =
        sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1")
            .bind(format!("{} replica-a", asterisk_gitops::db::leader::APPLICATION_NAME))
            .fetch_all(&pool)
            .await
            .expect("pg_stat_activity");
    assert_eq!(pids.len(), 1, "the leader's one lock connection");
    let (ended,): (bool,) =
        sqlx::query_as("SELECT pg_terminate_backend($1)").bind(pids[0].0).fetch_one(&pool).await.expect("terminate");
    assert!(ended);

    b.wait_leading(Duration::from_secs(10)).await;
    wait("replica-a steps down", LIVE, || async { a.status().await["leader"] == false }).await;
    assert!(a.log().contains("lost the leader lock's connection"), "{}", a.log());
    assert_eq!(a.status().await["leaderId"], "replica-b");
    assert!(a.metrics().await.contains("\nasterisk_gitops_leader 0\n"));
    let a_runs = a.runs_logged();

    // A write through the deposed leader is applied by the new one; the old runs nothing.
    let (status, body) = a.call("POST", "/extensions", Some(SEED_BODY)).await;
    assert_eq!(status, 201, "{body}");
    wait("1001 live", LIVE, || async { endpoint(&ast, "1001").await.is_some() }).await;
    wait("1001 synced", LIVE, || async { a.call("GET", "/extensions/1001", None).await.1["syncStatus"] == "synced" })
        .await;
    assert!(b.runs_logged() >= 1, "{}", b.log());
    assert_eq!(a.runs_logged(), a_runs, "the deposed leader ran nothing more:\n{}", a.log());
    pool.close().await;
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

/// Issue 17's whole picture: three real Asterisks reading one realtime
/// PostgreSQL database (also the daemons' own), two `serve` replicas naming
/// them in `nodes:`. A create through the follower is live on all three;
/// the leader killed with SIGKILL in the middle of a 1,000-extension run is
/// replaced, and the new leader finishes: every extension on every node,
/// the rows written once, one applied run, every node verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_realtime_nodes_and_two_daemons_a_killed_leader_is_replaced_and_every_node_gets_every_change() {
    let Some(build) = require("real::leader::three_realtime_nodes_and_two_daemons") else { return };
    let Some(db) = Database::create().await else { return };
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_asterisk-gitops"))
        .args(["realtime", "init"])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("runs the binary");
    assert!(init.status.success(), "realtime init: {}", String::from_utf8_lossy(&init.stderr));
    let mut nodes = Vec::new();
    for n in ["a", "b", "c"] {
        let rt = asterisk_real::RealtimeDb::from_url(&db.url).expect("a postgres:// URL");
        let opts = asterisk_real::Options::realtime(&format!("fleet-rt-{n}"), rt).expect("the realtime snippets");
        nodes.push(Asterisk::start(&build, opts).await.unwrap_or_else(|e| panic!("Asterisk {n} starts: {e}")));
    }
    let mut pair = Pair::new(&super::calls::spec(&["2101", "2102"]));
    let mut yaml = String::from("apply: {target: realtime}\nnodes:\n");
    for (name, ast) in ["a", "b", "c"].iter().zip(&nodes) {
        yaml.push_str(&format!(
            "  - name: {name}\n    ami: {{addr: '{}', user: {AMI_USER}, secret: '{}', timeout: 5}}\n    managedFile: {}\n",
            ast.ami_addr(),
            ast.ami_secret,
            ast.managed_file().display()
        ));
    }
    let config = pair.dir.path().join("config.yaml");
    std::fs::write(&config, yaml).expect("config");
    pair.extra = vec!["--config".into(), config.display().to_string()];
    let state = |id: &str| pair.dir.path().join(format!("state-{id}"));
    let mut a = Replica::start_on_nodes("replica-a", &db, &pair.specs, &state("a"), &pair.extra).await;
    a.wait_leading(LIVE).await;
    wait("replica-a's first run", LIVE, || async {
        a.call("GET", "/runs?limit=1", None).await.1.as_array().is_some_and(|r| !r.is_empty())
    })
    .await;
    let b = Replica::start_on_nodes("replica-b", &db, &pair.specs, &state("b"), &pair.extra).await;
    wait("replica-b answers", LIVE, || async { b.call("GET", "/readyz", None).await.0 == 200 }).await;
    let epoch = a.status().await["leaderEpoch"].as_i64().expect("epoch");

    // A create through the follower: live on all three, one set of rows.
    let (code, body) = b.call("POST", "/extensions", Some(SEED_BODY)).await;
    assert_eq!(code, 201, "{body}");
    for ast in &nodes {
        wait("1001 live on every node", LIVE, || async { endpoint(ast, "1001").await.is_some() }).await;
    }

    // A call on node b, answered and in the log (the leader's CEL logger on b).
    for id in ["2101", "2102"] {
        wait("2101, 2102 live on node b", LIVE, || async { endpoint(&nodes[1], id).await.is_some() }).await;
    }
    let up = UpCall::place(nodes[1].sip_addr(), &b, Duration::from_secs(15)).await;

    // 1,000 extensions moved in at once; the leader killed while it runs
    // them, the call still up.
    const N: usize = 1000;
    a_large_change_under_way(&pair, &a, N).await;
    let rows = up.rows(&b).await;
    assert!(rows.first().is_some_and(|c| c["endTime"].is_null()), "the call is still up as the leader dies: {rows:#?}");
    a.sigkill().await;

    // The other daemon leads (a new epoch) and finishes on every node.
    took_over_and_synced(&b, epoch, N + 3).await;
    let last = (100_000 + N - 1).to_string();
    for ast in &nodes {
        wait("the change's last extension on every node", LIVE, || async { endpoint(ast, &last).await.is_some() })
            .await;
    }
    let pool = db.pool().await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select object_type::text, count(*) from asterisk_gitops_realtime group by 1 order by 1")
            .fetch_all(&pool)
            .await
            .expect("the inventory");
    let every = (N + 3) as i64;
    assert_eq!(rows, [("aor".into(), every), ("auth".into(), every), ("endpoint".into(), every)], "one row each");
    let endpoints: i64 = sqlx::query_scalar("select count(*) from ps_endpoints").fetch_one(&pool).await.expect("count");
    assert_eq!(endpoints, every, "no endpoint row twice or left out");
    assert_eq!(applied_runs_creating(&db, N).await, [(N as i64, 0)], "one applied run created the {N}");
    pool.close().await;

    // Every node verified by the new leader, each reachable.
    wait("every node verified by the new leader", Duration::from_secs(120), || async {
        let s = b.status().await;
        let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
        nodes.len() == 3
            && nodes.iter().all(|n| {
                n["reachable"] == true
                    && (n["lastApply"]["outcome"] == "applied" || n["lastApply"]["outcome"] == "noop")
            })
    })
    .await;
    // The call completes, logged exactly once, on node b.
    let call = up.completed_once(&b).await;
    assert_eq!(call["node"], "b", "{call:#}");
    let log = b.log();
    for ast in &nodes {
        assert!(!log.contains(&ast.ami_secret), "an AMI secret in replica-b's log");
    }
    b.stop().await;
    db.drop_db().await;
}
