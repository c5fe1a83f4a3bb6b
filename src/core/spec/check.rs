//! Value rules shared by the loader, the HTTP API and the renderer.
//!
//! Architecture invariant: a value that passes these checks cannot break
//! out of its `key = value` line in pjsip.conf. The renderer applies
//! [`line_safe`] again to every value it emits, so a template or a caller
//! that skipped validation still cannot inject a section.

/// Codec names Asterisk 22 knows (`core show codecs`, by name). An unknown
/// codec makes Asterisk drop the whole endpoint on reload, silently.
pub const KNOWN_CODECS: &[&str] = &[
    "adpcm", "alaw", "codec2", "g719", "g722", "g723", "g726", "g726aal2", "g729", "gsm", "h261", "h263", "h263p",
    "h264", "h265", "ilbc", "jpeg", "lpc10", "mpeg4", "opus", "png", "red", "siren14", "siren7", "silk", "silk12",
    "silk16", "silk24", "silk8", "slin", "slin12", "slin16", "slin192", "slin24", "slin32", "slin44", "slin48",
    "slin96", "speex", "speex16", "speex32", "t140", "t140red", "testlaw", "ulaw", "vp8", "vp9",
];

/// The values of pjsip's `dtmf_mode`.
pub const DTMF_MODES: &[&str] = &["rfc4733", "inband", "info", "auto", "auto_info"];

/// Longest free-text value (display name, caller id, password, path).
pub const MAX_TEXT: usize = 128;
/// Longest identifier (context, transport).
pub const MAX_IDENT: usize = 80;
/// Longest extension number.
pub const MAX_EXTENSION: usize = 20;
/// Longest label value.
pub const MAX_LABEL: usize = 256;
/// Largest `qualifyFrequency` (a day).
pub const MAX_QUALIFY_FREQUENCY: u32 = 86_400;

/// Largest `maxContacts`.
pub const MAX_CONTACTS: u32 = 100;

/// JSON Schema patterns equivalent to the checks below (ECMA-262 syntax).
pub mod pattern {
    pub const EXTENSION: &str = r"^[0-9]{1,20}$";
    pub const IDENT: &str = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$";
    pub const SAFE_TEXT: &str = r"^[^\u0000-\u001f\u007f-\u009f\[\];#]*$";
    pub const DISPLAY_NAME: &str = r#"^[^\u0000-\u001f\u007f-\u009f\[\];#"<>]*$"#;
    pub const MD5: &str = r"^[0-9a-fA-F]{32}$";
    pub const ENV_NAME: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";
    pub const MAILBOX: &str = r"^[A-Za-z0-9_.+\-]+(@[A-Za-z0-9_.\-]+)?$";
    pub const LABEL_KEY: &str = r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$";
}

/// Why a value is refused. The line rules' texts ([`line_safe`]) complete
/// "… is not allowed: <reason>" and never quote the value (it may be a
/// password); the others name the value to help fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("it contains a line break, which would start a new line in pjsip.conf")]
    LineBreak,
    #[error("it contains the control character U+{code:04X}", code = code_point(.0))]
    Control(char),
    #[error("it contains '{0}', which pjsip.conf reads as {meaning}", meaning = special_meaning(.0))]
    Special(char),
    #[error("it is {len} characters long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("an extension number must not be empty")]
    EmptyNumber,
    #[error("an extension number has at most {MAX_EXTENSION} digits")]
    NumberTooLong,
    #[error("{0:?} is not an extension number: use digits only, e.g. \"1001\"")]
    NotANumber(String),
    #[error(
        "{0:?} is not a plain identifier: use letters, digits, '_', '.' and '-', starting with a letter or digit, at most {MAX_IDENT} characters"
    )]
    NotAnIdentifier(String),
    #[error("it contains '{0}', which would break the caller id (\"Name\" <1001>)")]
    BreaksCallerId(char),
    #[error(
        "md5Cred must be 32 hexadecimal digits: md5(\"EXTENSION:REALM:PASSWORD\"), as printed by `asterisk-gitops hash-password`"
    )]
    NotMd5,
    #[error("{0:?} is not an environment variable name")]
    NotAnEnvName(String),
    #[error("{0:?} is not a mailbox: use MAILBOX@CONTEXT, e.g. 1001@default")]
    NotAMailbox(String),
    #[error("{0:?} is not a label name: letters, digits, '_', '.', '-', '/'")]
    NotALabelName(String),
    #[error("a label value must not contain control characters or line breaks")]
    LabelControl,
    #[error("unknown codec {value:?}{}; Asterisk would drop the whole endpoint", hint(.suggestion.as_deref()))]
    UnknownCodec { value: String, suggestion: Option<&'static str> },
    #[error("unknown dtmfMode {0:?}: use one of {modes}", modes = DTMF_MODES.join(", "))]
    UnknownDtmfMode(String),
}

fn code_point(c: &char) -> u32 {
    u32::from(*c)
}

fn special_meaning(c: &char) -> &'static str {
    match c {
        ';' => "the start of a comment",
        '#' => "the start of a directive (#include, #exec)",
        _ => "part of a section header",
    }
}

fn hint(suggestion: Option<&str>) -> String {
    suggestion.map(|c| format!(" (did you mean {c:?}?)")).unwrap_or_default()
}

/// Whether `value` can stay on its `key = value` line in pjsip.conf.
pub fn line_safe(value: &str, max: usize) -> Result<(), Invalid> {
    // Fast path for the common case, printable ASCII: one pass over the bytes.
    // The renderer calls this for every value it prints.
    if value.len() <= max && value.bytes().all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'[' | b']' | b';' | b'#'))
    {
        return Ok(());
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(match c {
            '\n' | '\r' => Invalid::LineBreak,
            _ => Invalid::Control(c),
        });
    }
    if let Some(c) = value.chars().find(|c| matches!(c, '[' | ']' | ';' | '#')) {
        return Err(Invalid::Special(c));
    }
    let len = value.chars().count();
    if len > max {
        return Err(Invalid::TooLong { len, max });
    }
    Ok(())
}

pub fn extension_number(value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::EmptyNumber);
    }
    if value.len() > MAX_EXTENSION {
        return Err(Invalid::NumberTooLong);
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::NotANumber(value.to_string()));
    }
    Ok(())
}

/// A context or transport name: letters, digits, `_`, `.`, `-`.
pub fn identifier(value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= MAX_IDENT
        && value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(Invalid::NotAnIdentifier(value.to_string())) }
}

pub fn display_name(value: &str) -> Result<(), Invalid> {
    line_safe(value, MAX_TEXT)?;
    match value.chars().find(|c| matches!(c, '"' | '<' | '>')) {
        Some(c) => Err(Invalid::BreaksCallerId(c)),
        None => Ok(()),
    }
}

pub fn md5_cred(value: &str) -> Result<(), Invalid> {
    if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) { Ok(()) } else { Err(Invalid::NotMd5) }
}

pub fn env_name(value: &str) -> Result<(), Invalid> {
    let ok = value.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok { Ok(()) } else { Err(Invalid::NotAnEnvName(value.to_string())) }
}

pub fn mailbox(value: &str) -> Result<(), Invalid> {
    let (user, domain) = match value.split_once('@') {
        Some((u, d)) => (u, Some(d)),
        None => (value, None),
    };
    let part = |s: &str, extra: &[u8]| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b) || extra.contains(&b))
    };
    if part(user, b"+") && domain.is_none_or(|d| part(d, b"")) && value.len() <= MAX_IDENT {
        Ok(())
    } else {
        Err(Invalid::NotAMailbox(value.to_string()))
    }
}

pub fn label_key(value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b));
    if ok { Ok(()) } else { Err(Invalid::NotALabelName(value.to_string())) }
}

pub fn label_value(value: &str) -> Result<(), Invalid> {
    if value.chars().any(|c| c.is_control()) {
        return Err(Invalid::LabelControl);
    }
    let len = value.chars().count();
    if len > MAX_LABEL {
        return Err(Invalid::TooLong { len, max: MAX_LABEL });
    }
    Ok(())
}

pub fn codec(value: &str) -> Result<(), Invalid> {
    if KNOWN_CODECS.contains(&value) {
        Ok(())
    } else {
        Err(Invalid::UnknownCodec { value: value.to_string(), suggestion: closest(value, KNOWN_CODECS) })
    }
}

pub fn dtmf_mode(value: &str) -> Result<(), Invalid> {
    if DTMF_MODES.contains(&value) { Ok(()) } else { Err(Invalid::UnknownDtmfMode(value.to_string())) }
}

/// The candidate nearest to `word` by edit distance, if it is near enough
/// to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(cur).min(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_safe_refuses_everything_that_ends_a_line_or_opens_a_section() {
        for bad in ["a\nb", "a\rb", "x[y", "x]y", "a;b", "#include x", "tab\there", "nul\0", "c1\u{85}"] {
            assert!(line_safe(bad, 100).is_err(), "{bad:?} must be refused");
        }
        assert!(line_safe("Test User (Sales)", 100).is_ok());
        assert!(line_safe(&"x".repeat(101), 100).is_err());
    }

    #[test]
    fn typos_get_suggestions() {
        assert_eq!(closest("g7299", KNOWN_CODECS), Some("g729"));
        assert_eq!(closest("displayname", &["displayName", "context"]), Some("displayName"));
        assert_eq!(closest("zzzzzz", &["ulaw"]), None);
    }

    #[test]
    fn identifiers_and_numbers() {
        type Check = fn(&str) -> Result<(), Invalid>;
        let cases: [(Check, &str, bool); 8] = [
            (identifier, "transport-udp", true),
            (identifier, "from internal", false),
            (identifier, "-x", false),
            (extension_number, "1001", true),
            (extension_number, "10a1", false),
            (extension_number, "", false),
            (mailbox, "1001@default", true),
            (mailbox, "1001@", false),
        ];
        for (check, value, ok) in cases {
            assert_eq!(check(value).is_ok(), ok, "{value:?}");
        }
    }
}
