//! The hand-over between the apply targets on a real Asterisk 22
//! (crates/asterisk-real, the astdb sorcery wizard first) with the
//! generated estate (1,000 extensions by default): `serve` on `file` until
//! the estate is live, then restarted on `ari` (same state directory), then
//! on `file` again. Each hand-over's own recorded duration (`durationMs`:
//! its start to its end, the daemon's clock) and the time from the restart
//! to the hand-over's run being listed.
//!
//!     cargo bench --bench handover                 # N=1000
//!     BENCH_N=10000 cargo bench --bench handover
#[path = "support/mod.rs"]
mod support;

use asterisk_gitops::config::{ApplyTarget, Settings};
use asterisk_real::{Asterisk, Options};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-admin-token-0123456789";

fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let build = support::real_asterisk();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(one_run(&build, n));
}

async fn runs(http: &reqwest::Client, base: &str) -> Vec<serde_json::Value> {
    let r = http.get(format!("{base}/runs?limit=50")).send().await.expect("GET /runs");
    r.json::<Vec<serde_json::Value>>().await.unwrap_or_default()
}

struct Serving {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn serve(settings: &Settings) -> Serving {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(asterisk_gitops::app::run(settings.clone(), listener, async {
        let _ = stopped.await;
    }));
    Serving { base, stop, task }
}

/// Waits for a run whose reasons contain `needle`; returns it.
async fn run_with(http: &reqwest::Client, base: &str, needle: &str) -> serde_json::Value {
    let t = Instant::now();
    loop {
        if let Some(r) = runs(http, base).await.into_iter().find(|r| r["reasons"].to_string().contains(needle)) {
            return r;
        }
        assert!(t.elapsed() < Duration::from_secs(1800), "no run with {needle:?} in 30 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn one_run(build: &asterisk_real::Build, n: usize) {
    let ast = Asterisk::start(build, Options::live("bench-handover").expect("sorcery snippet")).await.expect("starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = dir.path().join("extensions.d");
    asterisk_gitops::estate::write(&specs, n).expect("estate");
    let mut settings = support::daemon_settings(
        &ast,
        &dir.path().join("state"),
        &specs,
        support::DaemonOptions { ari: true, token: Some(TOKEN), ..Default::default() },
    );
    let http = reqwest::Client::new();

    let s = serve(&settings).await;
    let t = Instant::now();
    while !runs(&http, &s.base).await.iter().any(|r| r["outcome"] == "applied") {
        assert!(t.elapsed() < Duration::from_secs(600), "the file target's first run did not apply in 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = s.stop.send(());
    let _ = s.task.await;

    for (target, needle) in [(ApplyTarget::Ari, "hand-over file → ari"), (ApplyTarget::File, "hand-over ari → file")]
    {
        settings.apply_target = target;
        let restarted = Instant::now();
        let s = serve(&settings).await;
        let r = run_with(&http, &s.base, needle).await;
        let listed = restarted.elapsed();
        assert_eq!(r["outcome"], "applied", "{r}");
        println!(
            "{n} extensions, {needle}: {} ms by its own clock; restart → its run listed {:.2} s",
            r["durationMs"],
            listed.as_secs_f64()
        );
        let _ = s.stop.send(());
        let _ = s.task.await;
    }
}
