//! The one table of an extension's fields, and every list of field names
//! derived from it.
//!
//! A field appears in many places: the spec's keys (an entry's and the
//! `defaults`'), the plan's field names, the template's view of an
//! endpoint, the `extensions` table's columns, the UI form, our CSV. Each
//! of those lists is computed here from [`FIELDS`] at compile time, so
//! adding a field is one row here plus the code that gives it a meaning
//! (how `load` reads it, its check in `resolve`, its value in the plan,
//! the view and the row). A test fails for each place that is forgotten:
//! here (read from a file, in the schema, an input of the UI form),
//! `plan` (a plan name `desired_fields` gives), `render` (a view key the
//! endpoint answers), `import::csv` (a column read and exported) and
//! `tests/db.rs` (a column written and read back).

/// How a field's value is written in a spec file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Text,
    /// A list, or a comma-separated string (`StringList`).
    List,
    /// A non-negative integer.
    Number,
    /// `true` or `false`.
    Flag,
    /// One of the four ways to give the secret (exactly one per entry).
    Secret,
    /// Free-form `name: value` labels.
    Labels,
    /// Extra pjsip options by object type (`ExtraOptions`).
    Options,
}

/// One field of an extension and every name it goes by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The spec's key (YAML and JSON, camelCase): `displayName`.
    pub key: &'static str,
    pub kind: Kind,
    /// Whether a file's `defaults` may set it.
    pub defaults: bool,
    /// The name the plan compares it under (`plan::Fields`); the four
    /// secret fields share `secret` (kind and md5 hash), given once.
    pub plan: Option<&'static str>,
    /// The `extensions` table's column holding it (the four secret fields
    /// share `secret_kind`, given once; the hash is `secret_md5`).
    pub column: Option<&'static str>,
    /// The keys it gives the template's view of an endpoint (`render`).
    pub view: &'static [&'static str],
    /// Whether the UI's form edits it (under [`Field::key`]).
    pub form: bool,
    /// Whether it is a column of our CSV (`import::csv`, under [`Field::key`]).
    pub csv: bool,
    /// A value a spec file may give it, as YAML (for the tests that walk the table).
    pub sample: &'static str,
}

const fn field(key: &'static str, kind: Kind) -> Field {
    Field { key, kind, defaults: false, plan: None, column: None, view: &[], form: false, csv: false, sample: "" }
}

impl Field {
    const fn defaults(mut self) -> Self {
        self.defaults = true;
        self
    }
    const fn plan(mut self, name: &'static str) -> Self {
        self.plan = Some(name);
        self
    }
    const fn column(mut self, name: &'static str) -> Self {
        self.column = Some(name);
        self
    }
    /// Compared by the plan under its key, and kept in `column`.
    const fn stored(self, column: &'static str) -> Self {
        let key = self.key;
        self.plan(key).column(column)
    }
    const fn view(mut self, keys: &'static [&'static str]) -> Self {
        self.view = keys;
        self
    }
    const fn form(mut self) -> Self {
        self.form = true;
        self
    }
    const fn csv(mut self) -> Self {
        self.csv = true;
        self
    }
    const fn sample(mut self, yaml: &'static str) -> Self {
        self.sample = yaml;
        self
    }
}

/// The plan's name for the secret's fingerprint (kind and md5 hash).
pub const SECRET: &str = "secret";

use Kind::*;

/// Every field an extension entry may have, in the order the schema
/// documents them (and our CSV and the plan list them).
pub const FIELDS: &[Field] = &[
    field("extension", Text).column("number").view(&["extension"]).form().csv().sample("\"1001\""),
    field("displayName", Text).stored("display_name").form().csv().sample("Front Desk"),
    field("context", Text).defaults().stored("context").view(&["context"]).form().csv().sample("internal"),
    field("transport", Text).defaults().stored("transport").view(&["transport"]).form().csv().sample("udp"),
    field("codecs", List).defaults().stored("codecs").view(&["codecs"]).form().csv().sample("[ulaw, alaw]"),
    field("password", Secret).stored("secret_kind").plan(SECRET).view(AUTH_VIEW).form().csv().sample("s3cret-Pw-1"),
    field("md5Cred", Secret).csv().sample("0123456789abcdef0123456789abcdef"),
    field("passwordEnv", Secret).sample("EXT_1001"),
    field("passwordFile", Secret).sample("1001.password"),
    field("maxContacts", Number).defaults().stored("max_contacts").view(&["max_contacts"]).csv().sample("2"),
    field("qualifyFrequency", Number)
        .defaults()
        .stored("qualify_frequency")
        .view(QUALIFY_VIEW)
        .form()
        .csv()
        .sample("30"),
    field("callerId", Text).stored("caller_id").view(&["callerid"]).csv().sample("'\"Desk\" <1001>'"),
    field("mailboxes", List).stored("mailboxes").view(&["mailboxes"]).csv().sample("1001@default"),
    field("dtmfMode", Text).defaults().stored("dtmf_mode").view(&["dtmf_mode"]).csv().sample("rfc4733"),
    field("profile", Text).defaults().stored("profile").view(&["profile", "webrtc"]).form().csv().sample("lan"),
    field("directMedia", Flag).defaults().stored("direct_media").view(&["direct_media"]).csv().sample("true"),
    field("rtpSymmetric", Flag).defaults().stored("rtp_symmetric").view(&["rtp_symmetric"]).csv().sample("true"),
    field("forceRport", Flag).defaults().stored("force_rport").view(&["force_rport"]).csv().sample("false"),
    field("rewriteContact", Flag).defaults().stored("rewrite_contact").view(&["rewrite_contact"]).csv().sample("true"),
    field("enabled", Flag).defaults().stored("enabled").csv().sample("false"),
    field("labels", Labels).defaults().stored("labels").sample("{team: sales}"),
    field("options", Options)
        .defaults()
        .stored("options")
        .view(OPTIONS_VIEW)
        .form()
        .sample("{endpoint: {timers: required}}"),
];

/// The view keys of the secret: what the auth section needs of it.
const AUTH_VIEW: &[&str] = &["auth_type", "password", "md5_cred"];
const QUALIFY_VIEW: &[&str] = &["qualify_frequency"];
/// The extra options, one list per object type.
const OPTIONS_VIEW: &[&str] = &["endpoint_options", "aor_options", "auth_options"];

/// Which list of names to derive.
#[derive(Clone, Copy)]
enum Which {
    Entry,
    Defaults,
    Secrets,
    Plan,
    Columns,
    View,
    Form,
    Csv,
}

/// The `j`th name `list` takes from one field, if it takes that many.
const fn name_of(f: &Field, list: Which, j: usize) -> Option<&'static str> {
    match list {
        Which::Entry if j == 0 => Some(f.key),
        Which::Defaults if j == 0 && f.defaults => Some(f.key),
        Which::Secrets if j == 0 && matches!(f.kind, Secret) => Some(f.key),
        Which::Plan if j == 0 => f.plan,
        Which::Columns if j == 0 => f.column,
        Which::View if j < f.view.len() => Some(f.view[j]),
        Which::Form if j == 0 && f.form => Some(f.key),
        Which::Csv if j == 0 && f.csv => Some(f.key),
        _ => None,
    }
}

const fn count(list: Which) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < FIELDS.len() {
        let mut j = 0;
        while name_of(&FIELDS[i], list, j).is_some() {
            j += 1;
        }
        n += j;
        i += 1;
    }
    n
}

const fn names<const N: usize>(list: Which) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < FIELDS.len() {
        let mut j = 0;
        while let Some(name) = name_of(&FIELDS[i], list, j) {
            out[n] = name;
            n += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// Every key an entry may have.
pub const ENTRY_KEYS: &[&str] = &names::<{ count(Which::Entry) }>(Which::Entry);
/// The keys a file's `defaults` may have.
pub const DEFAULTS_KEYS: &[&str] = &names::<{ count(Which::Defaults) }>(Which::Defaults);
/// The four keys that give the secret.
pub const SECRET_KEYS: &[&str] = &names::<{ count(Which::Secrets) }>(Which::Secrets);
/// Every field name the plan compares (`plan::desired_fields`).
pub const PLAN_NAMES: &[&str] = &names::<{ count(Which::Plan) }>(Which::Plan);
/// The `extensions` table's columns that hold a field (`db`); the table's
/// own (`secret_md5`, `fields`, `spec_hash`, …) come after them.
pub const COLUMNS: &[&str] = &names::<{ count(Which::Columns) }>(Which::Columns);
/// The keys of the template's view of an endpoint (`render`).
pub const VIEW_KEYS: &[&str] = &names::<{ count(Which::View) }>(Which::View);
/// The fields the UI's form edits, as the JSON API names them.
pub const FORM_KEYS: &[&str] = &names::<{ count(Which::Form) }>(Which::Form);
/// Our CSV's columns besides options, in export order (`import::csv`).
pub const CSV_COLUMNS: &[&str] = &names::<{ count(Which::Csv) }>(Which::Csv);

/// The field with this spec key.
pub fn get(key: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_lists_are_what_the_modules_used_to_spell_out() {
        assert_eq!(ENTRY_KEYS.len(), FIELDS.len());
        assert_eq!(SECRET_KEYS, ["password", "md5Cred", "passwordEnv", "passwordFile"]);
        assert_eq!(
            CSV_COLUMNS,
            [
                "extension",
                "displayName",
                "context",
                "transport",
                "codecs",
                "password",
                "md5Cred",
                "maxContacts",
                "qualifyFrequency",
                "callerId",
                "mailboxes",
                "dtmfMode",
                "profile",
                "directMedia",
                "rtpSymmetric",
                "forceRport",
                "rewriteContact",
                "enabled",
            ]
        );
        assert!(!DEFAULTS_KEYS.contains(&"extension") && DEFAULTS_KEYS.contains(&"options"));
        assert!(PLAN_NAMES.contains(&SECRET) && !PLAN_NAMES.contains(&"extension"));
    }

    #[test]
    fn names_are_unique_in_every_list() {
        for list in [ENTRY_KEYS, DEFAULTS_KEYS, PLAN_NAMES, COLUMNS, VIEW_KEYS, FORM_KEYS, CSV_COLUMNS] {
            let mut seen = std::collections::BTreeSet::new();
            for name in list {
                assert!(!name.is_empty() && seen.insert(*name), "{name:?} twice in {list:?}");
            }
        }
    }

    #[test]
    fn every_field_has_a_sample_and_every_stored_field_a_plan_name() {
        for f in FIELDS {
            assert!(!f.sample.is_empty(), "{}: no sample", f.key);
            // What the plan does not compare, the database need not keep, and the reverse.
            assert!(f.plan.is_some() || f.column.is_none() || f.key == "extension", "{}", f.key);
        }
    }

    #[test]
    fn every_field_is_read_from_a_file_and_written_back() {
        // Each field alone on an entry (or in `defaults`), as a spec file writes it:
        // the loader reads it into the entry, and the entry serialises it under its key.
        for f in FIELDS {
            let yaml = format!("extensions:\n  - {}: {}\n", f.key, f.sample);
            let (_, entries) = crate::core::spec::load::raw_entries("f.yaml", &yaml).expect("a spec file");
            let (entry, _) = entries.first().expect("one entry");
            let json = serde_json::to_value(entry).expect("serialises");
            assert!(json.get(f.key).is_some_and(|v| !v.is_null()), "{}: not read from {yaml:?}: {json}", f.key);
            if f.defaults {
                let yaml = format!("defaults:\n  {}: {}\nextensions: []\n", f.key, f.sample);
                let (defaults, _) = crate::core::spec::load::raw_entries("f.yaml", &yaml).expect("a spec file");
                let json = serde_json::to_value(&defaults).expect("serialises");
                assert!(json.get(f.key).is_some_and(|v| !v.is_null()), "{}: not read from {yaml:?}: {json}", f.key);
            }
        }
    }

    /// The property names of `T`'s JSON Schema, sorted.
    fn properties<T: schemars::JsonSchema>() -> Vec<String> {
        let schema = serde_json::to_value(schemars::schema_for!(T)).expect("schema");
        let mut names: Vec<String> = schema["properties"].as_object().expect("properties").keys().cloned().collect();
        names.sort();
        names
    }

    fn sorted(keys: &[&str]) -> Vec<String> {
        let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    }

    #[test]
    fn the_schema_has_every_field_and_no_other() {
        assert_eq!(properties::<crate::core::spec::ExtensionEntry>(), sorted(ENTRY_KEYS));
        assert_eq!(properties::<crate::core::spec::Defaults>(), sorted(DEFAULTS_KEYS));
    }

    #[test]
    fn the_ui_form_has_an_input_for_every_form_field() {
        let form = include_str!("../../../templates/ui/form.html");
        for key in FORM_KEYS {
            assert!(form.contains(&format!("name=\"{key}\"")), "templates/ui/form.html has no input {key}");
        }
    }
}
