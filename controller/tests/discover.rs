//! Discover requests against a real nats-server and in-process controllers.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{config, connect, discover, event_count, random_report, report, request_raw, Running};
use futures::StreamExt;
use rand::SeedableRng;
use substruct_testkit::{wait_for, NatsServer};
use substruct_wire::messages::{DiscoverRequest, ErrorCode};
use substruct_wire::report::Disk;
use substruct_wire::{MachineId, SiteId};

const M1: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const M2: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controllers_and_a_thousand_prospectors_give_a_thousand_machines() {
    let nats = NatsServer::start().unwrap();
    let a = Running::start(config(&nats.url())).await;
    let b = Running::start(config(&nats.url())).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let reports: Vec<_> = (0..1000).map(|_| random_report(&mut rng)).collect();
    let clients = [connect(&nats.url()).await, connect(&nats.url()).await];

    let replies: Vec<_> = futures::stream::iter(reports.iter().enumerate())
        .map(|(i, r)| {
            let client = clients[i % 2].clone();
            let site = format!("site{}", i % 7);
            async move { (i, discover(&client, &site, r.clone()).await) }
        })
        .buffer_unordered(200)
        .collect()
        .await;

    assert_eq!(replies.len(), 1000);
    let mut ids = BTreeSet::new();
    for (i, reply) in replies {
        let reply = reply.unwrap_or_else(|e| panic!("prospector {i} refused: {e:?}"));
        let uuid = reports[i].dmi.product_uuid.clone().unwrap();
        assert_eq!(reply.machine_id.as_str(), uuid, "prospector {i}");
        assert!(
            ids.insert(reply.machine_id),
            "duplicate id for prospector {i}"
        );
    }
    let (machines, index) = a.controller.store().key_counts().await.unwrap();
    assert_eq!(machines, 1000);
    // uuid + serial + 2 MACs + 1 disk serial per machine.
    assert_eq!(index, 5000);
    let listed = b.controller.store().list_machines().await.unwrap();
    assert_eq!(listed.len(), 1000);
    assert!(listed
        .iter()
        .all(|m| m.report_count == 1 && m.conflicts.is_empty()));
    assert_eq!(event_count(&clients[0]).await, 1000);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_report_twice_is_one_machine_even_when_sent_concurrently() {
    let nats = NatsServer::start().unwrap();
    let a = Running::start(config(&nats.url())).await;
    let b = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;

    let r = report(
        Some("AAAAAAAA-1111-2222-3333-444444444444"),
        Some("CZ1"),
        &[M1],
        &["D1"],
    );
    let first = discover(&client, "dc1", r.clone()).await.unwrap();
    let second = discover(&client, "dc1", r.clone()).await.unwrap();
    assert_eq!(
        first.machine_id.as_str(),
        "aaaaaaaa-1111-2222-3333-444444444444"
    );
    assert_eq!(first, second);
    let (record, _) = a
        .controller
        .store()
        .machine(&first.machine_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.report_count, 2);
    assert!(record.last_seen_unix_ms >= record.first_seen_unix_ms);

    // 24 copies of a new machine's report at once, through both controllers.
    let r = report(None, Some("SERIAL-X"), &[M2], &[]);
    let replies: Vec<_> =
        futures::future::join_all((0..24).map(|_| discover(&client, "dc2", r.clone()))).await;
    for reply in &replies {
        assert_eq!(reply.as_ref().unwrap().machine_id.as_str(), "sn-serial-x");
    }
    let (record, _) = b
        .controller
        .store()
        .machine(&MachineId::new("sn-serial-x").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.report_count, 24);
    assert!(record.conflicts.is_empty());
    assert_eq!(a.controller.store().key_counts().await.unwrap(), (2, 6));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_uuid_gives_two_machines_each_flagged() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;
    let uuid = "12345678-1234-1234-1234-123456789abc";
    let a = discover(&client, "dc1", report(Some(uuid), Some("A1"), &[M1], &[]))
        .await
        .unwrap();
    let b = discover(&client, "dc1", report(Some(uuid), Some("B1"), &[M2], &[]))
        .await
        .unwrap();
    assert_eq!(a.machine_id.as_str(), uuid);
    assert_eq!(b.machine_id.as_str(), "sn-b1");
    let store = c.controller.store();
    let (ra, _) = store.machine(&a.machine_id).await.unwrap().unwrap();
    let (rb, _) = store.machine(&b.machine_id).await.unwrap().unwrap();
    assert_eq!(ra.conflicts.len(), 1, "{:?}", ra.conflicts);
    assert_eq!(
        ra.conflicts[0].to_string(),
        format!("smbios uuid {uuid} also reported by machine sn-b1")
    );
    assert_eq!(rb.conflicts.len(), 1);
    assert_eq!(rb.conflicts[0].other_machine, a.machine_id);
    // discovered a, discovered b, conflict on b, conflict on a.
    assert_eq!(event_count(&client).await, 4);
    // B again: still B, no new conflict, no merge.
    let again = discover(&client, "dc1", report(Some(uuid), Some("B1"), &[M2], &[]))
        .await
        .unwrap();
    assert_eq!(again.machine_id, b.machine_id);
    assert_eq!(store.key_counts().await.unwrap().0, 2);
    assert_eq!(event_count(&client).await, 5);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_survives_controller_and_nats_restarts() {
    let mut nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let reports: Vec<_> = (0..20).map(|_| random_report(&mut rng)).collect();
    for r in &reports {
        discover(&client, "dc1", r.clone()).await.unwrap();
    }
    let before = c.controller.store().list_machines().await.unwrap();
    assert_eq!(before.len(), 20);
    c.stop().await;

    let c = Running::start(config(&nats.url())).await;
    assert_eq!(c.controller.store().list_machines().await.unwrap(), before);

    nats.restart().unwrap();
    // The controller reconnects by itself and serves again.
    let store = c.controller.store().clone();
    wait_for(
        "inventory after the nats-server restart",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move {
                store
                    .list_machines()
                    .await
                    .map(|l| l.len() == 20)
                    .unwrap_or(false)
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(store.list_machines().await.unwrap(), before);
    let client = connect(&nats.url()).await;
    let reply = discover(&client, "dc1", reports[0].clone()).await.unwrap();
    assert_eq!(
        reply.machine_id,
        before.iter().find(|m| m.facts == reports[0]).unwrap().id
    );
    let (record, _) = store.machine(&reply.machine_id).await.unwrap().unwrap();
    assert_eq!(record.report_count, 2);
    assert_eq!(store.key_counts().await.unwrap().0, 20);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_by_name_and_nothing_is_written() {
    let nats = NatsServer::start().unwrap();
    let mut cfg = config(&nats.url());
    cfg.sites = vec![SiteId::new("dc1").unwrap(), SiteId::new("dc2").unwrap()];
    cfg.limits.max_disks = 4;
    cfg.limits.max_string_len = 64;
    let c = Running::start(cfg).await;
    let client = connect(&nats.url()).await;
    let store = c.controller.store();
    let ok = discover(&client, "dc1", report(None, Some("OK1"), &[M1], &[]))
        .await
        .unwrap();
    let counts = store.key_counts().await.unwrap();
    let events = event_count(&client).await;

    let good = |site: &str| DiscoverRequest {
        site: SiteId::new(site).unwrap(),
        boot_token: None,
        report: report(None, Some("NEW1"), &[M2], &[]),
    };
    let refused = |bytes: Vec<u8>| common::decode_reply(&bytes).expect_err("must be refused");

    let e = refused(request_raw(&client, "dc1", b"not a substruct message".to_vec()).await);
    assert_eq!(e.code, ErrorCode::Malformed);
    assert!(e.message.contains("bad magic"), "{}", e.message);

    let mut v9 = substruct_wire::encode(&good("dc1")).unwrap();
    v9[4] = 9;
    let e = refused(request_raw(&client, "dc1", v9).await);
    assert_eq!(e.code, ErrorCode::UnsupportedVersion);
    assert!(
        e.message.contains("unsupported wire version 9"),
        "{}",
        e.message
    );

    let mut truncated = substruct_wire::encode(&good("dc1")).unwrap();
    truncated.truncate(20);
    let e = refused(request_raw(&client, "dc1", truncated).await);
    assert_eq!(e.code, ErrorCode::Malformed);
    assert!(
        e.message.contains("DiscoverRequest body does not decode"),
        "{}",
        e.message
    );

    let e = refused(
        request_raw(
            &client,
            "dc2",
            substruct_wire::encode(&good("dc1")).unwrap(),
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::WrongSite);
    assert!(
        e.message.contains("\"dc2\"") && e.message.contains("\"dc1\""),
        "{}",
        e.message
    );

    let e = discover(&client, "dc9", good("dc9").report)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::WrongSite);
    assert!(
        e.message.contains("\"dc9\" is not configured"),
        "{}",
        e.message
    );

    let mut big = good("dc1").report;
    big.disks = (0..5)
        .map(|i| Disk {
            name: format!("sd{i}"),
            ..Disk::default()
        })
        .collect();
    let e = discover(&client, "dc1", big).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
    assert!(e.message.contains("5 entries in disks"), "{}", e.message);

    let mut long = good("dc1").report;
    long.dmi.product_name = Some("x".repeat(65));
    let e = discover(&client, "dc1", long).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
    assert!(
        e.message.contains("dmi.product_name is 65 bytes"),
        "{}",
        e.message
    );

    let nobody = report(
        Some("00000000-0000-0000-0000-000000000000"),
        Some("Default string"),
        &[],
        &[],
    );
    let e = discover(&client, "dc1", nobody).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Malformed);
    assert!(e.message.contains("no usable identity"), "{}", e.message);

    assert_eq!(store.key_counts().await.unwrap(), counts);
    assert_eq!(event_count(&client).await, events);
    // Still serving.
    let again = discover(&client, "dc1", report(None, Some("OK1"), &[M1], &[]))
        .await
        .unwrap();
    assert_eq!(again, ok);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reports_sharing_a_uuid_are_never_merged() {
    let nats = NatsServer::start().unwrap();
    let a = Running::start(config(&nats.url())).await;
    let b = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;
    let uuid = "99999999-8888-7777-6666-555555555555";
    let ra = report(Some(uuid), Some("A1"), &[M1], &["DA"]);
    let rb = report(Some(uuid), Some("B1"), &[M2], &["DB"]);
    let replies = futures::future::join_all((0..20).map(|i| {
        let r = if i % 2 == 0 { ra.clone() } else { rb.clone() };
        let client = client.clone();
        async move { (i % 2, discover(&client, "dc1", r).await.unwrap().machine_id) }
    }))
    .await;
    let ids_a: BTreeSet<_> = replies
        .iter()
        .filter(|(k, _)| *k == 0)
        .map(|(_, id)| id.clone())
        .collect();
    let ids_b: BTreeSet<_> = replies
        .iter()
        .filter(|(k, _)| *k == 1)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids_a.len(), 1, "{ids_a:?}");
    assert_eq!(ids_b.len(), 1, "{ids_b:?}");
    assert_ne!(ids_a, ids_b);
    let store = a.controller.store();
    let machines = store.list_machines().await.unwrap();
    assert_eq!(machines.len(), 2);
    for m in &machines {
        // Never a merge: each record holds exactly one of the two serials.
        let serial = m.facts.dmi.product_serial.as_deref().unwrap();
        let expected = if ids_a.contains(&m.id) { "A1" } else { "B1" };
        assert_eq!(serial, expected);
        assert_eq!(m.report_count, 10);
    }
    // The duplicated UUID is flagged on both machines.
    assert!(
        machines.iter().all(|m| m.conflicts.len() == 1),
        "{machines:?}"
    );
    // Each serial and MAC points at its own machine.
    let id_a = ids_a.first().unwrap();
    let id_b = ids_b.first().unwrap();
    for (key, id) in [
        ("serial.A1", id_a),
        ("mac.525400000001", id_a),
        ("serial.B1", id_b),
        ("mac.525400000002", id_b),
    ] {
        let entry = store.index_get(key).await.unwrap().unwrap();
        assert_eq!(entry.machine.as_ref(), Some(id), "{key}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_moved_to_another_machine_is_flagged_on_both() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;
    let a = discover(
        &client,
        "dc1",
        report(
            Some("11111111-0000-0000-0000-000000000001"),
            Some("A1"),
            &[M1, M2],
            &[],
        ),
    )
    .await
    .unwrap();
    let b = discover(
        &client,
        "dc1",
        report(
            Some("22222222-0000-0000-0000-000000000002"),
            Some("B1"),
            &[M2],
            &[],
        ),
    )
    .await
    .unwrap();
    assert_ne!(a.machine_id, b.machine_id);
    let store = c.controller.store();
    let (ra, _) = store.machine(&a.machine_id).await.unwrap().unwrap();
    let (rb, _) = store.machine(&b.machine_id).await.unwrap().unwrap();
    assert_eq!(
        ra.conflicts[0].to_string(),
        format!(
            "mac 52:54:00:00:00:02 also reported by machine {}",
            b.machine_id
        )
    );
    assert_eq!(
        rb.conflicts[0].to_string(),
        format!(
            "mac 52:54:00:00:00:02 also reported by machine {}",
            a.machine_id
        )
    );
    // A without that NIC any more: the MAC's index entry moves to B on B's next report.
    discover(
        &client,
        "dc1",
        report(
            Some("11111111-0000-0000-0000-000000000001"),
            Some("A1"),
            &[M1],
            &[],
        ),
    )
    .await
    .unwrap();
    discover(
        &client,
        "dc1",
        report(
            Some("22222222-0000-0000-0000-000000000002"),
            Some("B1"),
            &[M2],
            &[],
        ),
    )
    .await
    .unwrap();
    let entry = store.index_get("mac.525400000002").await.unwrap().unwrap();
    assert_eq!(entry.machine, Some(b.machine_id));
    c.stop().await;
}
