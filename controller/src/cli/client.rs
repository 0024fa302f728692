//! The REST client under every command: URLs built from escaped path segments, the
//! bearer token, and one [`Api::send`] that turns a response into a value or a
//! [`CliError`].

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::CliError;

/// How long an ordinary request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The controller's REST API at one base URL.
#[derive(Debug)]
pub(super) struct Api {
    client: reqwest::Client,
    /// The base URL as the operator gave it, without a trailing `/` (error messages).
    base_text: String,
    base: Url,
    token: Option<String>,
    /// Which CAs verify an `https://` controller (error messages).
    trusted: String,
}

impl Api {
    /// A client of the API under `base` (`http://` or `https://`, any path prefix),
    /// trusting the CA certificates in the PEM file `ca` besides the public web roots.
    pub(super) fn new(
        base: &str,
        token: Option<String>,
        ca: Option<&Path>,
    ) -> Result<Self, CliError> {
        let base_text = base.trim_end_matches('/').to_owned();
        let bad_url = || CliError::BadUrl {
            url: base_text.clone(),
        };
        if !(base_text.starts_with("http://") || base_text.starts_with("https://")) {
            return Err(bad_url());
        }
        let base = Url::parse(&base_text).map_err(|_| bad_url())?;
        if base.cannot_be_a_base() {
            return Err(bad_url());
        }
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
        let trusted = match ca {
            Some(path) => {
                for cert in read_ca(path)? {
                    builder = builder.add_root_certificate(cert);
                }
                format!("the CA in {} and the public web roots", path.display())
            }
            None => {
                "the public web roots only; give the controller's CA with --ca FILE or SUBSTRUCT_CA"
                    .to_owned()
            }
        };
        let client = builder.build().map_err(|e| match ca {
            Some(path) => CliError::CaInvalid {
                path: path.to_owned(),
                reason: crate::error_chain(&e),
            },
            None => CliError::Unreachable {
                url: base_text.clone(),
                source: e,
            },
        })?;
        Ok(Self {
            client,
            base_text,
            base,
            token,
            trusted,
        })
    }

    /// `{base}/api/v1/{segments…}`, each segment percent-encoded as one path segment
    /// (a `/`, `?`, `#` or `%` in a name stays part of the name). A segment that is
    /// empty, `.` or `..` cannot be sent: URL normalisation would drop it.
    pub(super) fn url(&self, segments: &[&str]) -> Result<Url, CliError> {
        if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(CliError::Unsendable {
                value: (*bad).to_owned(),
            });
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CliError::BadUrl {
                url: self.base_text.clone(),
            })?
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        Ok(url)
    }

    /// A request to `url`, with the token if there is one.
    pub(super) fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self.client.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET` a JSON value.
    pub(super) async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, CliError> {
        self.call(Method::GET, segments, None).await
    }

    /// `GET` a JSON value with query parameters (empty values are left out).
    pub(super) async fn get_query<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, CliError> {
        let mut url = self.url(segments)?;
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query.iter().filter(|(_, v)| !v.is_empty()) {
                pairs.append_pair(k, v);
            }
        }
        let request = self.request(Method::GET, url.clone());
        self.send(request, url).await
    }

    /// Calls the API with an optional JSON body and decodes the JSON answer.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<T, CliError> {
        let url = self.url(segments)?;
        let mut request = self.request(method, url.clone());
        if let Some(body) = &body {
            request = request.json(body);
        }
        self.send(request, url).await
    }

    /// `DELETE`; the answer's body (if any) is not looked at.
    pub(super) async fn delete(&self, segments: &[&str]) -> Result<(), CliError> {
        self.call::<serde_json::Value>(Method::DELETE, segments, None)
            .await
            .map(|_| ())
    }

    /// Sends a request and decodes its answer: a 2xx body as `T` (204 as JSON `null`),
    /// anything else as an error carrying the controller's `error` message (or the
    /// whole body when it is not that JSON shape).
    pub(super) async fn send<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        url: Url,
    ) -> Result<T, CliError> {
        let response = self.checked(request).await?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null).map_err(|e| CliError::Status {
                status,
                message: e.to_string(),
            });
        }
        response.json().await.map_err(|source| CliError::Decode {
            url: url.to_string(),
            source,
        })
    }

    /// `GET` with query parameters (empty values left out) whose answer is read as it
    /// comes, for as long as the controller keeps it open (no overall timeout).
    pub(super) async fn open_stream(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, CliError> {
        let mut url = self.url(segments)?;
        url.query_pairs_mut()
            .extend_pairs(query.iter().filter(|(_, v)| !v.is_empty()));
        let request = self
            .request(Method::GET, url)
            .timeout(std::time::Duration::from_secs(10 * 365 * 86_400));
        self.checked(request).await
    }

    /// Sends a request: its response when the status is 2xx, else the error carrying
    /// the controller's message.
    async fn checked(&self, request: RequestBuilder) -> Result<reqwest::Response, CliError> {
        let response = request
            .send()
            .await
            .map_err(|source| match tls_problem(&source) {
                Some(problem) => CliError::Tls {
                    url: self.base_text.clone(),
                    trusted: self.trusted.clone(),
                    source: problem.clone(),
                },
                None => CliError::Unreachable {
                    url: self.base_text.clone(),
                    source,
                },
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(body);
        Err(match status {
            StatusCode::UNAUTHORIZED => CliError::Unauthorized { message },
            _ => CliError::Status { status, message },
        })
    }
}

/// The CA certificates in a PEM file (at least one).
fn read_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, CliError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let pem = std::fs::read(path).map_err(|source| CliError::CaRead {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |reason: String| CliError::CaInvalid {
        path: path.to_owned(),
        reason,
    };
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM: {e}")))?;
    if ders.is_empty() {
        return Err(invalid("it holds no CERTIFICATE block".to_owned()));
    }
    ders.iter()
        .map(|der| reqwest::Certificate::from_der(der).map_err(|e| invalid(crate::error_chain(&e))))
        .collect()
}

/// The TLS error under a failed request, if TLS is what failed. rustls' error sits inside
/// `io::Error`s, whose `source()` skips the error they wrap: those are opened by hand.
fn tls_problem(error: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(base: &str) -> Api {
        Api::new(base, None, None).unwrap_or_else(|e| panic!("{base}: {e}"))
    }

    #[test]
    fn names_are_escaped_into_one_path_segment() {
        let api = api("http://127.0.0.1:8080");
        let url = |s: &[&str]| api.url(s).map(|u| u.to_string()).unwrap_or_default();
        assert_eq!(
            url(&["machines", "52:54:00:12:34:56", "assign"]),
            "http://127.0.0.1:8080/api/v1/machines/52:54:00:12:34:56/assign"
        );
        assert_eq!(
            url(&["machines", "a/b?c#d%e f"]),
            "http://127.0.0.1:8080/api/v1/machines/a%2Fb%3Fc%23d%25e%20f"
        );
        assert_eq!(
            url(&["profiles", "../machines"]),
            "http://127.0.0.1:8080/api/v1/profiles/..%2Fmachines"
        );
        for bad in ["", ".", ".."] {
            assert!(
                matches!(api.url(&["rules", bad]), Err(CliError::Unsendable { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_base_may_have_a_path_and_a_trailing_slash() {
        for base in ["http://h:1/substruct", "http://h:1/substruct/"] {
            let url = api(base).url(&["rules"]).map(|u| u.to_string());
            assert_eq!(
                url.ok().as_deref(),
                Some("http://h:1/substruct/api/v1/rules")
            );
        }
        let url = api("https://h/").url(&["sites"]).map(|u| u.to_string());
        assert_eq!(url.ok().as_deref(), Some("https://h/api/v1/sites"));
    }

    #[test]
    fn only_http_urls_are_usable() {
        for base in ["ftp://x", "127.0.0.1:8080", "http://[::1", ""] {
            assert!(
                matches!(Api::new(base, None, None), Err(CliError::BadUrl { .. })),
                "{base}"
            );
        }
    }
}
