//! Discovery storm: N simulated prospectors across S sites report to one controller
//! at once, with bounded concurrency. Prints reports/s, p50/p99 latency, the
//! controller's peak RSS, and the raw JetStream KV put rate on the same server as
//! the ceiling. Asserts nothing.
//!
//! The controller runs as a child process (the `substruct-controller` binary cargo
//! built for this bench), so its peak RSS is its own `VmHWM` from `/proc`.
//!
//! Environment: `STORM_REPORTS` (10000), `STORM_SITES` (20), `STORM_IN_FLIGHT`
//! (256), `STORM_KV_PUTS` (20000). Needs `nats-server` on PATH (or
//! `NATS_SERVER_BIN`); skips politely without it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use substruct_runtime::jetstream::{ensure_kv, BucketSpec};
use substruct_testkit::{free_port, nats_server_bin, wait_for, NatsServer};
use substruct_wire::messages::{DiscoverReply, DiscoverRequest};
use substruct_wire::report::{Cpu, Disk, DiskTransport, Dmi, HardwareReport, Memory, Nic};
use substruct_wire::{subjects, Mac, SiteId};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn random_report(rng: &mut impl Rng) -> HardwareReport {
    let mac = |rng: &mut dyn rand::RngCore| {
        let mut m = [0u8; 6];
        rng.fill_bytes(&mut m);
        m[0] = (m[0] & 0xfe) | 0x02;
        Mac(m)
    };
    let uuid = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.gen::<u32>(),
        rng.gen::<u16>(),
        rng.gen::<u16>(),
        rng.gen::<u16>(),
        rng.gen::<u64>() & 0xffff_ffff_ffff
    );
    let nics = (0..2)
        .map(|i| Nic {
            name: format!("eno{i}"),
            mac: mac(rng),
            driver: Some("ixgbe".into()),
            pci_address: Some(format!("0000:3b:00.{i}")),
            speed_mbps: Some(10_000),
            carrier: Some(true),
        })
        .collect();
    let disks = (0..2)
        .map(|i| Disk {
            name: format!("nvme{i}n1"),
            size_bytes: 960 << 30,
            model: Some("SAMSUNG MZQL2960HCJR-00A07".into()),
            serial: Some(format!("S64F{:010X}", rng.gen::<u64>() & 0xff_ffff_ffff)),
            transport: DiskTransport::Nvme,
            ..Disk::default()
        })
        .collect();
    HardwareReport {
        prospector_version: "0.1.0".into(),
        dmi: Dmi {
            sys_vendor: Some("Dell Inc.".into()),
            product_name: Some("PowerEdge R650".into()),
            product_serial: Some(format!("{:07X}", rng.gen::<u32>() & 0xfff_ffff)),
            product_uuid: Some(uuid),
            bios_vendor: Some("Dell Inc.".into()),
            bios_version: Some("1.6.5".into()),
            ..Dmi::default()
        },
        cpu: Cpu {
            model: Some("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".into()),
            sockets: 2,
            cores: 64,
            threads: 128,
            virtualization: Some("vmx".into()),
            microcode: Some("0xd000389".into()),
            flags: ["vmx", "aes", "avx2", "avx512f"]
                .iter()
                .map(|s| (*s).into())
                .collect(),
        },
        memory: Memory {
            total_bytes: 512 << 30,
            dimms: vec![],
        },
        disks,
        nics,
        pci: vec![],
        ..HardwareReport::default()
    }
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    ticks as f64 / 100.0
}

/// The pid of the nats-server listening on `port` (from /proc cmdlines).
fn nats_pid(port: u16) -> Option<u32> {
    let port = port.to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_nats = args.first()?.ends_with(b"nats-server");
        (is_nats && args.contains(&port.as_bytes())).then_some(pid)
    })
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn kv_put_rate(nats_url: &str, puts: usize) -> Result<f64> {
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let kv = ensure_kv(&js, &BucketSpec::new("bench_raw")).await?;
    let value = bytes::Bytes::from(vec![b'x'; 2048]);
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..puts)
        .map(|i| {
            let (kv, value) = (kv.clone(), value.clone());
            async move { kv.put(format!("k{i}"), value).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {puts} KV puts failed");
    }
    Ok(puts as f64 / elapsed.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    if Command::new(nats_server_bin())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        println!(
            "discovery_storm: skipped, nats-server not found (install Debian package nats-server)"
        );
        return Ok(());
    }
    let reports_n = env_usize("STORM_REPORTS", 10_000);
    let sites_n = env_usize("STORM_SITES", 20);
    let in_flight = env_usize("STORM_IN_FLIGHT", 256);
    let kv_puts = env_usize("STORM_KV_PUTS", 20_000);

    let nats = NatsServer::start()?;
    let kv_rate = kv_put_rate(&nats.url(), kv_puts).await?;

    let port = free_port();
    let log_dir = tempfile::tempdir()?;
    let log_path = log_dir.path().join("controller.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(env!("CARGO_BIN_EXE_substruct-controller"))
        .args([
            "--nats",
            &nats.url(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .env("SUBSTRUCT_TOKEN", "bench-token-not-secret")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawning substruct-controller")?;
    let child = ChildGuard(child);
    let pid = child.0.id();
    let http = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/healthz");
    wait_for("controller health", Duration::from_secs(30), || {
        let (http, health) = (http.clone(), health.clone());
        async move {
            http.get(&health)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }
    })
    .await?;
    let rss_idle_kb = proc_status_kb(pid, "VmRSS:").unwrap_or(0);

    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let sites: Vec<SiteId> = (0..sites_n)
        .map(|i| SiteId::new(format!("site-{i}")))
        .collect::<Result<_, _>>()?;
    let mut requests = Vec::with_capacity(reports_n);
    for i in 0..reports_n {
        let site = &sites[i % sites_n];
        let msg = DiscoverRequest {
            site: site.clone(),
            boot_token: None,
            report: random_report(&mut rng),
        };
        requests.push((subjects::discover(site), substruct_wire::encode(&msg)?));
    }
    let avg_len = requests.iter().map(|(_, b)| b.len()).sum::<usize>() / reports_n.max(1);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(async_nats::connect(nats.url()).await?);
    }

    let nats_pid = nats_pid(nats.port());
    let cpu_before = (
        cpu_seconds(pid),
        nats_pid.map_or(0.0, cpu_seconds),
        cpu_seconds(std::process::id()),
    );
    let started = Instant::now();
    let results: Vec<(bool, Duration)> = futures::stream::iter(requests.into_iter().enumerate())
        .map(|(i, (subject, payload))| {
            let client = clients[i % clients.len()].clone();
            async move {
                let t0 = Instant::now();
                let ok = match client.request(subject, payload.into()).await {
                    Ok(msg) => substruct_wire::decode::<DiscoverReply>(&msg.payload).is_ok(),
                    Err(_) => false,
                };
                (ok, t0.elapsed())
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let rss_peak_kb = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    let cpu = (
        cpu_seconds(pid) - cpu_before.0,
        nats_pid.map_or(0.0, cpu_seconds) - cpu_before.1,
        cpu_seconds(std::process::id()) - cpu_before.2,
    );
    let ok = results.iter().filter(|(ok, _)| *ok).count();
    let mut latencies: Vec<Duration> = results.into_iter().map(|(_, d)| d).collect();
    latencies.sort();

    println!("discovery_storm: {reports_n} prospectors, {sites_n} sites, {in_flight} in flight, reports ~{avg_len} bytes");
    println!(
        "  reports/s        {:.0}   ({ok} accepted, {} failed, {:.2} s)",
        ok as f64 / elapsed.as_secs_f64(),
        reports_n - ok,
        elapsed.as_secs_f64()
    );
    println!(
        "  latency          p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  controller RSS   idle {:.1} MB   peak (VmHWM of the child process) {:.1} MB",
        rss_idle_kb as f64 / 1024.0,
        rss_peak_kb as f64 / 1024.0
    );
    println!(
        "  CPU during storm controller {:.2} s   nats-server {:.2} s   prospectors (this process) {:.2} s   (machine has {} cores)",
        cpu.0,
        cpu.1,
        cpu.2,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  ceiling: raw JetStream KV put rate (2 KB values, 64 in flight, {kv_puts} puts): {kv_rate:.0} puts/s");
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let slow = log_text.matches("slow discover request").count();
    let problems = log_text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    println!("  controller log   {slow} requests slower than 1 s, {problems} warnings/errors");
    if ok < reports_n || problems > 0 {
        println!("  controller log: {}", log_path.display());
        let _ = log_dir.keep();
    }
    drop(child);
    Ok(())
}
