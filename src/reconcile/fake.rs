//! In-memory fakes of the ports, for the unit tests of the reconcile rules:
//! a store that keeps rows and commits in maps, a managed file in memory,
//! an Asterisk that loads that file on reload as a script says, and a live
//! target that refuses the ids it is told to.

use super::ports::{AsteriskControl, ConfigFile, LiveApply, LiveRun, StateStore};
use super::{AppliedRow, Outcome, RunRecord};
use crate::core::plan::{Drift, Fields, ObservedEndpoint};
use crate::core::status::{StatusUpdate, Step};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FakeError(pub &'static str);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One commit the store saw.
#[derive(Clone, Debug)]
pub struct Committed {
    pub outcome: Outcome,
    pub error: Option<String>,
    pub upserts: Vec<String>,
    /// Each upserted row's md5Cred, by number.
    pub md5s: BTreeMap<String, String>,
    pub deletes: Vec<String>,
    pub reloaded: bool,
    pub rollback_failed: bool,
}

#[derive(Default)]
pub struct FakeStore {
    pub applied: Mutex<BTreeMap<String, Fields>>,
    pub commits: Mutex<Vec<Committed>>,
    pub steps: Mutex<Vec<Step>>,
    version: AtomicU64,
}

impl FakeStore {
    pub fn last(&self) -> Option<Committed> {
        lock(&self.commits).last().cloned()
    }
}

impl StateStore for FakeStore {
    type Error = FakeError;
    async fn applied(&self) -> Result<BTreeMap<String, Fields>, FakeError> {
        Ok(lock(&self.applied).clone())
    }
    async fn applied_signature(&self) -> Result<String, FakeError> {
        Ok(self.version.load(Ordering::Relaxed).to_string())
    }
    async fn commit(
        &self,
        run: &RunRecord,
        upserts: &[AppliedRow<'_>],
        deletes: &[String],
        _states: &StatusUpdate<'_>,
    ) -> Result<i64, FakeError> {
        let mut applied = lock(&self.applied);
        for u in upserts {
            applied.insert(u.extension.extension.clone(), u.fields());
        }
        for d in deletes {
            applied.remove(d);
        }
        self.version.fetch_add(1, Ordering::Relaxed);
        let mut commits = lock(&self.commits);
        commits.push(Committed {
            outcome: run.outcome,
            error: run.error.clone(),
            upserts: upserts.iter().map(|u| u.extension.extension.clone()).collect(),
            md5s: upserts.iter().map(|u| (u.extension.extension.clone(), u.secret_md5.clone())).collect(),
            deletes: deletes.to_vec(),
            reloaded: run.reloaded,
            rollback_failed: run.rollback_failed,
        });
        Ok(commits.len() as i64)
    }
    async fn progress(&self, step: Step) -> Result<(), FakeError> {
        lock(&self.steps).push(step);
        Ok(())
    }
    async fn mark(&self, _states: &StatusUpdate<'_>) -> Result<(), FakeError> {
        Ok(())
    }
}

/// The managed file, in memory, with its `.previous`.
#[derive(Default)]
pub struct MemFile {
    pub text: Mutex<Option<String>>,
    previous: Mutex<Option<String>>,
    pub writes: AtomicUsize,
    path: PathBuf,
}

impl MemFile {
    pub fn text(&self) -> Option<String> {
        lock(&self.text).clone()
    }
}

impl ConfigFile for Arc<MemFile> {
    fn path(&self) -> &Path {
        &self.path
    }
    fn read(&self) -> std::io::Result<Option<String>> {
        Ok(self.text())
    }
    fn write(&self, text: &str) -> std::io::Result<()> {
        let mut current = lock(&self.text);
        if let Some(c) = current.take() {
            *lock(&self.previous) = Some(c);
        }
        *current = Some(text.to_string());
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn restore_previous(&self) -> std::io::Result<bool> {
        let previous = lock(&self.previous).clone();
        let restored = previous.is_some();
        *lock(&self.text) = Some(previous.unwrap_or_else(|| "; nothing applied yet\n".into()));
        Ok(restored)
    }
}

/// What the fake Asterisk does.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// Answers nothing at all.
    pub down: bool,
    /// A ping answers only once every fake sharing this barrier is pinged
    /// at the same time (a test that they are asked at once).
    pub meet: Option<Arc<tokio::sync::Barrier>>,
    /// Which reloads (1-based, counted over the fake's life) fail.
    pub failing_reloads: BTreeSet<usize>,
    /// Ids whose new definition Asterisk refuses on a reload: it keeps the
    /// previous one (or none).
    pub refused: BTreeSet<String>,
    /// Ids Asterisk loads with another context than the file sets.
    pub wrong_context: BTreeSet<String>,
    /// An endpoint lookup meets the test at this barrier twice: once when
    /// it is asked (the test knows a verification is under way), once
    /// before it answers (the test has acted meanwhile).
    pub lookup_gate: Option<Arc<tokio::sync::Barrier>>,
}

/// An Asterisk that loads the endpoints of the managed file on reload.
pub struct FakeAsterisk {
    pub file: Arc<MemFile>,
    pub loaded: Mutex<BTreeMap<String, ObservedEndpoint>>,
    pub reloads: AtomicUsize,
    pub script: Mutex<Script>,
}

impl FakeAsterisk {
    pub fn new(file: Arc<MemFile>, script: Script) -> Self {
        FakeAsterisk { file, loaded: Default::default(), reloads: Default::default(), script: Mutex::new(script) }
    }
    fn up(&self) -> Result<Script, FakeError> {
        let script = lock(&self.script).clone();
        if script.down { Err(FakeError("connection refused")) } else { Ok(script) }
    }
    pub fn names(&self) -> Vec<String> {
        lock(&self.loaded).keys().cloned().collect()
    }
}

/// The endpoint sections of a rendered file (name, context, transport).
pub fn endpoints_of(text: &str) -> Vec<ObservedEndpoint> {
    let mut out: Vec<ObservedEndpoint> = Vec::new();
    let mut section: Option<String> = None;
    let mut is_endpoint = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            is_endpoint = false;
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else { continue };
        match (key, &section) {
            ("type", Some(name)) if value == "endpoint" => {
                is_endpoint = true;
                out.push(ObservedEndpoint {
                    name: name.clone(),
                    transport: None,
                    context: None,
                    codecs: None,
                    options: None,
                });
            }
            ("context", _) if is_endpoint => out.last_mut().into_iter().for_each(|e| e.context = Some(value.into())),
            ("transport", _) if is_endpoint => {
                out.last_mut().into_iter().for_each(|e| e.transport = Some(value.into()))
            }
            _ => {}
        }
    }
    out
}

impl AsteriskControl for FakeAsterisk {
    type Error = FakeError;
    async fn endpoints(&self) -> Result<BTreeMap<String, ObservedEndpoint>, FakeError> {
        self.up()?;
        Ok(lock(&self.loaded).clone())
    }
    async fn endpoint(&self, name: &str) -> Result<Option<ObservedEndpoint>, FakeError> {
        if let Some(gate) = self.up()?.lookup_gate {
            gate.wait().await;
            gate.wait().await;
        }
        Ok(lock(&self.loaded).get(name).cloned())
    }
    async fn reload(&self) -> Result<(), FakeError> {
        let script = self.up()?;
        let n = self.reloads.fetch_add(1, Ordering::Relaxed) + 1;
        if script.failing_reloads.contains(&n) {
            return Err(FakeError("Module res_pjsip.so failed to reload"));
        }
        let mut loaded = lock(&self.loaded);
        let mut next = BTreeMap::new();
        for mut ep in endpoints_of(&self.file.text().unwrap_or_default()) {
            if script.refused.contains(&ep.name) {
                if let Some(before) = loaded.get(&ep.name) {
                    next.insert(ep.name.clone(), before.clone());
                }
                continue;
            }
            if script.wrong_context.contains(&ep.name) {
                ep.context = Some("somewhere-else".into());
            }
            next.insert(ep.name.clone(), ep);
        }
        *loaded = next;
        Ok(())
    }
    async fn ping(&self) -> Result<(), FakeError> {
        if let Some(meet) = self.up()?.meet {
            meet.wait().await;
        }
        Ok(())
    }
}

/// A live target that pushes every changed id except those it refuses.
#[derive(Default)]
pub struct FakeLive {
    pub refused: BTreeSet<String>,
    pub pushes: AtomicUsize,
    /// Tables other nodes read too (see `LiveApply::commits_without_asterisk`).
    pub shared: bool,
    /// Asterisk's endpoint list read beside the loop, until one is compared
    /// (see `LiveApply::lists_endpoints_beside`), as a large realtime estate.
    pub beside: bool,
    pub listed: std::sync::atomic::AtomicBool,
}

impl LiveApply for FakeLive {
    type Error = FakeError;
    fn astdb_family(&self) -> &str {
        "fake"
    }
    async fn push_changes(
        &self,
        record: Option<&str>,
        rendered: &str,
        asked: &BTreeSet<String>,
        _repair: &BTreeSet<String>,
        _orphans: &[(String, String)],
    ) -> Result<LiveRun, FakeError> {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        let before: BTreeSet<String> = endpoints_of(record.unwrap_or_default()).into_iter().map(|e| e.name).collect();
        let after: BTreeSet<String> = endpoints_of(rendered).into_iter().map(|e| e.name).collect();
        let mut run = LiveRun::default();
        for id in asked.iter().chain(after.symmetric_difference(&before)) {
            if self.refused.contains(id) {
                run.failures.insert(id.clone(), format!("Asterisk refused endpoint {id}"));
            } else {
                run.pushed.insert(id.clone());
                run.requests += 3;
            }
        }
        // The record: the rendering without the refused ids new in it.
        let mut keep = true;
        for line in rendered.lines() {
            if let Some(id) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                keep = !run.failures.contains_key(id) || before.contains(id);
            }
            if keep {
                run.record.push_str(line);
                run.record.push('\n');
            }
        }
        Ok(run)
    }
    async fn drift(&self, _record: &str, _astdb_keys: &[String]) -> Vec<Drift> {
        Vec::new()
    }
    fn sweep_starts(&self) -> bool {
        false
    }
    fn lists_endpoints(&self) -> bool {
        !self.beside || !self.listed.load(Ordering::Relaxed)
    }
    fn lists_endpoints_beside(&self) -> bool {
        self.beside
    }
    fn endpoints_listed(&self) {
        self.listed.store(true, Ordering::Relaxed);
    }
    fn commits_without_asterisk(&self) -> bool {
        self.shared
    }
}
