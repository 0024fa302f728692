//! `GET /metrics` on the controller: counters move by exactly what the test sends
//! (discover reports through the real request path, malformed ones, API requests),
//! against a real nats-server.

#![allow(clippy::unwrap_used)]

mod common;

use common::{config, connect, discover, report, request_raw, Running, TOKEN};

/// The value of the sample `name` (with its labels, as written), or 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

async fn scrape(base: &str) -> String {
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_what_was_sent() {
    let nats = substruct_testkit::NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let base = c.url();
    let client = connect(&nats.url()).await;
    let before = scrape(&base).await;
    assert_eq!(sample(&before, "substruct_controller_nats_connected"), 1.0);

    const N: u8 = 5;
    for i in 0..N {
        let mac = [0x52, 0x54, 0, 0, 0x4d, i];
        discover(
            &client,
            "dc1",
            report(None, Some(&format!("MET-{i}")), &[mac], &[]),
        )
        .await
        .unwrap();
    }
    // The same machines again: updates, not discoveries.
    for i in 0..2u8 {
        let mac = [0x52, 0x54, 0, 0, 0x4d, i];
        discover(
            &client,
            "dc1",
            report(None, Some(&format!("MET-{i}")), &[mac], &[]),
        )
        .await
        .unwrap();
    }
    // Three requests that are not discover requests at all.
    for _ in 0..3 {
        let reply = request_raw(&client, "dc1", b"\x00garbage".to_vec()).await;
        assert!(common::decode_reply(&reply).is_err());
    }
    // Two API requests: one answered, one refused.
    let http = reqwest::Client::new();
    let ok = http
        .get(format!("{base}/api/v1/machines?limit=1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = http
        .get(format!("{base}/api/v1/machines"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let after = scrape(&base).await;
    let delta = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(
        delta("substruct_controller_reports_total{result=\"ok\"}"),
        f64::from(N) + 2.0,
        "{after}"
    );
    assert_eq!(
        delta("substruct_controller_reports_total{result=\"malformed\"}"),
        3.0,
        "{after}"
    );
    assert_eq!(
        delta("substruct_controller_report_duration_seconds_count"),
        f64::from(N) + 5.0
    );
    assert_eq!(
        delta("substruct_controller_events_total{kind=\"discovered\"}"),
        f64::from(N)
    );
    assert_eq!(
        delta("substruct_controller_events_total{kind=\"updated\"}"),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            "substruct_controller_machines{state=\"discovered\"}"
        ),
        f64::from(N)
    );
    // The first scrape counts itself once it is answered: +1 `GET 2xx` for it, +1 for
    // the page; the refused one is a 4xx.
    assert_eq!(
        delta("substruct_controller_api_requests_total{method=\"GET\",status=\"2xx\"}"),
        2.0
    );
    assert_eq!(
        delta("substruct_controller_api_requests_total{method=\"GET\",status=\"4xx\"}"),
        1.0
    );
    // No label carries a machine's facts.
    assert!(!after.contains("MET-"));
    assert!(!after.contains("52:54"));
    c.stop().await;
}
