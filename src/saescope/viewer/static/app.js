// saescope viewer: a dependency-free single page over the JSON API (see viewer/server.py).
"use strict";
const $ = (sel, el = document) => el.querySelector(sel);
const app = $("#app"), tip = $("#tip");
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const fmt = v => (v === null || v === undefined) ? "–" : (typeof v === "number" ? (Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.001) ? v.toExponential(2) : v.toFixed(3)) : esc(v));

async function api(path, opts) {
  const r = await fetch(path, opts);
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}

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
    const a = acts[i] ?? 0, x = max > 0 ? Math.max(0, Math.min(1, a / max)) : 0;
    s.className = "tok" + (i === argmax && a > 0 ? " max" : "");
    s.style.background = `rgba(46, 134, 222, ${x.toFixed(3)})`;
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
  const paint = f => spans.forEach((s, k) => { const x = max > 0 ? Math.max(0, Math.min(1, f(k) / max)) : 0; s.style.background = `rgba(46,134,222,${x.toFixed(3)})`; });
  const reset = () => spans.forEach((s, k) => { const v = Math.max(maxIn[k], maxOut[k]); const x = max > 0 ? Math.min(1, v / max) : 0; s.style.background = `rgba(46,134,222,${x.toFixed(3)})`; });
  spans.forEach((s, i) => {
    s.addEventListener("mouseenter", () => paint(k => k <= i ? at(i, k) : at(k, i)));
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
  return div;
}

function histogram(values, bins = 30) {
  if (!values.length) return {edges: [], counts: []};
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi <= lo) hi = lo + 1e-6;
  const w = (hi - lo) / bins, counts = new Array(bins).fill(0);
  values.forEach(v => counts[Math.min(bins - 1, Math.floor((v - lo) / w))]++);
  return {edges: Array.from({length: bins + 1}, (_, i) => lo + i * w), counts};
}

function drawHistogram(canvas, h) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  if (!h.counts.length) return;
  const top = Math.max(...h.counts), bw = W / h.counts.length;
  ctx.fillStyle = "#2e86de";
  h.counts.forEach((c, i) => { const bh = top ? (c / top) * (H - 16) : 0; ctx.fillRect(i * bw + 1, H - 14 - bh, bw - 2, bh); });
  ctx.fillStyle = "#333"; ctx.font = "10px sans-serif";
  ctx.fillText(h.edges[0].toFixed(2), 2, H - 2);
  const last = h.edges[h.edges.length - 1].toFixed(2);
  ctx.fillText(last, W - ctx.measureText(last).width - 2, H - 2);
  canvas.dataset.drawn = String(h.counts.reduce((a, b) => a + b, 0));
}

function crumbs(parts) { $("#crumbs").innerHTML = parts.map(([t, h]) => h ? `/ <a href="${h}">${esc(t)}</a>` : `/ ${esc(t)}`).join(" "); }

async function indexPage() {
  crumbs([]);
  const ds = await api("/api/datasets");
  if (!ds.length) { app.innerHTML = "<p>No collated datasets under this root. Run <code>saescope collate</code> first.</p>"; return; }
  app.innerHTML = "<h2>Datasets</h2><table id='datasets'><tr><th>model</th><th>unit type</th><th>name</th><th>layer</th><th>units</th><th>tokens</th></tr>" +
    ds.map(d => `<tr><td>${esc(d.model)}</td><td><a href="/u/${esc(d.model)}/${esc(d.path)}">${esc(d.unit_type)}</a></td><td>${esc(d.name || "")}</td><td>${d.layer}</td><td>${d.units}</td><td>${d.tokens ?? ""}</td></tr>`).join("") + "</table>";
}

async function datasetPage(model, dataset) {
  crumbs([[model, "/"], [dataset, null]]);
  const state = {offset: 0, limit: 50, sort: "max_activation", desc: true, q: ""};
  app.innerHTML = `<h2>${esc(model)} · ${esc(dataset)}</h2>
    <div class="controls"><input id="q" placeholder="search explanations / top tokens" size="40">
    <button id="prev">◀</button><span id="page"></span><button id="next">▶</button></div>
    <table id="units"></table>`;
  const cols = [["index", "unit"], ["max_activation", "max act"], ["density", "density"], ["mean", "mean"], ["variance", "variance"], ["top_token", "top token"], ["explanation", "explanation"], ["score", "score"]];
  async function load() {
    const p = new URLSearchParams({offset: state.offset, limit: state.limit, sort: state.sort, desc: state.desc, q: state.q});
    const r = await api(`/api/units/${model}/${dataset}?${p}`);
    $("#page").textContent = ` ${r.total ? state.offset + 1 : 0}–${Math.min(state.offset + state.limit, r.total)} of ${r.total} `;
    $("#units").innerHTML = "<tr>" + cols.map(([k, t]) => `<th data-k="${k}">${t}${state.sort === k ? (state.desc ? " ▼" : " ▲") : ""}</th>`).join("") + "</tr>" +
      r.units.map(u => `<tr><td><a href="/u/${esc(model)}/${esc(dataset)}/${u.index}">${u.index}</a></td><td>${fmt(u.max_activation)}</td><td>${fmt(u.density)}</td><td>${fmt(u.mean)}</td><td>${fmt(u.variance)}</td><td>${u.top_token == null ? "–" : esc(JSON.stringify(u.top_token))}</td><td>${esc(u.explanation || "")}</td><td>${fmt(u.score)}</td></tr>`).join("");
    $("#units").querySelectorAll("th").forEach(th => th.onclick = () => { const k = th.dataset.k; if (k === "top_token" || k === "explanation") return; state.desc = state.sort === k ? !state.desc : true; state.sort = k; state.offset = 0; load(); });
    $("#prev").disabled = state.offset === 0; $("#next").disabled = state.offset + state.limit >= r.total;
  }
  $("#prev").onclick = () => { state.offset = Math.max(0, state.offset - state.limit); load(); };
  $("#next").onclick = () => { state.offset += state.limit; load(); };
  let timer; $("#q").oninput = ev => { clearTimeout(timer); timer = setTimeout(() => { state.q = ev.target.value; state.offset = 0; load(); }, 250); };
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

async function unitPage(model, dataset, index) {
  crumbs([[model, "/"], [dataset, `/u/${model}/${dataset}`], [String(index), null]]);
  const r = await api(`/api/record/${model}/${dataset}/${index}`);
  const rec = r.record, max = r.max_activation, pair = r.by_token_pair;
  const view = (x) => pair ? pairmap(x.tokens, x.activations, max) : heatmap(x.tokens, x.activations, max);
  const labels = ["[0, 0.5]", "[0.5, 0.9]", "[0.9, 0.99]", "[0.99, 0.999]", "[0.999, 1]"];
  const e = r.explanation;
  app.innerHTML = `<div class="nav">${r.prev !== null ? `<a id="prevunit" href="/u/${model}/${dataset}/${r.prev}">◀ ${r.prev}</a>` : ""}${r.next !== null ? `<a id="nextunit" href="/u/${model}/${dataset}/${r.next}">${r.next} ▶</a>` : ""}</div>
    <h2>${esc(dataset)} · unit ${index}</h2>
    ${e ? `<div class="expl" id="explanation">${esc(e.explanation)} <b>score ${fmt(e.score)}</b>${e.scores ? " · " + Object.entries(e.scores).map(([k, v]) => `${esc(k)} ${fmt(v)}`).join(" · ") : ""}</div>` : ""}
    <div class="stats"><span>max activation</span><b>${fmt(max)}</b><span>density</span><b>${fmt(r.summary.density)}</b>
    <span>mean</span><b>${fmt(rec.mean)}</b><span>variance</span><b>${fmt(rec.variance)}</b>
    <span>skewness</span><b>${fmt(rec.skewness)}</b><span>kurtosis</span><b>${fmt(rec.kurtosis)}</b></div>
    <h3>Activation histogram (random sample${pair ? ", token pairs" : ", tokens"})</h3><canvas id="hist" width="520" height="130"></canvas>
    <div id="lens"></div>
    <h3>Live probe</h3><textarea id="probe-text">The quick brown fox jumps over the lazy dog.</textarea><br><button id="probe-run">Run</button> <span id="probe-status"></span><div id="probe-out"></div>
    <h3>Top activations ${firesLine(r, max, pair)}</h3><div id="top"></div>
    <div id="quantiles"></div>
    <h3>Random sample</h3><div id="random"></div>`;
  drawHistogram($("#hist"), histogram((rec.random_sample || []).flatMap(x => x.activations)));
  // only excerpts where the unit fires: a sparse unit's "top" slots are padded with excerpts where it never does
  (rec.most_positive_activation_records || []).filter(x => Math.max(...x.activations) > 0)
    .forEach(x => $("#top").appendChild(view(x)));
  (rec.random_sample || []).forEach(x => $("#random").appendChild(view(x)));
  (rec.random_sample_by_quantile || []).map((b, q) => [b, q]).reverse().forEach(([b, q]) => {
    if (!b.length) return;
    const h = document.createElement("h3");
    h.textContent = `Quantile ${labels[q]} of excerpt max` + (rec.quantile_boundaries && q > 0 ? ` (≥ ${fmt(rec.quantile_boundaries[q - 1])})` : "");
    $("#quantiles").appendChild(h);
    b.forEach(x => $("#quantiles").appendChild(view(x)));
  });
  if (!pair) api(`/api/logit_lens/${model}/${dataset}/${index}`).then(l => {
    const li = xs => xs.map(t => `<li>${esc(JSON.stringify(t.token))} <small>${t.logit.toFixed(2)}</small></li>`).join("");
    $("#lens").innerHTML = `<h3>Logit lens (write direction · unembedding)</h3><div class="lens"><div>promoted<ol>${li(l.top)}</ol></div><div>suppressed<ol>${li(l.bottom)}</ol></div></div>`;
  }).catch(err => { $("#lens").innerHTML = `<p class="error">logit lens unavailable: ${esc(err.message)}</p>`; });
  $("#probe-run").onclick = async () => {
    $("#probe-status").textContent = "running…";
    try {
      const p = await api("/api/probe", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({model, dataset, index, text: $("#probe-text").value})});
      $("#probe-out").innerHTML = "";
      $("#probe-out").appendChild(p.by_token_pair ? pairmap(p.tokens, p.activations, p.max_activation) : heatmap(p.tokens, p.activations, p.max_activation));
      $("#probe-status").textContent = `max on prompt ${Math.max(...p.activations).toFixed(3)} (dataset max ${p.max_activation.toFixed(3)})`;
    } catch (err) { $("#probe-status").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
  };
}

async function route() {
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] !== "u") return await indexPage();
    const [, model, ...rest] = parts;
    const last = rest[rest.length - 1];
    const isUnit = (rest[0] === "sae_latents" && rest.length === 4) || (rest[0] !== "sae_latents" && rest.length === 3);
    if (isUnit) return await unitPage(model, rest.slice(0, -1).join("/"), Number(last));
    return await datasetPage(model, rest.join("/"));
  } catch (err) { app.innerHTML = `<p class="error" id="error">${esc(err.message)}</p>`; }
}
route();
