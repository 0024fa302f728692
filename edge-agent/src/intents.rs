//! The site's boot intents, keyed by MAC: a cloneable handle over one shared table.
//! Filled from JetStream KV `boot` (`{site}.{mac}`) and from the on-disk copy.
//!
//! [`watch`] keeps the table equal to the bucket: on every (re)start it takes a full
//! snapshot of `{site}.>` (so keys deleted while the edge was away disappear), then
//! applies puts, deletes and purges as they come. After each change the table is
//! written to `state_dir/intents.json` atomically, and [`IntentTable::load`] reads it at
//! start, so the edge answers correctly while NATS is unreachable.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use substruct_runtime::jetstream::{ensure_kv, BucketSpec};
use substruct_wire::intent::BootIntentRecord;
use substruct_wire::subjects::{boot_site_filter, KV_BOOT};
use substruct_wire::{Mac, SiteId};
use tokio_util::sync::CancellationToken;

/// Shared, read-mostly table of boot intents for this site.
#[derive(Debug, Clone, Default)]
pub struct IntentTable {
    inner: Arc<RwLock<HashMap<Mac, BootIntentRecord>>>,
}

impl IntentTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The intent for `mac`, if the controller gave one. `None` means unknown machine.
    pub fn get(&self, mac: &Mac) -> Option<BootIntentRecord> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(mac)
            .cloned()
    }

    pub fn set(&self, mac: Mac, record: BootIntentRecord) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mac, record);
    }

    pub fn remove(&self, mac: &Mac) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mac);
    }

    /// Replaces every entry at once (after a full snapshot).
    pub fn replace_all(&self, entries: HashMap<Mac, BootIntentRecord>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = entries;
    }

    /// Number of machines with an intent.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every entry (for persisting to disk).
    pub fn snapshot(&self) -> HashMap<Mac, BootIntentRecord> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the cache file written by [`IntentCache::save`]. A missing file is an empty
    /// table; a file for another site is ignored (logged).
    pub fn load(cache: &IntentCache) -> Result<Self, IntentError> {
        let table = Self::new();
        let text = match std::fs::read(&cache.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(table),
            Err(source) => {
                return Err(IntentError::ReadCache {
                    path: cache.path.clone(),
                    source,
                })
            }
        };
        let file: CacheFile =
            serde_json::from_slice(&text).map_err(|source| IntentError::ParseCache {
                path: cache.path.clone(),
                source,
            })?;
        if file.site != cache.site {
            tracing::warn!(path = %cache.path.display(), cached = %file.site, site = %cache.site,
                "intent cache belongs to another site; starting empty");
            return Ok(table);
        }
        let mut map = HashMap::new();
        for (key, record) in file.intents {
            match Mac::parse(&key) {
                Ok(mac) => {
                    map.insert(mac, record);
                }
                Err(e) => tracing::warn!(key, error = %e, "intent cache: skipping bad MAC"),
            }
        }
        table.replace_all(map);
        Ok(table)
    }
}

/// Why the intent cache or the KV watch failed.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    #[error("reading intent cache {path}")]
    ReadCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing intent cache {path}")]
    ParseCache {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing intent cache {path}")]
    WriteCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening KV bucket {KV_BOOT}")]
    OpenBucket(#[source] substruct_runtime::jetstream::SetupError),
    #[error("starting a watch on KV bucket {KV_BOOT}")]
    Watch(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("watching KV bucket {KV_BOOT}")]
    WatchStream(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the watch on KV bucket {KV_BOOT} ended")]
    WatchEnded,
}

/// The on-disk form: `{ "version": 1, "site": "s1", "intents": { "aa:bb:…": record } }`.
#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    site: SiteId,
    intents: BTreeMap<String, BootIntentRecord>,
}

/// Where one site's intents are kept on disk.
#[derive(Debug, Clone)]
pub struct IntentCache {
    pub path: PathBuf,
    pub site: SiteId,
}

impl IntentCache {
    pub fn new(path: impl Into<PathBuf>, site: SiteId) -> Self {
        Self {
            path: path.into(),
            site,
        }
    }

    /// Writes `table` atomically: temp file in the same directory, fsync, rename, fsync dir.
    pub fn save(&self, table: &IntentTable) -> Result<(), IntentError> {
        let file = CacheFile {
            version: 1,
            site: self.site.clone(),
            intents: table
                .snapshot()
                .into_iter()
                .map(|(mac, r)| (mac.to_string(), r))
                .collect(),
        };
        let err = |source| IntentError::WriteCache {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| err(std::io::Error::other(e)))?;
        write_atomically(&self.path, &bytes).map_err(err)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
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

/// How the watcher connects and how it backs off.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    pub site: SiteId,
    pub cache: IntentCache,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// The hub's JetStream domain when the edge sits behind a leaf node.
    pub js_domain: Option<String>,
}

impl WatchSettings {
    pub fn new(site: SiteId, cache: IntentCache) -> Self {
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

/// A change the watch saw, already decoded.
#[derive(Debug)]
enum Change {
    Put(Mac, BootIntentRecord),
    Remove(Mac),
    Skip,
}

/// Decodes one KV message (`key` without the bucket prefix). Bad keys and values are
/// logged and skipped.
fn decode_change(site: &SiteId, key: &str, op: Op, value: &[u8]) -> Change {
    let prefix = format!("{site}.");
    let Some(mac_key) = key.strip_prefix(&prefix) else {
        tracing::warn!(key, "boot KV: key outside this site; skipped");
        return Change::Skip;
    };
    let mac = match Mac::parse(mac_key) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(key, error = %e, "boot KV: key is not {{site}}.{{mac}}; skipped");
            return Change::Skip;
        }
    };
    match op {
        Op::Delete => Change::Remove(mac),
        Op::Put => match substruct_wire::decode::<BootIntentRecord>(value) {
            Ok(record) => Change::Put(mac, record),
            Err(e) => {
                tracing::warn!(key, error = %e, "boot KV: undecodable intent; skipped");
                Change::Skip
            }
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Delete,
}

/// The KV operation of a message in the bucket's stream (headers as the KV layer writes them).
fn op_of(headers: Option<&async_nats::HeaderMap>) -> Op {
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

/// Watches `boot` for this site until `cancel`, reconnecting forever with backoff. The
/// table keeps serving its current contents (from disk or the last snapshot) meanwhile.
pub async fn watch(
    client: async_nats::Client,
    settings: WatchSettings,
    table: IntentTable,
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
            Err(WatchFailure { error, synced }) => {
                if synced {
                    backoff = settings.min_backoff;
                }
                tracing::warn!(error = %crate::http::files::error_chain(&error), retry_in = ?backoff,
                    "boot intent watch failed; serving from the current table");
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
struct WatchFailure {
    error: IntentError,
    /// Whether a full snapshot was applied before the failure (resets the backoff).
    synced: bool,
}

impl From<IntentError> for WatchFailure {
    fn from(error: IntentError) -> Self {
        Self {
            error,
            synced: false,
        }
    }
}

/// Saves the table off the async threads (fsync can take a while).
async fn persist(settings: &WatchSettings, table: &IntentTable) {
    let (cache, table) = (settings.cache.clone(), table.clone());
    let result = tokio::task::spawn_blocking(move || cache.save(&table)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %crate::http::files::error_chain(&e), "cannot save the intent cache")
        }
        Err(e) => tracing::error!(error = %e, "intent cache save task failed"),
    }
}

/// Most changes applied between two saves.
const MAX_BATCH: usize = 4096;

async fn watch_once(
    client: &async_nats::Client,
    settings: &WatchSettings,
    table: &IntentTable,
    cancel: &CancellationToken,
) -> Result<(), WatchFailure> {
    let js = substruct_runtime::jetstream_context(client.clone(), settings.js_domain.as_deref());
    let kv = ensure_kv(&js, &BucketSpec::new(KV_BOOT))
        .await
        .map_err(IntentError::OpenBucket)?;
    let filter = format!("{}{}", kv.prefix, boot_site_filter(&settings.site));
    let consumer = kv
        .stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            name: Some(substruct_runtime::unique_consumer_name(&format!(
                "edge-boot-{}",
                settings.site
            ))),
            deliver_subject: client.new_inbox(),
            description: Some("substruct-edge boot intent watch".to_owned()),
            filter_subject: filter,
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| IntentError::Watch(Box::new(e)))?;
    let initial = consumer.cached_info().num_pending;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| IntentError::Watch(Box::new(e)))?;

    // Phase 1: the snapshot of every current key, applied as one replacement.
    let mut fresh: HashMap<Mac, BootIntentRecord> = HashMap::new();
    let mut pending = initial;
    while pending > 0 {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(IntentError::WatchStream(Box::new(e)).into()),
            None => return Err(IntentError::WatchEnded.into()),
        };
        let key = msg.subject.as_str().strip_prefix(&kv.prefix).unwrap_or("");
        match decode_change(
            &settings.site,
            key,
            op_of(msg.headers.as_ref()),
            &msg.payload,
        ) {
            Change::Put(mac, r) => {
                fresh.insert(mac, r);
            }
            Change::Remove(mac) => {
                fresh.remove(&mac);
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
    tracing::info!(site = %settings.site, intents = count, "boot intents in sync with NATS");

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
                    failure = Some(IntentError::WatchStream(Box::new(e)));
                    break;
                }
                None => {
                    failure = Some(IntentError::WatchEnded);
                    break;
                }
            };
            let key = msg.subject.as_str().strip_prefix(&kv.prefix).unwrap_or("");
            match decode_change(
                &settings.site,
                key,
                op_of(msg.headers.as_ref()),
                &msg.payload,
            ) {
                Change::Put(mac, r) => {
                    tracing::info!(%mac, intent = ?r.intent, "boot intent set");
                    table.set(mac, r);
                    changed = true;
                }
                Change::Remove(mac) => {
                    tracing::info!(%mac, "boot intent removed");
                    table.remove(&mac);
                    changed = true;
                }
                Change::Skip => {}
            }
            batch += 1;
            if batch < MAX_BATCH {
                next = messages.next().now_or_never();
            }
        }
        if changed {
            persist(settings, table).await;
        }
        if let Some(error) = failure {
            return Err(WatchFailure {
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
    use substruct_wire::intent::{BootIntent, LocalBootWay};

    fn rec(intent: BootIntent) -> BootIntentRecord {
        BootIntentRecord {
            machine_id: None,
            intent,
        }
    }

    #[test]
    fn cache_round_trips_and_checks_the_site() {
        let dir = tempfile::tempdir().unwrap();
        let s1 = SiteId::new("s1").unwrap();
        let cache = IntentCache::new(dir.path().join("sub/intents.json"), s1.clone());
        // Missing file: empty.
        assert!(IntentTable::load(&cache).unwrap().is_empty());
        let t = IntentTable::new();
        let mac = Mac::parse("52:54:00:00:00:01").unwrap();
        t.set(
            mac,
            rec(BootIntent::Local {
                way: LocalBootWay::IpxeExit,
            }),
        );
        cache.save(&t).unwrap();
        let back = IntentTable::load(&cache).unwrap();
        assert_eq!(back.snapshot(), t.snapshot());
        // Another site's file is ignored.
        let other = IntentCache::new(cache.path.clone(), SiteId::new("s2").unwrap());
        assert!(IntentTable::load(&other).unwrap().is_empty());
        // A corrupt file is an error naming the path.
        std::fs::write(&cache.path, b"{not json").unwrap();
        let e = IntentTable::load(&cache).unwrap_err();
        assert!(e.to_string().starts_with("parsing intent cache "), "{e}");
    }

    #[test]
    fn changes_decode_and_bad_ones_are_skipped() {
        let s1 = SiteId::new("s1").unwrap();
        let bytes = substruct_wire::encode(&rec(BootIntent::Discover)).unwrap();
        assert!(matches!(
            decode_change(&s1, "s1.525400000001", Op::Put, &bytes),
            Change::Put(_, _)
        ));
        assert!(matches!(
            decode_change(&s1, "s1.525400000001", Op::Delete, b""),
            Change::Remove(_)
        ));
        assert!(matches!(
            decode_change(&s1, "s1.525400000001", Op::Put, b"garbage"),
            Change::Skip
        ));
        assert!(matches!(
            decode_change(&s1, "s2.525400000001", Op::Put, &bytes),
            Change::Skip
        ));
        assert!(matches!(
            decode_change(&s1, "s1.nonsense", Op::Put, &bytes),
            Change::Skip
        ));
    }
}
