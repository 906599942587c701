"""What the viewer's API runs on: the model (and SAEs) loaded once, in the background at start-up, with one lock
around every forward pass, and the request bodies of the endpoints that run the model."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from saescope.viewer.data import DataRoot, DatasetRef, NotFound, parse_dataset

if TYPE_CHECKING:  # pragma: no cover
    from saescope.models import HookedModel
    from saescope.sae import BaseSAE
    from saescope.units import UnitSet

log = logging.getLogger(__name__)


class ModelHub:
    """Loads the model (and SAEs) behind the live probe and logit lens on first use, once."""

    def __init__(self, data: DataRoot, model_override: str | None = None) -> None:
        self.data, self.override = data, model_override
        self._models: dict[str, Any] = {}
        self._saes: dict[str, Any] = {}
        self._search: dict[str, list[Any]] = {}  # model → its search sources, built once
        self._lock = threading.Lock()
        self.forward_lock = threading.RLock()
        """Held around every forward pass: hooks are registered on the shared model, so two requests running it at
        once (a steering generate and a probe's early-stopping capture) would see each other's hooks."""

    def model(self, model: str) -> HookedModel:
        from saescope.models import load_model

        with self._lock:
            if model not in self._models:
                spec = self.override or self.data.manifest(model).get("model_spec") or model
                self._models[model] = load_model(spec)
            return self._models[model]

    def graph_model(self, name: str, spec: str) -> HookedModel:
        """The model a graph was made with: the collated model of that name if the data root has it (one copy in
        memory), else the graph's model spec, loaded once."""
        from saescope.models import load_model

        try:
            self.data.manifest(name)
            return self.model(name)
        except NotFound:
            pass
        with self._lock:
            key = "spec:" + spec
            if key not in self._models:
                self._models[key] = load_model(self.override or spec)
            return self._models[key]

    def transcoders(self, path: str, n_layers: int, write_point: str) -> Any:
        """A graph's transcoders as `saescope.graph` reads them, loaded once per (folder, write point)."""
        from saescope.graph.transcoders import from_transcoder_set
        from saescope.sae.transcoder_io import load_transcoders

        with self._lock:
            key = ("tc", path, write_point)
            if key not in self._saes:
                ts = load_transcoders(path).eval()
                self._saes[key] = from_transcoder_set(ts, n_layers, write_point=write_point)  # type: ignore[index]
            return self._saes[key]  # type: ignore[index]

    def preload(self) -> None:
        """Load the first collated model in the background at start-up, so pages that need it do not wait."""
        try:
            models = [m["model"] for m in self.data.manifests() if not m.get("external")]
            if models:
                self.model(models[0])
                log.info("viewer: model %s loaded", models[0])
        except Exception as e:  # noqa: BLE001 - a page that needs the model reports the error itself
            log.warning("viewer: background model load failed (%s)", e)

    def search_sources(self, model: str) -> list[Any]:
        """Every dataset of a model that search by inference reads (token-pair SAE copies left out), built once."""
        from saescope.viewer.explore import SearchSource

        if model in self._search:
            return self._search[model]
        import torch

        hm = self.model(model)
        out = []
        for d in self.data.manifest(model).get("datasets", []):
            ds = parse_dataset(model, d["path"].split("/"))
            if d.get("by_token_pair") and ds.unit_type == "sae_latents":
                continue
            group = self.units(ds).group(hm)
            units = self.data.summary(ds)["units"]
            mx, dens = torch.zeros(group.n_units), torch.zeros(group.n_units)
            for u in units:
                if u["index"] < group.n_units:
                    mx[u["index"]] = float(u.get("max_activation") or 0.0)
                    dens[u["index"]] = float(u.get("density") or 0.0)
            expl = {int(i): e.get("explanation") for i, e in self.data.explanations(ds).items() if e.get("explanation")}
            out.append(SearchSource(d["path"], group, mx, expl, dens))
        with self._lock:
            self._search[model] = out
        return out

    def units(self, ds: DatasetRef) -> UnitSet:
        """A dataset's units, with its SAE loaded for SAE datasets (a by-token-pair dataset reads the same SAE by
        token at attn_out)."""
        from saescope.units import UnitSet

        from saescope.units import KINDS

        if not KINDS[ds.unit_type].dictionary:
            return UnitSet(ds.unit_type, ds.layer)
        sae, entry = self.sae(ds)
        hp = f"attn_out.{ds.layer}" if entry.get("by_token_pair") else entry["hookpoints"][0]
        return UnitSet(ds.unit_type, ds.layer, ds.name, sae, hp, entry["source"])

    def sae(self, ds: DatasetRef) -> tuple[BaseSAE, dict[str, Any]]:
        from saescope.sae import load_sae

        entry = next((d for d in self.data.manifest(ds.model)["datasets"] if d["path"] == ds.path), None)
        if entry is None or not entry.get("source"):
            raise NotFound("this dataset does not record where its SAE is")
        with self._lock:
            if entry["source"] not in self._saes:
                self._saes[entry["source"]] = load_sae(entry["source"]).eval()
            return self._saes[entry["source"]], entry


class SteerRequest(BaseModel):
    """POST /api/steer body: add `strength` × the unit's write direction at its hookpoint while generating."""

    model: str
    dataset: str
    index: int
    prompt: str
    strength: float
    tokens: int = 24


class SearchRequest(BaseModel):
    """POST /api/search body."""

    model: str
    text: str
    per_token: int = 5
    max_density: float = 0.1
    """Leave out units that fire on more than this fraction of tokens (1 keeps them all)."""


class Probe(BaseModel):
    """POST /api/probe body."""

    model: str
    dataset: str
    index: int
    text: str


class DebugRequest(BaseModel):
    """POST /api/debug body: explain the next token `target` (minus `distractor`) after `prompt`."""

    model: str
    prompt: str
    target: str
    distractor: str = ""
    saes: list[str] | None = None
    """SAE dataset paths to splice in (default: every SAE dataset of the model collated by token)."""
    ablate: dict[str, str] = {}
    """Node name → zero, mean or a number."""
    trace: str = ""
    """A node to trace upstream (its activation becomes the behaviour); heads through one side: head.L.h@t:q, :k or :v."""
    top: int = 30
    by: str = "act_grad"
    pairs_for: str = ""
    """A head (head.L.h): also return its pattern and A·∂B/∂A over the prompt's token pairs."""
    freeze_norms: str = "final"
    """none, final (the default, as TDB) or all: whose scale the backward pass holds constant (`saescope.debug`)."""
