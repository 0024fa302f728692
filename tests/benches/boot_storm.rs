//! Issue 11: a boot storm with the hostile-LAN limits on. N simulated PXE machines
//! (default 1,000; `SUBSTRUCT_STORM_CLIENTS`) power on at once, each from its own MAC,
//! and do what a BIOS machine does through one edge:
//!
//! 1. DHCP DISCOVER / OFFER / REQUEST / ACK as a PXE ROM (option 60 `PXEClient:Arch:00000`,
//!    options 93, 94, 97; broadcast flag), retransmitting after 4, 8, 16, 32 s;
//! 2. TFTP (from its leased address) the DHCP reply's file (`lpxelinux.0`), `ldlinux.c32`
//!    and `pxelinux.cfg/default` (tsize + blksize 1408, lock-step, 1 s retransmit doubling);
//! 3. HTTP (from its leased address) the `LINUX` of that file (`ipxe.lkrn`), the `chain`
//!    URL of its `APPEND` (`boot.ipxe?mac=…`, filled in as iPXE would), then the script's
//!    kernel and initrd, streaming the bodies;
//! 4. the prospector's own report: the script's kernel command line through
//!    [`substruct_prospector::cmdline::parse`], [`AgentConfig::from_kernel_args`] and
//!    [`substruct_prospector::agent::run_with`] (`--once`, no disk access), with a
//!    synthetic hardware report naming the machine's MAC — so its boot credential
//!    and NATS login are whatever the live image uses.
//!
//! **Ours**: the shipped topology ([`Fleet`]: hub + controller in a core namespace, the
//! site's leaf node and `substruct-edge` in the site namespace, default limits) with a
//! /21 provisioning network so the pool holds every client. End point: every machine
//! in `substruct machines list --json` (polled every second).
//! **Floor**: steps 1–3 against dnsmasq (DHCP + TFTP, `no-ping`, `tftp-max=512` like
//! our total cap, lease max raised) and nginx (static files: the same loaders, kernel and
//! initrd; a `boot.ipxe` rendered by the edge's own template), in the same run.
//!
//! The clients live in one namespace cabled to the site bridge by a veth: DHCP over
//! one socket on `0.0.0.0:68` (bound to the veth) that hands replies to each machine by
//! `xid`; each leased address is added to the veth (`ip -batch`), and the machine binds
//! every later socket to it, so the edge sees 1,000 sources as on a real LAN.
//!
//! Prints total time, p50/p99 per client (file part; report), retransmits and errors
//! per step, and which hostile-LAN limit was hit, from the edge's, leaf's and
//! controller's logs (TFTP transfer caps, HTTP connection caps, DHCP drops, DECLINE,
//! the per-site report rate limit). Asserts nothing.
//!
//! Run as root: `cargo bench -p substruct-tests --bench boot_storm`
//! (`SUBSTRUCT_STORM_CLIENTS=100` for a quick run, `SUBSTRUCT_STORM_ONLY=ours|floor`).
//! Builds the site binaries (release) and the prospector live image first; skips
//! (exit 0) when not root or a tool is missing.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use substruct_edge::dhcp::packet::find_option;
use substruct_edge::http::script::{
    render_boot_script, render_pxelinux_default, Platform, ScriptContext,
};
use substruct_prospector::agent::{self, AgentConfig, AgentTuning, Outcome};
use substruct_testkit::netns::{Netns, NsProcess};
use substruct_tests::fleet::{Fleet, FleetOptions};
use substruct_tests::{prospector_image, workspace_root, BRIDGE, EDGE_IP};
use substruct_wire::report::{Cpu, Dmi, HardwareReport, Memory, Nic};
use substruct_wire::{Mac, SiteId};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How many machines (env).
const CLIENTS_ENV: &str = "SUBSTRUCT_STORM_CLIENTS";
const DEFAULT_CLIENTS: usize = 1000;
/// The provisioning network: a /21, so the pool holds every client.
const STORM_CIDR: &str = "10.77.0.1/21";
const STORM_PREFIX: u8 = 21;
const POOL_LO: &str = "10.77.1.0";
const POOL_HI: &str = "10.77.7.250";
const SITE: &str = "s1";
/// The clients' interface (in their namespace) and its peer on the site bridge.
const CLIENT_IF: &str = "c0";
const CLIENT_PEER_IF: &str = "stormc0";
/// Serial numbers of the simulated machines (how the inventory count finds them).
const SERIAL_PREFIX: &str = "STORM-";
/// Give up on the storm after this long.
const STORM_TIMEOUT: Duration = Duration::from_secs(900);
/// One HTTP request's limit (a kernel at the tail of the storm takes a while).
const HTTP_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a machine starts its boot over after a failed step (a real one reboots).
const BOOT_ATTEMPTS: u32 = 5;
const PXELINUX_FILES: [&str; 2] = [
    "/usr/lib/PXELINUX/lpxelinux.0",
    "/usr/lib/syslinux/modules/bios/ldlinux.c32",
];
const IPXE_LKRN: &str = "/usr/lib/ipxe/ipxe.lkrn";

// ---------------------------------------------------------------------------------------
// Counters and results

/// What went wrong and how often, across all machines.
#[derive(Default)]
struct Counters {
    dhcp_retransmits: AtomicU64,
    dhcp_naks: AtomicU64,
    tftp_retransmits: AtomicU64,
    /// Retried failures, by step and message.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn error(&self, step: &str, e: &anyhow::Error) {
        let mut msg = format!("{e:#}");
        // Keep the causes groupable: no addresses or numbers that differ per machine.
        msg.truncate(160);
        let mut m = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(format!("{step}: {msg}")).or_default() += 1;
    }
}

/// One machine's times from the storm's start.
#[derive(Debug, Clone, Copy)]
struct Times {
    leased: Duration,
    files: Duration,
    reported: Option<Duration>,
}

struct StormResult {
    label: &'static str,
    n: usize,
    times: Vec<Times>,
    failures: BTreeMap<String, usize>,
    counters: Arc<Counters>,
    /// Ours: from the start to every machine in the inventory.
    inventory: Option<Duration>,
    /// The storm's wall time (the last machine done).
    wall: Duration,
    /// Limits hit, from the servers' logs.
    limits: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// DHCP over one shared socket

const DHCP_DISCOVER: u8 = 1;
const DHCP_OFFER: u8 = 2;
const DHCP_REQUEST: u8 = 3;
const DHCP_ACK: u8 = 5;
const DHCP_NAK: u8 = 6;
const PXE_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";

/// The client namespace's shared plumbing: the DHCP socket and its demultiplexer, and
/// the `ip -batch` that adds leased addresses to the interface.
struct Net {
    dhcp: UdpSocket,
    waiting: Mutex<HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>>,
    addr_batch: Mutex<ChildStdin>,
}

impl Net {
    /// Reads DHCP replies forever, handing each to the machine waiting on its xid.
    async fn demux(self: Arc<Self>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, _)) = self.dhcp.recv_from(&mut buf).await else {
                continue;
            };
            let Some(xid) = buf
                .get(4..8)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            else {
                continue;
            };
            let tx = self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&xid)
                .cloned();
            if let Some(tx) = tx {
                let _ = tx.send(buf[..n].to_vec());
            }
        }
    }

    /// Adds `ip` to the client interface and waits until a socket can bind it.
    async fn add_address(&self, ip: Ipv4Addr) -> Result<()> {
        {
            let mut stdin = self.addr_batch.lock().unwrap_or_else(|p| p.into_inner());
            writeln!(stdin, "address add {ip}/{STORM_PREFIX} dev {CLIENT_IF}")
                .and_then(|_| stdin.flush())
                .context("writing to `ip -batch`")?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::UdpSocket::bind((ip, 0)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{ip} not on {CLIENT_IF} after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A lease: the address, the server, and the boot file.
#[derive(Debug, Clone)]
struct Lease {
    ip: Ipv4Addr,
    server: Ipv4Addr,
    file: String,
}

fn push_opt(p: &mut Vec<u8>, code: u8, value: &[u8]) {
    p.push(code);
    p.push(value.len() as u8);
    p.extend_from_slice(value);
}

/// A PXE ROM's DISCOVER or REQUEST.
fn dhcp_packet(kind: u8, xid: u32, mac: &Mac, guid: &[u8; 16], req: Option<&Lease>) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast: no address to receive a unicast on yet
    p[28..34].copy_from_slice(&mac.0);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    push_opt(&mut p, 53, &[kind]);
    if let Some(l) = req {
        push_opt(&mut p, 50, &l.ip.octets());
        push_opt(&mut p, 54, &l.server.octets());
    }
    push_opt(&mut p, 57, &1260u16.to_be_bytes());
    push_opt(&mut p, 93, &[0, 0]);
    push_opt(&mut p, 94, &[1, 2, 1]);
    let mut uuid = vec![0u8];
    uuid.extend_from_slice(guid);
    push_opt(&mut p, 97, &uuid);
    push_opt(&mut p, 60, PXE_CLASS);
    push_opt(
        &mut p,
        55,
        &[
            1, 2, 3, 4, 5, 6, 11, 12, 13, 15, 16, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54,
            58, 59, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135,
        ],
    );
    p.push(255);
    if p.len() < 300 {
        p.resize(300, 0);
    }
    p
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

/// A reply's message type and lease, if it is a BOOTREPLY for `mac`.
fn parse_reply(b: &[u8], mac: &Mac) -> Option<(u8, Lease)> {
    if b.len() < 240 || b[0] != 2 || b.get(28..34)? != mac.0 {
        return None;
    }
    let kind = *find_option(b, 53)?.first()?;
    let ip = ipv4(&b[16..20])?;
    let siaddr = ipv4(&b[20..24])?;
    let server = find_option(b, 54).and_then(|v| ipv4(&v)).unwrap_or(siaddr);
    let file = find_option(b, 67)
        .or_else(|| Some(b[108..236].to_vec()))
        .map(|f| {
            let end = f.iter().position(|&c| c == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        })
        .unwrap_or_default();
    // The TFTP server is siaddr when set (dnsmasq and the edge both set it).
    let server = if siaddr.is_unspecified() {
        server
    } else {
        siaddr
    };
    Some((kind, Lease { ip, server, file }))
}

/// Waits up to `wait` for a reply of one of `kinds`.
async fn await_reply(
    rx: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    mac: &Mac,
    kinds: &[u8],
    wait: Duration,
) -> Option<(u8, Lease)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let pkt = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        if let Some((kind, lease)) = parse_reply(&pkt, mac) {
            if kinds.contains(&kind) {
                return Some((kind, lease));
            }
        }
    }
}

/// DISCOVER → OFFER → REQUEST → ACK, retransmitting as a PXE ROM does.
async fn dora(
    net: &Net,
    counters: &Counters,
    xid: u32,
    mac: &Mac,
    guid: &[u8; 16],
) -> Result<Lease> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    net.waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(xid, tx);
    let broadcast = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    let result = async {
        let waits = [4u64, 8, 16, 32];
        let (mut timeouts, mut naks) = (0usize, 0u32);
        let mut first = true;
        while let Some(&wait) = waits.get(timeouts) {
            if !first {
                counters.dhcp_retransmits.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let discover = dhcp_packet(DHCP_DISCOVER, xid, mac, guid, None);
            net.dhcp.send_to(&discover, broadcast).await?;
            let Some((_, offer)) =
                await_reply(&mut rx, mac, &[DHCP_OFFER], Duration::from_secs(wait)).await
            else {
                timeouts += 1;
                continue;
            };
            let mut acked = None;
            for (j, wait) in [4u64, 8].into_iter().enumerate() {
                if j > 0 {
                    counters.dhcp_retransmits.fetch_add(1, Ordering::Relaxed);
                }
                let request = dhcp_packet(DHCP_REQUEST, xid, mac, guid, Some(&offer));
                net.dhcp.send_to(&request, broadcast).await?;
                let reply = await_reply(
                    &mut rx,
                    mac,
                    &[DHCP_ACK, DHCP_NAK],
                    Duration::from_secs(wait),
                )
                .await;
                if reply.is_some() {
                    acked = reply;
                    break;
                }
            }
            match acked {
                Some((DHCP_ACK, ack)) => {
                    return Ok(Lease {
                        file: if ack.file.is_empty() {
                            offer.file
                        } else {
                            ack.file
                        },
                        ..ack
                    })
                }
                // A NAK starts over at once, as a PXE ROM does.
                Some(_) => {
                    counters.dhcp_naks.fetch_add(1, Ordering::Relaxed);
                    naks += 1;
                    if naks > 20 {
                        bail!("20 DHCPNAKs in a row");
                    }
                }
                None => timeouts += 1,
            }
        }
        bail!("no lease after {} DISCOVERs", waits.len())
    }
    .await;
    net.waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&xid);
    result
}

// ---------------------------------------------------------------------------------------
// TFTP

const TFTP_BLKSIZE: usize = 1408;

fn tftp_rrq(file: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    for part in [
        file,
        "octet",
        "tsize",
        "0",
        "blksize",
        &TFTP_BLKSIZE.to_string(),
    ] {
        p.extend_from_slice(part.as_bytes());
        p.push(0);
    }
    p
}

/// Reads `file` from `server` over a socket bound to `local`, lock-step, as a PXE ROM.
async fn tftp_get(
    local: Ipv4Addr,
    server: Ipv4Addr,
    file: &str,
    counters: &Counters,
) -> Result<Vec<u8>> {
    let sock = UdpSocket::bind((local, 0)).await?;
    let mut last = tftp_rrq(file);
    let mut last_to = SocketAddr::from((server, 69));
    let mut peer: Option<SocketAddr> = None;
    let mut blksize = 512usize;
    let mut expect: u16 = 1;
    let mut data = Vec::new();
    let mut wait = Duration::from_secs(1);
    let mut tries = 0;
    let mut buf = vec![0u8; 65536];
    sock.send_to(&last, last_to).await?;
    loop {
        let (n, from) = match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            Err(_) => {
                tries += 1;
                if tries > 5 {
                    bail!("TFTP {file}: timed out (block {expect})");
                }
                counters.tftp_retransmits.fetch_add(1, Ordering::Relaxed);
                sock.send_to(&last, last_to).await?;
                wait = (wait * 2).min(Duration::from_secs(8));
                continue;
            }
            Ok(r) => r?,
        };
        match peer {
            Some(p) if p != from => continue,
            None if from.ip() != IpAddr::V4(server) => continue,
            _ => {}
        }
        let pkt = &buf[..n];
        if pkt.len() < 4 {
            continue;
        }
        let opcode = u16::from_be_bytes([pkt[0], pkt[1]]);
        match opcode {
            6 if peer.is_none() => {
                peer = Some(from);
                let mut fields = pkt[2..].split(|&b| b == 0);
                while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                    if k.eq_ignore_ascii_case(b"blksize") {
                        blksize = std::str::from_utf8(v)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(512);
                    }
                }
                last = vec![0, 4, 0, 0];
                last_to = from;
            }
            3 => {
                peer = Some(from);
                last_to = from;
                let block = u16::from_be_bytes([pkt[2], pkt[3]]);
                if block == expect {
                    data.extend_from_slice(&pkt[4..]);
                    last = vec![0, 4, pkt[2], pkt[3]];
                    expect = expect.wrapping_add(1);
                    tries = 0;
                    wait = Duration::from_secs(1);
                    if pkt.len() - 4 < blksize {
                        sock.send_to(&last, last_to).await?;
                        return Ok(data);
                    }
                } else if block != expect.wrapping_sub(1) {
                    continue;
                }
            }
            5 => {
                let msg = String::from_utf8_lossy(&pkt[4..]);
                bail!(
                    "TFTP {file}: error {}: {}",
                    u16::from_be_bytes([pkt[2], pkt[3]]),
                    msg.trim_end_matches('\0')
                );
            }
            _ => continue,
        }
        sock.send_to(&last, last_to).await?;
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// GETs `url`; returns the body when `keep`, else only counts it.
async fn http_get(client: &reqwest::Client, url: &str, keep: bool) -> Result<(u64, String)> {
    let mut resp = client.get(url).send().await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("HTTP {status} for {}", url.split('?').next().unwrap_or(url));
    }
    let mut len = 0u64;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        len += chunk.len() as u64;
        if keep {
            body.extend_from_slice(&chunk);
        }
    }
    Ok((len, String::from_utf8_lossy(&body).into_owned()))
}

/// The first line of `text` starting with `word ` (case-insensitive), without it.
fn line_after<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    text.lines().map(str::trim).find_map(|l| {
        let (head, rest) = l.split_once(char::is_whitespace)?;
        head.eq_ignore_ascii_case(word).then_some(rest.trim())
    })
}

// ---------------------------------------------------------------------------------------
// One machine

struct Machine {
    index: usize,
    mac: Mac,
    guid: [u8; 16],
    xid: u32,
}

impl Machine {
    fn new(index: usize, mac_byte: u8) -> Self {
        let i = index as u32;
        let mac = Mac([
            0x02,
            0x5b,
            mac_byte,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
        ]);
        let mut guid = [0u8; 16];
        guid[..4].copy_from_slice(&0x5b0c_57a0u32.to_be_bytes());
        guid[12..].copy_from_slice(&i.to_be_bytes());
        Self {
            index,
            mac,
            guid,
            xid: 0x5b00_0000 ^ (u32::from(mac_byte) << 20) ^ i,
        }
    }

    fn mac_text(&self) -> String {
        self.mac.to_string().to_ascii_lowercase()
    }

    fn uuid_text(&self) -> String {
        let g = &self.guid;
        format!(
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13],
            g[14], g[15]
        )
    }

    /// What the prospector would gather on this machine (a small server).
    fn report(&self) -> HardwareReport {
        HardwareReport {
            prospector_version: env!("CARGO_PKG_VERSION").into(),
            dmi: Dmi {
                sys_vendor: Some("QEMU".into()),
                product_name: Some("Storm PC".into()),
                product_serial: Some(format!("{SERIAL_PREFIX}{:05}", self.index)),
                product_uuid: Some(self.uuid_text()),
                ..Dmi::default()
            },
            cpu: Cpu {
                model: Some("Storm CPU".into()),
                sockets: 1,
                cores: 4,
                threads: 8,
                ..Cpu::default()
            },
            memory: Memory {
                total_bytes: 16 << 30,
                dimms: vec![],
            },
            nics: vec![Nic {
                name: "eno1".into(),
                mac: self.mac,
                driver: Some("virtio_net".into()),
                pci_address: Some("0000:00:03.0".into()),
                speed_mbps: Some(1000),
                carrier: Some(true),
            }],
            ..HardwareReport::default()
        }
    }

    /// A whole boot; a failed step starts it over (as a machine falls back to PXE), up
    /// to [`BOOT_ATTEMPTS`] times.
    async fn boot(&self, env: &StormEnv) -> Result<Times> {
        let mut last = anyhow!("no attempt");
        let mut lease: Option<Lease> = None;
        for _ in 0..BOOT_ATTEMPTS {
            match self.boot_once(env, &mut lease).await {
                Ok(t) => return Ok(t),
                Err((step, e)) => {
                    env.counters.error(step, &e);
                    last = e.context(step);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(last)
    }

    async fn boot_once(
        &self,
        env: &StormEnv,
        lease_slot: &mut Option<Lease>,
    ) -> std::result::Result<Times, (&'static str, anyhow::Error)> {
        let c = &env.counters;
        let lease = dora(&env.net, c, self.xid, &self.mac, &self.guid)
            .await
            .map_err(|e| ("dhcp", e))?;
        if lease_slot.as_ref().map(|l| l.ip) != Some(lease.ip) {
            env.net
                .add_address(lease.ip)
                .await
                .map_err(|e| ("address", e))?;
            *lease_slot = Some(lease.clone());
        }
        let leased = env.t0.elapsed();
        let ip = lease.ip;
        let file = if lease.file.is_empty() {
            "lpxelinux.0".to_string()
        } else {
            lease.file.clone()
        };
        tftp_get(ip, lease.server, &file, c)
            .await
            .map_err(|e| ("tftp", e))?;
        tftp_get(ip, lease.server, "ldlinux.c32", c)
            .await
            .map_err(|e| ("tftp", e))?;
        let cfg = tftp_get(ip, lease.server, "pxelinux.cfg/default", c)
            .await
            .map_err(|e| ("tftp", e))?;
        let cfg = String::from_utf8_lossy(&cfg).into_owned();
        let ipxe_url = line_after(&cfg, "LINUX")
            .map(str::to_owned)
            .ok_or_else(|| ("tftp", anyhow!("pxelinux.cfg/default has no LINUX line")))?;
        let chain = line_after(&cfg, "APPEND")
            .and_then(|a| a.split_whitespace().skip_while(|w| *w != "chain").nth(1))
            .ok_or_else(|| ("tftp", anyhow!("pxelinux.cfg/default has no chain URL")))?
            .replace("${net0/mac}", &self.mac_text())
            .replace("${uuid}", &self.uuid_text())
            .replace("${buildarch}", "i386")
            .replace("${platform}", "pcbios");

        let http = reqwest::Client::builder()
            .local_address(IpAddr::V4(ip))
            .no_proxy()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| ("http", e.into()))?;
        http_get(&http, &ipxe_url, false)
            .await
            .map_err(|e| ("http ipxe.lkrn", e))?;
        // iPXE chains again while the edge says "retry" (it sleeps 5 s in between).
        let mut script = String::new();
        for attempt in 0..5 {
            let (_, text) = http_get(&http, &chain, true)
                .await
                .map_err(|e| ("http boot.ipxe", e))?;
            if line_after(&text, "kernel").is_some() {
                script = text;
                break;
            }
            c.error(
                "boot.ipxe",
                &anyhow!("a script without a kernel (retry script)"),
            );
            if attempt < 4 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
        let kernel_line = line_after(&script, "kernel")
            .map(str::to_owned)
            .ok_or_else(|| ("http boot.ipxe", anyhow!("no kernel line after 5 tries")))?;
        let (kernel_url, cmdline) = kernel_line
            .split_once(char::is_whitespace)
            .unwrap_or((&kernel_line, ""));
        let initrd_url = line_after(&script, "initrd")
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .ok_or_else(|| ("http boot.ipxe", anyhow!("the script has no initrd")))?;
        http_get(&http, kernel_url, false)
            .await
            .map_err(|e| ("http kernel", e))?;
        http_get(&http, &initrd_url, false)
            .await
            .map_err(|e| ("http initrd", e))?;
        let files = env.t0.elapsed();
        let reported = if env.report {
            self.report_over_nats(cmdline, &env.cancel)
                .await
                .map_err(|e| ("report", e))?;
            Some(env.t0.elapsed())
        } else {
            None
        };
        Ok(Times {
            leased,
            files,
            reported,
        })
    }

    /// The prospector's own path from its kernel command line to an acknowledged report.
    async fn report_over_nats(&self, cmdline: &str, cancel: &CancellationToken) -> Result<()> {
        let kernel = substruct_prospector::cmdline::parse(cmdline);
        if kernel.token.is_none() {
            bail!("the script's kernel command line carries no boot credential");
        }
        let mut cfg = AgentConfig::from_kernel_args(&kernel, true)?;
        // No disk is written in a bench; the edge URL stays (the login's renewal uses it).
        cfg.storage = None;
        match agent::run_with(
            cfg,
            AgentTuning::default(),
            None,
            self.report(),
            cancel.clone(),
        )
        .await?
        {
            Outcome::Cancelled => bail!("cancelled before the controller acknowledged"),
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The storm

/// What every machine of one storm shares.
struct StormEnv {
    net: Arc<Net>,
    counters: Arc<Counters>,
    t0: Instant,
    report: bool,
    cancel: CancellationToken,
}

/// Kills the `ip -batch` child when dropped.
struct BatchGuard(Child);

impl Drop for BatchGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates the clients' namespace, cabled to `server_ns`'s bridge.
fn client_namespace(server_ns: &Netns, tag: &str) -> Result<Netns> {
    let ns = Netns::create(tag)?;
    server_ns.veth_pair(CLIENT_PEER_IF, &ns, CLIENT_IF)?;
    server_ns.ip(&["link", "set", CLIENT_PEER_IF, "master", BRIDGE])?;
    Ok(ns)
}

/// Runs `n` machines at once from `ns`; returns each one's times or failure.
fn storm(
    ns: &Netns,
    n: usize,
    mac_byte: u8,
    report: bool,
    counters: Arc<Counters>,
    t0: Instant,
) -> Result<Vec<std::result::Result<Times, String>>> {
    let batch = Command::new("ip")
        .args(["-n", ns.name(), "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting `ip -batch`")?;
    let mut guard = BatchGuard(batch);
    let stdin = guard.0.stdin.take().context("ip -batch stdin")?;
    let dhcp = ns.run_inside(|| {
        substruct_edge::dhcp::bind_socket(CLIENT_IF, Ipv4Addr::UNSPECIFIED, 68)
            .context("binding 0.0.0.0:68 on the client interface")
    })?;
    // One socket takes every machine's replies: a deep buffer, so the bench's own
    // client drops nothing in a burst (SO_RCVBUFFORCE: root).
    nix::sys::socket::setsockopt(&dhcp, nix::sys::socket::sockopt::RcvBufForce, &(16 << 20))
        .context("SO_RCVBUFFORCE on the client DHCP socket")?;
    let handle = ns.spawn_inside(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let net = Arc::new(Net {
                dhcp: UdpSocket::from_std(dhcp)?,
                waiting: Mutex::new(HashMap::new()),
                addr_batch: Mutex::new(stdin),
            });
            let demux = tokio::spawn(net.clone().demux());
            let env = Arc::new(StormEnv {
                net,
                counters,
                t0,
                report,
                cancel: CancellationToken::new(),
            });
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let env = env.clone();
                    tokio::spawn(async move {
                        let m = Machine::new(i, mac_byte);
                        match tokio::time::timeout(STORM_TIMEOUT, m.boot(&env)).await {
                            Ok(Ok(t)) => Ok(t),
                            Ok(Err(e)) => Err(format!("{e:#}")),
                            Err(_) => Err("not done within the storm timeout".into()),
                        }
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(n);
            for t in tasks {
                out.push(t.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
            }
            env.cancel.cancel();
            demux.abort();
            Ok::<_, anyhow::Error>(out)
        })
    });
    let out = handle
        .join()
        .map_err(|_| anyhow!("the storm thread panicked"))??;
    drop(guard);
    Ok(out)
}

/// Groups the failed machines' messages.
fn failures(results: &[std::result::Result<Times, String>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in results {
        if let Err(e) = r {
            let mut e = e.clone();
            e.truncate(200);
            *m.entry(e).or_default() += 1;
        }
    }
    m
}

/// Sends the prospector's console lines (one or two per machine) to `path` while `f` runs.
fn quiet_stdout<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    let log = std::fs::File::create(path)?;
    std::io::stdout().flush()?;
    let saved = nix::unistd::dup(std::io::stdout())?;
    nix::unistd::dup2_stdout(&log)?;
    let out = f();
    std::io::stdout().flush()?;
    nix::unistd::dup2_stdout(&saved)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Ours: the shipped topology

/// Log lines that say a hostile-LAN limit refused something, per server.
const LIMIT_NEEDLES: [(&str, &str); 7] = [
    ("edge", "TFTP read request refused"),
    ("edge", "HTTP connection refused"),
    ("edge", "dhcp: dropped packet"),
    ("edge", "decline"),
    ("edge", "asker is not the address bound"),
    ("controller", "rate limited"),
    ("leaf", "Authorization Violation"),
];

/// Counts [`LIMIT_NEEDLES`] in the servers' logs, with an example line each.
fn limits_hit(logs: &[(&str, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (who, needle) in LIMIT_NEEDLES {
        let Some((_, text)) = logs.iter().find(|(w, _)| *w == who) else {
            continue;
        };
        let text = substruct_testkit::qemu::strip_ansi(text);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.to_ascii_lowercase()
                    .contains(&needle.to_ascii_lowercase())
            })
            .collect();
        // Refusal logs are rate-limited: the `suppressed=N` field counts the rest.
        let suppressed: u64 = lines
            .iter()
            .filter_map(|l| {
                l.split_once("suppressed=")
                    .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|d| d.parse::<u64>().ok())
            })
            .sum();
        if let Some(first) = lines.first() {
            let mut example = first.to_string();
            example.truncate(240);
            out.push(format!(
                "{who}: {needle:?}: {} log lines (+{suppressed} suppressed); e.g. {example}",
                lines.len()
            ));
        }
    }
    out
}

fn count_storm_machines(fleet: &Fleet) -> Result<usize> {
    Ok(fleet
        .machines()?
        .iter()
        .filter(|m| {
            m.pointer("/facts/dmi/product_serial")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|s| s.starts_with(SERIAL_PREFIX))
        })
        .count())
}

fn run_ours(n: usize, out_dir: &Path) -> Result<StormResult> {
    let fleet = Fleet::start_with(
        "storm",
        &[SITE],
        FleetOptions {
            edge_cidr: STORM_CIDR.into(),
            pool: format!("{POOL_LO}-{POOL_HI}"),
        },
    )?;
    let site = fleet.site(SITE)?;
    let clients = client_namespace(&site.ns, "stormcl")?;
    let counters = Arc::new(Counters::default());
    let t0 = Instant::now();
    let (results, inventory, wall) = std::thread::scope(|scope| -> Result<_> {
        let c = counters.clone();
        let ns = &clients;
        let storm_thread = scope.spawn(move || {
            let r = quiet_stdout(&out_dir.join("ours-prospector.log"), || {
                storm(ns, n, 0x01, true, c, t0)
            });
            (r, t0.elapsed())
        });
        let mut inventory = None;
        while inventory.is_none() && t0.elapsed() < STORM_TIMEOUT + Duration::from_secs(60) {
            if count_storm_machines(&fleet).unwrap_or(0) >= n {
                inventory = Some(t0.elapsed());
            } else if storm_thread.is_finished() {
                // Nothing more is coming; one last look.
                std::thread::sleep(Duration::from_secs(3));
                if count_storm_machines(&fleet).unwrap_or(0) >= n {
                    inventory = Some(t0.elapsed());
                }
                break;
            } else {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let (r, wall) = storm_thread
            .join()
            .map_err(|_| anyhow!("the storm thread panicked"))?;
        Ok((r??, inventory, wall))
    })?;
    let in_inventory = count_storm_machines(&fleet).unwrap_or(0);
    if in_inventory < n {
        eprintln!("boot_storm: only {in_inventory} of {n} machines in the inventory");
    }
    let site = fleet.site(SITE)?;
    let mut logs = vec![("leaf", site.leaf.process().log_text())];
    if let Some(e) = &site.edge {
        logs.push(("edge", e.log_text()));
        let _ = std::fs::write(out_dir.join("edge.log"), e.log_text());
    }
    if let Some(c) = &fleet.controller {
        logs.push(("controller", c.log_text()));
        let _ = std::fs::write(out_dir.join("controller.log"), c.log_text());
    }
    drop(clients);
    drop(fleet);
    Ok(StormResult::new(
        "ours: substruct-edge + hub/leaf NATS + controller",
        &results,
        counters,
        inventory,
        wall,
        limits_hit(&logs),
    ))
}

// ---------------------------------------------------------------------------------------
// The floor: dnsmasq + nginx

fn wait_listening(
    ns: &Netns,
    args: &[&str],
    needle: &str,
    procs: &mut [&mut NsProcess],
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if ns.exec("ss", args).unwrap_or_default().contains(needle) {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {needle} after 15 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_floor(n: usize, image: &Path, out_dir: &Path) -> Result<StormResult> {
    let ns = Netns::create("stormfl")?;
    ns.add_bridge(BRIDGE, STORM_CIDR)?;
    let dir = tempfile::Builder::new()
        .prefix("substruct-storm-floor-")
        .tempdir()?;
    let (tftp, www, run) = (
        dir.path().join("tftp"),
        dir.path().join("www"),
        dir.path().join("run"),
    );
    for d in [
        tftp.join("pxelinux.cfg"),
        www.join("images/prospector"),
        run.clone(),
    ] {
        std::fs::create_dir_all(d)?;
    }
    for f in PXELINUX_FILES {
        let name = Path::new(f).file_name().context("file name")?;
        std::fs::copy(f, tftp.join(name)).with_context(|| format!("copying {f}"))?;
    }
    std::fs::copy(IPXE_LKRN, www.join("ipxe.lkrn"))?;
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(image.join(f), www.join("images/prospector").join(f))?;
    }
    let base = format!("http://{EDGE_IP}");
    std::fs::write(
        tftp.join("pxelinux.cfg/default"),
        render_pxelinux_default(&base),
    )?;
    let ctx = ScriptContext {
        base: base.clone(),
        site: SiteId::new(SITE.to_string())?,
        nats_url: format!("nats://{EDGE_IP}:4222"),
        token: None,
        login_seed: None,
        mac: Mac([0x02, 0x5b, 0, 0, 0, 1]),
        platform: Platform::from_ipxe(Some("pcbios")),
        extra_args: None,
    };
    std::fs::write(www.join("boot.ipxe"), render_boot_script(None, &ctx))?;

    let conf = run.join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "port=0\ninterface={BRIDGE}\nbind-interfaces\n\
             dhcp-range={POOL_LO},{POOL_HI},255.255.248.0,1h\n\
             dhcp-lease-max=8192\ndhcp-authoritative\nno-ping\n\
             dhcp-leasefile={leases}\n\
             dhcp-boot=lpxelinux.0\nenable-tftp\ntftp-root={tftp}\ntftp-max=512\n\
             log-facility={log}\n",
            leases = run.join("leases").display(),
            tftp = tftp.display(),
            log = run.join("dnsmasq.log").display(),
        ),
    )?;
    let conf_arg = format!("--conf-file={}", conf.display());
    let mut dnsmasq = NsProcess::spawn(
        &ns,
        "dnsmasq",
        "dnsmasq",
        &[
            "--keep-in-foreground",
            &conf_arg,
            "--user=root",
            "--group=root",
        ],
        run.join("dnsmasq.out"),
    )?;
    let d = run.display();
    let nginx_conf = run.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "worker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n\
               default_type application/octet-stream;\n\
               client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               server {{ listen {EDGE_IP}:80; root {www}; }}\n}}\n",
            www = www.display()
        ),
    )?;
    let conf_arg = nginx_conf.display().to_string();
    let prefix = run.display().to_string();
    let error_log = run.join("error.log").display().to_string();
    let mut nginx = NsProcess::spawn(
        &ns,
        "nginx",
        "nginx",
        &[
            "-p",
            &prefix,
            "-e",
            &error_log,
            "-c",
            &conf_arg,
            "-g",
            "daemon off;",
        ],
        run.join("nginx.out"),
    )?;
    wait_listening(&ns, &["-lunH"], ":69 ", &mut [&mut dnsmasq, &mut nginx])?;
    wait_listening(
        &ns,
        &["-ltnH"],
        &format!("{EDGE_IP}:80"),
        &mut [&mut dnsmasq, &mut nginx],
    )?;
    let clients = client_namespace(&ns, "stormfc")?;
    let counters = Arc::new(Counters::default());
    let t0 = Instant::now();
    let c = counters.clone();
    let results = quiet_stdout(&out_dir.join("floor-clients.log"), || {
        storm(&clients, n, 0x02, false, c, t0)
    })??;
    let wall = t0.elapsed();
    let _ = std::fs::copy(run.join("dnsmasq.log"), out_dir.join("dnsmasq.log"));
    let dnsmasq_log = std::fs::read_to_string(run.join("dnsmasq.log")).unwrap_or_default();
    let mut limits = Vec::new();
    for needle in [
        "max tftp",
        "too many",
        "no address range available",
        "lease-max",
    ] {
        let count = dnsmasq_log
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains(needle))
            .count();
        if count > 0 {
            limits.push(format!("dnsmasq: {needle:?}: {count} log lines"));
        }
    }
    drop(clients);
    drop(nginx);
    drop(dnsmasq);
    drop(ns);
    Ok(StormResult::new(
        "floor: dnsmasq (DHCP+TFTP) + nginx, file part only",
        &results,
        counters,
        None,
        wall,
        limits,
    ))
}

// ---------------------------------------------------------------------------------------
// Printing

fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    match (pct(&v, 0.5), pct(&v, 0.99), v.last()) {
        (Some(a), Some(b), Some(m)) => format!("p50 {a:6.1} s  p99 {b:6.1} s  max {m:6.1} s"),
        _ => "-".into(),
    }
}

impl StormResult {
    fn new(
        label: &'static str,
        results: &[std::result::Result<Times, String>],
        counters: Arc<Counters>,
        inventory: Option<Duration>,
        wall: Duration,
        limits: Vec<String>,
    ) -> Self {
        Self {
            label,
            n: results.len(),
            times: results
                .iter()
                .filter_map(|r| r.as_ref().ok().copied())
                .collect(),
            failures: failures(results),
            counters,
            inventory,
            wall,
            limits,
        }
    }
}

fn print_result(r: &StormResult) {
    let ok = r.times.len();
    println!();
    println!("== {} ==", r.label);
    println!(
        "  machines done: {ok} of {}; storm wall time {:.1} s",
        r.n,
        r.wall.as_secs_f64()
    );
    if let Some(t) = r.inventory {
        println!(
            "  all {} in the inventory after {:.1} s",
            r.n,
            t.as_secs_f64()
        );
    } else if r.label.starts_with("ours") {
        println!("  NOT all machines reached the inventory");
    }
    let secs = |f: fn(&Times) -> Option<Duration>| -> Vec<f64> {
        r.times
            .iter()
            .filter_map(f)
            .map(|d| d.as_secs_f64())
            .collect()
    };
    println!(
        "  lease (DHCP)           {}",
        stats(secs(|t| Some(t.leased)))
    );
    println!(
        "  files (DHCP+TFTP+HTTP) {}",
        stats(secs(|t| Some(t.files)))
    );
    let reported = secs(|t| t.reported);
    if !reported.is_empty() {
        println!("  report acknowledged    {}", stats(reported));
    }
    println!(
        "  retransmits: DHCP {} (+{} NAKs restarted), TFTP {}",
        r.counters.dhcp_retransmits.load(Ordering::Relaxed),
        r.counters.dhcp_naks.load(Ordering::Relaxed),
        r.counters.tftp_retransmits.load(Ordering::Relaxed)
    );
    let errors = r.counters.errors.lock().unwrap_or_else(|p| p.into_inner());
    if errors.is_empty() {
        println!("  errors (retried): none");
    } else {
        println!("  errors (retried), by step:");
        for (e, c) in errors.iter().take(12) {
            println!("    {c:>5} x {e}");
        }
    }
    if !r.failures.is_empty() {
        println!("  FAILED machines:");
        for (e, c) in r.failures.iter().take(12) {
            println!("    {c:>5} x {e}");
        }
    }
    if r.limits.is_empty() {
        println!("  limits hit: none (no refusal in the servers' logs)");
    } else {
        println!("  limits hit / refusals logged:");
        for l in &r.limits {
            println!("    {l}");
        }
    }
}

// ---------------------------------------------------------------------------------------

fn missing_prerequisite() -> Option<String> {
    if !substruct_testkit::can_use_netns() {
        return Some("needs root and `ip netns`".into());
    }
    for tool in ["dnsmasq", "nginx", "nats-server", "ss", "busybox", "cpio"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    for f in PXELINUX_FILES.iter().chain([&IPXE_LKRN]) {
        if !Path::new(f).exists() {
            return Some(format!(
                "{f} is missing (packages pxelinux syslinux-common ipxe)"
            ));
        }
    }
    None
}

/// `cargo build --release` of the binaries the fleet runs (the bench is in target/release).
fn build_site_binaries() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "substruct-controller",
            "-p",
            "substruct-edge",
            "--bins",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release of the site binaries failed ({status})");
    }
    Ok(())
}

fn main() -> Result<()> {
    if let Some(why) = missing_prerequisite() {
        println!("boot_storm: SKIP: {why}");
        return Ok(());
    }
    let n: usize = std::env::var(CLIENTS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0 && n <= 1700)
        .unwrap_or(DEFAULT_CLIENTS);
    let only = std::env::var("SUBSTRUCT_STORM_ONLY").unwrap_or_default();
    if only != "floor" {
        println!("boot_storm: building the site binaries (release)");
        build_site_binaries()?;
    }
    println!("boot_storm: building the prospector live image");
    let image = prospector_image()?;
    let out_dir: PathBuf = substruct_tests::target_dir().join("boot_storm");
    std::fs::create_dir_all(&out_dir)?;
    println!(
        "boot_storm: {n} machines at once, each: DHCP DORA, TFTP lpxelinux.0 + ldlinux.c32 + \
         pxelinux.cfg/default, HTTP ipxe.lkrn + boot.ipxe + kernel ({} B) + initrd ({} B) [+ ours: NATS report]",
        std::fs::metadata(image.join("vmlinuz"))
            .map(|m| m.len())
            .unwrap_or(0),
        std::fs::metadata(image.join("initrd.img"))
            .map(|m| m.len())
            .unwrap_or(0),
    );
    let mut results = Vec::new();
    if only.is_empty() || only == "floor" {
        println!("boot_storm: floor (dnsmasq + nginx) ...");
        match run_floor(n, &image, &out_dir) {
            Ok(r) => results.push(r),
            Err(e) => println!("boot_storm: floor FAILED: {e:#}"),
        }
    }
    if only.is_empty() || only == "ours" {
        println!("boot_storm: ours (fleet: hub, controller, leaf, edge) ...");
        match run_ours(n, &out_dir) {
            Ok(r) => results.push(r),
            Err(e) => println!("boot_storm: ours FAILED: {e:#}"),
        }
    }
    for r in &results {
        print_result(r);
    }
    println!();
    println!("Logs: {}", out_dir.display());
    Ok(())
}
