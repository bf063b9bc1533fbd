//! The records of SPEC §2 and their codecs.
//!
//! - [`webhook`]: the webhook as accepted — decoded and validated from `howk.pending` JSON, with
//!   the payload kept as its exact raw bytes
//! - [`outcome`]: what howk writes: `DeliveryResult` (`howk.results`) and `DeadLetter`
//!   (`howk.deadletter`), with secrets redacted
//! - [`script_config`]: `ScriptConfig`, the value of `howk.scripts`
//! - [`internal`]: the postcard records of `howk.delivery` and `howk.retry`, behind a version byte

pub mod internal;
pub mod outcome;
pub mod script_config;
pub mod webhook;

pub use internal::{DeliveryRecord, InternalCodecError};
pub use outcome::{DeadLetter, DeliveryResult, Outcome, ReasonType};
pub use script_config::{ScriptConfig, ScriptConfigError};
pub use webhook::{InvalidRecord, PendingContext, PreviousSecret, Secret, Webhook};
