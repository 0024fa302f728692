//! The site's boot intents, keyed by MAC: a cloneable handle over one shared table.
//! Filled from JetStream KV `boot` (`{site}.{mac}`) and from the on-disk copy.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use substruct_wire::intent::BootIntentRecord;
use substruct_wire::Mac;

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

    /// A copy of every entry (for persisting to disk).
    pub fn snapshot(&self) -> HashMap<Mac, BootIntentRecord> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
