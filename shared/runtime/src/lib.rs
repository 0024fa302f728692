//! Runtime helpers every Substruct binary shares: logging set-up, the root shutdown
//! token, NATS connect options, the one retry [`backoff`], the one request-serving
//! loop ([`serve`]), and JetStream bucket/stream creation that works on nats-server
//! 2.9 too ([`jetstream`]).
//!
//! Invariant: no protocol logic here, only plumbing; subjects and stream names come
//! from `substruct_wire::subjects`.

pub mod backoff;
pub mod jetstream;
pub mod login;
pub mod serve;
pub mod tls;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use login::{LoginError, NatsLogin};

/// An error and every `source()` under it on one line, `outer: middle: root`, for
/// log and console lines (the cause is never folded into an error's own message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// How log lines are written: `text` (one human line per event) or `json` (one JSON
/// object per line: `timestamp`, `level`, `target`, `fields`, and the spans).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format must be text or json, not {other:?}")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Installs the global `tracing` subscriber: `RUST_LOG` (default `info`) to stderr,
/// as text.
pub fn init_tracing() {
    init_logging(LogFormat::Text);
}

/// Installs the global `tracing` subscriber: `RUST_LOG` (default `info`) to stderr,
/// in `format`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(false).try_init(),
    };
}

/// The root cancellation token, cancelled on SIGINT or SIGTERM.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

/// A JetStream context, through `domain` when the client sits behind a leaf node
/// (the hub's JetStream domain, `hub` in deploy/nats/), else the local one.
pub fn jetstream_context(
    client: async_nats::Client,
    domain: Option<&str>,
) -> async_nats::jetstream::Context {
    match domain {
        Some(d) => async_nats::jetstream::with_domain(client, d),
        None => async_nats::jetstream::new(client),
    }
}

/// A consumer name no other watcher uses (sites may only create named consumers
/// on their own keys, deploy/nats/gen-site).
pub fn unique_consumer_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

/// Connect options shared by every component: unlimited reconnects with a capped,
/// jittered [`backoff::Backoff`] (100 ms doubling up to 3 s), so a NATS outage is
/// survived rather than fatal and clients do not reconnect in lockstep.
pub fn nats_options(name: &str) -> async_nats::ConnectOptions {
    with_common_options(async_nats::ConnectOptions::new(), name)
}

/// [`nats_options`] logging in with `login` (a user JWT and its key) when given, else
/// anonymously (a development server without authorization).
pub fn nats_options_login(name: &str, login: Option<&NatsLogin>) -> async_nats::ConnectOptions {
    match login {
        Some(l) => with_common_options(l.options(), name),
        None => nats_options(name),
    }
}

fn with_common_options(
    options: async_nats::ConnectOptions,
    name: &str,
) -> async_nats::ConnectOptions {
    let backoff = backoff::Backoff::new(RECONNECT_BASE, RECONNECT_CAP);
    options
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(move |attempt| {
            let failures = u32::try_from(attempt).unwrap_or(u32::MAX);
            backoff.delay_after(failures, rand::random::<f64>())
        })
}

/// First reconnect delay of [`nats_options`].
const RECONNECT_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay of [`nats_options`].
const RECONNECT_CAP: Duration = Duration::from_secs(3);

/// Connects with `options` to every server of `url` (a [`substruct_wire::NatsUrl`] may
/// name several, separated by commas; the client's own `connect(&str)` takes one).
pub async fn connect(
    options: async_nats::ConnectOptions,
    url: &substruct_wire::NatsUrl,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    options.connect(url.servers().collect::<Vec<_>>()).await
}
