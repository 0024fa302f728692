//! The machine list at the API and the CLI: pages, filters, counts, read-your-writes,
//! a second controller's own list, and the start-up sweep that repairs a lost boot
//! intent without rewriting the others. Real nats-server, machines reported through
//! the real discover path.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{config, connect, discover, random_report, Running, TOKEN};
use rand::SeedableRng;
use serde_json::Value;
use substruct_testkit::{wait_for, NatsServer};
use substruct_wire::{subjects, Mac, SiteId};

const SITES: [&str; 3] = ["dc1", "dc2", "dc3"];
const MACHINES: usize = 30;

async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn post(url: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn ids(page: &Value) -> Vec<String> {
    page["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every page of `query` (which must end in `&` or be empty), following the cursor.
async fn walk(base: &str, query: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let (status, page) = get(&format!(
            "{base}/api/v1/machines?{query}limit=7&cursor={cursor}"
        ))
        .await;
        assert_eq!(status, 200, "{page}");
        all.extend(page["machines"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return all,
        }
    }
    panic!("the cursor never ended");
}

fn cli(base: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_substruct"))
        .args(args)
        .env("SUBSTRUCT_CONTROLLER", base)
        .env("SUBSTRUCT_TOKEN", TOKEN)
        .env_remove("SUBSTRUCT_CA")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_page_filter_count_and_follow_writes() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let base = c.url();
    let client = connect(&nats.url()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut reports = Vec::new();
    for i in 0..MACHINES {
        let report = random_report(&mut rng);
        let site = SITES[i % SITES.len()];
        let reply = discover(&client, site, report.clone()).await.unwrap();
        reports.push((reply.machine_id.to_string(), site, report));
    }
    let every: BTreeSet<String> = reports.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(every.len(), MACHINES);

    // Pages of 7 cover the fleet once each, in id order.
    let walked: Vec<String> = walk(&base, "")
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(walked, every.iter().cloned().collect::<Vec<_>>());

    let (status, page) = get(&format!("{base}/api/v1/machines?limit=7")).await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], MACHINES);
    assert_eq!(page["counts"]["state"]["discovered"], MACHINES);
    assert_eq!(page["counts"]["state"]["deployed"], 0);
    for site in SITES {
        assert_eq!(page["counts"]["site"][site], MACHINES / SITES.len());
    }
    // A summary, not the facts; `full=true` gives the records.
    assert!(page["machines"][0].get("facts").is_none(), "{page}");
    assert!(page["machines"][0]["serial"].is_string(), "{page}");
    let (_, full) = get(&format!("{base}/api/v1/machines?limit=3&full=true")).await;
    assert_eq!(ids(&full), walked[..3]);
    assert!(full["machines"][0]["facts"]["dmi"].is_object(), "{full}");

    // Filters: a site, a search by serial, by MAC in another spelling, by vendor.
    let at_dc2 = walk(&base, "site=dc2&").await;
    assert_eq!(at_dc2.len(), MACHINES / SITES.len());
    assert!(at_dc2.iter().all(|m| m["site"] == "dc2"));
    let (id, _, report) = &reports[4];
    let serial = report.dmi.product_serial.clone().unwrap();
    let (_, found) = get(&format!(
        "{base}/api/v1/machines?q={}",
        serial.to_lowercase()
    ))
    .await;
    assert_eq!(ids(&found), [id.as_str()]);
    let mac = report.macs()[1]
        .to_string()
        .replace(':', "-")
        .to_uppercase();
    let (_, found) = get(&format!("{base}/api/v1/machines?q={mac}")).await;
    assert_eq!(ids(&found), [id.as_str()]);
    let (_, none) = get(&format!("{base}/api/v1/machines?vendor=nobody")).await;
    assert_eq!(ids(&none), Vec::<String>::new());

    // Bad queries are refused by name.
    for (query, names) in [
        ("state=sleeping", "sleeping"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("limit=many", "limit"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = get(&format!("{base}/api/v1/machines?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(names),
            "{query}: {body}"
        );
    }

    // A write is in the very next list.
    let (retired, retired_site, retired_report) = &reports[7];
    assert_eq!(
        post(&format!("{base}/api/v1/machines/{retired}/retire")).await,
        200
    );
    let (_, page) = get(&format!("{base}/api/v1/machines?state=retired")).await;
    assert_eq!(ids(&page), [retired.as_str()]);
    assert_eq!(page["counts"]["state"]["retired"], 1);
    assert_eq!(page["counts"]["state"]["discovered"], MACHINES - 1);

    // A second controller builds its own list from the bucket.
    let second = Running::start(config(&nats.url())).await;
    let (_, theirs) = get(&format!("{}/api/v1/machines?limit=1000", second.url())).await;
    let (_, ours) = get(&format!("{base}/api/v1/machines?limit=1000")).await;
    assert_eq!(theirs, ours);
    second.stop().await;

    // The CLI pages through it.
    let (ok, out, err) = cli(&base, &["machines", "list", "--page-size", "4"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), MACHINES + 1, "{out}");
    assert!(out.contains(&serial), "{out}");
    let (ok, out, err) = cli(
        &base,
        &[
            "machines",
            "list",
            "--json",
            "--site",
            "dc3",
            "--page-size",
            "2",
        ],
    );
    assert!(ok, "{err}");
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(records.len(), MACHINES / SITES.len());
    assert!(records
        .iter()
        .all(|r| r["site"] == "dc3" && r["facts"].is_object()));
    let (ok, out, err) = cli(&base, &["machines", "list", "--state", "retired"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(retired.as_str()) && out.lines().count() == 2,
        "{out}"
    );
    let (ok, _, err) = cli(&base, &["machines", "list", "--state", "asleep"]);
    assert!(!ok && err.contains("asleep"), "{err}");
    // The whole inventory as JSON, as before paging existed.
    let (ok, out, err) = cli(&base, &["machines", "list", "--json"]);
    assert!(ok, "{err}");
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(records.len(), MACHINES);
    let resp = reqwest::Client::new()
        .get(format!("{base}/api/v1/machines"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-total-count"], "30");

    // The start-up sweep: a retired machine's intent deleted behind the controllers'
    // backs (a crash between record and sync) comes back; another retired machine's
    // intent, already right, is not rewritten.
    let (kept, kept_site, kept_report) = &reports[10];
    assert_eq!(
        post(&format!("{base}/api/v1/machines/{kept}/retire")).await,
        200
    );
    c.stop().await;
    let js = async_nats::jetstream::new(client.clone());
    let boot = js.get_key_value(subjects::KV_BOOT).await.unwrap();
    let key = |site: &str, mac: Mac| subjects::boot_key(&SiteId::new(site).unwrap(), &mac);
    // Sorted: the sweep reaches the repaired one after the untouched one when the
    // repaired one sorts last.
    let (first, last) = if kept < retired {
        ((kept_site, kept_report), (retired_site, retired_report))
    } else {
        ((retired_site, retired_report), (kept_site, kept_report))
    };
    let untouched = key(first.0, first.1.macs()[0]);
    let lost = key(last.0, last.1.macs()[0]);
    let before = boot.entry(&untouched).await.unwrap().unwrap().revision;
    boot.delete(&lost).await.unwrap();
    let c = Running::start(config(&nats.url())).await;
    wait_for(
        "the lost intent back",
        std::time::Duration::from_secs(60),
        || {
            let boot = boot.clone();
            let lost = lost.clone();
            async move { matches!(boot.get(&lost).await, Ok(Some(_))) }
        },
    )
    .await
    .unwrap();
    let after = boot.entry(&untouched).await.unwrap().unwrap().revision;
    assert_eq!(before, after, "an intent that was right was rewritten");
    c.stop().await;
}
