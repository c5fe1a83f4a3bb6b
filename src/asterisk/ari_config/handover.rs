//! Switching a running installation between the apply targets (`file` →
//! `ari` and back) with no moment in which an extension is missing or a
//! registered phone loses its contact.
//!
//! What the real Asterisk 22 does with `sorcery.conf` putting the astdb
//! wizard first and the config wizard second (`tests/real/handover.rs`
//! checks each of these):
//! - an object held by both is the astdb one for every lookup by id (ARI
//!   `GET`, `PJSIPShowEndpoint`, a REGISTER), and is listed once;
//! - ARI cannot create an object over a file's (403), but AMI `DBPut` of the
//!   JSON res_sorcery_astdb stores (`{"option":"value",…}` under
//!   `/asterisk-gitops/<type>/<id>`) can, and is live at once; an ARI `PUT`
//!   of the object is then an update of the astdb copy (200), which
//!   Asterisk validates and stores in its own form;
//! - a reload of the file without the object leaves the astdb copy in
//!   force, its contacts kept;
//! - AMI `DBDel` of the astdb copy makes the file's copy the one found at
//!   once, contacts kept; an ARI `DELETE` of an aor held by both answers 204
//!   but also deletes every contact of that aor (res_pjsip's aor observer):
//!   a registration lost. So the way back never deletes through ARI.
//!
//! `to_ari` (a start with `apply.target: ari` while the managed file still
//! defines extensions): each extension's objects are written into astdb
//! (`DBPut`), then pushed through ARI (`PUT`, each answer verified as the
//! ari target verifies), then the record of what was pushed is written, the
//! managed file is left with its header only and res_pjsip is reloaded once.
//! An extension whose push fails has its astdb copies removed (`DBDel`) and
//! stays in the managed file: the file's definition stays in force.
//!
//! `to_file` (a start with `apply.target: file` while the astdb family holds
//! objects): the managed file is written with the record's sections, res_pjsip
//! is reloaded, then each astdb copy is read (`DBGet`), removed (`DBDel`)
//! and the object looked up again: found, the file's copy took over; not
//! found, the file's did not load, and the astdb copy is put back.

use super::live::{DynamicConfig, mismatches};
use super::sections::{self, Section, SectionError};
use super::{ASTDB_FAMILY, RECORD_HEADER};
use crate::asterisk::{AmiError, Asterisk, Message};
use crate::reconcile::{AsteriskControl, ConfigFile};
use std::collections::{BTreeMap, BTreeSet};

/// What a hand-over did, for the run it is recorded as.
#[derive(Debug, Default)]
pub struct Handover {
    /// `file → ari` or `ari → file`.
    pub direction: &'static str,
    /// Extensions whose objects the new target now serves.
    pub handed: BTreeSet<String>,
    /// Extensions (or objects) left as they were, with the reason.
    pub failures: BTreeMap<String, String>,
    pub reloaded: bool,
    /// What it did, in order (the run's reasons).
    pub reasons: Vec<String>,
}

impl Handover {
    /// What was left as it was, in one line (`id: why; …`), if anything.
    pub fn failures_told(&self) -> Option<String> {
        (!self.failures.is_empty())
            .then(|| self.failures.iter().map(|(id, why)| format!("{id}: {why}")).collect::<Vec<_>>().join("; "))
    }
}

/// Why a hand-over could not start (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} cannot be handed over: {source}")]
    Unreadable { path: String, source: SectionError },
    #[error("Asterisk's astdb: {0}")]
    Astdb(#[from] AmiError),
}

/// The astdb family of one object type (`asterisk-gitops/endpoint`).
pub fn family(kind: &str) -> String {
    format!("{ASTDB_FAMILY}/{kind}")
}

/// The longest value one AMI `DBPut` can carry: Asterisk reads an AMI line
/// into 1,024 bytes (`main/manager.c`, `inbuf`) and answers a longer one
/// "Failed to parse message: line too long"; `Val: ` and CRLF take 7.
pub const MAX_DBPUT_VALUE: usize = 1_000;

/// The JSON res_sorcery_astdb stores for an object: its options as strings,
/// in the order written, and whether options had to be left out so it fits
/// one AMI line ([`MAX_DBPUT_VALUE`]; the template writes the options an
/// extension needs to work first, and the ARI `PUT` right after sets every
/// option). `disallow = all` is left out: an object astdb creates starts
/// with no codec, so `allow` alone gives the same list (and a JSON object
/// holds a name once; a repeated option keeps its last value until that
/// `PUT` writes the object in Asterisk's form).
pub fn astdb_json(fields: &[(String, String)]) -> (String, bool) {
    let mut out = String::from("{");
    let mut trimmed = false;
    for (k, v) in fields {
        if k == "disallow" && v == "all" {
            continue;
        }
        let pair = format!(
            "{}{}:{}",
            if out.len() > 1 { "," } else { "" },
            serde_json::Value::String(k.clone()),
            serde_json::Value::String(v.clone())
        );
        if out.len() + pair.len() + 1 > MAX_DBPUT_VALUE {
            trimmed = true;
            continue;
        }
        out.push_str(&pair);
    }
    out.push('}');
    (out, trimmed)
}

/// The options of a value res_sorcery_astdb stored (a JSON object of
/// strings), for an ARI `PUT`; `None` when it is not one.
pub fn astdb_fields(value: &str) -> Option<Vec<(String, String)>> {
    let serde_json::Value::Object(map) = serde_json::from_str(value).ok()? else { return None };
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            _ => None,
        })
        .collect()
}

/// The comment lines before a config text's first section (its header).
pub fn header(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// The managed file's header when it has none of its own.
pub const MANAGED_HEADER: &str = "; Managed by asterisk-gitops: do not edit, changes here are overwritten.\n";

/// `/asterisk-gitops/<type>/<id>` keys as (type, id).
pub fn objects_of(keys: &[String]) -> Vec<(String, String)> {
    let prefix = format!("/{ASTDB_FAMILY}/");
    keys.iter()
        .filter_map(|k| k.strip_prefix(&prefix)?.split_once('/'))
        .filter(|(kind, id)| !kind.is_empty() && !id.is_empty() && !id.contains('/'))
        .map(|(kind, id)| (kind.to_string(), id.to_string()))
        .collect()
}

impl Asterisk {
    /// AMI `DBPut` (manager.conf `write = system`).
    pub async fn db_put(&self, family: &str, key: &str, value: &str) -> Result<(), AmiError> {
        self.single(Message::action("DBPut").with("Family", family).with("Key", key).with("Val", value))
            .await
            .map(|_| ())
    }

    /// AMI `DBGet`: the value, `None` when there is no such key. The value
    /// of an auth holds its secret: never log it.
    pub async fn db_get(&self, family: &str, key: &str) -> Result<Option<String>, AmiError> {
        match self.list(Message::action("DBGet").with("Family", family).with("Key", key)).await {
            Ok(items) => Ok(items
                .iter()
                .find(|m| m.get("Event") == Some("DBGetResponse"))
                .and_then(|m| m.get("Val"))
                .map(str::to_string)),
            Err(AmiError::Rejected { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// AMI `DBDel`; `false` when there was no such key.
    pub async fn db_del(&self, family: &str, key: &str) -> Result<bool, AmiError> {
        match self.single(Message::action("DBDel").with("Family", family).with("Key", key)).await {
            Ok(_) => Ok(true),
            Err(AmiError::Rejected { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn read(file: &dyn ConfigFile) -> Result<Option<String>, HandoverError> {
    file.read().map_err(|source| HandoverError::Read { path: file.path().display().to_string(), source })
}

fn write(file: &dyn ConfigFile, text: &str) -> Result<(), HandoverError> {
    file.write(text).map_err(|source| HandoverError::Write { path: file.path().display().to_string(), source })
}

fn parse(file: &dyn ConfigFile, text: &str) -> Result<BTreeMap<String, Vec<Section>>, HandoverError> {
    sections::parse(text)
        .map(sections::by_id)
        .map_err(|source| HandoverError::Unreadable { path: file.path().display().to_string(), source })
}

/// `file → ari`: hands every extension the managed file defines over to
/// the astdb wizard, then empties the file to its header with one reload.
/// `Ok(None)` when the managed file defines nothing.
pub async fn to_ari<D: DynamicConfig>(
    ami: &Asterisk,
    ari: &D,
    managed: &dyn ConfigFile,
    record: &dyn ConfigFile,
) -> Result<Option<Handover>, HandoverError> {
    let Some(text) = read(managed)? else { return Ok(None) };
    let groups = parse(managed, &text)?;
    if groups.is_empty() {
        return Ok(None);
    }
    let mut out = Handover { direction: "file → ari", ..Default::default() };
    let mut kept: BTreeMap<String, Vec<Section>> = BTreeMap::new();
    let mut handed: BTreeMap<String, Vec<Section>> = BTreeMap::new();
    for (id, group) in groups {
        let mut objects: Vec<&Section> = group.iter().collect();
        objects.sort_by_key(|s| super::live::rank(&s.kind));
        match copy_into_astdb(ami, ari, &id, &objects).await {
            Ok(()) => {
                handed.insert(id, group);
            }
            Err(why) => {
                // The file's definition stays the one in force.
                for s in &objects {
                    if let Err(e) = ami.db_del(&family(&s.kind), &id).await {
                        tracing::warn!(id = %id, kind = %s.kind, error = %e, "could not remove an astdb copy of an extension not handed over");
                    }
                }
                out.failures.insert(id.clone(), why);
                kept.insert(id, group);
            }
        }
    }
    if handed.is_empty() {
        out.reasons.push(format!(
            "hand-over file → ari: nothing handed over ({} extension(s) stay in the managed file)",
            kept.len()
        ));
        return Ok(Some(out));
    }
    // The record: what astdb now holds (with what an earlier ari phase left).
    let mut recorded = match read(record)?.map(|t| sections::parse(&t).map(sections::by_id)) {
        Some(Ok(r)) => r,
        _ => BTreeMap::new(),
    };
    recorded.extend(handed.iter().map(|(k, v)| (k.clone(), v.clone())));
    write(record, &sections::write(RECORD_HEADER, &recorded))?;
    write(managed, &sections::write(&header(&text), &kept))?;
    out.handed = handed.keys().cloned().collect();
    match AsteriskControl::reload(ami).await {
        Ok(()) => out.reloaded = true,
        Err(e) => out.reasons.push(format!(
            "the reload after emptying the managed file failed ({e}): the file's copies stay loaded behind astdb's until the next reload"
        )),
    }
    let mut missing = Vec::new();
    for id in &out.handed {
        if !matches!(ari.get("endpoint", id).await, Ok(Some(_))) {
            missing.push(id.clone());
        }
    }
    out.reasons.insert(
        0,
        format!(
            "hand-over file → ari: {} extension(s) copied into astdb (DBPut), pushed through ARI and verified, then removed from the managed file with {}",
            out.handed.len(),
            if out.reloaded { "one reload" } else { "no reload" }
        ),
    );
    if !kept.is_empty() {
        out.reasons.push(format!(
            "{} extension(s) not handed over, still defined by the managed file: {}",
            kept.len(),
            kept.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if missing.is_empty() {
        out.reasons.push(format!("after the reload Asterisk holds all {} handed-over endpoint(s)", out.handed.len()));
    } else {
        for id in &missing {
            out.failures.insert(id.clone(), "not found after the hand-over's reload".into());
        }
        out.reasons.push(format!("not found after the reload: {}", missing.join(", ")));
    }
    Ok(Some(out))
}

async fn copy_into_astdb<D: DynamicConfig>(
    ami: &Asterisk,
    ari: &D,
    id: &str,
    objects: &[&Section],
) -> Result<(), String> {
    for s in objects {
        let (json, trimmed) = astdb_json(&s.fields);
        if trimmed {
            tracing::info!(id, kind = %s.kind, "an object too long for one AMI line is written into astdb in part; the ARI PUT right after completes it");
        }
        ami.db_put(&family(&s.kind), id, &json)
            .await
            .map_err(|e| format!("could not write {} {id} into astdb: {e}", s.kind))?;
    }
    for s in objects {
        let answer = ari.put(&s.kind, id, &s.fields).await.map_err(|e| {
            // 403 with a copy in astdb: no astdb wizard for the type.
            let hint = if matches!(e, crate::asterisk::ari::AriError::Status { status: 403, .. }) {
                " (is the astdb wizard first in sorcery.conf? examples/asterisk/sorcery.conf.snippet; Asterisk must be restarted with it)"
            } else {
                ""
            };
            format!("ARI refused {} {id}: {e}{hint}", s.kind)
        })?;
        let off = mismatches(&s.fields, &answer);
        if !off.is_empty() {
            return Err(format!("{} {id} is not as the file defines it: {}", s.kind, off.join("; ")));
        }
    }
    Ok(())
}

/// `ari → file`: writes the record's extensions into the managed file,
/// reloads, then removes their astdb copies one by one, each only once the
/// file's copy is found in its place. `Ok(None)` when the astdb family
/// holds nothing or there is no record of what was pushed.
pub async fn to_file<D: DynamicConfig>(
    ami: &Asterisk,
    ari: &D,
    managed: &dyn ConfigFile,
    record: &dyn ConfigFile,
) -> Result<Option<Handover>, HandoverError> {
    // No record: nothing was pushed from this state directory (or a
    // hand-over back already finished); a file-only installation is not
    // made to list astdb at every start.
    if read(record)?.is_none() {
        return Ok(None);
    }
    let held = objects_of(&ami.astdb_keys(ASTDB_FAMILY).await?);
    if held.is_empty() {
        // A record of objects Asterisk does not hold describes nothing: a
        // later start on `ari` must not take it for what astdb holds.
        std::fs::remove_file(record.path())
            .map_err(|source| HandoverError::Write { path: record.path().display().to_string(), source })?;
        return Ok(None);
    }
    let mut out = Handover { direction: "ari → file", ..Default::default() };
    let Some(pushed) = read(record)?.and_then(|t| sections::parse(&t).ok()).map(sections::by_id) else {
        out.reasons.push(format!(
            "hand-over ari → file: astdb holds {} object(s) of the family {ASTDB_FAMILY} but {} is missing or unreadable: they are left in astdb, where they hide the managed file's objects of the same ids",
            held.len(),
            record.path().display()
        ));
        out.failures.insert("*".into(), "no record of what was pushed".into());
        return Ok(Some(out));
    };
    let current = read(managed)?;
    let mut groups = match &current {
        Some(text) => parse(managed, text)?,
        None => BTreeMap::new(),
    };
    let head = current.as_deref().map(header).filter(|h| !h.trim().is_empty());
    groups.extend(pushed);
    write(managed, &sections::write(head.as_deref().unwrap_or(MANAGED_HEADER), &groups))?;
    match AsteriskControl::reload(ami).await {
        Ok(()) => out.reloaded = true,
        Err(e) => {
            out.reasons.push(format!(
                "hand-over ari → file: the managed file was written but the reload failed ({e}); astdb's copies are kept"
            ));
            out.failures.insert("*".into(), format!("reload failed: {e}"));
            return Ok(Some(out));
        }
    }
    let mut left = Vec::new();
    let mut failed_ids = BTreeSet::new();
    for (kind, id) in &held {
        if !groups.get(id).is_some_and(|g| g.iter().any(|s| &s.kind == kind)) {
            left.push(format!("{kind} {id}"));
            continue;
        }
        match switch_to_file(ami, ari, kind, id).await {
            Ok(()) => {}
            Err(why) => {
                failed_ids.insert(id.clone());
                out.failures.insert(format!("{kind} {id}"), why);
            }
        }
    }
    out.handed = held.iter().map(|(_, id)| id.clone()).filter(|id| !failed_ids.contains(id)).collect();
    out.reasons.push(format!(
        "hand-over ari → file: {} extension(s) written into the managed file, one reload, then their astdb copies removed (DBDel) one by one, each once the file's copy was found",
        out.handed.len()
    ));
    if !out.failures.is_empty() {
        out.reasons.push(format!(
            "kept in astdb (the file's copy was not found): {}",
            out.failures.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if !left.is_empty() {
        out.reasons.push(format!("left in astdb, not in the record of what was pushed: {}", left.join(", ")));
    }
    if out.failures.is_empty() && left.is_empty() {
        // Asterisk no longer holds anything the record describes.
        if let Err(e) = std::fs::remove_file(record.path()) {
            tracing::warn!(error = %e, path = %record.path().display(), "could not remove the record of what was pushed");
        }
    }
    Ok(Some(out))
}

async fn switch_to_file<D: DynamicConfig>(ami: &Asterisk, ari: &D, kind: &str, id: &str) -> Result<(), String> {
    let fam = family(kind);
    let value = ami.db_get(&fam, id).await.map_err(|e| format!("DBGet: {e}"))?;
    ami.db_del(&fam, id).await.map_err(|e| format!("DBDel: {e}"))?;
    match ari.get(kind, id).await {
        Ok(Some(_)) => Ok(()),
        found => {
            let why = match found {
                Err(e) => format!("could not look it up after removing its astdb copy ({e})"),
                _ => "the managed file's copy did not load (see Asterisk's log)".to_string(),
            };
            // Put back through ARI (Asterisk's own JSON of an endpoint is
            // some 6 KB: too long for an AMI DBPut): with neither copy
            // found, the PUT creates it in astdb again, every option as it was.
            let Some(fields) = value.as_deref().and_then(astdb_fields) else {
                return Err(format!("{why}; its astdb value could not be read back to put it back"));
            };
            ari.put(kind, id, &fields).await.map_err(|e| format!("{why}; putting the astdb copy back failed: {e}"))?;
            Err(format!("{why}; its astdb copy was put back"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_astdb_json_keeps_the_written_order_and_quotes_values() {
        let f = |k: &str, v: &str| (k.to_string(), v.to_string());
        let (json, trimmed) =
            astdb_json(&[f("context", "a"), f("disallow", "all"), f("allow", "ulaw,alaw"), f("callerid", "\"T\" <1>")]);
        assert_eq!(json, r#"{"context":"a","allow":"ulaw,alaw","callerid":"\"T\" <1>"}"#);
        assert!(!trimmed);
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v["callerid"], "\"T\" <1>");
        assert_eq!(astdb_json(&[]), ("{}".to_string(), false));
        let back = astdb_fields(&json).expect("read back");
        assert_eq!(back.len(), 3);
        assert!(back.contains(&f("callerid", "\"T\" <1>")));
        assert_eq!(astdb_fields("[1]"), None);
        assert_eq!(astdb_fields(r#"{"a":1}"#), None);
    }

    #[test]
    fn an_object_too_long_for_one_ami_line_is_written_in_part_first_options_first() {
        let f = |k: &str, v: String| (k.to_string(), v);
        let fields = vec![
            f("context", "from-internal".into()),
            f("set_var", "x".repeat(MAX_DBPUT_VALUE)),
            f("aors", "1001".into()),
        ];
        let (json, trimmed) = astdb_json(&fields);
        assert!(trimmed && json.len() <= MAX_DBPUT_VALUE, "{json}");
        assert_eq!(json, r#"{"context":"from-internal","aors":"1001"}"#, "the long option left out");
    }

    #[test]
    fn the_header_is_the_comment_block_before_the_first_section() {
        let text = "; Managed\n; Extensions: 2\n\n[1001]\ntype = aor\n";
        assert_eq!(header(text), "; Managed\n; Extensions: 2\n");
        assert_eq!(header("[1]\ntype = aor\n"), "");
        assert_eq!(header("; only\n"), "; only\n");
    }

    #[test]
    fn only_keys_of_our_family_name_objects() {
        let keys: Vec<String> =
            ["/asterisk-gitops/endpoint/1001", "/asterisk-gitops/aor/1001", "/other/endpoint/7", "/asterisk-gitops/x"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(
            objects_of(&keys),
            [("endpoint".to_string(), "1001".to_string()), ("aor".to_string(), "1001".to_string())]
        );
    }
}
