//! From what an entry says (plus its file's defaults) to a checked [`Extension`].
//!
//! Shared by the file loader and the HTTP API, so that a request body and a
//! YAML file are judged by the same rules and produce the same diagnostics.

/// Seconds between qualifies when a spec does not say (`qualifyFrequency`).
pub const DEFAULT_QUALIFY_FREQUENCY: u32 = 60;

use super::check;
use super::profile::{self, Profile};
use super::yaml::Pos;
use super::{Defaults, Extension, ExtensionEntry, Origin, Secret, StringList};
use crate::core::diag::{Diagnostic, Location};
use std::collections::BTreeMap;

/// Where the fields of one entry (and of its file's defaults) stand, so a
/// finding can name the exact line and column.
#[derive(Clone, Debug, Default)]
pub struct Locator {
    pub file: String,
    /// The entry's path in the file (`extensions[3]`); empty for an API body.
    pub prefix: String,
    /// Where the entry starts.
    pub entry: Pos,
    /// Positions of the entry's own fields (by camelCase name).
    pub fields: Vec<(&'static str, Pos)>,
    /// Positions of the defaults' fields (by camelCase name).
    pub defaults: Vec<(&'static str, Pos)>,
    /// Positions of the entry's `options` by `type.name` (`endpoint.timers`).
    pub options: Vec<(String, Pos)>,
    /// Positions of the defaults' `options` by `type.name`.
    pub defaults_options: Vec<(String, Pos)>,
}

/// Whether a value was written on the entry or inherited from `defaults`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum From {
    Entry,
    Defaults,
}

impl Locator {
    fn location(&self, pos: Pos) -> Location {
        Location { file: self.file.clone(), line: pos.line.max(1), column: pos.column.max(1) }
    }

    fn field_path(&self, field: &str, from: From) -> String {
        match from {
            From::Defaults => format!("defaults.{field}"),
            From::Entry if self.prefix.is_empty() => field.to_string(),
            From::Entry => format!("{}.{field}", self.prefix),
        }
    }

    fn pos_of(&self, field: &str, from: From) -> Pos {
        let list = match from {
            From::Entry => &self.fields,
            From::Defaults => &self.defaults,
        };
        list.iter().find(|(name, _)| *name == field).map(|(_, p)| *p).unwrap_or(self.entry)
    }

    fn error(&self, code: &'static str, field: &str, from: From, message: impl std::fmt::Display) -> Diagnostic {
        Diagnostic::error(
            code,
            self.location(self.pos_of(field, from)),
            self.field_path(field, from),
            message.to_string(),
        )
    }

    /// An error at one option (`options.endpoint.timers`), on the entry or in the defaults.
    fn option_error(&self, code: &'static str, key: &str, from: From, message: impl std::fmt::Display) -> Diagnostic {
        let list = match from {
            From::Entry => &self.options,
            From::Defaults => &self.defaults_options,
        };
        let pos = list.iter().find(|(k, _)| k == key).map(|(_, p)| *p).unwrap_or_else(|| self.pos_of("options", from));
        Diagnostic::error(
            code,
            self.location(pos),
            self.field_path(&format!("options.{key}"), from),
            message.to_string(),
        )
    }

    fn entry_error(&self, code: &'static str, message: impl std::fmt::Display) -> Diagnostic {
        Diagnostic::error(code, self.location(self.entry), self.prefix.clone(), message.to_string())
    }
}

/// Picks the entry's value, or the default's.
fn pick<'a, T>(entry: &'a Option<T>, default: &'a Option<T>) -> Option<(&'a T, From)> {
    entry.as_ref().map(|v| (v, From::Entry)).or_else(|| default.as_ref().map(|v| (v, From::Defaults)))
}

/// Checks one entry against the rules and merges its defaults. Returns the
/// extension when nothing is wrong with it; the diagnostics (warnings
/// included) either way.
pub fn resolve(entry: &ExtensionEntry, defaults: &Defaults, at: &Locator) -> (Option<Extension>, Vec<Diagnostic>) {
    let mut diags = Vec::new();

    let number = match &entry.extension {
        None => {
            diags.push(
                at.entry_error("missing-field", "missing field `extension` (the extension number, e.g. \"1001\")"),
            );
            String::new()
        }
        Some(n) => {
            if let Err(e) = check::extension_number(n) {
                diags.push(at.error("invalid-extension", "extension", From::Entry, e));
            }
            n.clone()
        }
    };

    if let Some(name) = &entry.display_name
        && let Err(e) = check::display_name(name)
    {
        diags.push(at.error("unsafe-value", "displayName", From::Entry, format!("displayName is not allowed: {e}")));
    }

    let identifier = |field: &'static str, value: Option<(&String, From)>, diags: &mut Vec<Diagnostic>| -> String {
        match value {
            None => {
                diags.push(at.entry_error(
                    "missing-field",
                    format!("missing field `{field}`: set it on the entry or in the file's `defaults`"),
                ));
                String::new()
            }
            Some((v, from)) => {
                let code =
                    if check::line_safe(v, check::MAX_IDENT).is_err() { "unsafe-value" } else { "invalid-identifier" };
                if let Err(e) = check::identifier(v) {
                    diags.push(at.error(code, field, from, format!("{field}: {e}")));
                }
                v.clone()
            }
        }
    };
    let context = identifier("context", pick(&entry.context, &defaults.context), &mut diags);
    let transport = identifier("transport", pick(&entry.transport, &defaults.transport), &mut diags);

    let codecs = match pick(&entry.codecs, &defaults.codecs) {
        None => {
            diags.push(at.entry_error(
                "missing-field",
                "missing field `codecs`: set it on the entry or in the file's `defaults`",
            ));
            Vec::new()
        }
        Some((list, from)) => {
            let items = list.items();
            if items.is_empty() {
                diags.push(at.error("invalid-value", "codecs", from, "codecs must name at least one codec"));
            }
            let mut seen = Vec::new();
            for codec in &items {
                if let Err(e) = check::codec(codec) {
                    let code = if check::line_safe(codec, check::MAX_IDENT).is_err() {
                        "unsafe-value"
                    } else {
                        "unknown-codec"
                    };
                    diags.push(at.error(code, "codecs", from, e));
                } else if seen.contains(codec) {
                    diags.push(at.error("invalid-value", "codecs", from, format!("codec {codec:?} is listed twice")));
                }
                seen.push(codec.clone());
            }
            items
        }
    };

    let secret = resolve_secret(entry, at, &mut diags);

    let max_contacts = match pick(&entry.max_contacts, &defaults.max_contacts) {
        None => 1,
        Some((&n, from)) => {
            if !(1..=check::MAX_CONTACTS).contains(&n) {
                diags.push(at.error(
                    "invalid-value",
                    "maxContacts",
                    from,
                    format!("maxContacts must be from 1 to {}, not {n}", check::MAX_CONTACTS),
                ));
            }
            n
        }
    };

    let qualify_frequency = match pick(&entry.qualify_frequency, &defaults.qualify_frequency) {
        None => DEFAULT_QUALIFY_FREQUENCY,
        Some((&n, from)) => {
            if n > check::MAX_QUALIFY_FREQUENCY {
                diags.push(at.error(
                    "invalid-value",
                    "qualifyFrequency",
                    from,
                    format!(
                        "qualifyFrequency must be from 0 (off) to {} seconds, not {n}",
                        check::MAX_QUALIFY_FREQUENCY
                    ),
                ));
            }
            n
        }
    };

    if let Some(c) = &entry.caller_id
        && let Err(e) = check::line_safe(c, check::MAX_TEXT)
    {
        diags.push(at.error("unsafe-value", "callerId", From::Entry, format!("callerId is not allowed: {e}")));
    }

    let mailboxes = entry.mailboxes.as_ref().map(StringList::items).unwrap_or_default();
    for m in &mailboxes {
        if let Err(e) = check::mailbox(m) {
            let code = if check::line_safe(m, check::MAX_IDENT).is_err() { "unsafe-value" } else { "invalid-value" };
            diags.push(at.error(code, "mailboxes", From::Entry, e));
        }
    }

    let dtmf_mode = pick(&entry.dtmf_mode, &defaults.dtmf_mode).map(|(m, from)| {
        if let Err(e) = check::dtmf_mode(m) {
            let code =
                if check::line_safe(m, check::MAX_IDENT).is_err() { "unsafe-value" } else { "unknown-dtmf-mode" };
            diags.push(at.error(code, "dtmfMode", from, e));
        }
        m.clone()
    });

    let profile = match pick(&entry.profile, &defaults.profile) {
        None => Profile::default(),
        Some((name, from)) => match Profile::parse(name) {
            Some(p) => {
                if p == Profile::Webrtc {
                    check_webrtc_transport(entry, defaults, from, at, &mut diags);
                }
                p
            }
            None => {
                let code =
                    if check::line_safe(name, check::MAX_IDENT).is_err() { "unsafe-value" } else { "unknown-profile" };
                let shown = if code == "unsafe-value" { "this value".to_string() } else { format!("{name:?}") };
                diags.push(at.error(
                    code,
                    "profile",
                    from,
                    format!("profile {shown} is not one of {} (see the README's \"Profiles\")", Profile::names()),
                ));
                Profile::default()
            }
        },
    };

    let mut labels: BTreeMap<String, String> = defaults.labels.clone();
    labels.extend(entry.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (k, v) in &labels {
        let from = if entry.labels.contains_key(k) { From::Entry } else { From::Defaults };
        if let Err(e) = check::label_key(k).and_then(|()| check::label_value(v)) {
            diags.push(at.error("invalid-value", "labels", from, format!("label {k:?}: {e}")));
        }
    }

    let options = resolve_options(entry, defaults, profile, at, &mut diags);

    let flag = |e: &Option<bool>, d: &Option<bool>| pick(e, d).map(|(v, _)| *v);
    let [rewrite_contact, rtp_symmetric, force_rport, direct_media] = profile::resolve_flags(
        profile,
        [
            flag(&entry.rewrite_contact, &defaults.rewrite_contact),
            flag(&entry.rtp_symmetric, &defaults.rtp_symmetric),
            flag(&entry.force_rport, &defaults.force_rport),
            flag(&entry.direct_media, &defaults.direct_media),
        ],
    );
    let extension = Extension {
        extension: number,
        display_name: entry.display_name.clone(),
        context,
        transport,
        codecs,
        secret: match secret {
            Some(s) => s,
            None => return (None, diags),
        },
        max_contacts,
        qualify_frequency,
        caller_id: entry.caller_id.clone(),
        mailboxes,
        dtmf_mode,
        // The profile (nat by default: the seed's agents reach the PBX over
        // the internet) with explicit fields on top.
        profile,
        direct_media,
        rtp_symmetric,
        force_rport,
        rewrite_contact,
        enabled: flag(&entry.enabled, &defaults.enabled).unwrap_or(true),
        labels: labels.into(),
        options,
        origin: Origin { file: at.file.clone(), line: at.entry.line },
    };
    let ok = !diags.iter().any(Diagnostic::is_error);
    (ok.then_some(extension), diags)
}

/// The entry's `options` over its defaults', option by option, each
/// checked against the committed catalogue and value types (a learnt
/// catalogue is checked again when rendering) and against what named
/// fields and the profile write.
fn resolve_options(
    entry: &ExtensionEntry,
    defaults: &Defaults,
    profile: Profile,
    at: &Locator,
    diags: &mut Vec<Diagnostic>,
) -> super::ExtraOptions {
    let catalogue = crate::core::catalogue::Catalogue::asterisk22();
    let types = crate::core::catalogue::ValueTypes::asterisk22();
    let mut out = super::ExtraOptions::default();
    for kind in super::options::KINDS {
        let mine = entry.options.get(kind).into_iter().flatten().map(|(n, v)| (n, v, From::Entry));
        let inherited = defaults
            .options
            .get(kind)
            .into_iter()
            .flatten()
            .filter(|(n, _)| !entry.options.get(kind).is_some_and(|m| m.contains_key(*n)))
            .map(|(n, v)| (n, v, From::Defaults));
        for (name, value, from) in mine.chain(inherited) {
            let key = format!("{kind}.{name}");
            if let Err(refused) = super::options::check_option(&catalogue, &types, kind, name, value) {
                let code = refused.code();
                let hint = if code == "unknown-option" {
                    let known: Vec<&str> = catalogue.names(kind).collect();
                    check::closest(name, &known).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default()
                } else {
                    String::new()
                };
                diags.push(at.option_error(code, &key, from, format!("{refused}{hint}")));
                continue;
            }
            if let Some(why) = super::options::reserved(kind, name, profile) {
                diags.push(at.option_error(
                    "reserved-option",
                    &key,
                    from,
                    format!("`{name}` cannot be set in options: {why}"),
                ));
                continue;
            }
            if let Some(m) = out.get_mut(kind) {
                m.insert(name.clone(), value.trim().to_string());
            }
        }
    }
    out
}

/// A webrtc extension's transport must be one chosen for it: on the entry,
/// or in `defaults` next to `profile: webrtc`. A file's default transport
/// is the UDP one its other phones use, and a browser cannot reach that.
fn check_webrtc_transport(
    entry: &ExtensionEntry,
    defaults: &Defaults,
    from: From,
    at: &Locator,
    diags: &mut Vec<Diagnostic>,
) {
    let defaults_for_webrtc = defaults.profile.as_deref() == Some(Profile::Webrtc.name());
    let chosen = entry.transport.is_some() || (defaults.transport.is_some() && defaults_for_webrtc);
    if chosen || pick(&entry.transport, &defaults.transport).is_none() {
        // Missing altogether is reported as a missing `transport` already.
        return;
    }
    let default = defaults.transport.as_deref().unwrap_or_default();
    diags.push(at.error(
        "webrtc-transport",
        "profile",
        from,
        format!(
            "profile webrtc needs `transport` on this entry naming the operator's WebSocket transport \
             (a pjsip transport with protocol = ws or wss); the file's default transport {default:?} is not taken for webrtc"
        ),
    ));
}

fn resolve_secret(entry: &ExtensionEntry, at: &Locator, diags: &mut Vec<Diagnostic>) -> Option<Secret> {
    let given: Vec<&'static str> = [
        ("password", entry.password.is_some()),
        ("md5Cred", entry.md5_cred.is_some()),
        ("passwordEnv", entry.password_env.is_some()),
        ("passwordFile", entry.password_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if given.is_empty() {
        diags.push(at.entry_error(
            "missing-secret",
            "no secret: set exactly one of md5Cred, passwordEnv, passwordFile or password",
        ));
        return None;
    }
    if given.len() > 1 {
        diags.push(at.error(
            "multiple-secrets",
            given[1],
            From::Entry,
            format!("more than one secret ({}): set exactly one", given.join(", ")),
        ));
        return None;
    }
    let mut refuse = |field: &str, e: &dyn std::fmt::Display| {
        diags.push(at.error("unsafe-value", field, From::Entry, format!("{field} is not allowed: {e}")));
    };
    if let Some(p) = &entry.password {
        if p.is_empty() {
            refuse("password", &"it is empty");
        } else if let Err(e) = check::line_safe(p, check::MAX_TEXT) {
            refuse("password", &e);
        } else {
            diags.push(Diagnostic::warning(
                "plaintext-password",
                at.location(at.pos_of("password", From::Entry)),
                at.field_path("password", From::Entry),
                "plain-text password in a spec file: git keeps it forever. Use md5Cred \
                 (`asterisk-gitops hash-password EXTENSION PASSWORD`), passwordEnv or passwordFile",
            ));
        }
        return Some(Secret::Password(p.clone()));
    }
    if let Some(h) = &entry.md5_cred {
        if let Err(e) = check::md5_cred(h) {
            let code = if check::line_safe(h, 64).is_err() { "unsafe-value" } else { "invalid-value" };
            diags.push(at.error(code, "md5Cred", From::Entry, e));
        }
        return Some(Secret::Md5Cred(h.to_ascii_lowercase()));
    }
    if let Some(name) = &entry.password_env {
        if let Err(e) = check::env_name(name) {
            let code = if check::line_safe(name, 64).is_err() { "unsafe-value" } else { "invalid-value" };
            diags.push(at.error(code, "passwordEnv", From::Entry, e));
        } else if let Err(e) = super::policy::reserved_env(name) {
            diags.push(at.error("secret-not-allowed", "passwordEnv", From::Entry, e));
        }
        return Some(Secret::PasswordEnv(name.clone()));
    }
    let path = entry.password_file.as_deref().unwrap_or_default();
    if path.is_empty() {
        refuse("passwordFile", &"it is empty");
    } else if let Err(e) = check::line_safe(path, check::MAX_TEXT) {
        refuse("passwordFile", &e);
    } else if let Err(e) = super::policy::file_path(path) {
        diags.push(at.error("secret-not-allowed", "passwordFile", From::Entry, e));
    }
    Some(Secret::PasswordFile { dir: Default::default(), path: path.into() })
}

/// The operator's [`SecretPolicy`](super::SecretPolicy) for a resolved
/// extension: a `passwordEnv` outside the allowed pattern, a `passwordFile`
/// that leads out of the secrets directory. Errors at the field's place.
pub fn check_secret_policy(ext: &Extension, policy: &super::SecretPolicy, at: &Locator) -> Vec<Diagnostic> {
    let refused = match &ext.secret {
        Secret::PasswordEnv(name) => policy.check_env(name).err().map(|e| ("passwordEnv", e)),
        Secret::PasswordFile { path, .. } => policy.check_file(path).err().map(|e| ("passwordFile", e)),
        Secret::Password(_) | Secret::Md5Cred(_) => None,
    };
    refused.map(|(field, e)| at.error("secret-not-allowed", field, From::Entry, e)).into_iter().collect()
}
