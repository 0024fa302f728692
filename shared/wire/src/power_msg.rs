//! Power control messages between the controller and a site's edge.
//!
//! * [`PowerRequest`] — controller → edge, request/reply on
//!   [`crate::subjects::power`] (the edges of a site share a queue group): act on one
//!   machine's BMC or read its state, optionally setting a one-time boot device;
//! * [`PowerResult`] — the edge's answer: the state after, or the error. The same
//!   result is also sent as a request on [`crate::subjects::power_result`] until a
//!   controller acknowledges it ([`PowerAck`]), so a result whose reply was lost to a
//!   WAN cut still arrives (the controller applies it once, by [`PowerRequestId`]);
//! * [`BmcSettings`] — how the edge reaches one machine's BMC: the value of KV
//!   [`crate::subjects::KV_BMC`] at `{site}.{machine}`, readable only by that site and
//!   the controller. Its `Debug` never shows the password.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::envelope::{MessageKind, WireMessage};
use crate::ids::{Mac, MachineId, PowerRequestId, SiteId};
use crate::power::{BmcDriverKind, BootDevice, PowerAction, PowerState};

/// Longest `by` (who asked) and error text a message carries; longer text is cut.
pub const MAX_TEXT: usize = 512;

/// Cuts `text` to at most [`MAX_TEXT`] bytes on a character boundary.
pub fn bounded_text(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// What a [`PowerRequest`] asks. New variants go at the end (postcard encodes the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerOp {
    /// Read the power state only.
    Status,
    /// Act (the edge applies the safe policy: power on only from a confirmed off, never
    /// cycle an unknown state).
    Act(PowerAction),
}

impl fmt::Display for PowerOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status => f.write_str("status"),
            Self::Act(a) => write!(f, "{a}"),
        }
    }
}

/// Controller → edge on `substruct.v1.{site}.power`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerRequest {
    pub site: SiteId,
    pub request_id: PowerRequestId,
    pub machine_id: MachineId,
    /// The machine's MACs (for the edge's log and for BMCs found by MAC later).
    pub macs: Vec<Mac>,
    pub op: PowerOp,
    /// Set this one-time boot device before acting.
    pub next_boot: Option<BootDevice>,
    /// Who asked, for the audit log (at most [`MAX_TEXT`] bytes).
    pub by: String,
}

impl WireMessage for PowerRequest {
    const KIND: MessageKind = MessageKind::PowerRequest;
}

/// Edge → controller: the outcome of one [`PowerRequest`], or a state change the edge's
/// status poll saw (then `op` is [`PowerOp::Status`] and the id is the edge's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerResult {
    pub site: SiteId,
    pub request_id: PowerRequestId,
    pub machine_id: MachineId,
    pub op: PowerOp,
    /// The power state after the operation (`Unknown` when the BMC did not say).
    pub state: PowerState,
    /// Why the operation failed, after the edge's bounded retries; `None` on success.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// The Redfish certificate pin (sha256 of the BMC's certificate, hex) learned on
    /// this first use, for the controller to store; `None` when nothing new was learned.
    pub cert_pin: Option<String>,
    /// Who asked (copied from the request).
    pub by: String,
    /// Unix time in milliseconds at the edge when the operation ended.
    pub at_unix_ms: u64,
}

impl WireMessage for PowerResult {
    const KIND: MessageKind = MessageKind::PowerResult;
}

/// Controller → edge: the [`PowerResult`] sent on `…power.result` is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerAck {
    pub request_id: PowerRequestId,
}

impl WireMessage for PowerAck {
    const KIND: MessageKind = MessageKind::PowerAck;
}

/// How to reach one machine's BMC (KV `bmc`, `{site}.{machine}`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcSettings {
    pub machine_id: MachineId,
    pub driver: BmcDriverKind,
    /// `host` or `host:port` (IPMI: UDP 623 by default; Redfish: HTTPS 443), or a
    /// Redfish base URL.
    pub address: String,
    pub user: String,
    /// Never shown by `Debug`, never logged.
    pub password: String,
    /// Redfish: sha256 of the BMC's certificate, pinned on first use.
    pub cert_pin: Option<String>,
    /// Redfish: which member of `/redfish/v1/Systems` the machine is, when the BMC
    /// has several (an id or a UUID as the BMC lists them).
    pub system_id: Option<String>,
}

impl WireMessage for BmcSettings {
    const KIND: MessageKind = MessageKind::BmcSettings;
}

impl fmt::Debug for BmcSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BmcSettings")
            .field("machine_id", &self.machine_id)
            .field("driver", &self.driver)
            .field("address", &self.address)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("cert_pin", &self.cert_pin)
            .field("system_id", &self.system_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn request() -> PowerRequest {
        PowerRequest {
            site: SiteId::new("s1").unwrap(),
            request_id: PowerRequestId::new("r-1").unwrap(),
            machine_id: MachineId::new("m-1").unwrap(),
            macs: vec![Mac([0x52, 0x54, 0, 0, 0, 1])],
            op: PowerOp::Act(PowerAction::Cycle),
            next_boot: Some(BootDevice::Pxe),
            by: "op".into(),
        }
    }

    /// Pins the encoding of the power messages (a change needs a new wire version).
    #[test]
    fn golden_bytes_power_messages() {
        let req = request();
        let bytes = encode(&req).unwrap();
        assert_eq!(hex(&bytes), GOLDEN_REQUEST);
        assert_eq!(decode::<PowerRequest>(&bytes).unwrap(), req);

        let result = PowerResult {
            site: SiteId::new("s1").unwrap(),
            request_id: PowerRequestId::new("r-1").unwrap(),
            machine_id: MachineId::new("m-1").unwrap(),
            op: PowerOp::Status,
            state: PowerState::Off,
            error: Some("x".into()),
            attempts: 3,
            cert_pin: None,
            by: "op".into(),
            at_unix_ms: 1,
        };
        let bytes = encode(&result).unwrap();
        assert_eq!(hex(&bytes), GOLDEN_RESULT);
        assert_eq!(decode::<PowerResult>(&bytes).unwrap(), result);

        let ack = PowerAck {
            request_id: PowerRequestId::new("r-1").unwrap(),
        };
        assert_eq!(hex(&encode(&ack).unwrap()), GOLDEN_ACK);

        let settings = BmcSettings {
            machine_id: MachineId::new("m-1").unwrap(),
            driver: BmcDriverKind::Redfish,
            address: "a".into(),
            user: "u".into(),
            password: "p".into(),
            cert_pin: None,
            system_id: Some("s".into()),
        };
        let bytes = encode(&settings).unwrap();
        assert_eq!(hex(&bytes), GOLDEN_SETTINGS);
        assert_eq!(decode::<BmcSettings>(&bytes).unwrap(), settings);
    }

    const GOLDEN_REQUEST: &str =
        "5342535401000a0002733103722d31036d2d310152540000000101030100026f70";
    const GOLDEN_RESULT: &str = "5342535401000b0002733103722d31036d2d3100010101780300026f7001";
    const GOLDEN_ACK: &str = "5342535401000d0003722d31";
    const GOLDEN_SETTINGS: &str = "5342535401000c00036d2d310101610175017000010173";

    #[test]
    fn debug_never_shows_the_password() {
        let settings = BmcSettings {
            machine_id: MachineId::new("m-1").unwrap(),
            driver: BmcDriverKind::Ipmi,
            address: "10.0.0.5".into(),
            user: "admin".into(),
            password: "hunter2-secret".into(),
            cert_pin: None,
            system_id: None,
        };
        let text = format!("{settings:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn hostile_forms_do_not_decode() {
        let bytes = encode(&request()).unwrap();
        // A request id with an uppercase letter / a subject wildcard: refused.
        let at = bytes.windows(3).position(|w| w == b"r-1").unwrap();
        for bad in [b"R-1", b"r.>"] {
            let mut b = bytes.clone();
            b[at..at + 3].copy_from_slice(bad);
            assert!(decode::<PowerRequest>(&b).is_err());
        }
        // An unknown op variant.
        let mut b = bytes.clone();
        let op_at = b.len() - 6; // the action of `Act(Cycle)`
        b[op_at] = 9;
        assert!(decode::<PowerRequest>(&b).is_err());
    }

    #[test]
    fn text_is_bounded_on_a_char_boundary() {
        let long = "é".repeat(400);
        let cut = bounded_text(&long);
        assert!(cut.len() <= MAX_TEXT);
        assert!(long.starts_with(&cut));
    }
}
