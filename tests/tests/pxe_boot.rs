//! Real PXE clients through the edge agent (not dnsmasq): QEMU under TCG in a network
//! namespace, on a tap on the site bridge. The edge runs alone here (no NATS): unknown
//! machines must still get the live image.

use std::time::Duration;

use anyhow::Result;
use substruct_testkit::qemu::{acquire_vm_slot, Firmware, NicLink, NicSpec, Vm, VmSpec};
use substruct_tests::{system_tests_possible, Site, SiteOptions};

const LIVE_MARKER: &str = "SUBSTRUCT-PROSPECTOR-READY";

fn boot(tag: &str, firmware: Firmware, mac: &str, edge_args: &[&str]) -> Result<(Vm, Site)> {
    let mut site = Site::start(
        tag,
        SiteOptions {
            with_nats: false,
            with_controller: false,
            edge_args: edge_args.iter().map(|s| s.to_string()).collect(),
            ..SiteOptions::default()
        },
    )?;
    let tap = site.new_tap()?;
    let mut spec = VmSpec::new(tag, firmware);
    spec.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: mac.into(),
        model: "virtio-net-pci".into(),
    });
    let vm = Vm::start(&site.ns, &spec, site.dir.path())?;
    Ok((vm, site))
}

fn report(vm: &mut Vm, site: &Site, steps: &[(&str, &str)]) -> Result<()> {
    for (label, needle) in steps {
        match vm.wait_for_serial(needle, Duration::from_secs(300)) {
            Ok(t) => println!("{:<40} {:>7.1} s", label, t.as_secs_f64()),
            Err(e) => {
                site.dump_logs();
                return Err(e);
            }
        }
    }
    Ok(())
}

#[test]
fn bios_rom_pxelinux_ipxe_lkrn_reaches_the_live_image() -> Result<()> {
    if !system_tests_possible(&["qemu-system-x86_64"]) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let (mut vm, site) = boot("pxe-bios", Firmware::Bios, "52:54:00:77:10:0a", &[])?;
    report(
        &mut vm,
        &site,
        &[
            ("BIOS: lpxelinux.0 running", "PXELINUX"),
            ("BIOS: iPXE script fetched", "boot.ipxe"),
            ("BIOS: live image running (marker)", LIVE_MARKER),
        ],
    )
}

#[test]
fn uefi_ovmf_pxe_ipxe_efi_reaches_the_live_image() -> Result<()> {
    if !system_tests_possible(&["qemu-system-x86_64"]) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let (mut vm, site) = boot("pxe-uefi", Firmware::Uefi, "52:54:00:77:10:0b", &[])?;
    report(
        &mut vm,
        &site,
        &[
            ("UEFI: OVMF PXE starts", "Start PXE over IPv4"),
            ("UEFI: live image running (marker)", LIVE_MARKER),
        ],
    )
}

#[test]
fn bios_ipxe_rom_on_an_undionly_site_goes_straight_to_the_script() -> Result<()> {
    if !system_tests_possible(&["qemu-system-x86_64"]) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let (mut vm, site) = boot(
        "pxe-undi",
        Firmware::Bios,
        "52:54:00:77:10:0c",
        &["--bios-chain", "undionly"],
    )?;
    report(
        &mut vm,
        &site,
        &[("BIOS iPXE ROM, undionly site: live image", LIVE_MARKER)],
    )
}
