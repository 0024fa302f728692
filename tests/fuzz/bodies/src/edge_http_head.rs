use substruct_edge::http::files::{fuzz_parse_fast, parse_range};
use substruct_wire::ImageName;

/// The edge's `sendfile(2)` front: its request-head parser (`parse_fast`, through the
/// `fuzz_parse_fast` shim) on any bytes a client sends, then, for a head the front
/// takes, its `Range` value through `parse_range` as the front would. A head the front
/// takes must name a valid image and not claim more bytes than it was given; a range it
/// accepts must lie inside the file.
///
/// Input: the bytes a client sent on a connection (`GET`/`HEAD` request line and
/// headers, maybe partial), with `/images/` as the front's prefix.
pub fn edge_http_head(data: &[u8]) {
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
}
