//! [`serve_requests`]: the one NATS request-serving loop. A service subscribes to a
//! subject in a queue group ([`Requests::subscribe`], so each request is answered by one
//! member of the group), then [`serve_requests`] takes requests one by one, drops those
//! it cannot answer (no reply subject, one that is not a plain subject, or one its
//! [`ReplyPolicy`] refuses), runs the handler for each on a [`TaskTracker`] with at most `max_in_flight` at once, and
//! publishes the handler's bytes as the reply — until a [`CancellationToken`] fires.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt as _;
use substruct_wire::subjects;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a request subscription could not be made.
#[derive(Debug, thiserror::Error)]
#[error("subscribing to {subject} (queue group {queue})")]
pub struct SubscribeError {
    /// The subject.
    pub subject: String,
    /// The queue group.
    pub queue: String,
    /// The client's error.
    #[source]
    pub source: async_nats::SubscribeError,
}

/// A queue-group subscription to requests, made before serving starts (so a service
/// that returns "ready" is really subscribed).
#[derive(Debug)]
pub struct Requests {
    subscriber: async_nats::Subscriber,
}

impl Requests {
    /// Subscribes to `subject` in queue group `queue`.
    pub async fn subscribe(
        client: &async_nats::Client,
        subject: String,
        queue: &str,
    ) -> Result<Self, SubscribeError> {
        match client
            .queue_subscribe(subject.clone(), queue.to_owned())
            .await
        {
            Ok(subscriber) => Ok(Self { subscriber }),
            Err(source) => Err(SubscribeError {
                subject,
                queue: queue.to_owned(),
                source,
            }),
        }
    }
}

/// Which reply subjects a service publishes to. The reply subject is chosen by the
/// requester, and the service publishes with its own (broad) permissions: a reply to
/// `$KV.machines.X` would be a KV write. So a service answering other parties says
/// where its replies may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyPolicy {
    /// Any plain subject ([`subjects::is_reply_subject`]): for requesters the service
    /// trusts as much as itself.
    AnyPlain,
    /// Only the inbox of the site the request subject names
    /// (`substruct.v1.{site}.…` → `_INBOX_{site}.…`, [`subjects::site_inbox_prefix`]),
    /// the site's reply subjects (`substruct.v1.{site}.reply.{token}`,
    /// [`subjects::site_reply`]: how the controller asks a site's edge through its leaf
    /// node), or a hub client's default inbox (`_INBOX.…`), which no site may subscribe to
    /// (deploy/nats/gen-site); hub clients' inbox tokens are random, and the hub sends
    /// its requests to sites with a site reply subject, so a site cannot learn one to aim at.
    SiteInbox,
}

/// The reply prefix of clients that keep async-nats' default (`_INBOX`): the
/// controllers and tools on the hub.
const HUB_INBOX_PREFIX: &str = "_INBOX.";

impl ReplyPolicy {
    /// True when a request on `request_subject` may be answered on `reply`.
    pub fn allows(self, request_subject: &str, reply: &str) -> bool {
        if !subjects::is_reply_subject(reply) {
            return false;
        }
        match self {
            Self::AnyPlain => true,
            Self::SiteInbox => {
                if reply.starts_with(HUB_INBOX_PREFIX) {
                    return true;
                }
                let Some(site) = subjects::site_of(request_subject)
                    .and_then(|s| substruct_wire::SiteId::new(s).ok())
                else {
                    return false;
                };
                let after = |prefix: String| {
                    reply
                        .strip_prefix(prefix.as_str())
                        .and_then(|rest| rest.strip_prefix('.'))
                        .map(str::to_owned)
                };
                after(subjects::site_inbox_prefix(&site)).is_some()
                    || after(subjects::site_reply_prefix(&site))
                        .is_some_and(|token| !token.contains('.'))
            }
        }
    }
}

/// How [`serve_requests`] runs.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// What the requests are, for log lines (`"discover"`, `"callback"`).
    pub name: &'static str,
    /// Requests handled at once; while that many run, no new one is taken from the
    /// subscription (at least 1).
    pub max_in_flight: usize,
    /// Where replies may go; a request with any other reply subject is dropped.
    pub reply: ReplyPolicy,
}

/// The subscription's next message, or `None` once `cancel` fires or the subscription
/// ends: the head of every subscriber loop.
pub async fn next_message(
    subscriber: &mut async_nats::Subscriber,
    cancel: &CancellationToken,
) -> Option<async_nats::Message> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        msg = subscriber.next() => msg,
    }
}

/// Serves `requests` until `cancel` fires or the subscription ends: each request with a
/// reply subject its [`ReplyPolicy`] allows ([`ServeOptions::reply`]) is handed to `handler` in a
/// task on `tracker` (at most `options.max_in_flight` at once) and the bytes it returns
/// are published to the reply subject. Requests without a usable reply subject are
/// logged and dropped. Unsubscribes before returning; handlers already running keep
/// running on `tracker` (their owner drains it).
pub async fn serve_requests<H, F>(
    client: async_nats::Client,
    requests: Requests,
    options: ServeOptions,
    cancel: CancellationToken,
    tracker: TaskTracker,
    handler: H,
) where
    H: Fn(async_nats::Message) -> F + Send + Sync + 'static,
    F: Future<Output = Vec<u8>> + Send + 'static,
{
    let ServeOptions {
        name,
        max_in_flight,
        reply: policy,
    } = options;
    let mut subscriber = requests.subscriber;
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    while let Some(msg) = next_message(&mut subscriber, &cancel).await {
        let Some(reply_to) = msg.reply.clone() else {
            tracing::warn!(subject = %msg.subject, "{name} request without a reply subject; ignored");
            continue;
        };
        if !policy.allows(msg.subject.as_str(), reply_to.as_str()) {
            tracing::warn!(subject = %msg.subject, reply = ?reply_to.as_str(), "{name} request with a reply subject that is not the requester's inbox; ignored");
            continue;
        }
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let client = client.clone();
        let answer = handler(msg);
        tracker.spawn(async move {
            let _permit = permit;
            let bytes = answer.await;
            if let Err(e) = client.publish(reply_to, bytes.into()).await {
                tracing::error!(error = %crate::error_chain(&e), "cannot send a {name} reply");
            }
        });
    }
    if let Err(e) = subscriber.unsubscribe().await {
        tracing::debug!(error = %e, "unsubscribing from {name} requests");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn site_inbox_policy_allows_only_the_requesters_inbox() {
        let on_s1 = "substruct.v1.s1.discover";
        let policy = ReplyPolicy::SiteInbox;
        for good in [
            "_INBOX_s1.abc.1",
            "_INBOX.abc.def",
            "substruct.v1.s1.reply.p-0123",
        ] {
            assert!(policy.allows(on_s1, good), "{good}");
        }
        for bad in [
            "_INBOX_s10.abc",
            "substruct.v1.s2.reply.p-0123",
            "substruct.v1.s1.reply",
            "substruct.v1.s1.reply.a.b",
            "substruct.v1.s1.power",
            "_INBOX_s2.abc",
            "_INBOX_s1",
            "_INBOX_s1x.abc",
            "_INBOX",
            "_INBOX.*",
            "$KV.machines.m-1",
            "$KV.boot.s2.52540000000a",
            "$JS.API.STREAM.DELETE.EVENTS",
            "substruct.v1.events.m-1",
            "substruct.v1.s1.machine.m-1.cmd",
        ] {
            assert!(!policy.allows(on_s1, bad), "{bad}");
        }
        // A request subject that names no valid site gets no site inbox.
        assert!(!policy.allows("other.subject", "_INBOX_s1.x"));
        assert!(ReplyPolicy::AnyPlain.allows(on_s1, "$KV.machines.m-1"));
        assert!(!ReplyPolicy::AnyPlain.allows(on_s1, "a.>"));
    }

    #[tokio::test]
    async fn serves_with_bounded_concurrency_and_drops_unusable_requests() -> anyhow::Result<()> {
        let nats = substruct_testkit::NatsServer::start()?;
        let client = async_nats::connect(nats.url()).await?;
        let requests = Requests::subscribe(&client, "test.req".into(), "q").await?;
        let (running, peak, calls) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        let (r, p, c) = (running.clone(), peak.clone(), calls.clone());
        let server = tokio::spawn(serve_requests(
            client.clone(),
            requests,
            ServeOptions {
                name: "test",
                max_in_flight: 2,
                reply: ReplyPolicy::AnyPlain,
            },
            cancel.clone(),
            tracker.clone(),
            move |msg: async_nats::Message| {
                let (r, p, c) = (r.clone(), p.clone(), c.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    let mut out = b"re:".to_vec();
                    out.extend_from_slice(&msg.payload);
                    out
                }
            },
        ));

        // Unusable requests first: no reply subject, a wildcard reply subject.
        client.publish("test.req", "no-reply".into()).await?;
        client
            .publish_with_reply("test.req", "_INBOX.*", "wild".into())
            .await?;
        let asks = (0..6).map(|i| {
            let client = client.clone();
            async move { client.request("test.req", format!("{i}").into()).await }
        });
        let replies = futures::future::join_all(asks).await;
        for (i, reply) in replies.into_iter().enumerate() {
            assert_eq!(reply?.payload.as_ref(), format!("re:{i}").as_bytes());
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            6,
            "unusable requests were not handled"
        );
        assert!(peak.load(Ordering::SeqCst) <= 2, "at most 2 at once");
        assert!(peak.load(Ordering::SeqCst) >= 1);

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await??;
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await?;
        Ok(())
    }
}
