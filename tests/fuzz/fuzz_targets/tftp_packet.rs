//! The edge's TFTP codec: `tftp::packet::decode` of any datagram, and for a read
//! request the file-name check `tftp::files::normalize`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use substruct_edge::tftp::files::normalize;
use substruct_edge::tftp::packet::{decode, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(Packet::Rrq(req) | Packet::Wrq(req)) = decode(data) {
        if let Ok(path) = normalize(&req.filename) {
            assert!(!path.split('/').any(|c| c == ".."), "{path:?} climbs out");
            assert!(!path.starts_with('/'), "{path:?} is absolute");
        }
    }
});
