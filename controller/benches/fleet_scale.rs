//! Fleet scale: one nats-server filled with machine records across 100 sites, then, at
//! each fleet size (10,000 and 100,000 by default), a fresh controller process:
//!
//! * start-to-ready: from spawning the controller to its first answered page (the
//!   machine list loaded from the bucket), and when its start-up sweep of boot intents
//!   ended, with how many machines it had to sync;
//! * page latency, p50/p99 over 1,000 requests each: the first page (100 machines),
//!   a page filtered by site and state, a search by serial (which scans every row);
//! * a full export: `GET /api/v1/machines` (every record, streamed) and
//!   `substruct machines list --json` (the CLI parses and prints it);
//! * the controller's RSS after all that, and its peak;
//! * an edge's start with 5,000 machines at its site: the edge's own boot-intent
//!   mirror (`substruct_edge::intents::watch`, in this process) from nothing to every
//!   intent of its site, while the bucket holds every site's.
//!
//! The records are **written as the controller writes them** (the same JSON under the
//! same key in KV `machines`, the id the controller would derive, the boot intents
//! its sync would write), not sent through the discover path: 100,000 discover
//! requests would take minutes here and are what the discovery storm bench measures.
//! 5,000 machines are at `site-000`, the rest spread over 99 other sites; 75% are
//! deployed, 20% discovered, 3% failed, 2% retired.
//!
//! Environment: `FLEET_STEPS` (`10000,100000`), `FLEET_REQUESTS` (1000),
//! `FLEET_EDGE_MACHINES` (5000). Needs `nats-server` on PATH (or `NATS_SERVER_BIN`);
//! skips politely without it. Asserts nothing.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rand::SeedableRng;
use substruct_controller::lifecycle::State;
use substruct_controller::matching::{resolve, Action};
use substruct_controller::record::MachineRecord;
use substruct_controller::Store;
use substruct_edge::intents::{self, IntentCache, IntentTable, WatchSettings};
use substruct_testkit::{nats_server_bin, wait_for, NatsServer};
use substruct_wire::intent::{BootIntent, BootIntentRecord, LocalBootWay};
use substruct_wire::{subjects, SiteId};
use support::{env_usize, mb, ms, percentile, proc_status_kb, random_report, Controller};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token-not-secret";
/// Sites other than the edge's.
const OTHER_SITES: usize = 99;
/// Writes in flight while filling.
const FILL_IN_FLIGHT: usize = 256;

/// What one fleet size measured.
struct Step {
    machines: usize,
    fill: Duration,
    ready: Duration,
    sweep: Option<(Duration, String)>,
    first_page: (Duration, Duration),
    filtered_page: (Duration, Duration),
    search: (Duration, Duration),
    export: (Duration, u64),
    cli_export: Duration,
    ready_rss_kb: u64,
    pages_rss_kb: u64,
    rss_kb: u64,
    peak_kb: u64,
    edge: (Duration, usize),
}

fn site_of(i: usize, edge_machines: usize) -> SiteId {
    let name = if i < edge_machines {
        "site-000".to_owned()
    } else {
        format!("site-{:03}", 1 + i % OTHER_SITES)
    };
    SiteId::new(name).unwrap_or_else(|_| unreachable!("valid site name"))
}

/// The `i`th machine's state, and the boot intent its sync writes.
fn state_of(i: usize) -> (State, Option<BootIntent>) {
    match i % 100 {
        0..=74 => (
            State::Deployed {
                profile: "debian12".into(),
            },
            Some(BootIntent::Local {
                way: LocalBootWay::IpxeExit,
            }),
        ),
        75..=94 => (State::Discovered, None),
        95..=97 => (
            State::Failed {
                reason: "disk not found".into(),
                profile: Some("debian12".into()),
            },
            None,
        ),
        _ => (
            State::Retired,
            Some(BootIntent::Local {
                way: LocalBootWay::NoBootFile,
            }),
        ),
    }
}

/// Writes machines `from..to` (records and boot intents) as the controller would.
async fn fill(
    js: &async_nats::jetstream::Context,
    rng: &mut rand::rngs::StdRng,
    from: usize,
    to: usize,
    edge_machines: usize,
) -> Result<()> {
    let machines = js.get_key_value(subjects::KV_MACHINES).await?;
    let boot = js.get_key_value(subjects::KV_BOOT).await?;
    let mut writes: Vec<(bool, String, bytes::Bytes)> = Vec::new();
    let now = 1_790_000_000_000;
    for i in from..to {
        let report = random_report(rng);
        let Action::Create(id) = resolve(&report, &[]).action else {
            bail!("report {i} has no identity");
        };
        let site = site_of(i, edge_machines);
        let (state, intent) = state_of(i);
        let mut record = MachineRecord::new(id.clone(), site.clone(), report, vec![], now);
        record.state = state;
        if let Some(intent) = intent {
            let value = substruct_wire::encode(&BootIntentRecord {
                machine_id: Some(id.clone()),
                intent,
            })?;
            for mac in record.facts.macs() {
                writes.push((false, subjects::boot_key(&site, &mac), value.clone().into()));
            }
        }
        writes.push((
            true,
            subjects::machine_key(&id),
            serde_json::to_vec(&record)?.into(),
        ));
    }
    let results: Vec<Result<u64>> = futures::stream::iter(writes)
        .map(|(is_record, key, value)| {
            let kv = if is_record {
                machines.clone()
            } else {
                boot.clone()
            };
            async move { kv.put(key, value).await.context("KV put") }
        })
        .buffer_unordered(FILL_IN_FLIGHT)
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(e);
    }
    Ok(())
}

/// p50 and p99 of `n` sequential GETs of `path`.
async fn latency(
    http: &reqwest::Client,
    port: u16,
    path: &str,
    n: usize,
) -> Result<(Duration, Duration)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let resp = http.get(&url).bearer_auth(TOKEN).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        took.push(started.elapsed());
    }
    took.sort();
    Ok((percentile(&took, 0.5), percentile(&took, 0.99)))
}

/// The edge's boot-intent mirror for `site-000`, from nothing to `want` intents.
async fn edge_start(nats_url: &str, want: usize) -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let site = SiteId::new("site-000")?;
    let client = async_nats::connect(nats_url).await?;
    let table = IntentTable::new();
    let settings = WatchSettings::new(
        site.clone(),
        IntentCache::new(dir.path().join("intents.json"), site),
    );
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(intents::watch(
        client,
        settings,
        table.clone(),
        cancel.clone(),
    ));
    let loaded = wait_for("the edge's intents", Duration::from_secs(300), || {
        let n = table.len();
        async move { n >= want }
    })
    .await;
    let took = started.elapsed();
    cancel.cancel();
    let _ = task.await;
    loaded?;
    Ok(took)
}

async fn measure(
    nats_url: &str,
    machines: usize,
    fill_took: Duration,
    requests: usize,
    edge_macs: usize,
) -> Result<Step> {
    let started = Instant::now();
    let controller = Controller::spawn_logging(nats_url, None, "info").await?;
    let port = controller.port;
    let http = reqwest::Client::new();
    let first = format!("http://127.0.0.1:{port}/api/v1/machines?limit=1");
    wait_for("the first page", Duration::from_secs(600), || {
        let (http, first) = (http.clone(), first.clone());
        async move {
            http.get(&first)
                .bearer_auth(TOKEN)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await?;
    let ready = started.elapsed();
    let ready_rss_kb = proc_status_kb(controller.pid(), "VmRSS:").unwrap_or(0);
    let swept = wait_for("the start-up sweep", Duration::from_secs(600), || {
        let done = controller.log_since(0).contains("boot intents checked");
        async move { done }
    })
    .await;
    let sweep = swept.ok().map(|()| {
        let log = controller.log_since(0);
        let line = log
            .lines()
            .find(|l| l.contains("boot intents checked"))
            .unwrap_or_default();
        let line = strip_ansi(line);
        let fields = line
            .split_whitespace()
            .filter(|w| w.starts_with("machines=") || w.starts_with("synced="))
            .collect::<Vec<_>>()
            .join(" ");
        (started.elapsed(), fields)
    });
    let first_page = latency(&http, port, "/api/v1/machines?limit=100", requests).await?;
    let filtered_page = latency(
        &http,
        port,
        "/api/v1/machines?site=site-042&state=deployed&limit=100",
        requests,
    )
    .await?;
    let search = latency(
        &http,
        port,
        "/api/v1/machines?q=zz-no-such-serial",
        requests,
    )
    .await?;
    let pages_rss_kb = proc_status_kb(controller.pid(), "VmRSS:").unwrap_or(0);
    let export_started = Instant::now();
    let body = http
        .get(format!("http://127.0.0.1:{port}/api/v1/machines"))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .bytes()
        .await?;
    let export = (export_started.elapsed(), body.len() as u64);
    drop(body);
    let cli_started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_substruct"))
        .args(["machines", "list", "--json"])
        .env("SUBSTRUCT_CONTROLLER", format!("http://127.0.0.1:{port}"))
        .env("SUBSTRUCT_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()?;
    let cli_export = cli_started.elapsed();
    if !out.status.success() {
        bail!(
            "substruct machines list --json: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pid = controller.pid();
    let rss_kb = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let peak_kb = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    drop(controller);
    let edge = edge_start(nats_url, edge_macs).await?;
    Ok(Step {
        machines,
        fill: fill_took,
        ready,
        sweep,
        first_page,
        filtered_page,
        search,
        export,
        cli_export,
        ready_rss_kb,
        pages_rss_kb,
        rss_kb,
        peak_kb,
        edge: (edge, edge_macs),
    })
}

/// `text` without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn p(pair: (Duration, Duration)) -> String {
    format!("{:.1} / {:.1}", ms(pair.0), ms(pair.1))
}

fn print(steps: &[Step]) {
    println!();
    println!("fleet scale (records written as the controller writes them; 100 sites)");
    let col = |f: &dyn Fn(&Step) -> String| -> String {
        steps
            .iter()
            .map(|s| format!(" {:>25}", f(s)))
            .collect::<String>()
    };
    println!("  {:<44}{}", "machines", col(&|s| s.machines.to_string()));
    println!(
        "  {:<44}{}",
        "fill (records + intents written), s",
        col(&|s| format!("{:.1}", s.fill.as_secs_f64()))
    );
    println!(
        "  {:<44}{}",
        "controller start to first page, s",
        col(&|s| format!("{:.2}", s.ready.as_secs_f64()))
    );
    println!(
        "  {:<44}{}",
        "start-up sweep done, s",
        col(&|s| s
            .sweep
            .as_ref()
            .map_or("-".into(), |(t, _)| format!("{:.2}", t.as_secs_f64())))
    );
    println!(
        "  {:<44}{}",
        "  sweep",
        col(&|s| s.sweep.as_ref().map_or("-".into(), |(_, f)| f.clone()))
    );
    println!(
        "  {:<44}{}",
        "first page (100) p50 / p99, ms",
        col(&|s| p(s.first_page))
    );
    println!(
        "  {:<44}{}",
        "site+state page (100) p50 / p99, ms",
        col(&|s| p(s.filtered_page))
    );
    println!(
        "  {:<44}{}",
        "search q= (scans every row) p50 / p99, ms",
        col(&|s| p(s.search))
    );
    println!(
        "  {:<44}{}",
        "export GET /machines, s (MB)",
        col(&|s| format!(
            "{:.2} ({:.0})",
            s.export.0.as_secs_f64(),
            s.export.1 as f64 / 1e6
        ))
    );
    println!(
        "  {:<44}{}",
        "substruct machines list --json, s",
        col(&|s| format!("{:.2}", s.cli_export.as_secs_f64()))
    );
    println!(
        "  {:<44}{}",
        "controller RSS at ready, MB",
        col(&|s| format!("{:.1}", mb(s.ready_rss_kb)))
    );
    println!(
        "  {:<44}{}",
        "controller RSS after 3,000 pages, MB",
        col(&|s| format!("{:.1}", mb(s.pages_rss_kb)))
    );
    println!(
        "  {:<44}{}",
        "controller RSS after the exports, MB",
        col(&|s| format!("{:.1}", mb(s.rss_kb)))
    );
    println!(
        "  {:<44}{}",
        "controller peak RSS, MB",
        col(&|s| format!("{:.1}", mb(s.peak_kb)))
    );
    println!(
        "  {:<44}{}",
        "edge intents loaded (site-000), s (intents)",
        col(&|s| format!("{:.2} ({})", s.edge.0.as_secs_f64(), s.edge.1))
    );
    println!();
    println!("  goals at 100,000: page p99 <= 200 ms, RSS <= 128 MB, paged queries flat from 10k to 100k");
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::process::Command::new(nats_server_bin())
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_err()
    {
        println!("fleet_scale: nats-server not found; skipped");
        return Ok(());
    }
    let steps: Vec<usize> = std::env::var("FLEET_STEPS")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let requests = env_usize("FLEET_REQUESTS", 1000);
    let edge_machines = env_usize("FLEET_EDGE_MACHINES", 5000);
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    // The buckets as the controller makes them.
    Store::open(client.clone()).await?;
    let js = async_nats::jetstream::new(client);
    let mut rng = rand::rngs::StdRng::seed_from_u64(100_000);
    let mut filled = 0;
    let mut out = Vec::new();
    for step in steps {
        let started = Instant::now();
        fill(&js, &mut rng, filled, step, edge_machines).await?;
        let fill_took = started.elapsed();
        filled = filled.max(step);
        // Intents at the edge's site: deployed and retired machines, two MACs each.
        let edge_macs = (0..edge_machines.min(filled))
            .filter(|&i| state_of(i).1.is_some())
            .count()
            * 2;
        println!(
            "{step} machines written in {:.1} s; measuring",
            fill_took.as_secs_f64()
        );
        out.push(measure(&nats.url(), step, fill_took, requests, edge_macs).await?);
    }
    print(&out);
    Ok(())
}
