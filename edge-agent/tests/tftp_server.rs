//! The TFTP server against real clients (tftp-hpa's `tftp`, `atftp`) and a hand-written client
//! that behaves like a PXE ROM. Everything on 127.0.0.1, port 0.
//!
//! The real-client tests need their client installed (Debian: tftp-hpa, atftp); without it
//! they skip, or fail under `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1` (see `substruct_testkit::gate`).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use substruct_edge::tftp::packet::{self, Packet, OP_RRQ, OP_WRQ};
use substruct_edge::tftp::{self, TftpFiles, TftpSettings};
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::Netns;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), tftp::TftpError>>,
}

impl Server {
    async fn start(files: TftpFiles) -> Server {
        Self::start_with(files, TftpSettings::default()).await
    }

    async fn start_with(files: TftpFiles, settings: TftpSettings) -> Server {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(tftp::serve_with(socket, files, settings, cancel.clone()));
        Server { addr, cancel, task }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops when cancelled")
            .unwrap()
            .unwrap();
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn root_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

async fn run_client(program: &str, args: &[&str], cwd: &Path) -> Result<std::process::Output> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WAIT * 3, child)
        .await
        .with_context(|| format!("{program} did not finish"))?
        .with_context(|| format!("cannot run {program} (install its Debian package)"))
}

/// A client speaking TFTP by hand, one source port for its whole life, like a PXE ROM.
struct Client {
    socket: UdpSocket,
    server: SocketAddr,
}

impl Client {
    async fn new(server: SocketAddr) -> Client {
        Client {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
        }
    }

    async fn rrq(&self, name: &str, options: &[(&str, String)]) {
        let buf = packet::encode_request(OP_RRQ, name, "octet", options);
        self.socket.send_to(&buf, self.server).await.unwrap();
    }

    async fn send_raw(&self, buf: &[u8]) {
        self.socket.send_to(buf, self.server).await.unwrap();
    }

    /// Next datagram, or an error after [`WAIT`].
    async fn recv(&self) -> Result<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 70000];
        let (len, from) = tokio::time::timeout(WAIT, self.socket.recv_from(&mut buf))
            .await
            .context("no reply within the bound")??;
        buf.truncate(len);
        Ok((buf, from))
    }

    /// Receives DATA until the short block, acking every `window` blocks; returns the bytes.
    /// The first DATA block may already have been received (`first`).
    async fn receive_file(
        &self,
        tid: SocketAddr,
        blksize: usize,
        window: usize,
        mut first: Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut expected: u16 = 1;
        let mut in_window = 0;
        loop {
            let buf = match first.take() {
                Some(b) => b,
                None => {
                    let (buf, from) = self.recv().await?;
                    if from != tid {
                        bail!("DATA from {from}, expected {tid}");
                    }
                    buf
                }
            };
            match packet::decode(&buf)? {
                Packet::Data { block, data } if block == expected => {
                    out.extend_from_slice(data);
                    in_window += 1;
                    let last = data.len() < blksize;
                    if last || in_window == window {
                        self.socket.send_to(&packet::encode_ack(block), tid).await?;
                        in_window = 0;
                    }
                    if last {
                        return Ok(out);
                    }
                    expected = expected.wrapping_add(1);
                }
                Packet::Data { block, .. } => bail!("block {block}, expected {expected}"),
                other => bail!("unexpected {other:?}"),
            }
        }
    }
}

fn oack_value(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

#[tokio::test]
async fn tftp_hpa_client_fetches_files_byte_identical() {
    if !system_test(&[Need::Tool("tftp")]) {
        return;
    }
    let small = pattern(1000, 1);
    let mib = pattern(1024 * 1024, 2);
    let exact = pattern(512 * 8, 3);
    let root = root_with(&[
        ("small.bin", &small),
        ("boot/mib.bin", &mib),
        ("exact.bin", &exact),
    ]);
    let server = Server::start(TftpFiles::new(vec![root.path().to_owned()])).await;
    let out = tempfile::tempdir().unwrap();
    let port = server.addr.port().to_string();
    for (remote, expected) in [
        ("small.bin", &small),
        ("boot/mib.bin", &mib),
        ("exact.bin", &exact),
    ] {
        let local = out.path().join("got");
        let local_str = local.to_str().unwrap();
        let output = run_client(
            "tftp",
            &[
                "127.0.0.1",
                &port,
                "-m",
                "binary",
                "-c",
                "get",
                remote,
                local_str,
            ],
            out.path(),
        )
        .await
        .unwrap();
        assert!(output.status.success(), "tftp failed: {output:?}");
        let got = std::fs::read(&local).unwrap();
        assert!(got == *expected, "{remote}: contents differ");
        std::fs::remove_file(&local).unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn atftp_fetches_with_blksize_tsize_and_windowsize() {
    if !system_test(&[Need::Tool("atftp")]) {
        return;
    }
    let small = pattern(3000, 4);
    let mib = pattern(1024 * 1024 + 17, 5);
    let root = root_with(&[("small.bin", &small), ("mib.bin", &mib)]);
    let server = Server::start(TftpFiles::new(vec![root.path().to_owned()])).await;
    let out = tempfile::tempdir().unwrap();
    let port = server.addr.port().to_string();
    for window in ["1", "8"] {
        for (remote, expected) in [("small.bin", &small), ("mib.bin", &mib)] {
            let local = out.path().join(format!("{remote}.{window}"));
            let local_str = local.to_str().unwrap();
            let windowsize = format!("windowsize {window}");
            let output = run_client(
                "atftp",
                &[
                    "--get",
                    "-r",
                    remote,
                    "-l",
                    local_str,
                    "--option",
                    "blksize 1468",
                    "--option",
                    "tsize 0",
                    "--option",
                    &windowsize,
                    "127.0.0.1",
                    &port,
                ],
                out.path(),
            )
            .await
            .unwrap();
            assert!(output.status.success(), "atftp failed: {output:?}");
            let got = std::fs::read(&local).unwrap();
            assert!(
                got == *expected,
                "{remote} windowsize {window}: contents differ"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn pxe_rom_tsize_probe_abort_then_same_port_request_is_served() {
    let loader = pattern(100_000, 6);
    let root = root_with(&[("lpxelinux.0", &loader)]);
    let server = Server::start(TftpFiles::new(vec![root.path().to_owned()])).await;
    let client = Client::new(server.addr).await;

    // 1. Probe: tsize only, read the OACK.
    client.rrq("lpxelinux.0", &[("tsize", "0".into())]).await;
    let (buf, tid1) = client.recv().await.unwrap();
    let Packet::Oack(pairs) = packet::decode(&buf).unwrap() else {
        panic!("expected OACK, got {buf:?}")
    };
    assert_eq!(oack_value(&pairs, "tsize").as_deref(), Some("100000"));
    assert_ne!(tid1, server.addr, "reply comes from a new transfer port");

    // 2. Abort with ERROR 8 to the transfer port.
    client
        .socket
        .send_to(&packet::encode_error(8, "tsize probe"), tid1)
        .await
        .unwrap();

    // 3. At once, the real request from the SAME source port, with blksize.
    client
        .rrq(
            "lpxelinux.0",
            &[("blksize", "1456".into()), ("tsize", "0".into())],
        )
        .await;
    let (buf, tid2) = loop {
        let (buf, from) = client.recv().await.unwrap();
        // Nothing more may come from the aborted transfer except, at most, a stale OACK
        // retransmit that was already in flight.
        if from == tid1 {
            continue;
        }
        break (buf, from);
    };
    let Packet::Oack(pairs) = packet::decode(&buf).unwrap() else {
        panic!("expected OACK, got {buf:?}")
    };
    assert_eq!(oack_value(&pairs, "blksize").as_deref(), Some("1456"));
    client
        .socket
        .send_to(&packet::encode_ack(0), tid2)
        .await
        .unwrap();
    let got = client.receive_file(tid2, 1456, 1, None).await.unwrap();
    assert!(got == loader, "loader contents differ");
    server.stop().await;
}

#[tokio::test]
async fn new_request_from_same_port_replaces_a_live_transfer_without_error() {
    // Some ROMs never send the ERROR: they just ask again from the same port.
    let loader = pattern(50_000, 7);
    let root = root_with(&[("undionly.kpxe", &loader)]);
    let server = Server::start(TftpFiles::new(vec![root.path().to_owned()])).await;
    let client = Client::new(server.addr).await;
    client.rrq("undionly.kpxe", &[("tsize", "0".into())]).await;
    let (_, tid1) = client.recv().await.unwrap();
    client.rrq("undionly.kpxe", &[]).await;
    let (first, tid2) = loop {
        let (buf, from) = client.recv().await.unwrap();
        if from != tid1 {
            break (buf, from);
        }
    };
    let got = client
        .receive_file(tid2, 512, 1, Some(first))
        .await
        .unwrap();
    assert!(got == loader);
    server.stop().await;
}

#[tokio::test]
async fn a_retransmitted_request_leaves_the_transfer_the_client_talks_to_alone() {
    // A boot storm: the OACK was slow, the client asked again, then took the first
    // transfer's OACK. The retransmission must not cancel that transfer (it did: the
    // client then timed out and started over, the storm's slow tail).
    let loader = pattern(60_000, 9);
    let root = root_with(&[("lpxelinux.0", &loader)]);
    let server = Server::start(TftpFiles::new(vec![root.path().to_owned()])).await;
    let client = Client::new(server.addr).await;
    let options = [("blksize", "1024".to_string()), ("tsize", "0".to_string())];
    client.rrq("lpxelinux.0", &options).await;
    let (first_oack, tid1) = client.recv().await.unwrap();
    assert!(matches!(packet::decode(&first_oack), Ok(Packet::Oack(_))));
    client.rrq("lpxelinux.0", &options).await;
    // The retransmission gets its own transfer; the client ends it as RFC 1350 says.
    let (second_oack, tid2) = client.recv().await.unwrap();
    assert!(matches!(packet::decode(&second_oack), Ok(Packet::Oack(_))));
    assert_ne!(tid1, tid2);
    client
        .socket
        .send_to(&packet::encode_error(5, "unknown transfer ID"), tid2)
        .await
        .unwrap();
    client
        .socket
        .send_to(&packet::encode_ack(0), tid1)
        .await
        .unwrap();
    let got = client.receive_file(tid1, 1024, 1, None).await.unwrap();
    assert!(got == loader, "loader contents differ");
    server.stop().await;
}

#[tokio::test]
async fn windowsize_is_negotiated_and_blksize_capped() {
    let data = pattern(200_000, 8);
    let root = root_with(&[("big.bin", &data)]);
    let server = Server::start(TftpFiles::new(vec![root.path().to_owned()])).await;
    let client = Client::new(server.addr).await;
    client
        .rrq(
            "big.bin",
            &[("blksize", "9000".into()), ("windowsize", "4".into())],
        )
        .await;
    let (buf, tid) = client.recv().await.unwrap();
    let Packet::Oack(pairs) = packet::decode(&buf).unwrap() else {
        panic!("expected OACK")
    };
    assert_eq!(oack_value(&pairs, "blksize").as_deref(), Some("1468"));
    assert_eq!(oack_value(&pairs, "windowsize").as_deref(), Some("4"));
    assert_eq!(oack_value(&pairs, "tsize"), None, "tsize not asked for");
    client
        .socket
        .send_to(&packet::encode_ack(0), tid)
        .await
        .unwrap();
    // The server sends a whole window of 4 blocks without waiting for an ACK.
    for expected in 1..=4u16 {
        let (buf, _) = client.recv().await.unwrap();
        assert!(
            matches!(packet::decode(&buf).unwrap(), Packet::Data { block, .. } if block == expected)
        );
    }
    // Ack only block 2: the next window restarts at block 3 (RFC 7440).
    client
        .socket
        .send_to(&packet::encode_ack(2), tid)
        .await
        .unwrap();
    let (buf, _) = client.recv().await.unwrap();
    assert!(matches!(
        packet::decode(&buf).unwrap(),
        Packet::Data { block: 3, .. }
    ));
    client
        .socket
        .send_to(&packet::encode_error(0, "done testing"), tid)
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn escapes_are_refused_and_nothing_outside_the_root_is_served() {
    let parent = tempfile::tempdir().unwrap();
    let root: PathBuf = parent.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(parent.path().join("secret"), b"secret").unwrap();
    std::fs::write(root.join("ok.txt"), b"fine").unwrap();
    std::os::unix::fs::symlink(parent.path().join("secret"), root.join("link")).unwrap();
    std::os::unix::fs::symlink(parent.path(), root.join("updir")).unwrap();
    let server = Server::start(TftpFiles::new(vec![root.clone()])).await;
    let secret_abs = parent.path().join("secret");
    let requests = [
        "../secret".to_owned(),
        "..\\secret".to_owned(),
        "/../secret".to_owned(),
        "a/../../secret".to_owned(),
        secret_abs.display().to_string(),
        "link".to_owned(),
        "updir/secret".to_owned(),
        "/etc/passwd".to_owned(),
    ];
    for name in &requests {
        let client = Client::new(server.addr).await;
        client.rrq(name, &[]).await;
        let (buf, _) = client.recv().await.unwrap();
        match packet::decode(&buf).unwrap() {
            Packet::Error { code, .. } => assert!(
                code == 1 || code == 2,
                "{name}: error code {code}, expected 1 or 2"
            ),
            other => panic!("{name}: served {other:?}"),
        }
    }
    // A leading slash is relative to the root, backslashes are separators.
    for name in ["/ok.txt", "\\ok.txt", "./ok.txt"] {
        let client = Client::new(server.addr).await;
        client.rrq(name, &[]).await;
        let (buf, tid) = client.recv().await.unwrap();
        let got = client.receive_file(tid, 512, 1, Some(buf)).await.unwrap();
        assert_eq!(got, b"fine", "{name}");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_local_boot_name_is_never_served_even_when_a_file_has_it() {
    // Deployed UEFI firmware is offered this name so that its network boot fails at once.
    let name = substruct_edge::dhcp::core::LOCAL_BOOT_FILE;
    let root = root_with(&[(name, b"not a loader")]);
    let server = Server::start(TftpFiles::new(vec![root.path().to_path_buf()])).await;
    for asked in [name.to_owned(), format!("/{name}")] {
        let client = Client::new(server.addr).await;
        client.rrq(&asked, &[("tsize", "0".to_owned())]).await;
        let (buf, _) = client.recv().await.unwrap();
        match packet::decode(&buf).unwrap() {
            Packet::Error { code, message } => {
                assert_eq!(code, 1, "{asked}");
                assert!(message.contains("local boot"), "{asked}: {message}");
            }
            other => panic!("{asked}: served {other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_packets_get_errors_and_the_server_keeps_serving() {
    let root = root_with(&[("f", b"hello")]);
    let server = Server::start(TftpFiles::new(vec![root.path().to_owned()])).await;
    let client = Client::new(server.addr).await;
    let bad: &[&[u8]] = &[
        b"\x00",
        b"\x00\x01noterminator",
        b"\x00\x01f\x00octet",
        b"\x00\x09junk",
        b"\x00\x01f\x00weird\x00",
        b"\x00\x04\x00\x01",
        b"\x00\x03\x00\x01data",
    ];
    for packet in bad {
        client.send_raw(packet).await;
        let (buf, _) = client.recv().await.unwrap();
        assert!(
            matches!(packet::decode(&buf).unwrap(), Packet::Error { code: 4, .. }),
            "{packet:?} answered {buf:?}"
        );
    }
    // A write request is refused: read-only.
    client
        .send_raw(&packet::encode_request(OP_WRQ, "upload", "octet", &[]))
        .await;
    let (buf, _) = client.recv().await.unwrap();
    assert!(matches!(
        packet::decode(&buf).unwrap(),
        Packet::Error { code: 2, .. }
    ));
    // Still serving.
    client.rrq("f", &[]).await;
    let (buf, tid) = client.recv().await.unwrap();
    let got = client.receive_file(tid, 512, 1, Some(buf)).await.unwrap();
    assert_eq!(got, b"hello");
    server.stop().await;
}

#[tokio::test]
async fn generated_pxelinux_config_is_served_and_updated_live() {
    let files = TftpFiles::new(vec![]);
    files.set_generated("pxelinux.cfg/default", &b"DEFAULT local\n"[..]);
    let server = Server::start(files.clone()).await;
    let client = Client::new(server.addr).await;

    // pxelinux's search order: per-MAC, hex IP prefixes, then default. Misses are ERROR 1.
    for name in ["pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux.cfg/7F000001"] {
        client.rrq(name, &[("tsize", "0".into())]).await;
        let (buf, _) = client.recv().await.unwrap();
        assert!(
            matches!(packet::decode(&buf).unwrap(), Packet::Error { code: 1, .. }),
            "{name}"
        );
    }
    client.rrq("pxelinux.cfg/default", &[]).await;
    let (buf, tid) = client.recv().await.unwrap();
    let got = client.receive_file(tid, 512, 1, Some(buf)).await.unwrap();
    assert_eq!(got, b"DEFAULT local\n");

    files.set_generated(
        "pxelinux.cfg/01-52-54-00-12-34-56",
        &b"DEFAULT install\n"[..],
    );
    let client = Client::new(server.addr).await;
    client.rrq("/pxelinux.cfg/01-52-54-00-12-34-56", &[]).await;
    let (buf, tid) = client.recv().await.unwrap();
    let got = client.receive_file(tid, 512, 1, Some(buf)).await.unwrap();
    assert_eq!(got, b"DEFAULT install\n");
    server.stop().await;
}

/// A server of one file `f` that retransmits every 100 ms and gives up after 2 retries.
async fn impatient_server(contents: &[u8]) -> (tempfile::TempDir, Server) {
    let root = root_with(&[("f", contents)]);
    let settings = TftpSettings {
        timeout: Duration::from_millis(100),
        max_retries: 2,
        ..TftpSettings::default()
    };
    let server = Server::start_with(TftpFiles::new(vec![root.path().to_owned()]), settings).await;
    (root, server)
}

#[tokio::test]
async fn silent_client_is_retransmitted_to_then_abandoned() {
    let (_root, server) = impatient_server(&pattern(2000, 9)).await;
    let client = Client::new(server.addr).await;
    client.rrq("f", &[]).await;
    // Block 1, then two retransmits of block 1, then the server gives up with an ERROR.
    for _ in 0..3 {
        let (buf, _) = client.recv().await.unwrap();
        assert!(matches!(
            packet::decode(&buf).unwrap(),
            Packet::Data { block: 1, .. }
        ));
    }
    let (buf, _) = client.recv().await.unwrap();
    assert!(matches!(
        packet::decode(&buf).unwrap(),
        Packet::Error { code: 0, .. }
    ));
    server.stop().await;
}

#[tokio::test]
async fn client_error_ends_the_transfer_at_once() {
    let root = root_with(&[("f", &pattern(100_000, 10))]);
    // A live transfer would retransmit its OACK every 50 ms.
    let settings = TftpSettings {
        timeout: Duration::from_millis(50),
        max_retries: 50,
        ..TftpSettings::default()
    };
    let server = Server::start_with(TftpFiles::new(vec![root.path().to_owned()]), settings).await;
    let client = Client::new(server.addr).await;
    client.rrq("f", &[("tsize", "0".into())]).await;
    let (buf, tid) = client.recv().await.unwrap();
    assert!(matches!(packet::decode(&buf).unwrap(), Packet::Oack(_)));
    client
        .socket
        .send_to(&packet::encode_error(8, "tsize probe"), tid)
        .await
        .unwrap();
    // Drain a retransmit that may have crossed the ERROR, then expect silence for 20 periods.
    let mut late = 0;
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((_, from))) =
        tokio::time::timeout(Duration::from_secs(1), client.socket.recv_from(&mut buf)).await
    {
        assert_eq!(from, tid);
        late += 1;
        assert!(
            late <= 1,
            "the transfer kept sending after the client's ERROR"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn stopping_the_server_ends_live_transfers() {
    let root = root_with(&[("f", &pattern(100_000, 11))]);
    let server = Server::start(TftpFiles::new(vec![root.path().to_owned()])).await;
    let client = Client::new(server.addr).await;
    client.rrq("f", &[]).await;
    let (buf, _) = client.recv().await.unwrap();
    assert!(matches!(
        packet::decode(&buf).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    // Never acknowledged: the transfer is live while the server stops (bounded in stop()).
    server.stop().await;
}

/// Options of an OACK, or `None` for any other packet.
fn oack_options(buf: &[u8]) -> Option<Vec<(String, String)>> {
    match packet::decode(buf).ok()? {
        Packet::Oack(pairs) => Some(pairs),
        _ => None,
    }
}

#[tokio::test]
async fn a_huge_timeout_option_is_refused_and_a_silent_client_loses_its_slot() {
    let (_root, server) = impatient_server(&pattern(2000, 11)).await;
    let client = Client::new(server.addr).await;
    client
        .rrq("f", &[("timeout", "255".into()), ("tsize", "0".into())])
        .await;
    let (buf, _) = client.recv().await.unwrap();
    let oack = oack_options(&buf).expect("an OACK");
    assert_eq!(oack_value(&oack, "tsize").as_deref(), Some("2000"));
    assert_eq!(
        oack_value(&oack, "timeout"),
        None,
        "timeout=255 acknowledged"
    );
    // the OACK is resent at the server's own 100 ms pace, then the transfer ends
    loop {
        let (buf, _) = client.recv().await.unwrap();
        match packet::decode(&buf).unwrap() {
            Packet::Oack(_) => continue,
            Packet::Error { code: 0, .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    // a timeout within the cap is acknowledged as asked (RFC 2349)
    let client = Client::new(server.addr).await;
    client.rrq("f", &[("timeout", "3".into())]).await;
    let (buf, _) = client.recv().await.unwrap();
    let oack = oack_options(&buf).expect("an OACK");
    assert_eq!(oack_value(&oack, "timeout").as_deref(), Some("3"));
    server.stop().await;
}

#[tokio::test]
async fn transfers_per_source_address_are_capped() {
    let root = root_with(&[("f", &pattern(100_000, 12))]);
    let settings = TftpSettings::default();
    let cap = settings.max_per_source;
    let server = Server::start_with(TftpFiles::new(vec![root.path().to_owned()]), settings).await;
    // 20 ports of one address (127.0.0.1), none acknowledging
    let mut clients = Vec::new();
    for _ in 0..20 {
        let c = Client::new(server.addr).await;
        c.rrq("f", &[("tsize", "0".into())]).await;
        clients.push(c);
    }
    let (mut served, mut refused) = (0, 0);
    for c in &clients {
        let (buf, _) = c.recv().await.unwrap();
        match packet::decode(&buf).unwrap() {
            Packet::Oack(_) => served += 1,
            Packet::Error { code: 0, .. } => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    println!("one address, 20 requests: {served} served, {refused} refused");
    assert_eq!((served, refused), (cap, 20 - cap));
    server.stop().await;
}

/// 512 read requests with `timeout=255` from 512 addresses that never answer (sources on
/// `lo` of a namespace, sockets that never read), then tftp-hpa's client in the same
/// namespace downloads `lpxelinux.0` in full.
#[test]
fn spoofed_sources_with_timeout_255_do_not_lock_out_a_real_client() -> Result<()> {
    if !system_test(&[Need::Netns, Need::Tool("tftp")]) {
        return Ok(());
    }
    let ns = Netns::create("tftp")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    // every address of 10.55.0.0/16 is local (bindable) inside the namespace
    ns.ip(&["route", "add", "local", "10.55.0.0/16", "dev", "lo"])?;
    let payload = pattern(300_000, 13);
    let root = root_with(&[("lpxelinux.0", &payload)]);
    let settings = TftpSettings::default();
    let sends = u64::from(settings.max_retries) + 1;
    let hold_before = 255 * sends;
    // the option is refused: the server's own timeout applies
    let hold_now = settings.timeout.as_secs() * sends;
    let hold_max = settings.timeout.max(settings.max_client_timeout).as_secs() * sends;
    let slots = settings.max_transfers;

    // the server runs inside the namespace (its transfer sockets are made there too)
    let server_ip = Ipv4Addr::new(10, 55, 255, 254);
    let cancel = CancellationToken::new();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let files = TftpFiles::new(vec![root.path().to_owned()]);
    let stop = cancel.clone();
    let server = ns.spawn_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let socket = UdpSocket::bind((server_ip, 0)).await?;
            addr_tx.send(socket.local_addr()?)?;
            tftp::serve_with(socket, files, settings, stop).await?;
            Ok(())
        })
    });
    let server_addr = addr_rx.recv_timeout(WAIT)?;

    let rrq = packet::encode_request(
        OP_RRQ,
        "lpxelinux.0",
        "octet",
        &[("timeout", "255".into()), ("tsize", "0".into())],
    );
    let attackers = ns.run_inside(|| {
        (0..slots)
            .map(|i| {
                let a = Ipv4Addr::new(10, 55, (i / 250) as u8 + 1, (i % 250) as u8 + 1);
                let s = std::net::UdpSocket::bind((a, 6900))?;
                s.send_to(&rrq, server_addr)?;
                if i % 64 == 63 {
                    // stay within the server socket's receive buffer
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    // each source got an OACK: its transfer holds a slot (the socket never answers)
    let mut held = 0;
    for s in &attackers {
        s.set_read_timeout(Some(WAIT))?;
        let mut buf = [0u8; 1024];
        let Ok(len) = s.recv(&mut buf) else {
            continue;
        };
        let Some(oack) = oack_options(&buf[..len]) else {
            continue;
        };
        assert_eq!(
            oack_value(&oack, "timeout"),
            None,
            "timeout=255 acknowledged"
        );
        held += 1;
    }
    println!(
        "{held} of {slots} slots held by sources that never answer; each would have been \
         held {hold_before} s before (timeout 255 s x {sends} sends), {hold_now} s now \
         (any client: at most {hold_max} s)"
    );

    let out = tempfile::tempdir()?;
    let local = out.path().join("lpxelinux.0");
    let output = ns
        .command("tftp")
        .args([
            &server_addr.ip().to_string(),
            &server_addr.port().to_string(),
            "-m",
            "binary",
            "-c",
            "get",
            "lpxelinux.0",
        ])
        .arg(&local)
        .current_dir(out.path())
        .output()?;
    let got = std::fs::read(&local).unwrap_or_default();
    assert!(
        got == payload,
        "tftp got {} of {} bytes: {output:?}",
        got.len(),
        payload.len()
    );
    println!(
        "tftp-hpa then downloaded lpxelinux.0 in full ({} bytes)",
        got.len()
    );

    cancel.cancel();
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    drop(attackers);
    Ok(())
}
