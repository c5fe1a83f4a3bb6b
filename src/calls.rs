//! The call logger: an ARI Stasis application that records every call
//! entering it in the `calls` table, exactly once, and hands the call back
//! to the dialplan at once.
//!
//! Event flow for one call (Asterisk 22, see tests/fixtures/asterisk/ari):
//!
//! 1. `StasisStart` → create the row, subscribe the app to the channel,
//!    `continue` it. Asterisk answers 204 and sends `StasisEnd` at once:
//!    the channel is back in the dialplan.
//! 2. Only because we subscribed do we keep hearing of it: a
//!    `ChannelStateChange` to `Up` sets the answer time, and
//!    `ChannelDestroyed` (with the Q.850 cause) completes the row.
//! 3. A channel that hangs up while still in Stasis sends
//!    `ChannelHangupRequest` then `StasisEnd`: that `StasisEnd` completes
//!    the row (`ChannelDestroyed` may not follow).
//!
//! Exactly once: creating is `ON CONFLICT DO NOTHING`, answer and end only
//! fill what is still empty, and every event carries the whole channel, so
//! an event whose row is missing (out of order, or the `StasisStart` was
//! missed across a restart) creates it from the channel first. Events of one
//! channel are handled in order by one worker (channels are spread over
//! workers by id); different channels proceed in parallel.
//!
//! Never open forever: after every (re)connect the open calls are
//! re-subscribed, and a channel Asterisk no longer has is closed as
//! `unknown`; a sweeper closes calls open longer than `stale_after`.
//!
//! ARI being down never stops anything else: this runs in its own task and
//! reconnects with back-off.

pub mod cel;

use crate::asterisk::ari::{Ari, AriError, Channel, Event, parse_time};
use crate::db::Db;
use crate::db::calls::CallStart;
use chrono::Utc;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How the logger behaves: a setting, owned by `config`.
pub use crate::config::CallLogConfig;

/// Counters, for /metrics and benchmarks.
#[derive(Debug, Default)]
pub struct CallLogStats {
    /// ARI events read from the events socket.
    pub events: AtomicU64,
    /// Events the logger is done with: handled by a worker (recorded, or
    /// failed and counted in `errors`), or skipped (unreadable, or about no
    /// channel). `events - events_handled` is the backlog.
    pub events_handled: AtomicU64,
    pub calls_created: AtomicU64,
    pub calls_completed: AtomicU64,
    pub errors: AtomicU64,
    /// Attempts to open the events socket that failed (ARI down, refused, ...).
    pub connect_failures: AtomicU64,
    pub connected: std::sync::atomic::AtomicBool,
    /// CEL: the most and the total microseconds from an event's time (as
    /// Asterisk stamped it) to the end of its handling, over `events_handled`.
    pub lag_max_micros: AtomicU64,
    pub lag_sum_micros: AtomicU64,
}

/// `outbound`, `internal` or `inbound`: a caller in an internal context
/// dialling a short number (digits only, at most `internal_max_digits`) is
/// internal, dialling anything else outbound; a call from any other
/// context is inbound.
pub fn direction(context: &str, exten: &str, cfg: &CallLogConfig) -> &'static str {
    if cfg.internal_contexts.iter().any(|c| c == context) {
        let short =
            !exten.is_empty() && exten.len() <= cfg.internal_max_digits && exten.bytes().all(|b| b.is_ascii_digit());
        if short { "internal" } else { "outbound" }
    } else {
        "inbound"
    }
}

fn call_start(node: &str, channel: &Channel, cfg: &CallLogConfig) -> CallStart {
    let dir = direction(&channel.dialplan.context, &channel.dialplan.exten, cfg);
    let caller = Some(channel.caller.number.clone()).filter(|s| !s.is_empty());
    let callee = Some(channel.dialplan.exten.clone()).filter(|s| !s.is_empty());
    CallStart {
        node: node.to_string(),
        channel_id: channel.id.clone(),
        // Whose call it is: the calling extension, or the dialled one for an inbound call.
        extension: if dir == "inbound" { callee.clone() } else { caller.clone() },
        caller,
        callee,
        direction: dir.into(),
        start_time: parse_time(&channel.creationtime).unwrap_or_else(Utc::now),
    }
}

/// One worker's memory of the channels it handles.
#[derive(Default)]
struct Worker {
    continued: HashMap<String, std::time::Instant>,
    hangup_cause: HashMap<String, (i64, std::time::Instant)>,
    handled: u64,
}

impl Worker {
    /// Forgets channels older than `max_age`: one whose ChannelDestroyed
    /// never comes (its subscription failed) must not stay in memory forever.
    fn prune(&mut self, max_age: Duration) {
        self.handled += 1;
        if self.handled % 1024 == 0 {
            self.continued.retain(|_, at| at.elapsed() < max_age);
            self.hangup_cause.retain(|_, (_, at)| at.elapsed() < max_age);
        }
    }
}

struct Shared {
    db: Db,
    /// The Asterisk whose ARI this is: its calls are keyed by (node, channel id).
    node: String,
    ari: Ari,
    cfg: CallLogConfig,
    stats: Arc<CallLogStats>,
}

impl Shared {
    /// Creates the row from the channel if it is missing; true if it was.
    async fn ensure_row(&self, channel: &Channel) -> Result<bool, crate::db::DbError> {
        let created = self.db.call_started(&call_start(&self.node, channel, &self.cfg)).await?;
        if created {
            self.stats.calls_created.fetch_add(1, Ordering::Relaxed);
            tracing::info!(channel_id = %channel.id, caller = %channel.caller.number, exten = %channel.dialplan.exten, "call record created");
        }
        Ok(created)
    }

    async fn end(&self, channel: &Channel, at: chrono::DateTime<Utc>, cause: Option<i64>) -> anyhow::Result<()> {
        let mut done = self.db.call_ended(&self.node, &channel.id, at, cause).await?;
        if !done && self.ensure_row(channel).await? {
            done = self.db.call_ended(&self.node, &channel.id, at, cause).await?;
        }
        if done {
            self.stats.calls_completed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(channel_id = %channel.id, cause, "call record completed");
        }
        Ok(())
    }

    async fn handle(&self, w: &mut Worker, event: Event) -> anyhow::Result<()> {
        w.prune(self.cfg.stale_after);
        if !self.cfg.record {
            // CEL logs every call: the app only hands Stasis calls back.
            if let Event::StasisStart { channel, .. } = event {
                match self.ari.continue_channel(&channel.id, &self.cfg.continue_to).await {
                    Ok(()) | Err(AriError::Status { status: 404 | 409, .. }) => {}
                    Err(e) => {
                        tracing::error!(channel_id = %channel.id, error = %e, "cannot hand the channel back to the dialplan");
                        return Err(e.into());
                    }
                }
            }
            return Ok(());
        }
        let at = |ts: &str| parse_time(ts).unwrap_or_else(Utc::now);
        match event {
            Event::StasisStart { channel, .. } => {
                self.ensure_row(&channel).await?;
                if w.continued.contains_key(&channel.id) {
                    return Ok(()); // a duplicate: the call already went on
                }
                if let Err(e) = self.ari.subscribe_channel(&channel.id).await {
                    tracing::warn!(channel_id = %channel.id, error = %e, "cannot subscribe to the channel; its end may be recorded late");
                }
                match self.ari.continue_channel(&channel.id, &self.cfg.continue_to).await {
                    Ok(()) | Err(AriError::Status { status: 404 | 409, .. }) => {
                        w.continued.insert(channel.id.clone(), std::time::Instant::now());
                    }
                    Err(e) => {
                        tracing::error!(channel_id = %channel.id, error = %e, "cannot hand the channel back to the dialplan");
                        return Err(e.into());
                    }
                }
            }
            Event::ChannelStateChange { timestamp, channel } if channel.state == "Up" => {
                let t = at(&timestamp);
                if !self.db.call_answered(&self.node, &channel.id, t).await? && self.ensure_row(&channel).await? {
                    self.db.call_answered(&self.node, &channel.id, t).await?;
                }
            }
            Event::ChannelStateChange { .. } | Event::Other { .. } => {}
            Event::ChannelHangupRequest { cause, channel, .. } => {
                if let Some(c) = cause {
                    w.hangup_cause.insert(channel.id, (c, std::time::Instant::now()));
                }
            }
            Event::StasisEnd { timestamp, channel } => {
                // Leaving Stasis because we continued it is not the end of the call.
                if let Some((cause, _)) = w.hangup_cause.get(&channel.id).copied() {
                    self.end(&channel, at(&timestamp), Some(cause)).await?;
                }
            }
            Event::ChannelDestroyed { timestamp, cause, channel, .. } => {
                w.hangup_cause.remove(&channel.id);
                w.continued.remove(&channel.id);
                self.end(&channel, at(&timestamp), cause).await?;
            }
        }
        Ok(())
    }
}

/// How the call loggers retry a lost event stream (ARI's, or CEL over AMI).
pub(crate) const EVENTS_BACKOFF: crate::reconcile::BackoffConfig =
    crate::reconcile::BackoffConfig::new(Duration::from_millis(200), Duration::from_secs(30));

pub(crate) fn worker_of(channel_id: &str, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    channel_id.hash(&mut h);
    (h.finish() % n.max(1) as u64) as usize
}

/// Subscribes to every open call again; a channel Asterisk no longer has
/// ended while we were not listening: closed as `unknown`.
async fn resync(shared: &Shared) {
    if !shared.cfg.record {
        return;
    }
    let since = Utc::now() - chrono::Duration::from_std(shared.cfg.stale_after).unwrap_or(chrono::Duration::hours(4));
    let open = match shared.db.open_calls(&shared.node, since).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list open calls after connecting to ARI");
            return;
        }
    };
    for id in open {
        match shared.ari.subscribe_channel(&id).await {
            Ok(()) => {}
            Err(AriError::Status { status: 404 | 422, .. }) => {
                match shared.db.close_call_unknown(&shared.node, &id, Utc::now()).await {
                    Ok(true) => {
                        tracing::warn!(channel_id = %id, "call ended while ARI was not connected; closed as unknown")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(channel_id = %id, error = %e, "cannot close a call"),
                }
            }
            Err(e) => {
                tracing::warn!(channel_id = %id, error = %e, "cannot re-subscribe to an open call");
                return;
            }
        }
    }
}

/// Closes, as `unknown`, calls open longer than `stale_after` (their end
/// was never seen), checking every quarter of it, until `stop` turns true.
/// Both loggers run one.
pub(crate) fn spawn_stale_sweeper(
    db: Db,
    node: String,
    stale_after: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = (stale_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(every) => {}
            }
            let cutoff = Utc::now() - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::hours(4));
            match db.close_stale_calls(&node, cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(node = %node, calls = n, "calls open too long closed as unknown"),
                Err(e) => tracing::warn!(error = %e, "cannot close stale calls"),
            }
        }
    })
}

/// Runs the logger on `node`'s ARI until `stop` turns true.
pub async fn run(
    db: Db,
    node: &str,
    ari: Ari,
    cfg: CallLogConfig,
    stats: Arc<CallLogStats>,
    stop: watch::Receiver<bool>,
) {
    let workers = cfg.workers.max(1);
    let shared = Arc::new(Shared { db, node: node.to_string(), ari, cfg, stats });
    let mut senders = Vec::with_capacity(workers);
    let mut tasks = Vec::with_capacity(workers + 1);
    for _ in 0..workers {
        let (tx, mut rx) = mpsc::channel::<Event>(4096);
        senders.push(tx);
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = Worker::default();
            while let Some(ev) = rx.recv().await {
                if let Err(e) = shared.handle(&mut w, ev).await {
                    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "call event not recorded");
                }
                shared.stats.events_handled.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The sweeper: never open forever (the CEL logger has its own).
    if shared.cfg.record {
        tasks.push(spawn_stale_sweeper(shared.db.clone(), shared.node.clone(), shared.cfg.stale_after, stop.clone()));
    }

    let feed = AriFeed(shared.clone());
    pump(&feed, &shared.stats, senders, tasks, stop).await;
}

/// The Stasis app's events socket, as [`pump`] reads it.
struct AriFeed(Arc<Shared>);

impl Feed for AriFeed {
    type Conn = crate::asterisk::ari::AriEvents;
    type Item = Event;

    async fn connect(&self) -> Result<Self::Conn, String> {
        self.0.ari.events().await.map_err(|e| e.to_string())
    }

    fn unavailable(&self, error: &str, retry_in: Duration) {
        tracing::warn!(error = %error, retry_in_ms = retry_in.as_millis() as u64, app = self.0.ari.app(), "ARI events unavailable; calls are not being logged");
    }

    fn connected(&self, _senders: &[mpsc::Sender<Event>]) {
        tracing::info!(app = self.0.ari.app(), "ARI events connected; logging calls");
        let shared = self.0.clone();
        tokio::spawn(async move { resync(&shared).await });
    }

    async fn next(&self, events: &mut Self::Conn) -> Read<Event> {
        let stats = &self.0.stats;
        match events.next_text().await {
            None => {
                tracing::warn!("ARI events socket closed; reconnecting");
                Read::Ended
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "ARI events socket failed; reconnecting");
                Read::Ended
            }
            Some(Ok(text)) => {
                stats.events.fetch_add(1, Ordering::Relaxed);
                match Event::parse(&text) {
                    Ok(ev) => match ev.channel() {
                        Some(ch) => Read::Item(ch.id.clone(), ev),
                        None => {
                            stats.events_handled.fetch_add(1, Ordering::Relaxed);
                            Read::Skip
                        }
                    },
                    Err(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        stats.events_handled.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "unreadable ARI event skipped");
                        Read::Skip
                    }
                }
            }
        }
    }
}

/// What a call logger's event source gives [`pump`] next.
pub(crate) enum Read<T> {
    /// An item for the worker of this key (a channel id, a linkedid).
    Item(String, T),
    /// Nothing to hand on (counted and logged by the source).
    Skip,
    /// The connection ended (logged by the source): connect again.
    Ended,
}

/// An event source of a call logger: the ARI events socket (the Stasis
/// app) or CEL over AMI. Each names itself in its log lines.
pub(crate) trait Feed {
    type Conn: Send;
    type Item: Send + 'static;
    fn connect(&self) -> impl Future<Output = Result<Self::Conn, String>> + Send;
    /// Logs a failed connect; the next try is in `retry_in`.
    fn unavailable(&self, error: &str, retry_in: Duration);
    /// Called after each connect: logs it and starts the resync, which
    /// may queue to the workers through `senders`.
    fn connected(&self, senders: &[mpsc::Sender<Self::Item>]);
    fn next(&self, conn: &mut Self::Conn) -> impl Future<Output = Read<Self::Item>> + Send;
}

/// The loop both loggers share: connects to `feed` (again after a failure,
/// with a back-off from 200 ms doubling to 30 s), hands each item to its
/// key's worker (so one channel's or one call's events stay in order)
/// until `stop` turns true, then closes the workers' queues and waits for
/// `tasks` (the workers and the sweeper).
pub(crate) async fn pump<F: Feed>(
    feed: &F,
    stats: &CallLogStats,
    senders: Vec<mpsc::Sender<F::Item>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    mut stop: watch::Receiver<bool>,
) {
    let workers = senders.len().max(1);
    let mut backoff = crate::reconcile::Backoff::new(EVENTS_BACKOFF);
    'connect: loop {
        if *stop.borrow() {
            break;
        }
        let connected = tokio::select! {
            _ = stop.wait_for(|s| *s) => break 'connect,
            r = feed.connect() => r,
        };
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.fail();
                feed.unavailable(&e, delay);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break 'connect,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        backoff.reset();
        stats.connected.store(true, Ordering::Relaxed);
        feed.connected(&senders);
        loop {
            let next = tokio::select! {
                _ = stop.wait_for(|s| *s) => break 'connect,
                n = feed.next(&mut conn) => n,
            };
            match next {
                Read::Item(key, item) => {
                    if senders[worker_of(&key, workers)].send(item).await.is_err() {
                        break 'connect;
                    }
                }
                Read::Skip => {}
                Read::Ended => break,
            }
        }
        stats.connected.store(false, Ordering::Relaxed);
    }
    stats.connected.store(false, Ordering::Relaxed);
    drop(senders);
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_follows_context_and_number() {
        let cfg = CallLogConfig::default();
        assert_eq!(direction("from-internal", "998901234567", &cfg), "outbound");
        assert_eq!(direction("from-internal", "1002", &cfg), "internal");
        assert_eq!(direction("from-internal", "*97", &cfg), "outbound");
        assert_eq!(direction("from-trunk", "1002", &cfg), "inbound");
    }

    #[test]
    fn a_worker_forgets_channels_that_never_ended() {
        let mut w = Worker::default();
        let old = std::time::Instant::now().checked_sub(Duration::from_secs(60)).expect("an older instant");
        w.continued.insert("old.1".into(), old);
        w.continued.insert("new.1".into(), std::time::Instant::now());
        w.hangup_cause.insert("old.1".into(), (16, old));
        for _ in 0..1024 {
            w.prune(Duration::from_secs(30));
        }
        assert_eq!(w.continued.keys().collect::<Vec<_>>(), ["new.1"]);
        assert!(w.hangup_cause.is_empty());
    }

    #[test]
    fn channels_stay_on_one_worker() {
        let a = worker_of("1795478551.0", 8);
        assert_eq!(a, worker_of("1795478551.0", 8));
        assert!(a < 8);
        assert_eq!(worker_of("x", 0), 0);
    }
}
