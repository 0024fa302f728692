use substruct_edge::ra::parse_router_solicitation;

/// The edge's router-solicitation parser, `ra::parse_router_solicitation`. A source
/// link-layer address option must lie inside the input.
///
/// Input: one ICMPv6 message as read from a raw ICMPv6 socket, without the IPv6 header
/// (type, code, checksum, reserved, options).
pub fn ra(data: &[u8]) {
    if let Ok(rs) = parse_router_solicitation(data) {
        if let Some(ll) = rs.source_lladdr {
            assert!(ll.len() <= data.len());
        }
    }
}
