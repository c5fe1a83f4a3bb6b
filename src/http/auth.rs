//! Who may read, who may write, and the database a handler needs: the
//! extractors every handler names instead of checking for itself.
//!
//! - [`Viewer`]: whoever is asking (a UI session, a bearer token's user, or
//!   nobody); the read layer (`require_reader`) lets a request through when
//!   [`Viewer::may_read`].
//! - [`Writer`]: a JSON API write: the server is not read-only and the
//!   request carries a valid bearer token (401/403 otherwise).
//! - [`Editor`]: a UI page that writes (a form to fill in): not read-only,
//!   signed in (the sign-in page otherwise).
//! - [`FormWrite`]: a UI post that writes: an [`Editor`] whose form carries
//!   its session's CSRF token, compared in constant time.
//! - [`Database`]: the state database, or 503: the one place that answers
//!   "no database".
//!
//! Architecture invariant: every route that takes a POST, PUT or DELETE is
//! registered only by `http::write_router` (never with `--read-only`),
//! except sign-in and sign-out, which change no spec and no Asterisk; each
//! write handler takes a [`Writer`] or a [`FormWrite`], which refuse in
//! read-only mode too.

use super::{ApiError, AppState};
use crate::db::Db;
use crate::git::writeback::Author;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// The UI's session cookie.
pub(crate) const COOKIE: &str = "ag_session";

/// Signed-in sessions, in memory (a restart signs everyone out).
#[derive(Default)]
pub struct Sessions(pub(crate) Mutex<HashMap<String, Session>>);

#[derive(Clone)]
pub(crate) struct Session {
    pub(crate) user: Author,
    pub(crate) csrf: String,
    pub(crate) expires: Instant,
}

pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Who is asking.
#[derive(Clone)]
pub struct Viewer {
    pub(crate) session: Option<Session>,
    /// The user of a valid bearer token, if the request carries one.
    bearer: Option<Author>,
    read_only: bool,
}

impl Viewer {
    pub(crate) fn of(state: &AppState, headers: &HeaderMap) -> Viewer {
        let session = cookie_value(headers, COOKIE).and_then(|id| {
            let mut map = state.live.sessions.0.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, s| s.expires > Instant::now());
            map.get(&id).cloned()
        });
        let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let bearer = header.and_then(|h| state.authenticate(Some(h)).ok());
        Viewer { session, bearer, read_only: state.read_only }
    }

    /// Reads are anonymous, or this request is signed in or carries a valid token.
    pub fn may_read(&self, state: &AppState) -> bool {
        state.anonymous_read || self.session.is_some() || self.bearer.is_some()
    }

    /// Whether the UI shows edit controls: not read-only, and signed in.
    pub fn can_write(&self) -> bool {
        !self.read_only && self.session.is_some()
    }

    /// The signed-in user's name.
    pub fn user(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.user.name.as_str())
    }

    /// The session's CSRF token, for the forms a page carries ("" signed out).
    pub fn csrf(&self) -> &str {
        self.session.as_ref().map_or("", |s| s.csrf.as_str())
    }

    /// The session's user, if `form` carries the session's CSRF token.
    pub(crate) fn check_csrf(&self, form: &HashMap<String, String>) -> Result<Author, Box<Response>> {
        let Some(s) = &self.session else { return Err(Box::new(Redirect::to("/ui/signin").into_response())) };
        let sent = form.get("csrf").map(String::as_bytes).unwrap_or_default();
        if s.csrf.is_empty() || !bool::from(sent.ct_eq(s.csrf.as_bytes())) {
            return Err(Box::new(super::ui::error_page(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The form expired or did not come from this site: reload it and try again.",
            )));
        }
        Ok(s.user.clone())
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        Ok(Viewer::of(state, &parts.headers))
    }
}

/// A JSON API write, by this user.
pub struct Writer(pub Author);

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.read_only {
            return Err(ApiError::Forbidden("this server is read-only".into()));
        }
        state.authenticate(parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())).map(Writer)
    }
}

/// A UI page that writes: not read-only, signed in.
pub struct Editor(pub Viewer);

impl FromRequestParts<AppState> for Editor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if state.read_only {
            // Write routes are not even registered then; this holds if one ever is.
            return Err(super::ui::error_page(StatusCode::FORBIDDEN, "Read-only", "This server is read-only."));
        }
        let viewer = Viewer::of(state, &parts.headers);
        if viewer.session.is_none() {
            return Err(Redirect::to("/ui/signin").into_response());
        }
        Ok(Editor(viewer))
    }
}

/// A UI form post that writes: an [`Editor`], the form's fields (urlencoded
/// or multipart), and the author, once the form's CSRF token is the session's.
pub struct FormWrite {
    pub viewer: Viewer,
    pub author: Author,
    pub form: HashMap<String, String>,
}

impl FromRequest<AppState> for FormWrite {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Editor(viewer) = Editor::from_request_parts(&mut parts, state).await?;
        let (viewer, author, form) = session_form(viewer, parts, body, state).await?;
        Ok(FormWrite { viewer, author, form })
    }
}

/// A form post of a signed-in session (sign-out: allowed read-only too).
pub struct SessionForm {
    pub viewer: Viewer,
}

impl FromRequest<AppState> for SessionForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let viewer = Viewer::of(state, &parts.headers);
        let (viewer, _, _) = session_form(viewer, parts, body, state).await?;
        Ok(SessionForm { viewer })
    }
}

/// Reads the form (bounded by axum's body limit) and checks its CSRF token.
async fn session_form(
    viewer: Viewer,
    parts: Parts,
    body: axum::body::Body,
    state: &AppState,
) -> Result<(Viewer, Author, HashMap<String, String>), Response> {
    if viewer.session.is_none() {
        return Err(Redirect::to("/ui/signin").into_response());
    }
    let headers = parts.headers.clone();
    let bytes = axum::body::Bytes::from_request(Request::from_parts(parts, body), state)
        .await
        .map_err(IntoResponse::into_response)?;
    let form = super::ui::form_fields(&headers, &bytes);
    let author = viewer.check_csrf(&form).map_err(|r| *r)?;
    Ok((viewer, author, form))
}

/// The state database; 503 when this process has none.
#[derive(Clone)]
pub struct Database(pub Db);

impl Database {
    /// The one answer to "no database".
    pub(crate) fn of(state: &AppState) -> Result<Db, ApiError> {
        state.live.db.clone().ok_or_else(|| ApiError::Unavailable("the state database is not connected".into()))
    }
}

impl FromRequestParts<AppState> for Database {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Database::of(state).map(Database)
    }
}
