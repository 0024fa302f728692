//! Text into typed values, each refusal naming the file and the field ([`Ctx`]).

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum;

use super::{ConfigError, RawDuration};

/// Builds field-named errors for one source (a file name, or "command line").
pub(super) struct Ctx<'a> {
    pub file: &'a str,
}

/// Name used in error messages when a value came from flags rather than a file.
pub(super) const COMMAND_LINE: &str = "command line";

impl Ctx<'_> {
    /// `{file}: {field}: {problem}`.
    pub fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// An IPv4 address (spaces around it allowed).
    pub fn ip(&self, field: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
        Ipv4Addr::from_str(text.trim())
            .map_err(|_| self.err(field, format!("{text:?} is not an IPv4 address")))
    }

    /// `START-END`, both IPv4 addresses. Whether start ≤ end is the DHCP settings' check.
    pub fn pool(&self, field: &str, text: &str) -> Result<(Ipv4Addr, Ipv4Addr), ConfigError> {
        let (a, b) = text
            .split_once('-')
            .ok_or_else(|| self.err(field, format!("{text:?} is not START-END")))?;
        let start = Ipv4Addr::from_str(a.trim()).map_err(|_| {
            self.err(
                field,
                format!("{text:?}: start {a:?} is not an IPv4 address"),
            )
        })?;
        let end = Ipv4Addr::from_str(b.trim())
            .map_err(|_| self.err(field, format!("{text:?}: end {b:?} is not an IPv4 address")))?;
        Ok((start, end))
    }

    /// A lease time: whole seconds, or text [`parse_duration`] reads.
    pub fn duration(&self, field: &str, raw: &RawDuration) -> Result<Duration, ConfigError> {
        match raw {
            RawDuration::Seconds(s) => Ok(Duration::from_secs(*s)),
            RawDuration::Text(t) => parse_duration(t).ok_or_else(|| {
                self.err(
                    field,
                    format!(
                        "{t:?} is not a duration (seconds, or e.g. \"90s\", \"30m\", \"1h\", \"1d\")"
                    ),
                )
            }),
        }
    }

    /// One of the named `options`, spelled exactly.
    pub fn one_of<T: Clone>(
        &self,
        field: &str,
        value: &str,
        options: &[(String, T)],
    ) -> Result<T, ConfigError> {
        options
            .iter()
            .find(|(name, _)| name == value)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(n, _)| n.as_str()).collect();
                self.err(
                    field,
                    format!("{value:?} is not one of {}", names.join(", ")),
                )
            })
    }

    /// One of `T`'s value names (the names its flag takes), or `None` when not given.
    pub fn choice<T: ValueEnum>(
        &self,
        field: &str,
        value: Option<&str>,
    ) -> Result<Option<T>, ConfigError> {
        value
            .map(|v| self.one_of(field, v, &named::<T>()))
            .transpose()
    }
}

/// Reads every item of the list `field`; item `i` is named `{field}[{i}]` in errors.
pub(super) fn each<I, T>(
    field: &str,
    items: &[I],
    read: impl Fn(&str, &I) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| read(&format!("{field}[{i}]"), item))
        .collect()
}

/// Every variant of `T` with its value name, in declaration order.
pub(super) fn named<T: ValueEnum>() -> Vec<(String, T)> {
    T::value_variants()
        .iter()
        .filter_map(|v| Some((value_name(v)?, v.clone())))
        .collect()
}

/// The name of one variant, as the file and the flags spell it.
pub(super) fn value_name<T: ValueEnum>(v: &T) -> Option<String> {
    v.to_possible_value().map(|p| p.get_name().to_owned())
}

/// A duration as text: bare whole seconds (`"600"`), or anything `humantime` reads
/// (`"90s"`, `"30m"`, `"1h"`, `"1d"`, `"1h 30m"`, `"2 weeks"`).
pub(super) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    humantime::parse_duration(text).ok()
}
