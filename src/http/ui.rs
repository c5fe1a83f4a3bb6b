//! The HTML UI, rendered on the server with minijinja (templates/ui/, built
//! into the binary; no JavaScript): overview, extensions (search, sync and
//! registration badges), new / edit / delete, an extension's live status
//! and softphone settings, runs with their diffs, calls.
//!
//! Reading is anonymous. Writing needs a signed-in session: the sign-in form
//! takes an API token (compared as the API compares it) and sets an
//! HttpOnly, SameSite=Strict session cookie; every form that changes
//! something carries the session's CSRF token, compared in constant time.
//! In read-only mode the write routes do not exist and no page shows an
//! edit control. Writes go through the same functions as the JSON API, so
//! a password typed into the form is committed as md5Cred, never as text.
//! Pages render from the same typed views the JSON API serialises
//! (`views`), never from its JSON by string keys.

use super::auth::{COOKIE, Database, Editor, FormWrite, Session, SessionForm, Viewer, cookie_value};
use super::read::{internal, registrations};
use super::{ApiError, AppState};
use crate::db::Db;
use crate::db::calls::CallFilter;
use axum::Form;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Environment, context};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const PAGE: usize = 500;

/// The value, or — returned from the handler — the error page for the error.
macro_rules! or_page {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return api_error_page(e),
        }
    };
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // The badge colour of a sync state.
        env.add_filter("sync_class", |state: &str| match state {
            "synced" => "ok",
            "pending" | "drifted" => "warn",
            "disabled" => "muted",
            _ => "bad",
        });
        // A timestamp for people: `2026-12-01 16:58:40 UTC` in a `<time>`
        // element carrying the exact RFC 3339 value.
        env.add_filter("when", |v: minijinja::Value| when(&v));
        for (name, text) in [
            ("base.html", include_str!("../../templates/ui/base.html")),
            ("overview.html", include_str!("../../templates/ui/overview.html")),
            ("runs_table.html", include_str!("../../templates/ui/runs_table.html")),
            ("extensions.html", include_str!("../../templates/ui/extensions.html")),
            ("form.html", include_str!("../../templates/ui/form.html")),
            ("delete.html", include_str!("../../templates/ui/delete.html")),
            ("import.html", include_str!("../../templates/ui/import.html")),
            ("status.html", include_str!("../../templates/ui/status.html")),
            ("runs.html", include_str!("../../templates/ui/runs.html")),
            ("run.html", include_str!("../../templates/ui/run.html")),
            ("calls.html", include_str!("../../templates/ui/calls.html")),
            ("calls_active.html", include_str!("../../templates/ui/calls_active.html")),
            ("signin.html", include_str!("../../templates/ui/signin.html")),
            ("error.html", include_str!("../../templates/ui/error.html")),
        ] {
            // The templates are part of the binary and tested; a broken one
            // shows as an error page, not a panic.
            if let Err(e) = env.add_template(name, text) {
                tracing::error!(template = name, error = %e, "UI template does not compile");
            }
        }
        env
    })
}

/// A timestamp as a page shows it (see the `when` filter); what is not one
/// is shown as it is, escaped.
fn when(v: &minijinja::Value) -> minijinja::Value {
    if v.is_none() || v.is_undefined() {
        return minijinja::Value::from("");
    }
    let text = v.to_string();
    match chrono::DateTime::parse_from_rfc3339(&text) {
        Ok(t) => {
            let t = t.with_timezone(&chrono::Utc);
            minijinja::Value::from_safe_string(format!(
                "<time datetime=\"{}\">{}</time>",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                t.format("%Y-%m-%d %H:%M:%S UTC")
            ))
        }
        Err(_) => minijinja::Value::from(text),
    }
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: refuse to make guessable tokens.
        return String::new();
    }
    hex::encode(b)
}

/// The state database for a page; the error page when there is none.
struct PageDb(Db);

impl FromRequestParts<AppState> for PageDb {
    type Rejection = Response;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, Response> {
        Database::of(state).map(PageDb).map_err(api_error_page)
    }
}

fn base(state: &AppState, viewer: &Viewer, notice: Option<&str>) -> minijinja::Value {
    context! {
        read_only => state.read_only,
        user => viewer.user(),
        csrf => viewer.csrf(),
        can_write => viewer.can_write(),
        git => state.branch.is_some(),
        notice => notice,
    }
}

fn page(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let rendered = env().get_template(name).and_then(|t| t.render(ctx));
    match rendered {
        Ok(html) => {
            let mut r = (status, Html(html)).into_response();
            r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
            r.headers_mut().insert("x-frame-options", HeaderValue::from_static("DENY"));
            r
        }
        Err(e) => {
            tracing::error!(template = name, error = %e, "UI page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<h1>Internal error</h1><p>The page did not render; see the daemon's log.</p>".to_string()),
            )
                .into_response()
        }
    }
}

pub(crate) fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    page(status, "error.html", context! { title => title, message => message, read_only => true })
}

fn api_error_page(e: ApiError) -> Response {
    let (status, title) = match &e {
        ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
        ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
        ApiError::Unauthorized | ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
        ApiError::Internal(d) => {
            tracing::error!(detail = d.as_str(), "internal error in a UI handler");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                "Something failed; see the daemon's log.",
            );
        }
        _ => (StatusCode::BAD_REQUEST, "Bad request"),
    };
    error_page(status, title, &e.to_string())
}

/// The pages that only read (behind the anonymous-read check).
pub fn read_router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(overview))
        .route("/ui/extensions", get(list))
        .route("/ui/extensions/{id}", get(status))
        .route("/ui/runs", get(runs))
        .route("/ui/runs/{id}", get(run))
        .route("/ui/calls", get(calls))
        .route("/ui/calls/active", get(active_calls))
}

/// Sign-in and sign-out: they change no spec and no Asterisk, only who is
/// signed in. In read-only mode they remain only when reading needs a
/// session.
pub fn signin_router(state: &AppState) -> axum::Router<AppState> {
    let mut r = axum::Router::new();
    if !state.read_only || !state.anonymous_read {
        r = r.route("/ui/signin", get(signin_form).post(signin)).route("/ui/signout", post(signout));
    }
    r
}

/// The pages and forms that write (see `http::write_router`): each takes an
/// [`Editor`] (a page) or a [`FormWrite`] (a post, with its CSRF token).
pub fn write_router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/ui/extensions", post(create))
        .route("/ui/extensions/{id}", post(update))
        .route("/ui/extensions/new", get(new_form))
        .route("/ui/extensions/{id}/edit", get(edit_form))
        .route("/ui/extensions/{id}/delete", get(delete_form).post(delete))
        .route("/ui/import", get(import_form).post(import_confirm))
        .route("/ui/import/preview", post(import_preview))
}

async fn overview(State(state): State<AppState>, viewer: Viewer, PageDb(db): PageDb) -> Response {
    let st = or_page!(super::read::status_view(&state, &db).await);
    let database =
        format!("{} ({})", st.database.backend, if st.database.reachable { "reachable" } else { "unreachable" });
    let (noop_runs, runs) = split_runs(st.last_runs);
    let ctx = context! {
        ..base(&state, &viewer, None),
        ..context! {
            ready => st.ready.as_ref().map(|r| r.status.clone()),
            ready_reason => st.ready.as_ref().map(|r| r.message.clone()),
            extensions => st.extensions,
            not_synced => st.not_synced,
            by_state => st.sync,
            reconciling => st.reconciling,
            reconciling_step => st.reconciling_step,
            stalled => st.stalled,
            registered => st.registered,
            drift => st.drift,
            leader => st.leader,
            leader_id => st.leader_id,
            leader_since => st.leader_since,
            asterisk_up => st.asterisk.reachable.unwrap_or(false),
            asterisk_configured => st.asterisk.configured,
            asterisk_version => st.asterisk.version,
            revision => st.last_applied_revision,
            last_sync => st.updated_at,
            database => database,
            runs => runs,
            noop_runs => noop_runs,
            active_calls => st.active_calls,
            nodes => if st.nodes.len() > 1 { st.nodes } else { Vec::new() },
        }
    };
    page(StatusCode::OK, "overview.html", ctx)
}

/// Runs for a page: the ones that changed or failed something in full, and
/// how many in between changed nothing (shown as a count, with a link to
/// all), so quiet resyncs do not crowd out the runs that mattered.
fn split_runs(runs: Vec<crate::db::RunSummary>) -> (usize, Vec<crate::db::RunSummary>) {
    let total = runs.len();
    let kept: Vec<_> = runs.into_iter().filter(|r| !is_quiet(r)).collect();
    (total - kept.len(), kept)
}

/// A run that found nothing to do and did nothing.
fn is_quiet(r: &crate::db::RunSummary) -> bool {
    r.outcome == crate::reconcile::Outcome::NoOp.as_str()
        && r.creates == 0
        && r.updates == 0
        && r.deletes == 0
        && !r.reloaded
        && r.error.is_none()
        && r.warning.is_none()
}

async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    PageDb(db): PageDb,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let query = q.get("q").map(|s| s.trim().to_string()).unwrap_or_default();
    let offset: usize = q.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    let (regs, known) = registrations(&state);
    let sync =
        q.get("sync").map(|s| s.trim().to_string()).filter(|s| crate::core::status::SyncState::parse(s).is_some());
    let found = or_page!(super::read::page_of(&db, Some(&query), sync.as_deref(), offset, Some(PAGE)).await);
    let total = found.total;
    let rows: Vec<_> = found.records.iter().map(|r| super::read::extension_view(r, &regs, known)).collect();
    let shown = rows.len();
    let next_url = (offset + shown < total).then(|| {
        let mut url = format!("/ui/extensions?offset={}", offset + shown);
        if !query.is_empty() {
            url.push_str("&q=");
            url.push_str(&percent(&query));
        }
        if let Some(s) = &sync {
            url.push_str("&sync=");
            url.push_str(s);
        }
        url
    });
    let states: Vec<&str> = crate::core::status::SyncState::ALL.iter().map(|s| s.as_str()).collect();
    let ctx = context! {
        ..base(&state, &viewer, None),
        ..context! { extensions => rows, q => query, sync => sync, states => states, total => total, shown => shown, next_url => next_url }
    };
    page(StatusCode::OK, "extensions.html", ctx)
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn status(
    State(state): State<AppState>,
    viewer: Viewer,
    PageDb(db): PageDb,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let record = or_page!(db.extension(&id).await.map_err(internal));
    let (mut contacts, mut endpoint, mut live_error) = (Vec::new(), None, None);
    match &state.live.asterisk {
        None => live_error = Some("Asterisk is not configured (--ami-addr): no live registration status.".to_string()),
        Some(a) => match (a.endpoint(&id).await, a.contacts().await) {
            (Ok(d), Ok(c)) => {
                endpoint = d;
                contacts = c.into_iter().filter(|c| c.endpoint == id).collect();
            }
            (Err(e), _) | (_, Err(e)) => live_error = Some(format!("Asterisk is unreachable: {e}")),
        },
    }
    if record.is_none() && endpoint.is_none() && live_error.is_none() && !q.contains_key("saved") {
        return error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("Extension {id} is neither applied nor in Asterisk."),
        );
    }
    let drift: Vec<String> = if live_error.is_some() {
        Vec::new()
    } else {
        super::read::drift_of(record.as_ref(), endpoint.as_ref()).iter().map(|d| d.text()).collect()
    };
    let auth_username =
        endpoint.as_ref().map(|e| e.auth.clone()).filter(|a| !a.is_empty()).unwrap_or_else(|| id.clone());
    let calls_today = or_page!(db.extension_call_stats(&id, super::read::today_start()).await.map_err(internal));
    // With several nodes, the registration on each.
    let nodes =
        if state.live.nodes.len() > 1 { super::read::registrations_per_node(&state, &id).await } else { Vec::new() };
    let notice = q.get("saved").map(|_| "Saved. The change is in the spec files; Asterisk gets it on the next reconcile (this page shows Synced then).");
    let ctx = context! {
        ..base(&state, &viewer, notice),
        ..context! {
            number => id,
            record => record,
            contacts => contacts,
            endpoint => endpoint,
            live_error => live_error,
            drift => drift,
            auth_username => auth_username,
            sip_server => state.live.sip_server.clone(),
            calls_today => calls_today,
            nodes => nodes,
        }
    };
    page(StatusCode::OK, "status.html", ctx)
}

/// The last 100 runs; those that changed nothing are counted, not listed,
/// unless `?all=1`.
async fn runs(
    State(state): State<AppState>,
    viewer: Viewer,
    PageDb(db): PageDb,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let all = or_page!(db.runs(100).await.map_err(internal));
    let show_all = q.get("all").is_some_and(|v| v == "1" || v == "true");
    let (noop_runs, runs) = if show_all { (0, all) } else { split_runs(all) };
    page(
        StatusCode::OK,
        "runs.html",
        context! { ..base(&state, &viewer, None), ..context! { runs => runs, noop_runs => noop_runs, show_all => show_all } },
    )
}

async fn run(State(state): State<AppState>, viewer: Viewer, PageDb(db): PageDb, Path(id): Path<String>) -> Response {
    let Ok(n) = id.parse::<i64>() else {
        return error_page(StatusCode::NOT_FOUND, "Not found", &format!("There is no run {id}."));
    };
    let Some(run) = or_page!(db.run(n).await.map_err(internal)) else {
        return error_page(StatusCode::NOT_FOUND, "Not found", &format!("There is no run {n}."));
    };
    // The run's diagnostics as stored (`diag::Diagnostic`'s JSON); a row
    // that does not read as one is left out rather than failing the page.
    let diagnostics: Vec<super::views::DiagnosticLine> = match &run.diagnostics {
        Value::Array(items) => items.iter().filter_map(|d| serde_json::from_value(d.clone()).ok()).collect(),
        _ => Vec::new(),
    };
    page(
        StatusCode::OK,
        "run.html",
        context! { ..base(&state, &viewer, None), ..context! { run => run, diagnostics => diagnostics } },
    )
}

async fn calls(
    State(state): State<AppState>,
    viewer: Viewer,
    PageDb(db): PageDb,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let extension = q.get("extension").map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let direction = q.get("direction").cloned().filter(|d| ["inbound", "outbound", "internal"].contains(&d.as_str()));
    let node = q.get("node").map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let filter = CallFilter {
        node: node.clone(),
        extension: extension.clone(),
        direction: direction.clone(),
        limit: 200,
        ..Default::default()
    };
    let calls = or_page!(db.calls(&filter).await.map_err(internal));
    let mut csv_url = "/calls?format=csv&limit=1000".to_string();
    if let Some(e) = &extension {
        csv_url.push_str("&extension=");
        csv_url.push_str(&percent(e));
    }
    if let Some(d) = &direction {
        csv_url.push_str("&direction=");
        csv_url.push_str(d);
    }
    if let Some(n) = &node {
        csv_url.push_str("&node=");
        csv_url.push_str(&percent(n));
    }
    let nodes: Vec<String> = state.live.nodes.iter().map(|n| n.name.clone()).collect();
    let ctx = context! {
        ..base(&state, &viewer, None),
        ..context! { calls => calls, extension => extension.unwrap_or_default(), direction => direction.unwrap_or_default(), node => node.unwrap_or_default(), nodes => nodes, call_logger => state.live.calls.is_some(), csv_url => csv_url }
    };
    page(StatusCode::OK, "calls.html", ctx)
}

/// The calls happening now; the page refreshes itself every 5 s (no JavaScript).
async fn active_calls(State(state): State<AppState>, viewer: Viewer, PageDb(db): PageDb) -> Response {
    let now = chrono::Utc::now();
    let calls = or_page!(db.active_calls().await.map_err(internal));
    let rows: Vec<Value> = calls
        .iter()
        .map(|c| {
            let parties: Vec<String> = c
                .legs
                .iter()
                .map(|l| {
                    let who = l.extension.clone().unwrap_or_else(|| l.channel.clone());
                    if l.answer_time.is_some() { who } else { format!("{who} (ringing)") }
                })
                .collect();
            let d = (now - c.call.start_time).num_seconds().max(0);
            let duration = format!("{}:{:02}", d / 60, d % 60);
            serde_json::json!({
                "call": c.call,
                "state": c.state,
                "parties": parties,
                "duration": duration,
            })
        })
        .collect();
    let ctx = context! { ..base(&state, &viewer, None), ..context! { calls => rows, call_logger => state.live.calls.is_some() } };
    page(StatusCode::OK, "calls_active.html", ctx)
}

/// The sign-in form is protected against login CSRF by a double-submit
/// token: a short-lived cookie and the same value in the form.
const PRE_COOKIE: &str = "ag_signin";

fn signin_page(state: &AppState, viewer: &Viewer, status: StatusCode, error: Option<String>) -> Response {
    let token = random_token();
    let ctx = context! { ..base(state, viewer, None), ..context! { error => error, signin_csrf => token.clone() } };
    let mut r = page(status, "signin.html", ctx);
    let cookie = format!("{PRE_COOKIE}={token}; Path=/ui/signin; HttpOnly; SameSite=Strict; Max-Age=1800");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn signin_form(State(state): State<AppState>, viewer: Viewer) -> Response {
    signin_page(&state, &viewer, StatusCode::OK, None)
}

async fn signin(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let expected = cookie_value(&headers, PRE_COOKIE).unwrap_or_default();
    let sent = form.get("csrf").map(String::as_str).unwrap_or_default();
    if expected.is_empty() || !bool::from(sent.as_bytes().ct_eq(expected.as_bytes())) {
        let message = "The sign-in form expired or did not come from this site: try again.".to_string();
        return signin_page(&state, &viewer, StatusCode::FORBIDDEN, Some(message));
    }
    let token = form.get("token").map(|t| format!("Bearer {}", t.trim())).unwrap_or_default();
    let user = match state.authenticate(Some(&token)) {
        Ok(u) => u,
        Err(e) => {
            let message = match e {
                ApiError::Forbidden(m) => m,
                _ => "That token is not valid.".to_string(),
            };
            tracing::warn!("UI sign-in refused");
            return signin_page(&state, &viewer, StatusCode::UNAUTHORIZED, Some(message));
        }
    };
    let (id, csrf) = (random_token(), random_token());
    if id.is_empty() || csrf.is_empty() {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "No secure randomness for a session: sign-in is off.",
        );
    }
    tracing::info!(user = %user.name, "UI sign-in");
    state
        .live
        .sessions
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), Session { user, csrf, expires: Instant::now() + SESSION_TTL });
    let mut r = Redirect::to("/ui/extensions").into_response();
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn signout(State(state): State<AppState>, SessionForm { viewer }: SessionForm) -> Response {
    if let Some(s) = &viewer.session {
        state.live.sessions.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, v| v.csrf != s.csrf);
    }
    let mut r = Redirect::to("/ui").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("ag_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// The form's fields as the JSON API's body: empty optional fields are left out.
/// `profile` and `qualifyFrequency` go in only when they differ from what
/// the form showed (`…_was`), so saving an untouched form does not write a
/// value the entry inherits (or the default) into the file.
fn body_of(form: &HashMap<String, String>, editing: bool) -> Map<String, Value> {
    let mut map = Map::new();
    for key in FORM_FIELDS {
        let Some(v) = form.get(*key) else { continue };
        let v = if *key == "password" { v.as_str() } else { v.trim() };
        if *key == "options" {
            let was = form.get("options_was").map(|s| s.trim()).unwrap_or_default();
            if v != was {
                map.insert("options".into(), options_of_text(v));
            }
            continue;
        }
        if v.is_empty() && (editing || matches!(*key, "displayName" | "qualifyFrequency")) {
            continue;
        }
        if editing && *key == "extension" {
            continue;
        }
        if matches!(*key, "profile" | "qualifyFrequency") {
            let was = form.get(&format!("{key}_was")).map(|s| s.trim()).unwrap_or_default();
            let unchanged = if *key == "profile" { v == was || (was.is_empty() && v == "nat") } else { v == was };
            if unchanged {
                continue;
            }
        }
        // A number field goes in as a number; anything else as typed, for
        // the API's checks to name it.
        let value = match (*key, v.parse::<u64>()) {
            ("qualifyFrequency", Ok(n)) => Value::from(n),
            _ => Value::from(v),
        };
        map.insert(key.to_string(), value);
    }
    map
}

/// The fields the form edits, as the JSON API names them.
const FORM_FIELDS: &[&str] = crate::core::spec::fields::FORM_KEYS;

/// The form's options box: one `name = value` a line for the endpoint,
/// `aor.name = value` or `auth.name = value` for the others. A line that
/// is not one of those goes in as an option without a valid name, for the
/// API's checks to refuse it by name.
fn options_of_text(text: &str) -> Value {
    let mut kinds: Map<String, Value> = Map::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((line, ""));
        let (kind, name) = match key.split_once('.') {
            Some((k, n)) if crate::core::spec::options::KINDS.contains(&k) => (k, n.trim()),
            _ => ("endpoint", key),
        };
        if let Value::Object(m) = kinds.entry(kind.to_string()).or_insert_with(|| Value::Object(Map::new())) {
            m.insert(name.to_string(), Value::from(value));
        }
    }
    Value::Object(kinds)
}

/// The options box's text for a record's options (`type.name` → value).
fn options_text(options: &std::collections::BTreeMap<String, String>) -> String {
    let mut lines: Vec<String> =
        options.iter().map(|(k, v)| format!("{} = {v}", k.strip_prefix("endpoint.").unwrap_or(k))).collect();
    lines.sort_by_key(|l| l.contains('.') && (l.starts_with("aor.") || l.starts_with("auth.")));
    lines.join("\n")
}

fn form_page(
    state: &AppState,
    viewer: &Viewer,
    status: StatusCode,
    editing: Option<&str>,
    form: Value,
    error: Option<ApiError>,
) -> Response {
    let mut errors = Map::new();
    let mut message = None;
    if let Some(e) = error {
        match e {
            ApiError::BadRequest(m, details) => {
                for d in details {
                    let path = d.field.as_deref().unwrap_or("");
                    let field = if path.starts_with("options") {
                        "options".to_string()
                    } else {
                        path.rsplit('.').next().unwrap_or("").to_string()
                    };
                    if FORM_FIELDS.contains(&field.as_str()) {
                        errors.entry(field).or_insert(Value::from(d.message));
                    } else {
                        message = Some(format!("{m}: {}", d.message));
                    }
                }
                message = message.or(Some(m));
            }
            other => message = Some(other.to_string()),
        }
    }
    let action = match editing {
        Some(n) => format!("/ui/extensions/{n}"),
        None => "/ui/extensions".to_string(),
    };
    let ctx = context! {
        ..base(state, viewer, None),
        ..context! { editing => editing.is_some(), number => editing, form => form, errors => errors, error => message, action => action,
                     profiles => crate::core::spec::Profile::ALL.map(crate::core::spec::Profile::name) }
    };
    page(status, "form.html", ctx)
}

async fn new_form(State(state): State<AppState>, Editor(viewer): Editor) -> Response {
    form_page(&state, &viewer, StatusCode::OK, None, json!({}), None)
}

/// What the form shows back after an error: never the password.
fn echo(form: &HashMap<String, String>) -> Value {
    let mut v = json!(form);
    if let Value::Object(m) = &mut v {
        m.remove("password");
        m.remove("csrf");
    }
    v
}

async fn create(State(state): State<AppState>, FormWrite { viewer, author, form }: FormWrite) -> Response {
    let number = form.get("extension").map(|s| s.trim().to_string()).unwrap_or_default();
    let created = match super::api::check_fields(body_of(&form, false)) {
        Ok(body) => super::api::create_entry(&state, body, author).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(_) => Redirect::to(&format!("/ui/extensions/{}?saved=1", percent(&number))).into_response(),
        Err(e) => {
            let status =
                if matches!(e, ApiError::Conflict(_)) { StatusCode::CONFLICT } else { StatusCode::BAD_REQUEST };
            form_page(&state, &viewer, status, None, echo(&form), Some(e))
        }
    }
}

async fn edit_form(
    State(state): State<AppState>,
    Editor(viewer): Editor,
    PageDb(db): PageDb,
    Path(id): Path<String>,
) -> Response {
    let Some(record) = or_page!(db.extension(&id).await.map_err(internal)) else {
        return error_page(StatusCode::NOT_FOUND, "Not found", &format!("Extension {id} is not applied."));
    };
    let form = json!({
        "displayName": record.display_name,
        "context": record.context,
        "transport": record.transport,
        "codecs": record.codecs.join(","),
        "profile": record.profile,
        "qualifyFrequency": record.qualify_frequency,
        "options": options_text(&record.options),
    });
    form_page(&state, &viewer, StatusCode::OK, Some(&id), form, None)
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    FormWrite { viewer, author, form }: FormWrite,
) -> Response {
    let updated = match super::api::check_fields(body_of(&form, true)) {
        Ok(body) => super::api::update_entry(&state, &id, body, author).await,
        Err(e) => Err(e),
    };
    match updated {
        Ok(_) => Redirect::to(&format!("/ui/extensions/{}?saved=1", percent(&id))).into_response(),
        Err(ApiError::NotFound(m)) => error_page(StatusCode::NOT_FOUND, "Not found", &m),
        Err(e) => form_page(&state, &viewer, StatusCode::BAD_REQUEST, Some(&id), echo(&form), Some(e)),
    }
}

async fn delete_form(State(state): State<AppState>, Editor(viewer): Editor, Path(id): Path<String>) -> Response {
    page(StatusCode::OK, "delete.html", context! { ..base(&state, &viewer, None), ..context! { number => id } })
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    FormWrite { author, .. }: FormWrite,
) -> Response {
    match super::api::delete_entry(&state, &id, author).await {
        Ok(_) => Redirect::to("/ui/extensions").into_response(),
        Err(e) => api_error_page(e),
    }
}

/// The fields of a `multipart/form-data` body (a file field's content as
/// text), or of a urlencoded one. Bounded by axum's body limit.
pub(crate) fn form_fields(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Some(boundary) = ct
        .strip_prefix("multipart/form-data")
        .and_then(|rest| rest.split(';').map(str::trim).find_map(|p| p.strip_prefix("boundary=")))
        .map(|b| b.trim_matches('"').to_string())
    else {
        return urlencoded(body);
    };
    let text = String::from_utf8_lossy(body);
    let mut out = HashMap::new();
    for part in text.split(&format!("--{boundary}")) {
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let Some((head, content)) = part.split_once("\r\n\r\n") else { continue };
        let Some(name) = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .and_then(|l| l.split(';').map(str::trim).find_map(|p| p.strip_prefix("name=")))
            .map(|n| n.trim_matches('"').to_string())
        else {
            continue;
        };
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        out.insert(name, content.to_string());
    }
    out
}

fn import_page(state: &AppState, viewer: &Viewer, status: StatusCode, extra: minijinja::Value) -> Response {
    page(status, "import.html", context! { ..base(state, viewer, None), ..extra })
}

async fn import_form(State(state): State<AppState>, Editor(viewer): Editor) -> Response {
    import_page(&state, &viewer, StatusCode::OK, context! {})
}

/// The CSV of the form: the uploaded file, else the pasted text.
fn csv_of(form: &HashMap<String, String>) -> String {
    form.get("file").filter(|f| !f.trim().is_empty()).or_else(|| form.get("csv")).cloned().unwrap_or_default()
}

fn import_errors(state: &AppState, viewer: &Viewer, e: ApiError) -> Response {
    match e {
        ApiError::BadRequest(m, details) => {
            let errors: Vec<String> = details
                .iter()
                .map(|d| match (d.line, &d.field) {
                    (Some(l), Some(f)) => format!("line {l}, {f}: {}", d.message),
                    (Some(l), None) => format!("line {l}: {}", d.message),
                    _ => d.message.clone(),
                })
                .collect();
            let errors = if errors.is_empty() { vec![m.clone()] } else { errors };
            import_page(state, viewer, StatusCode::BAD_REQUEST, context! { errors => errors, error => m })
        }
        other => api_error_page(other),
    }
}

/// Upload → the plan, and a confirm button; nothing is written.
async fn import_preview(State(state): State<AppState>, FormWrite { viewer, form, .. }: FormWrite) -> Response {
    let csv = csv_of(&form);
    match super::api::import_plan(&state, &csv).await {
        Ok(plan) => {
            let rows: Vec<Value> = plan
                .changes
                .iter()
                .map(|c| {
                    let get =
                        |f: &str| c.fields.iter().find(|x| x.field == f).and_then(|x| x.to.clone()).unwrap_or_default();
                    json!({"extension": c.extension, "action": c.action.as_str(), "name": get("displayName"),
                           "context": get("context"), "transport": get("transport"), "codecs": get("codecs"),
                           "options": get("options")})
                })
                .collect();
            let view = json!({"file": plan.file, "changes": rows, "ignored": plan.ignored});
            // The CSV may hold passwords: it stays in memory here, never in the page.
            let Some(session) = &viewer.session else { return Redirect::to("/ui/signin").into_response() };
            let id = random_token();
            if id.is_empty() {
                return api_error_page(ApiError::Internal("no randomness for an import token".into()));
            }
            remember_import(&id, &session.csrf, csv);
            import_page(&state, &viewer, StatusCode::OK, context! { plan => view, import_id => id })
        }
        Err(e) => import_errors(&state, &viewer, e),
    }
}

/// Confirm → one commit.
async fn import_confirm(State(state): State<AppState>, FormWrite { viewer, author, form }: FormWrite) -> Response {
    let csrf = viewer.csrf().to_string();
    let Some(csv) = form.get("import").and_then(|id| take_import(id, &csrf)) else {
        return import_page(
            &state,
            &viewer,
            StatusCode::BAD_REQUEST,
            context! { errors => vec!["This preview expired or was already imported: upload the file again."] },
        );
    };
    match super::api::import_apply(&state, &csv, author).await {
        Ok((plan, done)) => {
            let view = json!({"count": plan.changes.len(), "file": plan.file, "commit": Some(done.commit.as_str()).filter(|c| !c.is_empty())});
            import_page(&state, &viewer, StatusCode::OK, context! { done => view })
        }
        Err(e) => import_errors(&state, &viewer, e),
    }
}

/// `application/x-www-form-urlencoded` pairs (`+` is a space, `%XX` a byte).
fn urlencoded(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    match std::str::from_utf8(&b[i + 1..(i + 3).min(b.len())])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(v) if i + 3 <= b.len() => {
                            out.push(v);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Previewed imports waiting for their confirm: id → (the session's CSRF
/// token, when, the CSV). In memory only (the CSV may hold passwords); at
/// most 16, for 15 minutes, each confirmed once.
type Pending = Mutex<Vec<(String, String, Instant, String)>>;

fn pending() -> &'static Pending {
    static P: OnceLock<Pending> = OnceLock::new();
    P.get_or_init(|| Mutex::new(Vec::new()))
}

const IMPORT_TTL: Duration = Duration::from_secs(15 * 60);

fn remember_import(id: &str, csrf: &str, csv: String) {
    let mut p = pending().lock().unwrap_or_else(|e| e.into_inner());
    p.retain(|(_, _, at, _)| at.elapsed() < IMPORT_TTL);
    if p.len() >= 16 {
        p.remove(0);
    }
    p.push((id.to_string(), csrf.to_string(), Instant::now(), csv));
}

/// The CSV previewed as `id` in the session with `csrf`, taken out.
fn take_import(id: &str, csrf: &str) -> Option<String> {
    let mut p = pending().lock().unwrap_or_else(|e| e.into_inner());
    p.retain(|(_, _, at, _)| at.elapsed() < IMPORT_TTL);
    let i = p.iter().position(|(i, c, _, _)| {
        bool::from(i.as_bytes().ct_eq(id.as_bytes()))
            && !c.is_empty()
            && bool::from(c.as_bytes().ct_eq(csrf.as_bytes()))
    })?;
    Some(p.remove(i).3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_read_as_urlencoded_or_multipart() {
        let f = urlencoded(b"csrf=a%2Bb&csv=x%2Cy+z%0A1&bad=%zz");
        assert_eq!((f["csrf"].as_str(), f["csv"].as_str(), f["bad"].as_str()), ("a+b", "x,y z\n1", "%zz"));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("multipart/form-data; boundary=XyZ"));
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\ntok\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\nContent-Type: text/csv\r\n\r\nextension,name\r\n1,A\r\n\r\n--XyZ--\r\n";
        let f = form_fields(&h, body.as_bytes());
        assert_eq!(f["csrf"], "tok");
        assert_eq!(f["file"], "extension,name\r\n1,A\r\n");
    }

    #[test]
    fn a_stored_diagnostic_reads_as_the_run_page_lists_it() {
        let loc = crate::core::diag::Location { file: "team.yaml".into(), line: 3, column: 7 };
        let d =
            crate::core::diag::Diagnostic::error("unknown-codec", loc, "extensions[0].codecs", "unknown codec g7299");
        let line: super::super::views::DiagnosticLine =
            serde_json::from_value(serde_json::to_value(&d).expect("json")).expect("reads");
        assert_eq!(
            (line.file.as_str(), line.line, line.column, line.field.as_str(), line.message.as_str()),
            ("team.yaml", 3, 7, "extensions[0].codecs", "unknown codec g7299")
        );
    }

    #[test]
    fn the_options_box_reads_one_option_a_line() {
        let v = options_of_text("timers = required\naor.minimum_expiration = 120\nauth.realm=example.com\nnonsense\n");
        assert_eq!(
            v,
            json!({"endpoint": {"timers": "required", "nonsense": ""}, "aor": {"minimum_expiration": "120"}, "auth": {"realm": "example.com"}})
        );
        let mut m = std::collections::BTreeMap::new();
        m.insert("aor.minimum_expiration".to_string(), "120".to_string());
        m.insert("endpoint.timers".to_string(), "required".to_string());
        assert_eq!(options_text(&m), "timers = required\naor.minimum_expiration = 120");
    }
}
