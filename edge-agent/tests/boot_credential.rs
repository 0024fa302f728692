//! The edge issues a boot credential per MAC: the prospector's command line in
//! `/boot.ipxe` carries claims signed by the site's key for exactly the MAC that asked,
//! which the controller's check ([`BootCredential::verify`]) accepts — and only for that
//! MAC and site.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use anyhow::{Context, Result};
use substruct_edge::dhcp::{LeaseChange, LeaseStore};
use substruct_edge::http::binding::Binding;
use substruct_edge::http::limits::HttpLimits;
use substruct_edge::http::{self, HttpSettings, HttpState};
use substruct_edge::intents::IntentTable;
use substruct_wire::{BootCredential, CredentialError, Mac, SiteId, SiteKey};
use tokio_util::sync::CancellationToken;

const MAC: &str = "52:54:00:77:00:0a";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn the_boot_script_carries_a_credential_signed_for_its_mac() -> Result<()> {
    let root = tempfile::tempdir()?;
    let key_file = root.path().join("site.nk");
    let key = substruct_edge::site_key::generate(&key_file)?;
    let public = key.public_key();
    let leases = LeaseStore::open(root.path().join("leases.redb"))?;
    leases.apply(&[LeaseChange::Grant {
        mac: Mac::parse(MAC)?,
        ip: "127.0.0.1".parse()?,
        expires: now() + 3600,
    }])?;
    let images = root.path().join("images");
    std::fs::create_dir_all(&images)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let site = SiteId::new("s1")?;
    let state = HttpState::new(
        HttpSettings {
            base: "http://10.77.0.1".into(),
            site: site.clone(),
            nats_url: "nats://10.77.0.1:4222".into(),
            base6: None,
            nats_url6: None,
            ipv6_only: false,
            extra_args: None,
            images_dir: images,
            ipxe_dir: root.path().to_owned(),
            limits: HttpLimits::default(),
        },
        IntentTable::new(),
    )?
    .with_binding(Binding::Leases(leases))
    .with_site_key(Arc::new(substruct_edge::site_key::load(&key_file)?));
    let cancel = CancellationToken::new();
    tokio::spawn(http::serve(listener, state, cancel.clone()));

    let script = reqwest::get(format!("{base}/boot.ipxe?mac={MAC}&platform=efi"))
        .await?
        .text()
        .await?;
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("substruct.token="))
        .with_context(|| format!("no substruct.token= in\n{script}"))?;
    println!("credential: {} characters", token.len());
    let credential = BootCredential::new(token)?;
    let claims = credential.verify(&public, &site, now())?;
    assert_eq!(claims.mac, Mac::parse(MAC)?);
    // Only for that MAC, that site and that key.
    assert_eq!(
        claims.require_mac([Mac::parse("52:54:00:77:00:0b")?].iter()),
        Err(CredentialError::MacNotReported(Mac::parse(MAC)?))
    );
    assert!(matches!(
        credential.verify(&public, &SiteId::new("s2")?, now()),
        Err(CredentialError::WrongSite { .. })
    ));
    let other = SiteKey::from_raw([7; 32])?.public_key();
    assert_eq!(
        credential.verify(&other, &site, now()),
        Err(CredentialError::BadSignature)
    );
    // Each boot gets its own.
    let again = reqwest::get(format!("{base}/boot.ipxe?mac={MAC}&platform=efi"))
        .await?
        .text()
        .await?;
    assert!(!again.contains(token), "a credential was handed out twice");
    cancel.cancel();
    Ok(())
}
