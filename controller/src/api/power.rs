//! `/api/v1/machines/{ref}/power` and `/bmc`: power state and actions through the
//! machine's BMC, and the BMC settings (never the password).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use substruct_wire::power::{BootDevice, PowerAction};
use substruct_wire::power_msg::PowerOp;

use super::machines::actor;
use super::{ApiError, ApiState};
use crate::config::Role;
use crate::power::{BmcInput, PowerOutcome};
use crate::record::{BmcInfo, MachineRecord};

/// `GET …/power`: asks the BMC now (viewers may), records and returns the answer.
pub(super) async fn status(
    State(state): State<ApiState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(id): Path<String>,
) -> Result<Json<PowerOutcome>, ApiError> {
    let outcome = state
        .power
        .request(&id, PowerOp::Status, None, &actor(Some(role)))
        .await?;
    answer(outcome)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActBody {
    action: PowerAction,
    #[serde(default)]
    next_boot: Option<BootDevice>,
}

/// `POST …/power {"action", "next_boot"}` (admin).
pub(super) async fn act(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<ActBody>, JsonRejection>,
) -> Result<Json<PowerOutcome>, ApiError> {
    let Json(body) = body?;
    let outcome = state
        .power
        .request(&id, PowerOp::Act(body.action), body.next_boot, &actor(None))
        .await?;
    answer(outcome)
}

/// A result with an error is a 502 naming it: the BMC, not the request, failed.
fn answer(outcome: PowerOutcome) -> Result<Json<PowerOutcome>, ApiError> {
    match &outcome.power_error {
        Some(e) => Err(ApiError::Bmc(format!(
            "{} of machine {} failed: {e}",
            outcome.op, outcome.machine_id
        ))),
        None => Ok(Json(outcome)),
    }
}

/// `GET …/bmc`: the BMC's driver, address, user and `password_set`.
pub(super) async fn show_bmc(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<BmcInfo>, ApiError> {
    let (record, _) = state.provisioner.find(&id).await?;
    record.bmc.map(Json).ok_or_else(|| ApiError::Missing {
        what: "BMC of machine",
        name: record.id.to_string(),
    })
}

/// `PUT …/bmc {"driver", "address", "user", "password"}` (admin): the record, whose
/// `bmc` shows `password_set`, never the password.
pub(super) async fn set_bmc(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<BmcInput>, JsonRejection>,
) -> Result<Json<MachineRecord>, ApiError> {
    let Json(body) = body?;
    Ok(Json(state.power.set_bmc(&id, body, &actor(None)).await?))
}
