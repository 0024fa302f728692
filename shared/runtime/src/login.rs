//! A NATS login by user JWT and nkey seed (NATS' decentralized auth): what the edge and
//! each booting prospector present to the site's leaf node. The JWT can be replaced while
//! connected (a renewed credential); every (re)connect signs the server's nonce with the
//! user key and sends the JWT current at that moment.

use std::sync::{Arc, RwLock};

/// Why a login could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The seed is not an nkey seed.
    #[error("the NATS user seed is not an nkey seed: {reason}")]
    BadSeed {
        /// What nkeys said.
        reason: String,
    },
    /// The seed is an nkey of another kind (an account's, an operator's).
    #[error("the NATS user seed is not a user seed (SU…)")]
    NotUser,
}

/// A user JWT and the user key that signs each connection's nonce.
#[derive(Clone)]
pub struct NatsLogin {
    jwt: Arc<RwLock<String>>,
    key: Arc<nkeys::KeyPair>,
}

impl std::fmt::Debug for NatsLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        f.debug_struct("NatsLogin")
            .field("user", &self.key.public_key())
            .finish_non_exhaustive()
    }
}

impl NatsLogin {
    /// A login with `jwt`, signing with the user seed `seed` (`SU…`).
    pub fn new(jwt: impl Into<String>, seed: &str) -> Result<Self, LoginError> {
        let key = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| LoginError::BadSeed {
            reason: e.to_string(),
        })?;
        if !matches!(key.key_pair_type(), nkeys::KeyPairType::User) {
            return Err(LoginError::NotUser);
        }
        Ok(Self {
            jwt: Arc::new(RwLock::new(jwt.into())),
            key: Arc::new(key),
        })
    }

    /// The user's public key (`U…`), the JWT's subject.
    pub fn user_key(&self) -> String {
        self.key.public_key()
    }

    /// The JWT the next (re)connect sends.
    pub fn jwt(&self) -> String {
        match self.jwt.read() {
            Ok(j) => j.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the JWT (a renewal); the connection in use keeps the old one until it
    /// reconnects.
    pub fn replace_jwt(&self, jwt: String) {
        match self.jwt.write() {
            Ok(mut j) => *j = jwt,
            Err(poisoned) => *poisoned.into_inner() = jwt,
        }
    }

    /// Connect options that log in with this JWT and key (see [`crate::nats_options`]
    /// for the rest).
    pub(crate) fn options(&self) -> async_nats::ConnectOptions {
        let login = self.clone();
        async_nats::ConnectOptions::with_auth_callback(move |nonce| {
            let login = login.clone();
            async move {
                let mut auth = async_nats::Auth::new();
                auth.signature = Some(login.key.sign(&nonce).map_err(async_nats::AuthError::new)?);
                auth.jwt = Some(login.jwt());
                Ok(auth)
            }
        })
    }
}
