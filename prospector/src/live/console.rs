//! Console lines: the only output an operator (and the lab test) sees before the network
//! is up. Every line starts with `substruct-prospector:` or is one of the fixed markers.

use std::io::Write;

/// Printed first, before anything can fail.
pub const MARKER_READY: &str = "SUBSTRUCT-PROSPECTOR-READY";
/// `SUBSTRUCT-NET-UP if=eth0 ip=10.0.0.5/24`
pub const MARKER_NET_UP: &str = "SUBSTRUCT-NET-UP";
/// `SUBSTRUCT-REPORTED machine=<id>`
pub const MARKER_REPORTED: &str = "SUBSTRUCT-REPORTED";
/// `SUBSTRUCT-ERROR <what>`
pub const MARKER_ERROR: &str = "SUBSTRUCT-ERROR";

/// Seconds since boot from `/proc/uptime`, when readable.
pub fn uptime() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Writes one line to the console (stdout) and flushes; never fails.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// `substruct-prospector: <step> (t=<uptime>s)`
pub fn step(text: &str) {
    match uptime() {
        Some(t) => line(&format!("substruct-prospector: {text} (t={t:.2}s)")),
        None => line(&format!("substruct-prospector: {text}")),
    }
}

/// `SUBSTRUCT-ERROR <what>`
pub fn error(what: &str) {
    line(&format!("{MARKER_ERROR} {what}"));
}

/// Formats an error with its whole `source()` chain: `outer: middle: root`.
pub use substruct_runtime::error_chain as chain;

/// Prints panics on the console as `SUBSTRUCT-ERROR panic ...` lines. The hook returns, so
/// the panic unwinds to the `catch_unwind` in [`super::run_as_init`] (or ends the tokio task
/// it happened in), which decides what PID 1 does next.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        error(&format!("panic in thread {name}: {info}"));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_lists_every_cause() {
        let err = Outer(std::io::Error::other("root cause"));
        assert_eq!(chain(&err), "outer: root cause");
    }
}
