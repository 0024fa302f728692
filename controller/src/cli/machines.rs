//! `substruct machines …`: the inventory and the admin actions on one machine.

use std::io::Write;

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::client::Api;
use super::output::{human_bytes, or_dash, write_json, write_rows};
use super::power::{run_bmc, run_power, write_bmc, BmcCommand, PowerCommand};
use super::CliError;
use crate::fleet::{MachineSummary, Page};
use crate::record::{MachineRecord, MachineView};

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// Every machine, as a table (or JSON records with --json), paged through the
    /// controller's machine list; filters narrow it.
    List {
        #[arg(long)]
        json: bool,
        /// Only machines at this site.
        #[arg(long)]
        site: Option<String>,
        /// Only machines in this state (discovered, assigned, installing, deployed,
        /// failed, retired).
        #[arg(long)]
        state: Option<String>,
        /// Only machines whose vendor contains this (any case).
        #[arg(long)]
        vendor: Option<String>,
        /// Only machines whose id, serial, SMBIOS UUID, hostname or a MAC contains this.
        #[arg(long)]
        search: Option<String>,
        /// Machines asked for per request.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=1000))]
        page_size: u16,
    },
    /// One machine (by id, serial, SMBIOS UUID or MAC), with its facts.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Ties a profile to a machine (by id, serial, SMBIOS UUID or MAC). A machine with
    /// a BMC is set to PXE for its next boot and power cycled (on, when it is off).
    Assign {
        machine: String,
        profile: String,
        /// Leave the machine's power alone.
        #[arg(long)]
        no_power: bool,
    },
    /// Returns a machine to `discovered`, optionally wiping its disks first (a machine
    /// with a BMC is then PXE booted to wipe them).
    Release {
        machine: String,
        /// `quick`: signatures and the first/last MiB; `discard`: the whole disk.
        #[arg(long)]
        wipe: Option<String>,
        /// Leave the machine's power alone.
        #[arg(long)]
        no_power: bool,
    },
    /// Installs the machine's profile again (a machine with a BMC is PXE booted).
    Reinstall {
        machine: String,
        /// Leave the machine's power alone.
        #[arg(long)]
        no_power: bool,
    },
    /// Power through the machine's BMC: status, on, off, cycle.
    Power {
        #[command(subcommand)]
        command: PowerCommand,
    },
    /// The machine's BMC settings.
    Bmc {
        #[command(subcommand)]
        command: BmcCommand,
    },
    /// Takes the machine out of service for good.
    Retire { machine: String },
}

/// Runs one `machines` command.
pub(super) async fn run(
    api: &Api,
    command: MachinesCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let output = match command {
        MachinesCommand::List {
            json,
            site,
            state,
            vendor,
            search,
            page_size,
        } => {
            let filters = Filters {
                site: site.unwrap_or_default(),
                state: state.unwrap_or_default(),
                vendor: vendor.unwrap_or_default(),
                search: search.unwrap_or_default(),
            };
            if json {
                let machines: Vec<MachineRecord> = if filters.is_empty() {
                    // The whole inventory, streamed by the controller in one answer.
                    api.get(&["machines"]).await?
                } else {
                    pages(api, &filters, page_size, true).await?
                };
                let views: Vec<MachineView<'_>> = machines.iter().map(MachineView::from).collect();
                write_json(out, &views)
            } else {
                let machines: Vec<MachineSummary> = pages(api, &filters, page_size, false).await?;
                write_table(out, &machines)
            }
        }
        MachinesCommand::Show { id, json } => {
            let machine: MachineRecord =
                api.get(&["machines", &id]).await.map_err(|e| match e {
                    CliError::Status { status, .. } if status == reqwest::StatusCode::NOT_FOUND => {
                        CliError::NotFound { id: id.clone() }
                    }
                    // No machine is called "" or "..".
                    CliError::Unsendable { .. } => CliError::NotFound { id: id.clone() },
                    e => e,
                })?;
            if json {
                // The record with `secure_boot` at its top, as the API shows it.
                write_json(out, &MachineView::from(&machine))
            } else {
                write_machine(out, &machine)
            }
        }
        MachinesCommand::Assign {
            machine,
            profile,
            no_power,
        } => {
            let body = json!({ "profile": profile, "no_power": no_power });
            let m = action(api, &machine, "assign", Some(body)).await?;
            writeln!(out, "machine {} is {}", m.id, m.state)
        }
        MachinesCommand::Release {
            machine,
            wipe,
            no_power,
        } => {
            let body = json!({ "wipe": wipe, "no_power": no_power });
            let m = action(api, &machine, "release", Some(body)).await?;
            match m.pending_wipe {
                Some(mode) => writeln!(
                    out,
                    "machine {} is {}; its disks are wiped ({mode:?}) when it next boots the prospector",
                    m.id, m.state
                ),
                None => writeln!(out, "machine {} is {}", m.id, m.state),
            }
        }
        MachinesCommand::Reinstall { machine, no_power } => {
            let body = json!({ "no_power": no_power });
            let m = action(api, &machine, "reinstall", Some(body)).await?;
            writeln!(out, "machine {} is {}", m.id, m.state)
        }
        MachinesCommand::Power { command } => return run_power(api, command, out).await,
        MachinesCommand::Bmc { command } => return run_bmc(api, command, out).await,
        MachinesCommand::Retire { machine } => {
            let m = action(api, &machine, "retire", None).await?;
            writeln!(out, "machine {} is {}", m.id, m.state)
        }
    };
    output.map_err(CliError::Output)
}

/// `POST /api/v1/machines/{machine}/{verb}`: the machine's record afterwards.
async fn action(
    api: &Api,
    machine: &str,
    verb: &str,
    body: Option<serde_json::Value>,
) -> Result<MachineRecord, CliError> {
    api.call(Method::POST, &["machines", machine, verb], body)
        .await
}

fn table_row(m: &MachineSummary) -> Vec<String> {
    // As the record's state prints: `deployed (debian12)`, `failed (disk not found)`.
    let state = match (&m.profile, &m.reason) {
        (_, Some(reason)) => format!("{} ({reason})", m.state),
        (Some(p), None) if m.state != "failed" => format!("{} ({p})", m.state),
        _ => m.state.clone(),
    };
    vec![
        m.id.clone(),
        state,
        m.site.clone(),
        m.power.to_string(),
        or_dash(m.vendor.as_deref()),
        or_dash(m.product.as_deref()),
        or_dash(m.serial.as_deref()),
        if m.macs.is_empty() {
            "-".into()
        } else {
            m.macs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
        m.cpus.to_string(),
        human_bytes(m.memory_bytes),
        if m.disks == 0 {
            "-".into()
        } else {
            format!("{} ({})", m.disks, human_bytes(m.disk_bytes))
        },
    ]
}

/// The filters of `machines list`.
struct Filters {
    site: String,
    state: String,
    vendor: String,
    search: String,
}

impl Filters {
    fn is_empty(&self) -> bool {
        [&self.site, &self.state, &self.vendor, &self.search]
            .iter()
            .all(|s| s.is_empty())
    }
}

/// Every machine matching `filters`, page after page (`full`: whole records).
async fn pages<T: serde::de::DeserializeOwned>(
    api: &Api,
    filters: &Filters,
    page_size: u16,
    full: bool,
) -> Result<Vec<T>, CliError> {
    let limit = page_size.to_string();
    let mut cursor = String::new();
    let mut all = Vec::new();
    loop {
        let page: Page<T> = api
            .get_query(
                &["machines"],
                &[
                    ("site", &filters.site),
                    ("state", &filters.state),
                    ("vendor", &filters.vendor),
                    ("q", &filters.search),
                    ("limit", &limit),
                    ("cursor", &cursor),
                    ("full", if full { "true" } else { "" }),
                ],
            )
            .await?;
        all.extend(page.machines);
        match page.next_cursor {
            Some(next) if next != cursor => cursor = next,
            _ => return Ok(all),
        }
    }
}

/// The `machines list` table.
pub fn write_table(out: &mut dyn Write, machines: &[MachineSummary]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = machines.iter().map(table_row).collect();
    write_rows(
        out,
        &[
            "ID", "STATE", "SITE", "POWER", "VENDOR", "PRODUCT", "SERIAL", "MACS", "CPUS",
            "MEMORY", "DISKS",
        ],
        rows,
    )
}

/// `on`, `off` or `unknown`: a fact that may not be known.
fn on_off(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "unknown",
    }
}

/// The `machines show` text.
/// The latest install's steps, one line each: seconds after the first step, then the
/// step (`progress:     +0.0 s  fetched preseed.cfg`).
fn write_progress(out: &mut dyn Write, m: &MachineRecord) -> std::io::Result<()> {
    let Some(first) = m.progress.first() else {
        return Ok(());
    };
    for (i, s) in m.progress.iter().enumerate() {
        let label = if i == 0 { "progress:" } else { "" };
        let after = s.at_unix_ms.saturating_sub(first.at_unix_ms) as f64 / 1000.0;
        writeln!(out, "{label:<13} +{after:.1} s  {}", s.step)?;
    }
    Ok(())
}

pub fn write_machine(out: &mut dyn Write, m: &MachineRecord) -> std::io::Result<()> {
    let f = &m.facts;
    let d = &f.dmi;
    writeln!(out, "id:           {}", m.id)?;
    writeln!(out, "state:        {}", m.state)?;
    if let Some(wipe) = m.pending_wipe {
        writeln!(out, "pending wipe: {wipe:?}")?;
    }
    writeln!(out, "site:         {}", m.site)?;
    writeln!(out, "power:        {}", m.power)?;
    if let Some(e) = &m.power_error {
        writeln!(out, "power error:  {e}")?;
    }
    if let Some(bmc) = &m.bmc {
        write_bmc(out, bmc)?;
    }
    write_progress(out, m)?;
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
    writeln!(out, "secure boot:  {}", on_off(f.secure_boot))?;
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
    if let Some(bmc) = &f.bmc {
        writeln!(
            out,
            "bmc found:    IPMI {} manufacturer {} firmware {}",
            or_dash(bmc.ipmi_version.as_deref()),
            bmc.manufacturer_id
                .map_or_else(|| "-".to_owned(), |m| m.to_string()),
            or_dash(bmc.firmware.as_deref())
        )?;
        for lan in &bmc.lan {
            let show = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            writeln!(
                out,
                "bmc lan:      channel {} {} ({}) mac {} netmask {} gateway {}",
                lan.channel,
                show(lan.ip.map(|a| a.to_string())),
                or_dash(lan.ip_source.as_deref()),
                show(lan.mac.map(|m| m.to_string())),
                show(lan.netmask.map(|a| a.to_string())),
                show(lan.gateway.map(|a| a.to_string())),
            )?;
        }
    }
    for c in &m.conflicts {
        writeln!(out, "conflict:     {c}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::sample_machine;

    #[test]
    fn progress_is_listed_in_seconds_after_its_first_step() {
        let mut machine = sample_machine();
        let mut out = Vec::new();
        write_machine(&mut out, &machine).unwrap_or_else(|e| panic!("{e}"));
        assert!(!String::from_utf8_lossy(&out).contains("progress:"));
        machine.add_progress("fetched preseed.cfg".into(), 1_000);
        machine.add_progress("fetched preseed.cfg".into(), 2_000);
        machine.add_progress("done".into(), 413_300);
        let mut out = Vec::new();
        write_machine(&mut out, &machine).unwrap_or_else(|e| panic!("{e}"));
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.contains(
                "progress:     +0.0 s  fetched preseed.cfg\n              +412.3 s  done\n"
            ),
            "{out}"
        );
        // At most MAX_PROGRESS_STEPS, the oldest dropped.
        for i in 0..40 {
            machine.add_progress(format!("fetched f{i}"), 500_000 + i);
        }
        assert_eq!(machine.progress.len(), crate::record::MAX_PROGRESS_STEPS);
        assert_eq!(machine.progress[0].step, "fetched f24");
    }

    #[test]
    fn secure_boot_is_shown_beside_the_boot_mode_and_at_the_top_of_the_json() {
        let mut machine = sample_machine();
        for (fact, text, json) in [
            (Some(true), "on", json!(true)),
            (Some(false), "off", json!(false)),
            (None, "unknown", serde_json::Value::Null),
        ] {
            machine.facts.secure_boot = fact;
            let mut out = Vec::new();
            write_machine(&mut out, &machine).unwrap_or_else(|e| panic!("{e}"));
            let out = String::from_utf8_lossy(&out);
            assert!(
                out.contains(&format!("boot mode:    Uefi\nsecure boot:  {text}\n")),
                "{out}"
            );
            let mut out = Vec::new();
            write_json(&mut out, &MachineView::from(&machine)).unwrap_or_else(|e| panic!("{e}"));
            let value: serde_json::Value =
                serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(value["secure_boot"], json, "jq .secure_boot");
            assert_eq!(value["facts"]["secure_boot"], json);
            assert_eq!(value["id"], machine.id.as_str());
            // The view is the record, plus the derived field.
            let mut record = value.clone();
            record.as_object_mut().map(|o| o.remove("secure_boot"));
            assert_eq!(
                record,
                serde_json::to_value(&machine).unwrap_or_else(|e| panic!("{e}"))
            );
        }
    }
}
