"""The viewer's ASGI app: static page + a small JSON API over a collated data root.

API (all JSON):
    GET  /api/datasets                                   every dataset in every <model>/manifest.json
    GET  /api/units/{model}/{dataset}?offset&limit&sort&desc&q    one page of the unit table (from summary.json)
    GET  /api/record/{model}/{dataset}/{index}           record + summary row + prev/next + explanation
    GET  /api/simulation/{model}/{dataset}/{index}       the unit's scored simulation (NeuronSimulationResults)
    GET  /api/logit_lens/{model}/{dataset}/{index}       top/bottom output tokens of the unit's write direction
    POST /api/probe  {model, dataset, index, text}        the unit's activations on a prompt, normalised by its max
    POST /api/debug  {model, prompt, target, distractor, ablate, trace}   ranked nodes behind a next token (/debug)
    POST /api/steer  {model, dataset, index, prompt, strength, tokens}     greedy continuation, unsteered and steered
    GET  /api/neighbours/{model}/{dataset}/{index}       nearest latents by decoder cosine, co-active latents
    POST /api/search {model, text}                       per token, the units of every dataset that fire most (/search)
    GET  /api/graphs, /api/graph/{slug}, POST /api/graph/{slug}/intervene   attribution graphs (`graph_routes.py`)
`{dataset}` is `mlp_neurons/<layer>`, `attention_heads/<layer>` or `sae_latents/<sae>/<layer>`. The model behind
the endpoints that run it, and their request bodies, live in `viewer/hub.py`; what the endpoints compute, in
`saescope.explore` (routes parse, call, serialise).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response

from saescope.errors import NotFoundError, SaescopeError
from saescope.viewer.data import SAFE, BrokenFile, DataRoot, DatasetRef, NotFound, parse_dataset
from saescope.viewer.graph_routes import add_graph_routes
from saescope.viewer.hub import DebugRequest, ModelHub, Probe, SearchRequest, SteerRequest

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from saescope.viewer.config import ViewConfig, ViewResult

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(root: str | Path, model: str | None = None, preload: bool = False) -> FastAPI:
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    data = DataRoot(root)
    hub = ModelHub(data, model)
    if preload:  # records render at once; the model behind the probe, lens, steering and search loads meanwhile
        threading.Thread(target=hub.preload, daemon=True, name="model-preload").start()
    # docs_url=None: FastAPI's Swagger page loads from a CDN; /api/docs renders the schema offline instead
    app = FastAPI(title="saescope viewer", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_errors(app)
    _add_pages(app)
    add_graph_routes(app, data, hub)
    _add_records(app, data)
    _add_unit_models(app, data, hub)
    _add_text_models(app, data, hub)
    return app


def ds_of(model: str, dataset: str) -> DatasetRef:
    return parse_dataset(model, dataset.strip("/").split("/"))


def _add_errors(app: FastAPI) -> None:
    """Errors as JSON: NotFound / NotFoundError 404, BrokenFile 422, any other SaescopeError (bad input) 400."""

    @app.exception_handler(NotFound)
    async def not_found(_: Request, e: NotFound) -> JSONResponse:
        return JSONResponse({"detail": f"not found: {e}"}, status_code=404)

    @app.exception_handler(BrokenFile)
    async def broken(_: Request, e: BrokenFile) -> JSONResponse:
        return JSONResponse({"detail": f"broken file: {e}"}, status_code=422)

    @app.exception_handler(NotFoundError)
    async def missing(_: Request, e: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": f"not found: {e}"}, status_code=404)

    @app.exception_handler(SaescopeError)
    async def bad_request(_: Request, e: SaescopeError) -> JSONResponse:
        """The explore functions' one-line errors about a request's fields."""
        return JSONResponse({"detail": str(e)}, status_code=400)


PAGES = {"/api/docs": "apidocs.html", "/debug": "debug.html", "/search": "search.html", "/graph": "graph.html"}
"""The pages besides the neuron viewer (index.html, also at /u/<model>/<dataset>/<index>)."""


def _static_page(name: str) -> Callable[[], FileResponse]:
    def page() -> FileResponse:
        return FileResponse(STATIC / name)
    return page


def _add_pages(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    @app.get("/u/{rest:path}", include_in_schema=False)
    def page(rest: str = "") -> FileResponse:
        return FileResponse(STATIC / "index.html")

    for url, name in PAGES.items():
        app.add_api_route(url, _static_page(name), methods=["GET"], include_in_schema=False)


def _add_records(app: FastAPI, data: DataRoot) -> None:
    """The data root's datasets, unit tables and records (no model)."""

    @app.get("/api/datasets")
    def datasets() -> list[dict[str, Any]]:
        return data.datasets()

    @app.get("/api/units/{model}/{dataset:path}")
    def units(model: str, dataset: str, offset: int = 0, limit: int = 100, sort: str = "index", desc: bool = False,
              q: str = "", min_density: float | None = None, min_score: float | None = None, hide_dead: bool = False,
              hide_constant: bool = False) -> dict[str, Any]:
        """One page of the unit table; `q` searches explanations and top tokens; filters by density, score, dead
        units (max activation 0) and constant simulator predictions (scored 0 by definition: flagged `constant`)."""
        from saescope.explore import TableQuery, unit_table

        ds = ds_of(model, dataset)
        s = data.summary(ds)
        query = TableQuery(offset, limit, sort, desc, q, min_density, min_score, hide_dead, hide_constant)
        return {**unit_table(s["units"], data.explanations(ds), query),
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

    @app.get("/api/simulation/{model}/{dataset:path}/{index}")
    def simulation(model: str, dataset: str, index: int) -> Response:
        """The unit's scored simulation (per valid excerpt: tokens, predicted and true activations, scores)."""
        text = data.simulation_text(ds_of(model, dataset), index)
        if text is None:
            raise NotFound(f"no scored explanation of unit {index}")
        return Response(content=text, media_type="application/json")


def _add_unit_models(app: FastAPI, data: DataRoot, hub: ModelHub) -> None:
    """What one unit does in the model: logit lens, live probe, steering, neighbours."""

    @app.get("/api/logit_lens/{model}/{dataset:path}/{index}")
    def logit_lens(model: str, dataset: str, index: int, k: int = 10) -> dict[str, Any]:
        """The unit's top and bottom output tokens, as logit changes when it fires at its max (`explore.unit_lens`)."""
        from saescope.explore import unit_lens

        ds = ds_of(model, dataset)
        if ds.unit_type == "attention_heads":
            raise NotFound("no logit lens for attention heads")
        hm = hub.model(model)
        target = hub.write_direction(ds, index)
        with hub.forward_lock:
            return unit_lens(hm, target, data.record(ds, index), k)

    @app.post("/api/probe")
    def probe(req: Probe) -> dict[str, Any]:
        """The unit's activations on a prompt, and normalised by its collated max (`explore.probe`)."""
        from saescope.explore import probe
        from saescope.explore.probing import check_probe

        ds = ds_of(req.model, req.dataset)
        check_probe(req.text)  # before the model loads
        hm = hub.model(req.model)
        group = hub.units(ds).group(hm)  # pair datasets: the same SAE's latents by token
        if not 0 <= req.index < group.n_units:
            raise NotFound(f"unit {req.index}")
        record = data.record(ds, req.index)
        with hub.forward_lock:
            return probe(hm, group, req.index, req.text, record)

    @app.post("/api/steer")
    def steer_api(req: SteerRequest) -> dict[str, Any]:
        """Greedy continuation of a prompt with the unit's write direction added at `strength` (and without)."""
        from saescope.explore import steer
        from saescope.explore.steering import check_steer

        ds = ds_of(req.model, req.dataset)
        check_steer(req.prompt, req.strength, req.tokens)
        hm = hub.model(req.model)
        if ds.unit_type == "sae_latents" and hub.sae(ds)[1].get("by_token_pair"):
            raise SaescopeError("steer with the same SAE's by-token dataset")
        target = hub.write_direction(ds, req.index)
        with hub.forward_lock:
            return steer(hm, target, req.prompt, req.strength, req.tokens)

    @app.get("/api/neighbours/{model}/{dataset:path}/{index}")
    def neighbours(model: str, dataset: str, index: int, k: int = 10) -> dict[str, Any]:
        """Nearest latents by decoder cosine, and the latents co-active with this one on its top excerpts."""
        from saescope.explore import latent_neighbours

        ds = ds_of(model, dataset)
        if ds.unit_type not in ("sae_latents", "transcoder_latents"):
            raise NotFound("neighbours are for SAE and transcoder latents")
        sae, entry = hub.sae(ds)
        if not 0 <= index < sae.cfg.d_sae:
            raise NotFound(f"latent {index}")
        k, expl = max(1, min(k, 50)), data.explanations(ds)
        if entry.get("by_token_pair"):  # co-activation is by token: the same SAE's by-token dataset has it
            return latent_neighbours(sae, index, k, expl)
        hm = hub.model(model)
        with hub.forward_lock:
            return latent_neighbours(sae, index, k, expl, hm, entry["hookpoints"][0], data.record(ds, index))


def _add_text_models(app: FastAPI, data: DataRoot, hub: ModelHub) -> None:
    """What the model does on a text: search by inference, the debugger."""

    @app.post("/api/search")
    def search_api(req: SearchRequest) -> dict[str, Any]:
        """For every token of a text, the units of every collated dataset that fire most on it (relative to their
        collated max), with explanations."""
        from saescope.explore import search
        from saescope.explore.searching import check_search

        check_search(req.text, req.max_density)
        if not SAFE.match(req.model):
            raise NotFound("unknown model")
        hm = hub.model(req.model)
        sources = hub.search_sources(req.model)
        with hub.forward_lock:
            return search(hm, sources, req.text, max(1, min(req.per_token, 20)), max_density=req.max_density)

    @app.post("/api/debug")
    def debug_api(req: DebugRequest) -> dict[str, Any]:
        """Rank the nodes behind a next token (and ablate / trace); see `saescope.debug`."""
        from saescope.debug.explain import NodeNotes
        from saescope.explore import debug_request
        from saescope.explore.debugging import check_debug

        check_debug(req.prompt, req.by)
        hm = hub.model(req.model)
        saes, names = hub.debug_saes(req.model, req.saes)
        return debug_request(hm, req.prompt, req.target, saes, names, NodeNotes(str(data.root / req.model), names),
                             distractor=req.distractor, ablate=req.ablate, trace=req.trace, pairs_for=req.pairs_for,
                             freeze_norms=req.freeze_norms, top=req.top, by=req.by, model_lock=hub.forward_lock)


def open_view(cfg: ViewConfig) -> ViewResult:
    """The data root `cfg.root` names (a folder, or records fetched into the cache for a URL or registry name),
    checked, as `view` will serve it."""
    from saescope.sources import open_root
    from saescope.viewer.config import ViewResult

    root = open_root(cfg.root, cfg.unit_type)
    n = len(DataRoot(root).check())
    return ViewResult(Path(root), cfg.root, str(root) != cfg.root, n, f"http://{cfg.view.host}:{cfg.view.port}/")


def run(cfg: ViewConfig) -> ViewResult:
    """`saescope view`: serve the viewer until interrupted."""
    res = open_view(cfg)
    serve(res.root, cfg.view.host, cfg.view.port, cfg.model or None)
    return res


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 8000, model: str | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(root, model, preload=True), host=host, port=port, log_level="warning")
