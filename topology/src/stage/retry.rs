//! Retry (`howk.retry`, keyed by webhook_id): durable timers instead of sleeping. Each scheduled
//! retry waits in a RocksDB timer store ordered by due time (changelog
//! `howk-timers-changelog`); a wall-clock punctuator re-emits due records to `howk.delivery`,
//! keyed by endpoint. The record already carries the next attempt number, the previous error and
//! the **original** payload and headers — the deliver stage wrote it that way — so re-emitting
//! is a copy, and nothing blocks the partition while a retry waits.

use howk_processor::record::internal::DeliveryRecord;
use howk_state::rocks::RocksStore;
use howk_state::timer::TimerStore;

use super::{StageSettings, dead_letter_undecodable, open_task_store};
use crate::log::{ReaderFactory, Record, TopicPartition};
use crate::processor::{ChangelogEnds, Context, Processor, TaskError};
use crate::restore::write_checkpoint;

/// Timers re-emitted per punctuation (every 100 ms), so a burst of due retries is spread over
/// several commits instead of one huge transaction.
const DUE_BATCH: usize = 2_000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetryCounters {
    pub scheduled: u64,
    pub emitted: u64,
    pub invalid: u64,
}

pub struct RetryProcessor {
    settings: StageSettings,
    changelog: TopicPartition,
    timers: TimerStore<RocksStore>,
    checkpoint: std::path::PathBuf,
    readers: ReaderFactory,
    pub counters: RetryCounters,
}

impl RetryProcessor {
    pub fn open(
        settings: StageSettings,
        partition: TopicPartition,
        readers: ReaderFactory,
    ) -> Result<Self, TaskError> {
        let topic = settings.topics.timers_changelog.clone();
        let (opened, changelog) =
            open_task_store(&settings, "timers", &topic, &partition, &readers)?;
        Ok(Self {
            checkpoint: opened.checkpoint_path(),
            timers: TimerStore::new(opened.store),
            settings,
            changelog,
            readers,
            counters: RetryCounters::default(),
        })
    }

    fn flush(&mut self, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        let changes = self.timers.commit()?;
        ctx.changelog(&self.changelog, changes);
        Ok(())
    }
}

impl Processor for RetryProcessor {
    fn process(&mut self, record: Record, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        let raw = record.value.unwrap_or_default();
        match DeliveryRecord::decode(&raw) {
            Ok(retry) => {
                self.counters.scheduled += 1;
                self.timers
                    .schedule(retry.due_at_ms, retry.webhook.id.as_str().as_bytes(), &raw);
                self.flush(ctx)
            }
            Err(error) => {
                self.counters.invalid += 1;
                let reason = format!("retry record: {error}");
                let topics = &self.settings.topics;
                dead_letter_undecodable(ctx, topics, record.key.as_deref(), &raw, reason);
                Ok(())
            }
        }
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        let due = self.timers.due(ctx.now_ms, DUE_BATCH)?;
        if due.is_empty() {
            return Ok(());
        }
        for timer in due {
            self.timers.cancel(timer.due_ms, &timer.id);
            match DeliveryRecord::decode(&timer.payload) {
                Ok(retry) => {
                    self.counters.emitted += 1;
                    let endpoint = retry.webhook.endpoint.into_bytes();
                    ctx.send(&self.settings.topics.delivery, endpoint, timer.payload);
                }
                // Only a record that decoded when scheduled gets here (a format this build can no
                // longer read, after a downgrade): dead-lettered, not dropped.
                Err(error) => {
                    self.counters.invalid += 1;
                    let reason = format!("retry timer: {error}");
                    let topics = &self.settings.topics;
                    dead_letter_undecodable(ctx, topics, Some(&timer.id), &timer.payload, reason);
                }
            }
        }
        self.flush(ctx)
    }

    fn changelogs(&self) -> Vec<TopicPartition> {
        vec![self.changelog.clone()]
    }

    fn close(&mut self, ends: &ChangelogEnds) -> Result<(), TaskError> {
        write_checkpoint(
            self.timers.store(),
            &self.checkpoint,
            &self.changelog,
            ends,
            (self.readers)()?.as_mut(),
        )
    }
}
