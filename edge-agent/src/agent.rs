//! The whole edge agent in one call: binds DHCP, TFTP and HTTP, starts router
//! advertisements, the boot-intent and install-file watchers, the "file fetched"
//! callback queue, the image cache and the heartbeat, each as a task in one
//! [`TaskTracker`] under one [`CancellationToken`], and drains them (bounded) on shutdown.
//! One [`Metrics`] is shared by the servers and the cache and served at `/metrics`.
//!
//! [`bind`] does everything that can fail at start-up, with errors naming what failed
//! ("binding TFTP on 10.77.0.1:69"); [`Bound::run`] serves until cancelled. A server
//! task that fails later stops the agent and its error is returned.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use substruct_wire::messages::{SiteEvent, SiteEventKind};
use substruct_wire::{subjects, ImageName, Sha256Digest};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EdgeConfig;
use crate::dhcp;
use crate::http::files::error_chain;
use crate::http::script::render_pxelinux_default;
use crate::http::{self, HttpSettings, HttpState};
use crate::image_cache::{CacheSettings, CacheTask, ImageCache};
use crate::install::{self, CallbackClient, FetchedQueue, InstallCache, InstallTable};
use crate::intents::{self, IntentCache, IntentTable, WatchSettings};
use crate::metrics::Metrics;
use crate::ra;
use crate::tftp::{self, TftpFiles};

/// How long shutdown waits for tasks to finish before giving up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval of the `SiteEvent::Heartbeat` publications.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Why the agent could not start, or which part of it stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("creating state directory {path}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding HTTP on {addr}")]
    BindHttp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTPS certificate")]
    HttpsCertificate(#[source] substruct_runtime::tls::TlsError),
    #[error("binding TFTP on {addr}")]
    BindTftp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding DHCP on {interface}:{port}")]
    BindDhcp {
        interface: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the DHCP lease database")]
    Leases(#[source] dhcp::LeaseStoreError),
    #[error("the DHCP server stopped")]
    Dhcp(#[source] dhcp::DhcpError),
    #[error("starting HTTP")]
    HttpSetup(#[source] http::HttpError),
    #[error("loading the site key")]
    SiteKey(#[source] crate::site_key::SiteKeyFileError),
    #[error("opening the image cache")]
    ImageCache(#[source] crate::image_cache::CacheError),
    #[error("cannot make the edge's NATS login")]
    NatsLogin(#[source] crate::site_key::EdgeLoginError),
    #[error("connecting to NATS at {url}")]
    Nats {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("the HTTP server stopped")]
    Http(#[source] http::HttpError),
    #[error("the TFTP server stopped")]
    Tftp(#[source] tftp::TftpError),
    #[error("reading the provisioning interface for DHCPv6")]
    Interface(#[source] ra::RaError),
}

/// What the edge serves over IPv6 (`--ipv6-address` with `--dhcp6-pool`).
#[derive(Debug)]
struct V6 {
    settings: Arc<crate::dhcp6::Dhcp6Settings>,
    dhcp: UdpSocket,
    tftp: Option<UdpSocket>,
    http: TcpListener,
    /// HTTPS on the IPv6 address, when the edge serves HTTPS.
    https: Option<TcpListener>,
}

/// The agent with every socket bound, ready to [`run`](Bound::run).
#[derive(Debug)]
pub struct Bound {
    config: EdgeConfig,
    http_listener: TcpListener,
    https: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    http_state: HttpState,
    tftp: Option<(UdpSocket, TftpFiles, tftp::TftpSettings)>,
    dhcp: (Arc<dhcp::DhcpSettings>, Vec<UdpSocket>, dhcp::LeaseStore),
    v6: Option<V6>,
    intents: IntentTable,
    cache: IntentCache,
    installs: InstallTable,
    install_cache: InstallCache,
    fetched_queue: FetchedQueue,
    image_cache: ImageCache,
    cache_task: CacheTask,
    nats: Option<async_nats::Client>,
    bmcs: (crate::power::BmcTable, crate::power::BmcCache),
    metrics: Arc<Metrics>,
}

/// `state_dir/install.json`: the disk copy of the site's install files (mode 0600).
pub fn install_cache_path(config: &EdgeConfig) -> std::path::PathBuf {
    config.state_dir.join("install.json")
}

/// Binds everything and loads the intent and install caches. Nothing is served yet.
pub async fn bind(config: EdgeConfig) -> Result<Bound, AgentError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;

    let cache = IntentCache::new(config.intent_cache_path(), config.site.clone());
    let intents = match cache.load() {
        Ok(t) => {
            tracing::info!(path = %cache.path.display(), intents = t.len(), "loaded the intent cache");
            t
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "intent cache unusable; starting with no intents");
            IntentTable::new()
        }
    };
    let install_cache = InstallCache::new(install_cache_path(&config), config.site.clone());
    let installs = match install_cache.load() {
        Ok(t) => {
            tracing::info!(path = %install_cache.path.display(), tokens = t.len(), "loaded the install cache");
            t
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "install cache unusable; starting with no install files");
            InstallTable::new()
        }
    };

    let metrics = Arc::new(Metrics::new());
    metrics.watch_intents(intents.clone());

    let ip = IpAddr::V4(config.server_ip());
    let http_addr = SocketAddr::new(ip, config.http_port);
    let http_listener =
        TcpListener::bind(http_addr)
            .await
            .map_err(|source| AgentError::BindHttp {
                addr: http_addr,
                source,
            })?;
    // Before NATS: a bad certificate or a taken port fails at once.
    let https = match &config.https {
        Some(h) => {
            let tls = substruct_runtime::tls::server_config(
                &h.tls,
                substruct_runtime::tls::Clients::Firmware,
            )
            .map_err(AgentError::HttpsCertificate)?;
            if !substruct_runtime::tls::has_rsa_key(&h.tls).map_err(AgentError::HttpsCertificate)? {
                tracing::warn!(cert = %h.tls.cert.display(),
                    "the HTTPS certificate's key is not RSA: UEFI firmware (EDK2's TLS has no elliptic curves) cannot use it, so UEFI HTTPS boot will fail; use an RSA key");
            }
            let addr = SocketAddr::new(ip, h.port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::BindHttp { addr, source })?;
            Some((listener, tls))
        }
        None => None,
    };
    let mut http_state = HttpState::new(HttpSettings::from_config(&config), intents.clone())
        .map_err(AgentError::HttpSetup)?;
    // The edge's NATS login: a user JWT it signs itself with the site key.
    let mut nats_login = None;
    match &config.site_key {
        Some(path) => {
            let key = crate::site_key::load(path).map_err(AgentError::SiteKey)?;
            tracing::info!(path = %path.display(), key = %key.public_key(), "boot credentials are signed with the site key");
            nats_login = Some(
                crate::site_key::edge_login(&key, &config.site).map_err(AgentError::NatsLogin)?,
            );
            http_state = http_state.with_site_key(Arc::new(key));
        }
        None => tracing::warn!(
            "no site key (--site-key): boot scripts carry unsigned tokens, so the controller \
             will not let reports update known machines unless the site allows unauthenticated reports, \
             and the edge connects to NATS anonymously (a development server only: the site's \
             leaf node refuses anonymous clients)"
        ),
    }

    let tftp = if config.tftp {
        let addr = SocketAddr::new(ip, 69);
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| AgentError::BindTftp { addr, source })?;
        let files = TftpFiles::debian_loaders(Vec::new());
        files.set_generated(
            "pxelinux.cfg/default",
            render_pxelinux_default(&config.http_base()),
        );
        Some((socket, files, config.tftp_limits.clone()))
    } else {
        None
    };

    let dhcp_settings = Arc::new(config.dhcp.clone());
    let leases = dhcp::LeaseStore::open(config.lease_db_path()).map_err(AgentError::Leases)?;
    // An IPv6-only site serves no DHCPv4 at all.
    let mut ports = if config.ipv6_only() { vec![] } else { vec![67] };
    if config.dhcp.mode == dhcp::DhcpMode::Proxy {
        ports.push(4011);
    }
    let mut dhcp_sockets = Vec::new();
    for port in ports {
        let bind_err = |source| AgentError::BindDhcp {
            interface: config.interface.clone(),
            port,
            source,
        };
        let std_socket =
            dhcp::bind_socket(&config.interface, Ipv4Addr::UNSPECIFIED, port).map_err(bind_err)?;
        dhcp_sockets.push(UdpSocket::from_std(std_socket).map_err(bind_err)?);
    }

    let v6 = match &config.dhcp6 {
        Some(s6) => Some(bind_v6(&config, s6).await?),
        None => None,
    };

    let nats = match &config.nats_url {
        Some(url) => {
            let options = substruct_runtime::nats_options_login(
                &format!("substruct-edge {}", config.site),
                nats_login.as_ref(),
            )
            .custom_inbox_prefix(subjects::site_inbox_prefix(&config.site));
            let client = substruct_runtime::connect(options, url)
                .await
                .map_err(|source| AgentError::Nats {
                    url: url.to_string(),
                    source,
                })?;
            metrics.watch_nats(client.clone());
            Some(client)
        }
        None => {
            tracing::warn!("no NATS URL: serving boot intents from the cache only");
            None
        }
    };
    let (callbacks, fetched_queue) =
        CallbackClient::new(config.site.clone(), nats.clone(), installs.clone());
    let (image_cache, cache_task) = ImageCache::open(
        CacheSettings::new(
            config.image_cache_dir(),
            config.image_cache_bytes,
            nats.clone(),
        )
        .with_min_free(config.image_cache_min_free_bytes)
        .with_js_domain(config.js_domain.clone())
        .with_metrics(metrics.clone()),
    )
    .map_err(AgentError::ImageCache)?;
    // Who may get a machine's boot credential, install files and callbacks: the address
    // this edge leased to its MAC, or in ProxyDHCP mode the neighbour table's word.
    let binding = match config.dhcp.mode {
        dhcp::DhcpMode::Proxy => {
            http::binding::Binding::Neighbours(http::binding::PROC_NET_ARP.into())
        }
        dhcp::DhcpMode::Server => match &config.dhcp6 {
            // The live OS on an IPv6-only site takes its address by SLAAC.
            Some(d6) if d6.ipv6_only => http::binding::Binding::LeasesSlaac {
                store: leases.clone(),
                link: d6.address,
            },
            _ => http::binding::Binding::Leases(leases.clone()),
        },
    };
    let http_state = http_state
        .with_install(installs.clone(), callbacks)
        .with_cache(image_cache.clone())
        .with_binding(binding)
        .with_metrics(metrics.clone());
    // The Secure Boot chain's GRUB reads its config and the images over TFTP.
    let tftp = tftp.map(|(socket, files, limits)| {
        let files = files
            .with_prefix_root("images", config.images_dir.clone())
            .with_rendered(Arc::new(http::grub::GrubConfigs::new(http_state.clone())));
        (socket, files, limits)
    });

    let bmcs = crate::power::load_table(&config);
    Ok(Bound {
        config,
        http_listener,
        https,
        http_state,
        tftp,
        dhcp: (dhcp_settings, dhcp_sockets, leases),
        v6,
        intents,
        cache,
        installs,
        install_cache,
        fetched_queue,
        image_cache,
        cache_task,
        nats,
        bmcs,
        metrics,
    })
}

/// Binds DHCPv6 on the interface, and TFTP (when on) and HTTP on the edge's IPv6
/// address, which must already be on the interface (and past duplicate address
/// detection, or the bind fails).
async fn bind_v6(config: &EdgeConfig, s6: &crate::dhcp6::Dhcp6Settings) -> Result<V6, AgentError> {
    let ifindex = ra::read_ifindex(&config.interface).map_err(AgentError::Interface)?;
    let mac = ra::read_mac(&config.interface).map_err(AgentError::Interface)?;
    let settings = Arc::new(s6.clone().with_server_mac(substruct_wire::Mac(mac)));
    let port = crate::dhcp6::SERVER_PORT;
    let bind_err = |source| AgentError::BindDhcp {
        interface: config.interface.clone(),
        port,
        source,
    };
    let dhcp = crate::dhcp6::bind_socket6(&config.interface, ifindex, port).map_err(bind_err)?;
    let dhcp = UdpSocket::from_std(dhcp).map_err(bind_err)?;
    let ip = IpAddr::V6(settings.address);
    let tftp = if config.tftp {
        let addr = SocketAddr::new(ip, 69);
        Some(
            UdpSocket::bind(addr)
                .await
                .map_err(|source| AgentError::BindTftp { addr, source })?,
        )
    } else {
        None
    };
    let addr = SocketAddr::new(ip, config.http_port);
    let http = TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::BindHttp { addr, source })?;
    let https = match &config.https {
        Some(h) => {
            let addr = SocketAddr::new(ip, h.port);
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::BindHttp { addr, source })?,
            )
        }
        None => None,
    };
    Ok(V6 {
        settings,
        dhcp,
        tftp,
        http,
        https,
    })
}

/// Binds and runs until `cancel`.
pub async fn run(config: EdgeConfig, cancel: CancellationToken) -> Result<(), AgentError> {
    bind(config).await?.run(cancel).await
}

impl Bound {
    /// Where HTTP actually listens (useful with port 0 in tests).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener.local_addr().ok()
    }

    /// The intent table the servers answer from.
    pub fn intents(&self) -> IntentTable {
        self.intents.clone()
    }

    /// The install-file table the HTTP server answers from.
    pub fn installs(&self) -> InstallTable {
        self.installs.clone()
    }

    /// The metrics every server counts into (served at `/metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves until `cancel` (or until a server fails), then drains for at most
    /// [`DRAIN_TIMEOUT`].
    pub async fn run(self, cancel: CancellationToken) -> Result<(), AgentError> {
        let inner = cancel.child_token();
        let tracker = TaskTracker::new();
        let (fail_tx, mut fail_rx) = mpsc::channel::<AgentError>(8);

        if let Some(v6) = self.v6 {
            let (c, tx) = (inner.clone(), fail_tx.clone());
            let (settings, intents, leases, metrics) = (
                v6.settings.clone(),
                self.intents.clone(),
                self.dhcp.2.clone(),
                self.metrics.clone(),
            );
            let socket = v6.dhcp;
            tracker.spawn(async move {
                if let Err(e) = crate::dhcp6::serve6_with_metrics(
                    settings,
                    socket,
                    intents,
                    leases,
                    metrics,
                    c.clone(),
                )
                .await
                {
                    let _ = tx.send(AgentError::Dhcp(e)).await;
                    c.cancel();
                }
            });
            let (c, tx, state) = (inner.clone(), fail_tx.clone(), self.http_state.clone());
            let listener = v6.http;
            tracker.spawn(async move {
                if let Err(e) = http::serve(listener, state, c.clone()).await {
                    let _ = tx.send(AgentError::Http(e)).await;
                    c.cancel();
                }
            });
            if let (Some(listener), Some((_, tls))) = (v6.https, self.https.as_ref()) {
                let (c, tx, state) = (inner.clone(), fail_tx.clone(), self.http_state.clone());
                let tls = tls.clone();
                tracker.spawn(async move {
                    if let Err(e) = http::serve_tls(listener, tls, state, c.clone()).await {
                        let _ = tx.send(AgentError::Http(e)).await;
                        c.cancel();
                    }
                });
            }
            if let (Some(socket), Some((_, files, settings))) = (v6.tftp, self.tftp.as_ref()) {
                let (c, tx) = (inner.clone(), fail_tx.clone());
                let (files, settings, metrics) =
                    (files.clone(), settings.clone(), self.metrics.clone());
                tracker.spawn(async move {
                    if let Err(e) =
                        tftp::serve_with_metrics(socket, files, settings, metrics, c.clone()).await
                    {
                        let _ = tx.send(AgentError::Tftp(e)).await;
                        c.cancel();
                    }
                });
            }
        }

        {
            let (c, tx) = (inner.clone(), fail_tx.clone());
            let (listener, state) = (self.http_listener, self.http_state);
            if let Some((listener, tls)) = self.https {
                let (c, tx, state) = (inner.clone(), fail_tx.clone(), state.clone());
                tracker.spawn(async move {
                    if let Err(e) = http::serve_tls(listener, tls, state, c.clone()).await {
                        let _ = tx.send(AgentError::Http(e)).await;
                        c.cancel();
                    }
                });
            }
            tracker.spawn(async move {
                if let Err(e) = http::serve(listener, state, c.clone()).await {
                    let _ = tx.send(AgentError::Http(e)).await;
                    c.cancel();
                }
            });
        }

        if let Some((socket, files, settings)) = self.tftp {
            let (c, tx) = (inner.clone(), fail_tx.clone());
            let metrics = self.metrics.clone();
            tracker.spawn(async move {
                if let Err(e) =
                    tftp::serve_with_metrics(socket, files, settings, metrics, c.clone()).await
                {
                    let _ = tx.send(AgentError::Tftp(e)).await;
                    c.cancel();
                }
            });
        }

        if !self.dhcp.1.is_empty() {
            let (c, tx) = (inner.clone(), fail_tx.clone());
            let (settings, sockets, leases) = self.dhcp;
            let (lease_tx, lease_rx) = mpsc::channel::<dhcp::LeaseEvent>(1024);
            let intents = self.intents.clone();
            let metrics = self.metrics.clone();
            tracker.spawn(async move {
                if let Err(e) = dhcp::serve_with_metrics(
                    settings,
                    sockets,
                    intents,
                    leases,
                    Some(lease_tx),
                    metrics,
                    c.clone(),
                )
                .await
                {
                    let _ = tx.send(AgentError::Dhcp(e)).await;
                    c.cancel();
                }
            });
            tracker.spawn(publish_leases(
                lease_rx,
                self.nats.clone(),
                self.config.site.clone(),
                inner.clone(),
            ));
        }

        {
            // Router advertisements only spare iPXE a ~15 s IPv6 wait: a failure is logged,
            // not fatal.
            let (c, interface) = (inner.clone(), self.config.interface.clone());
            // With DHCPv6, M=1: iPXE starts DHCPv6 only when an advertisement says so.
            // On an IPv6-only site the advertisements also carry the edge's /64 as an
            // autonomous prefix: the prospector's kernel takes its address from it (SLAAC).
            let ra_settings = ra::RaSettings {
                managed: self.config.dhcp6.is_some(),
                prefix: self
                    .config
                    .dhcp6
                    .as_ref()
                    .filter(|d| d.ipv6_only)
                    .and_then(|d| ipnet::Ipv6Net::new(d.address, 64).ok()),
                ..ra::RaSettings::default()
            };
            tracker.spawn(async move {
                if let Err(e) = ra::serve_with(&interface, ra_settings, c).await {
                    tracing::warn!(error = %error_chain(&e), "router advertisements are off");
                }
            });
        }

        tracker.spawn(self.fetched_queue.run(inner.clone()));
        tracker.spawn(self.cache_task.run(inner.clone()));

        if let Some(client) = self.nats {
            let settings = WatchSettings::new(self.config.site.clone(), self.cache.clone())
                .with_js_domain(self.config.js_domain.clone());
            tracker.spawn(intents::watch(
                client.clone(),
                settings,
                self.intents.clone(),
                inner.clone(),
            ));
            let settings =
                install::WatchSettings::new(self.config.site.clone(), self.install_cache.clone())
                    .with_js_domain(self.config.js_domain.clone());
            tracker.spawn(install::watch(
                client.clone(),
                settings,
                self.installs.clone(),
                inner.clone(),
            ));
            tracker.spawn(report_cache(
                client.clone(),
                self.config.site.clone(),
                self.image_cache.clone(),
                self.intents.clone(),
                self.config.images_dir.clone(),
                inner.clone(),
            ));
            crate::power::spawn(
                client.clone(),
                &self.config,
                self.bmcs,
                &tracker,
                inner.clone(),
            )
            .await;
            tracker.spawn(heartbeat(client, self.config.site.clone(), inner.clone()));
        }
        drop(fail_tx);

        tracing::info!(site = %self.config.site, interface = %self.config.interface,
            address = %self.config.address, "edge agent running");
        inner.cancelled().await;
        tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "some tasks did not stop in time; leaving them");
        }
        match fail_rx.try_recv() {
            Ok(e) => {
                tracing::error!(error = %error_chain(&e), "edge agent stopped on a failure");
                Err(e)
            }
            Err(_) => {
                tracing::info!("edge agent stopped");
                Ok(())
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Publishes one event on `substruct.v1.{site}.event` if NATS is connected (best effort:
/// the controller learns the same facts from later reports).
async fn publish_event(
    client: &async_nats::Client,
    site: &substruct_wire::SiteId,
    event: SiteEventKind,
) {
    if client.connection_state() != async_nats::connection::State::Connected {
        return;
    }
    let event = SiteEvent {
        site: site.clone(),
        at_unix_ms: unix_ms(),
        event,
    };
    match substruct_wire::encode(&event) {
        Ok(bytes) => {
            if let Err(e) = client.publish(subjects::event(site), bytes.into()).await {
                tracing::debug!(error = %e, "site event not published");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode a site event"),
    }
}

/// Forwards DHCP lease grants as `SiteEvent::Lease` (drained and dropped without NATS).
async fn publish_leases(
    mut leases: mpsc::Receiver<dhcp::LeaseEvent>,
    nats: Option<async_nats::Client>,
    site: substruct_wire::SiteId,
    cancel: CancellationToken,
) {
    loop {
        let lease = tokio::select! {
            _ = cancel.cancelled() => return,
            l = leases.recv() => l,
        };
        let Some(lease) = lease else { return };
        if let Some(client) = &nats {
            publish_event(
                client,
                &site,
                SiteEventKind::Lease {
                    mac: lease.mac,
                    ip: lease.ip.octets(),
                },
            )
            .await;
        }
    }
}

/// Verifies the image cache at start, prefetches the installers this site's intents
/// name, and reports the verified cache contents (`SiteEvent::Cache`) after each
/// change and every minute.
async fn report_cache(
    client: async_nats::Client,
    site: substruct_wire::SiteId,
    cache: ImageCache,
    intents: IntentTable,
    images_dir: std::path::PathBuf,
    cancel: CancellationToken,
) {
    let bad = cache.verify_all().await;
    if bad > 0 {
        tracing::warn!(
            removed = bad,
            "image cache files did not match their sha256"
        );
    }
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut contents = cache.subscribe();
    let mut last: Option<Vec<Sha256Digest>> = None;
    // Each name is tried once per run; a miss is fetched on first use anyway.
    let mut prefetched = std::collections::HashSet::new();
    loop {
        // Files the operator put in the images directory are served from there.
        let mut names = install_images(&intents);
        names.retain(|n| !images_dir.join(n.as_str()).is_file());
        names.retain(|n| !prefetched.contains(n));
        cache.prefetch(&names).await;
        prefetched.extend(names);
        let now = contents.borrow_and_update().verified.clone();
        if last.as_ref() != Some(&now) {
            publish_event(
                &client,
                &site,
                SiteEventKind::Cache {
                    sha256: now.to_vec(),
                },
            )
            .await;
            last = Some(now);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = contents.changed() => if changed.is_err() {
                return; // the cache has stopped
            },
            _ = tick.tick() => { last = None; }
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
    }
}

/// Kernels and initrds this site's install intents name (sorted, no duplicates; each
/// was checked as an [`ImageName`] when the intent decoded).
fn install_images(intents: &IntentTable) -> Vec<ImageName> {
    let mut names: Vec<ImageName> = intents
        .snapshot()
        .into_values()
        .filter_map(|r| match r.intent {
            substruct_wire::intent::BootIntent::Install { kernel, initrd, .. } => {
                Some([kernel, initrd])
            }
            _ => None,
        })
        .flatten()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Publishes `SiteEvent::Heartbeat` every [`HEARTBEAT_INTERVAL`] while NATS is connected.
async fn heartbeat(
    client: async_nats::Client,
    site: substruct_wire::SiteId,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        publish_event(
            &client,
            &site,
            SiteEventKind::Heartbeat {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        )
        .await;
    }
}
