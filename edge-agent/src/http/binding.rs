//! Is the asker the machine it names? PXE has no client authentication, so the edge binds
//! what a request may get to the address the machine booted with: in server mode the
//! address the edge's DHCP leased to the MAC (the lease store is written before the
//! client hears of its address), in ProxyDHCP mode the MAC the kernel's neighbour table
//! shows at the request's source address. A request from any other address is not bound
//! (see [`super`] for what it gets instead). An attacker on the same segment who spoofs
//! both the MAC and the address still passes: that is the limit of PXE.
//!
//! Over IPv6 (server mode), the address the edge's DHCPv6 leased to the MAC (the lease
//! records the MAC its request showed), and on an IPv6-only site also the MAC's EUI-64
//! address in the site's /64: the live OS configures that one itself from the edge's
//! router advertisement (SLAAC), as the kernel does by default.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use substruct_wire::Mac;

use crate::dhcp::LeaseStore;

/// The kernel's IPv4 neighbour table, in the format [`neighbour_has`] reads.
pub const PROC_NET_ARP: &str = "/proc/net/arp";

/// How the edge decides whether a source address belongs to a MAC.
#[derive(Debug, Clone, Default)]
pub enum Binding {
    /// Nothing is bound: no request gets a credential, an install file or a callback.
    #[default]
    Nobody,
    /// Server mode: the unexpired lease (DHCPv4 or DHCPv6) of the MAC is the source address.
    Leases(LeaseStore),
    /// Server mode on an IPv6-only site: as `Leases`, and the MAC's EUI-64 address in
    /// the /64 of `link` (the prefix the edge advertises for SLAAC) is bound too.
    LeasesSlaac { store: LeaseStore, link: Ipv6Addr },
    /// ProxyDHCP mode: a complete entry of the neighbour table at this path (normally
    /// [`PROC_NET_ARP`]) maps the source address to the MAC.
    Neighbours(PathBuf),
}

impl Binding {
    /// Whether `peer` is the address bound to `mac` now. Failures to read the lease store
    /// or the neighbour table count as "not bound" (and are logged).
    pub fn holds(&self, peer: IpAddr, mac: &Mac) -> bool {
        let peer = match peer.to_canonical() {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => return self.holds6(v6, mac),
        };
        match self {
            Binding::Nobody => false,
            Binding::Leases(store) | Binding::LeasesSlaac { store, .. } => {
                match store.lease_of(mac) {
                    Ok(Some(lease)) => lease.ip == peer && lease.expires > unix_now(),
                    Ok(None) => false,
                    Err(e) => {
                        tracing::warn!(error = %substruct_runtime::error_chain(&e),
                        "cannot read the lease store; request not bound");
                        false
                    }
                }
            }
            Binding::Neighbours(path) => match std::fs::read_to_string(path) {
                Ok(table) => neighbour_has(&table, peer, mac),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e,
                        "cannot read the neighbour table; request not bound");
                    false
                }
            },
        }
    }

    fn holds6(&self, peer: Ipv6Addr, mac: &Mac) -> bool {
        let store = match self {
            // The ARP table is IPv4 only; ProxyDHCP serves no DHCPv6.
            Binding::Nobody | Binding::Neighbours(_) => return false,
            Binding::Leases(store) | Binding::LeasesSlaac { store, .. } => store,
        };
        if let Binding::LeasesSlaac { link, .. } = self {
            if is_slaac_of(peer, *link, mac) {
                return true;
            }
        }
        match store.lease6_at(peer) {
            Ok(Some((holder, expires))) => holder == *mac && expires > unix_now(),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %substruct_runtime::error_chain(&e),
                    "cannot read the lease store; request not bound");
                false
            }
        }
    }

    /// Whether `peer` is bound to any of `macs`.
    pub fn holds_any<'a>(&self, peer: IpAddr, macs: impl IntoIterator<Item = &'a Mac>) -> bool {
        macs.into_iter().any(|m| self.holds(peer, m))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `addr` is `mac`'s modified EUI-64 address (RFC 4291 appendix A) in the /64 of
/// `link`.
pub fn is_slaac_of(addr: Ipv6Addr, link: Ipv6Addr, mac: &Mac) -> bool {
    let (a, l) = (addr.octets(), link.octets());
    let m = mac.0;
    a[..8] == l[..8] && a[8..] == [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]
}

/// `ATF_COM`: the entry is complete (the MAC was learnt, not just asked for).
const ATF_COM: u32 = 0x2;

/// Whether a `/proc/net/arp` text has a complete entry mapping `ip` to `mac`:
/// `IP address  HW type  Flags  HW address  Mask  Device`, one entry a line after a header.
pub fn neighbour_has(table: &str, ip: Ipv4Addr, mac: &Mac) -> bool {
    table.lines().skip(1).any(|line| {
        let mut cols = line.split_whitespace();
        let (Some(addr), Some(_hw_type), Some(flags), Some(hw)) =
            (cols.next(), cols.next(), cols.next(), cols.next())
        else {
            return false;
        };
        let complete =
            u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|f| f & ATF_COM != 0);
        complete
            && addr.parse::<Ipv4Addr>().is_ok_and(|a| a == ip)
            && Mac::parse(hw).is_ok_and(|m| m == *mac)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TABLE: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
10.77.0.10       0x1         0x2         52:54:00:77:00:0a     *        br0
10.77.0.11       0x1         0x0         52:54:00:77:00:0b     *        br0
garbage
";

    #[test]
    fn neighbour_entries_must_be_complete_and_match() {
        let a = Mac::parse("52:54:00:77:00:0a").unwrap();
        let b = Mac::parse("52:54:00:77:00:0b").unwrap();
        assert!(neighbour_has(TABLE, "10.77.0.10".parse().unwrap(), &a));
        assert!(!neighbour_has(TABLE, "10.77.0.11".parse().unwrap(), &a));
        // Incomplete entry: not bound.
        assert!(!neighbour_has(TABLE, "10.77.0.11".parse().unwrap(), &b));
        assert!(!neighbour_has("", "10.77.0.10".parse().unwrap(), &a));
    }

    #[test]
    fn nobody_binds_nothing_and_ipv6_is_never_bound() {
        let a = Mac::parse("52:54:00:77:00:0a").unwrap();
        assert!(!Binding::Nobody.holds("10.77.0.10".parse().unwrap(), &a));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arp");
        std::fs::write(&path, TABLE).unwrap();
        let n = Binding::Neighbours(path);
        assert!(n.holds("10.77.0.10".parse().unwrap(), &a));
        assert!(n.holds("::ffff:10.77.0.10".parse().unwrap(), &a));
        assert!(!n.holds("fe80::1".parse().unwrap(), &a));
    }

    #[test]
    fn slaac_addresses_bind_only_in_the_sites_64() {
        let a = Mac::parse("52:54:00:77:60:0a").unwrap();
        let b = Mac::parse("52:54:00:77:60:0b").unwrap();
        let link: Ipv6Addr = "fd77::1".parse().unwrap();
        let ours: Ipv6Addr = "fd77::5054:ff:fe77:600a".parse().unwrap();
        assert!(is_slaac_of(ours, link, &a));
        assert!(!is_slaac_of(ours, link, &b));
        // The same interface id in another /64 (a routed asker) is not bound.
        assert!(!is_slaac_of(
            "fd78::5054:ff:fe77:600a".parse().unwrap(),
            link,
            &a
        ));
        // The universal/local bit must be flipped.
        assert!(!is_slaac_of(
            "fd77::5254:ff:fe77:600a".parse().unwrap(),
            link,
            &a
        ));
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::open(dir.path().join("leases.redb")).unwrap();
        let slaac = Binding::LeasesSlaac {
            store: store.clone(),
            link,
        };
        assert!(slaac.holds(IpAddr::V6(ours), &a));
        assert!(!slaac.holds(IpAddr::V6(ours), &b));
        // Without SLAAC (a dual-stack site) only DHCPv6 leases bind.
        assert!(!Binding::Leases(store).holds(IpAddr::V6(ours), &a));
    }

    #[test]
    fn dhcpv6_leases_bind_their_mac_until_they_expire_or_end() {
        use crate::dhcp6::{Lease6, Lease6Change};
        let a = Mac::parse("52:54:00:77:60:0a").unwrap();
        let b = Mac::parse("52:54:00:77:60:0b").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::open(dir.path().join("leases.redb")).unwrap();
        let binding = Binding::Leases(store.clone());
        let addr: Ipv6Addr = "fd77::105".parse().unwrap();
        let lease = |mac: Option<Mac>, duid: u8, expires: u64| Lease6 {
            duid: vec![0, 4, duid],
            iaid: 7,
            addr,
            expires,
            mac,
        };
        let later = unix_now() + 3600;
        store
            .apply6(&[Lease6Change::Grant(lease(Some(a), 1, later))])
            .unwrap();
        assert!(binding.holds(IpAddr::V6(addr), &a));
        assert!(!binding.holds(IpAddr::V6(addr), &b));
        assert!(!binding.holds("fd77::106".parse().unwrap(), &a));
        // Expired: not bound.
        store
            .apply6(&[Lease6Change::Grant(lease(Some(a), 1, 1))])
            .unwrap();
        assert!(!binding.holds(IpAddr::V6(addr), &a));
        // The address passes to another client whose MAC is unknown: the old holder loses it
        // (the lease table, not the store, keeps a renewing client's MAC: dhcp6 tests).
        store
            .apply6(&[Lease6Change::Grant(lease(Some(a), 1, later))])
            .unwrap();
        // A restart reads the MAC back with the lease.
        assert_eq!(store.load6().unwrap()[0].mac, Some(a));
        store
            .apply6(&[Lease6Change::Grant(lease(None, 2, later))])
            .unwrap();
        assert!(!binding.holds(IpAddr::V6(addr), &a));
        // Released: not bound.
        store
            .apply6(&[Lease6Change::Grant(lease(Some(b), 3, later))])
            .unwrap();
        assert!(binding.holds(IpAddr::V6(addr), &b));
        store
            .apply6(&[Lease6Change::Forget {
                duid: vec![0, 4, 3],
                iaid: 7,
            }])
            .unwrap();
        assert!(!binding.holds(IpAddr::V6(addr), &b));
    }
}
