//! The `substruct.*` kernel arguments the edge puts on the live image's command line:
//! `substruct.site=NAME substruct.nats=URL substruct.token=TOKEN substruct.seed=SEED
//! substruct.edge=URL substruct.net=ipv6 substruct.debug=1`.
//!
//! Pure: takes the text of `/proc/cmdline`, returns what it found. Unknown arguments
//! (the kernel's own, other `substruct.*` keys) are ignored; the last occurrence of a
//! key wins, as with the kernel's own parameters. Values may be double-quoted.

/// The `substruct.*` arguments found on a kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    pub site: Option<String>,
    pub nats: Option<String>,
    pub token: Option<String>,
    /// The boot user key's seed (`SU…`): with the token (a NATS user JWT) it is this
    /// boot's login to the site's leaf node.
    pub seed: Option<String>,
    /// The edge's HTTP base URL (`http://10.77.0.1:8080`): disk images come from
    /// `{edge}/images/…`.
    pub edge: Option<String>,
    /// How the network comes up: `ipv6` (an IPv6-only site: the address by SLAAC, no
    /// DHCPv4); absent: DHCPv4.
    pub net: Option<String>,
    pub debug: bool,
}

/// Kernel argument naming the site.
pub const ARG_SITE: &str = "substruct.site";
/// Kernel argument naming the NATS URL.
pub const ARG_NATS: &str = "substruct.nats";
/// Kernel argument carrying the one-time boot token.
pub const ARG_TOKEN: &str = "substruct.token";
/// Kernel argument carrying the boot user key's seed (`SU…`) that goes with the token.
pub const ARG_SEED: &str = "substruct.seed";
/// Kernel argument naming the edge's HTTP base URL.
pub const ARG_EDGE: &str = "substruct.edge";
/// Kernel argument naming how the network comes up (`ipv6`).
pub const ARG_NET: &str = "substruct.net";
/// Kernel argument turning on debug logging.
pub const ARG_DEBUG: &str = "substruct.debug";

/// Parses a `/proc/cmdline` line.
pub fn parse(line: &str) -> KernelArgs {
    let mut args = KernelArgs::default();
    for word in split_words(line) {
        // `"key=value with spaces"` is quoted as a whole; `key="value"` only in its value.
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (unquote(k), Some(unquote(v))),
            None => (unquote(&word), None),
        };
        let non_empty = |v: Option<String>| v.filter(|v| !v.is_empty());
        match key.as_str() {
            ARG_SITE => args.site = non_empty(value),
            ARG_NATS => args.nats = non_empty(value),
            ARG_TOKEN => args.token = non_empty(value),
            ARG_SEED => args.seed = non_empty(value),
            ARG_EDGE => args.edge = non_empty(value),
            ARG_NET => args.net = non_empty(value),
            ARG_DEBUG => {
                args.debug = match value.as_deref() {
                    None => true,
                    Some(v) => matches!(
                        v.to_ascii_lowercase().as_str(),
                        "1" | "y" | "yes" | "true" | "on"
                    ),
                }
            }
            _ => {}
        }
    }
    args
}

/// Splits on whitespace outside double quotes, like the kernel's `next_arg`.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            c if c.is_whitespace() && !in_quotes => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

fn unquote(v: &str) -> String {
    v.chars().filter(|c| *c != '"').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_substruct_argument() {
        let line = "BOOT_IMAGE=/vmlinuz initrd=initrd.img console=ttyS0,115200 \
                    substruct.site=dc1 substruct.nats=nats://10.77.0.1:4222 \
                    substruct.token=3f9a0c substruct.edge=http://10.77.0.1:8080 \
                    substruct.seed=SUABC substruct.net=ipv6 substruct.debug=1 quiet\n";
        assert_eq!(
            parse(line),
            KernelArgs {
                site: Some("dc1".into()),
                nats: Some("nats://10.77.0.1:4222".into()),
                token: Some("3f9a0c".into()),
                seed: Some("SUABC".into()),
                edge: Some("http://10.77.0.1:8080".into()),
                net: Some("ipv6".into()),
                debug: true,
            }
        );
    }

    #[test]
    fn missing_empty_and_unrelated_arguments() {
        assert_eq!(parse(""), KernelArgs::default());
        assert_eq!(parse("quiet splash"), KernelArgs::default());
        let a = parse(
            "substruct.site= substruct.nats substruct.edge= substruct.sitex=a xsubstruct.site=b",
        );
        assert_eq!(a, KernelArgs::default());
        assert!(!parse("substruct.debug=0").debug);
        assert!(!parse("substruct.debug=no").debug);
        assert!(parse("substruct.debug").debug);
        assert!(parse("substruct.debug=yes").debug);
    }

    #[test]
    fn last_wins_and_quotes_are_removed() {
        let a = parse("substruct.site=a substruct.site=b substruct.nats=\"nats://h:1,nats://h:2\"");
        assert_eq!(a.site.as_deref(), Some("b"));
        assert_eq!(a.nats.as_deref(), Some("nats://h:1,nats://h:2"));
        let a = parse("\"substruct.token=ab cd\" substruct.site=x");
        assert_eq!(a.token.as_deref(), Some("ab cd"));
        assert_eq!(a.site.as_deref(), Some("x"));
    }
}
