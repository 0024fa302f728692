//! Image deploy: streams `GET {edge}/images/{path}` onto a local disk in ~1 MiB chunks,
//! hashing with SHA-256 what was sent while [`crate::unpack`] converts it (raw, qcow2,
//! zstd, xz, told by the first bytes) on a blocking thread; then fsyncs and checks the
//! size and the digest against the instruction.
//!
//! Refusals happen before any byte is written: a bad path or digest in the
//! instruction (checked by `substruct_wire`'s [`ImageName`] and [`Sha256Digest`], the
//! rules every part uses), no usable disk, an image larger than the disk (as sent, then
//! as the first chunk says it is inside), an HTTP status other than 200, a
//! `Content-Length` other than the instruction's size. An image whose size inside is
//! not stated up front (xz) fails at the first write past the disk's end. The
//! pure helpers ([`image_target`], [`expected_digest`], [`ProgressTicker`],
//! [`throughput_line`]) carry the decisions.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use substruct_wire::messages::DeployImage;
use substruct_wire::names::{DigestError, ImageNameError};
use substruct_wire::{BootToken, ImageName, Sha256Digest};

use crate::blockdev::{self, Storage, TargetError};
use crate::http_get::{self, BaseUrl, HttpError};
use crate::unpack::{self, Format};

/// Bytes per write (and per hash update).
pub const CHUNK: usize = 1 << 20;
const MIB: f64 = 1024.0 * 1024.0;

/// What a finished deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub disk: String,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Why a deploy failed; the `Display` chain is the reason sent in the `Failed` callback.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no edge URL to fetch the image from (boot with substruct.edge=URL or pass --edge)")]
    NoEdge,
    #[error("this prospector run may not write disks (a CLI run needs --dev-dir DIR)")]
    NoStorage,
    #[error("invalid image path in the instruction")]
    BadPath(#[source] ImageNameError),
    #[error("invalid sha256 in the instruction")]
    BadDigest(#[source] DigestError),
    #[error("cannot use the target disk")]
    Target(#[source] TargetError),
    #[error("disk: the image ({image} bytes) does not fit disk {disk} ({disk_size} bytes)")]
    TooLarge {
        disk: String,
        image: u64,
        disk_size: u64,
    },
    #[error("disk: the image ({image} bytes) and the cloud-init seed partition after it need {need} bytes; disk {disk} has {disk_size}")]
    NoSeedRoom {
        disk: String,
        image: u64,
        need: u64,
        disk_size: u64,
    },
    #[error("download failed")]
    Http(#[source] HttpError),
    #[error("size mismatch: the edge sends {sent} bytes, the instruction says {expected}")]
    LengthMismatch { sent: u64, expected: u64 },
    #[error("disk: cannot open {path} for writing")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("size mismatch: received {received} bytes, expected {expected}")]
    SizeMismatch { received: u64, expected: u64 },
    #[error("{format} image onto {path}")]
    Unpack {
        format: &'static str,
        path: PathBuf,
        #[source]
        source: unpack::UnpackError,
    },
    #[error("the disk writer stopped unexpectedly")]
    WriterTask,
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("cloud-init seed")]
    Seed(#[source] crate::seed::SeedError),
}

/// Pure: the request path for an image path from the instruction (untrusted), which
/// must be a valid [`ImageName`].
pub fn image_target(path: &str) -> Result<String, DeployError> {
    let name = ImageName::new(path).map_err(DeployError::BadPath)?;
    Ok(format!("/images/{name}"))
}

/// Pure: the digest the instruction expects; upper-case hex digits are accepted and
/// folded to lower case.
pub fn expected_digest(value: &str) -> Result<Sha256Digest, DeployError> {
    Sha256Digest::new(value.to_ascii_lowercase()).map_err(DeployError::BadDigest)
}

/// Reports progress once per crossed tenth of the total.
#[derive(Debug, Clone)]
pub struct ProgressTicker {
    total: u64,
    reported_tenths: u64,
}

impl ProgressTicker {
    /// A ticker for `total` bytes.
    pub fn new(total: u64) -> Self {
        Self {
            total,
            reported_tenths: 0,
        }
    }

    /// `Some(percent)` when `done` crossed a new 10 % mark (the highest one crossed).
    pub fn advance(&mut self, done: u64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let tenths = (u128::from(done.min(self.total)) * 10 / u128::from(self.total)) as u64;
        (tenths > self.reported_tenths).then(|| {
            self.reported_tenths = tenths;
            tenths * 10
        })
    }
}

/// Pure: `deployed N MiB in S s (X MiB/s)`.
pub fn throughput_line(bytes: u64, elapsed: Duration) -> String {
    let mib = bytes as f64 / MIB;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { mib / secs } else { 0.0 };
    format!("deployed {mib:.1} MiB in {secs:.1} s ({rate:.1} MiB/s)")
}

/// Streams `image` from `edge` onto its target disk and verifies it. `say` receives the
/// console lines (progress every ~10 %, the final throughput). With `seed`, a disk
/// without room for the seed partition after the image is refused before any write.
pub async fn deploy(
    edge: Option<&BaseUrl>,
    storage: Option<&Storage>,
    image: &DeployImage,
    seed: bool,
    http_timeout: Duration,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<Deployed, DeployError> {
    let target_path = image_target(image.path.as_str())?;
    let expected_digest = expected_digest(image.sha256.as_str())?;
    let edge = edge.ok_or(DeployError::NoEdge)?;
    let storage = storage.ok_or(DeployError::NoStorage)?;
    let disks = blockdev::scan(&storage.root);
    let disk = blockdev::choose_target(&disks, image.disk.as_deref())
        .map_err(DeployError::Target)?
        .clone();
    // What is sent is seldom larger than the image inside: refused before the fetch.
    check_room(&disk, image.size, seed)?;
    let started = Instant::now();
    let mut response = http_get::get(edge, &target_path, http_timeout)
        .await
        .map_err(DeployError::Http)?;
    if response.content_length() != image.size {
        return Err(DeployError::LengthMismatch {
            sent: response.content_length(),
            expected: image.size,
        });
    }
    // The first chunk names the format and, for most, the size of the image inside:
    // checked against the disk before any write.
    let mut head = vec![0u8; CHUNK];
    let n = response
        .read_full(&mut head)
        .await
        .map_err(DeployError::Http)?;
    head.truncate(n);
    let format = Format::detect(&head);
    let expanded = unpack::expanded_size(format, &head, image.size);
    if let Some(size) = expanded {
        check_room(&disk, size, seed)?;
    }
    let path = storage.device(&disk.name);
    say(format!(
        "deploying {} ({:.1} MiB{}, sha256 {}…) to {}",
        response.url(),
        image.size as f64 / MIB,
        match (format, expanded) {
            (Format::Raw, _) => String::new(),
            (_, Some(size)) => format!(" {} → {:.1} MiB", format.name(), size as f64 / MIB),
            (_, None) => format!(" {}", format.name()),
        },
        expected_digest.as_str().get(..12).unwrap_or_default(),
        path.display()
    ));
    // Never create or truncate: the target is an existing device node.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|source| DeployError::Open {
            path: path.clone(),
            source,
        })?;
    // The conversion runs on a blocking thread, fed the bytes as they arrive; this task
    // hashes exactly what was sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let disk_size = disk.size_bytes;
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut input = io::BufReader::with_capacity(CHUNK, ChannelReader::new(rx));
        let size = unpack::unpack(format, &mut input, &mut file, disk_size)?;
        file.sync_all().map_err(unpack::UnpackError::Sync)?;
        Ok::<u64, unpack::UnpackError>(size)
    });
    let mut hasher = Sha256::new();
    hasher.update(&head);
    let mut received = head.len() as u64;
    let mut ticker = ProgressTicker::new(image.size);
    let mut fed = tx.send(head).await.is_ok();
    let mut fetch_failed = None;
    while fed {
        let mut buf = vec![0u8; CHUNK];
        let n = match response.read_full(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                fetch_failed = Some(e);
                break;
            }
        };
        buf.truncate(n);
        hasher.update(&buf);
        received += n as u64;
        fed = tx.send(buf).await.is_ok();
        if let Some(percent) = ticker.advance(received) {
            say(format!(
                "deploy {percent}% ({:.1} of {:.1} MiB)",
                received as f64 / MIB,
                image.size as f64 / MIB
            ));
        }
    }
    if fed && fetch_failed.is_none() {
        // The end marker: without it the converter's input fails instead of ending.
        let _ = tx.send(Vec::new()).await;
    }
    drop(tx);
    let converted = writer.await.map_err(|_| DeployError::WriterTask)?;
    if let Some(e) = fetch_failed {
        return Err(DeployError::Http(e));
    }
    let size = converted.map_err(|source| DeployError::Unpack {
        format: format.name(),
        path: path.clone(),
        source,
    })?;
    if received != image.size {
        return Err(DeployError::SizeMismatch {
            received,
            expected: image.size,
        });
    }
    let actual = Sha256Digest::finish(hasher);
    if actual != expected_digest {
        return Err(DeployError::DigestMismatch {
            expected: expected_digest.into_string(),
            actual: actual.into_string(),
        });
    }
    if expanded.is_none() {
        check_room(&disk, size, seed)?;
    }
    let elapsed = started.elapsed();
    say(throughput_line(size, elapsed));
    Ok(Deployed {
        disk: disk.name,
        bytes: size,
        elapsed,
    })
}

/// An image of `size` bytes (and the seed partition after it, with `seed`) must fit
/// `disk`.
fn check_room(disk: &blockdev::BlockDisk, size: u64, seed: bool) -> Result<(), DeployError> {
    if size > disk.size_bytes {
        return Err(DeployError::TooLarge {
            disk: disk.name.clone(),
            image: size,
            disk_size: disk.size_bytes,
        });
    }
    if seed {
        let need = crate::seed::disk_bytes_needed(size);
        if need > disk.size_bytes {
            return Err(DeployError::NoSeedRoom {
                disk: disk.name.clone(),
                image: size,
                need,
                disk_size: disk.size_bytes,
            });
        }
    }
    Ok(())
}

/// The converter's input: the chunks the fetch sends, in order, up to an empty chunk
/// (the end). A fetch that hangs up without it (failed, or the deploy dropped) is a read
/// error, so nothing more is written.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            rx,
            chunk: Vec::new(),
            at: 0,
            ended: false,
        }
    }
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.ended = chunk.is_empty();
                    self.chunk = chunk;
                    self.at = 0;
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the download stopped",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Before [`deploy`]: fetches the cloud-init seed for `token` from the edge, so a seed
/// the edge refuses fails the deploy before the disk is touched.
pub async fn seed_fetch(
    edge: Option<&BaseUrl>,
    token: &BootToken,
    http_timeout: Duration,
) -> Result<Vec<(&'static str, Vec<u8>)>, DeployError> {
    let edge = edge.ok_or(DeployError::NoEdge)?;
    crate::seed::fetch(edge, token, http_timeout)
        .await
        .map_err(DeployError::Seed)
}

/// After [`deploy`]: writes the fetched seed `files` to a `CIDATA` partition added at the
/// end of `disk`.
pub async fn seed_write(
    storage: Option<&Storage>,
    disk: &str,
    files: Vec<(&'static str, Vec<u8>)>,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<crate::seed::Seeded, DeployError> {
    let storage = storage.ok_or(DeployError::NoStorage)?;
    let path = storage.device(disk);
    let seeded = tokio::task::spawn_blocking(move || crate::seed::write(&path, &files))
        .await
        .map_err(|_| DeployError::Seed(crate::seed::SeedError::Task))?
        .map_err(DeployError::Seed)?;
    let p = &seeded.placed;
    say(format!(
        "cloud-init seed: {} bytes in CIDATA, partition {} of the {} table at {:.1} MiB{}",
        seeded.bytes,
        p.number,
        p.table,
        p.start_bytes as f64 / MIB,
        if p.moved_backup {
            " (GPT backup moved to the disk's end)"
        } else {
            ""
        }
    ));
    Ok(seeded)
}

/// After a [`deploy`] without a seed: a GPT image's backup moves to the disk's end
/// ([`crate::seed::table::fit_gpt`]). A table that cannot be fitted is left as the image
/// has it, with a console line: the image itself is written and verified.
pub async fn fit_table(
    storage: Option<&Storage>,
    disk: &str,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<(), DeployError> {
    let storage = storage.ok_or(DeployError::NoStorage)?;
    let path = storage.device(disk);
    let shown = path.display().to_string();
    let fitted = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let size = io::Seek::seek(&mut file, io::SeekFrom::End(0))?;
        let fitted = crate::seed::table::fit_gpt(&mut file, size).map_err(io::Error::other)?;
        file.sync_all()?;
        Ok::<_, io::Error>(fitted)
    })
    .await
    .map_err(|_| DeployError::WriterTask)?;
    match fitted {
        Ok(Some(true)) => say(format!(
            "partition table: the GPT backup moved to the end of {shown}"
        )),
        Ok(_) => {}
        Err(e) => say(format!(
            "partition table: left as the image has it ({})",
            substruct_runtime::error_chain(&e)
        )),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_are_checked() {
        assert_eq!(
            image_target("debian-12/disk.img").unwrap(),
            "/images/debian-12/disk.img"
        );
        assert_eq!(image_target("a+b~c_1.raw").unwrap(), "/images/a+b~c_1.raw");
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/./b",
            "a b",
            "a?b",
            "a%2e",
            "a\r\nHost: x",
            "é",
        ] {
            assert!(image_target(bad).is_err(), "{bad:?}");
        }
        assert!(image_target(&"a".repeat(1025)).is_err());
        let e = image_target("a/../b").unwrap_err();
        assert_eq!(
            substruct_runtime::error_chain(&e),
            "invalid image path in the instruction: image name \"a/../b\": has a \"..\" path segment"
        );
    }

    #[test]
    fn digests_are_normalized() {
        let d = "AB".repeat(32);
        assert_eq!(expected_digest(&d).unwrap().as_str(), "ab".repeat(32));
        assert!(matches!(
            expected_digest("abc"),
            Err(DeployError::BadDigest(_))
        ));
        assert!(expected_digest(&"g".repeat(64)).is_err());
    }

    #[test]
    fn progress_ticks_once_per_tenth() {
        let mut t = ProgressTicker::new(100);
        let ticks: Vec<u64> = (1..=100).filter_map(|d| t.advance(d)).collect();
        assert_eq!(ticks, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        let mut t = ProgressTicker::new(8 << 20);
        assert_eq!(t.advance(1 << 20), Some(10));
        assert_eq!(t.advance(5 << 20), Some(60));
        assert_eq!(t.advance(5 << 20), None);
        assert_eq!(t.advance(8 << 20), Some(100));
        assert_eq!(ProgressTicker::new(0).advance(0), None);
    }

    #[test]
    fn throughput_is_formatted() {
        assert_eq!(
            throughput_line(8 << 20, Duration::from_secs(2)),
            "deployed 8.0 MiB in 2.0 s (4.0 MiB/s)"
        );
        assert_eq!(
            throughput_line(0, Duration::ZERO),
            "deployed 0.0 MiB in 0.0 s (0.0 MiB/s)"
        );
    }

    #[test]
    fn failure_reasons_name_what_failed() {
        let e = DeployError::DigestMismatch {
            expected: "aa".into(),
            actual: "bb".into(),
        };
        assert_eq!(e.to_string(), "sha256 mismatch: expected aa, got bb");
        let e = DeployError::Target(TargetError::Removable { name: "sdb".into() });
        assert_eq!(
            substruct_runtime::error_chain(&e),
            "cannot use the target disk: disk sdb is removable, refused"
        );
    }
}
