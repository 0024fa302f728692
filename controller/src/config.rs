//! Controller configuration: a TOML file parsed into [`RawConfig`] (unknown fields
//! refused), validated by `TryFrom` into [`Config`]. Errors name the file and field.
//!
//! ```toml
//! nats_url = "nats://127.0.0.1:4222"
//! listen = "127.0.0.1:8080"
//! # HTTPS on `listen` (both or neither; without them the API is plain HTTP).
//! tls_cert = "/etc/substruct/tls/controller.pem"   # PEM chain, the server's first
//! tls_key = "/etc/substruct/tls/controller-key.pem"
//! # Empty or absent: every valid site name is accepted.
//! sites = ["dc1", "dc2"]
//! max_in_flight = 256
//!
//! [[tokens]]
//! token = "s3cret-admin"
//! role = "admin"          # or "viewer"
//!
//! [limits]
//! max_disks = 256
//! max_nics = 256
//! max_pci = 4096
//! max_dimms = 512
//! max_cpu_flags = 1024
//! max_string_len = 512
//! # Discover requests per site: a token bucket of `site_report_burst` requests,
//! # refilled at `site_reports_per_second`; beyond it a site's reports are refused
//! # with "rate limited, retry after N ms" (the prospector retries).
//! site_reports_per_second = 1000
//! site_report_burst = 10000
//!
//! # JetStream bounds (bytes; applied to existing streams at start). nats-server reserves
//! # their sum (2.5 GiB by default) on its JetStream storage: it must fit there.
//! [storage]
//! events_max_bytes = 536870912       # audit log: oldest events dropped beyond this
//! events_max_age_days = 365          # … or past this age (0: kept until the size limit)
//! machines_max_bytes = 1073741824    # machine records: new writes refused beyond this
//! bucket_max_bytes = 134217728       # each other bucket: new writes refused beyond this
//! max_value_bytes = 1048576          # largest value in any bucket
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use substruct_wire::{NatsUrl, NatsUrlProblem, SiteId};

/// Default NATS URL ([`NatsUrl::LOCAL`]).
pub const DEFAULT_NATS_URL: &str = NatsUrl::LOCAL;
/// Default REST API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub nats_url: Option<String>,
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub sites: Vec<String>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub storage: RawStorage,
    pub max_in_flight: Option<usize>,
}

/// `[storage]` as written: JetStream bounds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub events_max_bytes: Option<u64>,
    pub events_max_age_days: Option<u64>,
    pub machines_max_bytes: Option<u64>,
    pub bucket_max_bytes: Option<u64>,
    pub max_value_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub token: String,
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_disks: Option<usize>,
    pub max_nics: Option<usize>,
    pub max_pci: Option<usize>,
    pub max_dimms: Option<usize>,
    pub max_cpu_flags: Option<usize>,
    pub max_string_len: Option<usize>,
    pub site_reports_per_second: Option<f64>,
    pub site_report_burst: Option<u32>,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read the inventory.
    Viewer,
    /// Everything.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Viewer => "viewer",
            Self::Admin => "admin",
        })
    }
}

/// A bearer token for the REST API.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub token: String,
    pub role: Role,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

/// Bounds on what one hardware report may carry, and how often a site may report.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_disks: usize,
    pub max_nics: usize,
    pub max_pci: usize,
    pub max_dimms: usize,
    pub max_cpu_flags: usize,
    pub max_string_len: usize,
    /// Discover requests per second one site may send, sustained (token refill rate).
    pub site_reports_per_second: f64,
    /// Discover requests one site may send at once (token bucket size). The default
    /// takes a whole 10,000-machine boot storm of one site without a refusal.
    pub site_report_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_disks: 256,
            max_nics: 256,
            max_pci: 4096,
            max_dimms: 512,
            max_cpu_flags: 1024,
            max_string_len: 512,
            site_reports_per_second: 1000.0,
            site_report_burst: 10_000,
        }
    }
}

/// JetStream bounds of what the controller stores, so reports cannot fill the hub's
/// disk. The audit log (`EVENTS`) drops its oldest events past its size or age (it is a
/// log; the records are the truth); the buckets refuse new writes when full (dropping
/// a machine record or a profile would lose state), and the writer sees an error.
///
/// nats-server reserves each limit on its JetStream storage when the stream is made
/// (2.5 GiB in all by default; "insufficient storage resources available" when they do
/// not fit), so a small hub needs smaller limits here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageLimits {
    /// Bytes of the `EVENTS` stream.
    pub events_max_bytes: i64,
    /// Age past which events are dropped (zero: only the size limit applies).
    pub events_max_age: std::time::Duration,
    /// Bytes of KV `machines`.
    pub machines_max_bytes: i64,
    /// Bytes of each other bucket (`machine_index`, `profiles`, `rules`, `images`,
    /// `sites`, `site_status`, `boot`, `install`).
    pub bucket_max_bytes: i64,
    /// Largest value in any bucket.
    pub max_value_bytes: i32,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            events_max_bytes: 512 << 20,
            events_max_age: std::time::Duration::from_secs(365 * 24 * 3600),
            machines_max_bytes: 1 << 30,
            bucket_max_bytes: 128 << 20,
            max_value_bytes: 1 << 20,
        }
    }
}

/// The certificate and key the REST API serves HTTPS with (PEM files; read at start).
pub use substruct_runtime::tls::TlsPaths;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The NATS server(s), comma-separated.
    pub nats_url: NatsUrl,
    /// NATS user and password (the hub's `controller` user from deploy/nats/gen-site).
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    pub listen: SocketAddr,
    /// HTTPS on `listen`; `None`: plain HTTP.
    pub tls: Option<TlsPaths>,
    /// Known sites. Empty: every valid site name is accepted.
    pub sites: Vec<SiteId>,
    pub tokens: Vec<ApiToken>,
    pub limits: Limits,
    /// JetStream bounds (`[storage]`).
    pub storage: StorageLimits,
    /// Discover requests handled at once.
    pub max_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: NatsUrl::default(),
            nats_user: None,
            nats_password: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            sites: Vec::new(),
            tokens: Vec::new(),
            limits: Limits::default(),
            storage: StorageLimits::default(),
            max_in_flight: 256,
        }
    }
}

/// A field with a value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn field_err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config file {path}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: FieldError,
    },
}

impl TryFrom<RawConfig> for Config {
    type Error = FieldError;

    fn try_from(raw: RawConfig) -> Result<Self, FieldError> {
        let defaults = Config::default();
        let nats_url = match raw.nats_url {
            Some(url) => NatsUrl::new(url).map_err(|e| match e.reason {
                NatsUrlProblem::Empty => field_err("nats_url", "must not be empty"),
                _ => field_err("nats_url", e.to_string()),
            })?,
            None => defaults.nats_url,
        };
        let listen = match raw.listen {
            Some(l) => l
                .parse::<SocketAddr>()
                .map_err(|e| field_err("listen", format!("{l:?} is not an address:port ({e})")))?,
            None => defaults.listen,
        };
        let tls = match (raw.tls_cert, raw.tls_key) {
            (Some(cert), Some(key)) => Some(TlsPaths { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(field_err(
                    "tls_key",
                    "is missing: `tls_cert` needs its private key",
                ))
            }
            (None, Some(_)) => {
                return Err(field_err(
                    "tls_cert",
                    "is missing: `tls_key` needs its certificate",
                ))
            }
        };
        let mut sites = Vec::with_capacity(raw.sites.len());
        for (i, s) in raw.sites.into_iter().enumerate() {
            let site =
                SiteId::new(s).map_err(|e| field_err(format!("sites[{i}]"), e.to_string()))?;
            if !sites.contains(&site) {
                sites.push(site);
            }
        }
        let mut tokens = Vec::with_capacity(raw.tokens.len());
        for (i, t) in raw.tokens.into_iter().enumerate() {
            tokens.push(validate_token(&format!("tokens[{i}]"), t)?);
        }
        let d = defaults.limits;
        let positive = |name: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(field_err(format!("limits.{name}"), "must be at least 1")),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let limits = Limits {
            max_disks: positive("max_disks", raw.limits.max_disks, d.max_disks)?,
            max_nics: positive("max_nics", raw.limits.max_nics, d.max_nics)?,
            max_pci: positive("max_pci", raw.limits.max_pci, d.max_pci)?,
            max_dimms: positive("max_dimms", raw.limits.max_dimms, d.max_dimms)?,
            max_cpu_flags: positive("max_cpu_flags", raw.limits.max_cpu_flags, d.max_cpu_flags)?,
            max_string_len: positive(
                "max_string_len",
                raw.limits.max_string_len,
                d.max_string_len,
            )?,
            site_reports_per_second: match raw.limits.site_reports_per_second {
                Some(r) if !(r.is_finite() && r > 0.0) => {
                    return Err(field_err(
                        "limits.site_reports_per_second",
                        "must be a number above 0",
                    ))
                }
                Some(r) => r,
                None => d.site_reports_per_second,
            },
            site_report_burst: match raw.limits.site_report_burst {
                Some(0) => return Err(field_err("limits.site_report_burst", "must be at least 1")),
                Some(n) => n,
                None => d.site_report_burst,
            },
        };
        let storage = storage_limits(raw.storage, &defaults.storage)?;
        let max_in_flight = match raw.max_in_flight {
            Some(0) => return Err(field_err("max_in_flight", "must be at least 1")),
            Some(n) => n,
            None => defaults.max_in_flight,
        };
        Ok(Config {
            nats_user: raw.nats_user.filter(|u| !u.is_empty()),
            nats_password: raw.nats_password,
            nats_url,
            listen,
            tls,
            sites,
            tokens,
            limits,
            storage,
            max_in_flight,
        })
    }
}

/// Validates `[storage]`: sizes from 1 KiB up (a JetStream limit the server accepts),
/// the value size at most 64 MiB (far above NATS' 1 MiB default payload).
fn storage_limits(raw: RawStorage, d: &StorageLimits) -> Result<StorageLimits, FieldError> {
    let bytes = |name: &str, v: Option<u64>, default: i64| -> Result<i64, FieldError> {
        match v {
            None => Ok(default),
            Some(v) if v < 1024 => Err(field_err(
                format!("storage.{name}"),
                "must be at least 1024 bytes",
            )),
            Some(v) => {
                i64::try_from(v).map_err(|_| field_err(format!("storage.{name}"), "is too large"))
            }
        }
    };
    let max_value_bytes = match raw.max_value_bytes {
        None => d.max_value_bytes,
        Some(v) if !(1024..=64 << 20).contains(&v) => {
            return Err(field_err(
                "storage.max_value_bytes",
                "must be between 1024 and 67108864 bytes",
            ))
        }
        Some(v) => {
            i32::try_from(v).map_err(|_| field_err("storage.max_value_bytes", "is too large"))?
        }
    };
    let events_max_age = match raw.events_max_age_days {
        None => d.events_max_age,
        Some(days) if days > 100 * 365 => {
            return Err(field_err(
                "storage.events_max_age_days",
                "must be at most 36500 (0: no age limit)",
            ))
        }
        Some(days) => std::time::Duration::from_secs(days * 24 * 3600),
    };
    Ok(StorageLimits {
        events_max_bytes: bytes("events_max_bytes", raw.events_max_bytes, d.events_max_bytes)?,
        events_max_age,
        machines_max_bytes: bytes(
            "machines_max_bytes",
            raw.machines_max_bytes,
            d.machines_max_bytes,
        )?,
        bucket_max_bytes: bytes("bucket_max_bytes", raw.bucket_max_bytes, d.bucket_max_bytes)?,
        max_value_bytes,
    })
}

fn validate_token(field: &str, raw: RawToken) -> Result<ApiToken, FieldError> {
    let token = raw.token.trim().to_owned();
    if token.len() < 8 {
        return Err(field_err(
            format!("{field}.token"),
            "must be at least 8 characters",
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(field_err(
            format!("{field}.token"),
            "must be printable ASCII without spaces",
        ));
    }
    let role = match raw.role.as_deref() {
        None | Some("admin") => Role::Admin,
        Some("viewer") => Role::Viewer,
        Some(other) => {
            return Err(field_err(
                format!("{field}.role"),
                format!("{other:?} is not a role (admin, viewer)"),
            ))
        }
    };
    Ok(ApiToken { token, role })
}

impl Config {
    /// Parses and validates TOML text; `path` names the file in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Config::try_from(raw).map_err(|source| ConfigError::Invalid {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Adds an admin token (from `--token` / `SUBSTRUCT_TOKEN`).
    pub fn add_admin_token(&mut self, token: &str) -> Result<(), FieldError> {
        let token = validate_token(
            "SUBSTRUCT_TOKEN",
            RawToken {
                token: token.to_owned(),
                role: Some("admin".into()),
            },
        )?;
        if !self.tokens.contains(&token) {
            self.tokens.push(token);
        }
        Ok(())
    }

    /// True when `site` may report here.
    pub fn site_is_known(&self, site: &SiteId) -> bool {
        self.sites.is_empty() || self.sites.contains(site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", Path::new("c.toml")).unwrap();
        assert_eq!(c.nats_url, DEFAULT_NATS_URL);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.site_is_known(&SiteId::new("any").unwrap()));
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
            nats_url = "nats://10.0.0.1:4222"
            listen = "0.0.0.0:9000"
            sites = ["dc1", "dc2"]
            [[tokens]]
            token = "viewer-token-1"
            role = "viewer"
            [limits]
            max_disks = 8
        "#;
        let c = Config::from_toml(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.sites.len(), 2);
        assert!(!c.site_is_known(&SiteId::new("dc3").unwrap()));
        assert_eq!(c.tokens[0].role, Role::Viewer);
        assert_eq!(c.limits.max_disks, 8);
        assert_eq!(c.limits.max_nics, 256);
    }

    #[test]
    fn tls_needs_both_files() {
        let c = Config::from_toml(
            "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(
            c.tls,
            Some(TlsPaths {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        for (text, missing) in [
            ("tls_cert = \"/c.pem\"", "tls_key"),
            ("tls_key = \"/k.pem\"", "tls_cert"),
        ] {
            let err = Config::from_toml(text, Path::new("c.toml")).unwrap_err();
            let source = std::error::Error::source(&err).unwrap().to_string();
            assert!(
                source.contains(&format!("field `{missing}`: is missing")),
                "{source}"
            );
        }
    }

    #[test]
    fn nats_urls_are_checked() {
        let c = Config::from_toml(
            "nats_url = \"nats://127.0.0.1:1, nats://127.0.0.1:2\"",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(
            c.nats_url.servers().collect::<Vec<_>>(),
            ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]
        );
        for (bad, why) in [
            ("", "must not be empty"),
            (" ", "must not be empty"),
            ("http://x", "scheme must be"),
            ("nats://:4222", "has no host"),
        ] {
            let text = format!("nats_url = {bad:?}");
            let err = Config::from_toml(&text, Path::new("c.toml")).unwrap_err();
            let source = std::error::Error::source(&err).unwrap().to_string();
            assert!(source.contains("nats_url"), "{source}");
            assert!(source.contains(why), "{bad:?}: {source}");
        }
    }

    #[test]
    fn errors_name_file_and_field() {
        let err = Config::from_toml("sites = [\"DC1\"]", Path::new("/etc/c.toml")).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("/etc/c.toml"), "{chain}");
        assert!(chain.contains("sites[0]"), "{chain}");

        let err = Config::from_toml("listne = \"x\"", Path::new("/etc/c.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("listne"), "{source}");

        let err = Config::from_toml("[limits]\nmax_nics = 0", Path::new("c.toml")).unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("limits.max_nics"), "{source}");
    }

    #[test]
    fn storage_and_rate_limits_parse_and_are_checked() {
        let c = Config::from_toml("", Path::new("c.toml")).unwrap();
        assert_eq!(c.storage, StorageLimits::default());
        assert_eq!(c.limits.site_report_burst, 10_000);
        let text = r#"
            [limits]
            site_reports_per_second = 2.5
            site_report_burst = 3
            [storage]
            events_max_bytes = 4096
            events_max_age_days = 7
            machines_max_bytes = 1048576
            bucket_max_bytes = 65536
            max_value_bytes = 2048
        "#;
        let c = Config::from_toml(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.limits.site_reports_per_second, 2.5);
        assert_eq!(c.limits.site_report_burst, 3);
        assert_eq!(c.storage.events_max_bytes, 4096);
        assert_eq!(c.storage.events_max_age.as_secs(), 7 * 24 * 3600);
        assert_eq!(c.storage.machines_max_bytes, 1 << 20);
        assert_eq!(c.storage.bucket_max_bytes, 65536);
        assert_eq!(c.storage.max_value_bytes, 2048);
        for (bad, field) in [
            (
                "[limits]\nsite_reports_per_second = 0",
                "limits.site_reports_per_second",
            ),
            (
                "[limits]\nsite_reports_per_second = -1.0",
                "limits.site_reports_per_second",
            ),
            (
                "[limits]\nsite_report_burst = 0",
                "limits.site_report_burst",
            ),
            (
                "[storage]\nevents_max_bytes = 10",
                "storage.events_max_bytes",
            ),
            (
                "[storage]\nmax_value_bytes = 1000000000",
                "storage.max_value_bytes",
            ),
            (
                "[storage]\nevents_max_age_days = 99999999",
                "storage.events_max_age_days",
            ),
        ] {
            let err = Config::from_toml(bad, Path::new("c.toml")).unwrap_err();
            let source = std::error::Error::source(&err).unwrap().to_string();
            assert!(source.contains(field), "{bad}: {source}");
        }
    }
}
