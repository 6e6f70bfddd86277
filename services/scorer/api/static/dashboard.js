// churnwatch ops dashboard: plain JS, charts drawn as inline SVG, nothing from the internet.
// Every figure comes from the risk API's /v1 routes, called with the key the user entered.
"use strict";

const KEY_STORE = "churnwatch.apiKey";
const MODEL_SAMPLES = "churnwatch.modelSamples";
const BANDS = ["low", "medium", "high", "critical"];
const REFRESH_MS = 30000;

const state = {
  key: null,
  labels: {},
  cursors: [null], // cursors[i] = the cursor that fetched page i
  page: 0,
  next: null,
  feedCount: 0,
  source: null,
  retry: null,
  timer: null,
};

// ---------- small helpers ----------

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c) node.append(c);
  return node;
}

function fmtInt(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}
function fmtPct(x, digits = 0) {
  return x === null || x === undefined ? "–" : (100 * x).toFixed(digits) + " %";
}
function fmtNum(x) {
  if (x === null || x === undefined) return "–";
  const v = Number(x);
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
}
function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, seconds);
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}
function ago(iso) {
  if (!iso) return "–";
  return fmtAge((Date.now() - Date.parse(iso)) / 1000) + " ago";
}
function clock(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleTimeString("en-GB", { hour12: false });
}
function stamp(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return "–";
  return d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
}
function label(feature) {
  return state.labels[feature] || feature.replaceAll("_", " ");
}
function bandColor(band) {
  return BANDS.includes(band) ? `var(--${band})` : "#9aa5b5";
}
function bandBadge(band) {
  return el("span", { class: "badge bg-" + (BANDS.includes(band) ? band : "none"), text: band || "none" });
}
function scoreBar(score, band) {
  const fill = el("div", { class: "fill" });
  fill.style.width = Math.max(0, Math.min(100, score || 0)) + "%";
  fill.style.background = bandColor(band);
  return el("div", { class: "scorebar" }, el("b", { text: fmtInt(score) }),
    el("div", { class: "track" }, fill));
}
function empty(text) {
  return el("p", { class: "empty", text });
}

// ---------- API access and errors ----------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function explain(err) {
  if (err.status === 401) {
    return `The API key was refused (401: ${err.message}). Enter a valid key.`;
  }
  if (err.status === 403) {
    return `This key may not read the dashboard's data (403: ${err.message}). ` +
      "Use a key created with --scope read (or admin).";
  }
  if (err.status === 503) return `The service is unavailable right now (503: ${err.message}); retrying.`;
  if (err.status) return `The API answered ${err.status}: ${err.message}`;
  return "The risk API cannot be reached: " + err.message;
}

async function api(path) {
  let res;
  try {
    res = await fetch(path, { headers: { Authorization: "Bearer " + state.key, Accept: "application/json" } });
  } catch (exc) {
    throw new ApiError(0, exc.message || "network error");
  }
  if (!res.ok) {
    let message = res.statusText;
    try {
      message = (await res.json()).error || message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, message);
  }
  return res.json();
}

// A failure anywhere: 401/403 send the user back to the key form with the reason.
function failed(err) {
  if (err.status === 401 || err.status === 403) {
    signOut(explain(err));
    return;
  }
  showBanner(explain(err));
}
function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text;
  banner.hidden = !text;
}

// ---------- sign in ----------

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  stopFeed();
  clearInterval(state.timer);
  showBanner("");
  $("overview").hidden = true;
  $("user").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("key-input").value = "";
  $("key-input").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  state.key = key;
  $("login-submit").disabled = true;
  try {
    await api("v1/at-risk?limit=1");
  } catch (err) {
    state.key = null;
    const error = $("login-error");
    error.textContent = explain(err);
    error.hidden = false;
    return;
  } finally {
    $("login-submit").disabled = false;
  }
  sessionStorage.setItem(KEY_STORE, key);
  start();
}

function start() {
  $("login").hidden = true;
  $("signout").hidden = false;
  loadLabels();
  startFeed();
  route();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
}

async function loadLabels() {
  try {
    state.labels = await api("dashboard/labels");
  } catch (_) { /* raw feature names will do */ }
}

// ---------- routing ----------

function route() {
  if (!state.key) return;
  const match = location.hash.match(/^#\/user\/(.+)$/);
  showBanner("");
  if (match) {
    $("overview").hidden = true;
    $("user").hidden = false;
    loadUser(decodeURIComponent(match[1]));
  } else {
    $("user").hidden = true;
    $("overview").hidden = false;
    loadOverview();
  }
  window.scrollTo(0, 0);
}

function openUser(userId) {
  location.hash = "#/user/" + encodeURIComponent(userId);
}

function refresh() {
  if (state.key && !$("overview").hidden) loadOverview();
}

function loadOverview() {
  loadAtRisk();
  loadFigures();
}

// ---------- at-risk table ----------

function atRiskQuery() {
  const params = new URLSearchParams({ limit: $("f-limit").value });
  for (const f of ["band", "stage", "tier"]) {
    const v = $("f-" + f).value;
    if (v) params.set(f, v);
  }
  const cursor = state.cursors[state.page];
  if (cursor) params.set("cursor", cursor);
  return "v1/at-risk?" + params;
}

function resetPaging() {
  state.cursors = [null];
  state.page = 0;
  loadAtRisk();
}

async function loadAtRisk() {
  let data;
  try {
    data = await api(atRiskQuery());
  } catch (err) {
    failed(err);
    return;
  }
  const body = $("atrisk-body");
  body.replaceChildren(...data.items.map((row) =>
    el("tr", { class: "click", "data-user": row.user_id, onclick: () => openUser(row.user_id) },
      el("td", {}, el("span", { class: "uid", text: row.user_id })),
      el("td", {}, scoreBar(row.score, row.band)),
      el("td", {}, bandBadge(row.band)),
      el("td", { text: row.stage || "–" }),
      el("td", { text: row.tier || "–" }),
      el("td", { class: "num muted", text: ago(row.updated_at) }))));
  if (!data.items.length) {
    body.append(el("tr", {}, el("td", { colspan: "6" },
      empty(state.page ? "No more users on this page." : "No user matches these filters."))));
  }
  state.next = data.next_cursor;
  $("prev").disabled = state.page === 0;
  $("next").disabled = !data.next_cursor;
  $("atrisk-info").textContent = `Page ${state.page + 1} · ${data.items.length} users, highest risk first`;
}

// ---------- key figures and charts ----------

async function loadFigures() {
  let stats, model;
  try {
    [stats, model] = await Promise.all([api("v1/stats"), api("v1/model")]);
  } catch (err) {
    failed(err);
    return;
  }
  const workers = model.workers || [];
  const sample = recordModelSample(workers);
  renderKpis(stats, workers);
  renderActive(stats);
  renderWinback(stats.winback || {});
  renderModel(workers, sample);
  renderRetention(stats);
}

function mean(values) {
  const xs = values.filter((v) => typeof v === "number" && isFinite(v));
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
}

function kpi(labelText, value, sub, valueClass) {
  return el("div", { class: "kpi" }, el("div", { class: "label", text: labelText }),
    el("div", { class: "value " + (valueClass || ""), text: value, title: value }), sub ? el("div", { class: "sub", text: sub }) : null);
}

function renderKpis(stats, workers) {
  const a = stats.active_users || {};
  const auc = mean(workers.map((w) => w.quality && w.quality.roc_auc));
  const pos = workers.reduce((s, w) => s + (w.labels.positive || 0), 0);
  const neg = workers.reduce((s, w) => s + (w.labels.negative || 0), 0);
  const age = workers.length ? Math.max(...workers.map((w) => w.checkpoint_age_s ?? 0)) : null;
  const cards = [
    kpi("Active today (DAU)", fmtInt(a.dau)),
    kpi("Active 7 days (WAU)", fmtInt(a.wau)),
    kpi("Active 30 days (MAU)", fmtInt(a.mau)),
    kpi("Stickiness", a.mau ? fmtPct(a.dau / a.mau) : "–", "DAU / MAU"),
  ];
  if (stats.churn_rate !== undefined) cards.push(kpi("Churn rate", fmtPct(stats.churn_rate, 1)));
  cards.push(
    kpi("Model ROC AUC", auc === null ? "–" : auc.toFixed(3),
      auc === null ? "needs both outcomes" : "progressive validation"),
    kpi("Outcomes learned", fmtInt(pos + neg), `${fmtInt(pos)} churned · ${fmtInt(neg)} stayed`),
    kpi("Checkpoint age", workers.length ? fmtAge(age) : "–",
      workers.length ? `${workers.length} worker${workers.length > 1 ? "s" : ""}` : "no checkpoint yet"),
  );
  $("kpis").replaceChildren(...cards);
}

// Vertical bars: [{label, value, color}] with the value above each bar.
function barChart(bars, { width = 360, height = 180, max, format = fmtInt } = {}) {
  const top = 18, bottom = 24, left = 8;
  const top_ = max ?? Math.max(1, ...bars.map((b) => b.value || 0));
  const slot = (width - left * 2) / Math.max(1, bars.length);
  const barW = Math.min(64, slot * 0.6);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  const base = height - bottom;
  for (let i = 0; i <= 4; i++) {
    const y = top + ((base - top) * i) / 4;
    chart.append(svg("line", { class: "grid-line", x1: 0, x2: width, y1: y, y2: y }));
  }
  bars.forEach((b, i) => {
    const h = ((b.value || 0) / top_) * (base - top);
    const x = left + slot * i + (slot - barW) / 2;
    chart.append(
      svg("rect", { x, y: base - h, width: barW, height: Math.max(h, 0.5), rx: 4, fill: b.color || "var(--accent)" },
        svg("title", { text: `${b.label}: ${format(b.value)}` })),
      svg("text", { class: "val", x: x + barW / 2, y: base - h - 5, "text-anchor": "middle", text: format(b.value) }),
      svg("text", { x: x + barW / 2, y: height - 6, "text-anchor": "middle", text: b.label }),
    );
  });
  chart.append(svg("line", { class: "axis", x1: 0, x2: width, y1: base, y2: base }));
  return chart;
}

// Horizontal grouped bars: groups [{label, bars: [{name, value, color, note}]}], values 0..1.
function groupedBars(groups, { width = 360 } = {}) {
  const labelW = 118, row = 16, gap = 12, right = 44;
  const height = groups.reduce((h, g) => h + g.bars.length * row + gap, 4);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  const span = width - labelW - right;
  for (let i = 0; i <= 4; i++) {
    const x = labelW + (span * i) / 4;
    chart.append(svg("line", { class: "grid-line", x1: x, x2: x, y1: 0, y2: height - 4 }));
  }
  let y = 2;
  for (const g of groups) {
    chart.append(svg("text", { x: labelW - 8, y: y + (g.bars.length * row) / 2 + 4, "text-anchor": "end", text: g.label }));
    for (const b of g.bars) {
      const w = b.value === null ? 0 : Math.max(1, span * Math.min(1, b.value));
      chart.append(
        svg("rect", { x: labelW, y: y + 1, width: w, height: row - 4, rx: 3, fill: b.color },
          svg("title", { text: `${g.label} · ${b.name}: ${b.note}` })),
        svg("text", { class: "val", x: labelW + w + 5, y: y + row - 4, text: b.value === null ? "n/a" : fmtPct(b.value) }),
      );
      y += row;
    }
    y += gap;
  }
  return chart;
}

function legend(items) {
  return el("div", { class: "legend" }, items.map(([name, color]) => {
    const swatch = el("i");
    swatch.style.background = color;
    return el("span", {}, swatch, name);
  }));
}

function widthOf(node) {
  return Math.max(240, Math.round(node.clientWidth || 360));
}

function renderActive(stats) {
  const a = stats.active_users || {};
  $("chart-active").replaceChildren(barChart([
    { label: "DAU", value: a.dau, color: "#7aa7f0" },
    { label: "WAU", value: a.wau, color: "#4b85e6" },
    { label: "MAU", value: a.mau, color: "#2f6fde" },
  ], { width: widthOf($("chart-active")) }));
  $("active-asof").textContent = "as of " + clock(stats.as_of);
}

function renderWinback(winback) {
  const names = Object.keys(winback).sort();
  if (!names.length) {
    $("chart-winback").replaceChildren(empty("No win-back outcomes yet: playbooks appear once the notifier acted on alerts."));
    return;
  }
  const groups = names.map((name) => ({
    label: name.length > 18 ? name.slice(0, 17) + "…" : name,
    bars: ["treated", "control"].map((group) => {
      const c = (winback[name] || {})[group] || {};
      return {
        name: group,
        value: c.win_rate ?? null,
        color: group === "treated" ? "var(--accent)" : "var(--control)",
        note: `${fmtInt(c.won)} won of ${fmtInt(c.treated)}`,
      };
    }),
  }));
  $("chart-winback").replaceChildren(groupedBars(groups, { width: widthOf($("chart-winback")) }),
    legend([["treated", "var(--accent)"], ["control (not contacted)", "var(--control)"]]));
}

// The API reports current quality only: keep this tab's own samples to draw a trend.
function recordModelSample(workers) {
  const auc = mean(workers.map((w) => w.quality && w.quality.roc_auc));
  const samples = JSON.parse(sessionStorage.getItem(MODEL_SAMPLES) || "[]");
  const sample = { t: Date.now(), auc, precision: mean(workers.map((w) => w.quality && w.quality.precision)),
    recall: mean(workers.map((w) => w.quality && w.quality.recall)) };
  samples.push(sample);
  sessionStorage.setItem(MODEL_SAMPLES, JSON.stringify(samples.slice(-240)));
  return samples;
}

function renderModel(workers, samples) {
  if (!workers.length) {
    $("chart-model").replaceChildren(empty("No scorer worker has saved a checkpoint yet."));
    $("chart-model-time").replaceChildren();
    $("model-version").textContent = "";
    $("model-note").textContent = "";
    return;
  }
  const groups = workers.map((w) => ({
    label: w.worker.length > 18 ? "…" + w.worker.slice(-17) : w.worker,
    bars: [["ROC AUC", "roc_auc", "#2f6fde"], ["precision", "precision", "#3f9b6e"], ["recall", "recall", "#d99a1e"]]
      .map(([name, key, color]) => ({ name, value: w.quality[key] ?? null, color, note: String(w.quality[key] ?? "n/a") })),
  }));
  $("chart-model").replaceChildren(groupedBars(groups, { width: widthOf($("chart-model")) }),
    legend([["ROC AUC", "#2f6fde"], ["precision at threshold", "#3f9b6e"], ["recall at threshold", "#d99a1e"]]));
  $("model-version").textContent = workers.map((w) => w.model_version).filter(Boolean).join(", ");
  const points = samples.filter((s) => s.auc !== null).map((s) => ({ t: s.t, v: s.auc }));
  $("chart-model-time").replaceChildren(points.length > 1
    ? lineChart(points, { width: widthOf($("chart-model-time")), height: 120, ymin: 0.5, ymax: 1, yfmt: (v) => v.toFixed(2), title: "ROC AUC over time" })
    : el("span"));
  const logLoss = mean(workers.map((w) => w.quality.log_loss));
  $("model-note").textContent =
    `Progressive validation on resolved labels${logLoss === null ? "" : `; log loss ${logLoss.toFixed(3)}`}. ` +
    "The API reports current figures only, so the trend line shows what this page sampled " +
    "every 30 s since it was opened.";
}

// A time series: points [{t (ms), v, color?, title?}].
function lineChart(points, { width = 360, height = 180, ymin = 0, ymax = 1, yfmt = String, title, bands, area = true } = {}) {
  const left = 34, right = 10, top = title ? 22 : 10, bottom = 22;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  let t0 = Math.min(...points.map((p) => p.t));
  const t1 = Math.max(...points.map((p) => p.t));
  t0 = Math.min(t0, t1 - 3600e3); // at least an hour wide: a lone point sits at "now"
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - (v - ymin) / (ymax - ymin)) * (height - top - bottom);
  if (title) chart.append(svg("text", { class: "title", x: 0, y: 12, text: title }));
  for (const band of bands || []) {
    chart.append(svg("rect", { x: left, width: width - left - right, y: y(band.to), height: y(band.from) - y(band.to),
      fill: band.color, opacity: 0.08 }));
  }
  for (let i = 0; i <= 4; i++) {
    const v = ymin + ((ymax - ymin) * i) / 4;
    chart.append(svg("line", { class: "grid-line", x1: left, x2: width - right, y1: y(v), y2: y(v) }),
      svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", text: yfmt(v) }));
  }
  const sorted = [...points].sort((a, b) => a.t - b.t);
  const path = sorted.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
  if (area && sorted.length > 1) {
    chart.append(svg("path", { class: "area",
      d: `${path} L${x(sorted.at(-1).t).toFixed(1)},${y(ymin)} L${x(sorted[0].t).toFixed(1)},${y(ymin)} Z` }));
  }
  chart.append(svg("path", { class: "line", d: path }));
  for (const p of sorted) {
    chart.append(svg("circle", { cx: x(p.t), cy: y(p.v), r: 4, fill: p.color || "var(--accent)", stroke: "#fff", "stroke-width": 1.5 },
      svg("title", { text: p.title || `${new Date(p.t).toISOString()}: ${yfmt(p.v)}` })));
  }
  const fmtT = (t) => (t1 - t0 > 2 * 86400e3
    ? new Date(t).toISOString().slice(5, 10)
    : new Date(t).toISOString().slice(11, 16));
  chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: y(ymin), y2: y(ymin) }),
    svg("text", { x: left, y: height - 5, text: fmtT(t0) }),
    svg("text", { x: width - right, y: height - 5, "text-anchor": "end", text: fmtT(t1) }));
  return chart;
}

// Cohort retention: shown when /v1/stats reports it (a list or a map of cohorts).
function renderRetention(stats) {
  const raw = stats.cohorts || stats.retention || stats.cohort_retention;
  const box = $("retention");
  if (!raw || (typeof raw === "object" && !Object.keys(raw).length)) {
    box.replaceChildren(empty("The API does not report cohort retention yet: GET /v1/stats returns " +
      "active users and win-back counters only. Day-1/7/30 retention per signup cohort will appear here once it does."));
    return;
  }
  const rows = Array.isArray(raw) ? raw : Object.entries(raw).map(([cohort, v]) => ({ cohort, ...v }));
  const cols = ["d1", "d7", "d30"].map((d) => [d, [d, `day_${d.slice(1)}`, `day${d.slice(1)}`]]);
  const pick = (r, names) => names.map((n) => r[n]).find((v) => v !== undefined);
  const cell = (v) => {
    const td = el("td", { class: "cell", text: v === undefined || v === null ? "–" : fmtPct(v) });
    td.style.background = v === undefined || v === null ? "#c7ced9" : `rgba(47, 111, 222, ${0.2 + 0.8 * v})`;
    return td;
  };
  box.replaceChildren(el("table", { class: "table heat" },
    el("thead", {}, el("tr", {}, el("th", { text: "Signup cohort" }), el("th", { class: "num", text: "Users" }),
      cols.map(([d]) => el("th", { text: `Day ${d.slice(1)}` })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, el("td", { text: r.cohort ?? r.day ?? r.date ?? "" }),
      el("td", { class: "num", text: fmtInt(r.size ?? r.users) }), cols.map(([, names]) => cell(pick(r, names))))))));
}

// ---------- live alert feed ----------

function setFeedStatus(kind, text) {
  const s = $("feed-status");
  s.className = "status " + kind;
  s.textContent = text;
}

function stopFeed() {
  if (state.source) state.source.close();
  state.source = null;
  clearTimeout(state.retry);
  setFeedStatus("off", "feed offline");
}

function startFeed() {
  stopFeed();
  setFeedStatus("wait", "connecting…");
  const source = new EventSource("v1/alerts/stream?key=" + encodeURIComponent(state.key));
  state.source = source;
  source.addEventListener("ready", () => setFeedStatus("live", "live"));
  source.onmessage = (event) => {
    try {
      addAlert(JSON.parse(event.data));
    } catch (_) { /* not an alert */ }
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // The server refused the stream (401/403/503): find out why, then try again.
      setFeedStatus("off", "feed offline");
      api("v1/at-risk?limit=1").then(
        () => { state.retry = setTimeout(() => state.key && startFeed(), 5000); },
        failed);
    } else {
      setFeedStatus("wait", "reconnecting…");
    }
  };
}

function addAlert(alert) {
  const reason = (alert.reasons || [])[0];
  const change = alert.trigger === "sharp_rise"
    ? "sharp rise"
    : `${alert.previous_band || "new"} → ${alert.band}`;
  const segment = alert.segment ? `${alert.segment.stage} · ${alert.segment.tier} value` : "";
  const score = el("div", { class: "score", text: String(alert.score) });
  score.style.background = bandColor(alert.band);
  const item = el("li", { class: "fresh", "data-alert": alert.alert_id, onclick: () => openUser(alert.user_id) },
    score,
    el("div", {}, el("div", { class: "who", text: alert.user_id }),
      el("div", { class: "why", text: [change, segment, reason ? (reason.label || label(reason.feature)) : ""]
        .filter(Boolean).join(" · ") })),
    el("time", { datetime: alert.occurred_at, text: clock(alert.occurred_at) }));
  const feed = $("feed");
  feed.prepend(item);
  while (feed.children.length > 100) feed.lastChild.remove();
  state.feedCount += 1;
  $("feed-empty").hidden = true;
  $("feed-count").textContent = `${state.feedCount} since opened`;
}

// ---------- user page ----------

async function loadUser(userId) {
  const body = $("user-body");
  body.replaceChildren(el("p", { class: "muted", text: "Loading " + userId + "…" }));
  let user, alerts, actions;
  try {
    const id = encodeURIComponent(userId);
    [user, alerts, actions] = await Promise.all([
      api(`v1/users/${id}`),
      api(`v1/users/${id}/alerts?limit=50`),
      api(`v1/users/${id}/actions?limit=50`).catch((err) => (err.status === 404 ? { items: [], total: 0 } : Promise.reject(err))),
    ]);
  } catch (err) {
    if (err.status === 404) {
      body.replaceChildren(el("div", { class: "card" }, empty(`No user "${userId}": nothing of theirs is stored.`)));
    } else {
      body.replaceChildren();
      failed(err);
    }
    return;
  }
  body.replaceChildren(
    el("div", { class: "user-head" }, el("h1", { text: user.user_id }), bandBadge(user.band),
      el("span", { class: "chip", text: "stage: " + user.stage }), el("span", { class: "chip", text: "value: " + user.tier })),
    el("section", { class: "kpis" },
      kpi("Risk score", `${user.score} / 100`, `${fmtPct(user.risk, 1)} chance to churn`),
      kpi("Percentile", user.percentile === null ? "–" : `${user.percentile}`, "share of users at or below"),
      kpi("Alerts", fmtInt(alerts.total), "kept, newest 50"),
      kpi("Win-back actions", fmtInt(actions.total)),
      kpi("Last scored", ago(user.updated_at), stamp(user.updated_at)),
      kpi("Model", user.model_version || "–", null, "value-text")),
    el("div", { class: "grid grid-2" },
      el("section", { class: "card" }, el("div", { class: "card-head" }, el("h2", { text: "Why this risk" })),
        renderReasons(user.reasons || [])),
      el("section", { class: "card" }, el("div", { class: "card-head" }, el("h2", { text: "Risk history" })),
        el("div", { id: "risk-history", class: "chart" }))),
    el("section", { class: "card" }, el("div", { class: "card-head" }, el("h2", { text: "Alerts" }),
      el("span", { class: "muted small", text: `${alerts.total} kept` })), renderAlerts(alerts.items || [])),
    el("section", { class: "card" }, el("div", { class: "card-head" }, el("h2", { text: "Win-back actions" }),
      el("span", { class: "muted small", text: `${actions.total} kept` })), renderActions(actions.items || [])),
    el("section", { class: "card" }, el("div", { class: "card-head" }, el("h2", { text: "Behaviour features" }),
      el("span", { class: "muted small", text: "as of " + stamp(user.updated_at) })), renderFeatures(user.features || {})),
  );
  renderHistory($("risk-history"), user, alerts.items || []);
}

function renderReasons(reasons) {
  if (!reasons.length) return empty("No feature pushes this user's risk up.");
  const top = Math.max(...reasons.map((r) => Math.abs(r.contribution)), 1e-9);
  return el("div", { class: "reasons" }, reasons.map((r) => {
    const fill = el("div", { class: "fill" + (r.contribution < 0 ? " down" : "") });
    fill.style.width = ((100 * Math.abs(r.contribution)) / top).toFixed(1) + "%";
    return el("div", { class: "reason" },
      el("div", { class: "text" }, el("span", { text: capital(label(r.feature)) }),
        el("span", { text: `${fmtNum(r.value)} · weight ${r.contribution.toFixed(2)}` })),
      el("div", { class: "track" }, fill));
  }), el("p", { class: "note", text: "The features that push this user's risk up most, strongest first; " +
    "the bar is each one's share of the strongest, the number before it the user's value." }));
}

function capital(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function renderHistory(box, user, alerts) {
  const points = alerts.map((a) => ({ t: Date.parse(a.occurred_at), v: a.score, color: bandColor(a.band),
    title: `${stamp(a.occurred_at)}: alert, score ${a.score} (${a.band})` }));
  points.push({ t: Date.parse(user.updated_at), v: user.score, color: bandColor(user.band),
    title: `${stamp(user.updated_at)}: current score ${user.score} (${user.band})` });
  const valid = points.filter((p) => !isNaN(p.t));
  const chart = lineChart(valid, { width: widthOf(box), height: 220, ymin: 0, ymax: 100, yfmt: (v) => String(Math.round(v)), area: false,
    bands: [{ from: 65, to: 85, color: "var(--high)" }, { from: 85, to: 100, color: "var(--critical)" }] });
  box.replaceChildren(chart,
    el("p", { class: "note", text: "The API keeps no per-user risk history, so this chart shows the score of each " +
      "alert raised for the user (newest 50) and the current score (last point). Shaded: high and critical bands at the default thresholds." }));
}

function renderAlerts(items) {
  if (!items.length) return empty("No alert was raised for this user.");
  return el("table", { class: "table" },
    el("thead", {}, el("tr", {}, ["When", "Score", "Band", "Trigger", "Segment", "Top reasons"].map((h) => el("th", { text: h })))),
    el("tbody", {}, items.map((a) => el("tr", {},
      el("td", { text: stamp(a.occurred_at) }),
      el("td", {}, scoreBar(a.score, a.band)),
      el("td", {}, bandBadge(a.band)),
      el("td", { text: a.trigger === "sharp_rise" ? "sharp rise" : `${a.previous_band || "new"} → ${a.band}` }),
      el("td", { text: a.segment ? `${a.segment.stage} · ${a.segment.tier}` : "–" }),
      el("td", { class: "wrap", text: (a.reasons || []).slice(0, 3).map((r) => r.label || label(r.feature)).join("; ") })))));
}

function renderActions(items) {
  if (!items.length) return empty("No win-back action for this user yet.");
  return el("table", { class: "table" },
    el("thead", {}, el("tr", {}, ["When", "Status", "Channel", "Playbook", "Offer", "Why"].map((h) => el("th", { text: h })))),
    el("tbody", {}, items.map((a) => el("tr", {},
      el("td", { text: stamp(a.at) }),
      el("td", { class: "status-" + a.status, text: a.status }),
      el("td", { text: a.channel }),
      el("td", { text: a.playbook }),
      el("td", { text: a.offer || "–" }),
      el("td", { class: "wrap muted", text: a.reason || "" })))));
}

function renderFeatures(features) {
  const names = Object.keys(features).sort((a, b) => label(a).localeCompare(label(b)));
  if (!names.length) return empty("No features stored.");
  return el("div", { class: "features" }, names.map((n) =>
    el("div", { title: n }, el("span", { text: capital(label(n)) }), el("span", { text: fmtNum(features[n]) }))));
}

// ---------- wiring ----------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut(""));
  for (const f of ["band", "stage", "tier", "limit"]) $("f-" + f).addEventListener("change", resetPaging);
  $("next").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors[state.page + 1] = state.next;
    state.page += 1;
    loadAtRisk();
  });
  $("prev").addEventListener("click", () => {
    if (state.page === 0) return;
    state.page -= 1;
    loadAtRisk();
  });
  window.addEventListener("hashchange", route);
  state.key = sessionStorage.getItem(KEY_STORE);
  if (state.key) start();
  else signOut("");
});
