//! The edge's router-solicitation parser, `ra::parse_router_solicitation`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use substruct_edge::ra::parse_router_solicitation;

fuzz_target!(|data: &[u8]| {
    if let Ok(rs) = parse_router_solicitation(data) {
        if let Some(ll) = rs.source_lladdr {
            assert!(ll.len() <= data.len());
        }
    }
});
