//! Power control at the edge: the site's BMCs, driven from the site, so power keeps
//! working while the WAN is down.
//!
//! * [`table`] mirrors the site's BMC settings (KV `bmc`) into a table and a disk copy;
//! * [`executor`] runs every BMC operation: one at a time per BMC, at most
//!   `max_sessions` sessions for the site, bounded retries with backoff, the last error
//!   kept; [`driver`] is the BMC behind one interface (the `substruct-bmc` drivers);
//! * [`serve`] answers power requests (`substruct.v1.{site}.power`, the site's edges in
//!   a queue group) and polls every BMC's state, reporting changes;
//! * [`results`] queues results for the controller until it acknowledges them, so a
//!   result of an operation finished during a WAN cut arrives after the heal.

pub mod driver;
pub mod executor;
pub mod results;
pub mod serve;
pub mod table;

use std::time::Duration;

pub use driver::{BmcConnector, Connector, Session};
pub use executor::{Executor, ExecutorSettings, Outcome};
pub use results::{ResultQueue, ResultSender, RESULT_QUEUE_LEN};
pub use serve::{PowerService, SERVE_IN_FLIGHT};
pub use table::{BmcBucket, BmcCache, BmcTable};

/// Default BMC sessions open at once per site (`[power] max_sessions`).
pub const DEFAULT_MAX_SESSIONS: usize = 4;
/// Default interval of the status poll of every BMC (`[power] poll_interval`).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Most BMCs one poll round reads; the rest wait for the next round.
pub const MAX_POLLED: usize = 1024;

/// The `[power]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerSettings {
    /// BMC sessions open at once for the site (at least 1).
    pub max_sessions: usize,
    /// Attempts per operation (at least 1).
    pub attempts: u32,
    /// Bound of one exchange with a BMC.
    pub bmc_timeout: Duration,
    /// How often every BMC's state is read; `None`: never.
    pub poll_interval: Option<Duration>,
}

impl Default for PowerSettings {
    fn default() -> Self {
        Self {
            max_sessions: DEFAULT_MAX_SESSIONS,
            attempts: 3,
            bmc_timeout: Duration::from_secs(3),
            poll_interval: Some(DEFAULT_POLL_INTERVAL),
        }
    }
}

impl PowerSettings {
    /// The executor's part.
    pub fn executor(&self) -> ExecutorSettings {
        ExecutorSettings {
            max_sessions: self.max_sessions.max(1),
            attempts: self.attempts.max(1),
            bmc_timeout: self.bmc_timeout,
            ..ExecutorSettings::default()
        }
    }
}

/// `state_dir/bmc.json`: the disk copy of the site's BMC settings (mode 0600).
pub fn cache_path(config: &crate::config::EdgeConfig) -> std::path::PathBuf {
    config.state_dir.join("bmc.json")
}

/// Loads the disk copy of the site's BMC settings (empty when missing or unusable,
/// logged): what the edge drives BMCs from while NATS is unreachable.
pub fn load_table(config: &crate::config::EdgeConfig) -> (BmcTable, BmcCache) {
    let cache = BmcCache::new(cache_path(config), config.site.clone());
    let table = match cache.load() {
        Ok(t) => {
            tracing::info!(path = %cache.path.display(), bmcs = t.len(), "loaded the BMC settings cache");
            t
        }
        Err(e) => {
            tracing::warn!(error = %substruct_runtime::error_chain(&e), "BMC settings cache unusable; starting with none");
            BmcTable::new()
        }
    };
    (table, cache)
}

/// Starts the site's power control on `tracker`: the `bmc` mirror, the request service,
/// the result queue and the status poll. A failed subscription is logged (power
/// requests then get "no responders" at the controller); the rest keeps running.
pub async fn spawn(
    client: async_nats::Client,
    config: &crate::config::EdgeConfig,
    (table, cache): (BmcTable, BmcCache),
    tracker: &tokio_util::task::TaskTracker,
    cancel: tokio_util::sync::CancellationToken,
) {
    let site = config.site.clone();
    let watch =
        table::WatchSettings::new(site.clone(), cache).with_js_domain(config.js_domain.clone());
    tracker.spawn(crate::kv_mirror::watch(
        client.clone(),
        watch,
        table.clone(),
        cancel.clone(),
    ));
    let (results, queue) = ResultQueue::new(site.clone(), client.clone(), RESULT_QUEUE_LEN);
    tracker.spawn(queue.run(cancel.clone()));
    let executor = Executor::new(BmcConnector, config.power.executor());
    let service = PowerService::new(
        site.clone(),
        table,
        executor,
        results,
        client.clone(),
        config.js_domain.clone(),
    );
    if let Some(interval) = config.power.poll_interval {
        tracker.spawn(service.clone().poll(interval, cancel.clone()));
    }
    match substruct_runtime::serve::Requests::subscribe(
        &client,
        substruct_wire::subjects::power(&site),
        substruct_wire::subjects::EDGE_POWER_QUEUE,
    )
    .await
    {
        Ok(requests) => {
            tracker.spawn(service.serve(requests, cancel, tracker.clone()));
        }
        Err(e) => {
            tracing::error!(error = %substruct_runtime::error_chain(&e), "power requests are not served")
        }
    }
}
