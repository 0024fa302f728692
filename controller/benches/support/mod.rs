//! What the controller benches share: a controller child process, synthetic hardware
//! reports, /proc readings, percentiles, the raw JetStream KV put ceiling.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rand::Rng;
use substruct_runtime::jetstream::{ensure_kv, BucketSpec};
use substruct_testkit::{free_port, wait_for};
use substruct_wire::report::{Cpu, Disk, DiskTransport, Dmi, HardwareReport, Memory, Nic};
use substruct_wire::Mac;

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

pub fn random_report(rng: &mut impl Rng) -> HardwareReport {
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

pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
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
pub fn cpu_seconds(pid: u32) -> f64 {
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

pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn kv_put_rate(nats_url: &str, puts: usize) -> Result<f64> {
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

/// A controller child process and its log.
pub struct Controller {
    pub child: ChildGuard,
    pub log_dir: tempfile::TempDir,
    pub log_path: std::path::PathBuf,
    /// The REST API's port on 127.0.0.1.
    pub port: u16,
}

impl Controller {
    /// Spawns the controller on `nats_url` (with the hub's controller user when
    /// given) and waits for its health endpoint.
    pub async fn spawn(nats_url: &str, credentials: Option<(&str, &str)>) -> Result<Self> {
        Self::spawn_logging(nats_url, credentials, "warn").await
    }

    /// [`Self::spawn`] with `RUST_LOG` set to `level`.
    pub async fn spawn_logging(
        nats_url: &str,
        credentials: Option<(&str, &str)>,
        level: &str,
    ) -> Result<Self> {
        let port = free_port();
        let log_dir = tempfile::tempdir()?;
        let log_path = log_dir.path().join("controller.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_substruct-controller"));
        cmd.args(["--nats", nats_url, "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", level)
            .env("SUBSTRUCT_TOKEN", "bench-token-not-secret")
            .env_remove("SUBSTRUCT_NATS_USER")
            .env_remove("SUBSTRUCT_NATS_PASSWORD");
        if let Some((user, password)) = credentials {
            cmd.env("SUBSTRUCT_NATS_USER", user)
                .env("SUBSTRUCT_NATS_PASSWORD", password);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning substruct-controller")?;
        let mut controller = Self {
            child: ChildGuard(child),
            log_dir,
            log_path,
            port,
        };
        let http = reqwest::Client::new();
        let health = format!("http://127.0.0.1:{port}/healthz");
        let up = wait_for("controller health", Duration::from_secs(30), || {
            let (http, health) = (http.clone(), health.clone());
            async move {
                http.get(&health)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .await;
        if let Err(e) = up {
            let exited = controller.child.0.try_wait().ok().flatten();
            bail!(
                "{e} (controller exited: {exited:?}); controller log:\n{}",
                controller.log_since(0)
            );
        }
        Ok(controller)
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub fn log_len(&self) -> usize {
        std::fs::metadata(&self.log_path).map_or(0, |m| m.len() as usize)
    }

    pub fn log_since(&self, mark: usize) -> String {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(&bytes[mark.min(bytes.len())..]).into_owned()
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}
