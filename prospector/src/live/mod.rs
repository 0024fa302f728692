//! PID 1 inside the live image: the RAM-booted OS an edge serves to unknown machines.
//!
//! [`run_as_init`] mounts the kernel file systems, loads the NIC and storage modules the
//! image builder listed, brings the network up with its own DHCP client, reads the
//! `substruct.*` kernel arguments, then hands the hardware report to [`crate::agent`] and
//! carries out what the controller answers (power off, reboot, wait).
//!
//! * `console` — marker and progress lines on the serial console, the panic hook;
//! * `config` — pure validation of the kernel arguments;
//! * `dhcp` — the sans-IO DHCPv4 client core: requests built with dhcproto, replies read
//!   with the bounds-checked reader the edge shares (`substruct_wire::dhcp`);
//! * `net` — sysfs NIC discovery, link/address/route over `rtnl`, the DHCP socket;
//! * `rtnl` — the three route-netlink requests, on a blocking socket;
//! * `system` — mounts, `finit_module`, power, the busybox debug shell.
//!
//! Invariant: PID 1 never exits and never panics on purpose — an exiting init is a
//! kernel panic. Every failure is printed as a `SUBSTRUCT-ERROR` line and retried.

pub mod config;
pub mod console;
pub mod dhcp;
pub mod net;
pub mod rtnl;
pub mod system;

use std::path::Path;
use std::time::Duration;

use substruct_runtime::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentConfig, Outcome};
use config::BootConfig;

/// How often a configuration problem is printed again while PID 1 waits.
const CONFIG_REPEAT: Duration = Duration::from_secs(10);
/// Pause between agent runs that ended in an error (jittered): 1–2 s, 2–4 s, 4–8 s,
/// then 7.5–15 s.
const AGENT_RETRY_BASE: Duration = Duration::from_secs(2);
const AGENT_RETRY_MAX: Duration = Duration::from_secs(15);

/// True when this process is the init of the live image.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Runs the whole live-image boot as PID 1; never returns.
pub fn run_as_init() -> ! {
    console::install_panic_hook();
    console::line(console::MARKER_READY);
    // Progress already goes to the console as plain lines; keep `tracing` (stderr, the
    // same console) to warnings so lines are not doubled. Still single-threaded here.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    match std::panic::catch_unwind(boot) {
        Ok(never) => match never {},
        Err(_) => {
            // The hook has printed the panic. Give the console a moment to be read,
            // then power off cleanly rather than kernel-panic.
            console::error("prospector panicked; powering off in 30 s");
            std::thread::sleep(Duration::from_secs(30));
            system::power_off()
        }
    }
}

/// What [`boot`] never returns.
enum Never {}

fn boot() -> Never {
    if system::mount_filesystems() == 0 {
        console::step("mounted proc, sys, dev, tmp, run");
    }
    let mut modules = system::load_modules_for_hardware();
    if net::list_nics(Path::new("/sys/class/net")).is_empty() {
        // No NIC driver matched (or the alias table is off): load every module we ship.
        console::step("no NIC after hardware-matched module loading; loading all modules");
        let all = system::load_modules(Path::new(system::MODULE_ORDER_FILE));
        modules.loaded += all.loaded;
        modules.failed += all.failed;
    }
    console::step(&format!(
        "modules: {} loaded, {} already present, {} failed; matched: {}",
        modules.loaded,
        modules.already,
        modules.failed,
        if modules.matched.is_empty() {
            "-".to_owned()
        } else {
            modules.matched.join(" ")
        }
    ));
    let runtime = loop {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => break rt,
            Err(e) => {
                console::error(&format!("cannot start the async runtime: {e}; retrying"));
                std::thread::sleep(CONFIG_REPEAT);
            }
        }
    };
    runtime.block_on(live())
}

/// Reads and validates `/proc/cmdline`; on problems prints them every ~10 s, forever.
async fn boot_config() -> BootConfig {
    let mut debug_started = false;
    loop {
        let line = match std::fs::read_to_string("/proc/cmdline") {
            Ok(line) => line,
            Err(e) => {
                console::error(&format!("cannot read /proc/cmdline: {e}"));
                String::new()
            }
        };
        let args = crate::cmdline::parse(line.trim());
        if args.debug && !debug_started {
            debug_started = system::spawn_debug_shell();
        }
        match config::validate(&args) {
            Ok(cfg) => return cfg,
            Err(problems) => {
                for p in &problems {
                    console::error(&console::chain(p));
                }
                tokio::time::sleep(CONFIG_REPEAT).await;
            }
        }
    }
}

async fn live() -> Never {
    substruct_runtime::init_tracing();
    let cfg = boot_config().await;
    console::step(&format!(
        "site {} nats {} token {} edge {}",
        cfg.site,
        cfg.nats_url,
        if cfg.token.is_some() { "yes" } else { "no" },
        cfg.edge
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string)
    ));
    if cfg.ipv6_only {
        let up = net::bring_up_v6().await;
        console::line(&format!(
            "{} if={} ip={}/{} mac={} router=-",
            console::MARKER_NET_UP,
            up.nic.name,
            up.ip,
            up.prefix,
            up.nic.mac,
        ));
        let cancel = CancellationToken::new();
        return report_and_obey(&cfg, &cancel).await;
    }
    let up = net::bring_up().await;
    console::line(&format!(
        "{} if={} ip={}/{} mac={} router={}",
        console::MARKER_NET_UP,
        up.nic.name,
        up.lease.ip,
        up.lease.prefix,
        up.nic.mac,
        up.lease
            .router
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-".into()),
    ));
    tokio::spawn(net::keep_lease(up));
    let cancel = CancellationToken::new();
    report_and_obey(&cfg, &cancel).await
}

/// What PID 1 does with an agent outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    PowerOff,
    Reboot,
    /// Acknowledged: keep listening for commands.
    Listen,
    /// The agent stopped without an instruction: run it again.
    Again,
}

fn next_step(outcome: &Outcome) -> Next {
    match outcome {
        Outcome::PowerOff { .. } => Next::PowerOff,
        Outcome::Reboot { .. } => Next::Reboot,
        Outcome::Acknowledged { .. } => Next::Listen,
        Outcome::Cancelled => Next::Again,
    }
}

/// Reports, prints the acknowledgement marker, then follows instructions; forever.
async fn report_and_obey(cfg: &BootConfig, cancel: &CancellationToken) -> Never {
    let mut reported = false;
    let mut backoff = Backoff::new(AGENT_RETRY_BASE, AGENT_RETRY_MAX);
    loop {
        console::step("gathering hardware facts");
        let report = tokio::task::spawn_blocking(|| crate::facts::gather(Path::new("/")))
            .await
            .unwrap_or_default();
        console::step(&format!(
            "facts: {} disks, {} NICs, {} PCI devices; {} to {}",
            report.disks.len(),
            report.nics.len(),
            report.pci.len(),
            if reported { "listening" } else { "reporting" },
            cfg.nats_url
        ));
        let login = match crate::agent::login_from(cfg.token.as_ref(), cfg.seed.as_deref()) {
            Ok(login) => login,
            Err(e) => {
                console::error(&format!(
                    "substruct.seed: {}; connecting without a login",
                    substruct_runtime::error_chain(&e)
                ));
                None
            }
        };
        let agent_cfg = AgentConfig {
            nats_url: cfg.nats_url.clone(),
            site: cfg.site.clone(),
            token: cfg.token.clone(),
            login,
            once: false,
            edge: cfg.edge.clone(),
            storage: Some(crate::blockdev::Storage::default()),
        };
        // One report per boot: the agent's Acknowledged event prints the marker, and the
        // same run then waits for the controller's commands.
        let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
        let announce = tokio::spawn(async move {
            let mut shown = false;
            while let Some(event) = events_rx.recv().await {
                if let agent::AgentEvent::Acknowledged { machine_id, .. } = event {
                    if !shown {
                        console::line(&format!(
                            "{} machine={machine_id}",
                            console::MARKER_REPORTED
                        ));
                        console::line(&format!(
                            "substruct-prospector: peak RSS {} kB",
                            peak_rss_kb().map_or_else(|| "?".to_owned(), |kb| kb.to_string())
                        ));
                        shown = true;
                    }
                }
            }
            shown
        });
        // Its own task, so a panic inside the agent is an error here, not PID 1's end.
        let run = tokio::spawn(agent::run_with(
            agent_cfg,
            agent::AgentTuning::default(),
            Some(events_tx),
            report,
            cancel.clone(),
        ))
        .await;
        if announce.await.unwrap_or(false) {
            reported = true;
        }
        let outcome = match run {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                retry_after(&mut backoff, &format!("agent: {}", console::chain(&e))).await;
                continue;
            }
            Err(join) => {
                retry_after(&mut backoff, &format!("agent task ended: {join}")).await;
                continue;
            }
        };
        backoff.reset();
        match next_step(&outcome) {
            Next::PowerOff => {
                console::step("controller says: power off");
                system::power_off()
            }
            Next::Reboot => {
                console::step("controller says: reboot");
                system::reboot_now()
            }
            Next::Listen => console::step("acknowledged; waiting for instructions"),
            Next::Again => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// This process's peak resident set size (`VmHWM` in `/proc/self/status`), in kB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_hwm_kb(&status)
}

/// The `VmHWM:   1234 kB` value of a `/proc/<pid>/status` text.
fn vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Prints why the agent stopped (a `SUBSTRUCT-ERROR` line) and waits the next delay.
async fn retry_after(backoff: &mut Backoff, what: &str) {
    let wait = backoff.next_delay();
    console::error(&format!("{what}; retrying in {:.1} s", wait.as_secs_f64()));
    tokio::time::sleep(wait).await;
}

#[cfg(test)]
mod tests {
    use substruct_wire::MachineId;

    use super::*;

    #[test]
    fn outcomes_map_to_power_actions() {
        let id = MachineId::new("m-1").unwrap();
        assert_eq!(
            next_step(&Outcome::PowerOff {
                machine_id: id.clone()
            }),
            Next::PowerOff
        );
        assert_eq!(
            next_step(&Outcome::Reboot {
                machine_id: id.clone()
            }),
            Next::Reboot
        );
        assert_eq!(
            next_step(&Outcome::Acknowledged { machine_id: id }),
            Next::Listen
        );
        assert_eq!(next_step(&Outcome::Cancelled), Next::Again);
    }

    #[test]
    fn retries_back_off_and_cap() {
        let mut backoff = Backoff::new(AGENT_RETRY_BASE, AGENT_RETRY_MAX);
        let ceilings: Vec<u64> = (0..7)
            .map(|_| backoff.next_delay_with(0.999_999).as_secs_f64().round() as u64)
            .collect();
        assert_eq!(ceilings, [2, 4, 8, 15, 15, 15, 15]);
        backoff.reset();
        assert_eq!(backoff.next_delay_with(0.0), Duration::from_secs(1));
    }

    #[test]
    fn peak_rss_comes_from_vmhwm() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t  4321 kB\nVmRSS:\t 4000 kB\n";
        assert_eq!(vm_hwm_kb(status), Some(4321));
        assert_eq!(vm_hwm_kb("Name:\tx\n"), None);
        assert!(peak_rss_kb().is_some_and(|kb| kb > 0));
    }

    #[test]
    fn not_pid1_in_tests() {
        assert!(!is_pid1());
    }
}
