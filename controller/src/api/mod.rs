//! The REST API, and the only code in the controller that knows axum.
//!
//! * `GET /healthz` — unauthenticated; 200 when NATS is connected, else 503;
//! * `GET /api/v1/openapi.json` — unauthenticated; this API's OpenAPI 3.1 document
//!   ([`openapi_json`]), generated from the handlers' annotations;
//! * `GET /api/v1/machines` — every machine record (JSON list, sorted by id, streamed;
//!   `X-Total-Count`); with any of `site`, `state`, `vendor`, `q`, `limit` (1–1000,
//!   default 100), `cursor`, `full` a page `{"machines", "next_cursor", "total",
//!   "counts": {"state", "site"}}` of summaries (records with `full=true`), from the
//!   controller's in-memory machine list ([`crate::fleet`]);
//! * `GET /api/v1/machines/{id}` — one record, 404 naming the id when absent.
//!
//! * `POST /api/v1/machines/{ref}/assign` `{"profile": NAME}`, `…/release`
//!   `{"wipe": null|"quick"|"discard"}`, `…/reinstall`, `…/retire` — `ref` is a machine
//!   id, SMBIOS UUID, serial or MAC;
//! * `GET /api/v1/machines/{ref}/power` — asks the machine's BMC (through its site's
//!   edge) and records the answer; `POST …/power` `{"action": "on|off|softoff|cycle",
//!   "next_boot": null|"pxe"|"disk"}`; `GET|PUT /api/v1/machines/{ref}/bmc` — the BMC
//!   without its password / `{"driver", "address", "user", "password"}`. `assign`,
//!   `reinstall` and `release` take `"no_power": true` to leave power alone;
//! * `GET|PUT|DELETE /api/v1/profiles[/{name}]` — PUT validates (the template must
//!   render against a sample machine, or the error names the line);
//! * `GET|PUT|DELETE /api/v1/rules[/{name}]`, `POST /api/v1/rules/dry-run`;
//! * `GET|POST /api/v1/images` — registered images (name, kind, sha256, size), with
//!   whether the content is stored and which sites' edges cache it;
//! * `PUT /api/v1/images/content/{sha256}` — the content (streamed into the object
//!   store `images`; refused when its sha256 differs);
//! * `GET /api/v1/sites`, `PUT /api/v1/sites/{name}` — sites and their edges' state;
//! * `GET /api/v1/events` — the audit log: `{"events": [{"seq", "machine_id",
//!   "at_unix_ms", "revision", "kind"}], "last_seq"}`, filtered by `machine` (any
//!   reference) or `site`, the last `limit` (1–1000, default 100) or the first after
//!   `after`; `follow=true` keeps the answer open as server-sent events.
//!
//! `/api/` requires `Authorization: Bearer <token>`: GET needs role viewer, every
//! other method role admin. Errors are JSON `{"error": "..."}`, mapped to status
//! codes in one place ([`ApiError`]).
//!
//! The handlers, by noun: `machines`, `docs` (profiles and rules), `images`, `sites`,
//! `events`; `openapi` describes them all.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method as HttpMethod, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{ApiToken, Role};
use crate::provision::{ProvisionError, Provisioner};
use crate::store::{Store, StoreError};

mod docs;
mod events;
mod images;
mod machines;
mod openapi;
mod power;
mod sites;

pub use docs::{DryRun, REDACTED};
pub use images::{ImageView, NewImage, Uploaded};
pub use machines::parse_wipe;
pub use openapi::{openapi_json, ApiDoc};
pub use sites::SiteBody;

/// Events follow streams (`GET /api/v1/events?follow=true`, the UI's live pages) one
/// controller keeps open at once.
pub const MAX_FOLLOWERS: usize = 256;

/// Everything a handler may need.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Store,
    pub provisioner: Provisioner,
    pub power: crate::power::PowerControl,
    pub client: async_nats::Client,
    pub tokens: Arc<Vec<ApiToken>>,
    /// Cancelled at shutdown: ends long-lived answers (an events follow stream).
    pub cancel: CancellationToken,
    /// Follow streams open at once ([`MAX_FOLLOWERS`]): each holds a connection and a
    /// consumer on nats-server, so past the cap a new one is refused with 503.
    pub followers: Arc<tokio::sync::Semaphore>,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, with its causes.
    pub error: String,
}

/// Every way an API request fails; [`IntoResponse`] is the one status mapping.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing bearer token (send `Authorization: Bearer <token>`)")]
    MissingToken,
    #[error("unknown bearer token")]
    BadToken,
    #[error("this needs role {needed}, the token has role {has}")]
    Forbidden { needed: Role, has: Role },
    #[error("machine {0:?} not found")]
    NotFound(String),
    #[error("{what} {name:?} not found")]
    Missing { what: &'static str, name: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Power(#[from] crate::power::PowerError),
    /// The BMC answered with an error (after the edge's bounded retries).
    #[error("{0}")]
    Bmc(String),
    #[error("the store is unavailable")]
    Store(#[from] StoreError),
    /// Not answerable now (the machine list is loading); retry.
    #[error("{0}")]
    Unavailable(String),
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A provisioning error inside a power error maps as itself.
        let this = match self {
            Self::Power(crate::power::PowerError::Provision(e)) => Self::Provision(e),
            other => other,
        };
        let status = match &this {
            Self::MissingToken | Self::BadToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::Missing { .. } => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Provision(e) => match e {
                ProvisionError::UnknownMachine(_) | ProvisionError::UnknownProfile(_) => {
                    StatusCode::NOT_FOUND
                }
                ProvisionError::UnknownImage { .. } | ProvisionError::Render { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                ProvisionError::Illegal { .. } => StatusCode::CONFLICT,
                ProvisionError::TokenExpired => StatusCode::FORBIDDEN,
                ProvisionError::Contention(_)
                | ProvisionError::Backlog { .. }
                | ProvisionError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::Power(e) => {
                use crate::power::PowerError as P;
                match e {
                    // Unwrapped above.
                    P::Provision(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    P::NoBmc(_) => StatusCode::CONFLICT,
                    P::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    P::NoEdge(_) | P::Request { .. } | P::Contention(_) | P::Store(_) => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    P::Refused { .. } | P::BadReply(_) | P::WrongSite { .. } => {
                        StatusCode::BAD_GATEWAY
                    }
                }
            }
            Self::Bmc(_) => StatusCode::BAD_GATEWAY,
            Self::Store(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let message = crate::error_chain(&this);
        if status.is_server_error() {
            tracing::error!(error = %message, "API request failed");
        } else {
            tracing::debug!(error = %message, %status, "API request refused");
        }
        let mut response = (status, Json(ErrorBody { error: message })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The API's routes over `state`.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/v1/machines", get(machines::list_machines))
        .route("/api/v1/machines/{id}", get(machines::show_machine))
        .route("/api/v1/machines/{id}/assign", post(machines::assign))
        .route("/api/v1/machines/{id}/release", post(machines::release))
        .route("/api/v1/machines/{id}/reinstall", post(machines::reinstall))
        .route("/api/v1/machines/{id}/retire", post(machines::retire))
        .route(
            "/api/v1/machines/{id}/power",
            get(power::status).post(power::act),
        )
        .route(
            "/api/v1/machines/{id}/bmc",
            get(power::show_bmc).put(power::set_bmc),
        )
        .route("/api/v1/profiles", get(docs::list_profiles))
        .route(
            "/api/v1/profiles/{name}",
            get(docs::show_profile)
                .put(docs::put_profile)
                .delete(docs::delete_profile),
        )
        .route("/api/v1/rules", get(docs::list_rules))
        .route("/api/v1/rules/dry-run", post(docs::dry_run))
        .route(
            "/api/v1/rules/{name}",
            get(docs::show_rule)
                .put(docs::put_rule)
                .delete(docs::delete_rule),
        )
        .route(
            "/api/v1/images",
            get(images::list_images).post(images::add_image),
        )
        .route(
            "/api/v1/images/content/{sha256}",
            axum::routing::put(images::upload_image),
        )
        .route("/api/v1/events", get(events::list_events))
        .route("/api/v1/sites", get(sites::list_sites))
        .route("/api/v1/sites/{name}", axum::routing::put(sites::put_site))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(openapi_document))
        .merge(api)
        .with_state(state)
}

/// Serves `router` on a listener the caller bound (a `TcpListener`, or a
/// [`TlsIncoming`](crate::tls::TlsIncoming) for HTTPS), until `cancel`.
pub async fn serve<L>(listener: L, router: Router, cancel: CancellationToken) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

/// This controller's machine list, once it holds every write made before the call.
async fn current_fleet(state: &ApiState) -> Result<&crate::fleet::Fleet, ApiError> {
    let fleet = state.provisioner.fleet();
    fleet
        .catch_up(&state.store, FLEET_CATCH_UP)
        .await
        .map_err(|e| ApiError::Unavailable(crate::error_chain(&e)))?;
    Ok(fleet)
}

/// How long a request waits for this controller's machine list to hold every write
/// made before it (at start: to be loaded).
const FLEET_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(30);

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn role_of(tokens: &[ApiToken], headers: &HeaderMap) -> Result<Role, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::MissingToken)?;
    let presented = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(ApiError::MissingToken)?;
    tokens
        .iter()
        .filter(|t| same(t.token.as_bytes(), presented.as_bytes()))
        .map(|t| t.role)
        .max()
        .ok_or(ApiError::BadToken)
}

async fn authenticate(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let role = role_of(&state.tokens, request.headers())?;
    let mut request = request;
    request.extensions_mut().insert(role);
    let needed = if matches!(*request.method(), HttpMethod::GET | HttpMethod::HEAD) {
        Role::Viewer
    } else {
        Role::Admin
    };
    if role < needed {
        return Err(ApiError::Forbidden { needed, has: role });
    }
    Ok(next.run(request).await)
}

/// What `GET /healthz` answers.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    /// `connected` or `disconnected`.
    pub nats: String,
}

/// Whether the controller is connected to NATS.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    responses(
        (status = 200, description = "Connected to NATS", body = Health),
        (status = 503, description = "Not connected to NATS", body = Health),
    )
)]
async fn healthz(State(state): State<ApiState>) -> Response {
    let connected = matches!(
        state.client.connection_state(),
        async_nats::connection::State::Connected
    );
    let status = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if connected { "ok" } else { "degraded" }.to_owned(),
        nats: if connected {
            "connected"
        } else {
            "disconnected"
        }
        .to_owned(),
    };
    (status, Json(body)).into_response()
}

/// This API's OpenAPI 3.1 document (no token needed).
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "This document", body = Object, content_type = "application/json"),
    )
)]
async fn openapi_document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::openapi_json(),
    )
        .into_response()
}
