//! One site's keys of a JetStream KV bucket, mirrored into an in-memory [`Table`] and a
//! disk copy: the shared machinery behind [`crate::intents`] (`boot`, by MAC) and
//! [`crate::install`] (`install`, by install token).
//!
//! [`watch`] keeps the table equal to the bucket's `{site}.>` keys: on every (re)start it
//! takes a full snapshot through a named ordered push consumer (so keys deleted while the
//! edge was away disappear) and applies it as one replacement, then applies puts, deletes
//! and purges as they come, a burst of them before one save. Failures are retried forever
//! with backoff while the table keeps serving its current contents. The per-bucket parts
//! (names, decoding a key and value, the disk copy, log lines) come from a [`Mirror`].

use std::collections::HashMap;
use std::hash::Hash;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use substruct_runtime::error_chain;
use substruct_runtime::jetstream::{ensure_kv, BucketSpec};
use substruct_wire::subjects::boot_site_filter;
use substruct_wire::SiteId;
use tokio_util::sync::CancellationToken;

/// Shared, read-mostly table of one site's entries of a bucket: a cloneable handle.
#[derive(Debug, Clone)]
pub struct Table<K, V> {
    inner: Arc<RwLock<HashMap<K, V>>>,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Table<K, V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry of `key`, if there is one.
    pub fn get(&self, key: &K) -> Option<V> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Whether `key` has an entry.
    pub fn contains(&self, key: &K) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Sets the entry of `key`.
    pub fn set(&self, key: K, value: V) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, value);
    }

    /// Forgets the entry of `key`.
    pub fn remove(&self, key: &K) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Replaces every entry at once (after a full snapshot).
    pub fn replace_all(&self, entries: HashMap<K, V>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = entries;
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every entry (for persisting to disk).
    pub fn snapshot(&self) -> HashMap<K, V> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the entry of `key` in place (no clone of the whole value).
    pub fn with<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(f)
    }
}

/// The KV operation of one message in the bucket's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A value was written.
    Put,
    /// The key was deleted or purged (or removed by a marker, e.g. its TTL ran out).
    Delete,
}

/// The KV operation of a message in the bucket's stream (headers as the KV layer writes them).
pub fn op_of(headers: Option<&async_nats::HeaderMap>) -> Op {
    let Some(h) = headers else { return Op::Put };
    match h.get("KV-Operation").map(|v| v.as_str()) {
        Some("DEL") | Some("PURGE") => return Op::Delete,
        _ => {}
    }
    match h.get("Nats-Marker-Reason").map(|v| v.as_str()) {
        Some(_) => Op::Delete,
        None => Op::Put,
    }
}

/// A change the watch saw, already decoded by [`Mirror::decode`].
#[derive(Debug)]
pub enum Change<K, V> {
    /// Set the entry of the key.
    Put(K, V),
    /// Forget the entry of the key.
    Remove(K),
    /// Nothing to apply (a bad key or value, already logged).
    Skip,
}

/// Why a watch on a bucket failed; [`Mirror::watch_error`] turns it into the bucket's error.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The bucket could not be opened or created.
    #[error("opening the KV bucket")]
    OpenBucket(#[source] substruct_runtime::jetstream::SetupError),
    /// The consumer could not be created or its messages not subscribed to.
    #[error("starting a watch on the KV bucket")]
    Watch(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The message stream failed.
    #[error("watching the KV bucket")]
    WatchStream(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The message stream ended.
    #[error("the watch on the KV bucket ended")]
    WatchEnded,
}

/// The per-bucket parts of a mirror, implemented by the bucket's disk-copy handle.
pub trait Mirror: Clone + Send + Sync + 'static {
    /// What the table is keyed by (the part of the KV key after `{site}.`).
    type Key: Eq + Hash + Clone + Send + Sync + 'static;
    /// What a key holds.
    type Value: Clone + Send + Sync + 'static;
    /// The bucket's error (cache and watch failures).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The KV bucket.
    const BUCKET: &'static str;
    /// The consumer name's prefix; the name is `{prefix}-{site}` made unique.
    const CONSUMER_PREFIX: &'static str;
    /// The consumer's description.
    const DESCRIPTION: &'static str;
    /// Most live changes applied between two saves.
    const MAX_BATCH: usize;
    /// The watch, in log lines ("boot intent watch").
    const WATCH_NAME: &'static str;
    /// The disk copy, in log lines ("intent cache").
    const CACHE_NAME: &'static str;

    /// Decodes one KV message (`key` without the bucket prefix); bad keys and values are
    /// logged and [`Change::Skip`]ped.
    fn decode(site: &SiteId, key: &str, op: Op, value: &[u8]) -> Change<Self::Key, Self::Value>;

    /// Writes `table` to the disk copy (blocking).
    fn save_table(&self, table: &Table<Self::Key, Self::Value>) -> Result<(), Self::Error>;

    /// The bucket's error for a watch failure.
    fn watch_error(error: WatchError) -> Self::Error;

    /// Logs that the snapshot was applied: `count` entries.
    fn log_synced(site: &SiteId, count: usize);

    /// Logs a live put.
    fn log_put(key: &Self::Key, value: &Self::Value);

    /// Logs a live delete.
    fn log_remove(key: &Self::Key);
}

/// How the watcher connects and how it backs off; `C` is the disk copy ([`Mirror`]).
#[derive(Debug, Clone)]
pub struct WatchSettings<C> {
    /// The site whose keys (`{site}.>`) are mirrored.
    pub site: SiteId,
    /// Where the table is saved after each change.
    pub cache: C,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// The hub's JetStream domain when the edge sits behind a leaf node.
    pub js_domain: Option<String>,
}

impl<C> WatchSettings<C> {
    /// Defaults: 250 ms doubling up to 10 s, no JetStream domain.
    pub fn new(site: SiteId, cache: C) -> Self {
        Self {
            site,
            cache,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            js_domain: None,
        }
    }

    /// Reaches JetStream through `domain` (the hub's, behind a leaf node).
    pub fn with_js_domain(mut self, domain: Option<String>) -> Self {
        self.js_domain = domain;
        self
    }
}

/// Watches `C::BUCKET` for the settings' site until `cancel`, reconnecting forever with
/// backoff. The table keeps serving its current contents (from disk or the last
/// snapshot) meanwhile.
pub async fn watch<C: Mirror>(
    client: async_nats::Client,
    settings: WatchSettings<C>,
    table: Table<C::Key, C::Value>,
    cancel: CancellationToken,
) {
    let mut backoff = settings.min_backoff;
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = watch_once(&client, &settings, &table, &cancel) => r,
        };
        match result {
            Ok(()) => return, // cancelled inside
            Err(Failure { error, synced }) => {
                if synced {
                    backoff = settings.min_backoff;
                }
                let error = C::watch_error(error);
                tracing::warn!(error = %error_chain(&error), retry_in = ?backoff,
                    "{} failed; serving from the current table", C::WATCH_NAME);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

#[derive(Debug)]
struct Failure {
    error: WatchError,
    /// Whether a full snapshot was applied before the failure (resets the backoff).
    synced: bool,
}

impl From<WatchError> for Failure {
    fn from(error: WatchError) -> Self {
        Self {
            error,
            synced: false,
        }
    }
}

/// Saves the table off the async threads (fsync can take a while).
async fn persist<C: Mirror>(settings: &WatchSettings<C>, table: &Table<C::Key, C::Value>) {
    let (cache, table) = (settings.cache.clone(), table.clone());
    match tokio::task::spawn_blocking(move || cache.save_table(&table)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %error_chain(&e), "cannot save the {}", C::CACHE_NAME)
        }
        Err(e) => tracing::error!(error = %e, "{} save task failed", C::CACHE_NAME),
    }
}

/// One watch: the snapshot, then live changes until `cancel` (`Ok`) or a failure.
async fn watch_once<C: Mirror>(
    client: &async_nats::Client,
    settings: &WatchSettings<C>,
    table: &Table<C::Key, C::Value>,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let js = substruct_runtime::jetstream_context(client.clone(), settings.js_domain.as_deref());
    let kv = ensure_kv(&js, &BucketSpec::new(C::BUCKET))
        .await
        .map_err(WatchError::OpenBucket)?;
    let filter = format!("{}{}", kv.prefix, boot_site_filter(&settings.site));
    let consumer = kv
        .stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            name: Some(substruct_runtime::unique_consumer_name(&format!(
                "{}-{}",
                C::CONSUMER_PREFIX,
                settings.site
            ))),
            deliver_subject: client.new_inbox(),
            description: Some(C::DESCRIPTION.to_owned()),
            filter_subject: filter,
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| WatchError::Watch(Box::new(e)))?;
    let initial = consumer.cached_info().num_pending;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| WatchError::Watch(Box::new(e)))?;
    let decode = |msg: &jetstream::Message| {
        let key = msg.subject.as_str().strip_prefix(&kv.prefix).unwrap_or("");
        C::decode(
            &settings.site,
            key,
            op_of(msg.headers.as_ref()),
            &msg.payload,
        )
    };

    // Phase 1: the snapshot of every current key, applied as one replacement.
    let mut fresh: HashMap<C::Key, C::Value> = HashMap::new();
    let mut pending = initial;
    while pending > 0 {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(WatchError::WatchStream(Box::new(e)).into()),
            None => return Err(WatchError::WatchEnded.into()),
        };
        match decode(&msg) {
            Change::Put(key, value) => {
                fresh.insert(key, value);
            }
            Change::Remove(key) => {
                fresh.remove(&key);
            }
            Change::Skip => {}
        }
        pending = match msg.info() {
            Ok(info) => info.pending,
            Err(_) => pending.saturating_sub(1),
        };
    }
    let count = fresh.len();
    table.replace_all(fresh);
    persist(settings, table).await;
    C::log_synced(&settings.site, count);

    // Phase 2: live changes. Whatever is already waiting is applied before one save, so
    // a burst of updates costs one fsync, not one per key.
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let mut next = Some(first);
        let mut changed = false;
        let mut failure = None;
        let mut batch = 0usize;
        while let Some(msg) = next.take() {
            let msg = match msg {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    failure = Some(WatchError::WatchStream(Box::new(e)));
                    break;
                }
                None => {
                    failure = Some(WatchError::WatchEnded);
                    break;
                }
            };
            match decode(&msg) {
                Change::Put(key, value) => {
                    C::log_put(&key, &value);
                    table.set(key, value);
                    changed = true;
                }
                Change::Remove(key) => {
                    C::log_remove(&key);
                    table.remove(&key);
                    changed = true;
                }
                Change::Skip => {}
            }
            batch += 1;
            if batch < C::MAX_BATCH {
                next = messages.next().now_or_never();
            }
        }
        if changed {
            persist(settings, table).await;
        }
        if let Some(error) = failure {
            return Err(Failure {
                error,
                synced: true,
            });
        }
    }
}

/// Writes `bytes` to `path` atomically: a new temp file in the same directory created
/// with `mode` (before the umask), fsync, rename over `path`, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        // A leftover of a crashed run would keep its old mode: start from a new file.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kv_headers_give_the_operation() {
        assert_eq!(op_of(None), Op::Put);
        let mut h = async_nats::HeaderMap::new();
        assert_eq!(op_of(Some(&h)), Op::Put);
        h.insert("KV-Operation", "DEL");
        assert_eq!(op_of(Some(&h)), Op::Delete);
        h.insert("KV-Operation", "PURGE");
        assert_eq!(op_of(Some(&h)), Op::Delete);
        let mut marker = async_nats::HeaderMap::new();
        marker.insert("Nats-Marker-Reason", "MaxAge");
        assert_eq!(op_of(Some(&marker)), Op::Delete);
    }

    #[test]
    fn atomic_writes_replace_the_file_with_the_given_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/copy.json");
        write_atomically(&path, b"one", 0o600).unwrap();
        // A stale temp file of this process is replaced, not reused.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        std::fs::write(&tmp, b"stale").unwrap();
        write_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!Path::new(&tmp).exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}
