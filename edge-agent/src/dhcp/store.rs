//! Durable leases: one redb file, one table `leases` (MAC → address, expiry).
//! The server loads it at start and commits each batch's changes in one write
//! transaction (durability `Immediate`) before the batch's replies go out.
//!
//! # Failures
//! redb latches its first I/O error (a full disk, say): every later transaction on
//! that [`Database`] fails with "previous I/O error", reads included, even once the
//! disk has room again. So after a failed operation the store closes the database
//! and reopens it (redb repairs a file on open) at the next write or
//! [`LeaseStore::load`] (the DHCP server's committer, on a blocking thread), at most
//! once per [`Recovery::reopen_interval`]; the operations in between fail at once with
//! [`LeaseStoreError::Closed`]. [`LeaseStore::lease_of`] (called from async HTTP
//! handlers) never reopens and never waits for a reopen: while a failure is recorded
//! it fails at once with `Closed`. What was committed before a failed commit stays as
//! it was; the failed commit itself may or may not become visible (its final fsync can
//! fail after its header reached the page cache), so the caller writes its changes
//! again either way. Whether a failure that lasts should end the
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
/// DHCPv6: IAID (4 bytes, big-endian) followed by the client's DUID → (IPv6 as u128,
/// expiry in UNIX seconds).
const LEASES6: TableDefinition<&[u8], (u128, u64)> = TableDefinition::new("leases6");

/// DHCPv6 by address: IPv6 as u128 → (the holder's MAC as in [`LEASES`], expiry). Only
/// leases whose request showed the MAC; what [`LeaseStore::lease6_at`] reads.
const HOLDERS6: TableDefinition<u128, (u64, u64)> = TableDefinition::new("leases6_holders");

fn key6(duid: &[u8], iaid: u32) -> Vec<u8> {
    let mut k = iaid.to_be_bytes().to_vec();
    k.extend_from_slice(duid);
    k
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseStoreError {
    #[error("lease store {path}: {what}")]
    Redb {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Arc<redb::Error>,
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
        /// The cause in `source` is a want of space (ENOSPC, EDQUOT).
        disk_full: bool,
        /// Whether the store has given up (see [`LeaseStoreError::is_persistent`]).
        gave_up: bool,
        /// Why the last reopen failed; before any reopen was tried, the failure that
        /// closed the database.
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

/// A run of failures: since when, what started it, how many reopens failed, the last
/// one's cause.
#[derive(Debug)]
struct Failure {
    since: Instant,
    /// The failure that closed the database (`None`: not a redb error).
    cause: Option<Arc<redb::Error>>,
    /// The last reopen attempt; `None`: none yet (the next write reopens at once).
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
    /// Successful reopens so far: the generation of the open database. A failure seen
    /// on an older generation says nothing about the database open now.
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
fn open_db(path: &Path) -> Result<Database, (&'static str, Arc<redb::Error>)> {
    let err = |what, e: redb::Error| (what, Arc::new(e));
    let db = Database::create(path).map_err(|e| err("open", e.into()))?;
    let txn = db.begin_write().map_err(|e| err("begin", e.into()))?;
    txn.open_table(LEASES)
        .map_err(|e| err("create table", e.into()))?;
    txn.open_table(LEASES6)
        .map_err(|e| err("create table", e.into()))?;
    txn.open_table(HOLDERS6)
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
            source: Arc::new(source.into()),
        }
    }

    /// The [`LeaseStoreError::Closed`] error for the current run of failures.
    fn closed(&self, failure: &Failure, now: Instant) -> LeaseStoreError {
        let broken_for = now.saturating_duration_since(failure.since);
        let source = failure.last_error.clone().or_else(|| failure.cause.clone());
        let disk_full = source.as_deref().is_some_and(redb_disk_full);
        let r = &self.inner.recovery;
        LeaseStoreError::Closed {
            path: self.inner.path.clone(),
            broken_for,
            attempts: failure.attempts,
            disk_full,
            gave_up: !disk_full
                && failure.attempts >= r.give_up_attempts
                && broken_for >= r.give_up_after,
            source,
        }
    }

    fn failure(&self) -> std::sync::MutexGuard<'_, Option<Failure>> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The [`LeaseStoreError::Closed`] error when a failure is recorded.
    fn closed_now(&self) -> Option<LeaseStoreError> {
        let failure = self.failure();
        failure.as_ref().map(|f| self.closed(f, Instant::now()))
    }

    /// After a failure: reopens the database if an attempt is due. `Err` when the
    /// database stays closed (not due, or the reopen failed). Blocking (it waits for
    /// the open transactions, then creates, repairs and syncs the file): only writes
    /// and [`LeaseStore::load`], which run on blocking threads, call it.
    fn mend(&self) -> Result<(), LeaseStoreError> {
        let now = Instant::now();
        {
            let mut failure = self.failure();
            let Some(f) = failure.as_mut() else {
                return Ok(());
            };
            let due = f.last_attempt.is_none_or(|t| {
                now.saturating_duration_since(t) >= self.inner.recovery.reopen_interval
            });
            if !due {
                return Err(self.closed(f, now));
            }
            f.last_attempt = Some(now);
        }
        // Wait for the transactions still open on the old database, then close it:
        // redb holds a lock on the file while it is open. The failure record is not
        // held meanwhile, so readers are told `Closed` without waiting.
        let mut db = self
            .inner
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if self.failure().is_none() {
            // Another caller reopened it while we waited.
            return Ok(());
        }
        drop(db.take());
        let opened = open_db(&self.inner.path);
        let mut failure = self.failure();
        let f = failure.get_or_insert_with(|| Failure {
            since: now,
            cause: None,
            last_attempt: Some(now),
            attempts: 0,
            last_error: None,
        });
        match opened {
            Ok(fresh) => {
                *db = Some(fresh);
                let (attempts, broken_for) =
                    (f.attempts + 1, now.saturating_duration_since(f.since));
                // A new generation: failures of transactions on the old database,
                // reported late, are ignored from now on (see `failed`).
                self.inner.reopens.fetch_add(1, Ordering::AcqRel);
                *failure = None;
                info!(path = %self.inner.path.display(), attempts, ?broken_for,
                    "lease store reopened after a failure");
                Ok(())
            }
            Err((what, e)) => {
                f.attempts += 1;
                warn!(path = %self.inner.path.display(), what, error = %e, attempts = f.attempts,
                    "lease store: reopening failed; will retry");
                f.last_error = Some(e);
                Err(self.closed(f, now))
            }
        }
    }

    /// Notes a failed operation on the database of `generation` (the next write reopens
    /// it), caused by `cause`. A report about an older generation than the one open now
    /// is ignored: the database it failed on is already gone.
    fn failed(&self, generation: u64, cause: Option<Arc<redb::Error>>) {
        let mut failure = self.failure();
        // Bumped under this lock (in `mend`): a reopen cannot slip in between.
        if generation != self.inner.reopens.load(Ordering::Acquire) {
            return;
        }
        if failure.is_none() {
            if let Some(e) = &cause {
                warn!(path = %self.inner.path.display(), error = %e,
                    disk_full = redb_disk_full(e), "lease store failed; closing it until a reopen");
            }
            *failure = Some(Failure {
                since: Instant::now(),
                cause,
                last_attempt: None,
                attempts: 0,
                last_error: None,
            });
        }
    }

    /// Runs `f` on the open database; a failure of `f` closes the database for the next
    /// write to reopen. With `mend`, reopens it first if it failed before (blocking);
    /// without, fails at once with `Closed` while a failure is recorded or a reopen runs.
    fn with_db<T>(
        &self,
        mend: bool,
        f: impl FnOnce(&Database) -> Result<T, LeaseStoreError>,
    ) -> Result<T, LeaseStoreError> {
        let db = if mend {
            self.mend()?;
            self.inner.db.read().unwrap_or_else(PoisonError::into_inner)
        } else {
            if let Some(closed) = self.closed_now() {
                return Err(closed);
            }
            match self.inner.db.try_read() {
                Ok(db) => db,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                // A reopen is running (or just ended): never wait for one here.
                Err(std::sync::TryLockError::WouldBlock) => match self.closed_now() {
                    Some(closed) => return Err(closed),
                    None => self.inner.db.read().unwrap_or_else(PoisonError::into_inner),
                },
            }
        };
        let generation = self.inner.reopens.load(Ordering::Acquire);
        let Some(open) = db.as_ref() else {
            // Another caller's reopen failed between our check and here.
            drop(db);
            return Err(self.closed_now().unwrap_or_else(|| {
                self.failed(generation, None);
                self.closed_now().unwrap_or(LeaseStoreError::Closed {
                    path: self.inner.path.clone(),
                    broken_for: Duration::ZERO,
                    attempts: 0,
                    disk_full: false,
                    gave_up: false,
                    source: None,
                })
            }));
        };
        let result = f(open);
        drop(db);
        if let Err(LeaseStoreError::Redb { source, .. }) = &result {
            self.failed(generation, Some(source.clone()));
        }
        result
    }

    /// Runs `f` on the lease table in one read transaction (see [`LeaseStore::with_db`]
    /// for `mend`).
    fn read<T>(
        &self,
        mend: bool,
        f: impl FnOnce(redb::ReadOnlyTable<u64, (u32, u64)>) -> Result<T, LeaseStoreError>,
    ) -> Result<T, LeaseStoreError> {
        self.with_db(mend, |db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let table = txn
                .open_table(LEASES)
                .map_err(|e| self.err("open table", e))?;
            f(table)
        })
    }

    /// Every stored lease (expired ones too). Blocking: after a failure it reopens the
    /// database first (if due), like a write.
    pub fn load(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.read(true, |table| {
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| self.err("iterate", e))? {
                let (k, v) = row.map_err(|e| self.err("read row", e))?;
                out.push(lease(key_mac(k.value()), v.value()));
            }
            Ok(out)
        })
    }

    /// The stored lease of `mac` (possibly expired or released: compare `expires` with
    /// the clock). Read-only; the HTTP server asks it which address a MAC was given,
    /// from async handlers: it never reopens the database nor waits for a reopen (a
    /// recorded failure answers `Closed` at once; the next write mends it).
    pub fn lease_of(&self, mac: &Mac) -> Result<Option<Lease>, LeaseStoreError> {
        self.read(false, |table| {
            let row = table
                .get(mac_key(mac))
                .map_err(|e| self.err("read row", e))?;
            Ok(row.map(|v| lease(*mac, v.value())))
        })
    }

    /// Applies `changes` in one durable write transaction: all of them or (on `Err`)
    /// none. Blocking: after a failure it reopens the database first (if due).
    pub fn apply(&self, changes: &[LeaseChange]) -> Result<(), LeaseStoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.with_db(true, |db| {
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

    /// Every stored DHCPv6 lease (expired ones too). Blocking, like [`LeaseStore::load`].
    pub fn load6(&self) -> Result<Vec<crate::dhcp6::Lease6>, LeaseStoreError> {
        self.with_db(true, |db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let table = txn
                .open_table(LEASES6)
                .map_err(|e| self.err("open table", e))?;
            let holders = txn
                .open_table(HOLDERS6)
                .map_err(|e| self.err("open table", e))?;
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| self.err("iterate", e))? {
                let (k, v) = row.map_err(|e| self.err("read row", e))?;
                let k = k.value();
                let (Some(iaid), Some(duid)) = (k.get(..4), k.get(4..)) else {
                    continue;
                };
                let (addr, expires) = v.value();
                // The holder row is this lease's when it was written with it (same expiry).
                let mac = holders
                    .get(addr)
                    .map_err(|e| self.err("read row", e))?
                    .map(|h| h.value())
                    .filter(|&(_, until)| until == expires)
                    .map(|(mac, _)| key_mac(mac));
                out.push(crate::dhcp6::Lease6 {
                    duid: duid.to_vec(),
                    iaid: u32::from_be_bytes([iaid[0], iaid[1], iaid[2], iaid[3]]),
                    addr: std::net::Ipv6Addr::from(addr),
                    expires,
                    mac,
                });
            }
            Ok(out)
        })
    }

    /// The MAC the DHCPv6 lease of `addr` was given to and the lease's expiry (possibly
    /// past), when the request showed a MAC. Read-only and non-blocking on failure, like
    /// [`LeaseStore::lease_of`].
    pub fn lease6_at(
        &self,
        addr: std::net::Ipv6Addr,
    ) -> Result<Option<(Mac, u64)>, LeaseStoreError> {
        self.with_db(false, |db| {
            let txn = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let table = txn
                .open_table(HOLDERS6)
                .map_err(|e| self.err("open table", e))?;
            let row = table
                .get(u128::from(addr))
                .map_err(|e| self.err("read row", e))?;
            Ok(row.map(|v| {
                let (mac, expires) = v.value();
                (key_mac(mac), expires)
            }))
        })
    }

    /// Applies DHCPv6 `changes` in one durable write transaction, like
    /// [`LeaseStore::apply`].
    pub fn apply6(&self, changes: &[crate::dhcp6::Lease6Change]) -> Result<(), LeaseStoreError> {
        use crate::dhcp6::Lease6Change;
        if changes.is_empty() {
            return Ok(());
        }
        self.with_db(true, |db| {
            let mut txn = db.begin_write().map_err(|e| self.err("begin write", e))?;
            txn.set_durability(Durability::Immediate);
            {
                let mut table = txn
                    .open_table(LEASES6)
                    .map_err(|e| self.err("open table", e))?;
                let mut holders = txn
                    .open_table(HOLDERS6)
                    .map_err(|e| self.err("open table", e))?;
                for c in changes {
                    match c {
                        Lease6Change::Grant(l) => {
                            let addr = u128::from(l.addr);
                            table
                                .insert(key6(&l.duid, l.iaid).as_slice(), (addr, l.expires))
                                .map_err(|e| self.err("insert", e))?;
                            // The address's holder is this lease's MAC (the lease table
                            // keeps a client's MAC across renewals that show none), or
                            // nobody known: never a previous holder's.
                            match l.mac {
                                Some(mac) => {
                                    holders.insert(addr, (mac_key(&mac), l.expires)).map(drop)
                                }
                                None => holders.remove(addr).map(drop),
                            }
                            .map_err(|e| self.err("insert", e))?;
                        }
                        Lease6Change::Forget { duid, iaid } => {
                            let gone = table
                                .remove(key6(duid, *iaid).as_slice())
                                .map_err(|e| self.err("remove", e))?
                                .map(|v| v.value().0);
                            if let Some(addr) = gone {
                                holders.remove(addr).map_err(|e| self.err("remove", e))?;
                            }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn grant(n: u8) -> LeaseChange {
        LeaseChange::Grant {
            mac: Mac([0x52, 0x54, 0, 0, 0, n]),
            ip: Ipv4Addr::new(10, 0, 0, n),
            expires: 2_000_000_000,
        }
    }

    fn store(dir: &tempfile::TempDir) -> LeaseStore {
        let recovery = Recovery {
            reopen_interval: Duration::ZERO,
            ..Recovery::default()
        };
        LeaseStore::open_with(dir.path().join("leases.redb"), recovery).unwrap()
    }

    #[test]
    fn a_read_never_reopens_the_next_write_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.apply(&[grant(1)]).unwrap();
        store.failed(0, None);
        let read = store.lease_of(&Mac([0x52, 0x54, 0, 0, 0, 1]));
        assert!(
            matches!(read, Err(LeaseStoreError::Closed { attempts: 0, .. })),
            "{read:?}"
        );
        assert_eq!(store.reopens(), 0, "a read reopened the store");
        store.apply(&[grant(2)]).unwrap();
        assert_eq!(store.reopens(), 1);
        let read = store.lease_of(&Mac([0x52, 0x54, 0, 0, 0, 1])).unwrap();
        assert_eq!(read.map(|l| l.ip), Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn a_late_failure_from_an_older_database_leaves_the_reopened_one_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        // A transaction on generation 0 fails; the store is reopened (generation 1)…
        store.failed(0, None);
        store.apply(&[grant(1)]).unwrap();
        assert_eq!(store.reopens(), 1);
        // …and another transaction that failed on generation 0 reports it only now.
        store.failed(0, None);
        let read = store.lease_of(&Mac([0x52, 0x54, 0, 0, 0, 1]));
        assert!(matches!(read, Ok(Some(_))), "{read:?}");
        // A failure on the database open now still counts.
        store.failed(1, None);
        assert!(matches!(
            store.lease_of(&Mac([0x52, 0x54, 0, 0, 0, 1])),
            Err(LeaseStoreError::Closed { .. })
        ));
    }
}
