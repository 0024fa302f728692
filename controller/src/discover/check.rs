//! Pure checks of a discover request: envelope, site and limits.

use substruct_wire::messages::{DiscoverRequest, ErrorCode};
use substruct_wire::report::HardwareReport;
use substruct_wire::{subjects, SiteId, WireError};

use crate::config::{Config, Limits};

/// Why a request was refused before anything was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub(super) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Decodes a discover request and checks it against the subject and the
/// configuration: version, kind, site (subject = body, known if sites are
/// configured) and limits. Pure: no I/O.
pub fn check_request(
    subject: &str,
    payload: &[u8],
    config: &Config,
) -> Result<DiscoverRequest, Refusal> {
    let request = substruct_wire::decode::<DiscoverRequest>(payload).map_err(|e| {
        let code = match e {
            WireError::UnsupportedVersion(_) | WireError::NewerKind { .. } => {
                ErrorCode::UnsupportedVersion
            }
            _ => ErrorCode::Malformed,
        };
        Refusal::new(
            code,
            format!("discover request refused: {}", crate::error_chain(&e)),
        )
    })?;
    let Some(subject_site) = subjects::site_of(subject) else {
        return Err(Refusal::new(
            ErrorCode::WrongSite,
            format!("subject {subject:?} names no site"),
        ));
    };
    if subject_site != request.site.as_str() {
        return Err(Refusal::new(
            ErrorCode::WrongSite,
            format!(
                "subject site {subject_site:?} differs from the report's site {:?}",
                request.site.as_str()
            ),
        ));
    }
    if !config.site_is_known(&request.site) {
        let known: Vec<&str> = config.sites.iter().map(SiteId::as_str).collect();
        return Err(Refusal::new(
            ErrorCode::WrongSite,
            format!(
                "site {:?} is not configured on this controller (known: {})",
                request.site.as_str(),
                known.join(", ")
            ),
        ));
    }
    check_limits(&request.report, &config.limits)
        .map_err(|m| Refusal::new(ErrorCode::TooLarge, m))?;
    Ok(request)
}

/// Checks list lengths and string lengths; the error names the field.
pub fn check_limits(report: &HardwareReport, limits: &Limits) -> Result<(), String> {
    let counts = [
        ("disks", report.disks.len(), limits.max_disks),
        ("nics", report.nics.len(), limits.max_nics),
        ("pci", report.pci.len(), limits.max_pci),
        ("memory.dimms", report.memory.dimms.len(), limits.max_dimms),
        ("cpu.flags", report.cpu.flags.len(), limits.max_cpu_flags),
        (
            "bmc.lan",
            report.bmc.as_ref().map_or(0, |b| b.lan.len()),
            MAX_BMC_CHANNELS,
        ),
    ];
    for (field, n, max) in counts {
        if n > max {
            return Err(format!(
                "report has {n} entries in {field}, more than the limit of {max}"
            ));
        }
    }
    let max = limits.max_string_len;
    let check = |field: &dyn Fn() -> String, value: Option<&str>| match value {
        Some(v) if v.len() > max => Err(format!(
            "report field {} is {} bytes, more than the limit of {max}",
            field(),
            v.len()
        )),
        _ => Ok(()),
    };
    let d = &report.dmi;
    check(
        &|| "prospector_version".into(),
        Some(&report.prospector_version),
    )?;
    for (name, value) in [
        ("sys_vendor", &d.sys_vendor),
        ("product_name", &d.product_name),
        ("product_version", &d.product_version),
        ("product_serial", &d.product_serial),
        ("product_uuid", &d.product_uuid),
        ("product_sku", &d.product_sku),
        ("product_family", &d.product_family),
        ("board_vendor", &d.board_vendor),
        ("board_name", &d.board_name),
        ("board_serial", &d.board_serial),
        ("chassis_serial", &d.chassis_serial),
        ("chassis_asset_tag", &d.chassis_asset_tag),
        ("bios_vendor", &d.bios_vendor),
        ("bios_version", &d.bios_version),
        ("bios_date", &d.bios_date),
    ] {
        check(&|| format!("dmi.{name}"), value.as_deref())?;
    }
    let c = &report.cpu;
    check(&|| "cpu.model".into(), c.model.as_deref())?;
    check(&|| "cpu.virtualization".into(), c.virtualization.as_deref())?;
    check(&|| "cpu.microcode".into(), c.microcode.as_deref())?;
    for (i, f) in c.flags.iter().enumerate() {
        check(&|| format!("cpu.flags[{i}]"), Some(f))?;
    }
    for (i, m) in report.memory.dimms.iter().enumerate() {
        check(&|| format!("memory.dimms[{i}].slot"), m.slot.as_deref())?;
        check(&|| format!("memory.dimms[{i}].kind"), m.kind.as_deref())?;
        check(&|| format!("memory.dimms[{i}].serial"), m.serial.as_deref())?;
    }
    for (i, k) in report.disks.iter().enumerate() {
        check(&|| format!("disks[{i}].name"), Some(&k.name))?;
        check(&|| format!("disks[{i}].model"), k.model.as_deref())?;
        check(&|| format!("disks[{i}].serial"), k.serial.as_deref())?;
        check(&|| format!("disks[{i}].wwn"), k.wwn.as_deref())?;
    }
    for (i, n) in report.nics.iter().enumerate() {
        check(&|| format!("nics[{i}].name"), Some(&n.name))?;
        check(&|| format!("nics[{i}].driver"), n.driver.as_deref())?;
        check(
            &|| format!("nics[{i}].pci_address"),
            n.pci_address.as_deref(),
        )?;
    }
    for (i, p) in report.pci.iter().enumerate() {
        check(&|| format!("pci[{i}].address"), Some(&p.address))?;
    }
    if let Some(b) = &report.bmc {
        check(&|| "bmc.ipmi_version".into(), b.ipmi_version.as_deref())?;
        check(&|| "bmc.firmware".into(), b.firmware.as_deref())?;
        for (i, lan) in b.lan.iter().enumerate() {
            check(
                &|| format!("bmc.lan[{i}].ip_source"),
                lan.ip_source.as_deref(),
            )?;
        }
    }
    Ok(())
}

/// An IPMI BMC has at most 11 LAN channels (1–11); a report naming more is not a BMC's.
const MAX_BMC_CHANNELS: usize = 11;

#[cfg(test)]
mod tests {
    use substruct_wire::report::{Disk, Nic};
    use substruct_wire::Mac;

    use super::*;

    fn request(site: &str, report: HardwareReport) -> Vec<u8> {
        substruct_wire::encode(&DiscoverRequest {
            site: SiteId::new(site).unwrap(),
            boot_token: None,
            report,
        })
        .unwrap()
    }

    #[test]
    fn limits_name_the_field() {
        let limits = Limits {
            max_nics: 1,
            max_string_len: 8,
            ..Limits::default()
        };
        let mut report = HardwareReport::default();
        assert_eq!(check_limits(&report, &limits), Ok(()));
        report.disks = vec![Disk {
            name: "nvme0n1".into(),
            serial: Some("S".repeat(9)),
            ..Disk::default()
        }];
        assert_eq!(
            check_limits(&report, &limits).unwrap_err(),
            "report field disks[0].serial is 9 bytes, more than the limit of 8"
        );
        report.disks.clear();
        let nic = Nic {
            name: "eth0".into(),
            mac: Mac([2, 0, 0, 0, 0, 1]),
            driver: None,
            pci_address: None,
            speed_mbps: None,
            carrier: None,
        };
        report.nics = vec![nic.clone(), nic];
        assert_eq!(
            check_limits(&report, &limits).unwrap_err(),
            "report has 2 entries in nics, more than the limit of 1"
        );
        report.nics.clear();
        report.bmc = Some(substruct_wire::report::Bmc {
            lan: vec![Default::default(); 12],
            ..Default::default()
        });
        assert_eq!(
            check_limits(&report, &limits).unwrap_err(),
            "report has 12 entries in bmc.lan, more than the limit of 11"
        );
        report.bmc = Some(substruct_wire::report::Bmc {
            firmware: Some("1".repeat(9)),
            ..Default::default()
        });
        assert_eq!(
            check_limits(&report, &limits).unwrap_err(),
            "report field bmc.firmware is 9 bytes, more than the limit of 8"
        );
    }

    #[test]
    fn requests_are_checked_against_subject_and_sites() {
        let mut config = Config {
            sites: vec![SiteId::new("dc1").unwrap()],
            ..Config::default()
        };
        let ok = request("dc1", HardwareReport::default());
        assert!(check_request("substruct.v1.dc1.discover", &ok, &config).is_ok());
        let e = check_request("substruct.v1.dc2.discover", &ok, &config).unwrap_err();
        assert_eq!(e.code, ErrorCode::WrongSite);
        let other = request("dc2", HardwareReport::default());
        let e = check_request("substruct.v1.dc2.discover", &other, &config).unwrap_err();
        assert_eq!(e.code, ErrorCode::WrongSite);
        assert!(e.message.contains("known: dc1"), "{}", e.message);
        config.sites.clear();
        assert!(check_request("substruct.v1.dc2.discover", &other, &config).is_ok());
        let e = check_request("substruct.v1.dc1.discover", b"SBST", &config).unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("shorter than"), "{}", e.message);
    }
}
