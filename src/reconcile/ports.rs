//! The ports: what a run needs of the world, as traits reconcile owns.
//! `db::Db` implements [`StateStore`], `asterisk::Asterisk`
//! [`AsteriskControl`], `managed::ManagedFile` [`ConfigFile`] and
//! `apply::LiveTarget` [`LiveApply`]; `app` wires them into a
//! [`Reconciler`](super::Reconciler). The fakes in `fake.rs` implement them
//! in memory for the unit tests of the reconcile rules.

use super::{AppliedRow, RunRecord};
use crate::core::plan::{Drift, Fields, ObservedEndpoint};
use crate::core::status::{StatusUpdate, Step};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;

/// What the store must do for the reconciler.
pub trait StateStore: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The applied extensions, as plan fields, by number.
    fn applied(&self) -> impl Future<Output = Result<BTreeMap<String, Fields>, Self::Error>> + Send;
    /// A cheap value that changes whenever the applied rows change (their
    /// count and latest write), so a run can tell that nothing did.
    fn applied_signature(&self) -> impl Future<Output = Result<String, Self::Error>> + Send;
    /// Records the run and, in the same transaction, upserts `upserts`,
    /// deletes `deletes` and sets the extensions' states. All or nothing.
    fn commit(
        &self,
        run: &RunRecord,
        upserts: &[AppliedRow<'_>],
        deletes: &[String],
        states: &StatusUpdate<'_>,
    ) -> impl Future<Output = Result<i64, Self::Error>> + Send;
    /// Marks a run under way, in `step` (the Reconciling condition); the
    /// commit clears it.
    fn progress(&self, step: Step) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Sets some extensions' states while a run is under way (what it is
    /// about to apply is pending); the commit then sets the outcome.
    fn mark(&self, states: &StatusUpdate<'_>) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What the reconciler asks of Asterisk.
pub trait AsteriskControl: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Every endpoint Asterisk has loaded (name and transport).
    fn endpoints(&self) -> impl Future<Output = Result<BTreeMap<String, ObservedEndpoint>, Self::Error>> + Send;
    /// One endpoint's detail (context, transport, codecs); `None` if Asterisk has no such endpoint.
    fn endpoint(&self, name: &str) -> impl Future<Output = Result<Option<ObservedEndpoint>, Self::Error>> + Send;
    /// Reloads res_pjsip.
    fn reload(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Whether Asterisk answers at all (cheap: no list).
    fn ping(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// The keys Asterisk's astdb holds under `family` (`/family/endpoint/1001`),
    /// never their values (an auth's holds its secret). Only the ari target
    /// asks: the objects its sorcery wizard stores there.
    fn astdb_keys(&self, family: &str) -> impl Future<Output = Result<Vec<String>, Self::Error>> + Send {
        let _ = family;
        async { Ok(Vec::new()) }
    }
}

/// The file a run writes: the managed pjsip file Asterisk reads (or, with
/// the ari target, the record of what was pushed, which it never reads).
/// Writes are atomic and keep what they replaced for [`restore_previous`](ConfigFile::restore_previous).
pub trait ConfigFile: Send + Sync {
    /// Where it is, for messages.
    fn path(&self) -> &Path;
    /// Its content; `None` if it does not exist yet.
    fn read(&self) -> std::io::Result<Option<String>>;
    /// Replaces it with `text`, keeping what it held for a rollback.
    fn write(&self, text: &str) -> std::io::Result<()>;
    /// Puts what the last write replaced back; `false` when there was
    /// nothing (the file is then emptied of sections).
    fn restore_previous(&self) -> std::io::Result<bool>;
    /// Replaces it with `text` without keeping what it held and without
    /// waiting for the disk (the ari target's record, which nothing rolls
    /// back to and a run can rebuild: at 10k extensions keeping it doubled
    /// what each change wrote, and the flush took 40–200 ms).
    fn replace(&self, text: &str) -> std::io::Result<()> {
        self.write(text)
    }
}

/// What one run's pushes came to (the ari target).
#[derive(Debug, Default)]
pub struct LiveRun {
    /// Ids whose objects are now as rendered.
    pub pushed: BTreeSet<String>,
    /// Ids Asterisk refused (or that are not as rendered), with the reason.
    pub failures: BTreeMap<String, String>,
    /// The new record: the rendering when every push worked, else the
    /// rendering with the failed ids as they were before.
    pub record: String,
    /// Requests sent.
    pub requests: usize,
    /// What the target could not do and why (Asterisk's validation skipped:
    /// no node's ARI answers), for the run's reasons.
    pub notes: Vec<String>,
}

/// A live apply target (`apply.target: ari`): changes reach Asterisk one
/// extension at a time, each verified from Asterisk's answer, no reload.
pub trait LiveApply: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The astdb family the pushed objects are stored under (for
    /// [`AsteriskControl::astdb_keys`]).
    fn astdb_family(&self) -> &str;
    /// Pushes every id in `asked` and every id whose sections differ
    /// between `record` (what was pushed before) and `rendered`, and
    /// deletes `orphans` (type, id). `repair` (a subset of `asked`): the ids
    /// whose drift is repaired, every object pushed again; of the others,
    /// a target may leave alone an object the record holds as rendered.
    /// Errors only when nothing was pushed.
    fn push_changes(
        &self,
        record: Option<&str>,
        rendered: &str,
        asked: &BTreeSet<String>,
        repair: &BTreeSet<String>,
        orphans: &[(String, String)],
    ) -> impl Future<Output = Result<LiveRun, Self::Error>> + Send;
    /// Drift in what was pushed: a batch read back, and the keys of the
    /// astdb family no record holds.
    fn drift(&self, record: &str, astdb_keys: &[String]) -> impl Future<Output = Vec<Drift>> + Send;
    /// How a run's reasons say the changes reached Asterisk.
    fn applied_how(&self) -> &'static str {
        "pushed through ARI (no reload)"
    }
    /// Whether the next drift check lists the astdb family for orphans.
    fn sweep_starts(&self) -> bool;
    /// Whether a run may commit while its Asterisk (the first node) does
    /// not answer: the realtime tables that several nodes read, where one
    /// commit serves them all and each node is verified on its own
    /// (`reconcile::fleet`). Otherwise such a run writes nothing.
    fn commits_without_asterisk(&self) -> bool {
        false
    }
    /// Whether a run with nothing to change reads Asterisk's endpoint list.
    fn lists_endpoints(&self) -> bool;
    /// Whether that list, when [`lists_endpoints`](LiveApply::lists_endpoints)
    /// asks for it, is read beside the loop rather than in a run (see
    /// `run::BesideList`): a large realtime estate, where every listed
    /// endpoint is a realtime query (6 s at 10k, which held up the first
    /// run after a start or a take-over).
    fn lists_endpoints_beside(&self) -> bool {
        false
    }
    /// Told each time a run has compared an endpoint list of Asterisk's.
    fn endpoints_listed(&self) {}
    /// The record of `rendered` in the one form the target keeps it (its
    /// objects by id, comments dropped): what a run compares with the
    /// record and writes. With `remember`, the target keeps the objects
    /// read, so that [`excerpt`](LiveApply::excerpt) and
    /// [`splice`](LiveApply::splice) of this record need no second reading.
    fn canonical(&self, rendered: &str, remember: bool) -> Result<String, Self::Error> {
        let _ = remember;
        Ok(rendered.to_string())
    }
    /// The objects of `ids` in the remembered record whose fingerprint is
    /// `record`, as a record of their own; `None` when that record is not
    /// the one remembered (the run then takes the whole way).
    fn excerpt(&self, record: u64, ids: &BTreeSet<String>) -> Option<String> {
        let _ = (record, ids);
        None
    }
    /// The remembered record `record` with the objects of `ids` replaced by
    /// those `part` holds (a record of just those ids; an id it lacks is
    /// gone): the new whole record, remembered in its place. `None` when
    /// `record` is not the one remembered.
    fn splice(&self, record: u64, ids: &BTreeSet<String>, part: &str) -> Option<String> {
        let _ = (record, ids, part);
        None
    }
}

/// No live target: the managed file is written and reloaded.
#[derive(Debug)]
pub enum NoLive {}

impl LiveApply for NoLive {
    type Error = std::convert::Infallible;
    fn astdb_family(&self) -> &str {
        match *self {}
    }
    async fn push_changes(
        &self,
        _: Option<&str>,
        _: &str,
        _: &BTreeSet<String>,
        _: &BTreeSet<String>,
        _: &[(String, String)],
    ) -> Result<LiveRun, Self::Error> {
        match *self {}
    }
    async fn drift(&self, _: &str, _: &[String]) -> Vec<Drift> {
        match *self {}
    }
    fn sweep_starts(&self) -> bool {
        match *self {}
    }
    fn lists_endpoints(&self) -> bool {
        match *self {}
    }
}
