//! The Substruct prospector: gathers a machine's hardware facts and reports them.
//!
//! * [`facts`] — reads `/sys`, `/proc` (under any root, for captured fixture trees):
//!   [`facts::gather`] never fails, a missing file is a missing fact;
//! * [`cmdline`] — the `substruct.*` kernel arguments ([`cmdline::parse`]);
//! * [`agent`] — sends the report over NATS until acknowledged, then follows
//!   instructions ([`agent::run`]); it returns an [`agent::Outcome`] and never powers
//!   anything off itself: the caller does (the live init) or just reports it (the CLI);
//! * `live` — PID 1 duties inside the live image: mounts, modules, network, power.

pub mod agent;
pub mod cmdline;
pub mod facts;
pub mod live;
