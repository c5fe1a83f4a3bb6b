//! Diagnostics: what is wrong with a spec, and exactly where.
//!
//! Every check in the project reports through [`Diagnostic`] so that the
//! command line (`validate`), the HTTP API (400 bodies) and the daemon's
//! status all speak the same language: file, line, column, field, message.

use serde::Serialize;
use std::fmt;

/// How bad a finding is. Warnings fail `validate --strict` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A place in a source file. Lines and columns count from 1.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One finding about one place in one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable, kebab-case name for the kind of problem (`unknown-codec`).
    pub code: &'static str,
    #[serde(flatten)]
    pub location: Location,
    /// The field the finding is about, as a path inside the file
    /// (`extensions[2].codecs`, `defaults.transport`); empty for the file
    /// as a whole.
    pub field: String,
    pub message: String,
    /// A second place the finding is about (the first definition of a
    /// duplicated extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub related: Option<Location>,
}

impl Diagnostic {
    pub fn error(code: &'static str, location: Location, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            location,
            field: field.into(),
            message: message.into(),
            related: None,
        }
    }

    pub fn warning(
        code: &'static str,
        location: Location,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            code,
            location,
            field: field.into(),
            message: message.into(),
            related: None,
        }
    }

    pub fn with_related(mut self, related: Location) -> Self {
        self.related = Some(related);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {severity}[{}]", self.location, self.code)?;
        if !self.field.is_empty() {
            write!(f, " {}:", self.field)?;
        }
        write!(f, " {}", self.message)?;
        if let Some(related) = &self.related {
            write!(f, " (see also {related})")?;
        }
        Ok(())
    }
}

/// How `validate` prints its findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `file:line:col: error[code] field: message`, one a line.
    Text,
    /// One JSON document: `{"valid":…,"errors":N,"warnings":N,"diagnostics":[…]}`.
    Json,
    /// GitHub Actions workflow commands (`::error file=…,line=…,col=…::…`),
    /// which annotate the pull request's diff.
    Github,
}

/// Renders diagnostics in the chosen format. The result ends with a
/// newline unless it is empty.
pub fn format_all(diagnostics: &[Diagnostic], format: Format, extensions: usize) -> String {
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    match format {
        Format::Text => {
            let mut out = String::new();
            for d in diagnostics {
                out.push_str(&d.to_string());
                out.push('\n');
            }
            out.push_str(&format!(
                "{extensions} extension{} checked: {errors} error{}, {warnings} warning{}\n",
                plural(extensions),
                plural(errors),
                plural(warnings)
            ));
            out
        }
        Format::Json => {
            let doc = serde_json::json!({
                "valid": errors == 0,
                "extensions": extensions,
                "errors": errors,
                "warnings": warnings,
                "diagnostics": diagnostics,
            });
            format!("{doc}\n")
        }
        Format::Github => {
            let mut out = String::new();
            for d in diagnostics {
                let command = match d.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                let mut message = String::new();
                if !d.field.is_empty() {
                    message.push_str(&d.field);
                    message.push_str(": ");
                }
                message.push_str(&d.message);
                if let Some(related) = &d.related {
                    message.push_str(&format!(" (see also {related})"));
                }
                out.push_str(&format!(
                    "::{command} file={},line={},col={},title={}::{}\n",
                    github_property(&d.location.file),
                    d.location.line,
                    d.location.column,
                    github_property(d.code),
                    github_data(&message)
                ));
            }
            out
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Escapes the message part of a GitHub workflow command.
fn github_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a property value of a GitHub workflow command.
fn github_property(s: &str) -> String {
    github_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Diagnostic {
        Diagnostic::error(
            "unknown-codec",
            Location { file: "extensions.d/a,b.yaml".into(), line: 3, column: 7 },
            "extensions[0].codecs",
            "unknown codec \"g7299\"\n100%",
        )
    }

    #[test]
    fn text_names_place_code_and_field() {
        let out = format_all(&[sample()], Format::Text, 1);
        assert!(out.starts_with("extensions.d/a,b.yaml:3:7: error[unknown-codec] extensions[0].codecs: unknown codec"));
        assert!(out.ends_with("1 extension checked: 1 error, 0 warnings\n"));
    }

    #[test]
    fn github_escapes_properties_and_data() {
        let out = format_all(&[sample()], Format::Github, 1);
        assert_eq!(
            out,
            "::error file=extensions.d/a%2Cb.yaml,line=3,col=7,title=unknown-codec::extensions[0].codecs: unknown codec \"g7299\"%0A100%25\n"
        );
    }

    #[test]
    fn json_counts_and_flattens_location() {
        let out = format_all(&[sample()], Format::Json, 4);
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid json");
        assert_eq!(v["valid"], false);
        assert_eq!(v["extensions"], 4);
        assert_eq!(v["diagnostics"][0]["line"], 3);
        assert_eq!(v["diagnostics"][0]["file"], "extensions.d/a,b.yaml");
        assert_eq!(v["diagnostics"][0]["severity"], "error");
    }
}
