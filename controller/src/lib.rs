//! The Substruct controller: machine inventory, identity matching, the REST API and
//! the `substruct` admin CLI. Stateless: all durable state is in JetStream, so two
//! controllers can run side by side (a NATS queue group shares discover requests;
//! KV compare-and-set keeps their writes consistent).
//!
//! * [`config`] — TOML configuration, validated;
//! * [`matching`] — pure: which machine a report belongs to;
//! * [`record`] — the machine record and events (pure data);
//! * [`discover`] — discover requests: checks, ingest, replies;
//! * [`lifecycle`] — pure: the one transition function;
//! * [`profile`], [`rules`], [`images`], [`sites`] — pure: what operators register;
//! * [`provision`] — assignment, callbacks, and the boot intents / install files
//!   derived from each machine record;
//! * [`events`] — site events (edge heartbeats);
//! * [`power`] — BMC settings and power requests to the edges, their results;
//! * [`store`] — the only module that knows JetStream;
//! * [`api`] — the REST API (axum);
//! * [`ui`] — the web UI: HTML pages over the API, served by the same listener;
//! * [`metrics`] — Prometheus counters, `GET /metrics`;
//! * [`tls`] — HTTPS for the API: certificate loading, handshakes;
//! * [`cli`] — the `substruct` admin CLI (a REST client).
//!
//! Run one in-process with [`Controller::start`] (tests) or [`run`] (main).

pub mod api;
pub mod cli;
pub mod config;
pub mod discover;
pub mod events;
pub mod fleet;
pub mod images;
pub mod lifecycle;
pub mod matching;
pub mod metrics;
pub mod power;
pub mod profile;
pub mod provision;
pub mod record;
pub mod rules;
pub mod sites;
pub mod store;
pub use substruct_runtime::tls;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use substruct_runtime::backoff::Backoff;
use substruct_runtime::serve::Requests;
use substruct_wire::subjects;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use store::Store;

/// How long a stopping controller waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// Why the controller could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cannot bind the REST API to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid NATS URL {url:?}")]
    NatsUrl {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot subscribe to requests")]
    Subscribe(#[from] substruct_runtime::serve::SubscribeError),
    #[error("cannot subscribe to site events")]
    SubscribeEvents(#[source] async_nats::SubscribeError),
    #[error("cannot serve HTTPS on the REST API")]
    Tls(#[from] tls::TlsError),
    #[error("REST API server failed")]
    Serve(#[source] std::io::Error),
    #[error("cancelled before the controller was ready")]
    Cancelled,
}

/// A running controller. Dropping it does not stop it: cancel the token given to
/// [`Controller::start`], then [`Controller::wait`].
#[derive(Debug)]
pub struct Controller {
    api_addr: SocketAddr,
    store: Store,
    tracker: TaskTracker,
    api_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Controller {
    /// Binds `config.listen` and starts (see [`Controller::start_with_listener`]).
    pub async fn start(config: Config, cancel: CancellationToken) -> Result<Self, ControllerError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ControllerError::Bind {
                addr: config.listen,
                source,
            })?;
        Box::pin(Self::start_with_listener(config, listener, cancel)).await
    }

    /// Connects to NATS (retrying until it answers or `cancel`), makes the buckets
    /// and stream ready, subscribes to discover requests and serves the REST API
    /// on `listener`. Returns once all of that is up.
    pub async fn start_with_listener(
        config: Config,
        listener: tokio::net::TcpListener,
        cancel: CancellationToken,
    ) -> Result<Self, ControllerError> {
        let api_addr = listener
            .local_addr()
            .map_err(|source| ControllerError::Bind {
                addr: config.listen,
                source,
            })?;
        // Before NATS: a bad certificate fails at once, not after the connect loop.
        let tls = config
            .tls
            .as_ref()
            .map(|paths| tls::server_config(paths, tls::Clients::Modern))
            .transpose()?;
        if tls.is_none() && !api_addr.ip().is_loopback() {
            tracing::warn!(api = %api_addr, "the REST API is plain HTTP on a non-loopback address: tokens cross the network in clear text (set tls_cert and tls_key, or --tls-cert and --tls-key)");
        }
        if config.tokens.is_empty() {
            tracing::warn!("no API token configured (config `tokens` or SUBSTRUCT_TOKEN): every /api request is refused");
        }
        let mut options = substruct_runtime::nats_options("substruct-controller");
        if let Some(user) = &config.nats_user {
            options = options.user_and_password(
                user.clone(),
                config.nats_password.clone().unwrap_or_default(),
            );
        }
        let client = substruct_runtime::connect(options, &config.nats_url)
            .await
            .map_err(|source| ControllerError::NatsUrl {
                url: config.nats_url.to_string(),
                source,
            })?;
        // Boxed: the set-up futures are large in debug builds, and callers (tests)
        // often poll this one on a thread with a small stack.
        let store = Box::pin(open_store(client.clone(), &config.storage, &cancel)).await?;
        let discover_requests = Requests::subscribe(
            &client,
            subjects::discover_all(),
            subjects::CONTROLLER_QUEUE,
        )
        .await?;
        let callbacks = Requests::subscribe(
            &client,
            subjects::callback_all(),
            subjects::CONTROLLER_QUEUE,
        )
        .await?;
        let power_results = Requests::subscribe(
            &client,
            subjects::power_result_all(),
            subjects::CONTROLLER_QUEUE,
        )
        .await?;
        let site_events = client
            .queue_subscribe(subjects::event_all(), subjects::CONTROLLER_QUEUE.into())
            .await
            .map_err(ControllerError::SubscribeEvents)?;
        let provisioner = provision::Provisioner::new(store.clone(), client.clone());
        let tracker = TaskTracker::new();
        tracker.spawn(
            provisioner
                .rules_cache()
                .clone()
                .follow(store.clone(), cancel.clone()),
        );
        tracker.spawn(
            provisioner
                .fleet()
                .clone()
                .follow(store.clone(), cancel.clone()),
        );
        if let Err(e) = provisioner.catch_up_rules().await {
            tracing::warn!(error = %error_chain(&e), "cannot load the rules yet");
        }
        let config = Arc::new(config);
        tracker.spawn(discover::serve(
            client.clone(),
            discover_requests,
            discover::Inventory::new(store.clone()),
            provisioner.clone(),
            config.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        tracker.spawn(events::serve_callbacks(
            client.clone(),
            callbacks,
            provisioner.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        tracker.spawn(events::serve_site_events(
            site_events,
            store.clone(),
            config.clone(),
            cancel.clone(),
        ));
        tracker.spawn(events::maintain(provisioner.clone(), cancel.clone()));
        let power = power::PowerControl::new(provisioner.clone(), client.clone());
        tracker.spawn(power::serve_results(
            client.clone(),
            power_results,
            power.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        let tokens = Arc::new(config.tokens.clone());
        let client_for_metrics = client.clone();
        let fleet_for_metrics = provisioner.fleet().clone();
        let api_router = api::router(api::ApiState {
            store: store.clone(),
            provisioner,
            power,
            client,
            tokens: tokens.clone(),
            cancel: cancel.clone(),
            followers: Arc::new(tokio::sync::Semaphore::new(api::MAX_FOLLOWERS)),
        });
        let metrics_router = axum::Router::new()
            .route("/metrics", axum::routing::get(serve_metrics))
            .with_state((store.clone(), client_for_metrics, fleet_for_metrics));
        let router = api_router
            .clone()
            .merge(ui::router(api_router, tokens, tls.is_some()))
            .merge(metrics_router)
            .layer(axum::middleware::from_fn_with_state(
                store.clone(),
                count_request,
            ));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let api_task = match tls {
            Some(tls) => {
                let incoming =
                    tls::TlsIncoming::new(listener, tls, "REST API").map_err(|source| {
                        ControllerError::Bind {
                            addr: api_addr,
                            source,
                        }
                    })?;
                tokio::spawn(api::serve(incoming, router, cancel.clone()))
            }
            None => tokio::spawn(api::serve(listener, router, cancel.clone())),
        };
        tracing::info!(api = %format!("{scheme}://{api_addr}"), nats = %config.nats_url, "controller ready");
        Ok(Self {
            api_addr,
            store,
            tracker,
            api_task,
        })
    }

    /// Where the REST API listens.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The store this controller writes to (tests count keys with it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits for the controller to stop (after its token is cancelled), giving
    /// requests in flight a bounded time to finish.
    pub async fn wait(self) -> Result<(), ControllerError> {
        let served = self.api_task.await;
        self.tracker.close();
        if tokio::time::timeout(DRAIN, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("discover requests still in flight after {DRAIN:?}; leaving them");
        }
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ControllerError::Serve(e)),
            Err(e) => Err(ControllerError::Serve(std::io::Error::other(e))),
        }
    }
}

/// `GET /metrics`: this controller's counters and scrape-time values.
async fn serve_metrics(
    axum::extract::State((store, client, fleet)): axum::extract::State<(
        Store,
        async_nats::Client,
        fleet::Fleet,
    )>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let nats_connected = matches!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
    // Counts that hold every write made before the scrape (bounded: a slow store
    // gives the counts as they are).
    if let Err(e) = fleet.catch_up(&store, Duration::from_secs(2)).await {
        tracing::debug!(error = %error_chain(&e), "metrics: machine list not caught up");
    }
    let counts = fleet.page(&fleet::Query {
        limit: 1,
        ..fleet::Query::default()
    });
    let now = metrics::Snapshot {
        nats_connected,
        machines: counts
            .counts
            .state
            .into_iter()
            .map(|(state, n)| (state, n as u64))
            .collect(),
    };
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        store.metrics().encode(&now),
    )
        .into_response()
}

/// Counts every HTTP request by method and status class.
async fn count_request(
    axum::extract::State(store): axum::extract::State<Store>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    store
        .metrics()
        .request(method.as_str(), response.status().as_u16());
    response
}

/// Starts a controller and runs it until `cancel`.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), ControllerError> {
    Controller::start(config, cancel).await?.wait().await
}

async fn open_store(
    client: async_nats::Client,
    limits: &config::StorageLimits,
    cancel: &CancellationToken,
) -> Result<Store, ControllerError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let delay = match Store::open_limited(client.clone(), limits).await {
            Ok(store) => return Ok(store),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %error_chain(&e), retry_in = ?delay, "JetStream not ready");
                delay
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Err(ControllerError::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

pub use substruct_runtime::error_chain;

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
