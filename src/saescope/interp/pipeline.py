"""explain → simulate → score over a collated dataset; resumable; writes automated-interpretability JSONL.

Outputs under `<model root>/explanations/<dataset>/`:
    explanations.json        index → explanation (or failure), written as the explain phase goes
    <index>.jsonl            one NeuronSimulationResults line per unit (TDB/automated-interpretability schema)
    scores.json              index → scores (read by the viewer) + a summary

A run merges into these files: units it does not redo are kept byte for byte, `--overwrite` redoes only the selected
units, and a failed attempt never replaces an earlier success. Provenance is per unit (explainer or simulator,
model, time); the file-level "explainer" that older readers look for names the one backend behind every unit, or
"mixed: ..." (files written before per-unit provenance get their header's backend copied onto their units).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError
from saescope.interp import scoring
from saescope.interp.backends import Backend, BackendError, BackendGone, make_backend
from saescope.interp.classify import classify_scores
from saescope.interp.config import InterpConfig, InterpOptions, InterpResult, parse_indices
from saescope.interp.prompts import splits
from saescope.interp.schema import (
    NeuronSimulationResults,
    ScoredExplanation,
    ScoredSequenceSimulation,
    ScoredSimulation,
    SequenceSimulation,
)
from saescope.interp.simulate import simulate
from saescope.io import read_json, write_json
from saescope.records import NeuronId, is_activating, max_activation, read_unit_dict, record_dict, to_dict

log = logging.getLogger(__name__)


def resolve(cfg: InterpConfig) -> tuple[Path, str, dict[str, Any]]:
    root = Path(cfg.root)
    manifest_dir = next((p for p in [root, *root.parents] if (p / "manifest.json").is_file()), None)
    if manifest_dir is None:
        from saescope.sources import open_root

        data_root = open_root(cfg.root)  # a registry name, URL or TDB-layout folder (or a clear error)
        manifest_dir = next(p.parent for p in sorted(data_root.glob("*/manifest.json")))
    manifest = read_json(manifest_dir / "manifest.json", "collated manifest")
    paths = [d["path"] for d in manifest.get("datasets", [])]
    ds = cfg.dataset or (str(root.relative_to(manifest_dir)) if root != manifest_dir else "")
    if not ds:
        ds = next((p for p in paths if p.startswith("sae_latents")), paths[0] if paths else "")
    if ds not in paths:
        raise SaescopeError(f"{manifest_dir / 'manifest.json'}: no dataset '{ds}' (have {', '.join(paths)})")
    return manifest_dir, ds, manifest


def _read(manifest_dir: Path, ds: str, index: int, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    if entry is not None and entry.get("remote"):  # a dataset saescope did not write: local folder or fetched
        from saescope.sources import loads_checked, record_text

        return record_dict(loads_checked(record_text(manifest_dir, entry, index), f"{ds}/{index}.json"))
    try:
        return read_unit_dict(manifest_dir / ds, index)
    except FileNotFoundError:
        raise SaescopeError(f"{manifest_dir / ds}: no record {index}; re-run collate") from None


def _live_units(manifest_dir: Path, ds: str, entry: dict[str, Any], wanted: set[int] | None, limit: int) -> list[int]:
    """Units with a positive max activation, from summary.json, or for an external dataset without one by reading
    (fetching) the candidates' records."""
    path = manifest_dir / ds / "summary.json"
    if path.is_file() or not entry.get("remote"):
        units = read_json(path, "dataset summary")["units"]
        live = [u["index"] for u in units if (u.get("max_activation") or 0) > 0 and (wanted is None or u["index"] in wanted)]
        return live[:limit] if limit else live
    live = []
    for i in sorted(wanted) if wanted is not None else range(int(entry.get("units") or 0)):
        try:
            rec = _read(manifest_dir, ds, i, entry)
        except FileNotFoundError:
            continue
        if max_activation(rec["most_positive_activation_records"]) > 0:
            live.append(i)
            if limit and len(live) >= limit:
                break
    return live


def explain_unit(backend: Backend, rec: dict[str, Any], style: str) -> str:
    return backend.explain(splits(rec["most_positive_activation_records"], rec["random_sample"])["train"], style)


def score_unit(backend: Backend, rec: dict[str, Any], explanation: str) -> tuple[NeuronSimulationResults, dict[str, Any]]:
    parts = splits(rec["most_positive_activation_records"], rec["random_sample"])
    mx = max_activation(rec["most_positive_activation_records"])
    sims, methods = [], set()
    for r in parts["valid"]:
        pred, method = simulate(backend, explanation, r["tokens"])
        methods.add(method)
        c = scoring.correlation(r["activations"], pred)
        sims.append(ScoredSequenceSimulation(SequenceSimulation(r["tokens"], pred), r["activations"], c.score,
                                             scoring.rsquared(r["activations"], pred),
                                             scoring.absolute_dev_explained(r["activations"], pred)))
    true = [a for s in sims for a in s.true_activations]
    pred = [a for s in sims for a in s.simulation.expected_activations]
    allc = scoring.correlation(true, pred)
    n_top = len(parts["valid"]) - len(parts["valid_random"])
    rnd = sims[n_top:]
    rc = scoring.correlation([a for s in rnd for a in s.true_activations],
                             [a for s in rnd for a in s.simulation.expected_activations])
    # simulation-derived detection: does the simulator flag activating excerpts (max ≥ 0.3·max) and not the others?
    labels = [1 if is_activating(max(s.true_activations, default=0), mx) else 0 for s in sims]
    det = [1 if max(s.simulation.expected_activations, default=0) >= 1.0 else 0 for s in sims]
    # fuzzing: marked tokens are the truly active ones (positives) or random ones (negatives); is the marking right?
    fuzz_labels, fuzz_pred = [], []
    for s, y in zip(sims, labels):
        acts, sim = s.true_activations, s.simulation.expected_activations
        marked = [i for i, a in enumerate(acts) if is_activating(a, mx)] if y else list(range(0, len(acts), 4))
        fuzz_labels.append(y)
        fuzz_pred.append(1 if marked and sum(sim[i] for i in marked) / len(marked) >= 1.0 else 0)
    scored = ScoredSimulation(sims, allc.score, scoring.rsquared(true, pred), scoring.absolute_dev_explained(true, pred))
    result = NeuronSimulationResults(NeuronId(**{k: rec["neuron_id"][k] for k in ("neuron_index", "layer_index")}),
                                     [ScoredExplanation(explanation, scored)])
    scores_llm: dict[str, Any] = {}
    if backend.is_llm:  # delphi-style detection/fuzzing asked of the LLM itself
        try:
            scores_llm = classify_scores(backend, explanation, parts["valid"], mx)
        except BackendError as e:  # recorded as a failure of these two scores, never as a score
            scores_llm = {"llm_detection": None, "llm_fuzzing": None, "classify_failure": str(e)}
    rnd_true = [a for s in rnd for a in s.true_activations]
    # a unit that never fires (or fires alike everywhere) on the random excerpts has no random-only correlation
    random_only = None if len(set(rnd_true)) <= 1 else rc.score
    scores = {**scores_llm, "top_and_random": allc.score, "random_only": random_only,
              "detection": scoring.balanced_accuracy(labels, det), "fuzzing": scoring.balanced_accuracy(fuzz_labels, fuzz_pred),
              "constant_prediction": allc.constant, "method": ",".join(sorted(methods))}
    return result, scores


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _load_units(path: Path, what: str, header: str) -> dict[str, Any]:
    """index → entry of an explanations/scores file. Files written before provenance was kept per unit carry it
    once in a header (explanations.json "explainer", scores.json summary "simulator"): copied onto each unit."""
    if not path.exists():
        return {}
    data = read_json(path, what)
    if not isinstance(data, dict) or not isinstance(data.get("units"), dict):
        raise SaescopeError(f"{path}: {what} has no 'units' object; move it aside and re-run")
    old = (data.get("summary") or {}) if header == "simulator" else data
    units = data["units"]
    for v in units.values():
        if isinstance(v, dict) and header not in v and old.get(header):
            v[header] = old[header]
    return units


def _label(units: dict[str, Any], key: str) -> str:
    """The file-level name old readers look for: the one backend behind every unit, else all of them."""
    names = sorted({str(v.get(key)) for v in units.values() if v.get(key)})
    return names[0] if len(names) == 1 else ("mixed: " + ", ".join(names) if names else "")


def _merge(units: dict[str, Any], i: int, new: dict[str, Any], value: str) -> None:
    """Put unit i's new result in; a failed attempt never replaces an earlier success (it is noted beside it)."""
    old = units.get(str(i))
    if new.get("failure") and old and old.get(value) is not None and not old.get("failure"):
        old["last_failure"] = new["failure"]
        return
    units[str(i)] = new


def _write_expl(path: Path, expl: dict[str, Any]) -> None:
    write_json(path, {"explainer": _label(expl, "explainer"), "units": expl})


def run_interp(cfg: InterpConfig, hm: Any = None, do_explain: bool = True, do_score: bool = True) -> dict[str, Any]:
    """Explain and/or score the live units of one dataset, merged into its explanations.json / scores.json: units
    this run does not redo are kept as they are, each unit carries its own provenance (backend, model, time)."""
    from tqdm.auto import tqdm

    manifest_dir, ds, manifest = resolve(cfg)
    out = manifest_dir / "explanations" / ds
    entry = next(d for d in manifest["datasets"] if d["path"] == ds)
    opt = cfg.interp
    wanted = parse_indices(cfg.indices)
    live = _live_units(manifest_dir, ds, entry, wanted, opt.max_units)
    if not live:
        raise SaescopeError(f"{manifest_dir / ds}: no live units to explain (all max activations are 0)")
    expl_path, scores_path = out / "explanations.json", out / "scores.json"
    expl = _load_units(expl_path, "explanations file", "explainer")
    scores = _load_units(scores_path, "scores file", "simulator")
    if not do_explain and not any((expl.get(str(i)) or {}).get("explanation") for i in live):
        raise SaescopeError(f"{expl_path}: no explanations of these units to score; run `saescope explain` first")
    explainer = make_backend(opt.explainer, opt.base_url, opt.api_key_env, opt.timeout, opt.retries, hm) \
        if do_explain else None
    sim_name = opt.explainer if opt.simulator == "same" else opt.simulator
    simulator = (explainer if opt.simulator == "same" and explainer is not None else
                 make_backend(sim_name, opt.base_url, opt.api_key_env, opt.timeout, opt.retries, hm)) if do_score else None
    model = manifest.get("model")
    workers = max(1, opt.concurrency if (explainer or simulator).is_llm else 1)
    prov_e = lambda: {"explainer": opt.explainer, "prompt_style": opt.prompt_style, "model": model, "time": _now()}  # noqa: E731

    def score_with(i: int, rec: dict[str, Any], text: str, null_text: str | None) -> dict[str, Any]:
        """Score unit i's explanation (and another unit's, the null floor); writes its NeuronSimulationResults."""
        prov = {"explainer": expl[str(i)].get("explainer"), "simulator": sim_name, "model": model, "time": _now()}
        try:
            result, s = score_unit(simulator, rec, text)
        except BackendError as e:
            return {"explanation": text, "score": None, "failure": str(e), **prov}
        if opt.null_baseline and null_text is not None:
            try:
                s["null"] = score_unit(simulator, rec, null_text)[1]["top_and_random"]
            except BackendError:
                s["null"] = None
        import json

        from saescope.io import atomic_path

        with atomic_path(out / f"{i}.jsonl") as tmp:
            tmp.write_text(json.dumps(to_dict(result), ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
        return {"explanation": text, "score": s["top_and_random"], "scores": s, "failure": None, **prov}

    def explain_one(i: int, rec: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            rec = rec if rec is not None else _read(manifest_dir, ds, i, entry)
            return {"explanation": explain_unit(explainer, rec, opt.prompt_style), "failure": None, **prov_e()}
        except BackendError as e:
            return {"explanation": None, "failure": str(e), **prov_e()}

    def stale(i: int) -> bool:  # no score yet, a failed one, or one of an explanation since replaced
        s, e = scores.get(str(i)), expl.get(str(i)) or {}
        return cfg.overwrite or not s or s.get("score") is None or s.get("explanation") != e.get("explanation")

    todo_e = [i for i in live if cfg.overwrite or not (expl.get(str(i)) or {}).get("explanation")] if do_explain else []
    kept = len(live) - len(todo_e) if do_explain else 0
    new_ok: set[int] = set()
    llms = [b for b in {explainer, simulator} if b is not None and b.is_llm]
    try:
        if do_explain and do_score and workers == 1 and todo_e == live and all(stale(i) for i in live):
            # one pass, each record read once: unit p is scored when unit p+1's explanation (its null) is known; the
            # same scores as explaining everything first (the null of the last unit is the first one's explanation)
            pending: tuple[int, dict[str, Any]] | None = None
            first: str | None = None
            for n, i in enumerate(tqdm(live, desc=f"explain + score {ds}", unit="unit")):
                rec = _read(manifest_dir, ds, i, entry)
                res = explain_one(i, rec)
                _merge(expl, i, res, "explanation")
                if res["failure"]:
                    continue
                new_ok.add(i)
                text = res["explanation"]
                first = first if first is not None else text
                if pending is not None:
                    _merge(scores, pending[0], score_with(pending[0], pending[1], expl[str(pending[0])]["explanation"],
                                                          text), "score")
                pending = (i, rec)
                if n % 200 == 199:
                    _write_expl(expl_path, expl)
                    write_json(scores_path, {"units": scores})
            if pending is not None:
                only_one = len(new_ok) < 2
                _merge(scores, pending[0], score_with(pending[0], pending[1], expl[str(pending[0])]["explanation"],
                                                      None if only_one else first), "score")
            _write_expl(expl_path, expl)
            do_explain = False
        if do_explain:
            with ThreadPoolExecutor(workers) as pool:
                for n, (i, res) in enumerate(tqdm(zip(todo_e, pool.map(explain_one, todo_e)), total=len(todo_e),
                                                  desc=f"explain {ds}", unit="unit")):
                    _merge(expl, i, res, "explanation")
                    if not res["failure"]:
                        new_ok.add(i)
                    if n % 50 == 49:
                        _write_expl(expl_path, expl)
            _write_expl(expl_path, expl)
        if not do_score:
            return {"out": str(out), "explained": len(new_ok), "failed": len(todo_e) - len(new_ok), "kept": kept,
                    "kept_by": _label({k: v for k, v in expl.items() if int(k) in set(live) - set(todo_e)}, "explainer")}
        ok = [i for i in live if (expl.get(str(i)) or {}).get("explanation")]
        todo = [i for i in ok if stale(i)]
        other = sum(1 for i in ok if i not in todo and scores[str(i)].get("simulator") != sim_name)
        if other:
            log.warning("%s: kept %d scores by another simulator (%s); --overwrite true rescores them with %s", ds, other,
                        _label({str(i): scores[str(i)] for i in ok if i not in todo}, "simulator"), sim_name)

        def score_one(pos_i: tuple[int, int]) -> tuple[int, dict[str, Any]]:
            pos, i = pos_i
            other = expl[str(ok[(pos + 1) % len(ok)])]["explanation"] if len(ok) > 1 else None  # the null floor
            return i, score_with(i, _read(manifest_dir, ds, i, entry), expl[str(i)]["explanation"], other)
        with ThreadPoolExecutor(workers) as pool:
            pairs = [(ok.index(i), i) for i in todo]
            for n, (i, res) in enumerate(tqdm(pool.map(score_one, pairs), total=len(pairs), desc=f"score {ds}", unit="unit")):
                _merge(scores, i, res, "score")
                if n % 50 == 49:
                    write_json(scores_path, {"units": scores})
    except BackendGone as e:  # the server went away mid-run: keep every finished unit, then one line
        _write_expl(expl_path, expl)
        if do_score:
            write_json(scores_path, {"units": scores, "summary": _summary(ds, expl, scores, llms, out)})
        raise SaescopeError(str(e)) from None
    summ = _summary(ds, expl, scores, llms, out)
    write_json(scores_path, {"units": scores, "summary": summ})
    return summ


def _summary(ds: str, expl: dict[str, Any], scores: dict[str, Any], llms: list[Backend], out: Path) -> dict[str, Any]:
    """Over every unit of the file (this run's and kept ones); the backends named are those behind the units."""
    vals = [v["score"] for v in scores.values() if v.get("score") is not None]
    nulls = [v["scores"].get("null") for v in scores.values() if v.get("scores") and v["scores"].get("null") is not None]
    failures = [i for i, v in expl.items() if v.get("failure")] + [i for i, v in scores.items() if v.get("failure")]
    return {"dataset": ds, "explainer": _label(scores, "explainer"), "simulator": _label(scores, "simulator"),
            "units": len(scores),
            "mean_score": sum(vals) / len(vals) if vals else float("nan"),
            "fraction_ge_0.8": sum(v >= 0.8 for v in vals) / len(vals) if vals else float("nan"),
            "mean_null_score": sum(nulls) / len(nulls) if nulls else float("nan"),
            "constant_predictions": sum(1 for v in scores.values() if (v.get("scores") or {}).get("constant_prediction")),
            "failures": len(failures), "usage": {b.name: b.usage for b in llms}, "out": str(out)}


def check_backends(opt: InterpOptions) -> None:
    """Reach the OpenAI-compatible server(s) the options name, once (see OpenAIBackend.check); no other backend
    is built (an hf: model loads when it is used)."""
    for name in {opt.explainer, opt.simulator}:
        if name.startswith("openai:"):
            make_backend(name, opt.base_url, opt.api_key_env, opt.timeout, opt.retries)


def _offline(opt: InterpOptions) -> bool:
    return opt.explainer in ("baseline", "") and opt.simulator in ("baseline", "same", "")


def _run_quietly(cfg: InterpConfig) -> dict[str, Any]:
    import os

    os.environ["TQDM_DISABLE"] = "1"  # one progress line per dataset from the parent instead of interleaved bars
    return run_interp(cfg)


def run(cfg: InterpConfig, hm: Any = None) -> InterpResult:
    """Explain and score one dataset (see `run_interp`)."""
    return InterpResult.from_summary(run_interp(cfg, hm=hm))


def run_many(cfgs: list[InterpConfig], hm: Any = None) -> list[InterpResult]:
    """`run` over several datasets (see `run_interp_many`)."""
    return [InterpResult.from_summary(s) for s in run_interp_many(cfgs, hm=hm)]


def run_interp_many(cfgs: list[InterpConfig], hm: Any = None, workers: int = 0) -> list[dict[str, Any]]:
    """`run_interp` over several datasets, in order. The offline baseline is pure Python, so with more than one
    core the datasets run in that many processes (language-model backends already overlap their requests)."""
    import os

    workers = workers or min(len(cfgs), os.cpu_count() or 1)
    if workers <= 1 or not all(_offline(c.interp) for c in cfgs):
        return [run_interp(c, hm=hm) for c in cfgs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    def size(c: InterpConfig) -> int:  # bytes of records to read: the largest datasets start first
        manifest_dir, ds, _ = resolve(c)
        return sum(f.stat().st_size for f in (manifest_dir / ds).glob("*.*") if f.suffix in (".json", ".safetensors"))

    order = sorted(range(len(cfgs)), key=lambda i: -size(cfgs[i]))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {i: pool.submit(_run_quietly, cfgs[i]) for i in order}
        for i in tqdm(order, desc=f"explain + score ({workers} processes)", unit="dataset"):
            futures[i].result()
    return [futures[i].result() for i in range(len(cfgs))]
