//! Memory: `MemTotal` from `/proc/meminfo`, DIMMs from the SMBIOS table.

use std::path::Path;

use substruct_wire::report::Memory;

use super::smbios;
use super::sysfs::{read_bytes, read_string};

/// Reads `<root>/proc/meminfo` and `<root>/sys/firmware/dmi/tables/DMI`.
pub fn gather(root: &Path) -> Memory {
    Memory {
        total_bytes: read_string(&root.join("proc/meminfo"))
            .and_then(|t| parse_mem_total(&t))
            .unwrap_or(0),
        dimms: read_bytes(&root.join("sys/firmware/dmi/tables/DMI"))
            .map(|t| smbios::parse_dimms(&t))
            .unwrap_or_default(),
    }
}

/// `MemTotal:  16318580 kB` → bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        let factor = match parts.next() {
            Some("kB") => 1024,
            None => 1,
            Some(_) => return None,
        };
        value.checked_mul(factor)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total() {
        assert_eq!(
            parse_mem_total("MemFree: 1 kB\nMemTotal:       16318580 kB\n"),
            Some(16318580 * 1024)
        );
        assert_eq!(parse_mem_total("MemTotal: x kB"), None);
        assert_eq!(parse_mem_total("MemTotal: 1 MB"), None);
        assert_eq!(parse_mem_total(""), None);
    }
}
