//! Template rendering (minijinja with fuel): a fuzzed install template, or a fuzzed
//! `params.hostname_pattern`, rendered against the sample machine through
//! `Profile::render_files`.
//!
//! Byte 0 bit 0: the text is the hostname pattern (with a fixed template); otherwise
//! it is the template.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use substruct_controller::profile::{sample_machine, Method, Params, Profile};
use substruct_controller::record::MachineRecord;
use substruct_wire::BootToken;

fn machine() -> &'static MachineRecord {
    static MACHINE: OnceLock<MachineRecord> = OnceLock::new();
    MACHINE.get_or_init(sample_machine)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (template, hostname_pattern) = if mode & 1 != 0 {
        (
            "{{ hostname }} {{ callback_url }}".to_owned(),
            Some(text.to_owned()),
        )
    } else {
        (text.to_owned(), None)
    };
    let profile = Profile {
        name: "fuzz".into(),
        description: None,
        method: if mode & 2 != 0 {
            Method::Autoinstall
        } else {
            Method::Kickstart
        },
        kernel: Some("os/vmlinuz".into()),
        initrd: Some("os/initrd.img".into()),
        image: None,
        target_disk: None,
        cmdline: None,
        template: Some(template),
        params: Params {
            hostname_pattern,
            ..Params::default()
        },
    };
    let token = BootToken::new("0123456789abcdef0123456789abcdef").unwrap();
    let _ = profile.render_files(machine(), &token);
});
