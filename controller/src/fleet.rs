//! The controller's read model of the inventory: a compact row per machine, in memory,
//! fed by a watch of KV `machines`, so listing, filtering, paging and counting never
//! scan the bucket.
//!
//! Derived state only, like the rules copy ([`crate::provision::RulesCache`]): every
//! (re)start of the watch rebuilds the table from the bucket's snapshot and swaps it in
//! whole, then applies each change as it is written. A second controller builds its
//! own. The table remembers the bucket revision it reflects, so a query first waits
//! until it holds every write made before the query ([`Fleet::catch_up`]): an operator
//! who assigns a machine and lists at once sees the new state.
//!
//! A row keeps what the list shows and what queries filter on (state, profile, site,
//! vendor, product, serial, UUID, MACs, hostname, sizes), not the facts: about 300
//! bytes a machine. Rows are kept by id (the stable order of pages) and indexed by
//! state and by site, so a page filtered on either walks that index from the cursor,
//! not the whole fleet.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use substruct_wire::power::PowerState;
use substruct_wire::report::{Dmi, HardwareReport, Nic};
use substruct_wire::Mac;
use tokio_util::sync::CancellationToken;

#[cfg(test)]
use crate::lifecycle::State;
#[cfg(test)]
use crate::record::MachineRecord;
use crate::store::{DocEvent, Store, StoreError};

/// Every lifecycle state's name, in lifecycle order (the order of `counts`).
pub const STATES: [&str; 6] = [
    "discovered",
    "assigned",
    "installing",
    "deployed",
    "failed",
    "retired",
];

/// Machines in a page when the request names no limit.
pub const DEFAULT_LIMIT: usize = 100;
/// Most machines in one page.
pub const MAX_LIMIT: usize = 1000;
/// Longest search text (`q`), in bytes.
pub const MAX_QUERY_BYTES: usize = 128;
/// Past this many distinct interned strings (sites, vendors, products, profiles) new
/// ones are stored per row instead: reports choose vendor strings, and the interner
/// must not become a second copy of every one of them.
const MAX_INTERNED: usize = 16_384;

/// One machine as lists show it: no facts beyond these, no ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineSummary {
    pub id: String,
    /// The state's name (`discovered`, `assigned`, …).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Why a failed machine failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub site: String,
    pub power: PowerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub macs: Vec<Mac>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Hardware threads (cores when the report has no thread count).
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disks: u32,
    pub disk_bytes: u64,
    /// Identity facts shared with other machines.
    pub conflicts: u32,
    pub pending_wipe: bool,
    pub last_seen_unix_ms: u64,
}

/// What a page asks for. Every filter must hold; `None` is "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub site: Option<String>,
    /// A state's name (see [`STATES`]).
    pub state: Option<String>,
    /// Case-insensitive substring of the vendor.
    pub vendor: Option<String>,
    /// Case-insensitive substring of the id, serial, SMBIOS UUID, hostname or a MAC
    /// (a MAC in any spelling `Mac::parse` reads matches exactly).
    pub q: Option<String>,
    pub limit: usize,
    /// The `next_cursor` of the previous page: this page starts after that machine.
    pub cursor: Option<String>,
}

/// Why a query was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error(
        "unknown state {0:?} (one of: discovered, assigned, installing, deployed, failed, retired)"
    )]
    State(String),
    #[error("limit must be 1 to {MAX_LIMIT}, not {0}")]
    Limit(usize),
    #[error("q is longer than {MAX_QUERY_BYTES} bytes")]
    TooLong,
}

impl Query {
    /// Checks the query before it runs.
    pub fn check(&self) -> Result<(), QueryError> {
        if let Some(s) = &self.state {
            if state_index(s).is_none() {
                return Err(QueryError::State(s.clone()));
            }
        }
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err(QueryError::Limit(self.limit));
        }
        if self.q.as_ref().is_some_and(|q| q.len() > MAX_QUERY_BYTES) {
            return Err(QueryError::TooLong);
        }
        Ok(())
    }
}

/// Machines per state and per site, over the whole fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    pub state: BTreeMap<String, usize>,
    pub site: BTreeMap<String, usize>,
}

/// One page of a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub machines: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Machines in the fleet (all of them, not only those matching).
    pub total: usize,
    pub counts: Counts,
}

fn state_index(name: &str) -> Option<usize> {
    STATES.iter().position(|s| *s == name)
}

/// The parts of a stored [`MachineRecord`](crate::record::MachineRecord) a row needs, decoded straight from its JSON
/// (everything else is skipped without being built): the snapshot of a large fleet
/// costs a fraction of decoding whole records.
#[derive(Debug, Deserialize)]
pub struct RowSource {
    /// The state's name (the record's flattened `state` tag).
    state: String,
    /// Assigned, installing, deployed and failed carry it.
    #[serde(default)]
    profile: Option<String>,
    /// Why a failed machine failed.
    #[serde(default)]
    reason: Option<String>,
    site: String,
    #[serde(default = "unknown_power")]
    power: PowerState,
    #[serde(default)]
    pending_wipe: Option<serde::de::IgnoredAny>,
    /// Changes whose side effects are not done yet (the outbox).
    #[serde(default)]
    owed: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    conflicts: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    facts: FactsSource,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    last_seen_unix_ms: u64,
}

fn unknown_power() -> PowerState {
    PowerState::Unknown
}

#[derive(Debug, Default, Deserialize)]
struct FactsSource {
    #[serde(default)]
    dmi: DmiSource,
    #[serde(default)]
    cpu: CpuSource,
    #[serde(default)]
    memory: MemorySource,
    #[serde(default)]
    disks: Vec<DiskSource>,
    #[serde(default)]
    nics: Vec<NicSource>,
}

#[derive(Debug, Default, Deserialize)]
struct DmiSource {
    sys_vendor: Option<String>,
    product_name: Option<String>,
    product_serial: Option<String>,
    product_uuid: Option<String>,
    board_serial: Option<String>,
    chassis_serial: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct CpuSource {
    #[serde(default)]
    cores: u32,
    #[serde(default)]
    threads: u32,
}

#[derive(Debug, Default, Deserialize)]
struct MemorySource {
    #[serde(default)]
    total_bytes: u64,
}

#[derive(Debug, Deserialize)]
struct DiskSource {
    #[serde(default)]
    size_bytes: u64,
}

#[derive(Debug, Deserialize)]
struct NicSource {
    mac: Mac,
}

impl RowSource {
    /// The usable serial and MACs, by the report's own rules.
    fn identity(&mut self) -> (Option<String>, Vec<Mac>) {
        let d = &mut self.facts.dmi;
        let report = HardwareReport {
            dmi: Dmi {
                product_serial: d.product_serial.take(),
                chassis_serial: d.chassis_serial.take(),
                board_serial: d.board_serial.take(),
                ..Dmi::default()
            },
            nics: self
                .facts
                .nics
                .iter()
                .map(|n| Nic {
                    name: String::new(),
                    mac: n.mac,
                    driver: None,
                    pci_address: None,
                    speed_mbps: None,
                    carrier: None,
                })
                .collect(),
            ..HardwareReport::default()
        };
        (report.usable_serial().map(str::to_owned), report.macs())
    }
}

/// A machine's row: the compact form.
#[derive(Debug, Clone)]
struct Row {
    state: u8,
    profile: Option<Arc<str>>,
    reason: Option<Box<str>>,
    site: Arc<str>,
    power: PowerState,
    vendor: Option<Arc<str>>,
    product: Option<Arc<str>>,
    serial: Option<Box<str>>,
    uuid: Option<Box<str>>,
    macs: Box<[Mac]>,
    hostname: Option<Box<str>>,
    cpus: u32,
    memory_bytes: u64,
    disks: u32,
    disk_bytes: u64,
    conflicts: u32,
    pending_wipe: bool,
    owed: bool,
    last_seen_unix_ms: u64,
}

/// Shares equal strings between rows (sites, vendors, products, profiles).
#[derive(Debug, Default)]
struct Interner {
    set: HashSet<Arc<str>>,
}

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.set.get(s) {
            return found.clone();
        }
        let new: Arc<str> = Arc::from(s);
        if self.set.len() < MAX_INTERNED {
            self.set.insert(new.clone());
        }
        new
    }
}

/// Every row, and the indexes by state and by site.
#[derive(Debug, Default)]
struct Table {
    rows: BTreeMap<Arc<str>, Row>,
    by_state: [BTreeSet<Arc<str>>; 6],
    by_site: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    strings: Interner,
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Table {
    /// The row of a decoded record; `None` when its state is not one of [`STATES`].
    fn row(&mut self, mut m: RowSource) -> Option<Row> {
        let state = u8::try_from(state_index(&m.state)?).ok()?;
        let (serial, macs) = m.identity();
        let strings = &mut self.strings;
        let f = &m.facts;
        let d = &f.dmi;
        Some(Row {
            state,
            // Discovered and retired machines have none, whatever the JSON says.
            profile: match state {
                0 | 5 => None,
                _ => m.profile.as_deref().map(|p| strings.get(p)),
            },
            reason: match state {
                4 => m.reason.take().map(String::into_boxed_str),
                _ => None,
            },
            site: strings.get(&m.site),
            power: m.power,
            vendor: d.sys_vendor.as_deref().map(|v| strings.get(v)),
            product: d.product_name.as_deref().map(|v| strings.get(v)),
            serial: serial.map(String::into_boxed_str),
            uuid: d.product_uuid.as_deref().map(Box::from),
            macs: macs.into_boxed_slice(),
            hostname: m.hostname.take().map(String::into_boxed_str),
            cpus: if f.cpu.threads > 0 {
                f.cpu.threads
            } else {
                f.cpu.cores
            },
            memory_bytes: f.memory.total_bytes,
            disks: clamp_u32(f.disks.len()),
            disk_bytes: f.disks.iter().map(|d| d.size_bytes).sum(),
            conflicts: clamp_u32(m.conflicts.len()),
            pending_wipe: m.pending_wipe.is_some(),
            owed: !m.owed.is_empty(),
            last_seen_unix_ms: m.last_seen_unix_ms,
        })
    }

    /// The record of key `id` is now `record` (`None`: deleted or unreadable).
    fn apply(&mut self, id: &str, record: Option<RowSource>) {
        self.remove(id);
        let Some(record) = record else {
            return;
        };
        let Some(row) = self.row(record) else {
            tracing::warn!(
                machine = id,
                "machine record with an unknown state; not listed"
            );
            return;
        };
        let id: Arc<str> = Arc::from(id);
        self.by_state[usize::from(row.state)].insert(id.clone());
        self.by_site
            .entry(row.site.clone())
            .or_default()
            .insert(id.clone());
        self.rows.insert(id, row);
    }

    fn remove(&mut self, id: &str) {
        let Some((key, row)) = self.rows.remove_entry(id) else {
            return;
        };
        self.by_state[usize::from(row.state)].remove(&key);
        if let Some(set) = self.by_site.get_mut(&row.site) {
            set.remove(&key);
            if set.is_empty() {
                self.by_site.remove(&row.site);
            }
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            state: STATES
                .iter()
                .zip(&self.by_state)
                .map(|(name, set)| ((*name).to_owned(), set.len()))
                .collect(),
            site: self
                .by_site
                .iter()
                .map(|(site, set)| (site.to_string(), set.len()))
                .collect(),
        }
    }

    /// The ids a query walks: the smallest index that covers its filters.
    fn candidates<'a>(
        &'a self,
        state: Option<usize>,
        site: Option<&str>,
    ) -> Option<&'a BTreeSet<Arc<str>>> {
        let by_state = state.map(|s| &self.by_state[s]);
        let by_site = match site {
            Some(site) => Some(self.by_site.get(site)?),
            None => None,
        };
        Some(match (by_state, by_site) {
            (Some(a), Some(b)) => {
                if a.len() <= b.len() {
                    a
                } else {
                    b
                }
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        })
    }

    /// The ids matching `query` after its cursor, in id order, at most `limit` (and
    /// whether more follow). `limit` 0 is no limit.
    fn matching(&self, query: &Query, limit: usize) -> (Vec<(Arc<str>, &Row)>, bool) {
        let state = query.state.as_deref().and_then(state_index);
        let matcher = Matcher::new(query);
        let start = match &query.cursor {
            Some(c) => Bound::Excluded(c.as_str()),
            None => Bound::Unbounded,
        };
        let range = (start, Bound::Unbounded);
        let mut out: Vec<(Arc<str>, &Row)> = Vec::new();
        let ids: Box<dyn Iterator<Item = (&Arc<str>, &Row)> + '_> =
            if query.site.is_some() || state.is_some() {
                // A site nobody is at: nothing matches.
                let Some(ids) = self.candidates(state, query.site.as_deref()) else {
                    return (out, false);
                };
                Box::new(
                    ids.range::<str, _>(range)
                        .filter_map(|id| self.rows.get(id).map(|row| (id, row))),
                )
            } else {
                Box::new(self.rows.range::<str, _>(range))
            };
        for (id, row) in ids {
            if !matcher.matches(id, row, state, query.site.as_deref()) {
                continue;
            }
            if limit > 0 && out.len() == limit {
                return (out, true);
            }
            out.push((id.clone(), row));
        }
        (out, false)
    }
}

/// The text filters of a query, prepared once.
struct Matcher {
    vendor: Option<String>,
    q: Option<String>,
    mac: Option<Mac>,
    /// `q` could be part of a MAC's text (hex digits and colons only).
    hexish: bool,
}

/// A MAC as `aa:bb:cc:dd:ee:ff`, without allocating.
fn mac_text(mac: &Mac) -> [u8; 17] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b':'; 17];
    for (i, b) in mac.0.iter().enumerate() {
        out[i * 3] = HEX[usize::from(b >> 4)];
        out[i * 3 + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

impl Matcher {
    fn new(query: &Query) -> Self {
        let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
        Self {
            vendor: query.vendor.as_deref().map(str::to_lowercase),
            mac: q.and_then(|q| Mac::parse(q).ok()),
            hexish: q.is_some_and(|q| {
                q.len() <= 17 && q.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
            }),
            q: q.map(str::to_lowercase),
        }
    }

    fn matches(&self, id: &str, row: &Row, state: Option<usize>, site: Option<&str>) -> bool {
        if state.is_some_and(|s| usize::from(row.state) != s) {
            return false;
        }
        if site.is_some_and(|s| &*row.site != s) {
            return false;
        }
        if let Some(v) = &self.vendor {
            if !row
                .vendor
                .as_deref()
                .is_some_and(|have| contains_lower(have, v))
            {
                return false;
            }
        }
        let Some(q) = &self.q else {
            return true;
        };
        if let Some(mac) = &self.mac {
            if row.macs.contains(mac) {
                return true;
            }
        }
        contains_lower(id, q)
            || [&row.serial, &row.uuid, &row.hostname]
                .into_iter()
                .flatten()
                .any(|s| contains_lower(s, q))
            || (self.hexish
                && row.macs.iter().any(|m| {
                    let text = mac_text(m);
                    text.windows(q.len().max(1)).any(|w| w == q.as_bytes())
                }))
    }
}

/// `needle` (already lowercase) is in `hay`, ignoring ASCII and Unicode case.
fn contains_lower(hay: &str, needle: &str) -> bool {
    if hay.is_ascii() {
        hay.as_bytes()
            .windows(needle.len().max(1))
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
            || needle.is_empty()
    } else {
        hay.to_lowercase().contains(needle)
    }
}

fn summary(id: &str, row: &Row) -> MachineSummary {
    MachineSummary {
        id: id.to_owned(),
        state: STATES[usize::from(row.state)].to_owned(),
        profile: row.profile.as_deref().map(str::to_owned),
        reason: row.reason.as_deref().map(str::to_owned),
        site: row.site.to_string(),
        power: row.power,
        vendor: row.vendor.as_deref().map(str::to_owned),
        product: row.product.as_deref().map(str::to_owned),
        serial: row.serial.as_deref().map(str::to_owned),
        uuid: row.uuid.as_deref().map(str::to_owned),
        macs: row.macs.to_vec(),
        hostname: row.hostname.as_deref().map(str::to_owned),
        cpus: row.cpus,
        memory_bytes: row.memory_bytes,
        disks: row.disks,
        disk_bytes: row.disk_bytes,
        conflicts: row.conflicts,
        pending_wipe: row.pending_wipe,
        last_seen_unix_ms: row.last_seen_unix_ms,
    }
}

/// Why [`Fleet::catch_up`] could not confirm the table is current.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot read the machines bucket's revision")]
    Store(#[source] StoreError),
    #[error("the machine list is still loading or behind (at revision {seen:?}, the bucket is at {wanted}) after {waited:?}; try again")]
    Behind {
        seen: Option<u64>,
        wanted: u64,
        waited: Duration,
    },
}

/// What a query needs to know of a machine to act on it (sync, profile use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRef {
    pub id: String,
    /// The state's name.
    pub state: &'static str,
    pub profile: Option<String>,
    pub site: String,
    pub macs: Vec<Mac>,
    pub pending_wipe: bool,
    /// The record owes side effects of a change (its outbox is not empty).
    pub owed: bool,
}

/// The read model. Cheap to clone; [`Fleet::follow`] keeps it current.
#[derive(Debug, Clone)]
pub struct Fleet {
    table: Arc<RwLock<Table>>,
    /// The bucket revision the table reflects; `None` until the first snapshot is in.
    revision: Arc<tokio::sync::watch::Sender<Option<u64>>>,
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

/// First delay before the watch is started again after a failure.
const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest delay between two attempts to start the watch.
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Fleet {
    /// An empty table, not loaded.
    pub fn new() -> Self {
        Self {
            table: Arc::default(),
            revision: Arc::new(tokio::sync::watch::Sender::new(None)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Machines whose records owe side effects of a change (their outbox is not
    /// empty), in id order.
    pub fn owed(&self) -> Vec<String> {
        self.read()
            .rows
            .iter()
            .filter(|(_, row)| row.owed)
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// The bucket revision the table reflects (`None` until loaded).
    pub fn revision(&self) -> Option<u64> {
        *self.revision.borrow()
    }

    /// Machines in the table.
    pub fn len(&self) -> usize {
        self.read().rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The site machine `id` last reported from, if the table holds it.
    pub fn site_of(&self, id: &str) -> Option<Arc<str>> {
        self.read().rows.get(id).map(|row| row.site.clone())
    }

    /// Waits (up to `within`) until the table holds every write made to KV `machines`
    /// before this call.
    pub async fn catch_up(&self, store: &Store, within: Duration) -> Result<(), FleetError> {
        let wanted = store.machines_revision().await.map_err(FleetError::Store)?;
        let mut seen = self.revision.subscribe();
        let reached =
            tokio::time::timeout(within, seen.wait_for(|r| r.is_some_and(|r| r >= wanted))).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            // The sender lives in `self`: it cannot be gone while we wait.
            Ok(Err(_)) | Err(_) => Err(FleetError::Behind {
                seen: self.revision(),
                wanted,
                waited: within,
            }),
        }
    }

    /// One page of `query` (checked with [`Query::check`] first).
    pub fn page(&self, query: &Query) -> Page<MachineSummary> {
        let table = self.read();
        let (rows, more) = table.matching(query, query.limit);
        Page {
            next_cursor: if more {
                rows.last().map(|(id, _)| id.to_string())
            } else {
                None
            },
            machines: rows.iter().map(|(id, row)| summary(id, row)).collect(),
            total: table.rows.len(),
            counts: table.counts(),
        }
    }

    /// The ids of every machine matching `query`'s filters after its cursor (its limit
    /// ignored), in id order: what an export walks (16 bytes a machine).
    pub fn ids(&self, query: &Query) -> Vec<Arc<str>> {
        let table = self.read();
        let (rows, _) = table.matching(query, 0);
        rows.into_iter().map(|(id, _)| id).collect()
    }

    /// The machines matching `query`'s filters after its cursor, in id order, at most
    /// `query.limit` of them (0: all): what a sweep walks, a chunk at a time.
    pub fn select(&self, query: &Query) -> Vec<RowRef> {
        let table = self.read();
        let (rows, _) = table.matching(query, query.limit);
        rows.iter()
            .map(|(id, row)| RowRef {
                id: id.to_string(),
                state: STATES[usize::from(row.state)],
                profile: row.profile.as_deref().map(str::to_owned),
                site: row.site.to_string(),
                macs: row.macs.to_vec(),
                pending_wipe: row.pending_wipe,
                owed: row.owed,
            })
            .collect()
    }

    /// Machines whose profile is `name`.
    pub fn using_profile(&self, name: &str) -> Vec<String> {
        self.read()
            .rows
            .iter()
            .filter(|(_, row)| row.profile.as_deref() == Some(name))
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// Keeps the table equal to KV `machines` until `cancel`: watch, and after a
    /// failure start again (a new snapshot) with a jittered backoff. While NATS is
    /// away the last table keeps serving.
    pub async fn follow(self, store: Store, cancel: CancellationToken) {
        crate::store::keep_watching("machine list", RETRY_MIN, RETRY_MAX, &cancel, || {
            self.watch_once(&store)
        })
        .await;
    }

    /// One watch: the snapshot, swapped in whole, then live changes until it fails.
    async fn watch_once(&self, store: &Store) -> (StoreError, bool) {
        let mut watch = match store.machines_watch::<RowSource>().await {
            Ok(w) => w,
            Err(e) => return (e, false),
        };
        let started = std::time::Instant::now();
        let mut fresh = Table::default();
        loop {
            match watch.next().await {
                Ok(DocEvent::Change { key, doc, .. }) => fresh.apply(&key, doc),
                Ok(DocEvent::Current { revision }) => {
                    tracing::info!(
                        machines = fresh.rows.len(),
                        revision,
                        took = ?started.elapsed(),
                        "machine list loaded"
                    );
                    *self.table.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                    self.advance(revision);
                    break;
                }
                Err(e) => return (e, false),
            }
        }
        loop {
            match watch.next().await {
                Ok(DocEvent::Change { key, doc, revision }) => {
                    self.table
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply(&key, doc);
                    self.advance(revision);
                }
                Ok(DocEvent::Current { .. }) => {}
                Err(e) => return (e, true),
            }
        }
    }

    fn advance(&self, revision: u64) {
        self.revision
            .send_modify(|r| *r = Some(r.map_or(revision, |r| r.max(revision))));
    }

    /// Applies one record directly (tests of the pure parts).
    /// Applies one record as the watch would (tests of the pure parts): through its
    /// stored JSON.
    #[cfg(test)]
    fn apply(&self, id: &str, record: Option<&MachineRecord>) {
        let source = record.map(|r| {
            let json = serde_json::to_vec(r).unwrap_or_default();
            serde_json::from_slice::<RowSource>(&json).unwrap_or_else(|e| panic!("{e}"))
        });
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(id, source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use substruct_wire::report::{Dmi, HardwareReport, Nic};
    use substruct_wire::{MachineId, SiteId};

    fn record(id: &str, site: &str, state: State, vendor: &str, mac: u8) -> MachineRecord {
        let report = HardwareReport {
            dmi: Dmi {
                sys_vendor: Some(vendor.into()),
                product_serial: Some(format!("SER-{id}")),
                product_uuid: Some(format!("uuid-{id}")),
                ..Dmi::default()
            },
            nics: vec![Nic {
                name: "eth0".into(),
                mac: Mac([0x02, 0, 0, 0, 0, mac]),
                driver: None,
                pci_address: None,
                speed_mbps: None,
                carrier: None,
            }],
            ..HardwareReport::default()
        };
        let mut r = MachineRecord::new(
            MachineId::new(id).unwrap(),
            SiteId::new(site).unwrap(),
            report,
            vec![],
            1,
        );
        r.state = state;
        r
    }

    fn fleet() -> Fleet {
        let f = Fleet::new();
        let deployed = || State::Deployed {
            profile: "web".into(),
        };
        for (i, (site, state, vendor)) in [
            ("a", State::Discovered, "Dell Inc."),
            ("a", deployed(), "Dell Inc."),
            ("b", deployed(), "HPE"),
            ("b", State::Discovered, "HPE"),
            ("a", State::Retired, "<script>"),
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("m{i}");
            let mac = u8::try_from(i).unwrap();
            f.apply(&id, Some(&record(&id, site, state, vendor, mac)));
        }
        f
    }

    fn query() -> Query {
        Query {
            limit: 2,
            ..Query::default()
        }
    }

    fn ids(page: &Page<MachineSummary>) -> Vec<&str> {
        page.machines.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn pages_follow_the_cursor_to_the_end() {
        let f = fleet();
        let mut q = query();
        let mut seen = Vec::new();
        loop {
            let page = f.page(&q);
            seen.extend(page.machines.iter().map(|m| m.id.clone()));
            assert_eq!(page.total, 5);
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ["m0", "m1", "m2", "m3", "m4"]);
    }

    #[test]
    fn a_full_last_page_has_no_cursor() {
        let f = fleet();
        let q = Query {
            limit: 5,
            ..Query::default()
        };
        let page = f.page(&q);
        assert_eq!(page.machines.len(), 5);
        assert_eq!(page.next_cursor, None);
    }

    #[test]
    fn filters_combine_and_walk_the_smaller_index() {
        let f = fleet();
        let page = f.page(&Query {
            site: Some("b".into()),
            state: Some("deployed".into()),
            ..query()
        });
        assert_eq!(ids(&page), ["m2"]);
        let page = f.page(&Query {
            state: Some("discovered".into()),
            ..query()
        });
        assert_eq!(ids(&page), ["m0", "m3"]);
        assert_eq!(page.next_cursor, None);
        let page = f.page(&Query {
            site: Some("nowhere".into()),
            ..query()
        });
        assert!(page.machines.is_empty());
        let page = f.page(&Query {
            vendor: Some("dell".into()),
            limit: 10,
            ..query()
        });
        assert_eq!(ids(&page), ["m0", "m1"]);
    }

    #[test]
    fn search_matches_id_serial_uuid_and_mac() {
        let f = fleet();
        let search = |q: &str| {
            f.page(&Query {
                q: Some(q.into()),
                limit: 10,
                ..Query::default()
            })
            .machines
            .into_iter()
            .map(|m| m.id)
            .collect::<Vec<_>>()
        };
        assert_eq!(search("ser-m3"), ["m3"]);
        assert_eq!(search("UUID-M2"), ["m2"]);
        assert_eq!(search("02-00-00-00-00-04"), ["m4"]);
        assert_eq!(search("00:01"), ["m1"]);
        assert_eq!(search("m"), ["m0", "m1", "m2", "m3", "m4"]);
        assert!(search("zzz").is_empty());
    }

    #[test]
    fn changes_move_rows_between_indexes_and_counts() {
        let f = fleet();
        let counts = f.page(&query()).counts;
        assert_eq!(counts.state["discovered"], 2);
        assert_eq!(counts.state["installing"], 0);
        assert_eq!(counts.site["a"], 3);
        f.apply(
            "m0",
            Some(&record(
                "m0",
                "c",
                State::Installing {
                    profile: "web".into(),
                },
                "Dell Inc.",
                0,
            )),
        );
        f.apply("m4", None);
        let counts = f.page(&query()).counts;
        assert_eq!(counts.state["discovered"], 1);
        assert_eq!(counts.state["installing"], 1);
        assert_eq!(counts.state["retired"], 0);
        assert_eq!(counts.site["a"], 1);
        assert_eq!(counts.site["c"], 1);
        assert_eq!(f.len(), 4);
        let page = f.page(&Query {
            site: Some("a".into()),
            limit: 10,
            ..Query::default()
        });
        assert_eq!(ids(&page), ["m1"]);
        assert_eq!(f.using_profile("web"), ["m0", "m1", "m2"]);
    }

    #[test]
    fn a_cursor_past_every_id_or_between_ids_works() {
        let f = fleet();
        let page = f.page(&Query {
            cursor: Some("m1a".into()),
            ..query()
        });
        assert_eq!(ids(&page), ["m2", "m3"]);
        let page = f.page(&Query {
            cursor: Some("zz".into()),
            ..query()
        });
        assert!(page.machines.is_empty());
        assert_eq!(page.next_cursor, None);
    }

    #[test]
    fn bad_queries_are_refused_by_name() {
        let q = Query {
            state: Some("gone".into()),
            ..query()
        };
        assert!(q.check().unwrap_err().to_string().contains("gone"));
        assert_eq!(
            Query {
                limit: 0,
                ..query()
            }
            .check(),
            Err(QueryError::Limit(0))
        );
        assert_eq!(
            Query {
                limit: MAX_LIMIT + 1,
                ..query()
            }
            .check(),
            Err(QueryError::Limit(MAX_LIMIT + 1))
        );
        assert_eq!(
            Query {
                q: Some("x".repeat(MAX_QUERY_BYTES + 1)),
                ..query()
            }
            .check(),
            Err(QueryError::TooLong)
        );
    }

    #[test]
    fn case_insensitive_contains() {
        assert!(contains_lower("Dell Inc.", "dell"));
        assert!(contains_lower("Dell Inc.", ""));
        assert!(!contains_lower("HPE", "dell"));
        assert!(contains_lower("ÄBC", "äb"));
        assert!(!contains_lower("ab", "abc"));
    }

    #[test]
    fn a_failed_machine_keeps_its_reason_and_profile() {
        let f = Fleet::new();
        let failed = State::Failed {
            reason: "disk not found".into(),
            profile: Some("web".into()),
        };
        f.apply("m", Some(&record("m", "a", failed, "HPE", 1)));
        let page = f.page(&query());
        let m = &page.machines[0];
        assert_eq!(m.state, "failed");
        assert_eq!(m.reason.as_deref(), Some("disk not found"));
        assert_eq!(m.profile.as_deref(), Some("web"));
        assert_eq!(f.using_profile("web"), ["m"]);
    }

    #[test]
    fn mac_text_is_the_display_form() {
        let mac = Mac([0x02, 0xab, 0, 0x10, 0xff, 0x09]);
        assert_eq!(mac_text(&mac).as_slice(), mac.to_string().as_bytes());
    }
}
