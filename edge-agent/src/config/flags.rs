//! The command line, and how it is laid over the file: a flag replaces the file's value;
//! `--pool`, `--router` and `--dns` set the subnet that holds `--address`.

use std::path::PathBuf;
use std::str::FromStr;

use ipnet::Ipv4Net;

use super::parse::{value_name, COMMAND_LINE};
use super::{ConfigError, EdgeConfig, RawConfig, RawSubnet, Sourced};
use crate::dhcp::{BiosChain, DhcpMode, UefiLoader};

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
    /// Log lines as `text` or `json` (one object per line), to stderr.
    #[arg(
        long,
        global = true,
        env = "SUBSTRUCT_LOG_FORMAT",
        default_value_t,
        value_name = "text|json"
    )]
    pub log_format: substruct_runtime::LogFormat,
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
    /// First-stage loader for UEFI x64 PXE clients (`shim`: the Secure Boot chain).
    #[arg(long, value_enum, value_name = "ipxe|snponly|shim")]
    pub uefi_loader: Option<UefiLoader>,
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
    /// Space in MiB the image cache leaves free on its filesystem (default 1024; 0: none).
    #[arg(long, value_name = "MIB")]
    pub image_cache_min_free_mb: Option<u64>,
    /// The hub's JetStream domain when --nats is a site leaf node (`hub` with deploy/nats/).
    #[arg(long, value_name = "DOMAIN")]
    pub js_domain: Option<String>,
    /// Most HTTP connections open at once (default 4096; `[http] max_connections`).
    #[arg(long, value_name = "N")]
    pub http_max_connections: Option<usize>,
    /// Most HTTP connections open at once from one address (default 32;
    /// `[http] max_connections_per_source`).
    #[arg(long, value_name = "N")]
    pub http_max_connections_per_source: Option<usize>,
    /// File holding the site's signing key seed (`SA…`, from `substruct-edge keygen FILE`):
    /// every boot script carries a credential signed with it.
    #[arg(long, value_name = "FILE")]
    pub site_key: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM; an RSA key, for UEFI firmware):
    /// UEFI HTTP-boot clients are then sent to `https://`.
    #[arg(long, value_name = "FILE", requires = "https_key")]
    pub https_cert: Option<PathBuf>,
    /// The HTTPS certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "https_cert")]
    pub https_key: Option<PathBuf>,
    /// HTTPS port (default 443).
    #[arg(long, value_name = "N")]
    pub https_port: Option<u16>,
    /// The edge's IPv6 address on the provisioning link (already configured on the
    /// interface, e.g. fd77::1): with --dhcp6-pool, DHCPv6, TFTP and HTTP are served on it.
    #[arg(long, value_name = "IPV6", requires = "dhcp6_pool")]
    pub ipv6_address: Option<String>,
    /// The DHCPv6 pool, START-END inside the /64 of --ipv6-address (at most 16,384).
    #[arg(long, value_name = "START-END", requires = "ipv6_address")]
    pub dhcp6_pool: Option<String>,
    /// Serve no DHCPv4: machines boot, fetch their scripts and report over IPv6 only
    /// (an IPv6-only provisioning link; needs --ipv6-address and --dhcp6-pool).
    #[arg(long, requires = "ipv6_address")]
    pub ipv6_only: bool,
    /// NATS URL prospectors on an IPv6-only site must use (default nats://[{ipv6-address}]:4222).
    #[arg(long, value_name = "URL")]
    pub prospector_nats6: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do instead of running the agent.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Make a new site signing key: writes its seed to FILE (mode 0600, never over an
    /// existing file) and prints the public key to register with
    /// `substruct sites add SITE --key PUBKEY`.
    Keygen {
        /// Where the seed goes (then pass it as --site-key).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the trust block of SITE's leaf-node config (operator mode: an operator made
    /// for this site alone, the site key's account, preloaded), for
    /// `deploy/nats/gen-site SITE --leaf-auth FILE`. The operator's seed is not kept.
    LeafAuth {
        /// The site id.
        #[arg(value_name = "SITE")]
        site: String,
        /// The site key's seed file (as for --site-key).
        #[arg(long, value_name = "FILE")]
        site_key: PathBuf,
    },
    /// Write the site's CA certificate(s) as UEFI firmware trusts them for HTTPS boot
    /// (EFI signature lists): QEMU/OVMF reads OUT with
    /// `-fw_cfg name=etc/edk2/https/cacerts,file=OUT`.
    EfiCacerts {
        /// The CA certificate(s), PEM.
        #[arg(value_name = "CA_PEM")]
        ca: PathBuf,
        /// Where the signature lists go.
        #[arg(value_name = "OUT")]
        out: PathBuf,
    },
}

impl Flags {
    /// Reads the file named by `--config` (if any), applies the flags over it and validates.
    pub fn into_config(self) -> Result<EdgeConfig, ConfigError> {
        let src = match &self.config {
            Some(path) => Sourced::read(path)?,
            None => Sourced {
                file: COMMAND_LINE.to_owned(),
                raw: RawConfig::default(),
            },
        };
        self.apply(src).try_into()
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
        over!(self.image_cache_min_free_mb, raw.image_cache_min_free_mb);
        over!(self.js_domain, raw.js_domain);
        over!(self.http_max_connections, raw.http.max_connections);
        over!(
            self.http_max_connections_per_source,
            raw.http.max_connections_per_source
        );
        over!(self.site_key, raw.site_key);
        over!(self.https_cert, raw.https_cert);
        over!(self.https_key, raw.https_key);
        over!(self.https_port, raw.https_port);
        over!(self.ipv6_address, raw.ipv6_address);
        over!(self.dhcp6_pool, raw.dhcp6_pool);
        over!(self.prospector_nats6, raw.prospector_nats6);
        if self.ipv6_only {
            raw.ipv6_only = Some(true);
        }
        if self.proxy_dhcp {
            over!(value_name(&DhcpMode::Proxy), raw.dhcp.mode);
        }
        over!(
            self.bios_chain.as_ref().and_then(value_name),
            raw.dhcp.bios_chain
        );
        over!(
            self.uefi_loader.as_ref().and_then(value_name),
            raw.dhcp.uefi_loader
        );
        if !self.pool.is_empty() || self.router.is_some() || !self.dns.is_empty() {
            let subnet = own_subnet(raw);
            if !self.pool.is_empty() {
                subnet.pools = self.pool;
            }
            over!(self.router, subnet.router);
            if !self.dns.is_empty() {
                subnet.dns = self.dns;
            }
        }
        src
    }
}

/// The file's subnet that holds `raw.address`, added (empty) when there is none.
fn own_subnet(raw: &mut RawConfig) -> &mut RawSubnet {
    let own = raw
        .address
        .as_deref()
        .and_then(|a| Ipv4Net::from_str(a).ok())
        .map(|n| n.trunc());
    let subnets = &mut raw.dhcp.subnets;
    let existing = subnets
        .iter()
        .position(|s| match (Ipv4Net::from_str(&s.network).ok(), own) {
            (Some(n), Some(own)) => n == own,
            _ => false,
        });
    let index = existing.unwrap_or_else(|| {
        subnets.push(RawSubnet {
            network: own.map(|n| n.to_string()).unwrap_or_default(),
            ..RawSubnet::default()
        });
        subnets.len() - 1
    });
    &mut subnets[index]
}
