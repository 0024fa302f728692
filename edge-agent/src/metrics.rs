//! The edge's Prometheus metrics, served at `GET /metrics` by [`crate::http`] in the
//! OpenMetrics text format ([`CONTENT_TYPE`]).
//!
//! One [`Metrics`] per agent, held in an `Arc` and handed to the DHCP, TFTP and HTTP
//! servers and the image cache where [`crate::agent`] builds them. Every name starts
//! with `substruct_edge_`.
//!
//! The hot paths only touch atomics: every labelled series is created once, here, and
//! the servers hold the counters themselves (no map lookup, no lock per packet). Values
//! that are cheap to read when asked — the NATS connection's state, the number of boot
//! intents — are read at scrape time by [`Metrics::encode`].
//!
//! Not an attack surface: every label value is one of a fixed set (the enums below) or
//! comes from the site's own configuration (a DHCP subnet); nothing a client sends — a
//! MAC, a path, an address — ever becomes a label.

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use ipnet::Ipv4Net;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::intents::IntentTable;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The prefix of every metric name.
pub const PREFIX: &str = "substruct_edge";

/// Why the exposition could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The text encoder failed (a label value it cannot write).
    #[error("encoding the metrics")]
    Encode(#[source] std::fmt::Error),
}

/// A label enum: a closed set of values, each written as a fixed lowercase word.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order (`value as usize` is its index).
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

label_enum! {
    /// The DHCP message type of a received packet (`malformed`: not readable at all).
    DhcpMessage {
        Discover => "discover",
        Request => "request",
        Release => "release",
        Decline => "decline",
        Inform => "inform",
        /// Readable, but not a type a server acts on.
        Other => "other",
        /// Not a DHCP request the edge can read (length, op, options, MAC, no type).
        Malformed => "malformed",
    }
}

label_enum! {
    /// What the edge did with a received DHCP packet.
    DhcpResult {
        /// OFFER or ACK.
        Answered => "answered",
        /// Answered with a NAK.
        Nak => "nak",
        /// A RELEASE or DECLINE acted on (the protocol has no reply to them).
        Accepted => "accepted",
        /// Not for this server or nothing to do (another server, proxy mode, no subnet).
        Ignored => "ignored",
        /// Malformed or hostile: unreadable, a relay not allowed, a DECLINE of an
        /// address that is not the client's.
        Refused => "refused",
        /// No free address in the pool.
        Exhausted => "exhausted",
        /// The reply could not be built.
        Error => "error",
    }
}

label_enum! {
    /// The message type of a received DHCPv6 packet (by its first byte).
    Dhcp6Message {
        Solicit => "solicit",
        Request => "request",
        Confirm => "confirm",
        Renew => "renew",
        Rebind => "rebind",
        Release => "release",
        Decline => "decline",
        InformationRequest => "information_request",
        /// A server's or relay's type, an unknown one, or an empty packet.
        Other => "other",
    }
}

impl Dhcp6Message {
    /// The label of a packet whose first byte is `t` (RFC 8415 message types).
    pub fn of(t: u8) -> Self {
        match t {
            1 => Self::Solicit,
            3 => Self::Request,
            4 => Self::Confirm,
            5 => Self::Renew,
            6 => Self::Rebind,
            8 => Self::Release,
            9 => Self::Decline,
            11 => Self::InformationRequest,
            _ => Self::Other,
        }
    }
}

label_enum! {
    /// What the edge did with a received DHCPv6 packet.
    Dhcp6Result {
        /// An Advertise or Reply sent.
        Answered => "answered",
        /// Dropped: malformed, for another server, relayed, or nothing to answer.
        Dropped => "dropped",
        /// Its lease could not be stored, so no reply went out (the client retries).
        NotStored => "not_stored",
        /// The reply could not be sent.
        SendFailed => "send_failed",
    }
}

label_enum! {
    /// The type of a DHCP reply sent.
    DhcpReply {
        Offer => "offer",
        Ack => "ack",
        Nak => "nak",
    }
}

label_enum! {
    /// A DHCP server failure.
    DhcpFailure {
        /// Receiving on a DHCP socket failed.
        Receive => "receive",
        /// Sending a reply failed.
        Send => "send",
        /// A batch of lease changes could not be written (its replies were withheld).
        Store => "store",
        /// A reply could not be encoded.
        Encode => "encode",
    }
}

label_enum! {
    /// How a TFTP transfer ended.
    TftpResult {
        /// The whole file was acknowledged.
        Completed => "completed",
        NotFound => "not_found",
        /// Access violation or an unsupported mode.
        Refused => "refused",
        /// The client ended it with an ERROR (PXE ROMs do after a `tsize` probe).
        ClientError => "client_error",
        TimedOut => "timed_out",
        /// The server cancelled it (a new request from the client, a full table, shutdown).
        Cancelled => "cancelled",
        /// A socket or disk error.
        Failed => "failed",
    }
}

label_enum! {
    /// A TFTP request refused, or a failure, on the main port.
    TftpFailure {
        /// All transfer slots taken by confirmed clients.
        Busy => "busy",
        /// Too many transfers from the client's address.
        PerSource => "per_source",
        /// A write request (the server is read-only).
        WriteRequest => "write_request",
        /// A packet other than a read request on the main port.
        Unexpected => "unexpected",
        /// A packet that does not decode.
        Malformed => "malformed",
        /// Receiving on the main socket failed.
        Receive => "receive",
    }
}

label_enum! {
    /// The kind of route an HTTP request went to (by path, never the path itself).
    HttpRoute {
        /// `/boot.ipxe`.
        BootScript => "boot_script",
        /// The iPXE loaders.
        Loader => "loader",
        /// `/images/…`.
        Image => "image",
        /// `/install/…`.
        Install => "install",
        /// `/api/v1/machines/{token}/done|failed`.
        Callback => "callback",
        /// The boot credential renewal.
        Renew => "renew",
        /// `/metrics`.
        Metrics => "metrics",
        /// `/`, `/healthz`.
        Health => "health",
        /// Anything else (404s).
        Other => "other",
    }
}

label_enum! {
    /// The class of an HTTP status code.
    StatusClass {
        Informational => "1xx",
        Success => "2xx",
        Redirection => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
    }
}

impl StatusClass {
    /// The class of `status` (anything outside 100..=599 counts as `5xx`).
    pub fn of(status: u16) -> Self {
        match status {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }
}

label_enum! {
    /// An HTTP failure outside a response's status.
    HttpFailure {
        /// A connection closed at once: over the total or per-source cap.
        ConnectionRefused => "connection_refused",
        /// `accept(2)` failed (out of descriptors and the like).
        Accept => "accept",
        /// A file sent by the sendfile front ended early (the client went away or
        /// stopped reading).
        TransferAborted => "transfer_aborted",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DhcpPacketLabels {
    message_type: DhcpMessage,
    result: DhcpResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Dhcp6PacketLabels {
    message_type: Dhcp6Message,
    result: Dhcp6Result,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DhcpReplyLabels {
    message_type: DhcpReply,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SubnetLabels {
    subnet: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DhcpFailureLabels {
    kind: DhcpFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TftpResultLabels {
    result: TftpResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TftpFailureLabels {
    kind: TftpFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpFailureLabels {
    kind: HttpFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    route: HttpRoute,
    status: StatusClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// One counter per value of a label enum, created up front.
fn per_value<K, L>(
    values: &[K],
    family: &Family<L, Counter>,
    labels: impl Fn(K) -> L,
) -> Box<[Counter]>
where
    K: Copy,
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    values
        .iter()
        .map(|v| family.get_or_create_owned(&labels(*v)))
        .collect()
}

/// One counter per pair of label values (`ms` × `rs`), created up front, indexed
/// `[m * rs.len() + r]`.
fn per_pair<M, R, L>(
    ms: &[M],
    rs: &[R],
    family: &Family<L, Counter>,
    labels: impl Fn(M, R) -> L,
) -> Box<[Counter]>
where
    M: Copy,
    R: Copy,
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    ms.iter()
        .flat_map(|m| rs.iter().map(move |r| (*m, *r)))
        .map(|(m, r)| family.get_or_create_owned(&labels(m, r)))
        .collect()
}

/// `counters[index]`; `None` only for an index out of range, which construction rules
/// out (the tables hold one counter per enum value).
fn at(counters: &[Counter], index: usize) -> Option<&Counter> {
    counters.get(index)
}

/// The DHCP server's series.
#[derive(Debug)]
pub struct DhcpMetrics {
    /// `[message * DhcpResult::ALL.len() + result]`.
    packets: Box<[Counter]>,
    replies: Box<[Counter]>,
    failures: Box<[Counter]>,
    leases: Family<SubnetLabels, Gauge>,
    pool: Family<SubnetLabels, Gauge>,
}

impl DhcpMetrics {
    fn new(registry: &mut Registry) -> Self {
        let packets = Family::<DhcpPacketLabels, Counter>::default();
        let table = per_pair(
            DhcpMessage::ALL,
            DhcpResult::ALL,
            &packets,
            |message_type, result| DhcpPacketLabels {
                message_type,
                result,
            },
        );
        registry.register(
            "dhcp_packets_received",
            "DHCP packets received, by message type and what the server did with them",
            packets,
        );
        let replies = Family::<DhcpReplyLabels, Counter>::default();
        let reply_counters = per_value(DhcpReply::ALL, &replies, |message_type| DhcpReplyLabels {
            message_type,
        });
        registry.register("dhcp_replies_sent", "DHCP replies sent, by type", replies);
        let failures = Family::<DhcpFailureLabels, Counter>::default();
        let failure_counters = per_value(DhcpFailure::ALL, &failures, |kind| DhcpFailureLabels {
            kind,
        });
        registry.register("dhcp_errors", "DHCP server failures, by kind", failures);
        let leases = Family::<SubnetLabels, Gauge>::default();
        registry.register(
            "dhcp_leases_active",
            "Unexpired DHCP leases, by subnet",
            leases.clone(),
        );
        let pool = Family::<SubnetLabels, Gauge>::default();
        registry.register(
            "dhcp_pool_addresses",
            "Addresses in the dynamic pools, by subnet",
            pool.clone(),
        );
        Self {
            packets: table,
            replies: reply_counters,
            failures: failure_counters,
            leases,
            pool,
        }
    }

    /// Counts one received packet.
    pub fn packet(&self, message: DhcpMessage, result: DhcpResult) {
        let index = message as usize * DhcpResult::ALL.len() + result as usize;
        if let Some(c) = at(&self.packets, index) {
            c.inc();
        }
    }

    /// Counts one reply sent.
    pub fn reply_sent(&self, reply: DhcpReply) {
        if let Some(c) = at(&self.replies, reply as usize) {
            c.inc();
        }
    }

    /// Counts one failure.
    pub fn failure(&self, kind: DhcpFailure) {
        if let Some(c) = at(&self.failures, kind as usize) {
            c.inc();
        }
    }

    /// The gauges of `subnet` (its active leases and its pool size), created once when
    /// the server starts; the pool size is set here.
    pub fn subnet(&self, subnet: Ipv4Net, pool_size: u64) -> SubnetGauges {
        let labels = SubnetLabels {
            subnet: subnet.to_string(),
        };
        let pool = self.pool.get_or_create_owned(&labels);
        pool.set(i64::try_from(pool_size).unwrap_or(i64::MAX));
        SubnetGauges {
            network: subnet,
            leases: self.leases.get_or_create_owned(&labels),
        }
    }
}

/// The DHCPv6 server's series.
#[derive(Debug)]
pub struct Dhcp6Metrics {
    /// `[message * Dhcp6Result::ALL.len() + result]`.
    packets: Box<[Counter]>,
    leases: Gauge,
    pool: Gauge,
}

impl Dhcp6Metrics {
    fn new(registry: &mut Registry) -> Self {
        let packets = Family::<Dhcp6PacketLabels, Counter>::default();
        let table = per_pair(
            Dhcp6Message::ALL,
            Dhcp6Result::ALL,
            &packets,
            |message_type, result| Dhcp6PacketLabels {
                message_type,
                result,
            },
        );
        registry.register(
            "dhcp6_packets_received",
            "DHCPv6 packets received, by message type and what the server did with them",
            packets,
        );
        let leases = Gauge::default();
        registry.register(
            "dhcp6_leases_active",
            "Unexpired DHCPv6 leases (offers not counted)",
            leases.clone(),
        );
        let pool = Gauge::default();
        registry.register(
            "dhcp6_pool_addresses",
            "Addresses in the DHCPv6 pool",
            pool.clone(),
        );
        Self {
            packets: table,
            leases,
            pool,
        }
    }

    /// Counts one received packet.
    pub fn packet(&self, message: Dhcp6Message, result: Dhcp6Result) {
        let index = message as usize * Dhcp6Result::ALL.len() + result as usize;
        if let Some(c) = at(&self.packets, index) {
            c.inc();
        }
    }

    /// Sets the active-lease and pool-size gauges.
    pub fn set_leases(&self, active: usize, pool_size: u32) {
        self.leases.set(i64::try_from(active).unwrap_or(i64::MAX));
        self.pool.set(i64::from(pool_size));
    }
}

/// One subnet's lease gauge, held by the DHCP server.
#[derive(Debug, Clone)]
pub struct SubnetGauges {
    network: Ipv4Net,
    leases: Gauge,
}

impl SubnetGauges {
    /// Sets each subnet's active-lease gauge from the addresses of the unexpired leases.
    pub fn set_counts(subnets: &[SubnetGauges], active: impl IntoIterator<Item = Ipv4Addr>) {
        let mut counts = vec![0i64; subnets.len()];
        for ip in active {
            if let Some(i) = subnets.iter().position(|s| s.network.contains(&ip)) {
                if let Some(n) = counts.get_mut(i) {
                    *n += 1;
                }
            }
        }
        for (s, n) in subnets.iter().zip(counts) {
            s.leases.set(n);
        }
    }
}

/// The TFTP server's series.
#[derive(Debug)]
pub struct TftpMetrics {
    started: Counter,
    finished: Box<[Counter]>,
    failures: Box<[Counter]>,
    bytes: Counter,
    active: Gauge,
}

impl TftpMetrics {
    fn new(registry: &mut Registry) -> Self {
        let started = Counter::default();
        registry.register(
            "tftp_transfers_started",
            "TFTP read requests admitted (each runs as a transfer)",
            started.clone(),
        );
        let finished = Family::<TftpResultLabels, Counter>::default();
        let finished_counters = per_value(TftpResult::ALL, &finished, |result| TftpResultLabels {
            result,
        });
        registry.register(
            "tftp_transfers_finished",
            "TFTP transfers ended, by how",
            finished,
        );
        let failures = Family::<TftpFailureLabels, Counter>::default();
        let failure_counters = per_value(TftpFailure::ALL, &failures, |kind| TftpFailureLabels {
            kind,
        });
        registry.register(
            "tftp_errors",
            "TFTP requests refused and failures on the main port, by kind",
            failures,
        );
        let bytes = Counter::default();
        registry.register(
            "tftp_bytes_sent",
            "File bytes delivered by completed TFTP transfers (retransmissions not counted)",
            bytes.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "tftp_transfers_active",
            "TFTP transfers in progress",
            active.clone(),
        );
        Self {
            started,
            finished: finished_counters,
            failures: failure_counters,
            bytes,
            active,
        }
    }

    /// A transfer was admitted; it is active until [`finished`](Self::finished).
    pub fn started(&self) {
        self.started.inc();
        self.active.inc();
    }

    /// A transfer ended; `bytes` of file were delivered (0 unless completed).
    pub fn finished(&self, result: TftpResult, bytes: u64) {
        self.active.dec();
        if let Some(c) = at(&self.finished, result as usize) {
            c.inc();
        }
        self.bytes.inc_by(bytes);
    }

    /// Counts one refusal or failure on the main port.
    pub fn failure(&self, kind: TftpFailure) {
        if let Some(c) = at(&self.failures, kind as usize) {
            c.inc();
        }
    }
}

/// The HTTP server's series.
#[derive(Debug)]
pub struct HttpMetrics {
    /// `[route * StatusClass::ALL.len() + class]`.
    requests: Box<[Counter]>,
    image_bytes: Counter,
    failures: Box<[Counter]>,
}

impl HttpMetrics {
    fn new(registry: &mut Registry) -> Self {
        let requests = Family::<HttpLabels, Counter>::default();
        let mut table = Vec::new();
        for route in HttpRoute::ALL {
            for status in StatusClass::ALL {
                table.push(requests.get_or_create_owned(&HttpLabels {
                    route: *route,
                    status: *status,
                }));
            }
        }
        registry.register(
            "http_requests",
            "HTTP requests answered, by kind of route and status class",
            requests,
        );
        let image_bytes = Counter::default();
        registry.register(
            "http_image_bytes_sent",
            "Body bytes of images sent over HTTP",
            image_bytes.clone(),
        );
        let failures = Family::<HttpFailureLabels, Counter>::default();
        let failure_counters = per_value(HttpFailure::ALL, &failures, |kind| HttpFailureLabels {
            kind,
        });
        registry.register(
            "http_errors",
            "HTTP connection and transfer failures, by kind",
            failures,
        );
        Self {
            requests: table.into_boxed_slice(),
            image_bytes,
            failures: failure_counters,
        }
    }

    /// Counts one request answered with `status`.
    pub fn request(&self, route: HttpRoute, status: u16) {
        let index = route as usize * StatusClass::ALL.len() + StatusClass::of(status) as usize;
        if let Some(c) = at(&self.requests, index) {
            c.inc();
        }
    }

    /// Counts `bytes` of image body sent.
    pub fn image_bytes(&self, bytes: u64) {
        self.image_bytes.inc_by(bytes);
    }

    /// The image-bytes counter itself, for a body that counts as it streams.
    pub fn image_bytes_counter(&self) -> Counter {
        self.image_bytes.clone()
    }

    /// Counts one failure.
    pub fn failure(&self, kind: HttpFailure) {
        if let Some(c) = at(&self.failures, kind as usize) {
            c.inc();
        }
    }
}

/// The image cache's series.
#[derive(Debug)]
pub struct CacheMetrics {
    hits: Counter,
    misses: Counter,
    fetched_bytes: Counter,
    fetch_failures: Counter,
    corrupt: Counter,
    evictions: Counter,
    streamed: Counter,
    bytes: Gauge,
}

impl CacheMetrics {
    fn new(registry: &mut Registry) -> Self {
        let m = Self {
            hits: Counter::default(),
            misses: Counter::default(),
            fetched_bytes: Counter::default(),
            fetch_failures: Counter::default(),
            corrupt: Counter::default(),
            evictions: Counter::default(),
            streamed: Counter::default(),
            bytes: Gauge::default(),
        };
        registry.register(
            "image_cache_hits",
            "Image requests answered from a verified cache file",
            m.hits.clone(),
        );
        registry.register(
            "image_cache_misses",
            "Image requests that had to fetch from the controller's object store",
            m.misses.clone(),
        );
        registry.register(
            "image_cache_fetched_bytes",
            "Bytes fetched into the cache (verified fetches only)",
            m.fetched_bytes.clone(),
        );
        registry.register(
            "image_cache_fetch_failures",
            "Fetches that failed (store unreachable, content mismatch, disk)",
            m.fetch_failures.clone(),
        );
        registry.register(
            "image_cache_corrupt",
            "Cache files removed because they did not hash to their name",
            m.corrupt.clone(),
        );
        registry.register(
            "image_cache_evictions",
            "Cache files removed to stay under the cap",
            m.evictions.clone(),
        );
        registry.register(
            "image_cache_streamed",
            "Image responses that followed a fetch in progress instead of waiting for it",
            m.streamed.clone(),
        );
        registry.register(
            "image_cache_bytes",
            "Bytes held in the image cache directory",
            m.bytes.clone(),
        );
        m
    }

    /// A request served from a verified file.
    pub fn hit(&self) {
        self.hits.inc();
    }

    /// A request that starts (or joins) a fetch.
    pub fn miss(&self) {
        self.misses.inc();
    }

    /// A fetch of `bytes` completed and verified.
    pub fn fetched(&self, bytes: u64) {
        self.fetched_bytes.inc_by(bytes);
    }

    /// A fetch failed.
    pub fn fetch_failed(&self) {
        self.fetch_failures.inc();
    }

    /// A corrupt file was removed.
    pub fn corrupt(&self) {
        self.corrupt.inc();
    }

    /// A file was evicted.
    pub fn evicted(&self) {
        self.evictions.inc();
    }

    /// A response follows a fetch in progress.
    pub fn streamed(&self) {
        self.streamed.inc();
    }

    /// The cache now holds `bytes`.
    pub fn set_bytes(&self, bytes: u64) {
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// Every metric of one edge agent (see the module docs).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The DHCP server's series.
    pub dhcp: DhcpMetrics,
    /// The DHCPv6 server's series (at zero on a site without DHCPv6).
    pub dhcp6: Dhcp6Metrics,
    /// The TFTP server's series.
    pub tftp: TftpMetrics,
    /// The HTTP server's series.
    pub http: HttpMetrics,
    /// The image cache's series.
    pub cache: CacheMetrics,
    nats_connected: Gauge,
    intents_known: Gauge,
    nats: OnceLock<async_nats::Client>,
    intents: OnceLock<IntentTable>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let dhcp = DhcpMetrics::new(&mut registry);
        let dhcp6 = Dhcp6Metrics::new(&mut registry);
        let tftp = TftpMetrics::new(&mut registry);
        let http = HttpMetrics::new(&mut registry);
        let cache = CacheMetrics::new(&mut registry);
        let nats_connected = Gauge::default();
        registry.register(
            "nats_connected",
            "1 while the edge's NATS connection is up, else 0",
            nats_connected.clone(),
        );
        let intents_known = Gauge::default();
        registry.register(
            "intents",
            "Boot intents the edge knows (one per MAC)",
            intents_known.clone(),
        );
        registry.register(
            "build",
            "The edge agent's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Self {
            registry,
            dhcp,
            dhcp6,
            tftp,
            http,
            cache,
            nats_connected,
            intents_known,
            nats: OnceLock::new(),
            intents: OnceLock::new(),
        }
    }

    /// Reports `client`'s connection state at each scrape (the first call wins).
    pub fn watch_nats(&self, client: async_nats::Client) {
        let _ = self.nats.set(client);
    }

    /// Reports the size of `intents` at each scrape (the first call wins).
    pub fn watch_intents(&self, intents: IntentTable) {
        let _ = self.intents.set(intents);
    }

    /// The exposition: scrape-time values read, every series written, `# EOF` last.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let connected = self
            .nats
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected);
        self.nats_connected.set(i64::from(connected));
        if let Some(t) = self.intents.get() {
            self.intents_known
                .set(i64::try_from(t.len()).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(MetricsError::Encode)?;
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_from_the_start_and_counts_where_it_should() {
        let m = Metrics::new();
        m.dhcp.packet(DhcpMessage::Inform, DhcpResult::Answered);
        m.dhcp.packet(DhcpMessage::Malformed, DhcpResult::Refused);
        m.dhcp.packet(DhcpMessage::Malformed, DhcpResult::Refused);
        m.http.request(HttpRoute::Image, 206);
        m.tftp.started();
        m.tftp.finished(TftpResult::Completed, 42);
        let text = m.encode().unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has(
            r#"substruct_edge_dhcp_packets_received_total{message_type="inform",result="answered"} 1"#
        ));
        assert!(has(
            r#"substruct_edge_dhcp_packets_received_total{message_type="malformed",result="refused"} 2"#
        ));
        assert!(has(
            r#"substruct_edge_dhcp_packets_received_total{message_type="discover",result="nak"} 0"#
        ));
        assert!(has(
            r#"substruct_edge_http_requests_total{route="image",status="2xx"} 1"#
        ));
        assert!(has(
            r#"substruct_edge_tftp_transfers_finished_total{result="completed"} 1"#
        ));
        assert!(has("substruct_edge_tftp_bytes_sent_total 42"));
        assert!(has("substruct_edge_tftp_transfers_active 0"));
        assert!(has("substruct_edge_nats_connected 0"));
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        assert!(series < 200, "{series} series");
    }

    #[test]
    fn leases_count_per_subnet() {
        let m = Metrics::new();
        let a = m.dhcp.subnet("10.0.0.0/24".parse().unwrap(), 100);
        let b = m.dhcp.subnet("10.0.1.0/24".parse().unwrap(), 50);
        let ips = ["10.0.0.5", "10.0.0.6", "10.0.1.9", "192.168.0.1"]
            .map(|s| s.parse::<Ipv4Addr>().unwrap());
        SubnetGauges::set_counts(&[a, b], ips);
        let text = m.encode().unwrap();
        assert!(text.contains(r#"substruct_edge_dhcp_leases_active{subnet="10.0.0.0/24"} 2"#));
        assert!(text.contains(r#"substruct_edge_dhcp_leases_active{subnet="10.0.1.0/24"} 1"#));
        assert!(text.contains(r#"substruct_edge_dhcp_pool_addresses{subnet="10.0.1.0/24"} 50"#));
    }

    #[test]
    fn dhcp6_packets_and_leases_are_counted() {
        let m = Metrics::new();
        m.dhcp6.packet(Dhcp6Message::of(1), Dhcp6Result::Answered);
        m.dhcp6.packet(Dhcp6Message::of(12), Dhcp6Result::Dropped);
        m.dhcp6.packet(Dhcp6Message::of(3), Dhcp6Result::NotStored);
        m.dhcp6.set_leases(3, 256);
        let text = m.encode().unwrap();
        for line in [
            r#"substruct_edge_dhcp6_packets_received_total{message_type="solicit",result="answered"} 1"#,
            r#"substruct_edge_dhcp6_packets_received_total{message_type="other",result="dropped"} 1"#,
            r#"substruct_edge_dhcp6_packets_received_total{message_type="request",result="not_stored"} 1"#,
            r#"substruct_edge_dhcp6_packets_received_total{message_type="renew",result="answered"} 0"#,
            "substruct_edge_dhcp6_leases_active 3",
            "substruct_edge_dhcp6_pool_addresses 256",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(200), StatusClass::Success);
        assert_eq!(StatusClass::of(206), StatusClass::Success);
        assert_eq!(StatusClass::of(404), StatusClass::ClientError);
        assert_eq!(StatusClass::of(503), StatusClass::ServerError);
        assert_eq!(StatusClass::of(99), StatusClass::ServerError);
    }
}
