"""explain → simulate → score over a collated dataset; resumable; writes automated-interpretability JSONL.

A run merges into the dataset's explanations.json, scores.json and <index>.jsonl files (`interp/outputs.py`):
units it does not redo are kept, `--overwrite` redoes only the selected units.
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
from saescope.interp.outputs import label, load_units, merge, now, summary, write_explanations, write_scores
from saescope.interp.prompts import splits
from saescope.interp.schema import (
    NeuronSimulationResults,
    ScoredExplanation,
    ScoredSequenceSimulation,
    ScoredSimulation,
    SequenceSimulation,
)
from saescope.interp.simulate import simulate
from saescope.io import read_json
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


VECTORISED = True
"""Run the offline baseline through `interp.offline` (False: unit by unit, the reference it is tested against)."""
CHUNK_UNITS = 50
"""Units read, explained and scored together (their records held in memory); the files are saved after each chunk."""


class _Run:
    """One dataset's explain and/or score run: its live units, the explanations and scores files merged into, the
    backends, and each unit's provenance (backend, model, time)."""

    def __init__(self, cfg: InterpConfig, hm: Any, do_explain: bool, do_score: bool) -> None:
        self.cfg, self.opt, self.do_explain, self.do_score = cfg, cfg.interp, do_explain, do_score
        self.manifest_dir, self.ds, manifest = resolve(cfg)
        self.out = self.manifest_dir / "explanations" / self.ds
        self.entry = next(d for d in manifest["datasets"] if d["path"] == self.ds)
        self.model = manifest.get("model")
        self.live = _live_units(self.manifest_dir, self.ds, self.entry, parse_indices(cfg.indices),
                                self.opt.max_units)
        if not self.live:
            raise SaescopeError(f"{self.manifest_dir / self.ds}: no live units to explain (all max activations are 0)")
        self.expl_path, self.scores_path = self.out / "explanations.json", self.out / "scores.json"
        self.expl = load_units(self.expl_path, "explanations file", "explainer")
        self.scores = load_units(self.scores_path, "scores file", "simulator")
        if not do_explain and not any((self.expl.get(str(i)) or {}).get("explanation") for i in self.live):
            raise SaescopeError(f"{self.expl_path}: no explanations of these units to score; run `saescope explain` "
                                "first")
        opt = self.opt
        self.explainer = make_backend(opt.explainer, opt.base_url, opt.api_key_env, opt.timeout, opt.retries, hm) \
            if do_explain else None
        self.sim_name = opt.explainer if opt.simulator == "same" else opt.simulator
        self.simulator = (self.explainer if opt.simulator == "same" and self.explainer is not None else
                          make_backend(self.sim_name, opt.base_url, opt.api_key_env, opt.timeout, opt.retries, hm)
                          ) if do_score else None
        self.llms = [b for b in {self.explainer, self.simulator} if b is not None and b.is_llm]
        self.workers = max(1, opt.concurrency if (self.explainer or self.simulator).is_llm else 1)
        self.todo_e = {i for i in self.live if self.needs_explanation(i)} if do_explain else set()
        self.vectorised = VECTORISED and all(b is None or b.name == "baseline"
                                             for b in (self.explainer, self.simulator))
        """The offline baseline alone: every unit at once (`interp.offline`), the same results."""
        self.tables: dict[str, dict[str, float]] = {}  # explanation → its lookup table, for those explained here
        self.explained: set[int] = set()  # explained anew by this run
        self.scored: set[int] = set()  # scored (or failed to score) by this run

    def needs_explanation(self, i: int) -> bool:
        return self.cfg.overwrite or not (self.expl.get(str(i)) or {}).get("explanation")

    def stale(self, i: int) -> bool:
        """No score yet, a failed one, or one of an explanation since replaced."""
        s, e = self.scores.get(str(i)), self.expl.get(str(i)) or {}
        return self.cfg.overwrite or not s or s.get("score") is None or s.get("explanation") != e.get("explanation")

    def read(self, i: int) -> dict[str, Any]:
        return _read(self.manifest_dir, self.ds, i, self.entry)

    def explain_one(self, i: int, rec: dict[str, Any]) -> dict[str, Any]:
        prov = {"explainer": self.opt.explainer, "prompt_style": self.opt.prompt_style, "model": self.model}
        try:
            text = explain_unit(self.explainer, rec, self.opt.prompt_style)
            return {"explanation": text, "failure": None, **prov, "time": now()}
        except BackendError as e:
            return {"explanation": None, "failure": str(e), **prov, "time": now()}

    def score_one(self, i: int, rec: dict[str, Any], null_text: str | None) -> dict[str, Any]:
        """Score unit i's explanation (and another unit's, the null floor); writes its NeuronSimulationResults."""
        import json

        from saescope.io import atomic_path

        text = self.expl[str(i)]["explanation"]
        prov = {"explainer": self.expl[str(i)].get("explainer"), "simulator": self.sim_name, "model": self.model,
                "time": now()}
        try:
            result, s = score_unit(self.simulator, rec, text)
        except BackendError as e:
            return {"explanation": text, "score": None, "failure": str(e), **prov}
        if self.opt.null_baseline and null_text is not None:
            try:
                s["null"] = score_unit(self.simulator, rec, null_text)[1]["top_and_random"]
            except BackendError:
                s["null"] = None
        if self.simulator.is_llm:  # the baseline's results are rebuilt on demand (outputs.simulation_results)
            with atomic_path(self.out / f"{i}.jsonl") as tmp:
                tmp.write_text(json.dumps(to_dict(result), ensure_ascii=False, allow_nan=False) + "\n",
                               encoding="utf-8")
        else:
            (self.out / f"{i}.jsonl").unlink(missing_ok=True)
        return {"explanation": text, "score": s["top_and_random"], "scores": s, "failure": None, **prov}

    def run(self) -> None:
        """One pass over the live units in chunks, each record read once: a chunk's units are explained, then each
        stale unit is scored once the next explained unit (its null) is known; the last one's null is the first's.
        The same scores as explaining every unit first, then scoring every unit."""
        from tqdm.auto import tqdm

        if self.vectorised:
            from saescope.interp import offline

            offline.run(self)
            return
        what = " + ".join(w for w, on in (("explain", self.do_explain), ("score", self.do_score)) if on)
        chunk = max(CHUNK_UNITS, 4 * self.workers)
        carried: tuple[int, dict[str, Any] | None] | None = None  # the last explained unit, its null still unknown
        first: str | None = None  # the first explained unit's explanation
        n_ok = 0
        with ThreadPoolExecutor(self.workers) as pool, tqdm(total=len(self.live), desc=f"{what} {self.ds}",
                                                            unit="unit") as bar:
            for start in range(0, len(self.live), chunk):
                units = self.live[start:start + chunk]
                recs = self.explain_chunk(pool, units)
                if self.do_score:
                    ok = [i for i in units if (self.expl.get(str(i)) or {}).get("explanation")]
                    n_ok += len(ok)
                    first = first if first is not None or not ok else self.expl[str(ok[0])]["explanation"]
                    queue = ([carried] if carried else []) + [(i, recs.get(i)) for i in ok]
                    pairs = [(u, rec, self.expl[str(nxt)]["explanation"])
                             for (u, rec), (nxt, _) in zip(queue, queue[1:])]
                    carried = queue[-1] if queue else None
                    self.score_all(pool, pairs)
                self.save()
                bar.update(len(units))
            if carried is not None:
                self.score_all(pool, [(carried[0], carried[1], first if n_ok > 1 else None)])

    def explain_chunk(self, pool: ThreadPoolExecutor, units: list[int]) -> dict[int, dict[str, Any]]:
        """Explain the chunk's units that need it; returns the records read (index → record)."""
        todo = [i for i in units if i in self.todo_e]
        recs = {i: self.read(i) for i in todo}
        for i, res in zip(todo, pool.map(lambda i: self.explain_one(i, recs[i]), todo)):
            merge(self.expl, i, res, "explanation")
            if not res["failure"]:
                self.explained.add(i)
        return recs

    def score_all(self, pool: ThreadPoolExecutor, pairs: list[tuple[int, dict[str, Any] | None, str | None]]) -> None:
        """Score each stale (unit, its record or None: read now, null explanation)."""
        todo = [(i, rec, null) for i, rec, null in pairs if self.stale(i)]

        def one(job: tuple[int, dict[str, Any] | None, str | None]) -> dict[str, Any]:
            i, rec, null = job
            return self.score_one(i, rec if rec is not None else self.read(i), null)
        for (i, _, _), res in zip(todo, pool.map(one, todo)):
            merge(self.scores, i, res, "score")
            self.scored.add(i)

    def save(self, final: bool = False) -> None:
        write_explanations(self.expl_path, self.expl)
        if self.do_score:
            write_scores(self.scores_path, self.scores,
                         summary(self.ds, self.expl, self.scores, self.llms, self.out) if final else None)

    def report(self) -> dict[str, Any]:
        """Explain only: what was explained, failed and kept; with scores: the summary over the file."""
        if not self.do_score:
            kept = set(self.live) - self.todo_e
            return {"out": str(self.out), "explained": len(self.explained),
                    "failed": len(self.todo_e) - len(self.explained), "kept": len(kept) if self.do_explain else 0,
                    "kept_by": label({k: v for k, v in self.expl.items() if int(k) in kept}, "explainer")}
        kept = {str(i): self.scores[str(i)] for i in self.live
                if i not in self.scored and str(i) in self.scores and (self.expl.get(str(i)) or {}).get("explanation")}
        other = sum(1 for v in kept.values() if v.get("simulator") != self.sim_name)
        if other:
            log.warning("%s: kept %d scores by another simulator (%s); --overwrite true rescores them with %s",
                        self.ds, other, label(kept, "simulator"), self.sim_name)
        summ = summary(self.ds, self.expl, self.scores, self.llms, self.out)
        write_scores(self.scores_path, self.scores, summ)
        return summ


def run_interp(cfg: InterpConfig, hm: Any = None, do_explain: bool = True, do_score: bool = True) -> dict[str, Any]:
    """Explain and/or score the live units of one dataset, merged into its explanations.json / scores.json: units
    this run does not redo are kept as they are, each unit carries its own provenance (backend, model, time)."""
    job = _Run(cfg, hm, do_explain, do_score)
    try:
        job.run()
    except BackendGone as e:  # the server went away mid-run: keep every finished unit, then one line
        job.save(final=True)
        raise SaescopeError(str(e)) from None
    return job.report()


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
