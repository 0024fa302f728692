//! `substruct-edge`: parses flags (and the optional TOML file), then runs the agent
//! library until SIGINT/SIGTERM. All logic lives in the library.

use anyhow::Context;
use clap::Parser;
use substruct_edge::config::{Command, Flags};
use substruct_edge::{agent, site_key};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    substruct_runtime::init_tracing();
    let mut flags = Flags::parse();
    if let Some(Command::Keygen { file }) = flags.command.take() {
        let key = site_key::generate(&file).context("substruct-edge keygen failed")?;
        println!("{}", key.public_key());
        return Ok(());
    }
    let config = flags.into_config().context("invalid configuration")?;
    let cancel = substruct_runtime::shutdown_token();
    agent::run(config, cancel)
        .await
        .context("substruct-edge failed")?;
    Ok(())
}
