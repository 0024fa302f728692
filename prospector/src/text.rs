//! Text helpers for untrusted strings on their way to the console, a log line or an
//! error: bounded and made printable. A leaf module: it uses nothing of this crate, so
//! every other module may use it.

/// The ellipsis appended to a cut text.
const ELLIPSIS: char = '…';

/// Longest untrusted text [`printable`] keeps, in characters.
pub const MAX_PRINTABLE_CHARS: usize = 256;

/// `text` cut to its first `max` characters, with `…` appended when something was cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        out.push(ELLIPSIS);
    }
    out
}

/// Untrusted text for one console line: control characters escaped, at most
/// [`MAX_PRINTABLE_CHARS`] characters of the input kept.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_PRINTABLE_CHARS));
    for c in text.chars().take(MAX_PRINTABLE_CHARS) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().nth(MAX_PRINTABLE_CHARS).is_some() {
        out.push(ELLIPSIS);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_made_printable() {
        assert_eq!(printable("store down"), "store down");
        assert_eq!(printable("a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        let long = "x".repeat(1000);
        assert_eq!(printable(&long).chars().count(), 257);
        assert_eq!(printable(&"x".repeat(256)), "x".repeat(256));
    }

    #[test]
    fn texts_are_cut_with_an_ellipsis() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcd", 3), "abc…");
        assert_eq!(truncate_chars("ééé", 2), "éé…");
        assert_eq!(truncate_chars("", 0), "");
    }
}
