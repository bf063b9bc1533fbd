//! Scripts (SPEC §3): PUT validates with the engine and writes `howk.scripts`, GET reads the
//! scripts table, DELETE writes a tombstone, `/test` runs a script with the real engine,
//! modules and limits. The API applies its own writes to its table copy before answering, so a
//! webhook enqueued after the PUT returned carries the new `script_hash` (read-your-writes).

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use bytes::Bytes;
use howk_processor::ids::ConfigId;
use howk_processor::lua::pool::OwnedInput;
use howk_processor::lua::{LuaEngine, PreviousError, Script, ScriptErrorKind, TestReport};
use howk_processor::record::ScriptConfig;
use howk_processor::record::webhook::MAX_ATTEMPTS_LIMIT;
use howk_topology::log::OutRecord;
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/config/{config_id}/script",
            put(put_script).get(get_script).delete(delete_script),
        )
        .route("/config/{config_id}/script/test", post(test_script))
}

#[derive(Deserialize, ToSchema)]
pub struct PutScript {
    #[schema(min_length = 1)]
    lua_code: String,
    /// Free-text label; default: the previous one plus one, or `1`.
    version: Option<String>,
    /// An object handed to the script as `config`; omitted keeps the previous one.
    script_config: Option<serde_json::Value>,
}

/// A script version as stored (`howk.scripts`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ScriptConfigBody {
    config_id: String,
    lua_code: String,
    hash: String,
    version: String,
    script_config: Option<serde_json::Value>,
    created_at: String,
    updated_at: String,
}

#[derive(serde::Serialize, ToSchema)]
pub struct ScriptSaved {
    config_id: String,
    hash: String,
    version: String,
    created_at: String,
    updated_at: String,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

fn next_version(previous: Option<&str>) -> String {
    match previous.map(str::parse::<u64>) {
        Some(Ok(n)) => (n + 1).to_string(),
        Some(Err(_)) | None => "1".to_owned(),
    }
}

/// Write (or replace) the script of `config_id`.
#[utoipa::path(put, path = "/config/{config_id}/script", tag = "scripts",
    params(("config_id" = String, Path, description = "the tenant, or a namespace")),
    request_body = PutScript,
    security(("admin_token" = [])),
    responses(
        (status = 200, body = ScriptSaved),
        (status = 400, description = "invalid body, or `Lua syntax error` with `details`"),
        (status = 401, description = "admin token required"),
        (status = 503, description = "Kafka cannot take it"),
    ))]
pub async fn put_script(
    State(state): State<AppState>,
    Path(config_id): Path<String>,
    body: Bytes,
) -> Result<Json<ScriptSaved>, ApiError> {
    let request: PutScript = parse(&body)?;
    if request.lua_code.trim().is_empty() {
        return Err(ApiError::bad_request("lua_code must not be empty"));
    }
    if let Some(config) = &request.script_config
        && !config.is_object()
    {
        return Err(ApiError::bad_request("script_config must be a JSON object"));
    }
    let settings = state.engine_settings.clone();
    let code = request.lua_code.clone();
    let checked = tokio::task::spawn_blocking(move || LuaEngine::new(settings).validate(&code))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    if let Err(error) = checked {
        let status = if error.kind == ScriptErrorKind::Syntax {
            "Lua syntax error"
        } else {
            "Lua script rejected"
        };
        return Err(ApiError::bad_request(status).with("details", error.message));
    }

    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let previous = state
        .scripts
        .current(&ConfigId::new(&config_id))
        .map(|entry| entry.config.clone());
    let config = ScriptConfig {
        config_id: config_id.clone(),
        hash: howk_processor::lua::script::script_hash(&request.lua_code),
        lua_code: request.lua_code,
        version: request
            .version
            .unwrap_or_else(|| next_version(previous.as_ref().map(|p| p.version.as_str()))),
        // Omitted keeps the previous config (fix: upstream dropped it).
        script_config: request
            .script_config
            .or_else(|| previous.as_ref().and_then(|p| p.script_config.clone())),
        // Kept across updates (fix).
        created_at: previous
            .as_ref()
            .map(|p| p.created_at.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| now.clone()),
        updated_at: now,
    };
    let value = config.encode();
    state
        .ingress
        .send(OutRecord {
            topic: state.topics.scripts.clone(),
            partition: None,
            key: config_id.as_bytes().to_vec(),
            value: Some(value.clone()),
        })
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    state.scripts.apply(
        &config_id,
        Some(&value),
        chrono::Utc::now().timestamp_millis(),
    );
    Ok(Json(ScriptSaved {
        config_id,
        hash: config.hash,
        version: config.version,
        created_at: config.created_at,
        updated_at: config.updated_at,
    }))
}

/// The script of `config_id` itself (no namespace fallback).
#[utoipa::path(get, path = "/config/{config_id}/script", tag = "scripts",
    params(("config_id" = String, Path, description = "the tenant, or a namespace")),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = ScriptConfigBody),
        (status = 401, description = "admin token required"),
        (status = 404, description = "no script"),
    ))]
pub async fn get_script(
    State(state): State<AppState>,
    Path(config_id): Path<String>,
) -> Result<Response, ApiError> {
    match state.scripts.current(&ConfigId::new(&config_id)) {
        Some(entry) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            entry.config.encode(),
        )
            .into_response()),
        None => Err(ApiError::not_found(format!("no script for {config_id}"))),
    }
}

/// Delete the script (a tombstone on `howk.scripts`). Webhooks that pinned it are then
/// dead-lettered `script_not_found`.
#[utoipa::path(delete, path = "/config/{config_id}/script", tag = "scripts",
    params(("config_id" = String, Path, description = "the tenant, or a namespace")),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "deleted (or there was none)"),
        (status = 401, description = "admin token required"),
        (status = 503, description = "Kafka cannot take it"),
    ))]
pub async fn delete_script(
    State(state): State<AppState>,
    Path(config_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .ingress
        .send(OutRecord {
            topic: state.topics.scripts.clone(),
            partition: None,
            key: config_id.as_bytes().to_vec(),
            value: None,
        })
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    state
        .scripts
        .apply(&config_id, None, chrono::Utc::now().timestamp_millis());
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
pub struct TestRequest {
    lua_code: String,
    /// Any JSON: the script sees its text as `payload`.
    #[schema(value_type = serde_json::Value)]
    payload: Box<RawValue>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    script_config: Option<serde_json::Value>,
    /// 0-based.
    #[schema(maximum = 99)]
    attempt: Option<u32>,
    previous_error: Option<TestPreviousError>,
}

#[derive(Deserialize, ToSchema)]
pub struct TestPreviousError {
    #[schema(minimum = 100, maximum = 599)]
    status_code: Option<u16>,
    error: String,
    /// 0-based.
    #[schema(maximum = 99)]
    attempt: Option<u32>,
}

/// The outcome of a test run.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TestReportBody {
    success: bool,
    transformed_payload: Option<serde_json::Value>,
    /// The body's bytes when they are not valid JSON.
    transformed_payload_base64: Option<String>,
    transformed_headers: Option<std::collections::BTreeMap<String, String>>,
    /// On failure: the SPEC reason (`script_syntax_error`, `script_timeout`, ...).
    error_type: Option<String>,
    error: Option<String>,
    execution_time_ms: f64,
}

/// Run a script on a sample webhook with the real engine, modules and limits.
#[utoipa::path(post, path = "/config/{config_id}/script/test", tag = "scripts",
    params(("config_id" = String, Path, description = "the tenant the script runs as")),
    request_body = TestRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, body = TestReportBody),
        (status = 400, description = "invalid body"),
        (status = 401, description = "admin token required"),
        (status = 503, description = "Lua is disabled"),
    ))]
pub async fn test_script(
    State(state): State<AppState>,
    Path(config_id): Path<String>,
    body: Bytes,
) -> Result<Json<TestReport>, ApiError> {
    let request: TestRequest = parse(&body)?;
    if let Some(config) = &request.script_config
        && !config.is_object()
    {
        return Err(ApiError::bad_request("script_config must be a JSON object"));
    }
    let attempts = [
        request.attempt,
        request.previous_error.as_ref().and_then(|e| e.attempt),
    ];
    if attempts
        .iter()
        .flatten()
        .any(|&attempt| attempt >= MAX_ATTEMPTS_LIMIT)
    {
        return Err(ApiError::bad_request(format!(
            "attempt numbers are 0 to {}",
            MAX_ATTEMPTS_LIMIT - 1
        )));
    }
    if let Some(status) = request.previous_error.as_ref().and_then(|e| e.status_code)
        && !(100..=599).contains(&status)
    {
        return Err(ApiError::bad_request(format!(
            "previous_error.status_code must be an HTTP status, got {status}"
        )));
    }
    let Some(pool) = &state.pool else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "lua is disabled (lua.enabled = false)",
        ));
    };
    let payload = bytes::Bytes::copy_from_slice(request.payload.get().as_bytes());
    let attempt = request.attempt.unwrap_or(0);
    let input = OwnedInput {
        payload: payload.clone(),
        headers: request.headers.unwrap_or_default().into_iter().collect(),
        webhook_id: "wh_00000000000000000000000000".into(),
        config_id,
        attempt,
        max_attempts: state.default_max_attempts.max(attempt + 1),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        previous_error: request.previous_error.map(|e| PreviousError {
            status_code: e.status_code,
            error: e.error,
            attempt: e.attempt.unwrap_or(attempt.saturating_sub(1)),
        }),
    };
    let started = Instant::now();
    let script = Script::new(request.lua_code, request.script_config);
    let result = pool
        .execute(script, input)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(TestReport::new(&result, &payload, started.elapsed())))
}
