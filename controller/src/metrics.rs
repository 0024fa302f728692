//! Prometheus metrics of one controller, served at `GET /metrics` (OpenMetrics text)
//! on the API's listen address, without a token (like `/healthz`: counts only, no
//! names, MACs or addresses; no label takes a value from input).
//!
//! Counted where it happens (atomics; no lock on the hot path once a label set exists):
//! * `substruct_controller_reports_total{result}` and
//!   `substruct_controller_report_duration_seconds` — discover requests answered
//!   (`ok`, or the refusal's error code);
//! * `substruct_controller_callbacks_total{result}` and
//!   `substruct_controller_callback_duration_seconds` — install callbacks;
//! * `substruct_controller_events_total{kind}` — audit-log events written, by kind
//!   (`transition` is a lifecycle transition);
//! * `substruct_controller_transitions_total{to}` — lifecycle transitions by new state;
//! * `substruct_controller_api_requests_total{method, status}` — REST and UI requests.
//!
//! Read at scrape time: `substruct_controller_nats_connected`,
//! `substruct_controller_machines{state}` (this controller's machine list) and
//! `substruct_controller_build_info{version}`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The OpenMetrics content type `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ToLabel {
    to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// Seconds buckets of a request's handling (1 ms … ~16 s).
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// An error code as a label value (`malformed`, `wrong_site`, …).
pub fn code_label(code: substruct_wire::messages::ErrorCode) -> String {
    // The variant's name only: a variant's fields (a MAC, an address) never become a label.
    let debug = format!("{code:?}");
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("other");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// One controller's metrics.
#[derive(Debug)]
pub struct Metrics {
    reports: Family<ResultLabel, Counter>,
    report_seconds: Histogram,
    callbacks: Family<ResultLabel, Counter>,
    callback_seconds: Histogram,
    events: Family<KindLabel, Counter>,
    transitions: Family<ToLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reports: Family::default(),
            report_seconds: Histogram::new(latency_buckets()),
            callbacks: Family::default(),
            callback_seconds: Histogram::new(latency_buckets()),
            events: Family::default(),
            transitions: Family::default(),
            requests: Family::default(),
        }
    }
}

/// What is read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nats_connected: bool,
    /// Machines by state name, from this controller's machine list.
    pub machines: Vec<(String, u64)>,
}

impl Metrics {
    /// A discover request answered with `result` (`ok` or an error code) after `took`.
    pub fn report(&self, result: &str, took: Duration) {
        self.reports
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
        self.report_seconds.observe(took.as_secs_f64());
    }

    /// An install callback answered with `result` after `took`.
    pub fn callback(&self, result: &str, took: Duration) {
        self.callbacks
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
        self.callback_seconds.observe(took.as_secs_f64());
    }

    /// An audit-log event of `kind` written; `to` is the new state of a transition.
    pub fn event(&self, kind: &'static str, to: Option<&str>) {
        self.events
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
        if let Some(to) = to {
            self.transitions
                .get_or_create(&ToLabel { to: to.to_owned() })
                .inc();
        }
    }

    /// An HTTP request answered (`status`: the class, `2xx` … `5xx`).
    pub fn request(&self, method: &str, status: u16) {
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" => method,
            _ => "other",
        };
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                status: format!("{}xx", status / 100),
            })
            .inc();
    }

    /// The OpenMetrics text of every metric, with `now`'s scrape-time values.
    pub fn encode(&self, now: &Snapshot) -> String {
        let mut registry = Registry::with_prefix("substruct_controller");
        registry.register(
            "reports",
            "Discover requests (hardware reports) answered, by result",
            self.reports.clone(),
        );
        registry.register(
            "report_duration_seconds",
            "Time to answer a discover request",
            self.report_seconds.clone(),
        );
        registry.register(
            "callbacks",
            "Install callbacks answered, by result",
            self.callbacks.clone(),
        );
        registry.register(
            "callback_duration_seconds",
            "Time to answer an install callback",
            self.callback_seconds.clone(),
        );
        registry.register(
            "events",
            "Audit-log events written by this controller, by kind",
            self.events.clone(),
        );
        registry.register(
            "transitions",
            "Lifecycle transitions written by this controller, by new state",
            self.transitions.clone(),
        );
        registry.register(
            "api_requests",
            "HTTP requests answered (API, UI), by method and status class",
            self.requests.clone(),
        );
        let connected = Gauge::<i64>::default();
        connected.set(i64::from(now.nats_connected));
        registry.register(
            "nats_connected",
            "1 while the controller's NATS connection is up",
            connected,
        );
        let machines = Family::<StateLabel, Gauge>::default();
        for (state, count) in &now.machines {
            machines
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        registry.register(
            "machines",
            "Machines in this controller's machine list, by state",
            machines,
        );
        let info = Family::<VersionLabel, Gauge>::default();
        info.get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
        registry.register("build_info", "The controller's version", info);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_become_snake_case_labels() {
        use substruct_wire::messages::ErrorCode;
        assert_eq!(code_label(ErrorCode::Malformed), "malformed");
        assert_eq!(code_label(ErrorCode::WrongSite), "wrong_site");
        assert_eq!(
            code_label(ErrorCode::IllegalTransition),
            "illegal_transition"
        );
    }

    #[test]
    fn counters_and_scrape_values_appear_in_the_text() {
        let m = Metrics::default();
        m.report("ok", Duration::from_millis(3));
        m.report("ok", Duration::from_millis(4));
        m.report("unproven", Duration::from_millis(1));
        m.event("transition", Some("assigned"));
        m.request("GET", 200);
        m.request("BREW", 418);
        let text = m.encode(&Snapshot {
            nats_connected: true,
            machines: vec![("discovered".into(), 7)],
        });
        assert!(
            text.contains("substruct_controller_reports_total{result=\"ok\"} 2"),
            "{text}"
        );
        assert!(text.contains("substruct_controller_reports_total{result=\"unproven\"} 1"));
        assert!(text.contains("substruct_controller_report_duration_seconds_count 3"));
        assert!(text.contains("substruct_controller_transitions_total{to=\"assigned\"} 1"));
        assert!(text.contains(
            "substruct_controller_api_requests_total{method=\"other\",status=\"4xx\"} 1"
        ));
        assert!(text.contains("substruct_controller_nats_connected 1"));
        assert!(text.contains("substruct_controller_machines{state=\"discovered\"} 7"));
        assert!(text.contains("substruct_controller_build_info{version="));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
