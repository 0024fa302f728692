//! Network-namespace helpers shared by the DHCP system tests and the perfdhcp
//! benchmark (`#[path]`-included). Every namespace is named after this process id
//! and deleted on drop; nothing is created in the root namespace.
#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;

/// A network namespace deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `tag` keeps names unique within one process.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("sdhcp-{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command run inside the namespace (`ip netns exec`).
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

    /// A DHCP socket (see `dhcp::bind_socket`) created inside this namespace.
    pub fn dhcp_socket(&self, iface: &str, port: u16) -> Result<std::net::UdpSocket> {
        let path = format!("/run/netns/{}", self.name);
        let iface = iface.to_owned();
        let sock = std::thread::spawn(move || -> io::Result<std::net::UdpSocket> {
            let f = File::open(&path)?;
            nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            substruct_edge::dhcp::bind_socket(&iface, Ipv4Addr::UNSPECIFIED, port)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("socket thread panicked"))?
        .with_context(|| format!("binding :{port} in {}", self.name))?;
        Ok(sock)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A veth pair `a_if` (in `a`) ↔ `b_if` (in `b`), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// True when `program` is on the PATH (or an absolute path that exists).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A child process killed on drop (by its own pid).
#[derive(Debug)]
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
