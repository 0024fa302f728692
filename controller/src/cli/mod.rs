//! The `substruct` admin CLI: a client of the controller's REST API.
//!
//! ```text
//! substruct [--controller URL] [--token T] machines list [--json]
//! substruct [--controller URL] [--token T] machines show MACHINE [--json]
//! substruct machines assign MACHINE PROFILE     # MACHINE: id, serial, SMBIOS UUID or MAC
//! substruct machines release MACHINE [--wipe quick|discard]
//! substruct machines reinstall|retire MACHINE
//! substruct machines power status|on|off|cycle MACHINE [--pxe-next] [--json]
//! substruct machines bmc set MACHINE --driver ipmi|redfish --address A --user U --password-file F
//! substruct machines bmc show MACHINE [--json]
//! substruct profiles add FILE.toml | list [--json] | show NAME | delete NAME
//! substruct rules add FILE.toml | list [--json] | dry-run FILE.toml | delete NAME
//! substruct images add FILE --kind kernel|initrd|disk|loader [--name NAME] | list [--json]
//! substruct sites add NAME [--local-boot ipxe-exit|no-boot-file] [--description TEXT] | list [--json]
//! substruct events [--machine MACHINE] [--site S] [--limit N] [--follow] [--json]
//! ```
//! `SUBSTRUCT_CONTROLLER` (default `http://127.0.0.1:8080`), `SUBSTRUCT_TOKEN` and
//! `SUBSTRUCT_CA` stand in for the flags. An `https://` controller's certificate is
//! verified against the public web roots plus the CA given with `--ca FILE` (PEM); there
//! is no way to skip the check.
//!
//! One module per noun (`machines`, `profiles`, `rules`, `images`, `sites`, `events`), each
//! with its subcommands and their handler; `client` is the one place that builds
//! URLs (names escaped into path segments) and turns answers into values or errors;
//! `output` prints tables and JSON.

mod client;
mod events;
mod images;
mod machines;
mod output;
mod power;
mod profiles;
mod rules;
mod sites;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use reqwest::StatusCode;

pub use events::EventsArgs;
pub use images::ImagesCommand;
pub use machines::{write_machine, write_table, MachinesCommand};
pub use output::{human_bytes, write_rows};
pub use power::{BmcCommand, PowerCommand};
pub use profiles::ProfilesCommand;
pub use rules::RulesCommand;
pub use sites::SitesCommand;

/// Command line of `substruct`.
#[derive(Debug, Parser)]
#[command(name = "substruct", version, about = "Substruct admin CLI")]
pub struct Cli {
    /// Base URL of the controller's REST API.
    #[arg(
        long,
        env = "SUBSTRUCT_CONTROLLER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub controller: String,
    /// API bearer token.
    #[arg(long, env = "SUBSTRUCT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Also trust this CA (PEM file, one or more certificates) when verifying an
    /// `https://` controller's certificate.
    #[arg(long, env = "SUBSTRUCT_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The machine inventory.
    Machines {
        #[command(subcommand)]
        command: MachinesCommand,
    },
    /// Install profiles.
    Profiles {
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// Rules that assign profiles to discovered machines by their facts.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Registered images (kernels, initrds, disk images, loaders).
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Sites and their edge agents.
    Sites {
        #[command(subcommand)]
        command: SitesCommand,
    },
    /// The audit log: discoveries, reports, lifecycle transitions, conflicts, power
    /// and BMC changes, oldest first; `--follow` keeps printing new ones.
    Events(EventsArgs),
}

/// Why a CLI command failed; the message is what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{url:?} is not a usable controller URL")]
    BadUrl { url: String },
    #[error("cannot reach the controller at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot read the CA file {path}")]
    CaRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {path} is not usable: {reason}")]
    CaInvalid { path: PathBuf, reason: String },
    /// The TLS handshake failed: the certificate problem is the source.
    #[error("TLS with the controller at {url} failed (trusting {trusted})")]
    Tls {
        url: String,
        trusted: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the controller refused the token (401 Unauthorized): {message}; set --token or SUBSTRUCT_TOKEN")]
    Unauthorized { message: String },
    #[error("machine {id:?} not found")]
    NotFound { id: String },
    #[error("the controller answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("the controller's answer from {url} is not what this CLI expects")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("writing output")]
    Output(#[source] std::io::Error),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A name that cannot travel as a URL path segment (URL normalisation drops it).
    #[error("{value:?} is not a usable name: empty, \".\" and \"..\" cannot be sent in a URL")]
    Unsendable { value: String },
}

/// Runs one CLI command, writing to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let api = client::Api::new(&cli.controller, cli.token, cli.ca.as_deref())?;
    match cli.command {
        Command::Machines { command } => machines::run(&api, command, out).await,
        Command::Profiles { command } => profiles::run(&api, command, out).await,
        Command::Rules { command } => rules::run(&api, command, out).await,
        Command::Images { command } => images::run(&api, command, out).await,
        Command::Sites { command } => sites::run(&api, command, out).await,
        Command::Events(args) => events::run(&api, args, out).await,
    }
}

/// Reads and parses a TOML file; a parse error names the file.
fn read_toml<T, E: std::error::Error>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| CliError::Invalid {
        path: path.to_path_buf(),
        message: crate::error_chain(&e),
    })
}

/// A request body; `path` names what it came from in the error.
fn json_body(path: &Path, value: &impl serde::Serialize) -> Result<serde_json::Value, CliError> {
    serde_json::to_value(value).map_err(|e| CliError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
