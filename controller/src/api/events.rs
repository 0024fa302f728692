//! `/api/v1/events`: the audit log (stream `EVENTS`), as a page or followed live
//! (server-sent events).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use substruct_wire::MachineId;

use super::openapi::{Unauthorized, Unavailable};
use super::{ApiError, ApiState, ErrorBody};
use crate::fleet::Fleet;
use crate::provision::ProvisionError;
use crate::record::MachineEventKind;
use crate::store::{EventFeed, EventStart, FeedItem, LoggedEvent};

/// Events in a page unless `limit` says otherwise.
pub const DEFAULT_EVENTS: usize = 100;
/// Most events in a page.
pub const MAX_EVENTS: usize = 1000;
/// How far back (in messages of every machine) a site's latest events are looked
/// for when no `after` is given: the log is keyed by machine, not by site.
pub const SITE_SCAN: u64 = 100_000;
/// How long a page waits for the next message of the backlog before ending.
const BACKLOG_QUIET: Duration = Duration::from_secs(5);
/// A comment line on an idle follow stream this often, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The query of `GET /api/v1/events`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventParams {
    /// Only this machine's events: a machine id, SMBIOS UUID, serial or MAC.
    machine: Option<String>,
    /// Only the events of the machines at this site.
    site: Option<String>,
    /// Events in the page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only events after this sequence number (a page's `last_seq`).
    after: Option<u64>,
    /// Keep the answer open and send each new event (`text/event-stream`).
    follow: Option<bool>,
}

/// A page of the log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct EventPage {
    events: Vec<LoggedEvent>,
    /// The sequence number of the last message looked at: `after` for the next page.
    last_seq: u64,
}

/// Which events a reader wants, past the subject filter.
struct Filter {
    site: Option<String>,
    fleet: Fleet,
}

impl Filter {
    fn admits(&self, logged: &LoggedEvent) -> bool {
        let Some(site) = &self.site else {
            return true;
        };
        // A report names its site; any other event belongs to where the machine is.
        match &logged.event.kind {
            MachineEventKind::Discovered { site: s }
            | MachineEventKind::Updated { site: s, .. } => s.as_str() == site,
            _ => self
                .fleet
                .site_of(logged.event.machine_id.as_str())
                .is_some_and(|s| &*s == site),
        }
    }
}

/// `GET /api/v1/events`: without `after`, the last `limit` events (of `machine`,
/// of the machines at `site`, or of all); with `after`, the first `limit` events
/// after that sequence number. Oldest first. With `follow=true` the same events, then
/// every new one, as server-sent events (`id:` is the sequence number; a
/// `Last-Event-ID` header resumes after it).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    summary = "The audit log",
    description = "Without `after`, the last `limit` events (of `machine`, of the machines \
        at `site`, or of all); with `after`, the first `limit` events after that sequence \
        number. Oldest first. With `follow=true` the same events, then every new one, as \
        server-sent events (`id:` is the sequence number; a `Last-Event-ID` header \
        resumes after it).",
    params(
        EventParams,
        ("Last-Event-ID" = Option<u64>, Header, description = "With `follow=true`: resume \
            after this sequence number (what a reconnecting `EventSource` sends)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the log, oldest first; with `follow=true` \
            a stream of server-sent events instead (`id:` the sequence number, `data:` one \
            `LoggedEvent` as JSON) that stays open",
            content(
                (EventPage = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, body = ErrorBody, description = "An unknown parameter, a limit outside \
            1–1000, or a `Last-Event-ID` that is not a sequence number"),
        (status = 401, response = Unauthorized),
        (status = 404, body = ErrorBody, description = "`machine` names no machine and is not \
            a well-formed machine id"),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn list_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    params: Result<axum::extract::Query<EventParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(params) = params.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_EVENTS);
    if !(1..=MAX_EVENTS).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_EVENTS}, not {limit}"
        )));
    }
    let follow = params.follow == Some(true);
    let resume = match headers.get("last-event-id") {
        Some(v) if follow => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be an event's sequence number".into())
                })?,
        ),
        _ => None,
    };
    let machine = match params.machine.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(reference) => Some(machine_id(&state, reference).await?),
    };
    let site = params.site.filter(|s| !s.is_empty());
    let fleet = if site.is_some() {
        super::current_fleet(&state).await?.clone()
    } else {
        state.provisioner.fleet().clone()
    };
    let after = params.after.or(resume);
    let start = match (after, &site) {
        (Some(seq), _) => EventStart::After(seq),
        (None, Some(_)) => EventStart::Last(SITE_SCAN),
        (None, None) => EventStart::Last(limit as u64),
    };
    // A follower takes a slot before its consumer exists, and keeps it while it is open.
    let slot = if follow {
        Some(state.followers.clone().try_acquire_owned().map_err(|_| {
            ApiError::Unavailable(format!(
                "too many event streams open (at most {} per controller); retry later",
                super::MAX_FOLLOWERS
            ))
        })?)
    } else {
        None
    };
    let mut feed = state.store.events(machine.as_ref(), start).await?;
    let filter = Filter { site, fleet };
    let (events, last_seq) = if follow && after.is_some() {
        // A follower resuming gets everything after its point, from the feed itself.
        (Vec::new(), 0)
    } else {
        backlog(&mut feed, &filter, limit, after.is_some()).await?
    };
    if !follow {
        return Ok(Json(EventPage { events, last_seq }).into_response());
    }
    let cancel = state.cancel.clone();
    let first = futures::stream::iter(events.into_iter().map(sse_event));
    let live = futures::stream::unfold(
        (feed, filter, slot),
        |(mut feed, filter, slot)| async move {
            loop {
                match feed.next().await? {
                    Ok(FeedItem::Event(e)) if filter.admits(&e) => {
                        return Some((sse_event(e), (feed, filter, slot)))
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "events follow stream ended");
                        return None;
                    }
                }
            }
        },
    );
    let stream = futures::StreamExt::take_until(
        futures::StreamExt::chain(first, live),
        cancel.cancelled_owned(),
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

fn sse_event(logged: LoggedEvent) -> Result<Event, Infallible> {
    let event = Event::default().id(logged.seq.to_string());
    Ok(event
        .json_data(&logged)
        .unwrap_or_else(|_| Event::default().comment("unencodable event")))
}

/// The backlog's events `filter` admits: the first `limit` (`forward`) or the last
/// `limit`, and the sequence number of the last message looked at.
async fn backlog(
    feed: &mut EventFeed,
    filter: &Filter,
    limit: usize,
    forward: bool,
) -> Result<(Vec<LoggedEvent>, u64), ApiError> {
    let mut kept: VecDeque<LoggedEvent> = VecDeque::with_capacity(limit.min(64));
    let mut last_seq = 0;
    while feed.in_backlog() {
        // A backlog message gone meanwhile (aged out) would leave the read waiting
        // for the next new event: a quiet log ends the page instead.
        let Ok(Some(item)) = tokio::time::timeout(BACKLOG_QUIET, feed.next()).await else {
            break;
        };
        let item = item?;
        last_seq = item.seq();
        if let FeedItem::Event(e) = item {
            if filter.admits(&e) {
                if kept.len() == limit {
                    if forward {
                        // The last one looked at is the one before this.
                        last_seq = kept.back().map_or(last_seq, |e| e.seq);
                        break;
                    }
                    kept.pop_front();
                }
                kept.push_back(e);
            }
        }
    }
    Ok((kept.into(), last_seq))
}

/// The machine a reference names; a well-formed id is taken as it is (a retired or
/// deleted machine's events stay in the log).
async fn machine_id(state: &ApiState, reference: &str) -> Result<MachineId, ApiError> {
    match state.provisioner.find(reference).await {
        Ok((record, _)) => Ok(record.id),
        Err(ProvisionError::UnknownMachine(_)) => {
            MachineId::new(reference).map_err(|_| ApiError::NotFound(reference.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}
