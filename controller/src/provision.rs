//! Provisioning: assignment, the lifecycle's side effects and the callbacks.
//!
//! The machine record (KV `machines`) is the only source of truth. Every change is
//! one compare-and-set write of the record through [`lifecycle::transition`], one
//! `transition` event in `EVENTS`, and then [`Provisioner::sync`], which derives
//! what the edges need from the record — boot intents (KV `boot`) and install files
//! (KV `install`) — and writes it idempotently. A crash between the record write and
//! the sync is repaired by the next sync of that machine (the next report, callback
//! or admin action, or the sweep at start-up), never by guessing.

use std::time::Duration;

use rand::RngCore;
use substruct_wire::intent::{BootIntent, BootIntentRecord, InstallFilesRecord, LocalBootWay};
use substruct_wire::messages::{
    CallbackKind, CallbackReply, CallbackRequest, Command, ErrorCode, ErrorReply, Instruction,
    WipeMode,
};
use substruct_wire::{subjects, BootToken, Mac, MachineId, SiteId};

use crate::images::ImageRecord;
use crate::lifecycle::{self, Event, IllegalTransition, State};
use crate::matching::Fact;
use crate::profile::{Method, Profile, ProfileError};
use crate::record::{MachineEvent, MachineEventKind, MachineRecord, Ticket, TicketPurpose};
use crate::sites::{LocalBoot, SiteRecord};
use crate::store::{Docs, Store, StoreError, Write};

mod rules_cache;
pub use rules_cache::{CatchUpError, RulesCache};

/// Compare-and-set attempts before giving up on a busy record.
const MAX_ATTEMPTS: usize = 16;
/// How long [`Provisioner::catch_up_rules`] waits for the rules watch.
const RULES_CATCH_UP: Duration = Duration::from_secs(5);

/// Why a provisioning request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("no machine with id, serial, SMBIOS UUID or MAC {0:?}")]
    UnknownMachine(String),
    #[error("no profile named {0:?}")]
    UnknownProfile(String),
    #[error("profile {profile:?} names image {image:?}, which is not registered")]
    UnknownImage { profile: String, image: String },
    #[error("machine {machine}: {source}")]
    Illegal {
        machine: MachineId,
        #[source]
        source: IllegalTransition,
    },
    #[error("profile {profile:?} cannot be rendered for machine {machine}")]
    Render {
        profile: String,
        machine: MachineId,
        #[source]
        source: ProfileError,
    },
    #[error("gave up after {MAX_ATTEMPTS} compare-and-set races on machine {0}")]
    Contention(MachineId),
    /// The machine's token changed under a callback (a reinstall or reassignment).
    #[error("unknown or expired token")]
    TokenExpired,
    #[error("the store is unavailable")]
    Store(#[from] StoreError),
}

impl ProvisionError {
    /// The wire code for a callback answered with this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Illegal { .. } => ErrorCode::IllegalTransition,
            Self::UnknownMachine(_) => ErrorCode::Forbidden,
            Self::UnknownProfile(_) | Self::UnknownImage { .. } | Self::Render { .. } => {
                ErrorCode::Malformed
            }
            Self::Contention(_) | Self::Store(_) => ErrorCode::Unavailable,
            Self::TokenExpired => ErrorCode::Forbidden,
        }
    }
}

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

/// A fresh 128-bit token, 32 lowercase hex digits.
pub fn new_token() -> BootToken {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // 32 chars of [0-9a-f] always make a valid token.
    BootToken::new(hex).unwrap_or_else(|_| unreachable!("hex token is valid"))
}

/// `machine_index` key of a live token.
pub fn token_key(token: &BootToken) -> String {
    format!("token.{token}")
}

/// Pure: the boot intent a machine's record asks for, or `None` for "no intent"
/// (the edge then treats it as unknown and boots the prospector).
pub fn desired_intent(
    record: &MachineRecord,
    profile: Option<&Profile>,
    local: LocalBoot,
) -> Option<BootIntent> {
    match &record.state {
        State::Discovered => record.pending_wipe.map(|_| BootIntent::Discover),
        State::Assigned { .. } | State::Installing { .. } => {
            match (profile, &record.ticket) {
                (Some(p), Some(t)) if t.purpose == TicketPurpose::Install => {
                    Some(p.boot_intent(&t.token))
                }
                // The profile vanished or no ticket: the prospector reports and the
                // controller decides again.
                _ => Some(BootIntent::Discover),
            }
        }
        State::Deployed { .. } => Some(BootIntent::Local { way: local.way() }),
        State::Failed { .. } => None,
        State::Retired => Some(BootIntent::Local {
            way: LocalBootWay::NoBootFile,
        }),
    }
}

/// What a change asked for, for the event.
struct Change {
    event: Event,
    by: String,
}

/// A callback's change: applied only if the record still holds `token` — checked
/// inside the compare-and-set, so a callback that raced a reinstall (new token)
/// cannot touch the new install.
fn by_token(event: Event, by: &str) -> Change {
    Change {
        event,
        by: by.to_owned(),
    }
}

/// Provisioning over the [`Store`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Provisioner {
    store: Store,
    client: async_nats::Client,
    rules: RulesCache,
}

impl Provisioner {
    pub fn new(store: Store, client: async_nats::Client) -> Self {
        Self {
            store,
            client,
            rules: RulesCache::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This controller's copy of the rules; [`RulesCache::follow`] keeps it current.
    pub fn rules_cache(&self) -> &RulesCache {
        &self.rules
    }

    /// Waits (a few seconds at most) until the rules copy holds every rule written so
    /// far: after a rule is saved, the very next report is matched against it.
    pub async fn catch_up_rules(&self) -> Result<usize, CatchUpError> {
        self.rules.catch_up(&self.store, RULES_CATCH_UP).await
    }

    /// Finds a machine by id, SMBIOS UUID, serial or MAC.
    pub async fn find(&self, reference: &str) -> Result<(MachineRecord, u64), ProvisionError> {
        let reference = reference.trim();
        if let Ok(id) = MachineId::new(reference) {
            if let Some(found) = self.store.machine(&id).await? {
                return Ok(found);
            }
        }
        let mut facts = Vec::new();
        if let Ok(mac) = Mac::parse(reference) {
            facts.push(Fact::Mac(mac));
        }
        facts.push(Fact::Uuid(reference.to_ascii_lowercase()));
        facts.push(Fact::Serial(reference.to_owned()));
        for fact in facts {
            if let Some(entry) = self.store.index_get(&fact.index_key()).await? {
                if let Some(id) = entry.machine {
                    if let Some(found) = self.store.machine(&id).await? {
                        return Ok(found);
                    }
                }
            }
        }
        Err(ProvisionError::UnknownMachine(reference.to_owned()))
    }

    pub async fn profile(&self, name: &str) -> Result<Profile, ProvisionError> {
        self.store
            .doc_get::<Profile>(Docs::Profiles, name)
            .await?
            .map(|(p, _)| p)
            .ok_or_else(|| ProvisionError::UnknownProfile(name.to_owned()))
    }

    pub async fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        Ok(self
            .store
            .doc_get::<ImageRecord>(Docs::Images, name)
            .await?
            .map(|(i, _)| i))
    }

    async fn local_boot(&self, site: &SiteId) -> Result<LocalBoot, StoreError> {
        Ok(self
            .store
            .doc_get::<SiteRecord>(Docs::Sites, site.as_str())
            .await?
            .map(|(s, _)| s.local_boot)
            .unwrap_or_default())
    }

    /// Ties `profile` to the machine `reference` names (`substruct machines assign`).
    pub async fn assign(
        &self,
        reference: &str,
        profile_name: &str,
        by: &str,
    ) -> Result<MachineRecord, ProvisionError> {
        let (record, _) = self.find(reference).await?;
        let profile = self.profile(profile_name).await?;
        self.check_images(&profile).await?;
        let record = self
            .change(
                &record.id,
                Change {
                    event: Event::Assign {
                        profile: profile.name.clone(),
                    },
                    by: by.to_owned(),
                },
                true,
            )
            .await?;
        self.nudge(&record, &profile).await;
        Ok(record)
    }

    /// `machines release [--wipe MODE]`: back to `discovered`.
    pub async fn release(
        &self,
        reference: &str,
        wipe: Option<WipeMode>,
        by: &str,
    ) -> Result<MachineRecord, ProvisionError> {
        let (record, _) = self.find(reference).await?;
        self.change_with(
            &record.id,
            Change {
                event: Event::Release,
                by: by.to_owned(),
            },
            false,
            None,
            |r| r.pending_wipe = wipe,
        )
        .await
    }

    /// `machines reinstall`: the same profile again, with a new token.
    pub async fn reinstall(
        &self,
        reference: &str,
        by: &str,
    ) -> Result<MachineRecord, ProvisionError> {
        let (record, _) = self.find(reference).await?;
        let record = self
            .change(
                &record.id,
                Change {
                    event: Event::Reinstall,
                    by: by.to_owned(),
                },
                true,
            )
            .await?;
        if let Some(name) = record.state.profile() {
            if let Ok(profile) = self.profile(name).await {
                self.nudge(&record, &profile).await;
            }
        }
        Ok(record)
    }

    /// `machines retire`.
    pub async fn retire(&self, reference: &str, by: &str) -> Result<MachineRecord, ProvisionError> {
        let (record, _) = self.find(reference).await?;
        self.change(
            &record.id,
            Change {
                event: Event::Retire,
                by: by.to_owned(),
            },
            false,
        )
        .await
    }

    async fn check_images(&self, profile: &Profile) -> Result<(), ProvisionError> {
        for name in [&profile.kernel, &profile.initrd, &profile.image]
            .into_iter()
            .flatten()
        {
            if self.image(name).await?.is_none() {
                return Err(ProvisionError::UnknownImage {
                    profile: profile.name.clone(),
                    image: name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Applies one lifecycle event (see [`Self::change_with`]).
    async fn change(
        &self,
        id: &MachineId,
        change: Change,
        new_ticket: bool,
    ) -> Result<MachineRecord, ProvisionError> {
        self.change_with(id, change, new_ticket, None, |_| {}).await
    }

    /// [`Self::change`] for a callback: only while the record still holds `token`.
    async fn change_for_token(
        &self,
        id: &MachineId,
        change: Change,
        token: &BootToken,
        edit: impl Fn(&mut MachineRecord),
    ) -> Result<MachineRecord, ProvisionError> {
        self.change_with(id, change, false, Some(token), edit).await
    }

    /// Applies one lifecycle event to a machine: compare-and-set of the record, the
    /// event, the ticket's index key, then [`Self::sync`]. With `new_ticket` the
    /// machine gets a fresh install token (assign, reinstall) and its install files are
    /// rendered before anything is written, so a template that fails for this machine
    /// refuses the change instead of leaving it half done.
    async fn change_with(
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
            edit(&mut new);
            let mut files = None;
            if new_ticket {
                let token = new_token();
                if let Some(name) = new.state.profile() {
                    let profile = self.profile(name).await?;
                    files = Some(self.render(&profile, &new, &token)?);
                }
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
            if matches!(change.event, Event::Assign { .. }) {
                // The install overwrites the disks anyway.
                new.pending_wipe = None;
            }
            match self.store.update_machine(&new, revision).await? {
                Write::Done(rev) => {
                    self.after_change(&old, &new, rev, &change, files).await?;
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

    fn render(
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

    /// The event, the old ticket's withdrawal, the new install files, the intents.
    async fn after_change(
        &self,
        old: &MachineRecord,
        new: &MachineRecord,
        revision: u64,
        change: &Change,
        files: Option<InstallFilesRecord>,
    ) -> Result<(), ProvisionError> {
        tracing::info!(
            machine = %new.id,
            from = old.state.name(),
            event = change.event.name(),
            to = %new.state,
            by = %change.by,
            "lifecycle transition"
        );
        // The old token dies first: if anything below fails, no expired token keeps
        // working at an edge.
        if let Some(t) = &old.ticket {
            if new.ticket.as_ref() != Some(t) {
                self.store.index_delete(&token_key(&t.token)).await?;
                self.store
                    .set_install_files(&t.site, &t.token, None)
                    .await?;
            }
        }
        if let (Some(files), Some(t)) = (&files, &new.ticket) {
            self.store
                .set_install_files(&t.site, &t.token, Some(files))
                .await?;
        }
        self.sync(new).await?;
        self.store
            .publish_event(&MachineEvent {
                machine_id: new.id.clone(),
                at_unix_ms: crate::now_unix_ms(),
                revision,
                kind: MachineEventKind::Transition {
                    from: old.state.name().to_owned(),
                    event: change.event.name().to_owned(),
                    to: new.state.name().to_owned(),
                    profile: new.state.profile().map(str::to_owned),
                    reason: match &new.state {
                        State::Failed { reason, .. } => Some(reason.clone()),
                        _ => None,
                    },
                    by: change.by.clone(),
                },
            })
            .await?;
        Ok(())
    }

    /// Writes the boot intents the record asks for, for every MAC of the machine at
    /// its site. Idempotent.
    pub async fn sync(&self, record: &MachineRecord) -> Result<(), ProvisionError> {
        // Always from the latest record: a caller's copy may be older than a change
        // another request (or controller) made meanwhile.
        let Some((fresh, _)) = self.store.machine(&record.id).await? else {
            return Ok(());
        };
        let record = &fresh;
        let profile = match record.state.profile() {
            Some(name) => self.profile(name).await.ok(),
            None => None,
        };
        let local = self.local_boot(&record.site).await?;
        let intent = desired_intent(record, profile.as_ref(), local);
        let value = intent.map(|intent| BootIntentRecord {
            machine_id: Some(record.id.clone()),
            intent,
        });
        for mac in record.facts.macs() {
            self.store
                .set_boot_intent(&record.site, &mac, value.as_ref())
                .await?;
        }
        Ok(())
    }

    /// Tells a prospector that is waiting on its command subject to act now: reboot
    /// into the installer, or start the image deploy. Best effort: a prospector that
    /// is not listening gets the same instruction in its next discover reply.
    async fn nudge(&self, record: &MachineRecord, profile: &Profile) {
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
                let subject = subjects::machine_cmd(&record.site, &record.id);
                if let Err(e) = self.client.publish(subject, bytes.into()).await {
                    tracing::debug!(error = %e, "command not published");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a command"),
        }
    }

    /// For an image profile: moves the machine to `installing` (if it is `assigned`)
    /// and returns the `DeployImage` instruction.
    async fn deploy_instruction(
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
            self.change(
                &record.id,
                Change {
                    event: Event::InstallStarted,
                    by: "prospector".into(),
                },
                false,
            )
            .await?
        } else {
            record.clone()
        };
        let Some(ticket) = &record.ticket else {
            return Ok(None);
        };
        Ok(profile
            .deploy_instruction(&image, &ticket.token)
            .map(Instruction::DeployImage))
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
                if rules.is_empty() {
                    return Ok(Instruction::Wait);
                }
                let Some(rule) = crate::rules::first_match(&rules, &record) else {
                    return Ok(Instruction::Wait);
                };
                let by = format!("rule {}", rule.name);
                let profile = self.profile(&rule.profile).await?;
                self.check_images(&profile).await?;
                let record = match self
                    .change(
                        &record.id,
                        Change {
                            event: Event::Assign {
                                profile: profile.name.clone(),
                            },
                            by,
                        },
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

    async fn after_assigned(&self, record: MachineRecord) -> Result<Instruction, ProvisionError> {
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

    async fn wipe_instruction(
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
                Ok(reply(&record, Some(Instruction::Wait)))
            }
            (CallbackKind::Fetched { file }, TicketPurpose::Install) => {
                tracing::info!(machine = %id, file, "install file fetched");
                let record = match record.state {
                    State::Assigned { .. } => match self
                        .change_for_token(
                            &id,
                            by_token(Event::InstallStarted, &by),
                            &request.token,
                            |_| {},
                        )
                        .await
                    {
                        Ok(r) => r,
                        // Another fetch (or controller) moved it first: that is the
                        // state this callback asked for.
                        Err(ProvisionError::Illegal { .. }) => self
                            .store
                            .machine(&id)
                            .await
                            .map_err(ProvisionError::from)?
                            .map(|(r, _)| r)
                            .ok_or(CallbackError::Forbidden)?,
                        Err(e) => return Err(e.into()),
                    },
                    State::Installing { .. } => record,
                    _ => return Err(CallbackError::Forbidden),
                };
                Ok(reply(&record, None))
            }
            (CallbackKind::Done, TicketPurpose::Install) => {
                if matches!(record.state, State::Assigned { .. }) {
                    match self
                        .change_for_token(
                            &id,
                            by_token(Event::InstallStarted, &by),
                            &request.token,
                            |_| {},
                        )
                        .await
                    {
                        // Illegal: a concurrent `fetched` got there first; go on to done.
                        Ok(_) | Err(ProvisionError::Illegal { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                let record = self
                    .change_for_token(&id, by_token(Event::Done, &by), &request.token, |_| {})
                    .await?;
                Ok(reply(&record, Some(Instruction::Reboot)))
            }
            (CallbackKind::Failed { reason }, TicketPurpose::Install) => {
                let reason: String = reason.chars().take(1024).collect();
                let record = self
                    .change_for_token(
                        &id,
                        by_token(Event::Fail { reason }, &by),
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
                        by_token(Event::Fail { reason }, &by),
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

    /// Syncs every machine (start-up sweep: repairs a sync a crash interrupted).
    pub async fn sync_all(&self) -> Result<usize, ProvisionError> {
        let machines = self.store.list_machines().await?;
        let mut n = 0;
        for m in machines
            .iter()
            .filter(|m| !matches!(m.state, State::Discovered) || m.pending_wipe.is_some())
        {
            self.sync(m).await?;
            n += 1;
        }
        Ok(n)
    }
}

/// Answers one raw callback request: the encoded `CallbackReply` or `ErrorReply`.
pub async fn answer_callback(provisioner: &Provisioner, subject: &str, payload: &[u8]) -> Vec<u8> {
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
    let encoded = match &result {
        Ok(r) => substruct_wire::encode(r),
        Err(r) => substruct_wire::encode(r),
    };
    encoded.unwrap_or_default()
}
