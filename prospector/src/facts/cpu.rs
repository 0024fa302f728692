//! CPU facts from `/proc/cpuinfo` (x86 layout; other architectures give what they have).

use std::collections::BTreeSet;
use std::path::Path;

use substruct_wire::report::Cpu;

use super::sysfs::read_string;

/// Flags worth reporting, in the order they are reported.
pub const NOTABLE_FLAGS: &[&str] = &[
    "vmx",
    "svm",
    "hypervisor",
    "aes",
    "sse4_2",
    "avx",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "amx_tile",
    "sha_ni",
    "rdrand",
    "pdpe1gb",
    "sev",
];

/// Reads `<root>/proc/cpuinfo`.
pub fn gather(root: &Path) -> Cpu {
    read_string(&root.join("proc/cpuinfo"))
        .map(|text| parse_cpuinfo(&text))
        .unwrap_or_default()
}

/// Parses the text of `/proc/cpuinfo`: sockets are distinct `physical id`s, cores
/// distinct `(physical id, core id)` pairs, threads `processor` entries. Without
/// topology lines (some VMs, other architectures) every thread counts as a core of
/// one socket.
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    let mut threads: u32 = 0;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut flags: Option<BTreeSet<String>> = None;
    // Per-processor block state.
    let mut phys: Option<String> = None;
    let mut core: Option<String> = None;
    let mut flush = |phys: &mut Option<String>, core: &mut Option<String>| {
        if let Some(p) = phys.take() {
            sockets.insert(p.clone());
            if let Some(c) = core.take() {
                cores.insert((p, c));
            }
        }
        *core = None;
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => {
                flush(&mut phys, &mut core);
                threads = threads.saturating_add(1);
            }
            "physical id" => phys = Some(value.to_owned()),
            "core id" => core = Some(value.to_owned()),
            "model name" | "cpu model" if cpu.model.is_none() && !value.is_empty() => {
                cpu.model = Some(value.to_owned())
            }
            "microcode" if cpu.microcode.is_none() && !value.is_empty() => {
                cpu.microcode = Some(value.to_owned())
            }
            "flags" | "Features" if flags.is_none() => {
                flags = Some(value.split_whitespace().map(str::to_owned).collect())
            }
            _ => {}
        }
    }
    flush(&mut phys, &mut core);
    let flags = flags.unwrap_or_default();
    cpu.threads = threads;
    cpu.sockets = count(sockets.len()).max(u32::from(threads > 0));
    cpu.cores = if cores.is_empty() {
        threads
    } else {
        count(cores.len())
    };
    cpu.virtualization = ["vmx", "svm"]
        .into_iter()
        .find(|f| flags.contains(*f))
        .map(str::to_owned);
    cpu.flags = NOTABLE_FLAGS
        .iter()
        .filter(|f| flags.contains(**f))
        .map(|f| (*f).to_owned())
        .collect();
    cpu
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_from_ids() {
        let text = "processor : 0\nphysical id : 0\ncore id : 0\nflags : fpu svm aes\n\n\
                    processor : 1\nphysical id : 0\ncore id : 0\n\n\
                    processor : 2\nphysical id : 1\ncore id : 0\n\n";
        let cpu = parse_cpuinfo(text);
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (2, 2, 3));
        assert_eq!(cpu.virtualization.as_deref(), Some("svm"));
        assert_eq!(cpu.flags, ["svm", "aes"]);
    }

    #[test]
    fn no_topology_lines_and_garbage() {
        let cpu = parse_cpuinfo("processor\t: 0\nmodel name : X\n\nprocessor : 1\n");
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (1, 2, 2));
        assert_eq!(cpu.model.as_deref(), Some("X"));
        assert_eq!(parse_cpuinfo(""), Cpu::default());
        assert_eq!(parse_cpuinfo("\u{0}\u{ff}::::\n:\n"), Cpu::default());
    }
}
