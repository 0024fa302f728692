//! `/api/v1/profiles` and `/api/v1/rules`: the named JSON documents (read, save, delete),
//! and the rules' dry run.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use substruct_wire::MachineId;

use super::images::images_by_name;
use super::openapi::{Forbidden, Unauthorized, Unavailable};
use super::{ApiError, ApiState, ErrorBody};
use crate::config::Role;
use crate::profile::Profile;
use crate::rules::Rule;
use crate::store::{Docs, Store, Write};

/// What replaces a secret in a viewer's copy of a profile.
pub const REDACTED: &str = "<redacted>";

/// A profile as `role` may see it. A viewer gets every secret replaced by
/// [`REDACTED`] (the shape stays, so clients decode it as a profile): the root password
/// hash (crackable offline), the post-install script and the template (they may carry
/// keys, tokens or passwords), and the values of `params.vars` (their names stay).
/// Public keys (`ssh_keys`), packages and the rest are not secret.
pub(super) fn profile_view(mut profile: Profile, role: Role) -> Profile {
    if role < Role::Admin {
        let hide = |v: &mut Option<String>| {
            if v.is_some() {
                *v = Some(REDACTED.to_owned());
            }
        };
        hide(&mut profile.template);
        hide(&mut profile.params.root_password_hash);
        hide(&mut profile.params.post_install);
        for value in profile.params.vars.values_mut() {
            REDACTED.clone_into(value);
        }
    }
    profile
}

/// Every profile, sorted by name (a viewer's copies have their secrets redacted).
#[utoipa::path(
    get,
    path = "/api/v1/profiles",
    tag = "profiles",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<Profile>, description = "The profiles"),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn list_profiles(
    State(state): State<ApiState>,
    axum::Extension(role): axum::Extension<Role>,
) -> Result<Json<Vec<Profile>>, ApiError> {
    let profiles = list::<Profile>(&state.store, Docs::Profiles).await?;
    Ok(Json(
        profiles
            .into_iter()
            .map(|p| profile_view(p, role))
            .collect(),
    ))
}

/// Every document of a bucket, sorted by key.
async fn list<T: serde::de::DeserializeOwned>(
    store: &Store,
    docs: Docs,
) -> Result<Vec<T>, ApiError> {
    Ok(store
        .doc_list::<T>(docs)
        .await?
        .into_iter()
        .map(|(_, doc)| doc)
        .collect())
}

/// The document `name` (a name from the URL) of a bucket, or 404 naming `what`.
async fn show<T: serde::de::DeserializeOwned>(
    store: &Store,
    docs: Docs,
    what: &'static str,
    name: String,
) -> Result<T, ApiError> {
    let name = stored_name(what, name)?;
    match store.doc_get::<T>(docs, &name).await? {
        Some((doc, _)) => Ok(doc),
        None => Err(ApiError::Missing { what, name }),
    }
}

/// Deletes the document `name` (already checked by [`stored_name`]): 204, or 404
/// naming `what`.
async fn delete(
    store: &Store,
    docs: Docs,
    what: &'static str,
    name: String,
) -> Result<StatusCode, ApiError> {
    if store.doc_delete(docs, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Missing { what, name })
    }
}

/// A profile or rule name from a URL: one that no document can have is simply not
/// found (and never reaches the store as a key).
pub(super) fn stored_name(what: &'static str, name: String) -> Result<String, ApiError> {
    match substruct_wire::ResourceName::parse(&name) {
        Ok(_) => Ok(name),
        Err(_) => Err(ApiError::Missing { what, name }),
    }
}

/// One profile (a viewer's copy has its secrets redacted).
#[utoipa::path(
    get,
    path = "/api/v1/profiles/{name}",
    tag = "profiles",
    params(("name" = String, Path, description = "The profile's name (`[a-z0-9-]{1,63}`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Profile, description = "The profile"),
        (status = 401, response = Unauthorized),
        (status = 404, body = ErrorBody, description = "No such profile"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn show_profile(
    State(state): State<ApiState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(name): Path<String>,
) -> Result<Json<Profile>, ApiError> {
    let profile = show(&state.store, Docs::Profiles, "profile", name).await?;
    Ok(Json(profile_view(profile, role)))
}

/// Creates or replaces a profile.
///
/// Once it validates: its template must render for a sample machine, its images must be
/// registered with the right kinds.
#[utoipa::path(
    put,
    path = "/api/v1/profiles/{name}",
    tag = "profiles",
    params(("name" = String, Path, description = "The profile's name (`[a-z0-9-]{1,63}`)")),
    request_body = Profile,
    security(("bearer" = [])),
    responses(
        (status = 200, body = Profile, description = "Replaced"),
        (status = 201, body = Profile, description = "Created"),
        (status = 400, body = ErrorBody, description = "The body is not a profile, or it \
            names another profile than the URL"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, body = ErrorBody, description = "The profile does not validate (the \
            error names the field or the template line)"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn put_profile(
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
pub(super) fn same_name(what: &str, url: &str, body: &str) -> Result<(), ApiError> {
    if url == body {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "the URL names {what} {url:?}, the body {body:?}"
        )))
    }
}

/// Creates or replaces a named document: 201 when it is new, 200 when replaced.
pub(super) async fn save<T: Serialize>(
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

/// Deletes a profile no machine uses.
#[utoipa::path(
    delete,
    path = "/api/v1/profiles/{name}",
    tag = "profiles",
    params(("name" = String, Path, description = "The profile's name (`[a-z0-9-]{1,63}`)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, body = ErrorBody, description = "No such profile"),
        (status = 409, body = ErrorBody, description = "Machines use the profile (the error \
            names them)"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn delete_profile(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = stored_name("profile", name)?;
    /// Machines named in the refusal; the count covers the rest.
    const NAMED: usize = 20;
    let users = super::current_fleet(&state).await?.using_profile(&name);
    if !users.is_empty() {
        let more = users.len().saturating_sub(NAMED);
        return Err(ApiError::Conflict(format!(
            "profile {name:?} is in use by {} machine(s): {}{}",
            users.len(),
            users[..users.len().min(NAMED)].join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )));
    }
    delete(&state.store, Docs::Profiles, "profile", name).await
}

/// Every rule, in the order they run (priority, then name).
#[utoipa::path(
    get,
    path = "/api/v1/rules",
    tag = "rules",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<Rule>, description = "The rules"),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn list_rules(State(state): State<ApiState>) -> Result<Json<Vec<Rule>>, ApiError> {
    let mut rules = list::<Rule>(&state.store, Docs::Rules).await?;
    rules.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    Ok(Json(rules))
}

/// One rule.
#[utoipa::path(
    get,
    path = "/api/v1/rules/{name}",
    tag = "rules",
    params(("name" = String, Path, description = "The rule's name (`[a-z0-9-]{1,63}`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Rule, description = "The rule"),
        (status = 401, response = Unauthorized),
        (status = 404, body = ErrorBody, description = "No such rule"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn show_rule(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Rule>, ApiError> {
    Ok(Json(show(&state.store, Docs::Rules, "rule", name).await?))
}

pub(super) async fn check_rule(state: &ApiState, rule: &Rule) -> Result<(), ApiError> {
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

/// Creates or replaces a rule, once it validates and its profile exists.
#[utoipa::path(
    put,
    path = "/api/v1/rules/{name}",
    tag = "rules",
    params(("name" = String, Path, description = "The rule's name (`[a-z0-9-]{1,63}`)")),
    request_body = Rule,
    security(("bearer" = [])),
    responses(
        (status = 200, body = Rule, description = "Replaced"),
        (status = 201, body = Rule, description = "Created"),
        (status = 400, body = ErrorBody, description = "The body is not a rule, or it names \
            another rule than the URL"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, body = ErrorBody, description = "The rule does not validate, or its \
            profile does not exist"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn put_rule(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<Rule>, JsonRejection>,
) -> Result<(StatusCode, Json<Rule>), ApiError> {
    let Json(rule) = body?;
    same_name("rule", &name, &rule.name)?;
    check_rule(&state, &rule).await?;
    let status = save(&state.store, Docs::Rules, &name, &rule).await?;
    catch_up_rules(&state).await;
    tracing::info!(rule = %name, profile = %rule.profile, "rule saved");
    Ok((status, Json(rule)))
}

/// Deletes a rule.
#[utoipa::path(
    delete,
    path = "/api/v1/rules/{name}",
    tag = "rules",
    params(("name" = String, Path, description = "The rule's name (`[a-z0-9-]{1,63}`)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, body = ErrorBody, description = "No such rule"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn delete_rule(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = stored_name("rule", name)?;
    let status = delete(&state.store, Docs::Rules, "rule", name).await?;
    catch_up_rules(&state).await;
    Ok(status)
}

/// Waits (briefly) until this controller's rules copy shows the change just written.
async fn catch_up_rules(state: &ApiState) {
    if let Err(e) = state.provisioner.catch_up_rules().await {
        tracing::warn!(error = %crate::error_chain(&e), "the rules watch has not seen the change yet");
    }
}

/// What a dry run answers.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DryRun {
    pub rule: String,
    pub profile: String,
    /// The machines the rule would take now.
    pub machines: Vec<MachineId>,
}

/// Which machines a rule would take now (nothing is saved).
#[utoipa::path(
    post,
    path = "/api/v1/rules/dry-run",
    tag = "rules",
    request_body = Rule,
    security(("bearer" = [])),
    responses(
        (status = 200, body = DryRun, description = "The machines the rule would take"),
        (status = 400, body = ErrorBody, description = "The body is not a rule"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, body = ErrorBody, description = "The rule does not validate, or its \
            profile does not exist"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn dry_run(
    State(state): State<ApiState>,
    body: Result<Json<Rule>, JsonRejection>,
) -> Result<Json<DryRun>, ApiError> {
    let Json(rule) = body?;
    check_rule(&state, &rule).await?;
    let rules = list::<Rule>(&state.store, Docs::Rules).await?;
    let machines = state.store.list_machines().await?;
    Ok(Json(DryRun {
        machines: crate::rules::dry_run(&rules, &rule, &machines),
        rule: rule.name,
        profile: rule.profile,
    }))
}
