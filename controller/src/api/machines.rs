//! `/api/v1/machines`: machine records and the operator's actions on them.

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use substruct_wire::messages::WipeMode;
use substruct_wire::MachineId;

use super::openapi::{Forbidden, MachineList, Unauthorized, Unavailable};
use super::{ApiError, ApiState, ErrorBody};
use crate::config::Role;
use crate::fleet::{Page, Query, DEFAULT_LIMIT};
use crate::provision::ProvisionError;
use crate::record::{MachineRecord, MachineView};
use crate::store::Store;

/// A machine record as the API shows it ([`MachineView`]: with `secure_boot` at the
/// top): a viewer never sees the install token (with it one could fetch the install
/// files, which hold secrets, or call back), a completed one, or the install files a
/// change still owes the edge.
pub(super) fn machine_view(record: &MachineRecord, role: Role) -> serde_json::Value {
    let mut value = serde_json::to_value(MachineView::from(record)).unwrap_or_default();
    if role < Role::Admin {
        if let Some(fields) = value.as_object_mut() {
            fields.remove("ticket");
            fields.remove("finished");
            fields.remove("owed");
        }
    }
    value
}

/// Records read from KV at once by an export or a `full` page.
const READ_AHEAD: usize = 64;

/// The query of `GET /api/v1/machines`. Any of them makes the answer a page.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only machines whose latest report came from this site.
    site: Option<String>,
    /// Only machines in this state: `discovered`, `assigned`, `installing`,
    /// `deployed`, `failed` or `retired`.
    state: Option<String>,
    /// Case-insensitive substring of the SMBIOS vendor.
    vendor: Option<String>,
    /// Case-insensitive substring of the id, serial, SMBIOS UUID, hostname or a MAC
    /// (at most 128 bytes).
    q: Option<String>,
    /// Machines per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Whole records in the page instead of summaries.
    full: Option<bool>,
}

impl ListParams {
    fn is_empty(&self) -> bool {
        matches!(
            self,
            Self {
                site: None,
                state: None,
                vendor: None,
                q: None,
                limit: None,
                cursor: None,
                full: None,
            }
        )
    }

    fn query(&self) -> Query {
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Query {
            site: nonempty(&self.site),
            state: nonempty(&self.state),
            vendor: nonempty(&self.vendor),
            q: nonempty(&self.q),
            limit: self.limit.unwrap_or(DEFAULT_LIMIT),
            cursor: nonempty(&self.cursor),
        }
    }
}

/// `GET /api/v1/machines`: without parameters every record (streamed, sorted by id,
/// `X-Total-Count` says how many), as since the first wave; with any of `site`,
/// `state`, `vendor`, `q`, `limit`, `cursor`, `full` a page (summaries, or records
/// with `full=true`) with `next_cursor`, the fleet's `total` and its `counts`.
/// Either way from this controller's machine list ([`crate::fleet::Fleet`]): no
/// scan of the bucket.
#[utoipa::path(
    get,
    path = "/api/v1/machines",
    tag = "machines",
    summary = "Every machine record, or a page of them",
    description = "Without parameters every record (a JSON list, sorted by id, streamed; \
        `X-Total-Count` says how many). With any of `site`, `state`, `vendor`, `q`, \
        `limit`, `cursor`, `full` a page: summaries (whole records with `full=true`), \
        `next_cursor` for the next page, the fleet's `total` and its `counts` per state \
        and per site.",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = MachineList,
            description = "Without parameters: every machine record, sorted by id (a JSON \
                list; `X-Total-Count` says how many). With any parameter: a page of \
                summaries, or of records with `full=true`.",
            headers(("X-Total-Count" = u64, description = "Records in the list (only \
                without parameters)"))),
        (status = 400, body = ErrorBody, description = "An unknown parameter, an unknown \
            state, a limit outside 1–1000 or a `q` longer than 128 bytes"),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn list_machines(
    State(state): State<ApiState>,
    axum::Extension(role): axum::Extension<Role>,
    params: Result<axum::extract::Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(params) = params.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let fleet = super::current_fleet(&state).await?;
    if params.is_empty() {
        let ids = fleet.ids(&Query::default());
        let total = ids.len();
        let mut response =
            Body::from_stream(export(state.store.clone(), ids, role)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        headers.insert("x-total-count", header::HeaderValue::from(total));
        return Ok(response);
    }
    let query = params.query();
    query
        .check()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let page = fleet.page(&query);
    if params.full != Some(true) {
        return Ok(Json(page).into_response());
    }
    let ids: Vec<MachineId> = page
        .machines
        .iter()
        .filter_map(|m| MachineId::new(m.id.as_str()).ok())
        .collect();
    let store = &state.store;
    let records: Vec<Option<(MachineRecord, u64)>> = futures::stream::iter(ids)
        .map(|id| async move { store.machine(&id).await })
        .buffered(READ_AHEAD)
        .try_collect()
        .await?;
    Ok(Json(Page {
        machines: records
            .iter()
            .flatten()
            .map(|(r, _)| machine_view(r, role))
            .collect(),
        next_cursor: page.next_cursor,
        total: page.total,
        counts: page.counts,
    })
    .into_response())
}

/// Every record of `ids`, in their order, as one JSON array, read `READ_AHEAD` at a
/// time: the controller holds a few records at once whatever the fleet's size. A
/// record gone meanwhile is left out; a read that fails ends the body early (the
/// client sees a truncated response, never a short but well-formed list).
fn export(
    store: Store,
    ids: Vec<std::sync::Arc<str>>,
    role: Role,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let records = futures::stream::iter(ids)
        .map(move |id| {
            let store = store.clone();
            async move {
                let Ok(id) = MachineId::new(&*id) else {
                    return Ok(None);
                };
                store.machine(&id).await.map(|found| found.map(|(r, _)| r))
            }
        })
        .buffered(READ_AHEAD)
        .try_filter_map(|r| async move { Ok(r) })
        .enumerate()
        .map(move |(i, record)| {
            let record = record.map_err(|e| {
                tracing::warn!(error = %crate::error_chain(&e), "machine export cut short");
                std::io::Error::other(e)
            })?;
            let mut bytes = if i == 0 { b"[".to_vec() } else { b",".to_vec() };
            // An admin sees the record as stored (with `secure_boot` at its top): no
            // detour through a JSON tree.
            if role >= Role::Admin {
                serde_json::to_writer(&mut bytes, &MachineView::from(&record))
            } else {
                serde_json::to_writer(&mut bytes, &machine_view(&record, role))
            }
            .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(bytes)
        });
    // `[` comes with the first record; an empty fleet gets `[]`.
    records
        .map(|chunk| chunk.map(Bytes::from))
        .chain(futures::stream::once(async move { Ok(Bytes::new()) }))
        .scan(false, |started, chunk| {
            let out = match chunk {
                Ok(b) if b.is_empty() => {
                    Ok(Bytes::from_static(if *started { b"]" } else { b"[]" }))
                }
                Ok(b) => {
                    *started = true;
                    Ok(b)
                }
                Err(e) => Err(e),
            };
            futures::future::ready(Some(out))
        })
}

/// One machine record, with `secure_boot` at its top (a viewer's copy has no `ticket`).
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}",
    tag = "machines",
    params(("id" = String, Path, description = "A machine id, SMBIOS UUID, serial or MAC")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = MachineView, description = "The record"),
        (status = 401, response = Unauthorized),
        (status = 404, body = ErrorBody, description = "No such machine"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn show_machine(
    State(state): State<ApiState>,
    axum::Extension(role): axum::Extension<Role>,
    MachineRef(id): MachineRef,
) -> Result<Json<serde_json::Value>, ApiError> {
    match state.provisioner.find(&id).await {
        Ok((record, _)) => Ok(Json(machine_view(&record, role))),
        Err(ProvisionError::UnknownMachine(_)) => Err(ApiError::NotFound(id)),
        Err(e) => Err(e.into()),
    }
}

/// The machine reference of a URL (`/api/v1/machines/{id}/…`): an id, SMBIOS UUID,
/// serial or MAC. One that is blank once trimmed names no machine and is not looked up
/// (it would make an empty index key, which the store refuses as unavailable).
#[derive(Debug)]
pub(super) struct MachineRef(pub String);

impl<S: Send + Sync> FromRequestParts<S> for MachineRef {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::BadRequest(r.body_text()))?;
        if id.trim().is_empty() {
            return Err(ApiError::NotFound(id));
        }
        Ok(Self(id))
    }
}

/// Who asked, for the audit log.
pub(super) fn actor(role: Option<Role>) -> String {
    format!("api ({})", role.unwrap_or(Role::Admin))
}

/// The body of `assign`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AssignBody {
    /// The profile's name.
    profile: String,
    /// Leave the machine's power alone (by default a machine with a BMC is set to PXE
    /// for its next boot and cycled).
    #[serde(default)]
    no_power: bool,
}

/// The body of `reinstall`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PowerBody {
    /// Leave the machine's power alone (by default a machine with a BMC is set to PXE
    /// for its next boot and cycled).
    #[serde(default)]
    no_power: bool,
}

/// After an admin action that needs the machine to PXE boot: unless `no_power`, a
/// machine with a BMC is set to PXE and cycled (in the background).
fn power_follow(state: &ApiState, record: &MachineRecord, no_power: bool) {
    if !no_power && state.power.cycle_to_pxe(record, &actor(None)) {
        tracing::info!(machine = %record.id, "PXE next boot and power cycle ordered");
    }
}

/// Ties a profile to the machine: it installs at its next network boot.
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/assign",
    tag = "machines",
    params(("id" = String, Path, description = "A machine id, SMBIOS UUID, serial or MAC")),
    request_body = AssignBody,
    security(("bearer" = [])),
    responses(
        (status = 200, body = MachineRecord, description = "The record after"),
        (status = 400, body = ErrorBody, description = "The body is not an `AssignBody`"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, body = ErrorBody, description = "No such machine or profile"),
        (status = 409, body = ErrorBody, description = "The machine's state does not allow it"),
        (status = 422, body = ErrorBody, description = "The profile names an image that is \
            not registered, or does not render for this machine"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn assign(
    State(state): State<ApiState>,
    MachineRef(id): MachineRef,
    body: Result<Json<AssignBody>, JsonRejection>,
) -> Result<Json<MachineRecord>, ApiError> {
    let Json(body) = body?;
    // A name no profile can have is not looked up (it is no valid store key either).
    if substruct_wire::ResourceName::parse(&body.profile).is_err() {
        return Err(ProvisionError::UnknownProfile(body.profile).into());
    }
    let record = state
        .provisioner
        .assign(&id, &body.profile, &actor(None))
        .await?;
    power_follow(&state, &record, body.no_power);
    Ok(Json(record))
}

/// The body of `release`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReleaseBody {
    /// Wipe the disks first: `quick` or `discard` (`none` or null: no wipe).
    #[serde(default)]
    wipe: Option<String>,
    /// Leave the machine's power alone (by default a machine with a BMC that is to be
    /// wiped is set to PXE for its next boot and cycled).
    #[serde(default)]
    no_power: bool,
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

/// Back to `discovered`, optionally wiping the disks first.
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/release",
    tag = "machines",
    params(("id" = String, Path, description = "A machine id, SMBIOS UUID, serial or MAC")),
    request_body(content = ReleaseBody, description = "Optional: without a body (or without \
        `Content-Type: application/json`) no wipe, and power as by default"),
    security(("bearer" = [])),
    responses(
        (status = 200, body = MachineRecord, description = "The record after"),
        (status = 400, body = ErrorBody, description = "The body is not a `ReleaseBody`, or \
            the wipe mode is unknown"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, body = ErrorBody, description = "No such machine"),
        (status = 409, body = ErrorBody, description = "The machine's state does not allow it"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn release(
    State(state): State<ApiState>,
    MachineRef(id): MachineRef,
    body: Result<Option<Json<ReleaseBody>>, JsonRejection>,
) -> Result<Json<MachineRecord>, ApiError> {
    let body = body?.map(|Json(b)| b).unwrap_or_default();
    let wipe = parse_wipe(body.wipe.as_deref()).map_err(ApiError::BadRequest)?;
    let record = state.provisioner.release(&id, wipe, &actor(None)).await?;
    // A wipe runs in the prospector: the machine must PXE boot.
    if wipe.is_some() {
        power_follow(&state, &record, body.no_power);
    }
    Ok(Json(record))
}

/// The same profile again, with a new install token.
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/reinstall",
    tag = "machines",
    params(("id" = String, Path, description = "A machine id, SMBIOS UUID, serial or MAC")),
    request_body(content = PowerBody, description = "Optional: without a body (or without \
        `Content-Type: application/json`) power as by default"),
    security(("bearer" = [])),
    responses(
        (status = 200, body = MachineRecord, description = "The record after"),
        (status = 400, body = ErrorBody, description = "The body is not a `PowerBody`"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, body = ErrorBody, description = "No such machine, or its profile is gone"),
        (status = 409, body = ErrorBody, description = "The machine's state does not allow it"),
        (status = 422, body = ErrorBody, description = "The profile does not render for this machine"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn reinstall(
    State(state): State<ApiState>,
    MachineRef(id): MachineRef,
    body: Result<Option<Json<PowerBody>>, JsonRejection>,
) -> Result<Json<MachineRecord>, ApiError> {
    let body = body?.map(|Json(b)| b).unwrap_or_default();
    let record = state.provisioner.reinstall(&id, &actor(None)).await?;
    power_follow(&state, &record, body.no_power);
    Ok(Json(record))
}

/// Out of service for good.
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/retire",
    tag = "machines",
    params(("id" = String, Path, description = "A machine id, SMBIOS UUID, serial or MAC")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = MachineRecord, description = "The record after"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, body = ErrorBody, description = "No such machine"),
        (status = 409, body = ErrorBody, description = "The machine's state does not allow it"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn retire(
    State(state): State<ApiState>,
    MachineRef(id): MachineRef,
) -> Result<Json<MachineRecord>, ApiError> {
    Ok(Json(state.provisioner.retire(&id, &actor(None)).await?))
}
