//! TFTP throughput: 8 parallel `atftp` clients each fetching a 64 MiB file with blksize 1468,
//! against our server (in-process) and tftpd-hpa (`in.tftpd`) in the same run, alternating
//! A B A B for `ROUNDS` rounds (default 3). tftpd-hpa has no windowsize, so the fair comparison
//! is windowsize 1; our windowsize-8 figure is printed separately.
//!
//! Prints figures, asserts nothing; skips (exit 0) without root or without `atftp`/`in.tftpd`.
//! Env: ROUNDS, CLIENTS (8), SIZE_MIB (64).

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use substruct_edge::tftp::{self, TftpFiles};
use tokio_util::sync::CancellationToken;

const TFTPD: &str = "/usr/sbin/in.tftpd";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn have(program: &str) -> bool {
    let path = Path::new(program);
    if path.is_absolute() {
        return path.exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).exists()))
        .unwrap_or(false)
}

/// Kills tftpd-hpa when dropped, also on error paths.
struct Tftpd(std::process::Child);

impl Drop for Tftpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> Result<u16> {
    Ok(StdUdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_tftpd(dir: &Path) -> Result<(Tftpd, SocketAddr)> {
    let port = free_udp_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let child = std::process::Command::new(TFTPD)
        .args(["-L", "-s"])
        .arg(dir)
        .args(["-a", &addr.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start in.tftpd")?;
    let guard = Tftpd(child);
    // Bounded poll: ready once its port is taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while StdUdpSocket::bind(addr).is_ok() {
        if Instant::now() > deadline {
            bail!("in.tftpd did not bind {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((guard, addr))
}

/// Runs `clients` atftp processes in parallel; returns aggregate MB/s (10^6 bytes).
async fn run_clients(
    addr: SocketAddr,
    clients: usize,
    size: u64,
    window: Option<u16>,
) -> Result<f64> {
    let start = Instant::now();
    let mut children = Vec::new();
    for _ in 0..clients {
        let mut cmd = tokio::process::Command::new("atftp");
        cmd.args([
            "--get",
            "-r",
            "big.bin",
            "-l",
            "/dev/null",
            "--option",
            "blksize 1468",
            "--option",
            "tsize 0",
        ]);
        if let Some(w) = window {
            cmd.args(["--option", &format!("windowsize {w}")]);
        }
        cmd.arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        children.push(cmd.spawn().context("cannot start atftp")?);
    }
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
            .await
            .context("atftp did not finish in 10 minutes")??;
        if !out.status.success() {
            bail!(
                "atftp failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((clients as u64 * size) as f64 / secs / 1e6)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn main() -> Result<()> {
    // Effective uid from /proc (no unsafe geteuid): tftpd-hpa needs root to chroot.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        println!("tftp_bench: skipped (tftpd-hpa needs root to chroot)");
        return Ok(());
    }
    for tool in ["atftp", TFTPD] {
        if !have(tool) {
            println!(
                "tftp_bench: skipped ({tool} not installed; Debian packages atftp, tftpd-hpa)"
            );
            return Ok(());
        }
    }
    let rounds = env_or("ROUNDS", 3).max(1);
    let clients = env_or("CLIENTS", 8).max(1);
    let size = env_or("SIZE_MIB", 64) as u64 * 1024 * 1024;

    let dir = tempfile::tempdir()?;
    // tftpd-hpa drops privileges: the tree must be world-readable.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let file: PathBuf = dir.path().join("big.bin");
    let data: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data)?;
    drop(data);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let ours = socket.local_addr()?;
        let cancel = CancellationToken::new();
        let server = tokio::spawn(tftp::serve(
            socket,
            TftpFiles::new(vec![dir.path().to_owned()]),
            cancel.clone(),
        ));
        let (tftpd, hpa) = start_tftpd(dir.path())?;
        println!(
            "tftp_bench: {clients} clients x {} MiB, blksize 1468, {rounds} rounds (atftp client)",
            size / 1024 / 1024
        );
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        let result: Result<()> = async {
            for round in 1..=rounds {
                let ours_w1 = run_clients(ours, clients, size, None).await?;
                let theirs = run_clients(hpa, clients, size, None).await?;
                let ours_w8 = run_clients(ours, clients, size, Some(8)).await?;
                println!(
                    "round {round}: substruct {ours_w1:.1} MB/s | tftpd-hpa {theirs:.1} MB/s | substruct windowsize 8 {ours_w8:.1} MB/s"
                );
                a.push(ours_w1);
                b.push(theirs);
                c.push(ours_w8);
            }
            Ok(())
        }
        .await;
        drop(tftpd);
        cancel.cancel();
        let _ = server.await;
        result?;
        let (ma, mb, mc) = (median(&mut a), median(&mut b), median(&mut c));
        println!("median aggregate, windowsize 1: substruct {ma:.1} MB/s, tftpd-hpa {mb:.1} MB/s, ratio {:.2}x", ma / mb);
        println!("median aggregate, substruct windowsize 8: {mc:.1} MB/s ({:.2}x tftpd-hpa)", mc / mb);
        Ok(())
    })
}
