//! `http`: outbound HTTP for scripts — fetching tokens, configuration, enrichment (SPEC §4).
//!
//! `get(url, headers?, opts?)`, `post/put(url, body, headers?, opts?)`,
//! `delete(url, body?, headers?, opts?)` → `{status_code, body, headers}` | `(nil, err)`.
//!
//! Safety, in the order a request meets it:
//! 1. **Allowlist**: the host must match the namespace's list (`HOWK_LUA_ALLOW_HOSTNAME_{NS}`,
//!    which replaces the global one) or the global `lua.allowed_hosts`; patterns are `*`,
//!    `*.example.com` (which also matches `example.com`) and exact names. Empty = nothing.
//! 2. **SSRF**: a checking DNS resolver drops loopback, private, link-local, metadata and other
//!    special addresses ([`AddressPolicy`]) unless `lua.http_allowed_cidrs` lists them, and the
//!    connection goes to an address it returned — no window for DNS rebinding. IP literals are
//!    checked before the request.
//! 3. **Redirects** are followed by hand, at most 5 hops, each hop checked again (1 and 2);
//!    credentials (`Authorization`, `Cookie`) are dropped when a hop changes host.
//! 4. **Limits**: `lua.http_timeout` (never past the execution's deadline) and a response body
//!    cap, `lua.http_max_response_bytes`.
//!
//! Identical GETs in flight (same namespace, URL and headers) share one upstream request
//! (singleflight); with `lua.http_cache_enabled`, a 2xx GET with `opts.cache_ttl` is kept that
//! many seconds (at most `lua.http_cache_ttl`) in a bounded cache. Transport errors and 5xx
//! answers are **transient module failures**: a later script error is retryable.

use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{Lua, MultiValue, Table, Value};
use reqwest::{Method, Url};

use super::io::IoRuntime;
use super::{LuaModule, ModuleContext};
use crate::lua::template::glob_match;
use crate::net::{AddressPolicy, CheckedResolver};

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// Cached responses kept at most; a full cache drops expired entries, then the soonest to expire.
const CACHE_CAPACITY: usize = 1024;
/// Environment variables holding per-namespace allowlists: `HOWK_LUA_ALLOW_HOSTNAME_{NS}`.
pub const NAMESPACE_ALLOWLIST_PREFIX: &str = "HOWK_LUA_ALLOW_HOSTNAME_";

/// How the module is set up, from `lua.*` and the environment.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `lua.allowed_hosts`.
    pub allowed_hosts: Vec<String>,
    /// Per-namespace lists (lower-case namespace → patterns), replacing the global one.
    pub namespace_hosts: HashMap<String, Vec<String>>,
    /// `lua.http_timeout`.
    pub timeout: Duration,
    /// `lua.http_max_response_bytes`.
    pub max_response_bytes: usize,
    /// `lua.http_cache_enabled`.
    pub cache_enabled: bool,
    /// `lua.http_cache_ttl`: the longest a response is cached.
    pub cache_ttl: Duration,
    /// `lua.http_allowed_cidrs` applied to resolved addresses.
    pub addresses: AddressPolicy,
}

impl HttpSettings {
    /// Reads `HOWK_LUA_ALLOW_HOSTNAME_{NS}` variables (comma lists) into `namespace_hosts`.
    pub fn with_namespace_lists<I, K, V>(mut self, variables: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        for (variable, value) in variables {
            if let Some(namespace) = variable.as_ref().strip_prefix(NAMESPACE_ALLOWLIST_PREFIX) {
                let patterns = value
                    .as_ref()
                    .split(',')
                    .map(|p| p.trim().to_ascii_lowercase())
                    .filter(|p| !p.is_empty())
                    .collect();
                self.namespace_hosts
                    .insert(namespace.to_ascii_lowercase(), patterns);
            }
        }
        self
    }

    /// Lower-cases every pattern once, so matching a request allocates only the host.
    fn normalized(mut self) -> Self {
        for pattern in &mut self.allowed_hosts {
            *pattern = pattern.trim().to_ascii_lowercase();
        }
        self
    }

    fn host_allowed(&self, namespace: &str, host: &str) -> bool {
        let patterns = self
            .namespace_hosts
            .get(&namespace.to_ascii_lowercase())
            .unwrap_or(&self.allowed_hosts);
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        patterns
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                // `*.example.com` matches `example.com` and any name ending in `.example.com`.
                Some(apex) => host
                    .strip_suffix(apex)
                    .is_some_and(|rest| rest.is_empty() || rest.ends_with('.')),
                None => glob_match(pattern, &host),
            })
    }
}

/// A response as the script sees it; cheap to clone (shared by singleflight and the cache).
#[derive(Debug, Clone)]
struct HttpResponse {
    status: u16,
    body: bytes::Bytes,
    headers: Arc<Vec<(String, String)>>,
}

/// Why a request failed before a response came back.
#[derive(Debug, Clone)]
struct CallError {
    message: String,
    /// Worth retrying the webhook: a transport failure, not a refusal.
    transient: bool,
}

impl CallError {
    fn refused(message: String) -> Self {
        Self {
            message,
            transient: false,
        }
    }

    fn transport(message: String) -> Self {
        Self {
            message,
            transient: true,
        }
    }
}

type Outcome = Result<HttpResponse, CallError>;

/// The `http` Lua module.
pub struct HttpModule {
    shared: Arc<Shared>,
}

struct Shared {
    client: reqwest::Client,
    io: IoRuntime,
    settings: HttpSettings,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Outcome>>>>,
    cache: Mutex<HashMap<String, (Instant, HttpResponse)>>,
}

impl HttpModule {
    pub fn new(settings: HttpSettings, io: IoRuntime) -> Result<Self, reqwest::Error> {
        let settings = settings.normalized();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(CheckedResolver::new(settings.addresses.clone()))
            .no_proxy()
            .user_agent(concat!("howk/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.timeout)
            .build()?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                io,
                settings,
                inflight: Mutex::new(HashMap::new()),
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// A singleflight entry, removed from `inflight` when dropped unless a newer one replaced it.
struct InflightEntry<'a> {
    shared: &'a Shared,
    key: &'a str,
    cell: &'a Arc<tokio::sync::OnceCell<Outcome>>,
}

impl Drop for InflightEntry<'_> {
    fn drop(&mut self) {
        let mut inflight = self.shared.inflight.lock().expect("inflight lock poisoned");
        if inflight
            .get(self.key)
            .is_some_and(|current| Arc::ptr_eq(current, self.cell))
        {
            inflight.remove(self.key);
        }
    }
}

/// One request as the script asked for it.
struct Request {
    method: Method,
    url: String,
    body: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
    cache_ttl: Option<Duration>,
}

impl Shared {
    /// Allowlist and literal-address checks for one hop.
    fn check_hop(&self, namespace: &str, url: &Url) -> Result<(), CallError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CallError::refused(format!(
                "scheme {} is not allowed",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| CallError::refused(format!("{url} has no host")))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>()
            && let Some(reason) = self.settings.addresses.refusal(ip)
        {
            return Err(CallError::refused(format!("{ip} is refused: {reason}")));
        }
        if !self.settings.host_allowed(namespace, host) {
            return Err(CallError::refused(format!(
                "host {host} is not in the http allowlist of namespace {namespace:?}"
            )));
        }
        Ok(())
    }

    async fn send(
        self: Arc<Self>,
        namespace: String,
        request: Request,
        timeout: Duration,
    ) -> Outcome {
        let mut url = Url::parse(&request.url).map_err(|error| {
            CallError::refused(format!("invalid url {:?}: {error}", request.url))
        })?;
        let (mut method, mut body, mut headers) = (request.method, request.body, request.headers);
        for _hop in 0..=MAX_REDIRECTS {
            self.check_hop(&namespace, &url)?;
            let mut builder = self
                .client
                .request(method.clone(), url.clone())
                .timeout(timeout);
            for (name, value) in &headers {
                builder = builder.header(name, value);
            }
            if let Some(body) = &body {
                builder = builder.body(body.clone());
            }
            let mut response = builder
                .send()
                .await
                .map_err(|error| CallError::transport(describe_reqwest(&error)))?;
            let status = response.status();
            if status.is_redirection()
                && let Some(location) = response.headers().get(reqwest::header::LOCATION)
            {
                let location = location
                    .to_str()
                    .map_err(|_| CallError::refused("redirect location is not text".into()))?;
                let next = url.join(location).map_err(|error| {
                    CallError::refused(format!("bad redirect location: {error}"))
                })?;
                if next.host_str() != url.host_str() {
                    headers.retain(|(name, _)| {
                        !name.eq_ignore_ascii_case("authorization")
                            && !name.eq_ignore_ascii_case("cookie")
                    });
                }
                if status == reqwest::StatusCode::SEE_OTHER
                    || (matches!(status.as_u16(), 301 | 302) && method == Method::POST)
                {
                    method = Method::GET;
                    body = None;
                }
                url = next;
                continue;
            }
            let mut collected = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|error| CallError::transport(describe_reqwest(&error)))?
            {
                if collected.len() + chunk.len() > self.settings.max_response_bytes {
                    return Err(CallError::refused(format!(
                        "response body exceeds {} bytes",
                        self.settings.max_response_bytes
                    )));
                }
                collected.extend_from_slice(&chunk);
            }
            let mut response_headers: Vec<(String, String)> = Vec::new();
            for (name, value) in response.headers() {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                match response_headers
                    .iter_mut()
                    .find(|(n, _)| n == name.as_str())
                {
                    Some((_, existing)) => {
                        existing.push_str(", ");
                        existing.push_str(&value);
                    }
                    None => response_headers.push((name.as_str().to_owned(), value)),
                }
            }
            return Ok(HttpResponse {
                status: status.as_u16(),
                body: collected.into(),
                headers: Arc::new(response_headers),
            });
        }
        Err(CallError::refused(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// GETs go through the cache and singleflight; everything else is sent as is.
    async fn call(
        self: Arc<Self>,
        namespace: String,
        request: Request,
        timeout: Duration,
    ) -> Outcome {
        if request.method != Method::GET {
            return self.send(namespace, request, timeout).await;
        }
        let mut sorted = request.headers.clone();
        sorted.sort();
        let key = format!("{namespace}\0{}\0{sorted:?}", request.url);
        if let Some(response) = self.cached(&key) {
            return Ok(response);
        }
        let cell = Arc::clone(
            self.inflight
                .lock()
                .expect("inflight lock poisoned")
                .entry(key.clone())
                .or_default(),
        );
        // Removes the entry however this call ends — also when its future is dropped (the
        // script's deadline aborts the I/O task), which used to leave it behind forever.
        let guard = InflightEntry {
            shared: &self,
            key: &key,
            cell: &cell,
        };
        let cache_ttl = request.cache_ttl;
        let outcome = cell
            .get_or_init(|| Arc::clone(&self).send(namespace, request, timeout))
            .await
            .clone();
        drop(guard);
        if let (Ok(response), Some(ttl)) = (&outcome, cache_ttl)
            && self.settings.cache_enabled
            && (200..300).contains(&response.status)
        {
            self.store(key, response.clone(), ttl.min(self.settings.cache_ttl));
        }
        outcome
    }

    fn cached(&self, key: &str) -> Option<HttpResponse> {
        if !self.settings.cache_enabled {
            return None;
        }
        let mut cache = self.cache.lock().expect("cache lock poisoned");
        match cache.get(key) {
            Some((expiry, response)) if *expiry > Instant::now() => Some(response.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn store(&self, key: String, response: HttpResponse, ttl: Duration) {
        let mut cache = self.cache.lock().expect("cache lock poisoned");
        if cache.len() >= CACHE_CAPACITY {
            let now = Instant::now();
            cache.retain(|_, (expiry, _)| *expiry > now);
        }
        if cache.len() >= CACHE_CAPACITY
            && let Some(soonest) = cache
                .iter()
                .min_by_key(|(_, (expiry, _))| *expiry)
                .map(|(key, _)| key.clone())
        {
            cache.remove(&soonest);
        }
        cache.insert(key, (Instant::now() + ttl, response));
    }
}

/// reqwest's error with its causes, which name what failed (refused address, timeout, ...).
fn describe_reqwest(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn nil_and_error(lua: &Lua, message: &str) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([
        Value::Nil,
        Value::String(lua.create_string(message)?),
    ]))
}

/// Reads `headers?` and `opts?` arguments.
fn read_headers(value: Option<Table>) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    if let Some(table) = value {
        for pair in table.pairs::<mlua::LuaString, Value>() {
            let (name, value) = pair.map_err(|error| format!("headers: {error}"))?;
            let name = name
                .to_str()
                .map_err(|_| "header names must be text".to_owned())?
                .to_string();
            let value = match value {
                Value::String(s) => s
                    .to_str()
                    .map_err(|_| format!("header {name} must be text"))?
                    .to_string(),
                Value::Integer(i) => i.to_string(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(format!(
                        "header {name} must be a string, got {}",
                        other.type_name()
                    ));
                }
            };
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(&value).is_err()
            {
                return Err(format!("header {name:?} is not a valid HTTP header"));
            }
            headers.push((name, value));
        }
    }
    Ok(headers)
}

fn read_cache_ttl(opts: Option<Table>) -> Result<Option<Duration>, String> {
    let Some(opts) = opts else { return Ok(None) };
    match opts
        .raw_get::<Value>("cache_ttl")
        .map_err(|e| e.to_string())?
    {
        Value::Nil => Ok(None),
        Value::Integer(secs) if secs > 0 => Ok(Some(Duration::from_secs(secs as u64))),
        Value::Number(secs) if secs > 0.0 && secs.is_finite() => {
            Ok(Some(Duration::from_secs_f64(secs)))
        }
        Value::Integer(_) | Value::Number(_) => Ok(None),
        other => Err(format!(
            "opts.cache_ttl must be a number, got {}",
            other.type_name()
        )),
    }
}

impl LuaModule for HttpModule {
    fn name(&self) -> &'static str {
        "http"
    }

    fn build(&self, lua: &Lua, context: &ModuleContext) -> mlua::Result<Table> {
        let module = lua.create_table()?;
        for (name, method, body_position) in [
            ("get", Method::GET, None),
            ("post", Method::POST, Some(true)),
            ("put", Method::PUT, Some(true)),
            ("delete", Method::DELETE, Some(false)),
        ] {
            let shared = Arc::clone(&self.shared);
            let execution = Rc::clone(&context.execution);
            module.raw_set(
                name,
                lua.create_function(move |lua, args: MultiValue| {
                    let mut args = args.into_iter();
                    let url = match args.next() {
                        Some(Value::String(url)) => url.to_string_lossy(),
                        _ => {
                            return nil_and_error(
                                lua,
                                &format!("http.{name}: url must be a string"),
                            );
                        }
                    };
                    let body = match body_position {
                        None => None,
                        Some(required) => match args.next() {
                            Some(Value::String(body)) => Some(body.as_bytes().to_vec()),
                            Some(Value::Nil) | None if !required => None,
                            _ => {
                                return nil_and_error(
                                    lua,
                                    &format!("http.{name}: body must be a string"),
                                );
                            }
                        },
                    };
                    let headers = match args.next() {
                        Some(Value::Table(table)) => Some(table),
                        Some(Value::Nil) | None => None,
                        Some(_) => {
                            return nil_and_error(
                                lua,
                                &format!("http.{name}: headers must be a table"),
                            );
                        }
                    };
                    let opts = match args.next() {
                        Some(Value::Table(table)) => Some(table),
                        _ => None,
                    };
                    let (headers, cache_ttl) = match (read_headers(headers), read_cache_ttl(opts)) {
                        (Ok(headers), Ok(ttl)) => (headers, ttl),
                        (Err(message), _) | (_, Err(message)) => {
                            return nil_and_error(lua, &format!("http.{name}: {message}"));
                        }
                    };
                    let timeout = shared.settings.timeout.min(execution.remaining());
                    if timeout.is_zero() {
                        return nil_and_error(
                            lua,
                            &format!("http.{name}: no time left in the script's budget"),
                        );
                    }
                    let request = Request {
                        method: method.clone(),
                        url,
                        body,
                        headers,
                        cache_ttl,
                    };
                    let namespace = execution.namespace().to_owned();
                    let call = Arc::clone(&shared).call(namespace, request, timeout);
                    let outcome = match shared.io.run(timeout, call) {
                        Ok(outcome) => outcome,
                        Err(elapsed) => Err(CallError::transport(elapsed.to_string())),
                    };
                    match outcome {
                        Ok(response) => {
                            if response.status >= 500 {
                                execution.record_transient_failure(format!(
                                    "http.{name}: status {}",
                                    response.status
                                ));
                            }
                            let table = lua.create_table_with_capacity(0, 3)?;
                            table.raw_set("status_code", i64::from(response.status))?;
                            table.raw_set("body", lua.create_string(&response.body)?)?;
                            let headers =
                                lua.create_table_with_capacity(0, response.headers.len())?;
                            for (header, value) in response.headers.iter() {
                                headers.raw_set(header.as_str(), value.as_str())?;
                            }
                            table.raw_set("headers", headers)?;
                            Ok(MultiValue::from_iter([Value::Table(table)]))
                        }
                        Err(error) => {
                            let message = format!("http.{name}: {}", error.message);
                            if error.transient {
                                execution.record_transient_failure(&message);
                            }
                            nil_and_error(lua, &message)
                        }
                    }
                })?,
            )?;
        }
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(global: &[&str]) -> HttpSettings {
        let settings = HttpSettings {
            allowed_hosts: global.iter().map(|s| s.to_string()).collect(),
            namespace_hosts: HashMap::new(),
            timeout: Duration::from_secs(1),
            max_response_bytes: 1024,
            cache_enabled: false,
            cache_ttl: Duration::from_secs(60),
            addresses: AddressPolicy::default(),
        };
        settings.normalized()
    }

    #[test]
    fn allowlist_patterns() {
        let s = settings(&["*.example.com", "api.other.com"]);
        assert!(s.host_allowed("music", "api.example.com"));
        assert!(s.host_allowed("music", "example.com"));
        assert!(s.host_allowed("music", "API.Other.com"));
        assert!(!s.host_allowed("music", "evil-example.com"));
        assert!(!s.host_allowed("music", "other.com"));
        assert!(!s.host_allowed("music", "xexample.com"));
        assert!(settings(&["*.Example.COM"]).host_allowed("m", "a.example.com"));
        assert!(settings(&["*"]).host_allowed("x", "anything.test"));
        assert!(!settings(&[]).host_allowed("x", "anything.test"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aborted_get_leaves_no_singleflight_entry() {
        // A server that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, mut on_accept) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
                let _ = accepted.send(()).await;
            }
        });
        let mut s = settings(&["*"]);
        s.addresses = AddressPolicy::with_allowed(&["127.0.0.0/8"]).unwrap();
        s.timeout = Duration::from_secs(30);
        let module = HttpModule::new(s, IoRuntime::new(tokio::runtime::Handle::current())).unwrap();
        let shared = Arc::clone(&module.shared);
        let call = tokio::spawn(Arc::clone(&shared).call(
            "ns".into(),
            Request {
                method: Method::GET,
                url: format!("http://127.0.0.1:{port}/slow"),
                body: None,
                headers: Vec::new(),
                cache_ttl: None,
            },
            Duration::from_secs(30),
        ));
        on_accept.recv().await.unwrap();
        assert_eq!(shared.inflight.lock().unwrap().len(), 1);
        call.abort();
        let _ = call.await;
        assert_eq!(shared.inflight.lock().unwrap().len(), 0);
    }

    #[test]
    fn namespace_list_replaces_the_global_one() {
        let s = settings(&["*"]).with_namespace_lists([(
            "HOWK_LUA_ALLOW_HOSTNAME_MUSIC",
            "api.music.com, auth.music.com",
        )]);
        assert!(s.host_allowed("music", "auth.music.com"));
        assert!(!s.host_allowed("music", "api.example.com"));
        assert!(s.host_allowed("video", "api.example.com"));
    }
}
