//! The API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the types' `ToSchema` derives, served unauthenticated at
//! `GET /api/v1/openapi.json` and committed as `controller/openapi.json` (a test keeps
//! the two equal; `SUBSTRUCT_UPDATE_OPENAPI=1` rewrites the file).

use std::borrow::Cow;
use std::sync::OnceLock;

use serde::Serialize;
use utoipa::openapi::schema::{Discriminator, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

use super::{docs, events, images, machines, power, sites, ErrorBody, Health};
use crate::fleet::{MachineSummary, Page};
use crate::record::{MachineRecord, MachineView};

/// The document, as a type: every operation and every schema of the API.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Substruct controller API",
        version = env!("CARGO_PKG_VERSION"),
        description = "The REST API of the Substruct controller: the machine inventory and \
            the operator's actions on it (assign, release, reinstall, retire, power, BMC), \
            install profiles, assignment rules, images, sites and the audit log.\n\n\
            Everything under `/api/v1/` except this document needs \
            `Authorization: Bearer <token>`: `GET` needs role viewer, every other method \
            role admin. Errors are JSON `{\"error\": \"...\"}`."
    ),
    paths(
        super::healthz,
        super::openapi_document,
        machines::list_machines,
        machines::show_machine,
        machines::assign,
        machines::release,
        machines::reinstall,
        machines::retire,
        power::status,
        power::act,
        power::show_bmc,
        power::set_bmc,
        docs::list_profiles,
        docs::show_profile,
        docs::put_profile,
        docs::delete_profile,
        docs::list_rules,
        docs::dry_run,
        docs::show_rule,
        docs::put_rule,
        docs::delete_rule,
        images::list_images,
        images::add_image,
        images::upload_image,
        events::list_events,
        sites::list_sites,
        sites::put_site,
    ),
    components(
        schemas(ErrorBody, Health, MachineList, MachineEntry, MachineRecord, MachineSummary, MachineView),
        responses(Unauthorized, Forbidden, Unavailable)
    ),
    modifiers(&BearerScheme, &OptionalBodies),
    tags(
        (name = "meta", description = "Health and this document (no token)"),
        (name = "machines", description = "The machine inventory and the operator's actions"),
        (name = "power", description = "Power and BMC settings, through the machine's site edge"),
        (name = "profiles", description = "Install profiles"),
        (name = "rules", description = "Rules that assign profiles to discovered machines"),
        (name = "images", description = "Registered images and their content"),
        (name = "sites", description = "Sites and their edges"),
        (name = "events", description = "The audit log"),
    )
)]
pub struct ApiDoc;

/// The document as pretty-printed JSON with a final newline: the bytes served at
/// `GET /api/v1/openapi.json` and committed as `controller/openapi.json`.
pub fn openapi_json() -> String {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            // Serializing a tree of strings, maps and numbers cannot fail.
            let mut json = ApiDoc::openapi()
                .to_pretty_json()
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            json.push('\n');
            json
        })
        .clone()
}

/// Adds the `bearer` security scheme the operations name.
#[derive(Debug)]
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The operations whose JSON body may be left out (`Option<Json<…>>` in the handler).
const OPTIONAL_BODIES: &[(&str, &str)] = &[
    ("/api/v1/machines/{id}/release", "release"),
    ("/api/v1/machines/{id}/reinstall", "reinstall"),
];

/// Marks the bodies of [`OPTIONAL_BODIES`] as not required. (The path macro would
/// describe an `Option` body as "JSON `null` or the body"; the handlers take no body
/// at all, not `null`.)
#[derive(Debug)]
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, operation_id) in OPTIONAL_BODIES {
            let Some(item) = openapi.paths.paths.get_mut(*path) else {
                continue;
            };
            for operation in [&mut item.post, &mut item.put].into_iter().flatten() {
                if operation.operation_id.as_deref() == Some(*operation_id) {
                    if let Some(body) = operation.request_body.as_mut() {
                        body.required = Some(utoipa::openapi::Required::False);
                    }
                }
            }
        }
    }
}

/// An image's content: any bytes.
// Described, never built: the handler streams the body.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub(super) struct ImageContent(Vec<u8>);

/// What `GET /api/v1/machines` answers: without parameters every record (a JSON
/// list), with any parameter a page.
// Described, never built: the handler streams the list and serializes the page itself.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum MachineList {
    /// Every machine record, sorted by id (a viewer's copies have no `ticket`).
    All(Vec<MachineView<'static>>),
    /// One page: summaries, or whole records with `full=true`.
    Page(Page<MachineEntry>),
}

/// One machine of a page: a summary, or (`full=true`) the whole record.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
pub(super) enum MachineEntry {
    Summary(MachineSummary),
    Record(MachineView<'static>),
}

/// The lifecycle state, as a record carries it flattened (`"state": "assigned",
/// "profile": "…"`). Written by hand: the lifecycle module knows nothing of the API.
/// A unit test checks every state against it.
impl PartialSchema for crate::lifecycle::State {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let variant = |state: &str, description: &str, fields: &[&str]| {
            let mut object = ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(description))
                .property("state", string().enum_values(Some([state])))
                .required("state");
            for field in fields {
                object = object.property(*field, string()).required(*field);
            }
            object
        };
        let failed = variant(
            "failed",
            "Something went wrong; `profile` is the one it had, if any.",
            &["reason"],
        )
        .property(
            "profile",
            ObjectBuilder::new().schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                Type::String,
                Type::Null,
            ])),
        );
        OneOfBuilder::new()
            .description(Some(
                "Where a machine is in its lifecycle, tagged by `state`.",
            ))
            .item(variant(
                "discovered",
                "Known and waiting for a profile (from a rule or an operator).",
                &[],
            ))
            .item(variant(
                "assigned",
                "A profile is chosen; the next network boot starts its install.",
                &["profile"],
            ))
            .item(variant(
                "installing",
                "The installer fetched its files (or the prospector started the image deploy).",
                &["profile"],
            ))
            .item(variant(
                "deployed",
                "The install called back `done`; the machine boots from its disk.",
                &["profile"],
            ))
            .item(failed)
            .item(variant(
                "retired",
                "Out of service for good: no transition leaves this state.",
                &[],
            ))
            .discriminator(Some(Discriminator::new("state")))
            .into()
    }
}

impl ToSchema for crate::lifecycle::State {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("MachineState")
    }
}

/// An error answer: `{"error": "..."}`.
fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(ErrorBody::name())))
            .build(),
    )
}

/// 401: no token, or an unknown one.
#[derive(Debug)]
pub(super) struct Unauthorized;

impl<'r> ToResponse<'r> for Unauthorized {
    fn response() -> (&'r str, RefOr<Response>) {
        let response = error_response("No bearer token, or an unknown one").header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some("`Bearer`"))
                .build(),
        );
        ("Unauthorized", response.build().into())
    }
}

/// 403: the token's role is viewer, the method needs admin.
#[derive(Debug)]
pub(super) struct Forbidden;

impl<'r> ToResponse<'r> for Forbidden {
    fn response() -> (&'r str, RefOr<Response>) {
        let response = error_response("The token's role may not do this (it needs role admin)");
        ("Forbidden", response.build().into())
    }
}

/// 503: the store (NATS) is unavailable, or this controller's machine list is loading.
#[derive(Debug)]
pub(super) struct Unavailable;

impl<'r> ToResponse<'r> for Unavailable {
    fn response() -> (&'r str, RefOr<Response>) {
        let response = error_response(
            "The store (NATS JetStream) is unavailable, a write lost too many \
             compare-and-set races, or this controller's machine list is still loading; \
             retry",
        );
        ("Unavailable", response.build().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::State;

    /// The hand-written `MachineState` schema names every state, with its fields.
    #[test]
    fn machine_state_schema_covers_every_state() {
        let schema = serde_json::to_value(State::schema()).unwrap_or_default();
        let variants = schema["oneOf"].as_array().cloned().unwrap_or_default();
        let states = [
            State::Discovered,
            State::Assigned {
                profile: "p".into(),
            },
            State::Installing {
                profile: "p".into(),
            },
            State::Deployed {
                profile: "p".into(),
            },
            State::Failed {
                reason: "r".into(),
                profile: None,
            },
            State::Retired,
        ];
        assert_eq!(variants.len(), states.len());
        for state in states {
            let value = serde_json::to_value(&state).unwrap_or_default();
            let fields = value.as_object().cloned().unwrap_or_default();
            let variant = variants
                .iter()
                .find(|v| v["properties"]["state"]["enum"][0] == value["state"])
                .unwrap_or_else(|| panic!("no schema for state {value}"));
            let properties = variant["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut schema_fields: Vec<&String> = properties.keys().collect();
            let mut value_fields: Vec<&String> = fields.keys().collect();
            schema_fields.sort();
            value_fields.sort();
            assert_eq!(schema_fields, value_fields, "state {value}");
        }
    }
}
