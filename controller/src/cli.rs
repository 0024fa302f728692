//! The `substruct` admin CLI: a client of the controller's REST API.
//!
//! ```text
//! substruct [--controller URL] [--token T] machines list [--json]
//! substruct [--controller URL] [--token T] machines show MACHINE [--json]
//! substruct machines assign MACHINE PROFILE     # MACHINE: id, serial, SMBIOS UUID or MAC
//! substruct machines release MACHINE [--wipe quick|discard]
//! substruct machines reinstall|retire MACHINE
//! substruct profiles add FILE.toml | list [--json] | show NAME | delete NAME
//! substruct rules add FILE.toml | list [--json] | dry-run FILE.toml | delete NAME
//! substruct images add FILE --kind kernel|initrd|disk|loader [--name NAME] | list [--json]
//! substruct sites add NAME [--local-boot ipxe-exit|no-boot-file] [--description TEXT] | list [--json]
//! ```
//! `SUBSTRUCT_CONTROLLER` (default `http://127.0.0.1:8080`) and `SUBSTRUCT_TOKEN`
//! stand in for the flags.

use std::io::Write;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::{DryRun, ImageView, NewImage, SiteBody, Uploaded};
use crate::images::{ImageKind, ImageRecord};
use crate::profile::Profile;
use crate::record::MachineRecord;
use crate::rules::Rule;
use crate::sites::{LocalBoot, SiteView};

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
}

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

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Registers FILE: its name, kind, sha256 and size.
    Add {
        file: PathBuf,
        #[arg(long)]
        kind: ImageKind,
        /// The name edges serve it under (`/images/NAME`); default: the file's name.
        #[arg(long)]
        name: Option<String>,
        /// Register the name, kind and sha256 only: every edge already holds the file
        /// in its image directory.
        #[arg(long)]
        no_upload: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
}

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
    },
    /// Every site, with its edge's state (online/offline), version and last heartbeat.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// Every machine, as a table (or JSON records with --json).
    List {
        #[arg(long)]
        json: bool,
    },
    /// One machine (by id, serial, SMBIOS UUID or MAC), with its facts.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Ties a profile to a machine (by id, serial, SMBIOS UUID or MAC).
    Assign { machine: String, profile: String },
    /// Returns a machine to `discovered`, optionally wiping its disks first.
    Release {
        machine: String,
        /// `quick`: signatures and the first/last MiB; `discard`: the whole disk.
        #[arg(long)]
        wipe: Option<String>,
    },
    /// Installs the machine's profile again.
    Reinstall { machine: String },
    /// Takes the machine out of service for good.
    Retire { machine: String },
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
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn read_text(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })
}

/// sha256 and size of a file, with a progress line on stderr for big files.
fn hash_file(path: &PathBuf) -> Result<(String, u64), CliError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let read_err = |source| CliError::Read {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let total = file.metadata().map_err(read_err)?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut shown = 0u64;
    let mut stderr = std::io::stderr();
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        let pct = done * 100 / total.max(1);
        if total > 64 << 20 && pct >= shown + 5 {
            shown = pct;
            let bar = "#".repeat((pct / 5) as usize);
            let _ = write!(stderr, "\rhashing [{bar:<20}] {pct:>3}%");
        }
    }
    if shown > 0 {
        let _ = writeln!(stderr);
    }
    Ok((hex::encode(hasher.finalize()), done))
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
            MachinesCommand::Assign { machine, profile } => {
                let path = format!("/api/v1/machines/{machine}/assign");
                let m: MachineRecord = api
                    .send(Method::POST, &path, Some(json!({ "profile": profile })))
                    .await?;
                writeln!(out, "machine {} is {}", m.id, m.state)
            }
            MachinesCommand::Release { machine, wipe } => {
                let path = format!("/api/v1/machines/{machine}/release");
                let m: MachineRecord = api
                    .send(Method::POST, &path, Some(json!({ "wipe": wipe })))
                    .await?;
                match m.pending_wipe {
                    Some(mode) => writeln!(
                        out,
                        "machine {} is {}; its disks are wiped ({mode:?}) when it next boots the prospector",
                        m.id, m.state
                    ),
                    None => writeln!(out, "machine {} is {}", m.id, m.state),
                }
            }
            MachinesCommand::Reinstall { machine } => {
                let path = format!("/api/v1/machines/{machine}/reinstall");
                let m: MachineRecord = api.send(Method::POST, &path, None).await?;
                writeln!(out, "machine {} is {}", m.id, m.state)
            }
            MachinesCommand::Retire { machine } => {
                let path = format!("/api/v1/machines/{machine}/retire");
                let m: MachineRecord = api.send(Method::POST, &path, None).await?;
                writeln!(out, "machine {} is {}", m.id, m.state)
            }
        },
        Command::Profiles { command } => match command {
            ProfilesCommand::Add { file } => {
                let text = read_text(&file)?;
                let profile = Profile::from_toml(&text).map_err(|e| CliError::Invalid {
                    path: file.clone(),
                    message: crate::error_chain(&e),
                })?;
                let path = format!("/api/v1/profiles/{}", profile.name);
                let body = json_body(&file, &profile)?;
                let saved: Profile = api.send(Method::PUT, &path, Some(body)).await?;
                writeln!(out, "profile {} saved ({})", saved.name, saved.method.as_str())
            }
            ProfilesCommand::List { json } => {
                let profiles: Vec<Profile> = api.get("/api/v1/profiles", None).await?;
                if json {
                    write_json(out, &profiles)
                } else {
                    let rows = profiles
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.method.as_str().to_owned(),
                                p.image
                                    .clone()
                                    .or_else(|| p.kernel.clone())
                                    .unwrap_or_else(|| "-".into()),
                                p.description.clone().unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect();
                    write_rows(out, &["NAME", "METHOD", "IMAGE/KERNEL", "DESCRIPTION"], rows)
                }
            }
            ProfilesCommand::Show { name } => {
                let p: Profile = api
                    .get(&format!("/api/v1/profiles/{name}"), None)
                    .await?;
                write_json(out, &p)
            }
            ProfilesCommand::Delete { name } => {
                api.delete(&format!("/api/v1/profiles/{name}")).await?;
                writeln!(out, "profile {name} deleted")
            }
        },
        Command::Rules { command } => match command {
            RulesCommand::Add { file } => {
                let rule = read_rule(&file)?;
                let path = format!("/api/v1/rules/{}", rule.name);
                let body = json_body(&file, &rule)?;
                let saved: Rule = api.send(Method::PUT, &path, Some(body)).await?;
                writeln!(
                    out,
                    "rule {} saved (priority {}, profile {})",
                    saved.name, saved.priority, saved.profile
                )
            }
            RulesCommand::List { json } => {
                let rules: Vec<Rule> = api.get("/api/v1/rules", None).await?;
                if json {
                    write_json(out, &rules)
                } else {
                    let rows = rules
                        .iter()
                        .map(|r| {
                            vec![
                                r.priority.to_string(),
                                r.name.clone(),
                                r.profile.clone(),
                                if r.enabled { "yes" } else { "no" }.to_owned(),
                            ]
                        })
                        .collect();
                    write_rows(out, &["PRIORITY", "NAME", "PROFILE", "ENABLED"], rows)
                }
            }
            RulesCommand::DryRun { file } => {
                let rule = read_rule(&file)?;
                let body = json_body(&file, &rule)?;
                let dry: DryRun = api
                    .send(Method::POST, "/api/v1/rules/dry-run", Some(body))
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
                api.delete(&format!("/api/v1/rules/{name}")).await?;
                writeln!(out, "rule {name} deleted")
            }
        },
        Command::Images { command } => match command {
            ImagesCommand::Add {
                file,
                kind,
                name,
                no_upload,
            } => {
                let name = match name {
                    Some(n) => n,
                    None => file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .map(str::to_owned)
                        .ok_or_else(|| CliError::Invalid {
                            path: file.clone(),
                            message: "has no usable file name; pass --name".into(),
                        })?,
                };
                let (sha256, size) = hash_file(&file)?;
                if !no_upload {
                    api.upload(&file, &sha256, size).await?;
                }
                let body = NewImage {
                    name,
                    kind,
                    sha256,
                    size,
                };
                let body = json_body(&file, &body)?;
                let image: ImageRecord = api.send(Method::POST, "/api/v1/images", Some(body)).await?;
                writeln!(
                    out,
                    "image {} registered: {} {} sha256 {}",
                    image.name,
                    image.kind,
                    human_bytes(image.size),
                    image.sha256
                )
            }
            ImagesCommand::List { json } => {
                let images: Vec<ImageView> = api.get("/api/v1/images", None).await?;
                if json {
                    write_json(out, &images)
                } else {
                    let rows = images
                        .iter()
                        .map(|v| {
                            let i = &v.image;
                            vec![
                                i.name.clone(),
                                i.kind.to_string(),
                                human_bytes(i.size),
                                i.sha256.chars().take(16).collect(),
                                if v.stored { "yes" } else { "no (edge files)" }.to_owned(),
                                if v.sites.is_empty() {
                                    "-".to_owned()
                                } else {
                                    v.sites.join(",")
                                },
                            ]
                        })
                        .collect();
                    write_rows(
                        out,
                        &["NAME", "KIND", "SIZE", "SHA256", "STORED", "CACHED AT"],
                        rows,
                    )
                }
            }
        },
        Command::Sites { command } => match command {
            SitesCommand::Add {
                name,
                local_boot,
                description,
            } => {
                let body = serde_json::to_value(SiteBody {
                    description,
                    local_boot,
                })
                .map_err(|e| CliError::Invalid {
                    path: PathBuf::from(&name),
                    message: e.to_string(),
                })?;
                let site: crate::sites::SiteRecord = api
                    .send(Method::PUT, &format!("/api/v1/sites/{name}"), Some(body))
                    .await?;
                writeln!(
                    out,
                    "site {} registered (local boot: {})",
                    site.name, site.local_boot
                )
            }
            SitesCommand::List { json } => {
                let sites: Vec<SiteView> = api.get("/api/v1/sites", None).await?;
                if json {
                    write_json(out, &sites)
                } else {
                    let now = crate::now_unix_ms();
                    let rows = sites
                        .iter()
                        .map(|s| {
                            vec![
                                s.name.to_string(),
                                s.edge.clone(),
                                s.edge_version.clone().unwrap_or_else(|| "-".into()),
                                s.last_heartbeat_unix_ms.map_or_else(
                                    || "never".into(),
                                    |t| format!("{}s ago", now.saturating_sub(t) / 1000),
                                ),
                                s.local_boot.to_string(),
                                if s.registered { "yes" } else { "no" }.to_owned(),
                            ]
                        })
                        .collect();
                    write_rows(
                        out,
                        &["SITE", "EDGE", "VERSION", "HEARTBEAT", "LOCAL BOOT", "REGISTERED"],
                        rows,
                    )
                }
            }
        },
    }
    .map_err(CliError::Output)
}

/// A request body; `path` names what it came from in the error.
fn json_body(
    path: &std::path::Path,
    value: &impl serde::Serialize,
) -> Result<serde_json::Value, CliError> {
    serde_json::to_value(value).map_err(|e| CliError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn read_rule(file: &PathBuf) -> Result<Rule, CliError> {
    let text = read_text(file)?;
    Rule::from_toml(&text).map_err(|e| CliError::Invalid {
        path: file.clone(),
        message: crate::error_chain(&e),
    })
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn get<T: DeserializeOwned>(&self, path: &str, id: Option<&str>) -> Result<T, CliError> {
        self.request(Method::GET, path, None, id).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, CliError> {
        self.request(method, path, body, None).await
    }

    /// Streams a file to `PUT /api/v1/images/content/{sha256}` with a progress bar.
    async fn upload(&self, file: &PathBuf, sha256: &str, size: u64) -> Result<(), CliError> {
        use futures::StreamExt as _;
        let read_err = |source| CliError::Read {
            path: file.clone(),
            source,
        };
        let handle = tokio::fs::File::open(file).await.map_err(read_err)?;
        let mut sent = 0u64;
        let mut shown = 0u64;
        let stream =
            tokio_util::io::ReaderStream::with_capacity(handle, 1 << 20).map(move |chunk| {
                if let Ok(c) = &chunk {
                    sent += c.len() as u64;
                    let pct = sent * 100 / size.max(1);
                    if size > 8 << 20 && (pct >= shown + 5 || sent == size) {
                        shown = pct;
                        let bar = "#".repeat((pct / 5) as usize);
                        eprint!("\ruploading [{bar:<20}] {pct:>3}% of {}", human_bytes(size));
                        if sent == size {
                            eprintln!();
                        }
                    }
                }
                chunk
            });
        let url = format!("{}/api/v1/images/content/{sha256}", self.base);
        let mut request = self
            .client
            .put(&url)
            .timeout(std::time::Duration::from_secs(3600))
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(stream));
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
            let _: Uploaded = response
                .json()
                .await
                .map_err(|source| CliError::Decode { url, source })?;
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(body);
        Err(match status {
            StatusCode::UNAUTHORIZED => CliError::Unauthorized { message },
            _ => CliError::Status { status, message },
        })
    }

    async fn delete(&self, path: &str) -> Result<(), CliError> {
        self.request::<serde_json::Value>(Method::DELETE, path, None, None)
            .await
            .map(|_| ())
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        id: Option<&str>,
    ) -> Result<T, CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method, &url);
        if let Some(body) = &body {
            request = request.json(body);
        }
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
        if status == StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null).map_err(|e| CliError::Status {
                status,
                message: e.to_string(),
            });
        }
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
    let rows: Vec<Vec<String>> = machines.iter().map(table_row).collect();
    write_rows(
        out,
        &[
            "ID", "STATE", "SITE", "VENDOR", "PRODUCT", "SERIAL", "MACS", "CPUS", "MEMORY", "DISKS",
        ],
        rows,
    )
}

/// An aligned table: a header and rows of cells.
pub fn write_rows(
    out: &mut dyn Write,
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> std::io::Result<()> {
    let header: Vec<String> = header.iter().map(|s| (*s).to_owned()).collect();
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
    if let Some(wipe) = m.pending_wipe {
        writeln!(out, "pending wipe: {wipe:?}")?;
    }
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
