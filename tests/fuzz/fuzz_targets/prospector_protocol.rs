//! What the prospector makes of the controller's answers and commands
//! (`agent::protocol`): `discover_answer`, `callback_answer`, `interpret_command`.
//!
//! Input: one enveloped wire message.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::prospector_protocol` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::prospector_protocol(data));
