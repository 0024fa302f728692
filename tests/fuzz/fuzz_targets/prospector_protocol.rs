//! What the prospector makes of the controller's answers and commands
//! (`agent::protocol`): `discover_answer`, `callback_answer`, `interpret_command`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use substruct_prospector::agent::protocol::{callback_answer, discover_answer, interpret_command};
use substruct_wire::MachineId;

fuzz_target!(|data: &[u8]| {
    let _ = discover_answer(data);
    let _ = callback_answer(data);
    let me = MachineId::new("m-0123456789abcdef").unwrap();
    let _ = interpret_command(data, &me);
});
