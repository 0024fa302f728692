//! The edge's HTTP server on 127.0.0.1:0 against a real HTTP client (reqwest) and raw
//! sockets (for paths a client library would normalise away). The server leases
//! 127.0.0.1 to the test MACs; an "attacker" asks from 127.0.0.2..9 (loopback sources
//! bound before connecting).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use substruct_edge::dhcp::{LeaseChange, LeaseStore};
use substruct_edge::http::binding::Binding;
use substruct_edge::http::limits::HttpLimits;
use substruct_edge::http::{self, HttpSettings, HttpState};
use substruct_edge::intents::IntentTable;
use substruct_wire::intent::{BootIntent, BootIntentRecord, LocalBootWay};
use substruct_wire::{Mac, SiteId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    intents: IntentTable,
    cancel: CancellationToken,
    _dirs: Vec<tempfile::TempDir>,
    images: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// 1 MiB of a known pattern.
fn pattern() -> Vec<u8> {
    (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect()
}

/// The MACs the test server leased 127.0.0.1 to.
const LEASED: [&str; 2] = ["52:54:00:77:00:0a", "52:54:00:77:00:0b"];

async fn start() -> Result<Server> {
    start_with(HttpLimits::default()).await
}

async fn start_with(limits: HttpLimits) -> Result<Server> {
    start_bound(limits, false).await
}

/// `proxy`: bind by a neighbour table (a file in `/proc/net/arp`'s format showing the
/// leased MACs at 127.0.0.1) instead of the lease store.
async fn start_bound(limits: HttpLimits, proxy: bool) -> Result<Server> {
    let root = tempfile::tempdir()?;
    let leases = LeaseStore::open(root.path().join("leases.redb"))?;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let grants: Vec<LeaseChange> = LEASED
        .iter()
        .map(|m| {
            Ok(LeaseChange::Grant {
                mac: Mac::parse(m)?,
                ip: "127.0.0.1".parse()?,
                expires,
            })
        })
        .collect::<Result<_>>()?;
    leases.apply(&grants)?;
    let images = root.path().join("images");
    std::fs::create_dir_all(images.join("prospector"))?;
    std::fs::write(images.join("disk.img"), pattern())?;
    std::fs::write(images.join("prospector/vmlinuz"), b"kernel")?;
    // A secret next to (outside) the images root, and a symlink inside pointing at it.
    std::fs::write(root.path().join("secret.txt"), b"top secret")?;
    std::os::unix::fs::symlink(root.path().join("secret.txt"), images.join("escape"))?;
    std::os::unix::fs::symlink("/etc", images.join("etc"))?;
    // A symlink that stays inside is fine.
    std::os::unix::fs::symlink("disk.img", images.join("alias.img"))?;

    let ipxe = tempfile::tempdir()?;
    std::fs::write(ipxe.path().join("ipxe.lkrn"), b"lkrn-bytes")?;
    std::fs::write(ipxe.path().join("ipxe.efi"), b"efi-bytes")?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    let intents = IntentTable::new();
    let state = HttpState::new(
        HttpSettings {
            base: "http://10.77.0.1".into(),
            site: SiteId::new("s1")?,
            nats_url: "nats://10.77.0.1:4222".into(),
            base6: None,
            nats_url6: None,
            ipv6_only: false,
            extra_args: None,
            images_dir: images.clone(),
            ipxe_dir: ipxe.path().to_owned(),
            limits,
        },
        intents.clone(),
    )?
    .with_binding(if proxy {
        let arp = root.path().join("arp");
        let mut table =
            "IP address       HW type     Flags       HW address            Mask     Device\n"
                .to_owned();
        for mac in LEASED {
            table.push_str(&format!("127.0.0.1 0x1 0x2 {mac} * lo\n"));
        }
        std::fs::write(&arp, table)?;
        Binding::Neighbours(arp)
    } else {
        Binding::Leases(leases)
    });
    let cancel = CancellationToken::new();
    tokio::spawn(http::serve(listener, state, cancel.clone()));
    Ok(Server {
        base,
        addr,
        intents,
        cancel,
        _dirs: vec![root, ipxe],
        images,
    })
}

fn boot_url(base: &str, mac: &str, platform: &str) -> String {
    format!("{base}/boot.ipxe?mac={mac}&uuid=4c4c4544-0042&buildarch=x86_64&platform={platform}")
}

async fn get_text(url: &str) -> Result<(u16, String)> {
    let r = reqwest::get(url).await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// Sends a raw request line and returns the status code.
async fn raw_status(addr: std::net::SocketAddr, target: &str) -> Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("top secret"), "leaked: {text}");
    assert!(!text.contains("root:"), "leaked: {text}");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(code)
}

#[tokio::test]
async fn unknown_machine_gets_the_prospector_with_a_fresh_token() -> Result<()> {
    let srv = start().await?;
    let (code, a) = get_text(&boot_url(&srv.base, "52:54:00:77:00:0a", "pcbios")).await?;
    assert_eq!(code, 200);
    let (_, b) = get_text(&boot_url(&srv.base, "52:54:00:77:00:0a", "pcbios")).await?;
    let lines: Vec<&str> = a.lines().collect();
    assert_eq!(lines[0], "#!ipxe");
    assert_eq!(
        lines[1],
        "echo substruct s1: 52:54:00:77:00:0a unknown machine, booting the prospector"
    );
    let prefix = "kernel http://10.77.0.1/images/prospector/vmlinuz initrd=initrd.img console=tty0 console=ttyS0 substruct.site=s1 substruct.nats=nats://10.77.0.1:4222 substruct.edge=http://10.77.0.1 substruct.token=";
    assert!(lines[2].starts_with(prefix), "{}", lines[2]);
    let token = lines[2][prefix.len()..]
        .strip_suffix(" BOOTIF=01-52-54-00-77-00-0a quiet panic=-1")
        .unwrap();
    assert_eq!(token.len(), 32);
    assert!(token
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(
        lines[3],
        "initrd http://10.77.0.1/images/prospector/initrd.img"
    );
    assert_eq!(lines[4], "boot");
    assert_eq!(lines.len(), 5);
    assert_ne!(a, b, "each render carries a new token");
    Ok(())
}

#[tokio::test]
async fn known_machines_get_their_intent() -> Result<()> {
    let srv = start().await?;
    let mac = Mac::parse("52:54:00:77:00:0b")?;
    srv.intents.set(
        mac,
        BootIntentRecord {
            machine_id: None,
            intent: BootIntent::Local {
                way: LocalBootWay::IpxeExit,
            },
        },
    );
    let (_, bios) = get_text(&boot_url(&srv.base, "52-54-00-77-00-0B", "pcbios")).await?;
    assert_eq!(
        bios,
        "#!ipxe\necho substruct s1: 52:54:00:77:00:0b local, booting the local disk\nsanboot --no-describe --drive 0x80 || exit\n"
    );
    let (_, efi) = get_text(&boot_url(&srv.base, "52:54:00:77:00:0b", "efi")).await?;
    assert_eq!(
        efi,
        "#!ipxe\necho substruct s1: 52:54:00:77:00:0b local, booting the local disk\nexit 1\n"
    );
    srv.intents.set(
        mac,
        BootIntentRecord {
            machine_id: None,
            intent: BootIntent::Install {
                kernel: "debian/linux".parse().unwrap(),
                initrd: "debian/initrd.gz".parse().unwrap(),
                cmdline: "auto=true".into(),
            },
        },
    );
    let (_, install) = get_text(&boot_url(&srv.base, "52:54:00:77:00:0b", "efi")).await?;
    assert_eq!(
        install,
        "#!ipxe\necho substruct s1: 52:54:00:77:00:0b install\nkernel http://10.77.0.1/images/debian/linux initrd=initrd.gz auto=true\ninitrd http://10.77.0.1/images/debian/initrd.gz\nboot\n"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_or_bad_mac_gets_a_script_not_an_error() -> Result<()> {
    let srv = start().await?;
    let retry = "#!ipxe\necho substruct: the boot request carried no valid MAC address; retrying\nsleep 5\nchain --replace http://10.77.0.1/boot.ipxe?mac=${net0/mac}&uuid=${uuid}&buildarch=${buildarch}&platform=${platform}\n";
    for mac in ["", "nonsense", "ff:ff:ff:ff:ff:ff", "%24%7Bnet0%2Fmac%7D"] {
        let (code, text) = get_text(&boot_url(&srv.base, mac, "pcbios")).await?;
        assert_eq!(code, 200, "{mac}");
        assert_eq!(text, retry, "{mac}");
    }
    let (code, text) = get_text(&format!("{}/boot.ipxe", srv.base)).await?;
    assert_eq!(code, 200);
    assert_eq!(
        text,
        "#!ipxe\nchain --replace http://10.77.0.1/boot.ipxe?mac=${net0/mac}&uuid=${uuid}&buildarch=${buildarch}&platform=${platform}\n"
    );
    let (code, text) = get_text(&format!("{}/healthz", srv.base)).await?;
    assert_eq!((code, text.as_str()), (200, "ok s1\n"));
    Ok(())
}

#[tokio::test]
async fn images_support_range_head_and_length() -> Result<()> {
    let srv = start().await?;
    let data = pattern();
    let client = reqwest::Client::new();
    let url = format!("{}/images/disk.img", srv.base);

    let full = client.get(&url).send().await?;
    assert_eq!(full.status().as_u16(), 200);
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert_eq!(
        full.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(full.bytes().await?.as_ref(), &data[..]);

    for (range, start, end) in [
        ("bytes=1000-1999", 1000usize, 1999usize),
        ("bytes=1048000-", 1048000, data.len() - 1),
        ("bytes=-100", data.len() - 100, data.len() - 1),
        ("bytes=5-5", 5, 5),
    ] {
        let r = client.get(&url).header("range", range).send().await?;
        assert_eq!(r.status().as_u16(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/{}", data.len()).as_str()
        );
        assert_eq!(
            r.headers()["content-length"],
            (end - start + 1).to_string().as_str()
        );
        assert_eq!(r.bytes().await?.as_ref(), &data[start..=end], "{range}");
    }

    let r = client
        .get(&url)
        .header("range", format!("bytes={}-", data.len()))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", data.len()).as_str()
    );

    let head = client.head(&url).send().await?;
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(
        head.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert!(head.bytes().await?.is_empty());

    // A symlink that stays inside the root is served.
    let alias = client
        .get(format!("{}/images/alias.img", srv.base))
        .send()
        .await?;
    assert_eq!(alias.status().as_u16(), 200);
    assert_eq!(alias.bytes().await?.len(), data.len());

    let missing = client
        .get(format!("{}/images/nope", srv.base))
        .send()
        .await?;
    assert_eq!(missing.status().as_u16(), 404);
    let dir = client
        .get(format!("{}/images/prospector", srv.base))
        .send()
        .await?;
    assert_eq!(dir.status().as_u16(), 404);
    Ok(())
}

#[tokio::test]
async fn nothing_outside_the_images_root_is_served() -> Result<()> {
    let srv = start().await?;
    assert!(Path::new("/etc/passwd").exists());
    for target in [
        "/images/../../etc/passwd",
        "/images/../secret.txt",
        "/images/%2e%2e/secret.txt",
        "/images/%2E%2E/%2e%2e/etc/passwd",
        "/images/prospector/..%2f..%2fsecret.txt",
        "/images//etc/passwd",
        "/images/%2fetc%2fpasswd",
        "/images/escape",
        "/images/etc/passwd",
    ] {
        let code = raw_status(srv.addr, target).await?;
        assert!(code == 403 || code == 404, "{target}: {code}");
    }
    // And the lexical refusals are 403 specifically.
    assert_eq!(raw_status(srv.addr, "/images/../secret.txt").await?, 403);
    assert_eq!(
        raw_status(srv.addr, "/images/%2e%2e/secret.txt").await?,
        403
    );
    assert_eq!(raw_status(srv.addr, "/images/escape").await?, 403);
    assert!(
        srv.images.join("escape").exists(),
        "the symlink target exists"
    );
    Ok(())
}

#[tokio::test]
async fn loaders_are_served_from_the_ipxe_dir() -> Result<()> {
    let srv = start().await?;
    let r = reqwest::get(format!("{}/ipxe.lkrn", srv.base)).await?;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await?.as_ref(), b"lkrn-bytes");
    let r = reqwest::get(format!("{}/ipxe.efi", srv.base)).await?;
    assert_eq!(r.bytes().await?.as_ref(), b"efi-bytes");
    // Not present in this directory.
    let r = reqwest::get(format!("{}/snponly.efi", srv.base)).await?;
    assert_eq!(r.status().as_u16(), 404);
    let r = reqwest::get(format!("{}/pxelinux.0", srv.base)).await?;
    assert_eq!(r.status().as_u16(), 404);
    Ok(())
}

/// A TCP connection to `to` from `from` (a loopback address other than 127.0.0.1),
/// bound before connecting.
async fn connect_from(from: IpAddr, to: SocketAddr) -> Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    Ok(s.connect(to).await?)
}

/// `GET target` over a connection from `from`; the whole answer as text.
async fn raw_get_from(from: IpAddr, to: SocketAddr, target: &str) -> Result<String> {
    let mut s = connect_from(from, to).await?;
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn boot_scripts_carry_a_token_only_to_the_address_leased_to_the_mac() -> Result<()> {
    unbound_askers_get_no_token(start().await?).await
}

#[tokio::test]
async fn in_proxy_mode_the_neighbour_table_binds() -> Result<()> {
    unbound_askers_get_no_token(start_bound(HttpLimits::default(), true).await?).await
}

async fn unbound_askers_get_no_token(srv: Server) -> Result<()> {
    let attacker: IpAddr = "127.0.0.2".parse()?;
    let victim = LEASED[0];
    let target = format!("/boot.ipxe?mac={victim}&uuid=&buildarch=x86_64&platform=efi");
    // The leased address gets a token.
    let (_, own) = get_text(&format!("{}{target}", srv.base)).await?;
    assert!(own.contains(" substruct.token="), "{own}");
    // Another address gets the prospector, 200, but no token.
    let stolen = raw_get_from(attacker, srv.addr, &target).await?;
    assert!(stolen.starts_with("HTTP/1.1 200"), "{stolen}");
    assert!(stolen.contains("booting the prospector"), "{stolen}");
    assert!(!stolen.contains("substruct.token"), "{stolen}");
    // An install intent's command line names the install token: the attacker gets a
    // retry script instead.
    srv.intents.set(
        Mac::parse(victim)?,
        BootIntentRecord {
            machine_id: None,
            intent: BootIntent::Install {
                kernel: "debian/linux".parse()?,
                initrd: "debian/initrd.gz".parse()?,
                cmdline: "url={edge}/install/0123456789abcdef0123456789abcdef/preseed.cfg".into(),
            },
        },
    );
    let stolen = raw_get_from(attacker, srv.addr, &target).await?;
    assert!(stolen.starts_with("HTTP/1.1 200"), "{stolen}");
    assert!(stolen.contains("retrying"), "{stolen}");
    assert!(!stolen.contains("0123456789abcdef"), "{stolen}");
    let (_, own) = get_text(&format!("{}{target}", srv.base)).await?;
    assert!(
        own.contains("/install/0123456789abcdef0123456789abcdef/preseed.cfg"),
        "{own}"
    );
    Ok(())
}

/// Reads until the peer closes (0 bytes or an error); `false` if it is still open after
/// `rounds` reads of at most a second each.
async fn closed_by_server(s: &mut tokio::net::TcpStream, rounds: u32) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..rounds {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_closed_and_real_clients_still_boot() -> Result<()> {
    let idle_timeout = Duration::from_secs(2);
    let srv = start_with(HttpLimits {
        idle_timeout,
        header_timeout: idle_timeout,
        ..HttpLimits::default()
    })
    .await?;
    // 2,000 idle connections from 127.0.0.2..9 (250 each).
    let mut idle = Vec::new();
    for i in 0..2000u32 {
        let from: IpAddr = format!("127.0.0.{}", 2 + i % 8).parse()?;
        idle.push(connect_from(from, srv.addr).await?);
    }
    // A real client still gets its script (a bounded wait, not a timing assertion).
    let url = boot_url(&srv.base, LEASED[0], "efi");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let r = client.get(&url).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await?.contains(" substruct.token="));
    // Every idle connection is closed: at once over the per-source cap, the rest after the
    // idle timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_by_server(s, 20).await,
            "idle connection {i} still open"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() -> Result<()> {
    let srv = start_with(HttpLimits {
        header_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    })
    .await?;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await?;
    s.write_all(b"GET /boot.ipxe HTTP/1.1\r\n").await?;
    // One header byte at a time, never finishing; the server must close first.
    let mut closed = false;
    for _ in 0..100 {
        if s.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a never-ending request head kept its connection");
    Ok(())
}

/// Asks for a 64 MiB image with `request` and never reads; after the write timeout has
/// passed several times over, reads what is left: the server must have given up.
async fn stalled_download(srv: &Server, request: &str, write_timeout: Duration) -> Result<()> {
    let mut s = tokio::net::TcpStream::connect(srv.addr).await?;
    s.write_all(request.as_bytes()).await?;
    tokio::time::sleep(write_timeout * 4).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => anyhow::bail!("the server neither sent nor closed"),
        }
    }
    assert!(
        got < 64 << 20,
        "the whole file arrived ({got} bytes): no write timeout"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() -> Result<()> {
    let write_timeout = Duration::from_secs(1);
    let srv = start_with(HttpLimits {
        write_timeout,
        ..HttpLimits::default()
    })
    .await?;
    std::fs::write(srv.images.join("big.img"), vec![7u8; 64 << 20])?;
    // HTTP/1.1: the sendfile front; HTTP/1.0: axum.
    stalled_download(
        &srv,
        "GET /images/big.img HTTP/1.1\r\nHost: x\r\n\r\n",
        write_timeout,
    )
    .await?;
    stalled_download(&srv, "GET /images/big.img HTTP/1.0\r\n\r\n", write_timeout).await?;
    Ok(())
}
