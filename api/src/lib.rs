//! howk's REST ingress and queries (SPEC §3), on the topology's log and stores.
//!
//! Layout:
//! - [`routes`]: one file per resource — [`routes::webhooks`] (enqueue, batch, status),
//!   [`routes::scripts`] (PUT/GET/DELETE, test), [`routes::stats`], [`routes::health`]
//!   (health, ready, metrics) — merged in [`router`] with the cross-cutting layers
//! - [`ingress`]: how records reach the log (acks=all; batches in one transaction)
//! - [`transformers`]: the scripts behind `POST /incoming/:name` ([`routes::incoming`]), loaded
//!   from disk and reloaded on SIGHUP and on change
//! - [`state`]: what handlers share; [`error`]: the one `ApiError`; [`config`]: `api.*`
//! - [`openapi`]: the generated OpenAPI document
//!
//! Every response, including 404, 405 and 413, is JSON `{"error": ...}` on failure.

pub mod config;
pub mod error;
pub mod ingress;
pub mod openapi;
pub mod routes;
pub mod state;
pub mod transformers;

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use howk_topology::metrics::{RouteLabels, metrics};
use utoipa::OpenApi;

pub use config::ApiConfig;
pub use state::{AppState, LocalTopology, Topics};

use crate::error::{ApiError, canonical};

/// The whole API.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_request_size;
    let scripts = routes::scripts::router()
        .merge(routes::replays::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .merge(routes::webhooks::router())
        .merge(routes::incoming::router())
        .merge(scripts)
        .merge(routes::stats::router())
        .merge(routes::health::router())
        .route("/openapi.json", axum::routing::get(openapi_json))
        .route_layer(middleware::from_fn(keep_matched_path))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            size_and_metrics,
        ))
        .with_state(state)
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi::ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// The token of `Authorization: Bearer <token>`, if the request has one.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// `Authorization: Bearer <api.admin_token>` on script routes, when a token is configured.
async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.config.admin_token {
        let given = bearer(request.headers()).unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "admin token required").into_response();
        }
    }
    next.run(request).await
}

/// Compares without an early exit, so timing does not reveal a prefix of the token.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 413 on every route when the declared body is too large (before routing), and one counter
/// per request by route template and status.
async fn size_and_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let method = request.method().as_str().to_owned();
    let response = if declared.is_some_and(|n| n > state.config.max_request_size) {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body over {} bytes (api.max_request_size)",
                state.config.max_request_size
            ),
        )
        .into_response()
    } else {
        next.run(request).await
    };
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    metrics()
        .api_requests
        .get_or_create(&RouteLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Hands the matched route template to the outer layers through the response (routing
/// happens inside them).
async fn keep_matched_path(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(matched) = matched {
        response.extensions_mut().insert(matched);
    }
    response
}

/// Error responses made by the framework (405, 413 while reading a chunked body, 415...) get
/// the JSON shape too.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let mut replaced = (status, Json(canonical(status))).into_response();
        if let Some(allow) = response.headers().get(header::ALLOW) {
            replaced.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return replaced;
    }
    response
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then finishes in-flight
/// requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
