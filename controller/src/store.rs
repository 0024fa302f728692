//! The only code in the controller that knows JetStream.
//!
//! * KV `machines`: machine id → [`MachineRecord`] as JSON (readable with
//!   `nats kv get machines ID`);
//! * KV `machine_index`: identity fact key (see [`crate::matching::Fact::index_key`])
//!   → machine id as plain text;
//! * stream `EVENTS`: [`MachineEvent`]s as JSON on `substruct.v1.events.{id}`.
//!
//! Every write is a compare-and-set on the key's revision: `create` for a new key,
//! `update(key, value, revision)` for an existing one. A lost race is reported as
//! [`Write::Lost`], never as an error, so callers re-read and retry.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use substruct_runtime::jetstream::{ensure_kv, ensure_stream, BucketSpec, SetupError};
use substruct_wire::{subjects, MachineId};

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
        ensure_stream(
            &js,
            subjects::STREAM_EVENTS,
            vec![subjects::machine_events_all()],
        )
        .await
        .map_err(StoreError::Setup)?;
        Ok(Self {
            js,
            machines,
            index,
        })
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
