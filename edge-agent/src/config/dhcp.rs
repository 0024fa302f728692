//! The `[dhcp]` table (with the flags already laid over it) into the DHCP module's
//! [`DhcpSettings`]: this module only reads text into typed values; every rule about
//! the values is [`DhcpSettings::new`]'s, checked there once, and its refusal is
//! reported with the file's name.

use std::str::FromStr;

use ipnet::Ipv4Net;
use substruct_wire::Mac;

use super::parse::{each, named, Ctx};
use super::{ConfigError, RawDhcp, RawReservation, RawSubnet, DEFAULT_LEASE_TIME};
use crate::dhcp::{BiosChain, DhcpConfig, DhcpSettings, Loader, Reservation, Subnet, UefiLoader};

/// The edge's own part of the DHCP settings: where it listens and what URLs it hands out.
pub(super) struct Own {
    /// The edge's address and prefix on the provisioning network.
    pub address: Ipv4Net,
    /// `http://ip[:port]`.
    pub http_base: String,
    /// `https://ip[:port]` when the edge serves HTTPS: UEFI HTTP boot goes there.
    pub http_boot_base: Option<String>,
    /// An IPv6-only site (`ipv6_only`): no DHCPv4 pool is needed.
    pub no_dhcp4: bool,
}

/// Reads `raw` and validates it. The edge's own network is always served: when no
/// subnet holds `own.address`, it is added (without pools).
pub(super) fn settings(
    ctx: &Ctx<'_>,
    raw: &RawDhcp,
    own: Own,
) -> Result<DhcpSettings, ConfigError> {
    let mode = ctx.choice("dhcp.mode", raw.mode.as_deref())?;
    let bios_chain = ctx.choice("dhcp.bios_chain", raw.bios_chain.as_deref())?;
    let uefi_loader = ctx.choice("dhcp.uefi_loader", raw.uefi_loader.as_deref())?;

    let mut subnets = each("dhcp.subnets", &raw.subnets, |at, s| subnet(ctx, at, s))?;
    if !subnets
        .iter()
        .any(|s| s.network.contains(&own.address.addr()))
    {
        subnets.push(Subnet {
            network: own.address.trunc(),
            pools: Vec::new(),
            router: None,
            dns: Vec::new(),
            lease_time: DEFAULT_LEASE_TIME,
            relays: Vec::new(),
            uefi_loader: None,
        });
    }
    let reservations = each("dhcp.reservations", &raw.reservations, |at, r| {
        reservation(ctx, at, r)
    })?;

    DhcpSettings::new(DhcpConfig {
        server_ip: own.address.addr(),
        mode: mode.unwrap_or_default(),
        subnets,
        reservations,
        bios_chain: bios_chain.unwrap_or_default(),
        uefi_loader: uefi_loader.unwrap_or_default(),
        http_base: own.http_base,
        http_boot_base: own.http_boot_base,
        no_dhcp4: own.no_dhcp4,
    })
    .map_err(|e| ctx.err(e.field(), e.problem()))
}

fn subnet(ctx: &Ctx<'_>, at: &str, raw: &RawSubnet) -> Result<Subnet, ConfigError> {
    let network = Ipv4Net::from_str(raw.network.trim()).map_err(|_| {
        ctx.err(
            format!("{at}.network"),
            format!("{:?} is not an IPv4 network (a.b.c.d/prefix)", raw.network),
        )
    })?;
    let pools = each(&format!("{at}.pools"), &raw.pools, |f, text| {
        ctx.pool(f, text)
    })?;
    let router = raw
        .router
        .as_deref()
        .map(|text| ctx.ip(&format!("{at}.router"), text))
        .transpose()?;
    let dns = each(&format!("{at}.dns"), &raw.dns, |f, text| ctx.ip(f, text))?;
    let relays = each(&format!("{at}.relays"), &raw.relays, |f, text| {
        ctx.ip(f, text)
    })?;
    let lease_time = match &raw.lease_time {
        None => DEFAULT_LEASE_TIME,
        Some(d) => ctx.duration(&format!("{at}.lease_time"), d)?,
    };
    let uefi_loader = ctx.choice(&format!("{at}.uefi_loader"), raw.uefi_loader.as_deref())?;
    Ok(Subnet {
        network,
        pools,
        router,
        dns,
        lease_time,
        relays,
        uefi_loader,
    })
}

fn reservation(ctx: &Ctx<'_>, at: &str, raw: &RawReservation) -> Result<Reservation, ConfigError> {
    let mac =
        Mac::parse(raw.mac.trim()).map_err(|e| ctx.err(format!("{at}.mac"), e.to_string()))?;
    let ip = raw
        .ip
        .as_deref()
        .map(|text| ctx.ip(&format!("{at}.ip"), text))
        .transpose()?;
    let loader = raw
        .loader
        .as_deref()
        .map(|text| ctx.one_of(&format!("{at}.loader"), text, &loaders()))
        .transpose()?;
    Ok(Reservation {
        mac,
        ip,
        hostname: raw.hostname.clone(),
        loader,
    })
}

/// A reservation's `loader`: any BIOS chain or UEFI loader, by the same names as
/// `dhcp.bios_chain` and `dhcp.uefi_loader`.
fn loaders() -> Vec<(String, Loader)> {
    let bios = named::<BiosChain>()
        .into_iter()
        .map(|(n, b)| (n, Loader::Bios(b)));
    let uefi = named::<UefiLoader>()
        .into_iter()
        .map(|(n, u)| (n, Loader::Uefi(u)));
    bios.chain(uefi).collect()
}
