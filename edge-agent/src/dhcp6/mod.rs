//! The edge agent's DHCPv6 server (RFC 8415, stateful addresses; RFC 5970 boot file
//! URL): what UEFI firmware's IPv6 PXE and HTTP boot clients need to reach the edge.
//!
//! * [`packet`] — our own strict parser and encoder ([`Request6`], [`DropReason6`]);
//! * [`core`] — [`decide`]: the protocol, the lease table ([`Lease6Table`]) and the boot
//!   URL by the machine's intent, pure;
//! * [`server`] — the I/O shell ([`bind_socket6`], [`serve6`]); leases persist in the
//!   same redb file as the DHCPv4 ones (table `leases6`).
//!
//! Not served: relayed DHCPv6 (relay-forward is dropped), prefix delegation, temporary
//! addresses (IA_TA), Rapid Commit, Reconfigure.

pub mod core;
pub mod packet;
pub mod server;

#[cfg(test)]
mod tests;

pub use self::core::{
    boot_url, decide, decide_raw, Action6, ClientKey, Decision6, Dhcp6Settings, Lease6,
    Lease6Change, Lease6Table, Settings6Error,
};
pub use packet::{parse, DropReason6, IaNa, Request6};
pub use server::{bind_socket6, serve6, serve6_with_metrics, ALL_DHCP_SERVERS, SERVER_PORT};
