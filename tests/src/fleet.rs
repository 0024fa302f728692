//! Multi-site system-test harness: the shipped NATS topology and the real binaries in
//! network namespaces, as DESIGN.md's "Test topology" describes.
//!
//! ```text
//!  core netns                                  site netns (one per site, N = 1, 2, …)
//!  ┌─────────────────────────────┐  veth "WAN" ┌──────────────────────────────────────┐
//!  │ lo 10.200.0.1               │ 10.201.N.1  │ wan 10.201.N.2                       │
//!  │ hub nats-server (hub.conf)  ├─────────────┤ leaf nats-server (gen-site) on       │
//!  │ controller (controller user)│ wanN    wan │   10.77.0.1:PORT                     │
//!  │ API https://10.200.0.1:8080 │             │ br0 10.77.0.1/24, edge agent, taps   │
//!  └─────────────────────────────┘             └──────────────────────────────────────┘
//! ```
//!
//! The hub binds every listener to 10.200.0.1 on the core's loopback; each site routes
//! 10.200.0.0/24 over its own WAN veth, so cutting one site's link (`ip link set wan
//! down` inside the site) leaves the others untouched. The site's edge and prospectors
//! talk to the leaf node only (no credentials, inbox prefix `_INBOX_{site}`, JetStream
//! through the hub's domain); the controller talks to the hub with the controller user.
//!
//! Everything is killed, and the namespaces deleted, when the [`Fleet`] is dropped.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use substruct_testkit::nats_topology::{Hub, HubOptions, Leaf, LeafOptions, HUB_JS_DOMAIN};
use substruct_testkit::netns::{run, Netns, NsProcess};

use substruct_testkit::nats_topology::TlsFiles;

pub use crate::API_PORT;
use crate::{
    api_tls, api_tls_args, binary, cli_args, path_str, prospector_image, API_TOKEN, BRIDGE,
    EDGE_CIDR, EDGE_IP, POOL,
};

/// The core's service address (on its loopback): the hub's listeners and the API.
pub const CORE_IP: &str = "10.200.0.1";
/// The prefix every site routes over its WAN link to reach [`CORE_IP`].
pub const CORE_NET: &str = "10.200.0.0/24";
/// Name of the WAN veth inside every site namespace.
pub const SITE_WAN_IF: &str = "wan";

/// One site of the fleet: its namespace, leaf node and edge agent.
#[derive(Debug)]
pub struct FleetSite {
    // Declared first so the edge stops before its leaf, and both before the namespace.
    /// The edge agent (`substruct-edge`), inside [`FleetSite::ns`].
    pub edge: Option<NsProcess>,
    /// The site's leaf node, linked to the hub over the WAN veth.
    pub leaf: Leaf,
    /// The site's namespace (bridge `br0` with 10.77.0.1/24, the WAN veth `wan`).
    pub ns: Netns,
    /// The site id (`a`, `b`, …).
    pub name: String,
    /// 1-based index: the WAN link is 10.201.N.0/30.
    pub index: usize,
    /// Directory served under the edge's /images/ (the prospector live image is in it).
    pub images: PathBuf,
    /// The edge's state directory (leases, intents, install files, image cache).
    pub state_dir: PathBuf,
    /// The WAN veth's name on the core side (`wanN`).
    pub core_wan_if: String,
    /// Where the site's clients reach NATS: the leaf node's client URL.
    pub nats_url: String,
    taps: usize,
}

impl FleetSite {
    /// The site-side address of the WAN link (10.201.N.2).
    pub fn wan_ip(&self) -> String {
        format!("10.201.{}.2", self.index)
    }
}

/// The provisioning network of every site of a [`Fleet`] (the default: [`EDGE_CIDR`],
/// [`POOL`]; the leaf and the edge's HTTP stay at [`EDGE_IP`], which must be in `edge_cidr`).
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The edge's address and prefix on the site bridge (`--address`).
    pub edge_cidr: String,
    /// The edge's DHCP pool (`--pool`).
    pub pool: String,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            edge_cidr: EDGE_CIDR.into(),
            pool: POOL.into(),
        }
    }
}

/// A hub site ("core") and any number of edge sites, each in its own namespace.
#[derive(Debug)]
pub struct Fleet {
    // Drop order: sites (edges, leaves, namespaces), the controller, the hub, the core.
    /// The sites, in the order given to [`Fleet::start`].
    pub sites: Vec<FleetSite>,
    /// The controller (`substruct-controller`), inside [`Fleet::core`].
    pub controller: Option<NsProcess>,
    /// The NATS hub (`deploy/nats/hub.conf`), inside [`Fleet::core`].
    pub hub: Hub,
    /// The core namespace.
    pub core: Netns,
    /// The API's CA and certificate (the controller serves HTTPS on [`CORE_IP`]).
    pub api_tls: TlsFiles,
    /// Logs, images and edge state of every site.
    pub dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts the core (hub + controller) and one site per name (leaf + edge), and
    /// waits until every leaf node has linked to the hub and every edge serves HTTP.
    /// Site names must be valid site ids (`gen-site`: lowercase letters, digits, `-`).
    pub fn start(tag: &str, sites: &[&str]) -> Result<Self> {
        Self::start_with(tag, sites, FleetOptions::default())
    }

    /// [`Fleet::start`] with another provisioning network (a bigger pool, say).
    pub fn start_with(tag: &str, sites: &[&str], opts: FleetOptions) -> Result<Self> {
        if sites.len() > 250 {
            bail!("at most 250 sites (one /30 per site under 10.201.0.0/16)");
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("substruct-fleet-{tag}-"))
            .tempdir()
            .context("temp dir for the fleet")?;
        let core = Netns::create(&format!("{tag}-core"))?;
        core.ip(&["addr", "add", &format!("{CORE_IP}/32"), "dev", "lo"])?;

        // Namespaces and WAN links first: the hub must be reachable when the leaves start.
        let mut nets = Vec::new();
        for (i, name) in sites.iter().enumerate() {
            let n = i + 1;
            let ns = Netns::create(&format!("{tag}-{name}"))?;
            let core_if = format!("wan{n}");
            core.veth_to(
                &ns,
                (&core_if, &format!("10.201.{n}.1/30")),
                (SITE_WAN_IF, &format!("10.201.{n}.2/30")),
            )
            .with_context(|| format!("WAN link of site {name}"))?;
            ns.ip(&[
                "route",
                "add",
                CORE_NET,
                "via",
                &format!("10.201.{n}.1"),
                "dev",
                SITE_WAN_IF,
            ])?;
            ns.add_bridge(BRIDGE, &opts.edge_cidr)?;
            nets.push((name.to_string(), n, ns, core_if));
        }

        let core_ip: IpAddr = CORE_IP.parse().context("CORE_IP")?;
        let hub = Hub::start(
            HubOptions::default()
                .sites(sites.iter().copied())
                .in_netns(&core, core_ip),
        )
        .context("starting the NATS hub in the core namespace")?;

        let tls = api_tls(CORE_IP)?;
        let controller = {
            let bin = binary("substruct-controller")?;
            let log = dir.path().join("controller.log");
            let (user, password) = hub.controller_credentials();
            let mut cmd = core.command(path_str(&bin)?);
            cmd.args([
                "--nats",
                &hub.url(),
                "--listen",
                &format!("{CORE_IP}:{API_PORT}"),
            ])
            .args(api_tls_args(&tls)?)
            .env("SUBSTRUCT_TOKEN", API_TOKEN)
            .env("SUBSTRUCT_NATS_USER", user)
            .env("SUBSTRUCT_NATS_PASSWORD", password);
            NsProcess::spawn_command("substruct-controller", cmd, log)
                .context("in the core namespace")?
        };

        let mut fleet = Self {
            sites: Vec::new(),
            controller: Some(controller),
            hub,
            core,
            api_tls: tls,
            dir,
        };
        let result = fleet.start_sites(nets, &opts);
        if result.is_err() {
            fleet.dump_logs();
        }
        result?;
        Ok(fleet)
    }

    fn start_sites(
        &mut self,
        nets: Vec<(String, usize, Netns, String)>,
        opts: &FleetOptions,
    ) -> Result<()> {
        {
            let mut procs: Vec<&mut NsProcess> = self.controller.iter_mut().collect();
            self.core
                .wait_listening(CORE_IP, API_PORT, Duration::from_secs(30), &mut procs)?;
        }
        let image = prospector_image()?;
        let leaf_ip: IpAddr = EDGE_IP.parse().context("EDGE_IP")?;
        for (name, index, ns, core_wan_if) in nets {
            let site_dir = self.dir.path().join(&name);
            let images = site_dir.join("images");
            std::fs::create_dir_all(images.join("prospector"))
                .with_context(|| format!("creating {}", images.display()))?;
            for f in ["vmlinuz", "initrd.img"] {
                std::fs::copy(image.join(f), images.join("prospector").join(f))
                    .with_context(|| format!("copying the live image's {f}"))?;
            }
            // The edge signs boot credentials and its own NATS login; the controller
            // knows the site's key; the leaf node admits only users the key signed.
            let (key_file, public_key) = crate::site_key(&site_dir)?;
            let leaf = Leaf::start(
                &self.hub,
                &name,
                LeafOptions::default()
                    .in_netns(&ns, leaf_ip, self.hub.leaf_urls())
                    .site_key(&key_file),
            )
            .with_context(|| format!("starting site {name}'s leaf node"))?;
            leaf.wait_linked(Duration::from_secs(30))?;
            let nats_url = leaf.url();
            let state_dir = site_dir.join("edge-state");
            self.cli(&["sites", "add", &name, "--key", &public_key])
                .with_context(|| format!("registering site {name}'s key"))?;
            let key_arg = key_file.display().to_string();
            let bin = binary("substruct-edge")?;
            let images_arg = images.display().to_string();
            let state_arg = state_dir.display().to_string();
            let args = [
                "--site-key",
                &key_arg,
                "--interface",
                BRIDGE,
                "--address",
                &opts.edge_cidr,
                "--pool",
                &opts.pool,
                "--images",
                &images_arg,
                "--site",
                &name,
                "--state-dir",
                &state_arg,
                "--nats",
                &nats_url,
                "--js-domain",
                HUB_JS_DOMAIN,
                // The leaf listens on a free port, not 4222: tell the prospectors.
                "--prospector-nats",
                &nats_url,
            ];
            let mut edge = NsProcess::spawn(
                &ns,
                &format!("substruct-edge ({name})"),
                path_str(&bin)?,
                &args,
                site_dir.join("edge.log"),
            )?;
            ns.wait_listening(EDGE_IP, 80, Duration::from_secs(30), &mut [&mut edge])?;
            self.sites.push(FleetSite {
                edge: Some(edge),
                leaf,
                ns,
                name,
                index,
                images,
                state_dir,
                core_wan_if,
                nats_url,
                taps: 0,
            });
        }
        Ok(())
    }

    /// The site named `name`.
    pub fn site(&self, name: &str) -> Result<&FleetSite> {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("the fleet has no site {name:?}"))
    }

    /// The site named `name`, to change (e.g. restart its leaf node).
    pub fn site_mut(&mut self, name: &str) -> Result<&mut FleetSite> {
        self.sites
            .iter_mut()
            .find(|s| s.name == name)
            .with_context(|| format!("the fleet has no site {name:?}"))
    }

    /// The namespace of site `name` (for [`substruct_testkit::qemu::Vm::start`]).
    pub fn site_ns(&self, name: &str) -> Result<&Netns> {
        Ok(&self.site(name)?.ns)
    }

    /// The hub's client URL (reachable from the core namespace only).
    pub fn hub_url(&self) -> String {
        self.hub.url()
    }

    /// The controller's NATS user and password on the hub.
    pub fn controller_credentials(&self) -> (String, String) {
        let (u, p) = self.hub.controller_credentials();
        (u.to_owned(), p.to_owned())
    }

    /// Runs the admin CLI (`substruct`) inside the core namespace against the controller
    /// (HTTPS, verified with the fleet's API CA).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let bin = binary("substruct")?;
        let out = run(self
            .core
            .command(path_str(&bin)?)
            .args(cli_args(CORE_IP, &self.api_tls)?)
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The machine records the controller holds (`substruct machines list --json`).
    pub fn machines(&self) -> Result<Vec<serde_json::Value>> {
        self.cli_json_array(&["machines", "list", "--json"])
    }

    /// The sites the controller knows and their edges' liveness (`substruct sites list
    /// --json`: name, registered, edge "online"/"offline", edge_version, …).
    pub fn sites(&self) -> Result<Vec<serde_json::Value>> {
        self.cli_json_array(&["sites", "list", "--json"])
    }

    /// `online` or `offline`: what `sites list` says of site `name`'s edge (an error
    /// when the controller does not list the site).
    pub fn edge_status(&self, name: &str) -> Result<String> {
        let sites = self.sites()?;
        sites
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["edge"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("`sites list` has no site {name:?}: {sites:?}"))
    }

    fn cli_json_array(&self, args: &[&str]) -> Result<Vec<serde_json::Value>> {
        let text = self.cli(args)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing `substruct {}`: {text}", args.join(" ")))?;
        match v {
            serde_json::Value::Array(a) => Ok(a),
            other => bail!(
                "`substruct {}`: expected a JSON array, got {other}",
                args.join(" ")
            ),
        }
    }

    /// Cuts site `name`'s WAN link: its veth goes down on the site side.
    pub fn cut_wan(&self, name: &str) -> Result<()> {
        self.site(name)?
            .ns
            .ip(&["link", "set", SITE_WAN_IF, "down"])?;
        Ok(())
    }

    /// Brings site `name`'s WAN link back (and its route to the core, which the kernel
    /// dropped with the link).
    pub fn heal_wan(&self, name: &str) -> Result<()> {
        let site = self.site(name)?;
        site.ns.ip(&["link", "set", SITE_WAN_IF, "up"])?;
        // `replace`: idempotent whether or not the kernel kept the route.
        site.ns.ip(&[
            "route",
            "replace",
            CORE_NET,
            "via",
            &format!("10.201.{}.1", site.index),
            "dev",
            SITE_WAN_IF,
        ])?;
        Ok(())
    }

    /// A new tap on site `name`'s bridge for a VM NIC.
    pub fn new_tap(&mut self, name: &str) -> Result<String> {
        let site = self.site_mut(name)?;
        let tap = format!("tap{}", site.taps);
        site.taps += 1;
        site.ns.add_tap(&tap, BRIDGE)?;
        Ok(tap)
    }

    /// Runs `f` on a thread inside the core namespace (its sockets live there), on a
    /// current-thread tokio runtime, and returns its result.
    pub fn in_core<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
    {
        run_in_netns(&self.core, f)
    }

    /// Runs `f` on a thread inside site `name`'s namespace (see [`Fleet::in_core`]).
    pub fn in_site<T, F, Fut>(&self, name: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
    {
        run_in_netns(&self.site(name)?.ns, f)
    }

    /// Fails when a server process of the fleet has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = &mut self.controller {
            c.check_alive()?;
        }
        for s in &mut self.sites {
            if let Some(e) = &mut s.edge {
                e.check_alive()?;
            }
            if !s.leaf.process_mut().is_running() {
                bail!(
                    "site {}'s leaf node exited; log:\n{}",
                    s.name,
                    substruct_testkit::qemu::tail(&s.leaf.process().log_text(), 20)
                );
            }
        }
        if !self
            .hub
            .nodes_mut()
            .iter_mut()
            .all(|n| n.process.is_running())
        {
            bail!("the NATS hub exited");
        }
        Ok(())
    }

    /// Prints the tail of every server log (call on failure).
    pub fn dump_logs(&self) {
        let print = |name: &str, path: &std::path::Path, text: &str| {
            eprintln!(
                "----- {name} ({}) -----\n{}",
                path.display(),
                substruct_testkit::qemu::tail(text, 60)
            );
        };
        for (i, n) in self.hub.nodes().iter().enumerate() {
            print(
                &format!("hub node {i}"),
                n.process.log_path(),
                &n.process.log_text(),
            );
        }
        if let Some(c) = &self.controller {
            print(&c.name, &c.log, &c.log_text());
        }
        for s in &self.sites {
            print(
                &format!("leaf ({})", s.name),
                s.leaf.process().log_path(),
                &s.leaf.process().log_text(),
            );
            if let Some(e) = &s.edge {
                print(&e.name, &e.log, &e.log_text());
            }
        }
    }
}

/// Runs `f` on a new thread that joined `ns`'s network namespace, on a current-thread
/// tokio runtime: every socket it opens lives in `ns`.
pub fn run_in_netns<T, F, Fut>(ns: &Netns, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    ns.spawn_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a tokio runtime")?;
        rt.block_on(f())
    })
    .join()
    .map_err(|_| anyhow!("the thread inside {} panicked", ns.name()))?
}
