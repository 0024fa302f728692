//! An operator's profile: `Profile::from_toml`, then `validate` (fields, image lookups,
//! the template rendered against the sample machine).
//!
//! Input: a profile's TOML text.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::profile_toml` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::profile_toml(data));
