//! The `calls` table: one row per call that entered the Stasis app.
//!
//! Exactly once: the row is created with `ON CONFLICT (channel_id) DO
//! NOTHING`, so a duplicated StasisStart (or a replay after a reconnect)
//! never makes a second row; answer and completion only fill what is still
//! empty, so an event arriving twice or late changes nothing twice.

use super::{Db, DbError, on_pool};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

/// A call as StasisStart describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallStart {
    pub channel_id: String,
    pub extension: Option<String>,
    pub caller: Option<String>,
    pub callee: Option<String>,
    pub direction: String,
    pub start_time: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub id: i64,
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
}

/// Filters for listing calls; `cursor` is the id of the last call of the previous page.
#[derive(Clone, Debug, Default)]
pub struct CallFilter {
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

const CALL_COLUMNS: &str = "id, channel_id, extension, caller, callee, direction, start_time, answer_time, end_time, \
     duration_seconds, hangup_cause, disposition";

impl Db {
    /// Creates the call's row; `false` when it already existed.
    pub async fn call_started(&self, c: &CallStart) -> Result<bool, DbError> {
        let now = Utc::now();
        let done = on_pool!(self, pool => sqlx::query(
            "INSERT INTO calls (channel_id, extension, caller, callee, direction, start_time, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (channel_id) DO NOTHING",
        )
        .bind(&c.channel_id)
        .bind(&c.extension)
        .bind(&c.caller)
        .bind(&c.callee)
        .bind(&c.direction)
        .bind(c.start_time)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }

    /// Sets the answer time, once. An answer that arrives after the end
    /// (events out of order) still counts: duration and disposition follow.
    pub async fn call_answered(&self, channel_id: &str, at: DateTime<Utc>) -> Result<bool, DbError> {
        type Row = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<String>);
        let row: Option<Row> = on_pool!(self, pool => sqlx::query_as(
            "SELECT answer_time, end_time, disposition FROM calls WHERE channel_id = $1",
        )
        .bind(channel_id)
        .fetch_optional(pool)
        .await)?;
        let Some((None, end, disposition)) = row else { return Ok(false) };
        // A row closed as "unknown" waits for its real end to say more.
        let end = end.filter(|_| disposition.as_deref() != Some("unknown"));
        let duration = end.map(|e| (e - at).num_seconds().max(0));
        let disposition = end.map(|_| "answered");
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE calls SET answer_time = $1, duration_seconds = COALESCE($2, duration_seconds), \
             disposition = COALESCE($3, disposition), updated_at = $4 WHERE channel_id = $5 AND answer_time IS NULL",
        )
        .bind(at)
        .bind(duration)
        .bind(disposition)
        .bind(Utc::now())
        .bind(channel_id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }

    /// Completes the call, once: end time, duration (from answer, or 0),
    /// cause, and the disposition that follows from them ([`disposition`]).
    /// A row closed as `unknown` (its channel seemed gone, or it stayed open
    /// too long) is provisional: the real end replaces it.
    pub async fn call_ended(&self, channel_id: &str, at: DateTime<Utc>, cause: Option<i64>) -> Result<bool, DbError> {
        let open: Option<(Option<DateTime<Utc>>,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT answer_time FROM calls WHERE channel_id = $1 AND (end_time IS NULL OR disposition = 'unknown')",
        )
        .bind(channel_id)
        .fetch_optional(pool)
        .await)?;
        let Some((answer,)) = open else { return Ok(false) };
        let duration = answer.map_or(0, |a| (at - a).num_seconds().max(0));
        let disposition = disposition(answer.is_some(), cause);
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE calls SET end_time = $1, duration_seconds = $2, hangup_cause = COALESCE($3, hangup_cause), \
             disposition = $4, updated_at = $5 WHERE channel_id = $6 AND (end_time IS NULL OR disposition = 'unknown')",
        )
        .bind(at)
        .bind(duration)
        .bind(cause)
        .bind(disposition)
        .bind(Utc::now())
        .bind(channel_id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }

    /// Closes one open call as "unknown" (its channel is gone and its end was missed).
    pub async fn close_call_unknown(&self, channel_id: &str, at: DateTime<Utc>) -> Result<bool, DbError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE calls SET end_time = $1, disposition = 'unknown', updated_at = $2 WHERE channel_id = $3 AND end_time IS NULL",
        )
        .bind(at)
        .bind(Utc::now())
        .bind(channel_id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))?;
        Ok(done)
    }

    /// Channel ids of calls still open that started after `since`.
    pub async fn open_calls(&self, since: DateTime<Utc>) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT channel_id FROM calls WHERE end_time IS NULL AND start_time >= $1 ORDER BY id",
        )
        .bind(since)
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    /// Closes calls still open after `older_than` as "unknown"; returns how many.
    pub async fn close_stale_calls(&self, older_than: DateTime<Utc>) -> Result<u64, DbError> {
        let now = Utc::now();
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE calls SET end_time = $1, disposition = 'unknown', updated_at = $2 WHERE end_time IS NULL AND start_time < $3",
        )
        .bind(now)
        .bind(now)
        .bind(older_than)
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
                qb.push(" AND (extension = ").push_bind(e.clone()).push(" OR callee = ").push_bind(e.clone()).push(")");
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
                .map(|r| -> Result<CallRecord, sqlx::Error> {
                    Ok(CallRecord {
                        id: r.try_get("id")?,
                        channel_id: r.try_get("channel_id")?,
                        extension: r.try_get("extension")?,
                        caller: r.try_get("caller")?,
                        callee: r.try_get("callee")?,
                        direction: r.try_get("direction")?,
                        start_time: r.try_get("start_time")?,
                        answer_time: r.try_get("answer_time")?,
                        end_time: r.try_get("end_time")?,
                        duration_seconds: r.try_get("duration_seconds")?,
                        hangup_cause: r.try_get("hangup_cause")?,
                        disposition: r.try_get("disposition")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }
}
