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
//! on its own and all at once (none stops or waits for another): the
//! extensions the lead's run changed are read back through each node's AMI
//! (`run::verify`). A node that does
//! not answer is reported unreachable and keeps those extensions pending,
//! verified at the first run it answers again. The lead's run commits
//! without its Asterisk too (`LiveApply::commits_without_asterisk`): the
//! lead is then verified as a follower is, unreachable with the changes
//! pending until it answers. The lead failing (its commit not made)
//! verifies nobody.

use super::ports::{AsteriskControl, LiveApply, StateStore};
use super::run::Reconciler;
use super::source::Desired;
use super::{AppliedRow, Outcome, RunRecord, RunReport, Trigger};
use crate::core::plan::{Action, Change, Fields, Plan};
use crate::core::status::{StatusUpdate, Step};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
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
    /// With shared tables: per node, the extensions changed since it
    /// was last verified (it was down, or its verification failed).
    pub pending: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// With shared tables: the lead's Asterisk, to verify it as a follower
    /// is when its run committed without reaching it.
    pub lead_asterisk: Option<A>,
}

impl<A, L> Fleet<A, L> {
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
    /// Shared tables: each node verified on its own. A follower has the
    /// lead's changes and what was pending for it read back through its
    /// AMI; so has the lead when its run did not reach its Asterisk (the
    /// commit went ahead without it) or it missed changes before, else its
    /// run's own verification stands.
    async fn verify_nodes(&self, desired: &Desired, lead: &RunReport, revision: Option<String>) -> bool {
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
            return true;
        }
        let changed: Vec<&str> =
            record.plan.iter().flat_map(|p| p.changes.iter().map(|c| c.extension.as_str())).collect();
        // Every node at once, each over its own AMI: the loop (the next
        // change's run) waits for the slowest node, not for their sum.
        let mut checks = Vec::new();
        let lead_pending = lock(&self.pending).get(&self.lead).is_some_and(|p| !p.is_empty());
        match (&self.lead_asterisk, &lead.unreachable) {
            (Some(a), why) if why.is_some() || lead_pending => {
                checks.push(self.verify_node(&self.lead, a, &changed, desired, &revision));
            }
            (None, Some(why)) => self
                .note(&self.lead, not_run("unreachable", format!("Asterisk is unreachable ({why})"), revision.clone())),
            _ => self.note(&self.lead, from_record(record)),
        }
        for f in &self.followers {
            if let Some(a) = &f.reconciler.asterisk {
                checks.push(self.verify_node(&f.name, a, &changed, desired, &revision));
            }
        }
        futures_util::future::join_all(checks).await.into_iter().all(|ok| ok)
    }

    /// One node with shared tables: `changed` added to what is pending for
    /// it, then, if it answers, all of that verified through its AMI
    /// (`run::verify`); what passes is no longer pending. `false` when it
    /// answered and failed.
    async fn verify_node(
        &self,
        name: &str,
        a: &A,
        changed: &[&str],
        desired: &Desired,
        revision: &Option<String>,
    ) -> bool {
        let ids = {
            let mut pending = lock(&self.pending);
            let mine = pending.entry(name.to_string()).or_default();
            mine.extend(changed.iter().map(|c| c.to_string()));
            mine.clone()
        };
        if let Err(e) = a.ping().await {
            tracing::warn!(node = %name, error = %e, pending = ids.len(), "node unreachable: verified when it answers again");
            self.note(name, not_run("unreachable", format!("Asterisk is unreachable ({e})"), revision.clone()));
            return true;
        }
        let plan = Plan {
            changes: ids
                .iter()
                .map(|id| Change {
                    extension: id.clone(),
                    action: if desired.set.get(id).is_some() { Action::Update } else { Action::Delete },
                    fields: Vec::new(),
                    profile: None,
                })
                .collect(),
            ..Default::default()
        };
        let mut ok = true;
        let (outcome, error) = if ids.is_empty() {
            ("noop", None)
        } else {
            match super::run::verify(a, &desired.set, &plan, None).await {
                Ok(_) => {
                    if let Some(mine) = lock(&self.pending).get_mut(name) {
                        mine.retain(|id| !ids.contains(id));
                    }
                    ("applied", None)
                }
                Err(v) => {
                    ok = false;
                    ("failed", Some(v.message))
                }
            }
        };
        tracing::info!(node = %name, outcome, verified = ids.len(), error = error.as_deref().unwrap_or(""), "node verified");
        let at = chrono::Utc::now();
        self.note(name, NodeApply { outcome: outcome.into(), error, revision: revision.clone(), reloaded: false, at });
        ok
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
            return self.verify_nodes(desired, lead, revision).await;
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
        let fleet = Fleet {
            lead: "a".into(),
            followers: vec![b, c, d, e],
            applies: Default::default(),
            shared_tables: false,
            pending: Default::default(),
            lead_asterisk: None,
        };

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
        let fleet = Fleet {
            lead: "a".into(),
            followers: vec![f],
            applies: Default::default(),
            shared_tables: false,
            pending: Default::default(),
            lead_asterisk: None,
        };
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
        let (applies, pending) = Default::default();
        Fleet { lead: "a".into(), followers, applies, shared_tables: true, pending, lead_asterisk }
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
        let pending = |n: &str| lock(&fleet.pending).get(n).cloned().unwrap_or_default();
        assert_eq!(pending("a").into_iter().collect::<Vec<_>>(), ["1001"], "the change waits for the lead");

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
}
