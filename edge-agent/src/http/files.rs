//! Static files under a root directory, with HEAD and single-range requests.
//! Nothing outside the root is ever opened: `..`, absolute paths, NUL bytes and
//! symlinks that resolve outside the (canonical) root are refused.
//!
//! Two ways to send a file:
//! * [`serve_file`] builds an axum response whose body is read on a blocking thread in
//!   1 MiB pieces (one copy into user space, one into the socket);
//! * [`SendfileListener`] sits in front of `axum::serve` and answers plain `GET`/`HEAD`
//!   requests under one URL prefix itself with `sendfile(2)` (no copy through user
//!   space: nginx's way), handing every other connection, and every request it does not
//!   fully understand or that fails, to axum unchanged.

use std::io::SeekFrom;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Read size for bodies streamed through axum: large pieces mean few syscalls and
/// wake-ups per GB (measured: 64 KiB through `tokio::fs` cost 0.55 CPU-s/GB, 1 MiB on a
/// blocking thread 0.37).
const CHUNK: usize = 1024 * 1024;
/// Most bytes one `sendfile(2)` call may move, so one transfer cannot hold a runtime
/// thread for long when the file is not in the page cache.
const SENDFILE_CHUNK: usize = 1024 * 1024;
/// Longest request head the sendfile front reads before handing the connection to axum.
const MAX_HEAD: usize = 8 * 1024;
/// How long the sendfile front waits for a request head (first or keep-alive).
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a file request was not served. The one place these become status codes is
/// the [`IntoResponse`] impl below.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("no such file")]
    NotFound,
    #[error("path {0:?} leaves the served directory")]
    Forbidden(String),
    #[error("range not satisfiable for a file of {len} bytes")]
    RangeNotSatisfiable { len: u64 },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl IntoResponse for FileError {
    fn into_response(self) -> Response {
        match self {
            FileError::NotFound => (StatusCode::NOT_FOUND, "not found\n").into_response(),
            FileError::Forbidden(path) => {
                tracing::warn!(path, "refused a path outside the served directory");
                (StatusCode::FORBIDDEN, "forbidden\n").into_response()
            }
            FileError::RangeNotSatisfiable { len } => {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
            FileError::Io { .. } => {
                let chain = error_chain(&self);
                tracing::error!(error = %chain, "file request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
            }
        }
    }
}

pub use substruct_runtime::error_chain;

/// A relative request path checked lexically: only normal components.
fn lexically_safe(request: &str) -> Result<PathBuf, FileError> {
    let forbidden = || FileError::Forbidden(request.to_owned());
    if request.contains('\0') || request.contains('\\') {
        return Err(forbidden());
    }
    let path = Path::new(request);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(forbidden())
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(FileError::NotFound);
    }
    Ok(out)
}

/// Resolves `request` (already percent-decoded) under `root` (canonical), refusing
/// every way out, and returns the canonical path of a regular file.
pub async fn resolve(root: &Path, request: &str) -> Result<PathBuf, FileError> {
    let rel = lexically_safe(request)?;
    let joined = root.join(&rel);
    let real = match tokio::fs::canonicalize(&joined).await {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileError::NotFound),
        Err(e) if e.raw_os_error() == Some(20) => return Err(FileError::NotFound), // ENOTDIR
        Err(source) => {
            return Err(FileError::Io {
                path: joined,
                source,
            })
        }
    };
    if !real.starts_with(root) {
        return Err(FileError::Forbidden(request.to_owned()));
    }
    Ok(real)
}

/// A parsed `Range` header, resolved against the file length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
}

/// Parses one `bytes=` range. `Ok(None)`: serve the whole file (no header, a header we
/// do not understand, or several ranges). `Err`: unsatisfiable (416).
pub fn parse_range(value: &str, len: u64) -> Result<Option<ByteRange>, FileError> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let unsatisfiable = || FileError::RangeNotSatisfiable { len };
    let range = if a.is_empty() {
        // Suffix: the last N bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || len == 0 {
            return Err(unsatisfiable());
        }
        ByteRange {
            start: len.saturating_sub(n),
            end: len - 1,
        }
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(len.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if start >= len {
            return Err(unsatisfiable());
        }
        ByteRange { start, end }
    };
    Ok(Some(range))
}

/// Serves the regular file at `path` (already resolved), honouring HEAD and `Range`.
pub async fn serve_file(
    path: &Path,
    method: &Method,
    headers: &HeaderMap,
    content_type: &'static str,
) -> Result<Response, FileError> {
    let io = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileError::NotFound),
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().await.map_err(io)?;
    if !meta.is_file() {
        return Err(FileError::NotFound);
    }
    let len = meta.len();
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) => parse_range(v, len)?,
        None => None,
    };
    let (status, start, count) = match range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.start, r.end - r.start + 1),
        None => (StatusCode::OK, 0, len),
    };

    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, count);
    if let Some(r) = range {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{len}", r.start, r.end),
        );
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        file_body(file.into_std().await, path.to_owned(), start, count)
    };
    builder.body(body).map_err(|e| io(std::io::Error::other(e)))
}

/// A body of `count` bytes from `start`, read on a blocking thread in [`CHUNK`] pieces
/// straight into the buffers handed to hyper (`tokio::fs` would copy each piece once
/// more). One piece waits in the channel while hyper writes the previous one.
fn file_body(file: std::fs::File, path: PathBuf, start: u64, count: u64) -> Body {
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(1);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let mut file = file;
        if start > 0 {
            if let Err(e) = file.seek(SeekFrom::Start(start)) {
                tracing::warn!(path = %path.display(), error = %e, "seeking in a served file");
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
        let mut left = count;
        while left > 0 {
            let want = left.min(CHUNK as u64);
            // read_to_end fills the spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(want as usize);
            let item = match (&mut file).take(want).read_to_end(&mut buf) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} is shorter than when it was opened", path.display()),
                )),
                Ok(n) => {
                    left -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &item {
                tracing::warn!(path = %path.display(), error = %e, "reading a served file");
            }
            let failed = item.is_err();
            // A closed channel: the client went away.
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

// ---------------------------------------------------------------------------------------
// The sendfile front

/// A connection accepted by [`SendfileListener`] and handed to axum: the bytes the front
/// already read (the start of a request it did not answer) are replayed first.
#[derive(Debug)]
pub struct HandedOver {
    prefix: Bytes,
    inner: TcpStream,
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
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
}

/// An [`axum::serve::Listener`] that answers `GET`/`HEAD` of files under one URL prefix
/// with `sendfile(2)` and yields every other connection to axum.
///
/// The front only takes a request it fully understands: HTTP/1.1, `GET` or `HEAD`, a
/// target of plain characters (no `%`, no query) under the prefix naming a regular file
/// under the root ([`resolve`]), no request body, at most one `Range` header that
/// [`parse_range`] can satisfy. Anything else — other routes, errors (404, 403, 416),
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
    /// `"/images/"`, with `content_type`.
    pub fn new(
        listener: TcpListener,
        prefix: &'static str,
        root: &Path,
        content_type: &'static str,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let root = std::fs::canonicalize(root)?;
        let (tx, incoming) = mpsc::channel(64);
        let route = std::sync::Arc::new(FrontRoute {
            prefix,
            root,
            content_type,
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
    loop {
        tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(front_connection(stream, peer, tx.clone(), route.clone()));
                }
                Err(e) => {
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

/// Parses a request head (without the final empty line) if the front may take it.
fn parse_fast<'a>(head: &'a str, prefix: &str) -> Option<FastRequest<'a>> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "HTTP/1.1" {
        return None;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    let path = target.strip_prefix(prefix)?;
    let plain = |c: char| c.is_ascii_alphanumeric() || "._~/-+".contains(c);
    if path.is_empty() || !path.chars().all(plain) {
        return None;
    }
    let (mut range, mut close) = (None, false);
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return None; // obsolete line folding
        }
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
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
    Some(Planned {
        file: file.into_std().await,
        len,
        range,
    })
}

/// The request in `head` (without its final empty line) if the front answers it: the
/// opened file, `HEAD`?, `Connection: close`?
async fn take(route: &FrontRoute, head: &[u8]) -> Option<(Planned, bool, bool)> {
    let req = parse_fast(std::str::from_utf8(head).ok()?, route.prefix)?;
    let planned = plan(route, &req).await?;
    tracing::debug!(path = req.path, range = ?planned.range, "image request (sendfile)");
    Some((planned, req.head, req.close))
}

/// Serves requests on one connection until it closes, fails, or is handed to axum.
async fn front_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    tx: Handover,
    route: std::sync::Arc<FrontRoute>,
) {
    let mut pending = BytesMut::with_capacity(MAX_HEAD);
    loop {
        if tx.is_closed() {
            return;
        }
        // Read until a complete head is buffered.
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(i);
            }
            if pending.len() >= MAX_HEAD {
                break None;
            }
            match tokio::time::timeout(HEAD_TIMEOUT, stream.read_buf(&mut pending)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) if pending.is_empty() => return,
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break None,
                Ok(Ok(_)) => {}
            }
        };
        let taken = match end {
            Some(end) => take(&route, &pending[..end]).await.map(|t| (t, end + 4)),
            None => None,
        };
        let Some(((planned, head_only, close), used)) = taken else {
            let conn = HandedOver {
                prefix: pending.freeze(),
                inner: stream,
            };
            // Fails only when axum has stopped accepting: the connection is dropped.
            let _ = tx.send((conn, peer)).await;
            return;
        };
        pending.advance(used);
        if let Err(e) =
            send_planned(&mut stream, &planned, head_only, close, route.content_type).await
        {
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
    head.push_str(&format!("date: {}\r\n\r\n", http_date(SystemTime::now())));
    stream.write_all(head.as_bytes()).await?;
    if head_only {
        return Ok(());
    }
    send_file(stream, &planned.file, start, count).await
}

/// Sends `count` bytes of `file` from `offset` with `sendfile(2)`, waiting for the
/// socket to become writable whenever its buffer is full.
async fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    mut offset: u64,
    mut left: u64,
) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    while left > 0 {
        stream.writable().await?;
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
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An HTTP date (RFC 9110 IMF-fixdate), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |v, len| parse_range(v, len).map_err(|e| e.to_string());
        assert_eq!(
            r("bytes=0-9", 100),
            Ok(Some(ByteRange { start: 0, end: 9 }))
        );
        assert_eq!(
            r("bytes=90-", 100),
            Ok(Some(ByteRange { start: 90, end: 99 }))
        );
        assert_eq!(
            r("bytes=-10", 100),
            Ok(Some(ByteRange { start: 90, end: 99 }))
        );
        assert_eq!(
            r("bytes=-500", 100),
            Ok(Some(ByteRange { start: 0, end: 99 }))
        );
        assert_eq!(
            r("bytes=50-500", 100),
            Ok(Some(ByteRange { start: 50, end: 99 }))
        );
        assert_eq!(r("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(r("items=0-1", 100), Ok(None));
        assert_eq!(r("bytes=9-2", 100), Ok(None));
        assert_eq!(r("bytes=x-2", 100), Ok(None));
        assert!(r("bytes=100-", 100).is_err());
        assert!(r("bytes=-0", 100).is_err());
        assert!(r("bytes=0-0", 0).is_err());
    }

    #[test]
    fn http_dates() {
        let at = |s| http_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_399), "Mon, 28 Feb 2000 23:59:59 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_798_761_599), "Thu, 31 Dec 2026 23:59:59 GMT");
    }

    #[test]
    fn fast_path_takes_only_plain_requests() {
        let p = |h| parse_fast(h, "/images/");
        let r = p("GET /images/a/disk.img HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2").unwrap();
        assert_eq!(
            (r.head, r.path, r.range, r.close),
            (false, "a/disk.img", Some("bytes=1-2"), false)
        );
        let r = p("HEAD /images/x HTTP/1.1\r\nConnection: keep-alive, Close").unwrap();
        assert!(r.head && r.close);
        assert!(p("GET /images/x HTTP/1.1\r\nContent-Length: 0").is_some());
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
            "GET /images/x HTTP/1.1\r\nRange: bytes=1-2\r\nRange: bytes=3-4",
            "GET /images/x HTTP/1.1\r\nX-A: b\r\n c",
            "GET /images/x HTTP/1.1\r\nno colon",
        ] {
            assert!(p(other).is_none(), "{other:?}");
        }
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
        let state = super::super::HttpState::new(
            super::super::HttpSettings {
                base: "http://10.77.0.1".into(),
                site: substruct_wire::SiteId::new("s1").unwrap(),
                nats_url: "nats://10.77.0.1:4222".into(),
                extra_args: None,
                images_dir: images,
                ipxe_dir: dir.path().to_owned(),
            },
            crate::intents::IntentTable::new(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let front = SendfileListener::new(listener, "/images/", &front, "application/octet-stream")
            .unwrap();
        use axum::serve::ListenerExt;
        let app = super::super::router(state).into_make_service_with_connect_info::<SocketAddr>();
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

    #[test]
    fn lexical_checks() {
        assert!(lexically_safe("a/b.img").is_ok());
        assert!(lexically_safe("./a").is_ok());
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "a\0b",
            "a\\..\\b",
        ] {
            assert!(
                matches!(lexically_safe(bad), Err(FileError::Forbidden(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(lexically_safe(""), Err(FileError::NotFound)));
    }
}
