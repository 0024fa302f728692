//! Install files and installer callbacks: the edge's HTTP server on 127.0.0.1:0 with its
//! install table fed by the KV watcher from a real nats-server, a real HTTP client
//! (reqwest), and the test playing the controller on `substruct.v1.{site}.callback`.
//! The edge leases 127.0.0.1 to a MAC of each test machine (`m-1`..`m-4`); an "attacker"
//! asks from 127.0.0.2.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use substruct_edge::dhcp::{LeaseChange, LeaseStore};
use substruct_edge::http::binding::Binding;
use substruct_edge::http::limits::HttpLimits;
use substruct_edge::http::{self, HttpSettings, HttpState};
use substruct_edge::install::{self, CallbackClient, InstallCache, InstallTable, WatchSettings};
use substruct_edge::intents::IntentTable;
use substruct_runtime::jetstream::{ensure_kv, BucketSpec};
use substruct_testkit::{wait_for, NatsServer};
use substruct_wire::intent::{BootIntent, BootIntentRecord, InstallFile, InstallFilesRecord};
use substruct_wire::messages::{
    CallbackKind, CallbackReply, CallbackRequest, ErrorCode, ErrorReply,
};
use substruct_wire::subjects::{self, install_key, KV_INSTALL};
use substruct_wire::{BootToken, Mac, MachineId, SiteId};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
/// The base URL the edge hands out (not where the test server listens).
const EDGE_BASE: &str = "http://10.77.0.1:8080";
const FORBIDDEN: &str = "forbidden\n";

fn site() -> SiteId {
    SiteId::new("s1").unwrap()
}

fn token(s: &str) -> BootToken {
    BootToken::new(s).unwrap()
}

fn record(token: &BootToken, machine: &str) -> InstallFilesRecord {
    InstallFilesRecord {
        machine_id: MachineId::new(machine).unwrap(),
        token: token.clone(),
        files: vec![
            InstallFile {
                name: "preseed.cfg".into(),
                content_type: "text/plain; charset=utf-8".into(),
                body: format!(
                    "# {machine}\nd-i mirror/http/hostname string {{edge}}\n\
                     d-i preseed/late_command string wget -O- --post-data= {{edge}}/api/v1/machines/{token}/done\n"
                ),
            },
            InstallFile {
                name: "user-data".into(),
                content_type: "text/cloud-config".into(),
                body: "#cloud-config\nurl: {edge}/images/x {edge\n".into(),
            },
            InstallFile {
                name: "meta-data".into(),
                content_type: "text/plain".into(),
                body: String::new(),
            },
        ],
    }
}

async fn connect(url: &str) -> Result<async_nats::Client> {
    Ok(substruct_runtime::nats_options("edge-install-test")
        .connect(url)
        .await?)
}

async fn bucket(client: &async_nats::Client) -> Result<async_nats::jetstream::kv::Store> {
    let js = async_nats::jetstream::new(client.clone());
    Ok(ensure_kv(&js, &BucketSpec::new(KV_INSTALL)).await?)
}

/// One edge: HTTP server, install watcher (when `watch`), fetched-callback queue.
struct Edge {
    base: String,
    addr: std::net::SocketAddr,
    table: InstallTable,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _images: tempfile::TempDir,
}

impl Edge {
    async fn start(client: async_nats::Client, cache: &InstallCache, watch: bool) -> Result<Self> {
        let table = if watch {
            InstallTable::new()
        } else {
            cache.load()?
        };
        let images = tempfile::tempdir()?;
        // Machines m-1..m-4 each have a MAC the edge leased 127.0.0.1 to (and m-9 one
        // leased to another address).
        let intents = IntentTable::new();
        let leases = LeaseStore::open(images.path().join("leases.redb"))?;
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        let mut grants = Vec::new();
        for (i, machine, ip) in [
            (1u8, "m-1", "127.0.0.1"),
            (2, "m-2", "127.0.0.1"),
            (3, "m-3", "127.0.0.1"),
            (4, "m-4", "127.0.0.1"),
            (9, "m-9", "127.0.0.9"),
        ] {
            let mac = Mac([0x52, 0x54, 0, 0x77, 0, i]);
            intents.set(
                mac,
                BootIntentRecord {
                    machine_id: Some(MachineId::new(machine)?),
                    intent: BootIntent::Discover,
                },
            );
            grants.push(LeaseChange::Grant {
                mac,
                ip: ip.parse()?,
                expires,
            });
        }
        leases.apply(&grants)?;
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        if watch {
            let mut settings = WatchSettings::new(site(), cache.clone());
            settings.max_backoff = Duration::from_millis(500);
            tasks.push(tokio::spawn(install::watch(
                client.clone(),
                settings,
                table.clone(),
                cancel.clone(),
            )));
        }
        let (callbacks, mut queue) = CallbackClient::new(site(), Some(client), table.clone());
        queue.min_backoff = Duration::from_millis(50);
        queue.max_backoff = Duration::from_millis(300);
        tasks.push(tokio::spawn(queue.run(cancel.clone())));
        let state = HttpState::new(
            HttpSettings {
                base: EDGE_BASE.into(),
                site: site(),
                nats_url: "nats://10.77.0.1:4222".into(),
                base6: None,
                nats_url6: None,
                ipv6_only: false,
                extra_args: None,
                images_dir: images.path().to_owned(),
                ipxe_dir: images.path().to_owned(),
                limits: HttpLimits::default(),
            },
            intents,
        )?
        .with_install(table.clone(), callbacks)
        .with_binding(Binding::Leases(leases));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let _ = http::serve(listener, state, c).await;
        }));
        Ok(Self {
            base,
            addr,
            table,
            cancel,
            tasks,
            _images: images,
        })
    }

    async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        for t in self.tasks {
            tokio::time::timeout(WAIT, t).await??;
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

async fn get(url: &str) -> Result<(u16, String, String)> {
    let r = reqwest::get(url).await?;
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok((status, ct, r.text().await?))
}

/// Sends a raw request line (no normalisation) and returns the whole response.
async fn raw_get(base: &str, target: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn status_of(url: &str) -> u16 {
    match reqwest::get(url).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// The test's controller: records every callback request and answers with `answer`
/// (`None`: stay silent, so the caller times out).
struct Controller {
    seen: Arc<Mutex<Vec<CallbackRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    async fn start(
        client: &async_nats::Client,
        answer: impl Fn(&CallbackRequest) -> Option<Vec<u8>> + Send + 'static,
    ) -> Result<Self> {
        let mut sub = client.subscribe(subjects::callback(&site())).await?;
        client.flush().await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (seen2, client2) = (seen.clone(), client.clone());
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Ok(req) = substruct_wire::decode::<CallbackRequest>(&msg.payload) else {
                    continue;
                };
                let reply = answer(&req);
                seen2.lock().unwrap().push(req);
                if let (Some(bytes), Some(to)) = (reply, msg.reply) {
                    let _ = client2.publish(to, bytes.into()).await;
                }
            }
        });
        Ok(Self { seen, task })
    }

    fn seen(&self) -> Vec<CallbackRequest> {
        self.seen.lock().unwrap().clone()
    }

    fn fetched(&self) -> Vec<(String, String)> {
        self.seen()
            .into_iter()
            .filter_map(|r| match r.kind {
                CallbackKind::Fetched { file } => Some((r.token.to_string(), file)),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn accepted(req: &CallbackRequest, state: &str) -> Vec<u8> {
    substruct_wire::encode(&CallbackReply {
        machine_id: MachineId::new(format!("m-{}", &req.token.as_str()[..2])).unwrap(),
        state: state.into(),
        next: None,
    })
    .unwrap()
}

fn refused(code: ErrorCode, message: &str) -> Vec<u8> {
    substruct_wire::encode(&ErrorReply {
        code,
        message: message.into(),
    })
    .unwrap()
}

#[tokio::test]
async fn files_are_served_with_the_edge_base_and_gated_by_their_token() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats.url()).await?;
    let kv = bucket(&client).await?;
    let dir = tempfile::tempdir()?;
    let cache = InstallCache::new(dir.path().join("install.json"), site());
    let (t1, t2, t3) = (token("aa11"), token("bb22"), token("cc33"));
    // Present before the edge starts: picked up by the snapshot.
    kv.put(
        install_key(&site(), &t1),
        substruct_wire::encode(&record(&t1, "m-1"))?.into(),
    )
    .await?;
    let edge = Edge::start(client.clone(), &cache, true).await?;
    let preseed = edge.url("/install/aa11/preseed.cfg");
    wait_for("t1 served", WAIT, || async {
        status_of(&preseed).await == 200
    })
    .await?;

    let (code, ct, body) = get(&preseed).await?;
    assert_eq!((code, ct.as_str()), (200, "text/plain; charset=utf-8"));
    assert_eq!(
        body,
        "# m-1\nd-i mirror/http/hostname string http://10.77.0.1:8080\n\
         d-i preseed/late_command string wget -O- --post-data= http://10.77.0.1:8080/api/v1/machines/aa11/done\n"
    );
    let (code, ct, body) = get(&edge.url("/install/aa11/user-data")).await?;
    assert_eq!((code, ct.as_str()), (200, "text/cloud-config"));
    assert_eq!(
        body,
        "#cloud-config\nurl: http://10.77.0.1:8080/images/x {edge\n"
    );
    let (code, _, body) = get(&edge.url("/install/aa11/meta-data")).await?;
    assert_eq!((code, body.as_str()), (200, ""));

    // Wrong token, wrong name, malformed token or name, odd paths: one answer for all.
    for path in [
        "/install/ffff/preseed.cfg",
        "/install/aa11/kickstart.cfg",
        "/install/AA11/preseed.cfg",
        "/install/aa11/preseed.cfg/x",
        "/install/aa11",
        "/install/aa11/",
        "/install/aa11/pre%20seed.cfg",
        "/install/aa11%2fpreseed.cfg",
    ] {
        let (code, _, body) = get(&edge.url(path)).await?;
        assert_eq!((code, body.as_str()), (403, FORBIDDEN), "{path}");
    }
    // Paths a client library would normalise away, sent as they are.
    for target in [
        "/install/aa11/../aa11/preseed.cfg",
        "/install/aa11/..",
        "/install/aa11/./preseed.cfg",
    ] {
        let raw = raw_get(&edge.base, target).await?;
        assert!(
            raw.starts_with("HTTP/1.1 403") && raw.ends_with(FORBIDDEN),
            "{target}: {raw}"
        );
    }

    // A malformed value and another site's key are skipped; later keys still arrive.
    kv.put(
        install_key(&site(), &t2),
        bytes::Bytes::from_static(b"garbage"),
    )
    .await?;
    kv.put(
        install_key(&SiteId::new("s2")?, &t3),
        substruct_wire::encode(&record(&t3, "m-3"))?.into(),
    )
    .await?;
    // A record whose token differs from its key is skipped too.
    kv.put(
        install_key(&site(), &t3),
        substruct_wire::encode(&record(&t2, "m-2"))?.into(),
    )
    .await?;
    let fresh = token("dd44");
    kv.put(
        install_key(&site(), &fresh),
        substruct_wire::encode(&record(&fresh, "m-4"))?.into(),
    )
    .await?;
    let dd = edge.url("/install/dd44/user-data");
    wait_for("dd44 served", WAIT, || async {
        status_of(&dd).await == 200
    })
    .await?;
    for path in ["/install/bb22/preseed.cfg", "/install/cc33/preseed.cfg"] {
        let (code, _, body) = get(&edge.url(path)).await?;
        assert_eq!((code, body.as_str()), (403, FORBIDDEN), "{path}");
    }
    assert_eq!(get(&preseed).await?.0, 200, "t1 still served");
    assert_eq!(edge.table.len(), 2);

    // The controller deletes the key when the machine leaves `installing`: expired.
    kv.delete(install_key(&site(), &t1)).await?;
    wait_for("t1 expired", WAIT, || async {
        status_of(&preseed).await == 403
    })
    .await?;
    let (code, _, body) = get(&preseed).await?;
    assert_eq!((code, body.as_str()), (403, FORBIDDEN));
    kv.purge(install_key(&site(), &fresh)).await?;
    wait_for("dd44 purged", WAIT, || async {
        status_of(&dd).await == 403
    })
    .await?;
    assert!(edge.table.is_empty());
    edge.stop().await
}

#[tokio::test]
async fn each_served_file_is_reported_once() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats.url()).await?;
    let kv = bucket(&client).await?;
    let dir = tempfile::tempdir()?;
    let cache = InstallCache::new(dir.path().join("install.json"), site());
    let (t1, t2) = (token("aa11"), token("bb22"));
    for (t, m) in [(&t1, "m-1"), (&t2, "m-2")] {
        kv.put(
            install_key(&site(), t),
            substruct_wire::encode(&record(t, m))?.into(),
        )
        .await?;
    }
    let edge = Edge::start(client.clone(), &cache, true).await?;
    wait_for("snapshot", WAIT, || async { edge.table.len() == 2 }).await?;

    // Fetched while nobody answers: queued and retried until the controller is there.
    assert_eq!(get(&edge.url("/install/aa11/preseed.cfg")).await?.0, 200);
    let controller = Controller::start(&client, |r| Some(accepted(r, "installing"))).await?;
    wait_for("first fetched callback", WAIT, || async {
        controller.fetched().len() == 1
    })
    .await?;

    // The same file again, a failed fetch, and the other token's file.
    for path in [
        "/install/aa11/preseed.cfg",
        "/install/aa11/preseed.cfg",
        "/install/aa11/nope",
        "/install/bb22/user-data",
        "/install/bb22/user-data",
    ] {
        get(&edge.url(path)).await?;
    }
    // A last, new fetch: the queue is in order, so once it is seen every callback
    // before it has been seen too.
    assert_eq!(get(&edge.url("/install/aa11/meta-data")).await?.0, 200);
    wait_for("sentinel fetched callback", WAIT, || async {
        controller
            .fetched()
            .contains(&("aa11".into(), "meta-data".into()))
    })
    .await?;
    assert_eq!(
        controller.fetched(),
        vec![
            ("aa11".to_owned(), "preseed.cfg".to_owned()),
            ("bb22".to_owned(), "user-data".to_owned()),
            ("aa11".to_owned(), "meta-data".to_owned()),
        ]
    );
    assert!(controller.seen().iter().all(|r| r.site == site()));
    edge.stop().await
}

#[tokio::test]
async fn done_and_failed_are_forwarded_and_the_answer_mapped() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats.url()).await?;
    let dir = tempfile::tempdir()?;
    let cache = InstallCache::new(dir.path().join("install.json"), site());
    let edge = Edge::start(client.clone(), &cache, false).await?;
    // The edge forwards callbacks only for tokens in its install table.
    for t in ["aa11", "bb22", "cc33", "dd44", "ee55"] {
        edge.table.set(token(t), record(&token(t), "m-1"));
    }
    let http = reqwest::Client::new();
    let post = |path: &str, body: &str| http.post(edge.url(path)).body(body.to_owned()).send();

    // Nobody answers: 503, retry in 5 s.
    let r = post("/api/v1/machines/aa11/done", "").await?;
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );

    let controller = Controller::start(&client, |r| match (r.token.as_str(), &r.kind) {
        ("aa11", CallbackKind::Done) => Some(accepted(r, "deployed")),
        ("aa11", CallbackKind::Failed { .. }) => Some(refused(
            ErrorCode::IllegalTransition,
            "machine m-aa is deployed; event failed is not allowed",
        )),
        ("bb22", _) => Some(refused(ErrorCode::Forbidden, "token expired")),
        ("cc33", _) => Some(refused(ErrorCode::Malformed, "bad request")),
        ("dd44", _) => Some(refused(ErrorCode::Unavailable, "store busy")),
        _ => None,
    })
    .await?;

    let r = post("/api/v1/machines/aa11/done", "").await?;
    assert_eq!(r.status().as_u16(), 200);
    let json: serde_json::Value = r.json().await?;
    assert_eq!(
        json,
        serde_json::json!({"machine_id": "m-aa", "state": "deployed"})
    );

    let r = post("/api/v1/machines/bb22/done", "").await?;
    assert_eq!(
        (r.status().as_u16(), r.text().await?.as_str()),
        (403, FORBIDDEN)
    );

    let r = post("/api/v1/machines/aa11/failed", "  disk sda not found\n").await?;
    assert_eq!(r.status().as_u16(), 409);
    assert!(r.text().await?.contains("event failed is not allowed"));

    let r = post("/api/v1/machines/cc33/failed", "x").await?;
    assert_eq!(r.status().as_u16(), 400);
    let r = post("/api/v1/machines/dd44/done", "").await?;
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key(reqwest::header::RETRY_AFTER));

    // A silent controller: the request times out into a 503 too.
    let r = post("/api/v1/machines/ee55/done", "").await?;
    assert_eq!(r.status().as_u16(), 503);

    // Refused by the edge itself, without asking the controller.
    let before = controller.seen().len();
    for path in [
        "/api/v1/machines/NOT-A-TOKEN/done",
        "/api/v1/machines/a_b/failed",
    ] {
        let r = post(path, "").await?;
        assert_eq!(
            (r.status().as_u16(), r.text().await?.as_str()),
            (403, FORBIDDEN),
            "{path}"
        );
    }
    let r = post("/api/v1/machines/aa11/failed", &"x".repeat(4097)).await?;
    assert_eq!(r.status().as_u16(), 413);
    let r = http
        .get(edge.url("/api/v1/machines/aa11/done"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(controller.seen().len(), before);

    // What the controller received.
    let seen: Vec<(String, CallbackKind)> = controller
        .seen()
        .into_iter()
        .map(|r| (r.token.to_string(), r.kind))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("aa11".to_owned(), CallbackKind::Done),
            ("bb22".to_owned(), CallbackKind::Done),
            (
                "aa11".to_owned(),
                CallbackKind::Failed {
                    reason: "disk sda not found".into()
                }
            ),
            (
                "cc33".to_owned(),
                CallbackKind::Failed { reason: "x".into() }
            ),
            ("dd44".to_owned(), CallbackKind::Done),
            ("ee55".to_owned(), CallbackKind::Done),
        ]
    );
    edge.stop().await
}

#[tokio::test]
async fn a_restarted_edge_serves_from_disk_while_nats_is_down() -> Result<()> {
    let mut nats = NatsServer::start()?;
    let client = connect(&nats.url()).await?;
    let kv = bucket(&client).await?;
    let dir = tempfile::tempdir()?;
    let cache = InstallCache::new(dir.path().join("install.json"), site());
    let t1 = token("aa11");
    kv.put(
        install_key(&site(), &t1),
        substruct_wire::encode(&record(&t1, "m-1"))?.into(),
    )
    .await?;
    {
        let edge = Edge::start(client.clone(), &cache, true).await?;
        wait_for("synced to disk", WAIT, || {
            let cache = cache.clone();
            async move { cache.load().map(|t| t.len() == 1).unwrap_or(false) }
        })
        .await?;
        edge.stop().await?;
    }
    drop(kv);
    drop(client);

    // The WAN is cut (NATS unreachable) and the edge restarts from its disk copy.
    nats.kill();
    let offline = connect(&nats.url()).await?;
    let edge = Edge::start(offline, &cache, false).await?;
    let (code, _, body) = get(&edge.url("/install/aa11/preseed.cfg")).await?;
    assert_eq!(code, 200);
    assert!(
        body.contains("hostname string http://10.77.0.1:8080\n"),
        "{body}"
    );
    let (code, _, _) = get(&edge.url("/install/ffff/preseed.cfg")).await?;
    assert_eq!(code, 403);
    // The installer's callback cannot reach the controller: retry later.
    let r = reqwest::Client::new()
        .post(edge.url("/api/v1/machines/aa11/done"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 503);

    // NATS comes back: the fetched callback queued meanwhile is delivered.
    nats.restart()?;
    let client = connect(&nats.url()).await?;
    let controller = Controller::start(&client, |r| Some(accepted(r, "installing"))).await?;
    wait_for("queued fetched callback", WAIT, || async {
        !controller.fetched().is_empty()
    })
    .await
    .context("the fetched callback was not delivered after NATS came back")?;
    assert_eq!(
        controller.fetched(),
        vec![("aa11".to_owned(), "preseed.cfg".to_owned())]
    );
    edge.stop().await
}

/// Each watch keeps its own KV key → token index: two install watchers of one site in
/// one process both see a delete (a process-wide index let only the first one see it).
#[tokio::test]
async fn two_watchers_in_one_process_both_see_deletes() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats.url()).await?;
    let kv = bucket(&client).await?;
    let dir = tempfile::tempdir()?;
    let t = token("two-watchers-1");
    let tables = [InstallTable::new(), InstallTable::new()];
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let cache = InstallCache::new(dir.path().join(format!("install-{i}.json")), site());
        let mut settings = WatchSettings::new(site(), cache);
        settings.max_backoff = Duration::from_millis(500);
        tasks.push(tokio::spawn(install::watch(
            client.clone(),
            settings,
            table.clone(),
            cancel.clone(),
        )));
    }
    let key = install_key(&site(), &t);
    kv.put(
        key.as_str(),
        substruct_wire::encode(&record(&t, "m-1"))?.into(),
    )
    .await?;
    for table in &tables {
        wait_for("both see the put", WAIT, || async {
            table.get(&t).is_some()
        })
        .await?;
    }
    kv.delete(key.as_str()).await?;
    for table in &tables {
        wait_for("both see the delete", WAIT, || async {
            table.get(&t).is_none()
        })
        .await?;
    }
    cancel.cancel();
    for task in tasks {
        tokio::time::timeout(WAIT, task).await??;
    }
    Ok(())
}

/// `method target` with an empty body over a connection from `from`: status and body.
async fn raw_from(
    from: &str,
    to: std::net::SocketAddr,
    method: &str,
    target: &str,
) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(std::net::SocketAddr::new(from.parse()?, 0))?;
    let mut s = sock.connect(to).await?;
    s.write_all(
        format!(
            "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

#[tokio::test]
async fn another_address_gets_no_install_file_and_no_callback() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats.url()).await?;
    let dir = tempfile::tempdir()?;
    let cache = InstallCache::new(dir.path().join("install.json"), site());
    let edge = Edge::start(client.clone(), &cache, false).await?;
    let (t1, t9) = (token("aa11"), token("bb99"));
    edge.table.set(t1.clone(), record(&t1, "m-1"));
    // m-9's MAC is leased to 127.0.0.9: not even the edge's own clients may use its token.
    edge.table.set(t9.clone(), record(&t9, "m-9"));
    let controller = Controller::start(&client, |r| Some(accepted(r, "deployed"))).await?;

    // The machine itself (127.0.0.1) is served.
    let (code, body) = raw_from("127.0.0.1", edge.addr, "GET", "/install/aa11/preseed.cfg").await?;
    assert_eq!(code, 200, "{body}");
    // The attacker, with the right token, from 127.0.0.2: 403 and nothing more.
    for (method, target) in [
        ("GET", "/install/aa11/preseed.cfg"),
        ("POST", "/api/v1/machines/aa11/done"),
        ("POST", "/api/v1/machines/aa11/failed"),
    ] {
        let (code, body) = raw_from("127.0.0.2", edge.addr, method, target).await?;
        assert_eq!((code, body.as_str()), (403, FORBIDDEN), "{method} {target}");
    }
    // A token whose machine holds another address.
    for (method, target) in [
        ("GET", "/install/bb99/preseed.cfg"),
        ("POST", "/api/v1/machines/bb99/done"),
    ] {
        let (code, body) = raw_from("127.0.0.1", edge.addr, method, target).await?;
        assert_eq!((code, body.as_str()), (403, FORBIDDEN), "{method} {target}");
    }
    // Nothing was forwarded but the machine's own fetch.
    wait_for("the machine's fetch reported", WAIT, || async {
        !controller.fetched().is_empty()
    })
    .await?;
    assert!(controller
        .seen()
        .iter()
        .all(|r| r.token == t1
            && !matches!(r.kind, CallbackKind::Done | CallbackKind::Failed { .. })));
    edge.stop().await
}
