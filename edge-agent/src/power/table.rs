//! The site's BMC settings, by machine: KV `bmc` (`{site}.{machine}`) mirrored by
//! [`crate::kv_mirror`] into a table and a disk copy (`state_dir/bmc.json`, mode 0600:
//! it holds passwords), so power keeps working while the WAN is down. A request for a
//! machine the mirror does not hold yet is answered from a direct read of its key.

use substruct_wire::power_msg::BmcSettings;
use substruct_wire::subjects::{self, KV_BMC};
use substruct_wire::{MachineId, SiteId};

use crate::kv_mirror::{self, DiskCopy, Mirror, Table};

/// The site's BMC settings by machine.
pub type BmcTable = Table<MachineId, BmcSettings>;

/// The disk copy of [`BmcTable`].
pub type BmcCache = DiskCopy<BmcBucket>;

/// How the watcher connects and backs off.
pub type WatchSettings = kv_mirror::WatchSettings<BmcBucket>;

/// The `bmc` bucket's own parts of the mirror.
#[derive(Debug, Clone, Copy)]
pub struct BmcBucket;

impl Mirror for BmcBucket {
    type Key = MachineId;
    type Value = BmcSettings;
    const BUCKET: &'static str = KV_BMC;
    const CONSUMER_PREFIX: &'static str = "edge-bmc";
    const DESCRIPTION: &'static str = "substruct-edge BMC settings watch";
    const MAX_BATCH: usize = 1024;
    const WATCH_NAME: &'static str = "BMC settings watch";
    const CACHE_NAME: &'static str = "BMC settings cache";
    const DISK_FIELD: &'static str = "bmcs";
    const DISK_MODE: u32 = 0o600;

    fn decode(site: &SiteId, key: &str, value: &[u8]) -> Option<(MachineId, BmcSettings)> {
        let Some(machine) = subjects::parse_bmc_key(site, key) else {
            tracing::warn!(key, "bmc KV: not one of this site's keys; skipped");
            return None;
        };
        match substruct_wire::decode::<BmcSettings>(value) {
            Ok(s) if s.machine_id == machine => Some((machine, s)),
            Ok(_) => {
                tracing::warn!(key, "bmc KV: settings name another machine; skipped");
                None
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "bmc KV: undecodable settings; skipped");
                None
            }
        }
    }

    fn disk_key(machine: &MachineId) -> String {
        machine.to_string()
    }

    fn key_from_disk(key: &str, value: &BmcSettings) -> Option<MachineId> {
        MachineId::new(key).ok().filter(|m| *m == value.machine_id)
    }

    fn log_synced(site: &SiteId, count: usize) {
        tracing::info!(site = %site, bmcs = count, "BMC settings in sync with NATS");
    }

    fn log_put(machine: &MachineId, s: &BmcSettings) {
        // Debug of the settings redacts the password.
        tracing::info!(%machine, driver = %s.driver, address = %s.address, "BMC settings set");
    }

    fn log_remove(machine: &MachineId) {
        tracing::info!(%machine, "BMC settings removed");
    }
}

/// The settings of `machine` read straight from KV (the mirror may lag a `bmc set`
/// made just before a power request); `None` when absent or unreadable (logged).
pub async fn fetch(
    client: &async_nats::Client,
    js_domain: Option<&str>,
    site: &SiteId,
    machine: &MachineId,
) -> Option<BmcSettings> {
    let js = substruct_runtime::jetstream_context(client.clone(), js_domain);
    let key = subjects::bmc_key(site, machine);
    let store = match js.get_key_value(KV_BMC).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open KV bmc");
            return None;
        }
    };
    let value = match store.get(&key).await {
        Ok(v) => v?,
        Err(e) => {
            tracing::warn!(key, error = %e, "cannot read BMC settings");
            return None;
        }
    };
    BmcBucket::decode(site, &key, &value).map(|(_, s)| s)
}
