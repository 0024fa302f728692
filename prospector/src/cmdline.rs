//! Contract stub (owned by the prospector-agent engineer): `substruct.*` kernel args.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    pub site: Option<String>,
    pub nats: Option<String>,
    pub token: Option<String>,
    pub debug: bool,
}

/// Parses a `/proc/cmdline` line.
pub fn parse(_line: &str) -> KernelArgs {
    KernelArgs::default()
}
