//! The state store: PostgreSQL in production, an embedded SQLite file by
//! default. One repository layer over both, shared by the reconciler, the
//! HTTP API and the call logger.
//!
//! Design: [`Db`] is an enum over the two sqlx pools, and every query is
//! written once inside the `on_pool!` macro, which expands it for each
//! pool type. (sqlx's `Any` driver was the alternative; it has no
//! timestamps or JSON, which this schema wants on PostgreSQL, where other
//! services read the `calls` table.) Queries use `$1, $2, …` in order,
//! which both backends accept. Timestamps bind as `chrono::DateTime<Utc>`
//! (TIMESTAMPTZ on PostgreSQL, RFC 3339 text on SQLite) and JSON as
//! `sqlx::types::Json` (JSONB / text).
//!
//! Architecture invariant: what must change together changes in one
//! transaction: an applied plan's extension rows and its run record land
//! together or not at all ([`Db::commit_run`]).

pub mod calls;
pub mod leader;
pub mod read;

use crate::core::plan::{self, Fields};
use crate::core::spec::{Extension, fields};
use crate::core::status::{Reset, StatusUpdate, Step, SyncState};
use crate::reconcile::{AppliedRow, Outcome, RunRecord, StateStore};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool, Row, SqlitePool};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

/// Expands `$body` once per backend, with `$pool` bound to the concrete pool.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Writes a run's extension states inside the transaction `tx` (the same
/// SQL for both backends; `run_id` is `None` for states a run marks while
/// it is under way).
macro_rules! write_states {
    ($tx:ident, $states:expr, $run_id:expr, $now:expr) => {{
        use chrono::SubsecRound;
        let states: &StatusUpdate<'_> = $states;
        // Microseconds, as PostgreSQL keeps them: rows stamped by this write
        // compare equal to `stamp` below on both backends.
        let stamp: DateTime<Utc> = $now.trunc_subsecs(6);
        // Synced clears a row; only rows that are not plainly synced are kept.
        let synced: Vec<&str> =
            states.states.iter().filter(|st| st.state == SyncState::Synced).map(|st| st.number.as_str()).collect();
        for chunk in synced.chunks(500) {
            let mut qb = sqlx::QueryBuilder::new("DELETE FROM extension_status WHERE number IN (");
            let mut sep = qb.separated(", ");
            for n in chunk {
                sep.push_bind(*n);
            }
            qb.push(")");
            qb.build().execute(&mut *$tx).await?;
        }
        let kept: Vec<_> = states.states.iter().filter(|st| st.state != SyncState::Synced).collect();
        for chunk in kept.chunks(400) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO extension_status (number, status, reason, run_id, declared, since, updated_at) ",
            );
            qb.push_values(chunk, |mut b, st| {
                let declared =
                    st.declared.map(|e| Json(serde_json::to_value(ExtensionRecord::declared(e)).unwrap_or_default()));
                b.push_bind(st.number.as_str())
                    .push_bind(st.state.as_str())
                    .push_bind(st.reason.as_deref())
                    .push_bind($run_id)
                    .push_bind(declared)
                    .push_bind(stamp)
                    .push_bind(stamp);
            });
            // A state that holds on keeps its `since`.
            qb.push(
                " ON CONFLICT (number) DO UPDATE SET reason = excluded.reason, run_id = excluded.run_id, \
                 declared = COALESCE(excluded.declared, extension_status.declared), \
                 since = CASE WHEN extension_status.status = excluded.status THEN extension_status.since ELSE excluded.since END, \
                 status = excluded.status, updated_at = excluded.updated_at",
            );
            if states.only_new {
                qb.push(" WHERE extension_status.status = excluded.status");
            }
            qb.build().execute(&mut *$tx).await?;
        }
        // What this write did not set is cleared, as far as the run knows.
        match states.reset {
            Reset::All => {
                sqlx::query("DELETE FROM extension_status WHERE updated_at <> $1").bind(stamp).execute(&mut *$tx).await?;
            }
            Reset::KeepDrifted => {
                sqlx::query("DELETE FROM extension_status WHERE updated_at <> $1 AND status <> 'drifted'")
                    .bind(stamp)
                    .execute(&mut *$tx)
                    .await?;
            }
            Reset::Nothing => {}
        }
    }};
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database {url} after {attempts} attempt(s): {source}")]
    Connect {
        url: String,
        attempts: u32,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the database {url} was migrated by a newer asterisk-gitops (it has migration {found}, this version knows up to {known}); upgrade asterisk-gitops or use another database"
    )]
    TooNew { url: String, found: i64, known: i64 },
    #[error("migrating the database {url} failed: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("unsupported database URL {0:?}: use sqlite://… or postgres://…")]
    Unsupported(String),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error(
        "this daemon no longer leads (its epoch {epoch} was superseded or its lock connection lost): the write was refused"
    )]
    Fenced { epoch: i64 },
}

/// A connection pool to one of the two backends.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How hard to try when the database is not there yet.
#[derive(Clone, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { attempts: 6, first_delay: Duration::from_millis(250), max_delay: Duration::from_secs(8) }
    }
}

/// Makes the SQLite file at `path` 0600 (it holds md5 hashes and the run
/// history): created so when `create` and it does not exist yet, before
/// sqlx opens it; an existing one is narrowed to 0600.
fn private_file(path: &std::path::Path, create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if create {
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Db {
    /// Connects (retrying with back-off), migrates, and refuses a database
    /// that a newer version migrated. SQLite files and their directory are
    /// created if missing.
    pub async fn connect(url: &str, retry: &Retry) -> Result<Db, DbError> {
        let shown = crate::secret::redact_url(url);
        let mut backoff =
            crate::reconcile::Backoff::new(crate::reconcile::BackoffConfig::new(retry.first_delay, retry.max_delay));
        let mut attempt = 0;
        let db = loop {
            attempt += 1;
            match Self::connect_once(url).await {
                Ok(db) => break db,
                Err(DbError::Query(source)) if attempt < retry.attempts.max(1) => {
                    tracing::warn!(url = shown.as_str(), attempt, error = %source, "database not reachable; retrying");
                    tokio::time::sleep(backoff.fail()).await;
                }
                Err(DbError::Query(source)) => return Err(DbError::Connect { url: shown, attempts: attempt, source }),
                Err(e) => return Err(e),
            }
        };
        db.migrate(&shown).await?;
        Ok(db)
    }

    async fn connect_once(url: &str) -> Result<Db, DbError> {
        if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let path = rest.split('?').next().unwrap_or("");
            let on_disk = !path.is_empty() && path != ":memory:" && !rest.contains("mode=memory");
            if on_disk {
                if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| DbError::Query(sqlx::Error::Io(e)))?;
                }
                private_file(std::path::Path::new(path), true).map_err(|e| DbError::Query(sqlx::Error::Io(e)))?;
            }
            let opts: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
            let opts = opts
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(if path == ":memory:" || path.is_empty() { 1 } else { 4 })
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts)
                .await?;
            if on_disk {
                // SQLite gives its -wal and -shm files the database file's
                // mode; this makes sure of it for files an older version made.
                for suffix in ["", "-wal", "-shm"] {
                    private_file(std::path::Path::new(&format!("{path}{suffix}")), false)
                        .map_err(|e| DbError::Query(sqlx::Error::Io(e)))?;
                }
            }
            Ok(Db::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            use sqlx::Connection;
            let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
            // One plain connection first: a refused or failing server answers at
            // once, where the pool would keep retrying until its acquire timeout.
            sqlx::PgConnection::connect_with(&opts).await?.close().await?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts)
                .await?;
            Ok(Db::Postgres(pool))
        } else {
            Err(DbError::Unsupported(crate::secret::redact_url(url)))
        }
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        match self {
            Db::Sqlite(_) => &SQLITE_MIGRATIONS,
            Db::Postgres(_) => &POSTGRES_MIGRATIONS,
        }
    }

    async fn migrate(&self, shown: &str) -> Result<(), DbError> {
        let migrator = self.migrator();
        let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let result = on_pool!(self, pool => migrator.run(pool).await);
        match result {
            Ok(()) => Ok(()),
            Err(sqlx::migrate::MigrateError::VersionMissing(found)) => {
                Err(DbError::TooNew { url: shown.to_string(), found, known })
            }
            Err(source) => Err(DbError::Migrate { url: shown.to_string(), source }),
        }
    }

    /// Which backend this is ("sqlite" or "postgres").
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool; later queries fail.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }

    /// The applied extensions as the plan's field maps, by number.
    pub async fn applied_fields(&self) -> Result<BTreeMap<String, Fields>, DbError> {
        use futures_util::TryStreamExt;
        // Row by row: holding every decoded JSON map at once before
        // converting would double the peak memory at 100k extensions.
        let mut out = BTreeMap::new();
        on_pool!(self, pool => {
            let mut rows = sqlx::query_as::<_, (String, Json<BTreeMap<String, String>>)>("SELECT number, fields FROM extensions")
                .fetch(pool);
            while let Some((n, Json(map))) = rows.try_next().await? {
                let mut fields: Fields = map.into_iter().filter_map(|(k, v)| plan::field_name(&k).map(|k| (k, v))).collect();
                // Rows applied before profiles existed were nat (the only behaviour then).
                if fields.get("profile").is_none() {
                    fields.insert("profile", crate::core::spec::Profile::Nat.name().to_string());
                }
                out.insert(n, fields);
            }
            Ok::<(), sqlx::Error>(())
        })?;
        Ok(out)
    }

    /// Every applied extension, by number.
    pub async fn extensions(&self) -> Result<Vec<ExtensionRecord>, DbError> {
        let rows = on_pool!(self, pool => {
            let rows = sqlx::query(&format!("{} ORDER BY e.number", *SELECT_EXTENSIONS)).fetch_all(pool).await?;
            rows.iter().map(ExtensionRecord::from_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        let mut rows = rows;
        // Declared but never applied (pending, or failed on creation).
        rows.extend(self.unapplied(None).await?);
        rows.sort_by(|a, b| a.number.cmp(&b.number));
        Ok(rows)
    }

    /// Status rows of extensions that have no applied row: what was
    /// declared, from the row's `declared` copy.
    async fn unapplied(&self, number: Option<&str>) -> Result<Vec<ExtensionRecord>, DbError> {
        let rows: Vec<StatusRow> = on_pool!(self, pool => sqlx::query_as(
                "SELECT s.number, s.status, s.reason, s.run_id, s.declared, s.since FROM extension_status s \
                 WHERE NOT EXISTS (SELECT 1 FROM extensions e WHERE e.number = s.number) AND (CAST($1 AS TEXT) IS NULL OR s.number = $1) \
                 ORDER BY s.number",
            )
            .bind(number)
            .fetch_all(pool)
            .await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(number, status, reason, run_id, declared, since)| {
                let mut r: ExtensionRecord = serde_json::from_value(declared?.0).ok()?;
                r.number = number;
                r.sync_status = status;
                r.last_error = reason;
                r.sync_run_id = run_id;
                r.sync_since = Some(since);
                r.applied_at = None;
                Some(r)
            })
            .collect())
    }

    /// Sets extension states outside a run's commit: a run marks what it
    /// is about to apply as pending, so a watcher sees it while Asterisk
    /// reloads; the run's commit then sets what came of it.
    pub async fn set_states(&self, states: &StatusUpdate<'_>) -> Result<(), DbError> {
        let now = Utc::now();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            write_states!(tx, states, None::<i64>, now);
            tx.commit().await?;
            Ok::<(), sqlx::Error>(())
        })?;
        Ok(())
    }

    /// One applied extension.
    pub async fn extension(&self, number: &str) -> Result<Option<ExtensionRecord>, DbError> {
        let row = on_pool!(self, pool => {
            let row = sqlx::query(&format!("{} WHERE e.number = $1", *SELECT_EXTENSIONS))
                .bind(number)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(ExtensionRecord::from_row).transpose()
        })?;
        match row {
            Some(r) => Ok(Some(r)),
            None => Ok(self.unapplied(Some(number)).await?.into_iter().next()),
        }
    }

    /// Records a run and applies its row changes in one transaction; updates
    /// the status row too. Returns the run's id.
    pub async fn commit_run(
        &self,
        run: &RunRecord,
        upserts: &[AppliedRow<'_>],
        deletes: &[String],
        states: &StatusUpdate<'_>,
    ) -> Result<i64, DbError> {
        self.commit_run_fenced(None, run, upserts, deletes, states).await
    }

    /// [`commit_run`](Db::commit_run), and with `fence` the leader's epoch
    /// checked first in the same transaction (`leader::Fenced`): a commit
    /// of a leader that was superseded is refused with
    /// [`DbError::Fenced`] and writes nothing. The check updates the
    /// leader row, so a new leader's take-over waits for this commit (or
    /// this commit for it, and then finds the epoch changed).
    pub async fn commit_run_fenced(
        &self,
        fence: Option<i64>,
        run: &RunRecord,
        upserts: &[AppliedRow<'_>],
        deletes: &[String],
        states: &StatusUpdate<'_>,
    ) -> Result<i64, DbError> {
        let (creates, updates, deletes_n) = run.plan.as_ref().map_or((0, 0, 0), |p| {
            (
                p.count(plan::Action::Create) as i64,
                p.count(plan::Action::Update) as i64,
                p.count(plan::Action::Delete) as i64,
            )
        });
        let duration_ms = (run.finished_at - run.started_at).num_milliseconds();
        // The diff is already capped by `plan::masked_diff`; the stored plan
        // keeps the first changes in detail and counts the rest.
        let diff = run.plan.as_ref().map(|p| p.diff.as_str()).filter(|d| !d.is_empty());
        let plan_json =
            run.plan.as_ref().map(|p| Json(serde_json::to_value(plan::StoredPlan::of(p)).unwrap_or_default()));
        let diagnostics = Json(serde_json::to_value(&run.diagnostics).unwrap_or_default());
        let reasons = Json(serde_json::to_value(&run.reasons).unwrap_or_default());
        let now = Utc::now();
        let id: i64 = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if let Some(epoch) = fence {
                let held = sqlx::query("UPDATE leader SET epoch = epoch WHERE id = 1 AND epoch = $1")
                    .bind(epoch)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if held == 0 {
                    return Err(DbError::Fenced { epoch });
                }
            }
            for chunk in deletes.chunks(500) {
                let mut qb = sqlx::QueryBuilder::new("DELETE FROM extensions WHERE number IN (");
                let mut sep = qb.separated(", ");
                for n in chunk {
                    sep.push_bind(n);
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
            }
            // 27 columns a row; 400 rows stay under both backends' bind limits.
            for chunk in upserts.chunks(400) {
                let mut qb = sqlx::QueryBuilder::new(format!("INSERT INTO extensions ({}) ", *EXTENSION_COLUMNS));
                qb.push_values(chunk, |mut b, row| {
                    let e = &row.extension;
                    let row_fields = row.fields();
                    let fields: BTreeMap<&str, &str> = row_fields.iter().collect();
                    for column in fields::COLUMNS {
                        match stored(column, e) {
                            Stored::Text(v) => b.push_bind(v),
                            Stored::Int(v) => b.push_bind(v),
                            Stored::Flag(v) => b.push_bind(v),
                            Stored::Json(v) => b.push_bind(Json(v)),
                        };
                    }
                    b.push_bind(row.secret_md5.clone())
                        .push_bind(Json(serde_json::to_value(&fields).unwrap_or_default()))
                        .push_bind(spec_hash(&row_fields))
                        .push_bind(e.origin.file.clone())
                        .push_bind(run.revision.clone())
                        .push_bind(now)
                        .push_bind("synced")
                        .push_bind(None::<String>);
                });
                qb.push(&*UPSERT_SET);
                qb.build().execute(&mut *tx).await?;
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO reconcile_runs (trigger, revision, subject, started_at, finished_at, duration_ms, outcome, \
                 creates, updates, deletes, reloaded, plan, diff, diagnostics, error, warning, reasons) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING id",
            )
            .bind(run.trigger.as_str())
            .bind(run.revision.clone())
            .bind(run.subject.clone())
            .bind(run.started_at)
            .bind(run.finished_at)
            .bind(duration_ms)
            .bind(run.outcome.as_str())
            .bind(creates)
            .bind(updates)
            .bind(deletes_n)
            .bind(run.reloaded)
            .bind(plan_json)
            .bind(diff)
            .bind(diagnostics)
            .bind(run.error.clone())
            .bind(run.warning.clone())
            .bind(reasons)
            .fetch_one(&mut *tx)
            .await?;
            write_states!(tx, states, Some(id), now);
            let (ready, reason, message) = condition(run);
            let applied_revision = matches!(run.outcome, Outcome::Applied | Outcome::NoOp).then(|| run.revision.clone()).flatten();
            sqlx::query(
                "INSERT INTO reconciler_status (id, ready, ready_reason, ready_message, reconciling, last_applied_revision, \
                 last_attempted_revision, last_run_id, updated_at) VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET ready = excluded.ready, ready_reason = excluded.ready_reason, \
                 ready_message = excluded.ready_message, reconciling = excluded.reconciling, \
                 reconciling_step = NULL, reconciling_since = NULL, \
                 last_applied_revision = COALESCE(excluded.last_applied_revision, reconciler_status.last_applied_revision), \
                 last_attempted_revision = excluded.last_attempted_revision, last_run_id = excluded.last_run_id, \
                 updated_at = excluded.updated_at",
            )
            .bind(ready)
            .bind(reason)
            .bind(message)
            .bind(false)
            .bind(applied_revision)
            .bind(run.revision.clone())
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<i64, sqlx::Error>(id)
        })?;
        Ok(id)
    }

    /// Runs, newest first.
    pub async fn runs(&self, limit: i64) -> Result<Vec<RunSummary>, DbError> {
        let rows = on_pool!(self, pool => {
            let rows = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM reconcile_runs ORDER BY id DESC LIMIT $1"))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(RunSummary::from_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }

    /// Runs by outcome, for /metrics: (outcome, count, total milliseconds,
    /// cumulative counts at or under each of `bucket_ms`).
    pub async fn run_stats(&self, bucket_ms: &[i64]) -> Result<Vec<RunStats>, DbError> {
        let mut sql =
            String::from("SELECT outcome, COUNT(*) AS n, CAST(COALESCE(SUM(duration_ms), 0) AS BIGINT) AS total");
        for (i, b) in bucket_ms.iter().enumerate() {
            sql.push_str(&format!(", CAST(SUM(CASE WHEN duration_ms <= {b} THEN 1 ELSE 0 END) AS BIGINT) AS b{i}"));
        }
        sql.push_str(" FROM reconcile_runs GROUP BY outcome ORDER BY outcome");
        let out = on_pool!(self, pool => {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter()
                .map(|r| -> Result<RunStats, sqlx::Error> {
                    let mut buckets = Vec::with_capacity(bucket_ms.len());
                    for i in 0..bucket_ms.len() {
                        buckets.push(r.try_get::<i64, _>(format!("b{i}").as_str())?);
                    }
                    Ok(RunStats { outcome: r.try_get("outcome")?, count: r.try_get("n")?, total_ms: r.try_get("total")?, buckets })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(out)
    }

    /// One run with its plan and rendered diff.
    pub async fn run(&self, id: i64) -> Result<Option<RunDetail>, DbError> {
        let row = on_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {RUN_COLUMNS}, plan, diff, diagnostics FROM reconcile_runs WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.map(|r| -> Result<RunDetail, sqlx::Error> {
                let plan: Option<Json<serde_json::Value>> = r.try_get("plan")?;
                let diagnostics: Json<serde_json::Value> = r.try_get("diagnostics")?;
                Ok(RunDetail {
                    summary: RunSummary::from_row(&r)?,
                    plan: plan.map(|j| j.0),
                    diff: r.try_get("diff")?,
                    diagnostics: diagnostics.0,
                })
            })
            .transpose()
        })?;
        Ok(row)
    }

    /// The reconciler's status row; `None` before the first run.
    pub async fn status(&self) -> Result<Option<StatusRecord>, DbError> {
        let row = on_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT ready, ready_reason, ready_message, reconciling, reconciling_step, reconciling_since, \
                 last_applied_revision, last_attempted_revision, last_run_id, updated_at FROM reconciler_status WHERE id = 1",
            )
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(StatusRecord::from_row)
            .transpose()
        })?;
        Ok(row)
    }

    /// Marks a run as under way (Reconciling=True) in `step`, so a watcher
    /// sees it and a stuck run shows where it stuck. The first step of a
    /// run sets when it started; the run's commit clears both.
    pub async fn set_progress(&self, step: Step) -> Result<(), DbError> {
        let now = Utc::now();
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO reconciler_status (id, ready, ready_reason, ready_message, reconciling, reconciling_step, \
             reconciling_since, updated_at) VALUES (1, 'Unknown', 'Starting', '', $1, $2, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET reconciling = excluded.reconciling, \
             reconciling_step = excluded.reconciling_step, \
             reconciling_since = CASE WHEN $2 = 'planning' OR reconciler_status.reconciling_since IS NULL \
                 THEN excluded.reconciling_since ELSE reconciler_status.reconciling_since END, \
             updated_at = excluded.updated_at",
        )
        .bind(true)
        .bind(step.as_str())
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }
}

/// The Ready condition a run leaves behind: (status, reason, message).
fn condition(run: &RunRecord) -> (&'static str, &'static str, String) {
    let msg = run.error.clone().unwrap_or_default();
    if run.rollback_failed {
        return ("False", "RollbackFailed", msg);
    }
    match run.outcome {
        Outcome::Applied => ("True", "ReconciliationSucceeded", "applied".into()),
        Outcome::NoOp => ("True", "ReconciliationSucceeded", "in sync".into()),
        Outcome::DriftReported => ("True", "DriftDetected", "drift found; self-heal is off".into()),
        Outcome::Invalid => ("False", "ValidationFailed", msg),
        Outcome::Blocked => ("False", "PruneGuard", msg),
        Outcome::Failed => ("False", "ReconciliationFailed", msg),
        Outcome::Degraded => ("False", "Degraded", msg),
    }
}

/// A stable fingerprint of an extension's fields.
fn spec_hash(fields: &Fields) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in fields.iter() {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// An `extension_status` row: number, status, reason, run id, declared copy, since.
type StatusRow = (String, String, Option<String>, Option<i64>, Option<Json<serde_json::Value>>, DateTime<Utc>);

/// The `extensions` table's own columns, after the fields' (`spec::fields::COLUMNS`).
const OWN_COLUMNS: &[&str] =
    &["secret_md5", "fields", "spec_hash", "source_file", "revision", "applied_at", "sync_status", "last_error"];

/// The columns a row is written with, in bind order.
static EXTENSION_COLUMNS: LazyLock<String> =
    LazyLock::new(|| fields::COLUMNS.iter().chain(OWN_COLUMNS).copied().collect::<Vec<_>>().join(", "));

/// What an upsert of an existing number sets: every column but the number.
static UPSERT_SET: LazyLock<String> = LazyLock::new(|| {
    let set: Vec<String> = fields::COLUMNS
        .iter()
        .chain(OWN_COLUMNS)
        .filter(|c| **c != "number")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(" ON CONFLICT (number) DO UPDATE SET {}", set.join(", "))
});

/// The applied rows with their sync state (no status row: synced).
static SELECT_EXTENSIONS: LazyLock<String> = LazyLock::new(|| {
    let columns: Vec<String> = fields::COLUMNS.iter().map(|c| format!("e.{c}")).collect();
    format!(
        "SELECT {}, e.spec_hash, e.source_file, e.revision, \
         e.applied_at, COALESCE(s.status, 'synced') AS sync_status, s.reason AS last_error, s.run_id AS sync_run_id, \
         s.since AS sync_since FROM extensions e LEFT JOIN extension_status s ON s.number = e.number",
        columns.join(", ")
    )
});

/// A field's value as its column holds it.
enum Stored {
    Text(Option<String>),
    Int(i64),
    Flag(Option<bool>),
    Json(serde_json::Value),
}

/// The value of the field stored in `column` (one of `spec::fields::COLUMNS`).
/// A column without an arm here is written NULL: the round-trip test in
/// `tests/db.rs` fails for it.
fn stored(column: &str, e: &Extension) -> Stored {
    let text = |s: &str| Stored::Text(Some(s.to_string()));
    match column {
        "number" => text(&e.extension),
        "display_name" => Stored::Text(e.display_name.clone()),
        "context" => text(&e.context),
        "transport" => text(&e.transport),
        "codecs" => text(&e.codecs.join(",")),
        "secret_kind" => text(e.secret.kind()),
        "max_contacts" => Stored::Int(i64::from(e.max_contacts)),
        "qualify_frequency" => Stored::Int(i64::from(e.qualify_frequency)),
        "caller_id" => Stored::Text(e.effective_caller_id()),
        "mailboxes" => Stored::Text(Some(e.mailboxes.join(",")).filter(|m| !m.is_empty())),
        "dtmf_mode" => Stored::Text(e.dtmf_mode.clone()),
        "profile" => text(e.profile.name()),
        "direct_media" => Stored::Flag(e.direct_media),
        "rtp_symmetric" => Stored::Flag(e.rtp_symmetric),
        "force_rport" => Stored::Flag(e.force_rport),
        "rewrite_contact" => Stored::Flag(e.rewrite_contact),
        "enabled" => Stored::Flag(Some(e.enabled)),
        "labels" => {
            let labels: BTreeMap<&str, &str> = e.labels.iter().collect();
            Stored::Json(serde_json::to_value(&labels).unwrap_or_default())
        }
        "options" => text(&e.options.summary()),
        _ => Stored::Text(None),
    }
}

/// One applied extension as the database holds it. No secret value: only
/// the secret's kind (the md5 hash is not read back out).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionRecord {
    pub number: String,
    pub display_name: Option<String>,
    pub context: String,
    pub transport: String,
    pub codecs: Vec<String>,
    pub secret_kind: String,
    pub max_contacts: i64,
    pub caller_id: Option<String>,
    pub mailboxes: Vec<String>,
    pub dtmf_mode: Option<String>,
    /// `nat`, `lan` or `webrtc` (`spec::profile`). A declared copy stored
    /// before profiles existed reads as nat.
    #[serde(default = "nat")]
    pub profile: String,
    /// The aor's `qualify_frequency` (seconds; 0 is off).
    #[serde(default = "default_qualify")]
    pub qualify_frequency: i64,
    /// The NAT flags the managed file writes; `None`: not written, Asterisk's default holds.
    #[serde(default)]
    pub direct_media: Option<bool>,
    #[serde(default)]
    pub rtp_symmetric: Option<bool>,
    #[serde(default)]
    pub force_rport: Option<bool>,
    #[serde(default)]
    pub rewrite_contact: Option<bool>,
    pub enabled: bool,
    pub labels: BTreeMap<String, String>,
    /// The extra pjsip options (`options`), by `type.name` (`endpoint.timers`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub spec_hash: String,
    pub source_file: String,
    pub revision: Option<String>,
    /// `None` for an extension declared but never applied.
    pub applied_at: Option<DateTime<Utc>>,
    /// `synced`, `pending`, `failed`, `drifted` or `disabled`.
    pub sync_status: String,
    /// Why it is not synced: Asterisk's or the verifier's reason, what drifted.
    pub last_error: Option<String>,
    /// The run that set the state (`None` when synced, or set by an API write).
    #[serde(default)]
    pub sync_run_id: Option<i64>,
    /// Since when the state holds (`None` when synced).
    #[serde(default)]
    pub sync_since: Option<DateTime<Utc>>,
}

/// `endpoint.a=b;aor.c=d` (`ExtraOptions::summary`) → {endpoint.a: b, aor.c: d}.
fn options_from_summary(s: &str) -> BTreeMap<String, String> {
    s.split(';').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn nat() -> String {
    crate::core::spec::Profile::Nat.name().to_string()
}

fn default_qualify() -> i64 {
    i64::from(crate::core::spec::resolve::DEFAULT_QUALIFY_FREQUENCY)
}

impl ExtensionRecord {
    fn from_row<R: Row>(r: &R) -> Result<Self, sqlx::Error>
    where
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
        for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> Option<bool>: sqlx::Decode<'a, R::Database>,
        for<'a> Json<BTreeMap<String, String>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    {
        let list = |s: Option<String>| -> Vec<String> {
            s.map(|s| s.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect()).unwrap_or_default()
        };
        let labels: Json<BTreeMap<String, String>> = r.try_get("labels")?;
        Ok(ExtensionRecord {
            number: r.try_get("number")?,
            display_name: r.try_get("display_name")?,
            context: r.try_get("context")?,
            transport: r.try_get("transport")?,
            codecs: list(r.try_get("codecs")?),
            secret_kind: r.try_get("secret_kind")?,
            max_contacts: r.try_get("max_contacts")?,
            caller_id: r.try_get("caller_id")?,
            mailboxes: list(r.try_get("mailboxes")?),
            dtmf_mode: r.try_get("dtmf_mode")?,
            profile: r.try_get("profile")?,
            qualify_frequency: r.try_get("qualify_frequency")?,
            direct_media: r.try_get("direct_media")?,
            rtp_symmetric: r.try_get("rtp_symmetric")?,
            force_rport: r.try_get("force_rport")?,
            rewrite_contact: r.try_get("rewrite_contact")?,
            enabled: r.try_get("enabled")?,
            labels: labels.0,
            options: options_from_summary(&r.try_get::<String, _>("options")?),
            spec_hash: r.try_get("spec_hash")?,
            source_file: r.try_get("source_file")?,
            revision: r.try_get("revision")?,
            applied_at: Some(r.try_get("applied_at")?),
            sync_status: r.try_get("sync_status")?,
            last_error: r.try_get("last_error")?,
            sync_run_id: r.try_get("sync_run_id")?,
            sync_since: r.try_get("sync_since")?,
        })
    }

    /// What lists show of an extension declared but never applied.
    pub fn declared(e: &Extension) -> Self {
        ExtensionRecord {
            number: e.extension.clone(),
            display_name: e.display_name.clone(),
            context: e.context.clone(),
            transport: e.transport.clone(),
            codecs: e.codecs.clone(),
            secret_kind: e.secret.kind().to_string(),
            max_contacts: i64::from(e.max_contacts),
            caller_id: e.effective_caller_id(),
            mailboxes: e.mailboxes.clone(),
            dtmf_mode: e.dtmf_mode.clone(),
            profile: e.profile.name().to_string(),
            qualify_frequency: i64::from(e.qualify_frequency),
            direct_media: e.direct_media,
            rtp_symmetric: e.rtp_symmetric,
            force_rport: e.force_rport,
            rewrite_contact: e.rewrite_contact,
            enabled: e.enabled,
            labels: e.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            options: options_from_summary(&e.options.summary()),
            spec_hash: String::new(),
            source_file: e.origin.file.clone(),
            revision: None,
            applied_at: None,
            sync_status: "pending".into(),
            last_error: None,
            sync_run_id: None,
            sync_since: None,
        }
    }
}

const RUN_COLUMNS: &str = "id, trigger, revision, subject, started_at, finished_at, duration_ms, outcome, creates, \
     updates, deletes, reloaded, error, warning, reasons";

#[derive(Clone, Debug, Serialize, PartialEq, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: i64,
    pub trigger: String,
    pub revision: Option<String>,
    pub subject: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub outcome: String,
    pub creates: i64,
    pub updates: i64,
    pub deletes: i64,
    pub reloaded: bool,
    pub error: Option<String>,
    pub warning: Option<String>,
    /// Why the run did what it did (see `RunRecord::reasons`).
    #[sqlx(json)]
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub plan: Option<serde_json::Value>,
    pub diff: Option<String>,
    pub diagnostics: serde_json::Value,
}

/// Runs of one outcome, for /metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStats {
    pub outcome: String,
    pub count: i64,
    pub total_ms: i64,
    /// Cumulative: runs at or under each bucket bound.
    pub buckets: Vec<i64>,
}

/// Flux-style status: the Ready condition, and the revisions.
#[derive(Clone, Debug, Serialize, PartialEq, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct StatusRecord {
    pub ready: String,
    pub ready_reason: String,
    pub ready_message: String,
    pub reconciling: bool,
    /// The step the run under way is in (`planning`, `reloading`, …).
    pub reconciling_step: Option<String>,
    /// When the run under way started.
    pub reconciling_since: Option<DateTime<Utc>>,
    pub last_applied_revision: Option<String>,
    pub last_attempted_revision: Option<String>,
    pub last_run_id: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

impl StateStore for Db {
    type Error = DbError;

    async fn applied(&self) -> Result<BTreeMap<String, Fields>, DbError> {
        self.applied_fields().await
    }

    async fn applied_signature(&self) -> Result<String, DbError> {
        let (count, latest): (i64, Option<String>) = on_pool!(self, pool => sqlx::query_as(
            // Two subqueries, so each is answered from the applied_at index
        // (MAX alone is one lookup; with COUNT(*) beside it SQLite read
        // every row: 17 ms at 10k).
        "SELECT (SELECT COUNT(*) FROM extensions), (SELECT CAST(MAX(applied_at) AS TEXT) FROM extensions)",
        )
        .fetch_one(pool)
        .await)?;
        Ok(format!("{count}@{}", latest.unwrap_or_default()))
    }

    async fn commit(
        &self,
        run: &RunRecord,
        upserts: &[AppliedRow<'_>],
        deletes: &[String],
        states: &StatusUpdate<'_>,
    ) -> Result<i64, DbError> {
        self.commit_run(run, upserts, deletes, states).await
    }

    async fn progress(&self, step: Step) -> Result<(), DbError> {
        self.set_progress(step).await
    }

    async fn mark(&self, states: &StatusUpdate<'_>) -> Result<(), DbError> {
        self.set_states(states).await
    }
}
