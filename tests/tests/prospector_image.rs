//! The prospector live image: built by `deploy/prospector-image/build`, inspected, and
//! booted in QEMU (TCG) on a tap + bridge inside a network namespace this test creates,
//! with dnsmasq for DHCP, a real nats-server and a test-side responder on the discover
//! subject. Skips (printing why) when not root or a tool is missing, or fails under
//! `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1` (the gate in `substruct_testkit::gate`).
//!
//! QEMU runs are serialized host-wide with an flock on /tmp/substruct-qemu.lock.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use substruct_testkit::gate::{gate, unmet, Need};
use substruct_testkit::netns::{Netns, NsProcess};
use substruct_testkit::wait_for_blocking;
use substruct_wire::messages::{DiscoverReply, DiscoverRequest, Instruction};
use substruct_wire::{subjects, MachineId, SiteId};

const MAX_PROSPECTOR_BYTES: u64 = 5 * 1024 * 1024;
const MAX_IMAGE_BYTES: u64 = 40 * 1024 * 1024;
const NIC_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "mlx5_core",
    "bnxt_en",
    "tg3",
    "r8169",
];
const STORAGE_MODULES: &[&str] = &[
    "nvme",
    "ahci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "megaraid_sas",
    "mpt3sas",
];
const QEMU_LOCK: &str = "/tmp/substruct-qemu.lock";
const SMBIOS_SERIAL: &str = "SERIAL-X";
const SMBIOS_UUID: &str = "6D1F2C3A-1B2C-4D5E-8F90-A1B2C3D4E5F6";
const DISK_SERIAL: &str = "DISK-X";
/// The id the test responder gives the VM.
const MACHINE_ID: &str = "m-image-test";
/// Generous bounds for TCG on a shared 2-core machine; polls return as soon as they can.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

// --- skipping -------------------------------------------------------------------------

fn newest_kernel() -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
        .filter(|v| v.ends_with("-amd64"))
        .collect();
    versions.sort_by_key(|v| version_key(v));
    versions.pop()
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// What building the image needs.
const IMAGE_NEEDS: &[Need<'static>] = &[
    Need::Netns,
    Need::Tool("cargo"),
    Need::Tool("cpio"),
    Need::Tool("modprobe"),
    Need::Tool("modinfo"),
    Need::Tool("gzip"),
    Need::Tool("file"),
    Need::Tool("mknod"),
];

/// What booting it needs on top.
const BOOT_NEEDS: &[Need<'static>] = &[
    Need::Tool("qemu-system-x86_64"),
    Need::Tool("dnsmasq"),
    Need::Tool("nats-server"),
];

/// Why the image tests cannot run here, if they cannot.
fn image_skip_reason() -> Option<String> {
    unmet(IMAGE_NEEDS).or_else(|| {
        newest_kernel()
            .is_none()
            .then(|| "no /boot/vmlinuz-*-amd64 (apt-get install -y linux-image-amd64)".into())
    })
}

fn boot_skip_reason() -> Option<String> {
    image_skip_reason().or_else(|| unmet(BOOT_NEEDS))
}

/// Returns early (the test passes) when `gate` says the test cannot run here; under
/// `SUBSTRUCT_REQUIRE_SYSTEM_TESTS` the gate fails the test instead.
macro_rules! skip_unless {
    ($reason:expr) => {
        if !gate($reason) {
            return Ok(());
        }
    };
}

// --- building (once per test binary) --------------------------------------------------

/// The image, built once per test process by the shared helper (which serializes builds
/// across test binaries) into `target/prospector-image/`.
#[derive(Debug)]
struct Image {
    dir: PathBuf,
}

fn image() -> Result<Image> {
    let started = Instant::now();
    let dir = substruct_tests::prospector_image()?;
    println!(
        "image ready in {:.1}s at {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(Image { dir })
}

// --- inspecting -----------------------------------------------------------------------

/// The initramfs as an uncompressed cpio archive.
fn decompressed_initrd(path: &Path) -> Result<Vec<u8>> {
    let mut magic = [0u8; 6];
    File::open(path)?.read_exact(&mut magic)?;
    let tool = match magic {
        [0x1f, 0x8b, ..] => "gzip",
        [0xfd, b'7', b'z', b'X', b'Z', 0] => "xz",
        [b'0', b'7', b'0', b'7', b'0', b'1'] => "cat",
        other => bail!("unknown initramfs compression, magic {other:02x?}"),
    };
    let out = Command::new(tool)
        .args(if tool == "cat" { vec![] } else { vec!["-dc"] })
        .arg(path)
        .output()
        .with_context(|| format!("{tool} -dc {}", path.display()))?;
    ensure!(out.status.success(), "{tool} failed on {}", path.display());
    Ok(out.stdout)
}

/// Runs cpio with `args`, the archive on stdin.
fn cpio(archive: &[u8], args: &[&str]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("cpio")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cpio")?;
    let mut stdin = child.stdin.take().context("cpio stdin")?;
    let data = archive.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    ensure!(
        out.status.success(),
        "cpio {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// True when the ELF file has no PT_INTERP program header (no dynamic loader).
fn elf_is_static(bytes: &[u8]) -> Result<bool> {
    ensure!(bytes.get(..4) == Some(b"\x7fELF"), "not an ELF file");
    ensure!(bytes.get(4) == Some(&2), "not a 64-bit ELF");
    ensure!(bytes.get(5) == Some(&1), "not little-endian");
    let u16_at = |o: usize| -> Result<u16> {
        let b = bytes.get(o..o + 2).context("truncated ELF")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| -> Result<u64> {
        let b = bytes.get(o..o + 8).context("truncated ELF")?;
        Ok(u64::from_le_bytes(b.try_into()?))
    };
    let phoff = usize::try_from(u64_at(0x20)?)?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    ensure!(phnum > 0, "ELF without program headers");
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let b = bytes.get(at..at + 4).context("truncated program header")?;
        if u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `.ko` file names (with `-` as `_`) that `modprobe --show-depends` names for `module`,
/// or `None` when this kernel lacks the module.
fn module_files(kver: &str, module: &str) -> Option<Vec<String>> {
    let out = Command::new("modprobe")
        .args(["-S", kver, "--show-depends", module])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("insmod "))
            .filter_map(|p| p.split_whitespace().next())
            .filter_map(|p| Path::new(p).file_name()?.to_str().map(ko_name))
            .collect(),
    )
}

/// `crc-t10dif.ko.xz` → `crc_t10dif`
fn ko_name(file: &str) -> String {
    let base = file.split(".ko").next().unwrap_or(file);
    base.replace('-', "_")
}

#[test]
fn image_holds_a_static_init_the_modules_and_fits_the_size_targets() -> Result<()> {
    skip_unless!(image_skip_reason());
    let img = image()?;
    let kver = newest_kernel().context("kernel version")?;
    let vmlinuz = img.dir.join("vmlinuz");
    let initrd = img.dir.join("initrd.img");
    let archive = decompressed_initrd(&initrd)?;
    let listing = String::from_utf8(cpio(&archive, &["-t", "--quiet"])?)?;
    let entries: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_start_matches("./"))
        .collect();
    for needed in [
        "init",
        "lib/modules/substruct.order",
        "lib/modules/substruct.deps",
        "lib/modules/substruct.modalias",
        "dev/console",
        "proc",
        "sys",
        "bin/busybox",
    ] {
        assert!(
            entries.contains(&needed),
            "{needed} missing from the initramfs"
        );
    }

    // /init is the prospector, statically linked, within its size target.
    let init = cpio(&archive, &["-i", "--to-stdout", "--quiet", "init"])?;
    assert!(
        elf_is_static(&init)?,
        "/init has a PT_INTERP: dynamically linked"
    );
    let init_bytes = init.len() as u64;
    assert!(
        init_bytes <= MAX_PROSPECTOR_BYTES,
        "/init is {init_bytes} bytes, over {MAX_PROSPECTOR_BYTES}"
    );
    assert!(
        init.windows(b"SUBSTRUCT-PROSPECTOR-READY".len())
            .any(|w| w == b"SUBSTRUCT-PROSPECTOR-READY"),
        "/init is not the prospector"
    );

    // The order file names files that are in the archive; every wanted module the kernel
    // has is among them, dependencies before dependents.
    let order = String::from_utf8(cpio(
        &archive,
        &[
            "-i",
            "--to-stdout",
            "--quiet",
            "lib/modules/substruct.order",
        ],
    )?)?;
    let ordered: Vec<&str> = order.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!ordered.is_empty(), "empty module order file");
    for path in &ordered {
        let rel = path.trim_start_matches('/');
        assert!(
            entries.contains(&rel),
            "{path} listed but not in the archive"
        );
        assert!(rel.ends_with(".ko"), "{path} is not an uncompressed module");
    }
    let loaded: Vec<String> = ordered
        .iter()
        .filter_map(|p| Path::new(p).file_name()?.to_str().map(ko_name))
        .collect();
    let mut missing_in_kernel = Vec::new();
    for module in NIC_MODULES.iter().chain(STORAGE_MODULES) {
        let Some(files) = module_files(&kver, module) else {
            missing_in_kernel.push(*module);
            continue;
        };
        let mut last = None;
        for f in &files {
            let pos = loaded.iter().position(|l| l == f);
            assert!(
                pos.is_some(),
                "{f} (needed by {module}) not in the order file"
            );
            last = pos.max(last);
        }
        // The module itself comes after all its dependencies.
        if let Some(own) = files.last() {
            assert_eq!(
                loaded.iter().position(|l| l == own),
                last,
                "{module} is ordered before one of its dependencies"
            );
        }
    }
    assert!(
        missing_in_kernel.len() < NIC_MODULES.len(),
        "no wanted module exists in kernel {kver}"
    );

    let kernel_bytes = std::fs::metadata(&vmlinuz)?.len();
    let initrd_bytes = std::fs::metadata(&initrd)?.len();
    let total = kernel_bytes + initrd_bytes;
    println!(
        "sizes: prospector {init_bytes} B, vmlinuz {kernel_bytes} B, initrd {initrd_bytes} B, \
         total {total} B ({:.1} MiB); {} modules; not in this kernel: {missing_in_kernel:?}",
        total as f64 / 1048576.0,
        ordered.len()
    );
    assert!(
        total <= MAX_IMAGE_BYTES,
        "image is {total} bytes, over {MAX_IMAGE_BYTES}"
    );
    Ok(())
}

// --- booting --------------------------------------------------------------------------

/// Holds /tmp/substruct-qemu.lock for the duration of one QEMU run.
struct QemuLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

fn qemu_lock() -> Result<QemuLock> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(QEMU_LOCK)
        .with_context(|| format!("opening {QEMU_LOCK}"))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("flock {QEMU_LOCK}"))?;
    Ok(QemuLock(lock))
}

/// A network namespace with a bridge and a tap for QEMU, plus the processes started in
/// it; everything is killed and the namespace deleted on drop, also when a test fails
/// (the logs are kept then).
struct Lab {
    // Declared first so the processes stop before the namespace goes.
    procs: Vec<NsProcess>,
    ns: Netns,
    dir: tempfile::TempDir,
}

const BRIDGE_IP: &str = "10.213.7.1";

impl Lab {
    fn new(tag: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("substruct-{tag}-"))
            .tempdir()?;
        let ns = Netns::create(tag)?;
        ns.add_bridge("br0", &format!("{BRIDGE_IP}/24"))?;
        ns.add_tap("tap0", "br0")?;
        Ok(Self {
            procs: Vec::new(),
            ns,
            dir,
        })
    }

    fn exec(&self, argv: &[&str]) -> Command {
        let mut cmd = self.ns.command(argv[0]);
        cmd.args(&argv[1..]);
        cmd
    }

    fn spawn(&mut self, argv: &[&str], log: &str) -> Result<()> {
        let p = NsProcess::spawn(
            &self.ns,
            argv[0],
            argv[0],
            &argv[1..],
            self.dir.path().join(log),
        )?;
        self.procs.push(p);
        Ok(())
    }

    fn start_dnsmasq(&mut self) -> Result<()> {
        let leases = self.dir.path().join("leases");
        let leases = format!("--dhcp-leasefile={}", leases.display());
        self.spawn(
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=br0",
                "--bind-dynamic",
                "--dhcp-range=10.213.7.100,10.213.7.199,255.255.255.0,1h",
                "--no-ping",
                &leases,
                "--log-dhcp",
                "--log-facility=-",
                "--user=root",
                "--group=root",
            ],
            "dnsmasq.log",
        )
    }

    fn start_nats(&mut self) -> Result<()> {
        self.spawn(&["nats-server", "-a", BRIDGE_IP, "-p", "4222"], "nats.log")?;
        let mut procs: Vec<&mut NsProcess> = self.procs.iter_mut().collect();
        self.ns
            .wait_listening(BRIDGE_IP, 4222, Duration::from_secs(10), &mut procs)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = std::mem::replace(
                &mut self.dir,
                match tempfile::tempdir() {
                    Ok(d) => d,
                    Err(_) => return,
                },
            );
            eprintln!("lab logs kept at {}", kept.keep().display());
        }
    }
}

/// A QEMU VM whose serial console goes to a file; killed on drop.
struct Vm {
    child: Child,
    serial: PathBuf,
    started: Instant,
}

impl Vm {
    fn boot(lab: Option<&Lab>, dir: &Path, append: &str) -> Result<Self> {
        let img = image()?;
        let serial = dir.join("serial.log");
        let disk = dir.join("disk.img");
        File::create(&disk)?.set_len(64 << 20)?;
        let uuid = SMBIOS_UUID;
        let smbios = format!("type=1,serial={SMBIOS_SERIAL},uuid={uuid}");
        let drive = format!("file={},if=none,id=d0,format=raw", disk.display());
        let blk = format!("virtio-blk-pci,drive=d0,serial={DISK_SERIAL}");
        let kernel = img.dir.join("vmlinuz");
        let initrd = img.dir.join("initrd.img");
        let mut argv: Vec<String> = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "1",
            "-nodefaults",
            "-nographic",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(
            [
                "-kernel",
                &kernel.to_string_lossy(),
                "-initrd",
                &initrd.to_string_lossy(),
                "-append",
                append,
                "-smbios",
                &smbios,
                "-drive",
                &drive,
                "-device",
                &blk,
                // Real servers have RDRAND; TCG's default CPU does not.
                "-device",
                "virtio-rng-pci",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let mut cmd = match lab {
            Some(lab) => {
                argv.extend(
                    [
                        "-netdev",
                        "tap,id=n0,ifname=tap0,script=no,downscript=no",
                        "-device",
                        "virtio-net-pci,netdev=n0,mac=52:54:00:21:37:01",
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                );
                let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
                lab.exec(&refs)
            }
            None => {
                // A NIC with no backend: enough for its driver to be chosen and bind.
                argv.extend(["-device".into(), "e1000,mac=52:54:00:21:37:02".into()]);
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
        };
        let log = File::create(&serial)?;
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning qemu-system-x86_64")?;
        Ok(Self {
            child,
            serial,
            started,
        })
    }

    fn log(&self) -> String {
        std::fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Seconds since QEMU start when `marker` first appeared (bounded wait).
    fn wait_for(&self, marker: &str, timeout: Duration) -> Result<f64> {
        wait_for_blocking(marker, timeout, || self.log().contains(marker))
            .with_context(|| format!("serial log so far:\n{}", self.log()))?;
        Ok(self.started.elapsed().as_secs_f64())
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Answers discover requests inside the lab's namespace with PowerOff and hands each
/// decoded request to the test. Its thread joins the namespace, so its sockets live
/// there; it stops when the returned sender is dropped (or after the boot timeout).
fn start_responder(
    lab: &Lab,
    site: &SiteId,
) -> Result<(
    mpsc::Receiver<DiscoverRequest>,
    tokio::sync::oneshot::Sender<()>,
)> {
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let subject = subjects::discover(site);
    let url = format!("nats://{BRIDGE_IP}:4222");
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let machine_id = MachineId::new(MACHINE_ID)?;
    // The thread joins the namespace first (an error there ends it: see below).
    let thread = lab.ns.spawn_inside(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return Ok(());
            }
        };
        rt.block_on(async move {
            let client = match async_nats::connect(url.as_str()).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("connect {url}: {e}")));
                    return;
                }
            };
            let mut sub = match client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("subscribe: {e}")));
                    return;
                }
            };
            let _ = client.flush().await;
            let _ = ready_tx.send(Ok(()));
            let mut stop_rx = stop_rx;
            loop {
                let msg = tokio::select! {
                    _ = &mut stop_rx => return,
                    _ = tokio::time::sleep(BOOT_TIMEOUT * 2) => return,
                    m = sub.next() => m,
                };
                let Some(msg) = msg else { return };
                let Ok(req) = substruct_wire::decode::<DiscoverRequest>(&msg.payload) else {
                    continue;
                };
                let reply = DiscoverReply {
                    machine_id: machine_id.clone(),
                    instruction: Instruction::PowerOff,
                };
                if let (Some(to), Ok(bytes)) = (msg.reply, substruct_wire::encode(&reply)) {
                    let _ = client.publish(to, bytes.into()).await;
                    let _ = client.flush().await;
                }
                let _ = tx.send(req);
            }
        });
        Ok(())
    });
    match ready_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => Ok((rx, stop_tx)),
        Ok(Err(e)) => bail!("responder: {e}"),
        // The thread ended without a word: it could not join the namespace.
        Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Ok(Err(e)) => Err(e.context("responder")),
            _ => bail!("responder thread ended before it was ready"),
        },
        Err(e) => bail!("responder did not start: {e}"),
    }
}

#[test]
fn qemu_boot_reports_over_nats_and_powers_off() -> Result<()> {
    skip_unless!(boot_skip_reason());
    image()?;
    let mut lab = Lab::new("boot")?;
    lab.start_dnsmasq()?;
    lab.start_nats()?;
    let site = SiteId::new("s1")?;
    let (reports, _stop) = start_responder(&lab, &site)?;

    let _lock = qemu_lock()?;
    let append =
        format!("console=ttyS0 substruct.site=s1 substruct.nats=nats://{BRIDGE_IP}:4222 panic=-1");
    let mut vm = Vm::boot(Some(&lab), lab.dir.path(), &append)?;
    let ready = vm.wait_for("SUBSTRUCT-PROSPECTOR-READY", BOOT_TIMEOUT)?;
    let net = vm.wait_for("SUBSTRUCT-NET-UP", BOOT_TIMEOUT)?;
    let req = reports
        .recv_timeout(BOOT_TIMEOUT)
        .with_context(|| format!("no report arrived; serial log:\n{}", vm.log()))?;
    let reported = vm.wait_for(
        &format!("SUBSTRUCT-REPORTED machine={MACHINE_ID}"),
        BOOT_TIMEOUT,
    )?;
    println!(
        "boot timings (s since QEMU start): READY {ready:.1}, NET-UP {net:.1}, REPORTED {reported:.1}"
    );

    assert_eq!(req.site, site);
    let dmi = &req.report.dmi;
    assert_eq!(
        dmi.product_serial.as_deref(),
        Some(SMBIOS_SERIAL),
        "{dmi:?}"
    );
    assert_eq!(
        dmi.product_uuid.as_deref().map(str::to_ascii_lowercase),
        Some(SMBIOS_UUID.to_ascii_lowercase()),
        "{dmi:?}"
    );
    assert!(
        req.report
            .disks
            .iter()
            .any(|d| d.serial.as_deref() == Some(DISK_SERIAL)),
        "virtio disk serial missing: {:?}",
        req.report.disks
    );
    assert!(
        req.report
            .nics
            .iter()
            .any(|n| n.mac.to_string() == "52:54:00:21:37:01"),
        "NIC missing: {:?}",
        req.report.nics
    );

    // PowerOff: the VM halts and QEMU (-no-reboot) exits by itself.
    wait_for_blocking("the VM to power off", BOOT_TIMEOUT, || vm.exited())
        .with_context(|| format!("serial log:\n{}", vm.log()))?;
    let log = vm.log();
    assert!(
        log.contains("reboot: Power down"),
        "no power-down in:\n{log}"
    );
    assert!(!log.contains("Kernel panic"), "kernel panic in:\n{log}");
    assert!(
        !log.contains("SUBSTRUCT-ERROR panic"),
        "prospector panic in:\n{log}"
    );
    Ok(())
}

#[test]
fn qemu_boot_without_nats_argument_reports_errors_and_keeps_running() -> Result<()> {
    skip_unless!(boot_skip_reason());
    image()?;
    let dir = tempfile::Builder::new()
        .prefix("substruct-nonats-")
        .tempdir()?;
    let _lock = qemu_lock()?;
    let vm = Vm::boot(None, dir.path(), "console=ttyS0 substruct.site=s1 panic=-1")?;
    vm.wait_for("SUBSTRUCT-PROSPECTOR-READY", BOOT_TIMEOUT)?;
    vm.wait_for("SUBSTRUCT-ERROR missing substruct.nats=", BOOT_TIMEOUT)?;
    // PID 1 keeps waiting and repeats the error (every ~10 s) instead of exiting.
    wait_for_blocking("the error to repeat", Duration::from_secs(60), || {
        vm.log()
            .matches("SUBSTRUCT-ERROR missing substruct.nats=")
            .count()
            >= 2
    })
    .with_context(|| format!("serial log:\n{}", vm.log()))?;
    let log = vm.log();
    assert!(!log.contains("Kernel panic"), "kernel panic in:\n{log}");
    assert!(
        !log.contains("SUBSTRUCT-NET-UP"),
        "network came up without a NATS URL"
    );
    // The Intel NIC's driver was picked from the modalias table and bound to it.
    assert!(
        log.contains("e1000 0000:") && log.contains("52:54:00:21:37:02"),
        "e1000 did not bind:\n{log}"
    );
    // Only matching modules are loaded: e1000 and virtio, no Mellanox driver.
    let matched = log
        .lines()
        .find(|l| l.contains("substruct-prospector: modules:"))
        .context("no module summary line")?;
    assert!(matched.contains(" e1000"), "{matched}");
    assert!(matched.contains("virtio_blk"), "{matched}");
    assert!(!matched.contains("mlx5_core"), "{matched}");
    Ok(())
}

#[test]
fn elf_check_tells_static_from_dynamic() -> Result<()> {
    // /bin/sh on Debian is dynamically linked; the check must see its PT_INTERP.
    let sh = std::fs::read("/bin/sh")?;
    assert!(!elf_is_static(&sh)?);
    assert!(elf_is_static(b"not elf").is_err());
    assert_eq!(ko_name("crc-t10dif.ko.xz"), "crc_t10dif");
    Ok(())
}
