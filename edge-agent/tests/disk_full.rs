//! The edge survives its disk: the lease store and the DHCP server on a small tmpfs
//! filled to the brim. A write that fails is refused with a clear error (and no ACK),
//! nothing panics, leases written before stay, and once the filler is removed writes
//! (and ACKs) succeed again without a restart; a store that cannot be reopened at all
//! stops the DHCP server with an error, so systemd restarts the edge.
//!
//! Needs root (to mount a tmpfs); skipped otherwise, or failed under
//! `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1` (see `substruct_testkit::gate`).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use substruct_edge::dhcp::store::Recovery;
use substruct_edge::dhcp::{
    self, DhcpConfig, DhcpError, DhcpSettings, LeaseChange, LeaseStore, LeaseStoreError, Subnet,
};
use substruct_edge::intents::IntentTable;
use substruct_testkit::gate::{gate, is_root, unmet, Need};
use substruct_testkit::{poll, poll_blocking};
use substruct_wire::Mac;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const NOW: u64 = 1_800_000_000;

/// Whether this host lets the test mount a tmpfs (the gate decides skip or fail).
fn can_mount() -> bool {
    let why_not = if is_root() {
        unmet(&[Need::Tool("mount"), Need::Tool("umount")])
    } else {
        Some("needs root to mount a tmpfs".to_owned())
    };
    gate(why_not)
}

/// A tmpfs of `size` mounted on a fresh temp dir; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .context("running mount")?;
        ensure!(status.success(), "mount -t tmpfs failed: {status}");
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file open: detach it, the kernel frees it later.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Fills the filesystem of `dir` to the last byte with one file, and returns its path.
fn fill(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path)?;
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let buf = vec![0xa5u8; chunk];
        loop {
            match file.write(&buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    // To the brim: not one more byte fits, in that file or a new one.
    let more = std::fs::write(dir.join("one-more-byte"), [0u8]);
    ensure!(
        more.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::StorageFull),
        "the filesystem is not full: {more:?}"
    );
    Ok(path)
}

fn mac(n: u32) -> Mac {
    let b = n.to_be_bytes();
    Mac([0x52, 0x54, b[0], b[1], b[2], b[3]])
}

fn grant(n: u32) -> LeaseChange {
    LeaseChange::Grant {
        mac: mac(n),
        ip: Ipv4Addr::from(0x0a4d_0000 + n),
        expires: NOW + u64::from(n),
    }
}

/// Reopen quickly in tests; never give up.
const QUICK: Recovery = Recovery {
    reopen_interval: Duration::from_millis(20),
    give_up_after: Duration::from_secs(3600),
    give_up_attempts: u32::MAX,
};

#[test]
fn lease_store_refuses_writes_on_a_full_disk_and_recovers_when_space_is_freed() -> Result<()> {
    if !can_mount() {
        return Ok(());
    }
    let fs = Tmpfs::mount("2m")?;
    let path = fs.path().join("leases.redb");
    let store = LeaseStore::open_with(&path, QUICK)?;
    // What must be on disk at the end: MAC number → its change.
    let mut written = BTreeMap::new();
    for n in 1..=50 {
        store.apply(&[grant(n)])?;
        written.insert(n, grant(n));
    }

    let filler = fill(fs.path())?;
    // redb may still have room inside its file for a few writes; the next write that
    // needs a new page fails.
    let mut n = 50;
    let first_error = loop {
        n += 1;
        ensure!(n < 100_000, "no write failed on a full disk");
        match store.apply(&[grant(n)]) {
            Ok(()) => {
                written.insert(n, grant(n));
            }
            Err(e) => break e,
        }
    };
    let refused = n;
    println!(
        "writes that still fit after the fill: {}; first error: {}",
        refused - 51,
        substruct_runtime::error_chain(&first_error)
    );
    assert!(
        first_error.is_disk_full(),
        "the error says the disk is full: {first_error:?}"
    );
    let text = substruct_runtime::error_chain(&first_error);
    assert!(
        text.contains(&path.display().to_string()),
        "names the file: {text}"
    );
    // A read (the HTTP server's, from an async handler) never reopens the database nor
    // waits for a reopen: it fails at once with `Closed`, naming the failure that
    // closed the store; the next write mends it.
    let reopens = store.reopens();
    let read = store.lease_of(&mac(1));
    let Err(closed @ LeaseStoreError::Closed { attempts: 0, .. }) = &read else {
        panic!("a read while the store is closed: {read:?}");
    };
    assert!(
        closed.is_disk_full(),
        "the cause is a full disk: {closed:?}"
    );
    let text = substruct_runtime::error_chain(closed);
    assert!(text.contains("No space left"), "names the cause: {text}");
    assert_eq!(store.reopens(), reopens, "a read reopened the store");
    // While the disk stays full, the store reopens between writes; a reopen repairs
    // the file, which frees the pages of the failed commit, so some later writes fit
    // again. Whatever succeeds must be on disk at the end; the rest fail with errors,
    // not panics, and never with one that asks for a restart.
    let (mut ok, mut failed) = (0, 0);
    for n in refused + 1..refused + 200 {
        std::thread::sleep(QUICK.reopen_interval);
        match store.apply(&[grant(n)]) {
            Ok(()) => {
                written.insert(n, grant(n));
                ok += 1;
            }
            Err(e) => {
                assert!(
                    !e.is_persistent(),
                    "a full disk is never a reason to exit: {e:?}"
                );
                failed += 1;
            }
        }
    }
    println!("200 more writes on the full disk: {ok} fitted, {failed} refused");
    assert!(failed > 0, "the disk stayed full, yet every write fitted");

    // Room again: the same store takes writes, without anyone reopening it but itself.
    std::fs::remove_file(&filler)?;
    let retry = poll_blocking(
        "the lease store to take writes again",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || store.apply(&[grant(refused)]).ok(),
    );
    retry?;
    written.insert(refused, grant(refused));
    assert!(store.reopens() >= 1, "recovered by reopening the database");
    for n in 1000..1010 {
        store.apply(&[grant(n)])?;
        written.insert(n, grant(n));
    }
    assert_eq!(
        store.lease_of(&mac(1))?.map(|l| l.ip),
        Some(Ipv4Addr::from(0x0a4d_0001))
    );

    // A fresh open (a restart) finds exactly what was written: the old leases, the new
    // ones, and none of the writes that failed. (A failed commit may in general become
    // visible — its final fsync can fail after its header reached the page cache — but
    // on tmpfs ENOSPC comes when a page is written, fsync is a no-op, so every failure
    // here stopped its commit before its header did: exact equality is what to expect.)
    drop(store);
    let store = LeaseStore::open(&path)?;
    let loaded: BTreeMap<Mac, (Ipv4Addr, u64)> = store
        .load()?
        .into_iter()
        .map(|l| (l.mac, (l.ip, l.expires)))
        .collect();
    let want: BTreeMap<Mac, (Ipv4Addr, u64)> = written
        .values()
        .map(|c| match *c {
            LeaseChange::Grant { mac, ip, expires } => (mac, (ip, expires)),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(loaded, want);
    Ok(())
}

// ---- the DHCP server over UDP on loopback ------------------------------------------

/// The relay addresses the tests' clients speak from (one per test, as each binds
/// port 67 on it): replies to a relayed request go to `giaddr:67`, which a test can
/// receive on loopback (a broadcast it could not).
const GIADDR_FREED: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 1);
const GIADDR_GIVE_UP: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// How long a client waits for a reply. A refusal is the absence of an ACK (the
/// server sends nothing), so this is also how long each refusal costs the test. An
/// ACK later than this would count as a refusal, which weakens the test, never fails it.
const WAIT: Duration = Duration::from_secs(1);

fn settings() -> Result<Arc<DhcpSettings>> {
    let subnet = |network: &str, lo: &str, hi: &str| -> Result<Subnet> {
        Ok(Subnet {
            network: network.parse()?,
            pools: vec![(lo.parse()?, hi.parse()?)],
            router: None,
            dns: vec![],
            lease_time: Duration::from_secs(3600),
            relays: vec![],
            uefi_loader: None,
        })
    };
    let mut config = DhcpConfig::new(
        SERVER,
        "http://10.77.0.1",
        subnet("10.77.0.0/24", "10.77.0.100", "10.77.0.199")?,
    );
    config
        .subnets
        .push(subnet("127.77.0.0/16", "127.77.1.1", "127.77.254.254")?);
    Ok(Arc::new(DhcpSettings::new(config)?))
}

/// A DHCP client behind a "relay" on loopback.
struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    giaddr: Ipv4Addr,
}

impl Client {
    fn packet(&self, m: Mac, xid: u32, t: MessageType, opts: Vec<DhcpOption>) -> Result<Vec<u8>> {
        let mut msg = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            self.giaddr,
            &m.0,
        );
        msg.opts_mut().insert(DhcpOption::MessageType(t));
        for o in opts {
            msg.opts_mut().insert(o);
        }
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf))?;
        Ok(buf)
    }

    /// Sends and waits up to [`WAIT`] for the reply with `xid`; `None`: no reply.
    async fn ask(&self, bytes: &[u8], xid: u32) -> Result<Option<Message>> {
        self.socket.send_to(bytes, self.server).await?;
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await;
            let Ok(got) = got else {
                return Ok(None);
            };
            let (n, _) = got?;
            let msg = Message::decode(&mut Decoder::new(&buf[..n]))?;
            if msg.xid() == xid {
                return Ok(Some(msg));
            }
        }
    }

    /// DISCOVER → OFFER: the offered address.
    async fn discover(&self, m: Mac, xid: u32) -> Result<Ipv4Addr> {
        let offer = self
            .ask(&self.packet(m, xid, MessageType::Discover, vec![])?, xid)
            .await?
            .context("no OFFER")?;
        ensure!(
            offer.opts().msg_type() == Some(MessageType::Offer),
            "not an OFFER: {offer:?}"
        );
        Ok(offer.yiaddr())
    }

    /// REQUEST `ip` → `Some(acked address)`, or `None` when no ACK came.
    async fn request(&self, m: Mac, xid: u32, ip: Ipv4Addr) -> Result<Option<Ipv4Addr>> {
        let req = self.packet(
            m,
            xid,
            MessageType::Request,
            vec![
                DhcpOption::RequestedIpAddress(ip),
                DhcpOption::ServerIdentifier(SERVER),
            ],
        )?;
        match self.ask(&req, xid).await? {
            None => Ok(None),
            Some(r) if r.opts().msg_type() == Some(MessageType::Ack) => Ok(Some(r.yiaddr())),
            Some(r) => bail!("not an ACK: {:?}", r.opts().msg_type()),
        }
    }
}

struct Server {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DhcpError>>,
}

async fn start(store: LeaseStore, giaddr: Ipv4Addr) -> Result<(Server, Client)> {
    let socket = UdpSocket::from_std(dhcp::bind_socket("", Ipv4Addr::LOCALHOST, 0)?)?;
    let server = socket.local_addr()?;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(dhcp::serve(
        settings()?,
        vec![socket],
        IntentTable::new(),
        store,
        cancel.clone(),
    ));
    let socket = UdpSocket::bind((giaddr, 67))
        .await
        .context("binding the relay's port 67 on loopback")?;
    let client = Client {
        socket,
        server,
        giaddr,
    };
    Ok((Server { cancel, task }, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhcp_withholds_acks_on_a_full_disk_and_gives_the_same_address_once_freed() -> Result<()> {
    if !can_mount() {
        return Ok(());
    }
    let fs = Tmpfs::mount("2m")?;
    let path = fs.path().join("leases.redb");
    let store = LeaseStore::open_with(&path, QUICK)?;
    let (server, client) = start(store.clone(), GIADDR_FREED).await?;
    let mut acked: BTreeMap<Mac, Ipv4Addr> = BTreeMap::new();
    let mut xid = 1;
    for n in 1..=10 {
        xid += 1;
        let ip = client.discover(mac(n), xid).await?;
        let got = client.request(mac(n), xid, ip).await?;
        ensure!(got == Some(ip), "no ACK for {} before the fill", mac(n));
        acked.insert(mac(n), ip);
    }

    let filler = fill(fs.path())?;
    // New clients until one gets no ACK (redb may fit a few more in its file first).
    let mut n = 10;
    let (refused, offered) = loop {
        n += 1;
        ensure!(n < 2000, "every REQUEST was ACKed on a full disk");
        xid += 1;
        let ip = client.discover(mac(n), xid).await?;
        match client.request(mac(n), xid, ip).await? {
            Some(got) => {
                ensure!(got == ip, "ACK for another address");
                acked.insert(mac(n), ip);
            }
            None => break (mac(n), ip),
        }
    };
    println!("ACKs that still fit after the fill: {}", n - 11);
    // More clients while the disk stays full: the store reopens after each failure and
    // some commits fit again (see the store test). Every ACK must be on disk at the end.
    let (mut ok, mut refusals) = (0, 1);
    for n in n + 1..n + 10 {
        xid += 1;
        let ip = client.discover(mac(n), xid).await?;
        match client.request(mac(n), xid, ip).await? {
            Some(got) => {
                ensure!(got == ip, "ACK for another address");
                acked.insert(mac(n), ip);
                ok += 1;
            }
            None => refusals += 1,
        }
    }
    println!("9 more clients on the full disk: {ok} ACKed, {refusals} refused in all");
    ensure!(
        !server.task.is_finished(),
        "the server stopped on a full disk"
    );

    // Room again: the same client's retry is ACKed with the same address.
    std::fs::remove_file(&filler)?;
    let again = poll(
        "an ACK once the disk has room",
        Duration::from_secs(30),
        Duration::from_millis(10),
        || {
            xid += 1;
            let xid = xid;
            let client = &client;
            async move { client.request(refused, xid, offered).await.ok().flatten() }
        },
    )
    .await?;
    assert_eq!(again, offered, "the same address after the disk was freed");
    acked.insert(refused, offered);
    assert!(store.reopens() >= 1);

    server.cancel.cancel();
    server.task.await??;
    drop(store);
    // Every ACKed lease is on disk, and no address is held by two MACs.
    let store = LeaseStore::open(&path)?;
    let loaded: BTreeMap<Mac, Ipv4Addr> =
        store.load()?.into_iter().map(|l| (l.mac, l.ip)).collect();
    for (m, ip) in &acked {
        assert_eq!(loaded.get(m), Some(ip), "{m} was ACKed {ip}");
    }
    let distinct: HashSet<&Ipv4Addr> = loaded.values().collect();
    assert_eq!(distinct.len(), loaded.len(), "an address given twice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhcp_server_stops_with_an_error_when_the_store_cannot_be_reopened() -> Result<()> {
    if !can_mount() {
        return Ok(());
    }
    let fs = Tmpfs::mount("2m")?;
    let path = fs.path().join("leases.redb");
    let give_up = Recovery {
        reopen_interval: Duration::from_millis(20),
        give_up_after: Duration::from_millis(200),
        give_up_attempts: 3,
    };
    let store = LeaseStore::open_with(&path, give_up)?;
    let (server, client) = start(store.clone(), GIADDR_GIVE_UP).await?;
    let mut xid = 1;
    let ip = client.discover(mac(1), xid).await?;
    ensure!(client.request(mac(1), xid, ip).await? == Some(ip), "no ACK");

    // A write fails (full disk); then the file's place is taken by a directory, so
    // no reopen can succeed even once there is room: nothing this process can mend.
    let filler = fill(fs.path())?;
    let mut n = 1;
    let (refused, offered) = loop {
        n += 1;
        ensure!(n < 2000, "every REQUEST was ACKed on a full disk");
        xid += 1;
        let ip = client.discover(mac(n), xid).await?;
        if client.request(mac(n), xid, ip).await?.is_none() {
            break (mac(n), ip);
        }
    };
    std::fs::remove_file(&filler)?;
    std::fs::rename(&path, fs.path().join("moved.redb"))?;
    std::fs::create_dir(&path)?;

    // Clients keep asking; the store gives up and the server ends with its error.
    let task = server.task;
    let outcome = poll(
        "the DHCP server to stop",
        Duration::from_secs(30),
        Duration::from_millis(10),
        || {
            let (client, finished) = (&client, task.is_finished());
            xid += 1;
            let xid = xid;
            async move {
                if finished {
                    return Some(());
                }
                let acked = client.request(refused, xid, offered).await;
                assert!(!matches!(acked, Ok(Some(_))), "an ACK with no lease store");
                None
            }
        },
    )
    .await;
    outcome?;
    let ended = task.await?;
    let Err(DhcpError::Store(e)) = ended else {
        bail!("the server ended without a store error: {ended:?}");
    };
    assert!(e.is_persistent(), "{e:?}");
    assert!(matches!(e, LeaseStoreError::Closed { .. }), "{e:?}");
    println!("stopped with: {}", substruct_runtime::error_chain(&e));
    drop(server.cancel);
    Ok(())
}

// ---- the image cache's free-space reserve ------------------------------------------

mod cache {
    use super::*;
    use sha2::{Digest as _, Sha256};
    use substruct_edge::image_cache::{
        CacheError, CacheSettings, CachedImage, ImageCache, ImageMeta,
    };
    use substruct_runtime::jetstream::{ensure_kv, ensure_object_store, BucketSpec};
    use substruct_testkit::NatsServer;
    use substruct_wire::{subjects, ImageName, Sha256Digest};

    const MIB: usize = 1 << 20;
    /// The reserve the tests keep; the caches' caps are far above what a tmpfs holds.
    const MIN_FREE: u64 = 2 << 20;
    const CAP: u64 = 1 << 30;

    fn content(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn n(name: &str) -> ImageName {
        ImageName::new(name).unwrap()
    }

    /// Registers `name` → `bytes` the way the controller does: object by sha256, KV entry.
    async fn register(client: &async_nats::Client, name: &str, bytes: &[u8]) -> ImageMeta {
        let js = async_nats::jetstream::new(client.clone());
        let kv = ensure_kv(&js, &BucketSpec::new(subjects::KV_IMAGES))
            .await
            .unwrap();
        let obj = ensure_object_store(&js, subjects::OBJ_IMAGES)
            .await
            .unwrap();
        let hash = Sha256Digest::new(hex::encode(Sha256::digest(bytes))).unwrap();
        obj.put(hash.as_str(), &mut std::io::Cursor::new(bytes.to_vec()))
            .await
            .unwrap();
        let entry = serde_json::json!({
            "name": name, "kind": "disk", "sha256": hash, "size": bytes.len(), "added_unix_ms": 1
        });
        kv.put(name, serde_json::to_vec(&entry).unwrap().into())
            .await
            .unwrap();
        ImageMeta {
            sha256: hash,
            size: bytes.len() as u64,
        }
    }

    async fn connect(nats: &NatsServer) -> Result<async_nats::Client> {
        let client = async_nats::connect(nats.url()).await?;
        // The cache asks for a connected client.
        poll(
            "the NATS client connected",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let up = client.connection_state() == async_nats::connection::State::Connected;
                async move { up.then_some(()) }
            },
        )
        .await?;
        Ok(client)
    }

    fn open(dir: &Path, client: &async_nats::Client) -> Result<ImageCache> {
        let settings = CacheSettings::new(dir, CAP, Some(client.clone())).with_min_free(MIN_FREE);
        let (cache, task) = ImageCache::open(settings)?;
        tokio::spawn(task.run(CancellationToken::new()));
        Ok(cache)
    }

    /// Bytes free on the filesystem of `path` (what `df` shows as available).
    fn available(path: &Path) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_evicts_to_keep_its_reserve_and_refuses_what_cannot_fit() -> Result<()> {
        if !can_mount() {
            return Ok(());
        }
        let nats = NatsServer::start()?;
        let client = connect(&nats).await?;
        let fs = Tmpfs::mount("10m")?;
        let dir = fs.path().join("cache");
        let a = register(&client, "a.img", &content(1, 5 * MIB / 2)).await;
        let b = register(&client, "b.img", &content(2, 5 * MIB / 2)).await;
        let c = register(&client, "c.img", &content(3, 7 * MIB / 2)).await;
        let big = register(&client, "big.img", &content(4, 9 * MIB)).await;
        let cache = open(&dir, &client)?;

        // a and b fit above the reserve (10 MiB - 5 MiB leaves about 5).
        cache.path_for(&n("a.img")).await?.context("a.img")?;
        cache.path_for(&n("b.img")).await?.context("b.img")?;
        assert_eq!(cache.stats().evictions, 0);
        // c (3.5 MiB) needs 5.5 MiB free with the reserve: a, the least recently used,
        // goes, though the cap is far away.
        let pc = cache.path_for(&n("c.img")).await?.context("c.img")?;
        assert_eq!(std::fs::read(&pc)?, content(3, 7 * MIB / 2));
        assert_eq!(cache.stats().evictions, 1);
        assert!(!dir.join(a.sha256.as_str()).exists(), "a evicted");
        let mut held = cache.verified();
        held.sort();
        let mut want = vec![b.sha256.clone(), c.sha256.clone()];
        want.sort();
        assert_eq!(held, want);
        assert!(available(fs.path()) >= MIN_FREE, "the reserve is kept");

        // 9 MiB + the reserve cannot fit even with b and c gone: refused, and nothing
        // is evicted for nothing.
        let err = cache.path_for(&n("big.img")).await.unwrap_err();
        assert!(matches!(err, CacheError::NoSpace { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(big.sha256.as_str()) && text.contains("must stay free"),
            "{text}"
        );
        assert_eq!(cache.stats().evictions, 1);
        assert!(dir.join(b.sha256.as_str()).exists() && dir.join(c.sha256.as_str()).exists());
        assert!(!dir.join(format!("{}.part", big.sha256)).exists());
        // What is cached is still served.
        assert_eq!(
            cache.path_for(&n("b.img")).await?,
            Some(dir.join(b.sha256.as_str()))
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eviction_for_the_reserve_skips_files_a_response_has_open() -> Result<()> {
        if !can_mount() {
            return Ok(());
        }
        let nats = NatsServer::start()?;
        let client = connect(&nats).await?;
        let fs = Tmpfs::mount("10m")?;
        let dir = fs.path().join("cache");
        let a = register(&client, "a2.img", &content(7, 5 * MIB / 2)).await;
        let b = register(&client, "b2.img", &content(8, 5 * MIB / 2)).await;
        register(&client, "c2.img", &content(9, 7 * MIB / 2)).await;
        let cache = open(&dir, &client)?;
        let pa = cache.path_for(&n("a2.img")).await?.context("a2.img")?;
        cache.path_for(&n("b2.img")).await?.context("b2.img")?;
        // a, the least recently used, is still being sent to a client: deleting it would
        // free nothing until that ends, so b goes instead.
        let sending = std::fs::File::open(&pa)?;
        cache.path_for(&n("c2.img")).await?.context("c2.img")?;
        assert_eq!(cache.stats().evictions, 1);
        assert!(
            dir.join(a.sha256.as_str()).exists(),
            "an open file was evicted"
        );
        assert!(!dir.join(b.sha256.as_str()).exists(), "b evicted");
        assert!(available(fs.path()) >= MIN_FREE, "the reserve is kept");
        drop(sending);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_that_would_eat_the_reserve_with_one_running_is_refused_before_it_starts(
    ) -> Result<()> {
        if !can_mount() {
            return Ok(());
        }
        let nats = NatsServer::start()?;
        let client = connect(&nats).await?;
        let fs = Tmpfs::mount("10m")?;
        let dir = fs.path().join("cache");
        let d = content(5, 5 * MIB);
        let e = content(6, 5 * MIB);
        let dm = register(&client, "d.img", &d).await;
        register(&client, "e.img", &e).await;
        // Every chunk the fetches read waits for a permit: d's fetch is held with
        // nothing written yet while e is asked for.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let settings = CacheSettings::new(&dir, CAP, Some(client.clone()))
            .with_min_free(MIN_FREE)
            .with_chunk_gate(gate.clone());
        let (cache, task) = ImageCache::open(settings)?;
        let cancel = CancellationToken::new();
        tokio::spawn(task.run(cancel.clone()));
        let _stop = cancel.drop_guard();

        // Each fits alone (5 MiB + 2 MiB reserve of 10); both together do not.
        let (dn, en) = (n("d.img"), n("e.img"));
        let fetch_d = tokio::spawn({
            let cache = cache.clone();
            async move { cache.path_for(&dn).await }
        });
        // A response following d's fetch: it sees how much is written.
        let following = match cache.open_image(&n("d.img")).await? {
            Some(CachedImage::Fetching(f)) => f,
            Some(CachedImage::Ready(_)) => bail!("d fetched through a held gate"),
            None => bail!("d.img not found"),
        };
        assert_eq!(
            following.written(),
            0,
            "the gate holds d before its first chunk"
        );
        assert!(available(fs.path()) >= 5 * MIB as u64 + MIN_FREE);
        // The disk has room for e now, but not once d has written what it still must:
        // e is refused at once, before a byte of it is written.
        let refused = tokio::time::timeout(Duration::from_secs(20), cache.open_image(&en))
            .await
            .context("e neither refused nor started")?;
        match refused {
            Err(CacheError::NoSpace {
                committed,
                available: free,
                ..
            }) => {
                assert_eq!(
                    committed, dm.size,
                    "d's bytes still to write count as taken"
                );
                assert!(
                    free >= 5 * MIB as u64 + MIN_FREE,
                    "refused on free space alone? {free}"
                );
            }
            Err(err) => bail!(
                "not a NoSpace refusal: {}",
                substruct_runtime::error_chain(&err)
            ),
            Ok(_) => bail!("e admitted while d still has 5 MiB to write"),
        }
        assert!(!dir.join(format!("{}.part", sha_of(&e))).exists());

        // d goes on, a few chunks at a time; the reserve holds all along.
        let mut last = 0;
        while !fetch_d.is_finished() && last < dm.size {
            gate.add_permits(4);
            poll(
                "d's fetch to go on",
                Duration::from_secs(20),
                Duration::from_millis(5),
                || {
                    let now = following.written();
                    let done = fetch_d.is_finished();
                    async move { (now > last || done).then_some(()) }
                },
            )
            .await?;
            last = following.written();
            let free = available(fs.path());
            assert!(
                free >= MIN_FREE,
                "{free} free with {last} bytes of d written"
            );
        }
        gate.close();
        let path = fetch_d.await??.context("d.img")?;
        assert_eq!(
            std::fs::read(&path)?,
            d,
            "d is fetched whole: exactly one Ok"
        );
        assert!(available(fs.path()) >= MIN_FREE, "the reserve is kept");
        let parts = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .count();
        assert_eq!(parts, 0, "half-written files are removed");
        assert_eq!(cache.stats().fetches, 1);
        Ok(())
    }

    fn sha_of(bytes: &[u8]) -> Sha256Digest {
        Sha256Digest::new(hex::encode(Sha256::digest(bytes))).unwrap()
    }
}
