//! What one HTTP client may hold: timeouts for a request head, an idle kept-alive
//! connection and a client that stops reading, and caps on open connections in total
//! and per source address. Every connection passes through the sendfile front's accept
//! loop, which takes a [`ConnPermit`] from the [`ConnTracker`] first (or closes the
//! connection at once); the permit travels with the connection to axum and is given
//! back when the connection closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The HTTP server's resource caps. The defaults fit a boot storm of 1,000 machines
/// (each holds one or two connections at a time) with room to spare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest a request head may take from its first byte; on a connection axum serves,
    /// the wait for the next request counts too (hyper's header timer).
    pub header_timeout: Duration,
    /// Longest a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Longest a response may wait for the client to read (no progress at all).
    pub write_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one source address.
    pub max_connections_per_source: usize,
}

/// Default [`HttpLimits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`HttpLimits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`HttpLimits::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`HttpLimits::max_connections`] (`LimitNOFILE` in the unit leaves room for it).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default [`HttpLimits::max_connections_per_source`].
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 32;

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections open: the total limit")]
    Total(usize),
    #[error("{0} connections open from this address: the per-source limit")]
    PerSource(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    last_warning: Option<Instant>,
    refused_since_warning: u64,
}

/// Counts open connections against [`HttpLimits`] (cheap to clone; clones share counts).
#[derive(Debug, Clone)]
pub struct ConnTracker {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_source: usize,
}

impl ConnTracker {
    /// A tracker for `limits`' connection caps.
    pub fn new(limits: &HttpLimits) -> Self {
        Self {
            counts: Arc::default(),
            max_total: limits.max_connections,
            max_per_source: limits.max_connections_per_source,
        }
    }

    /// A permit for one more connection from `source`, or why not. Refusals are logged at
    /// most once a second (with how many were not).
    pub fn admit(&self, source: IpAddr) -> Result<ConnPermit, Refused> {
        let source = source.to_canonical();
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let from_source = c.by_source.get(&source).copied().unwrap_or(0);
        let refused = if c.total >= self.max_total {
            Some(Refused::Total(c.total))
        } else if from_source >= self.max_per_source {
            Some(Refused::PerSource(from_source))
        } else {
            None
        };
        if let Some(why) = refused {
            let now = Instant::now();
            if c.last_warning
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                let suppressed = std::mem::take(&mut c.refused_since_warning);
                c.last_warning = Some(now);
                tracing::warn!(%source, reason = %why, suppressed, "HTTP connection refused");
            } else {
                c.refused_since_warning += 1;
            }
            return Err(why);
        }
        c.total += 1;
        *c.by_source.entry(source).or_insert(0) += 1;
        Ok(ConnPermit {
            counts: self.counts.clone(),
            source,
        })
    }

    /// Connections open now (for tests and logs).
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One admitted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnPermit {
    counts: Arc<Mutex<Counts>>,
    source: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_source_and_gives_back() {
        let limits = HttpLimits {
            max_connections: 3,
            max_connections_per_source: 2,
            ..HttpLimits::default()
        };
        let t = ConnTracker::new(&limits);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = t.admit(a).unwrap();
        let _p2 = t.admit(a).unwrap();
        assert_eq!(t.admit(a).unwrap_err(), Refused::PerSource(2));
        // An IPv4-mapped IPv6 source is the same source.
        assert!(t.admit("::ffff:10.0.0.1".parse().unwrap()).is_err());
        let _p3 = t.admit(b).unwrap();
        assert_eq!(t.admit(b).unwrap_err(), Refused::Total(3));
        drop(p1);
        assert_eq!(t.open(), 2);
        let _p4 = t.admit(b).unwrap();
    }
}
