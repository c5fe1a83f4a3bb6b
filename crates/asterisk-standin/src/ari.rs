//! The stand-in's ARI: the REST routes the product calls and the events
//! WebSocket, answering with JSON shaped byte for byte like the captures in
//! tests/fixtures/asterisk/ari (field order included: every body is a
//! struct serialised in Asterisk's order).
//!
//! Calls are played with [`Control::start_call`], [`Control::answer`] and
//! [`Control::hang_up`]. What reaches the app follows Asterisk:
//!
//! - `StasisStart` when a call enters `Stasis(app)`; no app connected means
//!   no call (Asterisk's `Stasis()` fails when the app is not registered);
//! - `POST /channels/{id}/continue` answers 204, and `StasisEnd` follows at
//!   once (the channel is back in the dialplan: captured in
//!   events-outbound-call-continue.jsonl);
//! - after `StasisEnd` the app hears of the channel only if it subscribed
//!   to it (`POST /applications/{app}/subscription?eventSource=channel:…`):
//!   `ChannelStateChange`, `ChannelHangupRequest`, `ChannelDestroyed`
//!   (README fact 10; `ChannelDestroyed`'s shape is from
//!   main/stasis_channels.c, it was not captured);
//! - subscriptions belong to the app, not to one WebSocket, so they outlive
//!   a reconnect; events sent while no socket is open are lost.
//!
//! Credentials: the same user and secret as the AMI side; a wrong or
//! missing one gets the captured 401 (ari-unauthorized.txt).

use crate::Control;
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tokio::sync::mpsc;

const INFO_CAPTURE: &str = include_str!("../../../tests/fixtures/asterisk/ari/ari-asterisk-info.json");
const ENTITY_ID: &str = "02:fc:00:00:00:01";

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Party {
    pub name: String,
    pub number: String,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Dialplan {
    pub context: String,
    pub exten: String,
    pub priority: i64,
    pub app_name: String,
    pub app_data: String,
}

/// A channel, serialised in Asterisk's field order.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ChannelJson {
    pub id: String,
    pub name: String,
    pub state: String,
    pub protocol_id: String,
    pub caller: Party,
    pub connected: Party,
    pub accountcode: String,
    pub dialplan: Dialplan,
    pub creationtime: String,
    pub language: String,
}

#[derive(Serialize)]
struct EndpointJson<'a> {
    technology: &'a str,
    resource: &'a str,
    state: &'a str,
    channel_ids: Vec<String>,
}

#[derive(Serialize)]
struct MessageJson<'a> {
    message: &'a str,
}

/// A channel the stand-in knows.
#[derive(Clone, Debug)]
struct Chan {
    json: ChannelJson,
    app: String,
    in_stasis: bool,
    subscribed: bool,
    continued: bool,
}

/// ARI's side of the stand-in's state.
#[derive(Default)]
pub(crate) struct AriState {
    channels: BTreeMap<String, Chan>,
    sockets: HashMap<String, Vec<(u64, mpsc::UnboundedSender<String>)>>,
    next_socket: u64,
    next_channel: u64,
    rest_calls: Vec<String>,
}

/// ARI's timestamps: `2026-11-24T00:02:31.550+0000`.
pub fn timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// One event line: event fields first, then `type`, `timestamp`,
/// `channel`, `asterisk_id`, `application` — Asterisk's order.
pub fn event_json(kind: &str, extra: &[(&str, serde_json::Value)], channel: &ChannelJson, app: &str) -> String {
    let mut s = String::from("{");
    // Where an event's own fields go depends on how Asterisk builds it: after
    // type and timestamp for StasisStart's args (captured) and
    // ChannelDestroyed's cause (stasis_channels.c), before them for
    // ChannelHangupRequest's cause and soft (captured).
    let after = matches!(kind, "StasisStart" | "ChannelDestroyed");
    let push = |s: &mut String, k: &str, v: &str| {
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(&format!("{}:{v}", serde_json::Value::from(k)));
    };
    if !after {
        for (k, v) in extra {
            push(&mut s, k, &v.to_string());
        }
    }
    push(&mut s, "type", &serde_json::Value::from(kind).to_string());
    push(&mut s, "timestamp", &serde_json::Value::from(timestamp()).to_string());
    if after {
        for (k, v) in extra {
            push(&mut s, k, &v.to_string());
        }
    }
    push(&mut s, "channel", &serde_json::to_string(channel).unwrap_or_default());
    push(&mut s, "asterisk_id", &serde_json::Value::from(ENTITY_ID).to_string());
    push(&mut s, "application", &serde_json::Value::from(app).to_string());
    s.push('}');
    s
}

/// Q.850 cause texts for the causes tests use (`ast_cause2str`).
pub fn cause_text(cause: i64) -> &'static str {
    match cause {
        16 => "Normal Clearing",
        17 => "User busy",
        18 => "No user responding",
        19 => "User alerting, no answer",
        21 => "Call Rejected",
        32 => "Circuit/channel congestion",
        34 => "Circuit/channel congestion",
        _ => "Unknown",
    }
}

impl Control {
    fn ari<T>(&self, f: impl FnOnce(&mut AriState) -> T) -> T {
        f(&mut self.ari.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sends a text frame to every socket of `app`; false if none is open.
    pub fn send_to_app(&self, app: &str, text: &str) -> bool {
        self.ari(|a| {
            let Some(socks) = a.sockets.get_mut(app) else { return false };
            socks.retain(|(_, tx)| tx.send(text.to_string()).is_ok());
            !socks.is_empty()
        })
    }

    /// Whether an app has an events socket open.
    pub fn app_connected(&self, app: &str) -> bool {
        self.ari(|a| a.sockets.get(app).is_some_and(|s| s.iter().any(|(_, tx)| !tx.is_closed())))
    }

    /// Closes every events socket (the app's subscriptions stay).
    pub fn drop_event_sockets(&self) {
        self.ari(|a| a.sockets.clear());
    }

    /// A call from `caller` (an endpoint) dialling `exten` in `context` that
    /// reaches `Stasis(app)`: `StasisStart` goes to the app. `None` when the
    /// app has no socket open (Asterisk's `Stasis()` would fail).
    pub fn start_call(&self, app: &str, caller: &str, caller_name: &str, context: &str, exten: &str) -> Option<String> {
        let (id, n) = self.ari(|a| {
            a.next_channel += 1;
            (format!("{}.{}", 1_795_478_551 + a.next_channel, a.next_channel), a.next_channel)
        });
        let json = ChannelJson {
            id: id.clone(),
            name: format!("PJSIP/{caller}-{n:08x}"),
            state: "Ring".into(),
            protocol_id: format!("1-{}@127.0.0.1", 6000 + n),
            caller: Party { name: caller_name.into(), number: caller.into() },
            connected: Party { name: String::new(), number: String::new() },
            accountcode: String::new(),
            dialplan: Dialplan {
                context: context.into(),
                exten: exten.into(),
                priority: 1,
                app_name: "Stasis".into(),
                app_data: app.into(),
            },
            creationtime: timestamp(),
            language: "en".into(),
        };
        if !self.app_connected(app) {
            return None;
        }
        self.ari(|a| {
            a.channels.insert(
                id.clone(),
                Chan { json: json.clone(), app: app.into(), in_stasis: true, subscribed: false, continued: false },
            )
        });
        self.send_to_app(app, &event_json("StasisStart", &[("args", serde_json::json!([]))], &json, app));
        Some(id)
    }

    /// The channel as it is now, if it exists.
    pub fn channel(&self, id: &str) -> Option<ChannelJson> {
        self.ari(|a| a.channels.get(id).map(|c| c.json.clone()))
    }

    /// Whether the app sent `continue` for the channel.
    pub fn continued(&self, id: &str) -> bool {
        self.ari(|a| a.channels.get(id).is_some_and(|c| c.continued))
    }

    /// Whether the app subscribed to the channel.
    pub fn subscribed(&self, id: &str) -> bool {
        self.ari(|a| a.channels.get(id).is_some_and(|c| c.subscribed))
    }

    /// The REST calls received, as `METHOD path` (no query, no credentials).
    pub fn rest_calls(&self) -> Vec<String> {
        self.ari(|a| a.rest_calls.clone())
    }

    /// Builds an event for a channel in its current state, for tests that
    /// send duplicates or reorder events by hand.
    pub fn event_for(&self, id: &str, kind: &str, extra: &[(&str, serde_json::Value)]) -> Option<String> {
        self.ari(|a| a.channels.get(id).map(|c| event_json(kind, extra, &c.json, &c.app)))
    }

    /// Sends an event for the channel if the app would hear it (in Stasis or subscribed).
    fn notify(&self, id: &str, kind: &str, extra: &[(&str, serde_json::Value)]) {
        let msg = self.ari(|a| {
            a.channels
                .get(id)
                .filter(|c| c.in_stasis || c.subscribed)
                .map(|c| (c.app.clone(), event_json(kind, extra, &c.json, &c.app)))
        });
        if let Some((app, text)) = msg {
            self.send_to_app(&app, &text);
        }
    }

    /// The callee answers: the channel goes Up.
    pub fn answer(&self, id: &str) -> bool {
        let found = self.ari(|a| a.channels.get_mut(id).map(|c| c.json.state = "Up".into()).is_some());
        if found {
            self.notify(id, "ChannelStateChange", &[]);
        }
        found
    }

    /// The call ends with a Q.850 cause: `ChannelHangupRequest`, then
    /// `StasisEnd` if still in Stasis, then `ChannelDestroyed` if subscribed.
    pub fn hang_up(&self, id: &str, cause: i64) -> bool {
        let Some(chan) = self.ari(|a| a.channels.get(id).cloned()) else { return false };
        self.notify(id, "ChannelHangupRequest", &[("cause", cause.into()), ("soft", true.into())]);
        if chan.in_stasis {
            self.notify(id, "StasisEnd", &[]);
            self.ari(|a| a.channels.get_mut(id).map(|c| c.in_stasis = false));
        }
        self.notify(id, "ChannelDestroyed", &[("cause", cause.into()), ("cause_txt", cause_text(cause).into())]);
        self.ari(|a| a.channels.remove(id));
        true
    }
}

fn unauthorized() -> Response {
    let mut h = HeaderMap::new();
    h.insert(header::SERVER, HeaderValue::from_static("Asterisk/22.10.1"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Asterisk REST Interface\""));
    (StatusCode::UNAUTHORIZED, h, "").into_response()
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut h = HeaderMap::new();
    h.insert(header::SERVER, HeaderValue::from_static("Asterisk/22.10.1"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (status, h, body).into_response()
}

fn message(status: StatusCode, text: &str) -> Response {
    json_response(status, serde_json::to_string(&MessageJson { message: text }).unwrap_or_default())
}

fn authorized(c: &Control, headers: &HeaderMap, query: &HashMap<String, String>) -> bool {
    let (user, secret) = c.with(|s| (s.user.clone(), s.secret.clone()));
    let expected = format!("{user}:{secret}");
    if let Some(k) = query.get("api_key") {
        return *k == expected;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
        .is_some_and(|d| d == expected.as_bytes())
}

macro_rules! guard {
    ($c:expr, $h:expr, $q:expr, $what:expr) => {
        if !authorized(&$c, &$h, &$q) {
            return unauthorized();
        }
        $c.ari(|a| a.rest_calls.push($what));
    };
}

async fn info(State(c): State<Control>, h: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    guard!(c, h, q, "GET /ari/asterisk/info".to_string());
    json_response(StatusCode::OK, INFO_CAPTURE.trim_end().to_string())
}

fn endpoint_states(c: &Control) -> Vec<(String, &'static str, Vec<String>)> {
    let (names, registered): (Vec<String>, BTreeSet<String>) =
        c.with(|s| (s.loaded.endpoints.keys().cloned().collect(), s.contacts.iter().map(|x| x.aor.clone()).collect()));
    let channels: Vec<(String, String)> =
        c.ari(|a| a.channels.values().map(|ch| (ch.json.caller.number.clone(), ch.json.id.clone())).collect());
    names
        .into_iter()
        .map(|n| {
            let ids = channels.iter().filter(|(num, _)| *num == n).map(|(_, id)| id.clone()).collect();
            let state = if registered.contains(&n) { "online" } else { "offline" };
            (n, state, ids)
        })
        .collect()
}

async fn endpoints(State(c): State<Control>, h: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    guard!(c, h, q, "GET /ari/endpoints/PJSIP".to_string());
    let list = endpoint_states(&c);
    let body: Vec<EndpointJson> = list
        .iter()
        .map(|(n, st, ids)| EndpointJson { technology: "PJSIP", resource: n, state: st, channel_ids: ids.clone() })
        .collect();
    json_response(StatusCode::OK, serde_json::to_string(&body).unwrap_or_default())
}

async fn endpoint(
    State(c): State<Control>,
    Path(res): Path<String>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    guard!(c, h, q, format!("GET /ari/endpoints/PJSIP/{res}"));
    match endpoint_states(&c).into_iter().find(|(n, _, _)| *n == res) {
        Some((n, st, ids)) => json_response(
            StatusCode::OK,
            serde_json::to_string(&EndpointJson { technology: "PJSIP", resource: &n, state: st, channel_ids: ids })
                .unwrap_or_default(),
        ),
        None => message(StatusCode::NOT_FOUND, "Endpoint not found"),
    }
}

async fn continue_channel(
    State(c): State<Control>,
    Path(id): Path<String>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    guard!(c, h, q, format!("POST /ari/channels/{id}/continue"));
    let outcome = c.ari(|a| match a.channels.get_mut(&id) {
        None => Err((StatusCode::NOT_FOUND, "Channel not found")),
        Some(ch) if !ch.in_stasis => Err((StatusCode::CONFLICT, "Channel not in Stasis application")),
        Some(ch) => {
            ch.continued = true;
            if let Some(p) = q.get("priority").and_then(|p| p.parse().ok()) {
                ch.json.dialplan.priority = p;
            }
            Ok(())
        }
    });
    if let Err((status, text)) = outcome {
        return message(status, text);
    }
    // The channel leaves Stasis: StasisEnd at once, then it is gone from the app.
    c.notify(&id, "StasisEnd", &[]);
    c.ari(|a| a.channels.get_mut(&id).map(|ch| ch.in_stasis = false));
    (StatusCode::NO_CONTENT, [(header::SERVER, "Asterisk/22.10.1")]).into_response()
}

async fn get_channel(
    State(c): State<Control>,
    Path(id): Path<String>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    guard!(c, h, q, format!("GET /ari/channels/{id}"));
    match c.channel(&id) {
        Some(ch) => json_response(StatusCode::OK, serde_json::to_string(&ch).unwrap_or_default()),
        None => message(StatusCode::NOT_FOUND, "Channel not found"),
    }
}

async fn delete_channel(
    State(c): State<Control>,
    Path(id): Path<String>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    guard!(c, h, q, format!("DELETE /ari/channels/{id}"));
    if c.hang_up(&id, 16) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        message(StatusCode::NOT_FOUND, "Channel not found")
    }
}

async fn subscribe(
    State(c): State<Control>,
    Path(app): Path<String>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    guard!(c, h, q, format!("POST /ari/applications/{app}/subscription"));
    let Some(source) = q.get("eventSource") else {
        return message(StatusCode::BAD_REQUEST, "Missing parameter eventSource");
    };
    let Some(id) = source.strip_prefix("channel:") else {
        return message(StatusCode::BAD_REQUEST, "Invalid event source URI scheme");
    };
    let ok = c.ari(|a| match a.channels.get_mut(id) {
        Some(ch) if ch.app == app => {
            ch.subscribed = true;
            true
        }
        _ => false,
    });
    if !ok {
        return message(StatusCode::UNPROCESSABLE_ENTITY, "Event source does not exist");
    }
    let body = serde_json::json!({"name": app, "channel_ids": [id], "bridge_ids": [], "endpoint_ids": [], "device_names": [], "events_allowed": [], "events_disallowed": []});
    json_response(StatusCode::OK, body.to_string())
}

async fn events(
    State(c): State<Control>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    if !authorized(&c, &h, &q) {
        return unauthorized();
    }
    let Some(app) = q.get("app").cloned().filter(|a| !a.is_empty()) else {
        return message(StatusCode::BAD_REQUEST, "Missing parameter app");
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let id = c.ari(|a| {
        a.next_socket += 1;
        let id = a.next_socket;
        a.sockets.entry(app.clone()).or_default().push((id, tx));
        id
    });
    let c2 = c.clone();
    ws.on_upgrade(move |socket| async move {
        pump(socket, rx).await;
        c2.ari(|a| {
            if let Some(s) = a.sockets.get_mut(&app) {
                s.retain(|(i, _)| *i != id);
            }
        });
    })
}

async fn pump(mut socket: WebSocket, mut rx: mpsc::UnboundedReceiver<String>) {
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(text) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                // The sender was dropped (drop_event_sockets): close like a restart would.
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

pub(crate) fn router(c: Control) -> Router {
    Router::new()
        .route("/ari/asterisk/info", get(info))
        .route("/ari/endpoints/PJSIP", get(endpoints))
        .route("/ari/endpoints/PJSIP/{res}", get(endpoint))
        .route("/ari/channels/{id}", get(get_channel).delete(delete_channel))
        .route("/ari/channels/{id}/continue", post(continue_channel))
        .route("/ari/applications/{app}/subscription", post(subscribe))
        .route("/ari/events", get(events))
        .with_state(c)
}
