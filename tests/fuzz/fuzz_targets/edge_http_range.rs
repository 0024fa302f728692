//! The edge's HTTP path and header checks: `Range` values, the lexical path check of the
//! file routes, `/install/{token}/{name}` and the metrics route classifier.
//!
//! Input: 8 bytes file length, then UTF-8 text.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::edge_http_range` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::edge_http_range(data));
