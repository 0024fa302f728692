use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::Duration;

use substruct_edge::dhcp::{
    decide_raw, Action, DhcpConfig, DhcpMode, DhcpSettings, LeaseChange, LeaseTable, Reservation,
    Subnet,
};
use substruct_wire::intent::{BootIntent, LocalBootWay};
use substruct_wire::{ImageName, Mac};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const RELAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const SEPARATOR: &[u8] = b"\xff\xfe\xfd\xfc";

/// The edge's DHCP core: `Request::parse` then `decide` (via `decide_raw`) on a fixed
/// site (two subnets, one relayed; server or proxy mode), a lease table carried across
/// the packets of one input, and the reply encoded. Pure: no socket, no clock. Checks
/// that every grant is inside a pool or the reservation and that no address is leased to
/// two MACs at once.
///
/// Input: byte 0 is control bits — bit 0 proxy mode (else server), bit 1 local port 4011
/// (else 67), bit 2 the packets come from the relay `10.88.0.1` (else `0.0.0.0`), bits
/// 3–7 pick the boot intent (rotating per packet). The rest is split into up to 16
/// packets at each `\xff\xfe\xfd\xfc` separator, so one input is a conversation; the
/// clock moves on between packets.
pub fn dhcp_decide(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let settings = settings(control & 1 != 0);
    let local_port = if control & 2 != 0 { 4011 } else { 67 };
    let source_ip = if control & 4 != 0 {
        RELAY
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let source = SocketAddr::V4(SocketAddrV4::new(source_ip, 68));
    let mut leases = LeaseTable::new();
    let mut now: u64 = 1_800_000_000;
    for (i, packet) in split(rest).take(16).enumerate() {
        let pick = control.wrapping_shr(3).wrapping_add(i as u8);
        let decision = decide_raw(
            packet,
            source,
            local_port,
            settings,
            &mut leases,
            |_| intent(pick),
            now,
        );
        for change in &decision.changes {
            if let LeaseChange::Grant { ip, .. } = change {
                assert!(
                    grantable(*ip),
                    "granted {ip}, outside every pool and reservation"
                );
            }
        }
        if let Action::Reply { packet, .. } = &decision.action {
            let _ = packet.encode();
        }
        // never the same address to two MACs at once (a released or expired record
        // stays as the MAC's preferred address and may share it)
        let mut ips: Vec<Ipv4Addr> = leases
            .leases()
            .filter(|l| l.expires > now)
            .map(|l| l.ip)
            .collect();
        let n = ips.len();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), n, "one address leased to two MACs");
        now += u64::from(pick) * 97;
    }
}

/// The site: `10.77.0.0/24` served directly (pool `.100`–`.103`, a reservation for
/// `52:54:00:77:00:09` at `.9`) and `10.88.0.0/24` behind the relay (pool `.50`–`.60`).
fn config(mode: DhcpMode) -> DhcpConfig {
    let mut c = DhcpConfig::new(
        SERVER,
        "http://10.77.0.1",
        Subnet {
            network: "10.77.0.0/24".parse().expect("a valid network"),
            pools: vec![(Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 103))],
            router: Some(SERVER),
            dns: vec![SERVER],
            lease_time: Duration::from_secs(3600),
            relays: vec![],
            uefi_loader: None,
        },
    );
    c.subnets.push(Subnet {
        network: "10.88.0.0/24".parse().expect("a valid network"),
        pools: vec![(Ipv4Addr::new(10, 88, 0, 50), Ipv4Addr::new(10, 88, 0, 60))],
        router: Some(RELAY),
        dns: vec![],
        lease_time: Duration::from_secs(600),
        relays: vec![RELAY],
        uefi_loader: None,
    });
    c.reservations.push(Reservation {
        mac: Mac([0x52, 0x54, 0, 0x77, 0, 9]),
        ip: Some(Ipv4Addr::new(10, 77, 0, 9)),
        hostname: Some("reserved".into()),
        loader: None,
    });
    c.mode = mode;
    c
}

/// The site's settings in proxy or server mode, each built once.
fn settings(proxy: bool) -> &'static DhcpSettings {
    static SERVER_MODE: OnceLock<DhcpSettings> = OnceLock::new();
    static PROXY_MODE: OnceLock<DhcpSettings> = OnceLock::new();
    if proxy {
        PROXY_MODE.get_or_init(|| {
            DhcpSettings::new(config(DhcpMode::Proxy)).expect("valid proxy-mode settings")
        })
    } else {
        SERVER_MODE.get_or_init(|| {
            DhcpSettings::new(config(DhcpMode::Server)).expect("valid server-mode settings")
        })
    }
}

/// What the controller wants the machine to boot, by `pick`.
fn intent(pick: u8) -> Option<BootIntent> {
    match pick % 5 {
        0 => None,
        1 => Some(BootIntent::Discover),
        2 => Some(BootIntent::Install {
            kernel: ImageName::new("os/vmlinuz").expect("a valid image name"),
            initrd: ImageName::new("os/initrd.img").expect("a valid image name"),
            cmdline: "inst.ks={edge}/ks".into(),
        }),
        3 => Some(BootIntent::Local {
            way: LocalBootWay::IpxeExit,
        }),
        _ => Some(BootIntent::Local {
            way: LocalBootWay::NoBootFile,
        }),
    }
}

/// An address the site may grant: the reservation or inside a pool.
fn grantable(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip == Ipv4Addr::new(10, 77, 0, 9)
        || (o[..3] == [10, 77, 0] && (100..=103).contains(&o[3]))
        || (o[..3] == [10, 88, 0] && (50..=60).contains(&o[3]))
}

/// The packets of `data`, split at each [`SEPARATOR`] (`dhcp6_decide` splits its input the same way).
pub(crate) fn split(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        match data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                let packet = &data[..at];
                data = &data[at + SEPARATOR.len()..];
                Some(packet)
            }
            None => Some(std::mem::take(&mut data)),
        }
    })
}
