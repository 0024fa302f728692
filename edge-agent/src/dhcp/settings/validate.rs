//! The rules a [`DhcpConfig`] must follow, checked once by [`super::DhcpSettings::new`].

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{
    DhcpConfig, DhcpMode, Reservation, SettingsError, Subnet, MAX_FILE_LEN, MAX_LEASE_SECS,
    MIN_LEASE_SECS,
};

/// A host address of `net`: inside it, and neither its network nor its broadcast
/// address (both are usable in /31 and /32).
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

/// Every rule, in the order an operator reads the file: subnets, the server, reservations.
pub(super) fn validate(c: &DhcpConfig) -> Result<(), SettingsError> {
    for (i, s) in c.subnets.iter().enumerate() {
        validate_subnet(c, i, s)?;
    }
    validate_server(c)?;
    for (index, r) in c.reservations.iter().enumerate() {
        validate_reservation(c, index, r)?;
    }
    Ok(())
}

/// Subnet `i` on its own and against the subnets before it.
fn validate_subnet(c: &DhcpConfig, i: usize, s: &Subnet) -> Result<(), SettingsError> {
    let network = s.network;
    if network.trunc() != network {
        return Err(SettingsError::NotNetworkAddress { subnet: i, network });
    }
    for (p, &(start, end)) in s.pools.iter().enumerate() {
        if start > end {
            return Err(SettingsError::PoolReversed {
                subnet: i,
                pool: p,
                start,
                end,
            });
        }
        if !network.contains(&start) || !network.contains(&end) {
            return Err(SettingsError::PoolOutsideSubnet {
                subnet: i,
                pool: p,
                start,
                end,
                network,
            });
        }
        if !usable_in(&network, start) || !usable_in(&network, end) {
            return Err(SettingsError::PoolHasNetworkOrBroadcast {
                subnet: i,
                pool: p,
                start,
                end,
                network,
            });
        }
        // Within the subnet only: pools lie inside their subnets, and subnets may not overlap.
        let overlap = s.pools[..p]
            .iter()
            .position(|&(ostart, oend)| start <= oend && ostart <= end);
        if let Some(other_pool) = overlap {
            return Err(SettingsError::PoolOverlap {
                subnet: i,
                pool: p,
                start,
                end,
                other_pool,
            });
        }
    }
    if let Some(router) = s.router {
        if !network.contains(&router) {
            return Err(SettingsError::RouterOutsideSubnet {
                subnet: i,
                router,
                network,
            });
        }
    }
    let secs = s.lease_time.as_secs();
    if !(MIN_LEASE_SECS..=MAX_LEASE_SECS).contains(&secs) {
        return Err(SettingsError::LeaseTime { subnet: i, secs });
    }
    let overlapping = c.subnets[..i]
        .iter()
        .position(|o| o.network.contains(&network) || network.contains(&o.network));
    if let Some(other) = overlapping {
        return Err(SettingsError::SubnetOverlap {
            subnet: i,
            network,
            other,
        });
    }
    if c.mode == DhcpMode::Server {
        let own = s
            .pools
            .iter()
            .position(|&(start, end)| start <= c.server_ip && c.server_ip <= end);
        if let Some(p) = own {
            let (start, end) = s.pools[p];
            return Err(SettingsError::PoolHasServer {
                subnet: i,
                pool: p,
                start,
                end,
                server: c.server_ip,
            });
        }
    }
    Ok(())
}

/// The server's own address, the pools as a whole and the boot URL base.
fn validate_server(c: &DhcpConfig) -> Result<(), SettingsError> {
    let sip = c.server_ip;
    if c.mode == DhcpMode::Server && !c.no_dhcp4 && c.subnets.iter().all(|s| s.pools.is_empty()) {
        return Err(SettingsError::NoPool);
    }
    if sip.is_unspecified() || sip.is_broadcast() || sip.is_multicast() {
        return Err(SettingsError::ServerIpInvalid(sip));
    }
    if c.mode == DhcpMode::Server && !c.subnets.iter().any(|s| s.network.contains(&sip)) {
        return Err(SettingsError::ServerIpOutsideSubnets(sip));
    }
    if !c.http_base.starts_with("http://") || c.http_base.ends_with('/') {
        return Err(SettingsError::HttpBaseScheme(c.http_base.clone()));
    }
    // the longest URL we put into the file field is `{http_base}/ipxe-arm64.efi`
    if c.http_base.len() + "/ipxe-arm64.efi".len() > MAX_FILE_LEN {
        return Err(SettingsError::HttpBaseTooLong(c.http_base.clone()));
    }
    if let Some(base) = &c.http_boot_base {
        if !base.starts_with("https://")
            || base.ends_with('/')
            || base.len() + "/ipxe-arm64.efi".len() > MAX_FILE_LEN
        {
            return Err(SettingsError::HttpBootBase(base.clone()));
        }
    }
    Ok(())
}

/// Reservation `index` on its own and against the reservations before it.
fn validate_reservation(
    c: &DhcpConfig,
    index: usize,
    r: &Reservation,
) -> Result<(), SettingsError> {
    let earlier = &c.reservations[..index];
    if !r.mac.is_usable() {
        return Err(SettingsError::ReservationBadMac { index, mac: r.mac });
    }
    if let Some(ip) = r.ip {
        match c.subnets.iter().find(|s| s.network.contains(&ip)) {
            None => return Err(SettingsError::ReservationOutsideSubnets { index, ip }),
            Some(s) if !usable_in(&s.network, ip) => {
                return Err(SettingsError::ReservationNotHost {
                    index,
                    ip,
                    network: s.network,
                })
            }
            Some(_) => {}
        }
        if ip == c.server_ip {
            return Err(SettingsError::ReservationIsServer { index, ip });
        }
        if let Some(other) = earlier.iter().position(|o| o.ip == Some(ip)) {
            return Err(SettingsError::ReservationDuplicateIp { index, ip, other });
        }
    }
    if let Some(other) = earlier.iter().position(|o| o.mac == r.mac) {
        return Err(SettingsError::ReservationDuplicateMac {
            index,
            mac: r.mac,
            other,
        });
    }
    if let Some(h) = &r.hostname {
        if !hostname_ok(h) {
            return Err(SettingsError::ReservationHostname {
                index,
                hostname: h.clone(),
            });
        }
    }
    Ok(())
}
