//! `GET /stats`: exact last-hour and last-day windows from the status stage's minute buckets
//! (fix: upstream summed 2 and 25 hourly buckets).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use howk_topology::stage::status::Window;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/stats", get(stats))
}

#[derive(Serialize, ToSchema)]
pub struct WindowStats {
    enqueued: u64,
    delivered: u64,
    /// Attempts that failed and scheduled a retry.
    failed: u64,
    /// Webhooks dead-lettered.
    exhausted: u64,
    unique_endpoints: usize,
}

impl From<Window> for WindowStats {
    fn from(window: Window) -> Self {
        Self {
            enqueued: window.counters.enqueued,
            delivered: window.counters.delivered,
            failed: window.counters.failed,
            exhausted: window.counters.exhausted,
            unique_endpoints: window.endpoints.len(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Stats {
    last_1h: WindowStats,
    last_24h: WindowStats,
}

/// Delivery statistics of the partitions this instance processes.
#[utoipa::path(get, path = "/stats", tag = "stats",
    responses(
        (status = 200, body = Stats),
        (status = 503, description = "this process runs no status stage (`howk api`)"),
    ))]
pub async fn stats(State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let Some(topology) = &state.topology else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stats are served by instances that run the processor (howk run)",
        ));
    };
    let now = chrono::Utc::now().timestamp_millis();
    let hour = topology
        .status
        .window(now, 60)
        .map_err(|e| ApiError::internal(&e))?;
    let day = topology
        .status
        .window(now, 24 * 60)
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(Stats {
        last_1h: hour.into(),
        last_24h: day.into(),
    }))
}
