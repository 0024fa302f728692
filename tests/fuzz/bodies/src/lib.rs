//! The bodies of the fuzz targets: one `pub fn NAME(data: &[u8])` per cargo-fuzz target
//! `NAME` in `tests/fuzz`, each the whole of what that target does with one input.
//!
//! `tests/fuzz/fuzz_targets/NAME.rs` only hands libFuzzer's bytes to `NAME` here, so the
//! same code runs in two places:
//! - `deploy/fuzz`: libFuzzer, coverage-guided, optimized, for as long as it is given;
//! - `tests/replay.rs` in this crate, part of `cargo test --workspace`: every checked-in
//!   seed, every local crash artifact and a fixed set of deterministic mutations of
//!   them, bounded to seconds in a debug build.
//!
//! A body panics only on a bug: a parser that panics or overflows, or one of its own
//! `assert!`s on what the code under test promises (a granted address inside a pool, a
//! decoded message that round-trips). Inputs a parser rejects are not bugs: the body
//! returns. Every body is pure: no socket, no file, no clock; fixed keys and fixtures
//! are built once and shared.
//!
//! This crate is a member of the main workspace (it inherits its lints and dependency
//! versions); the fuzz workspace in `tests/fuzz` excludes its folder and depends on it
//! by path.

mod bmc_ipmi;
mod controller_discover;
mod credential;
mod dhcp6_decide;
mod dhcp_decide;
mod dhcp_packet;
mod edge_http_head;
mod edge_http_range;
mod facts_text;
mod profile_toml;
mod prospector_dhcp;
mod prospector_http_head;
mod prospector_protocol;
mod ra;
mod rule_toml;
mod smbios;
mod template_render;
mod tftp_packet;
mod tftp_transfer;
mod wire_decode;
mod wire_names;

pub use bmc_ipmi::bmc_ipmi;
pub use controller_discover::controller_discover;
pub use credential::credential;
pub use dhcp6_decide::dhcp6_decide;
pub use dhcp_decide::dhcp_decide;
pub use dhcp_packet::dhcp_packet;
pub use edge_http_head::edge_http_head;
pub use edge_http_range::edge_http_range;
pub use facts_text::facts_text;
pub use profile_toml::profile_toml;
pub use prospector_dhcp::prospector_dhcp;
pub use prospector_http_head::prospector_http_head;
pub use prospector_protocol::prospector_protocol;
pub use ra::ra;
pub use rule_toml::rule_toml;
pub use smbios::smbios;
pub use template_render::template_render;
pub use tftp_packet::tftp_packet;
pub use tftp_transfer::tftp_transfer;
pub use wire_decode::wire_decode;
pub use wire_names::wire_names;
