//! The agent logging in with its per-boot credential (issue 11): the shipped topology
//! (hub + the site's leaf node in operator mode, `substruct_testkit::nats_topology`), a
//! controller stand-in on the hub, the agent configured from a kernel command line as
//! the edge writes it (`substruct.token=` + `substruct.seed=`). It reports, listens on
//! its credential's command subject and obeys a command sent there; with a credential
//! that expires while it waits, it renews it at the edge's renewal route (a test
//! stand-in that signs with the real `BootCredential::renew`) and still gets commands
//! after the leaf node cut the old login.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use substruct_prospector::agent::{self, AgentConfig, AgentEvent, AgentTuning, Outcome};
use substruct_prospector::{cmdline, facts};
use substruct_testkit::nats_topology::{unix_now, Hub, HubOptions, Leaf, LeafOptions};
use substruct_wire::messages::{Command, DiscoverReply, DiscoverRequest, Instruction};
use substruct_wire::{subjects, BootCredential, Mac, MachineId, SiteId, SiteKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(30);
const SITE: &str = "lab1";

fn site() -> SiteId {
    SiteId::new(SITE).unwrap()
}

fn machine() -> MachineId {
    MachineId::new("m-login-1").unwrap()
}

fn mac() -> Mac {
    Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56])
}

fn tuning() -> AgentTuning {
    AgentTuning {
        request_timeout: Duration::from_secs(2),
        callback_timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        http_timeout: Duration::from_secs(5),
    }
}

fn topology() -> (Hub, Leaf) {
    let hub = Hub::start(HubOptions::default().sites([SITE])).unwrap();
    let leaf = Leaf::start(&hub, SITE, LeafOptions::default()).unwrap();
    leaf.wait_linked(BOUND).unwrap();
    (hub, leaf)
}

async fn controller(hub: &Hub) -> async_nats::Client {
    let (user, password) = hub.controller_credentials();
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(hub.url())
        .await
        .unwrap()
}

/// Answers every discover request with "wait" and hands the requests to the test.
async fn responder(client: &async_nats::Client) -> UnboundedReceiver<DiscoverRequest> {
    let mut sub = client.subscribe(subjects::discover(&site())).await.unwrap();
    client.flush().await.unwrap();
    let (tx, rx) = unbounded_channel();
    let c = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let req = substruct_wire::decode::<DiscoverRequest>(&msg.payload).unwrap();
            let _ = tx.send(req);
            let answer = substruct_wire::encode(&DiscoverReply {
                machine_id: machine(),
                instruction: Instruction::Wait,
            })
            .unwrap();
            if let Some(reply) = msg.reply {
                let _ = c.publish(reply, answer.into()).await;
            }
        }
    });
    rx
}

/// The agent's config from a kernel command line as the edge writes it.
fn config_from_cmdline(
    leaf: &Leaf,
    lifetime: u64,
    edge: Option<&str>,
) -> (
    AgentConfig,
    BootCredential,
    substruct_testkit::nats_topology::UserLogin,
) {
    let (credential, login) = leaf.boot_login(mac(), unix_now(), lifetime).unwrap();
    let line = format!(
        "console=ttyS0 substruct.site={SITE} substruct.nats={} substruct.token={credential} \
         substruct.seed={}{} quiet\n",
        leaf.url(),
        login.seed,
        edge.map(|e| format!(" substruct.edge={e}"))
            .unwrap_or_default()
    );
    let mut cfg = AgentConfig::from_kernel_args(&cmdline::parse(&line), false).unwrap();
    cfg.storage = None;
    (cfg, credential, login)
}

async fn next_event(rx: &mut UnboundedReceiver<AgentEvent>) -> AgentEvent {
    tokio::time::timeout(BOUND, rx.recv())
        .await
        .expect("an agent event in time")
        .expect("agent alive")
}

/// Publishes `instruction` for the machine on `subject` until the agent finishes.
async fn command_until_done(
    controller: &async_nats::Client,
    subject: String,
    instruction: Instruction,
    task: tokio::task::JoinHandle<Result<Outcome, agent::AgentError>>,
) -> Outcome {
    let bytes = substruct_wire::encode(&Command {
        machine_id: machine(),
        instruction,
    })
    .unwrap();
    for _ in 0..200 {
        if task.is_finished() {
            return task.await.unwrap().unwrap();
        }
        controller
            .publish(subject.clone(), bytes.clone().into())
            .await
            .unwrap();
        controller.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!("the agent never obeyed the command on {subject}");
}

/// Runs the agent until the controller stand-in acknowledged its report.
async fn start_acknowledged(
    cfg: AgentConfig,
) -> (
    tokio::task::JoinHandle<Result<Outcome, agent::AgentError>>,
    UnboundedReceiver<AgentEvent>,
) {
    let (tx, mut events) = unbounded_channel();
    let task = tokio::spawn(agent::run_with(
        cfg,
        tuning(),
        Some(tx),
        report(),
        CancellationToken::new(),
    ));
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::Acknowledged { .. }
    ));
    (task, events)
}

fn report() -> substruct_wire::report::HardwareReport {
    facts::gather(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qemu-vm"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_logs_in_with_its_boot_credential_and_obeys_its_own_commands() {
    let (hub, leaf) = topology();
    let controller = controller(&hub).await;
    let mut requests = responder(&controller).await;
    let (cfg, credential, _) = config_from_cmdline(&leaf, 600, None);
    let user_key = cfg
        .login
        .as_ref()
        .expect("a login from the cmdline")
        .user_key();
    assert_eq!(
        agent::inbox_prefix(&cfg),
        subjects::boot_inbox_prefix(&site(), &user_key)
    );
    let (task, mut events) = start_acknowledged(cfg).await;
    let req = requests.recv().await.unwrap();
    assert_eq!(req.boot_token.as_ref(), Some(&credential));
    let cmd_subject = subjects::boot_cmd(&site(), &user_key);
    assert_eq!(
        next_event(&mut events).await,
        AgentEvent::Listening {
            subject: cmd_subject.clone()
        }
    );
    // A command on the machine-id subject (the old way) does not reach it: the login may
    // not even subscribe there. Its own subject does.
    let outcome = command_until_done(&controller, cmd_subject, Instruction::PowerOff, task).await;
    assert_eq!(
        outcome,
        Outcome::PowerOff {
            machine_id: machine()
        }
    );
}

/// The edge's renewal route, played by the test: `GET /credential?token=T` answers
/// `T.renew(site key)` (the function the edge uses), counting renewals.
async fn renewal_stand_in(key: Arc<SiteKey>, lifetime: u64) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let n = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                match stream.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => len += k,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]).into_owned();
            let token = head
                .split_whitespace()
                .nth(1)
                .and_then(|target| target.strip_prefix("/credential?token="))
                .unwrap_or("")
                .to_owned();
            let answer = BootCredential::new(token)
                .ok()
                .and_then(|c| c.renew(&key, &site(), unix_now(), lifetime).ok());
            let response = match answer {
                Some((fresh, _)) => {
                    n.fetch_add(1, Ordering::SeqCst);
                    let body = format!("{fresh}\n");
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                None => "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    (base, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_agent_renews_its_credential_and_still_gets_commands_after_expiry() {
    let (hub, leaf) = topology();
    let controller = controller(&hub).await;
    let _requests = responder(&controller).await;
    let key = Arc::new(SiteKey::from_seed(&leaf.site_key().seed().unwrap()).unwrap());
    // Credentials live 4 s: renewed every 2 s; the first login is cut at 4 s.
    let (edge, renewals) = renewal_stand_in(key, 4).await;
    let (cfg, _, first_login) = config_from_cmdline(&leaf, 4, Some(&edge));
    let user_key = cfg.login.as_ref().unwrap().user_key();
    let (task, mut events) = start_acknowledged(cfg).await;
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::Listening { .. }
    ));
    // Wait until the credential the agent booted with has expired (and been renewed
    // at least twice), so the connection now runs on a renewed one.
    substruct_testkit::wait_for("two renewals", BOUND, || async {
        renewals.load(Ordering::SeqCst) >= 3
    })
    .await
    .unwrap();
    let outcome = command_until_done(
        &controller,
        subjects::boot_cmd(&site(), &user_key),
        Instruction::Reboot,
        task,
    )
    .await;
    assert_eq!(
        outcome,
        Outcome::Reboot {
            machine_id: machine()
        }
    );
    // The command crossed on a connection made after the boot credential expired: the
    // leaf node cuts a login at its JWT's expiry (nats_topology's
    // an_expired_boot_login_is_refused_and_a_live_one_ends_at_expiry) and refuses the
    // boot credential now, so only a renewed JWT can have carried it.
    let old = first_login
        .options()
        .unwrap()
        .custom_inbox_prefix(subjects::boot_inbox_prefix(&site(), &user_key))
        .connect(leaf.url())
        .await;
    assert!(old.is_err(), "the boot credential had not expired yet");
}
