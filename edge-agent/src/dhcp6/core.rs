//! The DHCPv6 decision: one parsed client message in, one [`Decision6`] out. Pure: the
//! lease table and the clock are arguments; the lease changes to persist come back
//! with the reply.
//!
//! Stateful addresses (IA_NA) from one pool on the edge's /64, always the four-message
//! exchange (Rapid Commit is never answered: OVMF's PXE drops the whole session on a
//! Reply that carries it), preference 255 so that OVMF takes the offer at once, and
//! the boot file URL (option 59) chosen from the machine's intent the way the DHCPv4
//! server chooses option 67.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};

use substruct_wire::intent::{BootIntent, LocalBootWay};
use substruct_wire::Mac;

use super::packet::{
    ia_na_body, iaaddr_body, msg, opt, parse, status, status_body, DropReason6, IaNa, Request6,
    Writer,
};
use crate::dhcp::core::{LOCAL_BOOT_FILE, SHIM};
use crate::dhcp::settings::UefiLoader;
use crate::dhcp::table::UnixSecs;

/// How long an ADVERTISE holds its address for the client.
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long a DECLINEd address stays out of the pool.
pub const DECLINE_HOLD_SECS: u64 = 600;
/// The largest pool: 16,384 addresses (a site's machines, with room to spare; the
/// table stays a few MiB even when every address is held by a hostile client).
pub const MAX_POOL: u32 = 16_384;

/// The DHCPv6 settings of one site, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp6Settings {
    /// The edge's own address on the provisioning link (in the boot URLs).
    pub address: Ipv6Addr,
    /// The first address of the pool and how many follow it (inclusive range).
    pub pool_start: Ipv6Addr,
    pub pool_size: u32,
    pub preferred_secs: u32,
    pub valid_secs: u32,
    /// What UEFI PXE clients are given (as for DHCPv4).
    pub uefi_loader: UefiLoader,
    /// No DHCPv4 on the link: iPXE gets its script URL over DHCPv6 (else it takes it
    /// from DHCPv4 and gets an address only here).
    pub ipv6_only: bool,
    server_duid: Vec<u8>,
    tftp_base: String,
    http_base: String,
    /// `https://[address][:port]` when the edge serves HTTPS: UEFI HTTP-boot clients
    /// are sent there (as over DHCPv4).
    https_base: Option<String>,
}

/// Why DHCPv6 settings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Settings6Error {
    #[error("the DHCPv6 pool {0} is not START-END (two IPv6 addresses)")]
    PoolSyntax(String),
    #[error("the DHCPv6 pool {start}-{end} is empty (its end is before its start)")]
    PoolEmpty { start: Ipv6Addr, end: Ipv6Addr },
    #[error("the DHCPv6 pool {start}-{end} has {size} addresses; at most {MAX_POOL}")]
    PoolTooLarge {
        start: Ipv6Addr,
        end: Ipv6Addr,
        size: u128,
    },
    #[error("the DHCPv6 pool {start}-{end} is not in the /64 of the edge's address {address}")]
    PoolOffLink {
        start: Ipv6Addr,
        end: Ipv6Addr,
        address: Ipv6Addr,
    },
    #[error("the edge's IPv6 address {0} must be a global or unique-local unicast address")]
    BadAddress(Ipv6Addr),
    #[error("the preferred lifetime ({preferred} s) exceeds the valid one ({valid} s), or the valid one is under 60 s")]
    Lifetimes { preferred: u32, valid: u32 },
}

impl Dhcp6Settings {
    /// Checks and builds the settings. `pool` is `START-END`; `mac` is the provisioning
    /// interface's (the server's DUID-LL, stable across restarts).
    pub fn new(
        address: Ipv6Addr,
        pool: &str,
        preferred_secs: u32,
        valid_secs: u32,
        uefi_loader: UefiLoader,
        http_port: u16,
        mac: Mac,
    ) -> Result<Self, Settings6Error> {
        let o = address.octets();
        if address.is_unspecified()
            || address.is_loopback()
            || address.is_multicast()
            || (o[0] == 0xfe && o[1] & 0xc0 == 0x80)
        {
            return Err(Settings6Error::BadAddress(address));
        }
        let (start, end) = pool
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
            .ok_or_else(|| Settings6Error::PoolSyntax(pool.to_owned()))?;
        let (start, end): (Ipv6Addr, Ipv6Addr) = (start, end);
        let (s, e) = (u128::from(start), u128::from(end));
        if e < s {
            return Err(Settings6Error::PoolEmpty { start, end });
        }
        let size = e - s + 1;
        if size > u128::from(MAX_POOL) {
            return Err(Settings6Error::PoolTooLarge { start, end, size });
        }
        let net = |a: Ipv6Addr| u128::from(a) >> 64;
        if net(start) != net(address) || net(end) != net(address) {
            return Err(Settings6Error::PoolOffLink {
                start,
                end,
                address,
            });
        }
        if preferred_secs > valid_secs || valid_secs < 60 {
            return Err(Settings6Error::Lifetimes {
                preferred: preferred_secs,
                valid: valid_secs,
            });
        }
        let mut server_duid = vec![0, 3, 0, 1];
        server_duid.extend_from_slice(&mac.0);
        let port = if http_port == 80 {
            String::new()
        } else {
            format!(":{http_port}")
        };
        Ok(Self {
            address,
            pool_start: start,
            pool_size: u32::try_from(size).unwrap_or(MAX_POOL),
            preferred_secs,
            valid_secs,
            uefi_loader,
            ipv6_only: false,
            server_duid,
            tftp_base: format!("tftp://[{address}]"),
            http_base: format!("http://[{address}]{port}"),
            https_base: None,
        })
    }

    /// The same settings with the server DUID of interface MAC `mac`.
    pub fn with_server_mac(mut self, mac: Mac) -> Self {
        self.server_duid = vec![0, 3, 0, 1];
        self.server_duid.extend_from_slice(&mac.0);
        self
    }

    /// The same settings sending UEFI HTTP-boot clients to HTTPS on `port` (`None`: HTTP).
    pub fn with_https_port(mut self, port: Option<u16>) -> Self {
        self.https_base = port.map(|p| match p {
            443 => format!("https://[{}]", self.address),
            p => format!("https://[{}]:{p}", self.address),
        });
        self
    }

    /// The server's DUID (DUID-LL of the provisioning interface).
    pub fn server_duid(&self) -> &[u8] {
        &self.server_duid
    }

    /// `http://[address]` (with `:port` unless 80).
    pub fn http_base(&self) -> &str {
        &self.http_base
    }

    fn in_pool(&self, addr: Ipv6Addr) -> bool {
        let (a, s) = (u128::from(addr), u128::from(self.pool_start));
        a >= s && a - s < u128::from(self.pool_size)
    }

    fn on_link(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) >> 64 == u128::from(self.address) >> 64
    }

    fn nth(&self, i: u32) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.pool_start) + u128::from(i % self.pool_size.max(1)))
    }
}

/// A client's identity association: its DUID and the IAID.
pub type ClientKey = (Vec<u8>, u32);

/// One DHCPv6 lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease6 {
    pub duid: Vec<u8>,
    pub iaid: u32,
    pub addr: Ipv6Addr,
    pub expires: UnixSecs,
    /// The machine's MAC when the request showed it (EUI-64 link-local source, DUID-LL
    /// or DUID-LLT): the HTTP server binds requests from `addr` to it.
    pub mac: Option<Mac>,
}

/// A change to persist before the reply goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease6Change {
    Grant(Lease6),
    Forget { duid: Vec<u8>, iaid: u32 },
}

/// Who holds an address, until when, and whether as a lease (else an offer).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hold {
    key: ClientKey,
    until: UnixSecs,
    lease: bool,
    /// The holder's MAC, once a request of this client showed it.
    mac: Option<Mac>,
}

/// The leases and offers of one pool, in memory.
#[derive(Debug, Default, Clone)]
pub struct Lease6Table {
    /// Client → its address (lease or offer).
    by_client: HashMap<ClientKey, Ipv6Addr>,
    /// Address → its holder.
    holders: HashMap<Ipv6Addr, Hold>,
    /// Declined addresses, out of the pool until the time given.
    declined: HashMap<Ipv6Addr, UnixSecs>,
    /// The last time expired holds were dropped.
    pruned: UnixSecs,
}

impl Lease6Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// The table after a restart: the stored leases (expired ones are dropped at the
    /// first prune).
    pub fn from_leases(leases: impl IntoIterator<Item = Lease6>) -> Self {
        let mut t = Self::new();
        for l in leases {
            let key = (l.duid, l.iaid);
            t.hold(key, l.addr, l.expires, true, l.mac);
        }
        t
    }

    /// The current lease of a client (not an offer), if any.
    pub fn lease_of(&self, duid: &[u8], iaid: u32) -> Option<Lease6> {
        let key = (duid.to_vec(), iaid);
        let addr = *self.by_client.get(&key)?;
        let h = self.holders.get(&addr)?;
        (h.lease && h.key == key).then(|| Lease6 {
            duid: key.0.clone(),
            iaid,
            addr,
            expires: h.until,
            mac: h.mac,
        })
    }

    /// Unexpired leases (offers not counted), for metrics.
    pub fn active_leases(&self, now: UnixSecs) -> usize {
        self.holders
            .values()
            .filter(|h| h.lease && h.until > now)
            .count()
    }

    /// Addresses held (leases and unexpired offers), for metrics and tests.
    pub fn held(&self) -> usize {
        self.holders.len()
    }

    fn prune(&mut self, now: UnixSecs) {
        if now == self.pruned {
            return;
        }
        self.pruned = now;
        let expired: Vec<Ipv6Addr> = self
            .holders
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(a, _)| *a)
            .collect();
        for a in expired {
            if let Some(h) = self.holders.remove(&a) {
                if self.by_client.get(&h.key) == Some(&a) {
                    self.by_client.remove(&h.key);
                }
            }
        }
        self.declined.retain(|_, until| *until > now);
    }

    fn available(&self, addr: Ipv6Addr, key: &ClientKey, now: UnixSecs) -> bool {
        if self.declined.get(&addr).is_some_and(|until| *until > now) {
            return false;
        }
        match self.holders.get(&addr) {
            None => true,
            Some(h) => &h.key == key || h.until <= now,
        }
    }

    /// Holds `addr` for `key`. Without a `mac`, the MAC this client's hold of `addr`
    /// already had is kept (a renewal from an address that shows no MAC).
    fn hold(
        &mut self,
        key: ClientKey,
        addr: Ipv6Addr,
        until: UnixSecs,
        lease: bool,
        mac: Option<Mac>,
    ) {
        let mac = mac.or_else(|| {
            self.holders
                .get(&addr)
                .filter(|h| h.key == key)
                .and_then(|h| h.mac)
        });
        if let Some(old) = self.by_client.insert(key.clone(), addr) {
            if old != addr && self.holders.get(&old).is_some_and(|h| h.key == key) {
                self.holders.remove(&old);
            }
        }
        if let Some(prev) = self.holders.insert(
            addr,
            Hold {
                key: key.clone(),
                until,
                lease,
                mac,
            },
        ) {
            if prev.key != key && self.by_client.get(&prev.key) == Some(&addr) {
                self.by_client.remove(&prev.key);
            }
        }
    }

    /// The address for `key`: what it holds, else the one it asks for, else a free one
    /// (searched from a point that depends on the client, so clients spread out).
    fn pick(
        &mut self,
        key: &ClientKey,
        want: &[Ipv6Addr],
        settings: &Dhcp6Settings,
        now: UnixSecs,
    ) -> Option<Ipv6Addr> {
        self.prune(now);
        let usable = |t: &Self, a: Ipv6Addr| {
            settings.in_pool(a) && a != settings.address && t.available(a, key, now)
        };
        let mut candidates: Vec<Ipv6Addr> = self.by_client.get(key).copied().into_iter().collect();
        candidates.extend(want.iter().copied());
        if let Some(a) = candidates.into_iter().find(|a| usable(self, *a)) {
            return Some(a);
        }
        let in_pool_server = u32::from(settings.in_pool(settings.address));
        let taken = self.holders.len() + self.declined.len();
        if taken as u64 + u64::from(in_pool_server) >= u64::from(settings.pool_size) {
            return None;
        }
        let start = fnv(key);
        (0..settings.pool_size)
            .map(|i| settings.nth(start.wrapping_add(i)))
            .find(|a| usable(self, *a))
    }

    /// Holds an address for `key` for [`OFFER_HOLD_SECS`] (an ADVERTISE).
    pub fn offer(
        &mut self,
        key: &ClientKey,
        want: &[Ipv6Addr],
        settings: &Dhcp6Settings,
        now: UnixSecs,
    ) -> Option<Ipv6Addr> {
        let addr = self.pick(key, want, settings, now)?;
        let keeps_lease = self
            .holders
            .get(&addr)
            .is_some_and(|h| h.lease && &h.key == key && h.until > now);
        if !keeps_lease {
            self.hold(key.clone(), addr, now + OFFER_HOLD_SECS, false, None);
        }
        Some(addr)
    }

    /// Leases an address to `key` for the valid lifetime (a REQUEST); `mac` is what the
    /// request showed.
    pub fn grant(
        &mut self,
        key: &ClientKey,
        want: &[Ipv6Addr],
        settings: &Dhcp6Settings,
        now: UnixSecs,
        mac: Option<Mac>,
    ) -> Option<Lease6> {
        let addr = self.pick(key, want, settings, now)?;
        Some(self.lease(key, addr, settings, now, mac))
    }

    fn lease(
        &mut self,
        key: &ClientKey,
        addr: Ipv6Addr,
        s: &Dhcp6Settings,
        now: UnixSecs,
        mac: Option<Mac>,
    ) -> Lease6 {
        let expires = now + u64::from(s.valid_secs);
        self.hold(key.clone(), addr, expires, true, mac);
        Lease6 {
            duid: key.0.clone(),
            iaid: key.1,
            addr,
            expires,
            mac: self.holders.get(&addr).and_then(|h| h.mac),
        }
    }

    /// Extends `key`'s lease of `addr` (RENEW, REBIND); `None` when it holds no such lease.
    pub fn extend(
        &mut self,
        key: &ClientKey,
        addr: Ipv6Addr,
        settings: &Dhcp6Settings,
        now: UnixSecs,
        mac: Option<Mac>,
    ) -> Option<Lease6> {
        self.prune(now);
        let h = self.holders.get(&addr)?;
        (h.lease && &h.key == key).then(|| self.lease(key, addr, settings, now, mac))
    }

    /// Ends `key`'s lease of `addr` (RELEASE); with `declined`, the address stays out of
    /// the pool for [`DECLINE_HOLD_SECS`] (DECLINE: someone else uses it). `None` when
    /// `key` does not hold `addr`.
    pub fn end(
        &mut self,
        key: &ClientKey,
        addr: Ipv6Addr,
        declined: Option<(UnixSecs, u32)>,
    ) -> Option<Lease6Change> {
        let h = self.holders.get(&addr)?;
        if &h.key != key {
            return None;
        }
        self.holders.remove(&addr);
        if self.by_client.get(key) == Some(&addr) {
            self.by_client.remove(key);
        }
        if let Some((now, pool_size)) = declined {
            // At most a quarter of the pool quarantined, so a client that changes its
            // DUID for each DECLINE cannot drain the pool.
            if (self.declined.len() as u64) < u64::from(pool_size / 4) {
                self.declined.insert(addr, now + DECLINE_HOLD_SECS);
            }
        }
        Some(Lease6Change::Forget {
            duid: key.0.clone(),
            iaid: key.1,
        })
    }
}

/// FNV-1a of a client key: where its address search starts.
fn fnv(key: &ClientKey) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.0.iter().chain(key.1.to_be_bytes().iter()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// What to do with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action6 {
    Reply { packet: Vec<u8>, dest: SocketAddrV6 },
    Drop { reason: DropReason6 },
}

/// The decision and the lease changes to commit before the reply is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision6 {
    pub action: Action6,
    pub changes: Vec<Lease6Change>,
    /// The machine (when its MAC is known) and the boot URL sent, for the log.
    pub mac: Option<Mac>,
    pub boot_url: Option<String>,
}

impl Decision6 {
    fn drop(reason: DropReason6) -> Self {
        Self {
            action: Action6::Drop { reason },
            changes: Vec::new(),
            mac: None,
            boot_url: None,
        }
    }
}

/// The boot file URL (option 59) for a client, and whether it is a UEFI HTTP-boot
/// client (whose offer must carry vendor class `HTTPClient`). `None`: address only.
pub fn boot_url(
    req: &Request6,
    settings: &Dhcp6Settings,
    intent: Option<&BootIntent>,
) -> Option<(String, bool)> {
    if matches!(
        intent,
        Some(BootIntent::Local {
            way: LocalBootWay::NoBootFile
        })
    ) {
        return None;
    }
    let local = matches!(intent, Some(BootIntent::Local { .. }));
    // iPXE runs DHCPv4 beside DHCPv6: on a dual-stack link it takes its script URL from
    // DHCPv4 (an address only, here); on an IPv6-only link from here, as a full URL
    // (iPXE builds no URL from a bare file name over IPv6).
    if req.is_ipxe() {
        return settings
            .ipv6_only
            .then(|| (format!("{}/boot.ipxe", settings.http_base), false));
    }
    if req.is_http_client() {
        let file = if local { LOCAL_BOOT_FILE } else { "ipxe.efi" };
        let base = settings.https_base.as_ref().unwrap_or(&settings.http_base);
        return Some((format!("{base}/{file}"), true));
    }
    match req.arch {
        Some(6 | 7 | 9) => {
            let file = if local {
                LOCAL_BOOT_FILE
            } else {
                match settings.uefi_loader {
                    UefiLoader::IpxeEfi => "ipxe.efi",
                    UefiLoader::SnpOnly => "snponly.efi",
                    UefiLoader::Shim => SHIM,
                }
            };
            Some((format!("{}/{file}", settings.tftp_base), false))
        }
        _ => None,
    }
}

/// Parses `buf` and decides; a malformed packet becomes a `Drop`.
pub fn decide_raw(
    buf: &[u8],
    source: SocketAddrV6,
    settings: &Dhcp6Settings,
    table: &mut Lease6Table,
    intent_of: impl FnOnce(&Mac) -> Option<BootIntent>,
    now: UnixSecs,
) -> Decision6 {
    match parse(buf, source) {
        Ok(req) => {
            let intent = req.mac().and_then(|m| intent_of(&m));
            decide(&req, settings, table, intent.as_ref(), now)
        }
        Err(reason) => Decision6::drop(reason),
    }
}

/// The whole protocol for one parsed client message.
pub fn decide(
    req: &Request6,
    settings: &Dhcp6Settings,
    table: &mut Lease6Table,
    intent: Option<&BootIntent>,
    now: UnixSecs,
) -> Decision6 {
    if req
        .server_id
        .as_deref()
        .is_some_and(|id| id != settings.server_duid.as_slice())
    {
        return Decision6::drop(DropReason6::OtherServer);
    }
    let duid = req.client_id.clone().unwrap_or_default();
    let key = |ia: &IaNa| (duid.clone(), ia.iaid);
    let s = settings;
    let (t1, t2) = (s.valid_secs / 2, s.valid_secs / 5 * 4);
    let mut changes = Vec::new();
    let mut ias: Vec<Vec<u8>> = Vec::new();
    let mut top_status: Option<Vec<u8>> = None;
    let with_addr = |ia: &IaNa, addr: Ipv6Addr| {
        ia_na_body(
            ia.iaid,
            t1,
            t2,
            &[(
                opt::IAADDR,
                iaaddr_body(addr, s.preferred_secs, s.valid_secs),
            )],
        )
    };
    let with_status = |ia: &IaNa, code: u16, text: &str| {
        ia_na_body(
            ia.iaid,
            0,
            0,
            &[(opt::STATUS_CODE, status_body(code, text))],
        )
    };
    let reply_type = match req.msg_type {
        msg::SOLICIT => {
            for ia in &req.ia_na {
                ias.push(match table.offer(&key(ia), &ia.addrs, s, now) {
                    Some(a) => with_addr(ia, a),
                    None => with_status(ia, status::NO_ADDRS_AVAIL, "the pool is full"),
                });
            }
            msg::ADVERTISE
        }
        // REQUEST leases (a new or the offered address); RENEW and REBIND extend a lease
        // the client holds. Either way a lease goes into the reply and the store.
        msg::REQUEST | msg::RENEW | msg::REBIND => {
            for ia in &req.ia_na {
                let (lease, code, text) = if req.msg_type == msg::REQUEST {
                    let granted = table.grant(&key(ia), &ia.addrs, s, now, req.mac());
                    (granted, status::NO_ADDRS_AVAIL, "the pool is full")
                } else {
                    let extended = ia
                        .addrs
                        .iter()
                        .find_map(|a| table.extend(&key(ia), *a, s, now, req.mac()));
                    (extended, status::NO_BINDING, "no such lease here")
                };
                ias.push(match lease {
                    Some(l) => {
                        let body = with_addr(ia, l.addr);
                        changes.push(Lease6Change::Grant(l));
                        body
                    }
                    None => with_status(ia, code, text),
                });
            }
            msg::REPLY
        }
        // A RELEASE is acknowledged but the lease is kept until it ends: UEFI firmware
        // releases its PXE lease when a loader takes the NIC over (GRUB opens the NIC
        // exclusively, which stops the firmware's DHCPv6) and the loader goes on using
        // the address, so it must be neither handed to another machine nor unbound
        // from this one.
        msg::RELEASE => {
            top_status = Some(status_body(status::SUCCESS, "done"));
            msg::REPLY
        }
        msg::DECLINE => {
            let declined = Some((now, s.pool_size));
            for ia in &req.ia_na {
                for a in &ia.addrs {
                    if let Some(c) = table.end(&key(ia), *a, declined) {
                        changes.push(c);
                    }
                }
            }
            top_status = Some(status_body(status::SUCCESS, "done"));
            msg::REPLY
        }
        msg::CONFIRM => {
            let addrs: Vec<Ipv6Addr> = req.ia_na.iter().flat_map(|ia| ia.addrs.clone()).collect();
            if addrs.is_empty() {
                return Decision6::drop(DropReason6::NothingToConfirm);
            }
            top_status = Some(if addrs.iter().all(|a| s.on_link(*a)) {
                status_body(status::SUCCESS, "on link")
            } else {
                status_body(status::NOT_ON_LINK, "not on this link")
            });
            msg::REPLY
        }
        // INFORMATION_REQUEST: options only.
        _ => msg::REPLY,
    };
    let boot = boot_url(req, s, intent);
    let mut w = Writer::new(reply_type, req.xid);
    if let Some(id) = &req.client_id {
        w.option(opt::CLIENTID, id);
    }
    w.option(opt::SERVERID, &s.server_duid);
    // The URL before the IAs: OVMF's HTTP boot reads option 59 as if NUL-terminated,
    // so it is never the packet's last option.
    if let Some((url, http)) = &boot {
        w.option(opt::BOOTFILE_URL, url.as_bytes());
        if *http {
            let class = b"HTTPClient";
            let mut body = 343u32.to_be_bytes().to_vec();
            body.extend_from_slice(&(class.len() as u16).to_be_bytes());
            body.extend_from_slice(class);
            w.option(opt::VENDOR_CLASS, &body);
        }
    }
    for ia in &ias {
        w.option(opt::IA_NA, ia);
    }
    if let Some(st) = &top_status {
        w.option(opt::STATUS_CODE, st);
    }
    if reply_type == msg::ADVERTISE {
        w.option(opt::PREFERENCE, &[255]);
    }
    Decision6 {
        action: Action6::Reply {
            packet: w.finish(),
            dest: req.source,
        },
        changes,
        mac: req.mac(),
        boot_url: boot.map(|(u, _)| u),
    }
}
