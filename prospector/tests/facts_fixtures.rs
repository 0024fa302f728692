//! Fact parsers on the captured-shaped trees in `tests/fixtures/` (see its README):
//! exact values for every fixture.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use substruct_prospector::cmdline::KernelArgs;
use substruct_prospector::facts;
use substruct_wire::report::{
    is_bogus_identity, BootMode, Dimm, Disk, DiskTransport, HardwareReport, Nic, PciDevice,
};
use substruct_wire::Mac;

const DELL_UUID: &str = "4c4c4544-0058-4b10-8032-b7c04f4d3533";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn gather(name: &str) -> HardwareReport {
    let root = fixture(name);
    assert!(root.is_dir(), "missing fixture {}", root.display());
    facts::gather(&root)
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

fn mac(v: &str) -> Mac {
    Mac::parse(v).unwrap()
}

fn nic(name: &str, m: &str, driver: &str, pci: &str, speed: Option<u32>, carrier: bool) -> Nic {
    Nic {
        name: name.into(),
        mac: mac(m),
        driver: s(driver),
        pci_address: s(pci),
        speed_mbps: speed,
        carrier: Some(carrier),
    }
}

fn dimm(slot: &str, gib: u64, kind: &str, speed: Option<u32>, serial: Option<&str>) -> Dimm {
    Dimm {
        slot: s(slot),
        size_bytes: gib << 30,
        kind: s(kind),
        speed_mts: speed,
        serial: serial.map(str::to_owned),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn dell_r740() {
    let r = gather("dell-r740");
    assert_eq!(r.prospector_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(r.boot_mode, BootMode::Uefi);
    assert_eq!(
        r.secure_boot, None,
        "UEFI without sys/kernel/boot_params: not known"
    );
    let d = &r.dmi;
    assert_eq!(d.sys_vendor, s("Dell Inc."));
    assert_eq!(d.product_name, s("PowerEdge R740"));
    assert_eq!(d.product_version, None, "empty file is a missing fact");
    assert_eq!(d.product_serial, s("7XK2M53"));
    assert_eq!(d.product_uuid, s(DELL_UUID));
    assert_eq!(d.product_sku, s("SKU=NotProvided;ModelName=PowerEdge R740"));
    assert_eq!(d.product_family, s("PowerEdge"));
    assert_eq!(d.board_vendor, s("Dell Inc."));
    assert_eq!(d.board_name, s("06WXJT"));
    assert_eq!(d.board_serial, s(".7XK2M53.CNFCP0096S00JT."));
    assert_eq!(d.chassis_serial, s("7XK2M53"));
    assert_eq!(d.chassis_asset_tag, None);
    assert_eq!(d.bios_vendor, s("Dell Inc."));
    assert_eq!(d.bios_version, s("2.12.2"));
    assert_eq!(d.bios_date, s("07/09/2021"));
    assert_eq!(r.usable_uuid(), Some(DELL_UUID));
    assert_eq!(r.usable_serial(), Some("7XK2M53"));

    let c = &r.cpu;
    assert_eq!(c.model, s("Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz"));
    assert_eq!((c.sockets, c.cores, c.threads), (2, 32, 64));
    assert_eq!(c.virtualization, s("vmx"));
    assert_eq!(c.microcode, s("0x2006b06"));
    assert_eq!(
        c.flags,
        strings(&[
            "vmx", "aes", "sse4_2", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "rdrand",
            "pdpe1gb"
        ])
    );

    assert_eq!(r.memory.total_bytes, 196_438_760 * 1024);
    let expected: Vec<Dimm> = ["A", "B"]
        .iter()
        .flat_map(|bank| {
            (1..=6).map(move |n| {
                let serial = format!("3{}D3E1F{n}", if *bank == "A" { 6 } else { 7 });
                dimm(&format!("{bank}{n}"), 16, "DDR4", Some(2666), Some(&serial))
            })
        })
        .collect();
    assert_eq!(r.memory.dimms, expected, "12 populated of 24 slots");

    let nvme = |name: &str, serial: &str, wwn: &str| Disk {
        name: name.into(),
        size_bytes: 1_600_321_314_816,
        model: s("Dell Express Flash PM1725b 1.6TB SFF"),
        serial: s(serial),
        wwn: s(wwn),
        rotational: false,
        transport: DiskTransport::Nvme,
        removable: false,
    };
    let sas = |name: &str, serial: &str, wwn: &str| Disk {
        name: name.into(),
        size_bytes: 2_000_398_934_016,
        model: s("ST2000NM0045"),
        serial: s(serial),
        wwn: s(wwn),
        rotational: true,
        transport: DiskTransport::Sas,
        removable: false,
    };
    assert_eq!(
        r.disks,
        vec![
            nvme(
                "nvme0n1",
                "S4CRNE0M700123",
                "eui.33524e304d7001230025384500000001"
            ),
            nvme(
                "nvme1n1",
                "S4CRNE0M700456",
                "eui.33524e304d7004560025384500000001"
            ),
            sas("sda", "ZC20ABCD", "naa.5000c500a1b2c3d4"),
            sas("sdb", "ZC20EFGH", "naa.5000c500a1b2c3e8"),
        ],
        "loop0, dm-0 and sr0 are not disks"
    );

    assert_eq!(
        r.nics,
        vec![
            nic(
                "eno1",
                "e4:43:4b:1a:2b:30",
                "ixgbe",
                "0000:19:00.0",
                Some(10000),
                true
            ),
            nic(
                "eno2",
                "e4:43:4b:1a:2b:31",
                "ixgbe",
                "0000:19:00.1",
                Some(10000),
                true
            ),
            nic(
                "ens2f0",
                "3c:fd:fe:a0:b1:c0",
                "i40e",
                "0000:5e:00.0",
                Some(25000),
                true
            ),
            nic(
                "ens2f1",
                "3c:fd:fe:a0:b1:c1",
                "i40e",
                "0000:5e:00.1",
                None,
                false
            ),
        ],
        "lo and virbr0 are virtual"
    );

    let addrs: Vec<&str> = r.pci.iter().map(|p| p.address.as_str()).collect();
    assert_eq!(
        addrs,
        [
            "0000:00:00.0",
            "0000:00:1c.0",
            "0000:19:00.0",
            "0000:19:00.1",
            "0000:3b:00.0",
            "0000:5e:00.0",
            "0000:5e:00.1",
            "0000:d8:00.0",
            "0000:d9:00.0"
        ]
    );
    assert_eq!(
        r.pci[4],
        PciDevice {
            address: "0000:3b:00.0".into(),
            vendor_id: 0x1000,
            device_id: 0x0097,
            class: 0x010700
        }
    );
    assert_eq!(
        r.pci[8],
        PciDevice {
            address: "0000:d9:00.0".into(),
            vendor_id: 0x144d,
            device_id: 0xa822,
            class: 0x010802
        }
    );

    assert_eq!(
        facts::kernel_args(&fixture("dell-r740")),
        KernelArgs {
            site: s("dc1"),
            nats: s("nats://10.77.0.1:4222"),
            token: s("a1b2c3d4e5f6"),
            seed: None,
            edge: None,
            net: None,
            debug: false
        }
    );
}

#[test]
fn desktop_oem() {
    let r = gather("desktop-oem");
    assert_eq!(r.boot_mode, BootMode::Bios);
    assert_eq!(r.secure_boot, Some(false), "a BIOS boot has no Secure Boot");
    let d = &r.dmi;
    let oem = s("To be filled by O.E.M.");
    assert_eq!(d.sys_vendor, oem);
    assert_eq!(d.product_name, oem);
    assert_eq!(d.product_version, oem);
    assert_eq!(d.product_serial, oem, "bogus values are kept as read");
    assert_eq!(d.product_uuid, s("00000000-0000-0000-0000-000000000000"));
    assert_eq!(d.product_sku, s("SKU"));
    assert_eq!(d.product_family, oem);
    assert_eq!(d.board_vendor, s("ASUSTeK COMPUTER INC."));
    assert_eq!(d.board_name, s("PRIME B450M-A"));
    assert_eq!(d.board_serial, s("190436767800123"));
    assert_eq!(d.chassis_serial, s("Default string"));
    assert_eq!(d.chassis_asset_tag, s("Default string"));
    assert_eq!(d.bios_vendor, s("American Megatrends Inc."));
    assert_eq!(d.bios_version, s("2202"));
    assert_eq!(d.bios_date, s("07/13/2020"));
    for bogus in [
        &d.sys_vendor,
        &d.product_serial,
        &d.product_uuid,
        &d.chassis_serial,
    ] {
        assert!(is_bogus_identity(bogus.as_deref().unwrap()), "{bogus:?}");
    }
    assert!(!is_bogus_identity(d.board_serial.as_deref().unwrap()));
    assert_eq!(r.usable_uuid(), None, "all-zero UUID is not an identity");
    assert_eq!(
        r.usable_serial(),
        Some("190436767800123"),
        "falls back to the board serial"
    );

    let c = &r.cpu;
    assert_eq!(c.model, s("AMD Ryzen 5 3600 6-Core Processor"));
    assert_eq!((c.sockets, c.cores, c.threads), (1, 6, 12));
    assert_eq!(c.virtualization, s("svm"));
    assert_eq!(c.microcode, s("0x8701021"));
    assert_eq!(
        c.flags,
        strings(&["svm", "aes", "sse4_2", "avx", "avx2", "sha_ni", "rdrand", "pdpe1gb", "sev"])
    );

    assert_eq!(r.memory.total_bytes, 16_318_580 * 1024);
    assert_eq!(
        r.memory.dimms,
        vec![
            dimm("DIMM_A2", 8, "DDR4", Some(3200), Some("2A1B3C4D")),
            dimm("DIMM_B2", 8, "DDR4", Some(3200), Some("00000000")),
        ],
        "empty slots DIMM_A1 and DIMM_B1 are skipped"
    );

    assert_eq!(
        r.disks,
        vec![
            Disk {
                name: "sda".into(),
                size_bytes: 500_107_862_016,
                model: s("Samsung SSD 860"),
                serial: s("S3Z1NB0K123456A"),
                wwn: s("naa.5002538e40a1b2c3"),
                rotational: false,
                transport: DiskTransport::Sata,
                removable: false,
            },
            Disk {
                name: "sdb".into(),
                size_bytes: 30_752_636_928,
                model: s("Ultra Fit"),
                serial: None,
                wwn: None,
                rotational: true,
                transport: DiskTransport::Usb,
                removable: true,
            },
        ],
        "zram0 is not a disk"
    );
    assert_eq!(
        r.nics,
        vec![nic(
            "enp3s0",
            "2c:f0:5d:12:34:56",
            "r8169",
            "0000:03:00.0",
            Some(1000),
            true
        )]
    );
    assert_eq!(r.pci.len(), 5);
    assert_eq!(
        r.pci[3],
        PciDevice {
            address: "0000:03:00.0".into(),
            vendor_id: 0x10ec,
            device_id: 0x8168,
            class: 0x020000
        }
    );
    assert_eq!(
        facts::kernel_args(&fixture("desktop-oem")),
        KernelArgs::default()
    );
}

#[test]
fn qemu_vm() {
    let r = gather("qemu-vm");
    assert_eq!(r.boot_mode, BootMode::Bios);
    assert_eq!(r.secure_boot, Some(false));
    let d = &r.dmi;
    assert_eq!(d.sys_vendor, s("QEMU"));
    assert_eq!(d.product_name, s("Standard PC (i440FX + PIIX, 1996)"));
    assert_eq!(d.product_version, s("pc-i440fx-7.2"));
    assert_eq!(d.product_serial, s("SUBSTRUCT-VM-0001"));
    assert_eq!(d.product_uuid, s("9a3c5e1f-8b2d-4f6a-a1c3-5d7e9f0b2c4e"));
    assert_eq!(
        (d.product_sku.clone(), d.product_family.clone()),
        (None, None),
        "files absent"
    );
    assert_eq!(
        (
            d.board_vendor.clone(),
            d.board_name.clone(),
            d.board_serial.clone()
        ),
        (None, None, None)
    );
    assert_eq!(
        (d.chassis_serial.clone(), d.chassis_asset_tag.clone()),
        (None, None),
        "empty files"
    );
    assert_eq!(d.bios_vendor, s("SeaBIOS"));
    assert_eq!(d.bios_version, s("1.16.2-debian-1.16.2-1"));
    assert_eq!(d.bios_date, s("04/01/2014"));
    assert_eq!(
        r.usable_uuid(),
        Some("9a3c5e1f-8b2d-4f6a-a1c3-5d7e9f0b2c4e")
    );
    assert_eq!(r.usable_serial(), Some("SUBSTRUCT-VM-0001"));

    let c = &r.cpu;
    assert_eq!(c.model, s("QEMU Virtual CPU version 2.5+"));
    assert_eq!((c.sockets, c.cores, c.threads), (1, 2, 2));
    assert_eq!(c.virtualization, None);
    assert_eq!(c.microcode, s("0x1"));
    assert_eq!(c.flags, strings(&["hypervisor"]));

    assert_eq!(r.memory.total_bytes, 492_876 * 1024);
    assert_eq!(
        r.memory.dimms,
        vec![Dimm {
            slot: s("DIMM 0"),
            size_bytes: 512 << 20,
            kind: s("RAM"),
            speed_mts: None,
            serial: None
        }]
    );

    let nvme_wwn = "nvme.1b36-5355425354525543542d4e564d452d3120202020-\
                    51454d55204e564d65204374726c2020202020202020202020202020202020202020202020202020-00000001";
    assert_eq!(
        r.disks,
        vec![
            Disk {
                name: "nvme0n1".into(),
                size_bytes: 8 << 30,
                model: s("QEMU NVMe Ctrl"),
                serial: s("SUBSTRUCT-NVME-1"),
                wwn: s(nvme_wwn),
                rotational: false,
                transport: DiskTransport::Nvme,
                removable: false,
            },
            Disk {
                name: "vda".into(),
                size_bytes: 20 << 30,
                model: None,
                serial: s("SUBSTRUCT-VDA-1"),
                wwn: None,
                rotational: true,
                transport: DiskTransport::Virtio,
                removable: false,
            },
        ]
    );
    assert_eq!(
        r.nics,
        vec![
            nic(
                "ens3",
                "52:54:00:12:34:01",
                "virtio_net",
                "0000:00:03.0",
                None,
                true
            ),
            nic(
                "ens6",
                "52:54:00:12:34:02",
                "virtio_net",
                "0000:00:06.0",
                None,
                true
            ),
        ],
        "virtio NICs: PCI address from the parent of virtioN, speed -1 is unknown"
    );
    assert_eq!(r.pci.len(), 8);
    assert_eq!(
        r.pci[6],
        PciDevice {
            address: "0000:00:05.0".into(),
            vendor_id: 0x1b36,
            device_id: 0x0010,
            class: 0x010802
        }
    );
    assert_eq!(
        facts::kernel_args(&fixture("qemu-vm")),
        KernelArgs {
            site: s("lab1"),
            nats: s("nats://10.77.0.1:4222"),
            token: s("t0k3n"),
            seed: None,
            edge: None,
            net: None,
            debug: true
        }
    );
}

#[test]
fn dup_uuid_is_a_different_machine_with_the_same_uuid() {
    let dell = gather("dell-r740");
    let r = gather("dup-uuid");
    assert_eq!(r.boot_mode, BootMode::Uefi);
    let d = &r.dmi;
    assert_eq!(d.sys_vendor, s("Supermicro"));
    assert_eq!(d.product_name, s("SYS-121H-TNR"));
    assert_eq!(d.product_version, s("0123456789"));
    assert!(is_bogus_identity("0123456789"));
    assert_eq!(d.product_serial, s("S452718X3C12345"));
    assert_eq!(
        d.product_uuid,
        s(DELL_UUID),
        "uppercase in sysfs, lowercased in the report"
    );
    assert_eq!(d.product_sku, s("To be filled by O.E.M."));
    assert_eq!(d.product_family, s("Hyper"));
    assert_eq!(d.board_vendor, s("Supermicro"));
    assert_eq!(d.board_name, s("X13DEM"));
    assert_eq!(d.board_serial, s("OM23BS012345"));
    assert_eq!(d.chassis_serial, s("C1160LM23AB3456"));
    assert_eq!(d.chassis_asset_tag, s("To be filled by O.E.M."));
    assert_eq!(d.bios_vendor, s("American Megatrends International, LLC."));
    assert_eq!(d.bios_version, s("2.1"));
    assert_eq!(d.bios_date, s("03/14/2024"));

    // Same UUID, nothing else in common: the controller must flag, not merge.
    assert_eq!(r.usable_uuid(), dell.usable_uuid());
    assert_ne!(r.usable_serial(), dell.usable_serial());
    assert!(r.macs().iter().all(|m| !dell.macs().contains(m)));
    let serials = |rep: &HardwareReport| -> Vec<Option<String>> {
        rep.disks.iter().map(|d| d.serial.clone()).collect()
    };
    assert!(serials(&r).iter().all(|s| !serials(&dell).contains(s)));

    let c = &r.cpu;
    assert_eq!(c.model, s("Intel(R) Xeon(R) Gold 5418Y"));
    assert_eq!((c.sockets, c.cores, c.threads), (2, 48, 96));
    assert_eq!(c.virtualization, s("vmx"));
    assert_eq!(c.microcode, s("0x2b000590"));
    assert_eq!(
        c.flags,
        strings(&[
            "vmx", "aes", "sse4_2", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "amx_tile",
            "sha_ni", "rdrand", "pdpe1gb"
        ])
    );

    assert_eq!(r.memory.total_bytes, 527_943_276 * 1024);
    let expected: Vec<Dimm> = [
        "P1-DIMMA1",
        "P1-DIMMB1",
        "P1-DIMMC1",
        "P1-DIMMD1",
        "P2-DIMMA1",
        "P2-DIMMB1",
        "P2-DIMMC1",
        "P2-DIMMD1",
    ]
    .iter()
    .enumerate()
    .map(|(i, slot)| {
        dimm(
            slot,
            64,
            "DDR5",
            Some(4400),
            Some(&format!("80CE0123{i:04X}")),
        )
    })
    .collect();
    assert_eq!(
        r.memory.dimms, expected,
        "64 GiB needs the extended size field, 4400 the extended speed"
    );

    let sata = |name: &str, serial: &str, wwn: &str| Disk {
        name: name.into(),
        size_bytes: 480_103_981_056,
        model: s("Micron_5300_MTFD"),
        serial: s(serial),
        wwn: s(wwn),
        rotational: false,
        transport: DiskTransport::Sata,
        removable: false,
    };
    assert_eq!(
        r.disks,
        vec![
            Disk {
                name: "nvme0n1".into(),
                size_bytes: 960_197_124_096,
                model: s("SAMSUNG MZQL2960HCJR-00A07"),
                serial: s("S64FNE0R501234"),
                wwn: s("eui.36344630525012340025384500000001"),
                rotational: false,
                transport: DiskTransport::Nvme,
                removable: false,
            },
            sata("sda", "2213364A1B2C", "naa.500a0751364a1b2c"),
            sata("sdb", "2213364A1B3D", "naa.500a0751364a1b3d"),
        ],
        "md127 and nbd0 are not disks"
    );
    assert_eq!(
        r.nics,
        vec![
            nic(
                "eno1np0",
                "7c:c2:55:9e:41:a0",
                "bnxt_en",
                "0000:4b:00.0",
                Some(10000),
                true
            ),
            nic(
                "eno2np1",
                "7c:c2:55:9e:41:a1",
                "bnxt_en",
                "0000:4b:00.1",
                None,
                false
            ),
        ]
    );
    assert_eq!(
        facts::kernel_args(&fixture("dup-uuid")),
        KernelArgs {
            site: s("dc2"),
            nats: s("nats://10.78.0.1:4222"),
            token: None,
            seed: None,
            edge: None,
            net: None,
            debug: false
        }
    );
}

#[test]
fn fixture_dmi_tables_survive_every_truncation() {
    for name in ["dell-r740", "desktop-oem", "qemu-vm", "dup-uuid"] {
        let table = std::fs::read(fixture(name).join("sys/firmware/dmi/tables/DMI")).unwrap();
        let full = facts::smbios::parse_dimms(&table);
        assert!(!full.is_empty(), "{name}");
        for cut in 0..table.len() {
            let partial = facts::smbios::parse_dimms(&table[..cut]);
            assert!(partial.len() <= full.len(), "{name} cut at {cut}");
            assert_eq!(partial[..], full[..partial.len()], "{name} cut at {cut}");
        }
    }
}

#[test]
fn a_missing_or_broken_tree_gives_missing_facts() {
    let empty = tempfile::tempdir().unwrap();
    let r = facts::gather(empty.path());
    assert_eq!(
        r,
        HardwareReport {
            prospector_version: env!("CARGO_PKG_VERSION").into(),
            // No `sys/firmware/efi`: a BIOS boot, which has no Secure Boot.
            secure_boot: Some(false),
            ..HardwareReport::default()
        }
    );
    assert_eq!(facts::kernel_args(empty.path()), KernelArgs::default());
    let r = facts::gather(&empty.path().join("does-not-exist"));
    assert!(r.disks.is_empty() && r.nics.is_empty() && r.pci.is_empty());

    // Dangling links, directories where files should be, garbage values.
    let root = empty.path();
    std::fs::create_dir_all(root.join("sys/block")).unwrap();
    std::os::unix::fs::symlink("../devices/nowhere/sdz", root.join("sys/block/sdz")).unwrap();
    std::fs::create_dir_all(root.join("sys/class/net/eth9/device")).unwrap();
    std::fs::write(root.join("sys/class/net/eth9/address"), "not-a-mac\n").unwrap();
    std::fs::create_dir_all(root.join("sys/class/net/eth8/device")).unwrap();
    std::fs::write(
        root.join("sys/class/net/eth8/address"),
        "52:54:00:00:00:08\n",
    )
    .unwrap();
    std::fs::write(root.join("sys/class/net/eth8/speed"), "garbage\n").unwrap();
    std::fs::create_dir_all(root.join("sys/class/dmi/id/product_uuid")).unwrap();
    std::fs::create_dir_all(root.join("sys/bus/pci/devices/0000:00:00.0")).unwrap();
    std::fs::write(
        root.join("sys/bus/pci/devices/0000:00:00.0/vendor"),
        "0x123456\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::write(root.join("proc/cpuinfo"), [0xff, 0xfe, b':', b'\n']).unwrap();
    std::fs::create_dir_all(root.join("sys/firmware/dmi/tables")).unwrap();
    std::fs::write(
        root.join("sys/firmware/dmi/tables/DMI"),
        [17, 0x28, 0, 0, 0, 0],
    )
    .unwrap();
    let r = facts::gather(root);
    assert!(r.disks.is_empty());
    assert_eq!(r.dmi.product_uuid, None);
    assert!(r.pci.is_empty());
    assert!(r.memory.dimms.is_empty());
    assert_eq!(r.nics.len(), 1);
    assert_eq!(r.nics[0].mac, mac("52:54:00:00:00:08"));
    assert_eq!(
        (
            r.nics[0].speed_mbps,
            r.nics[0].driver.clone(),
            r.nics[0].pci_address.clone()
        ),
        (None, None, None)
    );
}
