//! What an attempt's outcome means for the webhook (SPEC §5): delivered, a retry at the next
//! backoff, or a dead letter with its reason — and what the circuit breaker learns. Pure: the
//! deliver stage turns the decision into records.

use chrono::{TimeZone, Utc};

use super::attempt::{AttemptReport, Attempted};
use super::classify::{Classification, classify_status};
use crate::policy::retry::RetryConfig;
use crate::record::internal::{DeliveryRecord, StoredPreviousError};
use crate::record::outcome::redacted_webhook;
use crate::record::{DeadLetter, DeliveryResult, Outcome, ReasonType, Webhook};

/// What the endpoint's circuit learns from an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitEffect {
    /// The endpoint answered something that is not a retryable failure.
    Success,
    /// A retryable failure: counts toward opening the circuit.
    Failure,
    /// The endpoint was not reached (script failure, refusal).
    Untouched,
}

/// The records one attempt leads to.
#[derive(Debug, Clone)]
pub struct Decision {
    pub result: DeliveryResult,
    /// The next attempt, for `howk.retry`.
    pub retry: Option<DeliveryRecord>,
    pub dead_letter: Option<DeadLetter>,
    pub circuit: CircuitEffect,
}

/// Settings of the decision.
#[derive(Debug, Clone)]
pub struct DecideConfig {
    pub retry: RetryConfig,
    /// `dlq.include_response_body`.
    pub include_response_body: bool,
}

pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A result for `webhook` at `now_ms`, outcome and details to fill.
pub fn result(webhook: &Webhook, outcome: Outcome, now_ms: i64) -> DeliveryResult {
    DeliveryResult {
        webhook_id: webhook.id.as_str().to_owned(),
        config_id: webhook.config_id.as_str().to_owned(),
        endpoint: webhook.endpoint.clone(),
        attempt: webhook.attempt,
        outcome,
        status_code: None,
        error: None,
        duration_ms: 0,
        timestamp: rfc3339(now_ms),
        next_retry_at: None,
        script_hash: None,
    }
}

/// A dead letter for `webhook`.
pub fn dead_letter(
    webhook: &Webhook,
    reason_type: ReasonType,
    reason: String,
    now_ms: i64,
) -> DeadLetter {
    DeadLetter {
        webhook: redacted_webhook(webhook),
        reason_type,
        reason,
        last_error: None,
        status_code: None,
        response_body: None,
        attempts: webhook.attempt + 1,
        time: rfc3339(now_ms),
        origin: webhook.origin.clone(),
    }
}

/// How the attempt failed, if it did: reason type when terminal, error text, status.
struct Failure {
    retryable: bool,
    terminal_reason: ReasonType,
    error: String,
    status_code: Option<u16>,
    response_body: Option<String>,
    retry_after: Option<std::time::Duration>,
    circuit: CircuitEffect,
}

fn failure(webhook: &Webhook, report: &AttemptReport) -> Option<Failure> {
    match &report.attempted {
        Attempted::Answered(response) => {
            let mut retry_on = webhook.retry_on_status.clone();
            retry_on.extend(&report.retry_on_status);
            let class = classify_status(response.status, &retry_on);
            let (retryable, terminal_reason, circuit) = match class {
                Classification::Delivered => return None,
                Classification::Retryable => (true, ReasonType::Exhausted, CircuitEffect::Failure),
                Classification::Gone => (false, ReasonType::Gone, CircuitEffect::Success),
                Classification::Unrecoverable => {
                    (false, ReasonType::Unrecoverable, CircuitEffect::Success)
                }
            };
            Some(Failure {
                retryable,
                terminal_reason,
                error: format!("HTTP {}", response.status),
                status_code: Some(response.status),
                response_body: Some(response.body_prefix.clone()),
                retry_after: response.retry_after,
                circuit,
            })
        }
        Attempted::NotSent(error) => Some(Failure {
            retryable: error.is_retryable(),
            terminal_reason: if error.is_retryable() {
                ReasonType::Exhausted
            } else {
                ReasonType::Unrecoverable
            },
            error: error.to_string(),
            status_code: None,
            response_body: None,
            retry_after: None,
            circuit: if error.is_retryable() {
                CircuitEffect::Failure
            } else {
                CircuitEffect::Untouched
            },
        }),
        Attempted::ScriptFailed(error) => Some(Failure {
            retryable: error.is_retryable(),
            terminal_reason: if error.is_retryable() {
                ReasonType::Exhausted
            } else {
                error.kind.into()
            },
            error: match &error.transient_cause {
                Some(cause) => format!("{} (after: {cause})", error.message),
                None => error.message.clone(),
            },
            status_code: None,
            response_body: None,
            retry_after: None,
            circuit: CircuitEffect::Untouched,
        }),
    }
}

/// Decides what follows `report` for the webhook of `record`. `random` is uniform in [0, 1)
/// and places the retry delay within its jitter band.
pub fn decide(
    record: &DeliveryRecord,
    report: &AttemptReport,
    now_ms: i64,
    config: &DecideConfig,
    random: f64,
) -> Decision {
    let webhook = &record.webhook;
    let mut base = result(webhook, Outcome::Delivered, now_ms);
    base.duration_ms = u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX);
    base.script_hash = report.script_hash.clone();
    let Some(failure) = failure(webhook, report) else {
        if let Attempted::Answered(response) = &report.attempted {
            base.status_code = Some(response.status);
        }
        return Decision {
            result: base,
            retry: None,
            dead_letter: None,
            circuit: CircuitEffect::Success,
        };
    };
    base.status_code = failure.status_code;
    base.error = Some(failure.error.clone());

    let attempts_left = webhook.attempt + 1 < webhook.max_attempts;
    if failure.retryable && attempts_left {
        let delay = config
            .retry
            .next_delay(webhook.attempt, failure.retry_after, random);
        let due_at_ms = now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        let mut next = webhook.clone();
        next.attempt += 1;
        base.outcome = Outcome::RetryScheduled;
        base.next_retry_at = Some(rfc3339(due_at_ms));
        return Decision {
            result: base,
            retry: Some(DeliveryRecord {
                webhook: next,
                previous_error: Some(StoredPreviousError {
                    status_code: failure.status_code,
                    error: failure.error,
                    attempt: webhook.attempt,
                }),
                due_at_ms,
            }),
            dead_letter: None,
            circuit: failure.circuit,
        };
    }

    let (reason_type, reason) = if failure.retryable {
        (
            ReasonType::Exhausted,
            format!(
                "gave up after {} attempts; last: {}",
                webhook.attempt + 1,
                failure.error
            ),
        )
    } else {
        (failure.terminal_reason, failure.error.clone())
    };
    let mut letter = dead_letter(webhook, reason_type, reason, now_ms);
    letter.last_error = Some(failure.error);
    letter.status_code = failure.status_code;
    if config.include_response_body {
        letter.response_body = failure.response_body.filter(|body| !body.is_empty());
    }
    base.outcome = Outcome::DeadLettered;
    Decision {
        result: base,
        retry: None,
        dead_letter: Some(letter),
        circuit: failure.circuit,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::delivery::client::{Response, SendError};
    use crate::ids::{ConfigId, WebhookId};
    use crate::lua::{ScriptError, ScriptErrorKind};

    fn record(attempt: u32, max_attempts: u32) -> DeliveryRecord {
        DeliveryRecord {
            webhook: Webhook {
                id: WebhookId::generate(),
                config_id: ConfigId::new("c"),
                endpoint: "https://e.com/h".into(),
                payload: Bytes::from_static(b"{}"),
                payload_is_binary: false,
                headers: Vec::new(),
                idempotency_key: None,
                signing_secret: None,
                max_attempts,
                attempt,
                created_at_ms: 0,
                script_hash: None,
                retry_on_status: Vec::new(),
                delivery_query_params: Vec::new(),
                delivery_headers: Vec::new(),
                previous_signing_secret: None,
                origin: None,
                replay_generation: 0,
                script_pin: None,
            },
            previous_error: None,
            due_at_ms: 0,
        }
    }

    fn answered(status: u16, retry_after: Option<u64>) -> AttemptReport {
        AttemptReport {
            attempted: Attempted::Answered(Response {
                status,
                retry_after: retry_after.map(Duration::from_secs),
                body_prefix: "nope".into(),
            }),
            duration: Duration::from_millis(3),
            script_hash: None,
            retry_on_status: Vec::new(),
        }
    }

    fn config() -> DecideConfig {
        DecideConfig {
            retry: RetryConfig {
                base_delay: Duration::from_secs(1),
                jitter: 0.0,
                ..RetryConfig::default()
            },
            include_response_body: true,
        }
    }

    #[test]
    fn a_5xx_schedules_the_next_attempt_with_the_original_webhook() {
        let decision = decide(&record(0, 3), &answered(500, None), 1_000, &config(), 0.5);
        let retry = decision.retry.unwrap();
        assert_eq!(retry.webhook.attempt, 1);
        assert_eq!(retry.due_at_ms, 2_000);
        assert_eq!(retry.previous_error.unwrap().status_code, Some(500));
        assert_eq!(decision.result.outcome, Outcome::RetryScheduled);
        assert_eq!(decision.circuit, CircuitEffect::Failure);
    }

    #[test]
    fn retry_after_is_honoured_and_the_last_attempt_exhausts() {
        let decision = decide(&record(0, 3), &answered(503, Some(7)), 0, &config(), 0.5);
        assert_eq!(decision.retry.unwrap().due_at_ms, 7_000);
        let last = decide(&record(2, 3), &answered(500, None), 0, &config(), 0.5);
        let letter = last.dead_letter.unwrap();
        assert_eq!(letter.reason_type, ReasonType::Exhausted);
        assert_eq!(letter.attempts, 3);
        assert_eq!(letter.response_body.as_deref(), Some("nope"));
        assert_eq!(last.result.outcome, Outcome::DeadLettered);
    }

    #[test]
    fn statuses_410_and_400_are_terminal_at_once() {
        let gone = decide(&record(0, 5), &answered(410, None), 0, &config(), 0.5);
        assert_eq!(gone.dead_letter.unwrap().reason_type, ReasonType::Gone);
        let bad = decide(&record(0, 5), &answered(400, None), 0, &config(), 0.5);
        assert_eq!(
            bad.dead_letter.unwrap().reason_type,
            ReasonType::Unrecoverable
        );
        assert_eq!(bad.circuit, CircuitEffect::Success, "4xx does not count");
    }

    #[test]
    fn script_errors_dead_letter_unless_a_module_failed_transiently() {
        let mut report = answered(200, None);
        report.attempted =
            Attempted::ScriptFailed(ScriptError::new(ScriptErrorKind::Runtime, "boom"));
        let decision = decide(&record(0, 5), &report, 0, &config(), 0.5);
        assert_eq!(
            decision.dead_letter.unwrap().reason_type,
            ReasonType::ScriptRuntimeError
        );
        let mut transient = ScriptError::new(ScriptErrorKind::Runtime, "boom");
        transient.transient_cause = Some("kv.get: connection refused".into());
        report.attempted = Attempted::ScriptFailed(transient);
        assert!(
            decide(&record(0, 5), &report, 0, &config(), 0.5)
                .retry
                .is_some()
        );
    }

    #[test]
    fn a_refused_address_is_unrecoverable() {
        let mut report = answered(200, None);
        report.attempted = Attempted::NotSent(SendError::Refused("127.0.0.1 is a loopback".into()));
        let decision = decide(&record(0, 5), &report, 0, &config(), 0.5);
        let letter = decision.dead_letter.unwrap();
        assert_eq!(letter.reason_type, ReasonType::Unrecoverable);
        assert!(letter.reason.contains("127.0.0.1"));
    }
}
