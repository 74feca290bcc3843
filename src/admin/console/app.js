// The sluice console: a small page over the admin API (/api/v1/...). No framework: each
// view renders its table from one API call; the overview polls /api/v1/stats every two
// seconds and draws the message rate on a canvas.
"use strict";

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));
const POLL_MS = 2000;
const CHART_POINTS = 150; // five minutes at one sample every two seconds

const state = {
  view: "overview",
  token: sessionStorage.getItem("sluice-token") || "",
  samples: [], // {t, rin, rout}
  last: null, // the previous stats, for rates
  deadLetters: [],
  selected: new Set(),
  detailId: null,
};

function esc(v) {
  if (v === null || v === undefined) return '<span class="muted">–</span>';
  return String(v).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function fmtNum(n) {
  return Number(n).toLocaleString("en-US");
}

function fmtBytes(n) {
  if (n < 1024) return n + " B";
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let u = -1;
  do { n /= 1024; u++; } while (n >= 1024 && u < units.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + " " + units[u];
}

function fmtAge(secs) {
  if (secs === null || secs === undefined) return "–";
  if (secs < 60) return secs.toFixed(0) + " s";
  if (secs < 3600) return (secs / 60).toFixed(0) + " min";
  if (secs < 86400) return (secs / 3600).toFixed(1) + " h";
  return (secs / 86400).toFixed(1) + " d";
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers);
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (options.body) headers["Content-Type"] = "application/json";
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401 || res.status === 403) {
    $("#token-bar").hidden = false;
    setStatus(false, res.status === 401 ? "token needed" : "read-only token");
  }
  if (res.status === 204) return null;
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || res.status + " " + res.statusText);
  return body;
}

function setStatus(ok, text) {
  const s = $("#status");
  s.className = "status " + (ok ? "ok" : "err");
  s.textContent = text;
}

// ------------------------------------------------------------------ views

function show(view) {
  state.view = view;
  $$("nav button").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
  $$(".view").forEach((v) => (v.hidden = v.id !== "view-" + view));
  if (location.hash !== "#" + view) history.replaceState(null, "", "#" + view);
  refreshView();
  if (view === "overview") drawChart();
}

async function refreshView() {
  try {
    if (state.view === "clients") await loadClients();
    else if (state.view === "sessions") await loadSessions();
    else if (state.view === "dead-letters") await loadDeadLetters();
  } catch (e) {
    setStatus(false, e.message);
  }
}

async function loadClients() {
  const page = await api("/api/v1/clients?limit=1000");
  const rows = page.items.map((c) => `
    <tr data-client="${esc(c.client_id)}">
      <td class="mono">${esc(c.client_id)}</td><td>${esc(c.username)}</td>
      <td class="mono">${esc(c.peer)}</td><td>${esc(c.listener)}</td><td>${esc(c.protocol)}</td>
      <td>${esc(fmtTime(c.connected_since))}</td><td class="num">${c.keep_alive_secs} s</td>
      <td class="num">${fmtNum(c.inflight)}</td><td class="num">${fmtNum(c.queued)}</td>
      <td><button class="link kick" data-client="${esc(c.client_id)}">Disconnect</button></td>
    </tr>`);
  $("#clients-table tbody").innerHTML = rows.join("");
  $("#view-clients .empty").hidden = page.items.length > 0;
  $("#clients-count").textContent = page.items.length + (page.next ? "+" : "") + " connected";
}

async function loadSessions() {
  const page = await api("/api/v1/sessions?sort=backlog&limit=1000");
  const max = Math.max(1, ...page.items.map((s) => s.queued + s.inflight));
  const rows = page.items.map((s) => {
    const backlog = s.queued + s.inflight;
    const width = Math.round((backlog / max) * 80);
    const stateText = s.online ? '<span class="pill online">online</span>'
      : s.persistent ? '<span class="pill">offline</span>' : '<span class="pill">ending</span>';
    const subs = s.subscriptions.map((x) => esc(x.filter)).join(", ");
    return `<tr>
      <td class="mono">${esc(s.client_id)}</td><td>${stateText}</td>
      <td class="num">${fmtNum(s.queued)}${backlog ? `<span class="bar" style="width:${width}px"></span>` : ""}</td>
      <td class="num">${fmtBytes(s.queued_bytes)}</td><td class="num">${fmtNum(s.inflight)}</td>
      <td class="num">${fmtAge(s.oldest_queued_age_secs)}</td><td class="mono wrap">${subs || '<span class="muted">none</span>'}</td>
    </tr>`;
  });
  $("#sessions-table tbody").innerHTML = rows.join("");
  $("#sessions-count").textContent = page.items.length + (page.next ? "+" : "") + " sessions";
}

function deadLetterQuery() {
  const q = new URLSearchParams({ limit: "1000" });
  const reason = $("#dl-reason").value;
  const topic = $("#dl-topic").value.trim();
  if (reason) q.set("reason", reason);
  if (topic) q.set("topic", topic);
  return q;
}

async function loadDeadLetters() {
  const page = await api("/api/v1/dead-letters?" + deadLetterQuery());
  state.deadLetters = page.items;
  const shown = new Set(page.items.map((d) => d.id));
  state.selected = new Set([...state.selected].filter((id) => shown.has(id)));
  const rows = page.items.map((d) => `
    <tr class="clickable${state.selected.has(d.id) ? " selected" : ""}" data-id="${d.id}">
      <td><input type="checkbox" class="pick" data-id="${d.id}" ${state.selected.has(d.id) ? "checked" : ""} aria-label="select ${d.id}"></td>
      <td class="num mono">${d.id}</td><td><span class="pill reason">${esc(d.reason)}</span></td>
      <td class="mono">${esc(d.original_topic)}</td><td class="mono">${esc(d.publisher)}</td>
      <td class="mono">${esc(d.subscriber)}</td><td class="num">${d.attempts}</td>
      <td>${esc(fmtTime(d.first_seen))}</td><td class="num">${fmtBytes(d.payload_bytes)}</td>
    </tr>`);
  $("#dl-table tbody").innerHTML = rows.join("");
  $("#view-dead-letters .empty").hidden = page.items.length > 0;
  if (!shown.has(state.detailId)) $("#dl-detail").hidden = true;
  updateSelection();
}

function updateSelection() {
  const n = state.selected.size;
  $("#dl-selected").textContent = n + " selected";
  $("#dl-replay").disabled = n === 0;
  $("#dl-purge").disabled = n === 0;
  $("#dl-all").checked = n > 0 && n === state.deadLetters.length;
}

function showDetail(id) {
  const d = state.deadLetters.find((x) => x.id === id);
  if (!d) return;
  state.detailId = id;
  const field = (k, v) => `<dt>${k}</dt><dd>${esc(v)}</dd>`;
  $("#dl-detail").innerHTML = `
    <h3>Dead letter ${d.id}</h3>
    <dl>
      ${field("Reason", d.reason)}${field("Topic", d.original_topic)}${field("Publisher", d.publisher)}
      ${field("Subscriber", d.subscriber)}${field("Attempts", d.attempts)}
      ${field("First seen", fmtTime(d.first_seen))}${field("Dead-lettered", fmtTime(d.dead_lettered_at))}
      ${field("Payload", fmtBytes(d.payload_bytes))}
    </dl>
    <p class="muted small">Payload preview</p>
    <pre class="mono">${esc(d.preview)}</pre>`;
  $("#dl-detail").hidden = false;
}

function confirmDialog(title, text, okLabel) {
  return new Promise((resolve) => {
    const dlg = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = okLabel;
    dlg.onclose = () => resolve(dlg.returnValue === "ok");
    dlg.showModal();
  });
}

async function actOnSelection(action) {
  const ids = [...state.selected];
  const verb = action === "replay" ? "Replay" : "Purge";
  const text = action === "replay"
    ? `Re-publish ${ids.length} dead letter(s) to their original topics? Each leaves the queue once its re-publish is durable.`
    : `Delete ${ids.length} dead letter(s) for good? This cannot be undone.`;
  if (!(await confirmDialog(verb + " dead letters", text, verb))) return;
  const box = $("#dl-result");
  try {
    const out = await api("/api/v1/dead-letters/" + action, { method: "POST", body: JSON.stringify({ ids }) });
    box.className = "result";
    box.textContent = action === "replay"
      ? `Replayed ${out.replayed}` + (out.no_subscribers_again ? `; ${out.no_subscribers_again} found no subscriber again and are dead letters again.` : ".")
      : `Purged ${out.purged}.`;
  } catch (e) {
    box.className = "result err";
    box.textContent = verb + " failed: " + e.message;
  }
  box.hidden = false;
  state.selected.clear();
  await loadDeadLetters();
}

// ------------------------------------------------------------------ overview

function renderCards(s) {
  const dlQueued = s.dead_letters_queued;
  const cards = [
    ["Connections", fmtNum(s.connections)],
    ["Sessions online", fmtNum(s.sessions_online)],
    ["Offline persistent", fmtNum(s.sessions_offline_persistent)],
    ["Subscriptions", fmtNum(s.subscriptions)],
    ["Queued messages", fmtNum(s.queued)],
    ["Queued bytes", fmtBytes(s.queued_bytes)],
    ["Retained", fmtNum(s.retained)],
    ["Dead letters queued", fmtNum(dlQueued), dlQueued > 0],
    ["Received", fmtNum(s.messages_received)],
    ["Sent", fmtNum(s.messages_sent)],
    ["Uptime", fmtAge(s.uptime_secs)],
    ["Log on disk", fmtBytes(s.store_bytes_on_disk), s.store_poisoned],
  ];
  $("#cards").innerHTML = cards.map(([label, value, alert]) =>
    `<div class="card${alert ? " alert" : ""}"><div class="label">${label}</div><div class="value">${value}</div></div>`).join("");
  const badge = $("#dl-badge");
  badge.hidden = dlQueued === 0;
  badge.textContent = fmtNum(dlQueued);
}

async function pollStats() {
  try {
    const s = await api("/api/v1/stats");
    setStatus(true, "live");
    $("#version").textContent = "v" + s.version;
    renderCards(s);
    if (state.last && s.now_ms > state.last.now_ms) {
      const dt = (s.now_ms - state.last.now_ms) / 1000;
      state.samples.push({
        t: s.now_ms,
        rin: Math.max(0, (s.messages_received - state.last.messages_received) / dt),
        rout: Math.max(0, (s.messages_sent - state.last.messages_sent) / dt),
      });
      if (state.samples.length > CHART_POINTS) state.samples.shift();
    }
    state.last = s;
    if (state.view === "overview") drawChart();
  } catch (e) {
    setStatus(false, e.message);
  }
}

function niceMax(v) {
  if (v <= 1) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawChart() {
  const canvas = $("#rate-chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const pad = { l: 56, r: 12, t: 24, b: 26 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const css = getComputedStyle(document.documentElement);
  const pts = state.samples;
  const top = niceMax(Math.max(0, ...pts.map((p) => Math.max(p.rin, p.rout))));
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = css.getPropertyValue("--muted");
  g.strokeStyle = css.getPropertyValue("--line");
  g.lineWidth = 1;
  for (let i = 0; i <= 5; i++) {
    const y = pad.t + ph - (ph * i) / 5;
    g.beginPath(); g.moveTo(pad.l, y + 0.5); g.lineTo(pad.l + pw, y + 0.5); g.stroke();
    const label = (top * i) / 5;
    g.textAlign = "right"; g.textBaseline = "middle";
    g.fillText(label >= 10 ? label.toFixed(0) : label.toFixed(1), pad.l - 8, y);
  }
  g.textAlign = "left"; g.textBaseline = "top";
  g.fillText("msg/s", 4, 2);
  g.textAlign = "right";
  g.fillText("now", pad.l + pw, pad.t + ph + 8);
  // Until five minutes of samples exist, the axis spans what there is (at least a minute).
  const span = Math.min(CHART_POINTS, Math.max(pts.length, 31)) - 1;
  g.textAlign = "left";
  g.fillText("−" + fmtAge((span * POLL_MS) / 1000), pad.l, pad.t + ph + 8);
  if (pts.length < 2) {
    g.textAlign = "center"; g.textBaseline = "middle";
    g.fillText("collecting samples…", pad.l + pw / 2, pad.t + ph / 2);
    return;
  }
  const x = (i) => pad.l + pw - ((pts.length - 1 - i) / span) * pw;
  const y = (v) => pad.t + ph - (v / top) * ph;
  for (const [key, color] of [["rin", "--in"], ["rout", "--out"]]) {
    g.strokeStyle = css.getPropertyValue(color);
    g.lineWidth = 2;
    g.lineJoin = "round";
    g.beginPath();
    pts.forEach((p, i) => (i ? g.lineTo(x(i), y(p[key])) : g.moveTo(x(i), y(p[key]))));
    g.stroke();
  }
}

// ------------------------------------------------------------------ wiring

function wire() {
  $$("nav button").forEach((b) => b.addEventListener("click", () => show(b.dataset.view)));
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("#token-input").value.trim();
    sessionStorage.setItem("sluice-token", state.token);
    $("#token-bar").hidden = true;
    pollStats();
    refreshView();
  });
  $("#dl-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    state.selected.clear();
    loadDeadLetters().catch((err) => setStatus(false, err.message));
  });
  $("#dl-table tbody").addEventListener("click", (e) => {
    const row = e.target.closest("tr");
    if (!row) return;
    const id = Number(row.dataset.id);
    if (e.target.classList.contains("pick")) {
      if (e.target.checked) state.selected.add(id); else state.selected.delete(id);
      row.classList.toggle("selected", e.target.checked);
      updateSelection();
      return;
    }
    showDetail(id);
  });
  $("#dl-all").addEventListener("change", (e) => {
    state.selected = e.target.checked ? new Set(state.deadLetters.map((d) => d.id)) : new Set();
    $$("#dl-table .pick").forEach((c) => {
      c.checked = e.target.checked;
      c.closest("tr").classList.toggle("selected", e.target.checked);
    });
    updateSelection();
  });
  $("#dl-replay").addEventListener("click", () => actOnSelection("replay"));
  $("#dl-purge").addEventListener("click", () => actOnSelection("purge"));
  $("#clients-table tbody").addEventListener("click", async (e) => {
    if (!e.target.classList.contains("kick")) return;
    const id = e.target.dataset.client;
    if (!(await confirmDialog("Disconnect " + id, "MQTT 5 clients receive DISCONNECT 0x98 (Administrative action). Their session is kept.", "Disconnect"))) return;
    try {
      await api("/api/v1/clients/" + encodeURIComponent(id), { method: "DELETE" });
    } catch (err) {
      setStatus(false, err.message);
    }
    loadClients();
  });
  window.addEventListener("resize", drawChart);
  window.addEventListener("hashchange", () => show(location.hash.slice(1) || "overview"));
  const initial = location.hash.slice(1);
  show(["clients", "sessions", "dead-letters"].includes(initial) ? initial : "overview");
  pollStats();
  setInterval(() => {
    pollStats();
    if (state.view === "clients" || state.view === "sessions") refreshView();
  }, POLL_MS);
}

wire();
