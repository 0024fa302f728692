//! The edge's HTTP server (the only module that knows axum): iPXE boot scripts rendered
//! from the site's boot intents, iPXE loaders, and the image directory with range
//! requests.
//!
//! Routes:
//! * `GET /boot.ipxe?mac=&uuid=&buildarch=&platform=` — the machine's `#!ipxe` script;
//!   problems are answered with a script that retries, never a 4xx (iPXE would stop);
//!   a bare `/boot.ipxe` (no `mac`) chains at once to the URL with iPXE's identity.
//!   Only an asker [`binding`] ties to `mac` (the address leased to it, or in ProxyDHCP
//!   mode the neighbour table's entry) gets a boot token or its install intent; any other
//!   gets the prospector without a token (unknown or discover intent), a retry script
//!   (install intent: its command line names the install token) or the local-boot script;
//! * `GET /ipxe.lkrn`, `/ipxe.efi`, `/snponly.efi`, `/undionly.kpxe` — from the iPXE dir;
//! * `GET|HEAD /images/{*path}` — files under the images dir (Range, Content-Length), else
//!   from the image cache; an image still being fetched is answered (the registered
//!   Content-Length) as soon as its fetch has reached the object store, and streamed as
//!   it is written; a fetch that fails before (the WAN down, the object missing) or an
//!   image that cannot be had is `503` + `Retry-After: 5` naming the cause;
//! * `GET /install/{token}/{name}` — a rendered install file of the site's install table
//!   (see [`crate::install`]), every `{edge}` replaced by the edge's base URL; an unknown
//!   or expired token, an unknown name, a malformed path, or an asker not bound to one of
//!   the token's machine's MACs is `403` with one fixed body;
//!   each served file is reported to the controller (`Fetched`, in the background);
//! * `POST /api/v1/machines/{token}/done`, `POST /api/v1/machines/{token}/failed` (body:
//!   the reason, at most 4 KiB; bound like install files) — the installer's last step, forwarded to the controller
//!   and answered with its verdict (`200` JSON `{"machine_id","state"}`, `403`, `409`,
//!   `400`, or `503` + `Retry-After: 5` while it cannot be reached);
//! * `GET /`, `/healthz` — liveness;
//! * `GET /metrics` — the edge's Prometheus metrics (see [`crate::metrics`]), OpenMetrics
//!   text; counts only, no label a client chooses.
//!
//! Every connection is admitted and timed by [`limits::HttpLimits`] (see [`limits`]).
//! Every request is counted by kind of route and status class, those the sendfile front
//! answers too.
//!
//! Invariant: never opens a file outside its roots (see [`files`]); install files come
//! from memory only.

pub mod binding;
pub mod files;
pub mod grub;
pub mod limits;
pub mod renew;
pub mod script;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use rand::RngCore;
use substruct_wire::intent::BootIntent;
use substruct_wire::messages::{CallbackKind, ErrorCode};
use substruct_wire::{BootCredential, BootToken, ImageName, Mac, SiteId, SiteKey};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EdgeConfig;
use crate::image_cache::CachedImage;
use crate::install::{self, CallbackClient, CallbackError, InstallTable};
use crate::intents::IntentTable;
use crate::metrics::{HttpRoute, Metrics};
use binding::Binding;
use files::FileError;
use limits::HttpLimits;
use script::{
    render_boot_script, render_identify_script, render_retry_script, Platform, ScriptContext,
};

/// The iPXE loaders served over HTTP, by URL path and file name in the iPXE dir.
pub const LOADERS: [&str; 4] = ["ipxe.lkrn", "ipxe.efi", "snponly.efi", "undionly.kpxe"];

/// Why the HTTP server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("images directory {path}")]
    ImagesDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

/// What the HTTP server needs to know about the site.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `http://edge[:port]`: the base of URLs handed to clients.
    pub base: String,
    pub site: SiteId,
    /// NATS URL for prospectors.
    pub nats_url: String,
    /// `http://[ipv6]`: the base for askers that come over IPv6 on an IPv6-only site
    /// (`None`: IPv4 URLs for everyone).
    pub base6: Option<String>,
    /// NATS URL for prospectors whose script was asked for over IPv6.
    pub nats_url6: Option<String>,
    /// Whether prospectors booted over IPv6 bring their network up with IPv6 only
    /// (`substruct.net=ipv6`: an IPv6-only site has no DHCPv4 to wait for).
    pub ipv6_only: bool,
    pub extra_args: Option<String>,
    pub images_dir: PathBuf,
    pub ipxe_dir: PathBuf,
    /// Timeouts and connection caps.
    pub limits: HttpLimits,
}

impl HttpSettings {
    /// The base URL for `peer`: the IPv6 one for an IPv6 asker when the edge has one.
    pub fn base_for(&self, peer: IpAddr) -> &str {
        match (peer.to_canonical(), &self.base6) {
            (IpAddr::V6(_), Some(b)) => b,
            _ => &self.base,
        }
    }

    /// The prospector's NATS URL for `peer`, like [`HttpSettings::base_for`].
    pub fn nats_url_for(&self, peer: IpAddr) -> &str {
        match (peer.to_canonical(), &self.nats_url6) {
            (IpAddr::V6(_), Some(u)) => u,
            _ => &self.nats_url,
        }
    }

    pub fn from_config(config: &EdgeConfig) -> Self {
        Self {
            base: config.http_base(),
            site: config.site.clone(),
            nats_url: config.prospector_nats.to_string(),
            base6: config.http_base6(),
            nats_url6: config.prospector_nats6.as_ref().map(ToString::to_string),
            ipv6_only: config.ipv6_only(),
            extra_args: config.extra_kernel_args.clone(),
            images_dir: config.images_dir.clone(),
            ipxe_dir: config.ipxe_dir.clone(),
            limits: config.http,
        }
    }
}

/// Largest body of `POST /api/v1/machines/{token}/failed` (the reason text).
pub const MAX_CALLBACK_BODY: usize = 4096;

/// The body of every refused install-file or callback request: it reveals nothing.
const FORBIDDEN_BODY: &str = "forbidden\n";

#[derive(Debug, Clone)]
struct Inner {
    settings: HttpSettings,
    /// Canonical images root: every served path must start with it.
    images_root: PathBuf,
    intents: IntentTable,
    installs: InstallTable,
    /// `None`: no way to reach the controller (callbacks answer 503).
    callbacks: Option<CallbackClient>,
    /// Images registered at the controller, fetched on first use; `None`: only the
    /// images directory is served.
    cache: Option<crate::image_cache::ImageCache>,
    /// Which asker is which machine ([`Binding::Nobody`] until [`HttpState::with_binding`]).
    binding: Binding,
    /// The site's signing key: boot scripts carry a credential it signs for the MAC;
    /// `None`: an unsigned random token, which the controller does not accept as proof.
    site_key: Option<Arc<SiteKey>>,
    /// Where requests are counted and what `/metrics` serves.
    metrics: Arc<Metrics>,
}

/// Shared state of the HTTP handlers (cheap to clone).
#[derive(Debug, Clone)]
pub struct HttpState {
    inner: Arc<Inner>,
}

impl HttpState {
    /// Checks the images directory exists and fixes its canonical path.
    pub fn new(settings: HttpSettings, intents: IntentTable) -> Result<Self, HttpError> {
        let images_root =
            std::fs::canonicalize(&settings.images_dir).map_err(|source| HttpError::ImagesDir {
                path: settings.images_dir.clone(),
                source,
            })?;
        if !images_root.is_dir() {
            return Err(HttpError::ImagesDir {
                path: settings.images_dir.clone(),
                source: std::io::Error::other("not a directory"),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                images_root,
                intents,
                installs: InstallTable::new(),
                callbacks: None,
                cache: None,
                binding: Binding::Nobody,
                site_key: None,
                metrics: Arc::new(Metrics::new()),
            }),
        })
    }

    /// Serves install files from `installs` and forwards callbacks through `callbacks`.
    /// Without this, `/install/…` is always 403 and the callbacks always 503.
    pub fn with_install(self, installs: InstallTable, callbacks: CallbackClient) -> Self {
        let mut inner = (*self.inner).clone();
        inner.installs = installs;
        inner.callbacks = Some(callbacks);
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl HttpState {
    /// Decides with `binding` whether an asker is the machine it names. Without this no
    /// asker is: no boot token, install file or callback is ever given out.
    pub fn with_binding(self, binding: Binding) -> Self {
        let mut inner = (*self.inner).clone();
        inner.binding = binding;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Whether `peer` is bound to one of the MACs of the machine `token` was issued to
    /// (the install table names the machine, the intent table its MACs).
    fn bound_to_token(&self, peer: IpAddr, token: &BootToken) -> bool {
        let Some(machine) = self.inner.installs.with(token, |r| r.machine_id.clone()) else {
            return false;
        };
        let macs: Vec<Mac> = self
            .inner
            .intents
            .snapshot()
            .into_iter()
            .filter(|(_, r)| r.machine_id.as_ref() == Some(&machine))
            .map(|(mac, _)| mac)
            .collect();
        self.inner.binding.holds_any(peer, &macs)
    }
}

impl HttpState {
    /// Signs every boot script's credential with the site's key (a [`substruct_wire::BootCredential`] per MAC).
    pub fn with_site_key(self, key: Arc<SiteKey>) -> Self {
        let mut inner = (*self.inner).clone();
        inner.site_key = Some(key);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Counts requests into `metrics` and serves them at `/metrics` (without this, into
    /// metrics of the state's own).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        let mut inner = (*self.inner).clone();
        inner.metrics = metrics;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The metrics requests are counted into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Serves images missing from the images directory from `cache` (fetched from
    /// the controller's object store on first use, verified, LRU under a cap).
    pub fn with_cache(self, cache: crate::image_cache::ImageCache) -> Self {
        let mut inner = (*self.inner).clone();
        inner.cache = Some(cache);
        Self {
            inner: Arc::new(inner),
        }
    }
}

/// The router, for tests and for [`serve`].
pub fn router(state: HttpState) -> Router {
    let mut r = Router::new()
        .route("/", get(health))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/boot.ipxe", get(boot_ipxe))
        .route(renew::PATH, get(renew::renew_credential))
        .route("/images/{*path}", get(image))
        .route("/install/{*path}", get(install_file))
        .route(
            "/api/v1/machines/{token}/done",
            post(machine_done).layer(DefaultBodyLimit::max(MAX_CALLBACK_BODY)),
        )
        .route(
            "/api/v1/machines/{token}/failed",
            post(machine_failed).layer(DefaultBodyLimit::max(MAX_CALLBACK_BODY)),
        );
    for name in LOADERS {
        r = r.route(
            &format!("/{name}"),
            get(move |state, method, headers| loader(state, method, headers, name)),
        );
    }
    let counted = axum::middleware::from_fn_with_state(state.inner.metrics.clone(), count);
    r.layer(counted).with_state(state)
}

/// The kind of route `path` names, for the metrics (never the path itself).
pub fn route_kind(path: &str) -> HttpRoute {
    match path {
        "/boot.ipxe" => HttpRoute::BootScript,
        renew::PATH => HttpRoute::Renew,
        "/metrics" => HttpRoute::Metrics,
        "/" | "/healthz" => HttpRoute::Health,
        p if p.starts_with("/images/") => HttpRoute::Image,
        p if p.starts_with("/install/") => HttpRoute::Install,
        p if p.starts_with("/api/v1/machines/") => HttpRoute::Callback,
        p if LOADERS.iter().any(|l| p.strip_prefix('/') == Some(l)) => HttpRoute::Loader,
        _ => HttpRoute::Other,
    }
}

/// Counts every request axum answers by route kind and status class, and the image
/// bytes of successful `GET`s as their bodies stream out.
async fn count(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = route_kind(request.uri().path());
    let get = request.method() == Method::GET;
    let response = next.run(request).await;
    metrics.http.request(route, response.status().as_u16());
    if route != HttpRoute::Image || !get || !response.status().is_success() {
        return response;
    }
    use futures::TryStreamExt as _;
    let sent = metrics.http.image_bytes_counter();
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map_ok(move |chunk| {
        sent.inc_by(chunk.len() as u64);
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(body))
}

/// `GET /metrics`: the exposition, or 500 if it cannot be written.
async fn metrics(State(state): State<HttpState>) -> Response {
    match state.inner.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %files::error_chain(&e), "cannot encode the metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

/// Serves until `cancel`; in-flight requests finish (the caller bounds the drain).
/// Connections come through the sendfile front (which admits them against the
/// connection caps) and are served by hyper with the header timeout; `ConnectInfo` is
/// the peer's address.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    cancel: CancellationToken,
) -> Result<(), HttpError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP listening");
    }
    // Whole files and single ranges under /images/ from the images directory go out
    // with sendfile(2) (0.64x nginx's CPU per GB, README figures); everything else,
    // and every request the front does not take, is axum's.
    let limits = state.inner.settings.limits;
    let front = files::SendfileListener::new_with_metrics(
        listener,
        "/images/",
        &state.inner.images_root,
        "application/octet-stream",
        limits,
        state.inner.metrics.clone(),
    )
    .map_err(HttpError::Serve)?;
    serve_connections(front, router(state), limits, cancel).await;
    Ok(())
}

/// Serves the same routes over HTTPS on `listener` with `tls` until `cancel`, for UEFI
/// HTTPS boot. No sendfile here (the bytes are encrypted in user space) and no
/// per-source connection caps: handshakes are bounded by [`TlsIncoming`]'s own limits
/// (at most 256 at once, 10 s each), requests by the header timeout.
///
/// [`TlsIncoming`]: substruct_runtime::tls::TlsIncoming
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: HttpState,
    cancel: CancellationToken,
) -> Result<(), HttpError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTPS listening");
    }
    let limits = state.inner.settings.limits;
    let incoming = substruct_runtime::tls::TlsIncoming::new(listener, tls, "edge HTTPS")
        .map_err(HttpError::Serve)?;
    serve_connections(incoming, router(state), limits, cancel).await;
    Ok(())
}

/// The connection loop both servers share: hyper HTTP/1.1 with the header timeout,
/// `ConnectInfo` set to the peer; in-flight requests finish after `cancel`.
async fn serve_connections<L>(
    mut front: L,
    app: Router,
    limits: limits::HttpLimits,
    cancel: CancellationToken,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            conn = front.accept() => conn,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut app = app.clone();
                // A Router is always ready.
                tower_service::Service::call(&mut app, req.map(axum::body::Body::new))
            },
        );
        let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let cancel = cancel.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                },
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended");
                    }
                }
            }
        });
    }
    // No new connections; in-flight requests finish.
    drop(front);
    connections.close();
    connections.wait().await;
}

async fn health(State(state): State<HttpState>) -> String {
    format!("ok {}\n", state.inner.settings.site)
}

/// The credential for one boot of `mac`: claims signed by the site's key, valid for
/// [`DEFAULT_LIFETIME_SECS`](substruct_wire::credential::DEFAULT_LIFETIME_SECS), and the
/// boot user key's seed (`SU…`) that lets the prospector log in to the leaf node with it;
/// without a key, 32 lowercase hex characters (proves nothing) and no seed. Randomness
/// from the OS-seeded thread RNG.
fn new_token(
    key: Option<&SiteKey>,
    site: &SiteId,
    mac: Mac,
) -> Result<(BootCredential, Option<String>), substruct_wire::CredentialError> {
    let mut rng = rand::thread_rng();
    match key {
        Some(key) => {
            let mut boot_seed = [0u8; 32];
            rng.fill_bytes(&mut boot_seed);
            let credential = BootCredential::issue(
                key,
                site,
                mac,
                crate::site_key::unix_now(),
                substruct_wire::credential::DEFAULT_LIFETIME_SECS,
                boot_seed,
            )?;
            let seed = substruct_wire::credential::boot_user_seed(boot_seed)?;
            Ok((credential, Some(seed)))
        }
        None => {
            let mut bytes = [0u8; 16];
            rng.fill_bytes(&mut bytes);
            let token =
                BootCredential::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())?;
            Ok((token, None))
        }
    }
}

/// What a boot script or GRUB config is rendered from ([`HttpState::prepare_boot`]).
pub(crate) enum Prepared {
    Ready {
        intent: Option<BootIntent>,
        ctx: Box<ScriptContext>,
        /// Whether the asker holds the MAC's address (only then does `ctx` carry a token).
        bound: bool,
    },
    /// Nothing may be rendered for this asker: tell it this and let it ask again.
    Retry(&'static str),
}

impl HttpState {
    /// The intent and context for `mac`'s boot file as asked by `peer`: a boot
    /// credential only for the asker bound to `mac`, and no install intent to anyone else
    /// (its command line names the install token).
    pub(crate) fn prepare_boot(&self, peer: IpAddr, mac: Mac, platform: Platform) -> Prepared {
        let s = &self.inner.settings;
        let intent = self.inner.intents.get(&mac).map(|r| r.intent);
        let bound = self.inner.binding.holds(peer, &mac);
        let (token, login_seed) = if bound {
            match new_token(self.inner.site_key.as_deref(), &s.site, mac) {
                Ok((t, seed)) => (Some(t), seed),
                Err(e) => {
                    tracing::error!(error = %e, "boot: cannot make a boot token");
                    return Prepared::Retry(
                        "substruct: the edge could not make a boot token; retrying",
                    );
                }
            }
        } else if matches!(intent, Some(BootIntent::Install { .. })) {
            tracing::warn!(%peer, %mac, "boot: asker is not the address bound to this MAC; \
                install script withheld, asking it to retry");
            return Prepared::Retry(
                "substruct: this address is not the one leased to this MAC; retrying",
            );
        } else {
            tracing::warn!(%peer, %mac, "boot: asker is not the address bound to this MAC; \
                script without a boot token");
            (None, None)
        };
        let over_v6 = peer.to_canonical().is_ipv6() && s.base6.is_some() && s.ipv6_only;
        let extra_args = match (&s.extra_args, over_v6) {
            (Some(a), true) => Some(format!("substruct.net=ipv6 {a}")),
            (None, true) => Some("substruct.net=ipv6".to_owned()),
            (a, false) => a.clone(),
        };
        let ctx = Box::new(ScriptContext {
            base: s.base_for(peer).to_owned(),
            site: s.site.clone(),
            nats_url: s.nats_url_for(peer).to_owned(),
            token,
            login_seed,
            mac,
            platform,
            extra_args,
        });
        Prepared::Ready { intent, ctx, bound }
    }
}

/// The intent's name in the edge's logs.
pub(crate) fn intent_kind(intent: Option<&BootIntent>) -> &'static str {
    match intent {
        None => "unknown",
        Some(BootIntent::Discover) => "discover",
        Some(BootIntent::Install { .. }) => "install",
        Some(BootIntent::Local { .. }) => "local",
    }
}

fn script_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn boot_ipxe(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let s = &state.inner.settings;
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "boot.ipxe: unreadable query; asking the client to retry");
            return script_response(render_retry_script(
                s.base_for(peer.ip()),
                "substruct: the boot request's query was unreadable; retrying",
            ));
        }
    };
    let Some(raw_mac) = query.get("mac").map(String::as_str) else {
        tracing::debug!(%peer, "boot.ipxe without mac: asking iPXE to identify itself");
        return script_response(render_identify_script(s.base_for(peer.ip())));
    };
    let mac = match Mac::parse(raw_mac.trim()) {
        Ok(m) if m.is_usable() => m,
        _ => {
            tracing::warn!(%peer, mac = raw_mac, "boot.ipxe: missing or invalid mac; asking the client to retry");
            return script_response(render_retry_script(
                s.base_for(peer.ip()),
                "substruct: the boot request carried no valid MAC address; retrying",
            ));
        }
    };
    let platform = Platform::from_ipxe(query.get("platform").map(String::as_str));
    let arch = query
        .get("buildarch")
        .or_else(|| query.get("arch"))
        .map(String::as_str)
        .unwrap_or("");
    let uuid = query.get("uuid").map(String::as_str).unwrap_or("");
    let (intent, ctx, bound) = match state.prepare_boot(peer.ip(), mac, platform) {
        Prepared::Ready { intent, ctx, bound } => (intent, ctx, bound),
        Prepared::Retry(message) => {
            return script_response(render_retry_script(s.base_for(peer.ip()), message))
        }
    };
    let intent = intent.as_ref();
    let kind = intent_kind(intent);
    tracing::info!(%peer, %mac, uuid, arch, ?platform, intent = kind, bound, "boot.ipxe");
    script_response(render_boot_script(intent, &ctx))
}

async fn loader(
    State(state): State<HttpState>,
    method: Method,
    headers: HeaderMap,
    name: &'static str,
) -> Response {
    let path = state.inner.settings.ipxe_dir.join(name);
    tracing::debug!(loader = name, "loader request");
    respond(files::serve_file(&path, &method, &headers, "application/octet-stream").await)
}

async fn image(
    State(state): State<HttpState>,
    method: Method,
    headers: HeaderMap,
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Ok(axum::extract::Path(path)) = path else {
        return (StatusCode::BAD_REQUEST, "bad path\n").into_response();
    };
    match serve_image(&state.inner.images_root, &path, &method, &headers).await {
        Err(FileError::NotFound) => match &state.inner.cache {
            Some(cache) => serve_cached(cache, &path, &method, &headers).await,
            None => FileError::NotFound.into_response(),
        },
        other => respond(other),
    }
}

/// An image from the cache: registered at the controller, verified before serving, or
/// followed while it is fetched (the response ends short if the fetch fails or does not
/// match: see [`crate::image_cache::Follow`]). A fetch that fails before it reaches the
/// object store is a `503` like any other cache failure, never a `200` cut short.
async fn serve_cached(
    cache: &crate::image_cache::ImageCache,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    // No registered image can have a name outside the rule.
    let Ok(name) = ImageName::parse(name) else {
        return FileError::NotFound.into_response();
    };
    match cache.open_image(&name).await {
        Ok(Some(CachedImage::Ready(path))) => {
            respond(files::serve_file(&path, method, headers, "application/octet-stream").await)
        }
        Ok(Some(CachedImage::Fetching(fetching))) => {
            tracing::info!(image = %name, sha256 = %fetching.sha256(), written = fetching.written(),
                size = fetching.size(), "image response follows the fetch in progress");
            respond(files::serve_fetching(
                fetching,
                method,
                headers,
                "application/octet-stream",
            ))
        }
        Ok(None) => FileError::NotFound.into_response(),
        Err(e) => {
            let message = substruct_runtime::error_chain(&e);
            tracing::warn!(image = %name, error = %message, "image not available from the cache");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                format!(
                    "image {:?} is not available at this site yet: {message}\n",
                    name.as_str()
                ),
            )
                .into_response()
        }
    }
}

async fn serve_image(
    root: &Path,
    request: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, FileError> {
    let real = files::resolve(root, request).await?;
    tracing::debug!(path = %real.display(), "image request");
    files::serve_file(&real, method, headers, "application/octet-stream").await
}

fn respond(result: Result<Response, FileError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        FORBIDDEN_BODY,
    )
        .into_response()
}

/// `/install/{token}/{name}` with a syntactically valid token and file name. The path is
/// taken as sent, not percent-decoded: neither part has a character that needs encoding,
/// so `%2f` can never become a separator.
fn parse_install_path(path: &str) -> Option<(BootToken, &str)> {
    let (token, name) = path.strip_prefix("/install/")?.split_once('/')?;
    let token = BootToken::new(token).ok()?;
    install::is_valid_file_name(name).then_some((token, name))
}

/// For the fuzz targets (`tests/fuzz`): [`parse_install_path`] on `path`.
#[doc(hidden)]
pub fn fuzz_parse_install_path(path: &str) -> Option<(BootToken, &str)> {
    parse_install_path(path)
}

async fn install_file(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: axum::http::Uri,
) -> Response {
    let Some((token, name)) = parse_install_path(uri.path()) else {
        tracing::warn!(%peer, "install file: malformed token or name; refused");
        return forbidden();
    };
    if !state.bound_to_token(peer.ip(), &token) {
        tracing::warn!(%peer, token = %install::short(&token), file = name,
            "install file: unknown token, or asker not bound to its machine; refused");
        return forbidden();
    }
    let Some(file) = state.inner.installs.file(&token, name) else {
        tracing::warn!(token = %install::short(&token), file = name,
            "install file: unknown or expired token, or unknown file; refused");
        return forbidden();
    };
    let content_type = HeaderValue::from_str(&file.content_type).unwrap_or_else(|_| {
        tracing::warn!(file = name, content_type = %file.content_type.escape_debug(),
            "install file: unusable content type; sending application/octet-stream");
        HeaderValue::from_static("application/octet-stream")
    });
    let body = install::substitute_edge(&file.body, state.inner.settings.base_for(peer.ip()));
    tracing::info!(token = %install::short(&token), file = name, bytes = body.len(), "install file served");
    if method == Method::GET {
        if let Some(callbacks) = &state.inner.callbacks {
            callbacks.fetched(&token, name);
        }
    }
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

async fn machine_done(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    token: Result<axum::extract::Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    machine_callback(state, peer, token, body, false).await
}

async fn machine_failed(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    token: Result<axum::extract::Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    machine_callback(state, peer, token, body, true).await
}

/// Forwards an installer's `done` / `failed` to the controller and maps its answer.
async fn machine_callback(
    state: HttpState,
    peer: SocketAddr,
    token: Result<axum::extract::Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
    failed: bool,
) -> Response {
    let what = if failed { "failed" } else { "done" };
    let Some(token) = token
        .ok()
        .and_then(|axum::extract::Path(t)| BootToken::new(t).ok())
    else {
        tracing::warn!(
            callback = what,
            "machine callback: malformed token; refused"
        );
        return forbidden();
    };
    if !state.bound_to_token(peer.ip(), &token) {
        tracing::warn!(%peer, callback = what, token = %install::short(&token),
            "machine callback: unknown token, or asker not bound to its machine; refused");
        return forbidden();
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(callback = what, error = %e, "machine callback: unreadable body");
            return (e.status(), format!("{}\n", e.body_text())).into_response();
        }
    };
    let kind = if failed {
        let reason = String::from_utf8_lossy(&body).trim().to_owned();
        CallbackKind::Failed {
            reason: if reason.is_empty() {
                "the installer reported a failure without a reason".to_owned()
            } else {
                reason
            },
        }
    } else {
        CallbackKind::Done
    };
    let result = match &state.inner.callbacks {
        Some(c) => c.request(&token, kind, install::CALLBACK_TIMEOUT).await,
        None => Err(CallbackError::NoNats),
    };
    let short = install::short(&token);
    match result {
        Ok(reply) => {
            tracing::info!(callback = what, token = %short, machine = %reply.machine_id,
                state = %reply.state, "machine callback accepted");
            axum::Json(serde_json::json!({
                "machine_id": reply.machine_id.as_str(),
                "state": reply.state,
            }))
            .into_response()
        }
        Err(e) => {
            tracing::warn!(callback = what, token = %short, error = %files::error_chain(&e),
                "machine callback not accepted");
            callback_error_response(&e)
        }
    }
}

/// The one mapping of callback failures to HTTP answers.
fn callback_error_response(e: &CallbackError) -> Response {
    let text = |code: StatusCode, msg: String| {
        (
            code,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            msg,
        )
            .into_response()
    };
    let unavailable = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::RETRY_AFTER, "5"),
            ],
            "the controller cannot be reached; retry\n",
        )
            .into_response()
    };
    match e {
        CallbackError::Refused(reply) => {
            let message = || format!("{}\n", reply.message.escape_debug());
            match reply.code {
                ErrorCode::Forbidden => forbidden(),
                ErrorCode::IllegalTransition => text(StatusCode::CONFLICT, message()),
                ErrorCode::Malformed => text(StatusCode::BAD_REQUEST, message()),
                ErrorCode::TooLarge => text(StatusCode::PAYLOAD_TOO_LARGE, message()),
                ErrorCode::Unavailable => unavailable(),
                ErrorCode::WrongSite | ErrorCode::UnsupportedVersion => text(
                    StatusCode::BAD_GATEWAY,
                    "the controller does not accept this edge's callbacks\n".to_owned(),
                ),
            }
        }
        CallbackError::BadReply(_) => text(
            StatusCode::BAD_GATEWAY,
            "the controller's answer was unreadable\n".to_owned(),
        ),
        CallbackError::Encode(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error\n".to_owned(),
        ),
        // No NATS, not connected, no responders, timed out.
        _ => unavailable(),
    }
}
