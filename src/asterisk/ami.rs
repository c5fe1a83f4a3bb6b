//! An AMI (Asterisk Manager Interface) client over tokio TCP.
//!
//! The wire format, as captured from Asterisk 22 (tests/fixtures/asterisk):
//! a banner line `Asterisk Call Manager/11.0.0`, then messages of
//! `Key: Value` lines ending in CRLF, each message ended by an empty line.
//! Responses carry the request's `ActionID`; list actions answer
//! `EventList: start`, then one event per item with the same ActionID, then
//! a `…Complete` event with `EventList: Complete`. Unsolicited events (no
//! ActionID) may arrive between any of these.
//!
//! Architecture invariant: raw AMI traffic is never logged — AMI sends SIP
//! passwords in plain text (`AuthDetail`). `Message`'s `Debug` redacts
//! every secret-bearing key.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, broadcast, mpsc, oneshot};

/// Keys whose values are never shown (AuthDetail, Login).
const SECRET_KEYS: &[&str] = &["password", "md5cred", "secret", "passworddigest", "oauthsecret", "refreshtoken", "val"];

/// One AMI message: its `Key: Value` lines, in order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub fields: Vec<(String, String)>,
}

impl Message {
    /// The first value of `key` (case-insensitive, as Asterisk reads keys).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    /// The message as bytes on the wire.
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            out.push_str(k);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out
    }

    pub fn action(name: &str) -> Self {
        Message { fields: vec![("Action".into(), name.into())] }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.fields.push((key.into(), value.into()));
        self
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.fields {
            if SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()) && !v.is_empty() {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

/// Why bytes from AMI are not a message. The offending line is never kept
/// (it may hold a secret): only its length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a `Key: Value` line ({0} bytes)")]
    NotKeyValue(usize),
    #[error("a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("a message of more than {MAX_LINES} lines")]
    TooManyLines,
    #[error("a message of more than {MAX_MESSAGE} bytes")]
    MessageTooLarge,
}

/// Parses one message's lines. `Err` with the offending line's length
/// when a line is not `Key: Value`.
pub fn parse_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Message, FrameError> {
    let mut m = Message::default();
    for line in lines {
        let line = line.trim_end_matches(['\r', '\n']);
        match line.split_once(':') {
            Some((k, v)) if !k.is_empty() && !k.contains(' ') => {
                m.fields.push((k.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()));
            }
            _ => return Err(FrameError::NotKeyValue(line.len())),
        }
    }
    Ok(m)
}

/// Splits a whole captured session into its banner and messages.
pub fn parse_session(bytes: &str) -> Result<(String, Vec<Message>), FrameError> {
    let mut parts = bytes.splitn(2, "\r\n");
    let banner = parts.next().unwrap_or("").to_string();
    let rest = parts.next().unwrap_or("");
    let mut out = Vec::new();
    for block in rest.split("\r\n\r\n") {
        if block.trim().is_empty() {
            continue;
        }
        out.push(parse_lines(block.split("\r\n").filter(|l| !l.is_empty()))?);
    }
    Ok((banner, out))
}

/// The longest line accepted from Asterisk (its longest real ones, a
/// `PJSIPShowEndpoint` field list or an `Output:` line, are a few KiB).
pub const MAX_LINE: usize = 64 * 1024;
/// The most lines one message may have.
pub const MAX_LINES: usize = 10_000;
/// The most bytes one message may have (its lines together).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// The AMI wire framing without I/O: bytes as they arrive from the socket
/// in, whole messages out. Lines end in LF (Asterisk sends CRLF; trailing
/// CRs are dropped), an empty line ends a message. Bytes that are not UTF-8
/// (a caller name in Latin-1) become U+FFFD instead of ending the
/// connection. Bounded: a line longer than [`MAX_LINE`], a message of more
/// than [`MAX_LINES`] lines or [`MAX_MESSAGE`] bytes is a protocol error,
/// so a peer cannot make the client buffer without end. After an error the
/// stream cannot be trusted any more: the caller drops the connection.
#[derive(Debug, Default)]
pub struct Framer {
    line: Vec<u8>,
    lines: Vec<String>,
    bytes: usize,
}

impl Framer {
    /// Feeds bytes read from the socket; pushes every message they
    /// complete onto `out`, in order. Messages completed before an error
    /// are still pushed.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Message>) -> Result<(), FrameError> {
        while !bytes.is_empty() {
            let (chunk, ended) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], true),
                None => (bytes, false),
            };
            bytes = &bytes[(chunk.len() + usize::from(ended))..];
            if self.line.len() + chunk.len() > MAX_LINE {
                return Err(FrameError::LineTooLong);
            }
            self.line.extend_from_slice(chunk);
            if ended {
                self.end_line(out)?;
            }
        }
        Ok(())
    }

    /// Whether a message (or a line) has begun and not ended.
    pub fn is_partial(&self) -> bool {
        !self.line.is_empty() || !self.lines.is_empty()
    }

    fn end_line(&mut self, out: &mut Vec<Message>) -> Result<(), FrameError> {
        let mut line = std::mem::take(&mut self.line);
        while line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            if !self.lines.is_empty() {
                let lines = std::mem::take(&mut self.lines);
                self.bytes = 0;
                out.push(parse_lines(lines.iter().map(String::as_str))?);
            }
            return Ok(());
        }
        if self.lines.len() >= MAX_LINES {
            return Err(FrameError::TooManyLines);
        }
        self.bytes += line.len();
        if self.bytes > MAX_MESSAGE {
            return Err(FrameError::MessageTooLarge);
        }
        self.lines.push(match String::from_utf8(line) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        });
        Ok(())
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AmiError {
    #[error("cannot connect to AMI at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("AMI at {addr} refused the login: {message}")]
    AuthFailed { addr: String, message: String },
    #[error("AMI did not answer {action} within {timeout:?}")]
    Timeout { action: String, timeout: Duration },
    #[error("the AMI connection was closed")]
    Disconnected,
    #[error("AMI protocol error: {0}")]
    Protocol(String),
    /// Logged in, but Asterisk did not say it had finished booting in time.
    #[error(
        "Asterisk at {addr} has not finished booting after {waited:?} (no FullyBooted event; the AMI user needs read = system)"
    )]
    Booting { addr: String, waited: Duration },
    /// Asterisk answered `Response: Error`.
    #[error("{action}: {message}")]
    Rejected { action: String, message: String },
}

/// Connection settings.
#[derive(Clone)]
pub struct AmiConfig {
    pub addr: String,
    pub user: String,
    pub secret: String,
    /// How long any one action may take.
    pub timeout: Duration,
    /// Ask for unsolicited events (registration changes); off by default.
    pub events: bool,
}

impl std::fmt::Debug for AmiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmiConfig")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a pending action is waiting for.
enum Waiter {
    Single(oneshot::Sender<Result<Message, AmiError>>),
    List {
        first: Option<Message>,
        items: Vec<Message>,
        done: oneshot::Sender<Result<(Message, Vec<Message>), AmiError>>,
    },
}

type Pending = Arc<std::sync::Mutex<HashMap<String, Waiter>>>;

/// A logged-in AMI connection. Cheap to share (`Arc`); actions from many
/// tasks are multiplexed by ActionID.
pub struct AmiClient {
    cfg: AmiConfig,
    writer: Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<Message>,
    closed: Arc<std::sync::atomic::AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for AmiClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl AmiClient {
    /// Connects, reads the banner and logs in, all within the configured timeout.
    pub async fn connect(cfg: AmiConfig) -> Result<Arc<AmiClient>, AmiError> {
        Ok(Self::connect_subscribed(cfg).await?.0)
    }

    /// As [`connect`](Self::connect), with a subscription to unsolicited
    /// events taken before the login, so none that follows it (Asterisk's
    /// `FullyBooted` comes right after the login's answer) can be missed.
    pub async fn connect_subscribed(
        cfg: AmiConfig,
    ) -> Result<(Arc<AmiClient>, broadcast::Receiver<Message>), AmiError> {
        let addr = cfg.addr.clone();
        let timeout = cfg.timeout;
        let connect = async {
            let stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| AmiError::Connect { addr: addr.clone(), reason: e.to_string() })?;
            let _ = stream.set_nodelay(true);
            let (read, write) = stream.into_split();
            let mut reader = BufReader::new(read);
            // The banner is one short line; read at most a line's worth.
            let mut banner = Vec::new();
            (&mut reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut banner)
                .await
                .map_err(|e| AmiError::Connect { addr: addr.clone(), reason: e.to_string() })?;
            if !banner.starts_with(b"Asterisk Call Manager/") {
                return Err(AmiError::Protocol("no AMI banner".into()));
            }
            Ok((reader, write))
        };
        let (reader, write) = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| AmiError::Timeout { action: "connect".into(), timeout })??;
        let pending: Pending = Arc::default();
        let (events, first) = broadcast::channel(256);
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = tokio::spawn(read_loop(reader, pending.clone(), events.clone(), closed.clone()));
        let client = Arc::new(AmiClient {
            cfg,
            writer: Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            closed,
            reader,
        });
        let login = Message::action("Login")
            .with("Username", &client.cfg.user)
            .with("Secret", &client.cfg.secret)
            .with("Events", if client.cfg.events { "system,call" } else { "off" });
        match client.request_with_id(login, "login".into()).await {
            Ok(_) => Ok((client, first)),
            Err(AmiError::Rejected { message, .. }) => {
                Err(AmiError::AuthFailed { addr: client.cfg.addr.clone(), message })
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the connection is gone (the reader saw EOF or an error).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Unsolicited events (when logged in with events on).
    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.events.subscribe()
    }

    fn next_action_id(&self) -> String {
        format!("ag-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    async fn write(&self, msg: &Message) -> Result<(), AmiError> {
        let mut w = self.writer.lock().await;
        w.write_all(msg.to_wire().as_bytes()).await.map_err(|_| AmiError::Disconnected)
    }

    fn action_name(msg: &Message) -> String {
        msg.get("Action").unwrap_or("?").to_string()
    }

    async fn request_with_id(&self, msg: Message, id: String) -> Result<Message, AmiError> {
        let action = Self::action_name(&msg);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), Waiter::Single(tx));
        let msg = msg.with("ActionID", &id);
        let timeout = self.cfg.timeout;
        // The action's name and id only: a message may carry a secret (Login).
        tracing::debug!(action = action.as_str(), action_id = id.as_str(), addr = self.cfg.addr.as_str(), "AMI action");
        let result = tokio::time::timeout(timeout, async {
            self.write(&msg).await?;
            rx.await.map_err(|_| AmiError::Disconnected)?
        })
        .await;
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let response = result.map_err(|_| AmiError::Timeout { action: action.clone(), timeout })??;
        if response.get("Response").is_some_and(|r| r.eq_ignore_ascii_case("Error")) {
            return Err(AmiError::Rejected { action, message: response.get("Message").unwrap_or("").to_string() });
        }
        Ok(response)
    }

    /// Sends an action and waits for its single response.
    pub async fn request(&self, msg: Message) -> Result<Message, AmiError> {
        if self.is_closed() {
            return Err(AmiError::Disconnected);
        }
        let id = self.next_action_id();
        self.request_with_id(msg, id).await
    }

    /// Sends a list action; returns the response and the listed events
    /// (without the closing `…Complete` event).
    pub async fn request_list(&self, msg: Message) -> Result<(Message, Vec<Message>), AmiError> {
        if self.is_closed() {
            return Err(AmiError::Disconnected);
        }
        let action = Self::action_name(&msg);
        let id = self.next_action_id();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Waiter::List { first: None, items: Vec::new(), done: tx });
        let msg = msg.with("ActionID", &id);
        let timeout = self.cfg.timeout;
        tracing::debug!(
            action = action.as_str(),
            action_id = id.as_str(),
            addr = self.cfg.addr.as_str(),
            "AMI list action"
        );
        let result = tokio::time::timeout(timeout, async {
            self.write(&msg).await?;
            rx.await.map_err(|_| AmiError::Disconnected)?
        })
        .await;
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let (response, items) = result.map_err(|_| AmiError::Timeout { action: action.clone(), timeout })??;
        tracing::debug!(action = action.as_str(), items = items.len(), "AMI list answered");
        if response.get("Response").is_some_and(|r| r.eq_ignore_ascii_case("Error")) {
            return Err(AmiError::Rejected { action, message: response.get("Message").unwrap_or("").to_string() });
        }
        Ok((response, items))
    }

    /// Logs off politely.
    pub async fn logoff(&self) {
        let _ = self.request(Message::action("Logoff")).await;
    }
}

async fn read_loop(
    mut reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    pending: Pending,
    events: broadcast::Sender<Message>,
    closed: Arc<std::sync::atomic::AtomicBool>,
) {
    let fail_all = |err: AmiError| {
        closed.store(true, Ordering::SeqCst);
        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
        for (_, w) in p.drain() {
            match w {
                Waiter::Single(tx) => {
                    let _ = tx.send(Err(err.clone()));
                }
                Waiter::List { done, .. } => {
                    let _ = done.send(Err(err.clone()));
                }
            }
        }
    };
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut messages = Vec::new();
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                fail_all(AmiError::Disconnected);
                return;
            }
            Ok(n) => n,
        };
        let framed = framer.feed(&buf[..n], &mut messages);
        for msg in messages.drain(..) {
            dispatch(msg, &pending, &events);
        }
        if let Err(e) = framed {
            fail_all(AmiError::Protocol(e.to_string()));
            return;
        }
    }
}

fn dispatch(msg: Message, pending: &Pending, events: &broadcast::Sender<Message>) {
    let Some(id) = msg.get("ActionID").map(str::to_string) else {
        let _ = events.send(msg);
        return;
    };
    let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
    let Some(waiter) = p.remove(&id) else { return };
    match waiter {
        Waiter::Single(tx) => {
            let _ = tx.send(Ok(msg));
        }
        Waiter::List { first: None, items, done } => {
            let is_list = msg.get("EventList").is_some_and(|v| v.eq_ignore_ascii_case("start"));
            if is_list {
                p.insert(id, Waiter::List { first: Some(msg), items, done });
            } else {
                // An error (or a non-list answer): that is the whole reply.
                let _ = done.send(Ok((msg, items)));
            }
        }
        Waiter::List { first: Some(first), mut items, done } => {
            if msg.get("EventList").is_some_and(|v| v.eq_ignore_ascii_case("Complete")) {
                let _ = done.send(Ok((first, items)));
            } else {
                items.push(msg);
                p.insert(id, Waiter::List { first: Some(first), items, done });
            }
        }
    }
}

/// Pings every `every` while the client lives; marks it closed when a ping fails.
pub fn keep_alive(client: &Arc<AmiClient>, every: Duration) -> mpsc::Sender<()> {
    let (stop, mut stopped) = mpsc::channel::<()>(1);
    let weak = Arc::downgrade(client);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stopped.recv() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let Some(c) = weak.upgrade() else { return };
            if c.request(Message::action("Ping")).await.is_err() {
                c.closed.store(true, Ordering::SeqCst);
                return;
            }
        }
    });
    stop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let m = Message::default().with("Username", "1001").with("Password", "Soundz2025").with("Md5Cred", "abc");
        let shown = format!("{m:?}");
        assert!(!shown.contains("Soundz2025") && !shown.contains("abc"), "{shown}");
        assert!(shown.contains("1001"));
    }

    #[test]
    fn lines_parse_with_empty_values_and_colons_in_values() {
        let m = parse_lines(["Contacts: 1001/sip:1001@127.0.0.1:5071,", "SystemName: ", "Empty:"]).expect("parses");
        assert_eq!(m.get("contacts"), Some("1001/sip:1001@127.0.0.1:5071,"));
        assert_eq!(m.get("SystemName"), Some(""));
        assert_eq!(m.get("Empty"), Some(""));
        assert!(parse_lines(["garbage without a colon"]).is_err());
    }

    fn frame(chunks: &[&[u8]]) -> (Vec<Message>, Result<(), FrameError>) {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        for c in chunks {
            if let Err(e) = framer.feed(c, &mut out) {
                return (out, Err(e));
            }
        }
        (out, Ok(()))
    }

    #[test]
    fn framing_does_not_depend_on_where_reads_split() {
        let wire = b"Response: Success\r\nActionID: 1\r\n\r\nEvent: FullyBooted\nStatus: Fully Booted\n\n\r\n";
        let (whole, ok) = frame(&[wire]);
        assert!(ok.is_ok());
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[1].get("status"), Some("Fully Booted"));
        for at in 0..wire.len() {
            let (a, b) = wire.split_at(at);
            assert_eq!(frame(&[a, b]).0, whole, "split at {at}");
        }
    }

    #[test]
    fn a_line_without_end_is_refused_once_it_passes_the_limit_not_buffered() {
        // Before the Framer, the reader grew one String until memory ran out.
        let chunk = vec![b'x'; 8192];
        let mut framer = Framer::default();
        let mut out = Vec::new();
        let mut fed = 0;
        let err = loop {
            match framer.feed(&chunk, &mut out) {
                Ok(()) => fed += chunk.len(),
                Err(e) => break e,
            }
            assert!(fed <= MAX_LINE, "still buffering after {fed} bytes");
        };
        assert!(err.to_string().contains("longer than"), "{err}");
        let many: Vec<u8> = (0..=MAX_LINES).flat_map(|i| format!("K{i}: v\r\n").into_bytes()).collect();
        assert!(frame(&[&many]).1.is_err_and(|e| e.to_string().contains("lines")));
    }

    #[test]
    fn bytes_that_are_not_utf8_do_not_end_the_connection() {
        // A caller name in Latin-1: before, read_line failed and the client saw a disconnect.
        let (out, ok) = frame(&[b"Event: ContactStatus\r\nCallerIDName: J\xfcrgen\r\n\r\n"]);
        assert!(ok.is_ok());
        assert_eq!(out[0].get("CallerIDName"), Some("J\u{fffd}rgen"));
    }
}
