//! Identifier newtypes. Each validates on construction (and on deserialization), so a
//! value of these types can be put into a NATS subject or KV key without escaping.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} {value:?} is longer than {max} characters")]
    TooLong {
        kind: &'static str,
        value: String,
        max: usize,
    },
    #[error("{kind} {value:?} contains {bad:?}; allowed are a-z, 0-9 and '-' (not first)")]
    BadChar {
        kind: &'static str,
        value: String,
        bad: char,
    },
    #[error("MAC address {0:?} is not six hex bytes separated by ':' or '-'")]
    BadMac(String),
    #[error("{kind} {value:?} is reserved: it is a fixed token of the subject space ({PREFIX}.{value}.…)", PREFIX = crate::subjects::PREFIX)]
    Reserved { kind: &'static str, value: String },
}

/// Names no site may have: every fixed token that follows `substruct.v1.` in a subject
/// (`substruct.v1.events.{id}` is the audit log, [`crate::subjects::machine_event`]); a
/// site of that name would publish into, or be confused with, that subject family.
/// Keep in step with the subject builders in [`crate::subjects`].
pub const RESERVED_SITE_NAMES: &[&str] = &["events"];

fn check_token(kind: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            kind,
            value: value.to_owned(),
            max,
        });
    }
    for (i, c) in value.chars().enumerate() {
        let ok = c.is_ascii_lowercase() || c.is_ascii_digit() || (c == '-' && i > 0);
        if !ok {
            return Err(IdError::BadChar {
                kind,
                value: value.to_owned(),
                bad: c,
            });
        }
    }
    Ok(())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        token_id!($(#[$doc])* $name, $kind, $max, &[]);
    };
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $reserved:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_token($kind, &value, $max)?;
                let reserved: &[&str] = $reserved;
                if reserved.contains(&value.as_str()) {
                    return Err(IdError::Reserved { kind: $kind, value });
                }
                Ok(Self(value))
            }
            /// The identifier as a string slice, safe inside a subject or KV key.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_id!(
    /// A machine's id: derived once from its facts (SMBIOS UUID, else serial, else
    /// lowest MAC) and kept. Lowercase letters, digits and '-', at most 64 characters.
    MachineId,
    "machine id",
    64
);
token_id!(
    /// A site's name. Lowercase letters, digits and '-', at most 32 characters, not
    /// one of [`RESERVED_SITE_NAMES`].
    SiteId,
    "site name",
    32,
    RESERVED_SITE_NAMES
);
token_id!(
    /// A one-time, per-boot token. Lowercase hex or letters/digits, at most 64 characters.
    BootToken,
    "boot token",
    64
);
token_id!(
    /// One power request (`PowerRequest`), chosen by whoever orders it and echoed in its
    /// result, so a result delivered twice is applied once. Lowercase letters, digits and
    /// '-', at most 64 characters.
    PowerRequestId,
    "power request id",
    64
);

/// An Ethernet MAC address. Displays as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, example = "52:54:00:12:34:56")
)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The twelve lowercase hex digits with no separator, used in KV keys.
    pub fn to_key(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
    /// Parses `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` or `aabbccddeeff`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::BadMac(s.to_owned());
        let bytes = s.as_bytes();
        let hex: Vec<u8> = match bytes.len() {
            12 => bytes.to_vec(),
            17 => {
                let sep = bytes[2];
                if sep != b':' && sep != b'-' {
                    return Err(bad());
                }
                let mut hex = Vec::with_capacity(12);
                for (i, b) in bytes.iter().enumerate() {
                    if i % 3 == 2 {
                        if *b != sep {
                            return Err(bad());
                        }
                    } else {
                        hex.push(*b);
                    }
                }
                hex
            }
            _ => return Err(bad()),
        };
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&hex[i * 2..i * 2 + 2]).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
    /// All-zero or broadcast addresses are not a machine's identity.
    pub fn is_usable(&self) -> bool {
        self.0 != [0; 6] && self.0 != [0xff; 6] && self.0[0] & 1 == 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

impl FromStr for Mac {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Mac::parse(&s).map_err(serde::de::Error::custom)
        } else {
            Ok(Mac(<[u8; 6]>::deserialize(d)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate() {
        assert!(SiteId::new("dc1-rack4").is_ok());
        assert_eq!(
            SiteId::new("DC1").unwrap_err().to_string(),
            "site name \"DC1\" contains 'D'; allowed are a-z, 0-9 and '-' (not first)"
        );
        assert!(matches!(SiteId::new(""), Err(IdError::Empty { .. })));
        assert!(matches!(SiteId::new("-a"), Err(IdError::BadChar { .. })));
        assert!(matches!(SiteId::new("a.b"), Err(IdError::BadChar { .. })));
        assert!(matches!(
            SiteId::new("a".repeat(33)),
            Err(IdError::TooLong { .. })
        ));
        assert!(MachineId::new("4c4c4544-0042-3510-8051-c4c04f4b4c32").is_ok());
    }

    #[test]
    fn reserved_site_names_are_refused() {
        let e = SiteId::new("events").unwrap_err();
        assert!(matches!(e, IdError::Reserved { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "site name \"events\" is reserved: it is a fixed token of the subject space (substruct.v1.events.…)"
        );
        assert!(serde_json::from_str::<SiteId>("\"events\"").is_err());
        assert!(SiteId::new("events-1").is_ok());
        // Machine ids and tokens are not site names.
        assert!(MachineId::new("events").is_ok());
        // Every fixed token after the prefix is reserved: the audit log's subjects.
        let audit = crate::subjects::machine_events_all();
        let token = crate::subjects::site_of(&audit).unwrap();
        assert!(RESERVED_SITE_NAMES.contains(&token), "{token}");
    }

    #[test]
    fn mac_parses_and_prints() {
        let m = Mac::parse("52:54:00:AB:cd:0f").unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!(m.to_key(), "525400abcd0f");
        assert_eq!(Mac::parse("52-54-00-ab-cd-0f").unwrap(), m);
        assert_eq!(Mac::parse("525400abcd0f").unwrap(), m);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "52:54:00:ab:cd:0f:00",
            "5:254:00:ab:cd:0f0",
            "+2:54:00:ab:cd:0f",
        ] {
            assert!(Mac::parse(bad).is_err(), "{bad}");
        }
        assert!(!Mac([0; 6]).is_usable());
        assert!(!Mac([1, 0, 0x5e, 0, 0, 1]).is_usable());
        assert!(m.is_usable());
    }

    #[test]
    fn json_forms() {
        let m = Mac::parse("52:54:00:ab:cd:0f").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"52:54:00:ab:cd:0f\"");
        let back: Mac = serde_json::from_str("\"52:54:00:ab:cd:0f\"").unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<SiteId>("\"Bad Site\"").is_err());
    }
}
