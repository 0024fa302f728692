//! The edge's DHCP core: `Request::parse` then `decide` on a fixed site, a lease table
//! carried across the packets of one input, and the reply encoded.
//!
//! Input: a control byte, then packets split at `\xff\xfe\xfd\xfc`.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::dhcp_decide` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::dhcp_decide(data));
