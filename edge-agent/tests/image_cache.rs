//! The edge's image cache against a real nats-server: first fetch, hit, concurrent
//! requests sharing one fetch, a corrupt file detected and fetched again, half-written
//! files at start, eviction under the cap, and content that does not match its registry
//! entry refused. (Its decisions are unit-tested in `image_cache::index`.)

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sha2::{Digest, Sha256};
use substruct_edge::image_cache::{CacheError, CacheSettings, ImageCache, ImageMeta};
use substruct_runtime::jetstream::{ensure_kv, ensure_object_store, BucketSpec};
use substruct_testkit::{wait_for, NatsServer};
use substruct_wire::{subjects, ImageName, Sha256Digest};

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sha(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest::new(hex::encode(Sha256::digest(bytes))).unwrap()
}

fn n(name: &str) -> ImageName {
    ImageName::new(name).unwrap()
}

/// Opens the cache and runs its task until the test ends.
fn open(dir: &std::path::Path, cap: u64, client: Option<async_nats::Client>) -> ImageCache {
    let (cache, task) = ImageCache::open(CacheSettings::new(dir, cap, client)).unwrap();
    tokio::spawn(task.run(tokio_util::sync::CancellationToken::new()));
    cache
}

/// Registers `name` → `bytes` the way the controller does: object by sha256, KV entry.
async fn register(
    client: &async_nats::Client,
    name: &str,
    bytes: &[u8],
    stored: &[u8],
) -> ImageMeta {
    let js = async_nats::jetstream::new(client.clone());
    let kv = ensure_kv(&js, &BucketSpec::new(subjects::KV_IMAGES))
        .await
        .unwrap();
    let obj = ensure_object_store(&js, subjects::OBJ_IMAGES)
        .await
        .unwrap();
    let hash = sha(bytes);
    obj.put(hash.as_str(), &mut std::io::Cursor::new(stored.to_vec()))
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

async fn connect(nats: &NatsServer) -> async_nats::Client {
    let client = async_nats::connect(nats.url()).await.unwrap();
    // The cache asks for a connected client.
    for _ in 0..50 {
        if client.connection_state() == async_nats::connection::State::Connected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_hit_corrupt_refetch_and_eviction() {
    Box::pin(flow()).await;
}

async fn flow() {
    let nats = NatsServer::start().unwrap();
    let client = connect(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let a = content(1, 1_500_000);
    let b = content(2, 1_500_000);
    let c = content(3, 1_500_000);
    let ma = register(&client, "a.img", &a, &a).await;
    let mb = register(&client, "dir/b.img", &b, &b).await;
    let mc = register(&client, "c.img", &c, &c).await;
    // Cap: two images fit, three do not.
    let cache = open(&dir.path().join("cache"), 3_200_000, Some(client.clone()));

    // Unknown name: None, nothing fetched.
    assert_eq!(cache.path_for(&n("nope.img")).await.unwrap(), None);

    // First use fetches, once for requests that come together; the file is exactly
    // the content.
    let a_img = n("a.img");
    let (pa, pa2) = tokio::join!(cache.path_for(&a_img), cache.path_for(&a_img));
    let pa = pa.unwrap().unwrap();
    assert_eq!(pa2.unwrap().unwrap(), pa);
    assert_eq!(std::fs::read(&pa).unwrap(), a);
    assert_eq!(cache.stats().fetches, 1);
    // Second use is a hit.
    assert_eq!(cache.path_for(&n("a.img")).await.unwrap().unwrap(), pa);
    assert_eq!(cache.stats().fetches, 1);
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(cache.verified(), vec![ma.sha256.clone()]);

    // A byte flipped on disk (size kept, mtime moves): detected, fetched again.
    let mut damaged = a.clone();
    damaged[700_000] ^= 0xff;
    let before = std::fs::metadata(&pa).unwrap().modified().unwrap();
    std::fs::write(&pa, &damaged).unwrap();
    // Set the mtime explicitly: a rewrite within the filesystem's timestamp
    // granularity would otherwise keep it.
    std::fs::File::options()
        .write(true)
        .open(&pa)
        .unwrap()
        .set_modified(before + Duration::from_secs(2))
        .unwrap();
    let again = cache.path_for(&n("a.img")).await.unwrap().unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), a);
    assert_eq!(cache.stats().corrupt, 1);
    assert_eq!(cache.stats().fetches, 2);

    // b fits beside a; c does not: a, the least recently used, is evicted.
    cache.path_for(&n("dir/b.img")).await.unwrap().unwrap();
    cache.path_for(&n("c.img")).await.unwrap().unwrap();
    assert_eq!(cache.stats().evictions, 1);
    let mut held = cache.verified();
    held.sort();
    let mut want = vec![mb.sha256.clone(), mc.sha256.clone()];
    want.sort();
    assert_eq!(held, want);
    assert!(cache.size() <= 3_200_000);
    // The file goes too, a moment later (deleted outside the cache's state).
    let evicted = dir.path().join("cache").join(ma.sha256.as_str());
    wait_for("the evicted file deleted", Duration::from_secs(10), || {
        let gone = !evicted.exists();
        async move { gone }
    })
    .await
    .unwrap();

    // Restart: a half-written .part and a truncated file are dealt with.
    drop(cache);
    let cdir = dir.path().join("cache");
    std::fs::write(cdir.join(format!("{}.part", ma.sha256)), &a[..1000]).unwrap();
    std::fs::write(cdir.join(mb.sha256.as_str()), &b[..1000]).unwrap();
    let cache = open(&cdir, 3_200_000, Some(client.clone()));
    assert!(
        !cdir.join(format!("{}.part", ma.sha256)).exists(),
        "half-written file removed"
    );
    assert_eq!(cache.verify_all().await, 1, "the truncated file is found");
    assert_eq!(cache.verified(), vec![mc.sha256.clone()]);
    let pb = cache.path_for(&n("dir/b.img")).await.unwrap().unwrap();
    assert_eq!(std::fs::read(&pb).unwrap(), b);

    // Content in the store that does not match its registry entry: refused, not cached.
    let d = content(4, 10_000);
    let mut wrong = d.clone();
    wrong[0] ^= 1;
    let md = register(&client, "d.img", &d, &wrong).await;
    let err = cache.path_for(&n("d.img")).await.unwrap_err();
    assert!(matches!(err, CacheError::Mismatch { .. }), "{err}");
    assert!(!cdir.join(md.sha256.as_str()).exists());
    assert!(!cdir.join(format!("{}.part", md.sha256)).exists());

    // NATS gone (a WAN cut), even across a restart: cached images are still served by
    // name from the last known sha256; a name never resolved, or a miss, fails clearly.
    drop(client);
    drop(cache);
    let offline = open(&cdir, 3_200_000, None);
    assert_eq!(
        offline.path_for(&n("c.img")).await.unwrap(),
        Some(cdir.join(mc.sha256.as_str()))
    );
    assert_eq!(std::fs::read(cdir.join(mc.sha256.as_str())).unwrap(), c);
    let err = offline.path_for(&n("never-seen.img")).await.unwrap_err();
    assert!(matches!(err, CacheError::Offline), "{err}");
    // a.img was resolved before but evicted: known name, no file, no way to fetch.
    let err = offline.path_for(&n("a.img")).await.unwrap_err();
    assert!(matches!(err, CacheError::Offline), "{err}");
}
