//! The marker disk image (`deploy/disk-image/build`): its layout, and real boots from
//! the disk under SeaBIOS (QEMU, TCG, no network) that must print the marker.
//! Skips (printing why) when not root or a tool is missing, or fails under
//! `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1` (the gate in `substruct_testkit::gate`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::Netns;
use substruct_testkit::qemu::{
    acquire_vm_slot, DiskBus, DiskSpec, Firmware, Vm, VmSpec, OVMF_CODE,
};
use substruct_tests::disk_image::{
    build_script, marker_disk_image, marker_disk_image_with, os_up_line, parse_report,
    DiskOsReport, DISK_MARKER, OS_IDLE, OS_UP, ROOT, UEFI_LOADER,
};

/// What booting a marker disk needs (QEMU on an isolated NIC: no tap).
const DISK_BOOT_NEEDS: [Need<'static>; 5] = [
    Need::Netns,
    Need::Tool("qemu-system-x86_64"),
    Need::Tool("mkfs.vfat"),
    Need::Tool("mcopy"),
    Need::Tool("syslinux"),
];
const BUILD_TOOLS: &[&str] = &[
    "mkfs.vfat",
    "mcopy",
    "mtype",
    "syslinux",
    "cpio",
    "modprobe",
];
const MAX_IMAGE_BYTES: u64 = 32 * 1024 * 1024;
const MBR_BIN: &str = "/usr/lib/syslinux/mbr/mbr.bin";
/// Generous for TCG on a shared 2-core machine; the wait returns as soon as it can.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn build(out: &Path, marker: &str) -> Result<Vec<u8>> {
    let status = Command::new(build_script())
        .arg(out)
        .arg(marker)
        .status()
        .context("running deploy/disk-image/build")?;
    ensure!(status.success(), "deploy/disk-image/build failed: {status}");
    Ok(std::fs::read(out)?)
}

fn le32(b: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[test]
fn build_is_reproducible_small_and_a_partitioned_syslinux_disk() -> Result<()> {
    let mut needs = vec![Need::Netns, Need::Tool("qemu-system-x86_64")];
    needs.extend(BUILD_TOOLS.iter().map(|t| Need::Tool(t)));
    if !system_test(&needs) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let a = build(&dir.path().join("a.img"), "repro-1")?;
    let b = build(&dir.path().join("b.img"), "repro-1")?;
    let c = build(&dir.path().join("c.img"), "repro-2")?;
    assert!(a == b, "two builds with the same marker differ");
    assert!(a != c, "two markers gave the same image");
    assert!(
        a.len() as u64 <= MAX_IMAGE_BYTES,
        "image is {} bytes",
        a.len()
    );
    assert_eq!(a.len() % (1024 * 1024), 0, "size not a whole MiB");

    // MBR: syslinux's boot code, one active FAT partition at 1 MiB, the signature.
    let mbr_code = std::fs::read(MBR_BIN)?;
    assert_eq!(
        &a[..440],
        &mbr_code[..440],
        "MBR boot code is not {MBR_BIN}"
    );
    assert_eq!(&a[510..512], &[0x55, 0xaa]);
    let entry = &a[446..462];
    assert_eq!(entry[0], 0x80, "partition 1 is not active");
    assert_eq!(entry[4], 0x0c, "partition 1 is not FAT32-LBA");
    let start = le32(&entry[8..12]);
    let sectors = le32(&entry[12..16]);
    assert_eq!(start, 2048);
    assert!(
        sectors > 0 && (start + sectors) * 512 <= a.len() as u64,
        "partition {start}+{sectors} does not fit in {} bytes",
        a.len()
    );
    assert!(
        a[462..510].iter().all(|&x| x == 0),
        "more than one partition"
    );
    // The other marker's disk id differs (it is derived from the marker).
    assert_ne!(&a[440..444], &c[440..444]);

    // The partition: a SYSLINUX boot sector and the files, readable with mtools.
    let vbr = &a[1024 * 1024..1024 * 1024 + 512];
    assert_eq!(&vbr[3..11], b"SYSLINUX");
    assert_eq!(&vbr[510..512], &[0x55, 0xaa]);
    assert_eq!(
        le32(&vbr[28..32]),
        2048,
        "hidden sectors != partition start"
    );
    let img = dir.path().join("a.img");
    let spec = format!("{}@@1M", img.display());
    let mtype = |file: &str| -> Result<String> {
        let out = Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &spec, file])
            .output()?;
        ensure!(out.status.success(), "mtype {file} failed: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(mtype("::/MARKER")?, "repro-1\n");
    let cfg = mtype("::/syslinux.cfg")?;
    assert!(
        cfg.contains("APPEND console=ttyS0,115200 panic=-1 substruct.disk_marker=repro-1"),
        "{cfg}"
    );
    let out = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-a", "-i", &spec, "::/"])
        .output()?;
    let listing = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    for f in ["ldlinux  sys", "ldlinux  c32", "vmlinuz", "initrd   img"] {
        assert!(listing.contains(f), "{f} missing:\n{listing}");
    }
    if Path::new(UEFI_LOADER).exists() {
        let out = Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-a", "-i", &spec, "::/EFI/BOOT"])
            .output()?;
        let listing = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        for f in ["bootx64  efi", "ldlinux  e64", "syslinux cfg"] {
            assert!(listing.contains(f), "UEFI loader: {f} missing:\n{listing}");
        }
    }

    // A bad marker is refused before anything is written.
    let bad = dir.path().join("bad.img");
    let status = Command::new(build_script())
        .arg(&bad)
        .arg("no spaces")
        .stderr(std::process::Stdio::null())
        .status()?;
    assert!(!status.success());
    assert!(!bad.exists());
    Ok(())
}

/// Boots a copy of `image` as the only disk (no NIC, disk first) under `firmware` and
/// returns what it reported and the seconds from QEMU start to the marker.
fn boot_from_disk(
    tag: &str,
    firmware: Firmware,
    image: &Path,
    bus: DiskBus,
    serial: &str,
    marker: &str,
) -> Result<(DiskOsReport, f64, String)> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("substruct-{tag}-"))
        .tempdir()?;
    let disk = dir.path().join("disk.img");
    std::fs::copy(image, &disk)?;
    let ns = Netns::create(tag)?;
    let mut spec = VmSpec::new(tag, firmware);
    spec.memory_mb = 256;
    // No NIC: bootindex=1 on the disk is QEMU's `-boot c`.
    spec.netboot_first = false;
    spec.disks.push(DiskSpec {
        bus,
        size_bytes: 0,
        serial: serial.into(),
        image: Some(disk),
    });
    let _slot = acquire_vm_slot()?;
    let mut vm = Vm::start(&ns, &spec, dir.path())?;
    let up = vm.wait_for_serial(&os_up_line(marker), BOOT_TIMEOUT)?;
    vm.wait_for_serial(OS_IDLE, BOOT_TIMEOUT)?;
    let log = vm.serial();
    let report =
        parse_report(&log).with_context(|| format!("no complete {ROOT} report in:\n{log}"))?;
    Ok((report, up.as_secs_f64(), log))
}

fn check_common(report: &DiskOsReport, log: &str, marker: &str, serial: &str) {
    assert!(
        log.contains("SYSLINUX") || log.contains("Loading /vmlinuz"),
        "not booted by SYSLINUX:\n{log}"
    );
    assert!(!log.contains("Kernel panic"), "kernel panic:\n{log}");
    assert_eq!(report.marker, marker);
    assert_eq!(report.fs_marker, marker, "MARKER file on the partition");
    assert!(
        report
            .cmdline
            .split_whitespace()
            .any(|a| a == format!("substruct.disk_marker={marker}")),
        "{report:?}"
    );
    assert!(report.cmdline.contains("console=ttyS0"), "{report:?}");
    assert_eq!(report.serial, serial);
}

#[test]
fn seabios_boots_the_marker_disk_from_a_virtio_disk() -> Result<()> {
    if !system_test(&DISK_BOOT_NEEDS) {
        return Ok(());
    }
    let image = marker_disk_image()?;
    let size = std::fs::metadata(&image)?.len();
    let (report, up, log) = boot_from_disk(
        "disk-vd",
        Firmware::Bios,
        &image,
        DiskBus::Virtio,
        "MARK-VD-1",
        DISK_MARKER,
    )?;
    println!("marker disk: {size} bytes; SeaBIOS -> {OS_UP} in {up:.1} s (virtio, TCG)");
    check_common(&report, &log, DISK_MARKER, "MARK-VD-1");
    assert_eq!(report.disk, "/dev/vda");
    assert_eq!(report.part, "/dev/vda1");
    assert_eq!(report.bytes, size);
    Ok(())
}

#[test]
fn seabios_boots_a_marker_disk_with_its_own_marker_from_nvme() -> Result<()> {
    if !system_test(&DISK_BOOT_NEEDS) {
        return Ok(());
    }
    let marker = "nvme-check.2";
    let image = marker_disk_image_with(marker)?;
    let size = std::fs::metadata(&image)?.len();
    let (report, up, log) = boot_from_disk(
        "disk-nv",
        Firmware::Bios,
        &image,
        DiskBus::Nvme,
        "MARK-NV-1",
        marker,
    )?;
    println!("marker disk: SeaBIOS -> {OS_UP} in {up:.1} s (nvme, TCG)");
    check_common(&report, &log, marker, "MARK-NV-1");
    assert!(
        !log.contains(&os_up_line(DISK_MARKER)),
        "booted the default marker"
    );
    assert_eq!(report.disk, "/dev/nvme0n1");
    assert_eq!(report.part, "/dev/nvme0n1p1");
    assert_eq!(report.bytes, size);
    Ok(())
}

#[test]
fn ovmf_boots_the_marker_disk_through_its_uefi_loader() -> Result<()> {
    if !system_test(&DISK_BOOT_NEEDS) {
        return Ok(());
    }
    // Packages syslinux-efi and ovmf.
    if !system_test(&[Need::File(UEFI_LOADER), Need::File(OVMF_CODE)]) {
        return Ok(());
    }
    let image = marker_disk_image()?;
    let (report, up, log) = boot_from_disk(
        "disk-efi",
        Firmware::Uefi,
        &image,
        DiskBus::Virtio,
        "MARK-EFI-1",
        DISK_MARKER,
    )?;
    println!("marker disk: OVMF -> {OS_UP} in {up:.1} s (virtio, TCG)");
    assert!(
        log.contains("UEFI Misc Device") || log.contains("BdsDxe"),
        "not started by OVMF:\n{log}"
    );
    check_common(&report, &log, DISK_MARKER, "MARK-EFI-1");
    assert_eq!(report.disk, "/dev/vda");
    Ok(())
}
