//! Git as the source of truth, end to end: the daemon follows a bare
//! repository over file://, a signed webhook makes it fetch and apply at
//! once, a force-push and an unreachable remote are reported, and an API
//! edit becomes a commit on the remote that the daemon then applies.

use asterisk_gitops::config::{FileConfig, Overrides, SecretString, Settings};
use asterisk_standin::StandIn;
use git2::{Repository, Signature};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const HOOK: &str = "hook-secret-42";
const TOKEN: &str = "admin-token-42";

fn team(numbers: &[&str]) -> String {
    let mut s =
        String::from("defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n");
    for n in numbers {
        s.push_str(&format!("  - extension: \"{n}\"\n    displayName: Agent {n}\n    md5Cred: {SECRET}\n"));
    }
    s
}

fn commit_push(repo: &Repository, files: &[(&str, &str)], message: &str, force: bool) -> String {
    let root = repo.workdir().expect("workdir").to_path_buf();
    let mut index = repo.index().expect("index");
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        index.add_path(Path::new(path)).expect("add");
    }
    index.write().expect("index");
    let tree = repo.find_tree(index.write_tree().expect("tree")).expect("tree");
    let sig = Signature::now("Bob Admin", "bob@example.com").expect("sig");
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    let oid = repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).expect("commit");
    let spec = if force { "+HEAD:refs/heads/main" } else { "HEAD:refs/heads/main" };
    repo.find_remote("origin").expect("origin").push(&[spec], None).expect("push");
    oid.to_string()
}

/// A minimal HTTP/1.1 request over a plain socket.
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

struct Daemon {
    dir: tempfile::TempDir,
    bare: PathBuf,
    bob: Repository,
    standin: StandIn,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    async fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("pbx.git");
        Repository::init_bare(&bare).expect("bare");
        let bob = Repository::init(dir.path().join("bob")).expect("bob");
        bob.remote("origin", &format!("file://{}", bare.display())).expect("remote");
        commit_push(&bob, &[("extensions.d/team.yaml", &team(&["1001", "1002"]))], "Seed the team", false);

        let ast = dir.path().join("asterisk");
        let (standin, ami) = crate::support::web::standin_in(&ast).await;
        let file = FileConfig {
            ami: Some(ami),
            webhook_secret: Some(SecretString::new(HOOK)),
            admin_token: Some(SecretString::new(TOKEN)),
            ..Default::default()
        };
        let flags = Overrides {
            state_dir: Some(dir.path().join("state")),
            managed_file: Some(ast.join("pjsip_gitops.conf")),
            git_url: Some(format!("file://{}", bare.display())),
            ..Default::default()
        };
        let settings = Settings::resolve(flags, file, &|_| None).expect("settings");
        let (addr, stop, task) = crate::support::serve(settings).await;
        let d = Daemon { dir, bare, bob, standin, addr, stop: Some(stop), task: Some(task) };
        let c = d.standin.control();
        wait_for("the first run", Duration::from_secs(30), || c.endpoints() == ["1001", "1002"]).await;
        d
    }

    async fn webhook(&self) -> u16 {
        let body = r#"{"ref":"refs/heads/main"}"#;
        let sig = asterisk_gitops::http::webhook::github_signature(body.as_bytes(), HOOK.as_bytes());
        http(
            self.addr,
            "POST",
            "/hooks/git",
            &[("X-Hub-Signature-256", sig), ("Content-Type", "application/json".into())],
            body,
        )
        .await
        .0
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("joins").expect("serve ends cleanly");
        }
    }
}

/// The recorded run that satisfies `pred`, searched among all recorded runs
/// (newest first). Runs are recorded after Asterisk has reloaded, so the
/// record can lag what the stand-in shows, and the newest record may be
/// another run's: the predicate must say which run the test caused.
async fn run_where(
    d: &Daemon,
    what: &str,
    pred: impl Fn(&asterisk_gitops::db::RunSummary) -> bool,
) -> asterisk_gitops::db::RunDetail {
    let url = format!("sqlite://{}/state/asterisk-gitops.db", d.dir.path().display());
    let db = asterisk_gitops::db::Db::connect(&url, &Default::default()).await.expect("db");
    let within = Duration::from_secs(30);
    let deadline = Instant::now() + within;
    loop {
        let runs = db.runs(1000).await.expect("runs");
        if let Some(found) = runs.iter().find(|r| pred(r)) {
            let run = db.run(found.id).await.expect("run").expect("exists");
            db.close().await;
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for a recorded run: {what}; recorded: {:?}",
            runs.iter()
                .map(|r| (r.id, r.trigger.as_str(), r.outcome.as_str(), r.revision.as_deref()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_and_its_webhook_are_applied_at_once() {
    let d = Daemon::start().await;
    // Unsigned or wrongly signed: 401, nothing happens.
    let body = r#"{"ref":"refs/heads/main"}"#;
    assert_eq!(http(d.addr, "POST", "/hooks/git", &[], body).await.0, 401);
    assert_eq!(http(d.addr, "POST", "/hooks/git", &[("X-Hub-Signature-256", "sha256=00".into())], body).await.0, 401);

    let commit =
        commit_push(&d.bob, &[("extensions.d/team.yaml", &team(&["1001", "1002", "1003"]))], "Add 1003", false);
    let sent = Instant::now();
    assert_eq!(d.webhook().await, 202);
    let c = d.standin.control();
    wait_for("1003 in Asterisk", Duration::from_secs(30), || c.endpoints().contains(&"1003".to_string())).await;
    let took = sent.elapsed();
    let _ = writeln_stderr(&format!("webhook → endpoint live: {took:?}"));
    let run = run_where(&d, &format!("the run of {commit}, applied"), |r| {
        r.revision.as_deref() == Some(commit.as_str()) && r.outcome == "applied"
    })
    .await;
    assert_eq!(run.summary.revision.as_deref(), Some(commit.as_str()));
    assert_eq!(run.summary.subject.as_deref(), Some("Add 1003"));
    assert_eq!(run.summary.trigger, "webhook");
    d.stop().await;
}

fn writeln_stderr(s: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "{s}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_push_is_applied_and_reported() {
    let d = Daemon::start().await;
    // Rewrite history: a new root commit with a different team.
    let c = d.standin.control();
    let rewritten = {
        let head = d.bob.head().expect("head").peel_to_commit().expect("commit").id();
        d.bob.set_head_detached(head).expect("detach");
        let sig = Signature::now("Bob Admin", "bob@example.com").expect("sig");
        let text = team(&["2001"]);
        let blob = d.bob.blob(text.as_bytes()).expect("blob");
        let mut sub = d.bob.treebuilder(None).expect("tb");
        sub.insert("team.yaml", blob, 0o100644).expect("insert");
        let sub = sub.write().expect("tree");
        let mut root = d.bob.treebuilder(None).expect("tb");
        root.insert("extensions.d", sub, 0o040000).expect("insert");
        let oid = {
            let tree = d.bob.find_tree(root.write().expect("tree")).expect("tree");
            d.bob.commit(None, &sig, &sig, "Rewritten history", &tree, &[]).expect("commit")
        };
        d.bob
            .find_remote("origin")
            .expect("origin")
            .push(&[format!("+{oid}:refs/heads/main").as_str()], None)
            .expect("force push");
        oid.to_string()
    };
    assert_eq!(d.webhook().await, 202);
    // Two deletions of two: within the prune guard's floor, so it applies.
    wait_for("the rewritten team", Duration::from_secs(30), || c.endpoints() == ["2001"]).await;
    // The run of the rewritten commit, not whichever run was recorded last
    // (the startup run's record can still be the newest).
    let run = run_where(&d, &format!("the run of the force-pushed {rewritten}, applied"), |r| {
        r.revision.as_deref() == Some(rewritten.as_str()) && r.outcome == "applied"
    })
    .await;
    assert!(run.summary.warning.as_deref().is_some_and(|w| w.contains("force-pushed")), "{:?}", run.summary.warning);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_keeps_the_last_good_config() {
    let d = Daemon::start().await;
    let moved = d.dir.path().join("moved.git");
    std::fs::rename(&d.bare, &moved).expect("take the remote away");
    assert_eq!(d.webhook().await, 202);
    // The run the webhook caused once the remote was gone: the only failed one.
    let run =
        run_where(&d, "a failed run triggered by the webhook", |r| r.trigger == "webhook" && r.outcome == "failed")
            .await;
    assert!(
        run.summary.error.as_deref().is_some_and(|e| e.contains("cannot fetch") && e.contains("last good config")),
        "{:?}",
        run.summary.error
    );
    assert_eq!(d.standin.control().endpoints(), ["1001", "1002"], "nothing deleted");
    std::fs::rename(&moved, &d.bare).expect("bring it back");
    commit_push(&d.bob, &[("extensions.d/team.yaml", &team(&["1001", "1002", "1004"]))], "Add 1004", false);
    assert_eq!(d.webhook().await, 202);
    let c = d.standin.control();
    wait_for("convergence", Duration::from_secs(30), || c.endpoints().contains(&"1004".to_string())).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_edit_the_remote_cannot_take_is_a_503_that_says_why() {
    let d = Daemon::start().await;
    let moved = d.dir.path().join("moved.git");
    std::fs::rename(&d.bare, &moved).expect("take the remote away");
    let body = r#"{"extension":"1006","password":"Gone2025pw","displayName":"Nobody","context":"from-internal","transport":"transport-udp","codecs":"ulaw"}"#;
    let (status, resp) = http(
        d.addr,
        "POST",
        "/extensions",
        &[("Authorization", format!("Bearer {TOKEN}")), ("Content-Type", "application/json".into())],
        body,
    )
    .await;
    assert_eq!(status, 503, "{resp}");
    // The body gives the write-back's reason (the same text the log gets at warn), no secret.
    let json: serde_json::Value = serde_json::from_str(&resp).expect("a JSON body");
    let message = json["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("git: "), "{resp}");
    assert!(message.contains("pbx.git"), "the reason names the remote it could not reach: {resp}");
    assert!(!resp.contains("Gone2025pw"), "{resp}");
    std::fs::rename(&moved, &d.bare).expect("bring it back");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_edit_becomes_a_commit_that_the_daemon_applies() {
    let d = Daemon::start().await;
    let body = r#"{"extension":"1005","password":"Soundz2025","displayName":"Test User","context":"from-internal","transport":"transport-udp","codecs":"ulaw,alaw,g729"}"#;
    let (status, resp) = http(
        d.addr,
        "POST",
        "/extensions",
        &[("Authorization", format!("Bearer {TOKEN}")), ("Content-Type", "application/json".into())],
        body,
    )
    .await;
    assert_eq!(status, 201, "{resp}");
    assert!(!resp.contains("Soundz2025"));
    let c = d.standin.control();
    wait_for("1005 in Asterisk", Duration::from_secs(30), || c.endpoints().contains(&"1005".to_string())).await;
    // The remote has the commit, authored by the API user, with md5Cred only.
    let repo = Repository::open_bare(&d.bare).expect("bare");
    let head = repo.find_reference("refs/heads/main").and_then(|r| r.peel_to_commit()).expect("head");
    assert_eq!((head.summary(), head.author().name()), (Some("Add extension 1005 (Test User)"), Some("admin")));
    let entry = head.tree().expect("tree").get_path(Path::new("extensions.d/1005.yaml")).expect("file");
    let text = String::from_utf8_lossy(repo.find_blob(entry.id()).expect("blob").content()).into_owned();
    assert!(text.contains("md5Cred:") && !text.contains("Soundz2025"), "{text}");
    d.stop().await;
}
