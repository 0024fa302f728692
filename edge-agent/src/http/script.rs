//! iPXE script rendering: pure functions from a boot intent and a context to text.
//! No I/O, no clock, no randomness (the caller supplies the boot token).

use std::fmt::Write as _;

use substruct_wire::intent::{BootIntent, LocalBootWay};
use substruct_wire::{BootCredential, Mac, SiteId};

/// The firmware iPXE runs on (iPXE's `${platform}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// `pcbios`: legacy BIOS.
    Pcbios,
    /// `efi`: UEFI.
    Efi,
    /// Not reported or not recognised; treated like BIOS, whose local-boot line also
    /// falls back to `exit`.
    Unknown,
}

impl Platform {
    /// Parses iPXE's `${platform}` value.
    pub fn from_ipxe(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some("pcbios") => Platform::Pcbios,
            Some("efi") => Platform::Efi,
            _ => Platform::Unknown,
        }
    }
}

/// What a rendered script needs besides the intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptContext {
    /// `http://edge[:port]`, no trailing slash.
    pub base: String,
    pub site: SiteId,
    /// The NATS URL prospectors must use.
    pub nats_url: String,
    /// This boot's credential ([`BootCredential`]: signed by the site's key for `mac`),
    /// or an unsigned one-time token when the edge has no site key.
    /// `None`: the asker is not bound to `mac` (see `http::binding`); the script then
    /// carries no credential.
    pub token: Option<BootCredential>,
    /// The boot user key's seed (`SU…`) that goes with `token`: the prospector signs its
    /// NATS login with it (`substruct.seed=`). `None` without a site key or a token.
    pub login_seed: Option<String>,
    pub mac: Mac,
    pub platform: Platform,
    /// Appended to the prospector's kernel command line.
    pub extra_args: Option<String>,
}

/// The query iPXE sends back to us: `mac`, `uuid`, `buildarch` and `platform` from its settings.
pub const IPXE_QUERY: &str =
    "mac=${net0/mac}&uuid=${uuid}&buildarch=${buildarch}&platform=${platform}";

/// `{base}/boot.ipxe?mac=${net0/mac}&…`: the URL every iPXE chain ends in.
pub fn boot_script_url(base: &str) -> String {
    format!("{base}/boot.ipxe?{IPXE_QUERY}")
}

/// The prospector's kernel command line (after the kernel and any `initrd=`).
pub(crate) fn prospector_args(ctx: &ScriptContext) -> String {
    let base = &ctx.base;
    // ttyS0 last: it becomes /dev/console, so userspace output reaches the serial log.
    // BOOTIF (the pxelinux convention) names the NIC that booted, so the prospector
    // asks DHCP there first instead of waiting out every other port.
    let mut s = format!(
        "console=tty0 console=ttyS0 substruct.site={} substruct.nats={} substruct.edge={base}",
        ctx.site, ctx.nats_url
    );
    if let Some(t) = &ctx.token {
        let _ = write!(s, " substruct.token={t}");
        if let Some(seed) = &ctx.login_seed {
            let _ = write!(s, " substruct.seed={seed}");
        }
    }
    let _ = write!(
        s,
        " BOOTIF=01-{} quiet panic=-1",
        ctx.mac.to_string().replace(':', "-")
    );
    if let Some(extra) = &ctx.extra_args {
        let _ = write!(s, " {extra}");
    }
    s
}

/// Kernel command-line text from the controller: one line, no control characters.
pub(crate) fn is_safe_cmdline(cmdline: &str) -> bool {
    !cmdline.chars().any(char::is_control)
}

/// Renders the `#!ipxe` script for one machine. `None` (unknown machine) boots the
/// prospector, like `Discover`, with `substruct.edge={base}` so it can fetch disk images.
/// In an install intent's command line every `{edge}` becomes `ctx.base`.
pub fn render_boot_script(intent: Option<&BootIntent>, ctx: &ScriptContext) -> String {
    let base = &ctx.base;
    let mut s = String::from("#!ipxe\n");
    match intent {
        None | Some(BootIntent::Discover) => {
            let what = if intent.is_none() {
                "unknown machine"
            } else {
                "discover"
            };
            let _ = writeln!(
                s,
                "echo substruct {}: {} {what}, booting the prospector",
                ctx.site, ctx.mac
            );
            let _ = writeln!(
                s,
                "kernel {base}/images/prospector/vmlinuz initrd=initrd.img {}",
                prospector_args(ctx)
            );
            let _ = writeln!(s, "initrd {base}/images/prospector/initrd.img");
            s.push_str("boot\n");
        }
        Some(BootIntent::Install {
            kernel,
            initrd,
            cmdline,
        }) => {
            // `{edge}` is the controller's placeholder for this edge's base URL.
            let cmdline = cmdline.replace("{edge}", base);
            // An image name is safe in an iPXE line and a URL path (`ImageName`'s rule,
            // checked when the intent decoded).
            if !is_safe_cmdline(&cmdline) {
                return unsafe_install(ctx);
            }
            let _ = writeln!(s, "echo substruct {}: {} install", ctx.site, ctx.mac);
            let _ = write!(
                s,
                "kernel {base}/images/{kernel} initrd={}",
                initrd.file_name()
            );
            let cmdline = cmdline.trim();
            if !cmdline.is_empty() {
                let _ = write!(s, " {cmdline}");
            }
            s.push('\n');
            let _ = writeln!(s, "initrd {base}/images/{initrd}");
            s.push_str("boot\n");
        }
        Some(BootIntent::Local { way }) => {
            let how = match way {
                LocalBootWay::IpxeExit => "local",
                LocalBootWay::NoBootFile => "local (no boot file)",
            };
            let _ = writeln!(
                s,
                "echo substruct {}: {} {how}, booting the local disk",
                ctx.site, ctx.mac
            );
            match ctx.platform {
                // A failure status: on EFI_SUCCESS the firmware's boot manager stops
                // in its menu (EDK2's BdsDxe); on an error it goes on to the next
                // boot option, the disk.
                Platform::Efi => s.push_str("exit 1\n"),
                Platform::Pcbios | Platform::Unknown => {
                    s.push_str("sanboot --no-describe --drive 0x80 || exit\n")
                }
            }
        }
    }
    s
}

/// The retry script for an install intent naming an unsafe kernel, initrd or command line.
fn unsafe_install(ctx: &ScriptContext) -> String {
    render_retry_script(
        &ctx.base,
        &format!(
            "substruct {}: {}: the install intent names an unsafe kernel, initrd or command line; retrying",
            ctx.site, ctx.mac
        ),
    )
}

/// A script that explains what went wrong and asks again after 5 s. iPXE stops on an
/// HTTP error, so every problem is answered with this rather than a 4xx.
pub fn render_retry_script(base: &str, message: &str) -> String {
    let message: String = message
        .chars()
        .map(|c| if c.is_control() || c == '$' { ' ' } else { c })
        .collect();
    format!(
        "#!ipxe\necho {message}\nsleep 5\nchain --replace {}\n",
        boot_script_url(base)
    )
}

/// The answer to a bare `/boot.ipxe` (e.g. a DHCP boot file without our query): ask
/// again at once with iPXE's identity filled in.
pub fn render_identify_script(base: &str) -> String {
    format!("#!ipxe\nchain --replace {}\n", boot_script_url(base))
}

/// `pxelinux.cfg/default`: lpxelinux.0 loads `ipxe.lkrn` over HTTP and hands it a
/// one-line script on its command line.
pub fn render_pxelinux_default(base: &str) -> String {
    format!(
        "DEFAULT ipxe\nPROMPT 0\nTIMEOUT 0\nLABEL ipxe\n  LINUX {base}/ipxe.lkrn\n  APPEND ifconf -c dhcp && chain {}\n",
        boot_script_url(base)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx(platform: Platform) -> ScriptContext {
        ScriptContext {
            base: "http://10.77.0.1".into(),
            site: SiteId::new("s1").unwrap(),
            nats_url: "nats://10.77.0.1:4222".into(),
            token: Some(BootCredential::new("0123456789abcdef0123456789abcdef").unwrap()),
            login_seed: None,
            mac: Mac::parse("52:54:00:77:00:0a").unwrap(),
            platform,
            extra_args: None,
        }
    }

    const PROSPECTOR: &str = "#!ipxe
echo substruct s1: 52:54:00:77:00:0a discover, booting the prospector
kernel http://10.77.0.1/images/prospector/vmlinuz initrd=initrd.img console=tty0 console=ttyS0 substruct.site=s1 substruct.nats=nats://10.77.0.1:4222 substruct.edge=http://10.77.0.1 substruct.token=0123456789abcdef0123456789abcdef BOOTIF=01-52-54-00-77-00-0a quiet panic=-1
initrd http://10.77.0.1/images/prospector/initrd.img
boot
";

    #[test]
    fn discover_boots_the_prospector() {
        assert_eq!(
            render_boot_script(Some(&BootIntent::Discover), &ctx(Platform::Pcbios)),
            PROSPECTOR
        );
    }

    #[test]
    fn unknown_machines_boot_the_prospector_with_extra_args() {
        let mut c = ctx(Platform::Efi);
        c.extra_args = Some("substruct.debug=1".into());
        assert_eq!(
            render_boot_script(None, &c),
            "#!ipxe
echo substruct s1: 52:54:00:77:00:0a unknown machine, booting the prospector
kernel http://10.77.0.1/images/prospector/vmlinuz initrd=initrd.img console=tty0 console=ttyS0 substruct.site=s1 substruct.nats=nats://10.77.0.1:4222 substruct.edge=http://10.77.0.1 substruct.token=0123456789abcdef0123456789abcdef BOOTIF=01-52-54-00-77-00-0a quiet panic=-1 substruct.debug=1
initrd http://10.77.0.1/images/prospector/initrd.img
boot
"
        );
    }

    #[test]
    fn install_boots_the_named_kernel() {
        let intent = BootIntent::Install {
            kernel: "debian-12/linux".parse().unwrap(),
            initrd: "debian-12/initrd.gz".parse().unwrap(),
            cmdline: "auto=true priority=critical url=http://10.77.0.1/p/x".into(),
        };
        assert_eq!(
            render_boot_script(Some(&intent), &ctx(Platform::Pcbios)),
            "#!ipxe
echo substruct s1: 52:54:00:77:00:0a install
kernel http://10.77.0.1/images/debian-12/linux initrd=initrd.gz auto=true priority=critical url=http://10.77.0.1/p/x
initrd http://10.77.0.1/images/debian-12/initrd.gz
boot
"
        );
    }

    #[test]
    fn install_replaces_every_edge_placeholder() {
        let intent = BootIntent::Install {
            kernel: "debian-12/linux".parse().unwrap(),
            initrd: "debian-12/initrd.gz".parse().unwrap(),
            cmdline: "url={edge}/install/t1/preseed.cfg  x={edge}{edge} {edg} {EDGE}".into(),
        };
        let mut c = ctx(Platform::Efi);
        c.base = "http://10.77.0.1:8080".into();
        assert_eq!(
            render_boot_script(Some(&intent), &c),
            "#!ipxe
echo substruct s1: 52:54:00:77:00:0a install
kernel http://10.77.0.1:8080/images/debian-12/linux initrd=initrd.gz url=http://10.77.0.1:8080/install/t1/preseed.cfg  x=http://10.77.0.1:8080http://10.77.0.1:8080 {edg} {EDGE}
initrd http://10.77.0.1:8080/images/debian-12/initrd.gz
boot
"
        );
        // The safety check still sees the whole line after the replacement.
        let bad = BootIntent::Install {
            kernel: "linux".parse().unwrap(),
            initrd: "initrd".parse().unwrap(),
            cmdline: "{edge}\nshell".into(),
        };
        assert!(
            render_boot_script(Some(&bad), &c).contains("unsafe kernel, initrd or command line")
        );
    }

    #[test]
    fn the_prospector_learns_the_edge_base() {
        let mut c = ctx(Platform::Pcbios);
        c.base = "http://192.0.2.7:8080".into();
        let script = render_boot_script(None, &c);
        let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
        let edges: Vec<&str> = kernel
            .split(' ')
            .filter(|w| w.starts_with("substruct.edge="))
            .collect();
        assert_eq!(edges, ["substruct.edge=http://192.0.2.7:8080"]);
        assert!(kernel.starts_with("kernel http://192.0.2.7:8080/images/prospector/vmlinuz "));
    }

    #[test]
    fn install_with_an_unsafe_name_retries() {
        // An intent cannot hold an unsafe image name: it does not decode.
        for kernel in ["../../etc/passwd", "linux\nshell", "/abs/linux"] {
            assert!(
                substruct_wire::ImageName::parse(kernel).is_err(),
                "{kernel:?}"
            );
        }
        // A command line with a line break would run its own iPXE commands.
        let intent = BootIntent::Install {
            kernel: "linux".parse().unwrap(),
            initrd: "initrd".parse().unwrap(),
            cmdline: "a\nshell".into(),
        };
        assert_eq!(
            render_boot_script(Some(&intent), &ctx(Platform::Pcbios)),
            "#!ipxe
echo substruct s1: 52:54:00:77:00:0a: the install intent names an unsafe kernel, initrd or command line; retrying
sleep 5
chain --replace http://10.77.0.1/boot.ipxe?mac=${net0/mac}&uuid=${uuid}&buildarch=${buildarch}&platform=${platform}
"
        );
    }

    #[test]
    fn local_boot_by_platform() {
        let local = BootIntent::Local {
            way: LocalBootWay::IpxeExit,
        };
        assert_eq!(
            render_boot_script(Some(&local), &ctx(Platform::Pcbios)),
            "#!ipxe
echo substruct s1: 52:54:00:77:00:0a local, booting the local disk
sanboot --no-describe --drive 0x80 || exit
"
        );
        assert_eq!(
            render_boot_script(Some(&local), &ctx(Platform::Efi)),
            "#!ipxe
echo substruct s1: 52:54:00:77:00:0a local, booting the local disk
exit 1
"
        );
        assert_eq!(
            render_boot_script(Some(&local), &ctx(Platform::Unknown)),
            render_boot_script(Some(&local), &ctx(Platform::Pcbios))
        );
        let nbf = BootIntent::Local {
            way: LocalBootWay::NoBootFile,
        };
        assert_eq!(
            render_boot_script(Some(&nbf), &ctx(Platform::Efi)),
            "#!ipxe
echo substruct s1: 52:54:00:77:00:0a local (no boot file), booting the local disk
exit 1
"
        );
    }

    #[test]
    fn retry_script_and_pxelinux_config() {
        assert_eq!(
            render_retry_script("http://10.77.0.1:8080", "no mac=${x}\nhere"),
            "#!ipxe
echo no mac= {x} here
sleep 5
chain --replace http://10.77.0.1:8080/boot.ipxe?mac=${net0/mac}&uuid=${uuid}&buildarch=${buildarch}&platform=${platform}
"
        );
        assert_eq!(
            render_pxelinux_default("http://10.77.0.1"),
            "DEFAULT ipxe
PROMPT 0
TIMEOUT 0
LABEL ipxe
  LINUX http://10.77.0.1/ipxe.lkrn
  APPEND ifconf -c dhcp && chain http://10.77.0.1/boot.ipxe?mac=${net0/mac}&uuid=${uuid}&buildarch=${buildarch}&platform=${platform}
"
        );
        assert_eq!(
            render_identify_script("http://10.77.0.1"),
            "#!ipxe
chain --replace http://10.77.0.1/boot.ipxe?mac=${net0/mac}&uuid=${uuid}&buildarch=${buildarch}&platform=${platform}
"
        );
        assert_eq!(Platform::from_ipxe(Some("efi")), Platform::Efi);
        assert_eq!(Platform::from_ipxe(Some("pcbios")), Platform::Pcbios);
        assert_eq!(Platform::from_ipxe(Some("${platform}")), Platform::Unknown);
        assert_eq!(Platform::from_ipxe(None), Platform::Unknown);
    }
}
