//! BMC power drivers: IPMI 2.0 over LAN (RMCP+, [`ipmi`]) and DMTF Redfish
//! ([`redfish`]) behind one interface, [`Bmc`].
//!
//! A driver does one thing at a time (every operation takes `&mut self`), answers
//! within bounded time (`BmcConfig::timeout` per attempt, `BmcConfig::retries` extra
//! attempts) and never panics on what a BMC sends back: every reply is parsed with
//! bounds checks and anything unreadable is a [`BmcError::Protocol`].
//!
//! The raw operations ([`Bmc::power`]) carry no policy; [`Bmc::apply`] adds the one
//! the fleet needs: power on only from a confirmed off, never cycle on an unknown
//! state.
//!
//! ```no_run
//! use substruct_bmc::{Bmc, BmcConfig, BmcDriverKind, PowerAction};
//! # async fn demo() -> Result<(), substruct_bmc::BmcError> {
//! let cfg = BmcConfig::new(BmcDriverKind::Ipmi, "10.0.0.5", "admin", "secret");
//! let mut bmc = Bmc::connect(&cfg).await?;
//! let after = bmc.apply(PowerAction::Cycle).await?;
//! println!("power is now {after}");
//! bmc.close().await;
//! # Ok(())
//! # }
//! ```

pub mod ipmi;
pub mod redfish;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use substruct_wire::power::{BmcDriverKind, BootDevice, PowerAction, PowerState};

pub use ipmi::IpmiClient;
pub use redfish::RedfishClient;

/// A password. `Debug` and `Display` print `<redacted>`, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The password itself, for the protocol code that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// The sha256 of a BMC's DER-encoded TLS certificate (Redfish trust on first use).
///
/// Written as 64 lowercase hex digits; parsing also accepts uppercase and the
/// `:`-separated form `openssl x509 -noout -fingerprint -sha256` prints.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CertPin(pub [u8; 32]);

impl CertPin {
    /// The pin of a DER certificate.
    pub fn of_der(der: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(der).into())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for CertPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for CertPin {
    type Err = BmcError;

    fn from_str(s: &str) -> Result<Self, BmcError> {
        let s = s.trim();
        // `sha256:HEX`, or openssl's `SHA256 Fingerprint=HEX` (any case).
        let s = match s.split_once('=') {
            Some((label, hex)) if label.to_ascii_lowercase().contains("fingerprint") => hex,
            _ => s.strip_prefix("sha256:").unwrap_or(s),
        };
        let digits: String = s.chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits.to_ascii_lowercase(), &mut out).map_err(|_| {
            BmcError::Config(format!(
                "certificate pin {:?} is not a sha256 (64 hex digits, ':' separators allowed)",
                s.chars().take(100).collect::<String>()
            ))
        })?;
        Ok(Self(out))
    }
}

/// How to reach one BMC. `Debug` never shows the password.
#[derive(Clone, Debug)]
pub struct BmcConfig {
    /// IPMI or Redfish.
    pub driver: BmcDriverKind,
    /// `host`, `host:port` or `[v6]:port`; Redfish also accepts `https://host[:port]`.
    /// Default ports: 623/udp (IPMI), 443 (Redfish).
    pub address: String,
    /// The BMC user.
    pub user: String,
    /// Its password.
    pub password: Secret,
    /// Redfish: the expected certificate; `None` trusts the first certificate seen
    /// ([`Bmc::cert_pin_seen`] tells which, for the caller to store).
    pub cert_pin: Option<CertPin>,
    /// Redfish: the member of `/redfish/v1/Systems` to drive when there are several.
    pub system_id: Option<String>,
    /// How long one attempt (one UDP exchange, one HTTP request) may take.
    pub timeout: Duration,
    /// Extra attempts after a timeout (IPMI) or a 503 (Redfish). Bounded.
    pub retries: u32,
    /// IPMI cipher suite: 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) or 17
    /// (RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128).
    pub ipmi_cipher_suite: u8,
}

impl BmcConfig {
    /// A configuration with the defaults: 3 s per attempt, 2 retries, no pin, no
    /// system id, cipher suite 3.
    pub fn new(
        driver: BmcDriverKind,
        address: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        Self {
            driver,
            address: address.into(),
            user: user.into(),
            password: password.into(),
            cert_pin: None,
            system_id: None,
            timeout: Duration::from_secs(3),
            retries: 2,
            ipmi_cipher_suite: 3,
        }
    }
}

/// What went wrong talking to a BMC. Every message names the BMC and says what an
/// operator can check. `Clone` so a caller can keep "the last error".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BmcError {
    /// Nothing answers at the address (refused, no route, name not found).
    #[error("BMC at {address} is unreachable: {detail} (check its address and network)")]
    Unreachable { address: String, detail: String },
    /// No answer after every attempt.
    #[error("BMC at {address} did not answer {what} after {attempts} attempt(s) (check its address, port and that it is powered)")]
    Timeout {
        address: String,
        what: String,
        attempts: u32,
    },
    /// The BMC refused the user or password.
    #[error(
        "BMC at {address} refused the credentials: {detail} (check the BMC user and password)"
    )]
    AuthFailed { address: String, detail: String },
    /// The BMC is busy (Redfish 503, IPMI completion code 0xC0); try later.
    #[error("BMC at {address} is busy: {detail} (it will be retried later)")]
    Busy { address: String, detail: String },
    /// The BMC sent something unreadable or unexpected.
    #[error("BMC at {address} sent an unreadable or unexpected reply: {detail}")]
    Protocol { address: String, detail: String },
    /// The Redfish BMC presented another certificate than the pinned one.
    #[error("BMC at {address} presented certificate sha256 {found}, but {expected} is pinned (if the BMC's certificate was replaced on purpose, set the new pin)")]
    CertMismatch {
        address: String,
        expected: CertPin,
        found: CertPin,
    },
    /// The Redfish Systems collection is empty.
    #[error("BMC at {address} lists no system under /redfish/v1/Systems")]
    NoSystem { address: String },
    /// Several systems and none configured.
    #[error("BMC at {address} has several systems {choices:?}; name one in the BMC settings (system id)")]
    AmbiguousSystem {
        address: String,
        choices: Vec<String>,
    },
    /// The configured system id is not in the Systems collection.
    #[error("BMC at {address} has no system {wanted:?}; it has {choices:?}")]
    SystemNotFound {
        address: String,
        wanted: String,
        choices: Vec<String>,
    },
    /// An IPMI command failed with a completion code.
    #[error("BMC at {address} refused {command}: completion code {completion_code:#04x} ({})", ipmi::completion_code_text(*completion_code))]
    Command {
        address: String,
        command: String,
        completion_code: u8,
    },
    /// A Redfish request failed with an HTTP status.
    #[error("BMC at {address} answered HTTP {status}: {detail}")]
    Http {
        address: String,
        status: u16,
        detail: String,
    },
    /// The BMC does not offer the operation.
    #[error("BMC at {address} does not support {what}")]
    Unsupported { address: String, what: String },
    /// [`Bmc::apply`] refused: the power state is not confirmed.
    #[error("refusing power {action}: the machine's power state is unknown (a power on needs a confirmed off, a cycle a confirmed on or off)")]
    StateUnknown { action: PowerAction },
    /// The configuration itself is wrong.
    #[error("bad BMC settings: {0}")]
    Config(String),
}

impl BmcError {
    /// Whether trying again later may succeed (unreachable, timeout, busy).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Timeout { .. } | Self::Busy { .. }
        )
    }
}

/// The fleet's power policy as a pure function: which raw operation `action` needs
/// from the state `before`, `None` when nothing is to be done, or
/// [`BmcError::StateUnknown`] when the state does not allow it.
///
/// `On`: from `Off` power on, from `On` nothing, from `Unknown` refused. `Cycle`:
/// from `On` a power cycle, from `Off` a plain power on, from `Unknown` refused.
/// `Off`/`SoftOff`: nothing when already `Off`, else the operation (also from
/// `Unknown`: turning a machine off is always safe to ask).
pub fn plan(action: PowerAction, before: PowerState) -> Result<Option<PowerAction>, BmcError> {
    Ok(match (action, before) {
        (PowerAction::On, PowerState::On) => None,
        (PowerAction::On, PowerState::Off) => Some(PowerAction::On),
        (PowerAction::Cycle, PowerState::On) => Some(PowerAction::Cycle),
        (PowerAction::Cycle, PowerState::Off) => Some(PowerAction::On),
        (PowerAction::On | PowerAction::Cycle, PowerState::Unknown) => {
            return Err(BmcError::StateUnknown { action });
        }
        (PowerAction::Off | PowerAction::SoftOff, PowerState::Off) => None,
        (PowerAction::Off | PowerAction::SoftOff, _) => Some(action),
    })
}

/// A connected BMC, whichever its protocol. `Send + Sync`; `Debug` shows no secret.
#[derive(Debug)]
pub enum Bmc {
    /// IPMI 2.0 over LAN.
    Ipmi(IpmiClient),
    /// Redfish over HTTPS.
    Redfish(RedfishClient),
}

impl Bmc {
    /// Connects: IPMI opens an RMCP+ session; Redfish creates a session and picks the
    /// system from `/redfish/v1/Systems` (its only member, or `cfg.system_id`).
    pub async fn connect(cfg: &BmcConfig) -> Result<Self, BmcError> {
        match cfg.driver {
            BmcDriverKind::Ipmi => Ok(Self::Ipmi(IpmiClient::connect(cfg).await?)),
            BmcDriverKind::Redfish => Ok(Self::Redfish(RedfishClient::connect(cfg).await?)),
        }
    }

    /// Which protocol this is.
    pub fn driver(&self) -> BmcDriverKind {
        match self {
            Self::Ipmi(_) => BmcDriverKind::Ipmi,
            Self::Redfish(_) => BmcDriverKind::Redfish,
        }
    }

    /// The machine's power as the BMC reports it.
    pub async fn power_state(&mut self) -> Result<PowerState, BmcError> {
        match self {
            Self::Ipmi(c) => c.power_state().await,
            Self::Redfish(c) => c.power_state().await,
        }
    }

    /// The raw operation, without policy: on, hard off, soft off, cycle.
    pub async fn power(&mut self, action: PowerAction) -> Result<(), BmcError> {
        match self {
            Self::Ipmi(c) => c.power(action).await,
            Self::Redfish(c) => c.power(action).await,
        }
    }

    /// The operation with the fleet's policy, returning the state read afterwards.
    ///
    /// Reads the state first. `On`: from `Off` powers on, from `On` does nothing,
    /// from `Unknown` refuses ([`BmcError::StateUnknown`]). `Cycle`: from `On` a power
    /// cycle, from `Off` a power on, from `Unknown` refuses. `Off`/`SoftOff`: nothing
    /// when already `Off`, else the operation. Then it polls (up to four times the
    /// attempt timeout) for the expected state; a soft off may still read `On`, as the
    /// OS decides when to go down.
    pub async fn apply(&mut self, action: PowerAction) -> Result<PowerState, BmcError> {
        let before = self.power_state().await?;
        let op = plan(action, before)?;
        let Some(op) = op else {
            return Ok(before);
        };
        self.power(op).await?;
        let want = match op {
            PowerAction::On | PowerAction::Cycle => PowerState::On,
            PowerAction::Off => PowerState::Off,
            PowerAction::SoftOff => return self.power_state().await,
        };
        let patience = self.timeout().saturating_mul(4);
        let start = tokio::time::Instant::now();
        loop {
            let now = self.power_state().await?;
            if now == want || start.elapsed() >= patience {
                return Ok(now);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sets the device for the next boot only.
    pub async fn set_next_boot(&mut self, dev: BootDevice) -> Result<(), BmcError> {
        match self {
            Self::Ipmi(c) => c.set_next_boot(dev).await,
            Self::Redfish(c) => c.set_next_boot(dev).await,
        }
    }

    /// The pending one-time boot device, `None` when no override is pending.
    pub async fn next_boot(&mut self) -> Result<Option<BootDevice>, BmcError> {
        match self {
            Self::Ipmi(c) => c.next_boot().await,
            Self::Redfish(c) => c.next_boot().await,
        }
    }

    /// Redfish: the pin of the certificate this connection saw (store it when the
    /// configuration had none). IPMI: `None`.
    pub fn cert_pin_seen(&self) -> Option<CertPin> {
        match self {
            Self::Ipmi(_) => None,
            Self::Redfish(c) => c.cert_pin_seen(),
        }
    }

    /// Ends the session (IPMI Close Session, Redfish session DELETE); best effort.
    pub async fn close(self) {
        match self {
            Self::Ipmi(c) => c.close().await,
            Self::Redfish(c) => c.close().await,
        }
    }

    fn timeout(&self) -> Duration {
        match self {
            Self::Ipmi(c) => c.timeout(),
            Self::Redfish(c) => c.timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let cfg = BmcConfig::new(BmcDriverKind::Ipmi, "h", "u", "hunter2-secret");
        let text = format!("{cfg:?} {}", cfg.password);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn pins_parse_in_the_forms_operators_paste() {
        let pin = CertPin::of_der(b"cert");
        let colons = pin
            .0
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(pin.to_hex().parse::<CertPin>(), Ok(pin));
        assert_eq!(colons.parse::<CertPin>(), Ok(pin));
        assert_eq!(
            format!("SHA256 Fingerprint={colons}").parse::<CertPin>(),
            Ok(pin)
        );
        assert_eq!(
            format!("sha256 Fingerprint={colons}\n").parse::<CertPin>(),
            Ok(pin)
        );
        assert!("abc".parse::<CertPin>().is_err());
        assert!("zz".repeat(32).parse::<CertPin>().is_err());
    }

    #[test]
    fn the_policy_never_powers_on_or_cycles_an_unknown_state() {
        use PowerAction as A;
        use PowerState as S;
        assert_eq!(plan(A::On, S::Off), Ok(Some(A::On)));
        assert_eq!(plan(A::On, S::On), Ok(None));
        assert_eq!(plan(A::Cycle, S::On), Ok(Some(A::Cycle)));
        assert_eq!(plan(A::Cycle, S::Off), Ok(Some(A::On)));
        assert_eq!(plan(A::Off, S::Off), Ok(None));
        assert_eq!(plan(A::Off, S::Unknown), Ok(Some(A::Off)));
        assert_eq!(plan(A::SoftOff, S::On), Ok(Some(A::SoftOff)));
        for a in [A::On, A::Cycle] {
            assert_eq!(
                plan(a, S::Unknown),
                Err(BmcError::StateUnknown { action: a })
            );
        }
    }

    /// The executor runs drivers in spawned tasks: every future must be `Send`.
    #[allow(dead_code, clippy::diverging_sub_expression)]
    fn futures_are_send(cfg: &BmcConfig, mut bmc: Bmc) {
        fn send<T: Send>(_: T) {}
        send(Bmc::connect(cfg));
        send(bmc.power_state());
        send(bmc.power(PowerAction::On));
        send(bmc.apply(PowerAction::On));
        send(bmc.set_next_boot(BootDevice::Pxe));
        send(bmc.next_boot());
        send(bmc.close());
    }

    #[test]
    fn bmc_is_send_and_sync() {
        fn check<T: Send + Sync + std::fmt::Debug>() {}
        check::<Bmc>();
        check::<BmcConfig>();
        check::<BmcError>();
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        let a = || "h".to_owned();
        assert!(BmcError::Busy {
            address: a(),
            detail: a()
        }
        .is_retryable());
        assert!(BmcError::Timeout {
            address: a(),
            what: a(),
            attempts: 3
        }
        .is_retryable());
        assert!(!BmcError::AuthFailed {
            address: a(),
            detail: a()
        }
        .is_retryable());
        assert!(!BmcError::StateUnknown {
            action: PowerAction::On
        }
        .is_retryable());
    }
}
