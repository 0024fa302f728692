//! The three route-netlink requests the live image makes — set a link up, put an IPv4
//! address on it, add a default route — on one blocking `NETLINK_ROUTE` socket.
//!
//! Written here rather than taken from `rtnetlink` (whose message library was ~440 KiB
//! of the static prospector, which must stay under 5 MiB): the messages are fixed
//! shapes ([`link_up`], [`add_address`], [`default_route`], pure and unit-tested
//! byte for byte), and the kernel answers each with one acknowledgement ([`ack`]).

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

const NETLINK_ROUTE: i32 = 0;
const AF_NETLINK: i32 = 16;
const AF_INET: u8 = 2;
const AF_UNSPEC: u8 = 0;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;

const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 4;

/// How long to wait for the kernel's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// One netlink message: header, fixed body, attributes (each padded to 4 bytes).
fn message(kind: u16, flags: u16, seq: u32, body: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m.extend_from_slice(body);
    for (kind, value) in attrs {
        let len = 4 + value.len();
        m.extend_from_slice(&(len as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(value);
        m.resize(m.len().next_multiple_of(4), 0);
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// Pure: `RTM_NEWLINK` setting `IFF_UP` on link `index` (other flags untouched).
pub fn link_up(seq: u32, index: u32) -> Vec<u8> {
    // struct ifinfomsg: family, pad, type, index, flags, change
    let mut body = vec![AF_UNSPEC, 0, 0, 0];
    body.extend_from_slice(&index.to_ne_bytes());
    body.extend_from_slice(&IFF_UP.to_ne_bytes());
    body.extend_from_slice(&IFF_UP.to_ne_bytes());
    message(RTM_NEWLINK, 0, seq, &body, &[])
}

/// Pure: `RTM_NEWADDR` putting `ip/prefix` (with its broadcast address) on link `index`,
/// replacing the same address if present.
pub fn add_address(seq: u32, index: u32, ip: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let prefix = prefix.min(32);
    // struct ifaddrmsg: family, prefixlen, flags, scope, index
    let mut body = vec![AF_INET, prefix, 0, RT_SCOPE_UNIVERSE];
    body.extend_from_slice(&index.to_ne_bytes());
    let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    let broadcast = Ipv4Addr::from(u32::from(ip) | host_bits).octets();
    let ip = ip.octets();
    let mut attrs: Vec<(u16, &[u8])> = vec![(IFA_LOCAL, &ip), (IFA_ADDRESS, &ip)];
    if prefix < 31 {
        attrs.push((IFA_BROADCAST, &broadcast));
    }
    message(
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        &body,
        &attrs,
    )
}

/// Pure: `RTM_NEWROUTE` for the default route via `gateway` out of link `index`
/// (`onlink` when the gateway is outside the link's subnet), replacing any.
pub fn default_route(seq: u32, index: u32, gateway: Ipv4Addr, onlink: bool) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    let mut body = vec![
        AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    let flags = if onlink { RTNH_F_ONLINK } else { 0 };
    body.extend_from_slice(&flags.to_ne_bytes());
    let gw = gateway.octets();
    let oif = index.to_ne_bytes();
    message(
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        &body,
        &[(RTA_GATEWAY, &gw), (RTA_OIF, &oif)],
    )
}

/// Pure: the kernel's answer to request `seq` among the messages in `buf`: `Some(0)`
/// for success, `Some(-errno)` for a refusal, `None` when `buf` holds no
/// acknowledgement of `seq` (other messages, or anything malformed, are skipped).
pub fn ack(buf: &[u8], seq: u32) -> Option<i32> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
    };
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(at)? as usize;
        if len < 16 || at + len > buf.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if kind == NLMSG_ERROR && u32_at(at + 8)? == seq && len >= 20 {
            return Some(u32_at(at + 16)? as i32);
        }
        at += len.next_multiple_of(4);
    }
    None
}

/// A route-netlink socket.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        let socket = Socket::new(
            Domain::from(AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(NETLINK_ROUTE)),
        )?;
        socket.set_read_timeout(Some(ACK_TIMEOUT))?;
        Ok(Rtnl { socket, seq: 1 })
    }

    /// Sets link `index` up.
    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        let seq = self.next();
        self.request(&link_up(seq, index), seq)
    }

    /// Puts `ip/prefix` on link `index`.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let seq = self.next();
        self.request(&add_address(seq, index, ip, prefix), seq)
    }

    /// Sets the default route via `gateway` on link `index`.
    pub fn default_route(&mut self, index: u32, gateway: Ipv4Addr, onlink: bool) -> io::Result<()> {
        let seq = self.next();
        self.request(&default_route(seq, index, gateway, onlink), seq)
    }

    fn next(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msg` to the kernel and waits for its acknowledgement.
    fn request(&mut self, msg: &[u8], seq: u32) -> io::Result<()> {
        self.socket.send(msg)?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = io::Read::read(&mut self.socket, &mut buf)?;
            let got = &buf[..n];
            match ack(got, seq) {
                Some(0) => return Ok(()),
                Some(e) => return Err(io::Error::from_raw_os_error(e.saturating_neg())),
                None => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }

    #[test]
    fn link_up_is_an_ifinfomsg_with_iff_up_in_flags_and_change() {
        let m = link_up(7, 3);
        assert_eq!(m.len(), 32);
        assert_eq!(m[0..4], 32u32.to_ne_bytes());
        assert_eq!(m[4..6], ne16(RTM_NEWLINK));
        assert_eq!(m[6..8], ne16(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(m[8..12], 7u32.to_ne_bytes());
        assert_eq!(m[16], AF_UNSPEC);
        assert_eq!(m[20..24], 3u32.to_ne_bytes());
        assert_eq!(m[24..28], IFF_UP.to_ne_bytes());
        assert_eq!(m[28..32], IFF_UP.to_ne_bytes());
    }

    #[test]
    fn an_address_carries_local_address_and_broadcast() {
        let m = add_address(9, 2, Ipv4Addr::new(10, 0, 0, 5), 24);
        // header 16 + ifaddrmsg 8 + three 8-byte attributes
        assert_eq!(m.len(), 48);
        assert_eq!(m[4..6], ne16(RTM_NEWADDR));
        assert_eq!(
            m[6..8],
            ne16(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
        );
        assert_eq!(m[16..20], [AF_INET, 24, 0, 0]);
        assert_eq!(m[20..24], 2u32.to_ne_bytes());
        assert_eq!(m[24..26], ne16(8));
        assert_eq!(m[26..28], ne16(IFA_LOCAL));
        assert_eq!(m[28..32], [10, 0, 0, 5]);
        assert_eq!(m[34..36], ne16(IFA_ADDRESS));
        assert_eq!(m[42..44], ne16(IFA_BROADCAST));
        assert_eq!(m[44..48], [10, 0, 0, 255]);
        // A /32 (and /31) has no broadcast address.
        assert_eq!(add_address(1, 2, Ipv4Addr::new(10, 0, 0, 5), 32).len(), 40);
        assert_eq!(
            add_address(1, 2, Ipv4Addr::new(10, 0, 0, 5), 0)[44..48],
            [255; 4]
        );
    }

    #[test]
    fn the_default_route_names_gateway_interface_and_onlink() {
        let m = default_route(4, 6, Ipv4Addr::new(192, 0, 2, 1), true);
        // header 16 + rtmsg 12 + gateway 8 + oif 8
        assert_eq!(m.len(), 44);
        assert_eq!(m[4..6], ne16(RTM_NEWROUTE));
        assert_eq!(
            m[16..24],
            [
                AF_INET,
                0,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_BOOT,
                RT_SCOPE_UNIVERSE,
                RTN_UNICAST
            ]
        );
        assert_eq!(m[24..28], RTNH_F_ONLINK.to_ne_bytes());
        assert_eq!(m[30..32], ne16(RTA_GATEWAY));
        assert_eq!(m[32..36], [192, 0, 2, 1]);
        assert_eq!(m[38..40], ne16(RTA_OIF));
        assert_eq!(m[40..44], 6u32.to_ne_bytes());
        assert_eq!(
            default_route(4, 6, Ipv4Addr::new(192, 0, 2, 1), false)[24..28],
            [0; 4]
        );
    }

    fn error_msg(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = message(NLMSG_ERROR, 0, seq, &errno.to_ne_bytes(), &[]);
        // the echoed request header
        m.extend_from_slice(&[0u8; 16]);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn acknowledgements_are_matched_by_sequence_number() {
        assert_eq!(ack(&error_msg(5, 0), 5), Some(0));
        assert_eq!(ack(&error_msg(5, -17), 5), Some(-17));
        assert_eq!(ack(&error_msg(4, 0), 5), None, "another request's");
        // A stale answer first, then ours, in one datagram.
        let both = [error_msg(4, -1), error_msg(5, 0)].concat();
        assert_eq!(ack(&both, 5), Some(0));
        // Malformed: short, a length past the end, a zero length: no answer, no panic.
        assert_eq!(ack(&[1, 2, 3], 5), None);
        let mut long = error_msg(5, 0);
        long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(ack(&long, 5), None);
        let mut zero = error_msg(5, 0);
        zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(ack(&zero, 5), None);
    }

    proptest::proptest! {
        #[test]
        fn any_datagram_is_read_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            seq in proptest::prelude::any::<u32>(),
        ) {
            let _ = ack(&bytes, seq);
        }
    }
}
