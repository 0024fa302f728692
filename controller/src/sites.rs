//! Sites: registered by an operator (`substruct sites add NAME`), with the per-site
//! settings the controller needs, and the edge's liveness from its heartbeats.
//! Pure data and pure functions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use substruct_wire::intent::LocalBootWay;
use substruct_wire::{SiteId, SitePublicKey};

/// How a deployed machine at this site boots its disk (DESIGN.md, boot path step 4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LocalBoot {
    /// iPXE leaves network boot: `sanboot --drive 0x80` (BIOS) or `exit` (UEFI).
    #[default]
    IpxeExit,
    /// DHCP stops offering a boot file to the machine's MACs.
    NoBootFile,
}

impl LocalBoot {
    pub fn way(self) -> LocalBootWay {
        match self {
            Self::IpxeExit => LocalBootWay::IpxeExit,
            Self::NoBootFile => LocalBootWay::NoBootFile,
        }
    }
}

impl fmt::Display for LocalBoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IpxeExit => "ipxe-exit",
            Self::NoBootFile => "no-boot-file",
        })
    }
}

impl FromStr for LocalBoot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ipxe-exit" | "exit" | "sanboot" => Ok(Self::IpxeExit),
            "no-boot-file" => Ok(Self::NoBootFile),
            other => Err(format!(
                "unknown local boot way {other:?} (expected ipxe-exit or no-boot-file)"
            )),
        }
    }
}

/// A registered site (KV `sites`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteRecord {
    pub name: SiteId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub local_boot: LocalBoot,
    pub added_unix_ms: u64,
    /// The public key of the site's edge (`A…`, from `substruct-edge keygen`): a report
    /// may speak for a known machine only with a boot credential signed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SitePublicKey>,
    /// Reports without a valid boot credential may update known machines, as before boot
    /// credentials (labs, migrating a site). Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unauthenticated: bool,
    /// A discovered machine that no rule assigns, and a machine whose wipe finished,
    /// is told to power off after its report (as MAAS does after commissioning); a
    /// machine with a BMC is powered on again by `assign`. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub power_off_after_discovery: bool,
}

/// The latest heartbeat of a site's edge and what its image cache holds (KV
/// `site_status`, JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStatus {
    pub version: String,
    pub last_heartbeat_unix_ms: u64,
    /// sha256s of the images the edge's cache holds, verified.
    #[serde(default)]
    pub cached: Vec<substruct_wire::Sha256Digest>,
}

/// An edge is online when its last heartbeat is at most this old (3 missed beats).
pub const ONLINE_WITHIN_MS: u64 = 15_000;

/// What `GET /api/v1/sites` returns per site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteView {
    pub name: SiteId,
    /// False for a site whose edge reports but that nobody registered.
    pub registered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub local_boot: LocalBoot,
    /// `online` or `offline`.
    pub edge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_unix_ms: Option<u64>,
}

impl SiteView {
    /// Pure: the view of one site at `now_unix_ms`.
    pub fn new(
        name: SiteId,
        record: Option<&SiteRecord>,
        status: Option<&EdgeStatus>,
        now_unix_ms: u64,
    ) -> Self {
        let online = status.is_some_and(|s| {
            now_unix_ms.saturating_sub(s.last_heartbeat_unix_ms) <= ONLINE_WITHIN_MS
        });
        Self {
            name,
            registered: record.is_some(),
            description: record.and_then(|r| r.description.clone()),
            local_boot: record.map(|r| r.local_boot).unwrap_or_default(),
            edge: if online { "online" } else { "offline" }.to_owned(),
            edge_version: status.map(|s| s.version.clone()),
            last_heartbeat_unix_ms: status.map(|s| s.last_heartbeat_unix_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_means_a_recent_heartbeat() {
        let site = SiteId::new("dc1").unwrap();
        let status = EdgeStatus {
            version: "0.1.0".into(),
            last_heartbeat_unix_ms: 100_000,
            cached: vec![],
        };
        let v = SiteView::new(
            site.clone(),
            None,
            Some(&status),
            100_000 + ONLINE_WITHIN_MS,
        );
        assert_eq!(v.edge, "online");
        assert!(!v.registered);
        let v = SiteView::new(
            site.clone(),
            None,
            Some(&status),
            100_001 + ONLINE_WITHIN_MS,
        );
        assert_eq!(v.edge, "offline");
        let v = SiteView::new(site, None, None, 0);
        assert_eq!(v.edge, "offline");
        assert_eq!(v.edge_version, None);
    }

    #[test]
    fn local_boot_parses_both_ways() {
        assert_eq!("ipxe-exit".parse::<LocalBoot>(), Ok(LocalBoot::IpxeExit));
        assert_eq!(
            "no-boot-file".parse::<LocalBoot>(),
            Ok(LocalBoot::NoBootFile)
        );
        assert!("pxe"
            .parse::<LocalBoot>()
            .unwrap_err()
            .contains("no-boot-file"));
        assert_eq!(LocalBoot::NoBootFile.way(), LocalBootWay::NoBootFile);
    }
}
