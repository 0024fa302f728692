use std::net::Ipv4Addr;

use substruct_prospector::live::dhcp::{DhcpClient, Offer};
use substruct_wire::Mac;

/// The prospector's DHCP client reading a server's datagram: `DhcpClient::offer` and
/// `DhcpClient::reply` (bounds-checked header, xid and MAC match, option parsing,
/// lease fields).
///
/// Input: one DHCPv4 datagram from a server, read as an answer to a DISCOVER and as an
/// answer to a REQUEST for `10.77.0.100` from `10.77.0.1`. The client is
/// `52:54:00:12:34:56` with xid `0x01020304` (those of the seeds); a reply for another
/// transaction is dropped early.
pub fn prospector_dhcp(data: &[u8]) {
    let client = DhcpClient::new(Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]), 0x0102_0304);
    let _ = client.offer(data);
    let offer = Offer {
        ip: Ipv4Addr::new(10, 77, 0, 100),
        server: Ipv4Addr::new(10, 77, 0, 1),
    };
    let _ = client.reply(data, &offer);
}
