//! Discovered to deployed through the Debian installer: a BIOS QEMU machine boots the
//! prospector and reports; the operator assigns the shipped `debian12-preseed` profile
//! by MAC; the controller tells the waiting prospector to reboot; the machine PXE
//! boots d-i (Debian's netboot kernel and initrd, package
//! debian-installer-12-netboot-amd64) with the edge's token-gated preseed URL; d-i
//! configures its network by DHCP and fetches the preseed (state `installing`). With
//! no package mirror the install cannot finish here, so the test then sends the
//! callback the preseed's late command sends, through the edge, and checks `deployed`
//! and that the edge now answers the machine with local boot — and that the token is
//! dead: the preseed is 403 and a second callback is refused. The same again under UEFI
//! Secure Boot (OVMF's Secure Boot build, Microsoft's keys): shim → signed GRUB → the
//! edge's GRUB config → d-i's kernel, which Debian signs, and its initrd over TFTP.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::run;
use substruct_testkit::qemu::{
    acquire_vm_slot, DiskBus, DiskSpec, Firmware, NicLink, NicSpec, Vm, VmSpec,
};
use substruct_testkit::try_poll_blocking;
use substruct_tests::{workspace_root, Site, SiteOptions, BRIDGE, EDGE_IP};

const DI: &str = "/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64";
const MAC: &str = "52:54:00:77:40:0a";

fn wait_state(site: &Site, state: &str, timeout: Duration) -> Result<(Value, f64)> {
    let started = Instant::now();
    let m = site.wait_state(MAC, state, timeout)?;
    Ok((m, started.elapsed().as_secs_f64()))
}

/// `curl` inside the site namespace: (HTTP status, body).
fn curl(site: &Site, args: &[&str]) -> Result<(u16, String)> {
    let out = run(site
        .ns
        .command("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

/// The address the machine with `mac` talks from, as the site's neighbour table shows it
/// (the address the edge leased to it: d-i fetched its preseed from there).
fn neighbour_ip(site: &Site, mac: &str) -> Result<String> {
    let out = run(site
        .ns
        .command("ip")
        .args(["-4", "neigh", "show", "dev", BRIDGE]))?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    table
        .lines()
        .find(|l| l.contains(&format!("lladdr {mac}")))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .with_context(|| format!("no neighbour entry for {mac} in:\n{table}"))
}

#[test]
fn debian_installer_fetches_its_preseed_then_the_callback_deploys() -> Result<()> {
    preseed("prov-preseed", Firmware::Bios, &[])
}

#[test]
fn debian_installer_under_secure_boot_fetches_its_preseed() -> Result<()> {
    preseed(
        "prov-preseed-sb",
        Firmware::UefiSecureBoot,
        &["--uefi-loader", "shim"],
    )
}

fn preseed(tag: &str, firmware: Firmware, edge_args: &[&str]) -> Result<()> {
    // deploy/test installs debian-installer-12-netboot-amd64 for the initrd.
    let di_initrd = format!("{DI}/initrd.gz");
    if !system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("curl"),
        Need::File(&di_initrd),
        Need::File(substruct_testkit::qemu::OVMF_CODE_SECBOOT),
        Need::File("/usr/lib/shim/shimx64.efi.signed"),
    ]) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    // A site network as d-i expects one: DHCP names a gateway and a name server
    // (without them netcfg stops at critical questions before it fetches the preseed).
    let mut site = Site::start(
        tag,
        SiteOptions {
            edge_args: ["--router", EDGE_IP, "--dns", EDGE_IP]
                .iter()
                .chain(edge_args)
                .map(|s| s.to_string())
                .collect(),
            ..SiteOptions::default()
        },
    )?;
    let result = flow(&mut site, tag, firmware);
    if result.is_err() {
        site.dump_logs();
    }
    result
}

fn flow(site: &mut Site, tag: &str, firmware: Firmware) -> Result<()> {
    // The installer's kernel and initrd sit in the edge's image directory; the
    // controller only registers their names and hashes (`--no-upload`).
    let dir = site.images.join("debian-12");
    std::fs::create_dir_all(&dir)?;
    for (file, kind) in [("linux", "kernel"), ("initrd.gz", "initrd")] {
        let src = std::path::Path::new(DI).join(file);
        let dst = dir.join(file);
        std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        let name = format!("debian-12/{file}");
        let path = dst.display().to_string();
        site.cli(&[
            "images",
            "add",
            &path,
            "--kind",
            kind,
            "--name",
            &name,
            "--no-upload",
        ])?;
    }
    let profile = workspace_root().join("deploy/profiles/debian12-preseed.toml");
    site.cli(&["profiles", "add", profile.to_str().context("path")?])?;

    let tap = site.new_tap()?;
    let mut spec = VmSpec::new(tag, firmware);
    spec.memory_mb = 1024;
    spec.allow_reboot = true;
    spec.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: MAC.into(),
        model: "virtio-net-pci".into(),
    });
    spec.disks.push(DiskSpec {
        bus: DiskBus::Virtio,
        size_bytes: 4 << 30,
        serial: "PRESEED-DISK".into(),
        image: None,
    });
    let mut vm = Vm::start(&site.ns, &spec, site.dir.path())?;
    let t = vm.wait_for_serial("SUBSTRUCT-REPORTED", Duration::from_secs(300))?;
    println!("{:<44} {:>7.1} s", "prospector reported", t.as_secs_f64());
    let (m, _) = wait_state(site, "discovered", Duration::from_secs(30))?;
    let id = m["id"].as_str().context("id")?.to_owned();

    // The operator's step: assign by MAC. The waiting prospector is told to reboot.
    let out = site.cli(&["machines", "assign", MAC, "debian12-preseed"])?;
    println!(
        "$ substruct machines assign {MAC} debian12-preseed\n{}",
        out.trim_end()
    );
    let m = site
        .cli(&["machines", "show", &id, "--json"])
        .and_then(|t| Ok(serde_json::from_str::<Value>(&t)?))?;
    assert_eq!(m["state"], "assigned");
    let token = m["ticket"]["token"]
        .as_str()
        .context("no token")?
        .to_owned();

    // A wrong token gets nothing; the right one is what d-i will use.
    let wrong = "0123456789abcdef0123456789abcdef";
    let (status, body) = curl(
        site,
        &[&format!("http://{EDGE_IP}/install/{wrong}/preseed.cfg")],
    )?;
    assert_eq!(status, 403);
    assert!(!body.contains("d-i"), "the 403 body leaks nothing: {body}");

    // iPXE prints the kernel's URL; GRUB the edge's line for the machine.
    let needle = match firmware {
        Firmware::UefiSecureBoot => format!("{MAC} install"),
        _ => "debian-12/linux".to_owned(),
    };
    let t = vm.wait_for_serial(&needle, Duration::from_secs(180))?;
    println!(
        "{:<44} {:>7.1} s",
        "installer kernel requested (after reboot)",
        t.as_secs_f64()
    );
    let (_, waited) = match wait_state(site, "installing", Duration::from_secs(400)) {
        Ok(r) => r,
        Err(e) => {
            let serial = std::fs::read_to_string(&vm.log).unwrap_or_default();
            eprintln!(
                "----- VM serial -----\n{}",
                substruct_testkit::qemu::tail(&serial, 80)
            );
            return Err(e);
        }
    };
    println!(
        "{:<44} {:>7.1} s after the kernel",
        "d-i fetched its preseed: installing", waited
    );

    // The callback the preseed's late_command sends, through the edge. The installer cannot
    // finish offline, so the test stops the VM and sends the callback from the machine's
    // own address (the edge serves callbacks only to the address it leased to the machine).
    let machine_ip = neighbour_ip(site, MAC)?;
    drop(vm);
    run(site
        .ns
        .command("ip")
        .args(["addr", "add", &format!("{machine_ip}/32"), "dev", BRIDGE]))?;
    let done = format!("http://{EDGE_IP}/api/v1/machines/{token}/done");
    let from_machine = ["--interface", machine_ip.as_str()];
    let (status, body) = curl(
        site,
        &[
            "--interface",
            &machine_ip,
            "-X",
            "POST",
            "--data",
            "",
            &done,
        ],
    )?;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body)?;
    assert_eq!(reply["state"], "deployed");
    let (m, _) = wait_state(site, "deployed", Duration::from_secs(10))?;
    assert_eq!(m["profile"], "debian12-preseed");

    // The token is dead: no preseed, no second callback.
    let preseed_url = format!("http://{EDGE_IP}/install/{token}/preseed.cfg");
    let mut status = 0;
    try_poll_blocking(
        "the preseed to be gone once the machine left installing",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            status = curl(site, &[&from_machine[..], &[preseed_url.as_str()]].concat())?.0;
            Ok((status == 403).then_some(()))
        },
    )
    .with_context(|| format!("last status {status}"))?;
    let (status, _) = curl(
        site,
        &[&from_machine[..], &["-X", "POST", "--data", "", &done]].concat(),
    )?;
    assert_eq!(
        status, 403,
        "a second callback with the expired token is refused"
    );

    // The next PXE boot of this machine boots its disk.
    if firmware == Firmware::UefiSecureBoot {
        // GRUB's config for the machine, asked over TFTP from its own address.
        let url = format!("tftp://{EDGE_IP}/grub/substruct/{MAC}.cfg");
        let mut last = String::new();
        let config = try_poll_blocking(
            "the edge's GRUB config to say local boot",
            Duration::from_secs(10),
            Duration::from_millis(200),
            || {
                let (_, config) = curl(site, &[&from_machine[..], &[url.as_str()]].concat())?;
                last.clone_from(&config);
                Ok(config.contains("booting the local disk").then_some(config))
            },
        )
        .with_context(|| format!("last config: {last}"))?;
        ensure!(config.ends_with("exit\n"), "{config}");
        println!("edge answers the machine's GRUB with:\n{config}");
        return Ok(());
    }
    let script_url =
        format!("http://{EDGE_IP}/boot.ipxe?mac={MAC}&uuid=&buildarch=i386&platform=pcbios");
    let mut last = String::new();
    let script = try_poll_blocking(
        "the edge to answer with a local boot",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let (status, script) = curl(site, &[&script_url])?;
            ensure!(status == 200, "boot.ipxe answered {status}: {script}");
            last.clone_from(&script);
            Ok(script
                .contains("sanboot --no-describe --drive 0x80")
                .then_some(script))
        },
    )
    .with_context(|| format!("last script: {last}"))?;
    println!("edge answers the machine with:\n{script}");
    Ok(())
}
