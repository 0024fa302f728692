use std::sync::OnceLock;

use substruct_wire::{subjects, BootToken, ImageName, Mac, MachineId, NatsUrl, PowerRequestId};
use substruct_wire::{ResourceName, Sha256Digest, SiteId};

/// The wire crate's validated strings and key parsers, as they arrive from KV keys,
/// subjects, the API and the command line: `Mac::parse`, `MachineId`, `SiteId`,
/// `BootToken`, `PowerRequestId`, `ImageName`, `Sha256Digest`, `ResourceName`,
/// `NatsUrl`, and the subject/key readers in `subjects`. A MAC round-trips through its
/// text; an image name has no `.` or `..` component.
///
/// Input: UTF-8 text, tried as each of them; keys and subjects are read as site `s1`'s.
pub fn wire_names(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mac) = Mac::parse(s) {
        assert_eq!(Mac::parse(&mac.to_string()).ok(), Some(mac));
        let _ = mac.to_key();
    }
    let _ = MachineId::new(s);
    let _ = BootToken::new(s);
    let _ = PowerRequestId::new(s);
    if let Ok(name) = ImageName::new(s) {
        assert!(
            !name.as_str().split('/').any(|p| p == ".." || p == "."),
            "{s:?}"
        );
        let _ = name.file_name();
    }
    let _ = Sha256Digest::new(s);
    let _ = ResourceName::new(s);
    if let Ok(url) = NatsUrl::new(s) {
        let _ = url.servers().count();
        let _ = url.has_schemes();
    }
    let site = site();
    let _ = subjects::parse_boot_key(site, s);
    let _ = subjects::parse_bmc_key(site, s);
    let _ = subjects::site_key_rest(site, s);
    let _ = subjects::site_of(s);
    let _ = subjects::is_reply_subject(s);
    if let Ok(site) = SiteId::new(s) {
        let _ = subjects::discover(&site);
    }
}

/// Site `s1`, built once.
fn site() -> &'static SiteId {
    static SITE: OnceLock<SiteId> = OnceLock::new();
    SITE.get_or_init(|| SiteId::new("s1").expect("a valid site id"))
}
