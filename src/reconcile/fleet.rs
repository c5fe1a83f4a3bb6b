//! Several Asterisk servers (`nodes:`): the first node is the lead, whose
//! reconciler records in the store as a single Asterisk always did; the
//! others follow it, each through a reconciler of its own (its Asterisk,
//! its managed file or ARI record) over a [`NodeStore`].
//!
//! The canary rule: after each lead run the followers are reconciled in
//! the order listed, one at a time, with the same desired set. A node that
//! does not answer is skipped (reported, never waited for: its AMI actions
//! time out) and the next one goes on; a node that answers and fails (a
//! refused definition, a failed verification, rolled back) stops the
//! rollout: the nodes after it are not touched and say so. The lead failing
//! while it answers stops every follower. An unreachable or skipped node
//! converges at a later run (the periodic resync or any trigger).
//!
//! With `apply.target: realtime` ([`Fleet::shared_tables`]) one commit
//! serves every node: the followers are not applied to but verified, each
//! on its own (none stops or waits for another): the extensions the lead's
//! run changed are added to what is pending for each node and read back
//! through its AMI (`run::verify`). A node that does not answer is reported
//! unreachable and keeps them pending, verified once it answers again. The
//! lead's run commits without its Asterisk too
//! (`LiveApply::commits_without_asterisk`): the lead is then verified as a
//! follower is, unreachable with the changes pending until it answers. The
//! lead failing (its commit not made) verifies nobody.
//!
//! In the daemon ([`Fleet::verify_in_background`]) each node has a task of
//! its own for that, and the loop only hands it the run's changes: a
//! verification (at 10k on realtime a cold apply's takes tens of seconds
//! per node) never holds the next change's run back. A node whose
//! verification fails retries on its own, with back-off; one that is down
//! is tried again at the next run. Each change is tagged with the run
//! ([`Round`]) that made it, so one changed again while a verification is
//! under way stays pending until a verification that read the newer set.
//! `asterisk-gitops apply` and the unit tests verify inline instead.

use super::ports::{AsteriskControl, LiveApply, StateStore};
use super::run::Reconciler;
use super::source::Desired;
use super::{AppliedRow, Outcome, RunRecord, RunReport, Trigger};
use crate::core::plan::{Action, Change, Fields, Plan};
use crate::core::status::{StatusUpdate, Step};
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The applied rows of one follower, in memory: they start empty at each
/// start of the daemon, so a follower's first run applies everything once
/// (its managed file rewritten with the same content, or each object pushed
/// again), and no node's state depends on another's record.
#[derive(Debug, Default)]
pub struct NodeStore {
    applied: Mutex<BTreeMap<String, Fields>>,
    version: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StateStore for NodeStore {
    type Error = std::convert::Infallible;
    async fn applied(&self) -> Result<BTreeMap<String, Fields>, Self::Error> {
        Ok(lock(&self.applied).clone())
    }
    async fn applied_signature(&self) -> Result<String, Self::Error> {
        Ok(self.version.load(Ordering::Relaxed).to_string())
    }
    async fn commit(
        &self,
        _run: &RunRecord,
        upserts: &[AppliedRow<'_>],
        deletes: &[String],
        _states: &StatusUpdate<'_>,
    ) -> Result<i64, Self::Error> {
        if upserts.is_empty() && deletes.is_empty() {
            return Ok(0);
        }
        let mut applied = lock(&self.applied);
        for u in upserts {
            applied.insert(u.extension.extension.clone(), u.fields());
        }
        for d in deletes {
            applied.remove(d);
        }
        Ok(self.version.fetch_add(1, Ordering::Relaxed) as i64 + 1)
    }
    async fn progress(&self, _step: Step) -> Result<(), Self::Error> {
        Ok(())
    }
    async fn mark(&self, _states: &StatusUpdate<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// How the last run went on one node.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeApply {
    /// A run's outcome (`applied`, `unchanged`, `failed`, …), or
    /// `unreachable` (skipped: it did not answer) or `skipped` (not
    /// touched: the canary rule stopped before it).
    pub outcome: String,
    pub error: Option<String>,
    pub revision: Option<String>,
    pub reloaded: bool,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The last run per node, by name (the HTTP side reads it).
pub type NodeApplies = Arc<RwLock<BTreeMap<String, NodeApply>>>;

/// What the loop runs after each lead run.
pub trait Followers: Send + Sync {
    /// Whether there is anyone to follow (else the loop keeps no copy of the desired set).
    fn any(&self) -> bool;
    /// Reconciles the followers after the lead's run; `false` when one
    /// that answered failed (the loop then retries with back-off).
    fn follow(
        &self,
        trigger: &Trigger,
        desired: &Desired,
        lead: &RunReport,
        lead_reachable: bool,
    ) -> impl Future<Output = bool> + Send;
}

/// No followers: one Asterisk.
pub struct Alone;

impl Followers for Alone {
    fn any(&self) -> bool {
        false
    }
    async fn follow(&self, _: &Trigger, _: &Desired, _: &RunReport, _: bool) -> bool {
        true
    }
}

/// One follower: a node's name and its reconciler.
pub struct Follower<A, L> {
    pub name: String,
    pub reconciler: Reconciler<NodeStore, A, L>,
}

/// The nodes after the lead, and where every node's last run is told.
pub struct Fleet<A, L> {
    pub lead: String,
    pub followers: Vec<Follower<A, L>>,
    pub applies: NodeApplies,
    /// Every node reads the lead's tables (`apply.target: realtime`): the
    /// followers are verified, never applied to.
    pub shared_tables: bool,
    /// With shared tables: per node, the extensions changed since it was
    /// last verified (it was down, its verification failed or is under
    /// way), each with the [`Round`] that last changed it.
    pub pending: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    /// With shared tables: the lead's Asterisk, to verify it as a follower
    /// is when its run committed without reaching it.
    pub lead_asterisk: Option<A>,
    /// The last round handed to the nodes' verifiers.
    rounds: tokio::sync::watch::Sender<Option<Arc<Round>>>,
    /// Rounds counted so far.
    seq: AtomicU64,
    /// Whether the verifiers run as tasks ([`Fleet::verify_in_background`]).
    background: std::sync::atomic::AtomicBool,
}

/// With shared tables: one lead run's outcome as the nodes' verifiers take
/// it: the set to verify against, and whether the lead is verified too.
#[derive(Debug)]
pub struct Round {
    desired: Desired,
    revision: Option<String>,
    seq: u64,
    lead: bool,
}

impl<A, L> Fleet<A, L> {
    /// `lead` and `followers`, every node's last run told in `applies`;
    /// with `shared_tables` the followers (and the lead through
    /// `lead_asterisk`, when its run did not reach it) are verified only.
    pub fn new(
        lead: String,
        followers: Vec<Follower<A, L>>,
        applies: NodeApplies,
        shared_tables: bool,
        lead_asterisk: Option<A>,
    ) -> Self {
        Fleet {
            lead,
            followers,
            applies,
            shared_tables,
            pending: Default::default(),
            lead_asterisk,
            rounds: tokio::sync::watch::Sender::new(None),
            seq: AtomicU64::new(0),
            background: Default::default(),
        }
    }

    /// The nodes verified with shared tables: the lead first (when it has
    /// an Asterisk of its own here), then the followers in order.
    fn verified(&self) -> impl Iterator<Item = (bool, &str, &A)> {
        let lead = self.lead_asterisk.as_ref().map(|a| (true, self.lead.as_str(), a));
        let followers =
            self.followers.iter().filter_map(|f| f.reconciler.asterisk.as_ref().map(|a| (false, f.name.as_str(), a)));
        lead.into_iter().chain(followers)
    }

    /// Whether `round` asks node `name` for a verification: a follower
    /// always; the lead when its run did not verify itself or it still has
    /// changes pending.
    fn asks(&self, is_lead: bool, name: &str, round: &Round) -> bool {
        !is_lead || round.lead || !self.pending_in(name, round).is_empty()
    }

    /// The ids pending for `name` that `round` knows of.
    fn pending_in(&self, name: &str, round: &Round) -> Vec<String> {
        lock(&self.pending)
            .get(name)
            .map(|m| m.iter().filter(|(_, seq)| **seq <= round.seq).map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    fn note(&self, name: &str, apply: NodeApply) {
        if let Ok(mut w) = self.applies.write() {
            w.insert(name.to_string(), apply);
        }
    }
}

fn from_record(r: &RunRecord) -> NodeApply {
    NodeApply {
        outcome: r.outcome.as_str().to_string(),
        error: r.error.clone(),
        revision: r.revision.clone(),
        reloaded: r.reloaded,
        at: r.finished_at,
    }
}

fn not_run(outcome: &str, why: String, revision: Option<String>) -> NodeApply {
    NodeApply { outcome: outcome.into(), error: Some(why), revision, reloaded: false, at: chrono::Utc::now() }
}

impl<A: AsteriskControl + 'static, L: LiveApply + 'static> Fleet<A, L> {
    /// Shared tables: the round that verifies the lead's run, its changes
    /// added to what is pending for each node it verifies. Every follower
    /// is verified; so is the lead when its run did not reach its Asterisk
    /// (the commit went ahead without it) or it missed changes before, else
    /// its run's own verification stands. `None` when the lead's run failed:
    /// nobody is verified (each node told why).
    fn next_round(&self, desired: &Desired, lead: &RunReport, revision: Option<String>) -> Option<Round> {
        let record = &lead.record;
        if record.outcome.is_failure() {
            self.note(&self.lead, from_record(record));
            let why =
                format!("not verified: the run on {} failed ({})", self.lead, record.error.as_deref().unwrap_or(""));
            // As on separate tables: an invalid revision is the followers' outcome too.
            let outcome = if record.outcome == Outcome::Invalid { "invalid" } else { "skipped" };
            for f in &self.followers {
                self.note(&f.name, not_run(outcome, why.clone(), revision.clone()));
            }
            return None;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut pending = lock(&self.pending);
        let lead_pending = pending.get(&self.lead).is_some_and(|p| !p.is_empty());
        let lead_verified = match (&self.lead_asterisk, &lead.unreachable) {
            (Some(_), why) => why.is_some() || lead_pending,
            (None, Some(why)) => {
                self.note(
                    &self.lead,
                    not_run("unreachable", format!("Asterisk is unreachable ({why})"), revision.clone()),
                );
                false
            }
            (None, None) => false,
        };
        if !lead_verified && lead.unreachable.is_none() {
            self.note(&self.lead, from_record(record));
        }
        let changed = record.plan.iter().flat_map(|p| p.changes.iter().map(|c| c.extension.as_str()));
        for (_, name, _) in self.verified().filter(|(is_lead, _, _)| !is_lead || lead_verified) {
            pending.entry(name.to_string()).or_default().extend(changed.clone().map(|c| (c.to_string(), seq)));
        }
        Some(Round { desired: desired.clone(), revision, seq, lead: lead_verified })
    }

    /// Whether node `name` answers; if not, it is reported unreachable,
    /// what is pending for it kept for when it answers again.
    async fn reached(&self, name: &str, a: &A, round: &Round) -> bool {
        match a.ping().await {
            Ok(()) => true,
            Err(e) => {
                let pending = lock(&self.pending).get(name).map_or(0, BTreeMap::len);
                tracing::warn!(node = %name, error = %e, pending, "node unreachable: verified when it answers again");
                self.note(
                    name,
                    not_run("unreachable", format!("Asterisk is unreachable ({e})"), round.revision.clone()),
                );
                false
            }
        }
    }

    /// Node `name`, which answered: what is pending for it (as far as
    /// `round` knows) verified through its AMI (`run::verify`); what passes
    /// is no longer pending. `false` when it failed.
    async fn check(&self, name: &str, a: &A, round: &Round) -> bool {
        let ids = self.pending_in(name, round);
        let set = &round.desired.set;
        let plan = Plan {
            changes: ids
                .iter()
                .map(|id| Change {
                    extension: id.clone(),
                    action: if set.get(id).is_some() { Action::Update } else { Action::Delete },
                    fields: Vec::new(),
                    profile: None,
                })
                .collect(),
            ..Default::default()
        };
        let (outcome, error) = if ids.is_empty() {
            ("noop", None)
        } else {
            match super::run::verify(a, set, &plan, None).await {
                Ok(_) => {
                    // What was changed again since `round` stays pending.
                    if let Some(mine) = lock(&self.pending).get_mut(name) {
                        mine.retain(|_, seq| *seq > round.seq);
                    }
                    ("applied", None)
                }
                // Nothing known per extension: everything stays pending.
                Err(v) if v.by_extension.is_empty() => ("failed", Some(v.message)),
                Err(v) => {
                    let mut pending = lock(&self.pending);
                    let mine = pending.entry(name.to_string()).or_default();
                    // One changed again since `round` (during this
                    // verification) is no failure: it is read against the
                    // newer set next. What passed is settled.
                    let wrong: BTreeMap<String, String> = v
                        .by_extension
                        .into_iter()
                        .filter(|(id, _)| mine.get(id).is_some_and(|seq| *seq <= round.seq))
                        .collect();
                    mine.retain(|id, seq| *seq > round.seq || wrong.contains_key(id));
                    match wrong.is_empty() {
                        true => ("applied", None),
                        false => ("failed", Some(super::run::failure_message(&wrong))),
                    }
                }
            }
        };
        let ok = error.is_none();
        tracing::info!(node = %name, outcome, verified = ids.len(), error = error.as_deref().unwrap_or(""), "node verified");
        let (revision, at) = (round.revision.clone(), chrono::Utc::now());
        self.note(name, NodeApply { outcome: outcome.into(), error, revision, reloaded: false, at });
        ok
    }

    /// Shared tables, inline: every node of `round` at once, each over its
    /// own AMI (the caller waits for the slowest, not for their sum).
    /// `false` when one answered and failed.
    async fn verify_inline(&self, round: &Round) -> bool {
        let checks = self
            .verified()
            .filter(|(is_lead, name, _)| self.asks(*is_lead, name, round))
            .map(|(_, name, a)| async move { !self.reached(name, a, round).await || self.check(name, a, round).await });
        futures_util::future::join_all(checks).await.into_iter().all(|ok| ok)
    }
}

impl<A, L> Fleet<A, L>
where
    A: AsteriskControl + Send + Sync + 'static,
    L: LiveApply + Send + Sync + 'static,
{
    /// With shared tables: one task per node that verifies each round the
    /// loop hands it (the loop no longer waits for any), until `stop` says
    /// `true`. A node that answers and fails is verified again after
    /// `backoff` (doubling) without waiting for a run. No tasks (and the
    /// rounds verified inline) for separate tables.
    pub fn verify_in_background(
        self: &Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
        backoff: super::backoff::BackoffConfig,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        if !self.shared_tables {
            return Vec::new();
        }
        self.background.store(true, Ordering::Relaxed);
        (0..self.verified().count())
            .map(|k| tokio::spawn(self.clone().verifier(k, self.rounds.subscribe(), stop.clone(), backoff)))
            .collect()
    }

    /// Node `k`'s verifier: waits for a round (or its retry), then, once the
    /// node answers, verifies against the newest round there is by then.
    async fn verifier(
        self: Arc<Self>,
        k: usize,
        mut rounds: tokio::sync::watch::Receiver<Option<Arc<Round>>>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        backoff: super::backoff::BackoffConfig,
    ) {
        let Some((is_lead, name, a)) = self.verified().nth(k) else { return };
        let mut failures = super::backoff::Backoff::new(backoff);
        let mut retrying = false;
        loop {
            let retry = async {
                match retrying {
                    true => tokio::time::sleep(failures.next_delay()).await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                changed = rounds.changed() => if changed.is_err() { return },
                () = retry => {}
            }
            let Some(round) = rounds.borrow_and_update().clone() else { continue };
            if !self.asks(is_lead, name, &round) {
                continue;
            }
            let verified = async {
                if !self.reached(name, a, &round).await {
                    return None;
                }
                // The newest round once it answered: a ping that took long
                // verifies what was changed meanwhile too.
                let round = rounds.borrow_and_update().clone().unwrap_or(round);
                Some(self.check(name, a, &round).await)
            };
            let verified = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                v = verified => v,
            };
            retrying = match verified {
                Some(false) => {
                    tracing::info!(node = %name, retry_in_ms = failures.fail().as_millis() as u64, "node verification failed: retrying");
                    true
                }
                // Down: tried again at the next run (the periodic one at the latest).
                None => false,
                Some(true) => {
                    failures.reset();
                    false
                }
            };
        }
    }
}

impl<A: AsteriskControl + 'static, L: LiveApply + 'static> Followers for Fleet<A, L> {
    fn any(&self) -> bool {
        !self.followers.is_empty()
    }

    async fn follow(&self, trigger: &Trigger, desired: &Desired, lead: &RunReport, lead_reachable: bool) -> bool {
        let revision = desired.source.revision.clone();
        let lead_record = &lead.record;
        if self.shared_tables {
            let Some(round) = self.next_round(desired, lead, revision) else { return true };
            if self.background.load(Ordering::Relaxed) {
                // The verifiers take it from here (and retry on their own).
                self.rounds.send_replace(Some(Arc::new(round)));
                return true;
            }
            return self.verify_inline(&round).await;
        }
        let mut stop = match lead_record.outcome {
            Outcome::Invalid | Outcome::Blocked => {
                Some(format!("not applied: {}", lead_record.error.as_deref().unwrap_or("the run was refused")))
            }
            o if o.is_failure() && lead_reachable => Some(format!(
                "not applied: the canary {} failed ({})",
                self.lead,
                lead_record.error.as_deref().unwrap_or("")
            )),
            _ => None,
        };
        if lead_reachable || !lead_record.outcome.is_failure() {
            self.note(&self.lead, from_record(lead_record));
        } else {
            self.note(
                &self.lead,
                not_run("unreachable", lead_record.error.clone().unwrap_or_default(), revision.clone()),
            );
        }
        let mut ok = true;
        for f in &self.followers {
            if let Some(why) = &stop {
                let outcome = if lead_record.outcome == Outcome::Invalid { "invalid" } else { "skipped" };
                self.note(&f.name, not_run(outcome, why.clone(), revision.clone()));
                continue;
            }
            if let Some(a) = &f.reconciler.asterisk
                && let Err(e) = a.ping().await
            {
                tracing::warn!(node = %f.name, error = %e, "node unreachable: skipped, the next one goes on");
                self.note(&f.name, not_run("unreachable", format!("Asterisk is unreachable ({e})"), revision.clone()));
                continue;
            }
            let report = f.reconciler.run(trigger.clone(), desired.clone()).await;
            let r = &report.record;
            tracing::info!(node = %f.name, outcome = r.outcome.as_str(), reloaded = r.reloaded, error = r.error.as_deref().unwrap_or(""), "node reconciled");
            self.note(&f.name, from_record(r));
            if r.outcome.is_failure() {
                ok = false;
                stop = Some(format!("not applied: {} failed before it ({})", f.name, r.error.as_deref().unwrap_or("")));
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::render::Renderer;
    use crate::reconcile::fake::{FakeAsterisk, MemFile, Script};
    use crate::reconcile::{NoLive, PruneGuard, load_dir};

    fn follower(
        name: &str,
        script: Script,
        renderer: &Arc<Renderer>,
    ) -> (Follower<FakeAsterisk, NoLive>, Arc<MemFile>) {
        let file = Arc::new(MemFile::default());
        let reconciler = Reconciler {
            store: NodeStore::default(),
            asterisk: Some(FakeAsterisk::new(file.clone(), script)),
            managed: Box::new(file.clone()),
            renderer: renderer.clone(),
            secrets: Arc::new(crate::secret::ProcessSecrets),
            realm: "asterisk".into(),
            prune: PruneGuard { max_share: 0.3, max_count: None, allow_mass_delete: false },
            self_heal: true,
            live: None,
            settled: Default::default(),
            beside: None,
        };
        (Follower { name: name.into(), reconciler }, file)
    }

    fn lead(outcome: Outcome) -> RunReport {
        let now = chrono::Utc::now();
        RunReport {
            record: RunRecord {
                trigger: Trigger::Manual,
                revision: None,
                subject: None,
                started_at: now,
                finished_at: now,
                outcome,
                plan: None,
                error: outcome.is_failure().then(|| "the lead's failure".to_string()),
                diagnostics: Vec::new(),
                reloaded: false,
                warning: None,
                reasons: Vec::new(),
                rollback_failed: false,
            },
            run_id: None,
            duration: Default::default(),
            unreachable: None,
        }
    }

    /// A spec directory declaring 1001 (kept alive by the caller), its
    /// desired set, and the built-in template.
    fn one_extension() -> (tempfile::TempDir, Desired, Arc<Renderer>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("team.yaml"),
            "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n  - extension: \"1001\"\n    md5Cred: 0123456789abcdef0123456789abcdef\n",
        )
        .expect("write");
        let desired = load_dir(dir.path());
        (dir, desired, Arc::new(Renderer::new(None).expect("the built-in template")))
    }

    #[tokio::test]
    async fn the_canary_rule_skips_a_node_that_is_down_and_stops_at_one_that_fails() {
        let (_dir, desired, renderer) = one_extension();
        let (b, b_file) = follower("b", Script { down: true, ..Default::default() }, &renderer);
        let (c, c_file) = follower("c", Script::default(), &renderer);
        let refused = Script { refused: ["1001".to_string()].into(), ..Default::default() };
        let (d, _) = follower("d", refused, &renderer);
        let (e, e_file) = follower("e", Script::default(), &renderer);
        let fleet = Fleet::new("a".into(), vec![b, c, d, e], Default::default(), false, None);

        let ok = fleet.follow(&Trigger::Manual, &desired, &lead(Outcome::Applied), true).await;
        assert!(!ok, "a node that answered and failed asks for a retry");
        let applies = fleet.applies.read().expect("lock").clone();
        let outcome = |n: &str| applies.get(n).map(|a| a.outcome.clone()).unwrap_or_default();
        assert_eq!(
            [outcome("a"), outcome("b"), outcome("c"), outcome("d"), outcome("e")],
            ["applied", "unreachable", "applied", "failed", "skipped"],
            "{applies:#?}"
        );
        assert!(b_file.text().is_none(), "the node that is down is not written");
        assert!(c_file.text().is_some_and(|t| t.contains("[1001]")), "the node after it is");
        assert!(e_file.text().is_none(), "the node after a failure is not touched");
        assert!(applies["e"].error.as_deref().is_some_and(|e| e.contains("d failed")), "{applies:#?}");

        // The canary failing while it answers: nobody after it is touched.
        let (f, f_file) = follower("f", Script::default(), &renderer);
        let fleet = Fleet::new("a".into(), vec![f], Default::default(), false, None);
        assert!(fleet.follow(&Trigger::Manual, &desired, &lead(Outcome::Failed), true).await);
        assert_eq!(fleet.applies.read().expect("lock")["f"].outcome, "skipped");
        assert!(f_file.text().is_none());
        // The canary down: the next node goes on.
        assert!(fleet.follow(&Trigger::Manual, &desired, &lead(Outcome::Failed), false).await);
        let applies = fleet.applies.read().expect("lock").clone();
        assert_eq!((applies["a"].outcome.as_str(), applies["f"].outcome.as_str()), ("unreachable", "applied"));
        assert!(f_file.text().is_some_and(|t| t.contains("[1001]")));
    }

    /// A fleet on shared tables (the realtime target).
    fn shared(
        lead_asterisk: Option<FakeAsterisk>,
        followers: Vec<Follower<FakeAsterisk, NoLive>>,
    ) -> Fleet<FakeAsterisk, NoLive> {
        Fleet::new("a".into(), followers, Default::default(), true, lead_asterisk)
    }

    /// What a node reads from the shared tables once 1001 is committed.
    fn reads_the_row(a: &FakeAsterisk) {
        let seen = crate::core::plan::ObservedEndpoint {
            name: "1001".into(),
            transport: Some("transport-udp".into()),
            context: Some("from-internal".into()),
            codecs: None,
            options: None,
        };
        lock(&a.loaded).insert("1001".into(), seen);
    }

    /// The lead's run that created 1001.
    fn creating_1001() -> RunReport {
        let mut created = lead(Outcome::Applied);
        let create = Change { extension: "1001".into(), action: Action::Create, fields: Vec::new(), profile: None };
        created.record.plan = Some(Plan { changes: vec![create], ..Default::default() });
        created
    }

    fn outcome_of(fleet: &Fleet<FakeAsterisk, NoLive>, n: &str) -> String {
        fleet.applies.read().expect("lock").get(n).map(|a| a.outcome.clone()).unwrap_or_default()
    }

    #[tokio::test]
    async fn with_shared_tables_each_node_is_verified_and_one_down_catches_up_when_back() {
        let (_dir, desired, renderer) = one_extension();
        let (b, b_file) = follower("b", Script { down: true, ..Default::default() }, &renderer);
        let (c, c_file) = follower("c", Script::default(), &renderer);
        let fleet = shared(None, vec![b, c]);
        let node = |i: usize| fleet.followers[i].reconciler.asterisk.as_ref().expect("an Asterisk");
        let outcome = |n: &str| outcome_of(&fleet, n);
        reads_the_row(node(1));
        assert!(fleet.follow(&Trigger::Manual, &desired, &creating_1001(), true).await, "a node down is no failure");
        assert_eq!([outcome("a"), outcome("b"), outcome("c")], ["applied", "unreachable", "applied"]);
        assert!(b_file.text().is_none() && c_file.text().is_none(), "nothing is applied to a follower");

        // b answers again but does not find 1001: its verification fails, the
        // next run (nothing changed) verifies it again.
        lock(&node(0).script).down = false;
        let quiet = lead(Outcome::NoOp);
        assert!(!fleet.follow(&Trigger::Manual, &desired, &quiet, true).await, "a node that answers wrong retries");
        assert_eq!([outcome("b"), outcome("c")], ["failed", "noop"]);
        reads_the_row(node(0));
        assert!(fleet.follow(&Trigger::Manual, &desired, &quiet, true).await);
        assert_eq!(outcome("b"), "applied", "what changed while it was down is verified once it answers");
        assert!(fleet.follow(&Trigger::Manual, &desired, &quiet, true).await);
        assert_eq!(outcome("b"), "noop", "and then nothing is pending");

        // The lead's commit failing verifies nobody.
        assert!(fleet.follow(&Trigger::Manual, &desired, &lead(Outcome::Failed), true).await);
        assert_eq!([outcome("b"), outcome("c")], ["skipped", "skipped"]);
    }

    /// With shared tables the nodes are verified at once: two followers
    /// whose pings answer only together are both verified.
    #[tokio::test]
    async fn with_shared_tables_the_nodes_are_verified_at_once() {
        let (_dir, desired, renderer) = one_extension();
        let meet = Script { meet: Some(Arc::new(tokio::sync::Barrier::new(2))), ..Default::default() };
        let (b, _) = follower("b", meet.clone(), &renderer);
        let (c, _) = follower("c", meet, &renderer);
        let fleet = shared(None, vec![b, c]);
        for f in &fleet.followers {
            reads_the_row(f.reconciler.asterisk.as_ref().expect("an Asterisk"));
        }
        let created = creating_1001();
        let followed = fleet.follow(&Trigger::Manual, &desired, &created, true);
        let ok = tokio::time::timeout(std::time::Duration::from_secs(10), followed).await;
        assert_eq!(ok, Ok(true), "one after the other, b's ping would wait for c's forever");
        assert_eq!([outcome_of(&fleet, "b"), outcome_of(&fleet, "c")], ["applied", "applied"]);
    }

    /// The lead's run committed without reaching its Asterisk: the lead is
    /// reported unreachable with the change pending, the others verified,
    /// and the lead verified through its AMI once it answers.
    #[tokio::test]
    async fn with_shared_tables_the_lead_down_holds_nobody_back_and_is_verified_once_back() {
        let (_dir, desired, renderer) = one_extension();
        let (b, _) = follower("b", Script::default(), &renderer);
        let (c, _) = follower("c", Script::default(), &renderer);
        let down = Script { down: true, ..Default::default() };
        let fleet = shared(Some(FakeAsterisk::new(Arc::new(MemFile::default()), down)), vec![b, c]);
        let outcome = |n: &str| outcome_of(&fleet, n);
        for f in &fleet.followers {
            reads_the_row(f.reconciler.asterisk.as_ref().expect("an Asterisk"));
        }
        let mut created = creating_1001();
        created.unreachable = Some("connection refused".into());
        assert!(fleet.follow(&Trigger::Manual, &desired, &created, false).await, "the lead down is no failure");
        assert_eq!([outcome("a"), outcome("b"), outcome("c")], ["unreachable", "applied", "applied"]);
        let a = fleet.lead_asterisk.as_ref().expect("the lead's Asterisk");
        let pending = |n: &str| -> Vec<String> {
            lock(&fleet.pending).get(n).map(|p| p.keys().cloned().collect()).unwrap_or_default()
        };
        assert_eq!(pending("a"), ["1001"], "the change waits for the lead");

        // Back, but not finding 1001 yet: failed, still pending.
        lock(&a.script).down = false;
        let quiet = lead(Outcome::NoOp);
        assert!(!fleet.follow(&Trigger::Manual, &desired, &quiet, true).await, "a lead that answers wrong retries");
        assert_eq!(outcome("a"), "failed");
        reads_the_row(a);
        assert!(fleet.follow(&Trigger::Manual, &desired, &quiet, true).await);
        assert_eq!(outcome("a"), "applied", "what it missed is verified through its AMI once it answers");
        assert!(pending("a").is_empty(), "and nothing is pending for it");
        assert!(pending("b").is_empty() && pending("c").is_empty(), "nor for the others");
    }

    /// Waits (10 s at most) for node `n`'s last run to be told as `outcome`
    /// for `revision`.
    async fn told(fleet: &Fleet<FakeAsterisk, NoLive>, n: &str, outcome: &str, revision: &str) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = fleet.applies.read().expect("lock").get(n).cloned();
            if now.as_ref().is_some_and(|a| a.outcome == outcome && a.revision.as_deref() == Some(revision)) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {n}: never {outcome} for {revision}: {now:#?}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// In the daemon each node is verified by a task of its own: the loop
    /// goes on while a node's verification is under way, a change made
    /// meanwhile is verified by it too, and a node that answers wrong
    /// retries without waiting for a run.
    #[tokio::test]
    async fn in_the_background_a_slow_node_holds_no_run_back_and_one_that_answers_wrong_retries_on_its_own() {
        let (_dir, mut desired, renderer) = one_extension();
        let gate = Arc::new(tokio::sync::Barrier::new(2));
        let (b, _) = follower("b", Script { meet: Some(gate.clone()), ..Default::default() }, &renderer);
        let (c, _) = follower("c", Script::default(), &renderer);
        let fleet = Arc::new(shared(None, vec![b, c]));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let ms = std::time::Duration::from_millis;
        let tasks = fleet.verify_in_background(stop, crate::reconcile::backoff::BackoffConfig::new(ms(10), ms(50)));
        assert_eq!(tasks.len(), 2, "one verifier per node");
        let node = |i: usize| fleet.followers[i].reconciler.asterisk.as_ref().expect("an Asterisk");
        let pending = |n: &str| -> Vec<(String, u64)> {
            lock(&fleet.pending).get(n).map(|p| p.clone().into_iter().collect()).unwrap_or_default()
        };
        reads_the_row(node(0));

        // b's ping is held: the run's follow returns all the same. c does
        // not find 1001 yet: failed.
        desired.source.revision = Some("r1".into());
        let created = creating_1001();
        let followed = fleet.follow(&Trigger::Manual, &desired, &created, true);
        assert_eq!(tokio::time::timeout(ms(10_000), followed).await, Ok(true), "the loop does not wait for b");
        told(&fleet, "c", "failed", "r1").await;

        // 1001 changed again while b is still held: pending for it from the second round.
        desired.source.revision = Some("r2".into());
        assert!(fleet.follow(&Trigger::Manual, &desired, &creating_1001(), true).await);
        assert_eq!(pending("b"), [("1001".to_string(), 2)]);

        // c finds it now: verified by its own retry, no run asked for.
        reads_the_row(node(1));
        told(&fleet, "c", "applied", "r2").await;
        assert!(pending("c").is_empty(), "{:?}", pending("c"));

        // b answers: verified against the newest round, and nothing is left.
        assert_eq!(fleet.applies.read().expect("lock").get("b"), None, "b was held all along");
        lock(&node(0).script).meet = None;
        gate.wait().await;
        told(&fleet, "b", "applied", "r2").await;
        assert!(pending("b").is_empty(), "{:?}", pending("b"));

        let _ = stop_tx.send(true);
        for t in tasks {
            assert!(tokio::time::timeout(ms(10_000), t).await.is_ok_and(|r| r.is_ok()), "a verifier stops when told");
        }
    }

    /// A spec directory (kept alive by the caller) declaring `ids` in
    /// `context`, and its desired set.
    fn declaring(ids: &[&str], context: &str) -> (tempfile::TempDir, Desired) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut yaml =
            format!("defaults: {{context: {context}, transport: transport-udp, codecs: [ulaw]}}\nextensions:\n");
        for id in ids {
            yaml.push_str(&format!("  - extension: \"{id}\"\n    md5Cred: 0123456789abcdef0123456789abcdef\n"));
        }
        std::fs::write(dir.path().join("team.yaml"), yaml).expect("write");
        let desired = load_dir(dir.path());
        (dir, desired)
    }

    /// What a node reads from the shared tables: `id` in `context`.
    fn reads(a: &FakeAsterisk, id: &str, context: &str) {
        let seen = crate::core::plan::ObservedEndpoint {
            name: id.into(),
            transport: Some("transport-udp".into()),
            context: Some(context.into()),
            codecs: None,
            options: None,
        };
        lock(&a.loaded).insert(id.into(), seen);
    }

    /// 1001 changed again while a node's verification of the first change
    /// is under way: the node already reads the newer row, which is no
    /// failure of the first round (the second verifies it).
    #[tokio::test]
    async fn a_change_made_again_during_a_verification_is_no_failure_and_the_next_round_verifies_it() {
        let (_d1, mut first) = declaring(&["1001"], "from-internal");
        let (_d2, mut second) = declaring(&["1001"], "from-sales");
        first.source.revision = Some("r1".into());
        second.source.revision = Some("r2".into());
        let renderer = Arc::new(Renderer::new(None).expect("the built-in template"));
        let gate = Arc::new(tokio::sync::Barrier::new(2));
        let (b, _) = follower("b", Script { lookup_gate: Some(gate.clone()), ..Default::default() }, &renderer);
        let fleet = Arc::new(shared(None, vec![b]));
        let node = fleet.followers[0].reconciler.asterisk.as_ref().expect("an Asterisk");
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let ms = std::time::Duration::from_millis;
        let tasks = fleet.verify_in_background(stop, crate::reconcile::backoff::BackoffConfig::new(ms(10), ms(50)));

        // The first round's lookup of 1001 is held at the gate; meanwhile the
        // second round changes 1001, and the node reads the newer row.
        assert!(fleet.follow(&Trigger::Manual, &first, &creating_1001(), true).await);
        gate.wait().await;
        assert!(fleet.follow(&Trigger::Manual, &second, &creating_1001(), true).await);
        reads(node, "1001", "from-sales");
        gate.wait().await;
        told(&fleet, "b", "applied", "r1").await;
        let pending: Vec<(String, u64)> = lock(&fleet.pending)["b"].clone().into_iter().collect();
        assert_eq!(pending, [("1001".to_string(), 2)], "still pending, for the second round");

        // The second round's verification (held at the gate too) passes.
        gate.wait().await;
        gate.wait().await;
        told(&fleet, "b", "applied", "r2").await;
        assert!(lock(&fleet.pending)["b"].is_empty());
        let _ = stop_tx.send(true);
        for t in tasks {
            assert!(tokio::time::timeout(ms(10_000), t).await.is_ok_and(|r| r.is_ok()), "a verifier stops when told");
        }
    }

    /// A verification that fails for one extension settles the others: only
    /// the one that failed is pending, and read again.
    #[tokio::test]
    async fn a_failed_verification_keeps_only_what_failed_pending() {
        let (_dir, mut desired) = declaring(&["1001", "1002", "1003"], "from-internal");
        desired.source.revision = Some("r1".into());
        let renderer = Arc::new(Renderer::new(None).expect("the built-in template"));
        let (b, _) = follower("b", Script::default(), &renderer);
        let fleet = shared(None, vec![b]);
        let node = fleet.followers[0].reconciler.asterisk.as_ref().expect("an Asterisk");
        reads(node, "1001", "from-internal");
        reads(node, "1002", "somewhere-else");
        reads(node, "1003", "from-internal");
        let mut created = lead(Outcome::Applied);
        let create =
            |id: &str| Change { extension: id.into(), action: Action::Create, fields: Vec::new(), profile: None };
        created.record.plan =
            Some(Plan { changes: vec![create("1001"), create("1002"), create("1003")], ..Default::default() });
        assert!(!fleet.follow(&Trigger::Manual, &desired, &created, true).await, "1002 is wrong on b");
        let told = fleet.applies.read().expect("lock")["b"].clone();
        assert_eq!(told.outcome, "failed");
        assert!(told.error.as_deref().is_some_and(|e| e.contains("endpoint 1002") && !e.contains("1001")), "{told:?}");
        let pending: Vec<String> = lock(&fleet.pending)["b"].keys().cloned().collect();
        assert_eq!(pending, ["1002"], "the two that passed are settled");
    }
}
