//! Liveness, readiness and metrics. `/ready` checks what serving needs: the log answers, the
//! scripts table has caught up, and (with a local processor) its stores are restored.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    status: &'static str,
    /// Each check: `ok` or why not.
    checks: std::collections::BTreeMap<&'static str, String>,
}

/// Readiness: Kafka reachable, scripts table caught up, task stores restored.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let mut checks = std::collections::BTreeMap::new();
    let log = state.ingress.check().await;
    checks.insert("log", log.clone().err().unwrap_or_else(|| "ok".into()));
    let scripts = state.scripts.is_ready();
    checks.insert(
        "scripts_table",
        if scripts { "ok" } else { "catching up" }.into(),
    );
    let mut ok = log.is_ok() && scripts;
    if let Some(topology) = &state.topology {
        let stores = topology.is_ready();
        checks.insert("stores", if stores { "ok" } else { "restoring" }.into());
        ok &= stores;
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ok { "ready" } else { "not_ready" },
        checks,
    };
    (status, Json(body))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus (OpenMetrics) text format",
        content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(pool) = &state.pool {
        howk_topology::metrics::metrics().record_script_pool(&pool.health());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        howk_topology::metrics::metrics().encode(),
    )
}
