//! Policies that decide when to try again: [`retry`] (backoff with jitter) and [`circuit`] (the
//! per-endpoint circuit breaker). Pure state and arithmetic; the topology stores their state.

pub mod circuit;
pub mod retry;
