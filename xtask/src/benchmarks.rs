//! BENCHMARKS.md: each benchmark owns one section between its own markers and rewrites only
//! that section.

use std::path::Path;

use anyhow::Context;

/// Puts `block` (the section with its `start` and `end` markers) in place of the marked
/// section (every copy of it, keeping the place of the first), or appends it after a blank
/// line. Nothing outside the markers is touched; the file is replaced atomically.
pub fn update_section(path: &Path, start: &str, end: &str, block: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let mut at = None;
    while let Some(a) = text.find(start) {
        let Some(len) = text[a..].find(end) else {
            break;
        };
        let mut b = a + len + end.len();
        if text[b..].starts_with('\n') {
            b += 1;
        }
        text.replace_range(a..b, "");
        at.get_or_insert(a);
    }
    let block = format!("{block}\n");
    match at {
        Some(a) => text.insert_str(a, &block),
        None => {
            let trimmed = text.trim_end_matches('\n').len();
            text.truncate(trimmed);
            text.push_str("\n\n");
            text.push_str(&block);
        }
    }
    qx_core::fs::write_atomic(path, text.as_bytes())
        .with_context(|| format!("updating {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "<!-- bench-x:start -->";
    const END: &str = "<!-- bench-x:end -->";

    #[test]
    fn section_is_replaced_once_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("BENCHMARKS.md");
        let old = format!("{START}\nold 1\n{END}\n");
        std::fs::write(
            &path,
            format!("# Benchmarks\n\n## Other\n\n{old}{old}\n## After\n"),
        )
        .expect("write");
        update_section(&path, START, END, &format!("{START}\nnew\n{END}")).expect("update");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("# Benchmarks\n\n## Other\n\n{START}\nnew\n{END}\n\n## After\n")
        );
    }

    #[test]
    fn section_is_appended_when_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("BENCHMARKS.md");
        std::fs::write(&path, "# Benchmarks\n\n## Other\n\n").expect("write");
        update_section(&path, START, END, "S").expect("update");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "# Benchmarks\n\n## Other\n\nS\n"
        );
    }

    #[test]
    fn only_the_marked_section_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("BENCHMARKS.md");
        let other =
            "<!-- bench-apply:start -->\n## Agent apply\nfigures\n<!-- bench-apply:end -->\n";
        std::fs::write(&path, format!("# Benchmarks\n\n{other}")).expect("write");
        let block = |body: &str| format!("{START}\n## Update server\n\n{body}\n{END}");
        update_section(&path, START, END, &block("first")).expect("append");
        update_section(&path, START, END, &block("second")).expect("replace");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(other), "{text}");
        assert!(text.contains("second") && !text.contains("first"), "{text}");
        assert_eq!(text.matches(START).count(), 1, "{text}");
    }
}
