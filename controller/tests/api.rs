//! The REST API and the `substruct` CLI against an in-process controller.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{config, connect, discover, report, tls_config, Running, TOKEN};
use serde_json::Value;
use substruct_testkit::nats_topology::TlsFiles;
use substruct_testkit::NatsServer;
use substruct_wire::report::HardwareReport;

const M1: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x11];
const M2: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x12];

async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_requires_a_token_and_serves_machines() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let base = c.url();
    let client = connect(&nats.url()).await;

    let (status, body) = get(&format!("{base}/healthz"), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["nats"], "connected");

    let (status, body) = get(&format!("{base}/api/v1/machines"), None).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing bearer token"),
        "{body}"
    );
    let (status, body) = get(&format!("{base}/api/v1/machines"), Some("wrong-token")).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown bearer token"),
        "{body}"
    );

    let (status, body) = get(&format!("{base}/api/v1/machines"), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body, Value::Array(vec![]));

    let a = discover(
        &client,
        "dc1",
        report(
            Some("AAAAAAAA-0000-0000-0000-000000000001"),
            Some("SN-A"),
            &[M1],
            &["DA"],
        ),
    )
    .await
    .unwrap();
    let b = discover(
        &client,
        "dc2",
        HardwareReport {
            secure_boot: Some(true),
            ..report(None, Some("SN-B"), &[M2], &[])
        },
    )
    .await
    .unwrap();

    let (status, body) = get(&format!("{base}/api/v1/machines"), Some(TOKEN)).await;
    assert_eq!(status, 200);
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], a.machine_id.as_str());
    assert_eq!(list[1]["id"], b.machine_id.as_str());
    assert_eq!(list[0]["state"], "discovered");
    assert_eq!(list[0]["site"], "dc1");
    assert_eq!(list[0]["facts"]["dmi"]["product_serial"], "SN-A");
    assert_eq!(list[0]["facts"]["nics"][0]["mac"], "52:54:00:00:00:11");
    // `secure_boot`, derived from the facts, at the top of every record shown.
    assert_eq!(list[0]["secure_boot"], Value::Null);
    assert_eq!(list[1]["secure_boot"], true);

    let (status, body) = get(
        &format!("{base}/api/v1/machines/{}", b.machine_id),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "sn-sn-b");
    assert_eq!(body["report_count"], 1);
    assert_eq!(body["secure_boot"], true);
    assert_eq!(body["facts"]["secure_boot"], true);

    let (status, body) = get(
        &format!("{base}/api/v1/machines/no-such-machine"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("\"no-such-machine\""),
        "{body}"
    );
    let (status, _) = get(
        &format!("{base}/api/v1/machines/NOT%20AN%20ID"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 404);
    c.stop().await;
}

fn substruct(args: &[&str], controller: &str, token: Option<&str>) -> (bool, String, String) {
    let mut env = vec![("SUBSTRUCT_CONTROLLER", controller)];
    env.extend(token.map(|t| ("SUBSTRUCT_TOKEN", t)));
    substruct_env(args, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn substruct_cli_lists_and_shows_machines() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let base = c.url();
    let client = connect(&nats.url()).await;
    discover(
        &client,
        "dc1",
        report(
            Some("AAAAAAAA-0000-0000-0000-000000000001"),
            Some("SN-A"),
            &[M1, M2],
            &["DA", "DB"],
        ),
    )
    .await
    .unwrap();
    discover(
        &client,
        "dc2",
        HardwareReport {
            secure_boot: Some(false),
            ..report(None, Some("SN-B"), &[], &["DC"])
        },
    )
    .await
    .unwrap();

    let base2 = base.clone();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || substruct(&["machines", "list"], &base2, Some(TOKEN)))
            .await
            .unwrap();
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for col in [
        "ID", "STATE", "SITE", "VENDOR", "PRODUCT", "SERIAL", "MACS", "CPUS", "MEMORY", "DISKS",
    ] {
        assert!(lines[0].contains(col), "{out}");
    }
    assert!(
        lines[1].starts_with("aaaaaaaa-0000-0000-0000-000000000001  discovered  dc1"),
        "{out}"
    );
    assert!(
        lines[1].contains("52:54:00:00:00:11,52:54:00:00:00:12"),
        "{out}"
    );
    assert!(
        lines[1].contains("4G") && lines[1].contains("2 (40G)"),
        "{out}"
    );
    assert!(lines[2].starts_with("sn-sn-b "), "{out}");

    let base2 = base.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        substruct(&["machines", "list", "--json"], &base2, Some(TOKEN))
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[0]["facts"]["disks"][1]["serial"], "DB");
    assert_eq!(json[0]["secure_boot"], Value::Null);
    assert_eq!(json[1]["secure_boot"], false);

    let base2 = base.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        substruct(&["machines", "show", "sn-sn-b"], &base2, Some(TOKEN))
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(
        out.contains("site:         dc2") && out.contains("serial:       SN-B"),
        "{out}"
    );
    assert!(out.contains("\nsecure boot:  off\n"), "{out}");

    let base2 = base.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        substruct(
            &["machines", "show", "sn-sn-b", "--json"],
            &base2,
            Some(TOKEN),
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["id"], "sn-sn-b");
    assert_eq!(json["secure_boot"], false, "`jq .secure_boot`");

    let base2 = base.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        substruct(&["machines", "show", "nope"], &base2, Some(TOKEN))
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.contains("machine \"nope\" not found"), "{err}");

    let base2 = base.clone();
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || substruct(&["machines", "list"], &base2, None))
            .await
            .unwrap();
    assert!(!ok);
    assert!(err.contains("401"), "{err}");

    c.stop().await;
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || substruct(&["machines", "list"], &base, Some(TOKEN)))
            .await
            .unwrap();
    assert!(!ok);
    assert!(err.contains("cannot reach the controller"), "{err}");
}

#[test]
fn controller_binary_names_the_file_and_field_of_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\n[limits]\nmax_nics = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_substruct-controller"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(err.contains("limits.max_nics"), "{err}");

    std::fs::write(&path, "lisen = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_substruct-controller"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `lisen`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_lost_nats_connection_and_its_return() {
    let mut nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let url = format!("{}/healthz", c.url());
    let status = |url: String| async move {
        reqwest::get(&url)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(status(url.clone()).await, 200);
    nats.kill();
    substruct_testkit::wait_for("healthz 503", std::time::Duration::from_secs(20), || {
        let url = url.clone();
        async move { status(url).await == 503 }
    })
    .await
    .unwrap();
    nats.restart().unwrap();
    substruct_testkit::wait_for("healthz 200", std::time::Duration::from_secs(30), || {
        let url = url.clone();
        async move { status(url).await == 200 }
    })
    .await
    .unwrap();
    c.stop().await;
}

/// Runs the CLI in-process: its stdout, or the message `substruct` prints on failure.
async fn cli(base: &str, args: &[&str]) -> Result<String, String> {
    use clap::Parser as _;
    let argv = ["substruct", "--controller", base, "--token", TOKEN]
        .into_iter()
        .chain(args.iter().copied());
    let parsed = substruct_controller::cli::Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    match substruct_controller::cli::run(parsed, &mut out).await {
        Ok(()) => Ok(String::from_utf8(out).unwrap()),
        Err(e) => Err(substruct_controller::error_chain(&e)),
    }
}

fn shipped(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/profiles")
        .join(name);
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn substruct_cli_manages_images_profiles_rules_sites_and_machines() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let base = c.url();
    let client = connect(&nats.url()).await;
    discover(&client, "dc1", report(None, Some("SN-A"), &[M1], &["DA"]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("marker.img");
    std::fs::write(&image, vec![7u8; 5000]).unwrap();
    let image = image.to_str().unwrap();

    let out = cli(&base, &["images", "add", image, "--kind", "disk"])
        .await
        .unwrap();
    assert_eq!(
        out,
        "image marker.img registered: disk 4.9K (raw) sha256 \
         f302a3f85503eeb1a105c81a5fbea0aa461417fb3893919572949cadbfee86a7\n"
    );
    // A qcow2 the prospector cannot stream (a backing file) is refused before it is
    // hashed or sent; its header says what is wrong.
    let mut qcow2 = vec![0u8; 4096];
    qcow2[0..4].copy_from_slice(b"QFI\xfb");
    qcow2[4..8].copy_from_slice(&3u32.to_be_bytes());
    qcow2[8..16].copy_from_slice(&512u64.to_be_bytes());
    qcow2[20..24].copy_from_slice(&16u32.to_be_bytes());
    qcow2[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
    qcow2[36..40].copy_from_slice(&2u32.to_be_bytes());
    qcow2[40..48].copy_from_slice(&196_608u64.to_be_bytes());
    qcow2[100..104].copy_from_slice(&112u32.to_be_bytes());
    let backed = dir.path().join("backed.qcow2");
    std::fs::write(&backed, &qcow2).unwrap();
    let backed = backed.to_str().unwrap();
    let err = cli(&base, &["images", "add", backed, "--kind", "disk"])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!(
            "{backed}: a qcow2 disk image the prospector cannot convert while it streams \
             (unsupported: a backing file); `qemu-img convert -O qcow2` (or `-O raw`) writes \
             one it can"
        )
    );
    // Without the backing file: registered, with the size inside.
    qcow2[8..16].fill(0);
    let plain = dir.path().join("plain.qcow2");
    std::fs::write(&plain, &qcow2).unwrap();
    let out = cli(
        &base,
        &["images", "add", plain.to_str().unwrap(), "--kind", "disk"],
    )
    .await
    .unwrap();
    assert!(
        out.starts_with("image plain.qcow2 registered: disk 4K (qcow2, 1024.0 MiB inside) sha256 "),
        "{out}"
    );
    let out = cli(&base, &["images", "list"]).await.unwrap();
    assert_eq!(
        out,
        "NAME         KIND  SIZE  SHA256            STORED  CACHED AT\n\
         marker.img   disk  4.9K  f302a3f85503eeb1  yes     -\n\
         plain.qcow2  disk  4K    ae91cd3d6728aece  yes     -\n"
    );

    let out = cli(&base, &["profiles", "add", &shipped("marker-image.toml")])
        .await
        .unwrap();
    assert_eq!(out, "profile marker-image saved (image)\n");
    let out = cli(&base, &["profiles", "list"]).await.unwrap();
    assert_eq!(
        out,
        "NAME          METHOD  IMAGE/KERNEL  DESCRIPTION\n\
         marker-image  image   marker.img    Writes the lab's marker disk image to vda\n"
    );
    let err = cli(&base, &["profiles", "show", "nope"]).await.unwrap_err();
    assert_eq!(
        err,
        "the controller answered 404 Not Found: profile \"nope\" not found"
    );

    let rule = shipped("rules/qemu-marker.toml");
    let out = cli(&base, &["rules", "dry-run", &rule]).await.unwrap();
    assert_eq!(
        out,
        "rule qemu-marker would assign profile marker-image to 1 machine(s):\n  sn-sn-a\n"
    );
    let out = cli(&base, &["rules", "add", &rule]).await.unwrap();
    assert_eq!(
        out,
        "rule qemu-marker saved (priority 100, profile marker-image)\n"
    );
    let out = cli(&base, &["rules", "list", "--json"]).await.unwrap();
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["name"], "qemu-marker");
    let out = cli(&base, &["rules", "delete", "qemu-marker"])
        .await
        .unwrap();
    assert_eq!(out, "rule qemu-marker deleted\n");
    let err = cli(&base, &["rules", "delete", "qemu-marker"])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "the controller answered 404 Not Found: rule \"qemu-marker\" not found"
    );

    let out = cli(&base, &["machines", "assign", "SN-A", "marker-image"])
        .await
        .unwrap();
    assert_eq!(out, "machine sn-sn-a is assigned (marker-image)\n");
    let out = cli(
        &base,
        &["machines", "release", "sn-sn-a", "--wipe", "quick"],
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        "machine sn-sn-a is discovered; its disks are wiped (Quick) when it next boots the prospector\n"
    );
    let out = cli(&base, &["machines", "retire", "sn-sn-a"])
        .await
        .unwrap();
    assert_eq!(out, "machine sn-sn-a is retired\n");

    let out = cli(
        &base,
        &["sites", "add", "dc1", "--local-boot", "no-boot-file"],
    )
    .await
    .unwrap();
    assert_eq!(out, "site dc1 registered (local boot: no-boot-file)\n");
    let out = cli(&base, &["sites", "list"]).await.unwrap();
    assert_eq!(
        out,
        "SITE  EDGE     VERSION  HEARTBEAT  LOCAL BOOT    REGISTERED\n\
         dc1   offline  -        never      no-boot-file  yes\n"
    );

    // Names travel as one escaped path segment: all of "a?b/c" reaches the
    // controller (unescaped, "?b/c" would have become a query string).
    let err = cli(&base, &["machines", "assign", "a?b/c", "marker-image"])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "the controller answered 404 Not Found: no machine with id, serial, SMBIOS UUID or MAC \"a?b/c\""
    );
    for odd in ["a b", "a/b", "..", ""] {
        let err = cli(&base, &["machines", "show", odd]).await.unwrap_err();
        assert_eq!(err, format!("machine {odd:?} not found"));
    }
    let err = cli(&base, &["rules", "delete", ".."]).await.unwrap_err();
    assert!(err.contains("\"..\" is not a usable name"), "{err}");
    c.stop().await;
}

/// A profile or rule name no document can have (a KV key could not hold it) is a plain
/// 404, never a store error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_names_in_urls_are_not_found() {
    let nats = NatsServer::start().unwrap();
    let c = Running::start(config(&nats.url())).await;
    let base = c.url();
    for noun in ["profiles", "rules"] {
        for name in ["a%23b", "..%2Fmachines", "UPPER", "a%20b"] {
            let url = format!("{base}/api/v1/{noun}/{name}");
            let (status, body) = get(&url, Some(TOKEN)).await;
            assert_eq!(status, 404, "GET {url}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains("not found"),
                "{body}"
            );
            let resp = reqwest::Client::new()
                .delete(&url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 404, "DELETE {url}");
        }
    }
}

/// `substruct ARGS` (the binary) with `env` set and no other `SUBSTRUCT_*` setting.
fn substruct_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_substruct"));
    cmd.args(args);
    for var in ["SUBSTRUCT_CONTROLLER", "SUBSTRUCT_TOKEN", "SUBSTRUCT_CA"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_api_is_verified_against_the_given_ca_only() {
    let nats = NatsServer::start().unwrap();
    let localhost = ["127.0.0.1".parse().unwrap()];
    let tls = TlsFiles::generate(&localhost).unwrap();
    let stranger = TlsFiles::generate(&localhost).unwrap();
    let c = Running::start(tls_config(&nats.url(), &tls)).await;
    let base = c.https_url();
    let ca = tls.ca.to_str().unwrap().to_owned();
    let wrong_ca = stranger.ca.to_str().unwrap().to_owned();

    // Hostile: a client that connects and never speaks holds a handshake slot, not the
    // listener. Kept open across every request below.
    let _silent = tokio::net::TcpStream::connect(c.controller.api_addr())
        .await
        .unwrap();

    // The right CA, by flag (in-process) and by SUBSTRUCT_CA (the binary).
    let listed = cli_ca(&base, &ca, &["machines", "list", "--json"]).await;
    assert_eq!(listed.as_deref().map(str::trim), Ok("[]"));
    let (b, a) = (base.clone(), ca.clone());
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        substruct_env(
            &["sites", "list", "--json"],
            &[
                ("SUBSTRUCT_CONTROLLER", &b),
                ("SUBSTRUCT_TOKEN", TOKEN),
                ("SUBSTRUCT_CA", &a),
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]");

    // No CA, and another CA: refused, naming the certificate problem and what was trusted.
    let b = base.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        substruct_env(
            &["machines", "list"],
            &[("SUBSTRUCT_CONTROLLER", &b), ("SUBSTRUCT_TOKEN", TOKEN)],
        )
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains("--ca FILE or SUBSTRUCT_CA"), "{err}");
    let err = cli_ca(&base, &wrong_ca, &["machines", "list"])
        .await
        .unwrap_err();
    assert!(
        err.contains(&format!("TLS with the controller at {base} failed")),
        "{err}"
    );
    assert!(err.contains(&format!("the CA in {wrong_ca}")), "{err}");
    // Both test CAs have the same name: the stranger's is found, and its signature fails.
    assert!(
        err.contains("invalid peer certificate: BadSignature"),
        "{err}"
    );

    // A CA file that is no CA file.
    let not_pem = tls.ca.with_file_name("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let err = cli_ca(&base, not_pem.to_str().unwrap(), &["machines", "list"])
        .await
        .unwrap_err();
    assert!(err.contains("no CERTIFICATE block"), "{err}");

    // Plain HTTP to the HTTPS port: told to use https://.
    let plain = base.replacen("https://", "http://", 1);
    let err = cli_ca(&plain, &ca, &["machines", "list"])
        .await
        .unwrap_err();
    assert!(err.contains("400 Bad Request"), "{err}");
    assert!(err.contains("use an https:// URL"), "{err}");

    // /healthz on the same listener.
    let pem = std::fs::read(&tls.ca).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    c.stop().await;
}

/// The CLI in-process with `--ca ca`: stdout, or the message `substruct` prints.
async fn cli_ca(base: &str, ca: &str, args: &[&str]) -> Result<String, String> {
    let mut with_ca = vec!["--ca", ca];
    with_ca.extend(args);
    cli(base, &with_ca).await
}

#[test]
fn controller_binary_refuses_half_or_broken_tls_settings() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_substruct-controller"))
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--nats", "nats://127.0.0.1:1"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--tls-cert", "/nonexistent/cert.pem"]);
    assert!(err.contains("--tls-key"), "{err}");

    let path = dir.path().join("controller.toml");
    std::fs::write(&path, "tls_cert = \"/c.pem\"\n").unwrap();
    let err = run(&["--config", path.to_str().unwrap()]);
    assert!(err.contains("field `tls_key`: is missing"), "{err}");

    let tls = TlsFiles::generate(&["127.0.0.1".parse().unwrap()]).unwrap();
    let other = TlsFiles::generate(&["127.0.0.1".parse().unwrap()]).unwrap();
    let (cert, key) = (tls.cert.to_str().unwrap(), other.key.to_str().unwrap());
    let err = run(&["--tls-cert", cert, "--tls-key", key]);
    assert!(err.contains("cannot be used together"), "{err}");
    let missing = dir.path().join("missing.pem");
    let err = run(&["--tls-cert", cert, "--tls-key", missing.to_str().unwrap()]);
    assert!(
        err.contains(&format!("cannot read TLS key {}", missing.display())),
        "{err}"
    );
}
