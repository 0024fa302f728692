//! The network I/O shell: finds NICs in sysfs, sets links up and configures addresses
//! over route netlink ([`super::rtnl`]), and runs the [`super::dhcp`] core over a UDP
//! socket bound to one NIC.
//! On an IPv6-only site ([`bring_up_v6`]) the kernel configures the address itself from
//! the edge's router advertisement (SLAAC); this only waits for it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::rtnl::Rtnl;
use socket2::{Domain, Protocol, Socket, Type};
use substruct_wire::Mac;
use tokio::net::UdpSocket;

use super::console;
use super::dhcp::{self, DhcpClient, Dropped, Lease, Offer, Reply};

const SYS_CLASS_NET: &str = "/sys/class/net";
/// How long to wait for the first NIC driver to register an interface.
const NIC_WAIT: Duration = Duration::from_secs(10);
/// How long to wait for link carrier after setting the links up.
const CARRIER_WAIT: Duration = Duration::from_secs(6);
/// How long to wait for a SLAAC address (router solicitation, advertisement, duplicate
/// address detection: about a second on a healthy link) before trying again.
const SLAAC_WAIT: Duration = Duration::from_secs(20);
/// The kernel's table of IPv6 addresses.
const PROC_IF_INET6: &str = "/proc/net/if_inet6";
/// DISCOVER retransmission timeouts, then REQUEST ones.
const DISCOVER_TIMEOUTS: [u64; 4] = [1, 2, 3, 4];
const REQUEST_TIMEOUTS: [u64; 3] = [2, 2, 3];

/// Why one step of bringing the network up failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a netlink socket")]
    Netlink(#[source] std::io::Error),
    #[error("netlink request to {what} failed")]
    Request {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCP socket on {nic}")]
    Socket {
        nic: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCP on {nic}: no {what} after {tries} tries{dropped}")]
    NoAnswer {
        nic: String,
        what: &'static str,
        tries: usize,
        dropped: Drops,
    },
    #[error("DHCP on {nic}: server {server} refused the request (NAK)")]
    Nak { nic: String, server: Ipv4Addr },
    #[error("DHCP on {nic}")]
    Dhcp {
        nic: String,
        #[source]
        source: dhcp::DhcpError,
    },
    #[error("{nic} has no usable MAC address or interface index in sysfs")]
    NoIdentity { nic: String },
}

/// Datagrams on port 68 dropped while waiting for an answer: how many, and the last
/// reason. Shown after a "no answer", so a console says why nothing was accepted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drops {
    pub count: u64,
    pub last: Option<Dropped>,
}

impl Drops {
    fn add(&mut self, why: Dropped) {
        tracing::debug!(why = %why, "DHCP datagram dropped");
        self.count = self.count.saturating_add(1);
        self.last = Some(why);
    }
}

impl std::fmt::Display for Drops {
    /// Nothing when nothing was dropped, else `; N datagrams dropped, the last: WHY`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.last {
            Some(why) if self.count > 0 => {
                let s = if self.count == 1 { "" } else { "s" };
                write!(f, "; {} datagram{s} dropped, the last: {why}", self.count)
            }
            _ => Ok(()),
        }
    }
}

/// One network interface as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
}

/// The interface that got a lease, and the lease.
#[derive(Debug, Clone)]
pub struct NetUp {
    pub nic: Nic,
    pub lease: Lease,
}

fn read_trimmed(path: PathBuf) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Ethernet interfaces (ARPHRD_ETHER, type 1) under `sys_class_net`, sorted by name;
/// loopback, and NICs without a usable MAC or index, are left out.
pub fn list_nics(sys_class_net: &Path) -> Vec<Nic> {
    let Ok(entries) = std::fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut nics: Vec<Nic> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let dir = entry.path();
            if name == "lo" || read_trimmed(dir.join("type")).as_deref() != Some("1") {
                return None;
            }
            let mac = Mac::parse(&read_trimmed(dir.join("address"))?).ok()?;
            let index = read_trimmed(dir.join("ifindex"))?.parse().ok()?;
            mac.is_usable().then_some(Nic { name, index, mac })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// `Some(true)` when the link has carrier; `None` while the link is down or unknown.
fn has_carrier(name: &str) -> Option<bool> {
    read_trimmed(Path::new(SYS_CLASS_NET).join(name).join("carrier")).map(|c| c == "1")
}

/// Waits (bounded) for at least one NIC to appear.
async fn wait_for_nics() -> Vec<Nic> {
    let deadline = Instant::now() + NIC_WAIT;
    loop {
        let nics = list_nics(Path::new(SYS_CLASS_NET));
        if !nics.is_empty() || Instant::now() >= deadline {
            return nics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn set_up(rtnl: &mut Rtnl, index: u32, name: &str) -> Result<(), NetError> {
    rtnl.link_up(index).map_err(|source| NetError::Request {
        what: format!("set {name} up"),
        source,
    })
}

/// UDP socket on 0.0.0.0:68, bound to `nic`, allowed to broadcast.
fn dhcp_socket(nic: &str) -> Result<UdpSocket, NetError> {
    let err = |source| NetError::Socket {
        nic: nic.to_owned(),
        source,
    };
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_broadcast(true).map_err(err)?;
    sock.bind_device(Some(nic.as_bytes())).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
    sock.bind(&local.into()).map_err(err)?;
    UdpSocket::from_std(sock.into()).map_err(err)
}

/// Sends `msg` and waits up to `wait` for a reply that `accept` takes; what it does not
/// take is counted in `dropped`.
async fn exchange<T>(
    sock: &UdpSocket,
    nic: &str,
    msg: &dhcproto::v4::Message,
    wait: Duration,
    dropped: &mut Drops,
    accept: impl Fn(&[u8]) -> Result<T, Dropped>,
) -> Result<Option<T>, NetError> {
    let bytes = dhcp::encode(msg).map_err(|source| NetError::Dhcp {
        nic: nic.to_owned(),
        source,
    })?;
    let server = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67));
    sock.send_to(&bytes, server)
        .await
        .map_err(|source| NetError::Socket {
            nic: nic.to_owned(),
            source,
        })?;
    let deadline = tokio::time::Instant::now() + wait;
    // One byte more than a reply may have, so a longer one is seen (and dropped) whole
    // rather than cut to a size that looks right.
    let mut buf = vec![0u8; usize::from(dhcp::MAX_MESSAGE_SIZE) + 1];
    loop {
        let recv = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
        let n = match recv {
            Err(_elapsed) => return Ok(None),
            Ok(Err(source)) => {
                return Err(NetError::Socket {
                    nic: nic.to_owned(),
                    source,
                })
            }
            Ok(Ok((n, _from))) => n,
        };
        // Anyone on the LAN can send to port 68: what is not our answer is dropped.
        let Some(bytes) = buf.get(..n) else { continue };
        match accept(bytes) {
            Ok(found) => return Ok(Some(found)),
            Err(why) => dropped.add(why),
        }
    }
}

/// One DISCOVER/OFFER/REQUEST/ACK exchange on `nic`.
pub async fn dhcp_lease(nic: &Nic) -> Result<Lease, NetError> {
    let sock = dhcp_socket(&nic.name)?;
    let client = DhcpClient::new(nic.mac, rand::random::<u32>());
    let started = Instant::now();
    let secs = || u16::try_from(started.elapsed().as_secs()).unwrap_or(u16::MAX);

    let mut dropped = Drops::default();
    let mut offer: Option<Offer> = None;
    for t in DISCOVER_TIMEOUTS {
        let wait = Duration::from_secs(t);
        let discover = client.discover(secs());
        offer = exchange(&sock, &nic.name, &discover, wait, &mut dropped, |b| {
            client.offer(b)
        })
        .await?;
        if offer.is_some() {
            break;
        }
    }
    let Some(offer) = offer else {
        return Err(NetError::NoAnswer {
            nic: nic.name.clone(),
            what: "DHCPOFFER",
            tries: DISCOVER_TIMEOUTS.len(),
            dropped,
        });
    };
    let mut dropped = Drops::default();
    for t in REQUEST_TIMEOUTS {
        let wait = Duration::from_secs(t);
        let request = client.request(&offer, secs());
        let reply = exchange(&sock, &nic.name, &request, wait, &mut dropped, |b| {
            client.reply(b, &offer)
        })
        .await?;
        match reply {
            Some(Reply::Ack(lease)) => return Ok(lease),
            Some(Reply::Nak) => {
                return Err(NetError::Nak {
                    nic: nic.name.clone(),
                    server: offer.server,
                })
            }
            None => {}
        }
    }
    Err(NetError::NoAnswer {
        nic: nic.name.clone(),
        what: "DHCPACK",
        tries: REQUEST_TIMEOUTS.len(),
        dropped,
    })
}

/// Puts the lease on the interface: address/prefix, default route, resolv.conf.
pub fn configure(rtnl: &mut Rtnl, nic: &Nic, lease: &Lease) -> Result<(), NetError> {
    rtnl.add_address(nic.index, lease.ip, lease.prefix)
        .map_err(|source| NetError::Request {
            what: format!("add {}/{} to {}", lease.ip, lease.prefix, nic.name),
            source,
        })?;
    if let Some(router) = lease.router {
        let onlink = !same_subnet(lease.ip, router, lease.prefix);
        rtnl.default_route(nic.index, router, onlink)
            .map_err(|source| NetError::Request {
                what: format!("default route via {router} on {}", nic.name),
                source,
            })?;
    }
    if !lease.dns.is_empty() {
        let text: String = lease
            .dns
            .iter()
            .map(|ip| format!("nameserver {ip}\n"))
            .collect();
        if let Err(e) = std::fs::write("/etc/resolv.conf", text) {
            console::step(&format!("cannot write /etc/resolv.conf: {e}"));
        }
    }
    Ok(())
}

/// When to renew a lease of `lease_secs`: at half its time (RFC 2131's T1), at least 30 s;
/// `None` for an infinite lease.
pub fn renew_after(lease_secs: Option<u32>) -> Option<Duration> {
    match lease_secs {
        None | Some(u32::MAX) => None,
        Some(secs) => Some(Duration::from_secs(u64::from(secs / 2).max(30))),
    }
}

/// Keeps the address while PID 1 waits for instructions: a new exchange on the same NIC
/// at half the lease time (retried every 30 s on failure); a changed address is
/// configured and announced with a new `SUBSTRUCT-NET-UP` line. Runs forever.
pub async fn keep_lease(mut up: NetUp) {
    loop {
        let Some(wait) = renew_after(up.lease.lease_secs) else {
            return;
        };
        tokio::time::sleep(wait).await;
        let renewed = match dhcp_lease(&up.nic).await {
            Ok(lease) => lease,
            Err(e) => {
                console::error(&format!("lease renewal: {}", console::chain(&e)));
                up.lease.lease_secs = Some(60);
                continue;
            }
        };
        let result = netlink().and_then(|mut rtnl| {
            configure(&mut rtnl, &up.nic, &renewed).map_err(|e| console::chain(&e))
        });
        match result {
            Ok(()) if renewed.ip != up.lease.ip => {
                console::line(&format!(
                    "{} if={} ip={}/{} (address changed at renewal)",
                    console::MARKER_NET_UP,
                    up.nic.name,
                    renewed.ip,
                    renewed.prefix
                ));
            }
            Ok(()) => {}
            Err(e) => console::error(&format!("lease renewal: {e}")),
        }
        up.lease = renewed;
    }
}

/// True when `a` and `b` share the first `prefix` bits.
pub fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// Brings the network up: waits for NICs, sets them (and lo) up, and tries DHCP on each
/// NIC with carrier until one gets a lease. Retries forever with backoff, saying why.
pub async fn bring_up() -> NetUp {
    retry_forever(async || {
        let mut rtnl = netlink()?;
        try_with(&mut rtnl).await
    })
    .await
}

/// Runs `attempt` until it succeeds, saying why each failure happened and waiting the
/// DHCP backoff between tries.
async fn retry_forever<T>(mut attempt: impl AsyncFnMut() -> Result<T, String>) -> T {
    let mut round: u32 = 0;
    loop {
        match attempt().await {
            Ok(up) => return up,
            Err(why) => {
                let wait = dhcp::backoff_secs(round);
                console::error(&format!("network: {why}; retrying in {wait} s"));
                tokio::time::sleep(Duration::from_secs(wait)).await;
                round = round.saturating_add(1);
            }
        }
    }
}

/// A route-netlink socket.
fn netlink() -> Result<Rtnl, String> {
    Rtnl::open().map_err(|e| console::chain(&NetError::Netlink(e)))
}

async fn try_with(rtnl: &mut Rtnl) -> Result<NetUp, String> {
    let with_carrier = links_up(rtnl).await?;
    let mut why = Vec::new();
    for nic in &with_carrier {
        console::step(&format!("DHCP on {} ({})", nic.name, nic.mac));
        let lease = match dhcp_lease(nic).await {
            Ok(lease) => lease,
            Err(e) => {
                let text = console::chain(&e);
                console::step(&text);
                why.push(text);
                continue;
            }
        };
        match configure(rtnl, nic, &lease) {
            Ok(()) => {
                return Ok(NetUp {
                    nic: nic.clone(),
                    lease,
                })
            }
            Err(e) => why.push(console::chain(&e)),
        }
    }
    Err(why.join("; "))
}

/// The interface with a global IPv6 address, and the address.
#[derive(Debug, Clone)]
pub struct NetUp6 {
    pub nic: Nic,
    pub ip: Ipv6Addr,
    pub prefix: u8,
}

/// Brings the network up on an IPv6-only site: sets the links up and waits for the
/// kernel to configure a global address by SLAAC on a NIC with carrier (the boot NIC
/// first). Retries forever with backoff, saying why. The kernel keeps the address.
pub async fn bring_up_v6() -> NetUp6 {
    retry_forever(async || {
        let mut rtnl = netlink()?;
        try_v6(&mut rtnl).await
    })
    .await
}

async fn try_v6(rtnl: &mut Rtnl) -> Result<NetUp6, String> {
    let with_carrier = links_up(rtnl).await?;
    let names: Vec<&str> = with_carrier.iter().map(|n| n.name.as_str()).collect();
    console::step(&format!(
        "IPv6 only: waiting for an address from the router advertisement on {}",
        names.join(" ")
    ));
    let started = Instant::now();
    loop {
        let table = std::fs::read_to_string(PROC_IF_INET6).unwrap_or_default();
        // The boot NIC comes first in `with_carrier`.
        for nic in &with_carrier {
            if let Some((ip, prefix)) = global_address(&table, &nic.name) {
                return Ok(NetUp6 {
                    nic: nic.clone(),
                    ip,
                    prefix,
                });
            }
        }
        if started.elapsed() >= SLAAC_WAIT {
            return Err(format!(
                "no global IPv6 address on {} after {SLAAC_WAIT:?} (no router advertisement \
                 with an autonomous prefix?)",
                names.join(" ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first usable global address of interface `name` in a `/proc/net/if_inet6` text
/// (`address ifindex prefixlen scope flags name`, hex): scope global, past duplicate
/// address detection (not tentative, DAD not failed).
pub fn global_address(table: &str, name: &str) -> Option<(Ipv6Addr, u8)> {
    const SCOPE_GLOBAL: u8 = 0x00;
    const IFA_F_DADFAILED: u32 = 0x08;
    const IFA_F_TENTATIVE: u32 = 0x40;
    table.lines().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [addr, _index, prefix, scope, flags, ifname] = cols.as_slice() else {
            return None;
        };
        if *ifname != name || addr.len() != 32 {
            return None;
        }
        let bits = u128::from_str_radix(addr, 16).ok()?;
        let prefix = u8::from_str_radix(prefix, 16).ok()?;
        let scope = u8::from_str_radix(scope, 16).ok()?;
        let flags = u32::from_str_radix(flags, 16).ok()?;
        (scope == SCOPE_GLOBAL && flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) == 0)
            .then_some((Ipv6Addr::from(bits), prefix))
    })
}

/// Sets lo and every NIC up and returns the NICs with carrier, the boot NIC first.
async fn links_up(rtnl: &mut Rtnl) -> Result<Vec<Nic>, String> {
    let nics = wait_for_nics().await;
    if nics.is_empty() {
        return Err(format!(
            "no Ethernet interface in {SYS_CLASS_NET} after {NIC_WAIT:?} (driver missing from the image?)"
        ));
    }
    let names: Vec<&str> = nics.iter().map(|n| n.name.as_str()).collect();
    console::step(&format!("NICs found: {}", names.join(" ")));
    if let Ok(lo) = std::fs::read_to_string("/sys/class/net/lo/ifindex") {
        if let Ok(index) = lo.trim().parse() {
            let _ = set_up(rtnl, index, "lo");
        }
    }
    for nic in &nics {
        if let Err(e) = set_up(rtnl, nic.index, &nic.name) {
            console::error(&console::chain(&e));
        }
    }
    // The NIC the machine network-booted from (BOOTIF, passed by the edge) goes first:
    // the other ports may sit on networks with no DHCP server, each costing a timeout.
    let boot_mac = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|line| bootif_mac(&line));
    // Wait for carrier on every NIC, but no more than a second once any NIC has it, and
    // not at all once the boot NIC has it.
    let started = Instant::now();
    let with_carrier = loop {
        let up: Vec<&Nic> = nics
            .iter()
            .filter(|n| has_carrier(&n.name) == Some(true))
            .collect();
        let waited = started.elapsed();
        if up.len() == nics.len()
            || up.iter().any(|n| Some(n.mac) == boot_mac)
            || (!up.is_empty() && waited >= Duration::from_secs(1))
            || waited >= CARRIER_WAIT
        {
            break up;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if with_carrier.is_empty() {
        return Err(format!(
            "no carrier on {} after {CARRIER_WAIT:?}",
            names.join(" ")
        ));
    }
    let mut with_carrier: Vec<Nic> = with_carrier.into_iter().cloned().collect();
    if let Some(boot_mac) = boot_mac {
        with_carrier.sort_by_key(|n| n.mac != boot_mac);
    }
    Ok(with_carrier)
}

/// The MAC of `BOOTIF=01-aa-bb-cc-dd-ee-ff` (the pxelinux convention) on a kernel
/// command line.
pub fn bootif_mac(cmdline: &str) -> Option<Mac> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("BOOTIF="))
        .and_then(|v| v.strip_prefix("01-"))
        .and_then(|mac| Mac::parse(mac).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_nic(root: &Path, name: &str, kind: &str, mac: &str, index: &str) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        std::fs::write(dir.join("address"), format!("{mac}\n")).unwrap();
        std::fs::write(dir.join("ifindex"), format!("{index}\n")).unwrap();
    }

    #[test]
    fn lists_ethernet_nics_only() {
        let tmp = tempfile::tempdir().unwrap();
        fake_nic(tmp.path(), "lo", "772", "00:00:00:00:00:00", "1");
        fake_nic(tmp.path(), "eth1", "1", "52:54:00:00:00:02", "3");
        fake_nic(tmp.path(), "eth0", "1", "52:54:00:00:00:01", "2");
        fake_nic(tmp.path(), "ib0", "32", "52:54:00:00:00:03", "4");
        fake_nic(tmp.path(), "bad0", "1", "not-a-mac", "5");
        let nics = list_nics(tmp.path());
        let names: Vec<&str> = nics.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1"]);
        assert_eq!(nics[0].index, 2);
        assert_eq!(nics[0].mac.to_string(), "52:54:00:00:00:01");
        assert!(list_nics(&tmp.path().join("missing")).is_empty());
    }

    #[test]
    fn global_addresses_come_from_if_inet6_once_past_dad() {
        let table = "\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000505400fffe77600a 02 40 20 80     eth0
fd77000000000000505400fffe77600a 02 40 00 40     eth0
fd77000000000000505400fffe77600b 03 40 00 00     eth1
garbage line
";
        // eth0's global address is still tentative; its link-local one is not global.
        assert_eq!(global_address(table, "eth0"), None);
        assert_eq!(
            global_address(table, "eth1"),
            Some(("fd77::5054:ff:fe77:600b".parse().unwrap(), 64))
        );
        let done = table.replace(" 00 40     eth0", " 00 00     eth0");
        assert_eq!(
            global_address(&done, "eth0"),
            Some(("fd77::5054:ff:fe77:600a".parse().unwrap(), 64))
        );
        // DAD failed: not usable.
        let failed = table.replace(" 00 40     eth0", " 00 08     eth0");
        assert_eq!(global_address(&failed, "eth0"), None);
        assert_eq!(global_address("", "eth0"), None);
        assert_eq!(global_address(table, "lo"), None);
    }

    #[test]
    fn renewal_times() {
        assert_eq!(renew_after(Some(3600)), Some(Duration::from_secs(1800)));
        assert_eq!(renew_after(Some(10)), Some(Duration::from_secs(30)));
        assert_eq!(renew_after(None), None);
        assert_eq!(renew_after(Some(u32::MAX)), None);
    }

    #[test]
    fn bootif_names_the_boot_nic() {
        let line = "initrd=initrd.img BOOTIF=01-52-54-00-5b-00-01 panic=-1";
        assert_eq!(bootif_mac(line), Mac::parse("52:54:00:5b:00:01").ok());
        assert_eq!(bootif_mac("BOOTIF=52-54-00-5b-00-01"), None);
        assert_eq!(bootif_mac("BOOTIF=01-zz"), None);
        assert_eq!(bootif_mac("quiet"), None);
    }

    #[test]
    fn drops_say_how_many_and_the_last_reason() {
        let mut drops = Drops::default();
        assert_eq!(drops.to_string(), "");
        drops.add(Dropped::MissingMessageType);
        assert_eq!(
            drops.to_string(),
            "; 1 datagram dropped, the last: no option 53 (message type)"
        );
        drops.add(Dropped::OtherTransaction { got: 7 });
        assert_eq!(
            drops.to_string(),
            "; 2 datagrams dropped, the last: transaction 0x00000007, not ours"
        );
    }

    #[test]
    fn subnets() {
        let a = Ipv4Addr::new(10, 77, 0, 150);
        assert!(same_subnet(a, Ipv4Addr::new(10, 77, 0, 1), 24));
        assert!(!same_subnet(a, Ipv4Addr::new(10, 78, 0, 1), 24));
        assert!(same_subnet(a, Ipv4Addr::new(10, 78, 0, 1), 8));
        assert!(same_subnet(a, Ipv4Addr::new(1, 2, 3, 4), 0));
        assert!(!same_subnet(a, Ipv4Addr::new(10, 77, 0, 151), 32));
    }
}
