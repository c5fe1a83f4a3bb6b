//! JSON read routes: the seed's GET /extensions, /extensions/:id and
//! /extensions/:id/status, and the daemon's /status, /runs, /runs/:id,
//! /calls and /readyz.
//!
//! Lists are served from the database (the applied state) and a snapshot of
//! the registrations that a background task refreshes over AMI
//! ([`Registrations`]), so listing 10k extensions never waits on Asterisk;
//! only `/extensions/:id/status` asks Asterisk live (503 when it cannot
//! reach it; the applied state and `asterisk: "not configured"` when none is
//! configured). Counts and pages come from the database's own queries
//! (`db::read`), not from every row loaded per request. Every answer is a
//! typed view (`views`), which the UI renders from too.

use super::auth::Database;
use super::views::{
    AsteriskView, CallLoggerView, Condition, DatabaseView, DriftItem, ExtensionView, LiveStatusView,
    NodeRegistrationView, NodeView, ReadyView, RegistrationSummary, SoftphoneSettings, StatusView, SyncView,
};
use super::{ApiError, AppState};
use crate::asterisk::{Contact, EndpointDetail};
use crate::core::status::SyncState;
use crate::db::calls::CallFilter;
use crate::db::{Db, ExtensionRecord};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The last registrations read from Asterisk, by endpoint.
#[derive(Clone, Debug, Default)]
pub struct Registrations {
    pub read_at: Option<DateTime<Utc>>,
    pub by_endpoint: Arc<BTreeMap<String, Vec<Contact>>>,
    /// Why the last read failed, if it did.
    pub error: Option<String>,
}

impl Registrations {
    /// (contacts, registered): an extension is registered when one of its
    /// contacts is alive — reachable, or not qualified — not merely present:
    /// a phone that crashed leaves an unreachable contact behind.
    pub fn of(&self, number: &str) -> (usize, bool) {
        let contacts = self.by_endpoint.get(number).map(Vec::as_slice).unwrap_or_default();
        (contacts.len(), contacts.iter().any(Contact::alive))
    }
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/status", get(status))
        .route("/extensions", get(list))
        .route("/extensions.csv", get(list_csv))
        .route("/extensions/{id}", get(one))
        .route("/extensions/{id}/status", get(live_status))
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/calls", get(calls))
        .route("/calls/active", get(active_calls))
        .route("/calls/{id}", get(one_call))
        .route("/metrics", get(metrics))
        .route("/schema", get(|| async { Json(crate::core::schema::spec_schema()) }))
        .route("/openapi.json", get(openapi))
}

/// Midnight today in the daemon's local time (the PBX's day), as UTC: where
/// "calls today" start.
pub fn today_start() -> DateTime<Utc> {
    use chrono::TimeZone;
    let now = chrono::Local::now();
    let midnight = now.date_naive().and_hms_opt(0, 0, 0).unwrap_or_else(|| now.naive_local());
    chrono::Local.from_local_datetime(&midnight).earliest().map(|t| t.with_timezone(&Utc)).unwrap_or_else(Utc::now)
}

/// The OpenAPI document (src/http/openapi.json; a test keeps it and the
/// routes in step).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Prometheus text format: runs by outcome, the run duration histogram,
/// drift, extensions, registered endpoints, Asterisk up, call events.
async fn metrics(State(state): State<AppState>, Database(db): Database) -> Result<impl IntoResponse, ApiError> {
    use std::fmt::Write;
    const BUCKETS_MS: [i64; 9] = [10, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
    let stats = db.run_stats(&BUCKETS_MS).await.map_err(internal)?;
    let counts = db.sync_counts().await.map_err(internal)?;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP asterisk_gitops_runs_total Reconcile runs, by outcome.");
    let _ = writeln!(out, "# TYPE asterisk_gitops_runs_total counter");
    for s in &stats {
        let _ = writeln!(out, "asterisk_gitops_runs_total{{outcome=\"{}\"}} {}", s.outcome, s.count);
    }
    let _ = writeln!(out, "# HELP asterisk_gitops_run_duration_seconds How long reconcile runs take.");
    let _ = writeln!(out, "# TYPE asterisk_gitops_run_duration_seconds histogram");
    for (i, b) in BUCKETS_MS.iter().enumerate() {
        let n: i64 = stats.iter().map(|s| s.buckets.get(i).copied().unwrap_or(0)).sum();
        let _ = writeln!(out, "asterisk_gitops_run_duration_seconds_bucket{{le=\"{}\"}} {n}", *b as f64 / 1000.0);
    }
    let count: i64 = stats.iter().map(|s| s.count).sum();
    let total: i64 = stats.iter().map(|s| s.total_ms).sum();
    let _ = writeln!(out, "asterisk_gitops_run_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "asterisk_gitops_run_duration_seconds_sum {}", total as f64 / 1000.0);
    let _ = writeln!(out, "asterisk_gitops_run_duration_seconds_count {count}");
    let last = match &state.reconcile {
        Some(h) => h.last.read().await.clone(),
        None => None,
    };
    if let Some(drift) = last.as_ref().and_then(|r| r.record.plan.as_ref()).map(|p| p.drift.len()) {
        let _ = writeln!(out, "# HELP asterisk_gitops_drift_items Drift found by the last run.");
        let _ = writeln!(out, "# TYPE asterisk_gitops_drift_items gauge");
        let _ = writeln!(out, "asterisk_gitops_drift_items {drift}");
    }
    let _ = writeln!(out, "# HELP asterisk_gitops_extensions Managed extensions, by sync status.");
    let _ = writeln!(out, "# TYPE asterisk_gitops_extensions gauge");
    for (status, n) in every_state(&counts) {
        let _ = writeln!(out, "asterisk_gitops_extensions{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP asterisk_gitops_leader Whether this replica leads (reconciles and logs calls).");
    let _ = writeln!(out, "# TYPE asterisk_gitops_leader gauge");
    let _ = writeln!(out, "asterisk_gitops_leader {}", u8::from(is_leader(&state)));
    let reconciling = db.status().await.map_err(internal)?.is_some_and(|r| r.reconciling);
    let _ = writeln!(out, "# HELP asterisk_gitops_reconciling Whether a reconcile run is under way.");
    let _ = writeln!(out, "# TYPE asterisk_gitops_reconciling gauge");
    let _ = writeln!(out, "asterisk_gitops_reconciling {}", u8::from(reconciling));
    if state.live.asterisk.is_some() {
        let (regs, known) = registrations(&state);
        let _ = writeln!(out, "# HELP asterisk_gitops_asterisk_up Whether the last AMI read of registrations worked.");
        let _ = writeln!(out, "# TYPE asterisk_gitops_asterisk_up gauge");
        let _ = writeln!(out, "asterisk_gitops_asterisk_up {}", u8::from(known));
        if known {
            let registered = regs.by_endpoint.values().filter(|c| c.iter().any(Contact::alive)).count();
            let _ = writeln!(out, "# HELP asterisk_gitops_registered_endpoints Endpoints with at least one contact.");
            let _ = writeln!(out, "# TYPE asterisk_gitops_registered_endpoints gauge");
            let _ = writeln!(out, "asterisk_gitops_registered_endpoints {registered}");
        }
    }
    if state.live.nodes.len() > 1 {
        // Per node (`nodes:`), from each node's registrations snapshot; the
        // names are letters, digits, `.`, `-` and `_` (config checks), safe as label values.
        let _ =
            writeln!(out, "# HELP asterisk_gitops_node_up Whether the node's last AMI read of registrations worked.");
        let _ = writeln!(out, "# TYPE asterisk_gitops_node_up gauge");
        let snapshots: Vec<(&str, Registrations)> = state
            .live
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.registrations.read().map(|r| r.clone()).unwrap_or_default()))
            .collect();
        for (name, regs) in &snapshots {
            let up = regs.read_at.is_some() && regs.error.is_none();
            let _ = writeln!(out, "asterisk_gitops_node_up{{node=\"{name}\"}} {}", u8::from(up));
        }
        let _ = writeln!(
            out,
            "# HELP asterisk_gitops_node_registered_endpoints Endpoints with a live contact on the node."
        );
        let _ = writeln!(out, "# TYPE asterisk_gitops_node_registered_endpoints gauge");
        for (name, regs) in snapshots.iter().filter(|(_, r)| r.read_at.is_some()) {
            let registered = regs.by_endpoint.values().filter(|c| c.iter().any(Contact::alive)).count();
            let _ = writeln!(out, "asterisk_gitops_node_registered_endpoints{{node=\"{name}\"}} {registered}");
        }
        let _ = writeln!(out, "# HELP asterisk_gitops_node_call_log_up Whether the node's call logger is connected.");
        let _ = writeln!(out, "# TYPE asterisk_gitops_node_call_log_up gauge");
        for n in state.live.nodes.iter() {
            if let Some(c) = &n.calls {
                let up = c.connected.load(std::sync::atomic::Ordering::Relaxed);
                let _ = writeln!(out, "asterisk_gitops_node_call_log_up{{node=\"{}\"}} {}", n.name, u8::from(up));
            }
        }
        // The call logger's counters of every node (the unlabelled ones
        // below are the first node's, as with one Asterisk).
        type Counter = (&'static str, &'static str, fn(&crate::calls::CallLogStats) -> u64);
        let counters: [Counter; 3] = [
            ("call_events_total", "Events read by the node's call logger.", |c| {
                c.events.load(std::sync::atomic::Ordering::Relaxed)
            }),
            ("call_events_handled_total", "Events the node's call logger is done with (recorded or skipped).", |c| {
                c.events_handled.load(std::sync::atomic::Ordering::Relaxed)
            }),
            ("call_log_connect_failures_total", "Failed attempts of the node's call logger to connect.", |c| {
                c.connect_failures.load(std::sync::atomic::Ordering::Relaxed)
            }),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP asterisk_gitops_node_{name} {help}");
            let _ = writeln!(out, "# TYPE asterisk_gitops_node_{name} counter");
            for n in state.live.nodes.iter() {
                if let Some(c) = &n.calls {
                    let _ = writeln!(out, "asterisk_gitops_node_{name}{{node=\"{}\"}} {}", n.name, value(c));
                }
            }
        }
    }
    if let Some(c) = &state.live.calls {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = writeln!(out, "# HELP asterisk_gitops_call_events_total ARI events read by the call logger.");
        let _ = writeln!(out, "# TYPE asterisk_gitops_call_events_total counter");
        let _ = writeln!(out, "asterisk_gitops_call_events_total {}", c.events.load(Relaxed));
        let _ = writeln!(
            out,
            "# HELP asterisk_gitops_call_events_handled_total ARI events the call logger is done with (recorded or skipped)."
        );
        let _ = writeln!(out, "# TYPE asterisk_gitops_call_events_handled_total counter");
        let _ = writeln!(out, "asterisk_gitops_call_events_handled_total {}", c.events_handled.load(Relaxed));
        let _ = writeln!(
            out,
            "# HELP asterisk_gitops_ari_connect_failures_total Failed attempts to open the ARI events socket."
        );
        let _ = writeln!(out, "# TYPE asterisk_gitops_ari_connect_failures_total counter");
        let _ = writeln!(out, "asterisk_gitops_ari_connect_failures_total {}", c.connect_failures.load(Relaxed));
        let _ = writeln!(out, "# HELP asterisk_gitops_ari_up Whether the call logger's events socket is open.");
        let _ = writeln!(out, "# TYPE asterisk_gitops_ari_up gauge");
        let _ = writeln!(out, "asterisk_gitops_ari_up {}", u8::from(c.connected.load(Relaxed)));
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out))
}

/// How many extensions are in each sync state (every state, 0 included),
/// from the database's counts of the states that occur.
fn every_state(counts: &BTreeMap<String, i64>) -> Vec<(&'static str, i64)> {
    SyncState::ALL.iter().map(|s| (s.as_str(), counts.get(s.as_str()).copied().unwrap_or(0))).collect()
}

/// A run under way for longer than this is shown as stalled.
pub const STALLED_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// `GET /extensions.csv`: the applied (and declared) extensions as our CSV; no secret.
async fn list_csv(Database(db): Database) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let records = db.extensions().await.map_err(internal)?;
    let rows: Vec<crate::import::csv::ExportRow> = records.iter().map(export_row).collect();
    let body = crate::import::csv::export_rows(&rows);
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"extensions.csv\""),
        ],
        body,
    )
        .into_response())
}

fn export_row(r: &crate::db::ExtensionRecord) -> crate::import::csv::ExportRow {
    let flag = |b: Option<bool>| b.map(|b| if b { "yes" } else { "no" }.to_string()).unwrap_or_default();
    crate::import::csv::ExportRow {
        values: [
            r.number.clone(),
            r.display_name.clone().unwrap_or_default(),
            r.context.clone(),
            r.transport.clone(),
            r.codecs.join(","),
            r.max_contacts.to_string(),
            r.qualify_frequency.to_string(),
            // The caller id the display name gives is not a callerId of its own.
            r.caller_id
                .clone()
                .filter(|c| r.display_name.as_ref().is_none_or(|d| *c != format!("\"{d}\" <{}>", r.number)))
                .unwrap_or_default(),
            r.mailboxes.join(","),
            r.dtmf_mode.clone().unwrap_or_default(),
            r.profile.clone(),
            flag(r.direct_media),
            flag(r.rtp_symmetric),
            flag(r.force_rport),
            flag(r.rewrite_contact),
            flag(Some(r.enabled)),
        ],
        options: r.options.clone(),
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

pub(crate) fn registration(regs: &Registrations, known: bool, number: &str) -> RegistrationSummary {
    let (n, alive) = regs.of(number);
    RegistrationSummary { registered: known.then_some(alive), contacts: n }
}

pub(crate) fn registrations(state: &AppState) -> (Registrations, bool) {
    let regs = state.live.registrations.read().map(|r| r.clone()).unwrap_or_default();
    let known = regs.read_at.is_some() && regs.error.is_none();
    (regs, known)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Matches number, display name, context or a label value (case-insensitive).
    q: Option<String>,
    /// `synced`, `failed`, …
    sync: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

/// Whether a search for `q` finds `r`.
pub(crate) fn matches(r: &ExtensionRecord, q: &str) -> bool {
    let q = q.to_lowercase();
    r.number.contains(&q)
        || r.display_name.as_deref().is_some_and(|d| d.to_lowercase().contains(&q))
        || r.context.to_lowercase().contains(&q)
        || r.labels.values().any(|v| v.to_lowercase().contains(&q))
}

async fn list(
    State(state): State<AppState>,
    Database(db): Database,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text(), Vec::new()))?;
    if let Some(s) = &query.sync
        && SyncState::parse(s).is_none()
    {
        let known: Vec<&str> = SyncState::ALL.iter().map(SyncState::as_str).collect();
        return Err(ApiError::BadRequest(format!("sync {s:?} is not one of {}", known.join(", ")), Vec::new()));
    }
    let page = page_of(&db, query.q.as_deref(), query.sync.as_deref(), query.offset.unwrap_or(0), query.limit).await?;
    let (regs, known) = registrations(&state);
    let views: Vec<ExtensionView> = page.records.iter().map(|r| extension_view(r, &regs, known)).collect();
    let mut resp = Json(views).into_response();
    if let Ok(v) = page.total.to_string().parse() {
        resp.headers_mut().insert("x-total-count", v);
    }
    Ok(resp)
}

/// One page of the extensions matching `q` (see [`matches`]) in state
/// `sync`: paged by the database; a search the database can pre-filter
/// loads only its candidates, any other loads every row.
pub(crate) async fn page_of(
    db: &Db,
    q: Option<&str>,
    sync: Option<&str>,
    offset: usize,
    limit: Option<usize>,
) -> Result<crate::db::read::ExtensionPage, ApiError> {
    let limit = limit.unwrap_or(usize::MAX);
    let Some(q) = q.filter(|q| !q.is_empty()) else {
        return db.extensions_page(sync, offset, limit).await.map_err(internal);
    };
    let candidates = match db.extensions_matching(q).await.map_err(internal)? {
        Some(c) => c,
        None => db.extensions().await.map_err(internal)?,
    };
    let matching: Vec<ExtensionRecord> =
        candidates.into_iter().filter(|r| matches(r, q)).filter(|r| sync.is_none_or(|s| r.sync_status == s)).collect();
    let total = matching.len();
    Ok(crate::db::read::ExtensionPage { total, records: matching.into_iter().skip(offset).take(limit).collect() })
}

pub(crate) fn extension_view<'a>(r: &'a ExtensionRecord, regs: &Registrations, known: bool) -> ExtensionView<'a> {
    ExtensionView { extension: &r.number, record: r, registration: registration(regs, known, &r.number) }
}

async fn one(
    State(state): State<AppState>,
    Database(db): Database,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let record =
        db.extension(&id).await.map_err(internal)?.ok_or_else(|| {
            ApiError::NotFound(format!("extension {id} is not applied (is it declared and reconciled?)"))
        })?;
    let (regs, known) = registrations(&state);
    Ok(Json(serde_json::to_value(extension_view(&record, &regs, known)).map_err(internal)?))
}

/// Where Asterisk's view differs from what was applied.
pub(crate) fn drift(record: &ExtensionRecord, live: &EndpointDetail) -> Vec<DriftItem> {
    [
        DriftItem::differs("context", json!(record.context), json!(live.context)),
        DriftItem::differs("transport", json!(record.transport), json!(live.transport)),
        DriftItem::differs("codecs", json!(record.codecs), json!(live.codecs)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The drift of an extension from its record and Asterisk's endpoint, when
/// Asterisk was asked.
pub(crate) fn drift_of(record: Option<&ExtensionRecord>, detail: Option<&EndpointDetail>) -> Vec<DriftItem> {
    match (record, detail) {
        (Some(r), Some(d)) => drift(r, d),
        (Some(_), None) => vec![DriftItem::note("endpoint", "applied but not loaded by Asterisk")],
        (None, Some(_)) => vec![DriftItem::note("endpoint", "in Asterisk but not managed")],
        (None, None) => Vec::new(),
    }
}

async fn live_status(
    State(state): State<AppState>,
    Database(db): Database,
    Path(id): Path<String>,
) -> Result<Json<LiveStatusView>, ApiError> {
    let record = db.extension(&id).await.map_err(internal)?;
    let Some(asterisk) = state.live.asterisk.as_ref() else {
        // The embedded default: no Asterisk to ask, so the applied state alone.
        let Some(r) = &record else {
            return Err(ApiError::NotFound(format!(
                "extension {id} is not applied (and Asterisk is not configured, so it was not looked for there)"
            )));
        };
        let calls_today = db.extension_call_stats(&id, today_start()).await.map_err(internal)?;
        return Ok(Json(LiveStatusView {
            extension: id.clone(),
            registered: None,
            contacts: Vec::new(),
            endpoint: None,
            sync: Some(SyncView::from(r)),
            drift: Vec::new(),
            softphone: Some(SoftphoneSettings {
                server: state.live.sip_server.clone(),
                username: id.clone(),
                auth_username: id,
                transport: r.transport.clone(),
            }),
            calls_today,
            nodes: Vec::new(),
            asterisk: Some("not configured"),
        }));
    };
    // Every node at once, each with a bounded wait: one that does not
    // answer is reported and holds no other back. The endpoint is the first
    // answering node's (the canary's when it answers).
    let fallback;
    let nodes: Vec<(&str, &crate::asterisk::Asterisk)> = if state.live.nodes.is_empty() {
        fallback = [("default", asterisk.as_ref())];
        fallback.to_vec()
    } else {
        state.live.nodes.iter().map(|n| (n.name.as_str(), n.asterisk.as_ref())).collect()
    };
    let asks = nodes.iter().map(|(name, a)| {
        let id = id.as_str();
        async move {
            let ask = async {
                let detail = a.endpoint(id).await?;
                let contacts: Vec<Contact> = a.contacts().await?.into_iter().filter(|c| c.endpoint == id).collect();
                Ok::<_, crate::asterisk::AmiError>((detail, contacts))
            };
            let answer = match tokio::time::timeout(LIVE_WAIT, ask).await {
                Ok(Ok(a)) => Ok(a),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} s", LIVE_WAIT.as_secs())),
            };
            (name.to_string(), answer)
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut detail = None;
    let mut contacts: Vec<Contact> = Vec::new();
    let mut per_node = Vec::new();
    let mut first_error = None;
    for (node, answer) in answers {
        match answer {
            Ok((d, c)) => {
                if detail.is_none() {
                    detail = d;
                }
                per_node.push(NodeRegistrationView {
                    node,
                    registered: Some(c.iter().any(Contact::alive)),
                    contacts: c.clone(),
                    error: None,
                });
                contacts.extend(c);
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.clone());
                per_node.push(NodeRegistrationView { node, registered: None, contacts: Vec::new(), error: Some(e) });
            }
        }
    }
    if let (Some(e), false) = (&first_error, per_node.iter().any(|n| n.registered.is_some())) {
        return Err(ApiError::Unavailable(format!("Asterisk is unreachable for a live status: {e}")));
    }
    if record.is_none() && detail.is_none() {
        return Err(ApiError::NotFound(format!("extension {id} is neither applied nor in Asterisk")));
    }
    let drift = drift_of(record.as_ref(), detail.as_ref());
    let calls_today = db.extension_call_stats(&id, today_start()).await.map_err(internal)?;
    let softphone = detail.as_ref().map(|d| SoftphoneSettings {
        username: id.clone(),
        auth_username: if d.auth.is_empty() { id.clone() } else { d.auth.clone() },
        transport: d.transport.clone(),
        server: state.live.sip_server.clone(),
    });
    Ok(Json(LiveStatusView {
        registered: Some(contacts.iter().any(Contact::alive)),
        extension: id,
        contacts,
        endpoint: detail,
        sync: record.as_ref().map(SyncView::from),
        drift,
        softphone,
        calls_today,
        nodes: per_node,
        asterisk: None,
    }))
}

/// One extension's contacts on every node (asked all at once, each bounded
/// by [`LIVE_WAIT`]), for the UI's extension page.
pub(crate) async fn registrations_per_node(state: &AppState, id: &str) -> Vec<NodeRegistrationView> {
    let asks = state.live.nodes.iter().map(|n| async move {
        match tokio::time::timeout(LIVE_WAIT, n.asterisk.contacts()).await {
            Ok(Ok(c)) => {
                let contacts: Vec<Contact> = c.into_iter().filter(|c| c.endpoint == id).collect();
                NodeRegistrationView {
                    node: n.name.clone(),
                    registered: Some(contacts.iter().any(Contact::alive)),
                    contacts,
                    error: None,
                }
            }
            Ok(Err(e)) => NodeRegistrationView {
                node: n.name.clone(),
                registered: None,
                contacts: Vec::new(),
                error: Some(e.to_string()),
            },
            Err(_) => NodeRegistrationView {
                node: n.name.clone(),
                registered: None,
                contacts: Vec::new(),
                error: Some(format!("no answer within {} s", LIVE_WAIT.as_secs())),
            },
        }
    });
    futures_util::future::join_all(asks).await
}

/// The longest a read route waits for one node's answer.
const LIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Every node's reachability and version (asked all at once, each bounded
/// by [`LIVE_WAIT`]), its registrations from the last snapshot and its last run.
pub(crate) async fn node_views(state: &AppState) -> Vec<NodeView> {
    let applies = state.live.applies.read().map(|a| a.clone()).unwrap_or_default();
    let asks = state.live.nodes.iter().map(|n| {
        let last_apply = applies.get(&n.name).cloned();
        async move {
            let (reachable, version, error) = match tokio::time::timeout(LIVE_WAIT, n.asterisk.version()).await {
                Ok(Ok(v)) => (true, Some(v.asterisk_version), None),
                Ok(Err(e)) => (false, None, Some(e.to_string())),
                Err(_) => (false, None, Some(format!("no answer within {} s", LIVE_WAIT.as_secs()))),
            };
            let regs = n.registrations.read().map(|r| r.clone()).unwrap_or_default();
            let registrations =
                regs.read_at.map(|_| regs.by_endpoint.values().filter(|c| c.iter().any(Contact::alive)).count());
            let call_logger = n.calls.as_ref().map(|c| CallLoggerView {
                connected: c.connected.load(std::sync::atomic::Ordering::Relaxed),
                events: c.events.load(std::sync::atomic::Ordering::Relaxed),
            });
            NodeView {
                name: n.name.clone(),
                reachable,
                version,
                registrations,
                registrations_read_at: regs.read_at,
                error,
                last_apply,
                call_logger,
            }
        }
    });
    futures_util::future::join_all(asks).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    limit: Option<i64>,
}

async fn runs(
    Database(db): Database,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text(), Vec::new()))?;
    let runs = db.runs(q.limit.unwrap_or(50).clamp(1, 500)).await.map_err(internal)?;
    Ok(Json(runs))
}

async fn run(Database(db): Database, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let n: i64 = id.parse().map_err(|_| ApiError::BadRequest(format!("run id {id:?} is not a number"), Vec::new()))?;
    let run = db.run(n).await.map_err(internal)?.ok_or_else(|| ApiError::NotFound(format!("no run {n}")))?;
    Ok(Json(run))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    /// Only the calls of this node (`nodes:`; `default` with one Asterisk).
    node: Option<String>,
    extension: Option<String>,
    direction: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: Option<i64>,
    cursor: Option<i64>,
    /// `csv` for a CSV export (the same rows and filters); JSON otherwise.
    format: Option<String>,
}

/// The calls happening now, oldest first, each with its legs (parties),
/// `state` (`ringing`, `up`) and `durationSeconds` so far.
async fn active_calls(Database(db): Database) -> Result<impl IntoResponse, ApiError> {
    let now = Utc::now();
    let calls = db.active_calls().await.map_err(internal)?;
    let out: Vec<_> = calls
        .into_iter()
        .map(|c| {
            let mut v = serde_json::to_value(&c).unwrap_or_default();
            v["durationSeconds"] = json!((now - c.call.start_time).num_seconds().max(0));
            v["talkSeconds"] = json!(c.call.answer_time.map(|a| (now - a).num_seconds().max(0)));
            v
        })
        .collect();
    Ok(Json(json!({"count": out.len(), "calls": out})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneCallQuery {
    node: Option<String>,
}

/// One call by its id (`channelId`: Asterisk's linkedid), with its legs;
/// `?node=` names the node (a linkedid repeats across Asterisk servers;
/// without it, the newest call of that id).
async fn one_call(
    Database(db): Database,
    Path(id): Path<String>,
    query: Result<Query<OneCallQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text(), Vec::new()))?;
    let (call, legs) = db
        .call_with_legs(q.node.as_deref(), &id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no call {id}")))?;
    let mut v = serde_json::to_value(&call).unwrap_or_default();
    v["legs"] = serde_json::to_value(&legs).unwrap_or_default();
    Ok(Json(v))
}

/// A CSV field: quoted when it holds a comma, a quote or a line break; a
/// leading `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet
/// never runs it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_string() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

fn calls_csv(calls: &[crate::db::calls::CallRecord]) -> String {
    let mut out = String::from(
        "id,channelId,extension,caller,callee,direction,startTime,answerTime,endTime,durationSeconds,hangupCause,disposition,answeredBy,hangupBy,transfers,node\r\n",
    );
    let t = |d: Option<DateTime<Utc>>| d.map(|d| d.to_rfc3339()).unwrap_or_default();
    let o = |s: &Option<String>| csv_field(s.as_deref().unwrap_or(""));
    let n = |x: Option<i64>| x.map(|x| x.to_string()).unwrap_or_default();
    for c in calls {
        let row = [
            c.id.to_string(),
            csv_field(&c.channel_id),
            o(&c.extension),
            o(&c.caller),
            o(&c.callee),
            csv_field(&c.direction),
            c.start_time.to_rfc3339(),
            t(c.answer_time),
            t(c.end_time),
            n(c.duration_seconds),
            n(c.hangup_cause),
            o(&c.disposition),
            o(&c.answered_by),
            o(&c.hangup_by),
            c.transfers.to_string(),
            o(&c.node),
        ];
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

async fn calls(
    Database(db): Database,
    query: Result<Query<CallsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text(), Vec::new()))?;
    if let Some(d) = &q.direction
        && !["inbound", "outbound", "internal"].contains(&d.as_str())
    {
        return Err(ApiError::BadRequest(
            format!("direction {d:?} is not one of inbound, outbound, internal"),
            Vec::new(),
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = CallFilter {
        node: q.node,
        extension: q.extension,
        direction: q.direction,
        since: q.since,
        until: q.until,
        limit,
        cursor: q.cursor,
    };
    let calls = db.calls(&filter).await.map_err(internal)?;
    match q.format.as_deref() {
        None | Some("json") => {}
        Some("csv") => {
            return Ok((
                [
                    (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"calls.csv\""),
                ],
                calls_csv(&calls),
            )
                .into_response());
        }
        Some(f) => return Err(ApiError::BadRequest(format!("format {f:?} is not one of json, csv"), Vec::new())),
    }
    let next = if calls.len() as i64 == limit { calls.last().map(|c| c.id) } else { None };
    Ok(Json(json!({"calls": calls, "nextCursor": next})).into_response())
}

pub(crate) async fn readyz(Database(db): Database) -> Result<impl IntoResponse, ApiError> {
    if db.ping().await { Ok("ready") } else { Err(ApiError::Unavailable("the state database is unreachable".into())) }
}

async fn status(State(state): State<AppState>, Database(db): Database) -> Result<Json<StatusView>, ApiError> {
    Ok(Json(status_view(&state, &db).await?))
}

/// Whether this replica leads (`db::leader`); a process without an election leads.
pub(crate) fn is_leader(state: &AppState) -> bool {
    state.live.leader.as_ref().is_none_or(|r| r.borrow().is_leader())
}

/// What /status answers (and the UI's overview shows): counts from the
/// database, never every row.
pub(crate) async fn status_view(state: &AppState, db: &Db) -> Result<StatusView, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let database = db.ping().await;
    let record = db.status().await.map_err(internal)?;
    let leader = db.leader().await.map_err(internal)?;
    let runs = db.runs(5).await.map_err(internal)?;
    let counts = db.sync_counts().await.map_err(internal)?;
    let extensions: i64 = counts.values().sum();
    let not_synced = extensions - counts.get(SyncState::Synced.as_str()).copied().unwrap_or(0);
    let by_state: BTreeMap<String, i64> = every_state(&counts).into_iter().map(|(k, n)| (k.to_string(), n)).collect();
    let (regs, known) = registrations(state);
    // Only managed extensions count, and only with a live contact.
    let registered = if known {
        let alive: Vec<&str> =
            regs.by_endpoint.iter().filter(|(_, c)| c.iter().any(Contact::alive)).map(|(n, _)| n.as_str()).collect();
        Some(db.count_extensions_among(&alive).await.map_err(internal)?)
    } else {
        None
    };
    let last = match &state.reconcile {
        Some(h) => h.last.read().await.clone(),
        None => None,
    };
    let drift = last.as_ref().map(|r| r.record.plan.as_ref().map_or(0, |p| p.drift.len()));
    let asterisk = match &state.live.asterisk {
        None => AsteriskView { configured: false, reachable: None, ..Default::default() },
        Some(a) => match a.version().await {
            Ok(v) => AsteriskView {
                configured: true,
                reachable: Some(true),
                version: Some(v.asterisk_version),
                startup: Some(v.startup),
                last_reload: Some(v.last_reload),
                error: None,
            },
            Err(e) => AsteriskView {
                configured: true,
                reachable: Some(false),
                error: Some(e.to_string()),
                ..Default::default()
            },
        },
    };
    let nodes = node_views(state).await;
    let call_logger = state
        .live
        .calls
        .as_ref()
        .map(|c| CallLoggerView { connected: c.connected.load(Relaxed), events: c.events.load(Relaxed) });
    let active_calls = db.active_call_count().await.map_err(internal)?;
    let reconciling = record.as_ref().is_some_and(|r| r.reconciling);
    let since = record.as_ref().and_then(|r| r.reconciling_since).filter(|_| reconciling);
    let stalled = since.is_some_and(|t| Utc::now() - t > STALLED_AFTER);
    let conditions = record.as_ref().map(|r| {
        let ready = Condition {
            kind: "Ready",
            status: r.ready.clone(),
            reason: r.ready_reason.clone(),
            message: r.ready_message.clone(),
            step: None,
            last_transition_time: Some(r.updated_at),
        };
        let reconcile = if reconciling {
            Condition {
                kind: "Reconciling",
                status: "True".into(),
                reason: if stalled { "Stalled" } else { "Progressing" }.into(),
                message: format!("step: {}", r.reconciling_step.as_deref().unwrap_or("starting")),
                step: Some(r.reconciling_step.clone()),
                last_transition_time: since,
            }
        } else {
            Condition {
                kind: "Reconciling",
                status: "False".into(),
                reason: "Idle".into(),
                message: String::new(),
                step: None,
                last_transition_time: Some(r.updated_at),
            }
        };
        vec![ready, reconcile]
    });
    Ok(StatusView {
        leader: is_leader(state),
        leader_id: leader.as_ref().map(|l| l.instance_id.clone()),
        leader_since: leader.as_ref().map(|l| l.since),
        leader_epoch: leader.as_ref().map(|l| l.epoch),
        ready: record.as_ref().map(|r| ReadyView {
            status: r.ready.clone(),
            reason: r.ready_reason.clone(),
            message: r.ready_message.clone(),
        }),
        reconciling,
        reconciling_step: record.as_ref().and_then(|r| r.reconciling_step.clone()).filter(|_| reconciling),
        reconciling_since: since,
        stalled,
        conditions,
        sync: by_state,
        last_applied_revision: record.as_ref().and_then(|r| r.last_applied_revision.clone()),
        last_attempted_revision: record.as_ref().and_then(|r| r.last_attempted_revision.clone()),
        extensions,
        active_calls,
        not_synced,
        registered,
        drift,
        last_runs: runs,
        database: DatabaseView { backend: db.backend(), reachable: database },
        asterisk,
        nodes,
        call_logger,
        updated_at: record.as_ref().map(|r| r.updated_at),
    })
}
