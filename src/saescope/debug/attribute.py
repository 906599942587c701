"""Rank the nodes behind a behaviour: activation, direct effect and act × grad for every node of a Trace.

Direct effect: what a node writes into the residual stream at the last position, through the final norm with its
scale frozen at the clean pass (as TDB does) and the unembedding difference; on Gemma also through the
post-attention / post-FFN norms, their scale frozen the same way. A norm with a frozen scale is linear, so the
writes of a layer's heads (and its bias) sum exactly to what the layer writes, and the direct effects of the
embedding, of every head and neuron and of the bias terms sum to the behaviour. (A Jacobian linearisation would not
decompose: RMSNorm is scale-invariant, J(z)·z = 0.) Estimated total effect: activation × ∂B/∂activation, from
the trace's backward pass (its `freeze_norms` says which norms' scales it holds constant).

A spliced SAE adds its latents, its error x − x̂ and its decoder bias as nodes; x = f W_dec + b_dec + error, so
their direct effects add up to the hookpoint's. An SAE at attn_out.L / mlp_out.L / mlp_post_act.L stands for that
layer's heads or neurons (and output bias, where x includes it): those rows are flagged `replaced`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saescope.debug.trace import Trace
from saescope.models import HookedModel, parse_hookpoint
from saescope.sae import BaseSAE


@dataclass
class Node:
    """One ranked component at one token position."""

    name: str
    """mlp.L.i@t, head.L.h@t, latent.<hookpoint>.i@t, error.<hookpoint>@t, b_dec.<hookpoint>@t (an SAE's decoder
    bias), embed@t, bias (the output biases of the layers and of the final norm), bias.<hookpoint> (the output bias
    of a layer whose output the SAE at <hookpoint> stands for)."""
    kind: str
    layer: int
    index: int
    position: int
    activation: float
    """Neuron / latent value; for heads the norm of the head's write ‖z_h W_O[h]‖; for embed, error and b_dec the
    norm of the vector it adds (‖embedding‖, ‖x − x̂‖, ‖b_dec‖): these have no scalar activation of their own."""
    direct_effect: float
    act_grad: float
    top_key: int = -1
    """Heads: the key position whose pair contributes most (A · ∂B/∂A)."""
    replaced: bool = False
    """A head / neuron / output bias of a layer whose output a spliced SAE stands for (its latents replace it)."""


def _rms_pullback(norm: nn.Module, z: Tensor, u: Tensor) -> Tensor:
    """u [d] pulled back through Gemma's RMSNorm f(z) = g ⊙ z / r(z) with r frozen at z [d] (g = 1 + weight)."""
    g = 1.0 + norm.weight.detach().float()
    return g * u / torch.sqrt(z.pow(2).mean() + norm.eps)


def final_direction(hm: HookedModel, tr: Trace, target: int | None, distractor: int | None) -> tuple[Tensor, float]:
    """(∂B/∂resid_final at the last position with the final norm's scale frozen, the bias terms it adds); zero
    when the behaviour is not a logit (upstream tracing: no direct effects)."""
    if target is None:
        return torch.zeros(hm.d_model), 0.0
    W_U = hm.W_U().detach().float()  # [d, V]
    du = W_U[:, target] - (W_U[:, distractor] if distractor is not None else 0.0)  # [d]
    head = hm.model.get_output_embeddings()
    bias = 0.0
    if getattr(head, "bias", None) is not None:
        hb = head.bias.detach()
        bias += float(hb[target] - (hb[distractor] if distractor is not None else 0.0))
    norm = hm.final_norm()
    x = tr.resid_final[0, -1].detach().float()
    if isinstance(norm, nn.LayerNorm):  # (x − mean)/σ ⊙ γ + β, σ frozen; the centring is a symmetric projection
        sigma = torch.sqrt(x.var(unbiased=False) + norm.eps)
        v = norm.weight.detach().float() * du / sigma
        bias += float(norm.bias.detach().float() @ du) if norm.bias is not None else 0.0
        return v - v.mean(), bias
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6)
    r = torch.sqrt(x.pow(2).mean() + eps)
    return hm.norm_gain(norm) * du / r, bias


def _grad(t: Tensor) -> Tensor:
    """∂B/∂t for the first (only) prompt; zeros where B does not depend on t (downstream of a traced node)."""
    return t.grad[0].float() if t.grad is not None else torch.zeros_like(t[0], dtype=torch.float32)


KINDS = ("embed", "head", "mlp", "latent", "error", "bias", "sae_bias")
SAE_KINDS = ("latent", "error", "sae_bias")


@dataclass
class NodeTable:
    """Every node of a trace as columns (one row per node); `top` materialises the best rows as Nodes."""

    kind: Tensor
    """[N] index into KINDS."""
    layer: Tensor
    index: Tensor
    position: Tensor
    activation: Tensor
    direct_effect: Tensor
    act_grad: Tensor
    top_key: Tensor
    replaced: Tensor
    """[N] bool: heads / neurons / output bias of a layer whose output a spliced SAE stands for (see REPLACES)."""
    hookpoints: list[str]
    """SAE rows (latent, error, sae_bias) and replaced bias rows: the layer column holds the index into this list."""
    total_direct: float
    """Σ direct effects of the rows `in_sum` (= the behaviour, final norm frozen)."""

    def select(self, keep: Tensor) -> NodeTable:
        """The rows where keep [N] is true."""
        cols = {f: getattr(self, f)[keep] for f in ("kind", "layer", "index", "position", "activation",
                                                    "direct_effect", "act_grad", "top_key", "replaced")}
        return NodeTable(**cols, hookpoints=self.hookpoints, total_direct=self.total_direct)

    def in_sum(self) -> Tensor:
        """[N] bool: the rows that decompose the behaviour: embeddings, heads, neurons, biases and the nodes of SAEs
        at attn_out / mlp_out / mlp_post_act, less the components those SAEs stand for. A residual-stream SAE's
        nodes re-describe the whole stream at its layer, so they are a decomposition of their own, not a term."""
        resid = [j for j, hp in enumerate(self.hookpoints) if parse_hookpoint(hp)[0] not in REPLACES]
        sae_rows = torch.isin(self.kind, torch.tensor([KINDS.index(k) for k in SAE_KINDS]))
        return ~self.replaced & ~(sae_rows & torch.isin(self.layer, torch.tensor(resid, dtype=torch.long)))

    def name(self, r: int) -> str:
        k, L, i, t = KINDS[int(self.kind[r])], int(self.layer[r]), int(self.index[r]), int(self.position[r])
        if k in SAE_KINDS:
            hp = self.hookpoints[L]
            return {"latent": f"latent.{hp}.{i}@{t}", "error": f"error.{hp}@{t}", "sae_bias": f"b_dec.{hp}@{t}"}[k]
        if k == "bias":
            return "bias" if L < 0 else f"bias.{self.hookpoints[L]}"
        return {"embed": f"embed@{t}", "head": f"head.{L}.{i}@{t}", "mlp": f"mlp.{L}.{i}@{t}"}[k]

    def node(self, r: int) -> Node:
        k, L = KINDS[int(self.kind[r])], int(self.layer[r])
        if k in SAE_KINDS or (k == "bias" and L >= 0):
            L = parse_hookpoint(self.hookpoints[L])[1]
        return Node(self.name(r), k, L, int(self.index[r]), int(self.position[r]), float(self.activation[r]),
                    float(self.direct_effect[r]), float(self.act_grad[r]), int(self.top_key[r]),
                    bool(self.replaced[r]))

    def top(self, n: int = 20, by: str = "act_grad", kinds: tuple[str, ...] = KINDS,
            replaced: bool = False) -> list[Node]:
        """The n rows with the largest |by| among the given kinds; the components a spliced SAE stands for are left
        out unless `replaced` (the SAE's latents, error and decoder bias are listed in their place)."""
        col = getattr(self, by).abs().clone()
        allowed = torch.isin(self.kind, torch.tensor([KINDS.index(k) for k in kinds]))
        if not replaced:
            allowed &= ~self.replaced
        col[~allowed] = -1
        order = torch.argsort(col, descending=True)[: min(n, int(allowed.sum()))]
        return [self.node(int(r)) for r in order]

    def find(self, name: str) -> Node | None:
        for r in range(self.kind.shape[0]):  # linear, only for single lookups
            if self.name(r) == name:
                return self.node(r)
        return None


def _rows(kind: str, layer: int | Tensor, index: Tensor, position: Tensor, activation: Tensor, direct: Tensor,
          act_grad: Tensor, top_key: Tensor | None = None, replaced: bool = False) -> list[Tensor]:
    n = index.numel()
    full = lambda v: torch.as_tensor(v).expand(n) if torch.as_tensor(v).dim() == 0 else torch.as_tensor(v)  # noqa: E731
    return [full(KINDS.index(kind)).long(), full(layer).long(), index.long().flatten(), position.long().flatten(),
            activation.float().flatten(), direct.float().flatten(), act_grad.float().flatten(),
            (top_key if top_key is not None else torch.full((n,), -1)).long().flatten(),
            torch.full((n,), replaced, dtype=torch.bool)]


REPLACES = {"attn_out": "head", "mlp_out": "mlp", "mlp_post_act": "mlp"}
"""An SAE spliced at one of these hookpoints represents what that layer's heads / neurons write (the decomposition
then uses its latents, error and decoder bias instead); an SAE on the residual stream represents no one component."""


def _replaced(saes: dict[str, BaseSAE]) -> dict[tuple[str, int], int]:
    """(node kind, layer) → index of the spliced SAE that stands for that layer's heads or neurons."""
    out: dict[tuple[str, int], int] = {}
    for j, hp in enumerate(saes):
        kind, L = parse_hookpoint(hp)
        if kind in REPLACES:
            out[(REPLACES[kind], L)] = j
    return out


def _bias_row(j: int, last: int, direct: float, replaced: bool) -> list[Tensor]:
    return _rows("bias", j, torch.tensor([-1]), torch.tensor([last]), torch.zeros(1), torch.tensor([direct]),
                 torch.zeros(1), replaced=replaced)


@torch.no_grad()
def rank_nodes(hm: HookedModel, tr: Trace, target: int | None, distractor: int | None,
               saes: dict[str, BaseSAE] | None = None) -> NodeTable:
    """Activation, direct effect and act × grad of every node (embeddings, heads, neurons, bias, SAE latents, their
    errors and decoder biases). Heads / neurons / output biases of a layer whose output a spliced SAE stands for are
    kept but flagged `replaced`; the unflagged rows' direct effects sum to the behaviour."""
    saes = saes or {}
    replaced = _replaced(saes)
    u_final, bias = final_direction(hm, tr, target, distractor)
    T = tr.ids.shape[1]
    last = T - 1
    pos = torch.arange(T)
    at_last = (pos == last).float()
    parts: list[list[Tensor]] = []
    emb = tr.emb[0].float()
    de_emb = (emb @ u_final) * at_last
    parts.append(_rows("embed", -1, torch.full((T,), -1), pos, emb.norm(dim=-1), de_emb,
                       (emb * _grad(tr.emb)).sum(-1)))
    for L in range(hm.n_layers):
        # attention heads: z_h[t] W_O[h], through the post-attention norm (Gemma) linearised at the clean pass
        W_O = hm.W_O(L).float()  # [H, dh, d]
        h_in = tr.head_in[L][0].float()  # [T, H, dh]
        writes = torch.einsum("thk,hkd->thd", h_in, W_O)  # [T, H, d]
        norm = hm.post_attention_norm(L)
        u = u_final if norm is None else _rms_pullback(norm, tr.attn_z[L][0, last].float(), u_final)
        de = (writes @ u) * at_last[:, None]  # [T, H]
        b_O = hm.attn_out_bias(L)
        j = replaced.get(("head", L))
        if b_O is not None and j is not None:  # the SAE's input includes b_O: it is replaced with the heads
            parts.append(_bias_row(j, last, float(b_O.float() @ u), True))
        elif b_O is not None:
            bias += float(b_O.float() @ u)
        ag = (h_in * _grad(tr.head_in[L])).sum(-1)  # [T, H]
        # the key that contributes most to each (query, head): A[h, t, s] · (w_h[s] · ∂B/∂z[t])
        group = hm.n_heads // hm.n_kv_heads
        v = tr.values[L][0].float().repeat_interleave(group, dim=1)  # [T, H, dh]
        kw = torch.einsum("shk,hkd->hsd", v, W_O)  # [H, s, d]
        gz = _grad(tr.attn_z[L])  # [T, d]
        pair = tr.pattern[L][0].float() * torch.einsum("hsd,td->hts", kw, gz)  # [H, t, s]
        top_key = pair.abs().argmax(-1).T  # [T, H]
        H = hm.n_heads
        parts.append(_rows("head", L, torch.arange(H).repeat(T), pos.repeat_interleave(H), writes.norm(dim=-1), de,
                           ag, top_key, replaced=j is not None))
        # MLP neurons: act_i W_out[i], through the post-FFN norm (Gemma) linearised at the clean pass
        act = tr.mlp_act[L][0].float()  # [T, d_mlp]
        W_out = hm.W_out_mlp(L).float()  # [d_mlp, d]
        pn = hm.post_mlp_norm(L)
        u = u_final if pn is None else _rms_pullback(pn, tr.mlp_z[L][0, last].float(), u_final)
        de_n = act * (W_out @ u)[None, :] * at_last[:, None]  # [T, d_mlp]
        b_down = hm.down_proj(L).bias
        j = replaced.get(("mlp", L))
        # mlp_out's SAE reads b_down with the neurons; mlp_post_act's reads the neurons only
        if b_down is not None and j is not None and parse_hookpoint(list(saes)[j])[0] == "mlp_out":
            parts.append(_bias_row(j, last, float(b_down.float() @ u), True))
        elif b_down is not None:
            bias += float(b_down.float() @ u)
        M = act.shape[1]
        parts.append(_rows("mlp", L, torch.arange(M).repeat(T), pos.repeat_interleave(M), act, de_n,
                           act * _grad(tr.mlp_act[L]), replaced=j is not None))
    parts.append(_bias_row(-1, last, bias, False))
    for j, (hp, sae) in enumerate(saes.items()):
        parts += _sae_rows(hm, tr, j, hp, sae, u_final)
    cols = [torch.cat([p[c] for p in parts]) for c in range(9)]
    table = NodeTable(*cols, hookpoints=list(saes), total_direct=0.0)
    table.total_direct = float(table.direct_effect.double()[table.in_sum()].sum())
    return table


def _sae_rows(hm: HookedModel, tr: Trace, j: int, hp: str, sae: BaseSAE, u_final: Tensor) -> list[list[Tensor]]:
    """One spliced SAE's latents, error and decoder bias. x = f W_dec + b_dec + error at every spliced position, so
    their direct effects add up to the hookpoint's (x[last] · the direction it reaches the logits by) and their
    act × grad to Σ_t x[t] · ∂B/∂x[t]."""
    kind, L = parse_hookpoint(hp)
    T = tr.ids.shape[1]
    last, pos = T - 1, torch.arange(T)
    dir_u = u_final  # [width]: how a unit of the hookpoint reaches the logits at the last position
    if kind == "mlp_post_act":  # neurons → the MLP's write, through its norm
        pn = hm.post_mlp_norm(L)
        u = u_final if pn is None else _rms_pullback(pn, tr.mlp_z[L][0, last].float(), u_final)
        dir_u = hm.W_out_mlp(L).float() @ u  # [d_mlp]
    f = tr.latents[hp][0].float()  # [T, F]
    g = _grad(tr.spliced[hp])  # [T, width]
    t, i = (f != 0).nonzero(as_tuple=True)
    de_f = f[t, i] * (sae.W_dec.float()[i] @ dir_u) * (t == last).float()
    latents = _rows("latent", j, i, t, f[t, i], de_f, (f * _grad(tr.latents[hp]))[t, i])
    err = tr.errors[hp].float()  # [T, width]; zero at BOS, which is not spliced
    error = _rows("error", j, torch.full((T,), -1), pos, err.norm(dim=-1), (err @ dir_u) * (pos == last).float(),
                  (err * g).sum(-1))
    spliced = (tr.ids[0] != hm.tokenizer.bos_token_id).float()  # [T]
    b = sae.b_dec.float()  # [width]
    dec_bias = _rows("sae_bias", j, torch.full((T,), -1), pos, b.norm() * spliced,
                     (b @ dir_u) * spliced * (pos == last).float(), (g @ b) * spliced)
    return [latents, error, dec_bias]


@torch.no_grad()
def head_pairs(hm: HookedModel, tr: Trace, layer: int, head: int) -> dict[str, list[list[float]]]:
    """A head's token-pair view of the prompt: its pattern A[t, s] and A[t, s] · ∂B/∂A[t, s] ([T, T] each)."""
    W_O = hm.W_O(layer).float()[head]  # [dh, d]
    group = hm.n_heads // hm.n_kv_heads
    v = tr.values[layer][0].float()[:, head // group]  # [T, dh]
    A = tr.pattern[layer][0, head].float()  # [T, T]
    attr = A * ((v @ W_O) @ _grad(tr.attn_z[layer]).T).T  # [t, s]: A · (w[s] · ∂B/∂z[t])
    return {"pattern": A.tolist(), "attribution": attr.tolist()}
