//! The rendered managed config, read back as sections: the ari target
//! pushes exactly what the file target would write, so it takes its
//! objects from the same minijinja output instead of a second rendering.
//!
//! Only the shape the renderer produces is accepted: `[id]` headers, one
//! `type = …` per section, `key = value` (or `key => value`) lines, blank
//! lines and `;` comments. Anything else (a template section `[x](!)`, a
//! line outside a section, a section without `type`) is an error naming
//! the line, so a template the ari target cannot push is refused before
//! anything is pushed. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

/// One `[id]` section with its `type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub id: String,
    /// The `type =` value: `endpoint`, `auth`, `aor`, …
    pub kind: String,
    /// The other lines, in order (a key may repeat).
    pub fields: Vec<(String, String)>,
    /// 1-based line of the header.
    pub line: usize,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("rendered config, line {line}: {message}")]
pub struct SectionError {
    pub line: usize,
    pub message: String,
}

/// Reads every section of `text`.
pub fn parse(text: &str) -> Result<Vec<Section>, SectionError> {
    let mut out: Vec<Section> = Vec::new();
    let mut kinds: Vec<Option<String>> = Vec::new();
    let err = |line: usize, message: String| SectionError { line, message };
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(id) = rest.strip_suffix(']') else {
                return Err(err(
                    n,
                    format!("{line:?} is not a plain [name] header (templates and options are not pushed)"),
                ));
            };
            let id = id.trim();
            if id.is_empty() || id.contains(['[', ']']) {
                return Err(err(n, format!("{line:?} has no usable name")));
            }
            out.push(Section { id: id.to_string(), kind: String::new(), fields: Vec::new(), line: n });
            kinds.push(None);
            continue;
        }
        let Some(section) = out.last_mut() else {
            return Err(err(n, format!("{line:?} comes before any section")));
        };
        let (key, value) = match line.split_once("=>").or_else(|| line.split_once('=')) {
            Some((k, v)) => (k.trim(), v.trim()),
            None => return Err(err(n, format!("{line:?} is not `key = value`"))),
        };
        if key.is_empty() {
            return Err(err(n, format!("{line:?} has no option name")));
        }
        let key = key.to_ascii_lowercase();
        if key == "type" {
            let kind = kinds.last_mut().expect("a kind slot per section");
            if kind.is_some() {
                return Err(err(n, format!("section [{}] has a second type", section.id)));
            }
            *kind = Some(value.to_string());
            section.kind = value.to_string();
        } else {
            section.fields.push((key, value.to_string()));
        }
    }
    for s in &out {
        if s.kind.is_empty() {
            return Err(err(s.line, format!("section [{}] has no type", s.id)));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in &out {
        if !seen.insert((s.id.as_str(), s.kind.as_str())) {
            return Err(err(s.line, format!("a second [{}] of type {}", s.id, s.kind)));
        }
    }
    Ok(out)
}

/// The sections grouped by id (an extension's endpoint, auth and aor share
/// its number), each group in the order written.
pub fn by_id(sections: Vec<Section>) -> BTreeMap<String, Vec<Section>> {
    let mut out: BTreeMap<String, Vec<Section>> = BTreeMap::new();
    for s in sections {
        out.entry(s.id.clone()).or_default().push(s);
    }
    out
}

/// Writes sections back as config text (the record of what was pushed,
/// when it is not exactly one rendering). Parsing it gives the same sections.
pub fn write(header: &str, groups: &BTreeMap<String, Vec<Section>>) -> String {
    let mut out = String::from(header);
    for sections in groups.values() {
        for s in sections {
            for part in ["\n[", &s.id, "]\ntype = ", &s.kind, "\n"] {
                out.push_str(part);
            }
            for (k, v) in &s.fields {
                for part in [k.as_str(), " = ", v, "\n"] {
                    out.push_str(part);
                }
            }
        }
    }
    out
}

/// Whether two groups hold the same objects (order of sections and
/// formatting aside; the order of fields within a section counts).
pub fn same(a: &[Section], b: &[Section]) -> bool {
    fn sorted(s: &[Section]) -> Vec<&Section> {
        let mut v: Vec<&Section> = s.iter().collect();
        v.sort_by(|x, y| (&x.kind, &x.id, &x.fields).cmp(&(&y.kind, &y.id, &y.fields)));
        v
    }
    let (a, b) = (sorted(a), sorted(b));
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.kind == y.kind && x.id == y.id && x.fields == y.fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = "; Managed by asterisk-gitops\n; Extensions: 1\n\n[1001]\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw,alaw\ncallerid = \"Test User\" <1001>\n\n[1001]\ntype = auth\nauth_type = md5\nusername = 1001\nmd5_cred = 0123\n\n[1001]\ntype=aor\nmax_contacts => 1\n";

    #[test]
    fn the_renderers_shape_reads_back_section_by_section() {
        let s = parse(RENDERED).expect("parses");
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].id.as_str(), s[0].kind.as_str(), s[0].line), ("1001", "endpoint", 4));
        assert_eq!(s[0].fields[2], ("allow".to_string(), "ulaw,alaw".to_string()));
        assert_eq!(s[0].fields[3], ("callerid".to_string(), "\"Test User\" <1001>".to_string()));
        assert_eq!(s[2].kind, "aor");
        assert_eq!(s[2].fields, vec![("max_contacts".to_string(), "1".to_string())]);
        let groups = by_id(s.clone());
        assert_eq!(groups["1001"].len(), 3);
        let again = parse(&write("; record\n", &groups)).expect("its own output parses");
        assert!(same(&again, &s), "write then parse gives the same objects");
    }

    #[test]
    fn what_cannot_be_pushed_is_an_error_naming_the_line() {
        let e = parse("[t](!)\ntype = endpoint\n").expect_err("a template");
        assert_eq!(e.line, 1);
        let e = parse("context = x\n").expect_err("outside a section");
        assert!(e.to_string().contains("line 1") && e.message.contains("before any section"), "{e}");
        let e = parse("[1]\ncontext = x\n").expect_err("no type");
        assert!(e.message.contains("no type"), "{e}");
        let e = parse("[1]\ntype = aor\n[1]\ntype = aor\n").expect_err("twice");
        assert_eq!(e.line, 3);
        let e = parse("[1]\ntype = aor\njunk\n").expect_err("no =");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn a_changed_field_or_object_is_not_the_same() {
        let a = parse("[1]\ntype = aor\nmax_contacts = 1\n[1]\ntype = auth\nusername = 1\n").unwrap();
        let b = parse("[1]\ntype = auth\nusername = 1\n\n[1]\ntype = aor\nmax_contacts = 1\n").unwrap();
        assert!(same(&a, &b), "order of sections does not matter");
        let c = parse("[1]\ntype = aor\nmax_contacts = 2\n[1]\ntype = auth\nusername = 1\n").unwrap();
        assert!(!same(&a, &c));
        assert!(!same(&a, &a[..1]));
    }
}

/// What a live target's run has to do: the objects of the rendering
/// (`new`) and of the record of what was applied before (`old`), by id, and
/// the ids to apply: `asked`, and every id whose objects differ between the
/// two.
#[derive(Debug, Default)]
pub struct Changes {
    pub new: BTreeMap<String, Vec<Section>>,
    pub old: BTreeMap<String, Vec<Section>>,
    pub ids: BTreeSet<String>,
}

/// [`Changes`] between `record` and `rendered`. An unreadable record counts
/// as empty, so every object is applied again (`applied` names what the
/// record holds in the warning: "pushed", "written"); an unreadable
/// rendering is the error, and nothing is applied.
pub fn changes(
    record: Option<&str>,
    rendered: &str,
    asked: &BTreeSet<String>,
    applied: &str,
) -> Result<Changes, SectionError> {
    let new = by_id(parse(rendered)?);
    let old = match record.map(parse) {
        None => BTreeMap::new(),
        Some(Ok(s)) => by_id(s),
        Some(Err(e)) => {
            tracing::warn!("the record of what was {applied} is unreadable ({e}); every object is {applied} again");
            BTreeMap::new()
        }
    };
    let none: Vec<Section> = Vec::new();
    let mut ids = asked.clone();
    for id in new.keys().chain(old.keys()) {
        if !same(old.get(id).unwrap_or(&none), new.get(id).unwrap_or(&none)) {
            ids.insert(id.clone());
        }
    }
    Ok(Changes { new, old, ids })
}

/// The record a run leaves: `rendered` when nothing `failed`, else the
/// objects of `new` with each failed id as `old` had it (or gone).
pub fn record_after(
    mut new: BTreeMap<String, Vec<Section>>,
    old: &BTreeMap<String, Vec<Section>>,
    rendered: &str,
    failed: &BTreeMap<String, String>,
    header: &str,
) -> String {
    if failed.is_empty() {
        return rendered.to_string();
    }
    for id in failed.keys() {
        match old.get(id) {
            Some(s) => new.insert(id.clone(), s.clone()),
            None => new.remove(id),
        };
    }
    write(header, &new)
}
