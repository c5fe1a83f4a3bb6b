//! Talking to Asterisk: the one port the reconciler and the HTTP API use.
//!
//! [`Asterisk`] wraps an AMI connection that it opens on first use and
//! reopens after it breaks (with a growing pause between failed attempts),
//! so "Asterisk unreachable" is an ordinary error value with a reason,
//! never a panic and never a crash.
//!
//! Architecture invariant: only this module talks to Asterisk; nothing it
//! returns carries a SIP password (the AMI `AuthDetail` event does: its
//! `Password` and `Md5Cred` are dropped while parsing).

pub mod ami;
pub mod ari;
pub mod ari_config;
pub mod cel;
pub mod managed;
pub mod realtime;
pub mod target;

use crate::core::plan::ObservedEndpoint;
use crate::reconcile::{AsteriskControl, Backoff, BackoffConfig};
pub use ami::{AmiClient, AmiConfig, AmiError, Message};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio::sync::broadcast;

/// One row of `PJSIPShowEndpoints`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub name: String,
    pub transport: String,
    pub aor: String,
    pub auths: String,
    /// `aor/uri` of each registered contact.
    pub contacts: Vec<String>,
    /// `Unavailable`, `Not in use`, `In use`, …
    pub device_state: String,
    pub active_channels: u32,
}

/// What `PJSIPShowEndpoint` says of one endpoint (no secrets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDetail {
    pub name: String,
    pub context: String,
    pub transport: String,
    /// From `Allow: (ulaw|alaw)`.
    pub codecs: Vec<String>,
    pub callerid: String,
    pub dtmf_mode: String,
    pub aors: String,
    pub auth: String,
    pub mailboxes: String,
    pub direct_media: Option<bool>,
    pub rtp_symmetric: Option<bool>,
    pub force_rport: Option<bool>,
    pub rewrite_contact: Option<bool>,
    /// Every option of the profile table (`spec::profile::OPTIONS`) as
    /// Asterisk reports it, by pjsip name, normalised (`yes`, `no`, `dtls`, …).
    pub profile_options: BTreeMap<&'static str, String>,
    pub device_state: String,
    /// The auth's type (`userpass`, `md5`); never its password.
    pub auth_type: Option<String>,
    pub max_contacts: Option<u32>,
    pub remove_existing: Option<bool>,
    pub qualify_frequency: Option<u32>,
    pub contacts_registered: Option<u32>,
    /// md5Cred of the auth's credential, for verification; never serialised.
    #[serde(skip)]
    pub auth_md5: Option<crate::secret::Digest>,
    /// Every option the endpoint's, aor's and auth's events report, by
    /// `type/AmiKey` (`endpoint/RtpTimeout`), for verifying `options`. The
    /// auth's secrets (password, md5_cred, OAuth secrets) are left out.
    #[serde(skip)]
    pub reported: BTreeMap<String, String>,
}

/// Keys of an `AuthDetail` that hold a secret: never kept.
const AUTH_SECRET_KEYS: &[&str] = &["Password", "Md5Cred", "OauthSecret", "RefreshToken", "PasswordDigest"];

/// The option keys of one detail event, by `kind/Key`.
fn reported_options(kind: &str, m: &Message, out: &mut BTreeMap<String, String>) {
    const NOT_OPTIONS: &[&str] = &["Event", "ActionID", "ObjectType", "ObjectName", "EndpointName"];
    for (k, v) in &m.fields {
        let k = k.as_str();
        if NOT_OPTIONS.contains(&k) || (kind == "auth" && AUTH_SECRET_KEYS.iter().any(|s| s.eq_ignore_ascii_case(k))) {
            continue;
        }
        out.insert(format!("{kind}/{k}"), v.to_string());
    }
}

/// md5Cred of what an AuthDetail holds: its md5_cred, or the digest of its
/// password under its realm (Asterisk's default realm when it sets none).
fn auth_digest(auth: &Message) -> Option<crate::secret::Digest> {
    let kind = auth.get("AuthType").unwrap_or("userpass");
    if kind.eq_ignore_ascii_case("md5") {
        return auth.get("Md5Cred").filter(|m| !m.is_empty()).map(|m| crate::secret::Digest::new(m.to_string()));
    }
    let password = auth.get("Password")?;
    let user = auth.get("Username").unwrap_or_default();
    let realm = auth.get("Realm").filter(|r| !r.is_empty()).unwrap_or(crate::secret::DEFAULT_REALM);
    Some(crate::secret::Digest::new(crate::secret::md5_cred(user, realm, password)))
}

/// One registration (`PJSIPShowContacts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub endpoint: String,
    pub uri: String,
    pub user_agent: String,
    /// `NonQualified`, `Reachable`, `Unreachable`, …
    pub status: String,
    /// Round-trip time; `None` when not qualified (`N/A`).
    pub roundtrip_usec: Option<u64>,
    /// Unix seconds.
    pub expiration_time: Option<i64>,
    pub via_addr: String,
    pub via_port: Option<u16>,
}

/// Version and uptime (`CoreSettings` + `CoreStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    pub asterisk_version: String,
    pub ami_version: String,
    /// `CoreStartupDate CoreStartupTime`.
    pub startup: String,
    /// `CoreReloadDate CoreReloadTime`.
    pub last_reload: String,
    pub current_calls: u32,
}

/// `(ulaw|alaw)` → `[ulaw, alaw]`.
pub fn parse_allow(s: &str) -> Vec<String> {
    s.trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(['|', ','])
        .map(str::trim)
        .filter(|c| !c.is_empty() && *c != "nothing")
        .map(str::to_string)
        .collect()
}

fn yes_no(v: Option<&str>) -> Option<bool> {
    match v?.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
    }
}

fn text(m: &Message, key: &str) -> String {
    m.get(key).unwrap_or("").to_string()
}

impl Endpoint {
    pub fn from_message(m: &Message) -> Self {
        Endpoint {
            name: text(m, "ObjectName"),
            transport: text(m, "Transport"),
            aor: text(m, "Aor"),
            auths: text(m, "Auths"),
            contacts: m
                .get("Contacts")
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            device_state: text(m, "DeviceState"),
            active_channels: m.get("ActiveChannels").and_then(|v| v.parse().ok()).unwrap_or(0),
        }
    }
}

impl EndpointDetail {
    /// Builds the detail from the events of one `PJSIPShowEndpoint`.
    pub fn from_events(events: &[Message]) -> Option<Self> {
        let ep = events.iter().find(|e| e.get("Event") == Some("EndpointDetail"))?;
        let mut d = EndpointDetail {
            name: text(ep, "ObjectName"),
            context: text(ep, "Context"),
            transport: text(ep, "Transport"),
            codecs: parse_allow(ep.get("Allow").unwrap_or("")),
            callerid: text(ep, "Callerid"),
            dtmf_mode: text(ep, "DtmfMode"),
            aors: text(ep, "Aors"),
            auth: text(ep, "Auth"),
            mailboxes: text(ep, "Mailboxes"),
            direct_media: yes_no(ep.get("DirectMedia")),
            rtp_symmetric: yes_no(ep.get("RtpSymmetric")),
            force_rport: yes_no(ep.get("ForceRport")),
            rewrite_contact: yes_no(ep.get("RewriteContact")),
            device_state: text(ep, "DeviceState"),
            profile_options: crate::core::spec::profile::OPTIONS
                .iter()
                .filter_map(|o| ep.get(o.ami).map(|v| (o.name, crate::core::spec::profile::normalise(v))))
                .collect(),
            ..Default::default()
        };
        reported_options("endpoint", ep, &mut d.reported);
        if let Some(auth) = events.iter().find(|e| e.get("Event") == Some("AuthDetail")) {
            reported_options("auth", auth, &mut d.reported);
            // The type, and a digest of the credential: Password and Md5Cred
            // stay in the message, which is dropped.
            d.auth_type = auth.get("AuthType").map(str::to_string);
            d.auth_md5 = auth_digest(auth);
        }
        if let Some(aor) = events.iter().find(|e| e.get("Event") == Some("AorDetail")) {
            reported_options("aor", aor, &mut d.reported);
            d.max_contacts = aor.get("MaxContacts").and_then(|v| v.parse().ok());
            d.remove_existing = yes_no(aor.get("RemoveExisting"));
            d.qualify_frequency = aor.get("QualifyFrequency").and_then(|v| v.parse().ok());
            d.contacts_registered = aor.get("ContactsRegistered").and_then(|v| v.parse().ok());
        }
        Some(d)
    }
}

impl Contact {
    /// Whether the phone behind it answers: `Reachable`, or not qualified
    /// (`NonQualified`, `Unknown`, a new contact not yet asked). `false` for
    /// `Unreachable`: the phone went silent (crashed, asleep, gone).
    pub fn alive(&self) -> bool {
        self.status != "Unreachable"
    }

    pub fn from_message(m: &Message) -> Self {
        Contact {
            endpoint: text(m, "Endpoint"),
            uri: text(m, "Uri"),
            user_agent: text(m, "UserAgent"),
            status: text(m, "Status"),
            roundtrip_usec: m.get("RoundtripUsec").and_then(|v| v.parse().ok()),
            expiration_time: m.get("ExpirationTime").and_then(|v| v.parse().ok()),
            via_addr: text(m, "ViaAddr"),
            via_port: m.get("ViaPort").and_then(|v| v.parse().ok()),
        }
    }
}

/// What Asterisk's `Reload` action answers while another reload runs (main/manager.c).
pub const RELOAD_IN_PROGRESS: &str = "A reload is in progress";

/// How `reload` waits out a reload in progress (within the action timeout).
const RELOAD_BACKOFF: BackoffConfig = BackoffConfig::new(Duration::from_millis(50), Duration::from_secs(1));

/// How long a failed connection keeps the next attempt away: 0.5 s doubling to 16 s.
const RECONNECT_BACKOFF: BackoffConfig = BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(16));

/// The Asterisk port: AMI, connected on demand.
pub struct Asterisk {
    cfg: AmiConfig,
    state: Mutex<Conn>,
    /// How long a new connection waits for a booting Asterisk.
    boot_wait: Duration,
}

/// How long a new connection waits, by default, for an Asterisk that
/// accepted the login but is still booting.
pub const DEFAULT_BOOT_WAIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Conn {
    client: Option<Arc<AmiClient>>,
    failures: u32,
    next_attempt: Option<Instant>,
    last_error: Option<AmiError>,
}

impl Asterisk {
    pub fn new(cfg: AmiConfig) -> Self {
        Asterisk { cfg, state: Mutex::new(Conn::default()), boot_wait: DEFAULT_BOOT_WAIT }
    }

    /// How long a new connection waits for a booting Asterisk to finish.
    pub fn with_boot_wait(mut self, wait: Duration) -> Self {
        self.boot_wait = wait;
        self
    }

    /// Logs in with system events on and waits, up to `within`, for
    /// Asterisk's `FullyBooted` (sent right after the login when it has
    /// booted, else once it has). While Asterisk boots, AMI accepts logins
    /// but refuses PJSIP actions ("Permission denied") and only queues a
    /// `Reload` while answering "Module Reloaded": nothing may be sent
    /// before it. With `retry_connect`, an Asterisk that does not listen
    /// yet is waited for too (`apply` right after `systemctl restart asterisk`).
    pub async fn wait_fully_booted(&self, within: Duration, retry_connect: bool) -> Result<(), AmiError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + within;
        let mut said = false;
        let cfg = AmiConfig { events: true, ..self.cfg.clone() };
        loop {
            match AmiClient::connect_subscribed(cfg.clone()).await {
                Ok((client, mut events)) => {
                    let outcome = loop {
                        match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
                            Ok(Ok(m)) if m.get("Event") == Some("FullyBooted") => break Ok(()),
                            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                            Ok(Err(broadcast::error::RecvError::Closed)) => break Err(AmiError::Disconnected),
                            Err(_) if !said => {
                                tracing::info!(addr = %self.cfg.addr, "Asterisk is still booting; waiting for it before sending anything");
                                said = true;
                            }
                            Err(_) => {}
                        }
                        if tokio::time::Instant::now() >= deadline {
                            break Err(AmiError::Booting { addr: self.cfg.addr.clone(), waited: within });
                        }
                    };
                    client.logoff().await;
                    match outcome {
                        Ok(()) => {
                            if said {
                                tracing::info!(addr = %self.cfg.addr, waited_ms = started.elapsed().as_millis() as u64, "Asterisk has finished booting");
                            }
                            return Ok(());
                        }
                        // Asterisk went away mid-boot: log in again.
                        Err(AmiError::Disconnected) if retry_connect && tokio::time::Instant::now() < deadline => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e @ (AmiError::Connect { .. } | AmiError::Disconnected | AmiError::Timeout { .. }))
                    if retry_connect && tokio::time::Instant::now() < deadline =>
                {
                    if !said {
                        tracing::info!(addr = %self.cfg.addr, error = %e, within_s = within.as_secs(), "waiting for Asterisk to answer");
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn addr(&self) -> &str {
        &self.cfg.addr
    }

    /// The live connection, opening one if there is none. After a failed
    /// attempt, further attempts wait 0.5 s, 1 s, 2 s … up to 30 s; calls in
    /// between get the last error at once.
    async fn client(&self) -> Result<Arc<AmiClient>, AmiError> {
        let mut conn = self.state.lock().await;
        if let Some(c) = &conn.client
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        conn.client = None;
        if let (Some(at), Some(err)) = (conn.next_attempt, &conn.last_error)
            && Instant::now() < at
        {
            return Err(err.clone());
        }
        // A new connection first makes sure Asterisk has finished booting
        // (after a restart too): until then its answers cannot be trusted.
        let booted =
            if self.boot_wait.is_zero() { Ok(()) } else { self.wait_fully_booted(self.boot_wait, false).await };
        let connected = match booted {
            Ok(()) => AmiClient::connect(self.cfg.clone()).await,
            Err(e) => Err(e),
        };
        match connected {
            Ok(c) => {
                conn.client = Some(c.clone());
                conn.failures = 0;
                conn.next_attempt = None;
                conn.last_error = None;
                Ok(c)
            }
            Err(e) => {
                conn.failures += 1;
                conn.next_attempt = Some(Instant::now() + RECONNECT_BACKOFF.delay(conn.failures));
                conn.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Drops a connection that failed, so the next call reconnects.
    async fn forget(&self, err: &AmiError) {
        if matches!(err, AmiError::Disconnected | AmiError::Protocol(_) | AmiError::Timeout { .. }) {
            let mut conn = self.state.lock().await;
            conn.client = None;
        }
    }

    async fn list(&self, action: Message) -> Result<Vec<Message>, AmiError> {
        let client = self.client().await?;
        match client.request_list(action).await {
            Ok((_, items)) => Ok(items),
            Err(e) => {
                self.forget(&e).await;
                Err(e)
            }
        }
    }

    async fn single(&self, action: Message) -> Result<Message, AmiError> {
        let client = self.client().await?;
        match client.request(action).await {
            Ok(m) => Ok(m),
            Err(e) => {
                self.forget(&e).await;
                Err(e)
            }
        }
    }

    /// A list action; Asterisk answers an empty list with `Response: Error`
    /// and `Message: No Contacts found` (or `No endpoints found`).
    async fn list_or_empty(&self, action: Message) -> Result<Vec<Message>, AmiError> {
        match self.list(action).await {
            Err(AmiError::Rejected { message, .. }) if message.starts_with("No ") && message.ends_with(" found") => {
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// Every endpoint Asterisk has loaded.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, AmiError> {
        let items = self.list_or_empty(Message::action("PJSIPShowEndpoints")).await?;
        Ok(items.iter().filter(|m| m.get("Event") == Some("EndpointList")).map(Endpoint::from_message).collect())
    }

    /// One endpoint's detail; `None` when Asterisk has no such endpoint
    /// (including one it refused to load).
    pub async fn endpoint(&self, name: &str) -> Result<Option<EndpointDetail>, AmiError> {
        match self.list(Message::action("PJSIPShowEndpoint").with("Endpoint", name)).await {
            Ok(items) => Ok(EndpointDetail::from_events(&items)),
            Err(AmiError::Rejected { message, .. }) if message.starts_with("Unable to retrieve endpoint") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every registered contact.
    pub async fn contacts(&self) -> Result<Vec<Contact>, AmiError> {
        let items = self.list_or_empty(Message::action("PJSIPShowContacts")).await?;
        Ok(items.iter().filter(|m| m.get("Event") == Some("ContactList")).map(Contact::from_message).collect())
    }

    /// Reloads res_pjsip (`Action: Reload`, `Module: res_pjsip.so`; Asterisk
    /// 22 has no `pjsip reload` CLI command). "Module Reloaded" does not mean
    /// the config was accepted: verify afterwards.
    ///
    /// Asterisk runs one reload at a time and refuses another while one is
    /// under way (`Response: Error`, "A reload is in progress": someone
    /// else's reload, or a slow one of ours at a large estate): that is
    /// waited out, retrying with a growing pause for up to the action
    /// timeout, then reported.
    pub async fn reload(&self) -> Result<(), AmiError> {
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let mut backoff = Backoff::new(RELOAD_BACKOFF);
        loop {
            match self.single(Message::action("Reload").with("Module", "res_pjsip.so")).await {
                Ok(_) => return Ok(()),
                Err(AmiError::Rejected { message, .. })
                    if message == RELOAD_IN_PROGRESS
                        && tokio::time::Instant::now() + backoff.next_delay() < deadline =>
                {
                    let pause = backoff.fail();
                    tracing::debug!(retry_in_ms = pause.as_millis() as u64, "Asterisk is still reloading; waiting");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Version and uptime.
    pub async fn version(&self) -> Result<Version, AmiError> {
        let settings = self.single(Message::action("CoreSettings")).await?;
        let status = self.single(Message::action("CoreStatus")).await?;
        Ok(Version {
            asterisk_version: text(&settings, "AsteriskVersion"),
            ami_version: text(&settings, "AMIversion"),
            startup: format!("{} {}", text(&status, "CoreStartupDate"), text(&status, "CoreStartupTime"))
                .trim()
                .to_string(),
            last_reload: format!("{} {}", text(&status, "CoreReloadDate"), text(&status, "CoreReloadTime"))
                .trim()
                .to_string(),
            current_calls: status.get("CoreCurrentCalls").and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }

    /// Logs off and closes the connection, if one is open.
    pub async fn close(&self) {
        let client = self.state.lock().await.client.take();
        if let Some(c) = client {
            c.logoff().await;
        }
    }
}

impl AsteriskControl for Asterisk {
    type Error = AmiError;

    async fn endpoints(&self) -> Result<BTreeMap<String, ObservedEndpoint>, AmiError> {
        Ok(Asterisk::endpoints(self)
            .await?
            .into_iter()
            .map(|e| {
                let o = ObservedEndpoint {
                    name: e.name.clone(),
                    transport: Some(e.transport),
                    context: None,
                    codecs: None,
                    options: None,
                };
                (e.name, o)
            })
            .collect())
    }

    async fn endpoint(&self, name: &str) -> Result<Option<ObservedEndpoint>, AmiError> {
        Ok(Asterisk::endpoint(self, name).await?.map(|d| ObservedEndpoint {
            options: Some(Box::new(crate::core::plan::EndpointOptions {
                callerid: d.callerid,
                dtmf_mode: d.dtmf_mode,
                mailboxes: d.mailboxes,
                profile_options: d.profile_options,
                auth_type: d.auth_type,
                max_contacts: d.max_contacts,
                remove_existing: d.remove_existing,
                qualify_frequency: d.qualify_frequency,
                auth_md5: d.auth_md5,
                reported: d.reported,
            })),
            name: d.name,
            transport: Some(d.transport),
            context: Some(d.context),
            codecs: Some(d.codecs),
        }))
    }

    async fn reload(&self) -> Result<(), AmiError> {
        Asterisk::reload(self).await
    }

    async fn ping(&self) -> Result<(), AmiError> {
        self.single(Message::action("Ping")).await.map(|_| ())
    }

    async fn astdb_keys(&self, family: &str) -> Result<Vec<String>, AmiError> {
        // DBGetTree (write = system) answers each key with its value (about
        // 6 KB an endpoint: 13 s for 30,000 objects on a real Asterisk, so the
        // ari target asks once a sweep); the values are dropped here, unread.
        let items = self.list_or_empty(Message::action("DBGetTree").with("Family", family)).await?;
        Ok(items
            .iter()
            .filter(|m| m.get("Event") == Some("DBGetTreeResponse"))
            .filter_map(|m| m.get("Key").map(str::to_string))
            .collect())
    }
}
