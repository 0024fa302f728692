//! Hardware facts, read from `/sys` and `/proc` under any root (`/` on a live machine,
//! a captured tree under `tests/fixtures/` in tests).
//!
//! Gathering never fails: a missing or unreadable file is a missing fact (logged at
//! `debug`), never an error. Values are reported as read (trimmed); judging them (bogus
//! serials, placeholder UUIDs) is the controller's job. The parsers of file contents
//! (`cpuinfo`, `meminfo`, the SMBIOS table, `boot_params`, the BMC's answers) are pure
//! functions over bytes; the sysfs walkers only read files and follow symlinks, they
//! never write anything; the BMC is asked only "Get" commands through `dev/ipmi0` under
//! the root.

pub mod bmc;
pub mod cpu;
pub mod disks;
pub mod dmi;
pub mod memory;
pub mod nics;
pub mod pci;
pub mod secure_boot;
pub mod smbios;

mod sysfs;

use std::path::Path;

use substruct_wire::report::{BootMode, HardwareReport};

use crate::cmdline::{self, KernelArgs};

/// Version string put into every report.
pub const PROSPECTOR_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Gathers every fact readable under `root` (`/` on a live machine).
pub fn gather(root: &Path) -> HardwareReport {
    let boot_mode = boot_mode(root);
    HardwareReport {
        prospector_version: PROSPECTOR_VERSION.to_owned(),
        boot_mode,
        dmi: dmi::gather(root),
        cpu: cpu::gather(root),
        memory: memory::gather(root),
        disks: disks::gather(root),
        nics: nics::gather(root),
        pci: pci::gather(root),
        bmc: bmc::gather(root),
        secure_boot: secure_boot::gather(root, boot_mode),
    }
}

/// The `substruct.*` arguments of `<root>/proc/cmdline` (empty when unreadable).
pub fn kernel_args(root: &Path) -> KernelArgs {
    sysfs::read_string(&root.join("proc/cmdline"))
        .map(|line| cmdline::parse(&line))
        .unwrap_or_default()
}

/// UEFI iff the kernel was booted by UEFI firmware (`/sys/firmware/efi` exists).
pub fn boot_mode(root: &Path) -> BootMode {
    if root.join("sys/firmware/efi").is_dir() {
        BootMode::Uefi
    } else {
        BootMode::Bios
    }
}
