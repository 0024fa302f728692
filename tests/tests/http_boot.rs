//! UEFI HTTP and HTTPS boot on a real firmware: OVMF with its PXE clients off, so its
//! HTTP boot client asks DHCP as `HTTPClient`, gets the loader's URL from the edge and
//! fetches `ipxe.efi` from it; iPXE then takes the usual way to the prospector.
//!
//! - HTTP: the edge runs with TFTP off, so nothing of the boot crosses TFTP.
//! - HTTPS: the edge serves HTTPS with an RSA certificate from a fresh CA, OVMF is given
//!   that CA (fw_cfg `etc/edk2/https/cacerts`, made by `substruct-edge efi-cacerts`) and
//!   fetches `https://…/ipxe.efi`.
//! - HTTPS with the wrong CA: the firmware refuses the edge's certificate and never
//!   runs the loader, so the HTTPS test knows the firmware verified what it fetched.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::nats_topology::TlsFiles;
use substruct_testkit::netns::run;
use substruct_testkit::qemu::{acquire_vm_slot, Firmware, NicLink, NicSpec, Vm, VmSpec};
use substruct_testkit::try_poll_blocking;
use substruct_tests::{binary, Site, SiteOptions, EDGE_IP};

fn needs() -> bool {
    system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("nats-server"),
        Need::Tool("openssl"),
        Need::File("/usr/share/OVMF/OVMF_CODE_4M.fd"),
    ])
}

fn start_vm(
    site: &mut Site,
    name: &str,
    mac: &str,
    serial: &str,
    cacerts: Option<&Path>,
) -> Result<Vm> {
    let tap = site.new_tap()?;
    let mut spec = VmSpec::new(name, Firmware::UefiHttp);
    spec.smbios_serial = Some(serial.into());
    spec.https_cacerts = cacerts.map(Path::to_path_buf);
    spec.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: mac.into(),
        model: "virtio-net-pci".into(),
    });
    Vm::start(&site.ns, &spec, site.dir.path())
}

/// `substruct-edge efi-cacerts CA OUT`: the CA as OVMF reads it.
fn efi_cacerts(ca: &Path, out: &Path) -> Result<()> {
    let bin = binary("substruct-edge")?;
    run(Command::new(bin).arg("efi-cacerts").arg(ca).arg(out))?;
    Ok(())
}

/// An HTTPS edge: the site's RSA certificate (what EDK2's TLS can verify).
fn https_site(tag: &str, tls: &TlsFiles) -> Result<Site> {
    Site::start(
        tag,
        SiteOptions {
            edge_args: vec![
                "--https-cert".into(),
                tls.cert.display().to_string(),
                "--https-key".into(),
                tls.key.display().to_string(),
            ],
            ..SiteOptions::default()
        },
    )
}

/// Waits for each milestone on the console, then for `serial` in the inventory; prints
/// the times. Returns power-on -> inventory.
fn boot_to_inventory(
    site: &Site,
    vm: &mut Vm,
    serial: &str,
    milestones: &[(&str, &str)],
) -> Result<Duration> {
    let start = Instant::now();
    let mut times = Vec::new();
    for (label, needle) in milestones {
        match vm.wait_for_serial(needle, Duration::from_secs(300)) {
            Ok(t) => times.push((label, t)),
            Err(e) => {
                site.dump_logs();
                eprintln!("{}", substruct_testkit::qemu::tail(&vm.serial(), 40));
                return Err(e);
            }
        }
    }
    let machine = try_poll_blocking(
        "the machine in the inventory",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || {
            let machines = site.machines().unwrap_or_default();
            Ok(machines.into_iter().find(|m| {
                m.pointer("/facts/dmi/product_serial")
                    .and_then(Value::as_str)
                    == Some(serial)
            }))
        },
    )
    .inspect_err(|_| site.dump_logs())?;
    let inventory = start.elapsed();
    let boot_mode = machine.pointer("/facts/boot_mode").and_then(Value::as_str);
    if boot_mode != Some("uefi") {
        bail!("facts.boot_mode is {boot_mode:?}: {machine}");
    }
    for (label, t) in times {
        println!("{label:<40} {:>7.1} s", t.as_secs_f64());
    }
    Ok(inventory)
}

#[test]
fn uefi_http_boot_reaches_the_inventory_without_tftp() -> Result<()> {
    if !needs() {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let tag = "httpb";
    let config = std::env::temp_dir().join(format!("substruct-{tag}-{}.toml", std::process::id()));
    std::fs::write(&config, "tftp = false\n").context("writing the edge's config")?;
    let site = Site::start(
        tag,
        SiteOptions {
            edge_args: vec!["--config".into(), config.display().to_string()],
            ..SiteOptions::default()
        },
    );
    // Removed once the edge has read it: it is listening on port 80 by now.
    let _ = std::fs::remove_file(&config);
    let mut site = site?;
    let serial = "SBST-HTTPBOOT-0001";
    let mut vm = start_vm(&mut site, "uefi-http", "52:54:00:77:60:0a", serial, None)?;
    let inventory = boot_to_inventory(
        &site,
        &mut vm,
        serial,
        &[
            ("OVMF HTTP boot", "Start HTTP Boot over IPv4"),
            (
                "the URL from DHCP",
                &format!("URI: http://{EDGE_IP}/ipxe.efi"),
            ),
            ("iPXE running (fetched over HTTP)", "iPXE initialising"),
            ("live image running", "SUBSTRUCT-PROSPECTOR-READY"),
            ("reported", "SUBSTRUCT-REPORTED"),
        ],
    )?;
    let log = site.edge.as_ref().map(|p| p.log_text()).unwrap_or_default();
    if !log.contains("HTTP listening") || log.contains("TFTP server listening") {
        bail!("the edge's log does not show HTTP on and TFTP off:\n{log}");
    }
    println!(
        "{:<40} {:>7.1} s",
        "UEFI HTTP boot: power-on -> inventory",
        inventory.as_secs_f64()
    );
    vm.kill();
    Ok(())
}

#[test]
fn uefi_https_boot_with_the_site_ca_reaches_the_inventory() -> Result<()> {
    if !needs() {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let tls = TlsFiles::generate_rsa(&[EDGE_IP.parse()?])?;
    let mut site = https_site("httpsb", &tls)?;
    site.wait_tcp(EDGE_IP, 443, Duration::from_secs(20))?;
    let cacerts = site.dir.path().join("cacerts.efi");
    efi_cacerts(&tls.ca, &cacerts)?;
    let serial = "SBST-HTTPSBOOT-0001";
    let mut vm = start_vm(
        &mut site,
        "uefi-https",
        "52:54:00:77:60:0b",
        serial,
        Some(&cacerts),
    )?;
    let inventory = boot_to_inventory(
        &site,
        &mut vm,
        serial,
        &[
            ("OVMF HTTP boot", "Start HTTP Boot over IPv4"),
            (
                "the https URL from DHCP",
                &format!("URI: https://{EDGE_IP}/ipxe.efi"),
            ),
            ("iPXE running (fetched over HTTPS)", "iPXE initialising"),
            ("live image running", "SUBSTRUCT-PROSPECTOR-READY"),
            ("reported", "SUBSTRUCT-REPORTED"),
        ],
    )?;
    println!(
        "{:<40} {:>7.1} s",
        "UEFI HTTPS boot: power-on -> inventory",
        inventory.as_secs_f64()
    );
    vm.kill();
    Ok(())
}

#[test]
fn uefi_https_boot_refuses_an_edge_its_ca_did_not_sign() -> Result<()> {
    if !needs() {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let tls = TlsFiles::generate_rsa(&[EDGE_IP.parse()?])?;
    let other = TlsFiles::generate_rsa(&[EDGE_IP.parse()?])?;
    let mut site = Site::start(
        "httpsneg",
        SiteOptions {
            with_nats: false,
            with_controller: false,
            edge_args: vec![
                "--https-cert".into(),
                tls.cert.display().to_string(),
                "--https-key".into(),
                tls.key.display().to_string(),
            ],
            ..SiteOptions::default()
        },
    )?;
    let cacerts = site.dir.path().join("other-cacerts.efi");
    efi_cacerts(&other.ca, &cacerts)?;
    let mut vm = start_vm(
        &mut site,
        "uefi-https-wrong-ca",
        "52:54:00:77:60:0c",
        "SBST-HTTPSNEG",
        Some(&cacerts),
    )?;
    // The firmware gives up on HTTPv4 and moves on to its next boot option.
    let gave_up = vm
        .wait_for_serial("failed to load Boot", Duration::from_secs(240))
        .inspect_err(|_| {
            site.dump_logs();
            eprintln!("{}", substruct_testkit::qemu::tail(&vm.serial(), 40));
        })?;
    let serial = vm.serial();
    if !serial.contains(&format!("URI: https://{EDGE_IP}/ipxe.efi")) {
        bail!("the firmware never tried the https URL:\n{serial}");
    }
    if serial.contains("iPXE initialising") {
        bail!("the firmware ran a loader from an edge its CA did not sign:\n{serial}");
    }
    println!(
        "wrong CA: the firmware refused the edge after {:.1} s",
        gave_up.as_secs_f64()
    );
    vm.kill();
    Ok(())
}
