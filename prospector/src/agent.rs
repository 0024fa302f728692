//! Reports the hardware over NATS until the controller acknowledges, then follows its
//! instructions.
//!
//! The protocol decisions are pure functions ([`interpret_reply`], [`after_reply`],
//! [`interpret_command`], [`Backoff`]); [`run`] is the thin shell that owns the NATS
//! client, the clock and the console lines. The caller carries out power actions: the
//! agent only says what the controller asked for.

use std::time::Duration;

use futures::StreamExt;
use substruct_wire::messages::{
    Command, DiscoverReply, DiscoverRequest, ErrorCode, ErrorReply, Instruction,
};
use substruct_wire::report::HardwareReport;
use substruct_wire::{subjects, BootToken, IdError, MachineId, MessageKind, SiteId, WireError};
use tokio_util::sync::CancellationToken;

use crate::cmdline::{KernelArgs, ARG_NATS, ARG_SITE, ARG_TOKEN};

/// Name the prospector gives its NATS connection.
pub const CLIENT_NAME: &str = "substruct-prospector";

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// One NATS URL, or several separated by commas.
    pub nats_url: String,
    pub site: SiteId,
    pub token: Option<BootToken>,
    /// Return after the first acknowledgement instead of waiting for commands.
    pub once: bool,
}

/// Where each setting came from: a command-line flag wins over the kernel argument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSources {
    pub nats: Option<String>,
    pub site: Option<String>,
    pub token: Option<String>,
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
}

impl AgentConfig {
    /// Flags first, then the `substruct.*` kernel arguments.
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
        Ok(Self {
            nats_url,
            site,
            token,
            once: flags.once,
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
}

impl Default for AgentTuning {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(5),
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

/// What to do once the controller acknowledged the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Finish(Outcome),
    /// Listen for commands on the machine's command subject.
    Listen(MachineId),
}

/// Pure: the next step after a `DiscoverReply`.
pub fn after_reply(reply: DiscoverReply, once: bool) -> Step {
    let machine_id = reply.machine_id;
    match reply.instruction {
        Instruction::Wait if once => Step::Finish(Outcome::Acknowledged { machine_id }),
        Instruction::Wait => Step::Listen(machine_id),
        Instruction::PowerOff => Step::Finish(Outcome::PowerOff { machine_id }),
        Instruction::Reboot => Step::Finish(Outcome::Reboot { machine_id }),
        // Handled by the deploy module (in progress).
        Instruction::DeployImage(_) | Instruction::Wipe { .. } => Step::Listen(machine_id),
    }
}

/// Why a message on the command subject was ignored.
#[derive(Debug, thiserror::Error)]
pub enum CommandProblem {
    #[error("malformed command")]
    Malformed(#[source] WireError),
    #[error("command for machine {0}, not for this one")]
    OtherMachine(MachineId),
}

/// Pure: `Ok(None)` = keep waiting; `Ok(Some(outcome))` = finish with it.
pub fn interpret_command(bytes: &[u8], me: &MachineId) -> Result<Option<Outcome>, CommandProblem> {
    let cmd = substruct_wire::decode::<Command>(bytes).map_err(CommandProblem::Malformed)?;
    if &cmd.machine_id != me {
        return Err(CommandProblem::OtherMachine(cmd.machine_id));
    }
    let machine_id = cmd.machine_id;
    Ok(match cmd.instruction {
        Instruction::Wait => None,
        Instruction::PowerOff => Some(Outcome::PowerOff { machine_id }),
        Instruction::Reboot => Some(Outcome::Reboot { machine_id }),
        Instruction::DeployImage(_) | Instruction::Wipe { .. } => None,
    })
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
    let connect = substruct_runtime::nats_options(CLIENT_NAME).connect(servers);
    let client = tokio::select! {
        _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
        c = connect => c.map_err(|source| AgentError::Connect { url: cfg.nats_url.clone(), source })?,
    };
    progress(format_args!(
        "reporting {} bytes to {} on {subject}",
        payload.len(),
        cfg.nats_url
    ));

    let mut backoff = Backoff::new(tuning.backoff_base, tuning.backoff_cap);
    let reply = loop {
        let attempt = backoff.failures().saturating_add(1);
        let req = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(tuning.request_timeout));
        let sent = tokio::select! {
            _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
            r = client.send_request(subject.clone(), req) => r,
        };
        let failure = match sent {
            Ok(msg) => match interpret_reply(&msg.payload) {
                ReplyMeaning::Reply(reply) => break reply,
                ReplyMeaning::Refused(e) => AttemptFailure::Refused {
                    code: e.code,
                    message: printable(&e.message),
                },
                ReplyMeaning::Malformed(e) => AttemptFailure::Malformed {
                    reason: error_chain(&e),
                },
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
        emit(AgentEvent::AttemptFailed {
            attempt,
            failure,
            retry_in,
        });
        tokio::select! {
            _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
            _ = tokio::time::sleep(retry_in) => {}
        }
    };
    emit(AgentEvent::Acknowledged {
        machine_id: reply.machine_id.clone(),
        instruction: reply.instruction.clone(),
    });

    let machine_id = match after_reply(reply, cfg.once) {
        Step::Finish(outcome) => return Ok(outcome),
        Step::Listen(id) => id,
    };
    let cmd_subject = subjects::machine_cmd(&cfg.site, &machine_id);
    let subscribe = client.subscribe(cmd_subject.clone());
    let mut commands = tokio::select! {
        _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
        s = subscribe => s.map_err(|source| AgentError::Subscribe { subject: cmd_subject.clone(), source })?,
    };
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %error_chain(&e), "flush after subscribe failed; continuing");
    }
    emit(AgentEvent::Listening {
        subject: cmd_subject.clone(),
    });
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
            m = commands.next() => m,
        };
        let Some(msg) = msg else {
            return Err(AgentError::SubscriptionClosed {
                subject: cmd_subject,
            });
        };
        match interpret_command(&msg.payload, &machine_id) {
            Ok(Some(outcome)) => {
                progress(format_args!("controller command: {outcome:?}"));
                return Ok(outcome);
            }
            Ok(None) => progress(format_args!("controller command: keep waiting")),
            Err(e) => emit(AgentEvent::CommandIgnored {
                reason: error_chain(&e),
            }),
        }
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
            Some(Outcome::Reboot { machine_id: id() })
        );
        assert_eq!(
            interpret_command(&cmd("m-1", Instruction::Wait), &id()).unwrap(),
            None
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
            "substruct.site=dc1 substruct.nats=nats://k:4222 substruct.token=abc",
        );
        let cfg = AgentConfig::resolve(ConfigSources::default(), &kernel).unwrap();
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
                once: true,
            },
            &kernel,
        )
        .unwrap();
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
