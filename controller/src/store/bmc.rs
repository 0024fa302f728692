//! BMC settings (KV `bmc`, `{site}.{machine}` → envelope-encoded
//! [`BmcSettings`]): written by the controller, read by that site's edge only (the
//! site's NATS user may read its own keys, deploy/nats/gen-site). Plain puts: the
//! operator's last `bmc set` is the intent.

use substruct_wire::power_msg::BmcSettings;
use substruct_wire::{subjects, MachineId, SiteId};

use super::{delete, get, write_err, Store, StoreError};

impl Store {
    /// The BMC settings of `machine` stored under `site`, if any.
    pub async fn bmc_settings(
        &self,
        site: &SiteId,
        machine: &MachineId,
    ) -> Result<Option<BmcSettings>, StoreError> {
        let key = subjects::bmc_key(site, machine);
        let Some((value, _)) = get(&self.bmc, subjects::KV_BMC, &key).await? else {
            return Ok(None);
        };
        substruct_wire::decode(&value)
            .map(Some)
            .map_err(|e| StoreError::Read {
                bucket: subjects::KV_BMC,
                key,
                source: e.into(),
            })
    }

    /// Writes a machine's BMC settings under `site`.
    pub async fn set_bmc_settings(
        &self,
        site: &SiteId,
        settings: &BmcSettings,
    ) -> Result<(), StoreError> {
        let key = subjects::bmc_key(site, &settings.machine_id);
        let bytes = substruct_wire::encode(settings).map_err(|e| StoreError::EncodeValue {
            bucket: subjects::KV_BMC,
            key: key.clone(),
            source: e.into(),
        })?;
        self.bmc
            .put(&key, bytes.into())
            .await
            .map_err(|e| write_err(subjects::KV_BMC, key, e))?;
        Ok(())
    }

    /// Deletes a machine's BMC settings under `site`; true when they existed.
    pub async fn delete_bmc_settings(
        &self,
        site: &SiteId,
        machine: &MachineId,
    ) -> Result<bool, StoreError> {
        delete(
            &self.bmc,
            subjects::KV_BMC,
            &subjects::bmc_key(site, machine),
        )
        .await
    }
}
