//! Follow streams of the audit log are bounded per controller: past
//! `MAX_FOLLOWERS` a new one is refused with 503 naming the cap, and a closed
//! stream gives its slot back (real nats-server, real HTTP connections).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{config, Running, TOKEN};
use substruct_controller::api::MAX_FOLLOWERS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_are_capped_and_give_their_slot_back() {
    let nats = substruct_testkit::NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let url = format!("{}/api/v1/events?follow=true&after=0", c.url());
    let http = reqwest::Client::new();
    let mut open = Vec::with_capacity(MAX_FOLLOWERS);
    for i in 0..MAX_FOLLOWERS {
        let resp = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(resp.status(), 200, "stream {i}");
        open.push(resp);
    }
    let refused = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body = refused.text().await.unwrap();
    assert!(body.contains("too many event streams"), "{body}");
    // A page (not a follow) is still answered.
    let page = http
        .get(format!("{}/api/v1/events", c.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    // Closing one stream frees its slot (the server notices the closed connection).
    drop(open.pop());
    substruct_testkit::poll(
        "a slot to come back",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let resp = http.get(&url).bearer_auth(TOKEN).send().await.ok()?;
            (resp.status() == 200).then_some(resp)
        },
    )
    .await
    .unwrap();
    drop(open);
    c.stop().await;
}

/// A message in `EVENTS` that is not a machine event (written by anything with
/// publish rights on the subject) is passed over: pages and follow streams carry on
/// with the real events around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_in_the_log_is_passed_over() {
    use common::{connect, discover, report};
    let nats = substruct_testkit::NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;
    let first = discover(
        &client,
        "dc1",
        report(None, Some("EV-1"), &[[0x52, 0x54, 0, 0, 0x5e, 1]], &[]),
    )
    .await
    .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    for junk in [
        &b"not json"[..],
        b"{\"machine_id\":\"x\"}",
        &[0xff; 4096][..],
    ] {
        js.publish(
            format!("substruct.v1.events.{}", first.machine_id),
            junk.to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let second = discover(
        &client,
        "dc1",
        report(None, Some("EV-2"), &[[0x52, 0x54, 0, 0, 0x5e, 2]], &[]),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    for query in ["", "?after=0", &format!("?machine={}", first.machine_id)] {
        let resp = http
            .get(format!("{}/api/v1/events{query}", c.url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{query}");
        let page: serde_json::Value = resp.json().await.unwrap();
        let ids: Vec<&str> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["machine_id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&first.machine_id.as_str()), "{query}: {page}");
        if !query.contains("machine=") {
            assert!(ids.contains(&second.machine_id.as_str()), "{query}: {page}");
        }
        assert_eq!(
            ids.len(),
            if query.contains("machine=") { 1 } else { 2 },
            "{query}: {page}"
        );
    }
    c.stop().await;
}
