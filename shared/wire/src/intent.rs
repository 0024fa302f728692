//! Boot intents: how a machine must boot next. The controller writes one per
//! `{site}.{mac}` into KV bucket `boot`; every edge watches its own site's keys.

use serde::{Deserialize, Serialize};

use crate::envelope::{MessageKind, WireMessage};
use crate::ids::{BootToken, MachineId};
use crate::names::ImageName;

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
    /// Every `{edge}` in `cmdline` becomes the edge's base URL (`http://addr:port`).
    Install {
        kernel: ImageName,
        initrd: ImageName,
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

/// The rendered install files of one machine, in KV bucket `install` under
/// `{site}.{h}` (h: a hash of the token). The controller deletes the key when the machine leaves
/// `installing`; the edge serves them at `/install/{token}/{name}` while the key exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallFilesRecord {
    pub machine_id: MachineId,
    pub token: BootToken,
    pub files: Vec<InstallFile>,
}

impl WireMessage for InstallFilesRecord {
    const KIND: MessageKind = MessageKind::InstallFiles;
}

/// One rendered file: `ks.cfg`, `preseed.cfg`, `user-data`, `meta-data`, …
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallFile {
    /// A plain file name: `[A-Za-z0-9._-]`, no slash.
    pub name: String,
    pub content_type: String,
    pub body: String,
}
