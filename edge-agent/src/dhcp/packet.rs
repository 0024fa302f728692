//! Raw DHCPv4 requests in, encoded replies out. Requests are read with the
//! bounds-checked reader the prospector's client shares ([`substruct_wire::dhcp`]),
//! not by dhcproto: dhcproto 0.15 silently drops every option after a bad one, can
//! panic on some option lengths (debug assertions, `hlen` > 16) and keeps trailing
//! NULs. Every byte is checked; a bad packet becomes a [`DropReason`].
//! Replies are built with dhcproto and finished here (option 82 echo, 300-byte pad).

use std::net::{Ipv4Addr, SocketAddr};

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Encodable, Encoder};
use substruct_wire::dhcp::{Op, OptionIter, Packet, PacketError, OPTIONS_AT};
use substruct_wire::Mac;

use crate::metrics::{DhcpMessage, DhcpReply, DhcpResult};

/// The BOOTP minimum size of a reply (RFC 1542); dhcproto does not pad.
pub const MIN_REPLY_LEN: usize = 300;

/// Why a packet got no reply. Malformed packets, and deliberate silences.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Not a DHCP request the shared reader can read (length, op, hardware, magic,
    /// an option running past the end).
    #[error(transparent)]
    Malformed(#[from] PacketError),
    #[error("client MAC {0} is not a usable unicast address")]
    BadMac(Mac),
    #[error("option {code} has invalid length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("no option 53 (message type)")]
    MissingMessageType,
    #[error("message type {0} is not one a server answers")]
    UnexpectedMessageType(u8),
    #[error("request names server {0}, not us")]
    OtherServer(Ipv4Addr),
    #[error("no configured subnet for a request via {0}")]
    NoSubnet(Ipv4Addr),
    #[error("no free address in subnet {0}")]
    PoolExhausted(ipnet::Ipv4Net),
    #[error("{0} needs option {1}")]
    MissingOption(&'static str, u8),
    #[error("proxy mode answers only PXE clients")]
    ProxyNotPxe,
    #[error("proxy mode ignores {0:?} on port {1}")]
    ProxyIgnored(MessageType, u16),
    #[error("proxy mode: boot intent says no boot file")]
    ProxyNoBootFile,
    #[error("lease released")]
    Released,
    #[error("release for an address the client does not hold")]
    ReleaseUnknown,
    #[error("address {0} declined by the client, quarantined")]
    Declined(Ipv4Addr),
    #[error("DECLINE of {0}, which was neither offered nor leased to the client")]
    DeclineNotTheClients(Ipv4Addr),
    #[error("relayed request with giaddr {giaddr} from {from}, not an allowed relay")]
    RelayNotAllowed { giaddr: Ipv4Addr, from: Ipv4Addr },
    #[error("INFORM without ciaddr")]
    InformWithoutCiaddr,
    #[error("REQUEST in an unknown state (no requested address, no ciaddr)")]
    RequestWithoutAddress,
    #[error("reply could not be encoded: {0}")]
    Encode(String),
}

impl DropReason {
    /// Malformed or hostile input (worth a warning), as opposed to protocol routine.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            DropReason::Malformed(_)
                | DropReason::BadMac(_)
                | DropReason::BadOptionLength { .. }
                | DropReason::MissingMessageType
                | DropReason::UnexpectedMessageType(_)
                | DropReason::DeclineNotTheClients(_)
                | DropReason::RelayNotAllowed { .. }
        )
    }
}

impl DropReason {
    /// What the drop counts as in the metrics.
    pub fn result(&self) -> DhcpResult {
        match self {
            DropReason::Malformed(_)
            | DropReason::BadMac(_)
            | DropReason::BadOptionLength { .. }
            | DropReason::MissingMessageType
            | DropReason::UnexpectedMessageType(_)
            | DropReason::DeclineNotTheClients(_)
            | DropReason::RelayNotAllowed { .. } => DhcpResult::Refused,
            DropReason::Released | DropReason::Declined(_) => DhcpResult::Accepted,
            DropReason::PoolExhausted(_) => DhcpResult::Exhausted,
            DropReason::Encode(_) => DhcpResult::Error,
            DropReason::OtherServer(_)
            | DropReason::NoSubnet(_)
            | DropReason::MissingOption(..)
            | DropReason::ProxyNotPxe
            | DropReason::ProxyIgnored(..)
            | DropReason::ProxyNoBootFile
            | DropReason::ReleaseUnknown
            | DropReason::InformWithoutCiaddr
            | DropReason::RequestWithoutAddress => DhcpResult::Ignored,
        }
    }
}

/// The metrics' name for a request's message type.
pub fn message_label(t: MessageType) -> DhcpMessage {
    match t {
        MessageType::Discover => DhcpMessage::Discover,
        MessageType::Request => DhcpMessage::Request,
        MessageType::Release => DhcpMessage::Release,
        MessageType::Decline => DhcpMessage::Decline,
        MessageType::Inform => DhcpMessage::Inform,
        _ => DhcpMessage::Other,
    }
}

/// The metrics' name for a reply's message type (`None`: not a reply type).
pub fn reply_label(t: MessageType) -> Option<DhcpReply> {
    match t {
        MessageType::Offer => Some(DhcpReply::Offer),
        MessageType::Ack => Some(DhcpReply::Ack),
        MessageType::Nak => Some(DhcpReply::Nak),
        _ => None,
    }
}

/// A parsed DHCPv4 request: the header and the options a server acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub msg_type: MessageType,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub hops: u8,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub mac: Mac,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 55.
    pub param_list: Vec<u8>,
    /// Option 60, raw.
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77, raw (iPXE sends 4 raw bytes `iPXE`, RFC 3004 framing also seen).
    pub user_class: Option<Vec<u8>>,
    /// Option 93, first architecture.
    pub arch: Option<u16>,
    /// Option 97, raw (type byte + 16-byte GUID).
    pub client_guid: Option<Vec<u8>>,
    /// Option 175 (iPXE encapsulated options), raw.
    pub ipxe_options: Option<Vec<u8>>,
    /// Option 82 (relay agent information), raw, echoed unchanged.
    pub relay_info: Option<Vec<u8>>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Where the datagram came from.
    pub source: SocketAddr,
    /// The local port it arrived on (67, or 4011 in proxy mode).
    pub local_port: u16,
}

impl Request {
    /// Parses and validates one datagram. Never panics.
    pub fn parse(buf: &[u8], source: SocketAddr, local_port: u16) -> Result<Self, DropReason> {
        let packet = Packet::parse(buf, Op::BootRequest)?;
        let mac = packet.mac();
        if !mac.is_usable() {
            return Err(DropReason::BadMac(mac));
        }
        let mut req = Request {
            msg_type: MessageType::Unknown(0),
            xid: packet.xid(),
            secs: packet.secs(),
            flags: packet.flags(),
            hops: packet.hops(),
            ciaddr: packet.ciaddr(),
            giaddr: packet.giaddr(),
            mac,
            requested_ip: None,
            server_id: None,
            param_list: Vec::new(),
            vendor_class: None,
            user_class: None,
            arch: None,
            client_guid: None,
            ipxe_options: None,
            relay_info: None,
            hostname: None,
            source,
            local_port,
        };
        let mut msg_type = None;
        for opt in packet.options() {
            let (code, data) = opt?;
            let len = data.len();
            let bad = || DropReason::BadOptionLength { code, len };
            let ip4 = || -> Result<Ipv4Addr, DropReason> {
                let b: [u8; 4] = data.try_into().map_err(|_| bad())?;
                Ok(Ipv4Addr::from(b))
            };
            let append = |slot: &mut Option<Vec<u8>>| {
                slot.get_or_insert_with(Vec::new).extend_from_slice(data)
            };
            match code {
                53 => {
                    if len != 1 {
                        return Err(bad());
                    }
                    msg_type = Some(data[0]);
                }
                50 => req.requested_ip = Some(ip4()?),
                54 => req.server_id = Some(ip4()?),
                55 => req.param_list.extend_from_slice(data),
                60 => append(&mut req.vendor_class),
                77 => append(&mut req.user_class),
                93 => {
                    if len < 2 || len % 2 != 0 {
                        return Err(bad());
                    }
                    if req.arch.is_none() {
                        req.arch = Some(u16::from_be_bytes([data[0], data[1]]));
                    }
                }
                97 => append(&mut req.client_guid),
                175 => append(&mut req.ipxe_options),
                82 => append(&mut req.relay_info),
                12 => {
                    req.hostname = Some(String::from_utf8_lossy(data).into_owned());
                }
                _ => {}
            }
        }
        let t = msg_type.ok_or(DropReason::MissingMessageType)?;
        req.msg_type = match t {
            1 => MessageType::Discover,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            other => return Err(DropReason::UnexpectedMessageType(other)),
        };
        Ok(req)
    }

    /// True when the request came through a relay agent.
    pub fn is_relayed(&self) -> bool {
        !self.giaddr.is_unspecified()
    }

    /// The broadcast bit of `flags`.
    pub fn wants_broadcast(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// Option 60 starts with `PXEClient`.
    pub fn is_pxe_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with(b"PXEClient"))
    }

    /// Option 60 starts with `HTTPClient`.
    pub fn is_http_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with(b"HTTPClient"))
    }

    /// iPXE itself: option 175 present, or user class `iPXE` (raw, as QEMU's ROM
    /// sends it, or RFC 3004 length-framed).
    pub fn is_ipxe(&self) -> bool {
        if self.ipxe_options.is_some() {
            return true;
        }
        let Some(uc) = self.user_class.as_deref() else {
            return false;
        };
        if uc == b"iPXE" {
            return true;
        }
        // RFC 3004: a list of (len, bytes)
        let mut rest = uc;
        while let Some((&n, tail)) = rest.split_first() {
            let n = n as usize;
            if n == 0 || tail.len() < n {
                return false;
            }
            if &tail[..n] == b"iPXE" {
                return true;
            }
            rest = &tail[n..];
        }
        false
    }

    /// Option 97 as an SMBIOS-style UUID string (first three fields byte-swapped), for logs.
    pub fn guid_string(&self) -> Option<String> {
        let g = self.client_guid.as_deref()?;
        let b: &[u8; 16] = g.get(1..17)?.try_into().ok()?;
        Some(format!(
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        ))
    }
}

/// A reply ready to encode: a dhcproto message plus the raw option 82 to echo
/// (kept apart: dhcproto would re-encode it and, as an unknown option, twice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyPacket {
    pub message: Message,
    pub relay_info: Option<Vec<u8>>,
}

impl ReplyPacket {
    /// Encodes, appends option 82 last, ends the options and pads to 300 bytes.
    pub fn encode(&self) -> Result<Vec<u8>, DropReason> {
        let mut buf = Vec::with_capacity(MIN_REPLY_LEN + 64);
        let mut e = Encoder::new(&mut buf);
        self.message
            .encode(&mut e)
            .map_err(|err| DropReason::Encode(err.to_string()))?;
        // dhcproto ends a non-empty option list with End: take it off, add ours.
        if buf.len() > OPTIONS_AT && buf.last() == Some(&255) {
            buf.pop();
        }
        if let Some(ri) = &self.relay_info {
            for chunk in ri.chunks(255) {
                buf.push(82);
                buf.push(chunk.len() as u8);
                buf.extend_from_slice(chunk);
            }
        }
        buf.push(255);
        if buf.len() < MIN_REPLY_LEN {
            buf.resize(MIN_REPLY_LEN, 0);
        }
        Ok(buf)
    }
}

/// Finds option `code` in an encoded reply (tests and logs): concatenated data.
pub fn find_option(packet: &[u8], code: u8) -> Option<Vec<u8>> {
    let opts = packet.get(OPTIONS_AT..)?;
    let mut out: Option<Vec<u8>> = None;
    for item in OptionIter::new(opts, OPTIONS_AT) {
        let (c, data) = item.ok()?;
        if c == code {
            out.get_or_insert_with(Vec::new).extend_from_slice(data);
        }
    }
    out
}
