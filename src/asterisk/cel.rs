//! CEL over AMI: Asterisk's channel event logging (`cel_manager`), read from
//! an AMI connection of its own, with nothing dropped.
//!
//! The shared [`AmiClient`](super::ami::AmiClient) hands unsolicited events
//! to a bounded broadcast channel, which drops the oldest when a reader
//! lags: right for registration changes, wrong for a call log. A
//! [`CelStream`] owns its socket instead, so a slow consumer slows the
//! reading (TCP pushes back on Asterisk) and loses nothing. It logs in with
//! `Events: call` and asks Asterisk (`Filter`) to send only `Event: CEL`;
//! an Asterisk that refuses the filter still works, with more traffic.
//!
//! Shapes (captured from Asterisk 22.10.1 by `examples/call_sources.rs`):
//! `Event: CEL`, `EventName` (`CHAN_START`, `ANSWER`, `BRIDGE_ENTER`,
//! `HANGUP`, `CHAN_END`, `LINKEDID_END`, `BLINDTRANSFER`, …), `UniqueID`,
//! `LinkedID`, `Channel`, `CallerIDnum`, `Exten`, `Context`, `EventTime`
//! (local time, whole seconds), `Timestamp` (Unix seconds with
//! microseconds, when manager.conf says `timestampevents = yes`) and
//! `Extra` (JSON: for `HANGUP` `{"hangupcause":16,"hangupsource":
//! "PJSIP/1001-00000008","dialstatus":"ANSWER"}`).

use super::ami::{AmiError, Framer, Message};
use chrono::{DateTime, TimeZone, Utc};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One CEL event, as the call logger uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct CelEvent {
    pub name: String,
    pub uniqueid: String,
    pub linkedid: String,
    pub channel: String,
    pub caller_number: String,
    pub exten: String,
    pub context: String,
    pub at: DateTime<Utc>,
    /// `Extra`, parsed (`Null` when empty or not JSON).
    pub extra: serde_json::Value,
}

impl CelEvent {
    /// Reads a CEL event from an AMI message; `Ok(None)` for any other
    /// event. Errors name what is missing (never the whole message).
    pub fn from_message(m: &Message) -> Result<Option<CelEvent>, String> {
        if m.get("Event") != Some("CEL") {
            return Ok(None);
        }
        let field = |k: &str| m.get(k).unwrap_or("").to_string();
        let name = field("EventName");
        let uniqueid = field("UniqueID");
        let linkedid = field("LinkedID");
        if name.is_empty() || uniqueid.is_empty() || linkedid.is_empty() {
            return Err(format!(
                "a CEL event without {}",
                if name.is_empty() {
                    "EventName"
                } else if uniqueid.is_empty() {
                    "UniqueID"
                } else {
                    "LinkedID"
                }
            ));
        }
        let at = m
            .get("Timestamp")
            .and_then(parse_unix)
            .or_else(|| m.get("EventTime").and_then(parse_local))
            .unwrap_or_else(Utc::now);
        let extra = m
            .get("Extra")
            .filter(|e| !e.is_empty())
            .and_then(|e| serde_json::from_str(e).ok())
            .unwrap_or(serde_json::Value::Null);
        Ok(Some(CelEvent {
            name,
            uniqueid,
            linkedid,
            channel: field("Channel"),
            caller_number: field("CallerIDnum"),
            exten: field("Exten"),
            context: field("Context"),
            at,
            extra,
        }))
    }

    /// A string field of `Extra`.
    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(|v| v.as_str())
    }

    /// An integer field of `Extra` (Asterisk writes the cause as a number).
    pub fn extra_i64(&self, key: &str) -> Option<i64> {
        let v = self.extra.get(key)?;
        v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    }
}

/// `1796134822.042047` → a time.
fn parse_unix(s: &str) -> Option<DateTime<Utc>> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    let secs: i64 = secs.parse().ok()?;
    let micros: u32 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    Utc.timestamp_opt(secs, micros * 1000).single()
}

/// `2026-12-01 14:20:53` in the daemon's local time (Asterisk writes its
/// own; the daemon runs beside it). Used only without `timestampevents`.
fn parse_local(s: &str) -> Option<DateTime<Utc>> {
    let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok()?;
    chrono::Local.from_local_datetime(&naive).earliest().map(|t| t.with_timezone(&Utc))
}

/// An AMI connection that yields every event Asterisk sends, in order.
pub struct CelStream {
    socket: TcpStream,
    framer: Framer,
    queue: std::collections::VecDeque<Message>,
    buf: Vec<u8>,
}

impl CelStream {
    /// Connects, logs in with call events, and asks for CEL events only.
    pub async fn connect(addr: &str, user: &str, secret: &str, timeout: Duration) -> Result<CelStream, AmiError> {
        let connect = async {
            let socket = TcpStream::connect(addr)
                .await
                .map_err(|e| AmiError::Connect { addr: addr.to_string(), reason: e.to_string() })?;
            let _ = socket.set_nodelay(true);
            let mut s =
                CelStream { socket, framer: Framer::default(), queue: Default::default(), buf: vec![0; 64 * 1024] };
            s.banner(addr).await?;
            let login = Message::action("Login")
                .with("Username", user)
                .with("Secret", secret)
                .with("Events", "call")
                .with("ActionID", "cel-login");
            let answer = s.action(&login, "cel-login").await?;
            if answer.get("Response").is_some_and(|r| r.eq_ignore_ascii_case("Error")) {
                return Err(AmiError::AuthFailed {
                    addr: addr.to_string(),
                    message: answer.get("Message").unwrap_or("").to_string(),
                });
            }
            let filter = Message::action("Filter")
                .with("Operation", "Add")
                .with("Filter", "Event: CEL")
                .with("ActionID", "cel-filter");
            let answer = s.action(&filter, "cel-filter").await?;
            if answer.get("Response").is_some_and(|r| r.eq_ignore_ascii_case("Error")) {
                tracing::info!(
                    message = answer.get("Message").unwrap_or(""),
                    "AMI refused the CEL event filter (the AMI user needs write = system); reading every call event"
                );
            }
            Ok(s)
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| AmiError::Timeout { action: "CEL connect".into(), timeout })?
    }

    async fn banner(&mut self, addr: &str) -> Result<(), AmiError> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < super::ami::MAX_LINE {
            let n = self.socket.read(&mut b).await.map_err(|_| AmiError::Disconnected)?;
            if n == 0 {
                return Err(AmiError::Disconnected);
            }
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
        }
        if !line.starts_with(b"Asterisk Call Manager/") {
            return Err(AmiError::Protocol(format!("no AMI banner from {addr}")));
        }
        Ok(())
    }

    /// Sends an action and reads up to its response (events before it are kept).
    async fn action(&mut self, msg: &Message, id: &str) -> Result<Message, AmiError> {
        self.socket.write_all(msg.to_wire().as_bytes()).await.map_err(|_| AmiError::Disconnected)?;
        let mut held = Vec::new();
        loop {
            let m = self.read_one().await?.ok_or(AmiError::Disconnected)?;
            if m.get("ActionID") == Some(id) && m.get("Response").is_some() {
                // Events that arrived before the answer stay in order.
                for e in held.into_iter().rev() {
                    self.queue.push_front(e);
                }
                return Ok(m);
            }
            held.push(m);
        }
    }

    async fn read_one(&mut self) -> Result<Option<Message>, AmiError> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Ok(Some(m));
            }
            let n = self.socket.read(&mut self.buf).await.map_err(|_| AmiError::Disconnected)?;
            if n == 0 {
                return Ok(None);
            }
            let mut out = Vec::new();
            let r = self.framer.feed(&self.buf[..n], &mut out);
            self.queue.extend(out);
            r.map_err(|e| AmiError::Protocol(e.to_string()))?;
        }
    }

    /// The next event; `Ok(None)` when Asterisk closed the connection.
    pub async fn next(&mut self) -> Result<Option<Message>, AmiError> {
        loop {
            match self.read_one().await? {
                None => return Ok(None),
                Some(m) if m.get("Event").is_some() => return Ok(Some(m)),
                Some(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(lines: &[(&str, &str)]) -> Message {
        Message { fields: lines.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn a_hangup_as_asterisk_22_sends_it() {
        // From examples/call_sources.rs on Asterisk 22.10.1 (internal call answered, caller hung up).
        let m = msg(&[
            ("Event", "CEL"),
            ("Privilege", "call,all"),
            ("Timestamp", "1796134823.558898"),
            ("EventName", "HANGUP"),
            ("CallerIDnum", "1001"),
            ("Exten", "1002"),
            ("Context", "from-internal"),
            ("Channel", "PJSIP/1001-00000000"),
            ("EventTime", "2026-12-01 14:20:23"),
            ("UniqueID", "sources-32295-0-1796134822.0"),
            ("LinkedID", "sources-32295-0-1796134822.0"),
            ("Extra", r#"{"hangupcause":16,"hangupsource":"PJSIP/1001-00000000","dialstatus":"ANSWER"}"#),
        ]);
        let e = CelEvent::from_message(&m).expect("reads").expect("a CEL event");
        assert_eq!(e.name, "HANGUP");
        assert_eq!(e.extra_i64("hangupcause"), Some(16));
        assert_eq!(e.extra_str("dialstatus"), Some("ANSWER"));
        assert_eq!(e.at.timestamp_micros(), 1_796_134_823_558_898);
        assert_eq!(CelEvent::from_message(&msg(&[("Event", "Newstate")])), Ok(None));
        let bad = CelEvent::from_message(&msg(&[("Event", "CEL"), ("EventName", "ANSWER")])).expect_err("no ids");
        assert!(bad.contains("UniqueID"), "{bad}");
    }

    #[test]
    fn unix_timestamps_keep_their_microseconds() {
        assert_eq!(parse_unix("1.5").map(|t| t.timestamp_micros()), Some(1_500_000));
        assert_eq!(parse_unix("12").map(|t| t.timestamp()), Some(12));
        assert!(parse_unix("x").is_none());
    }
}
