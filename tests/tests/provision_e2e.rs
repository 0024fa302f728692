//! Discovered to deployed on a real PXE client, by image deploy: NATS, the controller
//! and the edge agent in a site namespace; an unknown BIOS QEMU machine with a blank
//! disk boots the prospector, a rule assigns the marker-image profile, the prospector
//! streams the disk image (uploaded to the controller with `substruct images add`,
//! fetched by the edge into its cache) onto the disk, verifies it and calls back
//! `done`; the machine reboots, PXE boots again, the site answers "local boot", and the
//! machine comes up from its own disk and prints the image's marker. Once with each
//! way of local boot.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::qemu::{
    acquire_vm_slot, DiskBus, DiskSpec, Firmware, NicLink, NicSpec, Vm, VmSpec,
};
use substruct_testkit::try_poll_blocking;
use substruct_tests::disk_image::{marker_disk_image, os_up_line, DISK_MARKER};
use substruct_tests::{workspace_root, Site, SiteOptions};

const LIVE_MARKER: &str = "SUBSTRUCT-PROSPECTOR-READY";
const DEPLOYED: &str = "image deployed to vda";
const LOCAL_SCRIPT: &str = "booting the local disk";

fn image_deploy(tag: &str, local_boot: &str, mac: &str) -> Result<()> {
    if !system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("mkfs.vfat"),
        Need::Tool("syslinux"),
    ]) {
        return Ok(());
    }
    let disk = marker_disk_image()?;
    let _slot = acquire_vm_slot()?;
    let mut site = Site::start(tag, SiteOptions::default())?;
    let result = (|| -> Result<()> {
        let root = workspace_root();
        let profiles = root.join("deploy/profiles");
        let disk_path = disk.display().to_string();
        for args in [
            vec!["sites", "add", "s1", "--local-boot", local_boot],
            vec![
                "images",
                "add",
                &disk_path,
                "--kind",
                "disk",
                "--name",
                "marker.img",
            ],
            vec![
                "profiles",
                "add",
                profiles
                    .join("marker-image.toml")
                    .to_str()
                    .context("path")?,
            ],
            vec![
                "rules",
                "add",
                profiles
                    .join("rules/qemu-marker.toml")
                    .to_str()
                    .context("path")?,
            ],
        ] {
            let out = site.cli(&args)?;
            println!("$ substruct {}\n{}", args.join(" "), out.trim_end());
        }
        let tap = site.new_tap()?;
        let mut spec = VmSpec::new(tag, Firmware::Bios);
        spec.allow_reboot = true;
        spec.nics.push(NicSpec {
            link: NicLink::Tap(tap),
            mac: mac.into(),
            model: "virtio-net-pci".into(),
        });
        spec.disks.push(DiskSpec {
            bus: DiskBus::Virtio,
            size_bytes: 64 << 20,
            serial: format!("{tag}-disk"),
            image: None,
        });
        let mut vm = Vm::start(&site.ns, &spec, site.dir.path())?;
        let steps = [
            ("prospector running", LIVE_MARKER.to_owned()),
            ("image written and verified", DEPLOYED.to_owned()),
            ("booted from its own disk", os_up_line(DISK_MARKER)),
        ];
        for (label, needle) in &steps {
            let t = vm.wait_for_serial(needle, Duration::from_secs(400))?;
            println!("{label:<32} {:>7.1} s", t.as_secs_f64());
        }
        let serial = std::fs::read_to_string(&vm.log)?;
        let after_deploy = serial
            .split_once(DEPLOYED)
            .map(|(_, rest)| rest)
            .context("deploy line vanished")?;
        match local_boot {
            // iPXE got the "local" script and handed over to the disk.
            "ipxe-exit" => {
                if !after_deploy.contains(LOCAL_SCRIPT) {
                    bail!("no local-boot script after the deploy");
                }
            }
            // DHCP offered no boot file: no iPXE script at all after the deploy.
            _ => {
                if after_deploy.contains("boot.ipxe") || after_deploy.contains(LOCAL_SCRIPT) {
                    bail!("the edge still handed out a boot script after the deploy");
                }
            }
        }
        let m = site.wait_state(mac, "deployed", Duration::from_secs(60))?;
        assert_eq!(m["profile"], "marker-image");
        assert!(m.get("ticket").is_none(), "the token expired: {m}");
        // The controller knows the site's edge caches the image.
        let mut images = Value::Null;
        try_poll_blocking(
            "the controller to learn that s1 caches marker.img",
            Duration::from_secs(90),
            Duration::from_secs(1),
            || {
                images = serde_json::from_str(&site.cli(&["images", "list", "--json"])?)?;
                let cached = images
                    .as_array()
                    .and_then(|a| a.iter().find(|i| i["name"] == "marker.img"))
                    .map(|i| i["sites"].clone());
                Ok((cached == Some(serde_json::json!(["s1"]))).then_some(()))
            },
        )
        .with_context(|| format!("images: {images}"))?;
        println!("{}", site.cli(&["machines", "list"])?);
        Ok(())
    })();
    if result.is_err() {
        site.dump_logs();
    }
    result
}

#[test]
fn image_deploy_then_local_boot_by_ipxe_exit() -> Result<()> {
    image_deploy("prov-exit", "ipxe-exit", "52:54:00:77:30:0a")
}

#[test]
fn image_deploy_then_local_boot_by_no_boot_file() -> Result<()> {
    image_deploy("prov-nofile", "no-boot-file", "52:54:00:77:30:0b")
}
