//! Power control through the BMC, end to end with real parts: a QEMU machine whose BMC
//! is OpenIPMI's `ipmi_sim` (its LAN interface on the site network, inside the site's
//! namespace; its chassis power on starts the QEMU process, attached to the BMC with
//! `ipmi-bmc-extern` + `isa-ipmi-kcs`, PXE first when the one-time boot device is
//! `pxe`, else its disk first; power off stops it).
//!
//! The machine starts powered off and was never discovered. Enrollment as an operator
//! does it today: the site powers discovered idle machines off after their report
//! (`sites add --power-off-after-discovery true`); the operator powers the machine on
//! once through its BMC (the way its own tools would; the Substruct inventory has no
//! "add a machine by MAC"), it PXE boots the prospector, is discovered and powers
//! itself off. Then `machines bmc set` enrolls the BMC, and everything else is
//! Substruct: `assign` powers it on to PXE, it deploys, reaches `deployed` and boots
//! its disk; `reinstall` takes it through PXE again with no other command;
//! `release --wipe quick` wipes it and, per the site setting, it ends powered off.
//!
//! Also prints the issue's benchmark (asserts nothing about it): the time from
//! `reinstall` to `deployed` and to "up from its own disk", through the BMC, beside
//! the same reinstall triggered by hand (`reinstall --no-power` and a QEMU
//! `system_reset` over the monitor) in the same run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use substruct_bmc::{Bmc, BmcConfig, BmcDriverKind, PowerAction, PowerState};
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::ipmi_sim::{IpmiSim, IpmiSimOptions};
use substruct_testkit::qemu::{acquire_vm_slot, strip_ansi, tail};
use substruct_testkit::try_poll_blocking;
use substruct_tests::disk_image::{marker_disk_image, os_up_line, DISK_MARKER};
use substruct_tests::{workspace_root, Site, SiteOptions, BRIDGE};

const MAC: &str = "52:54:00:77:40:01";
/// The BMC's address on the site network (outside the DHCP pool).
const BMC_IP: &str = "10.77.0.250";
const BMC_PORT: u16 = 623;
/// The BMC's own MAC, as it reports it (in-band and over the LAN).
const BMC_MAC: &str = "52:54:00:77:40:fe";
/// Where `ipmi_sim` waits for QEMU's `ipmi-bmc-extern` (the in-band side).
const BMC_VM_PORT: u16 = 9002;
const BMC_USER: &str = "admin";
const BMC_PASSWORD: &str = "bmc-e2e-secret";
/// What the power-on script prints first, with the one-time boot device.
const POWER_ON: &str = "SUBSTRUCT-POWER-ON boot=";
const LIVE_MARKER: &str = "SUBSTRUCT-PROSPECTOR-READY";
const DEPLOYED: &str = "image deployed to vda";
/// One deploy under TCG: PXE, the live image, the image written, the disk's OS up.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(600);

/// The machine's console (and the power-on lines) as `ipmi_sim` keeps it: every power
/// on appends to the same file.
struct Console {
    path: PathBuf,
}

impl Console {
    fn text(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&self.path).unwrap_or_default(),
        ))
    }

    fn len(&self) -> usize {
        self.text().len()
    }

    /// Waits until `needle` shows after byte `from`; returns where it ends.
    fn wait(&self, from: usize, needle: &str, timeout: Duration) -> Result<usize> {
        let outcome = try_poll_blocking(
            &format!("the machine's console to print {needle:?}"),
            timeout,
            Duration::from_millis(200),
            || {
                let text = self.text();
                Ok(text
                    .get(from..)
                    .and_then(|rest| rest.find(needle))
                    .map(|i| from + i + needle.len()))
            },
        );
        outcome.map_err(|e| {
            anyhow::anyhow!(
                "{e:#}; console {}:\n{}",
                self.path.display(),
                tail(&self.text(), 40)
            )
        })
    }
}

fn cli(site: &Site, args: &[&str]) -> Result<String> {
    let out = site
        .cli(args)
        .with_context(|| format!("substruct {}", args.join(" ")))?;
    println!("$ substruct {}\n{}", args.join(" "), out.trim_end());
    Ok(out)
}

fn show(site: &Site) -> Result<Value> {
    let text = site.cli(&["machines", "show", MAC, "--json"])?;
    serde_json::from_str(&text).with_context(|| format!("`machines show --json`: {text}"))
}

/// Waits until `machines show --json` satisfies `pred` (named `what`).
fn wait_record(
    site: &Site,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let mut last = Value::Null;
    try_poll_blocking(
        &format!("machine {MAC}: {what}"),
        timeout,
        Duration::from_millis(500),
        || {
            // Not in the inventory yet reads as an error: keep waiting.
            last = show(site).unwrap_or(Value::Null);
            Ok(pred(&last).then(|| last.clone()))
        },
    )
    .with_context(|| format!("last record: {last}"))
}

fn state_is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |m| m["state"] == state
}

/// Waits until the BMC's chassis reads `on` (or not).
fn wait_power(sim: &IpmiSim, on: bool, timeout: Duration) -> Result<()> {
    try_poll_blocking(
        &format!(
            "the BMC's chassis to read power {}",
            if on { "on" } else { "off" }
        ),
        timeout,
        Duration::from_millis(250),
        || Ok((sim.power_is_on() == on).then_some(())),
    )
    .with_context(|| format!("chassis events: {:?}", sim.events()))
}

/// The shell script `ipmi_sim` runs at power on: the machine (its console on stdout,
/// which `ipmi_sim`'s chassis script appends to `vm.log`).
fn power_on_script(dir: &Path, tap: &str, disk: &Path) -> Result<PathBuf> {
    let monitor = dir.join("monitor.sock");
    let script = format!(
        r#"# The machine behind the BMC (substruct-tests bmc_e2e).
if [ "$IPMI_SIM_BOOT" = pxe ]; then nic=1; disk=2; else nic=2; disk=1; fi
echo "{POWER_ON}$IPMI_SIM_BOOT"
rm -f {monitor}
exec qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nodefaults -nographic \
  -serial stdio -monitor unix:{monitor},server=on,wait=off \
  -device virtio-rng-pci \
  -netdev tap,id=n0,ifname={tap},script=no,downscript=no \
  -device virtio-net-pci,netdev=n0,mac={MAC},bootindex=$nic \
  -drive file={disk},if=none,id=d0,format=raw \
  -device virtio-blk-pci,drive=d0,serial=bmc-e2e-disk,bootindex=$disk \
  -chardev socket,id=ipmi0,host={BMC_IP},port={BMC_VM_PORT},reconnect=1 \
  -device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 -device isa-ipmi-kcs,bmc=bmc0
"#,
        monitor = monitor.display(),
        disk = disk.display(),
    );
    let path = dir.join("machine.sh");
    std::fs::write(&path, script)?;
    Ok(path)
}

/// A QEMU monitor command over its unix socket (the "by hand" reset).
fn monitor(dir: &Path, command: &str) -> Result<()> {
    let path = dir.join("monitor.sock");
    let mut sock = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connecting to the QEMU monitor {}", path.display()))?;
    sock.write_all(format!("{command}\n").as_bytes())?;
    // Let QEMU read it before the socket closes.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// Powers the machine on through its BMC, as an operator's IPMI tool would (before
/// Substruct knows the machine).
fn power_on_by_hand(site: &Site) -> Result<PowerState> {
    site.ns
        .spawn_inside(move || -> Result<PowerState> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let cfg = BmcConfig::new(
                    BmcDriverKind::Ipmi,
                    format!("{BMC_IP}:{BMC_PORT}"),
                    BMC_USER,
                    BMC_PASSWORD,
                );
                let mut bmc = Bmc::connect(&cfg).await?;
                let state = bmc.apply(PowerAction::On).await?;
                bmc.close().await;
                Ok(state)
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("BMC client thread panicked"))?
}

/// The machine's events in `EVENTS` (JSON), read with the controller's credentials.
fn events(site: &Site, machine_id: &str) -> Result<Vec<Value>> {
    let nats = site.nats.as_ref().context("the site runs no NATS")?;
    let url = nats.hub.url();
    let (user, password) = nats.hub.controller_credentials();
    let (user, password) = (user.to_owned(), password.to_owned());
    let subject = format!("substruct.v1.events.{machine_id}");
    site.ns.run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = async_nats::ConnectOptions::with_user_and_password(user, password)
                .connect(url.as_str())
                .await
                .with_context(|| format!("connecting to the hub at {url}"))?;
            let js = async_nats::jetstream::new(client);
            let mut stream = js
                .get_stream(substruct_wire::subjects::STREAM_EVENTS)
                .await
                .context("opening the EVENTS stream")?;
            let info = stream
                .info()
                .await
                .context("EVENTS stream info")?
                .state
                .clone();
            let mut out = Vec::new();
            if info.messages == 0 {
                return Ok(out);
            }
            for seq in info.first_sequence..=info.last_sequence {
                let Ok(msg) = stream.get_raw_message(seq).await else {
                    continue;
                };
                if msg.subject.as_str() != subject {
                    continue;
                }
                out.push(
                    serde_json::from_slice(&msg.payload)
                        .with_context(|| format!("EVENTS message {seq} is not JSON"))?,
                );
            }
            Ok(out)
        })
    })
}

fn power_events(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"]["type"] == "power")
        .map(|e| {
            let k = &e["kind"];
            format!(
                "{} -> {}{} by {}",
                k["op"].as_str().unwrap_or("?"),
                k["state"].as_str().unwrap_or("?"),
                k["error"]
                    .as_str()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                k["by"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// One reinstall, timed from `start` until the record is `deployed` again and the
/// console shows the disk's OS up after `from`.
struct Timed {
    deployed: Duration,
    up: Duration,
}

fn follow_reinstall(site: &Site, console: &Console, from: usize, start: Instant) -> Result<Timed> {
    let live = console.wait(from, LIVE_MARKER, DEPLOY_TIMEOUT)?;
    let written = console.wait(live, DEPLOYED, DEPLOY_TIMEOUT)?;
    // The record is `deployed` once the prospector's `done` is in, before the reboot.
    wait_record(
        site,
        "deployed again",
        Duration::from_secs(120),
        state_is("deployed"),
    )?;
    let deployed = start.elapsed();
    console.wait(written, &os_up_line(DISK_MARKER), DEPLOY_TIMEOUT)?;
    let up = start.elapsed();
    Ok(Timed { deployed, up })
}

#[test]
fn ipmi_bmc_enroll_assign_reinstall_release_wipe() -> Result<()> {
    if !system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("ipmi_sim"),
        Need::Tool("mkfs.vfat"),
        Need::Tool("syslinux"),
    ]) {
        return Ok(());
    }
    let image = marker_disk_image()?;
    let _slot = acquire_vm_slot()?;
    // The edge reads every BMC's state every 2 s, so an off the machine did itself
    // (the power off after the wipe) shows in the record.
    let edge_conf = tempfile::Builder::new()
        .prefix("bmc-e2e-edge-")
        .suffix(".toml")
        .tempfile()?;
    std::fs::write(edge_conf.path(), "[power]\npoll_interval = \"2s\"\n")?;
    let mut site = Site::start(
        "bmc-e2e",
        SiteOptions {
            edge_args: vec!["--config".into(), edge_conf.path().display().to_string()],
            ..SiteOptions::default()
        },
    )?;
    let mut sim_keep = None;
    let result = (|| -> Result<()> {
        let root = workspace_root();
        let profiles = root.join("deploy/profiles");
        let image_path = image.display().to_string();
        cli(
            &site,
            &[
                "sites",
                "add",
                "s1",
                "--local-boot",
                "ipxe-exit",
                "--power-off-after-discovery",
                "true",
            ],
        )?;
        cli(
            &site,
            &[
                "images",
                "add",
                &image_path,
                "--kind",
                "disk",
                "--name",
                "marker.img",
            ],
        )?;
        let profile = profiles.join("marker-image.toml");
        cli(
            &site,
            &["profiles", "add", profile.to_str().context("path")?],
        )?;

        // The machine: a blank disk, a NIC on the site bridge, a BMC on the site network.
        site.ns
            .ip(&["addr", "add", &format!("{BMC_IP}/24"), "dev", BRIDGE])?;
        let tap = site.new_tap()?;
        let disk = site.dir.path().join("machine.disk.img");
        std::fs::File::create(&disk)?.set_len(64 << 20)?;
        let script = power_on_script(site.dir.path(), &tap, &disk)?;
        let mut opts = IpmiSimOptions::loopback(BMC_PASSWORD);
        opts.addr = BMC_IP.into();
        opts.port = BMC_PORT;
        opts.user = BMC_USER.into();
        opts.vm_port = Some(BMC_VM_PORT);
        opts.lan_mac = BMC_MAC.into();
        opts.power_on_cmd = Some(format!("exec sh {}", script.display()));
        let sim = sim_keep.insert(IpmiSim::start(Some(&site.ns), &opts)?);
        let console = Console {
            path: sim.dir().join("vm.log"),
        };
        ensure!(!sim.power_is_on(), "the machine starts powered off");

        // Enrollment: powered on once by hand, discovered, told to power off (site setting).
        let t0 = Instant::now();
        ensure!(
            power_on_by_hand(&site)? == PowerState::On,
            "the BMC did not power the machine on"
        );
        console.wait(0, &format!("{POWER_ON}default"), Duration::from_secs(30))?;
        console.wait(0, LIVE_MARKER, DEPLOY_TIMEOUT)?;
        let m = wait_record(
            &site,
            "discovered",
            Duration::from_secs(120),
            state_is("discovered"),
        )?;
        let id = m["id"].as_str().context("record without id")?.to_owned();
        wait_power(sim, false, Duration::from_secs(120))
            .context("the discovered machine did not power itself off (site setting)")?;
        println!(
            "discovered as {id} and powered off after {:.1} s",
            t0.elapsed().as_secs_f64()
        );

        // The prospector read the BMC in-band (ipmi_si over the VM's KCS interface, which
        // QEMU forwards to ipmi_sim) and reported its LAN settings.
        let lan = &m["facts"]["bmc"]["lan"][0];
        ensure!(
            lan["ip"] == BMC_IP
                && lan["mac"]
                    .as_str()
                    .is_some_and(|mac| mac.eq_ignore_ascii_case(BMC_MAC))
                && lan["ip_source"] == "static",
            "the BMC found in-band: {}",
            m["facts"]["bmc"]
        );
        println!("BMC found in-band: {}", m["facts"]["bmc"]);

        // The operator enrolls the BMC at the address it reported: the password comes
        // from a file, never shown back.
        let pw_file = site.dir.path().join("bmc-password");
        std::fs::write(&pw_file, format!("{BMC_PASSWORD}\n"))?;
        cli(
            &site,
            &[
                "machines",
                "bmc",
                "set",
                MAC,
                "--driver",
                "ipmi",
                "--user",
                BMC_USER,
                "--password-file",
                pw_file.to_str().context("path")?,
            ],
        )?;
        let status: Value = serde_json::from_str(&cli(
            &site,
            &["machines", "power", "status", MAC, "--json"],
        )?)?;
        // The edge's answer crosses the leaf on the site's reply subject; the record learns.
        ensure!(
            status["pending"] != true && status["power"] == "off",
            "power status: {status}"
        );
        let m = show(&site)?;
        ensure!(
            m["power"] == "off",
            "the record's power after a status read: {m}"
        );
        ensure!(
            !m.to_string().contains(BMC_PASSWORD),
            "the BMC password is shown back: {m}"
        );
        let shown = cli(&site, &["machines", "show", MAC])?;
        ensure!(!shown.contains(BMC_PASSWORD), "{shown}");

        // assign: Substruct powers it on to PXE; it deploys and boots its disk.
        let from = console.len();
        let start = Instant::now();
        cli(&site, &["machines", "assign", MAC, "marker-image"])?;
        console
            .wait(from, &format!("{POWER_ON}pxe"), Duration::from_secs(60))
            .context("assign did not power the machine on to PXE through its BMC")?;
        let first = follow_reinstall(&site, &console, from, start)?;
        let m = wait_record(
            &site,
            "power on in the record",
            Duration::from_secs(30),
            |m| m["power"] == "on",
        )?;
        ensure!(m["state"] == "deployed", "{m}");
        ensure!(m["profile"] == "marker-image", "{m}");
        ensure!(m["power_error"].is_null(), "power error: {m}");
        ensure!(sim.boot_device() == "none", "the one-time PXE was used up");

        // reinstall: through PXE again, with no other command.
        let from = console.len();
        let start = Instant::now();
        cli(&site, &["machines", "reinstall", MAC])?;
        console
            .wait(from, &format!("{POWER_ON}pxe"), Duration::from_secs(60))
            .context("reinstall did not power cycle the machine to PXE")?;
        let by_bmc = follow_reinstall(&site, &console, from, start)?;
        let m = show(&site)?;
        ensure!(m["power"] == "on", "{m}");
        ensure!(m["power_error"].is_null(), "power error: {m}");

        // The same reinstall by hand: no power action, a reset over the QEMU monitor.
        let from = console.len();
        let start = Instant::now();
        cli(&site, &["machines", "reinstall", MAC, "--no-power"])?;
        monitor(site.dir.path(), "system_reset")?;
        let by_hand = follow_reinstall(&site, &console, from, start)?;
        ensure!(
            !console.text()[from..].contains(POWER_ON),
            "the --no-power reinstall went through the BMC"
        );

        println!("\nBENCHMARK bmc_reinstall (TCG; one run each, same site, same machine)");
        println!("{:<34} {:>12} {:>14}", "", "to deployed", "up from disk");
        for (label, t) in [
            ("assign (BMC power on to PXE)", &first),
            ("reinstall through the BMC", &by_bmc),
            ("reinstall by hand (system_reset)", &by_hand),
        ] {
            println!(
                "{label:<34} {:>10.1} s {:>12.1} s",
                t.deployed.as_secs_f64(),
                t.up.as_secs_f64()
            );
        }
        println!();

        // release --wipe: PXE to wipe, then powered off (site setting).
        let from = console.len();
        cli(&site, &["machines", "release", MAC, "--wipe", "quick"])?;
        console
            .wait(from, &format!("{POWER_ON}pxe"), Duration::from_secs(60))
            .context("release --wipe did not power cycle the machine to PXE")?;
        console.wait(from, LIVE_MARKER, DEPLOY_TIMEOUT)?;
        wait_power(sim, false, DEPLOY_TIMEOUT)
            .context("the wiped machine did not power off (site setting)")?;
        let m = wait_record(
            &site,
            "discovered, power off in the record",
            Duration::from_secs(60),
            |m| m["state"] == "discovered" && m["power"] == "off",
        )?;
        ensure!(m["profile"].is_null(), "{m}");
        // The quick wipe zeroed the partition table the image brought.
        let head = std::fs::read(&disk)?;
        ensure!(
            head[..512].iter().all(|b| *b == 0),
            "the disk's first sector survived the wipe"
        );

        // EVENTS: every power action, with who and the result.
        let ev = events(&site, &id)?;
        let power = power_events(&ev);
        println!("power events:\n  {}", power.join("\n  "));
        let cycles = power
            .iter()
            .filter(|p| p.starts_with("cycle -> on"))
            .count();
        ensure!(
            cycles >= 3,
            "assign, reinstall and release --wipe each cycle once: {power:?}"
        );
        ensure!(
            power.iter().any(|p| p.starts_with("status -> off")),
            "the off after the wipe, seen by the edge's poll: {power:?}"
        );
        let errors: Vec<&Value> = ev
            .iter()
            .filter(|e| e["kind"]["type"] == "power" && !e["kind"]["error"].is_null())
            .collect();
        ensure!(errors.is_empty(), "power errors: {errors:?}");
        ensure!(
            ev.iter().any(|e| e["kind"]["type"] == "bmc"),
            "no BMC enrollment event"
        );
        let chassis = sim.events();
        println!("chassis: {chassis:?}");
        Ok(())
    })();
    if result.is_err() {
        site.dump_logs();
        if let Some(sim) = &sim_keep {
            eprintln!(
                "----- ipmi_sim -----\n{}\n----- chassis -----\n{:?}",
                tail(&sim.log_text(), 40),
                sim.events()
            );
        }
    }
    drop(sim_keep);
    result
}
