//! Controller failover: two `substruct-controller` processes share discover requests
//! through the queue group; one is SIGKILLed in the middle of a 1,000-prospector storm
//! (or, in the second test, the hub's nats-server is SIGKILLed and restarted in the
//! middle of a 500-prospector storm, and everyone reconnects).
//! The simulated prospectors retry like the real one (per-attempt timeout, capped
//! jittered backoff) until they get a reply, so requests lost with the dead controller
//! land on the survivor. Afterwards the inventory must hold each machine exactly once,
//! with exactly one `discovered` event each.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, decode_reply, random_report};
use futures::StreamExt;
use rand::SeedableRng;
use substruct_controller::store::Store;
use substruct_testkit::{poll, wait_for, NatsServer};
use substruct_wire::messages::{DiscoverReply, DiscoverRequest, ErrorReply};
use substruct_wire::{subjects, MachineId, SiteId};

/// Prospectors in the storm (the hub restart takes half as many: its reconnects are
/// what is tested, and the suite runs both storms at once).
const PROSPECTORS: usize = 1000;
const IN_FLIGHT: usize = 200;
/// The disruption comes once this share of the prospectors have their reply.
const DISRUPT_AT: f64 = 0.3;
/// Per-attempt request timeout, as the real prospector's `request_timeout`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A hang guard only: the storm normally takes seconds.
const STORM_LIMIT: Duration = Duration::from_secs(300);
/// The controller's log line for a created machine record.
const DISCOVERED_LINE: &str = "machine discovered";

/// A controller child process writing its log to `log`.
struct Controller {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Controller {
    fn spawn(name: &'static str, nats_url: &str, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_substruct-controller"))
            .args(["--nats", nats_url, "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn,substruct_controller=info")
            .env("NO_COLOR", "1")
            .env("SUBSTRUCT_TOKEN", common::TOKEN)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning substruct-controller {name}: {e}"));
        Self { name, child, log }
    }

    /// The API base URL the controller bound (port 0: the kernel's choice, so no
    /// free-port race), from its "controller ready" log line (`api=http://ADDR`).
    async fn api_url(&self) -> String {
        poll(
            &format!("controller {} ready line", self.name),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                log.lines()
                    .find(|l| l.contains("controller ready"))
                    .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("api=")))
                    .map(str::to_owned)
            },
        )
        .await
        .unwrap()
    }

    async fn wait_healthy(&self) {
        let http = reqwest::Client::new();
        let url = format!("{}/healthz", self.api_url().await);
        wait_for(
            &format!("controller {} /healthz", self.name),
            Duration::from_secs(30),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    http.get(&url)
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false)
                }
            },
        )
        .await
        .unwrap();
    }

    /// Machine records this controller created, per its log.
    fn discovered_in_log(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(DISCOVERED_LINE)
            .count()
    }
}

/// Kills every controller on drop (also on panic); keeps the logs when panicking.
struct Controllers {
    list: Vec<Controller>,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Controllers {
    fn drop(&mut self) {
        for c in &mut self.list {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("controller logs kept at {}", dir.keep().display());
            }
        }
    }
}

/// Capped exponential backoff with equal jitter, as the real prospector's.
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let ceiling = BACKOFF_BASE
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_CAP);
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(0.5 + 0.5 * rand::random::<f64>())
    }
}

/// What the prospectors saw, shared between them and the killer.
#[derive(Default)]
struct Stats {
    replies: AtomicUsize,
    killed: AtomicBool,
    replies_after_kill: AtomicUsize,
    timeouts: AtomicUsize,
    no_responders: AtomicUsize,
    other_failures: AtomicUsize,
    errors: Mutex<Vec<(usize, ErrorReply)>>,
}

/// One simulated prospector: sends its discover request until it gets a
/// `DiscoverReply`. Returns the reply and the number of attempts.
async fn prospector(
    i: usize,
    client: async_nats::Client,
    site: SiteId,
    payload: bytes::Bytes,
    stats: Arc<Stats>,
) -> (usize, DiscoverReply, u32) {
    let subject = subjects::discover(&site);
    let mut backoff = Backoff { failures: 0 };
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let request = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(ATTEMPT_TIMEOUT));
        match client.send_request(subject.clone(), request).await {
            Ok(msg) => match decode_reply(&msg.payload) {
                Ok(reply) => {
                    stats.replies.fetch_add(1, Ordering::SeqCst);
                    if stats.killed.load(Ordering::SeqCst) {
                        stats.replies_after_kill.fetch_add(1, Ordering::SeqCst);
                    }
                    return (i, reply, attempts);
                }
                // Recorded (the test fails on any), then retried like the real prospector.
                Err(e) => stats.errors.lock().unwrap().push((i, e)),
            },
            Err(e) => match e.kind() {
                async_nats::RequestErrorKind::TimedOut => {
                    stats.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                async_nats::RequestErrorKind::NoResponders => {
                    stats.no_responders.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    stats.other_failures.fetch_add(1, Ordering::Relaxed);
                }
            },
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Every message in the `EVENTS` stream, as JSON.
async fn all_events(client: &async_nats::Client) -> Vec<serde_json::Value> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(subjects::STREAM_EVENTS).await.unwrap();
    let total = usize::try_from(stream.info().await.unwrap().state.messages).unwrap();
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut events = Vec::with_capacity(total);
    while events.len() < total {
        let msg = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("reading EVENTS timed out")
            .expect("EVENTS consumer ended")
            .unwrap();
        events.push(serde_json::from_slice(&msg.payload).unwrap());
    }
    events
}

/// What happens to the system once 30% of the prospectors have their reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    /// One of the two controllers is SIGKILLed.
    KillController,
    /// The hub's nats-server is SIGKILLed and started again on its port and store:
    /// every client (controllers, prospectors) reconnects with its backoff.
    RestartHub,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_of_two_controllers_mid_storm_loses_and_duplicates_nothing() {
    Box::pin(flow(Disruption::KillController)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_the_hub_mid_storm_loses_and_duplicates_nothing() {
    Box::pin(flow(Disruption::RestartHub)).await;
}

async fn flow(disruption: Disruption) {
    let mut nats = NatsServer::start().unwrap();
    let url = nats.url();
    let prospectors = match disruption {
        Disruption::KillController => PROSPECTORS,
        Disruption::RestartHub => PROSPECTORS / 2,
    };
    let dir = tempfile::Builder::new()
        .prefix("substruct-failover-")
        .tempdir()
        .unwrap();
    let mut controllers = Controllers {
        list: vec![
            Controller::spawn("victim", &url, dir.path()),
            Controller::spawn("survivor", &url, dir.path()),
        ],
        dir: Some(dir),
    };
    for c in &controllers.list {
        c.wait_healthy().await;
    }

    // Every site's key registered, every report carrying its boot credential: a retry
    // that lands on another controller as an update must prove it is the machine.
    let registrar = connect(&url).await;
    for i in 0..7 {
        common::register_site_key(&registrar, &format!("site{i}")).await;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xfa11_0fe5);
    let requests: Vec<(SiteId, bytes::Bytes)> = (0..prospectors)
        .map(|i| {
            let site = SiteId::new(format!("site{}", i % 7)).unwrap();
            let report = random_report(&mut rng);
            let request = DiscoverRequest {
                site: site.clone(),
                boot_token: report
                    .macs()
                    .first()
                    .map(|m| common::credential(site.as_str(), *m)),
                report,
            };
            (site, substruct_wire::encode(&request).unwrap().into())
        })
        .collect();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&url).await);
    }
    let stats = Arc::new(Stats::default());

    let started = Instant::now();
    let storm = futures::stream::iter(requests.into_iter().enumerate())
        .map(|(i, (site, payload))| {
            prospector(
                i,
                clients[i % clients.len()].clone(),
                site,
                payload,
                stats.clone(),
            )
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>();
    let killer = async {
        wait_for("30% of the replies", STORM_LIMIT, || {
            let n = stats.replies.load(Ordering::SeqCst);
            async move { n as f64 >= DISRUPT_AT * prospectors as f64 }
        })
        .await
        .unwrap();
        match disruption {
            Disruption::KillController => {
                let victim = &mut controllers.list[0];
                victim.child.kill().unwrap();
                stats.killed.store(true, Ordering::SeqCst);
                let replies_before = stats.replies.load(Ordering::SeqCst);
                victim.child.wait().unwrap();
                (
                    replies_before,
                    victim.discovered_in_log(),
                    started.elapsed(),
                )
            }
            Disruption::RestartHub => {
                let replies_before = stats.replies.load(Ordering::SeqCst);
                let at = started.elapsed();
                nats.restart().unwrap();
                stats.killed.store(true, Ordering::SeqCst);
                (replies_before, controllers.list[0].discovered_in_log(), at)
            }
        }
    };
    let (results, (replies_before_kill, victim_discovered, killed_at)) =
        tokio::time::timeout(STORM_LIMIT, async { tokio::join!(storm, killer) })
            .await
            .expect("the storm did not finish: some prospector never got a reply");
    let elapsed = started.elapsed();
    let survivor = &mut controllers.list[1];
    assert!(
        survivor.child.try_wait().unwrap().is_none(),
        "the surviving controller exited"
    );
    if disruption == Disruption::RestartHub {
        assert!(
            controllers.list[0].child.try_wait().unwrap().is_none(),
            "a controller exited when the hub restarted"
        );
    }
    let survivor = &mut controllers.list[1];
    let survivor_discovered = survivor.discovered_in_log();

    let attempts: u32 = results.iter().map(|(_, _, a)| a).sum();
    let retried = results.iter().filter(|(_, _, a)| *a > 1).count();
    let errors = stats.errors.lock().unwrap().clone();
    eprintln!(
        "failover ({disruption:?}): {prospectors} prospectors, {IN_FLIGHT} in flight; disrupted after {:.2} s \
         with {replies_before_kill} replies in; {} replies after the kill; {} retries \
         ({retried} prospectors retried: {} timeouts, {} no responders, {} other failures, \
         {} error replies); machines created per log: victim {victim_discovered}, \
         survivor {survivor_discovered}; elapsed {:.2} s",
        killed_at.as_secs_f64(),
        stats.replies_after_kill.load(Ordering::SeqCst),
        attempts as usize - results.len(),
        stats.timeouts.load(Ordering::Relaxed),
        stats.no_responders.load(Ordering::Relaxed),
        stats.other_failures.load(Ordering::Relaxed),
        errors.len(),
        elapsed.as_secs_f64()
    );

    // Failover, not a single controller: both served before the kill.
    assert!(
        victim_discovered > 0,
        "the first controller created no machine before the disruption: nothing failed over"
    );
    assert!(replies_before_kill > 0 && replies_before_kill < prospectors);
    // While the hub restarts, a controller may answer "unavailable" (the prospector
    // retries it); nothing else.
    let allowed = |e: &ErrorReply| {
        disruption == Disruption::RestartHub
            && e.code == substruct_wire::messages::ErrorCode::Unavailable
    };
    let refused: Vec<_> = errors.iter().filter(|(_, e)| !allowed(e)).collect();
    assert!(
        refused.is_empty(),
        "{} error replies, first: {:?}",
        refused.len(),
        refused.first()
    );
    assert_eq!(results.len(), prospectors);
    let ids: BTreeSet<MachineId> = results
        .iter()
        .map(|(_, r, _)| r.machine_id.clone())
        .collect();
    assert_eq!(
        ids.len(),
        prospectors,
        "two prospectors got the same machine id"
    );

    let client = connect(&nats.url()).await;
    let store = Store::open(client.clone()).await.unwrap();
    let (machines, index) = store.key_counts().await.unwrap();
    assert_eq!(machines, prospectors, "machine records");
    // uuid + serial + 2 MACs + 1 disk serial per machine.
    assert_eq!(index, 5 * prospectors, "index entries");

    let events = all_events(&client).await;
    let discovered: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"]["type"] == "discovered")
        .map(|e| e["machine_id"].as_str().unwrap())
        .collect();
    let discovered_ids: BTreeSet<&str> = discovered.iter().copied().collect();
    let missing: Vec<&MachineId> = ids
        .iter()
        .filter(|id| !discovered_ids.contains(id.as_str()))
        .collect();
    eprintln!(
        "failover: {} events in EVENTS, {} discovered ({} machines without one)",
        events.len(),
        discovered.len(),
        missing.len()
    );
    assert_eq!(
        discovered_ids.len(),
        discovered.len(),
        "a machine was discovered twice"
    );
    if let Some(first) = missing.first() {
        let theirs: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["machine_id"] == first.as_str())
            .collect();
        let (record, _) = store.machine(first).await.unwrap().unwrap();
        panic!(
            "{} machines have no discovered event (a record written, its event lost?), \
             e.g. {first} with report_count {} and events {theirs:?}",
            missing.len(),
            record.report_count
        );
    }
    assert_eq!(discovered.len(), prospectors, "discovered events");
}
