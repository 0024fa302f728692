//! A FAT12 filesystem of [`super::PARTITION_BYTES`] built in memory: the volume label
//! `CIDATA` and a few small files in the root directory (long names, since `meta-data`
//! and `user-data` are not 8.3). Pure; what cloud-init needs and nothing more, so the
//! static prospector carries no general FAT library.
//!
//! Layout (512-byte sectors): boot sector, two FATs of 6 sectors, a 512-entry root
//! directory (32 sectors), then 4 KiB clusters: 2042 of them, a FAT12 count.

const SECTOR: usize = 512;
const SECTORS_PER_CLUSTER: usize = 8;
const CLUSTER: usize = SECTOR * SECTORS_PER_CLUSTER;
const RESERVED: usize = 1;
const FATS: usize = 2;
const FAT_SECTORS: usize = 6;
const ROOT_ENTRIES: usize = 512;
const ROOT_SECTORS: usize = ROOT_ENTRIES * 32 / SECTOR;
const DATA_START: usize = RESERVED + FATS * FAT_SECTORS + ROOT_SECTORS;
/// The label cloud-init's NoCloud datasource looks for.
pub const LABEL: &[u8; 11] = b"CIDATA     ";
/// 2000-01-01, in FAT's date format: reproducible images.
const DATE: u16 = (20 << 9) | (1 << 5) | 1;

/// Why the files do not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FatError {
    #[error("the seed files need {need} bytes of clusters; the partition has {have}")]
    Full { need: usize, have: usize },
    #[error("file name {0:?} is empty, too long or not printable ASCII")]
    BadName(String),
    #[error("too many files for the root directory")]
    TooMany,
}

/// The start of a filesystem of [`super::PARTITION_BYTES`]: its metadata and the files'
/// clusters (write it at the partition's start). `hidden` is the partition's first sector
/// on its disk, `volume_id` its serial number.
pub fn image(hidden: u32, volume_id: u32, files: &[(&str, &[u8])]) -> Result<Vec<u8>, FatError> {
    let total = super::PARTITION_BYTES as usize;
    let sectors = total / SECTOR;
    let clusters = (sectors - DATA_START) / SECTORS_PER_CLUSTER;
    // Only what is used: the metadata and the files' clusters (the rest of the partition
    // is free space, whatever it holds).
    let used: usize = files.iter().map(|(_, b)| b.len().div_ceil(CLUSTER)).sum();
    if used > clusters {
        return Err(FatError::Full {
            need: used * CLUSTER,
            have: clusters * CLUSTER,
        });
    }
    let mut img = vec![0u8; DATA_START * SECTOR + used * CLUSTER];

    // Boot sector and BIOS parameter block.
    let b = &mut img[..SECTOR];
    b[..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
    b[3..11].copy_from_slice(b"SUBSTRCT");
    put16(b, 11, SECTOR as u16);
    b[13] = SECTORS_PER_CLUSTER as u8;
    put16(b, 14, RESERVED as u16);
    b[16] = FATS as u8;
    put16(b, 17, ROOT_ENTRIES as u16);
    put16(b, 19, sectors as u16);
    b[21] = 0xf8;
    put16(b, 22, FAT_SECTORS as u16);
    put16(b, 24, 32);
    put16(b, 26, 64);
    b[28..32].copy_from_slice(&hidden.to_le_bytes());
    b[36] = 0x80;
    b[38] = 0x29;
    b[39..43].copy_from_slice(&volume_id.to_le_bytes());
    b[43..54].copy_from_slice(LABEL);
    b[54..62].copy_from_slice(b"FAT12   ");
    b[510] = 0x55;
    b[511] = 0xaa;

    // Root directory: the label, then each file's long-name entries and short entry.
    let mut fat = vec![0u8; FAT_SECTORS * SECTOR];
    set_fat12(&mut fat, 0, 0xff8);
    set_fat12(&mut fat, 1, 0xfff);
    let mut dir: Vec<[u8; 32]> = Vec::new();
    let mut label = [0u8; 32];
    label[..11].copy_from_slice(LABEL);
    label[11] = 0x08;
    put16(&mut label, 24, DATE);
    dir.push(label);
    let mut next = 2usize;
    for (i, (name, body)) in files.iter().enumerate() {
        let short = short_name(name, i + 1)?;
        dir.extend(long_entries(name, &short));
        let count = body.len().div_ceil(CLUSTER);
        if next - 2 + count > clusters {
            return Err(FatError::Full {
                need: (next - 2 + count) * CLUSTER,
                have: clusters * CLUSTER,
            });
        }
        let first = if count == 0 { 0 } else { next };
        for c in next..next + count {
            let link = if c + 1 == next + count { 0xfff } else { c + 1 };
            set_fat12(&mut fat, c, link as u16);
        }
        let at = (DATA_START + (next - 2) * SECTORS_PER_CLUSTER) * SECTOR;
        img[at..at + body.len()].copy_from_slice(body);
        next += count;
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(&short);
        e[11] = 0x20;
        put16(&mut e, 16, DATE);
        put16(&mut e, 18, DATE);
        put16(&mut e, 24, DATE);
        put16(&mut e, 26, first as u16);
        e[28..32].copy_from_slice(&(body.len() as u32).to_le_bytes());
        dir.push(e);
    }
    if dir.len() > ROOT_ENTRIES {
        return Err(FatError::TooMany);
    }
    for k in 0..FATS {
        let at = (RESERVED + k * FAT_SECTORS) * SECTOR;
        img[at..at + fat.len()].copy_from_slice(&fat);
    }
    let root = (RESERVED + FATS * FAT_SECTORS) * SECTOR;
    for (k, e) in dir.iter().enumerate() {
        img[root + k * 32..root + k * 32 + 32].copy_from_slice(e);
    }
    Ok(img)
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn set_fat12(fat: &mut [u8], n: usize, v: u16) {
    let at = n * 3 / 2;
    if n.is_multiple_of(2) {
        fat[at] = v as u8;
        fat[at + 1] = (fat[at + 1] & 0xf0) | ((v >> 8) as u8 & 0x0f);
    } else {
        fat[at] = (fat[at] & 0x0f) | ((v as u8 & 0x0f) << 4);
        fat[at + 1] = (v >> 4) as u8;
    }
}

/// `META-D~1   `: the first six usable characters, upper case, and `~n`.
fn short_name(name: &str, n: usize) -> Result<[u8; 11], FatError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\');
    if !ok || n > 9 {
        return Err(FatError::BadName(name.to_owned()));
    }
    let mut short = [b' '; 11];
    let stem: Vec<u8> = name
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'()@^`{}~".contains(b))
        .map(|b| b.to_ascii_uppercase())
        .take(6)
        .collect();
    short[..stem.len()].copy_from_slice(&stem);
    short[stem.len()] = b'~';
    short[stem.len() + 1] = b'0' + n as u8;
    Ok(short)
}

/// The long-name entries for `name`, last piece first, as they precede the short entry.
fn long_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let sum = short
        .iter()
        .fold(0u8, |s, &b| (s >> 1).wrapping_add(s << 7).wrapping_add(b));
    let mut units: Vec<u16> = name.encode_utf16().collect();
    if !units.len().is_multiple_of(13) {
        units.push(0);
    }
    while !units.len().is_multiple_of(13) {
        units.push(0xffff);
    }
    let pieces = units.len() / 13;
    (0..pieces)
        .rev()
        .map(|p| {
            let mut e = [0u8; 32];
            e[0] = (p + 1) as u8 | if p + 1 == pieces { 0x40 } else { 0 };
            e[11] = 0x0f;
            e[13] = sum;
            let chunk = &units[p * 13..p * 13 + 13];
            for (k, u) in chunk.iter().enumerate() {
                let at = match k {
                    0..=4 => 1 + k * 2,
                    5..=10 => 14 + (k - 5) * 2,
                    _ => 28 + (k - 11) * 2,
                };
                put16(&mut e, at, *u);
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat12_packs_two_entries_in_three_bytes() {
        let mut fat = vec![0u8; 6];
        set_fat12(&mut fat, 0, 0xff8);
        set_fat12(&mut fat, 1, 0xfff);
        set_fat12(&mut fat, 2, 0x003);
        set_fat12(&mut fat, 3, 0xabc);
        assert_eq!(fat, [0xf8, 0xff, 0xff, 0x03, 0xc0, 0xab]);
    }

    #[test]
    fn names_get_a_short_alias_and_long_entries() {
        let short = short_name("meta-data", 1).unwrap();
        assert_eq!(&short, b"META-D~1   ");
        let long = long_entries("meta-data", &short);
        assert_eq!(long.len(), 1);
        assert_eq!(long[0][0], 0x41);
        assert_eq!(long[0][11], 0x0f);
        assert_eq!(&long[0][1..11], b"m\0e\0t\0a\0-\0");
        // After the name's 9 units: one NUL, then 0xFFFF padding.
        assert_eq!(&long[0][22..26], &[0, 0, 0xff, 0xff]);
        assert_eq!(&long[0][28..32], &[0xff; 4]);
        assert_eq!(long_entries(&"x".repeat(14), &short).len(), 2);
        assert!(short_name("a/b", 1).is_err());
        assert!(short_name("", 1).is_err());
    }

    #[test]
    fn too_much_for_the_partition_is_refused() {
        let big = vec![1u8; 9 << 20];
        let e = image(0, 1, &[("user-data", &big)]).unwrap_err();
        assert!(matches!(e, FatError::Full { .. }), "{e}");
    }
}
