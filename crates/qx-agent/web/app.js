// Settings → Updates: talks to the host agent's API on the same origin.
// Every API call carries "Authorization: Bearer <token>"; the live progress is read from the
// server-sent events endpoint with fetch() (not EventSource, which cannot send that header).
// The helpers both pages share ($, apiSession, cell, fmtTime…) are in common.js, loaded first.
"use strict";

const { token, saveToken, forgetToken, api, readJson, showError } = apiSession({
  tokenKey: "qx-update-token",
  base: "/api/v1/updates",
  peer: "update agent",
  unreachable: ["Check that the qx-update daemon is running on this host and that the network allows port " + (location.port || "443") + "."],
  refusals: { 401: "The token was not accepted. Enter the token from the host's token file." },
  signOut,
});

let eventsAbort = null;
let lastCheck = null;
let applying = false;
let snapshot = null;

function fmtBytes(n) {
  if (!Number.isFinite(n)) return "?";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

const STEP_PERCENT = { checking: 2, installing: 70, migrating: 76, restarting: 84, verifying: 92, rolling_back: 95, done: 100 };

function describe(st) {
  switch (st.state) {
    case "checking": return "Checking for updates…";
    case "downloading": return "Downloading " + st.artifact;
    case "installing": return "Installing " + st.component;
    case "migrating": return "Running database migrations (" + st.component + ")";
    case "restarting": return "Restarting service " + st.service;
    case "verifying": return "Verifying that " + st.component + " runs the new version";
    case "rolling_back": return "Rolling back: " + st.reason;
    default: return st.state;
  }
}

// The state belongs to an apply (not to a check): the progress card shows only applies. An
// apply has an operation id from its first step on; a check has none.
function applyRunning(s) {
  const st = s.state || { state: "idle" };
  if (["idle", "done", "failed"].includes(st.state)) return false;
  return !(st.state === "checking" && !s.operation_id);
}

function fmtStartedBy(by) {
  if (!by) return null;
  switch (by.via) {
    case "cli": return "qx-update on the host" + (by.user ? " (" + by.user + ")" : "");
    case "api": return "the host API or this page";
    case "automatic": return "the agent's automatic apply";
    default: return by.via;
  }
}

const FAILED_RESULTS = ["failed", "rolled_back"];

function describeApply(a) {
  const v = a.version || "the offered release";
  switch (a.result) {
    case "success": return "Update to " + v + " completed.";
    case "reverted": return "Went back to " + v + " (the release was revoked).";
    case "rolled_back": return "Update to " + v + " was rolled back: " + (a.reason || "see the update log");
    default: return "Update to " + v + " failed: " + (a.reason || "see the update log");
  }
}

function renderProgress(s) {
  const section = $("progress");
  const bar = $("progress-bar");
  const detail = $("progress-detail");
  const st = s.state || { state: "idle" };
  detail.textContent = "";
  $("progress-by").textContent = "";
  if (applyRunning(s)) {
    section.dataset.state = st.state;
    $("step").textContent = describe(st);
    if (st.state === "downloading") {
      const frac = st.total > 0 ? Math.min(1, st.bytes / st.total) : 0;
      bar.value = Math.round(5 + frac * 60);
      detail.textContent = fmtBytes(st.bytes) + " of " + fmtBytes(st.total) + (st.rate ? " at " + fmtBytes(st.rate) + "/s" : "");
    } else if (st.state in STEP_PERCENT) {
      bar.value = STEP_PERCENT[st.state];
    }
    return;
  }
  const a = s.last_apply;
  if (!a) {
    section.dataset.state = "idle";
    $("step").textContent = "No update running.";
    bar.value = 0;
    return;
  }
  const failed = FAILED_RESULTS.includes(a.result);
  section.dataset.state = failed ? "failed" : "done";
  bar.value = 100;
  $("step").textContent = describeApply(a);
  detail.textContent = "Ended " + fmtTime(a.time) + "." + (failed
    ? " The host still runs the versions listed above. Every step is in the update log, /var/log/quantix/update.log."
    : "");
  const by = fmtStartedBy(a.started_by);
  if (by) $("progress-by").textContent = "Started by " + by + ".";
}

function renderState(s) {
  renderProgress(s);
  const busy = (s.state && !["idle", "done", "failed"].includes(s.state.state));
  $("check").disabled = busy;
  $("apply").disabled = busy || !(lastCheck && lastCheck.available) || !$("apply-confirm").hidden;
  if (applying && !applyRunning(s) && s.state && (s.state.state === "done" || s.state.state === "failed")) {
    applying = false;
    if (s.state.state === "done") {
      $("check-message").textContent = "The host runs " + s.state.version + ". Check again for newer releases.";
      $("release").hidden = true;
      lastCheck = null;
    }
  }
}

function describeCheck(c) {
  switch (c.result) {
    case "up_to_date": return "up to date (" + c.version + ")";
    case "available": return c.version + " available";
    default: return "failed: " + (c.error || "see the update log");
  }
}

function renderSchedule(s) {
  const c = s.last_check;
  $("last-check").textContent = c ? fmtTime(c.time) + " · " + describeCheck(c) : "Never";
  $("last-check").className = c && c.result === "failed" ? "bad" : "";
  $("last-check").title = c && c.error ? c.error : "";
  const sch = s.schedule;
  if (!sch) {
    for (const id of ["next-check", "auto-apply", "window"]) $(id).textContent = "–";
    return;
  }
  $("next-check").textContent = !sch.enabled
    ? "None: automatic checks are turned off (updates.enabled)"
    : sch.next_check ? fmtTime(sch.next_check) : "Soon";
  $("auto-apply").textContent = sch.auto_apply
    ? "On" + (sch.auto_reboot ? ", and the host reboots into a new system image" : "")
    : "Off: updates are applied from this page or the command line";
  const w = sch.maintenance_window;
  $("window").textContent = !w
    ? (sch.auto_apply ? "None: updates are applied as soon as they are found" : "None")
    : w.window + " (host time) · " + (w.open ? "open now" : "closed, opens " + (fmtTime(w.next_open) || "not within a week"));
  $("window").className = w && w.open ? "ok" : "";
}

// Each cell of a table carries its column's name, shown beside it when the table is laid out
// as a list (narrow screens).
function labelCells(table) {
  const names = Array.from(table.tHead.rows[0].cells, (th) => th.textContent);
  for (const row of table.tBodies[0].rows) {
    Array.from(row.cells).forEach((td, i) => { td.dataset.label = names[i] || ""; });
  }
}

function renderSnapshot(s) {
  snapshot = s;
  $("product").textContent = s.product || "–";
  $("channel").textContent = s.channel || "–";
  const body = $("installed-table").tBodies[0];
  body.replaceChildren();
  const names = Object.keys(s.installed || {}).sort();
  for (const name of names) {
    const tr = document.createElement("tr");
    tr.dataset.component = name;
    tr.append(cell(name), cell(s.installed[name], "version"));
    body.append(tr);
  }
  labelCells($("installed-table"));
  $("installed-empty").hidden = names.length > 0;

  const hist = $("history-table").tBodies[0];
  hist.replaceChildren();
  const entries = (s.history || []).slice().reverse();
  for (const h of entries) {
    const tr = document.createElement("tr");
    const outcome = cell(h.outcome.replace("_", " "), "outcome-" + h.outcome);
    if (h.reason) {
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = h.reason;
      outcome.append(reason);
    }
    const version = h.from_version ? h.from_version + " → " + h.version : h.version;
    tr.append(cell(fmtTime(h.time)), cell(h.kind), cell(version, "version"),
      cell((h.components || []).join(", ")), cell(fmtStartedBy(h.started_by), "started-by"), outcome);
    hist.append(tr);
  }
  labelCells($("history-table"));
  $("history-empty").hidden = entries.length > 0;
  renderSchedule(s);
  renderState(s);
}

function renderCheck(r) {
  lastCheck = r;
  $("release").hidden = false;
  $("offered-version").textContent = r.version;
  $("update-type").textContent = r.update_type;
  $("release-date").textContent = fmtTime(r.release_date);
  $("release-date").dateTime = r.release_date;
  $("release-notes").textContent = r.release_notes || "(no release notes)";
  const body = $("changes").tBodies[0];
  body.replaceChildren();
  for (const c of r.changes || []) {
    const tr = document.createElement("tr");
    tr.dataset.component = c.name;
    tr.append(cell(c.name), cell(c.installed || "not installed", "version"), cell(c.offered, "version"),
      cell(c.action, "change-" + c.action));
    body.append(tr);
  }
  labelCells($("changes"));
  $("check-message").textContent = r.available
    ? "Version " + r.version + " is available on channel " + r.channel + "."
    : "This host is up to date (newest on channel " + r.channel + ": " + r.version + ").";
  $("apply").disabled = !r.available;
}

async function refreshStatus() {
  const s = await readJson(await api("/status"));
  renderSnapshot(s);
}

async function check() {
  clearError();
  $("check-error").hidden = true;
  $("check").disabled = true;
  $("check-message").textContent = "Checking for updates…";
  try {
    renderCheck(await readJson(await api("/check")));
  } catch (e) {
    $("check-message").textContent = "The check did not complete.";
    // In the check's own card, never in the progress card (which shows applies).
    showError(e, $("check-error"));
  } finally {
    $("check").disabled = false;
  }
}

// The last apply of `version` failed (or was rolled back): the record of it, else null.
function lastFailure(version) {
  const a = snapshot && snapshot.last_apply;
  if (a) return a.version === version && FAILED_RESULTS.includes(a.result) ? a : null;
  const hist = (snapshot && snapshot.history) || [];
  const h = hist[hist.length - 1];
  return h && h.version === version && FAILED_RESULTS.includes(h.outcome)
    ? { version, time: h.time, reason: h.reason, result: h.outcome } : null;
}

// Apply, after a confirmation when the last apply of the same version failed.
function applyClicked() {
  const failed = lastCheck && lastFailure(lastCheck.version);
  if (!failed) { apply(); return; }
  $("apply-confirm-text").textContent = "The last apply of " + failed.version + " " +
    (failed.result === "rolled_back" ? "was rolled back" : "failed") + " (" + fmtTime(failed.time) + ")" +
    (failed.reason ? ": " + failed.reason : ".");
  $("apply-confirm").hidden = false;
  $("apply").disabled = true;
  $("apply-cancel").focus();
}

function closeConfirm() {
  $("apply-confirm").hidden = true;
  $("apply").disabled = !(lastCheck && lastCheck.available);
}

async function apply() {
  clearError();
  $("apply-confirm").hidden = true;
  $("apply").disabled = true;
  try {
    // The whole offered release, as `qx-update apply` does (the agent re-verifies the manifest).
    const response = await api("/apply", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    const body = await readJson(response);
    applying = true;
    $("step").textContent = "Update started (operation " + (body.operation_id || "?") + ")…";
  } catch (e) {
    $("apply").disabled = false;
    showError(e);
  }
}

// Reads the server-sent events stream and renders each status snapshot. Reconnects after a
// short pause when the stream ends (for example when the agent restarts itself).
async function followEvents() {
  if (eventsAbort) eventsAbort.abort();
  const controller = new AbortController();
  eventsAbort = controller;
  let failures = 0;
  while (!controller.signal.aborted && token()) {
    try {
      const response = await api("/events", { signal: controller.signal, headers: { Accept: "text/event-stream" } });
      if (!response.ok) { await readJson(response); }
      failures = 0;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let idx;
        while ((idx = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, idx);
          buffer = buffer.slice(idx + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (data) {
            try { renderSnapshot(JSON.parse(data)); } catch (_) { /* keep-alive or partial */ }
          }
        }
      }
    } catch (e) {
      if (controller.signal.aborted || e.status === 401) return;
      failures++;
      if (failures === 3) showError(e);
    }
    await new Promise((r) => setTimeout(r, Math.min(10000, 1000 * (failures + 1))));
  }
}

function signOut(message) {
  forgetToken();
  if (eventsAbort) { eventsAbort.abort(); eventsAbort = null; }
  $("app").hidden = true;
  $("token-form").hidden = false;
  $("token-message").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

async function start() {
  $("token-form").hidden = true;
  $("app").hidden = false;
  clearError();
  try {
    await refreshStatus();
    followEvents();
  } catch (e) {
    showError(e);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("host").textContent = location.host;
  $("token-login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    saveToken(t);
    start();
  });
  $("check").addEventListener("click", check);
  $("apply").addEventListener("click", applyClicked);
  $("apply-cancel").addEventListener("click", closeConfirm);
  $("apply-again").addEventListener("click", apply);
  $("sign-out").addEventListener("click", () => signOut("Token forgotten."));
  if (token()) start(); else signOut();
});
