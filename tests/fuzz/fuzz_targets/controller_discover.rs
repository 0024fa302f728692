//! The controller's handling of a prospector's report, as far as it is pure: the
//! request checks, then the identity decisions on the report.
//!
//! Input: a discover request payload, on the subject of site `s1`.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::controller_discover` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::controller_discover(data));
