//! The machine record stored in KV bucket `machines` (as JSON, so operators can read
//! it with `nats kv get machines ID`), and the events written to the `EVENTS` stream.
//! Pure data and pure functions: no I/O, no clock (time comes in as an argument).

use std::fmt;

use serde::{Deserialize, Serialize};
use substruct_wire::intent::InstallFilesRecord;
use substruct_wire::messages::WipeMode;
use substruct_wire::power::{BmcDriverKind, PowerState};
use substruct_wire::report::HardwareReport;
use substruct_wire::{BootToken, MachineId, PowerRequestId, SiteId};

pub use crate::lifecycle::State as MachineState;

/// A per-machine secret that gates the install files and the callbacks. It is valid
/// while the machine is `assigned` or `installing` (or, for a wipe, until `Wiped`),
/// and removed from the record, the index and the edges when the machine leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ticket {
    pub token: BootToken,
    /// What the token is for.
    pub purpose: TicketPurpose,
    /// The site whose edge holds the install files.
    pub site: SiteId,
    pub issued_unix_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketPurpose {
    Install,
    Wipe,
}

/// One identity fact another machine also reports: flagged, never merged.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct Conflict {
    /// The fact, described for humans: `smbios uuid …`, `serial …`, `mac …`, `disk serial …`.
    pub fact: String,
    /// The other machine that reports the same fact.
    pub other_machine: MachineId,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} also reported by machine {}",
            self.fact, self.other_machine
        )
    }
}

/// A machine as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineRecord {
    pub id: MachineId,
    /// The lifecycle state, flattened: `"state": "assigned", "profile": "…"`.
    #[serde(flatten)]
    pub state: MachineState,
    /// The token of the install (or wipe) in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<Ticket>,
    /// Disks to wipe the next time the prospector reports (set by a release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_wipe: Option<WipeMode>,
    /// The site of the latest report.
    pub site: SiteId,
    /// Unix time in milliseconds of the first report.
    pub first_seen_unix_ms: u64,
    /// Unix time in milliseconds of the latest report.
    pub last_seen_unix_ms: u64,
    /// How many reports were accepted for this machine.
    pub report_count: u64,
    /// Identity facts other machines share with this one (sorted, no duplicates).
    pub conflicts: Vec<Conflict>,
    /// The latest hardware report.
    pub facts: HardwareReport,
    /// The machine's power as its BMC last said (`unknown` without a BMC).
    #[serde(default = "unknown_power")]
    pub power: PowerState,
    /// The last power operation's error, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_error: Option<String>,
    /// The machine's BMC, without its password (KV `bmc` holds that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcInfo>,
    /// The latest power results applied (newest last, at most
    /// [`RECENT_POWER_REQUESTS`]): a result delivered twice is applied once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub power_requests: Vec<PowerRequestId>,
    /// The boot user key (`U…`) of the boot credential the latest accepted report
    /// carried: commands go to `_INBOX_{site}.{key}.cmd`, the one subject that
    /// prospector may read (`None`: a report without a verified credential; commands go
    /// to the machine's `machine.{id}.cmd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_user_key: Option<String>,
    /// The hostname the profile's pattern gave this machine at its latest assign or
    /// reinstall (`None` without a profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The install or wipe a callback completed last (until the next lifecycle change):
    /// the same callback again, whose reply was lost, is answered as completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Finished>,
    /// The side effects of the latest changes that are not known to be done yet, oldest
    /// first (the outbox): written in the change's own compare-and-set and removed once
    /// done, so a controller that dies in between leaves them for the next sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owed: Vec<Owed>,
    /// The latest install's progress as the callbacks told it (the installer or the
    /// prospector fetched a file, `done`, `failed`), oldest first, at most
    /// [`MAX_PROGRESS_STEPS`]; emptied when the next install's ticket is issued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<ProgressStep>,
}

/// Most steps [`MachineRecord::progress`] keeps (the oldest go first).
pub const MAX_PROGRESS_STEPS: usize = 16;

/// One step of an install: what happened and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProgressStep {
    /// `fetched preseed.cfg`, `fetched debian12.img`, `done`, `failed: REASON`.
    pub step: String,
    /// Unix time in milliseconds the controller heard of it.
    pub at_unix_ms: u64,
}

impl MachineRecord {
    /// Appends `step` (now) unless the same step is already there; keeps the newest
    /// [`MAX_PROGRESS_STEPS`]. Returns whether it changed anything.
    pub fn add_progress(&mut self, step: String, now_unix_ms: u64) -> bool {
        if self.progress.iter().any(|s| s.step == step) {
            return false;
        }
        self.progress.push(ProgressStep {
            step,
            at_unix_ms: now_unix_ms,
        });
        let excess = self.progress.len().saturating_sub(MAX_PROGRESS_STEPS);
        self.progress.drain(..excess);
        true
    }
}

/// A machine record as the API (`GET /api/v1/machines/{id}`, the record lists) and the
/// CLI (`machines show --json`, `machines list --json`) show it: the record, and facts
/// derived from it at its top, where `jq` finds them (`.secure_boot`). Never stored.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct MachineView<'a> {
    #[serde(flatten)]
    pub record: &'a MachineRecord,
    /// `facts.secure_boot`: `true` when UEFI Secure Boot is enforced, `false` when it is
    /// off or the machine boots BIOS, `null` when not known (the prospector could not
    /// tell, or reported before it knew how).
    #[schema(required = true)]
    pub secure_boot: Option<bool>,
}

impl<'a> From<&'a MachineRecord> for MachineView<'a> {
    fn from(record: &'a MachineRecord) -> Self {
        Self {
            record,
            secure_boot: record.facts.secure_boot,
        }
    }
}

/// The install or wipe a callback completed: its token stays in the index (and only
/// there) until the machine's next lifecycle change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finished {
    pub token: BootToken,
    pub site: SiteId,
    pub by: FinishedBy,
}

/// The callback that completed a [`Finished`] ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishedBy {
    Done,
    Wiped,
}

/// What one change still owes: its event, the tokens it retired and the install files
/// of the ticket it issued (boot intents are always re-derived from the record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Owed {
    /// Names the change: the record revision it was made on (one compare-and-set wins
    /// per revision), so its event is published once however often it is retried.
    pub change: u64,
    pub at_unix_ms: u64,
    /// The event the change owes the audit log.
    pub event: MachineEventKind,
    /// Tokens the change retired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdraw: Vec<Withdrawn>,
    /// The install files of the ticket the change issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<OwedFiles>,
}

/// Install files to publish at a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OwedFiles {
    pub site: SiteId,
    /// The rendered files (they hold the profile's secrets: never shown to a viewer).
    #[schema(value_type = Object)]
    pub files: InstallFilesRecord,
}

/// A retired token: its install files are withdrawn from `site`, and its index key
/// deleted unless a [`Finished`] still answers for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Withdrawn {
    pub token: BootToken,
    pub site: SiteId,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_index: bool,
}

/// How many applied power request ids a record remembers.
pub const RECENT_POWER_REQUESTS: usize = 32;

fn unknown_power() -> PowerState {
    PowerState::Unknown
}

/// A machine's BMC as the record and the API show it: never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BmcInfo {
    pub driver: BmcDriverKind,
    pub address: String,
    pub user: String,
    /// Always true once set: the password is stored (KV `bmc`), never shown back.
    pub password_set: bool,
    /// The site whose KV `bmc` key holds the settings.
    pub site: SiteId,
    /// Redfish: the BMC certificate's sha256, pinned on first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pin: Option<String>,
    /// Redfish: the member of the BMC's Systems collection, when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<String>,
}

impl MachineRecord {
    /// A new record for a machine seen for the first time: its first report applied
    /// (as [`Self::updated`] applies every later one) to a record that had none.
    pub fn new(
        id: MachineId,
        site: SiteId,
        facts: HardwareReport,
        conflicts: Vec<Conflict>,
        now_unix_ms: u64,
    ) -> Self {
        let unseen = Self {
            id,
            state: MachineState::Discovered,
            ticket: None,
            pending_wipe: None,
            site: site.clone(),
            first_seen_unix_ms: now_unix_ms,
            last_seen_unix_ms: now_unix_ms,
            report_count: 0,
            conflicts: Vec::new(),
            facts: HardwareReport::default(),
            power: PowerState::Unknown,
            power_error: None,
            bmc: None,
            power_requests: Vec::new(),
            boot_user_key: None,
            hostname: None,
            finished: None,
            owed: Vec::new(),
            progress: Vec::new(),
        };
        unseen.updated(site, facts, conflicts, now_unix_ms)
    }

    /// This record after one more report: new facts, `last_seen`, count, conflicts.
    pub fn updated(
        &self,
        site: SiteId,
        facts: HardwareReport,
        conflicts: Vec<Conflict>,
        now_unix_ms: u64,
    ) -> Self {
        let mut record = Self {
            site,
            facts,
            last_seen_unix_ms: now_unix_ms.max(self.last_seen_unix_ms),
            report_count: self.report_count.saturating_add(1),
            ..self.clone()
        };
        record.add_conflicts(conflicts);
        record
    }

    /// Adds conflicts not already recorded; returns those that are new.
    pub fn add_conflicts(&mut self, conflicts: Vec<Conflict>) -> Vec<Conflict> {
        let mut added = Vec::new();
        for c in conflicts {
            if c.other_machine != self.id && !self.conflicts.contains(&c) {
                self.conflicts.push(c.clone());
                added.push(c);
            }
        }
        self.conflicts.sort();
        added
    }
}

/// What happened to a machine; one message on `substruct.v1.events.{id}` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineEvent {
    pub machine_id: MachineId,
    pub at_unix_ms: u64,
    /// The machine record's KV revision after the change (for a change's event that a
    /// crash delayed, the record's revision when the event was published).
    pub revision: u64,
    pub kind: MachineEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum MachineEventKind {
    /// First report of a new machine.
    Discovered { site: SiteId },
    /// Another report of a known machine.
    Updated { site: SiteId, report_count: u64 },
    /// New identity conflicts were recorded on this machine.
    Conflict { conflicts: Vec<Conflict> },
    /// A lifecycle transition: `from` --`event`--> `to` (state names), with the
    /// profile and failure reason when there is one, and who asked.
    Transition {
        from: String,
        event: String,
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        by: String,
    },
    /// A power operation or status read finished at the edge (or a state change the
    /// edge's poll saw): who asked, what, and the result.
    Power {
        request_id: PowerRequestId,
        /// `status`, `on`, `off`, `softoff` or `cycle`.
        op: String,
        /// The power state after.
        state: PowerState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        by: String,
    },
    /// The operator set the machine's BMC (never the password).
    Bmc {
        driver: BmcDriverKind,
        address: String,
        user: String,
        by: String,
    },
}

impl MachineEventKind {
    /// The event's type, as in its JSON `type`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Discovered { .. } => "discovered",
            Self::Updated { .. } => "updated",
            Self::Conflict { .. } => "conflict",
            Self::Transition { .. } => "transition",
            Self::Power { .. } => "power",
            Self::Bmc { .. } => "bmc",
        }
    }

    /// One line saying what happened (the CLI's `events` table).
    pub fn detail(&self) -> String {
        match self {
            Self::Discovered { site } => format!("first report, from site {site}"),
            Self::Updated { site, report_count } => {
                format!("report #{report_count}, from site {site}")
            }
            Self::Conflict { conflicts } => conflicts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            Self::Transition {
                from,
                event,
                to,
                profile,
                reason,
                by,
            } => {
                let mut line = format!("{from} --{event}--> {to}");
                if let Some(p) = profile {
                    line.push_str(&format!(" (profile {p})"));
                }
                if let Some(r) = reason {
                    line.push_str(&format!(": {r}"));
                }
                line.push_str(&format!(" by {by}"));
                line
            }
            Self::Power {
                op,
                state,
                error,
                by,
                ..
            } => match error {
                Some(e) => format!("{op} failed ({e}), power {state}, by {by}"),
                None => format!("{op}: power {state}, by {by}"),
            },
            Self::Bmc {
                driver,
                address,
                user,
                by,
            } => format!("{driver} BMC {address} user {user}, set by {by}"),
        }
    }
}

impl MachineEvent {
    /// The `Nats-Msg-Id` that makes retries of this event idempotent.
    pub fn dedup_id(&self) -> String {
        let kind = match self.kind {
            MachineEventKind::Discovered { .. } => "discovered",
            MachineEventKind::Updated { .. } => "updated",
            MachineEventKind::Conflict { .. } => "conflict",
            MachineEventKind::Transition { .. } => "transition",
            MachineEventKind::Bmc { .. } => "bmc",
            // One event per request, however often its result is delivered.
            MachineEventKind::Power { ref request_id, .. } => {
                return format!("{}-power-{request_id}", self.machine_id)
            }
        };
        format!("{}-{}-{kind}", self.machine_id, self.revision)
    }
}
