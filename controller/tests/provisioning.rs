//! Provisioning against a real nats-server and an in-process controller: profiles,
//! rules, assignment, boot intents and install files in KV, callbacks, release and
//! wipe — and every kind of bad input refused with no state change.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{config, connect, discover, report, Running, TOKEN};
use serde_json::{json, Value};
use substruct_controller::profile::Profile;
use substruct_controller::rules::Rule;
use substruct_testkit::NatsServer;
use substruct_wire::intent::{BootIntent, InstallFilesRecord, LocalBootWay};
use substruct_wire::messages::{
    CallbackKind, CallbackReply, CallbackRequest, ErrorCode, ErrorReply, Instruction, WipeMode,
};
use substruct_wire::{subjects, BootToken, Mac, SiteId};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x21];
const VIEWER: &str = "test-viewer-token";
const SHA: &str = "a3f1c0ffee00000000000000000000000000000000000000000000000000beef";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
}

fn shipped(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/profiles")
        .join(name);
    std::fs::read_to_string(&path).unwrap()
}

async fn register_images(api: &Api) {
    for (name, kind) in [
        ("marker.img", "disk"),
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
}

async fn save_profile(api: &Api, file: &str) -> Profile {
    let profile = Profile::from_toml(&shipped(file)).unwrap();
    let (status, body) = api
        .put(
            &format!("/api/v1/profiles/{}", profile.name),
            serde_json::to_value(&profile).unwrap(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    profile
}

async fn callback(
    client: &async_nats::Client,
    site: &str,
    token: &BootToken,
    kind: CallbackKind,
) -> Result<CallbackReply, ErrorReply> {
    let site = SiteId::new(site).unwrap();
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

async fn kv_get(client: &async_nats::Client, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(bucket).await.unwrap();
    kv.get(key).await.unwrap().map(|b| b.to_vec())
}

async fn intent(client: &async_nats::Client, site: &str, mac: [u8; 6]) -> Option<BootIntent> {
    let key = subjects::boot_key(&SiteId::new(site).unwrap(), &Mac(mac));
    kv_get(client, subjects::KV_BOOT, &key).await.map(|v| {
        substruct_wire::decode::<substruct_wire::intent::BootIntentRecord>(&v)
            .unwrap()
            .intent
    })
}

fn token_of(machine: &Value) -> BootToken {
    BootToken::new(machine["ticket"]["token"].as_str().unwrap()).unwrap()
}

#[test]
fn preseed_assignment_install_files_callbacks_and_local_boot() {
    common::run_on_big_stack(preseed_assignment_install_files_callbacks_and_local_boot_flow);
}

async fn preseed_assignment_install_files_callbacks_and_local_boot_flow() {
    let nats = NatsServer::start().unwrap();
    let mut cfg = config(&nats.url());
    cfg.tokens.push(substruct_controller::config::ApiToken {
        token: VIEWER.into(),
        role: substruct_controller::config::Role::Viewer,
    });
    let c = Running::start(cfg).await;
    let api = Api {
        base: c.url(),
        http: reqwest::Client::new(),
    };
    let client = connect(&nats.url()).await;
    let reply = discover(
        &client,
        "dc1",
        report(
            Some("4c4c4544-0000-1111-2222-333344445555"),
            Some("SN-PRE-1"),
            &[MAC],
            &["D1"],
        ),
    )
    .await
    .unwrap();
    assert_eq!(reply.instruction, Instruction::Wait, "no rules: wait");
    let id = reply.machine_id.to_string();
    register_images(&api).await;
    save_profile(&api, "debian12-preseed.toml").await;
    let (status, body) = api
        .put("/api/v1/sites/dc1", json!({"local_boot": "no-boot-file"}))
        .await;
    // 200: `discover` registered the site's key first (as `sites add dc1 --key` does).
    assert_eq!(status, 200, "{body}");
    assert!(body["key"].is_string(), "the key is kept: {body}");

    // Assign by serial (the operator's handle), not by id.
    let (status, m) = api
        .post(
            "/api/v1/machines/SN-PRE-1/assign",
            json!({"profile": "debian12-preseed"}),
        )
        .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["state"], "assigned");
    assert_eq!(m["profile"], "debian12-preseed");
    let token = token_of(&m);

    // A viewer sees the state but never the token (it opens the install files and
    // the callbacks), and may not assign.
    let as_viewer = |req: reqwest::RequestBuilder| req.bearer_auth(VIEWER);
    let resp = as_viewer(api.http.get(format!("{}/api/v1/machines/{id}", api.base)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["state"], "assigned");
    assert!(seen.get("ticket").is_none(), "{seen}");
    assert!(!seen.to_string().contains(token.as_str()));
    let listed = as_viewer(api.http.get(format!("{}/api/v1/machines", api.base)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(token.as_str()));
    let resp = as_viewer(
        api.http
            .post(format!("{}/api/v1/machines/{id}/release", api.base)),
    )
    .json(&json!({}))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 403);

    // The edge's view: an installer intent naming the token, and the rendered preseed.
    match intent(&client, "dc1", MAC).await.unwrap() {
        BootIntent::Install {
            kernel,
            initrd,
            cmdline,
        } => {
            assert_eq!(kernel, "debian-12/linux");
            assert_eq!(initrd, "debian-12/initrd.gz");
            assert!(
                cmdline.contains(&format!("preseed/url={{edge}}/install/{token}/preseed.cfg")),
                "{cmdline}"
            );
        }
        other => panic!("expected an install intent, got {other:?}"),
    }
    let key = subjects::install_key(&SiteId::new("dc1").unwrap(), &token);
    let files: InstallFilesRecord =
        substruct_wire::decode(&kv_get(&client, subjects::KV_INSTALL, &key).await.unwrap())
            .unwrap();
    assert_eq!(files.files.len(), 1);
    assert_eq!(files.files[0].name, "preseed.cfg");
    assert!(files.files[0]
        .body
        .contains(&format!("{{edge}}/api/v1/machines/{token}/done")));

    // A token that is not the machine's, or from another site: refused, nothing changes.
    let wrong = BootToken::new("0123456789abcdef0123456789abcdef").unwrap();
    let e = callback(&client, "dc1", &wrong, CallbackKind::Done)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    let e = callback(&client, "dc2", &token, CallbackKind::Done)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert_eq!(
        api.get(&format!("/api/v1/machines/{id}")).await.1["state"],
        "assigned"
    );

    // The installer fetched its file: installing. A second fetch changes nothing.
    let r = callback(
        &client,
        "dc1",
        &token,
        CallbackKind::Fetched {
            file: "preseed.cfg".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(r.state, "installing");
    let r = callback(
        &client,
        "dc1",
        &token,
        CallbackKind::Fetched {
            file: "preseed.cfg".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(r.state, "installing");
    // The progress holds the fetch once, however often the edge says it.
    let m = api.get(&format!("/api/v1/machines/{id}")).await.1;
    let steps: Vec<&str> = m["progress"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["step"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(steps, ["fetched preseed.cfg"], "{m}");

    // Illegal: assigning an installing machine names the state and the event.
    let before = api.get(&format!("/api/v1/machines/{id}")).await.1;
    let (status, body) = api
        .post(
            &format!("/api/v1/machines/{id}/assign"),
            json!({"profile": "debian12-preseed"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("installing") && msg.contains("assign"),
        "{msg}"
    );
    assert_eq!(api.get(&format!("/api/v1/machines/{id}")).await.1, before);

    // Done: deployed, local boot the site's way, the token and the files are gone.
    let r = callback(&client, "dc1", &token, CallbackKind::Done)
        .await
        .unwrap();
    assert_eq!(r.state, "deployed");
    assert_eq!(
        intent(&client, "dc1", MAC).await,
        Some(BootIntent::Local {
            way: LocalBootWay::NoBootFile
        })
    );
    assert_eq!(kv_get(&client, subjects::KV_INSTALL, &key).await, None);
    // The same `done` again (its reply was lost): answered as completed, as before.
    let again = callback(&client, "dc1", &token, CallbackKind::Done)
        .await
        .unwrap();
    assert_eq!(again, r);
    // Anything else with the expired token is refused.
    let e = callback(
        &client,
        "dc1",
        &token,
        CallbackKind::Fetched {
            file: "preseed.cfg".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden, "an expired token is refused");
    let e = callback(
        &client,
        "dc1",
        &token,
        CallbackKind::Failed {
            reason: "late".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden, "an expired token is refused");
    let m = api.get(&format!("/api/v1/machines/{id}")).await.1;
    assert_eq!(m["state"], "deployed");
    assert!(m.get("ticket").is_none(), "{m}");
    assert!(m.get("owed").is_none(), "nothing left owed: {m}");
    // The install's progress stays on the deployed machine, in order, with times.
    let progress = m["progress"].as_array().cloned().unwrap_or_default();
    let steps: Vec<&str> = progress.iter().filter_map(|s| s["step"].as_str()).collect();
    assert_eq!(steps, ["fetched preseed.cfg", "done"], "{m}");
    let times: Vec<u64> = progress
        .iter()
        .filter_map(|s| s["at_unix_ms"].as_u64())
        .collect();
    assert!(times.len() == 2 && times[0] <= times[1], "{m}");

    // The audit log holds every transition, in order.
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(subjects::STREAM_EVENTS).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("substruct.v1.events.{id}"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(50)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut transitions = Vec::new();
    use futures::StreamExt;
    while let Some(Ok(msg)) = batch.next().await {
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        if v["kind"]["type"] == "transition" {
            transitions.push(format!(
                "{}-{}->{}",
                v["kind"]["from"].as_str().unwrap(),
                v["kind"]["event"].as_str().unwrap(),
                v["kind"]["to"].as_str().unwrap()
            ));
        }
    }
    assert_eq!(
        transitions,
        [
            "discovered-assign->assigned",
            "assigned-install-started->installing",
            "installing-done->deployed"
        ]
    );

    // Release with a wipe: the next report gets a Wipe instruction, `Wiped` clears it.
    let (status, m) = api
        .post(
            &format!("/api/v1/machines/{id}/release"),
            json!({"wipe": "quick"}),
        )
        .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["state"], "discovered");
    assert_eq!(
        intent(&client, "dc1", MAC).await,
        Some(BootIntent::Discover)
    );
    let reply = discover(
        &client,
        "dc1",
        report(
            Some("4c4c4544-0000-1111-2222-333344445555"),
            Some("SN-PRE-1"),
            &[MAC],
            &["D1"],
        ),
    )
    .await
    .unwrap();
    let Instruction::Wipe { mode, token } = reply.instruction else {
        panic!("expected a wipe, got {:?}", reply.instruction);
    };
    assert_eq!(mode, WipeMode::Quick);
    let e = callback(&client, "dc1", &token, CallbackKind::Done)
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::Forbidden,
        "a wipe token cannot finish an install"
    );
    let r = callback(&client, "dc1", &token, CallbackKind::Wiped)
        .await
        .unwrap();
    assert_eq!(r.state, "discovered");
    assert_eq!(r.next, Some(Instruction::Wait));
    let m = api.get(&format!("/api/v1/machines/{id}")).await.1;
    assert!(m.get("pending_wipe").is_none(), "{m}");
    assert_eq!(
        intent(&client, "dc1", MAC).await,
        None,
        "unknown again: prospector"
    );
    c.stop().await;
}

#[test]
fn a_rule_assigns_an_image_profile_and_the_prospector_gets_the_deploy() {
    common::run_on_big_stack(
        a_rule_assigns_an_image_profile_and_the_prospector_gets_the_deploy_flow,
    );
}

async fn a_rule_assigns_an_image_profile_and_the_prospector_gets_the_deploy_flow() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let api = Api {
        base: c.url(),
        http: reqwest::Client::new(),
    };
    let client = connect(&nats.url()).await;
    register_images(&api).await;
    save_profile(&api, "marker-image.toml").await;
    // An earlier report (before the rule): the dry run shows it would be taken.
    let reply = discover(
        &client,
        "dc1",
        report(None, Some("SN-IMG-0"), &[[2, 0, 0, 0, 0, 9]], &[]),
    )
    .await
    .unwrap();
    let earlier = reply.machine_id;
    let rule = Rule::from_toml(&shipped("rules/qemu-marker.toml")).unwrap();
    let (status, dry) = api
        .post(
            "/api/v1/rules/dry-run",
            serde_json::to_value(&rule).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["machines"], json!([earlier.to_string()]));
    assert_eq!(
        api.get(&format!("/api/v1/machines/{earlier}")).await.1["state"],
        "discovered",
        "a dry run changes nothing"
    );
    let (status, body) = api
        .put(
            "/api/v1/rules/qemu-marker",
            serde_json::to_value(&rule).unwrap(),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let reply = discover(
        &client,
        "dc1",
        report(None, Some("SN-IMG-1"), &[MAC], &["D9"]),
    )
    .await
    .unwrap();
    let Instruction::DeployImage(deploy) = reply.instruction else {
        panic!("expected an image deploy, got {:?}", reply.instruction);
    };
    assert_eq!(deploy.path, "marker.img");
    assert_eq!(deploy.sha256, SHA);
    assert_eq!(deploy.size, 4096);
    assert_eq!(deploy.disk.as_deref(), Some("vda"));
    let id = reply.machine_id.to_string();
    let m = api.get(&format!("/api/v1/machines/{id}")).await.1;
    assert_eq!(m["state"], "installing");
    assert_eq!(
        m["progress"][0]["step"], "image marker.img sent to the prospector",
        "{m}"
    );
    assert_eq!(m["profile"], "marker-image");
    assert_eq!(
        intent(&client, "dc1", MAC).await,
        Some(BootIntent::Discover)
    );

    // The same prospector asking again (it rebooted mid-deploy) gets the same token.
    let again = discover(
        &client,
        "dc1",
        report(None, Some("SN-IMG-1"), &[MAC], &["D9"]),
    )
    .await
    .unwrap();
    assert_eq!(again.instruction, Instruction::DeployImage(deploy.clone()));

    let r = callback(&client, "dc1", &deploy.token, CallbackKind::Done)
        .await
        .unwrap();
    assert_eq!(r.state, "deployed");
    assert_eq!(
        intent(&client, "dc1", MAC).await,
        Some(BootIntent::Local {
            way: LocalBootWay::IpxeExit
        }),
        "an unregistered site boots locally the default way"
    );
    // Reinstall: a new token, installing again on the next report.
    let (status, m) = api
        .post(&format!("/api/v1/machines/{id}/reinstall"), json!({}))
        .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["state"], "assigned");
    assert_ne!(token_of(&m), deploy.token);
    assert!(
        m.get("progress").is_none(),
        "a new install starts with no progress: {m}"
    );
    // A failure report: failed, with the reason.
    let reply = discover(
        &client,
        "dc1",
        report(None, Some("SN-IMG-1"), &[MAC], &["D9"]),
    )
    .await
    .unwrap();
    let Instruction::DeployImage(second) = reply.instruction else {
        panic!("expected a second deploy");
    };
    let r = callback(
        &client,
        "dc1",
        &second.token,
        CallbackKind::Failed {
            reason: "sha256 mismatch".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(r.state, "failed");
    let m = api.get(&format!("/api/v1/machines/{id}")).await.1;
    assert_eq!(m["reason"], "sha256 mismatch");
    let steps: Vec<&str> = m["progress"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["step"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        steps,
        [
            "image marker.img sent to the prospector",
            "failed: sha256 mismatch"
        ],
        "the second install's own steps only: {m}"
    );

    // Release with a full wipe, and the wipe fails: recorded as a failure with the
    // reason, the wipe dropped (no endless wipe instructions).
    let (status, m) = api
        .post(
            &format!("/api/v1/machines/{id}/release"),
            json!({"wipe": "discard"}),
        )
        .await;
    assert_eq!(status, 200, "{m}");
    let reply = discover(
        &client,
        "dc1",
        report(None, Some("SN-IMG-1"), &[MAC], &["D9"]),
    )
    .await
    .unwrap();
    let Instruction::Wipe { mode, token } = reply.instruction else {
        panic!("expected a wipe, got {:?}", reply.instruction);
    };
    assert_eq!(mode, WipeMode::Discard);
    let r = callback(
        &client,
        "dc1",
        &token,
        CallbackKind::Failed {
            reason: "vda: I/O error".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(r.state, "failed");
    let m = api.get(&format!("/api/v1/machines/{id}")).await.1;
    assert_eq!(m["reason"], "wipe failed: vda: I/O error");
    assert!(m.get("pending_wipe").is_none(), "{m}");
    let reply = discover(
        &client,
        "dc1",
        report(None, Some("SN-IMG-1"), &[MAC], &["D9"]),
    )
    .await
    .unwrap();
    assert_eq!(reply.instruction, Instruction::Wait);
    let e = callback(&client, "dc1", &token, CallbackKind::Wiped)
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::Forbidden,
        "the wipe token died with the failure"
    );
    c.stop().await;
}

#[test]
fn an_image_profile_with_a_template_deploys_with_a_cloud_init_seed() {
    common::run_on_big_stack(an_image_profile_with_a_template_deploys_with_a_cloud_init_seed_flow);
}

async fn an_image_profile_with_a_template_deploys_with_a_cloud_init_seed_flow() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let api = Api {
        base: c.url(),
        http: reqwest::Client::new(),
    };
    let client = connect(&nats.url()).await;
    let (status, body) = api
        .post(
            "/api/v1/images",
            json!({"name": "debian-12/cloud.img", "kind": "disk", "sha256": SHA, "size": 4096}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let profile = save_profile(&api, "debian12-cloud.toml").await;
    let reply = discover(
        &client,
        "dc1",
        report(None, Some("SN-CLOUD-1"), &[MAC], &["D7"]),
    )
    .await
    .unwrap();
    assert_eq!(reply.instruction, Instruction::Wait);
    let (status, m) = api
        .post(
            "/api/v1/machines/SN-CLOUD-1/assign",
            json!({"profile": profile.name}),
        )
        .await;
    assert_eq!(status, 200, "{m}");
    let token = token_of(&m);
    // The seed files wait at the edge behind the token.
    let key = subjects::install_key(&SiteId::new("dc1").unwrap(), &token);
    let files: InstallFilesRecord =
        substruct_wire::decode(&kv_get(&client, subjects::KV_INSTALL, &key).await.unwrap())
            .unwrap();
    let names: Vec<&str> = files.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["user-data", "meta-data"]);
    assert!(files.files[0].body.contains("hostname: deb-sn-cloud-1"));
    assert!(files.files[1]
        .body
        .contains("local-hostname: deb-sn-cloud-1"));
    // The prospector is told to deploy and then seed.
    let reply = discover(
        &client,
        "dc1",
        report(None, Some("SN-CLOUD-1"), &[MAC], &["D7"]),
    )
    .await
    .unwrap();
    let Instruction::DeployImageSeeded(deploy) = reply.instruction else {
        panic!(
            "expected a seeded image deploy, got {:?}",
            reply.instruction
        );
    };
    assert_eq!(deploy.path, "debian-12/cloud.img");
    assert_eq!(deploy.token, token);
    // The seed's fetches are progress steps, then done.
    for file in ["meta-data", "user-data"] {
        callback(
            &client,
            "dc1",
            &token,
            CallbackKind::Fetched { file: file.into() },
        )
        .await
        .unwrap();
    }
    let r = callback(&client, "dc1", &token, CallbackKind::Done)
        .await
        .unwrap();
    assert_eq!(r.state, "deployed");
    let m = api
        .get(&format!("/api/v1/machines/{}", reply.machine_id))
        .await
        .1;
    let steps: Vec<&str> = m["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "image debian-12/cloud.img sent to the prospector",
            "fetched meta-data",
            "fetched user-data",
            "done"
        ]
    );
    c.stop().await;
}

#[test]
fn bad_profiles_images_rules_and_assignments_are_refused_by_name() {
    common::run_on_big_stack(bad_profiles_images_rules_and_assignments_are_refused_by_name_flow);
}

async fn bad_profiles_images_rules_and_assignments_are_refused_by_name_flow() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let api = Api {
        base: c.url(),
        http: reqwest::Client::new(),
    };
    let client = connect(&nats.url()).await;
    discover(&client, "dc1", report(None, Some("SN-BAD-1"), &[MAC], &[]))
        .await
        .unwrap();
    register_images(&api).await;

    // A template with a typo on its third line.
    let mut broken = Profile::from_toml(&shipped("debian12-preseed.toml")).unwrap();
    broken.name = "broken".into();
    broken.template = Some("line one\nline two\nhost {{ machin.id }}\n{{ callback_url }}\n".into());
    let (status, body) = api
        .put(
            "/api/v1/profiles/broken",
            serde_json::to_value(&broken).unwrap(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("line 3"), "{msg}");
    // An image profile naming an image nobody registered.
    let mut unknown = Profile::from_toml(&shipped("marker-image.toml")).unwrap();
    unknown.name = "unknown-image".into();
    unknown.image = Some("nope.img".into());
    let (status, body) = api
        .put(
            "/api/v1/profiles/unknown-image",
            serde_json::to_value(&unknown).unwrap(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("nope.img"),
        "{body}"
    );
    let (_, profiles) = api.get("/api/v1/profiles").await;
    assert_eq!(profiles, json!([]), "nothing saved");

    // Images: bad sha256, and the same name with another content.
    let (status, body) = api
        .post(
            "/api/v1/images",
            json!({"name": "x.img", "kind": "disk", "sha256": "zz", "size": 1}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let other = SHA.replace('a', "b");
    let (status, body) = api
        .post(
            "/api/v1/images",
            json!({"name": "marker.img", "kind": "disk", "sha256": other, "size": 4096}),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // Assignments: unknown machine, unknown profile.
    let (status, body) = api
        .post(
            "/api/v1/machines/no-such-machine/assign",
            json!({"profile": "x"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no-such-machine"));
    let (status, body) = api
        .post(
            "/api/v1/machines/SN-BAD-1/assign",
            json!({"profile": "nope"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope"));
    // A rule for a profile that does not exist; a malformed body.
    let mut rule = Rule::from_toml(&shipped("rules/qemu-marker.toml")).unwrap();
    rule.profile = "ghost".into();
    let (status, body) = api
        .put(
            "/api/v1/rules/qemu-marker",
            serde_json::to_value(&rule).unwrap(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = api.put("/api/v1/rules/x", json!({"name": 5})).await;
    assert!(status == 400 || status == 422, "{status}");
    // Illegal: releasing a machine that is only discovered.
    let (status, body) = api
        .post("/api/v1/machines/SN-BAD-1/release", json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    let m = api.get("/api/v1/machines/SN-BAD-1").await.1;
    assert_eq!(m["state"], "discovered");
    assert!(m.get("ticket").is_none());
    c.stop().await;
}
