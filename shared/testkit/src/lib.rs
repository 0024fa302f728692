//! Test harness shared by every crate's tests. Real parts only: [`NatsServer`] starts a
//! real `nats-server -js` on a free loopback port with its own JetStream directory;
//! [`wait_for`] is the bounded poll that replaces sleeps.
//!
//! Only tests and benches depend on this crate.

#![allow(clippy::unwrap_used)]

pub mod nats_topology;
pub mod netns;
pub mod qemu;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking variant of [`wait_for`] for non-async harness code.
pub fn wait_for_blocking(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of the `nats-server` binary: `$NATS_SERVER_BIN` or the one on `PATH`.
pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// A real `nats-server -js` on 127.0.0.1, killed on drop. Its store directory is
/// kept (and printed) when the test thread panics.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (e.g. `-c FILE`).
    pub fn start_with(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("substruct-nats-")
            .tempdir()
            .context("temp dir for nats")?;
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: Some(dir),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let dir = self.store_dir().to_owned();
        let log = std::fs::File::create(dir.join("nats.log")).context("nats log")?;
        let child = Command::new(nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(dir.join("js"))
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning nats-server (is it installed?)")?;
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        wait_for_blocking("nats-server to listen", Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        })
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store_dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// Kills the server (SIGKILL) and keeps its store.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store (a restart).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("nats-server store kept at {}", kept.display());
            }
        }
    }
}

/// True when running as root with `ip netns` available (network-namespace tests).
pub fn can_use_netns() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    root && Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
