//! The call logger against the stand-in playing calls through its Stasis
//! app, on SQLite always and on PostgreSQL when DATABASE_URL points at one.

use crate::db::{on_both, sqlite};
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
        let task = tokio::spawn(run(db.clone(), ari, cfg, stats.clone(), rx));
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
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("the logger stops").expect("no panic");
    }
}

async fn wait<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_calls(db: &Db) -> Vec<CallRecord> {
    db.calls(&CallFilter { limit: 1000, ..Default::default() }).await.expect("list calls")
}

async fn call(db: &Db, channel: &str) -> Option<CallRecord> {
    all_calls(db).await.into_iter().find(|c| c.channel_id == channel)
}

async fn ended(db: &Db, channel: &str) -> bool {
    call(db, channel).await.is_some_and(|c| c.end_time.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_call_is_recorded_continued_answered_and_completed() {
    on_both(|db| async move {
        let (s, _dir) = standin().await;
        let c = s.control();
        let logger = Logger::start(&db, &s, CallLogConfig::default()).await;
        let id = c.start_call(APP, "1001", "Test User", "from-internal", "998901234567").expect("the app is connected");
        wait("the channel to be continued", || {
            let c = c.clone();
            let id = id.clone();
            async move { c.continued(&id) && c.subscribed(&id) }
        })
        .await;
        let row = call(&db, &id).await.expect("a row on StasisStart");
        assert_eq!(
            (row.extension.as_deref(), row.caller.as_deref(), row.callee.as_deref(), row.direction.as_str()),
            (Some("1001"), Some("1001"), Some("998901234567"), "outbound")
        );
        assert!(row.end_time.is_none(), "continuing is not the end of the call");
        c.answer(&id);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.hang_up(&id, 16);
        wait("the call to be completed", || ended(&db, &id)).await;
        let row = call(&db, &id).await.expect("row");
        assert!(row.answer_time.is_some());
        assert_eq!(row.duration_seconds, Some(1));
        assert_eq!((row.hangup_cause, row.disposition.as_deref()), (Some(16), Some("answered")));
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
        wait("continued", || {
            let c = c.clone();
            let b = busy.clone();
            async move { c.continued(&b) }
        })
        .await;
        c.hang_up(&busy, 17);
        wait("the busy call to end", || ended(&db, &busy)).await;
        let row = call(&db, &busy).await.expect("row");
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
        wait("continued", || {
            let c = c.clone();
            let id = id.clone();
            async move { c.continued(&id) }
        })
        .await;
        c.answer(&id);
        let up = c.event_for(&id, "ChannelStateChange", &[]).expect("event");
        c.send_to_app(APP, &up);
        let destroyed = c
            .event_for(&id, "ChannelDestroyed", &[("cause", 16.into()), ("cause_txt", "Normal Clearing".into())])
            .expect("event");
        c.hang_up(&id, 16);
        c.send_to_app(APP, &destroyed);
        c.send_to_app(APP, &start);
        wait("the call to end", || ended(&db, &id)).await;

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
        tokio::time::sleep(Duration::from_millis(300)).await;

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
        let cont = |id: String| {
            let c = c.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while !c.continued(&id) {
                    assert!(tokio::time::Instant::now() < deadline, "not continued");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };

        // The socket drops mid-call; the logger reconnects; the end arrives.
        let a = c.start_call(APP, "1001", "Test User", "from-internal", "998901234567").expect("call");
        cont(a.clone()).await;
        c.answer(&a);
        c.drop_event_sockets();
        wait("the logger to reconnect", || {
            let c = c.clone();
            async move { c.app_connected(APP) }
        })
        .await;
        c.hang_up(&a, 16);
        wait("call a to end", || ended(&db, &a)).await;
        assert_eq!(call(&db, &a).await.and_then(|r| r.disposition), Some("answered".into()));

        // The daemon restarts with two calls in flight: one ends while it is
        // down (closed as unknown once it is back), one ends after.
        let b = c.start_call(APP, "1001", "Test User", "from-internal", "998901234567").expect("call");
        let d = c.start_call(APP, "1002", "Other", "from-internal", "1001").expect("call");
        cont(b.clone()).await;
        cont(d.clone()).await;
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
        wait("b to end", || ended(&db, &b)).await;
        let row = call(&db, &b).await.expect("row");
        assert_eq!((row.disposition.as_deref(), row.hangup_cause), (Some("answered"), Some(16)));
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
        let task = tokio::spawn(run(db.clone(), ari, CallLogConfig::default(), Arc::new(CallLogStats::default()), rx));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!task.is_finished(), "ARI down does not end the logger");
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
    wait("the row", || async { call(&db, &id).await.is_some() }).await;
    wait("the stale call closed", || async {
        call(&db, &id).await.is_some_and(|r| r.disposition.as_deref() == Some("unknown") && r.end_time.is_some())
    })
    .await;
    // "unknown" is provisional: a real end that still arrives says what happened.
    c.hang_up(&id, 17);
    wait("the real end", || async { call(&db, &id).await.and_then(|r| r.disposition) == Some("busy".into()) }).await;
    let row = call(&db, &id).await.expect("row");
    assert_eq!(row.hangup_cause, Some(17));
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
        wait("every call continued", || {
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
        wait("every call completed", || async {
            let rows = all_calls(&db).await;
            rows.len() == 1000 && rows.iter().all(|r| r.end_time.is_some())
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
