//! The edge's TFTP codec: `tftp::packet::decode` of any datagram, and for a read
//! request the file-name check `tftp::files::normalize`.
//!
//! Input: one TFTP datagram.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::tftp_packet` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::tftp_packet(data));
