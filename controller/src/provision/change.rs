//! One lifecycle event applied to a machine: the compare-and-set of its record, with
//! the ticket (install token) it gets or loses and what the change owes (its event,
//! install files, withdrawals: the outbox), then the flush of the outbox.

use substruct_wire::intent::InstallFilesRecord;
use substruct_wire::BootToken;

use super::{new_token, outbox, token_key, Change, ProvisionError, Provisioner, MAX_ATTEMPTS};
use crate::lifecycle::{self, Event, State};
use crate::profile::Profile;
use crate::record::{MachineEventKind, MachineRecord, Ticket, TicketPurpose};
use crate::store::Write;
use substruct_wire::MachineId;

impl Provisioner {
    /// Applies one lifecycle event (see [`Self::change_with`]).
    pub(super) async fn change(
        &self,
        id: &MachineId,
        change: Change,
        new_ticket: bool,
    ) -> Result<MachineRecord, ProvisionError> {
        self.change_with(id, change, new_ticket, None, |_| {}).await
    }

    /// [`Self::change`] for a callback: only while the record still holds `token`.
    pub(super) async fn change_for_token(
        &self,
        id: &MachineId,
        change: Change,
        token: &BootToken,
        edit: impl Fn(&mut MachineRecord),
    ) -> Result<MachineRecord, ProvisionError> {
        self.change_with(id, change, false, Some(token), edit).await
    }

    /// Applies one lifecycle event to a machine: the new ticket's index key, then one
    /// compare-and-set of the record carrying what the change owes, then the flush of
    /// that outbox (the event, install files, withdrawals, boot intents). With `new_ticket` the
    /// machine gets a fresh install token (assign, reinstall) and its install files are
    /// rendered before anything is written, so a template that fails for this machine
    /// refuses the change instead of leaving it half done.
    pub(super) async fn change_with(
        &self,
        id: &MachineId,
        change: Change,
        new_ticket: bool,
        require_token: Option<&BootToken>,
        edit: impl Fn(&mut MachineRecord),
    ) -> Result<MachineRecord, ProvisionError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((old, revision)) = self.store.machine(id).await? else {
                return Err(ProvisionError::UnknownMachine(id.to_string()));
            };
            if let Some(token) = require_token {
                if old.ticket.as_ref().map(|t| &t.token) != Some(token) {
                    return Err(ProvisionError::TokenExpired);
                }
            }
            let state = lifecycle::transition(&old.state, &change.event).map_err(|source| {
                ProvisionError::Illegal {
                    machine: id.clone(),
                    source,
                }
            })?;
            let mut new = old.clone();
            new.state = state;
            // A lifecycle change ends what a callback completed (the completing
            // callback's `edit` sets it again).
            new.finished = None;
            edit(&mut new);
            let mut files = None;
            if new_ticket {
                let token = new_token();
                if let Some(name) = new.state.profile() {
                    let profile = self.profile(name).await?;
                    files = Some(self.render(&profile, &new, &token)?);
                    // Rendered above with the same facts: this cannot fail now.
                    new.hostname = profile.hostname_for(&new).ok();
                }
                // A new install: the last one's progress is history (the events keep it).
                new.progress.clear();
                new.ticket = Some(Ticket {
                    token: token.clone(),
                    purpose: TicketPurpose::Install,
                    site: new.site.clone(),
                    issued_unix_ms: crate::now_unix_ms(),
                });
                // Index first: a callback never finds a ticket it cannot look up.
                self.store.index_claim(&token_key(&token), id).await?;
            } else if !new.state.token_valid()
                && new.ticket.as_ref().map(|t| t.purpose) == Some(TicketPurpose::Install)
            {
                new.ticket = None;
            }
            if new.state.profile().is_none() {
                new.hostname = None;
            }
            if matches!(change.event, Event::Assign { .. }) {
                // The install overwrites the disks anyway.
                new.pending_wipe = None;
            }
            let event = MachineEventKind::Transition {
                from: old.state.name().to_owned(),
                event: change.event.name().to_owned(),
                to: new.state.name().to_owned(),
                profile: new.state.profile().map(str::to_owned),
                reason: match &new.state {
                    State::Failed { reason, .. } => Some(reason.clone()),
                    _ => None,
                },
                by: change.by.clone(),
            };
            outbox::owe(&old, &mut new, revision, event, files)?;
            match self.store.update_machine(&new, revision).await? {
                Write::Done(rev) => {
                    tracing::info!(
                        machine = %new.id,
                        from = old.state.name(),
                        event = change.event.name(),
                        to = %new.state,
                        by = %change.by,
                        "lifecycle transition"
                    );
                    self.flush(&new, rev, Some(revision)).await?;
                    new.owed.clear();
                    return Ok(new);
                }
                Write::Lost => {
                    if let Some(t) = &new.ticket {
                        if Some(t) != old.ticket.as_ref() {
                            self.store.index_delete(&token_key(&t.token)).await?;
                        }
                    }
                }
            }
        }
        Err(ProvisionError::Contention(id.clone()))
    }

    pub(super) fn render(
        &self,
        profile: &Profile,
        record: &MachineRecord,
        token: &BootToken,
    ) -> Result<InstallFilesRecord, ProvisionError> {
        let files =
            profile
                .render_files(record, token)
                .map_err(|source| ProvisionError::Render {
                    profile: profile.name.clone(),
                    machine: record.id.clone(),
                    source,
                })?;
        Ok(InstallFilesRecord {
            machine_id: record.id.clone(),
            token: token.clone(),
            files,
        })
    }
}
