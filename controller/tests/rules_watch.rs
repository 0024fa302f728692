//! The rules cache is fed by a KV watch, not a poll: a rule saved through the API
//! applies to the very next report; a rule written by anyone else (another
//! controller) reaches this one without a restart, deletes too, and the watch comes
//! back after a NATS outage.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::{config, connect, discover, report, Running, TOKEN};
use serde_json::{json, Value};
use substruct_controller::profile::Profile;
use substruct_controller::rules::Rule;
use substruct_controller::store::Docs;
use substruct_controller::Store;
use substruct_testkit::{wait_for, NatsServer};
use substruct_wire::messages::{DiscoverRequest, Instruction};
use substruct_wire::{subjects, SiteId};

const SHA: &str = "a3f1c0ffee00000000000000000000000000000000000000000000000000beef";
/// How long a change may take to reach the controller through the watch.
const PROPAGATION: Duration = Duration::from_secs(20);

fn shipped(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/profiles")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

async fn call(base: &str, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The marker image and its profile, through the API.
async fn marker_profile(base: &str) {
    let image = json!({"name": "marker.img", "kind": "disk", "sha256": SHA, "size": 4096});
    let (status, body) = call(base, reqwest::Method::POST, "/api/v1/images", image).await;
    assert_eq!(status, 201, "{body}");
    let profile = Profile::from_toml(&shipped("marker-image.toml")).unwrap();
    let (status, body) = call(
        base,
        reqwest::Method::PUT,
        &format!("/api/v1/profiles/{}", profile.name),
        serde_json::to_value(&profile).unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

fn marker_rule() -> Rule {
    Rule::from_toml(&shipped("rules/qemu-marker.toml")).unwrap()
}

/// A report from a machine never seen before (fresh serial and MAC each call).
async fn new_machine_report(client: &async_nats::Client) -> Instruction {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (serial, disk) = (format!("SN-WATCH-{n}"), format!("DISK-WATCH-{n}"));
    discover(
        client,
        "dc1",
        report(None, Some(&serial), &[[2, 0, 0, 0, 0x77, n]], &[&disk]),
    )
    .await
    .unwrap()
    .instruction
}

#[test]
fn a_rule_saved_through_the_api_applies_to_the_next_report() {
    common::run_on_big_stack(a_rule_saved_through_the_api_applies_to_the_next_report_flow);
}

async fn a_rule_saved_through_the_api_applies_to_the_next_report_flow() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let base = c.url();
    let client = connect(&nats.url()).await;
    marker_profile(&base).await;
    assert_eq!(new_machine_report(&client).await, Instruction::Wait);

    let rule = marker_rule();
    let (status, body) = call(
        &base,
        reqwest::Method::PUT,
        "/api/v1/rules/qemu-marker",
        serde_json::to_value(&rule).unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // No wait of any kind: the API answers once this controller's copy has the rule.
    let instruction = new_machine_report(&client).await;
    assert!(
        matches!(instruction, Instruction::DeployImage(_)),
        "{instruction:?}"
    );

    let (status, body) = call(
        &base,
        reqwest::Method::DELETE,
        "/api/v1/rules/qemu-marker",
        Value::Null,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(new_machine_report(&client).await, Instruction::Wait);
    c.stop().await;
}

#[test]
fn rules_written_elsewhere_reach_the_controller_and_survive_a_nats_outage() {
    common::run_on_big_stack(
        rules_written_elsewhere_reach_the_controller_and_survive_a_nats_outage_flow,
    );
}

/// Waits until a new machine's report gets a deploy (`deploys`) or a wait.
async fn wait_for_rule(client: &async_nats::Client, what: &str, deploys: bool) {
    wait_for(what, PROPAGATION, || {
        let client = client.clone();
        async move {
            let instruction = new_machine_report(&client).await;
            matches!(instruction, Instruction::DeployImage(_)) == deploys
        }
    })
    .await
    .unwrap();
}

async fn health_is(url: &str, status: u16) -> bool {
    match reqwest::get(url).await {
        Ok(r) => r.status().as_u16() == status,
        Err(_) => false,
    }
}

/// True when a discover request gets any answer within a second.
async fn answers_discover(client: &async_nats::Client) -> bool {
    let request = DiscoverRequest {
        site: SiteId::new("dc1").unwrap(),
        boot_token: None,
        report: report(None, Some("SN-PROBE"), &[[2, 0, 0, 0, 0x78, 1]], &[]),
    };
    let payload = substruct_wire::encode(&request).unwrap();
    let subject = subjects::discover(&request.site);
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            client.request(subject, payload.into())
        )
        .await,
        Ok(Ok(_))
    )
}

async fn rules_written_elsewhere_reach_the_controller_and_survive_a_nats_outage_flow() {
    let mut nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let client = connect(&nats.url()).await;
    marker_profile(&c.url()).await;
    // Another writer: what a second controller's API does.
    let other = Store::open(client.clone()).await.unwrap();
    let rule = marker_rule();

    other
        .doc_put(Docs::Rules, &rule.name, &rule, None)
        .await
        .unwrap();
    wait_for_rule(&client, "a rule saved elsewhere applies", true).await;
    assert!(other.doc_delete(Docs::Rules, &rule.name).await.unwrap());
    wait_for_rule(&client, "a rule deleted elsewhere stops applying", false).await;

    // NATS goes away and comes back: the watch resumes, and a rule saved after the
    // outage applies without a controller restart.
    let healthz = format!("{}/healthz", c.url());
    nats.kill();
    wait_for("the controller notices the outage", PROPAGATION, || {
        health_is(&healthz, 503)
    })
    .await
    .unwrap();
    nats.restart().unwrap();
    wait_for("the controller is back on NATS", PROPAGATION, || {
        health_is(&healthz, 200)
    })
    .await
    .unwrap();
    let client = connect(&nats.url()).await;
    let other = Store::open(client.clone()).await.unwrap();
    wait_for("the controller answers reports again", PROPAGATION, || {
        answers_discover(&client)
    })
    .await
    .unwrap();
    other
        .doc_put(Docs::Rules, &rule.name, &rule, None)
        .await
        .unwrap();
    wait_for_rule(&client, "a rule saved after the outage applies", true).await;
    c.stop().await;
}
