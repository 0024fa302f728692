//! Issue 4: power-on → machine in the controller's inventory, for the BIOS chain
//! (NIC ROM → lpxelinux.0 → ipxe.lkrn → script) and the UEFI chain (OVMF PXE → ipxe.efi →
//! script), beside the floor measured in the same run: the same VM booting the reference
//! chain of `deploy/lab/reference/` (dnsmasq DHCP + TFTP, `python3 -m http.server`, a
//! busybox initramfs that DHCPs with udhcpc, reports with wget and powers off). Goal:
//! ours ≤ 1.1 × the floor. Also prints the live image's size and the prospector's peak
//! RSS (the `substruct-prospector: peak RSS` console line). Asserts nothing.
//!
//! * Floor: its own namespace (bridge 10.77.0.1/24 + the lab ULA), dnsmasq from
//!   `dnsmasq.conf.in`, the initramfs from `build-initramfs`; end point = the init's
//!   `PROSPECTOR-NET-OK` line on the serial console, from QEMU start.
//! * Ours: a fresh [`Site`] (NATS, controller, edge agent) per boot; end point = the
//!   machine in `substruct machines list --json` (polled every ~200 ms), from QEMU start;
//!   the serial's `SUBSTRUCT-REPORTED` time is printed beside it.
//!
//! Floor and ours alternate (A B A B), `ROUNDS` (default 2) boots each per chain, one VM
//! at a time (the host-wide VM slot is held throughout). Same kernel, same VM spec
//! (memory, virtio-net boot NIC + isolated e1000, SMBIOS identity, virtio + NVMe disks).
//!
//! Run as root: `cargo bench -p substruct-tests --bench boot_to_inventory`. Skips (exit 0)
//! when not root or a tool is missing. Builds the `substruct-controller`, `substruct-edge`
//! and `substruct` binaries (release) and the live image first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use substruct_testkit::netns::{Netns, NsProcess};
use substruct_testkit::qemu::{
    acquire_vm_slot, tail, DiskBus, DiskSpec, Firmware, NicLink, NicSpec, Vm, VmSpec,
};
use substruct_tests::{
    prospector_image, workspace_root, Site, SiteOptions, BRIDGE, EDGE_CIDR, EDGE_IP,
};

/// The lab's IPv6 ULA, announced by dnsmasq's RA so iPXE does not wait for a router.
const ULA_PREFIX: &str = "fd77:77::";
const POOL_LO: &str = "10.77.0.100";
const POOL_HI: &str = "10.77.0.199";

const FLOOR_END: &str = "PROSPECTOR-NET-OK";
const FLOOR_FAIL: &str = "PROSPECTOR-NET-FAIL";
const OURS_REPORTED: &str = "SUBSTRUCT-REPORTED";
const PEAK_RSS: &str = "substruct-prospector: peak RSS ";

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
const SERIAL_POLL: Duration = Duration::from_millis(50);
const INVENTORY_POLL: Duration = Duration::from_millis(200);

const PXELINUX_FILES: [&str; 2] = [
    "/usr/lib/PXELINUX/lpxelinux.0",
    "/usr/lib/syslinux/modules/bios/ldlinux.c32",
];
const IPXE_DIR: &str = "/usr/lib/ipxe";

/// Where the time goes: the first serial line holding any of the needles (floor's or
/// ours) marks the step, in seconds from QEMU start.
const MILESTONES: [(&str, &[&str]); 6] = [
    ("pxe", &["Booting from ROM", "Start PXE over IPv4"]),
    ("pxelinux", &["PXELINUX"]),
    ("ipxe", &["iPXE initialising devices"]),
    ("script", &["prospector: client", "booting the prospector"]),
    (
        "initramfs",
        &["PROSPECTOR-READY uptime=", "SUBSTRUCT-PROSPECTOR-READY"],
    ),
    ("dhcp", &["PROSPECTOR-DHCP-OK", "SUBSTRUCT-NET-UP"]),
];

/// Set by SIGINT / SIGTERM: every wait loop bails, so the guards' drops clean up.
static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy)]
struct Chain {
    label: &'static str,
    firmware: Firmware,
    serial: &'static str,
    uuid: &'static str,
    macs: [&'static str; 2],
}

const CHAINS: [Chain; 2] = [
    Chain {
        label: "BIOS  lpxelinux.0 -> ipxe.lkrn",
        firmware: Firmware::Bios,
        serial: "SBST-BENCH-BIOS",
        uuid: "5b1c0f6e-4444-4a2b-9c3d-00000000b105",
        macs: ["52:54:00:77:40:0a", "52:54:00:77:40:1a"],
    },
    Chain {
        label: "UEFI  OVMF PXE -> ipxe.efi",
        firmware: Firmware::Uefi,
        serial: "SBST-BENCH-UEFI",
        uuid: "5b1c0f6e-5555-4a2b-9c3d-0000000000ef",
        macs: ["52:54:00:77:40:0b", "52:54:00:77:40:1b"],
    },
];

/// One boot's figures (seconds from QEMU start).
#[derive(Debug, Clone, Default)]
struct Run {
    /// [`MILESTONES`] seen, with their times.
    marks: Vec<(&'static str, f64)>,
    /// Floor: PROSPECTOR-NET-OK. Ours: the machine seen in the inventory.
    end: f64,
    /// Ours: SUBSTRUCT-REPORTED on the serial console.
    reported: Option<f64>,
    /// Ours: the prospector's peak RSS in kB.
    peak_rss_kb: Option<u64>,
}

fn vm_spec(name: &str, chain: &Chain, tap: String) -> VmSpec {
    let mut s = VmSpec::new(name, chain.firmware);
    s.smbios_serial = Some(chain.serial.into());
    s.smbios_uuid = Some(chain.uuid.into());
    s.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: chain.macs[0].into(),
        model: "virtio-net-pci".into(),
    });
    s.nics.push(NicSpec {
        link: NicLink::Isolated,
        mac: chain.macs[1].into(),
        model: "e1000".into(),
    });
    s.disks.push(DiskSpec {
        bus: DiskBus::Virtio,
        size_bytes: 2 << 30,
        serial: "BENCH-VD-1".into(),
        image: None,
    });
    s.disks.push(DiskSpec {
        bus: DiskBus::Nvme,
        size_bytes: 1 << 30,
        serial: "BENCH-NVME-1".into(),
        image: None,
    });
    s
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// SIGINT / SIGTERM set [`STOP`] instead of killing the bench, so namespaces and
/// processes are removed by the guards' drops.
fn install_stop_handler() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("interrupted: cleaning up");
        STOP.store(true, Ordering::SeqCst);
    });
    Ok(())
}

/// Why the bench cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !substruct_testkit::can_use_netns() {
        return Some("needs root and `ip netns`".into());
    }
    for tool in [
        "qemu-system-x86_64",
        "dnsmasq",
        "python3",
        "nats-server",
        "busybox",
        "cpio",
        "modprobe",
        "ss",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let files = PXELINUX_FILES
        .iter()
        .map(|f| f.to_string())
        .chain(
            ["ipxe.lkrn", "ipxe.efi"]
                .iter()
                .map(|f| format!("{IPXE_DIR}/{f}")),
        )
        .chain([
            substruct_testkit::qemu::OVMF_CODE.to_string(),
            substruct_testkit::qemu::OVMF_VARS.to_string(),
        ]);
    for f in files {
        if !Path::new(&f).exists() {
            return Some(format!(
                "{f} is missing (packages pxelinux syslinux-common ipxe ovmf)"
            ));
        }
    }
    None
}

fn python3() -> &'static str {
    // The reference lab runs Debian's python3; PATH may point at a pyenv shim.
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// `cargo build --release` of the binaries a site runs (the bench lives in target/release).
fn build_site_binaries() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "substruct-controller",
            "-p",
            "substruct-edge",
            "--bins",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release of the site binaries failed ({status})");
    }
    Ok(())
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_owned(), |s, (k, v)| {
        s.replace(&format!("@{k}@"), v)
    })
}

fn reference_dir() -> PathBuf {
    workspace_root().join("deploy/lab/reference")
}

/// Builds the reference initramfs (and copies the kernel) into `out`.
fn build_reference(out: &Path) -> Result<()> {
    let script = reference_dir().join("build-initramfs");
    let output = Command::new(&script)
        .arg(out)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed:\n{}{}",
            script.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Waits until `ss ARGS` inside `ns` lists every one of `needles`.
fn wait_listening(
    ns: &Netns,
    args: &[&str],
    needles: &[&str],
    procs: &mut [&mut NsProcess],
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ns.exec("ss", args).unwrap_or_default();
        if needles.iter().all(|n| out.contains(n)) {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        check_stop()?;
        if Instant::now() > deadline {
            bail!(
                "not listening after 15 s: {needles:?}; `ss {}`:\n{out}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The reference servers in their own namespace. Field order = drop order.
struct Floor {
    http: NsProcess,
    _dnsmasq: NsProcess,
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Floor {
    fn start(reference: &Path) -> Result<Self> {
        let ns = Netns::create("bfloor")?;
        ns.add_bridge(BRIDGE, EDGE_CIDR)?;
        let ula = format!("{ULA_PREFIX}1/64");
        ns.ip(&["-6", "addr", "add", &ula, "dev", BRIDGE, "nodad"])?;
        let dir = tempfile::Builder::new()
            .prefix("substruct-bench-floor-")
            .tempdir()?;
        let (tftp, http, run) = (
            dir.path().join("tftp"),
            dir.path().join("http"),
            dir.path().join("run"),
        );
        for d in [tftp.join("pxelinux.cfg"), http.clone(), run.clone()] {
            std::fs::create_dir_all(d)?;
        }
        let base = format!("http://{EDGE_IP}");
        let vars = [
            ("BRIDGE", BRIDGE),
            ("SERVER_IP", EDGE_IP),
            ("POOL_LO", POOL_LO),
            ("POOL_HI", POOL_HI),
            ("ULA_PREFIX", ULA_PREFIX),
            ("TFTP_ROOT", tftp.to_str().context("tftp path")?),
            ("RUN_DIR", run.to_str().context("run path")?),
            ("HTTP_BASE", &base),
        ];
        let template = |name: &str| -> Result<String> {
            let path = reference_dir().join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(fill(&text, &vars))
        };
        // TFTP: the loaders; every generic rule's file is there when installed.
        for f in PXELINUX_FILES {
            let name = Path::new(f).file_name().context("file name")?;
            std::fs::copy(f, tftp.join(name)).with_context(|| format!("copying {f}"))?;
        }
        for f in ["ipxe.efi", "undionly.kpxe", "snponly.efi"] {
            let src = Path::new(IPXE_DIR).join(f);
            if src.exists() {
                std::fs::copy(&src, tftp.join(f))?;
            }
        }
        std::fs::write(
            tftp.join("pxelinux.cfg/default"),
            template("pxelinux.cfg.default.in")?,
        )?;
        // HTTP: iPXE, the script, the kernel and the reference initramfs.
        for f in ["ipxe.lkrn", "ipxe.efi"] {
            std::fs::copy(Path::new(IPXE_DIR).join(f), http.join(f))?;
        }
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::copy(reference.join(f), http.join(f))?;
        }
        std::fs::write(http.join("boot.ipxe"), template("boot.ipxe.in")?)?;
        std::fs::write(
            http.join("ping.txt"),
            "hello from the reference http server\n",
        )?;
        let conf = run.join("dnsmasq.conf");
        std::fs::write(&conf, template("dnsmasq.conf.in")?)?;

        let conf_arg = format!("--conf-file={}", conf.display());
        let mut dnsmasq = NsProcess::spawn(
            &ns,
            "dnsmasq",
            "dnsmasq",
            &[
                "--keep-in-foreground",
                &conf_arg,
                "--user=root",
                "--group=root",
            ],
            run.join("dnsmasq.out"),
        )?;
        let mut http_server = NsProcess::spawn(
            &ns,
            "python3 http.server",
            python3(),
            &[
                "-m",
                "http.server",
                "80",
                "--bind",
                EDGE_IP,
                "--directory",
                http.to_str().context("http path")?,
            ],
            run.join("http.log"),
        )?;
        let http_addr = format!("{EDGE_IP}:80");
        {
            let mut procs = [&mut dnsmasq, &mut http_server];
            wait_listening(&ns, &["-lunH"], &[":67 ", ":69 "], &mut procs)?;
            wait_listening(&ns, &["-ltnH"], &[&http_addr], &mut procs)?;
        }
        Ok(Self {
            http: http_server,
            _dnsmasq: dnsmasq,
            ns,
            dir,
        })
    }

    fn logs(&self) -> String {
        format!(
            "----- dnsmasq -----\n{}\n----- http -----\n{}",
            tail(
                &std::fs::read_to_string(self.dir.path().join("run/dnsmasq.log"))
                    .unwrap_or_default(),
                30
            ),
            tail(&self.http.log_text(), 20)
        )
    }
}

/// True once the serial console has printed `needle`.
fn seen(serial: &str, needle: &str) -> bool {
    serial.contains(needle)
}

impl Run {
    /// Records the [`MILESTONES`] first visible in `serial` at `now`.
    fn mark(&mut self, serial: &str, now: f64) {
        for (label, needles) in MILESTONES {
            if !self.marks.iter().any(|(l, _)| *l == label)
                && needles.iter().any(|n| seen(serial, n))
            {
                self.marks.push((label, now));
            }
        }
    }

    fn at(&self, label: &str) -> Option<f64> {
        self.marks
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, t)| *t)
    }

    fn marks_text(&self) -> String {
        let mut marks = self.marks.clone();
        marks.sort_by(|a, b| a.1.total_cmp(&b.1));
        marks
            .iter()
            .map(|(l, t)| format!("{l} {t:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Keeps a copy of a VM's serial console under target/boot_to_inventory/.
fn keep_serial(vm: &Vm) {
    let dir = substruct_tests::target_dir().join("boot_to_inventory");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{}.serial.log", vm.name)), vm.serial());
    }
}

fn boot_floor(chain: &Chain, reference: &Path, name: &str) -> Result<Run> {
    let floor = Floor::start(reference)?;
    let tap = "tap0";
    floor.ns.add_tap(tap, BRIDGE)?;
    let spec = vm_spec(name, chain, tap.into());
    let mut vm = Vm::start(&floor.ns, &spec, floor.dir.path())?;
    let mut run = Run::default();
    let deadline = vm.started + BOOT_TIMEOUT;
    loop {
        let serial = vm.serial();
        let now = secs(vm.started.elapsed());
        run.mark(&serial, now);
        if seen(&serial, FLOOR_END) {
            run.end = now;
            break;
        }
        let failed = seen(&serial, FLOOR_FAIL);
        if failed || Instant::now() > deadline || STOP.load(Ordering::SeqCst) {
            keep_serial(&vm);
            bail!(
                "floor VM {name}: {}; serial:\n{}\n{}",
                if failed {
                    "the initramfs reported a network failure"
                } else {
                    "no PROSPECTOR-NET-OK in time"
                },
                tail(&serial, 30),
                floor.logs()
            );
        }
        std::thread::sleep(SERIAL_POLL);
    }
    // It powers itself off; give it a moment, the drop kills it otherwise.
    let _ = vm.wait_exit(Duration::from_secs(10));
    keep_serial(&vm);
    drop(vm);
    Ok(run)
}

fn in_inventory(machines: &[Value], serial: &str) -> bool {
    machines.iter().any(|m| {
        m.pointer("/facts/dmi/product_serial")
            .and_then(Value::as_str)
            == Some(serial)
    })
}

fn peak_rss(serial: &str) -> Option<u64> {
    serial.lines().find_map(|l| {
        l.split_once(PEAK_RSS)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    })
}

fn boot_ours(chain: &Chain, name: &str) -> Result<Run> {
    let mut site = Site::start("bours", SiteOptions::default())?;
    let tap = site.new_tap()?;
    let spec = vm_spec(name, chain, tap);
    let mut vm = Vm::start(&site.ns, &spec, site.dir.path())?;
    let mut run = Run::default();
    let deadline = vm.started + BOOT_TIMEOUT;
    let mut next_poll = Instant::now();
    let mut inventory: Option<f64> = None;
    loop {
        let serial = vm.serial();
        let now = secs(vm.started.elapsed());
        run.mark(&serial, now);
        if run.reported.is_none() && seen(&serial, OURS_REPORTED) {
            run.reported = Some(now);
        }
        if run.peak_rss_kb.is_none() {
            run.peak_rss_kb = peak_rss(&serial);
        }
        if inventory.is_none() && Instant::now() >= next_poll {
            next_poll = Instant::now() + INVENTORY_POLL;
            let machines = site.machines().unwrap_or_default();
            if in_inventory(&machines, chain.serial) {
                inventory = Some(secs(vm.started.elapsed()));
            }
        }
        // Done once in the inventory and the console has printed the RSS line (or
        // a few seconds have passed since).
        if let Some(t) = inventory {
            run.end = t;
            let rss_wait_over = secs(vm.started.elapsed()) > t + 10.0;
            if run.peak_rss_kb.is_some() || rss_wait_over {
                break;
            }
        }
        if Instant::now() > deadline || STOP.load(Ordering::SeqCst) {
            keep_serial(&vm);
            site.dump_logs();
            bail!(
                "VM {name} not in the inventory in time; serial:\n{}",
                tail(&serial, 40)
            );
        }
        std::thread::sleep(SERIAL_POLL);
    }
    vm.kill();
    keep_serial(&vm);
    Ok(run)
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.1}"))
}

fn fmt_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn file_size(p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => format!(
            "{:>10} bytes ({:.1} MiB)",
            m.len(),
            m.len() as f64 / (1024.0 * 1024.0)
        ),
        Err(e) => format!("? ({e})"),
    }
}

#[derive(Default)]
struct ChainResults {
    floor: Vec<Run>,
    ours: Vec<Run>,
}

fn main() -> Result<()> {
    if let Some(why) = missing_prerequisite() {
        println!("boot_to_inventory: SKIP: {why}");
        return Ok(());
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2);

    println!("boot_to_inventory: building the site binaries (release)");
    build_site_binaries()?;
    println!("boot_to_inventory: building the prospector live image");
    let image = prospector_image()?;
    let reference = tempfile::Builder::new()
        .prefix("substruct-bench-reference-")
        .tempdir()?;
    println!("boot_to_inventory: building the reference initramfs");
    build_reference(reference.path())?;
    let same_kernel = std::fs::read(image.join("vmlinuz")).ok()
        == std::fs::read(reference.path().join("vmlinuz")).ok();

    println!("boot_to_inventory: waiting for the VM slot (/tmp/substruct-qemu.lock)");
    let _slot = acquire_vm_slot()?;
    install_stop_handler()?;
    println!(
        "boot_to_inventory: {rounds} round(s) per chain, floor and ours alternating, one VM at a time (TCG)"
    );

    let mut results: Vec<ChainResults> = CHAINS.iter().map(|_| ChainResults::default()).collect();
    let mut failures: Vec<String> = Vec::new();
    'rounds: for round in 1..=rounds {
        for (i, chain) in CHAINS.iter().enumerate() {
            let fw = match chain.firmware {
                Firmware::Bios => "bios",
                Firmware::Uefi => "uefi",
                Firmware::UefiSecureBoot => "uefi-secureboot",
                Firmware::UefiHttp => "uefi-http",
            };
            for ours in [false, true] {
                if STOP.load(Ordering::SeqCst) {
                    break 'rounds;
                }
                let kind = if ours { "ours" } else { "floor" };
                let name = format!("{kind}-{fw}-r{round}");
                let outcome = if ours {
                    boot_ours(chain, &name)
                } else {
                    boot_floor(chain, reference.path(), &name)
                };
                match outcome {
                    Ok(run) => {
                        println!(
                            "  round {round} {:<31} {kind:<5} end {:>5.1} s  [{}{}]",
                            chain.label,
                            run.end,
                            run.marks_text(),
                            match run.reported {
                                Some(r) => format!(", serial REPORTED {r:.1}"),
                                None => String::new(),
                            }
                        );
                        let slot = &mut results[i];
                        if ours {
                            slot.ours.push(run);
                        } else {
                            slot.floor.push(run);
                        }
                    }
                    Err(e) => {
                        println!(
                            "  round {round} {:<31} {kind:<5} FAILED: {e:#}",
                            chain.label
                        );
                        failures.push(format!("{name}: {e:#}"));
                    }
                }
            }
        }
    }

    println!();
    println!(
        "Power-on -> machine in inventory (seconds from QEMU start, TCG, 512 MB, one VM at a time)"
    );
    println!(
        "{:<31} {:>12} {:>11} {:>7}   goal <= 1.10",
        "chain", "floor median", "ours median", "ratio"
    );
    for (chain, r) in CHAINS.iter().zip(&results) {
        let floor: Vec<f64> = r.floor.iter().map(|x| x.end).collect();
        let ours: Vec<f64> = r.ours.iter().map(|x| x.end).collect();
        let (fm, om) = (median(&floor), median(&ours));
        let ratio = match (fm, om) {
            (Some(f), Some(o)) if f > 0.0 => format!("{:.2}", o / f),
            _ => "-".into(),
        };
        println!(
            "{:<31} {:>12} {:>11} {:>7}",
            chain.label,
            fmt_opt(fm),
            fmt_opt(om),
            ratio
        );
        println!(
            "    floor per round (PROSPECTOR-NET-OK): {}",
            fmt_list(&floor)
        );
        println!(
            "    ours  per round (in inventory):      {}",
            fmt_list(&ours)
        );
        let reported: Vec<f64> = r.ours.iter().filter_map(|x| x.reported).collect();
        println!(
            "    ours  per round (serial REPORTED):   {}",
            fmt_list(&reported)
        );
        let fi: Vec<f64> = r.floor.iter().filter_map(|x| x.at("initramfs")).collect();
        let oi: Vec<f64> = r.ours.iter().filter_map(|x| x.at("initramfs")).collect();
        println!(
            "    initramfs running (first marker):    floor {} | ours {}",
            fmt_list(&fi),
            fmt_list(&oi)
        );
    }
    println!();
    println!(
        "Images (same kernel for floor and ours: {})",
        if same_kernel { "yes" } else { "NO" }
    );
    println!(
        "  prospector vmlinuz    {}",
        file_size(&image.join("vmlinuz"))
    );
    println!(
        "  prospector initrd.img {}",
        file_size(&image.join("initrd.img"))
    );
    println!(
        "  reference  initrd.img {}",
        file_size(&reference.path().join("initrd.img"))
    );
    let rss: Vec<u64> = results
        .iter()
        .flat_map(|r| r.ours.iter().filter_map(|x| x.peak_rss_kb))
        .collect();
    match rss.iter().max() {
        Some(max) => println!(
            "Prospector peak RSS (VmHWM at report time): max {max} kB ({:.1} MiB); per boot: {}",
            *max as f64 / 1024.0,
            rss.iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        None => println!("Prospector peak RSS: not printed on the serial console"),
    }
    println!(
        "Serial logs: {}",
        substruct_tests::target_dir()
            .join("boot_to_inventory")
            .display()
    );
    if !failures.is_empty() {
        println!();
        println!("{} boot(s) failed:", failures.len());
        for f in &failures {
            println!("- {f}");
        }
        bail!("{} boot(s) failed", failures.len());
    }
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
