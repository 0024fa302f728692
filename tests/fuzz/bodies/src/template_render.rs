use std::sync::OnceLock;

use substruct_controller::profile::{sample_machine, Method, Params, Profile};
use substruct_controller::record::MachineRecord;
use substruct_wire::BootToken;

/// Template rendering (minijinja with fuel): a fuzzed install template, or a fuzzed
/// `params.hostname_pattern`, rendered against the sample machine through
/// `Profile::render_files`.
///
/// Input: byte 0 picks the mode, the rest is UTF-8 text.
/// - Bit 0 set: the text is the hostname pattern, with a fixed template
///   (`{{ hostname }} {{ callback_url }}`); otherwise it is the template.
/// - Bit 1 set: an autoinstall profile; otherwise a kickstart one.
pub fn template_render(data: &[u8]) {
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
    let (machine, token) = fixture();
    let _ = profile.render_files(machine, token);
}

/// The sample machine and a boot token, built once.
fn fixture() -> &'static (MachineRecord, BootToken) {
    static FIXTURE: OnceLock<(MachineRecord, BootToken)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        (
            sample_machine(),
            BootToken::new("0123456789abcdef0123456789abcdef").expect("a valid boot token"),
        )
    })
}
