// sipfront operator console: polls the admin JSON API once a second and updates the page in place.
//
// Plain ES2020 with no dependencies: this file is compiled into the binary and served as /assets/app.js, so it
// must not load anything from elsewhere. Every node answers the whole cluster's view, so the page works from
// any of them. Data from the API only ever reaches the page through textContent and attributes, never HTML.
//
// Hooks for the browser test (keep them exact):
//   body[data-loaded="true"]      after the first round in which every GET answered and the page rendered
//   #conn-status                  "live" or "connection lost"
//   #vip-holder                   "node N" or "none"
//   #leader                       the leader's node id, or "none"
//   .node-card[data-node-id=N]    data-role (leader, follower, candidate, …, unreachable), data-vip
//   .backend-row[data-backend=X]  data-state ("up"/"down"), data-drained ("true"/"false")
//   #active-calls                 a plain number
//   #cps-chart                    the canvas
//   #events > .event              data-kind
//   .demo-item                    data-kind ("node"/"pbx"), data-id, data-running (demo mode only)
"use strict";

const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 2500; // a hung node must turn the banner on, not stall the page
const DEMO_RECHECK_MS = 15000; // outside demo mode /api/v1/demo is a 404: ask rarely
const EVENT_LIMIT = 50;
const SWITCHOVER_ARM_MS = 5000; // the second click must come within this long
const TOKEN_KEY = "sipfront.adminToken";
const WINDOW_KEY = "sipfront.cpsWindowMin";

// ---------------------------------------------------------------------------------------------------------
// Small DOM helpers

const $ = (sel) => document.querySelector(sel);

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c != null) el.append(c);
  return el;
}

// Writes only on change, so a steady page does no DOM work and text selection survives the polls.
function setText(el, value) {
  const t = value == null ? "" : String(value);
  if (el.textContent !== t) el.textContent = t;
}
function setAttr(el, name, value) {
  const v = String(value);
  if (el.getAttribute(name) !== v) el.setAttribute(name, v);
}
function show(el, visible) {
  if (el.hidden === !!visible) el.hidden = !visible;
}

// Puts `els` into `container` in this order, moving only what is out of place (moving a focused button
// would drop its focus), and removes the children that are not in `els`.
function placeInOrder(container, els) {
  els.forEach((el, i) => {
    if (container.children[i] !== el) container.insertBefore(el, container.children[i] || null);
  });
  while (container.children.length > els.length) container.lastElementChild.remove();
}

// ---------------------------------------------------------------------------------------------------------
// Formatting

const pad = (n, w = 2) => String(n).padStart(w, "0");

function clock(ms, withMs = true) {
  const d = new Date(ms);
  const s = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return withMs ? `${s}.${pad(d.getMilliseconds(), 3)}` : s;
}

function fmtDuration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const m = Math.floor(ms / 60000);
  return `${m} min ${Math.floor((ms % 60000) / 1000)} s`;
}

function fmtAge(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d`;
}

function fmtRate(v) {
  if (v === 0) return "0";
  return v < 10 ? v.toFixed(1) : String(Math.round(v));
}

const capitalize = (s) => s.charAt(0).toUpperCase() + s.slice(1);
const dash = (v) => (v == null ? "—" : String(v));

// ---------------------------------------------------------------------------------------------------------
// The API

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function savedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return ""; // storage disabled: the field still works for this page's lifetime
  }
}

// One request with a deadline. Resolves to the parsed JSON; rejects with an HttpError carrying the API's
// {"error": …} text, or with a plain Error for a timeout or a network failure.
async function api(method, path, body) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    const token = $("#token").value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      signal: ctrl.signal,
    });
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!res.ok) {
      const why = data && typeof data.error === "string" ? data.error : `HTTP ${res.status}`;
      throw new HttpError(res.status, why);
    }
    if (data === null) throw new HttpError(res.status, "the answer is not JSON");
    return data;
  } catch (e) {
    if (e.name === "AbortError") throw new Error(`no answer within ${FETCH_TIMEOUT_MS / 1000} s`);
    if (e instanceof TypeError) throw new Error("the server cannot be reached");
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------------------
// State

const state = {
  cluster: null,
  backends: null,
  stats: null,
  events: null,
  demo: null, // null: not in demo mode (or not asked yet)
  demoCheckedAt: -Infinity,
  lastOkAt: null, // local time of the last round in which every GET answered
  loaded: false,
  cpsWindowMin: 5,
  seenEvents: new Set(), // keys of events already shown, to flash only the new ones
  eventsShown: false,
};

// ---------------------------------------------------------------------------------------------------------
// Polling: one round (four GETs in parallel, plus the demo state) at a time, the next starting a second
// after the previous one started, or right away after an action.

const CORE = [
  ["cluster", "/api/v1/cluster"],
  ["backends", "/api/v1/backends"],
  ["stats", "/api/v1/stats"],
  ["events", `/api/v1/events?limit=${EVENT_LIMIT}`],
];

let pollTimer = 0;
let pollBusy = false;
let pollAgain = false;

async function pollRound() {
  const results = await Promise.allSettled(CORE.map(([, path]) => api("GET", path)));
  const failures = [];
  results.forEach((r, i) => {
    const [key, path] = CORE[i];
    if (r.status === "fulfilled") state[key] = r.value;
    else failures.push({ path, why: r.reason.message });
  });
  if (state.demo !== null || performance.now() - state.demoCheckedAt > DEMO_RECHECK_MS) await pollDemo();
  render();
  setConnection(failures);
  if (!state.loaded && CORE.every(([key]) => state[key] !== null)) {
    state.loaded = true;
    document.body.dataset.loaded = "true";
  }
}

async function pollDemo() {
  state.demoCheckedAt = performance.now();
  try {
    state.demo = await api("GET", "/api/v1/demo");
  } catch (e) {
    if (e instanceof HttpError && e.status === 404) state.demo = null;
    // Any other failure leaves the last answer: the core GETs report the connection.
  }
}

async function poll() {
  clearTimeout(pollTimer);
  if (pollBusy) {
    pollAgain = true;
    return;
  }
  pollBusy = true;
  const started = performance.now();
  try {
    await pollRound();
  } catch (e) {
    console.error("sipfront console: rendering failed", e);
  }
  pollBusy = false;
  const wait = pollAgain ? 0 : Math.max(100, POLL_MS - (performance.now() - started));
  pollAgain = false;
  pollTimer = setTimeout(poll, wait);
}

function setConnection(failures) {
  const ok = failures.length === 0;
  if (ok) state.lastOkAt = Date.now();
  const pill = $("#conn-status");
  setText(pill, ok ? "live" : "connection lost");
  pill.className = `pill ${ok ? "pill-live" : "pill-lost"}`;
  show($("#conn-banner"), !ok);
  document.body.classList.toggle("stale", !ok);
  if (ok) {
    setText($("#updated"), clock(state.lastOkAt, false));
  } else {
    // Usually every request failed the same way (the node is down): say it once.
    const whys = [...new Set(failures.map((f) => f.why))];
    const text =
      whys.length === 1 && failures.length === CORE.length
        ? `${capitalize(whys[0])} (all ${CORE.length} requests failed).`
        : failures.map((f) => `GET ${f.path}: ${f.why}.`).join(" ");
    setText($("#conn-error"), text);
    setText($("#conn-last"), state.lastOkAt ? clock(state.lastOkAt, false) : "never: no data yet");
  }
}

// ---------------------------------------------------------------------------------------------------------
// Rendering

function render() {
  if (state.cluster) renderCluster(state.cluster);
  if (state.backends) renderBackends(state.backends.backends || []);
  if (state.stats) renderStats(state.stats);
  if (state.events) renderEvents(state.events.events || []);
  renderDemo(state.demo);
}

function nodeName(id) {
  const n = state.cluster && state.cluster.nodes.find((x) => x.id === id);
  return n ? n.name : null;
}

function renderCluster(c) {
  setText($("#self-node"), `node ${c.self} · ${c.self_name}`);
  const title = `sipfront · ${c.self_name}`;
  if (document.title !== title) document.title = title;

  const holder = c.vip_holder;
  setText($("#vip-holder"), holder == null ? "none" : `node ${holder}`);
  setText($("#vip-address"), c.vip == null ? "no VIP configured" : c.vip);
  setText($("#vip-name"), holder != null ? `on ${nodeName(holder) || "?"}` : c.vip != null ? "not held by any node" : "");
  $("#kpi-vip").classList.toggle("alarm", c.vip != null && holder == null);
  $("#kpi-vip").classList.toggle("held", holder != null);

  const leader = c.nodes.find((n) => n.id === c.leader);
  setText($("#leader"), c.leader == null ? "none" : c.leader);
  show($("#leader-unit"), c.leader != null);
  setText($("#leader-foot"), leader ? `${leader.name} · term ${dash(leader.term)}` : "no leader: election running or no quorum");
  $("#kpi-leader").classList.toggle("alarm", c.leader == null);

  renderNodes(c);
  renderSwitchoverTargets(c);
}

// --- node cards ---

const nodeCards = new Map(); // node id → {el, refs}

function buildNodeCard(id) {
  const r = {};
  const fact = (label, key) => h("div", { class: "fact" }, h("dt", { text: label }), (r[key] = h("dd", { text: "—" })));
  const el = h(
    "article",
    { class: "card node-card", "data-node-id": id, "data-role": "unknown", "data-vip": "false" },
    h(
      "header",
      { class: "node-head" },
      h(
        "div",
        { class: "node-ident" },
        h("div", { class: "node-title" }, `Node ${id}`, (r.name = h("span", { class: "node-name" }))),
        h("div", { class: "node-badges" }, (r.role = h("span", { class: "role" })), (r.self = h("span", { class: "self-tag", text: "this page" }))),
      ),
      (r.vip = h("span", { class: "vip-badge", text: "VIP", title: "holds the virtual IP" })),
    ),
    (r.serving = h("div", { class: "serving" })),
    h("div", { class: "node-stats" },
      h("div", { class: "stat" }, (r.dialogs = h("span", { class: "stat-value" })), h("span", { class: "stat-label", text: "dialogs" })),
      h("div", { class: "stat" }, (r.flows = h("span", { class: "stat-value" })), h("span", { class: "stat-label", text: "flows", title: "registration flows" })),
      h("div", { class: "stat" }, (r.term = h("span", { class: "stat-value" })), h("span", { class: "stat-label", text: "term" })),
    ),
    (r.facts = h("dl", { class: "facts" }, fact("sees leader", "seesLeader"), fact("raft log", "log"), fact("apply lag", "lag"), fact("volume", "volume"))),
    (r.error = h("div", { class: "node-error" })),
  );
  return { el, r };
}

function updateNodeCard(card, n, c) {
  const { el, r } = card;
  const role = n.reachable ? n.role || "unknown" : "unreachable";
  setAttr(el, "data-role", role);
  setAttr(el, "data-vip", n.reachable && n.vip_held ? "true" : "false");
  el.classList.toggle("is-self", n.id === c.self);
  setText(r.name, n.name);
  setText(r.role, role);
  r.role.className = `role role-${role.replace(/[^a-z-]/g, "")}`;
  show(r.self, n.id === c.self);
  show(r.vip, n.reachable && n.vip_held);
  show(r.error, !n.reachable);
  show(r.facts, n.reachable);
  show(r.serving, n.reachable);
  if (!n.reachable) {
    setText(r.error, n.error || "no answer from this node");
    for (const k of ["dialogs", "flows", "term"]) setText(r[k], "—");
    return;
  }
  setText(r.serving, n.serving ? "serving SIP" : `standby: ${n.why_not || "not serving"}`);
  r.serving.className = `serving ${n.serving ? "serving-on" : "serving-off"}`;
  setText(r.dialogs, dash(n.dialogs));
  setText(r.flows, dash(n.flows));
  setText(r.term, dash(n.term));
  setText(r.seesLeader, n.leader == null ? "none" : `node ${n.leader}`);
  r.seesLeader.classList.toggle("warn", n.leader !== c.leader);
  setText(r.log, n.applied == null ? "—" : `applied ${n.applied} of ${dash(n.last_log)}`);
  setText(r.lag, n.apply_lag_ms == null ? "—" : `${n.apply_lag_ms} ms`);
  r.lag.classList.toggle("warn", (n.apply_lag_ms || 0) > 1000);
  setText(r.volume, n.volume || "—");
}

function renderNodes(c) {
  const nodes = [...c.nodes].sort((a, b) => a.id - b.id);
  const els = nodes.map((n) => {
    let card = nodeCards.get(n.id);
    if (!card) nodeCards.set(n.id, (card = buildNodeCard(n.id)));
    updateNodeCard(card, n, c);
    return card.el;
  });
  for (const id of nodeCards.keys()) if (!nodes.some((n) => n.id === id)) nodeCards.delete(id);
  placeInOrder($("#nodes"), els);
}

// --- switchover ---

let switchoverArmed = null; // {to, timer} between the first and the confirming click

function renderSwitchoverTargets(c) {
  const sel = $("#switchover-to");
  const targets = c.nodes.filter((n) => n.reachable && n.id !== c.leader).sort((a, b) => a.id - b.id);
  const wanted = targets.map((n) => `${n.id}:${n.name}`).join(",");
  if (sel.dataset.options !== wanted) {
    const keep = sel.value;
    sel.replaceChildren(...targets.map((n) => h("option", { value: n.id, text: `node ${n.id} · ${n.name}` })));
    if (targets.some((n) => String(n.id) === keep)) sel.value = keep;
    sel.dataset.options = wanted;
  }
  const btn = $("#switchover-btn");
  btn.disabled = targets.length === 0;
  if (!switchoverArmed) setText(btn, targets.length ? "Switch over" : "No target");
}

function disarmSwitchover() {
  if (!switchoverArmed) return;
  clearTimeout(switchoverArmed.timer);
  switchoverArmed = null;
  const btn = $("#switchover-btn");
  btn.classList.remove("armed");
  setText(btn, "Switch over");
}

function onSwitchoverClick() {
  const to = Number($("#switchover-to").value);
  if (!to) return;
  if (!switchoverArmed || switchoverArmed.to !== to) {
    disarmSwitchover();
    const btn = $("#switchover-btn");
    btn.classList.add("armed");
    setText(btn, `Confirm: to node ${to}`);
    switchoverArmed = { to, timer: setTimeout(disarmSwitchover, SWITCHOVER_ARM_MS) };
    return;
  }
  disarmSwitchover();
  act(`switchover to node ${to}`, "/api/v1/switchover", { to }, $("#switchover-btn"));
}

// --- backends ---

const backendRows = new Map(); // backend name → {el, refs}

function buildBackendRow(name) {
  const r = {};
  const el = h(
    "tr",
    { class: "backend-row", "data-backend": name, "data-state": "down", "data-drained": "false" },
    h(
      "td",
      { class: "be-name" },
      h("div", {}, h("span", { class: "dot" }), h("strong", { text: name }), (r.drained = h("span", { class: "badge badge-drained", text: "drained" }))),
      (r.uri = h("div", { class: "mono small" })),
      (r.meta = h("div", { class: "muted small" })),
    ),
    h("td", {}, (r.state = h("span", { class: "state" })), (r.since = h("div", { class: "muted small" }))),
    (r.rtt = h("td", { class: "num mono" })),
    (r.dialogs = h("td", { class: "num" })),
    (r.failure = h("td", { class: "failure small" })),
    h("td", { class: "act" }, (r.btn = h("button", { type: "button", class: "btn btn-small" }))),
  );
  r.btn.addEventListener("click", () => {
    const drain = el.dataset.drained !== "true";
    act(`${drain ? "drain" : "undrain"} ${name}`, `/api/v1/backends/${encodeURIComponent(name)}/${drain ? "drain" : "undrain"}`, undefined, r.btn);
  });
  return { el, r };
}

function updateBackendRow({ el, r }, b) {
  const up = b.state === "up";
  setAttr(el, "data-state", up ? "up" : "down");
  setAttr(el, "data-drained", b.drained ? "true" : "false");
  show(r.drained, b.drained);
  setText(r.uri, b.uri);
  const meta = [`priority ${dash(b.priority)}`];
  if (b.node != null) meta.push(`node ${b.node}`);
  setText(r.meta, meta.join(" · "));
  setText(r.state, up ? "up" : "down");
  setText(r.since, b.last_change_s_ago == null ? "" : `for ${fmtAge(b.last_change_s_ago)}`);
  setText(r.rtt, b.rtt_ms == null ? "—" : `${b.rtt_ms.toFixed(1)} ms`);
  setText(r.dialogs, dash(b.dialogs));
  setText(r.failure, b.last_failure || "—");
  r.failure.classList.toggle("muted", !b.last_failure);
  setText(r.btn, b.drained ? "Undrain" : "Drain");
}

function renderBackends(list) {
  const els = list.map((b) => {
    let row = backendRows.get(b.name);
    if (!row) backendRows.set(b.name, (row = buildBackendRow(b.name)));
    updateBackendRow(row, b);
    return row.el;
  });
  for (const name of backendRows.keys()) if (!list.some((b) => b.name === name)) backendRows.delete(name);
  placeInOrder($("#backends"), els);
  show($("#backends-empty"), list.length === 0);

  const up = list.filter((b) => b.state === "up").length;
  const drained = list.filter((b) => b.drained).length;
  setText($("#backends-up"), `${up} / ${list.length}`);
  setText($("#backends-foot"), drained ? `${drained} drained` : "none drained");
  const kpi = $("#kpi-backends");
  kpi.classList.toggle("alarm", list.length > 0 && up === 0);
  kpi.classList.toggle("warning", up > 0 && up < list.length);
}

// --- stats and the chart ---

function renderStats(s) {
  setText($("#active-calls"), s.active_calls);
  const c = state.cluster;
  const role = c ? (c.nodes.find((n) => n.id === s.node) || {}).role : null;
  setText($("#calls-foot"), `${s.calls_total} since start · node ${s.node}`);
  const samples = Array.isArray(s.cps) ? s.cps : [];
  const last = samples.length ? samples[samples.length - 1][1] : 0;
  setText($("#cps-now"), fmtRate(last));
  const start = (samples.length ? samples[samples.length - 1][0] : 0) - state.cpsWindowMin * 60000;
  const inWindow = samples.filter(([t]) => t >= start).map(([, v]) => v);
  const peak = inWindow.length ? Math.max(...inWindow) : 0;
  const avg = inWindow.length ? inWindow.reduce((a, v) => a + v, 0) / inWindow.length : 0;
  setText($("#cps-foot"), `avg ${fmtRate(avg)} · peak ${fmtRate(peak)} over ${state.cpsWindowMin} min`);
  // Stats are the serving node's own counts: say so when that node is not the leader.
  const note = role && role !== "leader" ? `measured on node ${s.node} (${role}): its own calls only` : `measured on node ${s.node}`;
  setText($("#chart-note"), note);
  chart.update(samples, state.cpsWindowMin);
}

function niceScale(max) {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = (max * 1.1) / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
  return { top: Math.ceil((max * 1.05) / step) * step, step };
}

const SMOOTH_SAMPLES = 10;

// The trailing mean over `n` samples, for each sample of a run.
function movingAverage(run, n) {
  let sum = 0;
  return run.map(([t, v], i) => {
    sum += v;
    if (i >= n) sum -= run[i - n][1];
    return [t, sum / Math.min(i + 1, n)];
  });
}

// Draws [unix_ms, value] samples as a line over a time axis. Redrawn on each poll, on resize and on hover;
// the device-pixel ratio keeps it sharp on HiDPI screens.
class LineChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.samples = [];
    this.windowMin = 5;
    this.hoverX = null;
    new ResizeObserver(() => this.draw()).observe(canvas);
    canvas.addEventListener("mousemove", (e) => {
      this.hoverX = e.clientX - canvas.getBoundingClientRect().left;
      this.draw();
    });
    canvas.addEventListener("mouseleave", () => {
      this.hoverX = null;
      this.draw();
    });
  }

  update(samples, windowMin) {
    this.samples = samples;
    this.windowMin = windowMin;
    this.draw();
  }

  draw() {
    const { canvas, ctx } = this;
    const w = canvas.clientWidth;
    const hgt = canvas.clientHeight;
    if (!w || !hgt) return;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hgt * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(hgt * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);

    const css = getComputedStyle(canvas);
    const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    const ink = color("--chart-ink", "#5b6776");
    const grid = color("--chart-grid", "#e5e9f0");
    const line = color("--chart-line", "#2563eb");
    const font = `11px ${css.fontFamily}`;

    const P = { l: 40, r: 12, t: 24, b: 24 };
    const pw = w - P.l - P.r;
    const ph = hgt - P.t - P.b;
    const spanMs = this.windowMin * 60000;
    const end = this.samples.length ? this.samples[this.samples.length - 1][0] : Date.now();
    const start = end - spanMs;
    const pts = this.samples.filter(([t]) => t >= start);
    const { top, step } = niceScale(Math.max(0, ...pts.map(([, v]) => v)));
    const x = (t) => P.l + ((t - start) / spanMs) * pw;
    const y = (v) => P.t + ph - (v / top) * ph;

    ctx.font = font;
    ctx.lineWidth = 1;
    // The value axis: gridlines and labels.
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = 0; v <= top + step / 1000; v += step) {
      const yy = Math.round(y(v)) + 0.5;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(P.l, yy);
      ctx.lineTo(P.l + pw, yy);
      ctx.stroke();
      ctx.fillStyle = ink;
      ctx.fillText(step < 1 ? String(+v.toFixed(2)) : String(Math.round(v)), P.l - 6, yy);
    }
    // The time axis: a tick on each round interval, labelled with the local clock.
    const tickMs = this.windowMin <= 2 ? 30000 : this.windowMin <= 5 ? 60000 : 120000;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil(start / tickMs) * tickMs; t <= end; t += tickMs) {
      const xx = Math.round(x(t)) + 0.5;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(xx, P.t);
      ctx.lineTo(xx, P.t + ph + 4);
      ctx.stroke();
      ctx.fillStyle = ink;
      const label = clock(t, false).slice(0, tickMs < 60000 ? 8 : 5);
      if (xx > P.l + 16 && xx < P.l + pw - 16) ctx.fillText(label, xx, P.t + ph + 7);
    }
    ctx.strokeStyle = ink;
    ctx.beginPath();
    ctx.moveTo(P.l, Math.round(y(0)) + 0.5);
    ctx.lineTo(P.l + pw, Math.round(y(0)) + 0.5);
    ctx.stroke();

    if (pts.length < 2) {
      ctx.fillStyle = ink;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("waiting for samples…", P.l + pw / 2, P.t + ph / 2);
      return;
    }

    // The series, broken where samples are missing (a restart, a stall) rather than bridged.
    const runs = [];
    let run = [];
    pts.forEach((p, i) => {
      if (i > 0 && p[0] - pts[i - 1][0] > 3000) {
        runs.push(run);
        run = [];
      }
      run.push(p);
    });
    runs.push(run);

    ctx.save();
    ctx.beginPath();
    ctx.rect(P.l, P.t - 2, pw, ph + 4);
    ctx.clip();
    const fill = ctx.createLinearGradient(0, P.t, 0, P.t + ph);
    fill.addColorStop(0, color("--chart-fill-top", "rgba(37,99,235,0.22)"));
    fill.addColorStop(1, color("--chart-fill-bottom", "rgba(37,99,235,0.02)"));
    const trace = (r) => r.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    ctx.lineJoin = "round";
    for (const r of runs) {
      // Per-second counts jump between small integers: the raw series is drawn faint, under its moving average.
      ctx.beginPath();
      ctx.moveTo(x(r[0][0]), y(0));
      for (const [t, v] of r) ctx.lineTo(x(t), y(v));
      ctx.lineTo(x(r[r.length - 1][0]), y(0));
      ctx.closePath();
      ctx.fillStyle = fill;
      ctx.fill();
      ctx.beginPath();
      trace(r);
      ctx.strokeStyle = color("--chart-raw", "rgba(37,99,235,0.35)");
      ctx.lineWidth = 1;
      ctx.stroke();
      ctx.beginPath();
      trace(movingAverage(r, SMOOTH_SAMPLES));
      ctx.strokeStyle = line;
      ctx.lineWidth = 2;
      ctx.stroke();
    }
    ctx.restore();

    // Legend, top right inside the plot.
    ctx.font = font;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const legend = [[`${SMOOTH_SAMPLES} s average`, line, 2], ["per second", color("--chart-raw", "rgba(37,99,235,0.35)"), 1]];
    let lx = P.l + pw - 4;
    for (const [text, stroke, width] of legend) {
      ctx.fillStyle = ink;
      ctx.fillText(text, lx, P.t + 8);
      lx -= ctx.measureText(text).width + 6;
      ctx.strokeStyle = stroke;
      ctx.lineWidth = width;
      ctx.beginPath();
      ctx.moveTo(lx - 16, P.t + 8);
      ctx.lineTo(lx, P.t + 8);
      ctx.stroke();
      lx -= 30;
    }
    ctx.lineWidth = 1;

    // Hover: the nearest sample's time and value.
    if (this.hoverX != null && this.hoverX >= P.l && this.hoverX <= P.l + pw) {
      const t = start + ((this.hoverX - P.l) / pw) * spanMs;
      let best = pts[0];
      for (const p of pts) if (Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
      const bx = x(best[0]);
      const by = y(best[1]);
      ctx.strokeStyle = ink;
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.moveTo(Math.round(bx) + 0.5, P.t);
      ctx.lineTo(Math.round(bx) + 0.5, P.t + ph);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = line;
      ctx.beginPath();
      ctx.arc(bx, by, 3.5, 0, Math.PI * 2);
      ctx.fill();
      const text = `${clock(best[0], false)}  ${fmtRate(best[1])} calls/s`;
      const tw = ctx.measureText(text).width + 12;
      const tx = Math.min(Math.max(bx - tw / 2, P.l), P.l + pw - tw);
      ctx.fillStyle = "rgba(17,24,39,0.88)";
      ctx.fillRect(tx, P.t - 22, tw, 20);
      ctx.fillStyle = "#fff";
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      ctx.fillText(text, tx + 6, P.t - 12);
    }
  }
}

let chart = null;

function setCpsWindow(min) {
  state.cpsWindowMin = min;
  try {
    localStorage.setItem(WINDOW_KEY, String(min));
  } catch {
    /* storage disabled: the choice lasts for this page */
  }
  for (const b of document.querySelectorAll("#cps-window button")) {
    b.classList.toggle("active", Number(b.dataset.min) === min);
    b.setAttribute("aria-pressed", String(Number(b.dataset.min) === min));
  }
  if (state.stats) renderStats(state.stats);
}

// --- events ---

const eventItems = new Map(); // event key → <li>
const eventKey = (e) => `${e.at_ms}|${e.node}|${e.kind}|${e.detail}`;

function buildEvent(e) {
  const kind = String(e.kind);
  return h(
    "li",
    { class: `event ev-${kind.replace(/[^a-z-]/g, "")}`, "data-kind": kind },
    h("time", { class: "ev-time mono", datetime: new Date(e.at_ms).toISOString(), title: new Date(e.at_ms).toLocaleString(), text: clock(e.at_ms) }),
    h("span", { class: "ev-kind", text: kind.replace(/-/g, " ") }),
    h("span", { class: "ev-node", text: `node ${e.node}` }),
    h("span", { class: "ev-detail", text: e.detail }),
    e.duration_ms == null ? null : h("span", { class: "ev-dur", title: "how long it took", text: fmtDuration(e.duration_ms) }),
  );
}

function renderEvents(list) {
  // The first answer is history, not news: only later arrivals flash.
  const firstRender = !state.eventsShown;
  state.eventsShown = true;
  const keys = new Set();
  const els = list.map((e) => {
    const key = eventKey(e);
    keys.add(key);
    let li = eventItems.get(key);
    if (!li) {
      li = buildEvent(e);
      eventItems.set(key, li);
      if (!firstRender && !state.seenEvents.has(key)) li.classList.add("ev-new");
    }
    state.seenEvents.add(key);
    return li;
  });
  for (const key of eventItems.keys()) if (!keys.has(key)) eventItems.delete(key);
  if (state.seenEvents.size > 1000) state.seenEvents = new Set(keys);
  placeInOrder($("#events"), els);
  show($("#events-empty"), list.length === 0);
}

// --- demo ---

const demoItems = new Map(); // "node:1" / "pbx:2" → {el, refs}

function buildDemoItem(kind, id) {
  const r = {};
  const el = h(
    "li",
    { class: "demo-item", "data-kind": kind, "data-id": id, "data-running": "false" },
    (r.dot = h("span", { class: "dot" })),
    (r.label = h("span", { class: "demo-label" })),
    (r.btn = h("button", { type: "button", class: "btn btn-small" })),
  );
  r.btn.addEventListener("click", () => {
    const action = el.dataset.running === "true" ? "kill" : "start";
    act(`${action} ${r.label.textContent}`, `/api/v1/demo/${kind}/${id}/${action}`, undefined, r.btn);
  });
  return { el, r };
}

function renderDemoList(container, kind, list, label) {
  const els = list.map((x) => {
    const key = `${kind}:${x.id}`;
    let item = demoItems.get(key);
    if (!item) demoItems.set(key, (item = buildDemoItem(kind, x.id)));
    setAttr(item.el, "data-running", x.running ? "true" : "false");
    setText(item.r.label, label(x));
    setAttr(item.r.dot, "title", x.running ? "running" : "stopped");
    item.r.label.classList.toggle("muted", !x.running);
    setText(item.r.btn, x.running ? "Kill" : "Start");
    item.r.btn.classList.toggle("btn-danger", !!x.running);
    return item.el;
  });
  placeInOrder(container, els);
}

function renderDemo(d) {
  show($("#demo"), d !== null);
  if (d === null) return;
  renderDemoList($("#demo-nodes"), "node", d.nodes || [], (n) => `node ${n.id}${nodeName(n.id) ? ` · ${nodeName(n.id)}` : ""}`);
  renderDemoList($("#demo-pbxs"), "pbx", d.pbxs || [], (p) => p.name || `pbx ${p.id}`);
}

// ---------------------------------------------------------------------------------------------------------
// Actions (POST): the answer or the error goes to the status line, then the page polls at once.

function status(text, kind) {
  const el = $("#action-status");
  setText(el, text ? `${clock(Date.now(), false)}  ${text}` : "");
  el.className = `action-status ${kind || ""}`;
}

async function act(label, path, body, btn) {
  if (btn) btn.disabled = true;
  status(`${label}…`, "pending");
  try {
    const data = await api("POST", path, body);
    if (typeof data.message === "string") status(`${label}: ${data.message}`, "ok");
    else if (typeof data.drained === "boolean") status(`${data.name} ${data.drained ? "drained" : "undrained"}`, "ok");
    else status(`${label}: done`, "ok");
  } catch (e) {
    if (e instanceof HttpError && e.status === 401) {
      status(`${label}: token refused${$("#token").value.trim() ? "" : " (no token entered)"}`, "err");
    } else {
      status(`${label} failed: ${e.message}`, "err");
    }
  } finally {
    if (btn) btn.disabled = false;
    poll();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Start

function init() {
  chart = new LineChart($("#cps-chart"));

  const token = $("#token");
  token.value = savedToken();
  token.addEventListener("input", () => {
    try {
      localStorage.setItem(TOKEN_KEY, token.value.trim());
    } catch {
      /* storage disabled */
    }
  });
  $("#token-clear").addEventListener("click", () => {
    token.value = "";
    try {
      localStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage disabled */
    }
    status("token forgotten", "");
  });

  // A form only so the password field is in one (browsers warn otherwise); Enter must not reload the page.
  $("#ops").addEventListener("submit", (e) => e.preventDefault());
  $("#switchover-btn").addEventListener("click", onSwitchoverClick);
  $("#switchover-to").addEventListener("change", disarmSwitchover);

  let min = 5;
  try {
    min = Number(localStorage.getItem(WINDOW_KEY)) || 5;
  } catch {
    /* storage disabled */
  }
  for (const b of document.querySelectorAll("#cps-window button")) {
    b.addEventListener("click", () => setCpsWindow(Number(b.dataset.min)));
  }
  setCpsWindow([2, 5, 10].includes(min) ? min : 5);

  poll();
}

init();
