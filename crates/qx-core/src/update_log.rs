//! The dedicated update log (`updates.log_path`, by default `/var/log/quantix/update.log`):
//! manifest details, every step, the full output of migration commands. Appended, one
//! timestamped line per event, each line also sent to `tracing`. The component transaction
//! and the A/B commands write it through this one type, at the path the configuration names.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the update log lives when the configuration does not say.
pub const DEFAULT_UPDATE_LOG: &str = "/var/log/quantix/update.log";

/// An open update log. A log that cannot be opened is reported through `tracing` once and
/// the caller's work goes on without it: losing the log must never stop an update.
pub struct UpdateLog {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl UpdateLog {
    /// Opens (creates, with its directory) the log at `path`.
    pub fn open(path: &Path) -> Self {
        let file = crate::fs::create_dir_all_durable(crate::fs::parent_of(path))
            .map_err(|e| e.source)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            });
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open the update log");
                None
            }
        };
        Self {
            path: path.to_owned(),
            file,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One line: `<RFC 3339 time> <message>`; also sent to tracing.
    pub fn line(&mut self, message: &str) {
        tracing::info!(target: "qx_update::log", "{message}");
        if let Some(f) = &mut self.file {
            let now = jiff::Timestamp::now();
            let _ = writeln!(f, "{now} {message}");
        }
    }

    /// A block of captured output, each line prefixed by `label | `.
    pub fn block(&mut self, label: &str, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        if let Some(f) = &mut self.file {
            for l in text.lines() {
                let _ = writeln!(f, "    {label} | {l}");
            }
        }
    }

    /// Flushes to disk (at the end of each step).
    pub fn sync(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.sync_data();
        }
    }

    /// One line, synced at once: for short records such as the A/B commands'.
    pub fn record(&mut self, message: &str) {
        self.line(message);
        self.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_blocks_are_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("var/log/quantix/update.log");
        let mut log = UpdateLog::open(&path);
        log.line("ab: first");
        log.block("migrate", b"one\ntwo\n");
        log.record("second");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].ends_with(" ab: first"), "{}", lines[0]);
        assert_eq!(lines[1], "    migrate | one");
        assert!(lines[3].ends_with(" second"));
    }
}
