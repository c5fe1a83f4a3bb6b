//! `import pjsip`: an existing PJSIP configuration into spec files.
//!
//! Every endpoint that comes with an auth and an aor of its own name (the
//! shape the managed file writes) and whose number is an extension number
//! becomes an entry: named options become fields, the rest go to
//! `options`, a plain-text password becomes `md5Cred` (never written as
//! it is). Values every entry of a file shares become the file's
//! `defaults`. Whatever cannot be carried faithfully — transports,
//! registrations, identifies, trunks, an endpoint whose auth or aor is
//! named otherwise, an option the spec refuses — is listed with the reason
//! and left alone. Output is sorted and has no timestamp, so importing the
//! same configuration twice writes the same bytes.

use super::conf::{self, Place, Section};
use crate::core::spec::{Defaults, ExtensionEntry, ExtraOptions, Profile, SpecFile, StringList, check, profile};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What to import and how.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The realm a password is hashed with when its auth sets none and
    /// the configuration has no `default_realm` (Asterisk's default: `asterisk`).
    pub realm: Option<String>,
    /// Where relative includes are taken from (default: each file's directory).
    pub config_dir: Option<PathBuf>,
}

/// Something left alone, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    pub at: Place,
    /// `[name]` and its type.
    pub what: String,
    pub reason: String,
}

/// One spec file the import produced.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The file name to write (`pjsip.yaml` for `pjsip.conf`).
    pub file: String,
    pub spec: SpecFile,
    /// Where the configuration came from, for the file's header.
    pub source: String,
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub files: Vec<Imported>,
    pub skipped: Vec<Skipped>,
}

impl Outcome {
    pub fn extensions(&self) -> usize {
        self.files.iter().map(|f| f.spec.extensions.len()).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Conf(#[from] conf::ConfError),
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("{0}")]
    Serialize(String),
}

/// Reads each configuration in `paths` and turns it into spec files.
pub fn import(paths: &[PathBuf], opts: &ImportOptions) -> Result<Outcome, ImportError> {
    let mut out = Outcome::default();
    let mut names = BTreeSet::new();
    for path in paths {
        let sections = conf::read(path, opts.config_dir.as_deref())?;
        let (entries, mut skipped) = entries_of(&sections, opts);
        out.skipped.append(&mut skipped);
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("pjsip").to_string();
        let mut file = format!("{stem}.yaml");
        let mut n = 2;
        while !names.insert(file.clone()) {
            file = format!("{stem}-{n}.yaml");
            n += 1;
        }
        out.files.push(Imported { file, spec: with_defaults(entries), source: path.display().to_string() });
    }
    out.skipped.sort();
    Ok(out)
}

/// The YAML of one imported file: a schema line, where it came from, the spec.
pub fn to_yaml(f: &Imported) -> Result<String, ImportError> {
    let body = serde_yaml::to_string(&f.spec).map_err(|e| ImportError::Serialize(e.to_string()))?;
    Ok(format!(
        "{}# Imported by `asterisk-gitops import pjsip` from {}.\n# Passwords were hashed into md5Cred; no plain-text password is kept.\n{body}",
        crate::core::spec::edit::schema_line(0),
        Path::new(&f.source).file_name().and_then(|n| n.to_str()).unwrap_or("the configuration"),
    ))
}

/// Writes every imported file into `dir` (created if needed). Returns the paths.
pub fn write(out: &Outcome, dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let err = |p: &Path, e: std::io::Error| ImportError::Write { path: p.display().to_string(), reason: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let mut written = Vec::new();
    for f in &out.files {
        let path = dir.join(&f.file);
        let text = to_yaml(f)?;
        let tmp = dir.join(format!(".{}.tmp", f.file));
        std::fs::write(&tmp, text).map_err(|e| err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

/// The objects Asterisk would load: non-template sections with a lower-case
/// `type` (others it drops without a word, fact 17), by (type, name).
fn objects(sections: &[Section]) -> (BTreeMap<(String, String), &Section>, Vec<Skipped>) {
    let mut objects: BTreeMap<(String, String), &Section> = BTreeMap::new();
    let mut skipped = Vec::new();
    for s in sections.iter().filter(|s| !s.template) {
        let Some(kind) = s.get("type") else {
            if s.name != "global" {
                skipped.push(Skipped {
                    at: s.at.clone(),
                    what: format!("[{}]", s.name),
                    reason: "no `type`: Asterisk ignores this section".into(),
                });
            }
            continue;
        };
        if objects.insert((kind.to_string(), s.name.clone()), s).is_some() {
            skipped.push(Skipped {
                at: s.at.clone(),
                what: format!("[{}] type = {kind}", s.name),
                reason: "a second section of this name and type: the importer carries only the first".into(),
            });
        }
    }
    (objects, skipped)
}

fn skip(s: &Section, kind: &str, reason: impl Into<String>) -> Skipped {
    Skipped { at: s.at.clone(), what: format!("[{}] type = {kind}", s.name), reason: reason.into() }
}

/// Every carried extension of one configuration, and what was left alone.
fn entries_of(sections: &[Section], opts: &ImportOptions) -> (Vec<ExtensionEntry>, Vec<Skipped>) {
    let (objects, mut skipped) = objects(sections);
    let default_realm = objects
        .iter()
        .find(|((k, _), _)| k == "global")
        .and_then(|(_, s)| s.get("default_realm"))
        .map(str::to_string)
        .or_else(|| opts.realm.clone())
        .unwrap_or_else(|| crate::secret::DEFAULT_REALM.to_string());
    // Endpoints something else points at: trunks, not phones.
    let mut trunks: BTreeMap<String, String> = BTreeMap::new();
    for ((kind, name), s) in &objects {
        match kind.as_str() {
            "identify" => {
                if let Some(e) = s.get("endpoint") {
                    trunks.insert(e.to_string(), format!("matched by identify [{name}]"));
                }
            }
            "registration" => {
                if let Some(e) = s.get("endpoint") {
                    trunks.insert(e.to_string(), format!("used by registration [{name}]"));
                }
            }
            _ => {}
        }
    }
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    let mut entries = Vec::new();
    for ((kind, name), s) in &objects {
        if kind != "endpoint" {
            continue;
        }
        if let Some(why) = trunks.get(name) {
            skipped.push(skip(s, kind, format!("a trunk ({why}): trunks stay in your pjsip.conf")));
            continue;
        }
        let auth = objects.get(&("auth".to_string(), name.clone()));
        let aor = objects.get(&("aor".to_string(), name.clone()));
        match endpoint_entry(s, auth.copied(), aor.copied(), &default_realm) {
            Ok(entry) => {
                used.insert(("endpoint".into(), name.clone()));
                used.insert(("auth".into(), name.clone()));
                used.insert(("aor".into(), name.clone()));
                entries.push(entry);
            }
            Err(reason) => skipped.push(skip(s, kind, reason.to_string())),
        }
    }
    for ((kind, name), s) in &objects {
        if used.contains(&(kind.clone(), name.clone())) {
            continue;
        }
        let reason = match kind.as_str() {
            "endpoint" => continue,
            "auth" | "aor" => {
                if objects.contains_key(&("endpoint".to_string(), name.clone())) {
                    "belongs to an endpoint that was not imported".to_string()
                } else {
                    format!(
                        "an {kind} without an endpoint of its name (a trunk's or a shared one): left in your pjsip.conf"
                    )
                }
            }
            "transport" => "a transport: transports stay in your pjsip.conf (the managed file only names them)".into(),
            "registration" => "an outbound registration (a trunk): left in your pjsip.conf".into(),
            "identify" => "an identify (matches a trunk by address): left in your pjsip.conf".into(),
            "global" | "system" => format!("the {kind} settings: left in your pjsip.conf"),
            other => format!("a {other}: not something the spec carries; left in your pjsip.conf"),
        };
        skipped.push(skip(s, kind, reason));
    }
    entries.sort_by(|a, b| a.extension.cmp(&b.extension));
    (entries, skipped)
}

/// Why an endpoint with its auth and aor cannot become a spec entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unimportable {
    #[error("its name is not an extension number (digits only)")]
    NotANumber,
    #[error("{key} = {value}: the spec names an extension's auth and aor after it")]
    OtherName { key: &'static str, value: String },
    #[error("no `{0}`: the spec gives each extension an auth and an aor of its name")]
    NoLink(&'static str),
    #[error("no auth section [{0}] of its own")]
    NoAuth(String),
    #[error("no aor section [{0}] of its own")]
    NoAor(String),
    #[error("{kind} option {key} is given more than once; the spec holds one value an option")]
    Repeated { kind: &'static str, key: String },
    #[error("allow = {0}: the spec lists codecs one by one")]
    AllowAll(String),
    #[error("{key} = {value} is not a boolean")]
    NotBool { key: String, value: String },
    #[error("no codec allowed (allow = …): the spec needs at least one")]
    NoCodec,
    #[error("no transport: the spec names the transport of each extension")]
    NoTransport,
    #[error("{key} = {value} beside webrtc = yes: Asterisk would set {want}")]
    Implied { key: String, value: String, want: &'static str },
    #[error("auth username = {0}: the spec's username is the extension number")]
    Username(String),
    #[error("its auth sets no username: the spec's username is the extension number")]
    NoUsername,
    #[error("auth_type = {0} without a credential the spec can carry")]
    NoCredential(String),
    #[error("{key} = {value} is not a number")]
    NotANumberValue { key: &'static str, value: String },
    #[error("max_contacts = {0}: the spec takes 1 to {max}", max = check::MAX_CONTACTS)]
    Contacts(u32),
    #[error("the spec would refuse it: {}", .0.join("; "))]
    Refused(Vec<String>),
}

fn not_a_number(key: &'static str, value: &str) -> Unimportable {
    Unimportable::NotANumberValue { key, value: value.to_string() }
}

/// Options of each type read into fields; the rest go to `options`.
fn endpoint_entry(
    ep: &Section,
    auth: Option<&Section>,
    aor: Option<&Section>,
    default_realm: &str,
) -> Result<ExtensionEntry, Unimportable> {
    let name = ep.name.clone();
    if check::extension_number(&name).is_err() {
        return Err(Unimportable::NotANumber);
    }
    for key in ["auth", "aors"] {
        match ep.get(key) {
            Some(v) if v == name => {}
            Some(v) => return Err(Unimportable::OtherName { key, value: v.to_string() }),
            None => return Err(Unimportable::NoLink(key)),
        }
    }
    let Some(auth) = auth else { return Err(Unimportable::NoAuth(name)) };
    let Some(aor) = aor else { return Err(Unimportable::NoAor(name)) };
    let mut e = ExtensionEntry { extension: Some(name.clone()), ..Default::default() };
    let mut options = ExtraOptions::default();
    let mut seen_once: BTreeMap<(&str, String), String> = BTreeMap::new();
    let mut put =
        |kind: &'static str, key: &str, value: &str, options: &mut ExtraOptions| -> Result<(), Unimportable> {
            if let Some(prev) = seen_once.insert((kind, key.to_string()), value.to_string())
                && prev != value
                && MULTI.contains(&key)
            {
                return Err(Unimportable::Repeated { kind, key: key.to_string() });
            }
            if let Some(m) = options.get_mut(kind) {
                m.insert(key.to_string(), value.to_string());
            }
            Ok(())
        };

    // The endpoint.
    let mut codecs: Vec<String> = Vec::new();
    let mut flags: BTreeMap<&str, bool> = BTreeMap::new();
    let mut webrtc = false;
    let mut implied_seen: Vec<(String, String)> = Vec::new();
    for s in &ep.settings {
        let v = s.value.as_str();
        match s.key.as_str() {
            "type" => {}
            "context" => e.context = Some(v.to_string()),
            "transport" => e.transport = Some(v.to_string()),
            "disallow" => {
                for c in v.split(',').map(str::trim) {
                    if c.eq_ignore_ascii_case("all") {
                        codecs.clear();
                    } else {
                        codecs.retain(|x| !x.eq_ignore_ascii_case(c));
                    }
                }
            }
            "allow" => {
                for c in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    if c.eq_ignore_ascii_case("all") || c.starts_with('!') {
                        return Err(Unimportable::AllowAll(c.to_string()));
                    }
                    let c = c.to_ascii_lowercase();
                    if !codecs.contains(&c) {
                        codecs.push(c);
                    }
                }
            }
            "auth" | "aors" => {}
            "callerid" => e.caller_id = Some(v.to_string()),
            "mailboxes" => e.mailboxes = Some(StringList::Comma(v.to_string())),
            "dtmf_mode" => e.dtmf_mode = Some(v.to_ascii_lowercase()),
            "direct_media" | "rtp_symmetric" | "force_rport" | "rewrite_contact" => {
                let b = crate::core::catalogue::parse_bool(v)
                    .ok_or_else(|| Unimportable::NotBool { key: s.key.clone(), value: v.to_string() })?;
                flags.insert(flag_name(&s.key), b);
            }
            "webrtc" => {
                webrtc = crate::core::catalogue::parse_bool(v)
                    .ok_or_else(|| Unimportable::NotBool { key: "webrtc".into(), value: v.to_string() })?
            }
            key => {
                if Profile::Webrtc.implies().iter().any(|(k, _)| *k == key) {
                    implied_seen.push((key.to_string(), v.to_string()));
                }
                put("endpoint", key, v, &mut options)?;
            }
        }
    }
    if codecs.is_empty() {
        return Err(Unimportable::NoCodec);
    }
    e.codecs = Some(StringList::List(codecs));
    e.context = Some(e.context.unwrap_or_else(|| "default".into()));
    if e.transport.is_none() {
        return Err(Unimportable::NoTransport);
    }
    let nat: BTreeMap<&str, bool> = Profile::Nat.sets().iter().map(|(k, v)| (flag_name(k), *v == "yes")).collect();
    let chosen = if webrtc {
        // What webrtc = yes implies is set again by Asterisk: written the same, it adds nothing.
        for (k, v) in &implied_seen {
            let want = Profile::Webrtc.implies().iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap_or_default();
            if profile::normalise(v) != want {
                return Err(Unimportable::Implied { key: k.clone(), value: v.clone(), want });
            }
            options.endpoint.remove(k);
        }
        Profile::Webrtc
    } else if flags == nat {
        flags.clear();
        Profile::Nat
    } else {
        Profile::Lan
    };
    e.profile = Some(chosen.name().to_string());
    e.rewrite_contact = flags.get("rewriteContact").copied();
    e.rtp_symmetric = flags.get("rtpSymmetric").copied();
    e.force_rport = flags.get("forceRport").copied();
    e.direct_media = flags.get("directMedia").copied();

    // The auth.
    let mut password = None;
    let mut md5 = None;
    let mut auth_type = "userpass".to_string();
    for s in &auth.settings {
        let v = s.value.as_str();
        match s.key.as_str() {
            "type" => {}
            "auth_type" => auth_type = v.to_ascii_lowercase(),
            "username" if v == name => {}
            "username" => return Err(Unimportable::Username(v.to_string())),
            "password" => password = Some(v.to_string()),
            "md5_cred" => md5 = Some(v.to_ascii_lowercase()),
            key => put("auth", key, v, &mut options)?,
        }
    }
    if auth.get("username").is_none() {
        return Err(Unimportable::NoUsername);
    }
    let realm = options.auth.get("realm").cloned().unwrap_or_else(|| default_realm.to_string());
    e.md5_cred = Some(match (auth_type.as_str(), password, md5) {
        ("userpass", Some(p), _) if !p.is_empty() => crate::secret::md5_cred(&name, &realm, &p),
        ("md5", _, Some(h)) => h,
        (t, _, _) => return Err(Unimportable::NoCredential(t.to_string())),
    });

    // The aor.
    let mut max_contacts = 0u32;
    let mut qualify = 0u32;
    let mut remove_existing = "no".to_string();
    for s in &aor.settings {
        let v = s.value.as_str();
        match s.key.as_str() {
            "type" => {}
            "max_contacts" => max_contacts = v.parse().map_err(|_| not_a_number("max_contacts", v))?,
            "qualify_frequency" => qualify = v.parse().map_err(|_| not_a_number("qualify_frequency", v))?,
            "remove_existing" => remove_existing = v.to_string(),
            key => put("aor", key, v, &mut options)?,
        }
    }
    if max_contacts == 0 || max_contacts > check::MAX_CONTACTS {
        return Err(Unimportable::Contacts(max_contacts));
    }
    e.max_contacts = Some(max_contacts);
    e.qualify_frequency = Some(qualify);
    // Asterisk's default is no; the managed file's is yes: keep what it was.
    options.aor.insert("remove_existing".into(), remove_existing);
    e.options = options;

    // Judged by the spec's own rules, so every written entry loads.
    let at = crate::core::spec::resolve::Locator { file: ep.at.file.clone(), ..Default::default() };
    let (_, diags) = crate::core::spec::resolve(&e, &Defaults::default(), &at);
    let errors: Vec<String> =
        diags.iter().filter(|d| d.is_error()).map(|d| format!("{}: {}", d.field, d.message)).collect();
    if !errors.is_empty() {
        return Err(Unimportable::Refused(errors));
    }
    Ok(e)
}

/// Options that may be given several times, each adding a value.
const MULTI: &[&str] = &["set_var", "contact", "match", "permit", "deny", "contact_permit", "contact_deny"];

fn flag_name(pjsip: &str) -> &'static str {
    match pjsip {
        "rewrite_contact" => "rewriteContact",
        "rtp_symmetric" => "rtpSymmetric",
        "force_rport" => "forceRport",
        _ => "directMedia",
    }
}

/// Moves what every entry says alike into the file's `defaults` (when
/// there are two entries or more), leaving each entry only its own.
fn with_defaults(mut entries: Vec<ExtensionEntry>) -> SpecFile {
    let mut d = Defaults::default();
    if entries.len() < 2 {
        return SpecFile { defaults: None, extensions: entries };
    }
    macro_rules! shared {
        ($field:ident) => {{
            let first = entries[0].$field.clone();
            if first.is_some() && entries.iter().all(|e| e.$field == first) {
                d.$field = first;
                for e in &mut entries {
                    e.$field = None;
                }
            }
        }};
    }
    shared!(context);
    shared!(codecs);
    shared!(max_contacts);
    shared!(qualify_frequency);
    shared!(dtmf_mode);
    shared!(profile);
    shared!(direct_media);
    shared!(rtp_symmetric);
    shared!(force_rport);
    shared!(rewrite_contact);
    // A webrtc entry takes its transport from defaults only next to `profile: webrtc` there.
    let any_webrtc = entries.iter().any(|e| e.profile.as_deref() == Some("webrtc"));
    if !any_webrtc || d.profile.as_deref() == Some("webrtc") {
        shared!(transport);
    }
    for kind in crate::core::spec::options::KINDS {
        let first: Vec<(String, String)> =
            entries[0].options.get(kind).into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in first {
            if entries.iter().all(|e| e.options.get(kind).and_then(|m| m.get(&k)) == Some(&v)) {
                if let Some(m) = d.options.get_mut(kind) {
                    m.insert(k.clone(), v);
                }
                for e in &mut entries {
                    if let Some(m) = e.options.get_mut(kind) {
                        m.remove(&k);
                    }
                }
            }
        }
    }
    SpecFile { defaults: Some(d), extensions: entries }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "[global]\ntype = global\ndefault_realm = pbx.example.com\n\n\
        [transport-udp]\ntype = transport\nprotocol = udp\nbind = 0.0.0.0\n\n\
        [phone](!)\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw\nallow = alaw\ntransport = transport-udp\n\
        direct_media = no\nrtp_symmetric = yes\nforce_rport = yes\nrewrite_contact = yes\ntimers = required\n\n\
        [auth-t](!)\ntype = auth\nauth_type = userpass\n\n[aor-t](!)\ntype = aor\nmax_contacts = 1\nqualify_frequency = 30\n\n\
        [1001](phone)\nauth = 1001\naors = 1001\ncallerid = One <1001>\n[1001](auth-t)\nusername = 1001\npassword = s3cret-one\n[1001](aor-t)\n\n\
        [1002](phone)\nauth = 1002\naors = 1002\nlanguage = fr\n[1002](auth-t)\nusername = 1002\npassword = s3cret-two\n[1002](aor-t)\n\n\
        [trunk]\ntype = endpoint\ncontext = from-trunk\nallow = ulaw\ntransport = transport-udp\noutbound_auth = trunk-auth\n\
        [trunk-auth]\ntype = auth\nusername = u\npassword = p\n[trunk-reg]\ntype = registration\nendpoint = trunk\n\
        [trunk-id]\ntype = identify\nendpoint = trunk\nmatch = 198.51.100.1\n\n\
        [2001]\ntype = endpoint\nallow = ulaw\ntransport = transport-udp\nauth = 2001-auth\naors = 2001\n";

    fn run(conf: &str) -> (Outcome, String) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("pjsip.conf");
        std::fs::write(&path, conf).expect("write");
        let out = import(&[path], &ImportOptions::default()).expect("imports");
        let yaml = to_yaml(&out.files[0]).expect("yaml");
        (out, yaml)
    }

    #[test]
    fn phones_become_entries_with_shared_defaults_and_md5_creds_and_the_rest_is_listed() {
        let (out, yaml) = run(CONF);
        assert_eq!(out.extensions(), 2, "{yaml}");
        assert!(!yaml.contains("s3cret"), "no plain-text password: {yaml}");
        let policy = crate::core::spec::SecretPolicy::for_spec_dir(Path::new("."));
        let (exts, diags) = crate::core::spec::load::load_file("pjsip.yaml", &policy, &yaml);
        assert!(diags.is_empty(), "{diags:?}\n{yaml}");
        let one = &exts[0].0;
        assert_eq!(one.profile, Profile::Nat, "the four NAT flags as nat writes them");
        assert_eq!(one.codecs, ["ulaw", "alaw"]);
        assert_eq!(one.qualify_frequency, 30);
        assert_eq!(
            one.secret,
            crate::core::spec::Secret::Md5Cred(crate::secret::md5_cred("1001", "pbx.example.com", "s3cret-one")),
            "hashed with the global default_realm"
        );
        assert_eq!(one.options.endpoint.get("timers").map(String::as_str), Some("required"));
        assert_eq!(one.options.aor.get("remove_existing").map(String::as_str), Some("no"), "Asterisk's default kept");
        assert_eq!(exts[1].0.options.endpoint.get("language").map(String::as_str), Some("fr"));
        let file = &out.files[0].spec;
        let d = file.defaults.as_ref().expect("defaults");
        assert_eq!(d.context.as_deref(), Some("from-internal"));
        assert_eq!(d.options.endpoint.get("timers").map(String::as_str), Some("required"));
        assert!(file.extensions[0].context.is_none(), "moved to defaults");
        let left: Vec<(&str, &str)> =
            out.skipped.iter().map(|s| (s.what.as_str(), s.reason.split(':').next().unwrap_or(""))).collect();
        for want in [
            "[transport-udp] type = transport",
            "[trunk] type = endpoint",
            "[trunk-auth] type = auth",
            "[trunk-reg] type = registration",
            "[trunk-id] type = identify",
            "[2001] type = endpoint",
            "[global] type = global",
        ] {
            assert!(left.iter().any(|(w, _)| *w == want), "{want} listed: {left:?}");
        }
        let e2001 = out.skipped.iter().find(|s| s.what.starts_with("[2001]")).expect("2001");
        assert!(e2001.reason.contains("auth = 2001-auth"), "{e2001:?}");
        assert!(out.skipped.iter().all(|s| !s.reason.contains("s3cret") && !s.reason.contains("= p")));
    }

    #[test]
    fn importing_twice_gives_the_same_bytes() {
        let (_, a) = run(CONF);
        let (_, b) = run(CONF);
        assert_eq!(a, b);
    }

    #[test]
    fn lan_flags_webrtc_and_what_the_spec_cannot_carry() {
        let conf = "[t]\ntype = transport\nprotocol = ws\n\
            [3001]\ntype = endpoint\nallow = opus\ntransport = t\nauth = 3001\naors = 3001\nwebrtc = yes\nuse_avpf = yes\n\
            [3001]\ntype = auth\nusername = 3001\nauth_type = md5\nmd5_cred = 0123456789ABCDEF0123456789abcdef\n[3001]\ntype = aor\nmax_contacts = 5\nremove_existing = yes\n\
            [3002]\ntype = endpoint\nallow = ulaw\ntransport = t\nauth = 3002\naors = 3002\ndirect_media = no\n\
            [3002]\ntype = auth\nusername = 3002\npassword = x\n[3002]\ntype = aor\nmax_contacts = 1\n\
            [3003]\ntype = endpoint\nallow = all\ntransport = t\nauth = 3003\naors = 3003\n[3003]\ntype = auth\nusername = 3003\npassword = x\n[3003]\ntype = aor\nmax_contacts = 1\n";
        let (out, yaml) = run(conf);
        let policy = crate::core::spec::SecretPolicy::for_spec_dir(Path::new("."));
        let (exts, diags) = crate::core::spec::load::load_file("pjsip.yaml", &policy, &yaml);
        assert!(diags.is_empty(), "{diags:?}\n{yaml}");
        let e: Vec<(&str, Profile)> = exts.iter().map(|(e, _)| (e.extension.as_str(), e.profile)).collect();
        assert_eq!(e, [("3001", Profile::Webrtc), ("3002", Profile::Lan)], "{yaml}");
        assert!(exts[0].0.options.endpoint.is_empty(), "use_avpf is what webrtc implies: {yaml}");
        assert_eq!(exts[1].0.direct_media, Some(false));
        assert_eq!(exts[1].0.rewrite_contact, None, "lan: only what the file said");
        let s = out.skipped.iter().find(|s| s.what.starts_with("[3003]")).expect("3003 left alone");
        assert!(s.reason.contains("allow = all"), "{s:?}");
    }
}
