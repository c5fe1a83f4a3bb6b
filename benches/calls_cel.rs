//! CEL ingestion: the call log (`calls::cel`) reading CEL events from an AMI
//! peer that replays them as Asterisk 22 sends them, writing into
//! PostgreSQL (DATABASE_URL) or, without it, SQLite.
//!
//!     DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench calls_cel
//!
//! CALLS internal calls, 13 CEL events each, in the order and shape the real
//! Asterisk sent for an answered 1001 → 1002 call (examples/call_sources.rs):
//! CHAN_START ×2, ANSWER ×2, BRIDGE_ENTER ×2, BRIDGE_EXIT ×2, HANGUP ×2,
//! CHAN_END ×2, LINKEDID_END; WAVE calls at a time, interleaved event by
//! event as concurrent calls are. Reports events/s from the first event
//! written to the socket to the last call completed in the database, and
//! checks every call's row (answered, by 1002, cause 16, two legs).

use asterisk_gitops::asterisk::ami::{AmiConfig, Framer};
use asterisk_gitops::calls::{CallLogConfig, CallLogStats, cel};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[path = "support/mod.rs"]
mod support;

const CALLS: usize = 10_000;
const WAVE: usize = 100;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(bench());
}

/// One CEL event as cel_manager writes it.
fn cel(name: &str, chan: &str, uid: &str, linked: &str, extra: &str) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!(
        "Event: CEL\r\nPrivilege: call,all\r\nTimestamp: {}.{:06}\r\nEventName: {name}\r\nAccountCode: \r\n\
         CallerIDnum: 1001\r\nCallerIDname: 1001\r\nCallerIDani: 1001\r\nCallerIDrdnis: \r\nCallerIDdnid: 1002\r\n\
         Exten: 1002\r\nContext: from-internal\r\nChannel: {chan}\r\nApplication: Dial\r\nAppData: PJSIP/1002,20\r\n\
         EventTime: 2026-12-01 14:20:22\r\nAMAFlags: DOCUMENTATION\r\nUniqueID: {uid}\r\nLinkedID: {linked}\r\n\
         Userfield: \r\nPeer: \r\nPeerAccount: \r\nExtra: {extra}\r\n\r\n",
        t.as_secs(),
        t.subsec_micros()
    )
}

/// The 13 events of call `i`, in Asterisk's order.
fn call_events(i: usize) -> Vec<String> {
    let (a, b) = (format!("bench-{i}.0"), format!("bench-{i}.1"));
    let (ca, cb) = (format!("PJSIP/1001-{:08x}", 2 * i), format!("PJSIP/1002-{:08x}", 2 * i + 1));
    let bridge = r#"{"bridge_id":"f151471a-c77f-4972-90b6-8b346254a5dd","bridge_technology":"simple_bridge"}"#;
    let hang_a = format!(r#"{{"hangupcause":16,"hangupsource":"{ca}","dialstatus":"ANSWER"}}"#);
    let hang_b = format!(r#"{{"hangupcause":16,"hangupsource":"{ca}","dialstatus":""}}"#);
    vec![
        cel("CHAN_START", &ca, &a, &a, ""),
        cel("CHAN_START", &cb, &b, &a, ""),
        cel("ANSWER", &cb, &b, &a, ""),
        cel("ANSWER", &ca, &a, &a, ""),
        cel("BRIDGE_ENTER", &cb, &b, &a, bridge),
        cel("BRIDGE_ENTER", &ca, &a, &a, bridge),
        cel("BRIDGE_EXIT", &ca, &a, &a, bridge),
        cel("BRIDGE_EXIT", &cb, &b, &a, bridge),
        cel("HANGUP", &ca, &a, &a, &hang_a),
        cel("CHAN_END", &ca, &a, &a, ""),
        cel("HANGUP", &cb, &b, &a, &hang_b),
        cel("CHAN_END", &cb, &b, &a, ""),
        cel("LINKEDID_END", &cb, &b, &a, ""),
    ]
}

/// An AMI peer: answers Login, Filter (then streams what `events` sends on
/// that connection) and CoreShowChannels (no channels).
async fn peer(listener: tokio::net::TcpListener, events: Arc<tokio::sync::Mutex<Option<mpsc::Receiver<Vec<u8>>>>>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { return };
        let events = events.clone();
        tokio::spawn(async move {
            let _ = sock.write_all(b"Asterisk Call Manager/9.0.0\r\n").await;
            let mut framer = Framer::default();
            let mut buf = vec![0u8; 8192];
            loop {
                let Ok(n) = sock.read(&mut buf).await else { return };
                if n == 0 {
                    return;
                }
                let mut out = Vec::new();
                if framer.feed(&buf[..n], &mut out).is_err() {
                    return;
                }
                for m in out {
                    let id = m.get("ActionID").unwrap_or("").to_string();
                    match m.get("Action").unwrap_or("") {
                        "CoreShowChannels" => {
                            let r = format!(
                                "Response: Success\r\nActionID: {id}\r\nEventList: start\r\nMessage: Channels will follow\r\n\r\n\
                                 Event: CoreShowChannelsComplete\r\nActionID: {id}\r\nEventList: Complete\r\nListItems: 0\r\n\r\n"
                            );
                            let _ = sock.write_all(r.as_bytes()).await;
                        }
                        "Filter" => {
                            let _ =
                                sock.write_all(format!("Response: Success\r\nActionID: {id}\r\n\r\n").as_bytes()).await;
                            let Some(mut rx) = events.lock().await.take() else { continue };
                            while let Some(chunk) = rx.recv().await {
                                if sock.write_all(&chunk).await.is_err() {
                                    return;
                                }
                            }
                            return;
                        }
                        _ => {
                            let _ = sock
                                .write_all(
                                    format!("Response: Success\r\nActionID: {id}\r\nMessage: ok\r\n\r\n").as_bytes(),
                                )
                                .await;
                        }
                    }
                }
            }
        });
    }
}

async fn bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, backend) = support::database(dir.path(), "agt_bench_cel").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(peer(listener, Arc::new(tokio::sync::Mutex::new(Some(rx)))));
    let stats = Arc::new(CallLogStats::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let ami = AmiConfig {
        addr: addr.to_string(),
        user: "bench".into(),
        secret: "bench".into(),
        timeout: Duration::from_secs(10),
        events: false,
    };
    let task = tokio::spawn(cel::run(db.clone(), "default", ami, CallLogConfig::default(), stats.clone(), stop_rx));
    while !stats.connected.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Prepared before the clock starts: the bytes of every wave.
    let waves: Vec<Vec<u8>> = (0..CALLS / WAVE)
        .map(|w| {
            let calls: Vec<Vec<String>> = (0..WAVE).map(|i| call_events(w * WAVE + i)).collect();
            let mut bytes = Vec::new();
            for k in 0..13 {
                for c in &calls {
                    bytes.extend_from_slice(c[k].as_bytes());
                }
            }
            bytes
        })
        .collect();
    let started = Instant::now();
    for w in waves {
        tx.send(w).await.expect("the peer streams");
    }
    let target = CALLS as u64;
    while stats.calls_completed.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(started.elapsed() < Duration::from_secs(600), "not all calls completed: {stats:?}");
    }
    let elapsed = started.elapsed();
    let events = stats.events.load(Ordering::Relaxed);
    println!(
        "{backend}: {CALLS} calls, {events} CEL events in {:.2} s = {:.0} events/s ({:.0} calls/s); errors: {}",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        CALLS as f64 / elapsed.as_secs_f64(),
        stats.errors.load(Ordering::Relaxed),
    );
    // Every call right: answered by 1002, cause 16, hung up by 1001, two legs.
    let filter = asterisk_gitops::db::calls::CallFilter { limit: 1000, ..Default::default() };
    let sample = db.calls(&filter).await.expect("calls");
    assert!(sample.iter().all(|c| c.disposition.as_deref() == Some("answered")
        && c.answered_by.as_deref() == Some("1002")
        && c.hangup_cause == Some(16)
        && c.hangup_by.as_deref() == Some("1001")));
    let legs = db.legs(Some("default"), "bench-0.0").await.expect("legs");
    assert_eq!(legs.len(), 2);
    let _ = stop.send(true);
    let _ = task.await;
    db.close().await;
}
