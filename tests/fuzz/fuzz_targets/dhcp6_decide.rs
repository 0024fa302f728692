//! The edge's DHCPv6 core, `dhcp6::decide_raw`, over a conversation of packets.
//!
//! Input: a control byte, then client messages separated by `\xff\xfe\xfd\xfc`.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::dhcp6_decide` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::dhcp6_decide(data));
