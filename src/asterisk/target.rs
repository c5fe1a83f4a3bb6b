//! The daemon's live apply target: ARI's dynamic configuration or the
//! realtime tables, behind the one `reconcile::LiveApply` port.

use crate::asterisk::ari_config::{ApplyError, AriTarget};
use crate::asterisk::realtime::{RealtimeError, RealtimeTarget};
use crate::core::plan::Drift;
use crate::reconcile::{LiveApply, LiveRun};
use std::collections::BTreeSet;

/// `apply.target: ari` or `realtime`.
pub enum Live {
    Ari(AriTarget),
    Realtime(RealtimeTarget),
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Ari(#[from] ApplyError),
    #[error(transparent)]
    Realtime(#[from] RealtimeError),
}

impl Live {
    /// The ari target, if that is the one.
    pub fn ari(&self) -> Option<&AriTarget> {
        match self {
            Live::Ari(t) => Some(t),
            Live::Realtime(_) => None,
        }
    }

    /// The realtime target, if that is the one.
    pub fn realtime(&self) -> Option<&RealtimeTarget> {
        match self {
            Live::Realtime(t) => Some(t),
            Live::Ari(_) => None,
        }
    }
}

impl LiveApply for Live {
    type Error = LiveError;
    fn astdb_family(&self) -> &str {
        match self {
            Live::Ari(t) => t.astdb_family(),
            Live::Realtime(t) => t.astdb_family(),
        }
    }
    async fn push_changes(
        &self,
        record: Option<&str>,
        rendered: &str,
        asked: &BTreeSet<String>,
        repair: &BTreeSet<String>,
        orphans: &[(String, String)],
    ) -> Result<LiveRun, LiveError> {
        match self {
            Live::Ari(t) => Ok(t.push_changes(record, rendered, asked, repair, orphans).await?),
            Live::Realtime(t) => Ok(t.push_changes(record, rendered, asked, repair, orphans).await?),
        }
    }
    async fn drift(&self, record: &str, astdb_keys: &[String]) -> Vec<Drift> {
        match self {
            Live::Ari(t) => t.drift(record, astdb_keys).await,
            Live::Realtime(t) => t.drift(record, astdb_keys).await,
        }
    }
    fn applied_how(&self) -> &'static str {
        match self {
            Live::Ari(t) => t.applied_how(),
            Live::Realtime(t) => t.applied_how(),
        }
    }
    fn sweep_starts(&self) -> bool {
        match self {
            Live::Ari(t) => t.sweep_starts(),
            Live::Realtime(t) => t.sweep_starts(),
        }
    }
    fn lists_endpoints_beside(&self) -> bool {
        match self {
            Live::Ari(t) => t.lists_endpoints_beside(),
            Live::Realtime(t) => t.lists_endpoints_beside(),
        }
    }
    fn endpoints_listed(&self) {
        match self {
            Live::Ari(t) => t.endpoints_listed(),
            Live::Realtime(t) => t.endpoints_listed(),
        }
    }
    fn commits_without_asterisk(&self) -> bool {
        match self {
            Live::Ari(t) => t.commits_without_asterisk(),
            Live::Realtime(t) => t.commits_without_asterisk(),
        }
    }
    fn lists_endpoints(&self) -> bool {
        match self {
            Live::Ari(t) => t.lists_endpoints(),
            Live::Realtime(t) => t.lists_endpoints(),
        }
    }
    fn canonical(&self, rendered: &str, remember: bool) -> Result<String, LiveError> {
        match self {
            Live::Ari(t) => Ok(t.canonical(rendered, remember)?),
            Live::Realtime(t) => Ok(t.canonical(rendered, remember)?),
        }
    }
    fn excerpt(&self, record: u64, ids: &BTreeSet<String>) -> Option<String> {
        match self {
            Live::Ari(t) => t.excerpt(record, ids),
            Live::Realtime(t) => t.excerpt(record, ids),
        }
    }
    fn splice(&self, record: u64, ids: &BTreeSet<String>, part: &str) -> Option<String> {
        match self {
            Live::Ari(t) => t.splice(record, ids, part),
            Live::Realtime(t) => t.splice(record, ids, part),
        }
    }
}
