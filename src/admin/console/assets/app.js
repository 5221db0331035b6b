// agentgate console: pending approvals (live), decisions, recorded sessions with replay, and
// usage totals (tokens and cost by identity, group, route or model).
// Everything is built with textContent: recorded data never becomes markup.
"use strict";

let me = null;
let pollTimer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function status(text) {
  document.getElementById("status").textContent = text || "";
}

async function api(method, path, body) {
  const headers = { "accept": "application/json" };
  if (method !== "GET") {
    headers["content-type"] = "application/json";
    headers["x-csrf-token"] = me.csrf;
  }
  const r = await fetch(path, { method, headers, credentials: "same-origin", body: body ? JSON.stringify(body) : undefined });
  if (r.status === 401) {
    location.href = "/console/login";
    throw new Error("signed out");
  }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || `${r.status}`);
  return data;
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function dur(s) {
  if (s < 60) return `${s}s`;
  return `${Math.floor(s / 60)}m ${s % 60}s`;
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function meta(pairs) {
  const dl = el("dl", { class: "meta" });
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "") continue;
    dl.append(el("dt", {}, k), el("dd", {}, v));
  }
  return dl;
}

// ---- approvals ------------------------------------------------------------

function approvalCard(a) {
  const s = a.summary || {};
  const id = `a-${a.id}`;
  const card = el("article", { class: "card", "aria-labelledby": `${id}-h`, "data-id": a.id },
    el("h3", { id: `${id}-h` }, a.rule),
    meta([
      ["Requester", `${a.requester.subject} (${a.requester.issuer})`],
      ["Groups", (a.requester.groups || []).join(", ")],
      ["Request", `${a.method} ${a.path}${a.query ? "?" + a.query : ""} on route ${a.route}`],
      ["Waiting", dur(a.waiting_s)],
      ["Time left", dur(a.expires_in_s)],
      ["Approvals", `${(a.decisions || []).filter(d => d.decision === "approve").length} of ${a.min_approvals}`],
      ["Why", (a.reasons || []).join("; ")],
      ["Model", s.model],
      ["Tools", (s.tools || []).join(", ")],
      ["Last user message", s.last_user_message],
    ]),
  );
  if (s.tool_calls && s.tool_calls.length) {
    card.append(el("div", {}, el("strong", {}, "Tool calls"),
      el("pre", {}, s.tool_calls.map(c => `${c.name}(${c.arguments || ""})`).join("\n"))));
  }
  // MCP requests: the tool (and what its server says it does) with the arguments, masked.
  for (const m of s.mcp || []) {
    card.append(el("div", {}, el("strong", {}, m.method === "tools/call" ? "MCP tool call" : `MCP ${m.method}`),
      m.description ? el("p", { class: "hint" }, `${m.name}: ${m.description}`) : null,
      el("pre", {}, m.name ? `${m.name}(${m.arguments || ""})` : m.method)));
  }
  card.append(el("details", {}, el("summary", {}, "Masked request body"), el("pre", {}, s.body_excerpt || "")));
  if (a.can_decide) {
    const reason = el("textarea", { id: `${id}-reason`, name: "reason", required: true, "aria-label": `Reason for the decision on ${a.rule}` });
    const decide = async (action) => {
      if (!reason.value.trim()) {
        status("Give a reason for the decision.");
        reason.focus();
        return;
      }
      for (const b of card.querySelectorAll("button")) b.disabled = true;
      try {
        const r = await api("POST", `/v1/approvals/${a.id}/${action}`, { reason: reason.value });
        status(`${a.rule}: ${action === "approve" ? "approved" : "denied"}; now ${r.state}.`);
      } catch (e) {
        status(`Could not ${action}: ${e.message}`);
      }
      refreshApprovals();
    };
    card.append(
      el("label", { for: `${id}-reason` }, "Reason"), reason,
      el("div", { class: "actions" },
        el("button", { type: "button", class: "approve", onclick: () => decide("approve"), "aria-label": `Approve ${a.rule} for ${a.requester.subject}` }, "Approve"),
        el("button", { type: "button", class: "deny", onclick: () => decide("deny"), "aria-label": `Deny ${a.rule} for ${a.requester.subject}` }, "Deny")),
    );
  } else {
    const own = me && a.requester.subject === me.subject && a.requester.issuer === me.issuer;
    card.append(el("p", { class: "readonly" }, own ? "Read-only: this is your own request."
      : "Read-only: you are not in an approver group of this rule (or have decided already)."));
  }
  return card;
}

async function refreshApprovals() {
  try {
    const all = await api("GET", "/v1/approvals?state=all&limit=200");
    const pending = all.filter(a => a.state === "pending");
    const box = document.getElementById("pending");
    // Keep a reason being typed: only replace cards that changed.
    const typing = document.activeElement && document.activeElement.closest(".card");
    const keep = typing ? typing.getAttribute("data-id") : null;
    const cards = pending.map(a => (a.id === keep ? typing : approvalCard(a)));
    box.replaceChildren(...(cards.length ? cards : [el("p", { class: "hint" }, "Nothing waits for a decision.")]));
    document.getElementById("pending-count").textContent = pending.length ? String(pending.length) : "";
    const rows = all.filter(a => a.state !== "pending").slice(0, 50).map(a => {
      const last = (a.decisions || [])[a.decisions.length - 1];
      return el("tr", {},
        el("td", {}, when(a.decided_ms)),
        el("td", {}, a.rule),
        el("td", {}, a.requester.subject),
        el("td", {}, el("span", { class: `badge ${a.state}` }, a.state)),
        el("td", {}, (a.decisions || []).map(d => d.by.subject).join(", ")),
        el("td", {}, last ? last.reason : ""));
    });
    document.getElementById("decided").replaceChildren(...rows);
  } catch (e) {
    if (e.message !== "signed out") status(`Approvals: ${e.message}`);
  }
}

// ---- sessions -------------------------------------------------------------

async function searchSessions(ev) {
  if (ev) ev.preventDefault();
  const q = new URLSearchParams();
  const since = Number(document.getElementById("q-since").value);
  if (since) q.set("since_ms", String(Date.now() - since * 1000));
  for (const k of ["identity", "route", "conversation"]) {
    const v = document.getElementById(`q-${k}`).value.trim();
    if (v) q.set(k, v);
  }
  q.set("limit", "100");
  try {
    const list = await api("GET", `/v1/sessions?${q}`);
    const rows = list.map(e => el("tr", { class: "clickable", tabindex: "0", "data-id": e.id,
      onclick: () => showExchange(e.id), onkeydown: (k) => { if (k.key === "Enter") showExchange(e.id); } },
      el("td", {}, when(e.ts_ms)), el("td", {}, e.subject || ""), el("td", {}, e.route || ""),
      el("td", {}, `${e.method} ${e.path}`), el("td", {}, e.status)));
    document.getElementById("session-rows").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "5" }, "No exchanges match."))]));
  } catch (e) {
    status(`Sessions: ${e.message}`);
  }
}

function parseJson(s) {
  if (typeof s !== "string") return s || null;
  try { return JSON.parse(s); } catch { return null; }
}

function contentText(c) {
  if (typeof c === "string") return c;
  if (Array.isArray(c)) return c.map(p => p.text || p.input_text || "").join(" ");
  return c ? JSON.stringify(c) : "";
}

function message(role, text, calls) {
  return el("div", { class: `msg ${role}` }, el("div", { class: "role" }, role),
    text ? el("div", {}, text) : null,
    (calls || []).map(c => el("pre", {}, `→ ${c.name}(${c.arguments || ""})`)));
}

// The assistant's answer: from a JSON body, or reassembled from SSE deltas.
function answer(rec) {
  const events = rec.response && rec.response.events;
  let text = "";
  const calls = [];
  if (events) {
    for (const ev of events) {
      const d = parseJson(ev.data);
      if (!d) continue;
      if (d.jsonrpc && d.result && Array.isArray(d.result.content)) text += contentText(d.result.content);
      if (d.jsonrpc && d.error) text += `error ${d.error.code}: ${d.error.message}`;
      const ch = d.choices && d.choices[0];
      if (ch && ch.delta) {
        if (ch.delta.content) text += ch.delta.content;
        for (const tc of ch.delta.tool_calls || []) {
          if (tc.function && tc.function.name) calls.push({ name: tc.function.name, arguments: tc.function.arguments || "" });
          else if (tc.function && calls.length) calls[calls.length - 1].arguments += tc.function.arguments || "";
        }
      }
      if (d.type === "response.output_text.delta") text += d.delta || "";
      if (d.type === "content_block_delta" && d.delta && d.delta.text) text += d.delta.text;
    }
  } else {
    const body = parseJson(rec.response && rec.response.body);
    const msg = body && body.choices && body.choices[0] && body.choices[0].message;
    if (msg) {
      text = contentText(msg.content);
      for (const c of msg.tool_calls || []) calls.push({ name: c.function.name, arguments: c.function.arguments });
    } else if (body && body.output_text) {
      text = body.output_text;
    } else if (body && body.jsonrpc && body.result && Array.isArray(body.result.content)) {
      text = contentText(body.result.content);
    } else if (body && Array.isArray(body.content)) {
      text = body.content.map(p => p.text || "").join("");
    }
  }
  return { text, calls };
}

function player(events) {
  const out = el("pre", { "aria-label": "Replayed stream", "aria-live": "off" });
  const speed = el("select", { "aria-label": "Replay speed" },
    el("option", { value: "1" }, "1×"), el("option", { value: "4" }, "4×"), el("option", { value: "20" }, "20×"));
  let timers = [];
  const stop = () => { timers.forEach(clearTimeout); timers = []; };
  const play = () => {
    stop();
    out.textContent = "";
    const k = Number(speed.value);
    events.forEach((ev, i) => {
      timers.push(setTimeout(() => {
        const d = parseJson(ev.data);
        const ch = d && d.choices && d.choices[0];
        const piece = ch && ch.delta ? (ch.delta.content || "") : (d && d.delta && typeof d.delta === "string" ? d.delta : "");
        out.textContent += piece;
        if (i === events.length - 1) {
          out.setAttribute("data-done", "true");
          status("Replay finished.");
        }
      }, (ev.t_ms || 0) / k));
    });
  };
  return el("div", {}, el("h3", {}, `Stream replay (${events.length} events)`),
    el("div", { class: "player" },
      el("button", { type: "button", id: "replay", onclick: play, "aria-label": "Replay the recorded stream with its timing" }, "Replay"),
      el("label", {}, "Speed ", speed),
      el("button", { type: "button", onclick: stop, "aria-label": "Stop the replay" }, "Stop")),
    out);
}

async function showExchange(id) {
  const box = document.getElementById("exchange");
  try {
    const rec = await api("GET", `/v1/sessions/${encodeURIComponent(id)}`);
    const req = parseJson(rec.request && rec.request.body) || {};
    const msgs = (req.messages || []).map(m => message(m.role, contentText(m.content),
      (m.tool_calls || []).map(c => ({ name: c.function.name, arguments: c.function.arguments }))));
    if (typeof req.input === "string") msgs.push(message("user", req.input));
    // The Responses API's items (what the Agents SDK sends): messages, tool calls, tool results.
    for (const item of Array.isArray(req.input) ? req.input : []) {
      if (item.type === "function_call") msgs.push(message("assistant", "", [{ name: item.name, arguments: item.arguments }]));
      else if (item.type === "function_call_output") msgs.push(message("tool", contentText(item.output)));
      else if (item.role) msgs.push(message(item.role, contentText(item.content)));
    }
    // MCP (JSON-RPC): each request, a tool call with its arguments; the answer is the tool's.
    const rpc = [req].flat().filter(m => m && m.jsonrpc && m.method);
    for (const m of rpc) {
      const p = m.params || {};
      msgs.push(message("agent", m.method === "tools/call" ? "" : `${m.method}${p.name ? " " + p.name : ""}`,
        m.method === "tools/call" ? [{ name: p.name, arguments: JSON.stringify(p.arguments || {}) }] : []));
    }
    const tools = (req.tools || []).map(t => (t.function && t.function.name) || t.name).filter(Boolean);
    const a = answer(rec);
    const d = rec.decisions || {};
    const tls = rec.tls || {};
    const leg = (t) => (t ? `${t.version} ${t.cipher}` : "none");
    box.replaceChildren(
      el("h2", {}, `${rec.method} ${rec.path}`),
      meta([
        ["Time", rec.ts], ["Identity", rec.identity ? `${rec.identity.subject} (${rec.identity.method}, ${(rec.identity.groups || []).join(", ")})` : ""],
        ["Route", rec.route], ["Conversation", rec.conversation], ["Status", rec.response && rec.response.status],
        ["Duration", `${(rec.duration_ms || 0).toFixed(1)} ms`], ["Model", req.model], ["Tools offered", tools.join(", ")],
      ]),
      el("h3", {}, "Conversation"),
      ...msgs,
      message(rpc.length ? "tool" : "assistant", a.text, a.calls),
      el("h3", {}, "Decision trail"),
      meta([
        ["Masking", d.masked ? JSON.stringify(d.masked) : "nothing masked"],
        ["Guardrail", d.guardrail || "none"],
        ["Approval", (d.approval || []).map(x => `${x.rule}: ${x.state} (${x.how})` +
          (x.decisions || []).map(y => ` — ${y.decision === "approve" ? "approved" : "denied"} by ${y.by.subject}: ${y.reason}`).join("")).join("; ") || "none needed"],
        ["Error", d.error || ""],
      ]),
      el("h3", {}, "TLS evidence"),
      meta([["Agent → gateway", leg(tls.downstream)], ["Gateway → upstream", leg(tls.upstream)]]),
      rec.response && rec.response.events ? player(rec.response.events) : null,
    );
    box.hidden = false;
    box.scrollIntoView({ block: "start" });
  } catch (e) {
    status(`Session ${id}: ${e.message}`);
  }
}

// ---- usage ----------------------------------------------------------------

async function showUsage(ev) {
  if (ev) ev.preventDefault();
  const by = document.getElementById("u-by").value;
  const since = document.getElementById("u-since").value;
  try {
    const u = await api("GET", `/v1/usage?by=${encodeURIComponent(by)}&since=${encodeURIComponent(since)}`);
    document.getElementById("u-key").textContent = by[0].toUpperCase() + by.slice(1);
    document.getElementById("u-cost").textContent = `Cost (${u.currency})`;
    const n = (x) => Number(x || 0).toLocaleString();
    const rows = (u.rows || []).map(r => el("tr", { "data-key": r.key },
      el("td", {}, r.key), el("td", {}, n(r.requests)), el("td", {}, n(r.input_tokens)),
      el("td", {}, n(r.cached_input_tokens)), el("td", {}, n(r.output_tokens)),
      el("td", {}, n(r.reasoning_tokens)), el("td", {}, Number(r.cost || 0).toFixed(4))));
    document.getElementById("usage-rows").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "7" }, `No usage since ${u.since}.`))]));
  } catch (e) {
    status(`Usage: ${e.message}`);
  }
}

// ---- shell ----------------------------------------------------------------

function route() {
  const views = ["approvals", "sessions", "usage"];
  const view = views.includes(location.hash.slice(1)) ? location.hash.slice(1) : "approvals";
  for (const v of views) {
    document.getElementById(v).hidden = v !== view;
    const tab = document.getElementById(`tab-${v}`);
    if (v === view) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
  }
  clearInterval(pollTimer);
  if (view === "approvals") {
    refreshApprovals();
    pollTimer = setInterval(refreshApprovals, 2000);
  } else if (view === "sessions") {
    searchSessions();
  } else {
    showUsage();
  }
}

async function start() {
  me = await api("GET", "/console/api/me");
  document.getElementById("me").textContent = `${me.subject} · ${(me.groups || []).join(", ")}`;
  document.getElementById("signout").addEventListener("click", async () => {
    await api("POST", "/console/logout", {});
    location.href = "/console/signed-out";
  });
  document.getElementById("search").addEventListener("submit", searchSessions);
  document.getElementById("usage-form").addEventListener("submit", showUsage);
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", () => start().catch(e => status(e.message)));
