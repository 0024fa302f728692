//! HTTP figures for the edge (issue 6): boot.ipxe renders per second, and a 200 MiB image
//! served to 32 concurrent clients by the edge and by nginx in the same run, each reported
//! as MB/s and the server's CPU-seconds per GB served, with the ratios to nginx (goal:
//! MB/s >= 0.95x nginx, CPU per GB <= 1.2x nginx). Three servers, the order rotating each
//! round, medians over `ROUNDS`:
//! * `edge`: `http::serve` as `substruct-edge` runs it (image bodies read through axum);
//! * `edge+sf`: the same router behind `files::SendfileListener`, which answers image
//!   `GET`s with `sendfile(2)` (what `http::serve` does once the front is wired in);
//! * `nginx`: nginx with `sendfile on`.
//!
//! How it is measured, so the figures can be trusted:
//! * The edge's HTTP server runs in its own process: this bench binary re-executes itself
//!   with `EDGE_HTTP_BENCH_SERVE=<images dir>` and the child runs `http::serve` — the very
//!   function `substruct-edge` runs — on a default multi-threaded tokio runtime, as the
//!   agent's `main` does. The full agent is not started because it also binds DHCP on an
//!   interface and wants NATS; those are idle during a download and would add nothing but
//!   set-up. The child holds nothing else, so its CPU time is the HTTP server's.
//! * nginx (`/usr/sbin/nginx`, `sendfile on`, `worker_processes auto`) runs from a config in
//!   a temp dir with its own pid/log/temp paths, `-g 'daemon off;'`, on a loopback port.
//! * Server CPU = utime + stime (plus reaped children's) from `/proc/<pid>/stat` of the
//!   server process and all its descendants (nginx's master and workers), before and after.
//! * The clients are the same for every server: `CLIENTS` OS threads in this process, each
//!   with one keep-alive connection, fetching the whole file `FETCHES` times with plain
//!   `GET` requests and discarding the body into a 1 MiB buffer. Client and servers share
//!   the machine's cores; on 2 cores the clients saturate first, so MB/s is similar and
//!   CPU-seconds per GB is what separates servers.
//! * Before timing, one full download from each server is compared byte for byte with the
//!   file, and a `Range` request is checked (206, the right bytes).
//!
//! Prints figures, asserts nothing; the image part is skipped when nginx is missing.
//! Env: ROUNDS (3), CLIENTS (32), FETCHES (2 per client per run), SIZE_MIB (200),
//! RENDERS (3000).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::serve::ListenerExt;
use substruct_edge::dhcp::{LeaseChange, LeaseStore};
use substruct_edge::http::binding::Binding;
use substruct_edge::http::{self, files, HttpSettings, HttpState};
use substruct_edge::intents::IntentTable;
use substruct_wire::{Mac, SiteId};
use tokio_util::sync::CancellationToken;

const NGINX: &str = "/usr/sbin/nginx";
/// Set in the child process: the images directory the edge HTTP server serves.
const SERVE_ENV: &str = "EDGE_HTTP_BENCH_SERVE";
/// Set in the child process too: serve through [`files::SendfileListener`].
const FRONT_ENV: &str = "EDGE_HTTP_BENCH_SENDFILE";
const IMAGE_PATH: &str = "/images/disk.img";
/// The MAC `boot.ipxe` is asked for; the child leases 127.0.0.1 to it, so every render
/// takes the bound path (lease lookup, new token) as a booting machine's does.
const BENCH_MAC: &str = "52:54:00:00:00:01";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The byte at `offset` of the test image (a pattern that is not page-periodic).
fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn write_image(path: &Path, mib: usize) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1024 * 1024];
    for chunk in 0..mib as u64 {
        let base = chunk * buf.len() as u64;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern_byte(base + i as u64);
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (ppid, utime + stime + cutime + cstime in ticks) of one process.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    // After ")": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    Some((num(1)? as u32, num(11)? + num(12)? + num(13)? + num(14)?))
}

/// CPU seconds used so far by `root` and every live descendant (plus reaped children).
fn tree_cpu_seconds(root: u32, ticks_per_s: f64) -> f64 {
    let mut all = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((ppid, ticks)) = proc_stat(pid) {
                    all.push((pid, ppid, ticks));
                }
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    let ticks: u64 = all
        .iter()
        .filter(|p| tree.contains(&p.0))
        .map(|p| p.2)
        .sum();
    ticks as f64 / ticks_per_s
}

// ---------------------------------------------------------------------------------------
// Servers

/// Kills the child process when dropped, also on error paths.
struct Server {
    name: &'static str,
    label: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_connectable(addr: SocketAddr, child: &mut Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before listening on {addr}: {status}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The edge's HTTP server in a child process (this binary, re-executed).
fn start_edge(images: &Path, sendfile: bool) -> Result<Server> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(SERVE_ENV, images);
    if sendfile {
        cmd.env(FRONT_ENV, "1");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot re-execute the bench as the edge server")?;
    let stdout = child.stdout.take().context("edge child has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .with_context(|| format!("edge child said {line:?}, not its address"))?
        .parse()?;
    wait_connectable(addr, &mut child, "edge")?;
    let (name, label) = if sendfile {
        ("edge+sf", "edge, SendfileListener front (proposed)")
    } else {
        ("edge", "edge, http::serve as shipped")
    };
    Ok(Server {
        name,
        label,
        child,
        addr,
    })
}

/// Child-process mode: serve `images` with the edge's HTTP server until killed; with
/// `sendfile`, the same router behind [`files::SendfileListener`] (what `http::serve`
/// would do with the front wired in).
fn serve_edge(images: PathBuf, sendfile: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let state = HttpState::new(
            HttpSettings {
                base: "http://10.77.0.1".into(),
                site: SiteId::new("bench")?,
                nats_url: "nats://10.77.0.1:4222".into(),
                base6: None,
                nats_url6: None,
                ipv6_only: false,
                extra_args: None,
                images_dir: images.clone(),
                ipxe_dir: "/usr/lib/ipxe".into(),
                limits: bench_limits(),
            },
            IntentTable::new(),
        )?;
        let leases_dir = tempfile::tempdir()?;
        let leases = LeaseStore::open(leases_dir.path().join("leases.redb"))?;
        leases.apply(&[LeaseChange::Grant {
            mac: Mac::parse(BENCH_MAC)?,
            ip: std::net::Ipv4Addr::LOCALHOST,
            expires: u64::MAX,
        }])?;
        let state = state.with_binding(Binding::Leases(leases));
        println!("listening {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        if sendfile {
            let front = files::SendfileListener::new(
                listener,
                "/images/",
                &images,
                "application/octet-stream",
                bench_limits(),
            )?;
            axum::serve(
                front.tap_io(|_| {}),
                http::router(state).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await?;
        } else {
            http::serve(listener, state, CancellationToken::new()).await?;
        }
        anyhow::Ok(())
    })
}

/// The default limits, except per source: every bench client comes from 127.0.0.1.
fn bench_limits() -> substruct_edge::http::limits::HttpLimits {
    let limits = substruct_edge::http::limits::HttpLimits::default();
    substruct_edge::http::limits::HttpLimits {
        max_connections_per_source: limits.max_connections,
        ..limits
    }
}

fn start_nginx(dir: &Path, www: &Path) -> Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let d = dir.display();
    let conf = format!(
        "worker_processes auto;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
           access_log off;\n\
           sendfile on;\n\
           tcp_nopush on;\n\
           keepalive_requests 100000;\n\
           default_type application/octet-stream;\n\
           client_body_temp_path {d}/client_body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
           server {{\n\
             listen {addr};\n\
             root {www};\n\
           }}\n\
         }}\n",
        www = www.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut child = Command::new(NGINX)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start nginx")?;
    wait_connectable(addr, &mut child, "nginx")?;
    Ok(Server {
        name: "nginx",
        label: "nginx 1.22, sendfile on",
        child,
        addr,
    })
}

// ---------------------------------------------------------------------------------------
// The client

/// A parsed response head: status, Content-Length, and body bytes already read.
struct Head {
    status: u16,
    length: u64,
    body_start: Vec<u8>,
}

fn read_head(conn: &mut TcpStream, buf: &mut [u8]) -> Result<Head> {
    let mut head = Vec::new();
    loop {
        let n = conn.read(buf)?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).into_owned();
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("bad status line in {text:?}"))?;
            let length = text
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .with_context(|| format!("no Content-Length in {text:?}"))?;
            return Ok(Head {
                status,
                length,
                body_start: head[end + 4..].to_vec(),
            });
        }
        if head.len() > 64 * 1024 {
            bail!("response head longer than 64 KiB");
        }
    }
}

/// One request on `conn`; the body is discarded, or compared with the pattern from
/// `verify_from` on. Returns (status, body bytes).
fn fetch(
    conn: &mut TcpStream,
    buf: &mut [u8],
    range: Option<(u64, u64)>,
    verify_from: Option<u64>,
) -> Result<(u16, u64)> {
    let range = range
        .map(|(a, b)| format!("Range: bytes={a}-{b}\r\n"))
        .unwrap_or_default();
    conn.write_all(format!("GET {IMAGE_PATH} HTTP/1.1\r\nHost: bench\r\n{range}\r\n").as_bytes())?;
    let head = read_head(conn, buf)?;
    if head.body_start.len() as u64 > head.length {
        bail!("more body than Content-Length");
    }
    let mut got = 0u64;
    let check = |bytes: &[u8], at: u64| -> Result<()> {
        if let Some(start) = verify_from {
            for (i, b) in bytes.iter().enumerate() {
                let offset = start + at + i as u64;
                if *b != pattern_byte(offset) {
                    bail!("wrong byte at offset {offset}");
                }
            }
        }
        Ok(())
    };
    check(&head.body_start, 0)?;
    got += head.body_start.len() as u64;
    while got < head.length {
        let want = buf.len().min((head.length - got) as usize);
        let n = conn.read(&mut buf[..want])?;
        if n == 0 {
            bail!("connection closed after {got} of {} bytes", head.length);
        }
        check(&buf[..n], got)?;
        got += n as u64;
    }
    Ok((head.status, got))
}

/// Checks one full download and one range request against the file.
fn check_server(addr: SocketAddr, size: u64) -> Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    let mut buf = vec![0u8; 1 << 20];
    let (status, got) = fetch(&mut conn, &mut buf, None, Some(0))?;
    if status != 200 || got != size {
        bail!("full download: status {status}, {got} of {size} bytes");
    }
    let (a, b) = (size / 3 + 7, size / 3 + 70_000);
    let (status, got) = fetch(&mut conn, &mut buf, Some((a, b)), Some(a))?;
    if status != 206 || got != b - a + 1 {
        bail!("range {a}-{b}: status {status}, {got} bytes");
    }
    Ok(())
}

/// Figures of one timed run against one server.
#[derive(Debug, Clone, Copy)]
struct RunFigures {
    mb_s: f64,
    cpu_s: f64,
    cpu_per_gb: f64,
}

fn run_clients(
    server: &Server,
    clients: usize,
    fetches: usize,
    size: u64,
    ticks: f64,
) -> Result<RunFigures> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut threads = Vec::new();
    for _ in 0..clients {
        let (barrier, addr) = (barrier.clone(), server.addr);
        threads.push(std::thread::spawn(move || -> Result<u64> {
            let conn = TcpStream::connect(addr);
            barrier.wait();
            let mut conn = conn?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            for _ in 0..fetches {
                let (status, got) = fetch(&mut conn, &mut buf, None, None)?;
                if status != 200 || got != size {
                    bail!("status {status}, {got} of {size} bytes");
                }
                total += got;
            }
            Ok(total)
        }));
    }
    let pid = server.child.id();
    let cpu0 = tree_cpu_seconds(pid, ticks);
    barrier.wait();
    let t = Instant::now();
    let mut bytes = 0u64;
    for th in threads {
        bytes += th
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
            .with_context(|| format!("a client of {}", server.name))?;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu_s = tree_cpu_seconds(pid, ticks) - cpu0;
    Ok(RunFigures {
        mb_s: bytes as f64 / 1e6 / secs,
        cpu_s,
        cpu_per_gb: cpu_s / (bytes as f64 / 1e9),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// ---------------------------------------------------------------------------------------

async fn renders(addr: SocketAddr) -> Result<()> {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/boot.ipxe?mac={BENCH_MAC}&platform=pcbios");
    let n = env_or("RENDERS", 3000);
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
    Ok(())
}

fn main() -> Result<()> {
    if let Some(images) = std::env::var_os(SERVE_ENV) {
        return serve_edge(PathBuf::from(images), std::env::var_os(FRONT_ENV).is_some());
    }
    let rounds = env_or("ROUNDS", 3).max(1);
    let clients = env_or("CLIENTS", 32).max(1);
    let fetches = env_or("FETCHES", 2).max(1);
    let size_mib = env_or("SIZE_MIB", 200).max(1);
    let size = size_mib as u64 * 1024 * 1024;
    let ticks = clock_ticks();

    let dir = tempfile::tempdir()?;
    // nginx workers may run as another user: let them reach the file.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let www = dir.path().join("www");
    let images = www.join("images");
    std::fs::create_dir_all(&images)?;
    write_image(&images.join("disk.img"), size_mib)?;
    // Warm the page cache so neither server pays for the first read from disk.
    std::io::copy(
        &mut std::fs::File::open(images.join("disk.img"))?,
        &mut std::io::sink(),
    )?;

    let edge = start_edge(&images, false)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(renders(edge.addr))?;

    if !Path::new(NGINX).exists() {
        println!("image download: skipped ({NGINX} not installed)");
        return Ok(());
    }
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let edge_sf = start_edge(&images, true)?;
    let nginx = start_nginx(&nginx_dir, &www)?;
    let servers = [&edge, &edge_sf, &nginx];
    for server in servers {
        check_server(server.addr, size)
            .with_context(|| format!("{}: content or range check failed", server.name))?;
    }
    println!(
        "content and Range checks passed on all servers; {clients} clients x {fetches} \
         fetches x {size_mib} MiB per run, {rounds} rounds, order rotating"
    );

    let mut figures: Vec<Vec<RunFigures>> = vec![Vec::new(); servers.len()];
    for round in 0..rounds {
        for k in 0..servers.len() {
            let i = (round + k) % servers.len();
            let server = servers[i];
            let f = run_clients(server, clients, fetches, size, ticks)?;
            println!(
                "round {}: {:<7} {:>7.0} MB/s  server CPU {:>6.2} s  {:>6.3} CPU-s/GB",
                round + 1,
                server.name,
                f.mb_s,
                f.cpu_s,
                f.cpu_per_gb
            );
            figures[i].push(f);
        }
    }

    let med =
        |i: usize, pick: fn(&RunFigures) -> f64| median(figures[i].iter().map(pick).collect());
    let nginx_i = servers.len() - 1;
    println!();
    println!(
        "| {clients} clients x {size_mib} MiB, medians of {rounds} | MB/s | server CPU-s/run | CPU-s/GB | MB/s vs nginx (goal >= 0.95x) | CPU/GB vs nginx (goal <= 1.2x) |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, server) in servers.iter().enumerate() {
        println!(
            "| {} | {:.0} | {:.2} | {:.3} | {:.2}x | {:.2}x |",
            server.label,
            med(i, |f| f.mb_s),
            med(i, |f| f.cpu_s),
            med(i, |f| f.cpu_per_gb),
            med(i, |f| f.mb_s) / med(nginx_i, |f| f.mb_s),
            med(i, |f| f.cpu_per_gb) / med(nginx_i, |f| f.cpu_per_gb)
        );
    }
    Ok(())
}
