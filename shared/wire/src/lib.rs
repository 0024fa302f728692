//! The Substruct wire crate: everything that crosses a process boundary.
//!
//! * [`credential`] — boot credentials: the site-signed claim that a boot belongs to a MAC;
//! * [`ids`] — validated newtypes for machines, sites, MAC addresses and tokens;
//! * [`names`] — validated image names, SHA-256 digests and profile/rule names;
//! * [`nats_url`] — the NATS server list every binary takes;
//! * [`power`] — power states, actions, boot devices and BMC driver kinds;
//! * [`power_msg`] — power requests and results, BMC settings (controller ↔ edge);
//! * [`report`] — the hardware report a prospector sends;
//! * [`messages`] — request/reply/command/event bodies;
//! * [`intent`] — the boot intent the controller writes and every edge reads;
//! * [`envelope`] — the only place that knows postcard: `{ magic, version, kind, body }`;
//! * [`subjects`] — NATS subject and KV key builders (never `format!` them elsewhere);
//! * [`dhcp`] — the bounds-checked DHCPv4 packet reader the edge and the prospector share;
//! * [`image_format`] — disk image formats by their first bytes (raw, qcow2, zstd, xz).
//!
//! Invariant: this crate has no async runtime and no I/O. postcard is positional, so
//! any change to the shape of a type that travels is a new [`envelope::WIRE_VERSION`];
//! the golden-byte tests (`tests/golden_bytes.rs`, one sample per variant of every
//! kind; older versions in `envelope`) fail on accidental changes.

pub mod credential;
pub mod dhcp;
pub mod envelope;
pub mod ids;
pub mod image_format;
pub mod intent;
pub mod messages;
pub mod names;
pub mod nats_url;
pub mod power;
pub mod power_msg;
pub mod report;
pub mod subjects;

pub use credential::{
    BootClaims, BootCredential, CredentialError, LeafTrust, SiteKey, SitePublicKey, UserJwt,
    UserPermissions,
};
pub use envelope::{decode, encode, peek, Envelope, MessageKind, WireError, WireMessage};
pub use ids::{BootToken, IdError, Mac, MachineId, PowerRequestId, SiteId};
pub use names::{
    DigestError, DigestProblem, ImageName, ImageNameError, ImageNameProblem, ResourceName,
    ResourceNameError, Sha256Digest,
};
pub use nats_url::{NatsUrl, NatsUrlError, NatsUrlProblem};
