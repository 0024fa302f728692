//! JetStream set-up that works on Debian 12's nats-server 2.9.10 and on current
//! releases. async-nats' `create_key_value()` fails on 2.9 (its account-info parser
//! wants fields 2.9 does not send), so a bucket's backing stream is created
//! explicitly, shaped exactly as the KV layer expects, then opened with
//! `get_key_value()`.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use substruct_wire::subjects;

/// Why a bucket or stream could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("creating stream {name}")]
    CreateStream {
        name: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("opening object store {name}")]
    OpenObjectStore {
        name: String,
        #[source]
        source: jetstream::context::ObjectStoreError,
    },
    #[error("opening key-value bucket {name}")]
    OpenKv {
        name: String,
        #[source]
        source: jetstream::context::KeyValueError,
    },
}

/// The settings of a KV bucket this project uses.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    pub name: &'static str,
    pub history: i64,
    pub replicas: usize,
    pub max_value_size: i32,
    pub max_age: Duration,
}

impl BucketSpec {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            history: 1,
            replicas: 1,
            max_value_size: 1024 * 1024,
            max_age: Duration::ZERO,
        }
    }
}

/// Creates (if missing) and opens a KV bucket.
pub async fn ensure_kv(
    js: &jetstream::Context,
    spec: &BucketSpec,
) -> Result<kv::Store, SetupError> {
    let stream_name = subjects::kv_stream(spec.name);
    let config = stream::Config {
        name: stream_name.clone(),
        subjects: vec![subjects::kv_stream_subjects(spec.name)],
        max_messages_per_subject: spec.history,
        max_bytes: -1,
        max_age: spec.max_age,
        max_message_size: spec.max_value_size,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: spec.replicas,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|source| SetupError::CreateStream {
            name: stream_name,
            source,
        })?;
    js.get_key_value(spec.name)
        .await
        .map_err(|source| SetupError::OpenKv {
            name: spec.name.to_owned(),
            source,
        })
}

/// Creates (if missing) and opens an object store. The stream is created here with
/// only fields nats-server 2.9 knows (the client's own `create_object_store` sends
/// 2.10 fields when the `server_2_10` feature is on).
pub async fn ensure_object_store(
    js: &jetstream::Context,
    name: &'static str,
) -> Result<async_nats::jetstream::object_store::ObjectStore, SetupError> {
    let stream_name = subjects::object_stream(name);
    let config = stream::Config {
        name: stream_name.clone(),
        subjects: subjects::object_stream_subjects(name).into(),
        max_bytes: -1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|source| SetupError::CreateStream {
            name: stream_name,
            source,
        })?;
    js.get_object_store(name)
        .await
        .map_err(|source| SetupError::OpenObjectStore {
            name: name.to_owned(),
            source,
        })
}

/// Creates (if missing) a file-backed stream capturing `subjects`.
pub async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: Vec<String>,
) -> Result<stream::Stream, SetupError> {
    let config = stream::Config {
        name: name.to_owned(),
        subjects,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|source| SetupError::CreateStream {
            name: name.to_owned(),
            source,
        })
}
