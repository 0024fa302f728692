//! Reports the hardware over NATS until the controller acknowledges, then follows its
//! instructions: wait for commands, deploy a disk image ([`crate::deploy`]), wipe the
//! disks ([`crate::wipe`]), and call back the result on `substruct.v1.{site}.callback`.
//!
//! * [`config`] — where the settings come from ([`AgentConfig`], [`AgentTuning`]);
//! * [`protocol`] — the pure decisions: what a reply or a command means and which
//!   [`Step`] follows;
//! * [`console`] — what happened, as [`AgentEvent`]s, and the line each one prints;
//! * [`renew`] — keeps the boot's NATS login (its credential) valid while it waits;
//! * this module — [`run`], the thin shell that owns the NATS client, the clock and
//!   the console lines.
//!
//! The caller carries out power actions: the agent only says what the controller asked
//! for.

pub mod config;
pub mod console;
pub mod protocol;
pub mod renew;

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use substruct_runtime::backoff::Backoff;
use substruct_runtime::error_chain;
use substruct_wire::messages::{CallbackKind, CallbackRequest, DiscoverRequest, ErrorCode};
use substruct_wire::report::HardwareReport;
use substruct_wire::{subjects, BootToken, MachineId, WireError};
use tokio_util::sync::CancellationToken;

pub use config::{login_from, AgentConfig, AgentTuning, ConfigError, ConfigSources, LoginProblem};
pub use console::{describe, AgentEvent};
pub use protocol::{
    after_callback, after_reply, callback_answer, callback_kind_name, callback_refusal_is_final,
    discover_answer, failure_reason, follow, interpret, interpret_command, AttemptFailure,
    CallbackResult, CommandProblem, Outcome, ReplyMeaning, Step, MAX_REASON_CHARS,
};

use crate::text::printable;
use console::{progress, step_name};

/// Name the prospector gives its NATS connection.
pub const CLIENT_NAME: &str = "substruct-prospector";

/// Why the agent stopped without an [`Outcome`].
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
    let request = DiscoverRequest {
        site: cfg.site.clone(),
        boot_token: cfg.token.clone(),
        report,
    };
    let payload = bytes::Bytes::from(substruct_wire::encode(&request).map_err(AgentError::Encode)?);
    let subject = subjects::discover(&cfg.site);

    let client = tokio::select! {
        _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
        c = connect(&cfg) => c?,
    };
    // Keeps the login's JWT fresh while the agent runs (it may wait for days).
    let _renewal = renew::spawn(&cfg, tuning.http_timeout, cancel.child_token());
    progress(format_args!(
        "reporting {} bytes to {} on {subject}",
        payload.len(),
        cfg.nats_url
    ));
    let mut session = Session {
        client,
        cfg: &cfg,
        tuning: &tuning,
        cancel: &cancel,
        events,
        commands: None,
    };

    let reply = session
        .request_until(
            &subject,
            payload,
            tuning.request_timeout,
            discover_answer,
            |attempt, failure, retry_in| AgentEvent::AttemptFailed {
                attempt,
                failure,
                retry_in,
            },
        )
        .await;
    let Some(reply) = reply else {
        return Ok(Outcome::Cancelled);
    };
    session.emit(AgentEvent::Acknowledged {
        machine_id: reply.machine_id.clone(),
        instruction: reply.instruction.clone(),
    });

    let mut step = after_reply(reply, cfg.once);
    loop {
        let next = match step {
            Step::Finish(outcome) => return Ok(outcome),
            Step::Listen(machine_id) => session.next_command(&machine_id).await?,
            Step::Deploy {
                machine_id,
                image,
                seed,
            } => {
                let job = async {
                    let mut say = |line: String| progress(format_args!("{line}"));
                    // The seed first: a refused or oversized seed fails the deploy
                    // before the disk is written.
                    let files = match seed {
                        true => Some(
                            crate::deploy::seed_fetch(
                                cfg.edge.as_ref(),
                                &image.token,
                                tuning.http_timeout,
                            )
                            .await?,
                        ),
                        false => None,
                    };
                    let done = crate::deploy::deploy(
                        cfg.edge.as_ref(),
                        cfg.storage.as_ref(),
                        &image,
                        files.is_some(),
                        tuning.http_timeout,
                        &mut say,
                    )
                    .await?;
                    match files {
                        Some(files) => {
                            crate::deploy::seed_write(
                                cfg.storage.as_ref(),
                                &done.disk,
                                files,
                                &mut say,
                            )
                            .await?;
                        }
                        None => {
                            crate::deploy::fit_table(cfg.storage.as_ref(), &done.disk, &mut say)
                                .await?
                        }
                    }
                    let event = AgentEvent::Deployed {
                        disk: done.disk,
                        bytes: done.bytes,
                    };
                    Ok::<_, crate::deploy::DeployError>((event, CallbackKind::Done))
                };
                let failed = |reason| AgentEvent::DeployFailed { reason };
                session
                    .disk_job(machine_id, image.token.clone(), job, failed)
                    .await
            }
            Step::Wipe {
                machine_id,
                mode,
                token,
            } => {
                let job = async {
                    let mut say = |line: String| progress(format_args!("{line}"));
                    let disks = crate::wipe::wipe(cfg.storage.as_ref(), mode, &mut say).await?;
                    let event = AgentEvent::Wiped {
                        disks: disks.into_iter().map(|d| d.name).collect(),
                    };
                    Ok::<_, crate::wipe::WipeError>((event, CallbackKind::Wiped))
                };
                let failed = |reason| AgentEvent::WipeFailed { reason };
                session.disk_job(machine_id, token, job, failed).await
            }
        };
        let Some(next) = next else {
            return Ok(Outcome::Cancelled);
        };
        step = next;
    }
}

/// The reply-inbox prefix of the agent's client: with a login, this boot's own
/// (`_INBOX_{site}.{boot user key}`, the only one its credential may subscribe to), else
/// the site's.
pub fn inbox_prefix(cfg: &AgentConfig) -> String {
    match &cfg.login {
        Some(login) => subjects::boot_inbox_prefix(&cfg.site, &login.user_key()),
        None => subjects::site_inbox_prefix(&cfg.site),
    }
}

/// Where the controller sends this boot's commands: with a login, the subject bound to
/// the boot user key (`_INBOX_{site}.{key}.cmd`), else the machine's
/// `substruct.v1.{site}.machine.{id}.cmd`.
pub fn command_subject(cfg: &AgentConfig, machine_id: &MachineId) -> String {
    match &cfg.login {
        Some(login) => subjects::boot_cmd(&cfg.site, &login.user_key()),
        None => subjects::machine_cmd(&cfg.site, machine_id),
    }
}

/// Connects to `cfg.nats_url` (every server of the list) as the agent does: logged in
/// with `cfg.login` when there is one, with [`inbox_prefix`], reconnecting forever.
/// What a simulated prospector (the boot-storm bench) calls too.
pub async fn connect(cfg: &AgentConfig) -> Result<async_nats::Client, AgentError> {
    let options = substruct_runtime::nats_options_login(CLIENT_NAME, cfg.login.as_ref())
        .custom_inbox_prefix(inbox_prefix(cfg));
    substruct_runtime::connect(options, &cfg.nats_url)
        .await
        .map_err(|source| AgentError::Connect {
            url: cfg.nats_url.to_string(),
            source,
        })
}

/// One connected run of the agent: the client, its settings, the observer, and the
/// command subscription once there is one. Its methods return `None` when cancelled.
struct Session<'a> {
    client: async_nats::Client,
    cfg: &'a AgentConfig,
    tuning: &'a AgentTuning,
    cancel: &'a CancellationToken,
    events: Option<EventSink>,
    /// The machine's command subject and its subscription, made on the first `Listen`.
    commands: Option<(String, async_nats::Subscriber)>,
}

impl Session<'_> {
    /// Prints the event's console line and hands it to the observer, if any.
    fn emit(&self, event: AgentEvent) {
        progress(format_args!("{}", describe(&event)));
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    /// Waits on the machine's command subject (subscribing the first time) for a
    /// command that asks for more than waiting; ignored commands are reported.
    async fn next_command(&mut self, machine_id: &MachineId) -> Result<Option<Step>, AgentError> {
        if self.commands.is_none() {
            let cmd_subject = command_subject(self.cfg, machine_id);
            let subscribe = self.client.subscribe(cmd_subject.clone());
            let sub = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(None),
                s = subscribe => s.map_err(|source| AgentError::Subscribe {
                    subject: cmd_subject.clone(),
                    source,
                })?,
            };
            if let Err(e) = self.client.flush().await {
                tracing::warn!(error = %error_chain(&e), "flush after subscribe failed; continuing");
            }
            self.emit(AgentEvent::Listening {
                subject: cmd_subject.clone(),
            });
            self.commands = Some((cmd_subject, sub));
        }
        loop {
            let Some((cmd_subject, subscriber)) = &mut self.commands else {
                return Ok(None);
            };
            let msg = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(None),
                m = subscriber.next() => m,
            };
            let Some(msg) = msg else {
                return Err(AgentError::SubscriptionClosed {
                    subject: cmd_subject.clone(),
                });
            };
            match interpret_command(&msg.payload, machine_id) {
                Ok(Step::Listen(_)) => progress(format_args!("controller command: keep waiting")),
                Ok(next) => {
                    progress(format_args!("controller command: {}", step_name(&next)));
                    return Ok(Some(next));
                }
                Err(e) => self.emit(AgentEvent::CommandIgnored {
                    reason: error_chain(&e),
                }),
            }
        }
    }

    /// Runs a disk job (deploy or wipe), reports its result (`job`'s event and callback
    /// kind, or `failed(reason)` and a `Failed` callback), calls the result back with
    /// `token` and returns the step that follows.
    async fn disk_job<E: std::error::Error>(
        &self,
        machine_id: MachineId,
        token: BootToken,
        job: impl Future<Output = Result<(AgentEvent, CallbackKind), E>>,
        failed: impl FnOnce(String) -> AgentEvent,
    ) -> Option<Step> {
        let done = tokio::select! {
            _ = self.cancel.cancelled() => return None,
            r = job => r,
        };
        let kind = match done {
            Ok((event, kind)) => {
                self.emit(event);
                kind
            }
            Err(e) => {
                let reason = failure_reason(&error_chain(&e));
                self.emit(failed(reason.clone()));
                CallbackKind::Failed { reason }
            }
        };
        let result = self.callback(token, &kind).await?;
        Some(after_callback(machine_id, &kind, result, self.cfg.once))
    }

    /// Sends a callback until the controller answers it.
    async fn callback(&self, token: BootToken, kind: &CallbackKind) -> Option<CallbackResult> {
        let request = CallbackRequest {
            site: self.cfg.site.clone(),
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
        let subject = subjects::callback(&self.cfg.site);
        progress(format_args!(
            "calling back {} on {subject}",
            callback_kind_name(kind)
        ));
        let result = self
            .request_until(
                &subject,
                payload,
                self.tuning.callback_timeout,
                callback_answer,
                |attempt, failure, retry_in| AgentEvent::CallbackAttemptFailed {
                    kind: kind.clone(),
                    attempt,
                    failure,
                    retry_in,
                },
            )
            .await?;
        match &result {
            CallbackResult::Accepted(reply) => self.emit(AgentEvent::CallbackAccepted {
                kind: kind.clone(),
                state: printable(&reply.state),
                next: reply.next.clone(),
            }),
            CallbackResult::Refused { code, message } => self.emit(AgentEvent::CallbackRefused {
                kind: kind.clone(),
                code: *code,
                message: message.clone(),
            }),
        }
        Some(result)
    }

    /// Sends `payload` as a request on `subject` until `answer` accepts a reply, with
    /// capped, jittered backoff between attempts; each failed attempt is reported as the
    /// event `failed_attempt` builds.
    async fn request_until<T>(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        timeout: Duration,
        answer: fn(&[u8]) -> Result<T, AttemptFailure>,
        failed_attempt: impl Fn(u32, AttemptFailure, Duration) -> AgentEvent,
    ) -> Option<T> {
        let tuning = self.tuning;
        let mut backoff = Backoff::new(tuning.backoff_base, tuning.backoff_cap);
        loop {
            let attempt = backoff.failures().saturating_add(1);
            let req = async_nats::Request::new()
                .payload(payload.clone())
                .timeout(Some(timeout));
            let sent = tokio::select! {
                _ = self.cancel.cancelled() => return None,
                r = self.client.send_request(subject.to_owned(), req) => r,
            };
            let failure = match sent {
                Ok(msg) => match answer(&msg.payload) {
                    Ok(answer) => return Some(answer),
                    Err(failure) => failure,
                },
                Err(e) => match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => AttemptFailure::NoResponders,
                    async_nats::RequestErrorKind::TimedOut => AttemptFailure::TimedOut {
                        after: timeout,
                        connection: self.client.connection_state().to_string(),
                    },
                    _ => AttemptFailure::Request {
                        reason: error_chain(&e),
                    },
                },
            };
            let retry_in = backoff.next_delay();
            self.emit(failed_attempt(attempt, failure, retry_in));
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                _ = tokio::time::sleep(retry_in) => {}
            }
        }
    }
}
