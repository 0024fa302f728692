//! Power results on their way to the controller: a bounded in-memory queue, each result
//! sent as a request on `substruct.v1.{site}.power.result` and retried with backoff
//! until a controller acknowledges it ([`PowerAck`]) or refuses it. A result of an
//! operation that finished during a WAN cut waits here and is delivered after the heal;
//! the controller applies it once (by request id) however often it arrives.

use std::time::Duration;

use substruct_runtime::backoff::Backoff;
use substruct_runtime::error_chain;
use substruct_wire::messages::{ErrorCode, ErrorReply};
use substruct_wire::power_msg::{PowerAck, PowerResult};
use substruct_wire::{subjects, MessageKind, SiteId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most results waiting; beyond it new ones are dropped (logged).
pub const RESULT_QUEUE_LEN: usize = 1024;
/// How long one delivery attempt waits for the controller.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The front of the queue (cheap to clone).
#[derive(Debug, Clone)]
pub struct ResultSender {
    tx: mpsc::Sender<PowerResult>,
}

impl ResultSender {
    /// Queues a result; never waits.
    pub fn send(&self, result: PowerResult) {
        if let Err(e) = self.tx.try_send(result) {
            let result = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            tracing::warn!(machine = %result.machine_id, request = %result.request_id,
                "power result queue is full or stopped; result dropped");
        }
    }
}

/// The back of the queue: run it as a task.
#[derive(Debug)]
pub struct ResultQueue {
    site: SiteId,
    client: async_nats::Client,
    rx: mpsc::Receiver<PowerResult>,
    /// First retry delay (jittered), doubling up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl ResultQueue {
    /// A queue for `site` over `client`, holding at most `len` results.
    pub fn new(site: SiteId, client: async_nats::Client, len: usize) -> (ResultSender, Self) {
        let (tx, rx) = mpsc::channel(len.max(1));
        let queue = Self {
            site,
            client,
            rx,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
        };
        (ResultSender { tx }, queue)
    }

    /// Delivers queued results in order until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.rx.recv() => r,
            };
            let Some(result) = result else { return };
            if !self.deliver(&result, &cancel).await {
                return;
            }
        }
    }

    /// Retries one result until answered; false when cancelled first.
    async fn deliver(&self, result: &PowerResult, cancel: &CancellationToken) -> bool {
        let payload = match substruct_wire::encode(result) {
            Ok(p) => bytes::Bytes::from(p),
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "cannot encode a power result; dropped");
                return true;
            }
        };
        let mut backoff = Backoff::new(self.min_backoff, self.max_backoff);
        loop {
            let request = async_nats::Request::new()
                .payload(payload.clone())
                .timeout(Some(DELIVERY_TIMEOUT));
            let sent = tokio::select! {
                _ = cancel.cancelled() => return false,
                r = tokio::time::timeout(
                    DELIVERY_TIMEOUT + Duration::from_millis(500),
                    self.client.send_request(subjects::power_result(&self.site), request),
                ) => r,
            };
            match sent {
                Ok(Ok(reply)) => match answer(&reply.payload) {
                    Ok(()) => {
                        tracing::info!(machine = %result.machine_id, request = %result.request_id,
                            "power result acknowledged");
                        return true;
                    }
                    Err((Some(ErrorCode::Unavailable), message)) => {
                        tracing::debug!(request = %result.request_id, %message,
                            "the controller cannot record the power result yet");
                    }
                    Err((_, message)) => {
                        tracing::warn!(machine = %result.machine_id, request = %result.request_id,
                            %message, "the controller refused the power result; dropped");
                        return true;
                    }
                },
                Ok(Err(e)) => {
                    tracing::debug!(request = %result.request_id, error = %e, "power result not delivered")
                }
                Err(_) => {
                    tracing::debug!(request = %result.request_id, "power result not answered")
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// `Ok` for a [`PowerAck`]; the code and reason of an [`ErrorReply`], or the reason an
/// answer does not decode.
fn answer(bytes: &[u8]) -> Result<(), (Option<ErrorCode>, String)> {
    let undecodable = |e: substruct_wire::WireError| (None, error_chain(&e));
    let env = substruct_wire::peek(bytes).map_err(undecodable)?;
    if env.kind == MessageKind::ErrorReply {
        let e = substruct_wire::decode::<ErrorReply>(bytes).map_err(undecodable)?;
        return Err((Some(e.code), e.message));
    }
    substruct_wire::decode::<PowerAck>(bytes)
        .map(|_| ())
        .map_err(undecodable)
}
