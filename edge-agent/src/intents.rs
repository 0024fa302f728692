//! The site's boot intents, keyed by MAC: a cloneable handle over one shared table.
//! Filled from JetStream KV `boot` (`{site}.{mac}`) and from the on-disk copy.
//!
//! [`watch`] keeps the table equal to the bucket: on every (re)start it takes a full
//! snapshot of `{site}.>` (so keys deleted while the edge was away disappear), then
//! applies puts, deletes and purges as they come. After each change the table is
//! written to `state_dir/intents.json` atomically, and [`IntentCache::load`] reads it at
//! start, so the edge answers correctly while NATS is unreachable. The machinery is
//! [`crate::kv_mirror`]'s; this module adds what is the `boot` bucket's own
//! ([`BootBucket`]).

use substruct_wire::intent::BootIntentRecord;
use substruct_wire::subjects::{self, KV_BOOT};
use substruct_wire::{Mac, SiteId};
use tokio_util::sync::CancellationToken;

use crate::kv_mirror::{self, DiskCopy, Mirror, Table};

/// Shared, read-mostly table of boot intents for this site, by MAC: [`IntentTable::get`]
/// gives the intent for a MAC (`None` means unknown machine).
pub type IntentTable = Table<Mac, BootIntentRecord>;

/// Where one site's intents are kept on disk: `{ "version": 1, "site": "s1", "intents":
/// { "aa:bb:…": record } }`, written with [`DiskCopy::save`], read with [`DiskCopy::load`].
pub type IntentCache = DiskCopy<BootBucket>;

/// How the watcher connects and how it backs off.
pub type WatchSettings = kv_mirror::WatchSettings<BootBucket>;

/// The `boot` bucket's own parts of the mirror: keys `{site}.{mac}`, values
/// envelope-encoded [`BootIntentRecord`]s.
#[derive(Debug, Clone, Copy)]
pub struct BootBucket;

impl Mirror for BootBucket {
    type Key = Mac;
    type Value = BootIntentRecord;
    const BUCKET: &'static str = KV_BOOT;
    const CONSUMER_PREFIX: &'static str = "edge-boot";
    const DESCRIPTION: &'static str = "substruct-edge boot intent watch";
    const MAX_BATCH: usize = 4096;
    const WATCH_NAME: &'static str = "boot intent watch";
    const CACHE_NAME: &'static str = "intent cache";
    const DISK_FIELD: &'static str = "intents";
    const DISK_MODE: u32 = 0o666;

    fn decode(site: &SiteId, key: &str, value: &[u8]) -> Option<(Mac, BootIntentRecord)> {
        let mac = match subjects::parse_boot_key(site, key) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "boot KV: bad key; skipped");
                return None;
            }
        };
        match substruct_wire::decode::<BootIntentRecord>(value) {
            Ok(record) => Some((mac, record)),
            Err(e) => {
                tracing::warn!(key, error = %e, "boot KV: undecodable intent; skipped");
                None
            }
        }
    }

    fn disk_key(mac: &Mac) -> String {
        mac.to_string()
    }

    fn key_from_disk(key: &str, _: &BootIntentRecord) -> Option<Mac> {
        Mac::parse(key)
            .inspect_err(|e| tracing::warn!(key, error = %e, "intent cache: skipping bad MAC"))
            .ok()
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
    use crate::kv_mirror::{Change, KeyIndex, Op};
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
        assert!(cache.load().unwrap().is_empty());
        let t = IntentTable::new();
        let mac = Mac::parse("52:54:00:00:00:01").unwrap();
        t.set(
            mac,
            rec(BootIntent::Local {
                way: LocalBootWay::IpxeExit,
            }),
        );
        cache.save(&t).unwrap();
        let text = std::fs::read_to_string(&cache.path).unwrap();
        assert!(text.contains(r#""52:54:00:00:00:01""#), "{text}");
        let back = cache.load().unwrap();
        assert_eq!(back.snapshot(), t.snapshot());
        // Another site's file is ignored.
        let other = IntentCache::new(cache.path.clone(), SiteId::new("s2").unwrap());
        assert!(other.load().unwrap().is_empty());
        // A corrupt file is an error naming the path.
        std::fs::write(&cache.path, b"{not json").unwrap();
        let e = cache.load().unwrap_err();
        assert!(e.to_string().starts_with("parsing intent cache "), "{e}");
        // So is a file without the entries.
        std::fs::write(&cache.path, br#"{"version":1,"site":"s1"}"#).unwrap();
        let e = cache.load().unwrap_err();
        assert!(e.to_string().starts_with("parsing intent cache "), "{e}");
        // A bad MAC is skipped, the rest kept.
        std::fs::write(
            &cache.path,
            text.replace(r#""52:54:00:00:00:01""#, r#""nonsense""#),
        )
        .unwrap();
        assert!(cache.load().unwrap().is_empty());
    }

    #[test]
    fn changes_decode_and_bad_ones_are_skipped() {
        let s1 = SiteId::new("s1").unwrap();
        let bytes = substruct_wire::encode(&rec(BootIntent::Discover)).unwrap();
        let mut index = KeyIndex::default();
        let mut apply =
            |key: &str, op, value: &[u8]| index.apply::<BootBucket>(&s1, key, op, value);
        assert!(matches!(
            apply("s1.525400000001", Op::Put, &bytes),
            Change::Put { replaced: None, .. }
        ));
        assert!(matches!(
            apply("s1.525400000001", Op::Delete, b""),
            Change::Remove(_)
        ));
        for (key, value) in [
            ("s1.525400000001", &b"garbage"[..]),
            ("s2.525400000001", &bytes[..]),
            ("s1.nonsense", &bytes[..]),
        ] {
            assert_eq!(apply(key, Op::Put, value), Change::Skip, "{key}");
        }
    }
}
