//! PXE over IPv6: OVMF with its IPv4 PXE client off boots through the edge's DHCPv6
//! (a stateful address and the boot file URL `tftp://[fd77::1]/ipxe.efi`) and TFTP
//! over IPv6; iPXE then runs on the dual-stack site (its script from DHCPv4) and the
//! prospector reaches the inventory. Prints the time of each step from power-on.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::qemu::{acquire_vm_slot, Firmware, NicLink, NicSpec, Vm, VmSpec};
use substruct_tests::{Site, SiteOptions};

const MAC: &str = "52:54:00:77:60:0a";

#[test]
fn uefi_pxe_over_ipv6_reaches_the_inventory() -> Result<()> {
    if !system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("nats-server"),
        Need::File("/usr/share/OVMF/OVMF_CODE_4M.fd"),
    ]) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let mut site = Site::start(
        "v6pxe",
        SiteOptions {
            ipv6: true,
            ..SiteOptions::default()
        },
    )?;
    let result = flow(&mut site);
    if result.is_err() {
        site.dump_logs();
    }
    result
}

fn flow(site: &mut Site) -> Result<()> {
    let tap = site.new_tap()?;
    let mut spec = VmSpec::new("v6pxe", Firmware::Uefi);
    spec.ipv4_pxe = false;
    spec.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: MAC.into(),
        model: "virtio-net-pci".into(),
    });
    let mut vm = Vm::start(&site.ns, &spec, site.dir.path())?;
    for (label, needle) in [
        ("OVMF: PXE over IPv6", "Start PXE over IPv6"),
        ("iPXE running (loaded over TFTP/IPv6)", "iPXE initialising"),
        ("prospector reported", "SUBSTRUCT-REPORTED"),
    ] {
        let t = match vm.wait_for_serial(needle, Duration::from_secs(300)) {
            Ok(t) => t,
            Err(e) => {
                let serial = std::fs::read_to_string(&vm.log).unwrap_or_default();
                eprintln!(
                    "----- VM serial -----\n{}",
                    substruct_testkit::qemu::tail(&serial, 60)
                );
                return Err(e);
            }
        };
        println!("{label:<40} {:>7.1} s", t.as_secs_f64());
    }
    let serial = std::fs::read_to_string(&vm.log)?;
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
