//! An operator's rule: `Rule::from_toml`, `validate`, then `matches`/`explain` against
//! the sample machine; and the size and glob helpers on the same text.
//!
//! Input: a rule's TOML text.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::rule_toml` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::rule_toml(data));
