//! One site's keys of a JetStream KV bucket, mirrored into an in-memory [`Table`] and a
//! disk copy: the shared machinery behind [`crate::intents`] (`boot`, by MAC) and
//! [`crate::install`] (`install`, by install token).
//!
//! [`watch`] keeps the table equal to the bucket's `{site}.>` keys: on every (re)start it
//! takes a full snapshot through a named ordered push consumer (so keys deleted while the
//! edge was away disappear) and applies it as one replacement, then applies puts, deletes
//! and purges as they come, a burst of them before one save. Failures are retried forever
//! with backoff while the table keeps serving its current contents.
//!
//! This module owns everything the two buckets share: the watch, the [`KeyIndex`] that
//! finds the table entry a delete removes (each watch has its own), the disk copy
//! ([`DiskCopy`]: save, load, site check) and the one error type ([`MirrorError`]). A
//! [`Mirror`] adds only what is the bucket's own: names, how a put decodes into a table
//! entry, how a table key is written on disk, and log lines.

mod disk;

use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use substruct_runtime::backoff::Backoff;
use substruct_runtime::error_chain;
use substruct_runtime::jetstream::{ensure_kv, BucketSpec};
use substruct_wire::subjects::site_keys_filter;
use substruct_wire::SiteId;
use tokio_util::sync::CancellationToken;

pub use disk::{write_atomically, DiskCopy};

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

/// What one KV message does to the table ([`KeyIndex::apply`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Change<K, V> {
    /// Set the entry of `key`; first forget `replaced` if the KV key held another entry.
    Put {
        /// The table key.
        key: K,
        /// Its new value.
        value: V,
        /// The entry the same KV key held before, when it was another table key.
        replaced: Option<K>,
    },
    /// Forget the entry of the key.
    Remove(K),
    /// Nothing to apply (a bad key or value, already logged, or a delete of a key this
    /// watch never saw).
    Skip,
}

/// KV key → table key, for every put one watch applied: how a delete, which carries only
/// its KV key, finds the entry it removes (an `install` key names no token, only a digest
/// of it). One per watch, rebuilt by every snapshot and pruned by every delete.
#[derive(Debug)]
pub struct KeyIndex<K> {
    keys: HashMap<String, K>,
}

impl<K> Default for KeyIndex<K> {
    fn default() -> Self {
        Self {
            keys: HashMap::new(),
        }
    }
}

impl<K: Eq + Clone> KeyIndex<K> {
    /// Decodes one KV message (`kv_key` without the bucket prefix) of `site` into the
    /// change it makes, and records it. Pure apart from log lines.
    pub fn apply<M: Mirror<Key = K>>(
        &mut self,
        site: &SiteId,
        kv_key: &str,
        op: Op,
        payload: &[u8],
    ) -> Change<K, M::Value> {
        match op {
            Op::Delete => match self.keys.remove(kv_key) {
                Some(key) => Change::Remove(key),
                None => {
                    // Never put while this watch ran: not in the table either.
                    tracing::debug!("{}: delete of a key not in the table", M::WATCH_NAME);
                    Change::Skip
                }
            },
            Op::Put => match M::decode(site, kv_key, payload) {
                Some((key, value)) => {
                    let replaced = self
                        .keys
                        .insert(kv_key.to_owned(), key.clone())
                        .filter(|old| *old != key);
                    Change::Put {
                        key,
                        value,
                        replaced,
                    }
                }
                None => Change::Skip,
            },
        }
    }

    /// Number of KV keys known.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no KV key is known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why a disk copy or a watch of a mirrored bucket failed: the one error of both buckets.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The disk copy exists but cannot be read.
    #[error("reading {cache} {path}")]
    ReadCache {
        /// The disk copy, in words ("intent cache").
        cache: &'static str,
        /// Its file.
        path: PathBuf,
        /// The read failure.
        #[source]
        source: std::io::Error,
    },
    /// The disk copy is not what [`DiskCopy::save`] writes.
    #[error("parsing {cache} {path}")]
    ParseCache {
        /// The disk copy, in words.
        cache: &'static str,
        /// Its file.
        path: PathBuf,
        /// What does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The disk copy cannot be written.
    #[error("writing {cache} {path}")]
    WriteCache {
        /// The disk copy, in words.
        cache: &'static str,
        /// Its file.
        path: PathBuf,
        /// The write failure.
        #[source]
        source: std::io::Error,
    },
    /// The bucket could not be opened or created.
    #[error("opening KV bucket {bucket}")]
    OpenBucket {
        /// The bucket.
        bucket: &'static str,
        /// The JetStream failure.
        #[source]
        source: substruct_runtime::jetstream::SetupError,
    },
    /// The consumer could not be created or its messages not subscribed to.
    #[error("starting a watch on KV bucket {bucket}")]
    Watch {
        /// The bucket.
        bucket: &'static str,
        /// The JetStream failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The message stream failed.
    #[error("watching KV bucket {bucket}")]
    WatchStream {
        /// The bucket.
        bucket: &'static str,
        /// The stream failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The message stream ended.
    #[error("the watch on KV bucket {bucket} ended")]
    WatchEnded {
        /// The bucket.
        bucket: &'static str,
    },
}

/// What is a bucket's own: its names, how a put becomes a table entry, how a table key
/// is written in the disk copy, log lines. Implemented by a marker type per bucket.
pub trait Mirror: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// What the table is keyed by.
    type Key: Eq + Hash + Clone + Send + Sync + 'static;
    /// What a key holds (also its form in the disk copy).
    type Value: Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

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
    /// The disk copy, in log lines and errors ("intent cache").
    const CACHE_NAME: &'static str;
    /// The disk copy's field holding the entries (`"intents"`).
    const DISK_FIELD: &'static str;
    /// The disk copy's file mode (before the umask).
    const DISK_MODE: u32;

    /// The entry a put of `value` at `key` (without the bucket prefix) of `site` makes;
    /// `None` for a bad key or value (logged).
    fn decode(site: &SiteId, key: &str, value: &[u8]) -> Option<(Self::Key, Self::Value)>;

    /// A table key as written in the disk copy.
    fn disk_key(key: &Self::Key) -> String;

    /// The table key of a disk-copy entry; `None` for a bad one (logged).
    fn key_from_disk(key: &str, value: &Self::Value) -> Option<Self::Key>;

    /// Logs that the snapshot was applied: `count` entries.
    fn log_synced(site: &SiteId, count: usize);

    /// Logs a live put.
    fn log_put(key: &Self::Key, value: &Self::Value);

    /// Logs a live delete.
    fn log_remove(key: &Self::Key);
}

/// How the watcher connects and how it backs off.
#[derive(Debug, Clone)]
pub struct WatchSettings<M> {
    /// The site whose keys (`{site}.>`) are mirrored.
    pub site: SiteId,
    /// Where the table is saved after each change.
    pub cache: DiskCopy<M>,
    /// First retry delay after a failure (jittered, [`Backoff`]); grows up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// The hub's JetStream domain when the edge sits behind a leaf node.
    pub js_domain: Option<String>,
}

impl<M> WatchSettings<M> {
    /// Defaults: about 250 ms growing up to 10 s, no JetStream domain.
    pub fn new(site: SiteId, cache: DiskCopy<M>) -> Self {
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

/// Watches `M::BUCKET` for the settings' site until `cancel`, reconnecting forever with
/// backoff. The table keeps serving its current contents (from disk or the last
/// snapshot) meanwhile.
pub async fn watch<M: Mirror>(
    client: async_nats::Client,
    settings: WatchSettings<M>,
    table: Table<M::Key, M::Value>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.min_backoff, settings.max_backoff);
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = watch_once(&client, &settings, &table, &cancel) => r,
        };
        let delay = match result {
            Ok(()) => return, // cancelled inside
            Err(Failure { error, synced }) => {
                if synced {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(error = %error_chain(&error), retry_in = ?delay,
                    "{} failed; serving from the current table", M::WATCH_NAME);
                delay
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[derive(Debug)]
struct Failure {
    error: MirrorError,
    /// Whether a full snapshot was applied before the failure (resets the backoff).
    synced: bool,
}

impl From<MirrorError> for Failure {
    fn from(error: MirrorError) -> Self {
        Self {
            error,
            synced: false,
        }
    }
}

/// Saves `entries` off the async threads (fsync can take a while).
async fn persist<M: Mirror>(settings: &WatchSettings<M>, entries: HashMap<M::Key, M::Value>) {
    let cache = settings.cache.clone();
    match tokio::task::spawn_blocking(move || cache.save_entries(entries)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %error_chain(&e), "cannot save the {}", M::CACHE_NAME)
        }
        Err(e) => tracing::error!(error = %e, "{} save task failed", M::CACHE_NAME),
    }
}

/// Applies `change` to `map` (the snapshot being built, or the live table's contents).
fn apply_to<K: Eq + Hash, V>(map: &mut HashMap<K, V>, change: Change<K, V>) {
    match change {
        Change::Put {
            key,
            value,
            replaced,
        } => {
            if let Some(old) = replaced {
                map.remove(&old);
            }
            map.insert(key, value);
        }
        Change::Remove(key) => {
            map.remove(&key);
        }
        Change::Skip => {}
    }
}

/// One watch: the snapshot, then live changes until `cancel` (`Ok`) or a failure.
async fn watch_once<M: Mirror>(
    client: &async_nats::Client,
    settings: &WatchSettings<M>,
    table: &Table<M::Key, M::Value>,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let bucket = M::BUCKET;
    let js = substruct_runtime::jetstream_context(client.clone(), settings.js_domain.as_deref());
    let kv = ensure_kv(&js, &BucketSpec::new(bucket))
        .await
        .map_err(|source| MirrorError::OpenBucket { bucket, source })?;
    let filter = format!("{}{}", kv.prefix, site_keys_filter(&settings.site));
    let watch_err =
        |e: Box<dyn std::error::Error + Send + Sync>| MirrorError::Watch { bucket, source: e };
    let consumer = kv
        .stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            name: Some(substruct_runtime::unique_consumer_name(&format!(
                "{}-{}",
                M::CONSUMER_PREFIX,
                settings.site
            ))),
            deliver_subject: client.new_inbox(),
            description: Some(M::DESCRIPTION.to_owned()),
            filter_subject: filter,
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| watch_err(Box::new(e)))?;
    let initial = consumer.cached_info().num_pending;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| watch_err(Box::new(e)))?;
    // This watch's own KV key → table key index, rebuilt by the snapshot below.
    let mut index = KeyIndex::<M::Key>::default();
    let mut decode = |msg: &jetstream::Message| {
        let key = msg.subject.as_str().strip_prefix(&kv.prefix).unwrap_or("");
        index.apply::<M>(
            &settings.site,
            key,
            op_of(msg.headers.as_ref()),
            &msg.payload,
        )
    };
    let next_err = |msg: Option<Result<jetstream::Message, _>>| match msg {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(MirrorError::WatchStream {
            bucket,
            source: Box::new(e),
        }),
        None => Err(MirrorError::WatchEnded { bucket }),
    };

    // Phase 1: the snapshot of every current key, applied as one replacement.
    let mut fresh: HashMap<M::Key, M::Value> = HashMap::new();
    let mut pending = initial;
    while pending > 0 {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let msg = next_err(msg)?;
        apply_to(&mut fresh, decode(&msg));
        pending = match msg.info() {
            Ok(info) => info.pending,
            Err(_) => pending.saturating_sub(1),
        };
    }
    // On disk first: whoever sees the snapshot in the table finds it on disk too.
    let count = fresh.len();
    persist(settings, fresh.clone()).await;
    table.replace_all(fresh);
    M::log_synced(&settings.site, count);

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
            let msg = match next_err(msg) {
                Ok(m) => m,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            match decode(&msg) {
                Change::Put {
                    key,
                    value,
                    replaced,
                } => {
                    if let Some(old) = replaced {
                        M::log_remove(&old);
                        table.remove(&old);
                    }
                    M::log_put(&key, &value);
                    table.set(key, value);
                    changed = true;
                }
                Change::Remove(key) => {
                    M::log_remove(&key);
                    table.remove(&key);
                    changed = true;
                }
                Change::Skip => {}
            }
            batch += 1;
            if batch < M::MAX_BATCH {
                next = messages.next().now_or_never();
            }
        }
        if changed {
            persist(settings, table.snapshot()).await;
        }
        if let Some(error) = failure {
            return Err(Failure {
                error,
                synced: true,
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A bucket whose values name their table key: `"k=v"` at any KV key is entry `k`.
    #[derive(Debug, Clone, Copy)]
    struct Named;

    impl Mirror for Named {
        type Key = String;
        type Value = String;
        const BUCKET: &'static str = "named";
        const CONSUMER_PREFIX: &'static str = "named";
        const DESCRIPTION: &'static str = "named";
        const MAX_BATCH: usize = 2;
        const WATCH_NAME: &'static str = "named watch";
        const CACHE_NAME: &'static str = "named cache";
        const DISK_FIELD: &'static str = "named";
        const DISK_MODE: u32 = 0o600;
        fn decode(_: &SiteId, _: &str, value: &[u8]) -> Option<(String, String)> {
            let (k, _) = std::str::from_utf8(value).ok()?.split_once('=')?;
            Some((k.to_owned(), String::from_utf8_lossy(value).into_owned()))
        }
        fn disk_key(key: &String) -> String {
            key.clone()
        }
        fn key_from_disk(key: &str, value: &String) -> Option<String> {
            value
                .starts_with(&format!("{key}="))
                .then(|| key.to_owned())
        }
        fn log_synced(_: &SiteId, _: usize) {}
        fn log_put(_: &String, _: &String) {}
        fn log_remove(_: &String) {}
    }

    #[test]
    fn the_index_finds_what_a_delete_removes_and_what_a_put_replaces() {
        let site = SiteId::new("s1").unwrap();
        let mut index = KeyIndex::<String>::default();
        let mut map = HashMap::new();
        let mut apply = |key: &str, op, value: &[u8]| {
            let change = index.apply::<Named>(&site, key, op, value);
            let shown = format!("{change:?}");
            apply_to(&mut map, change);
            shown
        };
        apply("s1.x", Op::Put, b"a=1");
        apply("s1.y", Op::Put, b"b=1");
        // The same KV key now holds entry c: a is forgotten.
        let shown = apply("s1.x", Op::Put, b"c=2");
        assert!(shown.contains(r#"replaced: Some("a")"#), "{shown}");
        // A bad value changes nothing; a delete removes what the key held.
        assert_eq!(apply("s1.y", Op::Put, b"junk"), "Skip");
        assert_eq!(apply("s1.y", Op::Delete, b""), r#"Remove("b")"#);
        assert_eq!(apply("s1.y", Op::Delete, b""), "Skip");
        assert_eq!(map, HashMap::from([("c".to_owned(), "c=2".to_owned())]));
    }

    #[test]
    fn disk_copies_round_trip_and_skip_bad_entries() {
        let dir = tempfile::tempdir().unwrap();
        let site = SiteId::new("s1").unwrap();
        let copy = DiskCopy::<Named>::new(dir.path().join("named.json"), site.clone());
        let table = Table::new();
        table.set("a".to_owned(), "a=1".to_owned());
        table.set("b".to_owned(), "b=2".to_owned());
        copy.save(&table).unwrap();
        let text = std::fs::read_to_string(&copy.path).unwrap();
        let fields: Vec<_> = ["\"version\"", "\"site\"", "\"named\""]
            .iter()
            .map(|f| text.find(f).unwrap())
            .collect();
        assert!(fields.is_sorted(), "{text}");
        assert_eq!(copy.load().unwrap().snapshot(), table.snapshot());
        std::fs::write(&copy.path, text.replace("\"b=2\"", "\"x=2\"")).unwrap();
        assert_eq!(copy.load().unwrap().len(), 1);
        let e = DiskCopy::<Named>::new(dir.path(), site).load().unwrap_err();
        assert!(e.to_string().starts_with("reading named cache "), "{e}");
    }

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
}
