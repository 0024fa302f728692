//! The UI's pages: pure functions from the API's JSON answers to HTML (maud escapes
//! every value, so a fact a machine reported is always text).

use std::collections::HashMap;

use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use crate::config::Role;
use crate::record::MachineEventKind;

/// A logged-in browser: its API token and role.
#[derive(Clone)]
pub struct Session {
    token: String,
    role: Role,
    csrf: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("role", &self.role).finish()
    }
}

impl Session {
    /// A session of `token` with `role`.
    pub fn new(token: String, role: Role) -> Self {
        let csrf = super::csrf_token(&token);
        Self { token, role, csrf }
    }

    pub(super) fn token(&self) -> &str {
        &self.token
    }

    /// Whether the session may change things (the UI shows actions only then; the API
    /// refuses them anyway).
    pub fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }
}

/// A profile or a rule: the two TOML documents the UI edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc {
    Profile,
    Rule,
}

impl Doc {
    pub(super) fn plural(self) -> &'static str {
        match self {
            Self::Profile => "profiles",
            Self::Rule => "rules",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Profile => "Profiles",
            Self::Rule => "Rules",
        }
    }

    /// A new document's starting text.
    pub(super) fn skeleton(self) -> &'static str {
        match self {
            Self::Profile => {
                "name = \"new-profile\"\nmethod = \"image\"\nimage = \"IMAGE\"\n"
            }
            Self::Rule => {
                "name = \"new-rule\"\npriority = 100\nprofile = \"PROFILE\"\n\n[match]\nvendor = \"QEMU*\"\n"
            }
        }
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS`.
fn when(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn layout(session: Option<&Session>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Substruct" }
                link rel="stylesheet" href="/ui/static/style.css";
                script src="/ui/static/app.js" defer {}
            }
            body data-csrf=[session.map(|s| s.csrf.as_str())] {
                header {
                    a.brand href="/" { "Substruct" }
                    @if let Some(session) = session {
                        nav {
                            a href="/ui/machines" { "Machines" }
                            a href="/ui/profiles" { "Profiles" }
                            a href="/ui/rules" { "Rules" }
                            a href="/ui/sites" { "Sites" }
                            a href="/ui/images" { "Images" }
                        }
                        form.logout method="post" action="/ui/logout" {
                            span.role { (session.role.to_string()) }
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// `GET /`: the login form, with `error` above it.
pub fn login_page(error: Option<&str>) -> Markup {
    layout(
        None,
        "Log in",
        html! {
            section.login {
                h1 { "Log in" }
                @if let Some(e) = error { p.error { (e) } }
                form method="post" action="/ui/login" {
                    label for="token" { "API token" }
                    input #token type="password" name="token" autocomplete="current-password" autofocus required;
                    button #login type="submit" { "Log in" }
                }
                p.hint { "A token from the controller's configuration ([[api.tokens]]): viewer tokens read, admin tokens act." }
            }
        },
    )
}

/// A refusal, as a page.
pub fn error_page(session: Option<&Session>, status: StatusCode, message: &str) -> Markup {
    layout(
        session,
        "Error",
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error #error { (message) }
            p { a href="javascript:history.back()" { "Back" } }
        },
    )
}

/// One row of the machine list (`summary`: a row of the API's page).
pub fn machine_row(m: &Value) -> Markup {
    let id = s(m, "id");
    let state = s(m, "state");
    let macs: Vec<&str> = m
        .get("macs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    html! {
        tr id={ "m-" (id) } data-machine=(id) {
            td { a href={ "/ui/machines/" (id) } { code { (id) } } }
            td.serial { (s(m, "serial")) }
            td.vendor { (s(m, "vendor")) " " (s(m, "product")) }
            td { (s(m, "site")) }
            td.state { span class={ "state state-" (state) } { (state) } }
            td { (s(m, "profile")) }
            td { (m.get("power").and_then(Value::as_str).unwrap_or("")) }
            td { (n(m, "cpus")) " cpu · " (bytes(n(m, "memory_bytes"))) " · " (n(m, "disks")) " disk" }
            td.macs { (macs.join(" ")) }
        }
    }
}

/// A machine record (the API's JSON) as the list's row fields.
pub fn row_of_record(record: &Value) -> Value {
    let facts = record.get("facts").cloned().unwrap_or(Value::Null);
    let dmi = facts.get("dmi").cloned().unwrap_or(Value::Null);
    let cpu = facts.get("cpu").cloned().unwrap_or(Value::Null);
    let macs: Vec<Value> = facts
        .get("nics")
        .and_then(Value::as_array)
        .map(|nics| nics.iter().filter_map(|n| n.get("mac").cloned()).collect())
        .unwrap_or_default();
    let cpus = match n(&cpu, "threads") {
        0 => n(&cpu, "cores"),
        t => t,
    };
    serde_json::json!({
        "id": s(record, "id"),
        "state": s(record, "state"),
        "profile": s(record, "profile"),
        "site": s(record, "site"),
        "power": record.get("power").cloned().unwrap_or(Value::Null),
        "vendor": s(&dmi, "sys_vendor"),
        "product": s(&dmi, "product_name"),
        "serial": s(&dmi, "product_serial"),
        "macs": macs,
        "cpus": cpus,
        "memory_bytes": facts.get("memory").map_or(0, |m| n(m, "total_bytes")),
        "disks": facts.get("disks").and_then(Value::as_array).map_or(0, Vec::len),
    })
}

/// `GET /ui/machines`: filters, counts and one page of the list.
/// `after`: the log's last sequence number when the list was read (live updates
/// follow from there).
pub fn machines_page(
    session: &Session,
    filter: &HashMap<String, String>,
    listed: &Value,
    after: u64,
) -> Markup {
    let f = |k: &str| filter.get(k).map(String::as_str).unwrap_or("");
    let rows = listed
        .get("machines")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let counts = |kind: &str| -> Vec<(String, u64)> {
        listed
            .get("counts")
            .and_then(|c| c.get(kind))
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let next = listed.get("next_cursor").and_then(Value::as_str);
    let unfiltered = ["site", "state", "vendor", "q", "cursor"]
        .iter()
        .all(|k| f(k).is_empty());
    layout(
        Some(session),
        "Machines",
        html! {
            h1 { "Machines" span.total { (n(listed, "total")) } }
            form.filters method="get" action="/ui/machines" {
                input #q type="search" name="q" value=(f("q")) placeholder="serial, UUID, MAC or id";
                input type="text" name="site" value=(f("site")) placeholder="site";
                select name="state" {
                    option value="" { "any state" }
                    @for (state, count) in counts("state") {
                        option value=(state) selected[f("state") == state] { (state) " (" (count) ")" }
                    }
                }
                input type="text" name="vendor" value=(f("vendor")) placeholder="vendor";
                button #search type="submit" { "Filter" }
                @if !unfiltered { a href="/ui/machines" { "clear" } }
            }
            p.counts {
                @for (state, count) in counts("state") {
                    a href={ "/ui/machines?state=" (super::enc(&state)) } { span class={ "state state-" (state) } { (state) } " " (count) }
                    " "
                }
            }
            table #machines data-after=(after) {
                thead { tr {
                    th { "Id" } th { "Serial" } th { "Vendor" } th { "Site" } th { "State" }
                    th { "Profile" } th { "Power" } th { "Hardware" } th { "MACs" }
                } }
                tbody {
                    @for m in &rows { (machine_row(m)) }
                }
            }
            @if rows.is_empty() { p.empty { "No machine matches." } }
            @if let Some(cursor) = next {
                p { a.next href={ "/ui/machines?cursor=" (super::enc(cursor))
                    @for k in ["site", "state", "vendor", "q"] { @if !f(k).is_empty() { "&" (k) "=" (super::enc(f(k))) } }
                } { "Next page →" } }
            }
        },
    )
}

fn fact_rows(facts: &Value) -> Markup {
    let dmi = facts.get("dmi").cloned().unwrap_or(Value::Null);
    let cpu = facts.get("cpu").cloned().unwrap_or(Value::Null);
    let disks = facts
        .get("disks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let nics = facts
        .get("nics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    html! {
        table.facts {
            tr { th { "Vendor" } td #vendor { (s(&dmi, "sys_vendor")) } }
            tr { th { "Product" } td { (s(&dmi, "product_name")) } }
            tr { th { "Serial" } td #serial { (s(&dmi, "product_serial")) } }
            tr { th { "UUID" } td { (s(&dmi, "product_uuid")) } }
            tr { th { "BIOS" } td { (s(&dmi, "bios_vendor")) " " (s(&dmi, "bios_version")) } }
            tr { th { "CPU" } td { (s(&cpu, "model")) } }
            tr { th { "Boot mode" } td { (facts.get("boot_mode").and_then(Value::as_str).unwrap_or("")) } }
            tr { th { "Secure Boot" } td #secure-boot { (match facts.get("secure_boot").and_then(Value::as_bool) {
                Some(true) => "on",
                Some(false) => "off",
                None => "unknown",
            }) } }
            @for d in &disks {
                tr { th { "Disk " (s(d, "name")) } td { (bytes(n(d, "size_bytes"))) " " (s(d, "model")) " " (s(d, "serial")) } }
            }
            @for nic in &nics {
                tr { th { "NIC " (s(nic, "name")) } td { (s(nic, "mac")) } }
            }
        }
    }
}

/// `GET /ui/machines/{id}`: facts, conflicts, the timeline and (for admins) actions.
/// `after`: the log's last sequence number before the record was read (the page
/// follows from there: from the machine's own last event it would replay every other
/// machine's since).
pub fn machine_page(
    session: &Session,
    record: &Value,
    events: &Value,
    profiles: &Value,
    after: u64,
) -> Markup {
    let id = s(record, "id");
    let state = record.get("state").cloned().unwrap_or(Value::Null);
    let state_name = state
        .as_str()
        .map(str::to_owned)
        .or_else(|| state.as_object().and_then(|o| o.keys().next().cloned()))
        .unwrap_or_default();
    let facts = record.get("facts").cloned().unwrap_or(Value::Null);
    let conflicts = record
        .get("conflicts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let progress = record
        .get("progress")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let events = events
        .get("events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let profile_names: Vec<String> = profiles
        .as_array()
        .map(|a| a.iter().map(|p| s(p, "name").to_owned()).collect())
        .unwrap_or_default();
    let facts_json = serde_json::to_string_pretty(&facts).unwrap_or_default();
    layout(
        Some(session),
        id,
        html! {
            h1 { "Machine " code { (id) } " " span #state class={ "state state-" (state_name) } data-machine=(id) { (state_name) } }
            p.meta {
                "Site " b { (s(record, "site")) } " · first seen " (when(n(record, "first_seen_unix_ms")))
                " · last report " (when(n(record, "last_seen_unix_ms"))) " · " (n(record, "report_count")) " reports"
                " · power " (record.get("power").and_then(Value::as_str).unwrap_or(""))
            }
            @if let Some(err) = record.get("power_error").and_then(Value::as_str) { p.error { "Power: " (err) } }
            p.state-detail {
                @if !s(record, "profile").is_empty() { "Profile " b #profile-name { (s(record, "profile")) } " " }
                @if !s(record, "reason").is_empty() { span.error { "Failed: " (s(record, "reason")) } }
            }
            @if !progress.is_empty() {
                section #progress {
                    h2 { "Install progress" }
                    ol {
                        @for step in &progress {
                            li { (when(n(step, "at_unix_ms"))) " · " (s(step, "step")) }
                        }
                    }
                }
            }
            @if session.is_admin() {
                section.actions #actions {
                    h2 { "Actions" }
                    form method="post" action={ "/ui/machines/" (id) "/action" } {
                        (csrf_field(session))
                        input type="hidden" name="action" value="assign";
                        select #profile name="profile" {
                            @for p in &profile_names { option value=(p) { (p) } }
                        }
                        button #assign type="submit" { "Assign" }
                    }
                    form method="post" action={ "/ui/machines/" (id) "/action" } {
                        (csrf_field(session))
                        input type="hidden" name="action" value="release";
                        select #wipe name="wipe" {
                            option value="none" { "no wipe" }
                            option value="quick" { "quick wipe" }
                            option value="discard" { "full wipe (discard)" }
                        }
                        button #release type="submit" { "Release" }
                    }
                    form method="post" action={ "/ui/machines/" (id) "/action" } {
                        (csrf_field(session))
                        input type="hidden" name="action" value="reinstall";
                        button #reinstall type="submit" { "Reinstall" }
                    }
                    form method="post" action={ "/ui/machines/" (id) "/action" } data-confirm="Retire this machine?" {
                        (csrf_field(session))
                        input type="hidden" name="action" value="retire";
                        button #retire.danger type="submit" { "Retire" }
                    }
                    @if record.get("bmc").is_some_and(|b| !b.is_null()) {
                        form method="post" action={ "/ui/machines/" (id) "/action" } {
                            (csrf_field(session))
                            input type="hidden" name="action" value="power";
                            select name="power" {
                                option value="on" { "power on" }
                                option value="off" { "power off" }
                                option value="softoff" { "soft off" }
                                option value="cycle" { "power cycle" }
                            }
                            button #power type="submit" { "Power" }
                        }
                    }
                }
            }
            @if !conflicts.is_empty() {
                section.conflicts {
                    h2 { "Conflicts" }
                    ul { @for c in &conflicts {
                        li { (s(c, "fact")) " is also claimed by " a href={ "/ui/machines/" (s(c, "other_machine")) } { (s(c, "other_machine")) } }
                    } }
                }
            }
            section {
                h2 { "Hardware" }
                (fact_rows(&facts))
                details { summary { "Full report" } pre.report { (facts_json) } }
            }
            section {
                h2 { "Timeline" }
                table #timeline data-machine=(id) data-after=(after) {
                    thead { tr { th { "#" } th { "When (UTC)" } th { "Event" } th { "Detail" } } }
                    tbody {
                        @for e in events.iter().rev() { (event_row(e)) }
                    }
                }
            }
        },
    )
}

/// One row of a machine's timeline.
pub fn event_row(e: &Value) -> Markup {
    let kind = e
        .get("kind")
        .cloned()
        .and_then(|k| serde_json::from_value::<MachineEventKind>(k).ok());
    let (name, detail) = match &kind {
        Some(k) => (k.name().to_owned(), k.detail()),
        None => (
            "unknown".to_owned(),
            e.get("kind").map(Value::to_string).unwrap_or_default(),
        ),
    };
    html! {
        tr { td { (n(e, "seq")) } td { (when(n(e, "at_unix_ms"))) } td { (name) } td { (detail) } }
    }
}

/// `GET /ui/profiles` and `/ui/rules`.
pub fn documents_page(session: &Session, doc: Doc, listed: &Value) -> Markup {
    let items = listed.as_array().cloned().unwrap_or_default();
    layout(
        Some(session),
        doc.title(),
        html! {
            h1 { (doc.title()) }
            @if session.is_admin() { p { a.button #new href={ "/ui/" (doc.plural()) "/new" } { "New" } } }
            table #documents {
                thead { tr {
                    th { "Name" }
                    @match doc {
                        Doc::Profile => { th { "Method" } th { "Kernel / image" } th { "Description" } }
                        Doc::Rule => { th { "Priority" } th { "Profile" } th { "Enabled" } th { "Match" } }
                    }
                } }
                tbody {
                    @for d in &items {
                        tr {
                            td { a href={ "/ui/" (doc.plural()) "/" (s(d, "name")) } { (s(d, "name")) } }
                            @match doc {
                                Doc::Profile => {
                                    td { (s(d, "method")) }
                                    td { (s(d, "kernel")) (s(d, "image")) }
                                    td { (s(d, "description")) }
                                }
                                Doc::Rule => {
                                    td { (d.get("priority").and_then(Value::as_i64).unwrap_or(0)) }
                                    td { (s(d, "profile")) }
                                    td { (d.get("enabled").and_then(Value::as_bool).unwrap_or(true)) }
                                    td { code { (d.get("match").map(Value::to_string).unwrap_or_default()) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The TOML editor of a profile or rule, with the last `error` (TOML or validation,
/// naming its line) and, for a rule, a dry run's `preview`.
pub fn editor_page(
    session: &Session,
    doc: Doc,
    text: &str,
    error: Option<&str>,
    preview: Option<&Value>,
) -> Markup {
    let title = match doc {
        Doc::Profile => "Profile",
        Doc::Rule => "Rule",
    };
    layout(
        Some(session),
        title,
        html! {
            h1 { (title) }
            @if let Some(e) = error { pre.error #error { (e) } }
            @if let Some(p) = preview {
                section #preview {
                    h2 { "Dry run: " (p.get("machines").and_then(Value::as_array).map_or(0, Vec::len)) " machines would be assigned " (s(p, "profile")) }
                    ul { @for m in p.get("machines").and_then(Value::as_array).cloned().unwrap_or_default() {
                        @let id = m.as_str().unwrap_or("").to_owned();
                        li { a href={ "/ui/machines/" (id) } { (id) } }
                    } }
                }
            }
            form.editor method="post" action={ "/ui/" (doc.plural()) } {
                (csrf_field(session))
                textarea #toml name="toml" rows="28" spellcheck="false" readonly[!session.is_admin()] { (text) }
                @if session.is_admin() {
                    div.buttons {
                        button #save type="submit" name="op" value="save" { "Save" }
                        @if doc == Doc::Rule { button #dry-run type="submit" name="op" value="dry-run" { "Dry run" } }
                        button #delete.danger type="submit" name="op" value="delete" data-confirm="Delete it?" { "Delete" }
                    }
                }
            }
        },
    )
}

/// `GET /ui/sites`: each site, its edge and the images its cache holds.
pub fn sites_page(session: &Session, listed: &Value, images: &Value) -> Markup {
    let sites = listed.as_array().cloned().unwrap_or_default();
    let images = images.as_array().cloned().unwrap_or_default();
    let cached = |site: &str| -> Vec<String> {
        images
            .iter()
            .filter(|i| {
                i.get("sites")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(site)))
            })
            .map(|i| s(i, "name").to_owned())
            .collect()
    };
    layout(
        Some(session),
        "Sites",
        html! {
            h1 { "Sites" }
            table #sites {
                thead { tr { th { "Site" } th { "Edge" } th { "Version" } th { "Last heartbeat (UTC)" } th { "Registered" } th { "Cached images" } th { "Description" } } }
                tbody { @for site in &sites {
                    @let name = s(site, "name");
                    tr {
                        td { (name) }
                        td { span class={ "edge edge-" (s(site, "edge")) } { (s(site, "edge")) } }
                        td { (s(site, "edge_version")) }
                        td { (when(n(site, "last_heartbeat_unix_ms"))) }
                        td { (if site.get("registered").and_then(Value::as_bool).unwrap_or(false) { "yes" } else { "no" }) }
                        td { (cached(name).join(", ")) }
                        td { (s(site, "description")) }
                    }
                } }
            }
        },
    )
}

/// `GET /ui/images`: the registered images and (for admins) the upload form.
pub fn images_page(session: &Session, listed: &Value) -> Markup {
    let images = listed.as_array().cloned().unwrap_or_default();
    layout(
        Some(session),
        "Images",
        html! {
            h1 { "Images" }
            table #images {
                thead { tr { th { "Name" } th { "Kind" } th { "Size" } th { "SHA-256" } th { "Stored" } th { "Cached at" } } }
                tbody { @for i in &images {
                    tr {
                        td { (s(i, "name")) }
                        td { (s(i, "kind")) }
                        td { (bytes(n(i, "size"))) }
                        td { code { (s(i, "sha256")) } }
                        td { (if i.get("stored").and_then(Value::as_bool).unwrap_or(false) { "yes" } else { "no" }) }
                        td { (i.get("sites").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                    }
                } }
            }
            @if session.is_admin() {
                section.upload #upload {
                    h2 { "Upload" }
                    form #upload-form {
                        input #image-name type="text" name="name" placeholder="name (e.g. debian-12.raw)" required;
                        select #image-kind name="kind" {
                            option value="disk" { "disk image" }
                            option value="kernel" { "kernel" }
                            option value="initrd" { "initrd" }
                            option value="loader" { "boot loader" }
                        }
                        input #image-file type="file" name="file" required;
                        button #upload-button type="submit" { "Upload" }
                    }
                    progress #upload-progress max="100" value="0" {}
                    p #upload-status {}
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_vendor_is_text_not_markup() {
        let row = serde_json::json!({
            "id": "m1", "state": "discovered", "site": "lab1",
            "vendor": "<script>alert(1)</script>", "serial": "\"><img src=x onerror=alert(2)>",
            "macs": [], "cpus": 1, "memory_bytes": 1, "disks": 0, "power": "unknown"
        });
        let out = machine_row(&row).into_string();
        assert!(!out.contains("<script>"), "{out}");
        assert!(
            out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{out}"
        );
        assert!(!out.contains("<img"), "{out}");
    }

    #[test]
    fn viewers_get_no_action_forms() {
        let record =
            serde_json::json!({"id": "m1", "state": "discovered", "site": "s", "facts": {}});
        let viewer = Session::new("v".into(), Role::Viewer);
        let admin = Session::new("a".into(), Role::Admin);
        let v = machine_page(&viewer, &record, &Value::Null, &Value::Null, 0).into_string();
        let a = machine_page(&admin, &record, &Value::Null, &Value::Null, 0).into_string();
        assert!(!v.contains("/action"), "{v}");
        assert!(a.contains("/action"), "{a}");
        assert!(a.contains(&super::super::csrf_token("a")));
    }

    #[test]
    fn a_record_becomes_the_lists_row() {
        let record = serde_json::json!({
            "id": "m1", "state": "assigned", "profile": "p", "site": "s", "power": "on",
            "facts": {
                "dmi": {"sys_vendor": "Dell", "product_name": "R740", "product_serial": "SN1"},
                "cpu": {"threads": 0, "cores": 8},
                "memory": {"total_bytes": 1024},
                "disks": [{}, {}],
                "nics": [{"mac": "52:54:00:00:00:01"}, {"name": "x"}]
            }
        });
        let row = row_of_record(&record);
        assert_eq!(row["vendor"], "Dell");
        assert_eq!(row["serial"], "SN1");
        assert_eq!(row["cpus"], 8);
        assert_eq!(row["disks"], 2);
        assert_eq!(row["macs"], serde_json::json!(["52:54:00:00:00:01"]));
        let html = machine_row(&row).into_string();
        assert!(html.contains("id=\"m-m1\""), "{html}");
        assert!(html.contains("state-assigned"), "{html}");
        // A record with nothing in it still renders.
        let _ = machine_row(&row_of_record(&Value::Null)).into_string();
    }

    #[test]
    fn times_are_utc_civil() {
        assert_eq!(when(0), "");
        assert_eq!(when(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn sizes_are_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(8 * 1024 * 1024 * 1024), "8.0 GiB");
    }
}
