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
use substruct_testkit::nats_topology::TlsFiles;
use substruct_testkit::netns::{run, Netns, NsProcess};

/// The provisioning network inside every test namespace.
pub const EDGE_IP: &str = "10.77.0.1";
pub const EDGE_CIDR: &str = "10.77.0.1/24";
pub const POOL: &str = "10.77.0.100-10.77.0.199";
pub const BRIDGE: &str = "br0";
/// The edge's IPv6 address and DHCPv6 pool when [`SiteOptions::ipv6`] is on.
pub const EDGE_IP6: &str = "fd77::1";
pub const POOL6: &str = "fd77::100-fd77::1ff";
pub const API_TOKEN: &str = "test-admin-token";
/// The controller's REST API port (HTTPS).
pub const API_PORT: u16 = 8080;

/// A fresh CA and a certificate for the controller's API at `ip` (the harness serves the
/// API over HTTPS, as the lab and a real deployment do).
pub fn api_tls(ip: &str) -> Result<TlsFiles> {
    let ip: std::net::IpAddr = ip.parse().with_context(|| format!("API address {ip:?}"))?;
    TlsFiles::generate(&[ip]).context("making the API's CA and certificate")
}

/// `substruct-controller` flags serving HTTPS with `tls`'s certificate.
pub fn api_tls_args(tls: &TlsFiles) -> Result<[String; 4]> {
    Ok([
        "--tls-cert".into(),
        path_str(&tls.cert)?.into(),
        "--tls-key".into(),
        path_str(&tls.key)?.into(),
    ])
}

/// `substruct` flags reaching the controller at `https://{ip}:{API_PORT}`, verified with
/// `tls`'s CA, with the admin token.
pub fn cli_args(ip: &str, tls: &TlsFiles) -> Result<[String; 6]> {
    Ok([
        "--controller".into(),
        format!("https://{ip}:{API_PORT}"),
        "--ca".into(),
        path_str(&tls.ca)?.into(),
        "--token".into(),
        API_TOKEN.into(),
    ])
}

/// `p` as text (for a command line), or an error naming it.
pub(crate) fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

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

/// Makes a site signing key with `substruct-edge keygen` (the seed in `dir/site.nk`,
/// for the edge's `--site-key`); returns the seed file and the public key, for
/// `substruct sites add SITE --key`.
pub fn site_key(dir: &Path) -> Result<(PathBuf, String)> {
    let file = dir.join("site.nk");
    let bin = binary("substruct-edge")?;
    let out = run(Command::new(bin).arg("keygen").arg(&file))?;
    let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if public.is_empty() {
        bail!("substruct-edge keygen printed no public key");
    }
    Ok((file, public))
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
///
/// `deploy/test` builds the image once before the suite and names it in
/// `SUBSTRUCT_PROSPECTOR_IMAGE`: then every test binary uses it as it is. Otherwise each
/// test process builds it once (a stamp with its pid), so a plain `cargo test` never
/// boots a stale image.
pub fn prospector_image() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SUBSTRUCT_PROSPECTOR_IMAGE") {
        let dir = PathBuf::from(dir);
        if !dir.join("initrd.img").exists() || !dir.join("vmlinuz").exists() {
            bail!(
                "SUBSTRUCT_PROSPECTOR_IMAGE={} has no vmlinuz and initrd.img",
                dir.display()
            );
        }
        return Ok(dir);
    }
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
    /// Dual stack: the bridge gets [`EDGE_IP6`]/64 too and the edge serves DHCPv6
    /// ([`POOL6`]), TFTP and HTTP on it.
    pub ipv6: bool,
    /// With `ipv6`: an IPv6-only site (`--ipv6-only`: no DHCPv4; machines boot, fetch
    /// their scripts and report over IPv6; the leaf node listens on every address).
    pub ipv6_only: bool,
}

impl Default for SiteOptions {
    fn default() -> Self {
        Self {
            site: "s1".into(),
            with_nats: true,
            with_controller: true,
            edge_args: vec![],
            ipv6: false,
            ipv6_only: false,
        }
    }
}

/// The shipped NATS topology inside a site's namespace: the hub (JetStream, the
/// controller's) and the site's leaf node on the edge's address, port 4222.
#[derive(Debug)]
pub struct SiteNats {
    pub hub: substruct_testkit::nats_topology::Hub,
    pub leaf: substruct_testkit::nats_topology::Leaf,
}

/// A whole site in one namespace: bridge, NATS, controller, edge agent, images.
#[derive(Debug)]
pub struct Site {
    // Declared first so processes stop before the namespace goes.
    pub edge: Option<NsProcess>,
    pub controller: Option<NsProcess>,
    /// The hub (the controller's) and the site's leaf node (the edge's and the
    /// prospectors', operator mode: only logins the site key signed).
    pub nats: Option<SiteNats>,
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub images: PathBuf,
    pub site: String,
    /// The API's CA and certificate (when the site runs a controller).
    pub api_tls: Option<TlsFiles>,
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
            api_tls: None,
            taps: 0,
        };
        // The edge signs boot credentials and its own NATS login with the site key; the
        // leaf node admits only users it signed; the controller knows the public key.
        let (key_file, public_key) = site_key(site.dir.path())?;
        let nats_url = format!("nats://{EDGE_IP}:4222");
        if opts.with_nats {
            use substruct_testkit::nats_topology::{Hub, HubOptions, Leaf, LeafOptions};
            let ip: std::net::IpAddr = EDGE_IP.parse().context("EDGE_IP")?;
            let hub = Hub::start(
                HubOptions::default()
                    .sites([opts.site.as_str()])
                    .in_netns(&site.ns, ip),
            )
            .context("starting the NATS hub")?;
            let leaf = Leaf::start(
                &hub,
                &opts.site,
                LeafOptions::default()
                    .in_netns(&site.ns, ip, hub.leaf_urls())
                    .site_key(&key_file)
                    .port(4222)
                    .listen_on(if opts.ipv6_only {
                        std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                    } else {
                        ip
                    }),
            )
            .context("starting the site's leaf node")?;
            leaf.wait_linked(Duration::from_secs(30))?;
            site.nats = Some(SiteNats { hub, leaf });
        }
        if opts.with_controller {
            let bin = binary("substruct-controller")?;
            let log = site.dir.path().join("controller.log");
            let tls = api_tls(EDGE_IP)?;
            let mut cmd = site
                .ns
                .command(bin.to_str().unwrap_or("substruct-controller"));
            let hub = &site.nats.as_ref().context("a controller needs NATS")?.hub;
            let (user, password) = hub.controller_credentials();
            cmd.args([
                "--nats".to_string(),
                hub.url(),
                "--listen".into(),
                format!("{EDGE_IP}:{API_PORT}"),
            ])
            .args(api_tls_args(&tls)?)
            .env("SUBSTRUCT_TOKEN", API_TOKEN)
            .env("SUBSTRUCT_NATS_USER", user)
            .env("SUBSTRUCT_NATS_PASSWORD", password);
            let p = NsProcess::spawn_command("substruct-controller", cmd, log)?;
            site.controller = Some(p);
            site.api_tls = Some(tls);
            site.wait_tcp(EDGE_IP, API_PORT, Duration::from_secs(20))?;
        }
        if opts.with_controller {
            site.cli(&["sites", "add", &opts.site, "--key", &public_key])
                .context("registering the site's key")?;
        }
        let bin = binary("substruct-edge")?;
        let state = site.dir.path().join("edge-state");
        let mut args: Vec<String> = vec![
            "--site-key".into(),
            key_file.display().to_string(),
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
            args.extend([
                "--nats".into(),
                nats_url,
                "--js-domain".into(),
                substruct_testkit::nats_topology::HUB_JS_DOMAIN.into(),
            ]);
        }
        if opts.ipv6 {
            // nodad: the edge binds the address at once (a tentative one cannot be bound).
            run(site.ns.command("ip").args([
                "-6",
                "addr",
                "add",
                &format!("{EDGE_IP6}/64"),
                "dev",
                BRIDGE,
                "nodad",
            ]))
            .context("adding the edge's IPv6 address")?;
            args.extend([
                "--ipv6-address".into(),
                EDGE_IP6.into(),
                "--dhcp6-pool".into(),
                POOL6.into(),
            ]);
            if opts.ipv6_only {
                args.push("--ipv6-only".into());
            }
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
        let mut procs: Vec<&mut NsProcess> = [&mut self.controller, &mut self.edge]
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

    /// Runs the admin CLI inside the namespace against the controller (HTTPS, verified
    /// with the site's API CA).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let bin = binary("substruct")?;
        let tls = self
            .api_tls
            .as_ref()
            .context("this site runs no controller")?;
        let out = run(self
            .ns
            .command(bin.to_str().unwrap_or("substruct"))
            .args(cli_args(EDGE_IP, tls)?)
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

    /// The machine record with a NIC of `mac` (any spelling the report used), if any.
    pub fn machine_by_mac(&self, mac: &str) -> Result<Option<serde_json::Value>> {
        Ok(self.machines()?.into_iter().find(|m| {
            m.pointer("/facts/nics")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|nics| nics.iter().any(|n| n["mac"] == mac))
        }))
    }

    /// Polls until the machine with `mac` is in `state`; its record then. The error
    /// names the last record seen.
    pub fn wait_state(
        &self,
        mac: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let mut last = None;
        substruct_testkit::try_poll_blocking(
            &format!("machine {mac} to be {state}"),
            timeout,
            Duration::from_millis(500),
            || {
                last = self.machine_by_mac(mac)?;
                Ok(last.clone().filter(|m| m["state"] == state))
            },
        )
        .with_context(|| format!("last seen: {last:?}"))
    }

    /// Prints every server log (call on failure).
    pub fn dump_logs(&self) {
        if let Some(n) = &self.nats {
            for (name, p) in [
                ("hub", n.hub.nodes().first().map(|n| &n.process)),
                ("leaf", Some(n.leaf.process())),
            ] {
                if let Some(p) = p {
                    eprintln!(
                        "----- nats {name} -----\n{}",
                        substruct_testkit::qemu::tail(&p.log_text(), 60)
                    );
                }
            }
        }
        for p in [&self.controller, &self.edge].into_iter().flatten() {
            eprintln!(
                "----- {} ({}) -----\n{}",
                p.name,
                p.log.display(),
                substruct_testkit::qemu::tail(&p.log_text(), 60)
            );
        }
    }
}
