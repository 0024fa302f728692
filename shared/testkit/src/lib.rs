//! Test harness shared by every crate's tests. Real parts only: [`NatsServer`] starts a
//! real `nats-server -js` on a port of its own choosing (`-p -1`, read back from its
//! ports file) with its own JetStream directory; [`wait_for`] and [`poll`] are the
//! bounded polls that replace sleeps; [`gate`] is the one gate every system test
//! passes (skip, or fail under `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1`); [`netns`] holds
//! network namespaces and the processes run inside them; [`webdriver`] drives a real
//! headless Chromium through chromedriver.
//!
//! Only tests and benches depend on this crate.

#![allow(clippy::unwrap_used)]

pub mod gate;
pub mod ipmi_sim;
pub mod nats_topology;
pub mod netns;
pub mod qemu;
pub mod sushy;
pub mod webdriver;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use gate::{can_use_netns, system_test, Need};

/// How often [`wait_for`] and [`wait_for_blocking`] look.
const WAIT_EVERY: Duration = Duration::from_millis(20);

/// A free TCP port on 127.0.0.1 (bound then released).
///
/// Racy by nature (another process may take it before the caller binds it): prefer
/// binding port 0 and passing the socket, or letting the server choose (`-p -1`) and
/// reading its choice back, as [`NatsServer`] does.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// The error of a poll whose time ran out (inside the `anyhow::Error`; find it with
/// `err.downcast_ref::<TimedOut>()`, e.g. when running out of time is the expected
/// outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// What was waited for.
    pub what: String,
    /// How long.
    pub timeout: Duration,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.timeout, self.what
        )
    }
}

impl std::error::Error for TimedOut {}

/// Polls `probe` every `every` until it yields `Some(value)`, and returns the value;
/// fails naming `what` once `timeout` has passed. The probe runs at least once.
pub async fn poll<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    try_poll(what, timeout, every, || {
        let fut = probe();
        async move { Ok(fut.await) }
    })
    .await
}

/// [`poll`] with a fallible probe: `Ok(None)` means "not yet", an error ends the wait
/// at once (e.g. the process being waited for has exited).
pub async fn try_poll<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                timeout,
            }
            .into());
        }
        tokio::time::sleep(every).await;
    }
}

/// Blocking variant of [`poll`] for non-async harness code.
pub fn poll_blocking<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    try_poll_blocking(what, timeout, every, || Ok(probe()))
}

/// Blocking variant of [`try_poll`]: `Ok(None)` means "not yet", an error ends the
/// wait at once.
pub fn try_poll_blocking<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                timeout,
            }
            .into());
        }
        std::thread::sleep(every);
    }
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll(what, timeout, WAIT_EVERY, || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Blocking variant of [`wait_for`] for non-async harness code.
pub fn wait_for_blocking(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    poll_blocking(what, timeout, WAIT_EVERY, || cond().then_some(()))
}

/// A child process killed (SIGKILL) and reaped on drop, also when a test fails.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
///
/// The server chooses its own port (`-p -1`) and reports it in a ports file
/// (`--ports_file_dir`), so two tests never race for a port; a restart reuses the
/// port it chose first. A server that exits while starting (bad arguments, a port
/// clash on restart) is an error quoting its stderr, not a wait until the timeout.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    /// 0 until the first start has chosen one.
    port: u16,
    dir: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
}

/// How long `nats-server` may take to write its ports file.
const NATS_START_TIMEOUT: Duration = Duration::from_secs(15);

impl NatsServer {
    /// Starts a server with JetStream on a port it chooses.
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
            port: 0,
            dir: Some(dir),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let dir = self.store_dir().to_owned();
        let ports_dir = dir.join("ports");
        std::fs::create_dir_all(&ports_dir).context("nats ports dir")?;
        let log_path = dir.join("nats.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("nats log")?;
        let log_mark = log.metadata().map(|m| m.len()).unwrap_or(0);
        // First start: the server picks a free port itself; a restart takes it again.
        let port = match self.port {
            0 => "-1".to_owned(),
            p => p.to_string(),
        };
        let mut child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port, "--ports_file_dir"])
            .arg(&ports_dir)
            .args(["-js", "-sd"])
            .arg(dir.join("js"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning nats-server (is it installed?)")?;
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        let started = try_poll_blocking(
            "nats-server to write its ports file",
            NATS_START_TIMEOUT,
            WAIT_EVERY,
            || match child.try_wait().context("waiting for nats-server")? {
                Some(status) => bail!("nats-server exited at start ({status})"),
                None => Ok(read_client_port(&ports_file)),
            },
        );
        match started {
            Ok(chosen) => {
                self.port = chosen;
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read(&log_path).unwrap_or_default();
                let from = usize::try_from(log_mark).unwrap_or(0).min(stderr.len());
                Err(e.context(format!(
                    "nats-server stderr ({}):\n{}",
                    log_path.display(),
                    String::from_utf8_lossy(&stderr[from..]).trim_end()
                )))
            }
        }
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port the server chose.
    /// The running server's process id (benches read its CPU time from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory: JetStream store (`js/`), log (`nats.log`), ports file.
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

    /// Starts the server again on the same port and store (a restart). Fails, quoting
    /// the server's stderr, if the port was taken meanwhile.
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

/// The client port in a `nats-server` ports file (`{"nats":["nats://IP:PORT"],...}`),
/// `None` while the file is absent or not yet complete.
fn read_client_port(ports_file: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(ports_file).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports.get("nats")?.get(0)?.as_str()?;
    url.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_server_picks_its_port_and_keeps_it_across_a_restart() {
        let mut nats = NatsServer::start().unwrap();
        let port = nats.port();
        assert_ne!(port, 0);
        assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        nats.restart().unwrap();
        assert_eq!(nats.port(), port);
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn a_server_that_exits_at_start_is_an_error_quoting_its_stderr() {
        let started = Instant::now();
        let err = NatsServer::start_with(&["-c", "/nonexistent/nats.conf"]).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("exited at start"), "{text}");
        assert!(text.contains("/nonexistent/nats.conf"), "{text}");
        assert!(
            started.elapsed() < NATS_START_TIMEOUT,
            "it waited for the timeout"
        );
    }

    #[test]
    fn polls_return_the_value_or_time_out_typed() {
        let mut n = 0;
        let got = poll_blocking("n to reach 3", Duration::from_secs(5), WAIT_EVERY, || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(got.unwrap(), 3);
        let err = wait_for_blocking("never", Duration::from_millis(50), || false).unwrap_err();
        assert_eq!(
            err.downcast_ref::<TimedOut>().map(|t| t.what.as_str()),
            Some("never")
        );
        let started = Instant::now();
        let err = try_poll_blocking::<()>(
            "a failing probe",
            Duration::from_secs(5),
            WAIT_EVERY,
            || bail!("broken"),
        )
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "an error ends the wait"
        );
        assert!(err.downcast_ref::<TimedOut>().is_none());
    }
}
