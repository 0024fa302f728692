//! The operator's actions on a machine (`substruct machines assign|release|reinstall|retire`).

use substruct_wire::messages::WipeMode;

use super::{Change, ProvisionError, Provisioner};
use crate::lifecycle::Event;
use crate::profile::Profile;
use crate::record::MachineRecord;

impl Provisioner {
    /// Ties `profile` to the machine `reference` names (`substruct machines assign`).
    pub async fn assign(
        &self,
        reference: &str,
        profile_name: &str,
        by: &str,
    ) -> Result<MachineRecord, ProvisionError> {
        let (record, _) = self.find(reference).await?;
        let profile = self.profile(profile_name).await?;
        self.check_images(&profile).await?;
        let record = self
            .change(
                &record.id,
                Change::new(
                    Event::Assign {
                        profile: profile.name.clone(),
                    },
                    by,
                ),
                true,
            )
            .await?;
        self.nudge(&record, &profile).await;
        Ok(record)
    }

    /// `machines release [--wipe MODE]`: back to `discovered`.
    pub async fn release(
        &self,
        reference: &str,
        wipe: Option<WipeMode>,
        by: &str,
    ) -> Result<MachineRecord, ProvisionError> {
        let (record, _) = self.find(reference).await?;
        self.change_with(
            &record.id,
            Change::new(Event::Release, by),
            false,
            None,
            |r| r.pending_wipe = wipe,
        )
        .await
    }

    /// `machines reinstall`: the same profile again, with a new token.
    pub async fn reinstall(
        &self,
        reference: &str,
        by: &str,
    ) -> Result<MachineRecord, ProvisionError> {
        let (record, _) = self.find(reference).await?;
        let record = self
            .change(&record.id, Change::new(Event::Reinstall, by), true)
            .await?;
        if let Some(name) = record.state.profile() {
            if let Ok(profile) = self.profile(name).await {
                self.nudge(&record, &profile).await;
            }
        }
        Ok(record)
    }

    /// `machines retire`.
    pub async fn retire(&self, reference: &str, by: &str) -> Result<MachineRecord, ProvisionError> {
        let (record, _) = self.find(reference).await?;
        self.change(&record.id, Change::new(Event::Retire, by), false)
            .await
    }

    pub(super) async fn check_images(&self, profile: &Profile) -> Result<(), ProvisionError> {
        for name in [&profile.kernel, &profile.initrd, &profile.image]
            .into_iter()
            .flatten()
        {
            if self.image(name).await?.is_none() {
                return Err(ProvisionError::UnknownImage {
                    profile: profile.name.clone(),
                    image: name.clone(),
                });
            }
        }
        Ok(())
    }
}
