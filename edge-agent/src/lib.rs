//! The Substruct edge agent: one per site. Serves DHCP, TFTP and HTTP on the
//! provisioning network and answers every machine by its boot intent.

pub mod intents;
pub mod tftp;
