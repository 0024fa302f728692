//! Real PXE clients through the edge agent (not dnsmasq): QEMU under TCG in a network
//! namespace, on a tap on the site bridge. The edge runs alone here (no NATS): unknown
//! machines must still get the live image.

use std::time::Duration;

use anyhow::Result;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::{Netns, NsProcess};
use substruct_testkit::qemu::{acquire_vm_slot, Firmware, NicLink, NicSpec, Vm, VmSpec};
use substruct_tests::{Site, SiteOptions, BRIDGE};

const LIVE_MARKER: &str = "SUBSTRUCT-PROSPECTOR-READY";

/// A site with only the edge agent (no NATS, no controller).
fn edge_site(tag: &str, edge_args: &[&str]) -> Result<Site> {
    Site::start(
        tag,
        SiteOptions {
            with_nats: false,
            with_controller: false,
            edge_args: edge_args.iter().map(|s| s.to_string()).collect(),
            ..SiteOptions::default()
        },
    )
}

/// A one-NIC VM on a new tap of the site bridge, network-booting.
fn start_vm(site: &mut Site, tag: &str, firmware: Firmware, mac: &str) -> Result<Vm> {
    let tap = site.new_tap()?;
    let mut spec = VmSpec::new(tag, firmware);
    spec.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: mac.into(),
        model: "virtio-net-pci".into(),
    });
    Vm::start(&site.ns, &spec, site.dir.path())
}

fn boot(tag: &str, firmware: Firmware, mac: &str, edge_args: &[&str]) -> Result<(Vm, Site)> {
    let mut site = edge_site(tag, edge_args)?;
    let vm = start_vm(&mut site, tag, firmware, mac)?;
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
    if !system_test(&[Need::Netns, Need::Tun, Need::Tool("qemu-system-x86_64")]) {
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
    if !system_test(&[Need::Netns, Need::Tun, Need::Tool("qemu-system-x86_64")]) {
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
    if !system_test(&[Need::Netns, Need::Tun, Need::Tool("qemu-system-x86_64")]) {
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

/// ProxyDHCP: the site keeps its own DHCP server (dnsmasq on another host of the
/// provisioning network, addresses only); the edge runs with `--proxy-dhcp` and only
/// adds the boot answer. The BIOS machine must still walk lpxelinux.0 → ipxe.lkrn →
/// script → live image, and take its address from the site's server.
#[test]
fn bios_boots_through_proxy_dhcp_beside_the_sites_own_dhcp_server() -> Result<()> {
    proxy_boot(
        "pxe-proxy-bios",
        Firmware::Bios,
        "52:54:00:77:10:0d",
        "PXELINUX",
    )
}

/// The same for OVMF's own PXE client, which asks the ProxyDHCP server on port 4011.
#[test]
fn uefi_boots_through_proxy_dhcp_beside_the_sites_own_dhcp_server() -> Result<()> {
    proxy_boot(
        "pxe-proxy-uefi",
        Firmware::Uefi,
        "52:54:00:77:10:0e",
        "Start PXE over IPv4",
    )
}

fn proxy_boot(tag: &str, firmware: Firmware, mac: &str, first_stage: &str) -> Result<()> {
    if !system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("dnsmasq"),
    ]) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let mut site = edge_site(tag, &["--proxy-dhcp"])?;
    // The site's own DHCP server lives in a second namespace, cabled to the bridge.
    let other = Netns::create("pxe-dhcpd")?;
    site.ns.veth_pair("vdhcp", &other, "vdhcp0")?;
    site.ns.ip(&["link", "set", "vdhcp", "master", BRIDGE])?;
    other.ip(&["addr", "add", "10.77.0.2/24", "dev", "vdhcp0"])?;
    let conf = site.dir.path().join("site-dhcpd.conf");
    let leases = site.dir.path().join("site-dhcpd.leases");
    std::fs::write(
        &conf,
        format!(
            "port=0\ninterface=vdhcp0\nbind-interfaces\ndhcp-authoritative\n\
             dhcp-range=10.77.0.50,10.77.0.90,255.255.255.0,1h\nno-ping\n\
             dhcp-leasefile={}\nlog-dhcp\n",
            leases.display()
        ),
    )?;
    let conf_arg = format!("--conf-file={}", conf.display());
    let _dhcpd = NsProcess::spawn(
        &other,
        "site dhcp server (dnsmasq)",
        "dnsmasq",
        &[
            "--keep-in-foreground",
            &conf_arg,
            "--user=root",
            "--group=root",
            "--log-facility=-",
        ],
        site.dir.path().join("site-dhcpd.log"),
    )?;
    let mut vm = start_vm(&mut site, tag, firmware, mac)?;
    report(
        &mut vm,
        &site,
        &[
            ("proxy: first stage running", first_stage),
            ("proxy: live image running (marker)", LIVE_MARKER),
            ("proxy: live image got the site's address", "ip=10.77.0."),
        ],
    )?;
    let serial = vm.serial();
    let net_up = serial
        .lines()
        .find(|l| l.contains("SUBSTRUCT-NET-UP"))
        .unwrap_or_default();
    let ip_ok = (50..=90).any(|n| net_up.contains(&format!("ip=10.77.0.{n}/")));
    if !ip_ok {
        site.dump_logs();
        anyhow::bail!("the address must come from the site's own server (10.77.0.50-90): {net_up}");
    }
    Ok(())
}
