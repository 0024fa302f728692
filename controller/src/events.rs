//! The controller's NATS subscriptions besides discover: callbacks (request/reply)
//! and site events (edge heartbeats), and the periodic upkeep.

use std::sync::Arc;

use substruct_runtime::serve::{next_message, serve_requests, ReplyPolicy, Requests, ServeOptions};
use substruct_wire::messages::{SiteEvent, SiteEventKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::provision::{answer_callback, Provisioner};
use crate::sites::EdgeStatus;
use crate::store::{Docs, Store};

/// Answers callback requests (queue group: one controller answers each), at most
/// [`MAX_CALLBACKS_IN_FLIGHT`] at once (the shared loop, [`serve_requests`]).
pub(crate) async fn serve_callbacks(
    client: async_nats::Client,
    requests: Requests,
    provisioner: Provisioner,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let options = ServeOptions {
        name: "callback",
        max_in_flight: MAX_CALLBACKS_IN_FLIGHT,
        reply: ReplyPolicy::SiteInbox,
    };
    serve_requests(client, requests, options, cancel, tracker, move |msg| {
        let provisioner = provisioner.clone();
        async move { answer_callback(&provisioner, msg.subject.as_str(), &msg.payload).await }
    })
    .await;
}

/// Callbacks handled at once by one controller. A callback is a few KV reads and one
/// compare-and-set write; beyond this many, new ones wait in the subscription.
pub const MAX_CALLBACKS_IN_FLIGHT: usize = 64;

/// Records edge heartbeats in KV `site_status`; other site events are logged.
pub(crate) async fn serve_site_events(
    mut subscriber: async_nats::Subscriber,
    store: Store,
    config: Arc<Config>,
    cancel: CancellationToken,
) {
    while let Some(msg) = next_message(&mut subscriber, &cancel).await {
        let event = match substruct_wire::decode::<SiteEvent>(&msg.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %crate::error_chain(&e), "malformed site event");
                continue;
            }
        };
        if substruct_wire::subjects::site_of(msg.subject.as_str()) != Some(event.site.as_str())
            || !config.site_is_known(&event.site)
        {
            tracing::warn!(subject = %msg.subject, site = %event.site, "site event from the wrong or an unknown site");
            continue;
        }
        match event.event {
            SiteEventKind::Heartbeat { version } => {
                let version: String = version.chars().take(64).collect();
                update_status(&store, &event.site, |s| {
                    s.version = version.clone();
                    s.last_heartbeat_unix_ms = crate::now_unix_ms();
                })
                .await;
            }
            SiteEventKind::Cache { sha256 } => {
                // Each digest was checked when the event decoded.
                let mut cached: Vec<_> = sha256.into_iter().take(10_000).collect();
                cached.sort();
                cached.dedup();
                update_status(&store, &event.site, |s| s.cached = cached.clone()).await;
            }
            SiteEventKind::Lease { mac, ip } => {
                tracing::debug!(site = %event.site, %mac, ip = ?ip, "lease");
            }
            SiteEventKind::Fetch { mac, path } => {
                tracing::debug!(site = %event.site, mac = ?mac, path, "fetch");
            }
        }
    }
}

/// Read-modify-write of one site's status (compare-and-set, a few attempts).
async fn update_status(
    store: &Store,
    site: &substruct_wire::SiteId,
    edit: impl Fn(&mut EdgeStatus),
) {
    for _ in 0..8 {
        let (mut status, expected) = match store
            .doc_get::<EdgeStatus>(Docs::SiteStatus, site.as_str())
            .await
        {
            Ok(Some((s, rev))) => (s, rev),
            Ok(None) => (EdgeStatus::default(), 0),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot read a site's status");
                return;
            }
        };
        edit(&mut status);
        match store
            .doc_put(Docs::SiteStatus, site.as_str(), &status, Some(expected))
            .await
        {
            Ok(crate::store::Write::Done(_)) => return,
            Ok(crate::store::Write::Lost) => continue,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot record a site's status");
                return;
            }
        }
    }
}

/// Once the machine list is loaded, syncs every machine's boot intents once (the
/// rules need no upkeep: a KV watch feeds them, [`crate::provision::RulesCache::follow`]);
/// then, every [`OWED_CHECK`], finishes the changes left owing for a whole period.
pub(crate) async fn maintain(provisioner: Provisioner, cancel: CancellationToken) {
    let sweep = async {
        let mut backoff = substruct_runtime::backoff::Backoff::new(
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(10),
        );
        loop {
            let loaded = provisioner
                .fleet()
                .catch_up(provisioner.store(), std::time::Duration::from_secs(60))
                .await;
            let result = match loaded {
                Ok(()) => provisioner
                    .sync_all()
                    .await
                    .map_err(|e| crate::error_chain(&e)),
                Err(e) => Err(crate::error_chain(&e)),
            };
            match result {
                Ok(sweep) => {
                    tracing::info!(
                        machines = sweep.checked,
                        synced = sweep.synced,
                        "boot intents checked"
                    );
                    return;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "start-up sync failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => return,
        () = sweep => {}
    }
    // A change whose controller died (or whose store writes failed) and that no report,
    // callback or admin action touched since: finished here once it has been owed for
    // a whole period (a change in progress owes for milliseconds).
    let mut seen: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(OWED_CHECK) => {}
        }
        let owed = provisioner.fleet().owed();
        for id in owed.iter().filter(|id| seen.binary_search(id).is_ok()) {
            let Ok(id) = substruct_wire::MachineId::new(id.as_str()) else {
                continue;
            };
            if let Err(e) = provisioner.sync_id(&id).await {
                tracing::warn!(machine = %id, error = %crate::error_chain(&e), "cannot finish what a change owes yet");
            }
        }
        seen = owed;
    }
}

/// How often machines whose changes owe side effects are looked for.
const OWED_CHECK: std::time::Duration = std::time::Duration::from_secs(30);
