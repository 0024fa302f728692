//! The boot intents a machine's record asks for, written for every MAC of the machine
//! at its site: [`desired_intent`] decides (pure), [`Provisioner::sync`] writes.

use std::collections::HashMap;

use substruct_wire::intent::{BootIntent, BootIntentRecord, LocalBootWay};
use substruct_wire::{MachineId, SiteId};

use super::{ProvisionError, Provisioner};
use crate::lifecycle::State;
use crate::profile::Profile;
use crate::record::{MachineRecord, TicketPurpose};
use crate::sites::LocalBoot;
use crate::store::{digest, StoreError};

/// Pure: the boot intent a machine's record asks for, or `None` for "no intent"
/// (the edge then treats it as unknown and boots the prospector).
pub fn desired_intent(
    record: &MachineRecord,
    profile: Option<&Profile>,
    local: LocalBoot,
) -> Option<BootIntent> {
    match &record.state {
        State::Discovered => record.pending_wipe.map(|_| BootIntent::Discover),
        State::Assigned { .. } | State::Installing { .. } => {
            match (profile, &record.ticket) {
                (Some(p), Some(t)) if t.purpose == TicketPurpose::Install => {
                    Some(p.boot_intent(&t.token))
                }
                // The profile vanished or no ticket: the prospector reports and the
                // controller decides again.
                _ => Some(BootIntent::Discover),
            }
        }
        State::Deployed { .. } => Some(BootIntent::Local { way: local.way() }),
        State::Failed { .. } => None,
        State::Retired => Some(BootIntent::Local {
            way: LocalBootWay::NoBootFile,
        }),
    }
}

impl Provisioner {
    /// Writes what the machine's latest record asks for: first what its changes still
    /// owe (the outbox, if a crash or a failed write left any), then the boot intents
    /// for every MAC of the machine at its site. Idempotent.
    pub async fn sync(&self, record: &MachineRecord) -> Result<(), ProvisionError> {
        // Always from the latest record: a caller's copy may be older than a change
        // another request (or controller) made meanwhile.
        let Some((fresh, revision)) = self.store.machine(&record.id).await? else {
            return Ok(());
        };
        if !fresh.owed.is_empty() {
            tracing::info!(machine = %fresh.id, changes = fresh.owed.len(), "finishing what earlier changes owe");
            return self.flush(&fresh, revision, None).await;
        }
        self.write_intents(&fresh).await
    }

    /// Writes the boot intents `record` asks for, for every MAC of the machine at its
    /// site.
    pub(super) async fn write_intents(&self, record: &MachineRecord) -> Result<(), ProvisionError> {
        let profile = match record.state.profile() {
            Some(name) => self.profile(name).await.ok(),
            None => None,
        };
        let local = self.local_boot(&record.site).await?;
        let intent = desired_intent(record, profile.as_ref(), local);
        let value = intent.map(|intent| BootIntentRecord {
            machine_id: Some(record.id.clone()),
            intent,
        });
        for mac in record.facts.macs() {
            self.store
                .set_boot_intent(&record.site, &mac, value.as_ref())
                .await?;
        }
        Ok(())
    }

    /// Writes the boot intents machine `id`'s latest record asks for (nothing when it
    /// is gone).
    pub async fn sync_id(&self, id: &MachineId) -> Result<(), ProvisionError> {
        let Some((record, _)) = self.store.machine(id).await? else {
            return Ok(());
        };
        self.sync(&record).await
    }

    /// The start-up sweep: repairs a sync a crash interrupted, without rewriting what is
    /// already right. Compares what each machine's row asks for with a digest of KV
    /// `boot` (one watch, not a read per key) and syncs only the machines that differ,
    /// from their latest record; machines mid-install (their intent names a token the
    /// row does not hold) are synced from their record always. Waits for the machine
    /// list to be loaded.
    pub async fn sync_all(&self) -> Result<SyncSweep, ProvisionError> {
        /// Rows copied out of the machine list at a time.
        const CHUNK: usize = 1024;
        let present = self.store.boot_intent_digests().await?;
        let mut local: HashMap<String, LocalBoot> = HashMap::new();
        let mut sweep = SyncSweep::default();
        let mut chunk = crate::fleet::Query {
            limit: CHUNK,
            ..crate::fleet::Query::default()
        };
        loop {
            let rows = self.fleet.select(&chunk);
            let Some(last) = rows.last() else {
                return Ok(sweep);
            };
            chunk.cursor = Some(last.id.clone());
            self.sweep_rows(rows, &present, &mut local, &mut sweep)
                .await?;
        }
    }

    /// [`Self::sync_all`] over one chunk of rows.
    async fn sweep_rows(
        &self,
        rows: Vec<crate::fleet::RowRef>,
        present: &HashMap<u64, u64>,
        local: &mut HashMap<String, LocalBoot>,
        sweep: &mut SyncSweep,
    ) -> Result<(), ProvisionError> {
        for row in rows {
            sweep.checked += 1;
            let Ok(id) = MachineId::new(row.id.as_str()) else {
                continue;
            };
            // A change a crash (or a failed write) left unfinished.
            if row.owed {
                self.sync_id(&id).await?;
                sweep.synced += 1;
                continue;
            }
            // As every sync since the first wave: a machine waiting for a profile is
            // left alone (its MACs may be another machine's too, flagged as a conflict).
            if row.state == "discovered" && !row.pending_wipe {
                continue;
            }
            let Ok(site) = SiteId::new(row.site.as_str()) else {
                continue;
            };
            let way = match local.get(&row.site) {
                Some(l) => *l,
                None => {
                    let l = self.local_boot(&site).await?;
                    local.insert(row.site.clone(), l);
                    l
                }
            };
            let right = match row_intent(row.state, row.pending_wipe, way) {
                // The row cannot tell (install token): from the record.
                None => false,
                Some(intent) => {
                    let value = intent.map(|intent| BootIntentRecord {
                        machine_id: Some(id.clone()),
                        intent,
                    });
                    let want = match &value {
                        Some(v) => Some(
                            substruct_wire::encode(v)
                                .map(|bytes| digest(&bytes))
                                .map_err(|e| StoreError::EncodeValue {
                                    bucket: substruct_wire::subjects::KV_BOOT,
                                    key: id.to_string(),
                                    source: e.into(),
                                })?,
                        ),
                        None => None,
                    };
                    row.macs.iter().all(|mac| {
                        let key = substruct_wire::subjects::boot_key(&site, mac);
                        present.get(&digest(key.as_bytes())).copied() == want
                    })
                }
            };
            if !right {
                self.sync_id(&id).await?;
                sweep.synced += 1;
            }
        }
        Ok(())
    }
}

/// What the start-up sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncSweep {
    /// Machines looked at.
    pub checked: usize,
    /// Machines whose intents were (re)written.
    pub synced: usize,
}

/// Pure: the boot intent a machine in `state` asks for when the state alone decides
/// (`Some(None)`: no intent), or `None` when it takes the record (an install's token).
fn row_intent(state: &str, pending_wipe: bool, local: LocalBoot) -> Option<Option<BootIntent>> {
    Some(match state {
        "discovered" => pending_wipe.then_some(BootIntent::Discover),
        "deployed" => Some(BootIntent::Local { way: local.way() }),
        "failed" => None,
        "retired" => Some(BootIntent::Local {
            way: LocalBootWay::NoBootFile,
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use substruct_wire::report::HardwareReport;
    use substruct_wire::{MachineId, SiteId};

    /// The row's shortcut and the record's decision agree wherever the row decides.
    #[test]
    fn row_intent_agrees_with_desired_intent() {
        let mut record = MachineRecord::new(
            MachineId::new("m").unwrap(),
            SiteId::new("s").unwrap(),
            HardwareReport::default(),
            vec![],
            1,
        );
        let states = [
            State::Discovered,
            State::Deployed {
                profile: "p".into(),
            },
            State::Failed {
                reason: "x".into(),
                profile: None,
            },
            State::Retired,
            State::Assigned {
                profile: "p".into(),
            },
        ];
        for state in states {
            for wipe in [None, Some(substruct_wire::messages::WipeMode::Quick)] {
                for local in [LocalBoot::IpxeExit, LocalBoot::NoBootFile] {
                    record.state = state.clone();
                    record.pending_wipe = wipe;
                    let by_row = row_intent(state.name(), wipe.is_some(), local);
                    match by_row {
                        Some(intent) => {
                            assert_eq!(intent, desired_intent(&record, None, local), "{state}")
                        }
                        None => assert!(matches!(state, State::Assigned { .. })),
                    }
                }
            }
        }
    }
}
