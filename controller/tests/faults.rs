//! Deterministic fault injection: the controller is killed at every store write of an
//! assign, an installer's `done`, a release with a wipe and the prospector's `wiped` —
//! once just before the write, once just after it — then started again, and the
//! caller retries as it would. Whatever the point, the end state is the one the
//! operation asks for, with nothing left over: the record, its ticket and index key,
//! the install files at the edge, the boot intent, and each `transition` event in
//! `EVENTS` exactly once.
//!
//! The "kill" is the store's fault hook ([`Store::inject_faults`]): from the chosen
//! write on, every write of that controller fails, and the controller is stopped.
//! Everything else is real: nats-server, JetStream, the API over HTTP, callbacks
//! over NATS.
//!
//! [`Store::inject_faults`]: substruct_controller::store::Store::inject_faults

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config, connect, discover, report, transitions, Running, TOKEN};
use serde_json::{json, Value};
use substruct_controller::profile::Profile;
use substruct_controller::store::FaultHook;
use substruct_testkit::NatsServer;
use substruct_wire::intent::{BootIntent, BootIntentRecord, LocalBootWay};
use substruct_wire::messages::{
    CallbackKind, CallbackReply, CallbackRequest, ErrorReply, Instruction,
};
use substruct_wire::{subjects, BootToken, Mac, MachineId, SiteId};

const SHA: &str = "a3f1c0ffee00000000000000000000000000000000000000000000000000beef";
const SITE: &str = "dc1";

/// Kills the controller at its `k`-th write (1-based): before it, or just after it.
struct Kill {
    k: usize,
    after: bool,
    writes: AtomicUsize,
    fired: AtomicBool,
    points: Mutex<Vec<&'static str>>,
}

impl Kill {
    fn new(k: usize, after: bool) -> Arc<Self> {
        Arc::new(Self {
            k,
            after,
            writes: AtomicUsize::new(0),
            fired: AtomicBool::new(false),
            points: Mutex::new(Vec::new()),
        })
    }

    fn hook(self: &Arc<Self>) -> FaultHook {
        let kill = self.clone();
        Arc::new(move |point, after| kill.check(point, after))
    }

    fn check(&self, point: &'static str, after: bool) -> bool {
        if self.fired.load(Ordering::SeqCst) {
            // Dead: nothing more is written.
            return true;
        }
        let n = if after {
            self.writes.load(Ordering::SeqCst)
        } else {
            self.points.lock().unwrap().push(point);
            self.writes.fetch_add(1, Ordering::SeqCst) + 1
        };
        if n == self.k && after == self.after {
            self.fired.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    fn point(&self) -> &'static str {
        self.points
            .lock()
            .unwrap()
            .get(self.k - 1)
            .copied()
            .unwrap_or("none")
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(c: &Running) -> Self {
        Self {
            base: c.url(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.bearer_auth(TOKEN).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.put(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn machine(&self, id: &MachineId) -> Value {
        let (status, m) = self.get(&format!("/api/v1/machines/{id}")).await;
        assert_eq!(status, 200, "{m}");
        m
    }
}

async fn callback(
    client: &async_nats::Client,
    token: &BootToken,
    kind: CallbackKind,
) -> Result<CallbackReply, ErrorReply> {
    let site = SiteId::new(SITE).unwrap();
    let req = CallbackRequest {
        site: site.clone(),
        token: token.clone(),
        kind,
    };
    let msg = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(
            subjects::callback(&site),
            substruct_wire::encode(&req).unwrap().into(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    substruct_wire::decode::<CallbackReply>(&msg.payload)
        .map_err(|_| substruct_wire::decode::<ErrorReply>(&msg.payload).unwrap())
}

async fn kv_has(client: &async_nats::Client, bucket: &str, key: &str) -> bool {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(bucket).await.unwrap();
    kv.get(key).await.unwrap().is_some()
}

async fn intent(client: &async_nats::Client, mac: [u8; 6]) -> Option<BootIntent> {
    let key = subjects::boot_key(&SiteId::new(SITE).unwrap(), &Mac(mac));
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(subjects::KV_BOOT).await.unwrap();
    kv.get(&key).await.unwrap().map(|v| {
        substruct_wire::decode::<BootIntentRecord>(&v)
            .unwrap()
            .intent
    })
}

fn token_in(value: &Value) -> BootToken {
    BootToken::new(value["token"].as_str().unwrap()).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Assign,
    Done,
    Release,
    Wiped,
}

/// One machine of the test, and the tokens its steps were given.
struct Subject {
    id: MachineId,
    mac: [u8; 6],
    serial: String,
    install: Option<BootToken>,
    wipe: Option<BootToken>,
}

impl Subject {
    async fn discovered(client: &async_nats::Client, n: usize) -> Self {
        let mac = [0x52, 0x54, 0, 0x0f, (n >> 8) as u8, n as u8];
        let serial = format!("SN-FAULT-{n}");
        let reply = discover(client, SITE, report(None, Some(&serial), &[mac], &[]))
            .await
            .unwrap();
        Self {
            id: reply.machine_id,
            mac,
            serial,
            install: None,
            wipe: None,
        }
    }
}

/// Brings a discovered machine to where `op` starts, with a healthy controller.
async fn prepare(op: Op, api: &Api, client: &async_nats::Client, s: &mut Subject) {
    if op == Op::Assign {
        return;
    }
    let (status, m) = api
        .post(
            &format!("/api/v1/machines/{}/assign", s.id),
            json!({"profile": "debian12-preseed"}),
        )
        .await;
    assert_eq!(status, 200, "{m}");
    let token = token_in(&m["ticket"]);
    let fetched = CallbackKind::Fetched {
        file: "preseed.cfg".into(),
    };
    assert_eq!(
        callback(client, &token, fetched).await.unwrap().state,
        "installing"
    );
    s.install = Some(token.clone());
    if op == Op::Done {
        return;
    }
    callback(client, &token, CallbackKind::Done).await.unwrap();
    if op == Op::Release {
        return;
    }
    release(api, s).await;
    let reply = discover(client, SITE, report(None, Some(&s.serial), &[s.mac], &[]))
        .await
        .unwrap();
    match reply.instruction {
        Instruction::Wipe { token, .. } => s.wipe = Some(token),
        other => panic!("a released machine with a wipe got {other:?}"),
    }
}

async fn release(api: &Api, s: &Subject) -> (u16, Value) {
    api.post(
        &format!("/api/v1/machines/{}/release", s.id),
        json!({"wipe": "quick"}),
    )
    .await
}

/// Runs `op`; true when the caller was told it worked.
async fn perform(op: Op, api: &Api, client: &async_nats::Client, s: &Subject) -> bool {
    match op {
        Op::Assign => {
            let path = format!("/api/v1/machines/{}/assign", s.id);
            let (status, _) = api
                .post(&path, json!({"profile": "debian12-preseed"}))
                .await;
            status == 200
        }
        Op::Done => callback(client, s.install.as_ref().unwrap(), CallbackKind::Done)
            .await
            .is_ok(),
        Op::Release => release(api, s).await.0 == 200,
        Op::Wiped => callback(client, s.wipe.as_ref().unwrap(), CallbackKind::Wiped)
            .await
            .is_ok(),
    }
}

/// What the caller does after a failure, once the controller is back: the operator
/// looks and asks again if it did not happen; an installer or prospector sends the
/// same callback again, which must now be answered as applied.
async fn retry(op: Op, api: &Api, client: &async_nats::Client, s: &Subject) {
    let state = api.machine(&s.id).await["state"].clone();
    match op {
        Op::Assign if state == "discovered" => assert!(perform(op, api, client, s).await),
        Op::Release if state == "deployed" => assert!(perform(op, api, client, s).await),
        Op::Assign | Op::Release => {}
        Op::Done => {
            let reply = callback(client, s.install.as_ref().unwrap(), CallbackKind::Done)
                .await
                .unwrap_or_else(|e| panic!("a repeated done: {e:?}"));
            assert_eq!(reply.state, "deployed");
            assert_eq!(reply.next, Some(Instruction::Reboot));
        }
        Op::Wiped => {
            let reply = callback(client, s.wipe.as_ref().unwrap(), CallbackKind::Wiped)
                .await
                .unwrap_or_else(|e| panic!("a repeated wiped: {e:?}"));
            assert_eq!(reply.state, "discovered");
        }
    }
}

/// Waits until the machine's record owes nothing (the start-up sweep, or the retry,
/// finished what the killed controller left).
async fn settled(api: &Api, id: &MachineId) -> Value {
    for _ in 0..300 {
        let m = api.machine(id).await;
        if m.get("owed").is_none() {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("machine {id} still owes: {}", api.machine(id).await);
}

/// The end state `op` asks for, whole.
async fn check(op: Op, api: &Api, client: &async_nats::Client, s: &Subject, case: &str) {
    let m = settled(api, &s.id).await;
    let site = SiteId::new(SITE).unwrap();
    let install_files = |t: &BootToken| subjects::install_key(&site, t);
    let index = |t: &BootToken| format!("token.{t}");
    let mut expected = vec!["discovered-assign->assigned"];
    match op {
        Op::Assign => {
            assert_eq!(m["state"], "assigned", "{case}: {m}");
            let t = token_in(&m["ticket"]);
            assert!(
                kv_has(client, subjects::KV_INSTALL, &install_files(&t)).await,
                "{case}: the install files of the live token"
            );
            assert!(
                kv_has(client, subjects::KV_MACHINE_INDEX, &index(&t)).await,
                "{case}: the live token's index key"
            );
            assert!(
                matches!(
                    intent(client, s.mac).await,
                    Some(BootIntent::Install { .. })
                ),
                "{case}: the installer intent"
            );
        }
        Op::Done => {
            assert_eq!(m["state"], "deployed", "{case}: {m}");
            assert!(m.get("ticket").is_none(), "{case}: {m}");
            let t = s.install.as_ref().unwrap();
            assert_eq!(token_in(&m["finished"]), *t, "{case}: {m}");
            assert!(
                !kv_has(client, subjects::KV_INSTALL, &install_files(t)).await,
                "{case}: the install files are withdrawn"
            );
            assert!(
                kv_has(client, subjects::KV_MACHINE_INDEX, &index(t)).await,
                "{case}: the finished token stays in the index for a repeat"
            );
            assert_eq!(
                intent(client, s.mac).await,
                Some(BootIntent::Local {
                    way: LocalBootWay::IpxeExit
                }),
                "{case}"
            );
            expected.extend([
                "assigned-install-started->installing",
                "installing-done->deployed",
            ]);
        }
        Op::Release | Op::Wiped => {
            assert_eq!(m["state"], "discovered", "{case}: {m}");
            let t = s.install.as_ref().unwrap();
            assert!(
                !kv_has(client, subjects::KV_MACHINE_INDEX, &index(t)).await,
                "{case}: the install token is out of the index"
            );
            assert!(!kv_has(client, subjects::KV_INSTALL, &install_files(t)).await);
            expected.extend([
                "assigned-install-started->installing",
                "installing-done->deployed",
                "deployed-release->discovered",
            ]);
            if op == Op::Release {
                assert_eq!(m["pending_wipe"], "Quick", "{case}: {m}");
                assert!(m.get("finished").is_none(), "{case}: {m}");
                assert_eq!(
                    intent(client, s.mac).await,
                    Some(BootIntent::Discover),
                    "{case}"
                );
            } else {
                assert!(m.get("pending_wipe").is_none(), "{case}: {m}");
                assert!(m.get("ticket").is_none(), "{case}: {m}");
                assert_eq!(token_in(&m["finished"]), *s.wipe.as_ref().unwrap());
                assert_eq!(intent(client, s.mac).await, None, "{case}");
                expected.push("discovered-wiped->discovered");
            }
        }
    }
    assert_eq!(
        transitions(client, &s.id).await,
        expected,
        "{case}: each transition exactly once"
    );
}

#[test]
fn a_kill_at_any_write_of_assign_done_release_or_wiped_loses_and_repeats_nothing() {
    common::run_on_big_stack(flow);
}

async fn flow() {
    let nats = NatsServer::start().unwrap();
    let client = connect(&nats.url()).await;
    let start = || Running::start(config(&nats.url()));
    {
        let c = start().await;
        let api = Api::new(&c);
        for (name, kind) in [
            ("debian-12/linux", "kernel"),
            ("debian-12/initrd.gz", "initrd"),
        ] {
            let (status, body) = api
                .post(
                    "/api/v1/images",
                    json!({"name": name, "kind": kind, "sha256": SHA, "size": 4096}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/profiles/debian12-preseed.toml");
        let profile = Profile::from_toml(&std::fs::read_to_string(file).unwrap()).unwrap();
        let (status, body) = api
            .put(
                &format!("/api/v1/profiles/{}", profile.name),
                serde_json::to_value(&profile).unwrap(),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        c.stop().await;
    }
    let mut n = 0;
    let mut covered: BTreeMap<(Op, bool), Vec<&'static str>> = BTreeMap::new();
    for op in [Op::Assign, Op::Done, Op::Release, Op::Wiped] {
        for after in [false, true] {
            for k in 1.. {
                n += 1;
                let case = format!(
                    "{op:?}, killed {} write {k}",
                    if after { "after" } else { "before" }
                );
                let c = start().await;
                let api = Api::new(&c);
                let mut s = Subject::discovered(&client, n).await;
                if n == 1 {
                    // The site exists now (the report registered its key).
                    let (status, body) = api
                        .put(
                            &format!("/api/v1/sites/{SITE}"),
                            json!({"local_boot": "ipxe-exit"}),
                        )
                        .await;
                    assert_eq!(status, 200, "{body}");
                }
                prepare(op, &api, &client, &mut s).await;
                let kill = Kill::new(k, after);
                c.controller.store().inject_faults(Some(kill.hook()));
                let told_ok = perform(op, &api, &client, &s).await;
                c.stop().await;
                if !kill.fired() {
                    // Past the last write: the operation ran whole.
                    assert!(told_ok, "{case}: no fault, yet it failed");
                    let c = start().await;
                    check(op, &Api::new(&c), &client, &s, &case).await;
                    c.stop().await;
                    break;
                }
                assert!(!told_ok, "{case}: the caller must hear of the failure");
                covered.entry((op, after)).or_default().push(kill.point());
                let c = start().await;
                let api = Api::new(&c);
                retry(op, &api, &client, &s).await;
                check(op, &api, &client, &s, &format!("{case} ({})", kill.point())).await;
                c.stop().await;
                assert!(k < 20, "{case}: more writes than expected");
            }
        }
    }
    let mut kills = 0;
    for ((op, after), points) in &covered {
        let when = if *after { "after" } else { "before" };
        println!(
            "{op:?}: killed {when} each of {} writes: {}",
            points.len(),
            points.join(", ")
        );
        kills += points.len();
    }
    println!("{kills} kills, {n} machines, every end state whole and every event once");
    for op in [Op::Assign, Op::Done, Op::Release, Op::Wiped] {
        assert!(
            covered.get(&(op, false)).is_some_and(|p| p.len() >= 3),
            "{op:?}: the kill points were not reached"
        );
    }
}
