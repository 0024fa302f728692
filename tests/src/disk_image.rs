//! The "marker" disk image: a small raw disk that stands in for an installed operating
//! system. `deploy/disk-image/build` makes it (MBR + one FAT partition with SYSLINUX,
//! Debian's kernel and a busybox initramfs); booted from the disk under SeaBIOS its
//! /init prints, on the serial console:
//!
//! ```text
//! SUBSTRUCT-DISK-OS-UP <marker>
//! SUBSTRUCT-DISK-CMDLINE <the kernel's /proc/cmdline>
//! SUBSTRUCT-DISK-ROOT disk=/dev/vda part=/dev/vda1 bytes=<size> serial=<serial> marker=<marker>
//! SUBSTRUCT-DISK-OS-IDLE
//! ```
//!
//! and idles. With syslinux-efi installed it also boots under UEFI (OVMF). A test that installs this image on a VM's disk and reboots it knows the
//! VM came up from its own disk (and from which image) by the marker.
//!
//! The cached image is shared by every test of the run: copy it before attaching it
//! read-write to a VM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::{target_dir, workspace_root};

/// The marker of the image [`marker_disk_image`] builds.
pub const DISK_MARKER: &str = "substruct-test-disk";
/// The first line the image's /init prints, followed by a space and the marker.
pub const OS_UP: &str = "SUBSTRUCT-DISK-OS-UP";
/// The line with the kernel's command line.
pub const CMDLINE: &str = "SUBSTRUCT-DISK-CMDLINE";
/// The line naming the disk the partition was found on.
pub const ROOT: &str = "SUBSTRUCT-DISK-ROOT";
/// The last line: /init is done and idles.
pub const OS_IDLE: &str = "SUBSTRUCT-DISK-OS-IDLE";

/// syslinux.efi (package syslinux-efi): when installed, the image also boots under UEFI.
pub const UEFI_LOADER: &str = "/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi";

/// `SUBSTRUCT-DISK-OS-UP <marker>`: what to wait for on a VM's serial console.
pub fn os_up_line(marker: &str) -> String {
    format!("{OS_UP} {marker}")
}

static DISK_LOCK: Mutex<()> = Mutex::new(());

/// The build script, `deploy/disk-image/build`.
pub fn build_script() -> PathBuf {
    workspace_root().join("deploy/disk-image/build")
}

/// Builds (or reuses) the marker disk image with [`DISK_MARKER`], under
/// `target/disk-image/`. Returns the raw image's path.
pub fn marker_disk_image() -> Result<PathBuf> {
    marker_disk_image_with(DISK_MARKER)
}

/// Builds (or reuses) a marker disk image with `marker` (1-64 characters from
/// `[A-Za-z0-9._:-]`) as `target/disk-image/<marker>.img`. It boots under BIOS, and
/// under UEFI too when syslinux-efi ([`UEFI_LOADER`]) is installed. It is rebuilt when
/// the build script, a kernel in /boot, busybox or syslinux.efi changed since it was
/// made; builds are serialised across threads and test binaries.
pub fn marker_disk_image_with(marker: &str) -> Result<PathBuf> {
    let valid = !marker.is_empty()
        && marker.len() <= 64
        && marker
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b));
    if !valid {
        bail!("disk marker {marker:?} must be 1-64 characters from [A-Za-z0-9._:-]");
    }
    let _guard = DISK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let out = target_dir().join("disk-image");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(out.join(".lock"))?;
    lock.lock()
        .with_context(|| format!("locking {}", out.join(".lock").display()))?;

    let script = build_script();
    let image = out.join(format!("{marker}.img"));
    let stamp = out.join(format!("{marker}.img.inputs"));
    let inputs = inputs_fingerprint(&script)?;
    let fresh = std::fs::read_to_string(&stamp)
        .map(|s| s == inputs)
        .unwrap_or(false);
    if fresh && image.exists() {
        return Ok(image);
    }
    let output = Command::new(&script)
        .arg(&image)
        .arg(marker)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} {marker} failed ({}):\n{}\n{}",
            script.display(),
            image.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::write(&stamp, &inputs).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(image)
}

/// What the image's inputs look like now: the script's hash, and the size and mtime
/// of every kernel in /boot and of busybox.
fn inputs_fingerprint(script: &Path) -> Result<String> {
    let body = std::fs::read(script).with_context(|| format!("reading {}", script.display()))?;
    let mut text = format!("script fnv1a64={:016x}\n", fnv1a64(&body));
    let mut files: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.extend(["/bin/busybox", "/usr/bin/busybox", UEFI_LOADER].map(PathBuf::from));
    for f in files {
        if let Ok(meta) = std::fs::metadata(&f) {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            text.push_str(&format!("{} {} {mtime}\n", f.display(), meta.len()));
        }
    }
    Ok(text)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a booted marker disk reported on its console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOsReport {
    /// The marker from the kernel command line.
    pub marker: String,
    /// The kernel's /proc/cmdline.
    pub cmdline: String,
    /// The whole disk holding the partition, e.g. `/dev/vda`, `/dev/nvme0n1`.
    pub disk: String,
    /// The partition labelled SUBSTRUCT, e.g. `/dev/vda1`.
    pub part: String,
    /// The disk's size in bytes.
    pub bytes: u64,
    /// The disk's serial number (`-` when it has none).
    pub serial: String,
    /// The contents of the MARKER file on the partition (`-` if unreadable).
    pub fs_marker: String,
}

/// Reads the report lines out of a serial console log; `None` until the ROOT line
/// (with a disk) has been printed.
pub fn parse_report(serial: &str) -> Option<DiskOsReport> {
    let rest = |prefix: &str| {
        serial
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix)?.strip_prefix(' '))
            .map(str::to_owned)
    };
    let marker = rest(OS_UP)?;
    let cmdline = rest(CMDLINE)?;
    let root = rest(ROOT)?;
    let field = |name: &str| {
        root.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some(DiskOsReport {
        marker,
        cmdline,
        disk: field("disk")?,
        part: field("part")?,
        bytes: field("bytes")?.parse().ok()?,
        serial: field("serial")?,
        fs_marker: field("marker")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_report_lines() {
        let log = "noise\n[ 1.9] Run /init as init process\n\
            SUBSTRUCT-DISK-OS-UP m1\n\
            SUBSTRUCT-DISK-CMDLINE BOOT_IMAGE=/vmlinuz substruct.disk_marker=m1\n\
            SUBSTRUCT-DISK-ROOT disk=/dev/nvme0n1 part=/dev/nvme0n1p1 bytes=14680064 serial=S-1 marker=m1\n";
        let r = parse_report(log).unwrap();
        assert_eq!(r.marker, "m1");
        assert_eq!(r.cmdline, "BOOT_IMAGE=/vmlinuz substruct.disk_marker=m1");
        assert_eq!(r.disk, "/dev/nvme0n1");
        assert_eq!(r.part, "/dev/nvme0n1p1");
        assert_eq!(r.bytes, 14_680_064);
        assert_eq!(r.serial, "S-1");
        assert_eq!(r.fs_marker, "m1");
    }

    #[test]
    fn no_report_without_a_root_disk() {
        let log = "SUBSTRUCT-DISK-OS-UP m1\nSUBSTRUCT-DISK-CMDLINE x\n\
            SUBSTRUCT-DISK-ROOT none (no partition labelled SUBSTRUCT; block devices: )\n";
        assert_eq!(parse_report(log), None);
        assert_eq!(parse_report("SUBSTRUCT-DISK-OS-UP m1\n"), None);
    }

    #[test]
    fn rejects_bad_markers() {
        for bad in ["", "a b", "x/y", "$(reboot)", &"a".repeat(65)] {
            let err = marker_disk_image_with(bad).unwrap_err().to_string();
            assert!(err.contains("must be 1-64 characters"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn fnv_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
