//! Following a fetch in progress: a response for an image that is still being fetched
//! into the cache reads the `.part` file as the fetch job writes it.
//!
//! The fetch job reports its progress on a watch channel ([`Progress`]: the file, bytes
//! written and flushed, and — set by the cache task once the job is applied — how it
//! ended). A [`Follow`] reads the bytes written so far with `pread` on its own handle of
//! the file (valid across the rename into place and across the removal of a failed
//! `.part`), waits for more, and holds back the last byte of what it was asked for until
//! the fetch is verified (sha256 and size; the job says so as soon as it has hashed
//! the content, before syncing it to disk): a response following a fetch that fails,
//! or whose content does not match, always ends short, never looking complete.

use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use substruct_wire::Sha256Digest;
use tokio::sync::watch;

use super::CacheError;

/// Most bytes one read of a followed file returns.
const FOLLOW_CHUNK: u64 = 1024 * 1024;

/// What a fetch job has done so far, as its followers see it.
#[derive(Debug, Clone, Default)]
pub(super) struct Progress {
    /// The `.part` file, opened for reading once created (with its path, for errors).
    pub(super) file: Option<(Arc<std::fs::File>, PathBuf)>,
    /// Bytes written (and flushed to the file) so far.
    pub(super) written: u64,
    /// Set by the fetch job as soon as all the content is written and hashed to its
    /// sha256 with the registered size, before it is synced and renamed into place:
    /// followers read through their own handle, so they need not wait for the disk.
    pub(super) verified: bool,
    /// How the fetch ended, once the cache task has applied it: `Ok` only when the
    /// content hashed to its sha256 with the registered size and is in place.
    pub(super) end: Option<Result<(), CacheError>>,
}

/// An image being fetched into the cache, which a response may follow
/// ([`Fetching::follow`]). Every follower of one sha256 shares the one fetch.
#[derive(Debug, Clone)]
pub struct Fetching {
    pub(super) sha256: Sha256Digest,
    pub(super) size: u64,
    pub(super) progress: watch::Receiver<Progress>,
}

impl Fetching {
    /// The registered size: what the fetch must deliver.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The content's digest.
    pub fn sha256(&self) -> &Sha256Digest {
        &self.sha256
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.progress.borrow().written
    }

    /// Waits, at most `limit`, until the fetch has reached the object store (its file
    /// is created) or has ended, so that a fetch that cannot start (the store is out of
    /// reach, the object is missing) is answered with its error rather than with a head
    /// followed by a cut body. A zero-byte image has nothing to hold back: it waits for
    /// its verdict. After `limit` a fetch still waiting for the store is followed all
    /// the same (its own stall timeout ends it), except a zero-byte one, which fails.
    pub(super) async fn started(&mut self, limit: std::time::Duration) -> Result<(), CacheError> {
        let size = self.size;
        let waited = tokio::time::timeout(limit, async {
            let p = self
                .progress
                .wait_for(|p| p.end.is_some() || p.verified || (size > 0 && p.file.is_some()))
                .await
                .map_err(|_| CacheError::Stopped)?;
            match &p.end {
                Some(Err(e)) if !p.verified => Err(e.clone()),
                _ => Ok(()),
            }
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) if size == 0 => Err(CacheError::Stalled {
                sha256: self.sha256.clone(),
                written: 0,
                after: limit,
            }),
            Err(_) => Ok(()),
        }
    }

    /// The bytes `start..start + count` (clamped to the size) as they are written. The
    /// last of them comes only once the fetch is verified; a failed fetch ends the
    /// follow with its error.
    pub fn follow(self, start: u64, count: u64) -> Follow {
        let end = start.saturating_add(count).min(self.size);
        Follow {
            sha256: self.sha256,
            progress: self.progress,
            next: start.min(end),
            end,
            over: false,
        }
    }
}

/// A range of a fetch in progress, read as it is written (see the module docs).
#[derive(Debug)]
pub struct Follow {
    sha256: Sha256Digest,
    progress: watch::Receiver<Progress>,
    /// The next offset to hand out.
    next: u64,
    /// Exclusive.
    end: u64,
    /// Finished or failed: nothing more.
    over: bool,
}

impl Follow {
    /// The next piece: `None` once all of it was handed out and the fetch is verified;
    /// an error (then `None`) when the fetch failed, did not match, or the cache stopped.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, CacheError>> {
        if self.over {
            return None;
        }
        let item = self.advance().await;
        if !matches!(item, Some(Ok(_))) {
            self.over = true;
        }
        item
    }

    async fn advance(&mut self) -> Option<Result<Bytes, CacheError>> {
        loop {
            let (file, limit, verified) = {
                let p = self.progress.borrow_and_update();
                match &p.end {
                    // Verified content stays good whatever happens to the file later.
                    _ if p.verified => (p.file.clone(), self.end, true),
                    Some(Err(e)) => return Some(Err(e.clone())),
                    Some(Ok(())) => (p.file.clone(), self.end, true),
                    // Never the last byte before the verdict.
                    None => (
                        p.file.clone(),
                        p.written.min(self.end.saturating_sub(1)),
                        false,
                    ),
                }
            };
            if self.next < limit {
                let Some((file, path)) = file else {
                    return Some(Err(CacheError::Stopped));
                };
                let (at, len) = (self.next, (limit - self.next).min(FOLLOW_CHUNK));
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, at).map(|()| buf)
                })
                .await;
                return Some(match read {
                    Ok(Ok(buf)) => {
                        self.next += len;
                        Ok(Bytes::from(buf))
                    }
                    Ok(Err(e)) => Err(CacheError::Read {
                        path,
                        source: Arc::new(e),
                    }),
                    Err(_) => Err(CacheError::Stopped),
                });
            }
            if verified {
                return None;
            }
            // The cache task (and with it the job) is gone: the fetch will not end well.
            if self.progress.changed().await.is_err() {
                tracing::debug!(sha256 = %self.sha256, "the fetch being followed stopped");
                return Some(Err(CacheError::Stopped));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// A part file with `bytes` written and a progress channel saying so.
    fn fetching(
        dir: &tempfile::TempDir,
        bytes: &[u8],
        size: u64,
    ) -> (watch::Sender<Progress>, Fetching) {
        let path = dir.path().join("x.part");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(bytes).unwrap();
        let reader = std::fs::File::open(&path).unwrap();
        let (tx, rx) = watch::channel(Progress {
            file: Some((Arc::new(reader), path)),
            written: bytes.len() as u64,
            verified: false,
            end: None,
        });
        let sha256 = Sha256Digest::new("0".repeat(64)).unwrap();
        let f = Fetching {
            sha256,
            size,
            progress: rx,
        };
        (tx, f)
    }

    async fn next(f: &mut Follow) -> Option<Result<Bytes, CacheError>> {
        tokio::time::timeout(std::time::Duration::from_secs(10), f.next_chunk())
            .await
            .unwrap()
    }

    /// Whether `f` is waiting (has nothing to hand out yet).
    async fn waits(f: &mut Follow) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(50), f.next_chunk())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn the_last_byte_waits_for_the_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, f) = fetching(&dir, b"hello", 5);
        let mut follow = f.follow(0, 5);
        // Everything written but the verdict: all but the last byte.
        assert_eq!(next(&mut follow).await.unwrap().unwrap(), &b"hell"[..]);
        assert!(waits(&mut follow).await);
        tx.send_modify(|p| p.end = Some(Ok(())));
        assert_eq!(next(&mut follow).await.unwrap().unwrap(), &b"o"[..]);
        assert!(next(&mut follow).await.is_none());
    }

    #[tokio::test]
    async fn a_range_follows_the_writes_and_holds_back_its_own_last_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, f) = fetching(&dir, b"ab", 10);
        let mut follow = f.follow(1, 3); // bytes 1..4
        assert_eq!(next(&mut follow).await.unwrap().unwrap(), &b"b"[..]);
        assert!(waits(&mut follow).await);
        let (_, path) = tx.borrow().file.clone().unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"cdefgh")
            .unwrap();
        tx.send_modify(|p| p.written = 8);
        assert_eq!(next(&mut follow).await.unwrap().unwrap(), &b"c"[..]);
        assert!(waits(&mut follow).await, "byte 3 is the range's last");
        tx.send_modify(|p| p.end = Some(Ok(())));
        assert_eq!(next(&mut follow).await.unwrap().unwrap(), &b"d"[..]);
        assert!(next(&mut follow).await.is_none());
    }

    #[tokio::test]
    async fn a_failed_or_abandoned_fetch_ends_the_follow_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, f) = fetching(&dir, b"hello", 100);
        let mut failed = f.clone().follow(0, 100);
        let mut abandoned = f.follow(0, 100);
        assert_eq!(next(&mut failed).await.unwrap().unwrap(), &b"hello"[..]);
        assert_eq!(next(&mut abandoned).await.unwrap().unwrap(), &b"hello"[..]);
        tx.send_modify(|p| p.end = Some(Err(CacheError::Offline)));
        assert!(matches!(
            next(&mut failed).await,
            Some(Err(CacheError::Offline))
        ));
        assert!(next(&mut failed).await.is_none(), "nothing after the error");
        // The sender dropped without a verdict (the cache task stopped).
        let dir2 = tempfile::tempdir().unwrap();
        let (tx2, f2) = fetching(&dir2, b"x", 100);
        let mut gone = f2.follow(0, 100);
        assert_eq!(next(&mut gone).await.unwrap().unwrap(), &b"x"[..]);
        drop(tx2);
        assert!(matches!(
            next(&mut gone).await,
            Some(Err(CacheError::Stopped))
        ));
        drop(tx);
        // The first follower saw the verdict before the drop: still that error's end.
        assert!(matches!(
            next(&mut abandoned).await,
            Some(Err(CacheError::Offline))
        ));
    }

    #[tokio::test]
    async fn the_verdict_before_the_sync_releases_the_last_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, f) = fetching(&dir, b"hello", 5);
        let mut follow = f.follow(0, 5);
        assert_eq!(next(&mut follow).await.unwrap().unwrap(), &b"hell"[..]);
        assert!(waits(&mut follow).await);
        // Hashed right; the file is still being synced and renamed (no end yet).
        tx.send_modify(|p| p.verified = true);
        assert_eq!(next(&mut follow).await.unwrap().unwrap(), &b"o"[..]);
        assert!(next(&mut follow).await.is_none());
        // A sync that fails afterwards does not spoil a verified follow.
        let mut late = Fetching {
            sha256: Sha256Digest::new("0".repeat(64)).unwrap(),
            size: 5,
            progress: tx.subscribe(),
        }
        .follow(0, 5);
        tx.send_modify(|p| p.end = Some(Err(CacheError::Stopped)));
        assert_eq!(next(&mut late).await.unwrap().unwrap(), &b"hello"[..]);
        assert!(next(&mut late).await.is_none());
    }

    #[tokio::test]
    async fn a_fetch_has_started_once_its_file_exists_or_it_failed() {
        let limit = std::time::Duration::from_secs(10);
        let dir = tempfile::tempdir().unwrap();
        let (_tx, mut f) = fetching(&dir, b"", 5);
        f.started(limit).await.unwrap();
        // Not at the store yet, then failed: the error, not a follow.
        let (tx, rx) = watch::channel(Progress::default());
        let mut f = Fetching {
            sha256: Sha256Digest::new("0".repeat(64)).unwrap(),
            size: 5,
            progress: rx,
        };
        let waiting = tokio::spawn(async move { f.started(limit).await });
        tx.send_modify(|p| p.end = Some(Err(CacheError::Offline)));
        assert!(matches!(waiting.await.unwrap(), Err(CacheError::Offline)));
    }

    #[tokio::test]
    async fn a_zero_byte_image_has_started_only_with_its_verdict() {
        let limit = std::time::Duration::from_secs(10);
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut f) = fetching(&dir, b"", 0);
        let mut waiting = tokio::spawn(async move { f.started(limit).await });
        // Its file exists: not enough for an empty image.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "an empty image looked ready before its verdict"
        );
        tx.send_modify(|p| p.verified = true);
        waiting.await.unwrap().unwrap();
        // A mismatch instead: its error.
        let (tx, mut f) = fetching(&dir, b"", 0);
        let waiting = tokio::spawn(async move { f.started(limit).await });
        let sha256 = Sha256Digest::new("0".repeat(64)).unwrap();
        tx.send_modify(|p| {
            p.end = Some(Err(CacheError::Mismatch {
                sha256: sha256.clone(),
                got: sha256.clone(),
                size: 1,
                expected_size: 0,
            }))
        });
        assert!(matches!(
            waiting.await.unwrap(),
            Err(CacheError::Mismatch { .. })
        ));
    }
}
