//! CSV bulk files: FreePBX's Bulk Handler extensions export and our own
//! CSV (a header of spec field names, `endpoint.NAME`/`aor.NAME`/`auth.NAME`
//! for options), into spec entries; and our CSV out of applied or declared
//! extensions (never a secret).
//!
//! Every row is judged by the spec's own rules (`spec::resolve`); a bad
//! row is reported by line and column (the header's name) and the whole
//! file is refused, so nothing changes. A password becomes `md5Cred`.

use crate::core::diag::{Diagnostic, Location};
use crate::core::spec::resolve::Locator;
use crate::core::spec::yaml::Pos;
use crate::core::spec::{Defaults, Extension, ExtensionEntry, StringList};
use std::collections::BTreeSet;

/// One CSV record: its fields and the line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub line: u32,
    pub fields: Vec<String>,
}

/// RFC 4180: commas, double-quoted fields with `""` for a quote, line
/// breaks inside quotes, CRLF or LF. A leading UTF-8 BOM is skipped.
pub fn parse(file: &str, text: &str) -> Result<Vec<Record>, Box<Diagnostic>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut line: u32 = 1;
    let mut start = 1;
    let mut quoted = false;
    let mut at_field_start = true;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                other => field.push(other),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                if !(fields.len() == 1 && fields[0].is_empty()) {
                    out.push(Record { line: start, fields: std::mem::take(&mut fields) });
                }
                fields.clear();
                line += 1;
                start = line;
                at_field_start = true;
            }
            other => {
                field.push(other);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err(Box::new(Diagnostic::error(
            "csv-syntax",
            Location { file: file.to_string(), line: start, column: 1 },
            "",
            "a quoted field is not closed",
        )));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        out.push(Record { line: start, fields });
    }
    Ok(out)
}

/// Which CSV this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A header of spec field names (`extension`, `displayName`, …, `endpoint.timers`).
    Ours,
    /// FreePBX Bulk Handler's extensions export (`extension,name,…,tech,…,secret,…`).
    BulkHandler,
}

/// FreePBX Bulk Handler columns the spec carries: (column, spec field).
const BULK: &[(&str, &str)] = &[
    ("extension", "extension"),
    ("name", "displayName"),
    ("secret", "password"),
    ("context", "context"),
    ("transport", "transport"),
    ("allow", "codecs"),
    ("dtmfmode", "dtmfMode"),
    ("max_contacts", "maxContacts"),
    ("qualifyfreq", "qualifyFrequency"),
    ("mailbox", "mailboxes"),
    ("direct_media", "directMedia"),
    ("rtp_symmetric", "rtpSymmetric"),
    ("rewrite_contact", "rewriteContact"),
    ("force_rport", "forceRport"),
    ("callgroup", "endpoint.call_group"),
    ("pickupgroup", "endpoint.pickup_group"),
    ("namedcallgroup", "endpoint.named_call_group"),
    ("namedpickupgroup", "endpoint.named_pickup_group"),
    ("media_encryption", "endpoint.media_encryption"),
    ("timers", "endpoint.timers"),
    ("accountcode", "endpoint.accountcode"),
    ("language", "endpoint.language"),
    ("device_state_busy_at", "endpoint.device_state_busy_at"),
];

/// Bulk Handler columns that say something the spec decides otherwise
/// (`disallow`: always `all`; `tech`: checked to be pjsip) or nothing a PJSIP
/// extension needs; not reported.
const BULK_IGNORED_QUIETLY: &[&str] = &["tech", "disallow", "description", "devicetype", "user", "dial", "id"];

/// Our CSV's columns besides options, in export order.
pub const COLUMNS: &[&str] = crate::core::spec::fields::CSV_COLUMNS;

/// The entries a CSV file declares, each checked; every problem at once.
/// A password is hashed into md5Cred with `realm`.
pub struct Parsed {
    pub kind: Kind,
    pub entries: Vec<(ExtensionEntry, u32)>,
    /// Columns read but not carried (Bulk Handler columns the spec has no field for).
    pub ignored: Vec<String>,
}

pub fn entries(file: &str, text: &str, realm: &str) -> Result<Parsed, Vec<Diagnostic>> {
    let records = parse(file, text).map_err(|d| vec![*d])?;
    let Some((header, rows)) = records.split_first() else {
        return Err(vec![Diagnostic::error(
            "csv-syntax",
            Location { file: file.to_string(), line: 1, column: 1 },
            "",
            "the file is empty: it needs a header line",
        )]);
    };
    let names: Vec<String> = header.fields.iter().map(|h| h.trim().to_string()).collect();
    let kind = if names.iter().any(|n| n == "tech")
        || (names.iter().any(|n| n == "name") && names.iter().any(|n| n == "secret"))
    {
        Kind::BulkHandler
    } else {
        Kind::Ours
    };
    let mut diags = Vec::new();
    let mut ignored = Vec::new();
    // Column index → spec field (or `type.option`).
    let mut columns: Vec<Option<String>> = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let at = Location { file: file.to_string(), line: header.line, column: (i + 1) as u32 };
        let target = match kind {
            Kind::BulkHandler => match BULK.iter().find(|(c, _)| c == n) {
                Some((_, f)) => Some(f.to_string()),
                None => {
                    if !BULK_IGNORED_QUIETLY.contains(&n.as_str()) && !n.is_empty() {
                        ignored.push(n.clone());
                    }
                    None
                }
            },
            Kind::Ours => {
                if COLUMNS.contains(&n.as_str())
                    || n.split_once('.').is_some_and(|(k, _)| crate::core::spec::options::KINDS.contains(&k))
                {
                    Some(n.clone())
                } else {
                    let hint = crate::core::spec::check::closest(n, COLUMNS)
                        .map(|c| format!(" (did you mean `{c}`?)"))
                        .unwrap_or_default();
                    diags.push(Diagnostic::error(
                        "unknown-field",
                        at.clone(),
                        n.as_str(),
                        format!("unknown column `{n}`{hint}"),
                    ));
                    None
                }
            }
        };
        if target.is_some() && columns.iter().flatten().any(|c| Some(c) == target.as_ref()) {
            diags.push(Diagnostic::error("duplicate-key", at, n.as_str(), format!("column `{n}` is given twice")));
        }
        columns.push(target);
    }
    if !columns.iter().flatten().any(|c| c == "extension") {
        diags.push(Diagnostic::error(
            "missing-field",
            Location { file: file.to_string(), line: header.line, column: 1 },
            "extension",
            "the header has no `extension` column",
        ));
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let tech = names.iter().position(|n| n == "tech");
    let mut out = Vec::with_capacity(rows.len());
    let mut seen: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for row in rows {
        if row.fields.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let cell = |i: usize| Location { file: file.to_string(), line: row.line, column: (i + 1) as u32 };
        if row.fields.len() > names.len() {
            diags.push(Diagnostic::error(
                "csv-syntax",
                cell(names.len()),
                "",
                format!("{} fields, the header has {}", row.fields.len(), names.len()),
            ));
            continue;
        }
        if let Some(t) = tech
            && let Some(v) = row.fields.get(t).map(|v| v.trim())
            && !v.is_empty()
            && !v.eq_ignore_ascii_case("pjsip")
        {
            diags.push(Diagnostic::error(
                "invalid-value",
                cell(t),
                "tech",
                format!("tech {v:?}: only PJSIP extensions are carried (chan_sip is gone from Asterisk 21)"),
            ));
            continue;
        }
        let (entry, locator, failed) = read_row(file, row, &names, &columns, kind);
        let mut row_diags = failed;
        let (_, resolved) = crate::core::spec::resolve(&entry, &Defaults::default(), &locator);
        row_diags.extend(resolved.into_iter().filter(|d| d.is_error()).map(|mut d| {
            // Name the CSV column the field came from.
            let field = d.field.clone();
            if let Some(i) = columns.iter().position(|c| {
                c.as_deref() == Some(field.as_str())
                    || field.starts_with(&format!("options.{}", c.as_deref().unwrap_or("\u{0}")))
            }) {
                d.message.push_str(&format!(" (column `{}`)", names[i]));
            }
            d
        }));
        if let Some(n) = &entry.extension {
            if let Some(first) = seen.get(n) {
                row_diags.push(Diagnostic::error(
                    "duplicate-extension",
                    Location { file: file.to_string(), line: row.line, column: 1 },
                    "extension",
                    format!("extension {n} is also on line {first}"),
                ));
            } else {
                seen.insert(n.clone(), row.line);
            }
        }
        if row_diags.is_empty() {
            let mut entry = entry;
            if let (Some(p), Some(n)) = (entry.password.take(), entry.extension.clone()) {
                entry.md5_cred = Some(crate::secret::md5_cred(&n, realm, &p));
            }
            out.push((entry, row.line));
        }
        diags.extend(row_diags);
    }
    if diags.is_empty() { Ok(Parsed { kind, entries: out, ignored }) } else { Err(diags) }
}

/// One row into an entry, with where each field stands; values a field
/// cannot hold (a word where a number goes) are reported here.
fn read_row(
    file: &str,
    row: &Record,
    names: &[String],
    columns: &[Option<String>],
    kind: Kind,
) -> (ExtensionEntry, Locator, Vec<Diagnostic>) {
    let mut e = ExtensionEntry::default();
    let mut fields: Vec<(&'static str, Pos)> = Vec::new();
    let mut options = Vec::new();
    let mut diags = Vec::new();
    for (i, target) in columns.iter().enumerate() {
        let Some(target) = target else { continue };
        let Some(raw) = row.fields.get(i) else { continue };
        let v = if target == "password" { raw.as_str() } else { raw.trim() };
        if v.is_empty() {
            continue;
        }
        let pos = Pos { line: row.line, column: (i + 1) as u32 };
        let at = Location { file: file.to_string(), line: row.line, column: (i + 1) as u32 };
        if let Some((k, name)) = target.split_once('.') {
            if let Some(m) = e.options.get_mut(k) {
                m.insert(name.to_string(), v.to_string());
                options.push((target.clone(), pos));
            }
            continue;
        }
        let Some(field) = crate::core::spec::load::ENTRY_FIELDS.iter().find(|f| **f == target) else { continue };
        fields.push((field, pos));
        let number = |diags: &mut Vec<Diagnostic>| match v.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                diags.push(Diagnostic::error(
                    "wrong-type",
                    at.clone(),
                    *field,
                    format!("expected a whole number in column `{}`", names[i]),
                ));
                None
            }
        };
        let boolean = |diags: &mut Vec<Diagnostic>| match crate::core::catalogue::parse_bool(v) {
            Some(b) => Some(b),
            None => {
                diags.push(Diagnostic::error(
                    "wrong-type",
                    at.clone(),
                    *field,
                    format!("expected yes or no in column `{}`", names[i]),
                ));
                None
            }
        };
        let list = |v: &str| {
            let sep: &[char] = if kind == Kind::BulkHandler { &['&', ','] } else { &[','] };
            StringList::List(v.split(sep).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        };
        match *field {
            "extension" => e.extension = Some(v.to_string()),
            "displayName" => e.display_name = Some(v.to_string()),
            "context" => e.context = Some(v.to_string()),
            "transport" => e.transport = Some(v.to_string()),
            "codecs" => e.codecs = Some(list(v)),
            "password" => e.password = Some(v.to_string()),
            "md5Cred" => e.md5_cred = Some(v.to_string()),
            "maxContacts" => e.max_contacts = number(&mut diags),
            "qualifyFrequency" => e.qualify_frequency = number(&mut diags),
            "callerId" => e.caller_id = Some(v.to_string()),
            "mailboxes" => e.mailboxes = Some(list(v)),
            "dtmfMode" => e.dtmf_mode = Some(v.to_ascii_lowercase()),
            "profile" => e.profile = Some(v.to_string()),
            "directMedia" => e.direct_media = boolean(&mut diags),
            "rtpSymmetric" => e.rtp_symmetric = boolean(&mut diags),
            "forceRport" => e.force_rport = boolean(&mut diags),
            "rewriteContact" => e.rewrite_contact = boolean(&mut diags),
            "enabled" => e.enabled = boolean(&mut diags),
            _ => {}
        }
    }
    let locator = Locator {
        file: file.to_string(),
        prefix: String::new(),
        entry: Pos { line: row.line, column: 1 },
        fields,
        defaults: Vec::new(),
        options,
        defaults_options: Vec::new(),
    };
    (e, locator, diags)
}

/// Quotes a field when it needs it.
fn field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) { format!("\"{}\"", v.replace('"', "\"\"")) } else { v.to_string() }
}

/// How many of [`COLUMNS`] an export writes: all but the two secrets.
const EXPORTED: usize = COLUMNS.len() - 2;

/// One extension's values for our CSV, in [`COLUMNS`] order without the
/// secrets, and its options by `type.name`.
pub struct ExportRow {
    pub values: [String; EXPORTED],
    pub options: std::collections::BTreeMap<String, String>,
}

impl From<&Extension> for ExportRow {
    fn from(e: &Extension) -> Self {
        let flag = |b: Option<bool>| b.map(|b| if b { "yes" } else { "no" }.to_string()).unwrap_or_default();
        ExportRow {
            values: [
                e.extension.clone(),
                e.display_name.clone().unwrap_or_default(),
                e.context.clone(),
                e.transport.clone(),
                e.codecs.join(","),
                e.max_contacts.to_string(),
                e.qualify_frequency.to_string(),
                e.caller_id.clone().unwrap_or_default(),
                e.mailboxes.join(","),
                e.dtmf_mode.clone().unwrap_or_default(),
                e.profile.name().to_string(),
                flag(e.direct_media),
                flag(e.rtp_symmetric),
                flag(e.force_rport),
                flag(e.rewrite_contact),
                flag(Some(e.enabled)),
            ],
            options: e.options.iter().map(|(k, n, v)| (format!("{k}.{n}"), v.to_string())).collect(),
        }
    }
}

/// Our CSV of `extensions` (see [`export_rows`]).
pub fn export(extensions: &[Extension]) -> String {
    export_rows(&extensions.iter().map(ExportRow::from).collect::<Vec<_>>())
}

/// Our CSV: the columns in [`COLUMNS`] but the secrets, then one column
/// per option any row sets (`endpoint.timers`, …). Never a password or a hash.
pub fn export_rows(rows: &[ExportRow]) -> String {
    let option_cols: BTreeSet<&String> = rows.iter().flat_map(|r| r.options.keys()).collect();
    let cols: Vec<&str> = COLUMNS.iter().copied().filter(|c| !matches!(*c, "password" | "md5Cred")).collect();
    let mut out = cols.join(",");
    for c in &option_cols {
        out.push(',');
        out.push_str(c);
    }
    out.push_str("\r\n");
    for r in rows {
        let mut row: Vec<String> = r.values.iter().map(|v| field(v)).collect();
        for c in &option_cols {
            row.push(field(r.options.get(*c).map(String::as_str).unwrap_or("")));
        }
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

/// A spec file of imported entries (no defaults: each row says it all).
pub fn to_yaml(entries: &[(ExtensionEntry, u32)], source: &str) -> Result<String, serde_yaml::Error> {
    let spec =
        crate::core::spec::SpecFile { defaults: None, extensions: entries.iter().map(|(e, _)| e.clone()).collect() };
    let body = serde_yaml::to_string(&spec)?;
    Ok(format!(
        "{}# Imported from {source}; passwords were hashed into md5Cred.\n{body}",
        crate::core::spec::edit::schema_line(0)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_csv_field_of_the_field_table_is_a_column_read_and_exported() {
        let header = COLUMNS.join(",");
        let parsed = entries("x.csv", &format!("{header}\r\n"), "asterisk").expect("every column is known");
        assert!(matches!(parsed.kind, Kind::Ours) && parsed.ignored.is_empty());
        let exported = export_rows(&[]);
        let want: Vec<&str> =
            COLUMNS.iter().copied().filter(|c| !crate::core::spec::fields::SECRET_KEYS.contains(c)).collect();
        assert_eq!(exported.trim_end(), want.join(","));
    }

    #[test]
    fn quotes_line_breaks_and_crlf() {
        let r = parse("f.csv", "a,b\r\n\"x,1\",\"say \"\"hi\"\"\nthere\"\r\n\r\nlast,\n").expect("parses");
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].fields, ["x,1", "say \"hi\"\nthere"]);
        assert_eq!((r[1].line, r[2].line), (2, 5));
        assert_eq!(r[2].fields, ["last", ""]);
        assert!(parse("f.csv", "a\n\"open\n").is_err());
    }

    const BULK_HEAD: &str = "extension,name,description,tech,secret,context,transport,allow,disallow,dtmfmode,max_contacts,qualifyfreq,mailbox,callwaiting_enable";

    #[test]
    fn a_bulk_handler_export_imports_and_a_bad_codec_is_reported_by_line_and_column() {
        let good = format!(
            "{BULK_HEAD}\n1001,Ann Agent,,pjsip,Pw-1001-x,from-internal,0.0.0.0-udp,ulaw&alaw,all,rfc4733,1,60,1001@default,ENABLED\n\
             1002,Bob,,pjsip,Pw-1002-x,from-internal,0.0.0.0-udp,g722,all,rfc4733,2,30,,ENABLED\n"
        );
        let p = entries("bulk.csv", &good, "asterisk").expect("imports");
        assert_eq!(p.kind, Kind::BulkHandler);
        assert_eq!(p.ignored, ["callwaiting_enable"]);
        let (e, line) = &p.entries[0];
        assert_eq!(*line, 2);
        assert_eq!(e.display_name.as_deref(), Some("Ann Agent"));
        assert_eq!(e.codecs, Some(StringList::List(vec!["ulaw".into(), "alaw".into()])));
        assert_eq!(e.password, None, "never kept");
        assert_eq!(e.md5_cred, Some(crate::secret::md5_cred("1001", "asterisk", "Pw-1001-x")));
        let yaml = to_yaml(&p.entries, "bulk.csv").expect("yaml");
        assert!(!yaml.contains("Pw-100"), "{yaml}");
        let bad = good.replace("g722,all", "g722&nosuchcodec,all");
        let d = entries("bulk.csv", &bad, "asterisk").err().expect("refused");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].code, d[0].location.line, d[0].location.column), ("unknown-codec", 3, 8), "{d:?}");
        assert!(d[0].message.contains("column `allow`"), "{}", d[0].message);
    }

    #[test]
    fn our_csv_round_trips_without_secrets_and_bad_cells_are_named() {
        let csv = "extension,displayName,context,transport,codecs,md5Cred,qualifyFrequency,profile,endpoint.timers\n\
                   2001,One,from-internal,transport-udp,\"ulaw,alaw\",0123456789abcdef0123456789abcdef,30,lan,required\n";
        let p = entries("ours.csv", csv, "asterisk").expect("imports");
        assert_eq!(p.kind, Kind::Ours);
        let yaml = to_yaml(&p.entries, "ours.csv").expect("yaml");
        let policy = crate::core::spec::SecretPolicy::for_spec_dir(std::path::Path::new("."));
        let (exts, diags) = crate::core::spec::load::load_file("x.yaml", &policy, &yaml);
        assert!(diags.is_empty(), "{diags:?}");
        let out = export(&exts.into_iter().map(|(e, _)| e).collect::<Vec<_>>());
        assert!(out.starts_with("extension,displayName,context,transport,codecs,maxContacts"), "{out}");
        assert!(out.contains(",endpoint.timers\r\n2001,One,from-internal,transport-udp,\"ulaw,alaw\",1,30,"), "{out}");
        assert!(!out.contains("0123456789abcdef"), "no secret exported: {out}");
        let bad = csv.replace(",30,", ",thirty,").replace("required", "sometimes");
        let d = entries("ours.csv", &bad, "asterisk").err().expect("refused");
        let got: Vec<(&str, u32, u32)> = d.iter().map(|d| (d.code, d.location.line, d.location.column)).collect();
        assert_eq!(got, [("wrong-type", 2, 7), ("invalid-value", 2, 9)], "{d:?}");
        let d = entries("ours.csv", "extension,colour\n1,red\n", "asterisk").err().expect("refused");
        assert_eq!((d[0].code, d[0].location.column), ("unknown-field", 2));
    }
}
