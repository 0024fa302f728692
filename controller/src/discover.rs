//! Discover requests: prospectors report hardware on `substruct.v1.{site}.discover`;
//! the controller checks the request ([`check_request`], pure), finds or creates the
//! machine ([`Inventory::ingest`]: matching + compare-and-set writes), and replies with a
//! `DiscoverReply` only once the record is durable, or with an `ErrorReply`.
//!
//! Controllers share the subject through the [`subjects::CONTROLLER_QUEUE`] queue
//! group; each one handles at most `max_in_flight` requests at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use substruct_runtime::serve::{serve_requests, ReplyPolicy, Requests, ServeOptions};
use substruct_wire::messages::{
    DiscoverReply, DiscoverRequest, ErrorCode, ErrorReply, Instruction,
};
use substruct_wire::report::HardwareReport;
use substruct_wire::{subjects, BootCredential, MachineId, SiteId, WireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Limits};
use crate::matching::{identity_facts, may_speak_for, proof, resolve, Action, Fact, Proof};
use crate::provision::Provisioner;
use crate::record::{Conflict, MachineEvent, MachineEventKind, MachineRecord};
use crate::sites::SiteRecord;
use crate::store::{Docs, IndexEntry, Store, StoreError, Write};

/// A request slower than this is logged.
const SLOW: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a report is re-resolved after losing a compare-and-set race.
const MAX_ATTEMPTS: usize = 16;

/// Why a request was refused before anything was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Decodes a discover request and checks it against the subject and the
/// configuration: version, kind, site (subject = body, known if sites are
/// configured) and limits. Pure: no I/O.
pub fn check_request(
    subject: &str,
    payload: &[u8],
    config: &Config,
) -> Result<DiscoverRequest, Refusal> {
    let request = substruct_wire::decode::<DiscoverRequest>(payload).map_err(|e| {
        let code = match e {
            WireError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::Malformed,
        };
        Refusal::new(
            code,
            format!("discover request refused: {}", crate::error_chain(&e)),
        )
    })?;
    let Some(subject_site) = subjects::site_of(subject) else {
        return Err(Refusal::new(
            ErrorCode::WrongSite,
            format!("subject {subject:?} names no site"),
        ));
    };
    if subject_site != request.site.as_str() {
        return Err(Refusal::new(
            ErrorCode::WrongSite,
            format!(
                "subject site {subject_site:?} differs from the report's site {:?}",
                request.site.as_str()
            ),
        ));
    }
    if !config.site_is_known(&request.site) {
        let known: Vec<&str> = config.sites.iter().map(SiteId::as_str).collect();
        return Err(Refusal::new(
            ErrorCode::WrongSite,
            format!(
                "site {:?} is not configured on this controller (known: {})",
                request.site.as_str(),
                known.join(", ")
            ),
        ));
    }
    check_limits(&request.report, &config.limits)
        .map_err(|m| Refusal::new(ErrorCode::TooLarge, m))?;
    Ok(request)
}

/// Checks list lengths and string lengths; the error names the field.
pub fn check_limits(report: &HardwareReport, limits: &Limits) -> Result<(), String> {
    let counts = [
        ("disks", report.disks.len(), limits.max_disks),
        ("nics", report.nics.len(), limits.max_nics),
        ("pci", report.pci.len(), limits.max_pci),
        ("memory.dimms", report.memory.dimms.len(), limits.max_dimms),
        ("cpu.flags", report.cpu.flags.len(), limits.max_cpu_flags),
    ];
    for (field, n, max) in counts {
        if n > max {
            return Err(format!(
                "report has {n} entries in {field}, more than the limit of {max}"
            ));
        }
    }
    let max = limits.max_string_len;
    let check = |field: &dyn Fn() -> String, value: Option<&str>| match value {
        Some(v) if v.len() > max => Err(format!(
            "report field {} is {} bytes, more than the limit of {max}",
            field(),
            v.len()
        )),
        _ => Ok(()),
    };
    let d = &report.dmi;
    check(
        &|| "prospector_version".into(),
        Some(&report.prospector_version),
    )?;
    for (name, value) in [
        ("sys_vendor", &d.sys_vendor),
        ("product_name", &d.product_name),
        ("product_version", &d.product_version),
        ("product_serial", &d.product_serial),
        ("product_uuid", &d.product_uuid),
        ("product_sku", &d.product_sku),
        ("product_family", &d.product_family),
        ("board_vendor", &d.board_vendor),
        ("board_name", &d.board_name),
        ("board_serial", &d.board_serial),
        ("chassis_serial", &d.chassis_serial),
        ("chassis_asset_tag", &d.chassis_asset_tag),
        ("bios_vendor", &d.bios_vendor),
        ("bios_version", &d.bios_version),
        ("bios_date", &d.bios_date),
    ] {
        check(&|| format!("dmi.{name}"), value.as_deref())?;
    }
    let c = &report.cpu;
    check(&|| "cpu.model".into(), c.model.as_deref())?;
    check(&|| "cpu.virtualization".into(), c.virtualization.as_deref())?;
    check(&|| "cpu.microcode".into(), c.microcode.as_deref())?;
    for (i, f) in c.flags.iter().enumerate() {
        check(&|| format!("cpu.flags[{i}]"), Some(f))?;
    }
    for (i, m) in report.memory.dimms.iter().enumerate() {
        check(&|| format!("memory.dimms[{i}].slot"), m.slot.as_deref())?;
        check(&|| format!("memory.dimms[{i}].kind"), m.kind.as_deref())?;
        check(&|| format!("memory.dimms[{i}].serial"), m.serial.as_deref())?;
    }
    for (i, k) in report.disks.iter().enumerate() {
        check(&|| format!("disks[{i}].name"), Some(&k.name))?;
        check(&|| format!("disks[{i}].model"), k.model.as_deref())?;
        check(&|| format!("disks[{i}].serial"), k.serial.as_deref())?;
        check(&|| format!("disks[{i}].wwn"), k.wwn.as_deref())?;
    }
    for (i, n) in report.nics.iter().enumerate() {
        check(&|| format!("nics[{i}].name"), Some(&n.name))?;
        check(&|| format!("nics[{i}].driver"), n.driver.as_deref())?;
        check(
            &|| format!("nics[{i}].pci_address"),
            n.pci_address.as_deref(),
        )?;
    }
    for (i, p) in report.pci.iter().enumerate() {
        check(&|| format!("pci[{i}].address"), Some(&p.address))?;
    }
    Ok(())
}

/// Why a checked report could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("report has no usable identity fact (SMBIOS UUID, serial, MAC or disk serial)")]
    NoIdentity,
    #[error("gave up after {MAX_ATTEMPTS} compare-and-set races on machine records")]
    Contention,
    #[error("store unavailable")]
    Store(#[from] StoreError),
    /// The report matches a known machine but proves nothing about being it
    /// ([`crate::matching::may_speak_for`]); nothing was written.
    #[error("{reason}")]
    Unproven { machine: MachineId, reason: String },
}

impl IngestError {
    /// The code the prospector sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NoIdentity => ErrorCode::Malformed,
            Self::Unproven { .. } => ErrorCode::Forbidden,
            Self::Contention | Self::Store(_) => ErrorCode::Unavailable,
        }
    }
}

/// A stored report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub machine_id: MachineId,
    /// True when this report created the machine.
    pub created: bool,
    /// The record's revision after the write.
    pub revision: u64,
    /// The record as written.
    pub record: MachineRecord,
}

/// Hashes of index keys this controller has seen pointing at a machine: a hint that
/// a report is probably a known machine, so the fast path (claim first, read
/// nothing) would fail. Stale or missing hints cost a retry, never correctness.
#[derive(Debug, Default)]
struct KeyHints {
    set: Mutex<HashSet<u64>>,
}

/// Past this many hints the set is cleared (about 20 MB).
const MAX_HINTS: usize = 1 << 20;

impl KeyHints {
    fn hash(key: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        h.finish()
    }

    fn any(&self, keys: &[String]) -> bool {
        let set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().any(|k| set.contains(&Self::hash(k)))
    }

    fn add(&self, keys: &[String]) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() + keys.len() > MAX_HINTS {
            set.clear();
        }
        set.extend(keys.iter().map(|k| Self::hash(k)));
    }
}

/// Index keys this request claimed on the fast path, with the revisions it wrote;
/// the slow path repoints them if the report turns out to be another machine.
#[derive(Debug, Default)]
struct Claimed {
    revisions: BTreeMap<String, u64>,
}

impl Claimed {
    fn is_ours(&self, key: &str, entry: &IndexEntry) -> bool {
        self.revisions.get(key) == Some(&entry.revision)
    }
}

/// The machine inventory: matching over the [`Store`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Inventory {
    store: Store,
    hints: Arc<KeyHints>,
}

impl Inventory {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            hints: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Finds (or creates) the machine `report` belongs to and stores the report,
    /// with compare-and-set writes throughout; points the index at it, records
    /// conflicts on every machine involved and publishes the events. Returns once
    /// all of that is durable.
    ///
    /// Fast path, for a report none of whose facts this controller has seen: claim
    /// every index key for the id the facts derive (`create` semantics, no reads),
    /// then create the record. If any claim or the create loses, the slow path
    /// reads the index and the candidates and resolves properly.
    ///
    /// A report that matches a known machine updates it only if `credential` proves it
    /// is that machine ([`crate::matching::may_speak_for`]); otherwise nothing is
    /// written and the answer is [`IngestError::Unproven`]. A new machine needs none.
    pub async fn ingest(
        &self,
        site: &SiteId,
        report: HardwareReport,
        credential: Option<&BootCredential>,
        now_unix_ms: u64,
    ) -> Result<Ingested, IngestError> {
        let facts = identity_facts(&report);
        if facts.is_empty() {
            return Err(IngestError::NoIdentity);
        }
        let keys: Vec<String> = facts.iter().map(Fact::index_key).collect();
        let mut claimed = Claimed::default();
        let mut derived = BTreeSet::new();
        if !self.hints.any(&keys) {
            if let Action::Create(id) = resolve(&report, &[]).action {
                let writes =
                    try_join_all(keys.iter().map(|k| self.store.index_try_claim(k, &id))).await?;
                for (key, write) in keys.iter().zip(writes) {
                    if let Write::Done(rev) = write {
                        claimed.revisions.insert(key.clone(), rev);
                    }
                }
                if claimed.revisions.len() == keys.len() {
                    let record = MachineRecord::new(
                        id.clone(),
                        site.clone(),
                        report.clone(),
                        vec![],
                        now_unix_ms,
                    );
                    match self.store.create_machine(&record).await? {
                        Write::Done(revision) => {
                            self.hints.add(&keys);
                            tracing::info!(machine = %id, %site, "machine discovered");
                            self.store
                                .publish_event(&MachineEvent {
                                    machine_id: id.clone(),
                                    at_unix_ms: now_unix_ms,
                                    revision,
                                    kind: MachineEventKind::Discovered { site: site.clone() },
                                })
                                .await?;
                            return Ok(Ingested {
                                machine_id: id,
                                created: true,
                                revision,
                                record,
                            });
                        }
                        Write::Lost => {
                            derived.insert(id);
                        }
                    }
                }
            }
        }
        let done = self
            .resolve_and_store(
                site,
                &report,
                credential,
                now_unix_ms,
                &facts,
                &keys,
                &claimed,
                derived,
            )
            .await?;
        self.hints.add(&keys);
        Ok(done)
    }

    /// What `credential` proves for `report` from `site`: reads the site's registration
    /// (its key, whether it allows unauthenticated reports); no registration is no key.
    async fn proof(
        &self,
        site: &SiteId,
        credential: Option<&BootCredential>,
        report: &HardwareReport,
        now_unix_ms: u64,
    ) -> Result<Proof, StoreError> {
        let registered = self
            .store
            .doc_get::<SiteRecord>(Docs::Sites, site.as_str())
            .await?
            .map(|(r, _)| r);
        let (key, allow) = registered
            .as_ref()
            .map_or((None, false), |r| (r.key.as_ref(), r.allow_unauthenticated));
        Ok(proof(
            credential,
            site,
            key,
            allow,
            report,
            now_unix_ms / 1000,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn resolve_and_store(
        &self,
        site: &SiteId,
        report: &HardwareReport,
        credential: Option<&BootCredential>,
        now_unix_ms: u64,
        facts: &[Fact],
        keys: &[String],
        claimed: &Claimed,
        mut derived: BTreeSet<MachineId>,
    ) -> Result<Ingested, IngestError> {
        let store = &self.store;
        // What the report proves: decided once, when it first matches a known machine.
        let mut proven: Option<Proof> = None;
        for _ in 0..MAX_ATTEMPTS {
            let index: Vec<Option<IndexEntry>> =
                try_join_all(keys.iter().map(|k| store.index_get(k))).await?;
            let mut ids: BTreeSet<MachineId> = index
                .iter()
                .flatten()
                .filter_map(|e| e.machine.clone())
                .collect();
            ids.extend(derived.iter().cloned());
            let found = try_join_all(ids.iter().map(|id| store.machine(id))).await?;
            let mut revisions: BTreeMap<MachineId, u64> = BTreeMap::new();
            let mut records: Vec<MachineRecord> = Vec::with_capacity(found.len());
            for (record, rev) in found.into_iter().flatten() {
                revisions.insert(record.id.clone(), rev);
                records.push(record);
            }
            let resolution = resolve(report, &records);
            let (target, revision, created, added, written) = match &resolution.action {
                Action::NoIdentity => return Err(IngestError::NoIdentity),
                Action::Update(id) => {
                    let (Some(old), Some(&rev)) =
                        (records.iter().find(|r| &r.id == id), revisions.get(id))
                    else {
                        continue;
                    };
                    let proof = match proven.take() {
                        Some(p) => p,
                        None => self.proof(site, credential, report, now_unix_ms).await?,
                    };
                    may_speak_for(old, &proof).map_err(|reason| IngestError::Unproven {
                        machine: id.clone(),
                        reason,
                    })?;
                    proven = Some(proof);
                    let new = old.updated(
                        site.clone(),
                        report.clone(),
                        resolution.conflicts.clone(),
                        now_unix_ms,
                    );
                    let added: Vec<Conflict> = new
                        .conflicts
                        .iter()
                        .filter(|c| !old.conflicts.contains(c))
                        .cloned()
                        .collect();
                    match store.update_machine(&new, rev).await? {
                        Write::Done(r) => {
                            if old.report_count == 1 {
                                announce_if_lost(store, old, rev).await?;
                            }
                            (id.clone(), r, false, added, new)
                        }
                        Write::Lost => continue,
                    }
                }
                Action::Create(id) => {
                    let new = MachineRecord::new(
                        id.clone(),
                        site.clone(),
                        report.clone(),
                        resolution.conflicts.clone(),
                        now_unix_ms,
                    );
                    match store.create_machine(&new).await? {
                        Write::Done(r) => (id.clone(), r, true, new.conflicts.clone(), new),
                        Write::Lost => {
                            derived.insert(id.clone());
                            continue;
                        }
                    }
                }
            };
            if created {
                tracing::info!(machine = %target, %site, "machine discovered");
            }
            for c in &added {
                tracing::warn!(machine = %target, conflict = %c, "identity conflict");
            }
            let records: BTreeMap<&MachineId, &MachineRecord> =
                records.iter().map(|r| (&r.id, r)).collect();
            let event = MachineEvent {
                machine_id: target.clone(),
                at_unix_ms: now_unix_ms,
                revision,
                kind: if created {
                    MachineEventKind::Discovered { site: site.clone() }
                } else {
                    MachineEventKind::Updated {
                        site: site.clone(),
                        report_count: records.get(&target).map_or(1, |r| r.report_count + 1),
                    }
                },
            };
            // Index claims and the events, all at once.
            let claims = facts
                .iter()
                .zip(keys)
                .zip(&index)
                .map(|((fact, key), entry)| {
                    claim(store, fact, key, entry.as_ref(), &target, &records, claimed)
                });
            let (late, _, _) =
                futures::try_join!(try_join_all(claims), store.publish_event(&event), async {
                    if added.is_empty() {
                        return Ok(());
                    }
                    store
                        .publish_event(&MachineEvent {
                            machine_id: target.clone(),
                            at_unix_ms: now_unix_ms,
                            revision,
                            kind: MachineEventKind::Conflict {
                                conflicts: added.clone(),
                            },
                        })
                        .await
                })?;
            // Conflicts to record elsewhere: the mirror of ours on each other
            // machine, and facts another machine claimed that the resolution
            // could not see (claimed after our read, or by a record not yet written).
            let mut elsewhere: BTreeMap<MachineId, Vec<Conflict>> = BTreeMap::new();
            for (other, c) in resolution.mirrored_conflicts(&target) {
                elsewhere.entry(other).or_default().push(c);
            }
            for (fact, other) in late.into_iter().flatten() {
                elsewhere.entry(other.clone()).or_default().push(Conflict {
                    fact: fact.describe(),
                    other_machine: target.clone(),
                });
                elsewhere.entry(target.clone()).or_default().push(Conflict {
                    fact: fact.describe(),
                    other_machine: other,
                });
            }
            try_join_all(
                elsewhere
                    .into_iter()
                    .map(|(id, conflicts)| record_conflicts(store, id, conflicts, now_unix_ms)),
            )
            .await?;
            return Ok(Ingested {
                machine_id: target,
                created,
                revision,
                record: written,
            });
        }
        Err(IngestError::Contention)
    }
}

/// The second report of a machine: if the controller that created the record died
/// before publishing its `discovered` event (the prospector's retry then lands here,
/// as an update), publish it now. Same dedup id as the original when the record was
/// not touched in between, so a late original publish is dropped by the stream.
async fn announce_if_lost(
    store: &Store,
    old: &MachineRecord,
    revision: u64,
) -> Result<(), StoreError> {
    if store.has_discovered_event(&old.id).await? {
        return Ok(());
    }
    tracing::warn!(machine = %old.id, "the discovered event of this machine was lost (a controller died after creating it); publishing it now");
    store
        .publish_event(&MachineEvent {
            machine_id: old.id.clone(),
            at_unix_ms: old.first_seen_unix_ms,
            revision,
            kind: MachineEventKind::Discovered {
                site: old.site.clone(),
            },
        })
        .await
}

/// Points one index key at `target` unless it already does, or belongs to another
/// machine that still reports the fact. Returns that other machine when it claimed
/// the fact after our read (a conflict the resolution could not see).
async fn claim(
    store: &Store,
    fact: &Fact,
    key: &str,
    entry: Option<&IndexEntry>,
    target: &MachineId,
    records: &BTreeMap<&MachineId, &MachineRecord>,
    claimed: &Claimed,
) -> Result<Option<(Fact, MachineId)>, StoreError> {
    let mut entry = entry.cloned();
    for _ in 0..MAX_ATTEMPTS {
        let write = match &entry {
            None => store.index_claim(key, target).await?,
            Some(e) if e.machine.as_ref() == Some(target) => return Ok(None),
            // Our own fast-path claim for an id the report did not get.
            Some(e) if claimed.is_ours(key, e) => {
                store.index_repoint(key, target, e.revision).await?
            }
            Some(e) => {
                let owner_still_has_it = match &e.machine {
                    Some(owner) => match records.get(owner) {
                        Some(r) => crate::matching::identity_facts(&r.facts).contains(fact),
                        // Not read in this round (claimed after our read, or a
                        // claim whose record is not written yet): look now.
                        None => match store.machine(owner).await? {
                            Some((r, _)) => {
                                if crate::matching::identity_facts(&r.facts).contains(fact) {
                                    return Ok(Some((fact.clone(), owner.clone())));
                                }
                                false
                            }
                            // Another request's claim in flight (or left by a crash):
                            // flag it rather than take the fact away.
                            None => return Ok(Some((fact.clone(), owner.clone()))),
                        },
                    },
                    None => false,
                };
                if owner_still_has_it {
                    // A conflict the resolution already recorded.
                    return Ok(None);
                }
                store.index_repoint(key, target, e.revision).await?
            }
        };
        match write {
            Write::Done(_) => return Ok(None),
            Write::Lost => entry = store.index_get(key).await?,
        }
    }
    Err(StoreError::Write {
        bucket: subjects::KV_MACHINE_INDEX,
        key: key.to_owned(),
        source: "too many compare-and-set races".into(),
    })
}

/// Adds conflicts to one machine's record (compare-and-set, re-read on a lost
/// race) and publishes a conflict event when any was new.
async fn record_conflicts(
    store: &Store,
    id: MachineId,
    conflicts: Vec<Conflict>,
    now_unix_ms: u64,
) -> Result<(), StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let Some((mut record, rev)) = store.machine(&id).await? else {
            return Ok(());
        };
        let added = record.add_conflicts(conflicts.clone());
        if added.is_empty() {
            return Ok(());
        }
        if let Write::Done(revision) = store.update_machine(&record, rev).await? {
            for c in &added {
                tracing::warn!(machine = %id, conflict = %c, "identity conflict");
            }
            return store
                .publish_event(&MachineEvent {
                    machine_id: id,
                    at_unix_ms: now_unix_ms,
                    revision,
                    kind: MachineEventKind::Conflict { conflicts: added },
                })
                .await;
        }
    }
    Err(StoreError::Write {
        bucket: subjects::KV_MACHINES,
        key: subjects::machine_key(&id),
        source: "too many compare-and-set races".into(),
    })
}

/// One site's token bucket: `tokens` requests may be sent now; it refills at the
/// configured rate up to the configured burst.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token at `now`, or says how long until one is there. Pure.
    fn take(&mut self, now: Instant, per_second: f64, burst: u32) -> Result<(), Duration> {
        let burst = f64::from(burst.max(1));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / per_second;
            Err(Duration::from_secs_f64(wait.clamp(0.001, 3600.0)))
        }
    }

    fn is_full(&self, now: Instant, per_second: f64, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * per_second >= f64::from(burst)
    }
}

/// Sites tracked at once; past this many, the buckets that are full again (sites
/// that have been quiet) are forgotten, which changes nothing for them (and if none
/// is, all are).
const MAX_TRACKED_SITES: usize = 10_000;

/// The per-site report rate limit ([`Limits::site_reports_per_second`],
/// [`Limits::site_report_burst`]): a token bucket per site, so one site's storm (or a
/// flood through a compromised leaf) cannot take the controller from the others.
#[derive(Debug, Default)]
pub struct SiteRates {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl SiteRates {
    /// Takes one report of `site` at `now`; `Err(wait)` when over the limit.
    pub fn check(&self, site: &str, now: Instant, limits: &Limits) -> Result<(), Duration> {
        let (rate, burst) = (limits.site_reports_per_second, limits.site_report_burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_SITES && !buckets.contains_key(site) {
            buckets.retain(|_, b| !b.is_full(now, rate, burst));
            if buckets.len() >= MAX_TRACKED_SITES {
                // Only a flood of site names gets here; forgetting every budget (each
                // site starts full again) keeps the map bounded.
                buckets.clear();
            }
        }
        buckets
            .entry(site.to_owned())
            .or_insert(Bucket {
                tokens: f64::from(burst),
                at: now,
            })
            .take(now, rate, burst)
    }
}

/// The refusal of a report over its site's rate: `Unavailable`, which the prospector
/// retries (every discover refusal is retried, after its backoff).
fn rate_limited(wait: Duration) -> ErrorReply {
    ErrorReply {
        code: ErrorCode::Unavailable,
        message: format!("rate limited, retry after {} ms", wait.as_millis().max(1)),
    }
}

async fn timed_ingest(
    inventory: &Inventory,
    subject: &str,
    request: DiscoverRequest,
) -> Result<Ingested, IngestError> {
    let started = std::time::Instant::now();
    let result = inventory
        .ingest(
            &request.site,
            request.report,
            request.boot_token.as_ref(),
            crate::now_unix_ms(),
        )
        .await;
    if started.elapsed() > SLOW {
        tracing::warn!(subject, elapsed = ?started.elapsed(), "slow discover request");
    }
    result
}

/// Answers one raw request: the encoded reply (`DiscoverReply` or `ErrorReply`).
pub(crate) async fn answer(
    inventory: &Inventory,
    provisioner: &Provisioner,
    config: &Config,
    rates: &SiteRates,
    subject: &str,
    payload: &[u8],
) -> Vec<u8> {
    let site = subjects::site_of(subject).unwrap_or_default();
    let checked = match rates.check(site, Instant::now(), &config.limits) {
        Ok(()) => check_request(subject, payload, config),
        Err(wait) => {
            tracing::warn!(subject, retry_after = ?wait, "discover request over the site's rate limit");
            let refused = rate_limited(wait);
            Err(Refusal::new(refused.code, refused.message))
        }
    };
    let reply = match checked {
        Err(refusal) => {
            tracing::warn!(subject, code = ?refusal.code, message = %refusal.message, "discover request refused");
            Err(ErrorReply {
                code: refusal.code,
                message: refusal.message,
            })
        }
        Ok(request) => match timed_ingest(inventory, subject, request).await {
            Ok(done) => match provisioner.after_report(done.record).await {
                Ok(instruction) => Ok(DiscoverReply {
                    machine_id: done.machine_id,
                    instruction,
                }),
                Err(e) => {
                    // The report is stored; what to do next is not decided. The
                    // prospector waits and hears on its command subject.
                    tracing::error!(machine = %done.machine_id, error = %crate::error_chain(&e), "cannot decide the next step");
                    Ok(DiscoverReply {
                        machine_id: done.machine_id,
                        instruction: Instruction::Wait,
                    })
                }
            },
            Err(e) => {
                let message = crate::error_chain(&e);
                if matches!(e, IngestError::NoIdentity | IngestError::Unproven { .. }) {
                    tracing::warn!(subject, error = %message, "discover request refused");
                } else {
                    tracing::error!(subject, error = %message, "cannot store a discover report");
                }
                Err(ErrorReply {
                    code: e.code(),
                    message,
                })
            }
        },
    };
    let encoded = match &reply {
        Ok(r) => substruct_wire::encode(r),
        Err(r) => substruct_wire::encode(r),
    };
    encoded.unwrap_or_else(|e| {
        // Only a reply larger than 1 MiB could fail; send an empty body rather
        // than nothing, so the requester does not wait for its timeout.
        tracing::error!(error = %crate::error_chain(&e), "cannot encode a discover reply");
        Vec::new()
    })
}

/// Serves discover requests until `cancel`; one task per request, at most
/// `config.max_in_flight` at once, spawned on `tracker` (the shared loop,
/// [`serve_requests`]).
pub(crate) async fn serve(
    client: async_nats::Client,
    requests: Requests,
    inventory: Inventory,
    provisioner: Provisioner,
    config: Arc<Config>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let options = ServeOptions {
        name: "discover",
        max_in_flight: config.max_in_flight,
        reply: ReplyPolicy::SiteInbox,
    };
    let rates = Arc::new(SiteRates::default());
    serve_requests(client, requests, options, cancel, tracker, move |msg| {
        let (inventory, provisioner, config, rates) = (
            inventory.clone(),
            provisioner.clone(),
            config.clone(),
            rates.clone(),
        );
        async move {
            answer(
                &inventory,
                &provisioner,
                &config,
                &rates,
                msg.subject.as_str(),
                &msg.payload,
            )
            .await
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use substruct_wire::report::{Disk, Nic};
    use substruct_wire::Mac;

    use super::*;

    fn request(site: &str, report: HardwareReport) -> Vec<u8> {
        substruct_wire::encode(&DiscoverRequest {
            site: SiteId::new(site).unwrap(),
            boot_token: None,
            report,
        })
        .unwrap()
    }

    #[test]
    fn limits_name_the_field() {
        let limits = Limits {
            max_nics: 1,
            max_string_len: 8,
            ..Limits::default()
        };
        let mut report = HardwareReport::default();
        assert_eq!(check_limits(&report, &limits), Ok(()));
        report.disks = vec![Disk {
            name: "nvme0n1".into(),
            serial: Some("S".repeat(9)),
            ..Disk::default()
        }];
        assert_eq!(
            check_limits(&report, &limits).unwrap_err(),
            "report field disks[0].serial is 9 bytes, more than the limit of 8"
        );
        report.disks.clear();
        let nic = Nic {
            name: "eth0".into(),
            mac: Mac([2, 0, 0, 0, 0, 1]),
            driver: None,
            pci_address: None,
            speed_mbps: None,
            carrier: None,
        };
        report.nics = vec![nic.clone(), nic];
        assert_eq!(
            check_limits(&report, &limits).unwrap_err(),
            "report has 2 entries in nics, more than the limit of 1"
        );
    }

    #[test]
    fn site_rates_are_token_buckets_per_site() {
        let limits = Limits {
            site_reports_per_second: 10.0,
            site_report_burst: 3,
            ..Limits::default()
        };
        let rates = SiteRates::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rates.check("dc1", t0, &limits), Ok(()));
        }
        let wait = rates.check("dc1", t0, &limits).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(
            rate_limited(wait).message,
            "rate limited, retry after 100 ms"
        );
        // Another site has its own bucket.
        assert_eq!(rates.check("dc2", t0, &limits), Ok(()));
        // One token back after 100 ms, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(rates.check("dc1", t1, &limits), Ok(()));
        assert!(rates.check("dc1", t1, &limits).is_err());
        // Refilled up to the burst, no further.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(rates.check("dc1", t2, &limits), Ok(()));
        }
        assert!(rates.check("dc1", t2, &limits).is_err());
        // A flood of site names keeps the table bounded.
        for i in 0..=MAX_TRACKED_SITES {
            let _ = rates.check(&format!("s{i}"), t2, &limits);
        }
        let tracked = rates.buckets.lock().unwrap().len();
        assert!(tracked <= MAX_TRACKED_SITES, "{tracked}");
    }

    #[test]
    fn requests_are_checked_against_subject_and_sites() {
        let mut config = Config {
            sites: vec![SiteId::new("dc1").unwrap()],
            ..Config::default()
        };
        let ok = request("dc1", HardwareReport::default());
        assert!(check_request("substruct.v1.dc1.discover", &ok, &config).is_ok());
        let e = check_request("substruct.v1.dc2.discover", &ok, &config).unwrap_err();
        assert_eq!(e.code, ErrorCode::WrongSite);
        let other = request("dc2", HardwareReport::default());
        let e = check_request("substruct.v1.dc2.discover", &other, &config).unwrap_err();
        assert_eq!(e.code, ErrorCode::WrongSite);
        assert!(e.message.contains("known: dc1"), "{}", e.message);
        config.sites.clear();
        assert!(check_request("substruct.v1.dc2.discover", &other, &config).is_ok());
        let e = check_request("substruct.v1.dc1.discover", b"SBST", &config).unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("shorter than"), "{}", e.message);
    }
}
