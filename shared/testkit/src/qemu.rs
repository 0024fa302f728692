//! Real PXE clients: QEMU under TCG inside a test's network namespace, serial
//! console to a log file the test reads. VMs across the whole test run are limited
//! by a host-wide lock file (`/tmp/substruct-qemu.lock`) because TCG is CPU-bound
//! and this machine has two cores.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// Firmware of a test VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS; QEMU's NIC option ROM is iPXE.
    Bios,
    /// OVMF with the NIC's option ROM disabled, so OVMF's own PXE client boots.
    Uefi,
    /// OVMF built with Secure Boot (SMM), its variable store holding Microsoft's keys
    /// enrolled and Secure Boot on: only loaders signed by Microsoft's UEFI CA run.
    UefiSecureBoot,
    /// OVMF with its PXE clients off (fw_cfg `IPv4PXESupport`/`IPv6PXESupport` = n), so
    /// its HTTP boot client runs: DHCP as `HTTPClient`, the loader from a URL (HTTPS when
    /// the URL says so and [`VmSpec::https_cacerts`] gives the firmware a CA).
    UefiHttp,
}

impl Firmware {
    /// OVMF, any build.
    pub fn is_uefi(self) -> bool {
        matches!(
            self,
            Firmware::Uefi | Firmware::UefiSecureBoot | Firmware::UefiHttp
        )
    }
}

/// Where a NIC is plugged.
#[derive(Debug, Clone)]
pub enum NicLink {
    /// A tap device (already on the bridge) in the VM's namespace.
    Tap(String),
    /// An isolated QEMU hub: link up, nothing else on it.
    Isolated,
}

#[derive(Debug, Clone)]
pub struct NicSpec {
    pub link: NicLink,
    pub mac: String,
    /// `virtio-net-pci`, `e1000`, ...
    pub model: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    Nvme,
}

#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub bus: DiskBus,
    pub size_bytes: u64,
    pub serial: String,
    /// Existing image to attach (raw); a sparse file of `size_bytes` is made otherwise.
    pub image: Option<PathBuf>,
}

/// A test VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub firmware: Firmware,
    pub memory_mb: u32,
    pub nics: Vec<NicSpec>,
    pub disks: Vec<DiskSpec>,
    /// SMBIOS type 1 serial and UUID.
    pub smbios_serial: Option<String>,
    pub smbios_uuid: Option<String>,
    /// Boot from the network first (`bootindex=1` on the first NIC).
    pub netboot_first: bool,
    /// Let a reboot restart the VM (default: QEMU exits, `-no-reboot`).
    pub allow_reboot: bool,
    /// OVMF's trusted CAs for HTTPS boot: a file of EFI signature lists
    /// (`substruct-edge efi-cacerts`), given as fw_cfg `etc/edk2/https/cacerts`.
    pub https_cacerts: Option<PathBuf>,
    /// OVMF's IPv6 PXE client (default on). Off (fw_cfg `IPv6PXESupport` = n), a UEFI
    /// machine that finds no boot file over IPv4 goes on to its disk without first waiting
    /// for a DHCPv6 answer no site gives.
    pub ipv6_pxe: bool,
    /// OVMF's IPv4 PXE client (default on). Off (fw_cfg `IPv4PXESupport` = n), OVMF's
    /// first network boot is PXE over IPv6.
    pub ipv4_pxe: bool,
}

impl VmSpec {
    pub fn new(name: &str, firmware: Firmware) -> Self {
        Self {
            name: name.to_owned(),
            firmware,
            memory_mb: 512,
            nics: vec![],
            disks: vec![],
            smbios_serial: None,
            smbios_uuid: None,
            netboot_first: true,
            allow_reboot: false,
            https_cacerts: None,
            ipv6_pxe: true,
            ipv4_pxe: true,
        }
    }
}

/// Paths of the firmware files (Debian packages `ovmf`, `ipxe-qemu`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF with Secure Boot (needs SMM), and a variable store with Microsoft's keys enrolled.
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// Holds the host-wide VM slot; dropping it lets the next test's VMs run.
#[derive(Debug)]
pub struct VmSlot {
    _file: File,
}

/// Waits for the host-wide VM slot.
pub fn acquire_vm_slot() -> Result<VmSlot> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/substruct-qemu.lock")
        .context("opening /tmp/substruct-qemu.lock")?;
    file.lock().context("locking /tmp/substruct-qemu.lock")?;
    Ok(VmSlot { _file: file })
}

/// A running VM; killed on drop.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    pub log: PathBuf,
    pub started: Instant,
    pub name: String,
}

impl Vm {
    /// Starts `spec` inside `ns`, writing the serial console to `dir/NAME.serial.log`.
    pub fn start(ns: &Netns, spec: &VmSpec, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{}.serial.log", spec.name));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut args: Vec<String> = vec![
            "-accel".into(),
            "tcg".into(),
            "-m".into(),
            spec.memory_mb.to_string(),
            "-smp".into(),
            "1".into(),
            "-nodefaults".into(),
            "-nographic".into(),
            "-serial".into(),
            "stdio".into(),
            "-monitor".into(),
            "none".into(),
            // An entropy source, as real servers have (RDRAND): without one the live
            // image's first random numbers wait for the kernel's pool under TCG.
            "-device".into(),
            "virtio-rng-pci".into(),
        ];
        if !spec.allow_reboot {
            args.push("-no-reboot".into());
        }
        if spec.firmware.is_uefi() {
            let secure = spec.firmware == Firmware::UefiSecureBoot;
            let (code, vars_template) = if secure {
                (OVMF_CODE_SECBOOT, OVMF_VARS_MS)
            } else {
                (OVMF_CODE, OVMF_VARS)
            };
            let vars = dir.join(format!("{}.ovmf-vars.fd", spec.name));
            std::fs::copy(vars_template, &vars)
                .with_context(|| format!("copying {vars_template}"))?;
            if secure {
                // The Secure Boot build keeps its variables behind SMM.
                args.extend([
                    "-global".into(),
                    "driver=cfi.pflash01,property=secure,value=on".into(),
                ]);
            }
            args.extend([
                "-machine".into(),
                if secure { "q35,smm=on" } else { "q35" }.into(),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
        if spec.firmware == Firmware::UefiHttp {
            args.extend([
                "-fw_cfg".into(),
                "name=opt/org.tianocore/IPv4PXESupport,string=n".into(),
                "-fw_cfg".into(),
                "name=opt/org.tianocore/IPv6PXESupport,string=n".into(),
            ]);
        }
        if !spec.ipv6_pxe && spec.firmware != Firmware::UefiHttp {
            args.extend([
                "-fw_cfg".into(),
                "name=opt/org.tianocore/IPv6PXESupport,string=n".into(),
            ]);
        }
        if !spec.ipv4_pxe && spec.firmware != Firmware::UefiHttp {
            args.extend([
                "-fw_cfg".into(),
                "name=opt/org.tianocore/IPv4PXESupport,string=n".into(),
            ]);
        }
        if let Some(cacerts) = &spec.https_cacerts {
            // (QEMU warns that the name lacks "opt/": OVMF reads exactly this name.)
            args.extend([
                "-fw_cfg".into(),
                format!("name=etc/edk2/https/cacerts,file={}", cacerts.display()),
            ]);
        }
        let mut smbios = Vec::new();
        if let Some(s) = &spec.smbios_serial {
            smbios.push(format!("serial={s}"));
        }
        if let Some(u) = &spec.smbios_uuid {
            smbios.push(format!("uuid={u}"));
        }
        if !smbios.is_empty() {
            args.extend([
                "-smbios".into(),
                format!(
                    "type=1,manufacturer=Substruct Lab,product=PXE Test VM,{}",
                    smbios.join(",")
                ),
            ]);
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            let netdev = match &nic.link {
                NicLink::Tap(tap) => format!("tap,id=n{i},ifname={tap},script=no,downscript=no"),
                NicLink::Isolated => format!("hubport,id=n{i},hubid={}", 100 + i),
            };
            let mut device = format!("{},netdev=n{i},mac={}", nic.model, nic.mac);
            if spec.firmware.is_uefi() {
                device.push_str(",romfile=");
            }
            if i == 0 && spec.netboot_first {
                device.push_str(",bootindex=1");
            }
            args.extend(["-netdev".into(), netdev, "-device".into(), device]);
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            let path = match &disk.image {
                Some(p) => p.clone(),
                None => {
                    let p = dir.join(format!("{}.disk{i}.img", spec.name));
                    let f = File::create(&p)?;
                    f.set_len(disk.size_bytes)?;
                    p
                }
            };
            args.extend([
                "-drive".into(),
                format!("file={},if=none,id=d{i},format=raw", path.display()),
            ]);
            let bootindex = if spec.netboot_first {
                format!(",bootindex={}", 10 + i)
            } else {
                format!(",bootindex={}", 1 + i)
            };
            let device = match disk.bus {
                DiskBus::Virtio => format!(
                    "virtio-blk-pci,drive=d{i},serial={}{bootindex}",
                    disk.serial
                ),
                DiskBus::Nvme => format!("nvme,drive=d{i},serial={}{bootindex}", disk.serial),
            };
            args.extend(["-device".into(), device]);
        }
        let child = ns
            .command("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("spawning qemu-system-x86_64 (package qemu-system-x86)")?;
        Ok(Self {
            child,
            log,
            started: Instant::now(),
            name: spec.name.clone(),
        })
    }

    /// The serial console so far, escape sequences and CRs removed.
    pub fn serial(&self) -> String {
        let raw = std::fs::read(&self.log).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&raw))
    }

    /// Waits until the serial console contains `needle`; returns the time since start.
    /// Fails at once, with the console's tail, if the VM exits without printing it.
    pub fn wait_for_serial(&mut self, needle: &str, timeout: Duration) -> Result<Duration> {
        let outcome = crate::try_poll_blocking(
            &format!("VM {} to print {needle:?}", self.name),
            timeout,
            Duration::from_millis(100),
            || {
                if self.serial().contains(needle) {
                    return Ok(Some(()));
                }
                match self.child.try_wait() {
                    // It may have printed the needle just before it exited.
                    Ok(Some(_)) if self.serial().contains(needle) => Ok(Some(())),
                    Ok(Some(status)) => bail!(
                        "VM {} exited ({status}) before printing {needle:?}",
                        self.name
                    ),
                    _ => Ok(None),
                }
            },
        );
        match outcome {
            Ok(()) => Ok(self.started.elapsed()),
            Err(e) => bail!(
                "{e:#}; serial log {}:\n{}",
                self.log.display(),
                tail(&self.serial(), 40)
            ),
        }
    }

    /// Waits for the VM to power off (QEMU exits under `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let child = &mut self.child;
        crate::wait_for_blocking(&format!("VM {} to power off", self.name), timeout, || {
            matches!(child.try_wait(), Ok(Some(_)))
        })
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes ANSI escape sequences and carriage returns.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c2 in chars.by_ref() {
                    if c2.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}
