//! `substruct-prospector`: PID 1 of the live image, or a CLI that gathers and reports
//! the hardware of the machine it runs on (or of a captured tree with `--root`).
//!
//! A CLI run never powers off or reboots its host: it prints what the controller asked.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use substruct_prospector::agent::{self, AgentConfig, ConfigSources, Outcome};
use substruct_prospector::blockdev::Storage;
use substruct_prospector::{facts, live};

/// Gathers this machine's hardware facts and reports them to the Substruct controller.
#[derive(Debug, Parser)]
#[command(name = "substruct-prospector", version)]
struct Cli {
    /// Read /sys and /proc under this directory (a captured tree) instead of /.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Print the hardware report as JSON and exit, without NATS.
    #[arg(long)]
    dry_run: bool,
    /// NATS URL (default: the substruct.nats= kernel argument).
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Site name (default: the substruct.site= kernel argument).
    #[arg(long, value_name = "NAME")]
    site: Option<String>,
    /// One-time boot token (default: the substruct.token= kernel argument).
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// Edge HTTP base URL disk images are streamed from (default: the substruct.edge=
    /// kernel argument).
    #[arg(long, value_name = "URL")]
    edge: Option<String>,
    /// Directory of the disk device nodes (e.g. /dev) an image deploy or a wipe writes
    /// to; disks are looked up in --root's sys/block. Without it this run refuses to
    /// write any disk (the controller gets a Failed callback).
    #[arg(long, value_name = "DIR")]
    dev_dir: Option<PathBuf>,
    /// Exit after the controller's acknowledgement instead of waiting for commands.
    #[arg(long)]
    once: bool,
    /// Log lines as `text` or `json` (one object per line), to stderr.
    #[arg(
        long,
        env = "SUBSTRUCT_LOG_FORMAT",
        default_value_t,
        value_name = "text|json"
    )]
    log_format: substruct_runtime::LogFormat,
}

fn main() -> ExitCode {
    if live::is_pid1() {
        live::run_as_init();
    }
    let cli = Cli::parse();
    substruct_runtime::init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("substruct-prospector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let report = facts::gather(&cli.root);
    if cli.dry_run {
        let json = serde_json::to_string_pretty(&report).context("encoding the report as JSON")?;
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    let kernel = facts::kernel_args(&cli.root);
    let mut cfg = AgentConfig::resolve(
        ConfigSources {
            nats: cli.nats,
            site: cli.site,
            token: cli.token,
            seed: None,
            edge: cli.edge,
            once: cli.once,
        },
        &kernel,
    )?;
    // Disks come from the same tree as the facts (`--root`); devices from `--dev-dir`.
    cfg.storage = cli.dev_dir.map(|dev_dir| Storage {
        root: cli.root.clone(),
        dev_dir,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async move {
        let cancel = substruct_runtime::shutdown_token();
        agent::run(cfg, report, cancel).await
    })?;
    Ok(match outcome {
        Outcome::Acknowledged { machine_id } => {
            println!("acknowledged as machine {machine_id}");
            ExitCode::SUCCESS
        }
        Outcome::PowerOff { machine_id } => {
            println!(
                "controller asked machine {machine_id} to power off (a CLI run leaves its host alone)"
            );
            ExitCode::SUCCESS
        }
        Outcome::Reboot { machine_id } => {
            println!(
                "controller asked machine {machine_id} to reboot (a CLI run leaves its host alone)"
            );
            ExitCode::SUCCESS
        }
        Outcome::Cancelled => {
            println!("cancelled before the controller gave a final instruction");
            ExitCode::from(130)
        }
    })
}
