//! Talking to Asterisk: the captured transcripts parsed field by field, the
//! stand-in answering byte for byte like the capture, the client against the
//! stand-in, reload semantics, faults and recovery, and no secret in logs.

use asterisk_gitops::asterisk::ami::{AmiError, parse_session};
use asterisk_gitops::asterisk::{AmiConfig, Asterisk, Contact, Endpoint, EndpointDetail, parse_allow};
use asterisk_standin::{ContactInfo, StandIn};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn capture(name: &str) -> String {
    let path = crate::support::fixture("asterisk/ami").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn events<'a>(
    msgs: &'a [asterisk_gitops::asterisk::Message],
    name: &str,
) -> Vec<&'a asterisk_gitops::asterisk::Message> {
    msgs.iter().filter(|m| m.get("Event") == Some(name)).collect()
}

#[test]
fn every_transcript_parses_with_every_field_right() {
    let dir = crate::support::fixture("asterisk/ami");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir).expect("ls").flatten().map(|e| e.path()).collect();
    names.sort();
    assert_eq!(names.len(), 18, "every captured AMI session");
    for path in &names {
        let text = std::fs::read_to_string(path).expect("read");
        let (banner, msgs) = parse_session(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(banner, "Asterisk Call Manager/11.0.0", "{}", path.display());
        assert_eq!(msgs[0].get("ActionID"), Some("login"), "{}", path.display());
    }

    let (_, m) = parse_session(&capture("ami-PJSIPShowEndpoints-registered.txt")).expect("parses");
    let eps: Vec<Endpoint> = events(&m, "EndpointList").into_iter().map(Endpoint::from_message).collect();
    assert_eq!(eps.len(), 2);
    assert_eq!(
        eps[0],
        Endpoint {
            name: "1001".into(),
            transport: "transport-udp".into(),
            aor: "1001".into(),
            auths: "1001".into(),
            contacts: vec!["1001/sip:1001@127.0.0.1:5071".into()],
            device_state: "Not in use".into(),
            active_channels: 0,
        }
    );
    let (_, m) = parse_session(&capture("ami-PJSIPShowEndpoints.txt")).expect("parses");
    let eps: Vec<Endpoint> = events(&m, "EndpointList").into_iter().map(Endpoint::from_message).collect();
    assert!(eps.iter().all(|e| e.contacts.is_empty() && e.device_state == "Unavailable"));

    let (_, m) = parse_session(&capture("ami-PJSIPShowEndpoint-1001.txt")).expect("parses");
    let items: Vec<_> = m.iter().filter(|x| x.get("Event").is_some()).cloned().collect();
    let d = EndpointDetail::from_events(&items).expect("detail");
    assert_eq!((d.name.as_str(), d.context.as_str(), d.transport.as_str()), ("1001", "from-internal", "transport-udp"));
    assert_eq!(d.codecs, ["ulaw", "alaw"]);
    assert_eq!(d.callerid, "\"Test User\" <1001>");
    assert_eq!((d.dtmf_mode.as_str(), d.aors.as_str(), d.auth.as_str()), ("rfc4733", "1001", "1001"));
    assert_eq!(
        (d.direct_media, d.rtp_symmetric, d.force_rport, d.rewrite_contact),
        (Some(true), Some(false), Some(true), Some(false))
    );
    assert_eq!((d.auth_type.as_deref(), d.max_contacts, d.contacts_registered), (Some("userpass"), Some(1), Some(0)));
    assert!(!format!("{d:?}").contains("Soundz2025"), "the detail carries no password");
    let complete = m.iter().find(|x| x.get("Event") == Some("EndpointDetailComplete")).expect("complete");
    assert_eq!(complete.get("ListItems"), Some("4"));

    let (_, m) = parse_session(&capture("ami-PJSIPShowContacts-registered.txt")).expect("parses");
    let contacts: Vec<Contact> = events(&m, "ContactList").into_iter().map(Contact::from_message).collect();
    assert_eq!(
        contacts[1],
        Contact {
            endpoint: "1002".into(),
            uri: "sip:1002@127.0.0.1:5072".into(),
            user_agent: "PortSIP-standin-sipp".into(),
            status: "NonQualified".into(),
            roundtrip_usec: None,
            expiration_time: Some(1_795_482_137),
            via_addr: "127.0.0.1".into(),
            via_port: Some(5072),
        }
    );
    let (_, m) = parse_session(&capture("ami-CoreSettings.txt")).expect("parses");
    assert_eq!(m[1].get("AsteriskVersion"), Some("22.10.1"));
    let (_, m) = parse_session(&capture("ami-events-register-unregister.txt")).expect("parses");
    assert_eq!(m[1].get("Event"), Some("FullyBooted"));
    assert_eq!(m[4].get("ContactStatus"), Some("Removed"));
    for f in ["ami-reload.txt", "ami-reload-with-bad-option.txt", "ami-reload-with-syntax-error.txt"] {
        let (_, m) = parse_session(&capture(f)).expect("parses");
        assert_eq!(m[1].get("Message"), Some("Module Reloaded"), "{f}: a reload always says so");
    }
    let (_, m) = parse_session(&capture("ami-PJSIPShowEndpoint-rejected.txt")).expect("parses");
    assert_eq!(m[1].get("Message"), Some("Unable to retrieve endpoint 1003"));
    assert_eq!(parse_allow("(ulaw|alaw)"), ["ulaw", "alaw"]);
    assert!(parse_allow("()").is_empty());
}

pub(crate) use crate::support::asterisk::captured_standin;

/// Plays the capture's client side: login (events off), one action as a1, logoff as bye.
async fn session(s: &StandIn, action: &str, secret: &str) -> String {
    let mut c = tokio::net::TcpStream::connect(s.ami_addr).await.expect("connect");
    let req = format!(
        "Action: Login\r\nActionID: login\r\nUsername: gitops\r\nSecret: {secret}\r\nEvents: off\r\n\r\n{action}ActionID: a1\r\n\r\nAction: Logoff\r\nActionID: bye\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out))
        .await
        .expect("the session ends")
        .expect("read");
    out
}

#[tokio::test]
async fn the_stand_in_answers_byte_for_byte_like_the_capture() {
    let (s, _dir) = captured_standin().await;
    let cases = [
        ("Action: PJSIPShowEndpoints\r\n", "ami-PJSIPShowEndpoints.txt"),
        ("Action: PJSIPShowEndpoint\r\nEndpoint: 1001\r\n", "ami-PJSIPShowEndpoint-1001.txt"),
        ("Action: PJSIPShowEndpoint\r\nEndpoint: 9999\r\n", "ami-PJSIPShowEndpoint-missing.txt"),
        ("Action: PJSIPShowContacts\r\n", "ami-PJSIPShowContacts-none.txt"),
        ("Action: PJSIPShowAors\r\n", "ami-PJSIPShowAors.txt"),
        ("Action: CoreSettings\r\n", "ami-CoreSettings.txt"),
        ("Action: CoreStatus\r\n", "ami-CoreStatus.txt"),
        ("Action: Reload\r\nModule: res_pjsip.so\r\n", "ami-reload.txt"),
        ("Action: Command\r\nCommand: pjsip reload\r\n", "ami-Command-pjsip-reload.txt"),
    ];
    for (action, file) in cases {
        assert_eq!(session(&s, action, "gitops-secret").await, capture(file), "{file}");
    }
    assert_eq!(session(&s, "Action: Ping\r\n", "wrong").await, capture("ami-login-failed.txt"));

    // sipp's two registrations, as captured.
    let c = s.control();
    let mut one = ContactInfo::new("1001", 5071);
    one.hash = "05b159396a728bfe3eaa865b94eca3fa".into();
    one.call_id = "1-6020@127.0.0.1".into();
    let mut two = ContactInfo::new("1002", 5072);
    two.hash = "53fa0234eb102a7e978cf647d6e23a43".into();
    two.call_id = "1-6023@127.0.0.1".into();
    two.expiration = 1_795_482_137;
    assert!(c.register(one) && c.register(two));
    assert_eq!(
        session(&s, "Action: PJSIPShowEndpoints\r\n", "gitops-secret").await,
        capture("ami-PJSIPShowEndpoints-registered.txt")
    );
    assert_eq!(
        session(&s, "Action: PJSIPShowContacts\r\n", "gitops-secret").await,
        capture("ami-PJSIPShowContacts-registered.txt")
    );
    assert_eq!(
        session(&s, "Action: PJSIPShowAors\r\n", "gitops-secret").await,
        capture("ami-PJSIPShowAors-registered.txt")
    );
}

fn cfg(s: &StandIn, secret: &str, timeout: Duration) -> AmiConfig {
    AmiConfig { addr: s.ami_addr.to_string(), user: "gitops".into(), secret: secret.into(), timeout, events: false }
}

#[tokio::test]
async fn the_client_reads_the_stand_in() {
    let (s, _dir) = captured_standin().await;
    let a = Asterisk::new(cfg(&s, "gitops-secret", Duration::from_secs(2)));
    let eps = a.endpoints().await.expect("endpoints");
    assert_eq!(eps.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["1001", "1002"]);
    let d = a.endpoint("1002").await.expect("detail").expect("exists");
    assert_eq!(
        (d.codecs.clone(), d.auth_type.as_deref(), d.callerid.as_str()),
        (vec!["ulaw".to_string()], Some("md5"), "")
    );
    assert_eq!(a.endpoint("9999").await.expect("answers"), None);
    assert!(a.contacts().await.expect("no contacts is an empty list").is_empty());
    s.control().register(ContactInfo::new("1001", 5071));
    let contacts = a.contacts().await.expect("contacts");
    assert_eq!((contacts.len(), contacts[0].endpoint.as_str()), (1, "1001"));
    let v = a.version().await.expect("version");
    assert_eq!((v.asterisk_version.as_str(), v.startup.as_str()), ("22.10.1", "2026-11-24 00:00:48"));
    a.reload().await.expect("reload");
    assert_eq!(s.control().reloads(), 1);
    a.close().await;
}

async fn names(a: &Asterisk) -> Vec<String> {
    a.endpoints().await.expect("endpoints").into_iter().map(|e| e.name).collect()
}

fn write_managed(dir: &Path, body: &str) {
    std::fs::write(dir.join("pjsip_gitops.conf"), body).expect("write managed file");
}

const GOOD: &str = "[1003]\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw\ntransport = transport-udp\nauth = 1003\naors = 1003\n\n[1003]\ntype = auth\nauth_type = md5\nusername = 1003\nmd5_cred = 0123456789abcdef0123456789abcdef\n\n[1003]\ntype = aor\nmax_contacts = 1\n";

#[tokio::test]
async fn reloads_refuse_what_asterisk_refuses_and_still_say_module_reloaded() {
    let (s, dir) = captured_standin().await;
    let a = Asterisk::new(cfg(&s, "gitops-secret", Duration::from_secs(2)));

    write_managed(dir.path(), GOOD);
    a.reload().await.expect("Module Reloaded");
    assert_eq!(names(&a).await, ["1003"], "1001 and 1002 vanished with the file's new content");

    // An unknown option: that object is not loaded; the rest is.
    write_managed(dir.path(), &format!("{GOOD}\n[1004]\ntype = endpoint\ncontext = x\nno_such_option = 1\n"));
    a.reload().await.expect("still Module Reloaded");
    assert_eq!(names(&a).await, ["1003"]);
    assert!(s.control().log().iter().any(|l| l.contains("'1004' named 'no_such_option'")), "{:?}", s.control().log());

    // An unknown codec refuses the endpoint: a new one is not loaded, an
    // existing one keeps its previous definition (fact 13).
    write_managed(dir.path(), &GOOD.replace("allow = ulaw", "allow = ulaw,nosuchcodec"));
    a.reload().await.expect("still Module Reloaded");
    assert_eq!(names(&a).await, ["1003"]);
    let kept = a.endpoint("1003").await.expect("answers").expect("kept");
    assert_eq!(kept.codecs, ["ulaw"]);
    assert!(
        s.control()
            .log()
            .iter()
            .any(|l| l.contains("Retaining existing configuration for object of type 'endpoint' with id '1003'")),
        "{:?}",
        s.control().log()
    );
    write_managed(dir.path(), &GOOD.replace("allow = ulaw", "allow = ulaw,nosuchcodec").replace("[1003]", "[1007]"));
    a.reload().await.expect("still Module Reloaded");
    assert!(names(&a).await.is_empty());
    assert_eq!(a.endpoint("1007").await.expect("answers"), None);
    write_managed(dir.path(), GOOD);
    a.reload().await.expect("reload");

    // A syntax error in the included managed file ends it at the bad line:
    // what precedes it is loaded, nothing after (as the real Asterisk does:
    // real::contract::a_syntax_error_and_a_refused_redefinition_keep_what_was_loaded).
    write_managed(dir.path(), &format!("{GOOD}\n[1005\ntype = endpoint\n"));
    a.reload().await.expect("still Module Reloaded");
    assert_eq!(names(&a).await, ["1003"]);
    write_managed(dir.path(), "[1005\ntype = endpoint\n");
    a.reload().await.expect("still Module Reloaded");
    assert!(names(&a).await.is_empty());

    // An endpoint naming an auth and aor that do not exist is loaded all the same.
    write_managed(
        dir.path(),
        "[1006]\ntype = endpoint\ncontext = from-internal\nallow = ulaw\nauth = nope\naors = nope\n",
    );
    a.reload().await.expect("reload");
    assert_eq!(names(&a).await, ["1006"]);
}

#[tokio::test]
async fn a_wrong_password_is_a_typed_error() {
    let (s, _dir) = captured_standin().await;
    let a = Asterisk::new(cfg(&s, "wrong", Duration::from_secs(2)));
    match a.endpoints().await {
        Err(AmiError::AuthFailed { message, .. }) => assert_eq!(message, "Authentication failed"),
        other => panic!("expected AuthFailed, got {other:?}"),
    }
    s.control().refuse_logins(true);
    let ok = Asterisk::new(cfg(&s, "gitops-secret", Duration::from_secs(2)));
    assert!(matches!(ok.endpoints().await, Err(AmiError::AuthFailed { .. })));
}

/// Retries `f` until it succeeds or `within` passes (the port waits between reconnects).
async fn eventually<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > within => panic!("did not recover within {within:?}: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn connection_refused_then_recovery() {
    let (s, _dir) = captured_standin().await;
    // A long timeout, so "refused at once" and "waited for the timeout" stay
    // apart however slow the machine is.
    let timeout = Duration::from_secs(10);
    let a = Asterisk::new(cfg(&s, "gitops-secret", timeout));
    a.endpoints().await.expect("up");
    s.stop();
    let started = Instant::now();
    let err = loop {
        match a.endpoints().await {
            Err(e) => break e,
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(matches!(err, AmiError::Disconnected | AmiError::Connect { .. }), "{err:?}");
    assert!(matches!(a.endpoints().await, Err(AmiError::Connect { .. })), "refused while it is down");
    assert!(started.elapsed() < timeout, "refused, not timed out: {:?}", started.elapsed());
    s.restart().await.expect("restart");
    let eps = eventually(Duration::from_secs(10), || a.endpoints()).await;
    assert_eq!(eps.len(), 2);
}

#[tokio::test]
async fn a_connection_dropped_mid_list_fails_then_recovers() {
    let (s, _dir) = captured_standin().await;
    let timeout = Duration::from_secs(10);
    let a = Asterisk::new(cfg(&s, "gitops-secret", timeout));
    s.control().drop_mid_list(true);
    let started = Instant::now();
    assert_eq!(a.endpoints().await, Err(AmiError::Disconnected));
    assert!(started.elapsed() < timeout, "disconnected, not timed out: {:?}", started.elapsed());
    s.control().drop_mid_list(false);
    let eps = eventually(Duration::from_secs(10), || a.endpoints()).await;
    assert_eq!(eps.len(), 2);
}

#[tokio::test]
async fn ten_seconds_of_silence_time_out_then_recover() {
    let (s, _dir) = captured_standin().await;
    let timeout = Duration::from_millis(800);
    let a = Asterisk::new(cfg(&s, "gitops-secret", timeout));
    a.endpoints().await.expect("up");
    s.control().stay_silent(true);
    let started = Instant::now();
    match a.endpoints().await {
        Err(AmiError::Timeout { action, timeout: t }) => {
            assert_eq!((action.as_str(), t), ("PJSIPShowEndpoints", timeout))
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let took = started.elapsed();
    // Not before the timeout, and long before the ten seconds of silence
    // (the slack is for a loaded machine).
    assert!(took >= timeout && took < timeout * 8, "ended at the configured timeout: {took:?}");
    // The stand-in would stay silent for ten seconds; it speaks again sooner here.
    s.control().stay_silent(false);
    let eps = eventually(Duration::from_secs(10), || a.endpoints()).await;
    assert_eq!(eps.len(), 2);
}

#[tokio::test]
async fn a_garbage_line_is_a_protocol_error_then_recovery() {
    let (s, _dir) = captured_standin().await;
    let a = Asterisk::new(cfg(&s, "gitops-secret", Duration::from_secs(2)));
    a.endpoints().await.expect("up");
    s.control().send_garbage_next();
    assert!(matches!(a.endpoints().await, Err(AmiError::Protocol(_))));
    let eps = eventually(Duration::from_secs(10), || a.endpoints()).await;
    assert_eq!(eps.len(), 2);
}

#[tokio::test]
async fn unsolicited_events_interleave_with_answers() {
    let (s, _dir) = captured_standin().await;
    let mut c = cfg(&s, "gitops-secret", Duration::from_secs(2));
    c.events = true;
    let client = asterisk_gitops::asterisk::AmiClient::connect(c).await.expect("login");
    let mut events = client.subscribe();
    s.control().register(ContactInfo::new("1002", 5072));
    s.control().unregister("1002");
    let (_, items) =
        client.request_list(asterisk_gitops::asterisk::Message::action("PJSIPShowEndpoints")).await.expect("list");
    assert_eq!(items.len(), 2, "events did not end up in the list");
    // Until both events the unregistration causes have come (or 30 s pass).
    let want = ["ContactStatus:Removed", "PeerStatus:Unreachable"];
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !want.iter().all(|w| seen.iter().any(|s| s == w)) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(ev)) => seen.push(format!(
                "{}:{}",
                ev.get("Event").unwrap_or(""),
                ev.get("ContactStatus").or(ev.get("PeerStatus")).or(ev.get("State")).or(ev.get("Status")).unwrap_or("")
            )),
            Ok(Err(e)) => panic!("the event stream ended ({e}) before {want:?}; seen {seen:?}"),
            Err(_) => panic!("timed out after 30 s waiting for {want:?}; seen {seen:?}"),
        }
    }
}

/// Runs in a child process (see below) with a global subscriber at TRACE,
/// so every callsite is enabled whatever other tests did first.
#[tokio::test]
#[ignore = "run by credentials_never_reach_the_logs in a child process"]
async fn log_probe() {
    if std::env::var_os("AG_LOG_PROBE").is_none() {
        return;
    }
    // The subscriber the binary installs (with the `log` bridge, so the
    // WebSocket library's own logging is captured too), at trace.
    asterisk_gitops::cli::init_logging("trace", std::io::stdout).expect("the only subscriber in this process");
    let (s, _dir) = captured_standin().await;
    let a = Asterisk::new(cfg(&s, "gitops-secret", Duration::from_secs(2)));
    let d = a.endpoint("1001").await.expect("detail").expect("exists");
    tracing::debug!(detail = ?d, "got the detail");
    let bad = Asterisk::new(cfg(&s, "another-secret", Duration::from_secs(2)));
    let err = bad.endpoints().await.expect_err("refused");
    tracing::warn!(error = %err, error_debug = ?err, "login refused");
    a.close().await;

    // ARI: the REST client, a refused password, and the call logger playing a call.
    use asterisk_gitops::asterisk::ari::{Ari, AriConfig};
    let ari_cfg = |password: &str| AriConfig {
        url: s.ari_url(),
        user: "gitops".into(),
        password: asterisk_gitops::config::SecretString::new(password),
        app: "callcenter".into(),
        timeout: Duration::from_secs(2),
    };
    let ari = Ari::new(ari_cfg("gitops-secret")).expect("client");
    let info = ari.info().await.expect("info");
    tracing::debug!(client = ?ari, info = ?info, "ARI info");
    let bad = Ari::new(ari_cfg("another-secret")).expect("client");
    let err = bad.info().await.expect_err("refused");
    tracing::warn!(error = %err, error_debug = ?err, "ARI refused");
    let db_dir = tempfile::tempdir().expect("tempdir");
    let db = asterisk_gitops::db::Db::connect(
        &format!("sqlite://{}/calls.db", db_dir.path().display()),
        &asterisk_gitops::db::Retry::default(),
    )
    .await
    .expect("db");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let stats = std::sync::Arc::new(asterisk_gitops::calls::CallLogStats::default());
    let task =
        tokio::spawn(asterisk_gitops::calls::run(db.clone(), "default", ari, Default::default(), stats.clone(), rx));
    let c = s.control();
    while !c.app_connected("callcenter") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id = c.start_call("callcenter", "1001", "Test User", "from-internal", "998901234567").expect("call");
    while !c.continued(&id) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.hang_up(&id, 16);
    while stats.calls_completed.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(true);
    task.await.expect("logger stops");

    // The daemon: API and UI writes with passwords, a wrong token, a sign-in.
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = dir.path().join("extensions.d");
    std::fs::create_dir_all(&specs).expect("mkdir");
    let file = asterisk_gitops::config::FileConfig {
        admin_token: Some(asterisk_gitops::config::SecretString::new("probe-admin-token")),
        ..Default::default()
    };
    let flags = asterisk_gitops::config::Overrides {
        state_dir: Some(dir.path().join("state")),
        spec_dir: Some(specs),
        ..Default::default()
    };
    let settings = asterisk_gitops::config::Settings::resolve(flags, file, &|_| None).expect("settings");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(asterisk_gitops::app::run(settings, listener, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let url = |p: &str| format!("http://{addr}{p}");
    let seed = r#"{"extension":"1001","password":"Soundz2025","displayName":"Test User","context":"from-internal","transport":"transport-udp","codecs":"ulaw,alaw"}"#;
    let r = http
        .post(url("/extensions"))
        .bearer_auth("probe-admin-token")
        .header("content-type", "application/json")
        .body(seed)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    let r = http
        .put(url("/extensions/1001"))
        .bearer_auth("probe-admin-token")
        .header("content-type", "application/json")
        .body(r#"{"password":"Probe-Pass-4242"}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status().as_u16(), 200);
    let r = http.post(url("/extensions")).bearer_auth("wrong-probe-token").body(seed).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 401);
    let r = http.get(url("/ui/signin")).send().await.expect("signin form");
    let pre = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("form cookie")
        .to_string();
    let page = r.text().await.expect("text");
    let pre_csrf =
        page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf").to_string();
    let r = http
        .post(url("/ui/signin"))
        .header("cookie", pre)
        .form(&[("token", "probe-admin-token"), ("csrf", pre_csrf.as_str())])
        .send()
        .await
        .expect("signin");
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("cookie")
        .to_string();
    let page = http
        .get(url("/ui/extensions/new"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("form")
        .text()
        .await
        .expect("text");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf").to_string();
    let r = http
        .post(url("/ui/extensions"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("extension", "1002"),
            ("password", "Form-Pass-3131"),
            ("codecs", "ulaw"),
            ("context", "from-internal"),
            ("transport", "transport-udp"),
        ])
        .send()
        .await
        .expect("create");
    assert_eq!(r.status().as_u16(), 303);
    let _ = stop.send(());
    daemon.await.expect("joins").expect("stops cleanly");
}

#[test]
fn credentials_never_reach_the_logs() {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "asterisk::log_probe", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env("AG_LOG_PROBE", "1")
        .output()
        .expect("runs the probe");
    let logs = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{logs}");
    assert!(
        logs.contains("action=\"PJSIPShowEndpoint\"") && logs.contains("action=\"Login\""),
        "debug logging was captured: {logs}"
    );
    assert!(
        logs.contains("ARI refused") && logs.contains("call record created") && logs.contains("ARI events connected"),
        "the ARI side was logged: {logs}"
    );
    // The `log` bridge is in: the WebSocket library's records arrive (at debug).
    assert!(logs.contains("tungstenite"), "tungstenite's log records were captured: {logs}");
    assert!(
        logs.contains("UI sign-in") && logs.contains("asterisk-gitops is running"),
        "the daemon was logged: {logs}"
    );
    // Basic auth of gitops:gitops-secret and gitops:another-secret, too.
    for secret in [
        "gitops-secret",
        "another-secret",
        "Soundz2025",
        "281036cc5c24788fe74c0ae5d9c07baf",
        "Z2l0b3BzOmdpdG9wcy1zZWNyZXQ=",
        "Z2l0b3BzOmFub3RoZXItc2VjcmV0",
        "Probe-Pass-4242",
        "Form-Pass-3131",
        "probe-admin-token",
        "wrong-probe-token",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs:\n{logs}");
    }
}
