//! The prospector's DHCP client reading a server's datagram: `DhcpClient::offer` and
//! `DhcpClient::reply`.
//!
//! Input: one DHCPv4 datagram from a server.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::prospector_dhcp` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::prospector_dhcp(data));
