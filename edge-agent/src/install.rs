//! The site's rendered install files (kickstart, preseed, autoinstall), keyed by install
//! token, and the callbacks the edge sends the controller about them.
//!
//! [`InstallTable`] mirrors JetStream KV `install` (`{site}.{h}` → envelope-encoded
//! [`InstallFilesRecord`], `h` a digest of the token: [`subjects::install_key`]) the way
//! [`crate::intents`] mirrors `boot`, with [`crate::kv_mirror`]'s machinery: [`watch`]
//! takes a full snapshot of `{site}.>` on every (re)start, then applies puts, deletes and
//! purges; after each change the table is written to `state_dir/install.json` (mode
//! 0600: the files hold secrets) and [`InstallCache::load`] reads it at start, so a site
//! keeps installing through a WAN cut. A deleted key is an expired token: its files are
//! gone (the watch's own [`crate::kv_mirror::KeyIndex`] finds the token a key held).
//!
//! [`CallbackClient`] sends [`CallbackRequest`]s on `substruct.v1.{site}.callback`:
//! synchronously for an installer's `done`/`failed` ([`CallbackClient::request`]), and in
//! the background for "file fetched" ([`CallbackClient::fetched`], drained by
//! [`FetchedQueue::run`]: once per token and file per edge run, retried with backoff
//! until the controller answers, queued while NATS is down).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use substruct_runtime::backoff::Backoff;
use substruct_runtime::error_chain;
use substruct_wire::intent::{InstallFile, InstallFilesRecord};
use substruct_wire::messages::{CallbackKind, CallbackReply, CallbackRequest, ErrorReply};
use substruct_wire::subjects::{self, KV_INSTALL};
use substruct_wire::{BootToken, MessageKind, SiteId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::kv_mirror::{self, DiskCopy, Mirror, Table};

/// Shared, read-mostly table of install files for this site, by install token:
/// [`InstallTable::get`] gives the files of a token (`None` means an unknown or expired
/// token).
pub type InstallTable = Table<BootToken, InstallFilesRecord>;

impl InstallTable {
    /// The file `name` of `token` (the first of that name), if both exist.
    pub fn file(&self, token: &BootToken, name: &str) -> Option<InstallFile> {
        self.with(token, |r| r.files.iter().find(|f| f.name == name).cloned())
            .flatten()
    }
}

/// Where one site's install files are kept on disk (mode 0600): `{ "version": 1,
/// "site": "s1", "installs": { "token": record } }`, written with [`DiskCopy::save`],
/// read with [`DiskCopy::load`].
pub type InstallCache = DiskCopy<InstallBucket>;

/// How the watcher connects and how it backs off.
pub type WatchSettings = kv_mirror::WatchSettings<InstallBucket>;

/// The `install` bucket's own parts of the mirror: keys `{site}.{h}` naming no token
/// ([`subjects::install_key`]), values envelope-encoded [`InstallFilesRecord`]s. Tokens
/// are never logged whole (they gate secrets).
#[derive(Debug, Clone, Copy)]
pub struct InstallBucket;

impl Mirror for InstallBucket {
    type Key = BootToken;
    type Value = InstallFilesRecord;
    const BUCKET: &'static str = KV_INSTALL;
    const CONSUMER_PREFIX: &'static str = "edge-install";
    const DESCRIPTION: &'static str = "substruct-edge install files watch";
    const MAX_BATCH: usize = 1024;
    const WATCH_NAME: &'static str = "install files watch";
    const CACHE_NAME: &'static str = "install cache";
    const DISK_FIELD: &'static str = "installs";
    const DISK_MODE: u32 = 0o600;

    /// A put is accepted only if `install_key(site, record.token)` is its key.
    fn decode(site: &SiteId, key: &str, value: &[u8]) -> Option<(BootToken, InstallFilesRecord)> {
        if subjects::site_key_rest(site, key).is_none() {
            tracing::warn!("install KV: key outside this site; skipped");
            return None;
        }
        match substruct_wire::decode::<InstallFilesRecord>(value) {
            Ok(record) if subjects::install_key(site, &record.token) == key => {
                Some((record.token.clone(), record))
            }
            Ok(record) => {
                tracing::warn!(token = %short(&record.token), machine = %record.machine_id,
                    "install KV: the record's token does not belong to its key; skipped");
                None
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e),
                    "install KV: undecodable install files; skipped");
                None
            }
        }
    }

    fn disk_key(token: &BootToken) -> String {
        token.to_string()
    }

    /// The key must be a token, and the record's.
    fn key_from_disk(key: &str, record: &InstallFilesRecord) -> Option<BootToken> {
        match BootToken::new(key) {
            Ok(token) if token == record.token => Some(token),
            Ok(_) => {
                tracing::warn!(machine = %record.machine_id,
                    "install cache: entry's key and token differ; skipped");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "install cache: skipping a bad token");
                None
            }
        }
    }

    fn log_synced(site: &SiteId, count: usize) {
        tracing::info!(site = %site, tokens = count, "install files in sync with NATS");
    }

    fn log_put(token: &BootToken, r: &InstallFilesRecord) {
        tracing::info!(token = %short(token), machine = %r.machine_id,
            files = r.files.len(), "install files set");
    }

    fn log_remove(token: &BootToken) {
        tracing::info!(token = %short(token), "install files removed (token expired)");
    }
}

/// The first characters of a token, enough to correlate log lines without leaking it.
pub fn short(token: &BootToken) -> String {
    let s = token.as_str();
    let end = s.char_indices().nth(6).map(|(i, _)| i).unwrap_or(s.len());
    format!("{}…", &s[..end])
}

/// Watches `install` for this site until `cancel`, reconnecting forever with backoff. The
/// table keeps serving its current contents (from disk or the last snapshot) meanwhile.
pub async fn watch(
    client: async_nats::Client,
    settings: WatchSettings,
    table: InstallTable,
    cancel: CancellationToken,
) {
    kv_mirror::watch(client, settings, table, cancel).await
}

/// Why a callback got no usable answer from the controller.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("the edge has no NATS connection configured")]
    NoNats,
    #[error("NATS is not connected")]
    NotConnected,
    #[error("encoding the callback request")]
    Encode(#[source] substruct_wire::WireError),
    #[error("sending the callback request")]
    Request(#[source] async_nats::RequestError),
    #[error("no answer from the controller within {0:?}")]
    TimedOut(Duration),
    #[error("the controller refused the callback: {:?}: {}", .0.code, .0.message)]
    Refused(ErrorReply),
    #[error("the controller's answer does not decode")]
    BadReply(#[source] substruct_wire::WireError),
}

impl CallbackError {
    /// Whether the controller could not be reached or did not answer (worth retrying):
    /// no NATS, not connected, no responders, timeout.
    pub fn is_unreachable(&self) -> bool {
        match self {
            CallbackError::NoNats | CallbackError::NotConnected | CallbackError::TimedOut(_) => {
                true
            }
            CallbackError::Request(e) => matches!(
                e.kind(),
                async_nats::RequestErrorKind::TimedOut
                    | async_nats::RequestErrorKind::NoResponders
                    | async_nats::RequestErrorKind::Other
            ),
            CallbackError::Encode(_) | CallbackError::Refused(_) | CallbackError::BadReply(_) => {
                false
            }
        }
    }
}

/// How long a synchronous callback ([`CallbackClient::request`]) waits for the controller.
///
/// Above the controller's worst case (~10 s, it waits for the event's ack): a `done` the
/// controller applies must not be answered 503 here, then 403 on the installer's retry.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Most "fetched" callbacks waiting to be sent; beyond it new ones are dropped (logged).
pub const FETCHED_QUEUE_LEN: usize = 1024;
/// Above this many remembered (token, file) pairs, pairs of expired tokens are forgotten.
const SEEN_PRUNE_AT: usize = 4096;

/// One "file fetched" callback waiting to be sent.
#[derive(Debug, Clone)]
struct Fetched {
    token: BootToken,
    file: String,
}

/// Sends callbacks to the controller for this site (cheap to clone).
#[derive(Debug, Clone)]
pub struct CallbackClient {
    site: SiteId,
    nats: Option<async_nats::Client>,
    installs: InstallTable,
    queue: mpsc::Sender<Fetched>,
    /// (token, file) pairs already queued in this run.
    seen: Arc<Mutex<HashSet<(BootToken, String)>>>,
}

/// The background half of [`CallbackClient::fetched`]: owns the queue; run it as a task.
#[derive(Debug)]
pub struct FetchedQueue {
    site: SiteId,
    nats: Option<async_nats::Client>,
    rx: mpsc::Receiver<Fetched>,
    /// First retry delay (jittered, [`Backoff`]); doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// How long one attempt waits for the controller.
    pub timeout: Duration,
}

impl CallbackClient {
    /// A client for `site` over `nats` (`None`: every callback is "unreachable" and
    /// "fetched" notices are dropped), and the queue task to run beside it. `installs`
    /// lets the client forget the pairs of expired tokens.
    pub fn new(
        site: SiteId,
        nats: Option<async_nats::Client>,
        installs: InstallTable,
    ) -> (Self, FetchedQueue) {
        let (tx, rx) = mpsc::channel(FETCHED_QUEUE_LEN);
        let client = Self {
            site: site.clone(),
            nats: nats.clone(),
            installs,
            queue: tx,
            seen: Arc::default(),
        };
        let queue = FetchedQueue {
            site,
            nats,
            rx,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            timeout: CALLBACK_TIMEOUT,
        };
        (client, queue)
    }

    /// Queues a `Fetched { file }` callback for `token` unless one was queued already in
    /// this run. Never waits.
    pub fn fetched(&self, token: &BootToken, file: &str) {
        if self.nats.is_none() {
            tracing::debug!(token = %short(token), file, "no NATS: fetched callback not sent");
            return;
        }
        let pair = (token.clone(), file.to_owned());
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.contains(&pair) {
                return;
            }
            if seen.len() >= SEEN_PRUNE_AT {
                seen.retain(|(t, _)| self.installs.contains(t));
            }
            seen.insert(pair.clone());
        }
        let item = Fetched {
            token: pair.0,
            file: pair.1,
        };
        if let Err(e) = self.queue.try_send(item) {
            let item = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
            };
            tracing::warn!(token = %short(&item.token), file = %item.file,
                "fetched callback queue is full or stopped; callback dropped");
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(item.token, item.file));
        }
    }

    /// Sends one callback and waits (at most `timeout`) for the controller's answer.
    /// Fails fast when NATS is not connected.
    pub async fn request(
        &self,
        token: &BootToken,
        kind: CallbackKind,
        timeout: Duration,
    ) -> Result<CallbackReply, CallbackError> {
        let nats = self.nats.as_ref().ok_or(CallbackError::NoNats)?;
        send_callback(nats, &self.site, token, kind, timeout).await
    }
}

/// One request/reply on `substruct.v1.{site}.callback`.
async fn send_callback(
    nats: &async_nats::Client,
    site: &SiteId,
    token: &BootToken,
    kind: CallbackKind,
    timeout: Duration,
) -> Result<CallbackReply, CallbackError> {
    if nats.connection_state() != async_nats::connection::State::Connected {
        return Err(CallbackError::NotConnected);
    }
    let request = CallbackRequest {
        site: site.clone(),
        token: token.clone(),
        kind,
    };
    let payload = substruct_wire::encode(&request).map_err(CallbackError::Encode)?;
    let send = nats.send_request(
        subjects::callback(site),
        async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(timeout)),
    );
    // The outer bound also covers a client whose command queue is stuck.
    let msg = tokio::time::timeout(timeout + Duration::from_millis(500), send)
        .await
        .map_err(|_| CallbackError::TimedOut(timeout))?
        .map_err(CallbackError::Request)?;
    decode_reply(&msg.payload)
}

/// A [`CallbackReply`], or the controller's [`ErrorReply`] as [`CallbackError::Refused`].
fn decode_reply(bytes: &[u8]) -> Result<CallbackReply, CallbackError> {
    let env = substruct_wire::peek(bytes).map_err(CallbackError::BadReply)?;
    if env.kind == MessageKind::ErrorReply {
        let e = substruct_wire::decode::<ErrorReply>(bytes).map_err(CallbackError::BadReply)?;
        return Err(CallbackError::Refused(e));
    }
    substruct_wire::decode::<CallbackReply>(bytes).map_err(CallbackError::BadReply)
}

impl FetchedQueue {
    /// Sends queued "fetched" callbacks in order until `cancel`: each is retried with
    /// backoff until the controller answers (a [`CallbackReply`] or an [`ErrorReply`]
    /// both end it). Without NATS it only drains the queue.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return,
                i = self.rx.recv() => i,
            };
            let Some(item) = item else { return };
            let Some(nats) = self.nats.clone() else {
                continue;
            };
            if !self.deliver(&nats, item, &cancel).await {
                return;
            }
        }
    }

    /// Retries one callback until answered; `false` when cancelled first.
    async fn deliver(
        &self,
        nats: &async_nats::Client,
        item: Fetched,
        cancel: &CancellationToken,
    ) -> bool {
        let mut backoff = Backoff::new(self.min_backoff, self.max_backoff);
        loop {
            let kind = CallbackKind::Fetched {
                file: item.file.clone(),
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return false,
                r = send_callback(nats, &self.site, &item.token, kind, self.timeout) => r,
            };
            match result {
                Ok(reply) => {
                    tracing::info!(token = %short(&item.token), file = %item.file,
                        machine = %reply.machine_id, state = %reply.state, "fetched callback acknowledged");
                    return true;
                }
                Err(CallbackError::Refused(e)) => {
                    tracing::warn!(token = %short(&item.token), file = %item.file, code = ?e.code,
                        message = %e.message, "the controller refused the fetched callback");
                    return true;
                }
                Err(e @ CallbackError::BadReply(_)) => {
                    tracing::warn!(token = %short(&item.token), file = %item.file,
                        error = %error_chain(&e), "fetched callback answered with an undecodable reply");
                    return true;
                }
                Err(e @ CallbackError::Encode(_)) => {
                    tracing::error!(token = %short(&item.token), file = %item.file,
                        error = %error_chain(&e), "fetched callback cannot be sent; dropped");
                    return true;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(token = %short(&item.token), file = %item.file,
                        error = %error_chain(&e), retry_in = ?delay, "fetched callback not answered; will retry");
                    tokio::select! {
                        _ = cancel.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Whether `name` may name an install file: 1–255 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn is_valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Replaces every literal `{edge}` in `text` with `base` (the edge's `http://addr[:port]`).
pub fn substitute_edge(text: &str, base: &str) -> String {
    text.replace("{edge}", base)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kv_mirror::{Change, KeyIndex, Op};
    use substruct_wire::messages::ErrorCode;
    use substruct_wire::MachineId;

    fn rec(token: &str, names: &[&str]) -> InstallFilesRecord {
        InstallFilesRecord {
            machine_id: MachineId::new("m-1").unwrap(),
            token: BootToken::new(token).unwrap(),
            files: names
                .iter()
                .map(|n| InstallFile {
                    name: (*n).into(),
                    content_type: "text/plain".into(),
                    body: format!("body of {n} at {{edge}}"),
                })
                .collect(),
        }
    }

    #[test]
    fn cache_round_trips_privately_and_checks_the_site() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let s1 = SiteId::new("s1").unwrap();
        let cache = InstallCache::new(dir.path().join("sub/install.json"), s1.clone());
        assert!(cache.load().unwrap().is_empty());
        let t = InstallTable::new();
        let r = rec("abc123", &["ks.cfg", "user-data"]);
        t.set(r.token.clone(), r.clone());
        cache.save(&t).unwrap();
        let mode = std::fs::metadata(&cache.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let back = cache.load().unwrap();
        assert_eq!(back.snapshot(), t.snapshot());
        assert_eq!(
            back.file(&r.token, "user-data").unwrap().body,
            "body of user-data at {edge}"
        );
        assert!(back.file(&r.token, "meta-data").is_none());
        let other = InstallCache::new(cache.path.clone(), SiteId::new("s2").unwrap());
        assert!(other.load().unwrap().is_empty());
        // An entry under another token's key is skipped.
        let text = std::fs::read_to_string(&cache.path).unwrap();
        std::fs::write(&cache.path, text.replace(r#""abc123":"#, r#""abc124":"#)).unwrap();
        assert!(cache.load().unwrap().is_empty());
        std::fs::write(&cache.path, b"{not json").unwrap();
        let e = cache.load().unwrap_err();
        assert!(e.to_string().starts_with("parsing install cache "), "{e}");
    }

    #[test]
    fn changes_decode_and_bad_ones_are_skipped() {
        let s1 = SiteId::new("s1").unwrap();
        let token = BootToken::new("unit-abc123").unwrap();
        let key = subjects::install_key(&s1, &token);
        assert!(!key.contains("abc123"), "{key}");
        let bytes = substruct_wire::encode(&rec("unit-abc123", &["ks.cfg"])).unwrap();
        let mut index = KeyIndex::default();
        let mut apply =
            |key: &str, op, value: &[u8]| index.apply::<InstallBucket>(&s1, key, op, value);
        // A delete of a key never put here has nothing to remove.
        assert_eq!(apply(&key, Op::Delete, b""), Change::Skip);
        assert!(matches!(
            apply(&key, Op::Put, &bytes),
            Change::Put { key: t, replaced: None, .. } if t == token
        ));
        assert_eq!(apply(&key, Op::Delete, b""), Change::Remove(token.clone()));
        // A second watcher has its own index: it saw no put, so it removes nothing.
        let mut other_watch = KeyIndex::default();
        assert_eq!(
            other_watch.apply::<InstallBucket>(&s1, &key, Op::Delete, b""),
            Change::Skip
        );
        let s2 = SiteId::new("s2").unwrap();
        let other = subjects::install_key(&s1, &BootToken::new("unit-other1").unwrap());
        for (key, value) in [
            (key.clone(), &b"garbage"[..]),
            (subjects::install_key(&s2, &token), &bytes[..]),
            ("s1".to_owned(), &bytes[..]),
            ("s10.x".to_owned(), &bytes[..]),
            ("s1.unit-abc123".to_owned(), &bytes[..]), // the old `{site}.{token}` shape
            (other, &bytes[..]),                       // the record's token is another's
        ] {
            assert_eq!(apply(&key, Op::Put, value), Change::Skip, "{key}");
        }
        assert!(index.is_empty());
    }

    #[test]
    fn replies_decode_into_answers_and_refusals() {
        let reply = CallbackReply {
            machine_id: MachineId::new("m-1").unwrap(),
            state: "deployed".into(),
            next: None,
        };
        let ok = decode_reply(&substruct_wire::encode(&reply).unwrap()).unwrap();
        assert_eq!(ok, reply);
        let refusal = ErrorReply {
            code: ErrorCode::Forbidden,
            message: "no".into(),
        };
        match decode_reply(&substruct_wire::encode(&refusal).unwrap()) {
            Err(CallbackError::Refused(e)) => assert_eq!(e, refusal),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_reply(b"junk"),
            Err(CallbackError::BadReply(_))
        ));
    }

    #[test]
    fn file_names_and_edge_substitution() {
        for ok in ["ks.cfg", "user-data", "meta_data", "a", "preseed.cfg"] {
            assert!(is_valid_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "x%2f", "ks.cfg\n", "é"] {
            assert!(!is_valid_file_name(bad), "{bad:?}");
        }
        assert!(!is_valid_file_name(&"a".repeat(256)));
        assert_eq!(
            substitute_edge("url={edge}/x {edge}{edge} {edg}", "http://e:8080"),
            "url=http://e:8080/x http://e:8080http://e:8080 {edg}"
        );
    }

    #[test]
    fn short_tokens_hide_the_rest() {
        assert_eq!(
            short(&BootToken::new("0123456789abcdef").unwrap()),
            "012345…"
        );
        assert_eq!(short(&BootToken::new("ab").unwrap()), "ab…");
    }
}
