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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

/// One registered image, as stored (JSON) in KV bucket `images` under its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image's path under the edge's `/images/` (an [`ImageName`]).
    pub name: String,
    pub kind: ImageKind,
    /// Lowercase hex SHA-256 of the whole file (a [`Sha256Digest`]).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Unix time in milliseconds when it was registered.
    pub added_unix_ms: u64,
}

impl ImageRecord {
    /// Checks the name and the checksum.
    pub fn validate(&self) -> Result<(), ImageError> {
        validate_image_name(&self.name)?;
        validate_sha256(&self.sha256)?;
        Ok(())
    }
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

    #[test]
    fn image_names() {
        for good in [
            "marker.img",
            "debian-12/linux",
            "debian-12/initrd.gz",
            "a",
            "Rocky_9.4/vmlinuz",
            "x..y",
            "a+b~c_1.raw",
        ] {
            validate_image_name(good).unwrap();
        }
        for (bad, why) in [
            ("", "is empty"),
            ("/etc/passwd", "starts with '/'"),
            ("../secret", "\"..\" path segment"),
            ("a/../../b", "\"..\" path segment"),
            ("a/./b", "\".\" path segment"),
            ("a//b", "empty path segment"),
            ("a/", "empty path segment"),
            ("a b", "contains ' '"),
            ("a\\b", "contains '\\\\'"),
            ("é", "contains 'é'"),
        ] {
            let err = validate_image_name(bad).unwrap_err().to_string();
            assert!(err.starts_with("image name "), "{err}");
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        validate_image_name(&"a".repeat(255)).unwrap();
        assert!(validate_image_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn sha256_digests() {
        let good = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        validate_sha256(good).unwrap();
        let err = validate_sha256(&good.to_uppercase()).unwrap_err();
        assert!(err.to_string().contains("is not lowercase hex"), "{err}");
        let err = validate_sha256(&good[1..]).unwrap_err();
        assert!(err.to_string().starts_with("image sha256 "), "{err}");
        assert!(validate_sha256(&format!("{}g", &good[1..])).is_err());
        let record = ImageRecord {
            name: "../x".into(),
            kind: ImageKind::Disk,
            sha256: good.into(),
            size: 1,
            added_unix_ms: 0,
        };
        assert!(matches!(record.validate(), Err(ImageError::Name { .. })));
    }
}
