//! What the perfdhcp benchmarks (`dhcp_perfdhcp`, `dhcp6_perfdhcp`) share: the
//! environment knobs, a process's CPU time, the median, and running perfdhcp to its end.
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
