//! Provisioning: assignment, the lifecycle's side effects and the callbacks.
//!
//! The machine record (KV `machines`) is the only source of truth. Every change is
//! one compare-and-set write of the record through [`lifecycle::transition`], one
//! `transition` event in `EVENTS`, and then [`Provisioner::sync`], which derives
//! what the edges need from the record — boot intents (KV `boot`) and install files
//! (KV `install`) — and writes it idempotently. A crash between the record write and
//! the sync is repaired by the next sync of that machine (the next report, callback
//! or admin action, or the sweep at start-up), never by guessing.
//!
//! The parts, by when they run: `admin` (the operator's assign, release, reinstall,
//! retire), `change` (one lifecycle event applied: the compare-and-set and what
//! follows it), `sync` (the boot intents a record asks for), `report` (the answer
//! to a prospector's report: rules, image deploys, wipes), `callbacks` (installers'
//! and prospectors' callbacks), `rules_cache` (this controller's copy of the rules).
//!
//! [`lifecycle::transition`]: crate::lifecycle::transition

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use substruct_wire::messages::ErrorCode;
use substruct_wire::{BootToken, Mac, MachineId, SiteId};

use crate::fleet::Fleet;
use crate::images::ImageRecord;
use crate::lifecycle::{Event, IllegalTransition};
use crate::matching::Fact;
use crate::profile::{Profile, ProfileError};
use crate::record::MachineRecord;
use crate::sites::{LocalBoot, SiteRecord};
use crate::store::{Docs, Store, StoreError};

mod admin;
mod callbacks;
mod change;
mod outbox;
mod report;
mod rules_cache;
mod sync;

pub use callbacks::{answer_callback, CallbackError};
pub use outbox::MAX_OWED;
pub use rules_cache::{CatchUpError, RulesCache};
pub use sync::{desired_intent, SyncSweep};

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
    #[error("machine {machine} still owes the side effects of {owed} changes (the store keeps failing them); try again")]
    Backlog { machine: MachineId, owed: usize },
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
            Self::Contention(_) | Self::Backlog { .. } | Self::Store(_) => ErrorCode::Unavailable,
            Self::TokenExpired => ErrorCode::Forbidden,
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

/// What a change asked for, for the event.
struct Change {
    event: Event,
    by: String,
}

impl Change {
    fn new(event: Event, by: &str) -> Self {
        Self {
            event,
            by: by.to_owned(),
        }
    }
}

/// Provisioning over the [`Store`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Provisioner {
    store: Store,
    client: async_nats::Client,
    rules: RulesCache,
    fleet: Fleet,
    /// Each site's `power_off_after_discovery`, as read at most [`SITE_SETTING_TTL`] ago.
    power_off: Arc<Mutex<HashMap<SiteId, (Instant, bool)>>>,
}

/// How long a site's `power_off_after_discovery` is reused before it is read again: an
/// idle machine's next step is not worth a read per report in a discovery storm, and a
/// changed setting applies within this. (Nothing that guards access is cached.)
const SITE_SETTING_TTL: Duration = Duration::from_secs(2);

impl Provisioner {
    pub fn new(store: Store, client: async_nats::Client) -> Self {
        Self {
            store,
            client,
            rules: RulesCache::new(),
            fleet: Fleet::new(),
            power_off: Arc::default(),
        }
    }

    /// Forgets the cached site setting: this controller just wrote the site.
    pub fn site_changed(&self, site: &str) {
        self.power_off
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| name.as_str() != site);
    }

    /// Whether `site` powers off machines idle after their report (read at most two
    /// seconds ago).
    pub async fn power_off_after_discovery(&self, site: &SiteId) -> Result<bool, StoreError> {
        let now = Instant::now();
        let cached = self
            .power_off
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(site)
            .filter(|(at, _)| now.duration_since(*at) < SITE_SETTING_TTL)
            .map(|(_, on)| *on);
        if let Some(on) = cached {
            return Ok(on);
        }
        let on = self
            .store
            .doc_get::<SiteRecord>(Docs::Sites, site.as_str())
            .await?
            .is_some_and(|(s, _)| s.power_off_after_discovery);
        let mut map = self.power_off.lock().unwrap_or_else(|p| p.into_inner());
        // Site names are checked and few; a flood of made-up ones is refused before this.
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(site.clone(), (now, on));
        Ok(on)
    }

    /// This controller's machine list; [`Fleet::follow`] keeps it current.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
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
}
