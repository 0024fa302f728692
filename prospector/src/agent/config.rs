//! Where the agent's settings come from: command-line flags first, then the
//! `substruct.*` kernel arguments ([`AgentConfig::resolve`]), and its timing
//! ([`AgentTuning`]).

use std::time::Duration;

use substruct_wire::nats_url::NatsUrlError;
use substruct_wire::{BootCredential, CredentialError, IdError, NatsUrl, SiteId};

use crate::blockdev::Storage;
use crate::cmdline::{KernelArgs, ARG_EDGE, ARG_NATS, ARG_SEED, ARG_SITE, ARG_TOKEN};
use crate::http_get::{BaseUrl, UrlError};

/// Everything the agent needs to know about its place.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// One NATS URL, or several separated by commas.
    pub nats_url: NatsUrl,
    pub site: SiteId,
    pub token: Option<BootCredential>,
    /// This boot's NATS login: the token (a user JWT the site key signed) and the boot
    /// user key's seed ([`login_from`]). `None`: connect anonymously (a development
    /// server; the site's leaf node refuses anonymous clients).
    pub login: Option<substruct_runtime::NatsLogin>,
    /// Return after the first acknowledgement instead of waiting for commands.
    pub once: bool,
    /// The edge's HTTP base URL, where disk images come from; without it an image
    /// deploy fails (and says why in its callback).
    pub edge: Option<BaseUrl>,
    /// Where the disks are described (`sys/block`) and where their device nodes are;
    /// `None`: this run may not write disks (deploy and wipe fail, saying so).
    pub storage: Option<Storage>,
}

/// Where each setting came from: a command-line flag wins over the kernel argument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSources {
    pub nats: Option<String>,
    pub site: Option<String>,
    pub token: Option<String>,
    /// The boot user key's seed (`SU…`) that goes with `token`.
    pub seed: Option<String>,
    pub edge: Option<String>,
    pub once: bool,
}

/// Why no [`AgentConfig`] could be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no {what} given: pass {flag} or boot with {kernel_arg}=…")]
    Missing {
        what: &'static str,
        flag: &'static str,
        kernel_arg: &'static str,
    },
    #[error("invalid NATS URL (from {flag} or {ARG_NATS})")]
    Nats {
        flag: &'static str,
        #[source]
        source: NatsUrlError,
    },
    #[error("invalid site name {value:?} (from {flag} or {ARG_SITE})")]
    Site {
        value: String,
        flag: &'static str,
        #[source]
        source: IdError,
    },
    #[error("invalid boot token (from {flag} or {ARG_TOKEN})")]
    Token {
        flag: &'static str,
        #[source]
        source: CredentialError,
    },
    #[error("invalid NATS login (the seed from {flag} or {ARG_SEED}, with the boot token)")]
    Login {
        flag: &'static str,
        #[source]
        source: LoginProblem,
    },
    #[error("invalid edge URL (from {flag} or {ARG_EDGE})")]
    Edge {
        flag: &'static str,
        #[source]
        source: UrlError,
    },
}

/// Why the boot's NATS login could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoginProblem {
    #[error("a seed without a boot token")]
    SeedWithoutToken,
    #[error("the seed is not a NATS user seed")]
    Seed(#[source] substruct_runtime::LoginError),
}

/// This boot's NATS login from the boot token (`substruct.token=`, a user JWT) and the
/// boot user key's seed (`substruct.seed=`): `None` without a seed (an edge without a
/// site key, or a development set-up: the agent connects anonymously).
pub fn login_from(
    token: Option<&BootCredential>,
    seed: Option<&str>,
) -> Result<Option<substruct_runtime::NatsLogin>, LoginProblem> {
    match (token, seed) {
        (_, None) => Ok(None),
        (None, Some(_)) => Err(LoginProblem::SeedWithoutToken),
        (Some(token), Some(seed)) => substruct_runtime::NatsLogin::new(token.as_str(), seed)
            .map(Some)
            .map_err(LoginProblem::Seed),
    }
}

impl AgentConfig {
    /// Flags first, then the `substruct.*` kernel arguments. The storage is the live
    /// machine's (`/`, `/dev`); the CLI replaces it.
    pub fn resolve(flags: ConfigSources, kernel: &KernelArgs) -> Result<Self, ConfigError> {
        let nats_url = flags
            .nats
            .or_else(|| kernel.nats.clone())
            .ok_or(ConfigError::Missing {
                what: "NATS URL",
                flag: "--nats URL",
                kernel_arg: ARG_NATS,
            })?;
        let site = flags
            .site
            .or_else(|| kernel.site.clone())
            .ok_or(ConfigError::Missing {
                what: "site",
                flag: "--site NAME",
                kernel_arg: ARG_SITE,
            })?;
        let site = SiteId::new(site.clone()).map_err(|source| ConfigError::Site {
            value: site,
            flag: "--site",
            source,
        })?;
        let nats_url = NatsUrl::new(nats_url).map_err(|source| ConfigError::Nats {
            flag: "--nats",
            source,
        })?;
        let token = flags
            .token
            .or_else(|| kernel.token.clone())
            .map(BootCredential::new)
            .transpose()
            .map_err(|source| ConfigError::Token {
                flag: "--token",
                source,
            })?;
        let seed = flags.seed.or_else(|| kernel.seed.clone());
        let login =
            login_from(token.as_ref(), seed.as_deref()).map_err(|source| ConfigError::Login {
                flag: "--seed",
                source,
            })?;
        let edge = flags
            .edge
            .or_else(|| kernel.edge.clone())
            .map(|url| BaseUrl::parse(&url))
            .transpose()
            .map_err(|source| ConfigError::Edge {
                flag: "--edge",
                source,
            })?;
        Ok(Self {
            nats_url,
            site,
            token,
            login,
            once: flags.once,
            edge,
            storage: Some(Storage::default()),
        })
    }

    /// From the kernel command line alone (the live image's path).
    pub fn from_kernel_args(kernel: &KernelArgs, once: bool) -> Result<Self, ConfigError> {
        Self::resolve(
            ConfigSources {
                once,
                ..ConfigSources::default()
            },
            kernel,
        )
    }
}

/// Timing of the agent; [`AgentTuning::default`] is what production uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentTuning {
    /// How long one discover request waits for its reply.
    pub request_timeout: Duration,
    /// How long one callback waits for its reply: longer than the controller's worst
    /// case for a callback (the edge, relaying an installer's, allows 15 s), so a slow
    /// answer is not taken for a lost one.
    pub callback_timeout: Duration,
    /// First retry delay; doubles per failure up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Connect timeout and idle limit of every read of an image download.
    pub http_timeout: Duration,
}

impl Default for AgentTuning {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            callback_timeout: Duration::from_secs(20),
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(5),
            http_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flags_win_and_missing_values_are_named() {
        let kernel = crate::cmdline::parse(
            "substruct.site=dc1 substruct.nats=nats://k:4222 substruct.token=abc \
             substruct.edge=http://10.77.0.1:8080",
        );
        let cfg = AgentConfig::resolve(ConfigSources::default(), &kernel).unwrap();
        assert_eq!(
            cfg.edge.as_ref().map(ToString::to_string).as_deref(),
            Some("http://10.77.0.1:8080")
        );
        assert_eq!(cfg.storage, Some(Storage::default()));
        let bad_edge = AgentConfig::resolve(
            ConfigSources {
                edge: Some("https://edge".into()),
                ..Default::default()
            },
            &kernel,
        )
        .unwrap_err();
        assert!(matches!(bad_edge, ConfigError::Edge { .. }));
        assert_eq!(
            (cfg.site.as_str(), cfg.nats_url.as_str()),
            ("dc1", "nats://k:4222")
        );
        assert_eq!(cfg.token.as_ref().map(BootCredential::as_str), Some("abc"));
        let cfg = AgentConfig::resolve(
            ConfigSources {
                site: Some("dc2".into()),
                nats: Some("nats://f:1".into()),
                token: None,
                seed: None,
                edge: Some("http://[fd00::1]:81".into()),
                once: true,
            },
            &kernel,
        )
        .unwrap();
        assert_eq!(cfg.edge.unwrap().authority(), "[fd00::1]:81");
        assert_eq!(
            (cfg.site.as_str(), cfg.nats_url.as_str(), cfg.once),
            ("dc2", "nats://f:1", true)
        );

        let none = KernelArgs::default();
        let err = AgentConfig::resolve(
            ConfigSources {
                nats: Some("nats://x".into()),
                ..Default::default()
            },
            &none,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "no site given: pass --site NAME or boot with substruct.site=…"
        );
        let err = AgentConfig::from_kernel_args(&none, false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no NATS URL given: pass --nats URL or boot with substruct.nats=…"
        );
        let err = AgentConfig::resolve(
            ConfigSources {
                nats: Some("http://x".into()),
                ..Default::default()
            },
            &kernel,
        )
        .unwrap_err();
        assert_eq!(
            substruct_runtime::error_chain(&err),
            "invalid NATS URL (from --nats or substruct.nats): NATS URL \"http://x\": \
             server \"http://x\": scheme must be nats://, tls://, ws:// or wss://"
        );
        let bad = crate::cmdline::parse("substruct.site=DC1 substruct.nats=n");
        assert!(matches!(
            AgentConfig::from_kernel_args(&bad, false),
            Err(ConfigError::Site { .. })
        ));
    }
}
