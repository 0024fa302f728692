//! Static files under a root directory, with HEAD and single-range requests.
//! Nothing outside the root is ever opened: `..`, absolute paths, NUL bytes and
//! symlinks that resolve outside the (canonical) root are refused.
//!
//! Two ways to send a file:
//! * [`serve_file`] builds an axum response whose body is read on a blocking thread in
//!   1 MiB pieces (one copy into user space, one into the socket);
//! * [`SendfileListener`] (in `sendfile`) sits in front of `axum::serve` and answers
//!   plain `GET`/`HEAD` requests under one URL prefix itself with `sendfile(2)` (no copy
//!   through user space: nginx's way), handing every other connection, and every request
//!   it does not fully understand or that fails, to axum unchanged.

use std::io::SeekFrom;
use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::image_cache::Fetching;

/// Read size for bodies streamed through axum: large pieces mean few syscalls and
/// wake-ups per GB (measured: 64 KiB through `tokio::fs` cost 0.55 CPU-s/GB, 1 MiB on a
/// blocking thread 0.37).
const CHUNK: usize = 1024 * 1024;

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

mod sendfile;
#[doc(hidden)]
pub use sendfile::fuzz_parse_fast;
pub use sendfile::{HandedOver, SendfileListener};

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

/// For the fuzz targets (`tests/fuzz`): [`lexically_safe`] on `request`.
#[doc(hidden)]
pub fn fuzz_lexically_safe(request: &str) -> Result<PathBuf, FileError> {
    lexically_safe(request)
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

/// Serves an image still being fetched into the cache, honouring HEAD and `Range`
/// against its registered size: the head goes out at once, the body follows the fetch
/// ([`crate::image_cache::Follow`]) and its last byte waits for the fetch's verdict. A
/// fetch that fails or does not match ends the body with an error, so hyper closes the
/// connection short of the Content-Length: the response never looks complete. (A
/// zero-byte image has no byte to hold back: the cache hands it over only once it is
/// verified, see [`crate::image_cache::ImageCache::open_image`].)
pub fn serve_fetching(
    fetching: Fetching,
    method: &Method,
    headers: &HeaderMap,
    content_type: &'static str,
) -> Result<Response, FileError> {
    let len = fetching.size();
    let sha256 = fetching.sha256().clone();
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
        let sha256 = sha256.clone();
        let follow = fetching.follow(start, count);
        Body::from_stream(futures::stream::unfold(follow, move |mut follow| {
            let sha256 = sha256.clone();
            async move {
                let item = follow.next_chunk().await?;
                if let Err(e) = &item {
                    tracing::warn!(%sha256, error = %error_chain(e),
                        "image response cut short: the fetch it followed did not succeed");
                }
                Some((item, follow))
            }
        }))
    };
    builder.body(body).map_err(|e| FileError::Io {
        path: PathBuf::from(format!("{sha256} (being fetched)")),
        source: std::io::Error::other(e),
    })
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
