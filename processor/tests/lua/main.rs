//! The Lua engine's behaviour, black-box through its public API (SPEC §4). No I/O: the modules
//! that need Redis or HTTP are tested against the real services in their own issue.

mod helpers;

mod crypto;
mod escapes;
mod fuzz;
mod patterns;

mod isolation;
mod json;
mod limits;
mod pool;
mod sandbox;
mod seed_examples;
mod semantics;
mod transformer;
