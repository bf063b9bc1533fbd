//! The HTTP side of one delivery attempt (SPEC §5, §6): build the request from the webhook as
//! accepted plus what its script produced, POST it, and report what came back.
//!
//! Security: the connection can only reach addresses the [`AddressPolicy`] allows — checked for
//! IP-literal hosts here and for names in the resolver — and redirects are never followed.
//! `${VAR}` overrides (`_delivery_headers`, `_delivery_query_params`) are resolved here, at send
//! time, and live only in this request: they never reach a record, a store or a log line.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::classify::parse_retry_after;
use super::sign::{SignError, signature_headers};
use crate::lua::template::TemplateResolver;
use crate::net::{AddressPolicy, AddressPolicyError, CheckedResolver, refused_address};
use crate::record::Webhook;

/// `delivery.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Time limit of one POST, connection included. Default 30s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// CIDRs endpoints may resolve to although they are loopback/private/link-local (SPEC §5).
    /// Default none; `howk dev` adds loopback.
    pub allowed_cidrs: Vec<String>,
    /// Webhooks one deliver task holds in memory (running or queued behind their endpoint, not
    /// yet spilled to its store) before it stops reading its partition. Default 1000.
    pub max_in_flight: usize,
    /// Webhooks a slow (config_id, endpoint) — one whose oldest webhook has waited past
    /// `spill_after` — may have in a deliver task (running, queued, or waiting in the store)
    /// before more overflow to `howk.retry` for `overflow_delay`, without spending an attempt.
    /// Ordered configs have no cap. Default 100.
    pub max_per_endpoint: usize,
    /// Attempts in flight per endpoint host in one process; 0 for no limit. Default 64.
    pub max_per_domain: usize,
    /// Requests per second per (config_id, endpoint); 0 for no limit. A config's
    /// `script_config._delivery_rate_limit` overrides it. Default 0.
    pub rate_limit: f64,
    /// Strict FIFO per (config_id, endpoint) for every config; a config's
    /// `script_config._delivery_ordered` overrides it. Default false.
    pub ordered: bool,
    /// How long a webhook may hold its partition's offset before it moves to the deliver task's
    /// store, so that slow endpoints never hold back the partition. Default 1s.
    #[serde(with = "humantime_serde")]
    pub spill_after: Duration,
    /// When an overflowing webhook comes back: a pair that is backed up behind a webhook stuck
    /// for `spill_after` rarely drains sooner, and each return costs a round through the retry
    /// topic. Default 30s.
    #[serde(with = "humantime_serde")]
    pub overflow_delay: Duration,
    /// Bytes of a failed response body kept for the dead letter. Default 1024.
    pub response_body_bytes: usize,
    /// An egress proxy every delivery goes through (`http://host:port`), for operators whose
    /// network requires one. Default none, and the `HTTP(S)_PROXY`/`ALL_PROXY` environment is
    /// never used: a proxy resolves endpoint names itself, out of reach of the SSRF rule. With
    /// this set, howk still refuses IP-literal endpoints and names that resolve (from howk's
    /// point of view) to refused addresses, but what the proxy then connects to is the proxy's
    /// policy: deny private ranges there too. Name the proxy by IP or by a name that resolves to
    /// an address the SSRF rule allows (or list its address in `allowed_cidrs`).
    pub proxy: Option<String>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            allowed_cidrs: Vec::new(),
            max_in_flight: 1000,
            max_per_endpoint: 100,
            max_per_domain: 64,
            rate_limit: 0.0,
            ordered: false,
            spill_after: Duration::from_secs(1),
            overflow_delay: Duration::from_secs(30),
            response_body_bytes: 1024,
            proxy: None,
        }
    }
}

/// What the request carries beyond the webhook: the script's output, when a script ran.
#[derive(Debug, Default)]
pub struct RequestParts<'a> {
    /// The body to send; `None` sends the webhook's payload.
    pub body: Option<Bytes>,
    /// The full header list after the script; `None` sends the webhook's headers.
    pub headers: Option<Vec<(String, String)>>,
    pub opt_out_default_headers: bool,
    /// The script's `script_config`, for its `_delivery_*` templates.
    pub script_config: Option<&'a serde_json::Value>,
}

/// An endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `Retry-After`, read as a delay from now.
    pub retry_after: Option<Duration>,
    /// The first `response_body_bytes` of the body (lossy UTF-8).
    pub body_prefix: String,
}

/// Why no answer came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The endpoint resolves to an address the policy refuses: not worth a retry.
    #[error("endpoint refused: {0}")]
    Refused(String),
    #[error("endpoint URL is invalid: {0}")]
    InvalidUrl(String),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    #[error("transport error: {0}")]
    Transport(String),
}

impl SendError {
    /// Transport failures and timeouts may pass; a refusal, a bad URL or a bad secret will not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Transport(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error(transparent)]
    Cidrs(#[from] AddressPolicyError),
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("delivery.proxy is not a usable proxy URL: {0}")]
    Proxy(String),
}

/// Sends delivery requests; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct DeliveryClient {
    http: reqwest::Client,
    addresses: AddressPolicy,
    templates: TemplateResolver,
    timeout: Duration,
    response_body_bytes: usize,
    /// `howk dev --dry`: log each request instead of sending it, answering 200.
    dry_run: bool,
    /// `delivery.proxy` is set: endpoint names are checked here before the proxy sees them.
    proxied: bool,
}

const USER_AGENT: &str = concat!("howk/", env!("CARGO_PKG_VERSION"));

impl DeliveryClient {
    pub fn new(
        config: &DeliveryConfig,
        templates: TemplateResolver,
    ) -> Result<Self, ClientBuildError> {
        let addresses = AddressPolicy::with_allowed(&config.allowed_cidrs)?;
        // `no_proxy` first: reqwest otherwise reads HTTP(S)_PROXY/ALL_PROXY from the
        // environment, and a proxy would resolve endpoint names past the SSRF check (review H6).
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(CheckedResolver::new(addresses.clone()))
            .timeout(config.timeout)
            .pool_max_idle_per_host(64);
        if let Some(proxy) = &config.proxy {
            let proxy = reqwest::Proxy::all(proxy.as_str())
                .map_err(|error| ClientBuildError::Proxy(error.to_string()))?;
            builder = builder.proxy(proxy);
        }
        let http = builder.build().map_err(ClientBuildError::Http)?;
        Ok(Self {
            http,
            addresses,
            templates,
            timeout: config.timeout,
            response_body_bytes: config.response_body_bytes,
            dry_run: false,
            proxied: config.proxy.is_some(),
        })
    }

    /// A client that logs requests instead of sending them (`howk dev --dry`).
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// The URL to call: the endpoint with `_delivery_query_params` resolved and merged in
    /// (replacing same-named keys, keeping the rest in order; empty values dropped).
    fn url(&self, webhook: &Webhook, parts: &RequestParts<'_>) -> Result<reqwest::Url, SendError> {
        let mut url = reqwest::Url::parse(&webhook.endpoint)
            .map_err(|error| SendError::InvalidUrl(error.to_string()))?;
        let overrides = self.resolved(
            &webhook.delivery_query_params,
            parts.script_config,
            "_delivery_query_params",
        );
        if !overrides.is_empty() {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(name, _)| !overrides.iter().any(|(n, _)| n == name))
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept.iter().chain(overrides.iter()));
        }
        // An IP-literal host never reaches the resolver, so it is checked here.
        let host = url.host_str().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<std::net::IpAddr>()
            && let Some(reason) = self.addresses.refusal(ip)
        {
            return Err(SendError::Refused(format!("{ip} is a {reason}")));
        }
        Ok(url)
    }

    /// Templates from the script's config, then the webhook's (which win), resolved now.
    fn resolved(
        &self,
        own: &[(String, String)],
        script_config: Option<&serde_json::Value>,
        field: &str,
    ) -> Vec<(String, String)> {
        let mut merged: Vec<(String, String)> = Vec::new();
        let from_script = script_config
            .and_then(|config| config.get(field))
            .and_then(|value| value.as_object())
            .into_iter()
            .flatten()
            .filter_map(|(name, value)| Some((name.clone(), value.as_str()?.to_owned())));
        for (name, template) in from_script.chain(own.iter().cloned()) {
            let value = self.templates.resolve(&template);
            merged.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            if !value.is_empty() {
                merged.push((name, value));
            }
        }
        merged
    }

    /// POSTs one attempt of `webhook`.
    pub async fn send(
        &self,
        webhook: &Webhook,
        parts: RequestParts<'_>,
    ) -> Result<Response, SendError> {
        let url = self.url(webhook, &parts)?;
        if self.proxied && !self.dry_run {
            self.check_name_before_proxy(&url).await?;
        }
        let body = parts
            .body
            .clone()
            .unwrap_or_else(|| webhook.payload.clone());
        let now = chrono::Utc::now();
        let timestamp = now.timestamp();
        let mut headers = reqwest::header::HeaderMap::new();
        let mut set = |name: &str, value: &str| {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        };
        let content_type = if webhook.payload_is_binary && parts.body.is_none() {
            "application/octet-stream"
        } else {
            "application/json"
        };
        set("Content-Type", content_type);
        if !parts.opt_out_default_headers {
            set("User-Agent", USER_AGENT);
            set("X-Webhook-ID", webhook.id.as_str());
            set("X-Webhook-Attempt", &(webhook.attempt + 1).to_string());
            set("X-Webhook-Timestamp", &timestamp.to_string());
        }
        for (name, value) in parts.headers.as_ref().unwrap_or(&webhook.headers) {
            set(name, value);
        }
        for (name, value) in self.resolved(
            &webhook.delivery_headers,
            parts.script_config,
            "_delivery_headers",
        ) {
            set(&name, &value);
        }
        let secrets = webhook.signing_secrets(now.timestamp_millis());
        if !secrets.is_empty() {
            for (name, value) in signature_headers(&secrets, webhook.id.as_str(), timestamp, &body)?
            {
                set(name, &value);
            }
        }

        if self.dry_run {
            // The endpoint as accepted: resolved query overrides may hold secrets.
            tracing::info!(webhook_id = webhook.id.as_str(), endpoint = %webhook.endpoint,
                attempt = webhook.attempt, body_bytes = body.len(), headers = headers.len(),
                "dry run: not sent");
            return Ok(Response {
                status: 200,
                retry_after: None,
                body_prefix: String::new(),
            });
        }
        let response = self
            .http
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|error| self.send_error(&error))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body_prefix = if (200..300).contains(&status) {
            String::new()
        } else {
            self.body_prefix(response).await
        };
        Ok(Response {
            status,
            retry_after,
            body_prefix,
        })
    }

    /// Through a proxy the connection's resolver only sees the proxy's name, so the endpoint's
    /// name is resolved and checked here first. The proxy resolves it again and may get another
    /// answer (DNS rebinding): that residue is the proxy's policy to close (see `proxy`).
    async fn check_name_before_proxy(&self, url: &reqwest::Url) -> Result<(), SendError> {
        let host = url.host_str().unwrap_or_default();
        if host.is_empty() || host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
            return Ok(()); // IP literals were checked in `url`.
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let addresses = tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| SendError::Transport(format!("cannot resolve {host}: {error}")))?;
        for address in addresses {
            if let Some(reason) = self.addresses.refusal(address.ip()) {
                return Err(SendError::Refused(format!(
                    "{host} resolves to {}, a {reason}",
                    address.ip()
                )));
            }
        }
        Ok(())
    }

    /// Reads at most `response_body_bytes` of a body, dropping the rest with the connection.
    async fn body_prefix(&self, mut response: reqwest::Response) -> String {
        let mut kept = Vec::new();
        while kept.len() < self.response_body_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                _ => break,
            }
        }
        kept.truncate(self.response_body_bytes);
        String::from_utf8_lossy(&kept).into_owned()
    }

    fn send_error(&self, error: &reqwest::Error) -> SendError {
        if let Some(refused) = refused_address(error) {
            return SendError::Refused(refused.0.clone());
        }
        if error.is_timeout() {
            return SendError::Timeout(self.timeout);
        }
        // The chain names the cause ("connection refused", "dns error") without the URL, which
        // may carry resolved query secrets.
        let mut text = String::new();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text = cause.to_string();
            source = cause.source();
        }
        if text.is_empty() {
            text = "request failed".to_owned();
        }
        SendError::Transport(text)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::{ConfigId, WebhookId};

    fn client(env: &[(&str, &str)]) -> DeliveryClient {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup =
            Arc::new(move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()));
        DeliveryClient::new(
            &DeliveryConfig::default(),
            TemplateResolver::new(lookup, Vec::new()),
        )
        .unwrap()
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

    #[test]
    fn query_overrides_resolve_at_send_time_replace_same_names_and_drop_empties() {
        let client = client(&[("TOKEN", "s3cret")]);
        let mut hook = webhook("https://e.com/h?a=1&key=old&b=2");
        hook.delivery_query_params = vec![
            ("key".into(), "${TOKEN}".into()),
            ("empty".into(), "${UNSET}".into()),
        ];
        let url = client.url(&hook, &RequestParts::default()).unwrap();
        assert_eq!(url.as_str(), "https://e.com/h?a=1&b=2&key=s3cret");
    }

    #[test]
    fn webhook_templates_win_over_script_config_ones() {
        let client = client(&[("A", "from-webhook"), ("B", "from-script")]);
        let config =
            serde_json::json!({"_delivery_headers": {"Authorization": "${B}", "X-S": "${B}"}});
        let merged = client.resolved(
            &[("authorization".into(), "${A}".into())],
            Some(&config),
            "_delivery_headers",
        );
        assert_eq!(
            merged,
            [
                ("X-S".to_owned(), "from-script".to_owned()),
                ("authorization".to_owned(), "from-webhook".to_owned())
            ]
        );
    }

    #[test]
    fn ip_literal_endpoints_in_refused_ranges_are_refused_before_connecting() {
        let client = client(&[]);
        for endpoint in [
            "http://127.0.0.1:9/x",
            "http://169.254.169.254/",
            "http://[::1]/",
        ] {
            let error = client
                .url(&webhook(endpoint), &RequestParts::default())
                .unwrap_err();
            assert!(matches!(error, SendError::Refused(_)), "{endpoint}");
            assert!(!error.is_retryable());
        }
    }
}
