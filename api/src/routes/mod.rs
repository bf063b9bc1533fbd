//! One file per resource, each with its `router()`; merged in [`crate::router`].

pub mod health;
pub mod incoming;
pub mod replays;
pub mod scripts;
pub mod stats;
pub mod webhooks;
