//! The extension spec: the YAML files' model, and the desired set they load into.
//!
//! Two shapes live here:
//! - the *written* shape ([`SpecFile`], [`Defaults`], [`ExtensionEntry`]):
//!   what a file (or an API request body) says, every field optional,
//!   field names camelCase. Its JSON Schema is published (`schema`).
//! - the *resolved* shape ([`Extension`]): defaults merged, every value
//!   checked, exactly one [`Secret`]. The rest of the program sees only this.
//!
//! Architecture invariant: this module does no I/O except reading the spec
//! files in [`load`] and, in [`policy`], resolving where a `passwordFile`
//! points (never reading it); secrets named by `passwordEnv`/`passwordFile`
//! are read only when rendering.

pub mod check;
pub mod edit;
pub mod fields;
pub mod load;
pub mod options;
pub mod policy;
pub mod profile;
pub mod resolve;
pub mod yaml;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Defined by `secret` (a leaf), re-exported where the spec model is.
pub use crate::secret::Secret;
pub use load::{LoadOptions, load_paths};
pub use options::ExtraOptions;
pub use policy::SecretPolicy;
pub use profile::Profile;
pub use resolve::resolve;

/// One spec file: optional defaults for its entries, and the entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "asterisk-gitops extension spec file")]
pub struct SpecFile {
    /// Values applied to every entry of this file that does not set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Defaults>,
    /// The extensions (PJSIP endpoints with their auth and aor) this file declares.
    pub extensions: Vec<ExtensionEntry>,
}

/// The fields an entry and a file's `defaults` share, written once (the
/// three whose description differs take it as a parameter). Each struct
/// gives its own fields in the groups between them, so the schema keeps
/// its order: head, context/transport/codecs, secrets,
/// maxContacts/qualifyFrequency, callerId/mailboxes, the profile and NAT
/// flags through options, then labels.
macro_rules! spec_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            { $($head:tt)* }
            context: $context:literal,
            codecs: $codecs:literal,
            { $($secret:tt)* }
            max_contacts: $max_contacts:literal,
            { $($caller:tt)* }
            { $($end:tt)* }
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $($head)*
            #[doc = $context]
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$"))]
            pub context: Option<String>,
            /// Name of a pjsip transport section defined by the operator (pjsip `transport`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$"))]
            pub transport: Option<String>,
            #[doc = $codecs]
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "codecs_schema")]
            pub codecs: Option<StringList>,
            $($secret)*
            #[doc = $max_contacts]
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 1, max = 100))]
            pub max_contacts: Option<u32>,
            /// Seconds between qualify OPTIONS to each contact (pjsip aor `qualify_frequency`): tells a live phone from a dead one. Default 60; 0 turns qualifying off.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 0, max = 86400))]
            pub qualify_frequency: Option<u32>,
            $($caller)*
            /// How DTMF is sent (pjsip `dtmf_mode`). Asterisk's default, rfc4733, applies when absent.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "dtmf_schema")]
            pub dtmf_mode: Option<String>,
            /// Named set of endpoint options (see the README's "Profiles"): `nat` (the default: rewrite_contact, rtp_symmetric, force_rport yes, direct_media no), `lan` (none of those written: Asterisk's defaults hold), `webrtc` (`webrtc = yes`: DTLS-SRTP, ICE, AVPF, rtcp-mux; needs `transport` naming the operator's WebSocket transport, on the entry or in `defaults` next to `profile: webrtc`). Explicit fields (directMedia, rtpSymmetric, forceRport, rewriteContact) override it.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "profile_schema")]
            pub profile: Option<String>,
            /// Let media flow directly between phones (pjsip `direct_media`). Overrides the profile's value: `nat` writes no; `lan` and `webrtc` leave Asterisk's yes (encrypted webrtc media never flows directly anyway).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub direct_media: Option<bool>,
            /// Send RTP back to where it came from, for phones behind NAT (pjsip `rtp_symmetric`). Overrides the profile's value: `nat` writes yes; `lan` and `webrtc` leave Asterisk's no.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub rtp_symmetric: Option<bool>,
            /// Answer SIP to the source port, for phones behind NAT (pjsip `force_rport`). Overrides the profile's value: `nat` writes yes; `lan` and `webrtc` leave Asterisk's yes.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub force_rport: Option<bool>,
            /// Rewrite the contact with the packet's source address, for phones behind NAT (pjsip `rewrite_contact`). Overrides the profile's value: `nat` writes yes; `lan` and `webrtc` leave Asterisk's no.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub rewrite_contact: Option<bool>,
            /// When false, the extension is kept in the database but not configured in Asterisk. Default true.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub enabled: Option<bool>,
            /// Extra PJSIP options by object type (`endpoint`, `aor`, `auth`) for what no field names: `{endpoint: {pickup_group: "1", timers: required}}`. Each name must be an option Asterisk knows for that type, each value one its type allows; options a field or the profile writes are refused. On `defaults`, merged under each entry's own, option by option.
            #[serde(default, skip_serializing_if = "ExtraOptions::is_empty")]
            pub options: ExtraOptions,
            $($end)*
        }
    };
}

spec_struct! {
    /// Values applied to every entry of the file that does not set them itself.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Defaults {
        {
        }
        context: " Dialplan context for calls from these extensions (pjsip `context`).",
        codecs: " Allowed codecs, in order of preference: a list, or a comma-separated string.",
        {
        }
        max_contacts: " Most contacts (registered devices) the extension may have at once. Default 1.",
        {
        }
        {
            /// Free-form labels (department, email, …), merged under each entry's own. Stored, never rendered.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            #[schemars(schema_with = "labels_schema")]
            pub labels: BTreeMap<String, String>,
        }
    }
}

spec_struct! {
    /// One extension as written: a PJSIP endpoint, its auth and its aor.
    ///
    /// Exactly one of `password`, `md5Cred`, `passwordEnv`, `passwordFile` is required.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[schemars(extend("oneOf" = [
        {"required": ["password"]},
        {"required": ["md5Cred"]},
        {"required": ["passwordEnv"]},
        {"required": ["passwordFile"]}
    ]))]
    pub struct ExtensionEntry {
        {
            /// The extension number: digits only, quoted (`"1001"`). Also the SIP username and the section name.
            #[schemars(required, pattern(r"^[0-9]{1,20}$"))]
            pub extension: Option<String>,
            /// The person or desk behind the extension; becomes the caller id `"Name" <1001>` unless `callerId` is set.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(pattern(r#"^[^\u0000-\u001f\u007f-\u009f\[\];#"<>]*$"#), length(max = 128))]
            pub display_name: Option<String>,
        }
        context: " Dialplan context for calls from this extension (pjsip `context`).",
        codecs: " Allowed codecs, in order of preference: a list, or a comma-separated string (`\"ulaw,alaw,g729\"`).",
        {
            /// Plain-text SIP password. Accepted for compatibility; `validate` warns and `--strict` refuses it.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(pattern(r"^[^\u0000-\u001f\u007f-\u009f\[\];#]+$"), length(max = 128))]
            pub password: Option<String>,
            /// md5("EXTENSION:REALM:PASSWORD") in hex, as printed by `asterisk-gitops hash-password`. Opens this account only.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(pattern(r"^[0-9a-fA-F]{32}$"))]
            pub md5_cred: Option<String>,
            /// Name of an environment variable holding the password, read when the config is rendered. It must match the config file's `secrets.envPattern` (default `EXT_*`); the daemon's own variables (`ASTERISK_GITOPS_*`, `DATABASE_URL`) are refused.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(pattern(r"^[A-Za-z_][A-Za-z0-9_]*$"))]
            pub password_env: Option<String>,
            /// Path of a file holding the password, relative to the secrets directory (the config file's `secrets.dir`, default the spec directory's `secrets/`), read when rendering. No absolute path, no `..`, no symlink leading out of that directory.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(pattern(r"^[^\u0000-\u001f\u007f-\u009f\[\];#]+$"), length(max = 128))]
            pub password_file: Option<String>,
        }
        max_contacts: " Most contacts (registered devices) at once (pjsip aor `max_contacts`). Default 1. A phone that registers again (after a crash, on a new port) replaces its oldest contact (`remove_existing = yes`).",
        {
            /// Caller id presented for calls from this extension, e.g. `"Front Desk" <1001>`. Overrides displayName.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(pattern(r"^[^\u0000-\u001f\u007f-\u009f\[\];#]*$"), length(max = 128))]
            pub caller_id: Option<String>,
            /// Voicemail boxes for message-waiting indication (pjsip `mailboxes`): `1001@default`; a list or a comma string.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "mailboxes_schema")]
            pub mailboxes: Option<StringList>,
        }
        {
            /// Free-form labels (department, email, …). Stored and shown, never rendered into Asterisk's config.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            #[schemars(schema_with = "labels_schema")]
            pub labels: BTreeMap<String, String>,
        }
    }
}

/// A list of names, written either as a YAML/JSON list or as the seed's
/// comma-separated string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StringList {
    List(Vec<String>),
    Comma(String),
}

impl StringList {
    /// The items, trimmed, empty ones dropped.
    pub fn items(&self) -> Vec<String> {
        let raw: Vec<&str> = match self {
            StringList::List(v) => v.iter().map(String::as_str).collect(),
            StringList::Comma(s) => s.split(',').collect(),
        };
        raw.into_iter().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
    }
}

/// Free-form labels, sorted by name. A sorted vector rather than a
/// `BTreeMap`: a map's first node costs ~550 bytes, which at 100k
/// extensions was a third of the loader's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)).ok().map(|i| self.0[i].1.as_str())
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        let mut v: Vec<_> = map.into_iter().collect();
        v.shrink_to_fit();
        Labels(v)
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Where an extension was declared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The spec file, as given to the loader (relative to the spec directory when loaded from one).
    pub file: String,
    pub line: u32,
}

/// One extension, resolved: defaults merged, every value checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Extension {
    pub extension: String,
    pub display_name: Option<String>,
    pub context: String,
    pub transport: String,
    /// At least one, each a known codec, no duplicates, in order of preference.
    pub codecs: Vec<String>,
    pub secret: Secret,
    pub max_contacts: u32,
    /// Seconds between qualifies; 0 is off.
    pub qualify_frequency: u32,
    pub caller_id: Option<String>,
    pub mailboxes: Vec<String>,
    pub dtmf_mode: Option<String>,
    /// The named set of endpoint options (`profile::Profile`).
    pub profile: Profile,
    /// The NAT flags the managed file writes: the profile's values with
    /// explicit fields on top; `None` is not written (Asterisk's default).
    pub direct_media: Option<bool>,
    pub rtp_symmetric: Option<bool>,
    pub force_rport: Option<bool>,
    pub rewrite_contact: Option<bool>,
    pub enabled: bool,
    pub labels: Labels,
    /// Extra options, defaults merged, each checked (`options`).
    pub options: ExtraOptions,
    pub origin: Origin,
}

impl crate::secret::Owner for Extension {
    fn number(&self) -> &str {
        &self.extension
    }
    fn secret(&self) -> &Secret {
        &self.secret
    }
}

impl Extension {
    /// The caller id pjsip gets: `callerId` as written, else `"displayName" <extension>`.
    pub fn effective_caller_id(&self) -> Option<String> {
        match (&self.caller_id, &self.display_name) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(name)) => Some(format!("\"{name}\" <{}>", self.extension)),
            (None, None) => None,
        }
    }
}

/// The extensions a set of spec files declares, sorted by number.
///
/// Shared twice over: the list (`Arc`) because the renderer hands it to
/// minijinja, which needs owned data, and cloning 100k extensions would
/// double the peak memory; each extension (`Arc<Extension>`) because a
/// reload of one changed file builds the next set from the cached files'
/// extensions, and moving pointers is what keeps that load from costing
/// time in proportion to the estate (BENCHMARKS.md, "Session 9").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredSet {
    pub extensions: std::sync::Arc<Vec<std::sync::Arc<Extension>>>,
}

impl DesiredSet {
    /// Sorts by number; the rest of the program relies on that order.
    pub fn new(extensions: Vec<Extension>) -> Self {
        Self::shared(extensions.into_iter().map(std::sync::Arc::new).collect())
    }

    /// [`new`](DesiredSet::new) over extensions already shared. The sort
    /// is stable and finds runs already in order, so a list made of a few
    /// sorted files is merged, not sorted afresh.
    pub fn shared(mut extensions: Vec<std::sync::Arc<Extension>>) -> Self {
        extensions.sort_by(|a, b| a.extension.cmp(&b.extension));
        DesiredSet { extensions: std::sync::Arc::new(extensions) }
    }

    pub fn get(&self, number: &str) -> Option<&Extension> {
        self.get_shared(number).map(|e| &**e)
    }

    /// The extension of `number`, as the set shares it.
    pub fn get_shared(&self, number: &str) -> Option<&std::sync::Arc<Extension>> {
        self.extensions.binary_search_by(|e| e.extension.as_str().cmp(number)).ok().map(|i| &self.extensions[i])
    }
}

fn codecs_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let alternatives = check::KNOWN_CODECS.join("|");
    schemars::json_schema!({
        "description": "Allowed codecs, in order of preference: a list, or a comma-separated string.",
        "anyOf": [
            {"type": "array", "items": {"enum": check::KNOWN_CODECS}, "minItems": 1, "uniqueItems": true},
            {"type": "string", "pattern": format!("^ *({alternatives}) *(, *({alternatives}) *)*$")}
        ]
    })
}

fn mailboxes_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [
            {"type": "array", "items": {"type": "string", "pattern": check::pattern::MAILBOX}},
            {"type": "string", "pattern": r"^[A-Za-z0-9_.+@,\- ]*$"}
        ]
    })
}

fn profile_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
    schemars::json_schema!({ "type": "string", "enum": names })
}

fn dtmf_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "enum": check::DTMF_MODES })
}

fn labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "propertyNames": {"pattern": check::pattern::LABEL_KEY},
        "additionalProperties": {"type": "string", "maxLength": check::MAX_LABEL, "pattern": r"^[^\u0000-\u001f\u007f-\u009f]*$"}
    })
}
