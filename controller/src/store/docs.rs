//! The JSON document buckets (`profiles`, `rules`, `images`, `sites`, `site_status`):
//! read, compare-and-set, delete, list, and a watch (the controller's rules cache).

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use substruct_wire::subjects;

use super::{create, delete, get, update, write_err, BoxError, Store, StoreError, Write};

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
            Some(0) => create(kv, bucket, key, value.into()).await,
            Some(rev) => update(kv, bucket, key.to_owned(), value.into(), rev).await,
        }
    }

    /// Deletes a document; true when it existed.
    pub async fn doc_delete(&self, docs: Docs, key: &str) -> Result<bool, StoreError> {
        delete(self.docs(docs), docs.bucket(), key).await
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

    /// Watches a document bucket: its current documents, then every change.
    pub async fn doc_watch<T: DeserializeOwned>(
        &self,
        docs: Docs,
    ) -> Result<DocWatch<T>, StoreError> {
        watch_bucket(self.docs(docs), docs.bucket()).await
    }

    /// The bucket's latest revision now: a [`DocWatch`] that reported a revision at or
    /// past it has seen every write made before this call.
    pub async fn doc_revision(&self, docs: Docs) -> Result<u64, StoreError> {
        bucket_revision(self.docs(docs), docs.bucket()).await
    }
}

/// Watches a bucket of JSON values: its current values, then every change.
pub(super) async fn watch_bucket<T: DeserializeOwned>(
    kv: &kv::Store,
    bucket: &'static str,
) -> Result<DocWatch<T>, StoreError> {
    /// Every key of the bucket (the NATS full wildcard).
    const EVERY_KEY: &str = ">";
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

/// A bucket's latest revision now.
pub(super) async fn bucket_revision(
    kv: &kv::Store,
    bucket: &'static str,
) -> Result<u64, StoreError> {
    let info = kv.stream.get_info().await.map_err(|e| StoreError::List {
        bucket,
        source: e.into(),
    })?;
    Ok(info.state.last_sequence)
}

/// Runs `watch_once` (a watch that returns its failure, and whether its snapshot was
/// in) again and again until `cancel`, with a jittered backoff between failures; the
/// backoff starts over after a watch whose snapshot was in. `what` names the copy in
/// the log.
pub async fn keep_watching<F, Fut>(
    what: &str,
    min: std::time::Duration,
    max: std::time::Duration,
    cancel: &tokio_util::sync::CancellationToken,
    mut watch_once: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (StoreError, bool)>,
{
    let mut backoff = substruct_runtime::backoff::Backoff::new(min, max);
    loop {
        let (error, synced) = tokio::select! {
            _ = cancel.cancelled() => return,
            failure = watch_once() => failure,
        };
        if synced {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            error = %substruct_runtime::error_chain(&error),
            retry_in = ?delay,
            "{what} watch failed; the last copy stays in use"
        );
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

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
