//! Helpers shared by the controller's component tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use substruct_controller::config::{ApiToken, Role, TlsPaths};
use substruct_controller::sites::SiteRecord;
use substruct_controller::{Config, Controller};
use substruct_wire::messages::{DiscoverReply, DiscoverRequest, ErrorReply};
use substruct_wire::report::{Cpu, Disk, DiskTransport, Dmi, HardwareReport, Memory, Nic};
use substruct_wire::{subjects, BootCredential, Mac, SiteId, SiteKey};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-admin-token";

/// A plausible report: `uuid`, `serial`, the given MACs and disk serials.
pub fn report(
    uuid: Option<&str>,
    serial: Option<&str>,
    macs: &[[u8; 6]],
    disk_serials: &[&str],
) -> HardwareReport {
    HardwareReport {
        prospector_version: "0.1.0-test".into(),
        dmi: Dmi {
            sys_vendor: Some("QEMU".into()),
            product_name: Some("Standard PC (Q35 + ICH9, 2009)".into()),
            product_serial: serial.map(Into::into),
            product_uuid: uuid.map(Into::into),
            ..Dmi::default()
        },
        cpu: Cpu {
            model: Some("QEMU Virtual CPU".into()),
            sockets: 1,
            cores: 2,
            threads: 4,
            ..Cpu::default()
        },
        memory: Memory {
            total_bytes: 4 << 30,
            dimms: vec![],
        },
        disks: disk_serials
            .iter()
            .enumerate()
            .map(|(i, s)| Disk {
                name: format!("vd{}", (b'a' + i as u8) as char),
                size_bytes: 20 << 30,
                serial: Some((*s).into()),
                transport: DiskTransport::Virtio,
                ..Disk::default()
            })
            .collect(),
        nics: macs
            .iter()
            .enumerate()
            .map(|(i, m)| Nic {
                name: format!("eth{i}"),
                mac: Mac(*m),
                driver: Some("virtio_net".into()),
                pci_address: None,
                speed_mbps: None,
                carrier: Some(true),
            })
            .collect(),
        ..HardwareReport::default()
    }
}

/// A report with random, distinct identity facts.
pub fn random_report(rng: &mut impl rand::Rng) -> HardwareReport {
    let uuid = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.gen::<u32>(),
        rng.gen::<u16>(),
        rng.gen::<u16>(),
        rng.gen::<u16>(),
        rng.gen::<u64>() & 0xffff_ffff_ffff
    );
    let serial = format!("SN{:010X}", rng.gen::<u64>() & 0xff_ffff_ffff);
    let macs = [random_mac(rng), random_mac(rng)];
    let disk = format!("DSK{:012X}", rng.gen::<u64>() & 0xffff_ffff_ffff);
    report(Some(&uuid), Some(&serial), &macs, &[&disk])
}

fn random_mac(rng: &mut impl rand::Rng) -> [u8; 6] {
    let mut m: [u8; 6] = rng.gen();
    m[0] = (m[0] & 0xfe) | 0x02;
    m
}

pub fn config(nats_url: &str) -> Config {
    Config {
        nats_url: nats_url.parse().unwrap(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: vec![ApiToken {
            token: TOKEN.into(),
            role: Role::Admin,
        }],
        ..Config::default()
    }
}

/// [`config`] with HTTPS on the API, serving `tls`'s certificate.
pub fn tls_config(nats_url: &str, tls: &substruct_testkit::nats_topology::TlsFiles) -> Config {
    Config {
        tls: Some(TlsPaths {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        }),
        ..config(nats_url)
    }
}

/// A controller running in-process, stopped on drop of the token's owner.
pub struct Running {
    pub controller: Controller,
    pub cancel: CancellationToken,
}

impl Running {
    pub async fn start(config: Config) -> Self {
        let cancel = CancellationToken::new();
        let controller = tokio::time::timeout(
            Duration::from_secs(30),
            Controller::start(config, cancel.clone()),
        )
        .await
        .expect("controller start timed out")
        .expect("controller start");
        Self { controller, cancel }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.controller.api_addr())
    }

    /// The API's URL when it serves HTTPS ([`tls_config`]).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.controller.api_addr())
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.controller.wait())
            .await
            .expect("controller stop timed out")
            .expect("controller stopped cleanly");
    }
}

pub async fn connect(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.unwrap()
}

/// Sends a raw discover request on `site`'s subject and returns the raw reply.
pub async fn request_raw(client: &async_nats::Client, site: &str, payload: Vec<u8>) -> Vec<u8> {
    let subject = subjects::discover(&SiteId::new(site).unwrap());
    let msg = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(subject, payload.into()),
    )
    .await
    .expect("discover request timed out")
    .expect("discover request");
    msg.payload.to_vec()
}

/// The test signing key of `site` (derived from its name, so every test agrees).
pub fn site_key(site: &str) -> SiteKey {
    use sha2::Digest as _;
    SiteKey::from_raw(sha2::Sha256::digest(format!("test site key {site}")).into()).unwrap()
}

/// What `site`'s edge would issue for a boot of `mac`: a credential signed by
/// [`site_key`], valid for two hours from now.
pub fn credential(site: &str, mac: Mac) -> BootCredential {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    BootCredential::issue(
        &site_key(site),
        &SiteId::new(site).unwrap(),
        mac,
        now,
        substruct_wire::credential::DEFAULT_LIFETIME_SECS,
        rand::random(),
    )
    .unwrap()
}

/// Registers [`site_key`] as `site`'s key in KV `sites`, as `substruct sites add SITE
/// --key` does, keeping the rest of an existing registration.
pub async fn register_site_key(client: &async_nats::Client, site: &str) {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(subjects::KV_SITES).await.unwrap();
    let mut record = match kv.get(site).await.unwrap() {
        Some(bytes) => serde_json::from_slice::<SiteRecord>(&bytes).unwrap(),
        None => SiteRecord {
            name: SiteId::new(site).unwrap(),
            description: None,
            local_boot: Default::default(),
            added_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            key: None,
            allow_unauthenticated: false,
            power_off_after_discovery: false,
        },
    };
    let key = site_key(site).public_key();
    if record.key.as_ref() != Some(&key) {
        record.key = Some(key);
        kv.put(site, serde_json::to_vec(&record).unwrap().into())
            .await
            .unwrap();
    }
}

/// Sends a discover request the way a machine booted through `site`'s edge does: with
/// a credential for the report's first MAC (the site's key registered first).
/// Ok(reply) or Err(error reply).
pub async fn discover(
    client: &async_nats::Client,
    site: &str,
    report: HardwareReport,
) -> Result<DiscoverReply, ErrorReply> {
    register_site_key(client, site).await;
    let credential = report.macs().first().map(|m| credential(site, *m));
    discover_with(client, site, report, credential).await
}

/// Sends a discover request carrying `credential` (or none); Ok(reply) or Err(error reply).
pub async fn discover_with(
    client: &async_nats::Client,
    site: &str,
    report: HardwareReport,
    credential: Option<BootCredential>,
) -> Result<DiscoverReply, ErrorReply> {
    let request = DiscoverRequest {
        site: SiteId::new(site).unwrap(),
        boot_token: credential,
        report,
    };
    let bytes = request_raw(client, site, substruct_wire::encode(&request).unwrap()).await;
    decode_reply(&bytes)
}

pub fn decode_reply(bytes: &[u8]) -> Result<DiscoverReply, ErrorReply> {
    match substruct_wire::decode::<DiscoverReply>(bytes) {
        Ok(r) => Ok(r),
        Err(_) => Err(substruct_wire::decode::<ErrorReply>(bytes).expect("reply decodes")),
    }
}

/// Messages in the EVENTS stream.
pub async fn event_count(client: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(subjects::STREAM_EVENTS).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Runs a test's async body on a runtime whose threads have 16 MiB stacks: the
/// provisioning flows' futures outgrow the default 2 MiB in debug builds.
pub fn run_on_big_stack<F>(body: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()> + 'static,
{
    std::thread::Builder::new()
        .name("big-stack-test".into())
        .stack_size(16 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_stack_size(16 << 20)
                .enable_all()
                .build()
                .unwrap()
                .block_on(body())
        })
        .unwrap()
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// Every `power` event of a machine in `EVENTS`.
pub async fn power_events(
    client: &async_nats::Client,
    id: &substruct_wire::MachineId,
) -> Vec<serde_json::Value> {
    machine_events(client, id)
        .await
        .into_iter()
        .filter(|v| v["kind"]["type"] == "power")
        .collect()
}

/// Every event of a machine in `EVENTS`, oldest first.
pub async fn machine_events(
    client: &async_nats::Client,
    id: &substruct_wire::MachineId,
) -> Vec<serde_json::Value> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(subjects::STREAM_EVENTS).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: subjects::machine_event(id),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    let mut out = Vec::new();
    if pending == 0 {
        return out;
    }
    let mut batch = consumer
        .fetch()
        .max_messages(pending)
        .messages()
        .await
        .unwrap();
    while let Some(Ok(msg)) = futures::StreamExt::next(&mut batch).await {
        out.push(serde_json::from_slice(&msg.payload).unwrap());
        if out.len() == pending {
            break;
        }
    }
    out
}

/// A machine's `transition` events as `from-event->to`, oldest first.
pub async fn transitions(
    client: &async_nats::Client,
    id: &substruct_wire::MachineId,
) -> Vec<String> {
    machine_events(client, id)
        .await
        .into_iter()
        .filter(|v| v["kind"]["type"] == "transition")
        .map(|v| {
            format!(
                "{}-{}->{}",
                v["kind"]["from"].as_str().unwrap_or_default(),
                v["kind"]["event"].as_str().unwrap_or_default(),
                v["kind"]["to"].as_str().unwrap_or_default()
            )
        })
        .collect()
}
