//! What the perfdhcp benchmarks (`dhcp_perfdhcp`, `dhcp6_perfdhcp`) share: the
//! environment knobs, a process's CPU time, the median, running perfdhcp to its end, and
//! running it against our in-process server ([`with_our_server`]).
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use substruct_testkit::ChildGuard;

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process in seconds (all its threads), from /proc.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // fields after the parenthesised command name; utime and stime are 14 and 15
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    (ticks(11) + ticks(12)) / hz
}

/// Starts our server on `rt` (`serve` builds its future, given the token that stops it),
/// gives it 300 ms, runs `client` (perfdhcp) on a blocking thread, then stops the server.
/// Returns the client's result and the CPU seconds this process (the server, the client
/// being another process) used during the client's run.
pub fn with_our_server<T, S, E>(
    rt: &tokio::runtime::Runtime,
    serve: impl FnOnce(tokio_util::sync::CancellationToken) -> Result<S>,
    client: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<(T, f64)>
where
    T: Send + 'static,
    S: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(cancel.clone())?);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu0 = cpu_secs(std::process::id());
        let result = tokio::task::spawn_blocking(client).await;
        let cpu = cpu_secs(std::process::id()) - cpu0;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .context("our server did not stop")???;
        Ok((result??, cpu))
    })
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `cmd` (a perfdhcp of `secs` seconds) to its end, at most 30 s over, and
/// returns what it printed.
pub fn run_to_end(mut cmd: Command, secs: u64) -> Result<String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().context("starting perfdhcp")?;
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    loop {
        if guard.0.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!("perfdhcp did not finish");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    if let Some(mut s) = guard.0.stdout.take() {
        use std::io::Read;
        s.read_to_string(&mut out)?;
    }
    Ok(out)
}
