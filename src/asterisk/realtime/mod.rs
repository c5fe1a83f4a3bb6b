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
//! Every node reads the same tables, so Asterisk's checks are asked of any
//! node's ARI: the one that answered last, else the next that answers. With
//! several nodes none answering holds no commit back: the checks are
//! skipped, the run's reasons say so, and each node is verified through its
//! AMI (`reconcile::fleet`).
//!
//! Architecture invariant: only rows the inventory names are updated or
//! deleted (never a blind `DELETE`), and the inventory changes in the same
//! transaction as the rows.

pub mod store;

use crate::asterisk::ari::{Ari, AriError, Attributes};
use crate::asterisk::ari_config::sections::{self, Section, SectionError};
use crate::asterisk::ari_config::{Known, LiveTarget, PushError, canonical_in, excerpt_in, live, splice_in};
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

/// One node's ARI, for Asterisk's validation and view of the rows.
struct NodeAri {
    node: String,
    target: LiveTarget<Ari>,
}

/// One run's asking of the nodes' ARIs: once none answers, the rest of the
/// run asks none (a node that does not answer may take its timeout).
#[derive(Default)]
struct Asking {
    /// Why each node that did not answer did not, by node.
    down: std::sync::Mutex<BTreeMap<String, String>>,
    /// Set once no node's ARI answered a request.
    none: std::sync::atomic::AtomicBool,
    /// Extensions committed without Asterisk's validation, and without its read-back.
    unvalidated: std::sync::atomic::AtomicUsize,
    unread: std::sync::atomic::AtomicUsize,
}

impl Asking {
    fn not_answered(&self, node: &str, e: &AriError) {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).entry(node.to_string()).or_insert_with(|| e.to_string());
    }

    /// Why no node's ARI answers.
    fn why(&self) -> String {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_empty() {
            return "no node offers ARI".to_string();
        }
        let each: Vec<String> = down.iter().map(|(node, e)| format!("{node}: {e}")).collect();
        format!("no node's ARI answers ({})", each.join("; "))
    }

    /// The run's reasons for what was skipped.
    fn notes(&self) -> Vec<String> {
        let count = |n: &std::sync::atomic::AtomicUsize| n.load(std::sync::atomic::Ordering::Relaxed);
        let mut out = Vec::new();
        if count(&self.unvalidated) > 0 {
            out.push(format!(
                "{} extension(s) committed without Asterisk's validation of a scratch object: {}",
                count(&self.unvalidated),
                self.why()
            ));
        }
        if count(&self.unread) > 0 {
            out.push(format!(
                "{} extension(s) not read back through ARI after the commit: {}",
                count(&self.unread),
                self.why()
            ));
        }
        out
    }
}

/// Whether an ARI did not answer at all (as opposed to answering no).
fn unanswered(e: &AriError) -> bool {
    matches!(e, AriError::Unreachable { .. } | AriError::Timeout { .. })
}

/// The realtime target of a daemon.
pub struct RealtimeTarget {
    pub(crate) store: store::Store,
    /// The ARI of each node that offers one, in the nodes' order: Asterisk's
    /// validation (scratch objects) and its view after the commit.
    aris: Vec<NodeAri>,
    /// The index in `aris` of the one that answered last (asked first).
    answering: std::sync::atomic::AtomicUsize,
    /// How many nodes read the tables (with or without ARI).
    nodes: usize,
    known: std::sync::Mutex<Option<Known>>,
    /// (type, option, value) Asterisk accepted on a scratch object.
    accepted: std::sync::Mutex<BTreeSet<(String, String, String)>>,
    /// Whether a run has compared Asterisk's endpoint list since the start.
    listed: std::sync::atomic::AtomicBool,
    /// The tables' columns as last read, and when (see [`SCHEMA_MAX_AGE`]).
    schema: std::sync::Mutex<Option<(std::sync::Arc<Schema>, std::time::Instant)>>,
}

/// How long the tables' columns, once read, serve the runs that follow
/// (information_schema answers in tens of milliseconds, on every run of a
/// one-extension change before it). A run whose objects set a column the
/// remembered columns lack reads them again before it refuses; a failed
/// write forgets them.
pub const SCHEMA_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);

impl RealtimeTarget {
    /// With no record of its own (a replica that never led, a state
    /// directory lost), every extension counts as changed. The tables are
    /// shared, though: the extensions whose rows already hold what is
    /// rendered (the rows compared as a drift check compares them) are
    /// left out of `ids`, not written and read back again. A take-over by
    /// such a replica at 10k wrote and verified every extension (11.7 s);
    /// the comparison takes about 0.2 s. Those the run asked for stay.
    async fn keep_rows_already_held(
        &self,
        schema: &Schema,
        new: &BTreeMap<String, Vec<Section>>,
        asked: &BTreeSet<String>,
        ids: &mut BTreeSet<String>,
    ) {
        let started = std::time::Instant::now();
        let candidates: BTreeMap<String, Vec<Section>> = new
            .iter()
            .filter(|(id, _)| ids.contains(*id) && !asked.contains(*id))
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        if candidates.is_empty() {
            return;
        }
        match self.store.drift(schema, &candidates).await {
            Ok(drift) => {
                let differ: BTreeSet<&str> = drift.iter().filter_map(crate::core::status::drift_extension).collect();
                let before = ids.len();
                ids.retain(|id| !candidates.contains_key(id) || differ.contains(id.as_str()));
                tracing::info!(
                    held = before - ids.len(),
                    to_write = ids.len(),
                    took_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "no record of what was written: rows that already hold the rendering are kept as they are"
                );
            }
            // Written again, as without a record.
            Err(e) => tracing::debug!("comparing the rows before a first write failed: {e}"),
        }
    }

    /// An estate small enough to have Asterisk's endpoint list read on
    /// every check (no more extensions than one drift batch).
    fn small(&self) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|k| k.groups().len() <= crate::asterisk::ari_config::DRIFT_BATCH)
    }

    /// A target over the realtime database at `url` (connected lazily: a
    /// database that is down is an error of the runs, not of the start),
    /// read by `nodes` (each one's name and ARI, if it offers one; the first
    /// node first).
    pub fn new(url: &SecretString, nodes: Vec<(String, Option<Ari>)>) -> Result<Self, RealtimeError> {
        Ok(RealtimeTarget {
            store: store::Store::lazy(url)?,
            nodes: nodes.len(),
            aris: nodes
                .into_iter()
                .filter_map(|(node, ari)| ari.map(|a| NodeAri { node, target: LiveTarget::new(a) }))
                .collect(),
            answering: Default::default(),
            known: Default::default(),
            accepted: Default::default(),
            listed: Default::default(),
            schema: Default::default(),
        })
    }

    /// The tables' columns: the remembered ones unless `fresh` or too old.
    async fn schema(&self, fresh: bool) -> Result<std::sync::Arc<Schema>, RealtimeError> {
        if !fresh {
            let cached = self.schema.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((schema, _)) = cached.as_ref().filter(|(_, at)| at.elapsed() < SCHEMA_MAX_AGE) {
                return Ok(schema.clone());
            }
        }
        let read = std::time::Instant::now();
        let schema = std::sync::Arc::new(self.store.schema().await.inspect_err(|_| self.forget_schema())?);
        *self.schema.lock().unwrap_or_else(|p| p.into_inner()) = Some((schema.clone(), read));
        Ok(schema)
    }

    fn forget_schema(&self) {
        *self.schema.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The store (for `realtime init` and the start-up check).
    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// The nodes' ARIs to ask in turn: the one that answered last first;
    /// none once no node answered in this run.
    fn in_turn<'a>(&'a self, asking: &Asking) -> impl Iterator<Item = (usize, &'a NodeAri)> + 'a {
        let first = self.answering.load(std::sync::atomic::Ordering::Relaxed);
        let n = if asking.none.load(std::sync::atomic::Ordering::Relaxed) { 0 } else { self.aris.len() };
        (0..n).map(move |k| (first + k) % n).filter_map(|i| self.aris.get(i).map(|a| (i, a)))
    }

    fn answered(&self, i: usize) {
        self.answering.store(i, std::sync::atomic::Ordering::Relaxed);
    }

    /// No node's ARI answered: with other nodes reading the tables the
    /// check is skipped (`Ok`), with one node it fails (`Err`, why).
    fn none_answers(&self, asking: &Asking) -> Result<(), String> {
        asking.none.store(true, std::sync::atomic::Ordering::Relaxed);
        if self.nodes > 1 || self.aris.is_empty() { Ok(()) } else { Err(asking.why()) }
    }

    /// Asterisk's validation of one object on a scratch object, on the ARI
    /// that answered last or the next that answers; `Ok(false)`: skipped
    /// (see [`none_answers`](Self::none_answers)).
    async fn validate_on_any(
        &self,
        asking: &Asking,
        kind: &str,
        id: &str,
        sent: &[(String, String)],
    ) -> Result<bool, String> {
        for (i, ari) in self.in_turn(asking) {
            match ari.target.validate(kind, id, sent).await {
                Err(PushError::Put { source, .. }) if unanswered(&source) => asking.not_answered(&ari.node, &source),
                answer => {
                    self.answered(i);
                    return answer.map(|()| true).map_err(|e| e.to_string());
                }
            }
        }
        self.none_answers(asking).map(|()| false)
    }

    /// Asterisk's view of one object, on the ARI that answered last or the
    /// next that answers; `Ok(None)`: skipped (see [`none_answers`](Self::none_answers)).
    async fn get_on_any(&self, asking: &Asking, kind: &str, id: &str) -> Result<Option<Option<Attributes>>, String> {
        for (i, ari) in self.in_turn(asking) {
            match ari.target.client.get_object(kind, id).await {
                Err(e) if unanswered(&e) => asking.not_answered(&ari.node, &e),
                answer => {
                    self.answered(i);
                    return answer.map(Some).map_err(|e| format!("reading {kind} {id} back through ARI: {e}"));
                }
            }
        }
        self.none_answers(asking).map(|()| None)
    }

    /// Asterisk's validation of the objects of `id`, on scratch objects:
    /// only the (option, value) pairs not accepted before.
    async fn validate(&self, asking: &Asking, id: &str, objects: &[Section]) -> Result<(), String> {
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
            if !self.validate_on_any(asking, &s.kind, id, &sent).await? {
                asking.unvalidated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in fresh {
                accepted.insert((s.kind.clone(), k, v));
            }
        }
        Ok(())
    }

    /// Asterisk's own view of `id`'s objects after the commit (ARI GET,
    /// through sorcery: it reads the realtime row), compared with the
    /// rendering. `Ok` when skipped (no node's ARI answers).
    async fn verify(&self, asking: &Asking, id: &str, objects: &[Section]) -> Result<(), String> {
        for s in objects {
            match self.get_on_any(asking, &s.kind, id).await? {
                None => {
                    asking.unread.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                Some(Some(held)) => {
                    let off = live::mismatches(&s.fields, &held);
                    if !off.is_empty() {
                        return Err(format!(
                            "{} {id} is not as rendered in Asterisk after the commit: {}",
                            s.kind,
                            off.join("; ")
                        ));
                    }
                }
                Some(None) => {
                    return Err(format!(
                        "Asterisk cannot find {} {id} after the commit: it refuses the row (its log says why) or does not read {} (sorcery.conf, extconfig.conf)",
                        s.kind,
                        table_of(&s.kind).unwrap_or("its table")
                    ));
                }
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

/// `Err(MissingColumn)` for the first column that an object of `ids` sets
/// and its table lacks.
fn missing_column(
    schema: &Schema,
    ids: &BTreeSet<String>,
    new: &BTreeMap<String, Vec<Section>>,
) -> Result<(), RealtimeError> {
    for s in ids.iter().filter_map(|id| new.get(id)).flatten() {
        let Some(table) = table_of(&s.kind) else { continue };
        if let Some((k, _)) = s.fields.iter().find(|(k, _)| schema.column(table, k).is_none()) {
            return Err(RealtimeError::MissingColumn {
                table: table.to_string(),
                column: k.clone(),
                kind: s.kind.clone(),
                id: s.id.clone(),
            });
        }
    }
    Ok(())
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
        // Rows are written in one transaction, unchanged ones included.
        _repair: &BTreeSet<String>,
        orphans: &[(String, String)],
    ) -> Result<LiveRun, RealtimeError> {
        let sections::Changes { new, old, mut ids } =
            sections::changes(record, rendered, asked, "written").map_err(RealtimeError::Unreadable)?;
        let started = std::time::Instant::now();
        let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
        let none: Vec<Section> = Vec::new();
        for (_, id) in orphans {
            if !new.contains_key(id) {
                ids.insert(id.clone());
            }
        }
        // Every column the objects to write set must exist: else nothing is
        // written. Remembered columns that lack one are read again first.
        let mut schema = self.schema(false).await?;
        if let Err(missing) = missing_column(&schema, &ids, &new) {
            schema = self.schema(true).await?;
            if missing_column(&schema, &ids, &new).is_err() {
                return Err(missing);
            }
        }
        if record.is_none() {
            self.keep_rows_already_held(&schema, &new, asked, &mut ids).await;
        }
        let checked = std::time::Instant::now();
        let mut run = LiveRun::default();
        let asking = Asking::default();
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
            if let Err(why) = self.validate(&asking, id, objects).await {
                run.failures.insert(id.to_string(), why);
                continue;
            }
            let mut gone: Vec<String> =
                TABLES.iter().map(|(k, _)| k.to_string()).filter(|k| !objects.iter().any(|s| s.kind == *k)).collect();
            gone.sort();
            writes.push(Write { id: id.to_string(), rows, gone });
        }
        // A failed write may be the tables changing under remembered columns.
        let validated = std::time::Instant::now();
        let committed = self.store.write(&schema, &writes).await.inspect_err(|_| self.forget_schema())?;
        tracing::debug!(
            columns_ms = checked.duration_since(started).as_secs_f64() * 1000.0,
            validate_ms = validated.duration_since(checked).as_secs_f64() * 1000.0,
            write_ms = ms(validated),
            extensions = writes.len(),
            "realtime rows committed"
        );
        let verifying = std::time::Instant::now();
        run.requests = committed.statements;
        for (id, why) in committed.conflicts {
            run.failures.insert(id, why);
        }
        // Asterisk's own view of what changed, a few objects at a time.
        let written: Vec<&Write> = writes.iter().filter(|w| !run.failures.contains_key(&w.id)).collect();
        for batch in written.chunks(8) {
            let mut checks = Vec::with_capacity(batch.len());
            for w in batch {
                checks.push(self.verify(&asking, &w.id, new.get(&w.id).unwrap_or(&none)));
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
        tracing::debug!(verify_ms = ms(verifying), "realtime rows read back through ARI");
        run.notes = asking.notes();
        run.record = sections::record_after(new, &old, rendered, &run.failures, RECORD_HEADER);
        Ok(run)
    }

    async fn drift(&self, record: &str, _astdb_keys: &[String]) -> Vec<Drift> {
        let started = std::time::Instant::now();
        let Ok(sections) = sections::parse(record) else { return Vec::new() };
        let recorded = sections::by_id(sections);
        let drift = match self.schema(false).await {
            Ok(schema) => self.store.drift(&schema, &recorded).await,
            Err(e) => Err(e),
        };
        tracing::debug!(took_ms = started.elapsed().as_secs_f64() * 1000.0, "realtime rows compared with the record");
        match drift {
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

    /// Several nodes read the tables: a commit serves the others while the
    /// first does not answer.
    fn commits_without_asterisk(&self) -> bool {
        self.nodes > 1
    }

    /// A small estate has Asterisk's endpoint list read on every check; a
    /// large one (each listed endpoint a realtime query) until one list has
    /// been compared after a start, and read beside the loop: every check
    /// reads the rows back from the database.
    fn lists_endpoints(&self) -> bool {
        self.small() || !self.listed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lists_endpoints_beside(&self) -> bool {
        !self.small()
    }

    fn endpoints_listed(&self) {
        self.listed.store(true, std::sync::atomic::Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::LiveApply;

    fn rendered(id: &str, column: &str, value: &str) -> String {
        format!("[{id}]\ntype = endpoint\ncontext = default\n{column} = {value}\n")
    }

    /// The columns are read once and remembered; a run whose object sets a
    /// column they lack reads them again (a column added since is found),
    /// and a write that fails forgets them (a column dropped since is then
    /// reported as missing, with nothing written).
    #[tokio::test]
    async fn remembered_columns_are_read_again_when_an_object_sets_one_they_lack_or_a_write_fails() {
        let Some((store, pool, name)) = store::tests::fresh().await else { return };
        let target = RealtimeTarget {
            store,
            ..RealtimeTarget::new(&SecretString::new("postgres://x/y"), Vec::new()).expect("a target")
        };
        let asked = BTreeSet::new();
        let run = target
            .push_changes(None, &rendered("3001", "language", "en"), &asked, &BTreeSet::new(), &[])
            .await
            .expect("written");
        assert_eq!(run.pushed.iter().collect::<Vec<_>>(), ["3001"], "{:?}", run.failures);

        sqlx::query("alter table ps_endpoints add column x_added varchar(40)").execute(&pool).await.expect("alter");
        let record = run.record;
        let run = target
            .push_changes(Some(&record), &rendered("3001", "x_added", "yes"), &asked, &BTreeSet::new(), &[])
            .await;
        assert!(run.is_ok_and(|r| r.failures.is_empty()), "the added column is found");
        let held: Option<String> = sqlx::query_scalar("select x_added from ps_endpoints where id = '3001'")
            .fetch_one(&pool)
            .await
            .expect("row");
        assert_eq!(held.as_deref(), Some("yes"));

        sqlx::query("alter table ps_endpoints drop column x_added").execute(&pool).await.expect("alter");
        let again = rendered("3002", "x_added", "no");
        let failed = target
            .push_changes(None, &again, &asked, &BTreeSet::new(), &[])
            .await
            .map(|_| ())
            .expect_err("the column is gone");
        assert!(matches!(failed, RealtimeError::Database { .. }), "{failed}");
        let refused =
            target.push_changes(None, &again, &asked, &BTreeSet::new(), &[]).await.map(|_| ()).expect_err("read again");
        assert!(matches!(&refused, RealtimeError::MissingColumn { column, .. } if column == "x_added"), "{refused}");
        let rows: i64 = sqlx::query_scalar("select count(*) from ps_endpoints where id = '3002'")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(rows, 0, "nothing written");
        pool.close().await;
        target.store.pool().close().await;
        store::tests::drop_db(&name).await;
    }
}
