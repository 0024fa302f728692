//! Image deploy and disk wipe, end to end: the agent against a real `nats-server`, the
//! test playing the controller (discover and callback responders, real async-nats
//! clients) and the edge (a real HTTP/1.1 server on loopback). The "disks" are regular
//! files in a temp device directory, described by a generated `/sys/block` tree.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use substruct_prospector::agent::{self, AgentConfig, AgentEvent, AgentTuning, Outcome};
use substruct_prospector::blockdev::Storage;
use substruct_prospector::facts;
use substruct_prospector::http_get::BaseUrl;
use substruct_testkit::NatsServer;
use substruct_wire::messages::{
    CallbackKind, CallbackReply, CallbackRequest, Command, DeployImage, DiscoverReply, ErrorCode,
    ErrorReply, Instruction, WipeMode,
};
use substruct_wire::report::HardwareReport;
use substruct_wire::{subjects, BootToken, MachineId, NatsUrl, SiteId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should happen promptly (no wall-clock assertions).
const BOUND: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;
/// What every fake disk is filled with before a test.
const FILL: u8 = 0xEE;
const IMAGE_PATH: &str = "debian-12/disk.img";

fn site() -> SiteId {
    SiteId::new("lab1").unwrap()
}

fn machine() -> MachineId {
    MachineId::new("9a3c5e1f-8b2d-4f6a-a1c3-5d7e9f0b2c4e").unwrap()
}

fn install_token() -> BootToken {
    BootToken::new("inst4ll-t0k3n").unwrap()
}

fn report() -> HardwareReport {
    facts::gather(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qemu-vm"))
}

/// `len` deterministic pseudo-random bytes (xorshift64).
fn image_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A temp `/sys/block` tree and a device directory of regular files.
struct Lab {
    tmp: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn dev(&self) -> PathBuf {
        self.tmp.path().join("dev")
    }

    fn storage(&self) -> Storage {
        Storage {
            root: self.root(),
            dev_dir: self.dev(),
        }
    }

    /// A disk of `size` bytes filled with [`FILL`]; `parts` = (start, size) in bytes.
    fn disk(&self, name: &str, size: usize, removable: bool, parts: &[(usize, usize)]) {
        let dir = self.root().join("sys/block").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("size"), format!("{}\n", size / 512)).unwrap();
        std::fs::write(dir.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
        for (i, (start, len)) in parts.iter().enumerate() {
            let part = dir.join(format!("{name}{}", i + 1));
            std::fs::create_dir_all(&part).unwrap();
            std::fs::write(part.join("partition"), format!("{}\n", i + 1)).unwrap();
            std::fs::write(part.join("start"), format!("{}\n", start / 512)).unwrap();
            std::fs::write(part.join("size"), format!("{}\n", len / 512)).unwrap();
        }
        std::fs::create_dir_all(self.dev()).unwrap();
        std::fs::write(self.dev().join(name), vec![FILL; size]).unwrap();
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dev().join(name)).unwrap()
    }
}

/// A tiny edge: serves `routes` (path → body) with `Content-Length`, 404 otherwise,
/// and records every request path.
struct Edge {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    _task: JoinHandle<()>,
}

async fn edge(routes: HashMap<String, Vec<u8>>) -> Edge {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let routes = Arc::new(routes);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (seen, routes) = (seen.clone(), routes.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                seen.lock().unwrap().push(path.clone());
                let response = match routes.get(&path) {
                    Some(body) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec()
                    }
                };
                let _ = sock.write_all(&response).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Edge {
        url,
        requests,
        _task: task,
    }
}

impl Edge {
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn callback_ok(state: &str, next: Option<Instruction>) -> Vec<u8> {
    substruct_wire::encode(&CallbackReply {
        machine_id: machine(),
        state: state.into(),
        next,
    })
    .unwrap()
}

fn refusal(code: ErrorCode, message: &str) -> Vec<u8> {
    substruct_wire::encode(&ErrorReply {
        code,
        message: message.into(),
    })
    .unwrap()
}

/// The controller: answers every discover request with `instruction`, and callback
/// requests with `script` in order (the last answer repeats), handing each decoded
/// callback to the test *before* answering it.
async fn controller(
    nats: &NatsServer,
    instruction: Instruction,
    script: Vec<Vec<u8>>,
) -> (UnboundedReceiver<CallbackRequest>, Vec<JoinHandle<()>>) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut discover = client.subscribe(subjects::discover(&site())).await.unwrap();
    let mut callbacks = client.subscribe(subjects::callback(&site())).await.unwrap();
    client.flush().await.unwrap();
    let ack = substruct_wire::encode(&DiscoverReply {
        machine_id: machine(),
        instruction,
    })
    .unwrap();
    let c = client.clone();
    let discover_task = tokio::spawn(async move {
        while let Some(msg) = discover.next().await {
            if let Some(reply) = msg.reply {
                c.publish(reply, ack.clone().into()).await.unwrap();
                c.flush().await.unwrap();
            }
        }
    });
    let (tx, rx) = unbounded_channel();
    let callback_task = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(msg) = callbacks.next().await {
            let req = substruct_wire::decode::<CallbackRequest>(&msg.payload).unwrap();
            let _ = tx.send(req);
            let answer = script[n.min(script.len() - 1)].clone();
            n += 1;
            if let Some(reply) = msg.reply {
                client.publish(reply, answer.into()).await.unwrap();
                client.flush().await.unwrap();
            }
        }
    });
    (rx, vec![discover_task, callback_task])
}

fn tuning() -> AgentTuning {
    AgentTuning {
        request_timeout: Duration::from_secs(2),
        callback_timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(100),
        http_timeout: Duration::from_secs(10),
    }
}

type AgentTask = JoinHandle<Result<Outcome, agent::AgentError>>;

fn start_agent(
    nats: &NatsServer,
    edge: &Edge,
    lab: &Lab,
    cancel: CancellationToken,
) -> (UnboundedReceiver<AgentEvent>, AgentTask) {
    let cfg = AgentConfig {
        nats_url: NatsUrl::new(nats.url()).unwrap(),
        site: site(),
        token: Some(substruct_wire::BootCredential::new("b00t").unwrap()),
        login: None,
        once: false,
        edge: Some(BaseUrl::parse(&edge.url).unwrap()),
        storage: Some(lab.storage()),
    };
    let (tx, rx) = unbounded_channel();
    let task = tokio::spawn(agent::run_with(cfg, tuning(), Some(tx), report(), cancel));
    (rx, task)
}

/// Skips events until one matches `want`; returns it.
async fn event_matching(
    rx: &mut UnboundedReceiver<AgentEvent>,
    what: &str,
    want: impl Fn(&AgentEvent) -> bool,
) -> AgentEvent {
    tokio::time::timeout(BOUND, async {
        loop {
            let e = rx.recv().await.expect("agent alive");
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} event in time"))
}

async fn outcome(task: AgentTask) -> Outcome {
    tokio::time::timeout(BOUND, task)
        .await
        .expect("agent finished in time")
        .unwrap()
        .unwrap()
}

async fn next_callback(rx: &mut UnboundedReceiver<CallbackRequest>) -> CallbackRequest {
    tokio::time::timeout(BOUND, rx.recv())
        .await
        .expect("a callback in time")
        .expect("controller alive")
}

fn deploy_instruction(image: &[u8], disk: Option<&str>) -> DeployImage {
    DeployImage {
        path: IMAGE_PATH.parse().unwrap(),
        sha256: sha256_hex(image).parse().unwrap(),
        size: image.len() as u64,
        disk: disk.map(str::to_owned),
        token: install_token(),
    }
}

fn served(path: &str, body: Vec<u8>) -> HashMap<String, Vec<u8>> {
    HashMap::from([(path.to_owned(), body)])
}

/// Sends a command to the machine (the agent must be listening).
async fn command(nats: &NatsServer, instruction: Instruction) {
    let admin = async_nats::connect(nats.url()).await.unwrap();
    let bytes = substruct_wire::encode(&Command {
        machine_id: machine(),
        instruction,
    })
    .unwrap();
    admin
        .publish(subjects::machine_cmd(&site(), &machine()), bytes.into())
        .await
        .unwrap();
    admin.flush().await.unwrap();
}

#[tokio::test]
async fn image_is_streamed_verified_called_back_and_the_machine_reboots() {
    let lab = Lab::new();
    // A removable stick sorts first: the default target must skip it.
    lab.disk("sda", 32 * MIB, true, &[]);
    lab.disk("vda", 16 * MIB, false, &[]);
    let image = image_bytes(8 * MIB);
    let edge = edge(served(&format!("/images/{IMAGE_PATH}"), image.clone())).await;
    let nats = NatsServer::start().unwrap();
    // The first callback meets a transient refusal and is retried.
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::DeployImage(deploy_instruction(&image, None)),
        vec![
            refusal(ErrorCode::Unavailable, "store down"),
            callback_ok("deployed", None),
        ],
    )
    .await;
    let (mut events, task) = start_agent(&nats, &edge, &lab, CancellationToken::new());

    assert_eq!(
        outcome(task).await,
        Outcome::Reboot {
            machine_id: machine()
        }
    );
    let disk = lab.read("vda");
    assert_eq!(disk.len(), 16 * MIB, "the disk file keeps its size");
    assert!(disk[..8 * MIB] == image[..], "the image is on the disk");
    assert!(
        disk[8 * MIB..].iter().all(|b| *b == FILL),
        "past the image: untouched"
    );
    assert!(
        lab.read("sda").iter().all(|b| *b == FILL),
        "removable disk untouched"
    );
    assert_eq!(edge.requests(), [format!("/images/{IMAGE_PATH}")]);

    for _ in 0..2 {
        let cb = next_callback(&mut callbacks).await;
        assert_eq!(
            cb,
            CallbackRequest {
                site: site(),
                token: install_token(),
                kind: CallbackKind::Done
            }
        );
    }
    assert!(
        callbacks.try_recv().is_err(),
        "no callback after the accepted one"
    );
    assert_eq!(
        event_matching(&mut events, "deployed", |e| matches!(
            e,
            AgentEvent::Deployed { .. }
        ))
        .await,
        AgentEvent::Deployed {
            disk: "vda".into(),
            bytes: 8 * MIB as u64
        }
    );
    match event_matching(&mut events, "callback retry", |e| {
        matches!(e, AgentEvent::CallbackAttemptFailed { .. })
    })
    .await
    {
        AgentEvent::CallbackAttemptFailed { attempt, kind, .. } => {
            assert_eq!((attempt, kind), (1, CallbackKind::Done))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_deploy_command_while_waiting_is_carried_out() {
    let lab = Lab::new();
    lab.disk("nvme0n1", 16 * MIB, false, &[]);
    lab.disk("vdb", 16 * MIB, false, &[]);
    let image = image_bytes(3 * MIB + 123);
    let edge = edge(served(&format!("/images/{IMAGE_PATH}"), image.clone())).await;
    let nats = NatsServer::start().unwrap();
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::Wait,
        vec![callback_ok("deployed", None)],
    )
    .await;
    let (mut events, task) = start_agent(&nats, &edge, &lab, CancellationToken::new());
    event_matching(&mut events, "listening", |e| {
        matches!(e, AgentEvent::Listening { .. })
    })
    .await;
    command(
        &nats,
        Instruction::DeployImage(deploy_instruction(&image, Some("vdb"))),
    )
    .await;
    assert_eq!(
        outcome(task).await,
        Outcome::Reboot {
            machine_id: machine()
        }
    );
    assert_eq!(next_callback(&mut callbacks).await.kind, CallbackKind::Done);
    assert!(lab.read("vdb")[..image.len()] == image[..]);
    assert!(
        lab.read("nvme0n1").iter().all(|b| *b == FILL),
        "named disk only"
    );
}

/// Runs a deploy that must fail; returns the `Failed` reason and checks the agent
/// then waits for commands (a power-off command ends it).
async fn failing_deploy(lab: &Lab, edge: &Edge, instruction: DeployImage) -> String {
    let nats = NatsServer::start().unwrap();
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::DeployImage(instruction),
        vec![callback_ok("failed", None)],
    )
    .await;
    let (mut events, task) = start_agent(&nats, edge, lab, CancellationToken::new());
    let cb = next_callback(&mut callbacks).await;
    assert_eq!((cb.site, cb.token), (site(), install_token()));
    let CallbackKind::Failed { reason } = cb.kind else {
        panic!("expected a Failed callback, got {:?}", cb.kind);
    };
    // No reboot: the agent listens for the controller's next command.
    event_matching(&mut events, "listening", |e| {
        matches!(e, AgentEvent::Listening { .. })
    })
    .await;
    assert!(!task.is_finished());
    command(&nats, Instruction::PowerOff).await;
    assert_eq!(
        outcome(task).await,
        Outcome::PowerOff {
            machine_id: machine()
        }
    );
    assert!(callbacks.try_recv().is_err(), "exactly one callback");
    reason
}

/// An 8 MiB MBR image: one partition from 1 MiB to its end.
fn mbr_image() -> Vec<u8> {
    let mut image = image_bytes(8 * MIB);
    image[446..512].fill(0);
    image[446 + 4] = 0x83;
    image[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    image[446 + 12..446 + 16].copy_from_slice(&((7 * MIB / 512) as u32).to_le_bytes());
    image[510] = 0x55;
    image[511] = 0xaa;
    image
}

#[tokio::test]
async fn a_seeded_deploy_adds_the_cidata_partition_with_the_edges_files() {
    let lab = Lab::new();
    lab.disk("vda", 64 * MIB, false, &[]);
    let image = mbr_image();
    let token = install_token();
    let meta = b"instance-id: m-1\nlocal-hostname: web-1\n".to_vec();
    let user = b"#cloud-config\nhostname: web-1\n".to_vec();
    let mut routes = served(&format!("/images/{IMAGE_PATH}"), image.clone());
    routes.insert(format!("/install/{token}/meta-data"), meta.clone());
    routes.insert(format!("/install/{token}/user-data"), user.clone());
    let edge = edge(routes).await;
    let nats = NatsServer::start().unwrap();
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::DeployImageSeeded(deploy_instruction(&image, None)),
        vec![callback_ok("deployed", None)],
    )
    .await;
    let (_events, task) = start_agent(&nats, &edge, &lab, CancellationToken::new());
    assert_eq!(
        outcome(task).await,
        Outcome::Reboot {
            machine_id: machine()
        }
    );
    assert_eq!(next_callback(&mut callbacks).await.kind, CallbackKind::Done);
    assert_eq!(
        edge.requests(),
        // The seed first, so a refused seed leaves the disk alone.
        [
            format!("/install/{token}/meta-data"),
            format!("/install/{token}/user-data"),
            format!("/images/{IMAGE_PATH}"),
        ]
    );
    let disk = lab.read("vda");
    // The image, but for its new MBR entry 2: FAT32 LBA over the disk's last 8 MiB.
    assert!(disk[..446] == image[..446] && disk[512..8 * MIB] == image[512..]);
    let e = &disk[446 + 16..446 + 32];
    assert_eq!(e[4], 0x0c);
    let start = u32::from_le_bytes(e[8..12].try_into().unwrap()) as usize * 512;
    let len = u32::from_le_bytes(e[12..16].try_into().unwrap()) as usize * 512;
    assert_eq!((start, len), (56 * MIB, 8 * MIB));
    let fs = fatfs::FileSystem::new(
        std::io::Cursor::new(disk[start..start + len].to_vec()),
        fatfs::FsOptions::new(),
    )
    .unwrap();
    assert_eq!(fs.volume_label().trim_end(), "CIDATA");
    for (name, body) in [("meta-data", &meta), ("user-data", &user)] {
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut fs.root_dir().open_file(name).unwrap(), &mut got).unwrap();
        assert_eq!(&got, body, "{name}");
    }
}

#[tokio::test]
async fn a_seed_the_edge_refuses_fails_the_deploy_with_the_reason() {
    let lab = Lab::new();
    lab.disk("vda", 64 * MIB, false, &[]);
    let image = mbr_image();
    let token = install_token();
    let mut routes = served(&format!("/images/{IMAGE_PATH}"), image.clone());
    routes.insert(
        format!("/install/{token}/meta-data"),
        b"instance-id: x\n".to_vec(),
    );
    let edge = edge(routes).await;
    let nats = NatsServer::start().unwrap();
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::DeployImageSeeded(deploy_instruction(&image, None)),
        vec![callback_ok("failed", None)],
    )
    .await;
    let (_events, task) = start_agent(&nats, &edge, &lab, CancellationToken::new());
    let cb = next_callback(&mut callbacks).await;
    let CallbackKind::Failed { reason } = cb.kind else {
        panic!("expected Failed, got {:?}", cb.kind);
    };
    assert!(
        reason.starts_with("cloud-init seed: fetching the cloud-init user-data failed: HTTP 404"),
        "{reason}"
    );
    // The seed is fetched before the image is written: the disk was not touched.
    assert!(
        lab.read("vda").iter().all(|&b| b == FILL),
        "the disk was written"
    );
    command(&nats, Instruction::PowerOff).await;
    assert_eq!(
        outcome(task).await,
        Outcome::PowerOff {
            machine_id: machine()
        }
    );
}

#[tokio::test]
async fn an_oversized_seed_file_is_refused_before_the_table_changes() {
    let lab = Lab::new();
    lab.disk("vda", 64 * MIB, false, &[]);
    let image = mbr_image();
    let token = install_token();
    let mut routes = served(&format!("/images/{IMAGE_PATH}"), image.clone());
    routes.insert(format!("/install/{token}/meta-data"), vec![b'#'; MIB + 1]);
    let edge = edge(routes).await;
    let nats = NatsServer::start().unwrap();
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::DeployImageSeeded(deploy_instruction(&image, None)),
        vec![callback_ok("failed", None)],
    )
    .await;
    let (_events, task) = start_agent(&nats, &edge, &lab, CancellationToken::new());
    let cb = next_callback(&mut callbacks).await;
    let CallbackKind::Failed { reason } = cb.kind else {
        panic!("expected Failed, got {:?}", cb.kind);
    };
    assert_eq!(
        reason,
        format!(
            "cloud-init seed: the cloud-init meta-data is {} bytes; the limit is {}",
            MIB + 1,
            MIB
        )
    );
    assert!(
        lab.read("vda").iter().all(|&b| b == FILL),
        "the disk was written"
    );
    command(&nats, Instruction::PowerOff).await;
    assert_eq!(
        outcome(task).await,
        Outcome::PowerOff {
            machine_id: machine()
        }
    );
}

#[tokio::test]
async fn a_disk_without_room_for_the_seed_is_refused_before_any_write() {
    let lab = Lab::new();
    // The 8 MiB image fits a 12 MiB disk, the 8 MiB seed partition after it does not.
    lab.disk("vda", 12 * MIB, false, &[]);
    let image = mbr_image();
    let token = install_token();
    let mut routes = served(&format!("/images/{IMAGE_PATH}"), image.clone());
    routes.insert(
        format!("/install/{token}/meta-data"),
        b"instance-id: x\n".to_vec(),
    );
    routes.insert(
        format!("/install/{token}/user-data"),
        b"#cloud-config\n".to_vec(),
    );
    let edge = edge(routes).await;
    let nats = NatsServer::start().unwrap();
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::DeployImageSeeded(deploy_instruction(&image, None)),
        vec![callback_ok("failed", None)],
    )
    .await;
    let (_events, task) = start_agent(&nats, &edge, &lab, CancellationToken::new());
    let cb = next_callback(&mut callbacks).await;
    let CallbackKind::Failed { reason } = cb.kind else {
        panic!("expected Failed, got {:?}", cb.kind);
    };
    assert_eq!(
        reason,
        format!(
            "disk: the image ({} bytes) and the cloud-init seed partition after it need {} bytes; disk vda has {}",
            8 * MIB,
            17 * MIB,
            12 * MIB
        )
    );
    assert!(
        lab.read("vda").iter().all(|&b| b == FILL),
        "the disk was written"
    );
    command(&nats, Instruction::PowerOff).await;
    assert_eq!(
        outcome(task).await,
        Outcome::PowerOff {
            machine_id: machine()
        }
    );
}

#[tokio::test]
async fn a_corrupted_image_fails_with_the_sha256_mismatch() {
    let lab = Lab::new();
    lab.disk("vda", 16 * MIB, false, &[]);
    let image = image_bytes(8 * MIB);
    let mut corrupted = image.clone();
    corrupted[5 * MIB + 17] ^= 0x01;
    let edge = edge(served(&format!("/images/{IMAGE_PATH}"), corrupted.clone())).await;
    let instruction = deploy_instruction(&image, None);
    let reason = failing_deploy(&lab, &edge, instruction).await;
    assert_eq!(
        reason,
        format!(
            "sha256 mismatch: expected {}, got {}",
            sha256_hex(&image),
            sha256_hex(&corrupted)
        )
    );
}

#[tokio::test]
async fn a_missing_image_fails_with_the_http_status() {
    let lab = Lab::new();
    lab.disk("vda", 16 * MIB, false, &[]);
    let image = image_bytes(MIB);
    let edge = edge(HashMap::new()).await;
    let reason = failing_deploy(&lab, &edge, deploy_instruction(&image, None)).await;
    assert!(reason.contains("HTTP 404 Not Found"), "{reason}");
    assert!(
        reason.contains(&format!("/images/{IMAGE_PATH}")),
        "{reason}"
    );
    assert!(lab.read("vda").iter().all(|b| *b == FILL), "disk untouched");
}

#[tokio::test]
async fn an_image_larger_than_the_disk_is_refused_before_anything_is_written() {
    let lab = Lab::new();
    lab.disk("vda", 4 * MIB, false, &[]);
    let image = image_bytes(8 * MIB);
    let edge = edge(served(&format!("/images/{IMAGE_PATH}"), image.clone())).await;
    let reason = failing_deploy(&lab, &edge, deploy_instruction(&image, None)).await;
    assert_eq!(
        reason,
        format!(
            "disk: the image ({} bytes) does not fit disk vda ({} bytes)",
            8 * MIB,
            4 * MIB
        )
    );
    assert!(lab.read("vda").iter().all(|b| *b == FILL), "disk untouched");
    assert!(edge.requests().is_empty(), "not even downloaded");
}

#[tokio::test]
async fn a_removable_or_unknown_target_disk_is_refused() {
    let lab = Lab::new();
    lab.disk("sdb", 16 * MIB, true, &[]);
    let image = image_bytes(MIB);
    let edge = edge(served(&format!("/images/{IMAGE_PATH}"), image.clone())).await;
    let reason = failing_deploy(&lab, &edge, deploy_instruction(&image, Some("sdb"))).await;
    assert_eq!(
        reason,
        "cannot use the target disk: disk sdb is removable, refused"
    );
    let reason = failing_deploy(&lab, &edge, deploy_instruction(&image, None)).await;
    assert!(reason.contains("no usable disk"), "{reason}");
    assert!(lab.read("sdb").iter().all(|b| *b == FILL));
    // Two usable disks and none named: no guess (one may hold data), both are named.
    lab.disk("vda", 16 * MIB, false, &[]);
    lab.disk("nvme0n1", 16 * MIB, false, &[]);
    let reason = failing_deploy(&lab, &edge, deploy_instruction(&image, None)).await;
    assert_eq!(
        reason,
        "cannot use the target disk: several disks could take the image (nvme0n1, vda); \
         name one in the profile's target_disk"
    );
    for name in ["sdb", "vda", "nvme0n1"] {
        assert!(
            lab.read(name).iter().all(|b| *b == FILL),
            "{name} untouched"
        );
    }
}

#[tokio::test]
async fn a_forbidden_callback_is_not_retried_and_the_machine_does_not_reboot() {
    let lab = Lab::new();
    lab.disk("vda", 16 * MIB, false, &[]);
    let image = image_bytes(2 * MIB);
    let edge = edge(served(&format!("/images/{IMAGE_PATH}"), image.clone())).await;
    let nats = NatsServer::start().unwrap();
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::DeployImage(deploy_instruction(&image, None)),
        vec![refusal(ErrorCode::Forbidden, "unknown or expired token")],
    )
    .await;
    let cancel = CancellationToken::new();
    let (mut events, task) = start_agent(&nats, &edge, &lab, cancel.clone());
    match event_matching(&mut events, "callback refused", |e| {
        matches!(e, AgentEvent::CallbackRefused { .. })
    })
    .await
    {
        AgentEvent::CallbackRefused {
            kind,
            code,
            message,
        } => {
            assert_eq!(kind, CallbackKind::Done);
            assert_eq!(code, ErrorCode::Forbidden);
            assert_eq!(message, "unknown or expired token");
        }
        other => panic!("{other:?}"),
    }
    // The refusal ends the callback loop: the agent waits for commands instead.
    event_matching(&mut events, "listening", |e| {
        matches!(e, AgentEvent::Listening { .. })
    })
    .await;
    assert_eq!(next_callback(&mut callbacks).await.kind, CallbackKind::Done);
    assert!(
        callbacks.try_recv().is_err(),
        "the refused callback was retried"
    );
    assert!(!task.is_finished());
    cancel.cancel();
    assert_eq!(outcome(task).await, Outcome::Cancelled);
}

/// Disks for the wipe tests: vda with two partitions, nvme0n1 without, a removable sda
/// and a loop device that must stay untouched.
fn wipe_lab() -> Lab {
    let lab = Lab::new();
    lab.disk(
        "vda",
        16 * MIB,
        false,
        &[(MIB, 6 * MIB), (7 * MIB, 8 * MIB)],
    );
    lab.disk("nvme0n1", 8 * MIB, false, &[]);
    lab.disk("sda", 4 * MIB, true, &[(MIB, MIB)]);
    lab.disk("loop0", 4 * MIB, false, &[]);
    lab
}

/// Asserts `bytes[r]` is all zero for the `zero` ranges (in MiB) and [`FILL`] elsewhere.
fn assert_zeroed(name: &str, bytes: &[u8], zero: &[(usize, usize)]) {
    for (mib, chunk) in bytes.chunks(MIB).enumerate() {
        let expect_zero = zero.iter().any(|(s, e)| (*s..*e).contains(&mib));
        let expected = if expect_zero { 0 } else { FILL };
        if let Some(i) = chunk.iter().position(|b| *b != expected) {
            panic!(
                "{name}: byte {} is {:#04x}, expected {expected:#04x}",
                mib * MIB + i,
                chunk[i]
            );
        }
    }
}

async fn wipe_and_follow(mode: WipeMode) {
    let lab = wipe_lab();
    let edge = edge(HashMap::new()).await;
    let nats = NatsServer::start().unwrap();
    let wipe_token = BootToken::new("w1pe").unwrap();
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::Wipe {
            mode,
            token: wipe_token.clone(),
        },
        vec![callback_ok("discovered", Some(Instruction::PowerOff))],
    )
    .await;
    let (mut events, task) = start_agent(&nats, &edge, &lab, CancellationToken::new());
    // The reply's next instruction is followed.
    assert_eq!(
        outcome(task).await,
        Outcome::PowerOff {
            machine_id: machine()
        }
    );
    assert_eq!(
        next_callback(&mut callbacks).await,
        CallbackRequest {
            site: site(),
            token: wipe_token,
            kind: CallbackKind::Wiped
        }
    );
    assert_eq!(
        event_matching(&mut events, "wiped", |e| matches!(
            e,
            AgentEvent::Wiped { .. }
        ))
        .await,
        AgentEvent::Wiped {
            disks: vec!["nvme0n1".into(), "vda".into()]
        }
    );
    // vda: first MiB, first MiB of each partition (1 MiB, 7 MiB), last MiB.
    assert_zeroed("vda", &lab.read("vda"), &[(0, 2), (7, 8), (15, 16)]);
    assert_zeroed("nvme0n1", &lab.read("nvme0n1"), &[(0, 1), (7, 8)]);
    assert_zeroed("sda", &lab.read("sda"), &[]);
    assert_zeroed("loop0", &lab.read("loop0"), &[]);
}

#[tokio::test]
async fn quick_wipe_zeroes_the_signature_ranges_then_follows_next() {
    wipe_and_follow(WipeMode::Quick).await;
}

#[tokio::test]
async fn discard_wipe_falls_back_to_quick_on_regular_files() {
    wipe_and_follow(WipeMode::Discard).await;
}

#[tokio::test]
async fn wiped_without_next_waits_for_commands() {
    let lab = wipe_lab();
    let edge = edge(HashMap::new()).await;
    let nats = NatsServer::start().unwrap();
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::Wait,
        vec![callback_ok("discovered", None)],
    )
    .await;
    let (mut events, task) = start_agent(&nats, &edge, &lab, CancellationToken::new());
    event_matching(&mut events, "listening", |e| {
        matches!(e, AgentEvent::Listening { .. })
    })
    .await;
    command(
        &nats,
        Instruction::Wipe {
            mode: WipeMode::Quick,
            token: install_token(),
        },
    )
    .await;
    assert_eq!(
        next_callback(&mut callbacks).await.kind,
        CallbackKind::Wiped
    );
    event_matching(&mut events, "callback accepted", |e| {
        matches!(e, AgentEvent::CallbackAccepted { .. })
    })
    .await;
    // Still listening on the same subscription: a reboot command ends it.
    command(&nats, Instruction::Reboot).await;
    assert_eq!(
        outcome(task).await,
        Outcome::Reboot {
            machine_id: machine()
        }
    );
    assert_zeroed("vda", &lab.read("vda"), &[(0, 2), (7, 8), (15, 16)]);
}

#[tokio::test]
async fn a_run_without_storage_refuses_to_write_disks() {
    let lab = Lab::new();
    lab.disk("vda", 16 * MIB, false, &[]);
    let image = image_bytes(MIB);
    let edge = edge(served(&format!("/images/{IMAGE_PATH}"), image.clone())).await;
    let nats = NatsServer::start().unwrap();
    let (mut callbacks, _c) = controller(
        &nats,
        Instruction::DeployImage(deploy_instruction(&image, None)),
        vec![callback_ok("failed", None)],
    )
    .await;
    // A CLI run without --dev-dir: no storage.
    let cfg = AgentConfig {
        nats_url: NatsUrl::new(nats.url()).unwrap(),
        site: site(),
        token: None,
        login: None,
        once: true,
        edge: Some(BaseUrl::parse(&edge.url).unwrap()),
        storage: None,
    };
    let task = tokio::spawn(agent::run_with(
        cfg,
        tuning(),
        None,
        report(),
        CancellationToken::new(),
    ));
    // With --once, "wait" after the failure ends the run.
    assert_eq!(
        outcome(task).await,
        Outcome::Acknowledged {
            machine_id: machine()
        }
    );
    match next_callback(&mut callbacks).await.kind {
        CallbackKind::Failed { reason } => assert_eq!(
            reason,
            "this prospector run may not write disks (a CLI run needs --dev-dir DIR)"
        ),
        other => panic!("{other:?}"),
    }
    assert!(lab.read("vda").iter().all(|b| *b == FILL));
    assert!(edge.requests().is_empty());
}

/// A raw image with data, long zero runs (holes for qcow2) and an MBR: what the real
/// tools below convert.
fn holey_image() -> Vec<u8> {
    let mut image = mbr_image();
    // 1–2 MiB and 5–6.5 MiB are zeros: qemu-img leaves those clusters unallocated.
    image[MIB..2 * MIB].fill(0);
    image[5 * MIB..6 * MIB + MIB / 2].fill(0);
    // A compressible stretch too.
    image[3 * MIB..4 * MIB].fill(0x5A);
    image
}

/// Runs `cmd`; its stdout, or the test fails naming the command.
fn tool_output(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The image in each form the real tools write (name, bytes): qcow2 plain, deflate-
/// and zstd-compressed, 4 KiB clusters, version 2; zstd with and without the size in its
/// header; xz in one block and in several.
fn converted_forms(raw: &[u8], dir: &Path) -> Vec<(String, Vec<u8>)> {
    let src = dir.join("image.raw");
    std::fs::write(&src, raw).unwrap();
    let mut forms = Vec::new();
    for (name, opts) in [
        ("qcow2", vec!["-O", "qcow2"]),
        ("qcow2 -c (zlib)", vec!["-c", "-O", "qcow2"]),
        (
            "qcow2 -c (zstd)",
            vec!["-c", "-O", "qcow2", "-o", "compression_type=zstd"],
        ),
        (
            "qcow2 4 KiB clusters",
            vec!["-O", "qcow2", "-o", "cluster_size=4096"],
        ),
        (
            "qcow2 v2 (compat=0.10) -c",
            vec!["-c", "-O", "qcow2", "-o", "compat=0.10"],
        ),
    ] {
        let out = dir.join("out.qcow2");
        let _ = std::fs::remove_file(&out);
        tool_output(
            std::process::Command::new("qemu-img")
                .arg("convert")
                .args(["-f", "raw"])
                .args(&opts)
                .arg(&src)
                .arg(&out),
        );
        forms.push((name.to_owned(), std::fs::read(&out).unwrap()));
    }
    forms.push((
        "zstd (size in the header)".into(),
        tool_output(
            std::process::Command::new("zstd")
                .args(["-q", "-c"])
                .arg(&src),
        ),
    ));
    // From a pipe zstd cannot know the size: no Frame_Content_Size.
    let mut child = std::process::Command::new("zstd")
        .args(["-q", "-c", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = raw.to_vec();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &body));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success());
    forms.push(("zstd (streamed, no size)".into(), out.stdout));
    forms.push((
        "xz (one block)".into(),
        tool_output(
            std::process::Command::new("xz")
                .args(["-c", "-T1"])
                .arg(&src),
        ),
    ));
    forms.push((
        "xz (1 MiB blocks)".into(),
        tool_output(
            std::process::Command::new("xz")
                .args(["-c", "-T1", "--block-size=1MiB", "--check=crc32"])
                .arg(&src),
        ),
    ));
    forms
}

#[tokio::test]
async fn qcow2_zstd_and_xz_images_from_the_real_tools_land_as_the_raw_image() {
    if !substruct_testkit::gate::system_test(&[
        substruct_testkit::gate::Need::Tool("qemu-img"),
        substruct_testkit::gate::Need::Tool("zstd"),
        substruct_testkit::gate::Need::Tool("xz"),
    ]) {
        return;
    }
    let raw = holey_image();
    let work = tempfile::tempdir().unwrap();
    let forms = converted_forms(&raw, work.path());
    for (name, file) in forms {
        assert!(file.len() < raw.len(), "{name}: smaller than the raw image");
        // A server per form: the previous form's responders are still subscribed.
        let nats = NatsServer::start().unwrap();
        let lab = Lab::new();
        lab.disk("vda", 16 * MIB, false, &[]);
        let edge = edge(served(&format!("/images/{IMAGE_PATH}"), file.clone())).await;
        let (mut callbacks, _c) = controller(
            &nats,
            Instruction::DeployImage(deploy_instruction(&file, None)),
            vec![callback_ok("deployed", None)],
        )
        .await;
        let (mut events, task) = start_agent(&nats, &edge, &lab, CancellationToken::new());
        let cb = next_callback(&mut callbacks).await;
        assert_eq!(cb.kind, CallbackKind::Done, "{name}");
        assert_eq!(
            outcome(task).await,
            Outcome::Reboot {
                machine_id: machine()
            },
            "{name}"
        );
        let disk = lab.read("vda");
        assert!(
            disk[..raw.len()] == raw[..],
            "{name}: the disk holds the raw image"
        );
        assert!(
            disk[raw.len()..].iter().all(|b| *b == FILL),
            "{name}: nothing written past the image"
        );
        // The agent reports the image's size, not what was sent.
        let mut deployed = None;
        while let Ok(e) = events.try_recv() {
            if let AgentEvent::Deployed { bytes, .. } = e {
                deployed = Some(bytes);
            }
        }
        assert_eq!(deployed, Some(raw.len() as u64), "{name}");
    }
}

#[tokio::test]
async fn a_compressed_image_that_expands_past_the_disk_fails_at_the_disks_end() {
    if !substruct_testkit::gate::system_test(&[substruct_testkit::gate::Need::Tool("xz")]) {
        return;
    }
    let raw = holey_image();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("image.raw");
    std::fs::write(&src, &raw).unwrap();
    // xz names no size up front: the overflow is found while writing.
    let file = tool_output(
        std::process::Command::new("xz")
            .args(["-c", "-T1"])
            .arg(&src),
    );
    // Smaller than the 5 MiB disk as sent (so not refused before the fetch); 8 MiB inside.
    assert!(file.len() < 5 * MIB);
    let lab = Lab::new();
    lab.disk("vda", 5 * MIB, false, &[]);
    let edge = edge(served(&format!("/images/{IMAGE_PATH}"), file.clone())).await;
    let reason = failing_deploy(&lab, &edge, deploy_instruction(&file, None)).await;
    assert!(
        reason.starts_with("xz image onto ")
            && reason.ends_with(&format!(
                "the image expands past the disk's end ({} bytes): xz data for byte {}",
                5 * MIB,
                5 * MIB
            )),
        "{reason}"
    );
    let disk = lab.read("vda");
    assert_eq!(disk.len(), 5 * MIB, "the disk file did not grow");
    assert!(
        disk[..5 * MIB] == raw[..5 * MIB],
        "written up to the disk's end"
    );
}

#[tokio::test]
async fn a_qcow2_larger_than_the_disk_is_refused_before_any_write() {
    if !substruct_testkit::gate::system_test(&[substruct_testkit::gate::Need::Tool("qemu-img")]) {
        return;
    }
    let raw = holey_image();
    let work = tempfile::tempdir().unwrap();
    let (_, file) = converted_forms(&raw, work.path()).swap_remove(1);
    // Smaller than the 6 MiB disk as sent; its header says 8 MiB.
    assert!(file.len() < 6 * MIB);
    let lab = Lab::new();
    lab.disk("vda", 6 * MIB, false, &[]);
    let edge = edge(served(&format!("/images/{IMAGE_PATH}"), file.clone())).await;
    let reason = failing_deploy(&lab, &edge, deploy_instruction(&file, None)).await;
    assert_eq!(
        reason,
        format!(
            "disk: the image ({} bytes) does not fit disk vda ({} bytes)",
            8 * MIB,
            6 * MIB
        )
    );
    assert!(lab.read("vda").iter().all(|b| *b == FILL), "disk untouched");
}
