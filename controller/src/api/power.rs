//! `/api/v1/machines/{ref}/power` and `/bmc`: power state and actions through the
//! machine's BMC, and the BMC settings (never the password).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use substruct_wire::power::{BootDevice, PowerAction};
use substruct_wire::power_msg::PowerOp;

use super::machines::{actor, MachineRef};
use super::openapi::{Forbidden, Unauthorized, Unavailable};
use super::{ApiError, ApiState, ErrorBody};
use crate::config::Role;
use crate::power::{BmcInput, PowerOutcome};
use crate::record::{BmcInfo, MachineRecord};

/// `GET …/power`: asks the BMC now (viewers may), records and returns the answer.
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}/power",
    operation_id = "power_status",
    tag = "power",
    summary = "Asks the machine's BMC for its power state",
    description = "Through the edge of the machine's site; viewers may. The answer is \
        recorded in the machine's record.",
    params(("id" = String, Path, description = "A machine id, SMBIOS UUID, serial or MAC")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = PowerOutcome, description = "The BMC's answer, or `pending` \
            when the edge did not answer in time"),
        (status = 401, response = Unauthorized),
        (status = 404, body = ErrorBody, description = "No such machine"),
        (status = 409, body = ErrorBody, description = "The machine has no BMC"),
        (status = 502, body = ErrorBody, description = "The BMC or the edge answered with an error"),
        (status = 503, body = ErrorBody, description = "No edge of the machine's site serves \
            power requests, or the store is unavailable"),
    )
)]
pub(super) async fn status(
    State(state): State<ApiState>,
    axum::Extension(role): axum::Extension<Role>,
    MachineRef(id): MachineRef,
) -> Result<Json<PowerOutcome>, ApiError> {
    let outcome = state
        .power
        .request(&id, PowerOp::Status, None, &actor(Some(role)))
        .await?;
    answer(outcome)
}

/// The body of `POST …/power`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ActBody {
    action: PowerAction,
    /// A one-time boot device for the next boot.
    #[serde(default)]
    next_boot: Option<BootDevice>,
}

/// `POST …/power {"action", "next_boot"}` (admin).
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/power",
    operation_id = "power_act",
    tag = "power",
    summary = "A power action through the machine's BMC",
    description = "`on`, `off`, `softoff` or `cycle`, optionally with a one-time boot \
        device for the next boot, through the edge of the machine's site.",
    params(("id" = String, Path, description = "A machine id, SMBIOS UUID, serial or MAC")),
    request_body = ActBody,
    security(("bearer" = [])),
    responses(
        (status = 200, body = PowerOutcome, description = "The BMC's answer, or `pending` \
            when the edge did not answer in time"),
        (status = 400, body = ErrorBody, description = "The body is not an `ActBody`"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, body = ErrorBody, description = "No such machine"),
        (status = 409, body = ErrorBody, description = "The machine has no BMC"),
        (status = 502, body = ErrorBody, description = "The BMC or the edge answered with an error"),
        (status = 503, body = ErrorBody, description = "No edge of the machine's site serves \
            power requests, or the store is unavailable"),
    )
)]
pub(super) async fn act(
    State(state): State<ApiState>,
    MachineRef(id): MachineRef,
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
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}/bmc",
    tag = "power",
    summary = "The machine's BMC settings",
    description = "Driver, address, user and `password_set`: never the password.",
    params(("id" = String, Path, description = "A machine id, SMBIOS UUID, serial or MAC")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = BmcInfo, description = "The BMC, without its password"),
        (status = 401, response = Unauthorized),
        (status = 404, body = ErrorBody, description = "No such machine, or it has no BMC"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn show_bmc(
    State(state): State<ApiState>,
    MachineRef(id): MachineRef,
) -> Result<Json<BmcInfo>, ApiError> {
    let (record, _) = state.provisioner.find(&id).await?;
    record.bmc.map(Json).ok_or_else(|| ApiError::Missing {
        what: "BMC of machine",
        name: record.id.to_string(),
    })
}

/// `PUT …/bmc {"driver", "address", "user", "password"}` (admin): the record, whose
/// `bmc` shows `password_set`, never the password.
#[utoipa::path(
    put,
    path = "/api/v1/machines/{id}/bmc",
    tag = "power",
    summary = "Sets the machine's BMC",
    description = "The password is stored for the site's edge and never shown back; the \
        answer is the machine's record, whose `bmc` shows `password_set`.",
    params(("id" = String, Path, description = "A machine id, SMBIOS UUID, serial or MAC")),
    request_body = BmcInput,
    security(("bearer" = [])),
    responses(
        (status = 200, body = MachineRecord, description = "The record after"),
        (status = 400, body = ErrorBody, description = "The body is not a `BmcInput`"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, body = ErrorBody, description = "No such machine"),
        (status = 422, body = ErrorBody, description = "A field is empty, too long or holds \
            spaces or control characters, or no address was given and none was reported"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn set_bmc(
    State(state): State<ApiState>,
    MachineRef(id): MachineRef,
    body: Result<Json<BmcInput>, JsonRejection>,
) -> Result<Json<MachineRecord>, ApiError> {
    let Json(body) = body?;
    Ok(Json(state.power.set_bmc(&id, body, &actor(None)).await?))
}
