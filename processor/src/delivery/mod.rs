//! Delivering one request (SPEC §5): building and sending it, signing, and classifying what the
//! endpoint answered.
//!
//! - [`attempt`]: one attempt — the script on an engine thread, then the POST
//! - [`decide`]: delivered, retry at the next backoff, or dead letter (pure)
//! - [`client`]: the POST — default headers, `${VAR}` overrides, SSRF-safe connections
//! - [`sign`]: `X-Webhook-Signature` and the Standard Webhooks headers
//! - [`classify`]: status → delivered / retryable / gone / unrecoverable, and `Retry-After`
//! - [`limits`]: fairness — per-host concurrency, per-endpoint rate, ordering mode

pub mod attempt;
pub mod classify;
pub mod client;
pub mod decide;
pub mod limits;
pub mod sign;
