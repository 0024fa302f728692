//! [`BaseUrl`]: the edge's `http://host[:port][/path]` base URL, parsed by the `url`
//! crate and narrowed to what this client speaks.

use std::fmt;

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
    /// Parses `http://host[:port][/path]` (IPv6 hosts in brackets) with the `url`
    /// crate; `https://`, credentials, queries, fragments, port 0 and host names
    /// outside `A-Z a-z 0-9 - .` are refused. The path is kept as `url` normalizes it.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let err = |why| UrlError {
            url: text.to_owned(),
            why,
        };
        // `url` would trim or drop some of these silently.
        if text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return Err(err("contains whitespace, control or non-ASCII characters"));
        }
        if !text.contains("://") {
            return Err(err("no scheme: expected http://host[:port]"));
        }
        let url = url::Url::parse(text).map_err(|e| err(parse_error_text(e)))?;
        if url.scheme() != "http" {
            return Err(err("only http:// is supported"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(err("a query or fragment is not allowed"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err("credentials are not allowed"));
        }
        let host = match url.host() {
            None => return Err(err("no host")),
            Some(url::Host::Domain(name)) => {
                if !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                {
                    return Err(err("bad character in the host"));
                }
                name.to_owned()
            }
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
        };
        let port = match url.port_or_known_default() {
            Some(0) | None => return Err(err("bad port")),
            Some(port) => port,
        };
        Ok(Self {
            host,
            port,
            path: url.path().trim_end_matches('/').to_owned(),
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

/// Why `url` refused a URL, in the words of [`UrlError`].
fn parse_error_text(error: url::ParseError) -> &'static str {
    match error {
        url::ParseError::EmptyHost => "no host",
        url::ParseError::InvalidPort => "bad port",
        url::ParseError::InvalidIpv6Address => "bad IPv6 host",
        url::ParseError::InvalidIpv4Address => "bad IPv4 host",
        url::ParseError::InvalidDomainCharacter | url::ParseError::IdnaError => {
            "bad character in the host"
        }
        _ => "not a valid URL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
