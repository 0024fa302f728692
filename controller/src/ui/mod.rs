//! The web UI: server-rendered HTML pages (maud) over the REST API, served by the
//! controller itself at `/` and `/ui/…` (every asset included in the binary: sites are
//! air-gapped).
//!
//! The UI is a client of the API inside the process: each page and each action is one
//! or more requests to the API's own router (`tower::ServiceExt::oneshot`), carrying
//! the session's bearer token. So roles, validation and the audit log's actor are
//! exactly the API's; the UI adds no second path to the store.
//!
//! Sessions: `POST /ui/login` with an API token sets the cookie `substruct_session`
//! (the token; `HttpOnly`, `SameSite=Strict`, `Secure` under TLS; 12 hours). Every form
//! that changes something carries a CSRF token — the SHA-256 of a fixed label and the
//! session token, so it needs no server state and holds across controllers — and the
//! server refuses a POST whose CSRF token or `Origin` does not match. Pages are sent
//! with a strict Content-Security-Policy (no inline script, no other origin), so text
//! from a machine's report can only ever be text.
//!
//! Routes: `GET /` (login page; a logged-in browser is sent to the machines),
//! `POST /ui/login`, `POST /ui/logout`, `GET /ui/machines`, `GET /ui/machines/{id}`,
//! `GET /ui/machines/{id}/row` (one table row, for live updates),
//! `POST /ui/machines/{id}/action`, `GET|POST /ui/profiles`, `GET /ui/profiles/{name}`,
//! `GET|POST /ui/rules`, `GET /ui/rules/{name}`, `GET /ui/sites`, `GET /ui/images`,
//! `POST /ui/images`, `PUT /ui/images/content/{sha256}` (the upload, streamed to the
//! API), `GET /ui/live?after=SEQ` (the audit log followed from `SEQ`, as server-sent events), and
//! `GET /ui/static/{app.js,style.css}`.

mod pages;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use axum::{Form, Router};
use maud::Markup;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tower::ServiceExt as _;

use crate::config::{ApiToken, Role};

pub use pages::Session;

/// The session cookie's name.
pub const COOKIE: &str = "substruct_session";
/// How long a session cookie lives.
const SESSION_SECS: u64 = 12 * 3600;
/// Largest API answer a page reads (a page of 100 machines is ~60 KiB).
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Machines on one page of the list.
const PAGE: usize = 100;

/// What the UI's handlers share.
#[derive(Debug, Clone)]
pub struct UiState {
    /// The API's router (already holding its state): every page's data comes from it.
    api: Router,
    tokens: Arc<Vec<ApiToken>>,
    /// Served over TLS: the cookie is `Secure`.
    secure: bool,
}

/// The UI's routes. `api` is the API router the UI asks.
pub fn router(api: Router, tokens: Arc<Vec<ApiToken>>, secure: bool) -> Router {
    let state = UiState {
        api,
        tokens,
        secure,
    };
    Router::new()
        .route("/", get(index))
        .route("/ui", get(|| async { Redirect::to("/ui/machines") }))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/machines", get(machines))
        .route("/ui/machines/{id}", get(machine))
        .route("/ui/machines/{id}/row", get(machine_row))
        .route("/ui/machines/{id}/action", post(machine_action))
        .route("/ui/profiles", get(profiles).post(save_profile))
        .route("/ui/profiles/{name}", get(profile))
        .route("/ui/rules", get(rules).post(save_rule))
        .route("/ui/rules/{name}", get(rule))
        .route("/ui/sites", get(sites))
        .route("/ui/images", get(images).post(add_image))
        .route("/ui/images/content/{sha256}", put(upload_image))
        .route("/ui/live", get(live))
        .route("/ui/static/app.js", get(app_js))
        .route("/ui/static/style.css", get(style_css))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers on every UI answer: no framing, no sniffing, no referrer to another origin
/// (`same-origin`: under `no-referrer` a browser posts forms with `Origin: null`, which
/// the CSRF check refuses), and a CSP that allows scripts, styles, images and
/// connections from this origin only.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Why a UI request failed: shown as a page (or, for script requests, as text).
#[derive(Debug)]
enum UiError {
    /// No valid session: to the login page.
    LoggedOut,
    /// The form's CSRF token or origin is wrong.
    Csrf,
    /// The API refused: its status and message.
    Api(StatusCode, String),
}

impl UiError {
    fn into_page(self, session: Option<&Session>) -> Response {
        match self {
            Self::LoggedOut => Redirect::to("/").into_response(),
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                pages::error_page(
                    session,
                    StatusCode::FORBIDDEN,
                    "the form's CSRF token does not match this session; reload the page and retry",
                ),
            )
                .into_response(),
            Self::Api(status, message) => {
                (status, pages::error_page(session, status, &message)).into_response()
            }
        }
    }
}

impl UiState {
    /// The session a request's cookie names, if its token is known.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let token = cookie(headers, COOKIE)?;
        let role = self.role_of(&token)?;
        Some(Session::new(token, role))
    }

    fn role_of(&self, token: &str) -> Option<Role> {
        self.tokens
            .iter()
            .filter(|t| same(t.token.as_bytes(), token.as_bytes()))
            .map(|t| t.role)
            .max()
    }

    /// One API request as `session`; the status and the JSON answer (`{"error"}` for
    /// a refusal becomes [`UiError::Api`]).
    async fn call(
        &self,
        session: &Session,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Result<Value, UiError> {
        let request = api_request(
            session,
            method,
            uri,
            body.map(|b| Body::from(b.to_string())),
        );
        let response = self.send(request).await?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
            .await
            .map_err(|e| {
                UiError::Api(StatusCode::BAD_GATEWAY, format!("reading the answer: {e}"))
            })?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            Err(UiError::Api(status, message))
        }
    }

    /// The audit log's last sequence number (0 when it cannot be read: the page then
    /// follows from the start of what the log keeps).
    async fn log_end(&self, session: &Session) -> u64 {
        self.call(session, Method::GET, "/api/v1/events?limit=1", None)
            .await
            .ok()
            .and_then(|page| page.get("last_seq").and_then(Value::as_u64))
            .unwrap_or(0)
    }

    async fn send(&self, request: Request) -> Result<Response, UiError> {
        match self.api.clone().oneshot(request).await {
            Ok(response) => Ok(response),
            Err(never) => match never {},
        }
    }
}

fn api_request(session: &Session, method: Method, uri: &str, body: Option<Body>) -> Request {
    let mut request = Request::new(body.unwrap_or_else(Body::empty));
    *request.method_mut() = method;
    *request.uri_mut() = uri
        .parse()
        .unwrap_or_else(|_| "/".parse().unwrap_or_default());
    let headers = request.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", session.token())) {
        headers.insert(header::AUTHORIZATION, v);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    request
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A cookie's value from the `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// The CSRF token of a session token.
pub fn csrf_token(session_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"substruct ui csrf\0");
    h.update(session_token.as_bytes());
    hex::encode(h.finalize())
}

/// Checks a state-changing request: the CSRF token `presented` (a form field or the
/// `X-CSRF-Token` header) and, when the browser sent one, the `Origin`.
fn check_csrf(
    session: &Session,
    presented: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), UiError> {
    let expected = csrf_token(session.token());
    let ok = presented.is_some_and(|p| same(p.as_bytes(), expected.as_bytes()));
    if !ok {
        return Err(UiError::Csrf);
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or("");
        if origin_host != host {
            return Err(UiError::Csrf);
        }
    }
    Ok(())
}

/// Percent-encodes a query value or path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn html(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

async fn index(State(state): State<UiState>, headers: HeaderMap) -> Response {
    if state.session(&headers).is_some() {
        return Redirect::to("/ui/machines").into_response();
    }
    html(pages::login_page(None))
}

async fn login(
    State(state): State<UiState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("token").map(|t| t.trim()).unwrap_or("");
    if token.is_empty() || state.role_of(token).is_none() {
        tracing::info!("UI login refused: unknown token");
        return (
            StatusCode::UNAUTHORIZED,
            html(pages::login_page(Some("unknown token"))),
        )
            .into_response();
    }
    // A cookie value may not hold every byte: only tokens of cookie-safe bytes log in.
    let cookie_safe = token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'));
    if !cookie_safe {
        return (
            StatusCode::BAD_REQUEST,
            html(pages::login_page(Some(
                "this token holds characters a cookie cannot carry; use the API or the CLI",
            ))),
        )
            .into_response();
    }
    let secure = if state.secure { "; Secure" } else { "" };
    let set = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}"
    );
    let mut response = Redirect::to("/ui/machines").into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(session) = state.session(&headers) {
        if let Err(e) = check_csrf(&session, form.get("csrf").map(String::as_str), &headers) {
            return e.into_page(Some(&session));
        }
    }
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "substruct_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

async fn machines(
    State(state): State<UiState>,
    headers: HeaderMap,
    Query(filter): Query<HashMap<String, String>>,
) -> Response {
    let Some(session) = state.session(&headers) else {
        return UiError::LoggedOut.into_page(None);
    };
    let result: Result<Response, UiError> = async {
        let mut uri = format!("/api/v1/machines?limit={PAGE}");
        for key in ["site", "state", "vendor", "q", "cursor"] {
            if let Some(v) = filter.get(key).filter(|v| !v.trim().is_empty()) {
                uri.push_str(&format!("&{key}={}", enc(v.trim())));
            }
        }
        // The log's end before the list is read: the page follows from there, so no
        // change between the two is missed.
        let after = state.log_end(&session).await;
        let listed = state.call(&session, Method::GET, &uri, None).await?;
        Ok(html(pages::machines_page(
            &session, &filter, &listed, after,
        )))
    }
    .await;
    result.unwrap_or_else(|e| e.into_page(Some(&session)))
}

async fn machine(
    State(state): State<UiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(session) = state.session(&headers) else {
        return UiError::LoggedOut.into_page(None);
    };
    let result: Result<Response, UiError> = async {
        // The log's end first (as on the list), then what is shown.
        let after = state.log_end(&session).await;
        let record = state
            .call(
                &session,
                Method::GET,
                &format!("/api/v1/machines/{}", enc(&id)),
                None,
            )
            .await?;
        let events = state
            .call(
                &session,
                Method::GET,
                &format!("/api/v1/events?machine={}&limit=200", enc(&id)),
                None,
            )
            .await
            .unwrap_or(Value::Null);
        let profiles = if session.is_admin() {
            state
                .call(&session, Method::GET, "/api/v1/profiles", None)
                .await
                .unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        Ok(html(pages::machine_page(
            &session, &record, &events, &profiles, after,
        )))
    }
    .await;
    result.unwrap_or_else(|e| e.into_page(Some(&session)))
}

async fn machine_row(
    State(state): State<UiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(session) = state.session(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    // One record by id (a key read), not a search of the list.
    let uri = format!("/api/v1/machines/{}", enc(&id));
    match state.call(&session, Method::GET, &uri, None).await {
        Ok(record) => html(pages::machine_row(&pages::row_of_record(&record))),
        Err(UiError::Api(status, message)) => (status, message).into_response(),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

async fn machine_action(
    State(state): State<UiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(session) = state.session(&headers) else {
        return UiError::LoggedOut.into_page(None);
    };
    let result: Result<Response, UiError> = async {
        check_csrf(&session, form.get("csrf").map(String::as_str), &headers)?;
        let base = format!("/api/v1/machines/{}", enc(&id));
        let field = |k: &str| form.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let (uri, body) = match field("action") {
            Some("assign") => {
                let profile = field("profile").ok_or_else(|| {
                    UiError::Api(StatusCode::BAD_REQUEST, "choose a profile to assign".into())
                })?;
                (
                    format!("{base}/assign"),
                    serde_json::json!({ "profile": profile }),
                )
            }
            Some("release") => (
                format!("{base}/release"),
                serde_json::json!({ "wipe": field("wipe").unwrap_or("none") }),
            ),
            Some("reinstall") => (format!("{base}/reinstall"), serde_json::json!({})),
            Some("retire") => (format!("{base}/retire"), serde_json::json!({})),
            Some("power") => (
                format!("{base}/power"),
                serde_json::json!({ "action": field("power").unwrap_or("") }),
            ),
            other => {
                return Err(UiError::Api(
                    StatusCode::BAD_REQUEST,
                    format!("unknown action {:?}", other.unwrap_or("")),
                ))
            }
        };
        state.call(&session, Method::POST, &uri, Some(body)).await?;
        Ok(Redirect::to(&format!("/ui/machines/{}", enc(&id))).into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.into_page(Some(&session)))
}

async fn profiles(State(state): State<UiState>, headers: HeaderMap) -> Response {
    documents(state, headers, pages::Doc::Profile).await
}

async fn profile(
    State(state): State<UiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    document(state, headers, name, pages::Doc::Profile).await
}

async fn rules(State(state): State<UiState>, headers: HeaderMap) -> Response {
    documents(state, headers, pages::Doc::Rule).await
}

async fn rule(
    State(state): State<UiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    document(state, headers, name, pages::Doc::Rule).await
}

/// The list of profiles or rules.
async fn documents(state: UiState, headers: HeaderMap, doc: pages::Doc) -> Response {
    let Some(session) = state.session(&headers) else {
        return UiError::LoggedOut.into_page(None);
    };
    let uri = format!("/api/v1/{}", doc.plural());
    match state.call(&session, Method::GET, &uri, None).await {
        Ok(listed) => html(pages::documents_page(&session, doc, &listed)),
        Err(e) => e.into_page(Some(&session)),
    }
}

/// The editor of one profile or rule (`new`: a skeleton to start from).
async fn document(state: UiState, headers: HeaderMap, name: String, doc: pages::Doc) -> Response {
    let Some(session) = state.session(&headers) else {
        return UiError::LoggedOut.into_page(None);
    };
    let text = if name == "new" {
        doc.skeleton().to_owned()
    } else {
        let uri = format!("/api/v1/{}/{}", doc.plural(), enc(&name));
        match state.call(&session, Method::GET, &uri, None).await {
            Ok(value) => to_toml(&value),
            Err(e) => return e.into_page(Some(&session)),
        }
    };
    html(pages::editor_page(&session, doc, &text, None, None))
}

/// A document as TOML for the editor (JSON nulls dropped: TOML has none).
fn to_toml(value: &Value) -> String {
    fn strip(v: &Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Object(m) => Some(Value::Object(
                m.iter()
                    .filter_map(|(k, v)| strip(v).map(|v| (k.clone(), v)))
                    .collect(),
            )),
            Value::Array(a) => Some(Value::Array(a.iter().filter_map(strip).collect())),
            other => Some(other.clone()),
        }
    }
    let stripped = strip(value).unwrap_or(Value::Null);
    toml::to_string(&stripped)
        .unwrap_or_else(|e| format!("# cannot show this document as TOML: {e}\n"))
}

async fn save_profile(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    save_document(state, headers, form, pages::Doc::Profile).await
}

async fn save_rule(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    save_document(state, headers, form, pages::Doc::Rule).await
}

/// Saves (or dry-runs, or deletes) a profile or rule from the editor. A TOML or
/// validation error is shown above the editor, with the text kept.
async fn save_document(
    state: UiState,
    headers: HeaderMap,
    form: HashMap<String, String>,
    doc: pages::Doc,
) -> Response {
    let Some(session) = state.session(&headers) else {
        return UiError::LoggedOut.into_page(None);
    };
    let result: Result<Response, UiError> = async {
        check_csrf(&session, form.get("csrf").map(String::as_str), &headers)?;
        let text = form.get("toml").cloned().unwrap_or_default();
        let op = form.get("op").map(String::as_str).unwrap_or("save");
        let shown = |error: Option<String>, preview: Option<Value>| {
            let status = if error.is_some() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::OK
            };
            (
                status,
                html(pages::editor_page(
                    &session,
                    doc,
                    &text,
                    error.as_deref(),
                    preview.as_ref(),
                )),
            )
                .into_response()
        };
        let parsed: Result<(String, Value), String> = match doc {
            pages::Doc::Profile => crate::profile::Profile::from_toml(&text)
                .map_err(|e| crate::error_chain(&e))
                .and_then(|p| {
                    serde_json::to_value(&p)
                        .map(|v| (p.name.clone(), v))
                        .map_err(|e| e.to_string())
                }),
            pages::Doc::Rule => crate::rules::Rule::from_toml(&text)
                .map_err(|e| crate::error_chain(&e))
                .and_then(|r| {
                    serde_json::to_value(&r)
                        .map(|v| (r.name.clone(), v))
                        .map_err(|e| e.to_string())
                }),
        };
        let (name, value) = match parsed {
            Ok(p) => p,
            Err(message) => return Ok(shown(Some(message), None)),
        };
        let base = format!("/api/v1/{}", doc.plural());
        let result = match op {
            "dry-run" if doc == pages::Doc::Rule => {
                state
                    .call(
                        &session,
                        Method::POST,
                        &format!("{base}/dry-run"),
                        Some(value),
                    )
                    .await
            }
            "delete" => state
                .call(
                    &session,
                    Method::DELETE,
                    &format!("{base}/{}", enc(&name)),
                    None,
                )
                .await
                .map(|_| Value::Null),
            _ => state
                .call(
                    &session,
                    Method::PUT,
                    &format!("{base}/{}", enc(&name)),
                    Some(value),
                )
                .await
                .map(|_| Value::Null),
        };
        match (op, result) {
            ("dry-run", Ok(preview)) => Ok(shown(None, Some(preview))),
            (_, Ok(_)) => Ok(Redirect::to(&format!("/ui/{}", doc.plural())).into_response()),
            (_, Err(UiError::Api(status, message)))
                if status.is_client_error() && status != StatusCode::FORBIDDEN =>
            {
                Ok(shown(Some(message), None))
            }
            (_, Err(e)) => Err(e),
        }
    }
    .await;
    result.unwrap_or_else(|e| e.into_page(Some(&session)))
}

async fn sites(State(state): State<UiState>, headers: HeaderMap) -> Response {
    let Some(session) = state.session(&headers) else {
        return UiError::LoggedOut.into_page(None);
    };
    let result: Result<Response, UiError> = async {
        let listed = state
            .call(&session, Method::GET, "/api/v1/sites", None)
            .await?;
        let images = state
            .call(&session, Method::GET, "/api/v1/images", None)
            .await
            .unwrap_or(Value::Null);
        Ok(html(pages::sites_page(&session, &listed, &images)))
    }
    .await;
    result.unwrap_or_else(|e| e.into_page(Some(&session)))
}

async fn images(State(state): State<UiState>, headers: HeaderMap) -> Response {
    let Some(session) = state.session(&headers) else {
        return UiError::LoggedOut.into_page(None);
    };
    let result: Result<Response, UiError> = async {
        let listed = state
            .call(&session, Method::GET, "/api/v1/images", None)
            .await?;
        Ok(html(pages::images_page(&session, &listed)))
    }
    .await;
    result.unwrap_or_else(|e| e.into_page(Some(&session)))
}

/// `POST /ui/images` (from the upload script, JSON `{name, kind, sha256, size}` and
/// header `X-CSRF-Token`): registers the image once its content is stored.
async fn add_image(
    State(state): State<UiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(session) = state.session(&headers) else {
        return (StatusCode::UNAUTHORIZED, "log in again").into_response();
    };
    let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if check_csrf(&session, presented, &headers).is_err() {
        return (StatusCode::FORBIDDEN, "CSRF token mismatch").into_response();
    }
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not JSON").into_response();
    };
    match state
        .call(&session, Method::POST, "/api/v1/images", Some(value))
        .await
    {
        Ok(_) => (StatusCode::CREATED, "registered").into_response(),
        Err(UiError::Api(status, message)) => (status, message).into_response(),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// `PUT /ui/images/content/{sha256}`: the upload, streamed through to the API.
async fn upload_image(
    State(state): State<UiState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
    body: Body,
) -> Response {
    let Some(session) = state.session(&headers) else {
        return (StatusCode::UNAUTHORIZED, "log in again").into_response();
    };
    let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if check_csrf(&session, presented, &headers).is_err() {
        return (StatusCode::FORBIDDEN, "CSRF token mismatch").into_response();
    }
    let mut request = api_request(
        &session,
        Method::PUT,
        &format!("/api/v1/images/content/{}", enc(&sha256)),
        Some(body),
    );
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, len.clone());
    }
    match state.send(request).await {
        Ok(r) => r,
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// `GET /ui/live`: the audit log from now on, as server-sent events (the API's
/// follow stream, passed through).
async fn live(
    State(state): State<UiState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(session) = state.session(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Some(after) = query.get("after").and_then(|a| a.parse::<u64>().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            "after= must be an event's sequence number",
        )
            .into_response();
    };
    let mut request = api_request(
        &session,
        Method::GET,
        &format!("/api/v1/events?follow=true&limit=1000&after={after}"),
        None,
    );
    if let Some(id) = headers.get("last-event-id") {
        request.headers_mut().insert("last-event-id", id.clone());
    }
    match state.send(request).await {
        Ok(r) => r,
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("static/app.js"),
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("static/style.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; substruct_session=tok; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, "missing"), None);
        let mut empty = HeaderMap::new();
        empty.insert(
            header::COOKIE,
            HeaderValue::from_static("substruct_session="),
        );
        assert_eq!(cookie(&empty, COOKIE), None);
    }

    #[test]
    fn csrf_needs_the_sessions_token_and_a_matching_origin() {
        let session = Session::new("secret".into(), Role::Admin);
        let good = csrf_token("secret");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("ctl:8080"));
        assert!(check_csrf(&session, Some(&good), &h).is_ok());
        assert!(check_csrf(&session, None, &h).is_err());
        assert!(check_csrf(&session, Some(&csrf_token("other")), &h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://ctl:8080"));
        assert!(check_csrf(&session, Some(&good), &h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(check_csrf(&session, Some(&good), &h).is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(enc("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(enc("sn-01.x_y~"), "sn-01.x_y~");
    }

    #[test]
    fn documents_become_toml_without_nulls() {
        let v = serde_json::json!({"name": "p", "image": null, "params": {"vars": {"a": "b"}}});
        let t = to_toml(&v);
        assert!(t.contains("name = \"p\""), "{t}");
        assert!(!t.contains("image"), "{t}");
    }
}
