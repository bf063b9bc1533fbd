//! `POST /incoming/:name` (SPEC §7): one request through an operator's transformer script,
//! fanned out into webhooks that enter `howk.pending` exactly like REST enqueues — the same
//! validation, ids, idempotency and script fence — written in one transaction: all or none.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use howk_processor::lua::transformer::TransformerInput;
use serde::Serialize;
use utoipa::ToSchema;

use super::webhooks::{pending_record, prepare};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/incoming/{name}", axum::routing::post(incoming))
}

#[derive(Serialize, ToSchema)]
pub struct Created {
    id: String,
    endpoint: String,
    config_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct Incoming {
    webhooks: Vec<Created>,
    count: usize,
}

/// `user`, `password` of `Authorization: Basic ...`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn unauthorized() -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "credentials required").into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"howk\""),
    );
    response
}

/// Run a transformer on this request. 200 lists the webhooks created (possibly none).
#[utoipa::path(post, path = "/incoming/{name}", tag = "transformers",
    params(("name" = String, Path, description = "the transformer (`name.lua`)")),
    request_body(content = String, description = "any body; the script reads it as `incoming`"),
    responses(
        (status = 200, body = Incoming),
        (status = 401, description = "the transformer has a passwd file and the Basic credentials are missing or wrong"),
        (status = 404, description = "no such transformer, or transformers are off"),
        (status = 413, description = "body over api.max_request_size"),
        (status = 422, description = "the script failed (`error_type` names how), or a webhook it posted is invalid (`index`)"),
        (status = 500, description = "the transformer's json or passwd file is broken"),
        (status = 503, description = "Kafka cannot take the webhooks (none was written), or Lua is off"),
    ))]
pub async fn incoming(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match run(state, name, headers, body).await {
        Ok(answer) => answer,
        Err(error) => error.into_response(),
    }
}

async fn run(
    state: AppState,
    name: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let transformers = &state.transformers;
    let transformer = transformers
        .enabled()
        .then(|| transformers.get(&name))
        .flatten()
        .ok_or_else(|| ApiError::not_found(format!("no transformer {name:?}")))?;
    if transformer.needs_auth() {
        let Some((user, password)) = basic_credentials(&headers) else {
            return Ok(unauthorized());
        };
        let checked = std::sync::Arc::clone(&transformer);
        let ok = tokio::task::spawn_blocking(move || checked.check_credentials(&user, &password))
            .await
            .map_err(|e| ApiError::internal(&e))?;
        if !ok {
            return Ok(unauthorized());
        }
    }
    if let Some(problem) = &transformer.problem {
        tracing::error!(transformer = name, problem, "transformer cannot serve");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "transformer {name} is misconfigured; its operator has the details in the logs"
            ),
        ));
    }
    let Some(pool) = &state.pool else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transformers need lua.enabled",
        ));
    };
    let input = TransformerInput {
        name: name.clone(),
        incoming: body,
        headers: headers
            .iter()
            .filter(|(name, _)| *name != header::AUTHORIZATION)
            // A value that is not visible ASCII reaches the script as lossy UTF-8, not dropped.
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
    };
    let posts = pool
        .transform(
            transformer.script.clone(),
            input,
            std::sync::Arc::clone(&transformer.allowed_domains),
        )
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|error| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.message.clone())
                .with("error_type", error.kind.reason_type())
        })?;

    let mut created = Vec::with_capacity(posts.len());
    let mut records = Vec::with_capacity(posts.len());
    for (index, post) in posts.iter().enumerate() {
        let (id, value) = prepare(&state, &post.config_id, &post.enqueue_body()).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("webhook {index} of the script: {}", e.error),
            )
            .with("index", index)
        })?;
        records.push(pending_record(&state, &post.config_id, value));
        created.push(Created {
            id,
            endpoint: post.endpoint.clone(),
            config_id: post.config_id.clone(),
        });
    }
    if !records.is_empty() {
        state
            .ingress
            .send_all(records)
            .await
            .map_err(|e| ApiError::unavailable(&e))?;
    }
    let count = created.len();
    tracing::debug!(transformer = name, count, "incoming request fanned out");
    Ok((
        StatusCode::OK,
        Json(Incoming {
            webhooks: created,
            count,
        }),
    )
        .into_response())
}
