//! Signatures on the wire (SPEC §5), through the real broker and checked by independent
//! verifiers: the Standard Webhooks reference library (PyPI `standardwebhooks`) for HMAC v1,
//! Python's `cryptography` for ed25519 v1a (the reference library skips v1a signatures), and our
//! own verifier for both. Covers a secret rotation in each scheme and across schemes, and a
//! rotation window that has ended.
//!
//! The Python verifiers run with `HOWK_TEST_PYTHON` (`./scripts/test` makes a venv with both
//! packages); `python3` otherwise.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use howk_processor::delivery::sign::{public_key, verify_standard};
use howk_processor::record::Secret;

use crate::helpers::howk::Howk;
use crate::helpers::sink::{Received, WebhookSink};
use crate::helpers::wait_for;

/// An HMAC secret in the Standard Webhooks format: `whsec_` and 24 bytes of `fill`.
fn whsec(fill: u8) -> String {
    format!("whsec_{}", STANDARD.encode([fill; 24]))
}

/// An ed25519 secret key: `whsk_` and a 32-byte seed of `fill`.
fn whsk(fill: u8) -> String {
    format!("whsk_{}", STANDARD.encode([fill; 32]))
}

fn whpk(secret: &str) -> String {
    public_key(&Secret::new(secret)).unwrap().unwrap()
}

/// Runs the Python verifiers over `checks` (scheme, key, request): "ok" or an error each.
fn python_verify(checks: &[(&str, &str, &Received)]) -> Vec<String> {
    let input: Vec<serde_json::Value> = checks
        .iter()
        .map(|(scheme, key, received)| {
            serde_json::json!({
                "scheme": scheme, "key": key, "headers": received.headers,
                "body_base64": STANDARD.encode(&received.body),
            })
        })
        .collect();
    let python = std::env::var("HOWK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/fixtures/verify_signatures.py"
    );
    let mut child = std::process::Command::new(&python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {python}: {error}"));
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{python} {script} failed (needs standardwebhooks and cryptography; ./scripts/test \
         installs them): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Our verifier on one received request.
fn ours(key: &str, received: &Received) -> bool {
    verify_standard(
        key,
        received.header("webhook-id").unwrap(),
        received.header("webhook-timestamp").unwrap(),
        &received.body,
        received.header("webhook-signature").unwrap(),
    )
    .is_ok()
}

/// The `v1=` values of HOWK's `X-Webhook-Signature`, checked against each of `secrets` in order.
fn howk_header_matches(received: &Received, secrets: &[&str]) -> bool {
    let header = received.header("x-webhook-signature").unwrap();
    let ts = received.header("x-webhook-timestamp").unwrap();
    let expected: Vec<String> = secrets
        .iter()
        .map(|secret| {
            use hmac::{KeyInit, Mac};
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(format!("{ts}.").as_bytes());
            mac.update(&received.body);
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        })
        .collect();
    header == format!("t={ts},{}", expected.join(","))
}

#[tokio::test(flavor = "multi_thread")]
async fn signatures_verify_with_the_reference_libraries_through_rotations() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    let (a, b, c) = (whsec(1), whsk(2), whsec(3));
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let cases: [(&str, serde_json::Value); 5] = [
        ("hmac", serde_json::json!({"signing_secret": a})),
        ("ed25519", serde_json::json!({"signing_secret": b})),
        (
            "rotating",
            serde_json::json!({"signing_secret": c, "previous_signing_secret": a,
                "previous_signing_secret_expires_at": soon}),
        ),
        (
            "to-ed25519",
            serde_json::json!({"signing_secret": b, "previous_signing_secret": a,
                "previous_signing_secret_expires_at": soon}),
        ),
        (
            "rotated",
            serde_json::json!({"signing_secret": c, "previous_signing_secret": a,
                "previous_signing_secret_expires_at": "2020-01-01T00:00:00Z"}),
        ),
    ];
    let webhooks: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(path, secrets)| {
            let mut webhook = secrets.clone();
            webhook["endpoint"] = sink.url(path).into();
            webhook["payload"] = serde_json::json!({"case": path, "price": 1.50});
            (
                "signing:a".to_owned(),
                serde_json::to_vec(&webhook).unwrap(),
            )
        })
        .collect();
    howk.enqueue(&webhooks).await;
    wait_for("five signed requests", Duration::from_secs(60), || async {
        (sink.total() >= 5).then_some(())
    })
    .await;
    let got: HashMap<&str, Received> = cases
        .iter()
        .map(|(path, _)| (*path, sink.received(path).remove(0)))
        .collect();

    // HOWK's header: one v1 per HMAC-capable secret, current first; none for ed25519 alone.
    assert!(howk_header_matches(&got["hmac"], &[&a]));
    assert_eq!(got["ed25519"].header("x-webhook-signature"), None);
    assert!(howk_header_matches(&got["rotating"], &[&c, &a]));
    assert!(howk_header_matches(&got["to-ed25519"], &[&a]));
    assert!(howk_header_matches(&got["rotated"], &[&c]));

    let pk = whpk(&b);
    let checks = [
        ("v1", a.as_str(), &got["hmac"]),
        ("v1a", pk.as_str(), &got["ed25519"]),
        ("v1", c.as_str(), &got["rotating"]),
        ("v1", a.as_str(), &got["rotating"]),
        ("v1a", pk.as_str(), &got["to-ed25519"]),
        ("v1", a.as_str(), &got["to-ed25519"]),
        ("v1", c.as_str(), &got["rotated"]),
        // The window has ended: the old key no longer verifies.
        ("v1", a.as_str(), &got["rotated"]),
    ];
    let python = python_verify(&checks);
    let expected_ok = [true, true, true, true, true, true, true, false];
    for (((scheme, key, received), verdict), ok) in checks.iter().zip(&python).zip(expected_ok) {
        let case = received.header("webhook-signature").unwrap();
        assert_eq!(
            verdict == "ok",
            ok,
            "python {scheme} with {key}: {verdict} ({case})"
        );
        assert_eq!(ours(key, received), ok, "ours {scheme} with {key} ({case})");
    }
    // Rotation lists both signatures, space-separated, current first.
    let versions = |received: &Received| -> Vec<String> {
        received
            .header("webhook-signature")
            .unwrap()
            .split(' ')
            .map(|entry| entry.split_once(',').unwrap().0.to_owned())
            .collect()
    };
    assert_eq!(versions(&got["rotating"]), ["v1", "v1"]);
    assert_eq!(versions(&got["to-ed25519"]), ["v1a", "v1"]);
    assert_eq!(versions(&got["rotated"]), ["v1"]);
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_signing_key_is_dead_lettered_when_accepted() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    let webhook = serde_json::json!({
        "endpoint": sink.url("never"), "payload": {}, "signing_secret": "whsk_AAAA",
    });
    howk.enqueue(&[("signing:b".into(), serde_json::to_vec(&webhook).unwrap())])
        .await;
    let mut letters = howk.tail("deadletter");
    letters.until("the dead letter", Duration::from_secs(30), |records| {
        !records.is_empty()
    });
    let letter = &letters.json()[0];
    assert_eq!(letter["reason_type"], "invalid_record");
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("32 or 64 bytes"), "{reason}");
    // The secret is not in the dead letter.
    assert!(!serde_json::to_string(letter).unwrap().contains("whsk_AAAA"));
    assert_eq!(sink.total(), 0);
    howk.stop();
}
