//! One delivery attempt, end to end inside the process: run the tenant's script on the webhook
//! as accepted (on an engine thread, off the reactor), then POST what it produced. The
//! transformed request lives only here — it may carry credentials the script fetched, so it is
//! never returned, stored or logged; the report keeps only what the decision needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::client::{DeliveryClient, RequestParts, Response, SendError};
use crate::lua::pool::{EnginePool, OwnedInput};
use crate::lua::{PreviousError, Script, ScriptError, ScriptErrorKind};
use crate::record::Webhook;

/// What happened to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    /// The endpoint answered (any status).
    Answered(Response),
    /// No answer: refused address, transport error, timeout.
    NotSent(SendError),
    /// The script failed (or could not be found), so nothing was sent.
    ScriptFailed(ScriptError),
}

/// The outcome of an attempt, without the transformed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    pub attempted: Attempted,
    /// Script and HTTP time together.
    pub duration: Duration,
    /// The version that ran, if a script ran.
    pub script_hash: Option<String>,
    /// `request.retry_on_status` from the script.
    pub retry_on_status: Vec<u16>,
}

impl AttemptReport {
    /// Whether the attempt reached the endpoint (what a circuit probe needs to know).
    pub fn reached_endpoint(&self) -> bool {
        matches!(self.attempted, Attempted::Answered(_))
    }
}

/// Which script an attempt runs, as resolved by the caller against the scripts table.
pub enum ScriptChoice {
    /// No script for this webhook: the payload goes out as accepted.
    None,
    Run(Script),
    /// Resolution failed (not found, disabled): dead-lettered without a call.
    Failed(ScriptError),
}

/// Runs `choice` on `webhook`, then sends the result.
pub async fn run_attempt(
    webhook: &Webhook,
    previous_error: Option<PreviousError>,
    choice: ScriptChoice,
    pool: Option<&Arc<EnginePool>>,
    client: &DeliveryClient,
) -> AttemptReport {
    let started = Instant::now();
    let report = |attempted, script_hash, retry_on_status| AttemptReport {
        attempted,
        duration: started.elapsed(),
        script_hash,
        retry_on_status,
    };
    let (parts, script_hash, retry_on_status, config) = match choice {
        ScriptChoice::None => (RequestParts::default(), None, Vec::new(), None),
        ScriptChoice::Failed(error) => {
            return report(Attempted::ScriptFailed(error), None, Vec::new());
        }
        ScriptChoice::Run(script) => {
            let hash = script.hash.clone();
            let Some(pool) = pool else {
                let error = ScriptError::new(ScriptErrorKind::Disabled, "lua is disabled");
                return report(Attempted::ScriptFailed(error), Some(hash), Vec::new());
            };
            let config = script.config.clone();
            let input = OwnedInput {
                payload: webhook.payload.clone(),
                headers: webhook.headers.clone(),
                webhook_id: webhook.id.as_str().to_owned(),
                config_id: webhook.config_id.as_str().to_owned(),
                attempt: webhook.attempt,
                max_attempts: webhook.max_attempts,
                created_at: webhook.created_at_rfc3339(),
                previous_error,
            };
            match pool.execute(script, input).await {
                Ok(Ok(transformed)) => (
                    RequestParts {
                        body: transformed.body.map(Bytes::from),
                        headers: Some(transformed.headers),
                        opt_out_default_headers: transformed.opt_out_default_headers,
                        script_config: None,
                    },
                    Some(hash),
                    transformed.retry_on_status,
                    config,
                ),
                Ok(Err(error)) => {
                    return report(Attempted::ScriptFailed(error), Some(hash), Vec::new());
                }
                Err(closed) => {
                    let error = ScriptError::new(ScriptErrorKind::Runtime, closed.to_string());
                    return report(Attempted::ScriptFailed(error), Some(hash), Vec::new());
                }
            }
        }
    };
    let parts = RequestParts {
        script_config: config.as_deref(),
        ..parts
    };
    let attempted = match client.send(webhook, parts).await {
        Ok(response) => Attempted::Answered(response),
        Err(error) => Attempted::NotSent(error),
    };
    report(attempted, script_hash, retry_on_status)
}
