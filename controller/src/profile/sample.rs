//! The sample machine and token every profile is rendered for before it is saved.

use substruct_wire::report::{
    BootMode, Cpu, Disk, DiskTransport, Dmi, HardwareReport, Memory, Nic,
};
use substruct_wire::{BootToken, Mac, MachineId, SiteId};

use crate::record::MachineRecord;

pub(super) fn sample_token() -> BootToken {
    BootToken::new("0123456789abcdef0123456789abcdef").expect("a valid constant token")
}

/// A realistic machine (a two-socket rack server, four disks, two NICs) that every
/// profile must render for before it is saved.
pub fn sample_machine() -> MachineRecord {
    let mac = |s: &str| Mac::parse(s).expect("a valid constant MAC");
    let facts = HardwareReport {
        prospector_version: "0.1.0".into(),
        boot_mode: BootMode::Uefi,
        dmi: Dmi {
            sys_vendor: Some("Dell Inc.".into()),
            product_name: Some("PowerEdge R650".into()),
            product_version: None,
            product_serial: Some("7XK2J93".into()),
            product_uuid: Some("4c4c4544-0058-4b10-8032-b7c04f4a3933".into()),
            product_sku: Some("SKU=0A6D;ModelName=PowerEdge R650".into()),
            product_family: Some("PowerEdge".into()),
            board_vendor: Some("Dell Inc.".into()),
            board_name: Some("0PJPW3".into()),
            board_serial: Some(".7XK2J93.CNCMS0023E0078.".into()),
            chassis_serial: Some("7XK2J93".into()),
            chassis_asset_tag: None,
            bios_vendor: Some("Dell Inc.".into()),
            bios_version: Some("1.10.2".into()),
            bios_date: Some("06/27/2023".into()),
        },
        cpu: Cpu {
            model: Some("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".into()),
            sockets: 2,
            cores: 64,
            threads: 128,
            virtualization: Some("vmx".into()),
            microcode: Some("0xd0003a5".into()),
            flags: vec!["vmx".into(), "aes".into(), "avx2".into(), "avx512f".into()],
        },
        memory: Memory {
            total_bytes: 256 * 1024 * 1024 * 1024,
            dimms: Vec::new(),
        },
        disks: vec![
            Disk {
                name: "nvme0n1".into(),
                size_bytes: 960_197_124_096,
                model: Some("Dell Ent NVMe P5600 MU U.2 960GB".into()),
                serial: Some("PHAB123400A1960BGN".into()),
                wwn: Some("eui.01000000000000005cd2e4ab12340000".into()),
                rotational: false,
                transport: DiskTransport::Nvme,
                removable: false,
            },
            Disk {
                name: "nvme1n1".into(),
                size_bytes: 960_197_124_096,
                model: Some("Dell Ent NVMe P5600 MU U.2 960GB".into()),
                serial: Some("PHAB123400B2960BGN".into()),
                wwn: None,
                rotational: false,
                transport: DiskTransport::Nvme,
                removable: false,
            },
            Disk {
                name: "sda".into(),
                size_bytes: 7_681_501_126_656,
                model: Some("MZ7L37T6HBLA".into()),
                serial: Some("S6EPNA0T512345".into()),
                wwn: Some("0x5002538f4312abcd".into()),
                rotational: false,
                transport: DiskTransport::Sata,
                removable: false,
            },
            Disk {
                name: "sdb".into(),
                size_bytes: 16_005_464_064,
                model: Some("Internal Dual SD".into()),
                serial: Some("012345678901".into()),
                wwn: None,
                rotational: false,
                transport: DiskTransport::Usb,
                removable: true,
            },
        ],
        nics: vec![
            Nic {
                name: "eno12399np0".into(),
                mac: mac("b4:96:91:c2:10:a0"),
                driver: Some("ice".into()),
                pci_address: Some("0000:31:00.0".into()),
                speed_mbps: Some(25_000),
                carrier: Some(true),
            },
            Nic {
                name: "eno12409np1".into(),
                mac: mac("b4:96:91:c2:10:a1"),
                driver: Some("ice".into()),
                pci_address: Some("0000:31:00.1".into()),
                speed_mbps: None,
                carrier: Some(false),
            },
        ],
        pci: Vec::new(),
        bmc: None,
        secure_boot: Some(true),
    };
    MachineRecord::new(
        MachineId::new("4c4c4544-0058-4b10-8032-b7c04f4a3933").expect("a valid constant id"),
        SiteId::new("sample-site").expect("a valid constant site"),
        facts,
        Vec::new(),
        0,
    )
}
