//! The dry run: a candidate script (given inline, not stored) and the current one, run side by
//! side over recorded traffic — the webhooks of `howk.pending`, as accepted — with no HTTP call.
//! Each webhook is reported unchanged, changed or errored; the summary counts them, counts the
//! error types and keeps sample diffs of body and headers.
//!
//! Side-effect free: the engines have the pure modules only (`json`, `base64`, `log`), not `kv`,
//! `http` or `crypto`; a script that needs them reports `errored` with that cause. Sample
//! headers whose names look secret show `[REDACTED]` values (a change is still reported).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use howk_processor::lua::{LuaEngine, Script, ScriptError, ScriptInput, ScriptMetadata};
use howk_processor::record::outcome::is_secret_header;
use howk_processor::record::{PendingContext, Webhook};
use serde::Serialize;

use super::ReplayError;
use crate::log::{Log, ReadEvent, TopicPartition, TopicReader};
use crate::scripts_table::ScriptsTable;

/// Sample diffs a report keeps.
const SAMPLES: usize = 10;
/// Characters of a body a sample shows.
const BODY_PREVIEW: usize = 512;

/// Which recorded webhooks a dry run takes. Empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct DryRunSource {
    pub config_ids: Vec<String>,
    pub namespaces: Vec<String>,
    /// Only this partition of `howk.pending` (all when `None`).
    pub partition: Option<i32>,
    /// From this offset (per partition read); default the start.
    pub from_offset: Option<i64>,
    /// Up to this offset, excluded; default the end when the run starts.
    pub to_offset: Option<i64>,
    /// Records produced at or after / before these times (ms since the epoch).
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Most webhooks run (after filtering).
    pub limit: Option<u64>,
}

/// How one webhook fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Unchanged,
    Changed,
    Errored,
}

/// One webhook's comparison, as a sample or a line of the per-record output.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub webhook_id: String,
    pub config_id: String,
    pub partition: i32,
    pub offset: i64,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_after: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers_added: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers_removed: Vec<String>,
    /// Name, before, after.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers_changed: Vec<(String, String, String)>,
}

/// A dry run's summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DryRunReport {
    pub scanned: u64,
    pub selected: u64,
    pub unchanged: u64,
    pub changed: u64,
    pub errored: u64,
    /// `side:error_type` → count (`candidate:script_runtime_error`).
    pub error_types: BTreeMap<String, u64>,
    pub samples: Vec<Comparison>,
    pub seconds: f64,
}

/// What the request would be: the body sent and the headers the script leaves (a webhook
/// without a script sends its payload and headers as accepted).
type Outcome = Result<(Vec<u8>, Vec<(String, String)>), ScriptError>;

fn run_one(engine: &mut LuaEngine, script: Option<&Script>, webhook: &Webhook) -> Outcome {
    let Some(script) = script else {
        return Ok((webhook.payload.to_vec(), webhook.headers.clone()));
    };
    let created_at = webhook.created_at_rfc3339();
    let input = ScriptInput {
        payload: &webhook.payload,
        headers: &webhook.headers,
        metadata: ScriptMetadata {
            webhook_id: webhook.id.as_str(),
            config_id: webhook.config_id.as_str(),
            attempt: webhook.attempt,
            max_attempts: webhook.max_attempts,
            created_at: &created_at,
        },
        previous_error: None,
    };
    let request = engine.execute(script, &input)?;
    Ok((
        request.body.unwrap_or_else(|| webhook.payload.to_vec()),
        request.headers,
    ))
}

fn shown(name: &str, value: &str) -> String {
    if is_secret_header(name) {
        "[REDACTED]".to_owned()
    } else {
        value.to_owned()
    }
}

fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(BODY_PREVIEW) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

/// Compares the current and the candidate outcome of one webhook.
fn compare(
    webhook: &Webhook,
    partition: i32,
    offset: i64,
    current: Outcome,
    candidate: Outcome,
) -> Comparison {
    let mut comparison = Comparison {
        webhook_id: webhook.id.as_str().to_owned(),
        config_id: webhook.config_id.as_str().to_owned(),
        partition,
        offset,
        verdict: Verdict::Unchanged,
        current_error: None,
        candidate_error: None,
        body_before: None,
        body_after: None,
        headers_added: Vec::new(),
        headers_removed: Vec::new(),
        headers_changed: Vec::new(),
    };
    let describe = |error: &ScriptError| format!("{}: {}", error.kind.reason_type(), error.message);
    match (current, candidate) {
        (Ok((body_a, headers_a)), Ok((body_b, headers_b))) => {
            if body_a != body_b {
                comparison.body_before = Some(preview(&body_a));
                comparison.body_after = Some(preview(&body_b));
            }
            let before: BTreeMap<String, String> = headers_a
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect();
            let after: BTreeMap<String, String> = headers_b
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect();
            let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
            for name in names {
                match (before.get(name), after.get(name)) {
                    (None, Some(value)) => comparison
                        .headers_added
                        .push((name.clone(), shown(name, value))),
                    (Some(_), None) => comparison.headers_removed.push(name.clone()),
                    (Some(a), Some(b)) if a != b => comparison.headers_changed.push((
                        name.clone(),
                        shown(name, a),
                        shown(name, b),
                    )),
                    _ => {}
                }
            }
            let changed = comparison.body_before.is_some()
                || !comparison.headers_added.is_empty()
                || !comparison.headers_removed.is_empty()
                || !comparison.headers_changed.is_empty();
            if changed {
                comparison.verdict = Verdict::Changed;
            }
        }
        (current, candidate) => {
            comparison.verdict = Verdict::Errored;
            comparison.current_error = current.err().as_ref().map(describe);
            comparison.candidate_error = candidate.err().as_ref().map(describe);
        }
    }
    comparison
}

impl DryRunSource {
    fn takes(&self, webhook: &Webhook, timestamp_ms: i64) -> bool {
        let config_id = webhook.config_id.as_str();
        super::config_matches(&self.config_ids, &self.namespaces, config_id)
            && self.since_ms.is_none_or(|s| timestamp_ms >= s)
            && self.until_ms.is_none_or(|u| timestamp_ms < u)
    }
}

/// Runs `candidate` (with the current script's `script_config` unless it has its own) and each
/// webhook's current script over the `howk.pending` records `source` selects. `each` sees every
/// comparison (for a per-record output) and may stop the run by returning false.
#[allow(clippy::too_many_arguments)]
pub fn dry_run<L: Log>(
    log: &L,
    pending: &str,
    scripts: &ScriptsTable,
    candidate: &Script,
    engine: &mut LuaEngine,
    source: &DryRunSource,
    max_record_bytes: usize,
    mut each: impl FnMut(&Comparison, &DryRunReport) -> bool,
) -> Result<DryRunReport, ReplayError> {
    let started = Instant::now();
    let mut report = DryRunReport::default();
    let partitions: Vec<i32> = match source.partition {
        Some(partition) => vec![partition],
        None => (0..log.partitions(pending)?).collect(),
    };
    let mut reader = log.reader()?;
    'partitions: for partition in partitions {
        let tp = TopicPartition::new(pending, partition);
        let end = reader
            .end_offset(&tp)?
            .min(source.to_offset.unwrap_or(i64::MAX));
        let from = source.from_offset.unwrap_or(0);
        if from >= end {
            continue;
        }
        reader.assign(&[(tp.clone(), from)])?;
        let mut idle_since = Instant::now();
        loop {
            let record = match reader.poll(Duration::from_millis(200))? {
                Some(ReadEvent::Record(record)) => record,
                Some(ReadEvent::EndOfPartition(_)) => break,
                None if idle_since.elapsed() > Duration::from_secs(30) => {
                    return Err(ReplayError::Invalid(format!(
                        "{tp} stopped short of offset {end}"
                    )));
                }
                None => continue,
            };
            idle_since = Instant::now();
            if record.offset >= end {
                break;
            }
            report.scanned += 1;
            let Some(value) = record.value.as_deref() else {
                continue;
            };
            let context = PendingContext {
                key: record.key.as_deref(),
                timestamp_ms: record.timestamp_ms,
                topic: &record.topic,
                partition: record.partition,
                offset: record.offset,
                max_record_bytes,
                default_max_attempts: 20,
            };
            // An invalid record never reached a script.
            let Ok(webhook) = Webhook::decode_pending(value, &context) else {
                continue;
            };
            if !source.takes(&webhook, record.timestamp_ms) {
                continue;
            }
            report.selected += 1;
            let entry = scripts.lookup(&webhook.config_id);
            let current_script = entry.as_ref().map(|entry| entry.script.clone());
            let candidate = match (&candidate.config, &current_script) {
                (None, Some(current)) => Script {
                    config: current.config.clone(),
                    ..candidate.clone()
                },
                _ => candidate.clone(),
            };
            let current = run_one(engine, current_script.as_ref(), &webhook);
            let next = run_one(engine, Some(&candidate), &webhook);
            let comparison = compare(&webhook, record.partition, record.offset, current, next);
            match comparison.verdict {
                Verdict::Unchanged => report.unchanged += 1,
                Verdict::Changed => report.changed += 1,
                Verdict::Errored => {
                    report.errored += 1;
                    for (side, error) in [
                        ("current", &comparison.current_error),
                        ("candidate", &comparison.candidate_error),
                    ] {
                        if let Some(error) = error {
                            let kind = error.split(':').next().unwrap_or_default();
                            *report
                                .error_types
                                .entry(format!("{side}:{kind}"))
                                .or_default() += 1;
                        }
                    }
                }
            }
            if comparison.verdict != Verdict::Unchanged && report.samples.len() < SAMPLES {
                report.samples.push(comparison.clone());
            }
            report.seconds = started.elapsed().as_secs_f64();
            if !each(&comparison, &report) {
                break 'partitions;
            }
            if source.limit.is_some_and(|limit| report.selected >= limit) {
                break 'partitions;
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook() -> Webhook {
        let context = PendingContext {
            key: Some(b"shop:1"),
            timestamp_ms: 0,
            topic: "howk.pending",
            partition: 0,
            offset: 0,
            max_record_bytes: 1 << 20,
            default_max_attempts: 20,
        };
        Webhook::decode_pending(
            br#"{"endpoint":"https://e.example/h","payload":{"a":1},"headers":{"X-Keep":"k","Authorization":"Bearer 1"}}"#,
            &context,
        )
        .unwrap()
    }

    fn engine() -> LuaEngine {
        LuaEngine::new(
            howk_processor::lua::LuaConfig::default()
                .engine_settings(std::sync::Arc::new(|_| None)),
        )
    }

    #[test]
    fn the_same_script_is_unchanged_and_a_different_one_is_a_diff() {
        let mut engine = engine();
        let webhook = webhook();
        let current = Script::new(r#"request.headers["X-A"] = "1""#, None);
        let same = run_one(&mut engine, Some(&current), &webhook);
        let again = run_one(&mut engine, Some(&current), &webhook);
        assert_eq!(
            compare(&webhook, 0, 0, same, again).verdict,
            Verdict::Unchanged
        );

        let candidate = Script::new(
            r#"request.headers["X-A"] = "2"; request.headers["Authorization"] = "Bearer 2"
               headers["X-Keep"] = nil; request.body = json.encode({b = 2})"#,
            None,
        );
        let before = run_one(&mut engine, Some(&current), &webhook);
        let after = run_one(&mut engine, Some(&candidate), &webhook);
        let diff = compare(&webhook, 0, 7, before, after);
        assert_eq!(diff.verdict, Verdict::Changed);
        assert_eq!(diff.body_before.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(diff.body_after.as_deref(), Some(r#"{"b":2}"#));
        assert_eq!(diff.headers_removed, ["x-keep"]);
        assert!(
            diff.headers_changed
                .contains(&("x-a".into(), "1".into(), "2".into()))
        );
        assert!(
            diff.headers_changed.contains(&(
                "authorization".into(),
                "[REDACTED]".into(),
                "[REDACTED]".into()
            )),
            "{:?}",
            diff.headers_changed
        );
    }

    #[test]
    fn a_failing_candidate_is_errored_with_its_type() {
        let mut engine = engine();
        let webhook = webhook();
        let before = run_one(&mut engine, None, &webhook);
        let after = run_one(
            &mut engine,
            Some(&Script::new("error('nope')", None)),
            &webhook,
        );
        let diff = compare(&webhook, 0, 0, before, after);
        assert_eq!(diff.verdict, Verdict::Errored);
        assert!(diff.current_error.is_none());
        assert!(
            diff.candidate_error
                .as_deref()
                .unwrap()
                .starts_with("script_runtime_error: ")
        );
    }
}
