//! The lease store survives a restart: reopen the redb file, reload the table, and
//! the same client gets the same address while another gets a different one.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Encodable, Encoder};
use substruct_edge::dhcp::{
    decide_raw, Action, DhcpConfig, DhcpSettings, LeaseChange, LeaseStore, LeaseTable, Subnet,
};
use substruct_wire::Mac;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const NOW: u64 = 1_800_000_000;

fn settings() -> DhcpSettings {
    DhcpSettings::new(DhcpConfig::new(
        SERVER,
        "http://10.77.0.1",
        Subnet {
            network: "10.77.0.0/24".parse().unwrap(),
            pools: vec![(
                "10.77.0.100".parse().unwrap(),
                "10.77.0.199".parse().unwrap(),
            )],
            router: None,
            dns: vec![],
            lease_time: Duration::from_secs(3600),
            relays: vec![],
            uefi_loader: None,
        },
    ))
    .unwrap()
}

fn packet(m: Mac, t: MessageType, opts: Vec<DhcpOption>) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        1,
        Ipv4Addr::UNSPECIFIED,
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

fn yiaddr(a: &Action) -> Ipv4Addr {
    match a {
        Action::Reply { packet, .. } => packet.message.yiaddr(),
        Action::Drop { reason } => panic!("dropped: {reason}"),
    }
}

/// DISCOVER + REQUEST; the ACK's changes are applied to the store.
fn dora(store: &LeaseStore, table: &mut LeaseTable, s: &DhcpSettings, m: Mac) -> Ipv4Addr {
    let src: SocketAddr = "0.0.0.0:68".parse().unwrap();
    let offer = decide_raw(
        &packet(m, MessageType::Discover, vec![]),
        src,
        67,
        s,
        table,
        |_| None,
        NOW,
    );
    store.apply(&offer.changes).unwrap();
    let ip = yiaddr(&offer.action);
    let req = packet(
        m,
        MessageType::Request,
        vec![
            DhcpOption::RequestedIpAddress(ip),
            DhcpOption::ServerIdentifier(SERVER),
        ],
    );
    let ack = decide_raw(&req, src, 67, s, table, |_| None, NOW);
    assert!(matches!(ack.changes[..], [LeaseChange::Grant { .. }]));
    store.apply(&ack.changes).unwrap();
    assert_eq!(yiaddr(&ack.action), ip);
    ip
}

#[test]
fn restart_keeps_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.redb");
    let s = settings();
    let a = Mac([0x52, 0x54, 0, 0, 0, 1]);
    let b = Mac([0x52, 0x54, 0, 0, 0, 2]);
    let c = Mac([0x52, 0x54, 0, 0, 0, 3]);
    let (ip_a, ip_b) = {
        let store = LeaseStore::open(&path).unwrap();
        let mut table = LeaseTable::from_leases(store.load().unwrap());
        (
            dora(&store, &mut table, &s, a),
            dora(&store, &mut table, &s, b),
        )
    };
    // "restart": a fresh table, loaded from the reopened file
    let store = LeaseStore::open(&path).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.len(), 2);
    let mut table = LeaseTable::from_leases(loaded);
    assert_eq!(table.lease_of(&a).map(|l| l.ip), Some(ip_a));
    // the store answers for one MAC as the loaded table does
    assert_eq!(store.lease_of(&a).unwrap(), table.lease_of(&a));
    // a new client gets neither address; the old ones get theirs back
    let ip_c = dora(&store, &mut table, &s, c);
    assert!(ip_c != ip_a && ip_c != ip_b);
    assert_eq!(dora(&store, &mut table, &s, b), ip_b);
    assert_eq!(dora(&store, &mut table, &s, a), ip_a);
    // forgetting is persisted too
    store.apply(&[LeaseChange::Forget { mac: c }]).unwrap();
    drop(store);
    let store = LeaseStore::open(&path).unwrap();
    let macs: Vec<Mac> = store.load().unwrap().iter().map(|l| l.mac).collect();
    assert!(macs.contains(&a) && macs.contains(&b) && !macs.contains(&c));
    assert_eq!(store.lease_of(&c).unwrap(), None);
}
