//! Template rendering (minijinja with fuel): a fuzzed install template, or a fuzzed
//! `params.hostname_pattern`, rendered against the sample machine.
//!
//! Input: a mode byte (bit 0: hostname pattern, bit 1: autoinstall), then UTF-8 text.
//!
//! Body (the input format in detail, what it checks; `cargo test` replays it too):
//! `substruct_fuzz_bodies::template_render` in tests/fuzz/bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| substruct_fuzz_bodies::template_render(data));
