//! The boot intents a machine's record asks for, written for every MAC of the machine
//! at its site: [`desired_intent`] decides (pure), [`Provisioner::sync`] writes.

use substruct_wire::intent::{BootIntent, BootIntentRecord, LocalBootWay};

use super::{ProvisionError, Provisioner};
use crate::lifecycle::State;
use crate::profile::Profile;
use crate::record::{MachineRecord, TicketPurpose};
use crate::sites::LocalBoot;

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
    /// Writes the boot intents the record asks for, for every MAC of the machine at
    /// its site. Idempotent.
    pub async fn sync(&self, record: &MachineRecord) -> Result<(), ProvisionError> {
        // Always from the latest record: a caller's copy may be older than a change
        // another request (or controller) made meanwhile.
        let Some((fresh, _)) = self.store.machine(&record.id).await? else {
            return Ok(());
        };
        let record = &fresh;
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

    /// Syncs every machine (start-up sweep: repairs a sync a crash interrupted).
    pub async fn sync_all(&self) -> Result<usize, ProvisionError> {
        let machines = self.store.list_machines().await?;
        let mut n = 0;
        for m in machines
            .iter()
            .filter(|m| !matches!(m.state, State::Discovered) || m.pending_wipe.is_some())
        {
            self.sync(m).await?;
            n += 1;
        }
        Ok(n)
    }
}
