use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::OnceLock;

use substruct_edge::dhcp::UefiLoader;
use substruct_edge::dhcp6::{decide_raw, Action6, Dhcp6Settings, Lease6Change, Lease6Table};
use substruct_wire::intent::{BootIntent, LocalBootWay};
use substruct_wire::Mac;

use crate::dhcp_decide::split;

/// The edge's DHCPv6 core: `dhcp6::parse` then `decide` (via `decide_raw`) on a fixed
/// site (pool `fd77::100`–`fd77::10f`), a lease table carried across the packets of one
/// input. Pure: no socket, no clock. Checks that every reply is a server message under
/// OVMF's 1,472-byte limit, that every grant is inside the pool and never the edge's
/// own address, and that no address is leased to two clients at once.
///
/// Input: byte 0 picks the boot intent (rotating per packet); the rest is split into
/// up to 16 packets at each `\xff\xfe\xfd\xfc` separator (one input is a conversation);
/// the clock moves on 7 s between packets.
pub fn dhcp6_decide(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let settings = settings();
    let source = SocketAddrV6::new(
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0x00ff, 0xfe77, 0x600a),
        546,
        0,
        2,
    );
    let mut table = Lease6Table::new();
    let mut holders: HashMap<Ipv6Addr, (Vec<u8>, u32, u64)> = HashMap::new();
    let mut now: u64 = 1_800_000_000;
    for (i, packet) in split(rest).take(16).enumerate() {
        let pick = control.wrapping_add(i as u8);
        let d = decide_raw(packet, source, settings, &mut table, |_| intent(pick), now);
        for c in &d.changes {
            if let Lease6Change::Grant(l) = c {
                let a = u128::from(l.addr);
                assert!(
                    (0xfd77_0000_0000_0000_0000_0000_0000_0100
                        ..=0xfd77_0000_0000_0000_0000_0000_0000_010f)
                        .contains(&a),
                    "granted {}, outside the pool",
                    l.addr
                );
                if let Some((duid, iaid, until)) = holders.get(&l.addr) {
                    assert!(
                        (duid, *iaid) == (&l.duid, l.iaid) || *until <= now,
                        "{} leased to two clients at once",
                        l.addr
                    );
                }
                holders.insert(l.addr, (l.duid.clone(), l.iaid, l.expires));
            }
            if let Lease6Change::Forget { duid, iaid } = c {
                holders.retain(|_, (d, i, _)| !(d == duid && i == iaid));
            }
        }
        if let Action6::Reply { packet, .. } = &d.action {
            assert!(packet.len() < 1472, "a {}-byte reply", packet.len());
            assert!(
                matches!(packet.first(), Some(2 | 7)),
                "not a server message"
            );
        }
        now += 7;
    }
}

fn settings() -> &'static Dhcp6Settings {
    static S: OnceLock<Dhcp6Settings> = OnceLock::new();
    S.get_or_init(|| {
        Dhcp6Settings::new(
            Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1),
            "fd77::100-fd77::10f",
            1800,
            3600,
            UefiLoader::IpxeEfi,
            80,
            Mac([2, 0, 0, 0x77, 0, 1]),
        )
        .expect("valid DHCPv6 settings")
    })
}

fn intent(pick: u8) -> Option<BootIntent> {
    match pick % 4 {
        0 => None,
        1 => Some(BootIntent::Discover),
        2 => Some(BootIntent::Local {
            way: LocalBootWay::IpxeExit,
        }),
        _ => Some(BootIntent::Local {
            way: LocalBootWay::NoBootFile,
        }),
    }
}
