//! The disk copy of a mirrored table ([`DiskCopy`]): saved atomically after every
//! change, loaded at start so the edge serves through a NATS outage.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use substruct_wire::SiteId;

use super::{Mirror, MirrorError, Table};

/// The on-disk form, read: `{ "version": 1, "site": "s1", "<DISK_FIELD>": { key: value } }`.
#[derive(Debug, Deserialize)]
struct DiskFileIn {
    #[serde(rename = "version")]
    _version: u32,
    site: SiteId,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// The on-disk form, written (fields in this order).
#[derive(Debug, Serialize)]
struct DiskFileOut<'a, V> {
    version: u32,
    site: &'a SiteId,
    #[serde(flatten)]
    entries: BTreeMap<&'static str, BTreeMap<String, V>>,
}

/// Where one site's entries of bucket `M` are kept on disk.
#[derive(Debug, Clone)]
pub struct DiskCopy<M> {
    /// The file (e.g. `state_dir/intents.json`).
    pub path: PathBuf,
    /// The site the copy belongs to; a file of another site is not loaded.
    pub site: SiteId,
    bucket: PhantomData<M>,
}

impl<M: Mirror> DiskCopy<M> {
    /// A disk copy at `path` for `site`.
    pub fn new(path: impl Into<PathBuf>, site: SiteId) -> Self {
        Self {
            path: path.into(),
            site,
            bucket: PhantomData,
        }
    }

    /// Writes `table` atomically (temp file, fsync, rename, fsync dir) with
    /// [`Mirror::DISK_MODE`].
    pub fn save(&self, table: &Table<M::Key, M::Value>) -> Result<(), MirrorError> {
        self.save_entries(table.snapshot())
    }

    /// [`DiskCopy::save`] of a table's contents.
    pub(super) fn save_entries(
        &self,
        entries: HashMap<M::Key, M::Value>,
    ) -> Result<(), MirrorError> {
        let entries = entries
            .into_iter()
            .map(|(key, value)| (M::disk_key(&key), value))
            .collect();
        let file = DiskFileOut {
            version: 1,
            site: &self.site,
            entries: BTreeMap::from([(M::DISK_FIELD, entries)]),
        };
        let err = |source| MirrorError::WriteCache {
            cache: M::CACHE_NAME,
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| err(std::io::Error::other(e)))?;
        write_atomically(&self.path, &bytes, M::DISK_MODE).map_err(err)
    }

    /// Reads what [`DiskCopy::save`] wrote. A missing file is an empty table; a file of
    /// another site is ignored (logged); entries whose key is bad are skipped (logged).
    pub fn load(&self) -> Result<Table<M::Key, M::Value>, MirrorError> {
        let table = Table::new();
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(table),
            Err(source) => {
                return Err(MirrorError::ReadCache {
                    cache: M::CACHE_NAME,
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let parse_err = |source| MirrorError::ParseCache {
            cache: M::CACHE_NAME,
            path: self.path.clone(),
            source,
        };
        let mut file: DiskFileIn = serde_json::from_slice(&bytes).map_err(parse_err)?;
        if file.site != self.site {
            tracing::warn!(path = %self.path.display(), cached = %file.site, site = %self.site,
                "{} belongs to another site; starting empty", M::CACHE_NAME);
            return Ok(table);
        }
        let entries = file.rest.remove(M::DISK_FIELD).ok_or_else(|| {
            parse_err(<serde_json::Error as serde::de::Error>::missing_field(
                M::DISK_FIELD,
            ))
        })?;
        let entries: BTreeMap<String, M::Value> =
            serde_json::from_value(entries).map_err(parse_err)?;
        let map = entries
            .into_iter()
            .filter_map(|(key, value)| Some((M::key_from_disk(&key, &value)?, value)))
            .collect();
        table.replace_all(map);
        Ok(table)
    }
}

/// Writes `bytes` to `path` atomically: a new temp file in the same directory created
/// with `mode` (before the umask), fsync, rename over `path`, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        // A leftover of a crashed run would keep its old mode: start from a new file.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_the_file_with_the_given_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/copy.json");
        write_atomically(&path, b"one", 0o600).unwrap();
        // A stale temp file of this process is replaced, not reused.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        std::fs::write(&tmp, b"stale").unwrap();
        write_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!Path::new(&tmp).exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}
