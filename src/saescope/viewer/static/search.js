// Search by inference (/search): per token, the units of every dataset that fire most (needs common.js).
"use strict";
const $ = s => document.querySelector(s);
let result = null;

function show(t) {
  document.querySelectorAll("#tokens .tok").forEach((el, i) => el.classList.toggle("sel", i === t));
  const units = result.units[t];
  const model = $("#model").value;
  $("#detail").innerHTML = `<h3>${esc(JSON.stringify(result.tokens[t]))}: ${units.length ? "units that fire most" : "no unit fires"}</h3>` +
    (units.length ? `<table id="hits"><tr><th>dataset</th><th>unit</th><th>relative</th><th>activation</th><th>explanation</th></tr>` +
      units.map(u => `<tr><td>${esc(u.dataset)}</td><td><a href="/u/${esc(model)}/${esc(u.dataset)}/${u.index}">${u.index}</a></td><td>${u.relative.toFixed(3)}</td><td>${u.activation.toPrecision(3)}</td><td>${esc(u.explanation || "")}</td></tr>`).join("") + "</table>" : "");
}

async function run(ev) {
  if (ev) ev.preventDefault();
  const text = $("#text").value, model = $("#model").value, md = $("#max_density").value.trim();
  history.replaceState(null, "", `/search?${new URLSearchParams({model, text, max_density: md})}`);
  $("#status").textContent = "running…";
  $("#tokens").innerHTML = ""; $("#detail").innerHTML = "";  // an error must not leave the last result standing
  const maxDensity = Number(md);
  if (md === "" || !(maxDensity >= 0 && maxDensity <= 1)) { $("#status").innerHTML = `<span class="error">max density: a fraction from 0 to 1</span>`; return; }
  try {
    result = await api("/api/search", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({model, text, max_density: maxDensity})});
    $("#tokens").innerHTML = result.tokens.map((tok, i) => {
      const best = result.units[i].length ? result.units[i][0].relative : 0;
      return `<span class="tok" data-i="${i}" style="background: rgba(37, 99, 235, ${Math.min(best, 1).toFixed(2)})">${esc(tok)}</span>`;
    }).join("");
    document.querySelectorAll("#tokens .tok").forEach(el => el.onclick = () => show(Number(el.dataset.i)));
    const strongest = result.units.map((u, i) => [u.length ? u[0].relative : 0, i]).sort((a, b) => b[0] - a[0])[0];
    if (strongest) show(strongest[1]);
    $("#status").textContent = `${result.tokens.length} tokens; click one` +
      (result.left_out ? ` · ${result.left_out} units firing on more than ${result.max_density} of tokens left out` : "");
  } catch (err) { $("#status").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
}

(async () => {
  const ds = await api("/api/datasets");
  const models = [...new Set(ds.filter(d => !d.remote).map(d => d.model))];
  $("#model").innerHTML = models.map(m => `<option>${esc(m)}</option>`).join("");
  const q = new URLSearchParams(location.search);
  if (q.get("model")) $("#model").value = q.get("model");
  if (q.get("text")) $("#text").value = q.get("text");
  if (q.get("max_density")) $("#max_density").value = q.get("max_density");
  $("#form").onsubmit = run;
  if (q.get("text")) run();
})();
