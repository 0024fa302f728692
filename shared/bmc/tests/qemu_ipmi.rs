//! A QEMU machine whose BMC is `ipmi_sim`, all inside a network namespace: the IPMI
//! driver's power on starts QEMU (which attaches to the BMC through
//! `ipmi-bmc-extern` + `isa-ipmi-kcs`, the in-band side), its power off stops it.

use std::time::Duration;

use anyhow::{Context, Result};
use substruct_bmc::{Bmc, BmcConfig, BmcDriverKind, BootDevice, PowerAction};
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::ipmi_sim::{IpmiSim, IpmiSimOptions};
use substruct_testkit::netns::Netns;
use substruct_testkit::qemu::acquire_vm_slot;

#[test]
fn ipmi_power_on_starts_the_qemu_machine_and_power_off_stops_it() -> Result<()> {
    if !system_test(&[
        Need::Netns,
        Need::Tool("ipmi_sim"),
        Need::Tool("qemu-system-x86_64"),
    ]) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let ns = Netns::create("bmcqemu")?;
    let dir = tempfile::Builder::new().prefix("bmc-qemu-").tempdir()?;
    let debug_log = dir.path().join("seabios.log");
    let vm_port = 9002;
    // No disk, no NIC: SeaBIOS starts, finds nothing to boot and keeps trying; its
    // debug console (port 0x402) shows that the machine runs.
    let qemu = format!(
        "echo boot=$IPMI_SIM_BOOT; exec qemu-system-x86_64 -accel tcg -m 128 -smp 1 -nodefaults -nographic -monitor none \
         -serial none -chardev file,id=dbg,path={log} -device isa-debugcon,iobase=0x402,chardev=dbg \
         -chardev socket,id=ipmi0,host=127.0.0.1,port={vm_port},reconnect=1 \
         -device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 -device isa-ipmi-kcs,bmc=bmc0",
        log = debug_log.display()
    );
    let mut opts = IpmiSimOptions::loopback("secret");
    opts.port = 623;
    opts.vm_port = Some(vm_port);
    opts.power_on_cmd = Some(qemu);
    let sim = IpmiSim::start(Some(&ns), &opts)?;
    let address = sim.address();
    let sim_dir = sim.dir().to_path_buf();
    let ns_name = ns.name().to_owned();

    // The driver runs inside the namespace, where the BMC's address is.
    let outcome = ns
        .spawn_inside(move || -> Result<Vec<String>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut cfg = BmcConfig::new(BmcDriverKind::Ipmi, address, "admin", "secret");
                cfg.timeout = Duration::from_secs(2);
                let mut bmc = Bmc::connect(&cfg).await?;
                let mut seen = vec![format!("before: {}", bmc.power_state().await?)];
                bmc.set_next_boot(BootDevice::Pxe).await?;
                let on = bmc.apply(PowerAction::On).await?;
                seen.push(format!("after on: {on}"));
                // Let SeaBIOS run for a moment under TCG.
                substruct_testkit::wait_for(
                    "SeaBIOS output on the debug console",
                    Duration::from_secs(60),
                    || async { std::fs::metadata(&debug_log).is_ok_and(|m| m.len() > 0) },
                )
                .await?;
                let text = std::fs::read_to_string(&debug_log).unwrap_or_default();
                seen.push(format!("seabios: {}", text.contains("SeaBIOS")));
                // QEMU's ipmi-bmc-extern is connected to the simulator (in-band path).
                let linked = substruct_testkit::wait_for(
                    "QEMU's BMC chardev to connect to ipmi_sim",
                    Duration::from_secs(20),
                    || async {
                        std::process::Command::new("ip")
                            .args([
                                "netns",
                                "exec",
                                &ns_name,
                                "ss",
                                "-Htn",
                                "state",
                                "established",
                            ])
                            .output()
                            .is_ok_and(|o| {
                                String::from_utf8_lossy(&o.stdout).contains(&format!(":{vm_port}"))
                            })
                    },
                )
                .await
                .is_ok();
                seen.push(format!("bmc link: {linked}"));
                let off = bmc.apply(PowerAction::Off).await?;
                seen.push(format!("after off: {off}"));
                bmc.close().await;
                Ok(seen)
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("driver thread panicked"))?
        .with_context(|| {
            format!(
                "ipmi_sim log:\n{}\nvm log:\n{}",
                sim.log_text(),
                std::fs::read_to_string(sim_dir.join("vm.log")).unwrap_or_default()
            )
        })?;
    assert_eq!(
        outcome,
        [
            "before: off",
            "after on: on",
            "seabios: true",
            "bmc link: true",
            "after off: off"
        ],
        "vm log: {}",
        std::fs::read_to_string(sim.dir().join("vm.log")).unwrap_or_default()
    );
    // The one-time boot device reached the machine's start, and was used up.
    let vm_log = std::fs::read_to_string(sim.dir().join("vm.log")).unwrap_or_default();
    assert!(vm_log.contains("boot=pxe"), "{vm_log}");
    assert_eq!(sim.boot_device(), "none");
    assert!(!sim.power_is_on());
    // The QEMU process is gone (its pid file names a dead process).
    let pid = std::fs::read_to_string(sim.dir().join("vm.pid")).unwrap_or_default();
    assert!(pid.trim().is_empty(), "QEMU still recorded: {pid}");
    let events = sim.events();
    assert!(
        events.iter().any(|e| e.ends_with("power 1"))
            && events.iter().any(|e| e.ends_with("power 0")),
        "{events:?}"
    );
    Ok(())
}
