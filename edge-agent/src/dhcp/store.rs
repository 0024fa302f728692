//! Durable leases: one redb file, one table `leases` (MAC → address, expiry).
//! The server loads it at start and commits each batch's changes in one write
//! transaction (durability `Immediate`) before the batch's replies go out.
//!
//! # Failures
//! redb latches its first I/O error (a full disk, say): every later transaction on
//! that [`Database`] fails with "previous I/O error", reads included, even once the
//! disk has room again. So after a failed operation the store closes the database
//! and reopens it (redb repairs a file on open) at the next operation, at most once
//! per [`Recovery::reopen_interval`]; the operations in between fail at once with
//! [`LeaseStoreError::Closed`]. A failed commit never becomes visible: what was
//! committed before it stays as it was. Whether a failure that lasts should end the
//! process is the caller's call: [`LeaseStoreError::is_persistent`] says when the
//! store has given up hope of mending itself.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use substruct_wire::Mac;
use tracing::{info, warn};

use super::table::{Lease, LeaseChange};

/// MAC (48 bits in a u64) → (IPv4 as u32, expiry in UNIX seconds).
const LEASES: TableDefinition<u64, (u32, u64)> = TableDefinition::new("leases");

#[derive(Debug, thiserror::Error)]
pub enum LeaseStoreError {
    #[error("lease store {path}: {what}")]
    Redb {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    /// The database was closed after a failure and is not open again yet: either the
    /// next reopen is not due, or the last one failed (`source`).
    #[error(
        "lease store {path}: closed after a failure {broken_for:?} ago; \
         {attempts} reopen attempt(s) failed so far"
    )]
    Closed {
        path: PathBuf,
        /// Since the first failure of this run of failures.
        broken_for: Duration,
        /// Reopens tried and failed since then.
        attempts: u32,
        /// The last reopen failed for want of space (ENOSPC, EDQUOT).
        disk_full: bool,
        /// Whether the store has given up (see [`LeaseStoreError::is_persistent`]).
        gave_up: bool,
        /// Why the last reopen failed.
        #[source]
        source: Option<Arc<redb::Error>>,
    },
    #[error("lease store {path}: background task failed")]
    Join {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl LeaseStoreError {
    /// The store has been closed for at least [`Recovery::give_up_after`], at least
    /// [`Recovery::give_up_attempts`] reopens failed, and the last one failed for
    /// another reason than a full disk: reopening in this process is not going to mend
    /// it, a restart might (a fresh process, fresh file descriptors). A full disk is
    /// never persistent: a restart cannot make room, and the edge keeps serving what
    /// needs no new lease while it waits.
    pub fn is_persistent(&self) -> bool {
        matches!(self, LeaseStoreError::Closed { gave_up: true, .. })
    }

    /// Somewhere in the chain of causes the disk is full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            LeaseStoreError::Closed { disk_full, .. } => *disk_full,
            LeaseStoreError::Redb { source, .. } => redb_disk_full(source),
            LeaseStoreError::Join { .. } => false,
        }
    }
}

/// Whether `e` is an I/O error for want of space.
fn redb_disk_full(e: &redb::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    // redb's `Io` variants hold the io::Error directly rather than as a source.
    match e {
        redb::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ),
        _ => false,
    }
}

/// How the store mends itself after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Least time between two reopen attempts.
    pub reopen_interval: Duration,
    /// How long the store must have been closed before it gives up…
    pub give_up_after: Duration,
    /// …and how many reopens must have failed.
    pub give_up_attempts: u32,
}

impl Default for Recovery {
    /// Reopen at most once a second; give up after a minute and ten failed reopens.
    fn default() -> Self {
        Self {
            reopen_interval: Duration::from_secs(1),
            give_up_after: Duration::from_secs(60),
            give_up_attempts: 10,
        }
    }
}

/// A run of failures: since when, how many reopens failed, the last one's cause.
#[derive(Debug)]
struct Failure {
    since: Instant,
    /// The last reopen attempt; `None`: none yet (the next operation reopens at once).
    last_attempt: Option<Instant>,
    attempts: u32,
    last_error: Option<Arc<redb::Error>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    recovery: Recovery,
    /// The open database; `None` while closed after a failure. Every transaction runs
    /// under the read lock, so the write lock (reopening) waits until none is open and
    /// redb's file lock is free when the old database is dropped.
    db: RwLock<Option<Database>>,
    /// `Some` from a failed operation until a reopen succeeds.
    failure: Mutex<Option<Failure>>,
    /// Successful reopens so far.
    reopens: AtomicU64,
}

/// A cloneable handle on the lease database. Clones share one open database;
/// reads ([`LeaseStore::load`]) may run beside the server's writes.
#[derive(Clone)]
pub struct LeaseStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn mac_key(mac: &Mac) -> u64 {
    mac.0.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// A stored row as a [`Lease`].
fn lease(mac: Mac, (ip, expires): (u32, u64)) -> Lease {
    Lease {
        mac,
        ip: Ipv4Addr::from(ip),
        expires,
    }
}

fn key_mac(key: u64) -> Mac {
    let b = key.to_be_bytes();
    Mac([b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Opens (or creates, or repairs) the database at `path` and makes sure the table exists.
fn open_db(path: &Path) -> Result<Database, (&'static str, Box<redb::Error>)> {
    let err = |what, e: redb::Error| (what, Box::new(e));
    let db = Database::create(path).map_err(|e| err("open", e.into()))?;
    let txn = db.begin_write().map_err(|e| err("begin", e.into()))?;
    txn.open_table(LEASES)
        .map_err(|e| err("create table", e.into()))?;
    txn.commit().map_err(|e| err("commit", e.into()))?;
    Ok(db)
}

impl LeaseStore {
    /// Opens (or creates) the database at `path`, with the default [`Recovery`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LeaseStoreError> {
        Self::open_with(path, Recovery::default())
    }

    /// Opens (or creates) the database at `path`, mending failures as `recovery` says.
    pub fn open_with(path: impl AsRef<Path>, recovery: Recovery) -> Result<Self, LeaseStoreError> {
        let path = path.as_ref().to_path_buf();
        let db = open_db(&path).map_err(|(what, source)| LeaseStoreError::Redb {
            path: path.clone(),
            what,
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                recovery,
                db: RwLock::new(Some(db)),
                failure: Mutex::new(None),
                reopens: AtomicU64::new(0),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many times the database was reopened after a failure.
    pub fn reopens(&self) -> u64 {
        self.inner.reopens.load(Ordering::Relaxed)
    }

    fn err(&self, what: &'static str, source: impl Into<redb::Error>) -> LeaseStoreError {
        LeaseStoreError::Redb {
            path: self.inner.path.clone(),
            what,
            source: Box::new(source.into()),
        }
    }

    /// The [`LeaseStoreError::Closed`] error for the current run of failures.
    fn closed(&self, failure: &Failure, now: Instant) -> LeaseStoreError {
        let broken_for = now.saturating_duration_since(failure.since);
        let disk_full = failure.last_error.as_deref().is_some_and(redb_disk_full);
        let r = &self.inner.recovery;
        LeaseStoreError::Closed {
            path: self.inner.path.clone(),
            broken_for,
            attempts: failure.attempts,
            disk_full,
            gave_up: !disk_full
                && failure.attempts >= r.give_up_attempts
                && broken_for >= r.give_up_after,
            source: failure.last_error.clone(),
        }
    }

    /// After a failure: reopens the database if an attempt is due. `Err` when the
    /// database stays closed (not due, or the reopen failed).
    fn mend(&self) -> Result<(), LeaseStoreError> {
        let mut failure = self
            .inner
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(f) = failure.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        let due = f.last_attempt.is_none_or(|t| {
            now.saturating_duration_since(t) >= self.inner.recovery.reopen_interval
        });
        if !due {
            return Err(self.closed(f, now));
        }
        f.last_attempt = Some(now);
        // Wait for the transactions still open on the old database, then close it:
        // redb holds a lock on the file while it is open.
        let mut db = self
            .inner
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        drop(db.take());
        match open_db(&self.inner.path) {
            Ok(fresh) => {
                *db = Some(fresh);
                let (attempts, broken_for) =
                    (f.attempts + 1, now.saturating_duration_since(f.since));
                *failure = None;
                self.inner.reopens.fetch_add(1, Ordering::Relaxed);
                info!(path = %self.inner.path.display(), attempts, ?broken_for,
                    "lease store reopened after a failure");
                Ok(())
            }
            Err((what, e)) => {
                f.attempts += 1;
                warn!(path = %self.inner.path.display(), what, error = %e, attempts = f.attempts,
                    "lease store: reopening failed; will retry");
                f.last_error = Some(Arc::from(e));
                Err(self.closed(f, now))
            }
        }
    }

    /// Notes a failed operation (the next operation reopens the database); returns the
    /// run of failures as a [`LeaseStoreError::Closed`].
    fn failed(&self) -> LeaseStoreError {
        let mut failure = self
            .inner
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let f = failure.get_or_insert_with(|| Failure {
            since: now,
            last_attempt: None,
            attempts: 0,
            last_error: None,
        });
        self.closed(f, now)
    }

    /// Runs `f` on the open database (reopening it first if it failed before); a
    /// failure of `f` closes the database for the next operation to reopen.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, LeaseStoreError>,
    ) -> Result<T, LeaseStoreError> {
        self.mend()?;
        let db = self.inner.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(open) = db.as_ref() else {
            // Another caller's reopen failed between our `mend` and here.
            drop(db);
            return Err(self.failed());
        };
        let result = f(open);
        drop(db);
        if matches!(result, Err(LeaseStoreError::Redb { .. })) {
            let _ = self.failed();
        }
        result
    }

    /// Runs `f` on the lease table in one read transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(redb::ReadOnlyTable<u64, (u32, u64)>) -> Result<T, LeaseStoreError>,
    ) -> Result<T, LeaseStoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let table = txn
                .open_table(LEASES)
                .map_err(|e| self.err("open table", e))?;
            f(table)
        })
    }

    /// Every stored lease (expired ones too).
    pub fn load(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.read(|table| {
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| self.err("iterate", e))? {
                let (k, v) = row.map_err(|e| self.err("read row", e))?;
                out.push(lease(key_mac(k.value()), v.value()));
            }
            Ok(out)
        })
    }

    /// The stored lease of `mac` (possibly expired or released: compare `expires` with
    /// the clock). Read-only; the HTTP server asks it which address a MAC was given.
    pub fn lease_of(&self, mac: &Mac) -> Result<Option<Lease>, LeaseStoreError> {
        self.read(|table| {
            let row = table
                .get(mac_key(mac))
                .map_err(|e| self.err("read row", e))?;
            Ok(row.map(|v| lease(*mac, v.value())))
        })
    }

    /// Applies `changes` in one durable write transaction: all of them or (on `Err`)
    /// none.
    pub fn apply(&self, changes: &[LeaseChange]) -> Result<(), LeaseStoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.with_db(|db| {
            let mut txn = db.begin_write().map_err(|e| self.err("begin write", e))?;
            txn.set_durability(Durability::Immediate);
            {
                let mut table = txn
                    .open_table(LEASES)
                    .map_err(|e| self.err("open table", e))?;
                for c in changes {
                    match *c {
                        LeaseChange::Grant { mac, ip, expires } => {
                            table
                                .insert(mac_key(&mac), (u32::from(ip), expires))
                                .map_err(|e| self.err("insert", e))?;
                        }
                        LeaseChange::Release { mac, ip, at } => {
                            table
                                .insert(mac_key(&mac), (u32::from(ip), at))
                                .map_err(|e| self.err("insert", e))?;
                        }
                        LeaseChange::Forget { mac } => {
                            table
                                .remove(mac_key(&mac))
                                .map_err(|e| self.err("remove", e))?;
                        }
                    }
                }
            }
            txn.commit().map_err(|e| self.err("commit", e))
        })
    }

    /// [`LeaseStore::apply`] on a blocking thread.
    pub async fn apply_async(&self, changes: Vec<LeaseChange>) -> Result<(), LeaseStoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.apply(&changes))
            .await
            .map_err(|source| LeaseStoreError::Join {
                path: self.inner.path.clone(),
                source,
            })?
    }
}
