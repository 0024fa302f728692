//! The sendfile front of [`super`]: a listener in front of `axum::serve` that answers
//! plain `GET`/`HEAD` of files under one URL prefix itself with `sendfile(2)` and hands
//! every other connection, bytes already read included, to axum. Request heads are
//! parsed with `httparse`; dates are written with `httpdate`.
//!
//! Every connection is admitted here first against [`HttpLimits`]' connection caps (a
//! refused one is closed at once) and carries its [`ConnPermit`] until it closes, with
//! axum too. The front enforces the idle, header and write timeouts on what it serves;
//! [`HandedOver`] enforces the write timeout for axum (hyper has the header timer).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use substruct_wire::ImageName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use super::{parse_range, resolve, ByteRange};
use crate::http::limits::{ConnPermit, ConnTracker, HttpLimits};
use crate::metrics::{HttpFailure, HttpRoute, Metrics};

/// Most bytes one `sendfile(2)` call may move, so one transfer cannot hold a runtime
/// thread for long when the file is not in the page cache.
const SENDFILE_CHUNK: usize = 1024 * 1024;
/// Longest request head the sendfile front reads before handing the connection to axum.
const MAX_HEAD: usize = 8 * 1024;

/// A connection accepted by [`SendfileListener`] and handed to axum: the bytes the front
/// already read (the start of a request it did not answer) are replayed first. A write
/// that makes no progress for the write timeout fails with `TimedOut` (a client that
/// stopped reading); the connection's [`ConnPermit`] is given back when it is dropped.
#[derive(Debug)]
pub struct HandedOver {
    prefix: Bytes,
    inner: TcpStream,
    write_timeout: Duration,
    /// Running while a write is pending; reset by any progress.
    write_stall: Option<Pin<Box<Sleep>>>,
    _permit: ConnPermit,
}

impl HandedOver {
    /// Passes on a finished write; on `Pending`, fails once the stall timer fires.
    fn stalled<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Pending => {
                let timeout = self.write_timeout;
                let timer = self
                    .write_stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match std::future::Future::poll(timer.as_mut(), cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            done => {
                self.write_stall = None;
                done
            }
        }
    }
}

impl AsyncRead for HandedOver {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HandedOver {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stalled(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stalled(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.stalled(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the front serves itself: files under `root` at URLs under `prefix`.
#[derive(Debug)]
struct FrontRoute {
    prefix: &'static str,
    root: PathBuf,
    content_type: &'static str,
    limits: HttpLimits,
    /// Where the requests the front answers are counted (as `image` requests).
    metrics: std::sync::Arc<Metrics>,
}

/// An [`axum::serve::Listener`] that answers `GET`/`HEAD` of files under one URL prefix
/// with `sendfile(2)` and yields every other connection to axum.
///
/// The front only takes a request it fully understands: HTTP/1.1, `GET` or `HEAD`, a
/// target under the prefix that is a plain [`ImageName`] (no `%`, no query) naming a
/// regular file under the root ([`resolve`]), no request body, at most one `Range`
/// header that [`parse_range`] can satisfy. Anything else — other routes, errors (404, 403, 416),
/// unusual requests — goes to axum with the bytes read so far replayed
/// ([`HandedOver`]), so the answers are axum's. Once handed over, a connection stays
/// with axum. Connections the front serves are not tracked by axum's graceful
/// shutdown: a transfer in progress continues until it ends; no new request is taken
/// once the listener is dropped.
#[derive(Debug)]
pub struct SendfileListener {
    incoming: mpsc::Receiver<(HandedOver, SocketAddr)>,
    local: SocketAddr,
}

impl SendfileListener {
    /// Takes over `listener` (must be called inside a tokio runtime: spawns the accept
    /// loop). Files are served from `root` at URLs `prefix` + relative path, e.g.
    /// `"/images/"`, with `content_type`; connections are admitted and timed by `limits`.
    pub fn new(
        listener: TcpListener,
        prefix: &'static str,
        root: &Path,
        content_type: &'static str,
        limits: HttpLimits,
    ) -> std::io::Result<Self> {
        let metrics = std::sync::Arc::new(Metrics::new());
        Self::new_with_metrics(listener, prefix, root, content_type, limits, metrics)
    }

    /// [`new`](Self::new), counting the requests the front answers, the bytes it sends
    /// and the connections it refuses into `metrics`.
    pub fn new_with_metrics(
        listener: TcpListener,
        prefix: &'static str,
        root: &Path,
        content_type: &'static str,
        limits: HttpLimits,
        metrics: std::sync::Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let root = std::fs::canonicalize(root)?;
        let (tx, incoming) = mpsc::channel(64);
        let route = std::sync::Arc::new(FrontRoute {
            prefix,
            root,
            content_type,
            limits,
            metrics,
        });
        tokio::spawn(accept_loop(listener, tx, route));
        Ok(Self { incoming, local })
    }
}

impl axum::serve::Listener for SendfileListener {
    type Io = HandedOver;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // The accept loop never ends while this receiver lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

type Handover = mpsc::Sender<(HandedOver, SocketAddr)>;

async fn accept_loop(listener: TcpListener, tx: Handover, route: std::sync::Arc<FrontRoute>) {
    let tracker = ConnTracker::new(&route.limits);
    loop {
        tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Over a cap: closed at once (logged by the tracker).
                    let Ok(permit) = tracker.admit(peer.ip()) else {
                        route.metrics.http.failure(HttpFailure::ConnectionRefused);
                        continue;
                    };
                    tokio::spawn(front_connection(stream, permit, peer, tx.clone(), route.clone()));
                }
                Err(e) => {
                    route.metrics.http.failure(HttpFailure::Accept);
                    // Out of descriptors and the like: back off as axum does.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// A request the front will answer itself.
#[derive(Debug)]
struct FastRequest<'a> {
    head: bool,
    path: &'a str,
    range: Option<&'a str>,
    close: bool,
}

/// What the front makes of the bytes read so far on a connection.
#[derive(Debug)]
enum Head<'a> {
    /// A complete request head of `.1` bytes the front may take.
    Fast(FastRequest<'a>, usize),
    /// The head is not complete yet.
    Partial,
    /// Anything else (another route or method, an unusual or malformed request): axum's.
    Other,
}

/// Most header lines the front parses; a request with more goes to axum.
const MAX_HEADERS: usize = 64;

/// Parses the request head at the start of `buf` (with `httparse`) and says whether the
/// front may take it: HTTP/1.1 `GET`/`HEAD` of a plain path under `prefix`, no body, at
/// most one `Range`, no `Expect`/`Upgrade`.
fn parse_fast<'a>(buf: &'a [u8], prefix: &str) -> Head<'a> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    match fast_request(&req, prefix) {
        Some(fast) => Head::Fast(fast, used),
        None => Head::Other,
    }
}

/// For the fuzz targets (`tests/fuzz`): [`parse_fast`] on `buf`, reduced to what it
/// decided — `Some((head_only, path, range, close, head_len))` for a request the front
/// takes, `None` for a partial head or one left to axum.
#[doc(hidden)]
pub fn fuzz_parse_fast<'a>(
    buf: &'a [u8],
    prefix: &str,
) -> Option<(bool, &'a str, Option<&'a str>, bool, usize)> {
    match parse_fast(buf, prefix) {
        Head::Fast(r, used) => Some((r.head, r.path, r.range, r.close, used)),
        Head::Partial | Head::Other => None,
    }
}

/// The checks of [`parse_fast`] on a parsed head.
fn fast_request<'a>(req: &httparse::Request<'_, 'a>, prefix: &str) -> Option<FastRequest<'a>> {
    if req.version != Some(1) {
        return None;
    }
    let head_only = match req.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    // A plain image name: nothing to percent-decode, no query, no way out of the root.
    let path = req.path?.strip_prefix(prefix)?;
    ImageName::parse(path).ok()?;
    let (mut range, mut close) = (None, false);
    for header in req.headers.iter() {
        let (name, value) = (header.name, std::str::from_utf8(header.value).ok()?.trim());
        if name.eq_ignore_ascii_case("range") {
            if range.is_some() {
                return None;
            }
            range = Some(value);
        } else if name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if (name.eq_ignore_ascii_case("content-length") && value != "0")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        }
    }
    Some(FastRequest {
        head: head_only,
        path,
        range,
        close,
    })
}

/// An open file and what to send of it.
#[derive(Debug)]
struct Planned {
    file: std::fs::File,
    len: u64,
    range: Option<ByteRange>,
}

/// Opens what `req` asks for, or `None` to let axum answer (and report any error).
async fn plan(route: &FrontRoute, req: &FastRequest<'_>) -> Option<Planned> {
    let real = resolve(&route.root, req.path).await.ok()?;
    let file = tokio::fs::File::open(&real).await.ok()?;
    let meta = file.metadata().await.ok()?;
    if !meta.is_file() {
        return None;
    }
    let len = meta.len();
    let range = match req.range {
        Some(v) => parse_range(v, len).ok()?,
        None => None,
    };
    tracing::debug!(path = req.path, ?range, "image request (sendfile)");
    Some(Planned {
        file: file.into_std().await,
        len,
        range,
    })
}

/// What to do with the next request on a front connection.
#[derive(Debug)]
enum Next {
    /// Send `planned` (`HEAD`?, `Connection: close`?) and drop the `used` head bytes.
    Send {
        planned: Planned,
        head_only: bool,
        close: bool,
        used: usize,
    },
    /// Give the connection, with what was read, to axum.
    HandOver,
    /// The client went away between requests.
    Closed,
}

/// Reads until a complete request head is buffered and decides who answers it. The
/// connection is closed when no byte of a request comes within the idle timeout, or the
/// head is not complete within the header timeout of its first byte.
async fn next_request(stream: &mut TcpStream, pending: &mut BytesMut, route: &FrontRoute) -> Next {
    let limits = &route.limits;
    let mut deadline = Instant::now() + limits.idle_timeout;
    let mut head_started = !pending.is_empty();
    if head_started {
        deadline = Instant::now() + limits.header_timeout;
    }
    loop {
        match parse_fast(pending, route.prefix) {
            Head::Fast(req, used) => {
                return match plan(route, &req).await {
                    Some(planned) => Next::Send {
                        planned,
                        head_only: req.head,
                        close: req.close,
                        used,
                    },
                    None => Next::HandOver,
                }
            }
            Head::Partial if pending.len() < MAX_HEAD => {}
            Head::Partial | Head::Other => return Next::HandOver,
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(pending)).await {
            // Idle, or a head too slow to finish: closed (a slow head is not axum's either).
            Err(_) => return Next::Closed,
            Ok(Ok(0)) | Ok(Err(_)) if pending.is_empty() => return Next::Closed,
            Ok(Ok(0)) | Ok(Err(_)) => return Next::HandOver,
            Ok(Ok(_)) => {
                if !head_started {
                    head_started = true;
                    deadline = Instant::now() + limits.header_timeout;
                }
            }
        }
    }
}

/// Serves requests on one connection until it closes, fails, or is handed to axum.
async fn front_connection(
    mut stream: TcpStream,
    permit: ConnPermit,
    peer: SocketAddr,
    tx: Handover,
    route: std::sync::Arc<FrontRoute>,
) {
    let mut pending = BytesMut::with_capacity(MAX_HEAD);
    loop {
        if tx.is_closed() {
            return;
        }
        let (planned, head_only, close, used) =
            match next_request(&mut stream, &mut pending, &route).await {
                Next::Send {
                    planned,
                    head_only,
                    close,
                    used,
                } => (planned, head_only, close, used),
                Next::Closed => return,
                Next::HandOver => {
                    let conn = HandedOver {
                        prefix: pending.freeze(),
                        inner: stream,
                        write_timeout: route.limits.write_timeout,
                        write_stall: None,
                        _permit: permit,
                    };
                    // Fails only when axum has stopped accepting: the connection is dropped.
                    let _ = tx.send((conn, peer)).await;
                    return;
                }
            };
        pending.advance(used);
        let status = if planned.range.is_some() { 206 } else { 200 };
        route.metrics.http.request(HttpRoute::Image, status);
        if let Err(e) = send_planned(
            &mut stream,
            &planned,
            head_only,
            close,
            route.content_type,
            route.limits.write_timeout,
            &route.metrics,
        )
        .await
        {
            route.metrics.http.failure(HttpFailure::TransferAborted);
            tracing::debug!(%peer, error = %e, "file transfer ended early");
            return;
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

async fn send_planned(
    stream: &mut TcpStream,
    planned: &Planned,
    head_only: bool,
    close: bool,
    content_type: &str,
    write_timeout: Duration,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let len = planned.len;
    let (status, start, count) = match planned.range {
        Some(r) => ("206 Partial Content", r.start, r.end - r.start + 1),
        None => ("200 OK", 0, len),
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\naccept-ranges: bytes\r\n\
         content-length: {count}\r\n"
    );
    if let Some(r) = planned.range {
        head.push_str(&format!(
            "content-range: bytes {}-{}/{len}\r\n",
            r.start, r.end
        ));
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str(&format!(
        "date: {}\r\n\r\n",
        httpdate::fmt_http_date(SystemTime::now())
    ));
    tokio::time::timeout(write_timeout, stream.write_all(head.as_bytes()))
        .await
        .map_err(|_| stopped_reading())??;
    if head_only {
        return Ok(());
    }
    send_file(stream, &planned.file, start, count, write_timeout, metrics).await
}

fn stopped_reading() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")
}

/// Sends `count` bytes of `file` from `offset` with `sendfile(2)`, waiting for the
/// socket to become writable whenever its buffer is full.
async fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    mut offset: u64,
    mut left: u64,
    write_timeout: Duration,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    while left > 0 {
        tokio::time::timeout(write_timeout, stream.writable())
            .await
            .map_err(|_| stopped_reading())??;
        let want = NonZeroUsize::new(left.min(SENDFILE_CHUNK as u64) as usize);
        let at = usize::try_from(offset).map_err(std::io::Error::other)?;
        match stream.try_io(Interest::WRITABLE, || sock.sendfile(file, at, want)) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file is shorter than when it was opened",
                ))
            }
            Ok(n) => {
                offset += n as u64;
                left -= n as u64;
                metrics.http.image_bytes(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_takes_only_plain_requests() {
        let fast = |h: &str| {
            let bytes = format!("{h}\r\n\r\n");
            match parse_fast(bytes.as_bytes(), "/images/") {
                Head::Fast(r, used) => {
                    assert_eq!(used, bytes.len());
                    Some((
                        r.head,
                        r.path.to_owned(),
                        r.range.map(str::to_owned),
                        r.close,
                    ))
                }
                Head::Partial => panic!("{h:?} is complete"),
                Head::Other => None,
            }
        };
        assert_eq!(
            fast("GET /images/a/disk.img HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2"),
            Some((false, "a/disk.img".into(), Some("bytes=1-2".into()), false))
        );
        let r = fast("HEAD /images/x HTTP/1.1\r\nConnection: keep-alive, Close").unwrap();
        assert!(r.0 && r.3);
        assert!(fast("GET /images/x HTTP/1.1\r\nContent-Length: 0").is_some());
        for other in [
            "GET /images/x HTTP/1.0",
            "POST /images/x HTTP/1.1",
            "GET /boot.ipxe HTTP/1.1",
            "GET /images/ HTTP/1.1",
            "GET /images/a%20b HTTP/1.1",
            "GET /images/x?y=1 HTTP/1.1",
            "GET /images/x HTTP/1.1 extra",
            "GET /images/x HTTP/1.1\r\nContent-Length: 5",
            "GET /images/x HTTP/1.1\r\nTransfer-Encoding: chunked",
            "GET /images/x HTTP/1.1\r\nExpect: 100-continue",
            "GET /images/x HTTP/1.1\r\nUpgrade: h2c",
            "GET /images/x HTTP/1.1\r\nRange: bytes=1-2\r\nRange: bytes=3-4",
            "GET /images/x HTTP/1.1\r\nX-A: b\r\n c",
            "GET /images/x HTTP/1.1\r\nno colon",
        ] {
            assert_eq!(fast(other), None, "{other:?}");
        }
        let not_utf8 = b"GET /images/x HTTP/1.1\r\nX-A: \xff\r\n\r\n";
        assert!(matches!(parse_fast(not_utf8, "/images/"), Head::Other));
        // Incomplete heads wait for more bytes; pipelined requests are taken one by one.
        for partial in ["", "GET /images/x HTTP/1.1\r\nHost: x\r\n", "GET /ima"] {
            assert!(matches!(
                parse_fast(partial.as_bytes(), "/images/"),
                Head::Partial
            ));
        }
        let two = b"GET /images/a HTTP/1.1\r\n\r\nGET /images/b HTTP/1.1\r\n\r\n";
        assert!(matches!(
            parse_fast(two, "/images/"),
            Head::Fast(FastRequest { path: "a", .. }, 26)
        ));
        let many = format!(
            "GET /images/x HTTP/1.1\r\n{}\r\n",
            "X-A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            parse_fast(many.as_bytes(), "/images/"),
            Head::Other
        ));
    }

    /// A response read off a raw connection.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Reads one response; `pending` keeps bytes of the next one.
    async fn read_answer(conn: &mut TcpStream, pending: &mut Vec<u8>, head_only: bool) -> Answer {
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut buf = vec![0u8; 64 * 1024];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before a response head");
            pending.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8(pending[..end].to_vec()).unwrap();
        pending.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_owned(), v.trim().to_owned())
            })
            .collect();
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = if head_only {
            0
        } else {
            answer.header("content-length").unwrap().parse().unwrap()
        };
        while pending.len() < len {
            let mut buf = vec![0u8; 256 * 1024];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed inside a body");
            pending.extend_from_slice(&buf[..n]);
        }
        answer.body = pending.drain(..len).collect();
        answer
    }

    /// The front serves `front/` while the router behind it serves `images/`: a file
    /// with the same name differs between the two, so each answer shows who gave it.
    struct Setup {
        addr: SocketAddr,
        front_file: Vec<u8>,
        _dir: tempfile::TempDir,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (front, images) = (dir.path().join("front"), dir.path().join("images"));
        std::fs::create_dir_all(&front).unwrap();
        std::fs::create_dir_all(&images).unwrap();
        // Several sendfile pieces, not a multiple of the page size.
        let front_file: Vec<u8> = (0..3 * SENDFILE_CHUNK as u32 + 4321)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(front.join("disk.img"), &front_file).unwrap();
        std::fs::write(images.join("disk.img"), b"served by axum").unwrap();
        std::fs::write(images.join("only-axum.img"), b"axum only").unwrap();
        let state = crate::http::HttpState::new(
            crate::http::HttpSettings {
                base: "http://10.77.0.1".into(),
                site: substruct_wire::SiteId::new("s1").unwrap(),
                nats_url: "nats://10.77.0.1:4222".into(),
                base6: None,
                nats_url6: None,
                ipv6_only: false,
                extra_args: None,
                images_dir: images,
                ipxe_dir: dir.path().to_owned(),
                limits: crate::http::limits::HttpLimits::default(),
            },
            crate::intents::IntentTable::new(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let front = SendfileListener::new(
            listener,
            "/images/",
            &front,
            "application/octet-stream",
            crate::http::limits::HttpLimits::default(),
        )
        .unwrap();
        use axum::serve::ListenerExt;
        let app = crate::http::router(state).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(front.tap_io(|_| {}), app).await });
        Setup {
            addr,
            front_file,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn front_sends_files_and_ranges_then_hands_over_on_the_same_connection() {
        let s = setup().await;
        let len = s.front_file.len();
        let mut conn = TcpStream::connect(s.addr).await.unwrap();
        let mut pending = Vec::new();
        let get = |extra: &str| format!("GET /images/disk.img HTTP/1.1\r\nHost: t\r\n{extra}\r\n");

        conn.write_all(get("").as_bytes()).await.unwrap();
        let a = read_answer(&mut conn, &mut pending, false).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-length"), Some(len.to_string().as_str()));
        assert_eq!(a.header("accept-ranges"), Some("bytes"));
        assert!(a.header("date").is_some_and(|d| d.ends_with(" GMT")));
        assert!(a.body == s.front_file, "whole file differs");

        // Two pipelined requests in one write: a range and a suffix range.
        let req = get("Range: bytes=5000-1500000\r\n") + &get("Range: bytes=-10\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        let a = read_answer(&mut conn, &mut pending, false).await;
        assert_eq!(a.status, 206);
        assert_eq!(
            a.header("content-range"),
            Some(format!("bytes 5000-1500000/{len}").as_str())
        );
        assert!(a.body == s.front_file[5000..=1_500_000], "range differs");
        let a = read_answer(&mut conn, &mut pending, false).await;
        assert_eq!(a.status, 206);
        assert_eq!(a.body, s.front_file[len - 10..]);

        conn.write_all(b"HEAD /images/disk.img HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let a = read_answer(&mut conn, &mut pending, true).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-length"), Some(len.to_string().as_str()));

        // Not under the prefix: axum answers, on the same connection.
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let a = read_answer(&mut conn, &mut pending, false).await;
        assert_eq!((a.status, a.body.as_slice()), (200, b"ok s1\n".as_slice()));
        assert!(pending.is_empty());
    }

    #[tokio::test]
    async fn front_leaves_misses_errors_and_unusual_requests_to_axum() {
        let s = setup().await;
        let ask = |req: &'static str, head_only| async move {
            let mut conn = TcpStream::connect(s.addr).await.unwrap();
            conn.write_all(req.as_bytes()).await.unwrap();
            read_answer(&mut conn, &mut Vec::new(), head_only).await
        };
        // Not in the front's root: axum's root has it.
        let a = ask(
            "GET /images/only-axum.img HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(
            (a.status, a.body.as_slice()),
            (200, b"axum only".as_slice())
        );
        // Percent-encoded, HTTP/1.0, unsatisfiable range: axum answers from its root.
        let a = ask("GET /images/disk%2Eimg HTTP/1.1\r\nHost: t\r\n\r\n", false).await;
        assert_eq!(
            (a.status, a.body.as_slice()),
            (200, b"served by axum".as_slice())
        );
        let a = ask("GET /images/disk.img HTTP/1.0\r\n\r\n", false).await;
        assert_eq!(a.body.as_slice(), b"served by axum");
        let a = ask(
            "GET /images/disk.img HTTP/1.1\r\nHost: t\r\nRange: bytes=99999999-\r\n\r\n",
            true,
        )
        .await;
        assert_eq!(a.status, 416);
        let a = ask(
            "GET /images/../etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(a.status, 403);
        let a = ask("GET /images/missing HTTP/1.1\r\nHost: t\r\n\r\n", false).await;
        assert_eq!(a.status, 404);
    }

    #[tokio::test]
    async fn front_closes_when_asked() {
        let s = setup().await;
        let mut conn = TcpStream::connect(s.addr).await.unwrap();
        conn.write_all(b"GET /images/disk.img HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut pending = Vec::new();
        let a = read_answer(&mut conn, &mut pending, false).await;
        assert_eq!((a.status, a.header("connection")), (206, Some("close")));
        assert_eq!(a.body, s.front_file[..10]);
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty() && pending.is_empty());
    }
}
