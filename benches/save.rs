//! File saved → reload sent, for a one-extension change in a 10k-extension
//! spec directory: the daemon watches the directory (notify, debounced), a
//! file is rewritten, and the clock stops when the stand-in receives the
//! reload. Includes the debounce (100 ms by default).
//!
//!     cargo bench --bench save

use asterisk_gitops::config::{AmiFileConfig, FileConfig, Overrides, SecretString, Settings};
use asterisk_standin::{StandIn, StandInConfig};
use std::time::{Duration, Instant};

const N: usize = 10_000;
const ROUNDS: usize = 9;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = dir.path().join("extensions.d");
    asterisk_gitops::estate::write(&specs, N).expect("estate");
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
        ..Default::default()
    };
    let flags = Overrides {
        state_dir: Some(dir.path().join("state")),
        spec_dir: Some(specs.clone()),
        managed_file: Some(ast.join("pjsip_gitops.conf")),
        ..Default::default()
    };
    let mut settings = Settings::resolve(flags, file, &|_| None).expect("settings");
    // Only the file watcher should trigger runs while we measure.
    settings.reconcile.interval = Duration::from_secs(3600);
    let debounce = settings.reconcile.debounce;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(asterisk_gitops::app::run(settings, listener, async {
        let _ = stopped.await;
    }));
    let c = standin.control();
    while c.endpoints().len() < N {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let path = specs.join("sales/0000.yaml");
    let original = std::fs::read_to_string(&path).expect("read");
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let text = if round % 2 == 0 {
            original.replacen("Agent 100000", "Agent 100000 (moved)", 1)
        } else {
            original.clone()
        };
        let reloads = c.reloads();
        let started = Instant::now();
        std::fs::write(&path, text).expect("write");
        while c.reloads() == reloads {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    times.sort();
    println!(
        "file saved → reload sent, one extension in {N}, debounce {} ms: median {:.0} ms, fastest {:.0} ms, slowest {:.0} ms ({ROUNDS} rounds)",
        debounce.as_millis(),
        times[ROUNDS / 2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[ROUNDS - 1].as_secs_f64() * 1000.0
    );
    let _ = stop.send(());
    let _ = task.await;
}
