"""Attribution: the edges of a prompt's graph, by batched backward passes through its local replacement model.

Edge weight A[t, s] = (source s's value) × ∂(target t)/∂(source s's write), through the frozen model
(`replacement.py`): a feature's value is its activation and its write its decoder row(s); an error node writes its
error vector, an embedding node its token embedding. Targets are feature pre-activations and demeaned logits
(logit_k − mean over the vocabulary). One row per target; rows are computed `chunk` at a time.

Order, as circuit-tracer's `attribute`: the logit rows first; then, while fewer than `max_feature_nodes` features
have rows, rank the features without a row by their influence on the logits through the rows so far (the partial
adjacency, normalised as in `prune.influence`), and compute the next `update_interval × batch_size` of them. The
features with rows are the graph's feature nodes. Rows are kept sparse (only non-zero edges, or only
|A| > min_edge), so memory grows with the edges, not with (rows × active features). Under torchrun the chunks of
target rows are split across ranks and their sparse rows gathered on every rank (the same graph as one process).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from saescope import distributed as dist
from saescope.debug.trace import prompt_ids, single_token
from saescope.graph.graph import Adjacency, Graph, node_levels
from saescope.graph.prune import influence
from saescope.graph.replacement import FrozenModel, Transcoders
from saescope.models import HookedModel

log = logging.getLogger(__name__)


@dataclass
class LogitTargets:
    ids: Tensor
    """[k] vocabulary ids."""
    probs: Tensor
    """[k] their probabilities at the last position."""
    vectors: Tensor
    """[k, d] demeaned unembedding columns W_U[:, id] − mean_v W_U[:, v]."""


def logit_targets(fm: FrozenModel, tokens: list[str] | None, max_n_logits: int = 10,
                  desired_logit_prob: float = 0.95) -> LogitTargets:
    """The user's tokens, or the most probable tokens until their cumulative probability first reaches
    `desired_logit_prob`, at most `max_n_logits`."""
    probs = torch.softmax(fm.clean.logits[-1].double(), -1).float()
    if tokens:
        ids = torch.tensor([single_token(fm.hm, t, "target")[0] for t in tokens])
    else:
        top_p, top_i = probs.topk(min(max_n_logits, probs.numel()))
        cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor(desired_logit_prob))) + 1
        ids = top_i[:cutoff]
    W_U = fm.W_U
    return LogitTargets(ids, probs[ids], (W_U[:, ids] - W_U.mean(1, keepdim=True)).T.contiguous())


def active_features(acts: list[Tensor]) -> tuple[Tensor, Tensor]:
    """([n, 3] (layer, position, index) of every non-zero activation, sorted; [n] their values)."""
    idx, vals = [], []
    for layer, a in enumerate(acts):  # a [T, F_layer]
        p, f = a.nonzero(as_tuple=True)
        idx.append(torch.stack([torch.full_like(p, layer), p, f], 1))
        vals.append(a[p, f])
    return torch.cat(idx), torch.cat(vals)


class SourceReader:
    """Turns the gradients of a batch of targets into rows over every source node: [active features | errors
    (layer-major) | embeddings]."""

    def __init__(self, fm: FrozenModel, active: Tensor, values: Tensor) -> None:
        self.fm, self.active, self.values = fm, active, values
        self.n_src = active.shape[0] + (fm.n_layers + 1) * fm.n_pos
        L = fm.n_layers
        self.bounds = torch.searchsorted(active[:, 0].contiguous(), torch.arange(L + 1))  # layer slices
        self.cache: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def _padded(self, layer: int, j: int) -> tuple[Tensor, Tensor]:
        """(D [T, K, d] activation × decoder rows of layer `layer`'s features into layer + j, padded per position;
        idx [T, K] their source index or −1)."""
        if (layer, j) in self.cache:
            return self.cache[(layer, j)]
        lo, hi = int(self.bounds[layer]), int(self.bounds[layer + 1])
        pos, feat = self.active[lo:hi, 1], self.active[lo:hi, 2]
        T = self.fm.n_pos
        counts = torch.bincount(pos, minlength=T)
        K = max(int(counts.max()), 1) if hi > lo else 1
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(hi - lo) - starts[pos]  # rank of each feature within its position
        idx = torch.full((T, K), -1, dtype=torch.long)
        idx[pos, slot] = torch.arange(lo, hi)
        D = torch.zeros(T, K, self.fm.d)
        D[pos, slot] = self.values[lo:hi, None] * self.fm.tc.W_dec[layer][feat, j]
        if self.fm.tc.W_dec[layer].shape[1] == 1:  # per-layer sets: small enough to keep
            self.cache[(layer, j)] = (D, idx)
        return D, idx

    def rows(self, G: list[Tensor], G_embed: Tensor) -> Tensor:
        """G[l] [B, T', d] (gradients at the MLP output slots of layers l < len(G)), G_embed [B, T', d] →
        [B, n_src]."""
        fm = self.fm
        B, T = G_embed.shape[:2]
        out = torch.zeros(B, self.n_src)
        for layer in range(min(len(G), fm.n_layers)):
            if self.bounds[layer] == self.bounds[layer + 1]:
                continue
            for j in range(fm.tc.W_dec[layer].shape[1]):
                if layer + j >= len(G):
                    break
                D, idx = self._padded(layer, j)
                e = torch.bmm(G[layer + j].transpose(0, 1), D[:T].transpose(1, 2))  # [T', B, K]
                valid = idx[:T] >= 0
                out[:, idx[:T][valid]] += e.permute(1, 0, 2)[:, valid]
        n_act, P = self.active.shape[0], fm.n_pos
        for layer, g in enumerate(G):
            out[:, n_act + layer * P: n_act + layer * P + T] = (g * fm.errors[layer, :T]).sum(-1)
        emb0 = n_act + fm.n_layers * P
        out[:, emb0: emb0 + T] = torch.einsum("btd,td->bt", G_embed, fm.clean.embed[:T])
        return out


class _Rows:
    """Computed rows, sparse: entries (row, source, weight) plus each row's node in the all-sources layout."""

    def __init__(self, n_src: int, min_edge: float) -> None:
        self.n_src, self.min_edge = n_src, min_edge
        self.r: list[Tensor] = []
        self.c: list[Tensor] = []
        self.v: list[Tensor] = []
        self.node: list[int] = []

    @staticmethod
    def sparse(dense: Tensor, min_edge: float) -> tuple[Tensor, Tensor, Tensor]:
        """[B, n_src] rows → (row, source, weight) of the entries with |weight| > min_edge."""
        b, s = (dense.abs() > min_edge).nonzero(as_tuple=True)
        return b.int(), s.int(), dense[b, s]

    def add_sparse(self, b: Tensor, s: Tensor, v: Tensor, nodes: list[int]) -> None:
        self.r.append(b + len(self.node))
        self.c.append(s)
        self.v.append(v)
        self.node += nodes

    def cat(self) -> tuple[Tensor, Tensor, Tensor]:
        """(row, source, weight) of every entry, grouped by row in the order the rows were added."""
        if not self.r:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0)
        if len(self.r) > 1:  # consolidate, so the next call concatenates only what was added since
            self.r, self.c, self.v = [torch.cat(self.r)], [torch.cat(self.c)], [torch.cat(self.v)]
        return self.r[0].long(), self.c[0].long(), self.v[0]

    def by_rows(self, order: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`cat()` with the rows taken in `order` (a permutation of the row numbers): each row's entries stay
        together and in source order, so no sort over the entries is needed."""
        r, c, v = self.cat()
        counts = torch.bincount(r, minlength=len(self.node))
        starts = torch.cumsum(counts, 0) - counts
        seg = counts[order]
        idx = torch.arange(r.numel()) + torch.repeat_interleave(starts[order] - (torch.cumsum(seg, 0) - seg), seg)
        return r[idx], c[idx], v[idx]

    def partial_influence(self, n_logits: int, probs: Tensor, levels: Tensor) -> Tensor:
        """Influence on the logits of every source through the rows so far (circuit-tracer's partial influence):
        p at the logit nodes, pushed through the row-normalised |rows| (`prune.influence`; `levels` [n_src +
        n_logits] the nodes' layers, so it is one sweep). [n_src + n_logits]."""
        node = torch.tensor(self.node, dtype=torch.long)
        r, c, v = self.by_rows(torch.argsort(levels[node], stable=True))  # the rows level by level: no sort
        n = self.n_src + n_logits
        A = Adjacency(node[r], c, v, n).row_normalised_abs()
        w = torch.zeros(n, dtype=torch.float64)
        w[self.n_src:] = probs.double()
        return influence(A, w, levels=levels)


def attribute(hm: HookedModel, tc: Transcoders, prompt: str, *, targets: list[str] | None = None,
              max_n_logits: int = 10, desired_logit_prob: float = 0.95, max_feature_nodes: int | None = None,
              batch_size: int = 512, update_interval: int = 4, chunk: int = 64, min_edge: float = 0.0) -> Graph:
    """The unpruned attribution graph of `prompt` (BOS prepended) under the local replacement model of hm + tc."""
    t0 = time.perf_counter()
    ids = prompt_ids(hm, prompt)[0]
    fm = FrozenModel(hm, tc, ids)
    active, values = active_features(fm.acts)
    lt = logit_targets(fm, targets, max_n_logits, desired_logit_prob)
    reader = SourceReader(fm, active, values)
    n_act, n_src, n_logits = active.shape[0], reader.n_src, lt.ids.numel()
    cap = n_act if max_feature_nodes is None else min(max_feature_nodes, n_act)
    store = _Rows(n_src, min_edge)
    t_setup = time.perf_counter()

    world, me = dist.world_size(), dist.rank()

    def run(layers: Tensor, positions: Tensor, vectors: Tensor, nodes: list[int]) -> None:
        """Rows of these targets, `chunk` per backward pass; under torchrun rank r computes chunks r, r + world, …
        and every rank gets every chunk's sparse rows back, in chunk order (the same store as one process)."""
        order = torch.argsort(layers * fm.n_pos + positions)  # similar targets share a chunk: shorter passes
        chunks = []  # a chunk never spans two layers: a pass costs (its rows) × (its top layer) × (its last position)
        for same_layer in torch.split(order, torch.bincount(layers[order] - int(layers.min())).tolist()):
            chunks += [same_layer[i: i + chunk] for i in range(0, len(same_layer), chunk)]
        mine = []
        for sel in chunks[me::world]:
            G, G_embed = fm.backward(layers[sel], positions[sel], vectors[sel])
            mine.append(_Rows.sparse(reader.rows(G, G_embed), min_edge))
        per_rank = dist.gather_objects(mine) if world > 1 else [mine]
        for i, sel in enumerate(chunks):
            store.add_sparse(*per_rank[i % world][i // world], [nodes[int(k)] for k in sel])

    k = torch.arange(n_logits)
    run(torch.full((n_logits,), fm.n_layers), torch.full((n_logits,), fm.n_pos - 1), lt.vectors,
        (n_src + k).tolist())
    levels = node_levels(active[:, 0], fm.n_layers, fm.n_pos, n_logits)  # of the all-sources layout
    visited = torch.zeros(n_act, dtype=torch.bool)
    while int(visited.sum()) < cap:
        if cap == n_act:
            pending = torch.arange(n_act)
        else:
            infl = store.partial_influence(n_logits, lt.probs, levels)[:n_act]
            rank = torch.argsort(infl, descending=True, stable=True)
            pending = rank[~visited[rank]][: min(update_interval * batch_size, cap - int(visited.sum()))]
        L_, P_, F_ = active[pending, 0], active[pending, 1], active[pending, 2]
        vecs = torch.stack([tc.W_enc[int(l)][:, int(f)] for l, f in zip(L_, F_)])
        run(L_, P_, vecs, pending.tolist())
        visited[pending] = True
    t_rows = time.perf_counter()
    graph = _assemble(hm, tc, prompt, fm, active, values, visited, store, lt)
    graph.info.update(seconds_setup=round(t_setup - t0, 3), seconds_rows=round(t_rows - t_setup, 3),
                      n_active_features=n_act, rows=len(store.node), min_edge=min_edge)
    log.info("graph: %d active features, %d feature nodes, %d edges, %.1f s", n_act, graph.n_features,
             graph.adjacency.nnz, time.perf_counter() - t0)
    return graph


def _assemble(hm: HookedModel, tc: Transcoders, prompt: str, fm: FrozenModel, active: Tensor, values: Tensor,
              visited: Tensor, store: _Rows, lt: LogitTargets) -> Graph:
    """Rows and columns renumbered into the graph's node order (selected features | errors | embeddings | logits)."""
    n_act, n_src = active.shape[0], store.n_src
    selected = torch.nonzero(visited).flatten()
    n_sel = selected.numel()
    new = torch.full((n_src + lt.ids.numel(),), -1, dtype=torch.long)  # all-sources layout → node index
    new[selected] = torch.arange(n_sel)
    new[n_act:] = torch.arange(n_sel, n_sel + n_src - n_act + lt.ids.numel())
    node_of_row = new[torch.tensor(store.node, dtype=torch.long)]
    r, c, v = store.by_rows(torch.argsort(node_of_row))  # sorted by (row, column): `new` keeps the source order
    row_node, col_node = node_of_row[r], new[c]
    keep = col_node >= 0
    adj = Adjacency(row_node[keep], col_node[keep], v[keep].float(), n_sel + n_src - n_act + lt.ids.numel())
    ids = fm.ids
    return Graph(prompt=prompt, tokens=ids, token_strs=[hm.tokenizer.decode([int(i)]) for i in ids],
                 n_layers=fm.n_layers, active_features=active, activation_values=values, selected_features=selected,
                 adjacency=adj, logit_tokens=lt.ids, logit_strs=[hm.tokenizer.decode([int(i)]) for i in lt.ids],
                 logit_probabilities=lt.probs, vocab_size=int(fm.W_U.shape[1]), scan=tc.scan, model=hm.name)

