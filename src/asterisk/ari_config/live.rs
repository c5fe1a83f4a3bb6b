//! Pushing one extension's objects through ARI's dynamic configuration.
//!
//! Order: an endpoint that goes is deleted first; then auth, aor (and any
//! other type) are PUT, at once (they do not name each other), the
//! endpoint only once every one of them is answered and verified; then the
//! auth and aor that go, at once. So an endpoint never points at an auth
//! or aor Asterisk does not hold.
//!
//! Asterisk's answer to a PUT is every attribute of the object as it now
//! holds it: that answer is the verification (every field the rendering
//! sets, compared as Asterisk normalises values). A PUT only sets the
//! fields it names, so a field the old rendering set and the new one does
//! not is sent with Asterisk's default, learnt once from scratch objects
//! that are deleted at once. A refused object (400) fails its extension
//! with Asterisk's message and the field it refuses (found by trying the
//! fields one by one on a scratch object), and what the extension's push
//! had already changed is put back, so the extension stays as it was.
//!
//! Secrets: `password` and `md5_cred` values are sent, compared, and
//! never shown in a reason.

use super::sections::Section;
use crate::asterisk::ari::{Ari, AriError, Attributes};
use std::collections::BTreeMap;
use std::future::Future;

/// What the pusher needs of ARI (the real client, or a fake in tests).
pub trait DynamicConfig: Send + Sync {
    fn put(
        &self,
        kind: &str,
        id: &str,
        fields: &[(String, String)],
    ) -> impl Future<Output = Result<Attributes, AriError>> + Send;
    /// `false` when there was no such object.
    fn delete(&self, kind: &str, id: &str) -> impl Future<Output = Result<bool, AriError>> + Send;
    /// `None` when there is no such object.
    fn get(&self, kind: &str, id: &str) -> impl Future<Output = Result<Option<Attributes>, AriError>> + Send;
}

impl DynamicConfig for Ari {
    async fn put(&self, kind: &str, id: &str, fields: &[(String, String)]) -> Result<Attributes, AriError> {
        self.put_object(kind, id, fields).await
    }
    async fn delete(&self, kind: &str, id: &str) -> Result<bool, AriError> {
        self.delete_object(kind, id).await
    }
    async fn get(&self, kind: &str, id: &str) -> Result<Option<Attributes>, AriError> {
        self.get_object(kind, id).await
    }
}

/// Why one object of an extension's push failed (the extension's reason;
/// never a secret value).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("Asterisk refused {kind} {id}: {message}{}", culprit.as_ref().map(|w| format!(" (the field it refuses: {w})")).unwrap_or_default())]
    Refused { kind: String, id: String, message: String, culprit: Option<String> },
    #[error(
        "Asterisk refused {kind} {id}: {message} (an object of that id comes from a config file or a wizard that cannot be written: take it out of the file first)"
    )]
    NotWritable { kind: String, id: String, message: String },
    #[error("pushing {kind} {id}: {source}")]
    Put {
        kind: String,
        id: String,
        #[source]
        source: AriError,
    },
    #[error("{kind} {id} is not as rendered after the push: {}", differences.join("; "))]
    NotAsRendered { kind: String, id: String, differences: Vec<String> },
    #[error(
        "Asterisk refused to delete {kind} {id}: {message} (it comes from a config file or another wizard, which the ari target never touches)"
    )]
    DeleteRefused { kind: String, id: String, message: String },
    #[error("deleting {kind} {id}: {source}")]
    Delete {
        kind: String,
        id: String,
        #[source]
        source: AriError,
    },
    #[error("learning Asterisk's defaults for {kind} (a scratch object): {source}")]
    LearnDefaults {
        kind: String,
        #[source]
        source: AriError,
    },
}

/// Values never shown.
fn secret(key: &str) -> bool {
    matches!(key, "password" | "md5_cred")
}

fn shown(key: &str, value: &str) -> String {
    if secret(key) { format!("{key} = <secret>") } else { format!("{key} = {value}") }
}

/// The position of a type in the push order.
pub(crate) fn rank(kind: &str) -> u8 {
    match kind {
        "auth" => 0,
        "aor" => 1,
        "endpoint" => 3,
        _ => 2,
    }
}

/// The ari target: a client and Asterisk's defaults, once learnt.
pub struct LiveTarget<D> {
    pub client: D,
    defaults: tokio::sync::Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    /// The last id a drift check read back: the next one goes on after it.
    pub(crate) cursor: std::sync::Mutex<String>,
    /// Whether the next drift check lists the astdb family for orphans
    /// (`DBGetTree` sends every value, about 6 KB an endpoint: 20 s and
    /// more at 10k, so a large estate is listed once every
    /// `ORPHAN_SCAN_EVERY` checks, a small one every time).
    pub(crate) sweep_starts: std::sync::atomic::AtomicBool,
    /// Drift checks so far.
    pub(crate) checks: std::sync::atomic::AtomicUsize,
    /// The last whole record read or made (see `super::canonical`).
    pub(crate) known: std::sync::Mutex<Option<super::Known>>,
    /// Whether a background `sweep` reads the estate back.
    pub(crate) sweeper: std::sync::atomic::AtomicBool,
    /// What the sweeper found, for the next run.
    pub(crate) found: std::sync::Mutex<Vec<crate::core::plan::Drift>>,
}

/// What pushing one extension did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Every object is as rendered; how many requests it took.
    Done { requests: usize },
    /// Refused or not as rendered; why (no secret), and whether what the
    /// push had already changed was put back. `down`: ARI did not answer
    /// (unreachable, timed out, refused our credentials), so pushing the
    /// next extensions is pointless.
    Failed { reason: String, down: bool },
}

/// Whether an error says ARI itself is not answering, rather than
/// refusing one object.
fn down(e: &AriError) -> bool {
    matches!(e, AriError::Unreachable { .. } | AriError::Timeout { .. } | AriError::Unauthorized)
}

/// Whether a push failed because ARI is not answering.
fn says_down(e: &PushError) -> bool {
    match e {
        PushError::Put { source, .. } | PushError::Delete { source, .. } | PushError::LearnDefaults { source, .. } => {
            down(source)
        }
        _ => false,
    }
}

/// Keeps the failure a push reports when several requests of one stage
/// fail: ARI not answering over a refusal (it stops the run's other
/// pushes), else the first.
fn first_failure(kept: &mut Option<PushError>, e: PushError) {
    if kept.as_ref().is_none_or(|k| !says_down(k) && says_down(&e)) {
        *kept = Some(e);
    }
}

impl<D: DynamicConfig> LiveTarget<D> {
    pub fn new(client: D) -> Self {
        LiveTarget {
            client,
            defaults: Default::default(),
            cursor: Default::default(),
            sweep_starts: std::sync::atomic::AtomicBool::new(false),
            checks: Default::default(),
            known: Default::default(),
            sweeper: Default::default(),
            found: Default::default(),
        }
    }

    /// Pushes one extension from `old` (what was pushed before, as the
    /// record says) to `new` (what renders now; empty: delete it). Unless
    /// `whole`, an object of `new` that `old` holds with the same fields is
    /// left alone (Asterisk has it as recorded; drift repairs push whole).
    pub async fn push(&self, id: &str, old: &[Section], new: &[Section], whole: bool) -> Pushed {
        let mut requests = 0;
        let mut done: Vec<Undo> = Vec::new();
        let old_of = |kind: &str| old.iter().find(|s| s.kind == kind);
        let mut gone: Vec<String> =
            old.iter().map(|s| s.kind.clone()).filter(|k| !new.iter().any(|s| s.kind == *k)).collect();
        if new.is_empty() {
            // The record may be lost or stale: delete every type an extension has.
            for k in ["endpoint", "aor", "auth"] {
                if !gone.iter().any(|g| g == k) {
                    gone.push(k.to_string());
                }
            }
        }
        gone.sort_by_key(|k| std::cmp::Reverse(rank(k)));
        let unchanged = |s: &Section| old_of(&s.kind).is_some_and(|o| o.fields == s.fields);
        let mut puts: Vec<&Section> = new.iter().filter(|s| whole || !unchanged(s)).collect();
        puts.sort_by_key(|s| rank(&s.kind));
        let (endpoint_first, rest): (Vec<String>, Vec<String>) = gone.into_iter().partition(|k| k == "endpoint");

        let result: Result<(), PushError> = async {
            for kind in &endpoint_first {
                requests += 1;
                self.delete_one(kind, id).await?;
                done.push(Undo::Recreate(old_of(kind).cloned()));
            }
            // The auth and aor (and any other type) are independent of
            // each other: PUT at once, and the endpoint only once every one
            // of them is in place.
            let (first, last): (Vec<&Section>, Vec<&Section>) = puts.iter().partition(|s| s.kind != "endpoint");
            for stage in [first, last] {
                let answers =
                    futures_util::future::join_all(stage.iter().map(|s| self.put_one(id, s, old_of(&s.kind)))).await;
                let mut failed = None;
                for (s, (put, verdict)) in stage.iter().zip(answers) {
                    requests += 1;
                    if put {
                        done.push(Undo::Put { kind: s.kind.clone(), before: old_of(&s.kind).cloned() });
                    }
                    if let Err(e) = verdict {
                        first_failure(&mut failed, e);
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            // The auth and aor that go, once the endpoint no longer names them.
            let deletes = futures_util::future::join_all(rest.iter().map(|kind| self.delete_one(kind, id))).await;
            let mut failed = None;
            for (kind, answer) in rest.iter().zip(deletes) {
                requests += 1;
                match answer {
                    Ok(()) => done.push(Undo::Recreate(old_of(kind).cloned())),
                    Err(e) => first_failure(&mut failed, e),
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Pushed::Done { requests },
            Err(reason) => {
                let down = says_down(&reason);
                let undone = if down { "ARI is not answering".into() } else { self.undo(id, done).await };
                Pushed::Failed { reason: format!("{reason}; {undone}"), down }
            }
        }
    }

    /// PUTs one object of `id` (from `before`, as the record has it, to
    /// `s`) and verifies Asterisk's answer. Whether the PUT went through
    /// (so it is to be undone on a failure), and the verdict.
    async fn put_one(&self, id: &str, s: &Section, before: Option<&Section>) -> (bool, Result<(), PushError>) {
        let mut fields = s.fields.clone();
        let removed: Vec<&str> = before
            .map(|b| {
                b.fields.iter().map(|(k, _)| k.as_str()).filter(|k| !s.fields.iter().any(|(f, _)| f == k)).collect()
            })
            .unwrap_or_default();
        if !removed.is_empty() {
            let defaults = match self.defaults(&s.kind).await {
                Ok(d) => d,
                Err(e) => return (false, Err(e)),
            };
            for k in removed {
                if let Some(v) = defaults.get(k) {
                    fields.push((k.to_string(), v.clone()));
                }
            }
        }
        let (kind, id_) = (s.kind.clone(), id.to_string());
        let answer = match self.client.put(&s.kind, id, &fields).await {
            Ok(a) => a,
            Err(AriError::Status { status: 400, message, .. }) => {
                let culprit = self.culprit(&s.kind, &s.fields).await;
                return (false, Err(PushError::Refused { kind, id: id_, message, culprit }));
            }
            Err(AriError::Status { status: 403, message, .. }) => {
                return (false, Err(PushError::NotWritable { kind, id: id_, message }));
            }
            Err(e) => return (false, Err(PushError::Put { kind, id: id_, source: e })),
        };
        let off = mismatches(&s.fields, &answer);
        if off.is_empty() {
            (true, Ok(()))
        } else {
            (true, Err(PushError::NotAsRendered { kind, id: id_, differences: off }))
        }
    }

    pub(crate) async fn delete_one(&self, kind: &str, id: &str) -> Result<(), PushError> {
        let answer = self.client.delete(kind, id).await;
        match answer {
            Ok(_) => Ok(()),
            Err(AriError::Status { status: 403, message, .. }) => {
                Err(PushError::DeleteRefused { kind: kind.to_string(), id: id.to_string(), message })
            }
            Err(e) => Err(PushError::Delete { kind: kind.to_string(), id: id.to_string(), source: e }),
        }
    }

    /// Puts back, newest first, what a failed push changed.
    async fn undo(&self, id: &str, done: Vec<Undo>) -> String {
        if done.is_empty() {
            return "nothing was changed".into();
        }
        let mut problems = Vec::new();
        let mut done = done;
        done.sort_by_key(|u| match u {
            // Recreate auth/aor before an endpoint, delete an endpoint before its auth/aor.
            Undo::Recreate(Some(s)) => (0, rank(&s.kind)),
            Undo::Put { kind, before: Some(_) } => (0, rank(kind)),
            Undo::Put { kind, before: None } => (1, 3 - rank(kind)),
            Undo::Recreate(None) => (2, 0),
        });
        for u in done {
            let r = match &u {
                Undo::Put { kind, before: None } => self.client.delete(kind, id).await.map(drop),
                Undo::Put { before: Some(s), .. } | Undo::Recreate(Some(s)) => {
                    self.client.put(&s.kind, id, &s.fields).await.map(drop)
                }
                Undo::Recreate(None) => Ok(()),
            };
            if let Err(e) = r {
                problems.push(e.to_string());
            }
        }
        if problems.is_empty() {
            "what this push had changed was put back".into()
        } else {
            format!("putting back what this push had changed failed: {}", problems.join("; "))
        }
    }

    /// Asterisk's default value of every attribute of `kind`: a scratch
    /// object with no fields (an endpoint's points at a scratch auth that
    /// never exists, so no request can use it unchallenged), read from its
    /// answer and deleted at once. Learnt once per type.
    async fn defaults(&self, kind: &str) -> Result<BTreeMap<String, String>, PushError> {
        let mut cache = self.defaults.lock().await;
        if let Some(d) = cache.get(kind) {
            return Ok(d.clone());
        }
        let id = scratch_id();
        let fields: Vec<(String, String)> =
            if kind == "endpoint" { vec![("auth".into(), id.clone())] } else { Vec::new() };
        let answer = self
            .client
            .put(kind, &id, &fields)
            .await
            .map_err(|e| PushError::LearnDefaults { kind: kind.to_string(), source: e })?;
        if let Err(e) = self.client.delete(kind, &id).await {
            tracing::warn!(kind, id, "deleting a scratch object failed: {e}");
        }
        let mut d: BTreeMap<String, String> = answer.into_iter().collect();
        if kind == "endpoint" {
            d.insert("auth".into(), String::new());
        }
        cache.insert(kind.to_string(), d.clone());
        Ok(d)
    }

    /// Asterisk's own validation of one object without touching any object
    /// of `id`: the fields PUT on a scratch object (an endpoint's pointing at
    /// a scratch auth that never exists), deleted at once. A refusal names
    /// the field Asterisk refuses (tried one by one) and never a secret.
    pub async fn validate(&self, kind: &str, id: &str, fields: &[(String, String)]) -> Result<(), PushError> {
        let scratch = scratch_id();
        let mut sent: Vec<(String, String)> = fields.to_vec();
        if kind == "endpoint" && !sent.iter().any(|(k, _)| k == "auth") {
            sent.insert(0, ("auth".into(), scratch.clone()));
        }
        match self.client.put(kind, &scratch, &sent).await {
            Ok(_) => {
                if let Err(e) = self.client.delete(kind, &scratch).await {
                    tracing::warn!(kind, id = scratch, "deleting a scratch object failed: {e}");
                }
                Ok(())
            }
            // Valid, but no wizard stored it (Asterisk validates before it
            // creates): with the realtime wizard first, res_config_pgsql's
            // INSERT fails on Asterisk's own schema (it does not quote the
            // `100rel` column), so the scratch object never reaches a table.
            Err(AriError::Status { status: 403, .. }) => Ok(()),
            Err(AriError::Status { status: 400, message, .. }) => {
                let culprit = self.culprit(kind, fields).await;
                Err(PushError::Refused { kind: kind.to_string(), id: id.to_string(), message, culprit })
            }
            Err(e) => Err(PushError::Put { kind: kind.to_string(), id: id.to_string(), source: e }),
        }
    }

    /// Which field of a refused object Asterisk refuses (it does not say):
    /// each field alone on a scratch object, deleted afterwards.
    async fn culprit(&self, kind: &str, fields: &[(String, String)]) -> Option<String> {
        let id = scratch_id();
        let mut found = None;
        let mut created = false;
        for (k, v) in fields {
            let mut one = vec![(k.clone(), v.clone())];
            if kind == "endpoint" && k != "auth" {
                one.insert(0, ("auth".into(), id.clone()));
            }
            match self.client.put(kind, &id, &one).await {
                Ok(_) => created = true,
                // Valid, stored nowhere (see `validate`).
                Err(AriError::Status { status: 403, .. }) => {}
                Err(AriError::Status { status: 400, .. }) => {
                    found = Some(shown(k, v));
                    break;
                }
                Err(_) => break,
            }
        }
        if created && let Err(e) = self.client.delete(kind, &id).await {
            tracing::warn!(kind, id, "deleting a scratch object failed: {e}");
        }
        found
    }
}

enum Undo {
    /// A PUT; what the object was before (`None`: it was created).
    Put { kind: String, before: Option<Section> },
    /// A DELETE; the object as the record had it.
    Recreate(Option<Section>),
}

fn scratch_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        b = (std::process::id() as u64 ^ chrono::Utc::now().timestamp_micros() as u64).to_le_bytes();
    }
    format!("asterisk-gitops-scratch-{}", hex::encode(b))
}

/// Every field `want` sets that `held` (Asterisk's answer) does not hold,
/// as `key: Asterisk holds X, the rendering sets Y` (secrets not shown).
/// Values are compared as Asterisk normalises them: booleans (`yes` is
/// `true`), numbers (`3` is `3.000000`), codecs (`ulaw,alaw` is
/// `(ulaw|alaw)`), quoted caller ids, lists in any order, case. A field
/// Asterisk does not list (`disallow`) is not compared; a repeated field by
/// its last value (`allow`: all of them).
pub fn mismatches(want: &[(String, String)], held: &Attributes) -> Vec<String> {
    let held: BTreeMap<&str, &str> = held.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut last: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in want {
        if k == "allow" {
            let e = last.entry("allow").or_default();
            if !e.is_empty() {
                e.push(',');
            }
            e.push_str(v);
        } else {
            last.insert(k, v.clone());
        }
    }
    let mut out = Vec::new();
    for (k, v) in last {
        let Some(h) = held.get(k) else { continue };
        if !same_value(k, &v, h) {
            if secret(k) {
                out.push(format!("{k}: Asterisk holds another value than the rendering sets"));
            } else {
                out.push(format!("{k}: Asterisk holds {h:?}, the rendering sets {v:?}"));
            }
        }
    }
    out
}

fn same_value(key: &str, want: &str, held: &str) -> bool {
    if secret(key) {
        return want == held;
    }
    if key == "allow" {
        let w: Vec<String> = crate::asterisk::parse_allow(want).iter().map(|c| c.to_ascii_lowercase()).collect();
        let h: Vec<String> = crate::asterisk::parse_allow(held).iter().map(|c| c.to_ascii_lowercase()).collect();
        return w == h;
    }
    if key == "callerid" {
        let norm = |s: &str| s.replace('"', "").split_whitespace().collect::<Vec<_>>().join(" ");
        return norm(want) == norm(held);
    }
    let boolean = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" | "y" | "t" => Some(true),
        "no" | "false" | "off" | "0" | "n" | "f" => Some(false),
        _ => None,
    };
    if let (Some(a), Some(b)) = (boolean(want), boolean(held)) {
        return a == b;
    }
    if let (Ok(a), Ok(b)) = (want.trim().parse::<f64>(), held.trim().parse::<f64>()) {
        return a == b;
    }
    if want.contains(',') || held.contains(',') {
        let set = |s: &str| {
            let mut v: Vec<String> =
                s.split(',').map(|x| x.trim().to_ascii_lowercase()).filter(|x| !x.is_empty()).collect();
            v.sort();
            v
        };
        return set(want) == set(held);
    }
    want.trim().eq_ignore_ascii_case(held.trim())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::asterisk::ari_config::sections;
    use std::sync::Mutex;

    /// Asterisk's dynamic configuration as far as the pusher relies on it:
    /// PUT merges fields into the object (creating it), answers every
    /// attribute, refuses an unknown option or a codec named `nosuchcodec`
    /// with 400 (without saying which), DELETE answers whether it existed.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub objects: Mutex<BTreeMap<(String, String), BTreeMap<String, String>>>,
        pub log: Mutex<Vec<String>>,
        /// Answer nothing (as an unreachable ARI).
        pub down: std::sync::atomic::AtomicBool,
        /// Take any option (the built-in template's), with no default.
        pub lenient: bool,
    }

    fn unreachable(fake: &Fake) -> Result<(), AriError> {
        if fake.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(AriError::Unreachable { url: "http://127.0.0.1:1/ari".into(), reason: "refused".into() });
        }
        Ok(())
    }

    fn known(kind: &str) -> &'static [(&'static str, &'static str)] {
        match kind {
            "endpoint" => &[
                ("context", "default"),
                ("allow", "(codec2|g723|ulaw|alaw)"),
                ("transport", ""),
                ("auth", ""),
                ("aors", ""),
                ("callerid", ""),
                ("direct_media", "true"),
                ("webrtc", "no"),
            ],
            "auth" => &[("auth_type", "userpass"), ("username", ""), ("password", ""), ("md5_cred", "")],
            "aor" => &[("max_contacts", "0"), ("remove_existing", "false"), ("qualify_frequency", "0")],
            _ => &[],
        }
    }

    impl DynamicConfig for Fake {
        async fn put(&self, kind: &str, id: &str, fields: &[(String, String)]) -> Result<Attributes, AriError> {
            self.log.lock().unwrap().push(format!("PUT {kind} {id}"));
            unreachable(self)?;
            let defaults = known(kind);
            let mut objects = self.objects.lock().unwrap();
            let mut obj = objects
                .get(&(kind.to_string(), id.to_string()))
                .cloned()
                .unwrap_or_else(|| defaults.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            for (k, v) in fields {
                if k == "disallow" {
                    continue;
                }
                if (!self.lenient && !defaults.iter().any(|(d, _)| d == k)) || v.contains("nosuchcodec") {
                    return Err(AriError::Status {
                        what: format!("PUT {kind} {id}"),
                        status: 400,
                        message: format!("Creation of object '{id}' failed field value validation"),
                    });
                }
                let v = match k.as_str() {
                    "allow" => format!("({})", v.replace(',', "|")),
                    "direct_media" | "remove_existing" => (v == "yes" || v == "true").to_string(),
                    _ => v.clone(),
                };
                obj.insert(k.clone(), v);
            }
            objects.insert((kind.to_string(), id.to_string()), obj.clone());
            Ok(obj.into_iter().collect())
        }
        async fn delete(&self, kind: &str, id: &str) -> Result<bool, AriError> {
            self.log.lock().unwrap().push(format!("DELETE {kind} {id}"));
            unreachable(self)?;
            Ok(self.objects.lock().unwrap().remove(&(kind.to_string(), id.to_string())).is_some())
        }
        async fn get(&self, kind: &str, id: &str) -> Result<Option<Attributes>, AriError> {
            self.log.lock().unwrap().push(format!("GET {kind} {id}"));
            unreachable(self)?;
            Ok(self.get(kind, id).map(|o| o.into_iter().collect()))
        }
    }

    impl Fake {
        pub(crate) fn set(&self, kind: &str, id: &str, key: &str, value: &str) {
            if let Some(o) = self.objects.lock().unwrap().get_mut(&(kind.to_string(), id.to_string())) {
                o.insert(key.into(), value.into());
            }
        }
        pub(crate) fn get(&self, kind: &str, id: &str) -> Option<BTreeMap<String, String>> {
            self.objects.lock().unwrap().get(&(kind.to_string(), id.to_string())).cloned()
        }
        pub(crate) fn requests(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
        pub(crate) fn count(&self) -> usize {
            self.objects.lock().unwrap().len()
        }
    }

    fn ext(id: &str, endpoint: &str) -> Vec<Section> {
        sections::parse(&format!(
            "[{id}]\ntype = endpoint\ncontext = from-internal\ndisallow = all\n{endpoint}auth = {id}\naors = {id}\n\n\
             [{id}]\ntype = auth\nauth_type = md5\nusername = {id}\nmd5_cred = 0123abcd\n\n\
             [{id}]\ntype = aor\nmax_contacts = 1\nremove_existing = yes\n"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn a_create_pushes_auth_and_aor_before_the_endpoint_and_a_delete_takes_the_endpoint_first() {
        let t = LiveTarget::new(Fake::default());
        let new = ext("1001", "allow = ulaw,alaw\n");
        assert_eq!(t.push("1001", &[], &new, false).await, Pushed::Done { requests: 3 });
        assert_eq!(t.client.requests(), ["PUT auth 1001", "PUT aor 1001", "PUT endpoint 1001"]);
        assert_eq!(t.client.get("endpoint", "1001").unwrap()["allow"], "(ulaw|alaw)");
        assert_eq!(t.push("1001", &new, &[], false).await, Pushed::Done { requests: 3 });
        assert_eq!(t.client.requests(), ["DELETE endpoint 1001", "DELETE aor 1001", "DELETE auth 1001"]);
        assert_eq!(t.client.count(), 0);
    }

    #[tokio::test]
    async fn a_refused_value_fails_with_the_field_and_puts_back_what_the_push_changed() {
        let t = LiveTarget::new(Fake::default());
        let old = ext("1001", "allow = ulaw\n");
        t.push("1001", &[], &old, false).await;
        let mut bad = ext("1001", "allow = ulaw,nosuchcodec\n");
        bad[2].fields[0].1 = "5".into(); // the aor changes too, and must be put back
        t.client.requests();
        let Pushed::Failed { reason, down: false } = t.push("1001", &old, &bad, false).await else { panic!("refused") };
        assert!(reason.contains("failed field value validation"), "{reason}");
        assert!(reason.contains("the field it refuses: allow = ulaw,nosuchcodec"), "{reason}");
        assert!(reason.contains("put back"), "{reason}");
        assert_eq!(t.client.get("aor", "1001").unwrap()["max_contacts"], "1", "the aor is as before");
        assert_eq!(t.client.get("endpoint", "1001").unwrap()["allow"], "(ulaw)");
        assert_eq!(t.client.count(), 3, "the scratch object is gone");
        // A create refused at the endpoint leaves no auth or aor behind.
        let Pushed::Failed { .. } = t.push("1002", &[], &ext("1002", "bogus_option = 1\n"), false).await else {
            panic!("refused")
        };
        assert!(t.client.get("auth", "1002").is_none() && t.client.get("aor", "1002").is_none());
        assert_eq!(t.client.count(), 3);
    }

    #[tokio::test]
    async fn a_refused_aor_stops_the_push_before_the_endpoint_and_takes_the_auth_back() {
        let t = LiveTarget::new(Fake::default());
        let mut new = ext("1002", "");
        new[2].fields.push(("bogus_option".into(), "1".into()));
        let Pushed::Failed { reason, down: false } = t.push("1002", &[], &new, false).await else { panic!("refused") };
        assert!(reason.contains("refused aor 1002"), "{reason}");
        assert!(reason.contains("the field it refuses: bogus_option = 1"), "{reason}");
        let requests = t.client.requests();
        assert!(!requests.iter().any(|r| r == "PUT endpoint 1002"), "no endpoint without its aor: {requests:?}");
        assert_eq!(&requests[..2], ["PUT auth 1002", "PUT aor 1002"], "auth and aor at once");
        assert!(requests.contains(&"DELETE auth 1002".to_string()), "the auth is taken back: {requests:?}");
        assert_eq!(t.client.count(), 0, "nothing of 1002 is left, nor a scratch object");
    }

    #[tokio::test]
    async fn an_update_puts_only_the_objects_that_changed_and_a_repair_puts_them_all() {
        let t = LiveTarget::new(Fake::default());
        let old = ext("1001", "callerid = \"A\" <1001>\n");
        t.push("1001", &[], &old, false).await;
        t.client.requests();
        let new = ext("1001", "callerid = \"B\" <1001>\n");
        assert_eq!(t.push("1001", &old, &new, false).await, Pushed::Done { requests: 1 });
        assert_eq!(t.client.requests(), ["PUT endpoint 1001"], "the unchanged auth and aor are left alone");
        assert_eq!(t.client.get("endpoint", "1001").unwrap()["callerid"], "\"B\" <1001>");
        // Drift: Asterisk lost the auth; the record still holds it as rendered.
        t.client.delete("auth", "1001").await.unwrap();
        t.client.requests();
        assert_eq!(t.push("1001", &new, &new, true).await, Pushed::Done { requests: 3 });
        assert_eq!(t.client.requests(), ["PUT auth 1001", "PUT aor 1001", "PUT endpoint 1001"]);
        assert!(t.client.get("auth", "1001").is_some(), "the repair put the auth back");
    }

    #[tokio::test]
    async fn a_field_the_new_rendering_drops_goes_back_to_asterisks_default() {
        let t = LiveTarget::new(Fake::default());
        let old = ext("1001", "callerid = \"A\" <1001>\ndirect_media = no\n");
        t.push("1001", &[], &old, false).await;
        assert_eq!(t.client.get("endpoint", "1001").unwrap()["direct_media"], "false");
        let new = ext("1001", "");
        assert!(matches!(t.push("1001", &old, &new, false).await, Pushed::Done { .. }));
        let e = t.client.get("endpoint", "1001").unwrap();
        assert_eq!((e["callerid"].as_str(), e["direct_media"].as_str()), ("", "true"));
        assert_eq!(t.client.count(), 3, "the scratch endpoint for the defaults is gone");
    }

    #[test]
    fn values_compare_as_asterisk_normalises_them_and_secrets_are_never_shown() {
        let held: Attributes = [
            ("allow", "(ulaw|alaw)"),
            ("callerid", "\"Test User\" <1001>"),
            ("direct_media", "false"),
            ("qualify_timeout", "3.000000"),
            ("named_pickup_group", "b, a"),
            ("md5_cred", "held-secret"),
            ("context", "From-Internal"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let want = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let ok = want(&[
            ("disallow", "all"),
            ("allow", "ulaw"),
            ("allow", "alaw"),
            ("callerid", "Test User <1001>"),
            ("direct_media", "no"),
            ("qualify_timeout", "3"),
            ("named_pickup_group", "a,b"),
            ("md5_cred", "held-secret"),
            ("context", "from-internal"),
            ("not_listed", "x"),
        ]);
        assert_eq!(mismatches(&ok, &held), Vec::<String>::new());
        let off =
            mismatches(&want(&[("allow", "alaw,ulaw"), ("md5_cred", "wanted-secret"), ("direct_media", "yes")]), &held);
        assert_eq!(off.len(), 3, "{off:?}");
        assert!(
            off.iter().all(|o| !o.contains("secret\"") && !o.contains("wanted-secret") && !o.contains("held-secret"))
        );
    }
}
