//! The DHCP settings of one site — the only definition of them: the config module
//! builds a [`DhcpConfig`] from the TOML file and the flags, and [`super::core::decide`]
//! reads the [`DhcpSettings`] that [`DhcpSettings::new`] makes of it after validating
//! it, once. Every refusal ([`SettingsError`]) names the field as the edge's TOML file
//! spells it (`dhcp.subnets[1].pools[0]`, `address` for [`DhcpConfig::server_ip`]).
//!
//! The operator-facing names of the choices (`server`/`proxy`, `pxelinux`/`undionly`,
//! `ipxe`/`snponly`) are the `clap::ValueEnum` names of [`DhcpMode`], [`BiosChain`]
//! and [`UefiLoader`]; the config file and the command line both read them from there.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::time::Duration;

use ipnet::Ipv4Net;
use substruct_wire::Mac;

mod error;
mod validate;

pub use error::SettingsError;

/// Full DHCP server, or ProxyDHCP beside the site's own DHCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DhcpMode {
    /// A full DHCP server: addresses from pools and reservations, plus boot information.
    #[default]
    Server,
    /// ProxyDHCP beside an existing DHCP server: boot information only (ports 67 and
    /// 4011). Never hands out addresses.
    Proxy,
}

/// First stage for legacy BIOS PXE clients (option 93 = 0). With `pxelinux`, every
/// BIOS client gets `lpxelinux.0` over TFTP, even an iPXE ROM (pxelinux then chains
/// `ipxe.lkrn`); with `undionly`, iPXE clients get the script URL instead.
///
/// The variants' doc comments are the `--bios-chain` help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BiosChain {
    /// `lpxelinux.0`, whose generated `pxelinux.cfg/default` chainloads `ipxe.lkrn` over HTTP.
    #[default]
    Pxelinux,
    /// `undionly.kpxe` (iPXE on the ROM's UNDI driver).
    Undionly,
}

/// First stage (an iPXE build) for UEFI x64 PXE clients (option 93 = 7 or 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UefiLoader {
    /// `ipxe.efi` (iPXE's own NIC drivers).
    #[default]
    #[value(name = "ipxe")]
    IpxeEfi,
    /// `snponly.efi` (the firmware's SNP driver).
    #[value(name = "snponly")]
    SnpOnly,
    /// `shimx64.efi`: Debian's shim signed by Microsoft, then Debian's signed GRUB with a
    /// config the edge renders (UEFI Secure Boot; iPXE is not signed).
    #[value(name = "shim")]
    Shim,
}

/// A per-machine first-stage override (a reservation's `loader`): a BIOS loader
/// applies to BIOS requests of that MAC, a UEFI loader to UEFI x64 requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// Replaces the site's [`DhcpConfig::bios_chain`] for this MAC.
    Bios(BiosChain),
    /// Replaces the site's [`DhcpConfig::uefi_loader`] for this MAC.
    Uefi(UefiLoader),
}

/// One IPv4 network the edge serves (directly or through relays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Net,
    /// Inclusive address ranges handed out dynamically.
    pub pools: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_time: Duration,
    /// The relay agents allowed to forward requests for this subnet (the source
    /// address of their packets). Empty: a relayed request is taken only when its
    /// source address is its `giaddr` (see [`Subnet::accepts_relay`]).
    pub relays: Vec<Ipv4Addr>,
    /// This subnet's UEFI x64 loader instead of the site's [`DhcpConfig::uefi_loader`]
    /// (a reservation's `loader` still wins): e.g. `shim` on a Secure Boot rack's VLAN.
    pub uefi_loader: Option<UefiLoader>,
}

impl Subnet {
    /// May a relayed request with this `giaddr`, arriving from `source`, draw from
    /// this subnet (the one holding `giaddr`)? With `relays` listed: only when `source`
    /// is one of them. Without: only when `source` is `giaddr` itself (a relay that
    /// sends from another address, as ISC dhcrelay does from its upstream interface,
    /// must be listed).
    pub fn accepts_relay(&self, giaddr: Ipv4Addr, source: Ipv4Addr) -> bool {
        if self.relays.is_empty() {
            source == giaddr
        } else {
            self.relays.contains(&source)
        }
    }

    /// How many addresses the pools hold.
    pub fn pool_size(&self) -> u64 {
        self.pools
            .iter()
            .map(|(s, e)| u64::from(u32::from(*e)).saturating_sub(u64::from(u32::from(*s))) + 1)
            .sum()
    }
}

/// A fixed entry for one MAC: an address and/or a host name and/or a loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: Mac,
    pub ip: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub loader: Option<Loader>,
}

/// The unvalidated settings, field by field. Turn it into [`DhcpSettings`] with
/// [`DhcpSettings::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The edge's address on this network: siaddr / next-server and option 54.
    pub server_ip: Ipv4Addr,
    pub mode: DhcpMode,
    pub subnets: Vec<Subnet>,
    pub reservations: Vec<Reservation>,
    pub bios_chain: BiosChain,
    pub uefi_loader: UefiLoader,
    /// e.g. `http://10.77.0.1`: iPXE gets `{http_base}/boot.ipxe`, HTTP-boot
    /// firmware `{http_base}/ipxe.efi`.
    pub http_base: String,
    /// e.g. `https://10.77.0.1`: where UEFI HTTP-boot firmware fetches its loader
    /// instead of `http_base` (the edge serves HTTPS). iPXE keeps `http_base`: Debian's
    /// iPXE has no TLS.
    pub http_boot_base: Option<String>,
    /// An IPv6-only site: the edge serves no DHCPv4, so no pool is needed.
    pub no_dhcp4: bool,
}

impl DhcpConfig {
    /// A config with one subnet and no reservations; adjust the fields as needed.
    pub fn new(server_ip: Ipv4Addr, http_base: impl Into<String>, subnet: Subnet) -> Self {
        Self {
            server_ip,
            mode: DhcpMode::Server,
            subnets: vec![subnet],
            reservations: Vec::new(),
            bios_chain: BiosChain::default(),
            uefi_loader: UefiLoader::default(),
            http_base: http_base.into(),
            http_boot_base: None,
            no_dhcp4: false,
        }
    }
}

/// The shortest lease a subnet may hand out.
pub const MIN_LEASE_SECS: u64 = 60;
/// The longest lease a subnet may hand out (2^31 - 1 s: clients that read option 51
/// as a signed number still see it positive).
pub const MAX_LEASE_SECS: u64 = i32::MAX as u64;

/// Validated, indexed DHCP settings. Read the fields through `Deref` to
/// [`DhcpConfig`]; build with [`DhcpSettings::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpSettings {
    config: DhcpConfig,
    reservation_by_mac: HashMap<Mac, usize>,
    reserved_ips: HashSet<Ipv4Addr>,
    script_url: String,
    http_boot_url: String,
    arm64_http_url: String,
    local_boot_url: String,
}

impl Deref for DhcpSettings {
    type Target = DhcpConfig;
    fn deref(&self) -> &DhcpConfig {
        &self.config
    }
}

/// The longest file name the BOOTP `file` field can carry with its NUL.
pub const MAX_FILE_LEN: usize = 127;

impl DhcpSettings {
    /// Validates `config` (the one place DHCP settings are checked) and indexes it.
    /// In proxy mode the pools are checked and then dropped: a ProxyDHCP server hands
    /// out no addresses.
    pub fn new(mut config: DhcpConfig) -> Result<Self, SettingsError> {
        validate::validate(&config)?;
        if config.mode == DhcpMode::Proxy {
            for subnet in &mut config.subnets {
                subnet.pools.clear();
            }
        }
        let mut reservation_by_mac = HashMap::new();
        let mut reserved_ips = HashSet::new();
        for (i, r) in config.reservations.iter().enumerate() {
            reservation_by_mac.insert(r.mac, i);
            if let Some(ip) = r.ip {
                reserved_ips.insert(ip);
            }
        }
        let script_url = format!("{}/boot.ipxe", config.http_base);
        let boot_base = config.http_boot_base.as_ref().unwrap_or(&config.http_base);
        let http_boot_url = format!("{boot_base}/ipxe.efi");
        let arm64_http_url = format!("{boot_base}/ipxe-arm64.efi");
        let local_boot_url = format!("{boot_base}/{}", crate::dhcp::core::LOCAL_BOOT_FILE);
        Ok(Self {
            config,
            reservation_by_mac,
            reserved_ips,
            script_url,
            http_boot_url,
            arm64_http_url,
            local_boot_url,
        })
    }

    /// The settings as validated.
    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    pub fn reservation(&self, mac: &Mac) -> Option<&Reservation> {
        self.reservation_by_mac
            .get(mac)
            .and_then(|i| self.config.reservations.get(*i))
    }

    /// True when `ip` is some reservation's fixed address (never handed out dynamically).
    pub fn is_reserved_ip(&self, ip: Ipv4Addr) -> bool {
        self.reserved_ips.contains(&ip)
    }

    /// `{http_base}/boot.ipxe`
    pub fn script_url(&self) -> &str {
        &self.script_url
    }

    /// `{http_boot_base or http_base}/ipxe.efi`
    pub fn http_boot_url(&self) -> &str {
        &self.http_boot_url
    }

    /// `{http_boot_base or http_base}/ipxe-arm64.efi`
    pub fn arm64_http_boot_url(&self) -> &str {
        &self.arm64_http_url
    }

    /// `{http_boot_base or http_base}/substruct-local-boot.efi`, never served: a
    /// deployed UEFI HTTP-boot client's way to its disk.
    pub fn local_boot_url(&self) -> &str {
        &self.local_boot_url
    }

    /// The subnet serving a request: the one containing `giaddr` when relayed,
    /// else the one containing `server_ip`.
    pub fn subnet_for(&self, giaddr: Ipv4Addr) -> Option<(usize, &Subnet)> {
        let probe = if giaddr.is_unspecified() {
            self.config.server_ip
        } else {
            giaddr
        };
        self.config
            .subnets
            .iter()
            .enumerate()
            .find(|(_, s)| s.network.contains(&probe))
    }
}
