//! The circuit breaker per endpoint (SPEC §5): `failure_threshold` retryable failures within
//! `failure_window` open it, and so do `failure_threshold` bad attempts among the last
//! `window_attempts`, where a bad attempt is a retryable failure (timeouts included) or a call
//! slower than `slow_call_duration` — the rule that catches a slow or black-holed endpoint whose
//! serial attempts never fail often enough per minute. After `recovery_timeout` one probe at a
//! time goes through;
//! `success_threshold` successful probes close it, a failed probe opens it again. Only retryable
//! failures count (a 4xx is the request's fault, not the endpoint's). While open, webhooks wait
//! without spending attempts.
//!
//! The state is plain data with wall-clock milliseconds, so the deliver stage can keep it in its
//! RocksDB store and changelog and restore it on another instance.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `circuit_breaker.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Retryable failures within `failure_window` that open the circuit. Default 5.
    pub failure_threshold: u32,
    /// Default 60s.
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// How long an open circuit rejects before letting a probe through. Default 5m.
    #[serde(with = "humantime_serde")]
    pub recovery_timeout: Duration,
    /// Successful probes that close the circuit. Default 2.
    pub success_threshold: u32,
    /// A delivered call that took longer counts as a bad attempt in the attempt window.
    /// Default 5s.
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Duration,
    /// The sliding window of attempts in which `failure_threshold` bad ones open the circuit.
    /// Default 10, at most 32.
    pub window_attempts: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_window: Duration::from_secs(60),
            recovery_timeout: Duration::from_secs(300),
            success_threshold: 2,
            slow_call_duration: Duration::from_secs(5),
            window_attempts: 10,
        }
    }
}

impl CircuitBreakerConfig {
    fn window_mask(&self) -> u32 {
        match self.window_attempts.clamp(1, 32) {
            32 => u32::MAX,
            n => (1 << n) - 1,
        }
    }
}

/// One endpoint's circuit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CircuitState {
    /// Requests flow; the times of recent retryable failures (ms) are kept, and the last
    /// attempts as bits (bit 0 the latest, set when bad). A healthy endpoint's window is 0 and
    /// stays 0, so its deliveries change nothing (and write nothing to the store).
    Closed {
        failures_ms: Vec<i64>,
        recent_bad: u32,
    },
    /// Requests wait until `opened_at_ms + recovery_timeout`.
    Open { opened_at_ms: i64 },
    /// One probe at a time; `successes` so far.
    HalfOpen {
        probe_in_flight: bool,
        successes: u32,
    },
}

impl Default for CircuitState {
    fn default() -> Self {
        Self::Closed {
            failures_ms: Vec::new(),
            recent_bad: 0,
        }
    }
}

/// Whether a request may go to the endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as the half-open probe: its outcome decides the circuit.
    Probe,
    /// Not now; try again at `retry_at_ms`.
    Rejected {
        retry_at_ms: i64,
    },
}

/// How long a request waits when a probe is already in flight.
const PROBE_BUSY_WAIT_MS: i64 = 1000;

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl CircuitState {
    /// Decides one request, moving open → half-open once the recovery timeout has passed.
    pub fn admit(&mut self, now_ms: i64, config: &CircuitBreakerConfig) -> Admission {
        match self {
            Self::Closed { .. } => Admission::Allowed,
            Self::Open { opened_at_ms } => {
                let reopen_at = opened_at_ms.saturating_add(millis(config.recovery_timeout));
                if now_ms >= reopen_at {
                    *self = Self::HalfOpen {
                        probe_in_flight: true,
                        successes: 0,
                    };
                    Admission::Probe
                } else {
                    Admission::Rejected {
                        retry_at_ms: reopen_at,
                    }
                }
            }
            Self::HalfOpen {
                probe_in_flight, ..
            } => {
                if *probe_in_flight {
                    Admission::Rejected {
                        retry_at_ms: now_ms + PROBE_BUSY_WAIT_MS,
                    }
                } else {
                    *probe_in_flight = true;
                    Admission::Probe
                }
            }
        }
    }

    pub fn record_success(&mut self, config: &CircuitBreakerConfig) {
        if let Self::Closed { recent_bad, .. } = self {
            *recent_bad = (*recent_bad << 1) & config.window_mask();
        }
        if let Self::HalfOpen { successes, .. } = self {
            let successes = *successes + 1;
            *self = if successes >= config.success_threshold {
                Self::default()
            } else {
                Self::HalfOpen {
                    probe_in_flight: false,
                    successes,
                }
            };
        }
    }

    /// Ends a probe that never reached the endpoint (its script failed first): the next request
    /// may probe instead.
    pub fn release_probe(&mut self) {
        if let Self::HalfOpen {
            probe_in_flight, ..
        } = self
        {
            *probe_in_flight = false;
        }
    }

    /// A delivered call slower than `slow_call_duration`: a bad attempt in the window of a
    /// closed circuit, and a success for a probe (the endpoint answered).
    pub fn record_slow_success(&mut self, now_ms: i64, config: &CircuitBreakerConfig) {
        match self {
            Self::Closed { recent_bad, .. } => {
                *recent_bad = ((*recent_bad << 1) | 1) & config.window_mask();
                if recent_bad.count_ones() >= config.failure_threshold {
                    *self = Self::Open {
                        opened_at_ms: now_ms,
                    };
                }
            }
            _ => self.record_success(config),
        }
    }

    /// A retryable failure (non-retryable ones do not count).
    pub fn record_failure(&mut self, now_ms: i64, config: &CircuitBreakerConfig) {
        match self {
            Self::Closed {
                failures_ms,
                recent_bad,
            } => {
                let since = now_ms - millis(config.failure_window);
                failures_ms.retain(|&at| at > since);
                failures_ms.push(now_ms);
                *recent_bad = ((*recent_bad << 1) | 1) & config.window_mask();
                if failures_ms.len() >= config.failure_threshold as usize
                    || recent_bad.count_ones() >= config.failure_threshold
                {
                    *self = Self::Open {
                        opened_at_ms: now_ms,
                    };
                }
            }
            Self::HalfOpen { .. } => {
                *self = Self::Open {
                    opened_at_ms: now_ms,
                }
            }
            Self::Open { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn threshold_failures_within_the_window_open_it() {
        let config = CircuitBreakerConfig::default();
        let mut state = CircuitState::default();
        for i in 0..4 {
            state.record_failure(i * 1000, &config);
        }
        assert_eq!(state.admit(5000, &config), Admission::Allowed);
        state.record_failure(5000, &config);
        assert_eq!(state, CircuitState::Open { opened_at_ms: 5000 });
        assert_eq!(
            state.admit(6000, &config),
            Admission::Rejected {
                retry_at_ms: 5000 + 5 * MIN
            }
        );
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let config = CircuitBreakerConfig::default();
        let mut state = CircuitState::default();
        for i in 0..10 {
            state.record_failure(i * 20_000, &config);
            // Good attempts between them keep the attempt window under the threshold (at most
            // 4 bad among the last 10).
            state.record_success(&config);
            state.record_success(&config);
        }
        assert!(matches!(state, CircuitState::Closed { .. }), "{state:?}");
    }

    #[test]
    fn slow_and_failed_attempts_in_the_attempt_window_open_it_whatever_the_pace() {
        // A black-holed endpoint: one 30 s timeout after another, never 5 within a minute.
        let config = CircuitBreakerConfig::default();
        let mut state = CircuitState::default();
        for i in 0..4 {
            state.record_failure(i * 30_000, &config);
        }
        assert!(matches!(state, CircuitState::Closed { .. }), "{state:?}");
        state.record_failure(4 * 30_000, &config);
        assert_eq!(
            state,
            CircuitState::Open {
                opened_at_ms: 120_000
            }
        );
        // Slow deliveries count too; fast ones push bad attempts out of the window.
        let mut state = CircuitState::default();
        for i in 0..4 {
            state.record_slow_success(i, &config);
        }
        for _ in 0..7 {
            state.record_success(&config);
        }
        state.record_slow_success(10, &config);
        assert!(matches!(state, CircuitState::Closed { .. }), "{state:?}");
        for i in 0..4 {
            state.record_slow_success(20 + i, &config);
        }
        assert_eq!(state, CircuitState::Open { opened_at_ms: 23 });
    }

    #[test]
    fn a_healthy_endpoint_keeps_the_default_state() {
        let config = CircuitBreakerConfig::default();
        let mut state = CircuitState::default();
        for _ in 0..100 {
            state.record_success(&config);
        }
        assert_eq!(state, CircuitState::default());
    }

    #[test]
    fn one_probe_at_a_time_and_two_successes_close_it() {
        let config = CircuitBreakerConfig::default();
        let mut state = CircuitState::Open { opened_at_ms: 0 };
        assert_eq!(state.admit(5 * MIN, &config), Admission::Probe);
        assert!(matches!(
            state.admit(5 * MIN + 1, &config),
            Admission::Rejected { .. }
        ));
        state.record_success(&config);
        assert_eq!(state.admit(5 * MIN + 2, &config), Admission::Probe);
        state.record_success(&config);
        assert_eq!(state, CircuitState::default());
        assert_eq!(state.admit(5 * MIN + 3, &config), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let config = CircuitBreakerConfig::default();
        let mut state = CircuitState::Open { opened_at_ms: 0 };
        assert_eq!(state.admit(5 * MIN, &config), Admission::Probe);
        state.record_failure(5 * MIN, &config);
        assert_eq!(
            state,
            CircuitState::Open {
                opened_at_ms: 5 * MIN
            }
        );
    }

    #[test]
    fn state_round_trips_through_postcard() {
        let state = CircuitState::Closed {
            failures_ms: vec![1, 2, 3],
            recent_bad: 0b101,
        };
        let bytes = postcard::to_stdvec(&state).unwrap();
        assert_eq!(postcard::from_bytes::<CircuitState>(&bytes).unwrap(), state);
    }
}
