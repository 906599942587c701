"""An attribution graph as data: the node layout, the sparse adjacency and the logit targets (no hooks, no model).

Node order (circuit-tracer's, so indices mean the same in both tools):

    [selected features (in active-feature order) | errors: layer-major, n_layers × n_pos | embeddings: n_pos |
     logits: in target order]

The adjacency is stored sparse (COO: one entry per edge that is not exactly zero) with rows = targets and
columns = sources: `A[t, s]` is the direct effect of source s on target t. Structurally zero edges (a source after
its target's position or at/after its target's layer) are never stored, so memory grows with the edges that exist,
not with (nodes × active features) as a dense matrix does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Adjacency:
    """A sparse [n, n] matrix in COO form; `rows` are targets, `cols` sources."""

    rows: Tensor
    """[nnz] int64 target node index."""
    cols: Tensor
    """[nnz] int64 source node index."""
    vals: Tensor
    """[nnz] float32 edge weight A[row, col]."""
    n: int

    @classmethod
    def from_dense(cls, A: Tensor) -> Adjacency:
        r, c = A.nonzero(as_tuple=True)
        return cls(r, c, A[r, c].float(), A.shape[0])

    def to_dense(self) -> Tensor:
        A = torch.zeros(self.n, self.n, dtype=self.vals.dtype)
        A[self.rows, self.cols] = self.vals
        return A

    @property
    def nnz(self) -> int:
        return int(self.vals.numel())

    def select(self, keep: Tensor) -> Adjacency:
        """The entries where the [nnz] bool mask `keep` is true."""
        return Adjacency(self.rows[keep], self.cols[keep], self.vals[keep], self.n)

    def row_normalised_abs(self) -> Adjacency:
        """Â = |A| with every row scaled to sum 1 (all-zero rows stay zero)."""
        a = self.vals.abs().double()
        sums = torch.zeros(self.n, dtype=torch.float64).index_add_(0, self.rows, a)
        return Adjacency(self.rows, self.cols, a / sums[self.rows].clamp(min=1e-10), self.n)

    def vecmat(self, w: Tensor) -> Tensor:
        """w @ A for a [n] vector w: out[s] = Σ_t w[t] · A[t, s]."""
        out = torch.zeros(self.n, dtype=self.vals.dtype)
        return out.index_add_(0, self.cols, w.to(self.vals.dtype)[self.rows] * self.vals)

    def row_sums_over(self, col_mask: Tensor) -> Tensor:
        """[n]: Σ_{s in col_mask} A[t, s] for every row t."""
        m = col_mask[self.cols]
        return torch.zeros(self.n, dtype=self.vals.dtype).index_add_(0, self.rows[m], self.vals[m])


@dataclass
class Graph:
    """An attribution graph of one prompt: the unpruned adjacency over the selected nodes plus what names them."""

    prompt: str
    tokens: Tensor
    """[n_pos] token ids of the prompt (BOS first)."""
    token_strs: list[str]
    n_layers: int
    active_features: Tensor
    """[n_active, 3] (layer, position, feature index) of every active transcoder feature, sorted."""
    activation_values: Tensor
    """[n_active] their activations."""
    selected_features: Tensor
    """[n_features] indices into active_features of the features that are graph nodes, ascending."""
    adjacency: Adjacency
    """[n_nodes, n_nodes], rows = targets, in the node order of the module docstring."""
    logit_tokens: Tensor
    """[n_logits] vocabulary ids of the logit targets."""
    logit_strs: list[str]
    logit_probabilities: Tensor
    """[n_logits] the targets' probabilities (their weights in the influence)."""
    vocab_size: int = 0
    scan: str = ""
    """An identifier of the transcoders used (circuit-tracer's `scan`)."""
    model: str = ""
    info: dict = field(default_factory=dict)
    """Free-form facts about how the graph was computed (timings, counts), written to the JSON metadata."""

    # ---- node layout ---------------------------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return int(self.tokens.numel())

    @property
    def n_features(self) -> int:
        return int(self.selected_features.numel())

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.numel())

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def embed_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.embed_start + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_start + self.n_logits

    def logit_weights(self) -> Tensor:
        """[n_nodes] the logits' probabilities at the logit nodes, 0 elsewhere (w in the influence formula)."""
        w = torch.zeros(self.n_nodes, dtype=torch.float64)
        w[self.logit_start:] = self.logit_probabilities.double()
        return w

    def node_levels(self) -> Tensor:
        """[n_nodes] int64 each node's level (`node_levels`)."""
        return node_levels(self.active_features[self.selected_features, 0], self.n_layers, self.n_pos, self.n_logits)

    def error_mask(self) -> Tensor:
        m = torch.zeros(self.n_nodes, dtype=torch.bool)
        m[self.error_start:self.embed_start] = True
        return m

    def node_kind(self, i: int) -> str:
        """'feature', 'error', 'embedding' or 'logit'."""
        if i < self.error_start:
            return "feature"
        if i < self.embed_start:
            return "error"
        return "embedding" if i < self.logit_start else "logit"

    def feature(self, i: int) -> tuple[int, int, int, float]:
        """(layer, position, feature index, activation) of feature node i."""
        k = int(self.selected_features[i])
        layer, pos, idx = (int(v) for v in self.active_features[k])
        return layer, pos, idx, float(self.activation_values[k])

    def error(self, i: int) -> tuple[int, int]:
        """(layer, position) of error node i."""
        return divmod(i - self.error_start, self.n_pos)


def node_levels(feature_layers: Tensor, n_layers: int, n_pos: int, n_logits: int) -> Tensor:
    """[features | errors (layer-major) | embeddings | logits] int64 levels such that every edge goes up: a feature's
    layer, an error's layer, −1 for embeddings, n_layers for logits (a source writes at or after its layer, a target
    reads before it)."""
    return torch.cat([feature_layers.long(), torch.arange(n_layers).repeat_interleave(n_pos),
                      torch.full((n_pos,), -1), torch.full((n_logits,), n_layers)])
