//! A small HTTP/1.1 GET client for one job: streaming a disk image from the edge.
//!
//! `http://` only, one request per connection (`Connection: close`), bodies framed by
//! `Content-Length` only (no chunked transfer coding), status 200 required. The
//! response head is parsed by the pure [`parse_response_head`] under a size limit, and
//! every socket operation has a timeout. Nothing here knows about disks or NATS; it
//! keeps the static binary free of a full HTTP stack.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head (status line + headers + blank line) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines accepted in a response head.
pub const MAX_HEADERS: usize = 64;
/// Longest excerpt of an offending line kept in an error.
const EXCERPT: usize = 80;

/// An `http://host[:port][/path]` base URL, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    host: String,
    port: u16,
    /// Without the trailing `/`; empty for the root.
    path: String,
}

/// Why a base URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad URL {url:?}: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: &'static str,
}

impl BaseUrl {
    /// Parses `http://host[:port][/path]` (IPv6 hosts in brackets); `https://`,
    /// credentials, queries and fragments are refused.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let err = |why| UrlError {
            url: text.to_owned(),
            why,
        };
        if text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return Err(err("contains whitespace, control or non-ASCII characters"));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(err("no scheme: expected http://host[:port]"));
        };
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(err("only http:// is supported"));
        }
        if rest.contains(['?', '#']) {
            return Err(err("a query or fragment is not allowed"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(err("credentials are not allowed"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(err("unclosed [ in the host"));
            };
            if host.is_empty() || !host.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                return Err(err("bad IPv6 host"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| err("junk after ]"))?),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(err("no host"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        {
            return Err(err("bad character in the host"));
        }
        let port = match port {
            None => 80,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                match p.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => return Err(err("bad port")),
                }
            }
            Some(_) => return Err(err("bad port")),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The host name or address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port (80 when the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` as the `Host` header writes it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The request target for `path` (which starts with `/`) under this base.
    pub fn target(&self, path: &str) -> String {
        format!("{}{path}", self.path)
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// The parts of a response head this client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub content_length: Option<u64>,
    pub transfer_encoding: Option<String>,
}

/// Why a response head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("response head larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("more than {limit} header lines")]
    TooManyHeaders { limit: usize },
    #[error("malformed status line {line:?}")]
    StatusLine { line: String },
    #[error("malformed header line {line:?}")]
    HeaderLine { line: String },
    #[error("invalid Content-Length {value:?}")]
    ContentLength { value: String },
    #[error("conflicting Content-Length headers ({first} and {second})")]
    ConflictingLength { first: u64, second: u64 },
}

/// Pure: parses the response head at the start of `buf`.
///
/// `Ok(None)`: not complete yet (read more); `Ok(Some((head, n)))`: the head is the
/// first `n` bytes, the body starts at `n`. Lines end in CRLF; obsolete line folding,
/// bare CR or LF inside a line, and heads over [`MAX_HEAD_BYTES`] are errors.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD_BYTES {
            Err(HeadError::TooLarge {
                limit: MAX_HEAD_BYTES,
            })
        } else {
            Ok(None)
        };
    };
    let consumed = end + 4;
    if consumed > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge {
            limit: MAX_HEAD_BYTES,
        });
    }
    let text = &buf[..end];
    let mut lines = split_crlf(text);
    let status_line = lines.next().unwrap_or_default();
    let (status, reason) = parse_status_line(status_line).ok_or_else(|| HeadError::StatusLine {
        line: excerpt(status_line),
    })?;
    let mut head = ResponseHead {
        status,
        reason,
        content_length: None,
        transfer_encoding: None,
    };
    for (count, line) in lines.enumerate() {
        if count >= MAX_HEADERS {
            return Err(HeadError::TooManyHeaders { limit: MAX_HEADERS });
        }
        let bad = || HeadError::HeaderLine {
            line: excerpt(line),
        };
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(bad());
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|b| is_token_byte(*b)) {
            return Err(bad());
        }
        if value
            .iter()
            .any(|b| *b == b'\r' || *b == b'\n' || *b == 0 || (*b < 0x20 && *b != b'\t'))
        {
            return Err(bad());
        }
        let value = String::from_utf8_lossy(value)
            .trim_matches([' ', '\t'])
            .to_owned();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(&value).ok_or_else(|| HeadError::ContentLength {
                value: excerpt(value.as_bytes()),
            })?;
            match head.content_length {
                Some(first) if first != n => {
                    return Err(HeadError::ConflictingLength { first, second: n })
                }
                _ => head.content_length = Some(n),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            head.transfer_encoding = Some(value);
        }
    }
    Ok(Some((head, consumed)))
}

/// Lines separated by CRLF (the head without its final blank line).
fn split_crlf(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                rest = Some(&current[i + 2..]);
                Some(&current[..i])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// `HTTP/1.x NNN reason` → (status, reason).
fn parse_status_line(line: &[u8]) -> Option<(u16, String)> {
    if line.iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
        return None;
    }
    let line = std::str::from_utf8(line).ok()?;
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let (code, reason) = match rest.split_once(' ') {
        Some((c, r)) => (c, r),
        None => (rest, ""),
    };
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let status: u16 = code.parse().ok()?;
    if !(100..=599).contains(&status) {
        return None;
    }
    Some((status, reason.to_owned()))
}

/// Digits only (no sign, no list), fitting in a u64.
fn parse_length(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(EXCERPT).collect();
    if text.chars().nth(EXCERPT).is_some() {
        out.push('…');
    }
    out
}

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

    fn head(text: &str) -> Result<Option<(ResponseHead, usize)>, HeadError> {
        parse_response_head(text.as_bytes())
    }

    #[test]
    fn a_complete_head_is_parsed_and_the_body_offset_returned() {
        let text = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                    content-length:  8388608 \r\nX-Empty:\r\n\r\nBODY";
        let (h, n) = head(text).unwrap().unwrap();
        assert_eq!(
            h,
            ResponseHead {
                status: 200,
                reason: "OK".into(),
                content_length: Some(8_388_608),
                transfer_encoding: None
            }
        );
        assert_eq!(&text[n..], "BODY");
        let (h, _) = head("HTTP/1.0 404 Not Found\r\n\r\n").unwrap().unwrap();
        assert_eq!(
            (h.status, h.reason.as_str(), h.content_length),
            (404, "Not Found", None)
        );
        let (h, _) = head("HTTP/1.1 204\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.status, h.reason.as_str()), (204, ""));
        let (h, _) = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.transfer_encoding.as_deref(), Some("chunked"));
        // Repeating the same length is allowed.
        let (h, _) = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.content_length, Some(5));
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert_eq!(head("").unwrap(), None);
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n").unwrap(),
            None
        );
        assert_eq!(head("HTTP/1.1 200 OK\r\n\r").unwrap(), None);
    }

    #[test]
    fn malformed_heads_are_refused_with_the_offending_line() {
        let status = |t: &str| matches!(head(t), Err(HeadError::StatusLine { .. }));
        assert!(status("HTTP/2 200 OK\r\n\r\n"));
        assert!(status("HTTP/1.1 20 OK\r\n\r\n"));
        assert!(status("HTTP/1.1 2000 OK\r\n\r\n"));
        assert!(status("HTTP/1.1 abc OK\r\n\r\n"));
        assert!(status("HTTP/1.1 099 Low\r\n\r\n"));
        assert!(status("SSH-2.0-OpenSSH\r\n\r\n"));
        assert!(status("\r\n\r\n"));
        assert!(status("HTTP/1.1 200 O\nK\r\n\r\n"));
        assert!(matches!(
            parse_response_head(b"HTTP/1.1 200 \xff\r\n\r\n"),
            Err(HeadError::StatusLine { .. })
        ));
        let header = |t: &str| matches!(head(t), Err(HeadError::HeaderLine { .. }));
        assert!(header("HTTP/1.1 200 OK\r\nNoColon\r\n\r\n"));
        assert!(header("HTTP/1.1 200 OK\r\n: empty name\r\n\r\n"));
        assert!(header("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"));
        assert!(header("HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n"));
        assert!(header("HTTP/1.1 200 OK\r\nA: b\nC: d\r\n\r\n"));
        assert!(header("HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n"));
        match head("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n") {
            Err(e @ HeadError::ContentLength { .. }) => {
                assert_eq!(e.to_string(), "invalid Content-Length \"-1\"")
            }
            other => panic!("{other:?}"),
        }
        for bad in ["", "1,1", "0x10", "1 2", "99999999999999999999999"] {
            let t = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(head(&t), Err(HeadError::ContentLength { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n"),
            Err(HeadError::ConflictingLength {
                first: 1,
                second: 2
            })
        );
    }

    #[test]
    fn huge_heads_and_too_many_headers_are_refused() {
        let long = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            head(&long),
            Err(HeadError::TooLarge {
                limit: MAX_HEAD_BYTES
            })
        );
        // Complete, but the terminator lies past the limit.
        let complete = format!("{long}\r\n\r\n");
        assert!(matches!(head(&complete), Err(HeadError::TooLarge { .. })));
        // Just under the limit is fine.
        let fits = format!(
            "HTTP/1.1 200 OK\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES - 100)
        );
        assert!(head(&fits).unwrap().is_some());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")),
            Err(HeadError::TooManyHeaders { limit: MAX_HEADERS })
        );
        let enough: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{enough}\r\n")).is_ok());
        let err = HttpError::Head {
            url: "http://e/x".into(),
            source: HeadError::TooLarge { limit: 16384 },
        };
        assert_eq!(
            crate::agent::error_chain(&err),
            "malformed response head from http://e/x: response head larger than 16384 bytes"
        );
    }

    #[test]
    fn base_urls() {
        let u = BaseUrl::parse("http://10.77.0.1:8080").unwrap();
        assert_eq!((u.host(), u.port()), ("10.77.0.1", 8080));
        assert_eq!(u.target("/images/a.img"), "/images/a.img");
        assert_eq!(u.to_string(), "http://10.77.0.1:8080");
        let u = BaseUrl::parse("HTTP://edge.lab/sub/").unwrap();
        assert_eq!((u.host(), u.port()), ("edge.lab", 80));
        assert_eq!(u.target("/images/a"), "/sub/images/a");
        let u = BaseUrl::parse("http://[fd00::1]:81").unwrap();
        assert_eq!(
            (u.host(), u.authority()),
            ("fd00::1", "[fd00::1]:81".to_owned())
        );
        for bad in [
            "https://e",
            "e:8080",
            "http://",
            "http://:80",
            "http://e:0",
            "http://e:99999",
            "http://e:+80",
            "http://u:p@e",
            "http://e/?q",
            "http://e x",
            "http://[fd00::1",
            "http://e_x",
            "ftp://e",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            BaseUrl::parse("https://e").unwrap_err().to_string(),
            "bad URL \"https://e\": only http:// is supported"
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
