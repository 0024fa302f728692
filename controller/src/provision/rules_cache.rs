//! The controller's copy of KV `rules`, fed by a watch of the bucket.
//!
//! Derived state only: every (re)start of the watch rebuilds the copy from the
//! bucket's snapshot and swaps it in whole, then applies each change as it is
//! written, so a rule saved through any controller applies to the next report here.
//! While NATS is away the last copy keeps serving. Across a short outage the client
//! resumes the watch by itself from the last revision it saw; a watch that cannot
//! start or fails is started again (a new snapshot) after a jittered backoff. The
//! copy remembers the bucket revision it has seen, so a writer can wait for its own
//! write to arrive ([`RulesCache::catch_up`]).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::rules::Rule;
use crate::store::{DocEvent, Docs, Store, StoreError};

/// First delay before the watch is started again after a failure.
const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest delay between two attempts to start the watch.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why [`RulesCache::catch_up`] could not confirm the copy is current.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("cannot read the rules bucket's revision")]
    Store(#[source] StoreError),
    #[error("the rules watch is at revision {seen}, not yet at {wanted}, after {waited:?}")]
    Behind {
        seen: u64,
        wanted: u64,
        waited: Duration,
    },
}

/// The rules, as of the bucket revision the watch has reached. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RulesCache {
    rules: Arc<RwLock<Arc<[Rule]>>>,
    /// The bucket revision the copy reflects (0 until the first snapshot).
    revision: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for RulesCache {
    fn default() -> Self {
        Self::new()
    }
}

impl RulesCache {
    /// An empty copy; [`RulesCache::follow`] fills it.
    pub fn new() -> Self {
        Self {
            rules: Arc::new(RwLock::new(Arc::from(Vec::new()))),
            revision: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// The rules now, sorted by name.
    pub fn rules(&self) -> Arc<[Rule]> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bucket revision the copy reflects.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Waits (up to `within`) until the copy holds every rule written before this
    /// call; returns how many rules it holds.
    pub async fn catch_up(&self, store: &Store, within: Duration) -> Result<usize, CatchUpError> {
        let wanted = store
            .doc_revision(Docs::Rules)
            .await
            .map_err(CatchUpError::Store)?;
        let mut seen = self.revision.subscribe();
        let reached = tokio::time::timeout(within, seen.wait_for(|r| *r >= wanted)).await;
        match reached {
            Ok(Ok(_)) => Ok(self.rules().len()),
            // The sender lives in `self`: it cannot be gone while we wait.
            Ok(Err(_)) | Err(_) => Err(CatchUpError::Behind {
                seen: self.revision(),
                wanted,
                waited: within,
            }),
        }
    }

    /// Keeps the copy equal to KV `rules` until `cancel`: watch, and after a failure
    /// start again (a new snapshot) with a jittered backoff.
    pub async fn follow(self, store: Store, cancel: CancellationToken) {
        crate::store::keep_watching("rules", RETRY_MIN, RETRY_MAX, &cancel, || {
            self.watch_once(&store)
        })
        .await;
    }

    /// One watch: the snapshot, swapped in whole, then live changes until it fails.
    /// Returns the failure and whether the snapshot was in.
    async fn watch_once(&self, store: &Store) -> (StoreError, bool) {
        let mut watch = match store.doc_watch::<Rule>(Docs::Rules).await {
            Ok(w) => w,
            Err(e) => return (e, false),
        };
        let mut fresh = BTreeMap::new();
        loop {
            match watch.next().await {
                Ok(DocEvent::Change { key, doc, .. }) => apply(&mut fresh, key, doc),
                Ok(DocEvent::Current { revision }) => {
                    tracing::info!(rules = fresh.len(), revision, "rules loaded");
                    self.publish(&fresh, revision);
                    break;
                }
                Err(e) => return (e, false),
            }
        }
        loop {
            match watch.next().await {
                Ok(DocEvent::Change { key, doc, revision }) => {
                    tracing::info!(rule = %key, revision, saved = doc.is_some(), "rules changed");
                    apply(&mut fresh, key, doc);
                    self.publish(&fresh, revision);
                }
                Ok(DocEvent::Current { .. }) => {}
                Err(e) => return (e, true),
            }
        }
    }

    /// Makes `rules` the copy, as of `revision`.
    fn publish(&self, rules: &BTreeMap<String, Rule>, revision: u64) {
        let list: Arc<[Rule]> = rules.values().cloned().collect();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = list;
        self.revision.send_modify(|r| *r = (*r).max(revision));
    }
}

/// One key's change: a saved rule replaces the key's entry, anything else removes it.
fn apply(rules: &mut BTreeMap<String, Rule>, key: String, doc: Option<Rule>) {
    match doc {
        Some(rule) => {
            rules.insert(key, rule);
        }
        None => {
            rules.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str) -> Rule {
        Rule::from_toml(&format!(
            "name = \"{name}\"\nprofile = \"p\"\nmatch_all = true\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn changes_replace_and_remove_by_key() {
        let mut rules = BTreeMap::new();
        apply(&mut rules, "b".into(), Some(rule("b")));
        apply(&mut rules, "a".into(), Some(rule("a")));
        apply(&mut rules, "b".into(), Some(rule("b")));
        assert_eq!(rules.keys().collect::<Vec<_>>(), ["a", "b"]);
        apply(&mut rules, "a".into(), None);
        apply(&mut rules, "zz".into(), None);
        assert_eq!(rules.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn the_revision_never_goes_back() {
        let cache = RulesCache::new();
        let mut rules = BTreeMap::new();
        apply(&mut rules, "a".into(), Some(rule("a")));
        cache.publish(&rules, 7);
        assert_eq!(cache.revision(), 7);
        assert_eq!(cache.rules().len(), 1);
        cache.publish(&BTreeMap::new(), 5);
        assert_eq!(cache.revision(), 7);
        assert!(cache.rules().is_empty());
    }
}
