//! The tokio shell: one main socket receives requests; each transfer runs in its own task on its
//! own ephemeral socket (a new TID, RFC 1350) and is driven by [`Transfer`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::files::{LookupError, Source, TftpFiles};
use super::packet::{self, ErrorCode, Mode, Packet, Request, DEFAULT_BLKSIZE};
use super::transfer::{Action, Transfer};
use super::{TftpError, TftpSettings};
use crate::dhcp::server::WarnLimit;
use crate::metrics::{Metrics, TftpFailure, TftpResult};

/// Bytes read from disk at a time for one transfer.
const READ_AHEAD: usize = 256 * 1024;
/// Receive buffer: larger than any packet a client legitimately sends.
const RECV_BUF: usize = 65536;

/// Serves `files` over TFTP on `socket` with default settings until `cancel` fires.
pub async fn serve(
    socket: UdpSocket,
    files: TftpFiles,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    serve_with(socket, files, TftpSettings::default(), cancel).await
}

/// A live transfer, by client address.
#[derive(Debug)]
struct Live {
    id: u64,
    cancel: CancellationToken,
    /// Set once the client acknowledged something: it is really at that address.
    confirmed: Arc<AtomicBool>,
    /// The read request as received, to tell a retransmission from a new request.
    request: Box<[u8]>,
}

/// Transfers one client address (address and port) may hold for the same request: the
/// first and one for a retransmitted read request (see [`LiveTable::admit`]).
const MAX_SAME_REQUEST: usize = 2;

/// The live transfers, by client address (address and port).
#[derive(Debug, Default)]
struct LiveTable {
    by_peer: HashMap<SocketAddr, Vec<Live>>,
}

/// Why a read request gets no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoSlot {
    PerSource,
    Total,
}

/// What a read request does to its client's live transfers ([`LiveTable::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Start a transfer (the client's other transfers, if any, were cancelled).
    Start,
    /// Start a transfer beside the client's live one for the same request.
    Beside,
    /// Nothing: the client already has [`MAX_SAME_REQUEST`] transfers of it.
    Ignore,
}

impl LiveTable {
    fn len(&self) -> usize {
        self.by_peer.values().map(Vec::len).sum()
    }

    fn insert(&mut self, peer: SocketAddr, live: Live) {
        self.by_peer.entry(peer).or_default().push(live);
    }

    /// Forgets transfer `id` of `peer` (it ended).
    fn remove(&mut self, peer: SocketAddr, id: u64) {
        if let Some(lives) = self.by_peer.get_mut(&peer) {
            lives.retain(|l| l.id != id);
            if lives.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// Cancels and forgets every transfer of `peer`; true when there was one.
    fn cancel_peer(&mut self, peer: SocketAddr) -> bool {
        let lives = self.by_peer.remove(&peer).unwrap_or_default();
        for l in &lives {
            l.cancel.cancel();
        }
        !lives.is_empty()
    }

    /// What the read request `raw` from `peer` does to `peer`'s live transfers.
    ///
    /// The same request again (byte for byte) is a retransmission: a client whose answer
    /// was slow (a boot storm) asks again, and may by then be talking to the first
    /// transfer's port, so that transfer goes on and a second one starts beside it (the
    /// client ends the one it does not use with ERROR 5, or it times out within seconds);
    /// at most [`MAX_SAME_REQUEST`]. A different request from the same port is a client
    /// that started over (a PXE ROM's `tsize` probe, then the real request, with or
    /// without an ERROR in between): its old transfers are cancelled.
    fn admit(&mut self, peer: SocketAddr, raw: &[u8]) -> Admit {
        let Some(lives) = self.by_peer.get(&peer) else {
            return Admit::Start;
        };
        if lives.iter().all(|l| *l.request == *raw) {
            if lives.len() >= MAX_SAME_REQUEST {
                return Admit::Ignore;
            }
            return Admit::Beside;
        }
        info!(%peer, "new read request from an address with a live transfer: abandoning the old one");
        self.cancel_peer(peer);
        Admit::Start
    }

    /// Makes room for a transfer to `peer` within `settings`' limits: the per-source cap
    /// refuses; a full table lets its oldest unconfirmed transfer go, or refuses.
    fn make_room(&mut self, peer: SocketAddr, settings: &TftpSettings) -> Result<(), NoSlot> {
        let same_source: usize = self
            .by_peer
            .iter()
            .filter(|(p, _)| p.ip() == peer.ip())
            .map(|(_, lives)| lives.len())
            .sum();
        if same_source >= settings.max_per_source {
            return Err(NoSlot::PerSource);
        }
        if self.len() < settings.max_transfers {
            return Ok(());
        }
        let oldest_unconfirmed = self
            .by_peer
            .iter()
            .flat_map(|(p, lives)| lives.iter().map(move |l| (*p, l)))
            .filter(|(_, l)| !l.confirmed.load(Ordering::Relaxed))
            .min_by_key(|(_, l)| l.id)
            .map(|(p, l)| (p, l.id));
        match oldest_unconfirmed {
            Some((old_peer, id)) => {
                debug!(%old_peer, "TFTP table full: a transfer its client never acknowledged makes room");
                if let Some(old) = self
                    .by_peer
                    .get(&old_peer)
                    .and_then(|lives| lives.iter().find(|l| l.id == id))
                {
                    old.cancel.cancel();
                }
                self.remove(old_peer, id);
                Ok(())
            }
            None => Err(NoSlot::Total),
        }
    }
}

/// Serves `files` over TFTP on `socket` with `settings` until `cancel` fires; then cancels the
/// transfers in flight and waits for their tasks to end. Counts into metrics of its own;
/// see [`serve_with_metrics`].
pub async fn serve_with(
    socket: UdpSocket,
    files: TftpFiles,
    settings: TftpSettings,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    serve_with_metrics(socket, files, settings, Arc::new(Metrics::new()), cancel).await
}

/// [`serve_with`], counting transfers, bytes and refusals into `metrics`.
pub async fn serve_with_metrics(
    socket: UdpSocket,
    files: TftpFiles,
    settings: TftpSettings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    let local = socket.local_addr().map_err(TftpError::LocalAddr)?;
    info!(%local, "TFTP server listening");
    let ctx = Arc::new(Ctx {
        files,
        settings,
        local_ip: local.ip(),
        metrics,
    });
    let tracker = TaskTracker::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut live = LiveTable::default();
    let mut next_id = 0u64;
    let mut busy_warnings = WarnLimit::new();
    let mut buf = vec![0u8; RECV_BUF];
    let result = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            Some((peer, id)) = done_rx.recv() => live.remove(peer, id),
            received = socket.recv_from(&mut buf) => {
                let (len, peer) = match received {
                    Ok(v) => v,
                    Err(e) if is_transient(&e) => {
                        debug!(error = %e, "transient receive error on the TFTP socket");
                        continue;
                    }
                    Err(e) => {
                        ctx.metrics.tftp.failure(TftpFailure::Receive);
                        break Err(TftpError::Recv(e));
                    }
                };
                match packet::decode(&buf[..len]) {
                    Ok(Packet::Rrq(request)) => {
                        if live.admit(peer, &buf[..len]) == Admit::Ignore {
                            debug!(%peer, "retransmitted read request: its transfers are live");
                            continue;
                        }
                        if let Err(why) = live.make_room(peer, &ctx.settings) {
                            let (message, kind) = match why {
                                NoSlot::PerSource => ("too many transfers from your address", TftpFailure::PerSource),
                                NoSlot::Total => ("server busy", TftpFailure::Busy),
                            };
                            ctx.metrics.tftp.failure(kind);
                            if let Some(suppressed) = busy_warnings.allow() {
                                warn!(%peer, reason = message, suppressed, "TFTP read request refused");
                            }
                            reply_error(&socket, peer, ErrorCode::NotDefined, message).await;
                            continue;
                        }
                        next_id += 1;
                        let id = next_id;
                        let token = cancel.child_token();
                        let confirmed = Arc::new(AtomicBool::new(false));
                        live.insert(peer, Live {
                            id,
                            cancel: token.clone(),
                            confirmed: confirmed.clone(),
                            request: buf[..len].into(),
                        });
                        let ctx = ctx.clone();
                        let done_tx = done_tx.clone();
                        ctx.metrics.tftp.started();
                        tracker.spawn(async move {
                            run_transfer(ctx, peer, request, token, confirmed).await;
                            // The server may be gone already; then nobody needs to know.
                            let _ = done_tx.send((peer, id));
                        });
                    }
                    Ok(Packet::Wrq(request)) => {
                        ctx.metrics.tftp.failure(TftpFailure::WriteRequest);
                        info!(%peer, file = %request.filename, "write request refused: read-only server");
                        reply_error(&socket, peer, ErrorCode::AccessViolation, "read-only server").await;
                    }
                    Ok(Packet::Error { code, message }) => {
                        // Errors belong on the transfer's own port, but honour them here too.
                        if live.cancel_peer(peer) {
                            debug!(%peer, code, %message, "client error on the main port ends its transfers");
                        }
                    }
                    Ok(other) => {
                        ctx.metrics.tftp.failure(TftpFailure::Unexpected);
                        debug!(%peer, packet = ?other, "unexpected packet on the main TFTP port");
                        reply_error(&socket, peer, ErrorCode::IllegalOperation, "expected a read request").await;
                    }
                    Err(e) => {
                        ctx.metrics.tftp.failure(TftpFailure::Malformed);
                        debug!(%peer, error = %e, "malformed TFTP packet");
                        reply_error(&socket, peer, ErrorCode::IllegalOperation, &e.to_string()).await;
                    }
                }
            }
        }
    };
    for (_, lives) in live.by_peer.drain() {
        for l in lives {
            l.cancel.cancel();
        }
    }
    tracker.close();
    tracker.wait().await;
    info!(%local, "TFTP server stopped");
    result
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn reply_error(socket: &UdpSocket, peer: SocketAddr, code: ErrorCode, message: &str) {
    if let Err(e) = socket
        .send_to(&packet::encode_error(code.code(), message), peer)
        .await
    {
        debug!(%peer, error = %e, "cannot send TFTP error");
    }
}

#[derive(Debug)]
struct Ctx {
    files: TftpFiles,
    settings: TftpSettings,
    local_ip: std::net::IpAddr,
    metrics: Arc<Metrics>,
}

/// Why a transfer ended early, for the log.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("cannot bind the transfer socket")]
    Bind(#[source] io::Error),
    #[error("cannot send to the client")]
    Send(#[source] io::Error),
    #[error("cannot receive from the client")]
    Recv(#[source] io::Error),
    #[error("cannot read the file")]
    Read(#[source] io::Error),
    #[error("file lookup task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error("cannot start a transfer thread")]
    Thread(#[source] io::Error),
    #[error("the transfer thread ended without a result")]
    ThreadDied,
}

async fn run_transfer(
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    request: Request,
    cancel: CancellationToken,
    confirmed: Arc<AtomicBool>,
) {
    let file = request.filename.clone();
    // No select on `cancel` here: the transfer thread notices it within CANCEL_POLL and stops,
    // so the server's shutdown waits until no transfer thread is left.
    let (result, bytes) = match transfer(&ctx, peer, request, cancel, confirmed).await {
        Ok(Outcome::Sent(bytes)) => {
            info!(%peer, %file, bytes, "TFTP transfer complete");
            (TftpResult::Completed, bytes)
        }
        Ok(Outcome::Refused(code, reason)) => {
            debug!(%peer, %file, %reason, "TFTP request refused");
            match code {
                ErrorCode::FileNotFound => (TftpResult::NotFound, 0),
                _ => (TftpResult::Refused, 0),
            }
        }
        Ok(Outcome::ClientError { code, message }) => {
            debug!(%peer, %file, code, %message, "client ended the transfer");
            (TftpResult::ClientError, 0)
        }
        Ok(Outcome::TimedOut) => {
            warn!(%peer, %file, "TFTP transfer timed out");
            (TftpResult::TimedOut, 0)
        }
        Ok(Outcome::Cancelled) => {
            debug!(%peer, %file, "transfer cancelled");
            (TftpResult::Cancelled, 0)
        }
        Err(e) => {
            warn!(%peer, %file, error = &e as &dyn std::error::Error, "TFTP transfer failed");
            (TftpResult::Failed, 0)
        }
    };
    ctx.metrics.tftp.finished(result, bytes);
}

#[derive(Debug)]
enum Outcome {
    Sent(u64),
    /// Refused with this ERROR code and message.
    Refused(ErrorCode, String),
    ClientError {
        code: u16,
        message: String,
    },
    TimedOut,
    Cancelled,
}

async fn transfer(
    ctx: &Ctx,
    peer: SocketAddr,
    request: Request,
    cancel: CancellationToken,
    confirmed: Arc<AtomicBool>,
) -> Result<Outcome, TransferError> {
    let socket = UdpSocket::bind(SocketAddr::new(ctx.local_ip, 0))
        .await
        .map_err(TransferError::Bind)?;
    socket.connect(peer).await.map_err(TransferError::Bind)?;
    let send_error = |code: ErrorCode, message: String| {
        let socket = &socket;
        async move {
            socket
                .send(&packet::encode_error(code.code(), &message))
                .await
                .map_err(TransferError::Send)?;
            Ok::<_, TransferError>(Outcome::Refused(code, message))
        }
    };
    if request.mode == Mode::Mail {
        return send_error(
            ErrorCode::IllegalOperation,
            "mail mode not supported".into(),
        )
        .await;
    }
    if request.filename.trim_start_matches('/') == crate::dhcp::core::LOCAL_BOOT_FILE {
        // Offered to deployed UEFI firmware so that its network boot fails at once.
        return send_error(
            ErrorCode::FileNotFound,
            "local boot: no network boot file, go on to the disk".into(),
        )
        .await;
    }
    let files = ctx.files.clone();
    let name = request.filename.clone();
    let source = match tokio::task::spawn_blocking(move || files.open_for(&name, Some(peer.ip())))
        .await
        .map_err(TransferError::Join)?
    {
        Ok(s) => s,
        Err(LookupError::NotFound) => {
            return send_error(ErrorCode::FileNotFound, "file not found".into()).await
        }
        Err(e @ LookupError::AccessViolation(_)) => {
            return send_error(ErrorCode::AccessViolation, e.to_string()).await
        }
        Err(e @ LookupError::Open { .. }) => {
            warn!(%peer, error = &e as &dyn std::error::Error, "cannot open a TFTP file");
            return send_error(ErrorCode::AccessViolation, "cannot open file".into()).await;
        }
    };

    // Option negotiation (RFC 2347): acknowledge what we accept, in our own terms.
    let opts = request.options;
    let blksize = opts.blksize.map(|b| b.min(ctx.settings.max_blksize.max(8)));
    let windowsize = opts
        .windowsize
        .map(|w| w.min(ctx.settings.max_windowsize.max(1)));
    // RFC 2349: the OACK echoes the client's value or leaves the option out.
    let client_timeout = opts
        .timeout
        .filter(|t| Duration::from_secs(u64::from(*t)) <= ctx.settings.max_client_timeout);
    let timeout = client_timeout
        .map(|t| Duration::from_secs(u64::from(t)))
        .unwrap_or(ctx.settings.timeout);
    let mut oack: Vec<(&str, String)> = Vec::new();
    if let Some(b) = blksize {
        oack.push(("blksize", b.to_string()));
    }
    if opts.tsize.is_some() {
        oack.push(("tsize", source.len().to_string()));
    }
    if let Some(t) = client_timeout {
        oack.push(("timeout", t.to_string()));
    }
    if let Some(w) = windowsize {
        oack.push(("windowsize", w.to_string()));
    }
    let oack = (!oack.is_empty()).then(|| packet::encode_oack(&oack));

    let state = Transfer::new(
        source.len(),
        blksize.unwrap_or(DEFAULT_BLKSIZE),
        windowsize.unwrap_or(1),
        ctx.settings.max_retries,
        oack.is_some(),
    );
    // The data phase runs on its own thread with a blocking socket, as tftpd-hpa runs a
    // process: one send and one receive per window, no readiness polling, which on loopback
    // with windowsize 1 costs markedly less per block than the async path (see the bench).
    // A plain thread, not the blocking pool, so long transfers never starve tokio::fs users.
    if cancel.is_cancelled() {
        return Ok(Outcome::Cancelled);
    }
    let socket = socket.into_std().map_err(TransferError::Bind)?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tftp-transfer".into())
        .stack_size(TRANSFER_STACK)
        .spawn(move || {
            let result = drive(
                &socket,
                state,
                Reader::new(source),
                oack.as_deref(),
                timeout,
                &cancel,
                &confirmed,
            );
            // The awaiting task is gone only when the transfer was cancelled.
            let _ = done_tx.send(result);
        })
        .map_err(TransferError::Thread)?;
    done_rx.await.map_err(|_| TransferError::ThreadDied)?
}

/// Stack of a transfer thread: the loop keeps its buffers on the heap.
const TRANSFER_STACK: usize = 256 * 1024;

/// How often a blocked receive wakes up to notice cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The data phase of one transfer on a blocking socket; ends promptly once `cancel` fires and
/// never sends after noticing it.
fn drive(
    socket: &std::net::UdpSocket,
    mut state: Transfer,
    mut reader: Reader,
    oack: Option<&[u8]>,
    timeout: Duration,
    cancel: &CancellationToken,
    confirmed: &AtomicBool,
) -> Result<Outcome, TransferError> {
    socket.set_nonblocking(false).map_err(TransferError::Bind)?;
    socket
        .set_read_timeout(Some(timeout.min(CANCEL_POLL)))
        .map_err(TransferError::Bind)?;
    // grows to one DATA packet on the first block and keeps that capacity
    let mut out = Vec::new();
    let mut buf = vec![0u8; RECV_BUF];
    let mut deadline = Instant::now() + timeout;
    let mut action = state.start();
    loop {
        if cancel.is_cancelled() {
            return Ok(Outcome::Cancelled);
        }
        match action {
            Action::SendOack => {
                if let Some(oack) = oack {
                    socket.send(oack).map_err(TransferError::Send)?;
                }
                deadline = Instant::now() + timeout;
            }
            Action::SendBlocks(range) => {
                for index in range {
                    let span = state.block_span(index);
                    let data = reader.read(span).map_err(TransferError::Read)?;
                    out.clear();
                    packet::encode_data_header(Transfer::wire_block(index), &mut out);
                    out.extend_from_slice(data);
                    socket.send(&out).map_err(TransferError::Send)?;
                }
                deadline = Instant::now() + timeout;
            }
            Action::Wait => {}
            Action::Done => return Ok(Outcome::Sent(reader.len())),
            Action::GiveUp => {
                // Best effort: the client is probably gone.
                let _ = socket.send(&packet::encode_error(
                    ErrorCode::NotDefined.code(),
                    "timed out",
                ));
                return Ok(Outcome::TimedOut);
            }
        }
        if Instant::now() >= deadline {
            action = state.on_timeout();
            continue;
        }
        action = match socket.recv(&mut buf) {
            Ok(len) => match packet::decode(&buf[..len]) {
                Ok(Packet::Ack { block }) => {
                    let next = state.on_ack(block);
                    if next != Action::Wait {
                        confirmed.store(true, Ordering::Relaxed);
                    }
                    next
                }
                Ok(Packet::Error { code, message }) => {
                    return Ok(Outcome::ClientError { code, message })
                }
                Ok(other) => {
                    debug!(packet = ?other, "unexpected packet during a transfer");
                    Action::Wait
                }
                Err(e) => {
                    debug!(error = %e, "malformed packet during a transfer");
                    Action::Wait
                }
            },
            // Read timeout: loop to check the deadline and cancellation.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Action::Wait
            }
            // ICMP port unreachable: the client closed its port.
            Err(e) => return Err(TransferError::Recv(e)),
        };
    }
}

/// Reads blocks of a [`Source`]; from disk through a read-ahead buffer. Blocking.
#[derive(Debug)]
struct Reader {
    source: Source,
    buf: Vec<u8>,
    buf_start: u64,
}

impl Reader {
    fn new(source: Source) -> Self {
        Reader {
            source,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    fn len(&self) -> u64 {
        self.source.len()
    }

    fn read(&mut self, span: Range<u64>) -> io::Result<&[u8]> {
        let file = match &self.source {
            Source::Memory(bytes) => {
                return Ok(bytes
                    .get(to_usize(span.start)?..to_usize(span.end)?)
                    .unwrap_or_default())
            }
            Source::Disk { file, .. } => file,
        };
        let buf_end = self.buf_start + self.buf.len() as u64;
        if span.start < self.buf_start || span.end > buf_end {
            let want = READ_AHEAD.max(to_usize(span.end - span.start)?);
            self.buf.resize(want, 0);
            let mut filled = 0;
            while filled < want {
                match file.read_at(&mut self.buf[filled..], span.start + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.buf.truncate(filled);
            self.buf_start = span.start;
            if span.end > self.buf_start + self.buf.len() as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank during the transfer",
                ));
            }
        }
        let from = to_usize(span.start - self.buf_start)?;
        let to = to_usize(span.end - self.buf_start)?;
        Ok(self.buf.get(from..to).unwrap_or_default())
    }
}

fn to_usize(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(table: &mut LiveTable, peer: &str, id: u64, confirmed: bool) -> CancellationToken {
        live_for(table, peer, id, confirmed, b"rrq")
    }

    fn live_for(
        table: &mut LiveTable,
        peer: &str,
        id: u64,
        confirmed: bool,
        request: &[u8],
    ) -> CancellationToken {
        let cancel = CancellationToken::new();
        table.insert(
            peer.parse().unwrap_or_else(|_| unreachable!()),
            Live {
                id,
                cancel: cancel.clone(),
                confirmed: Arc::new(AtomicBool::new(confirmed)),
                request: request.into(),
            },
        );
        cancel
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn a_full_table_evicts_only_the_oldest_unconfirmed_transfer() {
        let settings = TftpSettings {
            max_transfers: 3,
            max_per_source: 2,
            ..TftpSettings::default()
        };
        let mut t = LiveTable::default();
        let real = live(&mut t, "10.0.0.1:1000", 1, true);
        let spoof_old = live(&mut t, "10.0.0.2:1000", 2, false);
        let spoof_new = live(&mut t, "10.0.0.3:1000", 3, false);
        assert_eq!(t.make_room(peer("10.0.0.9:1000"), &settings), Ok(()));
        assert!(spoof_old.is_cancelled());
        assert!(!spoof_new.is_cancelled() && !real.is_cancelled());
        assert_eq!(t.len(), 2);
        // all confirmed: refused
        live(&mut t, "10.0.0.4:1000", 4, true);
        t.remove(peer("10.0.0.3:1000"), 3);
        live(&mut t, "10.0.0.5:1000", 5, true);
        assert_eq!(
            t.make_room(peer("10.0.0.9:1000"), &settings),
            Err(NoSlot::Total)
        );
        // per source: two from 10.0.0.7 already
        let mut t = LiveTable::default();
        live(&mut t, "10.0.0.7:1", 1, false);
        live(&mut t, "10.0.0.7:2", 2, false);
        assert_eq!(
            t.make_room(peer("10.0.0.7:3"), &settings),
            Err(NoSlot::PerSource)
        );
        assert_eq!(t.make_room(peer("10.0.0.8:3"), &settings), Ok(()));
    }

    #[test]
    fn a_retransmitted_request_keeps_the_live_transfer_and_a_new_one_replaces_it() {
        let mut t = LiveTable::default();
        let p = peer("10.0.0.1:2000");
        // The same request again, even after the client acknowledged (a late duplicate
        // from a backed-up socket): the live transfer goes on, one more starts beside it.
        let first = live_for(&mut t, "10.0.0.1:2000", 1, true, b"rrq a");
        assert_eq!(t.admit(p, b"rrq a"), Admit::Beside);
        let second = live_for(&mut t, "10.0.0.1:2000", 2, false, b"rrq a");
        assert_eq!(
            t.admit(p, b"rrq a"),
            Admit::Ignore,
            "at most two per request"
        );
        assert!(!first.is_cancelled() && !second.is_cancelled());
        assert_eq!(t.len(), 2);
        // Another request from the same port: the client started over.
        assert_eq!(t.admit(p, b"rrq b"), Admit::Start);
        assert!(first.is_cancelled() && second.is_cancelled());
        assert_eq!(t.len(), 0);
        // Another port of the same address is another client.
        live_for(&mut t, "10.0.0.1:2000", 3, false, b"rrq a");
        assert_eq!(t.admit(peer("10.0.0.1:2001"), b"rrq b"), Admit::Start);
        assert_eq!(t.len(), 1);
        // The ended transfer leaves; its sibling stays.
        live_for(&mut t, "10.0.0.1:2000", 4, false, b"rrq a");
        t.remove(p, 3);
        assert_eq!(t.by_peer[&p].len(), 1);
        assert_eq!(t.by_peer[&p][0].id, 4);
        assert!(t.cancel_peer(p) && !t.cancel_peer(p));
    }
}
