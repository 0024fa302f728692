//! The BMC behind one interface the executor drives: [`Connector`] opens a [`Session`]
//! for one machine's [`BmcSettings`]. [`BmcConnector`] is the real one (the
//! `substruct-bmc` drivers: IPMI over LAN, Redfish); the executor's own tests use a
//! fake, so its scheduling (one operation per BMC, the site cap, retries) is tested
//! without sockets, and the real drivers are tested against real emulators.

use std::future::Future;
use std::time::Duration;

use substruct_bmc::{Bmc, BmcConfig, BmcError, CertPin, Secret};
use substruct_wire::power::{BootDevice, PowerAction, PowerState};
use substruct_wire::power_msg::BmcSettings;

/// One open session with a BMC.
pub trait Session: Send + 'static {
    /// The machine's power as the BMC says.
    fn power_state(&mut self) -> impl Future<Output = Result<PowerState, BmcError>> + Send;
    /// The action with the fleet's policy (power on only from a confirmed off, never
    /// cycle an unknown state); the state read afterwards.
    fn apply(
        &mut self,
        action: PowerAction,
    ) -> impl Future<Output = Result<PowerState, BmcError>> + Send;
    /// A one-time boot device for the next boot.
    fn set_next_boot(
        &mut self,
        dev: BootDevice,
    ) -> impl Future<Output = Result<(), BmcError>> + Send;
    /// Redfish: the certificate pin seen (hex), to store when none was given.
    fn cert_pin_seen(&self) -> Option<String>;
    /// Ends the session (best effort).
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Opens sessions.
pub trait Connector: Clone + Send + Sync + 'static {
    /// The session type.
    type Session: Session;
    /// Opens a session to the BMC `settings` name, each exchange bounded by `timeout`.
    fn connect(
        &self,
        settings: &BmcSettings,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Session, BmcError>> + Send;
}

/// The real drivers (`substruct-bmc`).
#[derive(Debug, Clone, Copy, Default)]
pub struct BmcConnector;

impl Connector for BmcConnector {
    type Session = Bmc;

    async fn connect(&self, settings: &BmcSettings, timeout: Duration) -> Result<Bmc, BmcError> {
        let mut config = BmcConfig::new(
            settings.driver,
            settings.address.clone(),
            settings.user.clone(),
            Secret::new(settings.password.clone()),
        );
        config.timeout = timeout;
        config.system_id = settings.system_id.clone();
        config.cert_pin = settings
            .cert_pin
            .as_deref()
            .map(str::parse::<CertPin>)
            .transpose()?;
        Bmc::connect(&config).await
    }
}

impl Session for Bmc {
    async fn power_state(&mut self) -> Result<PowerState, BmcError> {
        Bmc::power_state(self).await
    }

    async fn apply(&mut self, action: PowerAction) -> Result<PowerState, BmcError> {
        Bmc::apply(self, action).await
    }

    async fn set_next_boot(&mut self, dev: BootDevice) -> Result<(), BmcError> {
        Bmc::set_next_boot(self, dev).await
    }

    fn cert_pin_seen(&self) -> Option<String> {
        Bmc::cert_pin_seen(self).map(|p| p.to_hex())
    }

    async fn close(self) {
        Bmc::close(self).await
    }
}
