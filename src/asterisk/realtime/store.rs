//! The realtime database: its columns, the one transaction a run writes
//! in, reading the managed rows back, and `realtime init`.

use super::{INVENTORY, ROWS_PER_STATEMENT, RealtimeError, SCHEMA_SQL, TABLES, Write, table_of};
use crate::asterisk::ari_config::sections::Section;
use crate::core::plan::Drift;
use crate::secret::{SecretString, redact_url};
use sqlx::{PgPool, Row};
use std::collections::{BTreeMap, BTreeSet};

/// The transaction-level advisory lock every write takes, so two daemons
/// on one realtime database never interleave their writes.
const WRITE_LOCK: i64 = 0x6173_7465_7269_736b; // "asterisk"

/// One column of a realtime table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// PostgreSQL's type name (`varchar`, `int4`, `float8`, an enum's name).
    pub udt: String,
    /// A character column's size.
    pub max_len: Option<i32>,
}

impl Column {
    /// Whether the column takes `value` (an empty value is NULL).
    pub fn accepts(&self, value: &str) -> Result<(), String> {
        if value.is_empty() {
            return Ok(());
        }
        if let Some(n) = self.max_len
            && value.chars().count() > n as usize
        {
            return Err(format!("longer than the column's {n} characters"));
        }
        match self.udt.as_str() {
            "int2" | "int4" | "int8" if value.trim().parse::<i64>().is_err() => Err("not a whole number".into()),
            "float4" | "float8" | "numeric" if value.trim().parse::<f64>().is_err() => Err("not a number".into()),
            _ => Ok(()),
        }
    }
}

/// The columns of the three tables and whether the inventory exists.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    pub tables: BTreeMap<String, BTreeMap<String, Column>>,
}

impl Schema {
    pub fn column(&self, table: &str, name: &str) -> Option<&Column> {
        self.tables.get(table)?.get(name)
    }
}

/// What a run's transaction did.
#[derive(Debug, Default)]
pub struct Committed {
    pub statements: usize,
    /// Extensions not written: a row of theirs exists that the inventory does not hold.
    pub conflicts: BTreeMap<String, String>,
}

/// The realtime database.
pub struct Store {
    pool: PgPool,
    /// The URL with its password as `***`, for messages.
    url: String,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Store {
    /// A pool that connects on first use.
    pub fn lazy(url: &SecretString) -> Result<Self, RealtimeError> {
        let shown = redact_url(url.expose());
        let opts: sqlx::postgres::PgConnectOptions =
            url.expose().parse().map_err(|source| RealtimeError::Database { url: shown.clone(), source })?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(opts);
        Ok(Store { pool, url: shown })
    }

    /// The pool (tests and `realtime init`).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn err(&self, source: sqlx::Error) -> RealtimeError {
        RealtimeError::Database { url: self.url.clone(), source }
    }

    /// Creates Asterisk 22's three tables and the inventory where they do
    /// not exist (`asterisk-gitops realtime init`). Tables that exist are
    /// left as they are.
    pub async fn init(&self) -> Result<(), RealtimeError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::raw_sql(SCHEMA_SQL).execute(&mut *tx).await.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// The tables' columns; a missing table (or inventory) is an error naming it.
    pub async fn schema(&self) -> Result<Schema, RealtimeError> {
        let names: Vec<String> =
            TABLES.iter().map(|(_, t)| t.to_string()).chain(std::iter::once(INVENTORY.to_string())).collect();
        let rows = sqlx::query(
            "select table_name::text, column_name::text, udt_name::text, character_maximum_length::int4 \
             from information_schema.columns where table_schema = current_schema() and table_name = any($1)",
        )
        .bind(&names)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let mut schema = Schema::default();
        for r in rows {
            let table: String = r.try_get(0).map_err(|e| self.err(e))?;
            let column: String = r.try_get(1).map_err(|e| self.err(e))?;
            let udt: String = r.try_get(2).map_err(|e| self.err(e))?;
            let max_len: Option<i32> = r.try_get(3).map_err(|e| self.err(e))?;
            schema.tables.entry(table).or_default().insert(column, Column { udt, max_len });
        }
        for table in &names {
            if !schema.tables.get(table).is_some_and(|c| c.contains_key("id")) {
                return Err(RealtimeError::MissingTable { table: table.clone() });
            }
        }
        Ok(schema)
    }

    /// Writes `writes` in one transaction: each extension's rows (every
    /// column of a managed row is the daemon's: what the object does not
    /// set is NULL), the types it no longer has deleted, the inventory
    /// kept with them. An extension with a row the inventory does not hold
    /// is a conflict and is not written at all. All or nothing.
    pub(crate) async fn write(&self, schema: &Schema, writes: &[Write]) -> Result<Committed, RealtimeError> {
        let mut out = Committed::default();
        if writes.is_empty() {
            return Ok(out);
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        out.statements += 1;
        // Conflicts: rows of ids about to be written that the inventory does
        // not hold, in every table at once (one round trip, not one a table).
        let mut selects = Vec::new();
        let mut binds: Vec<(&str, Vec<String>)> = Vec::new();
        for (kind, table) in TABLES {
            let ids: Vec<String> =
                writes.iter().filter(|w| w.rows.iter().any(|(k, _)| k == kind)).map(|w| w.id.clone()).collect();
            if ids.is_empty() {
                continue;
            }
            let (n_ids, n_kind) = (2 * binds.len() + 1, 2 * binds.len() + 2);
            selects.push(format!(
                "select ${n_kind}::text, t.id::text from {} t where t.id = any(${n_ids}) and not exists \
                 (select 1 from {} i where i.object_type = ${n_kind} and i.id = t.id)",
                ident(table),
                ident(INVENTORY)
            ));
            binds.push((kind, ids));
        }
        let mut foreign: Vec<(String, String)> = Vec::new();
        if !selects.is_empty() {
            let sql = selects.join(" union all ");
            let mut q = sqlx::query_as(&sql);
            for (kind, ids) in &binds {
                q = q.bind(ids).bind(*kind);
            }
            foreign = q.fetch_all(&mut *tx).await.map_err(|e| self.err(e))?;
            out.statements += 1;
        }
        // An id foreign in several tables is reported for the first of them.
        foreign.sort_by_key(|(kind, _)| TABLES.iter().position(|(k, _)| k == kind));
        for (kind, id) in foreign {
            let table = super::table_of(&kind).unwrap_or("its table");
            out.conflicts.entry(id.clone()).or_insert_with(|| {
                format!(
                    "{table} already holds a row {id} that asterisk-gitops did not write (it is not in its inventory {INVENTORY}): that row is left alone; delete it, or add ({kind}, {id}) to the inventory to hand it over"
                )
            });
        }
        let writes: Vec<&Write> = writes.iter().filter(|w| !out.conflicts.contains_key(&w.id)).collect();
        // The inventory rows of what is written, for every table at once at the end.
        let mut inventory: Vec<(&str, String)> = Vec::new();
        for (kind, table) in TABLES {
            let columns: Vec<(&String, &Column)> =
                schema.tables.get(table).into_iter().flatten().filter(|(c, _)| c.as_str() != "id").collect();
            let rows: Vec<(&str, &BTreeMap<String, String>)> = writes
                .iter()
                .flat_map(|w| w.rows.iter().filter(|(k, _)| k == kind).map(move |(_, r)| (w.id.as_str(), r)))
                .collect();
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut select = vec!["u.c0".to_string()];
                let mut types = vec!["$1::text[]".to_string()];
                let mut names = vec!["c0".to_string()];
                let mut set = Vec::new();
                for (i, (name, col)) in columns.iter().enumerate() {
                    let n = i + 1;
                    select.push(format!("cast(nullif(u.c{n}, '') as {})", ident(&col.udt)));
                    types.push(format!("${}::text[]", n + 1));
                    names.push(format!("c{n}"));
                    set.push(format!("{0} = excluded.{0}", ident(name)));
                }
                let conflict =
                    if set.is_empty() { "do nothing".to_string() } else { format!("do update set {}", set.join(", ")) };
                let sql = format!(
                    "insert into {} (id{}) select {} from unnest({}) as u({}) on conflict (id) {conflict}",
                    ident(table),
                    columns.iter().map(|(c, _)| format!(", {}", ident(c))).collect::<String>(),
                    select.join(", "),
                    types.join(", "),
                    names.join(", "),
                );
                let mut q = sqlx::query(&sql).bind(chunk.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>());
                for (name, _) in &columns {
                    q = q.bind(chunk.iter().map(|(_, r)| r.get(*name).cloned()).collect::<Vec<Option<String>>>());
                }
                q.execute(&mut *tx).await.map_err(|e| self.err(e))?;
                inventory.extend(chunk.iter().map(|(id, _)| (kind, id.to_string())));
                out.statements += 1;
            }
            let gone: Vec<String> =
                writes.iter().filter(|w| w.gone.iter().any(|g| g == kind)).map(|w| w.id.clone()).collect();
            for chunk in gone.chunks(ROWS_PER_STATEMENT) {
                // Only rows the inventory holds: never a blind DELETE.
                sqlx::query(&format!(
                    "delete from {} t where t.id = any($1) and exists \
                     (select 1 from {} i where i.object_type = $2 and i.id = t.id)",
                    ident(table),
                    ident(INVENTORY)
                ))
                .bind(chunk)
                .bind(kind)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
                sqlx::query(&format!("delete from {} where object_type = $1 and id = any($2)", ident(INVENTORY)))
                    .bind(kind)
                    .bind(chunk)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                out.statements += 2;
            }
        }
        for chunk in inventory.chunks(ROWS_PER_STATEMENT) {
            let (kinds, ids): (Vec<&str>, Vec<String>) = chunk.iter().cloned().unzip();
            sqlx::query(&format!(
                "insert into {} (object_type, id) select unnest($1::text[]), unnest($2::text[]) \
                 on conflict (object_type, id) do update set written_at = now()",
                ident(INVENTORY)
            ))
            .bind(&kinds)
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            out.statements += 1;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Drift in the managed rows: a recorded object whose row is gone
    /// (`MissingFromAsterisk`) or differs from the record
    /// (`ObjectDiffers`), and inventory rows no record holds (`Orphaned`).
    /// Rows the inventory does not hold are never looked at.
    pub async fn drift(
        &self,
        schema: &Schema,
        recorded: &BTreeMap<String, Vec<Section>>,
    ) -> Result<Vec<Drift>, RealtimeError> {
        let mut out = Vec::new();
        let mut missing = BTreeSet::new();
        for (kind, table) in TABLES {
            let objects: Vec<&Section> = recorded.values().flatten().filter(|s| s.kind == kind).collect();
            if objects.is_empty() {
                continue;
            }
            let mut columns: BTreeSet<&str> = BTreeSet::new();
            for s in &objects {
                columns.extend(s.fields.iter().map(|(k, _)| k.as_str()).filter(|k| schema.column(table, k).is_some()));
            }
            let columns: Vec<&str> = columns.into_iter().collect();
            let sql = format!(
                "select id::text{} from {} where id = any($1)",
                columns.iter().map(|c| format!(", {}::text", ident(c))).collect::<String>(),
                ident(table)
            );
            let ids: Vec<String> = objects.iter().map(|s| s.id.clone()).collect();
            let rows = sqlx::query(&sql).bind(&ids).fetch_all(&self.pool).await.map_err(|e| self.err(e))?;
            let mut held: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
            for r in rows {
                let id: String = r.try_get(0).map_err(|e| self.err(e))?;
                let mut values = Vec::with_capacity(columns.len());
                for i in 0..columns.len() {
                    values.push(r.try_get::<Option<String>, _>(i + 1).map_err(|e| self.err(e))?);
                }
                held.insert(id, values);
            }
            for s in objects {
                let Some(values) = held.get(&s.id) else {
                    if missing.insert(s.id.clone()) {
                        out.push(Drift::MissingFromAsterisk { extension: s.id.clone() });
                    }
                    continue;
                };
                let want = match super::row(schema, s) {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                let mut differences = Vec::new();
                for (k, v) in &want {
                    let Some(i) = columns.iter().position(|c| c == k) else { continue };
                    let col = schema.column(table, k);
                    let got = values[i].as_deref().unwrap_or("");
                    if !same(col, got, v) {
                        differences.push(if matches!(k.as_str(), "password" | "md5_cred") {
                            format!("{k}: the row holds another value than the rendering sets")
                        } else {
                            format!("{k}: the row holds {got:?}, the rendering sets {v:?}")
                        });
                    }
                }
                if !differences.is_empty() {
                    out.push(Drift::ObjectDiffers {
                        extension: s.id.clone(),
                        object_type: kind.to_string(),
                        differences,
                    });
                }
            }
        }
        let inventory: Vec<(String, String)> =
            sqlx::query_as(&format!("select object_type::text, id::text from {}", ident(INVENTORY)))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        for (kind, id) in inventory {
            if !recorded.contains_key(&id) && table_of(&kind).is_some() {
                out.push(Drift::Orphaned { object_type: kind, id });
            }
        }
        Ok(out)
    }
}

/// Whether a row's value (as text) is the rendered one.
fn same(col: Option<&Column>, got: &str, want: &str) -> bool {
    let (got, want) = (got.trim(), want.trim());
    if got == want {
        return true;
    }
    match col.map(|c| c.udt.as_str()) {
        Some("int2" | "int4" | "int8" | "float4" | "float8" | "numeric") => {
            matches!((got.parse::<f64>(), want.parse::<f64>()), (Ok(a), Ok(b)) if a == b)
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh database on the PostgreSQL of DATABASE_URL, initialised;
    /// `None` (skipped) without one, a failure under CI=true.
    pub(crate) async fn fresh() -> Option<(Store, PgPool, String)> {
        let Ok(server) = std::env::var("DATABASE_URL") else {
            assert!(std::env::var("CI").is_err(), "CI=true needs DATABASE_URL (PostgreSQL)");
            eprintln!("SKIPPED: no DATABASE_URL");
            return None;
        };
        if !server.starts_with("postgres") {
            return None;
        }
        let admin = PgPool::connect(&server).await.expect("PostgreSQL answers");
        // Tests run in parallel threads of one process: the clock alone gave
        // two of them the same name in the same microsecond (seen once).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("agt_rtu_{}_{}_{n}", std::process::id(), chrono::Utc::now().timestamp_micros());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create database");
        admin.close().await;
        let (base, _) = server.rsplit_once('/').expect("a database in the URL");
        let url = format!("{base}/{name}");
        let store = Store::lazy(&SecretString::new(url.clone())).expect("a pool");
        store.init().await.expect("init");
        let pool = PgPool::connect(&url).await.expect("connects");
        Some((store, pool, name))
    }

    fn write(id: &str, context: &str, callerid: &str) -> Write {
        let endpoint: BTreeMap<String, String> =
            [("context".to_string(), context.to_string()), ("callerid".to_string(), callerid.to_string())].into();
        let aor: BTreeMap<String, String> = [("max_contacts".to_string(), "1".to_string())].into();
        Write {
            id: id.into(),
            rows: vec![("endpoint".into(), endpoint), ("aor".into(), aor)],
            gone: vec!["auth".into()],
        }
    }

    async fn count(pool: &PgPool, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(pool).await.expect("count")
    }

    #[tokio::test]
    async fn a_failure_in_the_middle_commits_nothing_and_only_inventory_rows_are_changed() {
        let Some((store, pool, name)) = fresh().await else { return };
        let schema = store.schema().await.expect("the tables");
        // The second row is too long for Asterisk's callerid column: the statement fails after the first row.
        let long = "x".repeat(80);
        let err =
            store.write(&schema, &[write("3001", "a", "ok"), write("3002", "a", &long)]).await.expect_err("too long");
        assert!(err.to_string().contains("realtime database"), "{err}");
        assert_eq!(count(&pool, "select count(*) from ps_endpoints").await, 0, "no row written");
        assert_eq!(count(&pool, "select count(*) from asterisk_gitops_realtime").await, 0, "no inventory row");

        // A foreign row of a written id is a conflict; the other extension is written with its inventory.
        sqlx::query("insert into ps_endpoints (id, context) values ('3002', 'theirs'), ('3999', 'theirs')")
            .execute(&pool)
            .await
            .expect("insert");
        sqlx::query("insert into ps_aors (id, max_contacts) values ('3003', 1)").execute(&pool).await.expect("insert");
        let writes = [write("3001", "a", "ok"), write("3002", "a", "ok"), write("3003", "a", "ok")];
        let done = store.write(&schema, &writes).await.expect("writes");
        assert_eq!(done.conflicts.keys().collect::<Vec<_>>(), ["3002", "3003"], "a foreign row in any table");
        assert!(done.conflicts["3002"].contains("ps_endpoints already holds a row 3002"), "{:?}", done.conflicts);
        assert!(done.conflicts["3003"].contains("ps_aors already holds a row 3003"), "{:?}", done.conflicts);
        // The lock, one conflict check for every table, an upsert per table written (endpoint, aor),
        // the auth rows gone with their inventory rows, one inventory upsert (9 when each table had its own).
        assert_eq!(done.statements, 7, "round trips");
        assert_eq!(count(&pool, "select count(*) from ps_endpoints where id = '3003'").await, 0, "3003 not written");
        let theirs: String = sqlx::query_scalar("select context from ps_endpoints where id = '3002'")
            .fetch_one(&pool)
            .await
            .expect("row");
        assert_eq!(theirs, "theirs");
        assert_eq!(count(&pool, "select count(*) from asterisk_gitops_realtime where id = '3001'").await, 2);

        // Deleting: only what the inventory holds; a foreign row of the same id stays.
        let gone =
            Write { id: "3001".into(), rows: Vec::new(), gone: vec!["endpoint".into(), "aor".into(), "auth".into()] };
        let stray = Write { id: "3999".into(), rows: Vec::new(), gone: vec!["endpoint".into()] };
        store.write(&schema, &[gone, stray]).await.expect("deletes");
        assert_eq!(count(&pool, "select count(*) from ps_endpoints where id = '3001'").await, 0);
        assert_eq!(count(&pool, "select count(*) from ps_endpoints where id = '3999'").await, 1, "never ours");
        assert_eq!(count(&pool, "select count(*) from asterisk_gitops_realtime").await, 0);
        pool.close().await;
        store.pool().close().await;
        drop_db(&name).await;
    }

    pub(crate) async fn drop_db(name: &str) {
        let Ok(server) = std::env::var("DATABASE_URL") else { return };
        if let Ok(admin) = PgPool::connect(&server).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
            admin.close().await;
        }
    }
}
