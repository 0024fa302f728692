//! The in-memory lease table [`super::core::decide`] works on: who holds which
//! address (bound lease, short offer hold, or declined quarantine). No clock and no
//! disk: time comes in as an argument, and every change that must be persisted
//! comes out as a [`LeaseChange`].

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use substruct_wire::Mac;

use super::settings::{DhcpSettings, Subnet};

/// Seconds since the UNIX epoch.
pub type UnixSecs = u64;

/// A bound address (possibly expired: kept so the client gets it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub expires: UnixSecs,
}

/// A change the lease store must persist before the reply that caused it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    /// New or renewed lease.
    Grant {
        mac: Mac,
        ip: Ipv4Addr,
        expires: UnixSecs,
    },
    /// The client gave the address back; it stays its preferred address.
    Release {
        mac: Mac,
        ip: Ipv4Addr,
        at: UnixSecs,
    },
    /// The MAC no longer has any record (its address went to someone else, or was declined).
    Forget { mac: Mac },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Lease { mac: Mac, expires: UnixSecs },
    Offer { mac: Mac, until: UnixSecs },
    Declined { until: UnixSecs },
}

/// Every address in use, by address and by MAC.
#[derive(Debug, Default, Clone)]
pub struct LeaseTable {
    by_ip: HashMap<Ipv4Addr, Holder>,
    by_mac: HashMap<Mac, (Ipv4Addr, UnixSecs)>,
    offers: HashMap<Mac, (Ipv4Addr, UnixSecs)>,
    cursors: HashMap<Ipv4Net, u64>,
    /// Quarantined addresses per subnet, oldest first (stale entries are dropped lazily).
    declined: HashMap<Ipv4Net, VecDeque<(Ipv4Addr, UnixSecs)>>,
}

/// What a DECLINE did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclineOutcome {
    /// The address was the client's offer or lease: it is quarantined (unless the
    /// subnet's quarantine cap is 0); `released` is the oldest quarantined address
    /// let go to stay within the cap.
    Quarantined {
        changes: Vec<LeaseChange>,
        released: Option<Ipv4Addr>,
    },
    /// The client was neither offered nor leased the address: nothing changed.
    NotTheClients,
}

impl LeaseTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table holding `leases` (as loaded from the store). If two records claim one
    /// address, the later expiry wins.
    pub fn from_leases(leases: impl IntoIterator<Item = Lease>) -> Self {
        let mut t = Self::new();
        for l in leases {
            let newer = match t.by_ip.get(&l.ip) {
                Some(Holder::Lease { expires, .. }) => l.expires > *expires,
                _ => true,
            };
            if !newer {
                continue;
            }
            if let Some(Holder::Lease { mac, .. }) = t.by_ip.get(&l.ip).copied() {
                t.by_mac.remove(&mac);
            }
            if let Some((old_ip, _)) = t.by_mac.insert(l.mac, (l.ip, l.expires)) {
                if old_ip != l.ip {
                    t.by_ip.remove(&old_ip);
                }
            }
            t.by_ip.insert(
                l.ip,
                Holder::Lease {
                    mac: l.mac,
                    expires: l.expires,
                },
            );
        }
        t
    }

    /// The MAC's bound address, expired or not.
    pub fn lease_of(&self, mac: &Mac) -> Option<Lease> {
        self.by_mac.get(mac).map(|&(ip, expires)| Lease {
            mac: *mac,
            ip,
            expires,
        })
    }

    /// The address currently offered to the MAC (held until the given time).
    pub fn offer_of(&self, mac: &Mac) -> Option<(Ipv4Addr, UnixSecs)> {
        self.offers.get(mac).copied()
    }

    /// Every bound lease (expired ones too).
    pub fn leases(&self) -> impl Iterator<Item = Lease> + '_ {
        self.by_mac.iter().map(|(mac, &(ip, expires))| Lease {
            mac: *mac,
            ip,
            expires,
        })
    }

    /// The MAC holding `ip` right now (active lease or offer), if any.
    pub fn holder_of(&self, ip: Ipv4Addr, now: UnixSecs) -> Option<Mac> {
        match self.by_ip.get(&ip)? {
            Holder::Lease { mac, expires } if *expires > now => Some(*mac),
            Holder::Offer { mac, until } if *until > now => Some(*mac),
            _ => None,
        }
    }

    /// True when `ip` may be given to `mac` now.
    pub fn available_for(&self, ip: Ipv4Addr, mac: &Mac, now: UnixSecs) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(Holder::Lease { mac: m, expires }) => m == mac || *expires <= now,
            Some(Holder::Offer { mac: m, until }) => m == mac || *until <= now,
            Some(Holder::Declined { until }) => *until <= now,
        }
    }

    /// Detaches whoever else holds `ip` (it is free: the caller checked).
    fn evict(&mut self, ip: Ipv4Addr, mac: &Mac, changes: &mut Vec<LeaseChange>) {
        match self.by_ip.get(&ip).copied() {
            Some(Holder::Lease { mac: other, .. }) if other != *mac => {
                if self.by_mac.get(&other).is_some_and(|(i, _)| *i == ip) {
                    self.by_mac.remove(&other);
                    changes.push(LeaseChange::Forget { mac: other });
                }
                self.by_ip.remove(&ip);
            }
            Some(Holder::Offer { mac: other, .. }) if other != *mac => {
                if self.offers.get(&other).is_some_and(|(i, _)| *i == ip) {
                    self.offers.remove(&other);
                }
                if self.by_mac.get(&other).is_some_and(|(i, _)| *i == ip) {
                    self.by_mac.remove(&other);
                    changes.push(LeaseChange::Forget { mac: other });
                }
                self.by_ip.remove(&ip);
            }
            Some(Holder::Declined { .. }) => {
                self.by_ip.remove(&ip);
            }
            _ => {}
        }
    }

    /// Holds `ip` for `mac` until `until` (an OFFER). Returns changes to persist
    /// (a previous expired owner of the address is forgotten).
    pub fn offer(&mut self, mac: Mac, ip: Ipv4Addr, until: UnixSecs) -> Vec<LeaseChange> {
        let mut changes = Vec::new();
        self.evict(ip, &mac, &mut changes);
        if let Some((old, _)) = self.offers.insert(mac, (ip, until)) {
            if old != ip
                && matches!(self.by_ip.get(&old), Some(Holder::Offer { mac: m, .. }) if *m == mac)
            {
                self.by_ip.remove(&old);
            }
        }
        let keep_lease = matches!(
            self.by_ip.get(&ip),
            Some(Holder::Lease { mac: m, expires }) if *m == mac && *expires >= until
        );
        if !keep_lease {
            self.by_ip.insert(ip, Holder::Offer { mac, until });
        }
        changes
    }

    /// The client chose another server: release its offer hold.
    pub fn drop_offer(&mut self, mac: &Mac) {
        if let Some((ip, _)) = self.offers.remove(mac) {
            if matches!(self.by_ip.get(&ip), Some(Holder::Offer { mac: m, .. }) if m == mac) {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Binds `ip` to `mac` until `expires` (an ACK).
    pub fn grant(&mut self, mac: Mac, ip: Ipv4Addr, expires: UnixSecs) -> Vec<LeaseChange> {
        let mut changes = Vec::new();
        self.evict(ip, &mac, &mut changes);
        if let Some((old, _)) = self.by_mac.insert(mac, (ip, expires)) {
            if old != ip
                && matches!(self.by_ip.get(&old), Some(Holder::Lease { mac: m, .. }) if *m == mac)
            {
                self.by_ip.remove(&old);
            }
        }
        if let Some((oip, _)) = self.offers.remove(&mac) {
            if oip != ip
                && matches!(self.by_ip.get(&oip), Some(Holder::Offer { mac: m, .. }) if *m == mac)
            {
                self.by_ip.remove(&oip);
            }
        }
        self.by_ip.insert(ip, Holder::Lease { mac, expires });
        changes.push(LeaseChange::Grant { mac, ip, expires });
        changes
    }

    /// The client released `ip`. `None` when it did not hold it.
    pub fn release(&mut self, mac: Mac, ip: Ipv4Addr, now: UnixSecs) -> Option<LeaseChange> {
        match self.by_mac.get_mut(&mac) {
            Some((held, expires)) if *held == ip => {
                *expires = (*expires).min(now);
                let at = *expires;
                // A client that releases has left SELECTING too: its pending offer ends.
                if let Some((oip, _)) = self.offers.remove(&mac) {
                    if oip != ip
                        && matches!(self.by_ip.get(&oip), Some(Holder::Offer { mac: m, .. }) if *m == mac)
                    {
                        self.by_ip.remove(&oip);
                    }
                }
                // The address may have gone to another client since this lease expired:
                // never overwrite that client's hold.
                let still_ours = match self.by_ip.get(&ip) {
                    None => true,
                    Some(Holder::Lease { mac: m, .. } | Holder::Offer { mac: m, .. }) => *m == mac,
                    Some(Holder::Declined { .. }) => false,
                };
                if still_ours {
                    self.by_ip.insert(ip, Holder::Lease { mac, expires: at });
                }
                Some(LeaseChange::Release { mac, ip, at })
            }
            _ => None,
        }
    }

    /// The client found `ip` in use. Taken only when `ip` is the client's own offer or
    /// lease; then the address is quarantined until `until` in `network`'s quarantine,
    /// which holds at most `cap` addresses (the oldest is let go first).
    pub fn decline(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        network: Ipv4Net,
        cap: usize,
        now: UnixSecs,
        until: UnixSecs,
    ) -> DeclineOutcome {
        let leased = self.by_mac.get(&mac).is_some_and(|(i, _)| *i == ip);
        let offered = self.offers.get(&mac).is_some_and(|(i, _)| *i == ip);
        if !leased && !offered {
            return DeclineOutcome::NotTheClients;
        }
        let mut changes = Vec::new();
        if leased {
            self.by_mac.remove(&mac);
            changes.push(LeaseChange::Forget { mac });
        }
        if offered {
            self.offers.remove(&mac);
        }
        // never knock out another client's active lease or offer
        let free = self.available_for(ip, &mac, now);
        if free {
            // an expired holder is detached, the client's own hold ends
            self.evict(ip, &mac, &mut changes);
            self.by_ip.remove(&ip);
        }
        let mut released = None;
        if free && cap > 0 {
            let queue = self.declined.entry(network).or_default();
            // stale: expired, or no longer quarantined (taken again after expiry)
            let by_ip = &self.by_ip;
            queue.retain(|(a, u)| {
                *u > now && matches!(by_ip.get(a), Some(Holder::Declined { until }) if until == u)
            });
            while queue.len() >= cap {
                let Some((oldest, _)) = queue.pop_front() else {
                    break;
                };
                self.by_ip.remove(&oldest);
                released = Some(oldest);
            }
            queue.push_back((ip, until));
            self.by_ip.insert(ip, Holder::Declined { until });
        }
        DeclineOutcome::Quarantined { changes, released }
    }

    /// Addresses quarantined now in `network`.
    pub fn quarantined(&self, network: &Ipv4Net, now: UnixSecs) -> usize {
        self.declined.get(network).map_or(0, |q| {
            q.iter()
                .filter(|(a, u)| {
                    *u > now
                        && matches!(self.by_ip.get(a), Some(Holder::Declined { until }) if until == u)
                })
                .count()
        })
    }

    /// Entries the table holds in all its maps: bounded by the pools, whatever the
    /// clients send.
    pub fn footprint(&self) -> usize {
        self.by_ip.len()
            + self.by_mac.len()
            + self.offers.len()
            + self.declined.values().map(VecDeque::len).sum::<usize>()
    }

    /// Next free pool address of `subnet` for `mac` (next-fit from a per-subnet
    /// cursor), skipping the server, the router, reservations and held addresses.
    pub fn allocate(
        &mut self,
        settings: &DhcpSettings,
        subnet: &Subnet,
        mac: &Mac,
        now: UnixSecs,
    ) -> Option<Ipv4Addr> {
        let total = subnet.pool_size();
        if total == 0 {
            return None;
        }
        let start = self.cursors.get(&subnet.network).copied().unwrap_or(0) % total;
        for step in 0..total {
            let idx = (start + step) % total;
            let Some(ip) = nth_pool_addr(subnet, idx) else {
                continue;
            };
            if ip == settings.server_ip
                || subnet.router == Some(ip)
                || settings.is_reserved_ip(ip)
                || !self.available_for(ip, mac, now)
            {
                continue;
            }
            self.cursors.insert(subnet.network, (idx + 1) % total);
            return Some(ip);
        }
        None
    }
}

fn nth_pool_addr(subnet: &Subnet, mut idx: u64) -> Option<Ipv4Addr> {
    for (s, e) in &subnet.pools {
        let (s, e) = (u64::from(u32::from(*s)), u64::from(u32::from(*e)));
        let n = e - s + 1;
        if idx < n {
            return u32::try_from(s + idx).ok().map(Ipv4Addr::from);
        }
        idx -= n;
    }
    None
}

/// True when `ip` lies in one of the subnet's pools.
pub fn in_pools(subnet: &Subnet, ip: Ipv4Addr) -> bool {
    let v = u32::from(ip);
    subnet
        .pools
        .iter()
        .any(|(s, e)| u32::from(*s) <= v && v <= u32::from(*e))
}
