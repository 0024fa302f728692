//! Which machine does a report belong to? A pure function over the report and the
//! candidate records the store found for its identity facts: no I/O, no clock.
//!
//! Identity facts are the usable SMBIOS UUID, the usable serial, every usable MAC
//! and every real disk serial. A candidate *agrees* with a report when they share a
//! fact and nothing contradicts it: a different real UUID or serial contradicts,
//! and a shared UUID alone is not enough when the serials, MACs or disk serials on
//! both sides all differ (duplicated SMBIOS UUIDs are common across a fleet).
//! Facts shared with a machine that does not agree, or with a second machine, are
//! flagged as [`Conflict`]s; two machines are never merged into one.

use std::collections::BTreeSet;

use substruct_wire::report::{is_bogus_identity, HardwareReport};
use substruct_wire::{BootCredential, Mac, MachineId, SiteId, SitePublicKey};

use crate::record::{Conflict, MachineRecord};

/// Longest machine id [`MachineId`] accepts.
const MAX_ID_LEN: usize = 64;

/// One identity fact, as reported.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fact {
    /// SMBIOS system UUID, lowercased.
    Uuid(String),
    /// The first real serial among system, chassis and board.
    Serial(String),
    Mac(Mac),
    DiskSerial(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FactKind {
    Uuid,
    Serial,
    Mac,
    DiskSerial,
}

impl Fact {
    fn kind(&self) -> FactKind {
        match self {
            Self::Uuid(_) => FactKind::Uuid,
            Self::Serial(_) => FactKind::Serial,
            Self::Mac(_) => FactKind::Mac,
            Self::DiskSerial(_) => FactKind::DiskSerial,
        }
    }

    /// Key in KV bucket `machine_index`: `uuid.…`, `serial.…`, `mac.aabbccddeeff`,
    /// `disk.…`. A value that is not plain `[A-Za-z0-9_-]` is hex-encoded as
    /// `serial.hex.…`, which can never collide with a plain (single-token) value.
    pub fn index_key(&self) -> String {
        match self {
            Self::Uuid(v) => format!("uuid.{}", key_token(v)),
            Self::Serial(v) => format!("serial.{}", key_token(v)),
            Self::Mac(m) => format!("mac.{}", m.to_key()),
            Self::DiskSerial(v) => format!("disk.{}", key_token(v)),
        }
    }

    /// For humans: `smbios uuid …`, `serial …`, `mac …`, `disk serial …`.
    pub fn describe(&self) -> String {
        match self {
            Self::Uuid(v) => format!("smbios uuid {v}"),
            Self::Serial(v) => format!("serial {v:?}"),
            Self::Mac(m) => format!("mac {m}"),
            Self::DiskSerial(v) => format!("disk serial {v:?}"),
        }
    }
}

fn key_token(value: &str) -> String {
    let plain = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        value.to_owned()
    } else {
        let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
        format!("hex.{hex}")
    }
}

/// The identity facts of a report, sorted and without duplicates.
pub fn identity_facts(report: &HardwareReport) -> Vec<Fact> {
    let mut facts = BTreeSet::new();
    if let Some(uuid) = report.usable_uuid() {
        facts.insert(Fact::Uuid(uuid.to_ascii_lowercase()));
    }
    if let Some(serial) = report.usable_serial() {
        facts.insert(Fact::Serial(serial.to_owned()));
    }
    for mac in report.macs() {
        facts.insert(Fact::Mac(mac));
    }
    for disk in &report.disks {
        if let Some(serial) = disk.serial.as_deref().map(str::trim) {
            if !is_bogus_identity(serial) {
                facts.insert(Fact::DiskSerial(serial.to_owned()));
            }
        }
    }
    facts.into_iter().collect()
}

/// What to do with a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The report belongs to this known machine.
    Update(MachineId),
    /// The report is a machine not seen before; this is its new id.
    Create(MachineId),
    /// The report has no usable identity fact at all.
    NoIdentity,
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub action: Action,
    /// Facts of this report other machines also report; to record on the target.
    pub conflicts: Vec<Conflict>,
    /// The report's identity facts (what the index must point at the target).
    pub facts: Vec<Fact>,
}

impl Resolution {
    /// The conflicts to record on the *other* machines, once the target is known.
    pub fn mirrored_conflicts(&self, target: &MachineId) -> Vec<(MachineId, Conflict)> {
        self.conflicts
            .iter()
            .map(|c| {
                (
                    c.other_machine.clone(),
                    Conflict {
                        fact: c.fact.clone(),
                        other_machine: target.clone(),
                    },
                )
            })
            .collect()
    }
}

struct Related<'a> {
    record: &'a MachineRecord,
    shared: Vec<Fact>,
    agrees: bool,
}

/// Decides which machine `report` belongs to, given every record the index (or a
/// derived id) pointed at. `candidates` may hold unrelated records; their ids are
/// treated as taken when a new id is chosen.
pub fn resolve(report: &HardwareReport, candidates: &[MachineRecord]) -> Resolution {
    let facts = identity_facts(report);
    if facts.is_empty() {
        return Resolution {
            action: Action::NoIdentity,
            conflicts: Vec::new(),
            facts,
        };
    }
    let mut seen = BTreeSet::new();
    let mut related: Vec<Related<'_>> = Vec::new();
    for record in candidates {
        if !seen.insert(&record.id) {
            continue;
        }
        let theirs = identity_facts(&record.facts);
        let shared: Vec<Fact> = facts
            .iter()
            .filter(|f| theirs.contains(f))
            .cloned()
            .collect();
        if shared.is_empty() {
            continue;
        }
        let agrees = agrees(&facts, &theirs, &shared);
        related.push(Related {
            record,
            shared,
            agrees,
        });
    }
    // The best agreeing candidate: the one sharing the strongest facts.
    let target = related
        .iter()
        .filter(|r| r.agrees)
        .max_by_key(|r| (strength(&r.shared), std::cmp::Reverse(&r.record.id)))
        .map(|r| r.record.id.clone());
    let mut conflicts: Vec<Conflict> = related
        .iter()
        .filter(|r| Some(&r.record.id) != target.as_ref())
        .flat_map(|r| {
            r.shared.iter().map(|f| Conflict {
                fact: f.describe(),
                other_machine: r.record.id.clone(),
            })
        })
        .collect();
    conflicts.sort();
    conflicts.dedup();
    let action = match target {
        Some(id) => Action::Update(id),
        None => {
            let claimed: BTreeSet<&Fact> = related.iter().flat_map(|r| &r.shared).collect();
            let taken: BTreeSet<&str> = candidates.iter().map(|r| r.id.as_str()).collect();
            new_id(&facts, &claimed, &taken)
        }
    };
    Resolution {
        action,
        conflicts,
        facts,
    }
}

fn values(facts: &[Fact], kind: FactKind) -> impl Iterator<Item = &Fact> {
    facts.iter().filter(move |f| f.kind() == kind)
}

fn agrees(ours: &[Fact], theirs: &[Fact], shared: &[Fact]) -> bool {
    let both_differ = |kind: FactKind| {
        values(ours, kind).next().is_some()
            && values(theirs, kind).next().is_some()
            && values(shared, kind).next().is_none()
    };
    // A different real UUID or serial: another machine, whatever else matches.
    if both_differ(FactKind::Uuid) || both_differ(FactKind::Serial) {
        return false;
    }
    // Only the UUID matches: a duplicated SMBIOS UUID when everything else differs.
    let uuid_only = shared.iter().all(|f| f.kind() == FactKind::Uuid);
    if uuid_only
        && [FactKind::Serial, FactKind::Mac, FactKind::DiskSerial]
            .into_iter()
            .any(both_differ)
    {
        return false;
    }
    true
}

/// What a report proves about the machine that sent it ([`proof`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// A boot credential signed by the reporting site's registered key, for that site,
    /// unexpired, for this MAC, which the report has; `boot_key` is its boot user key
    /// (where the machine's commands go).
    Credential { mac: Mac, boot_key: String },
    /// The site allows unauthenticated reports; `boot_key` is the boot user key of a
    /// credential that verified anyway (its commands then go to its inbox).
    SiteAllows { boot_key: Option<String> },
    /// Neither: why not (the prospector is told).
    Missing(String),
}

/// Pure: what `credential` proves for `report` from `site`, given the site's registered
/// `key` and its `allow_unauthenticated` setting, at `now_unix_s`.
pub fn proof(
    credential: Option<&BootCredential>,
    site: &SiteId,
    key: Option<&SitePublicKey>,
    allow_unauthenticated: bool,
    report: &HardwareReport,
    now_unix_s: u64,
) -> Proof {
    let verdict = match (credential, key) {
        (None, _) => Err("the report carries no boot credential".to_owned()),
        (Some(_), None) => Err(format!("site {site} has no registered key")),
        (Some(c), Some(k)) => c
            .verify(k, site, now_unix_s)
            .and_then(|claims| {
                claims
                    .require_mac(report.macs().iter())
                    .map(|mac| (mac, claims.boot_key))
            })
            .map_err(|e| e.to_string()),
    };
    match verdict {
        // The site's opt-out: any report may speak for a machine, as before credentials
        // (a valid credential still names the inbox its commands go to).
        Ok((_, boot_key)) if allow_unauthenticated => Proof::SiteAllows {
            boot_key: Some(boot_key),
        },
        Err(_) if allow_unauthenticated => Proof::SiteAllows { boot_key: None },
        Ok((mac, boot_key)) => Proof::Credential { mac, boot_key },
        Err(why) => Proof::Missing(why),
    }
}

impl Proof {
    /// The verified boot user key, if the report proved one.
    pub fn boot_key(&self) -> Option<&str> {
        match self {
            Proof::Credential { boot_key, .. } => Some(boot_key),
            Proof::SiteAllows { boot_key } => boot_key.as_deref(),
            Proof::Missing(_) => None,
        }
    }
}

/// Whether a report with `proof` may speak for the known machine `record` (update its
/// facts and site, receive its instructions and tokens): only with a credential for one
/// of the record's MACs, or where the site allows unauthenticated reports. The error
/// says why not.
pub fn may_speak_for(record: &MachineRecord, proof: &Proof) -> Result<(), String> {
    match proof {
        Proof::SiteAllows { .. } => Ok(()),
        Proof::Credential { mac, .. } => {
            if identity_facts(&record.facts).contains(&Fact::Mac(*mac)) {
                Ok(())
            } else {
                Err(format!(
                    "the report matches machine {}, but its boot credential is for MAC {mac}, \
                     not one of that machine's MACs",
                    record.id
                ))
            }
        }
        Proof::Missing(why) => Err(format!(
            "the report matches known machine {} and may not speak for it: {why} \
             (boot it through its site's edge, or register the site's key: \
             substruct sites add SITE --key PUBKEY)",
            record.id
        )),
    }
}

fn strength(shared: &[Fact]) -> u32 {
    shared
        .iter()
        .map(|f| match f.kind() {
            FactKind::Uuid => 1000,
            FactKind::Serial => 100,
            FactKind::DiskSerial => 10,
            FactKind::Mac => 1,
        })
        .sum()
}

/// `[a-z0-9-]` only, no leading/trailing/double '-', at most `max` characters.
fn sanitize(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max));
    for c in value.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        if out.len() >= max {
            break;
        }
        out.push(c);
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The id of a new machine: the lowercase UUID when real and not claimed by another
/// machine, else `sn-<serial>`, else `mac-<lowest mac>`, else `disk-<disk serial>`;
/// the first option not taken, else the first with a `-2`, `-3`, … suffix.
fn new_id(facts: &[Fact], claimed: &BTreeSet<&Fact>, taken: &BTreeSet<&str>) -> Action {
    let option = |fact: &Fact| {
        let (prefix, value) = match fact {
            Fact::Uuid(v) => ("", v.clone()),
            Fact::Serial(v) => ("sn-", v.clone()),
            Fact::Mac(m) => ("mac-", m.to_key()),
            Fact::DiskSerial(v) => ("disk-", v.clone()),
        };
        let body = sanitize(&value, MAX_ID_LEN - prefix.len());
        (!body.is_empty()).then(|| format!("{prefix}{body}"))
    };
    let mut options: Vec<String> = [
        FactKind::Uuid,
        FactKind::Serial,
        FactKind::Mac,
        FactKind::DiskSerial,
    ]
    .into_iter()
    // The lowest unclaimed value of each kind (facts are sorted).
    .filter_map(|kind| values(facts, kind).find(|f| !claimed.contains(f)))
    .filter_map(option)
    .collect();
    if options.is_empty() {
        // Every fact is claimed by another machine: still a new machine.
        options.extend(facts.iter().filter_map(option));
    }
    let valid = |s: &str| {
        MachineId::new(s)
            .ok()
            .filter(|id| !taken.contains(id.as_str()))
    };
    if let Some(id) = options.iter().find_map(|o| valid(o)) {
        return Action::Create(id);
    }
    let base = options.first().cloned().unwrap_or_else(|| "machine".into());
    for n in 2u32.. {
        let suffix = format!("-{n}");
        let mut stem = base.clone();
        stem.truncate(MAX_ID_LEN - suffix.len());
        let stem = stem.trim_end_matches('-');
        if let Some(id) = valid(&format!("{stem}{suffix}")) {
            return Action::Create(id);
        }
    }
    Action::NoIdentity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_makes_valid_ids() {
        assert_eq!(sanitize("  AB/12 x..Y-", 60), "ab-12-x-y");
        assert_eq!(sanitize("---", 60), "");
        assert_eq!(sanitize("abcdef", 3), "abc");
        assert!(MachineId::new(format!("sn-{}", sanitize(&"Z".repeat(200), 61))).is_ok());
    }

    #[test]
    fn index_keys_are_valid_kv_keys() {
        assert_eq!(Fact::Serial("CZ-1_a".into()).index_key(), "serial.CZ-1_a");
        assert_eq!(Fact::Serial("a.b".into()).index_key(), "serial.hex.612e62");
        assert_eq!(
            Fact::Mac(Mac([0x52, 0x54, 0, 0, 0, 1])).index_key(),
            "mac.525400000001"
        );
    }

    fn with_macs(macs: &[Mac]) -> HardwareReport {
        HardwareReport {
            nics: macs
                .iter()
                .enumerate()
                .map(|(i, m)| substruct_wire::report::Nic {
                    name: format!("eth{i}"),
                    mac: *m,
                    driver: None,
                    pci_address: None,
                    speed_mbps: None,
                    carrier: None,
                })
                .collect(),
            ..HardwareReport::default()
        }
    }

    #[test]
    fn only_a_valid_credential_for_one_of_the_records_macs_speaks_for_it() {
        const NOW: u64 = 1_790_000_000;
        let site = SiteId::new("dc1").unwrap();
        let key = substruct_wire::SiteKey::from_raw([5; 32]).unwrap();
        let (a, b) = (Mac([2, 0, 0, 0, 0, 0xa]), Mac([2, 0, 0, 0, 0, 0xb]));
        let record_b = MachineRecord::new(
            MachineId::new("b").unwrap(),
            site.clone(),
            with_macs(&[b]),
            vec![],
            0,
        );
        let cred = |mac| BootCredential::issue(&key, &site, mac, NOW, 3600, [1; 32]).unwrap();
        let pk = key.public_key();
        let check = |c: Option<&BootCredential>,
                     k: Option<&SitePublicKey>,
                     allow: bool,
                     report: &HardwareReport| {
            may_speak_for(&record_b, &proof(c, &site, k, allow, report, NOW))
        };
        // B's own credential, B's report: yes.
        assert_eq!(
            check(Some(&cred(b)), Some(&pk), false, &with_macs(&[b])),
            Ok(())
        );
        // No credential; no registered key; A's credential with B's MAC reported;
        // A's credential with both MACs reported: no, each naming why.
        let e = check(None, Some(&pk), false, &with_macs(&[b])).unwrap_err();
        assert!(e.contains("no boot credential"), "{e}");
        let e = check(Some(&cred(b)), None, false, &with_macs(&[b])).unwrap_err();
        assert!(e.contains("no registered key"), "{e}");
        let e = check(Some(&cred(a)), Some(&pk), false, &with_macs(&[b])).unwrap_err();
        assert!(e.contains("which the report does not have"), "{e}");
        let e = check(Some(&cred(a)), Some(&pk), false, &with_macs(&[a, b])).unwrap_err();
        assert!(e.contains("not one of that machine's MACs"), "{e}");
        // The site's opt-out lets a report without proof through.
        assert_eq!(check(None, None, true, &with_macs(&[b])), Ok(()));
    }
}
