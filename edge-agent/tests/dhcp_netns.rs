//! The DHCP system tests' (and the perfdhcp benchmark's, `#[path]`-included) one
//! addition to the test kit's network namespaces ([`substruct_testkit::netns::Netns`]):
//! a DHCP socket bound inside a namespace, as the agent binds it.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use substruct_testkit::netns::Netns;

/// A DHCP socket (see `dhcp::bind_socket`) on `iface`, created inside `ns`.
pub fn dhcp_socket(ns: &Netns, iface: &str, port: u16) -> Result<std::net::UdpSocket> {
    ns.run_inside(|| {
        substruct_edge::dhcp::bind_socket(iface, Ipv4Addr::UNSPECIFIED, port)
            .with_context(|| format!("binding :{port} on {iface} in {}", ns.name()))
    })
}
