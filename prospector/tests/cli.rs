//! The built `substruct-prospector` binary, run as an operator would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use futures::StreamExt;
use substruct_testkit::NatsServer;
use substruct_wire::messages::{DiscoverReply, DiscoverRequest, Instruction};
use substruct_wire::{subjects, MachineId, SiteId};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn prospector(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_substruct-prospector"));
    cmd.args(args).env("RUST_LOG", "warn");
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn dry_run_prints_the_report_as_json() {
    let root = fixture("qemu-vm");
    let out = prospector(&["--root", root.to_str().unwrap(), "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["boot_mode"], "bios");
    assert_eq!(json["dmi"]["sys_vendor"], "QEMU");
    assert_eq!(json["dmi"]["product_serial"], "SUBSTRUCT-VM-0001");
    assert_eq!(
        json["dmi"]["product_uuid"],
        "9a3c5e1f-8b2d-4f6a-a1c3-5d7e9f0b2c4e"
    );
    assert_eq!(json["dmi"]["board_serial"], serde_json::Value::Null);
    assert_eq!(json["cpu"]["threads"], 2);
    assert_eq!(json["memory"]["total_bytes"], 492_876u64 * 1024);
    assert_eq!(json["memory"]["dimms"][0]["kind"], "RAM");
    assert_eq!(json["disks"][0]["name"], "nvme0n1");
    assert_eq!(json["disks"][0]["serial"], "SUBSTRUCT-NVME-1");
    assert_eq!(json["disks"][1]["name"], "vda");
    assert_eq!(json["disks"][1]["transport"], "virtio");
    assert_eq!(json["disks"][1]["size_bytes"], 21_474_836_480u64);
    assert_eq!(json["nics"][0]["mac"], "52:54:00:12:34:01");
    assert_eq!(json["nics"][1]["pci_address"], "0000:00:06.0");
    assert_eq!(json["pci"].as_array().unwrap().len(), 8);
    // The JSON is the report itself.
    let report: substruct_wire::report::HardwareReport =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report, substruct_prospector::facts::gather(&root));
}

#[test]
fn missing_settings_name_the_flag_and_the_kernel_argument() {
    let root = fixture("desktop-oem"); // its /proc/cmdline has no substruct.* arguments
    let out = prospector(&["--root", root.to_str().unwrap(), "--once"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--nats URL") && err.contains("substruct.nats="),
        "{err}"
    );

    let out = prospector(&[
        "--root",
        root.to_str().unwrap(),
        "--nats",
        "nats://127.0.0.1:1",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--site NAME") && err.contains("substruct.site="),
        "{err}"
    );

    let out = prospector(&[
        "--root",
        root.to_str().unwrap(),
        "--nats",
        "n",
        "--site",
        "Bad Site",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid site name \"Bad Site\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_bad_edge_url_is_refused_naming_the_flag_and_the_kernel_argument() {
    let root = fixture("qemu-vm");
    let out = prospector(&[
        "--root",
        root.to_str().unwrap(),
        "--edge",
        "https://10.77.0.1:8080",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid edge URL (from --edge or substruct.edge)")
            && err.contains("only http:// is supported"),
        "{err}"
    );
}

/// Runs the binary against a real nats-server with a responder answering `instruction`.
fn run_against_responder(instruction: Instruction, extra: &[&str]) -> (Output, DiscoverRequest) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let nats = NatsServer::start().unwrap();
    let site = SiteId::new("lab1").unwrap(); // from the fixture's kernel command line
    let (client, mut sub) = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let sub = client.subscribe(subjects::discover(&site)).await.unwrap();
        client.flush().await.unwrap();
        (client, sub)
    });
    let root = fixture("qemu-vm");
    let mut args = vec!["--root", root.to_str().unwrap(), "--nats"];
    let url = nats.url();
    args.push(&url);
    args.extend_from_slice(extra);
    let child = prospector(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let request = rt.block_on(async {
        let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap()
            .unwrap();
        let req = substruct_wire::decode::<DiscoverRequest>(&msg.payload).unwrap();
        let reply = DiscoverReply {
            machine_id: MachineId::new("vm-1").unwrap(),
            instruction,
        };
        client
            .publish(
                msg.reply.unwrap(),
                substruct_wire::encode(&reply).unwrap().into(),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
        req
    });
    (child.wait_with_output().unwrap(), request)
}

#[test]
fn once_exits_zero_on_acknowledgement() {
    let (out, req) = run_against_responder(Instruction::Wait, &["--once"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("acknowledged as machine vm-1"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        req.boot_token.unwrap().as_str(),
        "t0k3n",
        "token from the kernel command line"
    );
    assert_eq!(
        req.report.dmi.product_serial.as_deref(),
        Some("SUBSTRUCT-VM-0001")
    );
}

#[test]
fn power_off_is_printed_not_carried_out() {
    let (out, _) = run_against_responder(Instruction::PowerOff, &["--token", "cli-token"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("controller asked machine vm-1 to power off"),
        "{}",
        text(&out.stdout)
    );
}
