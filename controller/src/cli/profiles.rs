//! `substruct profiles …`: install profiles.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;

use super::client::Api;
use super::output::{write_json, write_list};
use super::{json_body, read_toml, CliError};
use crate::profile::Profile;

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Saves (creates or replaces) the profile in a TOML file, after validating it.
    Add {
        file: PathBuf,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
}

/// Runs one `profiles` command.
pub(super) async fn run(
    api: &Api,
    command: ProfilesCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let output = match command {
        ProfilesCommand::Add { file } => {
            let profile = read_toml(&file, Profile::from_toml)?;
            let body = json_body(&file, &profile)?;
            let saved: Profile = api
                .call(
                    Method::PUT,
                    &["profiles", profile.name.as_str()],
                    Some(body),
                )
                .await?;
            writeln!(
                out,
                "profile {} saved ({})",
                saved.name,
                saved.method.as_str()
            )
        }
        ProfilesCommand::List { json } => {
            let profiles: Vec<Profile> = api.get(&["profiles"]).await?;
            write_list(
                out,
                json,
                &profiles,
                &["NAME", "METHOD", "IMAGE/KERNEL", "DESCRIPTION"],
                |p| {
                    vec![
                        p.name.to_string(),
                        p.method.as_str().to_owned(),
                        p.image
                            .as_ref()
                            .or(p.kernel.as_ref())
                            .map_or_else(|| "-".into(), ToString::to_string),
                        p.description.clone().unwrap_or_else(|| "-".into()),
                    ]
                },
            )
        }
        ProfilesCommand::Show { name } => {
            let p: Profile = api.get(&["profiles", &name]).await?;
            write_json(out, &p)
        }
        ProfilesCommand::Delete { name } => {
            api.delete(&["profiles", &name]).await?;
            writeln!(out, "profile {name} deleted")
        }
    };
    output.map_err(CliError::Output)
}
