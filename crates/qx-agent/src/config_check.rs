//! `qx-update config check`: validates the configuration offline, exactly as every command
//! reads it (keys, values, key files and their permissions), and says where a problem is:
//! `FILE:LINE: message`, with "did you mean" for a misspelt key.

use std::path::Path;

use crate::config::{Config, ConfigError};

/// What a valid configuration amounts to, for the operator to check at a glance.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub path: String,
    pub server_url: String,
    pub product: String,
    pub channel: String,
    pub trusted_keys: Vec<String>,
    pub enabled: bool,
    pub auto_apply: bool,
}

/// A configuration problem and the line it is on, when it can be told.
#[derive(Debug)]
pub struct Problem {
    pub error: ConfigError,
    pub line: Option<usize>,
}

/// Reads and validates `path` under `root`.
pub fn check(path: &Path, root: &Path) -> Result<Summary, Box<Problem>> {
    match Config::load_under(path, root) {
        Ok(c) => Ok(Summary {
            path: path.display().to_string(),
            server_url: c.server_url.clone(),
            product: c.product.to_string(),
            channel: c.channel.to_string(),
            trusted_keys: c.trusted_keys.ids(),
            enabled: c.enabled,
            auto_apply: c.auto_apply,
        }),
        Err(error) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let line = line_of(&error, &text);
            Err(Box::new(Problem { error, line }))
        }
    }
}

impl Problem {
    /// The message without what `FILE:LINE:` before it says already (the file's name, the
    /// parser's "at line N column M").
    pub fn message(&self, path: &Path) -> String {
        let text = self.error.to_string();
        let prefix = format!("configuration {}: ", path.display());
        let text = text.strip_prefix(&prefix).unwrap_or(&text);
        match (self.line, text.find(" at line ")) {
            (Some(_), Some(i)) => {
                let end = text[i..].find(';').map_or(text.len(), |j| i + j);
                format!("{}{}", &text[..i], &text[end..])
            }
            _ => text.to_owned(),
        }
    }
}

/// The line of the file a problem is on: the parser's own for a syntax error or unknown key,
/// else the line of the key an invalid value is under.
fn line_of(error: &ConfigError, text: &str) -> Option<usize> {
    match error {
        ConfigError::Syntax { line, .. } => *line,
        ConfigError::Invalid { key, .. } => line_of_key(text, key),
        _ => None,
    }
}

/// The 1-based line where `updates.<key>` is written: each segment of the dotted key
/// (`download.max_attempts`, `trusted_keys[0]`) is looked for after the previous one, as a
/// YAML key (`name:` at a line's start or after `{`, `,` or white space).
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut from = find_key(text, 0, "updates")?;
    for segment in key.split('.') {
        let name = segment.split('[').next().unwrap_or(segment);
        if name.is_empty() {
            continue;
        }
        from = find_key(text, from, name)?;
    }
    Some(text[..from].matches('\n').count() + 1)
}

/// The byte offset of the first `name:` key at or after `from`.
fn find_key(text: &str, from: usize, name: &str) -> Option<usize> {
    let pattern = format!("{name}:");
    let mut at = from;
    while let Some(i) = text.get(at..)?.find(&pattern) {
        let pos = at + i;
        let before = text[..pos].chars().next_back();
        if before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',') {
            return Some(pos);
        }
        at = pos + pattern.len();
    }
    None
}

/// The closest of `known` to `unknown`, when it is close enough to be a typing mistake.
pub fn did_you_mean<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "node:\n  name: n\nupdates:\n  server_url: http://x\n  download: {max_attempts: 0}\n  trusted_keys:\n    - /k.pub\n  api:\n    listen: bad\n";

    #[test]
    fn a_key_is_found_on_its_line_block_or_flow_style() {
        assert_eq!(line_of_key(TEXT, "server_url"), Some(4));
        assert_eq!(line_of_key(TEXT, "download.max_attempts"), Some(5));
        assert_eq!(line_of_key(TEXT, "trusted_keys[0]"), Some(6));
        assert_eq!(line_of_key(TEXT, "api.listen"), Some(9));
        assert_eq!(line_of_key(TEXT, "channel"), None);
    }

    /// The keys a section accepts, as the parser lists them for an unknown one.
    fn keys_of(section: &str) -> Vec<String> {
        let entry = match section.strip_prefix("updates.") {
            None => "  zzzz: 1\n".to_owned(),
            Some(name) => format!("  {name}: {{zzzz: 1}}\n"),
        };
        let text = format!("updates:\n  server_url: http://h\n  product: p\n  trusted_keys: [RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3]\n{entry}");
        let e = Config::parse(&text, Path::new("node.yaml"), Path::new("/"))
            .expect_err("zzzz is not a key");
        let message = e.to_string();
        let list = message
            .split("zzzz")
            .nth(1)
            .unwrap_or_else(|| panic!("{message}"));
        // After the unknown key's closing quote: the known keys, each in backquotes.
        list.split('`')
            .skip(2)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// The keys docs/agent-config.md documents in the table of `section`.
    fn documented(section: &str) -> Vec<String> {
        let doc = include_str!("../../../docs/agent-config.md");
        let heading = format!("## `{section}:`");
        let heading2 = format!("## `{section}`");
        let start = doc
            .find(&heading)
            .or_else(|| doc.find(&heading2))
            .unwrap_or_else(|| panic!("no section {section}"));
        let body = &doc[start..];
        let body = &body[2..];
        let end = body.find("\n## ").unwrap_or(body.len());
        body[..end]
            .lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| {
                let cell = l.split('|').nth(1).unwrap_or_default();
                cell.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_documentation_names_every_key_and_no_other() {
        for section in [
            "updates",
            "updates.download",
            "updates.api",
            "updates.tls",
            "updates.fleet",
            "updates.metrics",
            "updates.ab",
        ] {
            let mut code = keys_of(section);
            let mut doc = documented(section);
            code.sort();
            doc.sort();
            assert_eq!(
                code, doc,
                "section {section}: the code's keys, then the documented ones"
            );
        }
    }

    #[test]
    fn did_you_mean_suggests_only_a_near_miss() {
        let known = ["channel", "check_interval", "max_attempts", "server_url"];
        assert_eq!(did_you_mean("chanel", &known), Some("channel"));
        assert_eq!(did_you_mean("max_atempts", &known), Some("max_attempts"));
        assert_eq!(did_you_mean("serverurl", &known), Some("server_url"));
        assert_eq!(did_you_mean("zebra", &known), None);
    }
}
