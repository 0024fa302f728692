//! Callbacks from installers (through the edge) and prospectors: `fetched`, `done`,
//! `failed`, `wiped`, each bound to the machine's current token and site.

use substruct_wire::messages::{
    CallbackKind, CallbackReply, CallbackRequest, ErrorCode, ErrorReply, Instruction,
};
use substruct_wire::{subjects, BootToken, MachineId, SiteId};

use super::{token_key, Change, ProvisionError, Provisioner, MAX_ATTEMPTS};
use crate::lifecycle::{Event, State};
use crate::record::{MachineEvent, MachineEventKind, MachineRecord, TicketPurpose};
use crate::store::Write;

/// Why a callback was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// Unknown, expired, or presented at another site. One message for all three, so
    /// a caller learns nothing about other machines.
    #[error("unknown or expired token")]
    Forbidden,
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

impl CallbackError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Forbidden => ErrorCode::Forbidden,
            Self::Provision(e) => e.code(),
        }
    }
}

impl Provisioner {
    /// Applies a callback from an installer (through the edge) or a prospector.
    pub async fn callback(
        &self,
        site: &SiteId,
        request: &CallbackRequest,
    ) -> Result<CallbackReply, CallbackError> {
        let Some(entry) = self
            .store
            .index_get(&token_key(&request.token))
            .await
            .map_err(ProvisionError::from)?
        else {
            return Err(CallbackError::Forbidden);
        };
        let Some(id) = entry.machine else {
            return Err(CallbackError::Forbidden);
        };
        let Some((record, _)) = self
            .store
            .machine(&id)
            .await
            .map_err(ProvisionError::from)?
        else {
            return Err(CallbackError::Forbidden);
        };
        let Some(ticket) = record.ticket.clone() else {
            return Err(CallbackError::Forbidden);
        };
        if ticket.token != request.token || &ticket.site != site {
            return Err(CallbackError::Forbidden);
        }
        let by = format!("callback from site {site}");
        let reply = |r: &MachineRecord, next: Option<Instruction>| CallbackReply {
            machine_id: r.id.clone(),
            state: r.state.name().to_owned(),
            next,
        };
        match (&request.kind, ticket.purpose) {
            (CallbackKind::Wiped, TicketPurpose::Wipe) => {
                let record = self.finish_wipe(&id, &request.token).await?;
                let next = crate::power::idle_instruction(self, &record).await;
                Ok(reply(&record, Some(next)))
            }
            (CallbackKind::Fetched { file }, TicketPurpose::Install) => {
                tracing::info!(machine = %id, file, "install file fetched");
                let record = match record.state {
                    State::Assigned { .. } => {
                        match self.start_install(&id, &by, &request.token).await? {
                            Some(r) => r,
                            // Another fetch (or controller) moved it first: that is the
                            // state this callback asked for.
                            None => self
                                .store
                                .machine(&id)
                                .await
                                .map_err(ProvisionError::from)?
                                .map(|(r, _)| r)
                                .ok_or(CallbackError::Forbidden)?,
                        }
                    }
                    State::Installing { .. } => record,
                    _ => return Err(CallbackError::Forbidden),
                };
                Ok(reply(&record, None))
            }
            (CallbackKind::Done, TicketPurpose::Install) => {
                if matches!(record.state, State::Assigned { .. }) {
                    // `None`: a concurrent `fetched` got there first; go on to done.
                    self.start_install(&id, &by, &request.token).await?;
                }
                let record = self
                    .change_for_token(&id, Change::new(Event::Done, &by), &request.token, |_| {})
                    .await?;
                Ok(reply(&record, Some(Instruction::Reboot)))
            }
            (CallbackKind::Failed { reason }, TicketPurpose::Install) => {
                let reason: String = reason.chars().take(1024).collect();
                let record = self
                    .change_for_token(
                        &id,
                        Change::new(Event::Fail { reason }, &by),
                        &request.token,
                        |_| {},
                    )
                    .await?;
                Ok(reply(&record, Some(Instruction::Wait)))
            }
            // The wipe the release asked for failed: recorded as a failure with its
            // reason, the wipe dropped (the operator decides what next).
            (CallbackKind::Failed { reason }, TicketPurpose::Wipe) => {
                let reason: String = format!(
                    "wipe failed: {}",
                    reason.chars().take(1000).collect::<String>()
                );
                let record = self
                    .change_for_token(
                        &id,
                        Change::new(Event::Fail { reason }, &by),
                        &request.token,
                        |r| {
                            r.pending_wipe = None;
                            r.ticket = None;
                        },
                    )
                    .await?;
                Ok(reply(&record, Some(Instruction::Wait)))
            }
            _ => Err(CallbackError::Forbidden),
        }
    }

    /// `assigned` → `installing` for a callback holding `token`; `None` when the
    /// machine had already left `assigned` (another callback or controller moved it).
    async fn start_install(
        &self,
        id: &MachineId,
        by: &str,
        token: &BootToken,
    ) -> Result<Option<MachineRecord>, ProvisionError> {
        match self
            .change_for_token(id, Change::new(Event::InstallStarted, by), token, |_| {})
            .await
        {
            Ok(record) => Ok(Some(record)),
            Err(ProvisionError::Illegal { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn finish_wipe(
        &self,
        id: &MachineId,
        token: &BootToken,
    ) -> Result<MachineRecord, ProvisionError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((old, revision)) = self.store.machine(id).await? else {
                return Err(ProvisionError::UnknownMachine(id.to_string()));
            };
            let mut new = old.clone();
            new.pending_wipe = None;
            if new.ticket.as_ref().is_some_and(|t| &t.token == token) {
                new.ticket = None;
            }
            match self.store.update_machine(&new, revision).await? {
                Write::Done(rev) => {
                    self.store.index_delete(&token_key(token)).await?;
                    self.store
                        .publish_event(&MachineEvent {
                            machine_id: id.clone(),
                            at_unix_ms: crate::now_unix_ms(),
                            revision: rev,
                            kind: MachineEventKind::Transition {
                                from: old.state.name().to_owned(),
                                event: "wiped".into(),
                                to: new.state.name().to_owned(),
                                profile: None,
                                reason: None,
                                by: "prospector".into(),
                            },
                        })
                        .await?;
                    self.sync(&new).await?;
                    return Ok(new);
                }
                Write::Lost => continue,
            }
        }
        Err(ProvisionError::Contention(id.clone()))
    }
}

/// Answers one raw callback request: the encoded `CallbackReply` or `ErrorReply`.
pub async fn answer_callback(provisioner: &Provisioner, subject: &str, payload: &[u8]) -> Vec<u8> {
    let started = std::time::Instant::now();
    let result = match substruct_wire::decode::<CallbackRequest>(payload) {
        Err(e) => Err(ErrorReply {
            code: ErrorCode::Malformed,
            message: format!("not a callback request: {}", crate::error_chain(&e)),
        }),
        Ok(request) => {
            let subject_site = subjects::site_of(subject);
            if subject_site != Some(request.site.as_str()) {
                Err(ErrorReply {
                    code: ErrorCode::WrongSite,
                    message: format!(
                        "callback for site {} arrived on subject {subject}",
                        request.site
                    ),
                })
            } else {
                match provisioner.callback(&request.site, &request).await {
                    Ok(reply) => Ok(reply),
                    Err(e) => {
                        let message = crate::error_chain(&e);
                        tracing::warn!(subject, error = %message, "callback refused");
                        Err(ErrorReply {
                            code: e.code(),
                            message,
                        })
                    }
                }
            }
        }
    };
    let label = match &result {
        Ok(_) => "ok".to_owned(),
        Err(r) => crate::metrics::code_label(r.code),
    };
    provisioner
        .store()
        .metrics()
        .callback(&label, started.elapsed());
    let encoded = match &result {
        Ok(r) => substruct_wire::encode(r),
        Err(r) => substruct_wire::encode(r),
    };
    encoded.unwrap_or_default()
}
