// The attribution graph page: nodes by layer (rows, embeddings at the bottom, logits on top) × token position
// (columns); links coloured by sign (blue +, red −) with width by |weight|. Hover shows a node's label, activation
// and influence; click selects it (its links stay, the rest fade; ctrl/shift-click pins it). The graph, the clicked
// node and the pinned nodes live in the URL (?slug=&clicked=&pinned=a,b).
"use strict";
const NS = "http://www.w3.org/2000/svg";
const state = new URLSearchParams(location.search);

function el(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function saveState() {
  history.replaceState(null, "", "/graph?" + state.toString());
}

function layout(g, W, H) {
  const nLayers = Math.max(...g.nodes.map(n => n.layer === "E" ? 0 : +n.layer));  // logits sit at n_layers + 1
  const nPos = g.metadata.prompt_tokens.length;
  const cells = {};
  for (const n of g.nodes) {
    const row = n.layer === "E" ? 0 : +n.layer + 1;
    (cells[row + ":" + n.ctx_idx] ||= []).push(n);
  }
  const cw = (W - 60) / nPos, rh = (H - 60) / (nLayers + 2);
  for (const list of Object.values(cells)) {
    list.forEach((n, i) => {
      const row = n.layer === "E" ? 0 : +n.layer + 1;
      n.x = 50 + cw * n.ctx_idx + cw * (i + 1) / (list.length + 1);
      n.y = H - 40 - rh * row;
    });
  }
  return {cw, rh, nPos, nLayers};
}

function color(n) {
  return {"embedding": "#9ecae1", "logit": "#fdae6b", "mlp reconstruction error": "#bbb"}[n.feature_type] || "#74c476";
}

function draw(g) {
  const svg = document.getElementById("plot");
  svg.innerHTML = "";
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const geo = layout(g, W, H);
  const byId = Object.fromEntries(g.nodes.map(n => [n.node_id, n]));
  g.metadata.prompt_tokens.forEach((t, p) => {
    const x = 50 + geo.cw * (p + .5);
    const label = el("text", {x, y: H - 10, "text-anchor": "middle", "font-size": 11});
    label.textContent = t;
    svg.appendChild(label);
  });
  const maxW = Math.max(1e-12, ...g.links.map(l => Math.abs(l.weight)));
  const clicked = state.get("clicked") || "";
  const pinned = new Set((state.get("pinned") || "").split(",").filter(Boolean));
  const near = new Set([clicked]);
  for (const l of g.links) {
    if (l.source === clicked || l.target === clicked) { near.add(l.source); near.add(l.target); }
  }
  for (const l of g.links) {
    const a = byId[l.source], b = byId[l.target];
    if (!a || !b) continue;
    const line = el("line", {x1: a.x, y1: a.y, x2: b.x, y2: b.y, stroke: l.weight >= 0 ? "#2166ac" : "#b2182b",
                             "stroke-width": .3 + 3 * Math.abs(l.weight) / maxW, "stroke-opacity": .6});
    if (clicked && l.source !== clicked && l.target !== clicked) line.classList.add("dim");
    svg.appendChild(line);
  }
  for (const n of g.nodes) {
    const c = el("circle", {cx: n.x, cy: n.y, r: n.feature_type === "logit" || n.feature_type === "embedding" ? 6 : 4.5,
                            fill: color(n)});
    if (pinned.has(n.node_id)) c.classList.add("pinned");
    if (clicked && !near.has(n.node_id)) c.classList.add("dim");
    c.addEventListener("mouseenter", () => tip(n, c));
    c.addEventListener("mouseleave", () => { document.getElementById("tip").hidden = true; });
    c.addEventListener("click", ev => {
      if (ev.ctrlKey || ev.shiftKey || ev.metaKey) {
        pinned.has(n.node_id) ? pinned.delete(n.node_id) : pinned.add(n.node_id);
        state.set("pinned", [...pinned].join(","));
      } else {
        state.set("clicked", clicked === n.node_id ? "" : n.node_id);
      }
      saveState();
      draw(g);
    });
    svg.appendChild(c);
  }
  side(g, byId, clicked, pinned);
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
  t.style.left = (r.right + window.scrollX + 6) + "px";
  t.style.top = (r.top + window.scrollY) + "px";
  t.hidden = false;
}

function side(g, byId, clicked, pinned) {
  const out = [];
  const n = byId[clicked];
  if (n) {
    out.push(`<p>${describe(n)}</p>`);
    const rows = g.links.filter(l => l.target === clicked).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
    out.push("<p>inputs:</p><ul>" + rows.slice(0, 15).map(l =>
      `<li>${l.weight.toFixed(3)} ← ${esc(l.source)} ${esc(byId[l.source]?.clerp || "")}</li>`).join("") + "</ul>");
  }
  if (pinned.size) out.push("<p>pinned: " + [...pinned].map(esc).join(", ") + "</p>");
  const s = g.metadata.saescope || {};
  document.getElementById("scores").textContent = s.replacement_score === undefined ? "" :
    `replacement ${s.replacement_score.toFixed(3)} · completeness ${s.completeness_score.toFixed(3)} · ` +
    `${g.nodes.length} nodes, ${g.links.length} links`;
  document.getElementById("side").innerHTML = out.join("");
}

async function load(slug) {
  try {
    draw(await api("/api/graph/" + encodeURIComponent(slug)));
  } catch (e) {
    document.getElementById("side").textContent = "could not load the graph: " + e.message;
  }
}

(async () => {
  const sel = document.getElementById("slug");
  const list = await api("/api/graphs");
  if (!list.length) {
    document.getElementById("side").textContent = "no graphs: write one with saescope graph --out <root>/graphs/NAME.json";
    return;
  }
  sel.innerHTML = list.map(g => `<option>${esc(g.slug)}</option>`).join("");
  sel.value = state.get("slug") || list[0].slug;
  sel.addEventListener("change", () => { state.set("slug", sel.value); state.delete("clicked"); saveState(); load(sel.value); });
  state.set("slug", sel.value);
  saveState();
  load(sel.value);
})();
