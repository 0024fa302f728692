//! Unit tests of `decide` on packets shaped like the LAB.md captures, built with dhcproto.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use ipnet::Ipv4Net;
use substruct_wire::dhcp::{Op, PacketError};
use substruct_wire::intent::{BootIntent, LocalBootWay};
use substruct_wire::Mac;

use super::packet::find_option;
use super::*;

const NOW: u64 = 1_800_000_000;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const RELAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn mac(last: u8) -> Mac {
    Mac([0x52, 0x54, 0x00, 0x77, 0x00, last])
}

fn config(bios: BiosChain) -> DhcpConfig {
    let mut c = DhcpConfig::new(
        SERVER,
        "http://10.77.0.1",
        Subnet {
            network: "10.77.0.0/24".parse::<Ipv4Net>().unwrap(),
            pools: vec![(ip("10.77.0.100"), ip("10.77.0.199"))],
            router: Some(SERVER),
            dns: vec![SERVER],
            lease_time: Duration::from_secs(3600),
            relays: vec![],
            uefi_loader: None,
        },
    );
    c.subnets.push(Subnet {
        network: "10.88.0.0/24".parse().unwrap(),
        pools: vec![(ip("10.88.0.50"), ip("10.88.0.60"))],
        router: Some(RELAY),
        dns: vec![],
        lease_time: Duration::from_secs(600),
        relays: vec![],
        uefi_loader: None,
    });
    c.bios_chain = bios;
    c
}

fn settings(bios: BiosChain) -> DhcpSettings {
    DhcpSettings::new(config(bios)).unwrap()
}

fn client_src() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))
}

struct Pkt {
    msg: Message,
    /// Raw options appended after dhcproto's (it double-encodes an unknown 82).
    extra: Vec<u8>,
}

impl Pkt {
    fn new(m: Mac, t: MessageType) -> Self {
        let mut msg = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &m.0,
        );
        msg.opts_mut().insert(DhcpOption::MessageType(t));
        Self {
            msg,
            extra: Vec::new(),
        }
    }
    fn opt(mut self, o: DhcpOption) -> Self {
        self.msg.opts_mut().insert(o);
        self
    }
    fn raw(mut self, code: u8, data: &[u8]) -> Self {
        self.extra.push(code);
        self.extra.push(data.len() as u8);
        self.extra.extend_from_slice(data);
        self
    }
    fn giaddr(mut self, a: Ipv4Addr) -> Self {
        self.msg.set_giaddr(a);
        self.msg.set_hops(1);
        self
    }
    fn ciaddr(mut self, a: Ipv4Addr) -> Self {
        self.msg.set_ciaddr(a);
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.msg.encode(&mut Encoder::new(&mut buf)).unwrap();
        assert_eq!(buf.pop(), Some(255));
        buf.extend_from_slice(&self.extra);
        buf.push(255);
        buf
    }
}

fn vendor(s: &str) -> DhcpOption {
    DhcpOption::ClassIdentifier(s.as_bytes().to_vec())
}

fn arch(a: u16) -> DhcpOption {
    DhcpOption::ClientSystemArchitecture(Architecture::from(a))
}

const GUID: [u8; 17] = [
    0, 0x78, 0x56, 0x34, 0x12, 0x34, 0x12, 0x78, 0x56, 1, 2, 3, 4, 5, 6, 7, 8,
];
/// iPXE's option 175 as captured: 177 bus id, 235 version, feature flags.
const IPXE_175: [u8; 16] = [
    177, 5, 1, 0x1a, 0xf4, 0x10, 0x00, 235, 3, 1, 21, 1, 19, 1, 1, 0,
];

/// QEMU's BIOS NIC ROM (iPXE): arch 0, PXEClient UNDI 002001, user class raw `iPXE`, 175.
fn qemu_bios_rom(m: Mac, t: MessageType) -> Pkt {
    Pkt::new(m, t)
        .opt(DhcpOption::MaxMessageSize(1472))
        .opt(arch(0))
        .opt(DhcpOption::ClientNetworkInterface(1, 2, 1))
        .opt(DhcpOption::ClientMachineIdentifier(GUID.to_vec()))
        .opt(vendor("PXEClient:Arch:00000:UNDI:002001"))
        .opt(DhcpOption::UserClass(b"iPXE".to_vec()))
        .raw(175, &IPXE_175)
        .opt(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::Hostname,
            OptionCode::DomainName,
            OptionCode::from(175u8),
            OptionCode::from(203u8),
        ]))
}

/// OVMF's own PXE client.
fn ovmf_pxe(m: Mac, t: MessageType) -> Pkt {
    Pkt::new(m, t)
        .opt(DhcpOption::MaxMessageSize(1472))
        .opt(arch(7))
        .opt(DhcpOption::ClientNetworkInterface(1, 3, 0))
        .opt(DhcpOption::ClientMachineIdentifier(GUID.to_vec()))
        .opt(vendor("PXEClient:Arch:00007:UNDI:003000"))
        .opt(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::BootfileName,
            OptionCode::ClassIdentifier,
        ]))
}

/// ipxe.efi / snponly.efi after the chain.
fn ipxe_efi(m: Mac, t: MessageType) -> Pkt {
    Pkt::new(m, t)
        .opt(arch(7))
        .opt(vendor("PXEClient:Arch:00007:UNDI:003010"))
        .opt(DhcpOption::UserClass(b"iPXE".to_vec()))
        .raw(175, &IPXE_175)
}

fn ovmf_http(m: Mac, t: MessageType) -> Pkt {
    Pkt::new(m, t)
        .opt(arch(16))
        .opt(vendor("HTTPClient:Arch:00016:UNDI:003000"))
        .opt(DhcpOption::ClientMachineIdentifier(GUID.to_vec()))
}

fn udhcpc(m: Mac, t: MessageType) -> Pkt {
    Pkt::new(m, t)
        .opt(vendor("udhcp 1.35.0"))
        .opt(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
        ]))
}

struct Site {
    settings: DhcpSettings,
    table: LeaseTable,
    intent: Option<BootIntent>,
}

impl Site {
    fn new(bios: BiosChain) -> Self {
        Self::with(settings(bios))
    }
    fn with(settings: DhcpSettings) -> Self {
        Self {
            settings,
            table: LeaseTable::new(),
            intent: None,
        }
    }
    fn run_at(&mut self, p: &Pkt, port: u16, src: SocketAddr, now: u64) -> Decision {
        let intent = self.intent.clone();
        decide_raw(
            &p.bytes(),
            src,
            port,
            &self.settings,
            &mut self.table,
            |_| intent,
            now,
        )
    }
    fn run(&mut self, p: &Pkt) -> Decision {
        self.run_at(p, 67, client_src(), NOW)
    }
}

/// The encoded reply, decoded again by dhcproto, with its raw bytes and destination.
fn reply(d: &Decision) -> (Message, Vec<u8>, SocketAddr) {
    match &d.action {
        Action::Reply { packet, dest } => {
            let bytes = packet.encode().unwrap();
            let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
            (m, bytes, *dest)
        }
        Action::Drop { reason } => panic!("expected a reply, got drop: {reason}"),
    }
}

fn dropped(d: &Decision) -> DropReason {
    match &d.action {
        Action::Drop { reason } => reason.clone(),
        Action::Reply { .. } => panic!("expected a drop, got {d:?}"),
    }
}

/// `file` without dhcproto's trailing NULs.
fn file(m: &Message) -> String {
    let f = m.fname().unwrap_or_default();
    let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
    String::from_utf8(f[..end].to_vec()).unwrap()
}

fn broadcast68() -> SocketAddr {
    "255.255.255.255:68".parse().unwrap()
}

#[test]
fn qemu_bios_rom_on_pxelinux_site_gets_lpxelinux() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let d = site.run(&qemu_bios_rom(mac(0x0a), MessageType::Discover));
    let (m, bytes, dest) = reply(&d);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(file(&m), "lpxelinux.0");
    assert_eq!(m.siaddr(), SERVER);
    assert!(in_pool(m.yiaddr(), "10.77.0.100", "10.77.0.199"));
    assert_eq!(dest, broadcast68());
    assert_eq!(
        find_option(&bytes, 175),
        Some(vec![176, 1, 1]),
        "the iPXE ROM must not wait ~3 s for ProxyDHCP before loading lpxelinux.0"
    );
    assert_eq!(find_option(&bytes, 54), Some(SERVER.octets().to_vec()));
    assert!(d.changes.is_empty(), "an offer persists nothing");
}

#[test]
fn qemu_bios_rom_on_undionly_site_gets_script_url() {
    let mut site = Site::new(BiosChain::Undionly);
    let (m, bytes, _) = reply(&site.run(&qemu_bios_rom(mac(0x0c), MessageType::Discover)));
    assert_eq!(file(&m), "http://10.77.0.1/boot.ipxe");
    assert_eq!(find_option(&bytes, 175), Some(vec![176, 1, 1]));
}

#[test]
fn plain_bios_pxe_on_undionly_site_gets_undionly() {
    let mut site = Site::new(BiosChain::Undionly);
    let p = Pkt::new(mac(0x0c), MessageType::Discover)
        .opt(arch(0))
        .opt(vendor("PXEClient:Arch:00000:UNDI:002001"));
    let (m, bytes, _) = reply(&site.run(&p));
    assert_eq!(file(&m), "undionly.kpxe");
    assert_eq!(m.siaddr(), SERVER);
    assert_eq!(find_option(&bytes, 175), None);
}

#[test]
fn ovmf_pxe_gets_ipxe_efi_or_snponly() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let (m, bytes, _) = reply(&site.run(&ovmf_pxe(mac(0x0b), MessageType::Discover)));
    assert_eq!(file(&m), "ipxe.efi");
    assert_eq!(m.siaddr(), SERVER);
    // OVMF asked for option 67 in its parameter list
    assert_eq!(find_option(&bytes, 67), Some(b"ipxe.efi".to_vec()));
    assert_eq!(find_option(&bytes, 60), None);

    let mut c = config(BiosChain::Pxelinux);
    c.uefi_loader = UefiLoader::SnpOnly;
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    let (m, _, _) = reply(&site.run(&ovmf_pxe(mac(0x0e), MessageType::Discover)));
    assert_eq!(file(&m), "snponly.efi");
}

#[test]
fn secure_boot_gets_shim_by_site_or_by_reservation() {
    let mut c = config(BiosChain::Pxelinux);
    c.uefi_loader = UefiLoader::Shim;
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    let (m, bytes, _) = reply(&site.run(&ovmf_pxe(mac(0x0b), MessageType::Discover)));
    assert_eq!(file(&m), "shimx64.efi");
    assert_eq!(find_option(&bytes, 67), Some(b"shimx64.efi".to_vec()));
    // BIOS machines of the same site keep their chain
    let (m, _, _) = reply(&site.run(&qemu_bios_rom(mac(0x0a), MessageType::Discover)));
    assert_eq!(file(&m), "lpxelinux.0");

    // one machine on a site whose default is iPXE
    let mut c = config(BiosChain::Pxelinux);
    c.reservations.push(Reservation {
        mac: mac(0x0c),
        ip: None,
        hostname: None,
        loader: Some(Loader::Uefi(UefiLoader::Shim)),
    });
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    let (m, _, _) = reply(&site.run(&ovmf_pxe(mac(0x0c), MessageType::Discover)));
    assert_eq!(file(&m), "shimx64.efi");
    let (m, _, _) = reply(&site.run(&ovmf_pxe(mac(0x0b), MessageType::Discover)));
    assert_eq!(file(&m), "ipxe.efi");
}

#[test]
fn a_subnet_loader_applies_to_its_subnet_between_reservation_and_site() {
    // The relayed subnet 10.88.0.0/24 is a Secure Boot rack; the edge's own segment is not.
    let mut c = config(BiosChain::Pxelinux);
    c.subnets[1].uefi_loader = Some(UefiLoader::Shim);
    c.reservations.push(Reservation {
        mac: mac(0x3c),
        ip: None,
        hostname: None,
        loader: Some(Loader::Uefi(UefiLoader::SnpOnly)),
    });
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    let relay_src: SocketAddr = "10.88.0.1:67".parse().unwrap();
    let relayed = |m| ovmf_pxe(m, MessageType::Discover).giaddr(RELAY);
    let (m, _, _) = reply(&site.run_at(&relayed(mac(0x3a)), 67, relay_src, NOW));
    assert_eq!(file(&m), "shimx64.efi");
    // the reservation still wins inside that subnet
    let (m, _, _) = reply(&site.run_at(&relayed(mac(0x3c)), 67, relay_src, NOW));
    assert_eq!(file(&m), "snponly.efi");
    // the edge's own segment keeps the site's loader
    let (m, _, _) = reply(&site.run(&ovmf_pxe(mac(0x3b), MessageType::Discover)));
    assert_eq!(file(&m), "ipxe.efi");
    // BIOS clients in the Secure Boot subnet keep their chain
    let bios = qemu_bios_rom(mac(0x3d), MessageType::Discover).giaddr(RELAY);
    let (m, _, _) = reply(&site.run_at(&bios, 67, relay_src, NOW));
    assert_eq!(file(&m), "lpxelinux.0");
}

#[test]
fn ipxe_efi_gets_script_url_and_no_pxedhcp() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let (m, bytes, _) = reply(&site.run(&ipxe_efi(mac(0x0b), MessageType::Discover)));
    assert_eq!(file(&m), "http://10.77.0.1/boot.ipxe");
    assert_eq!(find_option(&bytes, 175), Some(vec![176, 1, 1]));
}

#[test]
fn rfc3004_framed_user_class_is_ipxe_too() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let p = Pkt::new(mac(0x0b), MessageType::Discover)
        .opt(arch(7))
        .opt(vendor("PXEClient:Arch:00007:UNDI:003010"))
        .opt(DhcpOption::UserClass(b"\x04iPXE".to_vec()));
    let (m, _, _) = reply(&site.run(&p));
    assert_eq!(file(&m), "http://10.77.0.1/boot.ipxe");
}

#[test]
fn ovmf_http_boot_gets_url_and_httpclient() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let (m, bytes, _) = reply(&site.run(&ovmf_http(mac(0x0d), MessageType::Discover)));
    assert_eq!(file(&m), "http://10.77.0.1/ipxe.efi");
    assert_eq!(find_option(&bytes, 60), Some(b"HTTPClient".to_vec()));
}

#[test]
fn https_edge_sends_http_boot_firmware_to_https_and_ipxe_to_http() {
    let mut c = config(BiosChain::Pxelinux);
    c.http_boot_base = Some("https://10.77.0.1".into());
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    let (m, bytes, _) = reply(&site.run(&ovmf_http(mac(0x0d), MessageType::Discover)));
    assert_eq!(file(&m), "https://10.77.0.1/ipxe.efi");
    assert_eq!(find_option(&bytes, 60), Some(b"HTTPClient".to_vec()));
    // iPXE (no TLS in Debian's build) still gets its script over HTTP.
    let (m, _, _) = reply(&site.run(&ipxe_efi(mac(0x0d), MessageType::Discover)));
    assert_eq!(file(&m), "http://10.77.0.1/boot.ipxe");
    // A base that is not https:// is refused with the field to fix.
    let mut c = config(BiosChain::Pxelinux);
    c.http_boot_base = Some("http://10.77.0.1".into());
    let e = DhcpSettings::new(c).unwrap_err();
    assert_eq!(e.field(), "https_port");
}

#[test]
fn arm64_gets_arm64_loader() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let p = Pkt::new(mac(0x11), MessageType::Discover)
        .opt(arch(11))
        .opt(vendor("PXEClient:Arch:00011:UNDI:003000"));
    let (m, _, _) = reply(&site.run(&p));
    assert_eq!(file(&m), "ipxe-arm64.efi");
}

#[test]
fn udhcpc_gets_address_only() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let (m, bytes, _) = reply(&site.run(&udhcpc(mac(0x20), MessageType::Discover)));
    assert!(in_pool(m.yiaddr(), "10.77.0.100", "10.77.0.199"));
    assert_eq!(file(&m), "");
    assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(find_option(&bytes, 1), Some(vec![255, 255, 255, 0]));
    assert_eq!(find_option(&bytes, 3), Some(SERVER.octets().to_vec()));
    assert_eq!(find_option(&bytes, 6), Some(SERVER.octets().to_vec()));
    assert_eq!(
        find_option(&bytes, 51),
        Some(3600u32.to_be_bytes().to_vec())
    );
}

#[test]
fn local_nobootfile_intent_gets_address_but_no_file() {
    let mut site = Site::new(BiosChain::Pxelinux);
    site.intent = Some(BootIntent::Local {
        way: LocalBootWay::NoBootFile,
    });
    let (m, bytes, _) = reply(&site.run(&ovmf_pxe(mac(0x0b), MessageType::Discover)));
    assert!(!m.yiaddr().is_unspecified());
    assert_eq!(file(&m), "");
    assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(find_option(&bytes, 67), None);
}

#[test]
fn local_ipxe_exit_sends_bios_to_ipxe_and_uefi_firmware_to_its_disk() {
    let mut site = Site::new(BiosChain::Pxelinux);
    site.intent = Some(BootIntent::Local {
        way: LocalBootWay::IpxeExit,
    });
    // BIOS: through iPXE, whose script sanboots the disk.
    let (m, _, _) = reply(&site.run(&qemu_bios_rom(mac(0x0c), MessageType::Discover)));
    assert_eq!(file(&m), "lpxelinux.0");
    // UEFI firmware, by PXE or HTTP boot: a boot file the edge never serves, so its
    // network boot fails at once (Debian's ipxe.efi would leave OVMF in its menu).
    for (p, what, want) in [
        (
            ovmf_pxe(mac(0x0b), MessageType::Discover),
            "OVMF PXE",
            "substruct-local-boot.efi",
        ),
        (
            ovmf_http(mac(0x0d), MessageType::Discover),
            "OVMF HTTP boot",
            "http://10.77.0.1/substruct-local-boot.efi",
        ),
        (
            Pkt::new(mac(0x0e), MessageType::Discover)
                .opt(vendor("PXEClient:Arch:00009:UNDI:003000")),
            "arch from option 60 only",
            "substruct-local-boot.efi",
        ),
    ] {
        let (m, _, _) = reply(&site.run(&p));
        assert!(!m.yiaddr().is_unspecified(), "{what}");
        assert_eq!(file(&m), want, "{what}");
    }
    assert_eq!(
        crate::dhcp::core::LOCAL_BOOT_FILE,
        "substruct-local-boot.efi"
    );
    // iPXE already running under UEFI still gets the script (which exits).
    let (m, _, _) = reply(&site.run(&ipxe_efi(mac(0x0f), MessageType::Discover)));
    assert_eq!(file(&m), "http://10.77.0.1/boot.ipxe");
    // Any other intent still loads ipxe.efi for the same firmware.
    site.intent = None;
    let (m, _, _) = reply(&site.run(&ovmf_pxe(mac(0x0b), MessageType::Discover)));
    assert_eq!(file(&m), "ipxe.efi");
}

#[test]
fn relayed_request_uses_giaddr_pool_unicasts_to_relay_and_echoes_82() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let agent = [1, 4, 0, 0, 0, 7, 2, 6, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
    let discover = udhcpc(mac(0x30), MessageType::Discover)
        .giaddr(RELAY)
        .raw(82, &agent);
    let relay_src: SocketAddr = "10.88.0.1:67".parse().unwrap();
    let d = site.run_at(&discover, 67, relay_src, NOW);
    let (m, bytes, dest) = reply(&d);
    assert!(
        in_pool(m.yiaddr(), "10.88.0.50", "10.88.0.60"),
        "{}",
        m.yiaddr()
    );
    assert_eq!(m.giaddr(), RELAY);
    assert_eq!(dest, "10.88.0.1:67".parse().unwrap());
    assert_eq!(find_option(&bytes, 82), Some(agent.to_vec()));
    assert_eq!(find_option(&bytes, 3), Some(RELAY.octets().to_vec()));
    // option 82 is the last option before End
    let end = bytes.iter().rposition(|b| *b != 0).unwrap();
    assert_eq!(bytes[end], 255);
    assert_eq!(&bytes[end - agent.len()..end], &agent);

    let request = udhcpc(mac(0x30), MessageType::Request)
        .giaddr(RELAY)
        .opt(DhcpOption::RequestedIpAddress(m.yiaddr()))
        .opt(DhcpOption::ServerIdentifier(SERVER))
        .raw(82, &agent);
    let d = site.run_at(&request, 67, relay_src, NOW);
    let (ack, bytes, dest) = reply(&d);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), m.yiaddr());
    assert_eq!(dest, "10.88.0.1:67".parse().unwrap());
    assert_eq!(find_option(&bytes, 82), Some(agent.to_vec()));
    assert_eq!(
        d.changes,
        vec![LeaseChange::Grant {
            mac: mac(0x30),
            ip: m.yiaddr(),
            expires: NOW + 600
        }]
    );
}

#[test]
fn relayed_request_from_unknown_subnet_is_dropped() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let p = udhcpc(mac(0x31), MessageType::Discover).giaddr(ip("10.99.0.1"));
    assert_eq!(
        dropped(&site.run(&p)),
        DropReason::NoSubnet(ip("10.99.0.1"))
    );
}

#[test]
fn proxy_mode_never_gives_an_address() {
    let mut c = config(BiosChain::Pxelinux);
    c.mode = DhcpMode::Proxy;
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    let d = site.run(&ovmf_pxe(mac(0x0b), MessageType::Discover));
    let (m, bytes, dest) = reply(&d);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(file(&m), "ipxe.efi");
    assert_eq!(m.siaddr(), SERVER);
    assert_eq!(find_option(&bytes, 60), Some(b"PXEClient".to_vec()));
    assert_eq!(find_option(&bytes, 97), Some(GUID.to_vec()));
    assert_eq!(find_option(&bytes, 51), None);
    assert_eq!(dest, broadcast68());
    assert!(d.changes.is_empty());

    // port 4011: REQUEST → ACK unicast back to the source
    let src: SocketAddr = "10.77.0.150:68".parse().unwrap();
    let p = ovmf_pxe(mac(0x0b), MessageType::Request).ciaddr(ip("10.77.0.150"));
    let d = site.run_at(&p, 4011, src, NOW);
    let (m, _, dest) = reply(&d);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(dest, src);

    // non-PXE clients and port-67 REQUESTs belong to the site's DHCP server
    assert_eq!(
        dropped(&site.run(&udhcpc(mac(0x20), MessageType::Discover))),
        DropReason::ProxyNotPxe
    );
    assert!(matches!(
        dropped(&site.run(&ovmf_pxe(mac(0x0b), MessageType::Request))),
        DropReason::ProxyIgnored(MessageType::Request, 67)
    ));
    site.intent = Some(BootIntent::Local {
        way: LocalBootWay::NoBootFile,
    });
    assert_eq!(
        dropped(&site.run(&ovmf_pxe(mac(0x0b), MessageType::Discover))),
        DropReason::ProxyNoBootFile
    );
    // The iPXE way sends UEFI firmware to its disk in proxy mode too.
    site.intent = Some(BootIntent::Local {
        way: LocalBootWay::IpxeExit,
    });
    let (m, _, _) = reply(&site.run(&ovmf_pxe(mac(0x0b), MessageType::Discover)));
    assert_eq!(file(&m), "substruct-local-boot.efi");
}

#[test]
fn malformed_packets_are_dropped_with_a_reason() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let good = udhcpc(mac(0x40), MessageType::Discover).bytes();
    let run = |site: &mut Site, b: &[u8]| {
        decide_raw(
            b,
            client_src(),
            67,
            &site.settings,
            &mut site.table,
            |_| None,
            NOW,
        )
    };
    // truncated
    assert_eq!(
        dropped(&run(&mut site, &good[..100])),
        DropReason::Malformed(PacketError::Truncated { len: 100 })
    );
    assert_eq!(
        dropped(&run(&mut site, &[])),
        DropReason::Malformed(PacketError::Truncated { len: 0 })
    );
    // wrong op
    let mut b = good.clone();
    b[0] = 2;
    assert_eq!(
        dropped(&run(&mut site, &b)),
        DropReason::Malformed(PacketError::WrongOp {
            op: 2,
            expected: Op::BootRequest
        })
    );
    // bad magic
    let mut b = good.clone();
    b[236] = 0;
    assert_eq!(
        dropped(&run(&mut site, &b)),
        DropReason::Malformed(PacketError::BadMagic)
    );
    // hlen 16 (dhcproto's chaddr() would panic past 16)
    let mut b = good.clone();
    b[2] = 200;
    assert!(matches!(
        dropped(&run(&mut site, &b)),
        DropReason::Malformed(PacketError::UnsupportedHardware { hlen: 200, .. })
    ));
    // an option length running past the end
    let mut b = good[..240].to_vec();
    b.extend_from_slice(&[53, 1, 1, 60, 200, b'u', b'd']);
    assert!(matches!(
        dropped(&run(&mut site, &b)),
        DropReason::Malformed(PacketError::OptionOverrun { code: 60, .. })
    ));
    // option 53 of the wrong length
    let mut b = good[..240].to_vec();
    b.extend_from_slice(&[53, 2, 1, 1, 255]);
    assert_eq!(
        dropped(&run(&mut site, &b)),
        DropReason::BadOptionLength { code: 53, len: 2 }
    );
    // option 93 of odd length, option 50 of length 3
    let mut b = good[..240].to_vec();
    b.extend_from_slice(&[53, 1, 1, 93, 1, 0, 255]);
    assert!(matches!(
        dropped(&run(&mut site, &b)),
        DropReason::BadOptionLength { code: 93, .. }
    ));
    let mut b = good[..240].to_vec();
    b.extend_from_slice(&[53, 1, 3, 50, 3, 10, 77, 0, 255]);
    assert!(matches!(
        dropped(&run(&mut site, &b)),
        DropReason::BadOptionLength { code: 50, .. }
    ));
    // no option 53
    let mut b = good[..240].to_vec();
    b.extend_from_slice(&[60, 2, b'h', b'i', 255]);
    assert_eq!(dropped(&run(&mut site, &b)), DropReason::MissingMessageType);
    // a server's message type
    let mut b = good[..240].to_vec();
    b.extend_from_slice(&[53, 1, 2, 255]);
    assert_eq!(
        dropped(&run(&mut site, &b)),
        DropReason::UnexpectedMessageType(2)
    );
    // broadcast MAC
    let mut b = good.clone();
    b[28..34].copy_from_slice(&[0xff; 6]);
    assert!(matches!(
        dropped(&run(&mut site, &b)),
        DropReason::BadMac(_)
    ));
    assert!(site.table.leases().next().is_none());
}

#[test]
fn garbage_never_panics() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let good = qemu_bios_rom(mac(0x41), MessageType::Discover).bytes();
    let mut seed: u32 = 12345;
    for len in 0..good.len() + 40 {
        for _ in 0..8 {
            let mut b: Vec<u8> = good.iter().copied().chain([7u8; 40]).take(len).collect();
            for _ in 0..4 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if !b.is_empty() {
                    let i = (seed as usize >> 8) % b.len();
                    b[i] = (seed >> 16) as u8;
                }
            }
            let d = decide_raw(
                &b,
                client_src(),
                67,
                &site.settings,
                &mut site.table,
                |_| None,
                NOW,
            );
            if let Action::Reply { packet, .. } = d.action {
                assert!(packet.encode().unwrap().len() >= 300);
            }
        }
    }
}

#[test]
fn every_reply_is_at_least_300_bytes() {
    let mut site = Site::new(BiosChain::Pxelinux);
    for p in [
        udhcpc(mac(0x50), MessageType::Discover),
        ovmf_pxe(mac(0x51), MessageType::Discover),
        qemu_bios_rom(mac(0x52), MessageType::Discover),
        ovmf_http(mac(0x53), MessageType::Discover),
    ] {
        let (_, bytes, _) = reply(&site.run(&p));
        assert!(bytes.len() >= 300, "{} bytes", bytes.len());
    }
    // a NAK is tiny before padding
    let p = udhcpc(mac(0x54), MessageType::Request)
        .opt(DhcpOption::RequestedIpAddress(ip("10.77.0.5")));
    let (m, bytes, _) = reply(&site.run(&p));
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
    assert!(bytes.len() >= 300);
}

fn in_pool(a: Ipv4Addr, lo: &str, hi: &str) -> bool {
    (u32::from(ip(lo))..=u32::from(ip(hi))).contains(&u32::from(a))
}

fn discover_request(site: &mut Site, m: Mac, now: u64) -> Ipv4Addr {
    let (offer, _, _) =
        reply(&site.run_at(&udhcpc(m, MessageType::Discover), 67, client_src(), now));
    let req = udhcpc(m, MessageType::Request)
        .opt(DhcpOption::RequestedIpAddress(offer.yiaddr()))
        .opt(DhcpOption::ServerIdentifier(SERVER));
    let d = site.run_at(&req, 67, client_src(), now);
    let (ack, _, _) = reply(&d);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    ack.yiaddr()
}

#[test]
fn dora_renew_rebind_and_nak() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let a = discover_request(&mut site, mac(1), NOW);
    let b = discover_request(&mut site, mac(2), NOW);
    assert_ne!(a, b);

    // renewing: unicast with ciaddr → same address, unicast to ciaddr:68
    let renew = udhcpc(mac(1), MessageType::Request).ciaddr(a);
    let d = site.run_at(
        &renew,
        67,
        SocketAddr::V4(SocketAddrV4::new(a, 68)),
        NOW + 1800,
    );
    let (ack, _, dest) = reply(&d);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), a);
    assert_eq!(ack.ciaddr(), a);
    assert_eq!(dest, SocketAddr::V4(SocketAddrV4::new(a, 68)));
    assert_eq!(
        d.changes,
        vec![LeaseChange::Grant {
            mac: mac(1),
            ip: a,
            expires: NOW + 1800 + 3600
        }]
    );

    // init-reboot asking for someone else's address → NAK, broadcast
    let p = udhcpc(mac(1), MessageType::Request).opt(DhcpOption::RequestedIpAddress(b));
    let (nak, _, dest) = reply(&site.run(&p));
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(dest, broadcast68());
    // an address of our subnet outside the pool → NAK
    let p =
        udhcpc(mac(1), MessageType::Request).opt(DhcpOption::RequestedIpAddress(ip("10.77.0.20")));
    assert_eq!(
        reply(&site.run(&p)).0.opts().msg_type(),
        Some(MessageType::Nak)
    );
    // another network → NAK
    let p =
        udhcpc(mac(1), MessageType::Request).opt(DhcpOption::RequestedIpAddress(ip("192.168.1.5")));
    assert_eq!(
        reply(&site.run(&p)).0.opts().msg_type(),
        Some(MessageType::Nak)
    );

    // a REQUEST naming another server is not ours, and frees our offer
    let (offer, _, _) = reply(&site.run(&udhcpc(mac(3), MessageType::Discover)));
    assert!(site.table.offer_of(&mac(3)).is_some());
    let p = udhcpc(mac(3), MessageType::Request)
        .opt(DhcpOption::RequestedIpAddress(offer.yiaddr()))
        .opt(DhcpOption::ServerIdentifier(ip("10.77.0.2")));
    assert_eq!(
        dropped(&site.run(&p)),
        DropReason::OtherServer(ip("10.77.0.2"))
    );
    assert!(site.table.offer_of(&mac(3)).is_none());

    // a client's discover comes back to its previous address, even after expiry
    let later = NOW + 10 * 3600;
    let (again, _, _) = reply(&site.run_at(
        &udhcpc(mac(1), MessageType::Discover),
        67,
        client_src(),
        later,
    ));
    assert_eq!(again.yiaddr(), a);
}

#[test]
fn offers_hold_addresses_between_clients() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let (o1, _, _) = reply(&site.run(&udhcpc(mac(1), MessageType::Discover)));
    let (o2, _, _) = reply(&site.run(&udhcpc(mac(2), MessageType::Discover)));
    assert_ne!(o1.yiaddr(), o2.yiaddr());
    // mac 2 cannot take mac 1's offered address while the offer holds
    let p = udhcpc(mac(2), MessageType::Request)
        .opt(DhcpOption::RequestedIpAddress(o1.yiaddr()))
        .opt(DhcpOption::ServerIdentifier(SERVER));
    assert_eq!(
        reply(&site.run(&p)).0.opts().msg_type(),
        Some(MessageType::Nak)
    );
    // after the hold it can
    let d = site.run_at(&p, 67, client_src(), NOW + OFFER_HOLD + 1);
    assert_eq!(reply(&d).0.yiaddr(), o1.yiaddr());
}

const OFFER_HOLD: u64 = super::core::OFFER_HOLD_SECS;

#[test]
fn decline_quarantines_and_release_keeps_preference() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let a = discover_request(&mut site, mac(1), NOW);
    let decline = udhcpc(mac(1), MessageType::Decline)
        .opt(DhcpOption::RequestedIpAddress(a))
        .opt(DhcpOption::ServerIdentifier(SERVER));
    let d = site.run(&decline);
    assert_eq!(dropped(&d), DropReason::Declined(a));
    assert_eq!(d.changes, vec![LeaseChange::Forget { mac: mac(1) }]);
    let b = discover_request(&mut site, mac(1), NOW);
    assert_ne!(a, b, "a declined address is not offered again at once");
    let c = discover_request(&mut site, mac(2), NOW);
    assert_ne!(a, c);

    let release = udhcpc(mac(2), MessageType::Release)
        .ciaddr(c)
        .opt(DhcpOption::ServerIdentifier(SERVER));
    let d = site.run_at(&release, 67, client_src(), NOW + 5);
    assert_eq!(dropped(&d), DropReason::Released);
    assert_eq!(
        d.changes,
        vec![LeaseChange::Release {
            mac: mac(2),
            ip: c,
            at: NOW + 5
        }]
    );
    assert_eq!(discover_request(&mut site, mac(2), NOW + 6), c);
    // release of an address not held
    let bogus = udhcpc(mac(3), MessageType::Release).ciaddr(c);
    assert_eq!(dropped(&site.run(&bogus)), DropReason::ReleaseUnknown);
}

#[test]
fn inform_gets_options_without_address() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let p = udhcpc(mac(9), MessageType::Inform).ciaddr(ip("10.77.0.42"));
    let (m, bytes, dest) = reply(&site.run(&p));
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(find_option(&bytes, 51), None);
    assert_eq!(dest, "10.77.0.42:68".parse().unwrap());
}

#[test]
fn reservations_fix_address_name_and_loader() {
    let mut c = config(BiosChain::Pxelinux);
    c.reservations.push(Reservation {
        mac: mac(0x0c),
        ip: Some(ip("10.77.0.10")),
        hostname: Some("node-1".into()),
        loader: Some(Loader::Bios(BiosChain::Undionly)),
    });
    c.reservations.push(Reservation {
        mac: mac(0x0e),
        ip: None,
        hostname: None,
        loader: Some(Loader::Uefi(UefiLoader::SnpOnly)),
    });
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    let p = Pkt::new(mac(0x0c), MessageType::Discover)
        .opt(arch(0))
        .opt(vendor("PXEClient:Arch:00000:UNDI:002001"));
    let (m, bytes, _) = reply(&site.run(&p));
    assert_eq!(m.yiaddr(), ip("10.77.0.10"));
    assert_eq!(file(&m), "undionly.kpxe");
    assert_eq!(find_option(&bytes, 12), Some(b"node-1".to_vec()));
    let (m, _, _) = reply(&site.run(&ovmf_pxe(mac(0x0e), MessageType::Discover)));
    assert_eq!(file(&m), "snponly.efi");
    assert!(in_pool(m.yiaddr(), "10.77.0.100", "10.77.0.199"));
    // the reserved client asking for a pool address is told to come back (NAK)
    let p = udhcpc(mac(0x0c), MessageType::Request)
        .opt(DhcpOption::RequestedIpAddress(ip("10.77.0.150")));
    assert_eq!(
        reply(&site.run(&p)).0.opts().msg_type(),
        Some(MessageType::Nak)
    );
}

#[test]
fn pool_exhaustion_is_a_drop() {
    let mut c = config(BiosChain::Pxelinux);
    c.subnets[0].pools = vec![(ip("10.77.0.100"), ip("10.77.0.101"))];
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    discover_request(&mut site, mac(1), NOW);
    discover_request(&mut site, mac(2), NOW);
    assert!(matches!(
        dropped(&site.run(&udhcpc(mac(3), MessageType::Discover))),
        DropReason::PoolExhausted(_)
    ));
    // after both leases expired, the addresses are reusable
    let later = NOW + 3601;
    let (m, _, _) = reply(&site.run_at(
        &udhcpc(mac(3), MessageType::Discover),
        67,
        client_src(),
        later,
    ));
    assert!(in_pool(m.yiaddr(), "10.77.0.100", "10.77.0.101"));
}

#[test]
fn settings_validation_names_the_field() {
    let base = config(BiosChain::Pxelinux);
    let mut c = base.clone();
    c.subnets[0].pools = vec![(ip("10.77.1.1"), ip("10.77.1.5"))];
    let e = DhcpSettings::new(c).unwrap_err();
    assert!(matches!(
        e,
        SettingsError::PoolOutsideSubnet { subnet: 0, .. }
    ));
    assert!(e.to_string().contains("dhcp.subnets[0].pools[0]"), "{e}");

    let mut c = base.clone();
    c.subnets[0].pools = vec![(ip("10.77.0.9"), ip("10.77.0.5"))];
    assert!(matches!(
        DhcpSettings::new(c).unwrap_err(),
        SettingsError::PoolReversed { .. }
    ));

    let mut c = base.clone();
    c.reservations.push(Reservation {
        mac: mac(1),
        ip: Some(ip("172.16.0.1")),
        hostname: None,
        loader: None,
    });
    let e = DhcpSettings::new(c).unwrap_err();
    assert!(matches!(
        e,
        SettingsError::ReservationOutsideSubnets { index: 0, .. }
    ));
    assert!(e.to_string().contains("dhcp.reservations[0]"), "{e}");

    let mut c = base.clone();
    c.server_ip = ip("192.168.0.1");
    assert_eq!(
        DhcpSettings::new(c.clone()).unwrap_err(),
        SettingsError::ServerIpOutsideSubnets(ip("192.168.0.1"))
    );
    c.mode = DhcpMode::Proxy;
    assert!(
        DhcpSettings::new(c).is_ok(),
        "proxy mode needs no own subnet"
    );

    let mut c = base.clone();
    c.http_base = format!("http://{}", "a".repeat(120));
    assert!(matches!(
        DhcpSettings::new(c).unwrap_err(),
        SettingsError::HttpBaseTooLong(_)
    ));
    let mut c = base.clone();
    c.http_base = "http://10.77.0.1/".into();
    assert!(matches!(
        DhcpSettings::new(c).unwrap_err(),
        SettingsError::HttpBaseScheme(_)
    ));
    let mut c = base;
    c.subnets[1] = c.subnets[0].clone();
    c.subnets[1].network = "10.77.0.0/16".parse().unwrap();
    assert!(matches!(
        DhcpSettings::new(c).unwrap_err(),
        SettingsError::SubnetOverlap { .. }
    ));
}

#[test]
fn guid_is_rendered_like_smbios() {
    let p = qemu_bios_rom(mac(1), MessageType::Discover).bytes();
    let r = Request::parse(&p, client_src(), 67).unwrap();
    assert_eq!(
        r.guid_string().as_deref(),
        Some("12345678-1234-5678-0102-030405060708")
    );
    assert!(r.is_ipxe() && r.is_pxe_client());
    assert_eq!(r.arch, Some(0));
}

/// A DECLINE from `m` for `a`, naming no server.
fn decline(m: Mac, a: Ipv4Addr) -> Pkt {
    udhcpc(m, MessageType::Decline).opt(DhcpOption::RequestedIpAddress(a))
}

/// A unicast MAC from a counter (a client that changes its MAC for every packet).
fn nth_mac(i: u32) -> Mac {
    let b = i.to_be_bytes();
    Mac([0x02, 0x99, b[0], b[1], b[2], b[3]])
}

#[test]
fn decline_of_an_address_not_offered_or_leased_to_the_client_changes_nothing() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let a = discover_request(&mut site, mac(1), NOW);
    let before = site.table.footprint();
    // another MAC declines the leased address, free pool addresses, and addresses
    // of no pool at all
    for (i, target) in [a, ip("10.77.0.150"), ip("10.77.0.199"), ip("192.0.2.7")]
        .into_iter()
        .enumerate()
    {
        let d = site.run(&decline(mac(0x40 + i as u8), target));
        assert_eq!(dropped(&d), DropReason::DeclineNotTheClients(target));
        assert!(d.changes.is_empty());
    }
    assert_eq!(site.table.footprint(), before);
    assert_eq!(site.table.lease_of(&mac(1)).map(|l| l.ip), Some(a));
    let net: Ipv4Net = "10.77.0.0/24".parse().unwrap();
    assert_eq!(site.table.quarantined(&net, NOW), 0);
}

#[test]
fn decline_of_the_clients_offer_is_taken() {
    let mut site = Site::new(BiosChain::Pxelinux);
    let (offer, _, _) = reply(&site.run(&udhcpc(mac(1), MessageType::Discover)));
    let d = site.run(&decline(mac(1), offer.yiaddr()));
    assert_eq!(dropped(&d), DropReason::Declined(offer.yiaddr()));
    let net: Ipv4Net = "10.77.0.0/24".parse().unwrap();
    assert_eq!(site.table.quarantined(&net, NOW), 1);
    assert_ne!(discover_request(&mut site, mac(2), NOW), offer.yiaddr());
}

#[test]
fn a_client_cycling_macs_quarantines_at_most_a_quarter_of_the_pool() {
    // 100 addresses: at most 25 quarantined; 10,000 DISCOVER + DECLINE rounds, each
    // from a new MAC, leave the table bounded and the pool usable.
    let mut site = Site::new(BiosChain::Pxelinux);
    let net: Ipv4Net = "10.77.0.0/24".parse().unwrap();
    for i in 0..10_000u32 {
        let m = nth_mac(i);
        let (offer, _, _) = reply(&site.run(&udhcpc(m, MessageType::Discover)));
        let d = site.run(&decline(m, offer.yiaddr()));
        assert_eq!(dropped(&d), DropReason::Declined(offer.yiaddr()));
        assert!(site.table.quarantined(&net, NOW) <= 25);
        // quarantine (25) plus at most one address held per pool address
        assert!(
            site.table.footprint() <= 25 + 3 * 100,
            "{}",
            site.table.footprint()
        );
    }
    assert_eq!(site.table.quarantined(&net, NOW), 25);
    for k in 0..75u8 {
        let a = discover_request(&mut site, mac(k), NOW);
        assert!(in_pool(a, "10.77.0.100", "10.77.0.199"));
    }
}

#[test]
fn the_oldest_quarantined_address_is_let_go_first() {
    let mut c = config(BiosChain::Pxelinux);
    // 8 addresses: a quarantine of 2
    c.subnets[0].pools = vec![(ip("10.77.0.100"), ip("10.77.0.107"))];
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    let net: Ipv4Net = "10.77.0.0/24".parse().unwrap();
    let mut declined = Vec::new();
    for k in 1..=3u8 {
        let a = discover_request(&mut site, mac(k), NOW + u64::from(k));
        site.run_at(&decline(mac(k), a), 67, client_src(), NOW + u64::from(k));
        declined.push(a);
    }
    let at = NOW + 4;
    assert_eq!(site.table.quarantined(&net, at), 2);
    assert!(site.table.available_for(declined[0], &mac(9), at));
    assert!(!site.table.available_for(declined[1], &mac(9), at));
    assert!(!site.table.available_for(declined[2], &mac(9), at));
}

#[test]
fn a_tiny_pool_quarantines_nothing() {
    let mut c = config(BiosChain::Pxelinux);
    c.subnets[0].pools = vec![(ip("10.77.0.100"), ip("10.77.0.102"))];
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    let a = discover_request(&mut site, mac(1), NOW);
    let d = site.run(&decline(mac(1), a));
    assert_eq!(dropped(&d), DropReason::Declined(a));
    assert!(site.table.available_for(a, &mac(2), NOW));
}

#[test]
fn spoofed_giaddr_never_draws_from_a_relayed_pool() {
    let mut site = Site::new(BiosChain::Pxelinux);
    // a LAN host names the relayed subnet's gateway but sends from its own address
    let p = udhcpc(mac(0x50), MessageType::Discover).giaddr(RELAY);
    let src: SocketAddr = "10.77.0.66:68".parse().unwrap();
    assert_eq!(
        dropped(&site.run_at(&p, 67, src, NOW)),
        DropReason::RelayNotAllowed {
            giaddr: RELAY,
            from: ip("10.77.0.66")
        }
    );
    // the same with option 82 and from port 67 makes no difference
    let src: SocketAddr = "10.77.0.66:67".parse().unwrap();
    assert!(matches!(
        dropped(&site.run_at(&p, 67, src, NOW)),
        DropReason::RelayNotAllowed { .. }
    ));
    assert_eq!(site.table.footprint(), 0);
}

#[test]
fn listed_relays_are_the_only_ones_taken() {
    let mut c = config(BiosChain::Pxelinux);
    c.subnets[1].relays = vec![ip("10.77.0.2")];
    let mut site = Site::with(DhcpSettings::new(c).unwrap());
    let p = udhcpc(mac(0x51), MessageType::Discover).giaddr(RELAY);
    // the listed relay, sending from its upstream address (as dhcrelay does)
    let (m, _, dest) = reply(&site.run_at(&p, 67, "10.77.0.2:67".parse().unwrap(), NOW));
    assert!(in_pool(m.yiaddr(), "10.88.0.50", "10.88.0.60"));
    assert_eq!(dest, "10.88.0.1:67".parse().unwrap());
    // source = giaddr is not enough once relays are listed
    assert!(matches!(
        dropped(&site.run_at(&p, 67, "10.88.0.1:67".parse().unwrap(), NOW)),
        DropReason::RelayNotAllowed { .. }
    ));
    assert!(matches!(
        dropped(&site.run_at(&p, 67, "10.77.0.3:67".parse().unwrap(), NOW)),
        DropReason::RelayNotAllowed { .. }
    ));
}
