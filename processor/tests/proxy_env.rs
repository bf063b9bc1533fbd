//! Delivery ignores proxy environment variables (review H6): a proxy resolves endpoint names
//! itself, past the SSRF check, so `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` must not route
//! deliveries. Only an explicit `delivery.proxy` does.
//!
//! Its own test binary: it sets process environment variables, which no other test may share.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use howk_processor::delivery::client::{DeliveryClient, DeliveryConfig, RequestParts};
use howk_processor::ids::{ConfigId, WebhookId};
use howk_processor::lua::template::TemplateResolver;
use howk_processor::record::Webhook;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A loopback server answering every request 200 and counting the connections it accepted.
async fn counting_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut read = 0;
                // Read up to the end of the headers and the small body, then answer.
                while read < buffer.len() {
                    match socket.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                    let text = String::from_utf8_lossy(&buffer[..read]);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if read >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (format!("127.0.0.1:{}", address.port()), seen)
}

fn webhook(endpoint: &str) -> Webhook {
    Webhook {
        id: WebhookId::generate(),
        config_id: ConfigId::new("t"),
        endpoint: endpoint.into(),
        payload: Bytes::from_static(b"{}"),
        payload_is_binary: false,
        headers: Vec::new(),
        idempotency_key: None,
        signing_secret: None,
        max_attempts: 3,
        attempt: 0,
        created_at_ms: 0,
        script_hash: None,
        retry_on_status: Vec::new(),
        delivery_query_params: Vec::new(),
        delivery_headers: Vec::new(),
        previous_signing_secret: None,
        origin: None,
        replay_generation: 0,
        script_pin: None,
    }
}

fn client(proxy: Option<String>) -> DeliveryClient {
    let config = DeliveryConfig {
        allowed_cidrs: vec!["127.0.0.0/8".into()],
        timeout: Duration::from_secs(5),
        proxy,
        ..DeliveryConfig::default()
    };
    DeliveryClient::new(
        &config,
        TemplateResolver::new(Arc::new(|_| None), Vec::new()),
    )
    .unwrap()
}

#[tokio::test]
async fn proxy_environment_is_ignored_and_only_an_explicit_proxy_is_used() {
    let (proxy, proxy_seen) = counting_server().await;
    let (endpoint, endpoint_seen) = counting_server().await;
    // SAFETY: this binary has this one test; nothing else reads the environment concurrently
    // (the runtime's workers do not), and it is set before any client is built.
    unsafe {
        for name in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
        ] {
            std::env::set_var(name, format!("http://{proxy}"));
        }
        std::env::remove_var("NO_PROXY");
        std::env::remove_var("no_proxy");
    }
    let url = format!("http://{endpoint}/hook");

    // Control: a default reqwest client does take the environment's proxy, so the variables
    // above are in effect and the assertion below can fail.
    let plain = reqwest::Client::new();
    plain.post(&url).body("{}").send().await.unwrap();
    assert_eq!(
        proxy_seen.load(Ordering::SeqCst),
        1,
        "the control went through the proxy"
    );
    assert_eq!(endpoint_seen.load(Ordering::SeqCst), 0);

    // The delivery client goes straight to the endpoint.
    let response = client(None)
        .send(&webhook(&url), RequestParts::default())
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        proxy_seen.load(Ordering::SeqCst),
        1,
        "delivery used the env proxy"
    );
    assert_eq!(endpoint_seen.load(Ordering::SeqCst), 1);

    // An explicit delivery.proxy is used.
    let (explicit, explicit_seen) = counting_server().await;
    let response = client(Some(format!("http://{explicit}")))
        .send(&webhook(&url), RequestParts::default())
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(explicit_seen.load(Ordering::SeqCst), 1);
    assert_eq!(endpoint_seen.load(Ordering::SeqCst), 1);

    // Through the explicit proxy, a name resolving to a refused address is still refused here.
    let strict = DeliveryClient::new(
        &DeliveryConfig {
            proxy: Some(format!("http://{explicit}")),
            ..DeliveryConfig::default()
        },
        TemplateResolver::new(Arc::new(|_| None), Vec::new()),
    )
    .unwrap();
    let refused = strict
        .send(&webhook("http://localhost:9/x"), RequestParts::default())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("loopback"), "{refused}");
    assert_eq!(
        explicit_seen.load(Ordering::SeqCst),
        1,
        "the proxy saw the refused request"
    );
}
