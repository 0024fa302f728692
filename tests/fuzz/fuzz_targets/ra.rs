//! The edge's router-solicitation parser, `ra::parse_router_solicitation`.
//!
//! Input: one ICMPv6 message, without the IPv6 header.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::ra` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::ra(data));
