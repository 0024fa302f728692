//! The whole agent (`agent::run`, in-process) in a network namespace, driven by real
//! clients from a second namespace: busybox `udhcpc` gets a lease, tftp-hpa fetches
//! `lpxelinux.0` and `pxelinux.cfg/default`, `curl` fetches `boot.ipxe`. Then the
//! `substruct-edge` binary is started with exactly the documented flags.
//!
//! Needs root, `ip netns`, the clients and pxelinux; skipped otherwise, or failed under
//! `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1` (see `substruct_testkit::gate`). Namespaces are
//! unique per process and deleted on drop, also on failure.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use substruct_edge::config::Flags;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::{run, Netns, NsProcess};
use substruct_testkit::{poll, wait_for_blocking};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// What these tests need from the host.
const NEEDS: &[Need<'static>] = &[
    Need::Netns,
    Need::Tool("udhcpc"),
    Need::Tool("tftp"),
    Need::Tool("curl"),
    Need::File(PXELINUX),
];

/// The Debian loader the agent serves over TFTP (package pxelinux).
const PXELINUX: &str = "/usr/lib/PXELINUX/lpxelinux.0";

/// Two namespaces joined by a veth: `srv` (vsrv 10.77.0.1/24) and `cli` (vcli
/// 10.77.0.50/24, outside the pool).
struct Lab {
    srv: Netns,
    cli: Netns,
}

impl Lab {
    fn new(tag: &str) -> Result<Self> {
        let lab = Lab {
            srv: Netns::create(&format!("{tag}-s"))?,
            cli: Netns::create(&format!("{tag}-c"))?,
        };
        lab.srv.veth_pair("vsrv", &lab.cli, "vcli")?;
        lab.srv
            .ip(&["addr", "add", "10.77.0.1/24", "dev", "vsrv"])?;
        // A static address for the TFTP/HTTP clients, outside the pool.
        lab.cli
            .ip(&["addr", "add", "10.77.0.50/24", "dev", "vcli"])?;
        Ok(lab)
    }

    /// Runs `args` in the client namespace; fails with its stderr on a non-zero exit.
    fn cli_cmd(&self, args: &[&str]) -> Result<Output> {
        run(self.cli.command(args[0]).args(&args[1..]))
    }
}

fn flags(images: &Path, state: &Path) -> Vec<String> {
    [
        "substruct-edge",
        "--interface",
        "vsrv",
        "--address",
        "10.77.0.1/24",
        "--pool",
        "10.77.0.100-10.77.0.199",
        "--images",
        &images.display().to_string(),
        "--site",
        "lab",
        "--state-dir",
        &state.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn check_clients(lab: &Lab, scratch: &Path) -> Result<()> {
    // HTTP first: it doubles as the readiness probe.
    wait_for_blocking("edge HTTP to answer", WAIT, || {
        lab.cli_cmd(&["curl", "-fsS", "-m", "2", "http://10.77.0.1/healthz"])
            .is_ok()
    })?;
    let script = lab.cli_cmd(&[
        "curl",
        "-fsS",
        "-m",
        "5",
        "http://10.77.0.1/boot.ipxe?mac=52:54:00:77:00:0a&uuid=x&buildarch=i386&platform=pcbios",
    ])?;
    let script = String::from_utf8_lossy(&script.stdout);
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains("substruct.site=lab substruct.nats=nats://10.77.0.1:4222"),
        "{script}"
    );

    // DHCP: a real client gets a lease from the pool.
    let lease = lab.cli_cmd(&[
        "udhcpc",
        "-i",
        "vcli",
        "-f",
        "-q",
        "-n",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        "/bin/true",
    ])?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&lease.stdout),
        String::from_utf8_lossy(&lease.stderr)
    );
    assert!(log.contains("lease of 10.77.0.1"), "{log}");
    assert!(log.contains("obtained"), "{log}");

    // TFTP: the Debian loader byte for byte, and the generated pxelinux config.
    let got = scratch.join("lpxelinux.0");
    lab.cli_cmd(&[
        "tftp",
        "-m",
        "binary",
        "10.77.0.1",
        "-c",
        "get",
        "lpxelinux.0",
        &got.display().to_string(),
    ])?;
    assert_eq!(std::fs::read(&got)?, std::fs::read(PXELINUX)?);
    let cfg = scratch.join("default");
    lab.cli_cmd(&[
        "tftp",
        "-m",
        "binary",
        "10.77.0.1",
        "-c",
        "get",
        "pxelinux.cfg/default",
        &cfg.display().to_string(),
    ])?;
    assert_eq!(
        std::fs::read_to_string(&cfg)?,
        "DEFAULT ipxe\nPROMPT 0\nTIMEOUT 0\nLABEL ipxe\n  LINUX http://10.77.0.1/ipxe.lkrn\n  APPEND ifconf -c dhcp && chain http://10.77.0.1/boot.ipxe?mac=${net0/mac}&uuid=${uuid}&buildarch=${buildarch}&platform=${platform}\n"
    );
    Ok(())
}

#[test]
fn agent_serves_dhcp_tftp_and_http_in_a_namespace() -> Result<()> {
    if !system_test(NEEDS) {
        return Ok(());
    }
    let lab = Lab::new("run")?;
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    let state = dir.path().join("state");
    let config = Flags::try_parse_from(flags(&images, &state))?.into_config()?;

    // The agent runs on its own thread, moved into the server namespace first, so
    // every socket it binds lives there.
    let cancel = CancellationToken::new();
    let agent_cancel = cancel.clone();
    let agent = lab.srv.spawn_inside(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(substruct_edge::agent::run(config, agent_cancel))?;
        Ok(())
    });

    let result = check_clients(&lab, dir.path());
    cancel.cancel();
    let joined = agent.join();
    result?;
    match joined {
        Ok(r) => r?,
        Err(_) => bail!("agent thread panicked"),
    }
    assert!(state.join("leases.redb").exists());
    Ok(())
}

#[test]
fn the_binary_starts_with_the_documented_flags() -> Result<()> {
    if !system_test(NEEDS) {
        return Ok(());
    }
    let lab = Lab::new("bin")?;
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    std::fs::write(images.join("hello.txt"), b"hello")?;
    let state = dir.path().join("state");
    let mut args: Vec<String> = flags(&images, &state).into_iter().skip(1).collect();
    args.extend(
        [
            "--bios-chain",
            "undionly",
            "--http-port",
            "80",
            "--prospector-nats",
            "nats://10.77.0.1:4222",
        ]
        .map(String::from),
    );
    let log = std::fs::File::create(dir.path().join("edge.log"))?;
    let mut child = lab
        .srv
        .command(env!("CARGO_BIN_EXE_substruct-edge"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let result = (|| -> Result<()> {
        wait_for_blocking("the binary's HTTP", WAIT, || {
            lab.cli_cmd(&["curl", "-fsS", "-m", "2", "http://10.77.0.1/healthz"])
                .is_ok()
        })?;
        let out = lab.cli_cmd(&[
            "curl",
            "-fsS",
            "-m",
            "5",
            "-r",
            "1-3",
            "http://10.77.0.1/images/hello.txt",
        ])?;
        assert_eq!(out.stdout, b"ell");
        Ok(())
    })();
    // SIGTERM: the agent drains and exits 0.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut status = None;
    let _ = wait_for_blocking("the binary to exit", WAIT, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = std::fs::read_to_string(dir.path().join("edge.log")).unwrap_or_default();
    result.with_context(|| format!("edge log:\n{log}"))?;
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "exit {status:?}\n{log}"
    );
    Ok(())
}

#[test]
fn start_up_errors_name_what_failed() -> Result<()> {
    if !system_test(NEEDS) {
        return Ok(());
    }
    let lab = Lab::new("err")?;
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    let state = dir.path().join("state");
    // 10.77.0.9 is not configured in the namespace: binding HTTP fails first.
    let mut args: Vec<String> = flags(&images, &state).into_iter().skip(1).collect();
    let at = args
        .iter()
        .position(|a| a == "10.77.0.1/24")
        .context("address flag")?;
    args[at] = "10.77.0.9/24".into();
    let out = lab
        .srv
        .command(env!("CARGO_BIN_EXE_substruct-edge"))
        .args(&args)
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("binding HTTP on 10.77.0.9:80"),
        "stderr: {err}"
    );
    Ok(())
}

#[test]
fn agent_follows_nats_intents_and_sends_heartbeats() -> Result<()> {
    if !system_test(NEEDS) {
        return Ok(());
    }
    let lab = Lab::new("nats")?;
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    let state = dir.path().join("state");
    // nats-server inside the server namespace, on the edge's address (a fixed port:
    // the namespace is this test's own).
    let nats_bin = substruct_testkit::nats_server_bin();
    let js_dir = dir.path().join("js");
    let mut nats = NsProcess::spawn(
        &lab.srv,
        "nats-server",
        nats_bin.to_str().context("nats-server path is not UTF-8")?,
        &[
            "-a",
            "10.77.0.1",
            "-p",
            "4222",
            "-js",
            "-sd",
            js_dir.to_str().context("temp path is not UTF-8")?,
        ],
        dir.path().join("nats.log"),
    )?;
    lab.srv
        .wait_listening("10.77.0.1", 4222, WAIT, &mut [&mut nats])?;
    let mut args = flags(&images, &state);
    args.extend(["--nats".to_string(), "nats://10.77.0.1:4222".to_string()]);
    let config = Flags::try_parse_from(args)?.into_config()?;
    let cli = &lab.cli;

    lab.srv.run_inside(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            use futures::StreamExt;
            use substruct_wire::intent::{BootIntent, BootIntentRecord, LocalBootWay};
            use substruct_wire::messages::{SiteEvent, SiteEventKind};

            let site = config.site.clone();
            let client = substruct_runtime::nats_options("edge-test")
                .connect("nats://10.77.0.1:4222")
                .await?;
            let mut events = client
                .subscribe(substruct_wire::subjects::event(&site))
                .await?;
            let cancel = CancellationToken::new();
            let agent = tokio::spawn(substruct_edge::agent::run(config, cancel.clone()));
            let outcome = async {
                // A heartbeat arrives (the first tick fires at once).
                let msg = tokio::time::timeout(WAIT, events.next())
                    .await
                    .context("no heartbeat")?
                    .context("subscription ended")?;
                let event: SiteEvent = substruct_wire::decode(&msg.payload)?;
                assert_eq!(event.site, site);
                assert!(matches!(event.event, SiteEventKind::Heartbeat { .. }));

                // An intent put into KV changes what boot.ipxe answers.
                let js = async_nats::jetstream::new(client.clone());
                let kv = substruct_runtime::jetstream::ensure_kv(
                    &js,
                    &substruct_runtime::jetstream::BucketSpec::new(
                        substruct_wire::subjects::KV_BOOT,
                    ),
                )
                .await?;
                let mac = substruct_wire::Mac::parse("52:54:00:77:00:0e")?;
                let rec = BootIntentRecord {
                    machine_id: None,
                    intent: BootIntent::Local {
                        way: LocalBootWay::IpxeExit,
                    },
                };
                kv.put(
                    substruct_wire::subjects::boot_key(&site, &mac),
                    substruct_wire::encode(&rec)?.into(),
                )
                .await?;
                let url = "http://10.77.0.1/boot.ipxe?mac=52:54:00:77:00:0e&platform=efi";
                let want = "#!ipxe\necho substruct lab: 52:54:00:77:00:0e local, booting the local disk\nexit 1\n";
                let last = std::cell::RefCell::new(Vec::new());
                poll("boot.ipxe to show the intent", WAIT, Duration::from_millis(50), || {
                    let curl = cli
                        .tokio_command("curl")
                        .args(["-fsS", "-m", "2", url])
                        .output();
                    let last = &last;
                    async move {
                        let stdout = curl.await.map(|o| o.stdout).unwrap_or_default();
                        let shown = stdout == want.as_bytes();
                        *last.borrow_mut() = stdout;
                        shown.then_some(())
                    }
                })
                .await
                .with_context(|| {
                    format!("last boot.ipxe: {}", String::from_utf8_lossy(&last.borrow()))
                })?;
                anyhow::Ok(())
            }
            .await;
            cancel.cancel();
            let stopped = tokio::time::timeout(WAIT, agent).await;
            outcome?;
            stopped.context("agent did not stop")??.context("agent failed")?;
            anyhow::Ok(())
        })
    })?;
    // The intent reached the on-disk cache too.
    let cached = std::fs::read_to_string(state.join("intents.json"))?;
    assert!(cached.contains("52:54:00:77:00:0e"), "{cached}");
    Ok(())
}
