//! The prospector's image download client: the edge's response head and the edge base
//! URL it is given on the kernel command line.
//!
//! Input: the bytes of a response head (also tried as a base URL).
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::prospector_http_head` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::prospector_http_head(data));
