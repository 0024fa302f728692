#![allow(clippy::unwrap_used)]

use std::net::{Ipv6Addr, SocketAddrV6};

use substruct_wire::intent::{BootIntent, LocalBootWay};
use substruct_wire::Mac;

use super::core::{decide, decide_raw, Action6, Dhcp6Settings, Lease6Change, Lease6Table};
use super::packet::{msg, opt, parse, status, DropReason6, Writer};
use crate::dhcp::settings::UefiLoader;

const NOW: u64 = 1_800_000_000;
const EDGE: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
const EDGE_MAC: Mac = Mac([0x02, 0, 0, 0x77, 0, 1]);
/// The machine's MAC and its EUI-64 link-local address.
const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x77, 0x60, 0x0a]);
const LLA: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0x00ff, 0xfe77, 0x600a);
/// OVMF's DUID-UUID.
const DUID: [u8; 18] = [0, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

fn settings() -> Dhcp6Settings {
    Dhcp6Settings::new(
        EDGE,
        "fd77::100-fd77::1ff",
        1800,
        3600,
        UefiLoader::IpxeEfi,
        80,
        EDGE_MAC,
    )
    .unwrap()
}

fn src() -> SocketAddrV6 {
    SocketAddrV6::new(LLA, 546, 0, 2)
}

/// A client message: type, then options.
fn packet(t: u8, opts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::new(t, [0xab, 0xcd, 0xef]);
    for (c, d) in opts {
        w.option(*c, d);
    }
    w.finish()
}

fn ia(iaid: u32, addr: Option<Ipv6Addr>) -> (u16, Vec<u8>) {
    let inner: Vec<(u16, Vec<u8>)> = addr
        .map(|a| (opt::IAADDR, super::packet::iaaddr_body(a, 0, 0)))
        .into_iter()
        .collect();
    (opt::IA_NA, super::packet::ia_na_body(iaid, 0, 0, &inner))
}

/// What OVMF's PXE sends (arch 7, vendor class PXEClient, no user class).
fn ovmf(t: u8, server: Option<&[u8]>, addr: Option<Ipv6Addr>) -> Vec<u8> {
    let mut o = vec![(opt::CLIENTID, DUID.to_vec()), ia(0x1234, addr)];
    if let Some(s) = server {
        o.push((opt::SERVERID, s.to_vec()));
    }
    o.push((opt::ORO, vec![0, 59, 0, 60, 0, 23, 0, 16]));
    o.push((opt::CLIENT_ARCH_TYPE, vec![0, 7]));
    let class = b"PXEClient:Arch:00007:UNDI:003000";
    let mut v = 343u32.to_be_bytes().to_vec();
    v.extend_from_slice(&(class.len() as u16).to_be_bytes());
    v.extend_from_slice(class);
    o.push((opt::VENDOR_CLASS, v));
    packet(t, &o)
}

/// The options of a reply, in order.
fn options(reply: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = &reply[4..];
    while rest.len() >= 4 {
        let code = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        out.push((code, rest[4..4 + len].to_vec()));
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes");
    out
}

fn get(reply: &[u8], code: u16) -> Option<Vec<u8>> {
    options(reply)
        .into_iter()
        .find(|(c, _)| *c == code)
        .map(|(_, d)| d)
}

fn reply(d: &super::core::Decision6) -> Vec<u8> {
    match &d.action {
        Action6::Reply { packet, dest } => {
            assert_eq!(*dest, src());
            packet.clone()
        }
        Action6::Drop { reason } => panic!("dropped: {reason}"),
    }
}

fn dropped(d: &super::core::Decision6) -> DropReason6 {
    match &d.action {
        Action6::Drop { reason } => reason.clone(),
        Action6::Reply { .. } => panic!("answered"),
    }
}

/// The address inside a reply's IA_NA (and its IAID), or its status code.
fn ia_addr(reply: &[u8]) -> Result<(u32, Ipv6Addr, u32, u32), u16> {
    let ia = get(reply, opt::IA_NA).unwrap();
    let iaid = u32::from_be_bytes(ia[..4].try_into().unwrap());
    let (t1, t2) = (
        u32::from_be_bytes(ia[4..8].try_into().unwrap()),
        u32::from_be_bytes(ia[8..12].try_into().unwrap()),
    );
    let code = u16::from_be_bytes([ia[12], ia[13]]);
    let body = &ia[16..];
    if code == opt::STATUS_CODE {
        return Err(u16::from_be_bytes([body[0], body[1]]));
    }
    assert_eq!(code, opt::IAADDR);
    let a: [u8; 16] = body[..16].try_into().unwrap();
    let preferred = u32::from_be_bytes(body[16..20].try_into().unwrap());
    let valid = u32::from_be_bytes(body[20..24].try_into().unwrap());
    assert!(t1 <= t2 && preferred <= valid && valid > 0);
    Ok((iaid, Ipv6Addr::from(a), preferred, valid))
}

#[test]
fn ovmf_pxe_four_messages_get_an_address_and_ipxe_efi_by_tftp() {
    let s = settings();
    let mut t = Lease6Table::new();
    let adv = reply(&decide_raw(
        &ovmf(msg::SOLICIT, None, None),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW,
    ));
    assert_eq!(adv[0], msg::ADVERTISE);
    assert_eq!(&adv[1..4], &[0xab, 0xcd, 0xef]);
    assert_eq!(get(&adv, opt::CLIENTID).unwrap(), DUID);
    let server = get(&adv, opt::SERVERID).unwrap();
    assert_eq!(server, [0, 3, 0, 1, 0x02, 0, 0, 0x77, 0, 1]);
    assert_eq!(get(&adv, opt::PREFERENCE).unwrap(), [255]);
    assert_eq!(
        get(&adv, opt::BOOTFILE_URL).unwrap(),
        b"tftp://[fd77::1]/ipxe.efi"
    );
    // PXE clients are not sent vendor class PXEClient back (OVMF would then look for
    // a boot server on port 4011), and never Rapid Commit.
    assert_eq!(get(&adv, opt::VENDOR_CLASS), None);
    assert_eq!(get(&adv, 14), None);
    // Option 59 is never the last option.
    assert_ne!(options(&adv).last().unwrap().0, opt::BOOTFILE_URL);
    let (iaid, offered, _, _) = ia_addr(&adv).unwrap();
    assert_eq!(iaid, 0x1234);
    assert!(
        (0x100..=0x1ff).contains(&(u128::from(offered) & 0xffff)),
        "{offered}"
    );

    let d = decide_raw(
        &ovmf(msg::REQUEST, Some(&server), Some(offered)),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW + 1,
    );
    let rep = reply(&d);
    assert_eq!(rep[0], msg::REPLY);
    let (_, got, preferred, valid) = ia_addr(&rep).unwrap();
    assert_eq!((got, preferred, valid), (offered, 1800, 3600));
    assert_eq!(
        get(&rep, opt::BOOTFILE_URL).unwrap(),
        b"tftp://[fd77::1]/ipxe.efi"
    );
    assert_eq!(
        d.changes,
        [Lease6Change::Grant(super::core::Lease6 {
            duid: DUID.to_vec(),
            iaid: 0x1234,
            addr: offered,
            expires: NOW + 1 + 3600,
            mac: Some(MAC),
        })]
    );
    assert_eq!(d.mac, Some(MAC));

    // The same client asking again gets the same address.
    let again = reply(&decide_raw(
        &ovmf(msg::SOLICIT, None, None),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW + 5,
    ));
    assert_eq!(ia_addr(&again).unwrap().1, offered);
    // A restart keeps it: the table rebuilt from the stored lease.
    let mut restarted = Lease6Table::from_leases([super::core::Lease6 {
        duid: DUID.to_vec(),
        iaid: 0x1234,
        addr: offered,
        expires: NOW + 3601,
        mac: None,
    }]);
    let after = reply(&decide_raw(
        &ovmf(msg::SOLICIT, None, None),
        src(),
        &s,
        &mut restarted,
        |_| None,
        NOW + 10,
    ));
    assert_eq!(ia_addr(&after).unwrap().1, offered);
}

#[test]
fn the_boot_url_follows_the_intent_and_the_client() {
    let s = settings();
    let mut t = Lease6Table::new();
    let local = BootIntent::Local {
        way: LocalBootWay::IpxeExit,
    };
    let d = decide_raw(
        &ovmf(msg::SOLICIT, None, None),
        src(),
        &s,
        &mut t,
        |m| {
            assert_eq!(*m, MAC, "the intent is looked up by the EUI-64 MAC");
            Some(local.clone())
        },
        NOW,
    );
    assert_eq!(
        get(&reply(&d), opt::BOOTFILE_URL).unwrap(),
        b"tftp://[fd77::1]/substruct-local-boot.efi"
    );
    let nbf = BootIntent::Local {
        way: LocalBootWay::NoBootFile,
    };
    let d = decide_raw(
        &ovmf(msg::SOLICIT, None, None),
        src(),
        &s,
        &mut t,
        |_| Some(nbf.clone()),
        NOW,
    );
    assert_eq!(get(&reply(&d), opt::BOOTFILE_URL), None);
    assert!(ia_addr(&reply(&d)).is_ok(), "an address all the same");

    // UEFI HTTP boot: an http URL and vendor class HTTPClient echoed (enterprise 343).
    let class = b"HTTPClient:Arch:00016:UNDI:003000";
    let mut v = 343u32.to_be_bytes().to_vec();
    v.extend_from_slice(&(class.len() as u16).to_be_bytes());
    v.extend_from_slice(class);
    let http = packet(
        msg::SOLICIT,
        &[
            (opt::CLIENTID, DUID.to_vec()),
            ia(7, None),
            (opt::CLIENT_ARCH_TYPE, vec![0, 16]),
            (opt::VENDOR_CLASS, v),
        ],
    );
    let r = reply(&decide_raw(&http, src(), &s, &mut t, |_| None, NOW));
    assert_eq!(
        get(&r, opt::BOOTFILE_URL).unwrap(),
        b"http://[fd77::1]/ipxe.efi"
    );
    let echoed = get(&r, opt::VENDOR_CLASS).unwrap();
    assert_eq!(&echoed[..4], &343u32.to_be_bytes());
    assert_eq!(&echoed[6..], b"HTTPClient");
    // An edge serving HTTPS sends HTTP-boot clients there (PXE clients keep TFTP).
    for (port, url) in [
        (443, &b"https://[fd77::1]/ipxe.efi"[..]),
        (8443, &b"https://[fd77::1]:8443/ipxe.efi"[..]),
    ] {
        let tls = settings().with_https_port(Some(port));
        let r = reply(&decide_raw(&http, src(), &tls, &mut t, |_| None, NOW));
        assert_eq!(get(&r, opt::BOOTFILE_URL).unwrap(), url);
        let r = reply(&decide_raw(
            &ovmf(msg::SOLICIT, None, None),
            src(),
            &tls,
            &mut t,
            |_| None,
            NOW,
        ));
        assert_eq!(
            get(&r, opt::BOOTFILE_URL).unwrap(),
            b"tftp://[fd77::1]/ipxe.efi"
        );
    }
    let r = reply(&decide_raw(
        &http,
        src(),
        &s,
        &mut t,
        |_| Some(local.clone()),
        NOW,
    ));
    assert_eq!(
        get(&r, opt::BOOTFILE_URL).unwrap(),
        b"http://[fd77::1]/substruct-local-boot.efi"
    );

    // iPXE (user class iPXE): an address only; its script URL comes from DHCPv4.
    let ipxe = packet(
        msg::SOLICIT,
        &[
            (opt::CLIENTID, DUID.to_vec()),
            ia(9, None),
            (opt::USER_CLASS, [&[0u8, 4][..], b"iPXE"].concat()),
            (opt::CLIENT_ARCH_TYPE, vec![0, 7]),
        ],
    );
    let r = reply(&decide_raw(&ipxe, src(), &s, &mut t, |_| None, NOW));
    assert_eq!(get(&r, opt::BOOTFILE_URL), None);
    assert!(ia_addr(&r).is_ok());
    // On an IPv6-only site iPXE gets the script's full URL here, whatever the intent
    // (the script says what to do), except "no boot file".
    let mut only6 = settings();
    only6.ipv6_only = true;
    for intent in [None, Some(local.clone())] {
        let r = reply(&decide_raw(
            &ipxe,
            src(),
            &only6,
            &mut t,
            |_| intent.clone(),
            NOW,
        ));
        assert_eq!(
            get(&r, opt::BOOTFILE_URL).unwrap(),
            b"http://[fd77::1]/boot.ipxe"
        );
        // Not a UEFI HTTP-boot client: no vendor class echoed.
        assert_eq!(get(&r, opt::VENDOR_CLASS), None);
    }
    let none = BootIntent::Local {
        way: LocalBootWay::NoBootFile,
    };
    let r = reply(&decide_raw(
        &ipxe,
        src(),
        &only6,
        &mut t,
        |_| Some(none.clone()),
        NOW,
    ));
    assert_eq!(get(&r, opt::BOOTFILE_URL), None);

    // A Secure Boot site: shim.
    let mut sb = settings();
    sb.uefi_loader = UefiLoader::Shim;
    let r = reply(&decide_raw(
        &ovmf(msg::SOLICIT, None, None),
        src(),
        &sb,
        &mut t,
        |_| None,
        NOW,
    ));
    assert_eq!(
        get(&r, opt::BOOTFILE_URL).unwrap(),
        b"tftp://[fd77::1]/shimx64.efi"
    );

    // A client without architecture (a Linux dhclient): an address only.
    let plain = packet(
        msg::SOLICIT,
        &[(opt::CLIENTID, DUID.to_vec()), ia(11, None)],
    );
    let r = reply(&decide_raw(&plain, src(), &s, &mut t, |_| None, NOW));
    assert_eq!(get(&r, opt::BOOTFILE_URL), None);
    assert!(ia_addr(&r).is_ok());
}

#[test]
fn renew_rebind_release_decline_confirm_and_information_request() {
    let s = settings();
    let mut t = Lease6Table::new();
    let server = s.server_duid().to_vec();
    reply(&decide_raw(
        &ovmf(msg::SOLICIT, None, None),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW,
    ));
    let r = reply(&decide_raw(
        &ovmf(msg::REQUEST, Some(&server), None),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW,
    ));
    let (_, addr, _, _) = ia_addr(&r).unwrap();

    let d = decide_raw(
        &ovmf(msg::RENEW, Some(&server), Some(addr)),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW + 1800,
    );
    assert_eq!(ia_addr(&reply(&d)).unwrap().1, addr);
    assert!(matches!(&d.changes[..], [Lease6Change::Grant(l)] if l.expires == NOW + 1800 + 3600));
    let d = decide_raw(
        &ovmf(msg::REBIND, None, Some(addr)),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW + 2000,
    );
    assert_eq!(ia_addr(&reply(&d)).unwrap().1, addr);
    // Renewing an address it does not hold: NoBinding, nothing stored.
    let other = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x1ff);
    let d = decide_raw(
        &ovmf(msg::RENEW, Some(&server), Some(other)),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW + 2000,
    );
    assert_eq!(ia_addr(&reply(&d)), Err(status::NO_BINDING));
    assert!(d.changes.is_empty());

    // Confirm: on link or not.
    let d = decide_raw(
        &ovmf(msg::CONFIRM, None, Some(addr)),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW,
    );
    assert_eq!(
        get(&reply(&d), opt::STATUS_CODE).unwrap()[..2],
        status::SUCCESS.to_be_bytes()
    );
    let far = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    let d = decide_raw(
        &ovmf(msg::CONFIRM, None, Some(far)),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW,
    );
    assert_eq!(
        get(&reply(&d), opt::STATUS_CODE).unwrap()[..2],
        status::NOT_ON_LINK.to_be_bytes()
    );
    assert_eq!(
        dropped(&decide_raw(
            &ovmf(msg::CONFIRM, None, None),
            src(),
            &s,
            &mut t,
            |_| None,
            NOW
        )),
        DropReason6::NothingToConfirm
    );

    // Release is acknowledged, but the lease stays (in the table and the store) until
    // it ends: the firmware's loader goes on using the address.
    let d = decide_raw(
        &ovmf(msg::RELEASE, Some(&server), Some(addr)),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW + 2100,
    );
    assert_eq!(
        get(&reply(&d), opt::STATUS_CODE).unwrap()[..2],
        status::SUCCESS.to_be_bytes()
    );
    assert!(d.changes.is_empty());
    assert_eq!(t.lease_of(&DUID, 0x1234).map(|l| l.addr), Some(addr));
    // Another client is not offered the released address.
    let other = packet(
        msg::SOLICIT,
        &[(opt::CLIENTID, vec![0, 4, 9, 9, 9]), ia(0x99, Some(addr))],
    );
    let r = reply(&decide_raw(&other, src(), &s, &mut t, |_| None, NOW + 2150));
    assert_ne!(ia_addr(&r).unwrap().1, addr);

    // Decline: the address stays out of the pool for everyone.
    let r = reply(&decide_raw(
        &ovmf(msg::REQUEST, Some(&server), Some(addr)),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW + 2200,
    ));
    let (_, again, _, _) = ia_addr(&r).unwrap();
    reply(&decide_raw(
        &ovmf(msg::DECLINE, Some(&server), Some(again)),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW + 2300,
    ));
    let r = reply(&decide_raw(
        &ovmf(msg::SOLICIT, None, Some(again)),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW + 2301,
    ));
    assert_ne!(
        ia_addr(&r).unwrap().1,
        again,
        "a declined address was offered again"
    );

    // Information-request: server id, no address.
    let info = packet(msg::INFORMATION_REQUEST, &[(opt::CLIENTID, DUID.to_vec())]);
    let r = reply(&decide_raw(&info, src(), &s, &mut t, |_| None, NOW));
    assert_eq!(get(&r, opt::SERVERID).unwrap(), server);
    assert_eq!(get(&r, opt::IA_NA), None);
}

#[test]
fn refusals_name_what_is_wrong() {
    let s = settings();
    let mut t = Lease6Table::new();
    let run = |t: &mut Lease6Table, b: &[u8]| dropped(&decide_raw(b, src(), &s, t, |_| None, NOW));
    assert_eq!(run(&mut t, &[1, 2]), DropReason6::TooShort(2));
    assert_eq!(run(&mut t, &[12, 0, 0, 0]), DropReason6::Relayed);
    assert_eq!(run(&mut t, &[7, 0, 0, 0]), DropReason6::NotFromClient(7));
    assert_eq!(run(&mut t, &[99, 0, 0, 0]), DropReason6::UnknownType(99));
    // An option whose length runs past the packet.
    assert!(matches!(
        run(&mut t, &[1, 0, 0, 0, 0, 1, 0, 200, 1, 2]),
        DropReason6::BadOption { code: 1, at: 4, .. }
    ));
    // A truncated option header.
    assert!(matches!(
        run(&mut t, &[1, 0, 0, 0, 0, 1]),
        DropReason6::BadOption { at: 4, .. }
    ));
    assert_eq!(
        run(&mut t, &packet(msg::SOLICIT, &[ia(1, None)])),
        DropReason6::NoClientId(1)
    );
    assert_eq!(
        run(&mut t, &packet(msg::SOLICIT, &[(opt::CLIENTID, vec![])])),
        DropReason6::BadOption {
            code: 1,
            at: 4,
            what: "a DUID must be 1 to 130 bytes"
        }
    );
    assert_eq!(
        run(
            &mut t,
            &packet(
                msg::SOLICIT,
                &[(opt::CLIENTID, vec![1]), (opt::CLIENTID, vec![2])]
            )
        ),
        DropReason6::Duplicate(1)
    );
    assert_eq!(
        run(
            &mut t,
            &packet(msg::REQUEST, &[(opt::CLIENTID, vec![1]), ia(1, None)])
        ),
        DropReason6::NoServerId(3)
    );
    assert_eq!(
        run(
            &mut t,
            &packet(
                msg::SOLICIT,
                &[(opt::CLIENTID, vec![1]), (opt::SERVERID, vec![1])]
            )
        ),
        DropReason6::UnexpectedServerId(1)
    );
    assert_eq!(
        run(
            &mut t,
            &packet(
                msg::REQUEST,
                &[(opt::CLIENTID, vec![1]), (opt::SERVERID, vec![9, 9])]
            )
        ),
        DropReason6::OtherServer
    );
    let five: Vec<(u16, Vec<u8>)> = std::iter::once((opt::CLIENTID, vec![1]))
        .chain((0..5).map(|i| ia(i, None)))
        .collect();
    assert_eq!(
        run(&mut t, &packet(msg::SOLICIT, &five)),
        DropReason6::TooManyIas
    );
    assert!(matches!(
        run(
            &mut t,
            &packet(
                msg::SOLICIT,
                &[(opt::CLIENTID, vec![1]), (opt::IA_NA, vec![0; 11])]
            )
        ),
        DropReason6::BadOption { code: 3, .. }
    ));
    assert!(matches!(
        run(
            &mut t,
            &packet(
                msg::SOLICIT,
                &[
                    (opt::CLIENTID, vec![1]),
                    (
                        opt::IA_NA,
                        super::packet::ia_na_body(1, 0, 0, &[(opt::IAADDR, vec![0; 23])])
                    )
                ]
            )
        ),
        DropReason6::BadOption { code: 5, .. }
    ));
    assert!(matches!(
        run(
            &mut t,
            &packet(
                msg::SOLICIT,
                &[(opt::CLIENTID, vec![1]), (opt::USER_CLASS, vec![0, 9, 1])]
            )
        ),
        DropReason6::BadOption { code: 15, .. }
    ));
    assert_eq!(t.held(), 0, "nothing refused holds an address");
}

#[test]
fn a_full_pool_says_so_and_expired_offers_come_back() {
    let s = Dhcp6Settings::new(
        EDGE,
        "fd77::100-fd77::103",
        1800,
        3600,
        UefiLoader::IpxeEfi,
        80,
        EDGE_MAC,
    )
    .unwrap();
    let mut t = Lease6Table::new();
    let solicit = |n: u8| {
        packet(
            msg::SOLICIT,
            &[
                (opt::CLIENTID, vec![0, 3, 0, 1, 0, 0, 0, 0, 0, n]),
                ia(1, None),
            ],
        )
    };
    let mut seen = std::collections::HashSet::new();
    for n in 0..4 {
        let r = reply(&decide_raw(&solicit(n), src(), &s, &mut t, |_| None, NOW));
        assert!(
            seen.insert(ia_addr(&r).unwrap().1),
            "an address offered twice"
        );
    }
    let r = reply(&decide_raw(&solicit(9), src(), &s, &mut t, |_| None, NOW));
    assert_eq!(ia_addr(&r), Err(status::NO_ADDRS_AVAIL));
    // The offers lapse after a minute; then a new client gets one.
    let r = reply(&decide_raw(
        &solicit(9),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW + 61,
    ));
    assert!(ia_addr(&r).is_ok());
}

#[test]
fn a_client_changing_its_duid_for_each_decline_cannot_drain_the_pool() {
    // 16 addresses: at most a quarter (4) are ever quarantined at once.
    let s = Dhcp6Settings::new(
        EDGE,
        "fd77::100-fd77::10f",
        1800,
        3600,
        UefiLoader::IpxeEfi,
        80,
        EDGE_MAC,
    )
    .unwrap();
    let server = s.server_duid().to_vec();
    let mut t = Lease6Table::new();
    for n in 0..16u8 {
        let duid = vec![0, 3, 0, 1, 0xde, 0xc1, 0, 0, 0, n];
        let req = packet(
            msg::REQUEST,
            &[
                (opt::CLIENTID, duid.clone()),
                (opt::SERVERID, server.clone()),
                ia(1, None),
            ],
        );
        let Ok((_, addr, _, _)) =
            ia_addr(&reply(&decide_raw(&req, src(), &s, &mut t, |_| None, NOW)))
        else {
            continue;
        };
        let decline = packet(
            msg::DECLINE,
            &[
                (opt::CLIENTID, duid),
                (opt::SERVERID, server.clone()),
                ia(1, Some(addr)),
            ],
        );
        reply(&decide_raw(&decline, src(), &s, &mut t, |_| None, NOW));
    }
    // Twelve honest clients still get an address each.
    for n in 0..12u8 {
        let duid = vec![0, 3, 0, 1, 0x52, 0x54, 0, 0, 0, n];
        let req = packet(
            msg::REQUEST,
            &[
                (opt::CLIENTID, duid),
                (opt::SERVERID, server.clone()),
                ia(1, None),
            ],
        );
        let r = reply(&decide_raw(&req, src(), &s, &mut t, |_| None, NOW + 1));
        assert!(
            ia_addr(&r).is_ok(),
            "client {n} got no address after the decline flood"
        );
    }
}

#[test]
fn settings_are_checked() {
    let new = |addr: &str, pool: &str, p: u32, v: u32| {
        Dhcp6Settings::new(
            addr.parse().unwrap(),
            pool,
            p,
            v,
            UefiLoader::IpxeEfi,
            8080,
            EDGE_MAC,
        )
    };
    assert!(new("fd77::1", "fd77::100-fd77::1ff", 1800, 3600).is_ok());
    assert_eq!(
        new("fd77::1", "fd77::100-fd77::1ff", 1800, 3600)
            .unwrap()
            .http_base(),
        "http://[fd77::1]:8080"
    );
    assert!(matches!(
        new("fd77::1", "fd77::100", 1, 60),
        Err(super::Settings6Error::PoolSyntax(_))
    ));
    assert!(matches!(
        new("fd77::1", "fd77::200-fd77::100", 1, 60),
        Err(super::Settings6Error::PoolEmpty { .. })
    ));
    assert!(matches!(
        new("fd77::1", "fd77::-fd77::ffff", 1, 60),
        Err(super::Settings6Error::PoolTooLarge { .. })
    ));
    assert!(matches!(
        new("fd77::1", "fd78::1-fd78::2", 1, 60),
        Err(super::Settings6Error::PoolOffLink { .. })
    ));
    assert!(matches!(
        new("fe80::1", "fe80::2-fe80::3", 1, 60),
        Err(super::Settings6Error::BadAddress(_))
    ));
    assert!(matches!(
        new("fd77::1", "fd77::2-fd77::3", 61, 60),
        Err(super::Settings6Error::Lifetimes { .. })
    ));
    assert!(matches!(
        new("fd77::1", "fd77::2-fd77::3", 1, 59),
        Err(super::Settings6Error::Lifetimes { .. })
    ));
}

#[test]
fn macs_come_from_eui64_link_locals_or_ethernet_duids() {
    let req = parse(&ovmf(msg::SOLICIT, None, None), src()).unwrap();
    assert_eq!(req.mac(), Some(MAC));
    // A privacy (non-EUI-64) source falls back to a DUID-LL.
    let other = SocketAddrV6::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 1, 2, 3, 4), 546, 0, 2);
    let ll = packet(
        msg::SOLICIT,
        &[(
            opt::CLIENTID,
            vec![0, 3, 0, 1, 0x52, 0x54, 0, 0x77, 0x60, 0x0a],
        )],
    );
    assert_eq!(parse(&ll, other).unwrap().mac(), Some(MAC));
    let llt = packet(
        msg::SOLICIT,
        &[(
            opt::CLIENTID,
            vec![0, 1, 0, 1, 9, 9, 9, 9, 0x52, 0x54, 0, 0x77, 0x60, 0x0a],
        )],
    );
    assert_eq!(parse(&llt, other).unwrap().mac(), Some(MAC));
    let uuid = packet(msg::SOLICIT, &[(opt::CLIENTID, DUID.to_vec())]);
    assert_eq!(parse(&uuid, other).unwrap().mac(), None);
}

#[test]
fn decide_works_on_parsed_requests_too() {
    let s = settings();
    let mut t = Lease6Table::new();
    let req = parse(&ovmf(msg::SOLICIT, None, None), src()).unwrap();
    let d = decide(&req, &s, &mut t, None, NOW);
    assert!(ia_addr(&reply(&d)).is_ok());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics_and_never_answers_without_a_client_id(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            t in 0u8..16,
        ) {
            let s = settings();
            let mut table = Lease6Table::new();
            let mut b = bytes.clone();
            if let Some(first) = b.first_mut() { *first = t; }
            let d = decide_raw(&b, src(), &s, &mut table, |_| None, NOW);
            if let Action6::Reply { packet, .. } = &d.action {
                prop_assert!(packet.len() < 1472);
                prop_assert!(matches!(packet[0], 2 | 7));
                if t != msg::INFORMATION_REQUEST {
                    prop_assert!(get(packet, opt::CLIENTID).is_some());
                }
            }
        }
    }
}

#[test]
fn a_renewal_that_shows_no_mac_keeps_the_leases_mac_even_after_a_restart() {
    let s = settings();
    let mut t = Lease6Table::new();
    let server = s.server_duid().to_vec();
    let global = SocketAddrV6::new(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x105), 546, 0, 2);
    let granted = decide_raw(
        &ovmf(msg::REQUEST, Some(&server), None),
        src(),
        &s,
        &mut t,
        |_| None,
        NOW,
    );
    let addr = ia_addr(&reply(&granted)).unwrap().1;
    assert!(matches!(&granted.changes[..], [Lease6Change::Grant(l)] if l.mac == Some(MAC)));
    // A RENEW from a global address with a DUID-UUID shows no MAC: the lease keeps its.
    let renewed = decide_raw(
        &ovmf(msg::RENEW, Some(&server), Some(addr)),
        global,
        &s,
        &mut t,
        |_| None,
        NOW + 1800,
    );
    assert_eq!(renewed.mac, None);
    assert!(matches!(&renewed.changes[..], [Lease6Change::Grant(l)] if l.mac == Some(MAC)));
    // After a restart, the table rebuilt from the stored lease (with its MAC) does too.
    let stored = t.lease_of(&DUID, 0x1234).unwrap();
    assert_eq!(stored.mac, Some(MAC));
    let mut restarted = Lease6Table::from_leases([stored]);
    let again = decide_raw(
        &ovmf(msg::RENEW, Some(&server), Some(addr)),
        global,
        &s,
        &mut restarted,
        |_| None,
        NOW + 3000,
    );
    assert!(matches!(&again.changes[..], [Lease6Change::Grant(l)] if l.mac == Some(MAC)));
    // Another client given the address later does not inherit the MAC.
    let other = packet(
        msg::REQUEST,
        &[
            (opt::CLIENTID, vec![0, 4, 9, 9, 9]),
            (opt::SERVERID, server.clone()),
            ia(0x99, Some(addr)),
        ],
    );
    let d = decide_raw(&other, global, &s, &mut Lease6Table::new(), |_| None, NOW);
    assert!(matches!(&d.changes[..], [Lease6Change::Grant(l)] if l.mac.is_none()));
}
