use std::path::Component;

use substruct_edge::http::files::{fuzz_lexically_safe, parse_range};
use substruct_edge::http::{fuzz_parse_install_path, route_kind};

/// The edge's HTTP path and header checks: `http::files::parse_range` (any `Range`
/// value against a file length), the lexical path check of the file routes
/// (`fuzz_lexically_safe`), `/install/{token}/{name}` (`fuzz_parse_install_path`) and
/// the metrics route classifier `route_kind`. An accepted range lies inside the file; an
/// accepted path has only normal components; an install file name has no `/`.
///
/// Input: 8 bytes file length (little-endian), then UTF-8 text used as all of the above.
pub fn edge_http_range(data: &[u8]) {
    let Some((len, text)) = data.split_first_chunk::<8>() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let len = u64::from_le_bytes(*len);
    if let Ok(Some(r)) = parse_range(text, len) {
        assert!(r.start <= r.end && r.end < len, "{text:?} of {len}: {r:?}");
    }
    if let Ok(path) = fuzz_lexically_safe(text) {
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "{text:?} became {path:?}"
        );
    }
    if let Some((_token, name)) = fuzz_parse_install_path(text) {
        assert!(
            !name.contains('/') && name != ".." && name != ".",
            "{name:?}"
        );
    }
    let _ = route_kind(text);
}
