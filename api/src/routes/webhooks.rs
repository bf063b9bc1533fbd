//! Webhooks: enqueue one, enqueue a batch atomically, and read a webhook's status (SPEC §3).
//!
//! A webhook is validated exactly as the ingest stage will decode it (the same function), so
//! what the API accepts the processor takes. The payload's bytes are kept as sent: the body is
//! split into raw JSON fields, never re-encoded.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use bytes::Bytes;
use howk_processor::ids::{ConfigId, WebhookId};
use howk_processor::record::{PendingContext, Webhook};
use howk_topology::log::OutRecord;
use howk_topology::stage::status::WebhookStatus;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

/// Items a batch may hold.
const MAX_BATCH: usize = 1000;

pub fn router() -> axum::Router<AppState> {
    // One parameter name at this position (the router requires it): a config_id on the enqueue
    // routes, a webhook_id on status.
    axum::Router::new()
        .route("/webhooks/{id}/enqueue", post(enqueue))
        .route("/webhooks/{id}/enqueue/batch", post(enqueue_batch))
        .route("/webhooks/{id}/status", get(status))
}

/// A webhook to deliver (SPEC §2). `payload` is kept byte for byte.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct EnqueueRequest {
    /// The http(s) URL to POST to.
    #[schema(format = "uri", min_length = 8)]
    endpoint: String,
    /// Any JSON; sent as its exact bytes unless a script sets a body.
    payload: Option<serde_json::Value>,
    /// Alternative to `payload` for binary bodies.
    payload_base64: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    /// Repeats within `idempotency.ttl` get the same id and are delivered once.
    idempotency_key: Option<String>,
    /// HMAC key; `whsec_…` also sends Standard Webhooks headers (v1); `whsk_…` (an ed25519
    /// secret key) signs Standard Webhooks v1a instead.
    signing_secret: Option<String>,
    /// A secret being rotated out: until `previous_signing_secret_expires_at` every attempt is
    /// signed with both (current first).
    previous_signing_secret: Option<String>,
    /// RFC 3339; required with `previous_signing_secret`.
    #[schema(format = DateTime)]
    previous_signing_secret_expires_at: Option<String>,
    /// Total attempts, 1–100 (default `retry.max_attempts`).
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<u32>,
    /// RFC 3339; default now.
    #[schema(format = DateTime)]
    created_at: Option<String>,
    /// Extra statuses to retry on.
    retry_on_status: Option<Vec<u16>>,
    /// A script version to wait for; default: the latest this API knows.
    script_hash: Option<String>,
    /// 422 when no script resolves for the config (exact or namespace).
    require_script: Option<bool>,
    /// `${VAR}` query parameters resolved at send time.
    #[serde(rename = "_delivery_query_params")]
    delivery_query_params: Option<BTreeMap<String, String>>,
    /// `${VAR}` headers resolved at send time.
    #[serde(rename = "_delivery_headers")]
    delivery_headers: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, ToSchema)]
pub struct Enqueued {
    webhook_id: String,
    /// Always `pending`.
    status: &'static str,
}

#[derive(Deserialize, ToSchema)]
pub struct BatchRequest {
    /// 1 to 1000 webhooks.
    #[schema(value_type = Vec<EnqueueRequest>)]
    webhooks: Vec<Box<RawValue>>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchEnqueued {
    webhooks: Vec<Enqueued>,
    accepted: usize,
    /// Always 0: a batch is accepted whole or not at all.
    failed: usize,
}

/// Turns one request body into the `howk.pending` record: config_id from the path, the id
/// (derived from the idempotency key, given, or new), the latest known script hash; validated
/// as the ingest stage will.
pub(crate) fn prepare(
    state: &AppState,
    config_id: &str,
    body: &[u8],
) -> Result<(String, Vec<u8>), ApiError> {
    let mut fields: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body must be a JSON object: {e}")))?;
    let require_script = match fields.remove("require_script") {
        None => false,
        Some(raw) => serde_json::from_str::<bool>(raw.get())
            .map_err(|_| ApiError::bad_request("require_script must be a boolean"))?,
    };
    let config = ConfigId::new(config_id);
    let raw = |value: &str| RawValue::from_string(serde_json::to_string(value).expect("a string"));
    fields.insert("config_id".into(), raw(config_id).expect("valid JSON"));
    let id = match (fields.get("idempotency_key"), fields.get("id")) {
        (Some(key), _) => {
            let key: String = serde_json::from_str(key.get())
                .map_err(|_| ApiError::bad_request("idempotency_key must be a string"))?;
            WebhookId::from_idempotency_key(config_id, &key)
        }
        (None, Some(id)) => {
            let id: String = serde_json::from_str(id.get())
                .map_err(|_| ApiError::bad_request("id must be a string"))?;
            WebhookId::parse(&id).ok_or_else(|| {
                ApiError::bad_request("id must be 1 to 128 characters without control characters")
            })?
        }
        (None, None) => WebhookId::generate(),
    };
    fields.insert("id".into(), raw(id.as_str()).expect("valid JSON"));
    let script = state.scripts.lookup(&config);
    if !fields.contains_key("script_hash")
        && let Some(script) = &script
    {
        fields.insert(
            "script_hash".into(),
            raw(&script.config.hash).expect("valid JSON"),
        );
    }
    let record = serde_json::to_vec(&fields).expect("raw fields serialize");
    Webhook::decode_pending(
        &record,
        &PendingContext {
            key: Some(config_id.as_bytes()),
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
            topic: &state.topics.pending,
            partition: 0,
            offset: 0,
            max_record_bytes: state.max_record_bytes,
            default_max_attempts: state.default_max_attempts,
        },
    )
    .map_err(|invalid| ApiError::bad_request(invalid.0))?;
    if require_script && script.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("require_script is set but {config_id} has no script (nor its namespace)"),
        ));
    }
    Ok((id.as_str().to_owned(), record))
}

/// With ingress tokens configured, the request's token must cover the config's namespace: 401
/// without a known token, 403 with one for other namespaces.
fn authorize(state: &AppState, headers: &HeaderMap, config_id: &str) -> Result<(), ApiError> {
    let grant = state.config.ingress_grant(crate::bearer(headers));
    if grant.allows(howk_processor::ids::namespace(config_id)) {
        return Ok(());
    }
    Err(match grant {
        crate::config::Grant::None => {
            ApiError::new(StatusCode::UNAUTHORIZED, "an ingress token is required")
        }
        _ => ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this token may not enqueue to namespace {config_id:?}"),
        ),
    })
}

pub(crate) fn pending_record(state: &AppState, config_id: &str, value: Vec<u8>) -> OutRecord {
    OutRecord {
        topic: state.topics.pending.clone(),
        partition: None,
        key: config_id.as_bytes().to_vec(),
        value: Some(value),
    }
}

/// Enqueue one webhook. 202 means Kafka acknowledged the record.
#[utoipa::path(post, path = "/webhooks/{config_id}/enqueue", tag = "webhooks",
    params(("config_id" = String, Path, description = "the tenant")),
    request_body = EnqueueRequest,
    responses(
        (status = 202, body = Enqueued),
        (status = 400, description = "invalid webhook"),
        (status = 401, description = "ingress tokens are configured and none was given"),
        (status = 403, description = "the token does not cover this namespace"),
        (status = 413, description = "body over api.max_request_size"),
        (status = 422, description = "require_script and no script"),
        (status = 503, description = "Kafka cannot take it; nothing accepted"),
    ))]
pub async fn enqueue(
    State(state): State<AppState>,
    Path(config_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Enqueued>), ApiError> {
    authorize(&state, &headers, &config_id)?;
    let (webhook_id, value) = prepare(&state, &config_id, &body)?;
    state
        .ingress
        .send(pending_record(&state, &config_id, value))
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Enqueued {
            webhook_id,
            status: "pending",
        }),
    ))
}

/// Enqueue 1–1000 webhooks atomically: every item is validated first, one bad item rejects
/// the batch (naming its index), and the records are written in one transaction.
#[utoipa::path(post, path = "/webhooks/{config_id}/enqueue/batch", tag = "webhooks",
    params(("config_id" = String, Path, description = "the tenant")),
    request_body = BatchRequest,
    responses(
        (status = 202, body = BatchEnqueued),
        (status = 400, description = "invalid batch or item (`index` names it)"),
        (status = 401, description = "ingress tokens are configured and none was given"),
        (status = 403, description = "the token does not cover this namespace"),
        (status = 413, description = "body over api.max_request_size"),
        (status = 422, description = "an item has require_script and no script"),
        (status = 503, description = "Kafka cannot take them; nothing accepted"),
    ))]
pub async fn enqueue_batch(
    State(state): State<AppState>,
    Path(config_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<BatchEnqueued>), ApiError> {
    authorize(&state, &headers, &config_id)?;
    let batch: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body must be {{\"webhooks\": [...]}}: {e}")))?;
    if batch.webhooks.is_empty() || batch.webhooks.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH} webhooks, got {}",
            batch.webhooks.len()
        )));
    }
    let mut ids = Vec::with_capacity(batch.webhooks.len());
    let mut records = Vec::with_capacity(batch.webhooks.len());
    for (index, item) in batch.webhooks.iter().enumerate() {
        let (id, value) = prepare(&state, &config_id, item.get().as_bytes()).map_err(|e| {
            ApiError::new(e.status, format!("webhooks[{index}]: {}", e.error)).with("index", index)
        })?;
        ids.push(id);
        records.push(pending_record(&state, &config_id, value));
    }
    state
        .ingress
        .send_all(records)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let accepted = ids.len();
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchEnqueued {
            webhooks: ids
                .into_iter()
                .map(|webhook_id| Enqueued {
                    webhook_id,
                    status: "pending",
                })
                .collect(),
            accepted,
            failed: 0,
        }),
    ))
}

/// A webhook's delivery status. Eventually consistent: 404 until the processor has taken it.
#[utoipa::path(get, path = "/webhooks/{webhook_id}/status", tag = "webhooks",
    params(("webhook_id" = String, Path, description = "`wh_…`")),
    responses(
        (status = 200, body = WebhookStatusBody),
        (status = 401, description = "ingress tokens are configured and none was given"),
        (status = 404, description = "unknown, not yet processed, or of a namespace the token \
            does not cover"),
        (status = 503, description = "this process runs no status stage (`howk api`)"),
    ))]
pub async fn status(
    State(state): State<AppState>,
    Path(webhook_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<WebhookStatus>, ApiError> {
    let grant = state.config.ingress_grant(crate::bearer(&headers));
    if grant == crate::config::Grant::None {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "an ingress token is required",
        ));
    }
    let Some(topology) = &state.topology else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "status is served by instances that run the processor (howk run)",
        ));
    };
    match topology.status.status(&webhook_id) {
        // Another namespace's webhook looks like no webhook at all.
        Ok(Some(status))
            if status.config_id.as_deref().is_none_or(|config_id| {
                grant.allows(howk_processor::ids::namespace(config_id))
            }) =>
        {
            Ok(Json(status))
        }
        Ok(_) => Err(ApiError::not_found(format!("no webhook {webhook_id}"))),
        Err(error) => Err(ApiError::internal(&error)),
    }
}

/// `WebhookStatus` as documented.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WebhookStatusBody {
    webhook_id: String,
    /// The config the webhook was enqueued for: its status belongs to it (a later webhook of
    /// another config_id with the same id does not change it).
    config_id: Option<String>,
    /// `pending`, `delivered`, `failed` (retry scheduled) or `exhausted` (dead-lettered).
    state: String,
    attempts: u32,
    last_attempt_at: Option<String>,
    last_status_code: Option<u16>,
    last_error: Option<String>,
    next_retry_at: Option<String>,
    delivered_at: Option<String>,
}
