//! The thin I/O shell: sockets in, [`decide`] in the middle, sockets out.
//!
//! Tasks: one receiver per socket (parse, hand over), one decider that owns the
//! [`LeaseTable`] (the actor; the channel sender is its handle), one committer that
//! owns the durable writes. The decider takes whatever requests are queued as one
//! batch; replies that change no lease (OFFER, NAK, INFORM) go out at once, the
//! others wait until the committer has written their changes in one redb write
//! transaction (group commit; batches queued during a commit share the next one).
//!
//! When a commit fails (a full disk), its replies are never sent and its changes are
//! written with the next batch's, so the disk catches up with the table once the
//! store has mended itself (see [`LeaseStore`]); clients retry and get their ACK then.
//! Only a store that gives up ([`LeaseStoreError::is_persistent`]) stops the server,
//! with an error, so the service manager restarts the edge.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use substruct_runtime::error_chain;
use substruct_wire::Mac;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::core::{decide, Action};
use super::packet::{message_label, reply_label, DropReason, Request};
use super::settings::DhcpSettings;
use super::store::{LeaseStore, LeaseStoreError};
use super::table::{LeaseChange, LeaseTable, UnixSecs};
use crate::intents::IntentTable;
use crate::metrics::{DhcpFailure, DhcpMessage, DhcpReply, DhcpResult, Metrics, SubnetGauges};

/// Largest batch the decider takes at once.
const MAX_BATCH: usize = 64;
/// Requests waiting for the decider. Short on purpose (a late answer is as useless
/// to a client as none); when it is full the receivers stop reading.
const INBOUND_QUEUE: usize = 1024;
/// How often the active-lease gauges are recounted when no batch did it (leases expire).
const LEASE_GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// Least time between two recounts after batches of requests.
const LEASE_GAUGE_MIN_GAP: Duration = Duration::from_secs(1);

/// A lease the server granted or renewed (durable by the time it is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseEvent {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub expires: UnixSecs,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("dhcp: no sockets to serve on")]
    NoSockets,
    #[error("dhcp: {what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("dhcp: lease store")]
    Store(#[source] LeaseStoreError),
}

/// A UDP socket for DHCP on `interface` (empty: any), bound to `ip:port`
/// (usually `0.0.0.0:67`, and `:4011` in proxy mode): SO_REUSEADDR, SO_BROADCAST,
/// SO_BINDTODEVICE, non-blocking. Hand it to tokio with `UdpSocket::from_std`.
pub fn bind_socket(interface: &str, ip: Ipv4Addr, port: u16) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if !interface.is_empty() {
        s.bind_device(Some(interface.as_bytes()))?;
    }
    // The kernel's default receive buffer (a few hundred requests) is kept on
    // purpose: under overload a deep queue only makes every answer late.
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(ip, port)).into())?;
    Ok(s.into())
}

/// Serves DHCP on `sockets` until `cancel`. See [`serve_with_events`].
pub async fn serve(
    settings: Arc<DhcpSettings>,
    sockets: Vec<UdpSocket>,
    intents: IntentTable,
    leases: LeaseStore,
    cancel: CancellationToken,
) -> Result<(), DhcpError> {
    serve_with_events(settings, sockets, intents, leases, None, cancel).await
}

/// Serves DHCP on `sockets` (one bound to port 67; in proxy mode also one on 4011)
/// until `cancel`. Leases are loaded from `leases` first; each granted lease is
/// reported on `events` (best effort: dropped when the channel is full). Counts into
/// metrics of its own; see [`serve_with_metrics`].
pub async fn serve_with_events(
    settings: Arc<DhcpSettings>,
    sockets: Vec<UdpSocket>,
    intents: IntentTable,
    leases: LeaseStore,
    events: Option<mpsc::Sender<LeaseEvent>>,
    cancel: CancellationToken,
) -> Result<(), DhcpError> {
    let metrics = Arc::new(Metrics::new());
    serve_with_metrics(settings, sockets, intents, leases, events, metrics, cancel).await
}

/// [`serve_with_events`], counting packets, replies, failures and active leases into
/// `metrics`.
pub async fn serve_with_metrics(
    settings: Arc<DhcpSettings>,
    sockets: Vec<UdpSocket>,
    intents: IntentTable,
    leases: LeaseStore,
    events: Option<mpsc::Sender<LeaseEvent>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), DhcpError> {
    if sockets.is_empty() {
        return Err(DhcpError::NoSockets);
    }
    let loader = leases.clone();
    let stored = tokio::task::spawn_blocking(move || loader.load())
        .await
        .map_err(|e| DhcpError::Io {
            what: "loading leases",
            source: io::Error::other(e),
        })?
        .map_err(DhcpError::Store)?;
    let table = LeaseTable::from_leases(stored.iter().copied());
    let mut ports = Vec::with_capacity(sockets.len());
    for s in &sockets {
        let addr = s.local_addr().map_err(|source| DhcpError::Io {
            what: "socket address",
            source,
        })?;
        ports.push(addr.port());
    }
    info!(
        leases = stored.len(),
        ports = ?ports,
        mode = ?settings.mode,
        store = %leases.path().display(),
        "dhcp: serving"
    );
    let sockets: Arc<Vec<UdpSocket>> = Arc::new(sockets);
    // The committer stops everything when the lease store gives up.
    let cancel = cancel.child_token();
    let tracker = TaskTracker::new();
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(INBOUND_QUEUE);
    let (commit_tx, commit_rx) = mpsc::channel::<CommitBatch>(64);

    for (i, port) in ports.iter().copied().enumerate() {
        tracker.spawn(receive_loop(
            sockets.clone(),
            i,
            port,
            in_tx.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
    }
    drop(in_tx);
    tracker.spawn(decide_loop(
        settings,
        table,
        intents,
        sockets.clone(),
        in_rx,
        commit_tx,
        metrics.clone(),
        cancel.clone(),
    ));
    let committer = tracker.spawn(commit_loop(
        leases,
        sockets,
        commit_rx,
        events,
        metrics,
        cancel.clone(),
    ));
    tracker.close();
    tracker.wait().await;
    match committer.await {
        Ok(Ok(())) => {
            info!("dhcp: stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(DhcpError::Store(e)),
        Err(e) => Err(DhcpError::Io {
            what: "lease committer",
            source: io::Error::other(e),
        }),
    }
}

#[derive(Debug)]
struct Inbound {
    req: Request,
    socket: usize,
}

#[derive(Debug)]
struct Outbound {
    bytes: Vec<u8>,
    dest: SocketAddr,
    socket: usize,
    /// The reply's type, for the metrics.
    kind: Option<DhcpReply>,
}

#[derive(Debug, Default)]
struct CommitBatch {
    changes: Vec<LeaseChange>,
    replies: Vec<Outbound>,
}

/// Logs at most one warning per second per limiter; the rest go to debug. (The TFTP
/// server uses it too.)
#[derive(Debug)]
pub(crate) struct WarnLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    pub(crate) fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }
    /// `Some(suppressed since the last warning)` when a warning may be logged now.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn log_drop(limit: &mut WarnLimit, from: SocketAddr, mac: Option<Mac>, reason: &DropReason) {
    if reason.is_malformed() {
        if let Some(suppressed) = limit.allow() {
            warn!(%from, ?mac, %reason, suppressed, "dhcp: dropped packet");
            return;
        }
    }
    debug!(%from, ?mac, %reason, "dhcp: dropped packet");
}

async fn receive_loop(
    sockets: Arc<Vec<UdpSocket>>,
    index: usize,
    port: u16,
    tx: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let Some(sock) = sockets.get(index) else {
        return;
    };
    let mut buf = vec![0u8; 2048];
    let mut limit = WarnLimit::new();
    loop {
        // Backpressure: take a queue slot before reading. While the decider is
        // behind, we stop reading and the kernel drops the excess at no cost to us.
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = tx.reserve() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    metrics.dhcp.failure(DhcpFailure::Receive);
                    if limit.allow().is_some() {
                        warn!(error = %e, port, "dhcp: receive failed");
                    }
                    continue;
                }
            },
        };
        match Request::parse(&buf[..n], from, port) {
            Ok(req) => permit.send(Inbound { req, socket: index }),
            Err(reason) => {
                metrics
                    .dhcp
                    .packet(DhcpMessage::Malformed, DhcpResult::Refused);
                log_drop(&mut limit, from, None, &reason)
            }
        }
    }
}

fn unix_now() -> UnixSecs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn send_reply(
    sockets: &[UdpSocket],
    out: &Outbound,
    limit: &mut WarnLimit,
    metrics: &Metrics,
) {
    let Some(sock) = sockets.get(out.socket) else {
        return;
    };
    match sock.send_to(&out.bytes, out.dest).await {
        Ok(_) => {
            if let Some(kind) = out.kind {
                metrics.dhcp.reply_sent(kind);
            }
        }
        Err(e) => {
            metrics.dhcp.failure(DhcpFailure::Send);
            if limit.allow().is_some() {
                warn!(dest = %out.dest, error = %e, "dhcp: send failed");
            }
        }
    }
}

/// The active-lease gauges of `settings`' subnets (pool sizes set).
fn subnet_gauges(settings: &DhcpSettings, metrics: &Metrics) -> Vec<SubnetGauges> {
    settings
        .config()
        .subnets
        .iter()
        .map(|s| metrics.dhcp.subnet(s.network, s.pool_size()))
        .collect()
}

/// Recounts the unexpired leases per subnet.
fn count_leases(table: &LeaseTable, gauges: &[SubnetGauges], now: UnixSecs) {
    SubnetGauges::set_counts(
        gauges,
        table.leases().filter(|l| l.expires > now).map(|l| l.ip),
    );
}

#[allow(clippy::too_many_arguments)]
async fn decide_loop(
    settings: Arc<DhcpSettings>,
    mut table: LeaseTable,
    intents: IntentTable,
    sockets: Arc<Vec<UdpSocket>>,
    mut rx: mpsc::Receiver<Inbound>,
    commit_tx: mpsc::Sender<CommitBatch>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut limit = WarnLimit::new();
    let mut send_limit = WarnLimit::new();
    let mut now_out = Vec::with_capacity(MAX_BATCH);
    let gauges = subnet_gauges(&settings, &metrics);
    let mut recount = tokio::time::interval(LEASE_GAUGE_INTERVAL);
    recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted = Instant::now();
    loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = recount.tick() => {
                count_leases(&table, &gauges, unix_now());
                counted = Instant::now();
                continue;
            }
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
        };
        if n == 0 {
            break;
        }
        let now = unix_now();
        let mut pending = CommitBatch::default();
        for Inbound { req, socket } in batch.drain(..) {
            let intent = intents.get(&req.mac).map(|r| r.intent);
            let d = decide(&req, &settings, &mut table, intent.as_ref(), now);
            let has_changes = !d.changes.is_empty();
            pending.changes.extend(d.changes);
            let message = message_label(req.msg_type);
            match d.action {
                Action::Reply { packet, dest } => match packet.encode() {
                    Ok(bytes) => {
                        debug!(mac = %req.mac, xid = req.xid, request = ?req.msg_type,
                            guid = ?req.guid_string(), arch = ?req.arch, %dest,
                            yiaddr = %packet.message.yiaddr(), "dhcp: reply");
                        let kind = packet.message.opts().msg_type().and_then(reply_label);
                        let result = match kind {
                            Some(DhcpReply::Nak) => DhcpResult::Nak,
                            _ => DhcpResult::Answered,
                        };
                        metrics.dhcp.packet(message, result);
                        let out = Outbound {
                            bytes,
                            dest,
                            socket,
                            kind,
                        };
                        if has_changes {
                            pending.replies.push(out);
                        } else {
                            now_out.push(out);
                        }
                    }
                    Err(reason) => {
                        metrics.dhcp.packet(message, reason.result());
                        metrics.dhcp.failure(DhcpFailure::Encode);
                        log_drop(&mut limit, req.source, Some(req.mac), &reason)
                    }
                },
                Action::Drop { reason } => {
                    metrics.dhcp.packet(message, reason.result());
                    log_drop(&mut limit, req.source, Some(req.mac), &reason)
                }
            }
        }
        if counted.elapsed() >= LEASE_GAUGE_MIN_GAP {
            count_leases(&table, &gauges, now);
            counted = Instant::now();
        }
        for out in now_out.drain(..) {
            send_reply(&sockets, &out, &mut send_limit, &metrics).await;
        }
        if (!pending.changes.is_empty() || !pending.replies.is_empty())
            && commit_tx.send(pending).await.is_err()
        {
            error!("dhcp: lease committer stopped; replies not sent");
            break;
        }
    }
}

/// The MAC a change is about.
fn change_mac(c: &LeaseChange) -> Mac {
    match *c {
        LeaseChange::Grant { mac, .. }
        | LeaseChange::Release { mac, .. }
        | LeaseChange::Forget { mac } => mac,
    }
}

/// The last change of each MAC, in the order of those last changes: writing them has
/// the same effect on the store as writing all of `changes` in order (each change sets
/// or removes its MAC's one row). Keeps the changes of failed commits bounded by the
/// number of MACs they touch.
fn last_per_mac(changes: Vec<LeaseChange>) -> Vec<LeaseChange> {
    let mut last: HashMap<Mac, usize> = HashMap::with_capacity(changes.len());
    for (i, c) in changes.iter().enumerate() {
        last.insert(change_mac(c), i);
    }
    changes
        .into_iter()
        .enumerate()
        .filter(|(i, c)| last.get(&change_mac(c)) == Some(i))
        .map(|(_, c)| c)
        .collect()
}

/// Writes each batch's lease changes, then sends its replies. A failed write sends
/// nothing (the clients retry) and carries its changes into the next write. Returns
/// an error, after cancelling the server, only when the store has given up.
async fn commit_loop(
    store: LeaseStore,
    sockets: Arc<Vec<UdpSocket>>,
    mut rx: mpsc::Receiver<CommitBatch>,
    events: Option<mpsc::Sender<LeaseEvent>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), LeaseStoreError> {
    let mut batches = Vec::new();
    let mut send_limit = WarnLimit::new();
    let mut event_limit = WarnLimit::new();
    let mut store_limit = WarnLimit::new();
    // Changes of failed writes: the table has them, the disk does not yet.
    let mut unsaved: Vec<LeaseChange> = Vec::new();
    while rx.recv_many(&mut batches, 8).await > 0 {
        let mut changes = std::mem::take(&mut unsaved);
        let carried = changes.len();
        let mut replies = Vec::new();
        for b in batches.drain(..) {
            changes.extend(b.changes);
            replies.extend(b.replies);
        }
        if let Err(e) = store.apply_async(changes.clone()).await {
            // not durable: send nothing, the clients retry
            metrics.dhcp.failure(DhcpFailure::Store);
            if e.is_persistent() {
                error!(error = %error_chain(&e), dropped = replies.len(),
                    "dhcp: the lease store cannot be reopened; stopping so the edge is restarted");
                cancel.cancel();
                return Err(e);
            }
            if let Some(suppressed) = store_limit.allow() {
                error!(error = %error_chain(&e), dropped = replies.len(), disk_full = e.is_disk_full(),
                    suppressed, "dhcp: could not persist leases; replies withheld");
            }
            unsaved = last_per_mac(changes);
            continue;
        }
        for out in &replies {
            send_reply(&sockets, out, &mut send_limit, &metrics).await;
        }
        if let Some(tx) = &events {
            // Carried changes are durable now, but their replies were never sent.
            for c in changes.iter().skip(carried) {
                if let LeaseChange::Grant { mac, ip, expires } = *c {
                    if tx.try_send(LeaseEvent { mac, ip, expires }).is_err()
                        && event_limit.allow().is_some()
                    {
                        warn!(%mac, "dhcp: lease event dropped (channel full or closed)");
                    }
                }
            }
        }
    }
    Ok(())
}
