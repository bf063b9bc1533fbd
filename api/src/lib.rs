//! howk's REST ingress and queries (axum), built on the topology's Log and stores.
//!
//! Layout (filled in by the REST API work): `routes/<resource>.rs`, each with a `router()`,
//! merged in one place; `state.rs` holds what handlers share; `error.rs` the one `ApiError`.
