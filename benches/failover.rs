//! Failover between two `serve` replicas (real processes) on one
//! PostgreSQL database, against a real Asterisk 22 with a small estate
//! (100 extensions by default): the leader is killed with SIGKILL, and the
//! clock runs from the kill to the standby's `/status` answering
//! `"leader": true`, and to its first run committed (a run row newer than
//! any before the kill). The killed replica is started again as the next
//! standby; `BENCH_ROUNDS` rounds (default 5).
//!
//! `BENCH_TARGET=realtime BENCH_NODES=3`: #17's fleet instead: three
//! Asterisks reading their PJSIP objects from the realtime tables in the
//! replicas' own PostgreSQL database, named in the replicas' `nodes:`; the
//! first run committed is then the one commit that serves all three.
//!
//!     DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench failover
//!     BENCH_N=10000 BENCH_ROUNDS=3 BENCH_TARGET=realtime BENCH_NODES=3 DATABASE_URL=… cargo bench --bench failover
#[path = "support/mod.rs"]
mod support;

use asterisk_real::{AMI_USER, ARI_USER, Asterisk, Options, RealtimeDb};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Replica {
    child: tokio::process::Child,
    base: String,
}

/// How the replicas reach Asterisk: one node with the file target, or a
/// config file naming the realtime fleet's nodes.
enum Fleet<'a> {
    File(&'a Asterisk),
    Realtime(PathBuf),
}

/// The replicas' config file for the realtime fleet: every node with its
/// AMI and ARI, the realtime target on the daemon's own database.
fn realtime_config(dir: &Path, nodes: &[Asterisk]) -> PathBuf {
    let mut yaml = String::from("apply:\n  target: realtime\nnodes:\n");
    for (i, ast) in nodes.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: node-{}\n    ami: {{addr: '{}', user: {AMI_USER}, secret: '{}', timeout: 60}}\n    ari: {{url: '{}', user: {ARI_USER}, password: '{}', timeout: 30}}\n",
            i + 1,
            ast.ami_addr(),
            ast.ami_secret,
            ast.ari_url(),
            ast.ari_password,
        ));
    }
    let path = dir.join("fleet.yaml");
    std::fs::write(&path, yaml).expect("write the config file");
    path
}

async fn start(id: &str, fleet: &Fleet<'_>, url: &str, specs: &Path, state: PathBuf) -> Replica {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_asterisk-gitops"));
    if let Fleet::Realtime(config) = fleet {
        cmd.arg("--config").arg(config);
    }
    cmd.args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0", "--instance-id", id])
        .arg("--spec-dir")
        .arg(specs)
        .arg("--state-dir")
        .arg(state);
    if let Fleet::File(ast) = fleet {
        cmd.arg("--managed-file").arg(ast.managed_file());
        cmd.args(["--ami-addr", &ast.ami_addr().to_string(), "--ami-user", AMI_USER]);
        cmd.env("ASTERISK_GITOPS_AMI_SECRET", &ast.ami_secret);
    }
    let mut child = cmd
        .env("DATABASE_URL", url)
        .env("ASTERISK_GITOPS_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let listen = loop {
        let line = lines.next_line().await.expect("stderr").unwrap_or_else(|| panic!("{id} ended at start"));
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["message"] == "asterisk-gitops is running"
        {
            break v["listen"].as_str().unwrap_or_default().to_string();
        }
    };
    // Keep reading, or a full pipe would stop the process.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Replica { child, base: format!("http://{listen}") }
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    match http.get(url).timeout(Duration::from_secs(5)).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

async fn leads(http: &reqwest::Client, r: &Replica) -> bool {
    get(http, format!("{}/status", r.base)).await["leader"] == true
}

async fn last_run(http: &reqwest::Client, r: &Replica) -> i64 {
    get(http, format!("{}/runs?limit=1", r.base)).await[0]["id"].as_i64().unwrap_or(0)
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < Duration::from_secs(60), "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let realtime = std::env::var("BENCH_TARGET").is_ok_and(|t| t == "realtime");
    let nodes: usize = std::env::var("BENCH_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    assert!(realtime || nodes == 1, "BENCH_NODES is for BENCH_TARGET=realtime");
    let build = support::real_asterisk();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, backend) = support::database(dir.path(), "bench_failover").await;
        assert_eq!(backend, "PostgreSQL", "the failover benchmark needs DATABASE_URL=postgres://…");
        db.close().await;
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
        let url = format!("{}/bench_failover", url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b));
        let mut asterisks = Vec::new();
        let fleet = if realtime {
            // Asterisk's realtime tables in the replicas' own database.
            let store = asterisk_gitops::asterisk::realtime::store::Store::lazy(
                &asterisk_gitops::config::SecretString::new(url.clone()),
            )
            .expect("a pool");
            store.init().await.expect("realtime init");
            store.pool().close().await;
            for i in 0..nodes {
                let db = RealtimeDb::from_url(&url).expect("a postgres:// URL");
                let opts = Options::realtime(&format!("bench-failover-{}", i + 1), db).expect("realtime snippets");
                asterisks.push(Asterisk::start(&build, opts).await.expect("Asterisk starts"));
            }
            Fleet::Realtime(realtime_config(dir.path(), &asterisks))
        } else {
            asterisks.push(Asterisk::start(&build, Options::named("bench-failover")).await.expect("Asterisk starts"));
            Fleet::File(&asterisks[0])
        };
        let specs = dir.path().join("extensions.d");
        asterisk_gitops::estate::write(&specs, n).expect("estate");
        let http = reqwest::Client::new();
        let ids = ["replica-a", "replica-b"];
        let state = |id: &str| dir.path().join(format!("state-{id}"));
        let mut leader = start(ids[0], &fleet, &url, &specs, state(ids[0])).await;
        until("the first leader leads and applies", async || {
            leads(&http, &leader).await && last_run(&http, &leader).await > 0
        })
        .await;
        let mut standby = start(ids[1], &fleet, &url, &specs, state(ids[1])).await;
        until("the standby answers", async || get(&http, format!("{}/status", standby.base)).await["leader"] == false)
            .await;
        let (mut to_leader, mut to_run) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let before = last_run(&http, &leader).await;
            let t = Instant::now();
            leader.child.start_kill().expect("SIGKILL");
            let _ = leader.child.wait().await;
            until("the standby leads", async || leads(&http, &standby).await).await;
            let led = t.elapsed();
            until("its first run committed", async || last_run(&http, &standby).await > before).await;
            let ran = t.elapsed();
            println!("round {round}: leader after {:.0} ms, first run committed after {:.0} ms", ms(led), ms(ran));
            to_leader.push(led);
            to_run.push(ran);
            // The killed one comes back as the next standby.
            let id = ids[round % 2];
            let next = start(id, &fleet, &url, &specs, state(id)).await;
            until("the new standby answers", async || get(&http, format!("{}/status", next.base)).await["leader"] == false)
                .await;
            leader = std::mem::replace(&mut standby, next);
        }
        to_leader.sort();
        to_run.sort();
        println!(
            "failover, {n} extensions, {}, {rounds} rounds: SIGKILL → leader: median {:.0} ms, max {:.0} ms; → first run committed: median {:.0} ms, max {:.0} ms",
            if realtime { format!("realtime on {nodes} node(s)") } else { "file target".to_string() },
            ms(to_leader[rounds / 2]),
            ms(to_leader[rounds - 1]),
            ms(to_run[rounds / 2]),
            ms(to_run[rounds - 1]),
        );
        drop((leader, standby));
        if let Ok(admin) = sqlx::PgPool::connect(&std::env::var("DATABASE_URL").unwrap_or_default()).await {
            let _ = sqlx::query("DROP DATABASE IF EXISTS bench_failover WITH (FORCE)").execute(&admin).await;
        }
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
