//! The agent's metrics in the Prometheus text exposition format (version 0.0.4): written to
//! `updates.metrics.textfile` after each check and apply (for a node exporter's textfile
//! collector) and served at `GET /api/v1/updates/metrics` by the daemon. Everything comes
//! from the status ([`StatusSnapshot`]), whose records persist in the activity file
//! ([`crate::activity`]), so the values, the byte counter included, survive restarts.
//! A metric with nothing to say yet (no check so far) is left out.

use std::fmt::Write as _;

use qx_core::history::Outcome;

use crate::activity::CheckResult;
use crate::StatusSnapshot;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics of `s`.
pub fn render(s: &StatusSnapshot) -> String {
    let mut out = Out(String::new());
    out.metric(
        "qx_update_info",
        "gauge",
        "The product and channel the agent follows (always 1).",
        &[(&[("product", &s.product), ("channel", &s.channel)], 1)],
    );
    let installed: Vec<_> = s
        .installed
        .iter()
        .map(|(c, v)| [("component", c.as_str()), ("version", v.as_str())])
        .collect();
    out.metric(
        "qx_update_installed_info",
        "gauge",
        "The installed version of each component (always 1).",
        &installed.iter().map(|l| (&l[..], 1)).collect::<Vec<_>>(),
    );
    if let Some(c) = &s.last_check {
        out.gauge(
            "qx_update_last_check_timestamp_seconds",
            "When the last check ended (Unix time).",
            c.time.as_second(),
        );
        out.gauge(
            "qx_update_last_check_success",
            "1 if the last check succeeded, 0 if it failed.",
            i64::from(c.result != CheckResult::Failed),
        );
        out.gauge(
            "qx_update_available",
            "1 if the last check found a release that an apply would install.",
            i64::from(c.result == CheckResult::Available),
        );
        let version = c.version.as_deref().unwrap_or("");
        out.metric(
            "qx_update_last_check_info",
            "gauge",
            "The last check's result (up_to_date, available, failed) and the offered version (always 1).",
            &[(&[("result", c.result.as_str()), ("version", version)], 1)],
        );
    }
    if let Some(a) = &s.last_apply {
        out.gauge(
            "qx_update_last_apply_timestamp_seconds",
            "When the last apply ended (Unix time).",
            a.time.as_second(),
        );
        out.gauge(
            "qx_update_last_apply_success",
            "1 if the last apply succeeded, 0 if it failed or was rolled back.",
            i64::from(a.result == Outcome::Success),
        );
        let by = a.started_by.as_ref().map(|b| b.via.as_str()).unwrap_or("");
        out.metric(
            "qx_update_last_apply_info",
            "gauge",
            "The last apply's result (success, failed, rolled_back, reverted), its release and who started it (cli, api, automatic) (always 1).",
            &[(
                &[
                    ("result", a.result.as_str()),
                    ("version", a.version.as_deref().unwrap_or("")),
                    ("started_by", by),
                ],
                1,
            )],
        );
    }
    out.metric(
        "qx_update_downloaded_bytes_total",
        "counter",
        "Bytes downloaded for updates (artifacts, images, deltas, bundles) over the life of the host.",
        &[(&[], i64::try_from(s.downloaded_bytes).unwrap_or(i64::MAX))],
    );
    out.gauge(
        "qx_update_operation_in_progress",
        "1 while an update runs or an interrupted one waits for recovery.",
        i64::from(s.operation.is_some()),
    );
    out.0
}

struct Out(String);

type Sample<'a> = (&'a [(&'a str, &'a str)], i64);

impl Out {
    fn gauge(&mut self, name: &str, help: &str, value: i64) {
        self.metric(name, "gauge", help, &[(&[], value)]);
    }

    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[Sample<'_>]) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }
}

/// A label value as the text format wants it: `\`, `"` and line feeds escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::{LastApply, LastCheck};
    use qx_core::history::{Origin, StartedBy};
    use qx_core::status::UpdateState;

    fn snapshot() -> StatusSnapshot {
        StatusSnapshot {
            state: UpdateState::Idle,
            operation_id: None,
            product: "quantix-os".into(),
            channel: "stable".into(),
            installed: [("qx-node".to_owned(), "1.0.1".to_owned())].into(),
            history: Vec::new(),
            operation: None,
            last_check: None,
            last_apply: None,
            downloaded_bytes: 0,
            schedule: None,
        }
    }

    #[test]
    fn a_fresh_host_has_no_check_or_apply_series() {
        let text = render(&snapshot());
        assert!(text.contains("qx_update_info{product=\"quantix-os\",channel=\"stable\"} 1\n"));
        assert!(
            text.contains("qx_update_installed_info{component=\"qx-node\",version=\"1.0.1\"} 1\n")
        );
        assert!(text.contains(
            "# TYPE qx_update_downloaded_bytes_total counter\nqx_update_downloaded_bytes_total 0\n"
        ));
        assert!(!text.contains("qx_update_last_check"), "{text}");
        assert!(!text.contains("qx_update_last_apply"), "{text}");
    }

    #[test]
    fn check_and_apply_records_become_series_with_escaped_labels() {
        let mut s = snapshot();
        let time: jiff::Timestamp = "2026-11-22T12:00:00Z".parse().expect("time");
        s.last_check = Some(LastCheck {
            time,
            result: CheckResult::Failed,
            version: None,
            error: Some("down".into()),
            code: Some(11),
        });
        s.last_apply = Some(LastApply {
            time,
            operation_id: None,
            version: Some("2.0.0\"\\\n".into()),
            result: Outcome::RolledBack,
            reason: None,
            code: None,
            started_by: Some(StartedBy::via(Origin::Automatic)),
        });
        s.downloaded_bytes = 4096;
        let text = render(&s);
        let t = time.as_second();
        for line in [
            format!("qx_update_last_check_timestamp_seconds {t}"),
            "qx_update_last_check_success 0".into(),
            "qx_update_available 0".into(),
            "qx_update_last_check_info{result=\"failed\",version=\"\"} 1".into(),
            "qx_update_last_apply_success 0".into(),
            "qx_update_last_apply_info{result=\"rolled_back\",version=\"2.0.0\\\"\\\\\\n\",started_by=\"automatic\"} 1".into(),
            "qx_update_downloaded_bytes_total 4096".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
