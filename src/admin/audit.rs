//! The audit log through the admin API: `GET /admin/api/audit?run=&node=&user=&since=&limit=`.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tailpass_verify::UnixTime;

use super::Admin;
use crate::oauth::error::Error;
use crate::oauth::input::Query;
use crate::state::AppState;
use crate::store::{AuditFilter, AuditRecord};

/// The query parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditQuery {
    /// A run id: the run's events and those of runs exchanged from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// A node's stable id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A user's login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Events at or after this Unix time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Events after this sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// How many (default 100, at most 10 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /admin/api/audit`.
pub(super) async fn query(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<Vec<AuditRecord>>, Error> {
    let filter = AuditFilter {
        run: q.run,
        node: q.node,
        user: q.user,
        event: None,
        since: q.since.map(UnixTime),
        after_seq: q.after,
        limit: q.limit.unwrap_or(100),
    };
    Ok(axum::Json(state.store.audit(&filter).await?))
}
