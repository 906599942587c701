"""`saescope graph` options (light: no model)."""

from __future__ import annotations

from dataclasses import dataclass, field

from saescope.config import ModelConfig
from saescope.errors import SaescopeError


@dataclass
class GraphConfig:
    """Attribution graph of a prompt's next token: transcoder features, error nodes, embeddings and logits."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: str = ""
    """The prompt (BOS is prepended)."""
    transcoders: str = "runs/default/transcoders"
    """A transcoder folder with one transcoder per layer or a cross-layer transcoder: saescope's layout,
    circuit-tracer's (config.yaml) or Gemma Scope 2."""
    target: list[str] = field(default_factory=list)
    """Output tokens to explain (' Paris'); default: the most likely tokens up to 0.95 probability, at most 10."""
    node_threshold: float = 0.8
    """Keep the nodes that make up this fraction of the influence on the logits."""
    edge_threshold: float = 0.98
    """Keep the edges that make up this fraction of the edge influence."""
    max_feature_nodes: int = 7500
    """Feature nodes at most (taken in order of estimated influence); 0 = every active feature."""
    batch_size: int = 512
    """Features ranked per influence update (circuit-tracer's batch size; sets the order, not the memory)."""
    chunk: int = 64
    """Targets per backward pass (memory: chunk × layers × tokens × d_model floats)."""
    min_edge: float = 0.0
    """Keep only edges with |weight| > min_edge while computing (memory: the edges kept, not rows × sources; the
    pruning then normalises over what was kept). 0 keeps every non-zero edge, as circuit-tracer does."""
    write_point: str = "auto"
    """Where the transcoders write on models with a norm after the MLP (Gemma): after_norm (saescope's mlp_out.L),
    before_norm (circuit-tracer's mlp.hook_out, Gemma Scope 2) or auto (what the transcoder files say)."""
    out: str = "graph.json"
    """The graph JSON; its folder's graph-metadata.json lists it (slug = the file name without .json)."""

    def __post_init__(self) -> None:
        for name in ("node_threshold", "edge_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SaescopeError(f"--{name} {getattr(self, name)}: a fraction between 0 and 1")
        if not self.out.endswith(".json"):
            raise SaescopeError(f"--out {self.out}: the graph is one .json file (e.g. graphs/capital.json)")
        if self.write_point not in ("auto", "after_norm", "before_norm"):
            raise SaescopeError(f"--write_point {self.write_point}: auto, after_norm or before_norm")
        if self.min_edge < 0:
            raise SaescopeError(f"--min_edge {self.min_edge}: an absolute edge weight ≥ 0 (0 keeps every edge)")
        if self.chunk < 1 or self.batch_size < 1 or self.max_feature_nodes < 0:
            raise SaescopeError("--chunk and --batch_size must be ≥ 1, --max_feature_nodes ≥ 0")
