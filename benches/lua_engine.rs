//! Lua engine benches (filled in by the Lua engine work).
fn main() {}
