//! The only code in the controller that knows JetStream.
//!
//! * KV `machines`: machine id → [`MachineRecord`] as JSON (readable with
//!   `nats kv get machines ID`);
//! * KV `machine_index`: identity fact key (see [`crate::matching::Fact::index_key`])
//!   → machine id as plain text;
//! * stream `EVENTS`: [`MachineEvent`]s as JSON on `substruct.v1.events.{id}`.
//!
//! * KV `profiles`, `rules`, `images`, `sites`, `site_status`: JSON documents by name;
//! * KV `boot` (`{site}.{mac}` → boot intent) and `install` (`{site}.{sha256(token)[..32]}` → the
//!   rendered install files), envelope-encoded for the edges.
//!
//! Every write is a compare-and-set on the key's revision: `create` for a new key,
//! `update(key, value, revision)` for an existing one. A lost race is reported as
//! [`Write::Lost`], never as an error, so callers re-read and retry.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use substruct_runtime::jetstream::{
    ensure_kv, ensure_object_store, ensure_stream, BucketSpec, SetupError,
};
use substruct_wire::intent::{BootIntentRecord, InstallFilesRecord};
use substruct_wire::{subjects, BootToken, Mac, MachineId, SiteId};

use crate::record::{MachineEvent, MachineRecord};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("setting up JetStream")]
    Setup(#[source] SetupError),
    #[error("reading {bucket}/{key}")]
    Read {
        bucket: &'static str,
        key: String,
        #[source]
        source: BoxError,
    },
    #[error("writing {bucket}/{key}")]
    Write {
        bucket: &'static str,
        key: String,
        #[source]
        source: BoxError,
    },
    #[error("listing keys of {bucket}")]
    List {
        bucket: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("{bucket}/{key} holds a value that does not decode")]
    Decode {
        bucket: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding the record of machine {id}")]
    Encode {
        id: MachineId,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding {bucket}/{key}")]
    EncodeValue {
        bucket: &'static str,
        key: String,
        #[source]
        source: BoxError,
    },
    #[error("publishing an event on {subject}")]
    Publish {
        subject: String,
        #[source]
        source: BoxError,
    },
}

/// The outcome of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Written; the key's new revision.
    Done(u64),
    /// Someone else wrote first (the key exists, or its revision moved on).
    Lost,
}

/// One key of `machine_index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The machine the fact belongs to; `None` when the value is unusable.
    pub machine: Option<MachineId>,
    pub revision: u64,
}

/// The controller's durable state, shareable across tasks (cheap to clone).
#[derive(Debug, Clone)]
pub struct Store {
    js: jetstream::Context,
    machines: kv::Store,
    index: kv::Store,
    profiles: kv::Store,
    rules: kv::Store,
    images: kv::Store,
    sites: kv::Store,
    site_status: kv::Store,
    boot: kv::Store,
    install: kv::Store,
    objects: Objects,
}

/// The object store (its type has no `Debug`).
#[derive(Clone)]
struct Objects(async_nats::jetstream::object_store::ObjectStore);

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectStore(images)")
    }
}

/// KV bucket: site name → the latest heartbeat of its edge (controller only).
pub const KV_SITE_STATUS: &str = "site_status";

/// The JSON document buckets, for [`Store::doc_get`] and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Docs {
    Profiles,
    Rules,
    Images,
    Sites,
    SiteStatus,
}

impl Docs {
    fn bucket(self) -> &'static str {
        match self {
            Self::Profiles => subjects::KV_PROFILES,
            Self::Rules => subjects::KV_RULES,
            Self::Images => subjects::KV_IMAGES,
            Self::Sites => subjects::KV_SITES,
            Self::SiteStatus => KV_SITE_STATUS,
        }
    }
}

impl Store {
    /// Creates (if missing) and opens the buckets and the `EVENTS` stream.
    pub async fn open(client: async_nats::Client) -> Result<Self, StoreError> {
        let js = jetstream::new(client);
        let machines = ensure_kv(&js, &BucketSpec::new(subjects::KV_MACHINES))
            .await
            .map_err(StoreError::Setup)?;
        let index = ensure_kv(&js, &BucketSpec::new(subjects::KV_MACHINE_INDEX))
            .await
            .map_err(StoreError::Setup)?;
        let open = |name: &'static str| {
            let js = js.clone();
            async move {
                ensure_kv(&js, &BucketSpec::new(name))
                    .await
                    .map_err(StoreError::Setup)
            }
        };
        let profiles = open(subjects::KV_PROFILES).await?;
        let rules = open(subjects::KV_RULES).await?;
        let images = open(subjects::KV_IMAGES).await?;
        let sites = open(subjects::KV_SITES).await?;
        let site_status = open(KV_SITE_STATUS).await?;
        let boot = open(subjects::KV_BOOT).await?;
        let install = open(subjects::KV_INSTALL).await?;
        let objects = ensure_object_store(&js, subjects::OBJ_IMAGES)
            .await
            .map_err(StoreError::Setup)?;
        ensure_stream(
            &js,
            subjects::STREAM_EVENTS,
            vec![subjects::machine_events_all()],
        )
        .await
        .map_err(StoreError::Setup)?;
        Ok(Self {
            profiles,
            rules,
            images,
            sites,
            site_status,
            boot,
            install,
            objects: Objects(objects),
            js,
            machines,
            index,
        })
    }

    fn docs(&self, docs: Docs) -> &kv::Store {
        match docs {
            Docs::Profiles => &self.profiles,
            Docs::Rules => &self.rules,
            Docs::Images => &self.images,
            Docs::Sites => &self.sites,
            Docs::SiteStatus => &self.site_status,
        }
    }

    /// One JSON document and its revision.
    pub async fn doc_get<T: DeserializeOwned>(
        &self,
        docs: Docs,
        key: &str,
    ) -> Result<Option<(T, u64)>, StoreError> {
        let bucket = docs.bucket();
        let Some((value, revision)) = get(self.docs(docs), bucket, key).await? else {
            return Ok(None);
        };
        let doc = serde_json::from_slice(&value).map_err(|source| StoreError::Decode {
            bucket,
            key: key.to_owned(),
            source,
        })?;
        Ok(Some((doc, revision)))
    }

    /// Writes a JSON document: `expected` `None` = unconditional, `Some(0)` = only if
    /// new, `Some(rev)` = only if still at `rev`.
    pub async fn doc_put<T: Serialize>(
        &self,
        docs: Docs,
        key: &str,
        doc: &T,
        expected: Option<u64>,
    ) -> Result<Write, StoreError> {
        let bucket = docs.bucket();
        let value = serde_json::to_vec(doc).map_err(|e| StoreError::EncodeValue {
            bucket,
            key: key.to_owned(),
            source: e.into(),
        })?;
        let kv = self.docs(docs);
        match expected {
            None => kv
                .put(key, value.into())
                .await
                .map(Write::Done)
                .map_err(|e| write_err(bucket, key.to_owned(), e)),
            Some(0) => match kv.create(key, value.into()).await {
                Ok(rev) => Ok(Write::Done(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Write::Lost),
                Err(e) => Err(write_err(bucket, key.to_owned(), e)),
            },
            Some(rev) => update(kv, bucket, key.to_owned(), value.into(), rev).await,
        }
    }

    /// Deletes a document; true when it existed.
    pub async fn doc_delete(&self, docs: Docs, key: &str) -> Result<bool, StoreError> {
        let bucket = docs.bucket();
        let kv = self.docs(docs);
        if get(kv, bucket, key).await?.is_none() {
            return Ok(false);
        }
        kv.delete(key)
            .await
            .map_err(|e| write_err(bucket, key.to_owned(), e))?;
        Ok(true)
    }

    /// Every document of a bucket, sorted by key; values that do not decode are
    /// logged and skipped.
    pub async fn doc_list<T: DeserializeOwned>(
        &self,
        docs: Docs,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let bucket = docs.bucket();
        let mut keys = self.keys(self.docs(docs), bucket).await?;
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match self.doc_get::<T>(docs, &key).await {
                Ok(Some((doc, _))) => out.push((key, doc)),
                Ok(None) => {}
                Err(e @ StoreError::Decode { .. }) => {
                    tracing::warn!(error = %substruct_runtime::error_chain(&e), "skipping a document");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Writes (or with `None`, deletes) the boot intent of one MAC at one site.
    pub async fn set_boot_intent(
        &self,
        site: &SiteId,
        mac: &Mac,
        record: Option<&BootIntentRecord>,
    ) -> Result<(), StoreError> {
        let key = subjects::boot_key(site, mac);
        match record {
            Some(record) => {
                let value =
                    substruct_wire::encode(record).map_err(|e| StoreError::EncodeValue {
                        bucket: subjects::KV_BOOT,
                        key: key.clone(),
                        source: e.into(),
                    })?;
                self.boot
                    .put(&key, value.into())
                    .await
                    .map_err(|e| write_err(subjects::KV_BOOT, key, e))?;
            }
            None => {
                if get(&self.boot, subjects::KV_BOOT, &key).await?.is_some() {
                    self.boot
                        .delete(&key)
                        .await
                        .map_err(|e| write_err(subjects::KV_BOOT, key, e))?;
                }
            }
        }
        Ok(())
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

    /// Publishes (or with `None`, withdraws) the install files behind a token.
    pub async fn set_install_files(
        &self,
        site: &SiteId,
        token: &BootToken,
        files: Option<&InstallFilesRecord>,
    ) -> Result<(), StoreError> {
        let key = subjects::install_key(site, token);
        match files {
            Some(files) => {
                let value = substruct_wire::encode(files).map_err(|e| StoreError::EncodeValue {
                    bucket: subjects::KV_INSTALL,
                    key: key.clone(),
                    source: e.into(),
                })?;
                self.install
                    .put(&key, value.into())
                    .await
                    .map_err(|e| write_err(subjects::KV_INSTALL, key, e))?;
            }
            None => {
                if get(&self.install, subjects::KV_INSTALL, &key)
                    .await?
                    .is_some()
                {
                    self.install
                        .delete(&key)
                        .await
                        .map_err(|e| write_err(subjects::KV_INSTALL, key, e))?;
                }
            }
        }
        Ok(())
    }

    /// True when the `EVENTS` stream holds a `discovered` event for `id` (the first
    /// event of a machine, unless the controller that created it died before
    /// publishing it).
    pub async fn has_discovered_event(&self, id: &MachineId) -> Result<bool, StoreError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        let subject = subjects::machine_event(id);
        let read_err = |source: BoxError| StoreError::Read {
            bucket: subjects::STREAM_EVENTS,
            key: subject.clone(),
            source,
        };
        let stream = self
            .js
            .get_stream_no_info(subjects::STREAM_EVENTS)
            .await
            .map_err(|e| read_err(e.into()))?;
        let mut seq = 0;
        // A machine has a handful of events before its second report; look at them all.
        for _ in 0..64 {
            let msg = match stream.get_first_raw_message_by_subject(&subject, seq).await {
                Ok(m) => m,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(false),
                Err(e) => return Err(read_err(e.into())),
            };
            let event: MachineEvent =
                serde_json::from_slice(&msg.payload).map_err(|source| StoreError::Decode {
                    bucket: subjects::STREAM_EVENTS,
                    key: subject.clone(),
                    source,
                })?;
            if matches!(
                event.kind,
                crate::record::MachineEventKind::Discovered { .. }
            ) {
                return Ok(true);
            }
            seq = msg.sequence + 1;
        }
        Ok(false)
    }

    /// Stores image content under its sha256 (object store `images`), reading `data`
    /// to the end. Returns the bytes stored. The caller checks the hash.
    pub async fn put_image_content(
        &self,
        sha256: &str,
        data: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Result<u64, StoreError> {
        let info = self
            .objects
            .0
            .put(sha256, data)
            .await
            .map_err(|e| write_err(subjects::OBJ_IMAGES, sha256.to_owned(), e))?;
        Ok(info.size as u64)
    }

    /// The size of stored image content, if the object exists.
    pub async fn image_content_size(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        match self.objects.0.info(sha256).await {
            Ok(info) if !info.deleted => Ok(Some(info.size as u64)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(StoreError::Read {
                bucket: subjects::OBJ_IMAGES,
                key: sha256.to_owned(),
                source: e.into(),
            }),
        }
    }

    /// Deletes stored image content (an upload whose hash did not match).
    pub async fn delete_image_content(&self, sha256: &str) -> Result<(), StoreError> {
        self.objects
            .0
            .delete(sha256)
            .await
            .map_err(|e| write_err(subjects::OBJ_IMAGES, sha256.to_owned(), e))
    }

    /// Deletes an index key (a token that expired); true when it existed.
    pub async fn index_delete(&self, key: &str) -> Result<bool, StoreError> {
        if get(&self.index, subjects::KV_MACHINE_INDEX, key)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        self.index
            .delete(key)
            .await
            .map_err(|e| write_err(subjects::KV_MACHINE_INDEX, key.to_owned(), e))?;
        Ok(true)
    }

    /// A machine record and its revision.
    pub async fn machine(
        &self,
        id: &MachineId,
    ) -> Result<Option<(MachineRecord, u64)>, StoreError> {
        let key = subjects::machine_key(id);
        let Some((value, revision)) = get(&self.machines, subjects::KV_MACHINES, &key).await?
        else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&value).map_err(|source| StoreError::Decode {
            bucket: subjects::KV_MACHINES,
            key,
            source,
        })?;
        Ok(Some((record, revision)))
    }

    /// Stores a record for a machine id nobody used yet.
    pub async fn create_machine(&self, record: &MachineRecord) -> Result<Write, StoreError> {
        let key = subjects::machine_key(&record.id);
        let value = encode(record)?;
        match self.machines.create(&key, value).await {
            Ok(rev) => Ok(Write::Done(rev)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Write::Lost),
            Err(e) => Err(write_err(subjects::KV_MACHINES, key, e)),
        }
    }

    /// Replaces a record if it is still at `revision`.
    pub async fn update_machine(
        &self,
        record: &MachineRecord,
        revision: u64,
    ) -> Result<Write, StoreError> {
        let key = subjects::machine_key(&record.id);
        let value = encode(record)?;
        update(&self.machines, subjects::KV_MACHINES, key, value, revision).await
    }

    /// The machine an identity fact key points at, and the key's revision. A value
    /// that is not a machine id comes back as `machine: None` (it gets overwritten).
    pub async fn index_get(&self, key: &str) -> Result<Option<IndexEntry>, StoreError> {
        let Some((value, revision)) = get(&self.index, subjects::KV_MACHINE_INDEX, key).await?
        else {
            return Ok(None);
        };
        let machine = std::str::from_utf8(&value)
            .ok()
            .and_then(|s| MachineId::new(s).ok());
        if machine.is_none() {
            tracing::warn!(key, "machine_index value is not a machine id; ignoring it");
        }
        Ok(Some(IndexEntry { machine, revision }))
    }

    /// Points a new index key at `id`.
    pub async fn index_claim(&self, key: &str, id: &MachineId) -> Result<Write, StoreError> {
        let value = Bytes::copy_from_slice(id.as_str().as_bytes());
        match self.index.create(key, value).await {
            Ok(rev) => Ok(Write::Done(rev)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Write::Lost),
            Err(e) => Err(write_err(subjects::KV_MACHINE_INDEX, key.to_owned(), e)),
        }
    }

    /// Points an index key at `id` if the key never existed: one write, no read (a
    /// deleted key counts as existing). The fast path for machines never seen.
    pub async fn index_try_claim(&self, key: &str, id: &MachineId) -> Result<Write, StoreError> {
        let value = Bytes::copy_from_slice(id.as_str().as_bytes());
        update(
            &self.index,
            subjects::KV_MACHINE_INDEX,
            key.to_owned(),
            value,
            0,
        )
        .await
    }

    /// Points an existing index key at `id` if it is still at `revision`.
    pub async fn index_repoint(
        &self,
        key: &str,
        id: &MachineId,
        revision: u64,
    ) -> Result<Write, StoreError> {
        let value = Bytes::copy_from_slice(id.as_str().as_bytes());
        update(
            &self.index,
            subjects::KV_MACHINE_INDEX,
            key.to_owned(),
            value,
            revision,
        )
        .await
    }

    /// Every machine record, sorted by id.
    pub async fn list_machines(&self) -> Result<Vec<MachineRecord>, StoreError> {
        let keys = self.keys(&self.machines, subjects::KV_MACHINES).await?;
        let mut records: Vec<MachineRecord> = futures::stream::iter(keys)
            .map(|key| async move {
                let Ok(id) = MachineId::new(key.as_str()) else {
                    tracing::warn!(key, "machines bucket holds a key that is not a machine id");
                    return Ok(None);
                };
                Ok::<_, StoreError>(self.machine(&id).await?.map(|(r, _)| r))
            })
            .buffer_unordered(64)
            .try_filter_map(|r| async move { Ok(r) })
            .try_collect()
            .await?;
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// Number of keys in `machines` and in `machine_index`.
    pub async fn key_counts(&self) -> Result<(usize, usize), StoreError> {
        let machines = self.keys(&self.machines, subjects::KV_MACHINES).await?;
        let index = self.keys(&self.index, subjects::KV_MACHINE_INDEX).await?;
        Ok((machines.len(), index.len()))
    }

    /// Publishes an event to `EVENTS` and waits for the stream's ack. The
    /// `Nats-Msg-Id` header makes a retried publish a no-op.
    pub async fn publish_event(&self, event: &MachineEvent) -> Result<(), StoreError> {
        let subject = subjects::machine_event(&event.machine_id);
        let payload = serde_json::to_vec(event).map_err(|source| StoreError::Encode {
            id: event.machine_id.clone(),
            source,
        })?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.dedup_id().as_str());
        let publish_err = |source: BoxError| StoreError::Publish {
            subject: subject.clone(),
            source,
        };
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| publish_err(e.into()))?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|e| publish_err(e.into()))?
            .map_err(|e| publish_err(e.into()))?;
        Ok(())
    }

    async fn keys(&self, kv: &kv::Store, bucket: &'static str) -> Result<Vec<String>, StoreError> {
        let list_err = |source: BoxError| StoreError::List { bucket, source };
        kv.keys()
            .await
            .map_err(|e| list_err(e.into()))?
            .try_collect()
            .await
            .map_err(|e| list_err(e.into()))
    }
}

fn encode(record: &MachineRecord) -> Result<Bytes, StoreError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|source| StoreError::Encode {
            id: record.id.clone(),
            source,
        })
}

fn write_err(bucket: &'static str, key: String, e: impl Into<BoxError>) -> StoreError {
    StoreError::Write {
        bucket,
        key,
        source: e.into(),
    }
}

async fn get(
    kv: &kv::Store,
    bucket: &'static str,
    key: &str,
) -> Result<Option<(Bytes, u64)>, StoreError> {
    let entry = kv.entry(key).await.map_err(|e| StoreError::Read {
        bucket,
        key: key.to_owned(),
        source: e.into(),
    })?;
    Ok(entry.and_then(|e| match e.operation {
        kv::Operation::Put => Some((e.value, e.revision)),
        kv::Operation::Delete | kv::Operation::Purge => None,
    }))
}

async fn update(
    kv: &kv::Store,
    bucket: &'static str,
    key: String,
    value: Bytes,
    revision: u64,
) -> Result<Write, StoreError> {
    match kv.update(&key, value, revision).await {
        Ok(rev) => Ok(Write::Done(rev)),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Write::Lost),
        Err(e) => Err(write_err(bucket, key, e)),
    }
}

// --- Watching a document bucket (the controller's rules cache) -----------------------

/// A watch on a document bucket, from [`Store::doc_watch`]: first the current document
/// of every key (the snapshot, ended by [`DocEvent::Current`]), then every change as it
/// is written.
pub struct DocWatch<T> {
    bucket: &'static str,
    watch: kv::Watch,
    /// `Some` while [`DocEvent::Current`] is due: the revision it reports.
    current: Option<u64>,
    snapshot_done: bool,
    /// The bucket's last revision when the watch began.
    start_revision: u64,
    _doc: std::marker::PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for DocWatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocWatch")
            .field("bucket", &self.bucket)
            .field("snapshot_done", &self.snapshot_done)
            .finish_non_exhaustive()
    }
}

/// What a [`DocWatch`] saw.
#[derive(Debug)]
pub enum DocEvent<T> {
    /// A key's document: written (`Some`), or deleted, purged or not decodable (`None`,
    /// logged).
    Change {
        key: String,
        /// The change's revision in the bucket.
        revision: u64,
        doc: Option<T>,
    },
    /// Every change up to `revision` has been delivered: the snapshot is complete.
    /// Comes once per watch, after the snapshot's changes.
    Current { revision: u64 },
}

impl Store {
    /// Watches a document bucket: its current documents, then every change.
    pub async fn doc_watch<T: DeserializeOwned>(
        &self,
        docs: Docs,
    ) -> Result<DocWatch<T>, StoreError> {
        /// Every key of the bucket (the NATS full wildcard).
        const EVERY_KEY: &str = ">";
        let bucket = docs.bucket();
        let kv = self.docs(docs);
        let err = |source: BoxError| StoreError::List { bucket, source };
        // Read before the watch starts: everything up to here is in its snapshot.
        let state = kv.stream.get_info().await.map_err(|e| err(e.into()))?.state;
        let watch = kv
            .watch_with_history(EVERY_KEY)
            .await
            .map_err(|e| err(e.into()))?;
        let empty = state.messages == 0;
        Ok(DocWatch {
            bucket,
            watch,
            current: empty.then_some(state.last_sequence),
            snapshot_done: empty,
            start_revision: state.last_sequence,
            _doc: std::marker::PhantomData,
        })
    }

    /// The bucket's latest revision now: a [`DocWatch`] that reported a revision at or
    /// past it has seen every write made before this call.
    pub async fn doc_revision(&self, docs: Docs) -> Result<u64, StoreError> {
        let bucket = docs.bucket();
        let info = self
            .docs(docs)
            .stream
            .get_info()
            .await
            .map_err(|e| StoreError::List {
                bucket,
                source: e.into(),
            })?;
        Ok(info.state.last_sequence)
    }
}

impl<T: DeserializeOwned> DocWatch<T> {
    /// The next change, or the end of the snapshot. An error ends the watch (start a
    /// new one: its snapshot replaces everything this one delivered).
    pub async fn next(&mut self) -> Result<DocEvent<T>, StoreError> {
        let bucket = self.bucket;
        if let Some(revision) = self.current.take() {
            return Ok(DocEvent::Current { revision });
        }
        let entry = match self.watch.next().await {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => {
                return Err(StoreError::List {
                    bucket,
                    source: e.into(),
                })
            }
            None => {
                return Err(StoreError::List {
                    bucket,
                    source: "the watch ended".into(),
                })
            }
        };
        if !self.snapshot_done && entry.delta == 0 {
            // The last message of the snapshot: report it after this change.
            self.snapshot_done = true;
            self.current = Some(self.start_revision.max(entry.revision));
        }
        let doc = match entry.operation {
            kv::Operation::Put => match serde_json::from_slice(&entry.value) {
                Ok(doc) => Some(doc),
                Err(source) => {
                    let e = StoreError::Decode {
                        bucket,
                        key: entry.key.clone(),
                        source,
                    };
                    tracing::warn!(error = %substruct_runtime::error_chain(&e), "ignoring a document");
                    None
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        Ok(DocEvent::Change {
            key: entry.key,
            revision: entry.revision,
            doc,
        })
    }
}
