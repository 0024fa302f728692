//! Reports the hardware over NATS until the controller acknowledges, then follows its
//! instructions: wait for commands, deploy a disk image ([`crate::deploy`]), wipe the
//! disks ([`crate::wipe`]), and call back the result on `substruct.v1.{site}.callback`.
//!
//! The protocol decisions are pure functions ([`interpret_reply`], [`after_reply`],
//! [`interpret_command`], [`interpret_callback_reply`], [`after_callback`], [`Backoff`]);
//! [`run`] is the thin shell that owns the NATS client, the clock and the console lines.
//! The caller carries out power actions: the agent only says what the controller asked
//! for.

use std::time::Duration;

use futures::StreamExt;
use substruct_wire::messages::{
    CallbackKind, CallbackReply, CallbackRequest, Command, DeployImage, DiscoverReply,
    DiscoverRequest, ErrorCode, ErrorReply, Instruction, WipeMode,
};
use substruct_wire::report::HardwareReport;
use substruct_wire::{subjects, BootToken, IdError, MachineId, MessageKind, SiteId, WireError};
use tokio_util::sync::CancellationToken;

use crate::blockdev::Storage;
use crate::cmdline::{KernelArgs, ARG_EDGE, ARG_NATS, ARG_SITE, ARG_TOKEN};
use crate::http_get::{BaseUrl, UrlError};

/// Name the prospector gives its NATS connection.
pub const CLIENT_NAME: &str = "substruct-prospector";

/// Everything the agent needs to know about its place.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// One NATS URL, or several separated by commas.
    pub nats_url: String,
    pub site: SiteId,
    pub token: Option<BootToken>,
    /// Return after the first acknowledgement instead of waiting for commands.
    pub once: bool,
    /// The edge's HTTP base URL, where disk images come from; without it an image
    /// deploy fails (and says why in its callback).
    pub edge: Option<BaseUrl>,
    /// Where the disks are described (`sys/block`) and where their device nodes are;
    /// `None`: this run may not write disks (deploy and wipe fail, saying so).
    pub storage: Option<Storage>,
}

/// Where each setting came from: a command-line flag wins over the kernel argument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSources {
    pub nats: Option<String>,
    pub site: Option<String>,
    pub token: Option<String>,
    pub edge: Option<String>,
    pub once: bool,
}

/// Why no [`AgentConfig`] could be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no {what} given: pass {flag} or boot with {kernel_arg}=…")]
    Missing {
        what: &'static str,
        flag: &'static str,
        kernel_arg: &'static str,
    },
    #[error("invalid site name {value:?} (from {flag} or {ARG_SITE})")]
    Site {
        value: String,
        flag: &'static str,
        #[source]
        source: IdError,
    },
    #[error("invalid boot token (from {flag} or {ARG_TOKEN})")]
    Token {
        flag: &'static str,
        #[source]
        source: IdError,
    },
    #[error("invalid edge URL (from {flag} or {ARG_EDGE})")]
    Edge {
        flag: &'static str,
        #[source]
        source: UrlError,
    },
}

impl AgentConfig {
    /// Flags first, then the `substruct.*` kernel arguments. The storage is the live
    /// machine's (`/`, `/dev`); the CLI replaces it.
    pub fn resolve(flags: ConfigSources, kernel: &KernelArgs) -> Result<Self, ConfigError> {
        let nats_url = flags
            .nats
            .or_else(|| kernel.nats.clone())
            .ok_or(ConfigError::Missing {
                what: "NATS URL",
                flag: "--nats URL",
                kernel_arg: ARG_NATS,
            })?;
        let site = flags
            .site
            .or_else(|| kernel.site.clone())
            .ok_or(ConfigError::Missing {
                what: "site",
                flag: "--site NAME",
                kernel_arg: ARG_SITE,
            })?;
        let site = SiteId::new(site.clone()).map_err(|source| ConfigError::Site {
            value: site,
            flag: "--site",
            source,
        })?;
        let token = flags
            .token
            .or_else(|| kernel.token.clone())
            .map(BootToken::new)
            .transpose()
            .map_err(|source| ConfigError::Token {
                flag: "--token",
                source,
            })?;
        let edge = flags
            .edge
            .or_else(|| kernel.edge.clone())
            .map(|url| BaseUrl::parse(&url))
            .transpose()
            .map_err(|source| ConfigError::Edge {
                flag: "--edge",
                source,
            })?;
        Ok(Self {
            nats_url,
            site,
            token,
            once: flags.once,
            edge,
            storage: Some(Storage::default()),
        })
    }

    /// From the kernel command line alone (the live image's path).
    pub fn from_kernel_args(kernel: &KernelArgs, once: bool) -> Result<Self, ConfigError> {
        Self::resolve(
            ConfigSources {
                once,
                ..ConfigSources::default()
            },
            kernel,
        )
    }
}

/// Timing of the agent; [`AgentTuning::default`] is what production uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentTuning {
    /// How long one discover request waits for its reply.
    pub request_timeout: Duration,
    /// First retry delay; doubles per failure up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Connect timeout and idle limit of every read of an image download.
    pub http_timeout: Duration,
}

impl Default for AgentTuning {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(5),
            http_timeout: Duration::from_secs(30),
        }
    }
}

/// What the agent ended with; the caller carries out power actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acknowledged { machine_id: MachineId },
    PowerOff { machine_id: MachineId },
    Reboot { machine_id: MachineId },
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the hardware report cannot be encoded")]
    Encode(#[source] WireError),
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot subscribe to {subject}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
    #[error("the subscription to {subject} ended (NATS client closed)")]
    SubscriptionClosed { subject: String },
}

/// What the bytes of a reply to a discover request mean.
#[derive(Debug)]
pub enum ReplyMeaning {
    Reply(DiscoverReply),
    /// The controller refused the report; retry later.
    Refused(ErrorReply),
    /// Not a message we understand; retry later.
    Malformed(WireError),
}

/// Pure: decodes a reply as a `DiscoverReply` or an `ErrorReply`.
pub fn interpret_reply(bytes: &[u8]) -> ReplyMeaning {
    match substruct_wire::peek(bytes) {
        Ok(env) if env.kind == MessageKind::ErrorReply => {
            match substruct_wire::decode::<ErrorReply>(bytes) {
                Ok(e) => ReplyMeaning::Refused(e),
                Err(e) => ReplyMeaning::Malformed(e),
            }
        }
        Ok(_) => match substruct_wire::decode::<DiscoverReply>(bytes) {
            Ok(r) => ReplyMeaning::Reply(r),
            Err(e) => ReplyMeaning::Malformed(e),
        },
        Err(e) => ReplyMeaning::Malformed(e),
    }
}

/// What to do next, once the controller acknowledged the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Finish(Outcome),
    /// Listen for commands on the machine's command subject.
    Listen(MachineId),
    /// Stream the image to a disk, verify it, call back `Done` or `Failed`.
    Deploy {
        machine_id: MachineId,
        image: DeployImage,
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
        Instruction::DeployImage(image) => Step::Deploy { machine_id, image },
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

/// What the bytes of a reply to a callback request mean.
#[derive(Debug)]
pub enum CallbackMeaning {
    Accepted(CallbackReply),
    Refused(ErrorReply),
    Malformed(WireError),
}

/// Pure: decodes a reply as a `CallbackReply` or an `ErrorReply`.
pub fn interpret_callback_reply(bytes: &[u8]) -> CallbackMeaning {
    match substruct_wire::peek(bytes) {
        Ok(env) if env.kind == MessageKind::ErrorReply => {
            match substruct_wire::decode::<ErrorReply>(bytes) {
                Ok(e) => CallbackMeaning::Refused(e),
                Err(e) => CallbackMeaning::Malformed(e),
            }
        }
        Ok(_) => match substruct_wire::decode::<CallbackReply>(bytes) {
            Ok(r) => CallbackMeaning::Accepted(r),
            Err(e) => CallbackMeaning::Malformed(e),
        },
        Err(e) => CallbackMeaning::Malformed(e),
    }
}

/// Pure: whether a refused callback is worth retrying. Only `Unavailable` is
/// transient; a bad token (`Forbidden`) or any other refusal will not change.
pub fn callback_refusal_is_final(code: ErrorCode) -> bool {
    code != ErrorCode::Unavailable
}

/// How a callback ended (retries aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackResult {
    Accepted(CallbackReply),
    /// A final refusal (see [`callback_refusal_is_final`]): not retried.
    Refused {
        code: ErrorCode,
        message: String,
    },
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
    let mut out: String = text.chars().take(MAX_REASON_CHARS).collect();
    if text.chars().nth(MAX_REASON_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Capped exponential backoff with "equal jitter": the n-th delay lies in
/// `[d/2, d)` where `d = min(cap, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// The delay before the next attempt; `jitter` in `[0, 1)` (clamped).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(16));
        let ceiling = exp.min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling.mul_f64(0.5 + 0.5 * jitter).min(self.cap)
    }

    /// Failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// What happened along the way: the console lines, as values. Sent to the optional
/// observer of [`run_with`] (the live image's status display, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    AttemptFailed {
        attempt: u32,
        failure: AttemptFailure,
        retry_in: Duration,
    },
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

/// Why one discover request did not get an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptFailure {
    NoResponders,
    TimedOut { after: Duration, connection: String },
    Refused { code: ErrorCode, message: String },
    Malformed { reason: String },
    Request { reason: String },
}

impl std::fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// Optional receiver of [`AgentEvent`]s.
pub type EventSink = tokio::sync::mpsc::UnboundedSender<AgentEvent>;

/// Sends `report` until the controller acknowledges, then follows instructions.
pub async fn run(
    cfg: AgentConfig,
    report: HardwareReport,
    cancel: CancellationToken,
) -> Result<Outcome, AgentError> {
    run_with(cfg, AgentTuning::default(), None, report, cancel).await
}

/// [`run`] with explicit timing (tests use short timeouts) and an optional observer.
pub async fn run_with(
    cfg: AgentConfig,
    tuning: AgentTuning,
    events: Option<EventSink>,
    report: HardwareReport,
    cancel: CancellationToken,
) -> Result<Outcome, AgentError> {
    let emit = |event: AgentEvent| {
        progress(format_args!("{}", describe(&event)));
        if let Some(tx) = &events {
            let _ = tx.send(event);
        }
    };
    let request = DiscoverRequest {
        site: cfg.site.clone(),
        boot_token: cfg.token.clone(),
        report,
    };
    let payload = bytes::Bytes::from(substruct_wire::encode(&request).map_err(AgentError::Encode)?);
    let subject = subjects::discover(&cfg.site);

    // `nats://a:4222,nats://b:4222` names several servers of one cluster.
    let servers: Vec<&str> = cfg
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let connect = substruct_runtime::nats_options(CLIENT_NAME)
        .custom_inbox_prefix(substruct_runtime::site_inbox_prefix(cfg.site.as_str()))
        .connect(servers);
    let client = tokio::select! {
        _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
        c = connect => c.map_err(|source| AgentError::Connect { url: cfg.nats_url.clone(), source })?,
    };
    progress(format_args!(
        "reporting {} bytes to {} on {subject}",
        payload.len(),
        cfg.nats_url
    ));

    let reply = request_until(
        &client,
        &subject,
        payload,
        &tuning,
        &cancel,
        |bytes| match interpret_reply(bytes) {
            ReplyMeaning::Reply(reply) => Ok(reply),
            ReplyMeaning::Refused(e) => Err(AttemptFailure::Refused {
                code: e.code,
                message: printable(&e.message),
            }),
            ReplyMeaning::Malformed(e) => Err(AttemptFailure::Malformed {
                reason: error_chain(&e),
            }),
        },
        |attempt, failure, retry_in| {
            emit(AgentEvent::AttemptFailed {
                attempt,
                failure,
                retry_in,
            })
        },
    )
    .await;
    let Some(reply) = reply else {
        return Ok(Outcome::Cancelled);
    };
    emit(AgentEvent::Acknowledged {
        machine_id: reply.machine_id.clone(),
        instruction: reply.instruction.clone(),
    });

    let mut step = after_reply(reply, cfg.once);
    let mut commands: Option<(String, async_nats::Subscriber)> = None;
    loop {
        step = match step {
            Step::Finish(outcome) => return Ok(outcome),
            Step::Listen(machine_id) => {
                let (cmd_subject, subscriber) = match &mut commands {
                    Some((subject, sub)) => (subject.clone(), sub),
                    None => {
                        let cmd_subject = subjects::machine_cmd(&cfg.site, &machine_id);
                        let subscribe = client.subscribe(cmd_subject.clone());
                        let sub = tokio::select! {
                            _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
                            s = subscribe => s.map_err(|source| AgentError::Subscribe {
                                subject: cmd_subject.clone(),
                                source,
                            })?,
                        };
                        if let Err(e) = client.flush().await {
                            tracing::warn!(error = %error_chain(&e), "flush after subscribe failed; continuing");
                        }
                        emit(AgentEvent::Listening {
                            subject: cmd_subject.clone(),
                        });
                        let (_, sub) = commands.insert((cmd_subject.clone(), sub));
                        (cmd_subject, sub)
                    }
                };
                loop {
                    let msg = tokio::select! {
                        _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
                        m = subscriber.next() => m,
                    };
                    let Some(msg) = msg else {
                        return Err(AgentError::SubscriptionClosed {
                            subject: cmd_subject,
                        });
                    };
                    match interpret_command(&msg.payload, &machine_id) {
                        Ok(Step::Listen(_)) => {
                            progress(format_args!("controller command: keep waiting"))
                        }
                        Ok(next) => {
                            progress(format_args!("controller command: {}", step_name(&next)));
                            break next;
                        }
                        Err(e) => emit(AgentEvent::CommandIgnored {
                            reason: error_chain(&e),
                        }),
                    }
                }
            }
            Step::Deploy { machine_id, image } => {
                let mut say = |line: String| progress(format_args!("{line}"));
                let deployed = tokio::select! {
                    _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
                    r = crate::deploy::deploy(
                        cfg.edge.as_ref(),
                        cfg.storage.as_ref(),
                        &image,
                        tuning.http_timeout,
                        &mut say,
                    ) => r,
                };
                let kind = match deployed {
                    Ok(done) => {
                        emit(AgentEvent::Deployed {
                            disk: done.disk,
                            bytes: done.bytes,
                        });
                        CallbackKind::Done
                    }
                    Err(e) => {
                        let reason = failure_reason(&error_chain(&e));
                        emit(AgentEvent::DeployFailed {
                            reason: reason.clone(),
                        });
                        CallbackKind::Failed { reason }
                    }
                };
                let Some(result) =
                    callback(&client, &cfg, &tuning, &cancel, image.token, &kind, &emit).await
                else {
                    return Ok(Outcome::Cancelled);
                };
                after_callback(machine_id, &kind, result, cfg.once)
            }
            Step::Wipe {
                machine_id,
                mode,
                token,
            } => {
                let mut say = |line: String| progress(format_args!("{line}"));
                let wiped = tokio::select! {
                    _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
                    r = crate::wipe::wipe(cfg.storage.as_ref(), mode, &mut say) => r,
                };
                let kind = match wiped {
                    Ok(disks) => {
                        emit(AgentEvent::Wiped {
                            disks: disks.into_iter().map(|d| d.name).collect(),
                        });
                        CallbackKind::Wiped
                    }
                    Err(e) => {
                        let reason = failure_reason(&error_chain(&e));
                        emit(AgentEvent::WipeFailed {
                            reason: reason.clone(),
                        });
                        CallbackKind::Failed { reason }
                    }
                };
                let Some(result) =
                    callback(&client, &cfg, &tuning, &cancel, token, &kind, &emit).await
                else {
                    return Ok(Outcome::Cancelled);
                };
                after_callback(machine_id, &kind, result, cfg.once)
            }
        };
    }
}

/// Sends a callback until the controller answers it (`None`: cancelled first).
async fn callback(
    client: &async_nats::Client,
    cfg: &AgentConfig,
    tuning: &AgentTuning,
    cancel: &CancellationToken,
    token: BootToken,
    kind: &CallbackKind,
    emit: &impl Fn(AgentEvent),
) -> Option<CallbackResult> {
    let request = CallbackRequest {
        site: cfg.site.clone(),
        token,
        kind: kind.clone(),
    };
    let payload = match substruct_wire::encode(&request) {
        Ok(p) => bytes::Bytes::from(p),
        Err(e) => {
            // Cannot happen for these types; waiting beats crashing PID 1.
            tracing::error!(error = %error_chain(&e), "cannot encode the callback");
            return Some(CallbackResult::Refused {
                code: ErrorCode::Malformed,
                message: error_chain(&e),
            });
        }
    };
    let subject = subjects::callback(&cfg.site);
    progress(format_args!(
        "calling back {} on {subject}",
        callback_kind_name(kind)
    ));
    let result = request_until(
        client,
        &subject,
        payload,
        tuning,
        cancel,
        |bytes| match interpret_callback_reply(bytes) {
            CallbackMeaning::Accepted(reply) => Ok(CallbackResult::Accepted(reply)),
            CallbackMeaning::Refused(e) if callback_refusal_is_final(e.code) => {
                Ok(CallbackResult::Refused {
                    code: e.code,
                    message: printable(&e.message),
                })
            }
            CallbackMeaning::Refused(e) => Err(AttemptFailure::Refused {
                code: e.code,
                message: printable(&e.message),
            }),
            CallbackMeaning::Malformed(e) => Err(AttemptFailure::Malformed {
                reason: error_chain(&e),
            }),
        },
        |attempt, failure, retry_in| {
            emit(AgentEvent::CallbackAttemptFailed {
                kind: kind.clone(),
                attempt,
                failure,
                retry_in,
            })
        },
    )
    .await?;
    match &result {
        CallbackResult::Accepted(reply) => emit(AgentEvent::CallbackAccepted {
            kind: kind.clone(),
            state: printable(&reply.state),
            next: reply.next.clone(),
        }),
        CallbackResult::Refused { code, message } => emit(AgentEvent::CallbackRefused {
            kind: kind.clone(),
            code: *code,
            message: message.clone(),
        }),
    }
    Some(result)
}

/// Sends `payload` as a request on `subject` until `interpret` accepts a reply, with
/// capped, jittered backoff between attempts. `None`: cancelled first.
async fn request_until<T>(
    client: &async_nats::Client,
    subject: &str,
    payload: bytes::Bytes,
    tuning: &AgentTuning,
    cancel: &CancellationToken,
    interpret: impl Fn(&[u8]) -> Result<T, AttemptFailure>,
    on_failure: impl Fn(u32, AttemptFailure, Duration),
) -> Option<T> {
    let mut backoff = Backoff::new(tuning.backoff_base, tuning.backoff_cap);
    loop {
        let attempt = backoff.failures().saturating_add(1);
        let req = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(tuning.request_timeout));
        let sent = tokio::select! {
            _ = cancel.cancelled() => return None,
            r = client.send_request(subject.to_owned(), req) => r,
        };
        let failure = match sent {
            Ok(msg) => match interpret(&msg.payload) {
                Ok(answer) => return Some(answer),
                Err(failure) => failure,
            },
            Err(e) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders => AttemptFailure::NoResponders,
                async_nats::RequestErrorKind::TimedOut => AttemptFailure::TimedOut {
                    after: tuning.request_timeout,
                    connection: client.connection_state().to_string(),
                },
                _ => AttemptFailure::Request {
                    reason: error_chain(&e),
                },
            },
        };
        let retry_in = backoff.next_delay(rand::random::<f64>());
        on_failure(attempt, failure, retry_in);
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(retry_in) => {}
        }
    }
}

/// A short name of a step for the console.
fn step_name(step: &Step) -> String {
    match step {
        Step::Finish(outcome) => format!("{outcome:?}"),
        Step::Listen(_) => "keep waiting".to_owned(),
        Step::Deploy { image, .. } => format!(
            "deploy image {} ({} bytes) to {}",
            printable(&image.path),
            image.size,
            image
                .disk
                .as_deref()
                .map_or_else(|| "the first disk".to_owned(), printable)
        ),
        Step::Wipe { mode, .. } => format!("wipe disks ({mode:?})"),
    }
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
fn progress(args: std::fmt::Arguments<'_>) {
    println!("substruct-prospector: {args}");
    tracing::info!("{args}");
}

fn error_code_name(code: ErrorCode) -> &'static str {
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

/// Untrusted text for one console line: control characters escaped, at most 256 chars.
pub fn printable(text: &str) -> String {
    const MAX: usize = 256;
    let mut out: String = text
        .chars()
        .take(MAX)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

pub use substruct_runtime::error_chain;

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
            path: "debian-12/disk.img".into(),
            sha256: "ab".repeat(32),
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
                    image: image()
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
                image: image()
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
            interpret_callback_reply(&ok),
            CallbackMeaning::Accepted(r) if r.state == "deployed"
        ));
        let refused = substruct_wire::encode(&ErrorReply {
            code: ErrorCode::Forbidden,
            message: "unknown token".into(),
        })
        .unwrap();
        assert!(matches!(
            interpret_callback_reply(&refused),
            CallbackMeaning::Refused(e) if e.code == ErrorCode::Forbidden
        ));
        assert!(matches!(
            interpret_callback_reply(b"junk"),
            CallbackMeaning::Malformed(_)
        ));
        // A discover reply is not a callback reply.
        let wrong = substruct_wire::encode(&DiscoverReply {
            machine_id: id(),
            instruction: Instruction::Wait,
        })
        .unwrap();
        assert!(matches!(
            interpret_callback_reply(&wrong),
            CallbackMeaning::Malformed(_)
        ));
        assert!(callback_refusal_is_final(ErrorCode::Forbidden));
        assert!(callback_refusal_is_final(ErrorCode::IllegalTransition));
        assert!(!callback_refusal_is_final(ErrorCode::Unavailable));
    }

    #[test]
    fn failure_reasons_are_bounded() {
        assert_eq!(failure_reason("disk: sdb removable"), "disk: sdb removable");
        let long = "x".repeat(5000);
        assert_eq!(failure_reason(&long).chars().count(), MAX_REASON_CHARS + 1);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_inside_bounds() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay(0.999_999)).collect();
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
        assert!(delays[7] > Duration::from_millis(4900));
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(125));
        assert_eq!(b.next_delay(f64::NAN), Duration::from_millis(250));
        for _ in 0..100 {
            assert!(b.next_delay(2.0) <= Duration::from_secs(5));
        }
    }

    #[test]
    fn replies_are_interpreted() {
        let ok = substruct_wire::encode(&DiscoverReply {
            machine_id: id(),
            instruction: Instruction::Wait,
        })
        .unwrap();
        assert!(matches!(interpret_reply(&ok), ReplyMeaning::Reply(_)));
        let refused = substruct_wire::encode(&ErrorReply {
            code: ErrorCode::Unavailable,
            message: "store down".into(),
        })
        .unwrap();
        assert!(
            matches!(interpret_reply(&refused), ReplyMeaning::Refused(e) if e.message == "store down")
        );
        assert!(matches!(
            interpret_reply(b"garbage"),
            ReplyMeaning::Malformed(_)
        ));
        assert!(matches!(
            interpret_reply(&ok[..ok.len() - 1]),
            ReplyMeaning::Malformed(_)
        ));
    }

    #[test]
    fn untrusted_text_is_made_printable() {
        assert_eq!(printable("store down"), "store down");
        assert_eq!(printable("a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        let long = "x".repeat(1000);
        assert_eq!(printable(&long).chars().count(), 257);
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
                image: image()
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

    #[test]
    fn config_flags_win_and_missing_values_are_named() {
        let kernel = crate::cmdline::parse(
            "substruct.site=dc1 substruct.nats=nats://k:4222 substruct.token=abc \
             substruct.edge=http://10.77.0.1:8080",
        );
        let cfg = AgentConfig::resolve(ConfigSources::default(), &kernel).unwrap();
        assert_eq!(
            cfg.edge.as_ref().map(ToString::to_string).as_deref(),
            Some("http://10.77.0.1:8080")
        );
        assert_eq!(cfg.storage, Some(Storage::default()));
        let bad_edge = AgentConfig::resolve(
            ConfigSources {
                edge: Some("https://edge".into()),
                ..Default::default()
            },
            &kernel,
        )
        .unwrap_err();
        assert!(matches!(bad_edge, ConfigError::Edge { .. }));
        assert_eq!(
            (cfg.site.as_str(), cfg.nats_url.as_str()),
            ("dc1", "nats://k:4222")
        );
        assert_eq!(cfg.token.as_ref().map(BootToken::as_str), Some("abc"));
        let cfg = AgentConfig::resolve(
            ConfigSources {
                site: Some("dc2".into()),
                nats: Some("nats://f:1".into()),
                token: None,
                edge: Some("http://[fd00::1]:81".into()),
                once: true,
            },
            &kernel,
        )
        .unwrap();
        assert_eq!(cfg.edge.unwrap().authority(), "[fd00::1]:81");
        assert_eq!(
            (cfg.site.as_str(), cfg.nats_url.as_str(), cfg.once),
            ("dc2", "nats://f:1", true)
        );

        let none = KernelArgs::default();
        let err = AgentConfig::resolve(
            ConfigSources {
                nats: Some("nats://x".into()),
                ..Default::default()
            },
            &none,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "no site given: pass --site NAME or boot with substruct.site=…"
        );
        let err = AgentConfig::from_kernel_args(&none, false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no NATS URL given: pass --nats URL or boot with substruct.nats=…"
        );
        let bad = crate::cmdline::parse("substruct.site=DC1 substruct.nats=n");
        assert!(matches!(
            AgentConfig::from_kernel_args(&bad, false),
            Err(ConfigError::Site { .. })
        ));
    }
}
