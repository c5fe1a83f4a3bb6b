//! The plan: what a reconcile would change, as a pure function of
//! (desired set, applied rows, observed Asterisk, current managed file,
//! rendered managed file).
//!
//! Architecture invariant: planning does no I/O. Everything it needs is
//! passed in, so `plan` in CI, `apply` and the daemon all agree.
//!
//! Secrets appear in a plan only as "changed": never a password, never an
//! md5 hash.

use crate::core::spec::profile::{Expansion, Source};
use crate::core::spec::{DesiredSet, Extension};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// An extension's settings as flat `field -> value` text, the unit the plan
/// compares. Built from a desired [`Extension`] or from an applied database row.
///
/// A sorted vector, not a map: the daemon keeps one per applied extension,
/// and at 100k extensions a `BTreeMap` of 15 fields each costs three times
/// the memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(Vec<(&'static str, Box<str>)>);

impl Fields {
    pub fn new() -> Self {
        Fields(Vec::with_capacity(FIELD_NAMES.len()))
    }
    /// Sets a field, replacing its value if it is set.
    pub fn insert(&mut self, key: &'static str, value: String) {
        match self.0.binary_search_by(|(k, _)| (*k).cmp(key)) {
            Ok(i) => self.0[i].1 = value.into_boxed_str(),
            Err(i) => self.0.insert(i, (key, value.into_boxed_str())),
        }
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| (*k).cmp(key)).ok().map(|i| &*self.0[i].1)
    }
    pub fn keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|(k, _)| *k)
    }
    /// In field-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.iter().map(|(k, v)| (*k, &**v))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(&'static str, String)> for Fields {
    fn from_iter<I: IntoIterator<Item = (&'static str, String)>>(iter: I) -> Self {
        let mut f = Fields::new();
        for (k, v) in iter {
            f.insert(k, v);
        }
        f.0.shrink_to_fit();
        f
    }
}

impl Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The field that holds the secret's fingerprint (kind and md5 hash).
pub const SECRET_FIELD: &str = crate::core::spec::fields::SECRET;

/// Every field name [`desired_fields`] produces.
pub const FIELD_NAMES: &[&str] = crate::core::spec::fields::PLAN_NAMES;

/// The static name of a field read back from storage; `None` if unknown.
pub fn field_name(name: &str) -> Option<&'static str> {
    FIELD_NAMES.iter().find(|f| **f == name).copied()
}

/// The fields of a desired extension. `secret_md5` is the md5Cred the
/// extension authenticates with (computed from a password when it has one).
pub fn desired_fields(ext: &Extension, secret_md5: &str) -> Fields {
    let mut f = Fields::new();
    let mut put = |k: &'static str, v: String| {
        f.insert(k, v);
    };
    put("displayName", ext.display_name.clone().unwrap_or_default());
    put("context", ext.context.clone());
    put("transport", ext.transport.clone());
    put("codecs", ext.codecs.join(","));
    put(SECRET_FIELD, format!("{}:{secret_md5}", ext.secret.kind()));
    put("maxContacts", ext.max_contacts.to_string());
    put("qualifyFrequency", ext.qualify_frequency.to_string());
    put("callerId", ext.effective_caller_id().unwrap_or_default());
    put("mailboxes", ext.mailboxes.join(","));
    put("dtmfMode", ext.dtmf_mode.clone().unwrap_or_default());
    put("profile", ext.profile.name().to_string());
    let flag = |v: Option<bool>| v.map(|b| b.to_string()).unwrap_or_default();
    put("directMedia", flag(ext.direct_media));
    put("rtpSymmetric", flag(ext.rtp_symmetric));
    put("forceRport", flag(ext.force_rport));
    put("rewriteContact", flag(ext.rewrite_contact));
    put("enabled", ext.enabled.to_string());
    put("labels", ext.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
    put("options", ext.options.summary());
    f
}

/// What Asterisk reports for one endpoint (from the endpoint list, and
/// from endpoint detail where it was asked for).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ObservedEndpoint {
    pub name: String,
    pub transport: Option<String>,
    /// Present when the endpoint's detail was fetched.
    pub context: Option<String>,
    /// Present when the endpoint's detail was fetched.
    pub codecs: Option<Vec<String>>,
    /// The other options the managed file sets, as Asterisk holds them;
    /// present when the endpoint's detail was fetched (verification).
    #[serde(skip)]
    pub options: Option<Box<EndpointOptions>>,
}

/// Options of an endpoint (and its auth and aor) beyond context, transport
/// and codecs, as Asterisk reports them after a reload. Never a secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointOptions {
    pub callerid: String,
    pub dtmf_mode: String,
    pub mailboxes: String,
    /// Every option of the profile table (`spec::profile::OPTIONS`) that
    /// Asterisk reported, by pjsip name, normalised (`profile::normalise`).
    pub profile_options: BTreeMap<&'static str, String>,
    /// The auth's `auth_type` (`userpass`, `md5`), if the auth is loaded.
    pub auth_type: Option<String>,
    /// The aor's `max_contacts`, if the aor is loaded.
    pub max_contacts: Option<u32>,
    /// The aor's `remove_existing` and `qualify_frequency`, if it is loaded.
    pub remove_existing: Option<bool>,
    pub qualify_frequency: Option<u32>,
    /// md5Cred of the credential the auth holds (the password is hashed the
    /// moment it is read and dropped), if the auth is loaded.
    pub auth_md5: Option<crate::secret::Digest>,
    /// Every option the endpoint's, aor's and auth's detail reports, by
    /// `type/AmiKey` (no secret), for the spec's `options`.
    pub reported: BTreeMap<String, String>,
}

impl EndpointOptions {
    /// Each option the managed file sets for `ext` that Asterisk holds with
    /// another value, as `name: Asterisk has X, the file sets Y`. Values are
    /// compared as Asterisk normalises them (booleans, quoted caller ids,
    /// case, spaces in lists).
    pub fn mismatches(&self, ext: &crate::core::spec::Extension) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, held: &str, set: &str, same: bool| {
            if !same {
                out.push(format!("{name}: Asterisk has {held:?}, the file sets {set:?}"));
            }
        };
        if let Some(want) = ext.effective_caller_id() {
            let norm = |s: &str| s.replace('"', "").split_whitespace().collect::<Vec<_>>().join(" ");
            check("callerid", &self.callerid, &want, norm(&want) == norm(&self.callerid));
        }
        if let Some(want) = &ext.dtmf_mode {
            check("dtmf_mode", &self.dtmf_mode, want, want.eq_ignore_ascii_case(&self.dtmf_mode));
        }
        if !ext.mailboxes.is_empty() {
            let want = ext.mailboxes.join(",");
            let norm = |s: &str| s.replace(' ', "").to_ascii_lowercase();
            check("mailboxes", &self.mailboxes, &want, norm(&want) == norm(&self.mailboxes));
        }
        let show = |b: Option<bool>| b.map_or("unset".to_string(), |b| if b { "yes".into() } else { "no".into() });
        // Every option of the profile table: what the file writes, what
        // Asterisk derives from it (webrtc) and Asterisk's defaults for the
        // rest (a profile switch must have taken them back).
        for (opt, want, source) in crate::core::spec::profile::expected(ext) {
            let held = self.profile_options.get(opt.name).map(String::as_str).unwrap_or("unset");
            let set = match source {
                Source::Explicit | Source::Profile => want.clone(),
                Source::Implied => format!("{want} (implied by profile {})", ext.profile),
                Source::AsteriskDefault => format!("{want} (Asterisk's default, profile {})", ext.profile),
            };
            check(opt.name, held, &set, held == want);
        }
        if let Some(held) = &self.auth_type {
            let want = if matches!(ext.secret, crate::core::spec::Secret::Md5Cred(_)) { "md5" } else { "userpass" };
            check("auth_type", held, want, held.eq_ignore_ascii_case(want));
        }
        if let Some(held) = self.max_contacts {
            check("max_contacts", &held.to_string(), &ext.max_contacts.to_string(), held == ext.max_contacts);
        }
        if let Some(held) = self.remove_existing {
            // `remove_existing = yes` unless the spec's options say otherwise.
            let want = ext
                .options
                .aor
                .get("remove_existing")
                .and_then(|v| crate::core::catalogue::parse_bool(v))
                .unwrap_or(true);
            check("remove_existing", &show(Some(held)), &show(Some(want)), held == want);
        }
        if let Some(held) = self.qualify_frequency {
            let want = ext.qualify_frequency;
            check("qualify_frequency", &held.to_string(), &want.to_string(), held == want);
        }
        // The spec's extra options, each as Asterisk reports it. One of the
        // profile table is compared above. An option Asterisk's detail does
        // not print (the ACLs' deny/permit, an aor's contact) cannot be
        // compared; everything else it prints, so a refused value shows.
        let types = crate::core::catalogue::ValueTypes::asterisk22();
        for (kind, name, want) in ext.options.iter() {
            if (kind == "endpoint" && crate::core::spec::profile::option(name).is_some())
                || (kind, name) == ("aor", "remove_existing")
            {
                continue;
            }
            // An object that did not load reports nothing: verification says so elsewhere.
            let event_seen = self.reported.keys().any(|k| k.starts_with(&format!("{kind}/")));
            if !event_seen {
                continue;
            }
            let key = format!("{kind}/{}", crate::core::spec::options::ami_key(name));
            let Some(held) = self.reported.get(&key) else { continue };
            let same = crate::core::spec::options::same_value(kind, name, want, held, &types);
            check(&format!("{kind} {name}"), held, want, same);
        }
        out
    }

    /// Whether the auth holds another credential than `want_md5` (the
    /// md5Cred the file's secret gives). Compared as digests; neither is
    /// ever shown.
    pub fn credential_differs(&self, want_md5: &str) -> bool {
        self.auth_md5.as_ref().is_some_and(|held| !held.matches(want_md5))
    }
}

/// What Asterisk looks like, if it could be asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum Observed {
    /// No Asterisk is configured: nothing to compare with.
    NotConfigured,
    /// Asterisk could not be reached; the reason.
    Unreachable { reason: String },
    /// The endpoints Asterisk has loaded, by name.
    Endpoints { endpoints: BTreeMap<String, ObservedEndpoint> },
    /// Asterisk answers, but its endpoints were not listed: a run with
    /// changes to apply verifies those after the reload and leaves drift
    /// to the next run with nothing to change.
    NotListed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One field that changes. `from`/`to` are `None` for the secret, which is
/// only ever reported as changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub extension: String,
    pub action: Action,
    pub fields: Vec<FieldChange>,
    /// What the extension's profile expands to (creates and updates; not
    /// for creates past the first [`MAX_LISTED_CHANGES`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::core::spec::profile::Expansion>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Drift {
    /// Declared, enabled and applied, but Asterisk has no such endpoint.
    MissingFromAsterisk { extension: String },
    /// Asterisk's endpoint differs from what was rendered.
    DiffersInAsterisk { extension: String, fields: Vec<FieldChange> },
    /// The managed file on disk is not what the applied specs render.
    ManagedFileEdited,
    /// Asterisk has an endpoint asterisk-gitops does not manage. Reported, never touched.
    Unmanaged { endpoint: String },
    /// `apply.target: ari`: an object pushed for this extension holds other
    /// attributes than were pushed (read back through ARI).
    ObjectDiffers {
        extension: String,
        #[serde(rename = "objectType")]
        object_type: String,
        differences: Vec<String>,
    },
    /// `apply.target: ari`: an object under the daemon's astdb family that
    /// no spec declares (pushed by an earlier run, or by hand). Deleted by
    /// self-heal; objects from files or other wizards are never here.
    Orphaned {
        #[serde(rename = "objectType")]
        object_type: String,
        id: String,
    },
}

impl Drift {
    /// Whether a reconcile can repair it (unmanaged endpoints are left alone).
    pub fn healable(&self) -> bool {
        !matches!(self, Drift::Unmanaged { .. })
    }
}

/// Everything a reconcile would do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Creates, updates and deletes, in extension-number order.
    pub changes: Vec<Change>,
    /// Desired extensions that are applied as they are.
    pub unchanged: usize,
    pub drift: Vec<Drift>,
    /// Whether the rendered managed file differs from the one on disk.
    pub file_changed: bool,
    /// Unified diff of the managed file (on disk → rendered), secrets masked.
    pub diff: String,
    /// How many extensions were applied before this plan.
    pub applied_before: usize,
}

impl Plan {
    pub fn count(&self, action: Action) -> usize {
        self.changes.iter().filter(|c| c.action == action).count()
    }

    /// Whether the specs ask for something to change (rows, or the file
    /// because of them). A managed file that differs only because someone
    /// edited it is drift, not a change: see [`Plan::has_healable_drift`].
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty() || (self.file_changed && !self.drift.contains(&Drift::ManagedFileEdited))
    }

    /// Whether there is drift a reconcile would repair.
    pub fn has_healable_drift(&self) -> bool {
        self.drift.iter().any(Drift::healable)
    }
}

/// Everything `plan` looks at.
pub struct PlanInput<'a> {
    pub desired: &'a DesiredSet,
    /// md5Cred per extension number, for every desired extension.
    pub secret_md5: &'a BTreeMap<String, String>,
    /// The applied rows, as fields, by extension number.
    pub applied: &'a BTreeMap<String, Fields>,
    pub observed: &'a Observed,
    /// The managed file as it is on disk (`None`: it does not exist).
    pub current_file: Option<&'a str>,
    pub rendered: &'a str,
}

/// Works out the plan. Pure: no I/O.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut changes = Vec::new();
    let mut unchanged = 0;
    let desired_numbers: BTreeSet<&str> = input.desired.extensions.iter().map(|e| e.extension.as_str()).collect();
    // Creates and deletes list every field; past the first
    // MAX_LISTED_CHANGES of each they list none (the spec, or the last
    // applied row, says them): at 100k creates the lists alone would take
    // over 100 MB.
    let mut detailed = 0usize;
    let mut detail = |want: &Fields, have: &Fields| {
        detailed += 1;
        if detailed <= MAX_LISTED_CHANGES { Some(field_changes(have, want)) } else { None }
    };
    for ext in input.desired.extensions.iter() {
        let md5 = input.secret_md5.get(&ext.extension).map(String::as_str).unwrap_or_default();
        let want = desired_fields(ext, md5);
        match input.applied.get(&ext.extension) {
            None => {
                let fields = detail(&want, &Fields::new());
                changes.push(Change {
                    extension: ext.extension.clone(),
                    action: Action::Create,
                    profile: fields.is_some().then(|| Expansion::of(ext)),
                    fields: fields.unwrap_or_default(),
                })
            }
            Some(have) => {
                let fields = field_changes(have, &want);
                if fields.is_empty() {
                    unchanged += 1;
                } else {
                    changes.push(Change {
                        extension: ext.extension.clone(),
                        action: Action::Update,
                        fields,
                        profile: Some(Expansion::of(ext)),
                    });
                }
            }
        }
    }
    for (number, have) in input.applied {
        if !desired_numbers.contains(number.as_str()) {
            changes.push(Change {
                extension: number.clone(),
                action: Action::Delete,
                fields: detail(&Fields::new(), have).unwrap_or_default(),
                profile: None,
            });
        }
    }
    changes.sort_by(|a, b| a.extension.cmp(&b.extension).then(a.action.cmp(&b.action)));

    let file_changed = input.current_file != Some(input.rendered);
    // Masking reads every line of both texts: not worth it when they are equal.
    let diff = if file_changed { masked_diff(input.current_file.unwrap_or(""), input.rendered) } else { String::new() };

    let mut drift = Vec::new();
    // Rendering is deterministic: when every applied row already equals the
    // desired one, the last run wrote exactly what renders now, so a file
    // that differs was changed behind our back.
    if changes.is_empty() && input.current_file.is_some_and(|c| c != input.rendered) {
        drift.push(Drift::ManagedFileEdited);
    }
    drift.extend(observed_drift(input.desired, &|n| input.applied.contains_key(n), input.observed));
    Plan { changes, unchanged, drift, file_changed, diff, applied_before: input.applied.len() }
}

/// What Asterisk shows that differs from what was applied: desired and
/// applied extensions missing or different there, and endpoints nobody
/// manages. `applied` says whether a number was applied before (only
/// those can drift; a create is not drift).
pub fn observed_drift(desired: &DesiredSet, applied: &dyn Fn(&str) -> bool, observed: &Observed) -> Vec<Drift> {
    let mut drift = Vec::new();
    let Observed::Endpoints { endpoints } = observed else { return drift };
    for ext in desired.extensions.iter().filter(|e| e.enabled) {
        if !applied(&ext.extension) {
            continue;
        }
        match endpoints.get(&ext.extension) {
            None => drift.push(Drift::MissingFromAsterisk { extension: ext.extension.clone() }),
            Some(seen) => {
                let fields = observed_differences(ext, seen);
                if !fields.is_empty() {
                    drift.push(Drift::DiffersInAsterisk { extension: ext.extension.clone(), fields });
                }
            }
        }
    }
    for name in endpoints.keys() {
        if !applied(name) && desired.get(name).is_none() {
            drift.push(Drift::Unmanaged { endpoint: name.clone() });
        }
    }
    drift
}

fn field_changes(have: &Fields, want: &Fields) -> Vec<FieldChange> {
    let keys: BTreeSet<&'static str> = have.keys().chain(want.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let (a, b) = (have.get(key), want.get(key));
        if a == b {
            continue;
        }
        let empty = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_string);
        if key == SECRET_FIELD {
            out.push(FieldChange { field: key, from: None, to: None });
        } else if empty(a) != empty(b) {
            out.push(FieldChange { field: key, from: empty(a), to: empty(b) });
        }
    }
    out
}

fn observed_differences(ext: &Extension, seen: &ObservedEndpoint) -> Vec<FieldChange> {
    let mut out = Vec::new();
    if let Some(t) = &seen.transport
        && !t.is_empty()
        && *t != ext.transport
    {
        out.push(FieldChange { field: "transport", from: Some(t.clone()), to: Some(ext.transport.clone()) });
    }
    if let Some(c) = &seen.context
        && *c != ext.context
    {
        out.push(FieldChange { field: "context", from: Some(c.clone()), to: Some(ext.context.clone()) });
    }
    if let Some(codecs) = &seen.codecs
        && *codecs != ext.codecs
    {
        out.push(FieldChange { field: "codecs", from: Some(codecs.join(",")), to: Some(ext.codecs.join(",")) });
    }
    out
}

/// How much of a diff is kept: a cold apply of 100k extensions would
/// otherwise carry a 30 MB diff through the plan, the run record and the UI.
pub const MAX_DIFF_BYTES: usize = 1 << 20;

/// How many changes the stored run record and the text and Markdown
/// renderings list one by one; the rest are counted.
pub const MAX_LISTED_CHANGES: usize = 1000;

/// How long the diff may search for the shortest edit script. Past it the
/// rest of the texts is shown as replaced: still a correct diff, only not
/// the shortest. A Myers diff of texts that differ wholesale costs the
/// square of their length (minutes at 20k extensions); this keeps every
/// plan's diff under a second whatever is on disk.
pub const DIFF_DEADLINE: std::time::Duration = std::time::Duration::from_millis(250);

/// A unified diff of two managed files with `password` and `md5_cred`
/// values masked, fit for logs, PR comments and the UI; cut after
/// [`MAX_DIFF_BYTES`] with a line that says so.
///
/// Bounded whatever the texts: a file on disk that shares fewer than half
/// of its sections with what renders (a foreign or mangled file) is
/// reported as replaced, with the sections on each side, instead of being
/// diffed line by line; any other pair is diffed with patience (anchored on
/// the lines each side has once: every extension's `auth = N` and
/// `username = N`), which stops searching at [`DIFF_DEADLINE`].
pub fn masked_diff(old: &str, new: &str) -> String {
    if old.is_empty() {
        return added_file_diff(new);
    }
    if old == new {
        return String::new();
    }
    if let Some(replaced) = replaced_file_diff(old, new) {
        return replaced;
    }
    // Diff the texts as they are and mask only the lines that are printed:
    // masking two whole 3 MB files first cost more than the diff itself.
    let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
    let new_lines: Vec<&str> = new.split_inclusive('\n').collect();
    let (ops, timed_out) = line_ops(&old_lines, &new_lines);
    let mut out = String::from("--- managed (on disk)\n+++ managed (rendered)\n");
    let mut left_out = 0usize;
    for hunk in similar::group_diff_ops(ops, 3) {
        let (Some(first), Some(last)) = (hunk.first(), hunk.last()) else { continue };
        let count = |r: std::ops::Range<usize>| r.len();
        let (old_range, new_range) =
            (first.old_range().start..last.old_range().end, first.new_range().start..last.new_range().end);
        if out.len() > MAX_DIFF_BYTES {
            left_out += hunk.iter().map(|op| count(op.old_range()) + count(op.new_range())).sum::<usize>();
            continue;
        }
        out.push_str(&format!("@@ -{} +{} @@\n", hunk_range(&old_range), hunk_range(&new_range)));
        for op in &hunk {
            let (tag, old_r, new_r) = op.as_tag_tuple();
            let lines: Vec<(char, &str)> = match tag {
                similar::DiffTag::Equal => old_lines[old_r].iter().map(|l| (' ', *l)).collect(),
                _ => old_lines[old_r]
                    .iter()
                    .map(|l| ('-', *l))
                    .chain(new_lines[new_r].iter().map(|l| ('+', *l)))
                    .collect(),
            };
            for (sign, line) in lines {
                if out.len() > MAX_DIFF_BYTES {
                    left_out += 1;
                    continue;
                }
                out.push(sign);
                out.push_str(&mask_secrets(line));
                if !line.ends_with('\n') {
                    out.push_str("\n\\ No newline at end of file\n");
                }
            }
        }
    }
    if left_out > 0 {
        out.push_str(&format!("… diff cut at {} KiB: {left_out} more line(s)\n", MAX_DIFF_BYTES / 1024));
    }
    if timed_out {
        out.push_str(&format!(
            "… the search for the shortest diff stopped after {} ms: what follows the last match is shown as replaced\n",
            DIFF_DEADLINE.as_millis()
        ));
    }
    out
}

/// A unified diff's `start,len` (1-based; `start` alone for one line).
fn hunk_range(r: &std::ops::Range<usize>) -> String {
    match r.len() {
        0 => format!("{},0", r.start),
        1 => format!("{}", r.start + 1),
        n => format!("{},{n}", r.start + 1),
    }
}

/// The line diff's operations, and whether the search hit [`DIFF_DEADLINE`].
/// The common head and tail are matched first, in linear time; a middle
/// where one side has a handful of lines and the other thousands (a file
/// cut short, a block appended) is a replacement without any search:
/// Myers' search costs the square of the longer side there.
fn line_ops(old: &[&str], new: &[&str]) -> (Vec<similar::DiffOp>, bool) {
    use similar::DiffOp;
    let (n, m) = (old.len(), new.len());
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..].iter().rev().zip(new[prefix..].iter().rev()).take_while(|(a, b)| a == b).count();
    let (old_mid, new_mid) = (prefix..n - suffix, prefix..m - suffix);
    let mut ops = Vec::new();
    if prefix > 0 {
        ops.push(DiffOp::Equal { old_index: 0, new_index: 0, len: prefix });
    }
    let mut timed_out = false;
    let lopsided = old_mid.len().min(new_mid.len()) <= 64 && old_mid.len().max(new_mid.len()) > 4096;
    if old_mid.is_empty() || new_mid.is_empty() || lopsided {
        if !old_mid.is_empty() {
            ops.push(DiffOp::Delete { old_index: old_mid.start, old_len: old_mid.len(), new_index: new_mid.start });
        }
        if !new_mid.is_empty() {
            ops.push(DiffOp::Insert { old_index: old_mid.end, new_index: new_mid.start, new_len: new_mid.len() });
        }
    } else {
        let deadline = std::time::Instant::now() + DIFF_DEADLINE;
        ops.extend(similar::capture_diff_deadline(
            similar::Algorithm::Patience,
            old,
            old_mid,
            new,
            new_mid,
            Some(deadline),
        ));
        timed_out = std::time::Instant::now() >= deadline;
    }
    if suffix > 0 {
        ops.push(DiffOp::Equal { old_index: n - suffix, new_index: m - suffix, len: suffix });
    }
    (ops, timed_out)
}

/// The section names (`[name]` lines) of a pjsip file, each once.
fn section_names(text: &str) -> std::collections::HashSet<&str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix('[').and_then(|r| r.split_once(']')).map(|(name, _)| name))
        .collect()
}

/// When the file on disk shares fewer than half of its sections with what
/// renders (or has none), a line diff says nothing useful and costs the
/// square of the file: say it is replaced, and which sections each side
/// has that the other lacks. Linear in the texts. `None`: diff them.
fn replaced_file_diff(old: &str, new: &str) -> Option<String> {
    let (was, now) = (section_names(old), section_names(new));
    let shared = was.intersection(&now).count();
    let most = was.len().max(now.len());
    if most == 0 || shared * 2 >= most {
        return None;
    }
    let lines = |t: &str| t.split_inclusive('\n').count();
    let mut out = format!(
        "--- managed (on disk)\n+++ managed (rendered)\n\
         @@ replaced: {} line(s) on disk -> {} line(s) rendered; {shared} of the {} section name(s) on disk are rendered @@\n",
        lines(old),
        lines(new),
        was.len()
    );
    let mut list = |title: &str, names: Vec<&str>| {
        if names.is_empty() {
            return;
        }
        out.push_str(&format!("{title} ({}):\n", names.len()));
        let mut left_out = 0usize;
        for name in &names {
            if out.len() > MAX_DIFF_BYTES / 2 {
                left_out += 1;
                continue;
            }
            out.push_str(&format!("  [{name}]\n"));
        }
        if left_out > 0 {
            out.push_str(&format!("  … and {left_out} more\n"));
        }
    };
    let mut gone: Vec<&str> = was.difference(&now).copied().collect();
    let mut added: Vec<&str> = now.difference(&was).copied().collect();
    gone.sort_unstable();
    added.sort_unstable();
    // Rendered sections first: they are the extensions this plan writes.
    list("- sections only in the rendered file", added);
    list("- sections only on disk", gone);
    Some(out)
}

/// The diff of a file that did not exist (a cold apply): every line added.
/// Written directly, masking line by line, without a masked copy of the
/// whole file or a diff of it.
fn added_file_diff(new: &str) -> String {
    if new.is_empty() {
        return String::new();
    }
    let lines = new.split_inclusive('\n').count();
    let mut out = format!("--- managed (on disk)\n+++ managed (rendered)\n@@ -0,0 +1,{lines} @@\n");
    let mut left_out = 0usize;
    for line in new.split_inclusive('\n') {
        if out.len() > MAX_DIFF_BYTES {
            left_out += 1;
            continue;
        }
        out.push('+');
        out.push_str(&mask_secrets(line));
        if !line.ends_with('\n') {
            out.push_str("\n\\ No newline at end of file\n");
        }
    }
    if left_out > 0 {
        out.push_str(&format!("… diff cut at {} KiB: {left_out} more line(s)\n", MAX_DIFF_BYTES / 1024));
    }
    out
}

/// The plan as the run record keeps it: the first [`MAX_LISTED_CHANGES`]
/// changes and drift items in detail, counts for all, no diff (it has a
/// column of its own).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredPlan<'a> {
    pub changes: &'a [Change],
    pub changes_omitted: usize,
    pub creates: usize,
    pub updates: usize,
    pub deletes: usize,
    pub unchanged: usize,
    pub drift: &'a [Drift],
    pub drift_omitted: usize,
    pub file_changed: bool,
    pub applied_before: usize,
}

impl<'a> StoredPlan<'a> {
    pub fn of(p: &'a Plan) -> Self {
        let n = p.changes.len().min(MAX_LISTED_CHANGES);
        let d = p.drift.len().min(MAX_LISTED_CHANGES);
        StoredPlan {
            changes: &p.changes[..n],
            changes_omitted: p.changes.len() - n,
            creates: p.count(Action::Create),
            updates: p.count(Action::Update),
            deletes: p.count(Action::Delete),
            unchanged: p.unchanged,
            drift: &p.drift[..d],
            drift_omitted: p.drift.len() - d,
            file_changed: p.file_changed,
            applied_before: p.applied_before,
        }
    }
}

/// Replaces the values of `password` and `md5_cred` lines by a fingerprint
/// that changes when the secret does (so the diff shows the line changed)
/// but reveals nothing of it.
pub fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let key = trimmed.split(['=', ' ']).next().unwrap_or("");
        if matches!(key, "password" | "md5_cred") {
            let value = trimmed.split_once('=').map(|(_, v)| v.trim()).unwrap_or("");
            let fp = crate::secret::md5_cred("mask", "asterisk-gitops", value);
            out.push_str(&format!("{key} = <secret {}>", &fp[..6]));
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Human-readable plan (the `plan` command's default output).
pub fn to_text(p: &Plan) -> String {
    let mut out = String::new();
    for c in p.changes.iter().take(MAX_LISTED_CHANGES) {
        let sign = match c.action {
            Action::Create => "+",
            Action::Update => "~",
            Action::Delete => "-",
        };
        out.push_str(&format!("{sign} {} ({})\n", c.extension, action_word(c.action)));
        for f in &c.fields {
            out.push_str(&format!("    {}\n", describe(f)));
        }
        if let Some(e) = &c.profile {
            out.push_str(&format!("    {e}\n"));
        }
    }
    if p.changes.len() > MAX_LISTED_CHANGES {
        out.push_str(&format!(
            "… and {} more change(s) (every one: --format json)\n",
            p.changes.len() - MAX_LISTED_CHANGES
        ));
    }
    for d in &p.drift {
        out.push_str(&format!("! drift: {}\n", describe_drift(d)));
    }
    out.push_str(&summary(p));
    out.push('\n');
    out
}

/// The plan as a Markdown comment for a pull request.
pub fn to_markdown(p: &Plan) -> String {
    let mut out = String::from("### asterisk-gitops plan\n\n");
    out.push_str(&format!("**{}**\n\n", summary(p)));
    if !p.changes.is_empty() {
        out.push_str("| | extension | changes |\n|---|---|---|\n");
        // GitHub refuses comments over 65,536 characters: keep the table short.
        const MARKDOWN_ROWS: usize = 200;
        for c in p.changes.iter().take(MARKDOWN_ROWS) {
            let mut fields: Vec<String> = c.fields.iter().map(|f| describe(f).replace('|', "\\|")).collect();
            fields.extend(c.profile.map(|e| format!("`{e}`")));
            out.push_str(&format!("| {} | `{}` | {} |\n", action_word(c.action), c.extension, fields.join("<br>")));
        }
        if p.changes.len() > MARKDOWN_ROWS {
            out.push_str(&format!("| | … | and {} more |\n", p.changes.len() - MARKDOWN_ROWS));
        }
        out.push('\n');
    }
    if !p.drift.is_empty() {
        out.push_str("Drift:\n\n");
        for d in &p.drift {
            out.push_str(&format!("- {}\n", describe_drift(d)));
        }
        out.push('\n');
    }
    if !p.diff.is_empty() {
        const MARKDOWN_DIFF: usize = 40_000;
        let mut cut = p.diff.len().min(MARKDOWN_DIFF);
        while !p.diff.is_char_boundary(cut) {
            cut -= 1;
        }
        let shown = &p.diff[..cut];
        let shown = if cut < p.diff.len() { &shown[..shown.rfind('\n').map_or(0, |i| i + 1)] } else { shown };
        out.push_str("<details><summary>Managed pjsip file diff</summary>\n\n```diff\n");
        out.push_str(shown);
        if shown.len() < p.diff.len() {
            out.push_str("… (cut; the full diff is in the run record)\n");
        }
        if !shown.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("```\n\n</details>\n");
    }
    out
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
    }
}

fn describe(f: &FieldChange) -> String {
    match (&f.from, &f.to) {
        _ if f.field == SECRET_FIELD => "secret: changed".to_string(),
        (None, Some(to)) => format!("{}: {to:?}", f.field),
        (Some(from), None) => format!("{}: {from:?} → (unset)", f.field),
        (Some(from), Some(to)) => format!("{}: {from:?} → {to:?}", f.field),
        (None, None) => format!("{}: changed", f.field),
    }
}

fn describe_drift(d: &Drift) -> String {
    match d {
        Drift::MissingFromAsterisk { extension } => format!("{extension} is missing from Asterisk"),
        Drift::DiffersInAsterisk { extension, fields } => {
            let f: Vec<String> = fields.iter().map(describe).collect();
            format!("{extension} differs in Asterisk ({})", f.join("; "))
        }
        Drift::ManagedFileEdited => {
            "the managed file differs from what the applied specs render (edited by hand?)".into()
        }
        Drift::Unmanaged { endpoint } => format!("{endpoint} is in Asterisk but not managed here (left alone)"),
        Drift::ObjectDiffers { .. } | Drift::Orphaned { .. } => drift_reason(d),
    }
}

/// One line a person reads: what drifted (an extension's state's reason,
/// a run's repairs; `status::describe_drift`).
pub fn drift_reason(d: &Drift) -> String {
    match d {
        Drift::MissingFromAsterisk { extension } => format!("{extension} is missing from Asterisk"),
        Drift::DiffersInAsterisk { extension, fields } => {
            let what: Vec<String> = fields
                .iter()
                .map(|f| match (&f.from, &f.to) {
                    (Some(held), Some(applied)) => format!("{} is {held:?} in Asterisk, {applied:?} applied", f.field),
                    _ => f.field.to_string(),
                })
                .collect();
            format!("{extension} differs in Asterisk: {}", what.join(", "))
        }
        Drift::ManagedFileEdited => "the managed file was edited by hand".into(),
        Drift::Unmanaged { endpoint } => format!("{endpoint} is in Asterisk but not managed"),
        Drift::ObjectDiffers { extension, object_type: kind, differences } => {
            format!("{extension}: its {kind} differs in Asterisk from what was pushed: {}", differences.join("; "))
        }
        Drift::Orphaned { object_type: kind, id } => {
            format!("{kind} {id} is in the daemon's astdb family but no spec declares it")
        }
    }
}

/// "2 to create, 1 to update, 0 to delete; 7 unchanged; managed file changes; 1 drift".
pub fn summary(p: &Plan) -> String {
    let mut s = format!(
        "{} to create, {} to update, {} to delete; {} unchanged",
        p.count(Action::Create),
        p.count(Action::Update),
        p.count(Action::Delete),
        p.unchanged
    );
    s.push_str(if p.file_changed { "; managed file changes" } else { "; managed file unchanged" });
    if !p.drift.is_empty() {
        s.push_str(&format!("; {} drift", p.drift.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::spec::load::load_file;
    use std::path::Path;

    fn set(yaml: &str) -> DesiredSet {
        let (exts, diags) = load_file("t.yaml", &crate::core::spec::SecretPolicy::for_spec_dir(Path::new(".")), yaml);
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        DesiredSet::new(exts.into_iter().map(|(e, _)| e).collect())
    }

    const TWO: &str = "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n  - {extension: \"1001\", md5Cred: 0123456789abcdef0123456789abcdef}\n  - {extension: \"1002\", md5Cred: 0123456789abcdef0123456789abcdef, displayName: Two}\n";

    #[test]
    fn desired_fields_gives_every_plan_name_of_the_field_table() {
        let (exts, diags) = crate::core::spec::load::load_for_test(
            "t.yaml",
            "extensions:\n  - {extension: \"1\", context: c, transport: t, codecs: ulaw, md5Cred: 0123456789abcdef0123456789abcdef}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let got: BTreeSet<&str> = desired_fields(&exts[0], "x").keys().collect();
        assert_eq!(got, FIELD_NAMES.iter().copied().collect::<BTreeSet<_>>());
        assert!(FIELD_NAMES.iter().all(|n| field_name(n) == Some(*n)));
    }

    #[test]
    fn options_are_compared_as_asterisk_normalises_them() {
        let s = set(
            "defaults: {context: c, transport: t, codecs: [ulaw]}\nextensions:\n  - {extension: \"1001\", md5Cred: 0123456789abcdef0123456789abcdef, displayName: Test User, dtmfMode: rfc4733, mailboxes: [1001@default], directMedia: false, maxContacts: 2}\n",
        );
        let ext = &s.extensions[0];
        // What a real Asterisk 22 reports for exactly that definition.
        let held = EndpointOptions {
            callerid: "\"Test User\" <1001>".into(),
            dtmf_mode: "rfc4733".into(),
            mailboxes: "1001@default".into(),
            profile_options: held_options(&[
                ("rewrite_contact", "true"),
                ("rtp_symmetric", "true"),
                ("force_rport", "true"),
                ("direct_media", "false"),
            ]),
            auth_type: Some("md5".into()),
            max_contacts: Some(2),
            remove_existing: Some(true),
            qualify_frequency: Some(60),
            auth_md5: Some(crate::secret::Digest::new("0123456789ABCDEF0123456789abcdef".into())),
            reported: BTreeMap::new(),
        };
        assert_eq!(held.mismatches(ext), Vec::<String>::new());
        assert!(!held.credential_differs("0123456789abcdef0123456789abcdef"), "digests compare without case");
        assert!(held.credential_differs("ffffffffffffffffffffffffffffffff"));
        assert!(!format!("{held:?}").contains("0123456789"), "a digest never prints");
        // The previous definition, kept after Asterisk refused the new one.
        let kept = EndpointOptions {
            callerid: "\"Old Name\" <1001>".into(),
            profile_options: held_options(&[
                ("rewrite_contact", "true"),
                ("rtp_symmetric", "true"),
                ("force_rport", "true"),
                ("direct_media", "true"),
            ]),
            auth_type: Some("userpass".into()),
            max_contacts: Some(1),
            remove_existing: Some(false),
            qualify_frequency: Some(0),
            ..held.clone()
        };
        let off = kept.mismatches(ext);
        assert_eq!(off.len(), 6, "{off:?}");
        assert!(off[0].starts_with("callerid: Asterisk has \"\\\"Old Name\\\" <1001>\""), "{off:?}");
        assert!(off.iter().any(|m| m.starts_with("direct_media") && m.ends_with("the file sets \"no\"")), "{off:?}");
    }

    #[test]
    fn extra_options_are_verified_as_asterisk_reports_them() {
        let s = set(
            "defaults: {context: c, transport: t, codecs: [ulaw], options: {endpoint: {timers: required}}}\nextensions:\n  - {extension: \"1001\", md5Cred: 0123456789abcdef0123456789abcdef, options: {endpoint: {pickup_group: \"9,1-2\", send_pai: true, ice_support: true}, aor: {minimum_expiration: 120}}}\n",
        );
        let ext = &s.extensions[0];
        assert_eq!(
            ext.options.summary(),
            "endpoint.ice_support=yes;endpoint.pickup_group=9,1-2;endpoint.send_pai=yes;endpoint.timers=required;aor.minimum_expiration=120"
        );
        let reported = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let held = EndpointOptions {
            auth_type: Some("md5".into()),
            max_contacts: Some(1),
            remove_existing: Some(true),
            qualify_frequency: Some(60),
            profile_options: held_options(&[
                ("rewrite_contact", "true"),
                ("rtp_symmetric", "true"),
                ("direct_media", "false"),
                ("ice_support", "true"),
            ]),
            reported: reported(&[
                ("endpoint/Timers", "required"),
                ("endpoint/PickupGroup", "1, 2, 9"),
                ("endpoint/SendPai", "true"),
                ("aor/MinimumExpiration", "120"),
            ]),
            ..Default::default()
        };
        assert_eq!(held.mismatches(ext), Vec::<String>::new());
        // Kept from before: the old values are named, each.
        let old = EndpointOptions {
            profile_options: held_options(&[
                ("rewrite_contact", "true"),
                ("rtp_symmetric", "true"),
                ("direct_media", "false"),
            ]),
            reported: reported(&[
                ("endpoint/Timers", "yes"),
                ("endpoint/PickupGroup", "1, 9"),
                ("endpoint/SendPai", "false"),
                ("aor/MinimumExpiration", "60"),
            ]),
            ..held.clone()
        };
        let off = old.mismatches(ext);
        assert_eq!(off.len(), 5, "{off:?}");
        assert!(off.iter().any(|m| m.starts_with("ice_support: Asterisk has \"no\"")), "{off:?}");
        assert!(off.iter().any(|m| m.starts_with("endpoint pickup_group: Asterisk has \"1, 9\"")), "{off:?}");
        assert!(off.iter().any(|m| m.starts_with("aor minimum_expiration")), "{off:?}");
    }

    /// What Asterisk 22 reports for the profile table's options: its
    /// defaults (the captured endpoint), with `set` (AMI spelling) on top.
    fn held_options(set: &[(&str, &str)]) -> BTreeMap<&'static str, String> {
        use crate::core::spec::profile::{OPTIONS, normalise};
        OPTIONS
            .iter()
            .map(|o| {
                let v = set.iter().find(|(k, _)| *k == o.name).map_or(o.asterisk_default, |(_, v)| *v);
                (o.name, normalise(v))
            })
            .collect()
    }

    const PROFILES: &str = "defaults: {context: c, transport: transport-udp, codecs: [ulaw]}\nextensions:\n  - {extension: \"2001\", md5Cred: 0123456789abcdef0123456789abcdef}\n  - {extension: \"2002\", md5Cred: 0123456789abcdef0123456789abcdef, profile: lan, rtpSymmetric: true}\n  - {extension: \"2003\", md5Cred: 0123456789abcdef0123456789abcdef, profile: webrtc, transport: transport-ws}\n";

    #[test]
    fn verification_compares_every_option_a_profile_sets_or_implies() {
        let s = set(PROFILES);
        let base = |options| EndpointOptions {
            auth_type: Some("md5".into()),
            max_contacts: Some(1),
            remove_existing: Some(true),
            qualify_frequency: Some(60),
            profile_options: options,
            ..Default::default()
        };
        // lan with rtpSymmetric: Asterisk's defaults, rtp_symmetric on.
        let lan = s.get("2002").expect("2002");
        assert_eq!(base(held_options(&[("rtp_symmetric", "true")])).mismatches(lan), Vec::<String>::new());
        // Still nat's flags in Asterisk (a switch it ignored): named, each.
        let stale =
            base(held_options(&[("rewrite_contact", "true"), ("rtp_symmetric", "true"), ("direct_media", "false")]))
                .mismatches(lan);
        assert_eq!(stale.len(), 2, "{stale:?}");
        assert!(
            stale[0].starts_with(
                "rewrite_contact: Asterisk has \"yes\", the file sets \"no (Asterisk's default, profile lan)\""
            ),
            "{stale:?}"
        );
        // webrtc: what Asterisk derives from webrtc = yes is verified too.
        let webrtc = s.get("2003").expect("2003");
        let implied: Vec<(&str, &str)> = crate::core::spec::Profile::Webrtc
            .sets()
            .iter()
            .chain(crate::core::spec::Profile::Webrtc.implies())
            .copied()
            .collect();
        assert_eq!(base(held_options(&implied)).mismatches(webrtc), Vec::<String>::new());
        // Asterisk kept the endpoint without webrtc (refused or ignored): the run fails on each option.
        let refused = base(held_options(&[])).mismatches(webrtc);
        assert_eq!(refused.len(), implied.len(), "{refused:?}");
        assert!(refused.iter().any(|m| m.starts_with("media_encryption: Asterisk has \"no\"")), "{refused:?}");
        // Not reported at all (an Asterisk that does not know the option).
        let mut unknown = held_options(&implied);
        unknown.remove("webrtc");
        let off = base(unknown).mismatches(webrtc);
        assert_eq!(off, ["webrtc: Asterisk has \"unset\", the file sets \"yes\"".to_string()]);
    }

    #[test]
    fn plan_shows_what_each_profile_expands_to() {
        let s = set(PROFILES);
        let p = plan(&PlanInput {
            desired: &s,
            secret_md5: &md5s(&s),
            applied: &BTreeMap::new(),
            observed: &Observed::NotConfigured,
            current_file: None,
            rendered: "",
        });
        let text = to_text(&p);
        assert!(text.contains("+ 2001 (create)\n") && text.contains("    profile: \"nat\"\n"), "{text}");
        assert!(
            text.contains(
                "    profile nat: rewrite_contact=yes, rtp_symmetric=yes, force_rport=yes, direct_media=no\n"
            ),
            "{text}"
        );
        assert!(text.contains("    profile lan: writes nothing, Asterisk's defaults hold (rewrite_contact=no, rtp_symmetric=no, force_rport=yes, direct_media=yes); overridden by the spec: rtp_symmetric=yes\n"), "{text}");
        assert!(
            text.contains("    profile webrtc: webrtc=yes (Asterisk then sets use_avpf=yes, media_encryption=dtls,"),
            "{text}"
        );
        let md = to_markdown(&p);
        assert!(
            md.contains("`profile nat: rewrite_contact=yes, rtp_symmetric=yes, force_rport=yes, direct_media=no`"),
            "{md}"
        );
        let json = serde_json::to_value(&p).expect("json");
        assert_eq!(
            json["changes"][0]["profile"],
            "profile nat: rewrite_contact=yes, rtp_symmetric=yes, force_rport=yes, direct_media=no"
        );

        // nat -> lan on an applied extension: an update with the profile's line.
        let mut applied = applied_from(&s);
        let was_nat = set(&PROFILES.replace(", profile: lan, rtpSymmetric: true", ""));
        applied.insert(
            "2002".into(),
            desired_fields(was_nat.get("2002").expect("2002"), "0123456789abcdef0123456789abcdef"),
        );
        let p = plan(&PlanInput {
            desired: &s,
            secret_md5: &md5s(&s),
            applied: &applied,
            observed: &Observed::NotConfigured,
            current_file: None,
            rendered: "",
        });
        let text = to_text(&p);
        assert_eq!(p.count(Action::Update), 1, "{text}");
        assert!(text.contains("~ 2002 (update)\n    directMedia: \"false\" → (unset)\n"), "{text}");
        assert!(text.contains("    profile: \"nat\" → \"lan\"\n"), "{text}");
        assert!(text.contains("    profile lan: writes nothing"), "{text}");
    }

    fn md5s(s: &DesiredSet) -> BTreeMap<String, String> {
        s.extensions.iter().map(|e| (e.extension.clone(), "0123456789abcdef0123456789abcdef".to_string())).collect()
    }

    fn applied_from(s: &DesiredSet) -> BTreeMap<String, Fields> {
        let m = md5s(s);
        s.extensions.iter().map(|e| (e.extension.clone(), desired_fields(e, &m[&e.extension]))).collect()
    }

    #[test]
    fn field_names_cover_every_desired_field() {
        let s = set(TWO);
        let f = desired_fields(&s.extensions[0], "x");
        assert_eq!(f.keys().collect::<BTreeSet<_>>(), FIELD_NAMES.iter().copied().collect::<BTreeSet<_>>());
    }

    #[test]
    fn creates_updates_deletes_and_noops() {
        let before = set(TWO);
        let after = set(&TWO.replace("displayName: Two", "displayName: Deux").replace(
            "  - {extension: \"1001\", md5Cred: 0123456789abcdef0123456789abcdef}\n",
            "  - {extension: \"1003\", md5Cred: 0123456789abcdef0123456789abcdef}\n",
        ));
        let applied = applied_from(&before);
        let p = plan(&PlanInput {
            desired: &after,
            secret_md5: &md5s(&after),
            applied: &applied,
            observed: &Observed::NotConfigured,
            current_file: Some("old"),
            rendered: "new",
        });
        let summary: Vec<(&str, Action)> = p.changes.iter().map(|c| (c.extension.as_str(), c.action)).collect();
        assert_eq!(summary, [("1001", Action::Delete), ("1002", Action::Update), ("1003", Action::Create)]);
        assert_eq!(
            p.changes[1].fields,
            [
                FieldChange {
                    field: "callerId",
                    from: Some("\"Two\" <1002>".into()),
                    to: Some("\"Deux\" <1002>".into())
                },
                FieldChange { field: "displayName", from: Some("Two".into()), to: Some("Deux".into()) }
            ]
        );
        assert!(p.file_changed && p.has_changes());
        assert!(p.drift.is_empty());
    }

    #[test]
    fn an_unchanged_estate_plans_nothing() {
        let s = set(TWO);
        let p = plan(&PlanInput {
            desired: &s,
            secret_md5: &md5s(&s),
            applied: &applied_from(&s),
            observed: &Observed::NotConfigured,
            current_file: Some("x"),
            rendered: "x",
        });
        assert!(!p.has_changes());
        assert_eq!(p.unchanged, 2);
        assert_eq!(p.diff, "");
    }

    #[test]
    fn a_changed_secret_is_reported_without_its_value() {
        let s = set(TWO);
        let mut m = md5s(&s);
        m.insert("1001".into(), "ffffffffffffffffffffffffffffffff".into());
        let p = plan(&PlanInput {
            desired: &s,
            secret_md5: &m,
            applied: &applied_from(&s),
            observed: &Observed::NotConfigured,
            current_file: None,
            rendered: "",
        });
        assert_eq!(p.changes[0].fields, [FieldChange { field: SECRET_FIELD, from: None, to: None }]);
        let text = to_text(&p) + &to_markdown(&p) + &serde_json::to_string(&p).unwrap_or_default();
        assert!(!text.contains("ffffffff") && !text.contains("0123456789abcdef"), "{text}");
    }

    #[test]
    fn drift_missing_differs_edited_and_unmanaged() {
        let s = set(TWO);
        let endpoints: BTreeMap<String, ObservedEndpoint> = [
            (
                "1002",
                ObservedEndpoint {
                    name: "1002".into(),
                    transport: Some("transport-tcp".into()),
                    context: None,
                    codecs: None,
                    options: None,
                },
            ),
            (
                "9000",
                ObservedEndpoint { name: "9000".into(), transport: None, context: None, codecs: None, options: None },
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let p = plan(&PlanInput {
            desired: &s,
            secret_md5: &md5s(&s),
            applied: &applied_from(&s),
            observed: &Observed::Endpoints { endpoints },
            current_file: Some("edited"),
            rendered: "ours",
        });
        assert_eq!(
            p.drift,
            [
                Drift::ManagedFileEdited,
                Drift::MissingFromAsterisk { extension: "1001".into() },
                Drift::DiffersInAsterisk {
                    extension: "1002".into(),
                    fields: vec![FieldChange {
                        field: "transport",
                        from: Some("transport-tcp".into()),
                        to: Some("transport-udp".into())
                    }]
                },
                Drift::Unmanaged { endpoint: "9000".into() },
            ]
        );
        assert!(p.has_healable_drift());
    }

    #[test]
    fn huge_diffs_and_plans_are_cut_and_say_so() {
        let new: String = (0..100_000).map(|i| format!("[{i}]\ntype = endpoint\ncontext = from-internal\n")).collect();
        let d = masked_diff("", &new);
        assert!(d.len() < MAX_DIFF_BYTES + 64 * 1024, "{}", d.len());
        assert!(d.starts_with("--- managed (on disk)\n+++ managed (rendered)\n@@"));
        assert!(d.ends_with("more line(s)\n"), "{}", &d[d.len() - 200..]);

        let changes: Vec<Change> = (0..MAX_LISTED_CHANGES + 5)
            .map(|i| Change { extension: format!("{i:05}"), action: Action::Create, fields: Vec::new(), profile: None })
            .collect();
        let p = Plan { changes, ..Default::default() };
        let text = to_text(&p);
        assert!(text.contains("… and 5 more change(s)"), "{}", &text[text.len() - 200..]);
        let stored = serde_json::to_value(StoredPlan::of(&p)).expect("json");
        assert_eq!(stored["changesOmitted"], 5);
        assert_eq!(stored["creates"], MAX_LISTED_CHANGES + 5);
        assert_eq!(stored["changes"].as_array().map(Vec::len), Some(MAX_LISTED_CHANGES));
        assert!(to_markdown(&p).contains("and 805 more"));
    }

    fn sections(names: impl Iterator<Item = String>) -> String {
        names
            .map(|n| {
                format!(
                    "\n[{n}]\ntype = endpoint\nauth = {n}\n\n[{n}]\ntype = auth\nusername = {n}\npassword = pw-{n}\n"
                )
            })
            .collect()
    }

    #[test]
    fn a_foreign_file_is_reported_as_replaced_with_its_sections_and_no_secret() {
        let old = sections((0..20_000).map(|i| format!("foreign-{i}")));
        let new = sections((0..20_000).map(|i| format!("{}", 100_000 + i)));
        let d = masked_diff(&old, &new);
        assert!(d.starts_with("--- managed (on disk)\n+++ managed (rendered)\n@@ replaced: "), "{}", &d[..300]);
        assert!(d.contains("0 of the 20000 section name(s) on disk are rendered"), "{}", &d[..300]);
        assert!(d.contains("\n  [100000]\n") && d.contains("sections only on disk (20000)"), "{}", &d[..300]);
        assert!(!d.contains("pw-"), "no secret in the diff");
        assert!(d.len() < MAX_DIFF_BYTES + 64 * 1024, "{}", d.len());
    }

    #[test]
    fn a_file_changed_everywhere_is_still_diffed_line_by_line_and_masked() {
        let names = || (0..20_000).map(|i| format!("{}", 100_000 + i));
        let old = sections(names());
        let new = sections(names()).replace("type = endpoint", "type = endpoint\ncontext = x");
        let d = masked_diff(&old, &new);
        assert!(d.contains("\n+context = x\n"), "{}", &d[..300]);
        assert!(!d.contains("pw-"), "secrets stay masked");
        // Cut in the middle of a line, as a killed writer leaves it.
        let cut = new.find("username = 110000").expect("present") + 5;
        let truncated = &new[..cut];
        let d = masked_diff(truncated, &new);
        assert!(d.contains("\\ No newline at end of file") && !d.contains("replaced:"), "{}", &d[..300]);
        assert!(!d.contains("pw-"));
    }

    #[test]
    fn the_diff_masks_secrets_but_shows_that_they_changed() {
        let d = masked_diff("[1]\npassword = hunter2\n", "[1]\npassword = hunter3\n");
        assert!(!d.contains("hunter"), "{d}");
        assert!(d.contains("-password = <secret") && d.contains("+password = <secret"), "{d}");
    }
}
