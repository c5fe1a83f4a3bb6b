//! Contract tests: each behaviour the stand-in claims about Asterisk, in one
//! test body run twice — on the stand-in and on the real Asterisk 22 — so
//! the stand-in cannot drift from the real thing. Where they disagree, the
//! real one is right and the stand-in is fixed.

use asterisk_gitops::asterisk::Asterisk as Client;
use asterisk_gitops::asterisk::ami::{AmiConfig, AmiError, Message};
use asterisk_gitops::asterisk::ari::{Ari, AriConfig, AriError, ContinueTo, Event};
use asterisk_gitops::config::SecretString;
use asterisk_real::{Asterisk, Options, require, sipp};
use asterisk_standin::{ContactInfo, StandIn, StandInConfig};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// One Asterisk or the other, behind the same few verbs.
pub(crate) enum Backend {
    StandIn { s: StandIn, _dir: tempfile::TempDir },
    Real(Asterisk),
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::StandIn { .. } => "stand-in",
            Backend::Real(_) => "real Asterisk",
        }
    }

    fn managed_file(&self) -> PathBuf {
        match self {
            Backend::StandIn { _dir, .. } => _dir.path().join("pjsip_gitops.conf"),
            Backend::Real(a) => a.managed_file(),
        }
    }

    fn write_managed(&self, body: &str) {
        std::fs::write(self.managed_file(), body).expect("write the managed file");
    }

    fn ami(&self, secret: Option<&str>) -> Client {
        let (addr, user, right) = match self {
            Backend::StandIn { s, .. } => (s.ami_addr.to_string(), "gitops".to_string(), "gitops-secret".to_string()),
            Backend::Real(a) => (a.ami_addr().to_string(), asterisk_real::AMI_USER.to_string(), a.ami_secret.clone()),
        };
        Client::new(AmiConfig {
            addr,
            user,
            secret: secret.map(str::to_string).unwrap_or(right),
            timeout: Duration::from_secs(10),
            events: false,
        })
    }

    fn ari(&self, password: Option<&str>) -> Ari {
        let (url, user, right) = match self {
            Backend::StandIn { s, .. } => (s.ari_url(), "gitops".to_string(), "gitops-secret".to_string()),
            Backend::Real(a) => (a.ari_url(), asterisk_real::ARI_USER.to_string(), a.ari_password.clone()),
        };
        Ari::new(AriConfig {
            url,
            user,
            password: SecretString::new(password.unwrap_or(&right)),
            app: "callcenter".into(),
            timeout: Duration::from_secs(10),
        })
        .expect("an ARI client")
    }

    /// A phone registers for `ext` (sipp on the real one) with this user agent.
    async fn register(&self, ext: &str, password: &str, user_agent: &str) -> u16 {
        match self {
            Backend::StandIn { s, .. } => {
                let port = asterisk_real::free_port();
                let contact = ContactInfo { user_agent: user_agent.into(), ..ContactInfo::new(ext, port) };
                assert!(s.control().register(contact), "the stand-in has the aor");
                port
            }
            Backend::Real(a) => {
                let phone = sipp::Phone { user_agent: user_agent.into(), ..sipp::Phone::new(ext, password) };
                let out = phone.register(a.sip_addr()).await;
                assert!(out.ok(), "sipp registers:\n{}", out.log);
                phone.port
            }
        }
    }
}

/// Runs `body` on the stand-in, then on the real Asterisk (SKIPPED loudly
/// when there is none, a failure under CI).
async fn on_both_asterisks<F, Fut>(test: &str, managed: &str, body: F)
where
    F: Fn(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    on_both_asterisks_with(test, managed, false, body).await
}

/// As [`on_both_asterisks`]; `trunk` gives the real one its carrier trunk.
async fn on_both_asterisks_with<F, Fut>(test: &str, managed: &str, trunk: bool, body: F)
where
    F: Fn(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = asterisk_standin::write_operator_conf(dir.path(), "pjsip_gitops.conf").expect("conf");
    std::fs::write(dir.path().join("pjsip_gitops.conf"), managed).expect("managed");
    let s = StandIn::start(StandInConfig { pjsip_conf: conf, user: "gitops".into(), secret: "gitops-secret".into() })
        .await
        .expect("the stand-in starts");
    body(Backend::StandIn { s, _dir: dir }).await;
    let Some(build) = require(test) else { return };
    let opts = Options { managed: managed.into(), trunk, ..Options::named("contract") };
    let real = Asterisk::start(&build, opts).await.expect("Asterisk starts");
    body(Backend::Real(real)).await;
}

fn endpoint(n: &str, extra: &str) -> String {
    format!(
        "[{n}]\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw\ntransport = transport-udp\nauth = {n}\naors = {n}\n{extra}\n[{n}]\ntype = auth\nauth_type = userpass\nusername = {n}\npassword = Soundz2025\n\n[{n}]\ntype = aor\nmax_contacts = 1\n\n"
    )
}

async fn names(a: &Client) -> Vec<String> {
    a.endpoints().await.expect("endpoints").into_iter().map(|e| e.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refuses_objects_one_by_one_and_still_says_module_reloaded() {
    on_both_asterisks("real::contract::reload_refusals", "", |b| async move {
        let a = b.ami(None);
        assert_eq!(names(&a).await, Vec::<String>::new(), "{}: an empty estate lists no endpoints", b.label());
        let missing_refs =
            "[1005]\ntype = endpoint\ncontext = from-internal\nallow = ulaw\nauth = nosuchauth\naors = nosuchaor\n\n";
        b.write_managed(&format!(
            "{}{}{}{missing_refs}",
            endpoint("1001", ""),
            endpoint("1003", "no_such_option = yes\n"),
            endpoint("1004", "allow = ulaw,nosuchcodec\n"),
        ));
        a.reload().await.unwrap_or_else(|e| panic!("{}: the reload answers success: {e}", b.label()));
        assert_eq!(names(&a).await, ["1001", "1005"], "{}", b.label());
        assert_eq!(a.endpoint("1003").await.expect("answers"), None, "{}", b.label());
        let d = a.endpoint("1001").await.expect("answers").expect("1001 loaded");
        assert_eq!(
            (d.context.as_str(), d.codecs.clone(), d.auth_type.as_deref()),
            ("from-internal", vec!["ulaw".to_string()], Some("userpass")),
            "{}",
            b.label()
        );
        assert_eq!(d.max_contacts, Some(1), "{}", b.label());
        a.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_and_a_refused_redefinition_keep_what_was_loaded() {
    on_both_asterisks("real::contract::keep_what_was_loaded", &endpoint("1001", ""), |b| async move {
        let a = b.ami(None);
        assert_eq!(names(&a).await, ["1001"], "{}", b.label());
        // A new definition of 1001 Asterisk refuses: the old one stays.
        let redefined =
            endpoint("1001", "no_such_option = yes\n").replace("context = from-internal", "context = elsewhere");
        b.write_managed(&redefined);
        a.reload().await.unwrap_or_else(|e| panic!("{}: {e}", b.label()));
        let d = a.endpoint("1001").await.expect("answers").expect("1001 still loaded");
        assert_eq!(d.context, "from-internal", "{}: the previous definition is kept", b.label());
        // A syntax error in the managed (included) file ends that file at the
        // bad line: what precedes it is loaded, the rest is not, and the
        // reload still says Module Reloaded. (Not "the previous config stays":
        // that holds for an error in pjsip.conf itself.)
        b.write_managed(&format!("{}[1002\ntype = endpoint\n", endpoint("1009", "")));
        a.reload().await.unwrap_or_else(|e| panic!("{}: {e}", b.label()));
        assert_eq!(names(&a).await, ["1009"], "{}", b.label());
        b.write_managed("[1005\ntype = endpoint\n");
        a.reload().await.unwrap_or_else(|e| panic!("{}: {e}", b.label()));
        assert_eq!(
            names(&a).await,
            Vec::<String>::new(),
            "{}: an error on line 1 loads nothing of the file",
            b.label()
        );
        a.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_in_asterisks_words() {
    on_both_asterisks("real::contract::wrong_credentials", "", |b| async move {
        match b.ami(Some("not-the-secret")).endpoints().await {
            Err(AmiError::AuthFailed { message, .. }) => assert_eq!(message, "Authentication failed", "{}", b.label()),
            other => panic!("{}: {other:?}", b.label()),
        }
        match b.ari(Some("not-the-password")).info().await {
            Err(AriError::Unauthorized) => {}
            other => panic!("{}: {other:?}", b.label()),
        }
        let v = b.ami(None).version().await.expect("version");
        assert_eq!(v.asterisk_version, "22.10.1", "{}", b.label());
        assert_eq!(b.ari(None).info().await.expect("ARI info").system.version, "22.10.1", "{}", b.label());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_phone_is_a_contact_with_its_uri_and_user_agent() {
    on_both_asterisks("real::contract::contacts", &endpoint("1001", ""), |b| async move {
        let a = b.ami(None);
        assert!(a.contacts().await.expect("contacts").is_empty(), "{}: none registered", b.label());
        let port = b.register("1001", "Soundz2025", "PortSIP UC Client").await;
        let contacts = a.contacts().await.expect("contacts");
        assert_eq!(contacts.len(), 1, "{}: {contacts:?}", b.label());
        let c = &contacts[0];
        assert_eq!(
            (c.endpoint.as_str(), c.uri.clone(), c.user_agent.as_str(), c.status.as_str(), c.roundtrip_usec),
            ("1001", format!("sip:1001@127.0.0.1:{port}"), "PortSIP UC Client", "NonQualified", None),
            "{}",
            b.label()
        );
        assert_eq!((c.via_addr.as_str(), c.via_port), ("127.0.0.1", Some(port)), "{}", b.label());
        assert!(c.expiration_time.is_some_and(|t| t > 1_700_000_000), "{}: {c:?}", b.label());
        a.close().await;
    })
    .await;
}

/// Reads events until one for `channel` (or any, when empty) of `kind`;
/// returns it with the raw lines read on the way.
async fn next_event(
    events: &mut asterisk_gitops::asterisk::ari::AriEvents,
    kind: &str,
    channel: &str,
    raw: &mut Vec<String>,
    label: &str,
) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let text = match tokio::time::timeout(left, events.next_text()).await {
            Ok(Some(Ok(t))) => t,
            other => panic!("{label}: no {kind} within 30 s ({other:?}); read so far:\n{}", raw.join("\n")),
        };
        raw.push(text.clone());
        let ev = Event::parse(&text).unwrap_or_else(|e| panic!("{label}: an event we cannot read: {e}\n{text}"));
        let same = channel.is_empty() || ev.channel().is_some_and(|c| c.id == channel);
        let is =
            serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["type"].as_str().map(str::to_string));
        if same && is.as_deref() == Some(kind) {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_into_stasis_is_started_continued_and_destroyed_with_its_cause() {
    on_both_asterisks_with("real::contract::stasis_call", &endpoint("1001", ""), true, |b| async move {
        let label = b.label();
        let ari = b.ari(None);
        let mut events = ari.events().await.unwrap_or_else(|e| panic!("{label}: events socket: {e}"));
        let mut raw = Vec::new();
        // The call: 1001 dials 998901234567, which the dialplan sends into Stasis(callcenter).
        let real = match &b {
            Backend::StandIn { s, .. } => {
                let c = s.control();
                let id = c.start_call("callcenter", "1001", "1001", "from-internal", "998901234567").expect("a call");
                drop(id);
                None
            }
            Backend::Real(a) => {
                let carrier = sipp::answer_on(a.trunk_port);
                let phone = sipp::Phone::new("1001", "Soundz2025");
                assert!(phone.register(a.sip_addr()).await.ok(), "{label}: registers");
                let server = a.sip_addr();
                let caller =
                    tokio::spawn(async move { phone.call(server, "998901234567", Duration::from_millis(800)).await });
                Some((carrier, caller))
            }
        };
        let start = next_event(&mut events, "StasisStart", "", &mut raw, label).await;
        let Event::StasisStart { channel, .. } = start else { unreachable!() };
        assert_eq!(
            (channel.caller.number.as_str(), channel.dialplan.exten.as_str(), channel.dialplan.context.as_str()),
            ("1001", "998901234567", "from-internal"),
            "{label}"
        );
        assert!(!channel.creationtime.is_empty(), "{label}");
        let id = channel.id.clone();
        ari.subscribe_channel(&id).await.unwrap_or_else(|e| panic!("{label}: subscribe: {e}"));
        ari.continue_channel(&id, &ContinueTo::default()).await.unwrap_or_else(|e| panic!("{label}: continue: {e}"));
        next_event(&mut events, "StasisEnd", &id, &mut raw, label).await;
        if let Backend::StandIn { s, .. } = &b {
            s.control().answer(&id);
            s.control().hang_up(&id, 16);
        }
        // Continued out of Stasis, the channel still reports through the subscription.
        let up = next_event(&mut events, "ChannelStateChange", &id, &mut raw, label).await;
        assert_eq!(up.channel().map(|c| c.state.as_str()), Some("Up"), "{label}");
        let hangup = next_event(&mut events, "ChannelHangupRequest", &id, &mut raw, label).await;
        let Event::ChannelHangupRequest { cause: request_cause, .. } = hangup else { unreachable!() };
        let destroyed = next_event(&mut events, "ChannelDestroyed", &id, &mut raw, label).await;
        let Event::ChannelDestroyed { cause, cause_txt, .. } = destroyed else { unreachable!() };
        assert!(cause.is_some() && !cause_txt.is_empty(), "{label}: {cause:?} {cause_txt:?}");
        assert!(request_cause.is_some(), "{label}: the hang-up request carries a cause");
        if let Some((carrier, caller)) = real {
            let placed = caller.await.expect("joins");
            assert!(placed.ok(), "{label}: the call:\n{}", placed.log);
            assert!(carrier.done(Duration::from_secs(20)).await.ok(), "{label}: the carrier");
            // Kept as a capture of what Asterisk 22 sends, for the stand-in's sake.
            let dir = crate::support::repo_root().join("target/asterisk-captures");
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join("stasis-call-continued.jsonl"), raw.join("\n") + "\n");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_and_unregistering_send_contact_status_events() {
    on_both_asterisks("real::contract::contact_status", &endpoint("1001", ""), |b| async move {
        let label = b.label();
        let (addr, user, secret) = match &b {
            Backend::StandIn { s, .. } => (s.ami_addr.to_string(), "gitops".to_string(), "gitops-secret".to_string()),
            Backend::Real(a) => (a.ami_addr().to_string(), asterisk_real::AMI_USER.to_string(), a.ami_secret.clone()),
        };
        let client = asterisk_gitops::asterisk::AmiClient::connect(AmiConfig {
            addr,
            user,
            secret,
            timeout: Duration::from_secs(10),
            events: true,
        })
        .await
        .expect("login with events");
        let mut events = client.subscribe();
        let port = b.register("1001", "Soundz2025", "PortSIP UC Client").await;
        let uri = format!("sip:1001@127.0.0.1:{port}");
        let status = |want: &'static str| {
            let uri = uri.clone();
            move |m: &Message| {
                m.get("Event") == Some("ContactStatus")
                    && m.get("ContactStatus") == Some(want)
                    && m.get("URI") == Some(uri.as_str())
            }
        };
        // Registering an unqualified contact: the peer status, the device
        // state and a NonQualified contact status, in no fixed order.
        let mut seen = Vec::new();
        for (what, pred) in [
            (
                "PeerStatus Reachable",
                Box::new(|m: &Message| {
                    m.get("Event") == Some("PeerStatus")
                        && m.get("PeerStatus") == Some("Reachable")
                        && m.get("Peer") == Some("PJSIP/1001")
                }) as Box<dyn Fn(&Message) -> bool>,
            ),
            (
                "DeviceStateChange NOT_INUSE",
                Box::new(|m: &Message| {
                    m.get("Event") == Some("DeviceStateChange") && m.get("State") == Some("NOT_INUSE")
                }),
            ),
            ("ContactStatus NonQualified", Box::new(status("NonQualified"))),
        ] {
            if seen.iter().any(&pred) {
                continue;
            }
            let (m, before) = wait_event_after(&mut events, &pred, &format!("{label}: {what}")).await;
            seen.extend(before);
            seen.push(m);
        }
        let nq = seen.iter().find(|m| status("NonQualified")(m)).expect("seen");
        assert_eq!(
            (nq.get("AOR"), nq.get("EndpointName"), nq.get("RoundtripUsec")),
            (Some("1001"), Some("1001"), Some("0")),
            "{label}"
        );
        assert!(!seen.iter().any(|m| m.get("ContactStatus") == Some("Created")), "{label}: {seen:#?}");
        match &b {
            Backend::StandIn { s, .. } => s.control().unregister("1001"),
            Backend::Real(a) => {
                let phone = sipp::Phone { port, ..sipp::Phone::new("1001", "Soundz2025") };
                assert!(phone.register_for(a.sip_addr(), 0).await.ok(), "{label}: unregisters");
            }
        }
        let (removed, before) = wait_event_after(&mut events, status("Removed"), label).await;
        assert_eq!((removed.get("AOR"), removed.get("EndpointName")), (Some("1001"), Some("1001")), "{label}");
        assert!(removed.get("RoundtripUsec").is_some(), "{label}: {removed:?}");
        assert!(before.iter().any(|m| m.get("PeerStatus") == Some("Unreachable")), "{label}: {before:?}");
        assert!(client_contacts_empty(&b).await, "{label}: no contact left");
    })
    .await;
}

async fn client_contacts_empty(b: &Backend) -> bool {
    b.ami(None).contacts().await.expect("contacts").is_empty()
}

/// The first event `pred` picks, and the events before it.
async fn wait_event_after(
    events: &mut tokio::sync::broadcast::Receiver<Message>,
    pred: impl Fn(&Message) -> bool,
    label: &str,
) -> (Message, Vec<Message>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(m)) if pred(&m) => return (m, seen),
            Ok(Ok(m)) => seen.push(m),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            other => panic!("{label}: the event did not come ({other:?}); seen:\n{seen:#?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_reports_an_endpoint_offline_then_online_once_registered() {
    on_both_asterisks("real::contract::ari_endpoint_state", &endpoint("1001", ""), |b| async move {
        let label = b.label();
        let ari = b.ari(None);
        let ep = ari.endpoint("1001").await.expect("answers").expect("1001 exists");
        assert_eq!(
            (ep.technology.as_str(), ep.resource.as_str(), ep.state.as_str()),
            ("PJSIP", "1001", "offline"),
            "{label}"
        );
        assert!(ari.endpoint("4242").await.expect("answers").is_none(), "{label}: an unknown endpoint is none");
        b.register("1001", "Soundz2025", "PortSIP UC Client").await;
        // The real Asterisk updates an endpoint's state asynchronously (a
        // device state change after the 200 OK): online shortly after, not
        // necessarily at once. Wait for it, with a deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ep = ari.endpoint("1001").await.expect("answers").expect("1001 exists");
            if ep.state == "online" {
                break;
            }
            assert_eq!(ep.state, "offline", "{label}: only offline before online");
            assert!(tokio::time::Instant::now() < deadline, "{label}: 1001 still {} 30 s after registering", ep.state);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all = ari.endpoints().await.expect("endpoints");
        assert!(all.iter().any(|e| e.resource == "1001" && e.state == "online"), "{label}: {all:?}");
    })
    .await;
}

/// The option catalogue committed for `validate` and `render` without an
/// Asterisk (`catalogue/asterisk-22.txt`) is what a real Asterisk 22 knows:
/// ARI's dynamic configuration lists every option of an object's type, file
/// objects included (fact 12). `UPDATE_CATALOGUE=1` writes the file anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_option_catalogue_is_what_asterisk_knows() {
    let Some(build) = require("real::contract::the_committed_option_catalogue_is_what_asterisk_knows") else {
        return;
    };
    let mut opts = Options::named("catalogue");
    opts.managed = "[9001]\ntype = endpoint\naors = 9001\nauth = 9001\n\n[9001]\ntype = aor\nmax_contacts = 1\n\n\
                    [9001]\ntype = auth\nauth_type = userpass\nusername = 9001\npassword = catalogue-secret\n"
        .into();
    let ast = Asterisk::start(&build, opts).await.expect("Asterisk starts");
    let http = reqwest::Client::new();
    let mut text = String::from(
        "# Option names Asterisk 22 knows for the res_pjsip objects the managed file defines,\n\
         # as ARI's GET /ari/asterisk/config/dynamic/res_pjsip/<type>/<id> lists them, and the few\n\
         # it cannot list (no value to print: type, the ACLs, disallow, contact_user, security_mechanisms).\n\
         # Written by `UPDATE_CATALOGUE=1 cargo test the_committed_option_catalogue`; checked by the same test.\n",
    );
    for kind in ["endpoint", "aor", "auth"] {
        let url = format!("{}/ari/asterisk/config/dynamic/res_pjsip/{kind}/9001", ast.ari_url());
        let resp = http
            .get(&url)
            .basic_auth(asterisk_real::ARI_USER, Some(&ast.ari_password))
            .send()
            .await
            .expect("ARI answers");
        assert_eq!(resp.status(), 200, "{kind}: {url}");
        let fields: Vec<serde_json::Value> = resp.json().await.expect("a JSON list");
        let mut names: Vec<String> =
            fields.iter().filter_map(|f| f["attribute"].as_str().map(str::to_string)).collect();
        assert!(names.len() > 5, "{kind}: {names:?}");
        // Options Asterisk registers without a way to print their value, so
        // ARI does not list them (res_pjsip's sources): `type` everywhere,
        // the ACLs, `disallow`, `contact_user` and `security_mechanisms`.
        names.push("type".into());
        if kind == "endpoint" {
            for n in
                ["contact_deny", "contact_permit", "contact_user", "deny", "disallow", "permit", "security_mechanisms"]
            {
                names.push(n.into());
            }
        }
        names.sort();
        names.dedup();
        text.push_str(&format!("\n[{kind}]\n"));
        for n in names {
            text.push_str(&n);
            text.push('\n');
        }
    }
    assert!(!text.contains("catalogue-secret"), "option names only, never values");
    let path = crate::support::repo_root().join("catalogue/asterisk-22.txt");
    if std::env::var_os("UPDATE_CATALOGUE").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, &text).expect("write the catalogue");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let body = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        body(&committed),
        body(&text),
        "catalogue/asterisk-22.txt differs from what this Asterisk knows: run UPDATE_CATALOGUE=1 cargo test the_committed_option_catalogue"
    );
}

/// Verification compares the credential Asterisk holds with the file's as
/// md5 digests: for a userpass auth (the password hashed under Asterisk's
/// default realm) and an md5 one, the digest read back from a real
/// Asterisk matches the right secret and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_asterisk_holds_is_compared_as_a_digest() {
    use asterisk_gitops::reconcile::AsteriskControl;
    use asterisk_gitops::secret::{DEFAULT_REALM, md5_cred};
    let Some(build) = require("real::contract::the_credential_asterisk_holds_is_compared_as_a_digest") else {
        return;
    };
    let md5 = md5_cred("9002", DEFAULT_REALM, "md5-secret");
    let mut opts = Options::named("credential");
    opts.managed = format!(
        "[9001]\ntype = endpoint\naors = 9001\nauth = 9001\n\n[9001]\ntype = aor\n\n\
         [9001]\ntype = auth\nauth_type = userpass\nusername = 9001\npassword = userpass-secret\n\n\
         [9002]\ntype = endpoint\naors = 9002\nauth = 9002\n\n[9002]\ntype = aor\n\n\
         [9002]\ntype = auth\nauth_type = md5\nusername = 9002\nmd5_cred = {md5}\n"
    );
    let ast = Asterisk::start(&build, opts).await.expect("Asterisk starts");
    let client = Client::new(AmiConfig {
        addr: ast.ami_addr().to_string(),
        user: asterisk_real::AMI_USER.into(),
        secret: ast.ami_secret.clone(),
        timeout: Duration::from_secs(10),
        events: false,
    });
    for (n, right, wrong) in [
        ("9001", md5_cred("9001", DEFAULT_REALM, "userpass-secret"), md5_cred("9001", DEFAULT_REALM, "other")),
        ("9002", md5.clone(), md5_cred("9002", DEFAULT_REALM, "other")),
    ] {
        let seen = AsteriskControl::endpoint(&client, n).await.expect("AMI answers").expect("loaded");
        let options = seen.options.expect("the detail");
        assert!(options.auth_md5.is_some(), "{n}: the auth's credential is read back");
        assert!(!options.credential_differs(&right), "{n}: the right secret matches");
        assert!(options.credential_differs(&wrong), "{n}: another secret does not");
        let shown = format!("{options:?}");
        assert!(!shown.contains("userpass-secret") && !shown.contains(&right), "{n}: never printed: {shown}");
    }
    client.close().await;
}

/// What `PJSIPShowEndpoint` reports for every option of the profile table
/// (src/core/spec/profile.rs): Asterisk's defaults for an endpoint that sets
/// none, nat's four flags, and everything `webrtc = yes` implies. The
/// stand-in answers the same; verification relies on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_detail_reports_each_profiles_options() {
    use asterisk_gitops::core::spec::Profile;
    use asterisk_gitops::core::spec::profile::{OPTIONS, resolve_flags};
    let managed = format!(
        "{}{}{}",
        endpoint("1001", ""),
        endpoint("1002", "rewrite_contact = yes\nrtp_symmetric = yes\nforce_rport = yes\ndirect_media = no\n"),
        endpoint("1003", "webrtc = yes\n"),
    );
    on_both_asterisks("real::contract::profile_options", &managed, |b| async move {
        let a = b.ami(None);
        let held = |id: &'static str| {
            let a = &a;
            async move { a.endpoint(id).await.expect("answers").expect("loaded").profile_options }
        };
        let defaults: std::collections::BTreeMap<&str, String> =
            OPTIONS.iter().map(|o| (o.name, o.asterisk_default.to_string())).collect();
        assert_eq!(held("1001").await, defaults, "{}: Asterisk's defaults", b.label());
        let mut nat = defaults.clone();
        for (i, (_, name)) in asterisk_gitops::core::spec::profile::OVERRIDES.iter().enumerate() {
            let flag = resolve_flags(Profile::Nat, [None; 4])[i].expect("nat writes each flag");
            nat.insert(name, if flag { "yes" } else { "no" }.to_string());
        }
        assert_eq!(held("1002").await, nat, "{}: nat", b.label());
        let mut webrtc = defaults.clone();
        for (k, v) in Profile::Webrtc.sets().iter().chain(Profile::Webrtc.implies()) {
            webrtc.insert(k, v.to_string());
        }
        assert_eq!(held("1003").await, webrtc, "{}: webrtc and what it implies", b.label());
        a.close().await;
    })
    .await;
}

/// `serve` with ARI learns the option catalogue of the Asterisk it talks to
/// (once Asterisk holds an endpoint) and caches it under the state
/// directory per version; what it learns from this Asterisk 22 is the
/// committed catalogue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_learns_its_asterisks_option_catalogue_and_caches_it_per_version() {
    use super::{Daemon, Source, Store, wait};
    let Some(build) = require("real::contract::the_daemon_learns_its_asterisks_option_catalogue") else { return };
    let ast = Asterisk::start(&build, Options::named("learn")).await.expect("Asterisk starts");
    let spec = "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n  - extension: \"1001\"\n    md5Cred: 0123456789abcdef0123456789abcdef\n";
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, spec).await;
    let dir = d.specs.parent().expect("the daemon's directory").join("state/catalogue");
    let cached = || std::fs::read_dir(&dir).ok().and_then(|mut rd| rd.next()).and_then(|e| e.ok()).map(|e| e.path());
    // The learner looks every 5 s until Asterisk holds an endpoint (1001, once applied).
    wait("the catalogue learnt and cached", Duration::from_secs(75), || async { cached().is_some() }).await;
    let path = cached().expect("cached");
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    assert!(name.starts_with("asterisk-22.") && name.ends_with(".txt"), "named by the version: {name}");
    let learnt = std::fs::read_to_string(&path).expect("read");
    let canonical = |t: &str| asterisk_gitops::core::catalogue::Catalogue::parse(t).to_text("");
    let committed =
        std::fs::read_to_string(crate::support::repo_root().join("catalogue/asterisk-22.txt")).expect("read");
    assert_eq!(canonical(&learnt), canonical(&committed), "learnt from this Asterisk = the committed catalogue");
    assert!(!learnt.contains("0123456789abcdef"), "option names only, never a value");
    d.stop().await;
}
