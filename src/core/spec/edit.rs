//! Editing spec files the way a careful person would: change one entry and
//! leave everything else — other entries, comments, order, blank lines —
//! byte for byte as it was.
//!
//! Used by the HTTP API and UI (and the git write-back), which create,
//! change and delete extensions by editing these files. An entry is
//! replaced as a whole block of lines (comments inside that one entry are
//! not kept); an extension created from the API gets a file of its own.

use super::load::raw_entries;
use super::{ExtensionEntry, yaml};
use crate::core::diag::Diagnostic;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("extension {0} is not declared in this file")]
    NotFound(String),
    #[error("the file cannot be edited safely: {}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "))]
    Unreadable(Vec<Diagnostic>),
    #[error("cannot serialize the entry: {0}")]
    Serialize(String),
}

/// The first line a new spec file starts with (relative to the spec directory root).
pub fn schema_line(depth: usize) -> String {
    format!("# yaml-language-server: $schema={}schema/extensions.schema.json\n", "../".repeat(depth + 1))
}

/// A new file holding one entry.
pub fn new_file(entry: &ExtensionEntry, depth: usize) -> Result<String, EditError> {
    let mut out = schema_line(depth);
    out.push_str("# Managed through the asterisk-gitops API; edit freely.\nextensions:\n");
    out.push_str(&entry_block(entry, 2)?);
    Ok(out)
}

/// The entry as a YAML block sequence item indented by `indent` spaces.
pub fn entry_block(entry: &ExtensionEntry, indent: usize) -> Result<String, EditError> {
    let body = serde_yaml::to_string(entry).map_err(|e| EditError::Serialize(e.to_string()))?;
    let pad = " ".repeat(indent);
    let mut out = String::with_capacity(body.len() + 16);
    for (i, line) in body.lines().enumerate() {
        out.push_str(&pad);
        out.push_str(if i == 0 { "- " } else { "  " });
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// The entry of `number` as written in `text` (defaults not merged).
pub fn find_entry(file: &str, text: &str, number: &str) -> Result<ExtensionEntry, EditError> {
    let (_, entries) = raw_entries(file, text).map_err(EditError::Unreadable)?;
    entries
        .into_iter()
        .find(|(e, _)| e.extension.as_deref() == Some(number))
        .map(|(e, _)| e)
        .ok_or_else(|| EditError::NotFound(number.to_string()))
}

/// Replaces the entry of `number` by `entry`.
pub fn replace_entry(file: &str, text: &str, number: &str, entry: &ExtensionEntry) -> Result<String, EditError> {
    let span = entry_span(file, text, number)?;
    let block = entry_block(entry, span.indent)?;
    Ok(splice(text, span.start, span.end, &block))
}

/// Removes the entry of `number`. A list left empty becomes `extensions: []`.
pub fn remove_entry(file: &str, text: &str, number: &str) -> Result<String, EditError> {
    let span = entry_span(file, text, number)?;
    if span.only_item {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let head = lines.get(span.list_key_line).copied().unwrap_or("");
        let replaced = format!("{}extensions: []\n", &head[..head.len() - head.trim_start().len()]);
        let without = splice(text, span.start, span.end, "");
        return Ok(splice(&without, span.list_key_line, span.list_key_line + 1, &replaced));
    }
    Ok(splice(text, span.start, span.end, ""))
}

/// Adds `entry` at the end of the file's `extensions` list.
pub fn append_entry(file: &str, text: &str, entry: &ExtensionEntry) -> Result<String, EditError> {
    let root = yaml::parse(text)
        .map_err(|e| EditError::Unreadable(vec![syntax(file, &e)]))?
        .ok_or_else(|| EditError::Unreadable(Vec::new()))?;
    let yaml::Node::Map(top, _) = &root else { return Err(EditError::Unreadable(Vec::new())) };
    let Some(idx) = top.iter().position(|(k, _)| matches!(k, yaml::Node::Scalar(s) if s.text == "extensions")) else {
        let mut out = text.to_string();
        if !out.ends_with('\n') && !out.is_empty() {
            out.push('\n');
        }
        out.push_str("extensions:\n");
        out.push_str(&entry_block(entry, 2)?);
        return Ok(out);
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    match &top[idx].1 {
        yaml::Node::Seq(items, _) if !items.is_empty() && !is_flow(&lines, top[idx].1.pos()) => {
            let last = items.len() - 1;
            let (_, end) = item_lines(&lines, items, last, next_key_line(top, idx));
            let indent = dash_indent(&lines, items[0].pos());
            Ok(splice(text, end, end, &entry_block(entry, indent)?))
        }
        _ => {
            // `extensions: []`, `extensions:` with nothing, or a flow list: rewrite that key as a block list.
            let key_line = top[idx].0.pos().line as usize - 1;
            let end = next_key_line(top, idx).unwrap_or(lines.len());
            let end = trim_back(&lines, key_line + 1, end);
            let mut block = String::from("extensions:\n");
            for (e, _) in raw_entries(file, text).map_err(EditError::Unreadable)?.1 {
                block.push_str(&entry_block(&e, 2)?);
            }
            block.push_str(&entry_block(entry, 2)?);
            Ok(splice(text, key_line, end, &block))
        }
    }
}

fn syntax(file: &str, e: &yaml::SyntaxError) -> Diagnostic {
    Diagnostic::error(
        "yaml-syntax",
        crate::core::diag::Location { file: file.into(), line: e.pos.line, column: e.pos.column },
        "",
        e.message.clone(),
    )
}

struct Span {
    /// First line (0-based) of the entry.
    start: usize,
    /// One past its last line.
    end: usize,
    /// Column of its `-`, 0-based.
    indent: usize,
    only_item: bool,
    list_key_line: usize,
}

fn entry_span(file: &str, text: &str, number: &str) -> Result<Span, EditError> {
    let root = yaml::parse(text)
        .map_err(|e| EditError::Unreadable(vec![syntax(file, &e)]))?
        .ok_or_else(|| EditError::NotFound(number.to_string()))?;
    let yaml::Node::Map(top, _) = &root else { return Err(EditError::NotFound(number.to_string())) };
    let idx = top
        .iter()
        .position(|(k, _)| matches!(k, yaml::Node::Scalar(s) if s.text == "extensions"))
        .ok_or_else(|| EditError::NotFound(number.to_string()))?;
    let yaml::Node::Seq(items, _) = &top[idx].1 else { return Err(EditError::NotFound(number.to_string())) };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    if is_flow(&lines, top[idx].1.pos()) {
        return Err(EditError::Unreadable(Vec::new()));
    }
    let i = items
        .iter()
        .position(|item| match item {
            yaml::Node::Map(entries, _) => entries.iter().any(|(k, v)| {
                matches!(k, yaml::Node::Scalar(s) if s.text == "extension")
                    && matches!(v, yaml::Node::Scalar(s) if s.text == number)
            }),
            _ => false,
        })
        .ok_or_else(|| EditError::NotFound(number.to_string()))?;
    let (start, end) = item_lines(&lines, items, i, next_key_line(top, idx));
    Ok(Span {
        start,
        end,
        indent: dash_indent(&lines, items[i].pos()),
        only_item: items.len() == 1,
        list_key_line: top[idx].0.pos().line as usize - 1,
    })
}

/// Whether the list at `pos` is written in flow style (`[ … ]`).
fn is_flow(lines: &[&str], pos: yaml::Pos) -> bool {
    let line = lines.get(pos.line as usize - 1).copied().unwrap_or("");
    line.chars().nth(pos.column as usize - 1) == Some('[')
}

/// The line (0-based) of the `-` that opens the item at `pos`.
fn dash_line(lines: &[&str], pos: yaml::Pos) -> usize {
    let mut l = pos.line as usize - 1;
    let here = lines.get(l).copied().unwrap_or("");
    let before: String = here.chars().take(pos.column as usize - 1).collect();
    if !before.contains('-') {
        // `-` alone on the line above.
        while l > 0 && lines[l - 1].trim().is_empty() {
            l -= 1;
        }
        l = l.saturating_sub(1);
    }
    l
}

fn dash_indent(lines: &[&str], pos: yaml::Pos) -> usize {
    let line = lines.get(dash_line(lines, pos)).copied().unwrap_or("");
    line.find('-').unwrap_or(0)
}

/// The line (0-based) where the top-level key after `idx` starts, if any.
fn next_key_line(top: &[(yaml::Node, yaml::Node)], idx: usize) -> Option<usize> {
    top.get(idx + 1).map(|(k, _)| k.pos().line as usize - 1)
}

/// Lines [start, end) of item `i`: from its `-` to before the next item (or
/// the end of the list), leaving out trailing blank and comment lines,
/// which belong to what follows.
fn item_lines(lines: &[&str], items: &[yaml::Node], i: usize, next_key: Option<usize>) -> (usize, usize) {
    let start = dash_line(lines, items[i].pos());
    let end = match items.get(i + 1) {
        Some(next) => dash_line(lines, next.pos()),
        None => next_key.unwrap_or(lines.len()),
    };
    (start, trim_back(lines, start + 1, end))
}

fn trim_back(lines: &[&str], min: usize, mut end: usize) -> usize {
    while end > min {
        let t = lines[end - 1].trim();
        if t.is_empty() || t.starts_with('#') {
            end -= 1;
        } else {
            break;
        }
    }
    end
}

/// Replaces lines [start, end) of `text` by `with`.
fn splice(text: &str, start: usize, end: usize, with: &str) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::with_capacity(text.len() + with.len());
    for l in &lines[..start.min(lines.len())] {
        out.push_str(l);
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(with);
    for l in &lines[end.min(lines.len())..] {
        out.push_str(l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::spec::load::load_file;
    use std::path::Path;

    const FILE: &str = "# Sales floor — hand written\ndefaults:\n  context: from-internal   # everyone\n  transport: transport-udp\n  codecs: [ulaw]\n\nextensions:\n  # the boss\n  - extension: \"1001\"\n    displayName: Boss\n    md5Cred: 0123456789abcdef0123456789abcdef\n\n  # the intern\n  - extension: \"1002\"\n    displayName: Intern   # temporary\n    md5Cred: 0123456789abcdef0123456789abcdef\n  - extension: \"1003\"\n    md5Cred: 0123456789abcdef0123456789abcdef\n# trailing comment\n";

    fn entry(number: &str, name: &str) -> ExtensionEntry {
        ExtensionEntry {
            extension: Some(number.into()),
            display_name: Some(name.into()),
            md5_cred: Some("ffffffffffffffffffffffffffffffff".into()),
            ..Default::default()
        }
    }

    fn numbers(text: &str) -> Vec<String> {
        let (exts, diags) = load_file("t.yaml", &crate::core::spec::SecretPolicy::for_spec_dir(Path::new(".")), text);
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}\n{text}");
        exts.into_iter().map(|(e, _)| e.extension).collect()
    }

    #[test]
    fn replacing_an_entry_leaves_every_other_line_as_it_was() {
        let out = replace_entry("t.yaml", FILE, "1002", &entry("1002", "Junior")).expect("edits");
        let expected = FILE.replace(
            "  - extension: \"1002\"\n    displayName: Intern   # temporary\n    md5Cred: 0123456789abcdef0123456789abcdef\n",
            "  - extension: '1002'\n    displayName: Junior\n    md5Cred: ffffffffffffffffffffffffffffffff\n",
        );
        assert_eq!(out, expected);
        assert_eq!(numbers(&out), ["1001", "1002", "1003"]);
    }

    #[test]
    fn removing_an_entry_keeps_the_comments_of_its_neighbours() {
        let out = remove_entry("t.yaml", FILE, "1001").expect("edits");
        assert!(out.contains("  # the boss\n\n  # the intern\n  - extension: \"1002\""), "{out}");
        assert_eq!(numbers(&out), ["1002", "1003"]);
        let out = remove_entry("t.yaml", FILE, "1003").expect("edits");
        assert!(out.ends_with("    md5Cred: 0123456789abcdef0123456789abcdef\n# trailing comment\n"), "{out}");
        assert_eq!(numbers(&out), ["1001", "1002"]);
    }

    #[test]
    fn removing_the_last_entry_leaves_an_empty_list() {
        let one = "defaults: {context: a, transport: b, codecs: [ulaw]}\nextensions:\n  - extension: \"1\"\n    md5Cred: 0123456789abcdef0123456789abcdef\n";
        let out = remove_entry("t.yaml", one, "1").expect("edits");
        assert_eq!(out, "defaults: {context: a, transport: b, codecs: [ulaw]}\nextensions: []\n");
        assert!(numbers(&out).is_empty());
    }

    #[test]
    fn appending_goes_after_the_last_entry() {
        let out = append_entry("t.yaml", FILE, &entry("1004", "New")).expect("edits");
        assert!(
            out.contains(
                "  - extension: \"1003\"\n    md5Cred: 0123456789abcdef0123456789abcdef\n  - extension: '1004'\n"
            ),
            "{out}"
        );
        assert!(out.ends_with("# trailing comment\n"));
        assert_eq!(numbers(&out), ["1001", "1002", "1003", "1004"]);
        let empty = "extensions: []\n";
        let out = append_entry("t.yaml", empty, &entry("7", "Seven")).expect("edits");
        assert_eq!(find_entry("t.yaml", &out, "7").expect("found").display_name.as_deref(), Some("Seven"));
    }

    #[test]
    fn a_new_file_loads_back_to_the_same_entry() {
        let mut e = entry("2001", "Agent \"Q\" #1");
        e.context = Some("from-internal".into());
        e.transport = Some("transport-udp".into());
        e.codecs = Some(crate::core::spec::StringList::List(vec!["ulaw".into()]));
        let text = new_file(&e, 0).expect("serializes");
        assert!(text.starts_with("# yaml-language-server: $schema=../schema/extensions.schema.json\n"));
        assert_eq!(find_entry("n.yaml", &text, "2001").expect("found"), e);
    }

    #[test]
    fn a_missing_extension_is_not_found() {
        assert!(matches!(replace_entry("t.yaml", FILE, "9999", &entry("9999", "x")), Err(EditError::NotFound(_))));
    }
}
