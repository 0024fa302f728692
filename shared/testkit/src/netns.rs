//! Network namespaces for tests: each test makes its own, uniquely named, and the
//! guard deletes it (and kills what runs inside) on drop. Nothing here touches the
//! root namespace's interfaces. Code runs inside a namespace either as a process
//! ([`Netns::command`], [`NsProcess`]) or on a thread that joined it
//! ([`Netns::run_inside`], [`Netns::spawn_inside`]), so sockets it binds live there.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace owned by the test.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

impl Netns {
    /// Creates `sbst-{tag}-{pid}-{n}` with loopback up.
    pub fn create(tag: &str) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("sbst-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the file that holds the namespace open.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace (`ip netns exec`, which execs the
    /// program: the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// The same as a tokio command.
    pub fn tokio_command(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into the namespace: sockets it opens afterwards live
    /// there. Only for threads made for that ([`Netns::spawn_inside`] does it for you).
    pub fn enter_current_thread(&self) -> Result<()> {
        let path = self.path();
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {}", self.name))?;
        Ok(())
    }

    /// Runs `f` on a new thread that joined the namespace first, and returns its result
    /// (e.g. a socket bound inside the namespace, usable from any thread).
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter_current_thread()?;
                    f()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread inside {} panicked", self.name))?
        })
    }

    /// Starts `f` on a new thread that joined the namespace first (e.g. a whole
    /// service with its own runtime); join the handle for its result.
    pub fn spawn_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let path = self.path();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {name}"))?;
            f()
        })
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `program ARGS` inside the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = run(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Adds a bridge with `cidr` (e.g. `10.77.0.1/24`), up, no STP delay, IPv6 link-local on.
    pub fn add_bridge(&self, bridge: &str, cidr: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        self.ip(&["addr", "add", cidr, "dev", bridge])?;
        self.ip(&["link", "set", bridge, "up"])?;
        Ok(())
    }

    /// Adds a tap device enslaved to `bridge`, for a QEMU NIC.
    pub fn add_tap(&self, tap: &str, bridge: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.ip(&["link", "set", tap, "master", bridge])?;
        self.ip(&["link", "set", tap, "up"])?;
        Ok(())
    }

    /// Joins this namespace and `other` by a veth pair with the given addresses
    /// (`(interface, cidr)` on each side), both ends up.
    pub fn veth_to(&self, other: &Netns, here: (&str, &str), there: (&str, &str)) -> Result<()> {
        self.veth_pair(here.0, other, there.0)?;
        self.ip(&["addr", "add", here.1, "dev", here.0])?;
        other.ip(&["addr", "add", there.1, "dev", there.0])?;
        Ok(())
    }

    /// Joins this namespace (`here`) and `other` (`there`) by a veth pair without
    /// addresses, both ends up.
    pub fn veth_pair(&self, here: &str, other: &Netns, there: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            here,
            "type",
            "veth",
            "peer",
            "name",
            there,
            "netns",
            &other.name,
        ])?;
        self.ip(&["link", "set", here, "up"])?;
        other.ip(&["link", "set", there, "up"])?;
        Ok(())
    }

    /// Waits until something listens on TCP `ip:port` inside the namespace (by `ss`),
    /// failing at once, with its log, when one of `procs` exits meanwhile.
    pub fn wait_listening(
        &self,
        ip: &str,
        port: u16,
        timeout: std::time::Duration,
        procs: &mut [&mut NsProcess],
    ) -> Result<()> {
        let needle = format!("{ip}:{port}");
        crate::try_poll_blocking(
            &format!("a listener on {needle} in {}", self.name),
            timeout,
            std::time::Duration::from_millis(50),
            || {
                // The local address column exactly: `10.77.0.1:80` must not match the
                // controller's `10.77.0.1:8080`.
                // (A socket bound to a device shows as `IP%DEV:PORT`.)
                let port_suffix = format!(":{port}");
                let matches = |col: &str| {
                    col == needle
                        || col.strip_prefix(ip).is_some_and(|rest| {
                            rest.starts_with('%') && rest.ends_with(&port_suffix)
                        })
                };
                let listening = self.exec("ss", &["-ltnH"]).is_ok_and(|s| {
                    s.lines()
                        .any(|l| l.split_whitespace().nth(3).is_some_and(matches))
                });
                if listening {
                    return Ok(Some(()));
                }
                for p in procs.iter_mut() {
                    p.check_alive()?;
                }
                Ok(None)
            },
        )
    }

    /// Kills every process still running inside the namespace.
    pub fn kill_all(&self) {
        let pids = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process started inside a namespace, killed (SIGTERM, then SIGKILL) on drop.
/// Its stdout and stderr go to `log`.
#[derive(Debug)]
pub struct NsProcess {
    /// The process (`ip netns exec` execs the program, so this is the program).
    pub child: std::process::Child,
    /// Its stdout and stderr.
    pub log: std::path::PathBuf,
    /// What error messages call it.
    pub name: String,
}

impl NsProcess {
    /// Starts `program ARGS` inside `ns`, stdout and stderr to `log` (created).
    pub fn spawn(
        ns: &Netns,
        name: &str,
        program: &str,
        args: &[&str],
        log: std::path::PathBuf,
    ) -> Result<Self> {
        let mut cmd = ns.command(program);
        cmd.args(args);
        Self::spawn_command(name, cmd, log)
    }

    /// Starts `cmd` (made by [`Netns::command`], with whatever environment or working
    /// directory the caller set), stdout and stderr to `log` (created).
    pub fn spawn_command(name: &str, mut cmd: Command, log: std::path::PathBuf) -> Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = file.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Self {
            child,
            log,
            name: name.to_owned(),
        })
    }

    /// The log so far (lossy UTF-8).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Fails if the process has exited, with the tail of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// Stops the process: SIGTERM, SIGKILL if it still runs after a second.
    pub fn stop(&mut self) {
        // `ip netns exec` execs the program, so the child pid is the program's pid.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let child = &mut self.child;
        let exited = crate::wait_for_blocking(
            &format!("{} to exit", self.name),
            std::time::Duration::from_secs(1),
            || matches!(child.try_wait(), Ok(Some(_))),
        );
        if exited.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
