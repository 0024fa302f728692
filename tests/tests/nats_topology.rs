//! The shipped NATS topology (deploy/nats/: hub.conf, leaf.conf.tmpl, gen-site) with real
//! nats-servers on loopback: a hub, and leaf nodes for sites `a` and `b`.
//!
//! - a site's client on its leaf node reaches the controller on the hub (request/reply);
//! - site `a`'s credentials cannot publish or subscribe to site `b`'s subjects: refused by
//!   the hub for a direct connection, filtered on the leaf link for a leaf node;
//! - KV: site `a` can get and watch its own keys of `boot` and `install`, and not `b`'s;
//!   it reads the shared image registry and object store, and writes nothing;
//! - TLS on the leaf link: traffic crosses with the right CA, the link is refused with
//!   another CA;
//! - the leaf node runs in operator mode: it refuses anonymous clients, passwords and
//!   logins another key signed; a boot's login reaches only its own requests, inbox and
//!   command subject; an expired one is refused, a live one cut at expiry;
//! - the 3-node cluster variant serves a leaf; a site added to a running hub links after
//!   the reload; hub and leaf in network namespaces relink after kills and restarts.
//!
//! Every refusal is checked next to the same operation succeeding for the allowed site.
//! Run: `cargo test -p substruct-tests --test nats_topology`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer, response::Response};
use async_nats::{Client, ConnectOptions, Event};
use futures::{FutureExt as _, StreamExt as _};
use substruct_runtime::jetstream::{ensure_kv, BucketSpec};
use substruct_testkit::nats_topology::{
    unix_now, Hub, HubOptions, Leaf, LeafOptions, TlsFiles, HUB_JS_DOMAIN,
};
use substruct_testkit::{poll, wait_for};
use substruct_wire::subjects::{self, KV_BOOT, KV_INSTALL};
use substruct_wire::{Mac, MachineId, SiteId};
use tokio::sync::mpsc;

const LINK: Duration = Duration::from_secs(20);
/// Bound for a request, a KV read or a bucket to work across the topology once the
/// servers run (interest propagation, the leaf link, the JetStream meta leader).
const PROPAGATION: Duration = Duration::from_secs(40);
/// Bound for one JetStream API call; a refused call ends in an error, never a hang.
const JS_TIMEOUT: Duration = Duration::from_secs(3);

fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

/// A connection, with the server's asynchronous errors (permission violations) as text.
struct Conn {
    client: Client,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Conn {
    async fn open(url: &str, inbox_prefix: Option<String>, user: Option<(&str, &str)>) -> Self {
        let opts = match user {
            Some((u, p)) => ConnectOptions::with_user_and_password(u.into(), p.into()),
            None => ConnectOptions::new(),
        };
        Self::open_with(url, inbox_prefix, opts).await
    }

    /// A client of `leaf` logged in as the edge is (a user JWT the site key signed).
    async fn leaf(leaf: &Leaf, inbox_prefix: Option<String>) -> Self {
        let login = leaf.edge_login().unwrap();
        Self::open_with(&leaf.url(), inbox_prefix, login.options().unwrap()).await
    }

    async fn open_with(url: &str, inbox_prefix: Option<String>, opts: ConnectOptions) -> Self {
        let (tx, errors) = mpsc::unbounded_channel();
        let mut opts = opts.event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        });
        if let Some(prefix) = inbox_prefix {
            opts = opts.custom_inbox_prefix(prefix);
        }
        let client = opts.connect(url).await.unwrap();
        Self { client, errors }
    }

    /// Waits for a server error containing `needle`.
    async fn expect_error(&mut self, needle: &str) {
        let got = tokio::time::timeout(LINK, async {
            let mut seen = Vec::new();
            while let Some(e) = self.errors.recv().await {
                if e.contains(needle) {
                    return Ok(e);
                }
                seen.push(e);
            }
            Err(seen)
        })
        .await;
        match got {
            Ok(Ok(_)) => {}
            other => panic!("no server error containing {needle:?}: {other:?}"),
        }
    }

    /// Errors received so far.
    fn errors_so_far(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(e) = self.errors.try_recv() {
            v.push(e);
        }
        v
    }
}

/// A client of `leaf` logged in as the edge is (a user JWT the site key signed), with
/// the default inbox prefix.
async fn leaf_client(leaf: &Leaf) -> Client {
    let login = leaf.edge_login().unwrap();
    login.options().unwrap().connect(leaf.url()).await.unwrap()
}

/// A hub with users for sites `a` and `b`, and both sites' leaf nodes linked.
fn topology(tls: Option<&TlsFiles>) -> (Hub, Leaf, Leaf) {
    let mut opts = HubOptions::default().sites(["a", "b"]);
    if let Some(t) = tls {
        opts = opts.tls(t);
    }
    let hub = Hub::start(opts).unwrap();
    let leaf_opts = || {
        let o = LeafOptions::default();
        match tls {
            Some(t) => o.tls_ca(&t.ca),
            None => o,
        }
    };
    let a = Leaf::start(&hub, "a", leaf_opts()).unwrap();
    let b = Leaf::start(&hub, "b", leaf_opts()).unwrap();
    a.wait_linked(LINK).unwrap();
    b.wait_linked(LINK).unwrap();
    (hub, a, b)
}

/// The controller's connection to the hub.
async fn controller(hub: &Hub) -> Client {
    let (user, password) = hub.controller_credentials();
    ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(hub.url())
        .await
        .unwrap()
}

/// The controller answering every site's discover requests with `reply:{subject}`.
async fn controller_answering(hub: &Hub) -> Client {
    let controller = self::controller(hub).await;
    let mut sub = controller
        .queue_subscribe(subjects::discover_all(), subjects::CONTROLLER_QUEUE.into())
        .await
        .unwrap();
    let c = controller.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let body = format!("reply:{}", msg.subject);
                let _ = c.publish(reply, body.into()).await;
            }
        }
    });
    controller.flush().await.unwrap();
    controller
}

/// Requests until the controller's answer crosses (interest takes a moment to propagate).
async fn discover_until_answered(client: &Client, s: &SiteId) -> Vec<u8> {
    let subject = subjects::discover(s);
    poll(
        &format!("a discover reply from the hub on {subject}"),
        PROPAGATION,
        Duration::from_millis(50),
        || {
            let request = client.request(subject.clone(), "hello".into());
            async move {
                let reply = tokio::time::timeout(Duration::from_millis(500), request).await;
                Some(reply.ok()?.ok()?.payload.to_vec())
            }
        },
    )
    .await
    .unwrap()
}

/// `key` of bucket `bucket` as `js` sees it, once it can (interest, the leaf link and
/// JetStream take a moment).
async fn kv_value_once_readable(js: &jetstream::Context, bucket: &str, key: &str) -> Vec<u8> {
    poll(
        &format!("{bucket}/{key} to be readable"),
        PROPAGATION,
        Duration::from_millis(100),
        || async {
            let kv = js.get_key_value(bucket).await.ok()?;
            Some(kv.get(key).await.ok()??.to_vec())
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_client_reaches_the_controller_on_the_hub() {
    let (hub, leaf_a, _leaf_b) = topology(None);
    let _controller = controller_answering(&hub).await;
    let creds = hub.site("a").unwrap();
    // No credentials on the leaf; the site's inbox prefix so replies come back.
    let client = Conn::leaf(&leaf_a, Some(creds.inbox_prefix())).await;
    let a = site("a");
    let answer = discover_until_answered(&client.client, &a).await;
    assert_eq!(
        answer,
        format!("reply:{}", subjects::discover(&a)).as_bytes()
    );

    // The same request with the default `_INBOX.` prefix gets no reply: the hub does not
    // forward other inboxes to site a (this is why site clients must set the prefix).
    let plain = leaf_client(&leaf_a).await;
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        plain.request(subjects::discover(&a), "hello".into()),
    )
    .await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a reply reached the default inbox: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_credentials_on_the_hub_are_refused_other_sites_subjects() {
    let (hub, _leaf_a, _leaf_b) = topology(None);
    let creds = hub.site("a").unwrap().clone();
    let controller = controller(&hub).await;
    let mut everything = controller.subscribe("substruct.v1.>").await.unwrap();
    controller.flush().await.unwrap();

    let mut a = Conn::open(
        &hub.url(),
        Some(creds.inbox_prefix()),
        Some((&creds.user, &creds.password)),
    )
    .await;
    let (sa, sb) = (site("a"), site("b"));

    // Publish: b refused by the server, a delivered.
    a.client
        .publish(subjects::event(&sb), "from a".into())
        .await
        .unwrap();
    a.client
        .publish(subjects::event(&sa), "from a".into())
        .await
        .unwrap();
    a.client.flush().await.unwrap();
    a.expect_error(&format!(
        "Permissions Violation for Publish to \"{}\"",
        subjects::event(&sb)
    ))
    .await;
    let first = tokio::time::timeout(LINK, everything.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.subject.as_str(), subjects::event(&sa));

    // Subscribe: b refused, a receives.
    let _sub_b = a.client.subscribe("substruct.v1.b.>").await.unwrap();
    let mut sub_a = a.client.subscribe("substruct.v1.a.>").await.unwrap();
    a.client.flush().await.unwrap();
    a.expect_error("Permissions Violation for Subscription to \"substruct.v1.b.>\"")
        .await;
    controller
        .publish(
            subjects::machine_cmd(&sa, &MachineId::new("m-1").unwrap()),
            "cmd".into(),
        )
        .await
        .unwrap();
    controller.flush().await.unwrap();
    let got = tokio::time::timeout(LINK, sub_a.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload, "cmd");
    // And the controller's own replies (`_INBOX.`) are not site a's to read.
    let _inbox = a.client.subscribe("_INBOX.>").await.unwrap();
    a.client.flush().await.unwrap();
    a.expect_error("Permissions Violation for Subscription to \"_INBOX.>\"")
        .await;
    let _ = a.errors_so_far();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_of_site_a_neither_receives_nor_sends_site_b_traffic() {
    let (hub, leaf_a, leaf_b) = topology(None);
    let controller = controller(&hub).await;
    let (sa, sb) = (site("a"), site("b"));
    let a = leaf_client(&leaf_a).await;
    let b = leaf_client(&leaf_b).await;
    let mut a_sees_b = a.subscribe("substruct.v1.b.>").await.unwrap();
    let mut a_sees_a = a.subscribe("substruct.v1.a.>").await.unwrap();
    let mut b_sees_b = b.subscribe("substruct.v1.b.>").await.unwrap();
    a.flush().await.unwrap();
    b.flush().await.unwrap();

    // Hub → sites: b's message reaches leaf b; on leaf a, only a's marker arrives. The
    // controller sends b's message first each round, on one connection, so had leaf a
    // been sent it, it would be queued before the marker.
    let (mut a_marker, mut b_got) = (false, false);
    for round in 0.. {
        assert!(round < 200, "no traffic crossed: a={a_marker} b={b_got}");
        controller
            .publish(subjects::event(&sb), "for b".into())
            .await
            .unwrap();
        controller
            .publish(subjects::event(&sa), "marker".into())
            .await
            .unwrap();
        controller.flush().await.unwrap();
        let wait = Duration::from_millis(100);
        if let Ok(Some(m)) = tokio::time::timeout(wait, a_sees_a.next()).await {
            assert_eq!(m.payload, "marker");
            a_marker = true;
        }
        if let Ok(Some(m)) = tokio::time::timeout(wait, b_sees_b.next()).await {
            assert_eq!(m.payload, "for b");
            b_got = true;
        }
        if a_marker && b_got {
            break;
        }
    }
    assert!(
        a_sees_b.next().now_or_never().is_none(),
        "leaf a received a message for site b"
    );

    // Site a → hub: a publish on b's subject from leaf a does not leave the leaf; the
    // marker published after it does.
    let mut everything = controller.subscribe("substruct.v1.>").await.unwrap();
    controller.flush().await.unwrap();
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    let marker_seen = |seen: &[(String, Vec<u8>)]| {
        seen.iter()
            .any(|(s, p)| *s == subjects::event(&sa) && p == b"marker")
    };
    for _ in 0..100 {
        a.publish(subjects::event(&sb), "forged".into())
            .await
            .unwrap();
        a.publish(subjects::event(&sa), "marker".into())
            .await
            .unwrap();
        a.flush().await.unwrap();
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(100), everything.next()).await
        {
            seen.push((m.subject.to_string(), m.payload.to_vec()));
        }
        if marker_seen(&seen) {
            break;
        }
    }
    assert!(marker_seen(&seen), "leaf a's marker never reached the hub");
    let forged: Vec<_> = seen.iter().filter(|(_, p)| p == b"forged").collect();
    assert!(
        forged.is_empty(),
        "site b's subject reached the hub from leaf a: {forged:?}"
    );
}

/// The values the controller put: `boot` `a.x`/`b.y`, `install` `a.t1`/`b.t2`.
struct Keys {
    b_y_revision: u64,
}

async fn controller_puts_keys(hub: &Hub) -> Keys {
    let controller = controller(hub).await;
    let js = jetstream::new(controller);
    let boot = ensure_kv(&js, &BucketSpec::new(KV_BOOT)).await.unwrap();
    let install = ensure_kv(&js, &BucketSpec::new(KV_INSTALL)).await.unwrap();
    boot.put("a.x", "boot-a".into()).await.unwrap();
    let b_y_revision = boot.put("b.y", "boot-b".into()).await.unwrap();
    install.put("a.t1", "install-a".into()).await.unwrap();
    install.put("b.t2", "install-b".into()).await.unwrap();
    Keys { b_y_revision }
}

/// A JetStream context with a bounded request time and the given API prefix.
fn js_with_prefix(client: &Client, prefix: &str) -> jetstream::Context {
    jetstream::context::ContextBuilder::new()
        .timeout(JS_TIMEOUT)
        .api_prefix(prefix)
        .build(client.clone())
}

/// An ordered push consumer on `bucket` named and filtered as the site's permissions
/// allow: the form an edge's KV watch must take.
async fn named_watch(
    js: &jetstream::Context,
    client: &Client,
    bucket: &str,
    filter: &str,
) -> Result<consumer::Consumer<consumer::push::OrderedConfig>, String> {
    let kv = js.get_key_value(bucket).await.map_err(|e| e.to_string())?;
    kv.stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            name: Some("edge-watch".to_owned()),
            filter_subject: format!("$KV.{bucket}.{filter}"),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())
}

/// Everything site `a`'s client may and may not do with the KV buckets, through the
/// JetStream API at `prefix` (`$JS.API` at the hub, `$JS.hub.API` behind a leaf).
async fn check_site_a_kv(client: &Client, prefix: &str, keys: &Keys) {
    let js = js_with_prefix(client, prefix);
    let boot = js.get_key_value(KV_BOOT).await.unwrap();
    let install = js.get_key_value(KV_INSTALL).await.unwrap();

    // Get: own keys yes, b's no.
    assert_eq!(boot.get("a.x").await.unwrap().unwrap(), "boot-a");
    assert_eq!(install.get("a.t1").await.unwrap().unwrap(), "install-a");
    let b = boot.get("b.y").await;
    assert!(!matches!(b, Ok(Some(_))), "site a read boot b.y: {b:?}");
    let b = install.get("b.t2").await;
    assert!(!matches!(b, Ok(Some(_))), "site a read install b.t2: {b:?}");

    // Watch: a consumer named and filtered on a's keys delivers a.x; on b's keys refused.
    let watch = named_watch(&js, client, KV_BOOT, "a.>").await.unwrap();
    let mut msgs = watch.messages().await.unwrap();
    let first = tokio::time::timeout(LINK, msgs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.subject.as_str(), "$KV.boot.a.x");
    assert_eq!(first.payload, "boot-a");
    let watch = named_watch(&js, client, KV_INSTALL, "a.>").await.unwrap();
    let mut msgs = watch.messages().await.unwrap();
    let first = tokio::time::timeout(LINK, msgs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.payload, "install-a");
    let refused = named_watch(&js, client, KV_BOOT, "b.>").await;
    assert!(refused.is_err(), "site a watched boot b.>");
    let refused = named_watch(&js, client, KV_BOOT, ">").await;
    assert!(refused.is_err(), "site a watched all of boot");
    // The unnamed form (filter in the body only, as Store::watch sends it) is refused.
    let unnamed = boot.watch("a.>").await;
    assert!(unnamed.is_err(), "the unnamed consumer create was allowed");

    // The server checks the body against the subject: a's filter in the subject with b's
    // in the body is refused; the same request with a's filter in both is accepted.
    let create = |name: &str, body_filter: &str| {
        let subject = format!("CONSUMER.CREATE.KV_boot.{name}.$KV.boot.a.>");
        let body = serde_json::json!({
            "stream_name": "KV_boot",
            "config": {
                "name": name,
                "filter_subject": body_filter,
                "deliver_subject": client.new_inbox(),
                "ack_policy": "none",
                "deliver_policy": "last_per_subject",
                "inactive_threshold": 5_000_000_000u64,
            }
        });
        let js = js.clone();
        async move {
            js.request::<_, _, Response<consumer::Info>>(subject, &body)
                .await
        }
    };
    match create("sneaky", "$KV.boot.b.>").await {
        Ok(Response::Err { .. }) => {}
        other => panic!("a consumer on b's keys through a's subject: {other:?}"),
    }
    match create("honest", "$KV.boot.a.>").await {
        Ok(Response::Ok(info)) => assert_eq!(info.config.filter_subject, "$KV.boot.a.>"),
        other => panic!("the matching create failed: {other:?}"),
    }

    // Direct get names the key in the subject; a body asking for b's message by sequence
    // must not return it.
    let direct = format!("{prefix}.DIRECT.GET.KV_boot.$KV.boot.a.x");
    let own = client.request(direct.clone(), "".into()).await.unwrap();
    assert_eq!(own.payload, "boot-a");
    let body = serde_json::json!({ "seq": keys.b_y_revision }).to_string();
    let sneaky = client.request(direct, body.into()).await.unwrap();
    assert_ne!(
        sneaky.payload, "boot-b",
        "direct get returned b.y by sequence"
    );
    assert!(
        sneaky.status.is_some(),
        "a direct get with a body was answered: {sneaky:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_reads_and_watches_only_its_own_kv_keys() {
    let (hub, leaf_a, leaf_b) = topology(None);
    let keys = controller_puts_keys(&hub).await;
    let creds = hub.site("a").unwrap().clone();

    // Directly on the hub with a's credentials.
    let direct = Conn::open(
        &hub.url(),
        Some(creds.inbox_prefix()),
        Some((&creds.user, &creds.password)),
    )
    .await;
    check_site_a_kv(&direct.client, "$JS.API", &keys).await;

    // Behind leaf a, through the hub's domain.
    let behind = Conn::leaf(&leaf_a, Some(creds.inbox_prefix())).await;
    let prefix = format!("$JS.{HUB_JS_DOMAIN}.API");
    let js = js_with_prefix(&behind.client, &prefix);
    wait_for("the hub's JetStream behind leaf a", LINK, || {
        let js = js.clone();
        async move { js.get_key_value(KV_BOOT).await.is_ok() }
    })
    .await
    .unwrap();
    check_site_a_kv(&behind.client, &prefix, &keys).await;

    // Site b, behind its leaf, reads its own key: the refusals above are about a, not
    // about leaf nodes.
    let b_creds = hub.site("b").unwrap().clone();
    let b = Conn::leaf(&leaf_b, Some(b_creds.inbox_prefix())).await;
    let js = js_with_prefix(&b.client, &prefix);
    let got = kv_value_once_readable(&js, KV_BOOT, "b.y").await;
    assert_eq!(got, b"boot-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_leaf_link_carries_traffic_and_refuses_another_ca() {
    let tls = TlsFiles::generate(&["127.0.0.1".parse().unwrap()]).unwrap();
    let (hub, leaf_a, _leaf_b) = topology(Some(&tls));
    let _controller = controller_answering(&hub).await;
    let creds = hub.site("a").unwrap();
    let client = Conn::leaf(&leaf_a, Some(creds.inbox_prefix())).await;
    let a = site("a");
    let answer = discover_until_answered(&client.client, &a).await;
    assert_eq!(
        answer,
        format!("reply:{}", subjects::discover(&a)).as_bytes()
    );

    // A leaf trusting another CA does not link: it logs the certificate error.
    let other = TlsFiles::generate(&["127.0.0.1".parse().unwrap()]).unwrap();
    let wrong = Leaf::start(&hub, "b", LeafOptions::default().tls_ca(&other.ca)).unwrap();
    wait_for("the certificate error in the leaf's log", LINK, || {
        let log = wrong.process().log_text();
        async move {
            log.contains("TLS leafnode handshake error")
                && log.contains("certificate signed by unknown authority")
        }
    })
    .await
    .unwrap();
    assert!(!wrong.is_linked(), "{}", wrong.process().log_text());
    // A leaf without a CA of its own does not link either: the hub's INFO asks for TLS,
    // the leaf starts it and verifies the hub with the system's CAs only.
    let plain = Leaf::start(
        &hub,
        "b",
        LeafOptions {
            skip_tls: true,
            ..Default::default()
        },
    )
    .unwrap();
    wait_for("the TLS error in the leaf's log", LINK, || {
        let log = plain.process().log_text();
        async move { log.contains("TLS leafnode handshake error") }
    })
    .await
    .unwrap();
    assert!(!plain.is_linked(), "{}", plain.process().log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_hub_serves_a_leaf_on_any_node() {
    let hub = Hub::start(HubOptions::default().sites(["a"]).cluster()).unwrap();
    assert_eq!(hub.nodes().len(), 3);
    // The leaf knows all three nodes, as gen-site writes it for the cluster.
    let leaf = Leaf::start(&hub, "a", LeafOptions::default()).unwrap();
    leaf.wait_linked(LINK).unwrap();

    // The controller on node 3 answers a request from behind the leaf.
    let (user, password) = hub.controller_credentials();
    let controller = ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(hub.node_url(2))
        .await
        .unwrap();
    let mut sub = controller
        .queue_subscribe(subjects::discover_all(), subjects::CONTROLLER_QUEUE.into())
        .await
        .unwrap();
    let c = controller.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = c.publish(reply, "from n3".into()).await;
            }
        }
    });
    controller.flush().await.unwrap();
    let creds = hub.site("a").unwrap();
    let client = Conn::leaf(&leaf, Some(creds.inbox_prefix())).await;
    let answer = discover_until_answered(&client.client, &site("a")).await;
    assert_eq!(answer, b"from n3");

    // Clustered JetStream (once the meta group has a leader): a bucket with 3 replicas,
    // read by site a behind its leaf.
    let js = jetstream::new(controller.clone());
    let mut spec = BucketSpec::new(KV_BOOT);
    spec.replicas = 3;
    let boot = poll(
        "the clustered bucket to be created",
        PROPAGATION,
        Duration::from_millis(200),
        || async { ensure_kv(&js, &spec).await.ok() },
    )
    .await
    .unwrap();
    boot.put("a.x", "boot-a".into()).await.unwrap();
    assert_eq!(boot.stream.get_info().await.unwrap().config.num_replicas, 3);
    let site_js = js_with_prefix(&client.client, &format!("$JS.{HUB_JS_DOMAIN}.API"));
    let got = kv_value_once_readable(&site_js, KV_BOOT, "a.x").await;
    assert_eq!(got, b"boot-a");
}

/// The helpers in network namespaces, as the WAN-cut tests use them: the hub in a
/// `core` namespace, a site's leaf node in its own, joined by a veth "WAN". The link
/// comes up, and comes back after the leaf node, then the hub, are killed and restarted.
#[test]
fn hub_and_leaf_in_namespaces_relink_after_restarts() {
    use substruct_testkit::gate::{system_test, Need};
    use substruct_testkit::netns::Netns;
    if !system_test(&[Need::Netns]) {
        return;
    }
    let core = Netns::create("core").unwrap();
    let site_ns = Netns::create("site").unwrap();
    core.veth_to(
        &site_ns,
        ("wan-core", "10.231.0.1/30"),
        ("wan-site", "10.231.0.2/30"),
    )
    .unwrap();
    let hub_ip: std::net::IpAddr = "10.231.0.1".parse().unwrap();
    let mut hub = Hub::start(HubOptions::default().sites(["a"]).in_netns(&core, hub_ip)).unwrap();
    let mut leaf = Leaf::start(
        &hub,
        "a",
        LeafOptions::default().in_netns(&site_ns, "127.0.0.1".parse().unwrap(), hub.leaf_urls()),
    )
    .unwrap();
    leaf.wait_linked(LINK).unwrap();

    leaf.kill();
    assert!(!leaf.process_mut().is_running());
    leaf.restart().unwrap();
    leaf.wait_linked(LINK).unwrap();

    hub.kill();
    leaf.restart().unwrap(); // a fresh log: the link is down until the hub is back
    assert!(!leaf.is_linked());
    hub.restart().unwrap();
    leaf.wait_linked(LINK).unwrap();
}

#[test]
fn site_added_to_a_running_hub_links_after_the_reload() {
    let mut hub = Hub::start(HubOptions::default().sites(["a"])).unwrap();
    let creds = hub.add_site("c").unwrap();
    assert_eq!(creds.user, "site-c");
    let leaf = Leaf::start(&hub, "c", LeafOptions::default()).unwrap();
    leaf.wait_linked(LINK).unwrap();
    assert!(hub.nodes()[0]
        .process
        .log_text()
        .contains("Reloaded server configuration"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_reads_the_shared_image_registry_and_objects_but_cannot_write() {
    use substruct_runtime::jetstream::ensure_object_store;
    use substruct_wire::subjects::{KV_IMAGES, OBJ_IMAGES};
    use tokio::io::AsyncReadExt as _;

    let (hub, leaf_a, _leaf_b) = topology(None);
    let controller = controller(&hub).await;
    let js = jetstream::new(controller);
    let registry = ensure_kv(&js, &BucketSpec::new(KV_IMAGES)).await.unwrap();
    registry.put("debian", "meta".into()).await.unwrap();
    let objects = ensure_object_store(&js, OBJ_IMAGES).await.unwrap();
    // Several chunks (128 KiB each), so the read is a real consumer, not one message.
    let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    objects
        .put("sha-of-debian", &mut image.as_slice())
        .await
        .unwrap();

    let creds = hub.site("a").unwrap();
    let a = Conn::leaf(&leaf_a, Some(creds.inbox_prefix())).await;
    let site_js = js_with_prefix(&a.client, &format!("$JS.{HUB_JS_DOMAIN}.API"));
    let registry_a = poll(
        "site a to open the image registry",
        PROPAGATION,
        Duration::from_millis(100),
        || async { site_js.get_key_value(KV_IMAGES).await.ok() },
    )
    .await
    .unwrap();
    assert_eq!(registry_a.get("debian").await.unwrap().unwrap(), "meta");
    let objects_a = site_js.get_object_store(OBJ_IMAGES).await.unwrap();
    let mut object = objects_a.get("sha-of-debian").await.unwrap();
    let mut read = Vec::new();
    object.read_to_end(&mut read).await.unwrap();
    assert_eq!(read.len(), image.len());
    assert!(read == image, "the object read back differs");

    // Reading is all: a registry put and an object put are refused.
    let put = registry_a.put("debian", "forged".into()).await;
    assert!(put.is_err(), "site a wrote the image registry: {put:?}");
    let put = objects_a.put("forged", &mut &b"x"[..]).await;
    assert!(put.is_err(), "site a wrote the object store");
    assert_eq!(registry.get("debian").await.unwrap().unwrap(), "meta");
}

// ---- Logins on the leaf node (operator mode; issue 11) ---------------------------------

fn mac(last: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0, last])
}

/// The leaf node admits only users the site key signed: no anonymous client, no
/// password, no JWT signed by another key; the edge-like login gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaf_refuses_anonymous_and_foreign_logins() {
    let (hub, leaf_a, leaf_b) = topology(None);
    let anonymous = async_nats::ConnectOptions::new()
        .connect(leaf_a.url())
        .await;
    assert!(anonymous.is_err(), "anonymous client admitted");
    let creds = hub.site("a").unwrap();
    let password =
        ConnectOptions::with_user_and_password(creds.user.clone(), creds.password.clone())
            .connect(leaf_a.url())
            .await;
    assert!(
        password.is_err(),
        "the hub's site password admitted on the leaf"
    );
    // Site b's key signs a perfectly good login, for the wrong leaf.
    let foreign = leaf_b.edge_login().unwrap();
    let r = foreign.options().unwrap().connect(leaf_a.url()).await;
    assert!(
        r.is_err(),
        "a login signed by site b's key admitted on a's leaf"
    );
    // The JWT without its seed (a bearer login) is refused too: sign with another key.
    let (_, stolen) = leaf_a.boot_login(mac(1), unix_now(), 600).unwrap();
    let mut wrong_seed = leaf_a.edge_login().unwrap();
    wrong_seed.jwt = stolen.jwt;
    let r = wrong_seed.options().unwrap().connect(leaf_a.url()).await;
    assert!(
        r.is_err(),
        "a boot JWT admitted with another key's nonce signature"
    );
    // The site's own login gets in and reaches the hub.
    let _controller = controller_answering(&hub).await;
    let ok = Conn::leaf(&leaf_a, Some(creds.inbox_prefix())).await;
    let answer = discover_until_answered(&ok.client, &site("a")).await;
    assert_eq!(
        answer,
        format!("reply:{}", subjects::discover(&site("a"))).as_bytes()
    );
}

/// A boot's login (the credential the edge issues for one MAC, with its seed) may send
/// its site's discover/callback/event requests and read its own inbox and command
/// subject, and nothing else: not another boot's inbox or commands, not the
/// machine-id command subjects, not the KV or JetStream API, not publishing commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_login_reaches_only_its_own_requests_inbox_and_commands() {
    let (hub, leaf_a, _leaf_b) = topology(None);
    let controller = controller_answering(&hub).await;
    let a = site("a");
    let (_, login_a) = leaf_a.boot_login(mac(0xa), unix_now(), 600).unwrap();
    let (_, login_b) = leaf_a.boot_login(mac(0xb), unix_now(), 600).unwrap();
    let prefix_a = subjects::boot_inbox_prefix(&a, &login_a.user_key);
    let prefix_b = subjects::boot_inbox_prefix(&a, &login_b.user_key);
    let mut ca = Conn::open_with(
        &leaf_a.url(),
        Some(prefix_a.clone()),
        login_a.options().unwrap(),
    )
    .await;
    let cb = Conn::open_with(
        &leaf_a.url(),
        Some(prefix_b.clone()),
        login_b.options().unwrap(),
    )
    .await;

    // Its own request/reply works (the reply comes to its own inbox through the hub).
    let answer = discover_until_answered(&ca.client, &a).await;
    assert_eq!(
        answer,
        format!("reply:{}", subjects::discover(&a)).as_bytes()
    );

    // Its own command subject: the controller's command arrives.
    let mut own_cmd = ca
        .client
        .subscribe(subjects::boot_cmd(&a, &login_a.user_key))
        .await
        .unwrap();
    let mut b_cmd = cb
        .client
        .subscribe(subjects::boot_cmd(&a, &login_b.user_key))
        .await
        .unwrap();
    ca.client.flush().await.unwrap();
    cb.client.flush().await.unwrap();
    // Interest takes a moment to reach the hub: publish until one arrives.
    let mut got = None;
    for _ in 0..100 {
        controller
            .publish(
                subjects::boot_cmd(&a, &login_a.user_key),
                "cmd-for-a".into(),
            )
            .await
            .unwrap();
        controller.flush().await.unwrap();
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), own_cmd.next()).await {
            got = m;
            break;
        }
    }
    let got = got.expect("a's command never crossed");
    assert_eq!(got.payload, "cmd-for-a");
    // b's command reaches b (so b's subject works), never a.
    controller
        .publish(
            subjects::boot_cmd(&a, &login_b.user_key),
            "cmd-for-b".into(),
        )
        .await
        .unwrap();
    controller.flush().await.unwrap();
    let got_b = tokio::time::timeout(LINK, b_cmd.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got_b.payload, "cmd-for-b");

    // Refused subscriptions: b's inbox and commands, the whole site inbox, the machine-id
    // command subjects, everything.
    for subject in [
        format!("{prefix_b}.>"),
        subjects::boot_cmd(&a, &login_b.user_key),
        format!("{}.>", subjects::site_inbox_prefix(&a)),
        subjects::machine_cmd(&a, &MachineId::new("m-1").unwrap()),
        "substruct.v1.a.>".to_owned(),
        ">".to_owned(),
    ] {
        let _s = ca.client.subscribe(subject.clone()).await.unwrap();
        ca.client.flush().await.unwrap();
        ca.expect_error(&format!(
            "Permissions Violation for Subscription to \"{subject}\""
        ))
        .await;
    }
    // Refused publishes: commands (to b or any machine), KV and JetStream API, another
    // site's requests, replies into b's inbox.
    for subject in [
        subjects::boot_cmd(&a, &login_b.user_key),
        subjects::machine_cmd(&a, &MachineId::new("m-1").unwrap()),
        "$KV.machines.m-1".to_owned(),
        "$JS.hub.API.STREAM.INFO.KV_boot".to_owned(),
        "$JS.API.STREAM.INFO.KV_boot".to_owned(),
        subjects::discover(&site("b")),
        format!("{prefix_b}.x"),
    ] {
        ca.client
            .publish(subject.clone(), "x".into())
            .await
            .unwrap();
        ca.client.flush().await.unwrap();
        ca.expect_error(&format!(
            "Permissions Violation for Publish to \"{subject}\""
        ))
        .await;
    }
    // Nothing a sent reached b's command subscription.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b_cmd.next())
            .await
            .is_err(),
        "a reached b's command subject"
    );
    // The default inbox prefix is not the boot's: a client that ignores it cannot even
    // subscribe for its replies.
    let (_, login_c) = leaf_a.boot_login(mac(0xc), unix_now(), 600).unwrap();
    let mut cc = Conn::open_with(&leaf_a.url(), None, login_c.options().unwrap()).await;
    let _ = cc.client.request(subjects::discover(&a), "x".into()).await;
    cc.expect_error("Permissions Violation for Subscription to \"_INBOX.")
        .await;
}

/// An expired boot credential is refused at connect; a live one is disconnected by the
/// leaf node when it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_boot_login_is_refused_and_a_live_one_ends_at_expiry() {
    let (_hub, leaf_a, _leaf_b) = topology(None);
    let a = site("a");
    let (_, old) = leaf_a.boot_login(mac(1), unix_now() - 7200, 3600).unwrap();
    let r = old
        .options()
        .unwrap()
        .custom_inbox_prefix(subjects::boot_inbox_prefix(&a, &old.user_key))
        .connect(leaf_a.url())
        .await;
    assert!(r.is_err(), "an expired credential admitted");
    // Valid for 2 s: admitted now, cut by the server when it expires.
    let (_, short) = leaf_a.boot_login(mac(2), unix_now(), 2).unwrap();
    let mut c = Conn::open_with(
        &leaf_a.url(),
        Some(subjects::boot_inbox_prefix(&a, &short.user_key)),
        short.options().unwrap().max_reconnects(Some(1)),
    )
    .await;
    c.expect_error("Expired").await;
}
