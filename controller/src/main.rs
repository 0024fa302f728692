//! `substruct-controller`: a thin wrapper over [`substruct_controller::run`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use substruct_controller::config::TlsPaths;
use substruct_controller::Config;

/// Substruct controller: inventory, matching, REST API.
#[derive(Debug, Parser)]
#[command(name = "substruct-controller", version)]
struct Args {
    /// TOML configuration file (without one, defaults apply).
    #[arg(long)]
    config: Option<PathBuf>,
    /// NATS URL (overrides the file).
    #[arg(long)]
    nats: Option<substruct_wire::NatsUrl>,
    /// NATS user (the hub's `controller` user, deploy/nats/gen-site --controller).
    #[arg(long, env = "SUBSTRUCT_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "SUBSTRUCT_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// REST API address (overrides the file).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Serve the REST API over HTTPS with this certificate chain (PEM; overrides the
    /// file's `tls_cert`). Needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM; overrides the file's `tls_key`).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// An admin API token, in addition to those in the file.
    #[arg(long, env = "SUBSTRUCT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Log lines as `text` or `json` (one object per line), to stderr.
    #[arg(
        long,
        env = "SUBSTRUCT_LOG_FORMAT",
        default_value_t,
        value_name = "text|json"
    )]
    log_format: substruct_runtime::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    substruct_runtime::init_logging(args.log_format);
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(url) = args.nats {
        config.nats_url = url;
    }
    if let Some(user) = args.nats_user.filter(|u| !u.is_empty()) {
        config.nats_user = Some(user);
    }
    if let Some(password) = args.nats_password {
        config.nats_password = Some(password);
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsPaths { cert, key });
    }
    if let Some(token) = args.token.as_deref().filter(|t| !t.is_empty()) {
        config
            .add_admin_token(token)
            .context("SUBSTRUCT_TOKEN / --token")?;
    }
    let cancel = substruct_runtime::shutdown_token();
    substruct_controller::run(config, cancel).await?;
    Ok(())
}
