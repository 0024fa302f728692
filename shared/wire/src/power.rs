//! Power control vocabulary shared by the controller, the edge's BMC drivers and the CLI.
//!
//! These enums travel (postcard encodes the variant index, so new variants go at the
//! end) and are also written as lowercase words in JSON and on the command line
//! (`on`, `off`, `unknown`; `ipmi`, `redfish`; `pxe`, `disk`).

use serde::{Deserialize, Serialize};

/// What a BMC says of the machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
    /// Not asked yet, or the BMC did not answer, or answered something we cannot read.
    Unknown,
}

/// A power operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    /// Power on; only from a confirmed `Off`.
    On,
    /// Hard power off (chassis off / Redfish `ForceOff`).
    Off,
    /// Ask the OS to shut down (ACPI soft off / Redfish `GracefulShutdown`).
    SoftOff,
    /// Off then on: from a confirmed `On` a power cycle, from a confirmed `Off` a plain
    /// power on; never on `Unknown`.
    Cycle,
}

/// A one-time boot device for the next boot only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Pxe,
    Disk,
}

/// Which protocol reaches a BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BmcDriverKind {
    /// IPMI 2.0 over LAN (RMCP+), UDP port 623 by default.
    Ipmi,
    /// DMTF Redfish over HTTPS.
    Redfish,
}

macro_rules! word_enum {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The lowercase word for this value (as in JSON and on the command line).
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    _ => Err(UnknownWord {
                        what: stringify!($ty),
                        found: s.chars().take(64).collect(),
                        expected: &[$($word),+],
                    }),
                }
            }
        }
    };
}

word_enum!(PowerState { On => "on", Off => "off", Unknown => "unknown" });
word_enum!(PowerAction { On => "on", Off => "off", SoftOff => "softoff", Cycle => "cycle" });
word_enum!(BootDevice { Pxe => "pxe", Disk => "disk" });
word_enum!(BmcDriverKind { Ipmi => "ipmi", Redfish => "redfish" });

/// A word that names none of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{found:?} is not a {what}; expected one of {expected:?}")]
pub struct UnknownWord {
    pub what: &'static str,
    pub found: String,
    pub expected: &'static [&'static str],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_words_are_named() {
        for s in [PowerState::On, PowerState::Off, PowerState::Unknown] {
            assert_eq!(s.as_str().parse::<PowerState>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).ok(), Some(format!("\"{s}\"")));
        }
        assert_eq!("softoff".parse::<PowerAction>(), Ok(PowerAction::SoftOff));
        let err = "reboot".parse::<PowerAction>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                r#""reboot" is not a PowerAction; expected one of ["on", "off", "softoff", "cycle"]"#
            )
        );
        assert!("IPMI".parse::<BmcDriverKind>().is_err());
    }
}
