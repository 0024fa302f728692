//! The image cache's slow work, run by its task off its state: hashing a file,
//! fetching an object into the cache, deleting an evicted file. Each job works on one
//! sha256 and reports how it ended ([`Done`]); the task applies that to its state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{kv, object_store::ObjectStore};
use sha2::{Digest as _, Sha256};
use substruct_runtime::jetstream::{ensure_kv, ensure_object_store, BucketSpec};
use substruct_wire::{subjects, Sha256Digest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

use super::follow::Progress;
use super::index::{self, Stamp, Verdict};
use super::CacheError;

/// The slow work on one sha256, run by the cache task off its state.
#[derive(Debug)]
pub(super) enum Job {
    Verify,
    /// Fetch, while the files `freeing` are deleted to make room for it.
    Fetch {
        freeing: Vec<PathBuf>,
    },
    Delete,
}

/// The free space a fetch must leave.
#[derive(Debug)]
pub(super) struct Reserve {
    /// Bytes to leave free on the filesystem (0: no check).
    pub(super) min_free: u64,
    /// Files evicted for this fetch: their delete jobs may still be running, and what
    /// they still hold counts as free.
    pub(super) freeing: Vec<PathBuf>,
}

impl Reserve {
    /// `Err(available)` when writing `next` more bytes would leave less than
    /// `min_free` free on the filesystem of `dir`.
    fn check(&self, dir: &Path, next: u64) -> Result<(), std::io::Result<u64>> {
        if self.min_free == 0 {
            return Ok(());
        }
        let need = self.min_free.saturating_add(next);
        let available = available(dir).map_err(Err)?;
        if available >= need {
            return Ok(());
        }
        let pending: u64 = self
            .freeing
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        if available.saturating_add(pending) >= need {
            Ok(())
        } else {
            Err(Ok(available))
        }
    }
}

/// How long a fetch may go without a byte from the object store, and the tests' gate.
#[derive(Debug, Clone)]
pub(super) struct Pace {
    /// No byte for this long (or no answer to the first request): the fetch fails.
    pub(super) stall: Duration,
    /// For tests: a permit per chunk read from the store (see
    /// [`super::CacheSettings::with_chunk_gate`]).
    pub(super) gate: Option<Arc<Semaphore>>,
}

/// How a job ended.
#[derive(Debug)]
pub(super) enum Done {
    /// Hashed; a bad file was already removed.
    Verified(Verdict, Option<Stamp>),
    Fetched(Result<Stamp, CacheError>),
    Deleted,
}

/// Bytes free for unprivileged users on the filesystem holding `path`.
#[allow(clippy::useless_conversion)] // the field types are narrower on 32-bit targets
pub(super) fn available(path: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// The cache files in `dir` this process has open (responses still sending them):
/// deleting one frees nothing until its last response ends. Read from `/proc/self/fd`
/// (metadata only); empty where that cannot be read.
pub(super) fn open_files(dir: &Path) -> std::collections::HashSet<Sha256Digest> {
    let mut open = std::collections::HashSet::new();
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return open;
    };
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return open;
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.parent() != Some(dir.as_path()) {
            continue;
        }
        if let Some(sha) = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| Sha256Digest::parse(n).ok())
        {
            open.insert(sha);
        }
    }
    open
}

/// The size and mtime of the file at `path`, if it is there.
pub(super) fn stamp_of(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.len(),
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    ))
}

/// The connection to the controller's image store, made on first use.
#[derive(Debug)]
pub(super) struct Store {
    pub(super) client: Option<async_nats::Client>,
    pub(super) js_domain: Option<String>,
    pub(super) remote: tokio::sync::OnceCell<Remote>,
}

pub(super) struct Remote {
    pub(super) registry: kv::Store,
    pub(super) objects: ObjectStore,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").finish_non_exhaustive()
    }
}

impl Store {
    pub(super) async fn remote(&self) -> Result<&Remote, CacheError> {
        let Some(client) = &self.client else {
            return Err(CacheError::Offline);
        };
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err(CacheError::Offline);
        }
        self.remote
            .get_or_try_init(|| async {
                let js =
                    substruct_runtime::jetstream_context(client.clone(), self.js_domain.as_deref());
                let registry = ensure_kv(&js, &BucketSpec::new(subjects::KV_IMAGES))
                    .await
                    .map_err(|_| CacheError::Offline)?;
                let objects = ensure_object_store(&js, subjects::OBJ_IMAGES)
                    .await
                    .map_err(|_| CacheError::Offline)?;
                Ok(Remote { registry, objects })
            })
            .await
    }
}

/// Hashes the file at `path` and judges it; removes it if it is not good.
pub(super) async fn verify(sha: Sha256Digest, path: PathBuf, expected_size: Option<u64>) -> Done {
    let judged = tokio::task::spawn_blocking(move || {
        let stamp = stamp_of(&path);
        let hashed = hash_file(&path);
        let verdict = index::verdict(&sha, expected_size, stamp, &hashed);
        if verdict != Verdict::Good {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a bad cache file");
                }
            }
        }
        (verdict, stamp)
    })
    .await;
    match judged {
        Ok((verdict, stamp)) => Done::Verified(verdict, stamp),
        Err(_) => Done::Verified(Verdict::Unreadable, None),
    }
}

/// Removes an evicted file.
pub(super) async fn delete(sha: Sha256Digest, path: PathBuf) -> Done {
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        Ok(Err(e)) => tracing::warn!(sha256 = %sha, error = %e, "cannot remove an evicted file"),
        Err(e) => tracing::warn!(sha256 = %sha, error = %e, "cannot remove an evicted file"),
    }
    Done::Deleted
}

/// Streams object `sha` into `{dir}/{sha}.part` while hashing it; renames it into place
/// if it hashes right and has `size` bytes. Stops as soon as it has more than `size`
/// bytes, before a write that would leave less than the reserve free (checked before
/// every chunk: one `statvfs` per 256 KiB), or when the store sends nothing for
/// `pace.stall`. Reports on `progress` the file once created and the bytes written
/// (each chunk flushed to the file first), for the responses that follow the fetch;
/// the cache task reports how it ended.
pub(super) async fn fetch(
    store: Arc<Store>,
    dir: PathBuf,
    sha: Sha256Digest,
    size: u64,
    reserve: Reserve,
    pace: Pace,
    progress: Arc<watch::Sender<Progress>>,
) -> Done {
    let part = dir.join(format!("{sha}.part"));
    let fetch = Fetch {
        dir: &dir,
        part: &part,
        sha: &sha,
        expected_size: size,
        reserve: &reserve,
        pace: &pace,
        progress: &progress,
    };
    let result = fetch.run(&store).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    Done::Fetched(result)
}

/// One fetch's parameters.
struct Fetch<'a> {
    dir: &'a Path,
    part: &'a Path,
    sha: &'a Sha256Digest,
    expected_size: u64,
    reserve: &'a Reserve,
    pace: &'a Pace,
    progress: &'a watch::Sender<Progress>,
}

impl Fetch<'_> {
    fn stalled(&self, written: u64) -> CacheError {
        CacheError::Stalled {
            sha256: self.sha.clone(),
            written,
            after: self.pace.stall,
        }
    }

    async fn run(&self, store: &Store) -> Result<Stamp, CacheError> {
        let (sha, part, expected_size) = (self.sha, self.part, self.expected_size);
        let remote = store.remote().await?;
        let fetch_err = |source: Arc<dyn std::error::Error + Send + Sync>| CacheError::Fetch {
            sha256: sha.clone(),
            source,
        };
        let write_err = |source| CacheError::Write {
            path: part.to_owned(),
            source: Arc::new(source),
        };
        let mut object = tokio::time::timeout(self.pace.stall, remote.objects.get(sha.as_str()))
            .await
            .map_err(|_| self.stalled(0))?
            .map_err(|e| fetch_err(Arc::new(e)))?;
        let mut file = tokio::fs::File::create(part).await.map_err(write_err)?;
        // A handle of our own for the followers: it stays valid after the rename (or
        // the removal of a failed part).
        let reader = tokio::fs::File::open(part)
            .await
            .map_err(write_err)?
            .into_std()
            .await;
        self.progress
            .send_modify(|p| p.file = Some((Arc::new(reader), part.to_owned())));
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            if let Some(gate) = &self.pace.gate {
                // A closed gate lets everything through.
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
            }
            let n = tokio::time::timeout(self.pace.stall, object.read(&mut buf))
                .await
                .map_err(|_| self.stalled(size))?
                .map_err(|e| fetch_err(Arc::new(e)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            let written = size;
            size += n as u64;
            if size > expected_size {
                // More than registered: it cannot hash right; do not let it fill the disk.
                return Err(CacheError::Mismatch {
                    sha256: sha.clone(),
                    got: Sha256Digest::finish(hasher),
                    size,
                    expected_size,
                });
            }
            match self.reserve.check(self.dir, n as u64) {
                Ok(()) => {}
                Err(Ok(available)) => {
                    return Err(CacheError::ReserveReached {
                        sha256: sha.clone(),
                        written,
                        available,
                        min_free: self.reserve.min_free,
                    })
                }
                Err(Err(e)) => {
                    return Err(CacheError::FreeSpace {
                        path: self.dir.to_owned(),
                        source: Arc::new(e),
                    })
                }
            }
            file.write_all(&buf[..n]).await.map_err(write_err)?;
            // tokio's File writes on a blocking thread: flushed, the bytes are in the
            // file for the followers to read.
            file.flush().await.map_err(write_err)?;
            self.progress.send_modify(|p| p.written = size);
        }
        let got = Sha256Digest::finish(hasher);
        if got != *sha || size != expected_size {
            return Err(CacheError::Mismatch {
                sha256: sha.clone(),
                got,
                size,
                expected_size,
            });
        }
        // The followers read what was written through their own handle: tell them now,
        // not after a sync of the whole file on a slow disk (which could outlast their
        // clients' patience for the held-back last byte).
        self.progress.send_modify(|p| p.verified = true);
        file.sync_all().await.map_err(write_err)?;
        drop(file);
        let path = self.dir.join(sha.as_str());
        tokio::fs::rename(part, &path).await.map_err(write_err)?;
        stamp_of(&path).ok_or_else(|| write_err(std::io::Error::other("the fetched file vanished")))
    }
}

/// The sha256 of the file at `path` (blocking).
fn hash_file(path: &Path) -> std::io::Result<Sha256Digest> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Sha256Digest::finish(hasher))
}
