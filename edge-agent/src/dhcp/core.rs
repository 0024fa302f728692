//! The DHCP decision: one parsed request in, one [`Decision`] out. No sockets, no
//! clock, no store — the lease table and the time are arguments, and the lease
//! changes to persist come back with the reply.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use substruct_wire::intent::{BootIntent, LocalBootWay};

use super::packet::{DropReason, ReplyPacket, Request};
use super::settings::{
    BiosChain, DhcpMode, DhcpSettings, Loader, Subnet, UefiLoader, MAX_FILE_LEN,
};
use super::table::{in_pools, DeclineOutcome, LeaseChange, LeaseTable, UnixSecs};

/// How long an OFFER holds its address for the client.
/// The Secure Boot first stage ([`UefiLoader::Shim`]), served over TFTP.
pub const SHIM: &str = "shimx64.efi";

pub const OFFER_HOLD_SECS: u64 = 60;
/// How long a DECLINEd address stays out of the pool.
pub const DECLINE_HOLD_SECS: u64 = 600;
/// At most this many addresses of one subnet are quarantined after DECLINEs at once
/// (the oldest is let go first)…
pub const MAX_DECLINED_PER_SUBNET: usize = 256;
/// …and never more than 1/`DECLINED_POOL_FRACTION` of the subnet's pool, so a client
/// that changes its MAC for each DECLINE cannot drain the pool.
pub const DECLINED_POOL_FRACTION: u64 = 4;
/// The ProxyDHCP boot-server port.
pub const PROXY_PORT: u16 = 4011;

/// What to do with one request, and what to persist first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Changes to commit durably before the reply is sent.
    pub changes: Vec<LeaseChange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `packet` to `dest` from the socket the request came in on.
    Reply {
        packet: ReplyPacket,
        dest: SocketAddr,
    },
    /// No reply; `reason` is logged.
    Drop { reason: DropReason },
}

impl Decision {
    fn drop(reason: DropReason) -> Self {
        Self {
            action: Action::Drop { reason },
            changes: Vec::new(),
        }
    }
    fn drop_with(reason: DropReason, changes: Vec<LeaseChange>) -> Self {
        Self {
            action: Action::Drop { reason },
            changes,
        }
    }
}

/// The first stage chosen for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootChoice {
    /// A TFTP file name or an `http://` URL (≤ 127 bytes, checked at settings time).
    pub file: String,
    /// UEFI HTTP boot: answer with option 60 `HTTPClient`.
    pub http_client: bool,
    /// The file is the iPXE script URL (the client is iPXE; 175.176 no-pxedhcp = 1 goes
    /// to every iPXE client in any case).
    pub ipxe_script: bool,
}

/// Parses `buf` and decides; a malformed packet becomes a `Drop`.
pub fn decide_raw(
    buf: &[u8],
    source: SocketAddr,
    local_port: u16,
    settings: &DhcpSettings,
    leases: &mut LeaseTable,
    intent_of: impl FnOnce(&Request) -> Option<BootIntent>,
    now: UnixSecs,
) -> Decision {
    match Request::parse(buf, source, local_port) {
        Ok(req) => {
            let intent = intent_of(&req);
            decide(&req, settings, leases, intent.as_ref(), now)
        }
        Err(reason) => Decision::drop(reason),
    }
}

/// The whole DHCP protocol of the edge: DISCOVER, REQUEST (selecting, init-reboot,
/// renewing, rebinding), DECLINE, RELEASE, INFORM, in server or proxy mode.
pub fn decide(
    req: &Request,
    settings: &DhcpSettings,
    leases: &mut LeaseTable,
    intent: Option<&BootIntent>,
    now: UnixSecs,
) -> Decision {
    if settings.mode == DhcpMode::Proxy {
        return decide_proxy(req, settings, intent);
    }
    if req.local_port == PROXY_PORT {
        return Decision::drop(DropReason::ProxyIgnored(req.msg_type, req.local_port));
    }
    let Some((_, subnet)) = settings.subnet_for(req.giaddr) else {
        let via = if req.is_relayed() {
            req.giaddr
        } else {
            settings.server_ip
        };
        return Decision::drop(DropReason::NoSubnet(via));
    };
    if req.is_relayed() {
        let source = match req.source.ip() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        if !subnet.accepts_relay(req.giaddr, source) {
            return Decision::drop(DropReason::RelayNotAllowed {
                giaddr: req.giaddr,
                from: source,
            });
        }
    }
    // a REQUEST, DECLINE or RELEASE naming another server is not ours to act on
    let other_server = || {
        Decision::drop(DropReason::OtherServer(
            req.server_id.unwrap_or(Ipv4Addr::UNSPECIFIED),
        ))
    };
    let ours = req.server_id.is_none_or(|s| s == settings.server_ip);
    match req.msg_type {
        MessageType::Discover => {
            let Some(ip) = pick_address(req, settings, subnet, leases, now) else {
                return Decision::drop(DropReason::PoolExhausted(subnet.network));
            };
            let changes = leases.offer(req.mac, ip, now.saturating_add(OFFER_HOLD_SECS));
            let packet = reply(req, settings, subnet, MessageType::Offer, ip, intent, true);
            finish(req, packet, changes, false)
        }
        MessageType::Request => {
            if !ours {
                leases.drop_offer(&req.mac);
                return other_server();
            }
            let ip = match (req.requested_ip, req.ciaddr.is_unspecified()) {
                (Some(ip), _) => ip,
                (None, false) => req.ciaddr,
                (None, true) => return Decision::drop(DropReason::RequestWithoutAddress),
            };
            if !acceptable(req, settings, subnet, leases, ip, now) {
                return finish(req, nak(req, settings), Vec::new(), true);
            }
            let expires = now.saturating_add(subnet.lease_time.as_secs());
            let changes = leases.grant(req.mac, ip, expires);
            let packet = reply(req, settings, subnet, MessageType::Ack, ip, intent, true);
            finish(req, packet, changes, false)
        }
        MessageType::Decline if !ours => other_server(),
        MessageType::Decline => {
            let Some(ip) = req.requested_ip else {
                return Decision::drop(DropReason::MissingOption("DECLINE", 50));
            };
            let cap = usize::try_from(subnet.pool_size() / DECLINED_POOL_FRACTION)
                .unwrap_or(usize::MAX)
                .min(MAX_DECLINED_PER_SUBNET);
            let until = now.saturating_add(DECLINE_HOLD_SECS);
            match leases.decline(req.mac, ip, subnet.network, cap, now, until) {
                DeclineOutcome::Quarantined { changes, .. } => {
                    Decision::drop_with(DropReason::Declined(ip), changes)
                }
                DeclineOutcome::NotTheClients => {
                    Decision::drop(DropReason::DeclineNotTheClients(ip))
                }
            }
        }
        MessageType::Release if !ours => other_server(),
        MessageType::Release => match leases.release(req.mac, req.ciaddr, now) {
            Some(change) => Decision::drop_with(DropReason::Released, vec![change]),
            None => Decision::drop(DropReason::ReleaseUnknown),
        },
        MessageType::Inform => {
            if req.ciaddr.is_unspecified() {
                return Decision::drop(DropReason::InformWithoutCiaddr);
            }
            let packet = reply(
                req,
                settings,
                subnet,
                MessageType::Ack,
                Ipv4Addr::UNSPECIFIED,
                intent,
                false,
            );
            finish(req, packet, Vec::new(), false)
        }
        other => Decision::drop(DropReason::UnexpectedMessageType(u8::from(other))),
    }
}

/// The boot file deployed UEFI firmware is offered under the iPXE way (by TFTP, or by
/// HTTP as `{http_boot_base}/…`): a name the edge never serves, so the firmware's
/// network boot fails at once and it goes on to its disk. (An offer without any boot
/// file makes OVMF wait ~50 s for a "valid" PXE offer first.)
pub const LOCAL_BOOT_FILE: &str = "substruct-local-boot.efi";

/// The boot file for this request, or `None` for "address only". `subnet` is the one
/// serving the request (its `uefi_loader` comes between the reservation's and the site's).
pub fn boot_choice(
    req: &Request,
    settings: &DhcpSettings,
    subnet: Option<&Subnet>,
    intent: Option<&BootIntent>,
) -> Option<BootChoice> {
    if matches!(
        intent,
        Some(BootIntent::Local {
            way: LocalBootWay::NoBootFile
        })
    ) {
        return None;
    }
    let http = req.is_http_client() || matches!(req.arch, Some(15 | 16 | 19));
    if !http && !req.is_pxe_client() {
        return None;
    }
    let arch = req
        .arch
        .or_else(|| arch_from_vendor_class(req))
        .unwrap_or(0);
    // UEFI firmware bound for its disk is not sent to iPXE under the iPXE way: Debian's
    // ipxe.efi hands OVMF a success after a script's `exit`, and OVMF then stops in its
    // boot manager menu. It gets a boot file the edge never serves instead, so its
    // network boot fails at once and it goes on to its next boot option. iPXE itself
    // (already running) still gets the script, which exits.
    if matches!(
        intent,
        Some(BootIntent::Local {
            way: LocalBootWay::IpxeExit
        })
    ) && is_uefi_arch(arch)
        && !req.is_ipxe()
    {
        return Some(BootChoice {
            file: if http {
                settings.local_boot_url().to_owned()
            } else {
                LOCAL_BOOT_FILE.to_owned()
            },
            http_client: http,
            ipxe_script: false,
        });
    }
    let tftp = |f: &str| BootChoice {
        file: f.to_owned(),
        http_client: false,
        ipxe_script: false,
    };
    if http {
        let url = if arch == 19 {
            settings.arm64_http_boot_url()
        } else {
            settings.http_boot_url()
        };
        return Some(BootChoice {
            file: url.to_owned(),
            http_client: true,
            ipxe_script: false,
        });
    }
    let script = || BootChoice {
        file: settings.script_url().to_owned(),
        http_client: false,
        ipxe_script: true,
    };
    let ipxe = req.is_ipxe();
    let loader = settings.reservation(&req.mac).and_then(|r| r.loader);
    match arch {
        0 => {
            let chain = match loader {
                Some(Loader::Bios(chain)) => chain,
                _ => settings.bios_chain,
            };
            match chain {
                // pxelinux chains ipxe.lkrn with its own script: no loop, even for iPXE ROMs
                BiosChain::Pxelinux => Some(tftp("lpxelinux.0")),
                BiosChain::Undionly if ipxe => Some(script()),
                BiosChain::Undionly => Some(tftp("undionly.kpxe")),
            }
        }
        _ if ipxe => Some(script()),
        7 | 9 => {
            let l = match loader {
                Some(Loader::Uefi(l)) => l,
                _ => subnet
                    .and_then(|s| s.uefi_loader)
                    .unwrap_or(settings.uefi_loader),
            };
            Some(tftp(match l {
                UefiLoader::IpxeEfi => "ipxe.efi",
                UefiLoader::SnpOnly => "snponly.efi",
                UefiLoader::Shim => SHIM,
            }))
        }
        11 => Some(tftp("ipxe-arm64.efi")),
        _ => None,
    }
}

/// RFC 4578 / IANA client architectures that are UEFI firmware (IA32, x64 BC and x64,
/// ARM 32/64, and their HTTP-boot forms).
fn is_uefi_arch(arch: u16) -> bool {
    matches!(arch, 6 | 7 | 9 | 10 | 11 | 15 | 16 | 18 | 19)
}

/// `PXEClient:Arch:00007:...` → 7, for clients that omit option 93.
fn arch_from_vendor_class(req: &Request) -> Option<u16> {
    let v = req.vendor_class.as_deref()?;
    let rest = v.strip_prefix(b"PXEClient:Arch:")?;
    let digits = rest.get(..5)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The address to OFFER: the reservation, else the client's previous or offered
/// address, else the one it asks for, else the next free one.
fn pick_address(
    req: &Request,
    settings: &DhcpSettings,
    subnet: &Subnet,
    leases: &mut LeaseTable,
    now: UnixSecs,
) -> Option<Ipv4Addr> {
    let mac = &req.mac;
    if let Some(ip) = settings.reservation(mac).and_then(|r| r.ip) {
        if subnet.network.contains(&ip) && leases.available_for(ip, mac, now) {
            return Some(ip);
        }
    }
    let dynamic_ok = |ip: Ipv4Addr, leases: &LeaseTable| {
        in_pools(subnet, ip)
            && ip != settings.server_ip
            && subnet.router != Some(ip)
            && !settings.is_reserved_ip(ip)
            && leases.available_for(ip, mac, now)
    };
    let previous = leases
        .offer_of(mac)
        .map(|(ip, _)| ip)
        .into_iter()
        .chain(leases.lease_of(mac).map(|l| l.ip))
        .chain(req.requested_ip);
    for ip in previous {
        if dynamic_ok(ip, leases) {
            return Some(ip);
        }
    }
    leases.allocate(settings, subnet, mac, now)
}

/// May `mac` have `ip` (REQUEST)?
fn acceptable(
    req: &Request,
    settings: &DhcpSettings,
    subnet: &Subnet,
    leases: &LeaseTable,
    ip: Ipv4Addr,
    now: UnixSecs,
) -> bool {
    if !subnet.network.contains(&ip) {
        return false;
    }
    if let Some(reserved) = settings.reservation(&req.mac).and_then(|r| r.ip) {
        if subnet.network.contains(&reserved) {
            return ip == reserved && leases.available_for(ip, &req.mac, now);
        }
    }
    in_pools(subnet, ip)
        && ip != settings.server_ip
        && subnet.router != Some(ip)
        && !settings.is_reserved_ip(ip)
        && leases.available_for(ip, &req.mac, now)
}

fn base_message(req: &Request, settings: &DhcpSettings, t: MessageType) -> Message {
    let mut m = Message::new_with_id(
        req.xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr,
        &req.mac.0,
    );
    m.set_opcode(Opcode::BootReply);
    m.set_flags(Flags::from(req.flags));
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(t));
    opts.insert(DhcpOption::ServerIdentifier(settings.server_ip));
    m
}

fn nak(req: &Request, settings: &DhcpSettings) -> ReplyPacket {
    let mut m = base_message(req, settings, MessageType::Nak);
    if req.is_relayed() {
        m.set_flags(Flags::from(req.flags | 0x8000));
    }
    m.opts_mut().insert(DhcpOption::Message(
        "requested address not available".to_owned(),
    ));
    ReplyPacket {
        message: m,
        relay_info: req.relay_info.clone(),
    }
}

/// OFFER / ACK (`with_lease` false for INFORM).
fn reply(
    req: &Request,
    settings: &DhcpSettings,
    subnet: &Subnet,
    t: MessageType,
    yiaddr: Ipv4Addr,
    intent: Option<&BootIntent>,
    with_lease: bool,
) -> ReplyPacket {
    let mut m = base_message(req, settings, t);
    m.set_yiaddr(yiaddr);
    if t == MessageType::Ack {
        m.set_ciaddr(req.ciaddr);
    }
    let opts = m.opts_mut();
    if with_lease {
        let secs = u32::try_from(subnet.lease_time.as_secs()).unwrap_or(u32::MAX);
        opts.insert(DhcpOption::AddressLeaseTime(secs));
        opts.insert(DhcpOption::Renewal(secs / 2));
        opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
    }
    opts.insert(DhcpOption::SubnetMask(subnet.network.netmask()));
    if let Some(r) = subnet.router {
        opts.insert(DhcpOption::Router(vec![r]));
    }
    if !subnet.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(subnet.dns.clone()));
    }
    if let Some(h) = settings
        .reservation(&req.mac)
        .and_then(|r| r.hostname.clone())
    {
        opts.insert(DhcpOption::Hostname(h));
    }
    if let Some(boot) = boot_choice(req, settings, Some(subnet), intent) {
        add_boot(&mut m, req, settings, &boot, false);
    }
    ReplyPacket {
        message: m,
        relay_info: req.relay_info.clone(),
    }
}

fn add_boot(
    m: &mut Message,
    req: &Request,
    settings: &DhcpSettings,
    boot: &BootChoice,
    proxy: bool,
) {
    m.set_siaddr(settings.server_ip);
    // set_fname_str panics past 128 bytes: the settings bound the URLs, check anyway
    if boot.file.len() <= MAX_FILE_LEN {
        m.set_fname_str(&boot.file);
    }
    let opts = m.opts_mut();
    if req.param_list.contains(&67) || boot.file.len() > MAX_FILE_LEN {
        opts.insert(DhcpOption::BootfileName(boot.file.as_bytes().to_vec()));
    }
    if boot.http_client {
        opts.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    } else if proxy {
        opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    }
    if proxy {
        // PXE discovery control: boot file is in this reply, no boot-server discovery
        opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
        if let Some(g) = &req.client_guid {
            opts.insert(DhcpOption::ClientMachineIdentifier(g.clone()));
        }
    }
    // Every iPXE (the script hand-off, and iPXE ROMs sent to lpxelinux.0 too) is told
    // not to wait ~3 s per DHCP for ProxyDHCP offers.
    if boot.ipxe_script || req.is_ipxe() {
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(175u8),
            vec![176, 1, 1],
        )));
    }
}

/// Where a reply goes: relay → giaddr:67; ciaddr → ciaddr:68; else broadcast.
fn destination(req: &Request, is_nak: bool) -> SocketAddr {
    if req.local_port == PROXY_PORT {
        return req.source;
    }
    if req.is_relayed() {
        return SocketAddr::V4(SocketAddrV4::new(req.giaddr, 67));
    }
    if !is_nak && !req.ciaddr.is_unspecified() {
        return SocketAddr::V4(SocketAddrV4::new(req.ciaddr, 68));
    }
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
}

fn finish(req: &Request, packet: ReplyPacket, changes: Vec<LeaseChange>, is_nak: bool) -> Decision {
    Decision {
        action: Action::Reply {
            dest: destination(req, is_nak),
            packet,
        },
        changes,
    }
}

fn decide_proxy(req: &Request, settings: &DhcpSettings, intent: Option<&BootIntent>) -> Decision {
    let expected = match req.local_port {
        PROXY_PORT => MessageType::Request,
        _ => MessageType::Discover,
    };
    if req.msg_type != expected {
        return Decision::drop(DropReason::ProxyIgnored(req.msg_type, req.local_port));
    }
    if !req.is_pxe_client() && !req.is_http_client() {
        return Decision::drop(DropReason::ProxyNotPxe);
    }
    let subnet = settings.subnet_for(req.giaddr).map(|(_, s)| s);
    let Some(boot) = boot_choice(req, settings, subnet, intent) else {
        return Decision::drop(DropReason::ProxyNoBootFile);
    };
    let t = if expected == MessageType::Discover {
        MessageType::Offer
    } else {
        MessageType::Ack
    };
    let mut m = base_message(req, settings, t);
    add_boot(&mut m, req, settings, &boot, true);
    let packet = ReplyPacket {
        message: m,
        relay_info: req.relay_info.clone(),
    };
    finish(req, packet, Vec::new(), false)
}
