//! JSON write routes: the seed's extension contract (write side), CSV
//! import, the git webhook, manual reconcile. Registered only through
//! `http::write_router` (never with `--read-only`); each handler takes a
//! [`Writer`] (or, the webhook, checks its signature).

use super::auth::{Database, Writer};
use super::{ApiError, AppState, Detail};
use crate::core::spec::load::ENTRY_FIELDS;
use crate::core::spec::resolve::Locator;
use crate::core::spec::{Defaults, ExtensionEntry, check, resolve};
use crate::git::writeback::{Committed, EditOp, WriteError};
use crate::reconcile::Trigger;
use crate::secret::md5_cred;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Map, Value, json};

/// The JSON API's write routes (see `http::write_router`).
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/hooks/git", post(webhook))
        .route("/extensions", post(create))
        .route("/extensions/import", post(import))
        .route("/extensions/{id}", axum::routing::put(update).delete(delete))
        .route("/reconcile", post(reconcile))
}

const SECRET_FIELDS: [&str; 4] = ["password", "md5Cred", "passwordEnv", "passwordFile"];

/// Parses a request body into the fields it sets, reporting every unknown
/// field and every wrong type at once.
pub(crate) fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        let line = u32::try_from(e.line()).ok();
        ApiError::BadRequest(
            "the body is not valid JSON".into(),
            vec![Detail { file: Some("request body".into()), line, field: None, message: e.to_string() }],
        )
    })?;
    let Value::Object(map) = value else {
        return Err(ApiError::BadRequest("the body must be a JSON object".into(), Vec::new()));
    };
    check_fields(map)
}

/// Reports every unknown field and every wrong type of a body (the JSON
/// API's, or the UI form's) at once, each at its field.
pub(crate) fn check_fields(map: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut details = Vec::new();
    for key in map.keys() {
        if !ENTRY_FIELDS.contains(&key.as_str()) {
            let hint = check::closest(key, ENTRY_FIELDS).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
            details.push(field_detail(key, format!("unknown field `{key}`{hint}")));
        }
    }
    for (key, v) in &map {
        if ENTRY_FIELDS.contains(&key.as_str()) {
            let single = Value::Object(Map::from_iter([(key.clone(), v.clone())]));
            if let Err(e) = serde_json::from_value::<ExtensionEntry>(single) {
                // Never echo a secret's value back.
                let message =
                    if SECRET_FIELDS.contains(&key.as_str()) { "expected a string".to_string() } else { e.to_string() };
                details.push(field_detail(key, message));
            }
        }
    }
    if details.is_empty() { Ok(map) } else { Err(ApiError::BadRequest("the body has invalid fields".into(), details)) }
}

fn field_detail(field: &str, message: String) -> Detail {
    Detail { file: None, line: None, field: Some(field.to_string()), message }
}

/// Turns a password into md5Cred (git history is forever) and drops any
/// other secret the entry had when the body brings a new one.
fn apply_secret(entry: &mut ExtensionEntry, body: &Map<String, Value>, number: &str, realm: &str) {
    if SECRET_FIELDS.iter().any(|f| body.contains_key(*f)) {
        let new = entry.clone();
        entry.password = None;
        entry.md5_cred = None;
        entry.password_env = None;
        entry.password_file = None;
        if let Some(p) = new.password.filter(|_| body.contains_key("password")) {
            entry.md5_cred = Some(md5_cred(number, realm, &p));
        } else if body.contains_key("md5Cred") {
            entry.md5_cred = new.md5_cred;
        } else if body.contains_key("passwordEnv") {
            entry.password_env = new.password_env;
        } else {
            entry.password_file = new.password_file;
        }
    }
}

/// The entry as the API shows it: no secret values, codecs as a list.
pub fn entry_view(entry: &ExtensionEntry) -> Value {
    let mut v = serde_json::to_value(entry).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        let kind = SECRET_FIELDS.iter().find(|f| map.contains_key(**f)).copied();
        map.remove("password");
        map.remove("md5Cred");
        if let Some(kind) = kind {
            map.insert("secret".into(), Value::from(kind));
        }
        if let Some(codecs) = &entry.codecs {
            map.insert("codecs".into(), Value::from(codecs.items()));
        }
        if let Some(m) = &entry.mailboxes {
            map.insert("mailboxes".into(), Value::from(m.items()));
        }
    }
    v
}

fn commit_view(c: &Committed) -> Value {
    json!({
        "commit": Some(c.commit.as_str()).filter(|s| !s.is_empty()),
        "branch": c.branch,
        "compareUrl": c.compare_url,
    })
}

fn write_error(e: WriteError) -> ApiError {
    match e {
        WriteError::NotFound(n) => ApiError::NotFound(format!("extension {n} does not exist")),
        WriteError::Conflict(m) => ApiError::Conflict(m),
        WriteError::Invalid(diags) => ApiError::BadRequest(
            "the change would make the specs invalid; nothing was written".into(),
            diags.iter().map(Detail::from).collect(),
        ),
        WriteError::Edit(e) => ApiError::Conflict(format!("the spec file cannot be edited safely: {e}")),
        WriteError::Io(e) => ApiError::Internal(e.to_string()),
        WriteError::Git(m) => ApiError::Unavailable(format!("git: {}", crate::secret::redact_urls_in(&m))),
    }
}

/// Says in the daemon's log why the write-back refused an edit the API
/// answers 503 or 409 to (the client's own mistakes, 400 and 404, are not
/// logged): the same reason the response body gives, URLs redacted.
fn log_refusal(op: &EditOp, e: &WriteError) {
    match e {
        WriteError::Git(m) => tracing::warn!(
            number = op.number(),
            edit = %op.summary(),
            reason = %crate::secret::redact_urls_in(m),
            "the write-back could not push the edit; nothing was written (503)"
        ),
        WriteError::Conflict(m) => tracing::info!(
            number = op.number(),
            edit = %op.summary(),
            reason = %crate::secret::redact_urls_in(m),
            "the write-back refused the edit (409)"
        ),
        _ => {}
    }
}

async fn run_edit(state: &AppState, op: EditOp, author: crate::git::writeback::Author) -> Result<Committed, ApiError> {
    let wb = state.writeback.clone();
    // The run is asked for as soon as the edit is where the run reads it
    // (the file written; a remote's commit pushed), not after the local
    // commit: the change goes live meanwhile.
    let handle = state.reconcile.clone();
    tracing::debug!(number = op.number(), "edit asked");
    tokio::task::spawn_blocking(move || {
        let asked = || {
            if let Some(h) = &handle {
                h.trigger(Trigger::Manual);
            }
        };
        let done = wb.apply_then(&op, &author, &asked);
        if let Err(e) = &done {
            log_refusal(&op, e);
        }
        done
    })
    .await
    .map_err(|e| ApiError::Internal(format!("edit task: {e}")))?
    .map_err(write_error)
}

/// Checks an entry by the spec's own rules (with the defaults of the file it
/// lands in: none for a new file).
fn check_entry(entry: &ExtensionEntry, defaults: &Defaults) -> Result<(), ApiError> {
    let at = Locator { file: "request body".into(), ..Default::default() };
    let (_, diags) = resolve(entry, defaults, &at);
    let errors: Vec<Detail> = diags.iter().filter(|d| d.is_error()).map(Detail::from).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::BadRequest("the extension is invalid; nothing was written".into(), errors))
    }
}

/// Every edit, from the API or the UI, goes through here first: the
/// extractors refuse in read-only mode, and so does this, should a write
/// route ever be registered there.
fn writable(state: &AppState) -> Result<(), ApiError> {
    if state.read_only { Err(ApiError::Forbidden("this server is read-only".into())) } else { Ok(()) }
}

/// Creates an extension from body fields (the JSON API's body, or the UI's form).
pub(crate) async fn create_entry(
    state: &AppState,
    map: Map<String, Value>,
    author: crate::git::writeback::Author,
) -> Result<(ExtensionEntry, Committed), ApiError> {
    writable(state)?;
    let mut entry: ExtensionEntry = serde_json::from_value(Value::Object(map.clone()))
        .map_err(|e| ApiError::BadRequest(e.to_string(), Vec::new()))?;
    let number = entry.extension.clone().unwrap_or_default();
    apply_secret(&mut entry, &map, &number, &state.realm);
    check_entry(&entry, &Defaults::default())?;
    let done = run_edit(state, EditOp::Create(entry.clone()), author).await?;
    Ok((entry, done))
}

/// Changes the given fields of an extension; absent fields keep their value.
pub(crate) async fn update_entry(
    state: &AppState,
    id: &str,
    map: Map<String, Value>,
    author: crate::git::writeback::Author,
) -> Result<(ExtensionEntry, Committed), ApiError> {
    writable(state)?;
    check::extension_number(id).map_err(|e| ApiError::NotFound(e.to_string()))?;
    if let Some(n) = map.get("extension").and_then(Value::as_str)
        && n != id
    {
        return Err(ApiError::BadRequest(
            "an extension cannot be renumbered; create the new number and delete the old one".into(),
            vec![field_detail("extension", format!("{n:?} differs from the {id:?} in the path"))],
        ));
    }
    // Absent fields keep their value: the patch is merged into the entry as
    // it is written in its file, by the write-back, wherever that file lives.
    let mut patch: ExtensionEntry = serde_json::from_value(Value::Object(map.clone()))
        .map_err(|e| ApiError::BadRequest(e.to_string(), Vec::new()))?;
    apply_secret(&mut patch, &map, id, &state.realm);
    let mut fields: Vec<String> = map.keys().cloned().collect();
    if fields.iter().any(|f| SECRET_FIELDS.contains(&f.as_str())) {
        fields.retain(|f| !SECRET_FIELDS.contains(&f.as_str()));
        fields.extend(SECRET_FIELDS.iter().map(|s| s.to_string()));
    }
    let op = EditOp::Patch(id.to_string(), patch.clone(), fields);
    let done = run_edit(state, op, author).await?;
    Ok((patch, done))
}

/// The entry of `number` as its spec file now declares it, from the files
/// edits land in (the spec directory, or the write-back's clone).
async fn written_entry(state: &AppState, number: &str) -> Result<Option<ExtensionEntry>, ApiError> {
    let dir = match state.writeback.target() {
        crate::git::writeback::Target::Dir(dir) => dir.clone(),
        crate::git::writeback::Target::Remote(r) => r.work_dir.join(&r.path),
    };
    let number = number.to_string();
    tokio::task::spawn_blocking(move || {
        let (sources, _) =
            crate::core::spec::load::read_paths(&[dir], &crate::core::spec::load::LoadOptions::default());
        sources.into_iter().find_map(|(shown, _, text)| {
            let text = String::from_utf8(text.ok()?).ok()?;
            // Only files that can hold the entry are parsed.
            if !text.contains(&number) {
                return None;
            }
            crate::core::spec::edit::find_entry(&shown, &text, &number).ok()
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("read task: {e}")))
}

pub(crate) async fn delete_entry(
    state: &AppState,
    id: &str,
    author: crate::git::writeback::Author,
) -> Result<Committed, ApiError> {
    writable(state)?;
    check::extension_number(id).map_err(|e| ApiError::NotFound(e.to_string()))?;
    run_edit(state, EditOp::Delete(id.to_string()), author).await
}

async fn create(
    State(state): State<AppState>,
    Writer(author): Writer,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let map = parse_body(&body)?;
    let (entry, done) = create_entry(&state, map, author).await?;
    Ok((StatusCode::CREATED, Json(json!({"extension": entry_view(&entry), "change": commit_view(&done)}))))
}

/// Answers the whole extension as its file now declares it (the same
/// shape as a create's answer), not only the fields the body changed.
async fn update(
    State(state): State<AppState>,
    Writer(author): Writer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    check::extension_number(&id).map_err(|e| ApiError::NotFound(e.to_string()))?;
    let map = parse_body(&body)?;
    let (patch, done) = update_entry(&state, &id, map, author).await?;
    let mut entry = written_entry(&state, &id).await?.unwrap_or(patch);
    // The number the entry is found under, should a hand-written file spell it otherwise.
    entry.extension.get_or_insert_with(|| id.clone());
    Ok(Json(json!({"extension": entry_view(&entry), "change": commit_view(&done)})))
}

async fn delete(
    State(state): State<AppState>,
    Writer(author): Writer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let done = delete_entry(&state, &id, author).await?;
    Ok(Json(json!({"deleted": id, "change": commit_view(&done)})))
}

/// What a CSV import would do: the spec file it writes and a create per row.
pub(crate) struct ImportPlan {
    pub file: String,
    pub text: String,
    pub numbers: Vec<String>,
    pub changes: Vec<crate::core::plan::Change>,
    pub ignored: Vec<String>,
}

impl ImportPlan {
    pub(crate) fn view(&self) -> Value {
        json!({
            "file": self.file,
            "plan": {"creates": self.changes.len(), "updates": 0, "deletes": 0, "changes": self.changes},
            "ignoredColumns": self.ignored,
        })
    }
}

/// Reads an uploaded CSV (FreePBX Bulk Handler export or our own) and
/// plans it: every bad cell and every number that already exists is an
/// error by line and column, and nothing is written.
pub(crate) async fn import_plan(state: &AppState, csv_text: &str) -> Result<ImportPlan, ApiError> {
    use crate::core::plan::{Action, Change, FieldChange, SECRET_FIELD};
    const SHOWN: &str = "upload.csv";
    let parsed = crate::import::csv::entries(SHOWN, csv_text, &state.realm).map_err(|diags| {
        ApiError::BadRequest(
            "the CSV has problems; nothing was written".into(),
            diags.iter().map(Detail::from).collect(),
        )
    })?;
    let existing: std::collections::HashSet<String> =
        Database::of(state)?.extensions().await.map_err(super::read::internal)?.into_iter().map(|r| r.number).collect();
    let taken: Vec<Detail> = parsed
        .entries
        .iter()
        .filter(|(e, _)| e.extension.as_ref().is_some_and(|n| existing.contains(n)))
        .map(|(e, line)| Detail {
            file: Some(SHOWN.into()),
            line: Some(*line),
            field: Some("extension".into()),
            message: format!(
                "extension {} already exists (the import adds new extensions only)",
                e.extension.as_deref().unwrap_or("")
            ),
        })
        .collect();
    if !taken.is_empty() {
        return Err(ApiError::BadRequest("the CSV has problems; nothing was written".into(), taken));
    }
    if parsed.entries.is_empty() {
        return Err(ApiError::BadRequest("the CSV has no rows".into(), Vec::new()));
    }
    let mut changes = Vec::with_capacity(parsed.entries.len());
    let mut numbers = Vec::with_capacity(parsed.entries.len());
    for (entry, _) in &parsed.entries {
        let (ext, _) = resolve(entry, &Defaults::default(), &Locator::default());
        let Some(ext) = ext else { continue };
        let fields = crate::core::plan::desired_fields(&ext, "")
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| {
                if k == SECRET_FIELD {
                    FieldChange { field: k, from: None, to: None }
                } else {
                    FieldChange { field: k, from: None, to: Some(v.to_string()) }
                }
            })
            .collect();
        changes.push(Change {
            extension: ext.extension.clone(),
            action: Action::Create,
            fields,
            profile: Some(crate::core::spec::profile::Expansion::of(&ext)),
        });
        numbers.push(ext.extension.clone());
    }
    let mut sorted = numbers.clone();
    sorted.sort();
    let file = match (sorted.first(), sorted.last()) {
        (Some(a), Some(b)) if a != b => format!("import-{a}-{b}.yaml"),
        (Some(a), _) => format!("import-{a}.yaml"),
        _ => "import.yaml".into(),
    };
    let text = crate::import::csv::to_yaml(&parsed.entries, "an upload to POST /extensions/import")
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ImportPlan { file, text, numbers, changes, ignored: parsed.ignored })
}

/// Imports an uploaded CSV in one edit and one commit.
pub(crate) async fn import_apply(
    state: &AppState,
    csv_text: &str,
    author: crate::git::writeback::Author,
) -> Result<(ImportPlan, Committed), ApiError> {
    writable(state)?;
    let plan = import_plan(state, csv_text).await?;
    let op = EditOp::CreateFile { file: plan.file.clone(), text: plan.text.clone(), numbers: plan.numbers.clone() };
    let done = run_edit(state, op, author).await?;
    Ok((plan, done))
}

/// `POST /extensions/import[?dryRun=true]`: the body is a CSV file.
async fn import(
    State(state): State<AppState>,
    Writer(author): Writer,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> Result<axum::response::Response, ApiError> {
    let text = String::from_utf8_lossy(&body);
    let dry = query.get("dryRun").is_some_and(|v| v == "true" || v == "1");
    if dry {
        let plan = import_plan(&state, &text).await?;
        let mut v = plan.view();
        v["dryRun"] = Value::Bool(true);
        return Ok(Json(v).into_response());
    }
    let (plan, done) = import_apply(&state, &text, author).await?;
    let mut v = plan.view();
    v["dryRun"] = Value::Bool(false);
    v["change"] = commit_view(&done);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn reconcile(State(state): State<AppState>, Writer(_): Writer) -> Result<impl IntoResponse, ApiError> {
    match &state.reconcile {
        Some(h) => {
            h.trigger(Trigger::Manual);
            Ok((StatusCode::ACCEPTED, Json(json!({"accepted": true}))))
        }
        None => Err(ApiError::Unavailable("no reconcile loop runs in this process".into())),
    }
}

async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let Some(secret) = &state.webhook_secret else {
        return Err(ApiError::NotFound("the webhook is off: set ASTERISK_GITOPS_WEBHOOK_SECRET".into()));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    super::webhook::verify(&header, &body, secret.expose().as_bytes()).map_err(|e| {
        tracing::warn!(reason = %e, "webhook refused");
        ApiError::Unauthorized
    })?;
    let branch = super::webhook::pushed_branch(&body).map_err(|e| ApiError::BadRequest(e.to_string(), Vec::new()))?;
    match (branch, &state.branch) {
        (Some(b), Some(tracked)) if b == *tracked => {
            if let Some(h) = &state.reconcile {
                h.trigger(Trigger::Webhook);
            }
            Ok((StatusCode::ACCEPTED, Json(json!({"accepted": true, "branch": b}))))
        }
        (b, _) => Ok((
            StatusCode::OK,
            Json(
                json!({"accepted": false, "ignored": format!("not the tracked branch: {}", b.unwrap_or_else(|| "a tag".into()))}),
            ),
        )),
    }
}
