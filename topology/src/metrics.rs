//! Process-wide metrics (Prometheus), one registry for the topology and the API. Counters are
//! `howk_<noun>[_<unit>]_total`, labelled only from bounded sets (outcome, reason type, route,
//! status), never from tenant data.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// Every metric howk exports.
pub struct Metrics {
    registry: Registry,
    /// Webhooks the ingest stage accepted.
    pub accepted: Counter,
    /// Idempotency repeats dropped.
    pub duplicates: Counter,
    /// Delivery attempts made (script and HTTP).
    pub attempts: Counter,
    pub delivered: Counter,
    pub retries_scheduled: Counter,
    /// Dead letters by `reason_type`.
    pub dead_letters: Family<ReasonLabel, Counter>,
    /// Attempts held back by an open circuit.
    pub circuit_holds: Counter,
    /// Webhooks sent back through `howk.retry` because their endpoint had a full queue.
    pub overflows: Counter,
    /// Webhooks moved to a deliver task's store so their offset could move on.
    pub spills: Counter,
    /// Seconds per attempt (script + HTTP).
    pub attempt_seconds: Histogram,
    /// Webhooks held by deliver tasks (running, queued behind their endpoint, or waiting in
    /// the task's store).
    pub in_flight: Gauge,
    /// Changelog records applied while restoring stores.
    pub restored_records: Counter,
    /// Tasks currently open.
    pub tasks: Gauge,
    /// Transactions committed.
    pub commits: Counter,
    /// Records the group member is behind the end of its partitions (Kafka only).
    pub consumer_lag: Gauge,
    /// API requests by route template and status.
    pub api_requests: Family<RouteLabels, Counter>,
    /// Endpoint circuits deliver tasks keep in memory (only those not closed and clean).
    pub circuits_cached: Gauge,
    /// Script engine threads abandoned in a stuck library call, since start.
    pub script_threads_abandoned: Gauge,
    /// Script engine threads stuck in a library call now.
    pub script_threads_stuck: Gauge,
    /// 1 when fewer engine threads serve than configured (stuck calls past the cap).
    pub script_pool_degraded: Gauge,
    /// Scripts refused for a while after their execution got stuck.
    pub scripts_quarantined: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("howk");
        let metrics = Self {
            accepted: Counter::default(),
            duplicates: Counter::default(),
            attempts: Counter::default(),
            delivered: Counter::default(),
            retries_scheduled: Counter::default(),
            dead_letters: Family::default(),
            circuit_holds: Counter::default(),
            overflows: Counter::default(),
            spills: Counter::default(),
            // 1 ms to ~65 s.
            attempt_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            in_flight: Gauge::default(),
            restored_records: Counter::default(),
            tasks: Gauge::default(),
            commits: Counter::default(),
            consumer_lag: Gauge::default(),
            api_requests: Family::default(),
            circuits_cached: Gauge::default(),
            script_threads_abandoned: Gauge::default(),
            script_threads_stuck: Gauge::default(),
            script_pool_degraded: Gauge::default(),
            scripts_quarantined: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "accepted",
            "Webhooks accepted by the ingest stage",
            metrics.accepted.clone(),
        );
        registry.register(
            "duplicates",
            "Idempotency repeats dropped",
            metrics.duplicates.clone(),
        );
        registry.register(
            "attempts",
            "Delivery attempts made",
            metrics.attempts.clone(),
        );
        registry.register("delivered", "Webhooks delivered", metrics.delivered.clone());
        registry.register(
            "retries_scheduled",
            "Retries scheduled after a retryable failure",
            metrics.retries_scheduled.clone(),
        );
        registry.register(
            "dead_letters",
            "Webhooks dead-lettered, by reason_type",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "circuit_holds",
            "Attempts held back by an open circuit",
            metrics.circuit_holds.clone(),
        );
        registry.register(
            "overflows",
            "Webhooks sent back through the retry topic because their endpoint's queue was full",
            metrics.overflows.clone(),
        );
        registry.register(
            "spills",
            "Webhooks moved to a deliver task's store so their partition's offset moves on",
            metrics.spills.clone(),
        );
        registry.register(
            "attempt_seconds",
            "Duration of one delivery attempt, script and HTTP",
            metrics.attempt_seconds.clone(),
        );
        registry.register(
            "in_flight",
            "Webhooks held by deliver tasks",
            metrics.in_flight.clone(),
        );
        registry.register(
            "restored_records",
            "Changelog records applied while restoring task stores",
            metrics.restored_records.clone(),
        );
        registry.register("tasks", "Open tasks", metrics.tasks.clone());
        registry.register("commits", "Transactions committed", metrics.commits.clone());
        registry.register(
            "consumer_lag_records",
            "Records behind the end of the assigned partitions",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "api_requests",
            "API requests by route and status",
            metrics.api_requests.clone(),
        );
        registry.register(
            "circuits_cached",
            "Endpoint circuits kept in memory by deliver tasks (open, half-open or with failures)",
            metrics.circuits_cached.clone(),
        );
        registry.register(
            "script_threads_abandoned",
            "Script engine threads abandoned in a library call past the deadline, since start",
            metrics.script_threads_abandoned.clone(),
        );
        registry.register(
            "script_threads_stuck",
            "Script engine threads stuck in a library call now",
            metrics.script_threads_stuck.clone(),
        );
        registry.register(
            "script_pool_degraded",
            "1 when fewer script engine threads serve than configured",
            metrics.script_pool_degraded.clone(),
        );
        registry.register(
            "scripts_quarantined",
            "Scripts refused for a while after an execution got stuck",
            metrics.scripts_quarantined.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Copies the script pool's health into its gauges (at scrape time).
    pub fn record_script_pool(&self, health: &howk_processor::lua::pool::PoolHealth) {
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        self.script_threads_abandoned
            .set(gauge(health.abandoned_total));
        self.script_threads_stuck.set(gauge(health.stuck));
        self.script_pool_degraded.set(i64::from(health.degraded()));
        self.scripts_quarantined
            .set(gauge(health.quarantined_scripts));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("metrics encode into a string");
        text
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
