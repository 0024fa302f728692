//! [`SettingsError`]: why a [`DhcpConfig`] was refused, with the field named as the
//! edge's TOML file spells it.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use substruct_wire::Mac;

#[cfg(doc)]
use super::DhcpConfig;
use super::{MAX_FILE_LEN, MAX_LEASE_SECS, MIN_LEASE_SECS};

/// Why a [`DhcpConfig`] was refused. [`SettingsError::field`] names the field as in the
/// edge's TOML file, [`SettingsError::problem`] says what is wrong with it; `Display`
/// shows both (`dhcp.subnets[0].pools[1]: 10.9.0.5-10.9.0.1 start is after end`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsError {
    /// Server mode and not a single pool address to hand out.
    NoPool,
    /// A subnet's network has host bits set.
    NotNetworkAddress {
        subnet: usize,
        network: Ipv4Net,
    },
    PoolReversed {
        subnet: usize,
        pool: usize,
        start: Ipv4Addr,
        end: Ipv4Addr,
    },
    PoolOutsideSubnet {
        subnet: usize,
        pool: usize,
        start: Ipv4Addr,
        end: Ipv4Addr,
        network: Ipv4Net,
    },
    PoolHasNetworkOrBroadcast {
        subnet: usize,
        pool: usize,
        start: Ipv4Addr,
        end: Ipv4Addr,
        network: Ipv4Net,
    },
    /// Two pools of one subnet share addresses (`other_pool` is the earlier one).
    PoolOverlap {
        subnet: usize,
        pool: usize,
        start: Ipv4Addr,
        end: Ipv4Addr,
        other_pool: usize,
    },
    /// Server mode and a pool holds the server's own address.
    PoolHasServer {
        subnet: usize,
        pool: usize,
        start: Ipv4Addr,
        end: Ipv4Addr,
        server: Ipv4Addr,
    },
    SubnetOverlap {
        subnet: usize,
        network: Ipv4Net,
        other: usize,
    },
    RouterOutsideSubnet {
        subnet: usize,
        router: Ipv4Addr,
        network: Ipv4Net,
    },
    /// Outside [`MIN_LEASE_SECS`]`..=`[`MAX_LEASE_SECS`].
    LeaseTime {
        subnet: usize,
        secs: u64,
    },
    /// Server mode and the server's address is in none of the subnets.
    ServerIpOutsideSubnets(Ipv4Addr),
    ServerIpInvalid(Ipv4Addr),
    ReservationBadMac {
        index: usize,
        mac: Mac,
    },
    ReservationDuplicateMac {
        index: usize,
        mac: Mac,
        other: usize,
    },
    /// The address is in no subnet.
    ReservationOutsideSubnets {
        index: usize,
        ip: Ipv4Addr,
    },
    /// The address is the network or broadcast address of `network`.
    ReservationNotHost {
        index: usize,
        ip: Ipv4Addr,
        network: Ipv4Net,
    },
    ReservationIsServer {
        index: usize,
        ip: Ipv4Addr,
    },
    ReservationDuplicateIp {
        index: usize,
        ip: Ipv4Addr,
        other: usize,
    },
    ReservationHostname {
        index: usize,
        hostname: String,
    },
    HttpBaseScheme(String),
    HttpBaseTooLong(String),
    HttpBootBase(String),
}

impl SettingsError {
    /// The refused field, as the edge's TOML file names it.
    pub fn field(&self) -> String {
        use SettingsError as E;
        let subnet = |i: &usize| format!("dhcp.subnets[{i}]");
        let reservation = |i: &usize| format!("dhcp.reservations[{i}]");
        match self {
            E::NoPool => "dhcp.subnets".to_owned(),
            E::NotNetworkAddress { subnet: i, .. } | E::SubnetOverlap { subnet: i, .. } => {
                format!("{}.network", subnet(i))
            }
            E::PoolReversed {
                subnet: i, pool, ..
            }
            | E::PoolOutsideSubnet {
                subnet: i, pool, ..
            }
            | E::PoolHasNetworkOrBroadcast {
                subnet: i, pool, ..
            }
            | E::PoolOverlap {
                subnet: i, pool, ..
            }
            | E::PoolHasServer {
                subnet: i, pool, ..
            } => format!("{}.pools[{pool}]", subnet(i)),
            E::RouterOutsideSubnet { subnet: i, .. } => format!("{}.router", subnet(i)),
            E::LeaseTime { subnet: i, .. } => format!("{}.lease_time", subnet(i)),
            E::ServerIpOutsideSubnets(_) | E::ServerIpInvalid(_) => "address".to_owned(),
            E::ReservationBadMac { index, .. } | E::ReservationDuplicateMac { index, .. } => {
                format!("{}.mac", reservation(index))
            }
            E::ReservationOutsideSubnets { index, .. }
            | E::ReservationNotHost { index, .. }
            | E::ReservationIsServer { index, .. }
            | E::ReservationDuplicateIp { index, .. } => format!("{}.ip", reservation(index)),
            E::ReservationHostname { index, .. } => format!("{}.hostname", reservation(index)),
            E::HttpBaseScheme(_) | E::HttpBaseTooLong(_) => "dhcp.http_base".to_owned(),
            E::HttpBootBase(_) => "https_port".to_owned(),
        }
    }

    /// What is wrong with [`Self::field`].
    pub fn problem(&self) -> String {
        use SettingsError as E;
        let pool = |start: &Ipv4Addr, end: &Ipv4Addr| format!("{start}-{end}");
        match self {
            E::NoPool => {
                "server mode needs at least one pool (dhcp.subnets[].pools or --pool)".to_owned()
            }
            E::NotNetworkAddress { network, .. } => format!(
                "{network} is not a network address (did you mean {}?)",
                network.trunc()
            ),
            E::PoolReversed { start, end, .. } => {
                format!("{} start is after end", pool(start, end))
            }
            E::PoolOutsideSubnet {
                start,
                end,
                network,
                ..
            } => format!("{} is not inside {network}", pool(start, end)),
            E::PoolHasNetworkOrBroadcast {
                start,
                end,
                network,
                ..
            } => format!(
                "{} includes the network or broadcast address of {network}",
                pool(start, end)
            ),
            E::PoolOverlap {
                subnet,
                start,
                end,
                other_pool,
                ..
            } => format!(
                "{} overlaps dhcp.subnets[{subnet}].pools[{other_pool}]",
                pool(start, end)
            ),
            E::PoolHasServer {
                start, end, server, ..
            } => format!(
                "{} includes the edge's own address {server}",
                pool(start, end)
            ),
            E::SubnetOverlap { network, other, .. } => {
                format!("{network} overlaps dhcp.subnets[{other}]")
            }
            E::RouterOutsideSubnet {
                router, network, ..
            } => format!("{router} is not inside {network}"),
            E::LeaseTime { secs, .. } => {
                format!("{secs} s is outside {MIN_LEASE_SECS} s ..= {MAX_LEASE_SECS} s")
            }
            E::ServerIpOutsideSubnets(ip) => {
                format!("{ip} is not inside any dhcp.subnets[].network (required in server mode)")
            }
            E::ServerIpInvalid(ip) => format!("{ip} is not a unicast address"),
            E::ReservationBadMac { mac, .. } => {
                format!("{mac} is a broadcast, multicast or all-zero address")
            }
            E::ReservationDuplicateMac { mac, other, .. } => {
                format!("{mac} is already reserved by dhcp.reservations[{other}]")
            }
            E::ReservationOutsideSubnets { ip, .. } => {
                format!("{ip} is not inside any dhcp.subnets[].network")
            }
            E::ReservationNotHost { ip, network, .. } => {
                format!("{ip} is the network or broadcast address of {network}")
            }
            E::ReservationIsServer { ip, .. } => format!("{ip} is the edge's own address"),
            E::ReservationDuplicateIp { ip, other, .. } => {
                format!("{ip} is already reserved by dhcp.reservations[{other}]")
            }
            E::ReservationHostname { hostname, .. } => {
                format!("{hostname:?} is not a host name (letters, digits, '-', at most 63)")
            }
            E::HttpBaseScheme(base) => {
                format!("{base:?} must start with http:// and not end with /")
            }
            E::HttpBaseTooLong(base) => format!(
                "{base:?} is too long: boot URLs must fit the {MAX_FILE_LEN}-byte BOOTP file field"
            ),
            E::HttpBootBase(base) => format!(
                "{base:?} must start with https://, not end with /, and fit the \
                 {MAX_FILE_LEN}-byte BOOTP file field with /ipxe-arm64.efi"
            ),
        }
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field(), self.problem())
    }
}

impl std::error::Error for SettingsError {}
