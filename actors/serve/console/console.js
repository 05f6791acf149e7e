// fullchain console: chat with the served model or an adapter (streamed; with tools, the agent route runs them
// on the server), and the runs: stages, loss curves, eval tables, data card, lineage. Plain JS, no dependencies.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { models: [], config: null, history: [], controller: null };

// ------------------------------------------------------------------ HTTP
function headers(json) {
  const h = {};
  const key = localStorage.getItem("fullchain.apiKey");
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, body, signal) {
  const opts = body === undefined ? { headers: headers(false) }
                                  : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  if (signal) opts.signal = signal;
  const r = await fetch(path, opts);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error.message || msg; } catch (e) { /* a body that is not OpenAI's error shape */ }
    if (r.status === 401) $("#keybox").hidden = false;
    throw new HttpError(r.status, msg);
  }
  return r;
}

async function getJSON(path) { return (await api(path)).json(); }

// Server-sent events of a streaming response: calls onEvent(obj) per `data:` line until [DONE].
async function readSSE(response, onEvent) {
  const reader = response.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of chunk.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function status(text) { $("#status").textContent = text || ""; }

function fmt(v, nd) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(nd === undefined ? 4 : nd);
  return String(v);
}

// ------------------------------------------------------------------ chat
function addMessage(role, text) {
  const content = el("div", { class: "content", text: text || "" });
  const copy = el("button", { class: "copy", type: "button", title: "copy", text: "copy" });
  copy.addEventListener("click", () => copyText(content.textContent));
  const box = el("div", { class: "msg " + role }, el("div", { class: "role", text: role }), copy, content);
  $("#messages").append(box);
  box.scrollIntoView({ block: "end" });
  return { box, content };
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    status("copied");
  } catch (e) {   // no clipboard permission (a headless browser): the selection way
    const t = el("textarea", {}); t.value = text; document.body.append(t); t.select();
    document.execCommand("copy"); t.remove(); status("copied");
  }
}

function toolBox(ev) {
  const call = el("div", { class: "tool tool-call", text: "→ " + ev.name + "(" + ev.arguments + ")" });
  const res = el("div", { class: "tool tool-result" + (ev.ok ? "" : " failed"),
                          text: "← " + (ev.ok ? ev.result : "error: " + ev.error) });
  return [call, res];
}

function requestMessages(userText) {
  const msgs = [];
  const sys = $("#system").value.trim();
  if (sys) msgs.push({ role: "system", content: sys });
  return msgs.concat(state.history, [{ role: "user", content: userText }]);
}

async function send(text) {
  const model = $("#model").value;
  const messages = requestMessages(text);
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.box.classList.add("streaming");
  const controller = state.controller = new AbortController();
  $("#send").disabled = true; $("#stop").disabled = false;
  const temperature = parseFloat($("#temperature").value) || 0;
  const maxTokens = parseInt($("#max-tokens").value, 10) || 256;
  let answer = "";
  let agentMessages = null;
  try {
    if ($("#use-tools").checked && state.config && state.config.agent) {
      status("agent working…");
      const r = await api("/v1/agent/chat", { model, messages, temperature, max_tokens: maxTokens,
                                              tool_choice: $("#tool-choice").value }, controller.signal);
      await readSSE(r, (ev) => {
        if (ev.type === "reply" && ev.content) {
          out.content.append(el("div", { class: "step", text: ev.content }));
        } else if (ev.type === "tool_result") {
          out.content.append(...toolBox(ev));
        } else if (ev.type === "done") {
          answer = ev.final_answer || "";
          agentMessages = ev.messages.filter((m) => m.role !== "system");   // calls and results kept for the next turn
          out.box.dataset.stopped = ev.stopped_reason;
          if (ev.stopped_reason !== "answer") out.content.append(el("div", { class: "muted", text: "stopped: " + ev.stopped_reason }));
        } else if (ev.type === "error" || ev.error) {
          throw new Error(ev.message || ev.error.message);
        }
        out.box.scrollIntoView({ block: "end" });
      });
    } else {
      status("generating…");
      const r = await api("/v1/chat/completions", { model, messages, stream: true, temperature,
                                                    max_tokens: maxTokens, stream_options: { include_usage: true } },
                          controller.signal);
      await readSSE(r, (ev) => {
        if (ev.error) throw new Error(ev.error.message);
        const d = ev.choices && ev.choices[0] && ev.choices[0].delta;
        if (d && d.content) { answer += d.content; out.content.textContent = answer; }
        if (ev.usage) status(ev.usage.completion_tokens + " tokens");
      });
    }
    if (agentMessages) state.history = agentMessages;
    else state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    if (!$("#status").textContent.endsWith("tokens")) status("");
  } catch (e) {
    if (e.name === "AbortError") {
      out.content.append(el("div", { class: "muted", text: "[stopped]" }));
      state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
      status("stopped");
    } else {
      out.box.classList.add("error");
      out.content.append(el("div", { text: e.message }));
      status("");
    }
  } finally {
    out.box.classList.remove("streaming");
    out.box.classList.add("done");
    $("#send").disabled = false; $("#stop").disabled = true;
    state.controller = null;
  }
}

async function loadModels() {
  const [models, config] = await Promise.all([getJSON("/v1/models"), getJSON("/ui/api/config")]);
  state.models = models.data; state.config = config;
  const sel = $("#model");
  sel.replaceChildren(...state.models.map((m) => el("option", { value: m.id, text: m.id })));
  // the run's fine-tuned adapter first: what the console is opened to try
  const adapter = state.models.find((m) => m.parent);
  if (adapter) sel.value = adapter.id;
  updateLineageLink();
  if (config.agent) {
    $("#tool-list").textContent = "agent tools: " + config.agent.tools.join(", ") + " (" + config.agent.style + ")";
    $("#tool-choice").append(...config.agent.tools.map((t) => el("option", { value: t, text: t })));
  } else {
    $("#use-tools").disabled = true;
    $("#tool-list").textContent = "no agent on this app";
  }
}

function updateLineageLink() { $("#model-lineage").href = "#lineage/" + encodeURIComponent($("#model").value); }

// ------------------------------------------------------------------ runs
function chip(stage) {
  return el("span", { class: "st-" + stage.status, title: (stage.seconds || 0) + " s" },
            stage.stage + ":" + stage.status + " ");
}

async function showRuns() {
  const data = await getJSON("/ui/api/runs");
  $("#runs-root").textContent = data.root ? "under " + data.root : "(no runs folder)";
  const body = $("#runs-table tbody");
  body.replaceChildren(...data.runs.map((r) => el("tr", {},
    el("td", {}, el("a", { href: "#run/" + encodeURIComponent(r.name), class: "run-link", text: r.name })),
    el("td", { text: r.modified || "" }),
    el("td", {}, ...(r.stages || []).map(chip)))));
  if (!data.runs.length) body.append(el("tr", {}, el("td", { colspan: "3", text: "no runs yet: `fullchain demo` makes one" })));
}

const COLORS = ["#2b6cb0", "#dd6b20", "#2f855a", "#805ad5", "#c53030", "#319795"];

// An SVG line chart of several series [[x, y], ...] with axes' ranges and a legend.
function chart(title, seriesMap) {
  const names = Object.keys(seriesMap).filter((k) => seriesMap[k].length);
  const W = 460, H = 240, L = 52, R = 10, T = 22, B = 28;
  const all = names.flatMap((k) => seriesMap[k]);
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (y1 === y0 ? 0.5 : 1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("class", "chart");
  svg.setAttribute("data-title", title);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  add("text", { x: L, y: 14 }, title);
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" });
  add("text", { x: 2, y: T + 8 }, fmt(y1, 3));
  add("text", { x: 2, y: H - B }, fmt(y0, 3));
  add("text", { x: L, y: H - 8 }, "step " + x0);
  add("text", { x: W - R - 60, y: H - 8 }, "step " + x1);
  const legend = el("div", { class: "legend" });
  names.forEach((k, i) => {
    const c = COLORS[i % COLORS.length];
    const pts = seriesMap[k].map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
    add("polyline", { points: pts, fill: "none", stroke: c, "stroke-width": 1.6, "data-series": k });
    if (seriesMap[k].length <= 40) for (const p of seriesMap[k]) add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.2, fill: c });
    legend.append(el("span", { style: "color:" + c, text: "— " + k + " (last " + fmt(seriesMap[k].at(-1)[1], 4) + ")" }));
  });
  return el("div", { class: "chart-box" }, svg, legend);
}

function curveCharts(curves) {
  const out = [];
  for (const [stage, c] of Object.entries(curves)) {
    const losses = Object.fromEntries(Object.entries(c.series).filter(([k]) => /loss|ppl|acc/.test(k)));
    if (Object.keys(losses).length) out.push(chart(stage + " — " + Object.keys(losses).join(", "), losses));
  }
  return out;
}

function evalTable(ev) {
  if (!ev.rows.length) return el("p", { class: "muted", text: "no eval results in this run" });
  const head = el("tr", {}, el("th", { text: "task" }), el("th", { text: "metric" }),
                  ...ev.models.map((m) => el("th", { text: m })));
  const rows = ev.rows.map((r) => {
    const vals = ev.models.map((m) => r.values[m]);
    const nums = vals.filter((v) => typeof v === "number");
    const lowerBetter = /ppl|perplexity|loss|bpb/.test(r.metric);
    const best = nums.length > 1 ? (lowerBetter ? Math.min(...nums) : Math.max(...nums)) : null;
    return el("tr", { "data-task": r.task }, el("td", { text: r.task }), el("td", { text: r.metric }),
      ...ev.models.map((m) => el("td", { class: "num" + (r.values[m] === best ? " best" : ""),
                                         title: "n=" + fmt(r.n[m]) + (r.stderr[m] != null ? " ± " + fmt(r.stderr[m]) : ""),
                                         text: fmt(r.values[m]) })));
  });
  return el("table", { id: "eval-table" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

function kvTable(obj, id) {
  const rows = Object.entries(obj || {}).map(([k, v]) => el("tr", {}, el("th", { text: k }),
    el("td", { text: typeof v === "object" && v !== null ? JSON.stringify(v) : fmt(v) })));
  return el("table", id ? { id } : {}, el("tbody", {}, ...rows));
}

// The data card's Markdown as elements: headings, pipe tables, list items and paragraphs (text only, no HTML).
function markdown(md) {
  const out = [];
  const lines = md.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const h = /^(#{1,4}) (.*)$/.exec(line);
    if (h) { out.push(el("h" + (h[1].length + 2), { text: h[2] })); continue; }
    if (line.startsWith("|")) {
      const rows = [];
      for (; i < lines.length && lines[i].startsWith("|"); i++) {
        if (!/^\|[-:| ]+\|$/.test(lines[i])) rows.push(lines[i].slice(1, -1).split("|").map((c) => c.trim()));
      }
      i--;
      const [head, ...body] = rows;
      out.push(el("table", { class: "md" }, el("thead", {}, el("tr", {}, ...head.map((c) => el("th", { text: c })))),
        el("tbody", {}, ...body.map((r) => el("tr", {}, ...r.map((c) => el("td", { class: /^[-\d.,]+$/.test(c) ? "num" : "", text: c })))))));
      continue;
    }
    if (line.startsWith("- ")) { out.push(el("li", { text: line.slice(2) })); continue; }
    if (line.trim()) out.push(el("p", { text: line }));
  }
  return out;
}

function dataCard(card) {
  const box = el("div", { id: "data-card" });
  if (!card.status) { box.append(el("p", { class: "muted", text: "this run has no data stage" })); return box; }
  if (card.markdown) box.append(el("div", { class: "card-md" }, ...markdown(card.markdown)));
  const m = card.metrics || {};
  const counts = {};
  for (const k of ["read", "kept", "dropped", "quarantined", "train_tokens", "val_tokens", "train_rows", "val_rows",
                   "synthetic_train", "synthetic_heldout", "sources"]) if (k in m) counts[k] = m[k];
  box.append(kvTable(Object.keys(counts).length ? counts : m, "data-counts"));
  box.append(el("details", {}, el("summary", { text: "outputs (shards, sets)" }), kvTable(card.outputs)));
  return box;
}

async function showRun(name, anchor) {
  const v = await getJSON("/ui/api/runs/" + encodeURIComponent(name));
  const sec = $("#view-run");
  const stages = el("table", { id: "stages" }, el("thead", {}, el("tr", {}, ...["stage", "status", "seconds",
    "started", "finished", "note"].map((h) => el("th", { text: h })))), el("tbody", {}, ...v.stages.map((s) =>
    el("tr", {}, el("td", { text: s.stage }), el("td", { class: "st-" + s.status, text: s.status + (s.external ? " (external)" : "") }),
       el("td", { class: "num", text: fmt(s.seconds, 1) }), el("td", { text: s.started || "" }),
       el("td", { text: s.finished || "" }), el("td", { text: s.error || "" })))));
  const models = Object.entries(v.models).map(([k, lin]) => el("li", {},
    el("a", { href: "#path-lineage/" + encodeURIComponent(name) + "/" + encodeURIComponent(k), class: "lineage-link",
              text: k }), " " + lin.path));
  sec.replaceChildren(
    el("h2", { text: "Run " + v.name }),
    el("p", { class: "muted", text: v.path + " · CPU " + (v.hardware.cpu_capability || "?") +
              (v.pipeline_seconds ? " · pipeline " + fmt(v.pipeline_seconds, 0) + " s" : "") }),
    el("h3", { text: "Stages" }), stages,
    el("h3", { id: "curves", text: "Curves" }), el("div", { id: "charts" }, ...curveCharts(v.curves)),
    el("h3", { id: "eval", text: "Evaluation" }), evalTable(v.eval),
    el("h3", { id: "data", text: "Data card" }), dataCard(v.data_card),
    el("h3", { id: "models", text: "Models and lineage" }), el("ul", {}, ...models),
    v.agent && Object.keys(v.agent).length ? el("h3", { text: "Agent" }) : null,
    v.agent && Object.keys(v.agent).length ? kvTable(v.agent) : null);
  state.runViews = state.runViews || {};
  state.runViews[name] = v;
  if (anchor) { const a = document.getElementById(anchor); if (a) a.scrollIntoView(); }
}

// ------------------------------------------------------------------ lineage
function node(title, ...children) { return el("div", { class: "node" }, el("h4", { text: title }), ...children); }
function arrow(text) { return el("div", { class: "arrow", text: "↓ " + text }); }

function lineageView(title, lin) {
  const sec = $("#view-lineage");
  const parts = [el("h2", { text: "Lineage of " + title })];
  if (!lin) { parts.push(el("p", { class: "muted", text: "no lineage recorded for this model" })); sec.replaceChildren(...parts); return; }
  if (lin.error) parts.push(el("p", { class: "muted", text: lin.error }));
  parts.push(node("Model (" + lin.kind + ")", el("code", { text: lin.path })));
  parts.push(arrow("checkpoint"));
  parts.push(node("Checkpoint", kvTable({ path: lin.checkpoint.path, step: lin.checkpoint.step,
                                           made_by: (lin.checkpoint.lineage || []).map((s) => s.stage).join(" → ") })));
  const run = lin.run ? lin.run.name : null;
  if (lin.training) {
    parts.push(arrow("trained by"));
    parts.push(node("Training run: " + run + " / " + lin.training.stage,
      el("p", {}, el("a", { href: "#run/" + encodeURIComponent(run), class: "run-link", text: "open run " + run })),
      kvTable({ status: lin.training.status, seconds: lin.training.seconds, started: lin.training.started,
                finished: lin.training.finished, ...lin.training.metrics }),
      el("details", {}, el("summary", { text: "config" }), el("pre", { text: JSON.stringify(lin.training.config, null, 2) }))));
  }
  if (lin.base) {
    parts.push(arrow("from the base"));
    parts.push(node("Base: " + (lin.base.spec || ""), kvTable({ folder: lin.base.hf,
      made_by: (lin.base.lineage || []).map((s) => s.stage + (s.gguf ? " " + s.gguf : "")).join(" → ") })));
  }
  if (lin.data) {
    parts.push(arrow("on the data"));
    parts.push(node("Data", el("p", {}, el("a", { href: "#run/" + encodeURIComponent(run) + "/data", class: "data-card-link",
                                                 text: "data card of run " + run })),
      kvTable({ ...lin.data.counts, ...(lin.training && lin.training.data ? lin.training.data : {}) }),
      el("details", {}, el("summary", { text: "shards" }), kvTable(lin.data.shards))));
  }
  if (lin.eval) {
    parts.push(arrow("scored"));
    const rows = Object.entries(lin.eval.scores).map(([t, s]) => ({ task: t, metric: s.metric, value: s.value, n: s.n }));
    parts.push(node("Eval scores (" + lin.eval.label + (lin.eval.compared_with ? ", vs " + lin.eval.compared_with : "") + ")",
      el("table", { id: "lineage-eval" }, el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", { text: r.task }),
        el("td", { text: r.metric }), el("td", { class: "num", text: fmt(r.value) }), el("td", { text: "n=" + fmt(r.n) }))))),
      el("p", {}, el("a", { href: "#run/" + encodeURIComponent(run) + "/eval", text: "eval table of run " + run }))));
  }
  sec.replaceChildren(...parts);
}

// ------------------------------------------------------------------ routing
const VIEWS = ["chat", "runs", "run", "lineage"];

async function route() {
  const hash = decodeURIComponent(location.hash.slice(1) || "chat");
  const [view, ...rest] = hash.split("/");
  const shown = { chat: "chat", runs: "runs", run: "run", lineage: "lineage", "path-lineage": "lineage" }[view] || "chat";
  for (const v of VIEWS) $("#view-" + v).hidden = v !== shown;
  $("#nav-chat").classList.toggle("active", shown === "chat");
  $("#nav-runs").classList.toggle("active", shown !== "chat");
  try {
    if (view === "runs") await showRuns();
    else if (view === "run") await showRun(rest[0], rest[1]);
    else if (view === "lineage") {
      const id = rest.join("/");
      lineageView(id, (await getJSON("/ui/api/lineage?model=" + encodeURIComponent(id))).lineage);
    } else if (view === "path-lineage") {
      const v = (state.runViews && state.runViews[rest[0]]) || await getJSON("/ui/api/runs/" + encodeURIComponent(rest[0]));
      lineageView(rest[0] + " " + rest[1], v.models[rest[1]]);
    }
  } catch (e) {
    $("#view-" + shown).replaceChildren(el("p", { class: "msg error", text: e.message }));
  }
}

function init() {
  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("#prompt").value.trim();
    if (!text || state.controller) return;
    $("#prompt").value = "";
    send(text);
  });
  $("#prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#composer").requestSubmit(); }
  });
  $("#stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("#new-chat").addEventListener("click", () => { state.history = []; $("#messages").replaceChildren(); });
  $("#model").addEventListener("change", updateLineageLink);
  $("#keybox").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem("fullchain.apiKey", $("#apikey").value.trim());
    $("#keybox").hidden = true;
    start();
  });
  window.addEventListener("hashchange", route);
  start();
}

async function start() {
  try {
    await loadModels();
    status("");
  } catch (e) {
    status(e.status === 401 ? "this server needs an API key" : e.message);
    return;
  }
  document.body.dataset.ready = "1";
  await route();
}

init();
