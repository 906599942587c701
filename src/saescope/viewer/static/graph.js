// The attribution graph page: nodes by layer (rows, embeddings at the bottom, logits on top) × token position
// (columns); links coloured by sign (blue +, red −) with width by |weight|. Hover shows a node's label, activation
// and influence; click selects it (its links stay, the rest fade; a second click opens its record page);
// ctrl/shift-click pins it; pinned nodes can be grouped into named supernodes (drawn as a dashed box); the
// intervene panel scales the selected node, the pinned nodes or a supernode and shows the output distribution
// before and after; each input of the selected node can be split by the attention heads that carry it, and the QK
// panel explains where a head attends in features. State in the URL: ?slug=&clicked=&pinned=a,b&supernodes=[["name","id",…],…] (Neuronpedia's form).
"use strict";
const NS = "http://www.w3.org/2000/svg";
const state = new URLSearchParams(location.search);
const FEATURE = "cross layer transcoder";
let G = null;

function el(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function saveState() { history.replaceState(null, "", "/graph?" + state.toString()); }
function pinnedSet() { return new Set((state.get("pinned") || "").split(",").filter(Boolean)); }
function supernodes() {
  try { const s = JSON.parse(state.get("supernodes") || "[]"); return Array.isArray(s) ? s : []; } catch { return []; }
}

function layout(g, W, H) {
  const nLayers = g.nodes.reduce((m, n) => Math.max(m, n.layer === "E" ? 0 : +n.layer), 0);  // logits sit at n_layers + 1
  const nPos = g.metadata.prompt_tokens.length;
  const cells = {};
  const row = n => n.layer === "E" ? 0 : +n.layer + 1;
  for (const n of g.nodes) (cells[row(n) + ":" + n.ctx_idx] ||= []).push(n);
  const cw = (W - 60) / nPos, rh = (H - 70) / (nLayers + 2);
  for (const list of Object.values(cells)) {
    // the most influential first (`influence` is the node's place in the cumulative influence: smaller = more)
    list.sort((a, b) => (a.influence ?? Infinity) - (b.influence ?? Infinity));
    // a crowded cell (hundreds of features of one layer at one token) wraps into up to 3 staggered lines, and its
    // circles shrink with the spacing, so that fewer of them hide one another
    const lines = Math.min(3, Math.ceil(list.length * 6 / cw));
    const perLine = Math.ceil(list.length / lines);
    list.forEach((n, i) => {
      const line = i % lines, j = Math.floor(i / lines);
      n.x = 50 + cw * n.ctx_idx + cw * (j + 1) / (perLine + 1);
      n.y = H - 50 - rh * row(n) + (lines > 1 ? (line - (lines - 1) / 2) * Math.min(6, rh / (lines + 1)) : 0);
      n.r = Math.max(1.5, Math.min(4.5, cw / (perLine + 1) * 0.6 * lines));
    });
  }
  return {cw, rh, nPos, nLayers};
}

function color(n) {
  return {"embedding": "#9ecae1", "logit": "#fdae6b", "mlp reconstruction error": "#bbb"}[n.feature_type] || "#74c476";
}

function recordUrl(n) {
  const base = G.metadata.saescope && G.metadata.saescope.record_base;
  if (!base || n.feature_type !== FEATURE) return "";
  const [layer, index] = n.node_id.split("_");
  return `${base}/${layer}/${index}`;
}

function draw() {
  const g = G, svg = document.getElementById("plot");
  svg.innerHTML = "";
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const geo = layout(g, W, H);
  const byId = {};
  for (const n of g.nodes) if (!byId[n.node_id] || n.feature_type === FEATURE) byId[n.node_id] = n;
  g.metadata.prompt_tokens.forEach((t, p) => {
    const label = el("text", {x: 50 + geo.cw * (p + .5), y: H - 28, "text-anchor": "middle", "font-size": 11});
    label.textContent = t;
    svg.appendChild(label);
  });
  for (let r = 0; r <= geo.nLayers + 1; r++) {  // rows: embeddings, layers 0..L−1, (L: empty), logits
    if (r === geo.nLayers) continue;
    const t = el("text", {x: 4, y: H - 50 - geo.rh * r + 4, "font-size": 10, fill: "#888"});
    t.textContent = r === 0 ? "emb" : r === geo.nLayers + 1 ? "logit" : "L" + (r - 1);
    svg.appendChild(t);
  }
  // reduce, not Math.max(...links): spreading ~10⁵ links overflows the call stack
  const maxW = g.links.reduce((m, l) => Math.max(m, Math.abs(l.weight)), 1e-12);
  const clicked = state.get("clicked") || "";
  const pinned = pinnedSet();
  const near = new Set([clicked]);
  for (const l of g.links) if (l.source === clicked || l.target === clicked) { near.add(l.source); near.add(l.target); }
  for (const l of g.links) {
    const a = byId[l.source], b = byId[l.target];
    if (!a || !b) continue;
    const line = el("line", {x1: a.x, y1: a.y, x2: b.x, y2: b.y, stroke: l.weight >= 0 ? "#2166ac" : "#b2182b",
                             "stroke-width": .3 + 3 * Math.abs(l.weight) / maxW, "stroke-opacity": .6});
    if (clicked && l.source !== clicked && l.target !== clicked) line.classList.add("dim");
    svg.appendChild(line);
  }
  const palette = ["#7c3aed", "#db2777", "#0891b2", "#65a30d", "#ea580c"];
  supernodes().forEach(([name, ...ids], k) => {
    const ms = ids.map(i => byId[i]).filter(Boolean);
    if (!ms.length) return;
    const xs = ms.map(n => n.x), ys = ms.map(n => n.y), c = palette[k % palette.length];
    const x0 = Math.min(...xs) - 9, y0 = Math.min(...ys) - 9;
    svg.appendChild(el("rect", {x: x0, y: y0, width: Math.max(...xs) - x0 + 9, height: Math.max(...ys) - y0 + 9,
                                rx: 6, class: "super", stroke: c}));
    const t = el("text", {x: x0, y: y0 - 3, class: "super", fill: c});
    t.textContent = name;
    svg.appendChild(t);
  });
  // the most influential drawn last, on top: a click where circles overlap lands on the node that matters most
  // (`influence` is the node's place in the descending cumulative influence: smaller = more influential)
  const order = [...g.nodes].sort((a, b) => (b.influence ?? 0) - (a.influence ?? 0));
  for (const n of order) {
    const big = n.feature_type === "logit" || n.feature_type === "embedding";
    const c = el("circle", {cx: n.x, cy: n.y, r: big ? 6 : n.r || 4.5, fill: color(n), "data-id": n.node_id,
                            "data-type": n.feature_type});
    // byId[...] === n: circuit-tracer's error ids (0_{layer}_{pos}) can equal a layer-0 feature's; the feature wins
    if (pinned.has(n.node_id) && byId[n.node_id] === n) c.classList.add("pinned");
    if (clicked === n.node_id && byId[n.node_id] === n) c.classList.add("clicked");
    if (clicked && !near.has(n.node_id)) c.classList.add("dim");
    c.addEventListener("mouseenter", () => tip(n, c));
    c.addEventListener("mouseleave", () => { document.getElementById("tip").hidden = true; });
    c.addEventListener("click", ev => onClick(n, ev, clicked, pinned));
    svg.appendChild(c);
  }
  side(byId, clicked, pinned);
}

function onClick(n, ev, clicked, pinned) {
  if (ev.ctrlKey || ev.shiftKey || ev.metaKey) {
    pinned.has(n.node_id) ? pinned.delete(n.node_id) : pinned.add(n.node_id);
    state.set("pinned", [...pinned].join(","));
  } else if (clicked === n.node_id && recordUrl(n)) {
    window.open(recordUrl(n), "_blank");
    return;
  } else {
    state.set("clicked", clicked === n.node_id ? "" : n.node_id);
  }
  saveState();
  draw();
}

function describe(n) {
  const parts = [`<b>${esc(n.node_id)}</b> ${esc(n.feature_type)}`];
  if (n.clerp) parts.push(esc(n.clerp));
  if (n.activation !== null && n.activation !== undefined) parts.push(`activation ${n.activation.toFixed(3)}`);
  if (n.influence !== null && n.influence !== undefined) parts.push(`cumulative influence ${n.influence.toFixed(3)}`);
  return parts.join("<br>");
}

function tip(n, c) {
  const t = document.getElementById("tip");
  const r = c.getBoundingClientRect();
  t.innerHTML = describe(n);
  t.style.left = (r.right + 6) + "px";
  t.style.top = r.top + "px";
  t.hidden = false;
}

function side(byId, clicked, pinned) {
  const out = [];
  const n = byId[clicked];
  if (n) {
    const url = recordUrl(n);
    out.push(`<p>${describe(n)}${url ? `<br><a id="record-link" href="${esc(url)}" target="_blank">record page</a>` : ""}</p>`);
    const rows = G.links.filter(l => l.target === clicked).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
    if (rows.length) out.push("<p>strongest inputs (heads: which attention heads carry the edge):</p><ul>" +
      rows.slice(0, 12).map((l, i) => `<li>${l.weight.toFixed(3)} ← ${esc(l.source)} ` +
        `${esc(byId[l.source]?.clerp || "")} <button type="button" class="abl heads" data-i="${i}">heads</button>` +
        `<span class="hs" id="hs-${i}"></span></li>`).join("") + "</ul>");
    document.getElementById("side").innerHTML = out.join("");
    for (const b of document.querySelectorAll("#side button.heads")) {
      b.addEventListener("click", () => headSplit(n, byId[rows[+b.dataset.i].source], b.dataset.i));
    }
  } else {
    document.getElementById("side").innerHTML = "";
  }
  document.getElementById("pins").textContent = pinned.size ? "pinned: " + [...pinned].join(", ") :
    "ctrl/shift-click nodes to pin them";
  document.getElementById("supers").innerHTML = supernodes().map(([name, ...ids], k) =>
    `<li>${esc(name)}: ${ids.map(esc).join(", ")} <button type="button" data-k="${k}" class="abl">ungroup</button></li>`).join("");
  for (const b of document.querySelectorAll("#supers button")) b.addEventListener("click", () => {
    const s = supernodes();
    s.splice(+b.dataset.k, 1);
    state.set("supernodes", JSON.stringify(s));
    saveState();
    draw();
  });
  const s = G.metadata.saescope || {};
  document.getElementById("scores").textContent = s.replacement_score === undefined ? "" :
    `replacement ${s.replacement_score.toFixed(3)} · completeness ${s.completeness_score.toFixed(3)} · ` +
    `${G.nodes.length} nodes, ${G.links.length} links`;
  targets(byId, clicked, pinned);
}

function targets(byId, clicked, pinned) {
  // what the intervene panel can act on: the selected feature, the pinned features, each supernode
  const sel = document.getElementById("iv-on"), keep = sel.value, opts = [];
  const feats = ids => ids.filter(i => byId[i] && byId[i].feature_type === FEATURE);
  if (feats([clicked]).length) opts.push(["clicked", `selected ${clicked}`]);
  if (feats([...pinned]).length) opts.push(["pinned", `pinned (${feats([...pinned]).length} features)`]);
  supernodes().forEach(([name, ...ids], k) => { if (feats(ids).length) opts.push([`super:${k}`, `supernode ${name}`]); });
  sel.innerHTML = opts.map(([v, t]) => `<option value="${esc(v)}">${esc(t)}</option>`).join("");
  if (opts.some(o => o[0] === keep)) sel.value = keep;
  sel.targetIds = () => {
    const v = sel.value;
    if (v === "clicked") return feats([clicked]);
    if (v === "pinned") return feats([...pinned]);
    if (v && v.startsWith("super:")) return feats(supernodes()[+v.slice(6)].slice(1));
    return [];
  };
}

async function post(what, body) {
  return api(`/api/graph/${encodeURIComponent(state.get("slug"))}/${what}`, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
}

async function headSplit(target, source, i) {
  const span = document.getElementById("hs-" + i);
  span.textContent = " …";
  try {
    const r = await post("heads", {target: target.node_id, target_type: target.feature_type,
                                   source: source.node_id, source_type: source.feature_type});
    span.textContent = " = " + r.heads.slice(0, 4).map(h => `L${h.layer}.H${h.head} ${h.weight.toFixed(3)}`)
      .concat([`no head ${r.residual.toFixed(3)}`]).join(" + ");
  } catch (e) {
    span.innerHTML = ` <span class="error">${esc(e.message)}</span>`;
  }
}

async function runQK() {
  const out = document.getElementById("qk-out");
  const body = {layer: +document.getElementById("qk-layer").value, head: +document.getElementById("qk-head").value};
  const q = document.getElementById("qk-query").value;
  if (q !== "") body.query_pos = +q;
  out.textContent = "running…";
  try {
    const r = await post("qk", body);
    const toks = G.metadata.prompt_tokens;
    const list = rows => "<ul>" + rows.map(([id, v]) => `<li>${v.toFixed(3)} ${esc(id)}</li>`).join("") + "</ul>";
    out.innerHTML = `<p>L${r.layer}.H${r.head}: query ${esc(JSON.stringify(toks[r.query_pos]))} attends to ` +
      `${esc(JSON.stringify(toks[r.key_pos]))} (weight ${r.pattern.toFixed(3)}, score ${r.score.toFixed(2)})</p>` +
      `<div class="lens"><div>through the query${list(r.query)}</div><div>through the key${list(r.key)}</div></div>`;
  } catch (e) {
    out.innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

async function runIntervention() {
  const sel = document.getElementById("iv-on"), out = document.getElementById("iv-out");
  const ids = sel.targetIds ? sel.targetIds() : [];
  const factor = +document.getElementById("iv-factor").value;
  if (!ids.length) { out.innerHTML = '<p class="error">select, pin or group feature nodes first</p>'; return; }
  out.textContent = "running…";
  try {
    const r = await post("intervene", {interventions: ids.map(node_id => ({node_id, factor})), top: 8});
    const mx = Math.max(...r.before, ...r.after, 1e-9);
    out.innerHTML = `<p>${ids.length} feature(s) × ${factor}: KL(before‖after) ${r.kl.toFixed(4)} nats</p>` +
      "<table><tr><th>token</th><th>before</th><th>after</th><th></th></tr>" + r.tokens.map((t, i) =>
        `<tr><td>${esc(JSON.stringify(t))}</td><td>${r.before[i].toFixed(3)}</td><td>${r.after[i].toFixed(3)}</td>` +
        `<td class="bar"><span class="b" style="width:${100 * r.before[i] / mx}px"></span><br>` +
        `<span class="b a" style="width:${100 * r.after[i] / mx}px"></span></td></tr>`).join("") + "</table>";
  } catch (e) {
    out.innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

function makeSupernode() {
  const pinned = [...pinnedSet()];
  const name = document.getElementById("sn-name").value.trim() || `group ${supernodes().length + 1}`;
  if (!pinned.length) return;
  state.set("supernodes", JSON.stringify([...supernodes(), [name, ...pinned]]));
  state.delete("pinned");
  saveState();
  draw();
}

async function load(slug) {
  try {
    G = await api("/api/graph/" + encodeURIComponent(slug));
    draw();
    document.getElementById("plot").dataset.drawn = String(G.nodes.length);
  } catch (e) {
    document.getElementById("side").textContent = "could not load the graph: " + e.message;
  }
}

(async () => {
  const sel = document.getElementById("slug");
  document.getElementById("iv-run").addEventListener("click", runIntervention);
  document.getElementById("sn-make").addEventListener("click", makeSupernode);
  document.getElementById("qk-run").addEventListener("click", runQK);
  const list = await api("/api/graphs");
  if (!list.length) {
    document.getElementById("side").textContent = "no graphs: write one with saescope graph --out <root>/graphs/NAME.json";
    return;
  }
  sel.innerHTML = list.map(g => `<option>${esc(g.slug)}</option>`).join("");
  sel.value = state.get("slug") || list[0].slug;
  sel.addEventListener("change", () => {
    for (const k of ["clicked", "pinned", "supernodes"]) state.delete(k);
    state.set("slug", sel.value);
    saveState();
    load(sel.value);
  });
  state.set("slug", sel.value);
  saveState();
  load(sel.value);
})();
