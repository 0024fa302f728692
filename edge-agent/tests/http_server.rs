//! The edge's HTTP server on 127.0.0.1:0 against a real HTTP client (reqwest) and raw
//! sockets (for paths a client library would normalise away).

use std::path::Path;

use anyhow::Result;
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

async fn start() -> Result<Server> {
    let root = tempfile::tempdir()?;
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
            extra_args: None,
            images_dir: images.clone(),
            ipxe_dir: ipxe.path().to_owned(),
        },
        intents.clone(),
    )?;
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
        "#!ipxe\necho substruct s1: 52:54:00:77:00:0b local, booting the local disk\nexit\n"
    );
    srv.intents.set(
        mac,
        BootIntentRecord {
            machine_id: None,
            intent: BootIntent::Install {
                kernel: "debian/linux".into(),
                initrd: "debian/initrd.gz".into(),
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
