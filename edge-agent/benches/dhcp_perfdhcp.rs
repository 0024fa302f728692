//! DHCP throughput: Kea's perfdhcp against our server (in-process, leases durable in
//! redb) and against kea-dhcp4 (memfile, persist=true), alternating A B A B.
//!
//! Root only (two network namespaces joined by a veth, both created and deleted
//! here); skips politely without root, perfdhcp or kea-dhcp4.
//! Env: ROUNDS (3), DURATION (10 s), CLIENTS (20000), RATE (empty = unlimited),
//! ONLY (ours | kea), RUNTIME (multi, the default, as in the agent | current).
//! Run: `cargo bench -p substruct-edge --bench dhcp_perfdhcp`

#[path = "../tests/dhcp_netns.rs"]
mod netns;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::dhcp_socket;
use substruct_edge::dhcp::{serve, DhcpConfig, DhcpSettings, LeaseStore, Subnet};
use substruct_edge::intents::IntentTable;
use substruct_testkit::gate::find_tool;
use substruct_testkit::netns::Netns;
use substruct_testkit::ChildGuard;

#[path = "common/perfdhcp.rs"]
mod perf;
use perf::{cpu_secs, env_or, median, with_our_server};

const SRV_IF: &str = "vb-srv";
const CLI_IF: &str = "vb-cli";
const SRV_IP: &str = "10.78.0.1";

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    /// CPU seconds the server used during the run.
    server_cpu: f64,
    do_sent: u64,
    do_recv: u64,
    do_drops: u64,
    ra_sent: u64,
    ra_recv: u64,
    ra_drops: u64,
}

impl Figures {
    fn per_sec(&self, secs: u64) -> f64 {
        self.ra_recv as f64 / secs as f64
    }
}

/// perfdhcp prints one block per exchange: DISCOVER-OFFER, then REQUEST-ACK.
fn parse_perfdhcp(out: &str) -> Figures {
    let mut f = Figures::default();
    let mut section = 0;
    for line in out.lines() {
        let l = line.trim();
        if l.contains("Statistics for: DISCOVER-OFFER") {
            section = 1;
        } else if l.contains("Statistics for: REQUEST-ACK") {
            section = 2;
        }
        let num = |prefix: &str| -> Option<u64> {
            l.strip_prefix(prefix)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        let (sent, recv, drops) = match section {
            1 => (&mut f.do_sent, &mut f.do_recv, &mut f.do_drops),
            2 => (&mut f.ra_sent, &mut f.ra_recv, &mut f.ra_drops),
            _ => continue,
        };
        if let Some(n) = num("sent packets:") {
            *sent = n;
        } else if let Some(n) = num("received packets:") {
            *recv = n;
        } else if let Some(n) = num("drops:") {
            *drops = n;
        }
    }
    f
}

fn perfdhcp(cli_ns: &str, secs: u64) -> Result<Figures> {
    let clients = env_or("CLIENTS", 20_000).to_string();
    let secs_s = secs.to_string();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", cli_ns, "perfdhcp"]);
    cmd.args([
        "-4", "-g", "single", "-l", CLI_IF, "-R", &clients, "-p", &secs_s,
    ]);
    if let Ok(rate) = std::env::var("RATE") {
        if !rate.is_empty() {
            cmd.args(["-r", &rate]);
        }
    }
    cmd.arg(SRV_IP);
    let out = perf::run_to_end(cmd, secs)?;
    Ok(parse_perfdhcp(&out))
}

fn settings() -> Result<Arc<DhcpSettings>> {
    Ok(Arc::new(DhcpSettings::new(DhcpConfig::new(
        SRV_IP.parse()?,
        "http://10.78.0.1",
        Subnet {
            network: "10.78.0.0/16".parse()?,
            pools: vec![("10.78.1.0".parse()?, "10.78.255.254".parse()?)],
            router: None,
            dns: vec![],
            lease_time: Duration::from_secs(3600),
            relays: vec![],
            uefi_loader: None,
        },
    ))?))
}

fn run_ours(
    rt: &tokio::runtime::Runtime,
    srv: &Netns,
    cli: &Netns,
    dir: &Path,
    secs: u64,
) -> Result<Figures> {
    let db = dir.join("ours-leases.redb");
    let _ = std::fs::remove_file(&db);
    let store = LeaseStore::open(&db)?;
    let sock = dhcp_socket(srv, SRV_IF, 67)?;
    let settings = settings()?;
    let cli_name = cli.name().to_owned();
    let server_store = store.clone();
    let (mut figures, cpu) = with_our_server(
        rt,
        |cancel| {
            let sock = tokio::net::UdpSocket::from_std(sock)?;
            Ok(serve(
                settings,
                vec![sock],
                IntentTable::new(),
                server_store,
                cancel,
            ))
        },
        move || perfdhcp(&cli_name, secs),
    )?;
    figures.server_cpu = cpu;
    let stored = store.load()?.len();
    println!("     (ours: {stored} leases in redb after the run)");
    Ok(figures)
}

fn run_kea(srv: &Netns, cli: &Netns, dir: &Path, secs: u64) -> Result<Figures> {
    let leases = dir.join("kea-leases4.csv");
    let _ = std::fs::remove_file(&leases);
    let conf = dir.join("kea.json");
    std::fs::write(
        &conf,
        format!(
            r#"{{ "Dhcp4": {{
    "interfaces-config": {{ "interfaces": [ "{SRV_IF}" ], "dhcp-socket-type": "udp" }},
    "lease-database": {{ "type": "memfile", "persist": true, "name": "{}", "lfc-interval": 0 }},
    "multi-threading": {{ "enable-multi-threading": false }},
    "valid-lifetime": 3600,
    "authoritative": true,
    "subnet4": [ {{ "id": 1, "subnet": "10.78.0.0/16",
                   "pools": [ {{ "pool": "10.78.1.0 - 10.78.255.254" }} ] }} ],
    "loggers": [ {{ "name": "kea-dhcp4", "severity": "WARN",
                   "output_options": [ {{ "output": "{}" }} ] }} ]
}} }}"#,
            leases.display(),
            dir.join("kea.log").display()
        ),
    )?;
    let child = srv
        .command("kea-dhcp4")
        .arg("-c")
        .arg(&conf)
        .env("KEA_PIDFILE_DIR", dir)
        .env("KEA_LOCKFILE_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kea-dhcp4")?;
    let kea = ChildGuard(child);
    let kea_pid = kea.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = srv.command("ss").args(["-ulnH"]).output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&format!("{SRV_IP}:67")) {
            break;
        }
        if Instant::now() > deadline {
            bail!("kea-dhcp4 did not bind {SRV_IP}:67");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = cpu_secs(kea_pid);
    let mut f = perfdhcp(cli.name(), secs)?;
    f.server_cpu = cpu_secs(kea_pid) - cpu0;
    Ok(f)
}

/// UDP datagrams the kernel dropped for a full socket buffer in `ns` (`/proc/net/snmp`).
fn rcvbuf_errors(ns: &Netns) -> u64 {
    let Ok(out) = ns.command("cat").arg("/proc/net/snmp").output() else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let (Some(head), Some(vals)) = (udp.first(), udp.get(1)) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(h, _)| *h == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<()> {
    if !substruct_testkit::can_use_netns() {
        println!("dhcp_perfdhcp: skipped (needs root and `ip netns`)");
        return Ok(());
    }
    for tool in ["perfdhcp", "kea-dhcp4", "ss"] {
        if find_tool(tool).is_none() {
            println!("dhcp_perfdhcp: skipped ({tool} missing: apt-get install kea-admin kea-dhcp4-server)");
            return Ok(());
        }
    }
    substruct_runtime::init_tracing();
    let rounds = env_or("ROUNDS", 3);
    let secs = env_or("DURATION", 10);
    let dir = tempfile::tempdir()?;
    let srv = Netns::create("bs")?;
    let cli = Netns::create("bc")?;
    srv.veth_pair(SRV_IF, &cli, CLI_IF)?;
    srv.ip(&["addr", "add", &format!("{SRV_IP}/16"), "dev", SRV_IF])?;
    cli.ip(&["addr", "add", "10.78.0.2/16", "dev", CLI_IF])?;
    // Default: tokio's multi-thread runtime (2 workers), as the agent runs it;
    // RUNTIME=current: one thread for the server's tasks (plus the blocking pool).
    let rt = match std::env::var("RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };

    println!(
        "perfdhcp -4 -g single -l {CLI_IF} -R {} -p {secs} {SRV_IP}; {rounds} rounds, alternating",
        env_or("CLIENTS", 20_000)
    );
    let (mut ours, mut kea) = (Vec::new(), Vec::new());
    let (mut ours_cpu, mut kea_cpu) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let only = std::env::var("ONLY").unwrap_or_default();
        for who in ["ours", "kea"] {
            if !only.is_empty() && only != who {
                continue;
            }
            let (srv0, cli0) = (rcvbuf_errors(&srv), rcvbuf_errors(&cli));
            let f = if who == "ours" {
                run_ours(&rt, &srv, &cli, dir.path(), secs)?
            } else {
                run_kea(&srv, &cli, dir.path(), secs)?
            };
            let rate = f.per_sec(secs);
            println!(
                "     ({who}: kernel dropped {} requests at the server's socket, {} replies at perfdhcp's)",
                rcvbuf_errors(&srv) - srv0,
                rcvbuf_errors(&cli) - cli0
            );
            let cpu_per_k = if f.ra_recv > 0 {
                f.server_cpu * 1e6 / f.ra_recv as f64
            } else {
                0.0
            };
            println!(
                "round {round} {who:>4}: {rate:>8.0} exchanges/s | DO sent {} recv {} drops {} | RA sent {} recv {} drops {} | server CPU {:.2} s = {:.1} ms per 1000 exchanges",
                f.do_sent, f.do_recv, f.do_drops, f.ra_sent, f.ra_recv, f.ra_drops, f.server_cpu, cpu_per_k
            );
            if who == "ours" {
                ours.push(rate);
                ours_cpu.push(cpu_per_k);
            } else {
                kea.push(rate);
                kea_cpu.push(cpu_per_k);
            }
        }
    }
    let (mo, mk) = (median(&mut ours), median(&mut kea));
    println!("median ours (redb, durable): {mo:.0} exchanges/s");
    println!("median kea-dhcp4 (memfile persist): {mk:.0} exchanges/s");
    if mk > 0.0 {
        println!("ratio ours/kea: {:.2}", mo / mk);
    }
    let (co, ck) = (median(&mut ours_cpu), median(&mut kea_cpu));
    println!("median server CPU per 1000 exchanges: ours {co:.1} ms, kea {ck:.1} ms");
    if co > 0.0 && ck > 0.0 {
        println!("CPU efficiency ratio kea/ours: {:.2}", ck / co);
    }
    Ok(())
}
