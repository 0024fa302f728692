//! `/api/v1/sites`: sites and their edges' state.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use substruct_wire::{SiteId, SitePublicKey};

use super::openapi::{Forbidden, Unauthorized, Unavailable};
use super::{ApiError, ApiState, ErrorBody};
use crate::sites::{EdgeStatus, LocalBoot, SiteRecord, SiteView};
use crate::store::Docs;

/// Every site, registered or with an edge that reports, sorted by name.
#[utoipa::path(
    get,
    path = "/api/v1/sites",
    tag = "sites",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<SiteView>, description = "The sites"),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn list_sites(
    State(state): State<ApiState>,
) -> Result<Json<Vec<SiteView>>, ApiError> {
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
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteBody {
    /// `None` keeps the registered one.
    #[serde(default)]
    pub description: Option<String>,
    /// `None` keeps the registered setting (default `ipxe-exit`).
    #[serde(default)]
    pub local_boot: Option<LocalBoot>,
    /// The site's public key (`A…`); `None` keeps the registered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SitePublicKey>,
    /// Whether reports without a valid boot credential may update known machines;
    /// `None` keeps the registered setting (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated: Option<bool>,
    /// Whether idle discovered machines are powered off; `None` keeps the setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_off_after_discovery: Option<bool>,
}

/// Registers a site or changes its settings (a field left out keeps its value).
#[utoipa::path(
    put,
    path = "/api/v1/sites/{name}",
    tag = "sites",
    params(("name" = String, Path, description = "The site's name: lowercase letters, digits \
        and '-', at most 32 characters")),
    request_body = SiteBody,
    security(("bearer" = [])),
    responses(
        (status = 200, body = SiteRecord, description = "Changed"),
        (status = 201, body = SiteRecord, description = "Registered"),
        (status = 400, body = ErrorBody, description = "The body is not a `SiteBody`"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, body = ErrorBody, description = "The site name is malformed or reserved"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn put_site(
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
        key: body
            .key
            .or_else(|| old.as_ref().and_then(|o| o.key.clone())),
        allow_unauthenticated: body
            .allow_unauthenticated
            .or(old.as_ref().map(|o| o.allow_unauthenticated))
            .unwrap_or(false),
        power_off_after_discovery: body
            .power_off_after_discovery
            .or(old.as_ref().map(|o| o.power_off_after_discovery))
            .unwrap_or(false),
    };
    state
        .store
        .doc_put(Docs::Sites, &name, &record, None)
        .await?;
    state.provisioner.site_changed(&name);
    // Deployed machines there boot locally the site's way.
    let at_site = super::current_fleet(&state)
        .await?
        .select(&crate::fleet::Query {
            site: Some(name.clone()),
            ..crate::fleet::Query::default()
        });
    for m in at_site
        .iter()
        .filter(|m| m.state != "discovered" || m.pending_wipe)
    {
        if let Ok(id) = substruct_wire::MachineId::new(m.id.as_str()) {
            state.provisioner.sync_id(&id).await?;
        }
    }
    let status = if old.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(record)))
}
