use std::sync::OnceLock;

use data_encoding::BASE64URL_NOPAD;
use nkeys::{KeyPair, KeyPairType};
use substruct_wire::{BootCredential, SiteId, SiteKey, SitePublicKey};

const NOW: u64 = 1_800_000_000;
const RAW: [u8; 32] = [7; 32];

/// Boot credentials: `BootCredential::new` (alphabet, length), `verify` against a fixed
/// site key and site, `unverified_times`, and the key parsers `SitePublicKey::new` and
/// `SiteKey::from_seed`. A credential that verifies must be valid at the fixed time.
///
/// Input: byte 0 picks the mode.
/// - Bit 0 set: the rest is `header.claims` (split at the first `.`; JSON, any bytes)
///   that the body base64url-encodes and signs with the site key itself, so `verify`
///   gets past the signature to the header and claims checks (`$iss` in the claims
///   becomes the site's public key, which a fuzzer cannot guess).
/// - Otherwise the rest is the credential text (UTF-8), also tried as a site public key
///   and as a site key seed.
pub fn credential(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (pair, public, site) = keys();
    let text = if mode & 1 != 0 {
        let mut parts = rest.splitn(2, |&b| b == b'.');
        let header = parts.next().unwrap_or_default();
        let claims = parts.next().unwrap_or_default();
        let claims = String::from_utf8_lossy(claims).replace("$iss", public.as_str());
        let signed = format!(
            "{}.{}",
            BASE64URL_NOPAD.encode(header),
            BASE64URL_NOPAD.encode(claims.as_bytes())
        );
        let signature = pair.sign(signed.as_bytes()).expect("an account key signs");
        format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature))
    } else {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let _ = SitePublicKey::new(text);
        let _ = SiteKey::from_seed(text);
        text.to_owned()
    };
    let Ok(credential) = BootCredential::new(text) else {
        return;
    };
    let _ = credential.unverified_times();
    if let Ok(claims) = credential.verify(public, site, NOW) {
        assert!(claims.issued_unix <= NOW + 3600 && NOW < claims.expires_unix);
    }
}

/// Site `s1`'s key as an nkeys pair (to sign) and as the wire crate's public key (to
/// verify), built once.
fn keys() -> &'static (KeyPair, SitePublicKey, SiteId) {
    static KEYS: OnceLock<(KeyPair, SitePublicKey, SiteId)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pair =
            KeyPair::new_from_raw(KeyPairType::Account, RAW).expect("a valid raw account key");
        let public = SiteKey::from_raw(RAW)
            .expect("a valid raw site key")
            .public_key();
        assert_eq!(public.as_str(), pair.public_key());
        let site = SiteId::new("s1").expect("a valid site id");
        (pair, public, site)
    })
}
