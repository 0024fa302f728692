//! Reading the audit log, stream `EVENTS`: a backlog (the last events, or those after a
//! sequence number), then, for a follower, every event as it is published.

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use substruct_wire::{subjects, MachineId};

use super::{BoxError, Store, StoreError};
use crate::record::MachineEvent;

/// An event as the log holds it: its stream sequence number (a reader's resume point)
/// and the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoggedEvent {
    pub seq: u64,
    #[serde(flatten)]
    pub event: MachineEvent,
}

/// Where a feed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStart {
    /// After this sequence number (0: from the oldest event kept).
    After(u64),
    /// The last `n` messages of the stream (of every machine; a per-machine feed
    /// starts at the oldest event kept instead).
    Last(u64),
}

/// Events in sequence order: first the backlog that was there when the feed opened,
/// then new ones as they are published (an ephemeral ordered consumer, removed by
/// the server when the feed is dropped).
pub struct EventFeed {
    messages: pull::Ordered,
    /// The sequence number of the backlog's last message (0: no backlog).
    end: u64,
    /// The sequence number of the last message read.
    last: u64,
}

impl std::fmt::Debug for EventFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFeed")
            .field("end", &self.end)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

/// The next message of a feed.
#[derive(Debug)]
pub enum FeedItem {
    Event(LoggedEvent),
    /// A message that is not a [`MachineEvent`] (logged and passed over); its sequence.
    Unreadable(u64),
}

impl FeedItem {
    pub fn seq(&self) -> u64 {
        match self {
            Self::Event(e) => e.seq,
            Self::Unreadable(seq) => *seq,
        }
    }
}

fn read_err(key: String, e: impl Into<BoxError>) -> StoreError {
    StoreError::Read {
        bucket: subjects::STREAM_EVENTS,
        key,
        source: e.into(),
    }
}

impl Store {
    /// Opens a feed of the audit log: every machine's events, or `machine`'s only.
    pub async fn events(
        &self,
        machine: Option<&MachineId>,
        start: EventStart,
    ) -> Result<EventFeed, StoreError> {
        let filter = match machine {
            Some(id) => subjects::machine_event(id),
            None => subjects::machine_events_all(),
        };
        let stream = self
            .js
            .get_stream(subjects::STREAM_EVENTS)
            .await
            .map_err(|e| read_err(filter.clone(), e))?;
        let state = stream.cached_info().state.clone();
        let first = state.first_sequence.max(1);
        let start_sequence = match start {
            EventStart::After(seq) => seq.saturating_add(1).max(first),
            EventStart::Last(_) if machine.is_some() => first,
            EventStart::Last(n) => state
                .last_sequence
                .saturating_sub(n)
                .saturating_add(1)
                .max(first),
        };
        // The backlog ends at the last message there now (a consumer's own pending
        // count is an estimate, seen off by one or two on a fresh consumer).
        let end = match machine {
            None => state.last_sequence,
            Some(_) => {
                use async_nats::jetstream::stream::LastRawMessageErrorKind;
                match stream.get_last_raw_message_by_subject(&filter).await {
                    Ok(m) => m.sequence,
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
                    Err(e) => return Err(read_err(filter.clone(), e)),
                }
            }
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
                description: Some("substruct-controller events reader".to_owned()),
                ..Default::default()
            })
            .await
            .map_err(|e| read_err(filter.clone(), e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| read_err(filter.clone(), e))?;
        Ok(EventFeed {
            messages,
            // Nothing to read before `start_sequence`.
            end: if end < start_sequence { 0 } else { end },
            last: 0,
        })
    }
}

impl EventFeed {
    /// True while the messages that were there when the feed opened are not all read.
    pub fn in_backlog(&self) -> bool {
        self.last < self.end
    }

    /// The next message (waiting for one past the backlog); `None` once the stream
    /// is gone.
    pub async fn next(&mut self) -> Option<Result<FeedItem, StoreError>> {
        let message = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(read_err(subjects::machine_events_all(), e))),
        };
        let seq = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => return Some(Err(read_err(message.subject.to_string(), e))),
        };
        self.last = seq;
        Some(Ok(
            match serde_json::from_slice::<MachineEvent>(&message.payload) {
                Ok(event) => FeedItem::Event(LoggedEvent { seq, event }),
                Err(e) => {
                    tracing::warn!(seq, subject = %message.subject, error = %e, "an EVENTS message is not a machine event; passed over");
                    FeedItem::Unreadable(seq)
                }
            },
        ))
    }
}
