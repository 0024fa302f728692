//! JetStream set-up that works on Debian 12's nats-server 2.9.10 and on current
//! releases. async-nats' `create_key_value()` fails on 2.9 (its account-info parser
//! wants fields 2.9 does not send), so a bucket's backing stream is created
//! explicitly, shaped exactly as the KV layer expects, then opened with
//! `get_key_value()`.
//!
//! The owner of a bucket or stream (the controller) sets its size and age limits with
//! [`configure_kv`] / [`configure_stream`], which also apply changed limits to an
//! existing one (a stream update, touching nothing but the limits); a client that only
//! uses a bucket opens it with [`ensure_kv`], which never changes an existing one.

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
    #[error("applying the limits of stream {name}")]
    UpdateStream {
        name: String,
        #[source]
        source: jetstream::context::UpdateStreamError,
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
    /// Bytes the bucket may hold (`-1`: unlimited). A KV bucket discards new: once
    /// full, writes are refused, nothing stored is dropped.
    pub max_bytes: i64,
}

impl BucketSpec {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            history: 1,
            replicas: 1,
            max_value_size: 1024 * 1024,
            max_age: Duration::ZERO,
            max_bytes: -1,
        }
    }
}

/// A plain stream and its bounds, for [`configure_stream`].
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: &'static str,
    pub subjects: Vec<String>,
    /// Bytes the stream may hold (`-1`: unlimited).
    pub max_bytes: i64,
    /// Age past which messages are removed (zero: kept forever).
    pub max_age: Duration,
    /// What happens at `max_bytes`: drop the oldest messages, or refuse new ones.
    pub discard: stream::DiscardPolicy,
}

/// The limit fields of `want` copied onto `have` when any differs; `None` when they
/// are already equal. Only limits are touched, never a field a stream update may not
/// change (storage, subjects of a KV bucket, deny-delete).
fn limits_to_apply(have: &stream::Config, want: &stream::Config) -> Option<stream::Config> {
    let same = have.max_bytes == want.max_bytes
        && have.max_age == want.max_age
        && have.max_message_size == want.max_message_size
        && have.discard == want.discard;
    if same {
        return None;
    }
    let mut config = have.clone();
    config.max_bytes = want.max_bytes;
    config.max_age = want.max_age;
    config.max_message_size = want.max_message_size;
    config.discard = want.discard;
    Some(config)
}

/// Creates `config`'s stream if missing; if it exists with other limits, updates them
/// to `config`'s (so a changed limit reaches a running deployment).
async fn create_or_limit(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(), SetupError> {
    let name = config.name.clone();
    let stream = create(js, config.clone()).await?;
    let have = stream.cached_info().config.clone();
    if let Some(update) = limits_to_apply(&have, &config) {
        tracing::info!(stream = %name, max_bytes = update.max_bytes, max_age = ?update.max_age, "applying stream limits");
        js.update_stream(update)
            .await
            .map_err(|source| SetupError::UpdateStream { name, source })?;
    }
    Ok(())
}

/// Creates `config`'s stream if missing (an existing one is left as it is).
async fn create(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, SetupError> {
    let name = config.name.clone();
    js.get_or_create_stream(config)
        .await
        .map_err(|source| SetupError::CreateStream { name, source })
}

/// Opens KV bucket `name`, whose stream exists.
async fn open_kv(js: &jetstream::Context, name: &str) -> Result<kv::Store, SetupError> {
    js.get_key_value(name)
        .await
        .map_err(|source| SetupError::OpenKv {
            name: name.to_owned(),
            source,
        })
}

fn kv_stream_config(spec: &BucketSpec) -> stream::Config {
    stream::Config {
        name: subjects::kv_stream(spec.name),
        subjects: vec![subjects::kv_stream_subjects(spec.name)],
        max_messages_per_subject: spec.history,
        max_bytes: spec.max_bytes,
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
    }
}

/// Creates (if missing) a KV bucket, sets its limits to `spec`'s if it exists with
/// others, and opens it. For the bucket's owner (the controller); a client that only
/// uses a bucket calls [`ensure_kv`], which never changes an existing one.
pub async fn configure_kv(
    js: &jetstream::Context,
    spec: &BucketSpec,
) -> Result<kv::Store, SetupError> {
    create_or_limit(js, kv_stream_config(spec)).await?;
    open_kv(js, spec.name).await
}

/// Creates (if missing) a file-backed stream with `spec`'s subjects and limits, or
/// sets an existing one's limits to `spec`'s.
pub async fn configure_stream(
    js: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<(), SetupError> {
    let config = stream::Config {
        name: spec.name.to_owned(),
        subjects: spec.subjects.clone(),
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        max_bytes: spec.max_bytes,
        max_age: spec.max_age,
        // As the server reports "no limit", so an unchanged stream compares equal.
        max_message_size: -1,
        discard: spec.discard,
        ..Default::default()
    };
    create_or_limit(js, config).await
}

/// Creates (if missing) and opens a KV bucket; an existing bucket is opened as it is.
pub async fn ensure_kv(
    js: &jetstream::Context,
    spec: &BucketSpec,
) -> Result<kv::Store, SetupError> {
    create(js, kv_stream_config(spec)).await?;
    open_kv(js, spec.name).await
}

/// Creates (if missing) and opens an object store. The stream is created here with
/// only fields nats-server 2.9 knows (the client's own `create_object_store` sends
/// 2.10 fields when the `server_2_10` feature is on).
pub async fn ensure_object_store(
    js: &jetstream::Context,
    name: &'static str,
) -> Result<async_nats::jetstream::object_store::ObjectStore, SetupError> {
    let config = stream::Config {
        name: subjects::object_stream(name),
        subjects: subjects::object_stream_subjects(name).into(),
        max_bytes: -1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    create(js, config).await?;
    js.get_object_store(name)
        .await
        .map_err(|source| SetupError::OpenObjectStore {
            name: name.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_limits_are_updated_and_only_when_they_differ() {
        let spec = BucketSpec {
            max_bytes: 4096,
            ..BucketSpec::new("b")
        };
        let want = kv_stream_config(&spec);
        assert!(limits_to_apply(&want, &want).is_none());
        let have = stream::Config {
            max_bytes: -1,
            deny_delete: true,
            description: Some("kept".into()),
            ..want.clone()
        };
        let update = limits_to_apply(&have, &want).unwrap();
        assert_eq!(update.max_bytes, 4096);
        assert_eq!(update.description.as_deref(), Some("kept"));
        assert!(update.deny_delete);
    }
}
