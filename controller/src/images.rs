//! Registered images (pure types): installer kernels and initrds, disk images and
//! boot loaders, named by their path under the edge's `/images/` directory.
//!
//! No I/O: the store keeps [`ImageRecord`]s in KV bucket `images`; this module only
//! says what a valid one looks like.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use substruct_wire::{
    DigestError, DigestProblem, ImageName, ImageNameError, ImageNameProblem, Sha256Digest,
};

/// The longest image name accepted ([`ImageName::MAX_LEN`]).
pub const MAX_IMAGE_NAME: usize = ImageName::MAX_LEN;

/// What an image is for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// An installer kernel (`vmlinuz`, `linux`).
    Kernel,
    /// An installer initrd.
    Initrd,
    /// A whole-disk image the prospector streams onto a disk.
    Disk,
    /// A boot loader (`ipxe.efi`, `lpxelinux.0`, …).
    Loader,
}

impl ImageKind {
    /// Every kind, in display order.
    pub const ALL: [ImageKind; 4] = [Self::Kernel, Self::Initrd, Self::Disk, Self::Loader];

    /// `kernel`, `initrd`, `disk` or `loader`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Initrd => "initrd",
            Self::Disk => "disk",
            Self::Loader => "loader",
        }
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageKind {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ImageError::Kind {
                value: s.to_owned(),
            })
    }
}

/// One registered image, as stored (JSON) in KV bucket `images` under its name. The
/// name and the digest are the wire types, checked when a record is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageRecord {
    /// The image's path under the edge's `/images/`.
    pub name: ImageName,
    pub kind: ImageKind,
    /// SHA-256 of the whole file.
    pub sha256: Sha256Digest,
    /// Size in bytes.
    pub size: u64,
    /// Unix time in milliseconds when it was registered.
    pub added_unix_ms: u64,
}

/// Why an image name, kind or checksum was refused. Each message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image name {name:?}: {reason}")]
    Name {
        name: String,
        reason: ImageNameProblem,
    },
    #[error("image kind {value:?} is not one of kernel, initrd, disk, loader")]
    Kind { value: String },
    #[error("image sha256 {value:?}: {reason}")]
    Sha256 {
        value: String,
        reason: DigestProblem,
    },
}

impl From<ImageNameError> for ImageError {
    fn from(e: ImageNameError) -> Self {
        Self::Name {
            name: e.name,
            reason: e.reason,
        }
    }
}

impl From<DigestError> for ImageError {
    fn from(e: DigestError) -> Self {
        Self::Sha256 {
            value: e.value,
            reason: e.reason,
        }
    }
}

/// Checks an image name by the one rule, [`ImageName`]: 1 to 255 characters, path
/// segments of `[A-Za-z0-9._~+-]`, no leading `/`, no empty, `.` or `..` segment. The
/// name is also the image's path under the edge's `/images/` directory, so this is what
/// keeps it inside that directory.
pub fn validate_image_name(name: &str) -> Result<ImageName, ImageError> {
    Ok(ImageName::new(name)?)
}

/// Checks a SHA-256 digest by the one rule, [`Sha256Digest`]: exactly 64 lowercase hex
/// digits.
pub fn validate_sha256(value: &str) -> Result<Sha256Digest, ImageError> {
    Ok(Sha256Digest::new(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        for kind in ImageKind::ALL {
            assert_eq!(kind.to_string().parse::<ImageKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        let err = "Kernel".parse::<ImageKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "image kind \"Kernel\" is not one of kernel, initrd, disk, loader"
        );
    }

    /// The rule itself is [`ImageName`]'s (tested in the wire crate); this checks the
    /// controller's wrapping of its errors.
    #[test]
    fn image_name_errors_name_the_field() {
        assert_eq!(
            validate_image_name("debian-12/linux").unwrap(),
            "debian-12/linux"
        );
        let err = validate_image_name("a/../../b").unwrap_err();
        assert!(matches!(err, ImageError::Name { .. }));
        assert!(
            err.to_string().starts_with("image name \"a/../../b\": "),
            "{err}"
        );
    }

    #[test]
    fn sha256_errors_name_the_field() {
        let good = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(validate_sha256(good).unwrap(), good);
        let err = validate_sha256(&good.to_uppercase()).unwrap_err();
        assert!(matches!(err, ImageError::Sha256 { .. }));
        assert!(err.to_string().starts_with("image sha256 "), "{err}");
    }

    #[test]
    fn a_stored_record_with_a_bad_name_does_not_decode() {
        let good = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let json = |name: &str| {
            format!(
                r#"{{"name":"{name}","kind":"disk","sha256":"{good}","size":1,"added_unix_ms":0}}"#
            )
        };
        let record: ImageRecord = serde_json::from_str(&json("x.img")).unwrap();
        assert_eq!(serde_json::to_string(&record).unwrap(), json("x.img"));
        assert!(serde_json::from_str::<ImageRecord>(&json("../x")).is_err());
    }
}
