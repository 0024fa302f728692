//! System-test harness: one site's provisioning network in a network namespace,
//! with the real binaries (nats-server, substruct-controller, substruct-edge) running
//! inside it and QEMU PXE clients on taps on its bridge.
//!
//! Nothing here touches the root namespace's interfaces: every address lives on the
//! namespace's bridge. The test process talks to the servers by running commands
//! inside the namespace (`ip netns exec`), like an operator on the site would.

#![allow(clippy::unwrap_used)]

pub mod disk_image;
pub mod fleet;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use substruct_testkit::netns::{run, Netns, NsProcess};

/// The provisioning network inside every test namespace.
pub const EDGE_IP: &str = "10.77.0.1";
pub const EDGE_CIDR: &str = "10.77.0.1/24";
pub const POOL: &str = "10.77.0.100-10.77.0.199";
pub const BRIDGE: &str = "br0";
pub const API_TOKEN: &str = "test-admin-token";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory the tests were built into.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    workspace_root().join("target")
}

/// A workspace binary built by `cargo build --bins` (deploy/test does it first).
pub fn binary(name: &str) -> Result<PathBuf> {
    // The test executable lives in target/<profile>/deps/; binaries in target/<profile>/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no profile dir")?;
    let path = profile_dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build the workspace binaries first (`cargo build --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}

static IMAGE_LOCK: Mutex<()> = Mutex::new(());

/// Builds (or reuses) the prospector live image with `deploy/prospector-image/build`,
/// into `target/prospector-image/`. Returns the directory holding vmlinuz and initrd.img.
pub fn prospector_image() -> Result<PathBuf> {
    let _guard = IMAGE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let out = target_dir().join("prospector-image");
    // Serialise across test binaries too.
    std::fs::create_dir_all(&out)?;
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(out.join(".lock"))?;
    lock.lock()?;
    let stamp = out.join(".built-by-pid");
    let me = std::process::id().to_string();
    let fresh = std::fs::read_to_string(&stamp)
        .map(|s| s == me)
        .unwrap_or(false);
    if !fresh || !out.join("initrd.img").exists() {
        let script = workspace_root().join("deploy/prospector-image/build");
        let output = Command::new(&script)
            .arg(&out)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed:\n{}\n{}",
                script.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::fs::write(&stamp, &me)?;
    }
    Ok(out)
}

/// What to start on the site.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    pub site: String,
    pub with_nats: bool,
    pub with_controller: bool,
    pub edge_args: Vec<String>,
}

impl Default for SiteOptions {
    fn default() -> Self {
        Self {
            site: "s1".into(),
            with_nats: true,
            with_controller: true,
            edge_args: vec![],
        }
    }
}

/// A whole site in one namespace: bridge, NATS, controller, edge agent, images.
#[derive(Debug)]
pub struct Site {
    // Declared first so processes stop before the namespace goes.
    pub edge: Option<NsProcess>,
    pub controller: Option<NsProcess>,
    pub nats: Option<NsProcess>,
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub images: PathBuf,
    pub site: String,
    taps: usize,
}

impl Site {
    pub fn start(tag: &str, opts: SiteOptions) -> Result<Self> {
        let ns = Netns::create(tag)?;
        ns.add_bridge(BRIDGE, EDGE_CIDR)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("substruct-{tag}-"))
            .tempdir()?;
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("prospector"))?;
        let image = prospector_image()?;
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::copy(image.join(f), images.join("prospector").join(f))
                .with_context(|| format!("copying the live image's {f}"))?;
        }
        let mut site = Self {
            edge: None,
            controller: None,
            nats: None,
            ns,
            dir,
            images,
            site: opts.site.clone(),
            taps: 0,
        };
        let nats_url = format!("nats://{EDGE_IP}:4222");
        if opts.with_nats {
            let js = site.dir.path().join("jetstream");
            let log = site.dir.path().join("nats.log");
            let p = NsProcess::spawn(
                &site.ns,
                "nats-server",
                "nats-server",
                &[
                    "-a",
                    EDGE_IP,
                    "-p",
                    "4222",
                    "-js",
                    "-sd",
                    js.to_str().unwrap_or("/tmp/js"),
                ],
                log,
            )?;
            site.nats = Some(p);
            site.wait_tcp(EDGE_IP, 4222, Duration::from_secs(15))?;
        }
        if opts.with_controller {
            let bin = binary("substruct-controller")?;
            let log = site.dir.path().join("controller.log");
            let mut cmd_args = vec![
                "--nats".to_string(),
                nats_url.clone(),
                "--listen".into(),
                format!("{EDGE_IP}:8080"),
            ];
            let mut cmd = site
                .ns
                .command(bin.to_str().unwrap_or("substruct-controller"));
            cmd.args(cmd_args.drain(..))
                .env("SUBSTRUCT_TOKEN", API_TOKEN);
            let p = NsProcess::spawn_command("substruct-controller", cmd, log)?;
            site.controller = Some(p);
            site.wait_tcp(EDGE_IP, 8080, Duration::from_secs(20))?;
        }
        let bin = binary("substruct-edge")?;
        let state = site.dir.path().join("edge-state");
        let mut args: Vec<String> = vec![
            "--interface".into(),
            BRIDGE.into(),
            "--address".into(),
            EDGE_CIDR.into(),
            "--pool".into(),
            POOL.into(),
            "--images".into(),
            site.images.display().to_string(),
            "--site".into(),
            opts.site.clone(),
            "--state-dir".into(),
            state.display().to_string(),
        ];
        if opts.with_nats {
            args.extend(["--nats".into(), nats_url]);
        }
        args.extend(opts.edge_args.iter().cloned());
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = site.dir.path().join("edge.log");
        let p = NsProcess::spawn(
            &site.ns,
            "substruct-edge",
            bin.to_str().unwrap_or("substruct-edge"),
            &arg_refs,
            log,
        )?;
        site.edge = Some(p);
        site.wait_tcp(EDGE_IP, 80, Duration::from_secs(20))?;
        Ok(site)
    }

    /// Waits until something listens on `ip:port` inside the namespace, failing early
    /// when one of the site's servers exits.
    pub fn wait_tcp(&mut self, ip: &str, port: u16, timeout: Duration) -> Result<()> {
        let mut procs: Vec<&mut NsProcess> = [&mut self.nats, &mut self.controller, &mut self.edge]
            .into_iter()
            .flatten()
            .collect();
        self.ns.wait_listening(ip, port, timeout, &mut procs)
    }

    /// A new tap on the site bridge for a VM NIC.
    pub fn new_tap(&mut self) -> Result<String> {
        let tap = format!("tap{}", self.taps);
        self.taps += 1;
        self.ns.add_tap(&tap, BRIDGE)?;
        Ok(tap)
    }

    /// Runs the admin CLI inside the namespace against the controller.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let bin = binary("substruct")?;
        let out = run(self
            .ns
            .command(bin.to_str().unwrap_or("substruct"))
            .args([
                "--controller",
                &format!("http://{EDGE_IP}:8080"),
                "--token",
                API_TOKEN,
            ])
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The machine records the controller holds (`substruct machines list --json`).
    pub fn machines(&self) -> Result<Vec<serde_json::Value>> {
        let text = self.cli(&["machines", "list", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing `machines list --json`: {text}"))?;
        match v {
            serde_json::Value::Array(a) => Ok(a),
            other => bail!("expected a JSON array, got {other}"),
        }
    }

    /// Prints every server log (call on failure).
    pub fn dump_logs(&self) {
        for p in [&self.nats, &self.controller, &self.edge]
            .into_iter()
            .flatten()
        {
            eprintln!(
                "----- {} ({}) -----\n{}",
                p.name,
                p.log.display(),
                substruct_testkit::qemu::tail(&p.log_text(), 60)
            );
        }
    }
}
