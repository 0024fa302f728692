//! The answer to a prospector's report (the discover reply): the rules for a machine
//! nobody assigned, an image deploy, a pending wipe; and the nudge that tells a
//! waiting prospector to act at once.

use substruct_wire::messages::{Command, Instruction, WipeMode};
use substruct_wire::subjects;

use super::{new_token, token_key, Change, ProvisionError, Provisioner, MAX_ATTEMPTS};
use crate::lifecycle::{Event, State};
use crate::profile::{Method, Profile};
use crate::record::{MachineRecord, Ticket, TicketPurpose};
use crate::store::Write;

impl Provisioner {
    /// Tells a prospector that is waiting on its command subject to act now: reboot
    /// into the installer, or start the image deploy. Best effort: a prospector that
    /// is not listening gets the same instruction in its next discover reply.
    pub(super) async fn nudge(&self, record: &MachineRecord, profile: &Profile) {
        let instruction = match profile.method {
            Method::Image => match self.deploy_instruction(record).await {
                Ok(Some(i)) => i,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(machine = %record.id, error = %crate::error_chain(&e), "cannot start the image deploy");
                    return;
                }
            },
            _ => Instruction::Reboot,
        };
        let command = Command {
            machine_id: record.id.clone(),
            instruction,
        };
        match substruct_wire::encode(&command) {
            Ok(bytes) => {
                // The credentialled prospector reads only its own inbox (nats-auth).
                let subject = match &record.boot_user_key {
                    Some(key) => subjects::boot_cmd(&record.site, key),
                    None => subjects::machine_cmd(&record.site, &record.id),
                };
                if let Err(e) = self.client.publish(subject, bytes.into()).await {
                    tracing::debug!(error = %e, "command not published");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a command"),
        }
    }

    /// For an image profile: moves the machine to `installing` (if it is `assigned`)
    /// and returns the `DeployImage` instruction.
    pub(super) async fn deploy_instruction(
        &self,
        record: &MachineRecord,
    ) -> Result<Option<Instruction>, ProvisionError> {
        let Some(name) = record.state.profile() else {
            return Ok(None);
        };
        let profile = self.profile(name).await?;
        let Some(image_name) = &profile.image else {
            return Ok(None);
        };
        let image = self
            .image(image_name)
            .await?
            .ok_or_else(|| ProvisionError::UnknownImage {
                profile: profile.name.clone(),
                image: image_name.clone(),
            })?;
        let record = if matches!(record.state, State::Assigned { .. }) {
            let step = format!("image {} sent to the prospector", image.name);
            let now = crate::now_unix_ms();
            self.change_with(
                &record.id,
                Change::new(Event::InstallStarted, "prospector"),
                false,
                None,
                |r| {
                    r.add_progress(step.clone(), now);
                },
            )
            .await?
        } else {
            record.clone()
        };
        let Some(ticket) = &record.ticket else {
            return Ok(None);
        };
        let seeded = profile.template.is_some();
        Ok(profile.deploy_instruction(&image, &ticket.token).map(|d| {
            if seeded {
                Instruction::DeployImageSeeded(d)
            } else {
                Instruction::DeployImage(d)
            }
        }))
    }

    /// The instruction for a prospector that just reported (the discover reply). Runs
    /// the rules for a machine nobody assigned; starts an image deploy or a pending
    /// wipe. Costs nothing extra for a discovered machine when there are no rules.
    pub async fn after_report(&self, record: MachineRecord) -> Result<Instruction, ProvisionError> {
        match &record.state {
            State::Discovered => {
                if let Some(mode) = record.pending_wipe {
                    return self.wipe_instruction(&record, mode).await;
                }
                if !record.conflicts.is_empty() {
                    return Ok(Instruction::Wait);
                }
                let rules = self.rules.rules();
                // No rule assigns it: wait, or power off where the site asks for it.
                let Some(rule) = crate::rules::first_match(&rules, &record) else {
                    return Ok(crate::power::idle_instruction(self, &record).await);
                };
                let by = format!("rule {}", rule.name);
                let profile = self.profile(&rule.profile).await?;
                self.check_images(&profile).await?;
                let record = match self
                    .change(
                        &record.id,
                        Change::new(
                            Event::Assign {
                                profile: profile.name.clone(),
                            },
                            &by,
                        ),
                        true,
                    )
                    .await
                {
                    Ok(r) => r,
                    // Someone assigned it meanwhile: decide on what is there now.
                    Err(ProvisionError::Illegal { .. }) => {
                        match self.store.machine(&record.id).await? {
                            Some((r, _)) => r,
                            None => return Ok(Instruction::Wait),
                        }
                    }
                    Err(e) => return Err(e),
                };
                Box::pin(self.after_assigned(record)).await
            }
            State::Assigned { .. } | State::Installing { .. } => self.after_assigned(record).await,
            State::Deployed { .. } | State::Failed { .. } => Ok(Instruction::Wait),
            State::Retired => Ok(Instruction::PowerOff),
        }
    }

    pub(super) async fn after_assigned(
        &self,
        record: MachineRecord,
    ) -> Result<Instruction, ProvisionError> {
        let Some(name) = record.state.profile() else {
            return Ok(Instruction::Wait);
        };
        let profile = self.profile(name).await?;
        match profile.method {
            Method::Image => Ok(self
                .deploy_instruction(&record)
                .await?
                .unwrap_or(Instruction::Wait)),
            // The intent says "installer": make sure the edge has it, then reboot into it.
            _ => {
                self.sync(&record).await?;
                Ok(Instruction::Reboot)
            }
        }
    }

    pub(super) async fn wipe_instruction(
        &self,
        record: &MachineRecord,
        mode: WipeMode,
    ) -> Result<Instruction, ProvisionError> {
        if let Some(t) = &record.ticket {
            if t.purpose == TicketPurpose::Wipe {
                return Ok(Instruction::Wipe {
                    mode,
                    token: t.token.clone(),
                });
            }
        }
        for _ in 0..MAX_ATTEMPTS {
            let Some((old, revision)) = self.store.machine(&record.id).await? else {
                return Ok(Instruction::Wait);
            };
            let Some(mode) = old.pending_wipe else {
                return Ok(Instruction::Wait);
            };
            if let Some(t) = old
                .ticket
                .as_ref()
                .filter(|t| t.purpose == TicketPurpose::Wipe)
            {
                return Ok(Instruction::Wipe {
                    mode,
                    token: t.token.clone(),
                });
            }
            let token = new_token();
            self.store.index_claim(&token_key(&token), &old.id).await?;
            let mut new = old.clone();
            new.ticket = Some(Ticket {
                token: token.clone(),
                purpose: TicketPurpose::Wipe,
                site: old.site.clone(),
                issued_unix_ms: crate::now_unix_ms(),
            });
            match self.store.update_machine(&new, revision).await? {
                Write::Done(_) => return Ok(Instruction::Wipe { mode, token }),
                Write::Lost => {
                    self.store.index_delete(&token_key(&token)).await?;
                }
            }
        }
        Err(ProvisionError::Contention(record.id.clone()))
    }
}
