//! Reading an Asterisk configuration file the way Asterisk's config loader
//! (`main/config.c`) assembles it: `;` comments (`\;` is a literal `;`),
//! `;-- … --;` block comments, `#include` and `#tryinclude` (relative to
//! the configuration directory, globs expanded in sorted order), section
//! headers with templates `[name](!)`, inheritance `[name](a,b)` and
//! additions `[name](+)`, `key = value` and `key => value`.
//!
//! Sections are kept in file order with each option's place, inherited
//! options first (as Asterisk copies a template's variables before the
//! section's own). A missing `#include` is an error: Asterisk would drop
//! the whole including file (fact 16); a missing `#tryinclude` is not.

use std::path::{Path, PathBuf};

/// Where something was written: the file (as given or found) and the line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub file: String,
    pub line: u32,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One `key = value` of a section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Lower case (Asterisk reads option names without case).
    pub key: String,
    pub value: String,
    pub at: Place,
}

/// One section as Asterisk assembles it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// `[name](!)`: a template, not an object.
    pub template: bool,
    /// The sections it inherits from, in order.
    pub inherits: Vec<String>,
    /// Inherited settings first, then its own, in order.
    pub settings: Vec<Setting>,
    pub at: Place,
}

impl Section {
    /// The last value of `key` (as Asterisk applies them in order).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.iter().rev().find(|s| s.key == key).map(|s| s.value.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("{at}: cannot read {path}: {reason}")]
    Read { at: Place, path: String, reason: String },
    #[error(
        "{at}: #include {path} does not exist; Asterisk would drop every object of the including file (use #tryinclude for an optional file)"
    )]
    MissingInclude { at: Place, path: String },
    #[error("{at}: {message}")]
    Syntax { at: Place, message: String },
}

/// Reads `path` and everything it includes. `config_dir` is what relative
/// includes are taken from (Asterisk's configuration directory; the top
/// file's directory when `None`).
pub fn read(path: &Path, config_dir: Option<&Path>) -> Result<Vec<Section>, ConfError> {
    let dir = config_dir.map(Path::to_path_buf).or_else(|| path.parent().map(Path::to_path_buf)).unwrap_or_default();
    let mut r = Reader {
        dir,
        sections: Vec::new(),
        last_of: std::collections::HashMap::new(),
        current: None,
        depth: 0,
        in_block_comment: false,
    };
    let top = Place { file: path.display().to_string(), line: 0 };
    r.file(path, &top)?;
    Ok(r.sections)
}

struct Reader {
    dir: PathBuf,
    sections: Vec<Section>,
    /// The last section of each name (what inheritance and `(+)` refer to):
    /// searching the list instead made a 10k-phone file quadratic.
    last_of: std::collections::HashMap<String, usize>,
    /// Index of the section options go to.
    current: Option<usize>,
    depth: usize,
    in_block_comment: bool,
}

impl Reader {
    fn file(&mut self, path: &Path, from: &Place) -> Result<(), ConfError> {
        if self.depth > 16 {
            return Err(ConfError::Syntax { at: from.clone(), message: "includes nested more than 16 deep".into() });
        }
        let bytes = std::fs::read(path).map_err(|e| ConfError::Read {
            at: from.clone(),
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let shown = path.display().to_string();
        self.depth += 1;
        for (i, raw) in text.lines().enumerate() {
            let at = Place { file: shown.clone(), line: u32::try_from(i + 1).unwrap_or(u32::MAX) };
            self.line(raw, &at)?;
        }
        self.depth -= 1;
        Ok(())
    }

    /// Strips comments: `;` to the end (unless escaped as `\;`), block
    /// comments `;-- … --;`. Returns the text left, `\;` unescaped.
    fn strip(&mut self, raw: &str) -> String {
        let mut out = String::with_capacity(raw.len());
        let b = raw.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if self.in_block_comment {
                if raw[i..].starts_with("--;") {
                    self.in_block_comment = false;
                    i += 3;
                } else {
                    i += 1;
                }
                continue;
            }
            if b[i] == b'\\' && b.get(i + 1) == Some(&b';') {
                out.push(';');
                i += 2;
                continue;
            }
            if b[i] == b';' {
                if raw[i..].starts_with(";--") {
                    self.in_block_comment = true;
                    i += 3;
                    continue;
                }
                break;
            }
            let c = raw[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
        out
    }

    fn line(&mut self, raw: &str, at: &Place) -> Result<(), ConfError> {
        let text = self.strip(raw);
        let t = text.trim();
        if t.is_empty() {
            return Ok(());
        }
        if let Some(rest) = t.strip_prefix('#') {
            return self.directive(rest, at);
        }
        if let Some(rest) = t.strip_prefix('[') {
            return self.header(rest, at);
        }
        let (key, value) = match t.split_once('=') {
            Some((k, v)) => (k.trim(), v.strip_prefix('>').unwrap_or(v).trim()),
            None => {
                return Err(ConfError::Syntax {
                    at: at.clone(),
                    message: "not a section header, a directive or `key = value`".into(),
                });
            }
        };
        let Some(i) = self.current else {
            return Err(ConfError::Syntax { at: at.clone(), message: format!("`{key}` before any [section]") });
        };
        self.sections[i].settings.push(Setting {
            key: key.to_ascii_lowercase(),
            value: value.to_string(),
            at: at.clone(),
        });
        Ok(())
    }

    fn directive(&mut self, rest: &str, at: &Place) -> Result<(), ConfError> {
        let (word, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let arg = arg.trim().trim_matches('"').trim_matches('<').trim_matches('>').trim();
        let optional = match word.to_ascii_lowercase().as_str() {
            "include" => false,
            "tryinclude" => true,
            other => {
                return Err(ConfError::Syntax {
                    at: at.clone(),
                    message: format!(
                        "#{other} is not something the importer can follow (only #include and #tryinclude)"
                    ),
                });
            }
        };
        if arg.is_empty() {
            return Err(ConfError::Syntax { at: at.clone(), message: format!("#{word} without a file") });
        }
        let path = if Path::new(arg).is_absolute() { PathBuf::from(arg) } else { self.dir.join(arg) };
        let files: Vec<PathBuf> = if arg.contains(['*', '?', '[']) {
            let mut found = glob_files(&path);
            found.sort();
            found
        } else if path.exists() {
            vec![path.clone()]
        } else {
            Vec::new()
        };
        if files.is_empty() {
            if optional {
                return Ok(());
            }
            return Err(ConfError::MissingInclude { at: at.clone(), path: arg.to_string() });
        }
        for f in files {
            self.file(&f, at)?;
        }
        Ok(())
    }

    fn header(&mut self, rest: &str, at: &Place) -> Result<(), ConfError> {
        let Some((name, after)) = rest.split_once(']') else {
            return Err(ConfError::Syntax { at: at.clone(), message: "a section header without `]`".into() });
        };
        let name = name.trim().to_string();
        let after = after.trim();
        let mut template = false;
        let mut append = false;
        let mut inherits = Vec::new();
        if !after.is_empty() {
            let inner = after.strip_prefix('(').and_then(|a| a.strip_suffix(')')).ok_or_else(|| ConfError::Syntax {
                at: at.clone(),
                message: format!("unexpected `{after}` after [{name}]"),
            })?;
            for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match part {
                    "!" => template = true,
                    "+" => append = true,
                    other => inherits.push(other.to_string()),
                }
            }
        }
        if append {
            if let Some(&i) = self.last_of.get(&name) {
                self.current = Some(i);
                return Ok(());
            }
            return Err(ConfError::Syntax {
                at: at.clone(),
                message: format!("[{name}](+) adds to a section not defined before"),
            });
        }
        let mut settings = Vec::new();
        for parent in &inherits {
            let Some(p) = self.last_of.get(parent).map(|&i| &self.sections[i]) else {
                return Err(ConfError::Syntax {
                    at: at.clone(),
                    message: format!("[{name}] inherits from [{parent}], which is not defined before it"),
                });
            };
            // Asterisk copies the template's variables, not its `type`-less-ness: all of them.
            settings.extend(p.settings.iter().cloned());
        }
        self.last_of.insert(name.clone(), self.sections.len());
        self.sections.push(Section { name, template, inherits, settings, at: at.clone() });
        self.current = Some(self.sections.len() - 1);
        Ok(())
    }
}

/// The files a glob in the last path component(s) matches (`*`, `?`).
fn glob_files(pattern: &Path) -> Vec<PathBuf> {
    let Some(dir) = pattern.parent() else { return Vec::new() };
    let Some(pat) = pattern.file_name().and_then(|p| p.to_str()) else { return Vec::new() };
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    rd.filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| wildcard(pat, n)))
        .collect()
}

/// `*` and `?` matching (what config globs use in practice).
fn wildcard(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn comments_includes_templates_inheritance_and_additions() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "more.conf", "[1002](phone)\ncallerid = Two <1002>\n");
        write(dir.path(), "extra-a.conf", "[1003](phone)\n");
        let top = write(
            dir.path(),
            "pjsip.conf",
            "; a comment\n[phone](!)\ntype = endpoint ; trailing\ncontext = from-internal\n;-- a block\n[x]\ntype=y\n--;\nallow => ulaw\n\
             [1001](phone)\nset_var = A=1\\;2\n#include more.conf\n#tryinclude missing.conf\n#include extra-*.conf\n[1001](+)\nlanguage = fr\n",
        );
        let s = read(&top, None).expect("reads");
        let names: Vec<(&str, bool)> = s.iter().map(|s| (s.name.as_str(), s.template)).collect();
        assert_eq!(names, [("phone", true), ("1001", false), ("1002", false), ("1003", false)]);
        let one = &s[1];
        assert_eq!(one.get("type"), Some("endpoint"), "inherited");
        assert_eq!(one.get("allow"), Some("ulaw"), "the block comment hid [x]");
        assert_eq!(one.get("set_var"), Some("A=1;2"), "\\; is a literal ;");
        assert_eq!(one.get("language"), Some("fr"), "(+) adds to it");
        assert_eq!(s[2].get("callerid"), Some("Two <1002>"));
        assert_eq!(s[2].at.line, 1);
        assert!(s[2].at.file.ends_with("more.conf"));
    }

    #[test]
    fn a_missing_include_is_an_error_naming_its_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let top = write(dir.path(), "pjsip.conf", "[a]\ntype = aor\n#include gone.conf\n");
        let e = read(&top, None).expect_err("refused");
        assert!(matches!(&e, ConfError::MissingInclude { at, .. } if at.line == 3), "{e}");
        assert!(e.to_string().contains("drop every object"), "{e}");
        let top = write(dir.path(), "p2.conf", "[a](nope)\n");
        assert!(read(&top, None).expect_err("refused").to_string().contains("not defined before"));
    }
}
