//! Power control end to end below the QEMU level: the controller (in-process, real
//! nats-server), a site's real edge power service and OpenIPMI's real `ipmi_sim`
//! behind it. `machines bmc set`, `machines power …`, the record's `power` and
//! `power_error`, `EVENTS`, role checks, `assign` cycling a machine to PXE, results
//! applied once, and a site that speaks for another site's machine.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{config, connect, discover, report, Running, TOKEN};
use serde_json::Value;
use substruct_controller::config::{ApiToken, Role};
use substruct_edge::kv_mirror;
use substruct_edge::power::{
    BmcCache, BmcConnector, BmcTable, Executor, ExecutorSettings, PowerService, ResultQueue,
};
use substruct_runtime::serve::Requests;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::ipmi_sim::{IpmiSim, IpmiSimOptions};
use substruct_testkit::{wait_for, NatsServer};
use substruct_wire::power::PowerState;
use substruct_wire::power_msg::{PowerOp, PowerResult};
use substruct_wire::{subjects, MachineId, PowerRequestId, SiteId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const PASSWORD: &str = "bmc-pw-7f3a";
const VIEWER: &str = "test-viewer-token";
const M1: [u8; 6] = [0x52, 0x54, 0, 0, 0x51, 1];

/// A site's edge power service (real drivers) on `nats_url`, until `cancel`.
async fn edge(nats_url: &str, site: &str, dir: &std::path::Path, cancel: &CancellationToken) {
    let client = connect(nats_url).await;
    let site = SiteId::new(site).unwrap();
    let table = BmcTable::new();
    let cache = BmcCache::new(dir.join("bmc.json"), site.clone());
    tokio::spawn(kv_mirror::watch(
        client.clone(),
        kv_mirror::WatchSettings::new(site.clone(), cache),
        table.clone(),
        cancel.clone(),
    ));
    let (results, queue) = ResultQueue::new(site.clone(), client.clone(), 64);
    tokio::spawn(queue.run(cancel.clone()));
    let settings = ExecutorSettings {
        attempts: 2,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        bmc_timeout: Duration::from_millis(700),
        ..ExecutorSettings::default()
    };
    let service = PowerService::new(
        site.clone(),
        table,
        Executor::new(BmcConnector, settings),
        results,
        client.clone(),
        None,
    );
    let requests = Requests::subscribe(&client, subjects::power(&site), subjects::EDGE_POWER_QUEUE)
        .await
        .unwrap();
    tokio::spawn(service.serve(requests, cancel.clone(), TaskTracker::new()));
}

async fn cli_as(base: &str, token: &str, args: &[&str]) -> Result<String, String> {
    use clap::Parser as _;
    let argv = ["substruct", "--controller", base, "--token", token]
        .into_iter()
        .chain(args.iter().copied());
    let parsed = substruct_controller::cli::Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    match substruct_controller::cli::run(parsed, &mut out).await {
        Ok(()) => Ok(String::from_utf8(out).unwrap()),
        Err(e) => Err(substruct_controller::error_chain(&e)),
    }
}

async fn cli(base: &str, args: &[&str]) -> Result<String, String> {
    cli_as(base, TOKEN, args).await
}

/// `machines bmc set ID --driver ipmi --address ADDRESS --user admin --password-file PW`.
async fn set_bmc(
    base: &str,
    token: &str,
    id: &str,
    address: &str,
    pw: &std::path::Path,
) -> Result<String, String> {
    let args = [
        "machines",
        "bmc",
        "set",
        id,
        "--driver",
        "ipmi",
        "--address",
        address,
        "--user",
        "admin",
        "--password-file",
        pw.to_str().unwrap(),
    ];
    cli_as(base, token, &args).await
}

async fn show(base: &str, id: &str) -> Value {
    serde_json::from_str(
        &cli(base, &["machines", "show", id, "--json"])
            .await
            .unwrap(),
    )
    .unwrap()
}

/// One site's lab: `ipmi_sim`, nats-server, the controller (admin and viewer tokens),
/// site dc1's edge power service, and a machine discovered at dc1.
struct Lab {
    sim: IpmiSim,
    _nats: NatsServer,
    c: Running,
    base: String,
    client: async_nats::Client,
    dir: tempfile::TempDir,
    cancel: CancellationToken,
    id: String,
}

async fn lab(serial: &str) -> Lab {
    let sim = IpmiSim::start(None, &IpmiSimOptions::loopback(PASSWORD)).unwrap();
    let nats = NatsServer::start().unwrap();
    let mut cfg = config(&nats.url());
    cfg.tokens.push(ApiToken {
        token: VIEWER.into(),
        role: Role::Viewer,
    });
    let c = Running::start(cfg).await;
    let base = c.url();
    let client = connect(&nats.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    edge(&nats.url(), "dc1", dir.path(), &cancel).await;
    let id = discover(&client, "dc1", report(None, Some(serial), &[M1], &["D1"]))
        .await
        .unwrap()
        .machine_id
        .to_string();
    Lab {
        sim,
        _nats: nats,
        c,
        base,
        client,
        dir,
        cancel,
        id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_set_a_bmc_and_drive_power_through_the_site_edge() {
    if !system_test(&[Need::Tool("ipmi_sim")]) {
        return;
    }
    let Lab {
        sim,
        _nats,
        c,
        base,
        client,
        dir,
        cancel,
        id,
    } = lab("SN-P1").await;

    // Power without a BMC: refused, naming the fix.
    let err = cli(&base, &["machines", "power", "status", &id])
        .await
        .unwrap_err();
    assert!(err.contains("machines bmc set"), "{err}");

    // bmc set: the password from a file, never shown back.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let address = sim.address();
    let out = set_bmc(&base, TOKEN, &id, &address, &pw).await.unwrap();
    assert!(
        out.contains("password set") && !out.contains(PASSWORD),
        "{out}"
    );
    // A viewer may not set a BMC.
    let err = set_bmc(&base, VIEWER, &id, "x", &pw).await.unwrap_err();
    assert!(err.contains("403"), "{err}");

    let shown = show(&base, &id).await;
    assert_eq!(shown["power"], "unknown");
    assert_eq!(shown["bmc"]["password_set"], true);
    assert_eq!(shown["bmc"]["address"], address.as_str());
    let text = cli(&base, &["machines", "show", &id]).await.unwrap();
    let bmc_text = cli(&base, &["machines", "bmc", "show", &id, "--json"])
        .await
        .unwrap();
    // Nowhere the operator or a reader of KV `machines` looks holds the password.
    let (record, _) = c
        .controller
        .store()
        .machine(&MachineId::new(id.as_str()).unwrap())
        .await
        .unwrap()
        .unwrap();
    for place in [
        shown.to_string(),
        text,
        bmc_text,
        serde_json::to_string(&record).unwrap(),
    ] {
        assert!(!place.contains(PASSWORD), "password shown: {place}");
    }
    // KV `bmc` holds it, under the machine's site.
    let settings = c
        .controller
        .store()
        .bmc_settings(&SiteId::new("dc1").unwrap(), &record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settings.password, PASSWORD);

    // Status, then on with PXE next: the simulated chassis follows.
    let out = cli_as(
        &base,
        VIEWER,
        &["machines", "power", "status", &id, "--json"],
    )
    .await
    .unwrap();
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["power"], "off", "{out}\n{}", sim.log_text());
    let err = cli_as(&base, VIEWER, &["machines", "power", "on", &id])
        .await
        .unwrap_err();
    assert!(err.contains("403"), "a viewer powered a machine on: {err}");
    assert!(!sim.power_is_on());
    let out = cli(&base, &["machines", "power", "on", &id, "--pxe-next"])
        .await
        .unwrap();
    assert_eq!(out, format!("machine {id}: power on\n"));
    assert!(sim.power_is_on(), "{:?}", sim.events());
    assert_eq!(sim.boot_device(), "pxe");
    let shown = show(&base, &id).await;
    assert_eq!(shown["power"], "on");
    assert!(shown.get("power_error").is_none(), "{shown}");
    let list = cli(&base, &["machines", "list"]).await.unwrap();
    let header = list.lines().next().unwrap();
    let row = list.lines().nth(1).unwrap();
    let col = header.find("POWER").unwrap();
    assert!(row[col..].starts_with("on "), "{list}");
    wait_for("the power events", Duration::from_secs(10), || {
        let client = client.clone();
        let id = id.clone();
        async move {
            common::power_events(&client, &MachineId::new(id.as_str()).unwrap())
                .await
                .len()
                >= 2
        }
    })
    .await
    .unwrap();
    let events = common::power_events(&client, &MachineId::new(id.as_str()).unwrap()).await;
    let on = events.iter().find(|e| e["kind"]["op"] == "on").unwrap();
    assert_eq!(on["kind"]["state"], "on");
    assert_eq!(on["kind"]["by"], "api (admin)");

    // The same result delivered again (a redelivery after a lost ack): applied once.
    let request_id = on["kind"]["request_id"].as_str().unwrap().to_owned();
    let again = PowerResult {
        site: SiteId::new("dc1").unwrap(),
        request_id: PowerRequestId::new(request_id.as_str()).unwrap(),
        machine_id: record.id.clone(),
        op: PowerOp::Act(substruct_wire::power::PowerAction::On),
        state: PowerState::On,
        error: None,
        attempts: 1,
        cert_pin: None,
        by: "api (admin)".into(),
        at_unix_ms: 1,
    };
    let reply = client
        .request(
            subjects::power_result(&SiteId::new("dc1").unwrap()),
            substruct_wire::encode(&again).unwrap().into(),
        )
        .await
        .unwrap();
    assert_eq!(
        substruct_wire::peek(&reply.payload).unwrap().kind,
        substruct_wire::MessageKind::PowerAck
    );
    // Another site cannot speak for this machine: refused, the record unchanged.
    let forged = PowerResult {
        site: SiteId::new("dc2").unwrap(),
        request_id: PowerRequestId::new("forged-1").unwrap(),
        state: PowerState::Off,
        ..again.clone()
    };
    let reply = client
        .request(
            subjects::power_result(&SiteId::new("dc2").unwrap()),
            substruct_wire::encode(&forged).unwrap().into(),
        )
        .await
        .unwrap();
    let refused: substruct_wire::messages::ErrorReply =
        substruct_wire::decode(&reply.payload).unwrap();
    assert_eq!(refused.code, substruct_wire::messages::ErrorCode::Forbidden);
    assert_eq!(show(&base, &id).await["power"], "on");

    // A certificate pin learned on first use (as a Redfish session reports it) is stored
    // back: in KV `bmc` for the edge, in the record for the operator. A malformed one
    // is ignored, and a later one never replaces it.
    let pinned = "ab".repeat(32);
    for (rid, pin) in [
        ("pin-bad", "AB".repeat(32)),
        ("pin-1", pinned.clone()),
        ("pin-2", "cd".repeat(32)),
    ] {
        let result = PowerResult {
            request_id: PowerRequestId::new(rid).unwrap(),
            op: PowerOp::Status,
            cert_pin: Some(pin),
            ..again.clone()
        };
        let reply = client
            .request(
                subjects::power_result(&SiteId::new("dc1").unwrap()),
                substruct_wire::encode(&result).unwrap().into(),
            )
            .await
            .unwrap();
        assert_eq!(
            substruct_wire::peek(&reply.payload).unwrap().kind,
            substruct_wire::MessageKind::PowerAck
        );
    }
    let stored = c
        .controller
        .store()
        .bmc_settings(&SiteId::new("dc1").unwrap(), &record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.cert_pin.as_deref(), Some(pinned.as_str()));
    assert_eq!(stored.password, PASSWORD, "the pin write kept the password");
    assert_eq!(show(&base, &id).await["bmc"]["cert_pin"], pinned.as_str());
    let events = common::power_events(&client, &MachineId::new(id.as_str()).unwrap()).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"]["request_id"] == request_id.as_str())
            .count(),
        1,
        "{events:?}"
    );

    cancel.cancel();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_that_is_down_shows_its_error_and_assign_cycles_to_pxe() {
    if !system_test(&[Need::Tool("ipmi_sim")]) {
        return;
    }
    let Lab {
        mut sim,
        _nats,
        c,
        base,
        client: _,
        dir,
        cancel,
        id,
    } = lab("SN-P2").await;
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let address = sim.address();
    set_bmc(&base, TOKEN, &id, &address, &pw).await.unwrap();

    // assign: the machine (off) is set to PXE and powered on, in the background.
    let image = dir.path().join("marker.img");
    std::fs::write(&image, vec![7u8; 4096]).unwrap();
    cli(
        &base,
        &["images", "add", image.to_str().unwrap(), "--kind", "disk"],
    )
    .await
    .unwrap();
    let profile = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/profiles/marker-image.toml");
    cli(&base, &["profiles", "add", profile.to_str().unwrap()])
        .await
        .unwrap();
    cli(&base, &["machines", "assign", &id, "marker-image"])
        .await
        .unwrap();
    wait_for(
        "assign to power the machine on",
        Duration::from_secs(20),
        || {
            let on = sim.power_is_on();
            async move { on }
        },
    )
    .await
    .unwrap();
    assert_eq!(sim.boot_device(), "pxe");
    let base2 = base.clone();
    let id2 = id.clone();
    wait_for("the record to say on", Duration::from_secs(10), || {
        let (base, id) = (base2.clone(), id2.clone());
        async move { show(&base, &id).await["power"] == "on" }
    })
    .await
    .unwrap();

    // --no-power leaves it alone.
    let before = sim.events().len();
    cli(&base, &["machines", "reinstall", &id, "--no-power"])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.events().len(), before, "--no-power touched the power");

    // The BMC goes away: bounded retries, the error in the record and the CLI's answer.
    sim.stop();
    let err = cli(&base, &["machines", "power", "off", &id])
        .await
        .unwrap_err();
    assert!(
        err.contains("502") && err.contains(&sim.port.to_string()),
        "{err}"
    );
    let shown = show(&base, &id).await;
    assert_eq!(shown["power"], "unknown");
    let error = shown["power_error"].as_str().unwrap_or_default();
    assert!(error.contains(&sim.port.to_string()), "{shown}");
    let text = cli(&base, &["machines", "show", &id]).await.unwrap();
    assert!(text.contains("power error:"), "{text}");

    cancel.cancel();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_can_power_off_machines_idle_after_discovery() {
    use substruct_wire::messages::Instruction;
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let base = c.url();
    let client = connect(&nats.url()).await;
    let out = cli(
        &base,
        &["sites", "add", "dc3", "--power-off-after-discovery", "true"],
    )
    .await
    .unwrap();
    assert!(out.starts_with("site dc3 registered"), "{out}");
    let at_dc3 = discover(&client, "dc3", report(None, Some("SN-OFF"), &[M1], &["D1"]))
        .await
        .unwrap();
    assert_eq!(at_dc3.instruction, Instruction::PowerOff);
    // Elsewhere (the default): the machine waits, as before.
    let at_dc1 = discover(
        &client,
        "dc1",
        report(
            None,
            Some("SN-WAIT"),
            &[[0x52, 0x54, 0, 0, 0x51, 2]],
            &["D2"],
        ),
    )
    .await
    .unwrap();
    assert_eq!(at_dc1.instruction, Instruction::Wait);
    // Turned off again: waits.
    cli(
        &base,
        &[
            "sites",
            "add",
            "dc3",
            "--power-off-after-discovery",
            "false",
        ],
    )
    .await
    .unwrap();
    let again = discover(&client, "dc3", report(None, Some("SN-OFF"), &[M1], &["D1"]))
        .await
        .unwrap();
    assert_eq!(again.instruction, Instruction::Wait);
    c.stop().await;
}
