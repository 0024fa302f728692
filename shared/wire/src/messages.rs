//! Message bodies that travel inside an [`crate::Envelope`].

use serde::{Deserialize, Serialize};

use crate::envelope::{MessageKind, WireMessage};
use crate::ids::{BootToken, Mac, MachineId, SiteId};
use crate::report::HardwareReport;

/// Prospector → controller, request/reply on `substruct.v1.{site}.discover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoverRequest {
    pub site: SiteId,
    /// The per-boot token from the kernel command line, when the edge gave one.
    pub boot_token: Option<BootToken>,
    pub report: HardwareReport,
}

impl WireMessage for DiscoverRequest {
    const KIND: MessageKind = MessageKind::DiscoverRequest;
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
}
