//! The prospector's reading of a BMC's IPMI answers (`facts::bmc::read`) through a
//! transport that returns fuzzed responses.
//!
//! Input: responses, each a length byte (255: no answer) then that many bytes.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::bmc_ipmi` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::bmc_ipmi(data));
