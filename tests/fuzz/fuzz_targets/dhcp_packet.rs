//! `substruct_wire::dhcp::Packet::parse` and its option iterator: the bounds-checked
//! DHCPv4 reader the edge (requests) and the prospector (replies) share.
#![no_main]

use libfuzzer_sys::fuzz_target;
use substruct_wire::dhcp::{Op, OptionIter, Packet, FILE_AT, SNAME_AT};

fuzz_target!(|data: &[u8]| {
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
});
