//! A real Debian 12 installed by image deploy and configured by cloud-init: the project's
//! own cloud image (`deploy/cloud-image/build`, from Debian's packages) is registered;
//! an unknown QEMU machine (SeaBIOS, then OVMF with Secure Boot on) boots the prospector
//! and reports; the operator assigns `debian12-cloud` (its SSH key swapped for one the
//! test made); the prospector fetches the
//! seed (`meta-data`, `user-data`) from the edge, writes the image (registered as a
//! compressed qcow2 under SeaBIOS, as zstd under OVMF: converted while it streams),
//! checks the sha256 of what was sent and
//! adds the `CIDATA` partition at the disk's end; `done`; the machine reboots, the site
//! answers local boot (SeaBIOS: iPXE's `sanboot`; OVMF: a boot file the edge refuses, and
//! the firmware goes on to the disk's `\EFI\BOOT\BOOTX64.EFI`, the image's signed shim →
//! GRUB → kernel), Debian comes up from its own disk, cloud-init names it after the
//! profile, and the test logs in over SSH from the site's namespace with its key.
//! Prints each step's time from power-on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::run;
use substruct_testkit::qemu::{
    acquire_vm_slot, DiskBus, DiskSpec, Firmware, NicLink, NicSpec, Vm, VmSpec,
};
use substruct_testkit::try_poll_blocking;
use substruct_tests::{target_dir, workspace_root, Site, SiteOptions};

const UP: &str = "SUBSTRUCT-CLOUD-UP";
const PROFILE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL6QYJotKZzUXozxyTnLSoKjYHMNWzW6OflsyyuDpXyo ops@example";

/// The cloud image: `SUBSTRUCT_CLOUD_IMAGE` (deploy/test builds it once), else built
/// (or taken from the build script's cache) under `target/cloud-image/`.
fn cloud_image() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SUBSTRUCT_CLOUD_IMAGE") {
        return Ok(PathBuf::from(path));
    }
    let out = target_dir().join("cloud-image/debian12-cloud.img");
    let script = workspace_root().join("deploy/cloud-image/build");
    let status = Command::new(&script)
        .arg(&out)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(status.success(), "{} failed", script.display());
    Ok(out)
}

/// The form the image is registered in: the prospector converts it while it streams.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// `qemu-img convert -c -O qcow2` (deflate-compressed clusters, holes unallocated).
    Qcow2Compressed,
    /// `zstd` (the size in the frame header).
    Zstd,
}

impl Form {
    /// The registered image name (the profile's `image`).
    fn name(self) -> &'static str {
        match self {
            Form::Qcow2Compressed => "debian-12/cloud.qcow2",
            Form::Zstd => "debian-12/cloud.img.zst",
        }
    }

    /// `raw` in this form, made once next to it (remade when `raw` is newer).
    fn make(self, raw: &Path) -> Result<PathBuf> {
        let out = raw.with_extension(match self {
            Form::Qcow2Compressed => "qcow2",
            Form::Zstd => "img.zst",
        });
        let fresh = |p: &Path| -> Option<bool> {
            Some(
                std::fs::metadata(p).ok()?.modified().ok()?
                    >= std::fs::metadata(raw).ok()?.modified().ok()?,
            )
        };
        if fresh(&out) == Some(true) {
            return Ok(out);
        }
        let tmp = out.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut cmd = match self {
            Form::Qcow2Compressed => {
                let mut c = Command::new("qemu-img");
                c.args(["convert", "-f", "raw", "-c", "-O", "qcow2"])
                    .arg(raw)
                    .arg(&tmp);
                c
            }
            Form::Zstd => {
                let mut c = Command::new("zstd");
                c.args(["-q", "-T0", "-o"]).arg(&tmp).arg(raw);
                c
            }
        };
        run(&mut cmd)?;
        std::fs::rename(&tmp, &out)?;
        Ok(out)
    }
}

/// One run: the firmware, the machine's MAC and SMBIOS serial, the host name the
/// profile gives it (`deb-` + the serial).
struct Case {
    tag: &'static str,
    firmware: Firmware,
    mac: &'static str,
    serial: &'static str,
    hostname: &'static str,
    /// The site's way of local boot (`sites add s1 --local-boot …`).
    local_boot: &'static str,
    /// The edge's extra flags (`--uefi-loader shim` for Secure Boot).
    edge_args: &'static [&'static str],
    form: Form,
}

/// `key=value` from the `SUBSTRUCT-CLOUD-UP` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn cloud_image_deploy_boots_debian_configured_by_cloud_init_bios() -> Result<()> {
    cloud(&Case {
        tag: "prov-cloud",
        firmware: Firmware::Bios,
        mac: "52:54:00:77:50:0a",
        serial: "CLOUD-01",
        hostname: "deb-cloud-01",
        local_boot: "ipxe-exit",
        edge_args: &[],
        form: Form::Qcow2Compressed,
    })
}

/// The same under OVMF with Secure Boot on (Microsoft's keys enrolled), on a site whose
/// UEFI loader is shim and whose local boot is the default (`ipxe-exit`): the prospector
/// runs from the signed chain (shim → GRUB → Debian's kernel); once deployed, the edge
/// offers the firmware a boot file it refuses (Debian's `ipxe.efi` would leave OVMF in
/// its boot menu after `exit`), OVMF's PXE fails at once and goes on to the disk, where
/// the image's own signed chain (shim as `\EFI\BOOT\BOOTX64.EFI` → Debian's GRUB →
/// Debian's kernel) passes the firmware's and shim's checks. No iPXE local-boot script
/// runs after the deploy. (Plain UEFI takes the same way with no signature checks:
/// `deploy/lab/run --firmware uefi --profile debian12-cloud`.)
#[test]
fn cloud_image_deploy_boots_debian_configured_by_cloud_init_uefi_secure_boot() -> Result<()> {
    cloud(&Case {
        tag: "prov-cloud-sb",
        firmware: Firmware::UefiSecureBoot,
        mac: "52:54:00:77:50:0b",
        serial: "CLOUD-02",
        hostname: "deb-cloud-02",
        local_boot: "ipxe-exit",
        edge_args: &["--uefi-loader", "shim"],
        form: Form::Zstd,
    })
}

fn cloud(case: &Case) -> Result<()> {
    if !system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("debootstrap"),
        Need::Tool("mkfs.ext4"),
        Need::Tool("syslinux"),
        Need::Tool("ssh"),
        Need::Tool("ssh-keygen"),
        Need::Tool("qemu-img"),
        Need::Tool("zstd"),
        Need::File("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
        Need::File("/usr/lib/shim/shimx64.efi.signed"),
        Need::File("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
        Need::File("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"),
    ]) {
        return Ok(());
    }
    let image = cloud_image()?;
    let _slot = acquire_vm_slot()?;
    let mut site = Site::start(
        case.tag,
        SiteOptions {
            edge_args: case.edge_args.iter().map(|a| (*a).to_owned()).collect(),
            ..SiteOptions::default()
        },
    )?;
    let result = flow(&mut site, &image, case);
    if result.is_err() {
        site.dump_logs();
    }
    result
}

fn flow(site: &mut Site, image: &Path, case: &Case) -> Result<()> {
    let (mac, hostname) = (case.mac, case.hostname);
    site.cli(&["sites", "add", "s1", "--local-boot", case.local_boot])?;
    // The image, compressed, sits in the edge's image directory; the controller
    // registers its name and hash (`--no-upload`; the upload path is provision_e2e's).
    let form = case.form.make(image)?;
    let placed = site.images.join(case.form.name());
    std::fs::create_dir_all(placed.parent().context("image dir")?)?;
    std::fs::copy(&form, &placed).with_context(|| format!("copying {}", form.display()))?;
    println!(
        "image: {} ({:.1} MiB, {:?}; raw {:.1} MiB)",
        case.form.name(),
        std::fs::metadata(&placed)?.len() as f64 / 1048576.0,
        case.form,
        std::fs::metadata(image)?.len() as f64 / 1048576.0
    );
    let path = placed.display().to_string();
    site.cli(&[
        "images",
        "add",
        &path,
        "--kind",
        "disk",
        "--name",
        case.form.name(),
        "--no-upload",
    ])?;
    // The shipped profile with the test's own key.
    let key = site.dir.path().join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "substruct-test",
            "-f",
        ])
        .arg(&key))?;
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let shipped =
        std::fs::read_to_string(workspace_root().join("deploy/profiles/debian12-cloud.toml"))?;
    ensure!(
        shipped.contains(PROFILE_KEY),
        "the shipped profile's key changed"
    );
    ensure!(
        shipped.contains("image = \"debian-12/cloud.img\""),
        "the shipped profile's image changed"
    );
    let profile = site.dir.path().join("debian12-cloud.toml");
    std::fs::write(
        &profile,
        shipped.replace(PROFILE_KEY, public.trim()).replace(
            "image = \"debian-12/cloud.img\"",
            &format!("image = \"{}\"", case.form.name()),
        ),
    )?;
    site.cli(&["profiles", "add", profile.to_str().context("path")?])?;

    let tap = site.new_tap()?;
    let mut spec = VmSpec::new(case.tag, case.firmware);
    spec.memory_mb = 1024;
    spec.allow_reboot = true;
    spec.smbios_serial = Some(case.serial.into());
    // No IPv6 PXE attempt (no DHCPv6 here) on the way from PXE to the disk.
    spec.ipv6_pxe = false;
    spec.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: mac.into(),
        model: "virtio-net-pci".into(),
    });
    spec.disks.push(DiskSpec {
        bus: DiskBus::Virtio,
        size_bytes: 4 << 30,
        serial: "CLOUD-DISK".into(),
        image: None,
    });
    let mut vm = Vm::start(&site.ns, &spec, site.dir.path())?;
    let t = vm.wait_for_serial("SUBSTRUCT-REPORTED", Duration::from_secs(300))?;
    println!("{:<40} {:>7.1} s", "prospector reported", t.as_secs_f64());
    let found = site.wait_state(mac, "discovered", Duration::from_secs(30))?;
    let secure_boot = found.pointer("/facts/secure_boot").cloned();
    ensure!(
        secure_boot == Some(Value::Bool(case.firmware == Firmware::UefiSecureBoot)),
        "facts.secure_boot is {secure_boot:?} under {:?}",
        case.firmware
    );
    let out = site.cli(&["machines", "assign", mac, "debian12-cloud"])?;
    println!(
        "$ substruct machines assign {mac} debian12-cloud\n{}",
        out.trim_end()
    );

    for (label, needle, secs) in [
        ("image written, verified, seeded", "cloud-init seed:", 600),
        ("callback done", "image deployed to vda", 60),
        ("Debian up, cloud-init finished", UP, 900),
    ] {
        let t = match vm.wait_for_serial(needle, Duration::from_secs(secs)) {
            Ok(t) => t,
            Err(e) => {
                let serial = std::fs::read_to_string(&vm.log).unwrap_or_default();
                eprintln!(
                    "----- VM serial -----\n{}",
                    substruct_testkit::qemu::tail(&serial, 80)
                );
                return Err(e);
            }
        };
        println!("{label:<40} {:>7.1} s", t.as_secs_f64());
    }
    let serial = std::fs::read_to_string(&vm.log)?;
    // The way to the disk: BIOS through iPXE's local script (sanboot); UEFI firmware
    // without any boot file, so no script at all after the deploy.
    let after_deploy = serial
        .split_once("image deployed to vda")
        .map(|(_, rest)| rest)
        .context("deploy line vanished")?;
    let local_script = after_deploy.contains("booting the local disk");
    match case.firmware {
        Firmware::Bios => ensure!(local_script, "no local-boot script after the deploy"),
        _ => {
            ensure!(
                !local_script && !after_deploy.contains("boot.ipxe"),
                "UEFI firmware was handed iPXE after the deploy"
            );
            // OVMF's words for the edge's refusal of substruct-local-boot.efi.
            ensure!(
                after_deploy.contains("PXE-E23"),
                "OVMF's PXE did not meet the refused local-boot file"
            );
        }
    }
    // The prospector converted the image while it streamed.
    let deploying = serial
        .lines()
        .find(|l| l.contains("deploying http"))
        .context("no deploying line")?;
    println!("{}", deploying.trim());
    let mib = std::fs::metadata(image)?.len() as f64 / 1048576.0;
    let format = match case.form {
        Form::Qcow2Compressed => format!(" qcow2 → {mib:.1} MiB"),
        Form::Zstd => format!(" zstd → {mib:.1} MiB"),
    };
    ensure!(deploying.contains(&format), "{deploying}");
    let deployed = format!("deployed {mib:.1} MiB");
    if let Some(l) = serial.lines().find(|l| l.contains(&deployed)) {
        println!("{}", l.trim());
    }
    let seed_line = serial
        .lines()
        .find(|l| l.contains("cloud-init seed:"))
        .context("seed line")?;
    println!("{}", seed_line.trim());
    ensure!(
        seed_line.contains("CIDATA, partition 3 of the mbr table"),
        "{seed_line}"
    );
    let up = serial
        .lines()
        .find(|l| l.contains(UP))
        .context("up line")?
        .trim()
        .to_owned();
    println!("{up}");
    ensure!(field(&up, "hostname") == Some(hostname), "{up}");
    ensure!(field(&up, "cloud-init") == Some("done"), "{up}");
    let m = site.wait_state(mac, "deployed", Duration::from_secs(30))?;
    assert_eq!(m["profile"], "debian12-cloud");

    // In over SSH with the test's key, from the site: the host name, the post-install
    // script's motd, the seed partition and the root grown up to it.
    let addr = field(&up, "addr")
        .filter(|a| !a.is_empty())
        .with_context(|| format!("no address in {up}"))?
        .to_owned();
    let mut last = String::new();
    let out = try_poll_blocking(
        "an SSH login to the deployed machine",
        Duration::from_secs(120),
        Duration::from_secs(2),
        || {
            let out = site
                .ns
                .command("ssh")
                .args(["-i"])
                .arg(&key)
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ConnectTimeout=10",
                    &format!("root@{addr}"),
                    "hostname; cat /etc/motd; blkid -L CIDATA; lsblk -bno NAME,SIZE /dev/vda",
                ])
                .output()?;
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            Ok(out
                .status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
        },
    )
    .with_context(|| format!("last ssh error: {last}"))?;
    println!("$ ssh root@{addr} …\n{}", out.trim_end());
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.first() == Some(&hostname), "{out}");
    ensure!(out.contains("provisioned-by-substruct"), "{out}");
    ensure!(out.contains("/dev/vda3"), "{out}");
    // growpart took the root (vda2) up to the seed: well beyond the image's size.
    let root = lines
        .iter()
        .find_map(|l| {
            l.trim_start_matches(['├', '└', '─', ' '])
                .strip_prefix("vda2")
        })
        .and_then(|s| s.trim().parse::<u64>().ok())
        .with_context(|| format!("no vda2 size in {out}"))?;
    let image_size = std::fs::metadata(image)?.len();
    if root <= image_size {
        bail!(
            "the root partition ({root} bytes) was not grown past the image ({image_size} bytes)"
        );
    }
    Ok(())
}
