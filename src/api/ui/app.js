// llmvisor's operator page: one server-sent-events feed (/admin/events) keeps
// every view current; buttons call the /admin routes. Plain JavaScript, no
// library. The admin key, when llmvisor has one, lives in this tab's
// sessionStorage and travels only as an Authorization header (EventSource cannot
// send headers, so the feed is read with fetch). Everything kept is bounded
// (requests, log lines), so a page left open does not grow.
"use strict";

const KEY = "llmvisor.adminKey";
const MAX_REQUESTS = 500; // kept for filtering
const SHOWN_REQUESTS = 200; // rows drawn
const MAX_LOG_LINES = 2000;

const S = {
  models: [], // views in configuration order, each with _at: when it arrived
  gpus: null,
  profiles: null,
  requests: [],
  log: { model: "", lines: [] },
  usage: null,
  usageWindow: "24h",
  view: "models",
  restart: new Set(), // models to start again once stopped
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const svgNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// ---- formatting -------------------------------------------------------------

function dur(s) {
  if (s === null || s === undefined) return "";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}
function ms(v) {
  if (v === null || v === undefined) return "";
  return v < 1000 ? `${v} ms` : `${(v / 1000).toFixed(2)} s`;
}
function bytes(b) {
  if (b === null || b === undefined) return "?";
  const g = b / 2 ** 30;
  return g >= 1 ? `${g.toFixed(1)} GiB` : `${(b / 2 ** 20).toFixed(0)} MiB`;
}
function num(n) {
  if (n === null || n === undefined) return "";
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}
function clock(tsMs) {
  const d = new Date(tsMs);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
// Seconds since a model's view arrived: the page counts the clocks itself.
function aged(m) {
  return (performance.now() - m._at) / 1000;
}

// ---- messages and auth ------------------------------------------------------

let messageTimer = 0;
function say(text, bad) {
  const m = $("message");
  m.textContent = text;
  m.dataset.bad = bad ? "1" : "";
  clearTimeout(messageTimer);
  messageTimer = setTimeout(() => (m.textContent = ""), 8000);
}

function headers(json) {
  const h = {};
  const k = sessionStorage.getItem(KEY);
  if (k) h.Authorization = `Bearer ${k}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function errorText(r) {
  try {
    const j = await r.json();
    return (j.error && j.error.message) || `${r.status}`;
  } catch (_) {
    return `${r.status} ${r.statusText}`;
  }
}

function askKey(why) {
  $("key").hidden = false;
  if (why) $("key-why").textContent = why;
  $("key-input").focus();
}

async function admin(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (r.status === 401) askKey("The admin key was refused; enter it again.");
  return r;
}

// ---- the feed ----------------------------------------------------------------

let feed = null; // AbortController of the running feed
let backoff = 500;

function setConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
}

function connect() {
  if (feed) feed.abort();
  const ctl = new AbortController();
  feed = ctl;
  const q = S.log.model ? `?logs=${encodeURIComponent(S.log.model)}` : "";
  setConn("connecting", "connecting…");
  readFeed(`/admin/events${q}`, ctl).then(
    () => retry(ctl),
    (e) => {
      if (e && e.name === "AbortError") return;
      retry(ctl);
    },
  );
}

function retry(ctl) {
  if (feed !== ctl || ctl.signal.aborted) return;
  setConn("down", "reconnecting…");
  setTimeout(() => feed === ctl && connect(), backoff);
  backoff = Math.min(backoff * 2, 10000);
}

async function readFeed(url, ctl) {
  const r = await fetch(url, { headers: headers(), signal: ctl.signal, cache: "no-store" });
  if (r.status === 401) {
    feed = null;
    setConn("down", "admin key needed");
    askKey();
    return new Promise(() => {}); // wait for the key form
  }
  if (r.status === 403) {
    feed = null;
    setConn("down", "refused");
    $("refused").hidden = false;
    $("refused-why").textContent = await errorText(r);
    return new Promise(() => {});
  }
  if (!r.ok || !r.body) {
    say(`The event feed answered ${await errorText(r)}.`, true);
    return;
  }
  $("key").hidden = true;
  $("refused").hidden = true;
  $("forget-key").hidden = !sessionStorage.getItem(KEY);
  setConn("up", "live");
  backoff = 500;
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) handle(event, JSON.parse(data));
    }
  }
}

function handle(event, d) {
  switch (event) {
    case "hello":
      $("about").textContent = `v${d.version} · ${d.unit_manager} units${d.store ? "" : " · usage store off"}`;
      break;
    case "models":
      for (const m of d) m._at = performance.now();
      S.models = d;
      drawModels();
      drawLogChoices();
      break;
    case "model": {
      d._at = performance.now();
      const i = S.models.findIndex((m) => m.name === d.name);
      if (i >= 0) S.models[i] = d;
      else S.models.push(d);
      if (S.restart.has(d.name) && (d.state === "stopped" || d.state === "failed")) {
        S.restart.delete(d.name);
        act(d.name, "start");
      }
      drawModels();
      break;
    }
    case "gpus":
      S.gpus = d;
      drawGpus();
      break;
    case "profiles":
      S.profiles = d;
      drawProfiles();
      drawModels();
      break;
    case "requests":
      S.requests = d.slice(0, MAX_REQUESTS);
      drawRequests();
      break;
    case "request":
      S.requests.unshift(d);
      if (S.requests.length > MAX_REQUESTS) S.requests.length = MAX_REQUESTS;
      drawRequests();
      countUsage(d);
      break;
    case "log":
      if (d.model !== S.log.model) break;
      S.log.lines.push(...d.lines);
      if (S.log.lines.length > MAX_LOG_LINES) S.log.lines.splice(0, S.log.lines.length - MAX_LOG_LINES);
      drawLog();
      break;
    case "lagged":
      say(`This page fell behind and missed ${d.missed} ${d.what === "log" ? "log lines" : d.what}.`);
      break;
  }
}

// ---- views -------------------------------------------------------------------

function showView() {
  const v = (location.hash || "#models").slice(1);
  S.view = ["models", "gpus", "requests", "usage", "logs", "profiles"].includes(v) ? v : "models";
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== `view-${S.view}`;
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("on", a.dataset.view === S.view);
  if (S.view === "usage") loadUsage();
  if (S.view === "requests") drawRequests();
  if (S.view === "models") drawModels();
}

function profilesOf(name) {
  if (!S.profiles) return [];
  return S.profiles.profiles.filter((p) => p.models.includes(name)).map((p) => p.name);
}

function stateText(m) {
  const t = dur((m.state_seconds || 0) + aged(m));
  switch (m.state) {
    case "ready":
      return "ready";
    case "stopped":
      return "stopped";
    case "failed": {
      const exit = m.exit ? m.exit.description : "";
      return `failed${exit ? `: ${exit}` : ""} (${t} ago)`;
    }
    default:
      return `${m.state} ${t}`;
  }
}

function ttlText(m) {
  if (!m.idle_ttl_seconds) return "none";
  if (m.state !== "ready") return `${dur(m.idle_ttl_seconds)}`;
  if (m.in_flight > 0 || m.idle_seconds === null || m.idle_seconds === undefined) return "busy";
  const left = m.idle_ttl_seconds - m.idle_seconds - aged(m);
  return `${m.gpu && m.gpu.idle_action === "sleep" ? "sleeps" : "stops"} in ${dur(Math.max(0, left))}`;
}

function drawModels() {
  const body = $("models").tBodies[0];
  const rows = S.models.map((m) => {
    const oom = m.gpu && m.gpu.oom;
    const running = !["stopped", "failed"].includes(m.state);
    const failedLine = m.state === "failed" && (m.last_line || m.last_error);
    return el(
      "tr",
      { "data-model": m.name, "data-state": m.state },
      el("td", { class: "name" }, m.name, m.aliases && m.aliases.length ? el("small", {}, ` (${m.aliases.join(", ")})`) : null),
      el(
        "td",
        { class: "state" },
        el("span", { class: `badge s-${m.state}`, "data-state-text": "1" }, stateText(m)),
        failedLine ? el("div", { class: "why" }, failedLine) : null,
        m.restarts_paused ? el("div", { class: "why" }, "restarts paused: start it by hand") : null,
      ),
      el("td", {}, el("code", {}, m.unit), m.pid ? el("div", {}, `PID ${m.pid}`) : null),
      el("td", {}, (m.gpus || []).join(", ") || "–", m.gpu && m.gpu.vram ? el("div", { class: "note" }, `${bytes(m.gpu.vram)} each`) : null),
      el("td", { class: "load" }, `${m.in_flight} / ${m.queued} / ${m.max_concurrent}`),
      el("td", { class: "ttl" }, ttlText(m)),
      el("td", {}, oom ? `${oom.count}× → max_concurrent ${oom.max_concurrent}${oom.gpu_memory_utilization ? `, gpu_memory_utilization ${oom.gpu_memory_utilization}` : ""}` : "–"),
      el("td", {}, profilesOf(m.name).join(", ") || "–"),
      el(
        "td",
        { class: "actions" },
        el("button", { type: "button", "data-action": "start", "data-model": m.name, disabled: running && m.state !== "sleeping", on: { click: () => act(m.name, "start") } }, "start"),
        el("button", { type: "button", "data-action": "stop", "data-model": m.name, disabled: !running, on: { click: () => act(m.name, "stop") } }, "stop"),
        el("button", { type: "button", "data-action": "restart", "data-model": m.name, disabled: !running, on: { click: () => restart(m.name) } }, "restart"),
      ),
    );
  });
  body.replaceChildren(...rows);
}

// Each second: only the clocks (state durations, TTL countdowns) move.
function tick() {
  if (S.view !== "models") return;
  for (const m of S.models) {
    const row = $("models").querySelector(`tr[data-model="${CSS.escape(m.name)}"]`);
    if (!row) continue;
    row.querySelector("[data-state-text]").textContent = stateText(m);
    row.querySelector(".ttl").textContent = ttlText(m);
  }
}

async function act(name, what) {
  const r = await admin("POST", `/admin/models/${encodeURIComponent(name)}/${what}`);
  if (r.ok) say(`${what} ${name}: ${(await r.json()).state}`);
  else if (r.status !== 401) say(`${what} ${name}: ${await errorText(r)}`, true);
}

async function restart(name) {
  S.restart.add(name);
  await act(name, "stop");
}

function drawGpus() {
  const g = S.gpus;
  if (!g) return;
  $("gpu-source").textContent = g.simulated
    ? "Simulated GPUs: memory is what the models declare (vram); no utilisation or temperature."
    : g.source === "nvml"
      ? `NVML, driver ${g.driver_version || "?"}${g.message ? ` (${g.message})` : ""}`
      : `No GPUs: ${g.message || g.source}`;
  const cards = g.gpus.map((gpu) => {
    const total = gpu.memory_total || 1;
    const bar = el("div", { class: "bar" });
    let placed = 0;
    for (const m of gpu.models) {
      const w = m.sleeping ? 0 : m.vram || 0;
      placed += w;
      const seg = el("div", { class: `seg s-${m.state}`, title: `${m.model}: ${m.vram ? bytes(m.vram) : "vram unknown"} (${m.state})` }, m.model);
      seg.style.width = `${(100 * w) / total}%`;
      bar.append(seg);
    }
    const other = Math.max(0, gpu.memory_used - placed);
    if (other > 0) {
      const seg = el("div", { class: "seg other", title: `other: ${bytes(other)}` }, "other");
      seg.style.width = `${(100 * other) / total}%`;
      bar.append(seg);
    }
    const facts = [
      `${bytes(gpu.memory_used)} used of ${bytes(gpu.memory_total)}, ${bytes(gpu.memory_free)} free`,
      gpu.utilization_percent !== null && gpu.utilization_percent !== undefined ? `${gpu.utilization_percent}% busy` : null,
      gpu.temperature_celsius !== null && gpu.temperature_celsius !== undefined ? `${gpu.temperature_celsius} °C` : null,
      gpu.power_watts !== null && gpu.power_watts !== undefined ? `${gpu.power_watts} W` : null,
    ].filter(Boolean);
    return el(
      "div",
      { class: "gpu", "data-gpu": gpu.index },
      el("h3", {}, `GPU ${gpu.index} · ${gpu.name}`, gpu.simulated ? el("span", { class: "tag" }, "simulated") : null),
      bar,
      el("p", { class: "note" }, facts.join(" · ")),
      el(
        "ul",
        {},
        gpu.models.map((m) => el("li", {}, `${m.model} (${m.state}): ${m.vram ? bytes(m.vram) : "vram unknown"}${m.sleeping ? ", sleeping (memory freed)" : ""}, ${m.in_flight} in flight`)),
      ),
    );
  });
  $("gpus").replaceChildren(...(cards.length ? cards : [el("p", {}, "No GPUs.")]));
}

function fillSelect(sel, values) {
  const have = new Set([...sel.options].map((o) => o.value));
  for (const v of values) if (!have.has(v)) sel.append(el("option", { value: v }, v));
}

function drawRequests() {
  fillSelect($("filter-client"), new Set(S.requests.map((r) => r.client)));
  fillSelect($("filter-model"), new Set(S.requests.flatMap((r) => [r.route, r.target]).filter((v) => v && v !== "-")));
  if (S.view !== "requests") return;
  const c = $("filter-client").value;
  const m = $("filter-model").value;
  const shown = S.requests.filter((r) => (!c || r.client === c) && (!m || r.route === m || r.target === m)).slice(0, SHOWN_REQUESTS);
  $("requests").tBodies[0].replaceChildren(
    ...shown.map((r) =>
      el(
        "tr",
        { "data-request-id": r.request_id, "data-status": r.status, class: r.status >= 400 ? "bad" : "" },
        el("td", { title: new Date(r.ts_ms).toISOString() }, clock(r.ts_ms)),
        el("td", {}, r.client),
        el("td", {}, r.route === r.target ? r.route : `${r.route} → ${r.target}`),
        el("td", {}, r.status),
        el("td", { class: "tokens" }, r.prompt_tokens === null && r.completion_tokens === null ? "" : `${r.prompt_tokens ?? "?"} / ${r.completion_tokens ?? "?"}`),
        el("td", {}, ms(r.ttft_ms)),
        el("td", {}, ms(r.total_ms)),
        el("td", {}, r.error || ""),
      ),
    ),
  );
  $("requests-note").textContent = `${shown.length} shown of the latest ${S.requests.length}`;
}

// ---- usage charts ------------------------------------------------------------

async function loadUsage() {
  const w = S.usageWindow;
  const r = await admin("GET", `/admin/usage?window=${w}`);
  if (!r.ok) {
    if (r.status !== 401) $("usage-note").textContent = await errorText(r);
    return;
  }
  const d = await r.json();
  if (w !== S.usageWindow) return;
  S.usage = d;
  drawUsage();
}

// A live request lands in the chart's last bucket.
function countUsage(req) {
  const u = S.usage;
  if (!u || !u.store) return;
  const b = Math.floor(req.ts_ms / u.bucket_ms) * u.bucket_ms;
  const tokens = (req.prompt_tokens || 0) + (req.completion_tokens || 0);
  for (const [list, key] of [
    [u.by_client, req.client],
    [u.by_model, req.target],
  ]) {
    const p = list.find((x) => x.ts_ms === b && x.key === key);
    if (p) {
      p.requests += 1;
      p.tokens += tokens;
    } else list.push({ ts_ms: b, key, requests: 1, tokens });
  }
  if (S.view === "usage") drawUsage();
}

const COLORS = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#84cc16", "#ec4899"];

function chart(title, points, field, since, bucket) {
  const now = Date.now();
  const n = Math.max(1, Math.ceil((now - since) / bucket));
  const keys = [...new Set(points.map((p) => p.key))].sort();
  const stacks = Array.from({ length: n }, () => new Map());
  for (const p of points) {
    const i = Math.floor((p.ts_ms - since) / bucket);
    if (i >= 0 && i < n) stacks[i].set(p.key, (stacks[i].get(p.key) || 0) + p[field]);
  }
  const max = Math.max(1, ...stacks.map((s) => [...s.values()].reduce((a, b) => a + b, 0)));
  const W = 480, H = 140, bw = W / n;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H + 16}`, class: "chart", role: "img" });
  g.append(svg("title", {}, title));
  stacks.forEach((s, i) => {
    let y = H;
    for (const k of keys) {
      const v = s.get(k) || 0;
      if (!v) continue;
      const h = (H * v) / max;
      y -= h;
      const r = svg("rect", { x: (i * bw + 0.5).toFixed(1), y: y.toFixed(1), width: Math.max(1, bw - 1).toFixed(1), height: h.toFixed(1), fill: COLORS[keys.indexOf(k) % COLORS.length] });
      r.append(svg("title", {}, `${k}: ${num(v)} ${field}, ${new Date(since + i * bucket).toLocaleString()}`));
      g.append(r);
    }
  });
  g.append(svg("line", { x1: 0, y1: H, x2: W, y2: H, class: "axis" }));
  g.append(svg("text", { x: 0, y: H + 13, class: "axis-label" }, new Date(since).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" })));
  g.append(svg("text", { x: W, y: H + 13, "text-anchor": "end", class: "axis-label" }, "now"));
  g.append(svg("text", { x: 2, y: 11, class: "axis-label" }, `max ${num(max)}`));
  const legend = el("div", { class: "legend" }, keys.map((k, i) => el("span", { "data-key": k }, el("i", { class: `c${i % COLORS.length}` }), k)));
  return el("figure", { "data-chart": `${field}-${title}` }, el("figcaption", {}, title), g, legend);
}

function drawUsage() {
  const u = S.usage;
  if (!u) return;
  if (!u.store) {
    $("usage-note").textContent = "The usage store is off ([store] enabled = false): nothing to chart.";
    $("usage").replaceChildren();
    return;
  }
  const t = u.total || { requests: 0, prompt_tokens: 0, completion_tokens: 0 };
  $("usage-note").textContent = `${num(t.requests)} requests, ${num(t.prompt_tokens + t.completion_tokens)} tokens (stored; live ones added as they come)`;
  $("usage").replaceChildren(
    chart("requests per client", u.by_client, "requests", u.since_ms, u.bucket_ms),
    chart("tokens per client", u.by_client, "tokens", u.since_ms, u.bucket_ms),
    chart("requests per model", u.by_model, "requests", u.since_ms, u.bucket_ms),
    chart("tokens per model", u.by_model, "tokens", u.since_ms, u.bucket_ms),
  );
}

// ---- logs --------------------------------------------------------------------

function drawLogChoices() {
  fillSelect($("log-model"), S.models.map((m) => m.name));
}

function drawLog() {
  const pre = $("log");
  pre.textContent = S.log.lines.join("\n");
  if ($("log-follow").checked) pre.scrollTop = pre.scrollHeight;
}

// ---- profiles ----------------------------------------------------------------

function drawProfiles() {
  const p = S.profiles;
  if (!p) return;
  const parts = [`Active: ${p.active.length ? p.active.join(", ") : "none"}.`];
  if (p.override) parts.push(`Manual override: ${p.override.profile}${p.override.until ? ` until ${new Date(p.override.until).toLocaleString()}` : " until resumed"}.`);
  parts.push(p.next_switch ? `Next switch: ${new Date(p.next_switch).toLocaleString()}.` : "No switch ahead.");
  if (p.test_clock) parts.push("(test clock)");
  $("profile-summary").textContent = p.profiles.length ? parts.join(" ") : "No profiles: every model may run at any time.";
  $("profiles").tBodies[0].replaceChildren(
    ...p.profiles.map((q) =>
      el(
        "tr",
        { "data-profile": q.name, class: q.active ? "on" : "" },
        el("td", {}, q.name),
        el("td", {}, q.active ? "active" : ""),
        el("td", {}, q.windows.join(", ") || "–"),
        el("td", {}, q.models.join(", ")),
        el("td", {}, q.preload.join(", ")),
        el("td", {}, q.exclusive ? "exclusive" : ""),
      ),
    ),
  );
  fillSelect($("activate-profile"), p.profiles.map((q) => q.name));
  $("activate-form").hidden = !p.profiles.length;
}

// ---- wiring ------------------------------------------------------------------

function init() {
  window.addEventListener("hashchange", showView);
  showView();
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key-input").value.trim());
    $("key-input").value = "";
    $("key").hidden = true;
    connect();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    location.reload();
  });
  $("filter-client").addEventListener("change", drawRequests);
  $("filter-model").addEventListener("change", drawRequests);
  for (const r of document.querySelectorAll('input[name="window"]')) {
    r.addEventListener("change", () => {
      S.usageWindow = r.value;
      S.usage = null;
      loadUsage();
    });
  }
  $("log-model").addEventListener("change", () => {
    S.log = { model: $("log-model").value, lines: [] };
    drawLog();
    connect();
  });
  $("activate-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("activate-profile").value;
    const f = $("activate-for").value.trim();
    const r = await admin("POST", `/admin/profiles/${encodeURIComponent(name)}/activate`, f ? { for: f } : {});
    if (r.ok) say(`profile ${name} activated`);
    else if (r.status !== 401) say(await errorText(r), true);
  });
  $("resume").addEventListener("click", async () => {
    const r = await admin("POST", "/admin/profiles/resume");
    if (r.ok) say("profiles follow their windows again");
    else if (r.status !== 401) say(await errorText(r), true);
  });
  setInterval(tick, 1000);
  connect();
}

init();
