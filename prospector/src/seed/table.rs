//! The deployed image's partition table, fitted to the disk it now sits on: a GPT's
//! backup header and array moved to the disk's real end (an image's sit at the image's
//! end), and one partition added in the free space at the end for the cloud-init seed.
//!
//! Works on anything `Read + Write + Seek` (the disk's device node; a file in tests),
//! 512-byte sectors. Everything read is checked before anything is written (signature,
//! header and array CRCs, sizes, overlaps), so a refusal leaves the disk as the deploy
//! wrote it.

use std::io::{Read, Seek, SeekFrom, Write};

/// Bytes per sector (the images and disks this handles).
pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries.
const ALIGN: u64 = 2048;
/// The most GPT entries (and bytes per entry) accepted from an image.
const MAX_ENTRIES: u64 = 1024;
const MAX_ENTRY_SIZE: u64 = 4096;
/// Microsoft basic data (what a FAT partition is), as stored on disk (mixed-endian).
const BASIC_DATA: [u8; 16] = [
    0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7,
];
/// MBR type of a FAT32 (LBA) partition; `0xee`: a GPT's protective entry.
const MBR_FAT32_LBA: u8 = 0x0c;
const MBR_PROTECTIVE: u8 = 0xee;

/// Why the table could not take the seed partition.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("disk I/O at byte {offset}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("the image has no partition table (no MBR signature 55 AA)")]
    NoTable,
    #[error("the image's GPT {what} is damaged ({detail})")]
    BadGpt { what: &'static str, detail: String },
    #[error("the disk ({disk} bytes) is smaller than its partition table says it must be")]
    DiskTooSmall { disk: u64 },
    #[error("no free space at the end of the disk for a {want} byte seed partition (the image's partitions end at byte {used_end}, the usable space at byte {usable_end})")]
    NoSpace {
        want: u64,
        used_end: u64,
        usable_end: u64,
    },
    #[error("every {table} partition slot is taken; no room for the seed partition")]
    NoSlot { table: &'static str },
}

/// Where the seed partition went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// `"gpt"` or `"mbr"`.
    pub table: &'static str,
    /// 1-based partition number (`vda3`).
    pub number: u32,
    pub start_bytes: u64,
    pub len_bytes: u64,
    /// GPT only: whether the backup header was moved (the image was smaller than the disk).
    pub moved_backup: bool,
}

fn io(offset: u64) -> impl FnOnce(std::io::Error) -> TableError {
    move |source| TableError::Io { offset, source }
}

fn read_at<D: Read + Seek>(disk: &mut D, offset: u64, len: usize) -> Result<Vec<u8>, TableError> {
    let mut buf = vec![0u8; len];
    disk.seek(SeekFrom::Start(offset)).map_err(io(offset))?;
    disk.read_exact(&mut buf).map_err(io(offset))?;
    Ok(buf)
}

fn write_at<D: Write + Seek>(disk: &mut D, offset: u64, buf: &[u8]) -> Result<(), TableError> {
    disk.seek(SeekFrom::Start(offset)).map_err(io(offset))?;
    disk.write_all(buf).map_err(io(offset))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Pure: the seed partition's first sector: `want` sectors ending at or before
/// `usable_last` (inclusive), started on a 1 MiB boundary, after `used_last`.
fn place(want: u64, used_last: u64, usable_last: u64) -> Result<u64, TableError> {
    let no_space = || TableError::NoSpace {
        want: want * SECTOR,
        used_end: (used_last + 1) * SECTOR,
        usable_end: (usable_last + 1) * SECTOR,
    };
    let start = (usable_last + 1)
        .checked_sub(want)
        .map(|s| s / ALIGN * ALIGN)
        .ok_or_else(no_space)?;
    if start <= used_last {
        return Err(no_space());
    }
    Ok(start)
}

/// Adds a partition of `len_bytes` (a multiple of 1 MiB) at the end of `disk`, which is
/// `disk_bytes` long, to whichever table the deployed image carries; for a GPT, first
/// moves the backup header and array to the disk's last sectors. `unique` is the new
/// GPT partition's unique GUID (random; a parameter so tests are repeatable).
pub fn add_end_partition<D: Read + Write + Seek>(
    disk: &mut D,
    disk_bytes: u64,
    len_bytes: u64,
    unique: [u8; 16],
) -> Result<Placed, TableError> {
    let mbr = read_at(disk, 0, SECTOR as usize)?;
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        return Err(TableError::NoTable);
    }
    let protective = (0..4).any(|i| mbr[446 + i * 16 + 4] == MBR_PROTECTIVE);
    let sectors = disk_bytes / SECTOR;
    let want = len_bytes.div_ceil(SECTOR);
    if protective {
        gpt(disk, mbr, sectors, Some((want, unique)))
    } else {
        msdos(disk, mbr, sectors, want)
    }
}

/// For an image deployed without a seed: a GPT's backup header and array move from the
/// image's end to the disk's last sectors (the primary's CRCs checked first, both
/// copies rewritten, the protective MBR widened), as `sgdisk -e` would. `Ok(None)` for
/// an MBR or no table at all (a bare file system): nothing to fit; `Ok(Some(moved))`
/// for a GPT.
pub fn fit_gpt<D: Read + Write + Seek>(
    disk: &mut D,
    disk_bytes: u64,
) -> Result<Option<bool>, TableError> {
    let mbr = read_at(disk, 0, SECTOR as usize)?;
    if mbr[510] != 0x55
        || mbr[511] != 0xaa
        || !(0..4).any(|i| mbr[446 + i * 16 + 4] == MBR_PROTECTIVE)
    {
        return Ok(None);
    }
    let placed = gpt(disk, mbr, disk_bytes / SECTOR, None)?;
    Ok(Some(placed.moved_backup))
}

fn msdos<D: Read + Write + Seek>(
    disk: &mut D,
    mut mbr: Vec<u8>,
    sectors: u64,
    want: u64,
) -> Result<Placed, TableError> {
    // MBR fields are 32-bit: a partition must end within the first 2 TiB.
    let limit = sectors.min(1 << 32);
    let mut used_last = 0u64; // the MBR itself
    let mut free = None;
    for i in 0..4 {
        let e = 446 + i * 16;
        let (kind, start, len) = (
            mbr[e + 4],
            u64::from(u32_at(&mbr, e + 8)),
            u64::from(u32_at(&mbr, e + 12)),
        );
        if kind == 0 || len == 0 {
            free.get_or_insert(i);
            continue;
        }
        used_last = used_last.max(start + len - 1);
    }
    if used_last >= limit {
        return Err(TableError::DiskTooSmall {
            disk: sectors * SECTOR,
        });
    }
    let slot = free.ok_or(TableError::NoSlot { table: "MBR" })?;
    let start = place(want, used_last, limit - 1)?;
    let e = 446 + slot * 16;
    mbr[e] = 0; // not active
    mbr[e + 1..e + 4].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS: "use LBA"
    mbr[e + 4] = MBR_FAT32_LBA;
    mbr[e + 5..e + 8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    // `place` keeps start + want within `limit` ≤ 2^32.
    put_u32(&mut mbr, e + 8, start as u32);
    put_u32(&mut mbr, e + 12, want as u32);
    write_at(disk, 0, &mbr)?;
    Ok(Placed {
        table: "mbr",
        number: slot as u32 + 1,
        start_bytes: start * SECTOR,
        len_bytes: want * SECTOR,
        moved_backup: false,
    })
}

struct GptHeader {
    raw: Vec<u8>,
    size: usize,
    alternate: u64,
    last_usable: u64,
    entries_lba: u64,
    count: u64,
    entry_size: u64,
}

fn header_crc(raw: &[u8], size: usize) -> u32 {
    let mut h = raw[..size].to_vec();
    put_u32(&mut h, 16, 0);
    crc32fast::hash(&h)
}

fn read_header<D: Read + Seek>(disk: &mut D) -> Result<GptHeader, TableError> {
    let bad = |detail: String| TableError::BadGpt {
        what: "header",
        detail,
    };
    let raw = read_at(disk, SECTOR, SECTOR as usize)?;
    if &raw[..8] != b"EFI PART" {
        return Err(bad("no \"EFI PART\" signature at LBA 1".into()));
    }
    let size = u32_at(&raw, 12) as usize;
    if !(92..=SECTOR as usize).contains(&size) {
        return Err(bad(format!("header size {size}")));
    }
    let (stored, actual) = (u32_at(&raw, 16), header_crc(&raw, size));
    if stored != actual {
        return Err(bad(format!("CRC {stored:08x}, computed {actual:08x}")));
    }
    let h = GptHeader {
        size,
        alternate: u64_at(&raw, 32),
        last_usable: u64_at(&raw, 48),
        entries_lba: u64_at(&raw, 72),
        count: u64::from(u32_at(&raw, 80)),
        entry_size: u64::from(u32_at(&raw, 84)),
        raw,
    };
    if h.count == 0
        || h.count > MAX_ENTRIES
        || h.entry_size < 128
        || h.entry_size > MAX_ENTRY_SIZE
        || !h.entry_size.is_multiple_of(8)
    {
        return Err(bad(format!(
            "{} entries of {} bytes",
            h.count, h.entry_size
        )));
    }
    if h.entries_lba < 2 {
        return Err(bad(format!("partition array at LBA {}", h.entries_lba)));
    }
    Ok(h)
}

/// Moves the GPT's backup to the disk's end and, with `add` (sectors, unique GUID),
/// adds the seed partition after the last one.
fn gpt<D: Read + Write + Seek>(
    disk: &mut D,
    mut mbr: Vec<u8>,
    sectors: u64,
    add: Option<(u64, [u8; 16])>,
) -> Result<Placed, TableError> {
    let mut h = read_header(disk)?;
    let array_bytes = h.count * h.entry_size;
    let array_sectors = array_bytes.div_ceil(SECTOR);
    // Inside the disk, so no offset below overflows.
    if h.entries_lba
        .checked_add(array_sectors)
        .is_none_or(|end| end >= sectors)
    {
        return Err(TableError::BadGpt {
            what: "header",
            detail: format!(
                "partition array at LBA {} is past the disk's end",
                h.entries_lba
            ),
        });
    }
    let mut array = read_at(disk, h.entries_lba * SECTOR, array_bytes as usize)?;
    let (stored, actual) = (u32_at(&h.raw, 88), crc32fast::hash(&array));
    if stored != actual {
        return Err(TableError::BadGpt {
            what: "partition array",
            detail: format!("CRC {stored:08x}, computed {actual:08x}"),
        });
    }
    let last = sectors
        .checked_sub(1)
        .ok_or(TableError::DiskTooSmall { disk: 0 })?;
    // The backup array and header take the disk's last sectors.
    let last_usable = last
        .checked_sub(1 + array_sectors)
        .filter(|&l| l > h.entries_lba + array_sectors)
        .ok_or(TableError::DiskTooSmall {
            disk: sectors * SECTOR,
        })?;
    let mut used_last = h.entries_lba + array_sectors - 1;
    let mut free = None;
    for i in 0..h.count as usize {
        let e = &array[i * h.entry_size as usize..(i + 1) * h.entry_size as usize];
        if e[..16].iter().all(|&b| b == 0) {
            free.get_or_insert(i);
            continue;
        }
        let (first, end) = (u64_at(e, 32), u64_at(e, 40));
        if first > end {
            return Err(TableError::BadGpt {
                what: "partition array",
                detail: format!(
                    "entry {} ends (LBA {end}) before it starts (LBA {first})",
                    i + 1
                ),
            });
        }
        used_last = used_last.max(end);
    }
    if used_last > last_usable {
        return Err(TableError::DiskTooSmall {
            disk: sectors * SECTOR,
        });
    }
    // The new entry (none when only fitting the table to the disk).
    let (slot, start, want) = match add {
        Some((want, unique)) => {
            let slot = free.ok_or(TableError::NoSlot { table: "GPT" })?;
            let start = place(want, used_last, last_usable)?;
            let e = slot * h.entry_size as usize;
            let entry = &mut array[e..e + h.entry_size as usize];
            entry.fill(0);
            entry[..16].copy_from_slice(&BASIC_DATA);
            entry[16..32].copy_from_slice(&unique);
            put_u64(entry, 32, start);
            put_u64(entry, 40, start + want - 1);
            for (i, unit) in "CIDATA".encode_utf16().enumerate() {
                entry[56 + i * 2..58 + i * 2].copy_from_slice(&unit.to_le_bytes());
            }
            (slot, start, want)
        }
        None => (0, last_usable + 1, 0),
    };
    let array_crc = crc32fast::hash(&array);

    // Primary header: the backup now at the disk's last sector.
    let old_alternate = h.alternate;
    h.last_usable = last_usable;
    put_u64(&mut h.raw, 32, last);
    put_u64(&mut h.raw, 48, last_usable);
    put_u32(&mut h.raw, 88, array_crc);
    let crc = header_crc(&h.raw, h.size);
    put_u32(&mut h.raw, 16, crc);
    // Backup header: the same with its own and the other's place swapped.
    let backup_array = last - array_sectors;
    let mut backup = h.raw.clone();
    put_u64(&mut backup, 24, last);
    put_u64(&mut backup, 32, 1);
    put_u64(&mut backup, 72, backup_array);
    let crc = header_crc(&backup, h.size);
    put_u32(&mut backup, 16, crc);

    // Backup first, then the primary: a cut in between leaves a valid primary that
    // still names the old backup (tools repair from the primary).
    let mut padded = array.clone();
    padded.resize((array_sectors * SECTOR) as usize, 0);
    write_at(disk, backup_array * SECTOR, &padded)?;
    write_at(disk, last * SECTOR, &backup)?;
    write_at(disk, h.entries_lba * SECTOR, &array)?;
    write_at(disk, SECTOR, &h.raw)?;
    // The image's old backup header, now in free space, would confuse a repair tool.
    let moved = old_alternate != last;
    if moved && old_alternate > used_last && old_alternate < start {
        write_at(disk, old_alternate * SECTOR, &[0u8; SECTOR as usize])?;
    }
    // The protective MBR covers the whole disk (up to its 32-bit limit).
    for i in 0..4 {
        let e = 446 + i * 16;
        if mbr[e + 4] == MBR_PROTECTIVE {
            put_u32(&mut mbr, e + 12, last.min(u64::from(u32::MAX)) as u32);
        }
    }
    write_at(disk, 0, &mbr)?;
    Ok(Placed {
        table: "gpt",
        number: slot as u32 + 1,
        start_bytes: start * SECTOR,
        len_bytes: want * SECTOR,
        moved_backup: moved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 1 << 20;

    fn mbr_image(parts: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; (4 * MIB) as usize];
        for (i, &(kind, start, len)) in parts.iter().enumerate() {
            let e = 446 + i * 16;
            d[e + 4] = kind;
            put_u32(&mut d, e + 8, start);
            put_u32(&mut d, e + 12, len);
        }
        d[510] = 0x55;
        d[511] = 0xaa;
        d
    }

    /// A GPT image of `image_sectors` with one partition, as a builder would leave it
    /// (backup at the image's end), written by this module's own CRC rules.
    fn gpt_image(image_sectors: u64) -> Vec<u8> {
        let mut d = vec![0u8; (image_sectors * SECTOR) as usize];
        let last = image_sectors - 1;
        let mut array = vec![0u8; 128 * 128];
        array[..16].copy_from_slice(&[0x11; 16]);
        array[16..32].copy_from_slice(&[0x22; 16]);
        put_u64(&mut array, 32, 2048);
        put_u64(&mut array, 40, last - 33 - 1);
        let mut h = vec![0u8; SECTOR as usize];
        h[..8].copy_from_slice(b"EFI PART");
        put_u32(&mut h, 8, 0x0001_0000);
        put_u32(&mut h, 12, 92);
        put_u64(&mut h, 24, 1);
        put_u64(&mut h, 32, last);
        put_u64(&mut h, 40, 34);
        put_u64(&mut h, 48, last - 33);
        put_u64(&mut h, 72, 2);
        put_u32(&mut h, 80, 128);
        put_u32(&mut h, 84, 128);
        put_u32(&mut h, 88, crc32fast::hash(&array));
        let crc = header_crc(&h, 92);
        put_u32(&mut h, 16, crc);
        d[512..1024].copy_from_slice(&h);
        d[1024..1024 + array.len()].copy_from_slice(&array);
        let mut b = h.clone();
        put_u64(&mut b, 24, last);
        put_u64(&mut b, 32, 1);
        put_u64(&mut b, 72, last - 32);
        let crc = header_crc(&b, 92);
        put_u32(&mut b, 16, crc);
        let at = ((last - 32) * SECTOR) as usize;
        d[at..at + array.len()].copy_from_slice(&array);
        let at = (last * SECTOR) as usize;
        d[at..at + 512].copy_from_slice(&b);
        let e = 446;
        d[e + 4] = MBR_PROTECTIVE;
        put_u32(&mut d, e + 8, 1);
        put_u32(&mut d, e + 12, last as u32);
        d[510] = 0x55;
        d[511] = 0xaa;
        d
    }

    #[test]
    fn the_deploys_room_check_always_leaves_room_for_the_partition() {
        let want = crate::seed::PARTITION_BYTES / SECTOR;
        for image in [
            1,
            511,
            512,
            MIB - 1,
            MIB,
            MIB + 1,
            556 * MIB + 12345,
            4 << 30,
        ] {
            let disk = crate::seed::disk_bytes_needed(image);
            let used_last = image.div_ceil(SECTOR) - 1;
            let sectors = disk / SECTOR;
            // MBR: usable to the last sector; GPT: before the backup array and header.
            for usable_last in [sectors - 1, sectors - 34] {
                let start = place(want, used_last, usable_last)
                    .unwrap_or_else(|e| panic!("image {image}, disk {disk}: {e}"));
                assert!(start > used_last && start + want - 1 <= usable_last);
            }
        }
        assert_eq!(crate::seed::disk_bytes_needed(u64::MAX), u64::MAX);
    }

    #[test]
    fn mbr_gets_a_fat_partition_at_the_disk_end() {
        let mut d = mbr_image(&[(0x0c, 2048, 2048), (0x83, 4096, 2048)]);
        d.resize((64 * MIB) as usize, 0);
        let len = d.len() as u64;
        let mut c = Cursor::new(d);
        let p = add_end_partition(&mut c, len, 8 * MIB, [7; 16]).unwrap();
        assert_eq!(
            p,
            Placed {
                table: "mbr",
                number: 3,
                start_bytes: 56 * MIB,
                len_bytes: 8 * MIB,
                moved_backup: false
            }
        );
        let d = c.into_inner();
        let e = 446 + 2 * 16;
        assert_eq!(d[e + 4], 0x0c);
        assert_eq!(u32_at(&d, e + 8), (56 * MIB / SECTOR) as u32);
        assert_eq!(u32_at(&d, e + 12), (8 * MIB / SECTOR) as u32);
        // The image's own entries are untouched.
        assert_eq!(u32_at(&d, 446 + 16 + 8), 4096);
    }

    #[test]
    fn mbr_refusals_name_the_problem() {
        let full = mbr_image(&[
            (0x83, 2048, 10),
            (0x83, 4096, 10),
            (0x83, 6144, 10),
            (0x83, 8192, 10),
        ]);
        let mut d = full.clone();
        d.resize((64 * MIB) as usize, 0);
        let len = d.len() as u64;
        let e = add_end_partition(&mut Cursor::new(d), len, 8 * MIB, [0; 16]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "every MBR partition slot is taken; no room for the seed partition"
        );
        // The image's partition reaches into the last 8 MiB.
        let mut d = mbr_image(&[(0x83, 2048, 120_000)]);
        d.resize((64 * MIB) as usize, 0);
        let e = add_end_partition(&mut Cursor::new(d), 64 * MIB, 8 * MIB, [0; 16]).unwrap_err();
        assert!(matches!(e, TableError::NoSpace { .. }), "{e}");
        // A partition past the disk's end: the image is not for this disk.
        let d = mbr_image(&[(0x83, 2048, 1_000_000)]);
        let e = add_end_partition(&mut Cursor::new(d), 4 * MIB, MIB, [0; 16]).unwrap_err();
        assert!(matches!(e, TableError::DiskTooSmall { .. }), "{e}");
        let d = vec![0u8; (4 * MIB) as usize];
        let e = add_end_partition(&mut Cursor::new(d), 4 * MIB, MIB, [0; 16]).unwrap_err();
        assert!(matches!(e, TableError::NoTable));
    }

    #[test]
    fn fitting_without_a_seed_moves_only_the_gpt_backup() {
        let image_sectors = 8 * MIB / SECTOR;
        let image = gpt_image(image_sectors);
        let mut d = image.clone();
        d.resize((64 * MIB) as usize, 0);
        let len = d.len() as u64;
        let mut c = Cursor::new(d);
        assert_eq!(fit_gpt(&mut c, len).unwrap(), Some(true));
        let last = len / SECTOR - 1;
        let h = read_header(&mut c.clone()).unwrap();
        assert_eq!((h.alternate, h.last_usable), (last, last - 33));
        let d = c.into_inner();
        let b = &d[(last * SECTOR) as usize..(last * SECTOR + SECTOR) as usize];
        assert_eq!(&b[..8], b"EFI PART");
        assert_eq!(u32_at(b, 16), header_crc(b, 92));
        // The partition array is the image's, unchanged, in both places.
        assert_eq!(&d[1024..1024 + 128 * 128], &image[1024..1024 + 128 * 128]);
        let at = ((last - 32) * SECTOR) as usize;
        assert_eq!(&d[at..at + 128 * 128], &image[1024..1024 + 128 * 128]);
        // The image's old backup header is gone; the protective MBR spans the disk.
        let old = ((image_sectors - 1) * SECTOR) as usize;
        assert!(d[old..old + 512].iter().all(|b| *b == 0));
        assert_eq!(u64::from(u32_at(&d, 446 + 12)), last);
        // Already fitted: nothing moves. An MBR or a bare file system: nothing to fit.
        let mut again = Cursor::new(d);
        assert_eq!(fit_gpt(&mut again, len).unwrap(), Some(false));
        let mut mbr = mbr_image(&[(0x83, 2048, 4000)]);
        let before = mbr.clone();
        assert_eq!(fit_gpt(&mut Cursor::new(&mut mbr), 4 * MIB).unwrap(), None);
        assert_eq!(mbr, before);
        let mut bare = vec![0u8; (4 * MIB) as usize];
        assert_eq!(fit_gpt(&mut Cursor::new(&mut bare), 4 * MIB).unwrap(), None);
        // A damaged primary is refused, the disk untouched.
        let mut bad = image.clone();
        bad[512 + 40] ^= 1;
        bad.resize((64 * MIB) as usize, 0);
        let copy = bad.clone();
        let mut c = Cursor::new(bad);
        assert!(matches!(
            fit_gpt(&mut c, 64 * MIB),
            Err(TableError::BadGpt { .. })
        ));
        assert!(c.into_inner() == copy);
    }

    #[test]
    fn gpt_backup_moves_to_the_disk_end_and_the_entry_is_added() {
        let image_sectors = 8 * MIB / SECTOR;
        let mut d = gpt_image(image_sectors);
        d.resize((64 * MIB) as usize, 0);
        let len = d.len() as u64;
        let mut c = Cursor::new(d);
        let p = add_end_partition(&mut c, len, 8 * MIB, [9; 16]).unwrap();
        assert_eq!((p.table, p.number, p.moved_backup), ("gpt", 2, true));
        let last = len / SECTOR - 1;
        // The seed ends before the backup array, on a 1 MiB start.
        assert_eq!(p.start_bytes % MIB, 0);
        assert!(p.start_bytes + p.len_bytes <= (last - 32) * SECTOR);
        let mut c2 = c.clone();
        let h = read_header(&mut c2).unwrap();
        assert_eq!(h.alternate, last);
        assert_eq!(h.last_usable, last - 33);
        let d = c.into_inner();
        // The backup header verifies and points back at the primary.
        let b = &d[(last * SECTOR) as usize..(last * SECTOR + SECTOR) as usize];
        assert_eq!(&b[..8], b"EFI PART");
        assert_eq!(u32_at(b, 16), header_crc(b, 92));
        assert_eq!(
            (u64_at(b, 24), u64_at(b, 32), u64_at(b, 72)),
            (last, 1, last - 32)
        );
        // Both arrays are the same and hold the new entry.
        let primary = &d[1024..1024 + 128 * 128];
        let at = ((last - 32) * SECTOR) as usize;
        assert_eq!(primary, &d[at..at + 128 * 128]);
        let e = &primary[128..256];
        assert_eq!(&e[..16], &BASIC_DATA);
        assert_eq!(u64_at(e, 32) * SECTOR, p.start_bytes);
        assert_eq!((u64_at(e, 40) + 1) * SECTOR, p.start_bytes + p.len_bytes);
        assert_eq!(&e[56..68], b"C\0I\0D\0A\0T\0A\0");
        // The old backup header is gone; the protective MBR spans the disk.
        let old = ((image_sectors - 1) * SECTOR) as usize;
        assert!(d[old..old + 512].iter().all(|&b| b == 0));
        assert_eq!(u64::from(u32_at(&d, 446 + 12)), last);
    }

    #[test]
    fn damaged_gpt_is_refused_before_any_write() {
        let mut d = gpt_image(8 * MIB / SECTOR);
        d[512 + 40] ^= 1; // first usable LBA: the header CRC no longer matches
        let before = d.clone();
        let len = d.len() as u64;
        let mut c = Cursor::new(d);
        let e = add_end_partition(&mut c, len, MIB, [0; 16]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the image's GPT header is damaged (CRC "),
            "{e}"
        );
        assert_eq!(c.into_inner(), before);
        // An array placed at a hostile LBA (its header CRC made right) is refused, not
        // read from a wrapped offset.
        let mut d = gpt_image(8 * MIB / SECTOR);
        put_u64(&mut d[512..1024], 72, u64::MAX / 4);
        let crc = header_crc(&d[512..1024], 92);
        put_u32(&mut d[512..1024], 16, crc);
        let e = add_end_partition(&mut Cursor::new(d), len, MIB, [0; 16]).unwrap_err();
        assert!(e.to_string().contains("is past the disk's end"), "{e}");
        let mut d = gpt_image(8 * MIB / SECTOR);
        d[1024 + 200] ^= 1;
        let e = add_end_partition(&mut Cursor::new(d), len, MIB, [0; 16]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the image's GPT partition array is damaged"),
            "{e}"
        );
    }
}
