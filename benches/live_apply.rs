//! `apply.target: ari` beside `file`, on a real Asterisk 22
//! (crates/asterisk-real, started with the astdb sorcery wizard first, as
//! examples/asterisk/sorcery.conf.snippet says) with the generated estate
//! (10,000 extensions by default). For each target, in the same run, on a
//! fresh Asterisk and `serve` (SQLite):
//!
//! - cold apply: `serve` starts on an empty Asterisk → the last extension
//!   live (seen through AMI, `PJSIPShowEndpoint`);
//! - one extension changed: its spec file saved → the new caller id live;
//! - API PUT → the new caller id live (the request's start to live);
//! - no-op runs: `POST /reconcile` with nothing to change, their recorded
//!   duration (the daemon's own clock: start to commit), two in a row.
//!
//! Three runs.
//!
//! `BENCH_NODES=3` with the realtime target: three Asterisks reading the one
//! realtime database and one `serve` naming them in `nodes:`; every figure
//! is then until the change is live on ALL of them (each watched through
//! its own AMI), and the no-op runs include verifying every node.
//!
//!     cargo bench --bench live_apply            # N=10000
//!     BENCH_N=1000 cargo bench --bench live_apply
//!     BENCH_TARGETS=ari BENCH_RUNS=1 cargo bench --bench live_apply   # a quick look
//!     BENCH_TARGETS=realtime DATABASE_URL=postgres://… cargo bench --bench live_apply
//!     BENCH_TARGETS=realtime BENCH_NODES=3 DATABASE_URL=postgres://… cargo bench --bench live_apply
#[path = "support/mod.rs"]
mod support;

use asterisk_gitops::asterisk::Asterisk as Client;
use asterisk_gitops::asterisk::ami::AmiConfig;
use asterisk_real::{Asterisk, Options};
use std::time::{Duration, Instant};

const RUNS: usize = 3;
const TOKEN: &str = "bench-admin-token-0123456789";

#[derive(Clone, Copy, Debug)]
struct Figures {
    cold: Duration,
    /// With several nodes: serve's start → the cold apply verified on every
    /// node through its AMI (zero with one node).
    verified: Duration,
    /// With several nodes: one extension saved right after the cold apply
    /// is recorded, while the nodes are still verifying it → live on all.
    during: Duration,
    saved: Duration,
    api: Duration,
    noop_first: Duration,
    noop: Duration,
}

fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let build = support::real_asterisk();
    // BENCH_LOG=asterisk_gitops=debug: the daemon's own step timings on stderr.
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // BENCH_TARGETS=ari (or file) and BENCH_RUNS=1 for a quick look; the figures in BENCHMARKS.md are both, three runs.
    let targets = std::env::var("BENCH_TARGETS").unwrap_or_else(|_| "file,ari".into());
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(RUNS);
    // BENCH_NODES=3: the realtime target's fleet (the other targets have one node here).
    let nodes: usize = std::env::var("BENCH_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let mut all: Vec<(&str, String, Vec<Figures>)> = ["file", "ari", "realtime"]
        .into_iter()
        .filter(|t| targets.split(',').any(|x| x == *t))
        .map(|t| {
            let nodes = if t == "realtime" { nodes } else { 1 };
            (t, if nodes > 1 { format!("{t} on {nodes} nodes") } else { t.to_string() }, Vec::new())
        })
        .collect();
    for run in 0..runs {
        for (target, label, figures) in all.iter_mut() {
            let nodes = if *target == "realtime" { nodes } else { 1 };
            let f = rt.block_on(one_run(&build, n, run, target, nodes));
            println!(
                "run {} {label:>4}: cold apply {:.2} s{}; saved → live {:.1} ms; API PUT → live {:.1} ms; no-op run {:.0} ms (the first {:.0} ms)",
                run + 1,
                f.cold.as_secs_f64(),
                on_every_node(f.verified, f.during),
                ms(f.saved),
                ms(f.api),
                ms(f.noop),
                ms(f.noop_first)
            );
            figures.push(f);
        }
    }
    for (_, label, figures) in &all {
        let median = |pick: fn(&Figures) -> Duration| {
            let mut v: Vec<Duration> = figures.iter().map(pick).collect();
            v.sort();
            v[v.len() / 2]
        };
        println!(
            "{n} extensions, {label}, median of {runs}: cold apply {:.2} s{}; saved → live {:.1} ms; API PUT → live {:.1} ms; no-op run {:.0} ms (the first {:.0} ms)",
            median(|f| f.cold).as_secs_f64(),
            on_every_node(median(|f| f.verified), median(|f| f.during)),
            ms(median(|f| f.saved)),
            ms(median(|f| f.api)),
            ms(median(|f| f.noop)),
            ms(median(|f| f.noop_first))
        );
    }
}

/// The cold apply's verification on every node, when there are several,
/// and a change saved while it was under way.
fn on_every_node(verified: Duration, during: Duration) -> String {
    if verified.is_zero() {
        return String::new();
    }
    format!(
        " (verified on every node {:.2} s; saved during that verification → live {:.1} ms)",
        verified.as_secs_f64(),
        ms(during)
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn client(ast: &Asterisk) -> Client {
    Client::new(ami(ast))
}

fn ami(ast: &Asterisk) -> AmiConfig {
    AmiConfig {
        addr: ast.ami_addr().to_string(),
        user: asterisk_real::AMI_USER.into(),
        secret: ast.ami_secret.clone(),
        timeout: Duration::from_secs(60),
        events: false,
    }
}

/// Watches each of `nodes` until it reports `callerid` for `id` ([`Probe`]
/// on each); [`Probes::seen`] says when the last of them saw it.
struct Probes(Vec<Probe>);

impl Probes {
    fn start(nodes: &[Asterisk], id: &str, callerid: &str) -> Probes {
        Probes(nodes.iter().map(|ast| Probe::start(ast, id, callerid)).collect())
    }

    /// How long after `since` the last node was seen with the change.
    async fn seen(self, since: Instant) -> Duration {
        let mut last = Duration::ZERO;
        for p in self.0 {
            last = last.max(p.seen(since).await);
        }
        last
    }
}

/// Watches for Asterisk to report `callerid` for `id`, from a thread and
/// runtime of its own (on the daemon's runtime its polls waited behind the
/// daemon's work, and the figures said more about that than about when the
/// change was live), connected before the change is made; [`Probe::seen`]
/// says when it saw it.
struct Probe(std::thread::JoinHandle<Instant>);

impl Probe {
    fn start(ast: &Asterisk, id: &str, callerid: &str) -> Probe {
        let (cfg, id, callerid) = (ami(ast), id.to_string(), callerid.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("probe runtime");
            rt.block_on(async move {
                let probe = Client::new(cfg);
                let started = Instant::now();
                let mut first = true;
                loop {
                    let answer = probe.endpoint(&id).await;
                    if first {
                        first = false;
                        let _ = ready_tx.send(());
                    }
                    if let Ok(Some(d)) = answer
                        && d.callerid.contains(&callerid)
                    {
                        let seen = Instant::now();
                        probe.close().await;
                        return seen;
                    }
                    assert!(started.elapsed() < Duration::from_secs(120), "{id} did not go live in 2 minutes");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        });
        // Connected and logged in: its next polls are what the figure measures.
        let _ = ready_rx.recv();
        Probe(thread)
    }

    /// How long after `since` the probe saw the change.
    async fn seen(self, since: Instant) -> Duration {
        let seen = tokio::task::spawn_blocking(move || self.0.join().expect("the probe thread"))
            .await
            .expect("the probe's waiter");
        seen.saturating_duration_since(since)
    }
}

async fn runs(http: &reqwest::Client, base: &str) -> Vec<serde_json::Value> {
    let r = http.get(format!("{base}/runs?limit=50")).send().await.expect("GET /runs");
    r.json::<Vec<serde_json::Value>>().await.unwrap_or_default()
}

async fn last_id(http: &reqwest::Client, base: &str) -> i64 {
    runs(http, base).await.iter().filter_map(|r| r["id"].as_i64()).max().unwrap_or(0)
}

/// Waits until the run after `before` is recorded (a change is live in
/// Asterisk before its run has verified and recorded it), and then until
/// no run follows for 3 s (a save's second file event makes one more run).
async fn recorded_after(http: &reqwest::Client, base: &str, before: i64) {
    let t = Instant::now();
    while last_id(http, base).await <= before {
        assert!(t.elapsed() < Duration::from_secs(120), "no run recorded after {before} in 2 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = last_id(http, base).await;
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = last_id(http, base).await;
        if now != seen {
            seen = now;
            quiet = Instant::now();
        }
    }
}

/// One run of the figures, on `nodes` Asterisks (more than one: the
/// realtime target's `nodes:`, all reading one database).
/// With several nodes: waits until every node's last apply (`GET /status`)
/// is a verification that passed (`applied` or `noop`) made no earlier than
/// the newest recorded run finished. The loop verifies the other nodes after
/// a run is recorded (after a cold apply every extension on each node), and
/// a change made before that is done would wait for it in the figure.
async fn nodes_verified(http: &reqwest::Client, base: &str) {
    let t = Instant::now();
    let at = |v: &serde_json::Value| v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    let newest = runs(http, base).await.into_iter().max_by_key(|r| r["id"].as_i64().unwrap_or(0));
    let Some(finished) = newest.as_ref().and_then(|r| at(&r["finishedAt"])) else {
        panic!("no recorded run to wait after: {newest:?}")
    };
    loop {
        let status: serde_json::Value = match http.get(format!("{base}/status")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        let done = |n: &serde_json::Value| {
            let last = &n["lastApply"];
            (last["outcome"] == "applied" || last["outcome"] == "noop")
                && at(&last["at"]).is_some_and(|a| a >= finished)
        };
        if !nodes.is_empty() && nodes.iter().all(done) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "the nodes were not all verified in 10 minutes: {status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Extension `id` renamed to `renamed` in its spec file (the first file of
/// the generated estate): the save → live on every Asterisk of `fleet`,
/// returned once the daemon has recorded the run.
async fn saved_live(
    http: &reqwest::Client,
    base: &str,
    fleet: &[Asterisk],
    specs: &std::path::Path,
    id: &str,
    renamed: &str,
) -> Duration {
    let before = last_id(http, base).await;
    let path = specs.join("sales/0000.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    let watch = Probes::start(fleet, id, renamed);
    let saved_at = Instant::now();
    std::fs::write(
        &path,
        text.replacen(&format!("displayName: Agent {id}\n"), &format!("displayName: {renamed}\n"), 1),
    )
    .expect("write");
    let seen = watch.seen(saved_at).await;
    recorded_after(http, base, before).await;
    seen
}

async fn one_run(build: &asterisk_real::Build, n: usize, run: usize, target: &str, nodes: usize) -> Figures {
    // The file target runs on Asterisk as it ships (file objects only); ari needs the astdb wizard.
    // realtime: Asterisk reads a fresh PostgreSQL database (DATABASE_URL's server) made by `realtime init`.
    let name = format!("bench-live-{target}-{run}");
    let realtime_url = if target == "realtime" { Some(realtime_database(&name).await) } else { None };
    let mut fleet = Vec::new();
    for i in 0..nodes {
        let name = if nodes > 1 { format!("{name}-{}", i + 1) } else { name.clone() };
        let opts = match (target, &realtime_url) {
            ("ari", _) => Options::live(&name).expect("sorcery snippet"),
            (_, Some(url)) => {
                Options::realtime(&name, asterisk_real::RealtimeDb::from_url(url).expect("a postgres:// URL"))
                    .expect("realtime snippets")
            }
            _ => Options::named(&name),
        };
        fleet.push(Asterisk::start(build, opts).await.expect("Asterisk starts"));
    }
    let ast = &fleet[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = dir.path().join("extensions.d");
    asterisk_gitops::estate::write(&specs, n).expect("estate");
    let settings = support::daemon_settings(
        ast,
        &dir.path().join("state"),
        &specs,
        support::DaemonOptions {
            ari: true,
            target: (target != "realtime").then_some(target),
            token: Some(TOKEN),
            nodes: if nodes > 1 { &fleet } else { &[] },
        },
    );
    let mut settings = settings;
    if let Some(url) = &realtime_url {
        settings.apply_target = asterisk_gitops::config::ApplyTarget::Realtime;
        settings.realtime_database_url = Some(asterisk_gitops::config::SecretString::new(url));
    }
    let probes: Vec<Client> = fleet.iter().map(client).collect();
    let last = (100_000 + n - 1).to_string();

    // Cold apply: from serve's start to the last extension live (on every node).
    let started = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(asterisk_gitops::app::run(settings, listener, async {
        let _ = stopped.await;
    }));
    for probe in &probes {
        while !matches!(probe.endpoint(&last).await, Ok(Some(_))) {
            assert!(started.elapsed() < Duration::from_secs(600), "cold apply did not finish in 10 minutes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let cold = started.elapsed();
    let http = reqwest::Client::new();
    // Let the first run record itself and settle.
    while !runs(&http, &base).await.iter().any(|r| r["outcome"] == "applied") {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut verified, mut during) = (Duration::ZERO, Duration::ZERO);
    if nodes > 1 {
        // A change while every node still verifies the cold apply (their
        // verifiers run beside the loop, so it should not wait for them).
        during = saved_live(&http, &base, &fleet, &specs, "100002", &format!("Agent 100002 early {run}")).await;
        nodes_verified(&http, &base).await;
        verified = started.elapsed();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // One extension changed: saved → live.
    let saved = saved_live(&http, &base, &fleet, &specs, "100000", &format!("Agent 100000 moved {run}")).await;
    if nodes > 1 {
        nodes_verified(&http, &base).await;
    }

    // API PUT → live.
    let before = last_id(&http, &base).await;
    let renamed = format!("Agent 100001 put {run}");
    let watch = Probes::start(&fleet, "100001", &renamed);
    let put_at = Instant::now();
    let resp = http
        .put(format!("{base}/extensions/100001"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"displayName": renamed}))
        .send()
        .await
        .expect("PUT");
    assert!(resp.status().is_success(), "PUT answered {}", resp.status());
    let api = watch.seen(put_at).await;
    recorded_after(&http, &base, before).await;
    if nodes > 1 {
        nodes_verified(&http, &base).await;
    }

    // No-op runs, by the daemon's own clock: one, and the next.
    let noop_first = noop_run(&http, &base).await;
    let noop = noop_run(&http, &base).await;

    let _ = stop.send(());
    let _ = task.await;
    for probe in probes {
        probe.close().await;
    }
    Figures { cold, verified, during, saved, api, noop_first, noop }
}

/// A fresh database on DATABASE_URL's server with the realtime tables (`realtime init`'s DDL).
async fn realtime_database(name: &str) -> String {
    let server =
        std::env::var("DATABASE_URL").expect("the realtime target's benchmark needs DATABASE_URL (PostgreSQL)");
    let db = format!("bench_rt_{}_{}", std::process::id(), name.replace('-', "_"));
    let admin = sqlx::PgPool::connect(&server).await.expect("PostgreSQL answers");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await.expect("drop");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.expect("create database");
    admin.close().await;
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    let url = format!("{base}/{db}");
    let store = asterisk_gitops::asterisk::realtime::store::Store::lazy(&asterisk_gitops::config::SecretString::new(
        url.clone(),
    ))
    .expect("a pool");
    store.init().await.expect("realtime init");
    store.pool().close().await;
    url
}

async fn noop_run(http: &reqwest::Client, base: &str) -> Duration {
    let before = last_id(http, base).await;
    let resp = http.post(format!("{base}/reconcile")).bearer_auth(TOKEN).send().await.expect("POST /reconcile");
    assert_eq!(resp.status().as_u16(), 202);
    loop {
        if let Some(r) = runs(http, base).await.iter().find(|r| r["id"].as_i64().is_some_and(|id| id > before)) {
            assert_eq!(r["outcome"], "noop", "the run after the PUT had nothing to do: {r}");
            return Duration::from_millis(r["durationMs"].as_u64().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
