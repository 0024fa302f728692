//! IPv6 router advertisements on the provisioning interface, so that iPXE's IPv6
//! autoconfiguration ends at once instead of waiting ~15 s for a router.
//!
//! We are NOT a router: every advertisement says router lifetime 0, O=0, M=0 unless the edge
//! serves DHCPv6 (then M=1: addresses from DHCPv6), and by default
//! carries no prefix (an optional on-link, autonomous ULA prefix can be announced). iPXE stops
//! soliciting at the first advertisement and, with M=O=0, finishes its IPv6 configuration.
//!
//! [`encode_router_advertisement`] and [`parse_router_solicitation`] are pure; [`serve`] is the
//! shell: a raw ICMPv6 socket bound to the interface, joined to ff02::2, hop limit 255, that
//! answers every Router Solicitation with an advertisement to ff02::1 and also advertises
//! unsolicited at start and every [`RaSettings::interval`]. The kernel fills in the checksum.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use ipnet::Ipv6Net;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// ICMPv6 type of a Router Solicitation.
pub const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a Router Advertisement.
pub const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_PREFIX_INFO: u8 = 3;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// Least time between two advertisements; solicitations in a burst share one answer.
const MIN_RA_GAP: Duration = Duration::from_millis(50);

/// What the advertisements say and how often they go out unsolicited.
#[derive(Debug, Clone)]
pub struct RaSettings {
    /// Optional prefix announced on-link and autonomous (e.g. a site ULA /64); none by default.
    pub prefix: Option<Ipv6Net>,
    /// Valid lifetime of the prefix.
    pub prefix_valid: Duration,
    /// Preferred lifetime of the prefix.
    pub prefix_preferred: Duration,
    /// Period of unsolicited advertisements.
    pub interval: Duration,
    /// The M flag: addresses come from DHCPv6 (set when the edge serves DHCPv6; iPXE
    /// starts DHCPv6 only on an advertisement that says so).
    pub managed: bool,
}

impl Default for RaSettings {
    fn default() -> Self {
        RaSettings {
            prefix: None,
            prefix_valid: Duration::from_secs(3600),
            prefix_preferred: Duration::from_secs(1800),
            interval: Duration::from_secs(30),
            managed: false,
        }
    }
}

/// A valid Router Solicitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSolicitation {
    /// The sender's link-layer address option, when present.
    pub source_lladdr: Option<Vec<u8>>,
}

/// Why an ICMPv6 message is not a Router Solicitation we answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RsParseError {
    /// Shorter than the 8-byte fixed part.
    #[error("too short: {0} bytes")]
    TooShort(usize),
    /// Another ICMPv6 type (the raw socket sees them all).
    #[error("ICMPv6 type {0}, not a router solicitation")]
    NotSolicitation(u8),
    /// Code must be 0 (RFC 4861 6.1.1).
    #[error("code {0}, expected 0")]
    BadCode(u8),
    /// An option has length 0 or runs past the end (RFC 4861 6.1.1).
    #[error("malformed option at offset {0}")]
    BadOption(usize),
}

/// Parses an ICMPv6 message (as read from a raw ICMPv6 socket, without the IPv6 header).
pub fn parse_router_solicitation(msg: &[u8]) -> Result<RouterSolicitation, RsParseError> {
    let Some(&kind) = msg.first() else {
        return Err(RsParseError::TooShort(0));
    };
    if kind != ICMPV6_ROUTER_SOLICITATION {
        return Err(RsParseError::NotSolicitation(kind));
    }
    if msg.len() < 8 {
        return Err(RsParseError::TooShort(msg.len()));
    }
    if msg[1] != 0 {
        return Err(RsParseError::BadCode(msg[1]));
    }
    let mut source_lladdr = None;
    let mut at = 8;
    while at < msg.len() {
        let (Some(&opt), Some(&units)) = (msg.get(at), msg.get(at + 1)) else {
            return Err(RsParseError::BadOption(at));
        };
        let len = usize::from(units) * 8;
        if len == 0 || at + len > msg.len() {
            return Err(RsParseError::BadOption(at));
        }
        if opt == OPT_SOURCE_LLADDR {
            source_lladdr = Some(msg[at + 2..at + len].to_vec());
        }
        at += len;
    }
    Ok(RouterSolicitation { source_lladdr })
}

/// Encodes a Router Advertisement (checksum left 0 for the kernel): hop limit 64, M=0, O=0,
/// router lifetime 0, reachable and retrans timers 0, our link-layer address, and the prefix
/// (on-link, autonomous) when one is given.
pub fn encode_router_advertisement(mac: [u8; 6], settings: &RaSettings) -> Vec<u8> {
    let mut out = Vec::with_capacity(56);
    out.extend_from_slice(&[ICMPV6_ROUTER_ADVERTISEMENT, 0, 0, 0]);
    out.push(64); // Cur Hop Limit
    out.push(if settings.managed { 0x80 } else { 0 }); // M, O=0
    out.extend_from_slice(&0u16.to_be_bytes()); // Router Lifetime: not a default router
    out.extend_from_slice(&0u32.to_be_bytes()); // Reachable Time: unspecified
    out.extend_from_slice(&0u32.to_be_bytes()); // Retrans Timer: unspecified
    out.extend_from_slice(&[OPT_SOURCE_LLADDR, 1]);
    out.extend_from_slice(&mac);
    if let Some(prefix) = settings.prefix {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        out.extend_from_slice(&[OPT_PREFIX_INFO, 4, prefix.prefix_len(), 0xc0]); // L=1, A=1
        out.extend_from_slice(&secs(settings.prefix_valid).to_be_bytes());
        out.extend_from_slice(
            &secs(settings.prefix_preferred.min(settings.prefix_valid)).to_be_bytes(),
        );
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&prefix.trunc().addr().octets());
    }
    out
}

/// Errors that stop the advertiser.
#[derive(Debug, thiserror::Error)]
pub enum RaError {
    /// The interface's index or MAC address could not be read from /sys.
    #[error("cannot read {what} of interface {interface}")]
    Interface {
        /// The interface.
        interface: String,
        /// `ifindex` or `address`.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating or configuring the raw ICMPv6 socket failed (needs CAP_NET_RAW).
    #[error("cannot set up the raw ICMPv6 socket on {interface}: {step}")]
    Socket {
        /// The interface.
        interface: String,
        /// What failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Receiving failed.
    #[error("receiving on the ICMPv6 socket of {interface} failed")]
    Recv {
        /// The interface.
        interface: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Advertises on `interface` with default settings (no prefix) until `cancel` fires.
pub async fn serve(interface: &str, cancel: CancellationToken) -> Result<(), RaError> {
    serve_with(interface, RaSettings::default(), cancel).await
}

/// Advertises on `interface` with `settings` until `cancel` fires.
pub async fn serve_with(
    interface: &str,
    settings: RaSettings,
    cancel: CancellationToken,
) -> Result<(), RaError> {
    let ifindex = read_ifindex(interface)?;
    let mac = read_mac(interface)?;
    let socket = open_socket(interface, ifindex)?;
    // A raw socket is a datagram socket too: tokio's UdpSocket only issues recvfrom/sendto on
    // it, which is all a raw ICMPv6 socket needs (and it keeps this module free of unsafe).
    let socket =
        tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket)).map_err(|source| {
            RaError::Socket {
                interface: interface.to_owned(),
                step: "register with tokio",
                source,
            }
        })?;
    let ra = encode_router_advertisement(mac, &settings);
    let dest = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, ifindex));
    info!(interface, prefix = ?settings.prefix, "router advertisements (lifetime 0, not a default router)");
    let mut ticker = tokio::time::interval(settings.interval.max(Duration::from_secs(1)));
    let mut last_sent: Option<Instant> = None;
    let mut buf = [0u8; 1500];
    loop {
        let solicited = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ticker.tick() => false,
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => match parse_router_solicitation(&buf[..len]) {
                    Ok(rs) => {
                        debug!(interface, %from, lladdr = ?rs.source_lladdr, "router solicitation");
                        true
                    }
                    Err(RsParseError::NotSolicitation(_)) => continue,
                    Err(e) => {
                        debug!(interface, %from, error = %e, "ignoring malformed router solicitation");
                        continue;
                    }
                },
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => continue,
                Err(source) => return Err(RaError::Recv { interface: interface.to_owned(), source }),
            },
        };
        if solicited {
            // Coalesce bursts of solicitations: one multicast RA answers every asker.
            if let Some(next) = last_sent.map(|t| t + MIN_RA_GAP) {
                if Instant::now() < next {
                    tokio::time::sleep_until(next).await;
                }
            }
        }
        match socket.send_to(&ra, dest).await {
            Ok(_) => {
                last_sent = Some(Instant::now());
                debug!(interface, solicited, "router advertisement sent");
            }
            // E.g. no link-local address yet (DAD) or link down: try again at the next chance.
            Err(e) => warn!(interface, error = %e, "cannot send router advertisement"),
        }
    }
}

fn open_socket(interface: &str, ifindex: u32) -> Result<Socket, RaError> {
    let err = |step: &'static str| {
        let interface = interface.to_owned();
        move |source| RaError::Socket {
            interface,
            step,
            source,
        }
    };
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .map_err(err("open (needs CAP_NET_RAW)"))?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(err("SO_BINDTODEVICE"))?;
    socket
        .join_multicast_v6(&ALL_ROUTERS, ifindex)
        .map_err(err("join ff02::2"))?;
    socket
        .set_multicast_if_v6(ifindex)
        .map_err(err("IPV6_MULTICAST_IF"))?;
    socket
        .set_multicast_hops_v6(255)
        .map_err(err("IPV6_MULTICAST_HOPS"))?;
    socket
        .set_unicast_hops_v6(255)
        .map_err(err("IPV6_UNICAST_HOPS"))?;
    socket
        .set_multicast_loop_v6(false)
        .map_err(err("IPV6_MULTICAST_LOOP"))?;
    socket.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    Ok(socket)
}

fn read_sys(interface: &str, what: &'static str) -> Result<String, RaError> {
    let interface_err = |source| RaError::Interface {
        interface: interface.to_owned(),
        what,
        source,
    };
    if interface.is_empty() || interface.contains('/') || interface.starts_with('.') {
        return Err(interface_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an interface name",
        )));
    }
    std::fs::read_to_string(format!("/sys/class/net/{interface}/{what}"))
        .map(|s| s.trim().to_owned())
        .map_err(interface_err)
}

pub(crate) fn read_ifindex(interface: &str) -> Result<u32, RaError> {
    let text = read_sys(interface, "ifindex")?;
    text.parse().map_err(|e| RaError::Interface {
        interface: interface.to_owned(),
        what: "ifindex",
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}

pub(crate) fn read_mac(interface: &str) -> Result<[u8; 6], RaError> {
    let text = read_sys(interface, "address")?;
    parse_mac(&text).ok_or_else(|| RaError::Interface {
        interface: interface.to_owned(),
        what: "address",
        source: io::Error::new(io::ErrorKind::InvalidData, format!("not a MAC: {text:?}")),
    })
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn prefixless_advertisement_is_exact() {
        let ra = encode_router_advertisement(MAC, &RaSettings::default());
        assert_eq!(
            ra,
            vec![
                134, 0, 0, 0, // type, code, checksum (kernel)
                64, 0, 0, 0, // hop limit, M=O=0, router lifetime 0
                0, 0, 0, 0, // reachable
                0, 0, 0, 0, // retrans
                1, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // source link-layer address
            ]
        );
    }

    #[test]
    fn managed_sets_the_m_flag_and_nothing_else() {
        let plain = encode_router_advertisement(MAC, &RaSettings::default());
        let managed = encode_router_advertisement(
            MAC,
            &RaSettings {
                managed: true,
                ..RaSettings::default()
            },
        );
        assert_eq!(plain[5], 0);
        assert_eq!(managed[5], 0x80);
        assert_eq!(&managed[6..8], &[0, 0], "still not a default router");
        assert_eq!(plain[..5], managed[..5]);
        assert_eq!(plain[6..], managed[6..]);
    }

    #[test]
    fn prefix_option_is_on_link_and_autonomous() {
        let settings = RaSettings {
            prefix: Some("fd00:5ab:1:2:3::/64".parse().unwrap()),
            ..RaSettings::default()
        };
        let ra = encode_router_advertisement(MAC, &settings);
        assert_eq!(ra.len(), 16 + 8 + 32);
        let pio = &ra[24..];
        assert_eq!(&pio[..4], &[3, 4, 64, 0xc0]);
        assert_eq!(&pio[4..8], &3600u32.to_be_bytes());
        assert_eq!(&pio[8..12], &1800u32.to_be_bytes());
        assert_eq!(&pio[12..16], &[0; 4]);
        let prefix: Ipv6Addr = "fd00:5ab:1:2::".parse().unwrap();
        assert_eq!(&pio[16..32], &prefix.octets());
    }

    #[test]
    fn parses_solicitations() {
        assert_eq!(
            parse_router_solicitation(&[133, 0, 0xab, 0xcd, 0, 0, 0, 0]),
            Ok(RouterSolicitation {
                source_lladdr: None
            })
        );
        let with_sllao = [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 3, 4, 5, 6];
        assert_eq!(
            parse_router_solicitation(&with_sllao)
                .unwrap()
                .source_lladdr,
            Some(vec![1, 2, 3, 4, 5, 6])
        );
    }

    #[test]
    fn malformed_solicitations_are_rejected() {
        assert_eq!(
            parse_router_solicitation(&[]),
            Err(RsParseError::TooShort(0))
        );
        assert_eq!(
            parse_router_solicitation(&[133, 0, 0]),
            Err(RsParseError::TooShort(3))
        );
        assert_eq!(
            parse_router_solicitation(&[135, 0, 0, 0, 0, 0, 0, 0]),
            Err(RsParseError::NotSolicitation(135))
        );
        assert_eq!(
            parse_router_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]),
            Err(RsParseError::BadCode(1))
        );
        assert_eq!(
            parse_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
            Err(RsParseError::BadOption(8))
        );
        assert_eq!(
            parse_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0]),
            Err(RsParseError::BadOption(8))
        );
        assert_eq!(
            parse_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(RsParseError::BadOption(8))
        );
    }

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some(MAC));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(msg in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_router_solicitation(&msg);
        }
    }
}

/// The advertiser on a veth inside test namespaces, against a raw-socket client.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod netns_tests {
    use super::*;
    use socket2::SockAddr;
    use std::io::Read;
    use std::time::Instant as StdInstant;
    use substruct_testkit::gate::{system_test, Need};
    use substruct_testkit::netns::{Netns, NsProcess};
    use substruct_testkit::{poll_blocking, try_poll_blocking};

    /// Waits (bounded) until `dev` in `ns` has a usable (non-tentative) link-local address.
    fn wait_link_local(ns: &Netns, dev: &str) {
        let mut out = String::new();
        let usable = poll_blocking(
            &format!("a link-local address on {dev}"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                out = ns
                    .exec("ip", &["-6", "addr", "show", "dev", dev, "scope", "link"])
                    .unwrap();
                (out.contains("fe80::") && !out.contains("tentative")).then_some(())
            },
        );
        if let Err(e) = usable {
            panic!("{e}: {out}");
        }
    }

    /// Reads ICMPv6 messages until a router advertisement (`None` at the deadline).
    fn next_ra(socket: &Socket, deadline: StdInstant) -> Option<Vec<u8>> {
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(StdInstant::now());
            if left.is_zero() {
                return None;
            }
            socket.set_read_timeout(Some(left)).unwrap();
            let Ok(len) = (&*socket).read(&mut buf) else {
                continue;
            };
            if buf.first() == Some(&ICMPV6_ROUTER_ADVERTISEMENT) {
                return Some(buf[..len].to_vec());
            }
        }
    }

    #[test]
    fn answers_router_solicitation_on_a_veth() {
        if !system_test(&[Need::Netns]) {
            return;
        }
        let srv = Netns::create("ra-srv").unwrap();
        let cli = Netns::create("ra-cli").unwrap();
        srv.veth_to(&cli, ("ra0", "10.231.0.1/24"), ("ra1", "10.231.0.2/24"))
            .unwrap();
        wait_link_local(&srv, "ra0");
        wait_link_local(&cli, "ra1");
        let server_mac = srv
            .exec("cat", &["/sys/class/net/ra0/address"])
            .unwrap()
            .trim()
            .to_owned();

        // The client socket exists before the server starts, so it sees the first RA.
        let client = cli
            .run_inside(|| {
                let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
                socket.bind_device(Some(b"ra1"))?;
                socket.set_multicast_hops_v6(255)?;
                Ok(socket)
            })
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut server = Advertiser::spawn(&srv, "ra0", dir.path());
        // 1. The unsolicited advertisement at start (a set-up error ends the advertiser
        // early: then its log says why).
        let ra = server.next_ra(&client);
        assert_eq!(ra.len(), 24);
        // 2. A solicitation is answered (the next unsolicited one is an hour away).
        let ifindex: u32 = cli
            .exec("cat", &["/sys/class/net/ra1/ifindex"])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let rs = [ICMPV6_ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
        client
            .send_to(
                &rs,
                &SockAddr::from(SocketAddrV6::new(ALL_ROUTERS, 0, 0, ifindex)),
            )
            .unwrap();
        let ra = server.next_ra(&client);
        assert_eq!(&ra[4..16], &[64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&ra[16..18], &[1, 1]);
        assert_eq!(parse_mac(&server_mac), Some(ra[18..24].try_into().unwrap()));
        // A malformed solicitation does not stop the server: it answers the next good one.
        client
            .send_to(
                &[ICMPV6_ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                &SockAddr::from(SocketAddrV6::new(ALL_ROUTERS, 0, 0, ifindex)),
            )
            .unwrap();
        client
            .send_to(
                &rs,
                &SockAddr::from(SocketAddrV6::new(ALL_ROUTERS, 0, 0, ifindex)),
            )
            .unwrap();
        server.next_ra(&client);
        server.0.check_alive().unwrap();
    }

    /// The proof that matters: QEMU's iPXE ROM, on a link with IPv6 but no DHCP server and no
    /// router, reports its network configuration "ok" (IPv6 done) thanks to our prefix-less,
    /// lifetime-0 advertisement. Without it iPXE prints "No configuration methods succeeded"
    /// after ~16 s (measured by hand; see the TFTP/RA report).
    #[test]
    fn ipxe_finishes_ipv6_configuration_on_a_prefixless_ra() {
        use substruct_testkit::qemu::{acquire_vm_slot, Firmware, NicLink, NicSpec, Vm, VmSpec};
        if !system_test(&[Need::Netns, Need::Tun, Need::Tool("qemu-system-x86_64")]) {
            return;
        }
        let ns = Netns::create("ra-ipxe").unwrap();
        // No DAD delay on the bridge's link-local address.
        ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.accept_dad=0"])
            .unwrap();
        ns.add_bridge("br0", "10.232.0.1/24").unwrap();
        ns.add_tap("tap0", "br0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut advertiser = Advertiser::spawn(&ns, "br0", dir.path());
        let mut spec = VmSpec::new("ra-ipxe", Firmware::Bios);
        spec.memory_mb = 256;
        spec.nics.push(NicSpec {
            link: NicLink::Tap("tap0".into()),
            mac: "52:54:00:23:10:02".into(),
            model: "virtio-net-pci".into(),
        });
        let _slot = acquire_vm_slot().unwrap();
        let mut vm = Vm::start(&ns, &spec, dir.path()).unwrap();
        vm.wait_for_serial("Configuring (net0", Duration::from_secs(120))
            .unwrap();
        let line = try_poll_blocking(
            "iPXE to finish configuring",
            Duration::from_secs(120),
            Duration::from_millis(100),
            || {
                Ok(vm
                    .serial()
                    .lines()
                    .find(|l| l.contains("Configuring (net0"))
                    .filter(|l| l.trim_end().ends_with("ok") || l.contains("No configuration"))
                    .map(str::to_owned))
            },
        )
        .unwrap_or_else(|e| panic!("{e}; serial:\n{}", vm.serial()));
        eprintln!("iPXE after {:?}: {line}", vm.started.elapsed());
        assert!(
            line.trim_end().ends_with("ok"),
            "iPXE did not accept the advertisement: {line}"
        );
        let serial = vm.serial();
        assert!(
            serial.contains("net0: fe80::"),
            "no IPv6 on net0:\n{serial}"
        );
        advertiser.0.check_alive().unwrap();
    }

    /// The advertiser in its own process inside a namespace (`ip netns exec` also gives it the
    /// namespace's /sys, which `serve` reads), its output in `dir/advertiser.log`. Stopped on
    /// drop.
    struct Advertiser(NsProcess);

    impl Advertiser {
        fn spawn(ns: &Netns, interface: &str, dir: &std::path::Path) -> Advertiser {
            let exe = std::env::current_exe().unwrap();
            let mut cmd = ns.command(exe.to_str().unwrap());
            cmd.args([
                "--exact",
                "ra::netns_tests::advertiser_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, interface);
            Advertiser(
                NsProcess::spawn_command("advertiser", cmd, dir.join("advertiser.log")).unwrap(),
            )
        }

        /// The next router advertisement `client` receives, within 10 s; fails with the
        /// advertiser's log if it exited.
        fn next_ra(&mut self, client: &Socket) -> Vec<u8> {
            next_ra(client, StdInstant::now() + Duration::from_secs(10)).unwrap_or_else(|| {
                self.0.check_alive().unwrap();
                panic!(
                    "no router advertisement within 10 s; advertiser log:\n{}",
                    self.0.log_text()
                )
            })
        }
    }

    const CHILD_ENV: &str = "SUBSTRUCT_RA_TEST_INTERFACE";

    /// Not a test: the body of [`Advertiser`], run by the namespace tests in a child process.
    #[test]
    #[ignore = "helper process of answers_router_solicitation_on_a_veth"]
    fn advertiser_child() {
        let Ok(interface) = std::env::var(CHILD_ENV) else {
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let settings = RaSettings {
            interval: Duration::from_secs(3600),
            ..RaSettings::default()
        };
        rt.block_on(serve_with(&interface, settings, CancellationToken::new()))
            .unwrap();
    }
}
