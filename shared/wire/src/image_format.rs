//! Disk image formats as an image's first bytes tell them: raw, qcow2, zstd, xz. Pure
//! (no I/O): the prospector converts by them ([`ImageFormat::detect`],
//! [`expanded_size`], [`Qcow2Header::parse`]) and `substruct images add` checks a file
//! with them before it uploads anything ([`describe`]).

/// Bytes of an image's start that every function here needs at most.
pub const HEAD_BYTES: usize = 512;
/// qcow2: most clusters a converter tracks (one bit each, for the zero fill).
pub const QCOW2_MAX_CLUSTERS: u64 = 1 << 27;

/// An image's format, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
    Zstd,
    Xz,
}

pub const QCOW2_MAGIC: &[u8] = b"QFI\xfb";
pub const ZSTD_MAGIC: &[u8] = &[0x28, 0xB5, 0x2F, 0xFD];
pub const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];

impl ImageFormat {
    /// Pure: the format whose magic `head` starts with; anything else is raw.
    pub fn detect(head: &[u8]) -> ImageFormat {
        if head.starts_with(QCOW2_MAGIC) {
            ImageFormat::Qcow2
        } else if head.starts_with(ZSTD_MAGIC) {
            ImageFormat::Zstd
        } else if head.starts_with(XZ_MAGIC) {
            ImageFormat::Xz
        } else {
            ImageFormat::Raw
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Zstd => "zstd",
            ImageFormat::Xz => "xz",
        }
    }
}

/// Why a qcow2 header cannot be converted while it streams.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum Qcow2HeaderError {
    #[error("header: {0}")]
    Header(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// Pure: the size of the disk image inside, where the first bytes tell it: a raw image's
/// is `sent`, a qcow2's is in its header, a zstd frame's when its header carries it; an
/// xz stream's is only at its end (`None`).
pub fn expanded_size(format: ImageFormat, head: &[u8], sent: u64) -> Option<u64> {
    match format {
        ImageFormat::Raw => Some(sent),
        ImageFormat::Qcow2 => head.get(24..32).map(be64),
        ImageFormat::Zstd => zstd_content_size(head),
        ImageFormat::Xz => None,
    }
}

/// Pure: the Frame_Content_Size of the zstd frame at the start of `head`, if present.
fn zstd_content_size(head: &[u8]) -> Option<u64> {
    let fhd = *head.get(4)?;
    let single_segment = fhd & 0x20 != 0;
    let fcs_bytes = match fhd >> 6 {
        0 if single_segment => 1,
        0 => return None,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dict_bytes = [0, 1, 2, 4][usize::from(fhd & 3)];
    let at = 5 + usize::from(!single_segment) + dict_bytes;
    let field = head.get(at..at + fcs_bytes)?;
    let mut value = [0u8; 8];
    value[..fcs_bytes].copy_from_slice(field);
    let value = u64::from_le_bytes(value);
    Some(if fcs_bytes == 2 { value + 256 } else { value })
}

/// Pure: what the start of a disk image file of `size` bytes is, in words for the
/// operator (`qcow2, 556.0 MiB inside`), or why the prospector could not deploy it (a
/// qcow2 header it refuses). Raw is `raw`.
pub fn describe(head: &[u8], size: u64) -> Result<String, Qcow2HeaderError> {
    const MIB: f64 = 1024.0 * 1024.0;
    let format = ImageFormat::detect(head);
    if format == ImageFormat::Qcow2 {
        Qcow2Header::parse(head)?;
    }
    Ok(match (format, expanded_size(format, head, size)) {
        (ImageFormat::Raw, _) => "raw".to_owned(),
        (f, Some(inside)) => format!("{}, {:.1} MiB inside", f.name(), inside as f64 / MIB),
        (f, None) => format!("{}, size inside known once unpacked", f.name()),
    })
}

/// The big-endian `u64` at the start of `b`; 0 when `b` is shorter (callers slice first).
pub fn be64(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The big-endian `u32` at the start of `b`; 0 when `b` is shorter (callers slice first).
pub fn be32(b: &[u8]) -> u32 {
    b.get(..4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// A qcow2 header's fields a streaming converter uses, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u64,
    pub l1_offset: u64,
    pub header_len: u64,
    pub zstd_clusters: bool,
}

impl Qcow2Header {
    /// Pure: reads and checks the header at the start of `b` (at least 104 bytes for
    /// version 3, 72 for version 2).
    pub fn parse(b: &[u8]) -> Result<Qcow2Header, Qcow2HeaderError> {
        let h = |r: std::ops::Range<usize>| b.get(r).ok_or(Qcow2HeaderError::Header("too short"));
        if h(0..4)? != QCOW2_MAGIC {
            return Err(Qcow2HeaderError::Header("no QFI\\xfb magic"));
        }
        let version = be32(h(4..8)?);
        if !(2..=3).contains(&version) {
            return Err(Qcow2HeaderError::Unsupported("version other than 2 or 3"));
        }
        if be64(h(8..16)?) != 0 {
            return Err(Qcow2HeaderError::Unsupported("a backing file"));
        }
        let cluster_bits = be32(h(20..24)?);
        if !(9..=21).contains(&cluster_bits) {
            return Err(Qcow2HeaderError::Header("cluster_bits outside 9..=21"));
        }
        let size = be64(h(24..32)?);
        if be32(h(32..36)?) != 0 {
            return Err(Qcow2HeaderError::Unsupported("encryption"));
        }
        let l1_size = u64::from(be32(h(36..40)?));
        let l1_offset = be64(h(40..48)?);
        let cluster = 1u64 << cluster_bits;
        // Each L2 table maps cluster/8 clusters.
        let per_l1 = cluster * (cluster / 8);
        if size.div_ceil(per_l1) > l1_size {
            return Err(Qcow2HeaderError::Header(
                "the L1 table is too small for the virtual size",
            ));
        }
        if size.div_ceil(cluster) > QCOW2_MAX_CLUSTERS {
            return Err(Qcow2HeaderError::Unsupported(
                "more than 2^27 clusters (use a larger cluster size)",
            ));
        }
        if !l1_offset.is_multiple_of(cluster) || l1_offset == 0 {
            return Err(Qcow2HeaderError::Header(
                "the L1 table is not at a cluster boundary",
            ));
        }
        let (header_len, zstd_clusters) = if version == 2 {
            (72, false)
        } else {
            let incompatible = be64(h(72..80)?);
            // bit 0 dirty (refcounts only), bit 1 corrupt, bit 2 external data file,
            // bit 3 compression type field, bit 4 extended L2 entries.
            if incompatible & 0b10 != 0 {
                return Err(Qcow2HeaderError::Unsupported("an image marked corrupt"));
            }
            if incompatible & 0b100 != 0 {
                return Err(Qcow2HeaderError::Unsupported("an external data file"));
            }
            if incompatible & 0b1_0000 != 0 {
                return Err(Qcow2HeaderError::Unsupported("extended L2 entries"));
            }
            if incompatible & !0b1_1111 != 0 {
                return Err(Qcow2HeaderError::Unsupported(
                    "an unknown incompatible feature",
                ));
            }
            let header_len = u64::from(be32(h(100..104)?));
            if header_len < 104 || header_len > cluster {
                return Err(Qcow2HeaderError::Header(
                    "header length outside 104..=cluster size",
                ));
            }
            let zstd = if incompatible & 0b1000 != 0 {
                if header_len < 105 {
                    return Err(Qcow2HeaderError::Header(
                        "compression type bit without the field",
                    ));
                }
                match h(104..105)?[0] {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(Qcow2HeaderError::Unsupported(
                            "a compression type other than zlib or zstd",
                        ))
                    }
                }
            } else {
                false
            };
            (header_len, zstd)
        };
        Ok(Qcow2Header {
            cluster_bits,
            size,
            l1_size,
            l1_offset,
            header_len,
            zstd_clusters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 qcow2 header: 64 KiB clusters, `size` bytes, L1 at 196608.
    fn header(size: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEAD_BYTES];
        h[0..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[40..48].copy_from_slice(&196_608u64.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    proptest::proptest! {
        /// Any first bytes, any size: a description or a refusal, never a panic.
        #[test]
        fn any_head_is_described_without_panicking(
            magic in 0usize..4,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..HEAD_BYTES),
            size in proptest::prelude::any::<u64>(),
        ) {
            let mut head = [QCOW2_MAGIC, ZSTD_MAGIC, XZ_MAGIC, b""][magic].to_vec();
            head.extend_from_slice(&body);
            let _ = describe(&head, size);
            let _ = Qcow2Header::parse(&head);
        }
    }

    #[test]
    fn images_are_described_by_their_first_bytes() {
        let h = header(583_008_256);
        assert_eq!(
            describe(&h, 165_112_832).unwrap(),
            "qcow2, 556.0 MiB inside"
        );
        let mut backing = h.clone();
        backing[8..16].copy_from_slice(&512u64.to_be_bytes());
        assert_eq!(
            describe(&backing, 1).unwrap_err().to_string(),
            "unsupported: a backing file"
        );
        let mut z = vec![0x28, 0xB5, 0x2F, 0xFD, 0x80, 0x50];
        z.extend_from_slice(&(3u32 << 20).to_le_bytes());
        assert_eq!(describe(&z, 1000).unwrap(), "zstd, 3.0 MiB inside");
        assert_eq!(
            describe(b"\xfd7zXZ\0\0\x04", 1000).unwrap(),
            "xz, size inside known once unpacked"
        );
        assert_eq!(describe(&[0u8; 512], 1000).unwrap(), "raw");
        assert_eq!(describe(b"", 0).unwrap(), "raw");
    }

    #[test]
    fn zstd_content_size_fields_of_every_width() {
        // magic, then the frame header descriptor and its fields.
        let m = [0x28, 0xB5, 0x2F, 0xFD];
        let h = |rest: &[u8]| [&m[..], rest].concat();
        assert_eq!(
            zstd_content_size(&h(&[0x20, 200])),
            Some(200),
            "single segment, 1 byte"
        );
        assert_eq!(zstd_content_size(&h(&[0x00, 0x50])), None, "no size field");
        assert_eq!(
            zstd_content_size(&h(&[0x40, 0x50, 0x10, 0x00])),
            Some(256 + 16),
            "2 bytes, +256"
        );
        assert_eq!(
            zstd_content_size(&h(&[0x80, 0x50, 1, 0, 0, 1])),
            Some(0x0100_0001)
        );
        assert_eq!(
            zstd_content_size(&h(&[0xC1, 0x50, 9, 1, 2, 3, 4, 5, 6, 7, 8])),
            Some(0x0807_0605_0403_0201),
            "dictionary id byte skipped, 8 bytes"
        );
        assert_eq!(zstd_content_size(&h(&[0x80, 0x50, 1])), None, "truncated");
    }
}
