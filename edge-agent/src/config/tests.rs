//! The config module's tests: whole files and flag sets in, an [`EdgeConfig`] or the
//! exact refusal out.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::dhcp::{BiosChain, DhcpMode, Loader, UefiLoader};
use clap::Parser;

const GOOD: &str = r#"
site = "s1"
nats = "nats://10.0.0.5:4222"
interface = "br0"
address = "10.77.0.1/24"
images = "/srv/images"

[dhcp]
mode = "server"
bios_chain = "undionly"
uefi_loader = "snponly"

[[dhcp.subnets]]
network = "10.77.0.0/24"
pools = ["10.77.0.100-10.77.0.199"]
router = "10.77.0.1"
dns = ["10.77.0.1"]
lease_time = "1h"

[[dhcp.subnets]]
network = "10.9.0.0/24"
pools = ["10.9.0.10-10.9.0.20", "10.9.0.30-10.9.0.40"]
lease_time = 600

[[dhcp.reservations]]
mac = "52:54:00:77:00:0a"
ip = "10.77.0.50"
hostname = "node-a"
loader = "undionly"
"#;

fn err_of(text: &str) -> String {
    EdgeConfig::from_toml_str("edge.toml", text)
        .unwrap_err()
        .to_string()
}

/// The flags-only minimum (`--interface br0 --address 10.77.0.1/24 --images
/// /srv/images`) plus `extra`, parsed and validated.
fn from_flags(extra: &[&str]) -> Result<EdgeConfig, ConfigError> {
    let minimum = [
        "substruct-edge",
        "--interface",
        "br0",
        "--address",
        "10.77.0.1/24",
        "--images",
        "/srv/images",
    ];
    Flags::try_parse_from(minimum.iter().chain(extra))
        .unwrap()
        .into_config()
}

#[test]
fn a_full_file_converts() {
    let c = EdgeConfig::from_toml_str("edge.toml", GOOD).unwrap();
    assert_eq!(c.site.as_str(), "s1");
    assert_eq!(c.http_base(), "http://10.77.0.1");
    assert_eq!(c.prospector_nats, "nats://10.77.0.1:4222");
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(c.dhcp.bios_chain, BiosChain::Undionly);
    assert_eq!(c.dhcp.uefi_loader, UefiLoader::SnpOnly);
    assert_eq!(c.dhcp.subnets.len(), 2);
    assert_eq!(c.dhcp.subnets[0].lease_time, Duration::from_secs(3600));
    assert_eq!(c.dhcp.subnets[1].lease_time, Duration::from_secs(600));
    assert_eq!(
        c.dhcp.subnets[1].pools[1],
        (Ipv4Addr::new(10, 9, 0, 30), Ipv4Addr::new(10, 9, 0, 40))
    );
    assert_eq!(c.dhcp.reservations[0].hostname.as_deref(), Some("node-a"));
    assert!(c.tftp);
    // The image cache's free-space reserve defaults to 1 GiB; a file sets it in MiB.
    assert_eq!(c.image_cache_min_free_bytes, 1 << 30);
    let c = EdgeConfig::from_toml_str(
        "edge.toml",
        &format!("image_cache_min_free_mb = 50\n{GOOD}"),
    )
    .unwrap();
    assert_eq!(c.image_cache_min_free_bytes, 50 << 20);
}

#[test]
fn validation_messages_name_file_and_field() {
    let bad_pool = GOOD.replace("10.9.0.30-10.9.0.40", "10.9.0.5-10.9.0.1");
    assert_eq!(
        err_of(&bad_pool),
        "edge.toml: dhcp.subnets[1].pools[1]: 10.9.0.5-10.9.0.1 start is after end"
    );
    let outside = GOOD.replace("10.9.0.30-10.9.0.40", "10.9.0.30-10.9.1.40");
    assert_eq!(
        err_of(&outside),
        "edge.toml: dhcp.subnets[1].pools[1]: 10.9.0.30-10.9.1.40 is not inside 10.9.0.0/24"
    );
    let overlap = GOOD.replace("10.9.0.30-10.9.0.40", "10.9.0.15-10.9.0.40");
    assert_eq!(
        err_of(&overlap),
        "edge.toml: dhcp.subnets[1].pools[1]: 10.9.0.15-10.9.0.40 overlaps dhcp.subnets[1].pools[0]"
    );
    let not_net = GOOD.replace("network = \"10.9.0.0/24\"", "network = \"10.9.0.7/24\"");
    assert_eq!(
        err_of(&not_net),
        "edge.toml: dhcp.subnets[1].network: 10.9.0.7/24 is not a network address (did you mean 10.9.0.0/24?)"
    );
    let own = GOOD.replace("10.77.0.100-10.77.0.199", "10.77.0.1-10.77.0.199");
    assert_eq!(
        err_of(&own),
        "edge.toml: dhcp.subnets[0].pools[0]: 10.77.0.1-10.77.0.199 includes the edge's own address 10.77.0.1"
    );
    let lease = GOOD.replace("lease_time = \"1h\"", "lease_time = \"1 fortnight\"");
    assert_eq!(
        err_of(&lease),
        "edge.toml: dhcp.subnets[0].lease_time: \"1 fortnight\" is not a duration (seconds, or e.g. \"90s\", \"30m\", \"1h\", \"1d\")"
    );
    let mode = GOOD.replace("mode = \"server\"", "mode = \"relay\"");
    assert_eq!(
        err_of(&mode),
        "edge.toml: dhcp.mode: \"relay\" is not one of server, proxy"
    );
    let mac = GOOD.replace("52:54:00:77:00:0a", "52:54:00:77:00");
    assert_eq!(
        err_of(&mac),
        "edge.toml: dhcp.reservations[0].mac: MAC address \"52:54:00:77:00\" is not six hex bytes separated by ':' or '-'"
    );
    let rip = GOOD.replace("ip = \"10.77.0.50\"", "ip = \"10.99.0.50\"");
    assert_eq!(
        err_of(&rip),
        "edge.toml: dhcp.reservations[0].ip: 10.99.0.50 is not inside any dhcp.subnets[].network"
    );
    let router = GOOD.replace("router = \"10.77.0.1\"", "router = \"10.78.0.1\"");
    assert_eq!(
        err_of(&router),
        "edge.toml: dhcp.subnets[0].router: 10.78.0.1 is not inside 10.77.0.0/24"
    );
    let site = GOOD.replace("site = \"s1\"", "site = \"Site 1\"");
    assert_eq!(
        err_of(&site),
        "edge.toml: site: site name \"Site 1\" contains 'S'; allowed are a-z, 0-9 and '-' (not first)"
    );
    let nats = GOOD.replace("nats://10.0.0.5:4222", "10.0.0.5:4222");
    assert_eq!(
        err_of(&nats),
        "edge.toml: nats: \"10.0.0.5:4222\" is not a NATS URL (nats://host:port)"
    );
    let addr = GOOD.replace("10.77.0.1/24\"\nimages", "10.77.0.0/24\"\nimages");
    assert_eq!(
        err_of(&addr),
        "edge.toml: address: 10.77.0.0/24 is the network or broadcast address of its subnet"
    );
    let no_if = GOOD.replace("interface = \"br0\"\n", "");
    assert_eq!(
        err_of(&no_if),
        "edge.toml: interface: missing (set it or pass --interface)"
    );
    let dup = format!(
        "{GOOD}\n[[dhcp.reservations]]\nmac = \"52:54:00:77:00:0b\"\nip = \"10.77.0.50\"\n"
    );
    assert_eq!(
        err_of(&dup),
        "edge.toml: dhcp.reservations[1].ip: 10.77.0.50 is already reserved by dhcp.reservations[0]"
    );
    let loader = GOOD.replace("loader = \"undionly\"", "loader = \"grub\"");
    assert_eq!(
        err_of(&loader),
        "edge.toml: dhcp.reservations[0].loader: \"grub\" is not one of pxelinux, undionly, ipxe, snponly, shim"
    );
    let nopool = "interface = \"br0\"\naddress = \"10.77.0.1/24\"\nimages = \"/i\"\n";
    assert_eq!(
        err_of(nopool),
        "edge.toml: dhcp.subnets: server mode needs at least one pool (dhcp.subnets[].pools or --pool)"
    );
}

#[test]
fn converts_into_dhcp_settings() {
    let c = EdgeConfig::from_toml_str("edge.toml", GOOD).unwrap();
    let d = &c.dhcp;
    assert_eq!(d.server_ip, Ipv4Addr::new(10, 77, 0, 1));
    assert_eq!(d.http_base, "http://10.77.0.1");
    assert_eq!(d.bios_chain, BiosChain::Undionly);
    assert_eq!(d.uefi_loader, UefiLoader::SnpOnly);
    assert_eq!(d.subnets.len(), 2);
    assert_eq!(
        d.subnets[0].pools,
        vec![(Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 199))]
    );
    assert_eq!(
        d.reservations[0].loader,
        Some(Loader::Bios(BiosChain::Undionly))
    );

    // Proxy mode from a file with no subnet: the edge's own network is added.
    let proxy = "interface = \"br0\"\naddress = \"10.77.0.1/24\"\nimages = \"/i\"\n[dhcp]\nmode = \"proxy\"\n";
    let c = EdgeConfig::from_toml_str("edge.toml", proxy).unwrap();
    assert_eq!(c.dhcp.subnets.len(), 1);
    assert_eq!(c.dhcp.subnets[0].network.to_string(), "10.77.0.0/24");
    assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
}

#[test]
fn unknown_fields_are_refused_with_their_name() {
    let text = format!("{GOOD}\n[extra]\nfoo = 1\n");
    let e = EdgeConfig::from_toml_str("edge.toml", &text).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }));
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        chain.starts_with("parsing config file edge.toml: "),
        "{chain}"
    );
    assert!(chain.contains("unknown field `extra`"), "{chain}");
    let typo = GOOD.replace("lease_time = 600", "lease_tim = 600");
    let e = EdgeConfig::from_toml_str("edge.toml", &typo).unwrap_err();
    let chain = format!("{}", std::error::Error::source(&e).unwrap());
    assert!(chain.contains("unknown field `lease_tim`"), "{chain}");
}

#[test]
fn flags_only_form_works_without_a_file() {
    let c = from_flags(&["--pool", "10.77.0.100-10.77.0.199"]).unwrap();
    assert_eq!(c.site.as_str(), DEFAULT_SITE);
    assert_eq!(c.interface, "br0");
    assert_eq!(c.dhcp.mode, DhcpMode::Server);
    assert_eq!(c.dhcp.subnets.len(), 1);
    assert_eq!(c.dhcp.subnets[0].network.to_string(), "10.77.0.0/24");
    assert_eq!(
        c.dhcp.subnets[0].pools,
        vec![(Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 199))]
    );
    assert_eq!(c.nats_url, None);
    assert_eq!(c.http_port, 80);
    assert_eq!(c.dhcp.bios_chain, BiosChain::Pxelinux);
    assert_eq!(c.dhcp.subnets[0].router, None);
    assert!(c.dhcp.subnets[0].dns.is_empty());
    assert_eq!(c.js_domain, None);

    // Gateway, name servers and the hub's JetStream domain from flags.
    let c = from_flags(&[
        "--pool",
        "10.77.0.100-10.77.0.199",
        "--router",
        "10.77.0.254",
        "--dns",
        "10.77.0.53",
        "--dns",
        "10.77.0.54",
        "--js-domain",
        "hub",
        "--image-cache-mb",
        "64",
        "--image-cache-min-free-mb",
        "0",
    ])
    .unwrap();
    assert_eq!(c.dhcp.subnets.len(), 1);
    assert_eq!(
        c.dhcp.subnets[0].router,
        Some(Ipv4Addr::new(10, 77, 0, 254))
    );
    assert_eq!(
        c.dhcp.subnets[0].dns,
        vec![Ipv4Addr::new(10, 77, 0, 53), Ipv4Addr::new(10, 77, 0, 54)]
    );
    assert_eq!(c.js_domain.as_deref(), Some("hub"));
    assert_eq!(c.image_cache_bytes, 64 << 20);
    assert_eq!(c.image_cache_min_free_bytes, 0);
    let bad = from_flags(&["--router", "not-an-ip"])
        .unwrap_err()
        .to_string();
    assert!(bad.contains("router"), "{bad}");

    let all = from_flags(&[
        "--pool",
        "10.77.0.100-10.77.0.199",
        "--nats",
        "nats://127.0.0.1:4222",
        "--site",
        "lab",
        "--proxy-dhcp",
        "--bios-chain",
        "undionly",
        "--http-port",
        "8080",
        "--state-dir",
        "/tmp/st",
        "--prospector-nats",
        "nats://10.77.0.1:4333",
    ])
    .unwrap();
    assert_eq!(all.site.as_str(), "lab");
    assert_eq!(all.dhcp.mode, DhcpMode::Proxy);
    assert!(all.dhcp.subnets[0].pools.is_empty());
    assert_eq!(all.dhcp.bios_chain, BiosChain::Undionly);
    assert_eq!(all.http_base(), "http://10.77.0.1:8080");
    assert_eq!(all.state_dir, PathBuf::from("/tmp/st"));
    assert_eq!(all.prospector_nats, "nats://10.77.0.1:4333");
    assert_eq!(
        all.nats_url.as_ref().map(|u| u.as_str()),
        Some("nats://127.0.0.1:4222")
    );
}

#[test]
fn flags_override_the_file() {
    let src = Sourced {
        file: "edge.toml".into(),
        raw: toml::from_str(GOOD).unwrap(),
    };
    let flags = Flags::try_parse_from([
        "substruct-edge",
        "--site",
        "s2",
        "--pool",
        "10.77.0.150-10.77.0.160",
        "--http-port",
        "8081",
    ])
    .unwrap();
    let c = EdgeConfig::try_from(flags.apply(src)).unwrap();
    assert_eq!(c.site.as_str(), "s2");
    assert_eq!(c.http_port, 8081);
    assert_eq!(c.dhcp.subnets.len(), 2);
    assert_eq!(
        c.dhcp.subnets[0].pools[0],
        (Ipv4Addr::new(10, 77, 0, 150), Ipv4Addr::new(10, 77, 0, 160))
    );
    // Untouched file values stay.
    assert_eq!(c.dhcp.subnets[0].router, Some(Ipv4Addr::new(10, 77, 0, 1)));
    assert_eq!(c.dhcp.bios_chain, BiosChain::Undionly);
}

#[test]
fn flag_errors_name_the_command_line() {
    let e = from_flags(&["--pool", "10.77.0.200-10.77.0.100"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "command line: dhcp.subnets[0].pools[0]: 10.77.0.200-10.77.0.100 start is after end"
    );
}

#[test]
fn lease_times_read_seconds_and_humantime_text() {
    let lease = |value: &str| {
        let text = GOOD.replace("lease_time = \"1h\"", &format!("lease_time = {value}"));
        EdgeConfig::from_toml_str("edge.toml", &text).map(|c| c.dhcp.subnets[0].lease_time)
    };
    for (value, secs) in [
        ("600", 600),
        ("\"600\"", 600),
        ("\" 120 \"", 120),
        ("\"90s\"", 90),
        ("\"30m\"", 1800),
        ("\"1h\"", 3600),
        ("\"1 h\"", 3600),
        ("\"1d\"", 86_400),
        ("\"1h 30m\"", 5400),
        ("\"1 week\"", 604_800),
    ] {
        assert_eq!(lease(value).unwrap(), Duration::from_secs(secs), "{value}");
    }
    for bad in ["\"\"", "\"-5m\"", "\"soon\"", "\"5 parsecs\""] {
        let e = lease(bad).unwrap_err().to_string();
        assert!(e.contains("is not a duration"), "{bad}: {e}");
    }
    assert_eq!(
        lease("59").unwrap_err().to_string(),
        "edge.toml: dhcp.subnets[0].lease_time: 59 s is outside 60 s ..= 2147483647 s"
    );
    assert!(lease("2147483647").is_ok());
    assert!(lease("2147483648").is_err());
}

#[test]
fn choices_are_read_by_the_flag_names() {
    let c = EdgeConfig::from_toml_str("edge.toml", GOOD).unwrap();
    assert_eq!(c.dhcp.mode, DhcpMode::Server);
    for (name, loader) in [
        ("pxelinux", Loader::Bios(BiosChain::Pxelinux)),
        ("undionly", Loader::Bios(BiosChain::Undionly)),
        ("ipxe", Loader::Uefi(UefiLoader::IpxeEfi)),
        ("snponly", Loader::Uefi(UefiLoader::SnpOnly)),
    ] {
        let text = GOOD.replace("loader = \"undionly\"", &format!("loader = \"{name}\""));
        let c = EdgeConfig::from_toml_str("edge.toml", &text).unwrap();
        assert_eq!(c.dhcp.reservations[0].loader, Some(loader), "{name}");
    }
    let text = GOOD.replace("uefi_loader = \"snponly\"", "uefi_loader = \"ipxe\"");
    let c = EdgeConfig::from_toml_str("edge.toml", &text).unwrap();
    assert_eq!(c.dhcp.uefi_loader, UefiLoader::IpxeEfi);
    assert_eq!(
        err_of(&GOOD.replace("uefi_loader = \"snponly\"", "uefi_loader = \"ipxe.efi\"")),
        "edge.toml: dhcp.uefi_loader: \"ipxe.efi\" is not one of ipxe, snponly, shim"
    );
    assert_eq!(
        err_of(&GOOD.replace("bios_chain = \"undionly\"", "bios_chain = \"grub\"")),
        "edge.toml: dhcp.bios_chain: \"grub\" is not one of pxelinux, undionly"
    );
}

#[test]
fn dhcp_rules_are_checked_at_load_in_every_mode() {
    // Proxy mode: a reservation outside every subnet, refused by the one DHCP check.
    let proxy = "interface = \"br0\"\naddress = \"10.77.0.1/24\"\nimages = \"/i\"\n[dhcp]\nmode = \"proxy\"\n\
                 [[dhcp.reservations]]\nmac = \"52:54:00:77:00:0a\"\nip = \"10.99.0.5\"\n";
    assert_eq!(
        err_of(proxy),
        "edge.toml: dhcp.reservations[0].ip: 10.99.0.5 is not inside any dhcp.subnets[].network"
    );
    // Proxy mode: pools are checked, then dropped.
    let pools = "interface = \"br0\"\naddress = \"10.77.0.1/24\"\nimages = \"/i\"\n[dhcp]\nmode = \"proxy\"\n\
                 [[dhcp.subnets]]\nnetwork = \"10.77.0.0/24\"\npools = [\"10.77.0.9-10.77.0.5\"]\n";
    assert_eq!(
        err_of(pools),
        "edge.toml: dhcp.subnets[0].pools[0]: 10.77.0.9-10.77.0.5 start is after end"
    );
    let ok = pools.replace("10.77.0.9-10.77.0.5", "10.77.0.1-10.77.0.5");
    let c = EdgeConfig::from_toml_str("edge.toml", &ok).unwrap();
    assert!(c.dhcp.subnets[0].pools.is_empty());
    // A reservation on a subnet's network address.
    let net = GOOD.replace("ip = \"10.77.0.50\"", "ip = \"10.77.0.0\"");
    assert_eq!(
        err_of(&net),
        "edge.toml: dhcp.reservations[0].ip: 10.77.0.0 is the network or broadcast address of 10.77.0.0/24"
    );
    // The edge's address must be unicast.
    let mcast = GOOD.replace("address = \"10.77.0.1/24\"", "address = \"224.0.0.5/24\"");
    assert_eq!(
        err_of(&mcast),
        "edge.toml: address: 224.0.0.5 is not a unicast address"
    );
}

#[test]
fn nats_urls_keep_the_edge_rule() {
    let with = |url: &str| GOOD.replace("nats://10.0.0.5:4222", url);
    for good in [
        "tls://10.0.0.5:4222",
        "ws://h",
        "wss://h:443/nats",
        "nats://a:1,nats://b:2",
    ] {
        let c = EdgeConfig::from_toml_str("edge.toml", &with(good)).unwrap();
        assert_eq!(c.nats_url.unwrap().as_str(), good);
    }
    for bad in [
        "10.0.0.5:4222",
        "nats://",
        "nats://a b",
        "nats://a:1, nats://b:2",
        "http://x:1",
        "NATS://a:1",
        "",
    ] {
        assert_eq!(
            err_of(&with(bad)),
            format!("edge.toml: nats: {bad:?} is not a NATS URL (nats://host:port)")
        );
    }
    let pn = GOOD.replace(
        "images = \"/srv/images\"",
        "images = \"/srv/images\"\nprospector_nats = \"10.77.0.1:4222\"",
    );
    assert_eq!(
        err_of(&pn),
        "edge.toml: prospector_nats: \"10.77.0.1:4222\" is not a NATS URL (nats://host:port)"
    );
}

#[test]
fn a_missing_file_is_named() {
    let e = load_file(std::path::Path::new("/nonexistent/edge.toml")).unwrap_err();
    assert_eq!(e.to_string(), "reading config file /nonexistent/edge.toml");
}

#[test]
fn a_subnet_lists_its_relays() {
    let with = GOOD.replace(
        "lease_time = 600",
        "lease_time = 600\nrelays = [\"10.77.0.2\", \"10.77.0.3\"]",
    );
    let c = EdgeConfig::from_toml_str("edge.toml", &with).unwrap();
    assert_eq!(
        c.dhcp.subnets[1].relays,
        vec![Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 3)]
    );
    assert!(c.dhcp.subnets[0].relays.is_empty());
    let bad = GOOD.replace(
        "lease_time = 600",
        "lease_time = 600\nrelays = [\"10.77.0\"]",
    );
    assert!(
        err_of(&bad).starts_with("edge.toml: dhcp.subnets[1].relays[0]:"),
        "{}",
        err_of(&bad)
    );
}

#[test]
fn tftp_limits_default_and_are_checked() {
    let c = EdgeConfig::from_toml_str("edge.toml", GOOD).unwrap();
    assert_eq!(c.tftp_limits, crate::tftp::TftpSettings::default());
    let with = format!("tftp_max_transfers = 64\ntftp_max_per_source = 4\n{GOOD}");
    let c = EdgeConfig::from_toml_str("edge.toml", &with).unwrap();
    assert_eq!(
        (c.tftp_limits.max_transfers, c.tftp_limits.max_per_source),
        (64, 4)
    );
    assert_eq!(
        err_of(&format!("tftp_max_transfers = 0\n{GOOD}")),
        "edge.toml: tftp_max_transfers: must be at least 1"
    );
    assert_eq!(
        err_of(&format!(
            "tftp_max_transfers = 4\ntftp_max_per_source = 5\n{GOOD}"
        )),
        "edge.toml: tftp_max_per_source: must be 1 ..= tftp_max_transfers (4)"
    );
}

#[test]
fn the_power_table_has_defaults_and_refuses_zeros_by_name() {
    let c = EdgeConfig::from_toml_str("edge.toml", GOOD).unwrap();
    assert_eq!(c.power, crate::power::PowerSettings::default());
    assert_eq!(c.power.max_sessions, 4);
    let text = format!(
        "{GOOD}\n[power]\nmax_sessions = 2\nattempts = 5\nbmc_timeout = \"2s\"\npoll_interval = 0\n"
    );
    let c = EdgeConfig::from_toml_str("edge.toml", &text).unwrap();
    assert_eq!(c.power.max_sessions, 2);
    assert_eq!(c.power.attempts, 5);
    assert_eq!(c.power.bmc_timeout, std::time::Duration::from_secs(2));
    assert_eq!(c.power.poll_interval, None, "0 turns the poll off");
    for (bad, field) in [
        ("max_sessions = 0", "power.max_sessions"),
        ("attempts = 0", "power.attempts"),
        ("attempts = 11", "power.attempts"),
        ("bmc_timeout = 0", "power.bmc_timeout"),
        ("sessions = 3", "sessions"),
    ] {
        let e = EdgeConfig::from_toml_str("edge.toml", &format!("{GOOD}\n[power]\n{bad}\n"))
            .unwrap_err();
        let e = substruct_runtime::error_chain(&e);
        assert!(e.contains(field), "{bad}: {e}");
    }
}

#[test]
fn https_sends_uefi_http_boot_to_https_and_keeps_ipxe_on_http() {
    let c = from_flags(&[
        "--pool",
        "10.77.0.100-10.77.0.199",
        "--https-cert",
        "/etc/e.pem",
        "--https-key",
        "/etc/e.key",
    ])
    .unwrap();
    let https = c.https.as_ref().unwrap();
    assert_eq!(https.port, 443);
    assert_eq!(https.tls.cert, PathBuf::from("/etc/e.pem"));
    assert_eq!(c.dhcp.http_boot_url(), "https://10.77.0.1/ipxe.efi");
    assert_eq!(c.dhcp.script_url(), "http://10.77.0.1/boot.ipxe");
    let c = from_flags(&[
        "--pool",
        "10.77.0.100-10.77.0.199",
        "--https-cert",
        "/etc/e.pem",
        "--https-key",
        "/etc/e.key",
        "--https-port",
        "8443",
    ])
    .unwrap();
    assert_eq!(c.dhcp.http_boot_url(), "https://10.77.0.1:8443/ipxe.efi");
    // Without a certificate: HTTP boot over HTTP, no HTTPS server.
    let c = from_flags(&["--pool", "10.77.0.100-10.77.0.199"]).unwrap();
    assert!(c.https.is_none());
    assert_eq!(c.dhcp.http_boot_url(), "http://10.77.0.1/ipxe.efi");
}

#[test]
fn https_settings_are_refused_when_incomplete_or_clashing() {
    let with = |extra: &str| format!("{extra}\n{GOOD}");
    assert_eq!(
        err_of(&with("https_cert = \"/e.pem\"")),
        "edge.toml: https_key: missing (https_cert is set)"
    );
    assert_eq!(
        err_of(&with("https_key = \"/e.key\"")),
        "edge.toml: https_cert: missing (https_key is set)"
    );
    assert_eq!(
        err_of(&with("https_port = 8443")),
        "edge.toml: https_port: set, but https_cert and https_key are not"
    );
    assert_eq!(
        err_of(&with(
            "https_cert = \"/e.pem\"\nhttps_key = \"/e.key\"\nhttps_port = 80"
        )),
        "edge.toml: https_port: 80 is the HTTP port"
    );
    // The flags need each other.
    assert!(Flags::try_parse_from([
        "substruct-edge",
        "--interface",
        "br0",
        "--https-cert",
        "/e.pem"
    ])
    .is_err());
}

#[test]
fn a_subnet_reads_its_uefi_loader_by_name() {
    let with_shim = GOOD.replace(
        "network = \"10.9.0.0/24\"\n",
        "network = \"10.9.0.0/24\"\nuefi_loader = \"shim\"\n",
    );
    let c = EdgeConfig::from_toml_str("edge.toml", &with_shim).unwrap();
    assert_eq!(c.dhcp.subnets[1].uefi_loader, Some(UefiLoader::Shim));
    assert_eq!(c.dhcp.subnets[0].uefi_loader, None);
    let bad = GOOD.replace(
        "network = \"10.9.0.0/24\"\n",
        "network = \"10.9.0.0/24\"\nuefi_loader = \"grub\"\n",
    );
    let e = err_of(&bad);
    assert!(
        e.starts_with("edge.toml: dhcp.subnets[1].uefi_loader: ") && e.contains("shim"),
        "{e}"
    );
}

#[test]
fn dhcp6_needs_both_settings_and_says_what_is_wrong() {
    let with = |extra: &str| format!("{extra}\n{GOOD}");
    let c = EdgeConfig::from_toml_str(
        "edge.toml",
        &with("ipv6_address = \"fd77::1\"\ndhcp6_pool = \"fd77::100-fd77::1ff\""),
    )
    .unwrap();
    let s = c.dhcp6.unwrap();
    assert_eq!(s.address, "fd77::1".parse::<std::net::Ipv6Addr>().unwrap());
    assert_eq!(s.pool_size, 256);
    assert!(EdgeConfig::from_toml_str("edge.toml", GOOD)
        .unwrap()
        .dhcp6
        .is_none());
    assert_eq!(
        err_of(&with("ipv6_address = \"fd77::1\"")),
        "edge.toml: dhcp6_pool: missing (ipv6_address is set)"
    );
    assert_eq!(
        err_of(&with("dhcp6_pool = \"fd77::100-fd77::1ff\"")),
        "edge.toml: ipv6_address: missing (dhcp6_pool is set)"
    );
    assert_eq!(
        err_of(&with(
            "ipv6_address = \"10.0.0.1\"\ndhcp6_pool = \"fd77::100-fd77::1ff\""
        )),
        "edge.toml: ipv6_address: \"10.0.0.1\" is not an IPv6 address"
    );
    assert_eq!(
        err_of(&with("ipv6_address = \"fd77::1\"\ndhcp6_pool = \"fd78::100-fd78::1ff\"")),
        "edge.toml: dhcp6_pool: the DHCPv6 pool fd78::100-fd78::1ff is not in the /64 of the edge's address fd77::1"
    );
    // The flags need each other.
    assert!(Flags::try_parse_from([
        "substruct-edge",
        "--interface",
        "br0",
        "--ipv6-address",
        "fd77::1"
    ])
    .is_err());
}

#[test]
fn ipv6_only_sites_need_dhcp6_and_prospectors_get_an_ipv6_nats_url() {
    let with = |extra: &str| format!("{extra}\n{GOOD}");
    let v6 = "ipv6_address = \"fd77::1\"\ndhcp6_pool = \"fd77::100-fd77::1ff\"";
    // Dual stack: DHCPv4 stays and every script names the IPv4 URLs.
    let c = EdgeConfig::from_toml_str("edge.toml", &with(v6)).unwrap();
    assert!(!c.ipv6_only());
    assert_eq!(c.http_base6(), None);
    assert_eq!(c.prospector_nats6, None);
    assert_eq!(
        err_of(&with(&format!(
            "{v6}\nprospector_nats6 = \"nats://[fd77::4]:4222\""
        ))),
        "edge.toml: prospector_nats6: only an IPv6-only site uses it (ipv6_only = true)"
    );
    // IPv6-only: the IPv6 URLs, the NATS one by default on the edge's address.
    let c =
        EdgeConfig::from_toml_str("edge.toml", &with(&format!("{v6}\nipv6_only = true"))).unwrap();
    assert_eq!(c.http_base6().as_deref(), Some("http://[fd77::1]"));
    assert_eq!(
        c.prospector_nats6.as_ref().map(|u| u.as_str()),
        Some("nats://[fd77::1]:4222")
    );
    let c = EdgeConfig::from_toml_str(
        "edge.toml",
        &with(&format!(
            "{v6}\nipv6_only = true\nprospector_nats6 = \"nats://[fd77::4]:4333\""
        )),
    )
    .unwrap();
    assert!(c.ipv6_only());
    assert_eq!(
        c.prospector_nats6.as_ref().map(|u| u.as_str()),
        Some("nats://[fd77::4]:4333")
    );
    assert_eq!(
        err_of(&with("ipv6_only = true")),
        "edge.toml: ipv6_only: needs ipv6_address and dhcp6_pool (DHCPv6 is the only DHCP then)"
    );
    assert_eq!(
        err_of(&with("prospector_nats6 = \"nats://[fd77::4]:4222\"")),
        "edge.toml: prospector_nats6: only an IPv6-only site uses it (ipv6_only = true)"
    );
    assert_eq!(
        err_of(&with(&format!(
            "{v6}\nipv6_only = true\nprospector_nats6 = \"[fd77::4]:4222\""
        ))),
        "edge.toml: prospector_nats6: \"[fd77::4]:4222\" is not a NATS URL (nats://host:port)"
    );
    // No DHCPv4 pool is needed when no DHCPv4 is served.
    let nopool = "interface = \"br0\"\naddress = \"10.77.0.1/24\"\nimages = \"/i\"\n";
    assert!(
        EdgeConfig::from_toml_str("edge.toml", &format!("{nopool}{v6}\nipv6_only = true"))
            .unwrap()
            .ipv6_only()
    );
    // The flag needs --ipv6-address; with it, the config says IPv6-only.
    assert!(
        Flags::try_parse_from(["substruct-edge", "--interface", "br0", "--ipv6-only"]).is_err()
    );
    let flags = Flags::try_parse_from([
        "substruct-edge",
        "--interface",
        "br0",
        "--address",
        "10.77.0.1/24",
        "--images",
        "/srv/images",
        "--ipv6-address",
        "fd77::1",
        "--dhcp6-pool",
        "fd77::100-fd77::1ff",
        "--ipv6-only",
    ])
    .unwrap();
    assert!(flags.into_config().unwrap().ipv6_only());
}
