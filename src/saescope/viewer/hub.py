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
    from saescope.units import UnitSet, WriteDirection

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
        from saescope.explore import search_source

        if model in self._search:
            return self._search[model]
        hm = self.model(model)
        out = []
        for d in self.data.manifest(model).get("datasets", []):
            ds = parse_dataset(model, d["path"].split("/"))
            if d.get("by_token_pair") and ds.unit_type == "sae_latents":
                continue
            out.append(search_source(d["path"], self.units(ds).group(hm), self.data.summary(ds)["units"],
                                     self.data.explanations(ds)))
        with self._lock:
            self._search[model] = out
        return out

    def units(self, ds: DatasetRef) -> UnitSet:
        """A dataset's units, with its SAE loaded for SAE datasets (a by-token-pair dataset reads the same SAE by
        token at attn_out)."""
        from saescope.units import KINDS, UnitSet

        if not KINDS[ds.unit_type].dictionary:
            return UnitSet(ds.unit_type, ds.layer)
        sae, entry = self.sae(ds)
        hp = f"attn_out.{ds.layer}" if entry.get("by_token_pair") else entry["hookpoints"][0]
        return UnitSet(ds.unit_type, ds.layer, ds.name, sae, hp, entry["source"])

    def write_direction(self, ds: DatasetRef, index: int) -> WriteDirection:
        """Unit `index`'s write direction (NotFound past the dataset's units; a unit without one: SaescopeError)."""
        from saescope.errors import SaescopeError

        try:
            return self.units(ds).write_direction(self.model(ds.model), index)
        except IndexError as e:
            raise NotFound(str(e) or f"unit {index}") from None
        except ValueError as e:
            raise SaescopeError(str(e)) from None

    def debug_saes(self, model: str, paths: list[str] | None) -> tuple[dict[str, BaseSAE], dict[str, str]]:
        """({hookpoint: SAE}, {hookpoint: dataset name}) for the debugger: the given SAE dataset paths, or every SAE
        dataset of the model collated by token."""
        wanted = paths if paths is not None else [d["path"] for d in self.data.manifest(model)["datasets"]
                                                  if d["unit_type"] == "sae_latents" and not d.get("by_token_pair")]
        saes, names = {}, {}
        for path in wanted:
            ds = parse_dataset(model, path.strip("/").split("/"))
            sae, entry = self.sae(ds)
            saes[entry["hookpoints"][0]], names[entry["hookpoints"][0]] = sae, ds.name
        return saes, names

    def sae(self, ds: DatasetRef) -> tuple[BaseSAE, dict[str, Any]]:
        from saescope.sae import load_sae

        entry = next((d for d in self.data.manifest(ds.model)["datasets"] if d["path"] == ds.path), None)
        if entry is None or not entry.get("source"):
            raise NotFound("this dataset does not record where its SAE is")
        with self._lock:
            if ds.unit_type == "transcoder_latents":  # the source is the set's folder: this layer's dictionary
                key = ("layer", entry["source"], ds.layer)
                if key not in self._saes:
                    from saescope.sae.transcoder_io import load_transcoders

                    self._saes[key] = load_transcoders(entry["source"]).eval().layer_dictionary(ds.layer)  # type: ignore[index]
                return self._saes[key], entry  # type: ignore[index]
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
