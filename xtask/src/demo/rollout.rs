//! The demo's staged rollout (docs/rollouts.md): two more sandboxed hosts enroll, a canary
//! (labelled `ring=canary` in its own node.yaml) and one more; 1.1.0 is published in two waves
//! (`1%:1m,100%`); the canary takes it at once, the other hosts only once the second wave's
//! signed time has passed and the canary's confirmation held the gate; the rollout completes.
//! The demo waits for the second wave in real time (a minute, the shortest soak), polling the
//! rollout's status.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{step, Demo, CHANNEL, DEMO_LABELS, PRODUCT, TOKEN};

/// The rollout's waves: the canaries and 1 % of the hosts, then everyone a minute later.
const WAVES: &str = "1%:1m,100%";
/// How long the demo waits for the second wave to open (its soak, the server's tick, slack).
const WAVE_WITHIN: Duration = Duration::from_secs(150);
/// How long it waits for the completion the server's next tick records.
const COMPLETE_WITHIN: Duration = Duration::from_secs(60);
/// How often it asks.
const POLL: Duration = Duration::from_secs(2);

/// The roots of the hosts this step adds (for stopping their services).
pub(super) fn extra_hosts(work: &Path) -> Vec<PathBuf> {
    vec![work.join("host-canary"), work.join("host-b")]
}

impl Demo {
    /// The two-wave rollout of 1.1.0 over three enrolled hosts.
    pub(super) fn staged_rollout(&mut self) -> anyhow::Result<()> {
        step("two more hosts enroll and install current: a canary (ring=canary in its own node.yaml) and one more");
        let extra = extra_hosts(&self.work);
        let (canary, other) = (&extra[0], &extra[1]);
        let canary_labels = "{site: demo, ring: canary}";
        for (root, labels) in [(canary, canary_labels), (other, DEMO_LABELS)] {
            self.write_host(root, self.url.base(), super::free_port()?, Some(labels))?;
            self.enroll_token(root)?;
            self.agent_on(root, &["apply", "--yes"])?;
        }
        step(&format!(
            "publish 1.1.0 as a staged rollout ({WAVES}): wave 0 is the canaries and 1 % of the hosts, wave 1 everyone a minute later if wave 0 stays healthy"
        ));
        self.publish_args(
            "1.1.0",
            "A staged release: the canary first, the others after its soak.",
            &["--waves", WAVES, "--max-failures", "1"],
        )?;
        self.show_channel()?;
        let id = self.rollout_status()?["id"]
            .as_str()
            .context("the rollout status has no id")?
            .to_owned();
        step(
            "every host checks: before the second wave's signed time, only wave 0 is offered 1.1.0",
        );
        for root in [&self.host, other, canary] {
            self.agent_on(root, &["check"])?;
        }
        step("the canary takes 1.1.0 and confirms it");
        self.agent_on(canary, &["apply", "--yes"])?;
        step("waiting for wave 1: its signed time is a minute after the start, and the canary's confirmation holds the gate");
        self.wait_rollout(WAVE_WITHIN, "wave 1 to open", |s| {
            s["waves"][1]["opened_at"].is_string()
        })?;
        step("the other hosts check again and take 1.1.0");
        for root in [&self.host, other] {
            self.agent_on(root, &["apply", "--yes"])?;
        }
        self.expect_running("1.1.0")?;
        self.wait_rollout(COMPLETE_WITHIN, "the rollout to complete", |s| {
            s["state"] == "completed"
        })?;
        self.rollout_status()?;
        println!(
            "the rollout on the dashboard: {}#/rollouts/{PRODUCT}/{id}",
            self.url.ui()
        );
        Ok(())
    }

    /// Prints `qx-publish rollout status` for the channel's newest rollout; its JSON.
    fn rollout_status(&self) -> anyhow::Result<serde_json::Value> {
        let status = self.rollout_json()?;
        let text = self.rollout_command(&[])?;
        print!("{text}");
        Ok(status)
    }

    /// The channel's newest rollout (`qx-publish rollout status --json`).
    fn rollout_json(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.rollout_command(&["--json"])?;
        let list: serde_json::Value =
            serde_json::from_str(&out).context("qx-publish rollout status --json")?;
        Ok(list["rollouts"][0].clone())
    }

    /// `qx-publish rollout status ARGS` on the demo's channel; its standard output.
    fn rollout_command(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.publish_bin)
            .args(["rollout", "status", "--server", self.url.base()])
            .args(["--product", PRODUCT, "--channel", CHANNEL])
            .args(args)
            .env("QX_PUBLISH_TOKEN", TOKEN)
            .output()
            .context("running qx-publish rollout status")?;
        if !out.status.success() {
            bail!(
                "qx-publish rollout status failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Asks for the rollout's status every [`POLL`] until `done` holds, at most `within`
    /// (the one bounded wait, `qx_testkit::wait::poll`).
    fn wait_rollout(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut last = Ok(serde_json::Value::Null);
        let ready = qx_testkit::wait::poll(within, POLL, || {
            last = self.rollout_json();
            last.as_ref().is_ok_and(&done)
        });
        let status = last?;
        if !ready {
            bail!(
                "waited {} s for {what}; the rollout: {status}",
                within.as_secs()
            );
        }
        println!("{what}: after {} s", start.elapsed().as_secs());
        Ok(())
    }
}
