//! What the edges read: boot intents (KV `boot`), install files (KV `install`), both
//! envelope-encoded, and image content (object store `images`).
//!
//! Boot intents and install files are plain puts, not compare-and-set: each is derived
//! from the machine record (itself written by compare-and-set) and rewritten whole by
//! every sync, so the last writer always writes what the latest record asks for.

use async_nats::jetstream::kv;
use substruct_wire::intent::{BootIntentRecord, InstallFilesRecord};
use substruct_wire::{subjects, BootToken, Mac, Sha256Digest, SiteId, WireMessage};

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use futures::StreamExt;

use super::{delete, get, write_err, BoxError, Store, StoreError};

/// A 64-bit digest of bytes (not cryptographic: it compares values the controller wrote).
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl Store {
    /// Writes (or with `None`, deletes) the boot intent of one MAC at one site.
    pub async fn set_boot_intent(
        &self,
        site: &SiteId,
        mac: &Mac,
        record: Option<&BootIntentRecord>,
    ) -> Result<(), StoreError> {
        let key = subjects::boot_key(site, mac);
        self.fault("boot_intent", false)?;
        put_or_delete(&self.boot, subjects::KV_BOOT, key, record).await?;
        self.fault("boot_intent", true)
    }

    /// The boot intent of one MAC at one site, if any (tests, `machines show`).
    pub async fn boot_intent(
        &self,
        site: &SiteId,
        mac: &Mac,
    ) -> Result<Option<BootIntentRecord>, StoreError> {
        let key = subjects::boot_key(site, mac);
        let Some((value, _)) = get(&self.boot, subjects::KV_BOOT, &key).await? else {
            return Ok(None);
        };
        Ok(substruct_wire::decode(&value).ok())
    }

    /// A digest of every boot intent now in KV `boot`: hash of key → hash of value
    /// (16 bytes an intent, whatever the values weigh). Read through one watch, not a
    /// get per key: what the start-up sync compares against.
    pub async fn boot_intent_digests(&self) -> Result<HashMap<u64, u64>, StoreError> {
        let bucket = subjects::KV_BOOT;
        let err = |e: BoxError| StoreError::List { bucket, source: e };
        let mut out = HashMap::new();
        let Some(mut snapshot) = super::snapshot(&self.boot, bucket).await? else {
            return Ok(out);
        };
        let prefix = format!("$KV.{bucket}.");
        while let Some(message) = snapshot.next().await {
            let message = message.map_err(|e| err(e.into()))?;
            let pending = message
                .info()
                .map_err(|e| err(e.to_string().into()))?
                .pending;
            let key = message
                .subject
                .as_str()
                .strip_prefix(prefix.as_str())
                .unwrap_or_default();
            if super::is_put(&message) {
                out.insert(digest(key.as_bytes()), digest(&message.payload));
            } else {
                out.remove(&digest(key.as_bytes()));
            }
            if pending == 0 {
                return Ok(out);
            }
        }
        Err(err("the snapshot ended early".into()))
    }

    /// Publishes (or with `None`, withdraws) the install files behind a token.
    pub async fn set_install_files(
        &self,
        site: &SiteId,
        token: &BootToken,
        files: Option<&InstallFilesRecord>,
    ) -> Result<(), StoreError> {
        let key = subjects::install_key(site, token);
        self.fault("install_files", false)?;
        put_or_delete(&self.install, subjects::KV_INSTALL, key, files).await?;
        self.fault("install_files", true)
    }

    /// Stores image content under its sha256 (object store `images`), reading `data`
    /// to the end. Returns the bytes stored. The caller checks the hash.
    pub async fn put_image_content(
        &self,
        sha256: &Sha256Digest,
        data: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Result<u64, StoreError> {
        let info = self
            .objects
            .0
            .put(sha256.as_str(), data)
            .await
            .map_err(|e| write_err(subjects::OBJ_IMAGES, sha256.to_string(), e))?;
        Ok(info.size as u64)
    }

    /// The size of stored image content, if the object exists.
    pub async fn image_content_size(
        &self,
        sha256: &Sha256Digest,
    ) -> Result<Option<u64>, StoreError> {
        match self.objects.0.info(sha256.as_str()).await {
            Ok(info) if !info.deleted => Ok(Some(info.size as u64)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(StoreError::Read {
                bucket: subjects::OBJ_IMAGES,
                key: sha256.to_string(),
                source: e.into(),
            }),
        }
    }

    /// Deletes stored image content (an upload whose hash did not match).
    pub async fn delete_image_content(&self, sha256: &Sha256Digest) -> Result<(), StoreError> {
        self.objects
            .0
            .delete(sha256.as_str())
            .await
            .map_err(|e| write_err(subjects::OBJ_IMAGES, sha256.to_string(), e))
    }
}

/// Writes `value` envelope-encoded under `key`, or with `None` deletes the key (if it
/// exists).
async fn put_or_delete<M: WireMessage>(
    kv: &kv::Store,
    bucket: &'static str,
    key: String,
    value: Option<&M>,
) -> Result<(), StoreError> {
    let Some(value) = value else {
        delete(kv, bucket, &key).await?;
        return Ok(());
    };
    let bytes = substruct_wire::encode(value).map_err(|e| StoreError::EncodeValue {
        bucket,
        key: key.clone(),
        source: e.into(),
    })?;
    kv.put(&key, bytes.into())
        .await
        .map_err(|e| write_err(bucket, key, e))?;
    Ok(())
}
