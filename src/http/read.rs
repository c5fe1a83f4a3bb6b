//! JSON read routes: the seed's GET /extensions, /extensions/:id and
//! /extensions/:id/status, and the daemon's /status, /runs, /runs/:id,
//! /calls and /readyz.
//!
//! Lists are served from the database (the applied state) and a snapshot of
//! the registrations that a background task refreshes over AMI
//! ([`Registrations`]), so listing 10k extensions never waits on Asterisk;
//! only `/extensions/:id/status` asks Asterisk live (503 when it cannot).

use super::{ApiError, AppState};
use crate::asterisk::{Contact, EndpointDetail};
use crate::db::calls::CallFilter;
use crate::db::{Db, ExtensionRecord};
use crate::status::SyncState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
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
        .route("/schema", get(|| async { Json(crate::schema::spec_schema()) }))
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
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    use std::fmt::Write;
    const BUCKETS_MS: [i64; 9] = [10, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
    let db = db(&state)?;
    let stats = db.run_stats(&BUCKETS_MS).await.map_err(internal)?;
    let extensions = db.extensions().await.map_err(internal)?;
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
    for (status, n) in sync_counts(&extensions) {
        let _ = writeln!(out, "asterisk_gitops_extensions{{status=\"{status}\"}} {n}");
    }
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

/// How many extensions are in each sync state (every state, 0 included).
pub(crate) fn sync_counts(extensions: &[ExtensionRecord]) -> Vec<(&'static str, usize)> {
    SyncState::ALL
        .iter()
        .map(|s| (s.as_str(), extensions.iter().filter(|e| e.sync_status == s.as_str()).count()))
        .collect()
}

/// A run under way for longer than this is shown as stalled.
pub const STALLED_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// `GET /extensions.csv`: the applied (and declared) extensions as our CSV; no secret.
async fn list_csv(State(state): State<AppState>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let records = db(&state)?.extensions().await.map_err(internal)?;
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

pub(crate) fn db(state: &AppState) -> Result<&Db, ApiError> {
    state.live.db.as_ref().ok_or_else(|| ApiError::Unavailable("the state database is not connected".into()))
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// The registration summary of one extension.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationSummary {
    /// `None` when Asterisk's registrations are not known (not configured or unreachable).
    registered: Option<bool>,
    contacts: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtensionView<'a> {
    #[serde(flatten)]
    record: &'a ExtensionRecord,
    registration: RegistrationSummary,
}

fn registration(regs: &Registrations, known: bool, number: &str) -> RegistrationSummary {
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

pub(crate) fn matches(r: &ExtensionRecord, q: &str) -> bool {
    let q = q.to_lowercase();
    r.number.contains(&q)
        || r.display_name.as_deref().is_some_and(|d| d.to_lowercase().contains(&q))
        || r.context.to_lowercase().contains(&q)
        || r.labels.values().any(|v| v.to_lowercase().contains(&q))
}

async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text(), Vec::new()))?;
    if let Some(s) = &query.sync
        && SyncState::parse(s).is_none()
    {
        let known: Vec<&str> = SyncState::ALL.iter().map(SyncState::as_str).collect();
        return Err(ApiError::BadRequest(format!("sync {s:?} is not one of {}", known.join(", ")), Vec::new()));
    }
    let all = db(&state)?.extensions().await.map_err(internal)?;
    let (regs, known) = registrations(&state);
    let filtered: Vec<&ExtensionRecord> = all
        .iter()
        .filter(|r| query.q.as_deref().is_none_or(|q| matches(r, q)))
        .filter(|r| query.sync.as_deref().is_none_or(|s| r.sync_status == s))
        .collect();
    let total = filtered.len();
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(usize::MAX);
    let page: Vec<ExtensionView> = filtered
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|r| ExtensionView { record: r, registration: registration(&regs, known, &r.number) })
        .collect();
    let mut resp = Json(page).into_response();
    if let Ok(v) = total.to_string().parse() {
        resp.headers_mut().insert("x-total-count", v);
    }
    Ok(resp)
}

async fn one(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let record =
        db(&state)?.extension(&id).await.map_err(internal)?.ok_or_else(|| {
            ApiError::NotFound(format!("extension {id} is not applied (is it declared and reconciled?)"))
        })?;
    let (regs, known) = registrations(&state);
    let view = ExtensionView { record: &record, registration: registration(&regs, known, &id) };
    Ok(Json(serde_json::to_value(view).map_err(internal)?))
}

/// What a softphone needs to register; never the password.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SoftphoneSettings<'a> {
    /// `host[:port]` from the `sipServer` setting; `None` when not configured.
    server: Option<&'a str>,
    username: &'a str,
    auth_username: &'a str,
    transport: &'a str,
}

/// Where Asterisk's view differs from what was applied.
pub(crate) fn drift(record: &ExtensionRecord, live: &EndpointDetail) -> Vec<Value> {
    let mut out = Vec::new();
    let mut field = |name: &str, applied: Value, asterisk: Value| {
        if applied != asterisk {
            out.push(json!({"field": name, "applied": applied, "asterisk": asterisk}));
        }
    };
    field("context", json!(record.context), json!(live.context));
    field("transport", json!(record.transport), json!(live.transport));
    field("codecs", json!(record.codecs), json!(live.codecs));
    out
}

async fn live_status(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let record = db(&state)?.extension(&id).await.map_err(internal)?;
    let asterisk = state
        .live
        .asterisk
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("Asterisk is not configured (--ami-addr): no live status".into()))?;
    let detail = asterisk
        .endpoint(&id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("Asterisk is unreachable for a live status: {e}")))?;
    if record.is_none() && detail.is_none() {
        return Err(ApiError::NotFound(format!("extension {id} is neither applied nor in Asterisk")));
    }
    let contacts: Vec<Contact> = asterisk
        .contacts()
        .await
        .map_err(|e| ApiError::Unavailable(format!("Asterisk is unreachable for a live status: {e}")))?
        .into_iter()
        .filter(|c| c.endpoint == id)
        .collect();
    let drift = match (&record, &detail) {
        (Some(r), Some(d)) => drift(r, d),
        (Some(_), None) => vec![json!({"field": "endpoint", "message": "applied but not loaded by Asterisk"})],
        (None, Some(_)) => vec![json!({"field": "endpoint", "message": "in Asterisk but not managed"})],
        (None, None) => Vec::new(),
    };
    let calls_today = db(&state)?.extension_call_stats(&id, today_start()).await.map_err(internal)?;
    let softphone = detail.as_ref().map(|d| SoftphoneSettings {
        username: &id,
        auth_username: if d.auth.is_empty() { &id } else { &d.auth },
        transport: &d.transport,
        server: state.live.sip_server.as_deref(),
    });
    Ok(Json(json!({
        "extension": id,
        "registered": contacts.iter().any(Contact::alive),
        "contacts": contacts,
        "endpoint": detail,
        "sync": record.as_ref().map(|r| json!({"status": r.sync_status, "lastError": r.last_error, "runId": r.sync_run_id, "since": r.sync_since, "appliedAt": r.applied_at, "revision": r.revision})),
        "drift": drift,
        "softphone": softphone,
        "callsToday": calls_today,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    limit: Option<i64>,
}

async fn runs(
    State(state): State<AppState>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text(), Vec::new()))?;
    let runs = db(&state)?.runs(q.limit.unwrap_or(50).clamp(1, 500)).await.map_err(internal)?;
    Ok(Json(runs))
}

async fn run(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let n: i64 = id.parse().map_err(|_| ApiError::BadRequest(format!("run id {id:?} is not a number"), Vec::new()))?;
    let run = db(&state)?.run(n).await.map_err(internal)?.ok_or_else(|| ApiError::NotFound(format!("no run {n}")))?;
    Ok(Json(run))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
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
async fn active_calls(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let now = Utc::now();
    let calls = db(&state)?.active_calls().await.map_err(internal)?;
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

/// One call by its id (`channelId`: Asterisk's linkedid), with its legs.
async fn one_call(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let (call, legs) = db(&state)?
        .call_with_legs(&id)
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
        "id,channelId,extension,caller,callee,direction,startTime,answerTime,endTime,durationSeconds,hangupCause,disposition,answeredBy,hangupBy,transfers\r\n",
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
        ];
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

async fn calls(
    State(state): State<AppState>,
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
        extension: q.extension,
        direction: q.direction,
        since: q.since,
        until: q.until,
        limit,
        cursor: q.cursor,
    };
    let calls = db(&state)?.calls(&filter).await.map_err(internal)?;
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

pub(crate) async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if db(&state)?.ping().await {
        Ok("ready")
    } else {
        Err(ApiError::Unavailable("the state database is unreachable".into()))
    }
}

async fn status(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(status_json(&state).await?))
}

/// What /status answers (and the UI's overview shows).
pub(crate) async fn status_json(state: &AppState) -> Result<Value, ApiError> {
    let db = db(state)?;
    let database = db.ping().await;
    let record = db.status().await.map_err(internal)?;
    let runs = db.runs(5).await.map_err(internal)?;
    let extensions = db.extensions().await.map_err(internal)?;
    let failed = extensions.iter().filter(|e| e.sync_status != "synced").count();
    let by_state: serde_json::Map<String, Value> =
        sync_counts(&extensions).into_iter().map(|(k, n)| (k.to_string(), Value::from(n))).collect();
    let (regs, known) = registrations(state);
    // Only managed extensions count, and only with a live contact.
    let registered = known.then(|| extensions.iter().filter(|e| regs.of(&e.number).1).count());
    let last = match &state.reconcile {
        Some(h) => h.last.read().await.clone(),
        None => None,
    };
    let drift = last.as_ref().map(|r| r.record.plan.as_ref().map_or(0, |p| p.drift.len()));
    let asterisk = match &state.live.asterisk {
        None => json!({"configured": false, "reachable": null}),
        Some(a) => match a.version().await {
            Ok(v) => {
                json!({"configured": true, "reachable": true, "version": v.asterisk_version, "startup": v.startup, "lastReload": v.last_reload})
            }
            Err(e) => json!({"configured": true, "reachable": false, "error": e.to_string()}),
        },
    };
    let calls = state.live.calls.as_ref().map(|c| {
        json!({"connected": c.connected.load(std::sync::atomic::Ordering::Relaxed),
               "events": c.events.load(std::sync::atomic::Ordering::Relaxed)})
    });
    let active_calls = db.active_call_count().await.map_err(internal)?;
    let reconciling = record.as_ref().is_some_and(|r| r.reconciling);
    let since = record.as_ref().and_then(|r| r.reconciling_since).filter(|_| reconciling);
    let stalled = since.is_some_and(|t| Utc::now() - t > STALLED_AFTER);
    let conditions = record.as_ref().map(|r| {
        json!([
            {"type": "Ready", "status": r.ready, "reason": r.ready_reason, "message": r.ready_message, "lastTransitionTime": r.updated_at},
            if reconciling {
                json!({"type": "Reconciling", "status": "True", "reason": if stalled { "Stalled" } else { "Progressing" },
                       "message": format!("step: {}", r.reconciling_step.as_deref().unwrap_or("starting")),
                       "step": r.reconciling_step, "lastTransitionTime": since})
            } else {
                json!({"type": "Reconciling", "status": "False", "reason": "Idle", "message": "", "lastTransitionTime": r.updated_at})
            }
        ])
    });
    Ok(json!({
        "ready": record.as_ref().map(|r| json!({"status": r.ready, "reason": r.ready_reason, "message": r.ready_message})),
        "reconciling": reconciling,
        "reconcilingStep": record.as_ref().and_then(|r| r.reconciling_step.clone()).filter(|_| reconciling),
        "reconcilingSince": since,
        "stalled": stalled,
        "conditions": conditions,
        "sync": by_state,
        "lastAppliedRevision": record.as_ref().and_then(|r| r.last_applied_revision.clone()),
        "lastAttemptedRevision": record.as_ref().and_then(|r| r.last_attempted_revision.clone()),
        "extensions": extensions.len(),
        "activeCalls": active_calls,
        "notSynced": failed,
        "registered": registered,
        "drift": drift,
        "lastRuns": runs,
        "database": {"backend": db.backend(), "reachable": database},
        "asterisk": asterisk,
        "callLogger": calls,
        "updatedAt": record.as_ref().map(|r| r.updated_at),
    }))
}
