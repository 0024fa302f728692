//! The Secure Boot chain's last configurable stage: GRUB configs rendered per machine.
//!
//! Under UEFI Secure Boot the firmware runs only loaders signed by a key it trusts, and
//! iPXE is not signed. So a machine whose loader is `shim` ([`crate::dhcp::UefiLoader::Shim`])
//! gets Debian's shim (signed by Microsoft's UEFI CA) over TFTP, shim loads Debian's
//! signed network GRUB (`grubx64.efi`, from the same server), and GRUB, whose prefix is
//! `(tftp,<edge>)/grub`, reads `grub/grub.cfg`: [`GRUB_CFG`], which sources this
//! machine's config, `grub/substruct/<mac>.cfg`. The edge renders that one when asked,
//! from the machine's intent, like an iPXE script ([`render_grub_config`]). Debian's
//! signed GRUB has no HTTP client, so the kernel and initrd come over TFTP too
//! (`images/…` is the images directory), and shim checks the kernel's signature: only a
//! kernel signed by Debian (or the machine's enrolled keys) boots.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::Bytes;
use substruct_wire::intent::{BootIntent, LocalBootWay};
use substruct_wire::Mac;

use super::script::{is_safe_cmdline, prospector_args, Platform, ScriptContext};
use super::{HttpState, Prepared};

/// The name GRUB reads first (its prefix is `/grub` on the TFTP server).
pub const GRUB_CFG_NAME: &str = "grub/grub.cfg";

/// Where each machine's config is asked for, before `<mac>.cfg`.
const MACHINE_DIR: &str = "grub/substruct/";

/// `grub/grub.cfg`: the same for every machine. It sources the machine's own config and,
/// should that fail (the edge refused or is unreachable), says so and starts over.
pub const GRUB_CFG: &str = "\
# Substruct: every machine's config is rendered by the edge from its boot intent.
set timeout=0
source \"${prefix}/substruct/${net_default_mac}.cfg\"
echo \"substruct: no boot config from the edge for ${net_default_mac}; retrying in 5 s\"
sleep 5
configfile \"${prefix}/grub.cfg\"
";

/// One word of a GRUB command line, quoted when it holds anything GRUB's parser would
/// read (spaces, `$`, quotes, `;`, braces, ...).
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/=+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Every word of a kernel command line, quoted for GRUB.
fn quote_args(args: &str) -> String {
    args.split_whitespace()
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A message for GRUB's `echo`, with nothing GRUB would expand.
fn echo(s: &mut String, message: &str) {
    let _ = writeln!(s, "echo {}", quote(message));
}

/// The config GRUB reads for one machine: boot the prospector (unknown or discover), the
/// installer (install), or return to the firmware so it boots the next entry, the local
/// disk (local). Paths are on the TFTP server GRUB came from. Pure: no I/O.
pub fn render_grub_config(intent: Option<&BootIntent>, ctx: &ScriptContext) -> String {
    let mut s = String::from("set timeout=0\n");
    match intent {
        None | Some(BootIntent::Discover) => {
            let what = if intent.is_none() {
                "unknown machine"
            } else {
                "discover"
            };
            echo(
                &mut s,
                &format!(
                    "substruct {}: {} {what}, booting the prospector (Secure Boot chain)",
                    ctx.site, ctx.mac
                ),
            );
            let _ = writeln!(
                s,
                "linux /images/prospector/vmlinuz {}",
                quote_args(&prospector_args(ctx))
            );
            s.push_str("initrd /images/prospector/initrd.img\nboot\n");
        }
        Some(BootIntent::Install {
            kernel,
            initrd,
            cmdline,
        }) => {
            let cmdline = cmdline.replace("{edge}", &ctx.base);
            if !is_safe_cmdline(&cmdline) {
                return render_grub_retry(&format!(
                    "substruct {}: {}: the install intent names an unsafe kernel, initrd or command line; retrying",
                    ctx.site, ctx.mac
                ));
            }
            echo(
                &mut s,
                &format!("substruct {}: {} install", ctx.site, ctx.mac),
            );
            let _ = writeln!(s, "linux /images/{kernel} {}", quote_args(&cmdline));
            let _ = writeln!(s, "initrd /images/{initrd}\nboot");
        }
        Some(BootIntent::Local { way }) => {
            let how = match way {
                LocalBootWay::IpxeExit => "local",
                LocalBootWay::NoBootFile => "local (no boot file)",
            };
            echo(
                &mut s,
                &format!(
                    "substruct {}: {} {how}, booting the local disk",
                    ctx.site, ctx.mac
                ),
            );
            // Back to shim, then the firmware, which boots the next entry: the disk.
            s.push_str("exit\n");
        }
    }
    s
}

/// A config that says what went wrong and starts over after 5 s.
pub fn render_grub_retry(message: &str) -> String {
    let mut s = String::new();
    echo(&mut s, message);
    s.push_str("sleep 5\nconfigfile \"${prefix}/grub.cfg\"\n");
    s
}

/// The MAC in `grub/substruct/<mac>.cfg`, as GRUB's `${net_default_mac}` spells it.
fn machine_of(name: &str) -> Option<Option<Mac>> {
    let rest = name.strip_prefix(MACHINE_DIR)?;
    let mac = rest
        .strip_suffix(".cfg")
        .and_then(|m| Mac::parse(m).ok())
        .filter(Mac::is_usable);
    Some(mac)
}

/// The TFTP server's [`crate::tftp::Rendered`] files: each machine's GRUB config, for the
/// asker bound to that MAC (as for iPXE scripts: a credential only for the machine that
/// holds the MAC's address, no install config to anyone else).
#[derive(Debug, Clone)]
pub struct GrubConfigs {
    state: HttpState,
}

impl GrubConfigs {
    pub fn new(state: HttpState) -> Self {
        Self { state }
    }
}

impl crate::tftp::Rendered for GrubConfigs {
    fn render(&self, name: &str, peer: IpAddr) -> Option<Bytes> {
        if name == GRUB_CFG_NAME {
            return Some(Bytes::from_static(GRUB_CFG.as_bytes()));
        }
        let text = match machine_of(name)? {
            None => {
                tracing::warn!(%peer, name, "grub: a machine config name without a valid MAC");
                render_grub_retry(
                    "substruct: the GRUB config name carried no valid MAC address; retrying",
                )
            }
            Some(mac) => match self.state.prepare_boot(peer, mac, Platform::Efi) {
                Prepared::Ready { intent, ctx, bound } => {
                    let kind = super::intent_kind(intent.as_ref());
                    tracing::info!(%peer, %mac, intent = kind, bound, "grub config");
                    render_grub_config(intent.as_ref(), &ctx)
                }
                Prepared::Retry(message) => render_grub_retry(message),
            },
        };
        Some(Bytes::from(text))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use substruct_wire::{BootCredential, SiteId};

    fn ctx() -> ScriptContext {
        ScriptContext {
            base: "http://10.77.0.1".into(),
            site: SiteId::new("s1").unwrap(),
            nats_url: "nats://10.77.0.1:4222".into(),
            token: Some(BootCredential::new("0123456789abcdef0123456789abcdef").unwrap()),
            login_seed: None,
            mac: Mac::parse("52:54:00:77:00:0a").unwrap(),
            platform: Platform::Efi,
            extra_args: None,
        }
    }

    #[test]
    fn discover_boots_the_prospector_over_tftp() {
        assert_eq!(
            render_grub_config(Some(&BootIntent::Discover), &ctx()),
            "set timeout=0
echo 'substruct s1: 52:54:00:77:00:0a discover, booting the prospector (Secure Boot chain)'
linux /images/prospector/vmlinuz console=tty0 console=ttyS0 substruct.site=s1 substruct.nats=nats://10.77.0.1:4222 substruct.edge=http://10.77.0.1 substruct.token=0123456789abcdef0123456789abcdef BOOTIF=01-52-54-00-77-00-0a quiet panic=-1
initrd /images/prospector/initrd.img
boot
"
        );
    }

    #[test]
    fn install_quotes_what_grub_would_expand() {
        let intent = BootIntent::Install {
            kernel: "debian-12/linux".parse().unwrap(),
            initrd: "debian-12/initrd.gz".parse().unwrap(),
            cmdline: "auto=true url={edge}/p/x a=$root b=it's c=\"q\" ;reboot".into(),
        };
        assert_eq!(
            render_grub_config(Some(&intent), &ctx()),
            "set timeout=0
echo 'substruct s1: 52:54:00:77:00:0a install'
linux /images/debian-12/linux auto=true url=http://10.77.0.1/p/x 'a=$root' 'b=it'\\''s' 'c=\"q\"' ';reboot'
initrd /images/debian-12/initrd.gz
boot
"
        );
    }

    #[test]
    fn unsafe_install_retries_and_local_exits() {
        let intent = BootIntent::Install {
            kernel: "k".parse().unwrap(),
            initrd: "i".parse().unwrap(),
            cmdline: "a\nlinux /evil".into(),
        };
        let text = render_grub_config(Some(&intent), &ctx());
        assert!(!text.contains("linux "), "{text}");
        assert!(text.contains("configfile"), "{text}");
        let local = BootIntent::Local {
            way: LocalBootWay::IpxeExit,
        };
        assert!(render_grub_config(Some(&local), &ctx()).ends_with("exit\n"));
    }

    #[test]
    fn machine_names() {
        assert_eq!(
            machine_of("grub/substruct/52:54:00:77:00:0a.cfg"),
            Some(Some(Mac::parse("52:54:00:77:00:0a").unwrap()))
        );
        assert_eq!(machine_of("grub/substruct/nonsense.cfg"), Some(None));
        assert_eq!(
            machine_of("grub/substruct/ff:ff:ff:ff:ff:ff.cfg"),
            Some(None)
        );
        assert_eq!(machine_of("grub/grub.cfg"), None);
        assert_eq!(machine_of("images/prospector/vmlinuz"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a=b"), "a=b");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("x y"), "'x y'");
        assert_eq!(quote("${x}"), "'${x}'");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }
}
