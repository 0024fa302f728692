//! The only code in the controller that knows JetStream.
//!
//! * KV `machines`: machine id → [`MachineRecord`] as JSON (readable with
//!   `nats kv get machines ID`);
//! * KV `machine_index`: identity fact key (see [`crate::matching::Fact::index_key`])
//!   → machine id as plain text;
//! * stream `EVENTS`: [`MachineEvent`]s as JSON on `substruct.v1.events.{id}`.
//!
//! * KV `profiles`, `rules`, `images`, `sites`, `site_status`: JSON documents by name;
//! * KV `bmc` (`{site}.{machine}` → BMC settings, password included; only the
//!   controller and that site read it);
//! * KV `boot` (`{site}.{mac}` → boot intent) and `install` (`{site}.{sha256(token)[..32]}` → the
//!   rendered install files), envelope-encoded for the edges.
//!
//! Every write is a compare-and-set on the key's revision: `create` for a new key,
//! `update(key, value, revision)` for an existing one. A lost race is reported as
//! [`Write::Lost`], never as an error, so callers re-read and retry.
//!
//! The parts, by what they store: `machines` (records, the identity index, events),
//! `docs` (the JSON document buckets and their watch), `edge` (what the edges read:
//! boot intents, install files, image content).
//!
//! [`MachineRecord`]: crate::record::MachineRecord
//! [`MachineEvent`]: crate::record::MachineEvent

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;
use substruct_runtime::jetstream::{
    configure_kv, configure_stream, ensure_object_store, BucketSpec, SetupError, StreamSpec,
};
use substruct_wire::{subjects, MachineId};

use crate::config::StorageLimits;

mod bmc;
mod docs;
mod edge;
mod events;
mod machines;

pub use docs::{keep_watching, DocEvent, DocWatch, Docs, KV_SITE_STATUS};
pub use edge::digest;
pub use events::{EventFeed, EventStart, FeedItem, LoggedEvent};
pub use machines::{IndexEntry, RecordWatch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most bytes of KV `bmc` (less when `bucket_max_bytes` is less).
const BMC_MAX_BYTES: i64 = 16 << 20;

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
    /// A test's [`FaultHook`] failed this write.
    #[error("fault injected {} {point}", if *.after { "after" } else { "before" })]
    Injected { point: &'static str, after: bool },
}

/// A test's hook into the store's writes (deterministic fault injection): called
/// before (`after == false`) and after each write with the write's name (`record`,
/// `index_claim`, `index_delete`, `install_files`, `boot_intent`, `event`); `true`
/// fails the write there with [`StoreError::Injected`] (after: the write happened,
/// its caller is told it failed). Production never sets one.
pub type FaultHook = std::sync::Arc<dyn Fn(&'static str, bool) -> bool + Send + Sync>;

/// The hook's slot (its closure has no `Debug`).
#[derive(Default)]
struct Faults(std::sync::RwLock<Option<FaultHook>>);

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faults")
    }
}

/// The outcome of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Written; the key's new revision.
    Done(u64),
    /// Someone else wrote first (the key exists, or its revision moved on).
    Lost,
}

/// The controller's durable state, shareable across tasks (cheap to clone: one
/// reference count, not a dozen bucket handles).
#[derive(Debug, Clone)]
pub struct Store {
    buckets: std::sync::Arc<Buckets>,
}

impl std::ops::Deref for Store {
    type Target = Buckets;

    fn deref(&self) -> &Buckets {
        &self.buckets
    }
}

/// The handles behind a [`Store`].
#[derive(Debug)]
pub struct Buckets {
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
    bmc: kv::Store,
    objects: Objects,
    /// This controller's counters ([`crate::metrics`]): every part reaches the store.
    metrics: crate::metrics::Metrics,
    faults: Faults,
}

/// The object store (its type has no `Debug`).
#[derive(Clone)]
struct Objects(async_nats::jetstream::object_store::ObjectStore);

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectStore(images)")
    }
}

impl Store {
    /// Creates (if missing) and opens the buckets and the `EVENTS` stream, with the
    /// default [`StorageLimits`].
    pub async fn open(client: async_nats::Client) -> Result<Self, StoreError> {
        Self::open_limited(client, &StorageLimits::default()).await
    }

    /// Creates (if missing) and opens the buckets and the `EVENTS` stream, and sets
    /// their limits to `limits` (existing ones included).
    pub async fn open_limited(
        client: async_nats::Client,
        limits: &StorageLimits,
    ) -> Result<Self, StoreError> {
        let js = jetstream::new(client);
        let open = |name: &'static str, max_bytes: i64| {
            let js = js.clone();
            let spec = BucketSpec {
                max_bytes,
                max_value_size: limits.max_value_bytes,
                ..BucketSpec::new(name)
            };
            async move { configure_kv(&js, &spec).await.map_err(StoreError::Setup) }
        };
        let machines = open(subjects::KV_MACHINES, limits.machines_max_bytes).await?;
        let each = limits.bucket_max_bytes;
        let index = open(subjects::KV_MACHINE_INDEX, each).await?;
        let profiles = open(subjects::KV_PROFILES, each).await?;
        let rules = open(subjects::KV_RULES, each).await?;
        let images = open(subjects::KV_IMAGES, each).await?;
        let sites = open(subjects::KV_SITES, each).await?;
        let site_status = open(KV_SITE_STATUS, each).await?;
        let boot = open(subjects::KV_BOOT, each).await?;
        let install = open(subjects::KV_INSTALL, each).await?;
        // BMC settings are ~200 bytes a machine: 16 MiB hold ~80k machines, and keep the
        // bucket's reservation of JetStream storage small.
        let bmc = open(subjects::KV_BMC, each.min(BMC_MAX_BYTES)).await?;
        let objects = ensure_object_store(&js, subjects::OBJ_IMAGES)
            .await
            .map_err(StoreError::Setup)?;
        // The audit log drops its oldest events at its limits; the records stay.
        configure_stream(
            &js,
            &StreamSpec {
                name: subjects::STREAM_EVENTS,
                subjects: vec![subjects::machine_events_all()],
                max_bytes: limits.events_max_bytes,
                max_age: limits.events_max_age,
                discard: jetstream::stream::DiscardPolicy::Old,
            },
        )
        .await
        .map_err(StoreError::Setup)?;
        Ok(Self {
            buckets: std::sync::Arc::new(Buckets {
                profiles,
                rules,
                images,
                sites,
                site_status,
                boot,
                install,
                bmc,
                objects: Objects(objects),
                js,
                machines,
                index,
                metrics: crate::metrics::Metrics::default(),
                faults: Faults::default(),
            }),
        })
    }

    /// Sets (or with `None`, removes) the fault hook of this store and its clones.
    pub fn inject_faults(&self, hook: Option<FaultHook>) {
        *self
            .buckets
            .faults
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// The fault hook's verdict on write `point`.
    fn fault(&self, point: &'static str, after: bool) -> Result<(), StoreError> {
        let faults = self
            .buckets
            .faults
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner());
        match faults.as_ref() {
            Some(hook) if hook(point, after) => Err(StoreError::Injected { point, after }),
            _ => Ok(()),
        }
    }

    /// This controller's counters.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.buckets.metrics
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

/// Every key's latest message of a KV bucket, read through an ordered pull consumer
/// (a batch at a time: a large bucket is never buffered whole in the client); `None`
/// when the bucket holds no message. The stream also delivers what is written while it
/// is read; a message whose `pending` is 0 is the last one so far.
async fn snapshot(
    kv: &kv::Store,
    bucket: &'static str,
) -> Result<Option<jetstream::consumer::pull::Ordered>, StoreError> {
    use jetstream::consumer::{pull, DeliverPolicy};
    let err = |e: BoxError| StoreError::List { bucket, source: e };
    let messages = kv
        .stream
        .get_info()
        .await
        .map_err(|e| err(e.into()))?
        .state
        .messages;
    if messages == 0 {
        return Ok(None);
    }
    let consumer = kv
        .stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("$KV.{bucket}.>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            description: Some(format!("substruct-controller {bucket} snapshot")),
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.into()))?;
    Ok(Some(consumer.messages().await.map_err(|e| err(e.into()))?))
}

/// A KV message that is a value, not a delete or purge marker.
fn is_put(message: &jetstream::Message) -> bool {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_none_or(|op| op.as_str() == "PUT")
}

fn write_err(bucket: &'static str, key: String, e: impl Into<BoxError>) -> StoreError {
    StoreError::Write {
        bucket,
        key,
        source: e.into(),
    }
}

/// A key's value and revision; `None` when it never existed or was deleted.
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

/// Writes a key that must not exist yet.
async fn create(
    kv: &kv::Store,
    bucket: &'static str,
    key: &str,
    value: Bytes,
) -> Result<Write, StoreError> {
    match kv.create(key, value).await {
        Ok(rev) => Ok(Write::Done(rev)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Write::Lost),
        Err(e) => Err(write_err(bucket, key.to_owned(), e)),
    }
}

/// Replaces a key if it is still at `revision` (0: if it never existed).
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

/// Deletes a key; true when it existed (a missing key is not written to).
async fn delete(kv: &kv::Store, bucket: &'static str, key: &str) -> Result<bool, StoreError> {
    if get(kv, bucket, key).await?.is_none() {
        return Ok(false);
    }
    kv.delete(key)
        .await
        .map_err(|e| write_err(bucket, key.to_owned(), e))?;
    Ok(true)
}
