//! The boot-intent watcher against a real nats-server (JetStream KV `boot`).

use std::time::Duration;

use anyhow::Result;
use substruct_edge::intents::{self, IntentCache, IntentTable, WatchSettings};
use substruct_runtime::jetstream::{ensure_kv, BucketSpec};
use substruct_testkit::{wait_for, NatsServer};
use substruct_wire::intent::{BootIntent, BootIntentRecord, LocalBootWay};
use substruct_wire::subjects::{boot_key, KV_BOOT};
use substruct_wire::{Mac, SiteId};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn record(intent: BootIntent) -> BootIntentRecord {
    BootIntentRecord {
        machine_id: None,
        intent,
    }
}

fn local() -> BootIntentRecord {
    record(BootIntent::Local {
        way: LocalBootWay::IpxeExit,
    })
}

async fn connect(url: &str) -> Result<async_nats::Client> {
    Ok(substruct_runtime::nats_options("edge-test")
        .connect(url)
        .await?)
}

async fn bucket(client: &async_nats::Client) -> Result<async_nats::jetstream::kv::Store> {
    let js = async_nats::jetstream::new(client.clone());
    Ok(ensure_kv(&js, &BucketSpec::new(KV_BOOT)).await?)
}

fn start_watcher(
    client: async_nats::Client,
    site: &SiteId,
    cache: &IntentCache,
    table: &IntentTable,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let mut settings = WatchSettings::new(site.clone(), cache.clone());
    settings.max_backoff = Duration::from_millis(500);
    let handle = tokio::spawn(intents::watch(
        client,
        settings,
        table.clone(),
        cancel.clone(),
    ));
    (cancel, handle)
}

async fn has(table: &IntentTable, mac: Mac, want: Option<&BootIntentRecord>) -> bool {
    table.get(&mac).as_ref() == want
}

#[tokio::test]
async fn puts_and_deletes_reach_the_table_and_the_disk() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = connect(&nats.url()).await?;
    let kv = bucket(&client).await?;
    let dir = tempfile::tempdir()?;
    let s1 = SiteId::new("s1")?;
    let s2 = SiteId::new("s2")?;
    let cache = IntentCache::new(dir.path().join("intents.json"), s1.clone());
    let table = IntentTable::new();
    let m1 = Mac::parse("52:54:00:00:00:01")?;
    let m2 = Mac::parse("52:54:00:00:00:02")?;

    // Present before the watcher starts: picked up by the snapshot.
    let discover = record(BootIntent::Discover);
    kv.put(
        boot_key(&s1, &m1),
        substruct_wire::encode(&discover)?.into(),
    )
    .await?;
    let (cancel, handle) = start_watcher(client.clone(), &s1, &cache, &table);
    wait_for("snapshot of m1", WAIT, || has(&table, m1, Some(&discover))).await?;

    // Live put.
    kv.put(boot_key(&s1, &m2), substruct_wire::encode(&local())?.into())
        .await?;
    let l = local();
    wait_for("m2 put", WAIT, || has(&table, m2, Some(&l))).await?;
    // Another site's key and an undecodable value are ignored.
    kv.put(boot_key(&s2, &m1), substruct_wire::encode(&local())?.into())
        .await?;
    kv.put(boot_key(&s1, &m1), bytes::Bytes::from_static(b"garbage"))
        .await?;
    // Update m1 after them: once it shows, the two before were processed (in order).
    let install = record(BootIntent::Install {
        kernel: "k".parse().unwrap(),
        initrd: "i".parse().unwrap(),
        cmdline: String::new(),
    });
    kv.put(boot_key(&s1, &m1), substruct_wire::encode(&install)?.into())
        .await?;
    wait_for("m1 update", WAIT, || has(&table, m1, Some(&install))).await?;
    assert_eq!(table.len(), 2);

    // Delete and purge remove.
    kv.delete(boot_key(&s1, &m1)).await?;
    wait_for("m1 delete", WAIT, || has(&table, m1, None)).await?;
    kv.purge(boot_key(&s1, &m2)).await?;
    wait_for("m2 purge", WAIT, || has(&table, m2, None)).await?;
    assert!(table.is_empty());

    // The disk copy follows.
    kv.put(boot_key(&s1, &m2), substruct_wire::encode(&local())?.into())
        .await?;
    wait_for("m2 again", WAIT, || has(&table, m2, Some(&l))).await?;
    wait_for("disk copy", WAIT, || {
        let cache = cache.clone();
        async move {
            cache
                .load()
                .map(|t| t.get(&m2) == Some(local()) && t.len() == 1)
                .unwrap_or(false)
        }
    })
    .await?;

    cancel.cancel();
    tokio::time::timeout(WAIT, handle).await??;
    Ok(())
}

#[tokio::test]
async fn serves_from_disk_while_nats_is_down_and_resyncs_after() -> Result<()> {
    let mut nats = NatsServer::start()?;
    let client = connect(&nats.url()).await?;
    let kv = bucket(&client).await?;
    let dir = tempfile::tempdir()?;
    let s1 = SiteId::new("s1")?;
    let cache = IntentCache::new(dir.path().join("intents.json"), s1.clone());
    let m1 = Mac::parse("52:54:00:00:00:01")?;
    let m2 = Mac::parse("52:54:00:00:00:02")?;
    let m3 = Mac::parse("52:54:00:00:00:03")?;
    for m in [m1, m2] {
        kv.put(boot_key(&s1, &m), substruct_wire::encode(&local())?.into())
            .await?;
    }
    {
        let table = IntentTable::new();
        let (cancel, handle) = start_watcher(client.clone(), &s1, &cache, &table);
        wait_for("first sync", WAIT, || async { table.len() == 2 }).await?;
        cancel.cancel();
        tokio::time::timeout(WAIT, handle).await??;
    }
    // While the edge is away: m1 is deleted, m3 added.
    kv.delete(boot_key(&s1, &m1)).await?;
    kv.put(boot_key(&s1, &m3), substruct_wire::encode(&local())?.into())
        .await?;
    drop(kv);
    drop(client);

    // NATS goes down; a new edge starts from its disk copy.
    nats.kill();
    let table = cache.load()?;
    assert_eq!(table.len(), 2);
    assert_eq!(table.get(&m1), Some(local()));
    let offline = connect(&nats.url()).await?;
    let (cancel, handle) = start_watcher(offline, &s1, &cache, &table);
    // The watcher cannot reach NATS; the table keeps serving the disk copy meanwhile.
    tokio::task::yield_now().await;
    assert_eq!(table.get(&m2), Some(local()));
    assert_eq!(table.get(&m1), Some(local()));

    // NATS comes back: the watcher reconnects and takes a full snapshot.
    nats.restart()?;
    wait_for("resync after restart", WAIT, || async {
        table.get(&m1).is_none() && table.get(&m3) == Some(local()) && table.len() == 2
    })
    .await?;
    cancel.cancel();
    tokio::time::timeout(WAIT, handle).await??;
    Ok(())
}
