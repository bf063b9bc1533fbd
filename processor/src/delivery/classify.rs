//! What an endpoint's answer means (SPEC §5): 2xx delivered; transport errors, timeouts, 408,
//! 429, 5xx and the webhook's `retry_on_status` retryable; 410 gone; anything else
//! unrecoverable. `Retry-After` (seconds or an HTTP date) is read for the retry delay.

use std::time::{Duration, SystemTime};

/// The class of one attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    Delivered,
    /// Worth another attempt; counts against the circuit breaker.
    Retryable,
    /// 410: the endpoint is gone for good.
    Gone,
    /// A status that will not change on retry (most 4xx).
    Unrecoverable,
}

/// Classifies an HTTP status; `retry_on_status` are statuses the webhook (or its script) made
/// retryable.
pub fn classify_status(status: u16, retry_on_status: &[u16]) -> Classification {
    match status {
        200..=299 => Classification::Delivered,
        _ if retry_on_status.contains(&status) => Classification::Retryable,
        408 | 429 | 500..=599 => Classification::Retryable,
        410 => Classification::Gone,
        _ => Classification::Unrecoverable,
    }
}

/// `Retry-After` as a delay from `now`: delay-seconds or an HTTP date (a past date is zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_per_spec() {
        use Classification::*;
        for (status, expected) in [
            (200, Delivered),
            (204, Delivered),
            (408, Retryable),
            (429, Retryable),
            (500, Retryable),
            (503, Retryable),
            (410, Gone),
            (400, Unrecoverable),
            (401, Unrecoverable),
            (404, Unrecoverable),
            (301, Unrecoverable),
        ] {
            assert_eq!(classify_status(status, &[]), expected, "{status}");
        }
        assert_eq!(classify_status(401, &[401, 403]), Retryable);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Thu, 26 Nov 2026 09:30:00 GMT").unwrap();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 09:31:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
