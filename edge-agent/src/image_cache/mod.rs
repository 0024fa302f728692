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
//! * The cache never exceeds its cap except by the files in use; the least recently
//!   used files go first.
//! * It leaves at least [`CacheSettings::min_free_bytes`] free on its filesystem (which
//!   it usually shares with the lease store): before a fetch it evicts least recently
//!   used files until the image fits above that reserve — counting what the fetches
//!   already running still have to write as taken — or refuses the fetch
//!   ([`CacheError::NoSpace`]); a fetch that finds the reserve reached as it writes
//!   (something else filled the disk, or the store sends more than registered) stops
//!   ([`CacheError::ReserveReached`]).
//! * Names resolved while the registry was reachable are kept in `names.json`, so a
//!   site serves its cached images by name while its WAN link is down; only misses fail.
//! * A response need not wait for a fetch: [`ImageCache::open_image`] answers with the
//!   fetch in progress ([`Fetching`]) once it has reached the object store (a fetch
//!   that fails before that is its error), which the response follows as the
//!   `.part` file is written ([`Follow`]); the last byte goes out only once the content
//!   is verified, so a response that follows a failed or mismatched fetch ends short.
//!   Every follower of a sha256 shares its one fetch. A fetch that receives nothing from
//!   the store for [`CacheSettings::fetch_stall`] fails, and its followers with it.
//!
//! One task ([`CacheTask`]) owns the state; [`ImageCache`] is its cloneable front door
//! (messages and replies). The decisions are pure functions in `index` (unit-tested
//! without sockets or files); the task runs the slow work — hashing, fetching,
//! deleting — as jobs of its own, at most one per sha256 at a time, so its state is
//! never held while a file is read, written or removed. Requests for a sha256 that has
//! a job wait for it, except those that follow a fetch.

mod follow;
mod index;
mod jobs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use substruct_runtime::error_chain;
use substruct_wire::{ImageName, Sha256Digest};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use follow::Progress;
pub use follow::{Fetching, Follow};
pub use index::CacheStats;
use index::{Found, Index, Next, Verdict, NAMES_FILE};
use jobs::{stamp_of, Done, Job, Pace, Store};

/// Why an image could not be made ready. Cloneable: one failed fetch answers every
/// request that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The cache directory cannot be created or read.
    #[error("cache directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The edge has no NATS connection, or it is down.
    #[error("no connection to the controller's image store (NATS)")]
    Offline,
    /// The registry (KV `images`) did not answer.
    #[error("reading the image registry for {:?}", name.as_str())]
    Registry {
        /// The image asked for.
        name: ImageName,
        /// The KV failure.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The registry entry is not `{sha256, size, …}` with a valid digest.
    #[error("image {:?} has a registry entry that does not decode", name.as_str())]
    BadEntry {
        /// The image asked for.
        name: ImageName,
    },
    /// The object store did not deliver the content.
    #[error("fetching image content {sha256}")]
    Fetch {
        /// The object.
        sha256: Sha256Digest,
        /// The object store failure.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The object store sent nothing for the stall timeout.
    #[error("fetching image content {sha256}: nothing from the object store for {after:?} (after {written} bytes)")]
    Stalled {
        /// The object.
        sha256: Sha256Digest,
        /// Bytes received before it stalled.
        written: u64,
        /// The stall timeout ([`CacheSettings::fetch_stall`]).
        after: Duration,
    },
    /// A file being fetched cannot be read back for a response that follows the fetch.
    #[error("reading cache file {path} while it is fetched")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The content delivered is not what the registry says.
    #[error("image content {sha256} from the store hashes to {got} ({size} bytes, expected {expected_size}); not cached")]
    Mismatch {
        /// The object asked for.
        sha256: Sha256Digest,
        /// What the content hashed to.
        got: Sha256Digest,
        /// Bytes received.
        size: u64,
        /// Bytes registered.
        expected_size: u64,
    },
    /// The image does not fit on the cache's filesystem above the free-space reserve,
    /// even with every file not in use (by a job or an open response) evicted. Nothing
    /// was evicted.
    #[error(
        "no room for image {sha256} ({size} bytes): {available} bytes free on the cache's \
         filesystem, of which {committed} are still to be written by the fetches running, \
         {min_free} must stay free, and evicting every unused image would free only \
         {evictable} more"
    )]
    NoSpace {
        /// The image.
        sha256: Sha256Digest,
        /// Its registered size.
        size: u64,
        /// Bytes free on the filesystem (for unprivileged users).
        available: u64,
        /// Bytes the fetches already running have still to write (registered size
        /// less written): counted as taken.
        committed: u64,
        /// The reserve ([`CacheSettings::min_free_bytes`]).
        min_free: u64,
        /// What evicting every file not in use would free.
        evictable: u64,
    },
    /// A fetch stopped because the filesystem's free space fell to the reserve.
    #[error(
        "fetching image {sha256} stopped after {written} bytes: {available} bytes left free \
         on the cache's filesystem, {min_free} must stay free"
    )]
    ReserveReached {
        /// The image.
        sha256: Sha256Digest,
        /// Bytes written when it stopped.
        written: u64,
        /// Bytes free then.
        available: u64,
        /// The reserve.
        min_free: u64,
    },
    /// The free space of the cache's filesystem cannot be read.
    #[error("reading the free space of {path}")]
    FreeSpace {
        /// The cache directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A cache file cannot be written.
    #[error("writing cache file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The cache task is not running (the edge is shutting down).
    #[error("the image cache has stopped")]
    Stopped,
}

/// What the registry says about an image name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ImageMeta {
    /// The content's digest: the object's name and the cache file's.
    pub sha256: Sha256Digest,
    /// The content's length in bytes.
    pub size: u64,
}

/// What the cache holds, verified, as the edge reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheContents {
    /// The files verified in this run, sorted.
    pub verified: Vec<Sha256Digest>,
    /// Bytes held (verified or not).
    pub size: u64,
}

/// Where the cache lives and how it reaches the controller's image store.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The cache directory (created if missing).
    pub dir: PathBuf,
    /// Most bytes held, except by files in use.
    pub cap_bytes: u64,
    /// Bytes to leave free on the cache's filesystem (default
    /// [`DEFAULT_MIN_FREE_BYTES`]; 0: no reserve).
    pub min_free_bytes: u64,
    /// The NATS connection; `None`: only cached files of known names are served.
    pub client: Option<async_nats::Client>,
    /// The hub's JetStream domain when the edge sits behind a leaf node.
    pub js_domain: Option<String>,
    /// Where hits, misses, fetches and the bytes held are counted.
    pub metrics: Arc<Metrics>,
    /// A fetch that receives nothing from the object store for this long (the first
    /// answer included) fails, and the responses following it end short (default
    /// [`DEFAULT_FETCH_STALL`]).
    pub fetch_stall: Duration,
    /// For tests: see [`CacheSettings::with_chunk_gate`]. `None` in production.
    pub chunk_gate: Option<Arc<Semaphore>>,
}

impl CacheSettings {
    /// A cache in `dir` of at most `cap_bytes`, reaching the store over `client`.
    pub fn new(
        dir: impl Into<PathBuf>,
        cap_bytes: u64,
        client: Option<async_nats::Client>,
    ) -> Self {
        Self {
            dir: dir.into(),
            cap_bytes,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            client,
            js_domain: None,
            metrics: Arc::new(Metrics::new()),
            fetch_stall: DEFAULT_FETCH_STALL,
            chunk_gate: None,
        }
    }

    /// Fails a fetch that receives nothing from the object store for `stall`.
    pub fn with_fetch_stall(mut self, stall: Duration) -> Self {
        self.fetch_stall = stall;
        self
    }

    /// For tests only: before each chunk it reads from the object store, a fetch takes
    /// (and consumes) a permit of `gate`, so a test can hold a fetch part-way and let
    /// it go on, chunk by chunk, without sleeping. A closed gate lets everything
    /// through. The stall timeout does not run while a fetch waits at the gate.
    pub fn with_chunk_gate(mut self, gate: Arc<Semaphore>) -> Self {
        self.chunk_gate = Some(gate);
        self
    }

    /// Counts into `metrics` (without this, into metrics of the cache's own).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Leaves `bytes` free on the cache's filesystem.
    pub fn with_min_free(mut self, bytes: u64) -> Self {
        self.min_free_bytes = bytes;
        self
    }

    /// Reaches JetStream through `domain` (the hub's, behind a leaf node).
    pub fn with_js_domain(mut self, domain: Option<String>) -> Self {
        self.js_domain = domain;
        self
    }
}

/// Space left free on the cache's filesystem unless configured otherwise: 1 GiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1 << 30;

/// How long a fetch may receive nothing from the object store unless configured
/// otherwise: 30 s (the prospector's own idle limit per read).
pub const DEFAULT_FETCH_STALL: Duration = Duration::from_secs(30);

/// An image the cache can answer with now.
#[derive(Debug)]
pub enum CachedImage {
    /// A verified cache file.
    Ready(PathBuf),
    /// Being fetched: follow it ([`Fetching::follow`]).
    Fetching(Fetching),
}

/// How long a known name waits for the registry before using its last known sha256.
const REGISTRY_WAIT: Duration = Duration::from_secs(2);
/// Requests waiting for the cache task.
const QUEUE_LEN: usize = 256;

/// The cache's front door: cheap to clone; every call is a message to the [`CacheTask`].
#[derive(Debug, Clone)]
pub struct ImageCache {
    tx: mpsc::Sender<Msg>,
    store: Arc<Store>,
    dir: PathBuf,
    contents: watch::Receiver<CacheContents>,
    stats: watch::Receiver<CacheStats>,
    /// The fetches' stall timeout: how long a response waits for a fetch to start.
    stall: Duration,
}

/// The task that owns the cache's state; run it with [`CacheTask::run`].
#[derive(Debug)]
pub struct CacheTask {
    state: State,
    rx: mpsc::Receiver<Msg>,
}

/// A request to the cache task.
#[derive(Debug)]
enum Msg {
    /// The last known registry entry of a name.
    Known {
        name: ImageName,
        reply: oneshot::Sender<Option<ImageMeta>>,
    },
    /// A name's registry entry changed (`None`: no longer registered).
    Remember {
        name: ImageName,
        meta: Option<ImageMeta>,
    },
    /// Make a file ready (or check it).
    Want(Waiter),
    /// The files not verified in this run.
    Unverified {
        reply: oneshot::Sender<Vec<Sha256Digest>>,
    },
}

/// A request waiting for a sha256.
#[derive(Debug)]
enum Waiter {
    /// Serve: the verified file (fetched if needed), or why not.
    Serve {
        meta: ImageMeta,
        reply: oneshot::Sender<Result<PathBuf, CacheError>>,
    },
    /// Check (start-up): hash the file if unverified; the reply says whether it was
    /// removed as bad. Never fetches.
    Check {
        sha256: Sha256Digest,
        reply: oneshot::Sender<bool>,
    },
    /// Serve or follow: the verified file, or at once the fetch in progress (started
    /// if needed); waits only for a hash or a delete.
    Follow {
        meta: ImageMeta,
        reply: oneshot::Sender<Result<CachedImage, CacheError>>,
    },
}

impl Waiter {
    fn sha256(&self) -> &Sha256Digest {
        match self {
            Waiter::Serve { meta, .. } | Waiter::Follow { meta, .. } => &meta.sha256,
            Waiter::Check { sha256, .. } => sha256,
        }
    }

    /// The registry entry a serve or follow asks for (a check has none).
    fn meta(&self) -> Option<&ImageMeta> {
        match self {
            Waiter::Serve { meta, .. } | Waiter::Follow { meta, .. } => Some(meta),
            Waiter::Check { .. } => None,
        }
    }

    /// Answers with the verified file at `path` (a check: nothing was removed).
    fn ready(self, path: PathBuf) {
        match self {
            Waiter::Serve { reply, .. } => {
                let _ = reply.send(Ok(path));
            }
            Waiter::Follow { reply, .. } => {
                let _ = reply.send(Ok(CachedImage::Ready(path)));
            }
            Waiter::Check { reply, .. } => {
                let _ = reply.send(false);
            }
        }
    }

    /// Answers with why the file cannot be had (a check: nothing was removed).
    fn fail(self, e: CacheError) {
        match self {
            Waiter::Serve { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Waiter::Follow { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Waiter::Check { reply, .. } => {
                let _ = reply.send(false);
            }
        }
    }
}

impl ImageCache {
    /// Opens (creating) the cache directory: removes half-written `.part` files and
    /// anything that is not a `{sha256}` file, and indexes the rest as unverified.
    /// Nothing is served until the returned task runs.
    pub fn open(settings: CacheSettings) -> Result<(Self, CacheTask), CacheError> {
        let CacheSettings {
            dir,
            cap_bytes,
            min_free_bytes,
            client,
            js_domain,
            metrics,
            fetch_stall,
            chunk_gate,
        } = settings;
        let dir_err = |source| CacheError::Dir {
            path: dir.clone(),
            source: Arc::new(source),
        };
        std::fs::create_dir_all(&dir).map_err(dir_err)?;
        let mut index = Index::new(cap_bytes);
        for entry in std::fs::read_dir(&dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let meta = entry.metadata().map_err(dir_err)?;
            match index::classify(&entry.file_name().to_string_lossy(), meta.is_file()) {
                Found::Image(sha) => index.found(sha, meta.len()),
                Found::Names => {}
                Found::Stray => {
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
        }
        // Our own file: unreadable or from an older version, it is only a lost head start.
        let names = std::fs::read(dir.join(NAMES_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<HashMap<ImageName, ImageMeta>>(&b).ok())
            .unwrap_or_default();
        let store = Arc::new(Store {
            client,
            js_domain,
            remote: tokio::sync::OnceCell::new(),
        });
        let (contents_tx, contents) = watch::channel(CacheContents::default());
        let (stats_tx, stats) = watch::channel(CacheStats::default());
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let mut state = State {
            dir: dir.clone(),
            index,
            min_free: min_free_bytes,
            stats: CacheStats::default(),
            names,
            busy: HashMap::new(),
            jobs: JoinSet::new(),
            job_shas: HashMap::new(),
            fetches: HashMap::new(),
            pace: Pace {
                stall: fetch_stall,
                gate: chunk_gate,
            },
            store: store.clone(),
            contents: contents_tx,
            stats_tx,
            metrics,
        };
        state.publish();
        let handle = Self {
            tx,
            store,
            dir,
            contents,
            stats,
            stall: fetch_stall,
        };
        Ok((handle, CacheTask { state, rx }))
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        *self.stats.borrow()
    }

    /// The verified contents, updated after every change: `changed()` on the receiver
    /// resolves when they may have changed.
    pub fn subscribe(&self) -> watch::Receiver<CacheContents> {
        self.contents.clone()
    }

    /// The sha256s of the files verified in this run (what the edge reports).
    pub fn verified(&self) -> Vec<Sha256Digest> {
        self.contents.borrow().verified.clone()
    }

    /// Bytes held.
    pub fn size(&self) -> u64 {
        self.contents.borrow().size
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends `msg` and waits for its reply.
    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Result<T, CacheError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(msg(reply))
            .await
            .map_err(|_| CacheError::Stopped)?;
        answer.await.map_err(|_| CacheError::Stopped)
    }

    /// What the registry says about `name`; `None` when it is not registered.
    pub async fn lookup(&self, name: &ImageName) -> Result<Option<ImageMeta>, CacheError> {
        let remote = self.store.remote().await?;
        let value = remote
            .registry
            .get(name.as_str())
            .await
            .map_err(|e| CacheError::Registry {
                name: name.clone(),
                source: Arc::new(e),
            })?;
        let Some(value) = value else {
            return Ok(None);
        };
        serde_json::from_slice(&value)
            .map(Some)
            .map_err(|_| CacheError::BadEntry { name: name.clone() })
    }

    /// The verified cache file for image `name`, fetching it if needed; `None` when
    /// no image has that name.
    ///
    /// When the registry cannot be reached (NATS or the WAN link down), a name this
    /// edge resolved before is served from its last known sha256 if the file is cached.
    pub async fn path_for(&self, name: &ImageName) -> Result<Option<PathBuf>, CacheError> {
        match self.resolve(name).await? {
            Some(meta) => self.ensure(&meta).await.map(Some),
            None => Ok(None),
        }
    }

    /// Image `name` as the cache can answer with it now: the verified file, or the fetch
    /// in progress (started if needed) to follow; `None` when no image has that name.
    /// Waits for a hash of an unverified file (or the delete of an evicted one), and
    /// for a fetch only until it has reached the object store (at most the stall
    /// timeout; see [`Fetching`]): a fetch that fails before is this call's error
    /// (the store out of reach, the object missing), not a cut response. The registry
    /// is read as for [`ImageCache::path_for`].
    pub async fn open_image(&self, name: &ImageName) -> Result<Option<CachedImage>, CacheError> {
        let Some(meta) = self.resolve(name).await? else {
            return Ok(None);
        };
        let follow = |reply| Msg::Want(Waiter::Follow { meta, reply });
        match self.ask(follow).await?? {
            CachedImage::Fetching(mut fetching) => {
                fetching.started(self.stall).await?;
                Ok(Some(CachedImage::Fetching(fetching)))
            }
            ready => Ok(Some(ready)),
        }
    }

    /// The registry entry of `name` (the last known one when the registry is out of
    /// reach); `None` when it is not registered.
    async fn resolve(&self, name: &ImageName) -> Result<Option<ImageMeta>, CacheError> {
        let known = self
            .ask(|reply| Msg::Known {
                name: name.clone(),
                reply,
            })
            .await?;
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
                    self.remember(name, Some(meta.clone())).await?;
                }
                meta
            }
            Ok(None) => {
                if known.is_some() {
                    self.remember(name, None).await?;
                }
                return Ok(None);
            }
            Err(e @ (CacheError::Offline | CacheError::Registry { .. })) => match known {
                Some(meta) => {
                    tracing::debug!(image = %name, error = %e, "registry unreachable; using the last known sha256");
                    meta
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        Ok(Some(meta))
    }

    async fn remember(&self, name: &ImageName, meta: Option<ImageMeta>) -> Result<(), CacheError> {
        let msg = Msg::Remember {
            name: name.clone(),
            meta,
        };
        self.tx.send(msg).await.map_err(|_| CacheError::Stopped)
    }

    /// Fetches the named images now (the site's profiles use them), logging failures.
    pub async fn prefetch(&self, names: &[ImageName]) {
        for name in names {
            match self.path_for(name).await {
                Ok(Some(_)) => tracing::debug!(image = %name, "prefetched"),
                Ok(None) => {
                    tracing::debug!(image = %name, "not a registered image; not prefetched")
                }
                Err(e) => {
                    tracing::info!(image = %name, error = %error_chain(&e), "prefetch failed")
                }
            }
        }
    }

    /// The verified file for `meta`, from the cache or fetched.
    pub async fn ensure(&self, meta: &ImageMeta) -> Result<PathBuf, CacheError> {
        self.ask(|reply| {
            Msg::Want(Waiter::Serve {
                meta: meta.clone(),
                reply,
            })
        })
        .await?
    }

    /// Hashes every file not yet verified in this run, one at a time; deletes those that
    /// do not hash to their name (start-up: a file damaged while the edge was down is
    /// never served). Returns how many were deleted.
    pub async fn verify_all(&self) -> usize {
        let Ok(pending) = self.ask(|reply| Msg::Unverified { reply }).await else {
            return 0;
        };
        let mut bad = 0;
        for sha256 in pending {
            let check = |reply| Msg::Want(Waiter::Check { sha256, reply });
            if self.ask(check).await.unwrap_or(false) {
                bad += 1;
            }
        }
        bad
    }
}

/// A fetch running, as followers join it.
#[derive(Debug)]
struct FetchInProgress {
    /// The registered size it must deliver.
    size: u64,
    /// Shared with the job (bytes written); the task sets how it ended.
    progress: Arc<watch::Sender<Progress>>,
}

/// Everything the cache task owns.
#[derive(Debug)]
struct State {
    dir: PathBuf,
    index: Index,
    /// Bytes to leave free on the cache's filesystem.
    min_free: u64,
    stats: CacheStats,
    /// Names resolved while the registry was reachable (`names.json`).
    names: HashMap<ImageName, ImageMeta>,
    /// The sha256s with a job running, and the requests waiting for it.
    busy: HashMap<Sha256Digest, Vec<Waiter>>,
    jobs: JoinSet<Done>,
    job_shas: HashMap<tokio::task::Id, Sha256Digest>,
    /// The fetches running (each also in `busy`): their progress, for followers.
    fetches: HashMap<Sha256Digest, FetchInProgress>,
    /// The fetches' stall timeout and the tests' gate.
    pace: Pace,
    store: Arc<Store>,
    contents: watch::Sender<CacheContents>,
    stats_tx: watch::Sender<CacheStats>,
    metrics: Arc<Metrics>,
}

impl CacheTask {
    /// Serves the cache's requests until `cancel` or until every handle is dropped.
    /// Jobs still running then are stopped (a `.part` file left behind is removed at
    /// the next start).
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.state.handle(msg),
                    None => break,
                },
                Some(done) = self.state.jobs.join_next_with_id() => self.state.finished(done),
            }
        }
        self.state.jobs.shutdown().await;
    }
}

impl State {
    fn path(&self, sha: &Sha256Digest) -> PathBuf {
        self.dir.join(sha.as_str())
    }

    fn publish(&mut self) {
        self.stats.fetching = self.fetches.len() as u64;
        let contents = CacheContents {
            verified: self.index.verified_files(),
            size: self.index.size(),
        };
        self.metrics.cache.set_bytes(contents.size);
        self.contents.send_if_modified(|c| {
            let changed = *c != contents;
            *c = contents;
            changed
        });
        self.stats_tx.send_replace(self.stats);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Known { name, reply } => {
                let _ = reply.send(self.names.get(&name).cloned());
            }
            Msg::Remember { name, meta } => {
                match meta {
                    Some(m) => self.names.insert(name, m),
                    None => self.names.remove(&name),
                };
                self.save_names();
            }
            Msg::Want(waiter) => {
                self.want(waiter);
                self.publish();
            }
            Msg::Unverified { reply } => {
                let _ = reply.send(self.index.unverified());
            }
        }
    }

    /// Saves `names.json` (best effort; a small file, written in place of a job so two
    /// saves never race).
    fn save_names(&self) {
        let path = self.dir.join(NAMES_FILE);
        let tmp = self.dir.join(format!("{NAMES_FILE}.tmp"));
        let written = serde_json::to_vec(&self.names)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot save the image cache's name index");
        }
    }

    /// Answers `waiter` now, or starts (or joins) the job it needs. A follower of a
    /// fetch in progress is answered at once.
    fn want(&mut self, waiter: Waiter) {
        let sha = waiter.sha256().clone();
        if self.busy.contains_key(&sha) {
            let waiter = match (waiter, self.fetches.get(&sha)) {
                (Waiter::Follow { reply, .. }, Some(fetch)) => {
                    let fetching = Fetching {
                        sha256: sha,
                        size: fetch.size,
                        progress: fetch.progress.subscribe(),
                    };
                    self.followed();
                    let _ = reply.send(Ok(CachedImage::Fetching(fetching)));
                    return;
                }
                (waiter, _) => waiter,
            };
            self.busy.entry(sha).or_default().push(waiter);
            return;
        }
        let path = self.path(&sha);
        match (
            self.index.next(&sha, stamp_of(&path)),
            waiter.meta().cloned(),
        ) {
            (Next::Serve, Some(_)) => {
                self.index.touch(&sha);
                self.stats.hits += 1;
                self.metrics.cache.hit();
                self.publish();
                waiter.ready(path);
            }
            (Next::Serve, None) => waiter.ready(path),
            (Next::Verify, meta) => {
                self.start(sha.clone(), Job::Verify, meta.map(|m| m.size));
                self.busy.entry(sha).or_default().push(waiter);
            }
            (Next::Fetch, Some(meta)) => {
                self.metrics.cache.miss();
                self.index.forget(&sha);
                let freeing = match self.make_room(&meta) {
                    Ok(freeing) => freeing,
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), "image not fetched");
                        self.metrics.cache.fetch_failed();
                        waiter.fail(e);
                        return;
                    }
                };
                self.start(sha, Job::Fetch { freeing }, Some(meta.size));
                // Joins the fetch just started: a follower is answered at once.
                self.want(waiter);
            }
            (Next::Fetch, None) => {
                // Gone since start: nothing to check, nothing fetched.
                self.index.forget(&sha);
                waiter.ready(path);
            }
        }
    }

    /// Counts a response that follows a fetch in progress.
    fn followed(&mut self) {
        self.stats.streams += 1;
        self.metrics.cache.streamed();
    }

    /// Starts `job` on `sha` (the caller marks it busy).
    fn start(&mut self, sha: Sha256Digest, job: Job, expected_size: Option<u64>) {
        let path = self.path(&sha);
        let handle = match job {
            Job::Verify => self
                .jobs
                .spawn(jobs::verify(sha.clone(), path, expected_size)),
            Job::Fetch { freeing } => {
                let size = expected_size.unwrap_or(0);
                let progress = Arc::new(watch::Sender::new(Progress::default()));
                self.fetches.insert(
                    sha.clone(),
                    FetchInProgress {
                        size,
                        progress: progress.clone(),
                    },
                );
                self.jobs.spawn(jobs::fetch(
                    self.store.clone(),
                    self.dir.clone(),
                    sha.clone(),
                    size,
                    jobs::Reserve {
                        min_free: self.min_free,
                        freeing,
                    },
                    self.pace.clone(),
                    progress,
                ))
            }
            Job::Delete => self.jobs.spawn(jobs::delete(sha.clone(), path)),
        };
        self.busy.entry(sha.clone()).or_default();
        self.job_shas.insert(handle.id(), sha);
    }

    /// Applies a job's outcome and answers (or re-queues) the requests that waited.
    /// The published contents and counters are updated before any answer leaves.
    fn finished(&mut self, done: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let (id, done) = match done {
            Ok((id, done)) => (id, Some(done)),
            Err(e) => (e.id(), None),
        };
        let Some(sha) = self.job_shas.remove(&id) else {
            return;
        };
        let waiters = self.busy.remove(&sha).unwrap_or_default();
        // Told how the fetch ended once the state shows it (below), like the waiters.
        let followers = self.fetches.remove(&sha).map(|f| f.progress);
        let end = |result: Result<(), CacheError>| {
            if let Some(progress) = &followers {
                progress.send_modify(|p| p.end = Some(result));
            }
        };
        match done {
            Some(Done::Verified(Verdict::Good, Some(stamp))) => {
                self.index.verified(&sha, stamp);
                self.publish();
                self.requeue(waiters);
            }
            Some(Done::Verified(verdict, _)) => {
                tracing::warn!(sha256 = %sha, ?verdict, "cache file is corrupt, half-written or unreadable; removed");
                self.index.forget(&sha);
                self.stats.corrupt += 1;
                self.metrics.cache.corrupt();
                self.publish();
                for waiter in waiters {
                    match waiter {
                        Waiter::Check { reply, .. } => {
                            let _ = reply.send(true);
                        }
                        serve => self.want(serve),
                    }
                }
            }
            Some(Done::Fetched(Ok(stamp))) => {
                self.index.fetched(sha.clone(), stamp);
                self.stats.fetches += 1;
                self.metrics.cache.fetched(stamp.0);
                tracing::info!(sha256 = %sha, size = stamp.0, "image fetched into the cache");
                self.evict(&sha);
                self.publish();
                end(Ok(()));
                let path = self.path(&sha);
                for waiter in waiters {
                    waiter.ready(path.clone());
                }
            }
            Some(Done::Fetched(Err(e))) => {
                self.metrics.cache.fetch_failed();
                if followers.is_some() {
                    tracing::warn!(sha256 = %sha, error = %error_chain(&e),
                        "image fetch failed; the responses that followed it end short");
                }
                self.publish();
                end(Err(e.clone()));
                for waiter in waiters {
                    waiter.fail(e.clone());
                }
            }
            Some(Done::Deleted) => self.requeue(waiters),
            None => {
                tracing::error!(sha256 = %sha, "an image cache job failed");
                self.index.forget(&sha);
                end(Err(CacheError::Stopped));
                // Dropping the waiters answers them with `Stopped`.
            }
        }
        self.publish();
    }

    fn requeue(&mut self, waiters: Vec<Waiter>) {
        for waiter in waiters {
            self.want(waiter);
        }
    }

    /// Evicts least recently used files until the cache fits (never `keep` or a file
    /// with a job); the files are deleted by jobs, requests for them wait.
    fn evict(&mut self, keep: &Sha256Digest) {
        let busy = &self.busy;
        let victims = self
            .index
            .evict(|sha| sha == keep || busy.contains_key(sha));
        for victim in victims {
            self.stats.evictions += 1;
            self.metrics.cache.evicted();
            tracing::info!(sha256 = %victim, cap = self.index_cap(), "evicted from the image cache");
            self.start(victim, Job::Delete, None);
        }
    }

    /// Makes room for `meta`'s file above the free-space reserve: evicts least recently
    /// used files not in use — no job on them, no response holding them open — (deleted
    /// by jobs) until it fits, and returns their paths;
    /// or, when even evicting all of them would not do, evicts nothing and says why.
    fn make_room(&mut self, meta: &ImageMeta) -> Result<Vec<PathBuf>, CacheError> {
        if self.min_free == 0 {
            return Ok(Vec::new());
        }
        // A metadata call, like the `stat` that decided to fetch: not a file's content.
        let available = jobs::available(&self.dir).map_err(|e| CacheError::FreeSpace {
            path: self.dir.clone(),
            source: Arc::new(e),
        })?;
        // What the fetches already running still have to write is as good as taken:
        // admitting an image against free space they are about to fill would fail one
        // of them with `ReserveReached` gigabytes later.
        let committed: u64 = self
            .fetches
            .values()
            .map(|f| f.size.saturating_sub(f.progress.borrow().written))
            .sum();
        let wanted = meta
            .size
            .saturating_add(self.min_free)
            .saturating_add(committed)
            .saturating_sub(available);
        if wanted == 0 {
            return Ok(Vec::new());
        }
        // A file a response still has open frees nothing when deleted: not a victim.
        let open = jobs::open_files(&self.dir);
        let busy = &self.busy;
        let victims = self
            .index
            .make_room(wanted, |sha| busy.contains_key(sha) || open.contains(sha))
            .map_err(|evictable| CacheError::NoSpace {
                sha256: meta.sha256.clone(),
                size: meta.size,
                available,
                committed,
                min_free: self.min_free,
                evictable,
            })?;
        let mut freeing = Vec::with_capacity(victims.len());
        for victim in victims {
            self.stats.evictions += 1;
            self.metrics.cache.evicted();
            tracing::info!(sha256 = %victim, for_image = %meta.sha256, available,
                min_free = self.min_free, "evicted from the image cache to keep its free-space reserve");
            freeing.push(self.path(&victim));
            self.start(victim, Job::Delete, None);
        }
        Ok(freeing)
    }

    fn index_cap(&self) -> u64 {
        self.index.cap()
    }
}
