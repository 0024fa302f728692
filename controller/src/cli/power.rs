//! `substruct machines power …` and `machines bmc …`: power through the machine's BMC
//! and the BMC's settings (the password is read from a file and never printed).

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;
use substruct_wire::power::BmcDriverKind;

use super::client::Api;
use super::output::{or_dash, write_json};
use super::CliError;
use crate::power::PowerOutcome;
use crate::record::{BmcInfo, MachineRecord};

/// Largest password file read.
const MAX_PASSWORD_FILE: u64 = 4096;

#[derive(Debug, Subcommand)]
pub enum PowerCommand {
    /// Asks the machine's BMC for its power state (and records it).
    Status {
        machine: String,
        #[arg(long)]
        json: bool,
    },
    /// Powers the machine on (only from a confirmed off).
    On {
        machine: String,
        /// Network boot (PXE) the next time it starts.
        #[arg(long)]
        pxe_next: bool,
        #[arg(long)]
        json: bool,
    },
    /// Powers the machine off (hard; `--soft` asks the OS to shut down).
    Off {
        machine: String,
        #[arg(long)]
        soft: bool,
        #[arg(long)]
        json: bool,
    },
    /// Power cycle (a plain power on from a confirmed off; never on an unknown state).
    Cycle {
        machine: String,
        #[arg(long)]
        pxe_next: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BmcCommand {
    /// Sets the machine's BMC: the controller keeps it, the machine's site reads it.
    Set {
        machine: String,
        #[arg(long)]
        driver: BmcDriverKind,
        /// `host`, `host:port` or (Redfish) `https://host[:port]`. Default: the address
        /// the machine reported for its BMC (read in-band by the prospector).
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        user: String,
        /// A file holding the password (one trailing newline is dropped).
        #[arg(long)]
        password_file: PathBuf,
        /// Redfish: the machine's member of `/redfish/v1/Systems` when the BMC has
        /// several.
        #[arg(long, value_name = "ID")]
        system: Option<String>,
    },
    /// The machine's BMC: driver, address, user, whether a password is set.
    Show {
        machine: String,
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `machines power` command.
pub(super) async fn run_power(
    api: &Api,
    command: PowerCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let (machine, outcome, json) = match command {
        PowerCommand::Status { machine, json } => {
            let o: PowerOutcome = api.get(&["machines", &machine, "power"]).await?;
            (machine, o, json)
        }
        PowerCommand::On {
            machine,
            pxe_next,
            json,
        } => (
            machine.clone(),
            act(api, &machine, "on", pxe_next).await?,
            json,
        ),
        PowerCommand::Off {
            machine,
            soft,
            json,
        } => {
            let action = if soft { "softoff" } else { "off" };
            (
                machine.clone(),
                act(api, &machine, action, false).await?,
                json,
            )
        }
        PowerCommand::Cycle {
            machine,
            pxe_next,
            json,
        } => (
            machine.clone(),
            act(api, &machine, "cycle", pxe_next).await?,
            json,
        ),
    };
    let output = if json {
        write_json(out, &outcome)
    } else if outcome.pending {
        writeln!(
            out,
            "machine {}: {} ordered (request {}); the edge has not answered yet, see `substruct machines show {machine}`",
            outcome.machine_id, outcome.op, outcome.request_id
        )
    } else {
        let power = outcome
            .power
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        writeln!(out, "machine {}: power {power}", outcome.machine_id)
    };
    output.map_err(CliError::Output)
}

async fn act(
    api: &Api,
    machine: &str,
    action: &str,
    pxe_next: bool,
) -> Result<PowerOutcome, CliError> {
    let next_boot = pxe_next.then_some("pxe");
    api.call(
        Method::POST,
        &["machines", machine, "power"],
        Some(json!({ "action": action, "next_boot": next_boot })),
    )
    .await
}

/// Runs one `machines bmc` command.
pub(super) async fn run_bmc(
    api: &Api,
    command: BmcCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let output = match command {
        BmcCommand::Set {
            machine,
            driver,
            address,
            user,
            password_file,
            system,
        } => {
            let password = read_password(&password_file)?;
            let body = json!({
                "driver": driver, "address": address.unwrap_or_default(), "user": user,
                "password": password, "system_id": system,
            });
            let m: MachineRecord = api
                .call(Method::PUT, &["machines", &machine, "bmc"], Some(body))
                .await?;
            let address = m.bmc.as_ref().map(|b| b.address.as_str()).unwrap_or("-");
            writeln!(
                out,
                "machine {}: BMC set ({driver} {address}, user {user}, password set)",
                m.id
            )
        }
        BmcCommand::Show { machine, json } => {
            let bmc: BmcInfo = api.get(&["machines", &machine, "bmc"]).await?;
            if json {
                write_json(out, &bmc)
            } else {
                write_bmc(out, &bmc)
            }
        }
    };
    output.map_err(CliError::Output)
}

/// The BMC lines of `machines show` and `machines bmc show`.
pub(super) fn write_bmc(out: &mut dyn Write, bmc: &BmcInfo) -> std::io::Result<()> {
    writeln!(
        out,
        "bmc:          {} {} user {}",
        bmc.driver, bmc.address, bmc.user
    )?;
    writeln!(
        out,
        "bmc password: {}",
        if bmc.password_set { "set" } else { "not set" }
    )?;
    if let Some(system) = &bmc.system_id {
        writeln!(out, "bmc system:   {system}")?;
    }
    writeln!(out, "bmc cert pin: {}", or_dash(bmc.cert_pin.as_deref()))
}

/// The password in `path`, without one trailing newline; a bounded read.
fn read_password(path: &std::path::Path) -> Result<String, CliError> {
    use std::io::Read;
    let read_err = |source| CliError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_PASSWORD_FILE)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(CliError::Invalid {
            path: path.to_path_buf(),
            message: "the password file is empty".into(),
        });
    }
    Ok(text.to_owned())
}
