"""A saescope run → Neuronpedia's export/import layout (the one its public dataset exports and its importer use).

    OUT/<model id>/<source id>/                source id = "<layer>-<source set>", e.g. 9-saescope-res-4k
        model.jsonl  release.jsonl  sourceset.jsonl  source.jsonl      one JSON object each
        features/batch-<n>.jsonl.gz      one Feature per line (maxActApprox, frac_nonzero, logit lens, neighbours)
        activations/batch-<n>.jsonl.gz   one Activation per top excerpt (tokens, values, maxValue, ...)
        explanations/batch-<n>.jsonl.gz  one Explanation per explained latent
        sae/                             the SAE in the SAELens layout (cfg.json, sae_weights.safetensors, ...)

Field names are Neuronpedia's own (camelCase where its database uses it, snake_case for the dashboard fields);
`FIELDS` lists them per file, and `read_export` reads an export back into records and explanations.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from saescope import validate
from saescope.errors import SaescopeError
from saescope.io import atomic_dir, atomic_path, read_json
from saescope.records import ActivationRecord, NeuronId, NeuronRecord, read_unit

log = logging.getLogger(__name__)

FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("id", "instruct", "displayNameShort", "displayName", "creatorId", "createdAt", "updatedAt"),
    "release": ("name", "description", "descriptionShort", "urls", "creatorNameShort", "creatorName", "creatorId",
                "createdAt"),
    "sourceset": ("modelId", "name", "creatorId", "createdAt", "creatorName", "releaseName", "description",
                  "visibility"),
    "source": ("modelId", "setName", "visibility", "dataset", "id", "num_prompts", "num_tokens_in_prompt",
               "hfRepoId", "hfFolderId", "creatorId"),
    "feature": ("modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox", "hasVector", "vector",
                "vectorLabel", "hookName", "topkCosSimIndices", "topkCosSimValues", "neuron_alignment_indices",
                "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices",
                "correlated_neurons_pearson", "correlated_neurons_l1", "correlated_features_indices",
                "correlated_features_pearson", "correlated_features_l1", "neg_str", "neg_values", "pos_str",
                "pos_values", "frac_nonzero", "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
                "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist"),
    "activation": ("id", "tokens", "modelId", "layer", "index", "maxValue", "maxValueTokenIndex", "minValue",
                   "values", "creatorId", "createdAt", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "lossValues",
                   "logitContributions", "binMin", "binMax", "binContains", "qualifyingTokenIndex", "dataIndex",
                   "dataSource"),
    "explanation": ("id", "modelId", "layer", "index", "description", "authorId", "embedding", "typeName",
                    "explanationModelName", "notes", "createdAt"),
}

CREATOR = "saescope"
DIGITS = 5  # SAEDashboard rounds exported values to 5 decimals


@dataclass
class NeuronpediaExportConfig:
    """Write a run's SAE latents (records, explanations, logit lens, neighbours) and the SAE itself in
    Neuronpedia's export layout."""

    run: str = "runs/default"
    """A `saescope run` output folder (holds saes/ and collated/)."""
    out: str = ""
    """Output folder (OUT/<model>/<source id>/...; default RUN/neuronpedia)."""
    sae: str = ""
    """Which SAEs (comma-separated names under saes/, e.g. resid_post); default every one with collated latents."""
    source_set: str = ""
    """Neuronpedia source-set name (default saescope-<hookpoint kind>-<width>, e.g. saescope-resid-post-4k)."""
    model_id: str = ""
    """Neuronpedia model id (default the collated model name)."""
    batch_size: int = 2048
    """Features per batch file."""
    logits: bool = True
    """Fill pos_str/neg_str with the latent's logit lens (loads the model)."""
    neighbours: int = 25
    """Decoder cosine neighbours per latent (topkCosSim)."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.at_least(self.batch_size, 1, "--batch_size", "features per batch file")
        validate.at_least(self.neighbours, 0, "--neighbours", "0 = none")
        validate.existing_dir(self.run, "RUN_DIR (--run)", "`saescope run` output folder")
        validate.not_a_file(self.out, "OUT (--out)")


def _id(*parts: Any) -> str:
    """A stable 25-character id ('c' + hex), as Neuronpedia's CUIDs are 25 characters long."""
    return "c" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24]


def _r(x: float) -> float:
    return round(float(x), DIGITS)


def _write_jsonl_gz(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=5) as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _activations(rec: NeuronRecord, model: str, source: str, now: str) -> list[dict[str, Any]]:
    out = []
    for k, r in enumerate(rec.most_positive_activation_records):
        values = [_r(v) for v in r.activations]
        if not values or max(values) <= 0:
            continue
        top = max(range(len(values)), key=values.__getitem__)
        out.append({"id": _id(model, source, rec.neuron_id.neuron_index, k), "tokens": list(r.tokens),
                    "modelId": model, "layer": source, "index": rec.neuron_id.neuron_index,
                    "maxValue": values[top], "maxValueTokenIndex": top, "minValue": min(values), "values": values,
                    "creatorId": CREATOR, "createdAt": now, "dfaValues": [], "dfaTargetIndex": None,
                    "dfaMaxValue": None, "lossValues": [], "logitContributions": None, "binMin": -1,
                    "binMax": values[top], "binContains": -1, "qualifyingTokenIndex": top, "dataIndex": None,
                    "dataSource": "saescope"})
    return out


def _lens(run: Path, sae: Any, hookpoint: str, k: int = 10) -> tuple[Any, Any]:
    """(top [F, k], bottom [F, k]) (values, token strings) of every latent's logit lens, in chunks."""
    import torch

    from saescope.models import load_model
    from saescope.units import residual_write
    from saescope.models.lens import logit_lens

    store = read_json(run / "store" / "manifest.json", "store manifest")
    hm = load_model(store.get("extra", {}).get("model_spec") or store["model"])
    pos, neg = [], []
    with torch.no_grad():
        for s in range(0, sae.cfg.d_sae, 256):
            logits = logit_lens(hm, *residual_write(hm, hookpoint, sae.W_dec[s:s + 256]))  # [n, V]
            pos.append(logits.topk(k, dim=-1))
            neg.append((-logits).topk(k, dim=-1))
    dec = lambda ids: [[hm.tokenizer.decode([int(i)]) for i in row] for row in ids.tolist()]  # noqa: E731
    top = (torch.cat([p.values for p in pos]).tolist(), dec(torch.cat([p.indices for p in pos])))
    bottom = ((-torch.cat([n.values for n in neg])).tolist(), dec(torch.cat([n.indices for n in neg])))
    return top, bottom


def _neighbours(sae: Any, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Each latent's k nearest decoder directions by cosine (itself excluded)."""
    import torch

    with torch.no_grad():
        W = torch.nn.functional.normalize(sae.W_dec.float(), dim=-1)  # [F, d]
        idx, val = [], []
        for s in range(0, W.shape[0], 1024):
            sim = W[s:s + 1024] @ W.T  # [n, F]
            sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -2.0
            t = sim.topk(min(k, W.shape[0] - 1), dim=-1)
            idx += t.indices.tolist()
            val += [[_r(v) for v in row] for row in t.values.tolist()]
    return idx, val


def export_neuronpedia(cfg: NeuronpediaExportConfig) -> list[Path]:
    from saescope.sae import load_sae

    run = Path(cfg.run)
    collated = sorted((run / "collated").glob("*/manifest.json"))
    if not collated:
        raise SaescopeError(f"{run}: no collated/<model>/manifest.json; run `saescope run` (or collate) first")
    manifest = read_json(collated[0], "collated manifest")
    mdir = collated[0].parent
    model = cfg.model_id or manifest["model"]
    wanted = {s.strip() for s in cfg.sae.split(",") if s.strip()}
    entries = [d for d in manifest["datasets"] if d["unit_type"] == "sae_latents" and not d.get("by_token_pair")
               and (run / "saes" / d["name"]).is_dir() and (not wanted or d["name"] in wanted)]
    if not entries:
        raise SaescopeError(f"{collated[0]}: no by-token SAE latent datasets{' named ' + cfg.sae if wanted else ''} "
                            f"with an SAE under {run / 'saes'}")
    now = datetime.now(timezone.utc).isoformat()
    written = []
    for d in entries:
        sae_dir = run / "saes" / d["name"]
        sae = load_sae(sae_dir)
        if getattr(sae.cfg, "lista_iters", 0):
            log.warning("%s has a LISTA encoder: its features, activations and explanations export as usual, but "
                        "the SAE under sae/ loads in saescope only (SAELens has no LISTA encoder); `saescope run "
                        "--resid_encoder linear` trains one it loads", sae_dir)
        hookpoint = (d.get("hookpoints") or [sae.cfg.metadata.get("hook_name", "")])[0]
        width = f"{sae.cfg.d_sae // 1024}k" if sae.cfg.d_sae % 1024 == 0 else str(sae.cfg.d_sae)
        source_set = cfg.source_set or re.sub(r"[^a-z0-9-]", "-", f"saescope-{d['name']}-{width}".lower())
        source = f"{d['layer']}-{source_set}"
        final = Path(cfg.out or run / "neuronpedia") / model / source
        validate.not_a_file(final, "OUT (--out)")
        with atomic_dir(final) as out:  # a crash leaves the previous export (or none), never half of one
            _export_one(cfg, run, mdir, manifest, d, sae_dir, sae, model, source, source_set, hookpoint, now, out)
        log.info("exported %s latents of %s to %s", sae.cfg.d_sae, d["name"], final)
        written.append(final)
    return written


def _export_one(cfg: NeuronpediaExportConfig, run: Path, mdir: Path, manifest: dict[str, Any], d: dict[str, Any],
                sae_dir: Path, sae: Any, model: str, source: str, source_set: str, hookpoint: str, now: str,
                out: Path) -> None:
    """One SAE's export into the folder `out` (a temporary one, renamed into place by the caller)."""
    _write_jsonl(out / "model.jsonl", [{"id": model, "instruct": model.endswith("-it"), "displayNameShort": model,
                                        "displayName": model, "creatorId": CREATOR, "createdAt": now,
                                        "updatedAt": now}])
    _write_jsonl(out / "release.jsonl", [{"name": source_set, "description": f"saescope SAEs on {model}",
                                          "descriptionShort": "saescope", "urls": [], "creatorNameShort": CREATOR,
                                          "creatorName": CREATOR, "creatorId": CREATOR, "createdAt": now}])
    _write_jsonl(out / "sourceset.jsonl", [{"modelId": model, "name": source_set, "creatorId": CREATOR,
                                            "createdAt": now, "creatorName": CREATOR, "releaseName": source_set,
                                            "description": f"{sae.cfg.architecture} SAE, {sae.cfg.d_sae} latents, "
                                                           f"k={sae.cfg.k}, on {hookpoint}",
                                            "visibility": "PUBLIC"}])
    _write_jsonl(out / "source.jsonl", [{"modelId": model, "setName": source_set, "visibility": "PUBLIC",
                                         "dataset": str(manifest.get("corpus", {})), "id": source,
                                         "num_prompts": manifest.get("excerpts"),
                                         "num_tokens_in_prompt": manifest.get("excerpt_len"), "hfRepoId": None,
                                         "hfFolderId": None, "creatorId": CREATOR}])
    summary = {u["index"]: u for u in read_json(mdir / d["path"] / "summary.json", "dataset summary")["units"]}
    scores_path = mdir / "explanations" / d["path"] / "scores.json"
    expl = read_json(scores_path)["units"] if scores_path.is_file() else {}
    explainer = read_json(mdir / "explanations" / d["path"] / "explanations.json").get("explainer", "unknown") \
        if (mdir / "explanations" / d["path"] / "explanations.json").is_file() else "unknown"
    top, bottom = _lens(run, sae, hookpoint) if cfg.logits else (([], []), ([], []))
    nb_idx, nb_val = _neighbours(sae, cfg.neighbours) if cfg.neighbours else ([], [])
    n = sae.cfg.d_sae
    for b, s in enumerate(range(0, n, cfg.batch_size)):
        feats, acts, expls = [], [], []
        for i in range(s, min(s + cfg.batch_size, n)):
            rec = read_unit(mdir / d["path"], i)
            a = _activations(rec, model, source, now)
            acts += a
            row = summary.get(i, {})
            feats.append({
                "modelId": model, "layer": source, "index": i, "creatorId": CREATOR, "createdAt": now,
                "maxActApprox": _r(rec.max_activation), "hasVector": False, "vector": [], "vectorLabel": None,
                "hookName": hookpoint,
                "topkCosSimIndices": nb_idx[i] if nb_idx else [], "topkCosSimValues": nb_val[i] if nb_val else [],
                "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
                "correlated_neurons_indices": [], "correlated_neurons_pearson": [], "correlated_neurons_l1": [],
                "correlated_features_indices": [], "correlated_features_pearson": [],
                "correlated_features_l1": [],
                "neg_str": bottom[1][i] if bottom[1] else [], "neg_values": [_r(v) for v in bottom[0][i]] if bottom[0] else [],
                "pos_str": top[1][i] if top[1] else [], "pos_values": [_r(v) for v in top[0][i]] if top[0] else [],
                "frac_nonzero": float(row.get("density") or 0.0),
                "freq_hist_data_bar_heights": [], "freq_hist_data_bar_values": [],
                "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
                "decoder_weights_dist": []})
            e = expl.get(str(i)) or {}
            if e.get("explanation"):
                by = e.get("explainer") or explainer  # per unit; older files only name it in their header
                expls.append({"id": _id(model, source, i, "explanation"), "modelId": model, "layer": source,
                              "index": i, "description": e["explanation"], "authorId": CREATOR,
                              "embedding": None, "typeName": "saescope-" + by.split(":")[0],
                              "explanationModelName": by,
                              "notes": f"score {e['score']:.3f} (top-and-random correlation)"
                              if e.get("score") is not None else None, "createdAt": now})
        _write_jsonl_gz(out / "features" / f"batch-{b}.jsonl.gz", feats)
        _write_jsonl_gz(out / "activations" / f"batch-{b}.jsonl.gz", acts)
        if expls:
            _write_jsonl_gz(out / "explanations" / f"batch-{b}.jsonl.gz", expls)
    (out / "sae").mkdir(parents=True, exist_ok=True)
    for f in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
        if (sae_dir / f).is_file():
            shutil.copyfile(sae_dir / f, out / "sae" / f)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_export(source_dir: str | Path) -> tuple[dict[int, NeuronRecord], dict[int, str], list[dict[str, Any]]]:
    """An export folder (OUT/<model>/<source id>) → (index → NeuronRecord of its top excerpts, index → explanation,
    features), checking every line's fields against `FIELDS` (a one-line error names the file and field)."""
    root = Path(source_dir)
    out: dict[str, list[dict[str, Any]]] = {"feature": [], "activation": [], "explanation": []}
    for kind, folder in (("feature", "features"), ("activation", "activations"), ("explanation", "explanations")):
        for path in sorted((root / folder).glob("batch-*.jsonl.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0])):
            for n, row in enumerate(_jsonl(path)):
                missing = [f for f in FIELDS[kind] if f not in row]
                if missing:
                    raise SaescopeError(f"{path}: line {n + 1} lacks field '{missing[0]}' of a Neuronpedia {kind}")
                out[kind].append(row)
    for kind in ("model", "release", "sourceset", "source"):
        for row in _jsonl(root / f"{kind}.jsonl"):
            missing = [f for f in FIELDS[kind] if f not in row]
            if missing:
                raise SaescopeError(f"{root / (kind + '.jsonl')}: lacks field '{missing[0]}'")
    layer = int(root.name.split("-")[0])
    records: dict[int, NeuronRecord] = {}
    for a in out["activation"]:
        i = int(a["index"])
        rec = records.setdefault(i, NeuronRecord(NeuronId(i, layer)))
        rec.most_positive_activation_records.append(ActivationRecord(a["values"], a["tokens"]))
    return records, {int(e["index"]): e["description"] for e in out["explanation"]}, out["feature"]
