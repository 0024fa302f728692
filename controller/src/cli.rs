//! The `substruct` admin CLI: a client of the controller's REST API.
//!
//! ```text
//! substruct [--controller URL] [--token T] machines list [--json]
//! substruct [--controller URL] [--token T] machines show ID [--json]
//! ```
//! `SUBSTRUCT_CONTROLLER` (default `http://127.0.0.1:8080`) and `SUBSTRUCT_TOKEN`
//! stand in for the flags.

use std::io::Write;

use clap::{Parser, Subcommand};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::record::MachineRecord;

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
}

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// Every machine, as a table (or JSON records with --json).
    List {
        #[arg(long)]
        json: bool,
    },
    /// One machine, with its facts.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
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
}

/// Runs one CLI command, writing to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let base = cli.controller.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(CliError::BadUrl { url: base });
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|source| CliError::Unreachable {
            url: base.clone(),
            source,
        })?;
    let api = Api {
        client,
        base,
        token: cli.token,
    };
    match cli.command {
        Command::Machines { command } => match command {
            MachinesCommand::List { json } => {
                let machines: Vec<MachineRecord> = api.get("/api/v1/machines", None).await?;
                if json {
                    write_json(out, &machines)
                } else {
                    write_table(out, &machines)
                }
            }
            MachinesCommand::Show { id, json } => {
                let path = format!("/api/v1/machines/{id}");
                let machine: MachineRecord = api.get(&path, Some(&id)).await?;
                if json {
                    write_json(out, &machine)
                } else {
                    write_machine(out, &machine)
                }
            }
        },
    }
    .map_err(CliError::Output)
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn get<T: DeserializeOwned>(&self, path: &str, id: Option<&str>) -> Result<T, CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|source| CliError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|source| CliError::Decode { url, source });
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(body);
        Err(match (status, id) {
            (StatusCode::UNAUTHORIZED, _) => CliError::Unauthorized { message },
            (StatusCode::NOT_FOUND, Some(id)) => CliError::NotFound { id: id.to_owned() },
            _ => CliError::Status { status, message },
        })
    }
}

fn write_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::other)?;
    writeln!(out)
}

/// `1.5G`, `512M`, `2.0T` (binary units).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else if value >= 100.0 || value.fract() < 0.05 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn or_dash(v: Option<&str>) -> String {
    v.map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("-")
        .to_owned()
}

fn table_row(m: &MachineRecord) -> Vec<String> {
    let f = &m.facts;
    let macs: Vec<String> = f.macs().iter().map(ToString::to_string).collect();
    let cpus = if f.cpu.threads > 0 {
        f.cpu.threads
    } else {
        f.cpu.cores
    };
    let disk_total: u64 = f.disks.iter().map(|d| d.size_bytes).sum();
    vec![
        m.id.to_string(),
        m.state.to_string(),
        m.site.to_string(),
        or_dash(f.dmi.sys_vendor.as_deref()),
        or_dash(f.dmi.product_name.as_deref()),
        or_dash(f.usable_serial()),
        if macs.is_empty() {
            "-".into()
        } else {
            macs.join(",")
        },
        cpus.to_string(),
        human_bytes(f.memory.total_bytes),
        if f.disks.is_empty() {
            "-".into()
        } else {
            format!("{} ({})", f.disks.len(), human_bytes(disk_total))
        },
    ]
}

/// The `machines list` table.
pub fn write_table(out: &mut dyn Write, machines: &[MachineRecord]) -> std::io::Result<()> {
    let header: Vec<String> = [
        "ID", "STATE", "SITE", "VENDOR", "PRODUCT", "SERIAL", "MACS", "CPUS", "MEMORY", "DISKS",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let rows: Vec<Vec<String>> = machines.iter().map(table_row).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let last = row.len() - 1;
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// The `machines show` text.
pub fn write_machine(out: &mut dyn Write, m: &MachineRecord) -> std::io::Result<()> {
    let f = &m.facts;
    let d = &f.dmi;
    writeln!(out, "id:           {}", m.id)?;
    writeln!(out, "state:        {}", m.state)?;
    writeln!(out, "site:         {}", m.site)?;
    writeln!(out, "first seen:   {} (unix ms)", m.first_seen_unix_ms)?;
    writeln!(out, "last seen:    {} (unix ms)", m.last_seen_unix_ms)?;
    writeln!(out, "reports:      {}", m.report_count)?;
    writeln!(out, "vendor:       {}", or_dash(d.sys_vendor.as_deref()))?;
    writeln!(out, "product:      {}", or_dash(d.product_name.as_deref()))?;
    writeln!(
        out,
        "serial:       {}",
        or_dash(d.product_serial.as_deref())
    )?;
    writeln!(out, "uuid:         {}", or_dash(d.product_uuid.as_deref()))?;
    writeln!(
        out,
        "bios:         {} {} {}",
        or_dash(d.bios_vendor.as_deref()),
        or_dash(d.bios_version.as_deref()),
        or_dash(d.bios_date.as_deref())
    )?;
    writeln!(out, "boot mode:    {:?}", f.boot_mode)?;
    writeln!(
        out,
        "cpu:          {} ({} sockets, {} cores, {} threads)",
        or_dash(f.cpu.model.as_deref()),
        f.cpu.sockets,
        f.cpu.cores,
        f.cpu.threads
    )?;
    writeln!(out, "memory:       {}", human_bytes(f.memory.total_bytes))?;
    for disk in &f.disks {
        writeln!(
            out,
            "disk:         {} {} {:?} serial {} model {}",
            disk.name,
            human_bytes(disk.size_bytes),
            disk.transport,
            or_dash(disk.serial.as_deref()),
            or_dash(disk.model.as_deref())
        )?;
    }
    for nic in &f.nics {
        writeln!(
            out,
            "nic:          {} {} driver {}",
            nic.name,
            nic.mac,
            or_dash(nic.driver.as_deref())
        )?;
    }
    for c in &m.conflicts {
        writeln!(out, "conflict:     {c}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(512 << 20), "512M");
        assert_eq!(human_bytes(3 << 29), "1.5G");
        assert_eq!(human_bytes(1 << 40), "1T");
    }
}
