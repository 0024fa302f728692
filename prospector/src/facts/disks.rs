//! Disks from `/sys/block/*` (never from mounts): whole block devices only, minus
//! the virtual ones (loop, ram, zram, device-mapper, md, nbd) and optical drives.

use std::path::{Component, Path};

use substruct_wire::report::{Disk, DiskTransport};

use super::sysfs::{link_name, list_dir, read_bytes, read_trimmed, resolve};

/// Name prefixes of block devices that are not disks of this machine.
pub const SKIPPED_PREFIXES: &[&str] = &["loop", "ram", "zram", "dm-", "md", "sr", "nbd", "fd"];

/// Reads every disk under `<root>/sys/block`, sorted by name.
pub fn gather(root: &Path) -> Vec<Disk> {
    let block = root.join("sys/block");
    list_dir(&block)
        .into_iter()
        .filter(|name| {
            let skip = SKIPPED_PREFIXES.iter().any(|p| name.starts_with(p));
            if skip {
                tracing::debug!(disk = %name, "not a disk; skipped");
            }
            !skip
        })
        .filter_map(|name| read_disk(&block.join(&name), name))
        .collect()
}

fn read_disk(dir: &Path, name: String) -> Option<Disk> {
    let flag = |file: &str| read_trimmed(&dir.join(file)).is_some_and(|v| v == "1");
    if flag("hidden") {
        // NVMe multipath per-controller paths (nvme0c0n1): the namespace is listed too.
        tracing::debug!(disk = %name, "hidden block device; skipped");
        return None;
    }
    let sectors: u64 = read_trimmed(&dir.join("size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if sectors == 0 {
        tracing::debug!(disk = %name, "zero-sized block device (no medium); skipped");
        return None;
    }
    let device = dir.join("device");
    let serial = read_trimmed(&device.join("serial"))
        .or_else(|| read_trimmed(&dir.join("serial")))
        .or_else(|| read_bytes(&device.join("vpd_pg80")).and_then(|b| parse_vpd_pg80(&b)));
    let wwn = read_trimmed(&device.join("wwid")).or_else(|| read_trimmed(&dir.join("wwid")));
    let real = resolve(dir).unwrap_or_else(|| dir.to_owned());
    let driver = link_name(&device.join("driver"));
    Some(Disk {
        transport: transport(&name, &real, driver.as_deref()),
        size_bytes: sectors.saturating_mul(512),
        model: read_trimmed(&device.join("model")),
        serial,
        wwn,
        rotational: flag("queue/rotational"),
        removable: flag("removable"),
        name,
    })
}

/// The unit serial number from a SCSI VPD page 0x80 (`device/vpd_pg80`).
pub fn parse_vpd_pg80(page: &[u8]) -> Option<String> {
    if page.get(1) != Some(&0x80) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*page.get(2)?, *page.get(3)?]));
    let end = 4usize.saturating_add(len).min(page.len());
    let raw = page.get(4..end)?;
    let s = String::from_utf8_lossy(raw)
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_owned();
    (!s.is_empty()).then_some(s)
}

/// How the disk is attached, from its name, its driver and its device path.
pub fn transport(name: &str, device_path: &Path, driver: Option<&str>) -> DiskTransport {
    let parts: Vec<&str> = device_path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let numbered = |prefix: &str| {
        parts.iter().any(|p| {
            p.strip_prefix(prefix)
                .is_some_and(|n| n.bytes().next().is_some_and(|b| b.is_ascii_digit()))
        })
    };
    if name.starts_with("nvme") {
        DiskTransport::Nvme
    } else if name.starts_with("vd") || driver == Some("virtio_blk") {
        DiskTransport::Virtio
    } else if name.starts_with("mmcblk") {
        DiskTransport::Mmc
    } else if numbered("usb") {
        DiskTransport::Usb
    } else if numbered("ata") {
        DiskTransport::Sata
    } else if parts.iter().any(|p| {
        p.starts_with("end_device-") || p.starts_with("sas_") || p.starts_with("expander-")
    }) {
        DiskTransport::Sas
    } else if numbered("host") || numbered("target") {
        DiskTransport::Scsi
    } else {
        DiskTransport::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports() {
        let t =
            |name: &str, path: &str, driver: Option<&str>| transport(name, Path::new(path), driver);
        assert_eq!(
            t(
                "nvme0n1",
                "/sys/devices/pci0000:00/x/nvme/nvme0/nvme0n1",
                None
            ),
            DiskTransport::Nvme
        );
        assert_eq!(
            t(
                "vda",
                "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
                None
            ),
            DiskTransport::Virtio
        );
        assert_eq!(
            t(
                "sda",
                "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda",
                None
            ),
            DiskTransport::Sata
        );
        assert_eq!(t("sdb", "/sys/devices/p/0000:3b:00.0/host0/port-0:1/end_device-0:1/target0:0:1/0:0:1:0/block/sdb", None), DiskTransport::Sas);
        assert_eq!(
            t(
                "sdc",
                "/sys/devices/p/usb3/3-2/3-2:1.0/host6/target6:0:0/6:0:0:0/block/sdc",
                None
            ),
            DiskTransport::Usb
        );
        assert_eq!(
            t(
                "sdd",
                "/sys/devices/p/virtio2/host2/target2:0:0/2:0:0:0/block/sdd",
                None
            ),
            DiskTransport::Scsi
        );
        assert_eq!(
            t(
                "mmcblk0",
                "/sys/devices/p/mmc_host/mmc0/mmc0:0001/block/mmcblk0",
                None
            ),
            DiskTransport::Mmc
        );
        assert_eq!(
            t("xvda", "/sys/devices/vbd-51712/block/xvda", None),
            DiskTransport::Unknown
        );
        assert_eq!(
            t("sdx", "/sys/devices/p/x/block/sdx", Some("virtio_blk")),
            DiskTransport::Virtio
        );
        // "data" or "hostname" in a path are not transports.
        assert_eq!(
            t("sdy", "/fixtures/data/hostname/block/sdy", None),
            DiskTransport::Unknown
        );
    }

    #[test]
    fn vpd_page_80() {
        assert_eq!(
            parse_vpd_pg80(b"\x00\x80\x00\x08ZC20ABCD"),
            Some("ZC20ABCD".into())
        );
        assert_eq!(
            parse_vpd_pg80(b"\x00\x80\x00\x0a  S3Z1  \x00\x00"),
            Some("S3Z1".into())
        );
        assert_eq!(
            parse_vpd_pg80(b"\x00\x80\x00\xffshort"),
            Some("short".into())
        );
        assert_eq!(parse_vpd_pg80(b"\x00\x83\x00\x04abcd"), None);
        assert_eq!(parse_vpd_pg80(b"\x00\x80"), None);
        assert_eq!(parse_vpd_pg80(b"\x00\x80\x00\x00"), None);
    }
}
