//! Upload progress: a bar on a terminal, plain lines (every 25 %) otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Upload progress: a bar on a terminal, plain lines otherwise.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<ProgressInner>,
}

struct ProgressInner {
    bar: Option<ProgressBar>,
    total: u64,
    done: AtomicU64,
    /// Next percentage at which a plain line is printed.
    next_mark: AtomicU64,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new(total: u64) -> Self {
        Self::with_terminal(total, std::io::stderr().is_terminal())
    }

    pub fn with_terminal(total: u64, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg:28!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Self {
            inner: Arc::new(ProgressInner {
                bar,
                total,
                done: AtomicU64::new(0),
                next_mark: AtomicU64::new(25),
            }),
        }
    }

    pub(super) fn start_file(&self, name: &str, size: u64) {
        match &self.inner.bar {
            Some(bar) => bar.set_message(name.to_owned()),
            None => eprintln!("uploading {name} ({size} bytes)"),
        }
    }

    pub(super) fn advance(&self, n: u64) {
        let done = self.inner.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.inner.bar {
            Some(bar) => bar.set_position(done),
            None => {
                if self.inner.total == 0 {
                    return;
                }
                let pct = done.saturating_mul(100) / self.inner.total;
                let mark = self.inner.next_mark.load(Ordering::Relaxed);
                if pct >= mark && mark <= 100 {
                    self.inner
                        .next_mark
                        .store((pct / 25 + 1) * 25, Ordering::Relaxed);
                    eprintln!("uploaded {done}/{} bytes ({pct}%)", self.inner.total);
                }
            }
        }
    }

    pub(super) fn restart(&self) {
        self.inner.done.store(0, Ordering::Relaxed);
        self.inner.next_mark.store(25, Ordering::Relaxed);
        if let Some(bar) = &self.inner.bar {
            bar.set_position(0);
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.inner.bar {
            bar.finish_and_clear();
        }
    }
}
