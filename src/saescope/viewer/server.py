"""The viewer's ASGI app: static page + a small JSON API over a collated data root.

API (all JSON):
    GET  /api/datasets                                   every dataset in every <model>/manifest.json
    GET  /api/units/{model}/{dataset}?offset&limit&sort&desc&q    one page of the unit table (from summary.json)
    GET  /api/record/{model}/{dataset}/{index}           record + summary row + prev/next + explanation
    GET  /api/logit_lens/{model}/{dataset}/{index}       top/bottom output tokens of the unit's write direction
    POST /api/probe  {model, dataset, index, text}        the unit's activations on a prompt, normalised by its max
    POST /api/debug  {model, prompt, target, distractor, ablate, trace}   ranked nodes behind a next token (/debug)
    POST /api/steer  {model, dataset, index, prompt, strength, tokens}     greedy continuation, unsteered and steered
    GET  /api/neighbours/{model}/{dataset}/{index}       nearest latents by decoder cosine, co-active latents
    POST /api/search {model, text}                       per token, the units of every dataset that fire most (/search)
    GET  /api/graphs, /api/graph/{slug}, POST /api/graph/{slug}/intervene   attribution graphs (`graph_routes.py`)
`{dataset}` is `mlp_neurons/<layer>`, `attention_heads/<layer>` or `sae_latents/<sae>/<layer>`. The model behind
the endpoints that run it, and their request bodies, live in `viewer/hub.py`.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response

from saescope.viewer.data import SAFE, BrokenFile, DataRoot, DatasetRef, NotFound, parse_dataset
from saescope.viewer.graph_routes import add_graph_routes
from saescope.viewer.hub import DebugRequest, ModelHub, Probe, SearchRequest, SteerRequest

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(root: str | Path, model: str | None = None, preload: bool = False) -> FastAPI:
    from fastapi import FastAPI, HTTPException
    from fastapi.staticfiles import StaticFiles
    data = DataRoot(root)
    hub = ModelHub(data, model)
    if preload:  # records render at once; the model behind the probe, lens, steering and search loads meanwhile
        threading.Thread(target=hub.preload, daemon=True, name="model-preload").start()
    # docs_url=None: FastAPI's Swagger page loads from a CDN; /api/docs renders the schema offline instead
    app = FastAPI(title="saescope viewer", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(NotFound)
    async def not_found(_: Request, e: NotFound) -> JSONResponse:
        return JSONResponse({"detail": f"not found: {e}"}, status_code=404)

    @app.exception_handler(BrokenFile)
    async def broken(_: Request, e: BrokenFile) -> JSONResponse:
        return JSONResponse({"detail": f"broken file: {e}"}, status_code=422)

    def ds_of(model: str, dataset: str) -> DatasetRef:
        return parse_dataset(model, dataset.strip("/").split("/"))

    @app.get("/", include_in_schema=False)
    @app.get("/u/{rest:path}", include_in_schema=False)
    def page(rest: str = "") -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/docs", include_in_schema=False)
    def api_docs() -> FileResponse:
        return FileResponse(STATIC / "apidocs.html")

    @app.get("/debug", include_in_schema=False)
    def debug_page() -> FileResponse:
        return FileResponse(STATIC / "debug.html")

    @app.get("/search", include_in_schema=False)
    def search_page() -> FileResponse:
        return FileResponse(STATIC / "search.html")

    add_graph_routes(app, data, hub)

    @app.post("/api/steer")
    def steer_api(req: SteerRequest) -> dict[str, Any]:
        """Greedy continuation of a prompt with the unit's write direction added at `strength` (and without)."""
        from saescope.viewer.explore import steer

        ds = ds_of(req.model, req.dataset)
        if not req.prompt.strip() or len(req.prompt) > 2000:
            raise HTTPException(400, "give a prompt of 1 to 2000 characters")
        if not -1e4 <= req.strength <= 1e4 or not 1 <= req.tokens <= 64:
            raise HTTPException(400, "strength within ±10000, tokens 1 to 64")
        hm = hub.model(req.model)
        if ds.unit_type == "sae_latents" and hub.sae(ds)[1].get("by_token_pair"):
            raise HTTPException(400, "steer with the same SAE's by-token dataset")
        try:
            target = hub.units(ds).write_direction(hm, req.index)
        except IndexError:
            raise NotFound(f"unit {req.index}") from None
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        with hub.forward_lock:
            return steer(hm, target, req.prompt, req.strength, req.tokens)

    @app.get("/api/neighbours/{model}/{dataset:path}/{index}")
    def neighbours(model: str, dataset: str, index: int, k: int = 10) -> dict[str, Any]:
        """Nearest latents by decoder cosine, and the latents co-active with this one on its top excerpts."""
        from saescope.viewer.explore import coactive, decoder_neighbours

        ds = ds_of(model, dataset)
        if ds.unit_type not in ("sae_latents", "transcoder_latents"):
            raise NotFound("neighbours are for SAE and transcoder latents")
        sae, entry = hub.sae(ds)
        if not 0 <= index < sae.cfg.d_sae:
            raise NotFound(f"latent {index}")
        k = max(1, min(k, 50))
        expl = data.explanations(ds)
        name = lambda i: (expl.get(i) or {}).get("explanation")  # noqa: E731
        out: dict[str, Any] = {"decoder": [{"index": i, "cosine": round(c, 4), "explanation": name(i)}
                                           for i, c in decoder_neighbours(sae, index, k)], "coactive": []}
        if not entry.get("by_token_pair"):
            hm = hub.model(model)
            rec = data.record(ds, index)
            texts = ["".join(r["tokens"]) for r in rec.get("most_positive_activation_records", [])[:12]
                     if r["activations"] and max(r["activations"]) > 0]
            excerpts = [hm.tokenizer(t, add_special_tokens=False)["input_ids"][:128] for t in texts]
            with hub.forward_lock:
                co = coactive(hm, sae, entry["hookpoints"][0], index, [e for e in excerpts if e], k)
            out["coactive"] = [{"index": i, "fraction": round(f, 4), "explanation": name(i)} for i, f in co]
        return out

    @app.post("/api/search")
    def search_api(req: SearchRequest) -> dict[str, Any]:
        """For every token of a text, the units of every collated dataset that fire most on it (relative to their
        collated max), with explanations."""
        from saescope.viewer.explore import search

        if not req.text.strip() or len(req.text) > 2000:
            raise HTTPException(400, "give a text of 1 to 2000 characters")
        if not SAFE.match(req.model):
            raise NotFound("unknown model")
        hm = hub.model(req.model)
        sources = hub.search_sources(req.model)
        if not 0 <= req.max_density <= 1:
            raise HTTPException(400, "max_density: a fraction from 0 to 1 (1 keeps every unit)")
        with hub.forward_lock:
            return search(hm, sources, req.text, max(1, min(req.per_token, 20)), max_density=req.max_density)

    @app.post("/api/debug")
    def debug_api(req: DebugRequest) -> dict[str, Any]:
        """Rank the nodes behind a next token (and ablate / trace); see `saescope.debug`."""
        return run_debug(data, hub, req)

    @app.get("/api/datasets")
    def datasets() -> list[dict[str, Any]]:
        return data.datasets()

    @app.get("/api/units/{model}/{dataset:path}")
    def units(model: str, dataset: str, offset: int = 0, limit: int = 100, sort: str = "index", desc: bool = False,
              q: str = "", min_density: float | None = None, min_score: float | None = None, hide_dead: bool = False,
              hide_constant: bool = False) -> dict[str, Any]:
        """One page of the unit table; `q` searches explanations and top tokens; filters by density, score, dead
        units (max activation 0) and constant simulator predictions (scored 0 by definition: flagged `constant`)."""
        ds = ds_of(model, dataset)
        s = data.summary(ds)
        scores = data.explanations(ds)
        rows = [{**r, "constant": bool(((scores.get(r["index"]) or {}).get("scores") or {}).get("constant_prediction"))}
                for r in s["units"]]
        if min_density is not None:
            rows = [r for r in rows if (r.get("density") or 0.0) >= min_density]
        if min_score is not None:
            rows = [r for r in rows if r.get("score") is not None and r["score"] >= min_score]
        if hide_dead:
            rows = [r for r in rows if (r.get("max_activation") or 0.0) > 0]
        if hide_constant:
            rows = [r for r in rows if not r["constant"]]
        if q:
            ql = q.lower()
            rows = [r for r in rows
                    if ql in (r.get("explanation") or "").lower() or ql in (r.get("top_token") or "").lower()]
        if sort not in ("index", "max_activation", "density", "mean", "variance", "score"):
            raise HTTPException(400, f"cannot sort by {sort!r}")
        rows = sorted(rows, key=lambda r: (r.get(sort) is None, r.get(sort) if r.get(sort) is not None else 0),
                      reverse=desc)
        if desc:  # keep units without a value last
            rows = [r for r in rows if r.get(sort) is not None] + [r for r in rows if r.get(sort) is None]
        limit = max(1, min(limit, 1000))
        return {"total": len(rows), "offset": offset, "units": rows[offset:offset + limit],
                "by_token_pair": s.get("by_token_pair", False), "scores_summary": data.scores_summary(ds)}

    @app.get("/api/record/{model}/{dataset:path}/{index}")
    def record(model: str, dataset: str, index: int) -> Response:
        ds = ds_of(model, dataset)
        if index < 0:
            raise NotFound(f"unit {index}")
        # read first: a dataset saescope did not write fetches the record now, and its summary row comes from it
        text = data.record_text(ds, index)  # validated JSON text; the page draws the histogram from it
        s = data.summary(ds)
        n = len(s["units"])
        if not 0 <= index < n:
            raise NotFound(f"unit {index}")
        row = s["units"][index]
        rest = {"max_activation": row.get("max_activation", 0.0), "summary": row,
                "by_token_pair": s.get("by_token_pair", False), "n_units": n, "prev": index - 1 if index > 0 else None,
                "next": index + 1 if index + 1 < n else None, "explanation": data.explanations(ds).get(index),
                "histogram": data.histogram(ds, index),
                "tokens": next((d.get("tokens") for d in data.manifest(ds.model).get("datasets", [])
                                if d.get("path") == ds.path), None) or data.manifest(ds.model).get("tokens")}
        # The record is passed through as its file's text: re-encoding ~10⁵ floats per request costs more than
        # everything else here.
        body = '{"record":' + text.strip() + "," + json.dumps(rest, allow_nan=False)[1:]
        return Response(content=body, media_type="application/json")

    @app.get("/api/logit_lens/{model}/{dataset:path}/{index}")
    def logit_lens(model: str, dataset: str, index: int, k: int = 10) -> dict[str, Any]:
        import torch

        from saescope.units import residual_write
        from saescope.models.lens import logit_lens, norm_scale

        ds = ds_of(model, dataset)
        if ds.unit_type == "attention_heads":
            raise NotFound("no logit lens for attention heads")
        hm = hub.model(model)
        try:
            target = hub.units(ds).write_direction(hm, index)
        except IndexError as e:
            raise NotFound(str(e)) from None
        write, mlp_layer = residual_write(hm, target.hookpoint, target.direction)
        # scaled to what a reader wants: the logit change when the unit fires at its max, with the norms dividing
        # by their typical scale on the unit's own top excerpts (a per-unit-of-activation lens is not in logits)
        tops = [r for r in (data.record(ds, index).get("most_positive_activation_records") or [])
                if r["activations"] and max(r["activations"]) > 0][:5]
        act = max((max(r["activations"]) for r in tops), default=0.0)
        with torch.no_grad(), hub.forward_lock:
            scale = norm_scale(hm, ["".join(r["tokens"]) for r in tops], mlp_layer) if act > 0 else float("nan")
        factor = act / scale if scale == scale and scale > 0 else 1.0
        with torch.no_grad():
            logits = logit_lens(hm, write, mlp_layer) * factor
            top, bottom = logits.topk(k), (-logits).topk(k)
        units = (f"logit change when the unit fires at its max ({act:.4g}), norms at their median scale on its top "
                 f"excerpts ({scale:.4g})" if factor != 1.0 else
                 "logits per unit of activation, the norms' 1/scale left out (the unit never fired)")
        tok = lambda ids: [hm.tokenizer.decode([int(i)]) for i in ids]  # noqa: E731
        return {"top": [{"token": t, "logit": float(v)} for t, v in zip(tok(top.indices), top.values)],
                "bottom": [{"token": t, "logit": -float(v)} for t, v in zip(tok(bottom.indices), bottom.values)],
                "units": units, "activation": act, "norm_scale": scale if scale == scale else None}

    @app.post("/api/probe")
    def probe(req: Probe) -> dict[str, Any]:
        import torch

        ds = ds_of(req.model, req.dataset)
        if not req.text.strip():
            raise HTTPException(400, "empty prompt")
        if len(req.text) > 4000:
            raise HTTPException(400, "prompt longer than 4000 characters")
        hm = hub.model(req.model)
        group = hub.units(ds).group(hm)  # pair datasets: the same SAE's latents by token
        if not 0 <= req.index < group.n_units:
            raise NotFound(f"unit {req.index}")
        ids = hm.tokenizer(req.text, add_special_tokens=False)["input_ids"][:256]
        bos = hm.tokenizer.bos_token_id
        full = torch.tensor([([bos] if bos is not None else [hm.tokenizer.eos_token_id]) + ids])
        with torch.no_grad(), hub.forward_lock:
            acts = group.extract(hm.run_with_cache(full, None, group.hookpoints))[req.index, 0].float()
        rec = data.record(ds, req.index)
        tops = rec.get("most_positive_activation_records") or []
        mx = max((max(r["activations"]) for r in tops if r["activations"]), default=0.0)
        values = acts.tolist()
        return {"tokens": hm.token_strings(ids), "activations": values, "max_activation": mx,
                "normalized": [max(v / mx, 0.0) if mx > 0 else 0.0 for v in values],
                "by_token_pair": group.by_token_pair}

    return app


DEBUG_MAX_TOKENS = 128
"""The longest prompt /debug takes. Its forward and backward hold the model lock (on gemma-3-270m, one CPU thread:
~4 s at 64 tokens, ~10 s at 256); the ranking that follows runs without it."""


def run_debug(data: DataRoot, hub: ModelHub, req: DebugRequest) -> dict[str, Any]:
    from fastapi import HTTPException

    from saescope.debug import debug
    from saescope.debug.explain import NodeNotes
    from saescope.errors import SaescopeError

    if len(req.prompt) > 4000:
        raise HTTPException(400, "prompt longer than 4000 characters")
    if req.by not in ("act_grad", "direct_effect"):
        raise HTTPException(400, "by: act_grad or direct_effect")
    hm = hub.model(req.model)
    manifest = data.manifest(req.model)
    wanted = req.saes if req.saes is not None else [
        d["path"] for d in manifest["datasets"] if d["unit_type"] == "sae_latents" and not d.get("by_token_pair")]
    saes, names = {}, {}
    for path in wanted:
        ds = parse_dataset(req.model, path.strip("/").split("/"))
        sae, entry = hub.sae(ds)
        saes[entry["hookpoints"][0]], names[entry["hookpoints"][0]] = sae, ds.name
    notes = NodeNotes(str(data.root / req.model), names)
    n_tokens = len(hm.tokenizer(req.prompt, add_special_tokens=False)["input_ids"])
    if n_tokens > DEBUG_MAX_TOKENS:
        raise HTTPException(400, f"prompt is {n_tokens} tokens; /debug takes at most {DEBUG_MAX_TOKENS} so that one "
                                 "request does not hold the model for every other page (`saescope debug` has no limit)")
    try:
        res = debug(hm, req.prompt, req.target, req.distractor, saes, ablate=req.ablate or None,
                    means=notes.means(req.ablate), trace=req.trace, pairs_for=req.pairs_for,
                    freeze_norms=req.freeze_norms, model_lock=hub.forward_lock)
    except SaescopeError as e:
        raise HTTPException(400, str(e)) from None
    out = res.to_json(res.nodes.top(max(1, min(req.top, 200)), by=req.by), notes)
    out["saes"] = [f"{names[h]} ({h})" for h in saes]
    return out


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 8000, model: str | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(root, model, preload=True), host=host, port=port, log_level="warning")
