//! The local disks as targets for an image deploy or a wipe: `/sys/block` under any
//! root (a fixture tree in tests), and the device nodes under a device directory
//! (`/dev`, or a temp dir of regular files in tests).
//!
//! [`scan`] only reads sysfs; choosing a target ([`choose_target`], [`wipe_targets`])
//! is pure. Sizes and partition offsets come from sysfs `size`/`start` files, which
//! count 512-byte sectors whatever the disk's logical block size.

use std::path::{Path, PathBuf};

use crate::facts::disks::SKIPPED_PREFIXES;

/// Bytes per sysfs sector.
const SECTOR: u64 = 512;

/// Where the disks are described and where their device nodes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// Root of the tree holding `sys/block` (`/` on a live machine).
    pub root: PathBuf,
    /// Directory of the device nodes (`/dev`).
    pub dev_dir: PathBuf,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            dev_dir: PathBuf::from("/dev"),
        }
    }
}

impl Storage {
    /// The device node of a disk (`{dev_dir}/{name}`).
    pub fn device(&self, name: &str) -> PathBuf {
        self.dev_dir.join(name)
    }
}

/// One entry of `/sys/block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDisk {
    pub name: String,
    pub size_bytes: u64,
    pub removable: bool,
    /// loop, ram, zram, device-mapper, md, optical, nbd, floppy, or a hidden path.
    pub virtual_device: bool,
    /// Sorted by start.
    pub partitions: Vec<Partition>,
}

/// A partition of a [`BlockDisk`] (`/sys/block/<disk>/<part>/{start,size}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub start_bytes: u64,
    pub size_bytes: u64,
}

/// Why no disk can be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("invalid disk name {name:?}")]
    BadName { name: String },
    #[error("no disk {name} in /sys/block (disks: {available})")]
    NotFound { name: String, available: String },
    #[error("disk {name} is a virtual device (loop, ram, device-mapper, md, optical…), refused")]
    Virtual { name: String },
    #[error("disk {name} is removable, refused")]
    Removable { name: String },
    #[error("disk {name} has size 0 (no medium)")]
    Empty { name: String },
    #[error("no usable disk (non-removable, non-zero size) in /sys/block")]
    NoDisk,
    /// No disk was named and more than one is usable: guessing could overwrite a data disk.
    #[error("several disks could take the image ({names}); name one in the profile's target_disk")]
    Several { names: String },
}

/// Reads every entry of `<root>/sys/block`, sorted by name. Unreadable entries are
/// reported with size 0.
pub fn scan(root: &Path) -> Vec<BlockDisk> {
    let block = root.join("sys/block");
    let mut names: Vec<String> = match std::fs::read_dir(&block) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %block.display(), error = %e, "cannot list block devices");
            Vec::new()
        }
    };
    names.sort();
    names
        .into_iter()
        .map(|name| read_disk(&block.join(&name), name))
        .collect()
}

fn read_disk(dir: &Path, name: String) -> BlockDisk {
    let flag = |file: &str| read_u64(&dir.join(file)) == Some(1);
    let virtual_device = SKIPPED_PREFIXES.iter().any(|p| name.starts_with(p)) || flag("hidden");
    let mut partitions: Vec<Partition> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|part| part.starts_with(&name) && part != &name)
                .filter_map(|part| {
                    let pdir = dir.join(&part);
                    let start = read_u64(&pdir.join("start"))?;
                    let size = read_u64(&pdir.join("size"))?;
                    Some(Partition {
                        name: part,
                        start_bytes: start.saturating_mul(SECTOR),
                        size_bytes: size.saturating_mul(SECTOR),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    partitions.sort_by_key(|p| p.start_bytes);
    BlockDisk {
        size_bytes: read_u64(&dir.join("size"))
            .unwrap_or(0)
            .saturating_mul(SECTOR),
        removable: flag("removable"),
        virtual_device,
        partitions,
        name,
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A disk name that is safe to join to the device directory.
pub fn valid_disk_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn usable(d: &BlockDisk) -> bool {
    !d.virtual_device && !d.removable && d.size_bytes > 0
}

/// Pure: the disk to deploy to — `requested` by name, or else the only usable one
/// (non-removable, non-virtual, non-zero size). With several usable disks and none named
/// it refuses ([`TargetError::Several`]) rather than guess: the wrong guess overwrites a
/// data disk.
pub fn choose_target<'a>(
    disks: &'a [BlockDisk],
    requested: Option<&str>,
) -> Result<&'a BlockDisk, TargetError> {
    let Some(name) = requested else {
        let candidates: Vec<&BlockDisk> = disks
            .iter()
            .filter(|d| usable(d) && valid_disk_name(&d.name))
            .collect();
        return match candidates.as_slice() {
            [] => Err(TargetError::NoDisk),
            [only] => Ok(only),
            several => Err(TargetError::Several {
                names: several
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        };
    };
    if !valid_disk_name(name) {
        return Err(TargetError::BadName {
            name: crate::text::printable(name),
        });
    }
    let Some(disk) = disks.iter().find(|d| d.name == name) else {
        let available: Vec<&str> = disks
            .iter()
            .filter(|d| usable(d))
            .map(|d| d.name.as_str())
            .collect();
        return Err(TargetError::NotFound {
            name: name.to_owned(),
            available: if available.is_empty() {
                "none".to_owned()
            } else {
                available.join(", ")
            },
        });
    };
    let name = name.to_owned();
    if disk.virtual_device {
        Err(TargetError::Virtual { name })
    } else if disk.removable {
        Err(TargetError::Removable { name })
    } else if disk.size_bytes == 0 {
        Err(TargetError::Empty { name })
    } else {
        Ok(disk)
    }
}

/// Pure: every disk a wipe touches (non-removable, non-virtual, non-zero size).
pub fn wipe_targets(disks: &[BlockDisk]) -> Vec<&BlockDisk> {
    disks
        .iter()
        .filter(|d| usable(d) && valid_disk_name(&d.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, size: u64, removable: bool, virtual_device: bool) -> BlockDisk {
        BlockDisk {
            name: name.into(),
            size_bytes: size,
            removable,
            virtual_device,
            partitions: Vec::new(),
        }
    }

    #[test]
    fn targets_are_chosen_and_refusals_named() {
        let disks = vec![
            disk("loop0", 1 << 20, false, true),
            disk("nvme0n1", 0, false, false),
            disk("sda", 1 << 30, true, false),
            disk("sdb", 1 << 30, false, false),
            disk("vda", 1 << 30, false, false),
        ];
        // Two usable disks (sdb, vda) and none named: refused, both named.
        assert_eq!(
            choose_target(&disks, None).unwrap_err().to_string(),
            "several disks could take the image (sdb, vda); name one in the profile's target_disk"
        );
        // One usable disk among unusable ones: taken.
        assert_eq!(choose_target(&disks[..4], None).unwrap().name, "sdb");
        assert_eq!(choose_target(&disks[4..], None).unwrap().name, "vda");
        assert_eq!(choose_target(&disks, Some("vda")).unwrap().name, "vda");
        assert_eq!(choose_target(&disks, Some("sdb")).unwrap().name, "sdb");
        let err = |n: &str| choose_target(&disks, Some(n)).unwrap_err().to_string();
        assert_eq!(err("sda"), "disk sda is removable, refused");
        assert!(err("loop0").contains("virtual device"));
        assert_eq!(err("nvme0n1"), "disk nvme0n1 has size 0 (no medium)");
        assert_eq!(err("sdz"), "no disk sdz in /sys/block (disks: sdb, vda)");
        assert!(matches!(
            choose_target(&disks, Some("../etc/passwd")),
            Err(TargetError::BadName { .. })
        ));
        assert!(matches!(
            choose_target(&disks, Some("")),
            Err(TargetError::BadName { .. })
        ));
        assert_eq!(choose_target(&disks[..3], None), Err(TargetError::NoDisk));
        let names: Vec<&str> = wipe_targets(&disks)
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, ["sdb", "vda"]);
    }

    #[test]
    fn sysfs_is_read_with_partitions() {
        let tmp = tempfile::tempdir().unwrap();
        let block = tmp.path().join("sys/block");
        let write = |rel: &str, v: &str| {
            let p = block.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        write("vda/size", "32768\n");
        write("vda/removable", "0\n");
        write("vda/vda2/start", "14336\n");
        write("vda/vda2/size", "2048\n");
        write("vda/vda1/start", "2048\n");
        write("vda/vda1/size", "12288\n");
        write("vda/queue/rotational", "0\n");
        write("sdb/size", "100\n");
        write("sdb/removable", "1\n");
        write("loop0/size", "8\n");
        let disks = scan(tmp.path());
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop0", "sdb", "vda"]);
        assert!(disks[0].virtual_device);
        assert!(disks[1].removable);
        assert_eq!(
            disks[2],
            BlockDisk {
                name: "vda".into(),
                size_bytes: 16 << 20,
                removable: false,
                virtual_device: false,
                partitions: vec![
                    Partition {
                        name: "vda1".into(),
                        start_bytes: 1 << 20,
                        size_bytes: 6 << 20
                    },
                    Partition {
                        name: "vda2".into(),
                        start_bytes: 7 << 20,
                        size_bytes: 1 << 20
                    },
                ],
            }
        );
        assert!(scan(&tmp.path().join("missing")).is_empty());
    }
}
