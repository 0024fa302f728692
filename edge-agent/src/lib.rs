//! The Substruct edge agent: one per site. Serves DHCP, TFTP and HTTP on the
//! provisioning network and answers every machine by its boot intent.

pub mod agent;
pub mod config;
pub mod dhcp;
pub mod dhcp6;
pub mod efi_cacerts;
pub mod http;
pub mod image_cache;
pub mod install;
pub mod intents;
pub mod kv_mirror;
pub mod metrics;
pub mod power;
pub mod ra;
pub mod site_key;
pub mod tftp;
