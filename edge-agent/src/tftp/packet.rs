//! TFTP packet codec (RFC 1350 with the option extensions of RFC 2347, 2348, 2349 and 7440).
//!
//! Pure functions over byte slices: no sockets, no clock. Every malformed packet decodes to a
//! [`PacketError`] naming why; nothing here panics on input.

use std::fmt;

/// Opcode of a read request.
pub const OP_RRQ: u16 = 1;
/// Opcode of a write request.
pub const OP_WRQ: u16 = 2;
/// Opcode of a data packet.
pub const OP_DATA: u16 = 3;
/// Opcode of an acknowledgement.
pub const OP_ACK: u16 = 4;
/// Opcode of an error packet.
pub const OP_ERROR: u16 = 5;
/// Opcode of an option acknowledgement (RFC 2347).
pub const OP_OACK: u16 = 6;

/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;
/// Block size without the `blksize` option.
pub const DEFAULT_BLKSIZE: u16 = 512;

/// TFTP error codes (RFC 1350 section 5, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not defined, see the message.
    NotDefined = 0,
    /// File not found.
    FileNotFound = 1,
    /// Access violation.
    AccessViolation = 2,
    /// Disk full or allocation exceeded.
    DiskFull = 3,
    /// Illegal TFTP operation.
    IllegalOperation = 4,
    /// Unknown transfer ID.
    UnknownTransferId = 5,
    /// File already exists.
    FileExists = 6,
    /// No such user.
    NoSuchUser = 7,
    /// The client terminates the transfer during option negotiation (RFC 2347).
    OptionsRejected = 8,
}

impl ErrorCode {
    /// The wire value.
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `octet`: bytes as they are.
    Octet,
    /// `netascii`: text with CR LF line ends.
    Netascii,
    /// `mail`: obsolete, never served.
    Mail,
}

/// The options of a request that this codec understands; unknown options are dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `blksize` (RFC 2348), only when within 8..=65464.
    pub blksize: Option<u16>,
    /// `tsize` (RFC 2349); 0 in a read request.
    pub tsize: Option<u64>,
    /// `timeout` in seconds (RFC 2349), only when within 1..=255.
    pub timeout: Option<u8>,
    /// `windowsize` (RFC 7440), only when within 1..=65535.
    pub windowsize: Option<u16>,
}

impl RequestOptions {
    /// Whether any option was asked for, i.e. whether the reply starts with an OACK.
    pub fn any(&self) -> bool {
        self.blksize.is_some()
            || self.tsize.is_some()
            || self.timeout.is_some()
            || self.windowsize.is_some()
    }
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The file name exactly as sent (UTF-8).
    pub filename: String,
    /// The transfer mode.
    pub mode: Mode,
    /// The recognised options.
    pub options: RequestOptions,
}

/// One decoded TFTP packet. `Data` borrows its payload from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request),
    /// Write request.
    Wrq(Request),
    /// Data block.
    Data {
        /// Block number (wraps from 65535 to 0).
        block: u16,
        /// Payload.
        data: &'a [u8],
    },
    /// Acknowledgement.
    Ack {
        /// Block number acknowledged.
        block: u16,
    },
    /// Error.
    Error {
        /// Error code.
        code: u16,
        /// Message (lossy UTF-8).
        message: String,
    },
    /// Option acknowledgement: name/value pairs as sent.
    Oack(Vec<(String, String)>),
}

/// Why a datagram is not a valid TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the fixed part of its type.
    #[error("packet too short: {len} bytes")]
    TooShort {
        /// Length received.
        len: usize,
    },
    /// Opcode outside 1..=6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field is not terminated by NUL.
    #[error("{0} is not NUL-terminated")]
    MissingNul(Field),
    /// A string field is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(Field),
    /// The file name is empty.
    #[error("empty file name")]
    EmptyFilename,
    /// The mode is not netascii, octet or mail.
    #[error("unknown transfer mode {0:?}")]
    UnknownMode(String),
}

/// A string field of a packet, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The file name of a request.
    Filename,
    /// The mode of a request.
    Mode,
    /// An option name.
    OptionName,
    /// An option value.
    OptionValue,
    /// The message of an error packet.
    ErrorMessage,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Filename => "file name",
            Field::Mode => "mode",
            Field::OptionName => "option name",
            Field::OptionValue => "option value",
            Field::ErrorMessage => "error message",
        })
    }
}

/// Decodes one datagram.
pub fn decode(buf: &[u8]) -> Result<Packet<'_>, PacketError> {
    let (op, rest) = split_u16(buf)?;
    match op {
        OP_RRQ => decode_request(rest).map(Packet::Rrq),
        OP_WRQ => decode_request(rest).map(Packet::Wrq),
        OP_DATA => {
            let (block, data) = split_u16(rest).map_err(|_| too_short(buf))?;
            Ok(Packet::Data { block, data })
        }
        OP_ACK => {
            let (block, _) = split_u16(rest).map_err(|_| too_short(buf))?;
            Ok(Packet::Ack { block })
        }
        OP_ERROR => {
            let (code, rest) = split_u16(rest).map_err(|_| too_short(buf))?;
            // Many clients omit the final NUL; accept the message up to NUL or the end.
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let message = String::from_utf8_lossy(&rest[..end]).into_owned();
            Ok(Packet::Error { code, message })
        }
        OP_OACK => {
            let mut pairs = Vec::new();
            let mut rest = rest;
            while !rest.is_empty() {
                let (name, after) = take_str(rest, Field::OptionName)?;
                let (value, after) = take_str(after, Field::OptionValue)?;
                pairs.push((name.to_owned(), value.to_owned()));
                rest = after;
            }
            Ok(Packet::Oack(pairs))
        }
        other => Err(PacketError::UnknownOpcode(other)),
    }
}

fn too_short(buf: &[u8]) -> PacketError {
    PacketError::TooShort { len: buf.len() }
}

fn split_u16(buf: &[u8]) -> Result<(u16, &[u8]), PacketError> {
    match buf {
        [hi, lo, rest @ ..] => Ok((u16::from_be_bytes([*hi, *lo]), rest)),
        _ => Err(too_short(buf)),
    }
}

fn take_str(buf: &[u8], field: Field) -> Result<(&str, &[u8]), PacketError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(PacketError::MissingNul(field))?;
    let s = std::str::from_utf8(&buf[..nul]).map_err(|_| PacketError::NotUtf8(field))?;
    Ok((s, &buf[nul + 1..]))
}

fn decode_request(buf: &[u8]) -> Result<Request, PacketError> {
    let (filename, rest) = take_str(buf, Field::Filename)?;
    if filename.is_empty() {
        return Err(PacketError::EmptyFilename);
    }
    let (mode, mut rest) = take_str(rest, Field::Mode)?;
    let mode = if mode.eq_ignore_ascii_case("octet") {
        Mode::Octet
    } else if mode.eq_ignore_ascii_case("netascii") {
        Mode::Netascii
    } else if mode.eq_ignore_ascii_case("mail") {
        Mode::Mail
    } else {
        return Err(PacketError::UnknownMode(mode.to_owned()));
    };
    let mut options = RequestOptions::default();
    // Some ROMs pad requests with NULs after the last option: stop at the first empty name.
    while !rest.is_empty() && rest[0] != 0 {
        let (name, after) = take_str(rest, Field::OptionName)?;
        let (value, after) = take_str(after, Field::OptionValue)?;
        rest = after;
        // RFC 2347: an option the server does not understand, or a bad value, is ignored.
        if name.eq_ignore_ascii_case("blksize") {
            if let Ok(v) = value.parse::<u16>() {
                if (MIN_BLKSIZE..=MAX_BLKSIZE).contains(&v) && options.blksize.is_none() {
                    options.blksize = Some(v);
                }
            }
        } else if name.eq_ignore_ascii_case("tsize") {
            if let Ok(v) = value.parse::<u64>() {
                options.tsize.get_or_insert(v);
            }
        } else if name.eq_ignore_ascii_case("timeout") {
            if let Ok(v) = value.parse::<u8>() {
                if v >= 1 {
                    options.timeout.get_or_insert(v);
                }
            }
        } else if name.eq_ignore_ascii_case("windowsize") {
            if let Ok(v) = value.parse::<u16>() {
                if v >= 1 {
                    options.windowsize.get_or_insert(v);
                }
            }
        }
    }
    Ok(Request {
        filename: filename.to_owned(),
        mode,
        options,
    })
}

/// Appends a DATA header (opcode and block) to `out`; the caller appends the payload.
pub fn encode_data_header(block: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

/// Encodes a DATA packet.
pub fn encode_data(block: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + data.len());
    encode_data_header(block, &mut out);
    out.extend_from_slice(data);
    out
}

/// Encodes an ACK packet.
pub fn encode_ack(block: u16) -> [u8; 4] {
    let [a, b] = OP_ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// Encodes an ERROR packet. NUL bytes in `message` are dropped.
pub fn encode_error(code: u16, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
    out
}

/// Encodes an OACK packet from name/value pairs.
pub fn encode_oack(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&OP_OACK.to_be_bytes());
    for (name, value) in pairs {
        out.extend(name.bytes().filter(|&b| b != 0));
        out.push(0);
        out.extend(value.bytes().filter(|&b| b != 0));
        out.push(0);
    }
    out
}

/// Encodes a read or write request (used by test clients and the benchmark).
pub fn encode_request(op: u16, filename: &str, mode: &str, options: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + filename.len());
    out.extend_from_slice(&op.to_be_bytes());
    out.extend(filename.bytes().filter(|&b| b != 0));
    out.push(0);
    out.extend(mode.bytes().filter(|&b| b != 0));
    out.push(0);
    for (name, value) in options {
        out.extend(name.bytes().filter(|&b| b != 0));
        out.push(0);
        out.extend(value.bytes().filter(|&b| b != 0));
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pxe_rrq_with_options() {
        let buf = encode_request(
            OP_RRQ,
            "lpxelinux.0",
            "octet",
            &[
                ("tsize", "0".into()),
                ("blksize", "1456".into()),
                ("windowsize", "4".into()),
                ("timeout", "3".into()),
                ("x-unknown", "1".into()),
            ],
        );
        let Packet::Rrq(req) = decode(&buf).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(req.filename, "lpxelinux.0");
        assert_eq!(req.mode, Mode::Octet);
        assert_eq!(
            req.options,
            RequestOptions {
                blksize: Some(1456),
                tsize: Some(0),
                timeout: Some(3),
                windowsize: Some(4),
            }
        );
    }

    #[test]
    fn ignores_out_of_range_option_values() {
        let buf = encode_request(
            OP_RRQ,
            "f",
            "NETASCII",
            &[
                ("blksize", "7".into()),
                ("timeout", "0".into()),
                ("windowsize", "0".into()),
                ("tsize", "x".into()),
            ],
        );
        let Packet::Rrq(req) = decode(&buf).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(req.mode, Mode::Netascii);
        assert!(!req.options.any());
    }

    #[test]
    fn accepts_nul_padding_after_options() {
        let mut buf = encode_request(OP_RRQ, "f", "octet", &[("tsize", "0".into())]);
        buf.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(decode(&buf), Ok(Packet::Rrq(_))));
    }

    #[test]
    fn malformed_packets_name_the_reason() {
        assert_eq!(decode(&[]), Err(PacketError::TooShort { len: 0 }));
        assert_eq!(decode(&[0]), Err(PacketError::TooShort { len: 1 }));
        assert_eq!(decode(&[0, 9]), Err(PacketError::UnknownOpcode(9)));
        assert_eq!(decode(&[0, 0]), Err(PacketError::UnknownOpcode(0)));
        assert_eq!(
            decode(b"\0\x01file"),
            Err(PacketError::MissingNul(Field::Filename))
        );
        assert_eq!(
            decode(b"\0\x01file\0octet"),
            Err(PacketError::MissingNul(Field::Mode))
        );
        assert_eq!(decode(b"\0\x01\0octet\0"), Err(PacketError::EmptyFilename));
        assert_eq!(
            decode(b"\0\x01f\0bogus\0"),
            Err(PacketError::UnknownMode("bogus".into()))
        );
        assert_eq!(
            decode(b"\0\x01f\0octet\0tsize"),
            Err(PacketError::MissingNul(Field::OptionName))
        );
        assert_eq!(
            decode(b"\0\x01f\0octet\0tsize\0"),
            Err(PacketError::MissingNul(Field::OptionValue))
        );
        assert_eq!(
            decode(b"\0\x01\xff\0octet\0"),
            Err(PacketError::NotUtf8(Field::Filename))
        );
        assert_eq!(decode(&[0, 3, 1]), Err(PacketError::TooShort { len: 3 }));
        assert_eq!(decode(&[0, 4]), Err(PacketError::TooShort { len: 2 }));
        assert_eq!(decode(&[0, 5, 0]), Err(PacketError::TooShort { len: 3 }));
    }

    #[test]
    fn round_trips_data_ack_error_oack() {
        let data = encode_data(65535, b"abc");
        assert_eq!(
            decode(&data),
            Ok(Packet::Data {
                block: 65535,
                data: b"abc"
            })
        );
        assert_eq!(decode(&encode_ack(7)), Ok(Packet::Ack { block: 7 }));
        assert_eq!(
            decode(&encode_error(8, "options\0 rejected")),
            Ok(Packet::Error {
                code: 8,
                message: "options rejected".into()
            })
        );
        let oack = encode_oack(&[("tsize", "10".into()), ("blksize", "1468".into())]);
        assert_eq!(
            decode(&oack),
            Ok(Packet::Oack(vec![
                ("tsize".into(), "10".into()),
                ("blksize".into(), "1468".into())
            ]))
        );
    }

    #[test]
    fn error_without_trailing_nul_is_accepted() {
        assert_eq!(
            decode(b"\0\x05\0\x08abort"),
            Ok(Packet::Error {
                code: 8,
                message: "abort".into()
            })
        );
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(buf in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode(&buf);
        }

        #[test]
        fn decode_never_panics_on_requests(
            op in 1u16..=6,
            tail in proptest::collection::vec(proptest::sample::select(vec![0u8, b'a', b'1', 0xff, b'o']), 0..80),
        ) {
            let mut buf = op.to_be_bytes().to_vec();
            buf.extend_from_slice(&tail);
            let _ = decode(&buf);
        }
    }
}
