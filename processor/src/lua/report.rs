//! The outcome of a script test run, shaped as SPEC §3's `POST /config/:config_id/script/test`
//! response; `howk script test` prints the same document.

use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;
use serde_json::value::RawValue;

use super::error::ScriptError;
use super::script::TransformedRequest;

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum TestReport {
    Success {
        success: bool,
        /// The body, embedded as JSON when it is valid JSON (exact bytes kept).
        #[serde(skip_serializing_if = "Option::is_none")]
        transformed_payload: Option<Box<RawValue>>,
        /// The body's bytes when they are not valid JSON.
        #[serde(skip_serializing_if = "Option::is_none")]
        transformed_payload_base64: Option<String>,
        /// The full header map after the script, names as written.
        transformed_headers: serde_json::Map<String, serde_json::Value>,
        execution_time_ms: f64,
    },
    Failure {
        success: bool,
        error: String,
        /// The SPEC reason: `script_syntax_error`, `script_timeout`, ...
        error_type: &'static str,
        execution_time_ms: f64,
    },
}

impl TestReport {
    /// Builds the report of one execution; `payload` is the body sent when the script set none.
    pub fn new(
        result: &Result<TransformedRequest, ScriptError>,
        payload: &[u8],
        elapsed: Duration,
    ) -> Self {
        let execution_time_ms = elapsed.as_secs_f64() * 1000.0;
        match result {
            Ok(request) => {
                let body = request.body.as_deref().unwrap_or(payload);
                let embedded = std::str::from_utf8(body)
                    .ok()
                    .and_then(|text| RawValue::from_string(text.to_owned()).ok());
                let base64 = embedded
                    .is_none()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(body));
                let transformed_headers = request
                    .headers
                    .iter()
                    .map(|(name, value)| (name.clone(), serde_json::Value::from(value.as_str())))
                    .collect();
                Self::Success {
                    success: true,
                    transformed_payload: embedded,
                    transformed_payload_base64: base64,
                    transformed_headers,
                    execution_time_ms,
                }
            }
            Err(error) => Self::Failure {
                success: false,
                error: error.message.clone(),
                error_type: error.reason_type(),
                execution_time_ms,
            },
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lua::error::ScriptErrorKind;

    fn render(report: &TestReport) -> serde_json::Value {
        let mut value = serde_json::to_value(report).unwrap();
        value["execution_time_ms"] = 0.into();
        value
    }

    #[test]
    fn json_body_is_embedded_with_exact_bytes() {
        let request = TransformedRequest {
            body: Some(br#"{"price":1.50}"#.to_vec()),
            headers: vec![("X-A".into(), "1".into())],
            ..TransformedRequest::default()
        };
        let report = TestReport::new(&Ok(request), b"", Duration::ZERO);
        assert_eq!(
            serde_json::to_string(&report)
                .unwrap()
                .split(",\"execution")
                .next()
                .unwrap(),
            r#"{"success":true,"transformed_payload":{"price":1.50},"transformed_headers":{"X-A":"1"}"#
        );
    }

    #[test]
    fn binary_body_is_base64() {
        let request = TransformedRequest {
            body: Some(vec![0x89, b'P', b'N', b'G']),
            ..TransformedRequest::default()
        };
        let value = render(&TestReport::new(&Ok(request), b"", Duration::ZERO));
        assert_eq!(value["transformed_payload_base64"], "iVBORw==");
        assert!(value.get("transformed_payload").is_none());
    }

    #[test]
    fn failure_names_the_spec_reason() {
        let error = ScriptError::new(ScriptErrorKind::Timeout, "script exceeded its time limit");
        let value = render(&TestReport::new(&Err(error), b"", Duration::ZERO));
        assert_eq!(value["success"], false);
        assert_eq!(value["error_type"], "script_timeout");
    }
}
