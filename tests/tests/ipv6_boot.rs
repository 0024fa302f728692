//! IPv6 netboot in QEMU. A dual-stack site: OVMF with its IPv4 PXE client off boots
//! through the edge's DHCPv6 (a stateful address and the boot file URL
//! `tftp://[fd77::1]/ipxe.efi`) and TFTP over IPv6; iPXE then runs on the dual-stack site
//! (its script from DHCPv4) and the prospector reaches the inventory. An IPv6-only site:
//! PXE and UEFI HTTP boot over IPv6 all the way to a report over IPv6. Prints the time
//! of each step from power-on.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::qemu::{acquire_vm_slot, Firmware, NicLink, NicSpec, Vm, VmSpec};
use substruct_tests::{Site, SiteOptions};

const MAC: &str = "52:54:00:77:60:0a";

/// One test, one VM slot, three machines at once (the HTTP-boot one spends its first
/// minute waiting out its firmware's DHCPv4, so they hardly compete): a dual-stack site's
/// PXE over IPv6, and an IPv6-only site's PXE and HTTP boot over IPv6.
#[test]
fn ipv6_netboot_on_a_dual_stack_and_an_ipv6_only_site() -> Result<()> {
    if !system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("nats-server"),
        Need::Tool("curl"),
        Need::File("/usr/share/OVMF/OVMF_CODE_4M.fd"),
    ]) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let mut dual = Site::start(
        "v6pxe",
        SiteOptions {
            ipv6: true,
            ..SiteOptions::default()
        },
    )?;
    let mut only6 = Site::start(
        "v6only",
        SiteOptions {
            ipv6: true,
            ipv6_only: true,
            ..SiteOptions::default()
        },
    )?;
    let result = (|| {
        let mut dual_vm = vm_on(&mut dual, "v6pxe", Firmware::Uefi, MAC)?;
        let mut pxe = vm_on(&mut only6, "pxe6", Firmware::Uefi, MAC_V6ONLY)?;
        let mut http = vm_on(&mut only6, "http6", Firmware::UefiHttp, MAC_HTTP6)?;
        // Each machine's milestones are watched on a thread of their own, so each time
        // printed is when the line appeared.
        let (a, b, c) = std::thread::scope(|s| {
            let a = s.spawn(|| milestones(&mut dual_vm, DUAL_STEPS));
            let b = s.spawn(|| milestones(&mut pxe, PXE6_STEPS));
            let c = s.spawn(|| milestones(&mut http, HTTP6_STEPS));
            let join = |h: std::thread::ScopedJoinHandle<'_, Result<String>>| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a watcher thread panicked")))
            };
            (join(a), join(b), join(c))
        });
        flow(&mut dual, &a?)?;
        flow_v6only(&mut only6, &b?, &c?)
    })();
    if result.is_err() {
        dual.dump_logs();
        only6.dump_logs();
    }
    result
}

/// The dual-stack site: PXE over IPv6 to iPXE, which takes its script from DHCPv4.
const DUAL_STEPS: &[(&str, &str)] = &[
    ("OVMF: PXE over IPv6", "Start PXE over IPv6"),
    ("iPXE running (loaded over TFTP/IPv6)", "iPXE initialising"),
    ("prospector reported", "SUBSTRUCT-REPORTED"),
];

fn flow(site: &mut Site, serial: &str) -> Result<()> {
    let before_ipxe = serial
        .split_once("iPXE initialising")
        .map(|(b, _)| b)
        .context("iPXE line vanished")?;
    // iPXE came from PXE over IPv6, not from the HTTP boot that OVMF tries next.
    if before_ipxe.contains("Start HTTP Boot") {
        bail!("OVMF fell back to HTTP boot: PXE over IPv6 failed");
    }
    ensure!(
        !before_ipxe.contains("PXE-E"),
        "OVMF's PXE over IPv6 reported an error"
    );
    let m = site.wait_state(MAC, "discovered", Duration::from_secs(30))?;
    println!("in the inventory: {} ({})", m["id"], m["state"]);
    Ok(())
}

const MAC_V6ONLY: &str = "52:54:00:77:60:0b";
const MAC_HTTP6: &str = "52:54:00:77:60:0c";

fn vm_on(site: &mut Site, name: &str, firmware: Firmware, mac: &str) -> Result<Vm> {
    let tap = site.new_tap()?;
    let mut spec = VmSpec::new(name, firmware);
    spec.ipv4_pxe = false;
    spec.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: mac.into(),
        model: "virtio-net-pci".into(),
    });
    Vm::start(&site.ns, &spec, site.dir.path())
}

fn milestones(vm: &mut Vm, steps: &[(&str, &str)]) -> Result<String> {
    for (label, needle) in steps {
        let t = match vm.wait_for_serial(needle, Duration::from_secs(300)) {
            Ok(t) => t,
            Err(e) => {
                let serial = std::fs::read_to_string(&vm.log).unwrap_or_default();
                eprintln!(
                    "----- VM {} serial -----\n{}",
                    vm.name,
                    substruct_testkit::qemu::tail(&serial, 60)
                );
                return Err(e);
            }
        };
        println!("{:<8} {label:<40} {:>7.1} s", vm.name, t.as_secs_f64());
    }
    Ok(std::fs::read_to_string(&vm.log)?)
}

/// The IPv6-only site: the edge serves no DHCPv4. Two machines:
/// * PXE over IPv6: OVMF boots iPXE by TFTP over IPv6; iPXE takes its script URL from
///   DHCPv6 (`http://[fd77::1]/boot.ipxe`), fetches the script, kernel and initrd over
///   HTTP/IPv6; the prospector takes its address by SLAAC from the edge's router
///   advertisement and reports to the leaf node over IPv6;
/// * UEFI HTTP boot over IPv6: OVMF's HTTP boot client (its PXE clients off) gets
///   `http://[fd77::1]/ipxe.efi` and vendor class `HTTPClient` from DHCPv6 once its
///   HTTP boot over IPv4 has found no DHCPv4 server, and goes on the same way.
const PXE6_STEPS: &[(&str, &str)] = &[
    ("OVMF: PXE over IPv6", "Start PXE over IPv6"),
    ("iPXE running (loaded over TFTP/IPv6)", "iPXE initialising"),
    ("prospector: address by SLAAC", "SUBSTRUCT-NET-UP"),
    ("prospector reported over IPv6", "SUBSTRUCT-REPORTED"),
];

const HTTP6_STEPS: &[(&str, &str)] = &[
    ("OVMF: HTTP boot over IPv6", "Start HTTP Boot over IPv6"),
    ("iPXE running (loaded over HTTP/IPv6)", "iPXE initialising"),
    ("prospector: address by SLAAC", "SUBSTRUCT-NET-UP"),
    ("prospector reported over IPv6", "SUBSTRUCT-REPORTED"),
];

fn flow_v6only(site: &mut Site, pxe_serial: &str, http_serial: &str) -> Result<()> {
    let serial = pxe_serial;
    // The prospector's address is the SLAAC one in the site's /64, from its EUI-64.
    let net_up = serial
        .lines()
        .find(|l| l.contains("SUBSTRUCT-NET-UP"))
        .context("net-up line vanished")?;
    ensure!(
        net_up.contains("ip=fd77::5054:ff:fe77:600b/64"),
        "the prospector is not on its SLAAC address: {net_up}"
    );
    // Its script came over IPv6, from the address DHCPv6 leased to this MAC, so it was
    // bound and carried a credential; the command line names the IPv6 edge and NATS.
    let edge_log = substruct_testkit::qemu::strip_ansi(&std::fs::read_to_string(
        site.dir.path().join("edge.log"),
    )?);
    let script = edge_log
        .lines()
        .rev()
        .find(|l| l.contains("boot.ipxe") && l.contains(MAC_V6ONLY) && l.contains("intent"))
        .context("the edge logged no boot script for the machine")?;
    ensure!(
        // The pool is fd77::100-fd77::1ff.
        script.contains("peer=[fd77::1") && script.contains("bound=true"),
        "the script was not asked for over IPv6 from the leased address: {script}"
    );
    // (The prospector prints what its command line gave it.)
    for said in [
        "nats nats://[fd77::1]:4222 token yes edge http://[fd77::1]:80 ",
        "IPv6 only: waiting for an address from the router advertisement",
    ] {
        ensure!(
            serial.contains(said),
            "the prospector's console lacks {said:?}: its command line was not the IPv6 one; \
             it said:\n{}",
            serial
                .lines()
                .filter(|l| l.contains("substruct-prospector:"))
                .take(12)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // No DHCPv4 anywhere: the firmware, iPXE and the prospector never had an IPv4 address.
    ensure!(
        !edge_log.contains("dhcp: serving"),
        "the edge served DHCPv4 on an IPv6-only site"
    );
    let m = site.wait_state(MAC_V6ONLY, "discovered", Duration::from_secs(30))?;
    println!("in the inventory: {} ({})", m["id"], m["state"]);

    let serial = http_serial;
    let before_ipxe = serial
        .split_once("iPXE initialising")
        .map(|(b, _)| b)
        .context("iPXE line vanished")?;
    ensure!(
        !before_ipxe.contains("Start PXE"),
        "the HTTP boot machine tried PXE"
    );
    // iPXE came over HTTP: the only TFTP transfer is the PXE machine's.
    let edge_log = substruct_testkit::qemu::strip_ansi(&std::fs::read_to_string(
        site.dir.path().join("edge.log"),
    )?);
    let tftp = edge_log.matches("TFTP transfer complete").count();
    ensure!(
        tftp == 1,
        "{tftp} TFTP transfers: the HTTP boot machine used TFTP"
    );
    let m = site.wait_state(MAC_HTTP6, "discovered", Duration::from_secs(30))?;
    println!("in the inventory: {} ({})", m["id"], m["state"]);

    // The edge's /metrics (asked over IPv6) counted the DHCPv6 exchanges and leases:
    // each firmware and each iPXE solicited and requested; the firmwares release their
    // leases when they hand over to iPXE, the two iPXEs hold theirs.
    let metrics = site.ns.exec(
        "curl",
        &["-sS", "--max-time", "5", "http://[fd77::1]/metrics"],
    )?;
    let value = |series: &str| -> Result<f64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .with_context(|| format!("no {series} in the edge's metrics"))
    };
    let solicits = value(
        r#"substruct_edge_dhcp6_packets_received_total{message_type="solicit",result="answered"}"#,
    )?;
    let requests = value(
        r#"substruct_edge_dhcp6_packets_received_total{message_type="request",result="answered"}"#,
    )?;
    let leases = value("substruct_edge_dhcp6_leases_active")?;
    println!("edge metrics: {solicits} solicits and {requests} requests answered, {leases} leases active");
    ensure!(
        solicits >= 4.0 && requests >= 4.0 && leases >= 2.0,
        "two firmwares and two iPXEs should each have solicited and requested, the iPXEs leased"
    );
    ensure!(
        value("substruct_edge_dhcp6_pool_addresses")? == 256.0,
        "the pool gauge is not the pool's size"
    );
    Ok(())
}
