//! Power-on to inventory on real PXE clients: NATS, the controller and the edge agent
//! run in a site namespace; a BIOS and a UEFI QEMU machine with known SMBIOS
//! identities, two NICs, a virtio and an NVMe disk boot the live image through the
//! edge, and must appear in the controller's inventory with exactly those facts.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::qemu::{
    acquire_vm_slot, DiskBus, DiskSpec, Firmware, NicLink, NicSpec, Vm, VmSpec,
};
use substruct_testkit::try_poll_blocking;
use substruct_tests::{Site, SiteOptions};

/// How long two TCG VMs booting at once on 2 cores may take to reach the inventory.
const INVENTORY_TIMEOUT: Duration = Duration::from_secs(420);

struct Expect {
    serial: &'static str,
    uuid: &'static str,
    macs: [&'static str; 2],
    disks: [(&'static str, u64); 2],
}

fn spec(name: &str, firmware: Firmware, tap: String, e: &Expect) -> VmSpec {
    let mut s = VmSpec::new(name, firmware);
    s.smbios_serial = Some(e.serial.into());
    s.smbios_uuid = Some(e.uuid.into());
    s.nics.push(NicSpec {
        link: NicLink::Tap(tap),
        mac: e.macs[0].into(),
        model: "virtio-net-pci".into(),
    });
    s.nics.push(NicSpec {
        link: NicLink::Isolated,
        mac: e.macs[1].into(),
        model: "e1000".into(),
    });
    s.disks.push(DiskSpec {
        bus: DiskBus::Virtio,
        size_bytes: e.disks[0].1,
        serial: e.disks[0].0.into(),
        image: None,
    });
    s.disks.push(DiskSpec {
        bus: DiskBus::Nvme,
        size_bytes: e.disks[1].1,
        serial: e.disks[1].0.into(),
        image: None,
    });
    s
}

fn find<'a>(machines: &'a [Value], serial: &str) -> Option<&'a Value> {
    machines.iter().find(|m| {
        m.pointer("/facts/dmi/product_serial")
            .and_then(Value::as_str)
            == Some(serial)
    })
}

fn check(machine: &Value, e: &Expect) -> Result<()> {
    let f = machine.get("facts").context("record has no facts")?;
    let uuid = f.pointer("/dmi/product_uuid").and_then(Value::as_str);
    if uuid != Some(e.uuid) {
        bail!("uuid {uuid:?} != {}", e.uuid);
    }
    let macs: Vec<&str> = f["nics"]
        .as_array()
        .context("nics")?
        .iter()
        .filter_map(|n| n["mac"].as_str())
        .collect();
    for mac in e.macs {
        if !macs.contains(&mac) {
            bail!("MAC {mac} missing from {macs:?}");
        }
    }
    // Neither SeaBIOS nor the plain OVMF build enforces Secure Boot.
    if f.get("secure_boot") != Some(&Value::Bool(false)) {
        bail!("secure_boot is {:?}, not false", f.get("secure_boot"));
    }
    let disks = f["disks"].as_array().context("disks")?;
    for (serial, size) in e.disks {
        let d = disks
            .iter()
            .find(|d| d["serial"].as_str() == Some(serial))
            .with_context(|| format!("disk serial {serial} missing from {disks:?}"))?;
        if d["size_bytes"].as_u64() != Some(size) {
            bail!("disk {serial}: size {} != {size}", d["size_bytes"]);
        }
    }
    Ok(())
}

#[test]
fn bios_and_uefi_machines_appear_in_the_inventory_with_their_exact_facts() -> Result<()> {
    if !system_test(&[
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("nats-server"),
    ]) {
        return Ok(());
    }
    let bios = Expect {
        serial: "SBST-BIOS-0001",
        uuid: "5b1c0f6e-1111-4a2b-9c3d-00000000b105",
        macs: ["52:54:00:77:20:0a", "52:54:00:77:20:1a"],
        disks: [("VIRTIO-B-1", 2 << 30), ("NVME-B-1", 1 << 30)],
    };
    let uefi = Expect {
        serial: "SBST-UEFI-0001",
        uuid: "5b1c0f6e-2222-4a2b-9c3d-0000000000ef",
        macs: ["52:54:00:77:20:0b", "52:54:00:77:20:1b"],
        disks: [("VIRTIO-U-1", 3 << 30), ("NVME-U-1", 1 << 30)],
    };
    let _slot = acquire_vm_slot()?;
    let mut site = Site::start("disc", SiteOptions::default())?;
    let (t1, t2) = (site.new_tap()?, site.new_tap()?);
    let dir = site.dir.path().to_owned();
    let mut vms = vec![
        Vm::start(
            &site.ns,
            &spec("disc-bios", Firmware::Bios, t1, &bios),
            &dir,
        )?,
        Vm::start(
            &site.ns,
            &spec("disc-uefi", Firmware::Uefi, t2, &uefi),
            &dir,
        )?,
    ];
    let start = Instant::now();
    let mut seen: [Option<Duration>; 2] = [None, None];
    let machines = try_poll_blocking(
        "both machines in the inventory",
        INVENTORY_TIMEOUT,
        Duration::from_millis(500),
        || {
            let machines = site.machines().unwrap_or_default();
            for (i, e) in [&bios, &uefi].iter().enumerate() {
                if seen[i].is_none() && find(&machines, e.serial).is_some() {
                    seen[i] = Some(start.elapsed());
                }
            }
            Ok(seen.iter().all(Option::is_some).then_some(machines))
        },
    );
    let machines = match machines {
        Ok(m) => m,
        Err(e) => {
            site.dump_logs();
            for vm in &vms {
                eprintln!(
                    "----- {} serial -----\n{}",
                    vm.name,
                    substruct_testkit::qemu::tail(&vm.serial(), 40)
                );
            }
            bail!("{e}: seen {seen:?}");
        }
    };
    for (e, label) in [(&bios, "BIOS"), (&uefi, "UEFI")] {
        let m = find(&machines, e.serial).context("machine vanished")?;
        check(m, e).with_context(|| format!("{label} machine {m}"))?;
    }
    if machines.len() != 2 {
        bail!("expected exactly 2 machines, got {}", machines.len());
    }
    println!(
        "power-on -> inventory: BIOS {:.1} s, UEFI {:.1} s (both VMs booting at once on 2 cores)",
        seen[0].unwrap_or_default().as_secs_f64(),
        seen[1].unwrap_or_default().as_secs_f64()
    );
    println!("{}", site.cli(&["machines", "list"])?);
    for vm in &mut vms {
        vm.kill();
    }
    Ok(())
}
