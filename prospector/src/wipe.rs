//! Disk wipe for [`WipeMode`]: every non-removable, non-virtual disk.
//!
//! * `Quick` zeroes the first and last MiB of each disk (MBR, GPT and its backup) and
//!   the first MiB of each partition (file system, LVM, RAID signatures). The ranges
//!   come from the pure [`quick_plan`].
//! * `Discard` issues `BLKDISCARD` over the whole device, then also zeroes the `Quick`
//!   ranges (discarded blocks may still read back their old contents); where the ioctl
//!   fails (no discard support, a regular file) it says so and does `Quick` alone.
//!
//! Every disk is fsynced. Blocking file I/O runs on tokio's blocking pool.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use substruct_wire::messages::WipeMode;

use crate::blockdev::{self, BlockDisk, Storage};

/// Bytes zeroed at each spot of a quick wipe.
pub const MIB: u64 = 1 << 20;

/// A byte range of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// What was done to one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WipedDisk {
    pub name: String,
    /// `BLKDISCARD` succeeded on the whole device.
    pub discarded: bool,
    pub zeroed_bytes: u64,
}

/// Why a wipe failed; the chain is the reason of the `Failed` callback.
#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    #[error("wipe: cannot open {path} for writing")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wipe: writing zeros to {path} at byte {offset} failed")]
    Write {
        path: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("wipe: fsync of {path} failed")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wipe: the worker for {path} ended abnormally")]
    Worker { path: PathBuf },
    #[error("wipe: this prospector run may not write disks (a CLI run needs --dev-dir DIR)")]
    NoStorage,
}

/// Pure: the ranges a quick wipe zeroes on `disk`, clipped to the disk, sorted and merged.
pub fn quick_plan(disk: &BlockDisk) -> Vec<ByteRange> {
    let size = disk.size_bytes;
    let mut spans: Vec<(u64, u64)> = vec![(0, MIB.min(size)), (size.saturating_sub(MIB), size)];
    for p in &disk.partitions {
        let start = p.start_bytes.min(size);
        let end = p
            .start_bytes
            .saturating_add(MIB.min(p.size_bytes))
            .min(size);
        spans.push((start, end));
    }
    spans.retain(|(s, e)| e > s);
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
        .into_iter()
        .map(|(s, e)| ByteRange {
            offset: s,
            len: e - s,
        })
        .collect()
}

/// Wipes every disk [`blockdev::wipe_targets`] picks under `storage`. `say` receives
/// the console lines.
pub async fn wipe(
    storage: Option<&Storage>,
    mode: WipeMode,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<Vec<WipedDisk>, WipeError> {
    let storage = storage.ok_or(WipeError::NoStorage)?;
    let disks = blockdev::scan(&storage.root);
    let targets: Vec<BlockDisk> = blockdev::wipe_targets(&disks)
        .into_iter()
        .cloned()
        .collect();
    if targets.is_empty() {
        say("wipe: no disk to wipe".to_owned());
    }
    let mut done = Vec::with_capacity(targets.len());
    for disk in targets {
        let path = storage.device(&disk.name);
        say(format!(
            "wipe ({}): {} ({} MiB, {} partitions)",
            mode_name(mode),
            path.display(),
            disk.size_bytes / MIB,
            disk.partitions.len()
        ));
        let worker_path = path.clone();
        let (result, notes) =
            tokio::task::spawn_blocking(move || wipe_one(&worker_path, &disk, mode))
                .await
                .map_err(|_| WipeError::Worker { path: path.clone() })?;
        for note in notes {
            say(note);
        }
        let wiped = result?;
        say(format!(
            "wipe: {} done ({}{} KiB zeroed)",
            wiped.name,
            if wiped.discarded { "discarded, " } else { "" },
            wiped.zeroed_bytes / 1024
        ));
        done.push(wiped);
    }
    Ok(done)
}

fn mode_name(mode: WipeMode) -> &'static str {
    match mode {
        WipeMode::Quick => "quick",
        WipeMode::Discard => "discard",
    }
}

/// Blocking: one disk; returns the result and the console notes made on the way.
fn wipe_one(
    path: &Path,
    disk: &BlockDisk,
    mode: WipeMode,
) -> (Result<WipedDisk, WipeError>, Vec<String>) {
    let mut notes = Vec::new();
    let result = (|| {
        // Never create or truncate: the target is an existing device node.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| WipeError::Open {
                path: path.to_owned(),
                source,
            })?;
        let discarded = match mode {
            WipeMode::Quick => false,
            WipeMode::Discard => match discard::whole_device(&file, disk.size_bytes) {
                Ok(()) => true,
                Err(errno) => {
                    notes.push(format!(
                        "wipe: BLKDISCARD on {} failed ({errno}); falling back to a quick wipe",
                        path.display()
                    ));
                    false
                }
            },
        };
        let zeroed_bytes = zero_ranges(&file, path, &quick_plan(disk))?;
        file.sync_all().map_err(|source| WipeError::Sync {
            path: path.to_owned(),
            source,
        })?;
        Ok(WipedDisk {
            name: disk.name.clone(),
            discarded,
            zeroed_bytes,
        })
    })();
    (result, notes)
}

fn zero_ranges(file: &File, path: &Path, ranges: &[ByteRange]) -> Result<u64, WipeError> {
    let zeros = vec![0u8; usize::try_from(MIB).unwrap_or(1 << 20)];
    let mut total = 0u64;
    for r in ranges {
        let mut offset = r.offset;
        let end = r.offset + r.len;
        while offset < end {
            let n = usize::try_from((end - offset).min(MIB)).unwrap_or(zeros.len());
            file.write_all_at(&zeros[..n], offset)
                .map_err(|source| WipeError::Write {
                    path: path.to_owned(),
                    offset,
                    source,
                })?;
            offset += n as u64;
            total += n as u64;
        }
    }
    Ok(total)
}

/// The one `ioctl` of the prospector.
#[allow(unsafe_code)]
mod discard {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    // BLKDISCARD = _IO(0x12, 119), argument: `uint64_t range[2]` = {start, length}.
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);

    /// Discards bytes `0..len` of the block device behind `file`.
    pub fn whole_device(file: &File, len: u64) -> nix::Result<()> {
        let range: [u64; 2] = [0, len];
        // SAFETY: the descriptor stays open while `file` is borrowed, and BLKDISCARD
        // only reads the two u64 values `range` points to, which outlive the call.
        unsafe { blkdiscard(file.as_raw_fd(), &range) }.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::Partition;

    fn r(offset: u64, len: u64) -> ByteRange {
        ByteRange { offset, len }
    }

    fn disk(size: u64, parts: &[(u64, u64)]) -> BlockDisk {
        BlockDisk {
            name: "vda".into(),
            size_bytes: size,
            removable: false,
            virtual_device: false,
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, (start, size))| Partition {
                    name: format!("vda{}", i + 1),
                    start_bytes: *start,
                    size_bytes: *size,
                })
                .collect(),
        }
    }

    #[test]
    fn quick_plan_covers_the_ends_and_every_partition_start() {
        let d = disk(16 * MIB, &[(MIB, 6 * MIB), (7 * MIB, 8 * MIB)]);
        assert_eq!(
            quick_plan(&d),
            [r(0, 2 * MIB), r(7 * MIB, MIB), r(15 * MIB, MIB)]
        );
        // A partition smaller than a MiB: only its own bytes.
        let d = disk(16 * MIB, &[(4 * MIB, 4096)]);
        assert_eq!(
            quick_plan(&d),
            [r(0, MIB), r(4 * MIB, 4096), r(15 * MIB, MIB)]
        );
        // A disk under 2 MiB: one merged range, never past the end.
        assert_eq!(quick_plan(&disk(MIB + 512, &[])), [r(0, MIB + 512)]);
        assert_eq!(quick_plan(&disk(4096, &[])), [r(0, 4096)]);
        // A partition table that lies about the disk's size is clipped.
        assert_eq!(
            quick_plan(&disk(4 * MIB, &[(10 * MIB, MIB)])),
            [r(0, MIB), r(3 * MIB, MIB)]
        );
        assert!(quick_plan(&disk(0, &[])).is_empty());
    }
}
