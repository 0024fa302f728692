//! Discovery storm: N simulated prospectors across S sites report to one controller
//! at once, with bounded concurrency, in two scenarios run one after the other:
//!
//! 1. **single**: one `nats-server` (the testkit's plain server); the controller and
//!    every prospector connect to it. Also measures the raw JetStream KV put rate on
//!    that server, as the ceiling.
//! 2. **leaf**: the shipped topology (`deploy/nats/`, via the testkit's
//!    `nats_topology`): a hub with JetStream and one leaf node per site, on loopback.
//!    The controller connects to the hub with the controller's credentials; each
//!    site's prospectors connect to their site's leaf node without credentials and
//!    with the site's inbox prefix (`_INBOX_{site}`), as the real prospector does.
//!
//! Both send the same reports (same seed), as many, with as many in flight. Prints,
//! per scenario, reports/s, p50/p99 latency, the controller's peak RSS and CPU, every
//! failed request grouped by cause (a reply that is not a `DiscoverReply` is a
//! failure), then a side-by-side table with the leaf/single ratio. Asserts nothing.
//!
//! The controller runs as a child process (the `substruct-controller` binary cargo
//! built for this bench), a fresh one per scenario, so its peak RSS is its own
//! `VmHWM` from `/proc`.
//!
//! Environment: `STORM_REPORTS` (10000), `STORM_SITES` (20, single scenario),
//! `STORM_LEAF_SITES` (4: leaf nodes, hence sites, of the leaf scenario),
//! `STORM_IN_FLIGHT` (256), `STORM_CONNECTIONS` (4 prospector connections in the
//! single scenario; in the leaf scenario that many spread over the leaf nodes, at
//! least one per leaf), `STORM_KV_PUTS` (20000), `STORM_SCENARIOS` (`single,leaf`).
//! Needs `nats-server` on PATH (or `NATS_SERVER_BIN`); skips politely without it.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};
use support::{
    cpu_seconds, env_usize, kv_put_rate, mb, ms, percentile, proc_status_kb, random_report,
    Controller,
};

use anyhow::{bail, Context, Result};
use async_nats::Client;
use futures::StreamExt;
use rand::SeedableRng;
use substruct_testkit::nats_topology::{Hub, HubOptions, Leaf, LeafOptions};
use substruct_testkit::{nats_server_bin, NatsServer};
use substruct_wire::messages::{DiscoverReply, DiscoverRequest, ErrorReply};
use substruct_wire::report::HardwareReport;
use substruct_wire::{subjects, SiteId};

/// How long the leaf nodes may take to link to the hub.
const LINK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a site's first request may take to find the controller (interest
/// propagation over the leaf link).
const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Distinct failure causes printed per scenario.
const MAX_CAUSES: usize = 10;

/// The knobs, from the environment.
#[derive(Debug)]
struct Knobs {
    reports: usize,
    sites: usize,
    leaf_sites: usize,
    in_flight: usize,
    connections: usize,
    kv_puts: usize,
    single: bool,
    leaf: bool,
}

impl Knobs {
    fn from_env() -> Self {
        let scenarios = std::env::var("STORM_SCENARIOS").unwrap_or_else(|_| "single,leaf".into());
        let has = |name: &str| scenarios.split(',').any(|s| s.trim() == name);
        Self {
            reports: env_usize("STORM_REPORTS", 10_000),
            sites: env_usize("STORM_SITES", 20),
            leaf_sites: env_usize("STORM_LEAF_SITES", 4),
            in_flight: env_usize("STORM_IN_FLIGHT", 256),
            connections: env_usize("STORM_CONNECTIONS", 4),
            kv_puts: env_usize("STORM_KV_PUTS", 20_000),
            single: has("single"),
            leaf: has("leaf"),
        }
    }
}

/// One request to send: the connection it goes on, its subject and payload.
struct Request {
    client: Client,
    subject: String,
    payload: Vec<u8>,
}

/// What one scenario measured.
#[derive(Debug)]
struct Outcome {
    name: &'static str,
    sent: usize,
    ok: usize,
    elapsed: Duration,
    /// Sorted, of every request (failed ones too).
    latencies: Vec<Duration>,
    /// Failure cause → count.
    failures: BTreeMap<String, usize>,
    rss_idle_kb: u64,
    rss_peak_kb: u64,
    /// CPU seconds during the storm: controller, nats-server(s), this process.
    cpu: (f64, f64, f64),
    /// Controller log lines during the storm: "slow discover request", WARN/ERROR.
    slow: usize,
    problems: usize,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn p(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// Encodes the reports as discover requests, report `i` from `sites[i % sites.len()]`.
fn encode_requests(
    reports: &[HardwareReport],
    sites: &[SiteId],
) -> Result<Vec<(SiteId, String, Vec<u8>)>> {
    reports
        .iter()
        .enumerate()
        .map(|(i, report)| {
            let site = &sites[i % sites.len()];
            let msg = DiscoverRequest {
                site: site.clone(),
                boot_token: None,
                report: report.clone(),
            };
            Ok((
                site.clone(),
                subjects::discover(site),
                substruct_wire::encode(&msg)?,
            ))
        })
        .collect()
}

/// Why a reply is not a `DiscoverReply`, or `None` if it is one.
fn reply_failure(payload: &[u8]) -> Option<String> {
    let err = substruct_wire::decode::<DiscoverReply>(payload).err()?;
    Some(match substruct_wire::decode::<ErrorReply>(payload) {
        Ok(reply) => {
            let mut message = reply.message;
            message.truncate(160);
            format!("ErrorReply {:?}: {message}", reply.code)
        }
        Err(_) => format!("reply is not a DiscoverReply: {err}"),
    })
}

/// Sends a malformed request to each site's discover subject on each connection until
/// one comes back (any reply): the controller's subscription is then reachable from
/// there. A malformed body, so that no machine is created; the controller's warning
/// about it is logged before the storm's log mark.
async fn wait_routed(clients: &[(SiteId, Client)]) -> Result<()> {
    for (site, client) in clients {
        let subject = subjects::discover(site);
        let deadline = Instant::now() + ROUTE_TIMEOUT;
        loop {
            let r = tokio::time::timeout(
                Duration::from_secs(1),
                client.request(subject.clone(), "storm warm-up".into()),
            )
            .await;
            match r {
                Ok(Ok(_)) => break,
                Ok(Err(e)) if Instant::now() > deadline => {
                    bail!("no reply on {subject} after {ROUTE_TIMEOUT:?}: {e}")
                }
                Err(_) if Instant::now() > deadline => {
                    bail!("no reply on {subject} after {ROUTE_TIMEOUT:?}: timed out")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    Ok(())
}

/// Runs the storm against a started controller and measures it.
async fn measure(
    name: &'static str,
    controller: &Controller,
    nats_pids: &[u32],
    requests: Vec<Request>,
    in_flight: usize,
) -> Outcome {
    let pid = controller.pid();
    let rss_idle_kb = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let log_mark = controller.log_len();
    let nats_cpu = || nats_pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let cpu_before = (
        cpu_seconds(pid),
        nats_cpu(),
        cpu_seconds(std::process::id()),
    );
    let sent = requests.len();
    let started = Instant::now();
    let results: Vec<(Option<String>, Duration)> = futures::stream::iter(requests)
        .map(|r| async move {
            let t0 = Instant::now();
            let failure = match r.client.request(r.subject, r.payload.into()).await {
                Ok(msg) => reply_failure(&msg.payload),
                Err(e) => Some(format!("request failed: {e}")),
            };
            (failure, t0.elapsed())
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let rss_peak_kb = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    let cpu = (
        cpu_seconds(pid) - cpu_before.0,
        nats_cpu() - cpu_before.1,
        cpu_seconds(std::process::id()) - cpu_before.2,
    );
    let mut failures = BTreeMap::new();
    let mut latencies = Vec::with_capacity(results.len());
    for (failure, latency) in results {
        if let Some(cause) = failure {
            *failures.entry(cause).or_insert(0) += 1;
        }
        latencies.push(latency);
    }
    latencies.sort();
    let log = controller.log_since(log_mark);
    Outcome {
        name,
        sent,
        ok: sent - failures.values().sum::<usize>(),
        elapsed,
        latencies,
        failures,
        rss_idle_kb,
        rss_peak_kb,
        cpu,
        slow: log.matches("slow discover request").count(),
        problems: log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count(),
    }
}

/// Prints one scenario's details; keeps the controller log when something failed.
fn print_outcome(o: &Outcome, setup: &str, controller: &mut Option<Controller>) {
    println!("[{}] {setup}", o.name);
    println!(
        "  reports/s        {:.0}   ({} accepted, {} failed, {:.2} s)",
        o.rate(),
        o.ok,
        o.sent - o.ok,
        o.elapsed.as_secs_f64()
    );
    println!(
        "  latency          p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        ms(o.p(0.50)),
        ms(o.p(0.99)),
        ms(o.latencies.last().copied().unwrap_or_default())
    );
    println!(
        "  controller RSS   idle {:.1} MB   peak (VmHWM of the child process) {:.1} MB",
        mb(o.rss_idle_kb),
        mb(o.rss_peak_kb)
    );
    println!(
        "  CPU during storm controller {:.2} s   nats-server(s) {:.2} s   prospectors (this process) {:.2} s",
        o.cpu.0, o.cpu.1, o.cpu.2
    );
    println!(
        "  controller log   {} requests slower than 1 s, {} warnings/errors during the storm",
        o.slow, o.problems
    );
    for (cause, n) in o.failures.iter().take(MAX_CAUSES) {
        println!("  FAILED x{n}: {cause}");
    }
    if o.failures.len() > MAX_CAUSES {
        println!(
            "  ... and {} more distinct causes",
            o.failures.len() - MAX_CAUSES
        );
    }
    if o.ok < o.sent || o.problems > 0 {
        if let Some(controller) = controller.take() {
            println!("  controller log: {}", controller.log_path.display());
            let _ = controller.log_dir.keep();
        }
    }
}

/// Scenario 1: one plain nats-server for everything.
/// Scenario 1: one plain nats-server for everything; then every report again (each
/// machine's second report, the "repeat" row). Returns both and the KV put ceiling.
async fn single_server(
    knobs: &Knobs,
    reports: &[HardwareReport],
) -> Result<(Outcome, Outcome, f64)> {
    let nats = NatsServer::start()?;
    let kv_rate = kv_put_rate(&nats.url(), knobs.kv_puts).await?;
    let controller = Controller::spawn(&nats.url(), None).await?;

    let sites: Vec<SiteId> = (0..knobs.sites)
        .map(|i| SiteId::new(format!("site-{i}")))
        .collect::<Result<_, _>>()?;
    // These prospectors carry no boot credential: their sites accept that for known
    // machines, so second reports are updates (the credential check costs are in the
    // leaf scenario).
    let http = reqwest::Client::new();
    for site in &sites {
        let status = http
            .put(format!(
                "http://127.0.0.1:{}/api/v1/sites/{site}",
                controller.port
            ))
            .bearer_auth("bench-token-not-secret")
            .json(&serde_json::json!({ "allow_unauthenticated": true }))
            .send()
            .await?
            .status();
        if !status.is_success() {
            bail!("registering site {site}: {status}");
        }
    }
    let mut clients = Vec::new();
    for _ in 0..knobs.connections {
        clients.push(async_nats::connect(nats.url()).await?);
    }
    let warm: Vec<(SiteId, Client)> = clients
        .iter()
        .map(|c| (sites[0].clone(), c.clone()))
        .collect();
    wait_routed(&warm).await?;
    let requests = || -> Result<Vec<Request>> {
        Ok(encode_requests(reports, &sites)?
            .into_iter()
            .enumerate()
            .map(|(i, (_, subject, payload))| Request {
                client: clients[i % clients.len()].clone(),
                subject,
                payload,
            })
            .collect())
    };
    let nats_pids: Vec<u32> = nats.pid().into_iter().collect();
    let first = measure(
        "single",
        &controller,
        &nats_pids,
        requests()?,
        knobs.in_flight,
    )
    .await;
    let repeat = measure(
        "repeat",
        &controller,
        &nats_pids,
        requests()?,
        knobs.in_flight,
    )
    .await;
    let setup = format!(
        "one nats-server; controller and {} prospector connections on it; {} sites",
        clients.len(),
        knobs.sites
    );
    let mut controller = Some(controller);
    print_outcome(&first, &setup, &mut controller);
    print_outcome(
        &repeat,
        &format!("{setup}; every machine's second report"),
        &mut controller,
    );
    println!("  ceiling: raw JetStream KV put rate (2 KB values, 64 in flight, {} puts): {kv_rate:.0} puts/s", knobs.kv_puts);
    Ok((first, repeat, kv_rate))
}

/// Scenario 2: hub + one leaf node per site (the shipped configs), on loopback.
async fn leaf_nodes(knobs: &Knobs, reports: &[HardwareReport]) -> Result<Outcome> {
    let sites: Vec<SiteId> = (0..knobs.leaf_sites)
        .map(|i| SiteId::new(format!("site-{i}")))
        .collect::<Result<_, _>>()?;
    let hub = Hub::start(HubOptions::default().sites(sites.iter().map(|s| s.as_str())))
        .context("starting the hub")?;
    let mut leaves = Vec::new();
    for site in &sites {
        let leaf = Leaf::start(&hub, site.as_str(), LeafOptions::default())
            .with_context(|| format!("starting the leaf node of {site}"))?;
        leaves.push(leaf);
    }
    for leaf in &leaves {
        leaf.wait_linked(LINK_TIMEOUT)?;
    }
    let controller = Controller::spawn(&hub.url(), Some(hub.controller_credentials())).await?;

    // At least one connection per leaf node; STORM_CONNECTIONS in all when it is more.
    let per_leaf = knobs.connections.div_ceil(sites.len()).max(1);
    let mut clients: Vec<Vec<Client>> = Vec::new();
    let mut warm = Vec::new();
    for (site, leaf) in sites.iter().zip(&leaves) {
        let mut site_clients = Vec::new();
        for n in 0..per_leaf {
            // Each connection logs in as a booting prospector does: a boot credential the
            // site key signed (publish discover/callback/event, read its own inbox).
            let mac = substruct_wire::Mac([0x02, 0x5b, 0, 0, (n >> 8) as u8, n as u8]);
            let (_, login) = leaf
                .boot_login(mac, substruct_testkit::nats_topology::unix_now(), 3600)
                .with_context(|| format!("a boot login for {site}"))?;
            let prefix = subjects::boot_inbox_prefix(site, &login.user_key);
            let client = login
                .options()?
                .custom_inbox_prefix(prefix)
                .connect(leaf.url())
                .await
                .with_context(|| format!("connecting to the leaf node of {site}"))?;
            warm.push((site.clone(), client.clone()));
            site_clients.push(client);
        }
        clients.push(site_clients);
    }
    wait_routed(&warm).await?;
    let requests = encode_requests(reports, &sites)?
        .into_iter()
        .enumerate()
        .map(|(i, (_, subject, payload))| {
            let site_clients = &clients[i % sites.len()];
            Request {
                client: site_clients[(i / sites.len()) % site_clients.len()].clone(),
                subject,
                payload,
            }
        })
        .collect();
    let nats_pids: Vec<u32> = hub
        .nodes()
        .iter()
        .filter_map(|n| n.process.pid())
        .chain(leaves.iter().filter_map(|l| l.process().pid()))
        .collect();
    let outcome = measure("leaf", &controller, &nats_pids, requests, knobs.in_flight).await;
    let setup = format!(
        "hub + {} leaf nodes (deploy/nats); controller on the hub with its credentials; \
         {} prospector connections per leaf, each with a boot login (inbox \
         _INBOX_{{site}}.{{boot key}}); {} sites",
        leaves.len(),
        per_leaf,
        sites.len()
    );
    print_outcome(&outcome, &setup, &mut Some(controller));
    Ok(outcome)
}

fn print_table(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>14} {:>8}",
        "scenario", "reports/s", "p50 ms", "p99 ms", "ctl peak RSS", "failed"
    );
    for o in outcomes {
        println!(
            "{:<10} {:>10.0} {:>10.1} {:>10.1} {:>11.1} MB {:>8}",
            o.name,
            o.rate(),
            ms(o.p(0.50)),
            ms(o.p(0.99)),
            mb(o.rss_peak_kb),
            o.sent - o.ok
        );
    }
    let single = outcomes.iter().find(|o| o.name == "single");
    let leaf = outcomes.iter().find(|o| o.name == "leaf");
    if let (Some(s), Some(l)) = (single, leaf) {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        println!(
            "{:<10} {:>10.2} {:>10.2} {:>10.2} {:>14.2}",
            "leaf/single",
            ratio(l.rate(), s.rate()),
            ratio(ms(l.p(0.50)), ms(s.p(0.50))),
            ratio(ms(l.p(0.99)), ms(s.p(0.99))),
            ratio(l.rss_peak_kb as f64, s.rss_peak_kb as f64),
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    if Command::new(nats_server_bin())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        println!(
            "discovery_storm: skipped, nats-server not found (install Debian package nats-server)"
        );
        return Ok(());
    }
    let knobs = Knobs::from_env();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let reports: Vec<HardwareReport> = (0..knobs.reports)
        .map(|_| random_report(&mut rng))
        .collect();
    let avg_len = encode_requests(&reports, &[SiteId::new("site-0")?])?
        .iter()
        .map(|(_, _, b)| b.len())
        .sum::<usize>()
        / knobs.reports.max(1);
    println!(
        "discovery_storm: {} prospectors, {} in flight, reports ~{avg_len} bytes, machine has {} cores",
        knobs.reports,
        knobs.in_flight,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut outcomes = Vec::new();
    let mut ceiling = None;
    if knobs.single {
        let (first, repeat, kv_rate) = single_server(&knobs, &reports).await?;
        outcomes.push(first);
        outcomes.push(repeat);
        ceiling = Some(kv_rate);
    }
    if knobs.leaf {
        outcomes.push(leaf_nodes(&knobs, &reports).await?);
    }
    print_table(&outcomes);
    if let Some(kv_rate) = ceiling {
        for o in outcomes.iter().filter(|o| o.name != "leaf") {
            println!(
                "{:<10} {:>10.2}   of the raw KV put ceiling {kv_rate:.0} puts/s (goal >= 0.30, p99 < 100 ms)",
                format!("{}/KV", o.name),
                o.rate() / kv_rate
            );
        }
    }
    Ok(())
}
