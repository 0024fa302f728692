//! Issue 15, part 5: an edge restarted during a DHCP storm. Nothing is lost, no
//! address is given twice, every client reconnects.
//!
//! The real `substruct-edge` binary serves a provisioning network from a namespace of
//! this test's own, beside a real `nats-server` it connects to. A second namespace,
//! cabled to the first by a veth, holds [`CLIENTS`] simulated machines, each with its
//! own MAC, at most [`IN_FLIGHT`] of them mid-exchange at once. Each does what a real
//! client does: DISCOVER → OFFER → REQUEST → ACK, broadcast, resending on a jittered
//! doubling backoff (RFC 2131 §4.1 scaled down from 4 s to 0.5 s, with the workspace's
//! one [`Backoff`]), and back to DISCOVER after a NAK or [`REQUEST_TRIES`] unanswered
//! REQUESTs. Once 30% of them hold an ACK the edge is SIGKILLed, its lease file is
//! copied (the crash image: what a restart finds), and the edge is started again on
//! the same state dir while the storm goes on. Every machine ACKed by the killed edge
//! then asks again for its address once the new one runs: half as a rebooting machine
//! does (INIT-REBOOT, broadcast), half as a running one does at T1 (RENEWING, unicast
//! from its leased address, which the clients' namespace answers ARP for).
//!
//! Asserted: every machine got an ACK, and each that asked again got its own address
//! back (no NAK); no address was ever ACKed to two MACs; every ACK the killed edge sent
//! is in the crash image; after a SIGTERM (exit 0) the lease file holds exactly the
//! machines' leases, at the addresses they were ACKed; every lease the edges announced
//! on NATS is that machine's address. Figures (stderr): clients, ACKs before and after
//! the kill, retransmissions, NAKs, the outage the clients saw, wall time — never
//! asserted on.
//!
//! Needs root, `ip netns`, `ss` and `nats-server`; skipped otherwise, or failed under
//! `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1` (see `substruct_testkit::gate`). A failed run
//! keeps its directory (edge and NATS logs, state dir, crash image) and prints where.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::Encodable;
use futures::StreamExt;
use substruct_edge::dhcp::packet::find_option;
use substruct_edge::dhcp::{bind_socket, LeaseStore};
use substruct_runtime::backoff::Backoff;
use substruct_testkit::gate::{system_test, Need};
use substruct_testkit::netns::{Netns, NsProcess};
use substruct_testkit::{nats_server_bin, ChildGuard};
use substruct_wire::dhcp::{Op, Packet};
use substruct_wire::messages::{SiteEvent, SiteEventKind};
use substruct_wire::{Mac, SiteId};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

/// Machines in the storm.
const CLIENTS: u16 = 300;
/// Machines mid-exchange at once.
const IN_FLIGHT: usize = 32;
/// The edge is killed when this many machines hold an ACK (30%).
const KILL_AFTER_ACKS: usize = CLIENTS as usize * 3 / 10;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const SERVER_CIDR: &str = "10.79.0.1/16";
/// The clients' namespace's own address (outside the pool): the source of broadcasts.
const CLIENT_HOST_CIDR: &str = "10.79.0.2/16";
const POOL_FIRST: Ipv4Addr = Ipv4Addr::new(10, 79, 2, 1);
/// 10% more addresses than machines: after the restart the allocator starts from the
/// pool's first address again and walks over every lease the killed edge gave, so a
/// lease the restarted edge does not know would go to a second machine.
const POOL_SIZE: u32 = CLIENTS as u32 * 11 / 10;
/// Covers the pool: routed as local in the clients' namespace, so a renewing machine
/// can send from its leased address and gets the unicast ACK.
const POOL_ROUTE: &str = "10.79.2.0/23";
const SRV_IF: &str = "rstorm-s";
const CLI_IF: &str = "rstorm-c";
const SITE: &str = "storm";
/// The readiness probe's MAC (it only ever DISCOVERs: it holds no lease).
const PROBE_MAC: Mac = Mac([0x02, 0x5e, 0x57, 0xff, 0xff, 0xff]);
const NATS_PORT: u16 = 4222;

/// First retransmission after about this long (RFC 2131: 4 s; scaled down)…
const FIRST_RETRANSMIT: Duration = Duration::from_millis(500);
/// …doubling up to this (RFC 2131: 64 s).
const MAX_RETRANSMIT: Duration = Duration::from_secs(2);
/// REQUESTs sent before a machine starts over with a DISCOVER.
const REQUEST_TRIES: u32 = 4;
/// A machine without its answer by then has failed.
const CLIENT_DEADLINE: Duration = Duration::from_secs(20);
/// Every other bounded wait (start-up, shutdown).
const WAIT: Duration = Duration::from_secs(15);

const DHCPOFFER: u8 = 2;
const DHCPACK: u8 = 5;
const DHCPNAK: u8 = 6;

/// The pool's last address.
fn pool_last() -> Ipv4Addr {
    Ipv4Addr::from(u32::from(POOL_FIRST) + POOL_SIZE - 1)
}

fn in_pool(ip: Ipv4Addr) -> bool {
    (u32::from(POOL_FIRST)..=u32::from(pool_last())).contains(&u32::from(ip))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- the lab: two namespaces, NATS, the edge binary ----------------------------------

/// `srv` (the edge and NATS, on `SRV_IF` 10.79.0.1/16) and `cli` (the machines, on
/// `CLI_IF` 10.79.0.2/16, the pool routed locally), joined by a veth.
struct Lab {
    srv: Netns,
    cli: Netns,
}

impl Lab {
    fn new() -> Result<Self> {
        let lab = Lab {
            srv: Netns::create("rstorm-s")?,
            cli: Netns::create("rstorm-c")?,
        };
        lab.srv
            .veth_to(&lab.cli, (SRV_IF, SERVER_CIDR), (CLI_IF, CLIENT_HOST_CIDR))?;
        lab.cli
            .ip(&["route", "add", "local", POOL_ROUTE, "dev", "lo"])?;
        Ok(lab)
    }
}

/// One run of the `substruct-edge` binary in the server namespace, killed on drop.
#[derive(Debug)]
struct Edge {
    child: ChildGuard,
    log: PathBuf,
}

impl Edge {
    /// Starts the binary with the documented flags; run `n` logs to `edge-{n}.log`.
    fn start(srv: &Netns, dir: &Path, n: u32) -> Result<Self> {
        let log = dir.join(format!("edge-{n}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let path = |p: &str| dir.join(p).display().to_string();
        let pool = format!("{POOL_FIRST}-{}", pool_last());
        let nats = format!("nats://{SERVER}:{NATS_PORT}");
        let child = srv
            .command(env!("CARGO_BIN_EXE_substruct-edge"))
            .args(["--interface", SRV_IF, "--address", SERVER_CIDR])
            .args(["--pool", &pool, "--site", SITE, "--nats", &nats])
            .args(["--images", &path("images"), "--state-dir", &path("state")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("starting substruct-edge")?;
        Ok(Self {
            child: ChildGuard(child),
            log,
        })
    }

    /// The last lines of its log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Fails, with its log, when the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.0.try_wait()? {
            bail!(
                "the edge ({}) exited: {status}; log tail:\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// SIGKILL, and reaps it.
    fn kill(&mut self) -> Result<()> {
        self.child.0.kill().context("SIGKILL to the edge")?;
        self.child.0.wait().context("reaping the edge")?;
        Ok(())
    }

    /// SIGTERM, and its exit status (bounded wait).
    fn terminate(&mut self) -> Result<ExitStatus> {
        self.check_alive()?;
        // Not reaped yet (checked above), so the pid is still this process's.
        let pid = self.child.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status()?;
        ensure!(sent.success(), "kill -TERM {pid}: {sent}");
        let child = &mut self.child.0;
        substruct_testkit::try_poll_blocking(
            "the edge to exit after SIGTERM",
            WAIT,
            Duration::from_millis(20),
            || Ok(child.try_wait()?),
        )
    }

    /// The number of leases its DHCP server loaded at start (from its log).
    fn leases_loaded(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let line = text.lines().find(|l| l.contains("dhcp: serving"))?;
        // Field names may be wrapped in colour codes: drop them.
        let mut plain = String::with_capacity(line.len());
        let mut in_escape = false;
        for c in line.chars() {
            match (in_escape, c) {
                (false, '\x1b') => in_escape = true,
                (true, 'm') => in_escape = false,
                (false, c) => plain.push(c),
                (true, _) => {}
            }
        }
        let rest = plain.split("leases=").nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

// ---- a simulated DHCP client ----------------------------------------------------------

/// A server's reply, read with the bounds-checked reader the edge and the prospector use.
#[derive(Debug, Clone, Copy)]
struct Reply {
    mac: Mac,
    xid: u32,
    /// Option 53.
    kind: u8,
    yiaddr: Ipv4Addr,
    server: Option<Ipv4Addr>,
}

impl Reply {
    fn read(bytes: &[u8]) -> Option<Self> {
        let packet = Packet::parse(bytes, Op::BootReply).ok()?;
        let kind = *find_option(bytes, 53)?.first()?;
        let server = find_option(bytes, 54)
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map(Ipv4Addr::from);
        Some(Self {
            mac: packet.mac(),
            xid: packet.xid(),
            kind,
            yiaddr: packet.yiaddr(),
            server,
        })
    }
}

/// A client message as firmware or dhclient sends it (client identifier, parameter
/// list, 300 bytes at least); broadcast flag set unless the client has an address.
fn client_message(
    mac: Mac,
    xid: u32,
    kind: MessageType,
    ciaddr: Ipv4Addr,
    secs: u16,
    extra: &[DhcpOption],
) -> Result<Vec<u8>> {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(xid, ciaddr, unspecified, unspecified, unspecified, &mac.0);
    msg.set_opcode(Opcode::BootRequest).set_secs(secs);
    if ciaddr.is_unspecified() {
        msg.set_flags(Flags::default().set_broadcast());
    }
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ClientIdentifier([&[1u8][..], &mac.0].concat()));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
        OptionCode::ServerIdentifier,
    ]));
    for opt in extra {
        opts.insert(opt.clone());
    }
    let mut bytes = msg.to_vec().context("encoding a DHCP message")?;
    if bytes.len() < 300 {
        bytes.resize(300, 0);
    }
    Ok(bytes)
}

/// The machines' shared DHCP socket (`0.0.0.0:68` on the clients' veth, as every
/// machine on a LAN hears every broadcast reply), and who gets which reply, by MAC.
#[derive(Debug)]
struct Net {
    socket: UdpSocket,
    routes: Mutex<HashMap<Mac, mpsc::UnboundedSender<Vec<u8>>>>,
}

impl Net {
    /// Hands each reply to its machine; runs until aborted.
    async fn demux(self: Arc<Self>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, _)) = self.socket.recv_from(&mut buf).await else {
                continue;
            };
            let Some(bytes) = buf.get(..n) else { continue };
            let Ok(packet) = Packet::parse(bytes, Op::BootReply) else {
                continue;
            };
            if let Some(tx) = lock(&self.routes).get(&packet.mac()) {
                let _ = tx.send(bytes.to_vec());
            }
        }
    }
}

/// Where a machine's messages go and its replies come from: the shared socket's
/// broadcasts (every reply to a machine without an address, and every NAK), and, for a
/// machine that has an address, its own socket on it.
struct Link<'a> {
    net: &'a Net,
    replies: &'a mut mpsc::UnboundedReceiver<Vec<u8>>,
    /// Bound to the machine's address (RENEWING): requests go unicast to the server.
    own: Option<&'a UdpSocket>,
}

impl Link<'_> {
    async fn send(&self, bytes: &[u8]) -> Result<()> {
        match self.own {
            None => self
                .net
                .socket
                .send_to(bytes, (Ipv4Addr::BROADCAST, 67))
                .await
                .context("broadcasting to port 67")?,
            Some(socket) => socket
                .send_to(bytes, (SERVER, 67))
                .await
                .context("sending to the server")?,
        };
        Ok(())
    }

    async fn recv(&mut self) -> Result<Vec<u8>> {
        let broadcast = async {
            self.replies
                .recv()
                .await
                .context("the reply demultiplexer stopped")
        };
        let Some(socket) = self.own else {
            return broadcast.await;
        };
        let mut buf = vec![0u8; 2048];
        tokio::select! {
            bytes = broadcast => bytes,
            got = socket.recv_from(&mut buf) => {
                let (n, _) = got?;
                buf.truncate(n);
                Ok(buf)
            }
        }
    }
}

/// How a machine ACKed by the killed edge asks again once the new one runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AskAgain {
    /// It rebooted: REQUEST, broadcast, option 50, no ciaddr, no server id.
    InitReboot,
    /// It kept running until T1: REQUEST, unicast from its address, ciaddr set.
    Renewing,
}

#[derive(Debug, Clone, Copy)]
struct Machine {
    mac: Mac,
    ask_again: AskAgain,
}

impl Machine {
    fn new(i: u16) -> Self {
        let [hi, lo] = i.to_be_bytes();
        Self {
            mac: Mac([0x02, 0x5e, 0x57, 0x00, hi, lo]),
            ask_again: if i.is_multiple_of(2) {
                AskAgain::InitReboot
            } else {
                AskAgain::Renewing
            },
        }
    }
}

/// The server's answer when a machine asked again for its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ack(Ipv4Addr),
    Nak,
}

/// What one machine went through.
#[derive(Debug)]
struct Outcome {
    machine: Machine,
    /// Its ACK in the storm and which edge sent it (0: the killed one, 1: the new one).
    acked: Option<(Ipv4Addr, u32)>,
    /// The answer when it asked again (machines ACKed by the killed edge).
    again: Option<Answer>,
    error: Option<String>,
}

impl Outcome {
    /// The address the machine ends with.
    fn final_ip(&self) -> Option<Ipv4Addr> {
        match self.again {
            Some(Answer::Ack(ip)) => Some(ip),
            _ => self.acked.map(|(ip, _)| ip),
        }
    }
}

/// Counters the machines share.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    /// Resends, by the edge generation running (0 before the kill).
    retransmissions: [AtomicU64; 2],
    naks: AtomicU64,
    /// Starts over at DISCOVER after the REQUEST went unanswered.
    back_to_init: AtomicU64,
    acks: AtomicUsize,
}

/// What every machine of the storm shares.
#[derive(Debug)]
struct Storm {
    net: Arc<Net>,
    counters: Counters,
    in_flight: Semaphore,
    /// 0 until the killed edge's lease file is copied, then 1 (before the new edge
    /// starts): an ACK read while it is 0 was sent by the killed edge.
    generation: watch::Receiver<u32>,
    /// Rung by the machine whose ACK makes [`KILL_AFTER_ACKS`].
    kill: Notify,
    killed_at: OnceLock<Instant>,
    first_reply_after_restart: OnceLock<Instant>,
}

impl Storm {
    fn generation(&self) -> u32 {
        *self.generation.borrow()
    }

    /// Sends `request` and waits for a reply to (`mac`, `xid`) of a type in `accept`,
    /// resending it on a jittered doubling backoff; `None` after `tries` sends.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        link: &mut Link<'_>,
        mac: Mac,
        request: &[u8],
        xid: u32,
        accept: &[u8],
        tries: u32,
        deadline: Instant,
    ) -> Result<Option<Reply>> {
        let mut backoff = Backoff::new(FIRST_RETRANSMIT, MAX_RETRANSMIT);
        for attempt in 0..tries {
            ensure!(
                Instant::now() < deadline,
                "no answer within {CLIENT_DEADLINE:?}"
            );
            if attempt > 0 {
                let generation = usize::from(self.generation() > 0);
                if let Some(c) = self.counters.retransmissions.get(generation) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            link.send(request).await?;
            let resend_at = tokio::time::Instant::now() + backoff.next_delay();
            while let Ok(bytes) = tokio::time::timeout_at(resend_at, link.recv()).await {
                let Some(reply) = Reply::read(&bytes?) else {
                    continue;
                };
                if reply.mac == mac && reply.xid == xid && accept.contains(&reply.kind) {
                    if self.generation() > 0 {
                        self.first_reply_after_restart.get_or_init(Instant::now);
                    }
                    return Ok(Some(reply));
                }
            }
        }
        Ok(None)
    }

    /// INIT → SELECTING → REQUESTING → BOUND: the ACKed address.
    async fn obtain(
        &self,
        m: &Machine,
        replies: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    ) -> Result<Ipv4Addr> {
        let begun = Instant::now();
        let deadline = begun + CLIENT_DEADLINE;
        let secs = || u16::try_from(begun.elapsed().as_secs()).unwrap_or(u16::MAX);
        let mut link = Link {
            net: &self.net,
            replies,
            own: None,
        };
        loop {
            let xid = rand::random();
            let discover = client_message(
                m.mac,
                xid,
                MessageType::Discover,
                Ipv4Addr::UNSPECIFIED,
                secs(),
                &[],
            )?;
            let offer = self
                .exchange(
                    &mut link,
                    m.mac,
                    &discover,
                    xid,
                    &[DHCPOFFER],
                    u32::MAX,
                    deadline,
                )
                .await?
                .context("no OFFER")?;
            let server = offer.server.context("an OFFER without a server id")?;
            let request = client_message(
                m.mac,
                xid,
                MessageType::Request,
                Ipv4Addr::UNSPECIFIED,
                secs(),
                &[
                    DhcpOption::RequestedIpAddress(offer.yiaddr),
                    DhcpOption::ServerIdentifier(server),
                ],
            )?;
            let answer = self
                .exchange(
                    &mut link,
                    m.mac,
                    &request,
                    xid,
                    &[DHCPACK, DHCPNAK],
                    REQUEST_TRIES,
                    deadline,
                )
                .await?;
            match answer {
                Some(r) if r.kind == DHCPACK => {
                    ensure!(
                        r.yiaddr == offer.yiaddr,
                        "REQUEST for {} ACKed with {}",
                        offer.yiaddr,
                        r.yiaddr
                    );
                    return Ok(r.yiaddr);
                }
                Some(_) => {
                    self.counters.naks.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.counters.back_to_init.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Asks for `ip` again, as `m.ask_again` says.
    async fn ask_again(
        &self,
        m: &Machine,
        replies: &mut mpsc::UnboundedReceiver<Vec<u8>>,
        ip: Ipv4Addr,
    ) -> Result<Answer> {
        let deadline = Instant::now() + CLIENT_DEADLINE;
        let xid = rand::random();
        let renewing_socket;
        let (own, request) = match m.ask_again {
            AskAgain::InitReboot => (
                None,
                client_message(
                    m.mac,
                    xid,
                    MessageType::Request,
                    Ipv4Addr::UNSPECIFIED,
                    0,
                    &[DhcpOption::RequestedIpAddress(ip)],
                )?,
            ),
            AskAgain::Renewing => {
                // This thread is in the clients' namespace, where the pool is local.
                renewing_socket = UdpSocket::from_std(
                    bind_socket(CLI_IF, ip, 68).with_context(|| format!("binding {ip}:68"))?,
                )?;
                (
                    Some(&renewing_socket),
                    client_message(m.mac, xid, MessageType::Request, ip, 0, &[])?,
                )
            }
        };
        let mut link = Link {
            net: &self.net,
            replies,
            own,
        };
        let reply = self
            .exchange(
                &mut link,
                m.mac,
                &request,
                xid,
                &[DHCPACK, DHCPNAK],
                u32::MAX,
                deadline,
            )
            .await?
            .context("no answer")?;
        Ok(match reply.kind {
            DHCPACK => Answer::Ack(reply.yiaddr),
            _ => Answer::Nak,
        })
    }

    /// One machine: powers on, gets its lease; if the killed edge gave it, asks again
    /// once the new edge runs.
    async fn machine(
        self: Arc<Self>,
        machine: Machine,
        mut replies: mpsc::UnboundedReceiver<Vec<u8>>,
    ) -> Outcome {
        let mut out = Outcome {
            machine,
            acked: None,
            again: None,
            error: None,
        };
        // Machines power on within a few tens of milliseconds of each other.
        let power_on = Duration::from_millis(u64::from(rand::random::<u8>() % 50));
        tokio::time::sleep(power_on).await;
        let result = async {
            let permit = self.in_flight.acquire().await?;
            let ip = self
                .obtain(&machine, &mut replies)
                .await
                .context("getting a lease")?;
            let generation = self.generation();
            out.acked = Some((ip, generation));
            if self.counters.acks.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ACKS {
                self.kill.notify_one();
            }
            drop(permit);
            if generation == 0 {
                let mut restarted = self.generation.clone();
                tokio::time::timeout(CLIENT_DEADLINE, restarted.wait_for(|g| *g > 0))
                    .await
                    .context("the edge was never restarted")??;
                let _permit = self.in_flight.acquire().await?;
                let answer = self
                    .ask_again(&machine, &mut replies, ip)
                    .await
                    .with_context(|| format!("asking again for {ip} ({:?})", machine.ask_again))?;
                out.again = Some(answer);
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            out.error = Some(format!("{e:#}"));
        }
        out
    }
}

// ---- the run ------------------------------------------------------------------------

/// What the storm left behind, checked once the edge has stopped.
#[derive(Debug)]
struct Run {
    outcomes: Vec<Outcome>,
    /// `SiteEvent::Lease` events seen on NATS, in order, with the generation running
    /// when each arrived.
    lease_events: Vec<(Mac, Ipv4Addr, u32)>,
    /// From the first edge's start to its first OFFER.
    ready_after: Duration,
    /// The killed edge's lease file, copied before the restart.
    crash_image: PathBuf,
    /// Leases the restarted edge's DHCP server loaded (from its log).
    restart_loaded: Option<u64>,
    /// The restarted edge's exit status after SIGTERM.
    exit: ExitStatus,
    retransmissions: [u64; 2],
    sent: u64,
    naks: u64,
    back_to_init: u64,
    /// From the storm's start.
    kill_after: Duration,
    /// From the kill to the first reply of the restarted edge.
    outage: Option<Duration>,
    wall: Duration,
}

/// Waits (bounded) until the edge answers a DISCOVER from [`PROBE_MAC`]; fails at once,
/// with its log, if the edge exits.
async fn wait_until_serving(
    net: &Net,
    replies: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    edge: &mut Edge,
) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    let xid = rand::random();
    let discover = client_message(
        PROBE_MAC,
        xid,
        MessageType::Discover,
        Ipv4Addr::UNSPECIFIED,
        0,
        &[],
    )?;
    loop {
        edge.check_alive()?;
        ensure!(
            Instant::now() < deadline,
            "no OFFER from the edge within {WAIT:?}; log tail:\n{}",
            edge.log_tail()
        );
        net.socket
            .send_to(&discover, (Ipv4Addr::BROADCAST, 67))
            .await?;
        let look_until = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Ok(bytes) = tokio::time::timeout_at(look_until, replies.recv()).await {
            let bytes = bytes.context("the reply demultiplexer stopped")?;
            if Reply::read(&bytes).is_some_and(|r| r.xid == xid && r.kind == DHCPOFFER) {
                return Ok(());
            }
        }
    }
}

/// The SIGKILL: waits for the cue, kills the edge, copies its lease file, marks the
/// generation and starts the edge again on the same state dir.
async fn kill_and_restart(
    storm: &Storm,
    generation: &watch::Sender<u32>,
    mut edge: Edge,
    srv: &Netns,
    dir: &Path,
) -> Result<Edge> {
    storm.kill.notified().await;
    storm.killed_at.get_or_init(Instant::now);
    let state = dir.join("state").join("leases.redb");
    let crash_image = dir.join("crash-image.redb");
    tokio::task::spawn_blocking(move || -> Result<()> {
        // Killed mid-storm, not found dead.
        edge.check_alive()?;
        edge.kill()?;
        std::fs::copy(&state, &crash_image)
            .with_context(|| format!("copying {}", state.display()))?;
        Ok(())
    })
    .await??;
    generation.send_replace(1);
    Edge::start(srv, dir, 2)
}

async fn storm(lab: &Lab, dir: &Path) -> Result<Run> {
    let site = SiteId::new(SITE)?;
    let nats = substruct_runtime::nats_options("restart-storm-test")
        .connect(format!("nats://{SERVER}:{NATS_PORT}"))
        .await
        .context("connecting to NATS from the clients' namespace")?;
    let mut events = nats
        .subscribe(substruct_wire::subjects::event(&site))
        .await?;
    // The server has the subscription before the edge starts.
    nats.flush().await?;
    let (generation_tx, generation_rx) = watch::channel(0u32);
    let lease_events = Arc::new(Mutex::new(Vec::new()));
    let collector = {
        let (lease_events, generation) = (lease_events.clone(), generation_rx.clone());
        tokio::spawn(async move {
            while let Some(msg) = events.next().await {
                let event = substruct_wire::decode::<SiteEvent>(&msg.payload).map(|e| e.event);
                if let Ok(SiteEventKind::Lease { mac, ip }) = event {
                    let heard = *generation.borrow();
                    lock(&lease_events).push((mac, Ipv4Addr::from(ip), heard));
                }
            }
        })
    };

    // This thread is in the clients' namespace: so is the socket.
    let socket = UdpSocket::from_std(bind_socket(CLI_IF, Ipv4Addr::UNSPECIFIED, 68)?)?;
    let net = Arc::new(Net {
        socket,
        routes: Mutex::new(HashMap::new()),
    });
    let demux = tokio::spawn(net.clone().demux());

    let mut edge = Edge::start(&lab.srv, dir, 1)?;
    let edge_started = Instant::now();
    let (tx, mut probe_replies) = mpsc::unbounded_channel();
    lock(&net.routes).insert(PROBE_MAC, tx);
    wait_until_serving(&net, &mut probe_replies, &mut edge).await?;
    let ready_after = edge_started.elapsed();
    let storm = Arc::new(Storm {
        net: net.clone(),
        counters: Counters::default(),
        in_flight: Semaphore::new(IN_FLIGHT),
        generation: generation_rx,
        kill: Notify::new(),
        killed_at: OnceLock::new(),
        first_reply_after_restart: OnceLock::new(),
    });

    let started = Instant::now();
    let mut machines = Vec::new();
    for i in 0..CLIENTS {
        let machine = Machine::new(i);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&net.routes).insert(machine.mac, tx);
        machines.push(tokio::spawn(storm.clone().machine(machine, rx)));
    }
    let restarted = tokio::time::timeout(
        CLIENT_DEADLINE,
        kill_and_restart(&storm, &generation_tx, edge, &lab.srv, dir),
    )
    .await;
    let mut edge = match restarted {
        Ok(Ok(edge)) => edge,
        Ok(Err(e)) => {
            machines.iter().for_each(|m| m.abort());
            return Err(e.context("killing and restarting the edge"));
        }
        Err(_) => {
            machines.iter().for_each(|m| m.abort());
            bail!(
                "{} of {CLIENTS} machines ACKed in {CLIENT_DEADLINE:?}: the kill at {KILL_AFTER_ACKS} never came",
                storm.counters.acks.load(Ordering::SeqCst)
            );
        }
    };
    let mut outcomes = Vec::with_capacity(machines.len());
    for m in machines {
        outcomes.push(m.await?);
    }
    let wall = started.elapsed();
    demux.abort();

    // The restarted edge served the rest of the storm without dying; a clean stop.
    let restart_loaded = edge.leases_loaded();
    let exit = tokio::task::spawn_blocking(move || -> Result<ExitStatus> {
        let status = edge.terminate()?;
        ensure!(
            status.success(),
            "the restarted edge exited {status} on SIGTERM; log tail:\n{}",
            edge.log_tail()
        );
        Ok(status)
    })
    .await??;
    // Lease events published before the stop are in by now or lost with the
    // connection: either way the checks take them as a subset.
    nats.flush().await?;
    collector.abort();

    let killed_at = storm.killed_at.get().copied().unwrap_or(started);
    let c = &storm.counters;
    let lease_events = std::mem::take(&mut *lock(&lease_events));
    Ok(Run {
        outcomes,
        lease_events,
        ready_after,
        crash_image: dir.join("crash-image.redb"),
        restart_loaded,
        exit,
        retransmissions: [
            c.retransmissions[0].load(Ordering::Relaxed),
            c.retransmissions[1].load(Ordering::Relaxed),
        ],
        sent: c.sent.load(Ordering::Relaxed),
        naks: c.naks.load(Ordering::Relaxed),
        back_to_init: c.back_to_init.load(Ordering::Relaxed),
        kill_after: killed_at.duration_since(started),
        outage: storm
            .first_reply_after_restart
            .get()
            .map(|t| t.duration_since(killed_at)),
        wall,
    })
}

/// Every lease in the file at `path`: MAC → (address, expiry).
fn stored_leases(path: &Path) -> Result<BTreeMap<Mac, (Ipv4Addr, u64)>> {
    let store = LeaseStore::open(path).with_context(|| format!("opening {}", path.display()))?;
    let leases = store.load()?;
    let mut by_mac = BTreeMap::new();
    for l in leases {
        ensure!(
            by_mac.insert(l.mac, (l.ip, l.expires)).is_none(),
            "{} twice in {}",
            l.mac,
            path.display()
        );
    }
    Ok(by_mac)
}

fn print_figures(run: &Run) {
    let before = run
        .outcomes
        .iter()
        .filter(|o| matches!(o.acked, Some((_, 0))))
        .count();
    let after = run
        .outcomes
        .iter()
        .filter(|o| matches!(o.acked, Some((_, g)) if g > 0))
        .count();
    let asked = |way: AskAgain| {
        run.outcomes
            .iter()
            .filter(|o| o.machine.ask_again == way && o.again.is_some())
            .count()
    };
    let failed = run.outcomes.iter().filter(|o| o.error.is_some()).count();
    let ms = |d: Duration| d.as_millis();
    eprintln!("restart_storm: {CLIENTS} machines, {IN_FLIGHT} in flight, pool of {POOL_SIZE}");
    eprintln!(
        "  ACKs: {before} from the killed edge (SIGKILL at {} ms), {after} from the restarted one; {failed} machines failed",
        ms(run.kill_after)
    );
    eprintln!(
        "  asked again after the restart: {} by INIT-REBOOT, {} by RENEWING",
        asked(AskAgain::InitReboot),
        asked(AskAgain::Renewing)
    );
    eprintln!(
        "  messages sent: {}; retransmissions: {} before the kill, {} after; NAKs in the storm: {}; back to DISCOVER after unanswered REQUESTs: {}",
        run.sent, run.retransmissions[0], run.retransmissions[1], run.naks, run.back_to_init
    );
    eprintln!(
        "  outage seen by the clients (kill → first reply of the restarted edge): {}; the restarted edge loaded {} leases",
        run.outage
            .map_or_else(|| "none".to_owned(), |d| format!("{} ms", ms(d))),
        run.restart_loaded
            .map_or_else(|| "?".to_owned(), |n| n.to_string())
    );
    eprintln!(
        "  lease events on NATS: {} before the kill, {} after; the first edge answered DHCP {} ms after its start; the restarted edge, SIGTERMed: {}",
        run.lease_events.iter().filter(|e| e.2 == 0).count(),
        run.lease_events.iter().filter(|e| e.2 > 0).count(),
        ms(run.ready_after),
        run.exit
    );
    eprintln!("  storm wall time: {} ms", ms(run.wall));
}

fn check(run: &Run, state_db: &Path) -> Result<()> {
    let failed: Vec<String> = run
        .outcomes
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.machine.mac, o.error.as_ref()?)))
        .collect();
    ensure!(
        failed.is_empty(),
        "{} of {CLIENTS} machines failed, e.g.:\n{}",
        failed.len(),
        failed[..failed.len().min(10)].join("\n")
    );

    // The kill came mid-storm: both edges ACKed machines.
    let by_killed = run
        .outcomes
        .iter()
        .filter(|o| matches!(o.acked, Some((_, 0))))
        .count();
    ensure!(
        by_killed >= KILL_AFTER_ACKS && by_killed < usize::from(CLIENTS),
        "the kill did not come mid-storm: {by_killed} of {CLIENTS} ACKed before it"
    );

    // Every machine ACKed, inside the pool; each ACKed by the killed edge got its
    // own address back when it asked again.
    for o in &run.outcomes {
        let mac = o.machine.mac;
        let (ip, generation) = o.acked.with_context(|| format!("{mac}: no ACK"))?;
        ensure!(in_pool(ip), "{mac} was ACKed {ip}, outside the pool");
        if generation == 0 {
            match o.again {
                Some(Answer::Ack(again)) => ensure!(
                    again == ip,
                    "{mac} was ACKed {ip} before the kill and {again} when it asked again ({:?})",
                    o.machine.ask_again
                ),
                Some(Answer::Nak) => bail!(
                    "{mac} was ACKed {ip} before the kill and NAKed when it asked again ({:?})",
                    o.machine.ask_again
                ),
                None => bail!("{mac} (ACKed before the kill) never asked again"),
            }
        }
    }

    // No address was ever ACKed to two machines.
    let mut holders: BTreeMap<Ipv4Addr, BTreeSet<Mac>> = BTreeMap::new();
    for o in &run.outcomes {
        let again = match o.again {
            Some(Answer::Ack(ip)) => Some(ip),
            _ => None,
        };
        for ip in o.acked.map(|(ip, _)| ip).into_iter().chain(again) {
            holders.entry(ip).or_default().insert(o.machine.mac);
        }
    }
    let twice: Vec<String> = holders
        .iter()
        .filter(|(_, macs)| macs.len() > 1)
        .map(|(ip, macs)| format!("{ip} ACKed to {macs:?}"))
        .collect();
    ensure!(
        twice.is_empty(),
        "addresses given twice:\n{}",
        twice.join("\n")
    );

    // Every ACK of the killed edge was durable before it was sent: the crash image
    // has it.
    let crash = stored_leases(&run.crash_image)?;
    for o in &run.outcomes {
        if let Some((ip, 0)) = o.acked {
            let stored = crash.get(&o.machine.mac).map(|(ip, _)| *ip);
            ensure!(
                stored == Some(ip),
                "{} was ACKed {ip} by the killed edge, but its lease file holds {stored:?} for it",
                o.machine.mac
            );
        }
    }

    // After the run the lease file holds exactly the machines' leases, as ACKed, and
    // none has expired.
    let stored = stored_leases(state_db)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let wanted: BTreeMap<Mac, Ipv4Addr> = run
        .outcomes
        .iter()
        .filter_map(|o| Some((o.machine.mac, o.final_ip()?)))
        .collect();
    for (mac, ip) in &wanted {
        match stored.get(mac) {
            Some((s, expires)) => {
                ensure!(s == ip, "{mac} holds {ip}, the lease file says {s}");
                ensure!(
                    *expires > now,
                    "{mac}'s lease on {ip} has expired in the file"
                );
            }
            None => bail!("{mac} holds {ip}, the lease file has no lease for it"),
        }
    }
    let strangers: Vec<&Mac> = stored.keys().filter(|m| !wanted.contains_key(m)).collect();
    ensure!(
        strangers.is_empty(),
        "leases of MACs that hold none: {strangers:?}"
    );

    // Every lease announced on NATS is the machine's address.
    for (mac, ip, _) in &run.lease_events {
        ensure!(
            wanted.get(mac) == Some(ip),
            "the edge announced a lease of {ip} to {mac}, which holds {:?}",
            wanted.get(mac)
        );
    }
    Ok(())
}

#[test]
fn edge_restarted_in_a_dhcp_storm_loses_nothing_and_gives_no_address_twice() -> Result<()> {
    let nats_bin = nats_server_bin();
    let nats_bin = nats_bin
        .to_str()
        .context("nats-server path is not UTF-8")?
        .to_owned();
    if !system_test(&[Need::Netns, Need::Tool("ss"), Need::Tool(&nats_bin)]) {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("substruct-restart-storm-")
        .tempdir()?;
    let result = (|| -> Result<()> {
        let lab = Lab::new()?;
        std::fs::create_dir_all(dir.path().join("images"))?;
        let js = dir.path().join("js");
        let js = js.to_str().context("temp path is not UTF-8")?;
        let nats_port = NATS_PORT.to_string();
        let server = SERVER.to_string();
        let mut nats = NsProcess::spawn(
            &lab.srv,
            "nats-server",
            &nats_bin,
            &["-a", &server, "-p", &nats_port, "-js", "-sd", js],
            dir.path().join("nats.log"),
        )?;
        lab.srv
            .wait_listening(&server, NATS_PORT, WAIT, &mut [&mut nats])?;

        // The machines' runtime lives in their namespace: every socket it binds is there.
        let run = lab.cli.run_inside(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(storm(&lab, dir.path()))
        })?;
        print_figures(&run);
        check(&run, &dir.path().join("state").join("leases.redb"))
    })();
    if result.is_err() {
        let kept = dir.keep();
        eprintln!("restart_storm: kept {}", kept.display());
    }
    result
}
