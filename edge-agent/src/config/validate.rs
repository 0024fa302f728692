//! A [`Sourced`] raw config into the validated [`EdgeConfig`]: the edge's own fields
//! here, one small check each; the `[dhcp]` table in `super::dhcp`.

use std::path::PathBuf;
use std::str::FromStr;

use ipnet::Ipv4Net;
use substruct_wire::{NatsUrl, SiteId};

use super::dhcp::{self, Own};
use super::parse::Ctx;
use super::{
    http_base, ConfigError, EdgeConfig, Sourced, DEFAULT_IMAGE_CACHE_MB,
    DEFAULT_IMAGE_CACHE_MIN_FREE_MB, DEFAULT_IPXE_DIR, DEFAULT_SITE, DEFAULT_STATE_DIR,
};
use crate::http::limits::HttpLimits;
use crate::tftp::TftpSettings;

impl TryFrom<Sourced> for EdgeConfig {
    type Error = ConfigError;

    fn try_from(src: Sourced) -> Result<Self, ConfigError> {
        let ctx = Ctx { file: &src.file };
        let raw = src.raw;

        let site = SiteId::new(raw.site.as_deref().unwrap_or(DEFAULT_SITE))
            .map_err(|e| ctx.err("site", e.to_string()))?;
        let interface = interface(&ctx, raw.interface)?;
        let address = address(&ctx, raw.address)?;
        let http_port = raw.http_port.unwrap_or(80);
        if http_port == 0 {
            return Err(ctx.err("http_port", "0 is not a port"));
        }
        let images_dir = raw
            .images
            .ok_or_else(|| ctx.err("images", "missing (set it or pass --images)"))?;
        let nats_url = raw
            .nats
            .map(|url| parse_nats_url(&ctx, "nats", url))
            .transpose()?;
        let prospector_nats = raw
            .prospector_nats
            .unwrap_or_else(|| format!("nats://{}:4222", address.addr()));
        let prospector_nats = parse_nats_url(&ctx, "prospector_nats", prospector_nats)?;
        let extra_kernel_args = extra_kernel_args(&ctx, raw.extra_kernel_args)?;
        let https = https(
            &ctx,
            raw.https_port,
            raw.https_cert,
            raw.https_key,
            http_port,
        )?;
        let own = Own {
            address,
            http_base: http_base(address.addr(), http_port),
            http_boot_base: https.as_ref().map(|h| https_base(address.addr(), h.port)),
            no_dhcp4: raw.ipv6_only == Some(true),
        };
        let dhcp = dhcp::settings(&ctx, &raw.dhcp, own)?;
        let mut dhcp6 = dhcp6(
            &ctx,
            raw.ipv6_address,
            raw.dhcp6_pool,
            dhcp.uefi_loader,
            http_port,
        )?
        .map(|d| d.with_https_port(https.as_ref().map(|h| h.port)));
        if raw.ipv6_only == Some(true) {
            match &mut dhcp6 {
                Some(d) => d.ipv6_only = true,
                None => {
                    return Err(ctx.err(
                        "ipv6_only",
                        "needs ipv6_address and dhcp6_pool (DHCPv6 is the only DHCP then)",
                    ))
                }
            }
            if dhcp.mode == crate::dhcp::DhcpMode::Proxy {
                return Err(ctx.err(
                    "ipv6_only",
                    "cannot go with ProxyDHCP (there is no DHCPv4 to stand beside)",
                ));
            }
        }
        // Only an IPv6-only site tells prospectors IPv6 URLs: on a dual-stack one they
        // get an IPv4 lease and the IPv4 URLs, whichever way their loader came.
        let only6 = dhcp6.as_ref().filter(|d| d.ipv6_only);
        let prospector_nats6 = match (only6, raw.prospector_nats6) {
            (None, Some(_)) => {
                return Err(ctx.err(
                    "prospector_nats6",
                    "only an IPv6-only site uses it (ipv6_only = true)",
                ))
            }
            (None, None) => None,
            (Some(_), Some(url)) => Some(parse_nats_url(&ctx, "prospector_nats6", url)?),
            (Some(d), None) => Some(parse_nats_url(
                &ctx,
                "prospector_nats6",
                format!("nats://[{}]:4222", d.address),
            )?),
        };

        Ok(EdgeConfig {
            site,
            nats_url,
            interface,
            address,
            http_port,
            https,
            tftp: raw.tftp.unwrap_or(true),
            tftp_limits: tftp_limits(&ctx, raw.tftp_max_transfers, raw.tftp_max_per_source)?,
            images_dir,
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            ipxe_dir: raw
                .ipxe_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_IPXE_DIR)),
            dhcp,
            prospector_nats,
            extra_kernel_args,
            image_cache_bytes: raw
                .image_cache_mb
                .unwrap_or(DEFAULT_IMAGE_CACHE_MB)
                .saturating_mul(1 << 20),
            image_cache_min_free_bytes: raw
                .image_cache_min_free_mb
                .unwrap_or(DEFAULT_IMAGE_CACHE_MIN_FREE_MB)
                .saturating_mul(1 << 20),
            js_domain: raw.js_domain.filter(|d| !d.is_empty()),
            http: http_limits(&ctx, &raw.http)?,
            site_key: raw.site_key,
            power: power_settings(&ctx, &raw.power)?,
            dhcp6,
            prospector_nats6,
        })
    }
}

/// `ipv6_address` and `dhcp6_pool`: both or neither.
fn dhcp6(
    ctx: &Ctx,
    address: Option<String>,
    pool: Option<String>,
    uefi_loader: crate::dhcp::UefiLoader,
    http_port: u16,
) -> Result<Option<crate::dhcp6::Dhcp6Settings>, ConfigError> {
    let (address, pool) = match (address, pool) {
        (None, None) => return Ok(None),
        (Some(a), Some(p)) => (a, p),
        (Some(_), None) => return Err(ctx.err("dhcp6_pool", "missing (ipv6_address is set)")),
        (None, Some(_)) => return Err(ctx.err("ipv6_address", "missing (dhcp6_pool is set)")),
    };
    let address: std::net::Ipv6Addr = address.trim().parse().map_err(|_| {
        ctx.err(
            "ipv6_address",
            format!("{address:?} is not an IPv6 address"),
        )
    })?;
    // The real server DUID needs the interface's MAC, read when the agent binds.
    crate::dhcp6::Dhcp6Settings::new(
        address,
        &pool,
        1800,
        3600,
        uefi_loader,
        http_port,
        substruct_wire::Mac([0; 6]),
    )
    .map(Some)
    .map_err(|e| ctx.err("dhcp6_pool", e.to_string()))
}

/// `https_cert`, `https_key` and `https_port`: both files or neither; a port that is
/// a port and not the HTTP one.
fn https(
    ctx: &Ctx<'_>,
    port: Option<u16>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    http_port: u16,
) -> Result<Option<super::Https>, ConfigError> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if port.is_some() {
                return Err(ctx.err("https_port", "set, but https_cert and https_key are not"));
            }
            return Ok(None);
        }
        (Some(_), None) => return Err(ctx.err("https_key", "missing (https_cert is set)")),
        (None, Some(_)) => return Err(ctx.err("https_cert", "missing (https_key is set)")),
    };
    let port = port.unwrap_or(443);
    if port == 0 {
        return Err(ctx.err("https_port", "0 is not a port"));
    }
    if port == http_port {
        return Err(ctx.err("https_port", format!("{port} is the HTTP port")));
    }
    Ok(Some(super::Https {
        port,
        tls: substruct_runtime::tls::TlsPaths { cert, key },
    }))
}

/// `https://ip` (or `https://ip:port`).
fn https_base(ip: std::net::Ipv4Addr, port: u16) -> String {
    if port == 443 {
        format!("https://{ip}")
    } else {
        format!("https://{ip}:{port}")
    }
}

/// `tftp_max_transfers` and `tftp_max_per_source` over [`TftpSettings::default`]: neither
/// may be zero, and the per-source cap is at most the total.
fn tftp_limits(
    ctx: &Ctx<'_>,
    max_transfers: Option<usize>,
    max_per_source: Option<usize>,
) -> Result<TftpSettings, ConfigError> {
    let mut s = TftpSettings::default();
    s.max_transfers = max_transfers.unwrap_or(s.max_transfers);
    s.max_per_source = max_per_source.unwrap_or(s.max_per_source);
    if s.max_transfers == 0 {
        return Err(ctx.err("tftp_max_transfers", "must be at least 1"));
    }
    if s.max_per_source == 0 || s.max_per_source > s.max_transfers {
        return Err(ctx.err(
            "tftp_max_per_source",
            format!("must be 1 ..= tftp_max_transfers ({})", s.max_transfers),
        ));
    }
    Ok(s)
}

/// `[power]` over [`PowerSettings::default`](crate::power::PowerSettings): sessions,
/// attempts and the BMC timeout must be more than 0; a `poll_interval` of 0 turns the
/// poll off.
fn power_settings(
    ctx: &Ctx<'_>,
    raw: &super::RawPower,
) -> Result<crate::power::PowerSettings, ConfigError> {
    let mut p = crate::power::PowerSettings::default();
    if let Some(n) = raw.max_sessions {
        if n == 0 {
            return Err(ctx.err("power.max_sessions", "must be more than 0"));
        }
        p.max_sessions = n;
    }
    if let Some(n) = raw.attempts {
        if n == 0 || n > 10 {
            return Err(ctx.err("power.attempts", "must be 1 ..= 10"));
        }
        p.attempts = n;
    }
    if let Some(d) = &raw.bmc_timeout {
        p.bmc_timeout = ctx.duration("power.bmc_timeout", d)?;
        if p.bmc_timeout.is_zero() {
            return Err(ctx.err("power.bmc_timeout", "must be more than 0"));
        }
    }
    if let Some(d) = &raw.poll_interval {
        let d = ctx.duration("power.poll_interval", d)?;
        p.poll_interval = (!d.is_zero()).then_some(d);
    }
    Ok(p)
}

/// `[http]` over [`HttpLimits::default`]: no timeout or cap may be zero.
fn http_limits(ctx: &Ctx<'_>, raw: &super::RawHttp) -> Result<HttpLimits, ConfigError> {
    let mut l = HttpLimits::default();
    for (field, raw, out) in [
        (
            "http.header_timeout",
            &raw.header_timeout,
            &mut l.header_timeout,
        ),
        ("http.idle_timeout", &raw.idle_timeout, &mut l.idle_timeout),
        (
            "http.write_timeout",
            &raw.write_timeout,
            &mut l.write_timeout,
        ),
    ] {
        if let Some(d) = raw {
            *out = ctx.duration(field, d)?;
            if out.is_zero() {
                return Err(ctx.err(field, "must be more than 0"));
            }
        }
    }
    for (field, raw, out) in [
        (
            "http.max_connections",
            raw.max_connections,
            &mut l.max_connections,
        ),
        (
            "http.max_connections_per_source",
            raw.max_connections_per_source,
            &mut l.max_connections_per_source,
        ),
    ] {
        if let Some(n) = raw {
            if n == 0 {
                return Err(ctx.err(field, "must be more than 0"));
            }
            *out = n;
        }
    }
    Ok(l)
}

/// A Linux interface name: 1-15 characters, no '/' or whitespace.
fn interface(ctx: &Ctx<'_>, raw: Option<String>) -> Result<String, ConfigError> {
    let interface =
        raw.ok_or_else(|| ctx.err("interface", "missing (set it or pass --interface)"))?;
    if interface.is_empty()
        || interface.len() > 15
        || interface
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(ctx.err(
            "interface",
            format!("{interface:?} is not an interface name (1-15 characters, no '/' or spaces)"),
        ));
    }
    Ok(interface)
}

/// `ip/prefix`, where ip is a host address of its subnet.
fn address(ctx: &Ctx<'_>, raw: Option<String>) -> Result<Ipv4Net, ConfigError> {
    let text = raw.ok_or_else(|| ctx.err("address", "missing (set it or pass --address)"))?;
    let address = Ipv4Net::from_str(text.trim()).map_err(|_| {
        ctx.err(
            "address",
            format!("{text:?} is not IPv4 address/prefix (e.g. 10.77.0.1/24)"),
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
    Ok(address)
}

/// A [`NatsUrl`] whose every server names its scheme (`nats://host:port`, also
/// `tls://`, `ws://`, `wss://`). No whitespace anywhere: the prospectors' URL travels
/// as one kernel command-line argument.
fn parse_nats_url(ctx: &Ctx<'_>, field: &str, text: String) -> Result<NatsUrl, ConfigError> {
    let refused = |text: &str| {
        ctx.err(
            field,
            format!("{text:?} is not a NATS URL (nats://host:port)"),
        )
    };
    if text.chars().any(char::is_whitespace) {
        return Err(refused(&text));
    }
    match NatsUrl::new(text) {
        Ok(url) if url.has_schemes() => Ok(url),
        Ok(url) => Err(refused(url.as_str())),
        Err(e) => Err(refused(&e.value)),
    }
}

/// Trimmed; `None` when blank; one line without control characters (it ends up on a
/// kernel or iPXE command line).
fn extra_kernel_args(ctx: &Ctx<'_>, raw: Option<String>) -> Result<Option<String>, ConfigError> {
    let args = raw.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    if let Some(args) = &args {
        if args.chars().any(|c| c.is_control()) {
            return Err(ctx.err(
                "extra_kernel_args",
                "must be one line without control characters",
            ));
        }
    }
    Ok(args)
}
