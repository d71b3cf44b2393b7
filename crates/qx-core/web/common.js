// The helpers both embedded pages share: the update server's fleet dashboard and the host
// agent's Updates page. Each page loads this script before its own app.js (classic scripts,
// in document order: the names declared here are visible there) and passes what differs
// between the two, such as the token's storage key and the API prefix, to apiSession(). The
// page logic stays in each app.js. Embedded once (qx_core::api::COMMON_JS), served by both.
"use strict";

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(message, details, status) { super(message); this.details = details || []; this.status = status; }
}

// The signed-in API of one page. settings:
//   tokenKey     the session storage key of the token (kept until the browser tab closes)
//   base         the prefix of every API path
//   peer         who answers, in messages ("update server", "update agent")
//   unreachable  the details shown when the peer cannot be reached
//   refusals     { status: message }: the answers that sign out, and what the sign-in form
//                then says
//   signOut      the page's sign-out, called with that message
function apiSession(settings) {
  const { tokenKey, base, peer, unreachable, refusals, signOut } = settings;

  function token() { return sessionStorage.getItem(tokenKey); }
  function saveToken(t) { sessionStorage.setItem(tokenKey, t); }
  function forgetToken() { sessionStorage.removeItem(tokenKey); }

  // The token goes in the Authorization header, never in the URL. `signOutOnRefusal: false`
  // leaves a refusal to the caller (an action the token may not take, while it may read).
  async function api(path, options = {}) {
    const { signOutOnRefusal = true, ...init } = options;
    const headers = Object.assign({}, init.headers || {}, { Authorization: "Bearer " + token() });
    let response;
    try {
      response = await fetch(base + path, Object.assign({}, init, { headers }));
    } catch (e) {
      throw new ApiError("The " + peer + " on " + location.host + " could not be reached: " + e.message, unreachable);
    }
    const refusal = signOutOnRefusal ? refusals[response.status] : undefined;
    if (refusal !== undefined) {
      signOut(refusal);
      throw new ApiError("Not signed in", [], response.status);
    }
    return response;
  }

  // The JSON body of an answer; an error answer throws its `error` and `details`.
  async function readJson(response) {
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      const message = body && body.error ? body.error : "The " + peer + " answered " + response.status + " " + response.statusText;
      throw new ApiError(message, body && Array.isArray(body.details) ? body.details : [], response.status);
    }
    return body;
  }

  // The error box (or `box`, an error box of the page's own); a refusal is told on the
  // sign-in form instead.
  function showError(err, box = $("error")) {
    if (err && refusals[err.status] !== undefined) return;
    box.replaceChildren();
    const title = document.createElement("strong");
    title.textContent = err.message || String(err);
    box.append(title);
    if (err.details && err.details.length) {
      const list = document.createElement("ul");
      for (const d of err.details) {
        const li = document.createElement("li");
        li.textContent = typeof d === "string" ? d : JSON.stringify(d);
        list.append(li);
      }
      box.append(list);
    }
    box.hidden = false;
  }

  return { token, saveToken, forgetToken, api, readJson, showError };
}

function clearError() { $("error").hidden = true; $("error").replaceChildren(); }

// A table cell; nothing (null, undefined, "") shows as a dash.
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null || text === "" ? "–" : String(text);
  if (cls) td.className = cls;
  return td;
}

// A time from the API (RFC 3339) in the browser's locale; null for none, as given if unreadable.
function fmtTime(s) {
  if (!s) return null;
  const d = new Date(s);
  return isNaN(d) ? s : d.toLocaleString();
}
