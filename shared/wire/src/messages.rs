//! Message bodies that travel inside an [`crate::Envelope`].

use serde::{Deserialize, Serialize};

use crate::credential::BootCredential;
use crate::envelope::{MessageKind, WireMessage};
use crate::ids::{BootToken, Mac, MachineId, SiteId};
use crate::names::{ImageName, Sha256Digest};
use crate::report::HardwareReport;

/// Prospector → controller, request/reply on `substruct.v1.{site}.discover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoverRequest {
    pub site: SiteId,
    /// The boot credential from the kernel command line, when the edge gave one: what
    /// lets this report speak for a known machine ([`BootCredential::verify`]).
    pub boot_token: Option<BootCredential>,
    pub report: HardwareReport,
}

impl WireMessage for DiscoverRequest {
    const KIND: MessageKind = MessageKind::DiscoverRequest;
    /// 2: the report carries `bmc`; 3: the report carries `secure_boot`.
    const VERSION: u16 = 3;

    fn take_older(version: u16, body: &[u8]) -> Result<(Self, &[u8]), postcard::Error> {
        if version == 1 {
            let (v1, rest) = postcard::take_from_bytes::<DiscoverRequestV1>(body)?;
            return Ok((
                Self {
                    site: v1.site,
                    boot_token: v1.boot_token,
                    report: v1.report.into(),
                },
                rest,
            ));
        }
        debug_assert_eq!(version, 2);
        let (v2, rest) = postcard::take_from_bytes::<DiscoverRequestV2>(body)?;
        Ok((
            Self {
                site: v2.site,
                boot_token: v2.boot_token,
                report: v2.report.into(),
            },
            rest,
        ))
    }
}

/// [`DiscoverRequest`] as wire version 1 carried it.
#[derive(Debug, Deserialize)]
struct DiscoverRequestV1 {
    site: SiteId,
    boot_token: Option<BootCredential>,
    report: crate::report::HardwareReportV1,
}

/// [`DiscoverRequest`] as wire version 2 carried it.
#[derive(Debug, Deserialize)]
struct DiscoverRequestV2 {
    site: SiteId,
    boot_token: Option<BootCredential>,
    report: crate::report::HardwareReportV2,
}

/// Controller → prospector: the report is stored; do this next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoverReply {
    pub machine_id: MachineId,
    pub instruction: Instruction,
}

impl WireMessage for DiscoverReply {
    const KIND: MessageKind = MessageKind::DiscoverReply;
}

/// What the prospector must do. New variants go at the end (postcard encodes the index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Instruction {
    /// Stay up and listen on `substruct.v1.{site}.machine.{id}.cmd`.
    Wait,
    PowerOff,
    Reboot,
    /// Stream a disk image from the edge to a local disk, verify it, call back
    /// [`CallbackKind::Done`] (or `Failed`) with the token, then reboot.
    DeployImage(DeployImage),
    /// Wipe the local disks, call back [`CallbackKind::Wiped`] with the token and
    /// follow the `next` instruction of the reply.
    Wipe {
        mode: WipeMode,
        token: BootToken,
    },
    /// As [`Instruction::DeployImage`], then give the deployed system its cloud-init
    /// NoCloud seed: fetch `meta-data` and `user-data` from
    /// `{edge}/install/{token}/` and write them to a FAT partition labelled `CIDATA`
    /// added at the end of the disk, before calling back.
    DeployImageSeeded(DeployImage),
}

/// Where the disk image is and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployImage {
    /// Path under the edge's `/images/` (the prospector knows the edge from `substruct.edge=`).
    pub path: ImageName,
    /// SHA-256 of the whole image.
    pub sha256: Sha256Digest,
    /// Image size in bytes.
    pub size: u64,
    /// Target disk name (`vda`, `sda`, `nvme0n1`); `None`: the first non-removable disk.
    pub disk: Option<String>,
    /// The install token the callback must carry.
    pub token: BootToken,
}

/// How thoroughly to wipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WipeMode {
    /// Filesystem/partition signatures and the first and last MiB of every disk.
    Quick,
    /// A full discard (BLKDISCARD) of every disk, falling back to `Quick` where unsupported.
    Discard,
}

/// Installer (through the edge) or prospector → controller, request/reply on
/// `substruct.v1.{site}.callback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackRequest {
    pub site: SiteId,
    /// The per-machine install token from the install file's URL or the instruction.
    pub token: BootToken,
    pub kind: CallbackKind,
}

impl WireMessage for CallbackRequest {
    const KIND: MessageKind = MessageKind::CallbackRequest;
}

/// New variants go at the end (postcard encodes the index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallbackKind {
    /// The edge served an install file with this token (the install has begun).
    Fetched { file: String },
    /// The install or image deploy finished.
    Done,
    /// The install or image deploy failed.
    Failed { reason: String },
    /// The wipe asked for by [`Instruction::Wipe`] finished.
    Wiped,
}

/// Controller → caller: the callback was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackReply {
    pub machine_id: MachineId,
    /// The machine's lifecycle state after the callback (`installing`, `deployed`, …).
    pub state: String,
    /// What a prospector must do next, when it is the caller.
    pub next: Option<Instruction>,
}

impl WireMessage for CallbackReply {
    const KIND: MessageKind = MessageKind::CallbackReply;
}

/// Controller → prospector on its command subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub machine_id: MachineId,
    pub instruction: Instruction,
}

impl WireMessage for Command {
    const KIND: MessageKind = MessageKind::Command;
}

/// Any request that was refused: the reason, for the sender's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl WireMessage for ErrorReply {
    const KIND: MessageKind = MessageKind::ErrorReply;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The bytes were not a valid envelope or body.
    Malformed,
    /// The envelope's version is not one this side speaks.
    UnsupportedVersion,
    /// The subject's site and the body's site differ, or the site is unknown.
    WrongSite,
    /// The report exceeds a limit (too many disks, NICs, too long a string).
    TooLarge,
    /// The controller could not store the result; retry later.
    Unavailable,
    /// The token is unknown or expired (the machine left `installing`).
    Forbidden,
    /// The request is not legal in the machine's current state.
    IllegalTransition,
}

/// Edge / prospector → controller on `substruct.v1.{site}.event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteEvent {
    pub site: SiteId,
    /// Unix time in milliseconds at the sender.
    pub at_unix_ms: u64,
    pub event: SiteEventKind,
}

impl WireMessage for SiteEvent {
    const KIND: MessageKind = MessageKind::SiteEvent;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SiteEventKind {
    /// A DHCP lease was granted or renewed.
    Lease { mac: Mac, ip: [u8; 4] },
    /// A boot file or script was fetched over HTTP or TFTP.
    Fetch { mac: Option<Mac>, path: String },
    /// The edge agent is alive (every few seconds).
    Heartbeat { version: String },
    /// The images the edge's cache holds, verified (their sha256s), sent after every
    /// change of the cache and every minute.
    Cache { sha256: Vec<Sha256Digest> },
}
