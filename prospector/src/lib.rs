//! The Substruct prospector: gathers a machine's hardware facts and reports them.
//!
//! * [`facts`] — reads `/sys`, `/proc` (under any root, for captured fixture trees):
//!   [`facts::gather`] never fails, a missing file is a missing fact;
//! * [`cmdline`] — the `substruct.*` kernel arguments ([`cmdline::parse`]);
//! * [`agent`] — sends the report over NATS until acknowledged, then follows
//!   instructions ([`agent::run`]); it returns an [`agent::Outcome`] and never powers
//!   anything off itself: the caller does (the live init) or just reports it (the CLI);
//! * [`deploy`] — streams a disk image from the edge onto a local disk and verifies it,
//!   over the small HTTP/1.1 client in [`http_get`];
//! * [`seed`] — the deployed system's cloud-init NoCloud seed: a `CIDATA` partition
//!   added at the disk's end (a GPT's backup moved there first);
//! * [`unpack`] — image formats converted while they stream: raw, zstd, xz, qcow2;
//! * [`wipe`] — quick or discard wipe of the local disks;
//! * [`blockdev`] — the local disks as deploy/wipe targets (`/sys/block`, `/dev`);
//! * [`text`] — bounding and escaping untrusted text (a leaf: uses nothing of the crate);
//! * `live` — PID 1 duties inside the live image: mounts, modules, network, power.

pub mod agent;
pub mod blockdev;
pub mod cmdline;
pub mod deploy;
pub mod facts;
pub mod http_get;
pub mod live;
pub mod seed;
pub mod text;
pub mod unpack;
pub mod wipe;
