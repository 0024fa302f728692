//! `substruct-edge`: parses flags (and the optional TOML file), then runs the agent
//! library until SIGINT/SIGTERM. All logic lives in the library.

use anyhow::Context;
use clap::Parser;
use substruct_edge::config::{Command, Flags};
use substruct_edge::{agent, site_key};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut flags = Flags::parse();
    substruct_runtime::init_logging(flags.log_format);
    match flags.command.take() {
        Some(Command::Keygen { file }) => {
            let key = site_key::generate(&file).context("substruct-edge keygen failed")?;
            println!("{}", key.public_key());
            return Ok(());
        }
        Some(Command::LeafAuth { site, site_key }) => {
            let site = substruct_wire::SiteId::new(site).context("substruct-edge leaf-auth")?;
            let key = site_key::load(&site_key).context("substruct-edge leaf-auth")?;
            let trust = site_key::leaf_trust(&key, &site).context("substruct-edge leaf-auth")?;
            print!("{}", trust.config());
            return Ok(());
        }
        Some(Command::EfiCacerts { ca, out }) => {
            let n = substruct_edge::efi_cacerts::convert(&ca, &out)
                .context("substruct-edge efi-cacerts failed")?;
            eprintln!("wrote {n} bytes to {}", out.display());
            return Ok(());
        }
        None => {}
    }
    let config = flags.into_config().context("invalid configuration")?;
    let cancel = substruct_runtime::shutdown_token();
    agent::run(config, cancel)
        .await
        .context("substruct-edge failed")?;
    Ok(())
}
