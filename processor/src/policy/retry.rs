//! Backoff (SPEC §5): after failed attempt `n` (0-based), `retry.base_delay × 2^min(n, 10)`,
//! jittered by ±`retry.jitter`, capped at `retry.max_delay` after jitter. A `Retry-After` answer
//! is honoured, clamped to [backoff, `retry.max_delay`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `retry.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Delay after the first failed attempt, doubled per attempt (up to 2^10). Default 10s.
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    /// Longest delay between attempts. Default 24h.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Relative jitter, 0.0 to 1.0: 0.2 spreads a delay over ±20 %. Default 0.2.
    pub jitter: f64,
    /// Total attempts of a webhook that does not say. Default 20.
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(24 * 3600),
            jitter: 0.2,
            max_attempts: 20,
        }
    }
}

/// The largest exponent of the doubling.
const MAX_DOUBLINGS: u32 = 10;

impl RetryConfig {
    /// The delay after failed attempt `attempt` (0-based). `random` is uniform in [0, 1) and
    /// places the delay within the jitter band.
    pub fn backoff(&self, attempt: u32, random: f64) -> Duration {
        let base = self.base_delay.as_secs_f64() * f64::from(1u32 << attempt.min(MAX_DOUBLINGS));
        let spread = 1.0 + self.jitter.clamp(0.0, 1.0) * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * spread).max(0.0)).min(self.max_delay)
    }

    /// The delay before the next attempt, honouring `Retry-After` within [backoff, max_delay].
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>, random: f64) -> Duration {
        let backoff = self.backoff(attempt, random);
        match retry_after {
            Some(asked) => asked.clamp(backoff, self.max_delay.max(backoff)),
            None => backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt_up_to_two_to_the_tenth() {
        let config = RetryConfig {
            jitter: 0.0,
            ..RetryConfig::default()
        };
        assert_eq!(config.backoff(0, 0.5), Duration::from_secs(10));
        assert_eq!(config.backoff(1, 0.5), Duration::from_secs(20));
        assert_eq!(config.backoff(3, 0.5), Duration::from_secs(80));
        assert_eq!(config.backoff(10, 0.5), Duration::from_secs(10 * 1024));
        assert_eq!(config.backoff(15, 0.5), Duration::from_secs(10 * 1024));
    }

    #[test]
    fn jitter_spreads_within_the_band_and_the_cap_applies_after_it() {
        let config = RetryConfig::default();
        assert_eq!(config.backoff(0, 0.0), Duration::from_secs(8));
        assert_eq!(config.backoff(0, 1.0), Duration::from_secs(12));
        let capped = RetryConfig {
            max_delay: Duration::from_secs(15),
            ..RetryConfig::default()
        };
        assert_eq!(capped.backoff(5, 1.0), Duration::from_secs(15));
    }

    #[test]
    fn retry_after_is_clamped_between_backoff_and_max_delay() {
        let config = RetryConfig {
            jitter: 0.0,
            max_delay: Duration::from_secs(3600),
            ..RetryConfig::default()
        };
        assert_eq!(
            config.next_delay(0, Some(Duration::from_secs(2)), 0.5),
            Duration::from_secs(10)
        );
        assert_eq!(
            config.next_delay(0, Some(Duration::from_secs(60)), 0.5),
            Duration::from_secs(60)
        );
        assert_eq!(
            config.next_delay(0, Some(Duration::from_secs(99_999)), 0.5),
            Duration::from_secs(3600)
        );
    }
}
