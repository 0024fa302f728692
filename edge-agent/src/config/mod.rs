//! Site configuration: a TOML file and/or command-line flags, validated once at start-up.
//!
//! The raw forms ([`RawConfig`], [`Flags`]) mirror what an operator writes; [`EdgeConfig`]
//! is what the agent runs on, its DHCP part the DHCP module's own validated
//! [`DhcpSettings`]. Every refusal names the file (or "command line") and the field,
//! e.g. `edge.toml: dhcp.subnets[1].pools[0]: 10.9.0.5-10.9.0.1 start is after end`.
//! Flags override the file.
//!
//! Where things are:
//! * `file` — the file as written ([`RawConfig`] and its tables), read and parsed;
//! * `flags` — the command line ([`Flags`]) and how it is laid over the file;
//! * `validate` — the edge's own fields (site, interface, address, NATS URLs…) into an
//!   [`EdgeConfig`];
//! * `dhcp` — the `[dhcp]` table into [`DhcpSettings`] (which validate themselves);
//! * `parse` — field-named errors and the text parsers (addresses, pools, durations,
//!   named choices) both use.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use substruct_wire::{NatsUrl, SiteId};

use crate::dhcp::DhcpSettings;

mod dhcp;
mod file;
mod flags;
mod parse;
mod validate;

#[cfg(test)]
mod tests;

pub use file::{
    RawConfig, RawDhcp, RawDuration, RawHttp, RawPower, RawReservation, RawSubnet, Sourced,
};
pub use flags::{Command, Flags};

/// Where the agent keeps its leases database and intent cache unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/substruct-edge";
/// Debian package `ipxe` installs its loaders here.
pub const DEFAULT_IPXE_DIR: &str = "/usr/lib/ipxe";
/// Site name used when neither the file nor `--site` names one.
pub const DEFAULT_SITE: &str = "default";
/// Lease time when a subnet does not set one.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(3600);
/// Default image cache cap: 20 GiB.
pub const DEFAULT_IMAGE_CACHE_MB: u64 = 20 * 1024;
/// Default space the image cache leaves free on its filesystem: 1 GiB (the same as
/// [`crate::image_cache::DEFAULT_MIN_FREE_BYTES`]).
pub const DEFAULT_IMAGE_CACHE_MIN_FREE_MB: u64 = 1024;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file {file}")]
    Parse {
        file: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{file}: {field}: {problem}")]
    Invalid {
        file: String,
        field: String,
        problem: String,
    },
}

/// The validated configuration the agent runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    pub site: SiteId,
    /// The NATS leaf/hub the edge talks to; `None` runs the edge stand-alone (from its cache).
    pub nats_url: Option<NatsUrl>,
    pub interface: String,
    /// The edge's own address and prefix on the provisioning network.
    pub address: Ipv4Net,
    pub http_port: u16,
    /// HTTPS beside HTTP: its port and the site's certificate and key.
    pub https: Option<Https>,
    pub tftp: bool,
    /// The TFTP server's limits (`tftp_max_transfers`, `tftp_max_per_source`).
    pub tftp_limits: crate::tftp::TftpSettings,
    pub images_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Where `ipxe.lkrn`, `ipxe.efi`, `snponly.efi` and `undionly.kpxe` are read from.
    pub ipxe_dir: PathBuf,
    /// The DHCP server's settings, validated (server address and boot URL base included).
    pub dhcp: DhcpSettings,
    /// The NATS URL prospectors are told to use (`substruct.nats=`).
    pub prospector_nats: NatsUrl,
    /// Appended to every prospector kernel command line.
    pub extra_kernel_args: Option<String>,
    /// Size cap of the image cache (`state_dir/cache`).
    pub image_cache_bytes: u64,
    /// Space the image cache leaves free on its filesystem: it evicts, or refuses a
    /// fetch, rather than go below it.
    pub image_cache_min_free_bytes: u64,
    /// The hub's JetStream domain, when the edge's NATS is a leaf node (`hub` with
    /// the configs in deploy/nats/); `None`: JetStream is on the server itself.
    pub js_domain: Option<String>,
    /// The HTTP server's timeouts and connection caps (`[http]`).
    pub http: crate::http::limits::HttpLimits,
    /// The site's signing key seed file; `None`: boot scripts carry unsigned tokens, which
    /// the controller does not accept as a machine's proof of identity.
    pub site_key: Option<PathBuf>,
    /// The `[power]` table: BMC sessions, retries, the status poll.
    pub power: crate::power::PowerSettings,
    /// DHCPv6 (and TFTP and HTTP over IPv6), when `ipv6_address` and `dhcp6_pool` are
    /// set. Its server DUID is made from the interface's MAC when the agent binds.
    pub dhcp6: Option<crate::dhcp6::Dhcp6Settings>,
    /// The NATS URL prospectors booted over IPv6 are told to use; set on an IPv6-only
    /// site only.
    pub prospector_nats6: Option<NatsUrl>,
}

/// The edge's HTTPS server: same routes as HTTP, the site's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Https {
    pub port: u16,
    pub tls: substruct_runtime::tls::TlsPaths,
}

impl EdgeConfig {
    /// `state_dir/cache`: images fetched from the controller's object store.
    pub fn image_cache_dir(&self) -> PathBuf {
        self.state_dir.join("cache")
    }

    /// The edge's own IPv4 address.
    pub fn server_ip(&self) -> Ipv4Addr {
        self.address.addr()
    }

    /// `http://ip` (or `http://ip:port`): the base of every URL handed to clients.
    pub fn http_base(&self) -> String {
        http_base(self.server_ip(), self.http_port)
    }

    /// `http://[ipv6]` (or with `:port`): the base of URLs handed to clients that ask
    /// over IPv6 on an IPv6-only site; `None` elsewhere (a dual-stack site's machines get
    /// an IPv4 lease and the IPv4 URLs).
    pub fn http_base6(&self) -> Option<String> {
        self.dhcp6
            .as_ref()
            .filter(|d| d.ipv6_only)
            .map(|d| d.http_base().to_owned())
    }

    /// Whether the edge serves no DHCPv4 (an IPv6-only provisioning link).
    pub fn ipv6_only(&self) -> bool {
        self.dhcp6.as_ref().is_some_and(|d| d.ipv6_only)
    }

    /// `state_dir/intents.json`: the last copy of this site's boot intents.
    pub fn intent_cache_path(&self) -> PathBuf {
        self.state_dir.join("intents.json")
    }

    /// `state_dir/leases.redb`: the DHCP lease database.
    pub fn lease_db_path(&self) -> PathBuf {
        self.state_dir.join("leases.redb")
    }

    /// Parses TOML text (`file` names it in errors) and validates it.
    pub fn from_toml_str(file: &str, text: &str) -> Result<Self, ConfigError> {
        Sourced::parse(file, text)?.try_into()
    }
}

/// `http://ip` (or `http://ip:port`).
fn http_base(ip: Ipv4Addr, port: u16) -> String {
    if port == 80 {
        format!("http://{ip}")
    } else {
        format!("http://{ip}:{port}")
    }
}

/// Reads and validates a config file with no flags applied.
pub fn load_file(path: &Path) -> Result<EdgeConfig, ConfigError> {
    Flags {
        config: Some(path.to_owned()),
        ..Flags::default()
    }
    .into_config()
}
