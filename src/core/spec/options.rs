//! `options`: extra PJSIP options per object type (`endpoint`, `aor`,
//! `auth`) for what the schema does not name (pickup groups, timers, media
//! encryption, …), on an entry or in a file's `defaults`.
//!
//! Every name must be one the option catalogue knows for that type
//! (`catalogue`), every value one its type allows when Asterisk declares a
//! type (booleans, numbers, enums: `catalogue/asterisk-22-types.txt`), and
//! no option may say what a named field or the profile says ([`reserved`]):
//! two lines for one option in a section would leave Asterisk to pick one,
//! and verification could not say which the file meant. Values are
//! line-safe like every other value. The template writes them after the
//! named fields; verification compares each with what Asterisk reports
//! ([`same_value`]).

use crate::core::catalogue::{Catalogue, ValueType, ValueTypes};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The longest option value (paths, `set_var`, URIs).
pub const MAX_VALUE: usize = 512;

/// The object types `options` may carry options for.
pub const KINDS: &[&str] = &["endpoint", "aor", "auth"];

/// Extra options by object type, each a map of pjsip option name to value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtraOptions {
    /// Options of the endpoint section (`[1001] type = endpoint`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "scalar_map")]
    #[schemars(schema_with = "map_schema")]
    pub endpoint: BTreeMap<String, String>,
    /// Options of the aor section.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "scalar_map")]
    #[schemars(schema_with = "map_schema")]
    pub aor: BTreeMap<String, String>,
    /// Options of the auth section.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "scalar_map")]
    #[schemars(schema_with = "map_schema")]
    pub auth: BTreeMap<String, String>,
}

impl ExtraOptions {
    pub fn is_empty(&self) -> bool {
        self.endpoint.is_empty() && self.aor.is_empty() && self.auth.is_empty()
    }

    pub fn get(&self, kind: &str) -> Option<&BTreeMap<String, String>> {
        match kind {
            "endpoint" => Some(&self.endpoint),
            "aor" => Some(&self.aor),
            "auth" => Some(&self.auth),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, kind: &str) -> Option<&mut BTreeMap<String, String>> {
        match kind {
            "endpoint" => Some(&mut self.endpoint),
            "aor" => Some(&mut self.aor),
            "auth" => Some(&mut self.auth),
            _ => None,
        }
    }

    /// Every (type, name, value), in type then name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str, &str)> {
        KINDS
            .iter()
            .flat_map(move |k| self.get(k).into_iter().flatten().map(move |(n, v)| (*k, n.as_str(), v.as_str())))
    }

    /// One line for the plan and the database: `endpoint.a=b;aor.c=d`.
    pub fn summary(&self) -> String {
        self.iter().map(|(k, n, v)| format!("{k}.{n}={v}")).collect::<Vec<_>>().join(";")
    }
}

/// Option values as YAML or JSON scalars: text as written, numbers as
/// written, `true`/`false` as `yes`/`no`.
fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Bool(bool),
        Int(i64),
        Float(f64),
    }
    let raw: BTreeMap<String, Scalar> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(s) => s,
                Scalar::Bool(b) => if b { "yes" } else { "no" }.to_string(),
                Scalar::Int(n) => n.to_string(),
                Scalar::Float(f) => f.to_string(),
            };
            (k, text)
        })
        .collect())
}

fn map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "propertyNames": {"pattern": "^[a-z0-9_]{1,64}$"},
        "additionalProperties": {
            "anyOf": [
                {"type": "string", "maxLength": MAX_VALUE, "pattern": r"^[^\u0000-\u001f\u007f-\u009f\[\];#]*$"},
                {"type": "boolean"},
                {"type": "number"}
            ]
        }
    })
}

/// Options the managed file writes from named fields (or always), per
/// type, with the field to use instead; options of the profile table
/// (`profile::OPTIONS`) that a profile writes or implies are refused by
/// [`reserved`] too.
const NAMED: &[(&str, &str, &str)] = &[
    ("endpoint", "type", "the section type, written by the template"),
    ("endpoint", "context", "`context`"),
    ("endpoint", "disallow", "`codecs`"),
    ("endpoint", "allow", "`codecs`"),
    ("endpoint", "transport", "`transport`"),
    ("endpoint", "auth", "the extension's own auth, written by the template"),
    ("endpoint", "aors", "the extension's own aor, written by the template"),
    ("endpoint", "callerid", "`callerId` or `displayName`"),
    ("endpoint", "mailboxes", "`mailboxes`"),
    ("endpoint", "dtmf_mode", "`dtmfMode`"),
    ("endpoint", "direct_media", "`directMedia`"),
    ("endpoint", "rtp_symmetric", "`rtpSymmetric`"),
    ("endpoint", "force_rport", "`forceRport`"),
    ("endpoint", "rewrite_contact", "`rewriteContact`"),
    ("endpoint", "webrtc", "`profile: webrtc`"),
    ("aor", "type", "the section type, written by the template"),
    ("aor", "max_contacts", "`maxContacts`"),
    ("aor", "qualify_frequency", "`qualifyFrequency`"),
    ("auth", "type", "the section type, written by the template"),
    ("auth", "auth_type", "the secret fields (`md5Cred`, `passwordEnv`, …)"),
    ("auth", "username", "`extension` (the username is the extension number)"),
    ("auth", "password", "`passwordEnv`, `passwordFile` or `md5Cred`"),
    ("auth", "md5_cred", "`md5Cred`"),
    ("auth", "password_digest", "`md5Cred` (a secret never goes in options)"),
    ("auth", "refresh_token", "nothing: a secret never goes in a spec file's options"),
    ("auth", "oauth_secret", "nothing: a secret never goes in a spec file's options"),
];

/// Why `kind`.`name` may not be set through `options` for an extension of
/// `profile`: the field that says it instead. `None` when it may.
pub fn reserved(kind: &str, name: &str, profile: super::Profile) -> Option<String> {
    if let Some((_, _, instead)) = NAMED.iter().find(|(k, n, _)| *k == kind && *n == name) {
        return Some(format!("it is written from {instead}"));
    }
    if kind == "endpoint"
        && (profile.sets().iter().any(|(n, _)| *n == name) || profile.implies().iter().any(|(n, _)| *n == name))
    {
        return Some(format!("profile {profile} sets it (see the README's \"Profiles\")"));
    }
    None
}

/// Why an option of the spec's `options` is refused (never quoting the value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("option names are lower-case letters, digits and `_`")]
    BadName,
    #[error("`{name}` is not an option Asterisk knows for an {kind}; Asterisk would refuse the whole object")]
    Unknown { kind: String, name: String },
    #[error("the value is not allowed: {0}")]
    Unsafe(super::check::Invalid),
    #[error("{kind} option {name}: {reason}")]
    BadValue { kind: String, name: String, reason: crate::core::catalogue::ValueError },
}

impl OptionError {
    /// The diagnostic's code.
    pub fn code(&self) -> &'static str {
        match self {
            OptionError::BadName => "invalid-option",
            OptionError::Unknown { .. } => "unknown-option",
            OptionError::Unsafe(_) => "unsafe-value",
            OptionError::BadValue { .. } => "invalid-value",
        }
    }
}

/// Checks one option: its name against `catalogue`, its value against its
/// type. The reason if it is refused.
pub fn check_option(
    catalogue: &Catalogue,
    types: &ValueTypes,
    kind: &str,
    name: &str,
    value: &str,
) -> Result<(), OptionError> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(OptionError::BadName);
    }
    if catalogue.knows(kind, name) == Some(false) {
        return Err(OptionError::Unknown { kind: kind.to_string(), name: name.to_string() });
    }
    super::check::line_safe(value, MAX_VALUE).map_err(OptionError::Unsafe)?;
    if let Some(t) = types.get(kind, name) {
        t.check(value).map_err(|reason| OptionError::BadValue {
            kind: kind.to_string(),
            name: name.to_string(),
            reason,
        })?;
    }
    Ok(())
}

/// The key `PJSIPShowEndpoint`'s events report an option under: the name
/// in camel case (`rtp_timeout` → `RtpTimeout`, `100rel` → `100rel`).
pub fn ami_key(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The event of `PJSIPShowEndpoint` that reports options of `kind`.
pub fn ami_event(kind: &str) -> &'static str {
    match kind {
        "aor" => "AorDetail",
        "auth" => "AuthDetail",
        _ => "EndpointDetail",
    }
}

/// DSCP names Asterisk accepts for `tos_*` (`ast_str2tos`), with the TOS
/// byte it reports back (`tos_audio = ef` comes back as `184`, fact 19).
const TOS: &[(&str, u32)] = &[
    ("cs0", 0),
    ("cs1", 32),
    ("af11", 40),
    ("af12", 48),
    ("af13", 56),
    ("cs2", 64),
    ("af21", 72),
    ("af22", 80),
    ("af23", 88),
    ("cs3", 96),
    ("af31", 104),
    ("af32", 112),
    ("af33", 120),
    ("cs4", 128),
    ("af41", 136),
    ("af42", 144),
    ("af43", 152),
    ("cs5", 160),
    ("ef", 184),
    ("cs6", 192),
    ("cs7", 224),
];

/// `1-3,7` → {1, 2, 3, 7} (call and pickup groups).
fn group_set(v: &str) -> Option<std::collections::BTreeSet<u32>> {
    let mut out = std::collections::BTreeSet::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 64 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().ok()?);
            }
        }
    }
    Some(out)
}

/// Whether Asterisk holding `held` means it holds what the file set
/// (`want`), as Asterisk normalises values (fact 19): booleans in any
/// spelling, numbers, enums without case, `tos_*` names as numbers, call
/// and pickup groups as sets (ranges expanded), lists in any order and
/// spacing.
pub fn same_value(kind: &str, name: &str, want: &str, held: &str, types: &ValueTypes) -> bool {
    let (w, h) = (want.trim(), held.trim());
    if w == h {
        return true;
    }
    match types.get(kind, name) {
        Some(ValueType::Bool) => {
            return crate::core::catalogue::parse_bool(w).is_some()
                && crate::core::catalogue::parse_bool(w) == crate::core::catalogue::parse_bool(h);
        }
        Some(ValueType::Uint | ValueType::Number) => {
            return matches!((w.parse::<f64>(), h.parse::<f64>()), (Ok(a), Ok(b)) if (a - b).abs() < 1e-9);
        }
        Some(ValueType::Enum(_)) => return w.eq_ignore_ascii_case(h),
        None => {}
    }
    if name.starts_with("tos_") {
        let num = |s: &str| {
            let s = s.to_ascii_lowercase();
            TOS.iter()
                .find(|(n, _)| *n == s)
                .map(|(_, v)| *v)
                .or_else(|| s.parse().ok())
                .or_else(|| s.strip_prefix("0x").and_then(|x| u32::from_str_radix(x, 16).ok()))
        };
        return num(w).is_some() && num(w) == num(h);
    }
    if name == "call_group" || name == "pickup_group" {
        return group_set(w).is_some() && group_set(w) == group_set(h);
    }
    let set = |s: &str| {
        let mut v: Vec<String> = s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
        v.sort();
        v
    };
    set(w) == set(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ami_keys_are_the_names_in_camel_case() {
        assert_eq!(ami_key("rtp_timeout"), "RtpTimeout");
        assert_eq!(ami_key("100rel"), "100rel");
        assert_eq!(ami_key("t38_udptl_ipv6"), "T38UdptlIpv6");
        assert_eq!(ami_key("set_var"), "SetVar");
    }

    #[test]
    fn values_compare_as_asterisk_reports_them() {
        let t = ValueTypes::asterisk22();
        assert!(same_value("endpoint", "send_pai", "yes", "true", &t));
        assert!(!same_value("endpoint", "send_pai", "yes", "false", &t));
        assert!(same_value("endpoint", "timers", "Required", "required", &t));
        assert!(same_value("aor", "qualify_timeout", "3", "3.000000", &t));
        assert!(same_value("endpoint", "tos_audio", "ef", "184", &t));
        assert!(same_value("endpoint", "pickup_group", "9,1-2", "1, 2, 9", &t));
        assert!(!same_value("endpoint", "pickup_group", "9,1", "1, 2, 9", &t));
        assert!(same_value("endpoint", "named_pickup_group", "b,a", "a,b", &t));
        assert!(!same_value("endpoint", "language", "en", "fr", &t));
    }

    #[test]
    fn named_fields_and_the_profile_are_reserved() {
        use super::super::Profile;
        assert!(reserved("endpoint", "context", Profile::Nat).is_some_and(|r| r.contains("`context`")));
        assert!(reserved("endpoint", "direct_media", Profile::Lan).is_some());
        assert!(reserved("endpoint", "ice_support", Profile::Webrtc).is_some_and(|r| r.contains("profile webrtc")));
        assert_eq!(reserved("endpoint", "ice_support", Profile::Nat), None, "a nat phone may turn on ICE");
        assert_eq!(reserved("aor", "remove_existing", Profile::Nat), None, "yes unless options say otherwise");
        assert!(reserved("auth", "password", Profile::Nat).is_some());
        assert_eq!(reserved("auth", "realm", Profile::Nat), None);
        assert_eq!(reserved("endpoint", "pickup_group", Profile::Nat), None);
    }
}

#[cfg(test)]
mod load_tests {
    use crate::core::diag::Diagnostic;
    use crate::core::spec::Extension;

    fn load(yaml: &str) -> (Vec<Extension>, Vec<Diagnostic>) {
        crate::core::spec::load::load_for_test("o.yaml", yaml)
    }

    const HEAD: &str = "defaults:\n  context: c\n  transport: t\n  codecs: [ulaw]\n";

    #[test]
    fn bad_options_are_refused_at_their_file_line_and_field() {
        let (exts, diags) = load(&format!(
            "{HEAD}  options:\n    endpoint: {{rtp_timeot: 30}}\nextensions:\n  - extension: \"1001\"\n    md5Cred: 0123456789abcdef0123456789abcdef\n    options:\n      endpoint:\n        context: other\n        send_pai: maybe\n        language: \"en;x\"\n        direct_media: false\n      aor:\n        remove_existing: perhaps\n      trunk: {{a: b}}\n"
        ));
        assert!(exts.is_empty());
        let got: Vec<(&str, &str, u32)> = diags.iter().map(|d| (d.code, d.field.as_str(), d.location.line)).collect();
        assert_eq!(
            got,
            [
                ("unknown-field", "extensions[0].options.trunk", 18),
                ("reserved-option", "extensions[0].options.endpoint.context", 12),
                ("reserved-option", "extensions[0].options.endpoint.direct_media", 15),
                ("unsafe-value", "extensions[0].options.endpoint.language", 14),
                ("invalid-value", "extensions[0].options.endpoint.send_pai", 13),
                ("unknown-option", "defaults.options.endpoint.rtp_timeot", 6),
                ("invalid-value", "extensions[0].options.aor.remove_existing", 17),
            ],
            "{diags:#?}"
        );
        let unknown = diags.iter().find(|d| d.code == "unknown-option").expect("unknown");
        assert!(unknown.message.contains("did you mean `rtp_timeout`"), "{}", unknown.message);
        assert!(!diags.iter().any(|d| d.message.contains("en;x")), "a refused value is not echoed");
        let reserved = diags.iter().find(|d| d.field.ends_with("context")).expect("context");
        assert!(reserved.message.contains("`context`"), "{}", reserved.message);
    }

    #[test]
    fn what_a_profile_writes_or_implies_is_refused_and_what_it_leaves_is_not() {
        let (_, diags) = load(&format!(
            "{HEAD}extensions:\n  - {{extension: \"1\", md5Cred: 0123456789abcdef0123456789abcdef, profile: webrtc, transport: wss, options: {{endpoint: {{ice_support: no}}}}}}\n  - {{extension: \"2\", md5Cred: 0123456789abcdef0123456789abcdef, options: {{endpoint: {{ice_support: yes}}}}}}\n"
        ));
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].code, "reserved-option");
        assert!(diags[0].message.contains("profile webrtc"), "{}", diags[0].message);
    }
}
