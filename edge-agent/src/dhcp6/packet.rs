//! DHCPv6 messages (RFC 8415) as the edge reads and writes them: our own strict parser
//! and encoder for the few options a netboot server needs. Every length is checked
//! against what is left of the packet; anything malformed is a [`DropReason6`] naming
//! what is wrong, never a panic. (dhcproto's v6 decoder was not used: its v4 sibling
//! drops the options after a bad length silently, and a server must know.)

use std::net::{Ipv6Addr, SocketAddrV6};

use substruct_wire::Mac;

/// Message types (RFC 8415 §7.3).
pub mod msg {
    pub const SOLICIT: u8 = 1;
    pub const ADVERTISE: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const CONFIRM: u8 = 4;
    pub const RENEW: u8 = 5;
    pub const REBIND: u8 = 6;
    pub const REPLY: u8 = 7;
    pub const RELEASE: u8 = 8;
    pub const DECLINE: u8 = 9;
    pub const RECONFIGURE: u8 = 10;
    pub const INFORMATION_REQUEST: u8 = 11;
    pub const RELAY_FORW: u8 = 12;
    pub const RELAY_REPL: u8 = 13;
}

/// Option codes (RFC 8415 §21, RFC 5970).
pub mod opt {
    pub const CLIENTID: u16 = 1;
    pub const SERVERID: u16 = 2;
    pub const IA_NA: u16 = 3;
    pub const IAADDR: u16 = 5;
    pub const ORO: u16 = 6;
    pub const PREFERENCE: u16 = 7;
    pub const STATUS_CODE: u16 = 13;
    pub const USER_CLASS: u16 = 15;
    pub const VENDOR_CLASS: u16 = 16;
    pub const BOOTFILE_URL: u16 = 59;
    pub const CLIENT_ARCH_TYPE: u16 = 61;
}

/// Status codes (RFC 8415 §21.13).
pub mod status {
    pub const SUCCESS: u16 = 0;
    pub const NO_ADDRS_AVAIL: u16 = 2;
    pub const NO_BINDING: u16 = 3;
    pub const NOT_ON_LINK: u16 = 4;
}

/// The most IA_NA options one message may carry (a machine asks for one per
/// interface; more is someone probing the pool).
pub const MAX_IA_NA: usize = 4;
/// The most addresses inside one IA_NA we look at.
pub const MAX_IAADDR: usize = 4;
/// A DUID is at most 128 bytes plus its 2-byte type (RFC 8415 §11.1).
pub const MAX_DUID: usize = 130;

/// One IA_NA of a request: its IAID and the addresses the client names in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IaNa {
    pub iaid: u32,
    pub addrs: Vec<Ipv6Addr>,
}

/// A parsed client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request6 {
    pub msg_type: u8,
    pub xid: [u8; 3],
    pub client_id: Option<Vec<u8>>,
    pub server_id: Option<Vec<u8>>,
    pub ia_na: Vec<IaNa>,
    /// Option 61's first architecture (RFC 5970): 7 EFI BC, 9 EFI x64, 16 x64 HTTP...
    pub arch: Option<u16>,
    /// Option 16: the enterprise number and the class strings.
    pub vendor_class: Option<(u32, Vec<Vec<u8>>)>,
    /// Option 15: the class strings (iPXE sends `iPXE`).
    pub user_class: Vec<Vec<u8>>,
    /// Where it came from (a link-local address and the client port, normally 546).
    pub source: SocketAddrV6,
}

impl Request6 {
    /// iPXE (user class `iPXE`).
    pub fn is_ipxe(&self) -> bool {
        self.user_class.iter().any(|c| c == b"iPXE")
    }

    /// A UEFI HTTP-boot client: vendor class `HTTPClient…` or an HTTP architecture.
    pub fn is_http_client(&self) -> bool {
        self.vendor_class
            .as_ref()
            .is_some_and(|(_, classes)| classes.iter().any(|c| c.starts_with(b"HTTPClient")))
            || matches!(self.arch, Some(15 | 16 | 19))
    }

    /// The machine's MAC: from an EUI-64 link-local source address (what PXE firmware
    /// and iPXE use), else from a DUID-LLT or DUID-LL of Ethernet type.
    pub fn mac(&self) -> Option<Mac> {
        mac_from_eui64(self.source.ip()).or_else(|| mac_from_duid(self.client_id.as_deref()?))
    }
}

/// Why a datagram is not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason6 {
    #[error("{0} bytes: shorter than a DHCPv6 header")]
    TooShort(usize),
    #[error("relayed DHCPv6 (relay-forward) is not served")]
    Relayed,
    #[error("message type {0} is sent by servers, not clients")]
    NotFromClient(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("option {code} at byte {at}: {what}")]
    BadOption {
        code: u16,
        at: usize,
        what: &'static str,
    },
    #[error("option {0} appears twice")]
    Duplicate(u16),
    #[error("more than {MAX_IA_NA} IA_NA options")]
    TooManyIas,
    #[error("message type {0} without a client identifier")]
    NoClientId(u8),
    #[error("message type {0} without a server identifier")]
    NoServerId(u8),
    #[error("message type {0} must not carry a server identifier")]
    UnexpectedServerId(u8),
    #[error("for another server")]
    OtherServer,
    #[error("a confirm without addresses")]
    NothingToConfirm,
}

/// Parses one client message. Strict: every option's length must fit what is left,
/// a client or server identifier must be 1..=130 bytes and appear once.
pub fn parse(buf: &[u8], source: SocketAddrV6) -> Result<Request6, DropReason6> {
    if buf.len() < 4 {
        return Err(DropReason6::TooShort(buf.len()));
    }
    let msg_type = buf[0];
    match msg_type {
        msg::RELAY_FORW => return Err(DropReason6::Relayed),
        msg::ADVERTISE | msg::REPLY | msg::RECONFIGURE | msg::RELAY_REPL => {
            return Err(DropReason6::NotFromClient(msg_type))
        }
        msg::SOLICIT
        | msg::REQUEST
        | msg::CONFIRM
        | msg::RENEW
        | msg::REBIND
        | msg::RELEASE
        | msg::DECLINE
        | msg::INFORMATION_REQUEST => {}
        other => return Err(DropReason6::UnknownType(other)),
    }
    let mut req = Request6 {
        msg_type,
        xid: [buf[1], buf[2], buf[3]],
        client_id: None,
        server_id: None,
        ia_na: Vec::new(),
        arch: None,
        vendor_class: None,
        user_class: Vec::new(),
        source,
    };
    for o in Options::new(&buf[4..], 4) {
        let (code, at, data) = o?;
        let bad = |what| DropReason6::BadOption { code, at, what };
        match code {
            opt::CLIENTID | opt::SERVERID => {
                if data.is_empty() || data.len() > MAX_DUID {
                    return Err(bad("a DUID must be 1 to 130 bytes"));
                }
                let slot = if code == opt::CLIENTID {
                    &mut req.client_id
                } else {
                    &mut req.server_id
                };
                if slot.replace(data.to_vec()).is_some() {
                    return Err(DropReason6::Duplicate(code));
                }
            }
            opt::IA_NA => {
                if req.ia_na.len() == MAX_IA_NA {
                    return Err(DropReason6::TooManyIas);
                }
                if data.len() < 12 {
                    return Err(bad("an IA_NA is at least 12 bytes"));
                }
                let iaid = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let mut addrs = Vec::new();
                for inner in Options::new(&data[12..], at + 16) {
                    let (icode, iat, idata) = inner?;
                    if icode != opt::IAADDR {
                        continue;
                    }
                    if idata.len() < 24 {
                        return Err(DropReason6::BadOption {
                            code: icode,
                            at: iat,
                            what: "an IAADDR is at least 24 bytes",
                        });
                    }
                    if addrs.len() < MAX_IAADDR {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(&idata[..16]);
                        addrs.push(Ipv6Addr::from(a));
                    }
                }
                req.ia_na.push(IaNa { iaid, addrs });
            }
            opt::CLIENT_ARCH_TYPE => {
                if data.len() < 2 || data.len() % 2 != 0 {
                    return Err(bad("architecture types are 2 bytes each"));
                }
                req.arch = Some(u16::from_be_bytes([data[0], data[1]]));
            }
            opt::VENDOR_CLASS => {
                if data.len() < 4 {
                    return Err(bad("a vendor class starts with a 4-byte enterprise number"));
                }
                let enterprise = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let classes = length_prefixed(&data[4..])
                    .ok_or_else(|| bad("class data runs past the option"))?;
                req.vendor_class = Some((enterprise, classes));
            }
            opt::USER_CLASS => {
                req.user_class =
                    length_prefixed(data).ok_or_else(|| bad("class data runs past the option"))?;
            }
            _ => {}
        }
    }
    // RFC 8415 §16: which messages need which identifiers.
    let needs_client = msg_type != msg::INFORMATION_REQUEST;
    if needs_client && req.client_id.is_none() {
        return Err(DropReason6::NoClientId(msg_type));
    }
    match msg_type {
        msg::REQUEST | msg::RENEW | msg::RELEASE | msg::DECLINE if req.server_id.is_none() => {
            return Err(DropReason6::NoServerId(msg_type))
        }
        msg::SOLICIT | msg::CONFIRM | msg::REBIND if req.server_id.is_some() => {
            return Err(DropReason6::UnexpectedServerId(msg_type))
        }
        _ => {}
    }
    Ok(req)
}

/// `[len u16 | bytes]*`, or `None` when an item runs past the end.
fn length_prefixed(mut data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let len = usize::from(u16::from_be_bytes([*data.first()?, *data.get(1)?]));
        let item = data.get(2..2 + len)?;
        out.push(item.to_vec());
        data = &data[2 + len..];
    }
    Some(out)
}

/// Iterates over `code | len | data` options; `base` is the offset of `buf` in the
/// packet (for error messages).
struct Options<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    failed: bool,
}

impl<'a> Options<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self {
            buf,
            pos: 0,
            base,
            failed: false,
        }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<(u16, usize, &'a [u8]), DropReason6>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let at = self.base + self.pos;
        let rest = &self.buf[self.pos..];
        let Some(head) = rest.get(..4) else {
            self.failed = true;
            return Some(Err(DropReason6::BadOption {
                code: 0,
                at,
                what: "an option header is 4 bytes",
            }));
        };
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let Some(data) = rest.get(4..4 + len) else {
            self.failed = true;
            return Some(Err(DropReason6::BadOption {
                code,
                at,
                what: "its length runs past the packet",
            }));
        };
        self.pos += 4 + len;
        Some(Ok((code, at, data)))
    }
}

/// fe80::XXXX:XXff:feXX:XXXX → the MAC (universal/local bit flipped back).
pub fn mac_from_eui64(addr: &Ipv6Addr) -> Option<Mac> {
    let o = addr.octets();
    if o[..8] != [0xfe, 0x80, 0, 0, 0, 0, 0, 0] || o[11] != 0xff || o[12] != 0xfe {
        return None;
    }
    Some(Mac([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]]))
}

/// DUID-LLT (type 1) or DUID-LL (type 3) with hardware type 1 (Ethernet) → the MAC.
pub fn mac_from_duid(duid: &[u8]) -> Option<Mac> {
    let kind = u16::from_be_bytes([*duid.first()?, *duid.get(1)?]);
    let hw = u16::from_be_bytes([*duid.get(2)?, *duid.get(3)?]);
    let mac = match (kind, hw) {
        (1, 1) if duid.len() == 14 => &duid[8..14],
        (3, 1) if duid.len() == 10 => &duid[4..10],
        _ => return None,
    };
    let mut m = [0u8; 6];
    m.copy_from_slice(mac);
    Some(Mac(m))
}

/// Builds a server message.
#[derive(Debug, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(msg_type: u8, xid: [u8; 3]) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.push(msg_type);
        buf.extend_from_slice(&xid);
        Self { buf }
    }

    /// Appends one option (`data` must be under 64 KiB; ours are tiny).
    pub fn option(&mut self, code: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&code.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf
            .extend_from_slice(&data[..usize::from(len).min(data.len())]);
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// The body of a status-code option.
pub fn status_body(code: u16, message: &str) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(message.as_bytes());
    b
}

/// The body of an IA_NA holding one address (or a status, without address).
pub fn ia_na_body(iaid: u32, t1: u32, t2: u32, inner: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(&iaid.to_be_bytes());
    b.extend_from_slice(&t1.to_be_bytes());
    b.extend_from_slice(&t2.to_be_bytes());
    for (code, data) in inner {
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(&u16::try_from(data.len()).unwrap_or(u16::MAX).to_be_bytes());
        b.extend_from_slice(data);
    }
    b
}

/// The body of an IAADDR.
pub fn iaaddr_body(addr: Ipv6Addr, preferred: u32, valid: u32) -> Vec<u8> {
    let mut b = addr.octets().to_vec();
    b.extend_from_slice(&preferred.to_be_bytes());
    b.extend_from_slice(&valid.to_be_bytes());
    b
}
