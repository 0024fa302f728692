//! Network interfaces from `/sys/class/net/*`: physical ones only (a `device` link,
//! not under `/sys/devices/virtual`), with an Ethernet MAC.

use std::path::Path;

use substruct_wire::report::Nic;
use substruct_wire::Mac;

use super::sysfs::{link_name, list_dir, nearest_pci_address, read_trimmed, resolve};

/// Reads every physical NIC under `<root>/sys/class/net`, sorted by name.
pub fn gather(root: &Path) -> Vec<Nic> {
    let class = root.join("sys/class/net");
    list_dir(&class)
        .into_iter()
        .filter(|name| name != "lo")
        .filter_map(|name| read_nic(&class.join(&name), name))
        .collect()
}

fn read_nic(dir: &Path, name: String) -> Option<Nic> {
    let real = resolve(dir).unwrap_or_else(|| dir.to_owned());
    let device = dir.join("device");
    let is_virtual = real
        .to_str()
        .is_some_and(|p| p.contains("/devices/virtual/"));
    if is_virtual || std::fs::symlink_metadata(&device).is_err() {
        tracing::debug!(nic = %name, "virtual interface; skipped");
        return None;
    }
    let address = read_trimmed(&dir.join("address"))?;
    let mac = match Mac::parse(&address) {
        Ok(mac) => mac,
        Err(e) => {
            // InfiniBand (20-byte addresses) and other non-Ethernet links.
            tracing::debug!(nic = %name, error = %e, "not an Ethernet address; skipped");
            return None;
        }
    };
    let device_real = resolve(&device);
    let pci_address = link_name(&device)
        .filter(|n| super::sysfs::is_pci_address(n))
        .or_else(|| device_real.as_deref().and_then(nearest_pci_address));
    Some(Nic {
        mac,
        driver: link_name(&device.join("driver")),
        pci_address,
        speed_mbps: read_trimmed(&dir.join("speed")).and_then(|s| parse_speed(&s)),
        carrier: read_trimmed(&dir.join("carrier")).and_then(|c| match c.as_str() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        }),
        name,
    })
}

/// `speed` in Mbit/s; `-1`, `0` and garbage (link down, unknown) give `None`.
pub fn parse_speed(s: &str) -> Option<u32> {
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds() {
        assert_eq!(parse_speed("10000"), Some(10000));
        assert_eq!(parse_speed("-1"), None);
        assert_eq!(parse_speed("0"), None);
        assert_eq!(parse_speed("4294967295"), Some(u32::MAX));
        assert_eq!(parse_speed("99999999999"), None);
        assert_eq!(parse_speed("fast"), None);
    }
}
