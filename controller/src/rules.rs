//! Rules: which profile a newly discovered machine gets, decided from its facts. Pure
//! code: operators write rules as TOML, the store keeps them as JSON in KV `rules`.
//!
//! ```toml
//! name = "qemu-marker"
//! priority = 100            # lower runs first; ties by name
//! profile = "marker-image"
//! [match]
//! vendor = "QEMU"           # glob (`*`, `?`), case-insensitive
//! min_memory = "2GiB"
//! ```
//!
//! Every criterion set must hold. Disk criteria count the non-removable disks that
//! pass `min_disk_size` and `disk_transport` (so `min_disks = 2` with
//! `disk_transport = "nvme"` means two NVMe disks); NIC criteria need one NIC that
//! passes `nic_driver`, `min_nic_speed_mbps` and `mac_prefix` together. A fact the
//! machine did not report never matches. A rule whose match is empty takes every
//! machine and must say so with `match_all = true`.

use serde::{Deserialize, Serialize};
use substruct_wire::report::{DiskTransport, Nic};
use substruct_wire::{MachineId, ResourceName};

use crate::lifecycle::State;
use crate::record::MachineRecord;

const MAX_PATTERN: usize = 256;

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `[a-z0-9-]{1,63}`; the rule's key in KV `rules`.
    pub name: String,
    /// Lower runs first; ties are broken by name.
    #[serde(default)]
    pub priority: i32,
    /// The profile a matching machine is assigned.
    pub profile: String,
    /// A disabled rule takes no machine.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Must be `true` when `match` is empty (the rule takes every machine), and only then.
    #[serde(default)]
    pub match_all: bool,
    /// The criteria, all of which must hold.
    #[serde(rename = "match", default)]
    pub matches: Match,
}

fn yes() -> bool {
    true
}

/// The criteria of a rule; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Glob on the SMBIOS system vendor (`Dell*`, `QEMU`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Glob on the SMBIOS product name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// Glob on the system, chassis or board serial (any of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Glob on the CPU model string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// Least total memory: `8GiB`, `512MiB`, `16GB`, or bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory: Option<String>,
    /// Least number of logical CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cpus: Option<u32>,
    /// Least number of non-removable disks (that pass the other disk criteria).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disks: Option<u32>,
    /// Least size of a counted disk, like `min_memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disk_size: Option<String>,
    /// Transport of a counted disk: nvme, sata, sas, scsi, virtio, usb, mmc, unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_transport: Option<String>,
    /// Glob on a NIC's driver (`ice`, `mlx5*`, `virtio*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_driver: Option<String>,
    /// Least link speed of a NIC, in Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_nic_speed_mbps: Option<u32>,
    /// Leading hex digits of a NIC's MAC (`52:54:00`, `b4-96-91`, `b49691`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_prefix: Option<String>,
}

impl Match {
    /// Whether no criterion is set.
    pub fn is_empty(&self) -> bool {
        self == &Match::default()
    }
}

/// Why a rule was refused. Each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The TOML did not parse or has unknown, missing or mistyped fields.
    #[error("rule TOML{}: {message}", .line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Toml {
        line: Option<usize>,
        message: String,
    },
    /// A field has a value that is not allowed.
    #[error("rule field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl Into<String>) -> RuleError {
    RuleError::Field {
        field,
        reason: reason.into(),
    }
}

impl Rule {
    /// Parses an operator's TOML (unknown fields are refused, naming the field and the
    /// line). Does not [`validate`](Rule::validate).
    pub fn from_toml(text: &str) -> Result<Rule, RuleError> {
        toml::from_str(text).map_err(|e| RuleError::Toml {
            line: e.span().map(|s| {
                let end = s.start.min(text.len());
                text.as_bytes()[..end]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1
            }),
            message: e.message().trim().to_owned(),
        })
    }

    /// Checks names, patterns, sizes, the transport, the MAC prefix, and that an empty
    /// match comes with `match_all = true` (and a non-empty one without it).
    pub fn validate(&self) -> Result<(), RuleError> {
        check_name("name", &self.name)?;
        check_name("profile", &self.profile)?;
        let m = &self.matches;
        match (m.is_empty(), self.match_all) {
            (true, false) => {
                return Err(field(
                    "match",
                    "is empty, so the rule would take every machine; set `match_all = true` if that is meant",
                ))
            }
            (false, true) => {
                return Err(field(
                    "match_all",
                    "is true but the rule also has `match` criteria; remove one or the other",
                ))
            }
            _ => {}
        }
        for (name, pattern) in [
            ("match.vendor", &m.vendor),
            ("match.product", &m.product),
            ("match.serial", &m.serial),
            ("match.cpu_model", &m.cpu_model),
            ("match.nic_driver", &m.nic_driver),
        ] {
            if let Some(p) = pattern {
                if p.is_empty() || p.len() > MAX_PATTERN || p.chars().any(char::is_control) {
                    return Err(field(
                        name,
                        format!(
                            "{p:?} is not a pattern of 1 to {MAX_PATTERN} printable characters"
                        ),
                    ));
                }
            }
        }
        for (name, size) in [
            ("match.min_memory", &m.min_memory),
            ("match.min_disk_size", &m.min_disk_size),
        ] {
            if let Some(s) = size {
                parse_size(s).map_err(|reason| field(name, reason))?;
            }
        }
        if let Some(t) = &m.disk_transport {
            parse_transport(t).map_err(|reason| field("match.disk_transport", reason))?;
        }
        if let Some(p) = &m.mac_prefix {
            parse_mac_prefix(p).map_err(|reason| field("match.mac_prefix", reason))?;
        }
        Ok(())
    }

    /// Whether every criterion holds for `m` (ignores `enabled`; an empty match
    /// holds only with `match_all`).
    pub fn matches(&self, m: &MachineRecord) -> bool {
        self.explain(m).is_empty()
    }

    /// Why the rule does not match `m`: one line per failing criterion (empty when it
    /// matches). Ignores `enabled`.
    pub fn explain(&self, m: &MachineRecord) -> Vec<String> {
        let mut why = Vec::new();
        let c = &self.matches;
        let f = &m.facts;
        if c.is_empty() && !self.match_all {
            why.push("the match is empty and `match_all` is not set".to_owned());
        }
        let mut glob_fact = |name: &str, pattern: &Option<String>, facts: &[Option<&str>]| {
            let Some(pattern) = pattern else { return };
            let present: Vec<&str> = facts.iter().flatten().map(|s| s.trim()).collect();
            if present.is_empty() {
                why.push(format!("{name}: not reported, wanted {pattern:?}"));
            } else if !present.iter().any(|v| glob(pattern, v)) {
                let shown: Vec<String> = present.iter().map(|v| format!("{v:?}")).collect();
                why.push(format!(
                    "{name}: {} does not match {pattern:?}",
                    shown.join(" / ")
                ));
            }
        };
        glob_fact("vendor", &c.vendor, &[f.dmi.sys_vendor.as_deref()]);
        glob_fact("product", &c.product, &[f.dmi.product_name.as_deref()]);
        glob_fact(
            "serial",
            &c.serial,
            &[
                f.dmi.product_serial.as_deref(),
                f.dmi.chassis_serial.as_deref(),
                f.dmi.board_serial.as_deref(),
            ],
        );
        glob_fact("cpu_model", &c.cpu_model, &[f.cpu.model.as_deref()]);
        if let Some(min) = &c.min_memory {
            match parse_size(min) {
                Err(e) => why.push(format!("min_memory: {e}")),
                Ok(min) if f.memory.total_bytes < min => why.push(format!(
                    "min_memory: {} bytes is less than {min}",
                    f.memory.total_bytes
                )),
                Ok(_) => {}
            }
        }
        if let Some(min) = c.min_cpus {
            if f.cpu.threads < min {
                why.push(format!("min_cpus: {} is fewer than {min}", f.cpu.threads));
            }
        }
        self.explain_disks(m, &mut why);
        self.explain_nics(&f.nics, &mut why);
        why
    }

    fn explain_disks(&self, m: &MachineRecord, why: &mut Vec<String>) {
        let c = &self.matches;
        if c.min_disks.is_none() && c.min_disk_size.is_none() && c.disk_transport.is_none() {
            return;
        }
        let min_size = match c.min_disk_size.as_deref().map(parse_size).transpose() {
            Ok(s) => s.unwrap_or(0),
            Err(e) => return why.push(format!("min_disk_size: {e}")),
        };
        let transport = match c.disk_transport.as_deref().map(parse_transport).transpose() {
            Ok(t) => t,
            Err(e) => return why.push(format!("disk_transport: {e}")),
        };
        let wanted = c.min_disks.unwrap_or(1);
        let counted = m
            .facts
            .disks
            .iter()
            .filter(|d| !d.removable)
            .filter(|d| d.size_bytes >= min_size)
            .filter(|d| transport.is_none_or(|t| d.transport == t))
            .count();
        if counted < wanted as usize {
            let mut what = String::from("non-removable disk(s)");
            if let Some(t) = &c.disk_transport {
                what = format!("{t} {what}");
            }
            if let Some(s) = &c.min_disk_size {
                what = format!("{what} of at least {s}");
            }
            why.push(format!("disks: {counted} {what}, wanted {wanted}"));
        }
    }

    fn explain_nics(&self, nics: &[Nic], why: &mut Vec<String>) {
        let c = &self.matches;
        if c.nic_driver.is_none() && c.min_nic_speed_mbps.is_none() && c.mac_prefix.is_none() {
            return;
        }
        let prefix = match c.mac_prefix.as_deref().map(parse_mac_prefix).transpose() {
            Ok(p) => p,
            Err(e) => return why.push(format!("mac_prefix: {e}")),
        };
        let fits = |n: &Nic| {
            c.nic_driver
                .as_deref()
                .is_none_or(|p| n.driver.as_deref().is_some_and(|d| glob(p, d)))
                && c.min_nic_speed_mbps
                    .is_none_or(|min| n.speed_mbps.is_some_and(|s| s >= min))
                && prefix
                    .as_deref()
                    .is_none_or(|p| n.mac.to_key().starts_with(p))
        };
        if !nics.iter().any(fits) {
            let mut wanted = Vec::new();
            if let Some(d) = &c.nic_driver {
                wanted.push(format!("driver {d:?}"));
            }
            if let Some(s) = c.min_nic_speed_mbps {
                wanted.push(format!("speed >= {s} Mbit/s"));
            }
            if let Some(p) = &c.mac_prefix {
                wanted.push(format!("MAC prefix {p}"));
            }
            let seen: Vec<String> = nics
                .iter()
                .map(|n| {
                    format!(
                        "{} ({}, {}, {})",
                        n.name,
                        n.mac,
                        n.driver.as_deref().unwrap_or("no driver"),
                        n.speed_mbps
                            .map(|s| format!("{s} Mbit/s"))
                            .unwrap_or_else(|| "speed unknown".into())
                    )
                })
                .collect();
            why.push(format!(
                "nics: none with {} among [{}]",
                wanted.join(", "),
                seen.join("; ")
            ));
        }
    }
}

/// The enabled rule that matches `m` and runs first (lowest priority, then name).
pub fn first_match<'a>(rules: &'a [Rule], m: &MachineRecord) -> Option<&'a Rule> {
    rules
        .iter()
        .filter(|r| r.enabled && r.matches(m))
        .min_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)))
}

/// Dry run: the machines `rule` would take now. A machine is taken when it is
/// `discovered` and `rule` is its first match among `rules` with `rule` added (or
/// replacing the rule of the same name). A disabled `rule` takes nothing.
pub fn dry_run(rules: &[Rule], rule: &Rule, machines: &[MachineRecord]) -> Vec<MachineId> {
    let mut all: Vec<Rule> = rules
        .iter()
        .filter(|r| r.name != rule.name)
        .cloned()
        .collect();
    all.push(rule.clone());
    machines
        .iter()
        .filter(|m| matches!(m.state, State::Discovered))
        .filter(|m| first_match(&all, m).is_some_and(|r| r.name == rule.name))
        .map(|m| m.id.clone())
        .collect()
}

fn check_name(name: &'static str, value: &str) -> Result<(), RuleError> {
    ResourceName::new(value)
        .map(drop)
        .map_err(|e| field(name, e.to_string()))
}

/// Case-insensitive glob: `*` is any run of characters, `?` one character.
pub fn glob(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let v: Vec<char> = value.chars().flat_map(char::to_lowercase).collect();
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Parses a size: bytes (`1048576`) or a number with a unit — `K`/`KB`, `M`/`MB`,
/// `G`/`GB`, `T`/`TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of
/// 1024), case-insensitive; a fraction is allowed (`1.5TiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    let bad = || format!("{text:?} is not a size like `8GiB`, `512MiB` or a byte count");
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(bad)?;
    if !frac.is_empty() {
        let digits = u32::try_from(frac.len()).map_err(|_| bad())?;
        if digits > 9 {
            return Err(bad());
        }
        let frac: u64 = frac.parse().map_err(|_| bad())?;
        let scale = 10u64.pow(digits);
        let part = u128::from(frac) * u128::from(multiplier) / u128::from(scale);
        bytes = bytes
            .checked_add(u64::try_from(part).map_err(|_| bad())?)
            .ok_or_else(bad)?;
    }
    Ok(bytes)
}

fn parse_transport(text: &str) -> Result<DiskTransport, String> {
    serde_json::from_value(serde_json::Value::String(text.to_ascii_lowercase())).map_err(|_| {
        format!("{text:?} is not one of nvme, sata, sas, scsi, virtio, usb, mmc, unknown")
    })
}

/// The prefix's hex digits, lowercase, without separators.
fn parse_mac_prefix(text: &str) -> Result<String, String> {
    let digits: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    if digits.is_empty() || digits.len() > 12 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not 1 to 12 hex digits (separators ':', '-' or '.' allowed)"
        ));
    }
    Ok(digits.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, v) in [
            ("QEMU", "qemu"),
            ("*", ""),
            ("*", "anything"),
            ("Dell*", "Dell Inc."),
            ("*Xeon*Gold*", "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"),
            ("R6?0", "r650"),
            ("a*b*c", "aXbYbZc"),
            ("**x", "x"),
        ] {
            assert!(glob(p, v), "{p} ~ {v}");
        }
        for (p, v) in [
            ("QEMU", "QEMU2"),
            ("Dell", "Dell Inc."),
            ("R6?0", "R60"),
            ("a*b*c", "aXbYbZ"),
            ("?", ""),
        ] {
            assert!(!glob(p, v), "{p} !~ {v}");
        }
    }

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("0", 0),
            ("1048576", 1 << 20),
            ("512MiB", 512 << 20),
            ("8GiB", 8 << 30),
            ("8gib", 8 << 30),
            ("8 GiB", 8 << 30),
            ("16GB", 16_000_000_000),
            ("1.5TiB", 3 << 39),
            ("2T", 2_000_000_000_000),
            ("100B", 100),
            ("4K", 4000),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "GiB",
            "8 GB RAM",
            "1.",
            ".5G",
            "1.2.3G",
            "-1G",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_prefixes_and_transports() {
        assert_eq!(parse_mac_prefix("52:54:00").unwrap(), "525400");
        assert_eq!(parse_mac_prefix("B4-96-91-C2").unwrap(), "b49691c2");
        assert!(parse_mac_prefix("").is_err());
        assert!(parse_mac_prefix("52:54:00:00:00:00:00").is_err());
        assert_eq!(parse_transport("NVMe"), Ok(DiskTransport::Nvme));
        assert!(parse_transport("floppy").is_err());
    }

    #[test]
    fn json_round_trip() {
        let rule = Rule::from_toml(
            "name = \"r\"\nprofile = \"p\"\n[match]\nvendor = \"QEMU\"\nmin_cpus = 2\n",
        )
        .unwrap();
        let json = serde_json::to_string(&rule).unwrap();
        assert_eq!(
            json,
            r#"{"name":"r","priority":0,"profile":"p","enabled":true,"match_all":false,"match":{"vendor":"QEMU","min_cpus":2}}"#
        );
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), rule);
    }
}
