//! The agent's console: what happened along the way as values ([`AgentEvent`]), and
//! the line each one prints ([`describe`]). The live image's console is its only UI.

use std::time::Duration;

use substruct_wire::messages::{CallbackKind, ErrorCode, Instruction};
use substruct_wire::MachineId;

use super::protocol::{callback_kind_name, error_code_name, AttemptFailure, Step};
use crate::text::printable;

/// What happened along the way: the console lines, as values. Sent to the optional
/// observer of [`super::run_with`] (the live image's status display, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// One discover request got no acknowledgement; the next one follows `retry_in`.
    AttemptFailed {
        attempt: u32,
        failure: AttemptFailure,
        retry_in: Duration,
    },
    /// The controller stored the report and answered with an instruction.
    Acknowledged {
        machine_id: MachineId,
        instruction: Instruction,
    },
    /// Subscribed to the machine's command subject.
    Listening { subject: String },
    /// A message on the command subject was not acted on.
    CommandIgnored { reason: String },
    /// The image is on the disk and verified.
    Deployed { disk: String, bytes: u64 },
    /// The image deploy failed (`Failed` callback follows).
    DeployFailed { reason: String },
    /// The wipe finished on these disks.
    Wiped { disks: Vec<String> },
    /// The wipe failed (`Failed` callback follows).
    WipeFailed { reason: String },
    /// One callback request got no answer, or a transient refusal.
    CallbackAttemptFailed {
        kind: CallbackKind,
        attempt: u32,
        failure: AttemptFailure,
        retry_in: Duration,
    },
    /// The controller applied the callback.
    CallbackAccepted {
        kind: CallbackKind,
        state: String,
        next: Option<Instruction>,
    },
    /// The controller refused the callback for good (bad token…); not retried.
    CallbackRefused {
        kind: CallbackKind,
        code: ErrorCode,
        message: String,
    },
}

/// A short name of a step for the console.
pub(super) fn step_name(step: &Step) -> String {
    match step {
        Step::Finish(outcome) => format!("{outcome:?}"),
        Step::Listen(_) => "keep waiting".to_owned(),
        Step::Deploy { image, .. } => format!(
            "deploy image {} ({} bytes) to {}",
            printable(image.path.as_str()),
            image.size,
            image
                .disk
                .as_deref()
                .map_or_else(|| "the first disk".to_owned(), printable)
        ),
        Step::Wipe { mode, .. } => format!("wipe disks ({mode:?})"),
    }
}

/// The console line for an event.
pub fn describe(event: &AgentEvent) -> String {
    match event {
        AgentEvent::AttemptFailed {
            attempt,
            failure,
            retry_in,
        } => format!(
            "discover attempt {attempt} failed: {failure}; retrying in {:.1}s",
            retry_in.as_secs_f64()
        ),
        AgentEvent::Acknowledged {
            machine_id,
            instruction,
        } => format!("acknowledged as machine {machine_id}; instruction: {instruction:?}"),
        AgentEvent::Listening { subject } => format!("waiting for commands on {subject}"),
        AgentEvent::CommandIgnored { reason } => format!("ignored a command: {reason}"),
        AgentEvent::Deployed { disk, bytes } => {
            format!("image deployed to {disk}: {bytes} bytes, size and sha256 verified")
        }
        AgentEvent::DeployFailed { reason } => format!("image deploy failed: {reason}"),
        AgentEvent::Wiped { disks } => format!(
            "wiped {} disk(s): {}",
            disks.len(),
            if disks.is_empty() {
                "-".to_owned()
            } else {
                disks.join(" ")
            }
        ),
        AgentEvent::WipeFailed { reason } => format!("wipe failed: {reason}"),
        AgentEvent::CallbackAttemptFailed {
            kind,
            attempt,
            failure,
            retry_in,
        } => format!(
            "callback {} attempt {attempt} failed: {failure}; retrying in {:.1}s",
            callback_kind_name(kind),
            retry_in.as_secs_f64()
        ),
        AgentEvent::CallbackAccepted { kind, state, next } => format!(
            "callback {} accepted: machine state {state}; next: {}",
            callback_kind_name(kind),
            next.as_ref()
                .map_or_else(|| "-".to_owned(), |n| format!("{n:?}"))
        ),
        AgentEvent::CallbackRefused {
            kind,
            code,
            message,
        } => format!(
            "callback {} refused ({}): {message}; not retrying",
            callback_kind_name(kind),
            error_code_name(*code)
        ),
    }
}

/// One console line (the live image's only UI) and the same line in the log.
pub(crate) fn progress(args: std::fmt::Arguments<'_>) {
    println!("substruct-prospector: {args}");
    tracing::info!("{args}");
}
