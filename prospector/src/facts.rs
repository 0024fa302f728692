//! Contract stub (owned by the prospector-agent engineer): hardware facts.

use std::path::Path;

use substruct_wire::report::HardwareReport;

/// Gathers every fact readable under `root` (`/` on a live machine).
pub fn gather(_root: &Path) -> HardwareReport {
    HardwareReport::default()
}
