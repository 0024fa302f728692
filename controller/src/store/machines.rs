//! Machine records (KV `machines`), the identity index (KV `machine_index`) and the
//! `EVENTS` stream.

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use substruct_wire::{subjects, MachineId};

use super::{create, delete, get, update, BoxError, DocEvent, Store, StoreError, Write};
use crate::record::{MachineEvent, MachineEventKind, MachineRecord};

/// One key of `machine_index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The machine the fact belongs to; `None` when the value is unusable.
    pub machine: Option<MachineId>,
    pub revision: u64,
}

impl Store {
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
        create(&self.machines, subjects::KV_MACHINES, &key, encode(record)?).await
    }

    /// Replaces a record if it is still at `revision`.
    pub async fn update_machine(
        &self,
        record: &MachineRecord,
        revision: u64,
    ) -> Result<Write, StoreError> {
        let key = subjects::machine_key(&record.id);
        let value = encode(record)?;
        self.fault("record", false)?;
        let written = update(&self.machines, subjects::KV_MACHINES, key, value, revision).await?;
        if matches!(written, Write::Done(_)) {
            self.fault("record", true)?;
        }
        Ok(written)
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

    /// Watches KV `machines`: every record, then every change (the read model,
    /// [`crate::fleet::Fleet`]). The snapshot is read through a pull consumer, a batch at
    /// a time, so a large fleet is never buffered whole in the client (a push watch
    /// lets the server send tens of MB ahead of the decoder); the live watch starts
    /// where the snapshot ended.
    pub async fn machines_watch<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<RecordWatch<T>, StoreError> {
        let bucket = subjects::KV_MACHINES;
        let err = |e: BoxError| StoreError::List { bucket, source: e };
        // Before the snapshot: every write up to here is in it.
        let start_revision = self
            .machines
            .stream
            .get_info()
            .await
            .map_err(|e| err(e.into()))?
            .state
            .last_sequence;
        let snapshot = super::snapshot(&self.machines, bucket).await?;
        Ok(RecordWatch {
            kv: self.machines.clone(),
            live: None,
            seen: 0,
            current_due: snapshot.is_none(),
            snapshot,
            start_revision,
            _doc: std::marker::PhantomData,
        })
    }

    /// KV `machines`' latest revision now.
    pub async fn machines_revision(&self) -> Result<u64, StoreError> {
        super::docs::bucket_revision(&self.machines, subjects::KV_MACHINES).await
    }

    /// Number of keys in `machines` and in `machine_index`.
    pub async fn key_counts(&self) -> Result<(usize, usize), StoreError> {
        let machines = self.keys(&self.machines, subjects::KV_MACHINES).await?;
        let index = self.keys(&self.index, subjects::KV_MACHINE_INDEX).await?;
        Ok((machines.len(), index.len()))
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
        self.fault("index_claim", false)?;
        let written = create(
            &self.index,
            subjects::KV_MACHINE_INDEX,
            key,
            index_value(id),
        )
        .await?;
        self.fault("index_claim", true)?;
        Ok(written)
    }

    /// Points an index key at `id` if the key never existed: one write, no read (a
    /// deleted key counts as existing). The fast path for machines never seen.
    pub async fn index_try_claim(&self, key: &str, id: &MachineId) -> Result<Write, StoreError> {
        self.index_repoint(key, id, 0).await
    }

    /// Points an existing index key at `id` if it is still at `revision`.
    pub async fn index_repoint(
        &self,
        key: &str,
        id: &MachineId,
        revision: u64,
    ) -> Result<Write, StoreError> {
        let value = index_value(id);
        update(
            &self.index,
            subjects::KV_MACHINE_INDEX,
            key.to_owned(),
            value,
            revision,
        )
        .await
    }

    /// Deletes an index key (a token that expired); true when it existed.
    pub async fn index_delete(&self, key: &str) -> Result<bool, StoreError> {
        self.fault("index_delete", false)?;
        let existed = delete(&self.index, subjects::KV_MACHINE_INDEX, key).await?;
        self.fault("index_delete", true)?;
        Ok(existed)
    }

    /// Publishes an event to `EVENTS` and waits for the stream's ack. The
    /// `Nats-Msg-Id` header makes a retried publish a no-op.
    pub async fn publish_event(&self, event: &MachineEvent) -> Result<(), StoreError> {
        self.publish_event_as(event, &event.dedup_id()).await
    }

    /// [`Self::publish_event`] with the given `Nats-Msg-Id`.
    pub async fn publish_event_as(
        &self,
        event: &MachineEvent,
        msg_id: &str,
    ) -> Result<(), StoreError> {
        self.fault("event", false)?;
        let subject = subjects::machine_event(&event.machine_id);
        let payload = serde_json::to_vec(event).map_err(|source| StoreError::Encode {
            id: event.machine_id.clone(),
            source,
        })?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
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
        let to = match &event.kind {
            crate::record::MachineEventKind::Transition { to, .. } => Some(to.as_str()),
            _ => None,
        };
        self.metrics().event(event.kind.name(), to);
        self.fault("event", true)?;
        Ok(())
    }

    /// True when the `EVENTS` stream holds `event` (the same machine, time and kind):
    /// looks at the machine's events stored since a minute before `event.at_unix_ms`
    /// (the controller's clock against the server's).
    pub async fn has_event(&self, event: &MachineEvent) -> Result<bool, StoreError> {
        use async_nats::jetstream::consumer::{pull, DeliverPolicy};
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let subject = subjects::machine_event(&event.machine_id);
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
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(false),
            Err(e) => return Err(read_err(e.into())),
        };
        let since_ns = i128::from(event.at_unix_ms.saturating_sub(60_000)) * 1_000_000;
        let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(since_ns)
            .map_err(|e| read_err(e.into()))?;
        if last.time < start_time {
            return Ok(false);
        }
        let end = last.sequence;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: DeliverPolicy::ByStartTime { start_time },
                description: Some("substruct-controller outbox check".to_owned()),
                ..Default::default()
            })
            .await
            .map_err(|e| read_err(e.into()))?;
        let mut messages = consumer.messages().await.map_err(|e| read_err(e.into()))?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let message = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(read_err(e.into())),
                // The stream is gone, or nothing newer than the start time.
                Ok(None) | Err(_) => return Ok(false),
            };
            if let Ok(logged) = serde_json::from_slice::<MachineEvent>(&message.payload) {
                if logged.at_unix_ms == event.at_unix_ms && logged.kind == event.kind {
                    return Ok(true);
                }
            }
            let seq = message
                .info()
                .map_err(|e| read_err(e.to_string().into()))?
                .stream_sequence;
            if seq >= end {
                return Ok(false);
            }
        }
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
            if matches!(event.kind, MachineEventKind::Discovered { .. }) {
                return Ok(true);
            }
            seq = msg.sequence + 1;
        }
        Ok(false)
    }
}

/// A watch of KV `machines` from [`Store::machines_watch`]: the snapshot (every key's
/// latest value, ended by [`DocEvent::Current`]), then every change.
pub struct RecordWatch<T> {
    kv: async_nats::jetstream::kv::Store,
    snapshot: Option<async_nats::jetstream::consumer::pull::Ordered>,
    live: Option<async_nats::jetstream::kv::Watch>,
    /// The last revision delivered.
    seen: u64,
    /// The bucket's last revision when the watch began.
    start_revision: u64,
    /// The snapshot is over and [`DocEvent::Current`] not yet reported.
    current_due: bool,
    _doc: std::marker::PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for RecordWatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordWatch")
            .field("in_snapshot", &self.snapshot.is_some())
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<T: serde::de::DeserializeOwned> RecordWatch<T> {
    /// The next change, or the end of the snapshot. An error ends the watch (start a
    /// new one: its snapshot replaces everything this one delivered).
    pub async fn next(&mut self) -> Result<DocEvent<T>, StoreError> {
        use async_nats::jetstream::kv::Operation;
        let bucket = subjects::KV_MACHINES;
        let err = |e: BoxError| StoreError::List { bucket, source: e };
        if self.current_due {
            self.current_due = false;
            let revision = self.start_revision.max(self.seen);
            self.seen = revision;
            return Ok(DocEvent::Current { revision });
        }
        if let Some(snapshot) = &mut self.snapshot {
            let message = match snapshot.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(err(e.into())),
                None => return Err(err("the snapshot ended early".into())),
            };
            let info = message.info().map_err(|e| err(e.to_string().into()))?;
            let (revision, pending) = (info.stream_sequence, info.pending);
            let prefix = format!("$KV.{bucket}.");
            let key = message
                .subject
                .as_str()
                .strip_prefix(prefix.as_str())
                .unwrap_or_default()
                .to_owned();
            let doc = if super::is_put(&message) {
                decode_logged(&key, &message.payload)
            } else {
                None
            };
            self.seen = self.seen.max(revision);
            if pending == 0 {
                self.snapshot = None;
                self.current_due = true;
            }
            return Ok(DocEvent::Change { key, revision, doc });
        }
        if self.live.is_none() {
            let from = self.start_revision.max(self.seen) + 1;
            self.live = Some(
                self.kv
                    .watch_from_revision(">", from)
                    .await
                    .map_err(|e| err(e.into()))?,
            );
        }
        let Some(live) = &mut self.live else {
            return Err(err("no live watch".into()));
        };
        let entry = match live.next().await {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(err(e.into())),
            None => return Err(err("the watch ended".into())),
        };
        self.seen = self.seen.max(entry.revision);
        let doc = match entry.operation {
            Operation::Put => decode_logged(&entry.key, &entry.value),
            Operation::Delete | Operation::Purge => None,
        };
        Ok(DocEvent::Change {
            key: entry.key,
            revision: entry.revision,
            doc,
        })
    }
}

/// A stored record's JSON as `T`; `None` (logged) when it does not decode.
fn decode_logged<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(doc) => Some(doc),
        Err(source) => {
            let e = StoreError::Decode {
                bucket: subjects::KV_MACHINES,
                key: key.to_owned(),
                source,
            };
            tracing::warn!(error = %substruct_runtime::error_chain(&e), "machine record not listed");
            None
        }
    }
}

/// A record as stored: JSON.
fn encode(record: &MachineRecord) -> Result<Bytes, StoreError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|source| StoreError::Encode {
            id: record.id.clone(),
            source,
        })
}

/// An index value: the machine id as plain text.
fn index_value(id: &MachineId) -> Bytes {
    Bytes::copy_from_slice(id.as_str().as_bytes())
}
