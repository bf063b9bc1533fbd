//! `/admin/replays` (the README's SPEC §9): start, watch and cancel replay jobs — re-drives of
//! dead letters and dry runs of a candidate script. Admin token required. Jobs run in this
//! process (`howk run`, `howk dev`); their progress is on `howk.replays`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use howk_topology::log::Log;
use howk_topology::replay::ReplayError;
use howk_topology::replay::jobs::{JobRequest, ReplayJobs};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// The replay jobs of this process, as the handlers see them (object-safe, so the router is not
/// generic over the log).
pub trait ReplayService: Send + Sync + 'static {
    /// Starts a job; its id. Blocking (it may write to the log).
    fn start(&self, request: JobRequest) -> Result<String, ReplayError>;
    /// A job's latest progress. Blocking (it may read the log).
    fn status(&self, job_id: &str) -> Result<Option<Value>, ReplayError>;
    /// Asks a job running here to stop; false when it does not run here.
    fn cancel(&self, job_id: &str) -> bool;
}

impl<L: Log> ReplayService for Arc<ReplayJobs<L>> {
    fn start(&self, request: JobRequest) -> Result<String, ReplayError> {
        ReplayJobs::start(self, request)
    }

    fn status(&self, job_id: &str) -> Result<Option<Value>, ReplayError> {
        ReplayJobs::status(self, job_id)
    }

    fn cancel(&self, job_id: &str) -> bool {
        ReplayJobs::cancel(self, job_id)
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/replays", axum::routing::post(start))
        .route(
            "/admin/replays/{job_id}",
            axum::routing::get(status).delete(cancel),
        )
}

fn service(state: &AppState) -> Result<Arc<dyn ReplayService>, ApiError> {
    state.replays.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "replay jobs run on instances that run the processor (howk run)",
        )
    })
}

fn replay_error(error: ReplayError) -> ApiError {
    match error {
        ReplayError::Invalid(message) => ApiError::bad_request(message),
        other => ApiError::unavailable(&other),
    }
}

/// Start a job: `{"kind": "redrive", "filter": {...}}` or `{"kind": "dry_run", "lua_code": ...}`.
#[utoipa::path(post, path = "/admin/replays", tag = "replays",
    request_body(content = Object, description = "`{\"kind\": \"redrive\", \"filter\": {\"config_ids\", \"namespaces\", \"reasons\", \"since\", \"until\", \"webhook_ids\"}, \"from_dead_letter_copy\", \"max_rate\"}` or `{\"kind\": \"dry_run\", \"lua_code\", \"script_config\", \"source\": {\"config_ids\", \"namespaces\", \"partition\", \"from_offset\", \"to_offset\", \"since\", \"until\", \"limit\"}}`"),
    responses(
        (status = 202, description = "`{\"job_id\": \"rj_…\"}`"),
        (status = 400, description = "not a job request, a bad time, or a candidate that does not compile"),
        (status = 401, description = "admin token required"),
        (status = 503, description = "no processor here, or the log is unavailable"),
    ),
    security(("admin_token" = [])))]
pub async fn start(
    State(state): State<AppState>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let service = service(&state)?;
    let request: JobRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("not a replay job request: {e}")))?;
    let job_id = tokio::task::spawn_blocking(move || service.start(request))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(replay_error)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "job_id": job_id }))))
}

/// A job's progress: state, matched, enqueued, skipped, errors; for dry runs the report.
#[utoipa::path(get, path = "/admin/replays/{job_id}", tag = "replays",
    params(("job_id" = String, Path, description = "`rj_…`")),
    responses(
        (status = 200, description = "the job's latest progress document"),
        (status = 401, description = "admin token required"),
        (status = 404, description = "no such job"),
    ),
    security(("admin_token" = [])))]
pub async fn status(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    let id = job_id.clone();
    tokio::task::spawn_blocking(move || service.status(&id))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(replay_error)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no replay job {job_id}")))
}

/// Cancel a job running on this instance: it stops between batches (resumable later).
#[utoipa::path(delete, path = "/admin/replays/{job_id}", tag = "replays",
    params(("job_id" = String, Path, description = "`rj_…`")),
    responses(
        (status = 202, description = "it stops after its current batch"),
        (status = 401, description = "admin token required"),
        (status = 404, description = "no such job running here"),
    ),
    security(("admin_token" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let service = service(&state)?;
    if service.cancel(&job_id) {
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "job_id": job_id, "state": "cancelling" })),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "no replay job {job_id} running on this instance"
        )))
    }
}
