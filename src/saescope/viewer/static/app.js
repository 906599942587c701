// saescope viewer: a dependency-free single page over the JSON API (see viewer/server.py).
"use strict";
const $ = (sel, el = document) => el.querySelector(sel);
const app = $("#app"), tip = $("#tip");
const fmt = v => (v === null || v === undefined) ? "–" : (typeof v === "number" ? (Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.001) ? v.toExponential(2) : v.toFixed(3)) : esc(v));

function showTip(ev, text) { tip.hidden = false; tip.textContent = text; tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px"; }
document.addEventListener("mouseout", ev => { if (ev.target.classList && ev.target.classList.contains("tok")) tip.hidden = true; });

// Token heatmap: colour ∝ activation / max, value on hover, the max token outlined.
function heatmap(tokens, acts, max) {
  const div = document.createElement("div");
  div.className = "seq";
  let argmax = 0;
  acts.forEach((a, i) => { if (a > acts[argmax]) argmax = i; });
  tokens.forEach((t, i) => {
    const s = document.createElement("span");
    const a = acts[i] ?? 0, x = max > 0 ? Math.max(-1, Math.min(1, a / max)) : 0;
    s.className = "tok" + (i === argmax && a > 0 ? " max" : "") + (a < 0 ? " neg" : "");
    // diverging: positive blue, negative red (a negative activation is not "nothing")
    s.style.background = x >= 0 ? `rgba(46, 134, 222, ${x.toFixed(3)})` : `rgba(220, 38, 38, ${(-x).toFixed(3)})`;
    s.dataset.act = a;
    s.textContent = t;
    s.addEventListener("mousemove", ev => showTip(ev, `${JSON.stringify(t)}  ${a.toFixed(4)}`));
    div.appendChild(s);
  });
  return div;
}

// Token-pair heatmap (attention heads): per token the max "in" (as query) and "out" (as key) pair value; hovering a
// token shows its row (keys it reads) and column (queries reading it).
function pairmap(tokens, flat, max) {
  const T = tokens.length, at = (i, j) => flat[i * (i + 1) / 2 + j] ?? 0;
  const maxIn = tokens.map((_, i) => Math.max(...Array.from({length: i + 1}, (_, j) => at(i, j))));
  const maxOut = tokens.map((_, j) => Math.max(...Array.from({length: T - j}, (_, d) => at(j + d, j))));
  const div = heatmap(tokens, maxIn.map((v, i) => Math.max(v, maxOut[i])), max);
  const spans = [...div.children];
  const reset = () => spans.forEach((s, k) => { const v = Math.max(maxIn[k], maxOut[k]); const x = max > 0 ? Math.min(1, v / max) : 0; s.style.background = `rgba(46,134,222,${x.toFixed(3)})`; });
  const paintQK = i => spans.forEach((s, k) => {  // keys token i reads (blue), queries reading token i (green)
    const v = k <= i ? at(i, k) : at(k, i), x = max > 0 ? Math.max(0, Math.min(1, v / max)) : 0;
    s.style.background = k <= i ? `rgba(46,134,222,${x.toFixed(3)})` : `rgba(22,163,74,${x.toFixed(3)})`;
  });
  spans.forEach((s, i) => {
    s.addEventListener("mouseenter", () => paintQK(i));
    s.addEventListener("mouseleave", reset);
    s.addEventListener("mousemove", ev => showTip(ev, `${JSON.stringify(tokens[i])}  max in ${maxIn[i].toFixed(4)}  max out ${maxOut[i].toFixed(4)}`));
  });
  // mark the excerpt's top pair: query outlined red, key outlined green
  let best = 0;
  flat.forEach((v, k) => { if (v > flat[best]) best = k; });
  if (flat[best] > 0) {
    let qi = Math.floor((Math.sqrt(8 * best + 1) - 1) / 2);
    while ((qi + 1) * (qi + 2) / 2 <= best) qi++;
    const kj = best - qi * (qi + 1) / 2;
    spans.forEach(s => s.classList.remove("max"));
    spans[qi]?.classList.add("max");
    spans[kj]?.classList.add("maxkey");
    div.title = `top pair: ${JSON.stringify(tokens[qi])} ← ${JSON.stringify(tokens[kj])} ${flat[best].toFixed(4)}`;
    div.dataset.topPair = `${qi},${kj}`;
  }
  div.classList.add("pairs");
  const btn = document.createElement("button");  // the pattern as a query × key matrix, on demand
  btn.className = "matrix-btn"; btn.textContent = "matrix";
  btn.onclick = ev => { ev.stopPropagation(); const old = div.querySelector("canvas.matrix"); if (old) { old.remove(); return; } div.appendChild(matrix(tokens, flat, max)); };
  div.appendChild(btn);
  return div;
}

function matrix(tokens, flat, max) {
  // axis labels drawn in the canvas: "key →" along the top, "query ↓" down the left side
  const T = tokens.length, cell = Math.max(3, Math.min(10, Math.floor(480 / T))), pad = 16;
  const c = document.createElement("canvas");
  c.className = "matrix"; c.width = c.height = T * cell + pad; c.title = "rows: query, columns: key";
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#333"; ctx.font = "10px sans-serif";
  ctx.fillText("key →", pad, 11);
  ctx.save(); ctx.translate(11, pad); ctx.rotate(Math.PI / 2); ctx.fillText("query →", 0, 0); ctx.restore();
  for (let i = 0; i < T; i++) for (let j = 0; j <= i; j++) {
    const v = flat[i * (i + 1) / 2 + j] ?? 0, x = max > 0 ? Math.max(0, Math.min(1, v / max)) : 0;
    ctx.fillStyle = `rgba(46,134,222,${x.toFixed(3)})`; ctx.fillRect(pad + j * cell, pad + i * cell, cell, cell);
  }
  c.dataset.cells = String(T * (T + 1) / 2);
  c.dataset.axes = "query,key";
  return c;
}

// A top excerpt labelled with its own max, shown as a window centred on that max (click "…" for all of it).
function centred(x, max, before = 20, after = 12) {
  const acts = x.activations, T = acts.length;
  let m = 0;
  acts.forEach((a, i) => { if (a > acts[m]) m = i; });
  const lo = Math.max(0, m - before), hi = Math.min(T, m + after + 1);
  const wrap = document.createElement("div");
  wrap.className = "excerpt";
  const label = document.createElement("small");
  label.className = "emax"; label.textContent = `max ${acts[m].toPrecision(3)}`;
  const full = heatmap(x.tokens, acts, max), part = heatmap(x.tokens.slice(lo, hi), acts.slice(lo, hi), max);
  if (lo > 0) part.prepend(Object.assign(document.createElement("a"), {textContent: "… ", className: "more", onclick: () => part.replaceWith(full)}));
  if (hi < T) part.append(Object.assign(document.createElement("a"), {textContent: " …", className: "more", onclick: () => part.replaceWith(full)}));
  wrap.append(label, lo > 0 || hi < T ? part : full);
  return wrap;
}

function histogram(values, bins = 30) {
  if (!values.length) return {edges: [], counts: []};
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi <= lo) hi = lo + 1e-6;
  const w = (hi - lo) / bins, counts = new Array(bins).fill(0);
  values.forEach(v => counts[Math.min(bins - 1, Math.floor((v - lo) / w))]++);
  return {edges: Array.from({length: bins + 1}, (_, i) => lo + i * w), counts};
}

// Histogram of the non-zero values on a log-count axis (a sparse unit's zeros would be one bar hiding the rest).
function drawHistogram(canvas, h) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, left = 34;
  ctx.clearRect(0, 0, W, H);
  canvas.dataset.drawn = String(h.counts.reduce((a, b) => a + b, 0));
  if (!h.counts.length) { ctx.fillStyle = "#64748b"; ctx.font = "12px sans-serif"; ctx.fillText("no non-zero values in the sample", left, H / 2); return; }
  const top = Math.log10(1 + Math.max(...h.counts)), bw = (W - left) / h.counts.length;
  h.counts.forEach((c, i) => {
    const bh = top ? (Math.log10(1 + c) / top) * (H - 18) : 0;
    ctx.fillStyle = h.edges[i + 1] <= 0 ? "#dc2626" : "#2e86de";
    ctx.fillRect(left + i * bw + 1, H - 14 - bh, Math.max(1, bw - 2), bh);
  });
  ctx.fillStyle = "#333"; ctx.font = "10px sans-serif";
  ctx.fillText(h.edges[0].toPrecision(3), left, H - 2);
  const last = h.edges[h.edges.length - 1].toPrecision(3);
  ctx.fillText(last, W - ctx.measureText(last).width - 2, H - 2);
  ctx.fillText(String(Math.max(...h.counts)), 2, 10);  // the log axis: top and bottom counts
  ctx.fillText("1", 2, H - 16);
  ctx.fillText("log", 2, H / 2);
}

// The collated histogram: exact counts over every token, by |activation| on log bins, negatives mirrored to the
// left of positives (largest |x| outermost); zeros are counted in the label, not drawn.
function drawExactHistogram(canvas, h) {
  const nb = h.edges.length - 1, used = i => h.negative[i] > 0 || h.positive[i] > 0;
  let lo = 0, hi = nb - 1;
  while (lo < nb && !used(lo)) lo++;
  while (hi >= 0 && !used(hi)) hi--;
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, left = 34;
  ctx.clearRect(0, 0, W, H);
  const total = h.positive.reduce((a, b) => a + b, 0) + h.negative.reduce((a, b) => a + b, 0);
  canvas.dataset.drawn = String(total);
  if (lo > hi) { ctx.fillStyle = "#64748b"; ctx.font = "12px sans-serif"; ctx.fillText("never non-zero on the collated tokens", left, H / 2); return; }
  const bars = [];  // [count, colour, |x| lower edge, sign]
  const anyNeg = h.negative.some(c => c > 0), anyPos = h.positive.some(c => c > 0);
  if (anyNeg) for (let i = hi; i >= lo; i--) bars.push([h.negative[i], "#dc2626", h.edges[i], -1]);
  if (anyNeg && anyPos) bars.push([0, "#fff", 0, 0]);  // the gap where zero sits
  if (anyPos) for (let i = lo; i <= hi; i++) bars.push([h.positive[i], "#2e86de", h.edges[i], 1]);
  const top = Math.log10(1 + Math.max(...bars.map(b => b[0]))), bw = (W - left) / bars.length;
  bars.forEach(([c, col], i) => {
    const bh = top ? (Math.log10(1 + c) / top) * (H - 18) : 0;
    ctx.fillStyle = col; ctx.fillRect(left + i * bw + 1, H - 14 - bh, Math.max(1, bw - 2), bh);
  });
  ctx.fillStyle = "#333"; ctx.font = "10px sans-serif";
  const end = anyNeg ? `−${h.edges[hi + 1].toPrecision(2)}` : h.edges[lo].toPrecision(2);
  const far = anyPos ? h.edges[hi + 1].toPrecision(2) : `−${h.edges[lo].toPrecision(2)}`;
  ctx.fillText(end, left, H - 2);
  ctx.fillText(far, W - ctx.measureText(far).width - 2, H - 2);
  if (anyNeg && anyPos) ctx.fillText("0", left + (hi - lo + 1) * bw + bw / 2 - 3, H - 2);
  ctx.fillText(String(Math.max(...bars.map(b => b[0]))), 2, 10);
  ctx.fillText("1", 2, H - 16);
  ctx.fillText("log", 2, H / 2);
}

function crumbs(parts) { $("#crumbs").innerHTML = parts.map(([t, h]) => h ? `/ <a href="${h}">${esc(t)}</a>` : `/ ${esc(t)}`).join(" "); }

async function indexPage() {
  crumbs([]);
  const ds = await api("/api/datasets");
  if (!ds.length) { app.innerHTML = "<p>No collated datasets under this root. Run <code>saescope collate</code> first.</p>"; return; }
  const models = [...new Set(ds.map(d => d.model))];
  app.innerHTML = "<h2>Models</h2><ul id='models'>" + models.map(m => `<li><a href="/u/${esc(m)}">${esc(m)}</a>: the model by layer (${ds.filter(d => d.model === m).length} datasets)</li>`).join("") + "</ul>" +
    "<h2>Datasets</h2><table id='datasets'><tr><th>model</th><th>unit type</th><th>name</th><th>layer</th><th>units</th><th>tokens</th><th title='the SAE spliced into the model: loss it adds (ΔCE ± standard error, nats/token), KL, then reconstruction'>dictionary</th></tr>" +
    ds.map(d => `<tr><td>${esc(d.model)}</td><td><a href="/u/${esc(d.model)}/${esc(d.path)}">${esc(d.unit_type)}</a></td><td>${esc(d.name || "")}</td><td>${d.layer}</td><td>${d.units}</td><td>${d.tokens ?? ""}</td><td class="dict">${dictionaryText(d.dictionary)}</td></tr>`).join("") + "</table>";
}

// the model by layer: rows = layers, columns = kinds of unit (MLP neurons, heads, each SAE, each transcoder set);
// each cell links to its dataset
function kindColumn(d) {
  if (d.unit_type === "mlp_neurons") return [0, "MLP neurons"];
  if (d.unit_type === "attention_heads") return [1, "attention heads"];
  return [d.unit_type === "sae_latents" ? 2 : 3, `${d.unit_type === "sae_latents" ? "SAE" : "transcoder"} ${d.name}`];
}

async function layersPage(model) {
  crumbs([[model, null]]);
  const ds = (await api("/api/datasets")).filter(d => d.model === model);
  if (!ds.length) throw new Error(`no collated datasets of model "${model}" under this root`);
  const cols = [...new Map(ds.map(kindColumn).sort((a, b) => a[0] - b[0] || a[1].localeCompare(b[1])).map(c => [c[1], c])).keys()];
  const layers = [...new Set(ds.map(d => d.layer))].sort((a, b) => a - b);
  const at = new Map(ds.map(d => [`${d.layer}|${kindColumn(d)[1]}`, d]));
  const cell = d => d ? `<td><a href="/u/${esc(model)}/${esc(d.path)}" title="${d.tokens ?? "?"} tokens collated">${d.units} ${d.units === 1 ? "unit" : "units"}</a>${d.live_units !== undefined ? ` <span class="hint">(${d.live_units} live)</span>` : ""}${d.dictionary && typeof d.dictionary.fvu === "number" ? ` <span class="hint fvu">FVU ${d.dictionary.fvu.toFixed(2)}</span>` : ""}</td>` : "<td class='hint'>–</td>";
  app.innerHTML = `<h2>${esc(model)} by layer</h2><p class="hint">${ds.length} datasets over ${layers.length} layers; each cell opens its dataset's unit table.</p>` +
    "<table id='layers'><tr><th>layer</th>" + cols.map(c => `<th>${esc(c)}</th>`).join("") + "</tr>" +
    layers.map(l => `<tr data-layer="${l}"><th>${l}</th>` + cols.map(c => cell(at.get(`${l}|${c}`))).join("") + "</tr>").join("") + "</table>";
}

// an SAE's eval.json headline, in the order that matters: the loss it adds to the model, then reconstruction
function dictionaryText(ev) {
  if (!ev) return "";
  const f = (v, n) => (typeof v === "number" ? v.toFixed(n) : "?");
  const parts = [];
  // where the spliced contexts came from: the corpus after the store (unseen articles) or the store's held-out shard
  const over = ev.spliced_contexts === undefined ? "" :
    ` (${ev.spliced_contexts} ${ev.spliced_from === "corpus" ? "unseen-corpus" : "held-out"} contexts)`;
  if (ev.delta_ce !== undefined) parts.push(`ΔCE ${f(ev.delta_ce, 3)} ± ${f(ev.delta_ce_se, 3)} nats${over}`, `KL ${f(ev.kl_div, 3)}`);
  if (ev.fvu !== undefined) parts.push(`FVU ${f(ev.fvu, 3)}`);
  if (ev.l0 !== undefined) parts.push(`L0 ${f(ev.l0, 1)}`);
  if (ev.dead_fraction !== undefined) parts.push(`dead ${f(100 * ev.dead_fraction, 1)} %`);
  return esc(parts.join(", "));
}

async function datasetPage(model, dataset) {
  crumbs([[model, "/"], [dataset, null]]);
  // the table's state lives in the URL: Back, reload and shared links keep sort, page, search and filters
  const q = new URLSearchParams(location.search);
  const state = {offset: Number(q.get("offset") || 0), limit: 50, sort: q.get("sort") || "max_activation",
    desc: q.get("desc") !== "false", q: q.get("q") || "", min_density: q.get("min_density") || "",
    min_score: q.get("min_score") || "", hide_dead: q.get("hide_dead") === "true", hide_constant: q.get("hide_constant") === "true"};
  app.innerHTML = `<h2>${esc(model)} · ${esc(dataset)}</h2>
    <div class="controls"><input id="q" placeholder="search explanations / top tokens" size="34" value="${esc(state.q)}">
    <button id="prev">◀</button><span id="page"></span><button id="next">▶</button>
    <label>unit <input id="jump" size="6" placeholder="#"></label></div>
    <div class="controls filters"><label>density ≥ <input id="min_density" size="7" value="${esc(state.min_density)}" placeholder="1e-4"></label>
    <label>score ≥ <input id="min_score" size="5" value="${esc(state.min_score)}" placeholder="0.5"></label>
    <label><input type="checkbox" id="hide_dead" ${state.hide_dead ? "checked" : ""}> hide dead</label>
    <label><input type="checkbox" id="hide_constant" ${state.hide_constant ? "checked" : ""}> hide constant predictions</label></div>
    <p id="scores-summary" class="hint"></p><p id="units-error" class="error"></p>
    <table id="units"></table>`;
  const cols = [["index", "unit"], ["max_activation", "max act"], ["density", "density"], ["mean", "mean"], ["variance", "variance"], ["top_token", "top token"], ["explanation", "explanation"], ["score", "score"]];
  async function load() {
    const p = new URLSearchParams({offset: state.offset, limit: state.limit, sort: state.sort, desc: state.desc, q: state.q});
    for (const k of ["min_density", "min_score"]) if (state[k] !== "") p.set(k, state[k]);
    for (const k of ["hide_dead", "hide_constant"]) if (state[k]) p.set(k, "true");
    history.replaceState(null, "", `${location.pathname}?${p}`);
    let r;
    try { r = await api(`/api/units/${model}/${dataset}?${p}`); } catch (err) {
      // a bad filter (density ≥ abc): say so and empty the table rather than leave the old rows standing
      $("#units-error").textContent = err.message; $("#units").innerHTML = ""; $("#page").textContent = " – "; return;
    }
    $("#units-error").textContent = "";
    $("#page").textContent = r.total ? ` ${state.offset + 1}–${Math.min(state.offset + state.limit, r.total)} of ${r.total} ` : " no units match ";
    const ss = r.scores_summary;
    $("#scores-summary").textContent = ss ? `explanations: ${ss.units} units scored · mean score ${fmt(ss.mean_score)} · ` +
      `score ≥ 0.8: ${ss["fraction_ge_0.8"] == null ? "–" : (100 * ss["fraction_ge_0.8"]).toFixed(1) + " %"} · ` +
      `null explanation's mean ${fmt(ss.mean_null_score)} · constant predictions ${ss.constant_predictions ?? "–"}` +
      (ss.simulator ? ` · simulator ${ss.simulator}` : "") + (ss.failures ? ` · ${ss.failures} failures` : "") : "";
    $("#units").innerHTML = "<tr>" + cols.map(([k, t]) => `<th data-k="${k}">${t}${state.sort === k ? (state.desc ? " ▼" : " ▲") : ""}</th>`).join("") + "</tr>" +
      r.units.map(u => `<tr><td><a href="/u/${esc(model)}/${esc(dataset)}/${u.index}">${u.index}</a></td><td>${fmt(u.max_activation)}</td><td>${fmt(u.density)}</td><td>${fmt(u.mean)}</td><td>${fmt(u.variance)}</td><td><bdi>${u.top_token == null || !(u.max_activation > 0) ? "–" : esc(JSON.stringify(u.top_token))}</bdi></td><td>${esc(u.explanation || "")}</td><td>${u.constant ? `<span class="badge" title="the simulator predicted one value everywhere">constant</span>` : fmt(u.score)}</td></tr>`).join("");
    $("#units").querySelectorAll("th").forEach(th => th.onclick = () => { const k = th.dataset.k; if (k === "top_token" || k === "explanation") return; state.desc = state.sort === k ? !state.desc : true; state.sort = k; state.offset = 0; load(); });
    $("#prev").disabled = state.offset === 0; $("#next").disabled = state.offset + state.limit >= r.total;
  }
  $("#prev").onclick = () => { state.offset = Math.max(0, state.offset - state.limit); load(); };
  $("#next").onclick = () => { state.offset += state.limit; load(); };
  let timer; $("#q").oninput = ev => { clearTimeout(timer); timer = setTimeout(() => { state.q = ev.target.value; state.offset = 0; load(); }, 250); };
  for (const k of ["min_density", "min_score"]) $("#" + k).onchange = ev => { state[k] = ev.target.value.trim(); state.offset = 0; load(); };
  for (const k of ["hide_dead", "hide_constant"]) $("#" + k).onchange = ev => { state[k] = ev.target.checked; state.offset = 0; load(); };
  $("#jump").onkeydown = ev => { if (ev.key === "Enter" && /^\d+$/.test(ev.target.value.trim())) location.href = `/u/${model}/${dataset}/${ev.target.value.trim()}`; };
  await load();
}

function firesLine(r, max, pair) {
  // "fires on N of T tokens (x %)" from the collated density; a dead badge when it never fired
  if (!(max > 0)) return `<span class="badge dead" id="dead">dead: never fired on the ${r.tokens ? r.tokens.toLocaleString() + " " : ""}collated tokens</span>`;
  if (r.summary.density == null) return "";  // a dataset saescope did not write: its density is unknown
  const d = r.summary.density, pct = `${(100 * d).toPrecision(3)} %`;
  if (pair) return `<span id="fires">fires on ${pct} of token pairs</span>`;
  return `<span id="fires">fires on ${r.tokens ? Math.round(d * r.tokens).toLocaleString() + " of " + r.tokens.toLocaleString() + " tokens (" + pct + ")" : pct + " of tokens"}</span>`;
}

const SCORE_LABELS = {top_and_random: "top + random correlation", random_only: "random-only correlation",
  detection: "detection", fuzzing: "fuzzing", llm_detection: "LLM detection", llm_fuzzing: "LLM fuzzing",
  null: "null explanation's score"};

function explanationBox(e) {
  const sc = e.scores || {};
  const constant = sc.constant_prediction;
  // random-only null: the unit never fires on the random excerpts, so that correlation is undefined ("—")
  const parts = Object.entries(SCORE_LABELS).filter(([k]) => sc[k] !== undefined && (sc[k] !== null || k === "random_only"))
    .map(([k, label]) => `${label} ${sc[k] === null ? `<span title="undefined: the unit never fires on the random excerpts">—</span>` : fmt(sc[k])}`);
  return `<div class="expl" id="explanation">${esc(e.explanation)}
    <div><b>score ${fmt(e.score)}</b>${constant ? ` <span class="badge" id="constant">constant prediction: the simulator predicted one value everywhere, so the score is 0 by definition</span>` : ""}
    ${parts.length ? `<small> · ${parts.join(" · ")}${sc.method ? ` · simulator: ${esc(sc.method)}` : ""}</small>` : ""}</div></div>`;
}

// The n largest token pairs over a head's (or pair latent's) top excerpts: (query, key, value, excerpt #).
function topPairs(records, n) {
  const out = [];
  records.forEach((r, e) => {
    const T = r.tokens.length;
    for (let q = 0; q < T; q++) for (let k = 0; k <= q; k++) {
      const v = r.activations[q * (q + 1) / 2 + k];
      if (v > 0) out.push({q: r.tokens[q], k: r.tokens[k], v, e: e + 1});
    }
  });
  return out.sort((a, b) => b.v - a.v).slice(0, n);
}

async function unitPage(model, dataset, index) {
  crumbs([[model, "/"], [dataset, `/u/${model}/${dataset}`], [String(index), null]]);
  const r = await api(`/api/record/${model}/${dataset}/${index}`);
  const rec = r.record, max = r.max_activation, pair = r.by_token_pair;
  const view = (x) => pair ? pairmap(x.tokens, x.activations, max) : heatmap(x.tokens, x.activations, max);
  const labels = ["[0, 0.5]", "[0.5, 0.9]", "[0.9, 0.99]", "[0.99, 0.999]", "[0.999, 1]"];
  const e = r.explanation;
  const q = new URLSearchParams(location.search);
  const latent = (dataset.startsWith("sae_latents/") || dataset.startsWith("transcoder_latents/")) && !pair;
  const steerable = latent || dataset.startsWith("mlp_neurons/");
  const steerStrength = q.get("strength") || (max > 0 ? (2 * max).toPrecision(3) : "10");
  const steerPrompt = q.get("prompt") || "The weather today is";
  app.innerHTML = `<div class="nav">${r.prev !== null ? `<a id="prevunit" href="/u/${model}/${dataset}/${r.prev}">◀ ${r.prev}</a>` : ""}${r.next !== null ? `<a id="nextunit" href="/u/${model}/${dataset}/${r.next}">${r.next} ▶</a>` : ""}</div>
    <h2>${esc(dataset)} · unit ${index}</h2>
    ${e ? explanationBox(e) : ""}
    <div class="stats"><span>max activation</span><b>${fmt(max)}</b><span>density</span><b>${dataset.startsWith("attention_heads/") ? "–" : fmt(r.summary.density)}</b>
    <span>mean</span><b>${fmt(rec.mean)}</b><span>variance</span><b>${fmt(rec.variance)}</b>
    <span>skewness</span><b>${fmt(rec.skewness)}</b><span>kurtosis</span><b>${fmt(rec.kurtosis)}</b></div>
    <h3>Top activations ${firesLine(r, max, pair)}</h3><div id="top"></div>
    <h3>Activation histogram <small id="hist-label"></small></h3><canvas id="hist" width="520" height="130"></canvas>
    ${pair ? `<h3>Top token pairs (query ← key)</h3><table id="toppairs"></table>` : ""}
    <div id="lens"></div>
    <h3>Live probe</h3><textarea id="probe-text">${esc(q.get("probe") || "The quick brown fox jumps over the lazy dog.")}</textarea><br><button id="probe-run">Run</button> <span id="probe-status"></span><div id="probe-out"></div>
    ${steerable ? `<h3>Steering</h3><p class="hint">Greedy continuation with the unit's write direction added at every position, beside the unsteered one.</p>
    <textarea id="steer-text">${esc(steerPrompt)}</textarea><br>strength <input id="steer-strength" type="number" step="any" value="${steerStrength}" size="8"> <small>(as if the unit fired at this activation: strength × its write direction)</small>
    <button id="steer-run">Steer</button> <span id="steer-status"></span><div id="steer-out"></div>` : ""}
    ${latent ? `<h3>Neighbours</h3><div id="neighbours" class="lens"><div>decoder cosine<ol id="nb-decoder"><li>…</li></ol></div><div>co-active on its top excerpts<ol id="nb-coactive"><li>…</li></ol></div></div>` : ""}
    <div id="quantiles"></div>
    <h3>Random sample</h3><div id="random"></div>`;
  const what = pair ? "token pairs" : "tokens";
  if (r.histogram) {  // exact, from the collation's streaming pass over every token
    const h = r.histogram, np = h.positive.reduce((a, b) => a + b, 0), nn = h.negative.reduce((a, b) => a + b, 0);
    const pc = c => h.n ? `${(100 * c / h.n).toPrecision(3)} %` : "–";
    drawExactHistogram($("#hist"), h);
    $("#hist").dataset.nonzero = String(np + nn);
    $("#hist-label").textContent = `all ${h.n.toLocaleString()} collated ${what}: ${np.toLocaleString()} positive (${pc(np)}), ` +
      `${nn.toLocaleString()} negative (${pc(nn)}), ${h.zero.toLocaleString()} zero · bars by |activation|, log bins, log counts`;
  } else {  // a dataset collated without one: the uniform random excerpts only (the quantile buckets lean to firing)
    const sample = (rec.random_sample || []).flatMap(x => x.activations);
    const nonzero = sample.filter(v => v !== 0);
    drawHistogram($("#hist"), histogram(nonzero));
    $("#hist").dataset.nonzero = String(nonzero.length);
    $("#hist-label").textContent = `${nonzero.length.toLocaleString()} non-zero of ${sample.length.toLocaleString()} ${what} in the random excerpts (${sample.length ? (100 * nonzero.length / sample.length).toPrecision(3) : 0} %), log counts`;
  }
  if (pair) $("#toppairs").innerHTML = "<tr><th>query</th><th>key</th><th>value</th><th>excerpt</th></tr>" + topPairs(rec.most_positive_activation_records || [], 10)
    .map(p => `<tr><td><bdi>${esc(JSON.stringify(p.q))}</bdi></td><td><bdi>${esc(JSON.stringify(p.k))}</bdi></td><td>${p.v.toPrecision(3)}</td><td>${p.e}</td></tr>`).join("");
  // only excerpts where the unit fires: a sparse unit's "top" slots are padded with excerpts where it never does
  const tops = rec.most_positive_activation_records || [];
  tops.forEach((x, e) => {  // numbered as the pair table cites them
    if (!(Math.max(...x.activations) > 0)) return;
    const el = pair ? view(x) : centred(x, max);
    el.prepend(Object.assign(document.createElement("small"), {className: "exnum", textContent: `#${e + 1} `}));
    el.dataset.excerpt = String(e + 1);
    $("#top").appendChild(el);
  });
  const shown = new Set(tops.map(x => JSON.stringify([x.tokens, x.activations])));
  (rec.random_sample || []).forEach(x => $("#random").appendChild(view(x)));
  const qb = rec.quantile_boundaries || [];
  (rec.random_sample_by_quantile || []).map((b, q) => [b, q]).reverse().forEach(([b, q]) => {
    const fresh = b.filter(x => !shown.has(JSON.stringify([x.tokens, x.activations])));  // not the top ones again
    if (!fresh.length) return;
    const lo = q > 0 ? qb[q - 1] : null, hi = q < qb.length ? qb[q] : max;
    const range = lo == null ? `up to ${fmt(hi)}` : !(hi > 0) ? "never fires" : `${fmt(lo)} to ${fmt(hi)}`;
    const h = document.createElement("h3");
    h.className = "quantile";
    h.textContent = `Excerpts whose max is in quantile ${labels[q]} (excerpt max ${range})` +
      (fresh.length < b.length ? ` · ${b.length - fresh.length} already among the top activations` : "");
    $("#quantiles").appendChild(h);
    fresh.forEach(x => $("#quantiles").appendChild(view(x)));
  });
  if (!pair) api(`/api/logit_lens/${model}/${dataset}/${index}`).then(l => {
    const li = xs => xs.map(t => `<li><bdi>${esc(JSON.stringify(t.token))}</bdi> <small>${t.logit.toPrecision(3)}</small></li>`).join("");
    $("#lens").innerHTML = `<h3>Logit lens <small id="lens-units">(${esc(l.units)})</small></h3><div class="lens"><div>promoted<ol>${li(l.top)}</ol></div><div>suppressed<ol>${li(l.bottom)}</ol></div></div>`;
  }).catch(err => { $("#lens").innerHTML = `<p class="error">logit lens unavailable: ${esc(err.message)}</p>`; });
  document.onkeydown = ev => {
    if (ev.target.closest && ev.target.closest("input, textarea")) return;
    if (ev.key === "ArrowLeft" && r.prev !== null) location.href = `/u/${model}/${dataset}/${r.prev}`;
    if (ev.key === "ArrowRight" && r.next !== null) location.href = `/u/${model}/${dataset}/${r.next}`;
  };
  if (latent) api(`/api/neighbours/${model}/${dataset}/${index}`).then(nb => {
    const li = (xs, f) => xs.length ? xs.map(x => `<li><a href="/u/${esc(model)}/${esc(dataset)}/${x.index}">${x.index}</a> <small>${f(x)}</small> ${esc(x.explanation || "")}</li>`).join("") : "<li>none</li>";
    $("#nb-decoder").innerHTML = li(nb.decoder, x => `cos ${x.cosine.toFixed(3)}`);
    $("#nb-coactive").innerHTML = li(nb.coactive, x => `${(100 * x.fraction).toFixed(0)} % of its tokens`);
  }).catch(err => { $("#neighbours").innerHTML = `<p class="error">neighbours unavailable: ${esc(err.message)}</p>`; });
  if (steerable) {
    const run = async (raw) => {
      const text = String(raw ?? $("#steer-strength").value).trim(), strength = Number(text), prompt = $("#steer-text").value;
      $("#steer-out").innerHTML = "";  // an error must not leave the last result on screen
      if (text === "" || !Number.isFinite(strength)) {  // "abc" would otherwise steer at 0
        $("#steer-status").innerHTML = `<span class="error" id="steer-error">strength ${esc(JSON.stringify(text))} is not a number</span>`;
        return;
      }
      const params = new URLSearchParams(location.search);
      params.set("prompt", prompt); params.set("strength", String(strength));
      history.replaceState(null, "", `${location.pathname}?${params}`);
      $("#steer-status").textContent = "generating…";
      try {
        const o = await api("/api/steer", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({model, dataset, index, prompt, strength, tokens: 24})});
        const line = (label, toks, id) => `<div class="steer"><b>${label}</b> <span class="prompt">${esc(o.prompt_tokens.join(""))}</span><span id="${id}">${esc(toks.join(""))}</span></div>`;
        $("#steer-out").innerHTML = line("unsteered", o.unsteered, "steer-plain") + line(`strength ${o.strength}`, o.steered, "steer-steered");
        $("#steer-status").textContent = `added at ${o.hookpoint} (direction norm ${o.direction_norm.toFixed(3)})`;
      } catch (err) { $("#steer-status").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
    };
    $("#steer-run").onclick = () => run();
    if (q.get("strength")) run(q.get("strength"));
  }
  $("#probe-run").onclick = async () => {
    $("#probe-status").textContent = "running…";
    $("#probe-out").innerHTML = "";  // an error must not leave the last result on screen
    const params = new URLSearchParams(location.search);  // the probe text is part of the shareable URL
    params.set("probe", $("#probe-text").value);
    history.replaceState(null, "", `${location.pathname}?${params}`);
    try {
      const p = await api("/api/probe", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({model, dataset, index, text: $("#probe-text").value})});
      $("#probe-out").innerHTML = "";
      $("#probe-out").appendChild(p.by_token_pair ? pairmap(p.tokens, p.activations, p.max_activation) : heatmap(p.tokens, p.activations, p.max_activation));
      $("#probe-status").textContent = `max on prompt ${Math.max(...p.activations).toFixed(3)} (dataset max ${p.max_activation.toFixed(3)})`;
    } catch (err) { $("#probe-status").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
  };
  if (q.get("probe")) $("#probe-run").click();
}

async function route() {
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] !== "u") return await indexPage();
    const [, model, ...rest] = parts;
    if (!rest.length) return await layersPage(model);
    const last = rest[rest.length - 1];
    const named = rest[0] === "sae_latents" || rest[0] === "transcoder_latents";  // <kind>/<name>/<layer>/<unit>
    const isUnit = (named && rest.length === 4) || (!named && rest.length === 3);
    if (isUnit) {
      if (!/^\d+$/.test(last)) throw new Error(`unit "${last}" is not a unit number (0, 1, 2, ...)`);
      return await unitPage(model, rest.slice(0, -1).join("/"), Number(last));
    }
    return await datasetPage(model, rest.join("/"));
  } catch (err) { app.innerHTML = `<p class="error" id="error">${esc(err.message)}</p>`; }
}
route();
