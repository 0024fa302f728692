//! Hostile-LAN caps at the controller, against a real nats-server: replies go only to
//! the requesting site's inbox, `EVENTS` and the buckets have limits, each site's
//! reports are rate-limited, reserved site names are refused, and a viewer sees
//! profiles without their secrets.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use async_nats::jetstream::stream::DiscardPolicy;
use common::{config, connect, discover, register_site_key, report, Running, TOKEN};
use futures::StreamExt as _;
use serde_json::{json, Value};
use substruct_controller::config::{ApiToken, Role, StorageLimits};
use substruct_testkit::NatsServer;
use substruct_wire::messages::{DiscoverRequest, ErrorCode};
use substruct_wire::{subjects, Mac, SiteId};

const M1: [u8; 6] = [0x52, 0x54, 0, 0, 0x0c, 0x01];
const VIEWER: &str = "test-viewer-token";

/// A stream's state and config on the server.
async fn stream_info(
    client: &async_nats::Client,
    name: &str,
) -> async_nats::jetstream::stream::Info {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().clone()
}

/// Report number `i` of a group: serial `{prefix}{i}`, one MAC `52:54:00:00:{group}:{i}`.
fn numbered(prefix: &str, group: u8, i: u8) -> substruct_wire::report::HardwareReport {
    report(
        None,
        Some(&format!("{prefix}{i}")),
        &[[0x52, 0x54, 0, 0, group, i]],
        &[],
    )
}

/// The raw value and revision of one KV entry.
async fn kv_entry(client: &async_nats::Client, bucket: &str, key: &str) -> Option<(Vec<u8>, u64)> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(bucket).await.unwrap();
    kv.entry(key)
        .await
        .unwrap()
        .map(|e| (e.value.to_vec(), e.revision))
}

/// Waits until every request sent before has been seen and handled (or dropped) by the
/// controller: a round trip of a fresh, legitimate request, then a short settle for
/// handlers that started before it.
async fn settle(client: &async_nats::Client, site: &str, seed: u8) {
    discover(client, site, numbered("SETTLE-", 0x0d, seed))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_reply_subjects_change_nothing() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;

    // A machine, and a boot key of another site to aim at.
    let r = report(None, Some("SN-CRAFT"), &[M1], &["D-CRAFT"]);
    let id = discover(&client, "dc1", r.clone())
        .await
        .unwrap()
        .machine_id;
    let machine_key = subjects::machine_key(&id);
    let before = kv_entry(&client, subjects::KV_MACHINES, &machine_key)
        .await
        .unwrap();
    let other_boot = subjects::boot_key(&SiteId::new("dc2").unwrap(), &Mac(M1));
    let events_before = stream_info(&client, subjects::STREAM_EVENTS)
        .await
        .state
        .messages;

    // Another site's inbox, watched: nothing may arrive there.
    let mut dc2_inbox = client.subscribe("_INBOX_dc2.>").await.unwrap();
    client.flush().await.unwrap();

    // The same report (a valid request that would update the record), each time with a
    // reply subject aimed at something that is not dc1's inbox.
    register_site_key(&client, "dc1").await;
    let payload = substruct_wire::encode(&DiscoverRequest {
        site: SiteId::new("dc1").unwrap(),
        boot_token: Some(common::credential("dc1", Mac(M1))),
        report: r.clone(),
    })
    .unwrap();
    let dc1 = subjects::discover(&SiteId::new("dc1").unwrap());
    let dc1_callback = subjects::callback(&SiteId::new("dc1").unwrap());
    let crafted = [
        format!("$KV.{}.{machine_key}", subjects::KV_MACHINES),
        format!("$KV.{}.{other_boot}", subjects::KV_BOOT),
        format!("$KV.{}.p1", subjects::KV_PROFILES),
        format!("$JS.API.STREAM.PURGE.{}", subjects::STREAM_EVENTS),
        subjects::machine_event(&id),
        "_INBOX_dc2.stolen".to_owned(),
        "_INBOX_dc10.stolen".to_owned(),
    ];
    for reply in &crafted {
        client
            .publish_with_reply(dc1.clone(), reply.clone(), payload.clone().into())
            .await
            .unwrap();
        client
            .publish_with_reply(dc1_callback.clone(), reply.clone(), payload.clone().into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    settle(&client, "dc1", 1).await;

    // The record is untouched (the request was dropped, not handled), still decodes,
    // and the listing works; no key appeared in `boot` or `profiles`.
    let after = kv_entry(&client, subjects::KV_MACHINES, &machine_key)
        .await
        .unwrap();
    assert_eq!(after.1, before.1, "the record's revision moved");
    assert_eq!(after.0, before.0);
    let listed = c.controller.store().list_machines().await.unwrap();
    assert!(listed.iter().any(|m| m.id == id));
    assert!(kv_entry(&client, subjects::KV_BOOT, &other_boot)
        .await
        .is_none());
    assert!(kv_entry(&client, subjects::KV_PROFILES, "p1")
        .await
        .is_none());
    // EVENTS: not purged, no bogus event; only the settle request's `discovered`.
    let events_after = stream_info(&client, subjects::STREAM_EVENTS)
        .await
        .state
        .messages;
    assert_eq!(events_after, events_before + 1);
    let stolen = tokio::time::timeout(Duration::from_millis(300), dc2_inbox.next()).await;
    assert!(
        stolen.is_err(),
        "a reply reached another site's inbox: {stolen:?}"
    );

    // The requesting site's own inbox is answered.
    let site_client = async_nats::ConnectOptions::new()
        .custom_inbox_prefix(subjects::site_inbox_prefix(&SiteId::new("dc1").unwrap()))
        .connect(nats.url())
        .await
        .unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        site_client.request(dc1.clone(), payload.clone().into()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(common::decode_reply(&reply.payload).unwrap().machine_id, id);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_buckets_honour_their_limits() {
    let nats = NatsServer::start().unwrap();
    let client = connect(&nats.url()).await;

    // First start with the defaults, then with small limits: the existing stream and
    // buckets take the new limits.
    let c = Running::start(config(&nats.url())).await;
    let events = stream_info(&client, subjects::STREAM_EVENTS).await;
    let defaults = StorageLimits::default();
    assert_eq!(events.config.max_bytes, defaults.events_max_bytes);
    assert_eq!(events.config.discard, DiscardPolicy::Old);
    c.stop().await;

    let storage = StorageLimits {
        events_max_bytes: 4096,
        events_max_age: Duration::from_secs(3600),
        machines_max_bytes: 1 << 20,
        bucket_max_bytes: 256 << 10,
        max_value_bytes: 64 << 10,
    };
    let c = Running::start(substruct_controller::Config {
        storage: storage.clone(),
        ..config(&nats.url())
    })
    .await;
    let events = stream_info(&client, subjects::STREAM_EVENTS).await;
    assert_eq!(events.config.max_bytes, 4096);
    assert_eq!(events.config.max_age, Duration::from_secs(3600));
    assert_eq!(events.config.discard, DiscardPolicy::Old);
    for (bucket, max) in [
        (subjects::KV_MACHINES, storage.machines_max_bytes),
        (subjects::KV_MACHINE_INDEX, storage.bucket_max_bytes),
        (subjects::KV_BOOT, storage.bucket_max_bytes),
        (subjects::KV_INSTALL, storage.bucket_max_bytes),
        (subjects::KV_PROFILES, storage.bucket_max_bytes),
    ] {
        let info = stream_info(&client, &subjects::kv_stream(bucket)).await;
        assert_eq!(info.config.max_bytes, max, "{bucket}");
        assert_eq!(info.config.discard, DiscardPolicy::New, "{bucket}");
        assert_eq!(info.config.max_message_size, 64 << 10, "{bucket}");
    }

    // Past its size the audit log drops its oldest events; reports keep working.
    let n = 40u8;
    for i in 0..n {
        let r = numbered("SN-EV-", 0x0e, i);
        discover(&client, "dc1", r).await.unwrap();
    }
    let events = stream_info(&client, subjects::STREAM_EVENTS).await;
    println!(
        "EVENTS after {n} discoveries: {} messages, {} bytes (limit 4096), first seq {}",
        events.state.messages, events.state.bytes, events.state.first_sequence
    );
    assert!(events.state.bytes <= 4096, "{:?}", events.state);
    assert!(events.state.messages < u64::from(n), "{:?}", events.state);
    assert!(
        events.state.first_sequence > 1,
        "the oldest were not dropped"
    );
    assert_eq!(
        c.controller.store().list_machines().await.unwrap().len(),
        usize::from(n)
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_over_its_report_rate_is_refused_and_others_are_not() {
    let nats = NatsServer::start().unwrap();
    let mut cfg = config(&nats.url());
    cfg.limits.site_report_burst = 3;
    // Practically no refill within the test: the burst is all a site gets.
    cfg.limits.site_reports_per_second = 0.001;
    let c = Running::start(cfg).await;
    let client = connect(&nats.url()).await;

    let mut refused = Vec::new();
    for i in 0..5u8 {
        let r = numbered("SN-RATE-", 0x0f, i);
        match discover(&client, "dc1", r).await {
            Ok(_) => assert!(i < 3, "report {i} was accepted past the burst"),
            Err(e) => refused.push((i, e)),
        }
    }
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (_, e) in &refused {
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(
            e.message.starts_with("rate limited, retry after "),
            "{}",
            e.message
        );
        assert!(e.message.ends_with(" ms"), "{}", e.message);
    }
    // The refused reports wrote nothing.
    assert_eq!(c.controller.store().list_machines().await.unwrap().len(), 3);
    // Another site has its own budget.
    for i in 0..3u8 {
        let r = numbered("SN-RATE-B", 0x10, i);
        discover(&client, "dc2", r).await.unwrap();
    }
    c.stop().await;
}

async fn call(
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_site_names_are_refused() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let base = c.url();
    let (status, body) = call(
        reqwest::Method::PUT,
        &format!("{base}/api/v1/sites/events"),
        TOKEN,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("reserved"), "{body}");
    let (status, _) = call(
        reqwest::Method::PUT,
        &format!("{base}/api/v1/sites/events-east"),
        TOKEN,
        Some(json!({})),
    )
    .await;
    assert!(status == 200 || status == 201, "{status}");
    // And the config file refuses it too.
    let err = substruct_controller::Config::from_toml(
        "sites = [\"events\"]",
        std::path::Path::new("c.toml"),
    )
    .unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("reserved"), "{source}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_profiles_without_secrets() {
    let nats = NatsServer::start().unwrap();
    let mut cfg = config(&nats.url());
    cfg.tokens.push(ApiToken {
        token: VIEWER.into(),
        role: Role::Viewer,
    });
    let c = Running::start(cfg).await;
    let base = c.url();
    for (name, kind) in [
        ("debian-12/linux", "kernel"),
        ("debian-12/initrd.gz", "initrd"),
    ] {
        let (status, body) = call(
            reqwest::Method::POST,
            &format!("{base}/api/v1/images"),
            TOKEN,
            Some(json!({"name": name, "kind": kind, "sha256": "ab".repeat(32), "size": 4096})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let profile = json!({
        "name": "secretive",
        "method": "preseed",
        "kernel": "debian-12/linux",
        "initrd": "debian-12/initrd.gz",
        "template": "d-i passwd/root-password-crypted password {{ params.root_password_hash }}\n# SECRET-TEMPLATE\nd-i preseed/late_command string wget -q -O- {{ callback_url }}\n",
        "params": {
            "root_password_hash": "$6$salt$0123456789abcdefSECRETHASH",
            "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST ops@example"],
            "post_install": "curl -H 'X-Token: SECRET-SCRIPT' https://example.invalid/",
            "vars": {"api_key": "SECRET-VAR"},
        },
    });
    let (status, body) = call(
        reqwest::Method::PUT,
        &format!("{base}/api/v1/profiles/secretive"),
        TOKEN,
        Some(profile),
    )
    .await;
    assert!(
        status == 200 || status == 201,
        "profile not saved ({status}): {body}"
    );

    const SECRETS: [&str; 4] = [
        "SECRETHASH",
        "SECRET-SCRIPT",
        "SECRET-VAR",
        "SECRET-TEMPLATE",
    ];
    for path in ["profiles", "profiles/secretive"] {
        let url = format!("{base}/api/v1/{path}");
        for (token, sees_secrets) in [(VIEWER, false), (TOKEN, true)] {
            let (status, body) = call(reqwest::Method::GET, &url, token, None).await;
            assert_eq!(status, 200, "{body}");
            let text = body.to_string();
            for secret in SECRETS {
                assert_eq!(
                    text.contains(secret),
                    sees_secrets,
                    "{secret} at {path} (admin: {sees_secrets}): {text}"
                );
            }
            assert_eq!(text.contains("<redacted>"), !sees_secrets, "{text}");
            assert!(text.contains("api_key"), "variable names stay: {text}");
            assert!(text.contains("ssh-ed25519"), "public keys stay: {text}");
        }
    }
    c.stop().await;
}
