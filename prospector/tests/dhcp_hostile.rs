//! The prospector's DHCP client on a real socket, in a network namespace, against a
//! hostile server on the same link: every reply the client waits for is preceded by
//! malformed and foreign ones (`hlen = 255` among them, which panicked the client when
//! dhcproto read replies). The client must drop each and take the honest answer; with
//! no honest server it must give up saying what it dropped, not crash.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::Encodable;
use socket2::{Domain, Protocol, Socket, Type};
use substruct_prospector::live::dhcp::{Dropped, Lease};
use substruct_prospector::live::net::{dhcp_lease, NetError, Nic};
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::Netns;
use substruct_wire::dhcp::{Op, Packet, PacketError, HEADER_LEN};
use substruct_wire::Mac;

const CLIENT_MAC: Mac = Mac([0x52, 0x54, 0, 0x99, 0, 1]);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const LEASED: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 50);
/// Bounds the whole client run, so a regression fails instead of hanging.
const BOUND: Duration = Duration::from_secs(60);

/// A client namespace (`eth0`, no address) cabled to a LAN namespace (`lan0`, the server).
struct Link {
    client: Netns,
    lan: Netns,
}

fn link() -> Result<Link> {
    let client = Netns::create("dhcpc")?;
    let lan = Netns::create("dhcpl")?;
    client.veth_pair("eth0", &lan, "lan0")?;
    client.ip(&["link", "set", "eth0", "address", &CLIENT_MAC.to_string()])?;
    lan.ip(&["addr", "add", "10.99.0.1/24", "dev", "lan0"])?;
    Ok(Link { client, lan })
}

/// A reply as an honest server builds it.
fn reply(xid: u32, mac: Mac, kind: MessageType) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        LEASED,
        SERVER,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    msg.set_opcode(Opcode::BootReply);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(SERVER));
    opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    opts.insert(DhcpOption::AddressLeaseTime(600));
    msg.to_vec().unwrap()
}

/// What an attacker sends before (or instead of) the honest `good` reply.
fn hostile(good: &[u8]) -> Vec<Vec<u8>> {
    let header = &good[..HEADER_LEN + 4];
    let with = |options: &[u8]| [header, options].concat();
    let patched = |at: usize, bytes: &[u8]| {
        let mut b = good.to_vec();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    let mut huge = good.to_vec();
    huge.resize(65_507, 0);
    vec![
        patched(2, &[255]),                     // hlen 255: dhcproto panicked here
        good[..100].to_vec(),                   // truncated header
        with(&[53, 1, 2, 54, 200, 10, 99]),     // option running past the end
        with(&[53, 0, 255]),                    // zero-length message type
        with(&[52, 1, 9, 53, 1, 2, 255]),       // overload with a bad value
        huge,                                   // 64 KiB
        patched(4, &[0xde, 0xad, 0xbe, 0xef]),  // another transaction
        patched(28, &[0x52, 0x54, 0, 0, 0, 9]), // another client
        patched(0, &[1]),                       // a BOOTREQUEST
        vec![0xff; 300],                        // noise
    ]
}

/// A server on `lan0:67`: answers each DISCOVER and REQUEST with the hostile set, then
/// (when `honest`) with the real OFFER or ACK. Runs until `stop`.
fn serve(lan: &Netns, honest: bool, stop: Arc<AtomicBool>) -> JoinHandle<Result<()>> {
    let sock = lan
        .run_inside(|| {
            let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            sock.set_reuse_address(true)?;
            sock.set_broadcast(true)?;
            sock.bind_device(Some(b"lan0"))?;
            sock.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 67)).into())?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(UdpSocket::from(sock))
        })
        .expect("server socket in the LAN namespace");
    std::thread::spawn(move || {
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        let mut buf = vec![0u8; 2048];
        while !stop.load(Ordering::SeqCst) {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let request = Packet::parse(&buf[..n], Op::BootRequest)?;
            let kind = request
                .options()
                .filter_map(Result::ok)
                .find_map(|(code, data)| (code == 53).then(|| data.first().copied()))
                .flatten();
            let answer = match kind {
                Some(1) => MessageType::Offer,
                Some(3) => MessageType::Ack,
                _ => continue,
            };
            let good = reply(request.xid(), request.mac(), answer);
            for bad in hostile(&good) {
                sock.send_to(&bad, to).context("sending a hostile reply")?;
            }
            if honest {
                sock.send_to(&good, to)?;
            }
        }
        Ok(())
    })
}

/// Runs the real client (`dhcp_lease`, as PID 1 does) on `eth0` inside a client
/// namespace, against [`serve`] on the other end of the cable.
fn lease_against(honest: bool) -> Result<Result<Lease, NetError>> {
    let link = link()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(&link.lan, honest, stop.clone());
    let nic = Nic {
        name: "eth0".into(),
        index: 0,
        mac: CLIENT_MAC,
    };
    let result = link
        .client
        .spawn_inside(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                tokio::time::timeout(BOUND, dhcp_lease(&nic))
                    .await
                    .context("the DHCP client did not finish")
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the DHCP client thread panicked"));
    stop.store(true, Ordering::SeqCst);
    server.join().expect("server thread")?;
    result?
}

#[test]
fn hostile_replies_are_dropped_and_the_honest_lease_taken() -> Result<()> {
    if !system_test(&[Need::Netns]) {
        return Ok(());
    }
    let lease = lease_against(true)?.context("no lease")?;
    assert_eq!(lease.ip, LEASED);
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.server, SERVER);
    assert_eq!(lease.lease_secs, Some(600));
    Ok(())
}

#[test]
fn only_hostile_replies_end_in_a_named_failure() -> Result<()> {
    if !system_test(&[Need::Netns]) {
        return Ok(());
    }
    let err = lease_against(false)?.expect_err("no honest server, no lease");
    println!("console: {}", substruct_runtime::error_chain(&err));
    match err {
        NetError::NoAnswer {
            what: "DHCPOFFER",
            dropped,
            ..
        } => {
            assert!(dropped.count >= 10, "{dropped:?}");
            // The last datagram of each round is the noise.
            assert_eq!(
                dropped.last,
                Some(Dropped::Malformed(PacketError::WrongOp {
                    op: 0xff,
                    expected: Op::BootReply
                }))
            );
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}
