//! The site's signing key file: one line, the nkey seed (`SA…`). Read at start-up (an
//! unreadable or invalid file stops the edge, naming the file) and written by
//! `substruct-edge keygen FILE` (mode 0600, never over an existing file).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rand::RngCore as _;
use substruct_wire::{CredentialError, LeafTrust, SiteId, SiteKey, UserJwt};

/// Why the key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SiteKeyFileError {
    #[error("reading the site key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the site key {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the site key {path} is not a site key seed")]
    Invalid {
        path: PathBuf,
        #[source]
        source: CredentialError,
    },
}

/// Reads the seed in `path`.
pub fn load(path: &Path) -> Result<SiteKey, SiteKeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SiteKeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    SiteKey::from_seed(&text).map_err(|source| SiteKeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Makes a new key from the OS RNG and writes its seed to `path` (which must not exist).
pub fn generate(path: &Path) -> Result<SiteKey, SiteKeyFileError> {
    let mut random = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let invalid = |source| SiteKeyFileError::Invalid {
        path: path.to_owned(),
        source,
    };
    let key = SiteKey::from_raw(random).map_err(invalid)?;
    let seed = key.seed().map_err(invalid)?;
    let write = |source| SiteKeyFileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write)?;
    file.write_all(format!("{seed}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write)?;
    Ok(key)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The leaf node's trust for `site` (`substruct-edge leaf-auth`): a fresh operator from
/// the OS RNG, dropped once it signed.
pub fn leaf_trust(key: &SiteKey, site: &SiteId) -> Result<LeafTrust, CredentialError> {
    let mut random = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut random);
    LeafTrust::new(key, site, random, unix_now())
}

/// Why the edge could not make its own NATS login.
#[derive(Debug, thiserror::Error)]
pub enum EdgeLoginError {
    #[error("signing the edge's NATS user JWT")]
    Sign(#[source] CredentialError),
    #[error("making the edge's NATS login")]
    Login(#[source] substruct_runtime::LoginError),
}

/// The edge's own NATS login, made at each start: a fresh user key (it never leaves the
/// process) and a JWT the site key signs for it, without expiry and without permissions
/// within the site's account. An expiry would buy nothing: whoever could steal this
/// process's key could read the site key from the same disk and sign their own.
pub fn edge_login(
    key: &SiteKey,
    site: &SiteId,
) -> Result<substruct_runtime::NatsLogin, EdgeLoginError> {
    let mut random = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let (seed, public) =
        substruct_wire::credential::user_key_pair(random).map_err(EdgeLoginError::Sign)?;
    let jwt = substruct_wire::credential::sign_user_jwt(
        key,
        &UserJwt {
            user_key: &public,
            name: &format!("edge {site}"),
            audience: Some(site.as_str()),
            issued_unix: unix_now(),
            expires_unix: None,
            permissions: None,
        },
    )
    .map_err(EdgeLoginError::Sign)?;
    substruct_runtime::NatsLogin::new(jwt, &seed).map_err(EdgeLoginError::Login)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.nk");
        let key = generate(&path).unwrap();
        assert_eq!(load(&path).unwrap().public_key(), key.public_key());
        assert!(matches!(
            generate(&path),
            Err(SiteKeyFileError::Write { .. })
        ));
        std::fs::write(&path, "not a seed\n").unwrap();
        assert!(matches!(load(&path), Err(SiteKeyFileError::Invalid { .. })));
    }
}
