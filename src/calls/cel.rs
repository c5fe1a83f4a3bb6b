//! The call log from CEL: every call Asterisk carries, whatever its path
//! (internal, outbound, inbound, transferred, through Stasis or not), one
//! `calls` row per call (Asterisk's linkedid) and one `call_legs` row per
//! channel of it. Why CEL over AMI and not ARI's `subscribeAll`: see
//! ARCHITECTURE.md ("The call log's event source").
//!
//! Per event (`asterisk::cel::CelEvent`):
//!
//! - `CHAN_START`: a leg; the call's first channel (uniqueid = linkedid)
//!   also creates the call's row (caller, dialled number, direction);
//! - `ANSWER`: the leg's answer; a leg other than the caller's answers the
//!   call (the first one: `answered_by`);
//! - `HANGUP`: the leg's Q.850 cause, who hung up (`hangupsource`), its
//!   Dial status;
//! - `CHAN_END`: the leg's end;
//! - `BLINDTRANSFER` / `ATTENDEDTRANSFER`: the transferring leg; legs that
//!   start later are the call's `transfer` legs, and so are, for an
//!   attended transfer, the consulted target's legs that are still up;
//! - `PICKUP`: the picker's channel (its own call so far, dialling `*8`)
//!   joins the picked-up call as its `pickup` leg, answering it; the
//!   picker's own row goes (one call, answered by the one who picked up).
//!   Handled by the worker of the picker's call, so after its start and
//!   before its end; a call already completed is completed again;
//! - `LINKEDID_END`: the last channel of the call is gone: the row is
//!   completed from its legs (`db::calls::outcome`).
//!
//! Exactly once: every write is keyed (the call by linkedid, a leg by
//! uniqueid) and only fills what is still empty, so a replayed or
//! duplicated event changes nothing. Events of one call are handled in
//! order by one worker (calls are spread over workers by linkedid). A
//! worker writes what queued up for it (up to [`BATCH`] items) in one
//! transaction (`db::calls::CelBatch`), in order; a batch that fails is
//! rolled back and its items written one by one.
//!
//! While the logger is not connected (AMI down, the daemon restarting)
//! Asterisk's events are lost, so after every connect it lists the live
//! channels (`CoreShowChannels`) and brings each call up to date through
//! the call's own worker: a call that started meanwhile gets its row and
//! legs, a leg that is up (answered meanwhile) gets an answer time (the
//! moment it was seen up: no earlier one is known), and an open call with
//! no channel left ended meanwhile: completed from what its legs say, or
//! `unknown` when they do not say it was answered. Its end events, when
//! they do arrive, replace `unknown`.

use super::{CallLogConfig, CallLogStats, Feed, Read, direction, worker_of};
use crate::asterisk::ami::{AmiClient, AmiConfig, Message};
use crate::asterisk::cel::{CelEvent, CelStream};
use crate::db::Db;
use crate::db::calls::{CallStart, CelBatch, LegStart, extension_of_channel};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What a worker is handed.
enum Item {
    Event(CelEvent),
    /// A live channel seen after a (re)connect.
    Live(LiveChannel),
    /// An open call with no live channel after a (re)connect.
    Gone {
        linkedid: String,
        at: DateTime<Utc>,
    },
}

/// One channel of `CoreShowChannels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveChannel {
    pub uniqueid: String,
    pub linkedid: String,
    pub channel: String,
    pub caller_number: String,
    pub exten: String,
    pub context: String,
    /// Up (answered).
    pub up: bool,
    pub start_time: DateTime<Utc>,
}

impl LiveChannel {
    /// From a `CoreShowChannel` event (`Duration: HH:MM:SS` since it was created).
    pub fn from_message(m: &Message, now: DateTime<Utc>) -> Option<LiveChannel> {
        let uniqueid = m.get("Uniqueid").filter(|s| !s.is_empty())?.to_string();
        let linkedid = m.get("Linkedid").filter(|s| !s.is_empty()).unwrap_or(&uniqueid).to_string();
        let secs = m
            .get("Duration")
            .and_then(|d| {
                let p: Vec<i64> = d.split(':').filter_map(|x| x.parse().ok()).collect();
                (p.len() == 3).then(|| p[0] * 3600 + p[1] * 60 + p[2])
            })
            .unwrap_or(0);
        Some(LiveChannel {
            uniqueid,
            linkedid,
            channel: m.get("Channel").unwrap_or("").to_string(),
            caller_number: m.get("CallerIDNum").unwrap_or("").to_string(),
            exten: m.get("Exten").unwrap_or("").to_string(),
            context: m.get("Context").unwrap_or("").to_string(),
            up: m.get("ChannelState") == Some("6") || m.get("ChannelStateDesc") == Some("Up"),
            start_time: now - chrono::Duration::seconds(secs),
        })
    }
}

fn blank(s: &str) -> Option<String> {
    Some(s.to_string()).filter(|s| !s.is_empty() && s != "<unknown>")
}

/// A leg as an event or a listing describes it.
struct LegSeen<'a> {
    linkedid: &'a str,
    uniqueid: &'a str,
    channel: &'a str,
    caller: &'a str,
    exten: &'a str,
    context: &'a str,
    at: DateTime<Utc>,
}

/// One transaction's writes, and what it did (counted once it commits).
struct Batch {
    db: CelBatch,
    created: u64,
    completed: u64,
}

impl std::ops::Deref for Batch {
    type Target = CelBatch;
    fn deref(&self) -> &CelBatch {
        &self.db
    }
}

impl std::ops::DerefMut for Batch {
    fn deref_mut(&mut self) -> &mut CelBatch {
        &mut self.db
    }
}

/// At most this many queued items go into one transaction.
const BATCH: usize = 256;

struct Shared {
    db: Db,
    /// The Asterisk whose CEL this logger reads: its calls are keyed by
    /// (node, linkedid), as linkedids repeat across servers.
    node: String,
    cfg: CallLogConfig,
    stats: Arc<CallLogStats>,
}

impl Shared {
    /// Writes a worker's queued items in one transaction, in order; when
    /// that fails, each on its own, so one bad event loses only itself.
    async fn write(&self, items: &[Item]) {
        let Err(e) = self.write_batch(items).await else { return };
        if items.len() > 1 {
            tracing::warn!(error = %e, events = items.len(), "a batch of call events failed; writing them one by one");
            for item in items {
                if let Err(e) = self.write_batch(std::slice::from_ref(item)).await {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "call event not recorded");
                }
            }
        } else {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "call event not recorded");
        }
    }

    async fn write_batch(&self, items: &[Item]) -> Result<(), crate::db::DbError> {
        let mut b = Batch { db: self.db.cel_batch(&self.node).await?, created: 0, completed: 0 };
        for item in items {
            self.handle(&mut b, item).await?;
        }
        let (created, completed) = (b.created, b.completed);
        b.db.commit().await?;
        self.stats.calls_created.fetch_add(created, Ordering::Relaxed);
        self.stats.calls_completed.fetch_add(completed, Ordering::Relaxed);
        Ok(())
    }

    async fn start_leg(&self, b: &mut Batch, l: LegSeen<'_>) -> Result<(), crate::db::DbError> {
        let first = l.uniqueid == l.linkedid;
        // A Local channel pair is plumbing (an attended transfer's
        // consultation, a Dial through the dialplan), not a party: the
        // channel it dials is the leg. Only a call that starts with one
        // records it (its caller).
        if !first && l.channel.starts_with("Local/") {
            return Ok(());
        }
        if first {
            let dir = direction(l.context, l.exten, &self.cfg);
            let caller = blank(l.caller);
            let callee = blank(l.exten);
            // An inbound call's callee is the extension it rings (its first
            // callee leg, below); the number dialled stays on the caller's leg.
            let inbound = dir == "inbound";
            let c = CallStart {
                node: self.node.clone(),
                channel_id: l.linkedid.to_string(),
                extension: if inbound { None } else { caller.clone() },
                caller,
                callee: if inbound { None } else { callee },
                direction: dir.into(),
                start_time: l.at,
            };
            if b.cel_call_started(&c).await? {
                b.created += 1;
                tracing::info!(node = %self.node, linkedid = l.linkedid, caller = l.caller, exten = l.exten, "call record created");
            }
        }
        let role = if first {
            "caller"
        } else if b.call_was_transferred(l.linkedid).await? {
            "transfer"
        } else {
            "callee"
        };
        let extension = extension_of_channel(l.channel);
        if role == "callee"
            && let Some(ext) = &extension
        {
            b.inbound_call_rings(l.linkedid, ext).await?;
        }
        b.leg_started(&LegStart {
            linkedid: l.linkedid.to_string(),
            uniqueid: l.uniqueid.to_string(),
            channel: l.channel.to_string(),
            extension,
            role: role.into(),
            caller: blank(l.caller),
            dialled: blank(l.exten).filter(|e| e != "s"),
            start_time: l.at,
        })
        .await?;
        Ok(())
    }

    async fn handle(&self, b: &mut Batch, item: &Item) -> Result<(), crate::db::DbError> {
        match item {
            Item::Event(e) => self.event(b, e).await,
            Item::Live(c) => {
                self.start_leg(
                    b,
                    LegSeen {
                        linkedid: &c.linkedid,
                        uniqueid: &c.uniqueid,
                        channel: &c.channel,
                        caller: &c.caller_number,
                        exten: &c.exten,
                        context: &c.context,
                        at: c.start_time,
                    },
                )
                .await?;
                if c.up {
                    b.leg_answered(&c.linkedid, &c.uniqueid, Utc::now()).await?;
                }
                Ok(())
            }
            Item::Gone { linkedid, at } => {
                let (linkedid, at) = (linkedid.as_str(), *at);
                let legs = b.legs(linkedid).await?;
                let o = crate::db::calls::outcome(linkedid, &legs);
                if o.answered {
                    if b.cel_call_ended(linkedid, at).await? {
                        b.completed += 1;
                    }
                } else if b.close_call_unknown(linkedid, at).await? {
                    tracing::warn!(node = %self.node, linkedid = %linkedid, "call ended while the logger was not connected; closed as unknown");
                }
                Ok(())
            }
        }
    }

    async fn event(&self, b: &mut Batch, e: &CelEvent) -> Result<(), crate::db::DbError> {
        match e.name.as_str() {
            "CHAN_START" => {
                self.start_leg(
                    b,
                    LegSeen {
                        linkedid: &e.linkedid,
                        uniqueid: &e.uniqueid,
                        channel: &e.channel,
                        caller: &e.caller_number,
                        exten: &e.exten,
                        context: &e.context,
                        at: e.at,
                    },
                )
                .await?
            }
            "ANSWER" => b.leg_answered(&e.linkedid, &e.uniqueid, e.at).await?,
            "HANGUP" => {
                let source = e.extra_str("hangupsource").filter(|s| !s.is_empty());
                let dial = e.extra_str("dialstatus").filter(|s| !s.is_empty());
                b.leg_hung_up(&e.uniqueid, e.extra_i64("hangupcause"), source, dial).await?
            }
            "CHAN_END" => b.leg_ended(&e.uniqueid, e.at).await?,
            "BLINDTRANSFER" => b.leg_transferred(&e.uniqueid, e.at, e.extra_str("extension")).await?,
            "ATTENDEDTRANSFER" => {
                // The transferer consulted the target first: the target's
                // legs started before this event, as callees; they are the
                // call's transfer legs. The target is named by its channel
                // (a Local channel for the DTMF feature, the phone's own
                // for a REFER with Replaces).
                // Asterisk 22 may say `N/A` for it (the target already
                // moved): then the consulted leg names it.
                let consulted = b.consulted_legs_are_transfers(&e.linkedid, &e.uniqueid).await?;
                let to = e
                    .extra_str("transfer_target_channel_name")
                    .filter(|n| n.contains('/') && *n != "N/A")
                    .and_then(extension_of_channel)
                    .or(consulted);
                b.leg_transferred(&e.uniqueid, e.at, to.as_deref()).await?
            }
            "PICKUP" => {
                let (Some(picker), Some(name)) =
                    (e.extra_str("pickup_channel_uniqueid"), e.extra_str("pickup_channel"))
                else {
                    return Ok(());
                };
                let leg = LegStart {
                    linkedid: e.linkedid.clone(),
                    uniqueid: picker.to_string(),
                    channel: name.to_string(),
                    extension: extension_of_channel(name),
                    role: "pickup".into(),
                    caller: None,
                    dialled: None,
                    start_time: e.at,
                };
                if b.leg_picked_up(&leg).await? {
                    tracing::debug!(linkedid = %e.linkedid, "a pickup merged the picker's call into this one");
                }
            }
            "LINKEDID_END" if b.cel_call_ended(&e.linkedid, e.at).await? => {
                b.completed += 1;
                tracing::debug!(linkedid = %e.linkedid, "call record completed");
            }
            _ => {}
        }
        Ok(())
    }
}

/// Lists the live channels and queues each to its call's worker, then the
/// open calls none of them belongs to.
async fn resync(ami: AmiConfig, shared: Arc<Shared>, senders: Vec<mpsc::Sender<Item>>) {
    let listed_at = Utc::now();
    let client = match AmiClient::connect(ami).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list live channels after connecting for CEL");
            return;
        }
    };
    let channels = match client.request_list(Message::action("CoreShowChannels")).await {
        Ok((_, items)) => items,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list live channels after connecting for CEL");
            client.logoff().await;
            return;
        }
    };
    client.logoff().await;
    let mut live: Vec<LiveChannel> = channels
        .iter()
        .filter(|m| m.get("Event") == Some("CoreShowChannel"))
        .filter_map(|m| LiveChannel::from_message(m, listed_at))
        .collect();
    let ids: HashSet<String> = live.iter().map(|c| c.linkedid.clone()).collect();
    // The first channel of each call first: it creates the row.
    live.sort_by_key(|c| (c.uniqueid != c.linkedid, c.start_time));
    for c in live {
        let i = worker_of(&c.linkedid, senders.len());
        if senders[i].send(Item::Live(c)).await.is_err() {
            return;
        }
    }
    let open = match shared.db.open_cel_calls(&shared.node).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list open calls after connecting for CEL");
            return;
        }
    };
    for linkedid in open.into_iter().filter(|l| !ids.contains(l)) {
        // Only calls that started before the listing: a newer one is simply not listed yet.
        let started =
            shared.db.legs(Some(&shared.node), &linkedid).await.ok().and_then(|l| l.iter().map(|l| l.start_time).min());
        if started.is_some_and(|s| s >= listed_at) {
            continue;
        }
        let i = worker_of(&linkedid, senders.len());
        if senders[i].send(Item::Gone { linkedid, at: listed_at }).await.is_err() {
            return;
        }
    }
}

/// Runs the CEL call logger of `node` (its AMI) until `stop` turns true.
pub async fn run(
    db: Db,
    node: &str,
    ami: AmiConfig,
    cfg: CallLogConfig,
    stats: Arc<CallLogStats>,
    stop: watch::Receiver<bool>,
) {
    let workers = cfg.workers.max(1);
    let shared = Arc::new(Shared { db, node: node.to_string(), cfg, stats });
    let mut senders = Vec::with_capacity(workers);
    let mut tasks = Vec::with_capacity(workers + 1);
    for _ in 0..workers {
        let (tx, mut rx) = mpsc::channel::<Item>(4096);
        senders.push(tx);
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut items = Vec::with_capacity(BATCH);
            while let Some(item) = rx.recv().await {
                // What queued meanwhile goes into the same transaction.
                items.push(item);
                while items.len() < BATCH {
                    match rx.try_recv() {
                        Ok(item) => items.push(item),
                        Err(_) => break,
                    }
                }
                shared.write(&items).await;
                let now = Utc::now();
                for item in items.drain(..) {
                    if let Item::Event(e) = item {
                        let lag = (now - e.at).num_microseconds().unwrap_or(0).max(0) as u64;
                        shared.stats.lag_max_micros.fetch_max(lag, Ordering::Relaxed);
                        shared.stats.lag_sum_micros.fetch_add(lag, Ordering::Relaxed);
                        shared.stats.events_handled.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // The sweeper: never open forever.
    tasks.push(super::spawn_stale_sweeper(
        shared.db.clone(),
        shared.node.clone(),
        shared.cfg.stale_after,
        stop.clone(),
    ));

    let feed = CelFeed { ami, shared: shared.clone() };
    super::pump(&feed, &shared.stats, senders, tasks, stop).await;
}

/// CEL over its own AMI connection, as [`super::pump`] reads it.
struct CelFeed {
    ami: AmiConfig,
    shared: Arc<Shared>,
}

impl Feed for CelFeed {
    type Conn = CelStream;
    type Item = Item;

    async fn connect(&self) -> Result<CelStream, String> {
        let ami = &self.ami;
        CelStream::connect(&ami.addr, &ami.user, &ami.secret, ami.timeout).await.map_err(|e| e.to_string())
    }

    fn unavailable(&self, error: &str, retry_in: Duration) {
        tracing::warn!(node = %self.shared.node, error = %error, retry_in_ms = retry_in.as_millis() as u64, "AMI unavailable for CEL; calls are not being logged");
    }

    fn connected(&self, senders: &[mpsc::Sender<Item>]) {
        tracing::info!(node = %self.shared.node, addr = %self.ami.addr, "CEL events connected; logging every call");
        tokio::spawn(resync(AmiConfig { events: false, ..self.ami.clone() }, self.shared.clone(), senders.to_vec()));
    }

    async fn next(&self, stream: &mut CelStream) -> Read<Item> {
        match stream.next().await {
            Ok(None) => {
                tracing::warn!("the CEL connection was closed; reconnecting");
                Read::Ended
            }
            Err(e) => {
                tracing::warn!(error = %e, "the CEL connection failed; reconnecting");
                Read::Ended
            }
            Ok(Some(m)) => match CelEvent::from_message(&m) {
                Ok(None) => Read::Skip,
                Ok(Some(ev)) => {
                    self.shared.stats.events.fetch_add(1, Ordering::Relaxed);
                    // A pickup moves the picker's channel out of its own call
                    // (its linkedid, its first channel's uniqueid) into the
                    // picked-up one: handled by the picker's call's worker,
                    // after that call's start and before its end.
                    let key = match (ev.name.as_str(), ev.extra_str("pickup_channel_uniqueid")) {
                        ("PICKUP", Some(picker)) if !picker.is_empty() => picker.to_string(),
                        _ => ev.linkedid.clone(),
                    };
                    Read::Item(key, Item::Event(ev))
                }
                Err(e) => {
                    self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "unreadable CEL event skipped");
                    Read::Skip
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_channel_as_core_show_channels_lists_it() {
        let m = Message {
            fields: [
                ("Event", "CoreShowChannel"),
                ("Channel", "PJSIP/1002-00000009"),
                ("ChannelState", "6"),
                ("ChannelStateDesc", "Up"),
                ("CallerIDNum", "1002"),
                ("Exten", "1002"),
                ("Context", "from-internal"),
                ("Uniqueid", "x-1.9"),
                ("Linkedid", "x-1.8"),
                ("Duration", "00:01:05"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let now = Utc::now();
        let c = LiveChannel::from_message(&m, now).expect("a channel");
        assert!(c.up);
        assert_eq!((c.linkedid.as_str(), c.uniqueid.as_str()), ("x-1.8", "x-1.9"));
        assert_eq!((now - c.start_time).num_seconds(), 65);
    }
}
