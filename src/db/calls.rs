//! The `calls` table: one row per call. From CEL (every call, keyed by
//! Asterisk's linkedid, with its legs in `call_legs`), or, without CEL, one
//! per call that entered the Stasis app (keyed by its channel id).
//!
//! A call is keyed by (node, linkedid) and a leg by (node, uniqueid): a
//! uniqueid is `<epoch>.<counter>` unless asterisk.conf sets `systemname`,
//! so two Asterisk servers hand out the same ones.
//!
//! Exactly once: the row is created with `ON CONFLICT (node, channel_id) DO
//! NOTHING`, so a duplicated StasisStart (or a replay after a reconnect)
//! never makes a second row; answer and completion only fill what is still
//! empty, so an event arriving twice or late changes nothing twice.

use super::{Db, DbError, on_pool};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

/// A call as StasisStart describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallStart {
    /// The Asterisk it is on (`nodes:`; `default` with one Asterisk).
    pub node: String,
    pub channel_id: String,
    pub extension: Option<String>,
    pub caller: Option<String>,
    pub callee: Option<String>,
    pub direction: String,
    pub start_time: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub id: i64,
    /// The Asterisk the call was on; `None` for a row written before calls
    /// were logged per node and not yet claimed (`Db::claim_calls`).
    pub node: Option<String>,
    pub channel_id: String,
    pub extension: Option<String>,
    pub caller: Option<String>,
    pub callee: Option<String>,
    pub direction: String,
    pub start_time: DateTime<Utc>,
    pub answer_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub duration_seconds: Option<i64>,
    pub hangup_cause: Option<i64>,
    pub disposition: Option<String>,
    /// The extension that answered (CEL: the first leg other than the caller's).
    pub answered_by: Option<String>,
    /// Who hung up: an extension, `dialplan`, or a channel name.
    pub hangup_by: Option<String>,
    /// Transfers during the call.
    pub transfers: i64,
    /// `cel` (every call, from CEL over AMI) or `stasis` (the Stasis app).
    pub source: String,
}

/// Filters for listing calls; `cursor` is the id of the last call of the previous page.
#[derive(Clone, Debug, Default)]
pub struct CallFilter {
    pub node: Option<String>,
    pub extension: Option<String>,
    pub direction: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
    pub cursor: Option<i64>,
}

/// How a call ended: `answered` once answered, whatever the cause; else
/// from the Q.850 cause: 17 (user busy) `busy`; 16 (normal clearing: the
/// caller gave up), 18 (no user responding), 19 (no answer) and 31
/// (normal, unspecified) `no answer`; anything else (congestion, rejected,
/// unallocated number, …) `failed`.
pub fn disposition(answered: bool, cause: Option<i64>) -> &'static str {
    match (answered, cause) {
        (true, _) => "answered",
        (false, Some(17)) => "busy",
        (false, Some(16 | 18 | 19 | 31) | None) => "no answer",
        (false, Some(_)) => "failed",
    }
}

const CALL_COLUMNS: &str = "id, node, channel_id, extension, caller, callee, direction, start_time, answer_time, end_time, \
     duration_seconds, hangup_cause, disposition, answered_by, hangup_by, transfers, source";

impl Db {
    /// Creates the call's row; `false` when it already existed.
    pub async fn call_started(&self, c: &CallStart) -> Result<bool, DbError> {
        let now = Utc::now();
        let done = on_pool!(self, pool => sqlx::query(
            "INSERT INTO calls (channel_id, extension, caller, callee, direction, start_time, updated_at, node) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (node, channel_id) DO NOTHING",
        )
        .bind(&c.channel_id)
        .bind(&c.extension)
        .bind(&c.caller)
        .bind(&c.callee)
        .bind(&c.direction)
        .bind(c.start_time)
        .bind(now)
        .bind(&c.node)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }

    /// Sets the answer time, once. An answer that arrives after the end
    /// (events out of order) still counts: duration and disposition follow.
    pub async fn call_answered(&self, node: &str, channel_id: &str, at: DateTime<Utc>) -> Result<bool, DbError> {
        type Row = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<String>);
        let row: Option<Row> = on_pool!(self, pool => sqlx::query_as(
            "SELECT answer_time, end_time, disposition FROM calls WHERE channel_id = $1 AND node = $2",
        )
        .bind(channel_id)
        .bind(node)
        .fetch_optional(pool)
        .await)?;
        let Some((None, end, disposition)) = row else { return Ok(false) };
        // A row closed as "unknown" waits for its real end to say more.
        let end = end.filter(|_| disposition.as_deref() != Some("unknown"));
        let duration = end.map(|e| (e - at).num_seconds().max(0));
        let disposition = end.map(|_| "answered");
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE calls SET answer_time = $1, duration_seconds = COALESCE($2, duration_seconds), \
             disposition = COALESCE($3, disposition), updated_at = $4 WHERE channel_id = $5 AND node = $6 AND answer_time IS NULL",
        )
        .bind(at)
        .bind(duration)
        .bind(disposition)
        .bind(Utc::now())
        .bind(channel_id)
        .bind(node)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }

    /// Completes the call, once: end time, duration (from answer, or 0),
    /// cause, and the disposition that follows from them ([`disposition`]).
    /// A row closed as `unknown` (its channel seemed gone, or it stayed open
    /// too long) is provisional: the real end replaces it.
    pub async fn call_ended(
        &self,
        node: &str,
        channel_id: &str,
        at: DateTime<Utc>,
        cause: Option<i64>,
    ) -> Result<bool, DbError> {
        let open: Option<(Option<DateTime<Utc>>,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT answer_time FROM calls WHERE channel_id = $1 AND node = $2 AND (end_time IS NULL OR disposition = 'unknown')",
        )
        .bind(channel_id)
        .bind(node)
        .fetch_optional(pool)
        .await)?;
        let Some((answer,)) = open else { return Ok(false) };
        let duration = answer.map_or(0, |a| (at - a).num_seconds().max(0));
        let disposition = disposition(answer.is_some(), cause);
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE calls SET end_time = $1, duration_seconds = $2, hangup_cause = COALESCE($3, hangup_cause), \
             disposition = $4, updated_at = $5 WHERE channel_id = $6 AND node = $7 AND (end_time IS NULL OR disposition = 'unknown')",
        )
        .bind(at)
        .bind(duration)
        .bind(cause)
        .bind(disposition)
        .bind(Utc::now())
        .bind(channel_id)
        .bind(node)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }

    /// Closes one open call as "unknown" (its channel is gone and its end was missed).
    pub async fn close_call_unknown(&self, node: &str, channel_id: &str, at: DateTime<Utc>) -> Result<bool, DbError> {
        let mut b = self.cel_batch(node).await?;
        let done = b.close_call_unknown(channel_id, at).await?;
        b.commit().await?;
        Ok(done)
    }

    /// Channel ids of `node`'s calls still open that started after `since`.
    pub async fn open_calls(&self, node: &str, since: DateTime<Utc>) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT channel_id FROM calls WHERE end_time IS NULL AND start_time >= $1 AND node = $2 ORDER BY id",
        )
        .bind(since)
        .bind(node)
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    /// Closes `node`'s calls still open after `older_than` as "unknown"; returns how many.
    pub async fn close_stale_calls(&self, node: &str, older_than: DateTime<Utc>) -> Result<u64, DbError> {
        let now = Utc::now();
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE calls SET end_time = $1, disposition = 'unknown', updated_at = $2 WHERE end_time IS NULL AND start_time < $3 AND node = $4",
        )
        .bind(now)
        .bind(now)
        .bind(older_than)
        .bind(node)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n)
    }

    /// Calls, newest first, filtered.
    pub async fn calls(&self, f: &CallFilter) -> Result<Vec<CallRecord>, DbError> {
        let limit = f.limit.clamp(1, 1000);
        let rows = on_pool!(self, pool => {
            let mut qb = sqlx::QueryBuilder::new(format!("SELECT {CALL_COLUMNS} FROM calls WHERE 1 = 1"));
            if let Some(e) = &f.extension {
                // Its own calls, calls to it, and calls it took part in (a leg: it
                // was rung, answered, or was transferred to).
                qb.push(" AND (extension = ")
                    .push_bind(e.clone())
                    .push(" OR callee = ")
                    .push_bind(e.clone())
                    .push(" OR (node, channel_id) IN (SELECT node, linkedid FROM call_legs WHERE extension = ")
                    .push_bind(e.clone())
                    .push("))");
            }
            if let Some(n) = &f.node {
                qb.push(" AND node = ").push_bind(n.clone());
            }
            if let Some(d) = &f.direction {
                qb.push(" AND direction = ").push_bind(d.clone());
            }
            if let Some(s) = f.since {
                qb.push(" AND start_time >= ").push_bind(s);
            }
            if let Some(u) = f.until {
                qb.push(" AND start_time < ").push_bind(u);
            }
            if let Some(c) = f.cursor {
                qb.push(" AND id < ").push_bind(c);
            }
            qb.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(CallRecord::from_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }
}

/// One channel of a call, as CEL's `CHAN_START` (or a channel listing after
/// a reconnect) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegStart {
    pub linkedid: String,
    pub uniqueid: String,
    pub channel: String,
    /// The endpoint the channel belongs to (`PJSIP/1002-0000000a` → `1002`).
    pub extension: Option<String>,
    /// `caller` (the call's first channel), `callee`, `transfer` (a
    /// channel the call reached by a transfer) or `pickup` (the channel
    /// that picked the call up).
    pub role: String,
    pub caller: Option<String>,
    pub dialled: Option<String>,
    pub start_time: DateTime<Utc>,
}

/// One leg as stored.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Leg {
    /// The Asterisk the leg is on (`nodes:`; `default` with one Asterisk;
    /// `None` for a row from before calls were logged per node).
    pub node: Option<String>,
    pub linkedid: String,
    pub uniqueid: String,
    pub channel: String,
    pub extension: Option<String>,
    pub role: String,
    pub caller: Option<String>,
    pub dialled: Option<String>,
    pub start_time: DateTime<Utc>,
    pub answer_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub talk_seconds: Option<i64>,
    pub hangup_cause: Option<i64>,
    pub hangup_source: Option<String>,
    pub dial_status: Option<String>,
    pub transferred_at: Option<DateTime<Utc>>,
    pub transfer_to: Option<String>,
}

/// How a whole call ended, derived from its legs ([`outcome`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub answer_time: Option<DateTime<Utc>>,
    pub answered_by: Option<String>,
    pub answered: bool,
    pub hangup_cause: Option<i64>,
    pub hangup_by: Option<String>,
    pub disposition: &'static str,
    pub transfers: i64,
}

/// Who a CEL `hangupsource` names: the extension of a channel
/// (`PJSIP/1001-00000008` → `1001`), `dialplan` for the dialplan
/// (`dialplan/builtin`: a Dial timeout, `Hangup()`), else as written.
pub fn hangup_party(source: &str) -> Option<String> {
    if source.is_empty() {
        return None;
    }
    if source.starts_with("dialplan/") {
        return Some("dialplan".into());
    }
    Some(extension_of_channel(source).unwrap_or_else(|| source.to_string()))
}

/// The endpoint of a channel name: `PJSIP/1002-0000000a` → `1002`,
/// `Local/1002@from-internal-00000001;1` → `1002`; `None` for a name
/// without a technology.
pub fn extension_of_channel(name: &str) -> Option<String> {
    let (_, rest) = name.split_once('/')?;
    let rest = rest.split(';').next().unwrap_or(rest);
    let base = match rest.rsplit_once('-') {
        Some((b, seq)) if !seq.is_empty() && seq.bytes().all(|c| c.is_ascii_hexdigit()) => b,
        _ => rest,
    };
    let base = base.split('@').next().unwrap_or(base);
    Some(base.to_string()).filter(|s| !s.is_empty())
}

/// The call's outcome from its legs. The caller leg is the one whose
/// uniqueid is the linkedid (else the earliest).
///
/// - answered: a leg other than the caller's was answered, or the caller's
///   Dial said `ANSWER` (its `ANSWER` event may have been missed while the
///   logger was away), or the dialplan answered the caller itself;
/// - the cause that explains the call: the caller's hang-up cause, unless it
///   is 0 (Asterisk's "unknown", as a destroyed callee channel often says),
///   then the first other leg's non-zero cause;
/// - who hung up: the caller's `hangupsource`;
/// - the disposition: `answered`; else from the caller's dial status
///   (`BUSY` busy, `NOANSWER`/`CANCEL` no answer, `CONGESTION`/`CHANUNAVAIL`
///   failed); else from the cause ([`disposition`]).
pub fn outcome(linkedid: &str, legs: &[Leg]) -> Outcome {
    let caller = legs.iter().find(|l| l.uniqueid == linkedid).or_else(|| legs.iter().min_by_key(|l| l.start_time));
    let others: Vec<&Leg> =
        legs.iter().filter(|l| Some(l.uniqueid.as_str()) != caller.map(|c| c.uniqueid.as_str())).collect();
    let first_answer = others.iter().filter(|l| l.answer_time.is_some()).min_by_key(|l| l.answer_time);
    let dial = caller.and_then(|c| c.dial_status.as_deref()).unwrap_or("");
    let answered = first_answer.is_some() || dial == "ANSWER" || caller.is_some_and(|c| c.answer_time.is_some());
    let answer_time = first_answer.and_then(|l| l.answer_time).or_else(|| caller.and_then(|c| c.answer_time));
    let answered_by = first_answer.and_then(|l| l.extension.clone());
    let mut ended: Vec<&Leg> = others.clone();
    ended.sort_by_key(|l| l.end_time);
    let hangup_cause = caller
        .and_then(|c| c.hangup_cause)
        .filter(|c| *c != 0)
        .or_else(|| ended.iter().filter_map(|l| l.hangup_cause).find(|c| *c != 0))
        .or_else(|| caller.and_then(|c| c.hangup_cause));
    let hangup_by = caller
        .and_then(|c| c.hangup_source.as_deref())
        .and_then(hangup_party)
        .or_else(|| ended.iter().filter_map(|l| l.hangup_source.as_deref()).find_map(hangup_party));
    let disposition = if answered {
        "answered"
    } else {
        match dial {
            "BUSY" => "busy",
            "NOANSWER" | "CANCEL" => "no answer",
            "CONGESTION" | "CHANUNAVAIL" | "INVALIDARGS" => "failed",
            _ => disposition(false, hangup_cause),
        }
    };
    let transfers = legs.iter().filter(|l| l.transferred_at.is_some()).count() as i64;
    Outcome { answer_time, answered_by, answered, hangup_cause, hangup_by, disposition, transfers }
}

/// A call happening now, with its legs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ActiveCall {
    #[serde(flatten)]
    pub call: CallRecord,
    /// `ringing` until answered, then `up`.
    pub state: &'static str,
    pub legs: Vec<Leg>,
}

/// Calls of one extension in a period.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionCallStats {
    pub calls: i64,
    pub answered: i64,
    pub missed: i64,
    pub talk_seconds: i64,
}

const LEG_COLUMNS: &str = "node, linkedid, uniqueid, channel, extension, role, caller, dialled, start_time, answer_time, \
     end_time, talk_seconds, hangup_cause, hangup_source, dial_status, transferred_at, transfer_to";

impl Db {
    /// The legs of one call of `node` (`None`: a row from before calls were
    /// logged per node), in the order they started.
    pub async fn legs(&self, node: Option<&str>, linkedid: &str) -> Result<Vec<Leg>, DbError> {
        let of_node = if node.is_some() { "node = $2" } else { "node IS NULL" };
        let legs = on_pool!(self, pool => {
            let sql = format!("SELECT {LEG_COLUMNS} FROM call_legs WHERE linkedid = $1 AND {of_node} ORDER BY start_time, id");
            let mut q = sqlx::query(&sql).bind(linkedid);
            if let Some(n) = node {
                q = q.bind(n);
            }
            let rows = q.fetch_all(pool).await?;
            rows.iter().map(Leg::from_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(legs)
    }

    /// Linkedids of `node`'s calls logged from CEL that are still open.
    pub async fn open_cel_calls(&self, node: &str) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT channel_id FROM calls WHERE end_time IS NULL AND source = 'cel' AND node = $1 ORDER BY id",
        )
        .bind(node)
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    /// Names the calls and legs written before calls were logged per node
    /// (node NULL) after `node`, the first node: only its CEL was logged
    /// then. Returns how many calls it named; once done, it finds none.
    pub async fn claim_calls(&self, node: &str) -> Result<u64, DbError> {
        let n = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query("UPDATE calls SET node = $1 WHERE node IS NULL").bind(node).execute(&mut *tx).await?.rows_affected();
            sqlx::query("UPDATE call_legs SET node = $1 WHERE node IS NULL").bind(node).execute(&mut *tx).await?;
            tx.commit().await.map(|()| n)
        })?;
        Ok(n)
    }

    /// The calls happening now (not ended), oldest first, with their legs.
    pub async fn active_calls(&self) -> Result<Vec<ActiveCall>, DbError> {
        let calls = self.calls_where(" AND end_time IS NULL", 1000).await?;
        let mut out = Vec::with_capacity(calls.len());
        for call in calls.into_iter().rev() {
            let legs = self.legs(call.node.as_deref(), &call.channel_id).await?;
            let state = if call.answer_time.is_some() { "up" } else { "ringing" };
            out.push(ActiveCall { call, state, legs });
        }
        Ok(out)
    }

    /// How many calls are happening now.
    pub async fn active_call_count(&self) -> Result<i64, DbError> {
        let n: (i64,) = on_pool!(self, pool => sqlx::query_as("SELECT COUNT(*) FROM calls WHERE end_time IS NULL")
            .fetch_one(pool)
            .await)?;
        Ok(n.0)
    }

    /// Calls of one extension since `since` (it rang, was rung, answered or
    /// was transferred to): how many, answered (its leg was: a call it made
    /// and the other side took, or one it took), missed (rung and not
    /// answered by it, in a call nobody answered), its talk time.
    pub async fn extension_call_stats(&self, ext: &str, since: DateTime<Utc>) -> Result<ExtensionCallStats, DbError> {
        type Row = (i64, Option<i64>, Option<i64>, Option<i64>);
        let row: Row = on_pool!(self, pool => sqlx::query_as(
            "SELECT COUNT(DISTINCT l.linkedid), \
                    COUNT(DISTINCT CASE WHEN l.answer_time IS NOT NULL THEN l.linkedid END), \
                    COUNT(DISTINCT CASE WHEN l.role <> 'caller' AND l.answer_time IS NULL AND c.disposition IN ('no answer', 'busy') THEN l.linkedid END), \
                    CAST(SUM(COALESCE(l.talk_seconds, 0)) AS BIGINT) \
             FROM call_legs l JOIN calls c ON c.channel_id = l.linkedid AND c.node = l.node \
             WHERE l.extension = $1 AND l.start_time >= $2",
        )
        .bind(ext)
        .bind(since)
        .fetch_one(pool)
        .await)?;
        Ok(ExtensionCallStats {
            calls: row.0,
            answered: row.1.unwrap_or(0),
            missed: row.2.unwrap_or(0),
            talk_seconds: row.3.unwrap_or(0),
        })
    }

    /// One call by its linkedid (its `channelId`) on `node`, with its legs;
    /// without a node, the newest call of that linkedid on any node
    /// (linkedids repeat across Asterisk servers).
    pub async fn call_with_legs(
        &self,
        node: Option<&str>,
        linkedid: &str,
    ) -> Result<Option<(CallRecord, Vec<Leg>)>, DbError> {
        let of_node = if node.is_some() { " AND node = $2" } else { "" };
        let row = on_pool!(self, pool => {
            let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE channel_id = $1{of_node} ORDER BY id DESC LIMIT 1");
            let mut q = sqlx::query(&sql).bind(linkedid);
            if let Some(n) = node {
                q = q.bind(n);
            }
            let row = q.fetch_optional(pool).await?;
            row.as_ref().map(CallRecord::from_row).transpose()
        })?;
        let Some(call) = row else { return Ok(None) };
        let legs = self.legs(call.node.as_deref(), linkedid).await?;
        Ok(Some((call, legs)))
    }

    async fn calls_where(&self, cond: &'static str, limit: i64) -> Result<Vec<CallRecord>, DbError> {
        let rows = on_pool!(self, pool => {
            let rows = sqlx::query(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE 1 = 1{cond} ORDER BY id DESC LIMIT $1"))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(CallRecord::from_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }
}

/// The CEL logger's writes, in one transaction: a worker's queued events
/// (`calls::cel`) are written by one `CelBatch` and committed together,
/// in their order; a batch that fails is rolled back whole.
pub struct CelBatch {
    tx: BatchTx,
    /// The node whose calls it writes: every call and leg it names is that node's.
    node: String,
}

enum BatchTx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Expands `$body` once per backend, with `$conn` the batch's connection.
macro_rules! on_tx {
    ($b:expr, $conn:ident => $body:expr) => {
        match &mut $b.tx {
            BatchTx::Sqlite(t) => {
                let $conn = &mut **t;
                $body
            }
            BatchTx::Postgres(t) => {
                let $conn = &mut **t;
                $body
            }
        }
    };
}

impl Db {
    /// Starts a batch of CEL writes. SQLite's is `BEGIN IMMEDIATE`: a batch
    /// reads before it writes, and a deferred one would then fail (busy)
    /// when another worker's batch wrote in between, instead of waiting.
    /// Every call and leg it reads or writes is `node`'s.
    pub async fn cel_batch(&self, node: &str) -> Result<CelBatch, DbError> {
        let tx = match self {
            Db::Sqlite(pool) => BatchTx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(pool) => BatchTx::Postgres(pool.begin().await?),
        };
        Ok(CelBatch { tx, node: node.to_string() })
    }
}

impl CelBatch {
    /// Writes the batch.
    pub async fn commit(self) -> Result<(), DbError> {
        match self.tx {
            BatchTx::Sqlite(t) => t.commit().await?,
            BatchTx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    /// Closes the call as `unknown` (it ended while the logger was away), once.
    pub async fn close_call_unknown(&mut self, channel_id: &str, at: DateTime<Utc>) -> Result<bool, DbError> {
        let done = on_tx!(self, pool => sqlx::query(
            "UPDATE calls SET end_time = $1, disposition = 'unknown', updated_at = $2 WHERE channel_id = $3 AND node = $4 AND end_time IS NULL",
        )
        .bind(at)
        .bind(Utc::now())
        .bind(channel_id)
        .bind(&self.node)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }

    /// Creates the call's row from CEL (source `cel`); `false` when it
    /// already existed (a replay, or the Stasis app's row for the same call).
    pub async fn cel_call_started(&mut self, c: &CallStart) -> Result<bool, DbError> {
        let done = on_tx!(self, pool => sqlx::query(
            "INSERT INTO calls (channel_id, extension, caller, callee, direction, start_time, updated_at, source, node) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'cel', $8) ON CONFLICT (node, channel_id) DO NOTHING",
        )
        .bind(&c.channel_id)
        .bind(&c.extension)
        .bind(&c.caller)
        .bind(&c.callee)
        .bind(&c.direction)
        .bind(c.start_time)
        .bind(Utc::now())
        .bind(&self.node)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }

    /// Records a leg, once (by uniqueid).
    pub async fn leg_started(&mut self, l: &LegStart) -> Result<bool, DbError> {
        let done = on_tx!(self, pool => sqlx::query(
            "INSERT INTO call_legs (linkedid, uniqueid, channel, extension, role, caller, dialled, start_time, node) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (node, uniqueid) DO NOTHING",
        )
        .bind(&l.linkedid)
        .bind(&l.uniqueid)
        .bind(&l.channel)
        .bind(&l.extension)
        .bind(&l.role)
        .bind(&l.caller)
        .bind(&l.dialled)
        .bind(l.start_time)
        .bind(&self.node)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }

    /// A leg was answered (once). When it is not the caller's, the call is
    /// answered by it (once: the first answer counts).
    pub async fn leg_answered(&mut self, linkedid: &str, uniqueid: &str, at: DateTime<Utc>) -> Result<(), DbError> {
        on_tx!(self, pool => sqlx::query("UPDATE call_legs SET answer_time = $1 WHERE uniqueid = $2 AND node = $3 AND answer_time IS NULL")
            .bind(at)
            .bind(uniqueid)
            .bind(&self.node)
            .execute(pool)
            .await
            .map(drop))?;
        if linkedid != uniqueid {
            let by: Option<(Option<String>,)> = on_tx!(self, pool => sqlx::query_as("SELECT extension FROM call_legs WHERE uniqueid = $1 AND node = $2")
                .bind(uniqueid)
                .bind(&self.node)
                .fetch_optional(pool)
                .await)?;
            // Not a leg (a Local channel): a party answers the call, not plumbing.
            if by.is_none() {
                return Ok(());
            }
            on_tx!(self, pool => sqlx::query(
                "UPDATE calls SET answer_time = $1, answered_by = $2, updated_at = $3 WHERE channel_id = $4 AND node = $5 AND answer_time IS NULL",
            )
            .bind(at)
            .bind(by.and_then(|(e,)| e))
            .bind(Utc::now())
            .bind(linkedid)
            .bind(&self.node)
            .execute(pool)
            .await
            .map(drop))?;
        }
        Ok(())
    }

    /// A leg's hang-up (CEL `HANGUP`: cause, source, dial status).
    pub async fn leg_hung_up(
        &mut self,
        uniqueid: &str,
        cause: Option<i64>,
        source: Option<&str>,
        dial_status: Option<&str>,
    ) -> Result<(), DbError> {
        on_tx!(self, pool => sqlx::query(
            "UPDATE call_legs SET hangup_cause = COALESCE($1, hangup_cause), hangup_source = COALESCE($2, hangup_source), \
             dial_status = COALESCE($3, dial_status) WHERE uniqueid = $4 AND node = $5",
        )
        .bind(cause)
        .bind(source)
        .bind(dial_status)
        .bind(uniqueid)
        .bind(&self.node)
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }

    /// A leg's channel is gone (CEL `CHAN_END`).
    pub async fn leg_ended(&mut self, uniqueid: &str, at: DateTime<Utc>) -> Result<(), DbError> {
        on_tx!(self, pool => sqlx::query("UPDATE call_legs SET end_time = $1 WHERE uniqueid = $2 AND node = $3 AND end_time IS NULL")
            .bind(at)
            .bind(uniqueid)
            .bind(&self.node)
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    /// A leg transferred the call (CEL `BLINDTRANSFER`/`ATTENDEDTRANSFER`).
    pub async fn leg_transferred(
        &mut self,
        uniqueid: &str,
        at: DateTime<Utc>,
        to: Option<&str>,
    ) -> Result<(), DbError> {
        on_tx!(self, pool => sqlx::query(
            "UPDATE call_legs SET transferred_at = COALESCE(transferred_at, $1), transfer_to = COALESCE($2, transfer_to) WHERE uniqueid = $3 AND node = $4",
        )
        .bind(at)
        .bind(to)
        .bind(uniqueid)
        .bind(&self.node)
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }

    /// An attended transfer completed by `transferer`: the callee legs that
    /// started after it and are still up (the consulted target) become the
    /// call's `transfer` legs. Returns the first one's extension.
    pub async fn consulted_legs_are_transfers(
        &mut self,
        linkedid: &str,
        transferer: &str,
    ) -> Result<Option<String>, DbError> {
        on_tx!(self, pool => sqlx::query(
            "UPDATE call_legs SET role = 'transfer' WHERE linkedid = $1 AND node = $3 AND role = 'callee' AND uniqueid <> $2 \
             AND end_time IS NULL AND start_time >= (SELECT start_time FROM call_legs WHERE uniqueid = $2 AND node = $3)",
        )
        .bind(linkedid)
        .bind(transferer)
        .bind(&self.node)
        .execute(pool)
        .await
        .map(drop))?;
        let first: Option<(Option<String>,)> = on_tx!(self, pool => sqlx::query_as(
            "SELECT extension FROM call_legs WHERE linkedid = $1 AND node = $2 AND role = 'transfer' ORDER BY start_time, id LIMIT 1",
        )
        .bind(linkedid)
        .bind(&self.node)
        .fetch_optional(pool)
        .await)?;
        Ok(first.and_then(|(e,)| e))
    }

    /// An inbound call rings `ext` (its first callee leg): the call's
    /// callee and the extension it belongs to, once.
    pub async fn inbound_call_rings(&mut self, linkedid: &str, ext: &str) -> Result<(), DbError> {
        on_tx!(self, pool => sqlx::query(
            "UPDATE calls SET callee = COALESCE(callee, $1), extension = COALESCE(extension, $1) \
             WHERE channel_id = $2 AND node = $3 AND direction = 'inbound' AND source = 'cel'",
        )
        .bind(ext)
        .bind(linkedid)
        .bind(&self.node)
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }

    /// A pickup (CEL `PICKUP`): the picker's channel `l.uniqueid` becomes
    /// the `pickup` leg of call `l.linkedid`, answering it (from the pickup
    /// on, as Asterisk answers the picker); the call the picker had made
    /// (dialling the pickup code) is no call of its own and goes once it
    /// has no leg left. A call already completed is completed again with
    /// its leg. `false` when the leg was already there.
    pub async fn leg_picked_up(&mut self, l: &LegStart) -> Result<bool, DbError> {
        let before: Option<(String,)> = on_tx!(self, pool => sqlx::query_as("SELECT linkedid FROM call_legs WHERE uniqueid = $1 AND node = $2")
            .bind(&l.uniqueid)
            .bind(&self.node)
            .fetch_optional(pool)
            .await)?;
        if before.as_ref().is_some_and(|(b,)| b == &l.linkedid) {
            return Ok(false);
        }
        on_tx!(self, pool => sqlx::query(
            "INSERT INTO call_legs (linkedid, uniqueid, channel, extension, role, start_time, answer_time, node) \
             VALUES ($1, $2, $3, $4, 'pickup', $5, $5, $6) \
             ON CONFLICT (node, uniqueid) DO UPDATE SET linkedid = $1, role = 'pickup', \
             answer_time = COALESCE(call_legs.answer_time, $5)",
        )
        .bind(&l.linkedid)
        .bind(&l.uniqueid)
        .bind(&l.channel)
        .bind(&l.extension)
        .bind(l.start_time)
        .bind(&self.node)
        .execute(pool)
        .await
        .map(drop))?;
        let own = before.map(|(b,)| b).unwrap_or_else(|| l.uniqueid.clone());
        on_tx!(self, pool => sqlx::query(
            "DELETE FROM calls WHERE channel_id IN ($1, $2) AND channel_id <> $3 AND node = $4 \
             AND NOT EXISTS (SELECT 1 FROM call_legs WHERE call_legs.linkedid = calls.channel_id AND call_legs.node = calls.node)",
        )
        .bind(&own)
        .bind(&l.uniqueid)
        .bind(&l.linkedid)
        .bind(&self.node)
        .execute(pool)
        .await
        .map(drop))?;
        self.leg_answered(&l.linkedid, &l.uniqueid, l.start_time).await?;
        let ended: Option<(Option<DateTime<Utc>>,)> = on_tx!(self, pool => sqlx::query_as("SELECT end_time FROM calls WHERE channel_id = $1 AND node = $2")
            .bind(&l.linkedid)
            .bind(&self.node)
            .fetch_optional(pool)
            .await)?;
        if let Some((Some(at),)) = ended {
            self.complete(&l.linkedid, at, true).await?;
        }
        Ok(true)
    }

    /// Whether any leg of the call transferred it.
    pub async fn call_was_transferred(&mut self, linkedid: &str) -> Result<bool, DbError> {
        let n: (i64,) = on_tx!(self, pool => sqlx::query_as(
            "SELECT COUNT(*) FROM call_legs WHERE linkedid = $1 AND node = $2 AND transferred_at IS NOT NULL",
        )
        .bind(linkedid)
        .bind(&self.node)
        .fetch_one(pool)
        .await)?;
        Ok(n.0 > 0)
    }

    /// The legs of one call, in the order they started.
    pub async fn legs(&mut self, linkedid: &str) -> Result<Vec<Leg>, DbError> {
        let legs = on_tx!(self, pool => {
            let rows = sqlx::query(&format!("SELECT {LEG_COLUMNS} FROM call_legs WHERE linkedid = $1 AND node = $2 ORDER BY start_time, id"))
                .bind(linkedid)
                .bind(&self.node)
                .fetch_all(pool)
                .await?;
            rows.iter().map(Leg::from_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(legs)
    }

    /// Completes the call from its legs (CEL `LINKEDID_END`), once: end
    /// time, talk time, the cause that explains it, who hung up, the
    /// disposition; each leg's talk time. A row closed as `unknown` is
    /// provisional: this replaces it. `false` when it was already complete.
    pub async fn cel_call_ended(&mut self, linkedid: &str, at: DateTime<Utc>) -> Result<bool, DbError> {
        self.complete(linkedid, at, false).await
    }

    /// `cel_call_ended`; `again`: also a call already complete (its legs changed).
    async fn complete(&mut self, linkedid: &str, at: DateTime<Utc>, again: bool) -> Result<bool, DbError> {
        let legs = self.legs(linkedid).await?;
        let o = outcome(linkedid, &legs);
        let duration = match (o.answered, o.answer_time) {
            (true, Some(a)) => Some((at - a).num_seconds().max(0)),
            (true, None) => None,
            (false, _) => Some(0),
        };
        let now = Utc::now();
        for l in &legs {
            let talk = match (l.answer_time, l.end_time.or(Some(at))) {
                (Some(a), Some(e)) if l.uniqueid != linkedid || others_answered(&legs, linkedid) => {
                    (e.min(at) - a).num_seconds().max(0)
                }
                _ => 0,
            };
            on_tx!(self, pool => sqlx::query("UPDATE call_legs SET talk_seconds = $1, end_time = COALESCE(end_time, $2) WHERE uniqueid = $3 AND node = $4")
                .bind(talk)
                .bind(at)
                .bind(&l.uniqueid)
                .bind(&self.node)
                .execute(pool)
                .await
                .map(drop))?;
        }
        let done = on_tx!(self, pool => sqlx::query(
            "UPDATE calls SET end_time = $1, answer_time = COALESCE(answer_time, $2), answered_by = COALESCE(answered_by, $3), \
             duration_seconds = $4, hangup_cause = $5, hangup_by = $6, disposition = $7, transfers = $8, updated_at = $9 \
             WHERE channel_id = $10 AND node = $12 AND ($11 OR end_time IS NULL OR disposition = 'unknown')",
        )
        .bind(at)
        .bind(o.answer_time)
        .bind(&o.answered_by)
        .bind(duration)
        .bind(o.hangup_cause)
        .bind(&o.hangup_by)
        .bind(o.disposition)
        .bind(o.transfers)
        .bind(now)
        .bind(linkedid)
        .bind(again)
        .bind(&self.node)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }
}

fn others_answered(legs: &[Leg], linkedid: &str) -> bool {
    legs.iter().any(|l| l.uniqueid != linkedid && l.answer_time.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(uid: &str, ext: &str, answered: bool, cause: i64, source: &str, dial: &str) -> Leg {
        let t = Utc::now();
        Leg {
            node: Some("default".into()),
            linkedid: "a.1".into(),
            uniqueid: uid.into(),
            channel: format!("PJSIP/{ext}-00000001"),
            extension: Some(ext.into()),
            role: if uid == "a.1" { "caller".into() } else { "callee".into() },
            caller: None,
            dialled: None,
            start_time: t,
            answer_time: answered.then_some(t),
            end_time: Some(t),
            talk_seconds: None,
            hangup_cause: Some(cause),
            hangup_source: Some(source.into()).filter(|s: &String| !s.is_empty()),
            dial_status: Some(dial.into()).filter(|s: &String| !s.is_empty()),
            transferred_at: None,
            transfer_to: None,
        }
    }

    #[test]
    fn channel_names_name_their_endpoint() {
        assert_eq!(extension_of_channel("PJSIP/1002-0000000a").as_deref(), Some("1002"));
        assert_eq!(extension_of_channel("PJSIP/trunk-00000007").as_deref(), Some("trunk"));
        assert_eq!(extension_of_channel("Local/1002@from-internal-00000001;1").as_deref(), Some("1002"));
        assert_eq!(extension_of_channel("no-tech"), None);
        assert_eq!(hangup_party("dialplan/builtin").as_deref(), Some("dialplan"));
        assert_eq!(hangup_party("PJSIP/1001-00000008").as_deref(), Some("1001"));
        assert_eq!(hangup_party(""), None);
    }

    #[test]
    fn the_outcome_of_each_call_kind_as_asterisk_22_reports_it() {
        // Answered: the caller hung up (CEL of 1001 → 1002 on the real Asterisk).
        let o = outcome(
            "a.1",
            &[leg("a.1", "1001", true, 16, "PJSIP/1001-1", "ANSWER"), leg("a.2", "1002", true, 16, "PJSIP/1001-1", "")],
        );
        assert_eq!(
            (o.disposition, o.answered_by.as_deref(), o.hangup_cause, o.hangup_by.as_deref()),
            ("answered", Some("1002"), Some(16), Some("1001"))
        );
        // Dial timeout: the callee's channel says 0, the caller's 16 and NOANSWER.
        let o = outcome(
            "a.1",
            &[leg("a.1", "1001", false, 16, "dialplan/builtin", "NOANSWER"), leg("a.2", "1002", false, 0, "", "")],
        );
        assert_eq!((o.disposition, o.hangup_cause, o.hangup_by.as_deref()), ("no answer", Some(16), Some("dialplan")));
        // Busy.
        let o = outcome(
            "a.1",
            &[
                leg("a.1", "1001", false, 17, "dialplan/builtin", "BUSY"),
                leg("a.2", "1002", false, 17, "PJSIP/1002-2", ""),
            ],
        );
        assert_eq!(o.disposition, "busy");
        // The caller's cause 0 gives way to the callee's.
        let o =
            outcome("a.1", &[leg("a.1", "1001", false, 0, "", ""), leg("a.2", "1002", false, 21, "PJSIP/1002-2", "")]);
        assert_eq!((o.hangup_cause, o.disposition), (Some(21), "failed"));
        // Answered while the logger was away: no ANSWER seen, the Dial status says so.
        let o = outcome(
            "a.1",
            &[leg("a.1", "1001", false, 16, "PJSIP/1001-1", "ANSWER"), leg("a.2", "1002", false, 16, "", "")],
        );
        assert!(o.answered);
        assert_eq!(o.disposition, "answered");
    }
}
