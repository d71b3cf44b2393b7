//! What `qx-update apply` shows while it runs: on a terminal a bar (bytes, rate and ETA while
//! an artifact downloads; the step alone while installing, migrating, restarting or
//! verifying), otherwise plain lines on stderr, one per step and every 25 % of a download.
//! Both follow the agent's status events, so they show what the host API shows.

use std::io::IsTerminal;
use std::thread::JoinHandle;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qx_core::status::UpdateState;
use tokio::sync::{broadcast, oneshot};

use crate::status::StatusSnapshot;
use crate::Agent;

/// Follows an apply's status until [`Progress::stop`].
pub struct Progress {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn start(agent: &Agent) -> Progress {
        let events = agent.status_handle().subscribe_events();
        let (stop, stopped) = oneshot::channel();
        let view = if std::io::stderr().is_terminal() {
            View::Bar(Box::new(Bar::new()))
        } else {
            View::Lines(Lines::default())
        };
        let thread = std::thread::spawn(move || follow(events, stopped, view));
        Progress { stop, thread }
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Shows every status event until `stopped` fires or the events end.
fn follow(
    mut events: broadcast::Receiver<StatusSnapshot>,
    mut stopped: oneshot::Receiver<()>,
    mut view: View,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        loop {
            // Events first: those sent before the stop are all shown.
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Ok(snapshot) => view.show(&snapshot.state),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = &mut stopped => break,
            }
        }
    });
    view.finish();
}

enum View {
    Bar(Box<Bar>),
    Lines(Lines),
}

impl View {
    fn show(&mut self, state: &UpdateState) {
        match self {
            View::Bar(bar) => bar.show(state),
            View::Lines(lines) => {
                if let Some(line) = lines.line(state) {
                    eprintln!("{line}");
                }
            }
        }
    }

    fn finish(self) {
        if let View::Bar(bar) = self {
            bar.bar.finish_and_clear();
        }
    }
}

/// What a state shows: a transfer (with bytes and rate) or a step (its words alone).
#[derive(Debug, PartialEq, Eq)]
enum Shown {
    Transfer {
        artifact: String,
        bytes: u64,
        total: u64,
    },
    Step(String),
}

fn shown(state: &UpdateState) -> Shown {
    match state {
        UpdateState::Downloading {
            artifact,
            bytes,
            total,
            ..
        } => Shown::Transfer {
            artifact: artifact.clone(),
            bytes: *bytes,
            total: *total,
        },
        UpdateState::Idle => Shown::Step("idle".into()),
        UpdateState::Checking => Shown::Step("checking".into()),
        UpdateState::Installing { component } => Shown::Step(format!("installing {component}")),
        UpdateState::Migrating { component } => Shown::Step(format!("migrating {component}")),
        UpdateState::Restarting { service } => Shown::Step(format!("restarting {service}")),
        UpdateState::Verifying { component } => Shown::Step(format!("verifying {component}")),
        UpdateState::RollingBack { reason } => Shown::Step(format!("rolling back: {reason}")),
        UpdateState::Done { version } => Shown::Step(format!("done: {version}")),
        UpdateState::Failed { reason, .. } => Shown::Step(format!("failed: {reason}")),
    }
}

/// The terminal bar: a transfer style while downloading, a step style (no bytes, no rate)
/// otherwise.
struct Bar {
    bar: ProgressBar,
    transfer: ProgressStyle,
    step: ProgressStyle,
    in_transfer: bool,
}

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let transfer = ProgressStyle::with_template(
            "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let step = ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(step.clone());
        Bar {
            bar,
            transfer,
            step,
            in_transfer: false,
        }
    }

    fn show(&mut self, state: &UpdateState) {
        match shown(state) {
            Shown::Transfer {
                artifact,
                bytes,
                total,
            } => {
                if !self.in_transfer {
                    self.bar.reset();
                    self.bar.set_style(self.transfer.clone());
                    self.in_transfer = true;
                }
                self.bar.set_length(total);
                self.bar.set_position(bytes);
                self.bar.set_message(artifact);
            }
            Shown::Step(words) => {
                if self.in_transfer {
                    self.bar.set_style(self.step.clone());
                    self.in_transfer = false;
                }
                self.bar.set_message(words);
                self.bar.tick();
            }
        }
    }
}

/// Plain lines: one per step, and for a download its start and every 25 % of it.
#[derive(Default)]
struct Lines {
    last: Option<String>,
    /// The artifact being downloaded and the next percentage to report.
    download: Option<(String, u64)>,
}

impl Lines {
    fn line(&mut self, state: &UpdateState) -> Option<String> {
        match shown(state) {
            Shown::Transfer {
                artifact,
                bytes,
                total,
            } => self.transfer(artifact, bytes, total),
            Shown::Step(words) => {
                self.download = None;
                if self.last.as_deref() == Some(words.as_str()) {
                    return None;
                }
                self.last = Some(words.clone());
                Some(words)
            }
        }
    }

    fn transfer(&mut self, artifact: String, bytes: u64, total: u64) -> Option<String> {
        let pct = bytes.saturating_mul(100).checked_div(total).unwrap_or(0);
        let same = matches!(&self.download, Some((a, _)) if *a == artifact);
        if !same {
            self.last = None;
            self.download = Some((artifact.clone(), 25));
            return Some(format!("downloading {artifact} ({total} bytes)"));
        }
        let (_, next) = self.download.as_mut()?;
        if pct < *next || *next > 100 {
            return None;
        }
        *next = (pct / 25 + 1) * 25;
        Some(format!(
            "downloaded {bytes}/{total} bytes of {artifact} ({pct}%)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn downloading(bytes: u64) -> UpdateState {
        UpdateState::Downloading {
            artifact: "node.tar.zst".into(),
            bytes,
            total: 400,
            rate: 10,
        }
    }

    #[test]
    fn lines_tell_each_step_once_and_a_download_every_quarter() {
        let mut l = Lines::default();
        let states = [
            UpdateState::Checking,
            UpdateState::Checking,
            downloading(0),
            downloading(50),
            downloading(100),
            downloading(150),
            downloading(400),
            UpdateState::Installing {
                component: "qx-node".into(),
            },
            UpdateState::Migrating {
                component: "db".into(),
            },
            UpdateState::Restarting {
                service: "quantix-node".into(),
            },
            UpdateState::Verifying {
                component: "qx-node".into(),
            },
            UpdateState::Done {
                version: "1.1.0".into(),
            },
        ];
        let got: Vec<String> = states.iter().filter_map(|s| l.line(s)).collect();
        assert_eq!(
            got,
            [
                "checking",
                "downloading node.tar.zst (400 bytes)",
                "downloaded 100/400 bytes of node.tar.zst (25%)",
                "downloaded 400/400 bytes of node.tar.zst (100%)",
                "installing qx-node",
                "migrating db",
                "restarting quantix-node",
                "verifying qx-node",
                "done: 1.1.0",
            ]
        );
    }

    #[test]
    fn steps_after_a_download_show_no_transfer() {
        for state in [
            UpdateState::Migrating {
                component: "db".into(),
            },
            UpdateState::Restarting {
                service: "s".into(),
            },
            UpdateState::Verifying {
                component: "c".into(),
            },
        ] {
            assert!(matches!(shown(&state), Shown::Step(_)), "{state:?}");
        }
        let mut bar = Bar::new();
        bar.bar.set_draw_target(ProgressDrawTarget::hidden());
        bar.show(&downloading(100));
        assert!(bar.in_transfer);
        bar.show(&UpdateState::Migrating {
            component: "db".into(),
        });
        assert!(!bar.in_transfer);
        assert_eq!(bar.bar.message(), "migrating db");
    }
}
