//! `/api/v1/images`: registered images and their content.

use std::sync::Arc;

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use substruct_wire::Sha256Digest;

use super::openapi::{Forbidden, ImageContent, Unauthorized, Unavailable};
use super::{ApiError, ApiState, ErrorBody};
use crate::images::{ImageKind, ImageRecord};
use crate::sites::EdgeStatus;
use crate::store::{Docs, Store, StoreError, Write};

pub(super) async fn images_by_name(
    store: &Store,
) -> Result<BTreeMap<String, ImageRecord>, StoreError> {
    Ok(store
        .doc_list::<ImageRecord>(Docs::Images)
        .await?
        .into_iter()
        .collect())
}

/// One image as `GET /api/v1/images` shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageView {
    #[serde(flatten)]
    pub image: ImageRecord,
    /// The content is in the controller's object store (edges fetch it from there);
    /// false: edges must hold the file in their image directory.
    pub stored: bool,
    /// Sites whose edge cache holds it, verified.
    pub sites: Vec<String>,
}

/// Every registered image, sorted by name, with where its content is.
#[utoipa::path(
    get,
    path = "/api/v1/images",
    tag = "images",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<ImageView>, description = "The images"),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn list_images(
    State(state): State<ApiState>,
) -> Result<Json<Vec<ImageView>>, ApiError> {
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
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Uploaded {
    pub sha256: String,
    pub size: u64,
    /// False when the same content was already stored.
    pub created: bool,
}

/// Stores an image's content.
///
/// In the controller's object store, where edges fetch it. The content must hash to
/// the URL's sha256, else nothing is stored.
#[utoipa::path(
    put,
    path = "/api/v1/images/content/{sha256}",
    tag = "images",
    params(("sha256" = String, Path, pattern = "^[0-9a-f]{64}$",
        description = "The content's SHA-256: 64 lowercase hex digits")),
    request_body(content = inline(ImageContent), content_type = "application/octet-stream",
        description = "The image's bytes"),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Uploaded, description = "The same content was already stored"),
        (status = 201, body = Uploaded, description = "Stored"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, body = ErrorBody, description = "The sha256 is not 64 lowercase hex \
            digits, or the content hashes to another"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn upload_image(
    State(state): State<ApiState>,
    Path(sha256): Path<String>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    use futures::StreamExt as _;
    use sha2::{Digest as _, Sha256};
    let digest = crate::images::validate_sha256(&sha256)
        .map_err(|e| ApiError::Invalid(crate::error_chain(&e)))?;
    if let Some(size) = state.store.image_content_size(&digest).await? {
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
    let size = state.store.put_image_content(&digest, &mut reader).await?;
    let got = Sha256Digest::finish(hasher.lock().unwrap_or_else(|p| p.into_inner()).clone());
    if got != digest {
        state.store.delete_image_content(&digest).await?;
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

/// Whether `c` may be part of a NATS KV key (`[-/_=.a-zA-Z0-9]`). An image name may
/// also hold `+` and `~` ([`substruct_wire::ImageName`]), which KV `images` cannot key.
fn storable_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=' | '.')
}

/// `POST /api/v1/images`: an image's metadata.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewImage {
    /// The image's path under the edge's `/images/` (`debian-12/linux`).
    pub name: String,
    pub kind: ImageKind,
    /// SHA-256 of the whole file: 64 lowercase hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Registers an image.
///
/// Its name, kind, sha256 and size. Images are immutable: the same registration again
/// is a no-op, another content under the name a conflict.
#[utoipa::path(
    post,
    path = "/api/v1/images",
    tag = "images",
    request_body = NewImage,
    security(("bearer" = [])),
    responses(
        (status = 200, body = ImageRecord, description = "Already registered, the same"),
        (status = 201, body = ImageRecord, description = "Registered"),
        (status = 400, body = ErrorBody, description = "The body is not a `NewImage`"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, body = ErrorBody, description = "The name is registered with another content"),
        (status = 422, body = ErrorBody, description = "The name or the sha256 is malformed, \
            or the name holds a character a store key cannot (`+`, `~`)"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn add_image(
    State(state): State<ApiState>,
    body: Result<Json<NewImage>, JsonRejection>,
) -> Result<(StatusCode, Json<ImageRecord>), ApiError> {
    let Json(new) = body?;
    let invalid = |e: crate::images::ImageError| ApiError::Invalid(crate::error_chain(&e));
    let name = crate::images::validate_image_name(&new.name).map_err(invalid)?;
    if let Some(bad) = new.name.chars().find(|c| !storable_key_char(*c)) {
        return Err(ApiError::Invalid(format!(
            "image name {:?}: {bad:?} cannot be part of a KV key (images are registered \
             under their name; use letters, digits, '.', '_', '-' and '/')",
            new.name
        )));
    }
    let record = ImageRecord {
        name,
        kind: new.kind,
        sha256: crate::images::validate_sha256(&new.sha256).map_err(invalid)?,
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
