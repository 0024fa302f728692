//! The config file as written: every field optional so flags can fill or override it,
//! unknown fields refused by name. Values stay text here; `validate` and `dhcp` check
//! them and say which field is wrong.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub site: Option<String>,
    pub nats: Option<String>,
    pub interface: Option<String>,
    pub address: Option<String>,
    pub http_port: Option<u16>,
    /// HTTPS port (default 443), served when `https_cert` and `https_key` are set.
    pub https_port: Option<u16>,
    /// The site's certificate chain (PEM, RSA key: UEFI firmware cannot do ECDSA).
    pub https_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub https_key: Option<PathBuf>,
    pub tftp: Option<bool>,
    /// Concurrent TFTP transfers (default 512).
    pub tftp_max_transfers: Option<usize>,
    /// Concurrent TFTP transfers per client address (default 8).
    pub tftp_max_per_source: Option<usize>,
    pub images: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub ipxe_dir: Option<PathBuf>,
    pub prospector_nats: Option<String>,
    pub extra_kernel_args: Option<String>,
    /// Image cache cap in MiB (default 20480).
    pub image_cache_mb: Option<u64>,
    /// Space in MiB the image cache leaves free on its filesystem (default 1024; 0: none).
    pub image_cache_min_free_mb: Option<u64>,
    /// The hub's JetStream domain when `nats` is a leaf node.
    pub js_domain: Option<String>,
    /// The edge's IPv6 address on the provisioning link (e.g. `fd77::1`): with
    /// `dhcp6_pool`, the edge serves DHCPv6 and TFTP and HTTP on it too.
    pub ipv6_address: Option<String>,
    /// The DHCPv6 address pool, `START-END` inside the /64 of `ipv6_address`.
    pub dhcp6_pool: Option<String>,
    /// No DHCPv4 on the provisioning link: machines boot, fetch their scripts and report
    /// over IPv6 only (needs `ipv6_address` and `dhcp6_pool`).
    pub ipv6_only: Option<bool>,
    /// NATS URL prospectors on an IPv6-only site are told to use (default
    /// `nats://[ipv6_address]:4222`).
    pub prospector_nats6: Option<String>,
    /// File holding the site's signing key seed (`SA…`): boot credentials are signed with it.
    pub site_key: Option<PathBuf>,
    #[serde(default)]
    pub dhcp: RawDhcp,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub power: RawPower,
}

/// The `[power]` table: how the edge drives the site's BMCs (defaults in
/// `crate::power::PowerSettings`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPower {
    /// BMC sessions open at once for the site (default 4).
    pub max_sessions: Option<usize>,
    /// Attempts per operation on retryable errors (default 3).
    pub attempts: Option<u32>,
    /// Bound of one exchange with a BMC (default 3 s).
    pub bmc_timeout: Option<RawDuration>,
    /// How often every BMC's state is read (default 60 s; 0: never).
    pub poll_interval: Option<RawDuration>,
}

/// The `[http]` table: the HTTP server's timeouts and connection caps (defaults in
/// `crate::http::limits`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub header_timeout: Option<RawDuration>,
    pub idle_timeout: Option<RawDuration>,
    pub write_timeout: Option<RawDuration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
}

/// The `[dhcp]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDhcp {
    /// `server` (default) or `proxy`.
    pub mode: Option<String>,
    /// `pxelinux` (default) or `undionly`.
    pub bios_chain: Option<String>,
    /// `ipxe` (default), `snponly` or `shim` (Secure Boot).
    pub uefi_loader: Option<String>,
    #[serde(default)]
    pub subnets: Vec<RawSubnet>,
    #[serde(default)]
    pub reservations: Vec<RawReservation>,
}

/// One `[[dhcp.subnets]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubnet {
    /// `a.b.c.d/prefix`, the network address itself.
    pub network: String,
    /// `START-END`, inclusive.
    #[serde(default)]
    pub pools: Vec<String>,
    pub router: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    pub lease_time: Option<RawDuration>,
    /// Relay agents (`a.b.c.d`, the source address of their packets) allowed to
    /// forward requests for this subnet; empty: only a relay sending from its `giaddr`.
    #[serde(default)]
    pub relays: Vec<String>,
    /// `ipxe`, `snponly` or `shim`: this subnet's UEFI loader (over `dhcp.uefi_loader`).
    pub uefi_loader: Option<String>,
}

/// `3600` (seconds) or `"1h"`, `"30m"`, `"90s"`, `"1d"` (any duration `humantime` reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}

/// One `[[dhcp.reservations]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReservation {
    pub mac: String,
    pub ip: Option<String>,
    pub hostname: Option<String>,
    /// `pxelinux`, `undionly`, `ipxe`, `snponly` or `shim`.
    pub loader: Option<String>,
}

/// A raw config together with the name of the file it came from.
#[derive(Debug, Clone)]
pub struct Sourced {
    pub file: String,
    pub raw: RawConfig,
}

impl Sourced {
    /// Parses TOML text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            source: Box::new(e),
        })?;
        Ok(Self {
            file: file.to_owned(),
            raw,
        })
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file, source })?;
        Self::parse(&path.display().to_string(), &text)
    }
}
