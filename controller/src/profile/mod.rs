//! Profiles: how to install a machine. Operators write them as TOML; the store keeps
//! them as JSON in KV bucket `profiles`. Pure code: validation, rendering of the
//! install files (kickstart, preseed, autoinstall) with minijinja, the boot intent and
//! the image-deploy instruction. No I/O, no clock; image records come in through a
//! lookup function.
//!
//! Templates see (strict: an undefined name is an error naming its line):
//! * `machine` — `id`, `serial`, `uuid`, `vendor`, `product`, `mac` (first NIC's,
//!   `aa:bb:…`), `macs`, `cpus` (logical), `cpu_model`, `memory_bytes`,
//!   `disks` (`[{name, size_bytes, serial, model}]`), `first_disk` (the first
//!   non-removable disk's name), `site`. Unknown facts are empty strings; control
//!   characters in facts (which come from the machine) are replaced by `?`, so a
//!   forged report cannot inject lines into an install file;
//! * `hostname` — `params.hostname_pattern` rendered, made a valid host name;
//! * `params` — the profile's params (unset optional ones are undefined: use
//!   `| default(…)` or `is defined`);
//! * `token`, `install_url` (`{edge}/install/{token}/`), `callback_url`
//!   (`{edge}/api/v1/machines/{token}/done`) and `edge` (the literal `{edge}`,
//!   which the edge replaces with its base URL when it serves the file).
//!
//! Rendering: `trim_blocks` and `lstrip_blocks` are on (block tags leave no blank
//! lines), the trailing newline is kept, nothing is HTML-escaped.
//!
//! The parts: this module (the profile, its checks, its boot intent and deploy
//! instruction), `render` (the install files and the host name: the template
//! context and minijinja), `sample` (the machine every profile must render for).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use substruct_wire::intent::BootIntent;
use substruct_wire::messages::DeployImage;
use substruct_wire::{BootToken, ImageName, ResourceName};

use crate::images::{validate_image_name, ImageKind, ImageRecord};

mod budget;
mod render;
mod sample;

pub use render::sanitize_hostname;
pub use sample::sample_machine;
use sample::sample_token;

/// The largest template accepted (256 KiB).
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// The longest profile name.
pub const MAX_NAME: usize = ResourceName::MAX_LEN;
/// The default `params.hostname_pattern`.
pub const DEFAULT_HOSTNAME_PATTERN: &str = "{{ machine.id }}";
/// Template fuel (minijinja instructions) per render: stops runaway loops.
const FUEL: u64 = 5_000_000;
const MAX_CMDLINE: usize = 2048;
const MAX_DESCRIPTION: usize = 1024;
const MAX_LINE_PARAM: usize = 4096;
const MAX_POST_INSTALL: usize = 64 * 1024;
/// The content type of every rendered install file.
pub const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// How a profile installs a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Anaconda (RHEL, Rocky, Alma, Fedora): renders `ks.cfg`.
    Kickstart,
    /// Debian installer: renders `preseed.cfg`.
    Preseed,
    /// Ubuntu Subiquity: renders `user-data` and `meta-data` (NoCloud).
    Autoinstall,
    /// The prospector streams a registered disk image onto a disk; with a template,
    /// then gives it a cloud-init NoCloud seed (`user-data`, `meta-data`).
    Image,
}

impl Method {
    /// `kickstart`, `preseed`, `autoinstall` or `image`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kickstart => "kickstart",
            Self::Preseed => "preseed",
            Self::Autoinstall => "autoinstall",
            Self::Image => "image",
        }
    }

    /// Whether the method boots an installer (everything but `image`).
    pub fn is_installer(self) -> bool {
        self != Self::Image
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Values for the template (`params.*`). All optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// A template for the host name; default [`DEFAULT_HOSTNAME_PATTERN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname_pattern: Option<String>,
    /// A crypt(3) hash (`$6$…`), never a clear password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password_hash: Option<String>,
    /// Public keys for root's `authorized_keys`, one per entry.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Free text the template uses to choose a partitioning (`atomic`, `lvm`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_layout: Option<String>,
    /// Extra packages to install.
    #[serde(default)]
    pub packages: Vec<String>,
    /// A shell script for the end of the install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_install: Option<String>,
    /// Any other values, for the template (`params.vars.ntp_server`; always defined,
    /// so `params.vars.x | default("y")` works).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// A profile. See the module docs for the template context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `[a-z0-9-]{1,63}`; the profile's key in KV `profiles`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub method: Method,
    /// Installer kernel: a registered image of kind `kernel` (installer methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Installer initrd: a registered image of kind `initrd` (installer methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Disk image: a registered image of kind `disk` (method `image` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The disk to write the image to (`vda`, `nvme0n1`); default: the first
    /// non-removable disk (method `image` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_disk: Option<String>,
    /// Extra kernel arguments, after the method's own (installer methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The install file's minijinja template. Method `image`: optional, the deployed
    /// system's cloud-init `user-data` (the controller adds `meta-data` with the
    /// instance id and host name; the prospector writes both to a `CIDATA` partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default)]
    pub params: Params,
}

/// Why a profile was refused or could not be rendered. Each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The TOML did not parse or has unknown, missing or mistyped fields.
    #[error("profile TOML{}: {message}", at_line(*.line))]
    Toml {
        line: Option<usize>,
        message: String,
    },
    /// A field has a value that is not allowed.
    #[error("profile field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
    /// A field names an image that is not registered or is of the wrong kind.
    #[error("profile field `{field}`: image {name:?} {reason}")]
    Image {
        field: &'static str,
        name: String,
        reason: String,
    },
    /// A template (`template` or `params.hostname_pattern`) did not compile or render.
    #[error("{which}{}: {message}", at_line(*.line))]
    Template {
        which: &'static str,
        line: Option<usize>,
        message: String,
    },
    /// The rendered template does not contain the callback URL.
    #[error("the template never calls back: add {{{{ callback_url }}}} to its last step")]
    NoCallback,
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

fn field(field: &'static str, reason: impl Into<String>) -> ProfileError {
    ProfileError::Field {
        field,
        reason: reason.into(),
    }
}

/// `{edge}/install/{token}/{file}`: where the edge serves a rendered install file.
pub fn install_url(token: &BootToken, file: &str) -> String {
    format!("{{edge}}/install/{token}/{file}")
}

/// `{edge}/api/v1/machines/{token}/done`: the install's final callback (the edge
/// replaces `{edge}` with its base URL and forwards the call to the controller).
pub fn callback_url(token: &BootToken) -> String {
    format!("{{edge}}/api/v1/machines/{token}/done")
}

impl Profile {
    /// Parses an operator's TOML. Unknown fields are refused; the error names the field
    /// and the line. Does not [`validate`](Profile::validate).
    pub fn from_toml(text: &str) -> Result<Profile, ProfileError> {
        toml::from_str(text).map_err(|e| ProfileError::Toml {
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().trim().to_owned(),
        })
    }

    /// Checks fields, that images exist with the right kind (`image` looks one up by
    /// name), and that the template renders against [`sample_machine`]; a template
    /// error names the line ("template line 12: undefined value \`machin\`"). Refuses a
    /// template whose output never contains the callback URL.
    pub fn validate(
        &self,
        image: &dyn Fn(&str) -> Option<ImageRecord>,
    ) -> Result<(), ProfileError> {
        validate_name(&self.name)?;
        if let Some(d) = &self.description {
            check_text("description", d, MAX_DESCRIPTION, false)?;
        }
        let installer = self.method.is_installer();
        let method = self.method;
        let need = |name: &'static str, value: &Option<String>, wanted: bool| match (
            value.is_some(),
            wanted,
        ) {
            (false, true) => Err(field(name, format!("is required for method {method}"))),
            (true, false) => Err(field(name, format!("is not used by method {method}"))),
            _ => Ok(()),
        };
        need("kernel", &self.kernel, installer)?;
        need("initrd", &self.initrd, installer)?;
        // Method image: optional, the deployed system's cloud-init user-data.
        if installer {
            need("template", &self.template, true)?;
        }
        need("image", &self.image, !installer)?;
        if self.cmdline.is_some() && !installer {
            return Err(field(
                "cmdline",
                "is not used by method image (the prospector boots)",
            ));
        }
        if self.target_disk.is_some() && installer {
            return Err(field(
                "target_disk",
                format!("is not used by method {method}; choose the disk in the template"),
            ));
        }
        for (name, value, kind) in [
            ("kernel", &self.kernel, ImageKind::Kernel),
            ("initrd", &self.initrd, ImageKind::Initrd),
            ("image", &self.image, ImageKind::Disk),
        ] {
            if let Some(value) = value {
                check_image(name, value, kind, image)?;
            }
        }
        if let Some(disk) = &self.target_disk {
            let ok = !disk.is_empty()
                && disk.len() <= 32
                && disk
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !ok {
                return Err(field(
                    "target_disk",
                    format!("{disk:?} is not a kernel disk name like `vda`, `sda` or `nvme0n1`"),
                ));
            }
        }
        if let Some(cmdline) = &self.cmdline {
            check_text("cmdline", cmdline, MAX_CMDLINE, false)?;
        }
        if let Some(template) = &self.template {
            if template.len() > MAX_TEMPLATE_BYTES {
                return Err(field(
                    "template",
                    format!(
                        "is {} bytes; the limit is {MAX_TEMPLATE_BYTES}",
                        template.len()
                    ),
                ));
            }
        }
        self.params.validate()?;
        let token = sample_token();
        let files = self.render_files(&sample_machine(), &token)?;
        if installer {
            let callback = callback_url(&token);
            if !files.iter().any(|f| f.body.contains(&callback)) {
                return Err(ProfileError::NoCallback);
            }
        }
        Ok(())
    }

    /// The boot intent while the machine is assigned or installing. Installer methods
    /// boot the profile's kernel and initrd with the method's arguments (pointing at
    /// the rendered file through the edge), then `cmdline`. Method `image` (and a
    /// profile without kernel or initrd, which [`validate`](Profile::validate)
    /// refuses, as it refuses an invalid image name) boots the prospector:
    /// [`BootIntent::Discover`].
    pub fn boot_intent(&self, token: &BootToken) -> BootIntent {
        let image = |name: &Option<String>| name.as_deref().and_then(|n| ImageName::parse(n).ok());
        let (Some(kernel), Some(initrd)) = (image(&self.kernel), image(&self.initrd)) else {
            return BootIntent::Discover;
        };
        let mut cmdline = match self.method {
            Method::Image => return BootIntent::Discover,
            Method::Kickstart => format!(
                "inst.ks={} inst.text console=ttyS0",
                install_url(token, "ks.cfg")
            ),
            Method::Preseed => format!(
                "auto=true priority=critical interface=auto preseed/url={} console=ttyS0",
                install_url(token, "preseed.cfg")
            ),
            Method::Autoinstall => format!(
                "autoinstall ds=nocloud-net;s={} console=ttyS0",
                install_url(token, "")
            ),
        };
        if let Some(extra) = self.cmdline.as_deref().map(str::trim) {
            if !extra.is_empty() {
                cmdline.push(' ');
                cmdline.push_str(extra);
            }
        }
        BootIntent::Install {
            kernel,
            initrd,
            cmdline,
        }
    }

    /// Method `image` only: what the prospector must do. `None` for installer methods
    /// or when `image` is not this profile's image.
    pub fn deploy_instruction(
        &self,
        image: &ImageRecord,
        token: &BootToken,
    ) -> Option<DeployImage> {
        if self.method != Method::Image || self.image.as_deref() != Some(image.name.as_str()) {
            return None;
        }
        Some(DeployImage {
            path: image.name.clone(),
            sha256: image.sha256.clone(),
            size: image.size,
            disk: self.target_disk.clone(),
            token: token.clone(),
        })
    }
}

impl Params {
    fn validate(&self) -> Result<(), ProfileError> {
        if let Some(p) = &self.hostname_pattern {
            check_text("params.hostname_pattern", p, MAX_LINE_PARAM, false)?;
        }
        if let Some(h) = &self.root_password_hash {
            check_text("params.root_password_hash", h, MAX_LINE_PARAM, false)?;
            if h.chars().any(char::is_whitespace) || !h.starts_with('$') {
                return Err(field(
                    "params.root_password_hash",
                    "is not a crypt(3) hash like `$6$salt$…` (never a clear password)",
                ));
            }
        }
        for key in &self.ssh_keys {
            check_text("params.ssh_keys", key, MAX_LINE_PARAM, false)?;
            if key.trim().is_empty() {
                return Err(field("params.ssh_keys", "has an empty key"));
            }
        }
        if let Some(d) = &self.disk_layout {
            check_text("params.disk_layout", d, MAX_LINE_PARAM, false)?;
        }
        for p in &self.packages {
            let ok = !p.is_empty()
                && p.len() <= 128
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-:@*".contains(c));
            if !ok {
                return Err(field(
                    "params.packages",
                    format!("{p:?} is not a package name"),
                ));
            }
        }
        if let Some(s) = &self.post_install {
            check_text("params.post_install", s, MAX_POST_INSTALL, true)?;
        }
        for (key, value) in &self.vars {
            let ok = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.len() <= 64
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(field(
                    "params.vars",
                    format!("key {key:?} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
            check_text("params.vars", value, MAX_POST_INSTALL, true)?;
        }
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<(), ProfileError> {
    ResourceName::new(name)
        .map(drop)
        .map_err(|e| field("name", e.to_string()))
}

fn check_text(
    name: &'static str,
    value: &str,
    max: usize,
    multiline: bool,
) -> Result<(), ProfileError> {
    if value.len() > max {
        return Err(field(name, format!("is longer than {max} bytes")));
    }
    let bad = value
        .chars()
        .find(|&c| c.is_control() && !(multiline && (c == '\n' || c == '\t' || c == '\r')));
    match bad {
        Some(c) => Err(field(name, format!("contains the control character {c:?}"))),
        None => Ok(()),
    }
}

fn check_image(
    name: &'static str,
    value: &str,
    kind: ImageKind,
    lookup: &dyn Fn(&str) -> Option<ImageRecord>,
) -> Result<(), ProfileError> {
    let image_error = |reason: String| ProfileError::Image {
        field: name,
        name: value.to_owned(),
        reason,
    };
    validate_image_name(value).map_err(|e| image_error(format!("is not valid: {e}")))?;
    match lookup(value) {
        None => Err(image_error("is not registered".into())),
        Some(record) if record.kind != kind => Err(image_error(format!(
            "is of kind {}, not {kind}",
            record.kind
        ))),
        Some(_) => Ok(()),
    }
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_sanitized() {
        for (raw, want) in [
            ("node-01", "node-01"),
            ("Node_01.example.com", "node-01-example-com"),
            ("  --x--  ", "x"),
            ("a  b", "a-b"),
            ("ÄÖ", "machine-id"),
            ("", "machine-id"),
        ] {
            assert_eq!(sanitize_hostname(raw, "machine-id"), want, "{raw:?}");
        }
        assert_eq!(sanitize_hostname(&"ab".repeat(40), "x").len(), 63);
        assert_eq!(
            sanitize_hostname(&format!("{}-x", "a".repeat(62)), "x"),
            "a".repeat(62)
        );
        assert_eq!(sanitize_hostname("", ""), "machine");
    }

    #[test]
    fn json_round_trip_and_method_names() {
        let p = Profile::from_toml(
            "name = \"m\"\nmethod = \"image\"\nimage = \"marker.img\"\n[params]\nssh_keys = [\"k\"]\n",
        )
        .unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"name":"m","method":"image","image":"marker.img","params":{"ssh_keys":["k"],"packages":[],"vars":{}}}"#
        );
        assert_eq!(serde_json::from_str::<Profile>(&json).unwrap(), p);
        for m in [
            Method::Kickstart,
            Method::Preseed,
            Method::Autoinstall,
            Method::Image,
        ] {
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
    }
}
