//! The edge agent's DHCP server (full server or ProxyDHCP; relayed subnets).
//!
//! * [`settings`] — validated site settings ([`DhcpConfig`] → [`DhcpSettings`]);
//! * [`packet`] — raw request parsing ([`Request`]) and reply encoding, never panics;
//! * [`core`] — [`decide`]: the whole protocol and the boot-file choice, pure:
//!   no socket, no clock, no disk;
//! * [`table`] — the in-memory [`LeaseTable`] `decide` works on;
//! * [`store`] — [`LeaseStore`], leases persisted in redb;
//! * [`server`] — the I/O shell: [`bind_socket`], [`serve`] (receivers → one
//!   decider owning the table → group-committed redb writes → replies).

pub mod core;
pub mod packet;
pub mod server;
pub mod settings;
pub mod store;
pub mod table;

#[cfg(test)]
mod tests;

pub use self::core::{boot_choice, decide, decide_raw, Action, BootChoice, Decision};
pub use packet::{DropReason, ReplyPacket, Request};
pub use server::{
    bind_socket, serve, serve_with_events, serve_with_metrics, DhcpError, LeaseEvent,
};
pub use settings::{
    BiosChain, DhcpConfig, DhcpMode, DhcpSettings, Loader, Reservation, SettingsError, Subnet,
    UefiLoader,
};
pub use store::{LeaseStore, LeaseStoreError};
pub use table::{DeclineOutcome, Lease, LeaseChange, LeaseTable, UnixSecs};
