use std::sync::OnceLock;

use substruct_controller::profile::sample_machine;
use substruct_controller::record::MachineRecord;
use substruct_controller::rules::{glob, parse_size, Rule};

/// An operator's rule: `Rule::from_toml`, `validate`, then `matches`/`explain` against
/// the sample machine; and the size and glob helpers on the same text.
///
/// Input: UTF-8 text: the rule's TOML, also a size (`parse_size`) and, split at its
/// first newline, a glob pattern and the value it is matched against.
pub fn rule_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_size(text);
    if let Some((pattern, value)) = text.split_once('\n') {
        let _ = glob(pattern, value);
    }
    let Ok(rule) = Rule::from_toml(text) else {
        return;
    };
    if rule.validate().is_ok() {
        let m = machine();
        let _ = rule.matches(m);
        let _ = rule.explain(m);
    }
}

/// The sample machine, built once.
fn machine() -> &'static MachineRecord {
    static MACHINE: OnceLock<MachineRecord> = OnceLock::new();
    MACHINE.get_or_init(sample_machine)
}
