//! The Secure Boot chain's GRUB configs, asked over TFTP: what the edge renders for the
//! address leased to the MAC in the name, and what it renders for anyone else (a host
//! naming a MAC it does not hold, a name without a valid MAC).

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Result;
use substruct_edge::dhcp::{LeaseChange, LeaseStore};
use substruct_edge::http::binding::Binding;
use substruct_edge::http::grub::{GrubConfigs, GRUB_CFG, GRUB_CFG_NAME};
use substruct_edge::http::limits::HttpLimits;
use substruct_edge::http::{HttpSettings, HttpState};
use substruct_edge::intents::IntentTable;
use substruct_edge::tftp::Rendered;
use substruct_wire::intent::{BootIntent, BootIntentRecord};
use substruct_wire::{Mac, SiteId};

const INSTALLING: &str = "52:54:00:77:60:0a";
const UNKNOWN: &str = "52:54:00:77:60:0b";

fn text(configs: &GrubConfigs, name: &str, peer: &str) -> String {
    let peer: IpAddr = peer.parse().unwrap();
    let bytes = configs.render(name, peer).expect("a name GRUB asks for");
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn only_the_leased_address_gets_a_credential_or_an_install_line() -> Result<()> {
    let root = tempfile::tempdir()?;
    let key_file = root.path().join("site.nk");
    substruct_edge::site_key::generate(&key_file)?;
    let leases = LeaseStore::open(root.path().join("leases.redb"))?;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    for (mac, ip) in [(INSTALLING, "10.77.0.100"), (UNKNOWN, "10.77.0.101")] {
        leases.apply(&[LeaseChange::Grant {
            mac: Mac::parse(mac)?,
            ip: ip.parse()?,
            expires,
        }])?;
    }
    let images = root.path().join("images");
    std::fs::create_dir_all(&images)?;
    let intents = IntentTable::new();
    intents.set(
        Mac::parse(INSTALLING)?,
        BootIntentRecord {
            machine_id: None,
            intent: BootIntent::Install {
                kernel: "debian-12/linux".parse()?,
                initrd: "debian-12/initrd.gz".parse()?,
                cmdline: "auto=true url={edge}/install/TOKEN/preseed.cfg".into(),
            },
        },
    );
    let state = HttpState::new(
        HttpSettings {
            base: "http://10.77.0.1".into(),
            site: SiteId::new("s1")?,
            nats_url: "nats://10.77.0.1:4222".into(),
            base6: None,
            nats_url6: None,
            ipv6_only: false,
            extra_args: None,
            images_dir: images,
            ipxe_dir: root.path().to_owned(),
            limits: HttpLimits::default(),
        },
        intents,
    )?
    .with_binding(Binding::Leases(leases))
    .with_site_key(Arc::new(substruct_edge::site_key::load(&key_file)?));
    let configs = GrubConfigs::new(state);

    // The fixed first file, for anyone.
    assert_eq!(text(&configs, GRUB_CFG_NAME, "10.77.0.55"), GRUB_CFG);
    // Other names are not the hook's: the lookup goes on (images, loaders).
    assert!(configs
        .render("images/prospector/vmlinuz", "10.77.0.100".parse()?)
        .is_none());

    let install = format!("grub/substruct/{INSTALLING}.cfg");
    let own = text(&configs, &install, "10.77.0.100");
    assert!(
        own.contains("linux /images/debian-12/linux auto=true url=http://10.77.0.1/install/TOKEN/preseed.cfg"),
        "{own}"
    );
    // Another host naming that MAC (its own lease, or none) gets no install line.
    for stranger in ["10.77.0.101", "10.77.0.250"] {
        let other = text(&configs, &install, stranger);
        assert!(
            !other.contains("linux ") && !other.contains("TOKEN"),
            "{other}"
        );
        assert!(other.contains("configfile"), "a retry: {other}");
    }

    let unknown = format!("grub/substruct/{UNKNOWN}.cfg");
    let own = text(&configs, &unknown, "10.77.0.101");
    assert!(own.contains("substruct.token="), "{own}");
    assert!(own.contains("substruct.seed="), "{own}");
    // The prospector for a stranger naming that MAC, without a credential.
    let other = text(&configs, &unknown, "10.77.0.100");
    assert!(
        other.contains("linux /images/prospector/vmlinuz"),
        "{other}"
    );
    assert!(
        !other.contains("substruct.token=") && !other.contains("substruct.seed="),
        "{other}"
    );

    // Names without a valid MAC get a retry, never a credential.
    for name in [
        "grub/substruct/nonsense.cfg",
        "grub/substruct/ff:ff:ff:ff:ff:ff.cfg",
        "grub/substruct/52:54:00:77:60:0a",
        &format!("grub/substruct/{}.cfg", "a".repeat(400)),
    ] {
        let t = text(&configs, name, "10.77.0.100");
        assert!(
            t.contains("configfile") && !t.contains("linux "),
            "{name}: {t}"
        );
    }
    Ok(())
}
