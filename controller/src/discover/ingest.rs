//! Finding or creating the machine a report describes: matching, the boot
//! credential check, compare-and-set writes of the record and its index claims.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::future::try_join_all;
use substruct_wire::messages::ErrorCode;
use substruct_wire::report::HardwareReport;
use substruct_wire::{subjects, BootCredential, MachineId, SiteId};

use crate::matching::{identity_facts, may_speak_for, proof, resolve, Action, Fact, Proof};
use crate::record::{Conflict, MachineEvent, MachineEventKind, MachineRecord};
use crate::sites::SiteRecord;
use crate::store::{Docs, IndexEntry, Store, StoreError, Write};

/// How often a report is re-resolved after losing a compare-and-set race.
const MAX_ATTEMPTS: usize = 16;

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
                    let mut record = MachineRecord::new(
                        id.clone(),
                        site.clone(),
                        report.clone(),
                        vec![],
                        now_unix_ms,
                    );
                    // A verified credential names the inbox its commands go to (nats-auth).
                    if credential.is_some() {
                        let proof = self.proof(site, credential, &report, now_unix_ms).await?;
                        record.boot_user_key = proof.boot_key().map(str::to_owned);
                    }
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
                    let mut new = old.updated(
                        site.clone(),
                        report.clone(),
                        resolution.conflicts.clone(),
                        now_unix_ms,
                    );
                    // This boot's commands go to its credential's inbox (nats-auth).
                    new.boot_user_key = proof.boot_key().map(str::to_owned);
                    proven = Some(proof);
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
                    let mut new = MachineRecord::new(
                        id.clone(),
                        site.clone(),
                        report.clone(),
                        resolution.conflicts.clone(),
                        now_unix_ms,
                    );
                    // A new machine needs no proof, but a verified credential names the
                    // inbox its commands go to (nats-auth).
                    if credential.is_some() {
                        let proof = match proven.take() {
                            Some(p) => p,
                            None => self.proof(site, credential, report, now_unix_ms).await?,
                        };
                        new.boot_user_key = proof.boot_key().map(str::to_owned);
                        proven = Some(proof);
                    }
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
