//! Bounded, never-failing reads of sysfs/procfs files. Every failure is a `debug` log
//! and a `None`: on real hardware plenty of attributes are absent or refuse reads.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// No sysfs attribute or procfs file we read is larger than this (cpuinfo of a
/// 512-thread machine is ~800 KiB; the SMBIOS table is at most 64 KiB on SMBIOS 2).
pub const MAX_FILE_LEN: u64 = 4 * 1024 * 1024;

/// The bytes of `path`, at most [`MAX_FILE_LEN`].
pub fn read_bytes(path: &Path) -> Option<Vec<u8>> {
    let result = fs::File::open(path).and_then(|f| {
        let mut buf = Vec::new();
        f.take(MAX_FILE_LEN).read_to_end(&mut buf)?;
        Ok(buf)
    });
    match result {
        Ok(buf) => Some(buf),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "fact not readable");
            None
        }
    }
}

/// The text of `path` (lossy UTF-8), untrimmed.
pub fn read_string(path: &Path) -> Option<String> {
    read_bytes(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The trimmed text of `path`; `None` when missing, unreadable or empty.
pub fn read_trimmed(path: &Path) -> Option<String> {
    read_string(path)
        .map(|s| {
            s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_owned()
        })
        .filter(|s| !s.is_empty())
}

/// The file name of a symlink's target (`device/driver` → `ixgbe`).
pub fn link_name(path: &Path) -> Option<String> {
    match fs::read_link(path) {
        Ok(target) => target.file_name().map(|n| n.to_string_lossy().into_owned()),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "link not readable");
            None
        }
    }
}

/// The resolved path of `path` (following every symlink); `None` when it dangles.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    match fs::canonicalize(path) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "path does not resolve");
            None
        }
    }
}

/// Entry names of a directory, sorted; empty when it cannot be listed.
pub fn list_dir(path: &Path) -> Vec<String> {
    match fs::read_dir(path) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "directory not listable");
            Vec::new()
        }
    }
}

/// `true` for `DDDD:BB:DD.F` (a PCI address as sysfs names it; VMD domains have 5 digits).
pub fn is_pci_address(s: &str) -> bool {
    let hex = |p: &str, min: usize, max: usize| {
        (min..=max).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_hexdigit())
    };
    let mut parts = s.split(':');
    let (Some(domain), Some(bus), Some(devfn), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some((dev, func)) = devfn.split_once('.') else {
        return false;
    };
    hex(domain, 4, 8) && hex(bus, 2, 2) && hex(dev, 2, 2) && hex(func, 1, 1)
}

/// The nearest PCI address among the components of `path`, innermost first.
pub fn nearest_pci_address(path: &Path) -> Option<String> {
    path.components()
        .rev()
        .filter_map(|c| c.as_os_str().to_str())
        .find(|c| is_pci_address(c))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert!(is_pci_address("0000:3b:00.0"));
        assert!(is_pci_address("10000:e0:00.0"));
        assert!(!is_pci_address("virtio0"));
        assert!(!is_pci_address("0000:3b:00:0"));
        assert!(!is_pci_address("pci0000:00"));
        assert_eq!(
            nearest_pci_address(Path::new(
                "/sys/devices/pci0000:00/0000:00:1c.0/0000:3b:00.0/virtio0"
            )),
            Some("0000:3b:00.0".into())
        );
        assert_eq!(
            nearest_pci_address(Path::new("/sys/devices/virtual/net/lo")),
            None
        );
    }

    #[test]
    fn missing_files_are_missing_facts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_trimmed(&dir.path().join("nope")), None);
        std::fs::write(dir.path().join("empty"), "  \n").unwrap();
        assert_eq!(read_trimmed(&dir.path().join("empty")), None);
        std::fs::write(dir.path().join("v"), " Dell Inc. \n").unwrap();
        assert_eq!(
            read_trimmed(&dir.path().join("v")).as_deref(),
            Some("Dell Inc.")
        );
        assert!(list_dir(&dir.path().join("nope")).is_empty());
        assert_eq!(link_name(&dir.path().join("v")), None);
    }
}
