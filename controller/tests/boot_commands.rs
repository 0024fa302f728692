//! Where a machine's commands go (issue 11): the controller stores the boot user key of
//! the credential a report proved (`MachineRecord::boot_user_key`), so its commands go to
//! `_INBOX_{site}.{key}.cmd`, the one subject that boot's NATS login may read. A later
//! boot's credential replaces the key; a report without a credential stores none.

#![allow(clippy::unwrap_used)]

mod common;

use common::{config, connect, discover_with, register_site_key, report, site_key, Running};
use substruct_controller::record::MachineRecord;
use substruct_testkit::NatsServer;
use substruct_wire::{BootCredential, Mac, MachineId, SiteId};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0xc0, 0, 1];
const OTHER: [u8; 6] = [0x52, 0x54, 0, 0xc0, 0, 2];

async fn record(c: &Running, id: &MachineId) -> MachineRecord {
    c.controller.store().machine(id).await.unwrap().unwrap().0
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A credential for `mac` at dc1 with the boot key from `seed`, and that key.
fn boot(mac: [u8; 6], seed: u8) -> (BootCredential, String) {
    let site = SiteId::new("dc1").unwrap();
    let key = site_key("dc1");
    let c = BootCredential::issue(&key, &site, Mac(mac), now(), 600, [seed; 32]).unwrap();
    let boot_key = c.verify(&key.public_key(), &site, now()).unwrap().boot_key;
    (c, boot_key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_names_the_boot_key_its_commands_go_to() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;
    register_site_key(&client, "dc1").await;
    let r = report(
        Some("cccccccc-0000-0000-0000-00000000000c"),
        Some("SN-C"),
        &[MAC],
        &["DC"],
    );

    // A new machine with a credential: its key is stored.
    let (first, first_key) = boot(MAC, 1);
    let id = discover_with(&client, "dc1", r.clone(), Some(first))
        .await
        .unwrap()
        .machine_id;
    assert_eq!(record(&c, &id).await.boot_user_key, Some(first_key.clone()));

    // The next boot's credential replaces it (the old inbox is gone with the old boot).
    let (second, second_key) = boot(MAC, 2);
    assert_ne!(first_key, second_key);
    discover_with(&client, "dc1", r.clone(), Some(second))
        .await
        .unwrap();
    assert_eq!(record(&c, &id).await.boot_user_key, Some(second_key));
    let subject = substruct_wire::subjects::boot_cmd(
        &SiteId::new("dc1").unwrap(),
        record(&c, &id).await.boot_user_key.as_deref().unwrap(),
    );
    assert!(subject.starts_with("_INBOX_dc1.U") && subject.ends_with(".cmd"));

    // A new machine reporting without a credential: no key (commands go to its
    // machine-id subject, where only a login-less development prospector listens).
    let other = report(
        Some("dddddddd-0000-0000-0000-00000000000d"),
        Some("SN-D"),
        &[OTHER],
        &["DD"],
    );
    let id2 = discover_with(&client, "dc1", other, None)
        .await
        .unwrap()
        .machine_id;
    assert_eq!(record(&c, &id2).await.boot_user_key, None);
    // A credential for another MAC than the report's proves nothing: no key either.
    let (wrong, _) = boot(MAC, 3);
    let third = report(
        Some("eeeeeeee-0000-0000-0000-00000000000e"),
        Some("SN-E"),
        &[[0x52, 0x54, 0, 0xc0, 0, 3]],
        &["DE"],
    );
    let id3 = discover_with(&client, "dc1", third, Some(wrong))
        .await
        .unwrap()
        .machine_id;
    assert_eq!(record(&c, &id3).await.boot_user_key, None);
}
