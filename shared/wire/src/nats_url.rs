//! [`NatsUrl`]: the NATS server list every binary takes (config files, flags, the
//! `substruct.nats=` kernel argument), checked by one rule.

use serde::{Deserialize, Serialize};

use crate::names::string_newtype;

/// The URL schemes NATS clients connect with.
pub const NATS_SCHEMES: [&str; 4] = ["nats", "tls", "ws", "wss"];

/// Why a NATS URL was refused. Displays as `NATS URL "…": <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NATS URL {value:?}: {reason}")]
pub struct NatsUrlError {
    /// The refused value (the whole list).
    pub value: String,
    /// What is wrong with it.
    pub reason: NatsUrlProblem,
}

impl NatsUrlError {
    /// The reason alone, as a static phrase (`"no host"`, …).
    pub fn why(&self) -> &'static str {
        self.reason.why()
    }
}

/// What is wrong with a NATS URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatsUrlProblem {
    /// Nothing but spaces.
    #[error("is empty")]
    Empty,
    /// `a,,b` or a leading/trailing comma.
    #[error("has an empty server between commas")]
    EmptyServer,
    /// A server contains whitespace (other than around a comma) or a control character.
    #[error("server {0:?} contains whitespace")]
    Whitespace(String),
    /// A server's scheme is not one of [`NATS_SCHEMES`].
    #[error("server {0:?}: scheme must be nats://, tls://, ws:// or wss://")]
    Scheme(String),
    /// A server has no host (`nats://:4222`).
    #[error("server {0:?} has no host")]
    NoHost(String),
}

impl NatsUrlProblem {
    /// The reason as a static phrase, without the server it is about.
    pub fn why(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::EmptyServer => "empty server between commas",
            Self::Whitespace(_) => "contains whitespace",
            Self::Scheme(_) => "scheme must be nats://, tls://, ws:// or wss://",
            Self::NoHost(_) => "no host",
        }
    }
}

/// One NATS server URL or several of one cluster, separated by commas:
/// `nats://10.0.0.1:4222`, `nats://a:4222, nats://b:4222`, `edge:4222,tls://b:4222`.
///
/// The rule (the one every binary uses): the value is not blank; split on `,`, each
/// server, with spaces around it trimmed, is non-empty, contains no whitespace or
/// control character, either names a scheme from [`NATS_SCHEMES`] (`nats://…`) or none
/// (a bare `host:port`, which NATS clients read as `nats://host:port`), and has a host
/// (the part after any `user:pass@` and before `:port` or `/`). This accepts every
/// value the controller, the edge, the prospector's kernel argument and its `--nats`
/// flag accepted before and that a NATS client can connect to; it keeps the value as
/// written (`Display` and serde give back exactly the input).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NatsUrl(String);

impl NatsUrl {
    /// A NATS server on this host at the standard port, `nats://127.0.0.1:4222`
    /// (what [`NatsUrl::default`] gives).
    pub const LOCAL: &'static str = "nats://127.0.0.1:4222";

    /// Validates and wraps `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, NatsUrlError> {
        let value = value.into();
        match nats_url_problem(&value) {
            None => Ok(Self(value)),
            Some(reason) => Err(NatsUrlError { value, reason }),
        }
    }

    /// Each server, trimmed, in order: what to hand a NATS client's `connect`.
    pub fn servers(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split(',').map(str::trim)
    }

    /// True when every server names its scheme (`nats://…`), none is a bare `host:port`.
    pub fn has_schemes(&self) -> bool {
        self.servers().all(|s| s.contains("://"))
    }
}

string_newtype!(NatsUrl, NatsUrlError);

impl Default for NatsUrl {
    /// [`NatsUrl::LOCAL`].
    fn default() -> Self {
        Self(Self::LOCAL.to_owned())
    }
}

fn nats_url_problem(value: &str) -> Option<NatsUrlProblem> {
    if value.trim().is_empty() {
        return Some(NatsUrlProblem::Empty);
    }
    for server in value.split(',').map(|s| s.trim_matches(' ')) {
        if server.is_empty() {
            return Some(NatsUrlProblem::EmptyServer);
        }
        if server.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Some(NatsUrlProblem::Whitespace(server.to_owned()));
        }
        let rest = match server.split_once("://") {
            Some((scheme, rest)) if NATS_SCHEMES.contains(&scheme) => rest,
            Some(_) => return Some(NatsUrlProblem::Scheme(server.to_owned())),
            None => server,
        };
        let host_port = rest.rsplit('@').next().unwrap_or(rest);
        let host = host_port.split('/').next().unwrap_or(host_port);
        if host.is_empty() || host.starts_with(':') {
            return Some(NatsUrlProblem::NoHost(server.to_owned()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_what_the_binaries_accept() {
        for good in [
            "nats://127.0.0.1:4222",
            "nats://127.0.0.1:1, nats://127.0.0.1:2",
            "nats://a:4222,nats://b:4222",
            "edge:4222,nats://b:4222",
            "10.0.0.5:4222",
            "localhost",
            "tls://user:pass@hub.example:4222",
            "ws://[::1]:8080/nats",
            "wss://h",
            " nats://10.0.0.1:4222 ",
        ] {
            let url = NatsUrl::new(good).unwrap();
            assert_eq!(url.as_str(), good, "kept as written");
            assert_eq!(url.to_string(), good);
        }
        let list = NatsUrl::new("nats://127.0.0.1:1, nats://127.0.0.1:2").unwrap();
        assert_eq!(
            list.servers().collect::<Vec<_>>(),
            ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]
        );
        assert!(list.has_schemes());
        assert!(!NatsUrl::new("edge:4222,nats://b").unwrap().has_schemes());
        assert_eq!(NatsUrl::default(), NatsUrl::new(NatsUrl::LOCAL).unwrap());
    }

    #[test]
    fn refusals_are_named() {
        for (bad, why) in [
            ("", "empty"),
            ("   ", "empty"),
            ("nats://a,", "empty server between commas"),
            ("nats://a,,nats://b", "empty server between commas"),
            ("nats://a b", "contains whitespace"),
            ("nats://a\tb", "contains whitespace"),
            ("nats://a\u{1}", "contains whitespace"),
            (
                "http://x",
                "scheme must be nats://, tls://, ws:// or wss://",
            ),
            ("nats://:4222", "no host"),
            ("nats://", "no host"),
            ("nats://user@", "no host"),
            (":4222", "no host"),
        ] {
            let err = NatsUrl::new(bad).unwrap_err();
            assert_eq!(err.why(), why, "{bad:?}");
            assert!(err.to_string().starts_with("NATS URL "), "{err}");
        }
        assert_eq!(
            NatsUrl::new("http://x").unwrap_err().to_string(),
            "NATS URL \"http://x\": server \"http://x\": scheme must be nats://, tls://, ws:// or wss://"
        );
    }

    #[test]
    fn serde_is_a_plain_string() {
        let url = NatsUrl::new("nats://a:1, nats://b:2").unwrap();
        let json = serde_json::to_string(&url).unwrap();
        assert_eq!(json, "\"nats://a:1, nats://b:2\"");
        assert_eq!(serde_json::from_str::<NatsUrl>(&json).unwrap(), url);
        assert!(serde_json::from_str::<NatsUrl>("\"http://x\"").is_err());
        assert_eq!(
            postcard::to_stdvec(&url).unwrap(),
            postcard::to_stdvec("nats://a:1, nats://b:2").unwrap()
        );
    }

    /// The prospector's kernel-argument check before, per comma-separated piece.
    fn old_prospector_rule(url: &str) -> bool {
        url.split(',').all(|u| {
            if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return false;
            }
            let rest = match u.split_once("://") {
                Some((scheme, rest)) if NATS_SCHEMES.contains(&scheme) => rest,
                Some(_) => return false,
                None => u,
            };
            let host_port = rest.rsplit('@').next().unwrap_or(rest);
            let host = host_port.split('/').next().unwrap_or(host_port);
            !host.is_empty() && !host.starts_with(':')
        })
    }

    /// The edge's config check before (a single URL with a scheme).
    fn old_edge_rule(url: &str) -> bool {
        ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|p| url.starts_with(p) && url.len() > p.len())
            && !url.chars().any(|c| c.is_whitespace() || c.is_control())
    }

    proptest! {
        #[test]
        fn accepts_what_the_old_checks_accepted_and_could_connect(
            url in "((nats|tls|ws|wss|http)://)?[a-z0-9.:@/]{0,12}(,((nats|tls)://)?[a-z0-9.:@]{0,8}){0,2}"
        ) {
            let new = NatsUrl::new(url.clone());
            if old_prospector_rule(&url) {
                prop_assert!(new.is_ok(), "{url:?}: {new:?}");
            }
            // The edge accepted a few hostless URLs (`nats://:1`) no client connects to.
            if old_edge_rule(&url) && old_prospector_rule(&url) {
                prop_assert!(new.is_ok(), "{url:?}");
            }
            if let Ok(u) = new {
                prop_assert_eq!(u.as_str(), url.as_str());
                prop_assert!(u.servers().all(|s| !s.is_empty()));
            }
        }

        #[test]
        fn never_panics(url in "\\PC{0,40}") {
            let _ = NatsUrl::new(url);
        }
    }
}
