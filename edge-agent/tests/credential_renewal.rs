//! The boot script's NATS login and its renewal (issue 11): `/boot.ipxe` puts the boot
//! user key's seed next to the credential (`substruct.seed=`), and `GET /credential`
//! renews a credential for the same boot — only for the address leased to its MAC and
//! only for credentials this edge's key signed.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use anyhow::{Context, Result};
use substruct_edge::dhcp::{LeaseChange, LeaseStore};
use substruct_edge::http::binding::Binding;
use substruct_edge::http::limits::HttpLimits;
use substruct_edge::http::{self, HttpSettings, HttpState};
use substruct_edge::intents::IntentTable;
use substruct_wire::{BootCredential, Mac, SiteId, SiteKey};
use tokio_util::sync::CancellationToken;

const MAC: &str = "52:54:00:77:00:0a";
/// Leased to another address: its credentials must not renew from 127.0.0.1.
const OTHER_MAC: &str = "52:54:00:77:00:0b";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn the_script_carries_the_login_seed_and_only_the_bound_asker_renews() -> Result<()> {
    let root = tempfile::tempdir()?;
    let key_file = root.path().join("site.nk");
    let key = substruct_edge::site_key::generate(&key_file)?;
    let public = key.public_key();
    let leases = LeaseStore::open(root.path().join("leases.redb"))?;
    leases.apply(&[
        LeaseChange::Grant {
            mac: Mac::parse(MAC)?,
            ip: "127.0.0.1".parse()?,
            expires: now() + 3600,
        },
        LeaseChange::Grant {
            mac: Mac::parse(OTHER_MAC)?,
            ip: "10.77.0.99".parse()?,
            expires: now() + 3600,
        },
    ])?;
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
    let word = |prefix: &str| {
        script
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix))
            .map(str::to_owned)
            .with_context(|| format!("no {prefix} in\n{script}"))
    };
    let credential = BootCredential::new(word("substruct.token=")?)?;
    let seed = word("substruct.seed=")?;
    let claims = credential.verify(&public, &site, now())?;
    // The seed is the credential's user key: the prospector can log in with the pair.
    let login = substruct_runtime::NatsLogin::new(credential.as_str(), &seed)?;
    assert_eq!(login.user_key(), claims.boot_key);
    println!(
        "credential {} characters, seed {}; script line {} characters",
        credential.as_str().len(),
        seed.len(),
        script.lines().map(str::len).max().unwrap_or(0)
    );

    // Renewal from the bound address: same MAC, same boot key, valid.
    let renew = |token: String| {
        let base = base.clone();
        async move {
            let r = reqwest::get(format!("{base}/credential?token={token}")).await?;
            let status = r.status().as_u16();
            Ok::<_, anyhow::Error>((status, r.text().await?))
        }
    };
    let (status, body) = renew(credential.to_string()).await?;
    assert_eq!(status, 200, "{body}");
    let renewed = BootCredential::new(body.trim())?;
    let again = renewed.verify(&public, &site, now())?;
    assert_eq!(again.mac, claims.mac);
    assert_eq!(again.boot_key, claims.boot_key);

    // A credential for a MAC leased to another address: refused from here.
    let other = BootCredential::issue(&key, &site, Mac::parse(OTHER_MAC)?, now(), 600, [7; 32])?;
    assert_eq!(renew(other.to_string()).await?.0, 403);
    // Signed by another key, for this MAC: refused.
    let foreign = SiteKey::from_raw([9; 32])?;
    let forged = BootCredential::issue(&foreign, &site, Mac::parse(MAC)?, now(), 600, [8; 32])?;
    assert_eq!(renew(forged.to_string()).await?.0, 403);
    // For this MAC but another site: refused.
    let elsewhere = BootCredential::issue(
        &key,
        &SiteId::new("s2")?,
        Mac::parse(MAC)?,
        now(),
        600,
        [6; 32],
    )?;
    assert_eq!(renew(elsewhere.to_string()).await?.0, 403);
    // Garbage: refused.
    assert_eq!(renew("not-a-credential".into()).await?.0, 403);
    // An expired credential of the bound MAC renews (the asker could fetch a new script).
    let expired = BootCredential::issue(&key, &site, Mac::parse(MAC)?, now() - 7200, 60, [5; 32])?;
    let (status, body) = renew(expired.to_string()).await?;
    assert_eq!(status, 200, "{body}");
    assert!(BootCredential::new(body.trim())?
        .verify(&public, &site, now())
        .is_ok());
    cancel.cancel();
    Ok(())
}
