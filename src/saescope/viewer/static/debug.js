// saescope debugger page: POST /api/debug; the whole state lives in the URL so a finding can be shared as a link.
"use strict";
const $ = s => document.querySelector(s);
const num = (v, d = 4) => (v === null || v === undefined) ? "–" : (v >= 0 ? "+" : "") + v.toFixed(d);
const FIELDS = ["model", "prompt", "target", "distractor", "by", "ablate", "trace", "pairs", "freeze_norms"];

function parseAblate(text) {
  const out = {};
  text.split(",").map(s => s.trim()).filter(Boolean).forEach(item => {
    const [name, how] = item.split("=");
    out[name.trim()] = (how || "zero").trim();
  });
  return out;
}

async function run(fromHistory = false) {
  const q = Object.fromEntries(FIELDS.map(f => [f, $("#" + f).value]));
  // each new question is a history entry (Back returns to the ranking before an ablation or trace)
  const url = "/debug?" + new URLSearchParams(q);
  if (fromHistory || location.pathname + location.search === url) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  const out = $("#out");
  out.innerHTML = "<p>running the model…</p>";
  const body = {model: q.model, prompt: q.prompt, target: q.target, distractor: q.distractor, by: q.by,
                ablate: parseAblate(q.ablate), trace: q.trace, top: 30, pairs_for: q.pairs,
                freeze_norms: q.freeze_norms || "final"};
  const r = await fetch("/api/debug", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const res = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) { out.innerHTML = `<p class="error">${esc(typeof res.detail === "string" ? res.detail : JSON.stringify(res.detail))}</p>`; return; }
  const SIDE = {q: " through its query side", k: " through its key side", v: " through its value side"};
  const [tnode, tside] = q.trace.split(":");
  const what = q.trace ? `activation of ${esc(tnode)}${SIDE[tside] || ""}` :
    `logit(${esc(JSON.stringify(res.target_tokens[0]))})` + (q.distractor ? ` − logit(${esc(JSON.stringify(res.distractor_tokens[0]))})` : "");
  let html = `<p id="behaviour">behaviour ${what} = <b>${num(res.behaviour)}</b> · p(target) = ${res.target_prob.toFixed(3)}` +
    ` · SAEs: ${esc(res.saes.join(", ") || "none")}</p>`;
  if (res.target_tokens.length > 1) html += `<p class="error">the target splits into ${esc(JSON.stringify(res.target_tokens))}; explaining the first token</p>`;
  html += `<p>next tokens: ${res.top_tokens.map(([t, p]) => `${esc(JSON.stringify(t))} ${p.toFixed(3)}`).join(", ")}</p>`;
  if (res.ablated_behaviour !== null) {
    html += `<p id="ablated">after ablation: behaviour = <b>${num(res.ablated_behaviour)}</b> (Δ ${num(res.ablated_behaviour - res.behaviour)});` +
      ` next tokens: ${res.ablated_top_tokens.map(([t, p]) => `${esc(JSON.stringify(t))} ${p.toFixed(3)}`).join(", ")}</p>`;
  }
  html += `<p class="seq">${res.prompt_tokens.map((t, i) => `<span class="tok" title="position ${i}">${esc(t)}</span>`).join("")}</p>`;
  html += `<table id="nodes"><tr><th>node</th><th>token</th><th>activation</th><th>direct effect</th><th>act × grad</th>` +
    `<th>explanation</th><th></th></tr>`;
  res.nodes.forEach(n => {
    const tok = res.prompt_tokens[n.position] ?? "";
    const key = n.kind === "head" && n.top_key >= 0 ? ` ← ${esc(JSON.stringify(res.prompt_tokens[n.top_key]))}` : "";
    const link = n.url ? `<a href="${esc(n.url)}">${esc(n.name)}</a>` : esc(n.name);
    let act = ["mlp", "head", "latent"].includes(n.kind) ? `<button class="abl" data-node="${esc(n.name)}">ablate</button>` : "";
    if (["mlp", "latent"].includes(n.kind)) act += ` <button class="trc" data-node="${esc(n.name)}" title="rank the nodes behind this one">trace</button>`;
    if (n.kind === "head") {
      act += ` <button class="prs" data-head="head.${n.layer}.${n.index}">pairs</button> trace` +
        ["q", "k", "v"].map(s => ` <button class="trc" data-node="${esc(n.name)}:${s}" title="rank the nodes behind this head through its ${{q: "query", k: "key", v: "value"}[s]} side">${s}</button>`).join("");
    }
    html += `<tr><td>${link}</td><td>${esc(JSON.stringify(tok))}${key}</td><td>${n.activation.toFixed(3)}</td>` +
      `<td>${num(n.direct_effect)}</td><td>${num(n.act_grad)}</td><td>${esc(n.explanation || "")}</td><td>${act}</td></tr>`;
  });
  html += "</table>";
  const cv = res.conventions || {};  // what the columns are: norms for embed/error/b_dec, the backward's convention
  html += `<p class="hint" id="conventions"><b>activation</b>: ${esc(cv.activation || "")}<br><b>direct effect</b>: ${esc(cv.direct_effect || "")}` +
    `<br><b>act × grad</b>: ${esc(cv.act_grad || "")}; freeze_norms ${esc(cv.freeze_norms || "")}</p>`;
  if (res.pairs) {  // the head's token-pair view: rows = query, columns = key; colour = A·∂B/∂A (blue +, red −)
    const a = res.pairs.attribution, mx = Math.max(1e-9, ...a.flat().map(Math.abs));
    html += `<h3 id="pairview">${esc(res.pairs.head)}: A·∂B/∂A by (query ↓, key →; blue +, red −); hover for the pattern</h3><table class="pairgrid"><tr><th></th>` +
      res.prompt_tokens.map(t => `<th>${esc(JSON.stringify(t))}</th>`).join("") + "</tr>" +
      a.map((row, t) => `<tr><th>${esc(JSON.stringify(res.prompt_tokens[t]))}</th>` + row.map((v, s) => {
        // as on the unit pages: positive blue, negative red
        const x = Math.min(1, Math.abs(v) / mx).toFixed(3), c = v >= 0 ? `rgba(46,134,222,${x})` : `rgba(220,38,38,${x})`;
        return s > t ? "<td></td>" : `<td style="background:${c}" title="A ${res.pairs.pattern[t][s].toFixed(3)} · attribution ${v.toFixed(4)}"></td>`;
      }).join("") + "</tr>").join("") + "</table>";
  }
  out.innerHTML = html;
  out.querySelectorAll("button.trc").forEach(b => b.addEventListener("click", () => { $("#trace").value = b.dataset.node; $("#ablate").value = ""; run(); }));
  out.querySelectorAll("button.prs").forEach(b => b.addEventListener("click", () => { $("#pairs").value = b.dataset.head; run(); }));
  out.querySelectorAll("button.abl").forEach(b => b.addEventListener("click", () => {
    const cur = $("#ablate").value.trim();
    $("#ablate").value = (cur ? cur + ", " : "") + b.dataset.node + "=zero";
    run();
  }));
}

async function init() {
  const ds = await (await fetch("/api/datasets")).json();
  const models = [...new Set(ds.map(d => d.model))];
  $("#model").innerHTML = models.map(m => `<option>${esc(m)}</option>`).join("");
  const params = new URLSearchParams(location.search);
  FIELDS.forEach(f => { if (params.has(f)) $("#" + f).value = params.get(f); });
  $("#form").addEventListener("submit", ev => { ev.preventDefault(); run(); });
  if (params.get("prompt") && params.get("target")) run(true);
  window.addEventListener("popstate", () => {  // Back / Forward: the form and the ranking follow the URL
    const p = new URLSearchParams(location.search);
    const dflt = {by: "act_grad", freeze_norms: "final"};
    FIELDS.forEach(f => { if (f !== "model" || p.get(f)) $("#" + f).value = p.get(f) || dflt[f] || ""; });
    if (p.get("prompt") && p.get("target")) run(true);
  });
}
init();
