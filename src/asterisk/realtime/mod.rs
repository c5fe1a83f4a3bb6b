//! The `realtime` apply target: the rendered objects written into
//! Asterisk's own realtime tables (`ps_endpoints`, `ps_auths`, `ps_aors`)
//! in PostgreSQL, which Asterisk reads through `res_config_pgsql` at the
//! next lookup (no reload, no push; several Asterisk servers on one
//! database see the same rows).
//!
//! A run takes its objects from the same rendering as the other targets
//! (`ari_config::sections`), checks the tables hold the columns they need,
//! validates each object (the column's type and size, and, with ARI
//! configured, Asterisk's own validation of a scratch object), then writes
//! the changed extensions' rows in one transaction, with the inventory
//! (`asterisk_gitops_realtime`) of the objects the daemon wrote. A row of
//! a managed id that the inventory does not hold was written by someone
//! else: that extension fails with a conflict and its row is left alone.
//! After the commit, with ARI, Asterisk's own view of each changed object
//! (ARI's dynamic configuration GET reads through sorcery) is compared with
//! the rendering.
//!
//! Architecture invariant: only rows the inventory names are updated or
//! deleted (never a blind `DELETE`), and the inventory changes in the same
//! transaction as the rows.

pub mod store;

use crate::asterisk::ari::Ari;
use crate::asterisk::ari_config::sections::{self, Section, SectionError};
use crate::asterisk::ari_config::{Known, LiveTarget, canonical_in, excerpt_in, live, splice_in};
use crate::core::plan::Drift;
use crate::reconcile::LiveRun;
use crate::secret::SecretString;
use std::collections::{BTreeMap, BTreeSet};
pub use store::{Column, Schema};

/// The realtime table of each object type.
pub const TABLES: [(&str, &str); 3] = [("endpoint", "ps_endpoints"), ("auth", "ps_auths"), ("aor", "ps_aors")];

/// The inventory table.
pub const INVENTORY: &str = "asterisk_gitops_realtime";

/// `asterisk-gitops realtime init`'s DDL: Asterisk 22's three tables and the inventory.
pub const SCHEMA_SQL: &str = include_str!("schema.sql");

/// The record's name in the state directory.
pub const RECORD_FILE: &str = "realtime-written.conf";

/// The first lines of the record of what was written.
pub const RECORD_HEADER: &str = "; Written to Asterisk's realtime tables by asterisk-gitops (apply.target: realtime).\n\
; A record of the rows the daemon wrote, kept by the daemon: Asterisk never reads this file.\n";

/// How many rows one statement writes (asterisk#1389: restoring many rows
/// at once flooded Asterisk; and a statement's parameters are bounded).
pub const ROWS_PER_STATEMENT: usize = 500;

/// Options whose value Asterisk takes as it is (names of other objects,
/// which it does not check, fact 18; secrets, never sent to a scratch
/// object; free text): not sent to a scratch object, so a cold apply of
/// thousands of extensions validates each distinct value once, not each
/// extension.
const TAKEN_AS_IS: &[&str] =
    &["aors", "auth", "outbound_auth", "username", "md5_cred", "password", "callerid", "mailboxes", "realm"];

/// The table of an object type.
pub fn table_of(kind: &str) -> Option<&'static str> {
    TABLES.iter().find(|(k, _)| *k == kind).map(|(_, t)| *t)
}

/// Why a run wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error("the realtime target cannot write it: {0}")]
    Unreadable(#[source] SectionError),
    #[error(
        "the realtime database has no table {table} (create Asterisk's tables with `asterisk-gitops realtime init`, or point apply.realtime.databaseUrl at the database Asterisk reads)"
    )]
    MissingTable { table: String },
    #[error("the realtime table {table} has no column {column}, which {kind} {id} sets; nothing was written")]
    MissingColumn { table: String, column: String, kind: String, id: String },
    #[error("the realtime database {url}: {source}")]
    Database {
        url: String,
        #[source]
        source: sqlx::Error,
    },
}

/// The realtime target of a daemon.
pub struct RealtimeTarget {
    pub(crate) store: store::Store,
    /// Asterisk's validation (scratch objects) and its view after the commit; `None` without ARI.
    ari: Option<LiveTarget<Ari>>,
    known: std::sync::Mutex<Option<Known>>,
    /// (type, option, value) Asterisk accepted on a scratch object.
    accepted: std::sync::Mutex<BTreeSet<(String, String, String)>>,
    /// Drift checks so far.
    checks: std::sync::atomic::AtomicUsize,
}

impl RealtimeTarget {
    /// A target over the realtime database at `url` (connected lazily: a
    /// database that is down is an error of the runs, not of the start).
    pub fn new(url: &SecretString, ari: Option<Ari>) -> Result<Self, RealtimeError> {
        Ok(RealtimeTarget {
            store: store::Store::lazy(url)?,
            ari: ari.map(LiveTarget::new),
            known: Default::default(),
            accepted: Default::default(),
            checks: Default::default(),
        })
    }

    /// The store (for `realtime init` and the start-up check).
    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// Asterisk's validation of the objects of `id`, on scratch objects:
    /// only the (option, value) pairs not accepted before.
    async fn validate(&self, id: &str, objects: &[Section]) -> Result<(), String> {
        let Some(ari) = &self.ari else { return Ok(()) };
        for s in objects {
            let fresh: Vec<(String, String)> = {
                let accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
                s.fields
                    .iter()
                    .filter(|(k, v)| {
                        !TAKEN_AS_IS.contains(&k.as_str())
                            && !accepted.contains(&(s.kind.clone(), k.clone(), v.clone()))
                    })
                    .cloned()
                    .collect()
            };
            if fresh.is_empty() {
                continue;
            }
            // An auth needs a username and its credential to pass: stand-ins
            // of the same shape (the spec's rules checked the real ones), so
            // no secret reaches a scratch object.
            let mut sent = fresh.clone();
            for (k, stand_in) in
                [("username", "scratch"), ("md5_cred", "0123456789abcdef0123456789abcdef"), ("password", "scratch")]
            {
                if s.fields.iter().any(|(f, _)| f == k) {
                    sent.push((k.to_string(), stand_in.to_string()));
                }
            }
            ari.validate(&s.kind, id, &sent).await.map_err(|e| e.to_string())?;
            let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in fresh {
                accepted.insert((s.kind.clone(), k, v));
            }
        }
        Ok(())
    }

    /// Asterisk's own view of `id`'s objects after the commit (ARI GET,
    /// through sorcery: it reads the realtime row), compared with the
    /// rendering. `Ok` without ARI.
    async fn verify(&self, id: &str, objects: &[Section]) -> Result<(), String> {
        let Some(ari) = &self.ari else { return Ok(()) };
        for s in objects {
            match ari.client.get_object(&s.kind, id).await {
                Ok(Some(held)) => {
                    let off = live::mismatches(&s.fields, &held);
                    if !off.is_empty() {
                        return Err(format!(
                            "{} {id} is not as rendered in Asterisk after the commit: {}",
                            s.kind,
                            off.join("; ")
                        ));
                    }
                }
                Ok(None) => {
                    return Err(format!(
                        "Asterisk cannot find {} {id} after the commit: it refuses the row (its log says why) or does not read {} (sorcery.conf, extconfig.conf)",
                        s.kind,
                        table_of(&s.kind).unwrap_or("its table")
                    ));
                }
                Err(e) => return Err(format!("reading {} {id} back through ARI: {e}", s.kind)),
            }
        }
        Ok(())
    }
}

/// One object as a row: its columns (a repeated option joined with `,`,
/// as `allow` is), checked against the table.
fn row(schema: &Schema, s: &Section) -> Result<BTreeMap<String, String>, String> {
    let table = table_of(&s.kind)
        .ok_or_else(|| format!("{} {} has no realtime table (only endpoint, auth and aor)", s.kind, s.id))?;
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &s.fields {
        match out.get_mut(k) {
            Some(prev) => {
                prev.push(',');
                prev.push_str(v);
            }
            None => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    for (k, v) in &out {
        let Some(col) = schema.column(table, k) else { continue };
        if let Err(why) = col.accepts(v) {
            let shown = if matches!(k.as_str(), "password" | "md5_cred") { "<secret>" } else { v.as_str() };
            return Err(format!("{} {}: {k} = {shown}: {why} (column {table}.{k})", s.kind, s.id));
        }
    }
    Ok(out)
}

/// What a run writes for one extension.
pub(crate) struct Write {
    pub(crate) id: String,
    /// (type, columns) of each object it has now.
    pub(crate) rows: Vec<(String, BTreeMap<String, String>)>,
    /// Types it had (in the record or the inventory) and no longer has.
    pub(crate) gone: Vec<String>,
}

impl crate::reconcile::LiveApply for RealtimeTarget {
    type Error = RealtimeError;

    fn astdb_family(&self) -> &str {
        ""
    }

    async fn push_changes(
        &self,
        record: Option<&str>,
        rendered: &str,
        asked: &BTreeSet<String>,
        orphans: &[(String, String)],
    ) -> Result<LiveRun, RealtimeError> {
        let sections::Changes { new, old, mut ids } =
            sections::changes(record, rendered, asked, "written").map_err(RealtimeError::Unreadable)?;
        let none: Vec<Section> = Vec::new();
        for (_, id) in orphans {
            if !new.contains_key(id) {
                ids.insert(id.clone());
            }
        }
        let schema = self.store.schema().await?;
        // Every column the objects to write set must exist: else nothing is written.
        for id in &ids {
            for s in new.get(id).unwrap_or(&none) {
                let Some(table) = table_of(&s.kind) else { continue };
                for (k, _) in &s.fields {
                    if schema.column(table, k).is_none() {
                        return Err(RealtimeError::MissingColumn {
                            table: table.to_string(),
                            column: k.clone(),
                            kind: s.kind.clone(),
                            id: s.id.clone(),
                        });
                    }
                }
            }
        }
        let mut run = LiveRun::default();
        let mut writes: Vec<Write> = Vec::new();
        for id in &ids {
            let objects = new.get(id).unwrap_or(&none);
            let rows: Result<Vec<_>, String> =
                objects.iter().map(|s| row(&schema, s).map(|r| (s.kind.clone(), r))).collect();
            let rows = match rows {
                Ok(r) => r,
                Err(why) => {
                    run.failures.insert(id.to_string(), why);
                    continue;
                }
            };
            if let Err(why) = self.validate(id, objects).await {
                run.failures.insert(id.to_string(), why);
                continue;
            }
            let mut gone: Vec<String> =
                TABLES.iter().map(|(k, _)| k.to_string()).filter(|k| !objects.iter().any(|s| s.kind == *k)).collect();
            gone.sort();
            writes.push(Write { id: id.to_string(), rows, gone });
        }
        let committed = self.store.write(&schema, &writes).await?;
        run.requests = committed.statements;
        for (id, why) in committed.conflicts {
            run.failures.insert(id, why);
        }
        // Asterisk's own view of what changed, a few objects at a time.
        let written: Vec<&Write> = writes.iter().filter(|w| !run.failures.contains_key(&w.id)).collect();
        for batch in written.chunks(8) {
            let mut checks = Vec::with_capacity(batch.len());
            for w in batch {
                checks.push(self.verify(&w.id, new.get(&w.id).unwrap_or(&none)));
            }
            let verdicts = futures_util::future::join_all(checks).await;
            for (w, verdict) in batch.iter().zip(verdicts) {
                match verdict {
                    Ok(()) => {
                        run.pushed.insert(w.id.clone());
                    }
                    Err(why) => {
                        run.failures.insert(w.id.clone(), why);
                    }
                }
            }
        }
        run.record = sections::record_after(new, &old, rendered, &run.failures, RECORD_HEADER);
        Ok(run)
    }

    async fn drift(&self, record: &str, _astdb_keys: &[String]) -> Vec<Drift> {
        self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(sections) = sections::parse(record) else { return Vec::new() };
        let recorded = sections::by_id(sections);
        match self.store.drift(&recorded).await {
            Ok(d) => d,
            Err(e) => {
                // The next run that writes reports a database that is down.
                tracing::debug!("reading the realtime rows back failed: {e}");
                Vec::new()
            }
        }
    }

    fn applied_how(&self) -> &'static str {
        "written to Asterisk's realtime tables in one transaction (no reload)"
    }

    fn sweep_starts(&self) -> bool {
        false
    }

    /// A small estate has Asterisk's endpoint list read on every check; a
    /// large one (each listed endpoint a realtime query) on the first
    /// check after a start only: the rows are read back from the database.
    fn lists_endpoints(&self) -> bool {
        let small = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|k| k.groups().len() <= crate::asterisk::ari_config::DRIFT_BATCH);
        small || self.checks.load(std::sync::atomic::Ordering::Relaxed) == 0
    }

    fn canonical(&self, rendered: &str, remember: bool) -> Result<String, RealtimeError> {
        canonical_in(&self.known, RECORD_HEADER, rendered, remember).map_err(RealtimeError::Unreadable)
    }

    fn excerpt(&self, record: u64, ids: &BTreeSet<String>) -> Option<String> {
        excerpt_in(&self.known, RECORD_HEADER, record, ids)
    }

    fn splice(&self, record: u64, ids: &BTreeSet<String>, part: &str) -> Option<String> {
        splice_in(&self.known, RECORD_HEADER, record, ids, part)
    }
}
