//! Call-event ingestion: the call logger against the stand-in's ARI,
//! writing into PostgreSQL (DATABASE_URL) or, without it, SQLite.
//!
//!     DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench calls
//!
//! Plays CALLS calls in waves of WAVE: each call is StasisStart → (the
//! logger subscribes and continues) StasisEnd → ChannelStateChange (Up) →
//! ChannelHangupRequest → ChannelDestroyed, five events, two REST calls.
//! Reports events/s from the first StasisStart to the last row completed,
//! which includes the REST round trips and every database write.

use asterisk_gitops::asterisk::ari::{Ari, AriConfig};
use asterisk_gitops::calls::{CallLogConfig, CallLogStats, run};
use asterisk_gitops::config::SecretString;
use asterisk_standin::{StandIn, StandInConfig};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

const CALLS: usize = 10_000;
const WAVE: usize = 500;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = asterisk_standin::write_operator_conf(dir.path(), "pjsip_gitops.conf").expect("conf");
    std::fs::write(dir.path().join("pjsip_gitops.conf"), "").expect("managed");
    let s = StandIn::start(StandInConfig { pjsip_conf: conf, user: "ari".into(), secret: "ari-secret".into() })
        .await
        .expect("stand-in");
    let (db, backend) = support::database(dir.path(), "agt_bench_calls").await;
    let ari = Ari::new(AriConfig {
        url: s.ari_url(),
        user: "ari".into(),
        password: SecretString::new("ari-secret"),
        app: "callcenter".into(),
        timeout: Duration::from_secs(10),
    })
    .expect("client");
    let stats = Arc::new(CallLogStats::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run(db.clone(), "default", ari, CallLogConfig::default(), stats.clone(), rx));
    let c = s.control();
    while !c.app_connected("callcenter") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    let mut worst_lag = Duration::ZERO;
    for wave in 0..CALLS / WAVE {
        let ids: Vec<String> = (0..WAVE)
            .map(|i| {
                c.start_call("callcenter", "1001", "Agent", "from-internal", &format!("9989{:08}", wave * WAVE + i))
                    .expect("call")
            })
            .collect();
        let t = Instant::now();
        while !ids.iter().all(|i| c.continued(i)) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        worst_lag = worst_lag.max(t.elapsed());
        for id in &ids {
            c.answer(id);
        }
        for id in &ids {
            c.hang_up(id, 16);
        }
    }
    let target = CALLS as u64;
    while stats.calls_completed.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let events = stats.events.load(Ordering::Relaxed);
    println!(
        "{backend}: {CALLS} calls, {events} events in {:.2} s = {:.0} events/s ({:.0} calls/s); \
         worst wave of {WAVE} StasisStarts until all continued: {} ms; errors: {}",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        CALLS as f64 / elapsed.as_secs_f64(),
        worst_lag.as_millis(),
        stats.errors.load(Ordering::Relaxed),
    );
    let _ = stop.send(true);
    let _ = task.await;
    db.close().await;
}
