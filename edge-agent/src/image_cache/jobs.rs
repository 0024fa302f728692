//! The image cache's slow work, run by its task off its state: hashing a file,
//! fetching an object into the cache, deleting an evicted file. Each job works on one
//! sha256 and reports how it ended ([`Done`]); the task applies that to its state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_nats::jetstream::{kv, object_store::ObjectStore};
use sha2::{Digest as _, Sha256};
use substruct_runtime::jetstream::{ensure_kv, ensure_object_store, BucketSpec};
use substruct_wire::{subjects, Sha256Digest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
/// bytes, or before a write that would leave less than the reserve free (checked before
/// every chunk: one `statvfs` per 256 KiB).
pub(super) async fn fetch(
    store: Arc<Store>,
    dir: PathBuf,
    sha: Sha256Digest,
    size: u64,
    reserve: Reserve,
) -> Done {
    let part = dir.join(format!("{sha}.part"));
    let result = fetch_into(&store, &dir, &part, &sha, size, &reserve).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    Done::Fetched(result)
}

async fn fetch_into(
    store: &Store,
    dir: &Path,
    part: &Path,
    sha: &Sha256Digest,
    expected_size: u64,
    reserve: &Reserve,
) -> Result<Stamp, CacheError> {
    let remote = store.remote().await?;
    let fetch_err = |source: Arc<dyn std::error::Error + Send + Sync>| CacheError::Fetch {
        sha256: sha.clone(),
        source,
    };
    let write_err = |source| CacheError::Write {
        path: part.to_owned(),
        source: Arc::new(source),
    };
    let mut object = remote
        .objects
        .get(sha.as_str())
        .await
        .map_err(|e| fetch_err(Arc::new(e)))?;
    let mut file = tokio::fs::File::create(part).await.map_err(write_err)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = object
            .read(&mut buf)
            .await
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
        match reserve.check(dir, n as u64) {
            Ok(()) => {}
            Err(Ok(available)) => {
                return Err(CacheError::ReserveReached {
                    sha256: sha.clone(),
                    written,
                    available,
                    min_free: reserve.min_free,
                })
            }
            Err(Err(e)) => {
                return Err(CacheError::FreeSpace {
                    path: dir.to_owned(),
                    source: Arc::new(e),
                })
            }
        }
        file.write_all(&buf[..n]).await.map_err(write_err)?;
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
    file.sync_all().await.map_err(write_err)?;
    drop(file);
    let path = dir.join(sha.as_str());
    tokio::fs::rename(part, &path).await.map_err(write_err)?;
    stamp_of(&path).ok_or_else(|| write_err(std::io::Error::other("the fetched file vanished")))
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
