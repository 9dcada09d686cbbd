// dynq admin console: one page over GET /api/v1/overview, refreshed every REFRESH_MS.
// No framework, no build step, no CDN. Every value from the cluster goes into the page as
// text (never as HTML), so a key or an error message cannot inject markup.
"use strict";

const REFRESH_MS = 3000;
const SVGNS = "http://www.w3.org/2000/svg";
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
  "#ff9da7", "#9c755f", "#bab0ac", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"];

const state = { token: null, data: null, lastOk: null, colors: {}, timer: null, scope: null };

// --- small DOM helpers -------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c) el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
const $ = (id) => document.getElementById(id);
function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
function swatch(name) {
  return s("svg", { class: "swatch", width: 12, height: 12 }, s("rect", { width: 12, height: 12, rx: 2, fill: colorOf(name) }));
}
function colorOf(name) { return state.colors[name] || "#999"; }
function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}
function fmtBytes(n) {
  if (!n) return "0 B";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// --- the API -----------------------------------------------------------------------------------
async function api(method, path, body) {
  const opts = { method, headers: { "Authorization": `Bearer ${state.token}` }, cache: "no-store" };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: "bad_reply", message: `HTTP ${res.status}` }; }
  if (!res.ok) {
    const err = new Error(data && data.message ? data.message : `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

function readToken() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    const token = decodeURIComponent(m[1]);
    try { sessionStorage.setItem("dynq-token", token); } catch (e) { /* private mode */ }
    history.replaceState(null, "", location.pathname + location.search);  // keep it out of sight
    return token;
  }
  try { return sessionStorage.getItem("dynq-token"); } catch (e) { return null; }
}

function showLogin(message) {
  $("login").classList.remove("hidden");
  $("main").classList.add("hidden");
  if (message) banner("bad", message);
}

function banner(kind, text) {
  const el = $("banner");
  el.className = `banner ${kind}`;
  el.textContent = text;
}

// --- refresh loop ------------------------------------------------------------------------------
async function refresh() {
  clearTimeout(state.timer);
  try {
    const data = await api("GET", "/api/v1/overview");
    state.data = data;
    state.lastOk = Date.now();
    $("login").classList.add("hidden");
    $("main").classList.remove("hidden");
    render(data);
  } catch (e) {
    if (e.status === 401) { showLogin(`The token was refused: ${e.message}`); return; }
    const node = state.data ? state.data.node : "the node serving this page";
    banner("bad", `Cannot reach ${node} (this console's node): ${e.message}. Showing what it last said` +
      (state.lastOk ? ` ${ago((Date.now() - state.lastOk) / 1000)} ago.` : "."));
    const others = Object.entries((state.data && state.data.consoles) || {}).filter(([n, url]) => url && n !== node);
    if (others.length) {  // every node serves the console: offer the others (same token, if shared)
      const el = $("banner");
      el.appendChild(document.createTextNode(" Another node's console: "));
      for (const [n, url] of others) {
        el.appendChild(h("a", { href: `${url}#token=${encodeURIComponent(state.token)}`, class: "other-console", "data-node": n }, n));
        el.appendChild(document.createTextNode(" "));
      }
    }
    document.body.dataset.reachable = "false";
    $("main").classList.add("stale");
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

function render(d) {
  document.body.dataset.reachable = "true";
  $("main").classList.remove("stale");
  document.body.dataset.version = d.version;
  const names = [...new Set([...d.ring.members.map((m) => m.name), ...Object.keys((d.plan && d.plan.balance) || {})])].sort();
  names.forEach((name, i) => { state.colors[name] = PALETTE[i % PALETTE.length]; });
  $("headline").textContent = `${d.members.length} members · Q=${d.q} N=${d.n} · cluster state ${d.version} · ` +
    `claimant ${d.claimant} · served by ${d.node}`;
  $("refreshed").textContent = `updated ${new Date(d.time * 1000).toLocaleTimeString()}`;
  if (d.down.length) banner("bad", `DOWN: ${d.down.join(", ")} — ${d.down.length === 1 ? "this node does" : "these nodes do"} not answer ${d.node}.`);
  else if (d.degraded) banner("warn", "Degraded: some node cannot reach a peer (see Members and Alarms).");
  else banner("ok", "Healthy: every member answers.");
  $("banner").dataset.down = d.down.join(",");
  renderSummary(d);
  renderAlarms(d.alarms);
  renderRing(d.ring);
  renderMembers(d.members);
  renderTransfers(d.transfers);
  renderHints(d.hints, d.history);
  renderAntiEntropy(d.anti_entropy);
  renderCharts(d.history);
  renderPlan(d.plan, d.members);
}

// The four questions an operator on call asks first, answered in words.
function renderSummary(d) {
  const say = (id, level, text) => { const el = $(id); el.className = `alarm-${level}`; el.textContent = text; el.dataset.level = level; };
  const up = d.members.filter((m) => m.status === "up").length;
  say("sum-nodes", d.down.length ? "critical" : "ok", d.down.length
    ? `${d.down.join(", ")} ${d.down.length === 1 ? "is" : "are"} DOWN (${up} of ${d.members.length} answer)`
    : `all ${d.members.length} nodes answer`);
  const t = d.transfers;
  if (t.pending) {
    const done = Math.max(0, t.planned - t.pending);
    const running = t.transfers.filter((x) => x.pending && x.state !== "waiting").map((x) => `${x.partition} (${x.source}→${x.target}, ${x.percent}%)`);
    say("sum-moving", t.transfers.some((x) => x.pending && x.last_error) ? "warning" : "info",
      `${done} of ${t.planned} partitions moved (${Math.round((100 * done) / Math.max(1, t.planned))}%)` +
      (running.length ? `; now: ${running.slice(0, 4).join(", ")}` : ""));
  } else say("sum-moving", "ok", "nothing: no membership change running");
  const h = d.hints;
  if (h.total) {
    const trends = Object.keys(h.nodes).map((n) => trend(d.history, n)).filter((x) => x.startsWith("growing") || x.startsWith("draining"));
    say("sum-hints", "warning", `${h.total} writes waiting to be handed to ` +
      `${Object.keys(h.by_target).join(", ")}` + (trends.length ? ` (${trends.join("; ")})` : ""));
  } else say("sum-hints", "ok", "none waiting: every replica has its writes");
  const silent = Object.entries(h.nodes).filter(([, v]) => v.error).map(([n]) => n);
  if (silent.length) $("sum-hints").textContent += ` (what ${silent.join(", ")} holds is unknown: it does not answer)`;
  const horizon = d.anti_entropy.consistency_horizon_s;
  const disabled = Object.entries(d.anti_entropy.nodes).filter(([, v]) => v.enabled === false).map(([n]) => n);
  if (disabled.length) say("sum-ae", "warning", `disabled on ${disabled.join(", ")}`);
  else if (horizon === null) say("sum-ae", "info", "running; some partitions not compared yet since the nodes started");
  else say("sum-ae", horizon > 3600 ? "warning" : "ok", `current: every partition compared within the last ${ago(horizon)}`);
}

function renderAlarms(alarms) {
  const ul = clear($("alarms"));
  if (!alarms.length) ul.appendChild(h("li", { class: "muted" }, "none"));
  for (const a of alarms) {
    ul.appendChild(h("li", { class: `alarm-${a.level}`, "data-kind": a.kind, "data-node": a.node },
      `${a.level}: ${a.message}`));
  }
}

function renderRing(ring) {
  const svg = clear($("ring"));
  const q = ring.q;
  const arc = (r0, r1, a0, a1) => {
    const p = (r, a) => `${(r * Math.sin(a)).toFixed(3)} ${(-r * Math.cos(a)).toFixed(3)}`;
    const large = a1 - a0 > Math.PI ? 1 : 0;
    return `M ${p(r1, a0)} A ${r1} ${r1} 0 ${large} 1 ${p(r1, a1)} L ${p(r0, a1)} A ${r0} ${r0} 0 ${large} 0 ${p(r0, a0)} Z`;
  };
  for (const part of ring.partitions) {
    const a0 = (2 * Math.PI * part.p) / q, a1 = (2 * Math.PI * (part.p + 1)) / q;
    const title = s("title", {}, `partition ${part.p}: owner ${part.owner}; replicas ${part.replicas.join(", ")}` +
      (part.next_owner ? `; after: ${part.next_owner} (${part.next_replicas.join(", ")})` : "") +
      (part.transfers.length ? `; moving: ${part.transfers.map((t) => `${t[0]}→${t[1]}`).join(", ")}` : ""));
    svg.appendChild(s("path", { d: arc(55, 88, a0, a1), fill: colorOf(part.owner), stroke: "#fff", "stroke-width": 0.6,
      "data-partition": part.p, "data-owner": part.owner }, title));
    if (part.next_owner && (part.next_owner !== part.owner || part.transfers.length)) {
      svg.appendChild(s("path", { d: arc(91, 100, a0, a1), fill: colorOf(part.next_owner), stroke: "#fff", "stroke-width": 0.6,
        "data-next-owner": part.next_owner }, s("title", {}, `partition ${part.p} goes to ${part.next_owner}`)));
    }
    if (part.transfers.length) {
      const mid = (a0 + a1) / 2;
      svg.appendChild(s("circle", { cx: (51 * Math.sin(mid)).toFixed(2), cy: (-51 * Math.cos(mid)).toFixed(2), r: 2,
        fill: "#c62828", class: "moving", "data-moving": part.p }, s("title", {}, `partition ${part.p}: transfer running`)));
    }
  }
  svg.appendChild(s("text", { x: 0, y: -4, "text-anchor": "middle", "font-size": 12, "font-weight": 600 }, `${q} partitions`));
  svg.appendChild(s("text", { x: 0, y: 14, "text-anchor": "middle", "font-size": 10, fill: "#6b7280" },
    ring.transition ? `${ring.transfers_pending} of ${ring.transfers_planned} moves left` : `epoch ${ring.epoch}`));
  $("ring-info").textContent = ring.transition ? "transition running" : "";
  const legend = clear($("ring-legend"));
  for (const m of ring.members) {
    const now = ring.owned[m.name], after = ring.owned_after[m.name];
    legend.appendChild(h("span", { class: "item", "data-member": m.name, "data-owned": now },
      swatch(m.name), `${m.name}: ${now}${after !== now ? ` → ${after}` : ""}`));
  }
}

function renderMembers(members) {
  const tbody = clear($("members").tBodies[0]);
  for (const m of members) {
    const parts = m.partitions === m.partitions_after ? `${m.partitions}` : `${m.partitions} → ${m.partitions_after}`;
    const status = m.status === "down"
      ? h("span", { class: "status-down" }, "DOWN", h("div", { class: "muted" }, m.error || ""))
      : h("span", { class: "status-up" }, "up", m.peers_down && m.peers_down.length ? h("div", { class: "muted" }, `sees down: ${m.peers_down.join(", ")}`) : null);
    tbody.appendChild(h("tr", { class: m.status === "down" ? "down" : null, "data-member": m.name, "data-status": m.status,
      "data-partitions": m.partitions },
      h("td", {}, swatch(m.name), m.name, m.self ? h("span", { class: "muted" }, " (this node)") : null),
      h("td", {}, m.address), h("td", {}, m.zone || "–"), h("td", { class: "num" }, m.weight),
      h("td", {}, m.membership), h("td", {}, status),
      h("td", { class: `status-${m.health}` }, m.health),
      h("td", { class: "num" }, parts),
      h("td", { class: "num" }, m.keys ?? "–"), h("td", { class: "num" }, m.hints_pending ?? "–"),
      h("td", { class: "num" }, m.status === "up" ? ago(m.ae_horizon_s) : "–"),
      h("td", { class: "num" }, m.uptime_s !== undefined ? ago(m.uptime_s) : "–")));
  }
}

const WAITING_SHOWN = 10;  // transfers not started yet listed one by one; the rest are counted

function renderTransfers(t) {
  const info = clear($("transfers-info"));
  if (t.pending) {
    const done = Math.max(0, t.planned - t.pending);
    info.appendChild(h("progress", { id: "transition-progress", max: Math.max(1, t.planned), value: done }));
    info.appendChild(document.createTextNode(` ${done} of ${t.planned} partitions moved, ${t.pending} to go (cluster state ${t.version})`));
  } else info.textContent = "no membership change running";
  const tbody = clear($("transfers").tBodies[0]);
  if (!t.transfers.length) tbody.appendChild(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "no transfers")));
  const waiting = t.transfers.filter((x) => x.state === "waiting");
  const shown = t.transfers.filter((x) => x.state !== "waiting").concat(waiting.slice(0, WAITING_SHOWN));
  for (const x of shown) {
    tbody.appendChild(h("tr", { "data-partition": x.partition, "data-state": x.state },
      h("td", { class: "num" }, x.partition), h("td", {}, swatch(x.source), x.source), h("td", {}, swatch(x.target), x.target),
      h("td", {}, x.state), h("td", {}, h("progress", { max: 100, value: x.percent }), ` ${x.percent}%`),
      h("td", { class: "num" }, `${x.sent}/${x.total} (${fmtBytes(x.bytes)})`), h("td", { class: "num" }, x.retries),
      h("td", { class: x.last_error ? "error" : "muted" }, x.last_error || "–")));
  }
  if (waiting.length > WAITING_SHOWN) {
    tbody.appendChild(h("tr", {}, h("td", { colspan: 8, class: "muted" }, `… and ${waiting.length - WAITING_SHOWN} more waiting their turn`)));
  }
  for (const [node, err] of Object.entries(t.unreachable || {})) {
    tbody.appendChild(h("tr", {}, h("td", { colspan: 8, class: "error" }, `${node}: its progress is unknown (${err})`)));
  }
}

function trend(history, name) {
  const hst = history[name];
  const pts = hst && hst.history ? hst.history.points : [];
  if (pts.length < 2) return "–";
  const first = pts[Math.max(0, pts.length - 12)].hints_pending, last = pts[pts.length - 1].hints_pending;
  if (last === 0) return "drained";
  if (last < first) return `draining (${first} → ${last})`;
  if (last > first) return `growing (${first} → ${last})`;
  return `steady (${last})`;
}

function renderHints(hints, history) {
  $("hints-info").textContent = hints.total ? `${hints.total} waiting` : "none waiting";
  const tbody = clear($("hints").tBodies[0]);
  for (const [name, info] of Object.entries(hints.nodes)) {
    if (info.error) { tbody.appendChild(h("tr", { class: "down" }, h("td", {}, name), h("td", { colspan: 3, class: "error" }, info.error))); continue; }
    const targets = Object.entries(info.pending).map(([t, n]) => `${n} for ${t}`).join(", ") || "0";
    tbody.appendChild(h("tr", { "data-node": name }, h("td", {}, swatch(name), name), h("td", {}, targets),
      h("td", { class: "num" }, info.replayed), h("td", {}, trend(history, name))));
  }
}

function renderAntiEntropy(ae) {
  const horizon = ae.consistency_horizon_s;
  $("ae-info").textContent = horizon === null ? "some partition never had a complete pass" :
    `every partition compared within the last ${ago(horizon)}`;
  const tbody = clear($("ae").tBodies[0]);
  const now = Date.now() / 1000;
  const parts = Object.entries(ae.partitions || {});
  const never = parts.filter(([, v]) => v.age_s === null).length;
  const oldest = parts.filter(([, v]) => v.age_s !== null).sort((a, b) => b[1].age_s - a[1].age_s).slice(0, 5);
  $("ae-oldest").textContent = parts.length ? `Partitions never compared by any node: ${never} of ${parts.length}. ` +
    `Least recently compared: ${oldest.map(([p, v]) => `${p} (${ago(v.age_s)} ago)`).join(", ") || "–"}.` : "";
  for (const [name, info] of Object.entries(ae.nodes)) {
    if (info.error) { tbody.appendChild(h("tr", { class: "down" }, h("td", {}, name), h("td", { colspan: 6, class: "error" }, info.error))); continue; }
    tbody.appendChild(h("tr", { "data-node": name }, h("td", {}, swatch(name), name), h("td", {}, info.enabled ? "yes" : "NO"),
      h("td", { class: "num" }, ago(info.horizon_s)),
      h("td", { class: "num" }, info.last_exchange_ms ? `${ago(now - info.last_exchange_ms / 1000)} ago` : "never"),
      h("td", { class: "num" }, `${info.never_exchanged} of ${info.partitions}`),
      h("td", { class: "num" }, `${info.exchanges} (${info.exchange_failures})`), h("td", { class: "num" }, info.keys_repaired)));
  }
}

function renderCharts(history) {
  const series = (pick) => Object.entries(history).filter(([, v]) => v && v.history).map(([name, v]) =>
    ({ name, points: v.history.points.map((pt) => [pt.t, pick(pt)]) }));
  const client = ["get", "put", "delete"];
  chart("chart-throughput", "legend-throughput",
    series((pt) => client.reduce((sum, op) => sum + (pt.ops_per_s[op] || 0), 0)), "/s");
  chart("chart-p99", "legend-p99",
    series((pt) => Math.max(0, ...client.map((op) => pt.p99_ms[op] ?? 0).map((v) => (v < 0 ? 10000 : v)))), " ms");
}

function chart(id, legendId, series, unit) {
  const svg = clear($(id));
  const W = 600, H = 180, pad = 24;
  const all = series.flatMap((x) => x.points);
  const legend = clear($(legendId));
  if (!all.length) {
    svg.appendChild(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#6b7280", "font-size": 13 }, "collecting samples…"));
    return;
  }
  const t1 = Math.max(...all.map((p) => p[0])), t0 = Math.min(...all.map((p) => p[0]), t1 - 60);
  const ymax = Math.max(1, ...all.map((p) => p[1])) * 1.1;
  const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (W - 2 * pad);
  const y = (v) => H - pad - (v / ymax) * (H - 2 * pad);
  svg.appendChild(s("line", { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: "#ccc" }));
  svg.appendChild(s("text", { x: 2, y: pad - 8, "font-size": 10, fill: "#6b7280" }, `${ymax.toFixed(ymax < 10 ? 1 : 0)}${unit}`));
  svg.appendChild(s("text", { x: pad, y: H - 6, "font-size": 10, fill: "#6b7280" }, `-${Math.round(t1 - t0)} s`));
  svg.appendChild(s("text", { x: W - pad, y: H - 6, "font-size": 10, fill: "#6b7280", "text-anchor": "end" }, "now"));
  for (const line of series) {
    if (!line.points.length) continue;
    svg.appendChild(s("polyline", { fill: "none", stroke: colorOf(line.name), "stroke-width": 2,
      points: line.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") }));
    const lastV = line.points[line.points.length - 1][1];
    legend.appendChild(h("span", { class: "item" }, swatch(line.name), `${line.name}: ${lastV.toFixed(lastV < 10 ? 2 : 0)}${unit}`));
  }
}

// --- the plan ------------------------------------------------------------------------------------
function planSummary(plan) {
  const out = [];
  for (const j of plan.staged.joins) out.push(h("div", { class: "staged-join" }, `join ${j[0]} at ${j[1]}`));
  for (const l of plan.staged.leaves) out.push(h("div", { class: "staged-leave" }, `leave ${l}`));
  const pairs = {};
  for (const [p, src, dst] of plan.transfers) { const k = `${src} → ${dst}`; pairs[k] = (pairs[k] || 0) + 1; }
  out.push(h("div", {}, `${plan.transfers.length} partition transfers: ` +
    (Object.entries(pairs).map(([k, n]) => `${k}: ${n}`).join("; ") || "none")));
  const rows = Object.entries(plan.balance).map(([name, [before, after]]) =>
    h("tr", { "data-member": name }, h("td", {}, swatch(name), name), h("td", { class: "num" }, before), h("td", { class: "num" }, after)));
  out.push(h("table", { class: "balance" }, h("thead", {}, h("tr", {}, h("th", {}, "node"), h("th", { class: "num" }, "partitions now"),
    h("th", { class: "num" }, "after"))), h("tbody", {}, rows)));
  return out;
}

function renderPlan(plan, members) {
  const el = clear($("plan"));
  const select = $("leave-node");
  const chosen = select.value;
  clear(select);
  for (const m of members) select.appendChild(h("option", { value: m.name, selected: m.name === chosen ? "selected" : null }, m.name));
  if (plan.error) { el.appendChild(h("div", { class: "error" }, `plan unavailable: ${plan.message}`)); el.dataset.planId = ""; return; }
  if (plan.empty) {
    el.dataset.planId = "";
    el.appendChild(h("p", { class: "muted" }, "Nothing staged" + (plan.in_progress ? `; a change is in progress (${plan.in_progress} transfers left).` : ".")));
    $("confirm").classList.add("hidden");
    return;
  }
  el.dataset.planId = plan.id;
  el.appendChild(h("p", {}, `Staged plan `, h("code", { id: "plan-id" }, plan.id), ` (claimant ${plan.claimant}):`));
  el.appendChild(h("div", {}, planSummary(plan)));
  el.appendChild(h("div", { class: "actions" },
    h("button", { id: "commit", class: "danger", onclick: () => confirmCommit(plan) }, "Commit…"),
    h("button", { id: "clear", onclick: clearPlan }, "Clear staged changes")));
}

function confirmCommit(plan) {
  const box = $("confirm");
  const summary = clear($("confirm-summary"));
  summary.appendChild(h("p", {}, `Plan ${plan.id} computed from cluster state ${plan.version}. Committing starts moving ` +
    `${plan.transfers.length} partitions; it is refused if the plan changed since this page showed it.`));
  summary.appendChild(h("div", {}, planSummary(plan)));
  box.dataset.planId = plan.id;
  box.classList.remove("hidden");
  clearTimeout(state.timer);  // hold the page still while the operator reads
}

async function doCommit() {
  const box = $("confirm");
  const id = box.dataset.planId;
  box.classList.add("hidden");
  try {
    const r = await api("POST", "/api/v1/plan/commit", { plan: id });
    $("plan-result").textContent = `committed plan ${id}: cluster state ${r.version}, ${r.transfers} partition transfers`;
    $("plan-result").dataset.committed = id;
  } catch (e) { $("plan-result").textContent = `commit refused (${e.status}): ${e.message}`; }
  refresh();
}

async function clearPlan() {
  try {
    await api("POST", "/api/v1/plan/clear", {});
    $("plan-result").textContent = "staged changes cleared";
  } catch (e) { $("plan-result").textContent = `clear refused (${e.status}): ${e.message}`; }
  refresh();
}

async function stage(path, body, what) {
  try {
    await api("POST", path, body);
    $("plan-result").textContent = `staged: ${what}`;
  } catch (e) { $("plan-result").textContent = `${what} refused (${e.status}): ${e.message}`; }
  refresh();
}

// --- key inspector -------------------------------------------------------------------------------
async function inspect(key, bucket) {
  const out = clear($("inspect"));
  out.appendChild(h("p", { class: "muted" }, "asking every replica…"));
  try {
    const r = await api("GET", `/api/v1/inspect?key=${encodeURIComponent(key)}` + (bucket ? `&bucket=${encodeURIComponent(bucket)}` : ""));
    clear(out);
    out.appendChild(h("p", {}, `partition ${r.partition}: `, r.agree ? h("b", { class: "status-up" }, "primaries agree")
      : r.disagree ? h("b", { class: "status-down" }, "primaries DISAGREE (read repair or anti-entropy will converge them)")
        : h("b", { class: "status-suspect" }, "a primary did not answer")));
    const rows = r.replicas.map((x) => {
      let what;
      if (x.error) what = h("span", { class: "error" }, x.error);
      else if (!x.object) what = h("span", { class: "muted" }, "(nothing)");
      else if (x.object.datatype) what = h("div", {}, h("div", { class: "muted" }, `${x.object.datatype} context `
        + Object.entries(x.object.context.vv).map(([a, c]) => `${a}:${c}`).join(", ") + ` (+${x.object.context.cloud} loose dots), ${x.object.dots} dots`),
        h("div", {}, JSON.stringify(x.object.value)));
      else what = h("div", {}, h("div", { class: "muted" }, "clock " + Object.entries(x.object.clock).map(([a, c]) => `${a}:${c}`).join(", ")),
        x.object.siblings.map((sb) => h("div", {}, `${sb.dot} `, sb.tombstone ? h("b", {}, "TOMBSTONE") : `${JSON.stringify(sb.value)} (${sb.bytes} B)`,
          sb.expires_ms ? ` expires ${new Date(sb.expires_ms).toISOString()}${sb.expires_ms <= Date.now() ? " (EXPIRED)" : ""}` : "")));
      return h("tr", { "data-node": x.node }, h("td", {}, swatch(x.node), x.node), h("td", {}, x.role), h("td", {}, what),
        h("td", {}, (x.hints || []).join(", ") || "–"));
    });
    out.appendChild(h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "node"), h("th", {}, "role"), h("th", {}, "holds"),
      h("th", {}, "hints for"))), h("tbody", {}, rows)));
  } catch (e) { clear(out).appendChild(h("p", { class: "error" }, `inspect failed (${e.status}): ${e.message}`)); }
}

// --- start ---------------------------------------------------------------------------------------
function start() {
  state.token = readToken();
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("login-token").value.trim();
    try { sessionStorage.setItem("dynq-token", state.token); } catch (e) { /* private mode */ }
    refresh();
  });
  $("inspect-form").addEventListener("submit", (ev) => { ev.preventDefault(); const k = $("inspect-key").value; if (k) inspect(k, $("inspect-bucket").value.trim()); });
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault(); const a = $("join-address").value.trim();
    if (a) stage("/api/v1/plan/join", { address: a }, `join of ${a}`);
  });
  $("leave-form").addEventListener("submit", (ev) => {
    ev.preventDefault(); const n = $("leave-node").value;
    if (n) stage("/api/v1/plan/leave", { node: n }, `leave of ${n}`);
  });
  $("confirm-commit").addEventListener("click", doCommit);
  $("confirm-cancel").addEventListener("click", () => { $("confirm").classList.add("hidden"); refresh(); });
  if (!state.token) { showLogin("No token: open the URL that dynq console prints, or paste a token."); return; }
  refresh();
}

document.addEventListener("DOMContentLoaded", start);
