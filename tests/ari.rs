//! ARI: the captured answers and events parsed field by field, the
//! stand-in's ARI answering byte for byte like the capture, and the client
//! against it (REST, the events WebSocket, wrong password, refused port).

use crate::support::asterisk::captured_standin;
use asterisk_gitops::asterisk::ari::{
    Ari, AriConfig, AriError, AsteriskInfo, ContinueTo, EndpointState, Event, parse_time,
};
use asterisk_gitops::config::SecretString;
use asterisk_standin::{ContactInfo, StandIn};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn capture(name: &str) -> String {
    let path = crate::support::fixture("asterisk/ari").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The event lines of a capture (the capture also notes the client's own requests).
fn event_lines(name: &str) -> Vec<String> {
    capture(name).lines().filter(|l| l.contains("\"type\":")).map(str::to_string).collect()
}

#[test]
fn the_captured_answers_and_events_parse_with_every_field_right() {
    let info: AsteriskInfo = serde_json::from_str(&capture("ari-asterisk-info.json")).expect("info");
    assert_eq!(info.system.version, "22.10.1");
    assert_eq!(info.system.entity_id, "02:fc:00:00:00:01");
    assert_eq!(info.status.startup_time, "2026-11-24T00:00:48.532+0000");
    let ep: EndpointState = serde_json::from_str(&capture("ari-endpoint-1001.json")).expect("endpoint");
    assert_eq!(
        ep,
        EndpointState {
            technology: "PJSIP".into(),
            resource: "1001".into(),
            state: "online".into(),
            channel_ids: vec![]
        }
    );
    let eps: Vec<EndpointState> = serde_json::from_str(&capture("ari-endpoints-pjsip.json")).expect("list");
    assert_eq!(eps.iter().map(|e| e.resource.as_str()).collect::<Vec<_>>(), ["1001", "1002"]);

    let events: Vec<Event> =
        event_lines("events-outbound-call-stasis.jsonl").iter().map(|l| Event::parse(l).expect("parses")).collect();
    assert_eq!(events.len(), 9);
    let Event::StasisStart { timestamp, channel } = &events[0] else { panic!("first is StasisStart: {:?}", events[0]) };
    assert_eq!(parse_time(timestamp).map(|t| t.timestamp_millis()), Some(1_795_478_551_550));
    assert_eq!(channel.id, "1795478551.0");
    assert_eq!(channel.name, "PJSIP/1001-00000000");
    assert_eq!((channel.caller.number.as_str(), channel.caller.name.as_str()), ("1001", "Test User"));
    assert_eq!((channel.dialplan.context.as_str(), channel.dialplan.exten.as_str()), ("from-internal", "998901234567"));
    assert_eq!(channel.dialplan.priority, 1);
    assert_eq!(channel.creationtime, "2026-11-24T00:02:31.549+0000");
    assert!(matches!(&events[1], Event::ChannelStateChange { channel, .. } if channel.state == "Up"));
    assert!(events[2..7].iter().all(|e| *e == Event::Other { kind: "ChannelVarset".into() }));
    assert!(matches!(&events[7], Event::ChannelHangupRequest { cause: Some(32), .. }));
    assert!(matches!(&events[8], Event::StasisEnd { channel, .. } if channel.id == "1795478551.0"));

    let cont: Vec<Event> =
        event_lines("events-outbound-call-continue.jsonl").iter().map(|l| Event::parse(l).expect("parses")).collect();
    assert!(
        matches!(&cont[..], [Event::StasisStart { .. }, Event::StasisEnd { channel, .. }] if channel.state == "Ring")
    );
}

/// Replaces the values that differ from call to call (ids, times) with `*`.
fn normalise(line: &str) -> String {
    let mut out = line.to_string();
    for key in ["\"id\":\"", "\"name\":\"PJSIP/", "\"protocol_id\":\"", "\"timestamp\":\"", "\"creationtime\":\""] {
        let mut from = 0;
        while let Some(i) = out[from..].find(key) {
            let start = from + i + key.len();
            let Some(len) = out[start..].find('"') else { break };
            out.replace_range(start..start + len, "*");
            from = start + 1;
        }
    }
    out
}

fn client(s: &StandIn, password: &str) -> Ari {
    Ari::new(AriConfig {
        url: s.ari_url(),
        user: "gitops".into(),
        password: SecretString::new(password),
        app: "callcenter".into(),
        timeout: Duration::from_secs(2),
    })
    .expect("client")
}

async fn raw_get(s: &StandIn, path: &str, auth: Option<&str>) -> String {
    let mut c = tokio::net::TcpStream::connect(s.ari_addr).await.expect("connect");
    let auth = auth.map(|a| format!("Authorization: Basic {a}\r\n")).unwrap_or_default();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out)).await.expect("answer").expect("read");
    out
}

#[tokio::test]
async fn the_standin_answers_like_the_capture() {
    let (s, _dir) = captured_standin().await;
    let c = s.control();
    assert!(c.register(ContactInfo::new("1001", 5071)));
    assert!(c.register(ContactInfo::new("1002", 5072)));
    // gitops:gitops-secret
    let auth = "Z2l0b3BzOmdpdG9wcy1zZWNyZXQ=";
    let resp = raw_get(&s, "/ari/endpoints/PJSIP", Some(auth)).await;
    let body = resp.split("\r\n\r\n").nth(1).expect("a body");
    assert_eq!(body, capture("ari-endpoints-pjsip.json"));
    let resp = raw_get(&s, "/ari/endpoints/PJSIP/1001", Some(auth)).await;
    assert_eq!(resp.split("\r\n\r\n").nth(1), Some(capture("ari-endpoint-1001.json").as_str()));
    let resp = raw_get(&s, "/ari/asterisk/info", Some(auth)).await;
    assert_eq!(resp.split("\r\n\r\n").nth(1), Some(capture("ari-asterisk-info.json").trim_end()));

    // A wrong password: the captured status line and headers.
    // Header names come out Title-Case like Asterisk's, except that hyper
    // writes `Www-Authenticate` where Asterisk writes `WWW-Authenticate`;
    // values compare exactly.
    let resp = raw_get(&s, "/ari/asterisk/info", Some("Z2l0b3BzOndyb25n")).await;
    let head: Vec<&str> = resp.split("\r\n\r\n").next().unwrap_or("").split("\r\n").collect();
    let captured = capture("ari-unauthorized.txt");
    for line in captured.split("\r\n").filter(|l| !l.is_empty() && !l.starts_with("Date:")) {
        let line = line.replace("WWW-Authenticate:", "Www-Authenticate:");
        assert!(head.contains(&line.as_str()), "missing {line:?} in {resp}");
    }
    assert!(head.iter().any(|l| l.starts_with("Date: ") && l.ends_with(" GMT")), "{resp}");

    // Events: the stand-in's StasisStart and StasisEnd are the captured lines
    // but for ids and times.
    let ari = client(&s, "gitops-secret");
    let mut events = ari.events().await.expect("events socket");
    let id = c.start_call("callcenter", "1001", "Test User", "from-internal", "998901234567").expect("a call");
    let first = tokio::time::timeout(Duration::from_secs(5), events.next_text()).await.expect("in time");
    let first = first.expect("open").expect("text");
    let want = event_lines("events-outbound-call-continue.jsonl");
    assert_eq!(normalise(&first), normalise(&want[0]));
    ari.continue_channel(&id, &ContinueTo::default()).await.expect("continue: 204");
    let end = events.next_text().await.expect("open").expect("text");
    assert_eq!(normalise(&end), normalise(&want[1]));
    assert!(c.continued(&id));
    // Continuing again: the channel is no longer in Stasis.
    let again = ari.continue_channel(&id, &ContinueTo::default()).await.expect_err("409");
    assert!(matches!(again, AriError::Status { status: 409, .. }), "{again}");

    // Subscribed, the app hears the rest of the call; captured shapes again.
    ari.subscribe_channel(&id).await.expect("subscribe");
    c.answer(&id);
    let want = event_lines("events-outbound-call-stasis.jsonl");
    let up = events.next_text().await.expect("open").expect("text");
    assert_eq!(normalise(&up), normalise(&want[1]));
    c.hang_up(&id, 32);
    let hangup = events.next_text().await.expect("open").expect("text");
    assert_eq!(normalise(&hangup), normalise(&want[7]));
    let destroyed = events.next_text().await.expect("open").expect("text");
    // ChannelDestroyed as a real Asterisk 22 sent it (captured by the
    // contract test): its own fields after type and timestamp, then the channel.
    let real = event_lines("events-outbound-call-continued-subscribed.jsonl")
        .into_iter()
        .find(|l| l.starts_with("{\"type\":\"ChannelDestroyed\""))
        .expect("a captured ChannelDestroyed")
        .replace(
            "\"cause\":16,\"cause_txt\":\"Normal Clearing\"",
            "\"cause\":32,\"cause_txt\":\"Circuit/channel congestion\"",
        );
    let head = |l: &str| normalise(l).split("\"channel\":").next().unwrap_or_default().to_string();
    assert_eq!(head(&destroyed), head(&real), "{destroyed}");
    assert!(matches!(Event::parse(&destroyed), Ok(Event::ChannelDestroyed { cause: Some(32), .. })));
}

#[tokio::test]
async fn the_client_reads_the_standin_and_reports_faults_as_typed_errors() {
    let (s, _dir) = captured_standin().await;
    let c = s.control();
    let ari = client(&s, "gitops-secret");
    let info = ari.info().await.expect("info");
    assert_eq!(info.system.version, "22.10.1");
    assert_eq!(ari.endpoint("1001").await.expect("state").map(|e| e.state), Some("offline".into()));
    c.register(ContactInfo::new("1001", 5071));
    assert_eq!(ari.endpoint("1001").await.expect("state").map(|e| e.state), Some("online".into()));
    assert_eq!(ari.endpoint("9999").await.expect("no such endpoint"), None);
    assert_eq!(ari.endpoints().await.expect("list").len(), 2);
    assert!(!ari.channel_exists("nope.1").await.expect("404 is an answer"));

    let wrong = client(&s, "not-the-password");
    assert!(matches!(wrong.info().await, Err(AriError::Unauthorized)));
    assert!(matches!(wrong.events().await, Err(AriError::Unauthorized)));

    // Nothing listening: unreachable, with a reason, within the timeout.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let gone = Ari::new(AriConfig {
        url: format!("http://{addr}"),
        user: "gitops".into(),
        password: SecretString::new("gitops-secret"),
        app: "callcenter".into(),
        timeout: Duration::from_secs(10),
    })
    .expect("client");
    let started = std::time::Instant::now();
    let e = gone.info().await.expect_err("refused");
    assert!(matches!(e, AriError::Unreachable { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused, not timed out: {:?}", started.elapsed());
    assert!(!e.to_string().contains("gitops-secret"));
    assert!(matches!(gone.events().await, Err(AriError::Unreachable { .. })));

    // ARI stopped and back: the client works again without being rebuilt.
    s.stop_ari();
    assert!(ari.info().await.is_err());
    s.restart_ari().await.expect("restart");
    assert_eq!(ari.info().await.expect("back").system.version, "22.10.1");
    assert!(
        Ari::new(AriConfig {
            url: "ftp://x".into(),
            user: "u".into(),
            password: SecretString::new("p"),
            app: "a".into(),
            timeout: Duration::from_secs(1),
        })
        .is_err()
    );
}
