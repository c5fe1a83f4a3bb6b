//! Entry points for the fuzzers (`fuzz/`, run by `scripts/fuzz.sh`) and for
//! the test that replays their committed corpus (`tests/fuzz_corpus.rs`).
//!
//! Each takes arbitrary bytes, hands them to one parser of outside data the
//! way the daemon does, and checks a property of the outcome. It returns
//! normally for any input the code handles correctly — refusing it is
//! fine — and panics only when something is wrong: the parser panicked, or
//! the property does not hold. Not part of the daemon's API.

use crate::asterisk::{ami, ari};
use crate::core::render::{Renderer, SourceInfo};
use crate::core::spec::SecretPolicy;
use crate::secret::SecretSource;
use std::path::{Path, PathBuf};

/// One target: bytes in; returns, or panics on a finding.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/` and the corpus directories call them.
pub const TARGETS: &[(&str, Target)] = &[("spec", spec), ("ami", ami), ("ari_event", ari_event), ("webhook", webhook)];

/// Secrets for rendering a fuzzed spec: every variable and file holds a
/// fixed, line-safe password; nothing is read from the machine.
struct FixedSecrets;

impl SecretSource for FixedSecrets {
    fn env(&self, _name: &str) -> Option<String> {
        Some("fuzz-password".into())
    }
    fn file(&self, _dir: &Path, _path: &Path) -> std::io::Result<String> {
        Ok("fuzz-password\n".into())
    }
}

fn renderer() -> &'static Renderer {
    static RENDERER: std::sync::OnceLock<Renderer> = std::sync::OnceLock::new();
    RENDERER.get_or_init(|| match Renderer::new(None) {
        Ok(r) => r,
        Err(e) => panic!("the built-in template does not load: {e}"),
    })
}

/// The spec loader: one file's bytes (as read from a directory or a git
/// tree) → load, resolve, diagnostics. Properties: every diagnostic names
/// the file and a line from 1; a file with an error contributes no
/// extension; loading is deterministic; an accepted file renders, and
/// renders the same text again.
pub fn spec(data: &[u8]) {
    // A secrets directory that does not exist: `passwordFile` is checked by
    // the static rules only, and nothing on the machine is touched.
    let policy =
        SecretPolicy { dir: PathBuf::from("/nonexistent/asterisk-gitops-fuzz/secrets"), env_pattern: "EXT_*".into() };
    let source = || ("fuzz.yaml".to_string(), PathBuf::from("fuzz.yaml"), Ok(data.to_vec()));
    let loaded = crate::core::spec::load::load_sources([source()], &policy);
    for d in &loaded.diagnostics {
        assert_eq!(d.location.file, "fuzz.yaml", "a diagnostic names another file: {d:?}");
        assert!(d.location.line >= 1 && d.location.column >= 1, "a diagnostic without a place: {d:?}");
        assert!(!d.message.is_empty(), "a diagnostic without a message: {d:?}");
    }
    if loaded.has_errors() {
        assert!(loaded.set.extensions.is_empty(), "a file with errors contributed extensions");
        return;
    }
    let again = crate::core::spec::load::load_sources([source()], &policy);
    assert_eq!(again.set, loaded.set, "loading the same bytes twice differs");
    assert_eq!(again.diagnostics, loaded.diagnostics, "loading the same bytes twice differs");
    let info = SourceInfo { source: "fuzz".into(), revision: None };
    let first = renderer().render(&loaded.set, &info, &FixedSecrets);
    let second = renderer().render(&again.set, &info, &FixedSecrets);
    match (first, second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "rendering is not deterministic"),
        (Err(e), _) | (_, Err(e)) => panic!("a spec that validates does not render: {e}"),
    }
}

/// The AMI framing and message parsing, on bytes as they come from the
/// socket. Properties: the same bytes framed whole, byte by byte, or split
/// anywhere give the same messages and the same outcome; every message
/// round-trips (`to_wire`, framed again, is the same message).
pub fn ami(data: &[u8]) {
    let frame = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut framer = ami::Framer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            if let Err(e) = framer.feed(chunk, &mut out) {
                return (out, Some(e));
            }
        }
        (out, None)
    };
    let whole = frame(&mut std::iter::once(data));
    // Where to split is read from the input, so the fuzzer explores it.
    let at = data.first().map_or(0, |b| usize::from(*b) * data.len() / 256);
    let (a, b) = data.split_at(at);
    let split = frame(&mut [a, b].into_iter());
    assert_eq!(whole, split, "framing depends on where the reads split (at {at})");
    if data.len() <= 4096 {
        let bytewise = frame(&mut data.chunks(1));
        assert_eq!(whole, bytewise, "framing depends on where the reads split (byte by byte)");
    }
    for msg in &whole.0 {
        assert!(!msg.fields.is_empty(), "an empty message was framed");
        let wire = msg.to_wire();
        let (again, err) = frame(&mut std::iter::once(wire.as_bytes()));
        assert_eq!(err, None, "a framed message does not frame again");
        assert_eq!(again.as_slice(), std::slice::from_ref(msg), "a message does not round-trip");
    }
    // A whole captured session (banner first), as the tests read them.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ami::parse_session(text);
    }
}

/// The ARI event parser, on one WebSocket text frame (text frames are
/// UTF-8; other bytes never reach it). Properties: parsing is
/// deterministic; a call event carries its channel; its timestamp parses
/// or is refused without a panic.
pub fn ari_event(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = ari::Event::parse(text);
    let again = ari::Event::parse(text);
    match (&parsed, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "parsing the same frame twice differs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "parsing the same frame twice differs"),
        _ => panic!("parsing the same frame twice differs"),
    }
    if let Ok(event) = parsed {
        match &event {
            ari::Event::Other { .. } => assert!(event.channel().is_none()),
            ari::Event::StasisStart { timestamp, .. }
            | ari::Event::StasisEnd { timestamp, .. }
            | ari::Event::ChannelStateChange { timestamp, .. }
            | ari::Event::ChannelHangupRequest { timestamp, .. }
            | ari::Event::ChannelDestroyed { timestamp, .. } => {
                let channel = event.channel().expect("a call event has its channel");
                let _ = ari::parse_time(timestamp);
                let _ = ari::parse_time(&channel.creationtime);
            }
        }
    }
}

/// The secret the webhook target checks signatures against.
pub const WEBHOOK_SECRET: &[u8] = b"fuzz-webhook-secret";

/// The webhook verifier, on a request: header lines (`Name: value`), an
/// empty line, then the body. Properties: a request is accepted only with
/// the right signature or token for [`WEBHOOK_SECRET`] (checked here
/// independently of the verifier); the right GitHub signature for the body
/// is always accepted and a wrong secret never; the pushed branch is read
/// only from a verified body and never panics.
pub fn webhook(data: &[u8]) {
    let (head, body) = split_request(data);
    let headers: Vec<(String, String)> = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let lookup = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let right_hmac = |hex_sig: &str| hex::decode(hex_sig.trim()).is_ok_and(|sig| sig == hmac(body, WEBHOOK_SECRET));
    match crate::http::webhook::verify(&lookup, body, WEBHOOK_SECRET) {
        Ok(forge) => {
            let genuine = match forge {
                crate::http::webhook::Forge::GitHub => {
                    lookup("x-hub-signature-256").and_then(|s| s.strip_prefix("sha256=").map(right_hmac)) == Some(true)
                }
                crate::http::webhook::Forge::Gitea => {
                    lookup("x-hub-signature-256").is_none()
                        && lookup("x-gitea-signature").is_some_and(|s| right_hmac(&s))
                }
                crate::http::webhook::Forge::GitLab => {
                    lookup("x-hub-signature-256").is_none()
                        && lookup("x-gitea-signature").is_none()
                        && lookup("x-gitlab-token").is_some_and(|t| t.as_bytes() == WEBHOOK_SECRET)
                }
            };
            assert!(genuine, "accepted a request without the right signature ({forge:?})");
            let _ = crate::http::webhook::pushed_branch(body);
        }
        Err(_) => {
            let _ = crate::http::webhook::pushed_branch(body);
        }
    }
    let good = crate::http::webhook::github_signature(body, WEBHOOK_SECRET);
    let signed = |name: &str| if name == "x-hub-signature-256" { Some(good.clone()) } else { None };
    assert_eq!(
        crate::http::webhook::verify(&signed, body, WEBHOOK_SECRET),
        Ok(crate::http::webhook::Forge::GitHub),
        "the right signature was refused"
    );
    assert!(
        crate::http::webhook::verify(&signed, body, b"another-secret").is_err(),
        "a signature for another secret passed"
    );
}

/// Headers and body of a fuzzed request: split at the first empty line
/// (`\n\n` or `\r\n\r\n`); no empty line, no headers.
fn split_request(data: &[u8]) -> (&[u8], &[u8]) {
    for (i, w) in data.windows(2).enumerate() {
        if w == b"\n\n" {
            return (&data[..i], &data[i + 2..]);
        }
        if w == b"\r\n" && data.get(i + 2..i + 4) == Some(b"\r\n") {
            return (&data[..i], &data[i + 4..]);
        }
    }
    (&[], data)
}

fn hmac(body: &[u8], secret: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}
