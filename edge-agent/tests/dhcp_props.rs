//! Property tests of the DHCP core: random sequences of DISCOVER / REQUEST /
//! RELEASE / DECLINE / restarts across many MACs and time steps never hand out an
//! address outside the pool, and never one address to two MACs at once.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Encodable, Encoder};
use proptest::prelude::*;
use substruct_edge::dhcp::{
    decide_raw, Action, DhcpConfig, DhcpSettings, DropReason, Lease, LeaseChange, LeaseTable,
    Subnet,
};
use substruct_wire::Mac;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const POOL_LO: u32 = u32::from_be_bytes([10, 77, 0, 100]);
const POOL_HI: u32 = u32::from_be_bytes([10, 77, 0, 107]);
const LEASE: u64 = 300;

#[derive(Debug, Clone)]
enum Op {
    Discover,
    /// REQUEST (selecting) for the last offered address, or `pick` in the subnet.
    Select {
        pick: u8,
    },
    /// REQUEST (init-reboot) for an arbitrary address of the subnet.
    InitReboot {
        pick: u8,
    },
    /// REQUEST (renewing) with ciaddr = the last ACKed address, or `pick`.
    Renew {
        pick: u8,
    },
    Release,
    Decline,
    /// Reload the table from what was persisted (offers are lost).
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Discover),
        3 => any::<u8>().prop_map(|pick| Op::Select { pick }),
        1 => any::<u8>().prop_map(|pick| Op::InitReboot { pick }),
        1 => any::<u8>().prop_map(|pick| Op::Renew { pick }),
        1 => Just(Op::Release),
        1 => Just(Op::Decline),
        1 => Just(Op::Restart),
    ]
}

fn settings() -> DhcpSettings {
    DhcpSettings::new(DhcpConfig::new(
        SERVER,
        "http://10.77.0.1",
        Subnet {
            network: "10.77.0.0/24".parse().unwrap(),
            pools: vec![(Ipv4Addr::from(POOL_LO), Ipv4Addr::from(POOL_HI))],
            router: Some(SERVER),
            dns: vec![],
            lease_time: Duration::from_secs(LEASE),
            relays: vec![],
            uefi_loader: None,
        },
    ))
    .unwrap()
}

fn mac(i: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0, i])
}

fn packet(m: Mac, t: MessageType, ciaddr: Ipv4Addr, opts: Vec<DhcpOption>) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        7,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &m.0,
    );
    msg.opts_mut().insert(DhcpOption::MessageType(t));
    for o in opts {
        msg.opts_mut().insert(o);
    }
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

fn subnet_ip(pick: u8) -> Ipv4Addr {
    // mostly pool addresses, sometimes others of the subnet
    Ipv4Addr::new(10, 77, 0, 96 + pick % 16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn never_outside_the_pool_never_twice(
        steps in prop::collection::vec((0u8..12, op(), 0u64..120), 1..200)
    ) {
        let settings = settings();
        let mut table = LeaseTable::new();
        let mut persisted: HashMap<Mac, Lease> = HashMap::new();
        // the outside view: what clients were told
        let mut granted: HashMap<Ipv4Addr, (Mac, u64)> = HashMap::new();
        let mut offered: HashMap<Ipv4Addr, (Mac, u64)> = HashMap::new();
        let mut last_offer: HashMap<Mac, Ipv4Addr> = HashMap::new();
        let mut last_ack: HashMap<Mac, Ipv4Addr> = HashMap::new();
        let mut now = 1_800_000_000u64;
        let src: SocketAddr = "0.0.0.0:68".parse().unwrap();
        let sid = DhcpOption::ServerIdentifier(SERVER);

        for (i, op, dt) in steps {
            now += dt;
            let m = mac(i);
            let bytes = match &op {
                Op::Restart => {
                    table = LeaseTable::from_leases(persisted.values().copied());
                    offered.clear();
                    continue;
                }
                Op::Discover => packet(m, MessageType::Discover, Ipv4Addr::UNSPECIFIED, vec![]),
                Op::Select { pick } => {
                    let ip = last_offer.get(&m).copied().unwrap_or(subnet_ip(*pick));
                    packet(m, MessageType::Request, Ipv4Addr::UNSPECIFIED,
                        vec![DhcpOption::RequestedIpAddress(ip), sid.clone()])
                }
                Op::InitReboot { pick } => packet(m, MessageType::Request, Ipv4Addr::UNSPECIFIED,
                    vec![DhcpOption::RequestedIpAddress(subnet_ip(*pick))]),
                Op::Renew { pick } => {
                    let ip = last_ack.get(&m).copied().unwrap_or(subnet_ip(*pick));
                    packet(m, MessageType::Request, ip, vec![])
                }
                Op::Release => {
                    let ip = last_ack.get(&m).copied().unwrap_or(Ipv4Addr::new(10, 77, 0, 100));
                    packet(m, MessageType::Release, ip, vec![sid.clone()])
                }
                Op::Decline => {
                    let ip = last_ack.get(&m).copied().unwrap_or(Ipv4Addr::new(10, 77, 0, 101));
                    packet(m, MessageType::Decline, Ipv4Addr::UNSPECIFIED,
                        vec![DhcpOption::RequestedIpAddress(ip), sid.clone()])
                }
            };
            let d = decide_raw(&bytes, src, 67, &settings, &mut table, |_| None, now);
            for c in &d.changes {
                match *c {
                    LeaseChange::Grant { mac, ip, expires } => {
                        persisted.insert(mac, Lease { mac, ip, expires });
                    }
                    LeaseChange::Release { mac, ip, at } => {
                        persisted.insert(mac, Lease { mac, ip, expires: at });
                    }
                    LeaseChange::Forget { mac } => {
                        persisted.remove(&mac);
                    }
                }
            }
            match d.action {
                Action::Reply { packet, .. } => {
                    let msg = &packet.message;
                    let t = msg.opts().msg_type();
                    let y = msg.yiaddr();
                    if t == Some(MessageType::Nak) {
                        continue;
                    }
                    let v = u32::from(y);
                    prop_assert!((POOL_LO..=POOL_HI).contains(&v), "{y} outside the pool");
                    if let Some((other, until)) = granted.get(&y) {
                        prop_assert!(*other == m || *until <= now,
                            "{y} to {m} while leased to {other} until {until} (now {now})");
                    }
                    if let Some((other, until)) = offered.get(&y) {
                        prop_assert!(*other == m || *until <= now,
                            "{y} to {m} while offered to {other} until {until} (now {now})");
                    }
                    match t {
                        Some(MessageType::Offer) => {
                            offered.retain(|_, (o, _)| *o != m);
                            offered.insert(y, (m, now + 60));
                            last_offer.insert(m, y);
                        }
                        Some(MessageType::Ack) => {
                            granted.retain(|_, (o, _)| *o != m);
                            granted.insert(y, (m, now + LEASE));
                            // A client holds one address: its ACK ends whatever it was
                            // offered before (possibly another address).
                            offered.retain(|_, (o, _)| *o != m);
                            offered.remove(&y);
                            last_ack.insert(m, y);
                        }
                        other => prop_assert!(false, "unexpected reply {other:?}"),
                    }
                }
                Action::Drop { reason } => match reason {
                    DropReason::Released => {
                        offered.retain(|_, (o, _)| *o != m);
                        if let Some(ip) = last_ack.get(&m) {
                            if let Some(e) = granted.get_mut(ip) {
                                if e.0 == m { e.1 = e.1.min(now); }
                            }
                        }
                    }
                    DropReason::Declined(ip) => {
                        if granted.get(&ip).is_some_and(|(o, _)| *o == m) {
                            granted.remove(&ip);
                        }
                        // the client's offer of that address ends too
                        if offered.get(&ip).is_some_and(|(o, _)| *o == m) {
                            offered.remove(&ip);
                        }
                        last_ack.remove(&m);
                    }
                    _ => {}
                },
            }
        }
    }
}
