//! The pure response-head parser: `httparse` reads the status line and the headers;
//! this module adds the limits and the strictness this client wants (CRLF only, a
//! size limit, one `Content-Length`) and names the offending line in its errors.

use crate::text::truncate_chars;

/// Largest response head (status line + headers + blank line) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines accepted in a response head.
pub const MAX_HEADERS: usize = 64;
/// Longest excerpt of an offending line kept in an error.
const EXCERPT: usize = 80;

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

/// Pure: parses the response head at the start of `buf` with `httparse`.
///
/// `Ok(None)`: not complete yet (read more); `Ok(Some((head, n)))`: the head is the
/// first `n` bytes, the body starts at `n`. Lines end in CRLF; obsolete line folding,
/// bare CR or LF inside a line, status codes outside 100–599, and heads over
/// [`MAX_HEAD_BYTES`] are errors.
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
    // httparse also takes a bare LF as a line end: this client wants CRLF only.
    for (index, line) in split_crlf(&buf[..end]).enumerate() {
        if line.iter().any(|b| *b == b'\r' || *b == b'\n') {
            return Err(line_error(index, line));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&buf[..consumed]) {
        Ok(httparse::Status::Complete(n)) if n == consumed => {}
        // The head is complete, so anything else means httparse read it differently.
        Ok(_) => return Err(line_error(0, first_line(buf))),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooManyHeaders { limit: MAX_HEADERS })
        }
        Err(_) => return Err(offending_line(&buf[..end])),
    }
    let status = response.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err(line_error(0, first_line(buf)));
    }
    let mut head = ResponseHead {
        status,
        reason: response.reason.unwrap_or_default().to_owned(),
        content_length: None,
        transfer_encoding: None,
    };
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value)
            .trim_matches([' ', '\t'])
            .to_owned();
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(&value).ok_or_else(|| HeadError::ContentLength {
                value: excerpt(value.as_bytes()),
            })?;
            match head.content_length {
                Some(first) if first != n => {
                    return Err(HeadError::ConflictingLength { first, second: n })
                }
                _ => head.content_length = Some(n),
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_encoding = Some(value);
        }
    }
    Ok(Some((head, consumed)))
}

/// The error naming line `index` of a head (0: the status line).
fn line_error(index: usize, line: &[u8]) -> HeadError {
    if index == 0 {
        HeadError::StatusLine {
            line: excerpt(line),
        }
    } else {
        HeadError::HeaderLine {
            line: excerpt(line),
        }
    }
}

/// The first line of `buf`, without its CRLF.
fn first_line(buf: &[u8]) -> &[u8] {
    split_crlf(buf).next().unwrap_or_default()
}

/// For an error message only: the first line of a head (without its final blank line)
/// that httparse refuses on its own.
fn offending_line(head: &[u8]) -> HeadError {
    let mut lines = split_crlf(head);
    let status_line = lines.next().unwrap_or_default();
    let mut status = [httparse::EMPTY_HEADER; 0];
    let alone = [status_line, b"\r\n\r\n"].concat();
    if !matches!(
        httparse::Response::new(&mut status).parse(&alone),
        Ok(httparse::Status::Complete(_))
    ) {
        return line_error(0, status_line);
    }
    for (index, line) in lines.enumerate() {
        let mut one = [httparse::EMPTY_HEADER; 1];
        let alone = [line, b"\r\n\r\n"].concat();
        if !matches!(
            httparse::parse_headers(&alone, &mut one),
            Ok(httparse::Status::Complete(_))
        ) {
            return line_error(index + 1, line);
        }
    }
    line_error(0, status_line)
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

/// Digits only (no sign, no list), fitting in a u64.
fn parse_length(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Untrusted bytes for an error message: lossily decoded, cut to [`EXCERPT`] characters.
pub(super) fn excerpt(bytes: &[u8]) -> String {
    truncate_chars(&String::from_utf8_lossy(bytes), EXCERPT)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // obs-text in the reason phrase is legal (RFC 9112); httparse drops the reason.
        let (h, _) = parse_response_head(b"HTTP/1.1 200 \xff\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.reason.as_str()), (200, ""));
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
    }
}
