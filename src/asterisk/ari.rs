//! ARI: Asterisk's REST interface (basic auth) and its events WebSocket.
//!
//! The REST calls the product needs: Asterisk info, endpoint state, and —
//! for the call logger — `continue` and `hangup` of a channel, subscribing
//! the app to a channel, and asking whether a channel still exists.
//!
//! The events WebSocket (`/ari/events?app=…`) is opened with the same basic
//! auth in the upgrade request's `Authorization` header, never with
//! `api_key=` in the URL (URLs end up in logs). [`AriEvents`] yields parsed
//! events; reconnecting with back-off is the caller's loop (see
//! `calls::run`), which keeps the policy where the state is.
//!
//! Shapes follow tests/fixtures/asterisk/ari (captured from Asterisk
//! 22.10.1); `ChannelDestroyed` (not captured: after `StasisEnd` it reaches
//! only an app subscribed to the channel) follows
//! `main/stasis_channels.c`: `type`, `timestamp`, `cause`, `cause_txt`,
//! `channel`.

use crate::secret::SecretString;
use base64::Engine;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_tungstenite::tungstenite;

/// Where ARI is and who we are.
#[derive(Clone, Debug)]
pub struct AriConfig {
    /// `http://127.0.0.1:8088` (with or without a trailing `/ari`).
    pub url: String,
    pub user: String,
    pub password: SecretString,
    /// The Stasis application name.
    pub app: String,
    /// Per request.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AriError {
    #[error("ARI at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("ARI refused our credentials (HTTP 401): check the ARI user and password")]
    Unauthorized,
    #[error("ARI answered {status} to {what}: {message}")]
    Status { what: String, status: u16, message: String },
    #[error("ARI sent something we cannot read ({what}): {reason}")]
    Protocol { what: String, reason: String },
    #[error("ARI did not answer {what} within {0:?}", .timeout)]
    Timeout { what: String, timeout: Duration },
}

/// `GET /ari/asterisk/info` (the parts we use).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct AsteriskInfo {
    pub system: SystemInfo,
    pub status: StatusInfo,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct SystemInfo {
    pub version: String,
    pub entity_id: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct StatusInfo {
    pub startup_time: String,
    pub last_reload_time: String,
}

/// `GET /ari/endpoints/PJSIP/{resource}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct EndpointState {
    pub technology: String,
    pub resource: String,
    /// `online`, `offline`, `unknown`.
    pub state: String,
    pub channel_ids: Vec<String>,
}

/// A channel as events carry it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Channel {
    pub id: String,
    pub name: String,
    pub state: String,
    pub caller: Party,
    #[serde(default)]
    pub connected: Option<Party>,
    pub dialplan: Dialplan,
    pub creationtime: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Party {
    pub name: String,
    pub number: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Dialplan {
    pub context: String,
    pub exten: String,
    pub priority: i64,
}

/// The events the call logger acts on; the rest are `Other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    StasisStart { timestamp: String, channel: Channel },
    StasisEnd { timestamp: String, channel: Channel },
    ChannelStateChange { timestamp: String, channel: Channel },
    ChannelHangupRequest { timestamp: String, cause: Option<i64>, channel: Channel },
    ChannelDestroyed { timestamp: String, cause: Option<i64>, cause_txt: String, channel: Channel },
    Other { kind: String },
}

impl Event {
    /// Parses one WebSocket text frame. Errors name the event type when known.
    pub fn parse(text: &str) -> Result<Event, AriError> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            timestamp: String,
            #[serde(default)]
            channel: Option<serde_json::Value>,
            #[serde(default)]
            cause: Option<i64>,
            #[serde(default)]
            cause_txt: Option<String>,
        }
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| AriError::Protocol { what: "an event".into(), reason: e.to_string() })?;
        let channel = |v: Option<serde_json::Value>| -> Result<Channel, AriError> {
            let v = v.ok_or_else(|| AriError::Protocol {
                what: format!("a {} event", raw.kind),
                reason: "it has no channel".into(),
            })?;
            serde_json::from_value(v).map_err(|e| AriError::Protocol {
                what: format!("a {} event's channel", raw.kind),
                reason: e.to_string(),
            })
        };
        let ts = raw.timestamp.clone();
        Ok(match raw.kind.as_str() {
            "StasisStart" => Event::StasisStart { timestamp: ts, channel: channel(raw.channel)? },
            "StasisEnd" => Event::StasisEnd { timestamp: ts, channel: channel(raw.channel)? },
            "ChannelStateChange" => Event::ChannelStateChange { timestamp: ts, channel: channel(raw.channel)? },
            "ChannelHangupRequest" => {
                Event::ChannelHangupRequest { timestamp: ts, cause: raw.cause, channel: channel(raw.channel)? }
            }
            "ChannelDestroyed" => Event::ChannelDestroyed {
                timestamp: ts,
                cause: raw.cause,
                cause_txt: raw.cause_txt.unwrap_or_default(),
                channel: channel(raw.channel)?,
            },
            _ => Event::Other { kind: raw.kind },
        })
    }

    pub fn channel(&self) -> Option<&Channel> {
        match self {
            Event::StasisStart { channel, .. }
            | Event::StasisEnd { channel, .. }
            | Event::ChannelStateChange { channel, .. }
            | Event::ChannelHangupRequest { channel, .. }
            | Event::ChannelDestroyed { channel, .. } => Some(channel),
            Event::Other { .. } => None,
        }
    }
}

/// Parses ARI's timestamps (`2026-11-24T00:02:31.550+0000`).
pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Where `continue` sends the channel: a setting, owned by `config`.
pub use crate::config::ContinueTo;

/// The REST client.
#[derive(Clone)]
pub struct Ari {
    cfg: AriConfig,
    base: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Ari {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ari").field("base", &self.base).field("user", &self.cfg.user).finish_non_exhaustive()
    }
}

impl Ari {
    pub fn new(cfg: AriConfig) -> Result<Ari, AriError> {
        let trimmed = cfg.url.trim_end_matches('/');
        let base = if trimmed.ends_with("/ari") { trimmed.to_string() } else { format!("{trimmed}/ari") };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(AriError::Protocol {
                what: "the ARI URL".into(),
                reason: format!("{:?} is not an http:// or https:// URL", cfg.url),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .build()
            .map_err(|e| AriError::Protocol { what: "the HTTP client".into(), reason: e.to_string() })?;
        Ok(Ari { cfg, base, http })
    }

    pub fn app(&self) -> &str {
        &self.cfg.app
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response, AriError> {
        let resp = req.basic_auth(&self.cfg.user, Some(self.cfg.password.expose())).send().await.map_err(|e| {
            if e.is_timeout() {
                AriError::Timeout { what: what.into(), timeout: self.cfg.timeout }
            } else {
                // reqwest's error text names the URL, which carries no secret (auth is a header).
                AriError::Unreachable { url: self.base.clone(), reason: root_cause(&e) }
            }
        })?;
        let status = resp.status().as_u16();
        if status == 401 {
            return Err(AriError::Unauthorized);
        }
        if !(200..300).contains(&status) {
            let message = resp
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string));
            return Err(AriError::Status { what: what.into(), status, message: message.unwrap_or_default() });
        }
        Ok(resp)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, what: &str, path: &str) -> Result<T, AriError> {
        let resp = self.send(what, self.http.get(format!("{}{path}", self.base))).await?;
        resp.json::<T>().await.map_err(|e| AriError::Protocol { what: what.into(), reason: e.to_string() })
    }

    /// `GET /asterisk/info`.
    pub async fn info(&self) -> Result<AsteriskInfo, AriError> {
        self.get_json("asterisk info", "/asterisk/info").await
    }

    /// The option names of one res_pjsip object as Asterisk holds it
    /// (`GET /asterisk/config/dynamic/res_pjsip/{kind}/{id}`: every option
    /// of its type, file objects included). Only the names: the values (a
    /// password among them) are dropped here.
    pub async fn option_names(&self, kind: &str, id: &str) -> Result<Vec<String>, AriError> {
        #[derive(Deserialize)]
        struct Field {
            attribute: String,
        }
        let path = format!("/asterisk/config/dynamic/res_pjsip/{}/{}", path_segment(kind), path_segment(id));
        let fields: Vec<Field> = self.get_json("an object's configuration", &path).await?;
        Ok(fields.into_iter().map(|f| f.attribute).collect())
    }

    /// `PUT /asterisk/config/dynamic/res_pjsip/{kind}/{id}`: creates the
    /// object, or sets these fields on the one Asterisk holds (fields not
    /// named keep their value). Asterisk's answer is every attribute of the
    /// object as it now holds it. A value Asterisk refuses is a 400
    /// (`Status`, with its message); an object from a config file is a 403.
    /// The error names the object, never a value (a password among them).
    pub async fn put_object(&self, kind: &str, id: &str, fields: &[(String, String)]) -> Result<Attributes, AriError> {
        #[derive(Serialize)]
        struct Field<'a> {
            attribute: &'a str,
            value: &'a str,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            fields: Vec<Field<'a>>,
        }
        let body = Body { fields: fields.iter().map(|(a, v)| Field { attribute: a, value: v }).collect() };
        let what = format!("PUT {kind} {id}");
        let url = format!("{}{}", self.base, object_path(kind, id));
        let resp = self.send(&what, self.http.put(url).json(&body)).await?;
        read_attributes(&what, resp).await
    }

    /// `GET` of one object: every attribute as Asterisk holds it; `None`
    /// when Asterisk has no such object.
    pub async fn get_object(&self, kind: &str, id: &str) -> Result<Option<Attributes>, AriError> {
        let what = format!("GET {kind} {id}");
        let url = format!("{}{}", self.base, object_path(kind, id));
        match self.send(&what, self.http.get(url)).await {
            Ok(resp) => read_attributes(&what, resp).await.map(Some),
            Err(AriError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE` of one object; `false` when Asterisk had no such object.
    pub async fn delete_object(&self, kind: &str, id: &str) -> Result<bool, AriError> {
        let what = format!("DELETE {kind} {id}");
        let url = format!("{}{}", self.base, object_path(kind, id));
        match self.send(&what, self.http.delete(url)).await {
            Ok(_) => Ok(true),
            Err(AriError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /endpoints/PJSIP`.
    pub async fn endpoints(&self) -> Result<Vec<EndpointState>, AriError> {
        self.get_json("the PJSIP endpoint list", "/endpoints/PJSIP").await
    }

    /// `GET /endpoints/PJSIP/{resource}`; `None` when Asterisk has no such endpoint.
    pub async fn endpoint(&self, resource: &str) -> Result<Option<EndpointState>, AriError> {
        match self.get_json("an endpoint", &format!("/endpoints/PJSIP/{}", path_segment(resource))).await {
            Err(AriError::Status { status: 404, .. }) => Ok(None),
            r => r.map(Some),
        }
    }

    /// `POST /channels/{id}/continue`: back to the dialplan.
    pub async fn continue_channel(&self, id: &str, to: &ContinueTo) -> Result<(), AriError> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(c) = &to.context {
            q.push(("context", c.clone()));
        }
        if let Some(e) = &to.extension {
            q.push(("extension", e.clone()));
        }
        if let Some(p) = to.priority {
            q.push(("priority", p.to_string()));
        }
        let url = format!("{}/channels/{}/continue", self.base, path_segment(id));
        self.send("continue", self.http.post(url).query(&q)).await.map(drop)
    }

    /// `DELETE /channels/{id}`: hang the channel up.
    pub async fn hangup(&self, id: &str, reason: &str) -> Result<(), AriError> {
        let url = format!("{}/channels/{}", self.base, path_segment(id));
        self.send("hangup", self.http.delete(url).query(&[("reason", reason)])).await.map(drop)
    }

    /// `POST /applications/{app}/subscription?eventSource=channel:{id}`, so
    /// the app keeps hearing of the channel after it leaves Stasis.
    pub async fn subscribe_channel(&self, id: &str) -> Result<(), AriError> {
        let url = format!("{}/applications/{}/subscription", self.base, path_segment(&self.cfg.app));
        self.send("subscribe", self.http.post(url).query(&[("eventSource", format!("channel:{id}"))])).await.map(drop)
    }

    /// `GET /channels/{id}`: does the channel still exist?
    pub async fn channel_exists(&self, id: &str) -> Result<bool, AriError> {
        let url = format!("{}/channels/{}", self.base, path_segment(id));
        match self.send("a channel", self.http.get(url)).await {
            Ok(_) => Ok(true),
            Err(AriError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens the events WebSocket for our app.
    pub async fn events(&self) -> Result<AriEvents, AriError> {
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", self.base.trim_start_matches("http://"))
        };
        let url = format!("{ws_base}/events?app={}&subscribeAll=false", query_value(&self.cfg.app));
        use tungstenite::client::IntoClientRequest;
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| AriError::Protocol { what: "the events URL".into(), reason: e.to_string() })?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.cfg.user,
            self.cfg.password.expose()
        ));
        let value = format!("Basic {token}").parse().map_err(|_| AriError::Protocol {
            what: "the ARI user".into(),
            reason: "not a valid header value".into(),
        })?;
        req.headers_mut().insert("Authorization", value);
        let connect = tokio_tungstenite::connect_async(req);
        let (ws, _) = match tokio::time::timeout(self.cfg.timeout, connect).await {
            Err(_) => return Err(AriError::Timeout { what: "the events WebSocket".into(), timeout: self.cfg.timeout }),
            Ok(Err(tungstenite::Error::Http(resp))) if resp.status().as_u16() == 401 => {
                return Err(AriError::Unauthorized);
            }
            Ok(Err(tungstenite::Error::Http(resp))) => {
                return Err(AriError::Status {
                    what: "the events WebSocket".into(),
                    status: resp.status().as_u16(),
                    message: String::new(),
                });
            }
            Ok(Err(e)) => return Err(AriError::Unreachable { url: self.base.clone(), reason: e.to_string() }),
            Ok(Ok(x)) => x,
        };
        Ok(AriEvents { ws })
    }
}

/// One res_pjsip object's attributes as ARI lists them, in its order.
pub type Attributes = Vec<(String, String)>;

fn object_path(kind: &str, id: &str) -> String {
    format!("/asterisk/config/dynamic/res_pjsip/{}/{}", path_segment(kind), path_segment(id))
}

async fn read_attributes(what: &str, resp: reqwest::Response) -> Result<Attributes, AriError> {
    #[derive(Deserialize)]
    struct Field {
        attribute: String,
        value: String,
    }
    let fields: Vec<Field> =
        resp.json().await.map_err(|e| AriError::Protocol { what: what.into(), reason: e.to_string() })?;
    Ok(fields.into_iter().map(|f| (f.attribute, f.value)).collect())
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Percent-encodes what is not unreserved, for one path segment.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_value(s: &str) -> String {
    path_segment(s)
}

/// The events WebSocket.
pub struct AriEvents {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl AriEvents {
    /// The next text frame; `None` when the connection closed. Pings are
    /// answered by tungstenite while reading.
    pub async fn next_text(&mut self) -> Option<Result<String, AriError>> {
        loop {
            match self.ws.next().await? {
                Ok(tungstenite::Message::Text(t)) => return Some(Ok(t.to_string())),
                Ok(tungstenite::Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(e) => {
                    return Some(Err(AriError::Unreachable {
                        url: "the events WebSocket".into(),
                        reason: e.to_string(),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_as_asterisk_writes_them() {
        let t = parse_time("2026-11-24T00:02:31.550+0000").expect("parses");
        assert_eq!(t.to_rfc3339(), "2026-11-24T00:02:31.550+00:00");
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn a_path_segment_cannot_escape() {
        assert_eq!(path_segment("1795478551.0"), "1795478551.0");
        assert_eq!(path_segment("../x y"), "..%2Fx%20y");
    }

    #[test]
    fn an_event_without_a_channel_is_a_protocol_error_naming_it() {
        let e = Event::parse(r#"{"type":"StasisStart","timestamp":"x"}"#).expect_err("no channel");
        assert!(e.to_string().contains("StasisStart"), "{e}");
        assert_eq!(Event::parse(r#"{"type":"Dial"}"#).expect("other"), Event::Other { kind: "Dial".into() });
        assert!(Event::parse("not json").is_err());
    }
}
