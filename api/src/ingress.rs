//! `Ingress`: how the API writes to the log. One record is acknowledged by the brokers
//! (acks=all) before the API answers 202; several are written atomically (one transaction).
//! Object-safe, so the router is not generic over the log.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use howk_topology::log::embedded::EmbeddedLog;
use howk_topology::log::kafka::{KafkaLog, client_config};
use howk_topology::log::{Log, LogError, OutRecord};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

pub trait Ingress: Send + Sync + 'static {
    /// Writes one record; resolves once the log has it.
    fn send(&self, record: OutRecord) -> BoxFuture<'static, Result<(), LogError>>;

    /// Writes records all or none.
    fn send_all(&self, records: Vec<OutRecord>) -> BoxFuture<'static, Result<(), LogError>>;

    /// Whether the log answers now.
    fn check(&self) -> BoxFuture<'static, Result<(), String>>;
}

/// How long one enqueue may wait for Kafka before the API answers 503.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The Kafka ingress: an idempotent producer (acks=all) for single records, the log's
/// transactional producer for batches.
pub struct KafkaIngress {
    log: Arc<KafkaLog>,
    producer: OnceLock<Result<FutureProducer, String>>,
}

impl KafkaIngress {
    pub fn new(log: Arc<KafkaLog>) -> Self {
        Self {
            log,
            producer: OnceLock::new(),
        }
    }

    fn producer(&self) -> Result<&FutureProducer, LogError> {
        self.producer
            .get_or_init(|| {
                client_config(self.log.config())
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("partitioner", "murmur2_random")
                    .set("linger.ms", "1")
                    .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
                    .create()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| LogError::Embedded(format!("cannot create the producer: {e}")))
    }
}

impl Ingress for KafkaIngress {
    fn send(&self, record: OutRecord) -> BoxFuture<'static, Result<(), LogError>> {
        let producer = self.producer().cloned();
        Box::pin(async move {
            let producer = producer?;
            let mut message = FutureRecord::to(&record.topic).key(&record.key[..]);
            if let Some(value) = &record.value {
                message = message.payload(&value[..]);
            }
            producer
                .send(message, SEND_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|(source, _)| LogError::Kafka {
                    operation: "producing a record",
                    source,
                })
        })
    }

    fn send_all(&self, records: Vec<OutRecord>) -> BoxFuture<'static, Result<(), LogError>> {
        let log = Arc::clone(&self.log);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || log.produce(records))
                .await
                .map_err(|e| LogError::Embedded(e.to_string()))?
        })
    }

    fn check(&self) -> BoxFuture<'static, Result<(), String>> {
        let producer = self.producer().cloned();
        let topic = self.log.config().topics.pending.clone();
        Box::pin(async move {
            let producer = producer.map_err(|e| e.to_string())?;
            tokio::task::spawn_blocking(move || {
                // One topic's metadata: a cluster's full metadata grows with its topics.
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .map(|_| ())
                    .map_err(|e| format!("kafka: {e}"))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

/// The embedded log (`howk dev`): writes are local and immediate.
pub struct EmbeddedIngress(pub Arc<EmbeddedLog>);

impl Ingress for EmbeddedIngress {
    fn send(&self, record: OutRecord) -> BoxFuture<'static, Result<(), LogError>> {
        let result = self.0.produce(vec![record]);
        Box::pin(async move { result })
    }

    fn send_all(&self, records: Vec<OutRecord>) -> BoxFuture<'static, Result<(), LogError>> {
        let result = self.0.produce(records);
        Box::pin(async move { result })
    }

    fn check(&self) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Flushes the Kafka ingress's producer (graceful shutdown).
pub fn flush(ingress: &KafkaIngress) {
    if let Some(Ok(producer)) = ingress.producer.get() {
        let _ = producer.flush(Duration::from_secs(5));
    }
}
