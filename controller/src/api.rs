//! The REST API, and the only code in the controller that knows axum.
//!
//! * `GET /healthz` — unauthenticated; 200 when NATS is connected, else 503;
//! * `GET /api/v1/machines` — every machine record (JSON list, sorted by id);
//! * `GET /api/v1/machines/{id}` — one record, 404 naming the id when absent.
//!
//! `/api/` requires `Authorization: Bearer <token>` (role viewer or admin); errors
//! are JSON `{"error": "..."}`, mapped to status codes in one place ([`ApiError`]).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use substruct_wire::MachineId;
use tokio_util::sync::CancellationToken;

use crate::config::{ApiToken, Role};
use crate::record::MachineRecord;
use crate::store::{Store, StoreError};

/// Everything a handler may need.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Store,
    pub client: async_nats::Client,
    pub tokens: Arc<Vec<ApiToken>>,
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
    #[error("the store is unavailable")]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::MissingToken | Self::BadToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let message = crate::error_chain(&self);
        if status.is_server_error() {
            tracing::error!(error = %message, "API request failed");
        } else {
            tracing::debug!(error = %message, %status, "API request refused");
        }
        let mut response = (status, Json(json!({ "error": message }))).into_response();
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
        .route("/api/v1/machines", get(list_machines))
        .route("/api/v1/machines/{id}", get(show_machine))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(api)
        .with_state(state)
}

/// Serves `router` on a listener the caller bound, until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

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
    // Every route so far only reads; writes will need Role::Admin.
    let needed = Role::Viewer;
    if role < needed {
        return Err(ApiError::Forbidden { needed, has: role });
    }
    Ok(next.run(request).await)
}

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
    let body = json!({
        "status": if connected { "ok" } else { "degraded" },
        "nats": if connected { "connected" } else { "disconnected" },
    });
    (status, Json(body)).into_response()
}

async fn list_machines(
    State(state): State<ApiState>,
) -> Result<Json<Vec<MachineRecord>>, ApiError> {
    Ok(Json(state.store.list_machines().await?))
}

async fn show_machine(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<MachineRecord>, ApiError> {
    let Ok(machine_id) = MachineId::new(id.as_str()) else {
        return Err(ApiError::NotFound(id));
    };
    match state.store.machine(&machine_id).await? {
        Some((record, _)) => Ok(Json(record)),
        None => Err(ApiError::NotFound(id)),
    }
}
