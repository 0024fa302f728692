//! HTTP figures for the edge: boot.ipxe renders per second (sequential and 16 in flight)
//! and image download throughput with the server's CPU time per GB, over loopback.
//! Prints figures, asserts nothing. Client and server share this process (and the
//! machine's cores), so the figures are a floor, not a ceiling.

use std::time::Instant;

use anyhow::Result;
use substruct_edge::http::{self, HttpSettings, HttpState};
use substruct_edge::intents::IntentTable;
use substruct_wire::SiteId;
use tokio_util::sync::CancellationToken;

const IMAGE_MIB: usize = 256;

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ")".
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    let chunk: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(images.join("disk.img"))?;
        for _ in 0..IMAGE_MIB {
            f.write_all(&chunk)?;
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = HttpState::new(
        HttpSettings {
            base: "http://10.77.0.1".into(),
            site: SiteId::new("bench")?,
            nats_url: "nats://10.77.0.1:4222".into(),
            extra_args: None,
            images_dir: images,
            ipxe_dir: "/usr/lib/ipxe".into(),
        },
        IntentTable::new(),
    )?;
    let cancel = CancellationToken::new();
    tokio::spawn(http::serve(listener, state, cancel.clone()));
    let client = reqwest::Client::new();
    let url = format!("{base}/boot.ipxe?mac=52:54:00:00:00:01&platform=pcbios");

    let n = 3000;
    let t = Instant::now();
    for _ in 0..n {
        client.get(&url).send().await?.bytes().await?;
    }
    let seq = n as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 16 {
                client.get(&url).send().await?.bytes().await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let par = (n / 16 * 16) as f64 / t.elapsed().as_secs_f64();
    println!("boot.ipxe renders/s: {seq:.0} sequential, {par:.0} with 16 in flight");

    for run in 1..=3 {
        let cpu0 = cpu_seconds();
        let t = Instant::now();
        let mut resp = client.get(format!("{base}/images/disk.img")).send().await?;
        let mut got = 0usize;
        while let Some(c) = resp.chunk().await? {
            got += c.len();
        }
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let gb = got as f64 / 1e9;
        println!(
            "image run {run}: {IMAGE_MIB} MiB in {secs:.2} s = {:.0} MB/s; process CPU {:.2} s/GB (client included)",
            got as f64 / 1e6 / secs,
            cpu / gb
        );
    }
    cancel.cancel();
    Ok(())
}
