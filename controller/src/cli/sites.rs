//! `substruct sites …`: sites and their edge agents.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;

use super::client::Api;
use super::output::{write_list, yes_no};
use super::CliError;
use crate::api::SiteBody;
use crate::sites::{LocalBoot, SiteRecord, SiteView};
use substruct_wire::SitePublicKey;

#[derive(Debug, Subcommand)]
pub enum SitesCommand {
    /// Registers a site (or updates its settings).
    Add {
        name: String,
        /// How deployed machines there boot their disk.
        #[arg(long)]
        local_boot: Option<LocalBoot>,
        #[arg(long)]
        description: Option<String>,
        /// The site edge's public key (`A…`, printed by `substruct-edge keygen`): reports
        /// speak for known machines only with boot credentials signed by it.
        #[arg(long, value_name = "PUBKEY")]
        key: Option<SitePublicKey>,
        /// Let reports without a valid boot credential update known machines (labs,
        /// migration): `true` or `false`.
        #[arg(long, value_name = "BOOL")]
        allow_unauthenticated: Option<bool>,
        /// Power off discovered machines that no rule assigns, and wiped machines, after
        /// their report (`true` or `false`).
        #[arg(long, value_name = "BOOL")]
        power_off_after_discovery: Option<bool>,
    },
    /// Every site, with its edge's state (online/offline), version and last heartbeat.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `sites` command.
pub(super) async fn run(
    api: &Api,
    command: SitesCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let output = match command {
        SitesCommand::Add {
            name,
            local_boot,
            description,
            key,
            allow_unauthenticated,
            power_off_after_discovery,
        } => {
            let body = serde_json::to_value(SiteBody {
                description,
                local_boot,
                key,
                allow_unauthenticated,
                power_off_after_discovery,
            })
            .map_err(|e| CliError::Invalid {
                path: PathBuf::from(&name),
                message: e.to_string(),
            })?;
            let site: SiteRecord = api.call(Method::PUT, &["sites", &name], Some(body)).await?;
            writeln!(
                out,
                "site {} registered (local boot: {})",
                site.name, site.local_boot
            )
        }
        SitesCommand::List { json } => {
            let sites: Vec<SiteView> = api.get(&["sites"]).await?;
            let now = crate::now_unix_ms();
            write_list(
                out,
                json,
                &sites,
                &[
                    "SITE",
                    "EDGE",
                    "VERSION",
                    "HEARTBEAT",
                    "LOCAL BOOT",
                    "REGISTERED",
                ],
                |s| {
                    vec![
                        s.name.to_string(),
                        s.edge.clone(),
                        s.edge_version.clone().unwrap_or_else(|| "-".into()),
                        s.last_heartbeat_unix_ms.map_or_else(
                            || "never".into(),
                            |t| format!("{}s ago", now.saturating_sub(t) / 1000),
                        ),
                        s.local_boot.to_string(),
                        yes_no(s.registered),
                    ]
                },
            )
        }
    };
    output.map_err(CliError::Output)
}
