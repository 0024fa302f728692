//! `substruct rules …`: rules that assign profiles to discovered machines.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;

use super::client::Api;
use super::output::{write_list, yes_no};
use super::{json_body, read_toml, CliError};
use crate::api::DryRun;
use crate::rules::Rule;

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Saves (creates or replaces) the rule in a TOML file.
    Add {
        file: PathBuf,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Shows which machines the rule in a TOML file would take now, changing nothing.
    DryRun {
        file: PathBuf,
    },
    Delete {
        name: String,
    },
}

/// Runs one `rules` command.
pub(super) async fn run(
    api: &Api,
    command: RulesCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let output = match command {
        RulesCommand::Add { file } => {
            let rule = read_toml(&file, Rule::from_toml)?;
            let body = json_body(&file, &rule)?;
            let saved: Rule = api
                .call(Method::PUT, &["rules", rule.name.as_str()], Some(body))
                .await?;
            writeln!(
                out,
                "rule {} saved (priority {}, profile {})",
                saved.name, saved.priority, saved.profile
            )
        }
        RulesCommand::List { json } => {
            let rules: Vec<Rule> = api.get(&["rules"]).await?;
            write_list(
                out,
                json,
                &rules,
                &["PRIORITY", "NAME", "PROFILE", "ENABLED"],
                |r| {
                    vec![
                        r.priority.to_string(),
                        r.name.to_string(),
                        r.profile.to_string(),
                        yes_no(r.enabled),
                    ]
                },
            )
        }
        RulesCommand::DryRun { file } => {
            let rule = read_toml(&file, Rule::from_toml)?;
            let body = json_body(&file, &rule)?;
            let dry: DryRun = api
                .call(Method::POST, &["rules", "dry-run"], Some(body))
                .await?;
            let mut text = format!(
                "rule {} would assign profile {} to {} machine(s):\n",
                dry.rule,
                dry.profile,
                dry.machines.len()
            );
            for id in &dry.machines {
                text.push_str(&format!("  {id}\n"));
            }
            out.write_all(text.as_bytes())
        }
        RulesCommand::Delete { name } => {
            api.delete(&["rules", &name]).await?;
            writeln!(out, "rule {name} deleted")
        }
    };
    output.map_err(CliError::Output)
}
