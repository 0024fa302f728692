//! Rendering: the install files and the host name of one machine, from the profile's
//! templates (minijinja, strict, with fuel) and the machine's facts (cleaned of control
//! characters).

use minijinja::value::Value;
use minijinja::ErrorKind;
use serde::Serialize;
use substruct_wire::intent::InstallFile;
use substruct_wire::report::DiskTransport;
use substruct_wire::BootToken;

use super::{
    budget, callback_url, field, install_url, Method, Params, Profile, ProfileError, CONTENT_TYPE,
    DEFAULT_HOSTNAME_PATTERN, FUEL, MAX_TEMPLATE_BYTES,
};
use crate::record::MachineRecord;

impl Profile {
    /// The install files for one machine: kickstart → `ks.cfg`; preseed →
    /// `preseed.cfg`; autoinstall → `user-data` and `meta-data`
    /// (`instance-id: {id}\nlocal-hostname: {hostname}\n`); image → none.
    pub fn render_files(
        &self,
        machine: &MachineRecord,
        token: &BootToken,
    ) -> Result<Vec<InstallFile>, ProfileError> {
        let name = match self.method {
            // An image profile's template is optional: the deployed system's cloud-init
            // `user-data`, which the prospector writes to a `CIDATA` partition.
            Method::Image if self.template.is_none() => return Ok(Vec::new()),
            Method::Image => "user-data",
            Method::Kickstart => "ks.cfg",
            Method::Preseed => "preseed.cfg",
            Method::Autoinstall => "user-data",
        };
        let template = self.template.as_deref().ok_or_else(|| {
            field(
                "template",
                format!("is required for method {}", self.method),
            )
        })?;
        if template.len() > MAX_TEMPLATE_BYTES {
            return Err(field(
                "template",
                format!("is longer than {MAX_TEMPLATE_BYTES} bytes"),
            ));
        }
        let facts = MachineContext::new(machine);
        let hostname = self.hostname(&facts)?;
        let context = Context {
            machine: &facts,
            hostname: &hostname,
            params: &self.params,
            token: token.as_str(),
            install_url: install_url(token, ""),
            callback_url: callback_url(token),
            edge: "{edge}",
        };
        let body = render("template", template, &context)?;
        let mut files = vec![file(name, body)];
        if matches!(self.method, Method::Autoinstall | Method::Image) {
            files.push(file(
                "meta-data",
                format!("instance-id: {}\nlocal-hostname: {hostname}\n", machine.id),
            ));
        }
        Ok(files)
    }

    /// The host name for `machine`: `params.hostname_pattern` rendered and made valid.
    pub fn hostname_for(&self, machine: &MachineRecord) -> Result<String, ProfileError> {
        self.hostname(&MachineContext::new(machine))
    }

    fn hostname(&self, facts: &MachineContext) -> Result<String, ProfileError> {
        let pattern = self
            .params
            .hostname_pattern
            .as_deref()
            .unwrap_or(DEFAULT_HOSTNAME_PATTERN);
        let context = HostnameContext {
            machine: facts,
            params: &self.params,
        };
        let raw = render("params.hostname_pattern", pattern, &context)?;
        Ok(sanitize_hostname(&raw, &facts.id))
    }
}

fn file(name: &str, body: String) -> InstallFile {
    InstallFile {
        name: name.to_owned(),
        content_type: CONTENT_TYPE.to_owned(),
        body,
    }
}

#[derive(Serialize)]
struct Context<'a> {
    machine: &'a MachineContext,
    hostname: &'a str,
    params: &'a Params,
    token: &'a str,
    install_url: String,
    callback_url: String,
    edge: &'static str,
}

#[derive(Serialize)]
struct HostnameContext<'a> {
    machine: &'a MachineContext,
    params: &'a Params,
}

/// What templates see as `machine`.
#[derive(Debug, Serialize)]
struct MachineContext {
    id: String,
    serial: String,
    uuid: String,
    vendor: String,
    product: String,
    mac: String,
    macs: Vec<String>,
    cpus: u32,
    cpu_model: String,
    memory_bytes: u64,
    disks: Vec<DiskContext>,
    first_disk: String,
    site: String,
}

#[derive(Debug, Serialize)]
struct DiskContext {
    name: String,
    size_bytes: u64,
    serial: String,
    model: String,
}

impl MachineContext {
    fn new(m: &MachineRecord) -> Self {
        let f = &m.facts;
        let text = |v: Option<&str>| clean(v.unwrap_or_default().trim());
        let first_disk = f
            .disks
            .iter()
            .find(|d| !d.removable && d.transport != DiskTransport::Usb)
            .or_else(|| f.disks.iter().find(|d| !d.removable))
            .map(|d| clean(&d.name))
            .unwrap_or_default();
        Self {
            id: m.id.to_string(),
            serial: text(f.usable_serial()),
            uuid: text(f.usable_uuid()),
            vendor: text(f.dmi.sys_vendor.as_deref()),
            product: text(f.dmi.product_name.as_deref()),
            mac: f
                .nics
                .first()
                .map(|n| n.mac.to_string())
                .unwrap_or_default(),
            macs: f.nics.iter().map(|n| n.mac.to_string()).collect(),
            cpus: f.cpu.threads,
            cpu_model: text(f.cpu.model.as_deref()),
            memory_bytes: f.memory.total_bytes,
            disks: f
                .disks
                .iter()
                .map(|d| DiskContext {
                    name: clean(&d.name),
                    size_bytes: d.size_bytes,
                    serial: text(d.serial.as_deref()),
                    model: text(d.model.as_deref()),
                })
                .collect(),
            first_disk,
            site: m.site.to_string(),
        }
    }
}

/// Facts come from the machine: no control character reaches an install file.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A valid host name (RFC 1123 label, lowercase, at most 63 characters) from `raw`:
/// other characters become `-`, runs of `-` collapse, ends are trimmed. Falls back to
/// `fallback` (the machine id) when nothing is left.
pub fn sanitize_hostname(raw: &str, fallback: &str) -> String {
    fn label(raw: &str) -> String {
        let mut out = String::new();
        for c in raw.trim().chars().flat_map(char::to_lowercase) {
            let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            };
            if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
                out.push(c);
            }
        }
        out.truncate(63);
        out.trim_end_matches('-').to_owned()
    }
    let name = label(raw);
    if name.is_empty() {
        let fallback = label(fallback);
        if fallback.is_empty() {
            "machine".to_owned()
        } else {
            fallback
        }
    } else {
        name
    }
}

fn render<S: Serialize>(
    which: &'static str,
    source: &str,
    context: &S,
) -> Result<String, ProfileError> {
    budget::render(which, source, Value::from_serialize(context), FUEL)
        .map_err(|e| template_error(which, source, &e))
}

fn template_error(which: &'static str, source: &str, failure: &budget::Failure) -> ProfileError {
    let err = &failure.error;
    let expr = failure
        .range()
        .and_then(|r| source.get(r))
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.contains('\n'));
    let message = match (err.kind(), expr, err.detail()) {
        (ErrorKind::UndefinedError, Some(expr), _) => format!("undefined value `{expr}`"),
        (kind, Some(expr), Some(detail)) => format!("{kind}: {detail} (in `{expr}`)"),
        (kind, None, Some(detail)) => format!("{kind}: {detail}"),
        (kind, Some(expr), None) => format!("{kind} (in `{expr}`)"),
        (kind, None, None) => kind.to_string(),
    };
    ProfileError::Template {
        which,
        line: failure.line(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::sample_machine;

    #[test]
    fn sample_machine_context() {
        let ctx = MachineContext::new(&sample_machine());
        assert_eq!(ctx.first_disk, "nvme0n1");
        assert_eq!(ctx.mac, "b4:96:91:c2:10:a0");
        assert_eq!(ctx.serial, "7XK2J93");
        assert_eq!(ctx.cpus, 128);
        assert_eq!(ctx.disks.len(), 4);
    }

    #[test]
    fn repetition_is_bounded_by_the_budget() {
        // Found by tests/fuzz (template_render): a render that spun for hours.
        let hang = "\u{1}t{{-[] * 30702000600001}}";
        let err = render("t", hang, &()).unwrap_err();
        assert!(
            matches!(err, ProfileError::Template { line: Some(1), ref message, .. } if message.contains("empty list")),
            "{err:?}"
        );
        let err = render("t", "a\nb\n{% set x = 'a' * 99999999999 %}", &()).unwrap_err();
        assert!(
            matches!(err, ProfileError::Template { line: Some(3), .. }),
            "{err:?}"
        );
        let ok = "*.cfg {{ '*' }} {# x * y #} {{ 'ab' * 3 }} {{ 6 * 7 }} {{ [0] * 2 }}";
        assert_eq!(render("t", ok, &()).unwrap(), "*.cfg *  ababab 42 [0, 0]");
    }

    #[test]
    fn indent_width_is_bounded() {
        // Found by tests/fuzz (template_render): minijinja's own `indent` tried to
        // allocate 7020006000700806 spaces and the allocator aborted the process.
        let crash = "{{-0~-000702000600070080>09 | trim | indent(0007020006000700806) }}";
        assert!(render("t", crash, &()).is_err());
        assert!(render("t", "{{ 'a' | indent(width=99999999999) }}", &()).is_err());
        let ok = render(
            "t",
            "{{ 'a\nb' | indent(2) }}|{{ 'c\nd' | indent(width=1, first=true) }}",
            &(),
        );
        assert_eq!(ok.unwrap(), "a\n  b| c\n d");
    }
}
