//! Validated names and digests: [`ImageName`], [`Sha256Digest`], [`ResourceName`].
//!
//! Like the ids in [`crate::ids`], each type checks its value on construction and on
//! deserialization, so a value of these types is safe wherever it goes next (a file
//! path, a URL path, an iPXE line, a KV key). They serialize as plain strings: JSON
//! and postcard bytes are the same as for the `String`s they replace.
//!
//! These are the one rule per concept; the controller, the edge and the prospector
//! all call them instead of keeping their own checks.

use serde::{Deserialize, Serialize};

/// Implements the string plumbing every validated name shares: `as_str`, `Display`,
/// `FromStr`, `TryFrom<String>`/`<&str>`, `From<Self> for String`, `AsRef<str>` and
/// comparisons with `str`. The type must have `fn new(String) -> Result<Self, $err>`.
macro_rules! string_newtype {
    ($name:ident, $err:ty) => {
        impl $name {
            /// Validates a string slice (same as [`Self::new`]).
            pub fn parse(value: &str) -> Result<Self, $err> {
                Self::new(value)
            }
            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The value as an owned `String`.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, $err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = $err;
            fn try_from(s: String) -> Result<Self, $err> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = $err;
            fn try_from(s: &str) -> Result<Self, $err> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}
pub(crate) use string_newtype;

// ---------------------------------------------------------------------------------
// Image names

/// Why an image name was refused. Displays as `image name "…": <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image name {name:?}: {reason}")]
pub struct ImageNameError {
    /// The refused name.
    pub name: String,
    /// What is wrong with it.
    pub reason: ImageNameProblem,
}

/// What is wrong with an image name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageNameProblem {
    #[error("is empty")]
    Empty,
    #[error("is longer than {} characters", ImageName::MAX_LEN)]
    TooLong,
    #[error("contains {0:?}; allowed are A-Z, a-z, 0-9, '.', '_', '~', '+', '-' and '/'")]
    BadChar(char),
    #[error("starts with '/'; it is a path relative to the image directory")]
    Absolute,
    #[error("has an empty path segment (\"//\" or a trailing '/')")]
    EmptySegment,
    #[error("has a {0:?} path segment")]
    DotSegment(&'static str),
}

/// A registered image's name, which is also its path under an edge's `/images/`
/// directory and in the URL `http://edge/images/{name}`.
///
/// The rule (the one every part uses): 1 to [`ImageName::MAX_LEN`] (255) bytes; path
/// segments separated by `/`, each made of `A-Z a-z 0-9 . _ ~ + -`; no leading `/`
/// and no empty, `.` or `..` segment. So a name never leaves the image directory, is
/// a valid file path (no segment is longer than `NAME_MAX`), needs no escaping in a
/// URL path (every character is unreserved or `+`) and contains nothing an iPXE or
/// shell line would interpret (no space, quote, `$`, `%`, `?`, `#` or control
/// character).
///
/// It is the union of the rules the controller, the edge (boot scripts) and the
/// prospector (deploy) used before: `+` and `~` (edge, prospector) are allowed, the
/// length is the edge's 255 (the controller used 128, the prospector 1024).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageName(String);

impl ImageName {
    /// The longest name accepted, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Validates and wraps `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, ImageNameError> {
        let value = value.into();
        match image_name_problem(&value) {
            None => Ok(Self(value)),
            Some(reason) => Err(ImageNameError {
                name: value,
                reason,
            }),
        }
    }

    /// The last path segment (`linux` for `debian-12/linux`).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

string_newtype!(ImageName, ImageNameError);

fn image_name_problem(name: &str) -> Option<ImageNameProblem> {
    if name.is_empty() {
        return Some(ImageNameProblem::Empty);
    }
    if name.len() > ImageName::MAX_LEN {
        return Some(ImageNameProblem::TooLong);
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '+' | '-' | '/')))
    {
        return Some(ImageNameProblem::BadChar(bad));
    }
    if name.starts_with('/') {
        return Some(ImageNameProblem::Absolute);
    }
    for segment in name.split('/') {
        match segment {
            "" => return Some(ImageNameProblem::EmptySegment),
            "." => return Some(ImageNameProblem::DotSegment(".")),
            ".." => return Some(ImageNameProblem::DotSegment("..")),
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------------
// SHA-256 digests

/// Why a SHA-256 digest was refused. Displays as `sha256 "…": <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sha256 {value:?}: {reason}")]
pub struct DigestError {
    /// The refused value.
    pub value: String,
    /// What is wrong with it.
    pub reason: DigestProblem,
}

/// What is wrong with a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DigestProblem {
    #[error("is not 64 hex digits long")]
    Length,
    #[error("is not lowercase hex")]
    NotLowercaseHex,
}

/// A SHA-256 digest as exactly 64 lowercase hex digits: the form the controller
/// registers images under, the edge names its cache files by, and the prospector
/// checks a deployed disk against. Safe as a file name and a KV key.
///
/// Uppercase hex is refused, not folded: a digest is compared as a string everywhere.
/// (A caller that takes operator input and wants to be lenient lowercases it first.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(example = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
)]
pub struct Sha256Digest(String);

impl Sha256Digest {
    /// Validates and wraps `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, DigestError> {
        let value = value.into();
        let reason = if value.len() != 64 {
            Some(DigestProblem::Length)
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Some(DigestProblem::NotLowercaseHex)
        } else {
            None
        };
        match reason {
            None => Ok(Self(value)),
            Some(reason) => Err(DigestError { value, reason }),
        }
    }

    /// The digest of 32 raw bytes (e.g. `hasher.finalize().into()`).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(hex::encode(bytes))
    }

    /// Finishes a running hash.
    pub fn finish(hasher: sha2::Sha256) -> Self {
        use sha2::Digest as _;
        Self::from_bytes(hasher.finalize().into())
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Self::from_bytes(sha2::Sha256::digest(data).into())
    }
}

string_newtype!(Sha256Digest, DigestError);

impl From<[u8; 32]> for Sha256Digest {
    fn from(bytes: [u8; 32]) -> Self {
        Self::from_bytes(bytes)
    }
}

// ---------------------------------------------------------------------------------
// Resource names

/// Why a resource name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not 1 to {} characters of a-z, 0-9 and '-'",
    ResourceName::MAX_LEN
)]
pub struct ResourceNameError {
    /// The refused value.
    pub value: String,
}

/// The name of an operator-defined resource — a profile or a rule — which is also its
/// KV key and a URL path segment (`/api/v1/profiles/{name}`).
///
/// The rule: 1 to [`ResourceName::MAX_LEN`] (63) characters of `a-z`, `0-9` and `-`
/// (a `-` may come anywhere). It is the check profiles and rules made before.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceName(String);

impl ResourceName {
    /// The longest name accepted.
    pub const MAX_LEN: usize = 63;

    /// Validates and wraps `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, ResourceNameError> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(value))
        } else {
            Err(ResourceNameError { value })
        }
    }
}

string_newtype!(ResourceName, ResourceNameError);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            "prospector/vmlinuz",
            "prospector/initrd.img",
            "ipxe.efi",
            "lpxelinux.0",
        ] {
            let name = ImageName::new(good).unwrap();
            assert_eq!(name.as_str(), good);
            assert_eq!(name, good);
        }
        for (bad, why) in [
            ("", "is empty"),
            ("/etc/passwd", "starts with '/'"),
            ("../secret", "\"..\" path segment"),
            ("a/../../b", "\"..\" path segment"),
            ("a/./b", "\".\" path segment"),
            (".", "\".\" path segment"),
            ("a//b", "empty path segment"),
            ("a/", "empty path segment"),
            ("a b", "contains ' '"),
            ("a\\b", "contains '\\\\'"),
            ("é", "contains 'é'"),
            ("a%2e", "contains '%'"),
            ("a?b", "contains '?'"),
            ("$x", "contains '$'"),
            ("a\nb", "contains '\\n'"),
        ] {
            let err = ImageName::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("image name "), "{err}");
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        ImageName::new("a".repeat(255)).unwrap();
        let err = ImageName::new("a".repeat(256)).unwrap_err();
        assert_eq!(err.reason, ImageNameProblem::TooLong);
        assert_eq!(
            err.reason.to_string(),
            "is longer than 255 characters",
            "{err}"
        );
        assert_eq!(
            ImageName::new("debian-12/linux").unwrap().file_name(),
            "linux"
        );
        assert_eq!(ImageName::new("x.img").unwrap().file_name(), "x.img");
    }

    #[test]
    fn image_name_serde_is_a_plain_string() {
        let name = ImageName::new("debian-12/linux").unwrap();
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"debian-12/linux\"");
        assert_eq!(serde_json::from_str::<ImageName>(&json).unwrap(), name);
        assert!(serde_json::from_str::<ImageName>("\"../x\"").is_err());
        let bytes = postcard::to_stdvec(&name).unwrap();
        assert_eq!(bytes, postcard::to_stdvec("debian-12/linux").unwrap());
        assert_eq!(postcard::from_bytes::<ImageName>(&bytes).unwrap(), name);
        let bad = postcard::to_stdvec("a//b").unwrap();
        assert!(postcard::from_bytes::<ImageName>(&bad).is_err());
    }

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digests() {
        let d = Sha256Digest::new(EMPTY).unwrap();
        assert_eq!(d.as_str(), EMPTY);
        assert_eq!(Sha256Digest::of(b""), d);
        assert_eq!(Sha256Digest::finish(sha2::Sha256::default()), d);
        let bytes: [u8; 32] = hex::decode(EMPTY).unwrap().try_into().unwrap();
        assert_eq!(Sha256Digest::from(bytes), d);

        let err = Sha256Digest::new(EMPTY.to_uppercase()).unwrap_err();
        assert_eq!(err.reason, DigestProblem::NotLowercaseHex);
        assert!(err.to_string().starts_with("sha256 \"E3B0"), "{err}");
        assert!(err.to_string().ends_with(": is not lowercase hex"), "{err}");
        let err = Sha256Digest::new(&EMPTY[1..]).unwrap_err();
        assert_eq!(err.reason, DigestProblem::Length);
        assert_eq!(err.reason.to_string(), "is not 64 hex digits long");
        assert!(Sha256Digest::new(format!("{}g", &EMPTY[1..])).is_err());
        assert!(Sha256Digest::new("").is_err());
        // 64 bytes, but not 64 ASCII characters.
        assert!(Sha256Digest::new(format!("é{}", &EMPTY[2..])).is_err());

        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Sha256Digest>("\"zz\"").is_err());
        assert_eq!(
            postcard::to_stdvec(&d).unwrap(),
            postcard::to_stdvec(EMPTY).unwrap()
        );
    }

    #[test]
    fn resource_names() {
        for good in ["debian12-preseed", "a", "-x", "x-", "0", &"a".repeat(63)] {
            assert_eq!(ResourceName::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "A", "a_b", "a.b", "a b", "é", &"a".repeat(64)] {
            assert!(ResourceName::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ResourceName::new("Bad").unwrap_err().to_string(),
            "\"Bad\" is not 1 to 63 characters of a-z, 0-9 and '-'"
        );
        let n: ResourceName = serde_json::from_str("\"qemu-marker\"").unwrap();
        assert_eq!(n, "qemu-marker");
        assert!(serde_json::from_str::<ResourceName>("\"Qemu\"").is_err());
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"qemu-marker\"");
        assert_eq!("x".parse::<ResourceName>().unwrap(), "x");
    }

    /// The old checks, kept here to show that the shared rule accepts everything each
    /// accepted within the shared length limit.
    fn old_controller_rule(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
            && !name.starts_with('/')
            && name
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..")
    }

    fn old_edge_rule(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('/')
            && name
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
            && name.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+' | '~')
            })
    }

    proptest! {
        #[test]
        fn image_name_accepts_what_the_old_rules_did(name in "[A-Za-z0-9._~+/ %$-]{0,300}") {
            let new = ImageName::new(name.clone()).is_ok();
            if old_controller_rule(&name) || old_edge_rule(&name) {
                prop_assert!(new, "{name:?}");
            }
            prop_assert_eq!(new, old_edge_rule(&name));
        }

        #[test]
        fn image_names_never_escape(name in "\\PC{0,64}") {
            if let Ok(n) = ImageName::new(name) {
                let path = std::path::Path::new(n.as_str());
                prop_assert!(path.components().all(|c| matches!(c, std::path::Component::Normal(_))));
                prop_assert!(n.as_str().bytes().all(|b| b.is_ascii_graphic()));
            }
        }

        #[test]
        fn image_name_round_trips(name in "[A-Za-z0-9_~+-][A-Za-z0-9._~+-]{0,20}(/[A-Za-z0-9_~+-][A-Za-z0-9._~+-]{0,20}){0,3}") {
            let n = ImageName::new(name.clone()).unwrap();
            let json = serde_json::to_string(&n).unwrap();
            prop_assert_eq!(serde_json::from_str::<ImageName>(&json).unwrap(), n.clone());
            let bytes = postcard::to_stdvec(&n).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_stdvec(&name).unwrap());
            prop_assert_eq!(postcard::from_bytes::<ImageName>(&bytes).unwrap(), n);
        }

        #[test]
        fn digests_from_bytes_validate(bytes in any::<[u8; 32]>()) {
            let d = Sha256Digest::from_bytes(bytes);
            prop_assert_eq!(Sha256Digest::new(d.as_str()).unwrap(), d.clone());
            let json = serde_json::to_string(&d).unwrap();
            prop_assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), d);
        }

        #[test]
        fn digest_rule(s in "[0-9a-gA-F]{60,68}") {
            let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            prop_assert_eq!(Sha256Digest::new(s).is_ok(), ok);
        }

        #[test]
        fn resource_name_rule(s in "[a-zA-Z0-9_. -]{0,70}") {
            let ok = !s.is_empty() && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            let r = ResourceName::new(s.clone());
            prop_assert_eq!(r.is_ok(), ok);
            if let Ok(r) = r {
                let json = serde_json::to_string(&r).unwrap();
                prop_assert_eq!(json, serde_json::to_string(&s).unwrap());
            }
        }
    }
}
