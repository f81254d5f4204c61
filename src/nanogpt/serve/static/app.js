// The nanogpt playground: plain JavaScript over the server's JSON (no build step, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, tab: "next", abort: null, key: localStorage.getItem("nanogpt-key") || "" };

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

async function api(path, body) {
  const opts = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) throw new Error((data.error && data.error.message) || r.statusText);
  return data;
}

function showError(err) {
  const box = $("error");
  box.hidden = !err;
  box.textContent = err ? String(err.message || err) : "";
}

function show(text) {  // a token's text, with invisible characters made visible
  return text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/ /g, "\u00b7") || "\u2205";
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// ---- settings ---------------------------------------------------------------------------

function settings() {
  const topK = +$("top_k").value, topP = +$("top_p").value;
  return { temperature: +$("temperature").value, top_k: topK > 0 ? topK : null, top_p: topP < 1 ? topP : null };
}

function showSettings() {
  const s = settings();
  $("temperature-out").textContent = s.temperature.toFixed(2) + (s.temperature === 0 ? " (greedy)" : "");
  $("top_k-out").textContent = s.top_k === null ? "off" : s.top_k;
  $("top_p-out").textContent = s.top_p === null ? "1.00 (off)" : s.top_p.toFixed(2);
  $("max_tokens-out").textContent = $("max_tokens").value;
}

function completionBody(maxTokens) {
  const seed = $("seed").value.trim();
  const stop = $("stop").value.split("|").map((s) => s.replace(/\\n/g, "\n")).filter((s) => s.trim() !== "" || s.includes("\n"));
  // a text longer than the context: the model sees its last block_size tokens, as when sampling
  const body = { prompt: $("prompt").value, max_tokens: maxTokens, stream: true, truncate_prompt_tokens: state.info.limits.max_prompt_tokens, ...settings() };
  if (seed !== "") body.seed = parseInt(seed, 10);
  if (stop.length) body.stop = stop.slice(0, 4);
  return body;
}

// ---- generation (streamed server-sent events) ----------------------------------------------

async function generate(maxTokens) {
  if (state.abort) return;
  showError(null);
  state.finish = null;
  const controller = new AbortController();
  state.abort = controller;
  setBusy(true);
  const box = $("prompt");
  let n = 0;
  const t0 = performance.now();
  try {
    const r = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify(completionBody(maxTokens)), signal: controller.signal });
    if (!r.ok) throw new Error(((await r.json()).error || {}).message || r.statusText);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const ev of events) {
        const data = ev.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const c of chunk.choices) {
          box.value += c.text;
          if (c.finish_reason) state.finish = c.finish_reason; else n += 1;
        }
        box.scrollTop = box.scrollHeight;
      }
      $("status").textContent = `${n} tokens, ${(n / ((performance.now() - t0) / 1000)).toFixed(1)} tok/s` + (state.finish ? ` (${state.finish})` : "");
    }
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
  } finally {
    state.abort = null;
    setBusy(false);
    box.setSelectionRange(box.value.length, box.value.length);
    refresh();
  }
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("step").disabled = busy;
  $("halt").disabled = !busy;
}

// ---- the views --------------------------------------------------------------------------

function textForView() {  // the distribution is for the text up to the cursor; other views take it all
  const box = $("prompt");
  if (state.tab === "next" && document.activeElement === box) return box.value.slice(0, box.selectionStart);
  return box.value;
}

const views = {
  async next() {
    const d = await api("/api/next", { text: textForView(), ...settings(), k: 20 });
    const root = $("view-next");
    root.replaceChildren(el("div", { class: "stats dim" },
      `after “${show(d.after)}” (position ${d.position}): ${d.kept} candidates kept, ${(100 * d.cut_mass).toFixed(1)}% of the probability cut, entropy ${d.entropy_bits.toFixed(2)} bits`));
    const bars = el("div", { class: "bars", id: "next-bars" });
    const top = d.candidates.length ? d.candidates[0].prob : 1;
    for (const c of d.candidates) {
      bars.append(el("span", { class: "piece" + (c.cut ? " cut-label" : ""), title: `id ${c.id}` }, show(c.piece)));
      const bar = el("div", { class: "bar" + (c.cut ? " cut" : ""), style: `width:${(100 * c.prob / top).toFixed(2)}%`, "data-prob": c.prob.toFixed(6) });
      bars.append(bar);
      bars.append(el("span", { class: "num" + (c.cut ? " cut-label" : "") }, (100 * c.prob).toFixed(1) + "%"));
    }
    root.append(bars);
  },

  async tokens() {
    const d = await api("/api/tokens", { text: textForView() });
    const root = $("view-tokens");
    const chips = el("div", { class: "tokens" });
    for (const t of d.tokens) chips.append(el("span", { class: "tok" }, show(t.piece), el("small", {}, t.id)));
    root.replaceChildren(el("div", { class: "stats dim" }, `${d.tokens.length} tokens from the ${d.tokenizer} tokenizer (vocabulary of ${d.vocab_size})`), chips);
  },

  async shapes() {
    const d = await api("/api/shapes", { text: textForView() });
    const dims = Object.entries(d.dims).map(([k, v]) => `${k}=${v}`).join("  ");
    const table = el("table", {}, el("tr", {}, el("th", {}, "tensor"), el("th", {}, "shape"), el("th", {}, "numbers"), el("th", {}, "")));
    for (const r of d.forward) {
      table.append(el("tr", {}, el("td", { class: "mono" }, (r.per_block ? "  " : "") + r.tensor),
        el("td", { class: "mono" }, "[" + r.symbols.join(", ") + "]"), el("td", { class: "mono" }, "[" + r.shape.join(", ") + "]"), el("td", { class: "dim" }, r.note)));
    }
    const p = d.parameters, f = d.flops;
    $("view-shapes").replaceChildren(
      el("div", { class: "stats" }, dims),
      el("div", { class: "stats" }, `parameters: ${p.total.toLocaleString()} (${p.per_block.toLocaleString()} per block); forward FLOPs per token at T=${f.seq_len}: ${f.forward_per_token.toLocaleString()} (attention ${f.forward_attention_per_token.toLocaleString()}); the attention matrix: ${d.attention_matrix}`),
      table);
  },

  async attention() {
    const layerSel = $("att-layer"), headSel = $("att-head");
    const d = await api("/api/attention", { text: textForView(), layer: +(layerSel.value || 0) });
    if (headSel.options.length !== d.n_head + 1) {
      headSel.replaceChildren(el("option", { value: "all" }, "all heads"));
      for (let h = 0; h < d.n_head; h++) headSel.append(el("option", { value: h }, `head ${h}`));
    }
    state.attention = d;
    drawAttention();
  },

  async lens() {
    const d = await api("/api/lens", { text: textForView(), k: 5 });
    const table = el("table", { class: "lens" }, el("tr", {}, el("th", {}, "after"), el("th", { colspan: 5 }, "top guesses for the next token")));
    for (const layer of d.layers) {
      const row = el("tr", {}, el("td", {}, layer.after));
      for (const t of layer.top) {
        row.append(el("td", { class: "cell", style: `background: rgba(54,87,214,${(0.85 * t.prob).toFixed(3)}); color: ${t.prob > 0.5 ? "#fff" : "inherit"}`, title: `id ${t.id}` },
          `${show(t.piece)} ${(100 * t.prob).toFixed(1)}%`));
      }
      table.append(row);
    }
    $("view-lens").replaceChildren(el("div", { class: "stats dim" },
      `position ${d.position} (“${show(d.token)}”): the final LayerNorm and the head applied to the residual stream after each block`), table);
  },

  async curves() {
    const root = $("view-curves");
    if (!state.info.has_curves) { root.replaceChildren(el("p", { class: "dim" }, "training curves exist for a run folder; this model came from elsewhere")); return; }
    const d = await api("/api/curves");
    root.replaceChildren(lineChart([
      { name: "train loss", color: "#3657d6", points: d.rows.filter((r) => r.kind === "train" && r.loss != null).map((r) => [r.iter, r.loss]) },
      { name: "val loss", color: "#e0533d", points: d.rows.filter((r) => r.kind === "eval" && r.val_loss != null).map((r) => [r.iter, r.val_loss]) },
    ]));
  },
};

function lineChart(series) {
  const W = 640, H = 320, pad = 44, ns = "http://www.w3.org/2000/svg";
  const all = series.flatMap((s) => s.points);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", "100%");
  if (!all.length) return el("p", { class: "dim" }, "metrics.jsonl has no losses yet");
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs) || 1, Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + (W - 2 * pad) * (x - x0) / ((x1 - x0) || 1);
  const sy = (y) => H - pad - (H - 2 * pad) * (y - y0) / ((y1 - y0) || 1);
  const add = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text) e.textContent = text; svg.append(e); };
  add("line", { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: "#999" });
  add("line", { x1: pad, y1: pad, x2: pad, y2: H - pad, stroke: "#999" });
  add("text", { x: pad, y: H - pad + 16 }, x0);
  add("text", { x: W - pad - 20, y: H - pad + 16 }, x1 + " iters");
  add("text", { x: 4, y: sy(y1) + 4 }, y1.toFixed(2));
  add("text", { x: 4, y: sy(y0) + 4 }, y0.toFixed(2));
  series.forEach((s, i) => {
    if (!s.points.length) return;
    add("polyline", { points: s.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none", stroke: s.color, "stroke-width": 2 });
    add("text", { x: W - pad - 90, y: pad + 14 * i, fill: s.color }, s.name);
  });
  return svg;
}

// ---- attention: heatmaps with the causal triangle, hover a token to see its row ------------------

function heatmap(map, size, focus) {
  const T = map.length, cell = Math.max(1, Math.floor(size / T));
  const c = el("canvas", { width: T * cell, height: T * cell });
  const g = c.getContext("2d");
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < T; j++) {
      const p = j <= i ? map[i][j] : null;
      g.fillStyle = p === null ? "#eceff3" : `rgba(54,87,214,${Math.sqrt(p).toFixed(3)})`;
      g.fillRect(j * cell, i * cell, cell, cell);
    }
  }
  if (focus !== null && focus < T) { g.strokeStyle = "#e0533d"; g.lineWidth = 2; g.strokeRect(0, focus * cell, (focus + 1) * cell, cell); }
  c.addEventListener("mousemove", (e) => { const i = Math.floor(e.offsetY / cell); if (i >= 0 && i < T) setFocus(i); });
  return c;
}

function drawAttention() {  // new data or a new head choice: rebuild the token strip, then paint
  const d = state.attention;
  if (!d) return;
  const strip = $("att-tokens");
  strip.replaceChildren(...d.tokens.map((t, j) => {
    const chip = el("span", { class: "tok" }, show(t));
    chip.addEventListener("mouseenter", () => setFocus(j));
    return chip;
  }));
  paintAttention();
}

function setFocus(i) {
  if (i !== state.focus) { state.focus = i; paintAttention(); }
}

function paintAttention() {  // colour the tokens by what the focused token attends to; redraw the maps
  const d = state.attention, head = $("att-head").value;
  const heads = head === "all" ? [...Array(d.n_head).keys()] : [+head];
  const focus = state.focus !== undefined && state.focus !== null && state.focus < d.tokens.length ? state.focus : null;
  const weights = focus !== null ? d.maps[heads[0]][focus] : null;
  [...$("att-tokens").children].forEach((chip, j) => {
    chip.classList.toggle("focus", j === focus);
    chip.style.background = weights && j < weights.length ? `rgba(224,83,61,${Math.sqrt(weights[j]).toFixed(3)})` : "";
    chip.title = weights && j < weights.length ? `token ${focus} gives ${(100 * weights[j]).toFixed(1)}% of its attention (head ${heads[0]}) to token ${j}` : `token ${j}`;
  });
  const size = heads.length > 1 ? Math.max(60, Math.min(320, 720 / Math.ceil(Math.sqrt(heads.length)))) : 420;
  $("att-maps").replaceChildren(...heads.map((h) => el("figure", {}, heatmap(d.maps[h], size, focus), el("figcaption", {}, `layer ${d.layer}, head ${h}`))));
}

// ---- wiring --------------------------------------------------------------------------------

let timer = null;
function refresh(delay = 0) {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    try { await views[state.tab](); showError(null); } catch (err) { showError(err); }
  }, delay);
}

function selectTab(name) {
  state.tab = name;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const v of document.querySelectorAll(".view")) v.classList.toggle("active", v.id === "view-" + name);
  refresh();
}

async function start() {
  try {
    state.info = await api("/api/info");
  } catch (err) {
    if (String(err.message).includes("API key")) {
      state.key = window.prompt("This server needs an API key:") || "";
      localStorage.setItem("nanogpt-key", state.key);
      state.info = await api("/api/info");
    } else { showError(err); return; }
  }
  const c = state.info.config;
  $("model-info").textContent = `${state.info.model}: ${c.n_layer} layers, ${c.n_head} heads of ${c.n_embd / c.n_head} = ${c.n_embd} channels, context ${c.block_size}, ${state.info.tokenizer} tokenizer`;
  for (let i = 0; i < c.n_layer; i++) $("att-layer").append(el("option", { value: i }, `layer ${i}`));
  $("max_tokens").max = Math.min(state.info.limits.max_tokens, 1000);
  for (const id of ["temperature", "top_k", "top_p", "max_tokens"]) {
    $(id).addEventListener("input", () => { showSettings(); if (state.tab === "next") refresh(60); });
  }
  $("prompt").addEventListener("input", () => { if (!state.abort) refresh(250); });
  for (const ev of ["click", "keyup"]) $("prompt").addEventListener(ev, () => { if (state.tab === "next" && !state.abort) refresh(120); });
  $("generate").addEventListener("click", () => generate(+$("max_tokens").value));
  $("step").addEventListener("click", () => generate(1));
  $("halt").addEventListener("click", () => state.abort && state.abort.abort());
  $("att-layer").addEventListener("change", () => refresh());
  $("att-head").addEventListener("change", drawAttention);
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => selectTab(b.dataset.tab));
  showSettings();
  refresh();
}

start();
