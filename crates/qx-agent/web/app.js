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
    case "idle": return "No update running.";
    case "checking": return "Checking for updates…";
    case "downloading": return "Downloading " + st.artifact;
    case "installing": return "Installing " + st.component;
    case "migrating": return "Running database migrations (" + st.component + ")";
    case "restarting": return "Restarting service " + st.service;
    case "verifying": return "Verifying that " + st.component + " runs the new version";
    case "rolling_back": return "Rolling back: " + st.reason;
    case "done": return "Update to " + st.version + " completed.";
    case "failed": return "Failed: " + st.reason;
    default: return st.state;
  }
}

function renderState(st) {
  const section = $("progress");
  section.dataset.state = st.state;
  $("step").textContent = describe(st);
  const bar = $("progress-bar");
  const detail = $("progress-detail");
  detail.textContent = "";
  if (st.state === "downloading") {
    const frac = st.total > 0 ? Math.min(1, st.bytes / st.total) : 0;
    bar.value = Math.round(5 + frac * 60);
    detail.textContent = fmtBytes(st.bytes) + " of " + fmtBytes(st.total) + (st.rate ? " at " + fmtBytes(st.rate) + "/s" : "");
  } else if (st.state in STEP_PERCENT) {
    bar.value = STEP_PERCENT[st.state];
  } else if (st.state === "idle") {
    bar.value = 0;
  }
  if (st.state === "failed") {
    detail.textContent = "The host still runs the versions listed above. Every step is in the update log, /var/log/quantix/update.log.";
  }
  const busy = !["idle", "done", "failed"].includes(st.state);
  $("check").disabled = busy;
  $("apply").disabled = busy || !(lastCheck && lastCheck.available);
  if (applying && (st.state === "done" || st.state === "failed")) {
    applying = false;
    if (st.state === "done") {
      $("check-message").textContent = "The host runs " + st.version + ". Check again for newer releases.";
      $("release").hidden = true;
      lastCheck = null;
    }
  }
}

function renderSnapshot(s) {
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
  $("installed-empty").hidden = names.length > 0;

  const hist = $("history-table").tBodies[0];
  hist.replaceChildren();
  const entries = (s.history || []).slice().reverse();
  for (const h of entries) {
    const tr = document.createElement("tr");
    const outcome = cell(h.outcome.replace("_", " "), "outcome-" + h.outcome);
    if (h.reason) outcome.title = h.reason;
    const version = h.from_version ? h.from_version + " → " + h.version : h.version;
    tr.append(cell(fmtTime(h.time)), cell(h.kind), cell(version, "version"),
      cell((h.components || []).join(", ")), outcome);
    hist.append(tr);
  }
  $("history-empty").hidden = entries.length > 0;
  renderState(s.state);
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
  $("check").disabled = true;
  $("check-message").textContent = "Checking for updates…";
  try {
    renderCheck(await readJson(await api("/check")));
  } catch (e) {
    $("check-message").textContent = "The check did not complete.";
    showError(e);
  } finally {
    $("check").disabled = false;
  }
}

async function apply() {
  clearError();
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
  $("apply").addEventListener("click", apply);
  $("sign-out").addEventListener("click", () => signOut("Token forgotten."));
  if (token()) start(); else signOut();
});
