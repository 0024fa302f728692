//! A real DHCPv6 client against the in-process DHCPv6 server, in namespaces this test
//! creates: ISC `dhclient -6` gets a stateful address from the pool; the lease is in
//! the store, and after a restart of the server the same client gets the same address.
//!
//! Needs root, `ip netns` and dhclient (Debian: isc-dhcp-client); skipped otherwise, or
//! failed under `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1` (see `substruct_testkit::gate`).

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use substruct_edge::dhcp::{LeaseStore, UefiLoader};
use substruct_edge::dhcp6::{bind_socket6, serve6, Dhcp6Settings};
use substruct_edge::intents::IntentTable;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::Netns;
use substruct_wire::Mac;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const NEEDS: &[Need<'static>] = &[Need::Netns, Need::Tool("dhclient")];

struct Server {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), substruct_edge::dhcp::DhcpError>>,
}

impl Server {
    fn start(
        ns: &Netns,
        iface: &str,
        settings: Arc<Dhcp6Settings>,
        store: LeaseStore,
    ) -> Result<Self> {
        // `ip -o link` prints "INDEX: NAME: ...".
        let out = ns.ip(&["-o", "link", "show", "dev", iface])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let index: u32 = text
            .split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("the index of {iface} in {text:?}"))?;
        let sock = ns.run_inside(|| {
            bind_socket6(iface, index, 547).with_context(|| format!("binding [::]:547 on {iface}"))
        })?;
        let sock = UdpSocket::from_std(sock)?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve6(
            settings,
            sock,
            IntentTable::new(),
            store,
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

/// Waits until `iface` in `ns` has a usable (not tentative) link-local address.
async fn wait_link_local(ns: &Netns, iface: &str) -> Result<()> {
    for _ in 0..100 {
        let out = ns
            .tokio_command("ip")
            .args(["-6", "addr", "show", "dev", iface, "scope", "link"])
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("inet6 fe80") && !text.contains("tentative") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{iface} has no link-local address")
}

/// Runs `dhclient -6 -1` once in `ns` on `iface` (its own lease file, no script: the
/// address is not configured) and returns the address it leased.
async fn dhclient6(ns: &Netns, iface: &str, dir: &std::path::Path) -> Result<Ipv6Addr> {
    let leases = dir.join("dhclient6.leases");
    let _ = std::fs::remove_file(&leases);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        ns.tokio_command("dhclient")
            .args(["-6", "-1", "-v", "-D", "LL", "-sf", "/bin/true", "-lf"])
            .arg(&leases)
            .arg("-pf")
            .arg(dir.join("dhclient6.pid"))
            .arg(iface)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("dhclient -6 timed out")??;
    // -1 leaves the client running once it has a lease: stop it.
    if let Ok(pid) = std::fs::read_to_string(dir.join("dhclient6.pid")) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
    let text = std::fs::read_to_string(&leases).unwrap_or_default();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("iaaddr ") {
            let addr = rest.split_whitespace().next().unwrap_or("");
            return addr.parse().with_context(|| format!("iaaddr {addr:?}"));
        }
    }
    bail!(
        "dhclient -6 got no lease: {}\n{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhclient6_gets_a_pool_address_and_keeps_it_across_a_restart() -> Result<()> {
    if !system_test(NEEDS) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let srv = Netns::create("d6a")?;
    let cli = Netns::create("d6b")?;
    srv.veth_pair("d6srv0", &cli, "d6cli0")?;
    srv.ip(&["-6", "addr", "add", "fd77::1/64", "dev", "d6srv0", "nodad"])?;
    wait_link_local(&srv, "d6srv0").await?;
    wait_link_local(&cli, "d6cli0").await?;
    let settings = Arc::new(
        Dhcp6Settings::new(
            "fd77::1".parse()?,
            "fd77::100-fd77::1ff",
            1800,
            3600,
            UefiLoader::IpxeEfi,
            80,
            Mac([0x02, 0, 0, 0x77, 0, 1]),
        )
        .context("settings")?,
    );
    let db = dir.path().join("leases.redb");
    let store = LeaseStore::open(&db)?;
    let server = Server::start(&srv, "d6srv0", settings.clone(), store.clone())?;
    let first = dhclient6(&cli, "d6cli0", dir.path()).await?;
    let pool =
        u128::from("fd77::100".parse::<Ipv6Addr>()?)..=u128::from("fd77::1ff".parse::<Ipv6Addr>()?);
    assert!(
        pool.contains(&u128::from(first)),
        "{first} is outside the pool"
    );
    let stored = store.load6()?;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].addr, first);
    server.stop().await?;
    drop(store);

    // A new server on the same database: the same client gets the same address.
    let store = LeaseStore::open(&db)?;
    let server = Server::start(&srv, "d6srv0", settings, store)?;
    let second = dhclient6(&cli, "d6cli0", dir.path()).await?;
    assert_eq!(second, first, "the lease did not survive the restart");
    server.stop().await?;
    Ok(())
}
