//! The prospector's DHCP client reading a server's datagram: `DhcpClient::offer` and
//! `DhcpClient::reply` (bounds-checked header, xid and MAC match, option parsing,
//! lease fields).
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use substruct_prospector::live::dhcp::{DhcpClient, Offer};
use substruct_wire::Mac;

fuzz_target!(|data: &[u8]| {
    // the xid and MAC of the seeds; a reply for another transaction is dropped early
    let client = DhcpClient::new(Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]), 0x0102_0304);
    let _ = client.offer(data);
    let offer = Offer {
        ip: Ipv4Addr::new(10, 77, 0, 100),
        server: Ipv4Addr::new(10, 77, 0, 1),
    };
    let _ = client.reply(data, &offer);
});
