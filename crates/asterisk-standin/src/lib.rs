//! A stand-in for Asterisk 22 in tests: an AMI server on 127.0.0.1 that
//! answers with bytes shaped exactly like the sessions captured from a real
//! Asterisk 22.10.1 (tests/fixtures/asterisk/ami), and that loads the
//! operator's pjsip.conf — with its `#include`s and the managed file — on
//! start and on every `Reload`, accepting and refusing what Asterisk does:
//!
//! - an object with an option Asterisk does not know is not loaded (the
//!   others are); so is an endpoint whose `allow` names an unknown codec;
//! - a syntax error makes the whole reload a no-op: the previous
//!   configuration stays;
//! - an endpoint naming an `auth` or `aors` that does not exist is loaded;
//! - the answer is `Message: Module Reloaded` in every one of these cases.
//!
//! The option names each object type accepts are taken from the captured
//! `PJSIPShowEndpoint` detail events (every option Asterisk reports is one
//! it accepts), so they stay what a real Asterisk 22 says.
//!
//! A [`Control`] handle changes the stand-in's behaviour for fault tests:
//! refuse logins, stay silent, drop the connection in the middle of a list,
//! send a garbage line, fail reloads, register and unregister contacts, and
//! stop and restart the listener on the same port.
//!
//! Not a product: it lives in its own crate, a dev-dependency only.

pub mod ari;
pub mod conf;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

const ENDPOINT_DETAIL_CAPTURE: &str =
    include_str!("../../../tests/fixtures/asterisk/ami/ami-PJSIPShowEndpoint-1001.txt");
const CONTACTS_CAPTURE: &str =
    include_str!("../../../tests/fixtures/asterisk/ami/ami-PJSIPShowContacts-registered.txt");
const AORS_CAPTURE: &str = include_str!("../../../tests/fixtures/asterisk/ami/ami-PJSIPShowAors.txt");
const CORE_SETTINGS_CAPTURE: &str = include_str!("../../../tests/fixtures/asterisk/ami/ami-CoreSettings.txt");
const CORE_STATUS_CAPTURE: &str = include_str!("../../../tests/fixtures/asterisk/ami/ami-CoreStatus.txt");

/// Codec names Asterisk 22 knows (`core show codecs`).
const CODECS: &[&str] = &[
    "adpcm", "alaw", "codec2", "g719", "g722", "g723", "g726", "g726aal2", "g729", "gsm", "h261", "h263", "h263p",
    "h264", "h265", "ilbc", "jpeg", "lpc10", "mpeg4", "opus", "png", "red", "siren14", "siren7", "silk", "silk12",
    "silk16", "silk24", "silk8", "slin", "slin12", "slin16", "slin192", "slin24", "slin32", "slin44", "slin48",
    "slin96", "speex", "speex16", "speex32", "t140", "t140red", "testlaw", "ulaw", "vp8", "vp9",
];

type Fields = Vec<(String, String)>;

/// The blocks of a captured session, as field lists.
fn blocks(capture: &str) -> Vec<Fields> {
    capture
        .split("\r\n\r\n")
        .map(|b| {
            b.split("\r\n")
                .filter_map(|l| {
                    l.split_once(':').map(|(k, v)| (k.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()))
                })
                .collect::<Fields>()
        })
        .filter(|f: &Fields| !f.is_empty())
        .collect()
}

fn event(capture: &str, name: &str) -> Fields {
    blocks(capture).into_iter().find(|b| b.iter().any(|(k, v)| k == "Event" && v == name)).unwrap_or_default()
}

fn response_a1(capture: &str) -> Fields {
    blocks(capture)
        .into_iter()
        .find(|b| b.iter().any(|(k, v)| k == "ActionID" && v == "a1") && b.iter().any(|(k, _)| k == "Response"))
        .unwrap_or_default()
}

/// `RtpSymmetric` → `rtp_symmetric`.
fn snake(key: &str) -> String {
    let mut out = String::new();
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Option names Asterisk accepts for a type, from the captured detail event.
fn known_options(detail: &Fields) -> Vec<String> {
    let skip = [
        "Event",
        "ActionID",
        "ObjectType",
        "ObjectName",
        "EndpointName",
        "DeviceState",
        "ActiveChannels",
        "Contacts",
        "TotalContacts",
        "ContactsRegistered",
    ];
    let mut out: Vec<String> =
        detail.iter().filter(|(k, _)| !skip.contains(&k.as_str())).map(|(k, _)| snake(k)).collect();
    out.extend(["type".to_string()]);
    out
}

/// A loaded sorcery object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub options: Vec<(String, String)>,
}

impl Object {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The configuration currently loaded.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub endpoints: BTreeMap<String, Object>,
    pub auths: BTreeMap<String, Object>,
    pub aors: BTreeMap<String, Object>,
    pub transports: BTreeMap<String, Object>,
}

/// A registered contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactInfo {
    pub aor: String,
    pub uri: String,
    pub user_agent: String,
    pub via_addr: String,
    pub via_port: u16,
    pub call_id: String,
    pub expiration: i64,
    /// The hash after `;@` in the contact's object name.
    pub hash: String,
}

impl ContactInfo {
    /// A contact like the ones sipp registered in the capture.
    pub fn new(aor: &str, port: u16) -> Self {
        ContactInfo {
            aor: aor.into(),
            uri: format!("sip:{aor}@127.0.0.1:{port}"),
            user_agent: "PortSIP-standin-sipp".into(),
            via_addr: "127.0.0.1".into(),
            via_port: port,
            call_id: format!("1-{port}@127.0.0.1"),
            expiration: 1_795_482_136,
            hash: format!("{:032x}", u128::from(port) * 0x9e37_79b9_7f4a_7c15),
        }
    }
}

/// Fault switches and counters, shared with the server tasks.
#[derive(Debug, Default)]
struct Faults {
    refuse_login: bool,
    silent: bool,
    drop_mid_list: bool,
    garbage_next: bool,
    fail_reload: bool,
}

#[derive(Debug)]
struct State {
    pjsip_conf: PathBuf,
    user: String,
    secret: String,
    loaded: Loaded,
    contacts: Vec<ContactInfo>,
    faults: Faults,
    reloads: u64,
    /// How many times each action (lower case) was asked for.
    actions: BTreeMap<String, u64>,
    /// What the last reload refused, as Asterisk would log it.
    log: Vec<String>,
}

/// Starts a stand-in.
pub struct StandInConfig {
    /// The operator's pjsip.conf (it `#include`s the managed file).
    pub pjsip_conf: PathBuf,
    pub user: String,
    pub secret: String,
}

/// A running stand-in. Dropping it stops the server.
pub struct StandIn {
    pub ami_addr: SocketAddr,
    /// ARI's HTTP address (`http://{ari_addr}/ari/...`); same credentials as AMI.
    pub ari_addr: SocketAddr,
    control: Control,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    ari_server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Changes the stand-in's behaviour and reads its state.
#[derive(Clone)]
pub struct Control {
    state: Arc<Mutex<State>>,
    ari: Arc<Mutex<ari::AriState>>,
    /// Closes ARI's open HTTP connections (keep-alive ones too) on stop.
    ari_kill: broadcast::Sender<()>,
    events: broadcast::Sender<String>,
    kill: broadcast::Sender<()>,
}

impl StandIn {
    /// Loads the config and starts the AMI server on 127.0.0.1 (port 0: any free one).
    pub async fn start(cfg: StandInConfig) -> std::io::Result<StandIn> {
        let (events, _) = broadcast::channel(1024);
        let (kill, _) = broadcast::channel(4);
        let state = State {
            pjsip_conf: cfg.pjsip_conf,
            user: cfg.user,
            secret: cfg.secret,
            loaded: Loaded::default(),
            contacts: Vec::new(),
            faults: Faults::default(),
            reloads: 0,
            actions: BTreeMap::new(),
            log: Vec::new(),
        };
        let (ari_kill, _) = broadcast::channel(4);
        let control = Control {
            state: Arc::new(Mutex::new(state)),
            ari: Arc::new(Mutex::new(Default::default())),
            ari_kill,
            events,
            kill,
        };
        control.load();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let ami_addr = listener.local_addr()?;
        let server = tokio::spawn(serve(listener, control.clone()));
        let ari_listener = TcpListener::bind("127.0.0.1:0").await?;
        let ari_addr = ari_listener.local_addr()?;
        let ari_server = tokio::spawn(serve_ari(ari_listener, control.clone()));
        Ok(StandIn {
            ami_addr,
            ari_addr,
            control,
            server: Mutex::new(Some(server)),
            ari_server: Mutex::new(Some(ari_server)),
        })
    }

    /// ARI's base URL, as an operator would configure it.
    pub fn ari_url(&self) -> String {
        format!("http://{}", self.ari_addr)
    }

    /// Stops ARI's HTTP server and closes every events socket.
    pub fn stop_ari(&self) {
        let _ = self.control.ari_kill.send(());
        if let Some(h) = self.ari_server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
        self.control.drop_event_sockets();
    }

    /// Serves ARI again on the same port.
    pub async fn restart_ari(&self) -> std::io::Result<()> {
        self.stop_ari();
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.ari_addr)?;
        let listener = socket.listen(64)?;
        *self.ari_server.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::spawn(serve_ari(listener, self.control.clone())));
        Ok(())
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Stops listening and drops every connection (connection refused from now on).
    pub fn stop(&self) {
        if let Some(h) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
        let _ = self.control.kill.send(());
    }

    /// Listens again on the same port.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop();
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.ami_addr)?;
        let listener = socket.listen(64)?;
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::spawn(serve(listener, self.control.clone())));
        Ok(())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop_ari();
        self.stop();
    }
}

impl Control {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Loads pjsip.conf as a reload would. Returns false on a syntax error
    /// (the previous configuration stays).
    fn load(&self) -> bool {
        let path = self.with(|s| s.pjsip_conf.clone());
        match conf::parse(&path) {
            Err(e) => {
                self.with(|s| s.log = vec![format!("{}:{}: {}", e.file.display(), e.line, e.message)]);
                false
            }
            Ok(sections) => {
                let previous = self.with(|s| s.loaded.clone());
                let (loaded, log) = build(&sections, &previous);
                self.with(|s| {
                    s.loaded = loaded;
                    s.log = log;
                    // Contacts of aors that vanished go with them.
                    let aors = s.loaded.aors.clone();
                    s.contacts.retain(|c| aors.contains_key(&c.aor));
                });
                true
            }
        }
    }

    pub fn refuse_logins(&self, on: bool) {
        self.with(|s| s.faults.refuse_login = on);
    }
    /// Reads actions and answers none.
    pub fn stay_silent(&self, on: bool) {
        self.with(|s| s.faults.silent = on);
    }
    /// Closes the connection after the first item of the next list.
    pub fn drop_mid_list(&self, on: bool) {
        self.with(|s| s.faults.drop_mid_list = on);
    }
    /// Sends a line that is not `Key: Value` before the next answer.
    pub fn send_garbage_next(&self) {
        self.with(|s| s.faults.garbage_next = true);
    }
    /// Answers reloads with an error and does not reload.
    pub fn fail_reloads(&self, on: bool) {
        self.with(|s| s.faults.fail_reload = on);
    }
    /// How many reloads were requested (including failed ones).
    /// How many times an action (any case) was asked for since the start.
    pub fn actions(&self, name: &str) -> u64 {
        self.with(|s| s.actions.get(&name.to_ascii_lowercase()).copied().unwrap_or(0))
    }
    pub fn reloads(&self) -> u64 {
        self.with(|s| s.reloads)
    }
    /// Names of the loaded endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        self.with(|s| s.loaded.endpoints.keys().cloned().collect())
    }
    pub fn endpoint(&self, name: &str) -> Option<Object> {
        self.with(|s| s.loaded.endpoints.get(name).cloned())
    }
    /// What the last load refused, as Asterisk's log would say it.
    pub fn log(&self) -> Vec<String> {
        self.with(|s| s.log.clone())
    }

    /// Registers a contact for an aor (as a phone's REGISTER would) and
    /// sends the events Asterisk sends. False if there is no such aor.
    pub fn register(&self, contact: ContactInfo) -> bool {
        let ok = self.with(|s| {
            if !s.loaded.aors.contains_key(&contact.aor) {
                return false;
            }
            s.contacts.retain(|c| !(c.aor == contact.aor && c.uri == contact.uri));
            s.contacts.push(contact.clone());
            true
        });
        if ok {
            // What a real Asterisk 22 sends when an unqualified contact
            // registers (real::contract::registering_and_unregistering_send_contact_status_events):
            // the device state, the peer status and a NonQualified contact status
            // (a real one sends them in no fixed order); never `Created`.
            let aor = &contact.aor;
            let _ = self.events.send(format!(
                "Event: DeviceStateChange\r\nPrivilege: call,all\r\nDevice: PJSIP/{aor}\r\nState: NOT_INUSE\r\n\r\n"
            ));
            let _ = self.events.send(format!("Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: PJSIP\r\nPeer: PJSIP/{aor}\r\nPeerStatus: Reachable\r\n\r\n"));
            let _ = self.events.send(format!(
                "Event: ContactStatus\r\nPrivilege: system,all\r\nURI: {}\r\nContactStatus: NonQualified\r\nAOR: {aor}\r\nEndpointName: {aor}\r\nRoundtripUsec: 0\r\n\r\n",
                contact.uri
            ));
        }
        ok
    }

    /// Removes an aor's contacts, with the events of the capture
    /// (ami-events-register-unregister.txt).
    pub fn unregister(&self, aor: &str) {
        let removed: Vec<ContactInfo> = self.with(|s| {
            let (gone, kept) = s.contacts.drain(..).partition(|c| c.aor == aor);
            s.contacts = kept;
            gone
        });
        for c in removed {
            let _ = self.events.send(format!("Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: PJSIP\r\nPeer: PJSIP/{aor}\r\nPeerStatus: Unreachable\r\n\r\n"));
            let _ = self.events.send(format!(
                "Event: DeviceStateChange\r\nPrivilege: call,all\r\nDevice: PJSIP/{aor}\r\nState: UNAVAILABLE\r\n\r\n"
            ));
            let _ = self.events.send(format!(
                "Event: ContactStatus\r\nPrivilege: system,all\r\nURI: {}\r\nContactStatus: Removed\r\nAOR: {aor}\r\nEndpointName: {aor}\r\nRoundtripUsec: 0\r\n\r\n",
                c.uri
            ));
        }
    }
}

/// Builds the loaded objects from parsed sections, refusing what Asterisk refuses.
/// Loads `sections`. An object whose definition is refused and that was
/// loaded before keeps its previous definition, as Asterisk does ("Retaining
/// existing configuration for object of type 'endpoint' with id '1001'").
fn build(sections: &[conf::Section], previous: &Loaded) -> (Loaded, Vec<String>) {
    let ep_detail = event(ENDPOINT_DETAIL_CAPTURE, "EndpointDetail");
    let auth_detail = event(ENDPOINT_DETAIL_CAPTURE, "AuthDetail");
    let aor_detail = event(ENDPOINT_DETAIL_CAPTURE, "AorDetail");
    let transport_detail = event(ENDPOINT_DETAIL_CAPTURE, "TransportDetail");
    let mut known_endpoint = known_options(&ep_detail);
    known_endpoint.extend(["disallow".to_string(), "aors".to_string(), "auth".to_string()]);
    let known_auth = known_options(&auth_detail);
    let known_aor = known_options(&aor_detail);
    let known_transport = known_options(&transport_detail);
    let mut loaded = Loaded::default();
    let mut log = Vec::new();
    for s in sections.iter().filter(|s| !s.is_template) {
        let obj = Object { name: s.name.clone(), options: s.options.clone() };
        let Some(kind) = obj.get("type").map(str::to_string) else {
            log.push(format!("{}:{}: section [{}] has no type; ignored", s.file.display(), s.line, s.name));
            continue;
        };
        let (known, target, before) = match kind.as_str() {
            "endpoint" => (&known_endpoint, &mut loaded.endpoints, &previous.endpoints),
            "auth" => (&known_auth, &mut loaded.auths, &previous.auths),
            "aor" => (&known_aor, &mut loaded.aors, &previous.aors),
            "transport" => (&known_transport, &mut loaded.transports, &previous.transports),
            _ => continue,
        };
        let retain = |target: &mut BTreeMap<String, Object>, log: &mut Vec<String>| {
            if let Some(old) = before.get(&obj.name) {
                log.push(format!(
                    "Retaining existing configuration for object of type '{kind}' with id '{}'",
                    obj.name
                ));
                target.insert(obj.name.clone(), old.clone());
            }
        };
        if let Some((k, _)) = obj.options.iter().find(|(k, _)| !known.contains(k)) {
            log.push(format!(
                "Could not find option suitable for category '{}' named '{k}' at line {} of {}",
                s.name,
                s.line,
                s.file.display()
            ));
            retain(target, &mut log);
            continue;
        }
        if kind == "endpoint" {
            let bad = obj
                .options
                .iter()
                .filter(|(k, _)| k == "allow" || k == "disallow")
                .flat_map(|(_, v)| v.split(',').map(str::trim).map(str::to_string).collect::<Vec<_>>())
                .find(|c| !c.is_empty() && c != "all" && !CODECS.contains(&c.as_str()));
            if let Some(c) = bad {
                log.push(format!("Error parsing allow={c} at line {} of {}", s.line, s.file.display()));
                retain(target, &mut log);
                continue;
            }
        }
        target.insert(obj.name.clone(), obj);
    }
    (loaded, log)
}

/// Serves ARI over HTTP/1.1 with Title-Case header names, as Asterisk
/// writes them (`Server:`, `WWW-Authenticate:`; axum's own server would
/// write them in lower case).
async fn serve_ari(listener: TcpListener, control: Control) {
    let kill = control.ari_kill.clone();
    let router = ari::router(control);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut killed = kill.subscribe();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .title_case_headers(true)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                _ = killed.recv() => {}
            }
        });
    }
}

async fn serve(listener: TcpListener, control: Control) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(session(stream, control.clone()));
    }
}

fn wire(fields: &Fields) -> String {
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out
}

fn f(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

async fn session(stream: TcpStream, control: Control) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut kill = control.kill.subscribe();
    let mut events = control.events.subscribe();
    if write.write_all(b"Asterisk Call Manager/11.0.0\r\n").await.is_err() {
        return;
    }
    let mut logged_in = false;
    let mut wants_events = false;
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut line = String::new();
        tokio::select! {
            _ = kill.recv() => return,
            ev = events.recv(), if logged_in && wants_events => {
                if let Ok(ev) = ev && write.write_all(ev.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            r = reader.read_line(&mut line) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if !trimmed.is_empty() {
            lines.push(trimmed.to_string());
            continue;
        }
        if lines.is_empty() {
            continue;
        }
        let msg: Fields = lines
            .drain(..)
            .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
            .collect();
        let get = |k: &str| msg.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
        let action = get("Action").unwrap_or_default().to_ascii_lowercase();
        let id = get("ActionID");
        let (silent, garbage) = control.with(|s| (s.faults.silent, std::mem::take(&mut s.faults.garbage_next)));
        if silent {
            continue;
        }
        let mut out = String::new();
        if garbage {
            out.push_str("this line is not AMI\r\n");
        }
        let head = |response: &str| {
            let mut v = vec![f("Response", response)];
            if let Some(id) = &id {
                v.push(f("ActionID", id.clone()));
            }
            v
        };
        if action == "login" {
            let ok = control.with(|s| {
                !s.faults.refuse_login
                    && get("Username").as_deref() == Some(s.user.as_str())
                    && get("Secret").as_deref() == Some(s.secret.as_str())
            });
            if !ok {
                let mut r = head("Error");
                r.push(f("Message", "Authentication failed"));
                out.push_str(&wire(&r));
                let _ = write.write_all(out.as_bytes()).await;
                return;
            }
            logged_in = true;
            wants_events = get("Events").is_none_or(|e| !e.eq_ignore_ascii_case("off"));
            let mut r = head("Success");
            r.push(f("Message", "Authentication accepted"));
            out.push_str(&wire(&r));
            if wants_events {
                out.push_str("Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 164\r\nLastReload: 6\r\nStatus: Fully Booted\r\n\r\n");
            }
            if write.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if !logged_in {
            let mut r = head("Error");
            r.push(f("Message", "Authentication Required"));
            out.push_str(&wire(&r));
            if write.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let reply = answer(&control, &action, &get, &head);
        match reply {
            Reply::Text(text) => out.push_str(&text),
            Reply::List { start, items, complete } => {
                out.push_str(&start);
                if control.with(|s| s.faults.drop_mid_list) && !items.is_empty() {
                    out.push_str(&items[0]);
                    let _ = write.write_all(out.as_bytes()).await;
                    return;
                }
                for i in items {
                    out.push_str(&i);
                }
                out.push_str(&complete);
            }
            Reply::Goodbye(text) => {
                out.push_str(&text);
                let _ = write.write_all(out.as_bytes()).await;
                return;
            }
        }
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

enum Reply {
    Text(String),
    List { start: String, items: Vec<String>, complete: String },
    Goodbye(String),
}

fn list(head: &dyn Fn(&str) -> Fields, id: Option<String>, message: &str, items: Vec<Fields>, complete: &str) -> Reply {
    let mut start = head("Success");
    start.push(f("EventList", "start"));
    start.push(f("Message", message));
    let n = items.len();
    let with_id = |mut ev: Fields| {
        if let Some(id) = &id {
            ev.insert(1, f("ActionID", id.clone()));
        }
        wire(&ev)
    };
    let items = items.into_iter().map(with_id).collect();
    let mut done = vec![f("Event", complete)];
    if let Some(id) = &id {
        done.push(f("ActionID", id.clone()));
    }
    done.push(f("EventList", "Complete"));
    done.push(f("ListItems", n.to_string()));
    Reply::List { start: wire(&start), items, complete: wire(&done) }
}

/// res_pjsip's errors, as captured: the message ends in a bare "\n" and no
/// empty line follows (Asterisk's text carries its own newline, which then
/// stands in for the blank line). "No endpoints found" was not captured; it
/// comes from the same code path.
fn pjsip_error(head: &dyn Fn(&str) -> Fields, message: &str) -> Reply {
    let mut r = head("Error");
    r.push(f("Message", format!("{message}\n")));
    let mut text = wire(&r);
    text.truncate(text.len() - 2);
    Reply::Text(text)
}

fn error(head: &dyn Fn(&str) -> Fields, message: &str) -> Reply {
    let mut r = head("Error");
    r.push(f("Message", message));
    Reply::Text(wire(&r))
}

fn answer(
    control: &Control,
    action: &str,
    get: &dyn Fn(&str) -> Option<String>,
    head: &dyn Fn(&str) -> Fields,
) -> Reply {
    let id = get("ActionID");
    control.with(|s| *s.actions.entry(action.to_string()).or_default() += 1);
    match action {
        "logoff" => {
            let mut r = head("Goodbye");
            r.push(f("Message", "Thanks for all the fish."));
            // As captured: the goodbye has no closing empty line; the connection just ends.
            let mut text = wire(&r);
            text.truncate(text.len() - 2);
            Reply::Goodbye(text)
        }
        "ping" => {
            let mut r = head("Success");
            r.push(f("Ping", "Pong"));
            r.push(f("Timestamp", "1795495103.736123"));
            Reply::Text(wire(&r))
        }
        "reload" => {
            let fail = control.with(|s| {
                s.reloads += 1;
                s.faults.fail_reload
            });
            if fail {
                // Not captured; the message Asterisk's manager gives when a module reload errors.
                return error(head, "A reload failed");
            }
            let module = get("Module").unwrap_or_default();
            if !module.is_empty() && module != "res_pjsip.so" && module != "res_pjsip" {
                return error(head, "No such module");
            }
            control.load();
            let mut r = head("Success");
            r.push(f("Message", "Module Reloaded"));
            Reply::Text(wire(&r))
        }
        "command" => {
            let cmd = get("Command").unwrap_or_default();
            let mut r = head("Error");
            r.push(f("Message", "Command output follows"));
            r.push(f(
                "Output",
                format!("No such command '{cmd}' (type 'core show help {cmd}' for other possible commands)"),
            ));
            Reply::Text(wire(&r))
        }
        "pjsipshowendpoints" => {
            let items: Vec<Fields> = control.with(|s| {
                s.loaded
                    .endpoints
                    .values()
                    .map(|ep| {
                        let aor = ep.get("aors").unwrap_or("").to_string();
                        let contacts: String = s
                            .contacts
                            .iter()
                            .filter(|c| c.aor == aor)
                            .map(|c| format!("{}/{},", c.aor, c.uri))
                            .collect();
                        let state = if contacts.is_empty() { "Unavailable" } else { "Not in use" };
                        vec![
                            f("Event", "EndpointList"),
                            f("ObjectType", "endpoint"),
                            f("ObjectName", ep.name.clone()),
                            f("Transport", ep.get("transport").unwrap_or("")),
                            f("Aor", aor.clone()),
                            f("Auths", ep.get("auth").unwrap_or("")),
                            f("OutboundAuths", ep.get("outbound_auth").unwrap_or("")),
                            f("Contacts", contacts),
                            f("DeviceState", state),
                            f("ActiveChannels", "0"),
                        ]
                    })
                    .collect()
            });
            if items.is_empty() {
                return pjsip_error(head, "No endpoints found");
            }
            list(
                head,
                id,
                "A listing of Endpoints follows, presented as EndpointList events",
                items,
                "EndpointListComplete",
            )
        }
        "pjsipshowendpoint" => {
            let name = get("Endpoint").unwrap_or_default();
            match control.with(|s| endpoint_detail(s, &name)) {
                None => pjsip_error(head, &format!("Unable to retrieve endpoint {name}")),
                Some(items) => list(
                    head,
                    id,
                    "Following are Events for each object associated with the Endpoint",
                    items,
                    "EndpointDetailComplete",
                ),
            }
        }
        "pjsipshowcontacts" => {
            let template = event(CONTACTS_CAPTURE, "ContactList");
            let items: Vec<Fields> = control.with(|s| {
                s.contacts
                    .iter()
                    .map(|c| {
                        template
                            .iter()
                            .filter(|(k, _)| k != "ActionID")
                            .map(|(k, v)| {
                                let v = match k.as_str() {
                                    "ObjectName" => format!("{};@{}", c.aor, c.hash),
                                    "ViaAddr" => c.via_addr.clone(),
                                    "CallId" => c.call_id.clone(),
                                    "Endpoint" => c.aor.clone(),
                                    "ViaPort" => c.via_port.to_string(),
                                    "Uri" => c.uri.clone(),
                                    "UserAgent" => c.user_agent.clone(),
                                    "ExpirationTime" => c.expiration.to_string(),
                                    _ => v.clone(),
                                };
                                (k.clone(), v)
                            })
                            .collect()
                    })
                    .collect()
            });
            if items.is_empty() {
                return pjsip_error(head, "No Contacts found");
            }
            list(
                head,
                id,
                "A listing of Contacts follows, presented as ContactList events",
                items,
                "ContactListComplete",
            )
        }
        "pjsipshowaors" => {
            let template = event(AORS_CAPTURE, "AorList");
            let items: Vec<Fields> = control.with(|s| {
                s.loaded
                    .aors
                    .values()
                    .map(|aor| {
                        let contacts: Vec<String> = s
                            .contacts
                            .iter()
                            .filter(|c| c.aor == aor.name)
                            .map(|c| format!("{}/{}", c.aor, c.uri))
                            .collect();
                        template
                            .iter()
                            .filter(|(k, _)| k != "ActionID")
                            .map(|(k, v)| {
                                let v = match k.as_str() {
                                    "ObjectName" => aor.name.clone(),
                                    "Contacts" => contacts.join(","),
                                    "MaxContacts" => aor.get("max_contacts").unwrap_or("0").to_string(),
                                    other => aor.get(&snake(other)).map(|x| x.to_string()).unwrap_or_else(|| v.clone()),
                                };
                                (k.clone(), v)
                            })
                            .collect()
                    })
                    .collect()
            });
            list(head, id, "A listing of AORs follows, presented as AorList events", items, "AorListComplete")
        }
        "coresettings" | "corestatus" => {
            let capture = if action == "coresettings" { CORE_SETTINGS_CAPTURE } else { CORE_STATUS_CAPTURE };
            let mut r = head("Success");
            r.extend(response_a1(capture).into_iter().filter(|(k, _)| k != "Response" && k != "ActionID"));
            Reply::Text(wire(&r))
        }
        _ => error(head, "Invalid/unknown command"),
    }
}

/// Formats a config value the way the detail event shows it.
fn shown(template: &str, config: &str) -> String {
    let yes = matches!(config.to_ascii_lowercase().as_str(), "yes" | "true" | "on" | "1");
    let no = matches!(config.to_ascii_lowercase().as_str(), "no" | "false" | "off" | "0");
    match template {
        "true" | "false" if yes || no => (if yes { "true" } else { "false" }).to_string(),
        "yes" | "no" if yes || no => (if yes { "yes" } else { "no" }).to_string(),
        _ => config.to_string(),
    }
}

fn detail_from(template: &Fields, obj: &Object, endpoint: &str, overrides: &[(&str, String)]) -> Fields {
    template
        .iter()
        .filter(|(k, _)| k != "ActionID")
        .map(|(k, v)| {
            if let Some((_, o)) = overrides.iter().find(|(ok, _)| ok == k) {
                return (k.clone(), o.clone());
            }
            let value = match k.as_str() {
                "ObjectName" => obj.name.clone(),
                "EndpointName" => endpoint.to_string(),
                other => obj.get(&snake(other)).map(|c| shown(v, c)).unwrap_or_else(|| v.clone()),
            };
            (k.clone(), value)
        })
        .collect()
}

fn endpoint_detail(s: &State, name: &str) -> Option<Vec<Fields>> {
    let ep = s.loaded.endpoints.get(name)?;
    let aor_name = ep.get("aors").unwrap_or("").to_string();
    let contacts: Vec<&ContactInfo> = s.contacts.iter().filter(|c| c.aor == aor_name).collect();
    let allow: Vec<String> = ep
        .options
        .iter()
        .filter(|(k, _)| k == "allow")
        .flat_map(|(_, v)| v.split(',').map(|c| c.trim().to_string()).collect::<Vec<_>>())
        .filter(|c| !c.is_empty() && c != "all")
        .collect();
    // `webrtc = yes` turns these on in the endpoint's apply handler
    // (res_pjsip/pjsip_configuration.c), whatever the section says.
    let webrtc =
        ep.get("webrtc").is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "yes" | "true" | "on" | "1"));
    let mut implied: Vec<(&str, String)> = Vec::new();
    if webrtc {
        for (k, v) in [
            ("UseAvpf", "true"),
            ("MediaEncryption", "dtls"),
            ("DtlsVerify", "Fingerprint"),
            ("DtlsSetup", "actpass"),
            ("IceSupport", "true"),
            ("MediaUseReceivedTransport", "true"),
            ("RtcpMux", "true"),
            ("Bundle", "true"),
        ] {
            implied.push((k, v.to_string()));
        }
        if ep.get("dtls_cert_file").is_none_or(str::is_empty) {
            implied.push(("DtlsAutoGenerateCert", "Yes".to_string()));
        }
    }
    let mut overrides = vec![
        ("Allow", format!("({})", allow.join("|"))),
        ("DeviceState", if contacts.is_empty() { "Unavailable".into() } else { "Not in use".into() }),
        ("Auth", ep.get("auth").unwrap_or("").to_string()),
        ("Aors", aor_name.clone()),
        // The capture's endpoint set these; Asterisk's defaults when they are not set.
        ("Context", ep.get("context").unwrap_or("default").to_string()),
        ("Transport", ep.get("transport").unwrap_or("").to_string()),
        ("Callerid", ep.get("callerid").unwrap_or("").to_string()),
    ];
    overrides.extend(implied);
    let mut out = vec![detail_from(&event(ENDPOINT_DETAIL_CAPTURE, "EndpointDetail"), ep, name, &overrides)];
    if let Some(auth) = ep.get("auth").and_then(|a| s.loaded.auths.get(a)) {
        let defaults = [
            ("Username", auth.get("username").unwrap_or("").to_string()),
            ("AuthType", auth.get("auth_type").unwrap_or("userpass").to_string()),
            ("Password", auth.get("password").unwrap_or("").to_string()),
            ("Md5Cred", auth.get("md5_cred").unwrap_or("").to_string()),
        ];
        out.push(detail_from(&event(ENDPOINT_DETAIL_CAPTURE, "AuthDetail"), auth, name, &defaults));
    }
    if let Some(t) = ep.get("transport").and_then(|t| s.loaded.transports.get(t)) {
        out.push(detail_from(&event(ENDPOINT_DETAIL_CAPTURE, "TransportDetail"), t, name, &[]));
    }
    if let Some(aor) = s.loaded.aors.get(&aor_name) {
        let list: Vec<String> = contacts.iter().map(|c| format!("{}/{}", c.aor, c.uri)).collect();
        out.push(detail_from(
            &event(ENDPOINT_DETAIL_CAPTURE, "AorDetail"),
            aor,
            name,
            &[
                ("Contacts", list.join(",")),
                ("TotalContacts", contacts.len().to_string()),
                ("ContactsRegistered", contacts.len().to_string()),
                ("MaxContacts", aor.get("max_contacts").unwrap_or("0").to_string()),
            ],
        ));
    }
    Some(out)
}

/// Writes a pjsip.conf that includes `managed` (the operator's side of the
/// setup) next to it, with the captured transport; returns its path.
pub fn write_operator_conf(dir: &Path, managed: &str) -> std::io::Result<PathBuf> {
    let path = dir.join("pjsip.conf");
    std::fs::write(
        &path,
        format!(
            "[global]\ntype = global\nuser_agent = Asterisk\n\n[transport-udp]\ntype = transport\nprotocol = udp\nbind = 127.0.0.1:5060\n\n#include {managed}\n"
        ),
    )?;
    Ok(path)
}
