//! UEFI Secure Boot on a real firmware: OVMF built with Secure Boot, Microsoft's keys
//! enrolled. A site whose UEFI loader is `shim` boots the signed chain Debian ships
//! (shim → GRUB → Debian's kernel) with a GRUB config the edge renders per machine, and
//! the machine reaches the inventory reporting `secure_boot: true`. The negative test
//! shows Secure Boot is really on: the same firmware refuses the unsigned `ipxe.efi`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::qemu::{acquire_vm_slot, Firmware, NicLink, NicSpec, Vm, VmSpec};
use substruct_testkit::try_poll_blocking;
use substruct_tests::{Site, SiteOptions};

const SERIAL: &str = "SBST-SECBOOT-0001";
const MAC: &str = "52:54:00:77:50:0b";

fn start_vm(site: &mut Site, name: &str, mac: &str) -> Result<Vm> {
    let tap = site.new_tap()?;
    let mut spec = VmSpec::new(name, Firmware::UefiSecureBoot);
    spec.smbios_serial = Some(SERIAL.into());
    spec.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: mac.into(),
        model: "virtio-net-pci".into(),
    });
    Vm::start(&site.ns, &spec, site.dir.path())
}

fn needs() -> bool {
    system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("nats-server"),
        Need::File("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
        Need::File("/usr/lib/shim/shimx64.efi.signed"),
        Need::File("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
    ])
}

#[test]
fn secure_boot_shim_grub_chain_reaches_the_inventory_with_secure_boot_on() -> Result<()> {
    if !needs() {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let mut site = Site::start(
        "sb",
        SiteOptions {
            edge_args: vec!["--uefi-loader".into(), "shim".into()],
            ..SiteOptions::default()
        },
    )?;
    let mut vm = start_vm(&mut site, "sb-uefi", MAC)?;
    let start = Instant::now();
    let mut milestones = Vec::new();
    for (label, needle) in [
        (
            "shim ran, GRUB fetched",
            "Fetching Netboot Image grubx64.efi",
        ),
        ("GRUB running", "Welcome to GRUB!"),
        // (GRUB wraps its console at 80 columns: a short needle)
        ("GRUB config from the edge", "booting the prospector"),
        ("live image running", "SUBSTRUCT-PROSPECTOR-READY"),
        ("reported", "SUBSTRUCT-REPORTED"),
    ] {
        match vm.wait_for_serial(needle, Duration::from_secs(300)) {
            Ok(t) => milestones.push((label, t)),
            Err(e) => {
                site.dump_logs();
                eprintln!("{}", substruct_testkit::qemu::tail(&vm.serial(), 40));
                return Err(e);
            }
        }
    }
    let machine = try_poll_blocking(
        "the Secure Boot machine in the inventory",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || {
            let machines = site.machines().unwrap_or_default();
            Ok(machines.into_iter().find(|m| {
                m.pointer("/facts/dmi/product_serial")
                    .and_then(Value::as_str)
                    == Some(SERIAL)
            }))
        },
    );
    let machine = match machine {
        Ok(m) => m,
        Err(e) => {
            site.dump_logs();
            eprintln!("{}", substruct_testkit::qemu::tail(&vm.serial(), 40));
            return Err(e);
        }
    };
    let inventory = start.elapsed();
    let secure_boot = machine.pointer("/facts/secure_boot").cloned();
    if secure_boot != Some(Value::Bool(true)) {
        bail!("facts.secure_boot is {secure_boot:?}, not true: {machine}");
    }
    let boot_mode = machine.pointer("/facts/boot_mode").and_then(Value::as_str);
    if boot_mode != Some("uefi") {
        bail!("facts.boot_mode is {boot_mode:?}");
    }
    // Only the bound machine got a credential: the edge logged the config as bound.
    let edge_log = site.edge.as_ref().map(|p| p.log_text()).unwrap_or_default();
    if !edge_log.contains("grub config") {
        bail!("the edge never logged rendering a GRUB config");
    }
    for (label, t) in milestones {
        println!("{label:<40} {:>7.1} s", t.as_secs_f64());
    }
    println!(
        "{:<40} {:>7.1} s",
        "Secure Boot: power-on -> inventory",
        inventory.as_secs_f64()
    );
    vm.kill();
    Ok(())
}

#[test]
fn secure_boot_firmware_refuses_the_unsigned_ipxe_efi() -> Result<()> {
    if !needs() {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    // The default UEFI loader, iPXE, is not signed by Microsoft.
    let mut site = Site::start(
        "sbneg",
        SiteOptions {
            with_nats: false,
            with_controller: false,
            ..SiteOptions::default()
        },
    )?;
    let mut vm = start_vm(&mut site, "sb-unsigned", "52:54:00:77:50:0c")?;
    let refused = vm
        .wait_for_serial("Access Denied", Duration::from_secs(180))
        .inspect_err(|_| {
            site.dump_logs();
            eprintln!("{}", substruct_testkit::qemu::tail(&vm.serial(), 40));
        })?;
    let serial = vm.serial();
    let line = serial
        .lines()
        .find(|l| l.contains("Access Denied"))
        .context("no refusal line")?;
    if !serial.contains("NBP filename is ipxe.efi") || !line.contains("failed to load") {
        bail!("the firmware refused something else: {line}");
    }
    if serial.contains("iPXE") {
        bail!("iPXE ran under Secure Boot:\n{serial}");
    }
    println!(
        "Secure Boot refused the unsigned ipxe.efi after {:.1} s: {}",
        refused.as_secs_f64(),
        line.trim()
    );
    vm.kill();
    Ok(())
}
