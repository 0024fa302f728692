//! How the CLI prints: pretty JSON, aligned tables, human sizes.

use std::io::Write;

/// A value as pretty JSON and a newline (`--json`).
pub(super) fn write_json<T: serde::Serialize>(
    out: &mut dyn Write,
    value: &T,
) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::other)?;
    writeln!(out)
}

/// `1.5G`, `512M`, `2.0T` (binary units).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else if value >= 100.0 || value.fract() < 0.05 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// The text of an optional field, `-` when missing or blank.
pub(super) fn or_dash(v: Option<&str>) -> String {
    v.map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("-")
        .to_owned()
}

/// `yes` or `no`.
pub(super) fn yes_no(v: bool) -> String {
    if v { "yes" } else { "no" }.to_owned()
}

/// An aligned table: a header and rows of cells.
pub fn write_rows(
    out: &mut dyn Write,
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> std::io::Result<()> {
    let header: Vec<String> = header.iter().map(|s| (*s).to_owned()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let last = row.len() - 1;
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// A list as pretty JSON (`json`) or as a table of `row(item)` under `header`.
pub(super) fn write_list<T: serde::Serialize>(
    out: &mut dyn Write,
    json: bool,
    items: &[T],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> std::io::Result<()> {
    if json {
        write_json(out, &items)
    } else {
        write_rows(out, header, items.iter().map(row).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(512 << 20), "512M");
        assert_eq!(human_bytes(3 << 29), "1.5G");
        assert_eq!(human_bytes(1 << 40), "1T");
    }

    #[test]
    fn tables_align_and_trim() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["a".to_owned(), "long cell".to_owned(), "x".to_owned()],
            vec!["bbbb".to_owned(), "-".to_owned(), String::new()],
        ];
        write_rows(&mut out, &["K", "VALUE", "LAST"], rows).ok();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "K     VALUE      LAST\na     long cell  x\nbbbb  -\n"
        );
    }
}
