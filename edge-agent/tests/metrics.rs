//! `GET /metrics` against the real servers: DHCP, TFTP and HTTP on 127.0.0.1 (port 0)
//! sharing one `Metrics`, as `agent::bind` wires them, with a real nats-server for the
//! connection gauge; real clients (UDP sockets with dhcproto-built DISCOVERs, a
//! hand-written TFTP client, reqwest). Each counter must move by exactly what the
//! clients did.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Encodable, Encoder};
use substruct_edge::dhcp::{self, DhcpConfig, DhcpSettings, LeaseStore, Subnet};
use substruct_edge::http::{self, HttpSettings, HttpState};
use substruct_edge::intents::IntentTable;
use substruct_edge::metrics::{Metrics, CONTENT_TYPE};
use substruct_edge::tftp::packet::{self, Packet, OP_RRQ};
use substruct_edge::tftp::{self, TftpFiles, TftpSettings};
use substruct_testkit::{poll, NatsServer};
use substruct_wire::intent::{BootIntent, BootIntentRecord};
use substruct_wire::{Mac, SiteId};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Upper bound of every wait.
const WAIT: Duration = Duration::from_secs(15);
/// DISCOVERs the test sends.
const DISCOVERS: u32 = 7;
/// Garbage datagrams the test sends to the DHCP port.
const GARBAGE: u32 = 3;
/// The TFTP file's size: several 512-byte blocks and a short last one.
const TFTP_FILE_LEN: usize = 5 * 512 + 123;
/// The image's size (served by the sendfile front).
const IMAGE_LEN: usize = 300_000;

/// One scrape: every series line (`name{labels}` → value).
#[derive(Debug)]
struct Scrape {
    series: HashMap<String, f64>,
}

impl Scrape {
    fn parse(text: &str) -> Result<Self> {
        let mut series = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (key, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("series line without a value: {line:?}"))?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("bad value in {line:?}"))?;
            if series.insert(key.to_owned(), value).is_some() {
                bail!("series {key} twice");
            }
        }
        Ok(Self { series })
    }

    /// The sum of the series of `name` whose labels include every pair of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(key, _)| {
                let (n, rest) = key.split_once('{').unwrap_or((key.as_str(), ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// The one series `key` (exactly as written), which must exist.
    fn get(&self, key: &str) -> f64 {
        match self.series.get(key) {
            Some(v) => *v,
            None => panic!("no series {key}"),
        }
    }
}

/// The three servers on 127.0.0.1 and what their clients need.
struct Edge {
    http: String,
    dhcp: SocketAddr,
    tftp: SocketAddr,
    cancel: CancellationToken,
    _dirs: Vec<tempfile::TempDir>,
    _nats: NatsServer,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

async fn start() -> Result<Edge> {
    let nats = NatsServer::start()?;
    let client = substruct_runtime::nats_options("edge-metrics-test")
        .connect(nats.url())
        .await?;
    let metrics = Arc::new(Metrics::new());
    metrics.watch_nats(client);
    let intents = IntentTable::new();
    intents.set(
        Mac::parse("52:54:00:12:34:56")?,
        BootIntentRecord {
            machine_id: None,
            intent: BootIntent::Discover,
        },
    );
    metrics.watch_intents(intents.clone());
    let cancel = CancellationToken::new();

    // DHCP: a server-mode site on 10.77.0.0/24, its socket on 127.0.0.1 (replies go to
    // the broadcast address: sent or not, the counters below only count requests).
    let state = tempfile::tempdir()?;
    let settings = DhcpSettings::new(DhcpConfig::new(
        Ipv4Addr::new(10, 77, 0, 1),
        "http://10.77.0.1",
        Subnet {
            network: "10.77.0.0/24".parse()?,
            pools: vec![("10.77.0.100".parse()?, "10.77.0.199".parse()?)],
            router: None,
            dns: vec![],
            lease_time: Duration::from_secs(3600),
            relays: vec![],
            uefi_loader: None,
        },
    ))?;
    let leases = LeaseStore::open(state.path().join("leases.redb"))?;
    let dhcp_socket = UdpSocket::from_std(dhcp::bind_socket("", Ipv4Addr::LOCALHOST, 0)?)?;
    let dhcp_addr = dhcp_socket.local_addr()?;
    tokio::spawn(dhcp::serve_with_metrics(
        Arc::new(settings),
        vec![dhcp_socket],
        intents.clone(),
        leases,
        None,
        metrics.clone(),
        cancel.clone(),
    ));

    // TFTP: one file on disk.
    let tftp_root = tempfile::tempdir()?;
    std::fs::write(
        tftp_root.path().join("undionly.kpxe"),
        pattern(TFTP_FILE_LEN),
    )?;
    let tftp_socket = UdpSocket::bind("127.0.0.1:0").await?;
    let tftp_addr = tftp_socket.local_addr()?;
    tokio::spawn(tftp::serve_with_metrics(
        tftp_socket,
        TftpFiles::new(vec![tftp_root.path().to_owned()]),
        TftpSettings::default(),
        metrics.clone(),
        cancel.clone(),
    ));

    // HTTP: boot scripts and one image.
    let images = tempfile::tempdir()?;
    std::fs::write(images.path().join("disk.img"), pattern(IMAGE_LEN))?;
    let ipxe = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = listener.local_addr()?;
    let http_state = HttpState::new(
        HttpSettings {
            base: "http://10.77.0.1".into(),
            site: SiteId::new("s1")?,
            nats_url: "nats://10.77.0.1:4222".into(),
            base6: None,
            nats_url6: None,
            ipv6_only: false,
            extra_args: None,
            images_dir: images.path().to_owned(),
            ipxe_dir: ipxe.path().to_owned(),
            limits: Default::default(),
        },
        intents,
    )?
    .with_metrics(metrics);
    tokio::spawn(http::serve(listener, http_state, cancel.clone()));

    Ok(Edge {
        http: format!("http://{http_addr}"),
        dhcp: dhcp_addr,
        tftp: tftp_addr,
        cancel,
        _dirs: vec![state, tftp_root, images, ipxe],
        _nats: nats,
    })
}

/// `GET /metrics`: checks the content type and the closing `# EOF`, and parses it.
async fn scrape(http: &reqwest::Client, edge: &Edge) -> Result<Scrape> {
    let response = http.get(format!("{}/metrics", edge.http)).send().await?;
    if response.status() != reqwest::StatusCode::OK {
        bail!("/metrics answered {}", response.status());
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .context("no content type")?
        .to_str()?
        .to_owned();
    assert_eq!(content_type, CONTENT_TYPE);
    let text = response.text().await?;
    assert!(
        text.ends_with("# EOF\n"),
        "exposition does not end with # EOF"
    );
    Scrape::parse(&text)
}

/// Scrapes until `done` holds (bounded), and returns that scrape.
async fn scrape_until(
    http: &reqwest::Client,
    edge: &Edge,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> Result<Scrape> {
    poll(what, WAIT, Duration::from_millis(50), || async {
        match scrape(http, edge).await {
            Ok(s) if done(&s) => Some(s),
            _ => None,
        }
    })
    .await
}

fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    msg.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

/// Reads `name` over TFTP (octet, no options) from `server`; returns its bytes.
async fn tftp_read(server: SocketAddr, name: &str) -> Result<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket
        .send_to(&packet::encode_request(OP_RRQ, name, "octet", &[]), server)
        .await?;
    let mut file = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut expected = 1u16;
    loop {
        let (n, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .context("no TFTP data")??;
        match packet::decode(&buf[..n])? {
            Packet::Data { block, data } => {
                if block == expected {
                    file.extend_from_slice(data);
                    expected = expected.wrapping_add(1);
                }
                socket.send_to(&packet::encode_ack(block), from).await?;
                if block.wrapping_add(1) == expected && data.len() < 512 {
                    return Ok(file);
                }
            }
            other => bail!("unexpected TFTP packet {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_clients_did() -> Result<()> {
    let edge = start().await?;
    let http = reqwest::Client::new();
    // Scrape-time values: the NATS connection comes up (the client reports it a moment
    // after connecting), one intent is known, the build.
    let before = scrape_until(&http, &edge, "NATS connected", |s| {
        s.get("substruct_edge_nats_connected") == 1.0
    })
    .await?;
    assert_eq!(before.get("substruct_edge_intents"), 1.0);
    assert_eq!(
        before.sum(
            "substruct_edge_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        before.get(r#"substruct_edge_dhcp_pool_addresses{subnet="10.77.0.0/24"}"#),
        100.0
    );

    // DHCP: N DISCOVERs from N MACs, and garbage.
    let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
    for i in 0..DISCOVERS {
        let mac = [0x52, 0x54, 0x00, 0x99, 0x00, u8::try_from(i)? + 1];
        client.send_to(&discover(mac, 0x1000 + i), edge.dhcp)?;
    }
    for i in 0..GARBAGE {
        client.send_to(&[0xde, 0xad, 0xbe, 0xef, u8::try_from(i)?], edge.dhcp)?;
    }
    let discovers = |s: &Scrape| {
        s.sum(
            "substruct_edge_dhcp_packets_received_total",
            &[("message_type", "discover")],
        )
    };
    let malformed = |s: &Scrape| {
        s.sum(
            "substruct_edge_dhcp_packets_received_total",
            &[("message_type", "malformed")],
        )
    };
    let n = f64::from(DISCOVERS);
    let garbage = f64::from(GARBAGE);
    let after = scrape_until(&http, &edge, "the DHCP packets counted", |s| {
        discovers(s) - discovers(&before) >= n && malformed(s) - malformed(&before) >= garbage
    })
    .await?;
    assert_eq!(discovers(&after) - discovers(&before), n);
    let answered = |s: &Scrape| {
        s.get(
            r#"substruct_edge_dhcp_packets_received_total{message_type="discover",result="answered"}"#,
        )
    };
    assert_eq!(answered(&after) - answered(&before), n);
    assert_eq!(malformed(&after) - malformed(&before), garbage);
    assert_eq!(
        after.get(
            r#"substruct_edge_dhcp_packets_received_total{message_type="malformed",result="refused"}"#
        ) - before.get(
            r#"substruct_edge_dhcp_packets_received_total{message_type="malformed",result="refused"}"#
        ),
        garbage
    );
    // Every OFFER either left or failed to (the broadcast may not be routable here).
    let offers_out = |s: &Scrape| {
        s.get(r#"substruct_edge_dhcp_replies_sent_total{message_type="offer"}"#)
            + s.get(r#"substruct_edge_dhcp_errors_total{kind="send"}"#)
    };
    let after = scrape_until(&http, &edge, "the OFFERs sent", |s| {
        offers_out(s) - offers_out(&before) >= n
    })
    .await?;
    assert_eq!(offers_out(&after) - offers_out(&before), n);

    // HTTP: one boot script.
    let boot_scripts = |s: &Scrape| {
        s.get(r#"substruct_edge_http_requests_total{route="boot_script",status="2xx"}"#)
    };
    let before = scrape(&http, &edge).await?;
    let script = http
        .get(format!(
            "{}/boot.ipxe?mac=52:54:00:12:34:56&buildarch=x86_64&platform=pcbios",
            edge.http
        ))
        .send()
        .await?;
    assert_eq!(script.status(), reqwest::StatusCode::OK);
    assert!(script.text().await?.starts_with("#!ipxe"));
    let after = scrape(&http, &edge).await?;
    assert_eq!(boot_scripts(&after) - boot_scripts(&before), 1.0);
    // The scrapes count themselves.
    let scrapes =
        |s: &Scrape| s.get(r#"substruct_edge_http_requests_total{route="metrics",status="2xx"}"#);
    assert!(scrapes(&after) >= 1.0);

    // HTTP: one image through the sendfile front.
    let image_bytes = |s: &Scrape| s.get("substruct_edge_http_image_bytes_sent_total");
    let images =
        |s: &Scrape| s.get(r#"substruct_edge_http_requests_total{route="image",status="2xx"}"#);
    let body = http
        .get(format!("{}/images/disk.img", edge.http))
        .send()
        .await?
        .bytes()
        .await?;
    assert_eq!(body.len(), IMAGE_LEN);
    let after_image = scrape_until(&http, &edge, "the image bytes counted", |s| {
        image_bytes(s) - image_bytes(&after) >= IMAGE_LEN as f64
    })
    .await?;
    assert_eq!(
        image_bytes(&after_image) - image_bytes(&after),
        IMAGE_LEN as f64
    );
    assert_eq!(images(&after_image) - images(&after), 1.0);

    // HTTP: the same image through axum (a query string: the front hands it over), its
    // body counted as it streams.
    let response = http
        .get(format!("{}/images/disk.img?via=axum", edge.http))
        .send()
        .await?;
    assert_eq!(response.content_length(), Some(IMAGE_LEN as u64));
    assert_eq!(response.bytes().await?.len(), IMAGE_LEN);
    let after_axum = scrape_until(&http, &edge, "the image bytes counted", |s| {
        image_bytes(s) - image_bytes(&after_image) >= IMAGE_LEN as f64
    })
    .await?;
    assert_eq!(
        image_bytes(&after_axum) - image_bytes(&after_image),
        IMAGE_LEN as f64
    );
    assert_eq!(images(&after_axum) - images(&after_image), 1.0);

    // TFTP: one whole file.
    let completed =
        |s: &Scrape| s.get(r#"substruct_edge_tftp_transfers_finished_total{result="completed"}"#);
    let started = |s: &Scrape| s.get("substruct_edge_tftp_transfers_started_total");
    let tftp_bytes = |s: &Scrape| s.get("substruct_edge_tftp_bytes_sent_total");
    let before = scrape(&http, &edge).await?;
    let file = tftp_read(edge.tftp, "undionly.kpxe").await?;
    assert_eq!(file, pattern(TFTP_FILE_LEN));
    let after = scrape_until(&http, &edge, "the TFTP transfer counted", |s| {
        completed(s) - completed(&before) >= 1.0
    })
    .await?;
    assert_eq!(completed(&after) - completed(&before), 1.0);
    assert_eq!(started(&after) - started(&before), 1.0);
    assert_eq!(
        tftp_bytes(&after) - tftp_bytes(&before),
        TFTP_FILE_LEN as f64
    );
    assert_eq!(after.get("substruct_edge_tftp_transfers_active"), 0.0);

    // No label carries a client's MAC, address or path.
    let text = http
        .get(format!("{}/metrics", edge.http))
        .send()
        .await?
        .text()
        .await?;
    for needle in [
        "52:54:00",
        "127.0.0.1",
        "disk.img",
        "axum",
        "undionly",
        "boot.ipxe",
    ] {
        assert!(!text.contains(needle), "{needle} in the exposition");
    }
    Ok(())
}
