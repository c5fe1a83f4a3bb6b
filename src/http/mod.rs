//! The HTTP side: the seed's JSON API, the git webhook, health endpoints.
//!
//! `app(state)` builds the whole router, so tests call it with `oneshot`
//! without a socket. One error type ([`ApiError`]) turns every failure into
//! `{error, message, details: [{file, line, field, message}]}` with the right
//! status; internal errors are logged and never sent.
//!
//! Routes come in three routers: the reads (`read::router`, `ui::read_router`,
//! behind the [`auth::Viewer`] check), the sign-in pages, and
//! [`write_router`]: every route that writes, registered only when the
//! server is not read-only. Handlers name what they need as extractors
//! ([`auth::Writer`], [`auth::FormWrite`], [`auth::Database`]) instead of
//! checking for themselves.
//!
//! Architecture invariant: no response carries a password or an md5 hash.
//! Passwords are write-only: one arriving in a body is turned into md5Cred
//! before anything is written.

pub mod api;
pub mod auth;
pub mod read;
pub mod ui;
pub mod views;
pub mod webhook;

use crate::core::diag::Diagnostic;
use crate::git::writeback::{Author, WriteBack};
use crate::reconcile::LoopHandle;
use crate::secret::SecretString;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// One API token: who it is, and the SHA-256 of the token (never the token).
#[derive(Clone)]
pub struct TokenEntry {
    pub user: Author,
    pub sha256: [u8; 32],
}

impl TokenEntry {
    pub fn new(user: Author, token: &str) -> Self {
        TokenEntry { user, sha256: Sha256::digest(token.as_bytes()).into() }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub spec_dir: PathBuf,
    pub writeback: Arc<WriteBack>,
    pub realm: String,
    pub tokens: Arc<Vec<TokenEntry>>,
    pub webhook_secret: Option<SecretString>,
    /// The branch the daemon follows (webhooks for other branches are ignored).
    pub branch: Option<String>,
    /// The reconcile loop, when one runs (not in `plan`/tests without a daemon).
    pub reconcile: Option<LoopHandle>,
    pub read_only: bool,
    /// Reads need no token (see `FileConfig::anonymous_read`).
    pub anonymous_read: bool,
    /// What the read routes ask: the database, Asterisk, the call logger.
    pub live: Live,
}

/// The live parts the read routes use; each may be absent (tests, `plan`).
#[derive(Clone, Default)]
pub struct Live {
    /// This replica's role among the `serve` replicas on one database
    /// (`db::leader`); `None` (tests, `plan`): a process of its own, leading.
    pub leader: Option<tokio::sync::watch::Receiver<crate::db::leader::Role>>,
    pub db: Option<crate::db::Db>,
    /// Its own AMI connection, apart from the reconciler's.
    pub asterisk: Option<Arc<crate::asterisk::Asterisk>>,
    /// Refreshed in the background (see `app::refresh_registrations`).
    pub registrations: Arc<std::sync::RwLock<read::Registrations>>,
    pub calls: Option<Arc<crate::calls::CallLogStats>>,
    /// The UI's signed-in sessions.
    pub sessions: Arc<auth::Sessions>,
    /// Where phones register (`sipServer`), for the softphone settings.
    pub sip_server: Option<String>,
    /// Every Asterisk server managed (`nodes:`, or the one AMI as
    /// `default`), the first one being `asterisk` and `registrations` above.
    pub nodes: Arc<Vec<NodeLive>>,
    /// How the last run went on each node.
    pub applies: crate::reconcile::fleet::NodeApplies,
}

/// One Asterisk server, as the read routes see it.
#[derive(Clone)]
pub struct NodeLive {
    pub name: String,
    /// Its own AMI connection, apart from the reconcilers'.
    pub asterisk: Arc<crate::asterisk::Asterisk>,
    /// Refreshed in the background (see `app::refresh_registrations`).
    pub registrations: Arc<std::sync::RwLock<read::Registrations>>,
    /// Its call logger's counters (CEL over its AMI), when calls are logged;
    /// the first node's are `Live::calls`.
    pub calls: Option<Arc<crate::calls::CallLogStats>>,
}

impl AppState {
    /// The user a bearer token belongs to; compared in constant time.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Author, ApiError> {
        if self.tokens.is_empty() {
            return Err(ApiError::Forbidden(
                "writes are disabled: configure an admin token (ASTERISK_GITOPS_ADMIN_TOKEN)".into(),
            ));
        }
        let token = header.and_then(|h| h.strip_prefix("Bearer ")).ok_or(ApiError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let mut found = None;
        for entry in self.tokens.iter() {
            // Check every entry, so timing does not tell which one matched.
            if bool::from(entry.sha256.ct_eq(&digest)) {
                found = Some(entry.user.clone());
            }
        }
        found.ok_or(ApiError::Unauthorized)
    }
}

/// One problem in a request, in the shape the seed's clients read.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Detail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl From<&Diagnostic> for Detail {
    fn from(d: &Diagnostic) -> Self {
        Detail {
            file: Some(d.location.file.clone()).filter(|f| !f.is_empty()),
            line: Some(d.location.line),
            field: Some(d.field.clone()).filter(|f| !f.is_empty()),
            message: d.message.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String, Vec<Detail>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    /// Logged in full; the client gets a generic message.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
    details: Vec<Detail>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(..) => (StatusCode::BAD_REQUEST, "bad-request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(detail) => {
                tracing::error!(detail = detail.as_str(), "internal error in an HTTP handler");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let details = match &self {
            ApiError::BadRequest(_, d) => d.clone(),
            _ => Vec::new(),
        };
        let mut response =
            (status, Json(ErrorBody { error: code, message: self.to_string(), details })).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The whole router.
pub fn app(state: AppState) -> axum::Router {
    let reads = read::router()
        .merge(ui::read_router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_reader));
    let mut router = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(read::readyz))
        .merge(reads)
        .merge(ui::signin_router(&state));
    // Read-only: no route that takes a POST, PUT or DELETE is registered,
    // the webhook included (a read-only daemon following git fetches on
    // its interval).
    if !state.read_only {
        router = router.merge(write_router());
    }
    router.with_state(state)
}

/// Every route that writes: the JSON API's edits, import, manual
/// reconcile and webhook, and the UI's forms.
pub fn write_router() -> axum::Router<AppState> {
    api::router().merge(ui::write_router())
}

/// Lets a read through when reads are anonymous, or when it carries a valid
/// bearer token or a signed-in session; otherwise 401 for the API and the
/// sign-in page for the UI.
async fn require_reader(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The read routes serve only GET (and HEAD): anything else gets its 405
    // from the router, not a sign-in redirect.
    if !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD)
        || auth::Viewer::of(&state, req.headers()).may_read(&state)
    {
        return next.run(req).await;
    }
    if req.uri().path().starts_with("/ui") || req.uri().path() == "/" {
        axum::response::Redirect::to("/ui/signin").into_response()
    } else {
        ApiError::Unauthorized.into_response()
    }
}
