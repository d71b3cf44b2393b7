//! Text that came from the update server or a release (release notes, error details quoting
//! a document), made safe to print: on a terminal an escape sequence in it could clear the
//! screen, set the title or hide what follows, and in the update log it would do the same to
//! whoever reads the log with `cat` or `tail`.

/// `text` with every control character except newline and tab written as a Rust escape
/// (`\u{1b}`, `\r`, `\u{9b}`): C0, DEL and C1, the bytes that start terminal sequences.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A command's captured output (a release's migration or health command) as [`printable`]
/// text, invalid UTF-8 replaced.
pub fn printable_output(bytes: &[u8]) -> String {
    printable(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printable_escapes_terminal_sequences_and_keeps_lines() {
        assert_eq!(
            printable("a\x1b[2J\x1b]0;t\x07\r\u{9b}b\n\tc"),
            "a\\u{1b}[2J\\u{1b}]0;t\\u{7}\\r\\u{9b}b\n\tc"
        );
    }
}
