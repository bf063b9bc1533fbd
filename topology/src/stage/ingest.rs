//! Ingest (`howk.pending`, keyed by config_id): decode and validate each record (a poison one
//! becomes an `invalid_record` dead letter carrying its raw bytes), drop idempotency repeats
//! within the TTL (`duplicate` result), emit `accepted`, and re-key the webhook **as accepted**
//! by endpoint onto `howk.delivery`.
//!
//! Idempotency store layout: `k ‖ config_id ‖ 0x00 ‖ key` → expiry (ms, BE), plus an expiry
//! index `e ‖ expiry (BE) ‖ k-key` → empty, so the hourly punctuation deletes expired keys with
//! one range scan. Its changelog is `howk-idempotency-changelog`, same partition.

use std::sync::Arc;

use howk_processor::ids::WebhookId;
use howk_processor::record::internal::DeliveryRecord;
use howk_processor::record::{Outcome, PendingContext, Webhook};
use howk_state::rocks::RocksStore;
use howk_state::store::Store;

use super::{StageSettings, invalid_record_letter, open_task_store, send_dead_letter, send_result};
use crate::log::{ReaderFactory, Record, TopicPartition};
use crate::metrics::metrics;
use crate::processor::{ChangelogEnds, Context, Processor, TaskError};
use crate::restore::write_checkpoint;

/// How often expired idempotency keys are purged.
const EXPIRY_INTERVAL_MS: i64 = 60 * 60 * 1000;
/// Expired keys deleted per punctuation, so one purge cannot stall the partition.
const EXPIRY_BATCH: usize = 10_000;

/// What one ingest task has done, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestCounters {
    pub accepted: u64,
    pub duplicates: u64,
    pub invalid: u64,
}

pub struct IngestProcessor {
    settings: StageSettings,
    partition: TopicPartition,
    changelog: TopicPartition,
    store: RocksStore,
    checkpoint: std::path::PathBuf,
    readers: ReaderFactory,
    next_expiry_ms: i64,
    pub counters: IngestCounters,
}

fn key_of(config_id: &str, key: &str) -> Vec<u8> {
    [b"k", config_id.as_bytes(), &[0], key.as_bytes()].concat()
}

fn expiry_key(expiry_ms: i64, key: &[u8]) -> Vec<u8> {
    [&b"e"[..], &expiry_ms.to_be_bytes(), key].concat()
}

impl IngestProcessor {
    pub fn open(
        settings: StageSettings,
        partition: TopicPartition,
        readers: ReaderFactory,
    ) -> Result<Self, TaskError> {
        let topic = settings.topics.idempotency_changelog.clone();
        let (opened, changelog) =
            open_task_store(&settings, "idempotency", &topic, &partition, &readers)?;
        Ok(Self {
            checkpoint: opened.checkpoint_path(),
            store: opened.store,
            settings,
            partition,
            changelog,
            readers,
            next_expiry_ms: 0,
            counters: IngestCounters::default(),
        })
    }

    /// True when `key` was seen within the TTL; records it otherwise.
    fn is_repeat(&mut self, webhook: &Webhook, now_ms: i64) -> Result<bool, TaskError> {
        let Some(key) = &webhook.idempotency_key else {
            return Ok(false);
        };
        // A re-drive (generation > 0) is not a repeat of the earlier generations.
        let store_key = match webhook.replay_generation {
            0 => key_of(webhook.config_id.as_str(), key),
            generation => key_of(
                webhook.config_id.as_str(),
                &format!("{key}\0replay{generation}"),
            ),
        };
        if let Some(expiry) = self.store.get(&store_key)?
            && let Ok(bytes) = <[u8; 8]>::try_from(expiry.as_slice())
            && i64::from_be_bytes(bytes) > now_ms
        {
            return Ok(true);
        }
        let ttl = i64::try_from(self.settings.idempotency_ttl.as_millis()).unwrap_or(i64::MAX);
        let expiry = now_ms.saturating_add(ttl);
        self.store.put(&store_key, &expiry.to_be_bytes());
        self.store.put(&expiry_key(expiry, &store_key), b"");
        Ok(false)
    }

    fn flush(&mut self, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        let changes = self.store.commit()?;
        ctx.changelog(&self.changelog, changes);
        Ok(())
    }
}

impl Processor for IngestProcessor {
    fn process(&mut self, record: Record, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        let topics = Arc::clone(&self.settings.topics);
        let raw = record.value.clone().unwrap_or_default();
        let decoded = match &record.value {
            None => Err(howk_processor::record::InvalidRecord(
                "a tombstone (null value) is not a webhook".into(),
            )),
            Some(value) => Webhook::decode_pending(
                value,
                &PendingContext {
                    key: record.key.as_deref(),
                    timestamp_ms: record.timestamp_ms,
                    topic: &record.topic,
                    partition: record.partition,
                    offset: record.offset,
                    max_record_bytes: self.settings.max_record_bytes,
                    default_max_attempts: self.settings.default_max_attempts,
                },
            ),
        };
        let webhook = match decoded {
            Ok(webhook) => webhook,
            Err(invalid) => {
                self.counters.invalid += 1;
                let id = WebhookId::from_offset(&record.topic, record.partition, record.offset);
                tracing::debug!(webhook_id = id.as_str(), reason = %invalid, "invalid record");
                let mut letter = invalid_record_letter(&raw, invalid.0, ctx.now_ms);
                letter.origin = Some(howk_processor::record::webhook::Origin {
                    topic: record.topic.to_string(),
                    partition: record.partition,
                    offset: record.offset,
                });
                send_dead_letter(ctx, &topics, id.as_str(), &letter);
                return Ok(());
            }
        };
        if self.is_repeat(&webhook, ctx.now_ms)? {
            self.counters.duplicates += 1;
            metrics().duplicates.inc();
            let result =
                howk_processor::delivery::decide::result(&webhook, Outcome::Duplicate, ctx.now_ms);
            send_result(ctx, &topics, &result);
            return self.flush(ctx);
        }
        self.counters.accepted += 1;
        metrics().accepted.inc();
        let mut accepted =
            howk_processor::delivery::decide::result(&webhook, Outcome::Accepted, ctx.now_ms);
        accepted.script_hash = webhook.script_hash.clone();
        send_result(ctx, &topics, &accepted);
        let endpoint = webhook.endpoint.clone();
        let delivery = DeliveryRecord {
            webhook,
            previous_error: None,
            due_at_ms: 0,
        };
        ctx.send(&topics.delivery, endpoint.into_bytes(), delivery.encode());
        self.flush(ctx)
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        if ctx.now_ms < self.next_expiry_ms {
            return Ok(());
        }
        let until = expiry_key(ctx.now_ms, b"");
        let expired = self.store.range(b"e", &until, EXPIRY_BATCH)?;
        // A full batch means more are due: purge on at the next punctuation instead of an hour
        // later, or above EXPIRY_BATCH keys an hour the store would grow forever (review M3).
        self.next_expiry_ms = if expired.len() == EXPIRY_BATCH {
            ctx.now_ms
        } else {
            ctx.now_ms + EXPIRY_INTERVAL_MS
        };
        for (index_key, _) in expired {
            let store_key = &index_key[9..];
            // A key re-recorded since has a later expiry: keep it.
            let current = self.store.get(store_key)?;
            if current.as_deref() == Some(&index_key[1..9]) {
                self.store.delete(store_key);
            }
            self.store.delete(&index_key);
        }
        self.flush(ctx)
    }

    fn changelogs(&self) -> Vec<TopicPartition> {
        vec![self.changelog.clone()]
    }

    fn close(&mut self, ends: &ChangelogEnds) -> Result<(), TaskError> {
        tracing::debug!(partition = %self.partition, counters = ?self.counters, "ingest task closed");
        write_checkpoint(
            &self.store,
            &self.checkpoint,
            &self.changelog,
            ends,
            (self.readers)()?.as_mut(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::log::OutRecord;

    fn processor(dir: &std::path::Path) -> IngestProcessor {
        processor_with_ttl(dir, std::time::Duration::from_secs(60))
    }

    fn processor_with_ttl(dir: &std::path::Path, ttl: std::time::Duration) -> IngestProcessor {
        let (_log, readers, kafka) = crate::stage::fixture::log();
        let settings = StageSettings {
            idempotency_ttl: ttl,
            ..crate::stage::fixture::settings(dir, &kafka)
        };
        let partition = TopicPartition::new(&kafka.topics.pending, 0);
        IngestProcessor::open(settings, partition, readers).unwrap()
    }

    fn record(offset: i64, value: &str) -> Record {
        Record {
            topic: Arc::from("howk.pending"),
            partition: 0,
            offset,
            key: Some(Bytes::from_static(b"shop")),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            timestamp_ms: 1_000,
        }
    }

    fn process(processor: &mut IngestProcessor, offset: i64, value: &str) -> Vec<OutRecord> {
        let mut outputs = Vec::new();
        let mut ctx = Context::new(2_000, &mut outputs);
        processor.process(record(offset, value), &mut ctx).unwrap();
        assert!(!ctx.is_deferred(), "ingest finishes every record at once");
        outputs
    }

    fn topics_of(outputs: &[OutRecord]) -> Vec<&str> {
        outputs.iter().map(|o| &*o.topic).collect()
    }

    #[test]
    fn accepts_drops_repeats_and_dead_letters_poison() {
        let dir = tempfile::tempdir().unwrap();
        let mut ingest = processor(dir.path());
        let webhook = r#"{"endpoint": "https://e.com/h", "payload": 1, "idempotency_key": "k"}"#;

        let first = process(&mut ingest, 0, webhook);
        assert_eq!(
            topics_of(&first),
            [
                "howk.results",
                "howk.delivery",
                "howk-idempotency-changelog",
                "howk-idempotency-changelog"
            ]
        );
        assert_eq!(first[1].key, b"https://e.com/h", "re-keyed by endpoint");

        let repeat = process(&mut ingest, 1, webhook);
        assert_eq!(topics_of(&repeat), ["howk.results"]);
        assert!(String::from_utf8_lossy(repeat[0].value.as_ref().unwrap()).contains("duplicate"));

        let poison = process(&mut ingest, 2, "{nope");
        assert_eq!(topics_of(&poison), ["howk.deadletter"]);
        let oversize = format!(
            r#"{{"endpoint": "https://e.com/h", "payload": "{}"}}"#,
            "x".repeat(2000)
        );
        assert_eq!(
            topics_of(&process(&mut ingest, 3, &oversize)),
            ["howk.deadletter"]
        );

        assert_eq!(
            ingest.counters,
            IngestCounters {
                accepted: 1,
                duplicates: 1,
                invalid: 2
            }
        );
    }

    #[test]
    fn the_idempotency_purge_keeps_up_with_more_than_a_batch_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let mut ingest = processor_with_ttl(dir.path(), std::time::Duration::from_secs(1));
        let count = EXPIRY_BATCH * 5 / 2;
        for n in 0..count {
            let webhook = format!(
                r#"{{"endpoint": "https://e.com/h", "payload": 1, "idempotency_key": "k{n}"}}"#
            );
            process(&mut ingest, n as i64, &webhook);
        }
        let keys = |ingest: &IngestProcessor| ingest.store.range(b"k", b"l", usize::MAX).unwrap();
        assert_eq!(keys(&ingest).len(), count);
        // Two hours later, three punctuations 100 ms apart purge every expired key.
        let later = 2_000 + 2 * 3600 * 1000;
        for step in 0..3 {
            let mut outputs = Vec::new();
            let mut ctx = Context::new(later + step * 100, &mut outputs);
            ingest.punctuate(&mut ctx).unwrap();
        }
        assert_eq!(keys(&ingest).len(), 0);
        assert!(
            ingest
                .store
                .range(b"e", b"f", usize::MAX)
                .unwrap()
                .is_empty()
        );
    }
}
