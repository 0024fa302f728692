//! DHCPv6 throughput: Kea's `perfdhcp -6` against our DHCPv6 server (in-process, leases
//! durable in redb, one commit per batch of replies) and against kea-dhcp6 (memfile, persist=true),
//! alternating A B A B; four-message exchanges (SOLICIT-ADVERTISE, REQUEST-REPLY).
//!
//! Root only (two network namespaces joined by a veth, both created and deleted here);
//! skips politely without root, perfdhcp or kea-dhcp6.
//! Env: ROUNDS (3), DURATION (10 s), CLIENTS (10000; the pool holds 16,384),
//! RATE (empty = unlimited), ONLY (ours | kea).
//! Run: `cargo bench -p substruct-edge --bench dhcp6_perfdhcp`

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use substruct_edge::dhcp::{LeaseStore, UefiLoader};
use substruct_edge::dhcp6::{bind_socket6, serve6, Dhcp6Settings};
use substruct_edge::intents::IntentTable;
use substruct_testkit::gate::find_tool;
use substruct_testkit::netns::Netns;
use substruct_testkit::ChildGuard;

#[path = "common/perfdhcp.rs"]
mod perf;
use perf::{cpu_secs, env_or, median, with_our_server};
use substruct_wire::Mac;

const SRV_IF: &str = "v6b-srv";
const CLI_IF: &str = "v6b-cli";
const SRV_IP: &str = "fd78::1";

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    server_cpu: f64,
    sa_sent: u64,
    sa_recv: u64,
    rr_sent: u64,
    rr_recv: u64,
}

/// perfdhcp -6 prints one block per exchange: SOLICIT-ADVERTISE, then REQUEST-REPLY.
fn parse_perfdhcp(out: &str) -> Figures {
    let mut f = Figures::default();
    let mut section = 0;
    for line in out.lines() {
        let l = line.trim();
        if l.contains("Statistics for: SOLICIT-ADVERTISE") {
            section = 1;
        } else if l.contains("Statistics for: REQUEST-REPLY") {
            section = 2;
        }
        let num = |prefix: &str| -> Option<u64> {
            l.strip_prefix(prefix)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        let (sent, recv) = match section {
            1 => (&mut f.sa_sent, &mut f.sa_recv),
            2 => (&mut f.rr_sent, &mut f.rr_recv),
            _ => continue,
        };
        if let Some(n) = num("sent packets:") {
            *sent = n;
        } else if let Some(n) = num("received packets:") {
            *recv = n;
        }
    }
    f
}

fn perfdhcp(cli_ns: &str, secs: u64) -> Result<Figures> {
    let clients = env_or("CLIENTS", 10_000).to_string();
    let secs_s = secs.to_string();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", cli_ns, "perfdhcp"]);
    cmd.args(["-6", "-l", CLI_IF, "-R", &clients, "-p", &secs_s]);
    if let Ok(rate) = std::env::var("RATE") {
        if !rate.is_empty() {
            cmd.args(["-r", &rate]);
        }
    }
    cmd.arg("all");
    let out = perf::run_to_end(cmd, secs)?;
    Ok(parse_perfdhcp(&out))
}

fn ifindex(ns: &Netns, iface: &str) -> Result<u32> {
    let out = ns.ip(&["-o", "link", "show", "dev", iface])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("the index of {iface} in {text:?}"))
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
    let index = ifindex(srv, SRV_IF)?;
    let sock = srv.run_inside(|| {
        bind_socket6(SRV_IF, index, 547).with_context(|| format!("binding [::]:547 on {SRV_IF}"))
    })?;
    let settings = Arc::new(Dhcp6Settings::new(
        SRV_IP.parse()?,
        "fd78::1000-fd78::4fff",
        1800,
        3600,
        UefiLoader::IpxeEfi,
        80,
        Mac([2, 0, 0, 0x78, 0, 1]),
    )?);
    let cli_name = cli.name().to_owned();
    let server_store = store.clone();
    let (mut figures, cpu) = with_our_server(
        rt,
        |cancel| {
            let sock = tokio::net::UdpSocket::from_std(sock)?;
            Ok(serve6(
                settings,
                sock,
                IntentTable::new(),
                server_store,
                cancel,
            ))
        },
        move || perfdhcp(&cli_name, secs),
    )?;
    figures.server_cpu = cpu;
    println!(
        "     (ours: {} leases in redb after the run)",
        store.load6()?.len()
    );
    Ok(figures)
}

fn run_kea(srv: &Netns, cli: &Netns, dir: &Path, secs: u64) -> Result<Figures> {
    let leases = dir.join("kea-leases6.csv");
    let _ = std::fs::remove_file(&leases);
    let conf = dir.join("kea6.json");
    std::fs::write(
        &conf,
        format!(
            r#"{{ "Dhcp6": {{
    "data-directory": "{}",
    "interfaces-config": {{ "interfaces": [ "{SRV_IF}" ] }},
    "lease-database": {{ "type": "memfile", "persist": true, "name": "{}", "lfc-interval": 0 }},
    "multi-threading": {{ "enable-multi-threading": false }},
    "preferred-lifetime": 1800, "valid-lifetime": 3600,
    "subnet6": [ {{ "id": 1, "subnet": "fd78::/64", "interface": "{SRV_IF}",
                   "pools": [ {{ "pool": "fd78::1000 - fd78::4fff" }} ] }} ],
    "loggers": [ {{ "name": "kea-dhcp6", "severity": "WARN",
                   "output_options": [ {{ "output": "{}" }} ] }} ]
}} }}"#,
            dir.display(),
            leases.display(),
            dir.join("kea6.log").display()
        ),
    )?;
    let child = srv
        .command("kea-dhcp6")
        .arg("-c")
        .arg(&conf)
        .env("KEA_PIDFILE_DIR", dir)
        .env("KEA_LOCKFILE_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kea-dhcp6")?;
    let kea = ChildGuard(child);
    let kea_pid = kea.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = srv.command("ss").args(["-ulnH"]).output()?;
        if String::from_utf8_lossy(&out.stdout).contains(":547") {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("kea6.log")).unwrap_or_default();
            bail!("kea-dhcp6 did not bind port 547; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = cpu_secs(kea_pid);
    let mut f = perfdhcp(cli.name(), secs)?;
    f.server_cpu = cpu_secs(kea_pid) - cpu0;
    Ok(f)
}

/// Waits until `iface` in `ns` has a usable (not tentative) link-local address.
fn wait_link_local(ns: &Netns, iface: &str) -> Result<()> {
    for _ in 0..100 {
        let out = ns.ip(&["-6", "addr", "show", "dev", iface, "scope", "link"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("inet6 fe80") && !text.contains("tentative") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{iface} has no link-local address")
}

fn main() -> Result<()> {
    if !substruct_testkit::can_use_netns() {
        println!("dhcp6_perfdhcp: skipped (needs root and `ip netns`)");
        return Ok(());
    }
    for tool in ["perfdhcp", "kea-dhcp6", "ss"] {
        if find_tool(tool).is_none() {
            println!("dhcp6_perfdhcp: skipped ({tool} missing: apt-get install kea-admin kea-dhcp6-server)");
            return Ok(());
        }
    }
    substruct_runtime::init_tracing();
    let rounds = env_or("ROUNDS", 3);
    let secs = env_or("DURATION", 10);
    let dir = tempfile::tempdir()?;
    let srv = Netns::create("b6s")?;
    let cli = Netns::create("b6c")?;
    srv.veth_pair(SRV_IF, &cli, CLI_IF)?;
    srv.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{SRV_IP}/64"),
        "dev",
        SRV_IF,
        "nodad",
    ])?;
    wait_link_local(&srv, SRV_IF)?;
    wait_link_local(&cli, CLI_IF)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "perfdhcp -6 -l {CLI_IF} -R {} -p {secs} all; {rounds} rounds, alternating",
        env_or("CLIENTS", 10_000)
    );
    let (mut ours, mut kea) = (Vec::new(), Vec::new());
    let only = std::env::var("ONLY").unwrap_or_default();
    for round in 1..=rounds {
        for who in ["ours", "kea"] {
            if !only.is_empty() && only != who {
                continue;
            }
            let f = if who == "ours" {
                run_ours(&rt, &srv, &cli, dir.path(), secs)?
            } else {
                match run_kea(&srv, &cli, dir.path(), secs) {
                    Ok(f) => f,
                    Err(e) => {
                        // Kea not starting (a missing data directory, a port taken)
                        // is said; ours is still measured.
                        println!("round {round}  kea: not measured: {e:#}");
                        continue;
                    }
                }
            };
            let rate = f.rr_recv as f64 / secs as f64;
            println!(
                "round {round} {who:>4}: {rate:>8.0} exchanges/s | SA sent {} recv {} | RR sent {} recv {} | server CPU {:.2} s",
                f.sa_sent, f.sa_recv, f.rr_sent, f.rr_recv, f.server_cpu
            );
            if who == "ours" {
                ours.push(rate);
            } else {
                kea.push(rate);
            }
        }
    }
    let (mo, mk) = (median(&mut ours), median(&mut kea));
    println!("median ours (redb, one durable commit per batch): {mo:.0} exchanges/s");
    println!("median kea-dhcp6 (memfile persist): {mk:.0} exchanges/s");
    if mk > 0.0 {
        println!("ratio ours/kea: {:.2}", mo / mk);
    }
    Ok(())
}
