//! A small, bounded reader of the raw SMBIOS structure table
//! (`/sys/firmware/dmi/tables/DMI`): only type 17 (Memory Device) is decoded.
//!
//! Pure and panic-free on any input: every offset is checked, a truncated or
//! malformed table simply ends the walk, and the walk visits at most
//! [`MAX_STRUCTURES`] structures.

use substruct_wire::report::Dimm;

/// Upper bound on structures visited (real tables have a few hundred).
pub const MAX_STRUCTURES: usize = 4096;

const TYPE_MEMORY_DEVICE: u8 = 17;
const TYPE_END_OF_TABLE: u8 = 127;

/// One SMBIOS structure: its formatted area (header included) and its strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure<'a> {
    pub kind: u8,
    pub handle: u16,
    pub formatted: &'a [u8],
    strings: Vec<&'a [u8]>,
}

impl Structure<'_> {
    fn byte(&self, offset: usize) -> Option<u8> {
        self.formatted.get(offset).copied()
    }
    fn word(&self, offset: usize) -> Option<u16> {
        let b = self.formatted.get(offset..offset.checked_add(2)?)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }
    fn dword(&self, offset: usize) -> Option<u32> {
        let b = self.formatted.get(offset..offset.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// The string a byte at `offset` refers to (1-based; 0 = none), trimmed, non-empty.
    fn string_at(&self, offset: usize) -> Option<String> {
        let index = usize::from(self.byte(offset)?);
        let raw = self.strings.get(index.checked_sub(1)?)?;
        let s = String::from_utf8_lossy(raw).trim().to_owned();
        (!s.is_empty()).then_some(s)
    }
}

/// Splits a structure table into structures, stopping at the end-of-table marker,
/// at [`MAX_STRUCTURES`] or at the first structure that does not fit.
pub fn structures(table: &[u8]) -> Vec<Structure<'_>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while out.len() < MAX_STRUCTURES {
        let Some(header) = table.get(pos..pos.saturating_add(4)) else {
            break;
        };
        let kind = header[0];
        let len = usize::from(header[1]);
        let handle = u16::from_le_bytes([header[2], header[3]]);
        if len < 4 {
            tracing::debug!(
                pos,
                len,
                "SMBIOS structure shorter than its header; stopping"
            );
            break;
        }
        let Some(formatted) = table.get(pos..pos.saturating_add(len)) else {
            tracing::debug!(pos, len, "SMBIOS table truncated inside a structure");
            break;
        };
        // Strings: NUL-terminated, the set ends with an extra NUL ("\0\0" when empty).
        let mut strings = Vec::new();
        let mut cursor = pos + len;
        let mut complete = false;
        while let Some(rest) = table.get(cursor..) {
            let Some(nul) = rest.iter().position(|b| *b == 0) else {
                break;
            };
            if nul == 0 {
                // Empty string: the terminator of the set (or the first of "\0\0").
                cursor += 1;
                if strings.is_empty() && table.get(cursor) == Some(&0) {
                    cursor += 1;
                }
                complete = true;
                break;
            }
            strings.push(&rest[..nul]);
            cursor += nul + 1;
        }
        if !complete {
            tracing::debug!(pos, "SMBIOS table truncated inside a string set");
            break;
        }
        out.push(Structure {
            kind,
            handle,
            formatted,
            strings,
        });
        if kind == TYPE_END_OF_TABLE {
            break;
        }
        pos = cursor;
    }
    out
}

/// The populated memory devices (type 17) of a structure table; empty slots skipped.
pub fn parse_dimms(table: &[u8]) -> Vec<Dimm> {
    structures(table)
        .iter()
        .filter(|s| s.kind == TYPE_MEMORY_DEVICE)
        .filter_map(memory_device)
        .collect()
}

fn memory_device(s: &Structure<'_>) -> Option<Dimm> {
    // SMBIOS 2.1+ type 17: size at 0x0C; 0 = no module installed.
    let size = s.word(0x0C)?;
    let size_bytes: u64 = match size {
        0 => return None,
        0xFFFF => 0, // installed, size unknown
        0x7FFF => {
            // Extended Size (2.7+): MiB in bits 0..30.
            let ext = s.dword(0x1C).map(|v| v & 0x7FFF_FFFF).unwrap_or(0);
            u64::from(ext) << 20
        }
        v if v & 0x8000 != 0 => u64::from(v & 0x7FFF) << 10,
        v => u64::from(v) << 20,
    };
    let speed_mts = match s.word(0x15) {
        Some(0) | None => None,
        // Extended Speed (3.3+) when the word says "see extended".
        Some(0xFFFF) => s.dword(0x54).filter(|v| *v != 0),
        Some(v) => Some(u32::from(v)),
    };
    Some(Dimm {
        slot: s.string_at(0x10),
        size_bytes,
        kind: s.byte(0x12).and_then(memory_type_name).map(str::to_owned),
        speed_mts,
        serial: s.string_at(0x18),
    })
}

/// SMBIOS 3.x table 7.18.2, Memory Device — Type. Unknown (0x02) gives `None`.
pub fn memory_type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x01 => "Other",
        0x03 => "DRAM",
        0x04 => "EDRAM",
        0x05 => "VRAM",
        0x06 => "SRAM",
        0x07 => "RAM",
        0x08 => "ROM",
        0x09 => "FLASH",
        0x0A => "EEPROM",
        0x0B => "FEPROM",
        0x0C => "EPROM",
        0x0D => "CDRAM",
        0x0E => "3DRAM",
        0x0F => "SDRAM",
        0x10 => "SGRAM",
        0x11 => "RDRAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1A => "DDR4",
        0x1B => "LPDDR",
        0x1C => "LPDDR2",
        0x1D => "LPDDR3",
        0x1E => "LPDDR4",
        0x1F => "Logical non-volatile device",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x24 => "HBM3",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn type17(size: u16, ext: u32, speed: u16, strings: &[&str]) -> Vec<u8> {
        let mut f = vec![17u8, 0x28, 0x10, 0x00];
        f.resize(0x28, 0);
        f[0x0C..0x0E].copy_from_slice(&size.to_le_bytes());
        f[0x10] = 1; // locator
        f[0x12] = 0x1A;
        f[0x15..0x17].copy_from_slice(&speed.to_le_bytes());
        f[0x18] = if strings.len() > 1 { 2 } else { 0 };
        f[0x1C..0x20].copy_from_slice(&ext.to_le_bytes());
        for s in strings {
            f.extend_from_slice(s.as_bytes());
            f.push(0);
        }
        f.push(0);
        if strings.is_empty() {
            f.push(0);
        }
        f
    }

    #[test]
    fn sizes_speeds_and_empty_slots() {
        let mut table = type17(16384, 0, 2666, &["A1", "SER1"]);
        table.extend(type17(0, 0, 0, &["A2"]));
        table.extend(type17(0x7FFF, 65536, 4800, &["A3"]));
        table.extend(type17(0x8000 | 512, 0, 0, &[]));
        table.extend([127, 4, 0xFF, 0xFF, 0, 0]);
        let dimms = parse_dimms(&table);
        assert_eq!(dimms.len(), 3);
        assert_eq!(dimms[0].slot.as_deref(), Some("A1"));
        assert_eq!(dimms[0].serial.as_deref(), Some("SER1"));
        assert_eq!(dimms[0].size_bytes, 16 << 30);
        assert_eq!(dimms[0].speed_mts, Some(2666));
        assert_eq!(dimms[0].kind.as_deref(), Some("DDR4"));
        assert_eq!(dimms[1].size_bytes, 64 << 30);
        assert_eq!(dimms[1].serial, None);
        assert_eq!(dimms[2].size_bytes, 512 << 10);
        assert_eq!(dimms[2].slot, None);
        assert_eq!(dimms[2].speed_mts, None);
    }

    #[test]
    fn every_truncation_and_corruption_is_survived() {
        let mut table = type17(16384, 0, 2666, &["A1", "SER1"]);
        table.extend(type17(8192, 0, 3200, &["A2", "SER2"]));
        table.extend([127, 4, 0xFF, 0xFF, 0, 0]);
        assert_eq!(parse_dimms(&table).len(), 2);
        for cut in 0..table.len() {
            let dimms = parse_dimms(&table[..cut]);
            assert!(dimms.len() <= 2);
        }
        for i in 0..table.len() {
            for v in [0u8, 1, 3, 0x7F, 0xFF] {
                let mut t = table.clone();
                t[i] = v;
                let _ = parse_dimms(&t);
            }
        }
        // A zero-length header must not loop forever.
        assert!(parse_dimms(&[17, 0, 0, 0, 0, 0]).is_empty());
        assert!(parse_dimms(&[]).is_empty());
    }

    #[test]
    fn walk_is_bounded() {
        // 10 000 minimal structures: the walk stops at MAX_STRUCTURES.
        let table: Vec<u8> = std::iter::repeat_n([1u8, 4, 0, 0, 0, 0], 10_000)
            .flatten()
            .collect();
        assert_eq!(structures(&table).len(), MAX_STRUCTURES);
    }
}
