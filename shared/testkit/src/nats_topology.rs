//! The shipped NATS topology, run for real: a hub (one server, or the 3-node cluster) and
//! one leaf node per site, each a `nats-server` process, on loopback or inside network
//! namespaces the test made.
//!
//! Client and leaf-node listeners start on port `-1` (the server picks a free one) and
//! the chosen ports are read back from the server's log; the settings files are then
//! rewritten with them, so a reload or restart keeps them. Only the cluster's route
//! ports must be known before the nodes start (each node lists the others): those are
//! picked free beforehand, and a start that loses one to another process is retried.
//!
//! The configs are the ones in `deploy/nats/`, not copies: the hub runs `hub.conf` (or
//! `cluster/nN.conf`) verbatim from a temp directory, next to settings files rendered
//! here (addresses, store directory, the leaf listener's TLS block), and users and leaf
//! configs are written by `deploy/nats/gen-site` itself. So the shipped files are the
//! tested ones.
//!
//! ```no_run
//! # use substruct_testkit::nats_topology::*;
//! let hub = Hub::start(HubOptions::default().sites(["a", "b"]))?;
//! let leaf_a = Leaf::start(&hub, "a", LeafOptions::default())?;
//! // hub.url() + hub.controller_credentials(): the controller; leaf_a.url(): site a's
//! // edge and prospectors, each with a user JWT the site key signed
//! // (leaf_a.edge_login()?.options(), leaf_a.boot_login(mac, lifetime)?),
//! // with ConnectOptions::custom_inbox_prefix(hub.site("a").unwrap().inbox_prefix())
//! // and jetstream::with_domain(client, HUB_JS_DOMAIN).
//! # anyhow::Ok(())
//! ```

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use substruct_wire::credential::{sign_user_jwt, user_key_pair, UserJwt, UserPermissions};
use substruct_wire::{BootCredential, LeafTrust, Mac, SiteId, SiteKey};

use crate::netns::Netns;
use crate::{free_port, nats_server_bin, wait_for_blocking};

/// How often a cluster start is tried when a route port was taken meanwhile.
const CLUSTER_START_ATTEMPTS: usize = 3;

/// The hub's JetStream domain (`deploy/nats/hub-settings.conf`). Clients behind a leaf
/// node reach the hub's buckets with `async_nats::jetstream::with_domain(c, HUB_JS_DOMAIN)`.
pub const HUB_JS_DOMAIN: &str = "hub";

/// How long a server may take to log "Server is ready".
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// `deploy/nats/` of this checkout.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats")
}

/// 24 random bytes as hex: passwords for test users.
fn random_password() -> Result<String> {
    let buf: [u8; 24] = random_bytes()?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// `N` bytes from /dev/urandom.
fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A NATS user login to a site's leaf node: a user JWT the site key signed and the user
/// key's seed.
#[derive(Debug, Clone)]
pub struct UserLogin {
    /// The user JWT.
    pub jwt: String,
    /// The user key's seed (`SU…`).
    pub seed: String,
    /// The user's public key (`U…`).
    pub user_key: String,
}

impl UserLogin {
    /// async-nats connect options logging in as this user (JWT + nonce signed with the
    /// seed).
    pub fn options(&self) -> Result<async_nats::ConnectOptions> {
        let key =
            std::sync::Arc::new(nkeys::KeyPair::from_seed(&self.seed).context("the login's seed")?);
        Ok(async_nats::ConnectOptions::with_jwt(
            self.jwt.clone(),
            move |nonce| {
                let key = key.clone();
                async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
            },
        ))
    }
}

/// A site's signing key as the harness uses it: read from a seed file, or made here.
fn load_or_make_site_key(path: Option<&Path>) -> Result<SiteKey> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the site key {}", p.display()))?;
            SiteKey::from_seed(&text).with_context(|| format!("site key {}", p.display()))
        }
        None => SiteKey::from_raw(random_bytes()?).context("making a site key"),
    }
}

/// A `nats-server` process with its log, killable and restartable on the same config.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    config: PathBuf,
    netns: Option<String>,
    log: PathBuf,
    /// Length of the log when the current process started.
    log_mark: u64,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `nats-server -c config` (inside `netns` when given), logging to `log`
    /// (appended), and waits until it logs "Server is ready".
    pub fn start(name: &str, config: &Path, netns: Option<&Netns>, log: &Path) -> Result<Self> {
        let mut p = Self {
            name: name.to_owned(),
            config: config.to_owned(),
            netns: netns.map(|n| n.name().to_owned()),
            log: log.to_owned(),
            log_mark: 0,
            child: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        self.log_mark = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the program: the child's pid is the server's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(nats_server_bin());
                c
            }
            None => Command::new(nats_server_bin()),
        };
        let child = cmd
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| {
                format!("spawning nats-server for {} (is it installed?)", self.name)
            })?;
        self.child = Some(child);
        let mut exited = None;
        let ready = wait_for_blocking(&format!("{} to be ready", self.name), READY_TIMEOUT, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                exited = Some(status);
                return true;
            }
            self.log_text().contains("Server is ready")
        });
        if let Some(status) = exited {
            self.child = None;
            bail!(
                "{} exited at start ({status}); log:\n{}",
                self.name,
                self.log_text()
            );
        }
        ready.with_context(|| format!("log of {}:\n{}", self.name, self.log_text()))
    }

    /// The log written since the current process started (lossy UTF-8).
    pub fn log_text(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let from = usize::try_from(self.log_mark)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    /// The port the running server listens on for `kind` connections (`client`,
    /// `leafnode`, `route`), from its log.
    pub fn listening_port(&self, kind: &str) -> Option<u16> {
        let needle = format!("Listening for {kind} connections on ");
        self.log_text().lines().rev().find_map(|line| {
            let (_, addr) = line.split_once(&needle)?;
            addr.trim().rsplit_once(':')?.1.parse().ok()
        })
    }

    /// Like [`ServerProcess::listening_port`], failing with the log.
    fn require_port(&self, kind: &str) -> Result<u16> {
        self.listening_port(kind).with_context(|| {
            format!(
                "{} logged no {kind} listener; log:\n{}",
                self.name,
                self.log_text()
            )
        })
    }

    /// The whole log file, every start included.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the server at once (SIGKILL), as a crash or power loss would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server cleanly (SIGTERM), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let stopped = wait_for_blocking("nats-server to stop", Duration::from_secs(5), || {
            matches!(c.try_wait(), Ok(Some(_)))
        });
        if stopped.is_err() {
            let _ = c.kill();
        }
        let _ = c.wait();
    }

    /// Starts the server again with the same config (kills it first if it runs).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Makes the server re-read its config (SIGHUP), e.g. after a user was added.
    pub fn reload(&self) -> Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        crate::netns::run(Command::new("kill").args(["-HUP", &pid.to_string()]))?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A site's user on the hub, as `gen-site` made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteCredentials {
    /// The site id (as in `SiteId`), e.g. `a`.
    pub site: String,
    /// `site-{site}`.
    pub user: String,
    /// Random, set by the harness.
    pub password: String,
}

impl SiteCredentials {
    /// `_INBOX_{site}`: the only inbox prefix the site may subscribe to; set it with
    /// `async_nats::ConnectOptions::custom_inbox_prefix`.
    pub fn inbox_prefix(&self) -> String {
        format!("_INBOX_{}", self.site)
    }
}

/// The CA, and a server certificate signed by it, for the hub's leaf-node listener.
#[derive(Debug)]
pub struct TlsFiles {
    /// The CA certificate (PEM): what a leaf node verifies the hub with.
    pub ca: PathBuf,
    /// The hub's certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The hub's private key (PEM).
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsFiles {
    /// A fresh CA and a server certificate for `ips` (subjectAltName), made by `openssl`
    /// (P-256 keys).
    pub fn generate(ips: &[IpAddr]) -> Result<Self> {
        Self::generate_with(ips, false)
    }

    /// As [`generate`](Self::generate) with RSA-2048 keys: what UEFI firmware's TLS
    /// (no elliptic curves) can verify and agree DHE with.
    pub fn generate_rsa(ips: &[IpAddr]) -> Result<Self> {
        Self::generate_with(ips, true)
    }

    fn generate_with(ips: &[IpAddr], rsa: bool) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("substruct-tls-")
            .tempdir()
            .context("temp dir for TLS files")?;
        let d = dir.path();
        let openssl = |args: &[&str]| -> Result<()> {
            crate::netns::run(Command::new("openssl").args(args).current_dir(d))
                .context("running openssl (apt-get install openssl)")?;
            Ok(())
        };
        let ec: &[&str] = if rsa {
            &["-newkey", "rsa:2048", "-nodes"]
        } else {
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ]
        };
        let mut args = vec!["req", "-x509"];
        args.extend(ec.iter().copied());
        args.extend([
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=substruct test CA",
        ]);
        openssl(&args)?;
        let mut args = vec!["req"];
        args.extend(ec.iter().copied());
        args.extend([
            "-keyout",
            "hub-key.pem",
            "-out",
            "hub.csr",
            "-subj",
            "/CN=substruct-hub",
        ]);
        openssl(&args)?;
        let san: Vec<String> = ips
            .iter()
            .map(|ip| format!("IP:{ip}"))
            .chain(["DNS:localhost".to_owned()])
            .collect();
        std::fs::write(
            d.join("ext.cnf"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                san.join(",")
            ),
        )
        .context("writing ext.cnf")?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "hub.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            "hub-cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ])?;
        Ok(Self {
            ca: d.join("ca.pem"),
            cert: d.join("hub-cert.pem"),
            key: d.join("hub-key.pem"),
            _dir: dir,
        })
    }
}

/// How to start a [`Hub`].
#[derive(Debug, Default)]
pub struct HubOptions<'a> {
    /// Run inside this namespace (default: the test's own, on loopback).
    pub netns: Option<&'a Netns>,
    /// Address every listener binds to and clients and leaf nodes connect to
    /// (default 127.0.0.1). Inside a namespace, an address of that namespace.
    pub ip: Option<IpAddr>,
    /// TLS on the leaf-node listener.
    pub tls: Option<&'a TlsFiles>,
    /// Sites whose users exist from the start (more with [`Hub::add_site`]).
    pub sites: Vec<String>,
    /// The 3-node cluster (`deploy/nats/cluster/`) instead of the single hub.
    pub cluster: bool,
}

impl<'a> HubOptions<'a> {
    /// Sites whose users exist from the start.
    pub fn sites<I, S>(mut self, sites: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.sites = sites.into_iter().map(Into::into).collect();
        self
    }

    /// TLS on the leaf-node listener.
    pub fn tls(mut self, tls: &'a TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Run inside `ns`, listening on `ip` (an address of that namespace).
    pub fn in_netns(mut self, ns: &'a Netns, ip: IpAddr) -> Self {
        self.netns = Some(ns);
        self.ip = Some(ip);
        self
    }

    /// The 3-node cluster instead of the single hub.
    pub fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }
}

/// One hub server (of one, or of three in the cluster variant).
#[derive(Debug)]
pub struct HubNode {
    /// The server process (kill, restart, log).
    pub process: ServerProcess,
    /// Port of its client listener.
    pub client_port: u16,
    /// Port of its leaf-node listener.
    pub leaf_port: u16,
}

/// The NATS hub: `deploy/nats/hub.conf` (or the cluster) with JetStream, a leaf-node
/// listener and the users `gen-site` wrote. Killed on drop; its directory (configs,
/// logs, JetStream store) is kept when the test panics.
#[derive(Debug)]
pub struct Hub {
    nodes: Vec<HubNode>,
    ip: IpAddr,
    controller_password: String,
    sites: BTreeMap<String, SiteCredentials>,
    tls: bool,
    dir: Option<tempfile::TempDir>,
}

impl Hub {
    /// Renders the configs into a temp directory and starts the server(s).
    pub fn start(opts: HubOptions<'_>) -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(&opts) {
                // Only the cluster's route ports are picked before the start: another
                // process may have taken one meanwhile. Try again with new ones.
                Err(e)
                    if opts.cluster
                        && attempt < CLUSTER_START_ATTEMPTS
                        && format!("{e:#}").contains("address already in use") =>
                {
                    eprintln!("hub cluster start lost a port (attempt {attempt}), retrying: {e:#}");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(opts: &HubOptions<'_>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("substruct-hub-")
            .tempdir()
            .context("temp dir for the hub")?;
        let d = dir.path().to_owned();
        let src = deploy_dir();
        let ip = opts.ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let ipq = quote_host(ip);

        std::fs::copy(src.join("hub.conf"), d.join("hub.conf"))
            .with_context(|| format!("copying {}", src.join("hub.conf").display()))?;
        let tls_text = match opts.tls {
            Some(t) => format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
                t.cert.display(),
                t.key.display()
            ),
            None => "# plain TCP (nats_topology test hub)\n".to_owned(),
        };
        std::fs::write(d.join("hub-leaf-tls.conf"), tls_text).context("hub-leaf-tls.conf")?;

        let controller_password = random_password()?;
        gen_site(&[
            "--controller",
            "--password",
            &controller_password,
            "--out",
            path_str(&d)?,
        ])?;

        let mut hub = Self {
            nodes: Vec::new(),
            ip,
            controller_password,
            sites: BTreeMap::new(),
            tls: opts.tls.is_some(),
            dir: Some(dir),
        };
        for site in &opts.sites {
            hub.write_site(site)?;
        }

        if !opts.cluster {
            let settings = |client: &str, leaf: &str| {
                std::fs::write(
                    d.join("hub-settings.conf"),
                    format!(
                        "HUB_NAME: \"substruct-hub\"\nHUB_LISTEN: \"{ipq}:{client}\"\n\
                         HUB_LEAF_LISTEN: \"{ipq}:{leaf}\"\nHUB_JS_DOMAIN: \"{HUB_JS_DOMAIN}\"\n\
                         HUB_STORE_DIR: \"{}\"\nHUB_MAX_FILE_STORE: 8G\n",
                        d.join("js").display()
                    ),
                )
                .context("hub-settings.conf")
            };
            settings("-1", "-1")?;
            let process =
                ServerProcess::start("hub", &d.join("hub.conf"), opts.netns, &d.join("hub.log"))?;
            let client_port = process.require_port("client")?;
            let leaf_port = process.require_port("leafnode")?;
            // The chosen ports from now on: a reload or restart keeps them.
            settings(&client_port.to_string(), &leaf_port.to_string())?;
            hub.nodes.push(HubNode {
                process,
                client_port,
                leaf_port,
            });
            return Ok(hub);
        }

        let c = d.join("cluster");
        std::fs::create_dir_all(&c).context("cluster dir")?;
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_urls: Vec<String> = routes
            .iter()
            .map(|route| format!("  \"nats-route://{ipq}:{route}\""))
            .collect();
        std::fs::write(
            c.join("cluster-settings.conf"),
            format!(
                "CLUSTER_NAME: \"substruct-hub\"\nJS_DOMAIN: \"{HUB_JS_DOMAIN}\"\n\
                 CLUSTER_ROUTES: [\n{}\n]\n",
                route_urls.join("\n")
            ),
        )
        .context("cluster-settings.conf")?;
        let node_settings = |n: usize, client: &str, route: u16, leaf: &str| {
            std::fs::write(
                c.join(format!("n{n}-settings.conf")),
                format!(
                    "NODE_NAME: \"n{n}\"\nNODE_LISTEN: \"{ipq}:{client}\"\n\
                     NODE_CLUSTER_LISTEN: \"{ipq}:{route}\"\nNODE_LEAF_LISTEN: \"{ipq}:{leaf}\"\n\
                     NODE_STORE_DIR: \"{}\"\n",
                    d.join(format!("js-n{n}")).display()
                ),
            )
            .with_context(|| format!("n{n}-settings.conf"))
        };
        for (i, route) in routes.iter().enumerate() {
            let n = i + 1;
            let conf = format!("n{n}.conf");
            std::fs::copy(src.join("cluster").join(&conf), c.join(&conf))
                .with_context(|| format!("copying cluster/{conf}"))?;
            node_settings(n, "-1", *route, "-1")?;
        }
        // All three first: the JetStream meta group needs a quorum before any is "ready"
        // to serve JetStream (the server logs "Server is ready" before that).
        for (i, route) in routes.iter().enumerate() {
            let n = i + 1;
            let process = ServerProcess::start(
                &format!("hub-n{n}"),
                &c.join(format!("n{n}.conf")),
                opts.netns,
                &d.join(format!("hub-n{n}.log")),
            )?;
            let client_port = process.require_port("client")?;
            let leaf_port = process.require_port("leafnode")?;
            node_settings(n, &client_port.to_string(), *route, &leaf_port.to_string())?;
            hub.nodes.push(HubNode {
                process,
                client_port,
                leaf_port,
            });
        }
        Ok(hub)
    }

    fn conf_dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// Runs gen-site for `site` into the hub's directory (no reload).
    fn write_site(&mut self, site: &str) -> Result<SiteCredentials> {
        let password = random_password()?;
        let out = self.conf_dir().to_owned();
        gen_site(&[site, "--password", &password, "--out", path_str(&out)?])?;
        let creds = SiteCredentials {
            site: site.to_owned(),
            user: format!("site-{site}"),
            password,
        };
        self.sites.insert(site.to_owned(), creds.clone());
        Ok(creds)
    }

    /// Adds (or renews) a site's user with `gen-site` and reloads every hub server.
    pub fn add_site(&mut self, site: &str) -> Result<SiteCredentials> {
        let creds = self.write_site(site)?;
        for n in &self.nodes {
            n.process.reload()?;
        }
        Ok(creds)
    }

    /// The credentials of a site added at start or with [`Hub::add_site`].
    pub fn site(&self, site: &str) -> Option<&SiteCredentials> {
        self.sites.get(site)
    }

    /// `nats://IP:PORT` of the first server, without credentials.
    pub fn url(&self) -> String {
        self.node_url(0)
    }

    /// `nats://IP:PORT` of server `i` (0 for the single hub, 0..3 for the cluster).
    pub fn node_url(&self, i: usize) -> String {
        let port = self.nodes.get(i).map(|n| n.client_port).unwrap_or(0);
        format!("nats://{}:{port}", quote_host(self.ip))
    }

    /// Every server's client URL, comma separated (what a client may be given).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The controller's user and password (`async_nats::ConnectOptions::
    /// with_user_and_password`; async-nats ignores credentials in the URL).
    pub fn controller_credentials(&self) -> (&str, &str) {
        ("controller", &self.controller_password)
    }

    /// `nats-leaf://IP:PORT` of every server's leaf-node listener.
    pub fn leaf_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats-leaf://{}:{}", quote_host(self.ip), n.leaf_port))
            .collect()
    }

    /// Whether the leaf-node listener wants TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The hub's servers (kill, restart, logs).
    pub fn nodes_mut(&mut self) -> &mut [HubNode] {
        &mut self.nodes
    }

    /// The hub's servers.
    pub fn nodes(&self) -> &[HubNode] {
        &self.nodes
    }

    /// Kills every hub server (SIGKILL); the store is kept.
    pub fn kill(&mut self) {
        for n in &mut self.nodes {
            n.process.kill();
        }
    }

    /// Starts every hub server again on the same ports and store.
    pub fn restart(&mut self) -> Result<()> {
        for n in &mut self.nodes {
            n.process.kill();
        }
        for n in &mut self.nodes {
            n.process.restart()?;
        }
        Ok(())
    }

    /// The directory with the rendered configs, the logs and the JetStream store.
    pub fn dir(&self) -> &Path {
        self.conf_dir()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "hub configs, logs and store kept at {}",
                    dir.keep().display()
                );
            }
        }
    }
}

/// How to start a [`Leaf`].
#[derive(Debug, Default)]
pub struct LeafOptions<'a> {
    /// Run inside this namespace (default: the test's own, on loopback).
    pub netns: Option<&'a Netns>,
    /// Address the site's clients connect to (default 127.0.0.1).
    pub ip: Option<IpAddr>,
    /// The hub's leaf-node URLs as seen from the site (default [`Hub::leaf_urls`]).
    pub hub_urls: Option<Vec<String>>,
    /// Verify the hub with this CA (required when the hub has TLS, unless testing a
    /// refusal: then give another CA, or set `skip_tls`).
    pub tls_ca: Option<PathBuf>,
    /// Leave the TLS block out although the hub wants TLS (the leaf node then starts
    /// TLS anyway, verifies the hub with the system's CAs only, and fails).
    pub skip_tls: bool,
    /// The site key's seed file (`substruct-edge keygen`); default: a key made here
    /// ([`Leaf::site_key`]).
    pub site_key: Option<PathBuf>,
    /// The client port (default: one the server picks).
    pub port: Option<u16>,
    /// Listen for clients on this address instead of `ip` (e.g. `::`, every address of
    /// the namespace, so prospectors reach it over IPv6 too); clients still get `ip`.
    pub listen_ip: Option<IpAddr>,
}

impl<'a> LeafOptions<'a> {
    /// Run inside `ns`, listening on `ip`, reaching the hub at `hub_urls`.
    pub fn in_netns(mut self, ns: &'a Netns, ip: IpAddr, hub_urls: Vec<String>) -> Self {
        self.netns = Some(ns);
        self.ip = Some(ip);
        self.hub_urls = Some(hub_urls);
        self
    }

    /// Verify the hub's certificate with `ca`.
    pub fn tls_ca(mut self, ca: &Path) -> Self {
        self.tls_ca = Some(ca.to_owned());
        self
    }

    /// Trust users signed by the site key in `seed_file` (the edge's `--site-key`).
    pub fn site_key(mut self, seed_file: &Path) -> Self {
        self.site_key = Some(seed_file.to_owned());
        self
    }

    /// Listen for clients on `port`.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Listen for clients on `ip` (see [`LeafOptions::listen_ip`]).
    pub fn listen_on(mut self, ip: IpAddr) -> Self {
        self.listen_ip = Some(ip);
        self
    }
}

/// A site's leaf node: `deploy/nats/leaf.conf.tmpl` rendered by `gen-site` with the
/// site's credentials and its trust block (operator mode: users the site key signs, as
/// `substruct-edge leaf-auth` writes it). Killed on drop.
#[derive(Debug)]
pub struct Leaf {
    site: String,
    site_key: SiteKey,
    process: ServerProcess,
    ip: IpAddr,
    port: u16,
    dir: Option<tempfile::TempDir>,
}

impl Leaf {
    /// Starts site `site`'s leaf node, linked to `hub` with the site's credentials
    /// (the site must have been given to [`HubOptions::sites`] or [`Hub::add_site`]).
    /// Returns once the server runs; use [`Leaf::wait_linked`] for the hub link.
    pub fn start(hub: &Hub, site: &str, opts: LeafOptions<'_>) -> Result<Self> {
        let creds = hub
            .site(site)
            .with_context(|| format!("the hub has no user for site {site:?}: add_site first"))?;
        let hub_urls = opts.hub_urls.clone().unwrap_or_else(|| hub.leaf_urls());
        if hub.tls() && opts.tls_ca.is_none() && !opts.skip_tls {
            bail!("the hub wants TLS: give LeafOptions::tls_ca (or skip_tls to test a refusal)");
        }
        Self::start_with(creds, &hub_urls, opts)
    }

    /// Starts a leaf node for `creds.site` linked to a hub this process did not start
    /// (e.g. `deploy/lab/run`): `hub_urls` are its leaf-node URLs; `opts.hub_urls` is
    /// ignored.
    pub fn start_with(
        creds: &SiteCredentials,
        hub_urls: &[String],
        opts: LeafOptions<'_>,
    ) -> Result<Self> {
        let site = creds.site.as_str();
        let dir = tempfile::Builder::new()
            .prefix(&format!("substruct-leaf-{site}-"))
            .tempdir()
            .context("temp dir for a leaf node")?;
        let d = dir.path().to_owned();
        let ip = opts.ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let hubs = hub_urls.join(",");
        let ca = opts.tls_ca.as_ref().map(|p| path_str(p)).transpose()?;
        let site_key = load_or_make_site_key(opts.site_key.as_deref())?;
        let site_id = SiteId::new(site).with_context(|| format!("site id {site:?}"))?;
        let trust = LeafTrust::new(&site_key, &site_id, random_bytes()?, unix_now())
            .context("signing the leaf's trust")?;
        let auth_file = d.join("leaf-auth.conf");
        std::fs::write(&auth_file, trust.config()).context("writing leaf-auth.conf")?;
        let auth_arg = path_str(&auth_file)?.to_owned();
        let render = |port: &str| -> Result<()> {
            let listen = format!("{}:{port}", quote_host(opts.listen_ip.unwrap_or(ip)));
            let mut args = vec![
                site,
                "--password",
                &creds.password,
                "--hub",
                &hubs,
                "--listen",
                &listen,
                "--leaf-auth",
                &auth_arg,
                "--out",
                path_str(&d)?,
            ];
            if let (Some(ca), false) = (ca, opts.skip_tls) {
                args.extend(["--tls-ca", ca]);
            }
            gen_site(&args)?;
            Ok(())
        };
        let first_port = opts.port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        render(&first_port)?;
        let process = ServerProcess::start(
            &format!("leaf-{site}"),
            &d.join(format!("leaf-{site}.conf")),
            opts.netns,
            &d.join("leaf.log"),
        )?;
        let port = process.require_port("client")?;
        // The chosen port from now on: a restart keeps it.
        render(&port.to_string())?;
        Ok(Self {
            site: site.to_owned(),
            site_key,
            process,
            ip,
            port,
            dir: Some(dir),
        })
    }

    /// `nats://IP:PORT`: where the site's edge and prospectors connect (each with a
    /// user JWT the site key signed: [`Leaf::edge_login`], [`Leaf::boot_login`]).
    pub fn url(&self) -> String {
        format!("nats://{}:{}", quote_host(self.ip), self.port)
    }

    /// The site key this leaf node trusts.
    pub fn site_key(&self) -> &SiteKey {
        &self.site_key
    }

    /// A login signed by the site key: `permissions` (`None`: anything in the site's
    /// account, as the edge's own login), expiring `lifetime_secs` from now (`None`:
    /// never).
    pub fn login(
        &self,
        name: &str,
        permissions: Option<UserPermissions>,
        lifetime_secs: Option<u64>,
    ) -> Result<UserLogin> {
        let (seed, user_key) = user_key_pair(random_bytes()?).context("a user key")?;
        let now = unix_now();
        let jwt = sign_user_jwt(
            &self.site_key,
            &UserJwt {
                user_key: &user_key,
                name,
                audience: Some(&self.site),
                issued_unix: now,
                expires_unix: lifetime_secs.map(|l| now + l),
                permissions,
            },
        )
        .context("signing a user JWT")?;
        Ok(UserLogin {
            jwt,
            seed,
            user_key,
        })
    }

    /// A login like the edge's own (no expiry, anything in the site's account).
    pub fn edge_login(&self) -> Result<UserLogin> {
        self.login(&format!("edge {}", self.site), None, None)
    }

    /// A boot credential for `mac` as the edge issues it (issued `issued_unix`, valid
    /// `lifetime_secs`), and the login it makes with its seed.
    pub fn boot_login(
        &self,
        mac: Mac,
        issued_unix: u64,
        lifetime_secs: u64,
    ) -> Result<(BootCredential, UserLogin)> {
        let site = SiteId::new(self.site.as_str()).context("site id")?;
        let raw: [u8; 32] = random_bytes()?;
        let credential =
            BootCredential::issue(&self.site_key, &site, mac, issued_unix, lifetime_secs, raw)
                .context("issuing a boot credential")?;
        let (seed, user_key) = user_key_pair(raw).context("the boot key")?;
        Ok((
            credential.clone(),
            UserLogin {
                jwt: credential.as_str().to_owned(),
                seed,
                user_key,
            },
        ))
    }

    /// The site this leaf node serves.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// Whether the link to the hub is up now, by the leaf's log: the last "connection
    /// created" is later than the last "connection closed".
    pub fn is_linked(&self) -> bool {
        let log = self.process.log_text();
        let created = log.rfind("Leafnode connection created");
        let closed = log.rfind("Leafnode connection closed");
        match (created, closed) {
            (Some(c), Some(x)) => c > x,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// Waits until the link to the hub is up (see [`Leaf::is_linked`]).
    pub fn wait_linked(&self, timeout: Duration) -> Result<()> {
        wait_for_blocking(
            &format!("leaf node of site {} to link to the hub", self.site),
            timeout,
            || self.is_linked(),
        )
        .with_context(|| format!("leaf log:\n{}", self.process.log_text()))
    }

    /// The server process (kill, restart, log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// The server process (kill, restart, log).
    pub fn process_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }

    /// Kills the leaf node (SIGKILL).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the leaf node again with the same config and port.
    pub fn restart(&mut self) -> Result<()> {
        self.process.restart()
    }

    /// The directory with the rendered config and the log.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        self.process.kill();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "leaf {} config and log kept at {}",
                    self.site,
                    dir.keep().display()
                );
            }
        }
    }
}

/// Runs `deploy/nats/gen-site ARGS`, failing with its stderr.
pub fn gen_site(args: &[&str]) -> Result<String> {
    let script = deploy_dir().join("gen-site");
    let out = crate::netns::run(Command::new("sh").arg(&script).args(args))
        .with_context(|| format!("running {}", script.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

/// An address as the host part of a URL or `host:port` (IPv6 in brackets).
fn quote_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}
