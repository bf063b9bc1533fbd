//! Delivering one request (SPEC §5): signing, and classifying what the endpoint answered.
//!
//! - [`sign`]: `X-Webhook-Signature` and the Standard Webhooks headers
//! - [`classify`]: status → delivered / retryable / gone / unrecoverable, and `Retry-After`

pub mod classify;
pub mod sign;
