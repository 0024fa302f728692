//! Durable leases: one redb file, one table `leases` (MAC → address, expiry).
//! The server loads it at start and commits each batch's changes in one write
//! transaction (durability `Immediate`) before the batch's replies go out.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use substruct_wire::Mac;

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
    #[error("lease store {path}: background task failed")]
    Join {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A cloneable handle on the lease database. Clones share one open database;
/// reads ([`LeaseStore::load`]) may run beside the server's writes.
#[derive(Clone)]
pub struct LeaseStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for LeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseStore")
            .field("path", &self.path)
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

impl LeaseStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LeaseStoreError> {
        let path = path.as_ref().to_path_buf();
        let err = |what, source: redb::Error| LeaseStoreError::Redb {
            path: path.clone(),
            what,
            source: Box::new(source),
        };
        let db = Database::create(&path).map_err(|e| err("open", e.into()))?;
        let txn = db.begin_write().map_err(|e| err("begin", e.into()))?;
        txn.open_table(LEASES)
            .map_err(|e| err("create table", e.into()))?;
        txn.commit().map_err(|e| err("commit", e.into()))?;
        Ok(Self {
            db: Arc::new(db),
            path: Arc::new(path),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, what: &'static str, source: impl Into<redb::Error>) -> LeaseStoreError {
        LeaseStoreError::Redb {
            path: (*self.path).clone(),
            what,
            source: Box::new(source.into()),
        }
    }

    /// Runs `f` on the lease table in one read transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(redb::ReadOnlyTable<u64, (u32, u64)>) -> Result<T, LeaseStoreError>,
    ) -> Result<T, LeaseStoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.err("begin read", e))?;
        let table = txn
            .open_table(LEASES)
            .map_err(|e| self.err("open table", e))?;
        f(table)
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

    /// Applies `changes` in one durable write transaction.
    pub fn apply(&self, changes: &[LeaseChange]) -> Result<(), LeaseStoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| self.err("begin write", e))?;
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
        txn.commit().map_err(|e| self.err("commit", e))?;
        Ok(())
    }

    /// [`LeaseStore::apply`] on a blocking thread.
    pub async fn apply_async(&self, changes: Vec<LeaseChange>) -> Result<(), LeaseStoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.apply(&changes))
            .await
            .map_err(|source| LeaseStoreError::Join {
                path: (*self.path).clone(),
                source,
            })?
    }
}
