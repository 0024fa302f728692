//! Boot credentials: what the edge gives a machine when it serves that machine's boot
//! script, and what the controller checks before it lets a report speak for a known
//! machine.
//!
//! Every site has an ed25519 signing key, an NATS *account* nkey ([`SiteKey`], seed
//! `SA…`): the edge holds the seed, the controller knows the public key
//! ([`SitePublicKey`], `A…`), registered by an operator with the site. For a boot of
//! MAC `M` the edge signs [`BootClaims`] `{site, mac, issued, expires, boot key}` into a
//! [`BootCredential`], put on the prospector's kernel command line; the prospector sends
//! it back in `DiscoverRequest.boot_token`.
//!
//! The encoding is a NATS user JWT (`header.claims.signature`, base64url without
//! padding, header `{"typ":"JWT","alg":"ed25519-nkey"}`, signature by the issuer's nkey
//! over `header.claims`): `iss` is the site's key, `aud` the site, `name` the MAC, `sub` a
//! per-boot user nkey, `iat`/`exp` unix seconds, `jti` the hash of the claims as the NATS
//! tools compute it, and `nats` the user's permissions ([`boot_permissions`]). The same
//! credential is the prospector's login to the site's leaf node: the leaf runs in
//! operator mode with the site key's account ([`LeafTrust`]), the edge hands the boot
//! key's seed ([`boot_user_seed`]) to the machine next to the credential, and the leaf
//! verifies each login against the site key with no reload. [`sign_user_jwt`] signs the
//! edge's own login the same way; [`BootCredential::renew`] extends a boot's credential
//! for the same user key.
//!
//! Pure: time and randomness come in as arguments; no I/O.

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::{KeyPair, KeyPairType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512_256};

use crate::ids::{Mac, SiteId};
use crate::names::string_newtype;

/// Longest credential the wire accepts (a real one, with its NATS permissions, is about
/// 880 characters, about 1,200 for a 32-character site name; the kernel's command line
/// holds 2,048 on x86).
pub const MAX_CREDENTIAL_LEN: usize = 1400;

/// How long a credential issued by the edge is valid by default: a boot, its report and
/// its retries through a short WAN cut.
pub const DEFAULT_LIFETIME_SECS: u64 = 2 * 60 * 60;

/// How far the issuer's clock may run ahead of the verifier's.
pub const CLOCK_SKEW_SECS: u64 = 5 * 60;

/// The JWT header of every credential (NATS' nkey-signed JWT).
const HEADER_JSON: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Why a credential, or a key, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("boot credential is empty")]
    Empty,
    #[error("boot credential is {0} characters, more than {MAX_CREDENTIAL_LEN}")]
    TooLong(usize),
    #[error("boot credential contains {0:?}; allowed are A-Z, a-z, 0-9, '-', '_' and '.'")]
    BadChar(char),
    #[error("boot credential is malformed: {0}")]
    Malformed(&'static str),
    #[error("boot credential's signature does not verify with the site's key")]
    BadSignature,
    #[error("boot credential was issued by {found}, not by the site's key {expected}")]
    WrongIssuer { expected: String, found: String },
    #[error("boot credential is for site {found:?}, not {expected:?}")]
    WrongSite { expected: String, found: String },
    #[error("boot credential expired at {expires} (now {now}, unix seconds)")]
    Expired { expires: u64, now: u64 },
    #[error("boot credential is issued at {issued}, in the future (now {now}, unix seconds)")]
    NotYetValid { issued: u64, now: u64 },
    #[error("boot credential is for MAC {0}, which the report does not have")]
    MacNotReported(Mac),
    #[error("{what} is not a valid nkey: {reason}")]
    BadKey { what: &'static str, reason: String },
}

/// A boot credential as it travels: an opaque, bounded string of `A-Za-z0-9-_.`, checked
/// on construction and on deserialization. Whether it is *valid* is
/// [`BootCredential::verify`]'s question. Serializes as a plain string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BootCredential(String);

string_newtype!(BootCredential, CredentialError);

impl BootCredential {
    /// Checks the alphabet and length (not the signature) and wraps `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, CredentialError> {
        let value = value.into();
        if value.is_empty() {
            return Err(CredentialError::Empty);
        }
        if value.len() > MAX_CREDENTIAL_LEN {
            return Err(CredentialError::TooLong(value.len()));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(CredentialError::BadChar(bad));
        }
        Ok(Self(value))
    }

    /// Signs claims for one boot of `mac` at `site`, issued at `now` (unix seconds), valid
    /// for `lifetime_secs`. `boot_seed` is 32 random bytes: the per-boot user key (`sub`).
    /// The JWT carries [`boot_permissions`], so the leaf node lets a prospector logged in
    /// with it (and the boot key's seed, [`boot_user_seed`]) do only what a boot needs.
    pub fn issue(
        key: &SiteKey,
        site: &SiteId,
        mac: Mac,
        now: u64,
        lifetime_secs: u64,
        boot_seed: [u8; 32],
    ) -> Result<Self, CredentialError> {
        let boot_key = boot_key_pair(boot_seed)?;
        Self::issue_for(key, site, mac, now, lifetime_secs, &boot_key.public_key())
    }

    /// [`BootCredential::issue`] for a known boot user key (`U…`): what a renewal signs.
    fn issue_for(
        key: &SiteKey,
        site: &SiteId,
        mac: Mac,
        now: u64,
        lifetime_secs: u64,
        boot_user_key: &str,
    ) -> Result<Self, CredentialError> {
        let jwt = sign_user_jwt(
            key,
            &UserJwt {
                user_key: boot_user_key,
                name: &mac.to_string(),
                audience: Some(site.as_str()),
                issued_unix: now,
                expires_unix: Some(now.saturating_add(lifetime_secs)),
                permissions: Some(boot_permissions(site, boot_user_key)),
            },
        )?;
        Self::new(jwt)
    }

    /// A fresh credential for the same boot (same MAC, same boot user key, so the same
    /// inbox and command subject), valid `lifetime_secs` from `now`: what the edge's
    /// renewal route hands a prospector that waits longer than a credential lives. The
    /// old credential must verify with `key` for `site` except for its expiry (an expired
    /// one renews too: whoever may ask for a renewal, the address leased to its MAC, may
    /// also fetch a whole new boot script).
    pub fn renew(
        &self,
        key: &SiteKey,
        site: &SiteId,
        now: u64,
        lifetime_secs: u64,
    ) -> Result<(Self, BootClaims), CredentialError> {
        let claims = match self.verify(&key.public_key(), site, now) {
            Ok(c) => c,
            Err(CredentialError::Expired { expires, .. }) => {
                self.verify(&key.public_key(), site, expires.saturating_sub(1))?
            }
            Err(e) => return Err(e),
        };
        let renewed = Self::issue_for(key, site, claims.mac, now, lifetime_secs, &claims.boot_key)?;
        let claims = renewed.verify(&key.public_key(), site, now)?;
        Ok((renewed, claims))
    }

    /// Checks the credential against the site's registered key at `now` (unix seconds):
    /// well formed, signed by `key`, issued by `key`, for `site`, not expired, not issued
    /// in the future (beyond [`CLOCK_SKEW_SECS`]). Returns its claims.
    pub fn verify(
        &self,
        key: &SitePublicKey,
        site: &SiteId,
        now: u64,
    ) -> Result<BootClaims, CredentialError> {
        let mut parts = self.0.split('.');
        let (Some(header), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CredentialError::Malformed("not three '.'-separated parts"));
        };
        let header = BASE64URL_NOPAD
            .decode(header.as_bytes())
            .map_err(|_| CredentialError::Malformed("header is not base64url"))?;
        let header: JwtHeader = serde_json::from_slice(&header)
            .map_err(|_| CredentialError::Malformed("header is not a JWT header"))?;
        if header.typ != "JWT" || header.alg != "ed25519-nkey" {
            return Err(CredentialError::Malformed(
                "header is not typ JWT, alg ed25519-nkey",
            ));
        }
        let signature = BASE64URL_NOPAD
            .decode(signature.as_bytes())
            .map_err(|_| CredentialError::Malformed("signature is not base64url"))?;
        let signed_len = self.0.len() - signature_len(&self.0);
        let signing_input = &self.0.as_bytes()[..signed_len];
        key.verifier()?
            .verify(signing_input, &signature)
            .map_err(|_| CredentialError::BadSignature)?;
        let body = BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| CredentialError::Malformed("claims are not base64url"))?;
        let claims: JwtClaims = serde_json::from_slice(&body)
            .map_err(|_| CredentialError::Malformed("claims are not the boot claims"))?;
        if claims.iss != key.as_str() {
            return Err(CredentialError::WrongIssuer {
                expected: key.as_str().to_owned(),
                found: claims.iss,
            });
        }
        if claims.aud != site.as_str() {
            return Err(CredentialError::WrongSite {
                expected: site.as_str().to_owned(),
                found: claims.aud,
            });
        }
        if claims.nats.kind != "user" {
            return Err(CredentialError::Malformed("claims are not a user's"));
        }
        if now >= claims.exp {
            return Err(CredentialError::Expired {
                expires: claims.exp,
                now,
            });
        }
        if claims.iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(CredentialError::NotYetValid {
                issued: claims.iat,
                now,
            });
        }
        let mac = Mac::parse(&claims.name)
            .map_err(|_| CredentialError::Malformed("name is not a MAC address"))?;
        Ok(BootClaims {
            site: site.clone(),
            mac,
            issued_unix: claims.iat,
            expires_unix: claims.exp,
            boot_key: claims.sub,
        })
    }
}

impl BootCredential {
    /// `(iat, exp)` read from the claims WITHOUT checking the signature: for the holder
    /// deciding when to renew, never for trusting anything. `None` if unreadable.
    pub fn unverified_times(&self) -> Option<(u64, u64)> {
        let body = self.0.split('.').nth(1)?;
        let body = BASE64URL_NOPAD.decode(body.as_bytes()).ok()?;
        let claims: JwtClaims = serde_json::from_slice(&body).ok()?;
        Some((claims.iat, claims.exp))
    }
}

/// Length of the signature part, with its separating '.'.
fn signature_len(credential: &str) -> usize {
    credential
        .rfind('.')
        .map_or(0, |dot| credential.len() - dot)
}

fn json_error() -> CredentialError {
    CredentialError::Malformed("claims do not encode as JSON")
}

/// What a verified credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootClaims {
    /// The site whose key signed it.
    pub site: SiteId,
    /// The MAC the edge served the boot script to.
    pub mac: Mac,
    pub issued_unix: u64,
    pub expires_unix: u64,
    /// The per-boot user nkey (`U…`), the JWT's `sub`.
    pub boot_key: String,
}

impl BootClaims {
    /// The credential's MAC, if it is one of `macs` (the report's); refused by name
    /// otherwise.
    pub fn require_mac<'a>(
        &self,
        mut macs: impl Iterator<Item = &'a Mac>,
    ) -> Result<Mac, CredentialError> {
        if macs.any(|m| *m == self.mac) {
            Ok(self.mac)
        } else {
            Err(CredentialError::MacNotReported(self.mac))
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct JwtHeader {
    typ: String,
    alg: String,
}

/// The JWT claims, in the field order the NATS tools write (what `verify` reads back).
#[derive(Debug, Serialize, Deserialize)]
struct JwtClaims {
    jti: String,
    iat: u64,
    iss: String,
    name: String,
    sub: String,
    exp: u64,
    aud: String,
    nats: NatsClaims,
}

#[derive(Debug, Serialize, Deserialize)]
struct NatsClaims {
    #[serde(rename = "type")]
    kind: String,
    version: u32,
}

/// The boot user's subscription cap: its reply inbox and its command subscription, with
/// room for the client's re-subscriptions.
pub const BOOT_MAX_SUBSCRIPTIONS: i64 = 16;

/// What a NATS user may do, as its JWT's `nats.pub`/`nats.sub` allow lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserPermissions {
    /// Subjects it may publish to (wildcards allowed).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Most subscriptions at once (`None`: no limit).
    pub max_subscriptions: Option<i64>,
}

/// The permissions of a boot's user: publish only the site's `discover`, `callback` and
/// `event` requests, subscribe only under its own inbox prefix
/// ([`crate::subjects::boot_inbox_prefix`]: replies and its commands), at most
/// [`BOOT_MAX_SUBSCRIPTIONS`] subscriptions. No `$JS`/`$KV` API, no other machine's
/// subjects, no answering requests.
pub fn boot_permissions(site: &SiteId, boot_user_key: &str) -> UserPermissions {
    UserPermissions {
        publish: vec![
            crate::subjects::discover(site),
            crate::subjects::callback(site),
            crate::subjects::event(site),
        ],
        subscribe: vec![format!(
            "{}.>",
            crate::subjects::boot_inbox_prefix(site, boot_user_key)
        )],
        max_subscriptions: Some(BOOT_MAX_SUBSCRIPTIONS),
    }
}

/// A user JWT to sign with a site key ([`sign_user_jwt`]).
#[derive(Debug, Clone)]
pub struct UserJwt<'a> {
    /// The user's public nkey (`U…`): who must sign the server's nonce to log in.
    pub user_key: &'a str,
    /// The JWT's `name` (a boot's MAC, or e.g. `edge dc1`).
    pub name: &'a str,
    /// The JWT's `aud` (a boot credential: the site).
    pub audience: Option<&'a str>,
    /// `iat`, unix seconds.
    pub issued_unix: u64,
    /// `exp`, unix seconds (`None`: does not expire).
    pub expires_unix: Option<u64>,
    /// `None`: anything within the site's account.
    pub permissions: Option<UserPermissions>,
}

/// Signs a NATS user JWT with the site's key (the issuer: the site's account). The user
/// may connect only as a normal client (not as a leaf node or over websockets) and must
/// prove it holds the user key's seed (no bearer login).
pub fn sign_user_jwt(key: &SiteKey, user: &UserJwt<'_>) -> Result<String, CredentialError> {
    let mut nats = serde_json::Map::new();
    let list = |v: &[String]| serde_json::json!({ "allow": v });
    let mut subs = -1;
    if let Some(p) = &user.permissions {
        nats.insert("pub".into(), list(&p.publish));
        nats.insert("sub".into(), list(&p.subscribe));
        subs = p.max_subscriptions.unwrap_or(-1);
    }
    // Limits are explicit: nats-server reads a missing `subs` as 0 (no subscription).
    nats.insert("subs".into(), subs.into());
    nats.insert("data".into(), (-1).into());
    nats.insert("payload".into(), (-1).into());
    nats.insert(
        "allowed_connection_types".into(),
        serde_json::json!(["STANDARD"]),
    );
    nats.insert("type".into(), "user".into());
    nats.insert("version".into(), 2.into());
    let mut claims = serde_json::Map::new();
    claims.insert("jti".into(), "".into());
    claims.insert("iat".into(), user.issued_unix.into());
    claims.insert("iss".into(), key.public_key().0.into());
    claims.insert("name".into(), user.name.into());
    claims.insert("sub".into(), user.user_key.into());
    if let Some(exp) = user.expires_unix {
        claims.insert("exp".into(), exp.into());
    }
    if let Some(aud) = user.audience {
        claims.insert("aud".into(), aud.into());
    }
    claims.insert("nats".into(), nats.into());
    sign_jwt(&key.0, claims)
}

/// Signs `claims` (with an empty `jti`) as an nkey JWT: `jti` = base32(sha512/256(claims
/// with an empty jti)), as the NATS tools compute it.
fn sign_jwt(
    signer: &KeyPair,
    mut claims: serde_json::Map<String, serde_json::Value>,
) -> Result<String, CredentialError> {
    let unsigned = serde_json::to_vec(&claims).map_err(|_| json_error())?;
    claims.insert(
        "jti".into(),
        BASE32_NOPAD.encode(&Sha512_256::digest(&unsigned)).into(),
    );
    let body = serde_json::to_vec(&claims).map_err(|_| json_error())?;
    let signing_input = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(HEADER_JSON.as_bytes()),
        BASE64URL_NOPAD.encode(&body)
    );
    let signature = signer
        .sign(signing_input.as_bytes())
        .map_err(|e| CredentialError::BadKey {
            what: "signing key",
            reason: e.to_string(),
        })?;
    Ok(format!(
        "{signing_input}.{}",
        BASE64URL_NOPAD.encode(&signature)
    ))
}

/// The boot user's key pair from the 32 random bytes the edge drew for that boot.
fn boot_key_pair(boot_seed: [u8; 32]) -> Result<KeyPair, CredentialError> {
    KeyPair::new_from_raw(KeyPairType::User, boot_seed).map_err(|e| CredentialError::BadKey {
        what: "boot key",
        reason: e.to_string(),
    })
}

/// The boot user key's seed (`SU…`) from the edge's 32 random bytes: what the edge puts on
/// the kernel command line next to the credential, so the prospector can log in.
pub fn boot_user_seed(boot_seed: [u8; 32]) -> Result<String, CredentialError> {
    boot_key_pair(boot_seed)?
        .seed()
        .map_err(|e| CredentialError::BadKey {
            what: "boot key",
            reason: e.to_string(),
        })
}

/// A fresh user key pair (seed `SU…`, public `U…`) from 32 random bytes: the edge's own
/// NATS login, made at each start.
pub fn user_key_pair(random: [u8; 32]) -> Result<(String, String), CredentialError> {
    let pair = boot_key_pair(random)?;
    let seed = pair.seed().map_err(|e| CredentialError::BadKey {
        what: "user key",
        reason: e.to_string(),
    })?;
    Ok((seed, pair.public_key()))
}

/// The trust a site's leaf node runs with (operator mode): an operator made for this
/// site alone, and the site's account (its public key: the site key's), signed by that
/// operator. The leaf node then accepts exactly the users the site key signs, with no
/// reload when a new one logs in; the operator's seed is dropped after signing, so
/// nothing else can ever be trusted by this leaf node.
#[derive(Debug, Clone)]
pub struct LeafTrust {
    /// The operator JWT (self-signed).
    pub operator_jwt: String,
    /// The site account's JWT, signed by the operator.
    pub account_jwt: String,
    /// The site account: the site key's public key.
    pub account: SitePublicKey,
}

impl LeafTrust {
    /// Signs the operator and account JWTs for `site`'s key at `now` (unix seconds);
    /// `operator_random` (32 random bytes) becomes the throw-away operator key.
    pub fn new(
        key: &SiteKey,
        site: &SiteId,
        operator_random: [u8; 32],
        now: u64,
    ) -> Result<Self, CredentialError> {
        let operator =
            KeyPair::new_from_raw(KeyPairType::Operator, operator_random).map_err(|e| {
                CredentialError::BadKey {
                    what: "operator key",
                    reason: e.to_string(),
                }
            })?;
        let op = operator.public_key();
        let operator_jwt = sign_jwt(
            &operator,
            serde_json::json!({
                "jti": "", "iat": now, "iss": op, "name": format!("substruct-site-{site}"),
                "sub": op, "nats": {"type": "operator", "version": 2}
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        )?;
        let account = key.public_key();
        let account_jwt = sign_jwt(
            &operator,
            serde_json::json!({
                "jti": "", "iat": now, "iss": op, "name": format!("site-{site}"),
                "sub": account.as_str(),
                "nats": {
                    // -1 = no limit; a missing limit reads as 0. No JetStream here: the
                    // hub's is reached through the leaf link. Bearer JWTs are refused:
                    // every login proves it holds its user key's seed.
                    "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1,
                               "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                               "disallow_bearer": true},
                    "default_permissions": {"pub": {}, "sub": {}},
                    "type": "account", "version": 2
                }
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        )?;
        Ok(Self {
            operator_jwt,
            account_jwt,
            account,
        })
    }

    /// The leaf config's trust block (`operator`, the in-memory resolver with the site's
    /// account preloaded) and the variable `SITE_ACCOUNT` that the template's leaf
    /// remote binds to (deploy/nats/leaf.conf.tmpl).
    pub fn config(&self) -> String {
        format!(
            "# The site's trust (substruct-edge leaf-auth): users signed by the site key.\n\
             SITE_ACCOUNT: \"{account}\"\n\
             operator: \"{operator}\"\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  {account}: \"{jwt}\"\n}}\n",
            account = self.account,
            operator = self.operator_jwt,
            jwt = self.account_jwt,
        )
    }
}

/// A site's signing key (an account nkey; its seed starts with `SA`). Held by the edge.
#[derive(Debug)]
pub struct SiteKey(KeyPair);

impl SiteKey {
    /// A key from 32 random bytes (the caller's RNG).
    pub fn from_raw(random: [u8; 32]) -> Result<Self, CredentialError> {
        KeyPair::new_from_raw(KeyPairType::Account, random)
            .map(Self)
            .map_err(|e| CredentialError::BadKey {
                what: "site key",
                reason: e.to_string(),
            })
    }

    /// Reads a seed (`SA…`, surrounding whitespace ignored).
    pub fn from_seed(seed: &str) -> Result<Self, CredentialError> {
        let bad = |reason: String| CredentialError::BadKey {
            what: "site key seed",
            reason,
        };
        let pair = KeyPair::from_seed(seed.trim()).map_err(|e| bad(e.to_string()))?;
        if !matches!(pair.key_pair_type(), KeyPairType::Account) {
            return Err(bad("not an account seed (SA…)".to_owned()));
        }
        Ok(Self(pair))
    }

    /// The seed, to write to the edge's key file.
    pub fn seed(&self) -> Result<String, CredentialError> {
        self.0.seed().map_err(|e| CredentialError::BadKey {
            what: "site key",
            reason: e.to_string(),
        })
    }

    /// The public key, to register with the site.
    pub fn public_key(&self) -> SitePublicKey {
        SitePublicKey(self.0.public_key())
    }
}

/// A site's public key (`A…`, 56 characters), as registered with the controller.
/// Validated on construction and deserialization; serializes as a plain string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SitePublicKey(String);

string_newtype!(SitePublicKey, CredentialError);

impl SitePublicKey {
    /// Checks that `value` is an account public nkey.
    pub fn new(value: impl Into<String>) -> Result<Self, CredentialError> {
        let value = value.into();
        let key = Self(value.trim().to_owned());
        key.verifier()?;
        Ok(key)
    }

    fn verifier(&self) -> Result<KeyPair, CredentialError> {
        let bad = |reason: String| CredentialError::BadKey {
            what: "site public key",
            reason,
        };
        let pair = KeyPair::from_public_key(&self.0).map_err(|e| bad(e.to_string()))?;
        if !matches!(pair.key_pair_type(), KeyPairType::Account) {
            return Err(bad("not an account public key (A…)".to_owned()));
        }
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000;

    fn site() -> SiteId {
        SiteId::new("dc1").unwrap()
    }
    fn key(n: u8) -> SiteKey {
        SiteKey::from_raw([n; 32]).unwrap()
    }
    fn mac() -> Mac {
        Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56])
    }
    fn issue(k: &SiteKey) -> BootCredential {
        BootCredential::issue(k, &site(), mac(), NOW, DEFAULT_LIFETIME_SECS, [9; 32]).unwrap()
    }

    #[test]
    fn a_credential_verifies_and_names_its_mac() {
        let k = key(1);
        let c = issue(&k);
        assert!(c.as_str().len() <= 1000, "{} chars", c.as_str().len());
        let claims = c.verify(&k.public_key(), &site(), NOW + 60).unwrap();
        assert_eq!(claims.mac, mac());
        assert_eq!(claims.expires_unix, NOW + DEFAULT_LIFETIME_SECS);
        assert!(claims.boot_key.starts_with('U'));
        assert_eq!(claims.require_mac([mac()].iter()), Ok(mac()));
        // Through the wire: a plain string.
        let back: BootCredential =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn the_claims_are_a_nats_user_jwt() {
        let c = issue(&key(1));
        let parts: Vec<&str> = c.as_str().split('.').collect();
        let header = BASE64URL_NOPAD.decode(parts[0].as_bytes()).unwrap();
        assert_eq!(header, HEADER_JSON.as_bytes());
        let body: serde_json::Value =
            serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
        assert_eq!(body["nats"]["type"], "user");
        assert_eq!(body["aud"], "dc1");
        assert_eq!(body["name"], "52:54:00:12:34:56");
        assert_eq!(body["jti"].as_str().unwrap().len(), 52);
    }

    #[test]
    fn the_longest_site_name_still_fits() {
        let long = SiteId::new("a".repeat(32)).unwrap();
        let c = BootCredential::issue(&key(1), &long, mac(), NOW, 60, [9; 32]).unwrap();
        assert!(c.as_str().len() <= MAX_CREDENTIAL_LEN);
    }

    #[test]
    fn the_boot_jwt_confines_the_user_to_its_requests_and_inbox() {
        let c = issue(&key(1));
        let parts: Vec<&str> = c.as_str().split('.').collect();
        let body: serde_json::Value =
            serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
        let sub = body["sub"].as_str().unwrap().to_owned();
        assert_eq!(
            body["nats"]["pub"]["allow"],
            serde_json::json!([
                "substruct.v1.dc1.discover",
                "substruct.v1.dc1.callback",
                "substruct.v1.dc1.event"
            ])
        );
        assert_eq!(
            body["nats"]["sub"]["allow"],
            serde_json::json!([format!("_INBOX_dc1.{sub}.>")])
        );
        assert_eq!(body["nats"]["subs"], BOOT_MAX_SUBSCRIPTIONS);
        assert_eq!(
            body["nats"]["allowed_connection_types"],
            serde_json::json!(["STANDARD"])
        );
        // The seed the edge hands out is this user's.
        let seed = boot_user_seed([9; 32]).unwrap();
        assert_eq!(KeyPair::from_seed(&seed).unwrap().public_key(), sub);
        assert_eq!(
            c.unverified_times(),
            Some((NOW, NOW + DEFAULT_LIFETIME_SECS))
        );
    }

    #[test]
    fn a_renewal_keeps_the_boot_and_needs_the_key() {
        let k = key(1);
        let c = issue(&k);
        let first = c.verify(&k.public_key(), &site(), NOW).unwrap();
        // Expired credentials renew too (see `renew`).
        let later = NOW + DEFAULT_LIFETIME_SECS + 10;
        let (r, claims) = c.renew(&k, &site(), later, 60).unwrap();
        assert_eq!(claims.boot_key, first.boot_key);
        assert_eq!(claims.mac, first.mac);
        assert_eq!(claims.expires_unix, later + 60);
        assert!(r.verify(&k.public_key(), &site(), later).is_ok());
        // Another key's or another site's credential does not renew.
        assert!(c.renew(&key(2), &site(), later, 60).is_err());
        let dc2 = SiteId::new("dc2").unwrap();
        assert!(c.renew(&k, &dc2, later, 60).is_err());
    }

    #[test]
    fn the_leaf_trust_names_the_site_key_as_its_account() {
        let k = key(1);
        let t = LeafTrust::new(&k, &site(), [3; 32], NOW).unwrap();
        assert_eq!(t.account, k.public_key());
        let body = |jwt: &str| -> serde_json::Value {
            let part = jwt.split('.').nth(1).unwrap();
            serde_json::from_slice(&BASE64URL_NOPAD.decode(part.as_bytes()).unwrap()).unwrap()
        };
        let op = body(&t.operator_jwt);
        let acc = body(&t.account_jwt);
        assert_eq!(op["iss"], op["sub"]);
        assert_eq!(acc["iss"], op["sub"]);
        assert_eq!(acc["sub"], k.public_key().as_str());
        assert_eq!(acc["nats"]["limits"]["disallow_bearer"], true);
        // Both signed by the operator.
        let operator = KeyPair::from_public_key(op["sub"].as_str().unwrap()).unwrap();
        for jwt in [&t.operator_jwt, &t.account_jwt] {
            let (signed, sig) = jwt.rsplit_once('.').unwrap();
            let sig = BASE64URL_NOPAD.decode(sig.as_bytes()).unwrap();
            operator.verify(signed.as_bytes(), &sig).unwrap();
        }
        let conf = t.config();
        assert!(conf.contains(&format!("SITE_ACCOUNT: \"{}\"", k.public_key())));
        assert!(conf.contains("resolver: MEMORY"));
    }

    #[test]
    fn another_sites_key_is_refused() {
        let c = issue(&key(1));
        let e = c.verify(&key(2).public_key(), &site(), NOW).unwrap_err();
        assert_eq!(e, CredentialError::BadSignature);
    }

    #[test]
    fn a_forged_signature_is_refused() {
        let c = issue(&key(1));
        // Same claims, signature of other claims.
        let other =
            BootCredential::issue(&key(1), &site(), Mac([2, 0, 0, 0, 0, 9]), NOW, 60, [9; 32])
                .unwrap();
        let (head, _) = c.as_str().rsplit_once('.').unwrap();
        let (_, sig) = other.as_str().rsplit_once('.').unwrap();
        let forged = BootCredential::new(format!("{head}.{sig}")).unwrap();
        let e = forged
            .verify(&key(1).public_key(), &site(), NOW)
            .unwrap_err();
        assert_eq!(e, CredentialError::BadSignature);
        // Claims edited after signing (another MAC) do not verify either.
        let parts: Vec<&str> = c.as_str().split('.').collect();
        let body = String::from_utf8(BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap())
            .unwrap()
            .replace("52:54:00:12:34:56", "52:54:00:99:99:99");
        let edited = BootCredential::new(format!(
            "{}.{}.{}",
            parts[0],
            BASE64URL_NOPAD.encode(body.as_bytes()),
            parts[2]
        ))
        .unwrap();
        let e = edited
            .verify(&key(1).public_key(), &site(), NOW)
            .unwrap_err();
        assert_eq!(e, CredentialError::BadSignature);
    }

    #[test]
    fn another_site_is_refused() {
        let k = key(1);
        let c = issue(&k);
        let e = c
            .verify(&k.public_key(), &SiteId::new("dc2").unwrap(), NOW)
            .unwrap_err();
        assert!(matches!(e, CredentialError::WrongSite { .. }), "{e}");
    }

    #[test]
    fn expired_and_future_credentials_are_refused() {
        let k = key(1);
        let c = issue(&k);
        let e = c
            .verify(&k.public_key(), &site(), NOW + DEFAULT_LIFETIME_SECS)
            .unwrap_err();
        assert!(matches!(e, CredentialError::Expired { .. }), "{e}");
        let e = c
            .verify(&k.public_key(), &site(), NOW - CLOCK_SKEW_SECS - 1)
            .unwrap_err();
        assert!(matches!(e, CredentialError::NotYetValid { .. }), "{e}");
        assert!(c
            .verify(&k.public_key(), &site(), NOW - CLOCK_SKEW_SECS)
            .is_ok());
    }

    #[test]
    fn a_mac_the_report_lacks_is_refused() {
        let k = key(1);
        let claims = issue(&k).verify(&k.public_key(), &site(), NOW).unwrap();
        let e = claims
            .require_mac([Mac([2, 0, 0, 0, 0, 1])].iter())
            .unwrap_err();
        assert_eq!(e, CredentialError::MacNotReported(mac()));
        assert!(e.to_string().contains("52:54:00:12:34:56"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_credentials_are_refused_by_name() {
        let k = key(1);
        let pk = k.public_key();
        let c = issue(&k);
        let s = c.as_str();
        for cut in [1, 40, s.len() / 2, s.len() - 10, s.len() - 1] {
            let Ok(t) = BootCredential::new(&s[..cut]) else {
                continue;
            };
            let e = t.verify(&pk, &site(), NOW).unwrap_err();
            assert!(
                matches!(
                    e,
                    CredentialError::Malformed(_) | CredentialError::BadSignature
                ),
                "cut at {cut}: {e}"
            );
        }
        for garbage in ["t0", "a.b.c", "a.b.c.d", "....", "0123456789abcdef"] {
            let e = BootCredential::new(garbage)
                .unwrap()
                .verify(&pk, &site(), NOW)
                .unwrap_err();
            assert!(matches!(e, CredentialError::Malformed(_)), "{garbage}: {e}");
        }
        assert_eq!(BootCredential::new(""), Err(CredentialError::Empty));
        assert_eq!(
            BootCredential::new("a b"),
            Err(CredentialError::BadChar(' '))
        );
        assert_eq!(
            BootCredential::new("x".repeat(MAX_CREDENTIAL_LEN + 1)),
            Err(CredentialError::TooLong(MAX_CREDENTIAL_LEN + 1))
        );
        // Not deserializable either.
        assert!(serde_json::from_str::<BootCredential>("\"a\\nb\"").is_err());
    }

    #[test]
    fn keys_round_trip_and_wrong_kinds_are_refused() {
        let k = key(3);
        let again = SiteKey::from_seed(&format!("{}\n", k.seed().unwrap())).unwrap();
        assert_eq!(again.public_key(), k.public_key());
        assert_eq!(
            SitePublicKey::new(k.public_key().as_str()).unwrap(),
            k.public_key()
        );
        let user = KeyPair::new_from_raw(KeyPairType::User, [4; 32]).unwrap();
        assert!(SiteKey::from_seed(&user.seed().unwrap()).is_err());
        assert!(SitePublicKey::new(user.public_key()).is_err());
        assert!(SitePublicKey::new("Anot-a-key").is_err());
        assert!(SiteKey::from_seed("SAgarbage").is_err());
    }
}
