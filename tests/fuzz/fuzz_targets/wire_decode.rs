//! `substruct_wire::decode::<T>` for every message kind; whatever decodes must encode
//! again and decode to the same value.
//!
//! Input: one enveloped wire message.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::wire_decode` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::wire_decode(data));
