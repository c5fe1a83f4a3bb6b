//! The call log on a real Asterisk (issue 19): every call, whatever its
//! path, from CEL over AMI, with the dialplan snippet as shipped (no
//! Stasis() needed; the outbound route still passes through Stasis and is
//! not logged twice). Each call kind gives exactly one row with the right
//! legs, durations, cause and disposition.

use super::{Daemon, Source, Store, asterisk, endpoint, wait};
use asterisk_real::{require, sipp};
use serde_json::Value;
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);
pub(crate) const PASSWORD: &str = "Calls2026";

/// A spec with the given extensions, md5Cred from [`PASSWORD`]. Not
/// qualified: a sipp phone answers OPTIONS only while a scenario runs on its
/// port, and Asterisk does not ring a contact it found unreachable (a
/// transfer target registered a while before it answers would be).
pub(crate) fn spec(exts: &[&str]) -> String {
    let mut out =
        "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw], qualifyFrequency: 0}\nextensions:\n"
            .to_string();
    for e in exts {
        let md5 = asterisk_gitops::secret::md5_cred(e, "asterisk", PASSWORD);
        out.push_str(&format!("  - extension: \"{e}\"\n    md5Cred: {md5}\n"));
    }
    out
}

fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The calls that started since `mark` (the ones this step placed).
async fn calls_since(d: &Daemon, mark: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
    d.get(&format!("/calls?since={}&limit=1000", stamp(mark))).await.1["calls"].as_array().cloned().unwrap_or_default()
}

/// Waits for the one call placed since `mark` to be complete; returns it
/// with its legs (`GET /calls/:id`), and checks it is the only one.
async fn the_call_since(d: &Daemon, mark: chrono::DateTime<chrono::Utc>, what: &str) -> Value {
    let deadline = tokio::time::Instant::now() + LIVE;
    loop {
        let calls = calls_since(d, mark).await;
        if calls.len() == 1 && calls[0]["endTime"].is_string() && calls[0]["disposition"] != "unknown" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: no one complete row within {LIVE:?}: {calls:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = calls_since(d, mark).await;
    assert_eq!(calls.len(), 1, "{what}: exactly one row: {calls:#?}");
    let id = calls[0]["channelId"].as_str().unwrap_or_default().to_string();
    let (status, call) = d.get(&format!("/calls/{id}")).await;
    assert_eq!(status, 200, "{what}: {call}");
    call
}

/// The legs as (extension, role, answered?) in the order they started.
fn legs(call: &Value) -> Vec<(String, String, bool)> {
    call["legs"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|l| {
                    (
                        l["extension"].as_str().unwrap_or("").to_string(),
                        l["role"].as_str().unwrap_or("").to_string(),
                        l["answerTime"].is_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A leg's talk time as its own answer and end times give it (whole seconds).
fn own_talk(leg: &Value) -> Value {
    let t = |k: &str| leg[k].as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    match (t("answerTime"), t("endTime")) {
        (Some(a), Some(e)) => Value::from((e - a).num_seconds()),
        _ => Value::Null,
    }
}

fn leg(ext: &str, role: &str, answered: bool) -> (String, String, bool) {
    (ext.into(), role.into(), answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_call_makes_one_row_with_its_legs_cause_and_disposition() {
    let Some(build) = require("real::calls::every_kind_of_call_makes_one_row_with_its_legs_cause_and_disposition")
    else {
        return;
    };
    for store in Store::both().await {
        let label = store.label();
        let ast = asterisk(&build, &format!("calls-{label}")).await;
        let mut d = Daemon::start(&ast, store, Source::Dir, &spec(&["1001", "1002", "1003"])).await;
        wait("1001..1003 live", LIVE, || async {
            endpoint(&ast, "1001").await.is_some()
                && endpoint(&ast, "1002").await.is_some()
                && endpoint(&ast, "1003").await.is_some()
        })
        .await;
        let caller = sipp::Phone::new("1001", PASSWORD);
        let callee = sipp::Phone::new("1002", PASSWORD);
        let target = sipp::Phone::new("1003", PASSWORD);
        for p in [&caller, &callee, &target] {
            let r = p.register(ast.sip_addr()).await;
            assert!(r.ok(), "{label}: {} registers:\n{}", p.extension, r.log);
        }

        // 1001 → 1002, answered, held 1.5 s; the caller hangs up.
        let mark = chrono::Utc::now();
        let first_mark = mark;
        let answering = callee.answer();
        let placed = caller.call(ast.sip_addr(), "1002", Duration::from_millis(1500)).await;
        assert!(placed.ok(), "{label}: 1001 → 1002:\n{}", placed.log);
        assert!(answering.done(Duration::from_secs(20)).await.ok(), "{label}: 1002 answered");
        let call = the_call_since(&d, mark, "answered").await;
        assert_eq!(
            (&call["caller"], &call["callee"], &call["direction"], &call["disposition"]),
            (&Value::from("1001"), &Value::from("1002"), &Value::from("internal"), &Value::from("answered")),
            "{label}: {call:#}"
        );
        assert_eq!(call["answeredBy"], "1002", "{label}: {call:#}");
        assert_eq!(call["hangupCause"], 16, "{label}: normal clearing: {call:#}");
        assert_eq!(call["hangupBy"], "1001", "{label}: the caller hung up: {call:#}");
        // Held 1.5 s once answered: at least a second of talk.
        assert!(call["durationSeconds"].as_i64().is_some_and(|s| s >= 1), "{label}: {call:#}");
        assert_eq!(legs(&call), [leg("1001", "caller", true), leg("1002", "callee", true)], "{label}: {call:#}");
        assert_eq!(call["legs"][1]["talkSeconds"], own_talk(&call["legs"][1]), "{label}: 1002's talk time: {call:#}");

        // 1001 → 1002, rings until Dial's 20 s timeout.
        let mark = chrono::Utc::now();
        let ringing = callee.ring();
        let placed = caller.call_unanswered(ast.sip_addr(), "1002").await;
        assert!(placed.ok(), "{label}: 1001 → 1002 unanswered:\n{}", placed.log);
        let _ = ringing.done(Duration::from_secs(10)).await;
        let call = the_call_since(&d, mark, "unanswered").await;
        assert_eq!(call["disposition"], "no answer", "{label}: {call:#}");
        assert_eq!(call["answeredBy"], Value::Null, "{label}: {call:#}");
        assert_eq!(call["durationSeconds"], 0, "{label}: {call:#}");
        // The callee's channel ends with cause 0; the caller's hang-up says 16.
        assert_eq!(call["hangupCause"], 16, "{label}: {call:#}");
        assert_eq!(call["hangupBy"], "dialplan", "{label}: Dial timed out: {call:#}");
        assert_eq!(legs(&call), [leg("1001", "caller", false), leg("1002", "callee", false)], "{label}: {call:#}");
        assert_eq!(call["legs"][0]["dialStatus"], "NOANSWER", "{label}: {call:#}");

        // 1001 → 1002, busy (486).
        let mark = chrono::Utc::now();
        let busy = callee.busy();
        let placed = caller.call_unanswered(ast.sip_addr(), "1002").await;
        assert!(placed.ok(), "{label}: 1001 → 1002 busy:\n{}", placed.log);
        let _ = busy.done(Duration::from_secs(10)).await;
        let call = the_call_since(&d, mark, "busy").await;
        assert_eq!(call["disposition"], "busy", "{label}: {call:#}");
        assert_eq!(call["hangupCause"], 17, "{label}: user busy: {call:#}");
        assert_eq!(legs(&call), [leg("1001", "caller", false), leg("1002", "callee", false)], "{label}: {call:#}");

        // 1001 → 998901234567: through Stasis(callcenter) to the trunk; one row, not two.
        let mark = chrono::Utc::now();
        let carrier = sipp::answer_on(ast.trunk_port);
        let placed = caller.call(ast.sip_addr(), "998901234567", Duration::from_millis(1500)).await;
        assert!(placed.ok(), "{label}: the outbound call:\n{}", placed.log);
        assert!(carrier.done(Duration::from_secs(20)).await.ok(), "{label}: the carrier answered");
        let call = the_call_since(&d, mark, "outbound").await;
        assert_eq!(
            (&call["callee"], &call["direction"], &call["disposition"], &call["answeredBy"]),
            (&Value::from("998901234567"), &Value::from("outbound"), &Value::from("answered"), &Value::from("trunk")),
            "{label}: {call:#}"
        );
        assert_eq!(call["hangupCause"], 16, "{label}: {call:#}");
        assert_eq!(legs(&call), [leg("1001", "caller", true), leg("trunk", "callee", true)], "{label}: {call:#}");

        // 1001 → 1002, who blind transfers 1001 to 1003 (REFER); 1001 hangs up later.
        let mark = chrono::Utc::now();
        let transferring = callee.answer_and_transfer("1003");
        let answering = target.answer();
        let placed = caller.call_transferred(ast.sip_addr(), "1002").await;
        assert!(placed.ok(), "{label}: the transferred caller:\n{}", placed.log);
        assert!(transferring.done(Duration::from_secs(20)).await.ok(), "{label}: 1002 transferred");
        assert!(answering.done(Duration::from_secs(20)).await.ok(), "{label}: 1003 answered");
        let call = the_call_since(&d, mark, "blind transfer").await;
        assert_eq!(
            (&call["disposition"], &call["answeredBy"], &call["transfers"], &call["hangupBy"], &call["hangupCause"]),
            (&Value::from("answered"), &Value::from("1002"), &Value::from(1), &Value::from("1001"), &Value::from(16)),
            "{label}: {call:#}"
        );
        assert_eq!(
            legs(&call),
            [leg("1001", "caller", true), leg("1002", "callee", true), leg("1003", "transfer", true)],
            "{label}: {call:#}"
        );
        assert_eq!(call["legs"][1]["transferTo"], "1003", "{label}: {call:#}");
        assert_eq!(call["legs"][2]["talkSeconds"], own_talk(&call["legs"][2]), "{label}: 1003's talk time: {call:#}");

        // Answered while the daemon was down: the call starts and is
        // answered with the daemon stopped, and ends after it is back.
        d.halt().await;
        let mark = chrono::Utc::now();
        let answering = callee.answer();
        let placing = {
            let caller = caller.clone();
            let at = ast.sip_addr();
            tokio::spawn(async move { caller.call(at, "1002", Duration::from_millis(6000)).await })
        };
        // Asterisk says 1002 is in a call (answered) before the daemon returns.
        let ast_ref = &ast;
        wait("the call up in Asterisk", LIVE, || async {
            ast_ref.cli("core show channels concise").await.lines().filter(|l| l.contains("!Up!")).count() == 2
        })
        .await;
        d.start_again().await;
        // While it is up: the calls happening now, in the API and the UI.
        wait("the call in /calls/active", LIVE, || async {
            let (_, active) = d.get("/calls/active").await;
            active["count"] == 1 && active["calls"][0]["state"] == "up"
        })
        .await;
        let (_, active) = d.get("/calls/active").await;
        assert_eq!(legs(&active["calls"][0]), [leg("1001", "caller", true), leg("1002", "callee", true)], "{active:#}");
        let page =
            reqwest::get(format!("http://{}/ui/calls/active", d.addr)).await.expect("page").text().await.expect("text");
        assert!(page.contains(r#"http-equiv="refresh""#), "{label}: the page refreshes itself");
        assert!(page.contains("1001") && page.contains(">up<"), "{label}: the live call on the page:\n{page}");
        let overview = reqwest::get(format!("http://{}/ui", d.addr)).await.expect("page").text().await.expect("text");
        assert!(overview.contains(r#"<a href="/ui/calls/active">1</a>"#), "{label}: the overview counts it");
        let placed = placing.await.expect("joins");
        assert!(placed.ok(), "{label}: the call across the restart:\n{}", placed.log);
        assert!(answering.done(Duration::from_secs(20)).await.ok());
        let call = the_call_since(&d, mark, "answered while the daemon was down").await;
        assert_eq!(call["disposition"], "answered", "{label}: not 'no answer': {call:#}");
        assert_eq!(call["answeredBy"], "1002", "{label}: {call:#}");
        assert!(call["durationSeconds"].as_i64().is_some_and(|s| s >= 1), "{label}: {call:#}");

        // 1002 today: in five calls (all but the outbound one), answered three
        // (answered, transferred, across the restart), missed two (no answer, busy).
        let (status, live) = d.get("/extensions/1002/status").await;
        assert_eq!(status, 200, "{label}: {live}");
        let today = &live["callsToday"];
        assert_eq!(
            (&today["calls"], &today["answered"], &today["missed"]),
            (&Value::from(5), &Value::from(3), &Value::from(2)),
            "{label}: {live:#}"
        );
        assert!(today["talkSeconds"].as_i64().is_some_and(|s| s >= 5), "{label}: {live:#}");
        let page = reqwest::get(format!("http://{}/ui/extensions/1002", d.addr))
            .await
            .expect("page")
            .text()
            .await
            .expect("text");
        assert!(page.contains(r#"id="calls-today""#), "{label}: the status page shows today's calls");
        // The CSV export: a header and the six calls.
        let csv =
            reqwest::get(format!("http://{}/calls?format=csv&since={}", d.addr, stamp(first_mark))).await.expect("csv");
        assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
        let text = csv.text().await.expect("text");
        assert_eq!(text.lines().count(), 7, "{label}: {text}");
        assert!(text.starts_with("id,channelId,extension,caller,callee,direction,"), "{label}: {text}");

        // The seed's query still works on PostgreSQL: five rows, the newest first.
        if let Some(url) = d.store.url() {
            let pool = sqlx::PgPool::connect(&url).await.expect("PostgreSQL");
            let rows = sqlx::query("SELECT * FROM calls ORDER BY start_time DESC LIMIT 5")
                .fetch_all(&pool)
                .await
                .expect("the seed's query");
            assert_eq!(rows.len(), 5, "{label}: the five calls of this test");
            use sqlx::Row;
            let newest: String = rows[0].try_get("channel_id").expect("channel_id");
            assert_eq!(newest, call["channelId"].as_str().unwrap_or_default(), "{label}: the newest first");
            pool.close().await;
        }
        d.stop().await;
    }
}

/// 100 concurrent calls of four kinds, the daemon restarted while they are
/// up: exactly 100 rows, each right for its kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_calls_make_a_hundred_rows_across_a_daemon_restart() {
    let Some(build) = require("real::calls::a_hundred_concurrent_calls_make_a_hundred_rows_across_a_daemon_restart")
    else {
        return;
    };
    // PostgreSQL when there is one (production's call log), else SQLite.
    let Some(store) = Store::both().await.pop() else { return };
    let label = store.label();
    let opts =
        asterisk_real::Options { rtp_ports: 1000, ..asterisk_real::Options::named(&format!("calls100-{label}")) };
    let ast = asterisk_real::Asterisk::start(&build, opts).await.unwrap_or_else(|e| panic!("Asterisk starts: {e}"));
    let exts = ["2001", "2002", "2003", "2004", "2005", "2006", "2007"];
    let mut d = Daemon::start(&ast, store, Source::Dir, &spec(&exts)).await;
    wait("2001..2007 live", LIVE, || async {
        let mut all = true;
        for e in exts {
            all &= endpoint(&ast, e).await.is_some();
        }
        all
    })
    .await;
    let phone = |e: &str| sipp::Phone::new(e, PASSWORD);
    let (answers, busy, rings) = (phone("2002"), phone("2004"), phone("2007"));
    for p in [&answers, &busy, &rings] {
        assert!(p.register(ast.sip_addr()).await.ok(), "{label}: {} registers", p.extension);
    }
    let _answering = answers.answer_many();
    let _busy = busy.busy_many();
    let _ringing = rings.ring_many();
    let _carrier = sipp::answer_many_on(ast.trunk_port);

    let mark = chrono::Utc::now();
    let at = ast.sip_addr();
    let hold = Duration::from_secs(8);
    let (p1, p3, p5, p6) = (phone("2001"), phone("2003"), phone("2005"), phone("2006"));
    let internal = tokio::spawn(async move { p1.call_many(at, "2002", hold, 40, 20).await });
    let outbound = tokio::spawn(async move { p3.call_many(at, "998901234567", hold, 30, 20).await });
    let busy_calls = tokio::spawn(async move { p5.call_many_unanswered(at, "2004", 20, 20).await });
    let unanswered = tokio::spawn(async move { p6.call_many_unanswered(at, "2007", 10, 10).await });

    // Every call has its row; then the daemon restarts while most are up or ringing.
    wait("100 rows created", Duration::from_secs(60), || async { calls_since(&d, mark).await.len() >= 100 }).await;
    d.restart().await;

    for (what, task) in
        [("internal", internal), ("outbound", outbound), ("busy", busy_calls), ("unanswered", unanswered)]
    {
        let out = task.await.expect("joins");
        // The end of sipp's log says why (its first lines are the first call's messages).
        let tail = out.log.char_indices().rev().nth(6000).map_or(out.log.as_str(), |(i, _)| &out.log[i..]);
        assert!(out.ok(), "{label}: the {what} calls (sipp exit {:?}), the end of sipp's log:\n{tail}", out.code);
    }
    wait("100 rows complete", Duration::from_secs(60), || async {
        let calls = calls_since(&d, mark).await;
        calls.len() == 100 && calls.iter().all(|c| c["endTime"].is_string())
    })
    .await;
    let calls = calls_since(&d, mark).await;
    assert_eq!(calls.len(), 100, "{label}: exactly 100 rows");
    let ids: std::collections::BTreeSet<_> = calls.iter().map(|c| c["channelId"].to_string()).collect();
    assert_eq!(ids.len(), 100, "{label}: 100 distinct calls");
    let kind = |c: &Value| {
        (
            c["caller"].as_str().unwrap_or("").to_string(),
            c["disposition"].as_str().unwrap_or("").to_string(),
            c["answeredBy"].as_str().unwrap_or("").to_string(),
        )
    };
    let mut counts: std::collections::BTreeMap<(String, String, String), usize> = Default::default();
    for c in &calls {
        *counts.entry(kind(c)).or_default() += 1;
    }
    let want: std::collections::BTreeMap<(String, String, String), usize> = [
        (("2001", "answered", "2002"), 40),
        (("2003", "answered", "trunk"), 30),
        (("2005", "busy", ""), 20),
        (("2006", "no answer", ""), 10),
    ]
    .into_iter()
    .map(|((a, b, c), n)| ((a.to_string(), b.to_string(), c.to_string()), n))
    .collect();
    assert_eq!(counts, want, "{label}: the rows by caller, disposition and who answered");
    for c in calls.iter().filter(|c| c["disposition"] == "answered") {
        let s = c["durationSeconds"].as_i64();
        assert!(s.is_some_and(|s| s >= 7), "{label}: an 8 s call's talk time: {c:#}");
    }
    for c in calls.iter().filter(|c| c["disposition"] == "busy") {
        assert_eq!(c["hangupCause"], 17, "{label}: {c:#}");
    }
    d.stop().await;
}

/// The channels Asterisk has now (`core show channels concise`): (name, state).
async fn channels(ast: &asterisk_real::Asterisk) -> Vec<(String, String)> {
    ast.cli("core show channels concise")
        .await
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('!').collect();
            (f.len() > 4).then(|| (f[0].to_string(), f[4].to_string()))
        })
        .collect()
}

/// Waits for a channel of `ext` (`PJSIP/ext-…`) in one of `states` (`|`
/// between them); returns its name.
async fn channel_of(ast: &asterisk_real::Asterisk, ext: &str, state: &str) -> String {
    let prefix = format!("PJSIP/{ext}-");
    let deadline = tokio::time::Instant::now() + LIVE;
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let now = channels(ast).await;
        seen.extend(now.iter().cloned());
        if let Some((n, _)) = now.iter().find(|(n, s)| n.starts_with(&prefix) && state.split('|').any(|w| w == s)) {
            return n.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no channel of {ext} {state} within {LIVE:?}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An AMI action as the tests' own user ([`asterisk_real::TEST_AMI_USER`]); its response.
async fn ami_action(ast: &asterisk_real::Asterisk, action: asterisk_gitops::asterisk::Message) -> String {
    let client = asterisk_gitops::asterisk::AmiClient::connect(asterisk_gitops::asterisk::ami::AmiConfig {
        addr: ast.ami_addr().to_string(),
        user: asterisk_real::TEST_AMI_USER.into(),
        secret: ast.ami_secret.clone(),
        timeout: Duration::from_secs(10),
        events: false,
    })
    .await
    .expect("AMI login as the test user");
    let r = client.request(action).await.expect("AMI answers");
    client.logoff().await;
    format!("{}: {}", r.get("Response").unwrap_or(""), r.get("Message").unwrap_or(""))
}

/// Every CEL event Asterisk sends, as `NAME uniqueid linkedid channel extra`
/// lines: printed when an assertion fails, so a failure shows what Asterisk said.
fn cel_trace(ast: &asterisk_real::Asterisk) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (addr, secret, out) = (ast.ami_addr().to_string(), ast.ami_secret.clone(), seen.clone());
    tokio::spawn(async move {
        let Ok(mut s) = asterisk_gitops::asterisk::cel::CelStream::connect(
            &addr,
            asterisk_real::TEST_AMI_USER,
            &secret,
            Duration::from_secs(10),
        )
        .await
        else {
            return;
        };
        while let Ok(Some(m)) = s.next().await {
            if let Ok(Some(e)) = asterisk_gitops::asterisk::cel::CelEvent::from_message(&m) {
                let line = format!("{} {} {} {} {} {}", e.name, e.uniqueid, e.linkedid, e.channel, e.exten, e.extra);
                if let Ok(mut v) = out.lock() {
                    v.push(line);
                }
            }
        }
    });
    seen
}

fn trace(t: &std::sync::Mutex<Vec<String>>) -> String {
    t.lock().map(|v| v.join("\n")).unwrap_or_default()
}

/// Prints the CEL trace when the test fails (a wait that timed out included).
struct TraceOnPanic(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Drop for TraceOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("CEL_TRACE").is_some() {
            eprintln!("CEL events Asterisk sent:\n{}", trace(&self.0));
        }
    }
}

/// An attended transfer (the core feature, *2 on the transferer's keypad),
/// a group pickup (*8) and a call from the
/// carrier into `from-trunk`: each one row, with its legs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attended_transfer_pickup_and_inbound_calls_make_one_row_each() {
    let Some(build) = require("real::calls::attended_transfer_pickup_and_inbound_calls_make_one_row_each") else {
        return;
    };
    let Some(store) = Store::both().await.pop() else { return };
    let label = store.label();
    let ast = asterisk(&build, &format!("calls-kinds-{label}")).await;
    let cel = cel_trace(&ast);
    let _trace = TraceOnPanic(cel.clone());
    // One pickup group (the dialplan snippet's *8).
    let specs = spec(&["1001", "1002", "1003"]).replace(
        "qualifyFrequency: 0}",
        r#"qualifyFrequency: 0, options: {endpoint: {call_group: "1", pickup_group: "1"}}}"#,
    );
    let d = Daemon::start(&ast, store, Source::Dir, &specs).await;
    wait("1001..1003 live", LIVE, || async {
        endpoint(&ast, "1001").await.is_some()
            && endpoint(&ast, "1002").await.is_some()
            && endpoint(&ast, "1003").await.is_some()
    })
    .await;
    let (a, b, c) =
        (sipp::Phone::new("1001", PASSWORD), sipp::Phone::new("1002", PASSWORD), sipp::Phone::new("1003", PASSWORD));
    for p in [&a, &b, &c] {
        let r = p.register(ast.sip_addr()).await;
        assert!(r.ok(), "{label}: {} registers:\n{}", p.extension, r.log);
    }

    // Attended: 1001 → 1002; 1002 presses *2 1003 (AMI's Atxfer queues
    // exactly those digits on 1002's channel), talks to 1003, hangs up:
    // 1001 and 1003 talk, until 1003 hangs up.
    let mark = chrono::Utc::now();
    let transferer = b.answer();
    let target = c.answer_and_hang_up();
    let placing = {
        let (a, at) = (a.clone(), ast.sip_addr());
        tokio::spawn(async move { a.call_until_hung_up(at, "1002").await })
    };
    let chan_1002 = channel_of(&ast, "1002", "Up").await;
    let r = ami_action(
        &ast,
        asterisk_gitops::asterisk::Message::action("Atxfer").with("Channel", &chan_1002).with("Exten", "1003"),
    )
    .await;
    assert!(r.starts_with("Success"), "{label}: Atxfer: {r}");
    channel_of(&ast, "1003", "Up").await;
    let r = ami_action(&ast, asterisk_gitops::asterisk::Message::action("Hangup").with("Channel", &chan_1002)).await;
    assert!(r.starts_with("Success"), "{label}: 1002 hangs up: {r}");
    assert!(transferer.done(LIVE).await.ok(), "{label}: 1002's call ended");
    let t = target.done(LIVE).await;
    assert!(t.ok(), "{label}: 1003 talked and hung up:\n{}", t.log);
    let placed = placing.await.expect("joins");
    assert!(placed.ok(), "{label}: 1001 stayed on until 1003 hung up:\n{}", placed.log);
    let call = the_call_since(&d, mark, "attended transfer").await;
    let events = trace(&cel);
    assert_eq!(
        (&call["caller"], &call["callee"], &call["direction"], &call["disposition"], &call["answeredBy"]),
        (
            &Value::from("1001"),
            &Value::from("1002"),
            &Value::from("internal"),
            &Value::from("answered"),
            &Value::from("1002")
        ),
        "{label}: {call:#}\n{events}"
    );
    assert_eq!(
        (&call["transfers"], &call["hangupCause"], &call["hangupBy"]),
        (&Value::from(1), &Value::from(16), &Value::from("1003")),
        "{label}: {call:#}\n{events}"
    );
    assert_eq!(
        legs(&call),
        [leg("1001", "caller", true), leg("1002", "callee", true), leg("1003", "transfer", true)],
        "{label}: {call:#}\n{events}"
    );
    assert_eq!(call["legs"][1]["transferTo"], "1003", "{label}: {call:#}\n{events}");

    // Pickup: 1001 → 1002, which rings; 1003 dials *8 and has the call.
    let mark = chrono::Utc::now();
    let ringing = b.ring();
    let placing = {
        let (a, at) = (a.clone(), ast.sip_addr());
        tokio::spawn(async move { a.call_until_hung_up(at, "1002").await })
    };
    // The dialled channel is Down until the phone's 180, then Ringing;
    // a pickup takes either.
    channel_of(&ast, "1002", "Down|Ringing").await;
    let picked = c.call(ast.sip_addr(), "*8", Duration::from_millis(1500)).await;
    assert!(picked.ok(), "{label}: 1003 picked up:\n{}", picked.log);
    let placed = placing.await.expect("joins");
    assert!(placed.ok(), "{label}: 1001 talked to 1003:\n{}", placed.log);
    let rang = ringing.done(LIVE).await;
    assert!(rang.ok(), "{label}: 1002 stopped ringing:\n{}", rang.log);
    let call = the_call_since(&d, mark, "pickup").await;
    let events = trace(&cel);
    assert_eq!(
        (&call["caller"], &call["callee"], &call["disposition"], &call["answeredBy"], &call["hangupBy"]),
        (
            &Value::from("1001"),
            &Value::from("1002"),
            &Value::from("answered"),
            &Value::from("1003"),
            &Value::from("1003")
        ),
        "{label}: {call:#}\n{events}"
    );
    assert_eq!(call["hangupCause"], 16, "{label}: {call:#}\n{events}");
    assert_eq!(
        legs(&call),
        [leg("1001", "caller", true), leg("1002", "callee", false), leg("1003", "pickup", true)],
        "{label}: {call:#}\n{events}"
    );

    // Inbound: the carrier calls the DID 998712001002 from 998901112233; 1002 answers.
    let mark = chrono::Utc::now();
    let answering = b.answer();
    let placed =
        sipp::call_in_from(ast.trunk_port, ast.sip_addr(), "998901112233", "998712001002", Duration::from_millis(1500))
            .await;
    assert!(placed.ok(), "{label}: the inbound call:\n{}", placed.log);
    assert!(answering.done(LIVE).await.ok(), "{label}: 1002 answered");
    let call = the_call_since(&d, mark, "inbound").await;
    let events = trace(&cel);
    assert_eq!(
        (&call["caller"], &call["callee"], &call["direction"], &call["disposition"], &call["answeredBy"]),
        (
            &Value::from("998901112233"),
            &Value::from("1002"),
            &Value::from("inbound"),
            &Value::from("answered"),
            &Value::from("1002")
        ),
        "{label}: {call:#}\n{events}"
    );
    assert_eq!(
        (&call["extension"], &call["hangupBy"], &call["hangupCause"]),
        (&Value::from("1002"), &Value::from("trunk"), &Value::from(16)),
        "{label}: {call:#}\n{events}"
    );
    assert_eq!(legs(&call), [leg("trunk", "caller", true), leg("1002", "callee", true)], "{label}: {call:#}\n{events}");
    assert_eq!(call["legs"][0]["dialled"], "998712001002", "{label}: the DID on the carrier's leg: {call:#}");
    d.stop().await;
}
