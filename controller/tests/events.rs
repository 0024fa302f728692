//! The audit log at the API (`GET /api/v1/events`: pages, filters, bad queries, the
//! live follow stream) and at the CLI (`substruct events`, `--follow`), against a real
//! nats-server and machines reported through the real discover path.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{config, connect, discover, report, Running, TOKEN};
use futures::StreamExt;
use serde_json::Value;
use substruct_controller::config::{ApiToken, Role};
use substruct_testkit::NatsServer;

const VIEWER: &str = "viewer-token";

async fn get(url: &str, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn seqs(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

fn types(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"]["type"].as_str().unwrap().to_owned())
        .collect()
}

fn machines(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["machine_id"].as_str().unwrap().to_owned())
        .collect()
}

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0x0e, n]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_paged_filtered_and_followed() {
    let nats = NatsServer::start().unwrap();
    let mut cfg = config(&nats.url());
    cfg.tokens.push(ApiToken {
        token: VIEWER.into(),
        role: Role::Viewer,
    });
    let c = Running::start(cfg).await;
    let base = c.url();
    let client = connect(&nats.url()).await;

    // Three machines at dc1, two at dc2: five `discovered` events.
    let mut ids = Vec::new();
    for n in 0..5u8 {
        let site = if n < 3 { "dc1" } else { "dc2" };
        let serial = format!("EV-{n}");
        let reply = discover(&client, site, report(None, Some(&serial), &[mac(n)], &[]))
            .await
            .unwrap();
        ids.push(reply.machine_id.to_string());
    }
    // The first reports again (`updated`), then is retired (`transition`).
    discover(&client, "dc1", report(None, Some("EV-0"), &[mac(0)], &[]))
        .await
        .unwrap();
    let retired = reqwest::Client::new()
        .post(format!("{base}/api/v1/machines/EV-0/retire"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        retired.status().as_u16(),
        200,
        "{}",
        retired.text().await.unwrap()
    );

    // The whole log, oldest first, readable by a viewer.
    let (status, all) = get(&format!("{base}/api/v1/events"), VIEWER).await;
    assert_eq!(status, 200, "{all}");
    let all_seqs = seqs(&all);
    assert_eq!(all_seqs.len(), 7, "{all}");
    assert!(all_seqs.windows(2).all(|w| w[0] < w[1]), "{all_seqs:?}");
    assert_eq!(all["last_seq"].as_u64(), all_seqs.last().copied());
    assert_eq!(
        types(&all),
        [
            "discovered",
            "discovered",
            "discovered",
            "discovered",
            "discovered",
            "updated",
            "transition"
        ]
    );
    assert_eq!(all["events"][6]["kind"]["to"], "retired");
    assert_eq!(all["events"][6]["kind"]["by"], "api (admin)");

    // The last two; then a forward page after the second event.
    let (_, last) = get(&format!("{base}/api/v1/events?limit=2"), TOKEN).await;
    assert_eq!(seqs(&last), all_seqs[5..].to_vec());
    let (_, page) = get(
        &format!("{base}/api/v1/events?after={}&limit=2", all_seqs[1]),
        TOKEN,
    )
    .await;
    assert_eq!(seqs(&page), all_seqs[2..4].to_vec());
    assert_eq!(page["last_seq"].as_u64(), Some(all_seqs[3]));
    let (_, rest) = get(
        &format!("{base}/api/v1/events?after={}&limit=100", all_seqs[3]),
        TOKEN,
    )
    .await;
    assert_eq!(seqs(&rest), all_seqs[4..].to_vec());

    // One machine, by its serial or its MAC.
    for reference in ["EV-0", "52:54:00:00:0e:00"] {
        let (status, one) = get(&format!("{base}/api/v1/events?machine={reference}"), TOKEN).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(
            types(&one),
            ["discovered", "updated", "transition"],
            "{reference}"
        );
        assert!(machines(&one).iter().all(|m| m == &ids[0]));
    }
    // One site: dc2's two machines only.
    let (_, dc2) = get(&format!("{base}/api/v1/events?site=dc2"), TOKEN).await;
    assert_eq!(machines(&dc2), ids[3..].to_vec());
    let (_, dc1) = get(&format!("{base}/api/v1/events?site=dc1&limit=2"), TOKEN).await;
    assert_eq!(types(&dc1), ["updated", "transition"]);
    let (_, none) = get(&format!("{base}/api/v1/events?site=dc9"), TOKEN).await;
    assert_eq!(seqs(&none), Vec::<u64>::new());

    // Bad queries are refused by name; no token is no log.
    for (query, needle) in [
        ("limit=0", "limit must be 1 to 1000"),
        ("limit=1001", "limit must be 1 to 1000"),
        ("after=-1", "after"),
        ("color=red", "color"),
    ] {
        let (status, body) = get(&format!("{base}/api/v1/events?{query}"), TOKEN).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    let (status, body) = get(&format!("{base}/api/v1/events?machine=NO:SUCH"), TOKEN).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("NO:SUCH"),
        "{body}"
    );
    let status = reqwest::get(format!("{base}/api/v1/events"))
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401);

    // Follow one machine: its last event first, then each new one as it happens.
    let response = reqwest::Client::new()
        .get(format!(
            "{base}/api/v1/events?machine=EV-1&limit=1&follow=true"
        ))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut sse = Sse {
        body: Box::pin(response.bytes_stream()),
        text: String::new(),
    };
    let first = sse.next_data().await;
    assert_eq!(first["machine_id"], ids[1].as_str());
    assert_eq!(first["kind"]["type"], "discovered");
    // Another machine's event is not sent; this one's is.
    discover(&client, "dc1", report(None, Some("EV-2"), &[mac(2)], &[]))
        .await
        .unwrap();
    discover(&client, "dc1", report(None, Some("EV-1"), &[mac(1)], &[]))
        .await
        .unwrap();
    let live = sse.next_data().await;
    assert_eq!(live["machine_id"], ids[1].as_str());
    assert_eq!(live["kind"]["type"], "updated");
    assert_eq!(live["kind"]["report_count"], 2);
    assert!(live["seq"].as_u64().unwrap() > first["seq"].as_u64().unwrap());

    // The CLI: a table, JSON lines, and --follow from the binary.
    let table = cli(&base, &["events", "--machine", "EV-0"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].contains(&ids[0]) && lines[0].contains("discovered"),
        "{table}"
    );
    assert!(
        lines[2].contains("transition")
            && lines[2].contains("discovered --retire--> retired by api (admin)"),
        "{table}"
    );
    let json = cli(&base, &["events", "--json", "--site", "dc2"]);
    let parsed: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), 2, "{json}");
    assert!(parsed.iter().all(|e| e["kind"]["site"] == "dc2"));

    let mut child = Command::new(env!("CARGO_BIN_EXE_substruct"))
        .args([
            "events",
            "--follow",
            "--json",
            "--limit",
            "1",
            "--machine",
            "EV-3",
        ])
        .env("SUBSTRUCT_CONTROLLER", &base)
        .env("SUBSTRUCT_TOKEN", VIEWER)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    assert_eq!(next_line(&mut lines_rx).await["kind"]["type"], "discovered");
    discover(&client, "dc2", report(None, Some("EV-3"), &[mac(3)], &[]))
        .await
        .unwrap();
    let followed = next_line(&mut lines_rx).await;
    assert_eq!(followed["machine_id"], ids[3].as_str());
    assert_eq!(followed["kind"]["type"], "updated");

    // A controller with followers connected still stops promptly (Running::stop
    // bounds it), and the CLI then says the stream ended.
    c.stop().await;
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.status.success());
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("closed the event stream"), "{stderr}");
}

fn cli(base: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_substruct"))
        .args(args)
        .env("SUBSTRUCT_CONTROLLER", base)
        .env("SUBSTRUCT_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "substruct {args:?}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A server-sent events answer, read an event at a time.
struct Sse {
    body: ByteStream,
    text: String,
}

impl Sse {
    /// The next event's `data`, as JSON.
    async fn next_data(&mut self) -> Value {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str::<Value>(data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("no event within 30 s")
                .unwrap()
                .unwrap();
            self.text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// The next line the CLI printed, as JSON.
async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the CLI printed nothing within 30 s")
        .expect("the CLI ended");
    serde_json::from_str::<Value>(&line).unwrap()
}
