//! Real DHCP clients against the in-process server, in namespaces this test creates:
//! busybox udhcpc on the same link, restart of the server (same client → same
//! address), and isc-dhcp-relay relaying a second subnet.
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
use substruct_edge::dhcp::{serve_with_events, DhcpConfig, DhcpSettings, LeaseStore, Subnet};
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
        },
    );
    config.subnets.push(Subnet {
        network: "10.88.1.0/24".parse()?,
        pools: vec![("10.88.1.100".parse()?, "10.88.1.150".parse()?)],
        router: Some("10.88.1.1".parse()?),
        dns: vec![],
        lease_time: Duration::from_secs(600),
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
