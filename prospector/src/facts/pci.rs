//! PCI functions from `/sys/bus/pci/devices/*`.

use std::path::Path;

use substruct_wire::report::PciDevice;

use super::sysfs::{list_dir, read_trimmed};

/// Reads every PCI function under `<root>/sys/bus/pci/devices`, sorted by address.
pub fn gather(root: &Path) -> Vec<PciDevice> {
    let dir = root.join("sys/bus/pci/devices");
    list_dir(&dir)
        .into_iter()
        .filter_map(|address| {
            let d = dir.join(&address);
            let hex = |file: &str| read_trimmed(&d.join(file)).and_then(|v| parse_hex(&v));
            let (Some(vendor), Some(device)) = (hex("vendor"), hex("device")) else {
                tracing::debug!(pci = %address, "vendor/device unreadable; skipped");
                return None;
            };
            Some(PciDevice {
                vendor_id: u16::try_from(vendor).ok()?,
                device_id: u16::try_from(device).ok()?,
                class: hex("class").unwrap_or(0) & 0x00FF_FFFF,
                address,
            })
        })
        .collect()
}

/// `0x8086` → 0x8086.
pub fn parse_hex(v: &str) -> Option<u32> {
    let v = v.trim();
    let digits = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .unwrap_or(v);
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_values() {
        assert_eq!(parse_hex("0x8086\n"), Some(0x8086));
        assert_eq!(parse_hex("0x020000"), Some(0x020000));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(""), None);
    }
}
