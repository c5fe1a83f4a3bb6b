//! The call logger against the stand-in playing calls through its Stasis
//! app, on SQLite always and on PostgreSQL when DATABASE_URL points at one.

use crate::support::db::{on_both, sqlite};
use asterisk_gitops::asterisk::ari::{Ari, AriConfig};
use asterisk_gitops::calls::{CallLogConfig, CallLogStats, run};
use asterisk_gitops::config::SecretString;
use asterisk_gitops::db::Db;
use asterisk_gitops::db::calls::{CallFilter, CallRecord};
use asterisk_standin::ari::{ChannelJson, Dialplan, Party, event_json};
use asterisk_standin::{StandIn, StandInConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

const APP: &str = "callcenter";

async fn standin() -> (StandIn, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["pjsip.conf", "pjsip_gitops.conf"] {
        std::fs::copy(crate::support::fixture("asterisk/config").join(f), dir.path().join(f)).expect("copy config");
    }
    let s = StandIn::start(StandInConfig {
        pjsip_conf: dir.path().join("pjsip.conf"),
        user: "ari".into(),
        secret: "ari-secret".into(),
    })
    .await
    .expect("stand-in starts");
    (s, dir)
}

/// A running logger; `stop` ends it and waits.
struct Logger {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<CallLogStats>,
}

impl Logger {
    async fn start(db: &Db, s: &StandIn, cfg: CallLogConfig) -> Logger {
        let ari = Ari::new(AriConfig {
            url: s.ari_url(),
            user: "ari".into(),
            password: SecretString::new("ari-secret"),
            app: APP.into(),
            timeout: Duration::from_secs(5),
        })
        .expect("client");
        let (stop, rx) = tokio::sync::watch::channel(false);
        let stats = Arc::new(CallLogStats::default());
        let task = tokio::spawn(run(db.clone(), "default", ari, cfg, stats.clone(), rx));
        let c = s.control();
        wait("the logger to connect", || {
            let c = c.clone();
            async move { c.app_connected(APP) }
        })
        .await;
        Logger { stop, task, stats }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(WITHIN, self.task).await.expect("the logger stops within 30 s").expect("no panic");
    }
}

/// How long a wait for something the test caused may take: generous, so a
/// loaded machine is slow rather than failing.
const WITHIN: Duration = Duration::from_secs(30);

async fn wait<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_within(what, WITHIN, f).await
}

async fn wait_within<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the stand-in says the app continued (and so subscribed to) the channel.
async fn continued(c: &asterisk_standin::Control, id: &str) {
    wait(&format!("call {id} to be continued"), || {
        let c = c.clone();
        let id = id.to_string();
        async move { c.continued(&id) && c.subscribed(&id) }
    })
    .await;
}

async fn all_calls(db: &Db) -> Vec<CallRecord> {
    db.calls(&CallFilter { limit: 1000, ..Default::default() }).await.expect("list calls")
}

async fn call(db: &Db, channel: &str) -> Option<CallRecord> {
    all_calls(db).await.into_iter().find(|c| c.channel_id == channel)
}

/// Waits for the row of `channel` to carry the end the test caused: the
/// `disposition` with hangup `cause`. An end time alone is not enough: a
/// row closed provisionally as `unknown` (the resync after a connect found
/// the channel gone before its ChannelDestroyed was handled) has one too,
/// and the real end replaces it.
async fn ended_with(db: &Db, channel: &str, disposition: &str, cause: i64) -> CallRecord {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let row = call(db, channel).await;
        if let Some(r) = row.as_ref().filter(|r| {
            r.end_time.is_some() && r.disposition.as_deref() == Some(disposition) && r.hangup_cause == Some(cause)
        }) {
            return r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WITHIN:?} waiting for call {channel} to end {disposition:?} with cause {cause}; its row: {row:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the logger has handled every event it read, and at least
/// `sent` of them: after that, what those events say is in the database.
async fn handled(stats: &CallLogStats, sent: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let (read, done) = (stats.events.load(Relaxed), stats.events_handled.load(Relaxed));
        if done >= sent && done == read {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WITHIN:?} waiting for the logger to handle the {sent} events sent: read {read}, handled {done}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_call_is_recorded_continued_answered_and_completed() {
    on_both(|db| async move {
        let (s, _dir) = standin().await;
        let c = s.control();
        let logger = Logger::start(&db, &s, CallLogConfig::default()).await;
        let id = c.start_call(APP, "1001", "Test User", "from-internal", "998901234567").expect("the app is connected");
        continued(&c, &id).await;
        let row = call(&db, &id).await.expect("a row on StasisStart");
        assert_eq!(
            (row.extension.as_deref(), row.caller.as_deref(), row.callee.as_deref(), row.direction.as_str()),
            (Some("1001"), Some("1001"), Some("998901234567"), "outbound")
        );
        assert!(row.end_time.is_none(), "continuing is not the end of the call");
        c.answer(&id);
        // At least a second between answer and hang-up (longer on a loaded machine).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.hang_up(&id, 16);
        let row = ended_with(&db, &id, "answered", 16).await;
        let (answered, end) = (row.answer_time.expect("an answer time"), row.end_time.expect("an end time"));
        assert!(row.duration_seconds.is_some_and(|d| d >= 1), "{row:#?}");
        assert_eq!(row.duration_seconds, Some((end - answered).num_seconds()), "whole seconds from answer to end");
        // The REST calls the app made: subscribe, then continue once. (The
        // resync after connecting may subscribe to the new call a second
        // time; subscribing is idempotent.)
        let calls = c.rest_calls();
        let subscribe = format!("POST /ari/applications/{APP}/subscription");
        let cont = format!("POST /ari/channels/{id}/continue");
        assert!(calls.iter().all(|x| *x == subscribe || *x == cont), "{calls:?}");
        assert_eq!(calls.iter().filter(|x| **x == cont).count(), 1, "{calls:?}");
        assert!(calls.contains(&subscribe), "{calls:?}");
        assert!(calls.iter().position(|x| *x == subscribe) < calls.iter().position(|x| *x == cont), "{calls:?}");

        // An internal call, busy: completed from ChannelDestroyed with its cause.
        let busy = c.start_call(APP, "1002", "Other", "from-internal", "1001").expect("call");
        continued(&c, &busy).await;
        c.hang_up(&busy, 17);
        let row = ended_with(&db, &busy, "busy", 17).await;
        assert_eq!(
            (row.direction.as_str(), row.disposition.as_deref(), row.duration_seconds),
            ("internal", Some("busy"), Some(0))
        );
        logger.stop().await;
    })
    .await;
}

fn channel(id: &str) -> ChannelJson {
    ChannelJson {
        id: id.into(),
        name: "PJSIP/1001-000000ff".into(),
        state: "Up".into(),
        protocol_id: "1-9@127.0.0.1".into(),
        caller: Party { name: "Test User".into(), number: "1001".into() },
        connected: Party { name: String::new(), number: String::new() },
        accountcode: String::new(),
        dialplan: Dialplan {
            context: "from-trunk".into(),
            exten: "1002".into(),
            priority: 1,
            app_name: "Stasis".into(),
            app_data: APP.into(),
        },
        creationtime: "2026-11-24T00:02:31.549+0000".into(),
        language: "en".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_out_of_order_events_make_one_complete_row() {
    on_both(|db| async move {
        let (s, _dir) = standin().await;
        let c = s.control();
        let logger = Logger::start(&db, &s, CallLogConfig::default()).await;

        // Every event of a played call sent twice.
        let id = c.start_call(APP, "1001", "Test User", "from-internal", "1002").expect("call");
        let start = c.event_for(&id, "StasisStart", &[("args", serde_json::json!([]))]).expect("event");
        assert!(c.send_to_app(APP, &start));
        continued(&c, &id).await;
        c.answer(&id);
        let up = c.event_for(&id, "ChannelStateChange", &[]).expect("event");
        c.send_to_app(APP, &up);
        let destroyed = c
            .event_for(&id, "ChannelDestroyed", &[("cause", 16.into()), ("cause_txt", "Normal Clearing".into())])
            .expect("event");
        c.hang_up(&id, 16);
        c.send_to_app(APP, &destroyed);
        c.send_to_app(APP, &start);
        ended_with(&db, &id, "answered", 16).await;

        // A call whose events arrive backwards: end, answer, start.
        let ch = channel("1795470000.77");
        c.send_to_app(
            APP,
            &event_json("ChannelDestroyed", &[("cause", 16.into()), ("cause_txt", "Normal Clearing".into())], &ch, APP),
        );
        c.send_to_app(APP, &event_json("ChannelStateChange", &[], &ch, APP));
        c.send_to_app(APP, &event_json("StasisStart", &[("args", serde_json::json!([]))], &ch, APP));
        wait("the backwards call", || async {
            call(&db, "1795470000.77").await.is_some_and(|r| r.answer_time.is_some() && r.end_time.is_some())
        })
        .await;
        // Every event sent has been handled, so nothing still on its way can
        // add a row or change one: the played call's StasisStart, its copy,
        // the StasisEnd of the continue, ChannelStateChange and its copy,
        // ChannelHangupRequest, ChannelDestroyed and its copy, the late
        // StasisStart copy; then the backwards call's three.
        handled(&logger.stats, 12).await;

        let rows = all_calls(&db).await;
        assert_eq!(rows.len(), 2, "{rows:#?}");
        let played = rows.iter().find(|r| r.channel_id == id).expect("played call");
        assert_eq!((played.disposition.as_deref(), played.hangup_cause), (Some("answered"), Some(16)));
        let backwards = rows.iter().find(|r| r.channel_id == "1795470000.77").expect("backwards call");
        assert_eq!(
            (backwards.direction.as_str(), backwards.extension.as_deref(), backwards.disposition.as_deref()),
            ("inbound", Some("1002"), Some("answered"))
        );
        assert_eq!(logger.stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
        logger.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_or_a_restart_in_the_middle_of_a_call_loses_nothing() {
    on_both(|db| async move {
        let (s, _dir) = standin().await;
        let c = s.control();
        let logger = Logger::start(&db, &s, CallLogConfig::default()).await;
        // The socket drops mid-call; the logger reconnects; the end arrives.
        let a = c.start_call(APP, "1001", "Test User", "from-internal", "998901234567").expect("call");
        continued(&c, &a).await;
        c.answer(&a);
        c.drop_event_sockets();
        wait("the logger to reconnect", || {
            let c = c.clone();
            async move { c.app_connected(APP) }
        })
        .await;
        c.hang_up(&a, 16);
        // Answered before the drop, ended after the reconnect: both recorded.
        // (The resync after the reconnect may close the row as unknown for a
        // moment, if it finds the channel gone before ChannelDestroyed is
        // handled; the real end replaces that.)
        let row = ended_with(&db, &a, "answered", 16).await;
        assert!(row.answer_time.is_some(), "{row:#?}");

        // The daemon restarts with two calls in flight: one ends while it is
        // down (closed as unknown once it is back), one ends after.
        let b = c.start_call(APP, "1001", "Test User", "from-internal", "998901234567").expect("call");
        let d = c.start_call(APP, "1002", "Other", "from-internal", "1001").expect("call");
        continued(&c, &b).await;
        continued(&c, &d).await;
        c.answer(&b);
        wait("b answered", || async { call(&db, &b).await.is_some_and(|r| r.answer_time.is_some()) }).await;
        logger.stop().await;
        c.hang_up(&d, 16);
        let logger = Logger::start(&db, &s, CallLogConfig::default()).await;
        wait("d closed as unknown", || async {
            call(&db, &d).await.is_some_and(|r| r.disposition.as_deref() == Some("unknown"))
        })
        .await;
        c.hang_up(&b, 16);
        ended_with(&db, &b, "answered", 16).await;
        assert_eq!(all_calls(&db).await.len(), 3);
        logger.stop().await;

        // ARI down altogether: the logger keeps trying, and logs once it is back.
        s.stop_ari();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let ari = Ari::new(AriConfig {
            url: s.ari_url(),
            user: "ari".into(),
            password: SecretString::new("ari-secret"),
            app: APP.into(),
            timeout: Duration::from_secs(1),
        })
        .expect("client");
        let stats = Arc::new(CallLogStats::default());
        let task = tokio::spawn(run(db.clone(), "default", ari, CallLogConfig::default(), stats.clone(), rx));
        wait("the logger to fail to connect twice", || async {
            stats.connect_failures.load(std::sync::atomic::Ordering::Relaxed) >= 2
        })
        .await;
        assert!(!task.is_finished(), "ARI down does not end the logger: it keeps trying");
        s.restart_ari().await.expect("ARI back");
        wait("the logger to reconnect", || {
            let c = c.clone();
            async move { c.app_connected(APP) }
        })
        .await;
        let e = c.start_call(APP, "1001", "Test User", "from-internal", "1002").expect("call");
        wait("call e recorded", || async { call(&db, &e).await.is_some() }).await;
        let _ = stop.send(true);
        task.await.expect("stops");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_never_ended_is_closed_as_unknown_after_the_timeout() {
    let (db, _tmp) = sqlite().await;
    let (s, _dir) = standin().await;
    let c = s.control();
    let cfg = CallLogConfig { stale_after: Duration::from_millis(600), ..CallLogConfig::default() };
    let logger = Logger::start(&db, &s, cfg).await;
    let id = c.start_call(APP, "1001", "Test User", "from-internal", "1002").expect("call");
    continued(&c, &id).await;
    wait("the row", || async { call(&db, &id).await.is_some() }).await;
    wait("the stale call closed", || async {
        call(&db, &id).await.is_some_and(|r| r.disposition.as_deref() == Some("unknown") && r.end_time.is_some())
    })
    .await;
    // "unknown" is provisional: a real end that still arrives says what happened.
    c.hang_up(&id, 17);
    ended_with(&db, &id, "busy", 17).await;
    logger.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_make_a_thousand_correct_rows() {
    on_both(|db| async move {
        let (s, _dir) = standin().await;
        let c = s.control();
        let logger = Logger::start(&db, &s, CallLogConfig::default()).await;
        let ids: Vec<String> = (0..1000)
            .map(|i| {
                let caller = if i % 2 == 0 { "1001" } else { "1002" };
                c.start_call(APP, caller, "Agent", "from-internal", &format!("9989{i:08}")).expect("call")
            })
            .collect();
        wait_within("every call continued", Duration::from_secs(120), || {
            let c = c.clone();
            let ids = ids.clone();
            async move { ids.iter().all(|i| c.continued(i) && c.subscribed(i)) }
        })
        .await;
        for (i, id) in ids.iter().enumerate() {
            if i % 4 != 0 {
                c.answer(id);
            }
        }
        for (i, id) in ids.iter().enumerate() {
            c.hang_up(id, if i % 4 == 0 { 19 } else { 16 });
        }
        // Completed by the ends the test caused: a row closed provisionally as
        // unknown (see `ended_with`) is not done yet.
        wait_within("every call completed by its real end", Duration::from_secs(120), || async {
            let rows = all_calls(&db).await;
            rows.len() == 1000
                && rows.iter().all(|r| r.end_time.is_some() && r.disposition.as_deref() != Some("unknown"))
        })
        .await;
        let rows = all_calls(&db).await;
        let answered = rows.iter().filter(|r| r.disposition.as_deref() == Some("answered")).count();
        let no_answer = rows.iter().filter(|r| r.disposition.as_deref() == Some("no answer")).count();
        assert_eq!((answered, no_answer), (750, 250));
        assert!(
            rows.iter()
                .all(|r| r.direction == "outbound" && r.callee.as_deref().is_some_and(|x| x.starts_with("9989")))
        );
        let mut channels: Vec<&str> = rows.iter().map(|r| r.channel_id.as_str()).collect();
        channels.sort();
        channels.dedup();
        assert_eq!(channels.len(), 1000);
        logger.stop().await;
    })
    .await;
}
