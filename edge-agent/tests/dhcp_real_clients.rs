//! Real DHCP clients against the in-process server, in namespaces this test creates:
//! busybox udhcpc on the same link, restart of the server (same client → same
//! address), isc-dhcp-relay relaying a second subnet, and a sweep of a million
//! DECLINEs from random MACs that must leave the server's memory and pool intact.
//!
//! Needs root, `ip netns`, busybox and dhcrelay (Debian: busybox-static,
//! isc-dhcp-relay); skipped otherwise, or failed under
//! `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1` (see `substruct_testkit::gate`).

#[path = "dhcp_netns.rs"]
mod netns;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netns::dhcp_socket;
use substruct_edge::dhcp::{
    decide_raw, serve_with_events, DhcpConfig, DhcpSettings, LeaseStore, LeaseTable, Subnet,
};
use substruct_edge::intents::IntentTable;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::{Netns, NsProcess};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// What these tests need from the host.
const NEEDS: &[Need<'static>] = &[Need::Netns, Need::Tool("busybox"), Need::Tool("dhcrelay")];

struct Server {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), substruct_edge::dhcp::DhcpError>>,
}

impl Server {
    fn start(
        ns: &Netns,
        iface: &str,
        settings: Arc<DhcpSettings>,
        store: LeaseStore,
    ) -> Result<Self> {
        let sock = UdpSocket::from_std(dhcp_socket(ns, iface, 67)?)?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve_with_events(
            settings,
            vec![sock],
            IntentTable::new(),
            store,
            None,
            cancel.clone(),
        ));
        Ok(Self { cancel, task })
    }
    async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("server did not stop")???;
        Ok(())
    }
}

/// Runs busybox udhcpc once in `ns` on `iface` and returns the address it was given.
async fn udhcpc(ns: &Netns, iface: &str, dir: &std::path::Path) -> Result<Ipv4Addr> {
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && echo \"BOUND $ip\"\nexit 0\n",
    )?;
    std::process::Command::new("chmod")
        .args(["+x"])
        .arg(&script)
        .status()?;
    let script = script.to_string_lossy().into_owned();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        ns.tokio_command("busybox")
            .args([
                "udhcpc", "-i", iface, "-n", "-q", "-f", "-t", "6", "-T", "1",
            ])
            .args(["-s", &script])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("udhcpc timed out")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        if let Some(ip) = line.strip_prefix("BOUND ") {
            return Ok(ip.trim().parse()?);
        }
    }
    bail!(
        "udhcpc got no lease: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    )
}

fn in_range(ip: Ipv4Addr, lo: [u8; 4], hi: [u8; 4]) -> bool {
    (u32::from_be_bytes(lo)..=u32::from_be_bytes(hi)).contains(&u32::from(ip))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udhcpc_gets_a_pool_address_and_keeps_it_across_a_restart() -> Result<()> {
    if !system_test(NEEDS) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let srv = Netns::create("a")?;
    let cli = Netns::create("b")?;
    srv.veth_pair("dsrv0", &cli, "dcli0")?;
    srv.ip(&["addr", "add", "10.77.0.1/24", "dev", "dsrv0"])?;
    let settings = Arc::new(DhcpSettings::new(DhcpConfig::new(
        "10.77.0.1".parse()?,
        "http://10.77.0.1",
        Subnet {
            network: "10.77.0.0/24".parse()?,
            pools: vec![("10.77.0.100".parse()?, "10.77.0.199".parse()?)],
            router: Some("10.77.0.1".parse()?),
            dns: vec![],
            lease_time: Duration::from_secs(3600),
            relays: vec![],
            uefi_loader: None,
        },
    ))?);
    let db = dir.path().join("leases.redb");

    let server = Server::start(&srv, "dsrv0", settings.clone(), LeaseStore::open(&db)?)?;
    let first = udhcpc(&cli, "dcli0", dir.path()).await?;
    assert!(
        in_range(first, [10, 77, 0, 100], [10, 77, 0, 199]),
        "{first}"
    );
    server.stop().await?;

    // a restarted server (fresh table, loaded from redb) gives the same address back
    let store = LeaseStore::open(&db)?;
    assert_eq!(store.load()?.len(), 1);
    let server = Server::start(&srv, "dsrv0", settings, store)?;
    let second = udhcpc(&cli, "dcli0", dir.path()).await?;
    assert_eq!(first, second);
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_behind_dhcrelay_gets_an_address_of_the_relayed_subnet() -> Result<()> {
    if !system_test(NEEDS) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let srv = Netns::create("rs")?;
    let relay = Netns::create("rr")?;
    let cli = Netns::create("rc")?;
    srv.veth_pair("dsrv1", &relay, "drelup")?;
    relay.veth_pair("dreldn", &cli, "dcli1")?;
    srv.ip(&["addr", "add", "10.77.1.1/24", "dev", "dsrv1"])?;
    srv.ip(&["route", "add", "10.88.1.0/24", "via", "10.77.1.2"])?;
    relay.ip(&["addr", "add", "10.77.1.2/24", "dev", "drelup"])?;
    relay.ip(&["addr", "add", "10.88.1.1/24", "dev", "dreldn"])?;

    let mut config = DhcpConfig::new(
        "10.77.1.1".parse()?,
        "http://10.77.1.1",
        Subnet {
            network: "10.77.1.0/24".parse()?,
            pools: vec![("10.77.1.100".parse()?, "10.77.1.199".parse()?)],
            router: None,
            dns: vec![],
            lease_time: Duration::from_secs(3600),
            relays: vec![],
            uefi_loader: None,
        },
    );
    config.subnets.push(Subnet {
        network: "10.88.1.0/24".parse()?,
        pools: vec![("10.88.1.100".parse()?, "10.88.1.150".parse()?)],
        router: Some("10.88.1.1".parse()?),
        dns: vec![],
        lease_time: Duration::from_secs(600),
        // dhcrelay sends from its upstream address, not from giaddr (10.88.1.1)
        relays: vec!["10.77.1.2".parse()?],
        uefi_loader: None,
    });
    let settings = Arc::new(DhcpSettings::new(config)?);
    let server = Server::start(
        &srv,
        "dsrv1",
        settings,
        LeaseStore::open(dir.path().join("l.redb"))?,
    )?;

    // -a adds option 82 (circuit id), -D drops replies whose 82 does not match
    let pid = dir.path().join("dhcrelay.pid");
    let pid = pid.to_str().context("temp path is not UTF-8")?;
    let mut dhcrelay = NsProcess::spawn(
        &relay,
        "dhcrelay",
        "dhcrelay",
        &[
            "-d",
            "-q",
            "-4",
            "-a",
            "-D",
            "-pf",
            pid,
            "-id",
            "dreldn",
            "-iu",
            "drelup",
            "10.77.1.1",
        ],
        dir.path().join("dhcrelay.log"),
    )?;
    let ip = udhcpc(&cli, "dcli1", dir.path())
        .await
        .with_context(|| format!("dhcrelay log:\n{}", dhcrelay.log_text()))?;
    dhcrelay.check_alive()?;
    assert!(in_range(ip, [10, 88, 1, 100], [10, 88, 1, 150]), "{ip}");
    server.stop().await?;
    Ok(())
}

/// A DECLINE of `ip` from `mac` (no server identifier), 300 bytes.
fn decline_packet(mac: [u8; 6], ip: Ipv4Addr, xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 300];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    let opts = [53, 1, 4, 50, 4];
    p[240..245].copy_from_slice(&opts);
    p[245..249].copy_from_slice(&ip.octets());
    p[249] = 255;
    p
}

/// The `i`th packet of the sweep: address `10.77.0.0 + i` (the pool lies inside), a
/// pseudo-random unicast MAC.
fn sweep_packet(i: u32, state: &mut u64) -> Vec<u8> {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let b = state.to_be_bytes();
    let mac = [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]];
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 0, 0)).wrapping_add(i));
    decline_packet(mac, ip, i)
}

const SWEEP: u32 = 1_000_000;

/// Resident set size of this process (the in-process server), in KiB.
fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// The receive queue (bytes) of the UDP socket bound to `port` in `ns`, from
/// `/proc/net/udp`; `None` while no socket is bound there.
fn udp_rx_queue(ns: &Netns, port: u16) -> Result<Option<u64>> {
    let table = ns.exec("cat", &["/proc/net/udp"])?;
    let wanted = format!(":{port:04X}");
    Ok(table.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1)?;
        let queues = cols.nth(2)?;
        if !local.ends_with(&wanted) {
            return None;
        }
        let rx = queues.split_once(':')?.1;
        u64::from_str_radix(rx, 16).ok()
    }))
}

/// Waits (bounded) until a socket is bound to `port` in `ns` and its receive queue is empty.
async fn wait_for_udp_queue(ns: &Netns, port: u16, what: &str) -> Result<()> {
    substruct_testkit::try_poll(
        what,
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async { Ok((udp_rx_queue(ns, port)? == Some(0)).then_some(())) },
    )
    .await
}

/// UDP datagrams the namespace dropped for a full receive buffer.
fn udp_rcvbuf_errors(ns: &Netns) -> Result<u64> {
    let snmp = ns.exec("cat", &["/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .context("no RcvbufErrors")
}

fn sweep_settings() -> Result<DhcpSettings> {
    Ok(DhcpSettings::new(DhcpConfig::new(
        "10.77.2.1".parse()?,
        "http://10.77.2.1",
        Subnet {
            network: "10.77.2.0/24".parse()?,
            pools: vec![("10.77.2.100".parse()?, "10.77.2.199".parse()?)],
            router: None,
            dns: vec![],
            lease_time: Duration::from_secs(3600),
            relays: vec![],
            uefi_loader: None,
        },
    ))?)
}

#[test]
fn a_million_declines_leave_the_lease_table_empty() -> Result<()> {
    let settings = sweep_settings()?;
    let mut table = LeaseTable::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let src = "10.77.2.250:68".parse()?;
    for i in 0..SWEEP {
        let p = sweep_packet(i, &mut state);
        decide_raw(&p, src, 67, &settings, &mut table, |_| None, 1_800_000_000);
        assert_eq!(table.footprint(), 0, "packet {i}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_sweep_leaves_memory_bounded_and_clients_get_leases() -> Result<()> {
    if !system_test(NEEDS) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let srv = Netns::create("ds")?;
    let cli = Netns::create("dc")?;
    srv.veth_pair("dsrv2", &cli, "dcli2")?;
    srv.ip(&["addr", "add", "10.77.2.1/24", "dev", "dsrv2"])?;
    // the attacker's own address (outside the pool) on the clients' link
    cli.ip(&["addr", "add", "10.77.2.250/24", "dev", "dcli2"])?;
    let server = Server::start(
        &srv,
        "dsrv2",
        Arc::new(sweep_settings()?),
        LeaseStore::open(dir.path().join("l.redb"))?,
    )?;
    wait_for_udp_queue(&srv, 67, "the server's socket to be bound").await?;
    let rss_before = rss_kib()?;
    let dropped_before = udp_rcvbuf_errors(&srv)?;

    let sender = cli.spawn_inside(move || -> Result<u32> {
        let sock = std::net::UdpSocket::bind("10.77.2.250:68")?;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..SWEEP {
            sock.send_to(&sweep_packet(i, &mut state), "10.77.2.1:67")?;
            if i % 256 == 255 {
                // pace the sweep so that most of it reaches the server
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(SWEEP)
    });
    let sent = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    wait_for_udp_queue(&srv, 67, "the server to drain its socket").await?;
    let rss_after = rss_kib()?;
    let dropped = udp_rcvbuf_errors(&srv)?.saturating_sub(dropped_before);
    println!(
        "DECLINE sweep: {sent} sent, {} reached the server ({dropped} dropped by the kernel); \
         RSS {rss_before} KiB before, {rss_after} KiB after",
        u64::from(sent).saturating_sub(dropped)
    );
    // a table of the swept addresses would need tens of MiB
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let ip = udhcpc(&cli, "dcli2", dir.path()).await?;
    assert!(in_range(ip, [10, 77, 2, 100], [10, 77, 2, 199]), "{ip}");
    println!("udhcpc then got {ip}");
    server.stop().await?;
    Ok(())
}
