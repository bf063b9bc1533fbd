//! `TestReceiver`: a real HTTP server on loopback that records what it receives and answers as
//! each route says. Routes:
//! - `/echo` (any method): 200, JSON `{method, body, x_test}`, header `X-Echo: yes`
//! - `/status/{code}`: that status
//! - `/slow/{ms}`: 200 after `ms` milliseconds
//! - `/big/{bytes}`: a body of that many bytes
//! - `/redirect?to=URL`: 302 to `URL`
//! - `/token`: a new `{"access_token": "T<n>", "expires_in": 3600}` per request

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

#[derive(Clone, Default)]
struct Shared {
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

pub struct TestReceiver {
    pub addr: SocketAddr,
    shared: Shared,
}

impl TestReceiver {
    pub async fn start() -> Self {
        let shared = Shared::default();
        let app = Router::new()
            .route("/echo", any(echo))
            .route("/status/{code}", any(status))
            .route("/slow/{ms}", any(slow))
            .route("/big/{bytes}", any(big))
            .route("/redirect", any(redirect))
            .route("/token", any(token))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), count))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, shared }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received on `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        *self.shared.hits.lock().unwrap().get(path).unwrap_or(&0)
    }
}

async fn count(
    State(shared): State<Shared>,
    uri: Uri,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    *shared
        .hits
        .lock()
        .unwrap()
        .entry(uri.path().to_owned())
        .or_default() += 1;
    next.run(request).await
}

async fn echo(method: Method, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let x_test = headers
        .get("x-test")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let json = serde_json::json!({
        "method": method.as_str(),
        "body": String::from_utf8_lossy(&body),
        "x_test": x_test,
    });
    ([("x-echo", "yes")], axum::Json(json))
}

async fn status(Path(code): Path<u16>) -> StatusCode {
    StatusCode::from_u16(code).unwrap()
}

async fn slow(Path(ms): Path<u64>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "slow"
}

async fn big(Path(bytes): Path<usize>) -> Vec<u8> {
    vec![b'x'; bytes]
}

async fn redirect(Query(query): Query<HashMap<String, String>>) -> Response {
    (
        StatusCode::FOUND,
        [(
            header::LOCATION,
            query.get("to").cloned().unwrap_or_default(),
        )],
    )
        .into_response()
}

async fn token(State(shared): State<Shared>) -> axum::Json<serde_json::Value> {
    let n = *shared.hits.lock().unwrap().get("/token").unwrap_or(&0);
    axum::Json(serde_json::json!({"access_token": format!("T{n}"), "expires_in": 3600}))
}
