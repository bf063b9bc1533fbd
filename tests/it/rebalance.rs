//! Two instances in one group: partitions move when the second joins and when it leaves, tasks
//! hand over through the revocation commit, and every webhook is still delivered with exactly
//! one `delivered` result.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::howk::Howk;
use crate::helpers::sink::WebhookSink;

fn batch(sink: &WebhookSink, from: usize, count: usize) -> Vec<(String, Vec<u8>)> {
    (from..from + count)
        .map(|n| {
            let value = format!(
                r#"{{"endpoint": "{}", "payload": {{"n": {n}}}}}"#,
                sink.url(&format!("r{}", n % 7))
            );
            (format!("rebalance:{}", n % 13), value.into_bytes())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_move_between_instances_without_losing_or_duplicating_results() {
    let sink = WebhookSink::start().await;
    let mut first = Howk::new(&[]).await;
    first.start();
    first.enqueue(&batch(&sink, 0, 300)).await;
    let mut results = first.tail("results");
    let delivered = |records: &[(String, Vec<u8>)]| {
        let mut ids = HashMap::new();
        for (key, value) in records {
            if String::from_utf8_lossy(value).contains(r#""outcome":"delivered""#) {
                *ids.entry(key.clone()).or_insert(0usize) += 1;
            }
        }
        ids
    };
    results.until("the first 300", Duration::from_secs(60), |r| {
        delivered(r).len() >= 300
    });

    // A second instance of the same group, same topics: the partitions are shared.
    let mut second = first.sibling("i1");
    second.start();
    // Ready means it was assigned partitions: they moved away from the first instance.
    second.wait_ready().await;
    first.enqueue(&batch(&sink, 300, 300)).await;
    results.until("600 delivered", Duration::from_secs(90), |r| {
        delivered(r).len() >= 600
    });
    // The second leaves cleanly; the first takes everything back.
    second.stop();
    first.enqueue(&batch(&sink, 600, 300)).await;
    results.until("900 delivered", Duration::from_secs(90), |r| {
        delivered(r).len() >= 900
    });
    results.poll(Duration::from_millis(500));

    let counts = delivered(&results.records);
    assert_eq!(counts.len(), 900);
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "delivered results repeated: {repeated:?}"
    );
    first.stop();
}
