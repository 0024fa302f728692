//! Power control through the machines' BMCs: the controller's half.
//!
//! BMCs sit on the site networks, so the edge of a machine's site drives them
//! (edge-agent `power`); the controller keeps the operator's settings and the outcome:
//!
//! * [`PowerControl::set_bmc`] stores a machine's BMC settings in KV `bmc` under
//!   `{site}.{machine}` (only that site's NATS user and the controller read them), and a
//!   summary without the password in the record ([`BmcInfo`]);
//! * [`PowerControl::request`] sends a [`PowerRequest`] to the site's edges on
//!   `substruct.v1.{site}.power` and waits a bounded time for its [`PowerResult`]; an
//!   answer that does not come in time is reported as pending, not failed: the edge
//!   finishes the operation and sends the result again on `…power.result`;
//! * `serve_results` takes those results (queue group), and [`PowerControl::apply_result`]
//!   records each once, by request id: the record's `power` and `power_error`, one
//!   `power` event in `EVENTS` (who, what, result), and a Redfish certificate pin learned
//!   on first use;
//! * [`PowerControl::cycle_to_pxe`] is what `assign`, `reinstall` and `release --wipe`
//!   do to a machine with a BMC: PXE for the next boot, then a cycle (a plain power on
//!   from a confirmed off; nothing on an unknown state).

use std::time::Duration;

use futures::StreamExt;

use substruct_runtime::serve::{serve_requests, ReplyPolicy, Requests, ServeOptions};
use substruct_wire::messages::{ErrorCode, ErrorReply, Instruction};
use substruct_wire::power::{BmcDriverKind, BootDevice, PowerAction};
use substruct_wire::power_msg::{
    bounded_text, BmcSettings, PowerAck, PowerOp, PowerRequest, PowerResult,
};
use substruct_wire::{subjects, MachineId, MessageKind, PowerRequestId, SiteId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::provision::{ProvisionError, Provisioner};
use crate::record::{
    BmcInfo, MachineEvent, MachineEventKind, MachineRecord, RECENT_POWER_REQUESTS,
};
use crate::store::{StoreError, Write};

/// How long [`PowerControl::request`] waits for the edge by default: below the CLI's
/// 30 s request timeout, above an edge's bounded retries against a slow BMC.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(25);
/// Power results handled at once by one controller.
pub const MAX_RESULTS_IN_FLIGHT: usize = 32;
/// Compare-and-set attempts on a busy record.
const MAX_ATTEMPTS: usize = 16;
/// Longest BMC address and user name accepted.
const MAX_FIELD: usize = 255;
/// Longest BMC password accepted (IPMI 2.0 allows 20 bytes; Redfish BMCs more).
const MAX_PASSWORD: usize = 256;

/// Why a power request or a BMC setting was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("machine {0} has no BMC (set one with `substruct machines bmc set`)")]
    NoBmc(MachineId),
    #[error("invalid BMC setting: {0}")]
    Invalid(String),
    #[error("no edge of site {0} serves power requests (is its edge agent running?)")]
    NoEdge(SiteId),
    #[error("the edge of site {site} refused the power request: {message}")]
    Refused { site: SiteId, message: String },
    #[error("the edge's answer does not decode")]
    BadReply(#[source] substruct_wire::WireError),
    #[error("sending the power request to site {site}")]
    Request {
        site: SiteId,
        #[source]
        source: async_nats::Error,
    },
    #[error(
        "a power result from site {site} for machine {machine}, which that site does not hold"
    )]
    WrongSite { site: SiteId, machine: MachineId },
    #[error("gave up after {MAX_ATTEMPTS} compare-and-set races on machine {0}")]
    Contention(MachineId),
    #[error("the store is unavailable")]
    Store(#[from] StoreError),
}

/// What the operator gives to `machines bmc set`. `Debug` never shows the password.
#[derive(Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcInput {
    pub driver: BmcDriverKind,
    /// Empty or missing: the address the machine reported for its BMC (its first LAN
    /// channel with one, read in-band by the prospector).
    #[serde(default)]
    pub address: String,
    pub user: String,
    pub password: String,
    /// Redfish: the member of `/redfish/v1/Systems` when the BMC has several.
    #[serde(default)]
    pub system_id: Option<String>,
}

impl std::fmt::Debug for BmcInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcInput")
            .field("driver", &self.driver)
            .field("address", &self.address)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("system_id", &self.system_id)
            .finish()
    }
}

impl BmcInput {
    /// Checks the fields' shape (the edge's driver checks the rest when it connects).
    pub fn validate(&self) -> Result<(), PowerError> {
        let plain = |what: &str, v: &str, max: usize| {
            if v.is_empty() || v.len() > max {
                return Err(PowerError::Invalid(format!(
                    "{what} must be 1 to {max} bytes"
                )));
            }
            if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(PowerError::Invalid(format!(
                    "{what} must not contain spaces or control characters"
                )));
            }
            Ok(())
        };
        plain("address", &self.address, MAX_FIELD)?;
        plain("user", &self.user, MAX_FIELD)?;
        if let Some(system) = &self.system_id {
            plain("system id", system, MAX_FIELD)?;
        }
        if self.password.is_empty() || self.password.len() > MAX_PASSWORD {
            return Err(PowerError::Invalid(format!(
                "password must be 1 to {MAX_PASSWORD} bytes"
            )));
        }
        if self.password.chars().any(char::is_control) {
            return Err(PowerError::Invalid(
                "password must not contain control characters (a trailing newline of the file is dropped)".into(),
            ));
        }
        Ok(())
    }
}

/// The outcome of [`PowerControl::request`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PowerOutcome {
    pub machine_id: MachineId,
    pub request_id: PowerRequestId,
    /// `status`, `on`, `off`, `softoff` or `cycle`.
    pub op: String,
    /// The state after, as the edge said (absent while pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<substruct_wire::power::PowerState>,
    /// The edge's error after its bounded retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_error: Option<String>,
    /// True when the edge did not answer in time: it goes on, and its result is
    /// recorded when it arrives (`machines show`).
    #[serde(default)]
    pub pending: bool,
}

/// Power control over the provisioner's store and NATS client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PowerControl {
    provisioner: Provisioner,
    client: async_nats::Client,
    timeout: Duration,
}

/// The BMC address the machine reported in-band (its first LAN channel with an
/// address), in the form `driver` takes: `A.B.C.D` for IPMI, `https://A.B.C.D` for Redfish.
fn reported_bmc_address(record: &MachineRecord, driver: BmcDriverKind) -> Option<String> {
    let ip = record
        .facts
        .bmc
        .as_ref()?
        .lan
        .iter()
        .find_map(|lan| lan.ip)?;
    Some(match driver {
        BmcDriverKind::Ipmi => ip.to_string(),
        BmcDriverKind::Redfish => format!("https://{ip}"),
    })
}

/// A new request id: `p-` and 24 hex digits.
fn new_request_id() -> PowerRequestId {
    let token = crate::provision::new_token();
    // 32 hex digits of a token are a valid request id.
    PowerRequestId::new(format!("p-{}", &token.as_str()[..24]))
        .unwrap_or_else(|_| unreachable!("hex request id is valid"))
}

impl PowerControl {
    /// Power control waiting [`REQUEST_TIMEOUT`] for the edges.
    pub fn new(provisioner: Provisioner, client: async_nats::Client) -> Self {
        Self {
            provisioner,
            client,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// The same, waiting `timeout` for an edge's answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `machines bmc set`: stores the settings under the machine's site (moving them
    /// when the machine changed site), the summary in the record, and a `bmc` event.
    pub async fn set_bmc(
        &self,
        reference: &str,
        input: BmcInput,
        by: &str,
    ) -> Result<MachineRecord, PowerError> {
        let mut input = input;
        let store = self.provisioner.store();
        let (record, _) = self.provisioner.find(reference).await?;
        if input.address.is_empty() {
            input.address = reported_bmc_address(&record, input.driver).ok_or_else(|| {
                PowerError::Invalid(format!(
                    "no address given, and machine {} reported no BMC address (give --address)",
                    record.id
                ))
            })?;
        }
        input.validate()?;
        // The pin belongs to the BMC it was learned from: kept only for the same address.
        let cert_pin = record
            .bmc
            .as_ref()
            .filter(|b| b.address == input.address && b.driver == input.driver)
            .and_then(|b| b.cert_pin.clone());
        let settings = BmcSettings {
            machine_id: record.id.clone(),
            driver: input.driver,
            address: input.address.clone(),
            user: input.user.clone(),
            password: input.password,
            cert_pin: cert_pin.clone(),
            system_id: input.system_id.clone(),
        };
        store.set_bmc_settings(&record.site, &settings).await?;
        if let Some(old) = record.bmc.as_ref().filter(|b| b.site != record.site) {
            store.delete_bmc_settings(&old.site, &record.id).await?;
        }
        let info = BmcInfo {
            driver: input.driver,
            address: input.address.clone(),
            user: input.user.clone(),
            password_set: true,
            site: record.site.clone(),
            cert_pin,
            system_id: input.system_id.clone(),
        };
        let (record, revision) = self
            .edit(&record.id, |r| {
                r.bmc = Some(info.clone());
                true
            })
            .await?;
        self.publish(MachineEvent {
            machine_id: record.id.clone(),
            at_unix_ms: crate::now_unix_ms(),
            revision,
            kind: MachineEventKind::Bmc {
                driver: input.driver,
                address: input.address,
                user: input.user,
                by: by.to_owned(),
            },
        })
        .await;
        tracing::info!(machine = %record.id, driver = %info.driver, address = %info.address, by, "BMC set");
        Ok(record)
    }

    /// Sends one power request to the machine's site and waits (bounded) for the
    /// result, which it records; an edge that does not answer in time leaves the result
    /// pending (it arrives on `…power.result`).
    pub async fn request(
        &self,
        reference: &str,
        op: PowerOp,
        next_boot: Option<BootDevice>,
        by: &str,
    ) -> Result<PowerOutcome, PowerError> {
        let (record, _) = self.provisioner.find(reference).await?;
        let bmc = record
            .bmc
            .clone()
            .ok_or_else(|| PowerError::NoBmc(record.id.clone()))?;
        let site = bmc.site.clone();
        let request = PowerRequest {
            site: site.clone(),
            request_id: new_request_id(),
            machine_id: record.id.clone(),
            macs: record.facts.macs(),
            op,
            next_boot,
            by: bounded_text(by),
        };
        let mut outcome = PowerOutcome {
            machine_id: record.id.clone(),
            request_id: request.request_id.clone(),
            op: op.to_string(),
            power: None,
            power_error: None,
            pending: false,
        };
        let payload = substruct_wire::encode(&request).map_err(PowerError::BadReply)?;
        tracing::info!(machine = %record.id, %site, %op, next_boot = ?next_boot, request = %request.request_id, by, "power request");
        // The answer comes on the site's own reply subject, which crosses its leaf node
        // (the hub's `_INBOX.…` does not: subjects::site_reply).
        let reply_to = subjects::site_reply(&site, request.request_id.as_str());
        let request_failed = |source: async_nats::Error| PowerError::Request {
            site: site.clone(),
            source,
        };
        let mut answers = self
            .client
            .subscribe(reply_to.clone())
            .await
            .map_err(|e| request_failed(e.into()))?;
        self.client
            .publish_with_reply(subjects::power(&site), reply_to, payload.into())
            .await
            .map_err(|e| request_failed(e.into()))?;
        let reply = match tokio::time::timeout(self.timeout, answers.next()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(request_failed("the reply subscription ended".into())),
            Err(_) => {
                tracing::warn!(machine = %record.id, request = %request.request_id, "the edge did not answer in time; the result is pending");
                outcome.pending = true;
                return Ok(outcome);
            }
        };
        drop(answers);
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err(PowerError::NoEdge(site));
        }
        let env = substruct_wire::peek(&reply.payload).map_err(PowerError::BadReply)?;
        if env.kind == MessageKind::ErrorReply {
            let e = substruct_wire::decode::<ErrorReply>(&reply.payload)
                .map_err(PowerError::BadReply)?;
            return Err(PowerError::Refused {
                site,
                message: bounded_text(&e.message),
            });
        }
        let result =
            substruct_wire::decode::<PowerResult>(&reply.payload).map_err(PowerError::BadReply)?;
        if result.request_id != request.request_id || result.machine_id != record.id {
            return Err(PowerError::Refused {
                site,
                message: "the edge answered for another request".into(),
            });
        }
        self.apply_result(&site, &result).await?;
        outcome.power = Some(result.state);
        outcome.power_error = result.error;
        Ok(outcome)
    }

    /// Records one result from `site` once (by request id): the record's power state
    /// and last error, a `power` event, a certificate pin learned on first use. Returns
    /// false when the result was recorded before (a redelivery).
    pub async fn apply_result(
        &self,
        site: &SiteId,
        result: &PowerResult,
    ) -> Result<bool, PowerError> {
        let store = self.provisioner.store();
        let Some((record, revision)) = store.machine(&result.machine_id).await? else {
            return Err(ProvisionError::UnknownMachine(result.machine_id.to_string()).into());
        };
        // A site speaks only for the machines whose BMC settings it holds.
        if record.bmc.as_ref().map(|b| &b.site) != Some(site) {
            return Err(PowerError::WrongSite {
                site: site.clone(),
                machine: result.machine_id.clone(),
            });
        }
        if record.power_requests.contains(&result.request_id) {
            return Ok(false);
        }
        let error = result.error.as_deref().map(bounded_text);
        // The event first (its id is the request's, so a retry after a failed record
        // write is deduplicated by the stream), then the record.
        self.publish(MachineEvent {
            machine_id: record.id.clone(),
            at_unix_ms: crate::now_unix_ms(),
            revision,
            kind: MachineEventKind::Power {
                request_id: result.request_id.clone(),
                op: result.op.to_string(),
                state: result.state,
                error: error.clone(),
                by: bounded_text(&result.by),
            },
        })
        .await;
        let pin = result
            .cert_pin
            .as_deref()
            .filter(|p| is_pin(p))
            .map(str::to_owned);
        let (record, _) = self
            .edit(&record.id, |r| {
                if r.power_requests.contains(&result.request_id) {
                    return false;
                }
                r.power = result.state;
                r.power_error = error.clone();
                r.power_requests.push(result.request_id.clone());
                let excess = r.power_requests.len().saturating_sub(RECENT_POWER_REQUESTS);
                r.power_requests.drain(..excess);
                if let (Some(bmc), Some(pin)) = (r.bmc.as_mut(), pin.as_ref()) {
                    if bmc.cert_pin.is_none() {
                        bmc.cert_pin = Some(pin.clone());
                    }
                }
                true
            })
            .await?;
        if let Some(pin) = pin {
            self.store_pin(&record, site, &pin).await?;
        }
        tracing::info!(machine = %record.id, request = %result.request_id, op = %result.op,
            state = %result.state, error = ?error, "power result recorded");
        Ok(true)
    }

    /// What `assign`, `reinstall` and `release --wipe` do to a machine with a BMC: PXE
    /// for the next boot and a cycle, in the background (the result is recorded when it
    /// comes). Returns whether a request was sent on its way.
    pub fn cycle_to_pxe(&self, record: &MachineRecord, by: &str) -> bool {
        if record.bmc.is_none() {
            return false;
        }
        let (power, id, by) = (self.clone(), record.id.to_string(), by.to_owned());
        tokio::spawn(async move {
            let op = PowerOp::Act(PowerAction::Cycle);
            if let Err(e) = power.request(&id, op, Some(BootDevice::Pxe), &by).await {
                let message = crate::error_chain(&e);
                tracing::warn!(machine = %id, error = %message, "power cycle to PXE failed");
                power.record_error(&id, &message).await;
            }
        });
        true
    }

    /// Notes a power error that never reached the edge (no edge, a refusal).
    async fn record_error(&self, id: &str, message: &str) {
        let Ok(id) = MachineId::new(id) else { return };
        let message = bounded_text(message);
        if let Err(e) = self
            .edit(&id, |r| {
                r.power_error = Some(message.clone());
                true
            })
            .await
        {
            tracing::warn!(machine = %id, error = %crate::error_chain(&e), "cannot record a power error");
        }
    }

    /// Writes a learned certificate pin back into the KV settings (if none is there).
    async fn store_pin(
        &self,
        record: &MachineRecord,
        site: &SiteId,
        pin: &str,
    ) -> Result<(), PowerError> {
        let store = self.provisioner.store();
        if let Some(mut settings) = store.bmc_settings(site, &record.id).await? {
            if settings.cert_pin.is_none() {
                settings.cert_pin = Some(pin.to_owned());
                store.set_bmc_settings(site, &settings).await?;
                tracing::info!(machine = %record.id, "BMC certificate pinned on first use");
            }
        }
        Ok(())
    }

    /// Read-modify-write of one record by compare-and-set; `edit` returns false to
    /// write nothing. Returns the record and its revision.
    async fn edit(
        &self,
        id: &MachineId,
        edit: impl Fn(&mut MachineRecord) -> bool,
    ) -> Result<(MachineRecord, u64), PowerError> {
        let store = self.provisioner.store();
        for _ in 0..MAX_ATTEMPTS {
            let Some((mut record, revision)) = store.machine(id).await? else {
                return Err(ProvisionError::UnknownMachine(id.to_string()).into());
            };
            if !edit(&mut record) {
                return Ok((record, revision));
            }
            match store.update_machine(&record, revision).await? {
                Write::Done(rev) => return Ok((record, rev)),
                Write::Lost => continue,
            }
        }
        Err(PowerError::Contention(id.clone()))
    }

    async fn publish(&self, event: MachineEvent) {
        if let Err(e) = self.provisioner.store().publish_event(&event).await {
            tracing::warn!(machine = %event.machine_id, error = %crate::error_chain(&e), "power event not recorded");
        }
    }
}

/// What an idle machine at its site is told after its report (no rule assigned it, or
/// its wipe finished): power off where the site asks for it
/// ([`SiteRecord::power_off_after_discovery`](crate::sites::SiteRecord)), else wait.
pub async fn idle_instruction(provisioner: &Provisioner, record: &MachineRecord) -> Instruction {
    match provisioner.power_off_after_discovery(&record.site).await {
        Ok(true) => {
            tracing::info!(machine = %record.id, site = %record.site, "idle after its report: told to power off (site setting)");
            Instruction::PowerOff
        }
        Ok(false) => Instruction::Wait,
        Err(e) => {
            tracing::warn!(machine = %record.id, error = %crate::error_chain(&e), "cannot read the site's settings; the machine waits");
            Instruction::Wait
        }
    }
}

/// A certificate pin: 64 lowercase hex digits (sha256).
fn is_pin(pin: &str) -> bool {
    pin.len() == 64 && pin.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Answers power results from the edges (queue group: one controller records each) with
/// a [`PowerAck`] once recorded, or an [`ErrorReply`].
pub(crate) async fn serve_results(
    client: async_nats::Client,
    requests: Requests,
    power: PowerControl,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let options = ServeOptions {
        name: "power result",
        max_in_flight: MAX_RESULTS_IN_FLIGHT,
        reply: ReplyPolicy::SiteInbox,
    };
    serve_requests(client, requests, options, cancel, tracker, move |msg| {
        let power = power.clone();
        async move { answer_result(&power, msg.subject.as_str(), &msg.payload).await }
    })
    .await;
}

/// The answer to one power result on `subject`.
pub async fn answer_result(power: &PowerControl, subject: &str, payload: &[u8]) -> Vec<u8> {
    let refuse = |code, message: String| {
        tracing::warn!(subject, %message, "power result refused");
        substruct_wire::encode(&ErrorReply { code, message }).unwrap_or_default()
    };
    let result = match substruct_wire::decode::<PowerResult>(payload) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                ErrorCode::Malformed,
                format!("not a power result: {}", crate::error_chain(&e)),
            )
        }
    };
    if subjects::site_of(subject) != Some(result.site.as_str()) {
        return refuse(
            ErrorCode::WrongSite,
            format!("power result for site {} arrived on {subject}", result.site),
        );
    }
    match power.apply_result(&result.site, &result).await {
        Ok(_) => substruct_wire::encode(&PowerAck {
            request_id: result.request_id,
        })
        .unwrap_or_default(),
        Err(e @ (PowerError::WrongSite { .. } | PowerError::Provision(_))) => {
            refuse(ErrorCode::Forbidden, crate::error_chain(&e))
        }
        Err(e) => refuse(ErrorCode::Unavailable, crate::error_chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bmc_input_is_checked_and_never_shows_its_password() {
        let good = BmcInput {
            driver: BmcDriverKind::Ipmi,
            address: "10.0.0.5:623".into(),
            user: "admin".into(),
            password: "s3cret pass".into(),
            system_id: None,
        };
        assert!(good.validate().is_ok());
        assert!(!format!("{good:?}").contains("s3cret"));
        for bad in [
            BmcInput {
                address: String::new(),
                ..good.clone()
            },
            BmcInput {
                address: "a b".into(),
                ..good.clone()
            },
            BmcInput {
                user: "x\n".into(),
                ..good.clone()
            },
            BmcInput {
                password: String::new(),
                ..good.clone()
            },
            BmcInput {
                password: "p\u{0}".into(),
                ..good.clone()
            },
            BmcInput {
                password: "p".repeat(MAX_PASSWORD + 1),
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_ids_and_pins_have_their_shape() {
        let a = new_request_id();
        assert!(a.as_str().starts_with("p-") && a.as_str().len() == 26);
        assert_ne!(a, new_request_id());
        assert!(is_pin(&"ab".repeat(32)));
        assert!(!is_pin(&"AB".repeat(32)));
        assert!(!is_pin("ab"));
    }
}
