//! The edge's power service against a real nats-server and OpenIPMI's real `ipmi_sim`:
//! a power request over NATS changes what the simulated chassis reports, a BMC that
//! does not answer is reported after bounded retries, hostile requests are refused, and
//! results go to the controller's result subject until acknowledged. Against
//! sushy-tools' Redfish emulator: the certificate is pinned on first use and another
//! one is refused.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use substruct_edge::kv_mirror;
use substruct_edge::power::{
    BmcConnector, BmcTable, Executor, ExecutorSettings, PowerService, ResultQueue,
};
use substruct_runtime::jetstream::{ensure_kv, BucketSpec};
use substruct_runtime::serve::Requests;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::ipmi_sim::{IpmiSim, IpmiSimOptions};
use substruct_testkit::sushy::{Sushy, PASSWORD as SUSHY_PASSWORD};
use substruct_testkit::{poll, NatsServer};
use substruct_wire::messages::{ErrorCode, ErrorReply};
use substruct_wire::power::{BmcDriverKind, BootDevice, PowerAction, PowerState};
use substruct_wire::power_msg::{BmcSettings, PowerAck, PowerOp, PowerRequest, PowerResult};
use substruct_wire::{subjects, MachineId, MessageKind, PowerRequestId, SiteId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const PASSWORD: &str = "bmc-secret";

struct Edge {
    _nats: NatsServer,
    client: async_nats::Client,
    site: SiteId,
    cancel: CancellationToken,
    /// Results the "controller" (this test) received on `…power.result`, acked.
    results: tokio::sync::mpsc::UnboundedReceiver<PowerResult>,
    /// The edge's mirror of KV `bmc`.
    table: BmcTable,
    _dir: tempfile::TempDir,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A site `s1` edge power service on a fresh nats-server: the `bmc` bucket mirrored,
/// the executor with the real drivers, results acknowledged by this test.
async fn edge(settings: ExecutorSettings, poll_every: Option<Duration>) -> Result<Edge> {
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    ensure_kv(&js, &BucketSpec::new(subjects::KV_BMC)).await?;
    let site = SiteId::new("s1")?;
    let dir = tempfile::tempdir()?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    let table = BmcTable::new();
    let cache = substruct_edge::power::BmcCache::new(dir.path().join("bmc.json"), site.clone());
    tokio::spawn(kv_mirror::watch(
        client.clone(),
        kv_mirror::WatchSettings::new(site.clone(), cache),
        table.clone(),
        cancel.clone(),
    ));
    let mirror = table.clone();
    let (sender, queue) = ResultQueue::new(site.clone(), client.clone(), 16);
    tokio::spawn(queue.run(cancel.clone()));
    let service = PowerService::new(
        site.clone(),
        table,
        Executor::new(BmcConnector, settings),
        sender,
        client.clone(),
        None,
    );
    if let Some(every) = poll_every {
        tokio::spawn(service.clone().poll(every, cancel.clone()));
    }
    let requests =
        Requests::subscribe(&client, subjects::power(&site), subjects::EDGE_POWER_QUEUE).await?;
    tokio::spawn(service.serve(requests, cancel.clone(), tracker));

    // The controller's side of the result subject: record and acknowledge.
    let (tx, results) = tokio::sync::mpsc::unbounded_channel();
    let mut sub = client.subscribe(subjects::power_result_all()).await?;
    let acker = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Ok(result) = substruct_wire::decode::<PowerResult>(&msg.payload) else {
                continue;
            };
            if let Some(reply) = msg.reply {
                let ack = substruct_wire::encode(&PowerAck {
                    request_id: result.request_id.clone(),
                })
                .unwrap();
                acker.publish(reply, ack.into()).await.ok();
            }
            tx.send(result).ok();
        }
    });
    Ok(Edge {
        _nats: nats,
        client,
        site,
        cancel,
        results,
        table: mirror,
        _dir: dir,
    })
}

fn quick() -> ExecutorSettings {
    ExecutorSettings {
        max_sessions: 2,
        attempts: 2,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        bmc_timeout: Duration::from_millis(700),
    }
}

/// The settings of `machine`'s BMC: user `admin`, no certificate pin, no system id
/// (set those on the value for Redfish).
fn bmc(machine: &str, driver: BmcDriverKind, address: &str, password: &str) -> Result<BmcSettings> {
    Ok(BmcSettings {
        machine_id: MachineId::new(machine)?,
        driver,
        address: address.into(),
        user: "admin".into(),
        password: password.into(),
        cert_pin: None,
        system_id: None,
    })
}

/// The settings of `machine`'s IPMI BMC (ipmi_sim).
fn ipmi(machine: &str, address: &str, password: &str) -> Result<BmcSettings> {
    bmc(machine, BmcDriverKind::Ipmi, address, password)
}

/// Writes `settings` to KV `bmc`, as the controller does (the edge's mirror follows).
async fn set_bmc(edge: &Edge, settings: &BmcSettings) -> Result<()> {
    let js = async_nats::jetstream::new(edge.client.clone());
    let kv = js.get_key_value(subjects::KV_BMC).await?;
    kv.put(
        subjects::bmc_key(&edge.site, &settings.machine_id),
        substruct_wire::encode(settings)?.into(),
    )
    .await?;
    Ok(())
}

/// Waits until the edge's mirror holds exactly `settings`, so that no request is
/// answered from the machine's settings before them.
async fn mirrored(edge: &Edge, settings: &BmcSettings) -> Result<()> {
    poll(
        "the edge's mirror to hold the new BMC settings",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let held = edge.table.get(&settings.machine_id).as_ref() == Some(settings);
            async move { held.then_some(()) }
        },
    )
    .await
}

/// The result of request `id` the controller received on `…power.result` (results of
/// other requests before it are passed over).
async fn queued(edge: &mut Edge, id: &str) -> Result<PowerResult> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let result = edge.results.recv().await.context("result channel closed")?;
            if result.request_id.as_str() == id {
                return Ok(result);
            }
        }
    })
    .await
    .with_context(|| format!("no result of {id} on power.result"))?
}

/// Sends a power request; the edge's answer (a result or an error reply).
async fn ask(
    edge: &Edge,
    machine: &str,
    id: &str,
    op: PowerOp,
    next_boot: Option<BootDevice>,
) -> Result<std::result::Result<PowerResult, ErrorReply>> {
    let request = PowerRequest {
        site: edge.site.clone(),
        request_id: PowerRequestId::new(id)?,
        machine_id: MachineId::new(machine)?,
        macs: vec![],
        op,
        next_boot,
        by: "test".into(),
    };
    let reply = edge
        .client
        .send_request(
            subjects::power(&edge.site),
            async_nats::Request::new()
                .payload(substruct_wire::encode(&request)?.into())
                .timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    decode(&reply.payload)
}

fn decode(bytes: &[u8]) -> Result<std::result::Result<PowerResult, ErrorReply>> {
    Ok(match substruct_wire::peek(bytes)?.kind {
        MessageKind::ErrorReply => Err(substruct_wire::decode::<ErrorReply>(bytes)?),
        _ => Ok(substruct_wire::decode::<PowerResult>(bytes)?),
    })
}

fn sim() -> Result<Option<IpmiSim>> {
    if !system_test(&[Need::Tool("ipmi_sim")]) {
        return Ok(None);
    }
    Ok(Some(IpmiSim::start(
        None,
        &IpmiSimOptions::loopback(PASSWORD),
    )?))
}

#[tokio::test]
async fn a_power_request_over_nats_changes_what_ipmi_sim_reports() -> Result<()> {
    let Some(sim) = sim()? else { return Ok(()) };
    let mut edge = edge(quick(), None).await?;
    set_bmc(&edge, &ipmi("m-1", &sim.address(), PASSWORD)?).await?;

    // The first request may come before the mirror has the settings: read directly.
    let status = ask(&edge, "m-1", "r-status", PowerOp::Status, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(
        status.state,
        PowerState::Off,
        "{status:?}\n{}",
        sim.log_text()
    );
    assert_eq!(status.error, None);
    assert!(!sim.power_is_on());

    // Cycle from a confirmed off with PXE next: the chassis powers on, boot flags PXE.
    let on = ask(
        &edge,
        "m-1",
        "r-cycle",
        PowerOp::Act(PowerAction::Cycle),
        Some(BootDevice::Pxe),
    )
    .await?
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(
        (on.state, on.error.as_deref()),
        (PowerState::On, None),
        "{on:?}"
    );
    assert!(sim.power_is_on(), "ipmi_sim is not on: {:?}", sim.events());
    assert_eq!(sim.boot_device(), "pxe");

    // The results went to the controller's result subject too, in order, once each:
    // the first status read (it told the record something new), then the action's.
    for (id, state) in [("r-status", PowerState::Off), ("r-cycle", PowerState::On)] {
        let queued = tokio::time::timeout(Duration::from_secs(10), edge.results.recv())
            .await
            .with_context(|| format!("no result of {id} on power.result"))?
            .context("result channel closed")?;
        assert_eq!((queued.request_id.as_str(), queued.state), (id, state));
    }
    // A status read that tells nothing new is not queued (the reply carries it):
    // nothing else arrives.
    let again = ask(&edge, "m-1", "r-status-2", PowerOp::Status, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(again.state, PowerState::On);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), edge.results.recv())
            .await
            .is_err(),
        "a second result was queued"
    );

    // Off: the chassis goes off.
    let off = ask(&edge, "m-1", "r-off", PowerOp::Act(PowerAction::Off), None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(off.state, PowerState::Off);
    assert!(!sim.power_is_on());
    Ok(())
}

#[tokio::test]
async fn a_bmc_that_does_not_answer_is_reported_after_bounded_retries() -> Result<()> {
    let Some(mut sim) = sim()? else { return Ok(()) };
    let mut edge = edge(quick(), None).await?;
    set_bmc(&edge, &ipmi("m-1", &sim.address(), PASSWORD)?).await?;
    sim.stop();

    let result = ask(&edge, "m-1", "r-down", PowerOp::Act(PowerAction::On), None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(result.attempts, 2, "{result:?}");
    assert_eq!(result.state, PowerState::Unknown);
    let error = result.error.clone().context("no error reported")?;
    assert!(
        error.contains(&sim.port.to_string()),
        "the error names the BMC: {error}"
    );
    // The failure goes to the controller too (the record shows the last error).
    let queued = tokio::time::timeout(Duration::from_secs(10), edge.results.recv())
        .await?
        .context("result channel closed")?;
    assert_eq!(queued.error, Some(error));
    Ok(())
}

#[tokio::test]
async fn wrong_passwords_and_hostile_requests_are_refused() -> Result<()> {
    let Some(sim) = sim()? else { return Ok(()) };
    let edge = edge(quick(), None).await?;
    set_bmc(&edge, &ipmi("m-1", &sim.address(), "not-the-password")?).await?;

    // A wrong password: one attempt (retrying cannot help), the error says so.
    let r = ask(&edge, "m-1", "r-auth", PowerOp::Status, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(r.attempts, 1, "{r:?}");
    assert!(r.error.is_some());
    assert!(!sim.power_is_on());

    // A machine this site holds no BMC for.
    let e = ask(
        &edge,
        "m-unknown",
        "r-x",
        PowerOp::Act(PowerAction::On),
        None,
    )
    .await?
    .err()
    .context("a machine without a BMC was served")?;
    assert_eq!(e.code, ErrorCode::Forbidden);

    // A request naming another site, sent on this site's subject.
    let request = PowerRequest {
        site: SiteId::new("s2")?,
        request_id: PowerRequestId::new("r-y")?,
        machine_id: MachineId::new("m-1")?,
        macs: vec![],
        op: PowerOp::Act(PowerAction::On),
        next_boot: None,
        by: "x".into(),
    };
    let reply = edge
        .client
        .request(
            subjects::power(&edge.site),
            substruct_wire::encode(&request)?.into(),
        )
        .await?;
    assert_eq!(
        decode(&reply.payload)?.err().map(|e| e.code),
        Some(ErrorCode::WrongSite)
    );
    // Garbage.
    let reply = edge
        .client
        .request(subjects::power(&edge.site), "\u{0}garbage".into())
        .await?;
    assert_eq!(
        decode(&reply.payload)?.err().map(|e| e.code),
        Some(ErrorCode::Malformed)
    );
    assert!(!sim.power_is_on(), "a refused request powered the machine");
    Ok(())
}

#[tokio::test]
async fn the_status_poll_reports_the_state_once_per_change() -> Result<()> {
    let Some(sim) = sim()? else { return Ok(()) };
    let mut edge = edge(quick(), Some(Duration::from_millis(300))).await?;
    set_bmc(&edge, &ipmi("m-1", &sim.address(), PASSWORD)?).await?;

    let first = poll(
        "the poll's first report",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let r = edge.results.try_recv().ok();
            async move { r }
        },
    )
    .await?;
    assert_eq!((first.op, first.state), (PowerOp::Status, PowerState::Off));
    assert!(first.request_id.as_str().starts_with("e-"));
    // Unchanged: no more reports over several poll rounds.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        edge.results.try_recv().is_err(),
        "an unchanged state was reported again"
    );
    Ok(())
}

/// The agent's wiring ([`substruct_edge::power::spawn`]) from a config file: the
/// `[power]` table, the mirror's disk copy (mode 0600: it holds passwords), the served
/// subject.
#[tokio::test]
async fn the_agent_wiring_serves_from_the_config() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(sim) = sim()? else { return Ok(()) };
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    ensure_kv(&js, &BucketSpec::new(subjects::KV_BMC)).await?;
    let dir = tempfile::tempdir()?;
    let toml = format!(
        "site = \"s1\"\ninterface = \"lo\"\naddress = \"10.77.0.1/24\"\nimages = \"{d}\"\n\
         state_dir = \"{d}\"\n[dhcp]\nmode = \"proxy\"\n[power]\nmax_sessions = 1\nattempts = 2\nbmc_timeout = \"700ms\"\n",
        d = dir.path().display()
    );
    let config = substruct_edge::config::EdgeConfig::from_toml_str("edge.toml", &toml)?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (table, cache) = substruct_edge::power::load_table(&config);
    substruct_edge::power::spawn(
        client.clone(),
        &config,
        (table.clone(), cache),
        &tracker,
        cancel.clone(),
    )
    .await;
    let edge = Edge {
        _nats: nats,
        client,
        site: config.site.clone(),
        cancel,
        results: tokio::sync::mpsc::unbounded_channel().1,
        table,
        _dir: dir,
    };
    set_bmc(&edge, &ipmi("m-9", &sim.address(), PASSWORD)?).await?;
    let cache = substruct_edge::power::cache_path(&config);
    poll(
        "the BMC settings on disk",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let text = std::fs::read_to_string(&cache).unwrap_or_default();
            async move { text.contains("m-9").then_some(()) }
        },
    )
    .await?;
    assert_eq!(
        std::fs::metadata(&cache)?.permissions().mode() & 0o077,
        0,
        "the disk copy is readable by others"
    );
    let on = ask(&edge, "m-9", "r-on", PowerOp::Act(PowerAction::On), None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(on.state, PowerState::On, "{on:?}");
    assert!(sim.power_is_on());
    Ok(())
}

/// Two fake systems behind one Redfish BMC; the machine under test is the second.
const SUSHY_SYSTEMS: [&str; 2] = [
    "11111111-0000-4000-8000-000000000001",
    "22222222-0000-4000-8000-000000000002",
];

/// The executor for sushy: its fake driver applies a power change 1 to 11 s after the
/// request, and an action waits up to four times the BMC timeout for it.
fn redfish_quick() -> ExecutorSettings {
    ExecutorSettings {
        max_sessions: 2,
        attempts: 3,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        bmc_timeout: Duration::from_secs(4),
    }
}

/// The HTTP requests sushy-emulator logged so far (one access-log line each).
fn sushy_requests(sushy: &Sushy) -> usize {
    sushy
        .log()
        .lines()
        .filter(|l| l.contains("\"GET ") || l.contains("\"POST ") || l.contains("\"PATCH "))
        .count()
}

#[tokio::test]
async fn a_redfish_bmc_through_the_edge_pins_its_certificate_and_refuses_another() -> Result<()> {
    let Some(sushy) = Sushy::start(&SUSHY_SYSTEMS)? else {
        return Ok(());
    };
    let [other, system] = SUSHY_SYSTEMS;
    let pin = sushy.cert_pin()?;
    let mut edge = edge(redfish_quick(), None).await?;
    let mut first_use = bmc(
        "m-1",
        BmcDriverKind::Redfish,
        &sushy.address(),
        SUSHY_PASSWORD,
    )?;
    first_use.system_id = Some(system.to_owned());
    set_bmc(&edge, &first_use).await?;

    // First use, no pin stored: a real state, and the certificate's sha256 (as
    // openssl computes it) learned, in the reply and in the result the controller
    // receives (a status read that tells something new is queued too).
    let status = ask(&edge, "m-1", "r-status", PowerOp::Status, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(
        (status.state, status.error.as_deref(), status.attempts),
        (PowerState::Off, None, 1),
        "{status:?}\n{}",
        sushy.log()
    );
    assert_eq!(status.cert_pin.as_deref(), Some(pin.as_str()), "{status:?}");
    let learned = queued(&mut edge, "r-status").await?;
    assert_eq!(learned.cert_pin.as_deref(), Some(pin.as_str()));

    // The controller stores the pin; with it, actions reach the machine's system (and
    // only it), and nothing new is learned.
    let mut pinned = first_use.clone();
    pinned.cert_pin = learned.cert_pin;
    set_bmc(&edge, &pinned).await?;
    mirrored(&edge, &pinned).await?;
    let on = ask(
        &edge,
        "m-1",
        "r-on",
        PowerOp::Act(PowerAction::On),
        Some(BootDevice::Pxe),
    )
    .await?
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(
        (on.state, on.error.as_deref(), on.cert_pin.as_deref()),
        (PowerState::On, None, None),
        "{on:?}"
    );
    assert_eq!(sushy.system(system)?["PowerState"], "On");
    assert_eq!(
        sushy.system(system)?["Boot"]["BootSourceOverrideTarget"],
        "Pxe"
    );
    assert_eq!(
        sushy.system(other)?["PowerState"],
        "Off",
        "another system moved"
    );
    assert_eq!(queued(&mut edge, "r-on").await?.state, PowerState::On);

    let off = ask(&edge, "m-1", "r-off", PowerOp::Act(PowerAction::Off), None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(
        (off.state, off.error.as_deref()),
        (PowerState::Off, None),
        "{off:?}"
    );
    assert_eq!(sushy.system(system)?["PowerState"], "Off");

    // Another pin (the BMC's certificate is not the one stored): refused at the TLS
    // handshake, once (no retry can help), the error naming both certificates; no
    // request reaches the BMC, so neither its power nor its boot device changes.
    let wrong = "ab".repeat(32);
    assert_ne!(wrong, pin);
    let mut mismatched = pinned.clone();
    mismatched.cert_pin = Some(wrong.clone());
    set_bmc(&edge, &mismatched).await?;
    mirrored(&edge, &mismatched).await?;
    let requests_before = sushy_requests(&sushy);
    assert!(
        requests_before > 0,
        "sushy logs no requests:\n{}",
        sushy.log()
    );
    let refused = ask(
        &edge,
        "m-1",
        "r-refused",
        PowerOp::Act(PowerAction::On),
        Some(BootDevice::Disk),
    )
    .await?
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(
        (refused.state, refused.attempts, refused.cert_pin.as_deref()),
        (PowerState::Unknown, 1, None),
        "{refused:?}"
    );
    let error = refused.error.clone().context("no error reported")?;
    assert!(
        error.contains("certificate") && error.contains(&pin) && error.contains(&wrong),
        "the error names the certificates: {error}"
    );
    assert_eq!(
        sushy_requests(&sushy),
        requests_before,
        "a request reached the BMC past a refused certificate:\n{}",
        sushy.log()
    );
    assert_eq!(sushy.system(system)?["PowerState"], "Off");
    assert_eq!(
        sushy.system(system)?["Boot"]["BootSourceOverrideTarget"],
        "Pxe"
    );
    // The controller hears of the failure too.
    assert_eq!(queued(&mut edge, "r-refused").await?.error, Some(error));
    Ok(())
}
