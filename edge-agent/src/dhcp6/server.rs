//! The DHCPv6 I/O shell: one UDP socket on `[::]:547` bound to the provisioning
//! interface and joined to All_DHCP_Relay_Agents_and_Servers (ff02::1:2); each message
//! is decided under the table's lock, its lease changes are committed to the lease
//! store (durably, before the reply), then the reply goes to the client's link-local
//! address. A store that fails drops the reply (the client retries) and is logged.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use substruct_runtime::error_chain;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::core::{decide_raw, Action6, Dhcp6Settings, Lease6Table};
use super::packet::msg;
use crate::dhcp::store::LeaseStore;
use crate::dhcp::DhcpError;
use crate::intents::IntentTable;
use crate::metrics::{Dhcp6Message, Dhcp6Result, Metrics};

/// All_DHCP_Relay_Agents_and_Servers.
pub const ALL_DHCP_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// The DHCPv6 server port.
pub const SERVER_PORT: u16 = 547;

/// A UDP socket for DHCPv6 on `interface` (index `ifindex`): `[::]:port`, IPv6 only,
/// SO_BINDTODEVICE, joined to ff02::1:2 on that interface, non-blocking.
pub fn bind_socket6(interface: &str, ifindex: u32, port: u16) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)).into())?;
    s.join_multicast_v6(&ALL_DHCP_SERVERS, ifindex)?;
    Ok(s.into())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn type_label(t: u8) -> &'static str {
    match t {
        msg::SOLICIT => "solicit",
        msg::ADVERTISE => "advertise",
        msg::REQUEST => "request",
        msg::CONFIRM => "confirm",
        msg::RENEW => "renew",
        msg::REBIND => "rebind",
        msg::REPLY => "reply",
        msg::RELEASE => "release",
        msg::DECLINE => "decline",
        msg::INFORMATION_REQUEST => "information-request",
        _ => "other",
    }
}

/// Serves DHCPv6 on `socket` until `cancel`. The leases stored in `leases` are loaded
/// first. Counts into metrics of its own; see [`serve6_with_metrics`].
pub async fn serve6(
    settings: Arc<Dhcp6Settings>,
    socket: UdpSocket,
    intents: IntentTable,
    leases: LeaseStore,
    cancel: CancellationToken,
) -> Result<(), DhcpError> {
    let metrics = Arc::new(Metrics::new());
    serve6_with_metrics(settings, socket, intents, leases, metrics, cancel).await
}

/// [`serve6`], counting every packet and the active leases into `metrics.dhcp6`.
pub async fn serve6_with_metrics(
    settings: Arc<Dhcp6Settings>,
    socket: UdpSocket,
    intents: IntentTable,
    leases: LeaseStore,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), DhcpError> {
    let m = &metrics.dhcp6;
    let loader = leases.clone();
    let stored = tokio::task::spawn_blocking(move || loader.load6())
        .await
        .map_err(|e| DhcpError::Io {
            what: "loading DHCPv6 leases",
            source: io::Error::other(e),
        })?
        .map_err(DhcpError::Store)?;
    let loaded = stored.len();
    let mut table = Lease6Table::from_leases(stored);
    m.set_leases(table.active_leases(now_secs()), settings.pool_size);
    info!(pool_start = %settings.pool_start, pool_size = settings.pool_size,
        address = %settings.address, leases = loaded, "DHCPv6 server running");
    let mut buf = vec![0u8; 2048];
    // The lease gauge is recounted once a second (a count walks the whole table),
    // not per batch.
    let mut recount = tokio::time::interval(LEASE_RECOUNT);
    recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Wait for one datagram, then take whatever else is already queued (up to
        // BATCH): their lease changes go to disk in one transaction (one fsync) before
        // any of their replies leave, as DHCPv4 does.
        let first = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = recount.tick() => {
                m.set_leases(table.active_leases(now_secs()), settings.pool_size);
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => continue,
                Err(source) => return Err(DhcpError::Io { what: "receiving DHCPv6", source }),
            },
        };
        let mut pending: Vec<Pending> = Vec::new();
        let mut next = Some(first);
        // Datagrams read for this batch, dropped ones included: a flood of garbage
        // cannot hold the batch's replies back for long.
        let mut read = 0usize;
        while let Some((len, from)) = next.take() {
            read += 1;
            if let SocketAddr::V6(from) = from {
                let packet = buf.get(..len).unwrap_or_default();
                let kind = packet.first().copied().unwrap_or(0);
                let d = decide_raw(
                    packet,
                    from,
                    &settings,
                    &mut table,
                    |mac| intents.get(mac).map(|r| r.intent),
                    now_secs(),
                );
                let counted = Dhcp6Message::of(kind);
                match d.action {
                    Action6::Drop { reason } => {
                        debug!(%from, message = type_label(kind), %reason, "DHCPv6 dropped");
                        m.packet(counted, Dhcp6Result::Dropped);
                    }
                    Action6::Reply { packet, dest } => pending.push(Pending {
                        from,
                        kind,
                        reply: packet,
                        dest,
                        changes: d.changes,
                        mac: d.mac,
                        boot_url: d.boot_url,
                    }),
                }
            }
            if pending.len() < BATCH && read < 4 * BATCH {
                next = match socket.try_recv_from(&mut buf) {
                    Ok(x) => Some(x),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                    Err(source) => {
                        return Err(DhcpError::Io {
                            what: "receiving DHCPv6",
                            source,
                        })
                    }
                };
            }
        }
        if pending.is_empty() {
            continue;
        }
        let changes: Vec<_> = pending
            .iter()
            .flat_map(|p| p.changes.iter().cloned())
            .collect();
        let stored = if changes.is_empty() {
            true
        } else {
            let store = leases.clone();
            match tokio::task::spawn_blocking(move || store.apply6(&changes)).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    warn!(error = %error_chain(&e), "DHCPv6 leases not stored; their replies withheld (the clients retry)");
                    false
                }
                Err(e) => {
                    warn!(error = %e, "DHCPv6 lease store task failed; replies withheld");
                    false
                }
            }
        };
        for p in pending {
            let counted = Dhcp6Message::of(p.kind);
            if !stored && !p.changes.is_empty() {
                m.packet(counted, Dhcp6Result::NotStored);
                continue;
            }
            match socket.send_to(&p.reply, SocketAddr::V6(p.dest)).await {
                Ok(_) => {
                    debug!(from = %p.from, message = type_label(p.kind), mac = ?p.mac,
                        boot_url = p.boot_url.as_deref().unwrap_or(""), "DHCPv6 answered");
                    m.packet(counted, Dhcp6Result::Answered);
                }
                Err(e) => {
                    warn!(dest = %p.dest, error = %e, "cannot send a DHCPv6 reply");
                    m.packet(counted, Dhcp6Result::SendFailed);
                }
            }
        }
    }
}

/// How often the active-lease gauge is recounted.
const LEASE_RECOUNT: std::time::Duration = std::time::Duration::from_secs(1);

/// Most datagrams decided and committed together.
const BATCH: usize = 64;

/// A decided message whose reply waits for its batch's commit.
struct Pending {
    from: SocketAddrV6,
    kind: u8,
    reply: Vec<u8>,
    dest: SocketAddrV6,
    changes: Vec<super::core::Lease6Change>,
    mac: Option<substruct_wire::Mac>,
    boot_url: Option<String>,
}
