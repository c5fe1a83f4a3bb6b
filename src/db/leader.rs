//! Leader election between `serve` replicas on one PostgreSQL, and the
//! fencing of a deposed leader's writes.
//!
//! One replica leads: the one holding the session-level advisory lock
//! [`LOCK_KEY`] (`pg_try_advisory_lock`) on a connection of its own, opened
//! for that alone (never a pool connection: a pool would hand the session,
//! and the lock with it, to whatever query comes next, or close it while
//! idle). Its `application_name` is [`APPLICATION_NAME`] and the instance id,
//! so an operator (or a test) finds it in `pg_stat_activity`. PostgreSQL
//! frees the lock when that connection ends, which SIGKILL of the leader
//! does at once; a standby asks for the lock every [`POLL`] and takes over.
//!
//! On taking the lock the new leader increments `leader.epoch` and writes
//! its identity (`leader` table): the epoch is the fencing token. A leader's
//! runs commit through [`Fenced`], which checks, in the commit's own
//! transaction, that the epoch is still its own (the row lock of that check
//! orders it against a new leader's increment): a deposed leader's late
//! commit is refused and changes nothing. The leader also checks its lock
//! connection every [`POLL`]: once it fails, the role becomes
//! [`Role::Follower`] and `app` stops the leader's work (the run under way,
//! the call loggers) before anything else is written.
//!
//! With SQLite there is one daemon: it is always the leader (it still takes
//! an epoch, so commits are checked the same way).

use super::{Db, DbError};
use crate::core::status::{StatusUpdate, Step};
use crate::reconcile::{AppliedRow, RunRecord, StateStore};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// The advisory lock's key ("agtsldr1" in ASCII): the same for every
/// replica on a database, and unlikely to be another program's.
pub const LOCK_KEY: i64 = 0x6167_7473_6c64_7231;

/// The lock connection's `application_name` starts with this.
pub const APPLICATION_NAME: &str = "asterisk-gitops leader";

/// How often a standby asks for the lock, and a leader checks its lock
/// connection.
pub const POLL: Duration = Duration::from_secs(1);

/// How long a replica that lost its lock connection waits before it asks
/// for the lock again (a standby asks every [`POLL`], so it takes over).
const STEP_BACK: Duration = Duration::from_secs(3);

/// How long one query on the lock connection may take before the
/// connection counts as lost.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The NOTIFY channel through which a follower asks the leader for a run
/// (after a write it handed to the spec source).
pub const RECONCILE_CHANNEL: &str = "asterisk_gitops_reconcile";

/// This replica's role, as [`elect`] publishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not (or no longer) the leader.
    Follower,
    /// The leader since it took `epoch`.
    Leader { epoch: i64 },
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }
}

/// Who leads, as the `leader` table says.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaderRecord {
    pub epoch: i64,
    pub instance_id: String,
    pub since: DateTime<Utc>,
}

/// The default instance id: `host:pid listen-address`.
pub fn default_instance_id(listen: &std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{} {listen}", std::process::id())
}

impl Db {
    /// The leader as last recorded; `None` before any took over.
    pub async fn leader(&self) -> Result<Option<LeaderRecord>, DbError> {
        Ok(super::on_pool!(self, pool => sqlx::query_as::<_, LeaderRecord>(
            "SELECT epoch, instance_id, since FROM leader WHERE id = 1",
        )
        .fetch_optional(pool)
        .await)?)
    }

    /// Asks the leader (whichever replica it is) for a run, through
    /// PostgreSQL's NOTIFY; nothing to do on SQLite, where this process leads.
    pub async fn notify_leader(&self, trigger: &str) -> Result<(), DbError> {
        if let Db::Postgres(pool) = self {
            sqlx::query("SELECT pg_notify($1, $2)").bind(RECONCILE_CHANNEL).bind(trigger).execute(pool).await?;
        }
        Ok(())
    }

    /// Calls `on` with each trigger a follower sends through
    /// [`notify_leader`](Db::notify_leader), until `stop` resolves (or the
    /// listener fails: the leader then relies on its other triggers).
    pub async fn listen_for_triggers(&self, on: impl Fn(&str), stop: impl std::future::Future<Output = ()>) {
        let Db::Postgres(pool) = self else { return };
        tokio::pin!(stop);
        let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for the followers' run requests");
                return;
            }
        };
        if let Err(e) = listener.listen(RECONCILE_CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for the followers' run requests");
            return;
        }
        loop {
            tokio::select! {
                _ = &mut stop => return,
                n = listener.recv() => match n {
                    Ok(n) => on(n.payload()),
                    Err(e) => {
                        tracing::warn!(error = %e, "listening for the followers' run requests failed; reconnecting");
                        tokio::time::sleep(POLL).await;
                    }
                },
            }
        }
    }
}

/// Increments the epoch and records the instance as the leader.
const TAKE_OVER: &str = "INSERT INTO leader (id, epoch, instance_id, since) VALUES (1, 1, $1, $2) \
     ON CONFLICT (id) DO UPDATE SET epoch = leader.epoch + 1, instance_id = excluded.instance_id, \
     since = excluded.since RETURNING epoch";

/// Takes over on the lock connection; returns the new epoch.
async fn take_over_pg(conn: &mut sqlx::PgConnection, instance_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(TAKE_OVER).bind(instance_id).bind(Utc::now()).fetch_one(conn).await
}

async fn take_over_sqlite(pool: &sqlx::SqlitePool, instance_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(TAKE_OVER).bind(instance_id).bind(Utc::now()).fetch_one(pool).await
}

/// Runs the election for this replica until `stop` resolves, publishing
/// its role on `role`. On PostgreSQL: connect the lock connection (to
/// `url`), ask for the lock every [`POLL`], take over when granted, then
/// check the connection every [`POLL`]; a lost connection makes this replica
/// a follower at once, and it starts asking again. On SQLite: the leader
/// from the start. The lock is released when `stop` resolves.
pub async fn elect(
    db: Db,
    url: String,
    instance_id: String,
    role: watch::Sender<Role>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    if let Db::Sqlite(pool) = &db {
        let mut backoff = crate::reconcile::Backoff::new(crate::reconcile::BackoffConfig::new(POLL, POLL * 30));
        loop {
            match take_over_sqlite(pool, &instance_id).await {
                Ok(epoch) => {
                    let _ = role.send(Role::Leader { epoch });
                    tracing::info!(epoch, instance = %instance_id, "leading (SQLite: a single daemon)");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot record this daemon as the leader; retrying");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(backoff.fail()) => {}
                    }
                }
            }
        }
        stop.await;
        let _ = role.send(Role::Follower);
        return;
    }
    let work = campaign(&url, &instance_id, &role);
    tokio::select! {
        _ = &mut stop => {}
        _ = work => {}
    }
    // Dropping the campaign closed the lock connection, releasing the lock.
    let _ = role.send(Role::Follower);
}

/// What the lock connection asks of PostgreSQL's side of its TCP socket
/// (session settings any user may set, given at connect): keepalive probes
/// after 2 s without traffic, 1 s apart, the peer dead after 2 unanswered,
/// and sent data unacknowledged for 4 s ends the connection too. A network
/// partition that leaves the socket open then frees the lock within about
/// 4 s, where the system defaults (2 hours of idle) kept it and no standby
/// could lead; the leader, pinging every [`POLL`] with [`QUERY_TIMEOUT`],
/// has stepped down by then. Ignored on a Unix socket.
pub const LOCK_SOCKET_SETTINGS: [(&str, &str); 4] = [
    ("tcp_keepalives_idle", "2"),
    ("tcp_keepalives_interval", "1"),
    ("tcp_keepalives_count", "2"),
    ("tcp_user_timeout", "4000"),
];

/// The lock connection's options: `url`'s, with `application_name`
/// ([`APPLICATION_NAME`] and the instance id) and [`LOCK_SOCKET_SETTINGS`].
pub fn lock_connect_options(url: &str, instance_id: &str) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
    // PostgreSQL keeps application_name to 63 bytes.
    let mut name = format!("{APPLICATION_NAME} {instance_id}");
    while name.len() > 63 {
        name.pop();
    }
    Ok(url.parse::<sqlx::postgres::PgConnectOptions>()?.application_name(&name).options(LOCK_SOCKET_SETTINGS))
}

async fn campaign(url: &str, instance_id: &str, role: &watch::Sender<Role>) {
    use sqlx::Connection;
    let shown = crate::secret::redact_url(url);
    let opts = match lock_connect_options(url, instance_id) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(url = %shown, error = %e, "the database URL does not parse: this replica never leads");
            return std::future::pending().await;
        }
    };
    let mut backoff = crate::reconcile::Backoff::new(crate::reconcile::BackoffConfig::new(POLL, POLL * 10));
    loop {
        let mut conn = match tokio::time::timeout(QUERY_TIMEOUT * 2, sqlx::PgConnection::connect_with(&opts)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(url = %shown, error = %e, "cannot open the leader election's connection; retrying");
                tokio::time::sleep(backoff.fail()).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(url = %shown, "opening the leader election's connection timed out; retrying");
                tokio::time::sleep(backoff.fail()).await;
                continue;
            }
        };
        backoff.reset();
        // Standby: ask for the lock until granted.
        let epoch = loop {
            let asked =
                sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut conn);
            match tokio::time::timeout(QUERY_TIMEOUT, asked).await {
                Ok(Ok(true)) => match tokio::time::timeout(QUERY_TIMEOUT, take_over_pg(&mut conn, instance_id)).await {
                    Ok(Ok(epoch)) => break Some(epoch),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "took the leader lock but cannot record the take-over");
                        break None;
                    }
                    Err(_) => break None,
                },
                Ok(Ok(false)) => tokio::time::sleep(POLL).await,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the leader election's connection failed");
                    break None;
                }
                Err(_) => break None,
            }
        };
        // A failed take-over closes the connection (and the lock with it).
        let Some(epoch) = epoch else {
            drop(conn);
            tokio::time::sleep(POLL).await;
            continue;
        };
        tracing::info!(epoch, instance = %instance_id, "leading: took the advisory lock");
        let _ = role.send(Role::Leader { epoch });
        // Leader: the lock lasts as long as this connection; check it.
        loop {
            tokio::time::sleep(POLL).await;
            let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut conn);
            match tokio::time::timeout(QUERY_TIMEOUT, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(epoch, error = %e, "lost the leader lock's connection: stepping down");
                    break;
                }
                Err(_) => {
                    tracing::error!(epoch, "the leader lock's connection does not answer: stepping down");
                    break;
                }
            }
        }
        let _ = role.send(Role::Follower);
        drop(conn);
        // A standby asks every POLL: give it the first chance at the lock,
        // rather than taking it back at once over a connection that failed.
        tokio::time::sleep(STEP_BACK).await;
    }
}

/// The state store a leader's runs write through: [`Db`], with every write
/// refused once this replica no longer leads in `epoch`, and each commit
/// checking the epoch in its own transaction.
#[derive(Clone, Debug)]
pub struct Fenced {
    pub db: Db,
    pub epoch: i64,
    role: watch::Receiver<Role>,
}

impl Fenced {
    pub fn new(db: Db, epoch: i64, role: watch::Receiver<Role>) -> Fenced {
        Fenced { db, epoch, role }
    }

    fn still_leading(&self) -> Result<(), DbError> {
        match *self.role.borrow() {
            Role::Leader { epoch } if epoch == self.epoch => Ok(()),
            _ => Err(DbError::Fenced { epoch: self.epoch }),
        }
    }
}

impl StateStore for Fenced {
    type Error = DbError;

    async fn applied(&self) -> Result<BTreeMap<String, crate::core::plan::Fields>, DbError> {
        self.db.applied().await
    }

    async fn applied_signature(&self) -> Result<String, DbError> {
        self.db.applied_signature().await
    }

    async fn commit(
        &self,
        run: &RunRecord,
        upserts: &[AppliedRow<'_>],
        deletes: &[String],
        states: &StatusUpdate<'_>,
    ) -> Result<i64, DbError> {
        self.still_leading()?;
        self.db.commit_run_fenced(Some(self.epoch), run, upserts, deletes, states).await
    }

    async fn progress(&self, step: Step) -> Result<(), DbError> {
        self.still_leading()?;
        self.db.progress(step).await
    }

    async fn mark(&self, states: &StatusUpdate<'_>) -> Result<(), DbError> {
        self.still_leading()?;
        self.db.mark(states).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_instance_id_names_the_host_the_process_and_the_address() {
        let id = default_instance_id(&"127.0.0.1:8080".parse().expect("addr"));
        let pid = std::process::id().to_string();
        assert!(id.ends_with(&format!(":{pid} 127.0.0.1:8080")), "{id}");
        assert!(!id.starts_with(':'), "a host name first: {id}");
    }
}
