//! Images streamed to clients while the edge is still fetching them, against a real
//! nats-server and the edge's HTTP server: the response starts before the fetch ends
//! and ends complete and verified; two clients share one fetch (one read of the object
//! store); content that does not match its registry entry (or is short) cuts the
//! response short and leaves nothing in the cache. (How a follower reads, holds back
//! the last byte and ends on a failure is unit-tested in `image_cache::follow`.)
//!
//! The fetch is held part-way with the cache's test gate
//! ([`CacheSettings::with_chunk_gate`]: one permit per chunk read from the store), so
//! every "before the fetch has finished" below is an ordering, not a race. The time
//! bounds only keep a broken build from hanging.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt as _;
use sha2::{Digest, Sha256};
use substruct_edge::http::{self, limits::HttpLimits, HttpSettings, HttpState};
use substruct_edge::image_cache::{CacheSettings, ImageCache, ImageMeta};
use substruct_edge::intents::IntentTable;
use substruct_edge::metrics::Metrics;
use substruct_runtime::jetstream::{ensure_kv, ensure_object_store, BucketSpec};
use substruct_testkit::NatsServer;
use substruct_wire::{subjects, Sha256Digest, SiteId};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Bounds a wait that must end unless the code is broken.
const BOUND: Duration = Duration::from_secs(20);
/// The image: 4 MiB and a bit, many object-store chunks.
const LEN: usize = 4 * 1024 * 1024 + 12345;

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn sha(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest::new(hex::encode(Sha256::digest(bytes))).unwrap()
}

async fn connect(nats: &NatsServer) -> Result<async_nats::Client> {
    let client = async_nats::connect(nats.url()).await?;
    substruct_testkit::wait_for("NATS connected", BOUND, || {
        let up = client.connection_state() == async_nats::connection::State::Connected;
        async move { up }
    })
    .await?;
    Ok(client)
}

/// Registers `name` → `bytes` as the controller does (object by sha256, KV entry), with
/// `stored` as the object's actual content.
async fn register(
    client: &async_nats::Client,
    name: &str,
    bytes: &[u8],
    stored: &[u8],
) -> Result<ImageMeta> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = ensure_kv(&js, &BucketSpec::new(subjects::KV_IMAGES)).await?;
    let obj = ensure_object_store(&js, subjects::OBJ_IMAGES).await?;
    let hash = sha(bytes);
    obj.put(hash.as_str(), &mut std::io::Cursor::new(stored.to_vec()))
        .await?;
    let entry = serde_json::json!({
        "name": name, "kind": "disk", "sha256": hash, "size": bytes.len(), "added_unix_ms": 1
    });
    kv.put(name, serde_json::to_vec(&entry)?.into()).await?;
    Ok(ImageMeta {
        sha256: hash,
        size: bytes.len() as u64,
    })
}

/// An edge's HTTP server in front of its image cache (empty images directory), the
/// cache's fetches held at `gate`.
struct Edge {
    base: String,
    cache: ImageCache,
    cache_dir: PathBuf,
    gate: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Edge {
    async fn start(client: &async_nats::Client, stall: Duration) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (images, ipxe) = (dir.path().join("images"), dir.path().join("ipxe"));
        std::fs::create_dir_all(&images)?;
        std::fs::create_dir_all(&ipxe)?;
        let cache_dir = dir.path().join("cache");
        let gate = Arc::new(Semaphore::new(0));
        let metrics = Arc::new(Metrics::new());
        let settings = CacheSettings::new(&cache_dir, 1 << 30, Some(client.clone()))
            // A reserve the test filesystem has: checked per chunk all the same.
            .with_min_free(1 << 20)
            .with_fetch_stall(stall)
            .with_chunk_gate(gate.clone())
            .with_metrics(metrics.clone());
        let (cache, task) = ImageCache::open(settings)?;
        let cancel = CancellationToken::new();
        tokio::spawn(task.run(cancel.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let state = HttpState::new(
            HttpSettings {
                base: "http://10.77.0.1".into(),
                site: SiteId::new("s1")?,
                nats_url: "nats://10.77.0.1:4222".into(),
                base6: None,
                nats_url6: None,
                ipv6_only: false,
                extra_args: None,
                images_dir: images,
                ipxe_dir: ipxe,
                limits: HttpLimits::default(),
            },
            IntentTable::new(),
        )?
        .with_cache(cache.clone())
        .with_metrics(metrics.clone());
        tokio::spawn(http::serve(listener, state, cancel.clone()));
        Ok(Self {
            base,
            cache,
            cache_dir,
            gate,
            metrics,
            cancel,
            _dir: dir,
        })
    }

    fn url(&self, name: &str) -> String {
        format!("{}/images/{name}", self.base)
    }

    /// Whether the cache says `sha`'s fetch is still running: one fetch running, none
    /// finished, no file in place.
    fn fetch_in_progress(&self, sha: &Sha256Digest) -> bool {
        let stats = self.cache.stats();
        stats.fetching == 1 && stats.fetches == 0 && !self.cache_dir.join(sha.as_str()).exists()
    }

    /// A sample's value in the edge's metrics.
    fn metric(&self, name: &str) -> Result<f64> {
        let text = self.metrics.encode()?;
        let line = text
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .with_context(|| format!("no {name} in the metrics"))?;
        Ok(line.rsplit(' ').next().unwrap_or("").parse()?)
    }
}

/// Sends `req` and waits (bounded) for the response head.
async fn head_of(req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
    tokio::time::timeout(BOUND, req.send())
        .await
        .context("no response head while the fetch is held: the response waits for the fetch")?
        .context("request")
}

/// The next body piece (bounded wait): `Ok(None)` at the end, `Err` if the body broke.
async fn next_piece(resp: &mut reqwest::Response) -> Result<Option<bytes::Bytes>> {
    match tokio::time::timeout(BOUND, resp.chunk()).await {
        Err(_) => bail!("no body bytes within the bound"),
        Ok(r) => Ok(r?),
    }
}

/// The rest of a body, and the error it broke with (`None`: it ended complete). A body
/// that neither ends nor breaks within the bound fails the test: a hanging response
/// is never taken for a cut one.
async fn rest_of(
    resp: &mut reqwest::Response,
    mut got: Vec<u8>,
) -> Result<(Vec<u8>, Option<reqwest::Error>)> {
    loop {
        match tokio::time::timeout(BOUND, resp.chunk()).await {
            Err(_) => bail!(
                "the body neither ended nor broke within {BOUND:?} ({} bytes so far)",
                got.len()
            ),
            Ok(Ok(Some(b))) => got.extend_from_slice(&b),
            Ok(Ok(None)) => return Ok((got, None)),
            Ok(Err(e)) => return Ok((got, Some(e))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_starts_before_the_fetch_ends_and_ends_verified() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats).await?;
    let image = content(1, LEN);
    let meta = register(&client, "big.img", &image, &image).await?;
    let edge = Edge::start(&client, Duration::from_secs(30)).await?;
    let http = reqwest::Client::new();

    // The gate is shut: nothing can be fetched yet. The head comes at once anyway, with
    // the registered length.
    let mut resp = head_of(http.get(edge.url("big.img"))).await?;
    ensure!(resp.status() == 200, "status {}", resp.status());
    ensure!(
        resp.content_length() == Some(LEN as u64),
        "{:?}",
        resp.headers()
    );
    ensure!(
        edge.fetch_in_progress(&meta.sha256),
        "{:?}",
        edge.cache.stats()
    );
    // HEAD and a range of the same image meanwhile: the registered size, no wait.
    let head = head_of(http.head(edge.url("big.img"))).await?;
    // (reqwest's content_length() is the body's, empty for HEAD: read the header.)
    let length = head
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok());
    ensure!(head.status() == 200 && length == Some(LEN.to_string().as_str()));
    let mut ranged = head_of(
        http.get(edge.url("big.img"))
            .header("Range", "bytes=1000-2999999"),
    )
    .await?;
    ensure!(ranged.status() == 206, "status {}", ranged.status());
    ensure!(
        ranged
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            == Some(format!("bytes 1000-2999999/{LEN}").as_str())
    );

    // One chunk through: the first body bytes arrive while the cache still reports the
    // fetch in progress (it cannot finish: the gate holds the rest).
    edge.gate.add_permits(1);
    let first = next_piece(&mut resp)
        .await?
        .context("the body ended at once")?;
    ensure!(
        !first.is_empty() && first.len() < LEN,
        "{} bytes",
        first.len()
    );
    ensure!(first[..] == image[..first.len()], "the first bytes differ");
    ensure!(
        edge.fetch_in_progress(&meta.sha256),
        "bytes arrived, but the fetch is over: {:?}",
        edge.cache.stats()
    );

    // Let it finish: the whole image, hashing right; the range too.
    edge.gate.close();
    let (body, broke) = rest_of(&mut resp, first.to_vec()).await?;
    ensure!(broke.is_none(), "the body broke: {broke:?}");
    ensure!(body.len() == LEN, "{} of {LEN} bytes", body.len());
    ensure!(sha(&body) == meta.sha256, "the body does not hash right");
    let (part, broke) = rest_of(&mut ranged, Vec::new()).await?;
    ensure!(
        broke.is_none() && part[..] == image[1000..3_000_000],
        "{broke:?}"
    );

    // Now a plain hit from the verified file.
    let stats = edge.cache.stats();
    ensure!(stats.fetches == 1 && stats.fetching == 0, "{stats:?}");
    ensure!(
        stats.streams == 3,
        "GET, HEAD and range followed the fetch: {stats:?}"
    );
    let again = http.get(edge.url("big.img")).send().await?.bytes().await?;
    ensure!(again[..] == image[..]);
    let stats = edge.cache.stats();
    ensure!(
        stats.hits == 1 && stats.fetches == 1 && stats.streams == 3,
        "{stats:?}"
    );
    ensure!(edge.metric("substruct_edge_image_cache_streamed_total")? == 3.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_one_fetch_and_one_read_of_the_store() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats).await?;
    let image = content(2, LEN);
    let meta = register(&client, "shared.img", &image, &image).await?;
    // Every read of an object makes a consumer on the object store's stream: watch the
    // JetStream API requests that create one.
    let mut creates = client.subscribe("$JS.API.CONSUMER.CREATE.>").await?;
    client.flush().await?;
    let edge = Edge::start(&client, Duration::from_secs(30)).await?;
    let http = reqwest::Client::new();

    let (a, b) = tokio::join!(
        head_of(http.get(edge.url("shared.img"))),
        head_of(http.get(edge.url("shared.img")))
    );
    let (mut a, mut b) = (a?, b?);
    ensure!(a.status() == 200 && b.status() == 200);
    // Both have their first bytes before the fetch can end.
    edge.gate.add_permits(1);
    let (fa, fb) = (
        next_piece(&mut a).await?.context("a ended")?,
        next_piece(&mut b).await?.context("b ended")?,
    );
    ensure!(
        edge.fetch_in_progress(&meta.sha256),
        "{:?}",
        edge.cache.stats()
    );
    edge.gate.close();
    let (rest_a, rest_b) = tokio::join!(rest_of(&mut a, fa.to_vec()), rest_of(&mut b, fb.to_vec()));
    let ((body_a, broke_a), (body_b, broke_b)) = (rest_a?, rest_b?);
    ensure!(
        broke_a.is_none() && broke_b.is_none(),
        "{broke_a:?} {broke_b:?}"
    );
    ensure!(
        sha(&body_a) == meta.sha256 && body_a.len() == LEN,
        "a differs"
    );
    ensure!(
        sha(&body_b) == meta.sha256 && body_b.len() == LEN,
        "b differs"
    );

    let stats = edge.cache.stats();
    ensure!(stats.fetches == 1 && stats.streams == 2, "{stats:?}");
    ensure!(edge.metric("substruct_edge_image_cache_misses_total")? == 1.0);
    // The object store was read once: one consumer made on its stream.
    let stream = format!("$JS.API.CONSUMER.CREATE.OBJ_{}", subjects::OBJ_IMAGES);
    let mut subjects_seen = Vec::new();
    let first = tokio::time::timeout(BOUND, creates.next())
        .await
        .context("no consumer was ever created")?
        .context("subscription ended")?;
    subjects_seen.push(first.subject.to_string());
    // Any other already on its way (a short drain: the fetch is long over).
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), creates.next()).await {
        subjects_seen.push(m.subject.to_string());
    }
    let reads = subjects_seen
        .iter()
        .filter(|s| s.starts_with(&stream))
        .count();
    ensure!(reads == 1, "object store reads: {subjects_seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_that_does_not_match_cuts_the_response_short_and_is_not_kept() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats).await?;
    let image = content(3, LEN);
    // Same length, one byte changed near the end; and a short object.
    let mut flipped = image.clone();
    flipped[LEN - 10] ^= 0x5a;
    let other = content(4, LEN);
    let short = other[..LEN - 100_000].to_vec();
    let cases = [
        ("flipped.img", image.clone(), flipped),
        ("short.img", other.clone(), short),
    ];
    let edge = Edge::start(&client, Duration::from_secs(30)).await?;
    edge.gate.close();
    let http = reqwest::Client::new();
    for (name, registered, stored) in cases {
        let meta = register(&client, name, &registered, &stored).await?;
        let mut resp = head_of(http.get(edge.url(name))).await?;
        ensure!(resp.status() == 200, "{name}: status {}", resp.status());
        ensure!(resp.content_length() == Some(LEN as u64), "{name}");
        let (body, broke) = rest_of(&mut resp, Vec::new()).await?;
        let Some(broke) = broke else {
            bail!("{name}: the body ended normally ({} bytes)", body.len());
        };
        // The connection closed short of the Content-Length (hyper's "end of file before
        // message length reached"), not some other failure.
        ensure!(
            broke.is_body() || broke.is_decode(),
            "{name}: the body failed otherwise than by a cut connection: {broke:?}"
        );
        ensure!(
            body.len() < LEN,
            "{name}: all {LEN} bytes came before the error"
        );
        ensure!(
            body[..] == stored[..body.len()],
            "{name}: not the stored bytes"
        );
        // Nothing kept: neither the file nor its part.
        let dir = &edge.cache_dir;
        ensure!(!dir.join(meta.sha256.as_str()).exists(), "{name}: kept");
        ensure!(
            !dir.join(format!("{}.part", meta.sha256)).exists(),
            "{name}: part kept"
        );
    }
    let stats = edge.cache.stats();
    ensure!(stats.fetches == 0 && stats.fetching == 0, "{stats:?}");
    ensure!(edge.metric("substruct_edge_image_cache_fetch_failures_total")? == 2.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_cannot_start_is_a_503_naming_its_cause() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats).await?;
    let edge = Edge::start(&client, Duration::from_secs(30)).await?;
    edge.gate.close();
    // Registered, but its object is missing from the store.
    let image = content(5, 1000);
    let js = async_nats::jetstream::new(client.clone());
    let kv = ensure_kv(&js, &BucketSpec::new(subjects::KV_IMAGES)).await?;
    ensure_object_store(&js, subjects::OBJ_IMAGES).await?;
    let hash = sha(&image);
    let entry = serde_json::json!({
        "name": "lost.img", "kind": "disk", "sha256": hash, "size": image.len(), "added_unix_ms": 1
    });
    kv.put("lost.img", serde_json::to_vec(&entry)?.into())
        .await?;
    let http = reqwest::Client::new();
    let resp = head_of(http.get(edge.url("lost.img"))).await?;
    ensure!(resp.status() == 503, "status {}", resp.status());
    ensure!(
        resp.headers().get("retry-after").map(|v| v.as_bytes()) == Some(&b"5"[..]),
        "{:?}",
        resp.headers()
    );
    let text = tokio::time::timeout(BOUND, resp.text()).await??;
    ensure!(
        text.contains("lost.img") && text.contains(&format!("fetching image content {hash}")),
        "the message does not name the image and its cause: {text:?}"
    );
    ensure!(!edge.cache_dir.join(hash.as_str()).exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_byte_image_is_answered_only_after_its_verdict() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats).await?;
    let edge = Edge::start(&client, Duration::from_secs(30)).await?;
    edge.gate.close();
    let http = reqwest::Client::new();
    // Registered empty, but the store holds a byte: before its verdict it would look
    // complete (Content-Length 0); it must be refused.
    let bad = register(&client, "empty-bad.img", b"", b"x").await?;
    let resp = head_of(http.get(edge.url("empty-bad.img"))).await?;
    ensure!(
        resp.status() == 503,
        "a zero-byte image answered before its verdict: status {}",
        resp.status()
    );
    let text = tokio::time::timeout(BOUND, resp.text()).await??;
    ensure!(text.contains("hashes to"), "{text:?}");
    ensure!(!edge.cache_dir.join(bad.sha256.as_str()).exists());
    ensure!(edge.metric("substruct_edge_image_cache_fetch_failures_total")? == 1.0);
    Ok(())
}
