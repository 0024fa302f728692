//! A relayed subnet boots like the edge's own segment (issue 16, part 4). The site's
//! namespace holds NATS, the controller and the edge on bridge `br0`; a router
//! namespace joins `br0` to a second segment (`br1`, 10.88.0.0/24) and relays DHCP to
//! the edge with ISC `dhcrelay`. A BIOS QEMU machine boots on the edge's own segment,
//! then one on the relayed segment (the VM slot: one at a time); both must reach the
//! inventory, the relayed one with an address of its own subnet, and the test prints
//! both times side by side.
//!
//! Why relayed boots were slow: iPXE's `ifconf` (and `dhcp`, the same command) waits
//! for every configurator, IPv6 autoconfiguration included, which ends at the first
//! router advertisement or after 15.75 s of solicitations (Debian 12's iPXE). The edge
//! answers solicitations on its own segment; nobody does behind a relay, and router
//! advertisements never cross one. The edge's `pxelinux.cfg/default` now runs
//! `ifconf -c dhcp` (DHCPv4 only) in `ipxe.lkrn`, which removes one of the two waits
//! of the BIOS chain; the first, in the NIC ROM's own autoboot, is not under the edge's
//! control (see the README).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::{Netns, NsProcess};
use substruct_testkit::qemu::{
    acquire_vm_slot, DiskBus, DiskSpec, Firmware, NicLink, NicSpec, Vm, VmSpec,
};
use substruct_testkit::try_poll_blocking;
use substruct_tests::{Site, SiteOptions, BRIDGE, EDGE_IP, POOL};

/// How long one TCG VM may take to reach the inventory.
const INVENTORY_TIMEOUT: Duration = Duration::from_secs(300);
/// The router's address on the site bridge (the relay's upstream, its packets' source).
const RELAY_UP: &str = "10.77.0.2";
const LOCAL_MAC: &str = "52:54:00:77:90:0a";
const RELAYED_MAC: &str = "52:54:00:77:90:0b";

fn bios_vm(name: &str, tap: String, mac: &str) -> VmSpec {
    let mut spec = VmSpec::new(name, Firmware::Bios);
    spec.smbios_serial = Some(format!("{name}-serial"));
    spec.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: mac.into(),
        model: "virtio-net-pci".into(),
    });
    spec.disks.push(DiskSpec {
        bus: DiskBus::Virtio,
        size_bytes: 64 << 20,
        serial: format!("{name}-disk"),
        image: None,
    });
    spec
}

/// Boots `spec` in `ns` and waits for its MAC in the inventory: the time it took.
fn boot_to_inventory(site: &Site, ns: &Netns, spec: &VmSpec, mac: &str) -> Result<(Vm, f64)> {
    let mut vm = Vm::start(ns, spec, site.dir.path())?;
    let start = Instant::now();
    let found = try_poll_blocking(
        &format!("{} in the inventory", spec.name),
        INVENTORY_TIMEOUT,
        Duration::from_millis(500),
        || {
            let machines = site.machines().unwrap_or_default();
            Ok(machines
                .iter()
                .any(|m| {
                    m["facts"]["nics"]
                        .as_array()
                        .is_some_and(|nics| nics.iter().any(|n| n["mac"].as_str() == Some(mac)))
                })
                .then_some(()))
        },
    );
    if let Err(e) = found {
        site.dump_logs();
        eprintln!(
            "----- {} serial -----\n{}",
            spec.name,
            substruct_testkit::qemu::tail(&vm.serial(), 60)
        );
        vm.kill();
        bail!("{e}");
    }
    Ok((vm, start.elapsed().as_secs_f64()))
}

#[test]
fn a_machine_behind_dhcrelay_boots_to_the_inventory() -> Result<()> {
    if !system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("nats-server"),
        Need::Tool("dhcrelay"),
    ]) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let conf_dir = tempfile::tempdir()?;
    let conf = conf_dir.path().join("edge.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[[dhcp.subnets]]
network = "10.77.0.0/24"
pools = ["{POOL}"]
router = "{EDGE_IP}"

[[dhcp.subnets]]
network = "10.88.0.0/24"
pools = ["10.88.0.50-10.88.0.99"]
router = "10.88.0.1"
relays = ["{RELAY_UP}"]
"#
        ),
    )?;
    let conf_path = conf.to_str().context("config path")?.to_owned();
    let mut site = Site::start(
        "rly",
        SiteOptions {
            edge_args: vec!["--config".into(), conf_path],
            ..SiteOptions::default()
        },
    )?;
    // The router: `rlyup` on the site bridge, `br1` the relayed segment, forwarding on.
    let router = Netns::create("rlyr")?;
    site.ns.veth_pair("rly0", &router, "rlyup")?;
    site.ns.ip(&["link", "set", "rly0", "master", BRIDGE])?;
    router.ip(&["addr", "add", &format!("{RELAY_UP}/24"), "dev", "rlyup"])?;
    router.add_bridge("br1", "10.88.0.1/24")?;
    let forward = router
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .status()?;
    if !forward.success() {
        bail!("cannot enable forwarding in the router namespace");
    }
    site.ns
        .ip(&["route", "add", "10.88.0.0/24", "via", RELAY_UP])?;
    let pid = site.dir.path().join("dhcrelay.pid");
    let mut dhcrelay = NsProcess::spawn(
        &router,
        "dhcrelay",
        "dhcrelay",
        &[
            "-d",
            "-q",
            "-4",
            "-a",
            "-D",
            "-pf",
            pid.to_str().context("pid path")?,
            "-id",
            "br1",
            "-iu",
            "rlyup",
            EDGE_IP,
        ],
        site.dir.path().join("dhcrelay.log"),
    )?;

    let tap = site.new_tap()?;
    let (mut local, t_local) = boot_to_inventory(
        &site,
        &site.ns,
        &bios_vm("rly-local", tap, LOCAL_MAC),
        LOCAL_MAC,
    )?;
    local.kill();
    router.add_tap("rtap0", "br1")?;
    let (mut relayed, t_relayed) = boot_to_inventory(
        &site,
        &router,
        &bios_vm("rly-relayed", "rtap0".into(), RELAYED_MAC),
        RELAYED_MAC,
    )
    .with_context(|| format!("dhcrelay log:\n{}", dhcrelay.log_text()))?;
    dhcrelay.check_alive()?;
    let serial = relayed.serial();
    relayed.kill();
    if !serial.contains("10.88.0.") {
        bail!(
            "the relayed machine did not get an address of its subnet:\n{}",
            substruct_testkit::qemu::tail(&serial, 40)
        );
    }
    println!(
        "power-on -> inventory (BIOS, TCG): own segment {t_local:.1} s, behind dhcrelay {t_relayed:.1} s ({:+.1} s)",
        t_relayed - t_local
    );
    Ok(())
}
