//! Disk image formats, converted while they stream: raw, zstd, xz and qcow2 (its
//! clusters plain, deflate- or zstd-compressed).
//!
//! The format is read from the image's first bytes ([`Format::detect`]), never from its
//! name. Every converter reads its input once, front to back, and writes the disk
//! image's bytes at their offsets through [`Disk`], refusing any write past the disk's
//! end: nothing is buffered whole and nothing seeks back in the input.
//!
//! qcow2 is a random-access format; it streams because the converter reads its tables
//! in file order: the header names the L1 table, each L1 entry an L2 table, each L2
//! entry a data cluster, all queued by their offset in the file and taken in that order.
//! A file where some cluster sits before the table that maps it cannot be read that way
//! and is refused ([`Qcow2Error::NotStreamable`]); `qemu-img convert -O qcow2 [-c]`
//! writes each table before what it maps. Clusters no table maps (and v3 "zero"
//! clusters) are written as zeros at the end, so the disk holds exactly the image.
//! Backing files, encryption, external data files, extended L2 entries are refused.
//!
//! The input is untrusted until its sha256 is checked after the last byte (by the
//! caller, on the bytes as sent): every size and offset here is bounded before use,
//! and memory stays bounded whatever the header says ([`MAX_PENDING`], [`QCOW2_MAX_CLUSTERS`]).

use substruct_wire::image_format::{be32, be64};
pub use substruct_wire::image_format::{
    expanded_size, ImageFormat as Format, Qcow2Header, Qcow2HeaderError, QCOW2_MAX_CLUSTERS,
};

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufRead, Read};

/// Output bytes per write.
const WRITE_CHUNK: usize = 1 << 20;
/// qcow2: most table entries queued at once (a well-ordered file needs one L2 table's).
pub const MAX_PENDING: usize = 1 << 21;
/// xz: the most memory a stream's dictionary may ask for (KiB): `xz -9` needs 65 MiB.
pub const XZ_MEMORY_LIMIT_KIB: u32 = 160 * 1024;

/// Why an image could not be converted onto the disk.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading the image")]
    Read(#[source] io::Error),
    #[error("disk: writing at byte {offset} failed")]
    Write {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// `offset`: the first byte past the disk's end that the image has data for.
    #[error("the image expands past the disk's end ({disk_size} bytes): {format} data for byte {offset}")]
    PastDiskEnd {
        format: &'static str,
        offset: u64,
        disk_size: u64,
    },
    #[error("disk: fsync failed")]
    Sync(#[source] io::Error),
    #[error("zstd")]
    Zstd(#[source] io::Error),
    #[error("xz")]
    Xz(#[source] io::Error),
    #[error(transparent)]
    Qcow2(Qcow2Error),
}

/// What is wrong with a qcow2 image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Qcow2Error {
    #[error(transparent)]
    Header(Qcow2HeaderError),
    #[error("not streamable: the {what} at byte {at} of the file comes before a table that maps it (reading at byte {pos}); rewrite it with `qemu-img convert -O qcow2`")]
    NotStreamable {
        what: &'static str,
        at: u64,
        pos: u64,
    },
    #[error("{what} entry {index} is invalid: {why}")]
    BadEntry {
        what: &'static str,
        index: u64,
        why: &'static str,
    },
    #[error("the compressed cluster at byte {at} does not decompress to one cluster")]
    BadCompressedCluster { at: u64 },
    #[error("more than {MAX_PENDING} table entries pending at once")]
    TooManyPending,
    #[error("the file ends at byte {at}, before the {what} it maps there")]
    Truncated { what: &'static str, at: u64 },
}

/// Where the image's bytes go (a block device; a `Vec` in tests).
pub trait Disk {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
}

impl Disk for std::fs::File {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
}

impl Disk for Vec<u8> {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + buf.len();
        if self.len() < end {
            self.resize(end, 0);
        }
        self[start..end].copy_from_slice(buf);
        Ok(())
    }
}

/// A [`Disk`] that refuses bytes past `size`.
struct Limit<'a, D: Disk + ?Sized> {
    disk: &'a mut D,
    size: u64,
    format: Format,
}

impl<D: Disk + ?Sized> Limit<'_, D> {
    fn write(&mut self, buf: &[u8], offset: u64) -> Result<(), UnpackError> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.size {
            return Err(UnpackError::PastDiskEnd {
                format: self.format.name(),
                offset: offset.max(self.size),
                disk_size: self.size,
            });
        }
        self.disk
            .write_at(buf, offset)
            .map_err(|source| UnpackError::Write { offset, source })
    }

    fn zeros(&mut self, mut offset: u64, len: u64) -> Result<(), UnpackError> {
        let zeros = vec![0u8; WRITE_CHUNK.min(usize::try_from(len).unwrap_or(WRITE_CHUNK))];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeros.len() as u64) as usize;
            self.write(&zeros[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// Converts `input` (all of it) onto `disk`, never past `disk_size`, returning the
/// image's size (the bytes decoded, or a qcow2's virtual size). Reads `input` to its
/// end even where the format ends earlier, so every byte sent is read (and hashed by
/// the caller).
pub fn unpack<D: Disk + ?Sized>(
    format: Format,
    input: &mut dyn BufRead,
    disk: &mut D,
    disk_size: u64,
) -> Result<u64, UnpackError> {
    let disk = &mut Limit {
        disk,
        size: disk_size,
        format,
    };
    let size = match format {
        Format::Raw => {
            let mut offset = 0;
            pour(input, disk, &mut offset, UnpackError::Read)?;
            offset
        }
        Format::Zstd => zstd(input, disk)?,
        Format::Xz => xz(input, disk)?,
        Format::Qcow2 => qcow2(input, disk)?,
    };
    io::copy(input, &mut io::sink()).map_err(UnpackError::Read)?;
    Ok(size)
}

/// Writes what `input` yields at `*offset` onwards, advancing it; `err` names the
/// format of a failed read.
fn pour<D: Disk + ?Sized>(
    input: &mut dyn Read,
    disk: &mut Limit<'_, D>,
    offset: &mut u64,
    err: fn(io::Error) -> UnpackError,
) -> Result<(), UnpackError> {
    let mut buf = vec![0u8; WRITE_CHUNK];
    loop {
        let n = read_full(input, &mut buf).map_err(err)?;
        if n == 0 {
            return Ok(());
        }
        disk.write(&buf[..n], *offset)?;
        *offset += n as u64;
    }
}

fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// zstd: one frame after another (skippable frames skipped) until the input ends.
fn zstd<D: Disk + ?Sized>(
    input: &mut dyn BufRead,
    disk: &mut Limit<'_, D>,
) -> Result<u64, UnpackError> {
    let mut offset = 0u64;
    loop {
        let head = input.fill_buf().map_err(UnpackError::Read)?;
        if head.is_empty() {
            return Ok(offset);
        }
        let mut magic = [0u8; 4];
        input.read_exact(&mut magic).map_err(UnpackError::Zstd)?;
        if u32::from_le_bytes(magic) & 0xFFFF_FFF0 == 0x184D_2A50 {
            let mut len = [0u8; 4];
            input.read_exact(&mut len).map_err(UnpackError::Zstd)?;
            let len = u64::from(u32::from_le_bytes(len));
            let skipped =
                io::copy(&mut input.take(len), &mut io::sink()).map_err(UnpackError::Read)?;
            if skipped != len {
                return Err(UnpackError::Zstd(io::ErrorKind::UnexpectedEof.into()));
            }
            continue;
        }
        let mut frame = ruzstd::decoding::StreamingDecoder::new((&magic[..]).chain(&mut *input))
            .map_err(|e| UnpackError::Zstd(io::Error::other(e)))?;
        pour(&mut frame, disk, &mut offset, UnpackError::Zstd)?;
    }
}

/// xz: every stream in the input (concatenated streams too), the dictionary bounded by
/// [`XZ_MEMORY_LIMIT_KIB`] before it is allocated.
fn xz<D: Disk + ?Sized>(
    input: &mut dyn BufRead,
    disk: &mut Limit<'_, D>,
) -> Result<u64, UnpackError> {
    let mut reader = lzma_rust2::XzReader::new_mem_limit(input, true, XZ_MEMORY_LIMIT_KIB);
    let mut offset = 0;
    pour(&mut reader, disk, &mut offset, UnpackError::Xz)?;
    Ok(offset)
}

/// An input read front to back, with its position.
struct Stream<'a> {
    input: &'a mut dyn BufRead,
    pos: u64,
}

impl Stream<'_> {
    /// Reads and drops bytes up to `at`; `what` at `at` must not be behind.
    fn skip_to(&mut self, at: u64, what: &'static str) -> Result<(), UnpackError> {
        if at < self.pos {
            return Err(UnpackError::Qcow2(Qcow2Error::NotStreamable {
                what,
                at,
                pos: self.pos,
            }));
        }
        let want = at - self.pos;
        let got = io::copy(&mut (&mut self.input).take(want), &mut io::sink())
            .map_err(UnpackError::Read)?;
        self.pos += got;
        if got < want {
            return Err(UnpackError::Qcow2(Qcow2Error::Truncated { what, at }));
        }
        Ok(())
    }

    /// Fills `buf` as far as the input goes.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, UnpackError> {
        let n = read_full(&mut self.input, buf).map_err(UnpackError::Read)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), UnpackError> {
        let at = self.pos;
        if self.read_up_to(buf)? < buf.len() {
            return Err(UnpackError::Qcow2(Qcow2Error::Truncated { what, at }));
        }
        Ok(())
    }
}

/// A table entry waiting for its place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    /// L2 table number `index` (its first guest cluster is `index * cluster/8`).
    L2 { index: u64 },
    /// A plain data cluster for guest cluster `guest`.
    Data { guest: u64 },
    /// A compressed cluster of at most `len` bytes for guest cluster `guest`.
    Compressed { guest: u64, len: u64 },
}

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

fn qcow2<D: Disk + ?Sized>(
    input: &mut dyn BufRead,
    disk: &mut Limit<'_, D>,
) -> Result<u64, UnpackError> {
    let q = |e| UnpackError::Qcow2(e);
    let mut s = Stream { input, pos: 0 };
    let mut head = vec![0u8; 104];
    let n = s.read_up_to(&mut head)?;
    head.truncate(n);
    let version3 = head.get(4..8).map(be32) == Some(3);
    if version3 {
        // The compression type byte sits after the 104 fixed bytes.
        let len = head.get(100..104).map(be32).unwrap_or(0);
        if len > 104 {
            let mut b = [0u8; 1];
            s.read_up_to(&mut b)?;
            head.push(b[0]);
        }
    }
    let hdr = Qcow2Header::parse(&head).map_err(|e| q(Qcow2Error::Header(e)))?;
    let cluster = 1u64 << hdr.cluster_bits;
    let entries_per_l2 = cluster / 8;
    let clusters = hdr.size.div_ceil(cluster);
    // The L1 entries that cover the virtual size (the table may be longer).
    let l1_used = clusters.div_ceil(entries_per_l2);
    if l1_used > MAX_PENDING as u64 {
        return Err(q(Qcow2Error::TooManyPending));
    }
    if hdr.size > disk.size {
        return Err(UnpackError::PastDiskEnd {
            format: "qcow2",
            offset: disk.size,
            disk_size: disk.size,
        });
    }
    s.skip_to(hdr.l1_offset, "L1 table")?;
    let mut queue: BinaryHeap<Reverse<(u64, Pending)>> = BinaryHeap::new();
    let mut l1 = vec![0u8; (l1_used * 8) as usize];
    s.read_exact(&mut l1, "L1 table")?;
    for (index, e) in l1.chunks_exact(8).map(be64).enumerate() {
        let at = e & OFFSET_MASK;
        if at == 0 {
            continue;
        }
        if !at.is_multiple_of(cluster) || e & 0x1FF != 0 {
            return Err(q(Qcow2Error::BadEntry {
                what: "L1",
                index: index as u64,
                why: "L2 table not at a cluster boundary",
            }));
        }
        queue.push(Reverse((
            at,
            Pending::L2 {
                index: index as u64,
            },
        )));
    }
    // Guest clusters written (the rest are zero-filled at the end).
    let mut written = vec![0u64; clusters.div_ceil(64) as usize];
    let mut l2 = vec![0u8; cluster as usize];
    let mut data = vec![0u8; cluster as usize];
    let mut packed = Vec::with_capacity(cluster as usize + 512);
    let x = 62 - (hdr.cluster_bits - 8);
    while let Some(Reverse((at, item))) = queue.pop() {
        match item {
            Pending::L2 { index } => {
                s.skip_to(at, "L2 table")?;
                s.read_exact(&mut l2, "L2 table")?;
                let first = index * entries_per_l2;
                for (i, e) in l2.chunks_exact(8).map(be64).enumerate() {
                    let guest = first + i as u64;
                    if guest >= clusters || e == 0 {
                        continue;
                    }
                    let bad = |why| {
                        q(Qcow2Error::BadEntry {
                            what: "L2",
                            index: guest,
                            why,
                        })
                    };
                    let pending = if e & (1 << 62) != 0 {
                        let offset = e & ((1u64 << x) - 1);
                        let sectors = ((e & ((1u64 << 62) - 1)) >> x) + 1;
                        let len = (sectors * 512).saturating_sub(offset & 511);
                        if offset == 0 || len == 0 {
                            return Err(bad("compressed cluster without data"));
                        }
                        (offset, Pending::Compressed { guest, len })
                    } else {
                        let offset = e & OFFSET_MASK;
                        if e & 1 != 0 || offset == 0 {
                            // v3 "reads as zeros", or unallocated: zero-filled below.
                            continue;
                        }
                        if !offset.is_multiple_of(cluster) || e & 0x1FE != 0 {
                            return Err(bad("data cluster not at a cluster boundary"));
                        }
                        (offset, Pending::Data { guest })
                    };
                    if queue.len() >= MAX_PENDING {
                        return Err(q(Qcow2Error::TooManyPending));
                    }
                    queue.push(Reverse(pending));
                }
            }
            Pending::Data { guest } => {
                s.skip_to(at, "data cluster")?;
                let out = guest * cluster;
                let len = cluster.min(hdr.size - out) as usize;
                s.read_exact(&mut data[..len], "data cluster")?;
                disk.write(&data[..len], out)?;
                written[(guest / 64) as usize] |= 1 << (guest % 64);
            }
            Pending::Compressed { guest, len } => {
                s.skip_to(at, "compressed cluster")?;
                // The length is rounded up to sectors: it may run into the next entry's
                // bytes or past the file's end, which the compressed stream never needs.
                let next = queue.peek().map_or(u64::MAX, |Reverse((n, _))| *n);
                let len = len.min(next.saturating_sub(at)).min(cluster + 512);
                packed.resize(len as usize, 0);
                let n = s.read_up_to(&mut packed)?;
                packed.truncate(n);
                let out = guest * cluster;
                let want = cluster.min(hdr.size - out) as usize;
                let bad = || q(Qcow2Error::BadCompressedCluster { at });
                if hdr.zstd_clusters {
                    let mut frame =
                        ruzstd::decoding::StreamingDecoder::new(&packed[..]).map_err(|_| bad())?;
                    let got = read_full(&mut frame, &mut data).map_err(|_| bad())?;
                    if got < want {
                        return Err(bad());
                    }
                } else {
                    // As qemu does: the cluster is whole once its bytes are out, whether
                    // or not the stream's end marker was reached.
                    let inflated = match miniz_oxide::inflate::decompress_to_vec_with_limit(
                        &packed,
                        cluster as usize,
                    ) {
                        Ok(out) => out,
                        Err(e) if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
                            e.output
                        }
                        Err(_) => return Err(bad()),
                    };
                    if inflated.len() < want {
                        return Err(bad());
                    }
                    data[..want].copy_from_slice(&inflated[..want]);
                }
                disk.write(&data[..want], out)?;
                written[(guest / 64) as usize] |= 1 << (guest % 64);
            }
        }
    }
    // Zero-fill the clusters no table gave data for, in runs.
    let mut guest = 0;
    while guest < clusters {
        if written[(guest / 64) as usize] & (1 << (guest % 64)) != 0 {
            guest += 1;
            continue;
        }
        let start = guest;
        while guest < clusters && written[(guest / 64) as usize] & (1 << (guest % 64)) == 0 {
            guest += 1;
        }
        let from = start * cluster;
        let to = (guest * cluster).min(hdr.size);
        disk.zeros(from, to - from)?;
    }
    Ok(hdr.size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use substruct_wire::image_format::{QCOW2_MAGIC, XZ_MAGIC, ZSTD_MAGIC};

    const C: u64 = 512; // cluster_bits 9: the smallest clusters, small fixtures

    /// `len` bytes of a pattern that does not compress away.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn run(format: Format, input: &[u8], disk_size: u64) -> Result<(u64, Vec<u8>), UnpackError> {
        let mut disk = Vec::new();
        let size = unpack(format, &mut &input[..], &mut disk, disk_size)?;
        Ok((size, disk))
    }

    /// What a qcow2 fixture's guest clusters hold.
    #[derive(Clone)]
    enum Guest {
        Unallocated,
        Plain(Vec<u8>),
        Deflate(Vec<u8>),
        Zeros,
    }

    /// A version 3 qcow2 with 512-byte clusters, laid out as qemu-img does (header, L1,
    /// then each L2 table before its data), or with `data_first` the data before the L2.
    fn qcow2_file(size: u64, guests: &[Guest], data_first: bool) -> Vec<u8> {
        let per_l2 = C / 8;
        let l2_count = size.div_ceil(C).div_ceil(per_l2);
        let mut f = vec![0u8; C as usize];
        f[0..4].copy_from_slice(QCOW2_MAGIC);
        f[4..8].copy_from_slice(&3u32.to_be_bytes());
        f[20..24].copy_from_slice(&9u32.to_be_bytes());
        f[24..32].copy_from_slice(&size.to_be_bytes());
        f[36..40].copy_from_slice(&(l2_count as u32).to_be_bytes());
        f[40..48].copy_from_slice(&C.to_be_bytes());
        f[100..104].copy_from_slice(&104u32.to_be_bytes());
        let l1_at = f.len();
        f.resize(f.len() + C as usize, 0);
        let put =
            |f: &mut Vec<u8>, at: usize, v: u64| f[at..at + 8].copy_from_slice(&v.to_be_bytes());
        for (t, chunk) in guests.chunks(per_l2 as usize).enumerate() {
            let mut entries = Vec::new();
            let l2_pos = if data_first {
                None
            } else {
                f.resize(f.len().next_multiple_of(C as usize), 0);
                let at = f.len() as u64;
                f.resize(f.len() + C as usize, 0);
                Some(at)
            };
            for g in chunk {
                let at = f.len() as u64;
                match g {
                    Guest::Unallocated => entries.push(0),
                    Guest::Zeros => entries.push(1),
                    Guest::Plain(b) => {
                        f.resize(f.len().next_multiple_of(C as usize), 0);
                        let at = f.len() as u64;
                        f.extend_from_slice(b);
                        f.resize(f.len().next_multiple_of(C as usize), 0);
                        entries.push(at | 1 << 63);
                    }
                    Guest::Deflate(b) => {
                        let z = miniz_oxide::deflate::compress_to_vec(b, 6);
                        f.extend_from_slice(&z);
                        let x = 62 - (9 - 8);
                        let sectors = ((at % 512) + z.len() as u64).div_ceil(512) - 1;
                        entries.push(1 << 62 | sectors << x | at);
                    }
                }
            }
            let l2_at = l2_pos.unwrap_or_else(|| {
                f.resize(f.len().next_multiple_of(C as usize), 0);
                let at = f.len() as u64;
                f.resize(f.len() + C as usize, 0);
                at
            });
            for (i, e) in entries.iter().enumerate() {
                put(&mut f, l2_at as usize + i * 8, *e);
            }
            put(&mut f, l1_at + t * 8, l2_at);
        }
        f
    }

    #[test]
    fn formats_are_told_by_their_magic() {
        assert_eq!(Format::detect(b"QFI\xfb\0\0\0\x03"), Format::Qcow2);
        assert_eq!(Format::detect(&[0x28, 0xB5, 0x2F, 0xFD, 0]), Format::Zstd);
        assert_eq!(Format::detect(b"\xfd7zXZ\0\0\x04"), Format::Xz);
        assert_eq!(
            Format::detect(b"\xfd7zXZ"),
            Format::Raw,
            "a truncated magic"
        );
        assert_eq!(Format::detect(&[0u8; 512]), Format::Raw);
        assert_eq!(Format::detect(b""), Format::Raw);
    }

    #[test]
    fn raw_is_copied_and_bounded_by_the_disk() {
        let img = noise(3 * WRITE_CHUNK + 17, 1);
        let (size, disk) = run(Format::Raw, &img, img.len() as u64).unwrap();
        assert_eq!((size, disk == img), (img.len() as u64, true));
        let e = run(Format::Raw, &img, 1 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the image expands past the disk's end (1048576 bytes): raw data for byte 1048576"
        );
    }

    #[test]
    fn zstd_frames_are_decoded_one_after_another_and_sized_from_their_header() {
        let a = noise(200_000, 2);
        let b = vec![7u8; 300_000];
        let za =
            ruzstd::encoding::compress_to_vec(&a[..], ruzstd::encoding::CompressionLevel::Fastest);
        let zb =
            ruzstd::encoding::compress_to_vec(&b[..], ruzstd::encoding::CompressionLevel::Fastest);
        assert_eq!(Format::detect(&za), Format::Zstd);
        // Two frames with a skippable frame between them.
        let mut input = za.clone();
        input.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
        input.extend_from_slice(&3u32.to_le_bytes());
        input.extend_from_slice(b"abc");
        input.extend_from_slice(&zb);
        let (size, disk) = run(Format::Zstd, &input, 1 << 30).unwrap();
        assert_eq!(size, 500_000);
        assert!(disk[..200_000] == a[..] && disk[200_000..] == b[..]);
        // Damaged: a clear error, nothing past what decoded.
        let mut bad = za.clone();
        bad.truncate(za.len() / 2);
        assert!(matches!(
            run(Format::Zstd, &bad, 1 << 30),
            Err(UnpackError::Zstd(_))
        ));
        let mut junk = za;
        junk.extend_from_slice(b"trailing junk");
        assert!(matches!(
            run(Format::Zstd, &junk, 1 << 30),
            Err(UnpackError::Zstd(_))
        ));
    }

    #[test]
    fn xz_garbage_and_truncation_are_refused() {
        let e = run(Format::Xz, b"\xfd7zXZ\0garbage garbage", 1 << 20).unwrap_err();
        assert!(matches!(e, UnpackError::Xz(_)), "{e:?}");
        assert_eq!(expanded_size(Format::Xz, b"\xfd7zXZ\0", 100), None);
    }

    #[test]
    fn qcow2_plain_compressed_zero_and_unallocated_clusters_land_in_place() {
        let c = C as usize;
        let guests = [
            Guest::Plain(noise(c, 3)),
            Guest::Unallocated,
            Guest::Deflate(noise(c, 4)),
            Guest::Deflate(vec![9; c]),
            Guest::Zeros,
            Guest::Plain(noise(c, 5)),
        ];
        // The last cluster is only partly inside the virtual size; 70 clusters need two L2s.
        let mut many: Vec<Guest> = guests.to_vec();
        many.extend((0..64).map(|i| Guest::Deflate(noise(c, 10 + i))));
        let size = many.len() as u64 * C - 100;
        let file = qcow2_file(size, &many, false);
        assert_eq!(
            expanded_size(Format::Qcow2, &file, file.len() as u64),
            Some(size)
        );
        let mut want = Vec::new();
        for g in &many {
            match g {
                Guest::Plain(b) | Guest::Deflate(b) => want.extend_from_slice(b),
                Guest::Unallocated | Guest::Zeros => want.extend(std::iter::repeat_n(0, c)),
            }
        }
        want.truncate(size as usize);
        // The disk held something else: holes are written as zeros.
        let mut disk = vec![0xEE; size as usize + 4096];
        let got = unpack(Format::Qcow2, &mut &file[..], &mut disk, size + 4096).unwrap();
        assert_eq!(got, size);
        if let Some(i) = (0..size as usize).find(|&i| disk[i] != want[i]) {
            panic!("the guest image differs from byte {i} (cluster {})", i / c);
        }
        assert!(
            disk[size as usize..].iter().all(|b| *b == 0xEE),
            "nothing past it"
        );
    }

    #[test]
    fn qcow2_data_before_its_table_is_refused_as_not_streamable() {
        let guests = [
            Guest::Plain(noise(C as usize, 6)),
            Guest::Plain(noise(C as usize, 7)),
        ];
        let file = qcow2_file(2 * C, &guests, true);
        let e = run(Format::Qcow2, &file, 1 << 20).unwrap_err();
        assert!(
            matches!(
                e,
                UnpackError::Qcow2(Qcow2Error::NotStreamable {
                    what: "data cluster",
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("qemu-img convert -O qcow2"), "{e}");
    }

    #[test]
    fn qcow2_headers_that_cannot_be_read_in_a_stream_are_refused_by_name() {
        let good = qcow2_file(4 * C, &[Guest::Plain(noise(C as usize, 8))], false);
        let with = |at: usize, bytes: &[u8]| {
            let mut f = good.clone();
            f[at..at + bytes.len()].copy_from_slice(bytes);
            Qcow2Header::parse(&f).unwrap_err()
        };
        assert_eq!(
            with(8, &[0, 0, 0, 0, 0, 0, 2, 0]),
            Qcow2HeaderError::Unsupported("a backing file")
        );
        assert_eq!(
            with(32, &[0, 0, 0, 1]),
            Qcow2HeaderError::Unsupported("encryption")
        );
        assert_eq!(
            with(4, &[0, 0, 0, 4]),
            Qcow2HeaderError::Unsupported("version other than 2 or 3")
        );
        assert_eq!(
            with(20, &[0, 0, 0, 30]),
            Qcow2HeaderError::Header("cluster_bits outside 9..=21")
        );
        assert_eq!(
            with(79, &[0b100]),
            Qcow2HeaderError::Unsupported("an external data file")
        );
        assert_eq!(
            with(79, &[0b1_0000]),
            Qcow2HeaderError::Unsupported("extended L2 entries")
        );
        assert_eq!(
            with(79, &[0b10]),
            Qcow2HeaderError::Unsupported("an image marked corrupt")
        );
        assert_eq!(
            with(24, &u64::MAX.to_be_bytes()),
            Qcow2HeaderError::Header("the L1 table is too small for the virtual size")
        );
        assert_eq!(
            with(0, b"QFI\0"),
            Qcow2HeaderError::Header("no QFI\\xfb magic")
        );
        assert_eq!(
            Qcow2Header::parse(&good[..50]).unwrap_err(),
            Qcow2HeaderError::Header("too short")
        );
        // Larger than the disk: refused before the first write.
        let e = run(Format::Qcow2, &good, 3 * C).unwrap_err();
        assert!(
            matches!(e, UnpackError::PastDiskEnd { offset: 1536, .. }),
            "{e:?}"
        );
        // Cut short in the middle of the data.
        let e = run(Format::Qcow2, &good[..good.len() - 10], 1 << 20).unwrap_err();
        assert!(
            matches!(
                e,
                UnpackError::Qcow2(Qcow2Error::Truncated {
                    what: "data cluster",
                    ..
                })
            ),
            "{e:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes after any magic: an error or an image, never a panic, never a
        /// byte past the disk.
        #[test]
        fn arbitrary_input_never_panics_or_writes_past_the_disk(
            magic in 0usize..4,
            body in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let mut input = match magic {
                0 => QCOW2_MAGIC.to_vec(),
                1 => ZSTD_MAGIC.to_vec(),
                2 => XZ_MAGIC.to_vec(),
                _ => Vec::new(),
            };
            input.extend_from_slice(&body);
            let format = Format::detect(&input);
            let mut disk = Vec::new();
            let _ = unpack(format, &mut &input[..], &mut disk, 1 << 16);
            prop_assert!(disk.len() <= 1 << 16);
        }

        /// A valid qcow2 fixture with one byte changed anywhere: never a panic.
        #[test]
        fn a_mutated_qcow2_never_panics(at in 0usize..8192, byte in any::<u8>()) {
            let guests = [Guest::Plain(noise(C as usize, 11)), Guest::Deflate(noise(C as usize, 12)), Guest::Zeros];
            let mut file = qcow2_file(3 * C, &guests, false);
            let at = at % file.len();
            file[at] = byte;
            let mut disk = Vec::new();
            let _ = unpack(Format::Qcow2, &mut &file[..], &mut disk, 1 << 16);
            prop_assert!(disk.len() <= 1 << 16);
        }
    }
}
