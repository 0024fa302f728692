//! Callbacks from installers (through the edge) and prospectors: `fetched`, `done`,
//! `failed`, `wiped`, each bound to the machine's current token and site.

use substruct_wire::messages::{
    CallbackKind, CallbackReply, CallbackRequest, ErrorCode, ErrorReply, Instruction,
};
use substruct_wire::{subjects, BootToken, MachineId, SiteId};

use super::{outbox, token_key, Change, ProvisionError, Provisioner, MAX_ATTEMPTS};
use crate::lifecycle::{Event, State};
use crate::record::{Finished, FinishedBy, MachineEventKind, MachineRecord, TicketPurpose};
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
        let live = record
            .ticket
            .clone()
            .filter(|t| t.token == request.token && &t.site == site);
        let Some(ticket) = live else {
            // Not the live ticket: the callback that completed it, again?
            return self.completed_again(site, request, &record).await;
        };
        let by = format!("callback from site {site}");
        let reply = |r: &MachineRecord, next: Option<Instruction>| CallbackReply {
            machine_id: r.id.clone(),
            state: r.state.name().to_owned(),
            next,
        };
        match (&request.kind, ticket.purpose) {
            (CallbackKind::Wiped, TicketPurpose::Wipe) => {
                let record = match self.finish_wipe(&id, &request.token, site).await {
                    Err(ProvisionError::TokenExpired) => {
                        return self.completed_again_by_id(site, request, &id).await
                    }
                    r => r?,
                };
                let next = crate::power::idle_instruction(self, &record).await;
                Ok(reply(&record, Some(next)))
            }
            (CallbackKind::Fetched { file }, TicketPurpose::Install) => {
                tracing::info!(machine = %id, file, "install file fetched");
                let step: String =
                    format!("fetched {}", file.chars().take(128).collect::<String>());
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
                let record = self
                    .add_progress(&id, &request.token, step)
                    .await?
                    .unwrap_or(record);
                Ok(reply(&record, None))
            }
            (CallbackKind::Done, TicketPurpose::Install) => {
                if matches!(record.state, State::Assigned { .. }) {
                    // `None`: a concurrent `fetched` got there first; go on to done.
                    self.start_install(&id, &by, &request.token).await?;
                }
                let finished = Finished {
                    token: request.token.clone(),
                    site: site.clone(),
                    by: FinishedBy::Done,
                };
                let now = crate::now_unix_ms();
                let done = self
                    .change_for_token(&id, Change::new(Event::Done, &by), &request.token, |r| {
                        r.finished = Some(finished.clone());
                        r.add_progress("done".into(), now);
                    })
                    .await;
                let record = match done {
                    // A repeat of this `done` got there first.
                    Err(ProvisionError::TokenExpired) => {
                        return self.completed_again_by_id(site, request, &id).await
                    }
                    r => r?,
                };
                Ok(reply(&record, Some(Instruction::Reboot)))
            }
            (CallbackKind::Failed { reason }, TicketPurpose::Install) => {
                let reason: String = reason.chars().take(1024).collect();
                let step = format!("failed: {}", reason.chars().take(128).collect::<String>());
                let now = crate::now_unix_ms();
                let record = self
                    .change_for_token(
                        &id,
                        Change::new(Event::Fail { reason }, &by),
                        &request.token,
                        |r| {
                            r.add_progress(step.clone(), now);
                        },
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

    /// Records `step` in the progress of the install `token` is for (one compare-and-set
    /// of the record; no lifecycle change, nothing owed). `None` when there was nothing
    /// to record: the step is there already, or the token is no longer the machine's.
    async fn add_progress(
        &self,
        id: &MachineId,
        token: &BootToken,
        step: String,
    ) -> Result<Option<MachineRecord>, ProvisionError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((old, revision)) = self.store.machine(id).await? else {
                return Err(ProvisionError::UnknownMachine(id.to_string()));
            };
            if old.ticket.as_ref().map(|t| &t.token) != Some(token) {
                return Ok(None);
            }
            let mut new = old.clone();
            if !new.add_progress(step.clone(), crate::now_unix_ms()) {
                return Ok(None);
            }
            match self.store.update_machine(&new, revision).await? {
                Write::Done(_) => return Ok(Some(new)),
                Write::Lost => continue,
            }
        }
        Err(ProvisionError::Contention(id.clone()))
    }

    /// Ends the wipe `token` was for: the record forgets the pending wipe and its
    /// ticket (kept as [`Finished`] for a repeat of the callback).
    async fn finish_wipe(
        &self,
        id: &MachineId,
        token: &BootToken,
        site: &SiteId,
    ) -> Result<MachineRecord, ProvisionError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((old, revision)) = self.store.machine(id).await? else {
                return Err(ProvisionError::UnknownMachine(id.to_string()));
            };
            if old.ticket.as_ref().map(|t| &t.token) != Some(token) {
                return Err(ProvisionError::TokenExpired);
            }
            let mut new = old.clone();
            new.pending_wipe = None;
            new.ticket = None;
            new.finished = Some(Finished {
                token: token.clone(),
                site: site.clone(),
                by: FinishedBy::Wiped,
            });
            let event = MachineEventKind::Transition {
                from: old.state.name().to_owned(),
                event: "wiped".into(),
                to: new.state.name().to_owned(),
                profile: None,
                reason: None,
                by: "prospector".into(),
            };
            outbox::owe(&old, &mut new, revision, event, None)?;
            match self.store.update_machine(&new, revision).await? {
                Write::Done(rev) => {
                    self.flush(&new, rev, Some(revision)).await?;
                    new.owed.clear();
                    return Ok(new);
                }
                Write::Lost => continue,
            }
        }
        Err(ProvisionError::Contention(id.clone()))
    }

    /// [`Self::completed_again`] on machine `id`'s latest record.
    async fn completed_again_by_id(
        &self,
        site: &SiteId,
        request: &CallbackRequest,
        id: &MachineId,
    ) -> Result<CallbackReply, CallbackError> {
        match self.store.machine(id).await.map_err(ProvisionError::from)? {
            Some((record, _)) => self.completed_again(site, request, &record).await,
            None => Err(CallbackError::Forbidden),
        }
    }

    /// A `done` or `wiped` for the install or wipe that `record` says a callback just
    /// completed: its reply was lost and the caller asks again. Answered as it was
    /// (the state, and what to do next), changing nothing.
    async fn completed_again(
        &self,
        site: &SiteId,
        request: &CallbackRequest,
        record: &MachineRecord,
    ) -> Result<CallbackReply, CallbackError> {
        let Some(finished) = record
            .finished
            .as_ref()
            .filter(|f| f.token == request.token && &f.site == site)
        else {
            return Err(CallbackError::Forbidden);
        };
        let next = match (&request.kind, finished.by) {
            (CallbackKind::Done, FinishedBy::Done) => Instruction::Reboot,
            (CallbackKind::Wiped, FinishedBy::Wiped) => {
                crate::power::idle_instruction(self, record).await
            }
            _ => return Err(CallbackError::Forbidden),
        };
        tracing::info!(machine = %record.id, site = %site, "a completed callback came again; answered as completed");
        // Its first answer was lost: whatever that change still owes is finished now.
        self.sync(record).await?;
        Ok(CallbackReply {
            machine_id: record.id.clone(),
            state: record.state.name().to_owned(),
            next: Some(next),
        })
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
