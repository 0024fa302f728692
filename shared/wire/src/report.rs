//! The hardware report: what a prospector found on one machine.
//!
//! Every string fact is optional: firmware leaves fields empty, and parsers must not
//! invent values. Bogus-but-present values ("To be filled by O.E.M.", all-zero UUIDs)
//! are kept as read; [`is_bogus_identity`] tells the controller to ignore them for
//! identity.

use serde::{Deserialize, Serialize};

use crate::ids::Mac;

/// Everything the prospector reports about one machine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HardwareReport {
    /// Version of the prospector that gathered this report.
    pub prospector_version: String,
    pub boot_mode: BootMode,
    pub dmi: Dmi,
    pub cpu: Cpu,
    pub memory: Memory,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub pci: Vec<PciDevice>,
    /// The BMC as the host sees it in-band (IPMI system interface), when there is one
    /// (wire version 2; older reports decode with `None`).
    #[serde(default)]
    pub bmc: Option<Bmc>,
    /// Whether UEFI Secure Boot is on, as the firmware told the kernel: `Some(true)`:
    /// UEFI Secure Boot enforced; `Some(false)`: off, or a BIOS boot; `None`: not known
    /// (wire version 3; older reports decode with `None`).
    #[serde(default)]
    pub secure_boot: Option<bool>,
}

/// The report as wire version 1 carried it (no `bmc`): still read from older
/// prospectors ([`crate::envelope::WireMessage::take_older`]).
#[derive(Debug, Deserialize)]
pub(crate) struct HardwareReportV1 {
    prospector_version: String,
    boot_mode: BootMode,
    dmi: Dmi,
    cpu: Cpu,
    memory: Memory,
    disks: Vec<Disk>,
    nics: Vec<Nic>,
    pci: Vec<PciDevice>,
}

impl From<HardwareReportV1> for HardwareReport {
    fn from(v1: HardwareReportV1) -> Self {
        Self {
            prospector_version: v1.prospector_version,
            boot_mode: v1.boot_mode,
            dmi: v1.dmi,
            cpu: v1.cpu,
            memory: v1.memory,
            disks: v1.disks,
            nics: v1.nics,
            pci: v1.pci,
            bmc: None,
            secure_boot: None,
        }
    }
}

/// The report as wire version 2 carried it (`bmc`, no `secure_boot`): still read from
/// older prospectors ([`crate::envelope::WireMessage::take_older`]).
#[derive(Debug, Deserialize)]
pub(crate) struct HardwareReportV2 {
    prospector_version: String,
    boot_mode: BootMode,
    dmi: Dmi,
    cpu: Cpu,
    memory: Memory,
    disks: Vec<Disk>,
    nics: Vec<Nic>,
    pci: Vec<PciDevice>,
    bmc: Option<Bmc>,
}

impl From<HardwareReportV2> for HardwareReport {
    fn from(v2: HardwareReportV2) -> Self {
        Self {
            prospector_version: v2.prospector_version,
            boot_mode: v2.boot_mode,
            dmi: v2.dmi,
            cpu: v2.cpu,
            memory: v2.memory,
            disks: v2.disks,
            nics: v2.nics,
            pci: v2.pci,
            bmc: v2.bmc,
            secure_boot: None,
        }
    }
}

/// The machine's BMC, read in-band over the IPMI system interface (`/dev/ipmi0`): what
/// an operator needs to enroll it (`substruct machines bmc set`). Values as the BMC
/// reports them; nothing here is a credential.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bmc {
    /// IPMI version the BMC implements (`"2.0"`).
    pub ipmi_version: Option<String>,
    /// IANA enterprise number of the BMC's manufacturer (Get Device ID).
    pub manufacturer_id: Option<u32>,
    /// Firmware revision (`"1.23"`).
    pub firmware: Option<String>,
    /// Its LAN channels' settings, by channel number.
    pub lan: Vec<BmcLan>,
}

/// One LAN channel of a BMC (IPMI LAN configuration parameters).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BmcLan {
    pub channel: u8,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv4))]
    pub ip: Option<std::net::Ipv4Addr>,
    /// `static`, `dhcp`, `bios`, `other` or `unspecified`.
    pub ip_source: Option<String>,
    pub mac: Option<Mac>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv4))]
    pub netmask: Option<std::net::Ipv4Addr>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv4))]
    pub gateway: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    #[default]
    Bios,
    Uefi,
}

/// SMBIOS / DMI identity, as exposed in `/sys/class/dmi/id`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dmi {
    pub sys_vendor: Option<String>,
    pub product_name: Option<String>,
    pub product_version: Option<String>,
    pub product_serial: Option<String>,
    /// SMBIOS system UUID, lowercase, as the kernel prints it.
    pub product_uuid: Option<String>,
    pub product_sku: Option<String>,
    pub product_family: Option<String>,
    pub board_vendor: Option<String>,
    pub board_name: Option<String>,
    pub board_serial: Option<String>,
    pub chassis_serial: Option<String>,
    pub chassis_asset_tag: Option<String>,
    pub bios_vendor: Option<String>,
    pub bios_version: Option<String>,
    pub bios_date: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cpu {
    pub model: Option<String>,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    /// `vmx` (Intel VT-x) or `svm` (AMD-V) when the CPU offers it.
    pub virtualization: Option<String>,
    pub microcode: Option<String>,
    /// Flags that matter for placement (virtualization, AES, AVX family, ...).
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Memory {
    pub total_bytes: u64,
    /// Populated slots, where the SMBIOS tables are readable.
    pub dimms: Vec<Dimm>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dimm {
    pub slot: Option<String>,
    pub size_bytes: u64,
    /// DDR4, DDR5, RAM (QEMU), ...
    pub kind: Option<String>,
    pub speed_mts: Option<u32>,
    pub serial: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DiskTransport {
    Nvme,
    Sata,
    Sas,
    Scsi,
    Virtio,
    Usb,
    Mmc,
    #[default]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Disk {
    /// Kernel name: `sda`, `nvme0n1`, `vda`.
    pub name: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub rotational: bool,
    pub transport: DiskTransport,
    pub removable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Nic {
    pub name: String,
    pub mac: Mac,
    pub driver: Option<String>,
    pub pci_address: Option<String>,
    /// Link speed in Mbit/s, when the link is up and the driver knows it.
    pub speed_mbps: Option<u32>,
    pub carrier: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PciDevice {
    /// `0000:3b:00.0`
    pub address: String,
    pub vendor_id: u16,
    pub device_id: u16,
    /// 24-bit class code, e.g. `0x020000` for an Ethernet controller.
    pub class: u32,
}

/// Values firmware puts in identity fields when it has nothing real to say.
pub fn is_bogus_identity(value: &str) -> bool {
    let v = value.trim();
    if v.is_empty() {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    const BOGUS: &[&str] = &[
        "to be filled by o.e.m.",
        "to be filled by oem",
        "default string",
        "system serial number",
        "system product name",
        "chassis serial number",
        "base board serial number",
        "not specified",
        "not applicable",
        "not available",
        "none",
        "n/a",
        "na",
        "0",
        "0123456789",
        "123456789",
        "serial",
        "invalid",
        "unknown",
        "empty",
        "xxxxxxxxxx",
        "o.e.m.",
        "oem",
    ];
    if BOGUS.contains(&lower.as_str()) {
        return true;
    }
    // All one repeated character after dropping separators: 0000..., FFFF..., "........".
    let core: Vec<char> = lower
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | ':'))
        .collect();
    if let Some(first) = core.first() {
        if core.iter().all(|c| c == first) {
            return true;
        }
    }
    // The well-known QEMU/SeaBIOS "03000200-0400-0500-0006-000700080009" placeholder.
    lower == "03000200-0400-0500-0006-000700080009"
}

impl HardwareReport {
    /// The SMBIOS UUID when it is real (not empty, all-zero, all-F or a placeholder).
    pub fn usable_uuid(&self) -> Option<&str> {
        usable(self.dmi.product_uuid.as_deref())
    }
    /// The first real serial among system, chassis and board.
    pub fn usable_serial(&self) -> Option<&str> {
        usable(self.dmi.product_serial.as_deref())
            .or_else(|| usable(self.dmi.chassis_serial.as_deref()))
            .or_else(|| usable(self.dmi.board_serial.as_deref()))
    }
    /// Every usable NIC MAC, sorted.
    pub fn macs(&self) -> Vec<Mac> {
        let mut macs: Vec<Mac> = self
            .nics
            .iter()
            .map(|n| n.mac)
            .filter(Mac::is_usable)
            .collect();
        macs.sort();
        macs.dedup();
        macs
    }
}

fn usable(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|v| !is_bogus_identity(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bogus_values_are_recognised() {
        for v in [
            "To be filled by O.E.M.",
            "Default string",
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "  ",
            "0",
            "Not Specified",
        ] {
            assert!(is_bogus_identity(v), "{v}");
        }
        for v in [
            "CZ21340XYZ",
            "4c4c4544-0042-3510-8051-c4c04f4b4c32",
            "QM00001",
        ] {
            assert!(!is_bogus_identity(v), "{v}");
        }
    }
}
