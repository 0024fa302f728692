//! The agent's protocol decisions, as pure functions: what a reply or a command means
//! ([`interpret`], [`discover_answer`], [`callback_answer`], [`interpret_command`]),
//! and which [`Step`] follows ([`after_reply`], [`after_callback`]). No NATS, no clock,
//! no console: the shell in [`super`] carries the steps out.

use std::fmt;
use std::time::Duration;

use substruct_runtime::error_chain;
use substruct_wire::messages::{
    CallbackKind, CallbackReply, Command, DeployImage, DiscoverReply, ErrorCode, ErrorReply,
    Instruction, WipeMode,
};
use substruct_wire::{BootToken, MachineId, MessageKind, WireError, WireMessage};

use crate::text::{printable, truncate_chars};

/// What the agent ended with; the caller carries out power actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The controller acknowledged the report and said to wait (`--once` runs).
    Acknowledged { machine_id: MachineId },
    /// The controller asked for a power-off.
    PowerOff { machine_id: MachineId },
    /// The controller asked for a reboot (or a deploy finished).
    Reboot { machine_id: MachineId },
    /// Cancelled before the controller gave a final instruction.
    Cancelled,
}

/// What the bytes of a reply mean: the expected answer `T`, a refusal, or neither.
#[derive(Debug)]
pub enum ReplyMeaning<T> {
    /// The answer the request asked for.
    Answer(T),
    /// The controller refused the request.
    Refused(ErrorReply),
    /// Not a message we understand.
    Malformed(WireError),
}

/// Pure: decodes a reply as a `T` or an `ErrorReply`; any other kind is malformed.
pub fn interpret<T: WireMessage>(bytes: &[u8]) -> ReplyMeaning<T> {
    let decoded = match substruct_wire::peek(bytes) {
        Ok(env) if env.kind == MessageKind::ErrorReply => {
            substruct_wire::decode::<ErrorReply>(bytes).map(ReplyMeaning::Refused)
        }
        Ok(_) => substruct_wire::decode::<T>(bytes).map(ReplyMeaning::Answer),
        Err(e) => Err(e),
    };
    decoded.unwrap_or_else(ReplyMeaning::Malformed)
}

/// Why one request (discover or callback) did not get a usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptFailure {
    /// Nobody subscribes to the subject.
    NoResponders,
    /// No reply within the request timeout.
    TimedOut { after: Duration, connection: String },
    /// The controller refused, for a reason that may pass.
    Refused { code: ErrorCode, message: String },
    /// The reply could not be read.
    Malformed { reason: String },
    /// The request itself failed.
    Request { reason: String },
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoResponders => f.write_str("no controller is answering (no responders)"),
            Self::TimedOut { after, connection } => {
                write!(
                    f,
                    "no reply within {after:?} (NATS connection {connection})"
                )
            }
            Self::Refused { code, message } => write!(
                f,
                "controller refused the report ({}): {message}",
                error_code_name(*code)
            ),
            Self::Malformed { reason } => write!(f, "unreadable reply ({reason})"),
            Self::Request { reason } => write!(f, "request failed ({reason})"),
        }
    }
}

impl AttemptFailure {
    /// A refusal worth retrying; the message is untrusted text, made printable.
    fn refused(reply: &ErrorReply) -> Self {
        Self::Refused {
            code: reply.code,
            message: printable(&reply.message),
        }
    }

    /// A reply that could not be decoded.
    fn malformed(error: &WireError) -> Self {
        Self::Malformed {
            reason: error_chain(error),
        }
    }
}

/// Pure: the controller's answer to a discover request; every refusal is retried.
pub fn discover_answer(bytes: &[u8]) -> Result<DiscoverReply, AttemptFailure> {
    match interpret::<DiscoverReply>(bytes) {
        ReplyMeaning::Answer(reply) => Ok(reply),
        ReplyMeaning::Refused(e) => Err(AttemptFailure::refused(&e)),
        ReplyMeaning::Malformed(e) => Err(AttemptFailure::malformed(&e)),
    }
}

/// Pure: the controller's answer to a callback; a final refusal (see
/// [`callback_refusal_is_final`]) is an answer too, a transient one is retried.
pub fn callback_answer(bytes: &[u8]) -> Result<CallbackResult, AttemptFailure> {
    match interpret::<CallbackReply>(bytes) {
        ReplyMeaning::Answer(reply) => Ok(CallbackResult::Accepted(reply)),
        ReplyMeaning::Refused(e) if callback_refusal_is_final(e.code) => {
            Ok(CallbackResult::Refused {
                code: e.code,
                message: printable(&e.message),
            })
        }
        ReplyMeaning::Refused(e) => Err(AttemptFailure::refused(&e)),
        ReplyMeaning::Malformed(e) => Err(AttemptFailure::malformed(&e)),
    }
}

/// What to do next, once the controller acknowledged the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop with this outcome.
    Finish(Outcome),
    /// Listen for commands on the machine's command subject.
    Listen(MachineId),
    /// Stream the image to a disk, verify it, call back `Done` or `Failed`.
    Deploy {
        machine_id: MachineId,
        image: DeployImage,
        /// Then write the cloud-init NoCloud seed from the edge to a `CIDATA` partition.
        seed: bool,
    },
    /// Wipe the local disks, call back `Wiped` (or `Failed`), follow the reply's `next`.
    Wipe {
        machine_id: MachineId,
        mode: WipeMode,
        token: BootToken,
    },
}

/// Pure: the step that carries out `instruction`. `once`: `Wait` finishes with
/// [`Outcome::Acknowledged`] instead of listening.
pub fn follow(machine_id: MachineId, instruction: Instruction, once: bool) -> Step {
    match instruction {
        Instruction::Wait if once => Step::Finish(Outcome::Acknowledged { machine_id }),
        Instruction::Wait => Step::Listen(machine_id),
        Instruction::PowerOff => Step::Finish(Outcome::PowerOff { machine_id }),
        Instruction::Reboot => Step::Finish(Outcome::Reboot { machine_id }),
        Instruction::DeployImage(image) => Step::Deploy {
            machine_id,
            image,
            seed: false,
        },
        Instruction::DeployImageSeeded(image) => Step::Deploy {
            machine_id,
            image,
            seed: true,
        },
        Instruction::Wipe { mode, token } => Step::Wipe {
            machine_id,
            mode,
            token,
        },
    }
}

/// Pure: the next step after a `DiscoverReply`.
pub fn after_reply(reply: DiscoverReply, once: bool) -> Step {
    follow(reply.machine_id, reply.instruction, once)
}

/// Why a message on the command subject was ignored.
#[derive(Debug, thiserror::Error)]
pub enum CommandProblem {
    #[error("malformed command")]
    Malformed(#[source] WireError),
    #[error("command for machine {0}, not for this one")]
    OtherMachine(MachineId),
}

/// Pure: the step a command asks for; `Ok(Step::Listen(_))` = keep waiting.
pub fn interpret_command(bytes: &[u8], me: &MachineId) -> Result<Step, CommandProblem> {
    let cmd = substruct_wire::decode::<Command>(bytes).map_err(CommandProblem::Malformed)?;
    if &cmd.machine_id != me {
        return Err(CommandProblem::OtherMachine(cmd.machine_id));
    }
    Ok(follow(cmd.machine_id, cmd.instruction, false))
}

/// Pure: whether a refused callback is worth retrying. Only `Unavailable` is
/// transient; a bad token (`Forbidden`) or any other refusal will not change.
pub fn callback_refusal_is_final(code: ErrorCode) -> bool {
    code != ErrorCode::Unavailable
}

/// How a callback ended (retries aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackResult {
    /// The controller applied the callback.
    Accepted(CallbackReply),
    /// A final refusal (see [`callback_refusal_is_final`]): not retried.
    Refused { code: ErrorCode, message: String },
}

/// Pure: the step after a callback. `Done` accepted → reboot into the deployed disk;
/// `Wiped` accepted → the reply's `next` (none: wait); anything else (a `Failed`
/// callback, a refused callback) → wait for commands, the controller decides.
pub fn after_callback(
    machine_id: MachineId,
    kind: &CallbackKind,
    result: CallbackResult,
    once: bool,
) -> Step {
    match (kind, result) {
        (CallbackKind::Done, CallbackResult::Accepted(_)) => {
            Step::Finish(Outcome::Reboot { machine_id })
        }
        (CallbackKind::Wiped, CallbackResult::Accepted(reply)) => {
            follow(machine_id, reply.next.unwrap_or(Instruction::Wait), once)
        }
        _ => follow(machine_id, Instruction::Wait, once),
    }
}

/// Longest failure reason put into a `Failed` callback.
pub const MAX_REASON_CHARS: usize = 1000;

/// Pure: a failure reason cut to [`MAX_REASON_CHARS`].
pub fn failure_reason(text: &str) -> String {
    truncate_chars(text, MAX_REASON_CHARS)
}

/// The wire name of a callback kind (`done`, `failed`, `wiped`, `fetched`).
pub fn callback_kind_name(kind: &CallbackKind) -> &'static str {
    match kind {
        CallbackKind::Fetched { .. } => "fetched",
        CallbackKind::Done => "done",
        CallbackKind::Failed { .. } => "failed",
        CallbackKind::Wiped => "wiped",
    }
}

/// A readable name of an error code.
pub fn error_code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Malformed => "malformed",
        ErrorCode::UnsupportedVersion => "unsupported version",
        ErrorCode::WrongSite => "wrong site",
        ErrorCode::TooLarge => "too large",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::IllegalTransition => "illegal transition",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> MachineId {
        MachineId::new("m-1").unwrap()
    }

    fn token() -> BootToken {
        BootToken::new("inst4ll").unwrap()
    }

    fn image() -> DeployImage {
        DeployImage {
            path: "debian-12/disk.img".parse().unwrap(),
            sha256: "ab".repeat(32).parse().unwrap(),
            size: 1 << 30,
            disk: Some("vda".into()),
            token: token(),
        }
    }

    fn accepted(next: Option<Instruction>) -> CallbackResult {
        CallbackResult::Accepted(CallbackReply {
            machine_id: id(),
            state: "deployed".into(),
            next,
        })
    }

    #[test]
    fn deploy_and_wipe_instructions_become_steps_even_with_once() {
        let reply = |instruction| DiscoverReply {
            machine_id: id(),
            instruction,
        };
        for once in [false, true] {
            assert_eq!(
                after_reply(reply(Instruction::DeployImage(image())), once),
                Step::Deploy {
                    machine_id: id(),
                    image: image(),
                    seed: false
                }
            );
            assert_eq!(
                after_reply(reply(Instruction::DeployImageSeeded(image())), once),
                Step::Deploy {
                    machine_id: id(),
                    image: image(),
                    seed: true
                }
            );
            assert_eq!(
                after_reply(
                    reply(Instruction::Wipe {
                        mode: WipeMode::Quick,
                        token: token()
                    }),
                    once
                ),
                Step::Wipe {
                    machine_id: id(),
                    mode: WipeMode::Quick,
                    token: token()
                }
            );
        }
    }

    #[test]
    fn callbacks_decide_the_next_step() {
        let failed = CallbackKind::Failed {
            reason: "sha256 mismatch".into(),
        };
        let forbidden = CallbackResult::Refused {
            code: ErrorCode::Forbidden,
            message: "token expired".into(),
        };
        // Done: reboot into the deployed disk, whatever `next` says.
        assert_eq!(
            after_callback(id(), &CallbackKind::Done, accepted(None), false),
            Step::Finish(Outcome::Reboot { machine_id: id() })
        );
        assert_eq!(
            after_callback(
                id(),
                &CallbackKind::Done,
                accepted(Some(Instruction::Wait)),
                false
            ),
            Step::Finish(Outcome::Reboot { machine_id: id() })
        );
        // Failed, or any refusal: stay and listen (or finish, with --once).
        assert_eq!(
            after_callback(id(), &failed, accepted(Some(Instruction::Reboot)), false),
            Step::Listen(id())
        );
        assert_eq!(
            after_callback(id(), &CallbackKind::Done, forbidden.clone(), false),
            Step::Listen(id())
        );
        assert_eq!(
            after_callback(id(), &CallbackKind::Wiped, forbidden, true),
            Step::Finish(Outcome::Acknowledged { machine_id: id() })
        );
        // Wiped: the reply's next instruction.
        assert_eq!(
            after_callback(
                id(),
                &CallbackKind::Wiped,
                accepted(Some(Instruction::PowerOff)),
                false
            ),
            Step::Finish(Outcome::PowerOff { machine_id: id() })
        );
        assert_eq!(
            after_callback(
                id(),
                &CallbackKind::Wiped,
                accepted(Some(Instruction::DeployImage(image()))),
                false
            ),
            Step::Deploy {
                machine_id: id(),
                image: image(),
                seed: false
            }
        );
        assert_eq!(
            after_callback(id(), &CallbackKind::Wiped, accepted(None), false),
            Step::Listen(id())
        );
    }

    #[test]
    fn callback_replies_are_interpreted() {
        let ok = substruct_wire::encode(&CallbackReply {
            machine_id: id(),
            state: "deployed".into(),
            next: None,
        })
        .unwrap();
        assert!(matches!(
            interpret::<CallbackReply>(&ok),
            ReplyMeaning::Answer(r) if r.state == "deployed"
        ));
        let refused = substruct_wire::encode(&ErrorReply {
            code: ErrorCode::Forbidden,
            message: "unknown token".into(),
        })
        .unwrap();
        assert!(matches!(
            interpret::<CallbackReply>(&refused),
            ReplyMeaning::Refused(e) if e.code == ErrorCode::Forbidden
        ));
        assert!(matches!(
            interpret::<CallbackReply>(b"junk"),
            ReplyMeaning::Malformed(_)
        ));
        // A discover reply is not a callback reply.
        let wrong = substruct_wire::encode(&DiscoverReply {
            machine_id: id(),
            instruction: Instruction::Wait,
        })
        .unwrap();
        assert!(matches!(
            interpret::<CallbackReply>(&wrong),
            ReplyMeaning::Malformed(_)
        ));
        assert!(callback_refusal_is_final(ErrorCode::Forbidden));
        assert!(callback_refusal_is_final(ErrorCode::IllegalTransition));
        assert!(!callback_refusal_is_final(ErrorCode::Unavailable));
    }

    #[test]
    fn answers_decide_what_is_retried() {
        let refusal = |code| {
            substruct_wire::encode(&ErrorReply {
                code,
                message: "no\nway".into(),
            })
            .unwrap()
        };
        let ok = substruct_wire::encode(&DiscoverReply {
            machine_id: id(),
            instruction: Instruction::Wait,
        })
        .unwrap();
        assert_eq!(discover_answer(&ok).unwrap().machine_id, id());
        // Every refusal of a report is retried; messages are made printable.
        assert_eq!(
            discover_answer(&refusal(ErrorCode::Forbidden)).unwrap_err(),
            AttemptFailure::Refused {
                code: ErrorCode::Forbidden,
                message: "no\\nway".into()
            }
        );
        assert!(matches!(
            discover_answer(b"junk"),
            Err(AttemptFailure::Malformed { .. })
        ));
        // A callback's final refusal is an answer; a transient one is retried.
        assert_eq!(
            callback_answer(&refusal(ErrorCode::Forbidden)).unwrap(),
            CallbackResult::Refused {
                code: ErrorCode::Forbidden,
                message: "no\\nway".into()
            }
        );
        assert!(matches!(
            callback_answer(&refusal(ErrorCode::Unavailable)),
            Err(AttemptFailure::Refused {
                code: ErrorCode::Unavailable,
                ..
            })
        ));
        assert!(matches!(
            callback_answer(&ok),
            Err(AttemptFailure::Malformed { .. })
        ));
    }

    #[test]
    fn failure_reasons_are_bounded() {
        assert_eq!(failure_reason("disk: sdb removable"), "disk: sdb removable");
        let long = "x".repeat(5000);
        assert_eq!(failure_reason(&long).chars().count(), MAX_REASON_CHARS + 1);
    }

    #[test]
    fn replies_are_interpreted() {
        let ok = substruct_wire::encode(&DiscoverReply {
            machine_id: id(),
            instruction: Instruction::Wait,
        })
        .unwrap();
        assert!(matches!(
            interpret::<DiscoverReply>(&ok),
            ReplyMeaning::Answer(_)
        ));
        let refused = substruct_wire::encode(&ErrorReply {
            code: ErrorCode::Unavailable,
            message: "store down".into(),
        })
        .unwrap();
        assert!(
            matches!(interpret::<DiscoverReply>(&refused), ReplyMeaning::Refused(e) if e.message == "store down")
        );
        assert!(matches!(
            interpret::<DiscoverReply>(b"garbage"),
            ReplyMeaning::Malformed(_)
        ));
        assert!(matches!(
            interpret::<DiscoverReply>(&ok[..ok.len() - 1]),
            ReplyMeaning::Malformed(_)
        ));
    }

    #[test]
    fn instructions_become_steps() {
        let reply = |instruction| DiscoverReply {
            machine_id: id(),
            instruction,
        };
        assert_eq!(
            after_reply(reply(Instruction::Wait), true),
            Step::Finish(Outcome::Acknowledged { machine_id: id() })
        );
        assert_eq!(
            after_reply(reply(Instruction::Wait), false),
            Step::Listen(id())
        );
        assert_eq!(
            after_reply(reply(Instruction::PowerOff), false),
            Step::Finish(Outcome::PowerOff { machine_id: id() })
        );
        assert_eq!(
            after_reply(reply(Instruction::Reboot), true),
            Step::Finish(Outcome::Reboot { machine_id: id() })
        );
    }

    #[test]
    fn commands_are_checked() {
        let cmd = |m: &str, instruction| {
            substruct_wire::encode(&Command {
                machine_id: MachineId::new(m).unwrap(),
                instruction,
            })
            .unwrap()
        };
        assert_eq!(
            interpret_command(&cmd("m-1", Instruction::Reboot), &id()).unwrap(),
            Step::Finish(Outcome::Reboot { machine_id: id() })
        );
        assert_eq!(
            interpret_command(&cmd("m-1", Instruction::Wait), &id()).unwrap(),
            Step::Listen(id())
        );
        assert_eq!(
            interpret_command(&cmd("m-1", Instruction::DeployImage(image())), &id()).unwrap(),
            Step::Deploy {
                machine_id: id(),
                image: image(),
                seed: false
            }
        );
        assert_eq!(
            interpret_command(
                &cmd(
                    "m-1",
                    Instruction::Wipe {
                        mode: WipeMode::Discard,
                        token: token()
                    }
                ),
                &id()
            )
            .unwrap(),
            Step::Wipe {
                machine_id: id(),
                mode: WipeMode::Discard,
                token: token()
            }
        );
        assert!(matches!(
            interpret_command(&cmd("m-2", Instruction::PowerOff), &id()),
            Err(CommandProblem::OtherMachine(_))
        ));
        assert!(matches!(
            interpret_command(b"\x00\x01", &id()),
            Err(CommandProblem::Malformed(_))
        ));
    }
}
