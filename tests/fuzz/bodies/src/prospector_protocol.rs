use std::sync::OnceLock;

use substruct_prospector::agent::protocol::{callback_answer, discover_answer, interpret_command};
use substruct_wire::MachineId;

/// What the prospector makes of the controller's answers and commands
/// (`agent::protocol`): `discover_answer`, `callback_answer`, `interpret_command`.
///
/// Input: one NATS message payload (an enveloped wire message), read as each of the
/// three; commands are addressed to machine `m-0123456789abcdef`.
pub fn prospector_protocol(data: &[u8]) {
    let _ = discover_answer(data);
    let _ = callback_answer(data);
    let _ = interpret_command(data, me());
}

/// The machine the prospector runs on, built once.
fn me() -> &'static MachineId {
    static ME: OnceLock<MachineId> = OnceLock::new();
    ME.get_or_init(|| MachineId::new("m-0123456789abcdef").expect("a valid machine id"))
}
