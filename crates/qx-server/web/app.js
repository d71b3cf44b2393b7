// The fleet dashboard: talks to the update server's API on the same origin.
// Every API call carries "Authorization: Bearer <operator token>"; the live changes are read
// from the server-sent events endpoint with fetch() (not EventSource, which cannot send that
// header). Only counts and one page of hosts are ever fetched: the page stays small with any
// number of hosts. The helpers both pages share ($, apiSession, cell, fmtTime…) are in
// common.js, loaded first.
"use strict";

const PAGE = 50;
const LATE = 10;
const THROTTLE_MS = 1000;

const { token, saveToken, forgetToken, api, readJson, showError } = apiSession({
  tokenKey: "qx-fleet-token",
  // Relative to the page (/ui), so the dashboard works under a proxy's base path too.
  base: "api/v1",
  peer: "update server",
  unreachable: ["Check that qx-update-server is running and reachable."],
  refusals: {
    401: "The token was not accepted. Enter an operator token.",
    403: "This token may not read the fleet: it needs the read scope.",
  },
  signOut,
});

let eventsAbort = null;
// The host table: the filters' query, the cursor of the shown page, the cursors before it.
let filterQuery = "";
let cursors = [];
let cursor = null;
let nextCursor = null;
let refreshTimer = null;
let lastRefresh = 0;
// The products the summary names: their rollouts are listed.
let products = [];

async function getJson(path) { return readJson(await api(path)); }

function hostLink(h) {
  const td = document.createElement("td");
  const a = document.createElement("a");
  a.href = "#/hosts/" + encodeURIComponent(h.id);
  a.textContent = h.hostname ? h.hostname + " (" + h.id + ")" : h.id;
  td.append(a);
  return td;
}

function fill(tableId, rows, emptyId) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
  if (emptyId) $(emptyId).hidden = rows.length > 0;
}

function row(key, cells) {
  const tr = document.createElement("tr");
  tr.dataset.key = key;
  tr.append(...cells);
  return tr;
}

// The overview: counts from the summary, bars relative to the hosts of the component.
function renderSummary(s) {
  const live = { online: 0, overdue: 0, offline: 0 };
  for (const l of s.by_liveness) live[l.liveness] = l.hosts;
  $("count-total").textContent = live.online + live.overdue + live.offline;
  $("count-online").textContent = live.online;
  $("count-overdue").textContent = live.overdue;
  $("count-offline").textContent = live.offline;
  $("server-time").textContent = fmtTime(s.server_time);
  products = [...new Set(s.by_channel.map((c) => c.product))].sort();

  const perComponent = {};
  const versions = {};
  for (const v of s.by_version) {
    const c = v.product + "/" + v.component;
    const k = c + "/" + v.version;
    perComponent[c] = (perComponent[c] || 0) + v.hosts;
    if (!versions[k]) versions[k] = { product: v.product, component: v.component, version: v.version, hosts: 0 };
    versions[k].hosts += v.hosts;
  }
  fill("versions-table", Object.keys(versions).sort().map((k) => {
    const v = versions[k];
    const bar = document.createElement("progress");
    bar.max = perComponent[v.product + "/" + v.component];
    bar.value = v.hosts;
    bar.setAttribute("aria-label", v.hosts + " of " + bar.max);
    const td = document.createElement("td");
    td.className = "bar-col";
    td.append(bar);
    return row(k, [cell(v.product), cell(v.component), cell(v.version, "version"), cell(v.hosts, "count"), td]);
  }), "versions-empty");
  fill("channels-table", s.by_channel.map((c) =>
    row(c.product + "/" + c.channel, [cell(c.product), cell(c.channel || "(no check-in yet)"), cell(c.hosts, "count")])));
  fill("states-table", s.by_state.map((c) =>
    row(c.product + "/" + c.state, [cell(c.product), cell(c.state.replace("_", " "), "state-" + c.state), cell(c.hosts, "count")])));
  $("failures-since").textContent = fmtTime(s.failures_since);
  fill("failures-table", s.recent_failures.map((f) =>
    row(f.type + "/" + f.message, [cell(f.type.replace("_", " "), "state-" + f.type), cell(f.message || "(no message)"), cell(f.count, "count")])),
  "failures-empty");
}

async function refreshLate() {
  const [overdue, offline] = await Promise.all([
    getJson("/hosts?liveness=overdue&limit=" + LATE),
    getJson("/hosts?liveness=offline&limit=" + LATE),
  ]);
  const hosts = overdue.hosts.concat(offline.hosts);
  fill("late-table", hosts.map((h) =>
    row(h.id, [hostLink(h), cell(h.liveness, "live-" + h.liveness), cell(fmtTime(h.last_checkin)), cell(fmtTime(h.next_checkin_due))])),
  "late-empty");
  $("late-more").hidden = !(overdue.next || offline.next);
}

function versionsText(v) {
  return Object.keys(v || {}).sort().map((k) => k + " " + v[k]).join(", ");
}

async function refreshHosts() {
  let q = filterQuery + (filterQuery ? "&" : "") + "limit=" + PAGE;
  if (cursor) q += "&cursor=" + encodeURIComponent(cursor);
  const page = await getJson("/hosts?" + q);
  fill("hosts-table", page.hosts.map((h) =>
    row(h.id, [hostLink(h), cell(h.product), cell(h.channel), cell(versionsText(h.versions), "version"),
      cell(h.state.replace("_", " "), "state-" + h.state), cell(h.liveness, "live-" + h.liveness), cell(fmtTime(h.last_checkin))])),
  "hosts-empty");
  nextCursor = page.next || null;
  const first = cursors.length * PAGE + 1;
  $("page-info").textContent = page.hosts.length
    ? "Hosts " + first + "–" + (first + page.hosts.length - 1) + (nextCursor ? "" : " (last page)")
    : "";
  $("prev").disabled = cursors.length === 0;
  $("next").disabled = !nextCursor;
}

async function refreshOverview() {
  const summary = await getJson("/fleet/summary");
  renderSummary(summary);
  await Promise.all([refreshLate(), refreshHosts(), refreshRollouts()]);
}

// Rollouts (staged releases): hosts per wave and stage, as the server counts them.
const FAILURES = ["failed", "rolled_back", "timed_out"];
const IN_PROGRESS = ["downloading", "installing", "confirming"];

function stageSum(w, names) { return names.reduce((n, s) => n + ((w.stages || {})[s] || 0), 0); }
function offered(w) { return Object.values(w.stages || {}).reduce((n, v) => n + v, 0); }
function rolloutSum(r, count) { return r.waves.reduce((n, w) => n + count(w), 0); }
function rolloutPath(product, id, action) {
  return "/" + encodeURIComponent(product) + "/rollouts/" + encodeURIComponent(id) + (action ? "/" + action : "");
}
function finished(r) { return r.state === "aborted" || r.state === "completed"; }

function rolloutLink(r) {
  const td = document.createElement("td");
  const a = document.createElement("a");
  a.href = "#/rollouts/" + encodeURIComponent(r.product) + "/" + encodeURIComponent(r.id);
  a.textContent = r.id;
  td.append(a);
  return td;
}

async function productRollouts(product) {
  return (await getJson("/" + encodeURIComponent(product) + "/rollouts")).rollouts;
}

async function refreshRollouts() {
  const lists = await Promise.all(products.map(productRollouts));
  const all = lists.flat().sort((a, b) => (a.started_at < b.started_at ? 1 : -1));
  fill("rollouts-table", all.map((r) =>
    row(r.product + "/" + r.id, [rolloutLink(r), cell(r.product), cell(r.channel), cell(r.version, "version"),
      cell(r.state, "state-" + r.state), cell(r.waves.filter((w) => w.opened_at).length + " of " + r.waves.length),
      cell(rolloutSum(r, (w) => stageSum(w, ["confirmed"])), "count"), cell(rolloutSum(r, (w) => stageSum(w, FAILURES)), "count")])),
  "rollouts-empty");
}

function shownRollout() {
  const m = location.hash.match(/^#\/rollouts\/([^/]+)\/(.+)$/);
  return m ? { product: decodeURIComponent(m[1]), id: decodeURIComponent(m[2]) } : null;
}

function percentText(x) { return x == null ? null : (Math.round(x * 10) / 10) + "%"; }

function renderRollout(r) {
  $("rollout-title").textContent = "Rollout " + r.id + " · " + r.product + " " + r.version;
  $("crumb-rollout-id").textContent = "Rollout " + r.id;
  const halt = $("rollout-halt");
  halt.hidden = !r.halt;
  halt.textContent = r.halt
    ? "Halted " + fmtTime(r.halt.at) + ": " + r.halt.reason + " (" + r.halt.failures + " failures of " + r.halt.finished + " finished hosts)."
    : "";
  const dl = $("rollout-fields");
  dl.replaceChildren();
  fieldRow(dl, "State", r.state);
  dl.querySelector("[data-field=State]").className = "state-" + r.state;
  fieldRow(dl, "Channel", r.channel);
  fieldRow(dl, "Version", r.version);
  fieldRow(dl, "Started", fmtTime(r.started_at));
  fieldRow(dl, "Gate", percentText(r.policy.gate) + " of finished hosts confirmed");
  fieldRow(dl, "Halts at", r.policy.max_failures + " failures, or above " + percentText(r.policy.max_failure_rate) +
    " after " + r.policy.min_sample + " finished hosts");
  fieldRow(dl, "Acknowledged", r.acknowledged_failures + " failures of " + r.acknowledged_finished + " finished hosts");
  if (r.ended_reason) fieldRow(dl, "Ended", r.ended_reason);
  $("rollout-pause").disabled = r.state !== "running";
  $("rollout-resume").disabled = !(r.state === "paused" || r.state === "halted");
  $("rollout-abort").disabled = finished(r);
  if (finished(r)) $("rollout-abort-confirm").hidden = true;
  fill("waves-table", r.waves.map((w, i) =>
    row(String(i), [cell(i), cell(w.percent + "%"), cell(w.gate.replace("_", " "), "gate-" + w.gate), cell(fmtTime(w.not_before)),
      cell(fmtTime(w.opened_at)), cell(w.eligible, "count"), cell(offered(w), "count"), cell(stageSum(w, IN_PROGRESS), "count"),
      cell(stageSum(w, ["confirmed"]), "count"), cell(stageSum(w, ["failed"]), "count"), cell(stageSum(w, ["rolled_back"]), "count"),
      cell(stageSum(w, ["timed_out"]), "count"), cell(percentText(w.confirmed_share), "count"), cell(fmtTime(w.eta))])));
  fill("rollout-failures", r.top_failures.map(([message, hosts]) =>
    row(message, [cell(message || "(no message)"), cell(hosts, "count")])), "rollout-failures-empty");
}

// Pause, resume or abort; a token without the rollout scope is told so, not signed out.
async function rolloutAction(action) {
  const shown = shownRollout();
  if (!shown) return;
  const say = $("rollout-action-message");
  say.textContent = "";
  try {
    const answer = await api(rolloutPath(shown.product, shown.id, action), { method: "POST", signOutOnRefusal: false });
    renderRollout(await readJson(answer));
    say.textContent = { pause: "Paused.", resume: "Resumed: failures seen so far are acknowledged.", abort: "Aborted." }[action];
  } catch (e) {
    if (e.status === 403) say.textContent = "This token may not change rollouts: it needs the rollout scope.";
    else if (e.status === 401) signOut("The token was not accepted. Enter an operator token.");
    else showError(e);
  }
}

// The host's place in its product's rollouts in progress: its wave and earliest time.
async function refreshHostRollouts(h) {
  const rollouts = (await productRollouts(h.product)).filter((r) => !finished(r) && r.channel === (h.channel || "stable"));
  const previews = await Promise.all(rollouts.map((r) =>
    getJson(rolloutPath(r.product, r.id, "preview") + "?host=" + encodeURIComponent(h.id))));
  const dl = $("host-rollouts");
  dl.replaceChildren();
  for (const p of previews) {
    const wave = p.wave == null ? "no wave" : "wave " + p.wave + (p.canary ? " (canary)" : "");
    const when = p.earliest ? ", earliest " + fmtTime(p.earliest) : p.not_before ? ", not before " + fmtTime(p.not_before) : "";
    fieldRow(dl, "Rollout " + p.rollout + " (" + p.version + ")", wave + when + (p.stage ? "; " + p.stage.replace("_", " ") : "") + ". " + p.summary);
  }
  $("host-rollouts-section").hidden = previews.length === 0;
}

function readFilters() {
  const params = new URLSearchParams();
  for (const name of ["product", "channel", "version", "state", "liveness", "label"]) {
    const v = $("f-" + name).value.trim();
    if (v) params.append(name, v);
  }
  return params.toString();
}

function fieldRow(dl, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value == null || value === "" ? "–" : String(value);
  dd.dataset.field = name;
  dl.append(dt, dd);
}

function eventDetails(e) {
  const parts = [];
  if (e.component) parts.push("component " + e.component);
  if (e.stage) parts.push("stage " + e.stage);
  if (e.exit_code != null) parts.push("exit code " + e.exit_code);
  if (e.count != null) parts.push(e.count + " dropped");
  if (e.message) parts.push(e.message);
  return parts.join("; ");
}

function renderHost(h) {
  $("host-title").textContent = h.hostname ? h.hostname + " (" + h.id + ")" : h.id;
  $("crumb-host-id").textContent = h.id;
  const dl = $("host-fields");
  dl.replaceChildren();
  fieldRow(dl, "Product", h.product);
  fieldRow(dl, "Channel", h.channel);
  fieldRow(dl, "State", h.state.replace("_", " "));
  fieldRow(dl, "Liveness", h.liveness);
  fieldRow(dl, "Last check-in", fmtTime(h.last_checkin));
  fieldRow(dl, "Expected by", fmtTime(h.next_checkin_due));
  fieldRow(dl, "Agent", h.agent_version);
  fieldRow(dl, "Booted slot", h.booted_slot);
  fieldRow(dl, "Pending", h.pending);
  fieldRow(dl, "Last message", h.last_message);
  fieldRow(dl, "Labels", Object.keys(h.labels || {}).sort().map((k) => k + "=" + h.labels[k]).join(", "));
  fieldRow(dl, "Enrolled", fmtTime(h.enrolled_at));
  fill("host-versions", Object.keys(h.versions || {}).sort().map((k) => row(k, [cell(k), cell(h.versions[k], "version")])));
  fill("host-slots", (h.slots || []).map((s) => row(s.name, [cell(s.name), cell(s.version, "version"), cell(s.state)])), "host-slots-empty");
  fill("timeline", (h.events || []).map((e) =>
    row(String(e.seq), [cell(e.seq), cell(fmtTime(e.received)), cell(e.type.replace("_", " "), "state-" + e.type),
      cell(e.version, "version"), cell(eventDetails(e))])), "timeline-empty");
}

function shownHost() {
  const m = location.hash.match(/^#\/hosts\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

async function refreshVisible() {
  const id = shownHost();
  const rollout = shownRollout();
  if (id) {
    const h = await getJson("/hosts/" + encodeURIComponent(id));
    renderHost(h);
    await refreshHostRollouts(h);
  } else if (rollout) renderRollout(await getJson(rolloutPath(rollout.product, rollout.id)));
  else await refreshOverview();
}

// A change refreshes what is shown, at most once per THROTTLE_MS.
function changed(change) {
  const id = shownHost();
  if (id && change.kind !== "resync" && change.host !== id) return;
  if (refreshTimer) return;
  const wait = Math.max(0, lastRefresh + THROTTLE_MS - Date.now());
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    lastRefresh = Date.now();
    refreshVisible().catch(showError);
  }, wait);
}

function setLive(on) {
  $("live").dataset.state = on ? "live" : "off";
  $("live").textContent = on ? "Live" : "Not live";
}

// Reads the server-sent events stream; reconnects after a pause when it ends.
async function followEvents() {
  if (eventsAbort) eventsAbort.abort();
  const controller = new AbortController();
  eventsAbort = controller;
  let failures = 0;
  while (!controller.signal.aborted && token()) {
    try {
      const response = await api("/fleet/events", { signal: controller.signal, headers: { Accept: "text/event-stream" } });
      if (!response.ok) await readJson(response);
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
          handleBlock(buffer.slice(0, idx));
          buffer = buffer.slice(idx + 2);
        }
      }
    } catch (e) {
      if (controller.signal.aborted || e.status === 401 || e.status === 403) return;
      failures++;
      if (failures === 3) showError(e);
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, Math.min(10000, 1000 * (failures + 1))));
    // Whatever changed while the stream was down.
    changed({ kind: "resync", host: "" });
  }
}

function handleBlock(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (name === "ready") setLive(true);
  else if (name === "change") {
    try { changed(JSON.parse(data.join("\n"))); } catch (_) { changed({ kind: "resync", host: "" }); }
  } else if (name === "resync") changed({ kind: "resync", host: "" });
}

function showView() {
  const id = shownHost();
  const rollout = shownRollout();
  $("overview").hidden = !!(id || rollout);
  $("host-view").hidden = !id;
  $("crumb-host").hidden = !id;
  $("rollout-view").hidden = !rollout;
  $("crumb-rollout").hidden = !rollout;
  $("rollout-abort-confirm").hidden = true;
  $("rollout-action-message").textContent = "";
  clearError();
  refreshVisible().catch(showError);
}

function signOut(message) {
  forgetToken();
  if (eventsAbort) { eventsAbort.abort(); eventsAbort = null; }
  setLive(false);
  $("app").hidden = true;
  $("token-form").hidden = false;
  $("token-message").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

async function start() {
  clearError();
  try {
    // The summary checks the token before the page shows anything.
    renderSummary(await getJson("/fleet/summary"));
  } catch (e) {
    showError(e);
    return;
  }
  $("token-form").hidden = true;
  $("app").hidden = false;
  showView();
  followEvents();
}

document.addEventListener("DOMContentLoaded", () => {
  $("server").textContent = location.host;
  $("token-login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    saveToken(t);
    start();
  });
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    filterQuery = readFilters();
    cursors = [];
    cursor = null;
    refreshHosts().catch(showError);
  });
  $("next").addEventListener("click", () => {
    if (!nextCursor) return;
    cursors.push(cursor);
    cursor = nextCursor;
    refreshHosts().catch(showError);
  });
  $("prev").addEventListener("click", () => {
    if (!cursors.length) return;
    cursor = cursors.pop();
    refreshHosts().catch(showError);
  });
  $("sign-out").addEventListener("click", () => signOut("Token forgotten."));
  $("rollout-pause").addEventListener("click", () => rolloutAction("pause"));
  $("rollout-resume").addEventListener("click", () => rolloutAction("resume"));
  $("rollout-abort").addEventListener("click", () => { $("rollout-abort-confirm").hidden = false; $("rollout-abort-yes").focus(); });
  $("rollout-abort-no").addEventListener("click", () => { $("rollout-abort-confirm").hidden = true; });
  $("rollout-abort-yes").addEventListener("click", () => { $("rollout-abort-confirm").hidden = true; rolloutAction("abort"); });
  window.addEventListener("hashchange", () => { if (token()) showView(); });
  if (token()) start(); else signOut();
});
