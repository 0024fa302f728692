//! The agent against a real `nats-server` with a test-side responder on the discover
//! subject (real async-nats clients on both sides, nothing mocked).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use substruct_prospector::agent::{
    self, AgentConfig, AgentEvent, AgentTuning, AttemptFailure, Outcome,
};
use substruct_prospector::facts;
use substruct_testkit::NatsServer;
use substruct_wire::messages::{
    Command, DiscoverReply, DiscoverRequest, ErrorCode, ErrorReply, Instruction,
};
use substruct_wire::report::HardwareReport;
use substruct_wire::{subjects, BootCredential, MachineId, NatsUrl, SiteId};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should happen promptly (no wall-clock assertions).
const BOUND: Duration = Duration::from_secs(20);

fn tuning() -> AgentTuning {
    AgentTuning {
        request_timeout: Duration::from_secs(2),
        callback_timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(100),
        ..AgentTuning::default()
    }
}

fn site() -> SiteId {
    SiteId::new("lab1").unwrap()
}

fn machine() -> MachineId {
    MachineId::new("9a3c5e1f-8b2d-4f6a-a1c3-5d7e9f0b2c4e").unwrap()
}

fn report() -> HardwareReport {
    facts::gather(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qemu-vm"))
}

fn config(nats: &NatsServer, once: bool) -> AgentConfig {
    AgentConfig {
        nats_url: NatsUrl::new(nats.url()).unwrap(),
        site: site(),
        token: Some(BootCredential::new("t0k3n").unwrap()),
        login: None,
        once,
        edge: None,
        storage: None,
    }
}

fn ack(instruction: Instruction) -> Vec<u8> {
    substruct_wire::encode(&DiscoverReply {
        machine_id: machine(),
        instruction,
    })
    .unwrap()
}

/// Answers discover requests with `script` in order (the last answer repeats) and
/// hands every decoded request to the test.
async fn responder(
    nats: &NatsServer,
    script: Vec<Vec<u8>>,
) -> (UnboundedReceiver<DiscoverRequest>, JoinHandle<()>) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client.subscribe(subjects::discover(&site())).await.unwrap();
    client.flush().await.unwrap();
    let (tx, rx) = unbounded_channel();
    let task = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(msg) = sub.next().await {
            let req = substruct_wire::decode::<DiscoverRequest>(&msg.payload).unwrap();
            let _ = tx.send(req);
            let answer = script[n.min(script.len() - 1)].clone();
            n += 1;
            if let Some(reply) = msg.reply {
                client.publish(reply, answer.into()).await.unwrap();
                client.flush().await.unwrap();
            }
        }
    });
    (rx, task)
}

fn start_agent(
    cfg: AgentConfig,
    cancel: CancellationToken,
) -> (
    UnboundedReceiver<AgentEvent>,
    JoinHandle<Result<Outcome, agent::AgentError>>,
) {
    let (tx, rx) = unbounded_channel();
    let task = tokio::spawn(agent::run_with(cfg, tuning(), Some(tx), report(), cancel));
    (rx, task)
}

async fn next_event(rx: &mut UnboundedReceiver<AgentEvent>) -> AgentEvent {
    tokio::time::timeout(BOUND, rx.recv())
        .await
        .expect("an agent event in time")
        .expect("agent alive")
}

async fn outcome(task: JoinHandle<Result<Outcome, agent::AgentError>>) -> Outcome {
    tokio::time::timeout(BOUND, task)
        .await
        .expect("agent finished in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn acknowledged_once_returns_the_machine_id_and_sends_the_whole_report() {
    let nats = NatsServer::start().unwrap();
    let (mut requests, _r) = responder(&nats, vec![ack(Instruction::Wait)]).await;
    let (mut events, task) = start_agent(config(&nats, true), CancellationToken::new());
    assert_eq!(
        outcome(task).await,
        Outcome::Acknowledged {
            machine_id: machine()
        }
    );
    let req = requests.recv().await.unwrap();
    assert_eq!(req.site, site());
    assert_eq!(req.boot_token, Some(BootCredential::new("t0k3n").unwrap()));
    assert_eq!(req.report, report());
    assert_eq!(
        next_event(&mut events).await,
        AgentEvent::Acknowledged {
            machine_id: machine(),
            instruction: Instruction::Wait
        }
    );
}

#[tokio::test]
async fn absent_controller_is_retried_until_it_appears() {
    let nats = NatsServer::start().unwrap();
    let (mut events, task) = start_agent(config(&nats, true), CancellationToken::new());
    // Two failed attempts with nobody listening, then the controller comes up.
    for expected_attempt in 1..=2 {
        match next_event(&mut events).await {
            AgentEvent::AttemptFailed {
                attempt,
                failure,
                retry_in,
            } => {
                assert_eq!(attempt, expected_attempt);
                assert_eq!(failure, AttemptFailure::NoResponders);
                assert!(retry_in <= Duration::from_millis(100));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (mut requests, _r) = responder(&nats, vec![ack(Instruction::Wait)]).await;
    assert_eq!(
        outcome(task).await,
        Outcome::Acknowledged {
            machine_id: machine()
        }
    );
    assert!(requests.recv().await.is_some());
}

#[tokio::test]
async fn error_reply_is_logged_and_retried() {
    let nats = NatsServer::start().unwrap();
    let refused = substruct_wire::encode(&ErrorReply {
        code: ErrorCode::Unavailable,
        message: "store is down".into(),
    })
    .unwrap();
    let (mut requests, _r) = responder(&nats, vec![refused, ack(Instruction::Wait)]).await;
    let (mut events, task) = start_agent(config(&nats, true), CancellationToken::new());
    assert_eq!(
        outcome(task).await,
        Outcome::Acknowledged {
            machine_id: machine()
        }
    );
    match next_event(&mut events).await {
        AgentEvent::AttemptFailed {
            attempt: 1,
            failure,
            ..
        } => {
            assert_eq!(
                failure,
                AttemptFailure::Refused {
                    code: ErrorCode::Unavailable,
                    message: "store is down".into()
                }
            );
            assert_eq!(
                failure.to_string(),
                "controller refused the report (unavailable): store is down"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::Acknowledged { .. }
    ));
    assert!(requests.recv().await.is_some() && requests.recv().await.is_some());
}

#[tokio::test]
async fn garbage_reply_is_retried_without_panic() {
    let nats = NatsServer::start().unwrap();
    let mut truncated = ack(Instruction::Wait);
    truncated.truncate(10);
    let (_requests, _r) = responder(
        &nats,
        vec![
            b"\xde\xad\xbe\xef garbage".to_vec(),
            truncated,
            Vec::new(),
            ack(Instruction::Reboot),
        ],
    )
    .await;
    let (mut events, task) = start_agent(config(&nats, true), CancellationToken::new());
    assert_eq!(
        outcome(task).await,
        Outcome::Reboot {
            machine_id: machine()
        }
    );
    for attempt in 1..=3 {
        match next_event(&mut events).await {
            AgentEvent::AttemptFailed {
                attempt: a,
                failure: AttemptFailure::Malformed { .. },
                ..
            } => {
                assert_eq!(a, attempt)
            }
            // An empty reply is what nats-server itself sends for "no responders";
            // either way the agent must retry.
            AgentEvent::AttemptFailed {
                attempt: a,
                failure: AttemptFailure::NoResponders,
                ..
            } => {
                assert_eq!((a, attempt), (3, 3))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn wait_then_power_off_command() {
    let nats = NatsServer::start().unwrap();
    let (_requests, _r) = responder(&nats, vec![ack(Instruction::Wait)]).await;
    let (mut events, task) = start_agent(config(&nats, false), CancellationToken::new());
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::Acknowledged { .. }
    ));
    let cmd_subject = subjects::machine_cmd(&site(), &machine());
    assert_eq!(
        next_event(&mut events).await,
        AgentEvent::Listening {
            subject: cmd_subject.clone()
        }
    );

    let admin = async_nats::connect(nats.url()).await.unwrap();
    let send = |bytes: Vec<u8>| {
        let admin = admin.clone();
        let subject = cmd_subject.clone();
        async move {
            admin.publish(subject, bytes.into()).await.unwrap();
            admin.flush().await.unwrap();
        }
    };
    let cmd = |m: MachineId, instruction| {
        substruct_wire::encode(&Command {
            machine_id: m,
            instruction,
        })
        .unwrap()
    };
    send(b"not a command".to_vec()).await;
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::CommandIgnored { .. }
    ));
    send(cmd(
        MachineId::new("someone-else").unwrap(),
        Instruction::PowerOff,
    ))
    .await;
    match next_event(&mut events).await {
        AgentEvent::CommandIgnored { reason } => {
            assert!(reason.contains("someone-else"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
    send(cmd(machine(), Instruction::Wait)).await;
    assert!(!task.is_finished());
    send(cmd(machine(), Instruction::PowerOff)).await;
    assert_eq!(
        outcome(task).await,
        Outcome::PowerOff {
            machine_id: machine()
        }
    );
}

#[tokio::test]
async fn power_off_in_the_reply_is_returned_at_once() {
    let nats = NatsServer::start().unwrap();
    let (_requests, _r) = responder(&nats, vec![ack(Instruction::PowerOff)]).await;
    // A comma-separated server list, one of them dead: the client fails over.
    let dead = substruct_testkit::free_port();
    let cfg = AgentConfig {
        nats_url: NatsUrl::new(format!("nats://127.0.0.1:{dead}, {}", nats.url())).unwrap(),
        ..config(&nats, false)
    };
    let (_events, task) = start_agent(cfg, CancellationToken::new());
    assert_eq!(
        outcome(task).await,
        Outcome::PowerOff {
            machine_id: machine()
        }
    );
}

#[tokio::test]
async fn cancellation_ends_the_retry_loop_and_the_wait() {
    let nats = NatsServer::start().unwrap();
    let cancel = CancellationToken::new();
    let (mut events, task) = start_agent(config(&nats, false), cancel.clone());
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::AttemptFailed { .. }
    ));
    cancel.cancel();
    assert_eq!(outcome(task).await, Outcome::Cancelled);

    let (_requests, _r) = responder(&nats, vec![ack(Instruction::Wait)]).await;
    let cancel = CancellationToken::new();
    let (mut events, task) = start_agent(config(&nats, false), cancel.clone());
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::Acknowledged { .. }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::Listening { .. }
    ));
    cancel.cancel();
    assert_eq!(outcome(task).await, Outcome::Cancelled);
}

#[tokio::test]
async fn unreachable_server_is_retried_with_progress_not_an_error() {
    // A port nobody listens on: the client keeps reconnecting, each request times out.
    let port = substruct_testkit::free_port();
    let cfg = AgentConfig {
        nats_url: NatsUrl::new(format!("nats://127.0.0.1:{port}")).unwrap(),
        site: site(),
        token: None,
        login: None,
        once: true,
        edge: None,
        storage: None,
    };
    let (tx, mut events) = unbounded_channel();
    let cancel = CancellationToken::new();
    let fast = AgentTuning {
        request_timeout: Duration::from_millis(200),
        ..tuning()
    };
    let task = tokio::spawn(agent::run_with(
        cfg,
        fast,
        Some(tx),
        report(),
        cancel.clone(),
    ));
    match next_event(&mut events).await {
        AgentEvent::AttemptFailed {
            failure: AttemptFailure::TimedOut { .. },
            ..
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    cancel.cancel();
    assert_eq!(outcome(task).await, Outcome::Cancelled);
}

#[tokio::test]
async fn commands_still_arrive_after_a_nats_restart() {
    let mut nats = NatsServer::start().unwrap();
    let (_requests, responder_task) = responder(&nats, vec![ack(Instruction::Wait)]).await;
    let (mut events, task) = start_agent(config(&nats, false), CancellationToken::new());
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::Acknowledged { .. }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::Listening { .. }
    ));
    responder_task.abort();

    nats.restart().unwrap();
    let admin = async_nats::connect(nats.url()).await.unwrap();
    let reboot = substruct_wire::encode(&Command {
        machine_id: machine(),
        instruction: Instruction::Reboot,
    })
    .unwrap();
    // Core NATS has no persistence: repeat the command until the agent's client has
    // reconnected and re-subscribed (bounded poll).
    let subject = subjects::machine_cmd(&site(), &machine());
    substruct_testkit::wait_for("agent to act on the command", BOUND, || {
        let (admin, subject, reboot) = (admin.clone(), subject.clone(), reboot.clone());
        let finished = task.is_finished();
        async move {
            if !finished {
                let _ = admin.publish(subject, reboot.into()).await;
                let _ = admin.flush().await;
            }
            finished
        }
    })
    .await
    .unwrap();
    assert_eq!(
        outcome(task).await,
        Outcome::Reboot {
            machine_id: machine()
        }
    );
}
