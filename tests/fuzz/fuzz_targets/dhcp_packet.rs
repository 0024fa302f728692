//! `substruct_wire::dhcp::Packet::parse` and its option iterator: the bounds-checked
//! DHCPv4 reader the edge (requests) and the prospector (replies) share.
//!
//! Input: one DHCPv4 datagram.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::dhcp_packet` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::dhcp_packet(data));
