//! The edge's `sendfile(2)` front: its request-head parser on any bytes a client sends,
//! then the `Range` value of a head it takes.
//!
//! Input: the bytes of a client's request head.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::edge_http_head` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::edge_http_head(data));
