//! The site's boot intents, keyed by MAC: a cloneable handle over one shared table.
//! Filled from JetStream KV `boot` (`{site}.{mac}`) and from the on-disk copy.
//!
//! [`watch`] keeps the table equal to the bucket: on every (re)start it takes a full
//! snapshot of `{site}.>` (so keys deleted while the edge was away disappear), then
//! applies puts, deletes and purges as they come. After each change the table is
//! written to `state_dir/intents.json` atomically, and [`IntentTable::load`] reads it at
//! start, so the edge answers correctly while NATS is unreachable.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use substruct_wire::intent::BootIntentRecord;
use substruct_wire::subjects::KV_BOOT;
use substruct_wire::{Mac, SiteId};
use tokio_util::sync::CancellationToken;

use crate::kv_mirror::{self, Change, Mirror, Op, Table, WatchError};

/// Shared, read-mostly table of boot intents for this site, by MAC: [`IntentTable::get`]
/// gives the intent for a MAC (`None` means unknown machine).
pub type IntentTable = Table<Mac, BootIntentRecord>;

impl IntentTable {
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
        kv_mirror::write_atomically(&self.path, &bytes, 0o666).map_err(err)
    }
}

/// How the watcher connects and how it backs off.
pub type WatchSettings = kv_mirror::WatchSettings<IntentCache>;

/// Decodes one KV message (`key` without the bucket prefix). Bad keys and values are
/// logged and skipped.
fn decode_change(site: &SiteId, key: &str, op: Op, value: &[u8]) -> Change<Mac, BootIntentRecord> {
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

impl Mirror for IntentCache {
    type Key = Mac;
    type Value = BootIntentRecord;
    type Error = IntentError;
    const BUCKET: &'static str = KV_BOOT;
    const CONSUMER_PREFIX: &'static str = "edge-boot";
    const DESCRIPTION: &'static str = "substruct-edge boot intent watch";
    const MAX_BATCH: usize = 4096;
    const WATCH_NAME: &'static str = "boot intent watch";
    const CACHE_NAME: &'static str = "intent cache";

    fn decode(site: &SiteId, key: &str, op: Op, value: &[u8]) -> Change<Mac, BootIntentRecord> {
        decode_change(site, key, op, value)
    }

    fn save_table(&self, table: &IntentTable) -> Result<(), IntentError> {
        self.save(table)
    }

    fn watch_error(error: WatchError) -> IntentError {
        match error {
            WatchError::OpenBucket(e) => IntentError::OpenBucket(e),
            WatchError::Watch(e) => IntentError::Watch(e),
            WatchError::WatchStream(e) => IntentError::WatchStream(e),
            WatchError::WatchEnded => IntentError::WatchEnded,
        }
    }

    fn log_synced(site: &SiteId, count: usize) {
        tracing::info!(site = %site, intents = count, "boot intents in sync with NATS");
    }

    fn log_put(mac: &Mac, r: &BootIntentRecord) {
        tracing::info!(%mac, intent = ?r.intent, "boot intent set");
    }

    fn log_remove(mac: &Mac) {
        tracing::info!(%mac, "boot intent removed");
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
    kv_mirror::watch(client, settings, table, cancel).await
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
