//! Boot credentials: `BootCredential::new`, `verify` against a fixed site key, and the
//! site key parsers.
//!
//! Input: a mode byte (bit 0: sign the rest as `header.claims`), then text.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::credential` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::credential(data));
