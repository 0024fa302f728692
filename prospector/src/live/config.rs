//! What the live image needs from the kernel command line, validated. Pure: the caller
//! reads `/proc/cmdline` and parses it with [`crate::cmdline::parse`].

use substruct_wire::{BootCredential, NatsUrl, SiteId};

use crate::cmdline::KernelArgs;
use crate::http_get::{BaseUrl, UrlError};

/// A complete, valid set of `substruct.*` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub site: SiteId,
    /// The NATS server(s) from `substruct.nats=`.
    pub nats_url: NatsUrl,
    pub token: Option<BootCredential>,
    /// The boot user key's seed (`substruct.seed=`): with the token, the NATS login.
    pub seed: Option<String>,
    /// The edge's HTTP base URL (`substruct.edge=`); optional: only image deploys need it.
    pub edge: Option<BaseUrl>,
    /// `substruct.net=ipv6`: an IPv6-only site; the kernel takes the address from the
    /// edge's router advertisement and no DHCPv4 is tried.
    pub ipv6_only: bool,
    pub debug: bool,
}

/// One thing wrong with the command line. `Display` is the text after `SUBSTRUCT-ERROR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    #[error("missing substruct.site=")]
    MissingSite,
    #[error("bad substruct.site={value}")]
    BadSite {
        value: String,
        #[source]
        source: substruct_wire::IdError,
    },
    #[error("missing substruct.nats=")]
    MissingNats,
    #[error("bad substruct.nats={value}: {why}")]
    BadNats { value: String, why: &'static str },
    #[error("bad substruct.token=")]
    BadToken {
        #[source]
        source: substruct_wire::CredentialError,
    },
    #[error("bad substruct.net={0}: expected ipv6 or ipv4")]
    BadNet(String),
    #[error("bad substruct.edge=")]
    BadEdge {
        #[source]
        source: UrlError,
    },
}

/// Validates every `substruct.*` argument; all problems are reported at once.
pub fn validate(args: &KernelArgs) -> Result<BootConfig, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let site = match args.site.as_deref() {
        None | Some("") => {
            problems.push(ConfigProblem::MissingSite);
            None
        }
        Some(value) => match SiteId::new(value) {
            Ok(site) => Some(site),
            Err(source) => {
                problems.push(ConfigProblem::BadSite {
                    value: value.to_owned(),
                    source,
                });
                None
            }
        },
    };
    let nats_url = match args.nats.as_deref() {
        None | Some("") => {
            problems.push(ConfigProblem::MissingNats);
            None
        }
        Some(value) => match NatsUrl::new(value) {
            Ok(url) => Some(url),
            Err(e) => {
                problems.push(ConfigProblem::BadNats {
                    value: value.to_owned(),
                    why: e.why(),
                });
                None
            }
        },
    };
    let token = match args.token.as_deref() {
        None | Some("") => None,
        Some(value) => match BootCredential::new(value) {
            Ok(token) => Some(token),
            Err(source) => {
                problems.push(ConfigProblem::BadToken { source });
                None
            }
        },
    };
    let edge = match args.edge.as_deref() {
        None | Some("") => None,
        Some(value) => match BaseUrl::parse(value) {
            Ok(url) => Some(url),
            Err(source) => {
                problems.push(ConfigProblem::BadEdge { source });
                None
            }
        },
    };
    let ipv6_only = match args.net.as_deref() {
        None | Some("ipv4") => false,
        Some("ipv6") => true,
        Some(other) => {
            problems.push(ConfigProblem::BadNet(other.to_owned()));
            false
        }
    };
    match (site, nats_url) {
        (Some(site), Some(nats_url)) if problems.is_empty() => Ok(BootConfig {
            site,
            nats_url,
            token,
            seed: args.seed.clone(),
            edge,
            ipv6_only,
            debug: args.debug,
        }),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(site: Option<&str>, nats: Option<&str>, token: Option<&str>) -> KernelArgs {
        KernelArgs {
            site: site.map(str::to_owned),
            nats: nats.map(str::to_owned),
            token: token.map(str::to_owned),
            seed: None,
            edge: None,
            net: None,
            debug: false,
        }
    }

    #[test]
    fn complete_arguments_validate() {
        let cfg = validate(&args(Some("s1"), Some("nats://10.0.2.2:4222"), Some("t0"))).unwrap();
        assert_eq!(cfg.site.as_str(), "s1");
        assert_eq!(cfg.nats_url.as_str(), "nats://10.0.2.2:4222");
        assert_eq!(cfg.token.unwrap().as_str(), "t0");
        let cfg = validate(&args(Some("s1"), Some("edge:4222,nats://b:4222"), None)).unwrap();
        assert!(cfg.token.is_none());
        assert!(cfg.edge.is_none());
        let with_edge = KernelArgs {
            edge: Some("http://10.77.0.1:8080".into()),
            ..args(Some("s1"), Some("nats://e:4222"), None)
        };
        let cfg = validate(&with_edge).unwrap();
        assert_eq!(cfg.edge.unwrap().to_string(), "http://10.77.0.1:8080");
    }

    #[test]
    fn a_bad_edge_url_is_named() {
        let bad = KernelArgs {
            edge: Some("https://10.77.0.1".into()),
            ..args(Some("s1"), Some("nats://e:4222"), None)
        };
        let problems = validate(&bad).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(
            console_chain(&problems[0]),
            "bad substruct.edge=: bad URL \"https://10.77.0.1\": only http:// is supported"
        );
    }

    #[test]
    fn an_ipv6_only_site_is_named_on_the_command_line() {
        let base = || args(Some("s1"), Some("nats://[fd77::1]:4222"), None);
        assert!(!validate(&base()).unwrap().ipv6_only);
        let v6 = KernelArgs {
            net: Some("ipv6".into()),
            edge: Some("http://[fd77::1]".into()),
            ..base()
        };
        let cfg = validate(&v6).unwrap();
        assert!(cfg.ipv6_only);
        assert_eq!(cfg.nats_url.as_str(), "nats://[fd77::1]:4222");
        assert_eq!(cfg.edge.unwrap().host(), "fd77::1");
        let bad = KernelArgs {
            net: Some("slaac".into()),
            ..base()
        };
        let problems = validate(&bad).unwrap_err();
        assert_eq!(
            problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["bad substruct.net=slaac: expected ipv6 or ipv4"]
        );
    }

    fn console_chain(e: &ConfigProblem) -> String {
        substruct_runtime::error_chain(e)
    }

    #[test]
    fn every_problem_is_named() {
        let problems = validate(&args(None, None, None)).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["missing substruct.site=", "missing substruct.nats="]);
        let problems = validate(&args(Some("S 1"), Some("http://x"), Some("BAD!"))).unwrap_err();
        assert_eq!(problems.len(), 3);
        assert!(matches!(problems[0], ConfigProblem::BadSite { .. }));
        assert!(matches!(problems[1], ConfigProblem::BadNats { .. }));
        assert!(matches!(problems[2], ConfigProblem::BadToken { .. }));
        assert!(validate(&args(Some("s1"), Some("nats://:4222"), None)).is_err());
        assert!(validate(&args(Some("s1"), Some(""), None)).is_err());
    }
}
