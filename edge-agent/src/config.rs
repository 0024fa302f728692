//! Site configuration: a TOML file and/or command-line flags, validated once at start-up.
//!
//! The raw forms ([`RawConfig`], [`Flags`]) mirror what an operator writes; [`EdgeConfig`]
//! is what the agent runs on. Every refusal names the file (or "command line") and the
//! field, e.g. `edge.toml: dhcp.subnets[1].pools[0]: 10.9.0.5-10.9.0.1 start is after end`.
//! Flags override the file.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;
use substruct_wire::{Mac, SiteId};

use crate::dhcp;

/// Where the agent keeps its leases database and intent cache unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/substruct-edge";
/// Debian package `ipxe` installs its loaders here.
pub const DEFAULT_IPXE_DIR: &str = "/usr/lib/ipxe";
/// Site name used when neither the file nor `--site` names one.
pub const DEFAULT_SITE: &str = "default";
/// Lease time when a subnet does not set one.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(3600);

/// Name used in error messages when a value came from flags rather than a file.
const COMMAND_LINE: &str = "command line";

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

/// Whether the edge hands out addresses or only boot information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DhcpMode {
    /// A full DHCP server: addresses from pools and reservations, plus boot information.
    Server,
    /// ProxyDHCP beside an existing DHCP server: boot information only (ports 67 and 4011).
    Proxy,
}

/// The first-stage loader BIOS PXE clients get over TFTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BiosChain {
    /// `lpxelinux.0`, whose generated `pxelinux.cfg/default` chainloads `ipxe.lkrn` over HTTP.
    Pxelinux,
    /// `undionly.kpxe` (iPXE on the ROM's UNDI driver).
    Undionly,
}

/// The iPXE build UEFI PXE clients get over TFTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UefiLoader {
    /// `ipxe.efi` (iPXE's own NIC drivers).
    Ipxe,
    /// `snponly.efi` (the firmware's SNP driver).
    Snponly,
}

impl BiosChain {
    /// The TFTP file name of this loader.
    pub fn boot_file(self) -> &'static str {
        match self {
            BiosChain::Pxelinux => "lpxelinux.0",
            BiosChain::Undionly => "undionly.kpxe",
        }
    }
}

impl UefiLoader {
    /// The TFTP/HTTP file name of this loader.
    pub fn boot_file(self) -> &'static str {
        match self {
            UefiLoader::Ipxe => "ipxe.efi",
            UefiLoader::Snponly => "snponly.efi",
        }
    }
}

/// An inclusive range of addresses handed out dynamically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }
    fn overlaps(&self, other: &Pool) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// One subnet the edge serves (its own, or one behind a DHCP relay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Net,
    pub pools: Vec<Pool>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_time: Duration,
}

/// A per-machine first-stage loader (a reservation's `loader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservedLoader {
    Pxelinux,
    Undionly,
    IpxeEfi,
    SnpOnly,
}

/// A fixed address and/or host name and/or first-stage loader for one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: Mac,
    pub ip: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    /// Replaces the architecture's default loader for this MAC.
    pub loader: Option<ReservedLoader>,
}

/// Validated DHCP settings (converted into the DHCP module's own settings by the agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    pub mode: DhcpMode,
    pub subnets: Vec<Subnet>,
    pub reservations: Vec<Reservation>,
    pub bios_chain: BiosChain,
    pub uefi_loader: UefiLoader,
}

/// The validated configuration the agent runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    pub site: SiteId,
    /// The NATS leaf/hub the edge talks to; `None` runs the edge stand-alone (from its cache).
    pub nats_url: Option<String>,
    pub interface: String,
    /// The edge's own address and prefix on the provisioning network.
    pub address: Ipv4Net,
    pub http_port: u16,
    pub tftp: bool,
    pub images_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Where `ipxe.lkrn`, `ipxe.efi`, `snponly.efi` and `undionly.kpxe` are read from.
    pub ipxe_dir: PathBuf,
    pub dhcp: DhcpConfig,
    /// The NATS URL prospectors are told to use (`substruct.nats=`).
    pub prospector_nats: String,
    /// Appended to every prospector kernel command line.
    pub extra_kernel_args: Option<String>,
    /// Size cap of the image cache (`state_dir/cache`).
    pub image_cache_bytes: u64,
    /// The hub's JetStream domain, when the edge's NATS is a leaf node (`hub` with
    /// the configs in deploy/nats/); `None`: JetStream is on the server itself.
    pub js_domain: Option<String>,
}

/// Default image cache cap: 20 GiB.
pub const DEFAULT_IMAGE_CACHE_MB: u64 = 20 * 1024;

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
        if self.http_port == 80 {
            format!("http://{}", self.server_ip())
        } else {
            format!("http://{}:{}", self.server_ip(), self.http_port)
        }
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            source: Box::new(e),
        })?;
        Sourced {
            file: file.to_owned(),
            raw,
        }
        .try_into()
    }
}

impl EdgeConfig {
    /// The DHCP module's settings for this site (validated again by the DHCP module).
    pub fn dhcp_config(&self) -> dhcp::DhcpConfig {
        let d = &self.dhcp;
        dhcp::DhcpConfig {
            server_ip: self.server_ip(),
            mode: match d.mode {
                DhcpMode::Server => dhcp::DhcpMode::Server,
                DhcpMode::Proxy => dhcp::DhcpMode::Proxy,
            },
            subnets: d
                .subnets
                .iter()
                .map(|s| dhcp::Subnet {
                    network: s.network,
                    pools: s.pools.iter().map(|p| (p.start, p.end)).collect(),
                    router: s.router,
                    dns: s.dns.clone(),
                    lease_time: s.lease_time,
                })
                .collect(),
            reservations: d
                .reservations
                .iter()
                .map(|r| dhcp::Reservation {
                    mac: r.mac,
                    ip: r.ip,
                    hostname: r.hostname.clone(),
                    loader: r.loader.map(|l| match l {
                        ReservedLoader::Pxelinux => dhcp::Loader::Pxelinux,
                        ReservedLoader::Undionly => dhcp::Loader::Undionly,
                        ReservedLoader::IpxeEfi => dhcp::Loader::IpxeEfi,
                        ReservedLoader::SnpOnly => dhcp::Loader::SnpOnly,
                    }),
                })
                .collect(),
            bios_chain: match d.bios_chain {
                BiosChain::Pxelinux => dhcp::BiosChain::Pxelinux,
                BiosChain::Undionly => dhcp::BiosChain::Undionly,
            },
            uefi_loader: match d.uefi_loader {
                UefiLoader::Ipxe => dhcp::UefiLoader::IpxeEfi,
                UefiLoader::Snponly => dhcp::UefiLoader::SnpOnly,
            },
            http_base: self.http_base(),
        }
    }

    /// [`Self::dhcp_config`], validated and indexed by the DHCP module.
    pub fn dhcp_settings(&self) -> Result<dhcp::DhcpSettings, dhcp::SettingsError> {
        dhcp::DhcpSettings::new(self.dhcp_config())
    }
}

/// The file as written: every field optional so flags can fill or override it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub site: Option<String>,
    pub nats: Option<String>,
    pub interface: Option<String>,
    pub address: Option<String>,
    pub http_port: Option<u16>,
    pub tftp: Option<bool>,
    pub images: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub ipxe_dir: Option<PathBuf>,
    pub prospector_nats: Option<String>,
    pub extra_kernel_args: Option<String>,
    /// Image cache cap in MiB (default 20480).
    pub image_cache_mb: Option<u64>,
    /// The hub's JetStream domain when `nats` is a leaf node.
    pub js_domain: Option<String>,
    #[serde(default)]
    pub dhcp: RawDhcp,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDhcp {
    pub mode: Option<String>,
    pub bios_chain: Option<String>,
    pub uefi_loader: Option<String>,
    #[serde(default)]
    pub subnets: Vec<RawSubnet>,
    #[serde(default)]
    pub reservations: Vec<RawReservation>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubnet {
    pub network: String,
    #[serde(default)]
    pub pools: Vec<String>,
    pub router: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    pub lease_time: Option<RawDuration>,
}

/// `3600` (seconds) or `"1h"`, `"30m"`, `"90s"`, `"1d"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReservation {
    pub mac: String,
    pub ip: Option<String>,
    pub hostname: Option<String>,
    pub loader: Option<String>,
}

/// A raw config together with the name of the file it came from.
#[derive(Debug, Clone)]
pub struct Sourced {
    pub file: String,
    pub raw: RawConfig,
}

/// The command line. Names and shapes are a public interface: keep them.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "substruct-edge",
    version,
    about = "Substruct edge agent: DHCP, TFTP and HTTP for one site's provisioning network"
)]
pub struct Flags {
    /// TOML config file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface on the provisioning network (DHCP binds to it).
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    /// The edge's address and prefix on the provisioning network, e.g. 10.77.0.1/24.
    #[arg(long, value_name = "IP/PREFIX")]
    pub address: Option<String>,
    /// Address pool of the edge's own subnet, e.g. 10.77.0.100-10.77.0.199 (repeatable).
    #[arg(long, value_name = "START-END")]
    pub pool: Vec<String>,
    /// Default gateway handed out on the edge's own subnet (DHCP option 3).
    #[arg(long, value_name = "IP")]
    pub router: Option<String>,
    /// Name server handed out on the edge's own subnet (DHCP option 6; repeatable).
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// Directory served under /images/ (kernels, initrds, disk images).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// NATS URL of the site's leaf node; without it the edge runs from its cache.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// This site's name.
    #[arg(long, value_name = "NAME")]
    pub site: Option<String>,
    /// ProxyDHCP: answer with boot information only, beside an existing DHCP server.
    #[arg(long)]
    pub proxy_dhcp: bool,
    /// First-stage loader for BIOS PXE clients.
    #[arg(long, value_enum, value_name = "pxelinux|undionly")]
    pub bios_chain: Option<BiosChain>,
    /// HTTP port (default 80).
    #[arg(long, value_name = "N")]
    pub http_port: Option<u16>,
    /// Directory for the leases database and the intent cache.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// NATS URL prospectors must use (default nats://{address}:4222).
    #[arg(long, value_name = "URL")]
    pub prospector_nats: Option<String>,
    /// Image cache cap in MiB (default 20480).
    #[arg(long, value_name = "MIB")]
    pub image_cache_mb: Option<u64>,
    /// The hub's JetStream domain when --nats is a site leaf node (`hub` with deploy/nats/).
    #[arg(long, value_name = "DOMAIN")]
    pub js_domain: Option<String>,
}

impl Flags {
    /// Reads the file named by `--config` (if any), applies the flags over it and validates.
    pub fn into_config(self) -> Result<EdgeConfig, ConfigError> {
        let (file, raw) = match &self.config {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    file: name.clone(),
                    source,
                })?;
                let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    file: name.clone(),
                    source: Box::new(e),
                })?;
                (name, raw)
            }
            None => (COMMAND_LINE.to_owned(), RawConfig::default()),
        };
        self.apply(Sourced { file, raw }).try_into()
    }

    /// Lays the flags over a parsed file. `--pool` replaces the pools of the subnet that
    /// holds `--address` (adding that subnet when the file has none).
    pub fn apply(self, mut src: Sourced) -> Sourced {
        let raw = &mut src.raw;
        macro_rules! over {
            ($flag:expr, $field:expr) => {
                if let Some(v) = $flag {
                    $field = Some(v);
                }
            };
        }
        over!(self.site, raw.site);
        over!(self.nats, raw.nats);
        over!(self.interface, raw.interface);
        over!(self.address, raw.address);
        over!(self.http_port, raw.http_port);
        over!(self.images, raw.images);
        over!(self.state_dir, raw.state_dir);
        over!(self.prospector_nats, raw.prospector_nats);
        over!(self.image_cache_mb, raw.image_cache_mb);
        over!(self.js_domain, raw.js_domain);
        if self.proxy_dhcp {
            raw.dhcp.mode = Some("proxy".to_owned());
        }
        if let Some(chain) = self.bios_chain {
            raw.dhcp.bios_chain = Some(
                match chain {
                    BiosChain::Pxelinux => "pxelinux",
                    BiosChain::Undionly => "undionly",
                }
                .to_owned(),
            );
        }
        if !self.pool.is_empty() || self.router.is_some() || !self.dns.is_empty() {
            let own = raw
                .address
                .as_deref()
                .and_then(|a| Ipv4Net::from_str(a).ok())
                .map(|n| n.trunc());
            let existing = raw.dhcp.subnets.iter_mut().find(|s| {
                match (Ipv4Net::from_str(&s.network).ok(), own) {
                    (Some(n), Some(own)) => n == own,
                    _ => false,
                }
            });
            let subnet = match existing {
                Some(subnet) => subnet,
                None => {
                    raw.dhcp.subnets.push(RawSubnet {
                        network: own.map(|n| n.to_string()).unwrap_or_default(),
                        ..RawSubnet::default()
                    });
                    let last = raw.dhcp.subnets.len() - 1;
                    &mut raw.dhcp.subnets[last]
                }
            };
            if !self.pool.is_empty() {
                subnet.pools = self.pool;
            }
            if let Some(router) = self.router {
                subnet.router = Some(router);
            }
            if !self.dns.is_empty() {
                subnet.dns = self.dns;
            }
        }
        src
    }
}

/// Builds field-named errors for one source.
struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn ip(&self, field: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
        Ipv4Addr::from_str(text.trim())
            .map_err(|_| self.err(field, format!("{text:?} is not an IPv4 address")))
    }

    fn choice<T: Copy>(
        &self,
        field: &str,
        value: Option<&str>,
        default: T,
        options: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        options
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.err(
                    field,
                    format!("{value:?} is not one of {}", names.join(", ")),
                )
            })
    }
}

/// Text that ends up on a kernel or iPXE command line: printable, one line.
fn is_one_line(s: &str) -> bool {
    !s.chars().any(|c| c.is_control())
}

fn check_nats_url(ctx: &Ctx<'_>, field: &str, url: &str) -> Result<(), ConfigError> {
    let ok_scheme = ["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len());
    if !ok_scheme || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ctx.err(
            field,
            format!("{url:?} is not a NATS URL (nats://host:port)"),
        ));
    }
    Ok(())
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).map(Duration::from_secs)
}

fn parse_pool(ctx: &Ctx<'_>, field: &str, text: &str) -> Result<Pool, ConfigError> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| ctx.err(field, format!("{text:?} is not START-END")))?;
    let start = Ipv4Addr::from_str(a.trim()).map_err(|_| {
        ctx.err(
            field,
            format!("{text:?}: start {a:?} is not an IPv4 address"),
        )
    })?;
    let end = Ipv4Addr::from_str(b.trim())
        .map_err(|_| ctx.err(field, format!("{text:?}: end {b:?} is not an IPv4 address")))?;
    if start > end {
        return Err(ctx.err(field, format!("{start}-{end} start is after end")));
    }
    Ok(Pool { start, end })
}

fn check_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn convert_subnet(
    ctx: &Ctx<'_>,
    at: &str,
    raw: &RawSubnet,
    mode: DhcpMode,
) -> Result<Subnet, ConfigError> {
    let network = Ipv4Net::from_str(raw.network.trim()).map_err(|_| {
        ctx.err(
            format!("{at}.network"),
            format!("{:?} is not an IPv4 network (a.b.c.d/prefix)", raw.network),
        )
    })?;
    if network.trunc() != network {
        return Err(ctx.err(
            format!("{at}.network"),
            format!(
                "{network} is not a network address (did you mean {}?)",
                network.trunc()
            ),
        ));
    }
    let mut pools = Vec::new();
    for (j, text) in raw.pools.iter().enumerate() {
        let field = format!("{at}.pools[{j}]");
        let pool = parse_pool(ctx, &field, text)?;
        for edge in [pool.start, pool.end] {
            if !network.contains(&edge) {
                return Err(ctx.err(&field, format!("{pool} is not inside {network}")));
            }
        }
        if network.prefix_len() < 31
            && (pool.contains(network.network()) || pool.contains(network.broadcast()))
        {
            return Err(ctx.err(
                &field,
                format!("{pool} includes the network or broadcast address of {network}"),
            ));
        }
        if let Some((k, _)) = pools
            .iter()
            .enumerate()
            .find(|(_, p): &(usize, &Pool)| p.overlaps(&pool))
        {
            return Err(ctx.err(&field, format!("{pool} overlaps {at}.pools[{k}]")));
        }
        pools.push(pool);
    }
    if mode == DhcpMode::Proxy {
        // A ProxyDHCP server hands out no addresses: pools are accepted and ignored.
        pools.clear();
    }
    let router = match &raw.router {
        Some(text) => {
            let field = format!("{at}.router");
            let ip = ctx.ip(&field, text)?;
            if !network.contains(&ip) {
                return Err(ctx.err(field, format!("{ip} is not inside {network}")));
            }
            Some(ip)
        }
        None => None,
    };
    let dns = raw
        .dns
        .iter()
        .enumerate()
        .map(|(j, t)| ctx.ip(&format!("{at}.dns[{j}]"), t))
        .collect::<Result<Vec<_>, _>>()?;
    let lease_time = match &raw.lease_time {
        None => DEFAULT_LEASE_TIME,
        Some(RawDuration::Seconds(s)) => Duration::from_secs(*s),
        Some(RawDuration::Text(t)) => parse_duration(t).ok_or_else(|| {
            ctx.err(
                format!("{at}.lease_time"),
                format!(
                    "{t:?} is not a duration (seconds, or e.g. \"90s\", \"30m\", \"1h\", \"1d\")"
                ),
            )
        })?,
    };
    if lease_time < Duration::from_secs(60) || lease_time.as_secs() > u64::from(u32::MAX) {
        return Err(ctx.err(
            format!("{at}.lease_time"),
            format!(
                "{} s is outside 60 s ..= {} s",
                lease_time.as_secs(),
                u32::MAX
            ),
        ));
    }
    Ok(Subnet {
        network,
        pools,
        router,
        dns,
        lease_time,
    })
}

impl TryFrom<Sourced> for EdgeConfig {
    type Error = ConfigError;

    fn try_from(src: Sourced) -> Result<Self, ConfigError> {
        let ctx = Ctx { file: &src.file };
        let raw = src.raw;

        let site = SiteId::new(raw.site.as_deref().unwrap_or(DEFAULT_SITE))
            .map_err(|e| ctx.err("site", e.to_string()))?;

        let interface = raw
            .interface
            .ok_or_else(|| ctx.err("interface", "missing (set it or pass --interface)"))?;
        if interface.is_empty()
            || interface.len() > 15
            || interface
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(ctx.err(
                "interface",
                format!(
                    "{interface:?} is not an interface name (1-15 characters, no '/' or spaces)"
                ),
            ));
        }

        let address_text = raw
            .address
            .ok_or_else(|| ctx.err("address", "missing (set it or pass --address)"))?;
        let address = Ipv4Net::from_str(address_text.trim()).map_err(|_| {
            ctx.err(
                "address",
                format!("{address_text:?} is not IPv4 address/prefix (e.g. 10.77.0.1/24)"),
            )
        })?;
        if address.prefix_len() < 31
            && (address.addr() == address.network() || address.addr() == address.broadcast())
        {
            return Err(ctx.err(
                "address",
                format!("{address} is the network or broadcast address of its subnet"),
            ));
        }

        let http_port = raw.http_port.unwrap_or(80);
        if http_port == 0 {
            return Err(ctx.err("http_port", "0 is not a port"));
        }

        let images_dir = raw
            .images
            .ok_or_else(|| ctx.err("images", "missing (set it or pass --images)"))?;

        if let Some(url) = &raw.nats {
            check_nats_url(&ctx, "nats", url)?;
        }
        let prospector_nats = raw
            .prospector_nats
            .unwrap_or_else(|| format!("nats://{}:4222", address.addr()));
        check_nats_url(&ctx, "prospector_nats", &prospector_nats)?;

        let extra_kernel_args = raw
            .extra_kernel_args
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        if let Some(args) = &extra_kernel_args {
            if !is_one_line(args) {
                return Err(ctx.err(
                    "extra_kernel_args",
                    "must be one line without control characters",
                ));
            }
        }

        let d = raw.dhcp;
        let mode = ctx.choice(
            "dhcp.mode",
            d.mode.as_deref(),
            DhcpMode::Server,
            &[("server", DhcpMode::Server), ("proxy", DhcpMode::Proxy)],
        )?;
        let bios_chain = ctx.choice(
            "dhcp.bios_chain",
            d.bios_chain.as_deref(),
            BiosChain::Pxelinux,
            &[
                ("pxelinux", BiosChain::Pxelinux),
                ("undionly", BiosChain::Undionly),
            ],
        )?;
        let uefi_loader = ctx.choice(
            "dhcp.uefi_loader",
            d.uefi_loader.as_deref(),
            UefiLoader::Ipxe,
            &[("ipxe", UefiLoader::Ipxe), ("snponly", UefiLoader::Snponly)],
        )?;

        let mut subnets: Vec<Subnet> = Vec::new();
        for (i, rs) in d.subnets.iter().enumerate() {
            let at = format!("dhcp.subnets[{i}]");
            let subnet = convert_subnet(&ctx, &at, rs, mode)?;
            if let Some((k, _)) = subnets.iter().enumerate().find(|(_, s)| {
                s.network.contains(&subnet.network) || subnet.network.contains(&s.network)
            }) {
                return Err(ctx.err(
                    format!("{at}.network"),
                    format!("{} overlaps dhcp.subnets[{k}]", subnet.network),
                ));
            }
            for (j, pool) in subnet.pools.iter().enumerate() {
                if pool.contains(address.addr()) {
                    return Err(ctx.err(
                        format!("{at}.pools[{j}]"),
                        format!("{pool} includes the edge's own address {}", address.addr()),
                    ));
                }
            }
            subnets.push(subnet);
        }
        if !subnets.iter().any(|s| s.network.contains(&address.addr())) {
            // The edge's own network is always served (without pools unless configured).
            subnets.push(Subnet {
                network: address.trunc(),
                pools: Vec::new(),
                router: None,
                dns: Vec::new(),
                lease_time: DEFAULT_LEASE_TIME,
            });
        }
        if mode == DhcpMode::Server && subnets.iter().all(|s| s.pools.is_empty()) {
            return Err(ctx.err(
                "dhcp.subnets",
                "server mode needs at least one pool (dhcp.subnets[].pools or --pool)",
            ));
        }

        let mut reservations: Vec<Reservation> = Vec::new();
        for (i, rr) in d.reservations.iter().enumerate() {
            let at = format!("dhcp.reservations[{i}]");
            let mac = Mac::parse(rr.mac.trim())
                .map_err(|e| ctx.err(format!("{at}.mac"), e.to_string()))?;
            if !mac.is_usable() {
                return Err(ctx.err(
                    format!("{at}.mac"),
                    format!("{mac} is a broadcast, multicast or all-zero address"),
                ));
            }
            let ip = match &rr.ip {
                Some(text) => {
                    let ip = ctx.ip(&format!("{at}.ip"), text)?;
                    if mode == DhcpMode::Server && !subnets.iter().any(|s| s.network.contains(&ip))
                    {
                        return Err(ctx.err(
                            format!("{at}.ip"),
                            format!("{ip} is not inside any dhcp.subnets[].network"),
                        ));
                    }
                    if ip == address.addr() {
                        return Err(ctx.err(
                            format!("{at}.ip"),
                            format!("{ip} is the edge's own address"),
                        ));
                    }
                    if let Some((k, _)) = reservations
                        .iter()
                        .enumerate()
                        .find(|(_, r)| r.ip == Some(ip))
                    {
                        return Err(ctx.err(
                            format!("{at}.ip"),
                            format!("{ip} is already reserved by dhcp.reservations[{k}]"),
                        ));
                    }
                    Some(ip)
                }
                None => None,
            };
            if let Some((k, _)) = reservations.iter().enumerate().find(|(_, r)| r.mac == mac) {
                return Err(ctx.err(
                    format!("{at}.mac"),
                    format!("{mac} is already reserved by dhcp.reservations[{k}]"),
                ));
            }
            if let Some(h) = &rr.hostname {
                if !check_hostname(h) {
                    return Err(ctx.err(
                        format!("{at}.hostname"),
                        format!("{h:?} is not a host name (letters, digits, '-', at most 63)"),
                    ));
                }
            }
            let loader = ctx.choice(
                &format!("{at}.loader"),
                rr.loader.as_deref(),
                None,
                &[
                    ("pxelinux", Some(ReservedLoader::Pxelinux)),
                    ("undionly", Some(ReservedLoader::Undionly)),
                    ("ipxe", Some(ReservedLoader::IpxeEfi)),
                    ("snponly", Some(ReservedLoader::SnpOnly)),
                ],
            )?;
            reservations.push(Reservation {
                mac,
                ip,
                hostname: rr.hostname.clone(),
                loader,
            });
        }

        Ok(EdgeConfig {
            site,
            nats_url: raw.nats,
            interface,
            address,
            http_port,
            tftp: raw.tftp.unwrap_or(true),
            images_dir,
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            ipxe_dir: raw
                .ipxe_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_IPXE_DIR)),
            dhcp: DhcpConfig {
                mode,
                subnets,
                reservations,
                bios_chain,
                uefi_loader,
            },
            prospector_nats,
            extra_kernel_args,
            image_cache_bytes: raw
                .image_cache_mb
                .unwrap_or(DEFAULT_IMAGE_CACHE_MB)
                .saturating_mul(1 << 20),
            js_domain: raw.js_domain.filter(|d| !d.is_empty()),
        })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    const GOOD: &str = r#"
site = "s1"
nats = "nats://10.0.0.5:4222"
interface = "br0"
address = "10.77.0.1/24"
images = "/srv/images"

[dhcp]
mode = "server"
bios_chain = "undionly"
uefi_loader = "snponly"

[[dhcp.subnets]]
network = "10.77.0.0/24"
pools = ["10.77.0.100-10.77.0.199"]
router = "10.77.0.1"
dns = ["10.77.0.1"]
lease_time = "1h"

[[dhcp.subnets]]
network = "10.9.0.0/24"
pools = ["10.9.0.10-10.9.0.20", "10.9.0.30-10.9.0.40"]
lease_time = 600

[[dhcp.reservations]]
mac = "52:54:00:77:00:0a"
ip = "10.77.0.50"
hostname = "node-a"
loader = "undionly"
"#;

    fn err_of(text: &str) -> String {
        EdgeConfig::from_toml_str("edge.toml", text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_full_file_converts() {
        let c = EdgeConfig::from_toml_str("edge.toml", GOOD).unwrap();
        assert_eq!(c.site.as_str(), "s1");
        assert_eq!(c.http_base(), "http://10.77.0.1");
        assert_eq!(c.prospector_nats, "nats://10.77.0.1:4222");
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.dhcp.bios_chain, BiosChain::Undionly);
        assert_eq!(c.dhcp.uefi_loader, UefiLoader::Snponly);
        assert_eq!(c.dhcp.subnets.len(), 2);
        assert_eq!(c.dhcp.subnets[0].lease_time, Duration::from_secs(3600));
        assert_eq!(c.dhcp.subnets[1].lease_time, Duration::from_secs(600));
        assert_eq!(
            c.dhcp.subnets[1].pools[1].to_string(),
            "10.9.0.30-10.9.0.40"
        );
        assert_eq!(c.dhcp.reservations[0].hostname.as_deref(), Some("node-a"));
        assert!(c.tftp);
    }

    #[test]
    fn validation_messages_name_file_and_field() {
        let bad_pool = GOOD.replace("10.9.0.30-10.9.0.40", "10.9.0.5-10.9.0.1");
        assert_eq!(
            err_of(&bad_pool),
            "edge.toml: dhcp.subnets[1].pools[1]: 10.9.0.5-10.9.0.1 start is after end"
        );
        let outside = GOOD.replace("10.9.0.30-10.9.0.40", "10.9.0.30-10.9.1.40");
        assert_eq!(
            err_of(&outside),
            "edge.toml: dhcp.subnets[1].pools[1]: 10.9.0.30-10.9.1.40 is not inside 10.9.0.0/24"
        );
        let overlap = GOOD.replace("10.9.0.30-10.9.0.40", "10.9.0.15-10.9.0.40");
        assert_eq!(
            err_of(&overlap),
            "edge.toml: dhcp.subnets[1].pools[1]: 10.9.0.15-10.9.0.40 overlaps dhcp.subnets[1].pools[0]"
        );
        let not_net = GOOD.replace("network = \"10.9.0.0/24\"", "network = \"10.9.0.7/24\"");
        assert_eq!(
            err_of(&not_net),
            "edge.toml: dhcp.subnets[1].network: 10.9.0.7/24 is not a network address (did you mean 10.9.0.0/24?)"
        );
        let own = GOOD.replace("10.77.0.100-10.77.0.199", "10.77.0.1-10.77.0.199");
        assert_eq!(
            err_of(&own),
            "edge.toml: dhcp.subnets[0].pools[0]: 10.77.0.1-10.77.0.199 includes the edge's own address 10.77.0.1"
        );
        let lease = GOOD.replace("lease_time = \"1h\"", "lease_time = \"1 week\"");
        assert_eq!(
            err_of(&lease),
            "edge.toml: dhcp.subnets[0].lease_time: \"1 week\" is not a duration (seconds, or e.g. \"90s\", \"30m\", \"1h\", \"1d\")"
        );
        let mode = GOOD.replace("mode = \"server\"", "mode = \"relay\"");
        assert_eq!(
            err_of(&mode),
            "edge.toml: dhcp.mode: \"relay\" is not one of server, proxy"
        );
        let mac = GOOD.replace("52:54:00:77:00:0a", "52:54:00:77:00");
        assert_eq!(
            err_of(&mac),
            "edge.toml: dhcp.reservations[0].mac: MAC address \"52:54:00:77:00\" is not six hex bytes separated by ':' or '-'"
        );
        let rip = GOOD.replace("ip = \"10.77.0.50\"", "ip = \"10.99.0.50\"");
        assert_eq!(
            err_of(&rip),
            "edge.toml: dhcp.reservations[0].ip: 10.99.0.50 is not inside any dhcp.subnets[].network"
        );
        let router = GOOD.replace("router = \"10.77.0.1\"", "router = \"10.78.0.1\"");
        assert_eq!(
            err_of(&router),
            "edge.toml: dhcp.subnets[0].router: 10.78.0.1 is not inside 10.77.0.0/24"
        );
        let site = GOOD.replace("site = \"s1\"", "site = \"Site 1\"");
        assert_eq!(
            err_of(&site),
            "edge.toml: site: site name \"Site 1\" contains 'S'; allowed are a-z, 0-9 and '-' (not first)"
        );
        let nats = GOOD.replace("nats://10.0.0.5:4222", "10.0.0.5:4222");
        assert_eq!(
            err_of(&nats),
            "edge.toml: nats: \"10.0.0.5:4222\" is not a NATS URL (nats://host:port)"
        );
        let addr = GOOD.replace("10.77.0.1/24\"\nimages", "10.77.0.0/24\"\nimages");
        assert_eq!(
            err_of(&addr),
            "edge.toml: address: 10.77.0.0/24 is the network or broadcast address of its subnet"
        );
        let no_if = GOOD.replace("interface = \"br0\"\n", "");
        assert_eq!(
            err_of(&no_if),
            "edge.toml: interface: missing (set it or pass --interface)"
        );
        let dup = format!(
            "{GOOD}\n[[dhcp.reservations]]\nmac = \"52:54:00:77:00:0b\"\nip = \"10.77.0.50\"\n"
        );
        assert_eq!(
            err_of(&dup),
            "edge.toml: dhcp.reservations[1].ip: 10.77.0.50 is already reserved by dhcp.reservations[0]"
        );
        let loader = GOOD.replace("loader = \"undionly\"", "loader = \"grub\"");
        assert_eq!(
            err_of(&loader),
            "edge.toml: dhcp.reservations[0].loader: \"grub\" is not one of pxelinux, undionly, ipxe, snponly"
        );
        let nopool = "interface = \"br0\"\naddress = \"10.77.0.1/24\"\nimages = \"/i\"\n";
        assert_eq!(
            err_of(nopool),
            "edge.toml: dhcp.subnets: server mode needs at least one pool (dhcp.subnets[].pools or --pool)"
        );
    }

    #[test]
    fn converts_into_dhcp_settings() {
        let c = EdgeConfig::from_toml_str("edge.toml", GOOD).unwrap();
        let d = c.dhcp_settings().unwrap();
        assert_eq!(d.server_ip, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(d.http_base, "http://10.77.0.1");
        assert_eq!(d.bios_chain, dhcp::BiosChain::Undionly);
        assert_eq!(d.uefi_loader, dhcp::UefiLoader::SnpOnly);
        assert_eq!(d.subnets.len(), 2);
        assert_eq!(
            d.subnets[0].pools,
            vec![(Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 199))]
        );
        assert_eq!(d.reservations[0].loader, Some(dhcp::Loader::Undionly));

        // Proxy mode from a file with no subnet: the edge's own network is added.
        let proxy = "interface = \"br0\"\naddress = \"10.77.0.1/24\"\nimages = \"/i\"\n[dhcp]\nmode = \"proxy\"\n";
        let c = EdgeConfig::from_toml_str("edge.toml", proxy).unwrap();
        assert_eq!(c.dhcp.subnets.len(), 1);
        assert_eq!(c.dhcp.subnets[0].network.to_string(), "10.77.0.0/24");
        let d = c.dhcp_settings().unwrap();
        assert_eq!(d.mode, dhcp::DhcpMode::Proxy);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let text = format!("{GOOD}\n[extra]\nfoo = 1\n");
        let e = EdgeConfig::from_toml_str("edge.toml", &text).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }));
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(
            chain.starts_with("parsing config file edge.toml: "),
            "{chain}"
        );
        assert!(chain.contains("unknown field `extra`"), "{chain}");
        let typo = GOOD.replace("lease_time = 600", "lease_tim = 600");
        let e = EdgeConfig::from_toml_str("edge.toml", &typo).unwrap_err();
        let chain = format!("{}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("unknown field `lease_tim`"), "{chain}");
    }

    #[test]
    fn flags_only_form_works_without_a_file() {
        let flags = Flags::try_parse_from([
            "substruct-edge",
            "--interface",
            "br0",
            "--address",
            "10.77.0.1/24",
            "--pool",
            "10.77.0.100-10.77.0.199",
            "--images",
            "/srv/images",
        ])
        .unwrap();
        let c = flags.into_config().unwrap();
        assert_eq!(c.site.as_str(), DEFAULT_SITE);
        assert_eq!(c.interface, "br0");
        assert_eq!(c.dhcp.mode, DhcpMode::Server);
        assert_eq!(c.dhcp.subnets.len(), 1);
        assert_eq!(c.dhcp.subnets[0].network.to_string(), "10.77.0.0/24");
        assert_eq!(
            c.dhcp.subnets[0].pools,
            vec![Pool {
                start: Ipv4Addr::new(10, 77, 0, 100),
                end: Ipv4Addr::new(10, 77, 0, 199)
            }]
        );
        assert_eq!(c.nats_url, None);
        assert_eq!(c.http_port, 80);
        assert_eq!(c.dhcp.bios_chain, BiosChain::Pxelinux);
        assert_eq!(c.dhcp.subnets[0].router, None);
        assert!(c.dhcp.subnets[0].dns.is_empty());
        assert_eq!(c.js_domain, None);

        // Gateway, name servers and the hub's JetStream domain from flags.
        let c = Flags::try_parse_from([
            "substruct-edge",
            "--interface",
            "br0",
            "--address",
            "10.77.0.1/24",
            "--pool",
            "10.77.0.100-10.77.0.199",
            "--images",
            "/srv/images",
            "--router",
            "10.77.0.254",
            "--dns",
            "10.77.0.53",
            "--dns",
            "10.77.0.54",
            "--js-domain",
            "hub",
            "--image-cache-mb",
            "64",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(c.dhcp.subnets.len(), 1);
        assert_eq!(
            c.dhcp.subnets[0].router,
            Some(Ipv4Addr::new(10, 77, 0, 254))
        );
        assert_eq!(
            c.dhcp.subnets[0].dns,
            vec![Ipv4Addr::new(10, 77, 0, 53), Ipv4Addr::new(10, 77, 0, 54)]
        );
        assert_eq!(c.js_domain.as_deref(), Some("hub"));
        assert_eq!(c.image_cache_bytes, 64 << 20);
        let bad = Flags::try_parse_from([
            "substruct-edge",
            "--interface",
            "br0",
            "--address",
            "10.77.0.1/24",
            "--images",
            "/srv/images",
            "--router",
            "not-an-ip",
        ])
        .unwrap()
        .into_config()
        .unwrap_err()
        .to_string();
        assert!(bad.contains("router"), "{bad}");

        let all = Flags::try_parse_from([
            "substruct-edge",
            "--interface",
            "br0",
            "--address",
            "10.77.0.1/24",
            "--pool",
            "10.77.0.100-10.77.0.199",
            "--images",
            "/srv/images",
            "--nats",
            "nats://127.0.0.1:4222",
            "--site",
            "lab",
            "--proxy-dhcp",
            "--bios-chain",
            "undionly",
            "--http-port",
            "8080",
            "--state-dir",
            "/tmp/st",
            "--prospector-nats",
            "nats://10.77.0.1:4333",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(all.site.as_str(), "lab");
        assert_eq!(all.dhcp.mode, DhcpMode::Proxy);
        assert!(all.dhcp.subnets[0].pools.is_empty());
        assert_eq!(all.dhcp.bios_chain, BiosChain::Undionly);
        assert_eq!(all.http_base(), "http://10.77.0.1:8080");
        assert_eq!(all.state_dir, PathBuf::from("/tmp/st"));
        assert_eq!(all.prospector_nats, "nats://10.77.0.1:4333");
        assert_eq!(all.nats_url.as_deref(), Some("nats://127.0.0.1:4222"));
    }

    #[test]
    fn flags_override_the_file() {
        let src = Sourced {
            file: "edge.toml".into(),
            raw: toml::from_str(GOOD).unwrap(),
        };
        let flags = Flags::try_parse_from([
            "substruct-edge",
            "--site",
            "s2",
            "--pool",
            "10.77.0.150-10.77.0.160",
            "--http-port",
            "8081",
        ])
        .unwrap();
        let c = EdgeConfig::try_from(flags.apply(src)).unwrap();
        assert_eq!(c.site.as_str(), "s2");
        assert_eq!(c.http_port, 8081);
        assert_eq!(c.dhcp.subnets.len(), 2);
        assert_eq!(
            c.dhcp.subnets[0].pools[0].to_string(),
            "10.77.0.150-10.77.0.160"
        );
        // Untouched file values stay.
        assert_eq!(c.dhcp.subnets[0].router, Some(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(c.dhcp.bios_chain, BiosChain::Undionly);
    }

    #[test]
    fn flag_errors_name_the_command_line() {
        let e = Flags::try_parse_from([
            "substruct-edge",
            "--interface",
            "br0",
            "--address",
            "10.77.0.1/24",
            "--pool",
            "10.77.0.200-10.77.0.100",
            "--images",
            "/i",
        ])
        .unwrap()
        .into_config()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line: dhcp.subnets[0].pools[0]: 10.77.0.200-10.77.0.100 start is after end"
        );
    }
}
