//! Boot credentials against a real nats-server and an in-process controller: a report
//! speaks for a known machine only with a credential its site's key signed for one of
//! that machine's MACs. Everything else leaves the record as it was and gets no
//! instruction.

#![allow(clippy::unwrap_used)]

mod common;

use common::{
    config, connect, credential, discover, discover_with, register_site_key, report, site_key,
    Running,
};
use substruct_controller::record::MachineRecord;
use substruct_testkit::NatsServer;
use substruct_wire::messages::ErrorCode;
use substruct_wire::{BootCredential, Mac, MachineId, SiteId};

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0xa0, 0, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0xb0, 0, 1];

async fn record(c: &Running, id: &MachineId) -> MachineRecord {
    c.controller.store().machine(id).await.unwrap().unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_credential_for_one_of_its_macs_speaks_for_a_known_machine() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;
    register_site_key(&client, "dc1").await;
    register_site_key(&client, "dc2").await;

    let report_a = report(
        Some("aaaaaaaa-0000-0000-0000-00000000000a"),
        Some("SN-A"),
        &[MAC_A],
        &["DA"],
    );
    let report_b = report(
        Some("bbbbbbbb-0000-0000-0000-00000000000b"),
        Some("SN-B"),
        &[MAC_B],
        &["DB"],
    );
    let a = discover(&client, "dc1", report_a.clone())
        .await
        .unwrap()
        .machine_id;
    let b = discover(&client, "dc1", report_b.clone())
        .await
        .unwrap()
        .machine_id;
    let b_before = record(&c, &b).await;

    // A, with a valid credential for its own MAC, updates A.
    let mut a_again = report_a.clone();
    a_again.disks[0].size_bytes += 1;
    let reply = discover(&client, "dc1", a_again.clone()).await.unwrap();
    assert_eq!(reply.machine_id, a);
    assert_eq!(record(&c, &a).await.facts, a_again);

    // Fake facts for B: the attacker's report claims B's identity.
    let mut forged = report_b.clone();
    forged.memory.total_bytes = 1;
    let refused = |e: substruct_wire::messages::ErrorReply, why: &str| {
        assert_eq!(e.code, ErrorCode::Forbidden, "{}", e.message);
        assert!(e.message.contains(b.as_str()), "{}", e.message);
        assert!(e.message.contains(why), "{}", e.message);
    };

    // No credential at all.
    let e = discover_with(&client, "dc1", forged.clone(), None)
        .await
        .unwrap_err();
    refused(e, "no boot credential");

    // A's credential, with B's facts (A's MAC not in the report).
    let a_cred = credential("dc1", Mac(MAC_A));
    let e = discover_with(&client, "dc1", forged.clone(), Some(a_cred.clone()))
        .await
        .unwrap_err();
    refused(e, "52:54:00:a0:00:01");

    // A's credential, with A's MAC added to B's facts: the report is B's (serial,
    // uuid), the credential names a MAC B does not have.
    let mut with_a_mac = forged.clone();
    with_a_mac.nics.push(report_a.nics[0].clone());
    let e = discover_with(&client, "dc1", with_a_mac, Some(a_cred))
        .await
        .unwrap_err();
    refused(e, "not one of that machine's MACs");

    // A credential for B's MAC signed by another site's key, or for another site.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let wrong_key = BootCredential::issue(
        &site_key("dc2"),
        &SiteId::new("dc1").unwrap(),
        Mac(MAC_B),
        now,
        3600,
        [1; 32],
    )
    .unwrap();
    let e = discover_with(&client, "dc1", forged.clone(), Some(wrong_key))
        .await
        .unwrap_err();
    refused(e, "signature");
    // dc1's key, but claims for dc2 (the key signed a boot elsewhere).
    let other_site = BootCredential::issue(
        &site_key("dc1"),
        &SiteId::new("dc2").unwrap(),
        Mac(MAC_B),
        now,
        3600,
        [3; 32],
    )
    .unwrap();
    let e = discover_with(&client, "dc1", forged.clone(), Some(other_site))
        .await
        .unwrap_err();
    refused(e, "not \"dc1\"");

    // An expired credential for B's MAC.
    let expired = BootCredential::issue(
        &site_key("dc1"),
        &SiteId::new("dc1").unwrap(),
        Mac(MAC_B),
        now - 7200,
        3600,
        [2; 32],
    )
    .unwrap();
    let e = discover_with(&client, "dc1", forged.clone(), Some(expired))
        .await
        .unwrap_err();
    refused(e, "expired");

    // Garbage in the credential's place.
    let garbage = BootCredential::new("0123456789abcdef0123456789abcdef").unwrap();
    let e = discover_with(&client, "dc1", forged.clone(), Some(garbage))
        .await
        .unwrap_err();
    refused(e, "malformed");

    // From another site, without a credential of that site: B does not move.
    let e = discover_with(&client, "dc2", forged.clone(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden, "{}", e.message);

    // B's record: facts, site and revision untouched by all of the above.
    let b_after = record(&c, &b).await;
    assert_eq!(b_after, b_before);

    // B itself, booted through dc1's edge, still updates B.
    let reply = discover(&client, "dc1", forged.clone()).await.unwrap();
    assert_eq!(reply.machine_id, b);
    assert_eq!(record(&c, &b).await.facts, forged);

    // A new machine needs no credential: a report without one may create a record.
    let new = report(None, Some("SN-NEW"), &[[0x52, 0x54, 0, 0xc0, 0, 1]], &[]);
    assert!(discover_with(&client, "dc1", new, None).await.is_ok());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_without_a_key_refuses_updates_unless_it_allows_unauthenticated_reports() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;
    let r = report(None, Some("SN-LAB"), &[MAC_A], &[]);
    // No registration: creating is allowed, updating is not.
    let id = discover_with(&client, "lab", r.clone(), None)
        .await
        .unwrap()
        .machine_id;
    let e = discover_with(
        &client,
        "lab",
        r.clone(),
        Some(credential("lab", Mac(MAC_A))),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert!(e.message.contains("no registered key"), "{}", e.message);

    // The lab's opt-out: `substruct sites add lab --allow-unauthenticated true`.
    let api = reqwest::Client::new();
    let status = api
        .put(format!("{}/api/v1/sites/lab", c.url()))
        .bearer_auth(common::TOKEN)
        .json(&serde_json::json!({"allow_unauthenticated": true}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let reply = discover_with(&client, "lab", r, None).await.unwrap();
    assert_eq!(reply.machine_id, id);
    c.stop().await;
}
