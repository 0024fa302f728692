//! `substruct-edge`: parses flags (and the optional TOML file), then runs the agent
//! library until SIGINT/SIGTERM. All logic lives in the library.

use anyhow::Context;
use clap::Parser;
use substruct_edge::{agent, config::Flags};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    substruct_runtime::init_tracing();
    let config = Flags::parse()
        .into_config()
        .context("invalid configuration")?;
    let cancel = substruct_runtime::shutdown_token();
    agent::run(config, cancel)
        .await
        .context("substruct-edge failed")?;
    Ok(())
}
