//! DMTF Redfish over HTTPS, on reqwest with rustls.
//!
//! * **Sessions**: when the service root advertises a session service, one session
//!   is created at connect (`POST .../SessionService/Sessions`), its `X-Auth-Token`
//!   is reused by every request, a `401` logs in again once, and [`RedfishClient::close`]
//!   deletes it. A BMC without a session service gets HTTP Basic authentication.
//! * **Systems**: the `Systems` collection named by the service root is enumerated;
//!   no `/Systems/1` is assumed. One member is used as is; with several, the
//!   configured system id picks one, else [`BmcError::AmbiguousSystem`] lists them.
//! * **TLS**: BMCs carry self-signed certificates, so the chain is not checked
//!   against any authority: the certificate's sha256 is pinned instead. With no pin
//!   configured the first certificate seen is accepted and reported
//!   ([`RedfishClient::cert_pin_seen`]), for the caller to store; any other
//!   certificate later is refused with [`BmcError::CertMismatch`]. Handshake
//!   signatures are verified against the presented certificate as usual, so a
//!   pinned certificate is only accepted from whoever holds its key.
//! * **Bounds**: every request has the configured timeout, `503` is retried
//!   `retries` times with a growing pause, no redirect is followed, bodies are capped
//!   at [`MAX_BODY`] and must be JSON objects; odata links must be paths on the same
//!   host (a BMC cannot send our token elsewhere).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{json, Value};

use crate::{BmcConfig, BmcError, BootDevice, CertPin, PowerAction, PowerState, Secret};

/// The largest response body read from a BMC.
pub const MAX_BODY: usize = 1024 * 1024;

/// Pins the server certificate by its sha256 (trust on first use when no pin is
/// given); checks handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct PinVerifier {
    /// The pin in force: the configured one, or the first one seen.
    pinned: Mutex<Option<CertPin>>,
    /// The last certificate presented.
    seen: Arc<Mutex<Option<CertPin>>>,
    /// The last refusal: (pinned, presented).
    refused: Arc<Mutex<Option<(CertPin, CertPin)>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = CertPin::of_der(end_entity.as_ref());
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(found);
        }
        let Ok(mut pinned) = self.pinned.lock() else {
            return Err(rustls::Error::General("pin lock poisoned".to_owned()));
        };
        match *pinned {
            Some(expected) if expected != found => {
                if let Ok(mut refused) = self.refused.lock() {
                    *refused = Some((expected, found));
                }
                Err(rustls::Error::General(format!(
                    "certificate sha256 {found} is not the pinned {expected}"
                )))
            }
            Some(_) => Ok(ServerCertVerified::assertion()),
            None => {
                *pinned = Some(found);
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// How requests authenticate.
#[derive(Clone)]
enum Auth {
    /// A Redfish session: the token and the session's URI (for the DELETE).
    Session {
        token: Secret,
        location: Option<String>,
        sessions_path: String,
    },
    /// HTTP Basic on every request (no session service).
    Basic,
}

/// A client for one Redfish BMC and one of its systems.
pub struct RedfishClient {
    address: String,
    base: String,
    http: reqwest::Client,
    user: String,
    password: Secret,
    auth: Auth,
    timeout: Duration,
    retries: u32,
    seen_pin: Arc<Mutex<Option<CertPin>>>,
    refused_pin: Arc<Mutex<Option<(CertPin, CertPin)>>>,
    /// The system's path (`/redfish/v1/Systems/<id>`).
    system: String,
    /// Counts session logins (tests and logs).
    logins: u32,
}

impl std::fmt::Debug for RedfishClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishClient")
            .field("address", &self.address)
            .field("user", &self.user)
            .field("system", &self.system)
            .field(
                "auth",
                &match self.auth {
                    Auth::Session { .. } => "session",
                    Auth::Basic => "basic",
                },
            )
            .finish_non_exhaustive()
    }
}

/// The base URL (`https://host[:port]`) of an address.
fn base_url(address: &str) -> Result<String, BmcError> {
    let bad = |why: &str| BmcError::Config(format!("Redfish address {address:?}: {why}"));
    let with_scheme = if address.starts_with("https://") || address.starts_with("http://") {
        address.to_owned()
    } else {
        format!("https://{address}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "put the user and password in the BMC settings, not the address",
        ));
    }
    let mut base = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if url.host().is_some_and(|h| matches!(h, url::Host::Ipv6(_))) {
        base = format!(
            "{}://[{}]",
            url.scheme(),
            url.host_str().unwrap_or_default().trim_matches(['[', ']'])
        );
    }
    if let Some(port) = url.port() {
        base.push_str(&format!(":{port}"));
    }
    Ok(base)
}

/// An odata link as a path on the BMC (absolute URLs to the same base are cut).
fn link_path(base: &str, link: &str) -> Option<String> {
    let path = link.strip_prefix(base).unwrap_or(link);
    (path.starts_with('/') && !path.starts_with("//") && path.len() < 1024).then(|| path.to_owned())
}

fn odata_id(v: &Value) -> Option<&str> {
    v.get("@odata.id").and_then(Value::as_str)
}

impl RedfishClient {
    /// Reads the service root, logs in (session or Basic) and picks the system.
    pub async fn connect(cfg: &BmcConfig) -> Result<Self, BmcError> {
        let base = base_url(&cfg.address)?;
        let provider = rustls::crypto::ring::default_provider();
        let seen_pin = Arc::new(Mutex::new(None));
        let refused_pin = Arc::new(Mutex::new(None));
        let verifier = PinVerifier {
            pinned: Mutex::new(cfg.cert_pin),
            seen: seen_pin.clone(),
            refused: refused_pin.clone(),
            algorithms: provider.signature_verification_algorithms,
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| BmcError::Config(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .pool_max_idle_per_host(1)
            .user_agent(concat!("substruct-bmc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BmcError::Config(format!("HTTP client setup: {e}")))?;
        let mut client = Self {
            address: cfg.address.clone(),
            base,
            http,
            user: cfg.user.clone(),
            password: cfg.password.clone(),
            auth: Auth::Basic,
            timeout: cfg.timeout,
            retries: cfg.retries,
            seen_pin,
            refused_pin,
            system: String::new(),
            logins: 0,
        };
        let root = client.get_json("/redfish/v1/").await?;
        let sessions_path = root
            .pointer("/Links/Sessions")
            .and_then(odata_id)
            .and_then(|l| link_path(&client.base, l))
            .or_else(|| {
                root.get("SessionService")
                    .is_some()
                    .then(|| "/redfish/v1/SessionService/Sessions".to_owned())
            });
        if let Some(sessions_path) = sessions_path {
            client.login(&sessions_path).await?;
        }
        let systems_path = root
            .get("Systems")
            .and_then(odata_id)
            .and_then(|l| link_path(&client.base, l))
            .unwrap_or_else(|| "/redfish/v1/Systems".to_owned());
        client.system = client
            .pick_system(&systems_path, cfg.system_id.as_deref())
            .await?;
        tracing::debug!(bmc = %client.address, system = %client.system, "Redfish connected");
        Ok(client)
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many times this client created a session (1 after connect on a BMC
    /// with a session service, 0 with Basic authentication).
    pub fn session_logins(&self) -> u32 {
        self.logins
    }

    /// The system this client drives (`/redfish/v1/Systems/<id>`).
    pub fn system_path(&self) -> &str {
        &self.system
    }

    /// The pin of the certificate this client saw (`None` over plain HTTP).
    pub fn cert_pin_seen(&self) -> Option<CertPin> {
        self.seen_pin.lock().ok().and_then(|p| *p)
    }

    /// `PowerState` of the system: `On`, `Off`; anything else (`PoweringOn`, ...,
    /// missing) is `Unknown`.
    pub async fn power_state(&mut self) -> Result<PowerState, BmcError> {
        let sys = self.get_json(&self.system.clone()).await?;
        Ok(match sys.get("PowerState").and_then(Value::as_str) {
            Some("On") => PowerState::On,
            Some("Off") => PowerState::Off,
            _ => PowerState::Unknown,
        })
    }

    /// `ComputerSystem.Reset` with the reset type the BMC allows for the action.
    pub async fn power(&mut self, action: PowerAction) -> Result<(), BmcError> {
        let sys = self.get_json(&self.system.clone()).await?;
        let reset = sys.pointer("/Actions/#ComputerSystem.Reset");
        let target = reset
            .and_then(|r| r.get("target"))
            .and_then(Value::as_str)
            .and_then(|t| link_path(&self.base, t))
            .unwrap_or_else(|| format!("{}/Actions/ComputerSystem.Reset", self.system));
        let allowed: Option<Vec<String>> = reset
            .and_then(|r| r.get("ResetType@Redfish.AllowableValues"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            });
        let prefs: &[&str] = match action {
            PowerAction::On => &["On", "ForceOn"],
            PowerAction::Off => &["ForceOff"],
            PowerAction::SoftOff => &["GracefulShutdown"],
            PowerAction::Cycle => &["PowerCycle", "ForceRestart", "GracefulRestart"],
        };
        let reset_type = match &allowed {
            None => prefs[0],
            Some(allowed) => prefs
                .iter()
                .copied()
                .find(|p| allowed.iter().any(|a| a == p))
                .ok_or_else(|| BmcError::Unsupported {
                    address: self.address.clone(),
                    what: format!("power {action}: the reset types it allows are {allowed:?}"),
                })?,
        };
        self.send(
            Method::POST,
            &target,
            Some(json!({ "ResetType": reset_type })),
        )
        .await?;
        Ok(())
    }

    /// `PATCH Boot`: `BootSourceOverrideEnabled: Once`, target `Pxe` or `Hdd`.
    pub async fn set_next_boot(&mut self, dev: BootDevice) -> Result<(), BmcError> {
        let target = match dev {
            BootDevice::Pxe => "Pxe",
            BootDevice::Disk => "Hdd",
        };
        let body = json!({ "Boot": {
            "BootSourceOverrideEnabled": "Once",
            "BootSourceOverrideTarget": target,
        }});
        self.send(Method::PATCH, &self.system.clone(), Some(body))
            .await?;
        Ok(())
    }

    /// The pending override: `None` when `BootSourceOverrideEnabled` is `Disabled`
    /// (or missing) or the target is neither `Pxe` nor `Hdd`.
    pub async fn next_boot(&mut self) -> Result<Option<BootDevice>, BmcError> {
        let sys = self.get_json(&self.system.clone()).await?;
        let boot = sys.get("Boot");
        let enabled = boot
            .and_then(|b| b.get("BootSourceOverrideEnabled"))
            .and_then(Value::as_str);
        if matches!(enabled, None | Some("Disabled")) {
            return Ok(None);
        }
        Ok(
            match boot
                .and_then(|b| b.get("BootSourceOverrideTarget"))
                .and_then(Value::as_str)
            {
                Some("Pxe") => Some(BootDevice::Pxe),
                Some("Hdd") => Some(BootDevice::Disk),
                _ => None,
            },
        )
    }

    /// Deletes the session; best effort.
    pub async fn close(self) {
        if let Auth::Session {
            location: Some(loc),
            ..
        } = &self.auth
        {
            let req = self.request(Method::DELETE, loc);
            if let Err(e) = req.send().await {
                tracing::debug!(bmc = %self.address, error = %e, "deleting the Redfish session failed");
            }
        }
    }

    async fn login(&mut self, sessions_path: &str) -> Result<(), BmcError> {
        let body = json!({ "UserName": self.user, "Password": self.password.expose() });
        let url = format!("{}{sessions_path}", self.base);
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(BmcError::AuthFailed {
                address: self.address.clone(),
                detail: format!("session login answered HTTP {}", status.as_u16()),
            });
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return Err(self.busy("session login"));
        }
        if !status.is_success() {
            return Err(BmcError::Http {
                address: self.address.clone(),
                status: status.as_u16(),
                detail: "session login failed".to_owned(),
            });
        }
        let token = resp
            .headers()
            .get("X-Auth-Token")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty() && t.len() < 4096)
            .map(Secret::new)
            .ok_or_else(|| self.protocol("session login returned no X-Auth-Token".to_owned()))?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| link_path(&self.base, l));
        // Drain (bounded) so the connection can be reused.
        let _ = self.read_body(resp).await;
        self.auth = Auth::Session {
            token,
            location,
            sessions_path: sessions_path.to_owned(),
        };
        self.logins += 1;
        Ok(())
    }

    async fn pick_system(&mut self, path: &str, wanted: Option<&str>) -> Result<String, BmcError> {
        let coll = self.get_json(path).await?;
        let members: Vec<String> = coll
            .get("Members")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(odata_id)
                    .filter_map(|l| link_path(&self.base, l))
                    .collect()
            })
            .unwrap_or_default();
        let id_of = |p: &str| {
            p.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_owned()
        };
        let choices: Vec<String> = members.iter().map(|m| id_of(m)).collect();
        match wanted {
            Some(w) => members
                .iter()
                .find(|m| id_of(m) == w || m.trim_end_matches('/') == w.trim_end_matches('/'))
                .cloned()
                .ok_or_else(|| BmcError::SystemNotFound {
                    address: self.address.clone(),
                    wanted: w.to_owned(),
                    choices,
                }),
            None => match members.as_slice() {
                [] => Err(BmcError::NoSystem {
                    address: self.address.clone(),
                }),
                [one] => Ok(one.clone()),
                _ => Err(BmcError::AmbiguousSystem {
                    address: self.address.clone(),
                    choices,
                }),
            },
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, "application/json")
            .header("OData-Version", "4.0");
        match &self.auth {
            Auth::Session { token, .. } => req.header("X-Auth-Token", token.expose()),
            Auth::Basic => req.basic_auth(&self.user, Some(self.password.expose())),
        }
    }

    async fn get_json(&mut self, path: &str) -> Result<Value, BmcError> {
        let body = self.send(Method::GET, path, None).await?;
        serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                self.protocol(format!(
                    "GET {path} did not return a JSON object ({} bytes)",
                    body.len()
                ))
            })
    }

    /// One request with the session (re-login once on 401) and bounded 503 retries;
    /// the body of a 2xx answer.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Vec<u8>, BmcError> {
        let mut relogged = false;
        let mut busy_tries = 0u32;
        loop {
            let mut req = self.request(method.clone(), path);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED {
                if let (Auth::Session { sessions_path, .. }, false) = (&self.auth, relogged) {
                    let sessions_path = sessions_path.clone();
                    tracing::debug!(bmc = %self.address, "Redfish session expired; logging in again");
                    relogged = true;
                    self.login(&sessions_path).await?;
                    continue;
                }
                return Err(BmcError::AuthFailed {
                    address: self.address.clone(),
                    detail: format!("{method} {path} answered HTTP 401"),
                });
            }
            if status == StatusCode::FORBIDDEN {
                return Err(BmcError::AuthFailed {
                    address: self.address.clone(),
                    detail: format!(
                        "{method} {path} answered HTTP 403 (the user lacks the privilege)"
                    ),
                });
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                if busy_tries < self.retries {
                    busy_tries += 1;
                    let pause = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs)
                        .unwrap_or(Duration::from_millis(200 << busy_tries.min(5)))
                        .min(self.timeout);
                    tokio::time::sleep(pause).await;
                    continue;
                }
                return Err(self.busy(&format!("{method} {path}")));
            }
            let bytes = self.read_body(resp).await?;
            if !status.is_success() {
                return Err(BmcError::Http {
                    address: self.address.clone(),
                    status: status.as_u16(),
                    detail: format!("{method} {path}: {}", redfish_message(&bytes)),
                });
            }
            return Ok(bytes);
        }
    }

    async fn read_body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, BmcError> {
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(self.protocol(format!("a body of more than {MAX_BODY} bytes")));
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e))? {
            if out.len() + chunk.len() > MAX_BODY {
                return Err(self.protocol(format!("a body of more than {MAX_BODY} bytes")));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn busy(&self, what: &str) -> BmcError {
        BmcError::Busy {
            address: self.address.clone(),
            detail: format!("{what} answered HTTP 503 after {} retries", self.retries),
        }
    }

    fn protocol(&self, detail: String) -> BmcError {
        BmcError::Protocol {
            address: self.address.clone(),
            detail,
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> BmcError {
        // A refused certificate (the configured pin, or the one first seen by this
        // client) makes the TLS handshake fail: say so rather than "unreachable".
        if let Some((expected, found)) = self.refused_pin.lock().ok().and_then(|mut r| r.take()) {
            return BmcError::CertMismatch {
                address: self.address.clone(),
                expected,
                found,
            };
        }
        // The whole chain of causes, without the URL (no secrets in it, but noise).
        let mut detail = e.without_url_ref().to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_timeout() {
            BmcError::Timeout {
                address: self.address.clone(),
                what: "an HTTP request".to_owned(),
                attempts: 1,
            }
        } else if e.is_connect() {
            BmcError::Unreachable {
                address: self.address.clone(),
                detail,
            }
        } else {
            BmcError::Protocol {
                address: self.address.clone(),
                detail,
            }
        }
    }
}

/// Trait helper: `reqwest::Error::without_url` by reference.
trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let text = self.to_string();
        match self.url() {
            Some(u) => text.replace(&format!(" for url ({u})"), ""),
            None => text,
        }
    }
}

/// The message of a Redfish error body, or a short excerpt.
fn redfish_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if let Some(msg) = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/@Message.ExtendedInfo/0/Message")
                .or_else(|| v.pointer("/error/message"))
        })
        .and_then(Value::as_str)
    {
        return msg.chars().take(300).collect();
    }
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_base_urls() {
        assert_eq!(
            base_url("10.0.0.5").ok().as_deref(),
            Some("https://10.0.0.5")
        );
        assert_eq!(
            base_url("bmc:8443").ok().as_deref(),
            Some("https://bmc:8443")
        );
        assert_eq!(
            base_url("https://bmc.example/").ok().as_deref(),
            Some("https://bmc.example")
        );
        assert_eq!(
            base_url("[fd00::5]:443").ok().as_deref(),
            Some("https://[fd00::5]")
        );
        assert!(base_url("https://u:p@bmc").is_err());
        assert!(base_url("").is_err());
    }

    #[test]
    fn links_stay_on_the_bmc() {
        let base = "https://bmc:443";
        assert_eq!(
            link_path(base, "/redfish/v1/Systems/a").as_deref(),
            Some("/redfish/v1/Systems/a")
        );
        assert_eq!(
            link_path(base, "https://bmc:443/redfish/v1/Systems/a").as_deref(),
            Some("/redfish/v1/Systems/a")
        );
        assert_eq!(link_path(base, "https://evil/redfish"), None);
        assert_eq!(link_path(base, "//evil/redfish"), None);
        assert_eq!(link_path(base, "redfish/v1"), None);
    }
}
