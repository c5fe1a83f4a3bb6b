//! The options Asterisk knows, and the check that a template emits only those.
//!
//! Asterisk refuses a whole object over one option name it does not know
//! (for a new object it is simply missing after the reload; an existing one
//! keeps its previous definition, fact 13), and says so only in its log. So
//! every option name a template writes into an `endpoint`, `aor` or `auth`
//! section is checked, before anything is written, against the catalogue of
//! the options Asterisk 22 registers: `catalogue/asterisk-22.txt`, taken from
//! a real Asterisk 22 by a contract test (ARI's dynamic configuration lists
//! every option of a type) and committed, so `validate` and `render` work
//! without an Asterisk. Option names are compared without case, as Asterisk
//! does (fact 17). Sections of other types (transports, identifies) are not
//! checked. Pure: no I/O except reading template files.

use crate::core::diag::{Diagnostic, Location};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

/// The committed catalogue of Asterisk 22.
pub const ASTERISK_22: &str = include_str!("../../catalogue/asterisk-22.txt");

/// The value types of the options Asterisk 22 declares one for
/// (`catalogue/asterisk-22-types.txt`, from res_pjsip's option registrations).
pub const ASTERISK_22_TYPES: &str = include_str!("../../catalogue/asterisk-22-types.txt");

/// What values an option takes, where Asterisk declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// `ast_true`/`ast_false`: yes, no, true, false, on, off, y, n, t, f, 1, 0.
    Bool,
    /// A whole number, 0 or more.
    Uint,
    /// A decimal number (`qualify_timeout = 3.0`).
    Number,
    /// One of these words (lower case; Asterisk compares without case).
    Enum(Vec<String>),
}

/// The words Asterisk's `ast_true` and `ast_false` accept.
pub const TRUE_WORDS: &[&str] = &["yes", "true", "y", "t", "1", "on"];
pub const FALSE_WORDS: &[&str] = &["no", "false", "n", "f", "0", "off"];

/// `Some(true)`/`Some(false)` for a word Asterisk reads as a boolean.
pub fn parse_bool(value: &str) -> Option<bool> {
    let v = value.trim().to_ascii_lowercase();
    if TRUE_WORDS.contains(&v.as_str()) {
        Some(true)
    } else if FALSE_WORDS.contains(&v.as_str()) {
        Some(false)
    } else {
        None
    }
}

/// Why a value is not one Asterisk accepts for an option's type (the
/// value itself is not quoted).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("expected a boolean (yes/no, true/false, on/off)")]
    NotBool,
    #[error("expected a whole number (0 or more)")]
    NotUint,
    #[error("expected a number (0 or more)")]
    NotNumber,
    #[error("expected one of {}", .0.join(", "))]
    NotOneOf(Vec<String>),
}

impl ValueType {
    /// Whether `value` is one Asterisk accepts for this type; the reason if not.
    pub fn check(&self, value: &str) -> Result<(), ValueError> {
        let v = value.trim();
        match self {
            ValueType::Bool => parse_bool(v).map(|_| ()).ok_or(ValueError::NotBool),
            ValueType::Uint => v.parse::<u64>().map(|_| ()).map_err(|_| ValueError::NotUint),
            ValueType::Number => match v.parse::<f64>() {
                Ok(n) if n.is_finite() && n >= 0.0 => Ok(()),
                _ => Err(ValueError::NotNumber),
            },
            ValueType::Enum(words) => {
                if words.iter().any(|w| w.eq_ignore_ascii_case(v)) {
                    Ok(())
                } else {
                    Err(ValueError::NotOneOf(words.clone()))
                }
            }
        }
    }
}

/// Value types by object type and option name.
#[derive(Debug, Default)]
pub struct ValueTypes {
    types: BTreeMap<(String, String), ValueType>,
}

impl ValueTypes {
    /// Parses `[type]` lines, then `name kind` lines (kind `bool`, `uint`,
    /// `number` or `enum:a|b|c`); `#` starts a comment line. Unknown kinds
    /// are skipped (a newer file read by an older program).
    pub fn parse(text: &str) -> ValueTypes {
        let mut t = ValueTypes::default();
        let mut current: Option<String> = None;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            if let Some(k) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = Some(k.to_ascii_lowercase());
                continue;
            }
            let (Some(kind), Some((name, ty))) = (&current, line.split_once(' ')) else { continue };
            let ty = match ty.trim() {
                "bool" => ValueType::Bool,
                "uint" => ValueType::Uint,
                "number" => ValueType::Number,
                other => match other.strip_prefix("enum:") {
                    Some(words) => ValueType::Enum(words.split('|').map(|w| w.trim().to_ascii_lowercase()).collect()),
                    None => continue,
                },
            };
            t.types.insert((kind.clone(), name.trim().to_ascii_lowercase()), ty);
        }
        t
    }

    /// The committed Asterisk 22 value types (parsed once, shared).
    pub fn asterisk22() -> Arc<ValueTypes> {
        static T: OnceLock<Arc<ValueTypes>> = OnceLock::new();
        T.get_or_init(|| Arc::new(ValueTypes::parse(ASTERISK_22_TYPES))).clone()
    }

    /// The type of `option` of `kind`, if Asterisk declares one.
    pub fn get(&self, kind: &str, option: &str) -> Option<&ValueType> {
        self.types.get(&(kind.to_ascii_lowercase(), option.to_ascii_lowercase()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &ValueType)> {
        self.types.iter().map(|((k, n), t)| (k.as_str(), n.as_str(), t))
    }
}

/// Option names by object type.
#[derive(Debug, Default)]
pub struct Catalogue {
    types: BTreeMap<String, BTreeSet<String>>,
}

impl Catalogue {
    /// Parses the catalogue format: `[type]` lines, then one option name a
    /// line; `#` starts a comment line.
    pub fn parse(text: &str) -> Catalogue {
        let mut c = Catalogue::default();
        let mut current: Option<String> = None;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = Some(t.to_ascii_lowercase());
                c.types.entry(t.to_ascii_lowercase()).or_default();
            } else if let Some(t) = &current {
                c.types.entry(t.clone()).or_default().insert(line.to_ascii_lowercase());
            }
        }
        c
    }

    /// The committed Asterisk 22 catalogue (parsed once, shared).
    pub fn asterisk22() -> Arc<Catalogue> {
        static C: OnceLock<Arc<Catalogue>> = OnceLock::new();
        C.get_or_init(|| Arc::new(Catalogue::parse(ASTERISK_22))).clone()
    }

    /// Whether `option` is known for `kind`; `None` when the catalogue does
    /// not cover that type.
    pub fn knows(&self, kind: &str, option: &str) -> Option<bool> {
        self.types.get(&kind.to_ascii_lowercase()).map(|names| names.contains(&option.to_ascii_lowercase()))
    }

    /// The option names known for `kind`.
    pub fn names(&self, kind: &str) -> impl Iterator<Item = &str> {
        self.types.get(kind).into_iter().flatten().map(String::as_str)
    }

    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// A catalogue from the option names ARI's dynamic configuration lists
    /// for one object of each type, plus the few it cannot list
    /// ([`NOT_LISTED_BY_ARI`]).
    pub fn from_listed(listed: &BTreeMap<String, Vec<String>>) -> Catalogue {
        let mut c = Catalogue::default();
        for (kind, names) in listed {
            let set = c.types.entry(kind.to_ascii_lowercase()).or_default();
            set.extend(names.iter().map(|n| n.to_ascii_lowercase()));
            set.insert("type".into());
            for (k, extra) in NOT_LISTED_BY_ARI {
                if k == kind {
                    set.extend(extra.iter().map(|n| n.to_string()));
                }
            }
        }
        c
    }

    /// The catalogue format [`Catalogue::parse`] reads, under `header` (`#` lines).
    pub fn to_text(&self, header: &str) -> String {
        let mut out = String::new();
        for line in header.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        for (kind, names) in &self.types {
            out.push_str(&format!("\n[{kind}]\n"));
            for n in names {
                out.push_str(n);
                out.push('\n');
            }
        }
        out
    }
}

/// Options Asterisk registers without a way to print their value, so ARI's
/// dynamic configuration does not list them (res_pjsip's sources); `type`
/// is added for every type.
pub const NOT_LISTED_BY_ARI: &[(&str, &[&str])] = &[(
    "endpoint",
    &["contact_deny", "contact_permit", "contact_user", "deny", "disallow", "permit", "security_mechanisms"],
)];

/// An option name the catalogue does not know, where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown {
    /// 1-based.
    pub line: usize,
    pub kind: String,
    pub option: String,
}

/// What scanning a text found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub unknown: Vec<Unknown>,
    /// An option name is computed (`{{ … }} = …`): only the rendered output can be checked.
    pub dynamic_names: bool,
}

/// Blanks out `{# … #}` comments and `{% … %}` tags (keeping line breaks,
/// so line numbers stay), leaving the text a template emits literally.
fn literal_text(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find(['{']) {
        let (before, at) = rest.split_at(start);
        out.push_str(before);
        let close = if at.starts_with("{#") {
            "#}"
        } else if at.starts_with("{%") {
            "%}"
        } else {
            out.push('{');
            rest = &at[1..];
            continue;
        };
        match at[2..].find(close) {
            Some(end) => {
                let tag = &at[..end + 4];
                out.extend(tag.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
                rest = &at[end + 4..];
            }
            None => {
                // An unclosed tag: minijinja reports it; nothing more to scan.
                out.extend(at.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Scans pjsip config text (a template when `template`, else rendered
/// output) section by section, and reports each option name of a section
/// whose `type` the catalogue covers and that it does not know. Options
/// written before the section's `type` line are checked once it is known.
pub fn scan(text: &str, template: bool, catalogue: &Catalogue) -> Scan {
    let literal;
    let text = if template {
        literal = literal_text(text);
        literal.as_str()
    } else {
        text
    };
    let mut out = Scan::default();
    let mut kind: Option<String> = None;
    let mut waiting: Vec<(usize, String)> = Vec::new();
    let flush = |kind: &Option<String>, waiting: &mut Vec<(usize, String)>, out: &mut Scan| {
        if let Some(k) = kind {
            for (line, option) in waiting.drain(..) {
                if catalogue.knows(k, &option) == Some(false) {
                    out.unknown.push(Unknown { line, kind: k.clone(), option });
                }
            }
        }
        waiting.clear();
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            flush(&kind, &mut waiting, &mut out);
            kind = None;
            continue;
        }
        let Some((name, value)) = line.split_once('=') else { continue };
        let value = value.strip_prefix('>').unwrap_or(value).trim();
        let name = name.trim();
        if name.contains("{{") {
            out.dynamic_names = true;
            continue;
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        if name.eq_ignore_ascii_case("type") {
            if value.contains("{{") {
                out.dynamic_names = true;
            }
            kind = Some(value.to_ascii_lowercase());
            flush(&kind, &mut waiting, &mut out);
            continue;
        }
        waiting.push((i + 1, name.to_string()));
        if kind.is_some() {
            flush(&kind, &mut waiting, &mut out);
        }
    }
    out
}

fn diagnostic(file: &str, u: &Unknown) -> Diagnostic {
    Diagnostic::error(
        "unknown-option",
        Location { file: file.to_string(), line: u.line as u32, column: 1 },
        &u.option,
        format!(
            "`{}` is not an option Asterisk 22 knows for a {} (catalogue/asterisk-22.txt); Asterisk would refuse the whole object",
            u.option, u.kind
        ),
    )
}

/// Checks template files (name, text) for option names `catalogue` does
/// not know (`render::check_templates` gathers them). Returns the problems
/// (file:line, the option) and whether some option name is computed, so
/// the rendered output must be checked too.
pub fn check_template_files(files: &[(String, String)], catalogue: &Catalogue) -> (Vec<Diagnostic>, bool) {
    let mut diags = Vec::new();
    let mut dynamic = false;
    for (file, text) in files {
        let s = scan(text, true, catalogue);
        dynamic |= s.dynamic_names;
        diags.extend(s.unknown.iter().map(|u| diagnostic(file, u)));
    }
    (diags, dynamic)
}

/// Checks rendered output (for templates that compute option names).
pub fn check_rendered(text: &str, catalogue: &Catalogue) -> Vec<Diagnostic> {
    scan(text, false, catalogue).unknown.iter().map(|u| diagnostic("the rendered managed file", u)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_the_three_types_and_ignores_case() {
        let c = Catalogue::asterisk22();
        assert_eq!(c.types().collect::<Vec<_>>(), ["aor", "auth", "endpoint"]);
        assert_eq!(c.knows("endpoint", "Rewrite_Contact"), Some(true));
        assert_eq!(c.knows("endpoint", "rewrite_contacts"), Some(false));
        assert_eq!(c.knows("aor", "qualify_frequency"), Some(true));
        assert_eq!(c.knows("auth", "md5_cred"), Some(true));
        assert_eq!(c.knows("transport", "bind"), None, "types it does not cover are not judged");
    }

    #[test]
    fn a_misspelt_option_is_found_with_its_template_line_and_type() {
        let tpl = "{# a comment\n spanning = lines #}\n{% for e in extensions %}\n[{{ e.extension }}]\ntype = endpoint\n\
                   contxt = {{ e.context }}\n{% if e.x %}\ndirect_media => no\n{% endif %}\n\n[{{ e.extension }}]\n\
                   max_contact = 1\ntype = aor\n[t]\ntype = transport\nbindd = 0.0.0.0\n{% endfor %}\n";
        let s = scan(tpl, true, &Catalogue::asterisk22());
        assert_eq!(
            s.unknown,
            [
                Unknown { line: 6, kind: "endpoint".into(), option: "contxt".into() },
                Unknown { line: 12, kind: "aor".into(), option: "max_contact".into() },
            ]
        );
        assert!(!s.dynamic_names);
    }

    #[test]
    fn computed_option_names_ask_for_a_check_of_the_output() {
        let s = scan("[x]\ntype = endpoint\n{{ name }} = yes\n", true, &Catalogue::asterisk22());
        assert!(s.dynamic_names);
        let d = check_rendered("[x]\ntype = endpoint\nno_such_option = yes\n", &Catalogue::asterisk22());
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("no_such_option"), "{:?}", d[0]);
    }

    #[test]
    fn a_listed_catalogue_round_trips_through_its_text_and_adds_what_ari_cannot_list() {
        let listed: BTreeMap<String, Vec<String>> =
            [("endpoint".to_string(), vec!["context".to_string(), "Allow".to_string()])].into();
        let c = Catalogue::from_listed(&listed);
        assert_eq!(c.knows("endpoint", "allow"), Some(true));
        assert_eq!(c.knows("endpoint", "disallow"), Some(true), "not listed by ARI, added");
        assert_eq!(c.knows("endpoint", "type"), Some(true));
        assert_eq!(c.knows("endpoint", "rewrite_contact"), Some(false));
        let again = Catalogue::parse(&c.to_text("learnt from a test"));
        assert_eq!(again.types, c.types);
    }

    #[test]
    fn every_typed_option_is_in_the_catalogue_and_values_are_judged_by_type() {
        let c = Catalogue::asterisk22();
        let t = ValueTypes::asterisk22();
        assert!(t.iter().count() > 80, "the types file was read");
        for (kind, name, _) in t.iter() {
            assert_eq!(c.knows(kind, name), Some(true), "{kind}.{name} is typed but not in the catalogue");
        }
        assert_eq!(t.get("endpoint", "allow_transfer"), Some(&ValueType::Bool));
        assert_eq!(t.get("aor", "minimum_expiration"), Some(&ValueType::Uint));
        assert_eq!(t.get("aor", "qualify_timeout"), Some(&ValueType::Number));
        assert_eq!(t.get("endpoint", "language"), None, "free text");
        let bool_t = t.get("endpoint", "send_pai").expect("typed");
        assert!(bool_t.check("YES").is_ok() && bool_t.check("off").is_ok());
        assert!(bool_t.check("maybe").is_err(), "Asterisk would store it as false (fact 12)");
        let e = t.get("endpoint", "media_encryption").expect("typed");
        assert!(e.check("SDES").is_ok());
        assert_eq!(e.check("srtp").unwrap_err().to_string(), "expected one of no, sdes, dtls");
        assert!(t.get("endpoint", "rtp_timeout").expect("typed").check("-1").is_err());
        assert!(t.get("aor", "qualify_timeout").expect("typed").check("2.5").is_ok());
    }

    #[test]
    fn tags_and_comments_never_count_as_options() {
        let s = scan("[x]\ntype = endpoint\n{% set a = 1 %}\n{# b = 2 #}\n; c = 3\n", true, &Catalogue::asterisk22());
        assert_eq!(s, Scan::default());
    }
}
