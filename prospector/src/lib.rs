//! The Substruct prospector: gathers a machine's hardware facts and reports them.
//!
//! * `facts` — reads `/sys`, `/proc` (under any root, for captured fixture trees);
//! * `cmdline` — the `substruct.*` kernel arguments;
//! * `agent` — sends the report over NATS until acknowledged, then follows instructions;
//! * `live` — PID 1 duties inside the live image: mounts, modules, network, power.

pub mod agent;
pub mod cmdline;
pub mod facts;
pub mod live;
