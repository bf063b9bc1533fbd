//! Fair delivery (SPEC §5): what keeps one endpoint from taking more than its share.
//!
//! - [`DomainLimits`]: at most `delivery.max_per_domain` attempts in flight per endpoint host, in
//!   the whole process (every deliver task shares it). An attempt waits for its permit on the
//!   runtime, never on the stream thread.
//! - [`Pacer`]: a per-(config_id, endpoint) rate limit as a token bucket of one token (the
//!   generic cell rate algorithm): attempts start at least `1 / rate` apart.
//! - [`PairPolicy`]: the rate limit and the ordering mode of one config, read from its
//!   `script_config` (`_delivery_rate_limit`, `_delivery_ordered`) over the global defaults.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-host concurrency limits, shared by every deliver task of a process.
pub struct DomainLimits {
    limit: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// An attempt's place under its host's limit; released on drop.
pub struct DomainPermit {
    limits: Option<Arc<DomainLimits>>,
    host: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for DomainPermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        // The last user of an idle host removes its semaphore: a process that has seen
        // millions of hosts keeps only the busy ones.
        if let Some(limits) = &self.limits {
            let mut hosts = limits.hosts.lock().expect("domain limits lock");
            if let Some(semaphore) = hosts.get(&self.host)
                && Arc::strong_count(semaphore) == 1
                && semaphore.available_permits() == limits.limit
            {
                hosts.remove(&self.host);
            }
        }
    }
}

impl DomainLimits {
    /// `limit` 0 means no limit.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            hosts: Mutex::new(HashMap::new()),
        })
    }

    /// Waits until an attempt to `endpoint`'s host may run.
    pub async fn acquire(self: &Arc<Self>, endpoint: &str) -> DomainPermit {
        if self.limit == 0 {
            return DomainPermit {
                limits: None,
                host: String::new(),
                permit: None,
            };
        }
        let host = host_of(endpoint);
        let semaphore = {
            let mut hosts = self.hosts.lock().expect("domain limits lock");
            Arc::clone(
                hosts
                    .entry(host.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.limit))),
            )
        };
        let permit = semaphore
            .acquire_owned()
            .await
            .expect("a domain semaphore is never closed");
        DomainPermit {
            limits: Some(Arc::clone(self)),
            host,
            permit: Some(permit),
        }
    }

    /// Hosts with an attempt in flight or waiting.
    pub fn hosts(&self) -> usize {
        self.hosts.lock().expect("domain limits lock").len()
    }
}

/// The host of an endpoint URL, lower-cased; the whole text when it does not parse (the attempt
/// then fails on its own).
fn host_of(endpoint: &str) -> String {
    reqwest::Url::parse(endpoint)
        .ok()
        .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_else(|| endpoint.to_owned())
}

/// Start times for one (config_id, endpoint) under a rate limit. Serializable: the deliver task
/// keeps it in its store.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Pacer {
    /// When the next attempt may start (ms since the epoch, fractional).
    next_ms: f64,
}

impl Pacer {
    /// Reserves the next start at `rate` per second: how long to wait from `now_ms`.
    pub fn reserve(&mut self, now_ms: i64, rate: f64) -> std::time::Duration {
        let now = now_ms as f64;
        let start = self.next_ms.max(now);
        self.next_ms = start + 1000.0 / rate;
        std::time::Duration::from_micros(((start - now) * 1000.0) as u64)
    }

    /// Whether nothing is reserved past `now_ms` (the pacer can be forgotten).
    pub fn idle(&self, now_ms: i64) -> bool {
        self.next_ms <= now_ms as f64
    }
}

/// How one config's webhooks are delivered to each of its endpoints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairPolicy {
    /// Requests per second per endpoint; `None` for no limit.
    pub rate_limit: Option<f64>,
    /// Strict FIFO per endpoint: a failing webhook blocks the ones behind it.
    pub ordered: bool,
}

impl PairPolicy {
    /// The policy of a config whose script has `script_config`, over the global defaults.
    /// Unusable values (a negative rate, a non-boolean mode) fall back to the defaults.
    pub fn resolve(defaults: PairPolicy, script_config: Option<&serde_json::Value>) -> PairPolicy {
        let Some(config) = script_config else {
            return defaults;
        };
        let rate_limit = match config.get("_delivery_rate_limit") {
            Some(value) => value
                .as_f64()
                .filter(|rate| *rate > 0.0)
                .or(defaults.rate_limit),
            None => defaults.rate_limit,
        };
        let ordered = config
            .get("_delivery_ordered")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(defaults.ordered);
        PairPolicy {
            rate_limit,
            ordered,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_pacer_spaces_starts_and_forgets_idle_time() {
        let mut pacer = Pacer::default();
        assert_eq!(pacer.reserve(1000, 10.0), Duration::ZERO);
        assert_eq!(pacer.reserve(1000, 10.0), Duration::from_millis(100));
        assert_eq!(pacer.reserve(1050, 10.0), Duration::from_millis(150));
        assert!(!pacer.idle(1250));
        // After a pause, no credit piles up: one start at once, then the spacing again.
        assert!(pacer.idle(5000));
        assert_eq!(pacer.reserve(5000, 10.0), Duration::ZERO);
        assert_eq!(pacer.reserve(5000, 10.0), Duration::from_millis(100));
    }

    #[test]
    fn script_config_overrides_the_defaults() {
        let defaults = PairPolicy {
            rate_limit: None,
            ordered: false,
        };
        let config = serde_json::json!({"_delivery_rate_limit": 20, "_delivery_ordered": true});
        assert_eq!(
            PairPolicy::resolve(defaults, Some(&config)),
            PairPolicy {
                rate_limit: Some(20.0),
                ordered: true
            }
        );
        let bad = serde_json::json!({"_delivery_rate_limit": -1, "_delivery_ordered": "yes"});
        assert_eq!(PairPolicy::resolve(defaults, Some(&bad)), defaults);
        assert_eq!(PairPolicy::resolve(defaults, None), defaults);
    }

    #[tokio::test]
    async fn a_host_admits_at_most_its_limit_and_idle_hosts_are_forgotten() {
        let limits = DomainLimits::new(2);
        let a = limits.acquire("https://a.example/x").await;
        let b = limits.acquire("https://A.example/y").await;
        let third = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("https://a.example/z"),
        )
        .await;
        assert!(third.is_err(), "a third permit for the same host");
        let other = limits.acquire("https://b.example/").await;
        assert_eq!(limits.hosts(), 2);
        drop(a);
        let c = limits.acquire("https://a.example/z").await;
        drop((b, c, other));
        assert_eq!(limits.hosts(), 0);
    }
}
