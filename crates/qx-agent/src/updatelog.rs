//! The dedicated update log (seed 003 §2.4): manifest details, every step, the full
//! stdout/stderr of migration commands. Appended, one timestamped line per event; each write
//! is flushed so the log survives a crash up to the last step.

use std::io::Write;
use std::path::{Path, PathBuf};

pub struct UpdateLog {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl UpdateLog {
    /// Opens (creates) the log; a log that cannot be opened is reported on stderr through
    /// tracing and the update goes on without it.
    pub fn open(path: &Path) -> Self {
        let file = path
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| {
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

    /// Flushes to disk (called at the end of each step).
    pub fn sync(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.sync_data();
        }
    }
}
