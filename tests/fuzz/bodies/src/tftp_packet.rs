use substruct_edge::tftp::files::normalize;
use substruct_edge::tftp::packet::{decode, Packet};

/// The edge's TFTP codec: `tftp::packet::decode` of any datagram, and for a read or
/// write request the file-name check `tftp::files::normalize`. A name it accepts is
/// relative and never climbs out with `..`.
///
/// Input: one TFTP datagram (opcode, then the packet's fields).
pub fn tftp_packet(data: &[u8]) {
    if let Ok(Packet::Rrq(req) | Packet::Wrq(req)) = decode(data) {
        if let Ok(path) = normalize(&req.filename) {
            assert!(!path.split('/').any(|c| c == ".."), "{path:?} climbs out");
            assert!(!path.starts_with('/'), "{path:?} is absolute");
        }
    }
}
