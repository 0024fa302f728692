//! The image cache's decisions, as pure functions of its state and of what the disk
//! shows: which files to keep at start, whether a request is served, hashed again or
//! fetched, whether a hashed file is good, and which files to evict. No I/O, no clock
//! (file stamps come in as arguments); the owner task in [`super`] does the I/O.

use std::collections::HashMap;
use std::time::SystemTime;

use substruct_wire::Sha256Digest;

/// A file's size and modification time when it was looked at: a change of either
/// means the file must be hashed again before it is served.
pub(super) type Stamp = (u64, SystemTime);

/// The name → sha256 index kept in the cache directory.
pub(super) const NAMES_FILE: &str = "names.json";

/// Counters for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests answered from a verified file.
    pub hits: u64,
    /// Files fetched from the object store.
    pub fetches: u64,
    /// Files removed because they did not hash to their name (or could not be read).
    pub corrupt: u64,
    /// Files removed to stay under the cap.
    pub evictions: u64,
    /// Fetches running now.
    pub fetching: u64,
    /// Responses that followed a fetch in progress instead of waiting for it.
    pub streams: u64,
}

/// What a file found in the cache directory at start is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// A `{sha256}` file: indexed, unverified.
    Image(Sha256Digest),
    /// The name index: kept.
    Names,
    /// A half-written `.part` file or anything else: removed.
    Stray,
}

/// Classifies one directory entry at start.
pub(super) fn classify(file_name: &str, is_file: bool) -> Found {
    if !is_file {
        return Found::Stray;
    }
    if file_name == NAMES_FILE {
        return Found::Names;
    }
    match Sha256Digest::parse(file_name) {
        Ok(sha) => Found::Image(sha),
        Err(_) => Found::Stray,
    }
}

/// What a request for a sha256 needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// The file hashed right and has not changed since: serve it.
    Serve,
    /// The file is there but not verified in this run, or changed since: hash it.
    Verify,
    /// No usable file: fetch it.
    Fetch,
}

/// How a hashed file compares with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It hashes to its name (and has the expected size): servable.
    Good,
    /// It does not hash to its name, or has another size: damaged or half-written.
    Corrupt,
    /// It could not be read.
    Unreadable,
}

/// Judges a hashed file: `stamp` is what the file looked like before hashing, `hashed`
/// the hash (or why it could not be made), `expected_size` the registry's size if known.
pub(super) fn verdict(
    sha: &Sha256Digest,
    expected_size: Option<u64>,
    stamp: Option<Stamp>,
    hashed: &std::io::Result<Sha256Digest>,
) -> Verdict {
    match (stamp, hashed) {
        (Some((len, _)), Ok(got)) if got == sha && expected_size.is_none_or(|s| s == len) => {
            Verdict::Good
        }
        (Some(_), Ok(_)) => Verdict::Corrupt,
        _ => Verdict::Unreadable,
    }
}

#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    last_used: u64,
    /// The stamp when it last hashed right; `None`: not verified in this run.
    verified: Option<Stamp>,
}

/// The cached files: size, last use, verification. Owned by the cache task.
#[derive(Debug)]
pub(super) struct Index {
    entries: HashMap<Sha256Digest, Entry>,
    clock: u64,
    cap: u64,
}

impl Index {
    /// An empty index for a cache of at most `cap` bytes.
    pub(super) fn new(cap: u64) -> Self {
        Self {
            entries: HashMap::new(),
            clock: 0,
            cap,
        }
    }

    /// The cap in bytes.
    pub(super) fn cap(&self) -> u64 {
        self.cap
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Indexes a file found at start (unverified; the order found is the LRU order).
    pub(super) fn found(&mut self, sha: Sha256Digest, size: u64) {
        let last_used = self.tick();
        self.entries.insert(
            sha,
            Entry {
                size,
                last_used,
                verified: None,
            },
        );
    }

    /// What a request for `sha` needs, given the file's stamp now (`None`: no file).
    pub(super) fn next(&self, sha: &Sha256Digest, on_disk: Option<Stamp>) -> Next {
        match (self.entries.get(sha), on_disk) {
            (None, _) | (Some(_), None) => Next::Fetch,
            (Some(e), Some(stamp)) if e.verified == Some(stamp) => Next::Serve,
            (Some(_), Some(_)) => Next::Verify,
        }
    }

    /// Marks `sha` used now (LRU).
    pub(super) fn touch(&mut self, sha: &Sha256Digest) {
        let now = self.tick();
        if let Some(e) = self.entries.get_mut(sha) {
            e.last_used = now;
        }
    }

    /// Records that the file of `sha` hashed right when it looked like `stamp`.
    pub(super) fn verified(&mut self, sha: &Sha256Digest, stamp: Stamp) {
        let now = self.tick();
        if let Some(e) = self.entries.get_mut(sha) {
            e.size = stamp.0;
            e.verified = Some(stamp);
            e.last_used = now;
        }
    }

    /// Records a fetched (hence verified) file.
    pub(super) fn fetched(&mut self, sha: Sha256Digest, stamp: Stamp) {
        let last_used = self.tick();
        self.entries.insert(
            sha,
            Entry {
                size: stamp.0,
                last_used,
                verified: Some(stamp),
            },
        );
    }

    /// Forgets `sha` (its file is gone or being removed).
    pub(super) fn forget(&mut self, sha: &Sha256Digest) {
        self.entries.remove(sha);
    }

    /// Chooses the least recently used files to remove until the cache fits its cap,
    /// never one `protected` (being fetched, hashed or served right now), and forgets
    /// them. The caller deletes the files, outside the index.
    pub(super) fn evict(&mut self, protected: impl Fn(&Sha256Digest) -> bool) -> Vec<Sha256Digest> {
        let mut candidates: Vec<(u64, Sha256Digest)> = self
            .entries
            .iter()
            .filter(|(sha, _)| !protected(sha))
            .map(|(sha, e)| (e.last_used, sha.clone()))
            .collect();
        candidates.sort();
        let mut total = self.size();
        let mut victims = Vec::new();
        for (_, sha) in candidates {
            if total <= self.cap {
                break;
            }
            if let Some(e) = self.entries.remove(&sha) {
                total -= e.size;
                victims.push(sha);
            }
        }
        victims
    }

    /// Chooses the least recently used files, never one `protected`, until their sizes
    /// add up to `bytes`, and forgets them (the caller deletes the files). When all the
    /// unprotected files together are smaller, chooses none and returns their total.
    pub(super) fn make_room(
        &mut self,
        bytes: u64,
        protected: impl Fn(&Sha256Digest) -> bool,
    ) -> Result<Vec<Sha256Digest>, u64> {
        let mut candidates: Vec<(u64, u64, Sha256Digest)> = self
            .entries
            .iter()
            .filter(|(sha, _)| !protected(sha))
            .map(|(sha, e)| (e.last_used, e.size, sha.clone()))
            .collect();
        let evictable: u64 = candidates.iter().map(|(_, size, _)| size).sum();
        if evictable < bytes {
            return Err(evictable);
        }
        candidates.sort();
        let mut freed = 0u64;
        let mut victims = Vec::new();
        for (_, size, sha) in candidates {
            if freed >= bytes {
                break;
            }
            self.entries.remove(&sha);
            freed += size;
            victims.push(sha);
        }
        Ok(victims)
    }

    /// Files not verified in this run, with their size (what a start-up check hashes).
    pub(super) fn unverified(&self) -> Vec<Sha256Digest> {
        let mut v: Vec<Sha256Digest> = self
            .entries
            .iter()
            .filter(|(_, e)| e.verified.is_none())
            .map(|(sha, _)| sha.clone())
            .collect();
        v.sort();
        v
    }

    /// The files verified in this run, sorted (what the edge reports).
    pub(super) fn verified_files(&self) -> Vec<Sha256Digest> {
        let mut v: Vec<Sha256Digest> = self
            .entries
            .iter()
            .filter(|(_, e)| e.verified.is_some())
            .map(|(sha, _)| sha.clone())
            .collect();
        v.sort();
        v
    }

    /// Bytes held.
    pub(super) fn size(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn sha(n: u8) -> Sha256Digest {
        Sha256Digest::of(&[n])
    }

    fn at(len: u64, secs: u64) -> Stamp {
        (len, UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn start_up_keeps_only_whole_image_files_and_the_name_index() {
        let a = sha(1);
        assert_eq!(classify(a.as_str(), true), Found::Image(a.clone()));
        assert_eq!(classify(NAMES_FILE, true), Found::Names);
        for stray in [
            format!("{a}.part"),
            "names.json.tmp".to_owned(),
            a.as_str().to_uppercase(),
            a.as_str()[..63].to_owned(),
            "notes.txt".to_owned(),
        ] {
            assert_eq!(classify(&stray, true), Found::Stray, "{stray}");
        }
        assert_eq!(classify(a.as_str(), false), Found::Stray, "a directory");
        assert_eq!(classify(NAMES_FILE, false), Found::Stray);
    }

    #[test]
    fn a_file_is_hashed_before_its_first_serve_and_after_any_change() {
        let (a, b) = (sha(1), sha(2));
        let mut index = Index::new(100);
        index.found(a.clone(), 10);
        // Unknown: fetch. Found at start: hash first. Gone from disk: fetch.
        assert_eq!(index.next(&b, None), Next::Fetch);
        assert_eq!(index.next(&b, Some(at(10, 1))), Next::Fetch);
        assert_eq!(index.next(&a, Some(at(10, 1))), Next::Verify);
        assert_eq!(index.next(&a, None), Next::Fetch);
        index.verified(&a, at(10, 1));
        assert_eq!(index.next(&a, Some(at(10, 1))), Next::Serve);
        // A new mtime or size: hash again.
        assert_eq!(index.next(&a, Some(at(10, 2))), Next::Verify);
        assert_eq!(index.next(&a, Some(at(11, 1))), Next::Verify);
        assert_eq!(index.verified_files(), vec![a.clone()]);
        index.fetched(b.clone(), at(20, 3));
        assert_eq!(index.next(&b, Some(at(20, 3))), Next::Serve);
        assert_eq!(index.size(), 30);
        index.forget(&a);
        assert_eq!(index.next(&a, Some(at(10, 1))), Next::Fetch);
    }

    #[test]
    fn corrupt_half_written_and_unreadable_files_are_told_apart() {
        let a = sha(1);
        let io_err = || Err(std::io::Error::other("EIO"));
        assert_eq!(
            verdict(&a, Some(10), Some(at(10, 1)), &Ok(a.clone())),
            Verdict::Good
        );
        assert_eq!(
            verdict(&a, None, Some(at(7, 1)), &Ok(a.clone())),
            Verdict::Good
        );
        // Another hash (a flipped byte, a truncated file) or another size than registered.
        assert_eq!(
            verdict(&a, Some(10), Some(at(10, 1)), &Ok(sha(2))),
            Verdict::Corrupt
        );
        assert_eq!(
            verdict(&a, Some(10), Some(at(9, 1)), &Ok(a.clone())),
            Verdict::Corrupt
        );
        assert_eq!(
            verdict(&a, Some(10), Some(at(10, 1)), &io_err()),
            Verdict::Unreadable
        );
        assert_eq!(
            verdict(&a, Some(10), None, &Ok(a.clone())),
            Verdict::Unreadable
        );
    }

    #[test]
    fn eviction_removes_the_least_recently_used_until_under_the_cap() {
        let (a, b, c, d) = (sha(1), sha(2), sha(3), sha(4));
        let mut index = Index::new(25);
        index.fetched(a.clone(), at(10, 1));
        index.fetched(b.clone(), at(10, 1));
        index.fetched(c.clone(), at(10, 1));
        // Under the cap after one eviction, in LRU order: a was used last, so b goes.
        index.touch(&a);
        assert_eq!(index.evict(|_| false), vec![b.clone()]);
        assert_eq!(index.size(), 20);
        assert!(index.evict(|_| false).is_empty(), "fits");
        // A protected file stays even when it is the oldest.
        index.fetched(d.clone(), at(10, 1));
        assert_eq!(index.evict(|s| *s == c), vec![a.clone()]);
        // Nothing to evict but protected files: over the cap, by what is in use.
        index.fetched(b.clone(), at(30, 1));
        assert!(index.evict(|_| true).is_empty());
        assert_eq!(index.evict(|s| *s == b), vec![c.clone(), d.clone()]);
        assert_eq!(index.verified_files(), vec![b]);
    }

    #[test]
    fn making_room_evicts_the_least_recently_used_or_nothing() {
        let (a, b, c) = (sha(1), sha(2), sha(3));
        let mut index = Index::new(1000);
        index.fetched(a.clone(), at(10, 1));
        index.fetched(b.clone(), at(20, 1));
        index.fetched(c.clone(), at(30, 1));
        index.touch(&a);
        // b is the least recently used; it frees enough for 15 bytes.
        assert_eq!(index.make_room(15, |_| false), Ok(vec![b.clone()]));
        assert_eq!(index.size(), 40);
        // 35 bytes: c, then a (c is older now that a was touched).
        index.fetched(b.clone(), at(20, 2));
        assert_eq!(
            index.make_room(35, |s| *s == b),
            Ok(vec![c.clone(), a.clone()])
        );
        // Not enough even with every unprotected file: nothing evicted, the total said.
        index.fetched(a.clone(), at(10, 3));
        assert_eq!(index.make_room(31, |s| *s == b), Err(10));
        assert_eq!(index.size(), 30);
        assert_eq!(index.make_room(0, |_| true), Ok(vec![]));
    }

    #[test]
    fn start_up_files_are_unverified_until_hashed() {
        let (a, b) = (sha(1), sha(2));
        let mut index = Index::new(100);
        index.found(a.clone(), 1);
        index.found(b.clone(), 2);
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        assert_eq!(index.unverified(), want);
        index.verified(&a, at(1, 1));
        assert_eq!(index.unverified(), vec![b]);
        assert_eq!(index.verified_files(), vec![a]);
    }
}
