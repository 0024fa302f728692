//! A small HTTP/1.1 GET client for one job: streaming a disk image from the edge.
//!
//! `http://` only, one request per connection (`Connection: close`), bodies framed by
//! `Content-Length` only (no chunked transfer coding), status 200 required. The base
//! URL is parsed by the `url` crate ([`BaseUrl`]), the response head by `httparse`
//! under a size limit ([`parse_response_head`]), and every socket operation has a
//! timeout. Nothing here knows about disks or NATS; it keeps the static binary free
//! of a full HTTP stack.

mod base_url;
mod head;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use base_url::{BaseUrl, UrlError};
use head::excerpt;
pub use head::{parse_response_head, HeadError, ResponseHead, MAX_HEADERS, MAX_HEAD_BYTES};

/// Why a GET did not deliver a body.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid request path {path:?}")]
    BadPath { path: String },
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no progress from {url} within {after:?} ({during})")]
    Timeout {
        url: String,
        after: Duration,
        during: &'static str,
    },
    #[error("sending the request to {url} failed")]
    Send {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the response from {url} failed")]
    Read {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} closed the connection before the end of the response head")]
    ClosedInHead { url: String },
    #[error("malformed response head from {url}")]
    Head {
        url: String,
        #[source]
        source: HeadError,
    },
    #[error("HTTP {status} {reason} for GET {url}")]
    Status {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("no Content-Length in the response for GET {url} (required)")]
    NoLength { url: String },
    #[error("Transfer-Encoding {value:?} in the response for GET {url} is not supported")]
    TransferEncoding { url: String, value: String },
    #[error("the body of {url} ended after {received} of {expected} bytes")]
    Truncated {
        url: String,
        received: u64,
        expected: u64,
    },
}

/// A 200 response whose body is being read.
#[derive(Debug)]
pub struct Response {
    head: ResponseHead,
    url: String,
    stream: TcpStream,
    /// Body bytes that arrived with the head.
    early: Vec<u8>,
    early_pos: usize,
    expected: u64,
    received: u64,
    timeout: Duration,
}

/// `GET {base}{path}`: connects, sends the request and reads the head. `timeout` bounds
/// the connect and every later read (an idle limit, not a limit on the whole body).
pub async fn get(base: &BaseUrl, path: &str, timeout: Duration) -> Result<Response, HttpError> {
    let target = base.target(path);
    if !target.starts_with('/')
        || target
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(HttpError::BadPath { path: target });
    }
    let url = format!("http://{}{target}", base.authority());
    let timed_out = |during| HttpError::Timeout {
        url: url.clone(),
        after: timeout,
        during,
    };
    let connect = TcpStream::connect((base.host(), base.port()));
    let mut stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| timed_out("connecting"))?
        .map_err(|source| HttpError::Connect {
            url: url.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: substruct-prospector/{}\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        base.authority(),
        env!("CARGO_PKG_VERSION")
    );
    tokio::time::timeout(timeout, stream.write_all(request.as_bytes()))
        .await
        .map_err(|_| timed_out("sending the request"))?
        .map_err(|source| HttpError::Send {
            url: url.clone(),
            source,
        })?;

    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let (head, consumed) = loop {
        match parse_response_head(&buf) {
            Ok(Some(done)) => break done,
            Ok(None) => {}
            Err(source) => {
                return Err(HttpError::Head {
                    url: url.clone(),
                    source,
                })
            }
        }
        // Never read past the head limit (plus one chunk of body).
        let n = tokio::time::timeout(timeout, stream.read(&mut chunk))
            .await
            .map_err(|_| timed_out("waiting for the response head"))?
            .map_err(|source| HttpError::Read {
                url: url.clone(),
                source,
            })?;
        if n == 0 {
            return Err(HttpError::ClosedInHead { url });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head.status != 200 {
        return Err(HttpError::Status {
            url,
            status: head.status,
            reason: excerpt(head.reason.as_bytes()),
        });
    }
    if let Some(value) = head.transfer_encoding.clone() {
        return Err(HttpError::TransferEncoding {
            url,
            value: excerpt(value.as_bytes()),
        });
    }
    let Some(expected) = head.content_length else {
        return Err(HttpError::NoLength { url });
    };
    buf.drain(..consumed);
    let early_len = u64::try_from(buf.len()).unwrap_or(u64::MAX).min(expected);
    buf.truncate(usize::try_from(early_len).unwrap_or(usize::MAX));
    Ok(Response {
        head,
        url,
        stream,
        early: buf,
        early_pos: 0,
        expected,
        received: 0,
        timeout,
    })
}

impl Response {
    /// The parsed head.
    pub fn head(&self) -> &ResponseHead {
        &self.head
    }

    /// The body's length from `Content-Length`.
    pub fn content_length(&self) -> u64 {
        self.expected
    }

    /// The full URL requested.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Reads body bytes into `buf`; `Ok(0)` once the whole body has been read. A body
    /// that ends early is [`HttpError::Truncated`]; no bytes past `Content-Length` are
    /// ever returned.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, HttpError> {
        let remaining = self.expected.saturating_sub(self.received);
        if remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = if self.early_pos < self.early.len() {
            let available = &self.early[self.early_pos..];
            let n = available.len().min(want);
            buf[..n].copy_from_slice(&available[..n]);
            self.early_pos += n;
            n
        } else {
            let n = tokio::time::timeout(self.timeout, self.stream.read(&mut buf[..want]))
                .await
                .map_err(|_| HttpError::Timeout {
                    url: self.url.clone(),
                    after: self.timeout,
                    during: "reading the body",
                })?
                .map_err(|source| HttpError::Read {
                    url: self.url.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(HttpError::Truncated {
                    url: self.url.clone(),
                    received: self.received,
                    expected: self.expected,
                });
            }
            n
        };
        self.received += n as u64;
        Ok(n)
    }

    /// Fills `buf` completely, or up to the end of the body; returns how much was read.
    pub async fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, HttpError> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn a_malformed_head_names_the_url_and_the_cause() {
        let err = HttpError::Head {
            url: "http://e/x".into(),
            source: HeadError::TooLarge { limit: 16384 },
        };
        assert_eq!(
            substruct_runtime::error_chain(&err),
            "malformed response head from http://e/x: response head larger than 16384 bytes"
        );
    }

    /// Serves `response` to one connection on loopback, after reading the request.
    async fn serve_once(response: Vec<u8>) -> (BaseUrl, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            // The client may hang up early (refused heads): not the server's problem.
            let _ = s.write_all(&response).await;
            let _ = s.shutdown().await;
            String::from_utf8(req).unwrap()
        });
        (
            BaseUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            task,
        )
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_body_is_read_to_its_content_length() {
        let (base, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA".to_vec()).await;
        let mut resp = get(&base, "/images/x", T).await.unwrap();
        assert_eq!(resp.content_length(), 5);
        let mut buf = [0u8; 64];
        let n = resp.read_full(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(resp.read(&mut buf).await.unwrap(), 0);
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /images/x HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", base.port())));
        assert!(request.contains("\r\nConnection: close\r\n"));
    }

    #[tokio::test]
    async fn short_bodies_statuses_and_framing_are_errors() {
        let (base, _s) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello".to_vec()).await;
        let mut resp = get(&base, "/x", T).await.unwrap();
        let mut buf = [0u8; 64];
        match resp.read_full(&mut buf).await {
            Err(HttpError::Truncated {
                received: 5,
                expected: 10,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let (base, _s) = serve_once(b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec()).await;
        let err = get(&base, "/images/none", T).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "HTTP 404 Not Found for GET http://127.0.0.1:{}/images/none",
                base.port()
            )
        );
        let (base, _s) = serve_once(b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec()).await;
        assert!(matches!(
            get(&base, "/x", T).await,
            Err(HttpError::NoLength { .. })
        ));
        let (base, _s) =
            serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello".to_vec())
                .await;
        assert!(matches!(
            get(&base, "/x", T).await,
            Err(HttpError::TransferEncoding { .. })
        ));
        let (base, _s) = serve_once(b"HTTP/1.1 200 OK\r\nContent-".to_vec()).await;
        assert!(matches!(
            get(&base, "/x", T).await,
            Err(HttpError::ClosedInHead { .. })
        ));
        let (base, _s) = serve_once(vec![b'A'; MAX_HEAD_BYTES + 10]).await;
        assert!(matches!(
            get(&base, "/x", T).await,
            Err(HttpError::Head {
                source: HeadError::TooLarge { .. },
                ..
            })
        ));
        assert!(matches!(
            get(&base, "/a b", T).await,
            Err(HttpError::BadPath { .. })
        ));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let base = BaseUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        match get(&base, "/x", Duration::from_millis(200)).await {
            Err(HttpError::Timeout { during, .. }) => {
                assert_eq!(during, "waiting for the response head")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_url() {
        let port = substruct_testkit::free_port();
        let base = BaseUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = get(&base, "/images/a", T).await.unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }));
        assert!(err
            .to_string()
            .contains(&format!("127.0.0.1:{port}/images/a")));
    }
}
