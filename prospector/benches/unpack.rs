//! Image conversion speed: the prospector's converters (`substruct_prospector::unpack`)
//! against the reference tools on the same files in the same run — `qemu-img convert
//! -O raw` for qcow2, `zstd -d` for zstd, `xz -d -T1` for xz — each writing the raw
//! image into a file under `target/tmp` (the same disk for both sides), each in its own
//! process (ours: this binary with `--convert`), its peak RSS polled from `/proc`. Every
//! output is compared with the raw image before its figure is printed.
//!
//! The image: `SUBSTRUCT_BENCH_IMAGE` (e.g. `target/cloud-image/debian12-cloud.img`),
//! else a synthetic `SIZE_MIB` (256) image: a quarter noise, a quarter text-like, half
//! zeros. Forms are made with the real tools first (not timed). Prints figures,
//! asserts nothing; skips (exit 0) without `qemu-img`, `zstd` or `xz`.
//! Env: SUBSTRUCT_BENCH_IMAGE, SIZE_MIB, ROUNDS (2).

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use substruct_prospector::unpack::{self, Format};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).exists()))
        .unwrap_or(false)
}

/// CPU seconds (user + system) of this process's waited-for children, from
/// `/proc/self/stat` (clock ticks of 1/100 s).
fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(13) + ticks(14)) / 100.0
}

fn synthetic(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let words = [
        &b"kernel "[..],
        b"module ",
        b"/usr/lib/",
        b"x86_64 ",
        b"linux-gnu ",
        b"\0\0\0\0",
    ];
    while out.len() < len {
        let block = out.len() / (1 << 20) % 4;
        for _ in 0..(1 << 17) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match block {
                0 => out.extend_from_slice(&x.to_le_bytes()),
                1 => out.extend_from_slice(words[(x % 6) as usize]),
                _ => out.extend_from_slice(&[0u8; 8]),
            }
        }
    }
    out.truncate(len);
    out
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("{cmd:?}"))?;
    ensure!(status.success(), "{cmd:?}: {status}");
    Ok(())
}

/// What one conversion cost: wall time, CPU seconds, peak resident memory (KiB).
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: f64,
    peak_kib: u64,
}

/// Runs `cmd` to its end, polling its peak RSS (`VmHWM`) while it runs.
fn measure(cmd: &mut Command) -> Result<Cost> {
    let cpu = children_cpu_seconds();
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let hwm = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        });
        peak_kib = peak_kib.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    };
    ensure!(status.success(), "{cmd:?}: {status}");
    Ok(Cost {
        wall: t.elapsed(),
        cpu: children_cpu_seconds() - cpu,
        peak_kib,
    })
}

/// Our converter, in a child (this binary with `--convert`): `input` → `out`.
fn ours(format: Format, input: &Path, out: &Path, size: u64) -> Result<Cost> {
    let _ = std::fs::remove_file(out);
    measure(
        Command::new(std::env::current_exe()?)
            .arg("--convert")
            .arg(format.name())
            .arg(input)
            .arg(out)
            .arg(size.to_string()),
    )
}

/// The child side of [`ours`].
fn convert(args: &[String]) -> Result<()> {
    let [format, input, out, size] = args else {
        bail!("--convert FORMAT INPUT OUTPUT SIZE");
    };
    let format = match format.as_str() {
        "qcow2" => Format::Qcow2,
        "zstd" => Format::Zstd,
        "xz" => Format::Xz,
        _ => Format::Raw,
    };
    let size: u64 = size.parse()?;
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(input)?);
    let mut disk = std::fs::File::create(out)?;
    disk.set_len(size)?;
    let n = unpack::unpack(format, &mut reader, &mut disk, size)?;
    disk.sync_all()?;
    ensure!(n == size, "{format:?}: {n} bytes, expected {size}");
    Ok(())
}

/// The reference tool: `input` → `out`.
fn peer(format: Format, input: &Path, out: &Path) -> Result<Cost> {
    let _ = std::fs::remove_file(out);
    let cost = match format {
        Format::Qcow2 => measure(
            Command::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(input)
                .arg(out),
        )?,
        Format::Zstd => measure(
            Command::new("zstd")
                .args(["-q", "-d", "-f", "-o"])
                .arg(out)
                .arg(input),
        )?,
        Format::Xz => measure(
            Command::new("xz")
                .args(["-d", "-c", "-T1"])
                .arg(input)
                .stdout(std::fs::File::create(out)?),
        )?,
        Format::Raw => bail!("no peer for raw"),
    };
    let t = Instant::now();
    std::fs::File::open(out)?.sync_all()?;
    Ok(Cost {
        wall: cost.wall + t.elapsed(),
        ..cost
    })
}

fn same(a: &Path, b: &Path) -> Result<bool> {
    Ok(std::fs::read(a)? == std::fs::read(b)?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--convert") {
        return convert(&args[i + 1..]);
    }
    for tool in ["qemu-img", "zstd", "xz"] {
        if !have(tool) {
            println!("SKIPPED: {tool} is not installed");
            return Ok(());
        }
    }
    let rounds = env_or("ROUNDS", 2).max(1);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/unpack-bench");
    std::fs::create_dir_all(&dir)?;
    let raw = match std::env::var_os("SUBSTRUCT_BENCH_IMAGE") {
        Some(p) => PathBuf::from(p),
        None => {
            let p = dir.join("synthetic.img");
            std::fs::write(&p, synthetic(env_or("SIZE_MIB", 256) << 20))?;
            p
        }
    };
    let size = std::fs::metadata(&raw)?.len();
    let mib = size as f64 / f64::from(1 << 20);
    println!("image: {} ({mib:.1} MiB)", raw.display());
    let forms: [(&str, Format, &str, Vec<&str>); 4] = [
        ("qcow2", Format::Qcow2, "qcow2", vec!["-O", "qcow2"]),
        (
            "qcow2 -c",
            Format::Qcow2,
            "c.qcow2",
            vec!["-c", "-O", "qcow2"],
        ),
        ("zstd", Format::Zstd, "zst", vec![]),
        ("xz", Format::Xz, "xz", vec![]),
    ];
    println!(
        "{:<10} {:>9}  {:>28}  {:>28}  {:>6}",
        "form", "file MiB", "ours MiB/s (CPU s, peak MiB)", "peer MiB/s (CPU s, peak MiB)", "ratio"
    );
    for (name, format, ext, opts) in forms {
        let file = dir.join(format!("image.{ext}"));
        match format {
            Format::Qcow2 => run(Command::new("qemu-img")
                .args(["convert", "-f", "raw"])
                .args(&opts)
                .arg(&raw)
                .arg(&file))?,
            Format::Zstd => run(Command::new("zstd")
                .args(["-q", "-f", "-T0", "-o"])
                .arg(&file)
                .arg(&raw))?,
            Format::Xz => run(Command::new("xz")
                .args(["-c", "-T0"])
                .arg(&raw)
                .stdout(std::fs::File::create(&file)?))?,
            Format::Raw => {}
        }
        let file_mib = std::fs::metadata(&file)?.len() as f64 / f64::from(1 << 20);
        let (mut best_ours, mut best_peer): (Option<Cost>, Option<Cost>) = (None, None);
        for _ in 0..rounds {
            let out = dir.join("ours.raw");
            let o = ours(format, &file, &out, size)?;
            ensure!(
                same(&out, &raw)?,
                "{name}: our output differs from the image"
            );
            if best_ours.is_none_or(|b| o.wall < b.wall) {
                best_ours = Some(o);
            }
            let out = dir.join("peer.raw");
            let p = peer(format, &file, &out)?;
            ensure!(
                same(&out, &raw)?,
                "{name}: the peer's output differs from the image"
            );
            if best_peer.is_none_or(|b| p.wall < b.wall) {
                best_peer = Some(p);
            }
        }
        let (o, p) = (
            best_ours.context("no round")?,
            best_peer.context("no round")?,
        );
        let rate = |d: Duration| mib / d.as_secs_f64();
        let cell = |c: Cost| {
            format!(
                "{:.1} ({:.1} s, {:.1})",
                rate(c.wall),
                c.cpu,
                c.peak_kib as f64 / 1024.0
            )
        };
        println!(
            "{name:<10} {file_mib:>9.1}  {:>28}  {:>28}  {:>5.2}×",
            cell(o),
            cell(p),
            rate(o.wall) / rate(p.wall)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
