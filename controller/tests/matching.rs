//! The pure matching function: which machine does a report belong to?

#![allow(clippy::unwrap_used)]

mod common;

use common::report;
use substruct_controller::matching::{identity_facts, resolve, Action, Fact};
use substruct_controller::record::MachineRecord;
use substruct_wire::{Mac, MachineId, SiteId};

const M1: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const M2: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
const M3: [u8; 6] = [0x52, 0x54, 0, 0, 0, 3];
const UUID: &str = "4C4C4544-0042-3510-8051-C4C04F4B4C32";

fn site() -> SiteId {
    SiteId::new("dc1").unwrap()
}

fn stored(id: &str, r: substruct_wire::report::HardwareReport) -> MachineRecord {
    MachineRecord::new(MachineId::new(id).unwrap(), site(), r, vec![], 1)
}

fn created(action: &Action) -> &str {
    match action {
        Action::Create(id) => id.as_str(),
        other => panic!("expected a new machine, got {other:?}"),
    }
}

#[test]
fn new_machine_gets_the_lowercase_uuid() {
    let r = report(Some(UUID), Some("CZ1"), &[M1], &["D1"]);
    let res = resolve(&r, &[]);
    assert_eq!(created(&res.action), UUID.to_ascii_lowercase());
    assert!(res.conflicts.is_empty());
    assert_eq!(res.facts.len(), 4);
}

#[test]
fn same_report_twice_is_one_machine() {
    let r = report(Some(UUID), Some("CZ1"), &[M1, M2], &["D1"]);
    let first = resolve(&r, &[]);
    let id = created(&first.action).to_owned();
    let record = stored(&id, r.clone());
    let second = resolve(&r, &[record]);
    assert_eq!(second.action, Action::Update(MachineId::new(id).unwrap()));
    assert!(second.conflicts.is_empty());
}

#[test]
fn duplicate_uuid_with_other_serial_and_macs_is_a_second_machine() {
    let a = report(Some(UUID), Some("CZ1"), &[M1], &["D1"]);
    let a_id = created(&resolve(&a, &[]).action).to_owned();
    let a_rec = stored(&a_id, a);

    let b = report(Some(UUID), Some("CZ2"), &[M2], &["D2"]);
    let res = resolve(&b, std::slice::from_ref(&a_rec));
    // The UUID is claimed by machine A, so B's id comes from its serial.
    assert_eq!(created(&res.action), "sn-cz2");
    assert_eq!(res.conflicts.len(), 1);
    assert_eq!(res.conflicts[0].other_machine, a_rec.id);
    assert_eq!(
        res.conflicts[0].to_string(),
        format!(
            "smbios uuid {} also reported by machine {a_id}",
            UUID.to_ascii_lowercase()
        )
    );
    // ...and A gets the mirror image.
    let b_id = MachineId::new("sn-cz2").unwrap();
    let mirrored = res.mirrored_conflicts(&b_id);
    assert_eq!(mirrored.len(), 1);
    assert_eq!(mirrored[0].0, a_rec.id);
    assert_eq!(mirrored[0].1.other_machine, b_id);

    // B reporting again is B, still flagged against A, never merged.
    let b_rec = stored("sn-cz2", b.clone());
    let again = resolve(&b, &[a_rec, b_rec]);
    assert_eq!(again.action, Action::Update(b_id));
    assert_eq!(again.conflicts.len(), 1);
}

#[test]
fn duplicate_uuid_without_serials_but_different_macs_is_a_second_machine() {
    let a = report(Some(UUID), None, &[M1], &[]);
    let a_rec = stored(created(&resolve(&a, &[]).action), a);
    let b = report(Some(UUID), None, &[M2], &[]);
    let res = resolve(&b, &[a_rec]);
    assert_eq!(created(&res.action), "mac-525400000002");
    assert_eq!(res.conflicts.len(), 1);
}

#[test]
fn bogus_uuid_is_ignored_and_the_id_comes_from_the_serial() {
    let r = report(
        Some("00000000-0000-0000-0000-000000000000"),
        Some("CZ 21/34 XYZ"),
        &[M1],
        &[],
    );
    let res = resolve(&r, &[]);
    assert_eq!(created(&res.action), "sn-cz-21-34-xyz");
    assert!(!res.facts.iter().any(|f| matches!(f, Fact::Uuid(_))));

    // The same for the all-F UUID and the QEMU placeholder.
    for bogus in [
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        "03000200-0400-0500-0006-000700080009",
    ] {
        let r = report(Some(bogus), Some("S9"), &[M1], &[]);
        assert_eq!(created(&resolve(&r, &[]).action), "sn-s9");
    }
}

#[test]
fn oem_placeholder_serial_is_ignored_and_the_id_comes_from_the_lowest_mac() {
    let r = report(None, Some("To be filled by O.E.M."), &[M3, M2], &[]);
    let res = resolve(&r, &[]);
    assert_eq!(created(&res.action), "mac-525400000002");
    assert!(!res.facts.iter().any(|f| matches!(f, Fact::Serial(_))));
    // Multicast and all-zero MACs are no identity.
    let r = report(
        None,
        Some("Default string"),
        &[[0; 6], [1, 0, 0x5e, 0, 0, 1], M3],
        &[],
    );
    assert_eq!(created(&resolve(&r, &[]).action), "mac-525400000003");
}

#[test]
fn no_identity_at_all_is_refused() {
    let r = report(
        Some("00000000-0000-0000-0000-000000000000"),
        Some("0"),
        &[],
        &[],
    );
    assert_eq!(resolve(&r, &[]).action, Action::NoIdentity);
}

#[test]
fn mac_moved_to_another_machine_is_a_conflict_not_a_merge() {
    let a = report(
        Some("11111111-0000-0000-0000-000000000001"),
        Some("A1"),
        &[M1, M2],
        &[],
    );
    let a_rec = stored(created(&resolve(&a, &[]).action), a);
    // Machine B, a different UUID and serial, now has NIC M2.
    let b = report(
        Some("22222222-0000-0000-0000-000000000002"),
        Some("B1"),
        &[M2, M3],
        &[],
    );
    let res = resolve(&b, std::slice::from_ref(&a_rec));
    assert_eq!(created(&res.action), "22222222-0000-0000-0000-000000000002");
    assert_eq!(res.conflicts.len(), 1);
    assert_eq!(
        res.conflicts[0].to_string(),
        format!(
            "mac 52:54:00:00:00:02 also reported by machine {}",
            a_rec.id
        )
    );
}

#[test]
fn facts_pointing_at_two_machines_update_the_best_and_flag_the_other() {
    let a = report(
        Some("11111111-0000-0000-0000-000000000001"),
        Some("A1"),
        &[M1],
        &[],
    );
    let b = report(None, None, &[M2], &["DISK-B"]);
    let a_rec = stored("11111111-0000-0000-0000-000000000001", a);
    let b_rec = stored("mac-525400000002", b);
    // A's UUID and serial, plus B's MAC.
    let r = report(
        Some("11111111-0000-0000-0000-000000000001"),
        Some("A1"),
        &[M1, M2],
        &[],
    );
    let res = resolve(&r, &[b_rec.clone(), a_rec.clone()]);
    assert_eq!(res.action, Action::Update(a_rec.id.clone()));
    assert_eq!(res.conflicts.len(), 1);
    assert_eq!(res.conflicts[0].other_machine, b_rec.id);
}

#[test]
fn a_derived_id_taken_by_an_unrelated_machine_gets_a_suffix() {
    // Two serials that sanitize to the same id.
    let a = report(None, Some("AB_1"), &[M1], &[]);
    let a_rec = stored("sn-ab-1", a);
    let b = report(None, Some("ab.1"), &[M2], &[]);
    let res = resolve(&b, &[a_rec]);
    // The serial id is taken: the MAC id is next.
    assert_eq!(created(&res.action), "mac-525400000002");
    let c = report(None, Some("ab 1"), &[], &[]);
    let taken = [stored("sn-ab-1", report(None, Some("AB_1"), &[M1], &[]))];
    assert_eq!(created(&resolve(&c, &taken).action), "sn-ab-1-2");
}

#[test]
fn same_machine_with_a_new_nic_is_still_one_machine() {
    let a = report(Some(UUID), Some("CZ1"), &[M1], &["D1"]);
    let a_rec = stored("x1", a);
    let r = report(Some(UUID), Some("CZ1"), &[M1, M3], &["D1"]);
    let res = resolve(&r, std::slice::from_ref(&a_rec));
    assert_eq!(res.action, Action::Update(a_rec.id));
    assert!(res.conflicts.is_empty());
}

#[test]
fn identity_facts_are_sorted_and_deduplicated() {
    let r = report(
        Some(UUID),
        Some("CZ1"),
        &[M2, M1, M2],
        &["D1", "D1", "0000"],
    );
    let facts = identity_facts(&r);
    assert_eq!(
        facts,
        vec![
            Fact::Uuid(UUID.to_ascii_lowercase()),
            Fact::Serial("CZ1".into()),
            Fact::Mac(Mac(M1)),
            Fact::Mac(Mac(M2)),
            Fact::DiskSerial("D1".into()),
        ]
    );
}
