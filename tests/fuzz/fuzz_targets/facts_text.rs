//! The prospector's text parsers of `/proc` and `/sys` files (cpuinfo, meminfo, kernel
//! command line, NIC speed, PCI ids, SCSI VPD page 0x80, disk transport).
//!
//! Input: the bytes of one `/proc` or `/sys` file.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::facts_text` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::facts_text(data));
