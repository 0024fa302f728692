//! Contract stub (owned by the prospector-agent engineer): report over NATS.

use substruct_wire::report::HardwareReport;
use substruct_wire::{BootToken, MachineId, SiteId};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub nats_url: String,
    pub site: SiteId,
    pub token: Option<BootToken>,
    /// Return after the first acknowledgement instead of waiting for commands.
    pub once: bool,
}

/// What the agent ended with; the caller carries out power actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acknowledged { machine_id: MachineId },
    PowerOff { machine_id: MachineId },
    Reboot { machine_id: MachineId },
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("not implemented yet")]
    NotImplemented,
}

/// Sends `report` until the controller acknowledges, then follows instructions.
pub async fn run(
    _cfg: AgentConfig,
    _report: HardwareReport,
    _cancel: CancellationToken,
) -> Result<Outcome, AgentError> {
    Err(AgentError::NotImplemented)
}
