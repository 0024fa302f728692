//! The deployed system's cloud-init NoCloud seed: before the image is written,
//! `meta-data` and `user-data` are fetched from the edge
//! (`{edge}/install/{token}/…`, the controller's rendering of the profile, served only
//! to this machine's address); once the image is written and verified they go to a FAT
//! partition labelled `CIDATA` added at the end of the disk ([`table`]), where
//! cloud-init's NoCloud datasource finds them on the first boot.
//!
//! Refusals before the disk is touched again: a seed file larger than [`MAX_FILE`], no
//! partition table, a damaged GPT, no free slot or no room at the disk's end.

pub mod fat;
pub mod table;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use substruct_wire::BootToken;

use crate::http_get::{self, BaseUrl, HttpError};

/// The seed partition's size.
pub const PARTITION_BYTES: u64 = 8 << 20;
/// The largest seed file accepted from the edge.
pub const MAX_FILE: u64 = 1 << 20;
/// The files, in the order they are fetched and written.
pub const FILES: [&str; 2] = ["meta-data", "user-data"];

/// Why the seed could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("fetching the cloud-init {file} failed")]
    Fetch {
        file: &'static str,
        #[source]
        source: HttpError,
    },
    #[error("the cloud-init {file} is {size} bytes; the limit is {MAX_FILE}")]
    TooLarge { file: &'static str, size: u64 },
    #[error("disk: cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk {path}: the seed partition")]
    Table {
        path: PathBuf,
        #[source]
        source: table::TableError,
    },
    #[error("disk {path}: the CIDATA filesystem")]
    Fs {
        path: PathBuf,
        #[source]
        source: fat::FatError,
    },
    #[error("disk {path}: writing the CIDATA filesystem failed")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the seed task stopped")]
    Task,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    pub placed: table::Placed,
    pub bytes: u64,
}

/// Pure: the smallest disk that surely holds an image of `image_bytes` and the seed
/// partition after it: the image rounded up to 1 MiB (the partition starts on a MiB
/// boundary), the partition, and 1 MiB for a GPT's backup at the end and the rounding
/// down of the partition's start. At most 1 MiB more than the tightest fit.
pub fn disk_bytes_needed(image_bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    image_bytes
        .div_ceil(MIB)
        .saturating_mul(MIB)
        .saturating_add(PARTITION_BYTES + MIB)
}

/// Fetches the seed files for `token` from the edge.
pub async fn fetch(
    edge: &BaseUrl,
    token: &BootToken,
    timeout: Duration,
) -> Result<Vec<(&'static str, Vec<u8>)>, SeedError> {
    let mut files = Vec::new();
    for file in FILES {
        let fetch = |source| SeedError::Fetch { file, source };
        let mut response = http_get::get(edge, &format!("/install/{token}/{file}"), timeout)
            .await
            .map_err(fetch)?;
        let size = response.content_length();
        if size > MAX_FILE {
            return Err(SeedError::TooLarge { file, size });
        }
        let mut body = vec![0u8; size as usize];
        let n = response.read_full(&mut body).await.map_err(fetch)?;
        body.truncate(n);
        files.push((file, body));
    }
    Ok(files)
}

/// Adds the `CIDATA` partition to the disk at `path` and writes `files` into it.
pub fn write(path: &Path, files: &[(&'static str, Vec<u8>)]) -> Result<Seeded, SeedError> {
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    // Built (and size-checked) before the disk is touched; `hidden` is fixed below.
    fat::image(0, 0, &refs).map_err(|source| SeedError::Fs {
        path: path.to_owned(),
        source,
    })?;
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| SeedError::Open {
            path: path.to_owned(),
            source,
        })?;
    let io = |source| SeedError::Write {
        path: path.to_owned(),
        source,
    };
    let size = disk.seek(SeekFrom::End(0)).map_err(io)?;
    let placed = table::add_end_partition(&mut disk, size, PARTITION_BYTES, rand::random())
        .map_err(|source| SeedError::Table {
            path: path.to_owned(),
            source,
        })?;
    let hidden = u32::try_from(placed.start_bytes / table::SECTOR).unwrap_or(u32::MAX);
    let fs = fat::image(hidden, rand::random(), &refs).map_err(|source| SeedError::Fs {
        path: path.to_owned(),
        source,
    })?;
    disk.seek(SeekFrom::Start(placed.start_bytes)).map_err(io)?;
    disk.write_all(&fs).map_err(io)?;
    disk.sync_all().map_err(io)?;
    Ok(Seeded {
        placed,
        bytes: files.iter().map(|(_, b)| b.len() as u64).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};

    #[test]
    fn fat_holds_the_files_under_the_cidata_label() {
        let files: [(&str, &[u8]); 2] = [
            ("meta-data", b"instance-id: m-1\nlocal-hostname: web-1\n"),
            ("user-data", &[b'x'; 10_000]),
        ];
        let mut img = fat::image(2048, 0x1234_5678, &files).unwrap();
        // Metadata (45 sectors) and the files' 4 KiB clusters (1 + 3).
        assert_eq!(img.len(), 45 * 512 + 4 * 4096);
        img.resize(PARTITION_BYTES as usize, 0xee);
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat12);
        assert_eq!(fs.volume_label().trim_end(), "CIDATA");
        assert_eq!(fs.volume_id(), 0x1234_5678);
        for (name, body) in files {
            let mut got = Vec::new();
            fs.root_dir()
                .open_file(name)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert_eq!(got, body, "{name}");
        }
        let names: Vec<String> = fs
            .root_dir()
            .iter()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["meta-data", "user-data"]);
    }
}
