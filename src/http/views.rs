//! The typed views the JSON API serialises and the UI renders from, so a
//! page never reads the API's JSON by string keys and a renamed field
//! breaks the build, not a page.

use crate::asterisk::{Contact, EndpointDetail};
use crate::db::calls::ExtensionCallStats;
use crate::db::{ExtensionRecord, RunSummary};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The registration summary of one extension.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationSummary {
    /// `None` when Asterisk's registrations are not known (not configured or unreachable).
    pub registered: Option<bool>,
    pub contacts: usize,
}

/// One extension as `GET /extensions` and `GET /extensions/:id` show it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionView<'a> {
    /// The number, under the name the seed's body, the live status and the
    /// write answers use. The record's `number` is kept beside it as a
    /// deprecated alias for one release.
    pub extension: &'a str,
    #[serde(flatten)]
    pub record: &'a ExtensionRecord,
    pub registration: RegistrationSummary,
}

/// The Ready condition's summary.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadyView {
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// A Flux-style condition (`Ready`, `Reconciling`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: String,
    pub reason: String,
    pub message: String,
    /// Only on `Reconciling=True`: the step the run is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<Option<String>>,
    pub last_transition_time: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseView {
    pub backend: &'static str,
    pub reachable: bool,
}

/// What `/status` says of Asterisk.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AsteriskView {
    pub configured: bool,
    /// `None` when not configured.
    pub reachable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallLoggerView {
    pub connected: bool,
    pub events: u64,
}

/// `GET /status`, and the UI's overview.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    /// Whether this replica leads (reconciles, logs calls); with SQLite always.
    pub leader: bool,
    /// The leading replica's instance id, as it recorded itself when it took over.
    pub leader_id: Option<String>,
    /// When that replica took over.
    pub leader_since: Option<DateTime<Utc>>,
    /// The leader's fencing epoch (incremented at each take-over).
    pub leader_epoch: Option<i64>,
    pub ready: Option<ReadyView>,
    pub reconciling: bool,
    pub reconciling_step: Option<String>,
    pub reconciling_since: Option<DateTime<Utc>>,
    pub stalled: bool,
    pub conditions: Option<Vec<Condition>>,
    /// Extensions by sync state (every state, 0 included).
    pub sync: BTreeMap<String, i64>,
    pub last_applied_revision: Option<String>,
    pub last_attempted_revision: Option<String>,
    pub extensions: i64,
    pub active_calls: i64,
    pub not_synced: i64,
    /// Managed extensions with a live contact; `None` when registrations are not known.
    pub registered: Option<i64>,
    /// Drift the last run of this process found; `None` before one (or without a loop).
    pub drift: Option<usize>,
    pub last_runs: Vec<RunSummary>,
    pub database: DatabaseView,
    pub asterisk: AsteriskView,
    /// Every Asterisk server managed (`nodes:`, or the one AMI as `default`).
    pub nodes: Vec<NodeView>,
    pub call_logger: Option<CallLoggerView>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// One Asterisk server in `/status`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    /// Whether it answered AMI just now (asked with a bounded wait, all nodes at once).
    pub reachable: bool,
    pub version: Option<String>,
    /// Endpoints with a live contact on it, from the last registrations read
    /// (every 10 s); `None` before one succeeded.
    pub registrations: Option<usize>,
    pub registrations_read_at: Option<DateTime<Utc>>,
    /// Why it did not answer (never a secret).
    pub error: Option<String>,
    /// How the last run went on it (`None` before one).
    pub last_apply: Option<crate::reconcile::fleet::NodeApply>,
    /// Its call logger (CEL over its AMI), when calls are logged.
    pub call_logger: Option<CallLoggerView>,
}

/// One extension's registration on one node.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRegistrationView {
    pub node: String,
    /// `None` when the node did not answer.
    pub registered: Option<bool>,
    pub contacts: Vec<Contact>,
    pub error: Option<String>,
}

/// One place where Asterisk's view differs from what was applied.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftItem {
    pub field: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asterisk: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
}

impl DriftItem {
    pub(crate) fn differs(field: &'static str, applied: Value, asterisk: Value) -> Option<DriftItem> {
        (applied != asterisk).then_some(DriftItem {
            field,
            applied: Some(applied),
            asterisk: Some(asterisk),
            message: None,
        })
    }

    pub(crate) fn note(field: &'static str, message: &'static str) -> DriftItem {
        DriftItem { field, applied: None, asterisk: None, message: Some(message) }
    }

    /// One line for a page.
    pub fn text(&self) -> String {
        match (&self.applied, &self.asterisk, self.message) {
            (Some(a), Some(b), _) => format!("{}: applied {a} but Asterisk has {b}", self.field),
            (_, _, Some(m)) => m.to_string(),
            _ => self.field.to_string(),
        }
    }
}

/// The sync state part of a live status.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncView {
    pub status: String,
    pub last_error: Option<String>,
    pub run_id: Option<i64>,
    pub since: Option<DateTime<Utc>>,
    pub applied_at: Option<DateTime<Utc>>,
    pub revision: Option<String>,
}

impl From<&ExtensionRecord> for SyncView {
    fn from(r: &ExtensionRecord) -> Self {
        SyncView {
            status: r.sync_status.clone(),
            last_error: r.last_error.clone(),
            run_id: r.sync_run_id,
            since: r.sync_since,
            applied_at: r.applied_at,
            revision: r.revision.clone(),
        }
    }
}

/// What a softphone needs to register; never the password.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SoftphoneSettings {
    /// `host[:port]` from the `sipServer` setting; `None` when not configured.
    pub server: Option<String>,
    pub username: String,
    pub auth_username: String,
    pub transport: String,
}

/// `GET /extensions/:id/status`: the extension's state, and what Asterisk
/// says of it live.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveStatusView {
    pub extension: String,
    /// `None` when Asterisk is not configured.
    pub registered: Option<bool>,
    pub contacts: Vec<Contact>,
    pub endpoint: Option<EndpointDetail>,
    pub sync: Option<SyncView>,
    pub drift: Vec<DriftItem>,
    pub softphone: Option<SoftphoneSettings>,
    pub calls_today: ExtensionCallStats,
    /// Its registration on each node (`registered` above: on any of them).
    pub nodes: Vec<NodeRegistrationView>,
    /// Only when Asterisk is not configured: `"not configured"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asterisk: Option<&'static str>,
}

/// One diagnostic of a stored run, as the run page lists it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiagnosticLine {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub field: String,
    pub message: String,
}
