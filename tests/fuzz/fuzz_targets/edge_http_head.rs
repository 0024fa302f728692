//! The edge's `sendfile(2)` front: its request-head parser (`parse_fast`, through the
//! `fuzz_parse_fast` shim) on any bytes a client sends, then, for a head the front
//! takes, its `Range` value through `parse_range` as the front would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use substruct_edge::http::files::{fuzz_parse_fast, parse_range};
use substruct_wire::ImageName;

fuzz_target!(|data: &[u8]| {
    if let Some((_head, path, range, _close, used)) = fuzz_parse_fast(data, "/images/") {
        assert!(used <= data.len());
        assert!(ImageName::parse(path).is_ok(), "front took {path:?}");
        if let Some(range) = range {
            for len in [0, 1, 4096, u64::MAX] {
                if let Ok(Some(r)) = parse_range(range, len) {
                    assert!(r.start <= r.end && r.end < len, "{range:?} of {len}: {r:?}");
                }
            }
        }
    }
});
