//! The executor: every BMC operation of the site goes through [`Executor::run`], which
//! keeps the promises the BMCs need (they freeze under bursts):
//!
//! * one operation at a time per BMC (a lock per BMC address, taken first, so a queue
//!   forms per BMC and not per site);
//! * at most `max_sessions` sessions open at once for the whole site (a semaphore,
//!   held only while a session is open, not during a backoff);
//! * bounded retries of retryable errors (unreachable, timeout, busy) with the shared
//!   jittered [`Backoff`]; other errors (wrong password, refused policy) end at once;
//!   the last error is returned and kept per BMC ([`Executor::last_error`]);
//! * no next-boot override when the action would be refused (an unknown state for
//!   `on`/`cycle`): nothing at all is changed then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use substruct_bmc::BmcError;
use substruct_runtime::backoff::Backoff;
use substruct_wire::power::{BootDevice, PowerAction, PowerState};
use substruct_wire::power_msg::{BmcSettings, PowerOp};
use tokio::sync::Semaphore;

use super::driver::{Connector, Session};

/// How the executor runs operations.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// BMC sessions open at once for the whole site.
    pub max_sessions: usize,
    /// Attempts per operation (at least 1).
    pub attempts: u32,
    /// First retry delay (jittered), doubling up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Bound of one exchange with a BMC.
    pub bmc_timeout: Duration,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        Self {
            max_sessions: 4,
            attempts: 3,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            bmc_timeout: Duration::from_secs(3),
        }
    }
}

/// What one operation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The state after (`Unknown` when the BMC did not say).
    pub state: PowerState,
    /// The last error, when the operation failed.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// A certificate pin seen where the settings had none.
    pub cert_pin: Option<String>,
}

/// The site's BMC operations (cheap to clone).
#[derive(Debug, Clone)]
pub struct Executor<C> {
    connector: C,
    settings: ExecutorSettings,
    /// One lock per BMC address.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    sessions: Arc<Semaphore>,
    last_errors: Arc<Mutex<HashMap<String, String>>>,
}

impl<C: Connector> Executor<C> {
    /// An executor opening sessions with `connector`.
    pub fn new(connector: C, settings: ExecutorSettings) -> Self {
        let sessions = Arc::new(Semaphore::new(settings.max_sessions.max(1)));
        Self {
            connector,
            settings,
            locks: Arc::default(),
            sessions,
            last_errors: Arc::default(),
        }
    }

    /// The last error of the BMC at `address`, until an operation on it succeeds.
    pub fn last_error(&self, address: &str) -> Option<String> {
        self.last_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
            .cloned()
    }

    fn lock_of(&self, address: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(address.to_owned()).or_default().clone()
    }

    /// Runs `op` (with a next-boot device first, if given) on the BMC of `bmc`, after
    /// the operations already queued for that BMC, within the site's session cap.
    pub async fn run(
        &self,
        bmc: &BmcSettings,
        op: PowerOp,
        next_boot: Option<BootDevice>,
    ) -> Outcome {
        let lock = self.lock_of(&bmc.address);
        let _one_at_a_time = lock.lock().await;
        let attempts = self.settings.attempts.max(1);
        let mut backoff = Backoff::new(self.settings.min_backoff, self.settings.max_backoff);
        let mut attempt = 0;
        let (state, error) = loop {
            attempt += 1;
            let result = {
                // The semaphore lives as long as the executor: acquire cannot fail.
                let _session = self.sessions.acquire().await.ok();
                self.once(bmc, op, next_boot).await
            };
            match result {
                Ok((state, pin)) => {
                    self.last_errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&bmc.address);
                    return Outcome {
                        state,
                        error: None,
                        attempts: attempt,
                        cert_pin: pin.filter(|_| bmc.cert_pin.is_none()),
                    };
                }
                Err(e) if e.is_retryable() && attempt < attempts => {
                    let delay = backoff.next_delay();
                    tracing::warn!(machine = %bmc.machine_id, bmc = %bmc.address, %op, attempt,
                        error = %e, retry_in = ?delay, "BMC operation failed; will retry");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => break (PowerState::Unknown, e.to_string()),
            }
        };
        tracing::warn!(machine = %bmc.machine_id, bmc = %bmc.address, %op, attempts = attempt,
            error = %error, "BMC operation failed");
        self.last_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bmc.address.clone(), error.clone());
        Outcome {
            state,
            error: Some(error),
            attempts: attempt,
            cert_pin: None,
        }
    }

    /// One attempt: a session, the operation, the session closed.
    async fn once(
        &self,
        bmc: &BmcSettings,
        op: PowerOp,
        next_boot: Option<BootDevice>,
    ) -> Result<(PowerState, Option<String>), BmcError> {
        let mut session = self
            .connector
            .connect(bmc, self.settings.bmc_timeout)
            .await?;
        let result = act(&mut session, op, next_boot).await;
        let pin = session.cert_pin_seen();
        session.close().await;
        result.map(|state| (state, pin))
    }
}

/// Whether an action from `state` would be refused by the policy (the drivers refuse
/// it too; checked first so that a refused action sets no next-boot device).
pub fn refused(action: PowerAction, state: PowerState) -> bool {
    state == PowerState::Unknown && matches!(action, PowerAction::On | PowerAction::Cycle)
}

async fn act<S: Session>(
    session: &mut S,
    op: PowerOp,
    next_boot: Option<BootDevice>,
) -> Result<PowerState, BmcError> {
    match op {
        PowerOp::Status => session.power_state().await,
        PowerOp::Act(action) => {
            if let Some(dev) = next_boot {
                let before = session.power_state().await?;
                if refused(action, before) {
                    return Err(BmcError::StateUnknown { action });
                }
                session.set_next_boot(dev).await?;
            }
            session.apply(action).await
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The executor's scheduling and retry rules against a fake BMC (no sockets): the
    //! real drivers and their policy are tested against ipmi_sim and sushy-tools.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use substruct_wire::power::BmcDriverKind;
    use substruct_wire::MachineId;

    use super::*;

    /// What the fake BMCs do, shared by every session.
    #[derive(Debug, Default)]
    struct Lab {
        /// Sessions open now, per address and in total, and the peaks.
        open: Mutex<HashMap<String, usize>>,
        peak_per_bmc: AtomicUsize,
        total: AtomicUsize,
        peak_total: AtomicUsize,
        connects: AtomicUsize,
        /// Connects that fail (retryable) before one succeeds.
        failing_connects: AtomicUsize,
        /// The state every BMC reports.
        state: Mutex<Option<PowerState>>,
        /// Next-boot devices set, and actions applied.
        boots: Mutex<Vec<BootDevice>>,
        applied: Mutex<Vec<PowerAction>>,
        wrong_password: std::sync::atomic::AtomicBool,
    }

    #[derive(Debug, Clone)]
    struct Fake(Arc<Lab>);

    #[derive(Debug)]
    struct FakeSession {
        lab: Arc<Lab>,
        address: String,
    }

    impl Connector for Fake {
        type Session = FakeSession;
        async fn connect(
            &self,
            s: &BmcSettings,
            _timeout: Duration,
        ) -> Result<FakeSession, BmcError> {
            let lab = &self.0;
            lab.connects.fetch_add(1, Ordering::SeqCst);
            if lab.wrong_password.load(Ordering::SeqCst) {
                return Err(BmcError::AuthFailed {
                    address: s.address.clone(),
                    detail: "RAKP 2 status 0x0d".into(),
                });
            }
            if lab
                .failing_connects
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(BmcError::Timeout {
                    address: s.address.clone(),
                    what: "Open Session".into(),
                    attempts: 1,
                });
            }
            let now = {
                let mut open = lab.open.lock().unwrap();
                let n = open.entry(s.address.clone()).or_default();
                *n += 1;
                *n
            };
            lab.peak_per_bmc.fetch_max(now, Ordering::SeqCst);
            let total = lab.total.fetch_add(1, Ordering::SeqCst) + 1;
            lab.peak_total.fetch_max(total, Ordering::SeqCst);
            Ok(FakeSession {
                lab: lab.clone(),
                address: s.address.clone(),
            })
        }
    }

    impl Session for FakeSession {
        async fn power_state(&mut self) -> Result<PowerState, BmcError> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(self.lab.state.lock().unwrap().unwrap_or(PowerState::Off))
        }
        async fn apply(&mut self, action: PowerAction) -> Result<PowerState, BmcError> {
            // The drivers' policy, as the fake knows it, for the outcome only.
            let before = self.power_state().await?;
            if refused(action, before) {
                return Err(BmcError::StateUnknown { action });
            }
            self.lab.applied.lock().unwrap().push(action);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(match action {
                PowerAction::On | PowerAction::Cycle => PowerState::On,
                PowerAction::Off | PowerAction::SoftOff => PowerState::Off,
            })
        }
        async fn set_next_boot(&mut self, dev: BootDevice) -> Result<(), BmcError> {
            self.lab.boots.lock().unwrap().push(dev);
            Ok(())
        }
        fn cert_pin_seen(&self) -> Option<String> {
            None
        }
        async fn close(self) {
            *self
                .lab
                .open
                .lock()
                .unwrap()
                .get_mut(&self.address)
                .unwrap() -= 1;
            self.lab.total.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn bmc(machine: &str, address: &str) -> BmcSettings {
        BmcSettings {
            machine_id: MachineId::new(machine).unwrap(),
            driver: BmcDriverKind::Ipmi,
            address: address.into(),
            user: "admin".into(),
            password: "pw".into(),
            cert_pin: None,
            system_id: None,
        }
    }

    fn executor(lab: &Arc<Lab>, max_sessions: usize) -> Executor<Fake> {
        Executor::new(
            Fake(lab.clone()),
            ExecutorSettings {
                max_sessions,
                attempts: 3,
                min_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(4),
                bmc_timeout: Duration::from_millis(100),
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_operation_per_bmc_and_the_site_cap_hold_under_a_burst() {
        let lab = Arc::new(Lab::default());
        let exec = executor(&lab, 3);
        // 40 operations on 8 BMCs (5 each), all at once.
        let ops = (0..40).map(|i| {
            let exec = exec.clone();
            let settings = bmc(&format!("m-{i}"), &format!("10.0.0.{}", i % 8));
            async move {
                exec.run(&settings, PowerOp::Act(PowerAction::Off), None)
                    .await
            }
        });
        let outcomes = futures::future::join_all(ops).await;
        assert!(outcomes.iter().all(|o| o.error.is_none()), "{outcomes:?}");
        assert_eq!(
            lab.peak_per_bmc.load(Ordering::SeqCst),
            1,
            "two sessions on one BMC"
        );
        let peak = lab.peak_total.load(Ordering::SeqCst);
        assert!(peak <= 3, "site cap exceeded: {peak}");
        assert!(peak >= 2, "the burst never ran in parallel: {peak}");
        assert_eq!(lab.applied.lock().unwrap().len(), 40);
    }

    #[tokio::test]
    async fn unknown_state_refuses_on_and_cycle_without_touching_the_boot_device() {
        let lab = Arc::new(Lab::default());
        *lab.state.lock().unwrap() = Some(PowerState::Unknown);
        let exec = executor(&lab, 4);
        for action in [PowerAction::On, PowerAction::Cycle] {
            let o = exec
                .run(
                    &bmc("m-1", "a"),
                    PowerOp::Act(action),
                    Some(BootDevice::Pxe),
                )
                .await;
            let error = o.error.unwrap_or_default();
            assert!(
                !error.is_empty(),
                "{action} on an unknown state was not refused"
            );
            assert_eq!(o.attempts, 1, "a refusal is not retried");
        }
        assert!(
            lab.boots.lock().unwrap().is_empty(),
            "next boot set on a refusal"
        );
        assert!(lab.applied.lock().unwrap().is_empty());
        assert!(exec.last_error("a").is_some(), "the last error is kept");

        // From a confirmed off: the boot device first, then the action.
        *lab.state.lock().unwrap() = Some(PowerState::Off);
        let o = exec
            .run(
                &bmc("m-1", "a"),
                PowerOp::Act(PowerAction::Cycle),
                Some(BootDevice::Pxe),
            )
            .await;
        assert_eq!(o.error, None);
        assert_eq!(o.state, PowerState::On);
        assert_eq!(*lab.boots.lock().unwrap(), vec![BootDevice::Pxe]);
        assert_eq!(
            exec.last_error("a"),
            None,
            "a success clears the last error"
        );
    }

    #[tokio::test]
    async fn retries_are_bounded_and_the_last_error_is_reported() {
        let lab = Arc::new(Lab::default());
        let exec = executor(&lab, 4);
        // Down for good: exactly `attempts` connects, then the error.
        lab.failing_connects.store(usize::MAX, Ordering::SeqCst);
        let o = exec.run(&bmc("m-1", "b"), PowerOp::Status, None).await;
        assert_eq!(o.attempts, 3);
        assert_eq!(lab.connects.load(Ordering::SeqCst), 3);
        assert_eq!(o.state, PowerState::Unknown);
        let error = o.error.unwrap_or_default();
        assert!(error.contains('b'), "the error names the BMC: {error}");
        assert_eq!(exec.last_error("b"), Some(error));

        // Down twice, then up: the third attempt succeeds.
        lab.failing_connects.store(2, Ordering::SeqCst);
        lab.connects.store(0, Ordering::SeqCst);
        let o = exec.run(&bmc("m-1", "b"), PowerOp::Status, None).await;
        assert_eq!((o.error, o.attempts), (None, 3));
        assert_eq!(o.state, PowerState::Off);

        // A wrong password is not retried.
        lab.wrong_password.store(true, Ordering::SeqCst);
        lab.connects.store(0, Ordering::SeqCst);
        let o = exec.run(&bmc("m-1", "b"), PowerOp::Status, None).await;
        assert_eq!(o.attempts, 1);
        assert_eq!(lab.connects.load(Ordering::SeqCst), 1);
        assert!(o.error.is_some());
    }
}
