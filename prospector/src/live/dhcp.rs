//! The DHCPv4 client core: builds DISCOVER/REQUEST and reads OFFER/ACK/NAK. No sockets,
//! no clock: [`super::net`] moves the bytes and keeps the time.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

/// Option 60 we send, so an edge can tell the prospector from firmware and installers.
pub const VENDOR_CLASS: &[u8] = b"substruct-prospector";
/// BOOTP's minimum message size; some servers and relays drop shorter requests.
const BOOTP_MIN_LEN: usize = 300;

/// Why DHCP bytes could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot encode a DHCP message")]
    Encode(#[source] dhcproto::error::EncodeError),
    #[error("cannot decode a DHCP message")]
    Decode(#[source] dhcproto::error::DecodeError),
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
    pub dns: Vec<Ipv4Addr>,
}

/// What a reply to our REQUEST means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ack(Lease),
    Nak,
    /// Not for us, not for this transaction, or not a reply we wait for.
    Ignore,
}

/// One DHCP client transaction on one interface.
#[derive(Debug, Clone)]
pub struct DhcpClient {
    mac: [u8; 6],
    xid: u32,
}

impl DhcpClient {
    /// `xid` must be random per transaction (the I/O shell draws it).
    pub fn new(mac: [u8; 6], xid: u32) -> Self {
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
            &self.mac,
        );
        msg.set_opcode(Opcode::BootRequest)
            .set_htype(HType::Eth)
            .set_secs(secs)
            .set_flags(Flags::default().set_broadcast());
        let mut client_id = Vec::with_capacity(7);
        client_id.push(1); // hardware type: Ethernet
        client_id.extend_from_slice(&self.mac);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ClientIdentifier(client_id));
        opts.insert(DhcpOption::ClassIdentifier(VENDOR_CLASS.to_vec()));
        opts.insert(DhcpOption::MaxMessageSize(1500));
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

    /// True when `msg` is a server reply to this transaction and this MAC.
    fn is_ours(&self, msg: &Message) -> bool {
        msg.opcode() == Opcode::BootReply
            && msg.xid() == self.xid
            && msg.chaddr().get(..6) == Some(&self.mac[..])
    }

    /// Reads a DHCPOFFER; `None` for anything else.
    pub fn offer(&self, msg: &Message) -> Option<Offer> {
        if !self.is_ours(msg) || msg.opts().msg_type() != Some(MessageType::Offer) {
            return None;
        }
        let ip = msg.yiaddr();
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return None;
        }
        let server = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => msg.siaddr(),
        };
        if server.is_unspecified() {
            return None;
        }
        Some(Offer { ip, server })
    }

    /// Reads the answer to our REQUEST for `offer`.
    pub fn reply(&self, msg: &Message, offer: &Offer) -> Reply {
        if !self.is_ours(msg) {
            return Reply::Ignore;
        }
        let server = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
            _ => None,
        };
        if server.is_some_and(|s| s != offer.server) {
            return Reply::Ignore;
        }
        match msg.opts().msg_type() {
            Some(MessageType::Nak) => Reply::Nak,
            Some(MessageType::Ack) => {
                let ip = msg.yiaddr();
                if ip.is_unspecified() {
                    return Reply::Ignore;
                }
                Reply::Ack(lease_from(msg, ip, offer.server))
            }
            _ => Reply::Ignore,
        }
    }
}

fn lease_from(msg: &Message, ip: Ipv4Addr, server: Ipv4Addr) -> Lease {
    let opts = msg.opts();
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => mask_to_prefix(*mask),
        _ => None,
    }
    .unwrap_or_else(|| classful_prefix(ip));
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(list)) => list.iter().copied().find(|r| !r.is_unspecified()),
        _ => None,
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(s)) => Some(*s),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(list)) => list.clone(),
        _ => Vec::new(),
    };
    Lease {
        ip,
        prefix,
        router,
        server,
        lease_secs,
        dns,
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

/// Decodes bytes received on port 68.
pub fn decode(bytes: &[u8]) -> Result<Message, DhcpError> {
    Message::from_bytes(bytes).map_err(DhcpError::Decode)
}

/// Seconds to wait before DHCP round `attempt` (0-based) on all NICs: 1, 2, 4 … 30.
pub fn backoff_secs(attempt: u32) -> u64 {
    (1u64 << attempt.min(5)).min(30)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const YIADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 150);

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

    /// Encodes and decodes, as the wire would.
    fn wire(msg: &Message) -> Message {
        decode(&encode(msg).unwrap()).unwrap()
    }

    #[test]
    fn discover_carries_what_servers_need() {
        let client = DhcpClient::new(MAC, 0xdead_beef);
        let bytes = encode(&client.discover(3)).unwrap();
        assert!(bytes.len() >= 300, "padded to the BOOTP minimum");
        let msg = decode(&bytes).unwrap();
        assert_eq!(msg.opcode(), Opcode::BootRequest);
        assert_eq!(msg.xid(), 0xdead_beef);
        assert_eq!(msg.secs(), 3);
        assert!(msg.flags().broadcast());
        assert_eq!(&msg.chaddr()[..6], &MAC);
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
    }

    #[test]
    fn full_exchange_yields_a_lease() {
        let client = DhcpClient::new(MAC, 42);
        let offer = client
            .offer(&wire(&server_reply(42, &MAC, MessageType::Offer)))
            .unwrap();
        assert_eq!(
            offer,
            Offer {
                ip: YIADDR,
                server: SERVER
            }
        );
        let req = wire(&client.request(&offer, 1));
        assert_eq!(req.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(
            req.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(YIADDR))
        );
        assert_eq!(
            req.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        let reply = client.reply(&wire(&server_reply(42, &MAC, MessageType::Ack)), &offer);
        assert_eq!(
            reply,
            Reply::Ack(Lease {
                ip: YIADDR,
                prefix: 24,
                router: Some(SERVER),
                server: SERVER,
                lease_secs: Some(3600),
                dns: vec![SERVER],
            })
        );
        assert_eq!(
            client.reply(&server_reply(42, &MAC, MessageType::Nak), &offer),
            Reply::Nak
        );
    }

    #[test]
    fn foreign_replies_are_ignored() {
        let client = DhcpClient::new(MAC, 42);
        let other_mac = [0x52, 0x54, 0, 0, 0, 1];
        assert!(client
            .offer(&server_reply(43, &MAC, MessageType::Offer))
            .is_none());
        assert!(client
            .offer(&server_reply(42, &other_mac, MessageType::Offer))
            .is_none());
        assert!(client
            .offer(&server_reply(42, &MAC, MessageType::Ack))
            .is_none());
        // Our own broadcast DISCOVER looped back is a request, not an offer.
        assert!(client.offer(&wire(&client.discover(0))).is_none());
        let offer = Offer {
            ip: YIADDR,
            server: Ipv4Addr::new(10, 77, 0, 2),
        };
        assert_eq!(
            client.reply(&server_reply(42, &MAC, MessageType::Ack), &offer),
            Reply::Ignore,
            "an ACK from another server"
        );
        assert!(decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn masks_and_fallbacks() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        let client = DhcpClient::new(MAC, 7);
        let mut ack = server_reply(7, &MAC, MessageType::Ack);
        ack.opts_mut().remove(OptionCode::SubnetMask);
        ack.opts_mut().remove(OptionCode::Router);
        let offer = Offer {
            ip: YIADDR,
            server: SERVER,
        };
        match client.reply(&ack, &offer) {
            Reply::Ack(lease) => {
                assert_eq!(lease.prefix, 8);
                assert_eq!(lease.router, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(backoff_secs(0), 1);
        assert_eq!(backoff_secs(3), 8);
        assert_eq!(backoff_secs(40), 30);
    }
}
