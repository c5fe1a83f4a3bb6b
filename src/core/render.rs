//! Rendering the managed pjsip file from the desired set, with minijinja.
//!
//! Output is deterministic: extensions in number order, no timestamps, so
//! that "the content changed" means "the spec changed" and a no-op
//! reconcile writes nothing.
//!
//! Architecture invariant: nothing a spec says can open a new section. Two
//! guards stand behind validation: every `{{ value }}` passes through a
//! formatter that refuses line breaks, control characters, `[`, `]`, `;`
//! and `#`; and the finished text is checked line by line
//! ([`check_structure`]) before anyone may write it.

use crate::core::spec::{DesiredSet, Extension, check};
use crate::secret::{AuthCredential, SecretError, SecretSource};
use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::{Environment, Error as TemplateError, ErrorKind, UndefinedBehavior, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The template the renderer starts from.
pub const TEMPLATE_NAME: &str = "pjsip_gitops.conf.j2";
/// The built-in copy of `templates/pjsip_gitops.conf.j2`.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../templates/pjsip_gitops.conf.j2");

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot load templates from {dir}: {reason}")]
    Templates { dir: PathBuf, reason: String },
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// minijinja's error, with its template name, line and cause, as text.
    #[error("template error: {0}")]
    Template(String),
    #[error("rendered output line {line} is not a section header, a comment or `key = value`: refusing to write it")]
    Structure { line: usize },
    /// The template emits option names Asterisk does not know (see `catalogue`).
    #[error("{}", unknown_options_text(.0))]
    UnknownOptions(Vec<crate::core::diag::Diagnostic>),
}

fn unknown_options_text(d: &[crate::core::diag::Diagnostic]) -> String {
    let each: Vec<String> =
        d.iter().map(|d| format!("{}:{}: {}", d.location.file, d.location.line, d.message)).collect();
    format!("the managed file would set an option Asterisk does not know; nothing was rendered: {}", each.join("; "))
}

impl From<TemplateError> for RenderError {
    fn from(e: TemplateError) -> Self {
        RenderError::Template(format!("{e:#}"))
    }
}

/// What the header says about where the config came from.
#[derive(Clone, Debug, Default)]
pub struct SourceInfo {
    /// The spec directory, or the git URL and path.
    pub source: String,
    /// A git commit id, when the specs came from one.
    pub revision: Option<String>,
}

/// A minijinja environment holding the managed file's template.
pub struct Renderer {
    env: Environment<'static>,
    /// Some option name is computed by the template: check each output.
    check_output: bool,
    templates: Option<PathBuf>,
    /// The catalogue option names are checked against (the committed
    /// Asterisk 22 one, until the daemon learns its Asterisk's), and what the
    /// templates write that it does not know (then every render fails).
    catalogue: std::sync::RwLock<(Arc<crate::core::catalogue::Catalogue>, Vec<crate::core::diag::Diagnostic>)>,
}

/// The keys of an endpoint in the template (`spec::fields`, each field's `view`).
const VIEW_FIELDS: &[&str] = crate::core::spec::fields::VIEW_KEYS;

/// The `extensions` sequence the template iterates: the enabled extensions
/// of the set, each with its resolved credential. Handed to minijinja as a
/// lazy object whose items answer attribute lookups on demand: converting
/// 100k extensions into template values up front cost more time and memory
/// than the rendering itself.
#[derive(Debug)]
struct Endpoints {
    set: Arc<Vec<Arc<Extension>>>,
    /// (index into `set`, credential) for each enabled extension.
    items: Vec<(usize, AuthCredential)>,
}

/// Item `.1` of the sequence.
#[derive(Debug)]
struct Endpoint(Arc<Endpoints>, usize);

impl Object for Endpoints {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let i = key.as_usize()?;
        (i < self.items.len()).then(|| Value::from_object(Endpoint(self.clone(), i)))
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.items.len())
    }
}

impl Object for Endpoint {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let (index, credential) = self.0.items.get(self.1)?;
        let e = self.0.set.get(*index)?;
        let none = || Value::from(());
        let opt = |v: &Option<String>| v.as_deref().map_or(none(), Value::from);
        let flag = |v: Option<bool>| yes_no(v).map_or(none(), Value::from);
        Some(match key.as_str()? {
            "extension" => Value::from(e.extension.as_str()),
            "context" => Value::from(e.context.as_str()),
            "transport" => Value::from(e.transport.as_str()),
            "codecs" => Value::from_serialize(&e.codecs),
            "callerid" => e.effective_caller_id().map_or(none(), Value::from),
            "mailboxes" => Value::from_serialize(&e.mailboxes),
            "dtmf_mode" => opt(&e.dtmf_mode),
            "direct_media" => flag(e.direct_media),
            "rtp_symmetric" => flag(e.rtp_symmetric),
            "force_rport" => flag(e.force_rport),
            "rewrite_contact" => flag(e.rewrite_contact),
            "profile" => Value::from(e.profile.name()),
            // What the profile table says to write beyond the NAT flags.
            "webrtc" => e.profile.sets().iter().find(|(k, _)| *k == "webrtc").map_or(none(), |(_, v)| Value::from(*v)),
            "auth_type" => Value::from(match credential {
                AuthCredential::UserPass(_) => "userpass",
                AuthCredential::Md5(_) => "md5",
            }),
            "password" => match credential {
                AuthCredential::UserPass(p) => Value::from(p.as_str()),
                AuthCredential::Md5(_) => none(),
            },
            "md5_cred" => match credential {
                AuthCredential::Md5(h) => Value::from(h.as_str()),
                AuthCredential::UserPass(_) => none(),
            },
            "max_contacts" => Value::from(e.max_contacts),
            "qualify_frequency" => Value::from(e.qualify_frequency),
            // Extra options as [name, value] pairs, in name order.
            "endpoint_options" => Value::from_serialize(&e.options.endpoint),
            "aor_options" => Value::from_serialize(&e.options.aor),
            "auth_options" => Value::from_serialize(&e.options.auth),
            _ => return None,
        })
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(VIEW_FIELDS)
    }
}

fn yes_no(v: Option<bool>) -> Option<&'static str> {
    v.map(|b| if b { "yes" } else { "no" })
}

impl Renderer {
    /// The built-in template, or `pjsip_gitops.conf.j2` from `templates`
    /// (which may `{% include %}` or `{% extends %}` other files there).
    pub fn new(templates: Option<&Path>) -> Result<Self, RenderError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_formatter(|out, state, value| {
            if let Some(s) = value.as_str() {
                check::line_safe(s, usize::MAX).map_err(|reason| {
                    TemplateError::new(
                        ErrorKind::InvalidOperation,
                        format!("refusing to write an unsafe value: {reason}"),
                    )
                })?;
            }
            minijinja::escape_formatter(out, state, value)
        });
        match templates {
            None => env.add_template(TEMPLATE_NAME, DEFAULT_TEMPLATE)?,
            Some(dir) => {
                let path = dir.join(TEMPLATE_NAME);
                if !path.is_file() {
                    return Err(RenderError::Templates {
                        dir: dir.to_path_buf(),
                        reason: format!("{} not found", path.display()),
                    });
                }
                env.set_loader(minijinja::path_loader(dir));
                // Load now, so a broken template is reported at start-up, not at the first reconcile.
                env.get_template(TEMPLATE_NAME)
                    .map_err(|e| RenderError::Templates { dir: dir.to_path_buf(), reason: format!("{e:#}") })?;
            }
        }
        // Every option name the template writes must be one Asterisk knows.
        let committed = crate::core::catalogue::Catalogue::asterisk22();
        let (unknown, check_output) = check_templates(templates, &committed);
        if !unknown.is_empty() {
            return Err(RenderError::UnknownOptions(unknown));
        }
        Ok(Renderer {
            env,
            check_output,
            templates: templates.map(Path::to_path_buf),
            catalogue: std::sync::RwLock::new((committed, Vec::new())),
        })
    }

    /// Checks option names against `catalogue` from now on (the one the
    /// daemon learnt from its Asterisk). Returns what the templates write
    /// that it does not know: while that is not empty, every render fails
    /// with it, so nothing Asterisk would refuse is written.
    pub fn use_catalogue(
        &self,
        catalogue: Arc<crate::core::catalogue::Catalogue>,
    ) -> Vec<crate::core::diag::Diagnostic> {
        let (unknown, _) = check_templates(self.templates.as_deref(), &catalogue);
        let mut slot = self.catalogue.write().unwrap_or_else(|p| p.into_inner());
        *slot = (catalogue, unknown.clone());
        unknown
    }

    /// Renders the managed file for every enabled extension of `set`.
    pub fn render(
        &self,
        set: &DesiredSet,
        info: &SourceInfo,
        secrets: &dyn SecretSource,
    ) -> Result<String, RenderError> {
        let catalogue = {
            let slot = self.catalogue.read().unwrap_or_else(|p| p.into_inner());
            if !slot.1.is_empty() {
                return Err(RenderError::UnknownOptions(slot.1.clone()));
            }
            slot.0.clone()
        };
        let unknown = unknown_extra_options(set, &catalogue);
        if !unknown.is_empty() {
            return Err(RenderError::UnknownOptions(unknown));
        }
        let mut items = Vec::with_capacity(set.extensions.len());
        for (i, ext) in set.extensions.iter().enumerate().filter(|(_, e)| e.enabled) {
            items.push((i, credential(ext, secrets)?));
        }
        let count = items.len();
        let views = Value::from_object(Endpoints { set: set.extensions.clone(), items });
        let template = self.env.get_template(TEMPLATE_NAME)?;
        let ctx = minijinja::context! {
            source => info.source.as_str(),
            revision => info.revision.as_deref().unwrap_or(""),
            extensions => views,
        };
        // Sized up front: growing a 40 MB string by doubling would need 1.5× its size at the peak.
        let mut out = Vec::with_capacity(512 + count * 400);
        template.render_captured_to(ctx, &mut out)?;
        let text = String::from_utf8(out).map_err(|_| RenderError::Template("output is not UTF-8".into()))?;
        check_structure(&text)?;
        if self.check_output {
            let unknown = crate::core::catalogue::check_rendered(&text, &catalogue);
            if !unknown.is_empty() {
                return Err(RenderError::UnknownOptions(unknown));
            }
        }
        Ok(text)
    }
}

/// An extension's credential, as its auth section gets it: resolved by
/// `secret`, then refused if a password could break out of its line.
pub fn credential(ext: &Extension, secrets: &dyn SecretSource) -> Result<AuthCredential, SecretError> {
    let credential = crate::secret::credential(ext, secrets)?;
    if let AuthCredential::UserPass(password) = &credential {
        // The value is never part of the error: only why it is refused.
        check::line_safe(password, check::MAX_TEXT).map_err(|reason| SecretError::Unsafe {
            extension: ext.extension.clone(),
            origin: crate::secret::origin(&ext.secret),
            reason: crate::secret::redact_reason(&reason.to_string()),
        })?;
    }
    Ok(credential)
}

/// Checks every template file the renderer may use against `catalogue`:
/// the built-in one, or every `*.j2` in `dir` (the main template may
/// include or extend the others). Returns the problems (file:line, the
/// option) and whether some option name is computed, so the rendered
/// output must be checked too.
pub fn check_templates(
    dir: Option<&Path>,
    catalogue: &crate::core::catalogue::Catalogue,
) -> (Vec<crate::core::diag::Diagnostic>, bool) {
    let mut files: Vec<(String, String)> = Vec::new();
    match dir {
        None => files.push(("templates/pjsip_gitops.conf.j2 (built in)".into(), DEFAULT_TEMPLATE.into())),
        Some(dir) => {
            let mut paths: Vec<_> = std::fs::read_dir(dir)
                .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            paths.retain(|p| p.extension().is_some_and(|e| e == "j2"));
            paths.sort();
            for p in paths {
                if let Ok(text) = std::fs::read_to_string(&p) {
                    files.push((p.display().to_string(), text));
                }
            }
        }
    }
    crate::core::catalogue::check_template_files(&files, catalogue)
}

/// The `options` of enabled extensions that `catalogue` (the one learnt
/// from the Asterisk the daemon talks to) does not know, at the entry that
/// sets them. The loader checked them against the committed catalogue.
fn unknown_extra_options(
    set: &DesiredSet,
    catalogue: &crate::core::catalogue::Catalogue,
) -> Vec<crate::core::diag::Diagnostic> {
    let mut out = Vec::new();
    for e in set.extensions.iter().filter(|e| e.enabled && !e.options.is_empty()) {
        for (kind, name, _) in e.options.iter() {
            if catalogue.knows(kind, name) == Some(false) {
                out.push(crate::core::diag::Diagnostic::error(
                    "unknown-option",
                    crate::core::diag::Location { file: e.origin.file.clone(), line: e.origin.line, column: 1 },
                    format!("options.{kind}.{name}"),
                    format!(
                        "extension {}: `{name}` is not an option the Asterisk this daemon talks to knows for an {kind} (its learnt catalogue); Asterisk would refuse the whole object",
                        e.extension
                    ),
                ));
            }
        }
    }
    out
}

/// What one line of a pjsip config file is.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Blank,
    Comment,
    /// `[name]`, optionally followed by a template marker `(!)` or `(name)`.
    Section(&'a str),
    /// `key = value` (spaces around `=` optional).
    Option(&'a str, &'a str),
}

/// Classifies one line; `None` for anything else (a directive, a stray
/// value, a broken header).
pub fn classify(line: &str) -> Option<Line<'_>> {
    let t = line.trim_ascii();
    if t.is_empty() {
        return Some(Line::Blank);
    }
    if t.starts_with(';') {
        return Some(Line::Comment);
    }
    if let Some(rest) = t.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        let after = after.trim();
        let template_ok =
            after.is_empty() || (after.starts_with('(') && after.ends_with(')') && !after[1..].contains('('));
        let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-+".contains(&b));
        return (template_ok && name_ok).then_some(Line::Section(name));
    }
    let (key, value) = t.split_once('=')?;
    let key = key.trim_ascii();
    let key = key.strip_suffix('>').unwrap_or(key).trim_ascii();
    let key_ok = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let value = value.trim_ascii();
    let value_ok = check::line_safe(value, usize::MAX).is_ok();
    (key_ok && value_ok).then_some(Line::Option(key, value))
}

/// Every line must be blank, a comment, a section header or one `key = value`.
pub fn check_structure(text: &str) -> Result<(), RenderError> {
    match text.lines().position(|l| classify(l).is_none()) {
        Some(i) => Err(RenderError::Structure { line: i + 1 }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_answers_every_view_key_of_the_field_table() {
        let (exts, diags) = crate::core::spec::load::load_for_test(
            "t.yaml",
            "extensions:\n  - {extension: \"1\", context: c, transport: t, codecs: ulaw, md5Cred: 0123456789abcdef0123456789abcdef}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let md5 = AuthCredential::Md5("0123456789abcdef0123456789abcdef".into());
        let endpoint = Arc::new(Endpoint(
            Arc::new(Endpoints { set: Arc::new(exts.into_iter().map(Arc::new).collect()), items: vec![(0, md5)] }),
            0,
        ));
        for key in VIEW_FIELDS {
            assert!(endpoint.get_value(&Value::from(*key)).is_some(), "the view has no {key}");
        }
        assert!(endpoint.get_value(&Value::from("no_such_key")).is_none());
    }

    #[test]
    fn options_merge_over_defaults_option_by_option_and_render_after_the_named_fields() {
        let (exts, diags) = crate::core::spec::load::load_for_test(
            "o.yaml",
            &format!(
                "{}  options:\n    endpoint: {{timers: required, language: en}}\n    aor: {{minimum_expiration: 120}}\nextensions:\n  - extension: \"1001\"\n    md5Cred: 0123456789abcdef0123456789abcdef\n    options:\n      endpoint: {{language: fr, send_pai: true}}\n      auth: {{realm: example.com}}\n",
                "defaults:\n  context: c\n  transport: t\n  codecs: [ulaw]\n"
            ),
        );
        assert!(diags.is_empty(), "{diags:?}");
        let o = &exts[0].options;
        assert_eq!(o.endpoint.get("language").map(String::as_str), Some("fr"), "the entry's own wins");
        assert_eq!(o.endpoint.get("timers").map(String::as_str), Some("required"));
        assert_eq!(o.endpoint.get("send_pai").map(String::as_str), Some("yes"), "YAML true is written yes");
        assert_eq!(o.aor.get("minimum_expiration").map(String::as_str), Some("120"));
        let text = Renderer::new(None)
            .expect("renderer")
            .render(&crate::core::spec::DesiredSet::new(exts), &Default::default(), &crate::secret::ProcessSecrets)
            .expect("renders");
        let endpoint = text.split("type = auth").next().expect("an endpoint section");
        assert!(
            endpoint.contains("webrtc")
                || endpoint.contains("rewrite_contact = yes\nlanguage = fr\nsend_pai = yes\ntimers = required\n"),
            "{text}"
        );
        assert!(text.contains("md5_cred = 0123456789abcdef0123456789abcdef\nrealm = example.com\n"), "{text}");
        assert!(text.contains("qualify_frequency = 60\nminimum_expiration = 120\n"), "{text}");
    }

    #[test]
    fn the_built_in_template_uses_only_known_options() {
        let (diags, dynamic) = check_templates(None, &crate::core::catalogue::Catalogue::asterisk22());
        assert!(diags.is_empty(), "{diags:?}");
        assert!(dynamic, "the spec's `options` are written by name: the output is checked as well");
    }

    #[test]
    fn a_learnt_catalogue_that_lacks_an_option_the_template_writes_stops_every_render() {
        let r = Renderer::new(None).expect("the built-in template");
        let set = DesiredSet::default();
        let secrets = crate::secret::ProcessSecrets;
        assert!(r.render(&set, &SourceInfo::default(), &secrets).is_ok());
        let without: String = crate::core::catalogue::ASTERISK_22
            .lines()
            .filter(|l| *l != "rewrite_contact")
            .map(|l| format!("{l}\n"))
            .collect();
        let unknown = r.use_catalogue(Arc::new(crate::core::catalogue::Catalogue::parse(&without)));
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert_eq!(unknown[0].field, "rewrite_contact");
        let err = r.render(&set, &SourceInfo::default(), &secrets).expect_err("refused");
        assert!(err.to_string().contains("rewrite_contact"), "{err}");
        assert!(
            r.use_catalogue(Arc::new(crate::core::catalogue::Catalogue::parse(crate::core::catalogue::ASTERISK_22)))
                .is_empty()
        );
        assert!(r.render(&set, &SourceInfo::default(), &secrets).is_ok(), "a catalogue that knows it lets it through");
    }

    #[test]
    fn an_option_the_learnt_catalogue_lacks_stops_the_render_naming_the_entry() {
        let policy = crate::core::spec::SecretPolicy::for_spec_dir(Path::new("."));
        let yaml = "extensions:\n  - extension: \"1001\"\n    context: c\n    transport: t\n    codecs: ulaw\n    md5Cred: 0123456789abcdef0123456789abcdef\n    options: {endpoint: {timers: required}}\n";
        let (exts, diags) = crate::core::spec::load::load_file("team.yaml", &policy, yaml);
        assert!(diags.is_empty(), "{diags:?}");
        let set = DesiredSet::new(exts.into_iter().map(|(e, _)| e).collect());
        let r = Renderer::new(None).expect("renderer");
        let secrets = crate::secret::ProcessSecrets;
        assert!(r.render(&set, &SourceInfo::default(), &secrets).expect("renders").contains("timers = required\n"));
        let without: String =
            crate::core::catalogue::ASTERISK_22.lines().filter(|l| *l != "timers").map(|l| format!("{l}\n")).collect();
        assert!(r.use_catalogue(Arc::new(crate::core::catalogue::Catalogue::parse(&without))).is_empty());
        let err = r.render(&set, &SourceInfo::default(), &secrets).expect_err("refused").to_string();
        assert!(err.contains("team.yaml:2") && err.contains("timers"), "{err}");
    }

    #[test]
    fn classify_accepts_pjsip_lines_and_nothing_else() {
        assert_eq!(classify("[1001]"), Some(Line::Section("1001")));
        assert_eq!(classify("[tpl](!)"), Some(Line::Section("tpl")));
        assert_eq!(classify("allow = ulaw,alaw"), Some(Line::Option("allow", "ulaw,alaw")));
        assert_eq!(classify("callerid = \"Test User\" <1001>"), Some(Line::Option("callerid", "\"Test User\" <1001>")));
        assert_eq!(classify("; comment"), Some(Line::Comment));
        assert_eq!(classify(""), Some(Line::Blank));
        assert_eq!(classify("#include other.conf"), None);
        assert_eq!(classify("just words"), None);
        assert_eq!(classify("[1001] trailing"), None);
        assert_eq!(classify("password = a;b"), None);
    }

    #[test]
    fn the_formatter_refuses_unsafe_values_even_without_validation() {
        let r = Renderer::new(None).expect("built-in template");
        let tmpl = r.env.template_from_str("x = {{ v }}").expect("compiles");
        let err = tmpl.render(minijinja::context! { v => "a\n[evil]" }).expect_err("refused");
        assert!(err.to_string().contains("unsafe value"), "{err}");
        assert_eq!(tmpl.render(minijinja::context! { v => "fine" }).expect("renders"), "x = fine");
    }
}
