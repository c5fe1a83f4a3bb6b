//! Webhook received → reload sent, for a one-extension commit in a
//! 10k-extension repository: the daemon follows a bare repository over
//! file://, a clone pushes a commit changing one extension, a signed push
//! webhook is posted, and the clock stops when the stand-in receives the
//! reload.
//!
//!     cargo bench --bench webhook

use asterisk_gitops::config::{AmiFileConfig, FileConfig, Overrides, SecretString, Settings};
use asterisk_standin::{StandIn, StandInConfig};
use git2::{IndexAddOption, Repository, Signature};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const N: usize = 10_000;
const ROUNDS: usize = 7;
const HOOK: &str = "bench-hook-secret";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(bench());
}

fn commit_all(repo: &Repository, message: &str) {
    let mut index = repo.index().expect("index");
    index.add_all(["*"], IndexAddOption::DEFAULT, None).expect("add");
    index.write().expect("index");
    let tree = repo.find_tree(index.write_tree().expect("tree")).expect("tree");
    let sig = Signature::now("Bench", "bench@example.com").expect("sig");
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).expect("commit");
    repo.find_remote("origin").expect("origin").push(&["HEAD:refs/heads/main"], None).expect("push");
}

async fn webhook(addr: std::net::SocketAddr) -> u16 {
    let body = r#"{"ref":"refs/heads/main"}"#;
    let sig = asterisk_gitops::http::webhook::github_signature(body.as_bytes(), HOOK.as_bytes());
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /hooks/git HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

async fn bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = dir.path().join("pbx.git");
    Repository::init_bare(&bare).expect("bare");
    let work = dir.path().join("work");
    let repo = Repository::init(&work).expect("clone");
    repo.remote("origin", &format!("file://{}", bare.display())).expect("remote");
    asterisk_gitops::estate::write(&work.join("extensions.d"), N).expect("estate");
    commit_all(&repo, "10k extensions");

    let ast = dir.path().join("asterisk");
    std::fs::create_dir_all(&ast).expect("mkdir");
    let conf = asterisk_standin::write_operator_conf(&ast, "pjsip_gitops.conf").expect("conf");
    let standin = StandIn::start(StandInConfig { pjsip_conf: conf, user: "u".into(), secret: "s".into() })
        .await
        .expect("stand-in");
    let file = FileConfig {
        ami: Some(AmiFileConfig {
            addr: Some(standin.ami_addr.to_string()),
            user: Some("u".into()),
            secret: Some(SecretString::new("s")),
            timeout: Some(30.0),
            ..Default::default()
        }),
        webhook_secret: Some(SecretString::new(HOOK)),
        ..Default::default()
    };
    let flags = Overrides {
        state_dir: Some(dir.path().join("state")),
        managed_file: Some(ast.join("pjsip_gitops.conf")),
        git_url: Some(format!("file://{}", bare.display())),
        // Only the webhook should trigger runs while we measure.
        git_interval: Some(3600.0),
        ..Default::default()
    };
    let mut settings = Settings::resolve(flags, file, &|_| None).expect("settings");
    settings.reconcile.interval = Duration::from_secs(3600);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(asterisk_gitops::app::run(settings, listener, async {
        let _ = stopped.await;
    }));
    let c = standin.control();
    while c.endpoints().len() < N {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the first run finish recording before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let file = work.join("extensions.d/sales/0000.yaml");
    let original = std::fs::read_to_string(&file).expect("read");
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let text = if round % 2 == 0 {
            original.replacen("Agent 100000", "Agent 100000 (moved)", 1)
        } else {
            original.clone()
        };
        std::fs::write(&file, text).expect("write");
        commit_all(&repo, &format!("Move agent 100000 ({round})"));
        let reloads = c.reloads();
        let started = Instant::now();
        assert_eq!(webhook(addr).await, 202);
        while c.reloads() == reloads {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(started.elapsed());
        // Let the run verify and record before the next round.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    times.sort();
    println!(
        "webhook → reload sent, one-extension commit in a {N}-extension repository: median {:.0} ms, fastest {:.0} ms, slowest {:.0} ms ({ROUNDS} rounds)",
        times[ROUNDS / 2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[ROUNDS - 1].as_secs_f64() * 1000.0
    );
    let _ = stop.send(());
    let _ = task.await;
}
