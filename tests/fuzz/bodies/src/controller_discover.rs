use std::sync::OnceLock;

use substruct_controller::config::Config;
use substruct_controller::discover::check_request;
use substruct_controller::matching::{identity_facts, may_speak_for, proof, resolve};
use substruct_controller::profile::sample_machine;
use substruct_controller::record::MachineRecord;
use substruct_wire::{subjects, SiteId, SiteKey, SitePublicKey};

const NOW: u64 = 1_800_000_000;

/// The controller's handling of a prospector's report, as far as it is pure:
/// `discover::check_request` (decode, subject site, limits), then the identity
/// decisions on the report — `matching::identity_facts`, `resolve` against the sample
/// machine, `proof` of its boot credential against a fixed site key (with and without
/// the site's opt-out) and `may_speak_for`.
///
/// Input: the request payload (an enveloped `DiscoverRequest`), sent on the discover
/// subject of site `s1`, with the default controller config, at a fixed time.
pub fn controller_discover(data: &[u8]) {
    let (config, machine, key, subject) = fixture();
    let Ok(request) = check_request(subject, data, config) else {
        return;
    };
    let _ = identity_facts(&request.report);
    let _ = resolve(&request.report, std::slice::from_ref(machine));
    for allow in [false, true] {
        let p = proof(
            request.boot_token.as_ref(),
            &request.site,
            Some(key),
            allow,
            &request.report,
            NOW,
        );
        let _ = may_speak_for(machine, &p);
    }
}

/// The default config, the sample machine, site `s1`'s public key and its discover
/// subject, built once.
fn fixture() -> &'static (Config, MachineRecord, SitePublicKey, String) {
    static FIXTURE: OnceLock<(Config, MachineRecord, SitePublicKey, String)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let site = SiteId::new("s1").expect("a valid site id");
        (
            Config::default(),
            sample_machine(),
            SiteKey::from_raw([7; 32])
                .expect("a valid raw site key")
                .public_key(),
            subjects::discover(&site),
        )
    })
}
