//! A power operation ordered before a WAN cut completes at the site, and its result
//! arrives once after the heal.
//!
//! The shipped topology, on loopback: the hub (`deploy/nats/hub.conf`, users by
//! `gen-site`, so the site's permissions are the shipped ones) with the controller, and
//! site `a`'s leaf node whose link to the hub runs through a TCP relay this test can cut
//! and heal. Site `a`'s edge power service sits behind the leaf node; its BMC is
//! OpenIPMI's `ipmi_sim`, reached through a UDP relay the test holds, so the operation is
//! still running when the link is cut.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config, discover, report, Running};
use serde_json::Value;
use substruct_controller::power::PowerControl;
use substruct_controller::provision::Provisioner;
use substruct_edge::kv_mirror;
use substruct_edge::power::{
    BmcCache, BmcConnector, BmcTable, Executor, ExecutorSettings, PowerService, ResultQueue,
};
use substruct_runtime::serve::Requests;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::ipmi_sim::{IpmiSim, IpmiSimOptions};
use substruct_testkit::nats_topology::{Hub, HubOptions, Leaf, LeafOptions, HUB_JS_DOMAIN};
use substruct_testkit::wait_for;
use substruct_wire::power::{PowerAction, PowerState};
use substruct_wire::power_msg::PowerOp;
use substruct_wire::{subjects, SiteId};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const PASSWORD: &str = "bmc-pw-wan";

/// A TCP relay to `target` whose connections the test can cut (and refuse) and heal.
struct Link {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<Mutex<CancellationToken>>,
}

impl Link {
    async fn start(target: SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    inbound.shutdown().await.ok();
                    continue;
                }
                let token = g.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Link {
            port,
            cut,
            generation,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut g = self.generation.lock().unwrap();
        g.cancel();
        *g = CancellationToken::new();
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// A UDP relay to the BMC that the test can hold: datagrams to the BMC are counted and
/// dropped while held.
struct BmcRelay {
    addr: SocketAddr,
    held: Arc<AtomicBool>,
    seen_while_held: Arc<AtomicUsize>,
}

impl BmcRelay {
    async fn start(bmc: SocketAddr) -> BmcRelay {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let held = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (h, s) = (held.clone(), seen.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut client: Option<SocketAddr> = None;
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if from == bmc {
                    if let Some(c) = client {
                        socket.send_to(&buf[..n], c).await.ok();
                    }
                    continue;
                }
                client = Some(from);
                if h.load(Ordering::SeqCst) {
                    s.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                socket.send_to(&buf[..n], bmc).await.ok();
            }
        });
        BmcRelay {
            addr,
            held,
            seen_while_held: seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_result_from_during_a_wan_cut_arrives_once_after_the_heal() {
    if !system_test(&[Need::Tool("ipmi_sim"), Need::Tool("nats-server")]) {
        return;
    }
    let sim = IpmiSim::start(None, &IpmiSimOptions::loopback(PASSWORD)).unwrap();
    let relay = BmcRelay::start(sim.address().parse().unwrap()).await;
    let hub = Hub::start(HubOptions::default().sites(["a"])).unwrap();
    let hub_leaf: SocketAddr = hub.leaf_urls()[0]
        .rsplit("://")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let wan = Link::start(hub_leaf).await;
    let leaf = Leaf::start(
        &hub,
        "a",
        LeafOptions {
            hub_urls: Some(vec![format!("nats-leaf://127.0.0.1:{}", wan.port)]),
            ..LeafOptions::default()
        },
    )
    .unwrap();
    leaf.wait_linked(Duration::from_secs(20)).unwrap();

    // The controller on the hub.
    let (user, password) = hub.controller_credentials();
    let mut cfg = config(&hub.url());
    cfg.nats_user = Some(user.to_owned());
    cfg.nats_password = Some(password.to_owned());
    let c = Running::start(cfg).await;
    let hub_client =
        async_nats::ConnectOptions::with_user_and_password(user.to_owned(), password.to_owned())
            .connect(hub.url())
            .await
            .unwrap();

    // Site a's edge power service behind the leaf node, as the edge logs in.
    let site = SiteId::new("a").unwrap();
    let edge = leaf
        .edge_login()
        .unwrap()
        .options()
        .unwrap()
        .custom_inbox_prefix(subjects::site_inbox_prefix(&site))
        .connect(leaf.url())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let table = BmcTable::new();
    tokio::spawn(kv_mirror::watch(
        edge.clone(),
        kv_mirror::WatchSettings::new(
            site.clone(),
            BmcCache::new(dir.path().join("bmc.json"), site.clone()),
        )
        .with_js_domain(Some(HUB_JS_DOMAIN.to_owned())),
        table.clone(),
        cancel.clone(),
    ));
    let (results, queue) = ResultQueue::new(site.clone(), edge.clone(), 64);
    tokio::spawn(queue.run(cancel.clone()));
    let service = PowerService::new(
        site.clone(),
        table.clone(),
        Executor::new(
            BmcConnector,
            ExecutorSettings {
                attempts: 5,
                min_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(300),
                bmc_timeout: Duration::from_millis(500),
                ..ExecutorSettings::default()
            },
        ),
        results,
        edge.clone(),
        Some(HUB_JS_DOMAIN.to_owned()),
    );
    let requests = Requests::subscribe(&edge, subjects::power(&site), subjects::EDGE_POWER_QUEUE)
        .await
        .unwrap();
    tokio::spawn(service.serve(requests, cancel.clone(), TaskTracker::new()));

    // A machine at a, with its BMC (through the relay); the edge mirrors the settings.
    let id = discover(
        &hub_client,
        "a",
        report(None, Some("SN-WAN"), &[[0x52, 0x54, 0, 0, 0x77, 1]], &["D"]),
    )
    .await
    .unwrap()
    .machine_id;
    let power = PowerControl::new(
        Provisioner::new(c.controller.store().clone(), hub_client.clone()),
        hub_client.clone(),
    )
    .with_timeout(Duration::from_secs(2));
    power
        .set_bmc(
            id.as_str(),
            serde_json::from_value(serde_json::json!({
                "driver": "ipmi", "address": relay.addr.to_string(), "user": "admin",
                "password": PASSWORD,
            }))
            .unwrap(),
            "test",
        )
        .await
        .unwrap();
    wait_for(
        "the edge to mirror the BMC settings",
        Duration::from_secs(20),
        || {
            let found = table.contains(&id);
            async move { found }
        },
    )
    .await
    .unwrap();

    // Power on, with the BMC held: the operation is running at the site when the WAN
    // is cut; the controller's wait ends without an answer.
    relay.held.store(true, Ordering::SeqCst);
    let ordered = {
        let (power, id) = (power.clone(), id.to_string());
        tokio::spawn(async move {
            power
                .request(&id, PowerOp::Act(PowerAction::On), None, "operator")
                .await
        })
    };
    wait_for(
        "the edge to reach for the BMC",
        Duration::from_secs(20),
        || {
            let seen = relay.seen_while_held.load(Ordering::SeqCst);
            async move { seen > 0 }
        },
    )
    .await
    .unwrap();
    wan.cut();
    relay.held.store(false, Ordering::SeqCst);
    let outcome = ordered.await.unwrap().unwrap();
    assert!(outcome.pending, "{outcome:?}");

    // The operation completes at the site during the cut.
    wait_for(
        "the machine to power on during the cut",
        Duration::from_secs(30),
        || {
            let on = sim.power_is_on();
            async move { on }
        },
    )
    .await
    .unwrap();
    assert!(!leaf.is_linked(), "the WAN link is still up");
    let store = c.controller.store().clone();
    let (record, _) = store.machine(&id).await.unwrap().unwrap();
    assert_eq!(
        record.power,
        PowerState::Unknown,
        "the result crossed a cut link"
    );

    // The heal: the queued result arrives, is recorded, and is one event.
    wan.heal();
    leaf.wait_linked(Duration::from_secs(30)).unwrap();
    wait_for(
        "the result to be recorded after the heal",
        Duration::from_secs(60),
        || {
            let (store, id) = (store.clone(), id.clone());
            async move {
                store
                    .machine(&id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|(r, _)| r.power == PowerState::On)
            }
        },
    )
    .await
    .unwrap();
    let events = common::power_events(&hub_client, &id).await;
    let ons: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"]["request_id"] == outcome.request_id.as_str())
        .collect();
    assert_eq!(ons.len(), 1, "{events:?}");
    assert_eq!(ons[0]["kind"]["state"], "on");
    assert_eq!(ons[0]["kind"]["by"], "operator");

    cancel.cancel();
    c.stop().await;
}

/// The shipped site permissions: a site's edge reads its own machines' BMC settings
/// (passwords) and no other site's, and may not write them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_reads_only_its_own_bmc_settings() {
    if !system_test(&[Need::Tool("nats-server")]) {
        return;
    }
    let hub = Hub::start(HubOptions::default().sites(["a", "b"])).unwrap();
    let leaf_b = Leaf::start(&hub, "b", LeafOptions::default()).unwrap();
    leaf_b.wait_linked(Duration::from_secs(20)).unwrap();
    let (user, password) = hub.controller_credentials();
    let mut cfg = config(&hub.url());
    cfg.nats_user = Some(user.to_owned());
    cfg.nats_password = Some(password.to_owned());
    let c = Running::start(cfg).await;
    let store = c.controller.store().clone();
    let settings = |site: &str, machine: &str| substruct_wire::power_msg::BmcSettings {
        machine_id: substruct_wire::MachineId::new(machine).unwrap(),
        driver: substruct_wire::power::BmcDriverKind::Ipmi,
        address: "10.0.0.9".into(),
        user: "admin".into(),
        password: format!("secret-of-{site}"),
        cert_pin: None,
        system_id: None,
    };
    store
        .set_bmc_settings(&SiteId::new("a").unwrap(), &settings("a", "m-a"))
        .await
        .unwrap();
    store
        .set_bmc_settings(&SiteId::new("b").unwrap(), &settings("b", "m-b"))
        .await
        .unwrap();

    let site_b = SiteId::new("b").unwrap();
    let edge_b = leaf_b
        .edge_login()
        .unwrap()
        .options()
        .unwrap()
        .custom_inbox_prefix(subjects::site_inbox_prefix(&site_b))
        .connect(leaf_b.url())
        .await
        .unwrap();
    // Its own: readable, directly and through the mirror's watch.
    let own = substruct_edge::power::table::fetch(
        &edge_b,
        Some(HUB_JS_DOMAIN),
        &site_b,
        &substruct_wire::MachineId::new("m-b").unwrap(),
    )
    .await;
    assert_eq!(own.map(|s| s.password), Some("secret-of-b".to_owned()));
    // Site a's: refused by the hub (a direct get of another site's key).
    let js = substruct_runtime::jetstream_context(edge_b.clone(), Some(HUB_JS_DOMAIN));
    let kv = js.get_key_value(subjects::KV_BMC).await.unwrap();
    let theirs = tokio::time::timeout(Duration::from_secs(10), kv.get("a.m-a")).await;
    assert!(
        !matches!(theirs, Ok(Ok(Some(_)))),
        "site b read site a's BMC password"
    );
    // And no writes.
    let write = tokio::time::timeout(
        Duration::from_secs(10),
        kv.put("b.m-b", bytes::Bytes::from_static(b"x")),
    )
    .await;
    assert!(!matches!(write, Ok(Ok(_))), "site b wrote KV bmc");
    c.stop().await;
}
