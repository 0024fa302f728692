//! The outbox: what a lifecycle change owes beyond its record — its event in `EVENTS`,
//! the tokens it retired (index keys, install files at the edge), the install files of
//! the ticket it issued, and the boot intents — is written into the record by the
//! change's own compare-and-set ([`MachineRecord::owed`]), done right after, and then
//! removed from the record. A controller that dies (or a store write that fails) in
//! between leaves the entries in the record, and the next sync of that machine (its
//! next report or callback, an admin action, the sweep at start-up) finishes them.
//!
//! Every step is idempotent. The event is published once: with the change's own
//! `Nats-Msg-Id` (the stream drops a repeat within its duplicate window), and a late
//! flush first looks for it in the machine's recent events.

use substruct_wire::intent::InstallFilesRecord;
use substruct_wire::MachineId;

use super::{token_key, ProvisionError, Provisioner, MAX_ATTEMPTS};
use crate::record::{MachineEvent, MachineEventKind, MachineRecord, Owed, OwedFiles, Withdrawn};
use crate::store::Write;

/// Most changes a record may owe at once: past it the store is failing every flush,
/// and further changes are refused until one gets through.
pub const MAX_OWED: usize = 32;

/// Adds to `new`'s outbox what the change from `old` (made on `old`'s revision `base`)
/// owes: `event`, the withdrawal of the tickets `new` no longer holds, and `files` for
/// `new`'s ticket.
pub(super) fn owe(
    old: &MachineRecord,
    new: &mut MachineRecord,
    base: u64,
    event: MachineEventKind,
    files: Option<InstallFilesRecord>,
) -> Result<(), ProvisionError> {
    if new.owed.len() >= MAX_OWED {
        return Err(ProvisionError::Backlog {
            machine: new.id.clone(),
            owed: new.owed.len(),
        });
    }
    let kept = new.finished.as_ref().map(|f| &f.token);
    let mut withdraw = Vec::new();
    if let Some(t) = &old.ticket {
        if new.ticket.as_ref() != Some(t) {
            withdraw.push(Withdrawn {
                token: t.token.clone(),
                site: t.site.clone(),
                keep_index: kept == Some(&t.token),
            });
        }
    }
    if let Some(f) = &old.finished {
        if kept != Some(&f.token) {
            withdraw.push(Withdrawn {
                token: f.token.clone(),
                site: f.site.clone(),
                keep_index: false,
            });
        }
    }
    let files = match (files, &new.ticket) {
        (Some(files), Some(t)) => Some(OwedFiles {
            site: t.site.clone(),
            files,
        }),
        _ => None,
    };
    new.owed.push(Owed {
        change: base,
        at_unix_ms: crate::now_unix_ms(),
        event,
        withdraw,
        files,
    });
    Ok(())
}

impl Provisioner {
    /// Does what `record` (read at `revision`) owes, oldest change first, then
    /// removes those entries from the record. `just_made` names the change this
    /// controller wrote a moment ago: its event is published without looking for it
    /// first (the stream's duplicate window covers a concurrent late flush).
    pub(super) async fn flush(
        &self,
        record: &MachineRecord,
        revision: u64,
        just_made: Option<u64>,
    ) -> Result<(), ProvisionError> {
        let owed = &record.owed;
        for (i, entry) in owed.iter().enumerate() {
            // Expired tokens first: if anything below fails, none keeps working.
            for w in &entry.withdraw {
                if !w.keep_index {
                    self.store.index_delete(&token_key(&w.token)).await?;
                }
                self.store
                    .set_install_files(&w.site, &w.token, None)
                    .await?;
            }
            if let Some(files) = &entry.files {
                let retired_later = owed[i + 1..]
                    .iter()
                    .any(|later| later.withdraw.iter().any(|w| w.token == files.files.token));
                if !retired_later {
                    self.publish_files(&record.id, files).await?;
                }
            }
        }
        if let Some((fresh, _)) = self.store.machine(&record.id).await? {
            self.write_intents(&fresh).await?;
        }
        for entry in owed {
            let event = MachineEvent {
                machine_id: record.id.clone(),
                at_unix_ms: entry.at_unix_ms,
                revision,
                kind: entry.event.clone(),
            };
            if just_made != Some(entry.change) && self.store.has_event(&event).await? {
                continue;
            }
            let msg_id = format!("{}-change-{}", record.id, entry.change);
            self.store.publish_event_as(&event, &msg_id).await?;
        }
        let done: Vec<u64> = owed.iter().map(|o| o.change).collect();
        self.clear_owed(&record.id, &done).await
    }

    /// Publishes a ticket's install files, then checks the ticket is still the
    /// record's: a later change flushed meanwhile (by another controller) may have
    /// withdrawn them already, and they must not outlive it.
    async fn publish_files(&self, id: &MachineId, owed: &OwedFiles) -> Result<(), ProvisionError> {
        let token = &owed.files.token;
        self.store
            .set_install_files(&owed.site, token, Some(&owed.files))
            .await?;
        let current = self.store.machine(id).await?.and_then(|(r, _)| r.ticket);
        if current.as_ref().map(|t| &t.token) != Some(token) {
            self.store
                .set_install_files(&owed.site, token, None)
                .await?;
        }
        Ok(())
    }

    /// Removes the entries of changes `done` from the record's outbox (entries added
    /// meanwhile stay).
    async fn clear_owed(&self, id: &MachineId, done: &[u64]) -> Result<(), ProvisionError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((mut record, revision)) = self.store.machine(id).await? else {
                return Ok(());
            };
            let before = record.owed.len();
            record.owed.retain(|o| !done.contains(&o.change));
            if record.owed.len() == before {
                return Ok(());
            }
            match self.store.update_machine(&record, revision).await? {
                Write::Done(_) => return Ok(()),
                Write::Lost => continue,
            }
        }
        Err(ProvisionError::Contention(id.clone()))
    }
}
