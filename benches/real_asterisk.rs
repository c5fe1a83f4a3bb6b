//! On a real Asterisk 22 (crates/asterisk-real) with 10,000 extensions:
//!
//! - cold apply: `serve` starts on an empty Asterisk → every extension live
//!   (the last one seen through AMI, `PJSIPShowEndpoint`);
//! - one extension changed: its spec file saved → the new caller id live in
//!   Asterisk, seen through AMI;
//! - beside them, in the same run, Asterisk's own `Reload` of res_pjsip (the
//!   AMI action the daemon sends), timed on its own: most of the figures
//!   above are this, and it varies with the machine's load (fact 21).
//!
//! Three runs each.
//!
//!     cargo bench --bench real_asterisk            # N=10000
//!     BENCH_N=1000 cargo bench --bench real_asterisk
#[path = "support/mod.rs"]
mod support;

use asterisk_gitops::asterisk::Asterisk as Client;
use asterisk_gitops::asterisk::ami::AmiConfig;
use asterisk_real::{Asterisk, Options};
use std::time::{Duration, Instant};

const RUNS: usize = 3;

fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let build = support::real_asterisk();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut cold = Vec::new();
    let mut change = Vec::new();
    let mut reload = Vec::new();
    for run in 0..RUNS {
        let (c, ch, r) = rt.block_on(one_run(&build, n, run));
        println!(
            "run {}: cold apply {:.2} s; one change → live {:.0} ms; Asterisk's own reload {:.0} ms",
            run + 1,
            c.as_secs_f64(),
            ch.as_secs_f64() * 1000.0,
            r.as_secs_f64() * 1000.0
        );
        cold.push(c);
        change.push(ch);
        reload.push(r);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (c, ch, r) = (median(&mut cold), median(&mut change), median(&mut reload));
    println!(
        "{n} extensions, median of {RUNS}: cold apply {:.2} s; one change → live {:.0} ms; Asterisk's own reload {:.0} ms (change/reload = {:.2})",
        c.as_secs_f64(),
        ch.as_secs_f64() * 1000.0,
        r.as_secs_f64() * 1000.0,
        ch.as_secs_f64() / r.as_secs_f64()
    );
}

fn client(ast: &Asterisk) -> Client {
    Client::new(AmiConfig {
        addr: ast.ami_addr().to_string(),
        user: asterisk_real::AMI_USER.into(),
        secret: ast.ami_secret.clone(),
        timeout: Duration::from_secs(60),
        events: false,
    })
}

async fn one_run(build: &asterisk_real::Build, n: usize, run: usize) -> (Duration, Duration, Duration) {
    let ast = Asterisk::start(build, Options::named(&format!("bench-{run}"))).await.expect("Asterisk starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = dir.path().join("extensions.d");
    asterisk_gitops::estate::write(&specs, n).expect("estate");
    let settings = support::daemon_settings(&ast, &dir.path().join("state"), &specs, support::DaemonOptions::default());
    let probe = client(&ast);
    let last = (100_000 + n - 1).to_string();

    // Cold apply: from serve's start to the last extension live.
    let started = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(asterisk_gitops::app::run(settings, listener, async {
        let _ = stopped.await;
    }));
    while !matches!(probe.endpoint(&last).await, Ok(Some(_))) {
        assert!(started.elapsed() < Duration::from_secs(600), "cold apply did not finish in 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cold = started.elapsed();
    // Let the first run record itself and settle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // One extension changed: saved → live.
    let path = specs.join("sales/0000.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    let renamed = format!("Agent 100000 moved {run}");
    std::fs::write(&path, text.replacen("displayName: Agent 100000\n", &format!("displayName: {renamed}\n"), 1))
        .expect("write");
    let saved = Instant::now();
    loop {
        if let Ok(Some(d)) = probe.endpoint("100000").await
            && d.callerid.contains(&renamed)
        {
            break;
        }
        assert!(saved.elapsed() < Duration::from_secs(120), "the change did not go live in 2 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let change = saved.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Asterisk's own reload of the same estate, through AMI. An endpoint is
    // live before Asterisk's reload has finished, and Asterisk refuses a
    // reload while one is running ("The previous reload command didn't
    // finish yet"): try until one is accepted, and time that one.
    let reload = support::accepted_reload(&probe).await;

    let _ = stop.send(());
    let _ = task.await;
    probe.close().await;
    (cold, change, reload)
}
