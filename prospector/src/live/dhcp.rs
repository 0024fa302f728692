//! The DHCPv4 client core: builds DISCOVER/REQUEST (with dhcproto) and reads OFFER/ACK/NAK
//! with the bounds-checked reader the edge's server uses ([`substruct_wire::dhcp`]), never
//! with dhcproto: a reply comes from anyone on the LAN, and dhcproto panics on some (a
//! `hlen` of 255). Whatever arrives on port 68 is either the answer we wait for or a
//! [`Dropped`] naming why not. No sockets, no clock: [`super::net`] moves the bytes and
//! keeps the time.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::Encodable;
use substruct_wire::dhcp::{Op, OptionIter, Packet, PacketError, FILE_AT, SNAME_AT};
use substruct_wire::Mac;

/// Option 60 we send, so an edge can tell the prospector from firmware and installers.
pub const VENDOR_CLASS: &[u8] = b"substruct-prospector";
/// BOOTP's minimum message size; some servers and relays drop shorter requests.
const BOOTP_MIN_LEN: usize = 300;
/// The largest DHCP message we take (and announce in option 57); a longer reply is dropped.
pub const MAX_MESSAGE_SIZE: u16 = 1500;
/// Name servers kept from a lease: as many as the C library's resolver reads (`MAXNS`).
pub const MAX_DNS: usize = 3;

const DHCPOFFER: u8 = 2;
const DHCPACK: u8 = 5;
const DHCPNAK: u8 = 6;

/// Why DHCP bytes could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot encode a DHCP message")]
    Encode(#[source] dhcproto::error::EncodeError),
}

/// Why a datagram on port 68 is not the answer the client waits for. Each one is a
/// clean drop: the client keeps waiting for a better one until its timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error(transparent)]
    Malformed(#[from] PacketError),
    #[error("{len} bytes, longer than the {MAX_MESSAGE_SIZE} we announce")]
    TooLong { len: usize },
    #[error("transaction {got:#010x}, not ours")]
    OtherTransaction { got: u32 },
    #[error("for client {0}, not us")]
    OtherClient(Mac),
    #[error("option {code} has invalid length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("option 52 (overload) is {0}, not 1, 2 or 3")]
    BadOverload(u8),
    #[error("no option 53 (message type)")]
    MissingMessageType,
    #[error("message type {got}, not a {want}")]
    UnexpectedType { got: u8, want: &'static str },
    #[error("address {0} is not a usable unicast address")]
    BadAddress(Ipv4Addr),
    #[error("no server identifier (option 54 or siaddr)")]
    NoServer,
    #[error("from server {got}, our request went to {want}")]
    OtherServer { got: Ipv4Addr, want: Ipv4Addr },
}

/// A server's offer, as needed to request it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub ip: Ipv4Addr,
    pub server: Ipv4Addr,
}

/// An acknowledged address and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: Option<u32>,
    /// At most [`MAX_DNS`].
    pub dns: Vec<Ipv4Addr>,
}

/// What the server said to our REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ack(Lease),
    Nak,
}

/// One DHCP client transaction on one interface.
#[derive(Debug, Clone)]
pub struct DhcpClient {
    mac: Mac,
    xid: u32,
}

impl DhcpClient {
    /// `xid` must be random per transaction (the I/O shell draws it).
    pub fn new(mac: Mac, xid: u32) -> Self {
        Self { mac, xid }
    }

    pub fn xid(&self) -> u32 {
        self.xid
    }

    fn base(&self, kind: MessageType, secs: u16) -> Message {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut msg = Message::new_with_id(
            self.xid,
            unspecified,
            unspecified,
            unspecified,
            unspecified,
            &self.mac.0,
        );
        msg.set_opcode(Opcode::BootRequest)
            .set_htype(HType::Eth)
            .set_secs(secs)
            .set_flags(Flags::default().set_broadcast());
        let mut client_id = Vec::with_capacity(7);
        client_id.push(1); // hardware type: Ethernet
        client_id.extend_from_slice(&self.mac.0);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ClientIdentifier(client_id));
        opts.insert(DhcpOption::ClassIdentifier(VENDOR_CLASS.to_vec()));
        opts.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE_SIZE));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::AddressLeaseTime,
            OptionCode::ServerIdentifier,
        ]));
        msg
    }

    /// DHCPDISCOVER, broadcast flag set.
    pub fn discover(&self, secs: u16) -> Message {
        self.base(MessageType::Discover, secs)
    }

    /// DHCPREQUEST (SELECTING state) for `offer`.
    pub fn request(&self, offer: &Offer, secs: u16) -> Message {
        let mut msg = self.base(MessageType::Request, secs);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::RequestedIpAddress(offer.ip));
        opts.insert(DhcpOption::ServerIdentifier(offer.server));
        msg
    }

    /// Reads a datagram as a server's reply to this transaction and this MAC.
    fn read(&self, bytes: &[u8]) -> Result<ServerReply, Dropped> {
        if bytes.len() > usize::from(MAX_MESSAGE_SIZE) {
            return Err(Dropped::TooLong { len: bytes.len() });
        }
        let packet = Packet::parse(bytes, Op::BootReply)?;
        if packet.xid() != self.xid {
            return Err(Dropped::OtherTransaction { got: packet.xid() });
        }
        if packet.mac() != self.mac {
            return Err(Dropped::OtherClient(packet.mac()));
        }
        ServerReply::read(&packet)
    }

    /// Reads a DHCPOFFER for us.
    pub fn offer(&self, bytes: &[u8]) -> Result<Offer, Dropped> {
        let reply = self.read(bytes)?;
        if reply.msg_type != DHCPOFFER {
            return Err(Dropped::UnexpectedType {
                got: reply.msg_type,
                want: "DHCPOFFER",
            });
        }
        let ip = usable(reply.yiaddr)?;
        let server = reply.server_id.unwrap_or(reply.siaddr);
        if server.is_unspecified() {
            return Err(Dropped::NoServer);
        }
        Ok(Offer {
            ip,
            server: usable(server)?,
        })
    }

    /// Reads the answer to our REQUEST for `offer`.
    pub fn reply(&self, bytes: &[u8], offer: &Offer) -> Result<Reply, Dropped> {
        let reply = self.read(bytes)?;
        if let Some(got) = reply.server_id.filter(|s| *s != offer.server) {
            return Err(Dropped::OtherServer {
                got,
                want: offer.server,
            });
        }
        match reply.msg_type {
            DHCPNAK => Ok(Reply::Nak),
            DHCPACK => {
                let ip = usable(reply.yiaddr)?;
                Ok(Reply::Ack(reply.lease(ip, offer.server)))
            }
            got => Err(Dropped::UnexpectedType {
                got,
                want: "DHCPACK or DHCPNAK",
            }),
        }
    }
}

/// `ip` when a host may take it as its own address (or talk to it as a server).
fn usable(ip: Ipv4Addr) -> Result<Ipv4Addr, Dropped> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(Dropped::BadAddress(ip));
    }
    Ok(ip)
}

/// The options a client reads, each the concatenation of its instances (RFC 3396).
const READ_OPTIONS: [u8; 7] = [53, 54, 1, 3, 6, 51, 52];

/// Raw values of [`READ_OPTIONS`]; at most the packet's size in all.
#[derive(Debug, Default)]
struct RawOptions([Option<Vec<u8>>; READ_OPTIONS.len()]);

impl RawOptions {
    fn add_all(&mut self, options: OptionIter<'_>) -> Result<(), Dropped> {
        for item in options {
            let (code, data) = item?;
            if let Some(i) = READ_OPTIONS.iter().position(|&c| c == code) {
                if let Some(slot) = self.0.get_mut(i) {
                    slot.get_or_insert_with(Vec::new).extend_from_slice(data);
                }
            }
        }
        Ok(())
    }

    fn get(&self, code: u8) -> Option<&[u8]> {
        let i = READ_OPTIONS.iter().position(|&c| c == code)?;
        self.0.get(i)?.as_deref()
    }

    /// Option `code` as exactly `N` bytes; a present value of another length is refused.
    fn exact<const N: usize>(&self, code: u8) -> Result<Option<[u8; N]>, Dropped> {
        self.get(code)
            .map(|v| {
                v.try_into()
                    .map_err(|_| Dropped::BadOptionLength { code, len: v.len() })
            })
            .transpose()
    }

    /// Option `code` as a non-empty list of addresses.
    fn addresses(&self, code: u8) -> Result<Vec<Ipv4Addr>, Dropped> {
        let Some(v) = self.get(code) else {
            return Ok(Vec::new());
        };
        if v.is_empty() || v.len() % 4 != 0 {
            return Err(Dropped::BadOptionLength { code, len: v.len() });
        }
        Ok(v.chunks_exact(4)
            .filter_map(|c| <[u8; 4]>::try_from(c).ok())
            .map(Ipv4Addr::from)
            .collect())
    }
}

/// A server's reply, every option we use checked.
#[derive(Debug)]
struct ServerReply {
    msg_type: u8,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    server_id: Option<Ipv4Addr>,
    subnet_mask: Option<Ipv4Addr>,
    routers: Vec<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
    lease_secs: Option<u32>,
}

impl ServerReply {
    fn read(packet: &Packet<'_>) -> Result<Self, Dropped> {
        let mut raw = RawOptions::default();
        raw.add_all(packet.options())?;
        // Option 52 lends `file` and/or `sname` to options, read in that order. It counts
        // only in the options field: it is read before the lent fields are.
        if let Some([overload]) = raw.exact::<1>(52)? {
            let fields = match overload {
                1 => [Some((packet.file(), FILE_AT)), None],
                2 => [Some((packet.sname(), SNAME_AT)), None],
                3 => [
                    Some((packet.file(), FILE_AT)),
                    Some((packet.sname(), SNAME_AT)),
                ],
                other => return Err(Dropped::BadOverload(other)),
            };
            for (field, at) in fields.into_iter().flatten() {
                raw.add_all(OptionIter::new(field, at))?;
            }
        }
        let [msg_type] = raw.exact::<1>(53)?.ok_or(Dropped::MissingMessageType)?;
        Ok(Self {
            msg_type,
            yiaddr: packet.yiaddr(),
            siaddr: packet.siaddr(),
            server_id: raw.exact::<4>(54)?.map(Ipv4Addr::from),
            subnet_mask: raw.exact::<4>(1)?.map(Ipv4Addr::from),
            routers: raw.addresses(3)?,
            dns: raw.addresses(6)?,
            lease_secs: raw.exact::<4>(51)?.map(u32::from_be_bytes),
        })
    }

    fn lease(&self, ip: Ipv4Addr, server: Ipv4Addr) -> Lease {
        let prefix = self
            .subnet_mask
            .and_then(mask_to_prefix)
            .unwrap_or_else(|| classful_prefix(ip));
        let router = self.routers.iter().copied().find(|r| usable(*r).is_ok());
        let dns = self
            .dns
            .iter()
            .copied()
            .filter(|d| usable(*d).is_ok())
            .take(MAX_DNS)
            .collect();
        Lease {
            ip,
            prefix,
            router,
            server,
            lease_secs: self.lease_secs,
            dns,
        }
    }
}

/// `255.255.255.0` → 24; `None` for a non-contiguous mask.
pub fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return None;
    }
    u8::try_from(ones).ok()
}

/// The old class-based prefix, for servers that send no subnet mask.
fn classful_prefix(ip: Ipv4Addr) -> u8 {
    match ip.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// Encodes `msg`, padded to the 300-byte BOOTP minimum.
pub fn encode(msg: &Message) -> Result<Vec<u8>, DhcpError> {
    let mut bytes = msg.to_vec().map_err(DhcpError::Encode)?;
    if bytes.len() < BOOTP_MIN_LEN {
        bytes.resize(BOOTP_MIN_LEN, 0);
    }
    Ok(bytes)
}

/// Seconds to wait before DHCP round `attempt` (0-based) on all NICs: 1, 2, 4 … 30.
pub fn backoff_secs(attempt: u32) -> u64 {
    (1u64 << attempt.min(5)).min(30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::Decodable;
    use proptest::prelude::*;
    use substruct_wire::dhcp::OPTIONS_AT;

    const MAC: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const YIADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 150);
    const OFFER: Offer = Offer {
        ip: YIADDR,
        server: SERVER,
    };

    /// A server reply as dnsmasq would build it.
    fn server_reply(xid: u32, chaddr: &[u8], kind: MessageType) -> Message {
        let mut msg = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            YIADDR,
            SERVER,
            Ipv4Addr::UNSPECIFIED,
            chaddr,
        );
        msg.set_opcode(Opcode::BootReply);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(SERVER));
        opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        opts.insert(DhcpOption::Router(vec![SERVER]));
        opts.insert(DhcpOption::AddressLeaseTime(3600));
        opts.insert(DhcpOption::DomainNameServer(vec![SERVER]));
        msg
    }

    /// The bytes of a reply to transaction 42 of [`MAC`].
    fn reply_bytes(kind: MessageType) -> Vec<u8> {
        encode(&server_reply(42, &MAC.0, kind)).unwrap()
    }

    /// The header of a reply to transaction 42 of [`MAC`] with `options` instead of its own.
    fn with_options(options: &[u8]) -> Vec<u8> {
        let mut b = reply_bytes(MessageType::Offer);
        b.truncate(OPTIONS_AT);
        b.extend_from_slice(options);
        b
    }

    /// An OFFER to transaction 42 of [`MAC`] with `bytes` written at `at`.
    fn patched(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = reply_bytes(MessageType::Offer);
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    }

    /// Reads our own request back (our bytes: dhcproto may read them).
    fn our_request(msg: &Message) -> Message {
        Message::from_bytes(&encode(msg).unwrap()).unwrap()
    }

    fn client() -> DhcpClient {
        DhcpClient::new(MAC, 42)
    }

    #[test]
    fn discover_carries_what_servers_need() {
        let client = DhcpClient::new(MAC, 0xdead_beef);
        let bytes = encode(&client.discover(3)).unwrap();
        assert!(bytes.len() >= 300, "padded to the BOOTP minimum");
        let msg = Message::from_bytes(&bytes).unwrap();
        assert_eq!(msg.opcode(), Opcode::BootRequest);
        assert_eq!(msg.xid(), 0xdead_beef);
        assert_eq!(msg.secs(), 3);
        assert!(msg.flags().broadcast());
        assert_eq!(&msg.chaddr()[..6], &MAC.0);
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(
            msg.opts().get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![
                1, 0x52, 0x54, 0, 0x12, 0x34, 0x56
            ]))
        );
        assert_eq!(
            msg.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(VENDOR_CLASS.to_vec()))
        );
        assert_eq!(
            msg.opts().get(OptionCode::MaxMessageSize),
            Some(&DhcpOption::MaxMessageSize(MAX_MESSAGE_SIZE))
        );
    }

    #[test]
    fn full_exchange_yields_a_lease() {
        let client = client();
        let offer = client.offer(&reply_bytes(MessageType::Offer)).unwrap();
        assert_eq!(offer, OFFER);
        let req = our_request(&client.request(&offer, 1));
        assert_eq!(req.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(
            req.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(YIADDR))
        );
        assert_eq!(
            req.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            client.reply(&reply_bytes(MessageType::Ack), &offer),
            Ok(Reply::Ack(Lease {
                ip: YIADDR,
                prefix: 24,
                router: Some(SERVER),
                server: SERVER,
                lease_secs: Some(3600),
                dns: vec![SERVER],
            }))
        );
        assert_eq!(
            client.reply(&reply_bytes(MessageType::Nak), &offer),
            Ok(Reply::Nak)
        );
    }

    #[test]
    fn foreign_replies_are_dropped() {
        let client = client();
        let other_mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let bytes = |xid, mac: Mac, kind| encode(&server_reply(xid, &mac.0, kind)).unwrap();
        assert_eq!(
            client.offer(&bytes(43, MAC, MessageType::Offer)),
            Err(Dropped::OtherTransaction { got: 43 })
        );
        assert_eq!(
            client.offer(&bytes(42, other_mac, MessageType::Offer)),
            Err(Dropped::OtherClient(other_mac))
        );
        assert_eq!(
            client.offer(&bytes(42, MAC, MessageType::Ack)),
            Err(Dropped::UnexpectedType {
                got: 5,
                want: "DHCPOFFER"
            })
        );
        assert_eq!(
            client.reply(&bytes(42, MAC, MessageType::Offer), &OFFER),
            Err(Dropped::UnexpectedType {
                got: 2,
                want: "DHCPACK or DHCPNAK"
            })
        );
        // Our own broadcast DISCOVER looped back is a request, not an offer.
        assert_eq!(
            client.offer(&encode(&client.discover(0)).unwrap()),
            Err(Dropped::Malformed(PacketError::WrongOp {
                op: 1,
                expected: Op::BootReply
            }))
        );
        let other_server = Offer {
            ip: YIADDR,
            server: Ipv4Addr::new(10, 77, 0, 2),
        };
        assert_eq!(
            client.reply(&reply_bytes(MessageType::Ack), &other_server),
            Err(Dropped::OtherServer {
                got: SERVER,
                want: other_server.server
            }),
            "an ACK from another server"
        );
    }

    /// Each of these panicked (hlen 255) or was misread with dhcproto as the reader.
    #[test]
    fn hostile_replies_are_clean_drops() {
        let client = client();
        let drop = |bytes: &[u8]| client.offer(bytes).unwrap_err();
        let hlen = patched(2, &[255]);
        assert_eq!(
            drop(&hlen),
            Dropped::Malformed(PacketError::UnsupportedHardware {
                htype: 1,
                hlen: 255
            })
        );
        assert_eq!(
            client.reply(&hlen, &OFFER).unwrap_err(),
            Dropped::Malformed(PacketError::UnsupportedHardware {
                htype: 1,
                hlen: 255
            })
        );
        let full = reply_bytes(MessageType::Offer);
        for len in [0, 1, 27, 235, 236, 239] {
            assert_eq!(
                drop(&full[..len]),
                Dropped::Malformed(PacketError::Truncated { len })
            );
        }
        assert_eq!(
            drop(&with_options(&[53, 1, 2, 54, 4, 10, 77])),
            Dropped::Malformed(PacketError::OptionOverrun {
                code: 54,
                offset: OPTIONS_AT + 3
            })
        );
        assert_eq!(
            drop(&with_options(&[53, 1, 2, 6])),
            Dropped::Malformed(PacketError::OptionOverrun {
                code: 6,
                offset: OPTIONS_AT + 3
            })
        );
        assert_eq!(
            drop(&with_options(&[53, 0, 255])),
            Dropped::BadOptionLength { code: 53, len: 0 }
        );
        assert_eq!(
            drop(&with_options(&[53, 2, 2, 2, 255])),
            Dropped::BadOptionLength { code: 53, len: 2 }
        );
        assert_eq!(drop(&with_options(&[255])), Dropped::MissingMessageType);
        assert_eq!(
            drop(&with_options(&[53, 1, 2, 54, 3, 10, 77, 0, 255])),
            Dropped::BadOptionLength { code: 54, len: 3 }
        );
        assert_eq!(
            drop(&with_options(&[53, 1, 2, 52, 1, 9, 255])),
            Dropped::BadOverload(9)
        );
        assert_eq!(
            drop(&with_options(&[53, 1, 2, 52, 0, 255])),
            Dropped::BadOptionLength { code: 52, len: 0 }
        );
        // 64 KiB: longer than anything a server may send us.
        let mut huge = reply_bytes(MessageType::Offer);
        huge.resize(65_535, 0);
        assert_eq!(drop(&huge), Dropped::TooLong { len: 65_535 });
        assert_eq!(
            drop(&patched(0, &[1])),
            Dropped::Malformed(PacketError::WrongOp {
                op: 1,
                expected: Op::BootReply
            })
        );
        assert_eq!(
            drop(&patched(236, &[0])),
            Dropped::Malformed(PacketError::BadMagic)
        );
        for yiaddr in [[0, 0, 0, 0], [255; 4], [224, 0, 0, 1], [127, 0, 0, 1]] {
            assert_eq!(
                drop(&patched(16, &yiaddr)),
                Dropped::BadAddress(Ipv4Addr::from(yiaddr))
            );
        }
        // No option 54 and no siaddr: nobody to request from.
        let mut nobody = with_options(&[53, 1, 2, 255]);
        nobody[20..24].fill(0);
        assert_eq!(drop(&nobody), Dropped::NoServer);
    }

    #[test]
    fn overloaded_fields_are_read_in_bounds() {
        let client = client();
        // Message type and server id in `file`, the mask in `sname`.
        let mut b = with_options(&[52, 1, 3, 255]);
        b[108..117].copy_from_slice(&[53, 1, 5, 54, 4, 10, 77, 0, 1]);
        b[44..51].copy_from_slice(&[1, 4, 255, 255, 0, 0, 255]);
        match client.reply(&b, &OFFER) {
            Ok(Reply::Ack(lease)) => assert_eq!(lease.prefix, 16),
            other => panic!("{other:?}"),
        }
        // An option in `file` that runs past the 128 bytes is an overrun, not a read
        // into `sname` or the options.
        let mut b = with_options(&[52, 1, 1, 53, 1, 5, 255]);
        b[108 + 120..108 + 123].copy_from_slice(&[6, 40, 10]);
        assert_eq!(
            client.reply(&b, &OFFER),
            Err(Dropped::Malformed(PacketError::OptionOverrun {
                code: 6,
                offset: 108 + 120
            }))
        );
        // Option 52 counts only in the options field.
        let mut b = with_options(&[53, 1, 5, 255]);
        b[108..111].copy_from_slice(&[52, 1, 9]);
        assert!(matches!(client.reply(&b, &OFFER), Ok(Reply::Ack(_))));
    }

    #[test]
    fn lease_values_are_checked() {
        let client = client();
        // Split options are concatenated (RFC 3396); name servers beyond the resolver's
        // three and unusable ones are left out; a bad router is skipped.
        let mut opts = vec![53, 1, 5, 3, 8, 0, 0, 0, 0, 10, 77, 0, 9, 6, 6];
        opts.extend_from_slice(&[10, 0, 0, 1, 255, 255]);
        opts.extend_from_slice(&[6, 14, 255, 255, 10, 0, 0, 2, 10, 0, 0, 3, 10, 0, 0, 4]);
        opts.push(255);
        match client.reply(&with_options(&opts), &OFFER) {
            Ok(Reply::Ack(lease)) => {
                assert_eq!(lease.router, Some(Ipv4Addr::new(10, 77, 0, 9)));
                assert_eq!(
                    lease.dns,
                    [
                        Ipv4Addr::new(10, 0, 0, 1),
                        Ipv4Addr::new(10, 0, 0, 2),
                        Ipv4Addr::new(10, 0, 0, 3)
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        for (code, len) in [(3u8, 3u8), (6, 5), (1, 2), (51, 8)] {
            let mut opts = vec![53, 1, 5, code, len];
            opts.extend(std::iter::repeat_n(10, usize::from(len)));
            opts.push(255);
            assert_eq!(
                client.reply(&with_options(&opts), &OFFER),
                Err(Dropped::BadOptionLength {
                    code,
                    len: usize::from(len)
                })
            );
        }
        assert_eq!(
            client.reply(&with_options(&[53, 1, 5, 3, 0, 255]), &OFFER),
            Err(Dropped::BadOptionLength { code: 3, len: 0 })
        );
    }

    #[test]
    fn masks_and_fallbacks() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        let mut ack = server_reply(42, &MAC.0, MessageType::Ack);
        ack.opts_mut().remove(OptionCode::SubnetMask);
        ack.opts_mut().remove(OptionCode::Router);
        match client().reply(&encode(&ack).unwrap(), &OFFER) {
            Ok(Reply::Ack(lease)) => {
                assert_eq!(lease.prefix, 8);
                assert_eq!(lease.router, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(backoff_secs(0), 1);
        assert_eq!(backoff_secs(3), 8);
        assert_eq!(backoff_secs(40), 30);
    }

    proptest! {
        /// The receive path takes any datagram without panicking.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let client = client();
            let _ = client.offer(&bytes);
            let _ = client.reply(&bytes, &OFFER);
        }

        /// Past the header checks: our xid and MAC, any `hlen`, `sname`, `file` and
        /// options, overload included.
        #[test]
        fn arbitrary_replies_never_panic(
            hlen in prop_oneof![Just(6u8), any::<u8>()],
            sname in proptest::collection::vec(any::<u8>(), 64),
            file in proptest::collection::vec(any::<u8>(), 128),
            options in proptest::collection::vec(any::<u8>(), 0..1300),
            overload in 0u8..5,
        ) {
            let client = client();
            let mut b = with_options(&[52, 1, overload]);
            b[2] = hlen;
            b[44..108].copy_from_slice(&sname);
            b[108..236].copy_from_slice(&file);
            b.extend_from_slice(&options);
            let _ = client.offer(&b);
            if let Ok(Reply::Ack(lease)) = client.reply(&b, &OFFER) {
                prop_assert!(lease.dns.len() <= MAX_DNS);
                prop_assert!(lease.prefix <= 32);
            }
        }
    }
}
