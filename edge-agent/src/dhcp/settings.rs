//! The validated DHCP settings of one site: what the config module builds from TOML
//! and flags, and what [`super::core::decide`] reads. Build a [`DhcpConfig`] (plain
//! public fields), then [`DhcpSettings::new`] validates it once and indexes it.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::time::Duration;

use ipnet::Ipv4Net;
use substruct_wire::Mac;

/// Full DHCP server, or ProxyDHCP beside the site's own DHCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DhcpMode {
    #[default]
    Server,
    /// Never hands out addresses; answers PXE clients with boot information only.
    Proxy,
}

/// First stage for legacy BIOS PXE clients (option 93 = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BiosChain {
    /// `lpxelinux.0` over TFTP, always, even to iPXE ROMs (pxelinux then chains `ipxe.lkrn`).
    #[default]
    Pxelinux,
    /// `undionly.kpxe` to plain PXE ROMs; iPXE clients get the script URL.
    Undionly,
}

/// First stage for UEFI x64 PXE clients (option 93 = 7 or 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UefiLoader {
    #[default]
    IpxeEfi,
    SnpOnly,
}

/// A per-machine first-stage override (a reservation's `loader`). A BIOS loader
/// applies to BIOS requests of that MAC, a UEFI loader to UEFI x64 requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    Pxelinux,
    Undionly,
    IpxeEfi,
    SnpOnly,
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
        }
    }
}

/// Why a [`DhcpConfig`] was refused. Each variant names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("dhcp.subnets: at least one subnet is required in server mode")]
    NoSubnet,
    #[error("dhcp.subnets[{subnet}].pools[{pool}]: start {start} is after end {end}")]
    PoolReversed {
        subnet: usize,
        pool: usize,
        start: Ipv4Addr,
        end: Ipv4Addr,
    },
    #[error("dhcp.subnets[{subnet}].pools[{pool}]: {start}-{end} is not inside {network} (network and broadcast addresses excluded)")]
    PoolOutsideSubnet {
        subnet: usize,
        pool: usize,
        start: Ipv4Addr,
        end: Ipv4Addr,
        network: Ipv4Net,
    },
    #[error(
        "dhcp.subnets[{subnet}].pools[{pool}] overlaps pool {other_pool} of subnet {other_subnet}"
    )]
    PoolOverlap {
        subnet: usize,
        pool: usize,
        other_subnet: usize,
        other_pool: usize,
    },
    #[error("dhcp.subnets[{subnet}].network {network} overlaps subnet {other}")]
    SubnetOverlap {
        subnet: usize,
        network: Ipv4Net,
        other: usize,
    },
    #[error("dhcp.subnets[{subnet}].router {router} is not inside {network}")]
    RouterOutsideSubnet {
        subnet: usize,
        router: Ipv4Addr,
        network: Ipv4Net,
    },
    #[error("dhcp.subnets[{subnet}].lease_time must be between 60 s and 2^31 s")]
    LeaseTime { subnet: usize },
    #[error("dhcp.server_ip {0} is not inside any subnet (required in server mode)")]
    ServerIpOutsideSubnets(Ipv4Addr),
    #[error("dhcp.server_ip must be a unicast address, not {0}")]
    ServerIpInvalid(Ipv4Addr),
    #[error("dhcp.reservations[{index}] ({mac}): {ip} is not inside any subnet")]
    ReservationOutsideSubnets {
        index: usize,
        mac: Mac,
        ip: Ipv4Addr,
    },
    #[error("dhcp.reservations[{index}] ({mac}): {ip} is the server's own address")]
    ReservationIsServer {
        index: usize,
        mac: Mac,
        ip: Ipv4Addr,
    },
    #[error("dhcp.reservations[{index}]: MAC {mac} is not a usable unicast address")]
    ReservationBadMac { index: usize, mac: Mac },
    #[error("dhcp.reservations[{index}]: MAC {mac} is reserved twice")]
    ReservationDuplicateMac { index: usize, mac: Mac },
    #[error("dhcp.reservations[{index}]: {ip} is reserved twice")]
    ReservationDuplicateIp { index: usize, ip: Ipv4Addr },
    #[error("dhcp.reservations[{index}].hostname {hostname:?} is not a valid host name")]
    ReservationHostname { index: usize, hostname: String },
    #[error("dhcp.http_base {0:?} must start with http:// and not end with /")]
    HttpBaseScheme(String),
    #[error("dhcp.http_base {0:?} is too long: boot URLs must fit the 127-byte BOOTP file field")]
    HttpBaseTooLong(String),
}

/// Validated, indexed DHCP settings. Read the fields through `Deref` to
/// [`DhcpConfig`]; build with [`DhcpSettings::new`].
#[derive(Debug, Clone)]
pub struct DhcpSettings {
    config: DhcpConfig,
    reservation_by_mac: HashMap<Mac, usize>,
    reserved_ips: HashSet<Ipv4Addr>,
    script_url: String,
    http_boot_url: String,
    arm64_http_url: String,
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
    pub fn new(config: DhcpConfig) -> Result<Self, SettingsError> {
        validate(&config)?;
        let mut reservation_by_mac = HashMap::new();
        let mut reserved_ips = HashSet::new();
        for (i, r) in config.reservations.iter().enumerate() {
            reservation_by_mac.insert(r.mac, i);
            if let Some(ip) = r.ip {
                reserved_ips.insert(ip);
            }
        }
        let script_url = format!("{}/boot.ipxe", config.http_base);
        let http_boot_url = format!("{}/ipxe.efi", config.http_base);
        let arm64_http_url = format!("{}/ipxe-arm64.efi", config.http_base);
        Ok(Self {
            config,
            reservation_by_mac,
            reserved_ips,
            script_url,
            http_boot_url,
            arm64_http_url,
        })
    }

    /// The settings as given.
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

    /// `{http_base}/ipxe.efi`
    pub fn http_boot_url(&self) -> &str {
        &self.http_boot_url
    }

    /// `{http_base}/ipxe-arm64.efi`
    pub fn arm64_http_boot_url(&self) -> &str {
        &self.arm64_http_url
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

fn usable_in(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && (net.prefix_len() >= 31 || (ip != net.network() && ip != net.broadcast()))
}

fn hostname_ok(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

fn validate(c: &DhcpConfig) -> Result<(), SettingsError> {
    if c.subnets.is_empty() && c.mode == DhcpMode::Server {
        return Err(SettingsError::NoSubnet);
    }
    let sip = c.server_ip;
    if sip.is_unspecified() || sip.is_broadcast() || sip.is_multicast() {
        return Err(SettingsError::ServerIpInvalid(sip));
    }
    if !c.http_base.starts_with("http://") || c.http_base.ends_with('/') {
        return Err(SettingsError::HttpBaseScheme(c.http_base.clone()));
    }
    // the longest URL we put into the file field is `{http_base}/ipxe-arm64.efi`
    if c.http_base.len() + "/ipxe-arm64.efi".len() > MAX_FILE_LEN {
        return Err(SettingsError::HttpBaseTooLong(c.http_base.clone()));
    }
    for (i, s) in c.subnets.iter().enumerate() {
        let secs = s.lease_time.as_secs();
        if !(60..=i32::MAX as u64).contains(&secs) {
            return Err(SettingsError::LeaseTime { subnet: i });
        }
        if let Some(router) = s.router {
            if !s.network.contains(&router) {
                return Err(SettingsError::RouterOutsideSubnet {
                    subnet: i,
                    router,
                    network: s.network,
                });
            }
        }
        for (j, other) in c.subnets.iter().enumerate().take(i) {
            if other.network.contains(&s.network.network())
                || s.network.contains(&other.network.network())
            {
                return Err(SettingsError::SubnetOverlap {
                    subnet: i,
                    network: s.network,
                    other: j,
                });
            }
        }
        for (p, &(start, end)) in s.pools.iter().enumerate() {
            if u32::from(start) > u32::from(end) {
                return Err(SettingsError::PoolReversed {
                    subnet: i,
                    pool: p,
                    start,
                    end,
                });
            }
            if !usable_in(&s.network, start) || !usable_in(&s.network, end) {
                return Err(SettingsError::PoolOutsideSubnet {
                    subnet: i,
                    pool: p,
                    start,
                    end,
                    network: s.network,
                });
            }
            for (oi, os) in c.subnets.iter().enumerate() {
                for (op, &(ostart, oend)) in os.pools.iter().enumerate() {
                    if (oi, op) >= (i, p) {
                        continue;
                    }
                    let overlap =
                        u32::from(start) <= u32::from(oend) && u32::from(ostart) <= u32::from(end);
                    if overlap {
                        return Err(SettingsError::PoolOverlap {
                            subnet: i,
                            pool: p,
                            other_subnet: oi,
                            other_pool: op,
                        });
                    }
                }
            }
        }
    }
    if c.mode == DhcpMode::Server && !c.subnets.iter().any(|s| s.network.contains(&sip)) {
        return Err(SettingsError::ServerIpOutsideSubnets(sip));
    }
    let mut macs = HashSet::new();
    let mut ips = HashSet::new();
    for (index, r) in c.reservations.iter().enumerate() {
        if !r.mac.is_usable() {
            return Err(SettingsError::ReservationBadMac { index, mac: r.mac });
        }
        if !macs.insert(r.mac) {
            return Err(SettingsError::ReservationDuplicateMac { index, mac: r.mac });
        }
        if let Some(ip) = r.ip {
            if !c.subnets.iter().any(|s| usable_in(&s.network, ip)) {
                return Err(SettingsError::ReservationOutsideSubnets {
                    index,
                    mac: r.mac,
                    ip,
                });
            }
            if ip == sip {
                return Err(SettingsError::ReservationIsServer {
                    index,
                    mac: r.mac,
                    ip,
                });
            }
            if !ips.insert(ip) {
                return Err(SettingsError::ReservationDuplicateIp { index, ip });
            }
        }
        if let Some(h) = &r.hostname {
            if !hostname_ok(h) {
                return Err(SettingsError::ReservationHostname {
                    index,
                    hostname: h.clone(),
                });
            }
        }
    }
    Ok(())
}
