//! The prospector's SMBIOS structure-table parser (`facts::smbios::structures`,
//! `parse_dimms`) on the bytes of `/sys/firmware/dmi/tables/DMI`.
//!
//! Input: the bytes of the SMBIOS structure table.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::smbios` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::smbios(data));
