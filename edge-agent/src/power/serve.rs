//! The edge's power service: answers power requests for its site and polls its BMCs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use substruct_runtime::serve::{serve_requests, ReplyPolicy, Requests, ServeOptions};
use substruct_wire::messages::{ErrorCode, ErrorReply};
use substruct_wire::power::PowerState;
use substruct_wire::power_msg::{bounded_text, BmcSettings, PowerOp, PowerRequest, PowerResult};
use substruct_wire::{subjects, MachineId, PowerRequestId, SiteId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::driver::Connector;
use super::executor::{Executor, Outcome};
use super::results::ResultSender;
use super::table::{self, BmcTable};
use super::MAX_POLLED;

/// Power requests handled at once (they queue per BMC and under the site cap inside).
pub const SERVE_IN_FLIGHT: usize = 64;

/// What the power service answers from (cheap to clone).
#[derive(Debug, Clone)]
pub struct PowerService<C> {
    /// The site served.
    pub site: SiteId,
    /// The site's BMC settings.
    pub table: BmcTable,
    /// The operations.
    pub executor: Executor<C>,
    /// Where results go for the controller.
    pub results: ResultSender,
    /// NATS, for direct reads of settings the mirror does not hold yet.
    pub client: async_nats::Client,
    /// The hub's JetStream domain behind a leaf node.
    pub js_domain: Option<String>,
    /// The last (state, error) reported per machine: the poll reports changes only.
    last: Arc<Mutex<HashMap<MachineId, Reported>>>,
}

/// What was last reported of a machine: its state and error.
type Reported = (PowerState, Option<String>);

/// A fresh edge-made request id (for poll reports): `e-` and 24 hex digits.
fn edge_request_id() -> PowerRequestId {
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    PowerRequestId::new(format!("e-{}", hex::encode(bytes)))
        .unwrap_or_else(|_| unreachable!("hex request id is valid"))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl<C: Connector> PowerService<C> {
    /// A service for `site`.
    pub fn new(
        site: SiteId,
        table: BmcTable,
        executor: Executor<C>,
        results: ResultSender,
        client: async_nats::Client,
        js_domain: Option<String>,
    ) -> Self {
        Self {
            site,
            table,
            executor,
            results,
            client,
            js_domain,
            last: Arc::default(),
        }
    }

    /// Serves `requests` (subscribed to [`subjects::power`] in
    /// [`subjects::EDGE_POWER_QUEUE`]) until `cancel`.
    pub async fn serve(self, requests: Requests, cancel: CancellationToken, tracker: TaskTracker) {
        let options = ServeOptions {
            name: "power",
            max_in_flight: SERVE_IN_FLIGHT,
            reply: ReplyPolicy::SiteInbox,
        };
        let client = self.client.clone();
        serve_requests(client, requests, options, cancel, tracker, move |msg| {
            let service = self.clone();
            async move { service.answer(msg.subject.as_str(), &msg.payload).await }
        })
        .await;
    }

    /// The answer to one request on `subject`: a [`PowerResult`] once the operation
    /// ended, or an [`ErrorReply`]. Actions' results, and status reads that differ from
    /// the last one reported, also go to the result queue.
    pub async fn answer(&self, subject: &str, payload: &[u8]) -> Vec<u8> {
        let refuse = |code, message: String| {
            tracing::warn!(subject, %message, "power request refused");
            substruct_wire::encode(&ErrorReply { code, message }).unwrap_or_default()
        };
        let request = match substruct_wire::decode::<PowerRequest>(payload) {
            Ok(r) => r,
            Err(e) => {
                return refuse(
                    ErrorCode::Malformed,
                    format!(
                        "not a power request: {}",
                        substruct_runtime::error_chain(&e)
                    ),
                )
            }
        };
        if request.site != self.site || subjects::site_of(subject) != Some(self.site.as_str()) {
            return refuse(
                ErrorCode::WrongSite,
                format!(
                    "power request for site {} reached site {}",
                    request.site, self.site
                ),
            );
        }
        let Some(bmc) = self.settings(&request.machine_id).await else {
            return refuse(
                ErrorCode::Forbidden,
                format!(
                    "site {} holds no BMC settings for machine {}",
                    self.site, request.machine_id
                ),
            );
        };
        tracing::info!(machine = %request.machine_id, request = %request.request_id, op = %request.op,
            next_boot = ?request.next_boot, by = %request.by, "power request");
        let outcome = self.executor.run(&bmc, request.op, request.next_boot).await;
        let result = self.result(
            &request.machine_id,
            request.request_id,
            request.op,
            &request.by,
            outcome,
        );
        // A status read goes to the queue too when it tells something new, so the record
        // learns it even if this reply is lost (the poll would not: it is remembered).
        let changed = self.remember(&result);
        if matches!(request.op, PowerOp::Act(_)) || result.cert_pin.is_some() || changed {
            self.results.send(result.clone());
        }
        substruct_wire::encode(&result).unwrap_or_default()
    }

    fn result(
        &self,
        machine: &MachineId,
        request_id: PowerRequestId,
        op: PowerOp,
        by: &str,
        outcome: Outcome,
    ) -> PowerResult {
        PowerResult {
            site: self.site.clone(),
            request_id,
            machine_id: machine.clone(),
            op,
            state: outcome.state,
            error: outcome.error.as_deref().map(bounded_text),
            attempts: outcome.attempts,
            cert_pin: outcome.cert_pin,
            by: bounded_text(by),
            at_unix_ms: unix_ms(),
        }
    }

    /// Notes what was reported; true when it differs from the last report.
    fn remember(&self, result: &PowerResult) -> bool {
        let now = (result.state, result.error.clone());
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.insert(result.machine_id.clone(), now.clone()) != Some(now)
    }

    /// The machine's settings: the mirror's, else a direct read.
    async fn settings(&self, machine: &MachineId) -> Option<BmcSettings> {
        if let Some(s) = self.table.get(machine) {
            return Some(s);
        }
        table::fetch(&self.client, self.js_domain.as_deref(), &self.site, machine).await
    }

    /// Reads every BMC's state every `interval` (at most [`MAX_POLLED`] a round, through
    /// the executor, so polls queue behind operations and under the site cap) and
    /// queues a result for each change of state or error.
    pub async fn poll(self, interval: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut bmcs: Vec<_> = self.table.snapshot().into_iter().collect();
            bmcs.sort_by(|a, b| a.0.cmp(&b.0));
            bmcs.truncate(MAX_POLLED);
            let reads = bmcs.into_iter().map(|(machine, bmc)| {
                let service = self.clone();
                async move {
                    let outcome = service.executor.run(&bmc, PowerOp::Status, None).await;
                    let result = service.result(&machine, edge_request_id(), PowerOp::Status, "edge poll", outcome);
                    if service.remember(&result) {
                        tracing::info!(%machine, state = %result.state, error = ?result.error, "power state changed");
                        service.results.send(result);
                    }
                }
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = futures::future::join_all(reads) => {}
            }
        }
    }
}
