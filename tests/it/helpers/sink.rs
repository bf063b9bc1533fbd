//! `WebhookSink`: a real HTTP receiver on loopback for delivery tests. Every request to
//! `/hook/{name}` is recorded (headers, exact body bytes, arrival order) and answered from that
//! path's plan — a queue of replies, then 200 once the plan is used up.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

/// One received request.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A planned reply: a status, an optional `Retry-After`, and how long to wait before answering.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    pub retry_after_secs: Option<u64>,
    pub delay: Option<std::time::Duration>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after_secs: None,
            delay: None,
        }
    }

    /// Answers after `delay` (a slow endpoint).
    pub fn after(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

#[derive(Default)]
struct Inner {
    received: HashMap<String, Vec<Received>>,
    plans: HashMap<String, VecDeque<Reply>>,
    chaos: Option<Chaos>,
    /// Requests being answered now, and the most at once, per path.
    in_flight: HashMap<String, (usize, usize)>,
    /// The same over every path.
    all_in_flight: (usize, usize),
}

/// Counts a request as in flight until its handler ends or is dropped (the client went away).
struct InFlight {
    sink: WebhookSink,
    name: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = self.sink.inner.lock().unwrap();
        inner.all_in_flight.0 -= 1;
        if let Some((now, _)) = inner.in_flight.get_mut(&self.name) {
            *now -= 1;
        }
    }
}

/// Unplanned requests fail or answer slowly at these rates (a flaky receiver for soak tests).
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    /// Share of requests answered 500.
    pub errors: f64,
    /// Share of requests answered 200 after `slow`.
    pub slow_share: f64,
    pub slow: std::time::Duration,
    /// xorshift state: the same seed gives the same sequence.
    pub seed: u64,
}

impl Chaos {
    fn next_reply(&mut self) -> Reply {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let roll = (self.seed % 10_000) as f64 / 10_000.0;
        if roll < self.errors {
            Reply::status(500)
        } else if roll < self.errors + self.slow_share {
            Reply::status(200).after(self.slow)
        } else {
            Reply::status(200)
        }
    }
}

#[derive(Clone, Default)]
pub struct WebhookSink {
    pub addr: Option<SocketAddr>,
    inner: Arc<Mutex<Inner>>,
}

impl WebhookSink {
    pub async fn start() -> Self {
        let mut sink = Self::default();
        let app = Router::new()
            .route("/hook/{name}", any(hook))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        sink.addr = Some(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        sink
    }

    /// The URL of `/hook/{name}`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/hook/{name}", self.addr.unwrap())
    }

    /// Replies for the next requests to `/hook/{name}`.
    pub fn plan(&self, name: &str, replies: impl IntoIterator<Item = Reply>) {
        self.inner
            .lock()
            .unwrap()
            .plans
            .entry(name.to_owned())
            .or_default()
            .extend(replies);
    }

    /// Makes unplanned replies flaky (see [`Chaos`]); `None` answers them 200 again.
    pub fn chaos(&self, chaos: Option<Chaos>) {
        self.inner.lock().unwrap().chaos = chaos;
    }

    /// Requests to `/hook/{name}` being answered now, and the most at once so far.
    pub fn in_flight(&self, name: &str) -> (usize, usize) {
        self.inner
            .lock()
            .unwrap()
            .in_flight
            .get(name)
            .copied()
            .unwrap_or_default()
    }

    /// Requests being answered now on every path, and the most at once so far.
    pub fn all_in_flight(&self) -> (usize, usize) {
        self.inner.lock().unwrap().all_in_flight
    }

    /// Every request received, on every path.
    pub fn all_received(&self) -> Vec<Received> {
        self.inner
            .lock()
            .unwrap()
            .received
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// What `/hook/{name}` received, in arrival order.
    pub fn received(&self, name: &str) -> Vec<Received> {
        self.inner
            .lock()
            .unwrap()
            .received
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// The number each body of `/hook/{name}` carries, in arrival order: the body itself (a
    /// payload like `7`) or its `n` field (a payload like `{"n": 7}`).
    pub fn arrivals(&self, name: &str) -> Vec<u64> {
        self.received(name)
            .iter()
            .map(|received| {
                let body: serde_json::Value = serde_json::from_slice(&received.body).unwrap();
                body.as_u64()
                    .or_else(|| body["n"].as_u64())
                    .unwrap_or_else(|| panic!("a body without a number: {body}"))
            })
            .collect()
    }

    /// Requests received on every path.
    pub fn total(&self) -> usize {
        self.inner
            .lock()
            .unwrap()
            .received
            .values()
            .map(Vec::len)
            .sum()
    }
}

async fn hook(
    State(sink): State<WebhookSink>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The lock is released before any await: a reply may be delayed.
    let reply = {
        let mut inner = sink.inner.lock().unwrap();
        let counts = inner.in_flight.entry(name.clone()).or_default();
        counts.0 += 1;
        counts.1 = counts.1.max(counts.0);
        let all = &mut inner.all_in_flight;
        all.0 += 1;
        all.1 = all.1.max(all.0);
        let headers = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        inner
            .received
            .entry(name.clone())
            .or_default()
            .push(Received {
                headers,
                body: body.to_vec(),
                at: std::time::Instant::now(),
            });
        let planned = inner.plans.get_mut(&name).and_then(VecDeque::pop_front);
        match (planned, inner.chaos.as_mut()) {
            (Some(reply), _) => reply,
            (None, Some(chaos)) => chaos.next_reply(),
            (None, None) => Reply::status(200),
        }
    };
    let _in_flight = InFlight {
        sink: sink.clone(),
        name: name.clone(),
    };
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap();
    match reply.retry_after_secs {
        Some(secs) => (status, [("retry-after", secs.to_string())], "planned").into_response(),
        None => (status, "planned").into_response(),
    }
}
