//! The call log on a real Asterisk 22 under load: 100 concurrent calls
//! sustained for a minute (sipp places RATE calls a second, each held HOLD
//! seconds, for a minute), CEL read by `calls::cel` into PostgreSQL
//! (DATABASE_URL) or SQLite. Reports how far the logger lagged behind
//! Asterisk (event time as Asterisk stamped it → handled), the backlog, and
//! checks every call has its complete row.
//!
//!     DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench calls_real
use asterisk_gitops::asterisk::ami::AmiConfig;
use asterisk_gitops::calls::{CallLogConfig, CallLogStats, cel};
use asterisk_real::{Asterisk, Options, sipp};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

const RATE: usize = 10;
const HOLD: u64 = 10;
const SECONDS: usize = 60;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let Some(build) = asterisk_real::require("bench calls_real") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, backend) = support::database(dir.path(), "agt_bench_cel_real").await;
    let callee_port = asterisk_real::free_port();
    let managed = format!(
        "[2001]\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw\ntransport = transport-udp\nauth = 2001\naors = 2001\n\n\
         [2001]\ntype = auth\nauth_type = userpass\nusername = 2001\npassword = bench\n\n[2001]\ntype = aor\nmax_contacts = 1\n\n\
         [2002]\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw\ntransport = transport-udp\naors = 2002\n\n\
         [2002]\ntype = aor\ncontact = sip:2002@127.0.0.1:{callee_port}\n\n"
    );
    let opts = Options { managed, rtp_ports: 2000, ..Options::named("bench-calls") };
    let ast = Asterisk::start(&build, opts).await.expect("Asterisk starts");
    let stats = Arc::new(CallLogStats::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let ami = AmiConfig {
        addr: ast.ami_addr().to_string(),
        user: asterisk_real::AMI_USER.into(),
        secret: ast.ami_secret.clone(),
        timeout: Duration::from_secs(10),
        events: false,
    };
    let task = tokio::spawn(cel::run(db.clone(), "default", ami, CallLogConfig::default(), stats.clone(), stop_rx));
    while !stats.connected.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _callee = sipp::answer_many_on(callee_port);
    let total = RATE * SECONDS;
    let caller = sipp::Phone::new("2001", "bench");
    let at = ast.sip_addr();
    let started = Instant::now();
    let placing =
        tokio::spawn(async move { caller.call_many(at, "2002", Duration::from_secs(HOLD), total, RATE).await });
    // Sample the backlog and the concurrent calls while it runs.
    let (mut worst_backlog, mut most_up) = (0u64, 0usize);
    while !placing.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let backlog = stats.events.load(Ordering::Relaxed) - stats.events_handled.load(Ordering::Relaxed);
        worst_backlog = worst_backlog.max(backlog);
        if let Ok(a) = db.active_call_count().await {
            most_up = most_up.max(a as usize);
        }
    }
    let placed = placing.await.expect("joins");
    let sipp_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (stats.calls_completed.load(Ordering::Relaxed) as usize) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let handled = stats.events_handled.load(Ordering::Relaxed).max(1);
    let filter = asterisk_gitops::db::calls::CallFilter { limit: 1000, ..Default::default() };
    let rows = db.calls(&filter).await.expect("calls");
    let answered = rows.iter().filter(|c| c.disposition.as_deref() == Some("answered")).count();
    println!(
        "{backend}: {total} calls ({RATE}/s, held {HOLD} s; sipp {}, {sipp_secs:.1} s), at most {most_up} up at once; \
         {} CEL events; lag event → handled: mean {:.1} ms, max {:.1} ms; worst backlog {worst_backlog} events; \
         rows {} ({answered} answered), errors {}",
        if placed.ok() { "ok" } else { "FAILED" },
        stats.events.load(Ordering::Relaxed),
        stats.lag_sum_micros.load(Ordering::Relaxed) as f64 / handled as f64 / 1000.0,
        stats.lag_max_micros.load(Ordering::Relaxed) as f64 / 1000.0,
        rows.len(),
        stats.errors.load(Ordering::Relaxed),
    );
    if !placed.ok() {
        println!("{}", placed.log.chars().take(3000).collect::<String>());
    }
    let _ = stop.send(true);
    let _ = task.await;
    db.close().await;
}
