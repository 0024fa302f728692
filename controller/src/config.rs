//! Controller configuration: a TOML file parsed into [`RawConfig`] (unknown fields
//! refused), validated by `TryFrom` into [`Config`]. Errors name the file and field.
//!
//! ```toml
//! nats_url = "nats://127.0.0.1:4222"
//! listen = "127.0.0.1:8080"
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
    #[serde(default)]
    pub sites: Vec<String>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    #[serde(default)]
    pub limits: RawLimits,
    pub max_in_flight: Option<usize>,
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

/// Bounds on what one hardware report may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_disks: usize,
    pub max_nics: usize,
    pub max_pci: usize,
    pub max_dimms: usize,
    pub max_cpu_flags: usize,
    pub max_string_len: usize,
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
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The NATS server(s), comma-separated.
    pub nats_url: NatsUrl,
    /// NATS user and password (the hub's `controller` user from deploy/nats/gen-site).
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    pub listen: SocketAddr,
    /// Known sites. Empty: every valid site name is accepted.
    pub sites: Vec<SiteId>,
    pub tokens: Vec<ApiToken>,
    pub limits: Limits,
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
            sites: Vec::new(),
            tokens: Vec::new(),
            limits: Limits::default(),
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
        };
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
            sites,
            tokens,
            limits,
            max_in_flight,
        })
    }
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
}
