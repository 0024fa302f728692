//! Boot intents: how a machine must boot next. The controller writes one per
//! `{site}.{mac}` into KV bucket `boot`; every edge watches its own site's keys.

use serde::{Deserialize, Serialize};

use crate::envelope::{MessageKind, WireMessage};
use crate::ids::MachineId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootIntentRecord {
    pub machine_id: Option<MachineId>,
    pub intent: BootIntent,
}

impl WireMessage for BootIntentRecord {
    const KIND: MessageKind = MessageKind::BootIntent;
}

/// New variants go at the end (postcard encodes the index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootIntent {
    /// Boot the prospector live image (what unknown machines get too).
    Discover,
    /// Boot an installer: kernel and initrd are names in the edge's image directory.
    Install {
        kernel: String,
        initrd: String,
        cmdline: String,
    },
    /// Boot from the local disk.
    Local { way: LocalBootWay },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalBootWay {
    /// iPXE leaves the network boot (`sanboot --no-describe --drive 0x80` / `exit`).
    IpxeExit,
    /// DHCP gives an address but no boot file: the firmware falls through to its disk.
    NoBootFile,
}
