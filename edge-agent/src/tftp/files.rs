//! What the TFTP server may serve: generated files held in memory, well-known names mapped to
//! fixed paths (the boot loaders of Debian packages), and files under an ordered list of root
//! directories. Nothing outside a root is ever served.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// Where the boot loaders of the Debian packages `pxelinux`, `syslinux-common` and `ipxe` live.
pub const DEBIAN_LOADERS: &[(&str, &str)] = &[
    ("pxelinux.0", "/usr/lib/PXELINUX/pxelinux.0"),
    ("lpxelinux.0", "/usr/lib/PXELINUX/lpxelinux.0"),
    ("ldlinux.c32", "/usr/lib/syslinux/modules/bios/ldlinux.c32"),
    ("undionly.kpxe", "/usr/lib/ipxe/undionly.kpxe"),
    ("ipxe.efi", "/usr/lib/ipxe/ipxe.efi"),
    ("snponly.efi", "/usr/lib/ipxe/snponly.efi"),
    ("ipxe.lkrn", "/usr/lib/ipxe/ipxe.lkrn"),
    // Secure Boot: Debian's shim (signed by Microsoft's UEFI CA) loads `grubx64.efi` from
    // the same server, Debian's signed network GRUB (packages shim-signed, grub-efi-amd64-signed).
    ("shimx64.efi", "/usr/lib/shim/shimx64.efi.signed"),
    (
        "grubx64.efi",
        "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
    ),
];

/// Files rendered per request from who asks (e.g. a machine's GRUB config). `render`
/// answers `None` for names it does not own; the lookup then goes on as usual.
pub trait Rendered: Send + Sync + std::fmt::Debug {
    /// The file `name` (normalized) for the client at `peer`.
    fn render(&self, name: &str, peer: IpAddr) -> Option<Bytes>;
}

/// The set of files the TFTP server serves. Cheap to clone; clones share the generated map, so
/// the agent keeps one clone and updates generated files while the server runs.
#[derive(Debug, Clone, Default)]
pub struct TftpFiles {
    roots: Arc<Vec<PathBuf>>,
    mapped: Arc<HashMap<String, PathBuf>>,
    generated: Arc<RwLock<HashMap<String, Bytes>>>,
    /// `(prefix, dir)`: a name `prefix/rest` is `rest` under `dir`, and never outside it.
    prefixed: Arc<Vec<(String, PathBuf)>>,
    rendered: Option<Arc<dyn Rendered>>,
}

/// Why a name could not be served.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The name tries to leave the roots (`..`, NUL, a symlink pointing outside).
    #[error("access violation: {0}")]
    AccessViolation(&'static str),
    /// No generated, mapped or root file has this name.
    #[error("file not found")]
    NotFound,
    /// The file exists but could not be opened or read.
    #[error("cannot open {path}")]
    Open {
        /// The path tried.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An opened file ready to be served.
#[derive(Debug, Clone)]
pub enum Source {
    /// A generated file.
    Memory(Bytes),
    /// A file on disk and its length when opened.
    Disk {
        /// The open file, shared with blocking reader tasks.
        file: Arc<File>,
        /// Its length.
        len: u64,
    },
}

impl Source {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Source::Memory(b) => b.len() as u64,
            Source::Disk { len, .. } => *len,
        }
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TftpFiles {
    /// Serves files under `roots`, searched in order.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        TftpFiles {
            roots: Arc::new(roots),
            ..Default::default()
        }
    }

    /// Serves the Debian boot loaders ([`DEBIAN_LOADERS`]) by their well-known names, plus files
    /// under `roots`.
    pub fn debian_loaders(roots: Vec<PathBuf>) -> Self {
        let mut files = Self::new(roots);
        for (name, path) in DEBIAN_LOADERS {
            files = files.with_mapped(name, path);
        }
        files
    }

    /// Serves the file at `path` under the name `name` (normalized like a request). Mapped
    /// files are explicit operator choices and may live outside the roots.
    pub fn with_mapped(mut self, name: &str, path: impl Into<PathBuf>) -> Self {
        if let Ok(key) = normalize(name) {
            Arc::make_mut(&mut self.mapped).insert(key, path.into());
        }
        self
    }

    /// Serves the files under `dir` as `prefix/…` (e.g. the images directory as
    /// `images/…`, for GRUB, which loads kernels over TFTP).
    pub fn with_prefix_root(mut self, prefix: &str, dir: impl Into<PathBuf>) -> Self {
        if let Ok(key) = normalize(prefix) {
            Arc::make_mut(&mut self.prefixed).push((key, dir.into()));
        }
        self
    }

    /// Asks `rendered` first for every request that names its client.
    pub fn with_rendered(mut self, rendered: Arc<dyn Rendered>) -> Self {
        self.rendered = Some(rendered);
        self
    }

    /// Adds or replaces a generated file, visible to new requests at once.
    pub fn set_generated(&self, name: &str, contents: impl Into<Bytes>) {
        if let Ok(key) = normalize(name) {
            self.write_generated().insert(key, contents.into());
        }
    }

    /// Removes a generated file.
    pub fn remove_generated(&self, name: &str) {
        if let Ok(key) = normalize(name) {
            self.write_generated().remove(&key);
        }
    }

    /// Replaces the whole generated map at once.
    pub fn replace_generated(&self, files: impl IntoIterator<Item = (String, Bytes)>) {
        let map: HashMap<String, Bytes> = files
            .into_iter()
            .filter_map(|(name, bytes)| normalize(&name).ok().map(|k| (k, bytes)))
            .collect();
        *self.write_generated() = map;
    }

    fn write_generated(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Bytes>> {
        // A writer cannot leave the map half-updated, so a poisoned lock is still consistent.
        self.generated.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds and opens `name` for any client: see [`TftpFiles::open_for`].
    pub fn open(&self, name: &str) -> Result<Source, LookupError> {
        self.open_for(name, None)
    }

    /// Finds and opens `name` for the client at `peer`: rendered files first (only with a
    /// `peer`), then generated files, mapped names, prefixed roots and each root in order.
    /// Blocking (file system calls): run it off the async threads.
    pub fn open_for(&self, name: &str, peer: Option<IpAddr>) -> Result<Source, LookupError> {
        let key = normalize(name)?;
        if let (Some(rendered), Some(peer)) = (&self.rendered, peer) {
            if let Some(bytes) = rendered.render(&key, peer) {
                return Ok(Source::Memory(bytes));
            }
        }
        if let Some(bytes) = self
            .generated
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Source::Memory(bytes.clone()));
        }
        if let Some(path) = self.mapped.get(&key) {
            match open_regular(path) {
                Err(LookupError::NotFound) => {}
                other => return other,
            }
        }
        for (prefix, dir) in self.prefixed.iter() {
            let Some(rest) = key
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            return open_under(dir, rest);
        }
        let mut escaped = false;
        for root in self.roots.iter() {
            let Ok(root) = root.canonicalize() else {
                continue;
            };
            let Ok(candidate) = root.join(&key).canonicalize() else {
                continue;
            };
            if !candidate.starts_with(&root) {
                escaped = true;
                continue;
            }
            match open_regular(&candidate) {
                Err(LookupError::NotFound) => {}
                other => return other,
            }
        }
        if escaped {
            Err(LookupError::AccessViolation(
                "path resolves outside the root",
            ))
        } else {
            Err(LookupError::NotFound)
        }
    }
}

/// `rest` under `dir`, refused when it resolves (through a symlink) outside `dir`.
fn open_under(dir: &Path, rest: &str) -> Result<Source, LookupError> {
    let (Ok(root), Ok(candidate)) = (dir.canonicalize(), dir.join(rest).canonicalize()) else {
        return Err(LookupError::NotFound);
    };
    if !candidate.starts_with(&root) {
        return Err(LookupError::AccessViolation(
            "path resolves outside the root",
        ));
    }
    open_regular(&candidate)
}

fn open_regular(path: &Path) -> Result<Source, LookupError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LookupError::NotFound),
        Err(source) => {
            return Err(LookupError::Open {
                path: path.to_owned(),
                source,
            })
        }
    };
    let meta = file.metadata().map_err(|source| LookupError::Open {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(LookupError::NotFound);
    }
    Ok(Source::Disk {
        file: Arc::new(file),
        len: meta.len(),
    })
}

/// Turns a requested name into a relative path without `.`/`..`: backslashes become slashes,
/// leading slashes are dropped (a name is always relative to the root), `..` and NUL are refused.
pub fn normalize(name: &str) -> Result<String, LookupError> {
    if name.contains('\0') {
        return Err(LookupError::AccessViolation("NUL in file name"));
    }
    let name = name.replace('\\', "/");
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(LookupError::AccessViolation("'..' in file name")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(LookupError::NotFound);
    }
    let joined = parts.join("/");
    // Belt and braces: the result must be a plain relative path.
    if !Path::new(&joined)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(LookupError::AccessViolation("not a plain relative path"));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names() {
        assert_eq!(
            normalize("/pxelinux.cfg/default").unwrap(),
            "pxelinux.cfg/default"
        );
        assert_eq!(normalize("\\boot\\x.efi").unwrap(), "boot/x.efi");
        assert_eq!(normalize("a//./b").unwrap(), "a/b");
        assert!(matches!(
            normalize("../etc/passwd"),
            Err(LookupError::AccessViolation(_))
        ));
        assert!(matches!(
            normalize("a\\..\\..\\b"),
            Err(LookupError::AccessViolation(_))
        ));
        assert!(matches!(
            normalize("a\0b"),
            Err(LookupError::AccessViolation(_))
        ));
        assert!(matches!(normalize("/"), Err(LookupError::NotFound)));
    }

    #[derive(Debug)]
    struct Echo;
    impl Rendered for Echo {
        fn render(&self, name: &str, peer: IpAddr) -> Option<Bytes> {
            name.starts_with("r/")
                .then(|| Bytes::from(format!("{name} for {peer}")))
        }
    }

    #[test]
    fn rendered_per_asker_and_prefixed_roots_stay_inside() {
        let images = tempfile::tempdir().unwrap();
        std::fs::create_dir(images.path().join("prospector")).unwrap();
        std::fs::write(images.path().join("prospector/vmlinuz"), b"kernel").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), images.path().join("link"))
            .unwrap();
        let files = TftpFiles::new(Vec::new())
            .with_prefix_root("images", images.path())
            .with_rendered(Arc::new(Echo));
        let peer: IpAddr = "10.77.0.9".parse().unwrap();
        match files.open_for("/r/x", Some(peer)) {
            Ok(Source::Memory(b)) => assert_eq!(&b[..], b"r/x for 10.77.0.9"),
            other => panic!("{other:?}"),
        }
        // without an asker nothing is rendered
        assert!(matches!(files.open("r/x"), Err(LookupError::NotFound)));
        assert!(matches!(
            files.open_for("images/prospector/vmlinuz", Some(peer)),
            Ok(Source::Disk { len: 6, .. })
        ));
        assert!(matches!(
            files.open("images/link"),
            Err(LookupError::AccessViolation(_))
        ));
        assert!(matches!(
            files.open("images/../etc/passwd"),
            Err(LookupError::AccessViolation(_))
        ));
        assert!(matches!(
            files.open("images/nope"),
            Err(LookupError::NotFound)
        ));
        assert!(matches!(
            files.open("imagesx/prospector/vmlinuz"),
            Err(LookupError::NotFound)
        ));
    }

    #[test]
    fn generated_before_roots_and_updates_live() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pxelinux.cfg")).unwrap();
        std::fs::write(dir.path().join("pxelinux.cfg/default"), b"disk").unwrap();
        let files = TftpFiles::new(vec![dir.path().to_owned()]);
        let clone = files.clone();
        assert!(matches!(
            files.open("pxelinux.cfg/default"),
            Ok(Source::Disk { len: 4, .. })
        ));
        clone.set_generated("/pxelinux.cfg/default", &b"generated"[..]);
        match files.open("pxelinux.cfg/default") {
            Ok(Source::Memory(b)) => assert_eq!(&b[..], b"generated"),
            other => panic!("{other:?}"),
        }
        clone.remove_generated("pxelinux.cfg/default");
        assert!(matches!(
            files.open("pxelinux.cfg/default"),
            Ok(Source::Disk { .. })
        ));
    }

    #[test]
    fn roots_are_searched_in_order_and_directories_are_not_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("x"), b"from b").unwrap();
        std::fs::create_dir(a.path().join("d")).unwrap();
        let files = TftpFiles::new(vec![a.path().to_owned(), b.path().to_owned()]);
        assert!(matches!(files.open("x"), Ok(Source::Disk { len: 6, .. })));
        assert!(matches!(files.open("d"), Err(LookupError::NotFound)));
        assert!(matches!(files.open("missing"), Err(LookupError::NotFound)));
    }

    #[test]
    fn symlink_out_of_root_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        std::fs::write(root.path().join("inside"), b"ok").unwrap();
        std::os::unix::fs::symlink(root.path().join("inside"), root.path().join("good")).unwrap();
        let files = TftpFiles::new(vec![root.path().to_owned()]);
        assert!(matches!(
            files.open("link"),
            Err(LookupError::AccessViolation(_))
        ));
        assert!(matches!(
            files.open("good"),
            Ok(Source::Disk { len: 2, .. })
        ));
    }

    #[test]
    fn mapped_names_point_at_fixed_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real.bin"), b"loader").unwrap();
        let files = TftpFiles::new(vec![]).with_mapped("/loader.0", dir.path().join("real.bin"));
        assert!(matches!(
            files.open("loader.0"),
            Ok(Source::Disk { len: 6, .. })
        ));
        let debian = TftpFiles::debian_loaders(vec![]);
        assert_eq!(
            debian.mapped.get("lpxelinux.0").map(PathBuf::as_path),
            Some(Path::new("/usr/lib/PXELINUX/lpxelinux.0"))
        );
    }
}
