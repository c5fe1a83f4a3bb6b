//! The JSON API's write side and the webhook, called through the router
//! with `oneshot` (no socket), against real spec files on disk.

use asterisk_gitops::config::SecretString;
use asterisk_gitops::git::writeback::{Author, Target, WriteBack};
use asterisk_gitops::http::{AppState, TokenEntry, app};
use asterisk_gitops::reconcile::LoopHandle;
use asterisk_gitops::reconcile::Trigger;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

const TOKEN: &str = "test-admin-token-0123456789";
const SEED_BODY: &str = r#"{"extension":"1001","password":"Soundz2025","displayName":"Test User","context":"from-internal","transport":"transport-udp","codecs":"ulaw,alaw,g729"}"#;

fn state(dir: &Path) -> (AppState, tokio::sync::mpsc::Receiver<Trigger>) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let handle = LoopHandle { triggers: tx, last: Default::default(), failures: Default::default() };
    let admin = Author { name: "admin".into(), email: "admin@asterisk-gitops".into() };
    let state = AppState {
        spec_dir: dir.to_path_buf(),
        writeback: Arc::new(WriteBack::new(
            Target::Dir(dir.to_path_buf()),
            asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(dir),
        )),
        realm: "asterisk".into(),
        tokens: Arc::new(vec![TokenEntry::new(admin, TOKEN)]),
        webhook_secret: Some(SecretString::new("hook-secret")),
        branch: Some("main".into()),
        reconcile: Some(handle),
        read_only: false,
        anonymous_read: true,
        live: Default::default(),
    };
    (state, rx)
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Body::from(body.unwrap_or("").to_string())).expect("request");
    let resp = app(state.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())))
}

fn dir_snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("ls")
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap_or_default()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn the_seeds_exact_post_body_creates_the_extension_with_a_hashed_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, mut rx) = state(dir.path());
    let (status, body) = call(&state, "POST", "/extensions", Some(SEED_BODY), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["extension"]["extension"], "1001");
    assert_eq!(body["extension"]["codecs"], json!(["ulaw", "alaw", "g729"]));
    assert_eq!(body["extension"]["secret"], "md5Cred");
    let text = std::fs::read_to_string(dir.path().join("1001.yaml")).expect("file written");
    assert!(
        text.contains(&format!("md5Cred: {}", asterisk_gitops::secret::md5_cred("1001", "asterisk", "Soundz2025"))),
        "{text}"
    );
    assert!(!text.contains("Soundz2025") && !body.to_string().contains("Soundz2025"));
    assert!(
        !body.to_string().contains(&asterisk_gitops::secret::md5_cred("1001", "asterisk", "Soundz2025")),
        "no hash in responses"
    );
    assert_eq!(rx.try_recv().ok(), Some(Trigger::Manual), "a reconcile is requested");
    let loaded = asterisk_gitops::reconcile::load_dir(dir.path());
    assert!(loaded.diagnostics.iter().all(|d| !d.is_error()), "{:?}", loaded.diagnostics);
    assert_eq!(loaded.set.get("1001").map(|e| e.display_name.clone()), Some(Some("Test User".into())));
}

#[tokio::test]
async fn writes_need_a_valid_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, _rx) = state(dir.path());
    assert_eq!(call(&state, "POST", "/extensions", Some(SEED_BODY), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&state, "POST", "/extensions", Some(SEED_BODY), Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
    let mut no_tokens = state.clone();
    no_tokens.tokens = Arc::new(Vec::new());
    let (status, body) = call(&no_tokens, "POST", "/extensions", Some(SEED_BODY), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(dir_snapshot(dir.path()).is_empty(), "nothing written");
}

#[tokio::test]
async fn bad_requests_get_field_details_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, _rx) = state(dir.path());
    assert_eq!(call(&state, "POST", "/extensions", Some(SEED_BODY), Some(TOKEN)).await.0, StatusCode::CREATED);
    let before = dir_snapshot(dir.path());

    let (status, body) =
        call(&state, "POST", "/extensions", Some("{\"extension\": \"1002\",\n \"password\": "), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "bad-request");
    assert_eq!(body["details"][0]["line"], 2, "{body}");

    let unknown = SEED_BODY.replace("\"displayName\"", "\"displayname\"").replace("1001", "1002");
    let (status, body) = call(&state, "POST", "/extensions", Some(&unknown), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"][0]["field"], "displayname");
    assert!(body["details"][0]["message"].as_str().is_some_and(|m| m.contains("displayName")), "{body}");

    let (status, body) = call(&state, "POST", "/extensions", Some(SEED_BODY), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let bad_codec = SEED_BODY.replace("g729", "g7299").replace("1001", "1003");
    let (status, body) = call(&state, "POST", "/extensions", Some(&bad_codec), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"][0]["field"], "codecs", "{body}");

    let wrong_type = SEED_BODY.replace("\"Test User\"", "42").replace("1001", "1004");
    let (status, body) = call(&state, "POST", "/extensions", Some(&wrong_type), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"][0]["field"], "displayName", "{body}");

    let secret_type = SEED_BODY.replace("\"Soundz2025\"", "12345678").replace("1001", "1005");
    let (_, body) = call(&state, "POST", "/extensions", Some(&secret_type), Some(TOKEN)).await;
    assert!(!body.to_string().contains("12345678"), "a secret is never echoed: {body}");

    assert_eq!(dir_snapshot(dir.path()), before);
}

#[tokio::test]
async fn put_changes_only_the_given_fields_and_leaves_a_hand_written_file_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hand = "# Sales (by hand)\ndefaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n  # boss\n  - extension: \"1001\"\n    displayName: Boss\n    md5Cred: 0123456789abcdef0123456789abcdef\n  # intern\n  - extension: \"1002\"\n    displayName: Intern\n    md5Cred: 0123456789abcdef0123456789abcdef\n    maxContacts: 2\n";
    std::fs::write(dir.path().join("sales.yaml"), hand).expect("write");
    let (state, _rx) = state(dir.path());
    let (status, body) = call(
        &state,
        "PUT",
        "/extensions/1002",
        Some(r#"{"displayName":"Junior","password":"New-Pass-1"}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = std::fs::read_to_string(dir.path().join("sales.yaml")).expect("read");
    assert!(text.starts_with("# Sales (by hand)\ndefaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n  # boss\n  - extension: \"1001\"\n    displayName: Boss\n    md5Cred: 0123456789abcdef0123456789abcdef\n  # intern\n"), "{text}");
    let loaded = asterisk_gitops::reconcile::load_dir(dir.path());
    let e = loaded.set.get("1002").expect("still there");
    assert_eq!(e.display_name.as_deref(), Some("Junior"));
    assert_eq!(e.max_contacts, 2, "absent fields keep their value");
    assert_eq!(
        e.secret,
        asterisk_gitops::core::spec::Secret::Md5Cred(asterisk_gitops::secret::md5_cred(
            "1002",
            "asterisk",
            "New-Pass-1"
        ))
    );
    assert!(!text.contains("New-Pass-1"));

    let (status, _) = call(&state, "PUT", "/extensions/1002", Some(r#"{"extension":"2002"}"#), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no renumbering");
    let (status, _) = call(&state, "PUT", "/extensions/9999", Some(r#"{"displayName":"X"}"#), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_removes_and_then_404s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, _rx) = state(dir.path());
    call(&state, "POST", "/extensions", Some(SEED_BODY), Some(TOKEN)).await;
    let (status, body) = call(&state, "DELETE", "/extensions/1001", None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(dir_snapshot(dir.path()).is_empty());
    assert_eq!(call(&state, "DELETE", "/extensions/1001", None, Some(TOKEN)).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn webhooks_must_be_signed_and_only_the_tracked_branch_triggers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, mut rx) = state(dir.path());
    let push = br#"{"ref":"refs/heads/main","after":"0123"}"#;
    let send = |sig: Option<String>, body: &'static [u8]| {
        let state = state.clone();
        async move {
            let mut req = Request::builder().method("POST").uri("/hooks/git");
            if let Some(s) = sig {
                req = req.header("X-Hub-Signature-256", s);
            }
            app(state).oneshot(req.body(Body::from(body)).expect("req")).await.expect("resp").status()
        }
    };
    assert_eq!(send(None, push).await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(Some("sha256=00".into()), push).await, StatusCode::UNAUTHORIZED);
    assert!(rx.try_recv().is_err(), "nothing triggered");
    let sig = asterisk_gitops::http::webhook::github_signature(push, b"hook-secret");
    assert_eq!(send(Some(sig), push).await, StatusCode::ACCEPTED);
    assert_eq!(rx.try_recv().ok(), Some(Trigger::Webhook));
    let other = br#"{"ref":"refs/heads/feature"}"#;
    let sig = asterisk_gitops::http::webhook::github_signature(other, b"hook-secret");
    assert_eq!(send(Some(sig), other).await, StatusCode::OK);
    assert!(rx.try_recv().is_err(), "another branch triggers nothing");
}

/// Every path a write could be sent to: the OpenAPI document's (kept in
/// step with the JSON routes by `the_openapi_document_matches_the_routes`)
/// and every route the UI's source registers.
fn every_route() -> Vec<String> {
    let doc: Value = serde_json::from_str(asterisk_gitops::http::read::OPENAPI).expect("valid JSON");
    let mut paths: std::collections::BTreeSet<String> =
        doc["paths"].as_object().expect("paths").keys().cloned().collect();
    let ui = std::fs::read_to_string(crate::support::repo_root().join("src/http/ui.rs")).expect("source");
    for part in ui.split(".route(\"").skip(1) {
        paths.insert(part.split('"').next().expect("a path").to_string());
    }
    assert!(paths.contains("/ui/extensions") && paths.contains("/ui/extensions/{id}/delete"), "{paths:?}");
    paths.into_iter().map(|p| p.replace("{id}", "1001")).collect()
}

/// `--read-only`: no route accepts a POST, PUT, DELETE or PATCH, with or
/// without a token, a session cookie or a CSRF field; nothing changes on
/// disk and no reconcile is asked for. Sign-in is the one form that stays
/// when reading needs a session (anonymousRead off): it writes nothing.
#[tokio::test]
async fn read_only_mode_accepts_no_write_on_any_route_signed_in_or_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("1001.yaml"),
        "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n  - extension: \"1001\"\n    md5Cred: 0123456789abcdef0123456789abcdef\n",
    )
    .expect("write");
    let before = dir_snapshot(dir.path());
    for anonymous_read in [true, false] {
        let (mut state, mut rx) = state(dir.path());
        state.read_only = true;
        state.anonymous_read = anonymous_read;
        // Signed in where sign-in exists (reads need it), so the session is a real one.
        let cookie = if anonymous_read {
            assert_eq!(form(&state, "GET", "/ui/signin", "", None).await.0, StatusCode::NOT_FOUND);
            None
        } else {
            let (status, headers) = sign_in(&state, TOKEN).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "sign-in works for reading");
            headers.get("set-cookie").and_then(|v| v.to_str().ok()).and_then(|c| c.split(';').next()).map(String::from)
        };
        for path in every_route() {
            if !anonymous_read && (path == "/ui/signin" || path == "/ui/signout") {
                continue;
            }
            for method in ["POST", "PUT", "DELETE", "PATCH"] {
                for signed_in in [false, true] {
                    let mut req = Request::builder()
                        .method(method)
                        .uri(&path)
                        .header("content-type", "application/x-www-form-urlencoded");
                    if signed_in {
                        req = req.header("authorization", format!("Bearer {TOKEN}"));
                        if let Some(c) = &cookie {
                            req = req.header("cookie", c.as_str());
                        }
                    }
                    let body = "extension=1001&displayName=X&context=c&transport=t&codecs=ulaw&csrf=x&token=t";
                    let resp = app(state.clone()).oneshot(req.body(Body::from(body)).expect("request")).await;
                    let status = resp.expect("response").status();
                    assert!(
                        [StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED, StatusCode::FORBIDDEN]
                            .contains(&status),
                        "{method} {path} (signed in: {signed_in}, anonymousRead: {anonymous_read}) answered {status}"
                    );
                }
            }
        }
        assert_eq!(dir_snapshot(dir.path()), before, "nothing changed on disk");
        assert!(rx.try_recv().is_err(), "no reconcile was asked for");
    }
}

/// A form request through the router: (status, headers, body).
async fn form(
    state: &AppState,
    method: &str,
    uri: &str,
    body: &str,
    cookie: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req =
        Request::builder().method(method).uri(uri).header("content-type", "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp =
        app(state.clone()).oneshot(req.body(Body::from(body.to_string())).expect("request")).await.expect("response");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// Signs in through the form as a browser would: the form page first (its
/// double-submit cookie and field), then the post. Returns (status, headers).
async fn sign_in(state: &AppState, token: &str) -> (StatusCode, axum::http::HeaderMap) {
    let (_, headers, page) = form(state, "GET", "/ui/signin", "", None).await;
    let pre = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a form cookie");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("a csrf field");
    let (status, headers, _) =
        form(state, "POST", "/ui/signin", &format!("token={token}&csrf={csrf}"), Some(pre)).await;
    (status, headers)
}

#[tokio::test]
async fn ui_writes_need_a_session_and_its_csrf_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, _rx) = state(dir.path());
    let create = "extension=1001&displayName=Form+User&password=Form-Secret-55&context=from-internal&transport=transport-udp&codecs=ulaw";

    // Not signed in: sent to the sign-in page, nothing written.
    let (status, headers, _) = form(&state, "POST", "/ui/extensions", create, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers.get("location").and_then(|v| v.to_str().ok()), Some("/ui/signin"));
    // A sign-in post that did not come from the form page is refused (login CSRF).
    let (status, _, _) = form(&state, "POST", "/ui/signin", &format!("token={TOKEN}"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A wrong token does not sign in.
    let (status, headers) = sign_in(&state, "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get("set-cookie").and_then(|v| v.to_str().ok()).is_some_and(|c| !c.starts_with("ag_session")));
    // The right one does, with a hardened cookie.
    let (status, headers) = sign_in(&state, TOKEN).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = headers.get("set-cookie").and_then(|v| v.to_str().ok()).expect("a session cookie").to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().expect("name=value").to_string();

    // Signed in, but without the form's CSRF token: refused, nothing written.
    let (status, _, _) = form(&state, "POST", "/ui/extensions", create, Some(&cookie)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = form(&state, "POST", "/ui/extensions", &format!("{create}&csrf=forged"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(dir_snapshot(dir.path()).is_empty());

    // With the token from the form page: created, as md5Cred.
    let (_, _, page) = form(&state, "GET", "/ui/extensions/new", "", Some(&cookie)).await;
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("a csrf field");
    let (status, headers, _) =
        form(&state, "POST", "/ui/extensions", &format!("{create}&csrf={csrf}"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers.get("location").and_then(|v| v.to_str().ok()), Some("/ui/extensions/1001?saved=1"));
    let files = dir_snapshot(dir.path());
    assert_eq!(files.len(), 1);
    assert!(files[0].1.contains("md5Cred") && !files[0].1.contains("Form-Secret-55"), "{}", files[0].1);
}

/// The OpenAPI document lists exactly the JSON routes: every route the
/// source registers (api.rs, read.rs) is documented, and every documented
/// operation is served (not the router's bare 404 or a 405).
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let doc: Value = serde_json::from_str(asterisk_gitops::http::read::OPENAPI).expect("valid JSON");
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    let mut registered = std::collections::BTreeSet::new();
    for file in ["src/http/api.rs", "src/http/read.rs", "src/http/mod.rs"] {
        let text = std::fs::read_to_string(crate::support::repo_root().join(file)).expect("source");
        for part in text.split(".route(\"").skip(1) {
            registered.insert(part.split('"').next().expect("a path").to_string());
        }
    }
    let documented: std::collections::BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(registered, documented, "routes in the source vs paths in openapi.json");

    let dir = tempfile::tempdir().expect("tempdir");
    let (state, _rx) = state(dir.path());
    for (path, ops) in paths {
        for method in ops.as_object().expect("operations").keys().filter(|m| *m != "parameters") {
            let uri = path.replace("{id}", "1001");
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .body(Body::empty())
                .expect("request");
            let resp = app(state.clone()).oneshot(req).await.expect("response");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is documented but not served");
            assert!(
                status != StatusCode::NOT_FOUND || !bytes.is_empty(),
                "{method} {path} is documented but not routed"
            );
        }
    }
}

#[tokio::test]
async fn with_anonymous_reads_off_reads_need_a_token_or_a_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut state, _rx) = state(dir.path());
    state.anonymous_read = false;
    let (status, body) = call(&state, "GET", "/extensions", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = call(&state, "GET", "/status", None, Some("wrong-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // With the token the read goes through (503 here: this state has no database).
    let (status, _) = call(&state, "GET", "/extensions", None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Probes stay open.
    assert_eq!(call(&state, "GET", "/healthz", None, None).await.0, StatusCode::OK);
    assert_ne!(call(&state, "GET", "/readyz", None, None).await.0, StatusCode::UNAUTHORIZED);
    // The UI sends the anonymous to sign in; a session gets through.
    let (status, headers, _) = form(&state, "GET", "/ui/extensions", "", None).await;
    assert_eq!(
        (status, headers.get("location").and_then(|v| v.to_str().ok())),
        (StatusCode::SEE_OTHER, Some("/ui/signin"))
    );
    let (_, headers) = sign_in(&state, TOKEN).await;
    let cookie = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("cookie")
        .to_string();
    let (status, _, _) = form(&state, "GET", "/ui/extensions", "", Some(&cookie)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "past the check (no database here)");
}

#[test]
fn configured_users_sign_with_their_token_hash_and_bad_hashes_are_refused() {
    use asterisk_gitops::config::{FileConfig, Overrides, Settings, UserFileConfig};
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_asterisk-gitops"))
        .arg("hash-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(b"alice-token-0123456789abcdef\n")?;
            c.wait_with_output()
        })
        .expect("hash-token runs");
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    assert_eq!(hash.len(), 64);
    let user =
        |h: &str| UserFileConfig { name: "Alice".into(), email: "alice@example.com".into(), token_sha256: h.into() };
    let file = FileConfig { users: Some(vec![user(&hash)]), ..Default::default() };
    let settings = Settings::resolve(Overrides::default(), file, &|_| None).expect("settings");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut state, _rx) = state(dir.path());
    state.tokens = Arc::new(asterisk_gitops::app::tokens(&settings));
    let who = state.authenticate(Some("Bearer alice-token-0123456789abcdef")).expect("Alice signs in");
    assert_eq!((who.name.as_str(), who.email.as_str()), ("Alice", "alice@example.com"));
    assert!(state.authenticate(Some("Bearer alice-token-0123456789abcdeX")).is_err());

    let file = FileConfig { users: Some(vec![user("not-hex")]), ..Default::default() };
    let err = Settings::resolve(Overrides::default(), file, &|_| None).expect_err("a bad hash");
    assert!(err.to_string().contains("users[0] (Alice)"), "{err}");
}

/// The UI form's profile select and qualify frequency: offered, written to
/// the spec as chosen, left out when untouched, and refused at their field.
#[tokio::test]
async fn the_ui_form_sets_the_profile_and_qualify_frequency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, _rx) = state(dir.path());
    let (_, headers) = sign_in(&state, TOKEN).await;
    let cookie = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a session")
        .to_string();
    let (_, _, page) = form(&state, "GET", "/ui/extensions/new", "", Some(&cookie)).await;
    assert!(page.contains("<select id=\"profile\" name=\"profile\">"), "{page}");
    for p in ["nat", "lan", "webrtc"] {
        assert!(page.contains(&format!("<option value=\"{p}\"")), "{p} offered: {page}");
    }
    assert!(page.contains("<option value=\"nat\" selected>"), "nat preselected");
    assert!(page.contains("id=\"qualifyFrequency\""), "{page}");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf").to_string();
    let base = format!(
        "password=Form-Secret-55&context=from-internal&codecs=ulaw&profile_was=&qualifyFrequency_was=&csrf={csrf}"
    );

    // Untouched (nat, empty frequency): neither is written.
    let (status, _, _) = form(
        &state,
        "POST",
        "/ui/extensions",
        &format!("extension=1001&transport=transport-udp&profile=nat&qualifyFrequency=&{base}"),
        Some(&cookie),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let text = std::fs::read_to_string(dir.path().join("1001.yaml")).expect("1001 written");
    assert!(!text.contains("profile") && !text.contains("qualifyFrequency"), "{text}");

    // Chosen: written as chosen, the frequency as a number.
    let (status, _, _) = form(
        &state,
        "POST",
        "/ui/extensions",
        &format!("extension=1002&transport=transport-ws&profile=webrtc&qualifyFrequency=20&{base}"),
        Some(&cookie),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let text = std::fs::read_to_string(dir.path().join("1002.yaml")).expect("1002 written");
    assert!(text.contains("profile: webrtc") && text.contains("qualifyFrequency: 20"), "{text}");

    // Refused at the field, nothing written.
    let before = dir_snapshot(dir.path());
    for (fields, id) in [
        ("profile=office&qualifyFrequency=", "error-profile"),
        ("profile=nat&qualifyFrequency=often", "error-qualifyFrequency"),
        ("profile=nat&qualifyFrequency=100000", "error-qualifyFrequency"),
    ] {
        let body = format!("extension=1003&transport=transport-udp&{fields}&{base}");
        let (status, _, page) = form(&state, "POST", "/ui/extensions", &body, Some(&cookie)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{fields}");
        assert!(page.contains(&format!("id=\"{id}\"")), "{fields}: {page}");
    }
    assert_eq!(dir_snapshot(dir.path()), before);
}

/// The API validates edits with the secret policy the daemon is configured
/// with (`secrets.dir`, `secrets.envPattern`), not the default one: the
/// write-back once loaded the edited directory with the default policy
/// (`secrets/` of the spec directory, `EXT_*`), so it refused what the
/// daemon would apply and let through what the daemon would then refuse.
#[tokio::test]
async fn api_edits_are_checked_with_the_configured_secret_policy() {
    use asterisk_gitops::config::{FileConfig, Overrides, SecretsFileConfig, Settings};
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pbx");
    let spec_dir = root.join("extensions.d");
    let vault = dir.path().join("vault");
    let default_secrets = spec_dir.join("secrets");
    for d in [&spec_dir, &vault, &default_secrets] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(dir.path().join("host-secret.txt"), "not for asterisk\n").expect("write");
    // desk.pw: a file in the configured vault, a symlink out of the default secrets/.
    std::fs::write(vault.join("desk.pw"), "desk-password\n").expect("write");
    std::os::unix::fs::symlink(dir.path().join("host-secret.txt"), default_secrets.join("desk.pw")).expect("symlink");
    // leak.pw: the other way round.
    std::os::unix::fs::symlink(dir.path().join("host-secret.txt"), vault.join("leak.pw")).expect("symlink");
    std::fs::write(default_secrets.join("leak.pw"), "fine-password\n").expect("write");
    std::fs::write(
        spec_dir.join("team.yaml"),
        "extensions:\n  - extension: \"1001\"\n    context: from-internal\n    transport: transport-udp\n    codecs: [ulaw]\n    md5Cred: 0123456789abcdef0123456789abcdef\n",
    )
    .expect("write");
    let repo = git2::Repository::init(&root).expect("init");
    {
        let mut index = repo.index().expect("index");
        index.add_path(std::path::Path::new("extensions.d/team.yaml")).expect("add");
        let tree = repo.find_tree(index.write_tree().expect("tree")).expect("tree");
        let sig = git2::Signature::now("Bob", "bob@example.com").expect("sig");
        repo.commit(Some("HEAD"), &sig, &sig, "Seed", &tree, &[]).expect("commit");
    }
    let head = || repo.head().expect("head").peel_to_commit().expect("commit").id();

    let file = FileConfig {
        admin_token: Some(SecretString::new(TOKEN)),
        secrets: Some(SecretsFileConfig { dir: Some(vault.clone()), env_pattern: Some("PBX_*".into()) }),
        ..Default::default()
    };
    let flags =
        Overrides { spec_dir: Some(spec_dir.clone()), state_dir: Some(dir.path().join("state")), ..Default::default() };
    let settings = Settings::resolve(flags, file, &|_| None).expect("settings");
    let (addr, stop, task) = crate::support::serve(settings).await;
    let client = reqwest::Client::new();
    let post = |body: Value| {
        let req = client.post(format!("http://{addr}/extensions")).bearer_auth(TOKEN).json(&body);
        async move {
            let resp = req.send().await.expect("POST /extensions");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("a JSON answer"))
        }
    };
    let body = |number: &str, field: &str, value: &str| json!({"extension": number, "context": "from-internal", "transport": "transport-udp", "codecs": "ulaw", field: value});

    // Allowed by the configured policy, refused by the default one.
    for (number, field, value) in [("2001", "passwordEnv", "PBX_2001_PASSWORD"), ("2002", "passwordFile", "desk.pw")] {
        let before = head();
        let (status, answer) = post(body(number, field, value)).await;
        assert_eq!(status, 201, "{field}: {value} is allowed by the configured policy: {answer}");
        let text = std::fs::read_to_string(spec_dir.join(format!("{number}.yaml"))).expect("written");
        assert!(text.contains(&format!("{field}: {value}")), "{text}");
        let commit = repo.head().expect("head").peel_to_commit().expect("commit");
        assert_eq!(commit.parent_id(0).expect("parent"), before, "one commit for the create");
        assert!(
            commit.tree().expect("tree").get_path(std::path::Path::new(&format!("extensions.d/{number}.yaml"))).is_ok()
        );
    }

    // Refused by the configured policy, allowed by the default one.
    for (number, field, value) in [("2003", "passwordEnv", "EXT_2003_PASSWORD"), ("2004", "passwordFile", "leak.pw")] {
        let before = head();
        let files_before = dir_snapshot(&spec_dir);
        let (status, answer) = post(body(number, field, value)).await;
        assert_eq!(status, 400, "{field}: {value} is refused by the configured policy: {answer}");
        let details = answer["details"].as_array().expect("details");
        assert!(
            details.iter().any(|d| d["field"].as_str().is_some_and(|f| f.ends_with(field))
                && d["message"].as_str().is_some_and(|m| !m.is_empty())),
            "the refusal names {field}: {answer}"
        );
        assert!(!answer.to_string().contains("not for asterisk"), "no secret in the answer: {answer}");
        assert_eq!(dir_snapshot(&spec_dir), files_before, "nothing written");
        assert_eq!(head(), before, "no commit");
    }

    stop.send(()).expect("stop");
    task.await.expect("joins").expect("serve ends cleanly");
}

/// Every path a route is registered under anywhere in src/http/ (the
/// routers' sources), with `{id}` filled in.
fn every_registered_path() -> Vec<String> {
    let mut paths = std::collections::BTreeSet::new();
    let dir = crate::support::repo_root().join("src/http");
    for entry in std::fs::read_dir(&dir).expect("src/http") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source");
            for part in text.split(".route(\"").skip(1) {
                paths.insert(part.split('"').next().expect("a path").replace("{id}", "1001"));
            }
        }
    }
    paths.into_iter().collect()
}

/// Regression (issue #15): a write route once sat in the read router and
/// relied on its handler's own read-only check. With `--read-only` the
/// router must not know any route that takes a POST, PUT, DELETE or PATCH
/// (404 or 405, never the 403 of a write handler's own refusal), so this
/// fails as soon as a write route is registered outside the write router.
#[tokio::test]
async fn with_read_only_no_registered_path_takes_a_write_not_even_to_refuse_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = every_registered_path();
    for known in [
        "/extensions",
        "/extensions/1001",
        "/extensions/import",
        "/reconcile",
        "/hooks/git",
        "/ui/extensions",
        "/ui/extensions/1001",
        "/ui/extensions/1001/delete",
        "/ui/import",
        "/ui/import/preview",
    ] {
        assert!(paths.iter().any(|p| p == known), "{known} is among the registered paths: {paths:?}");
    }
    // The enumeration reaches the write routes: without read-only, each
    // write path answers from its handler (not the router's 404/405).
    let (writable, _rx) = state(dir.path());
    for (method, path) in [
        ("POST", "/extensions"),
        ("PUT", "/extensions/1001"),
        ("DELETE", "/extensions/1001"),
        ("POST", "/ui/extensions"),
        ("POST", "/ui/import/preview"),
        ("POST", "/reconcile"),
    ] {
        let req = Request::builder().method(method).uri(path).body(Body::empty()).expect("request");
        let status = app(writable.clone()).oneshot(req).await.expect("response").status();
        assert!(
            ![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&status),
            "{method} {path} is routed when writable ({status})"
        );
    }
    for anonymous_read in [true, false] {
        let (mut state, mut rx) = state(dir.path());
        state.read_only = true;
        state.anonymous_read = anonymous_read;
        for path in &paths {
            // Sign-in stays when reading needs a session; it writes no spec.
            if !anonymous_read && (path == "/ui/signin" || path == "/ui/signout") {
                continue;
            }
            for method in ["POST", "PUT", "DELETE", "PATCH"] {
                let req = Request::builder()
                    .method(method)
                    .uri(path.as_str())
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Body::from("extension=1001&csrf=x"))
                    .expect("request");
                let status = app(state.clone()).oneshot(req).await.expect("response").status();
                assert!(
                    [StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&status),
                    "{method} {path} (anonymousRead: {anonymous_read}) answered {status}: a write route is registered in read-only mode"
                );
            }
        }
        assert!(rx.try_recv().is_err(), "no reconcile was asked for");
    }
    assert!(dir_snapshot(dir.path()).is_empty(), "nothing written");
}

/// PUT answers the whole extension as its file now declares it, like a
/// create does, not only the fields it changed (it once said `"extension": null`).
#[tokio::test]
async fn put_answers_the_whole_extension_without_its_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hand = "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n  - extension: \"1002\"\n    displayName: Intern\n    md5Cred: 0123456789abcdef0123456789abcdef\n    maxContacts: 2\n";
    std::fs::write(dir.path().join("sales.yaml"), hand).expect("write");
    let (state, _rx) = state(dir.path());
    let (status, body) =
        call(&state, "PUT", "/extensions/1002", Some(r#"{"displayName":"Junior"}"#), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let e = &body["extension"];
    assert_eq!(e["extension"], "1002", "{body}");
    assert_eq!(e["displayName"], "Junior", "{body}");
    assert_eq!(e["maxContacts"], 2, "the fields the body did not name are there too: {body}");
    assert_eq!(e["secret"], "md5Cred", "{body}");
    assert!(!body.to_string().contains("0123456789abcdef0123456789abcdef"), "no hash in the answer: {body}");
}

/// A SQLite state database holding `specs` as applied by one run, and
/// `noops` runs after it that changed nothing.
async fn applied_db(dir: &Path, specs: &str, noops: usize) -> asterisk_gitops::db::Db {
    use asterisk_gitops::reconcile::{AppliedRow, Outcome, RunRecord};
    let db = asterisk_gitops::db::Db::connect(
        &format!("sqlite://{}/state/test.db", dir.display()),
        &asterisk_gitops::db::Retry::default(),
    )
    .await
    .expect("sqlite");
    let (exts, diags) = asterisk_gitops::core::spec::load::load_file(
        "team.yaml",
        &asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(dir),
        specs,
    );
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let rows: Vec<AppliedRow> = exts
        .into_iter()
        .map(|(e, _)| AppliedRow {
            extension: std::borrow::Cow::Owned(e),
            secret_md5: "0123456789abcdef0123456789abcdef".into(),
        })
        .collect();
    let run = |outcome: Outcome| RunRecord {
        trigger: Trigger::Cli,
        revision: Some("0123abcd".into()),
        subject: None,
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        outcome,
        plan: Some(Default::default()),
        error: None,
        diagnostics: vec![],
        reloaded: outcome == Outcome::Applied,
        warning: None,
        reasons: vec![],
        rollback_failed: false,
    };
    db.commit_run(&run(Outcome::Applied), &rows, &[], &Default::default()).await.expect("applied");
    for _ in 0..noops {
        db.commit_run(&run(Outcome::NoOp), &[], &[], &Default::default()).await.expect("no-op");
    }
    db
}

const TEAM: &str = "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n  - {extension: \"1001\", displayName: Ann, labels: {team: sales}, md5Cred: 0123456789abcdef0123456789abcdef}\n  - {extension: \"1002\", displayName: Bob, md5Cred: 0123456789abcdef0123456789abcdef}\n  - {extension: \"1003\", displayName: Cy, md5Cred: 0123456789abcdef0123456789abcdef}\n";

/// Reads name the number `extension`, as the seed's body and the writes do;
/// `number` stays beside it (deprecated, for one release).
#[tokio::test]
async fn extension_reads_name_the_number_extension_and_keep_number_as_an_alias() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut state, _rx) = state(dir.path());
    state.live.db = Some(applied_db(dir.path(), TEAM, 0).await);
    let (status, list) = call(&state, "GET", "/extensions", None, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let items = list.as_array().expect("a list");
    assert_eq!(items.len(), 3);
    for item in items {
        assert_eq!(item["extension"], item["number"], "{item}");
        assert!(item["extension"].as_str().is_some_and(|n| n.starts_with("100")), "{item}");
    }
    let (status, one) = call(&state, "GET", "/extensions/1002", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((one["extension"].as_str(), one["number"].as_str()), (Some("1002"), Some("1002")), "{one}");
}

/// Paging, search and the counts come from the database's queries and say
/// what the full list says.
#[tokio::test]
async fn list_pages_and_status_counts_agree_with_the_full_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut state, _rx) = state(dir.path());
    state.live.db = Some(applied_db(dir.path(), TEAM, 0).await);
    let req = Request::builder().uri("/extensions?limit=1&offset=1").body(Body::empty()).expect("request");
    let resp = app(state.clone()).oneshot(req).await.expect("response");
    assert_eq!(resp.headers().get("x-total-count").and_then(|v| v.to_str().ok()), Some("3"));
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let page: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        page.as_array().map(|a| a.iter().map(|e| e["extension"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("1002")])
    );
    let (_, found) = call(&state, "GET", "/extensions?q=sales", None, None).await;
    assert_eq!(found.as_array().map(Vec::len), Some(1), "a label value matches: {found}");
    let (_, found) = call(&state, "GET", "/extensions?q=team", None, None).await;
    assert_eq!(found.as_array().map(Vec::len), Some(0), "a label's key does not: {found}");
    let (_, found) = call(&state, "GET", "/extensions?q=BOB&sync=synced", None, None).await;
    assert_eq!(found.as_array().map(|a| a[0]["extension"].clone()), Some(json!("1002")), "{found}");
    let (_, none) = call(&state, "GET", "/extensions?sync=failed", None, None).await;
    assert_eq!(none, json!([]));

    let (status, st) = call(&state, "GET", "/status", None, None).await;
    assert_eq!(status, StatusCode::OK, "{st}");
    assert_eq!(st["extensions"], 3, "{st}");
    assert_eq!(st["notSynced"], 0, "{st}");
    assert_eq!(st["sync"]["synced"], 3, "{st}");
    assert_eq!(st["sync"]["failed"], 0, "every state is listed: {st}");
    assert_eq!(st["asterisk"], json!({"configured": false, "reachable": null}), "{st}");
    assert_eq!(st["conditions"][0]["type"], "Ready", "{st}");
    let (_, metrics) = call(&state, "GET", "/metrics", None, None).await;
    let text = metrics.as_str().expect("text");
    assert!(text.contains("asterisk_gitops_extensions{status=\"synced\"} 3\n"), "{text}");
    assert!(text.contains("asterisk_gitops_extensions{status=\"pending\"} 0\n"), "{text}");
}

/// With no Asterisk configured (the README's embedded default) the live
/// status answers the extension's applied state, and says so.
#[tokio::test]
async fn live_status_without_asterisk_answers_the_applied_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut state, _rx) = state(dir.path());
    state.live.db = Some(applied_db(dir.path(), TEAM, 0).await);
    let (status, body) = call(&state, "GET", "/extensions/1001/status", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["extension"], "1001");
    assert_eq!(body["asterisk"], "not configured", "{body}");
    assert_eq!(body["sync"]["status"], "synced", "{body}");
    assert_eq!(body["sync"]["revision"], "0123abcd", "{body}");
    assert_eq!(body["softphone"]["username"], "1001", "{body}");
    assert!(body["registered"].is_null(), "not known without Asterisk: {body}");
    let (status, _) = call(&state, "GET", "/extensions/4242/status", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The overview and the runs page: timestamps for people (no nanoseconds),
/// drift not yet checked said in words, and runs that changed nothing
/// counted rather than listed (all of them one click away).
#[tokio::test]
async fn ui_pages_show_readable_times_named_unknowns_and_collapse_no_op_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut state, _rx) = state(dir.path());
    state.reconcile = None;
    state.live.db = Some(applied_db(dir.path(), TEAM, 7).await);
    let (status, _, overview) = form(&state, "GET", "/ui", "", None).await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert!(overview.contains("id=\"drift\">not checked yet<"), "{overview}");
    assert!(!overview.contains(">?<"), "no bare question mark: {overview}");
    let (_, _, runs) = form(&state, "GET", "/ui/runs", "", None).await;
    let rows = runs.matches("href=\"/ui/runs/").count();
    assert_eq!(rows, 1, "only the run that applied is listed: {runs}");
    assert!(runs.contains("7 runs that changed nothing not listed"), "{runs}");
    assert!(runs.contains("href=\"/ui/runs?all=1\""), "{runs}");
    let time = runs.split("<time datetime=\"").nth(1).and_then(|r| r.split("</time>").next()).expect("a <time>");
    let (attr, shown) = time.split_once("\">").expect("attribute and text");
    assert!(chrono::DateTime::parse_from_rfc3339(attr).is_ok(), "{attr}");
    assert!(chrono::NaiveDateTime::parse_from_str(shown, "%Y-%m-%d %H:%M:%S UTC").is_ok(), "{shown}");
    let (_, _, all) = form(&state, "GET", "/ui/runs?all=1", "", None).await;
    assert_eq!(all.matches("href=\"/ui/runs/").count(), 8, "{all}");
}
