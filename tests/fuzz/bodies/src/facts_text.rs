use std::path::Path;

use substruct_prospector::cmdline;
use substruct_prospector::facts::{cpu, disks, memory, nics, pci};

/// The prospector's text parsers of `/proc` and `/sys` files: `/proc/cpuinfo`
/// (`parse_cpuinfo`), `/proc/meminfo` (`parse_mem_total`), the kernel command line
/// (`cmdline::parse`), a NIC's `speed` (`parse_speed`), PCI ids (`parse_hex`), a SCSI
/// VPD page 0x80 (`parse_vpd_pg80`) and the disk transport classifier (`transport`).
///
/// Input: the bytes of one such file. The VPD parser gets them raw; the others get them
/// as (lossy) UTF-8 text; the one-line parsers get its first line, and `transport` gets
/// the first line as the disk name, the whole text as the device path and the second
/// line as the driver.
pub fn facts_text(data: &[u8]) {
    let _ = disks::parse_vpd_pg80(data);
    let text = String::from_utf8_lossy(data);
    let _ = cpu::parse_cpuinfo(&text);
    let _ = memory::parse_mem_total(&text);
    let _ = cmdline::parse(&text);
    let first = text.lines().next().unwrap_or_default();
    let _ = nics::parse_speed(first);
    let _ = pci::parse_hex(first);
    let driver = text.lines().nth(1);
    let _ = disks::transport(first, Path::new(text.as_ref()), driver);
}
