//! `ApiError`: every error the API answers, as JSON `{"error": "...", ...}` with a precise
//! status (SPEC §3). Internal causes are logged, never echoed.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    /// More fields of the body (`details`, `index`).
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn bad_request(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error)
    }

    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error)
    }

    /// Kafka did not take the records: nothing was accepted.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "log unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the log is unavailable; nothing was accepted, retry later",
        )
    }

    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(self.error));
        body.extend(self.extra);
        (self.status, Json(Value::Object(body))).into_response()
    }
}

/// The JSON body for a status produced outside the handlers (404, 405, 413 from axum).
pub fn canonical(status: StatusCode) -> Value {
    json!({ "error": status.canonical_reason().unwrap_or("error").to_lowercase() })
}
