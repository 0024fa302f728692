//! DHCPv4 packets (RFC 2131, options RFC 2132) read by hand, every byte bounds-checked:
//! the fixed BOOTP header and the options area. Both ends of the provisioning network read
//! with it: the edge's DHCP server its requests, the prospector's DHCP client its replies.
//!
//! dhcproto still *builds* packets, but never reads untrusted ones: 0.15 slices `chaddr`
//! by the packet's own `hlen` (a packet with `hlen = 255` panics whoever calls
//! `chaddr()`), silently drops every option after a bad one and keeps trailing NULs.
//! Here only Ethernet (`htype` 1, `hlen` 6) is accepted, and a malformed packet is a
//! [`PacketError`], never a panic. No I/O.

use std::net::Ipv4Addr;

use crate::Mac;

/// The DHCP magic cookie that ends the BOOTP header.
pub const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// The fixed BOOTP header, up to the magic cookie.
pub const HEADER_LEN: usize = 236;
/// Where the options area starts (after the header and the magic cookie); also the
/// shortest DHCP message.
pub const OPTIONS_AT: usize = HEADER_LEN + MAGIC.len();
/// Where the `sname` field (64 bytes) starts: an options area when option 52 says so.
pub const SNAME_AT: usize = 44;
/// Where the `file` field (128 bytes) starts: an options area when option 52 says so.
pub const FILE_AT: usize = 108;

/// The BOOTP `op` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// 1: client to server.
    BootRequest,
    /// 2: server to client.
    BootReply,
}

impl Op {
    /// The byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Op::BootRequest => 1,
            Op::BootReply => 2,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::BootRequest => "BOOTREQUEST",
            Op::BootReply => "BOOTREPLY",
        })
    }
}

/// Why bytes are not a DHCPv4 packet we read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("truncated packet: {len} bytes, a DHCP message needs at least 240")]
    Truncated { len: usize },
    #[error("op {op} is not a {expected}")]
    WrongOp { op: u8, expected: Op },
    #[error("unsupported hardware address (htype {htype}, hlen {hlen}); only Ethernet")]
    UnsupportedHardware { htype: u8, hlen: u8 },
    #[error("bad magic cookie")]
    BadMagic,
    #[error("option {code} at offset {offset} runs past the end of the packet")]
    OptionOverrun { code: u8, offset: usize },
}

/// A DHCPv4 packet whose fixed header has been checked: long enough, the expected `op`,
/// Ethernet addresses, the magic cookie. Borrowed from the datagram; reading a field
/// cannot fail. The options are read with [`Packet::options`].
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    header: &'a [u8; HEADER_LEN],
    options: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Checks, in this order, the length, `op`, `htype`/`hlen` and the magic cookie.
    /// Never panics, whatever `buf` holds.
    pub fn parse(buf: &'a [u8], expected: Op) -> Result<Self, PacketError> {
        let truncated = PacketError::Truncated { len: buf.len() };
        let (header, rest) = buf.split_first_chunk::<HEADER_LEN>().ok_or(truncated)?;
        let (magic, options) = rest
            .split_first_chunk::<4>()
            .ok_or(PacketError::Truncated { len: buf.len() })?;
        let [op, htype, hlen, ..] = *header;
        if op != expected.code() {
            return Err(PacketError::WrongOp { op, expected });
        }
        if htype != 1 || hlen != 6 {
            return Err(PacketError::UnsupportedHardware { htype, hlen });
        }
        if *magic != MAGIC {
            return Err(PacketError::BadMagic);
        }
        Ok(Self { header, options })
    }

    /// `N` bytes of the header at `at`; every caller passes a constant inside the header.
    fn field<const N: usize>(&self, at: usize) -> [u8; N] {
        self.header
            .get(at..at + N)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; N])
    }

    fn ip(&self, at: usize) -> Ipv4Addr {
        Ipv4Addr::from(self.field::<4>(at))
    }

    /// `hops` (relay agents increment it).
    pub fn hops(&self) -> u8 {
        self.header[3]
    }

    /// The transaction id.
    pub fn xid(&self) -> u32 {
        u32::from_be_bytes(self.field(4))
    }

    /// Seconds since the client began.
    pub fn secs(&self) -> u16 {
        u16::from_be_bytes(self.field(8))
    }

    /// The flags (bit 15: broadcast).
    pub fn flags(&self) -> u16 {
        u16::from_be_bytes(self.field(10))
    }

    /// `ciaddr`: the client's current address.
    pub fn ciaddr(&self) -> Ipv4Addr {
        self.ip(12)
    }

    /// `yiaddr`: the address a server gives.
    pub fn yiaddr(&self) -> Ipv4Addr {
        self.ip(16)
    }

    /// `siaddr`: the next server.
    pub fn siaddr(&self) -> Ipv4Addr {
        self.ip(20)
    }

    /// `giaddr`: the relay agent.
    pub fn giaddr(&self) -> Ipv4Addr {
        self.ip(24)
    }

    /// The client's MAC: the first 6 bytes of `chaddr` (`hlen` is 6, checked by [`Packet::parse`]).
    pub fn mac(&self) -> Mac {
        Mac(self.field(28))
    }

    /// The 64-byte `sname` field, raw.
    pub fn sname(&self) -> &'a [u8] {
        self.header.get(SNAME_AT..FILE_AT).unwrap_or_default()
    }

    /// The 128-byte `file` field, raw.
    pub fn file(&self) -> &'a [u8] {
        self.header.get(FILE_AT..).unwrap_or_default()
    }

    /// The options after the magic cookie.
    pub fn options(&self) -> OptionIter<'a> {
        OptionIter::new(self.options, OPTIONS_AT)
    }
}

/// Iterates `(code, data)` over a raw options area, stopping at End (255) and
/// skipping Pad (0). `base` is the area's offset in the packet, for error messages.
/// An option whose length runs past the area is one [`PacketError::OptionOverrun`],
/// after which the iterator ends.
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    done: bool,
}

impl<'a> OptionIter<'a> {
    /// Options in `buf`, which starts at offset `base` of its packet.
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Self {
            buf,
            pos: 0,
            base,
            done: false,
        }
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = Result<(u8, &'a [u8]), PacketError>;
    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let Some(&code) = self.buf.get(self.pos) else {
                self.done = true;
                return None;
            };
            match code {
                0 => self.pos += 1,
                255 => {
                    self.done = true;
                    return None;
                }
                _ => {
                    let offset = self.base + self.pos;
                    let data = self.buf.get(self.pos + 1).and_then(|&len| {
                        let start = self.pos + 2;
                        self.buf.get(start..start + usize::from(len))
                    });
                    let Some(data) = data else {
                        self.done = true;
                        return Some(Err(PacketError::OptionOverrun { code, offset }));
                    };
                    self.pos += 2 + data.len();
                    return Some(Ok((code, data)));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A BOOTREPLY header for `mac`, xid 0x01020304, yiaddr 10.0.0.5, then `options`.
    fn packet(op: u8, options: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; OPTIONS_AT];
        b[0] = op;
        b[1] = 1;
        b[2] = 6;
        b[3] = 2;
        b[4..8].copy_from_slice(&[1, 2, 3, 4]);
        b[8..10].copy_from_slice(&[0, 7]);
        b[10..12].copy_from_slice(&[0x80, 0]);
        b[12..16].copy_from_slice(&[10, 0, 0, 4]);
        b[16..20].copy_from_slice(&[10, 0, 0, 5]);
        b[20..24].copy_from_slice(&[10, 0, 0, 1]);
        b[24..28].copy_from_slice(&[10, 0, 0, 254]);
        b[28..34].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        b[SNAME_AT] = b's';
        b[FILE_AT] = b'f';
        b[HEADER_LEN..OPTIONS_AT].copy_from_slice(&MAGIC);
        b.extend_from_slice(options);
        b
    }

    #[test]
    fn reads_every_header_field() {
        let b = packet(2, &[53, 1, 2, 255]);
        let p = Packet::parse(&b, Op::BootReply).unwrap();
        assert_eq!(p.hops(), 2);
        assert_eq!(p.xid(), 0x0102_0304);
        assert_eq!(p.secs(), 7);
        assert_eq!(p.flags(), 0x8000);
        assert_eq!(p.ciaddr(), Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(p.yiaddr(), Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(p.siaddr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.giaddr(), Ipv4Addr::new(10, 0, 0, 254));
        assert_eq!(p.mac(), Mac([0x52, 0x54, 0, 1, 2, 3]));
        assert_eq!((p.sname().len(), p.sname()[0]), (64, b's'));
        assert_eq!((p.file().len(), p.file()[0]), (128, b'f'));
        let opts: Vec<_> = p.options().collect();
        assert_eq!(opts, [Ok((53, &[2u8][..]))]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let good = packet(2, &[255]);
        for len in [0, 1, HEADER_LEN - 1, HEADER_LEN, OPTIONS_AT - 1] {
            assert_eq!(
                Packet::parse(&good[..len], Op::BootReply).unwrap_err(),
                PacketError::Truncated { len }
            );
        }
        assert_eq!(
            Packet::parse(&good, Op::BootRequest).unwrap_err(),
            PacketError::WrongOp {
                op: 2,
                expected: Op::BootRequest
            }
        );
        for (htype, hlen) in [(1, 255), (1, 16), (1, 0), (6, 6)] {
            let mut b = good.clone();
            (b[1], b[2]) = (htype, hlen);
            assert_eq!(
                Packet::parse(&b, Op::BootReply).unwrap_err(),
                PacketError::UnsupportedHardware { htype, hlen }
            );
        }
        let mut b = good.clone();
        b[HEADER_LEN] = 0;
        assert_eq!(
            Packet::parse(&b, Op::BootReply).unwrap_err(),
            PacketError::BadMagic
        );
    }

    #[test]
    fn options_are_bounded() {
        fn opts(area: &[u8]) -> Vec<Result<(u8, &[u8]), PacketError>> {
            OptionIter::new(area, OPTIONS_AT).collect()
        }
        // Pad skipped, End stops, a missing End is fine.
        assert_eq!(opts(&[0, 0, 1, 0, 255, 3, 1]), [Ok((1, &[][..]))]);
        assert_eq!(opts(&[3, 1, 9]), [Ok((3, &[9u8][..]))]);
        // A length byte past the end, a value past the end: one error, then nothing.
        assert_eq!(
            opts(&[1, 0, 60]),
            [
                Ok((1, &[][..])),
                Err(PacketError::OptionOverrun {
                    code: 60,
                    offset: OPTIONS_AT + 2
                })
            ]
        );
        assert_eq!(
            opts(&[60, 255, 1, 2]),
            [Err(PacketError::OptionOverrun {
                code: 60,
                offset: OPTIONS_AT
            })]
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            for op in [Op::BootRequest, Op::BootReply] {
                if let Ok(p) = Packet::parse(&bytes, op) {
                    let _ = (p.xid(), p.mac(), p.yiaddr(), p.sname(), p.file());
                    for (_, data) in p.options().flatten() {
                        prop_assert!(data.len() <= bytes.len());
                    }
                }
            }
        }

        #[test]
        fn any_options_area_ends(area in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let p = packet(2, &area);
            let packet = Packet::parse(&p, Op::BootReply).unwrap();
            let mut seen = 0usize;
            for item in packet.options() {
                match item {
                    Ok((_, data)) => seen += 2 + data.len(),
                    Err(_) => break,
                }
            }
            prop_assert!(seen <= area.len());
        }
    }
}
