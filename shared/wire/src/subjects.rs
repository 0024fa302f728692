//! NATS subjects, KV buckets and keys. Build them here, never with `format!` elsewhere.

use crate::ids::{BootToken, Mac, MachineId, SiteId};

/// Prefix of every Substruct subject; the `v1` is the subject-space version.
pub const PREFIX: &str = "substruct.v1";

/// KV bucket: machine id → machine record (controller only).
pub const KV_MACHINES: &str = "machines";
/// KV bucket: identity fact → machine id (controller only).
pub const KV_MACHINE_INDEX: &str = "machine_index";
/// KV bucket: `{site}.{mac}` → boot intent.
pub const KV_BOOT: &str = "boot";
/// KV bucket: `{site}.{h}` → rendered install files, `h` derived from the install token
/// (see [`install_key`]).
pub const KV_INSTALL: &str = "install";
/// KV bucket: profile name → profile (controller only).
pub const KV_PROFILES: &str = "profiles";
/// KV bucket: rule name → rule (controller only).
pub const KV_RULES: &str = "rules";
/// KV bucket: image name → image metadata (JSON: `name`, `kind`, `sha256`, `size`).
pub const KV_IMAGES: &str = "images";
/// Object store: image content, one object per image named by its lowercase hex sha256.
pub const OBJ_IMAGES: &str = "images";
/// KV bucket: `{site}.{machine}` → a machine's [`crate::power_msg::BmcSettings`]
/// (envelope-encoded; readable only by that site and the controller).
pub const KV_BMC: &str = "bmc";
/// Queue group of a site's edges serving power requests.
pub const EDGE_POWER_QUEUE: &str = "substruct-edge-power";
/// KV bucket: site name → site registration.
pub const KV_SITES: &str = "sites";
/// Stream holding every machine state change (the audit log).
pub const STREAM_EVENTS: &str = "EVENTS";
/// Queue group the controllers share, so each request is answered once.
pub const CONTROLLER_QUEUE: &str = "substruct-controller";

/// `substruct.v1.{site}.discover` — prospector → controller, request/reply.
pub fn discover(site: &SiteId) -> String {
    format!("{PREFIX}.{site}.discover")
}

/// `substruct.v1.*.discover` — what the controllers subscribe to.
pub fn discover_all() -> String {
    format!("{PREFIX}.*.discover")
}

/// `substruct.v1.{site}.event` — edge/prospector → controller.
pub fn event(site: &SiteId) -> String {
    format!("{PREFIX}.{site}.event")
}

/// `substruct.v1.*.event`.
pub fn event_all() -> String {
    format!("{PREFIX}.*.event")
}

/// `substruct.v1.{site}.callback` — edge/prospector → controller, request/reply.
pub fn callback(site: &SiteId) -> String {
    format!("{PREFIX}.{site}.callback")
}

/// `substruct.v1.*.callback` — what the controllers subscribe to.
pub fn callback_all() -> String {
    format!("{PREFIX}.*.callback")
}

/// `substruct.v1.{site}.power` — controller → edge, request/reply: a power request,
/// answered on a [`site_reply`] subject.
pub fn power(site: &SiteId) -> String {
    format!("{PREFIX}.{site}.power")
}

/// `substruct.v1.{site}.reply.{token}` — where a hub client asks a site's edge to answer
/// a request (a power request): a subject the site may publish to (its own namespace),
/// so the answer crosses the site's leaf node, which carries no hub client's `_INBOX.…`
/// replies. `token` is the request's random id (one token, no `.`).
pub fn site_reply(site: &SiteId, token: &str) -> String {
    format!("{}.{token}", site_reply_prefix(site))
}

/// `substruct.v1.{site}.reply`: the prefix of [`site_reply`].
pub fn site_reply_prefix(site: &SiteId) -> String {
    format!("{PREFIX}.{site}.reply")
}

/// `substruct.v1.{site}.power.result` — edge → controller, request/reply: a power
/// result, acknowledged once recorded.
pub fn power_result(site: &SiteId) -> String {
    format!("{PREFIX}.{site}.power.result")
}

/// `substruct.v1.*.power.result` — what the controllers subscribe to.
pub fn power_result_all() -> String {
    format!("{PREFIX}.*.power.result")
}

/// KV key in [`KV_BMC`]: `{site}.{machine}`.
pub fn bmc_key(site: &SiteId, machine: &MachineId) -> String {
    format!("{site}.{machine}")
}

/// The machine a [`KV_BMC`] key of `site` names: the inverse of [`bmc_key`].
pub fn parse_bmc_key(site: &SiteId, key: &str) -> Option<MachineId> {
    MachineId::new(site_key_rest(site, key)?).ok()
}

/// KV key in [`KV_INSTALL`]: `{site}.{h}`, where `h` is the first 32 lowercase hex digits
/// (128 bits) of sha256(token).
///
/// The token itself must not appear in the key: a site's NATS user may list the key names
/// of the whole bucket (STREAM.INFO with a subjects filter), so tokens in keys would let
/// site A learn site B's live install tokens, which gate B's install files (secrets). Only
/// the values (which carry the token) are readable by the own site alone. The hash is
/// one-way, and 128 bits keep keys of distinct tokens apart.
pub fn install_key(site: &SiteId, token: &BootToken) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(token.as_str().as_bytes());
    format!("{site}.{}", hex::encode(&digest[..16]))
}

/// `substruct.v1.{site}.machine.{id}.cmd` — controller → prospector.
pub fn machine_cmd(site: &SiteId, id: &MachineId) -> String {
    format!("{PREFIX}.{site}.machine.{id}.cmd")
}

/// `substruct.v1.events.{id}` — subject of the EVENTS stream for one machine.
pub fn machine_event(id: &MachineId) -> String {
    format!("{PREFIX}.events.{id}")
}

/// Every subject the EVENTS stream captures.
pub fn machine_events_all() -> String {
    format!("{PREFIX}.events.>")
}

/// The site a subject of the form `substruct.v1.{site}.…` names, if any.
pub fn site_of(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix(PREFIX)?.strip_prefix('.')?;
    rest.split('.').next().filter(|s| !s.is_empty())
}

/// KV key in [`KV_BOOT`]: `{site}.{aabbccddeeff}`.
pub fn boot_key(site: &SiteId, mac: &Mac) -> String {
    format!("{site}.{}", mac.to_key())
}

/// Watch filter for every key of one site in a per-site bucket ([`KV_BOOT`],
/// [`KV_INSTALL`]): `{site}.>`.
pub fn site_keys_filter(site: &SiteId) -> String {
    format!("{site}.>")
}

/// The part of a per-site KV key ([`KV_BOOT`], [`KV_INSTALL`]) after `{site}.`, if `key`
/// is one of `site`'s keys (`s1.x` is, `s10.x` and `s1` are not).
pub fn site_key_rest<'a>(site: &SiteId, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(site.as_str())?.strip_prefix('.')
}

/// Why a KV key is not one of a site's keys of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key belongs to another site (or to none).
    #[error("KV key {0:?} is not one of this site's keys")]
    OtherSite(String),
    /// The key is the site's, but the rest is not a MAC address.
    #[error("KV key {key:?} is not {{site}}.{{mac}}")]
    NotMac {
        /// The refused key.
        key: String,
        /// Why the rest is not a MAC.
        #[source]
        source: crate::ids::IdError,
    },
}

/// The MAC a [`KV_BOOT`] key of `site` names: the inverse of [`boot_key`].
pub fn parse_boot_key(site: &SiteId, key: &str) -> Result<Mac, KeyError> {
    let rest = site_key_rest(site, key).ok_or_else(|| KeyError::OtherSite(key.to_owned()))?;
    Mac::parse(rest).map_err(|source| KeyError::NotMac {
        key: key.to_owned(),
        source,
    })
}

/// KV key in [`KV_MACHINES`].
pub fn machine_key(id: &MachineId) -> String {
    id.as_str().to_owned()
}

/// The reply-inbox prefix of a site's clients, `_INBOX_{site}`: the site's NATS
/// permissions (deploy/nats/gen-site) allow only this one, so no site reads another's
/// replies.
pub fn site_inbox_prefix(site: &SiteId) -> String {
    format!("_INBOX_{site}")
}

/// The inbox prefix of one boot's prospector, `_INBOX_{site}.{boot user key}`: its boot
/// credential lets it subscribe under this prefix only (see
/// [`crate::credential::boot_permissions`]), so it receives its own replies and commands
/// and no other machine's.
pub fn boot_inbox_prefix(site: &SiteId, boot_user_key: &str) -> String {
    format!("_INBOX_{site}.{boot_user_key}")
}

/// `_INBOX_{site}.{boot user key}.cmd` — controller → the prospector that logged in with
/// that boot's credential (the key the controller stored with the machine's record when
/// it accepted the credentialled report). Bound to the credential, not to the machine id,
/// so a prospector can subscribe only to its own commands.
pub fn boot_cmd(site: &SiteId, boot_user_key: &str) -> String {
    format!("{}.cmd", boot_inbox_prefix(site, boot_user_key))
}

/// True when `subject` may be published to as a reply: non-empty `.`-separated tokens,
/// no wildcard (`*`, `>`), no whitespace or control character, at most 1024 bytes. A
/// request whose reply subject fails this is dropped, not answered.
pub fn is_reply_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= 1024
        && subject.split('.').all(|token| {
            !token.is_empty()
                && !token
                    .chars()
                    .any(|c| c == '*' || c == '>' || c.is_whitespace() || c.is_control())
        })
}

/// The stream backing KV bucket `bucket`: `KV_{bucket}`.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The subjects of KV bucket `bucket`'s stream: `$KV.{bucket}.>`.
pub fn kv_stream_subjects(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

/// The stream backing object store `store`: `OBJ_{store}`.
pub fn object_stream(store: &str) -> String {
    format!("OBJ_{store}")
}

/// The subjects of object store `store`'s stream: chunks `$O.{store}.C.>` and
/// metadata `$O.{store}.M.>`.
pub fn object_stream_subjects(store: &str) -> [String; 2] {
    [format!("$O.{store}.C.>"), format!("$O.{store}.M.>")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_subjects_and_stream_names() {
        for good in ["_INBOX.abc.def", "_INBOX_s1.x", "a", "$JS.ACK.x"] {
            assert!(is_reply_subject(good), "{good}");
        }
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b", "a\tb", "*"] {
            assert!(!is_reply_subject(bad), "{bad:?}");
        }
        assert!(!is_reply_subject(&"a".repeat(1025)));
        assert_eq!(site_inbox_prefix(&SiteId::new("s1").unwrap()), "_INBOX_s1");
        assert_eq!(kv_stream("boot"), "KV_boot");
        assert_eq!(kv_stream_subjects("boot"), "$KV.boot.>");
        assert_eq!(object_stream("images"), "OBJ_images");
        assert_eq!(
            object_stream_subjects("images"),
            ["$O.images.C.>", "$O.images.M.>"]
        );
    }

    #[test]
    fn subjects_are_built_in_one_place() {
        let site = SiteId::new("dc1").unwrap();
        let id = MachineId::new("m-1").unwrap();
        assert_eq!(discover(&site), "substruct.v1.dc1.discover");
        assert_eq!(event(&site), "substruct.v1.dc1.event");
        assert_eq!(machine_cmd(&site, &id), "substruct.v1.dc1.machine.m-1.cmd");
        assert_eq!(site_of("substruct.v1.dc1.discover"), Some("dc1"));
        assert_eq!(site_of("other.v1.dc1.discover"), None);
        assert_eq!(site_of("substruct.v1."), None);
        let mac = Mac::parse("52:54:00:00:00:0a").unwrap();
        assert_eq!(boot_key(&site, &mac), "dc1.52540000000a");
        assert_eq!(callback(&site), "substruct.v1.dc1.callback");
        assert_eq!(power(&site), "substruct.v1.dc1.power");
        assert_eq!(power_result(&site), "substruct.v1.dc1.power.result");
        assert_eq!(power_result_all(), "substruct.v1.*.power.result");
        assert_eq!(bmc_key(&site, &id), "dc1.m-1");
        assert_eq!(parse_bmc_key(&site, "dc1.m-1"), Some(id.clone()));
        assert_eq!(parse_bmc_key(&site, "dc10.m-1"), None);
        assert_eq!(parse_bmc_key(&site, "dc1.M"), None);
        let token = BootToken::new("t-1").unwrap();
        assert_eq!(
            install_key(&site, &token),
            "dc1.46e9bc3476c92ea24fb17adac6cd9cda"
        );
    }

    #[test]
    fn site_keys_parse_back() {
        let site = SiteId::new("s1").unwrap();
        let mac = Mac::parse("52:54:00:00:00:0a").unwrap();
        assert_eq!(site_keys_filter(&site), "s1.>");
        assert_eq!(parse_boot_key(&site, &boot_key(&site, &mac)), Ok(mac));
        assert_eq!(site_key_rest(&site, "s1.abc"), Some("abc"));
        for other in [
            "s10.52540000000a",
            "s2.52540000000a",
            "s1",
            "s152540000000a",
        ] {
            assert_eq!(site_key_rest(&site, other), None, "{other}");
            assert!(
                matches!(parse_boot_key(&site, other), Err(KeyError::OtherSite(_))),
                "{other}"
            );
        }
        assert!(matches!(
            parse_boot_key(&site, "s1.nonsense"),
            Err(KeyError::NotMac { .. })
        ));
    }

    #[test]
    fn install_keys_hide_the_token() {
        let site = SiteId::new("dc1").unwrap();
        let token = BootToken::new("secret-token-1").unwrap();
        let key = install_key(&site, &token);
        let h = key.strip_prefix("dc1.").unwrap();
        assert_eq!(h.len(), 32, "{key}");
        assert!(
            h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{key}"
        );
        assert!(!key.contains("secret"), "{key}");
        // Stable per token, distinct across tokens and sites.
        assert_eq!(install_key(&site, &token), key);
        let other = BootToken::new("secret-token-2").unwrap();
        assert_ne!(install_key(&site, &other), key);
        let s2 = SiteId::new("dc2").unwrap();
        assert_eq!(install_key(&s2, &token), format!("dc2.{h}"));
    }
}
