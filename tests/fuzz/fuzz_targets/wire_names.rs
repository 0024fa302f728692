//! The wire crate's validated strings (MACs, ids, tokens, image names, digests, NATS
//! URLs) and the subject and KV-key readers.
//!
//! Input: UTF-8 text.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::wire_names` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::wire_names(data));
