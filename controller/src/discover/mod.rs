//! Discover requests: prospectors report hardware on `substruct.v1.{site}.discover`;
//! the controller checks the request ([`check_request`], pure), finds or creates the
//! machine ([`Inventory::ingest`]: matching + compare-and-set writes), and replies with a
//! `DiscoverReply` only once the record is durable, or with an `ErrorReply`.
//!
//! Controllers share the subject through the [`subjects::CONTROLLER_QUEUE`] queue
//! group; each one handles at most `max_in_flight` requests at once.

mod check;
mod ingest;
mod rate;

pub use check::{check_limits, check_request, Refusal};
pub use ingest::{IngestError, Ingested, Inventory};
use rate::rate_limited;
pub use rate::SiteRates;

use std::sync::Arc;
use std::time::Instant;

use substruct_runtime::serve::{serve_requests, ReplyPolicy, Requests, ServeOptions};
use substruct_wire::messages::{DiscoverReply, DiscoverRequest, ErrorReply, Instruction};
use substruct_wire::subjects;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::provision::Provisioner;

/// A request slower than this is logged.
const SLOW: std::time::Duration = std::time::Duration::from_secs(1);

async fn timed_ingest(
    inventory: &Inventory,
    subject: &str,
    request: DiscoverRequest,
) -> Result<Ingested, IngestError> {
    let started = std::time::Instant::now();
    let result = inventory
        .ingest(
            &request.site,
            request.report,
            request.boot_token.as_ref(),
            crate::now_unix_ms(),
        )
        .await;
    if started.elapsed() > SLOW {
        tracing::warn!(subject, elapsed = ?started.elapsed(), "slow discover request");
    }
    result
}

/// Answers one raw request: the encoded reply (`DiscoverReply` or `ErrorReply`).
pub(crate) async fn answer(
    inventory: &Inventory,
    provisioner: &Provisioner,
    config: &Config,
    rates: &SiteRates,
    subject: &str,
    payload: &[u8],
) -> Vec<u8> {
    let started = Instant::now();
    let site = subjects::site_of(subject).unwrap_or_default();
    let checked = match rates.check(site, Instant::now(), &config.limits) {
        Ok(()) => check_request(subject, payload, config),
        Err(wait) => {
            tracing::warn!(subject, retry_after = ?wait, "discover request over the site's rate limit");
            let refused = rate_limited(wait);
            Err(Refusal::new(refused.code, refused.message))
        }
    };
    let reply = match checked {
        Err(refusal) => {
            tracing::warn!(subject, code = ?refusal.code, message = %refusal.message, "discover request refused");
            Err(ErrorReply {
                code: refusal.code,
                message: refusal.message,
            })
        }
        Ok(request) => match timed_ingest(inventory, subject, request).await {
            Ok(done) => match provisioner.after_report(done.record).await {
                Ok(instruction) => Ok(DiscoverReply {
                    machine_id: done.machine_id,
                    instruction,
                }),
                Err(e) => {
                    // The report is stored; what to do next is not decided. The
                    // prospector waits and hears on its command subject.
                    tracing::error!(machine = %done.machine_id, error = %crate::error_chain(&e), "cannot decide the next step");
                    Ok(DiscoverReply {
                        machine_id: done.machine_id,
                        instruction: Instruction::Wait,
                    })
                }
            },
            Err(e) => {
                let message = crate::error_chain(&e);
                if matches!(e, IngestError::NoIdentity | IngestError::Unproven { .. }) {
                    tracing::warn!(subject, error = %message, "discover request refused");
                } else {
                    tracing::error!(subject, error = %message, "cannot store a discover report");
                }
                Err(ErrorReply {
                    code: e.code(),
                    message,
                })
            }
        },
    };
    let result = match &reply {
        Ok(_) => "ok".to_owned(),
        Err(r) => crate::metrics::code_label(r.code),
    };
    provisioner
        .store()
        .metrics()
        .report(&result, started.elapsed());
    let encoded = match &reply {
        Ok(r) => substruct_wire::encode(r),
        Err(r) => substruct_wire::encode(r),
    };
    encoded.unwrap_or_else(|e| {
        // Only a reply larger than 1 MiB could fail; send an empty body rather
        // than nothing, so the requester does not wait for its timeout.
        tracing::error!(error = %crate::error_chain(&e), "cannot encode a discover reply");
        Vec::new()
    })
}

/// Serves discover requests until `cancel`; one task per request, at most
/// `config.max_in_flight` at once, spawned on `tracker` (the shared loop,
/// [`serve_requests`]).
pub(crate) async fn serve(
    client: async_nats::Client,
    requests: Requests,
    inventory: Inventory,
    provisioner: Provisioner,
    config: Arc<Config>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let options = ServeOptions {
        name: "discover",
        max_in_flight: config.max_in_flight,
        reply: ReplyPolicy::SiteInbox,
    };
    // One reference count per request, not a clone of every handle.
    let shared = Arc::new((inventory, provisioner, config, SiteRates::default()));
    serve_requests(client, requests, options, cancel, tracker, move |msg| {
        let shared = shared.clone();
        // Boxed: the answer's state machine is large; the task holds a pointer to it.
        Box::pin(async move {
            let (inventory, provisioner, config, rates) = &*shared;
            answer(
                inventory,
                provisioner,
                config,
                rates,
                msg.subject.as_str(),
                &msg.payload,
            )
            .await
        })
    })
    .await;
}
