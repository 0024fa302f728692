//! The one gate for system tests: tests that need the host (root, `ip netns`, a tool
//! such as `busybox` or `dhcrelay`, `/dev/net/tun`, a file shipped by a package) ask
//! here whether they can run.
//!
//! By default a test whose prerequisites are missing prints `SKIPPED: why` and passes,
//! so `cargo test` works on a developer's laptop. With
//! `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1` (`deploy/test` sets it) the same test fails
//! instead, naming what is missing: under the project's test command nothing skips
//! silently.
//!
//! ```no_run
//! use substruct_testkit::gate::{system_test, Need};
//! # fn main() -> anyhow::Result<()> {
//! if !system_test(&[Need::Netns, Need::Tool("busybox")]) {
//!     return Ok(());
//! }
//! // ... the test ...
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The environment variable that turns a skip into a failure (set and not `0`).
pub const REQUIRE_SYSTEM_TESTS: &str = "SUBSTRUCT_REQUIRE_SYSTEM_TESTS";

/// Something a system test needs from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Root and a working `ip netns` (network namespaces, veths, port 67).
    Netns,
    /// `/dev/net/tun`, for tap devices (QEMU NICs).
    Tun,
    /// A program on `PATH` (or an absolute path that is executable).
    Tool(&'a str),
    /// A file that must exist (e.g. a boot loader a package ships).
    File(&'a str),
}

/// Whether `SUBSTRUCT_REQUIRE_SYSTEM_TESTS` asks that no system test skips.
pub fn required() -> bool {
    std::env::var_os(REQUIRE_SYSTEM_TESTS).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The first of `needs` the host does not meet, as a sentence; `None` when all are met.
pub fn unmet(needs: &[Need<'_>]) -> Option<String> {
    needs.iter().find_map(|need| match *need {
        Need::Netns if !can_use_netns() => Some("needs root and `ip netns`".to_owned()),
        Need::Tun if !Path::new("/dev/net/tun").exists() => {
            Some("needs /dev/net/tun (tap devices)".to_owned())
        }
        Need::Tool(tool) if find_tool(tool).is_none() => {
            Some(format!("{tool} is not installed (not on PATH)"))
        }
        Need::File(file) if !Path::new(file).exists() => Some(format!("{file} is missing")),
        _ => None,
    })
}

/// The gate itself: `true` when the test can run (`why_not` is `None`). Otherwise,
/// under `SUBSTRUCT_REQUIRE_SYSTEM_TESTS` it panics naming the reason (the test fails);
/// without it, it prints `SKIPPED: reason` and returns `false` (the test returns early
/// and passes).
///
/// Use it directly when a test works out its own reason (e.g. a build step that may
/// fail for want of a package); [`system_test`] covers the usual needs.
#[track_caller]
pub fn gate(why_not: Option<String>) -> bool {
    let Some(why) = why_not else {
        return true;
    };
    assert!(
        !required(),
        "system test cannot run: {why} ({REQUIRE_SYSTEM_TESTS} is set, so this is a failure, not a skip)"
    );
    eprintln!("SKIPPED: {why} (set {REQUIRE_SYSTEM_TESTS}=1 to make this a failure)");
    false
}

/// `true` when every one of `needs` is met; otherwise what [`gate`] does.
#[track_caller]
pub fn system_test(needs: &[Need<'_>]) -> bool {
    gate(unmet(needs))
}

/// True when running as root with `ip netns` available (network-namespace tests).
///
/// Prefer [`system_test`]`(&[Need::Netns])` in tests: it goes through the gate.
pub fn can_use_netns() -> bool {
    is_root()
        && Command::new("ip")
            .args(["netns", "list"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// True when the effective user id is 0 (read from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Where `tool` is: itself when it contains a `/` and is executable, else the first
/// executable `PATH` entry of that name.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmet_names_the_first_missing_need() {
        assert_eq!(unmet(&[]), None);
        assert_eq!(unmet(&[Need::Tool("sh")]), None);
        assert_eq!(
            unmet(&[Need::Tool("sh"), Need::Tool("no-such-tool-xyz")]),
            Some("no-such-tool-xyz is not installed (not on PATH)".to_owned())
        );
        assert_eq!(
            unmet(&[Need::File("/no/such/file")]),
            Some("/no/such/file is missing".to_owned())
        );
        assert!(find_tool("/bin/sh").is_some());
        assert!(find_tool("/etc/passwd").is_none());
    }

    #[test]
    fn gate_passes_when_nothing_is_missing() {
        assert!(gate(None));
    }
}
