use substruct_wire::dhcp::{Op, OptionIter, Packet, FILE_AT, SNAME_AT};

/// `substruct_wire::dhcp::Packet::parse` and its option iterator: the bounds-checked
/// DHCPv4 reader the edge (requests) and the prospector (replies) share. Every accessor
/// of a parsed packet, its options, and the option areas in `file` and `sname`
/// (option overload) are read; no option value may be longer than the input.
///
/// Input: one DHCPv4 datagram (BOOTP header, magic cookie, options), parsed both as a
/// request and as a reply.
pub fn dhcp_packet(data: &[u8]) {
    for op in [Op::BootRequest, Op::BootReply] {
        let Ok(p) = Packet::parse(data, op) else {
            continue;
        };
        let _ = (p.hops(), p.xid(), p.secs(), p.flags(), p.mac());
        let _ = (p.ciaddr(), p.yiaddr(), p.siaddr(), p.giaddr());
        assert_eq!(p.sname().len(), FILE_AT - SNAME_AT);
        for (_, value) in p.options().flatten() {
            assert!(value.len() <= data.len());
        }
        // option overload (52) puts options into `file` and `sname`
        for area in [(p.file(), FILE_AT), (p.sname(), SNAME_AT)] {
            for _ in OptionIter::new(area.0, area.1) {}
        }
    }
}
