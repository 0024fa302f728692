//! `substruct events`: the audit log — every machine's discoveries, reports,
//! lifecycle transitions, conflicts, power and BMC changes — and its live tail.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use futures::StreamExt;

use super::client::Api;
use super::CliError;
use crate::store::LoggedEvent;

/// What `substruct events` shows.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this machine's events (id, SMBIOS UUID, serial or MAC).
    #[arg(long, value_name = "MACHINE")]
    pub machine: Option<String>,
    /// Only events of machines at this site.
    #[arg(long, value_name = "SITE")]
    pub site: Option<String>,
    /// How many of the latest events to show first (1–1000).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Keep printing events as they happen (until interrupted).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// One JSON object per line (`seq`, `machine_id`, `at_unix_ms`, `revision`, `kind`).
    #[arg(long)]
    pub json: bool,
}

/// The answer of `GET /api/v1/events` (without `follow`).
#[derive(Debug, serde::Deserialize)]
struct EventPage {
    events: Vec<serde_json::Value>,
}

/// Runs `substruct events`.
pub(super) async fn run(api: &Api, args: EventsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let limit = args.limit.to_string();
    let query = [
        ("machine", args.machine.as_deref().unwrap_or("")),
        ("site", args.site.as_deref().unwrap_or("")),
        ("limit", limit.as_str()),
        ("follow", if args.follow { "true" } else { "" }),
    ];
    if !args.follow {
        let page: EventPage = api.get_query(&["events"], &query).await?;
        for event in &page.events {
            write_event(out, event, args.json).map_err(CliError::Output)?;
        }
        return Ok(());
    }
    let response = api.open_stream(&["events"], &query).await?;
    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| CliError::Decode {
            url: "events stream".to_owned(),
            source,
        })?;
        for data in parser.feed(&chunk) {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&data) else {
                continue;
            };
            write_event(out, &event, args.json).map_err(CliError::Output)?;
            out.flush().map_err(CliError::Output)?;
        }
    }
    // The controller ended the stream (it is shutting down).
    Err(CliError::Status {
        status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
        message: "the controller closed the event stream".to_owned(),
    })
}

/// One event: its JSON on one line, or `TIME  MACHINE  TYPE  DETAIL`.
fn write_event(out: &mut dyn Write, event: &serde_json::Value, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, event).map_err(std::io::Error::other)?;
        return writeln!(out);
    }
    match serde_json::from_value::<LoggedEvent>(event.clone()) {
        Ok(e) => {
            let at = UNIX_EPOCH + Duration::from_millis(e.event.at_unix_ms);
            writeln!(
                out,
                "{}  {}  {:<10}  {}",
                humantime::format_rfc3339_seconds(at),
                e.event.machine_id,
                e.event.kind.name(),
                e.event.kind.detail()
            )
        }
        // A kind this CLI does not know (a newer controller): its type at least.
        Err(_) => writeln!(
            out,
            "#{}  {}  {}",
            event.get("seq").and_then(|s| s.as_u64()).unwrap_or(0),
            event
                .get("machine_id")
                .and_then(|s| s.as_str())
                .unwrap_or("?"),
            event
                .pointer("/kind/type")
                .and_then(|s| s.as_str())
                .unwrap_or("?"),
        ),
    }
}

/// Reassembles server-sent events from chunks: yields each event's `data` (lines
/// joined by `\n`) when its blank line arrives. Comments and other fields are dropped.
#[derive(Debug, Default)]
pub(super) struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
}

/// Longest line kept (an event is one line of JSON, a few hundred bytes).
const MAX_LINE: usize = 1 << 20;

impl SseParser {
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &b in chunk {
            if b != b'\n' {
                if self.line.len() < MAX_LINE {
                    self.line.push(b);
                }
                continue;
            }
            let line = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    done.push(data);
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nid: 4\ndata: {\"a\"").is_empty());
        assert_eq!(
            p.feed(b":1}\n\ndata: x\r\ndata: y\r\n\r\n"),
            vec!["{\"a\":1}", "x\ny"]
        );
        // A blank line with no data is nothing.
        assert!(p.feed(b"\n\n").is_empty());
    }

    #[test]
    fn a_huge_line_is_cut_not_grown() {
        let mut p = SseParser::default();
        let mut chunk = b"data: ".to_vec();
        chunk.extend(std::iter::repeat_n(b'x', 2 * MAX_LINE));
        chunk.extend_from_slice(b"\n\n");
        let out = p.feed(&chunk);
        assert_eq!(out.len(), 1);
        assert!(out[0].len() < MAX_LINE);
    }
}
