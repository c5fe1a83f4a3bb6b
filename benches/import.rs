//! Adoption and bulk work:
//!
//! - `import pjsip` of a generated 10,000-phone pjsip.conf built from
//!   templates (read, assemble, judge every entry, write the spec file);
//! - `import csv` of a 10,000-row FreePBX Bulk Handler export (parse, judge,
//!   hash every password);
//! - on a real Asterisk 22 (skipped with `BENCH_REAL=0`): a 10,000-extension
//!   estate applied by `serve` with the file target, then 1,000 new
//!   extensions posted to `POST /extensions/import` as a Bulk Handler CSV,
//!   timed from the request to the last of them live in Asterisk (seen
//!   through AMI, `PJSIPShowEndpoint`); beside it, in the same run,
//!   Asterisk's own `Reload` of res_pjsip (fact 21). The same with the ari
//!   target (astdb wizard first, no reload).
//!
//! ```text
//! cargo bench --bench import
//! BENCH_REAL=0 cargo bench --bench import     # the import figures only
//! BENCH_TARGETS=ari BENCH_RUNS=1 cargo bench --bench import
//! ```
#[path = "support/mod.rs"]
mod support;

use asterisk_gitops::asterisk::Asterisk as Client;
use asterisk_gitops::asterisk::ami::AmiConfig;
use asterisk_gitops::import::{csv, pjsip};
use asterisk_real::{Asterisk, Options};
use std::time::{Duration, Instant};

const RUNS: usize = 5;
const TOKEN: &str = "bench-admin-token-42";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let n = 10_000;
    let dir = tempfile::tempdir().expect("tmp");
    let (conf, _) = asterisk_gitops::estate::pjsip_conf(n);
    let path = dir.path().join("pjsip.conf");
    std::fs::write(&path, &conf).expect("write");
    let mut times = Vec::new();
    for run in 0..RUNS {
        let out_dir = dir.path().join(format!("out-{run}"));
        let t = Instant::now();
        let out = pjsip::import(std::slice::from_ref(&path), &pjsip::ImportOptions::default()).expect("imports");
        pjsip::write(&out, &out_dir).expect("writes");
        times.push(t.elapsed());
        assert_eq!(out.extensions(), n);
    }
    let all: Vec<String> = times.iter().map(|d| format!("{:.0}", ms(*d))).collect();
    println!(
        "import pjsip, {n} phones from templates ({} KB): median {:.0} ms of {RUNS} ({} ms)",
        conf.len() / 1024,
        ms(median(times.clone())),
        all.join(", ")
    );

    let bulk = asterisk_gitops::estate::bulk_handler_csv(200_000, n);
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let p = csv::entries("bulk.csv", &bulk, "asterisk").expect("parses");
        let yaml = csv::to_yaml(&p.entries, "bulk.csv").expect("yaml");
        times.push(t.elapsed());
        assert_eq!(p.entries.len(), n);
        assert!(!yaml.is_empty());
    }
    println!("import csv, {n}-row Bulk Handler export: median {:.0} ms of {RUNS}", ms(median(times)));

    if std::env::var("BENCH_REAL").is_ok_and(|v| v == "0") {
        return;
    }
    let build = support::real_asterisk();
    if let Ok(filter) = std::env::var("ASTERISK_GITOPS_LOG") {
        let _ = asterisk_gitops::cli::init_logging(&filter, std::io::stderr);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let targets = std::env::var("BENCH_TARGETS").unwrap_or_else(|_| "file,ari".into());
    for target in targets.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let mut live = Vec::new();
        let mut reload = Vec::new();
        for run in 0..runs {
            let (l, r) = rt.block_on(bulk_run(&build, n, run, target));
            match r {
                Some(r) => println!(
                    "run {} {target}: 1,000 imported → live {:.0} ms; Asterisk's own reload {:.0} ms",
                    run + 1,
                    ms(l),
                    ms(r)
                ),
                None => println!("run {} {target}: 1,000 imported → live {:.0} ms (no reload)", run + 1, ms(l)),
            }
            live.push(l);
            reload.extend(r);
        }
        let l = median(live);
        match reload.is_empty() {
            true => println!(
                "{n} + 1,000 extensions, {target}, median of {runs}: POST /extensions/import → the last live {:.2} s",
                l.as_secs_f64()
            ),
            false => {
                let r = median(reload);
                println!(
                    "{n} + 1,000 extensions, {target}, median of {runs}: POST /extensions/import → the last live {:.2} s; Asterisk's own reload {:.2} s (ratio {:.2})",
                    l.as_secs_f64(),
                    r.as_secs_f64(),
                    l.as_secs_f64() / r.as_secs_f64()
                );
            }
        }
    }
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

/// The import's time to live, and (with the file target) Asterisk's own
/// reload of the same estate measured after it.
async fn bulk_run(build: &asterisk_real::Build, n: usize, run: usize, target: &str) -> (Duration, Option<Duration>) {
    let name = format!("bench-import-{target}-{run}");
    let opts = if target == "ari" { Options::live(&name).expect("sorcery snippet") } else { Options::named(&name) };
    let ast = Asterisk::start(build, opts).await.expect("Asterisk starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = dir.path().join("extensions.d");
    asterisk_gitops::estate::write(&specs, n).expect("estate");
    let settings = support::daemon_settings(
        &ast,
        &dir.path().join("state"),
        &specs,
        support::DaemonOptions { ari: target == "ari", target: Some(target), token: Some(TOKEN), ..Default::default() },
    );
    let probe = client(&ast);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(asterisk_gitops::app::run(settings, listener, async {
        let _ = stopped.await;
    }));
    let last_estate = (100_000 + n - 1).to_string();
    let t = Instant::now();
    while !matches!(probe.endpoint(&last_estate).await, Ok(Some(_))) {
        assert!(t.elapsed() < Duration::from_secs(600), "cold apply did not finish in 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the first run record itself and settle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let csv = asterisk_gitops::estate::bulk_handler_csv(200_000, 1000);
    let http = reqwest::Client::new();
    let posted = Instant::now();
    let resp = http
        .post(format!("http://{addr}/extensions/import"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("the daemon answers");
    assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().await.unwrap_or_default());
    println!("  the import answered (written, one edit) after {:.0} ms", ms(posted.elapsed()));
    while !matches!(probe.endpoint("200999").await, Ok(Some(_))) {
        assert!(posted.elapsed() < Duration::from_secs(120), "the import did not go live in 2 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let live = posted.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reload = match target {
        "ari" => None,
        _ => Some(support::accepted_reload(&probe).await),
    };
    let _ = stop.send(());
    let _ = task.await;
    probe.close().await;
    (live, reload)
}
