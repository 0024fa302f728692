//! PID 1 plumbing that is not networking: file systems, kernel modules, power, the
//! debug shell. Each function reports on the console and never panics.

use std::ffi::CStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

use super::console;

/// Written by `deploy/prospector-image/build`: one `.ko` path per line, dependencies first.
pub const MODULE_ORDER_FILE: &str = "/lib/modules/substruct.order";
/// The debug shell, present only in images built with busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// What a PID 1 mounts before anything else: (source, target, fstype, flags, data).
const MOUNTS: &[(&str, &str, &str, MsFlags, Option<&str>)] = &[
    (
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        None,
    ),
    (
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        None,
    ),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=1777"),
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=0755"),
    ),
];

/// Mounts proc, sysfs, devtmpfs and the tmpfs dirs; an already-mounted target is fine.
/// Returns how many mounts failed.
pub fn mount_filesystems() -> usize {
    let mut failed = 0;
    for (source, target, fstype, flags, data) in MOUNTS {
        if let Err(e) = std::fs::create_dir_all(target) {
            console::error(&format!("mkdir {target}: {e}"));
        }
        match mount(Some(*source), *target, Some(*fstype), *flags, *data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => {
                failed += 1;
                console::error(&format!("mount {fstype} on {target}: {e}"));
            }
        }
    }
    // The kernel's usermode modprobe helper does not exist here; stop it being called.
    let _ = std::fs::write("/proc/sys/kernel/modprobe", "\n");
    failed
}

/// The `.ko` paths of an order file: one per line, blanks and `#` comments skipped.
pub fn parse_module_order(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(PathBuf::from)
        .collect()
}

/// Counts of what [`load_modules`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleLoadSummary {
    pub loaded: usize,
    pub already: usize,
    pub failed: usize,
    /// Modules chosen because a present device matched their aliases.
    pub matched: Vec<String>,
}

/// Loads every module named in `order_file` with `finit_module`, in order.
/// `EEXIST` (already loaded or built in) is success; other errors are logged and skipped.
pub fn load_modules(order_file: &Path) -> ModuleLoadSummary {
    let mut summary = ModuleLoadSummary::default();
    let text = match std::fs::read_to_string(order_file) {
        Ok(t) => t,
        Err(e) => {
            console::error(&format!(
                "cannot read module list {}: {e}",
                order_file.display()
            ));
            return summary;
        }
    };
    for path in parse_module_order(&text) {
        load_one(&path, &mut summary);
    }
    summary
}

/// Written by the build script: `MODULE PATH...` — each wanted module's `.ko` chain,
/// dependencies first.
pub const MODULE_DEPS_FILE: &str = "/lib/modules/substruct.deps";
/// Written by the build script: `MODULE PATTERN` — the module's `modinfo` aliases
/// (`*` for modules always loaded, such as `sd_mod`).
pub const MODULE_ALIAS_FILE: &str = "/lib/modules/substruct.modalias";

/// `MODULE PATH...` lines.
pub fn parse_module_deps(text: &str) -> Vec<(String, Vec<PathBuf>)> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let module = words.next().filter(|w| !w.starts_with('#'))?;
            Some((module.to_owned(), words.map(PathBuf::from).collect()))
        })
        .collect()
}

/// `MODULE PATTERN` lines.
pub fn parse_module_aliases(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (module, pattern) = l.trim().split_once(char::is_whitespace)?;
            (!module.starts_with('#')).then(|| (module.to_owned(), pattern.trim().to_owned()))
        })
        .collect()
}

/// Shell-style match with `*` and `?` (what modalias patterns use); other bytes literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Modules (in `aliases` order, each once) with a pattern matching one of `modaliases`.
pub fn modules_for(aliases: &[(String, String)], modaliases: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (module, pattern) in aliases {
        if out.contains(module) {
            continue;
        }
        if modaliases.iter().any(|m| glob_match(pattern, m)) {
            out.push(module.clone());
        }
    }
    out
}

/// Every device's `modalias` under `/sys/bus/*/devices/*`.
fn present_modaliases() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(buses) = std::fs::read_dir("/sys/bus") else {
        return out;
    };
    for bus in buses.filter_map(Result::ok) {
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for dev in devices.filter_map(Result::ok) {
            if let Ok(alias) = std::fs::read_to_string(dev.path().join("modalias")) {
                out.push(alias.trim().to_owned());
            }
        }
    }
    out
}

/// Loads only the modules whose aliases match present devices, in rounds (a bus driver
/// such as virtio_pci makes new devices appear). Falls back to [`load_modules`] on the
/// whole order file when the image has no alias table.
pub fn load_modules_for_hardware() -> ModuleLoadSummary {
    let (Ok(deps), Ok(aliases)) = (
        std::fs::read_to_string(MODULE_DEPS_FILE),
        std::fs::read_to_string(MODULE_ALIAS_FILE),
    ) else {
        return load_modules(Path::new(MODULE_ORDER_FILE));
    };
    let chains = parse_module_deps(&deps);
    let aliases = parse_module_aliases(&aliases);
    let mut summary = ModuleLoadSummary::default();
    let mut done_modules: Vec<String> = Vec::new();
    let mut done_paths: Vec<PathBuf> = Vec::new();
    for _round in 0..4 {
        let wanted: Vec<String> = modules_for(&aliases, &present_modaliases())
            .into_iter()
            .filter(|m| !done_modules.contains(m))
            .collect();
        if wanted.is_empty() {
            break;
        }
        for module in wanted {
            let chain = chains
                .iter()
                .find(|(m, _)| *m == module)
                .map(|(_, c)| c.as_slice())
                .unwrap_or_default();
            for path in chain {
                if done_paths.contains(path) {
                    continue;
                }
                load_one(path, &mut summary);
                done_paths.push(path.clone());
            }
            summary.matched.push(module.clone());
            done_modules.push(module);
        }
    }
    summary
}

fn load_one(path: &Path, summary: &mut ModuleLoadSummary) {
    let no_params: &CStr = c"";
    let result = File::open(path).map_err(|e| e.to_string()).and_then(|f| {
        finit_module(&f, no_params, ModuleInitFlags::empty()).map_err(|e| match e {
            Errno::EEXIST => "EEXIST".to_owned(),
            other => other.to_string(),
        })
    });
    match result {
        Ok(()) => summary.loaded += 1,
        Err(e) if e == "EEXIST" => summary.already += 1,
        Err(e) => {
            summary.failed += 1;
            // ENODEV here usually means "no such hardware" (e.g. a CPU-specific crypto
            // module under QEMU); log and go on.
            console::step(&format!("module {} not loaded: {e}", path.display()));
        }
    }
}

/// Flushes file systems, then powers off; if that fails, waits forever.
pub fn power_off() -> ! {
    power(RebootMode::RB_POWER_OFF, "power off")
}

/// Flushes file systems, then reboots; if that fails, waits forever.
pub fn reboot_now() -> ! {
    power(RebootMode::RB_AUTOBOOT, "reboot")
}

fn power(mode: RebootMode, what: &str) -> ! {
    console::step(&format!("{what} now"));
    nix::unistd::sync();
    loop {
        let Err(e) = reboot(mode);
        console::error(&format!("{what} failed: {e}; retrying in 10 s"));
        std::thread::sleep(Duration::from_secs(10));
    }
}

/// Parks the calling thread forever (PID 1 must never return).
pub fn wait_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// Starts `/bin/busybox sh` on `/dev/console` in a thread that restarts it whenever it
/// exits. Returns false (and says why) when busybox is not in the image.
pub fn spawn_debug_shell() -> bool {
    if !Path::new(BUSYBOX).exists() {
        console::error(&format!(
            "substruct.debug=1 but {BUSYBOX} is not in this image"
        ));
        return false;
    }
    let spawned = std::thread::Builder::new()
        .name("debug-shell".into())
        .spawn(|| {
            // Applet links so the shell has ls, ip, cat ...; harmless when they exist.
            let _ = Command::new(BUSYBOX)
                .args(["--install", "-s", "/bin"])
                .status();
            loop {
                match run_shell_once() {
                    Ok(status) => console::step(&format!("debug shell exited ({status})")),
                    Err(e) => console::error(&format!("debug shell: {e}")),
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    match spawned {
        Ok(_) => {
            console::step("debug shell on /dev/console (substruct.debug=1)");
            true
        }
        Err(e) => {
            console::error(&format!("cannot start debug shell thread: {e}"));
            false
        }
    }
}

fn run_shell_once() -> std::io::Result<std::process::ExitStatus> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")?;
    // `setsid -c` gives the shell a session with the console as controlling terminal.
    Command::new(BUSYBOX)
        .args(["setsid", "-c", BUSYBOX, "sh", "-l"])
        .env("PATH", "/bin:/sbin")
        .env("PS1", "prospector# ")
        .stdin(Stdio::from(tty.try_clone()?))
        .stdout(Stdio::from(tty.try_clone()?))
        .stderr(Stdio::from(tty))
        .status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_order_skips_comments_and_blanks() {
        let text =
            "# built for 6.1.0\n/lib/modules/k/virtio.ko\n\n  /lib/modules/k/virtio_net.ko  \n";
        assert_eq!(
            parse_module_order(text),
            [
                PathBuf::from("/lib/modules/k/virtio.ko"),
                PathBuf::from("/lib/modules/k/virtio_net.ko")
            ]
        );
    }

    #[test]
    fn globs_match_modaliases() {
        let pci = "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00";
        assert!(glob_match("pci:v00001AF4d*sv*sd*bc*sc*i*", pci));
        assert!(!glob_match("pci:v00008086d*sv*sd*bc*sc*i*", pci));
        assert!(glob_match(
            "virtio:d00000001v*",
            "virtio:d00000001v00001AF4"
        ));
        assert!(!glob_match(
            "virtio:d00000001v*",
            "virtio:d00000002v00001AF4"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn only_matching_modules_are_chosen() {
        let aliases = parse_module_aliases(
            "virtio_pci pci:v00001AF4d*sv*sd*bc*sc*i*\n\
             e1000 pci:v00008086d0000100Esv*sd*bc*sc*i*\n\
             virtio_net virtio:d00000001v*\n\
             sd_mod *\n\
             virtio_pci pci:v00001AF4d*\n",
        );
        let present = ["pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00".to_owned()];
        assert_eq!(modules_for(&aliases, &present), ["virtio_pci", "sd_mod"]);
        let present = ["virtio:d00000001v00001AF4".to_owned()];
        assert_eq!(modules_for(&aliases, &present), ["virtio_net", "sd_mod"]);
        let deps = parse_module_deps("virtio_net /m/virtio.ko /m/virtio_net.ko\n");
        assert_eq!(deps[0].0, "virtio_net");
        assert_eq!(deps[0].1.len(), 2);
    }

    #[test]
    fn missing_order_file_loads_nothing() {
        let summary = load_modules(Path::new("/nonexistent/substruct.order"));
        assert_eq!(summary, ModuleLoadSummary::default());
    }
}
