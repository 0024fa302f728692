//! `/api/v1/machines`: machine records and the operator's actions on them.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use substruct_wire::messages::WipeMode;

use super::{ApiError, ApiState};
use crate::config::Role;
use crate::provision::ProvisionError;
use crate::record::MachineRecord;

/// A machine record as the API shows it: a viewer never sees the install token
/// (with it one could fetch the install files, which hold secrets, or call back).
pub(super) fn machine_view(record: &MachineRecord, role: Role) -> serde_json::Value {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    if role < Role::Admin {
        if let Some(fields) = value.as_object_mut() {
            fields.remove("ticket");
        }
    }
    value
}

pub(super) async fn list_machines(
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

pub(super) async fn show_machine(
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
pub(super) fn actor(role: Option<Role>) -> String {
    format!("api ({})", role.unwrap_or(Role::Admin))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AssignBody {
    profile: String,
    /// Leave the machine's power alone (by default a machine with a BMC is set to PXE
    /// for its next boot and cycled).
    #[serde(default)]
    no_power: bool,
}

/// The body of `reinstall`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PowerBody {
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

pub(super) async fn assign(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<AssignBody>, JsonRejection>,
) -> Result<Json<MachineRecord>, ApiError> {
    let Json(body) = body?;
    let record = state
        .provisioner
        .assign(&id, &body.profile, &actor(None))
        .await?;
    power_follow(&state, &record, body.no_power);
    Ok(Json(record))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReleaseBody {
    #[serde(default)]
    wipe: Option<String>,
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

pub(super) async fn release(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Option<Json<ReleaseBody>>,
) -> Result<Json<MachineRecord>, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let wipe = parse_wipe(body.wipe.as_deref()).map_err(ApiError::BadRequest)?;
    let record = state.provisioner.release(&id, wipe, &actor(None)).await?;
    // A wipe runs in the prospector: the machine must PXE boot.
    if wipe.is_some() {
        power_follow(&state, &record, body.no_power);
    }
    Ok(Json(record))
}

pub(super) async fn reinstall(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Option<Json<PowerBody>>,
) -> Result<Json<MachineRecord>, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let record = state.provisioner.reinstall(&id, &actor(None)).await?;
    power_follow(&state, &record, body.no_power);
    Ok(Json(record))
}

pub(super) async fn retire(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<MachineRecord>, ApiError> {
    Ok(Json(state.provisioner.retire(&id, &actor(None)).await?))
}
