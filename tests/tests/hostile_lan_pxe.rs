//! Issue 11, with a real PXE client: an attacker on the provisioning LAN floods the
//! edge's TFTP server, and a QEMU machine (SeaBIOS + its iPXE NIC ROM, TCG) booting at
//! that moment still reaches its script and the live image.
//!
//! The shipped topology ([`Fleet`]: hub, controller, the site's leaf node and edge) on a
//! /22 provisioning network, so 512 distinct attacker addresses fit beside the pool. The
//! attacker is its own namespace cabled to the site bridge by a veth; its 512 source
//! addresses are local routes on its loopback (it answers ARP for them, so the edge's
//! OACKs reach sockets that never read them: each holds a transfer slot until the edge
//! gives up on it).
//!
//! * `spoofed_tftp_flood_…`: 512 read requests with `timeout=255`, one from each of 512
//!   addresses, then the VM powers on: every transfer slot is taken when its TFTP
//!   request arrives ~2.5 s later; it must still boot (before the fix each slot was
//!   held for 255 s × 6 sends, ~25 minutes).
//! * `two_thousand_idle_http_…`: 2,000 idle connections to the edge's HTTP from 250
//!   attacker addresses (under the per-source cap), the edge limited to the descriptors
//!   its shipped unit gives it (`LimitNOFILE`, via `prlimit`); then the VM boots and gets
//!   its script. Before the fix: no header timeout, no caps and systemd's default 1,024
//!   descriptors.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::Netns;
use substruct_testkit::qemu::{acquire_vm_slot, Firmware, NicLink, NicSpec, Vm, VmSpec};
use substruct_tests::fleet::{Fleet, FleetOptions};
use substruct_tests::{BRIDGE, EDGE_IP, POOL};

const SITE: &str = "s1";
/// A /22: the pool stays 10.77.0.100-199, the attacker takes 10.77.1.1 – 10.77.3.12.
const CIDR: &str = "10.77.0.1/22";
const ATTACKER_IF: &str = "eth0";
const ATTACKER_PEER_IF: &str = "atk0";
const ATTACKER_IP: &str = "10.77.0.250/22";
/// As many sources as the edge has transfer slots (`TftpSettings::max_transfers`).
const SOURCES: usize = 512;
const LIVE_MARKER: &str = "SUBSTRUCT-PROSPECTOR-READY";
/// Generous: a refused first attempt costs SeaBIOS's 60 s "No bootable device" retry.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

fn needs() -> Vec<Need<'static>> {
    vec![
        Need::Netns,
        Need::Tun,
        Need::Tool("qemu-system-x86_64"),
        Need::Tool("nats-server"),
    ]
}

/// The attacker's namespace on the site bridge, with every address of 10.77.1.0 –
/// 10.77.3.255 its own.
fn attacker(site_ns: &Netns) -> Result<Netns> {
    let ns = Netns::create("atk")?;
    site_ns.veth_pair(ATTACKER_PEER_IF, &ns, ATTACKER_IF)?;
    site_ns.ip(&["link", "set", ATTACKER_PEER_IF, "master", BRIDGE])?;
    ns.ip(&["addr", "add", ATTACKER_IP, "dev", ATTACKER_IF])?;
    for net in ["10.77.1.0/24", "10.77.2.0/24", "10.77.3.0/24"] {
        ns.ip(&["route", "add", "local", net, "dev", "lo"])?;
    }
    Ok(ns)
}

fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, (i / 250) as u8 + 1, (i % 250) as u8 + 1)
}

/// A read request for `lpxelinux.0` asking for `timeout=255` (RFC 2349's maximum).
fn rrq_timeout_255() -> Vec<u8> {
    let mut p = vec![0, 1];
    for part in ["lpxelinux.0", "octet", "timeout", "255", "tsize", "0"] {
        p.extend_from_slice(part.as_bytes());
        p.push(0);
    }
    p
}

/// Sends one RRQ from each of [`SOURCES`] addresses; returns the sockets (never read by
/// the attacker, they hold their transfers) and how many got an OACK or data back.
fn flood(ns: &Netns) -> Result<(Vec<UdpSocket>, usize)> {
    let server = (EDGE_IP.parse::<Ipv4Addr>()?, 69);
    let rrq = rrq_timeout_255();
    let sockets = ns.run_inside(|| {
        (0..SOURCES)
            .map(|i| {
                let s = UdpSocket::bind((source(i), 6900))
                    .with_context(|| format!("binding {}", source(i)))?;
                s.send_to(&rrq, server)?;
                if i % 64 == 63 {
                    // stay within the edge socket's receive buffer
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    // Peek (no reply is sent: the attacker never acknowledges anything).
    let mut answered = 0;
    for s in &sockets {
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut buf = [0u8; 16];
        if s.peek(&mut buf).is_ok() {
            answered += 1;
        }
    }
    Ok((sockets, answered))
}

/// A fleet on the /22, the attacker's namespace on its bridge, and a BIOS VM (virtio NIC,
/// network boot) created but not started.
struct Lan {
    fleet: Fleet,
    attacker: Netns,
    spec: VmSpec,
    mac: &'static str,
}

impl Lan {
    fn start(tag: &str, mac: &'static str) -> Result<Self> {
        let mut fleet = Fleet::start_with(
            tag,
            &[SITE],
            FleetOptions {
                edge_cidr: CIDR.into(),
                pool: POOL.into(),
            },
        )?;
        let attacker = attacker(fleet.site_ns(SITE)?)?;
        let tap = fleet.new_tap(SITE)?;
        let mut spec = VmSpec::new(&format!("{tag}-bios"), Firmware::Bios);
        spec.nics.push(NicSpec {
            link: NicLink::Tap(tap),
            mac: mac.into(),
            model: "virtio-net-pci".into(),
        });
        // A refused attempt may end in SeaBIOS's "No bootable device" reboot: allow it.
        spec.allow_reboot = true;
        Ok(Self {
            fleet,
            attacker,
            spec,
            mac,
        })
    }

    fn start_vm(&self) -> Result<Vm> {
        let dir = self.fleet.dir.path().to_owned();
        Vm::start(self.fleet.site_ns(SITE)?, &self.spec, &dir)
    }

    fn edge_log(&self) -> Result<String> {
        Ok(self
            .fleet
            .site(SITE)?
            .edge
            .as_ref()
            .map(|e| substruct_testkit::qemu::strip_ansi(&e.log_text()))
            .unwrap_or_default())
    }

    /// Waits for the VM's boot up to the live image, printing each step's time, then
    /// checks the edge served its script bound to its lease (with a boot credential).
    fn expect_boot(&self, vm: &mut Vm) -> Result<()> {
        for (label, needle) in [
            ("lpxelinux.0 running", "PXELINUX"),
            ("script fetched", "boot.ipxe"),
            ("live image running", LIVE_MARKER),
        ] {
            let t = vm.wait_for_serial(needle, BOOT_TIMEOUT)?;
            println!("{label:<24} {:>7.1} s from QEMU start", t.as_secs_f64());
        }
        let log = self.edge_log()?;
        let script = log
            .lines()
            .find(|l| l.contains("boot.ipxe") && l.contains(self.mac))
            .context("the edge never logged the VM's boot.ipxe")?;
        println!("edge: {}", script.trim());
        ensure!(
            script.contains("bound=true"),
            "the VM's script was not bound to its lease: {script}"
        );
        Ok(())
    }

    /// Runs `body` with the VM; on failure prints its console and the servers' logs.
    fn run(self, body: impl FnOnce(&Self, &mut Vm) -> Result<()>) -> Result<()> {
        let mut vm = self.start_vm()?;
        let result = body(&self, &mut vm);
        if result.is_err() {
            eprintln!(
                "----- VM serial -----\n{}",
                substruct_testkit::qemu::tail(&vm.serial(), 40)
            );
            self.fleet.dump_logs();
        }
        vm.kill();
        result
    }
}

#[test]
fn spoofed_tftp_flood_with_timeout_255_then_a_real_pxe_client_still_boots() -> Result<()> {
    if !system_test(&needs()) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let lan = Lan::start("hltftp", "52:54:00:77:61:0a")?;
    // The flood first, then the machine powers on: its NIC ROM asks for lpxelinux.0
    // ~2.5 s later, while every slot is still held (the edge keeps an unanswered
    // transfer 6 s; before the fix, 255 s x 6 sends).
    let started = Instant::now();
    let (sockets, answered) = flood(&lan.attacker)?;
    println!(
        "{SOURCES} RRQs with timeout=255 sent from {SOURCES} addresses in {:.2} s; \
         {answered} answered (a slot each)",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        answered >= SOURCES * 9 / 10,
        "the flood held only {answered} of {SOURCES} slots: the test would prove nothing"
    );
    lan.run(|lan, vm| {
        println!(
            "VM started {:.1} s after the flood began",
            started.elapsed().as_secs_f64() - vm.started.elapsed().as_secs_f64()
        );
        lan.expect_boot(vm)?;
        drop(sockets);
        let refused = lan
            .edge_log()?
            .lines()
            .filter(|l| l.contains("TFTP read request refused"))
            .count();
        println!("edge: {refused} 'TFTP read request refused' log lines (rate-limited)");
        Ok(())
    })
}

/// Idle connections the attacker opens, and from how many of its addresses.
const IDLE_CONNECTIONS: usize = 2000;
const IDLE_SOURCES: usize = 250;

/// `LimitNOFILE` of the shipped edge unit (the edge runs with it in production).
fn unit_nofile() -> Result<u64> {
    let unit = substruct_tests::workspace_root().join("deploy/systemd/substruct-edge.service");
    let text =
        std::fs::read_to_string(&unit).with_context(|| format!("reading {}", unit.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .and_then(|v| v.trim().parse().ok())
        .context("no numeric LimitNOFILE= in the edge's unit")
}

#[test]
fn two_thousand_idle_http_connections_then_a_real_pxe_client_still_gets_its_script() -> Result<()> {
    let mut needs = needs();
    needs.push(Need::Tool("prlimit"));
    if !system_test(&needs) {
        return Ok(());
    }
    let _slot = acquire_vm_slot()?;
    let lan = Lan::start("hlhttp", "52:54:00:77:62:0a")?;
    // The descriptors the edge has in production, not the test runner's.
    let nofile = unit_nofile()?;
    let pid = lan
        .fleet
        .site(SITE)?
        .edge
        .as_ref()
        .context("no edge")?
        .child
        .id()
        .to_string();
    substruct_testkit::netns::run(std::process::Command::new("prlimit").args([
        "--pid",
        &pid,
        &format!("--nofile={nofile}:{nofile}"),
    ]))?;
    let server = std::net::SocketAddr::from((EDGE_IP.parse::<Ipv4Addr>()?, 80));
    let idle = lan.attacker.run_inside(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut open = Vec::with_capacity(IDLE_CONNECTIONS);
            for i in 0..IDLE_CONNECTIONS {
                let from = std::net::SocketAddr::from((source(i % IDLE_SOURCES), 0));
                let sock = tokio::net::TcpSocket::new_v4()?;
                sock.bind(from)?;
                let conn = tokio::time::timeout(Duration::from_secs(5), sock.connect(server))
                    .await
                    .with_context(|| format!("connection {i} from {from}: timed out"))?
                    .with_context(|| format!("connection {i} from {from}"))?;
                open.push(conn.into_std()?);
            }
            Ok::<_, anyhow::Error>(open)
        })
    })?;
    println!(
        "{} idle connections open to the edge's HTTP from {IDLE_SOURCES} addresses \
         (edge LimitNOFILE {nofile})",
        idle.len()
    );
    lan.run(|lan, vm| {
        lan.expect_boot(vm)?;
        let log = lan.edge_log()?;
        let refused = log
            .lines()
            .filter(|l| l.contains("HTTP connection refused"))
            .count();
        println!("edge: {refused} 'HTTP connection refused' log lines (rate-limited)");
        drop(idle);
        Ok(())
    })
}
