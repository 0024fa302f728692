//! The REST API, and the only code in the controller that knows axum.
//!
//! * `GET /healthz` — unauthenticated; 200 when NATS is connected, else 503;
//! * `GET /api/v1/machines` — every machine record (JSON list, sorted by id);
//! * `GET /api/v1/machines/{id}` — one record, 404 naming the id when absent.
//!
//! * `POST /api/v1/machines/{ref}/assign` `{"profile": NAME}`, `…/release`
//!   `{"wipe": null|"quick"|"discard"}`, `…/reinstall`, `…/retire` — `ref` is a machine
//!   id, SMBIOS UUID, serial or MAC;
//! * `GET|PUT|DELETE /api/v1/profiles[/{name}]` — PUT validates (the template must
//!   render against a sample machine, or the error names the line);
//! * `GET|PUT|DELETE /api/v1/rules[/{name}]`, `POST /api/v1/rules/dry-run`;
//! * `GET|POST /api/v1/images` — registered images (name, kind, sha256, size), with
//!   whether the content is stored and which sites' edges cache it;
//! * `PUT /api/v1/images/content/{sha256}` — the content (streamed into the object
//!   store `images`; refused when its sha256 differs);
//! * `GET /api/v1/sites`, `PUT /api/v1/sites/{name}` — sites and their edges' state.
//!
//! `/api/` requires `Authorization: Bearer <token>`: GET needs role viewer, every
//! other method role admin. Errors are JSON `{"error": "..."}`, mapped to status
//! codes in one place ([`ApiError`]).

use std::sync::Arc;

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method as HttpMethod, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use substruct_wire::messages::WipeMode;
use substruct_wire::{MachineId, SiteId};
use tokio_util::sync::CancellationToken;

use crate::config::{ApiToken, Role};
use crate::images::{ImageKind, ImageRecord};
use crate::profile::Profile;
use crate::provision::{ProvisionError, Provisioner};
use crate::record::MachineRecord;
use crate::rules::Rule;
use crate::sites::{EdgeStatus, LocalBoot, SiteRecord, SiteView};
use crate::store::{Docs, Store, StoreError, Write};

/// Everything a handler may need.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Store,
    pub provisioner: Provisioner,
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
    #[error("the store is unavailable")]
    Store(#[from] StoreError),
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
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
                ProvisionError::Contention(_) | ProvisionError::Store(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
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
        .route("/api/v1/machines/{id}/assign", post(assign))
        .route("/api/v1/machines/{id}/release", post(release))
        .route("/api/v1/machines/{id}/reinstall", post(reinstall))
        .route("/api/v1/machines/{id}/retire", post(retire))
        .route("/api/v1/profiles", get(list_profiles))
        .route(
            "/api/v1/profiles/{name}",
            get(show_profile).put(put_profile).delete(delete_profile),
        )
        .route("/api/v1/rules", get(list_rules))
        .route("/api/v1/rules/dry-run", post(dry_run))
        .route(
            "/api/v1/rules/{name}",
            get(show_rule).put(put_rule).delete(delete_rule),
        )
        .route("/api/v1/images", get(list_images).post(add_image))
        .route(
            "/api/v1/images/content/{sha256}",
            axum::routing::put(upload_image),
        )
        .route("/api/v1/sites", get(list_sites))
        .route("/api/v1/sites/{name}", axum::routing::put(put_site))
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

/// A machine record as the API shows it: a viewer never sees the install token
/// (with it one could fetch the install files, which hold secrets, or call back).
fn machine_view(record: &MachineRecord, role: Role) -> serde_json::Value {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    if role < Role::Admin {
        if let Some(fields) = value.as_object_mut() {
            fields.remove("ticket");
        }
    }
    value
}

async fn list_machines(
    State(state): State<ApiState>,
    axum::Extension(role): axum::Extension<Role>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    Ok(Json(
        state
            .store
            .list_machines()
            .await?
            .iter()
            .map(|m| machine_view(m, role))
            .collect(),
    ))
}

async fn show_machine(
    State(state): State<ApiState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match state.provisioner.find(&id).await {
        Ok((record, _)) => Ok(Json(machine_view(&record, role))),
        Err(ProvisionError::UnknownMachine(_)) => Err(ApiError::NotFound(id)),
        Err(e) => Err(e.into()),
    }
}

/// Who asked, for the audit log.
fn actor(role: Option<Role>) -> String {
    format!("api ({})", role.unwrap_or(Role::Admin))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    profile: String,
}

async fn assign(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<AssignBody>, JsonRejection>,
) -> Result<Json<MachineRecord>, ApiError> {
    let Json(body) = body?;
    Ok(Json(
        state
            .provisioner
            .assign(&id, &body.profile, &actor(None))
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    #[serde(default)]
    wipe: Option<String>,
}

/// `quick` or `discard` (or none).
pub fn parse_wipe(value: Option<&str>) -> Result<Option<WipeMode>, String> {
    match value {
        None | Some("none") => Ok(None),
        Some("quick") => Ok(Some(WipeMode::Quick)),
        Some("discard") | Some("full") => Ok(Some(WipeMode::Discard)),
        Some(other) => Err(format!(
            "unknown wipe mode {other:?} (expected none, quick or discard)"
        )),
    }
}

async fn release(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Option<Json<ReleaseBody>>,
) -> Result<Json<MachineRecord>, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let wipe = parse_wipe(body.wipe.as_deref()).map_err(ApiError::BadRequest)?;
    Ok(Json(
        state.provisioner.release(&id, wipe, &actor(None)).await?,
    ))
}

async fn reinstall(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<MachineRecord>, ApiError> {
    Ok(Json(state.provisioner.reinstall(&id, &actor(None)).await?))
}

async fn retire(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<MachineRecord>, ApiError> {
    Ok(Json(state.provisioner.retire(&id, &actor(None)).await?))
}

async fn images_by_name(store: &Store) -> Result<BTreeMap<String, ImageRecord>, StoreError> {
    Ok(store
        .doc_list::<ImageRecord>(Docs::Images)
        .await?
        .into_iter()
        .collect())
}

async fn list_profiles(State(state): State<ApiState>) -> Result<Json<Vec<Profile>>, ApiError> {
    Ok(Json(
        state
            .store
            .doc_list::<Profile>(Docs::Profiles)
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect(),
    ))
}

/// A profile or rule name from a URL: one that no document can have is simply not
/// found (and never reaches the store as a key).
fn stored_name(what: &'static str, name: String) -> Result<String, ApiError> {
    match substruct_wire::ResourceName::parse(&name) {
        Ok(_) => Ok(name),
        Err(_) => Err(ApiError::Missing { what, name }),
    }
}

async fn show_profile(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Profile>, ApiError> {
    let name = stored_name("profile", name)?;
    state
        .store
        .doc_get::<Profile>(Docs::Profiles, &name)
        .await?
        .map(|(p, _)| Json(p))
        .ok_or(ApiError::Missing {
            what: "profile",
            name,
        })
}

async fn put_profile(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<Profile>, JsonRejection>,
) -> Result<(StatusCode, Json<Profile>), ApiError> {
    let Json(profile) = body?;
    same_name("profile", &name, &profile.name)?;
    let images = images_by_name(&state.store).await?;
    profile
        .validate(&|n: &str| images.get(n).cloned())
        .map_err(|e| ApiError::Invalid(format!("profile {name:?}: {}", crate::error_chain(&e))))?;
    let status = save(&state.store, Docs::Profiles, &name, &profile).await?;
    tracing::info!(profile = %name, "profile saved");
    Ok((status, Json(profile)))
}

/// The name in the URL and the one in the body must agree.
fn same_name(what: &str, url: &str, body: &str) -> Result<(), ApiError> {
    if url == body {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "the URL names {what} {url:?}, the body {body:?}"
        )))
    }
}

/// Creates or replaces a named document: 201 when it is new, 200 when replaced.
async fn save<T: Serialize>(
    store: &Store,
    docs: Docs,
    name: &str,
    doc: &T,
) -> Result<StatusCode, ApiError> {
    match store.doc_put(docs, name, doc, Some(0)).await? {
        Write::Done(_) => Ok(StatusCode::CREATED),
        Write::Lost => {
            store.doc_put(docs, name, doc, None).await?;
            Ok(StatusCode::OK)
        }
    }
}

async fn delete_profile(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = stored_name("profile", name)?;
    let users: Vec<String> = state
        .store
        .list_machines()
        .await?
        .into_iter()
        .filter(|m| m.state.profile() == Some(name.as_str()))
        .map(|m| m.id.to_string())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "profile {name:?} is in use by {} machine(s): {}",
            users.len(),
            users.join(", ")
        )));
    }
    if state.store.doc_delete(Docs::Profiles, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Missing {
            what: "profile",
            name,
        })
    }
}

async fn list_rules(State(state): State<ApiState>) -> Result<Json<Vec<Rule>>, ApiError> {
    let mut rules: Vec<Rule> = state
        .store
        .doc_list::<Rule>(Docs::Rules)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    rules.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    Ok(Json(rules))
}

async fn show_rule(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Rule>, ApiError> {
    let name = stored_name("rule", name)?;
    state
        .store
        .doc_get::<Rule>(Docs::Rules, &name)
        .await?
        .map(|(r, _)| Json(r))
        .ok_or(ApiError::Missing { what: "rule", name })
}

async fn check_rule(state: &ApiState, rule: &Rule) -> Result<(), ApiError> {
    rule.validate().map_err(|e| {
        ApiError::Invalid(format!("rule {:?}: {}", rule.name, crate::error_chain(&e)))
    })?;
    if state
        .store
        .doc_get::<Profile>(Docs::Profiles, &rule.profile)
        .await?
        .is_none()
    {
        return Err(ApiError::Invalid(format!(
            "rule {:?} names profile {:?}, which does not exist",
            rule.name, rule.profile
        )));
    }
    Ok(())
}

async fn put_rule(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<Rule>, JsonRejection>,
) -> Result<(StatusCode, Json<Rule>), ApiError> {
    let Json(rule) = body?;
    same_name("rule", &name, &rule.name)?;
    check_rule(&state, &rule).await?;
    let status = save(&state.store, Docs::Rules, &name, &rule).await?;
    if let Err(e) = state.provisioner.catch_up_rules().await {
        tracing::warn!(error = %crate::error_chain(&e), "the rules watch has not seen the change yet");
    }
    tracing::info!(rule = %name, profile = %rule.profile, "rule saved");
    Ok((status, Json(rule)))
}

async fn delete_rule(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = stored_name("rule", name)?;
    if state.store.doc_delete(Docs::Rules, &name).await? {
        if let Err(e) = state.provisioner.catch_up_rules().await {
            tracing::warn!(error = %crate::error_chain(&e), "the rules watch has not seen the change yet");
        }
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Missing { what: "rule", name })
    }
}

/// What a dry run answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct DryRun {
    pub rule: String,
    pub profile: String,
    /// The machines the rule would take now.
    pub machines: Vec<MachineId>,
}

async fn dry_run(
    State(state): State<ApiState>,
    body: Result<Json<Rule>, JsonRejection>,
) -> Result<Json<DryRun>, ApiError> {
    let Json(rule) = body?;
    check_rule(&state, &rule).await?;
    let rules: Vec<Rule> = state
        .store
        .doc_list::<Rule>(Docs::Rules)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let machines = state.store.list_machines().await?;
    Ok(Json(DryRun {
        machines: crate::rules::dry_run(&rules, &rule, &machines),
        rule: rule.name,
        profile: rule.profile,
    }))
}

/// One image as `GET /api/v1/images` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImageView {
    #[serde(flatten)]
    pub image: ImageRecord,
    /// The content is in the controller's object store (edges fetch it from there);
    /// false: edges must hold the file in their image directory.
    pub stored: bool,
    /// Sites whose edge cache holds it, verified.
    pub sites: Vec<String>,
}

async fn list_images(State(state): State<ApiState>) -> Result<Json<Vec<ImageView>>, ApiError> {
    let statuses = state.store.doc_list::<EdgeStatus>(Docs::SiteStatus).await?;
    let mut views = Vec::new();
    for image in images_by_name(&state.store).await?.into_values() {
        let stored = state
            .store
            .image_content_size(&image.sha256)
            .await?
            .is_some();
        let sites = statuses
            .iter()
            .filter(|(_, s)| s.cached.contains(&image.sha256))
            .map(|(name, _)| name.clone())
            .collect();
        views.push(ImageView {
            image,
            stored,
            sites,
        });
    }
    Ok(Json(views))
}

/// What an upload answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Uploaded {
    pub sha256: String,
    pub size: u64,
    /// False when the same content was already stored.
    pub created: bool,
}

async fn upload_image(
    State(state): State<ApiState>,
    Path(sha256): Path<String>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    use futures::StreamExt as _;
    use sha2::{Digest, Sha256};
    crate::images::validate_sha256(&sha256)
        .map_err(|e| ApiError::Invalid(crate::error_chain(&e)))?;
    if let Some(size) = state.store.image_content_size(&sha256).await? {
        return Ok((
            StatusCode::OK,
            Json(Uploaded {
                sha256,
                size,
                created: false,
            }),
        ));
    }
    let hasher = Arc::new(std::sync::Mutex::new(Sha256::new()));
    let seen = hasher.clone();
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(&chunk);
        Ok::<_, std::io::Error>(chunk)
    });
    let mut reader = tokio_util::io::StreamReader::new(stream);
    let size = state.store.put_image_content(&sha256, &mut reader).await?;
    let got = hex::encode(
        hasher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .finalize(),
    );
    if got != sha256 {
        state.store.delete_image_content(&sha256).await?;
        return Err(ApiError::Invalid(format!(
            "the uploaded content ({size} bytes) has sha256 {got}, not {sha256}; nothing stored"
        )));
    }
    tracing::info!(%sha256, size, "image content stored");
    Ok((
        StatusCode::CREATED,
        Json(Uploaded {
            sha256,
            size,
            created: true,
        }),
    ))
}

/// `POST /api/v1/images`: an image's metadata.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewImage {
    pub name: String,
    pub kind: ImageKind,
    pub sha256: String,
    pub size: u64,
}

async fn add_image(
    State(state): State<ApiState>,
    body: Result<Json<NewImage>, JsonRejection>,
) -> Result<(StatusCode, Json<ImageRecord>), ApiError> {
    let Json(new) = body?;
    crate::images::validate_image_name(&new.name)
        .map_err(|e| ApiError::Invalid(crate::error_chain(&e)))?;
    crate::images::validate_sha256(&new.sha256)
        .map_err(|e| ApiError::Invalid(crate::error_chain(&e)))?;
    let record = ImageRecord {
        name: new.name.clone(),
        kind: new.kind,
        sha256: new.sha256.to_ascii_lowercase(),
        size: new.size,
        added_unix_ms: crate::now_unix_ms(),
    };
    if let Some((old, _)) = state
        .store
        .doc_get::<ImageRecord>(Docs::Images, &new.name)
        .await?
    {
        if old.sha256 == record.sha256 && old.kind == record.kind && old.size == record.size {
            return Ok((StatusCode::OK, Json(old)));
        }
        return Err(ApiError::Conflict(format!(
            "image {:?} is already registered with another content (sha256 {}); images are immutable, use a new name",
            new.name, old.sha256
        )));
    }
    match state
        .store
        .doc_put(Docs::Images, &new.name, &record, Some(0))
        .await?
    {
        Write::Done(_) => {
            tracing::info!(image = %record.name, kind = %record.kind, size = record.size, "image registered");
            Ok((StatusCode::CREATED, Json(record)))
        }
        Write::Lost => Err(ApiError::Conflict(format!(
            "image {:?} was registered at the same time by someone else",
            new.name
        ))),
    }
}

async fn list_sites(State(state): State<ApiState>) -> Result<Json<Vec<SiteView>>, ApiError> {
    let records: BTreeMap<String, SiteRecord> = state
        .store
        .doc_list::<SiteRecord>(Docs::Sites)
        .await?
        .into_iter()
        .collect();
    let statuses: BTreeMap<String, EdgeStatus> = state
        .store
        .doc_list::<EdgeStatus>(Docs::SiteStatus)
        .await?
        .into_iter()
        .collect();
    let now = crate::now_unix_ms();
    let mut names: Vec<&String> = records.keys().chain(statuses.keys()).collect();
    names.sort();
    names.dedup();
    let views = names
        .into_iter()
        .filter_map(|n| SiteId::new(n.as_str()).ok())
        .map(|id| {
            let key = id.as_str().to_owned();
            SiteView::new(id, records.get(&key), statuses.get(&key), now)
        })
        .collect();
    Ok(Json(views))
}

/// `PUT /api/v1/sites/{name}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteBody {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub local_boot: Option<LocalBoot>,
}

async fn put_site(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<SiteBody>, JsonRejection>,
) -> Result<(StatusCode, Json<SiteRecord>), ApiError> {
    let Json(body) = body?;
    let site = SiteId::new(name.as_str())
        .map_err(|e| ApiError::Invalid(format!("site name {name:?}: {e}")))?;
    let old = state
        .store
        .doc_get::<SiteRecord>(Docs::Sites, &name)
        .await?
        .map(|(r, _)| r);
    let record = SiteRecord {
        name: site,
        description: body
            .description
            .or_else(|| old.as_ref().and_then(|o| o.description.clone())),
        local_boot: body
            .local_boot
            .or(old.as_ref().map(|o| o.local_boot))
            .unwrap_or_default(),
        added_unix_ms: old
            .as_ref()
            .map_or_else(crate::now_unix_ms, |o| o.added_unix_ms),
    };
    state
        .store
        .doc_put(Docs::Sites, &name, &record, None)
        .await?;
    // Deployed machines there boot locally the site's way.
    let machines = state.store.list_machines().await?;
    for m in machines.iter().filter(|m| m.site.as_str() == name) {
        state.provisioner.sync(m).await?;
    }
    let status = if old.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(record)))
}
