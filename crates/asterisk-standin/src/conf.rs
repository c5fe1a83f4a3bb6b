//! Reading pjsip.conf the way Asterisk 22 does, as far as the tests need:
//! sections, `key = value` (or `=>`), `;` comments (`\;` escapes), block
//! comments `;-- … --;`, `#include` / `#tryinclude`, and templates
//! (`[name](!)`, `[name](tpl)`).
//!
//! What counts as a syntax error follows main/config.c: a line that is not
//! a section, an option with `=`, a comment or a directive; a `[` without
//! `]`; an `#include` of a file that does not exist. On a syntax error in
//! the top-level file Asterisk keeps the configuration it had
//! (shared/asterisk/README.md, "ami-reload-with-syntax-error"). A syntax
//! error in an *included* file (the managed file) ends that file there: what
//! came before the bad line is loaded, the rest of it is not, and the
//! including file goes on (measured on Asterisk 22.10.1 by the contract test
//! `real::contract::a_syntax_error_and_a_refused_redefinition_keep_what_was_loaded`).

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// `[name](!)`: a template, not an object.
    pub is_template: bool,
    /// Templates this section inherits from, in order.
    pub inherits: Vec<String>,
    pub options: Vec<(String, String)>,
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

/// Parses `path` and everything it includes. Relative includes are looked
/// up in the directory of the top-level file (Asterisk's config directory).
pub fn parse(path: &Path) -> Result<Vec<Section>, SyntaxError> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut sections = Vec::new();
    parse_into(path, &dir, &mut sections, 0)?;
    // Apply template inheritance: inherited options first, own options after.
    let templates: Vec<Section> = sections.clone();
    for s in &mut sections {
        let mut options = Vec::new();
        for parent in &s.inherits {
            if let Some(t) = templates.iter().find(|t| t.name == *parent) {
                options.extend(t.options.iter().cloned());
            }
        }
        options.append(&mut s.options);
        s.options = options;
    }
    Ok(sections)
}

fn parse_into(path: &Path, dir: &Path, out: &mut Vec<Section>, depth: usize) -> Result<(), SyntaxError> {
    let err = |line: usize, message: String| SyntaxError { file: path.to_path_buf(), line, message };
    if depth > 10 {
        return Err(err(0, "includes nested too deep".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(0, format!("cannot read: {e}")))?;
    let mut in_block_comment = false;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let mut line = raw.to_string();
        if in_block_comment {
            match line.find("--;") {
                Some(end) => {
                    line = line[end + 3..].to_string();
                    in_block_comment = false;
                }
                None => continue,
            }
        }
        if let Some(start) = line.find(";--") {
            match line[start..].find("--;") {
                Some(end) => line = format!("{}{}", &line[..start], &line[start + end + 3..]),
                None => {
                    line.truncate(start);
                    in_block_comment = true;
                }
            }
        }
        let line = strip_comment(&line);
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if let Some(directive) = t.strip_prefix('#') {
            let (word, arg) = directive.split_once(char::is_whitespace).unwrap_or((directive, ""));
            let arg = arg.trim().trim_matches('"').trim_matches('<').trim_matches('>');
            match word {
                "include" | "tryinclude" => {
                    let target = if Path::new(arg).is_absolute() { PathBuf::from(arg) } else { dir.join(arg) };
                    if target.exists() {
                        match parse_into(&target, dir, out, depth + 1) {
                            Ok(()) => {}
                            // Its own bad line ends the included file, keeping what came before.
                            Err(e) if e.file == target && !e.message.starts_with('#') && e.line > 0 => {}
                            Err(e) => return Err(e),
                        }
                    } else if word == "include" {
                        return Err(err(n, format!("#include {arg}: no such file")));
                    }
                }
                "exec" => return Err(err(n, "#exec is not supported by the stand-in".into())),
                _ => return Err(err(n, format!("unknown directive #{word}"))),
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix('[') {
            let Some((name, after)) = rest.split_once(']') else {
                return Err(err(n, "parse error: no closing ']'".into()));
            };
            let after = after.trim();
            let (mut is_template, mut inherits) = (false, Vec::new());
            if let Some(opts) = after.strip_prefix('(') {
                let Some(opts) = opts.strip_suffix(')') else {
                    return Err(err(n, "parse error: no closing ')'".into()));
                };
                for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                    if o == "!" {
                        is_template = true;
                    } else if o != "+" {
                        inherits.push(o.to_string());
                    }
                }
            } else if !after.is_empty() {
                return Err(err(n, format!("parse error: unexpected text after section header: {after}")));
            }
            out.push(Section {
                name: name.trim().to_string(),
                is_template,
                inherits,
                options: Vec::new(),
                file: path.to_path_buf(),
                line: n,
            });
            continue;
        }
        let Some((key, value)) = t.split_once('=') else {
            return Err(err(n, format!("No '=' (equal sign) in line {n} of {}", path.display())));
        };
        let value = value.strip_prefix('>').unwrap_or(value);
        let Some(section) = out.last_mut() else {
            return Err(err(n, "parse error: option outside of any section".into()));
        };
        section.options.push((key.trim().to_string(), value.trim().replace("\\;", ";")));
    }
    Ok(())
}

/// Drops a `;` comment, keeping `\;`.
fn strip_comment(line: &str) -> String {
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b';' && (i == 0 || bytes[i - 1] != b'\\') {
            return line[..i].to_string();
        }
    }
    line.to_string()
}
