//! The per-site report rate limit: one token bucket per site.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use substruct_wire::messages::{ErrorCode, ErrorReply};

use crate::config::Limits;

/// One site's token bucket: `tokens` requests may be sent now; it refills at the
/// configured rate up to the configured burst.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token at `now`, or says how long until one is there. Pure.
    fn take(&mut self, now: Instant, per_second: f64, burst: u32) -> Result<(), Duration> {
        let burst = f64::from(burst.max(1));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / per_second;
            Err(Duration::from_secs_f64(wait.clamp(0.001, 3600.0)))
        }
    }

    fn is_full(&self, now: Instant, per_second: f64, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * per_second >= f64::from(burst)
    }
}

/// Sites tracked at once; past this many, the buckets that are full again (sites
/// that have been quiet) are forgotten, which changes nothing for them (and if none
/// is, all are).
const MAX_TRACKED_SITES: usize = 10_000;

/// The per-site report rate limit ([`Limits::site_reports_per_second`],
/// [`Limits::site_report_burst`]): a token bucket per site, so one site's storm (or a
/// flood through a compromised leaf) cannot take the controller from the others.
#[derive(Debug, Default)]
pub struct SiteRates {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl SiteRates {
    /// Takes one report of `site` at `now`; `Err(wait)` when over the limit.
    pub fn check(&self, site: &str, now: Instant, limits: &Limits) -> Result<(), Duration> {
        let (rate, burst) = (limits.site_reports_per_second, limits.site_report_burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_SITES && !buckets.contains_key(site) {
            buckets.retain(|_, b| !b.is_full(now, rate, burst));
            if buckets.len() >= MAX_TRACKED_SITES {
                // Only a flood of site names gets here; forgetting every budget (each
                // site starts full again) keeps the map bounded.
                buckets.clear();
            }
        }
        buckets
            .entry(site.to_owned())
            .or_insert(Bucket {
                tokens: f64::from(burst),
                at: now,
            })
            .take(now, rate, burst)
    }
}

/// The refusal of a report over its site's rate: `Unavailable`, which the prospector
/// retries (every discover refusal is retried, after its backoff).
pub(super) fn rate_limited(wait: Duration) -> ErrorReply {
    ErrorReply {
        code: ErrorCode::Unavailable,
        message: format!("rate limited, retry after {} ms", wait.as_millis().max(1)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn site_rates_are_token_buckets_per_site() {
        let limits = Limits {
            site_reports_per_second: 10.0,
            site_report_burst: 3,
            ..Limits::default()
        };
        let rates = SiteRates::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rates.check("dc1", t0, &limits), Ok(()));
        }
        let wait = rates.check("dc1", t0, &limits).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(
            rate_limited(wait).message,
            "rate limited, retry after 100 ms"
        );
        // Another site has its own bucket.
        assert_eq!(rates.check("dc2", t0, &limits), Ok(()));
        // One token back after 100 ms, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(rates.check("dc1", t1, &limits), Ok(()));
        assert!(rates.check("dc1", t1, &limits).is_err());
        // Refilled up to the burst, no further.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(rates.check("dc1", t2, &limits), Ok(()));
        }
        assert!(rates.check("dc1", t2, &limits).is_err());
        // A flood of site names keeps the table bounded.
        for i in 0..=MAX_TRACKED_SITES {
            let _ = rates.check(&format!("s{i}"), t2, &limits);
        }
        let tracked = rates.buckets.lock().unwrap().len();
        assert!(tracked <= MAX_TRACKED_SITES, "{tracked}");
    }
}
