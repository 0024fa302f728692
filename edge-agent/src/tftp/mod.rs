//! Read-only TFTP server for PXE boot (RFC 1350, 2347, 2348, 2349, 7440).
//!
//! Layout: [`packet`] is the codec, [`transfer`] the sans-IO state machine of one transfer
//! (windows, retransmits, 16-bit block rollover), [`files`] decides what may be served, and
//! this module is the thin shell around them: the main socket is read by a tokio task; each
//! transfer gets its own ephemeral socket (a new TID) and, for its data phase, its own thread
//! with a blocking socket (cheaper per block than async readiness polling; see
//! `benches/tftp_bench.rs`). A transfer thread stops within 100 ms of cancellation.
//!
//! Read-only: write requests get ERROR 2. `netascii` requests are served byte for byte, like
//! `octet` (boot files are binary). Names are resolved by [`TftpFiles`]: nothing outside its
//! roots is served.
//!
//! PXE ROM behaviour handled on purpose: many ROMs send a read request with `tsize`, read the
//! OACK, abort with ERROR 8 and send the real request from the same source port. A different
//! read request from an address (and port) with a live transfer cancels that transfer at once
//! and starts the new one; the same request again (a retransmission: the answer was slow) leaves
//! the live transfer alone, which the client may already be talking to, and starts at most one
//! more beside it. An ERROR from the client ends its transfer at once.
//!
//! Bounded against a hostile LAN (see [`TftpSettings`]): the `timeout` option is accepted only
//! up to a few seconds, transfers are capped per client address and in total, and when the
//! table is full a transfer that never heard from its client (a spoofed source) gives way.

pub mod files;
pub mod packet;
mod server;
pub mod transfer;

use std::time::Duration;

pub use files::{LookupError, Rendered, Source, TftpFiles, DEBIAN_LOADERS};
pub use server::{serve, serve_with, serve_with_metrics};

/// Tunables of the TFTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpSettings {
    /// Largest block size granted; larger requests are answered with this (RFC 2348). 1468 fits
    /// a 1500-byte Ethernet MTU.
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440).
    pub max_windowsize: u16,
    /// Retransmit timeout unless the client negotiates `timeout`.
    pub timeout: Duration,
    /// Largest `timeout` option accepted (RFC 2349 allows up to 255 s, and the OACK must
    /// echo the client's value): a larger one is left out of the OACK and `timeout`
    /// applies. A client that never answers holds its slot at most
    /// `max(timeout, max_client_timeout) × (max_retries + 1)`.
    pub max_client_timeout: Duration,
    /// Retransmits in a row before a transfer is abandoned.
    pub max_retries: u32,
    /// Concurrent transfers; when all are taken, the oldest transfer whose client has
    /// not acknowledged anything yet (a spoofed source never does) makes room, else the
    /// request gets ERROR 0 "server busy".
    pub max_transfers: usize,
    /// Concurrent transfers per client IP address; further requests get ERROR 0.
    pub max_per_source: usize,
}

impl Default for TftpSettings {
    fn default() -> Self {
        TftpSettings {
            max_blksize: 1468,
            max_windowsize: 64,
            timeout: Duration::from_secs(1),
            max_client_timeout: Duration::from_secs(5),
            max_retries: 5,
            max_transfers: 512,
            max_per_source: 8,
        }
    }
}

/// Errors that stop the whole server. Errors of one transfer are logged and end that transfer.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// The socket passed in has no local address.
    #[error("cannot read the local address of the TFTP socket")]
    LocalAddr(#[source] std::io::Error),
    /// Receiving on the main socket failed.
    #[error("receiving on the TFTP socket failed")]
    Recv(#[source] std::io::Error),
}
