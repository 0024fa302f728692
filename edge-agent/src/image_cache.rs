//! The edge's image cache: image content fetched from the controller's object store
//! (`images`, one object per sha256) into `{state_dir}/cache/{sha256}`, verified
//! before it is served, kept in LRU order under a size cap.
//!
//! * A name (`/images/NAME`) resolves through KV `images` (JSON `{sha256, size, …}`);
//!   the file is fetched on first use (or ahead of time, [`ImageCache::prefetch`]).
//! * A fetch streams into `{sha256}.part`, hashing as it goes, then fsyncs and renames:
//!   a crash leaves a `.part` file (removed at start), never a wrong `{sha256}`.
//! * A file is hashed before its first serve in this run; afterwards a change of its
//!   size or mtime makes the next use hash it again. A file that does not hash to its
//!   name is deleted and fetched again.
//! * The cache never exceeds its cap except by the one file being served; the least
//!   recently used files go first.
//!
//! With NATS down, cached files keep being served; only misses fail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_nats::jetstream::{kv, object_store::ObjectStore};
use sha2::{Digest, Sha256};
use substruct_runtime::jetstream::{ensure_kv, ensure_object_store, BucketSpec};
use substruct_wire::subjects;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why an image could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no connection to the controller's image store (NATS)")]
    Offline,
    #[error("reading the image registry for {name:?}")]
    Registry {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("image {name:?} has a registry entry that does not decode")]
    BadEntry { name: String },
    #[error("fetching image content {sha256}")]
    Fetch {
        sha256: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("image content {sha256} from the store hashes to {got} ({size} bytes, expected {expected_size}); not cached")]
    Mismatch {
        sha256: String,
        got: String,
        size: u64,
        expected_size: u64,
    },
    #[error("writing cache file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the registry says about an image name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ImageMeta {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    last_used: u64,
    /// `(size, mtime)` when it last hashed right; `None`: not verified in this run.
    verified: Option<(u64, SystemTime)>,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    clock: u64,
}

/// Counters for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub fetches: u64,
    pub corrupt: u64,
    pub evictions: u64,
}

struct Remote {
    registry: kv::Store,
    objects: ObjectStore,
}

/// The cache. Cheap to clone.
#[derive(Clone)]
pub struct ImageCache {
    dir: PathBuf,
    cap_bytes: u64,
    index: Arc<Mutex<Index>>,
    stats: Arc<Mutex<CacheStats>>,
    remote: Arc<tokio::sync::OnceCell<Remote>>,
    client: Option<async_nats::Client>,
    js_domain: Option<String>,
    /// One fetch/verify at a time per sha256.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Names resolved while the registry was reachable (`names.json`): what lets a
    /// site serve its cached images by name while its WAN link is down.
    names: Arc<Mutex<HashMap<String, ImageMeta>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for ImageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCache")
            .field("dir", &self.dir)
            .field("cap_bytes", &self.cap_bytes)
            .finish()
    }
}

/// The name → sha256 index in the cache directory.
const NAMES_FILE: &str = "names.json";
/// How long a known name waits for the registry before using its last known sha256.
const REGISTRY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn is_sha256(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ImageCache {
    /// Opens (creating) the cache directory: removes half-written `.part` files and
    /// anything that is not a `{sha256}` file, and indexes the rest as unverified.
    pub fn open(
        dir: impl Into<PathBuf>,
        cap_bytes: u64,
        client: Option<async_nats::Client>,
    ) -> Result<Self, CacheError> {
        let dir = dir.into();
        let dir_err = |source| CacheError::Dir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(dir_err)?;
        let mut index = Index::default();
        for entry in std::fs::read_dir(&dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata().map_err(dir_err)?;
            if name == NAMES_FILE && meta.is_file() {
                continue;
            }
            if is_sha256(&name) && meta.is_file() {
                index.clock += 1;
                index.entries.insert(
                    name,
                    Entry {
                        size: meta.len(),
                        last_used: index.clock,
                        verified: None,
                    },
                );
            } else {
                tracing::info!(file = %entry.path().display(), "removing a half-written or stray cache file");
                let removed = if meta.is_dir() {
                    std::fs::remove_dir_all(entry.path())
                } else {
                    std::fs::remove_file(entry.path())
                };
                if let Err(e) = removed {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove");
                }
            }
        }
        let names = std::fs::read(dir.join(NAMES_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<HashMap<String, ImageMeta>>(&b).ok())
            .map(|m| {
                m.into_iter()
                    .filter(|(_, v)| is_sha256(&v.sha256))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            names: Arc::new(Mutex::new(names)),
            dir,
            cap_bytes,
            index: Arc::new(Mutex::new(index)),
            stats: Arc::default(),
            remote: Arc::new(tokio::sync::OnceCell::new()),
            client,
            js_domain: None,
            locks: Arc::default(),
            changed: Arc::default(),
        })
    }

    /// Reaches JetStream through `domain` (the hub's, behind a leaf node).
    pub fn with_js_domain(mut self, domain: Option<String>) -> Self {
        self.js_domain = domain;
        self
    }

    pub fn stats(&self) -> CacheStats {
        *lock(&self.stats)
    }

    /// Resolves when the set of cached images may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The sha256s of the files verified in this run (what the edge reports).
    pub fn verified(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.index)
            .entries
            .iter()
            .filter(|(_, e)| e.verified.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Bytes held.
    pub fn size(&self) -> u64 {
        lock(&self.index).entries.values().map(|e| e.size).sum()
    }

    async fn remote(&self) -> Result<&Remote, CacheError> {
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

    /// What the registry says about `name`; `None` when it is not registered.
    pub async fn lookup(&self, name: &str) -> Result<Option<ImageMeta>, CacheError> {
        let remote = self.remote().await?;
        let value = remote
            .registry
            .get(name)
            .await
            .map_err(|e| CacheError::Registry {
                name: name.to_owned(),
                source: e.into(),
            })?;
        let Some(value) = value else {
            return Ok(None);
        };
        let meta: ImageMeta = serde_json::from_slice(&value).map_err(|_| CacheError::BadEntry {
            name: name.to_owned(),
        })?;
        if !is_sha256(&meta.sha256) {
            return Err(CacheError::BadEntry {
                name: name.to_owned(),
            });
        }
        Ok(Some(meta))
    }

    /// The verified cache file for image `name`, fetching it if needed; `None` when
    /// no image has that name.
    ///
    /// When the registry cannot be reached (NATS or the WAN link down), a name this
    /// edge resolved before is served from its last known sha256 if the file is cached.
    pub async fn path_for(&self, name: &str) -> Result<Option<PathBuf>, CacheError> {
        let known = lock(&self.names).get(name).cloned();
        let looked_up = match &known {
            // Do not make a booting machine wait out a dead link for a name we know.
            Some(_) => tokio::time::timeout(REGISTRY_WAIT, self.lookup(name))
                .await
                .unwrap_or(Err(CacheError::Offline)),
            None => self.lookup(name).await,
        };
        let meta = match looked_up {
            Ok(Some(meta)) => {
                if known.as_ref() != Some(&meta) {
                    self.remember(name, Some(meta.clone()));
                }
                meta
            }
            Ok(None) => {
                if known.is_some() {
                    self.remember(name, None);
                }
                return Ok(None);
            }
            Err(e @ (CacheError::Offline | CacheError::Registry { .. })) => match known {
                Some(meta) => {
                    tracing::debug!(image = name, error = %e, "registry unreachable; using the last known sha256");
                    meta
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        self.ensure(&meta).await.map(Some)
    }

    /// Records (or forgets) a name's sha256 and saves `names.json` (best effort).
    fn remember(&self, name: &str, meta: Option<ImageMeta>) {
        let snapshot = {
            let mut names = lock(&self.names);
            match meta {
                Some(m) => {
                    names.insert(name.to_owned(), m);
                }
                None => {
                    names.remove(name);
                }
            }
            names.clone()
        };
        let path = self.dir.join(NAMES_FILE);
        let tmp = self.dir.join(format!("{NAMES_FILE}.tmp"));
        let written = serde_json::to_vec(&snapshot)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot save the image cache's name index");
        }
    }

    /// Fetches the named images now (the site's profiles use them), logging failures.
    pub async fn prefetch(&self, names: &[String]) {
        for name in names {
            match self.path_for(name).await {
                Ok(Some(_)) => tracing::debug!(image = %name, "prefetched"),
                Ok(None) => {
                    tracing::debug!(image = %name, "not a registered image; not prefetched")
                }
                Err(e) => {
                    tracing::info!(image = %name, error = %substruct_runtime::error_chain(&e), "prefetch failed")
                }
            }
        }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// The verified file for `meta`, from the cache or fetched.
    pub async fn ensure(&self, meta: &ImageMeta) -> Result<PathBuf, CacheError> {
        let guard = {
            let mut locks = lock(&self.locks);
            locks.entry(meta.sha256.clone()).or_default().clone()
        };
        let _held = guard.lock().await;
        let path = self.path(&meta.sha256);
        let known = lock(&self.index).entries.get(&meta.sha256).cloned();
        if let Some(entry) = known {
            let on_disk = std::fs::metadata(&path)
                .ok()
                .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            let still_verified = on_disk.is_some() && entry.verified == on_disk;
            let good = if still_verified {
                true
            } else if let Some((len, mtime)) = on_disk {
                let got = hash_file(&path).await;
                match got {
                    Ok(h) if h == meta.sha256 && len == meta.size => {
                        let mut index = lock(&self.index);
                        index.clock += 1;
                        let clock = index.clock;
                        if let Some(e) = index.entries.get_mut(&meta.sha256) {
                            e.verified = Some((len, mtime));
                            e.size = len;
                            e.last_used = clock;
                        }
                        drop(index);
                        self.changed.notify_waiters();
                        true
                    }
                    Ok(h) => {
                        tracing::warn!(sha256 = %meta.sha256, got = %h, size = len, "cache file is corrupt or half-written; fetching it again");
                        lock(&self.stats).corrupt += 1;
                        false
                    }
                    Err(e) => {
                        tracing::warn!(sha256 = %meta.sha256, error = %e, "cannot read a cache file; fetching it again");
                        false
                    }
                }
            } else {
                false
            };
            if good {
                let mut index = lock(&self.index);
                index.clock += 1;
                let clock = index.clock;
                if let Some(e) = index.entries.get_mut(&meta.sha256) {
                    e.last_used = clock;
                }
                lock(&self.stats).hits += 1;
                return Ok(path);
            }
            lock(&self.index).entries.remove(&meta.sha256);
            let _ = std::fs::remove_file(&path);
        }
        self.fetch(meta).await?;
        Ok(path)
    }

    async fn fetch(&self, meta: &ImageMeta) -> Result<(), CacheError> {
        let remote = self.remote().await?;
        let fetch_err = |e: Box<dyn std::error::Error + Send + Sync>| CacheError::Fetch {
            sha256: meta.sha256.clone(),
            source: e,
        };
        let mut object = remote
            .objects
            .get(&meta.sha256)
            .await
            .map_err(|e| fetch_err(e.into()))?;
        let part = self.dir.join(format!("{}.part", meta.sha256));
        let write_err = |source| CacheError::Write {
            path: part.clone(),
            source,
        };
        let mut file = tokio::fs::File::create(&part).await.map_err(write_err)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match object.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(fetch_err(e.into()));
                }
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            if let Err(e) = file.write_all(&buf[..n]).await {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(write_err(e));
            }
        }
        let got = hex::encode(hasher.finalize());
        if got != meta.sha256 || size != meta.size {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(CacheError::Mismatch {
                sha256: meta.sha256.clone(),
                got,
                size,
                expected_size: meta.size,
            });
        }
        file.sync_all().await.map_err(write_err)?;
        drop(file);
        let path = self.path(&meta.sha256);
        tokio::fs::rename(&part, &path).await.map_err(write_err)?;
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        {
            let mut index = lock(&self.index);
            index.clock += 1;
            let clock = index.clock;
            index.entries.insert(
                meta.sha256.clone(),
                Entry {
                    size,
                    last_used: clock,
                    verified: Some((size, mtime)),
                },
            );
        }
        lock(&self.stats).fetches += 1;
        tracing::info!(sha256 = %meta.sha256, size, "image fetched into the cache");
        self.evict(&meta.sha256);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Removes least recently used files until the cache fits its cap (never `keep`).
    fn evict(&self, keep: &str) {
        let mut index = lock(&self.index);
        loop {
            let total: u64 = index.entries.values().map(|e| e.size).sum();
            if total <= self.cap_bytes {
                return;
            }
            let victim = index
                .entries
                .iter()
                .filter(|(k, _)| k.as_str() != keep)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else {
                return;
            };
            index.entries.remove(&victim);
            lock(&self.stats).evictions += 1;
            tracing::info!(sha256 = %victim, cap = self.cap_bytes, "evicted from the image cache");
            if let Err(e) = std::fs::remove_file(self.path(&victim)) {
                tracing::warn!(sha256 = %victim, error = %e, "cannot remove an evicted file");
            }
        }
    }

    /// Hashes every file not yet verified in this run; deletes those that do not hash
    /// to their name (start-up: a file damaged while the edge was down is never served).
    pub async fn verify_all(&self) -> usize {
        let pending: Vec<String> = lock(&self.index)
            .entries
            .iter()
            .filter(|(_, e)| e.verified.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let mut bad = 0;
        for sha in pending {
            let path = self.path(&sha);
            let on_disk = std::fs::metadata(&path)
                .ok()
                .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            match (hash_file(&path).await, on_disk) {
                (Ok(h), Some(stamp)) if h == sha => {
                    if let Some(e) = lock(&self.index).entries.get_mut(&sha) {
                        e.verified = Some(stamp);
                    }
                }
                _ => {
                    tracing::warn!(sha256 = %sha, "cache file does not match its sha256; removed");
                    lock(&self.index).entries.remove(&sha);
                    lock(&self.stats).corrupt += 1;
                    let _ = std::fs::remove_file(&path);
                    bad += 1;
                }
            }
        }
        self.changed.notify_waiters();
        bad
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn hash_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}
