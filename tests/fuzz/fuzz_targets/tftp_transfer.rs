//! The edge's TFTP transfer state machine (`tftp::transfer::Transfer`): windows,
//! retransmits and block-number rollover under any sequence of ACKs and timeouts.
//!
//! Input: a 14-byte header (size, blksize, windowsize, retries, flags), then ACKs and
//! timeouts.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::tftp_transfer` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::tftp_transfer(data));
