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
  base: "/api/v1",
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
  await Promise.all([refreshLate(), refreshHosts()]);
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
  if (id) renderHost(await getJson("/hosts/" + encodeURIComponent(id)));
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
  $("overview").hidden = !!id;
  $("host-view").hidden = !id;
  $("crumb-host").hidden = !id;
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
  window.addEventListener("hashchange", () => { if (token()) showView(); });
  if (token()) start(); else signOut();
});
