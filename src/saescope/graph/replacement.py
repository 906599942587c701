"""The local replacement model of one prompt: every MLP replaced by its transcoder plus an error term, every attention
pattern and every norm's scale frozen at the prompt's clean values (circuit-tracer's conventions, see
shared/reference/circuit_tracing.md). What is left is affine in the node values, per layer l and position t:

    x_0        = e_t + p_t                                   token embedding e (a node) + constants (GPT-2 wpe)
    a          = N1(x_l)                                     N(x) = g ⊙ C(x) / σ_frozen + β   (C centres for LayerNorm)
    z          = Σ_h Σ_s A[h, t, s] · (a_s W_V[kv(h)] + b_V) W_O[h] + b_O,   attn_out = z  or  Gemma's N_post(z)
    m_l        = x_l + attn_out
    mlp_in_l   = N2(m_l);   pre_l = mlp_in_l W_enc + b_enc                (feature targets: pre-activations)
    mlp_out_l  = Σ_{sources k writing to l} a_k W_dec[k, l] + b_dec + err_l + mlp_in_l W_skip   (+ c_l at BOS)
    x_{l+1}    = m_l + mlp_out_l
    logits     = N_f(x_L) W_U + b_U                                           (logit targets: demeaned logits)

Feature activations a_k, errors err_l and embeddings e are the node values (inputs); everything else is a constant
or a frozen linear map. At the first position (BOS) no feature is active, the error is zero and the MLP output is
the constant c_l (plus the skip), as circuit-tracer does. `backward` is the transpose of this map, written out so a
batch of targets (one row each, injected at their own layer and position) needs no autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError
from saescope.models import HookedModel


# ---- transcoders as the graph reads them --------------------------------------------------------------------------
@dataclass
class Transcoders:
    """Per-layer or cross-layer transcoders mapping mlp_in.L → mlp_out.L, one entry per layer (float32).

    pre_l = x W_enc[l] + b_enc[l];  a_l = activation(l, pre_l);  out_l' = Σ_{l ≤ l'} a_l W_dec[l][:, l'−l] + b_dec[l']
    + x_l' W_skip[l']."""

    W_enc: list[Tensor]
    """[d, F_l] per layer."""
    b_enc: list[Tensor]
    """[F_l]."""
    W_dec: list[Tensor]
    """[F_l, n_out, d]: layer l's features write to layers l .. l + n_out − 1 (n_out = 1: per-layer transcoders)."""
    b_dec: list[Tensor]
    """[d] per output layer."""
    activation: Callable[[int, Tensor], Tensor]
    """(layer, pre-activations [..., F]) → activations (TopK, JumpReLU, ReLU)."""
    W_skip: list[Tensor | None] | None = None
    """[d, d] per layer, or None: an affine skip x W_skip added to the output."""
    scan: str = ""
    """Identifier of the set (circuit-tracer's `scan`), written to the graph JSON."""
    encoder: Callable[[int, Tensor], Tensor] | None = None
    """(layer, x [.., d]) → activations, where the set has its own encoder (a TranscoderSet); else
    activation(layer, x W_enc + b_enc)."""

    def encode(self, layer: int, x: Tensor) -> Tensor:
        if self.encoder is not None:
            return self.encoder(layer, x)
        return self.activation(layer, x @ self.W_enc[layer] + self.b_enc[layer])

    @property
    def n_layers(self) -> int:
        return len(self.W_enc)

    @property
    def cross_layer(self) -> bool:
        return any(w.shape[1] > 1 for w in self.W_dec)

    def skip(self, layer: int) -> Tensor | None:
        return None if self.W_skip is None else self.W_skip[layer]


@torch.no_grad()
def from_transcoder_set(ts: Any, n_layers: int, scan: str = "") -> Transcoders:
    """saescope's `TranscoderSet` (per-layer transcoders, with or without skip, or one cross-layer transcoder) as the
    graph reads it; every layer must be covered."""
    missing = [l for l in range(n_layers) if l not in ts.layers]
    if missing:
        raise SaescopeError(f"transcoders: no transcoder for layers {missing}; a graph needs one on every layer")
    f = lambda t: t.detach().float().cpu()  # noqa: E731
    dev = next(ts.parameters()).device

    def encode(layer: int, x: Tensor) -> Tensor:
        return ts.encode_layer(layer, x.to(dev)).detach().float().cpu()

    if ts.is_clt:
        clt = ts.clt
        skip = [f(clt.W_skip[l]) for l in range(n_layers)] if clt.cfg.skip else None
        per = lambda w: [f(w[l]) for l in range(n_layers)]  # noqa: E731
        return Transcoders(per(clt.W_enc), per(clt.b_enc), per(clt.W_dec), per(clt.b_dec), _no_activation, skip, scan,
                           encoder=encode)
    W_enc, b_enc, W_dec, b_dec, skip = [], [], [], [], []
    for l in range(n_layers):
        t = ts[l]
        W_enc.append(f(t.W_enc))
        b = f(t.b_enc)  # an input-side b_dec (plain SAEs) folds into the encoder bias
        b_enc.append(b - f(t.b_dec) @ f(t.W_enc) if t.cfg.apply_b_dec_to_input else b)
        W_dec.append(f(t.W_dec)[:, None, :])
        b_dec.append(f(t.b_dec))
        skip.append(f(t.W_skip) if getattr(t, "skip_connection", False) else None)
    return Transcoders(W_enc, b_enc, W_dec, b_dec, _no_activation, skip if any(w is not None for w in skip) else None,
                       scan, encoder=encode)


def _no_activation(layer: int, pre: Tensor) -> Tensor:
    raise NotImplementedError("this set encodes through its own encoder")


def topk_activation(k: int) -> Callable[[int, Tensor], Tensor]:
    """The k largest pre-activations of each row, ReLU'd; the rest 0."""
    def act(layer: int, pre: Tensor) -> Tensor:
        top = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    return act


def jumprelu_activation(thresholds: list[Tensor]) -> Callable[[int, Tensor], Tensor]:
    """pre · 1[pre > θ_layer]."""
    def act(layer: int, pre: Tensor) -> Tensor:
        return pre * (pre > thresholds[layer])
    return act


# ---- frozen pieces ------------------------------------------------------------------------------------------------
@dataclass
class FrozenNorm:
    """N(x) = gain ⊙ C(x) / scale + bias with the scale of each position frozen at its clean value (C = centring for
    LayerNorm, identity for RMSNorm). Linear, and its transpose is itself: vjp(g) = C(gain ⊙ g / scale)."""

    gain: Tensor
    """[d]"""
    bias: Tensor | None
    scale: Tensor
    """[T, 1]: σ (LayerNorm) or rms (RMSNorm) of the clean input at each position."""
    centred: bool

    def __post_init__(self) -> None:
        self.mult = self.gain / self.scale  # [T, d]: one multiply per use

    @classmethod
    def of(cls, hm: HookedModel, mod: nn.Module, x: Tensor) -> FrozenNorm:
        """From a norm module and its clean input x [T, d]."""
        w = mod.weight.detach().float().cpu()
        if isinstance(mod, nn.LayerNorm):
            scale = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + mod.eps)
            return cls(w, None if mod.bias is None else mod.bias.detach().float().cpu(), scale, True)
        eps = getattr(mod, "eps", None) or getattr(mod, "variance_epsilon", 1e-6)
        scale = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return cls(1.0 + w if hm.arch == "gemma" else w, None, scale, False)

    def apply(self, x: Tensor) -> Tensor:
        """x [..., T, d] → [..., T, d] (T may be a prefix of the prompt)."""
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        y = x * self.mult[: x.shape[-2]]
        return y if self.bias is None else y + self.bias

    def vjp(self, g: Tensor) -> Tensor:
        v = g * self.mult[: g.shape[-2]]
        return v - v.mean(-1, keepdim=True) if self.centred else v


@dataclass
class FrozenLayer:
    """One block of the local replacement model: frozen norms, the attention pattern, the value/output weights."""

    norm1: FrozenNorm
    pattern: Tensor
    """[H, T, T] clean post-softmax attention (query, key)."""
    W_V: Tensor
    """[n_kv, d, d_head]"""
    b_V: Tensor | None
    """[n_kv, d_head]"""
    W_O: Tensor
    """[H, d_head, d]"""
    b_O: Tensor | None
    post_attn: FrozenNorm | None
    """Gemma's norm between attention and the residual stream."""
    norm2: FrozenNorm
    kv_of_head: Tensor
    """[H] the key/value head each query head reads (grouped-query attention: h // (H / n_kv))."""

    def __post_init__(self) -> None:
        n_kv, d, dh = self.W_V.shape
        self.W_V_flat = self.W_V.permute(0, 2, 1).reshape(n_kv * dh, d)  # [n_kv·dh, d]: the value map, transposed


def _value_weights(hm: HookedModel, layer: int) -> tuple[Tensor, Tensor | None]:
    attn = hm.attention(layer)
    n_kv, dh, d = hm.n_kv_heads, hm.d_head, hm.d_model
    if hm.arch == "gpt2":  # Conv1D c_attn: x @ W [d, 3d], value columns last
        W = attn.c_attn.weight[:, 2 * d:]
        b = attn.c_attn.bias[2 * d:]
    else:
        W, b = attn.v_proj.weight.T, attn.v_proj.bias
    W = W.detach().float().cpu().reshape(d, n_kv, dh).permute(1, 0, 2)  # [n_kv, d, dh]
    return W, None if b is None else b.detach().float().cpu().reshape(n_kv, dh)


def _pre_mlp_norm(hm: HookedModel, layer: int) -> nn.Module:
    block = hm.layers[layer]
    return {"gpt2": getattr(block, "ln_2", None), "gemma": getattr(block, "pre_feedforward_layernorm", None),
            "llama": getattr(block, "post_attention_layernorm", None)}[hm.arch]


# ---- the clean pass -----------------------------------------------------------------------------------------------
@dataclass
class CleanPass:
    """What one forward of the real model leaves behind ([T, d] float32 per layer unless said)."""

    embed: Tensor
    """The token embeddings as they enter block 0 (Gemma's √d scaling included), without position embeddings."""
    resid_pre: list[Tensor]
    pattern: list[Tensor]
    """[H, T, T]"""
    attn_z: list[Tensor]
    """Attention output before Gemma's post-attention norm (= attn_out elsewhere)."""
    resid_mid: list[Tensor]
    mlp_in: list[Tensor]
    mlp_out: list[Tensor]
    resid_final: Tensor
    logits: Tensor
    """[T, V]"""


@torch.no_grad()
def clean_pass(hm: HookedModel, ids: Tensor) -> CleanPass:
    """Run the model once on ids [T] with eager attention, recording what the frozen model needs."""
    L = hm.n_layers
    rec: dict[str, list] = {k: [None] * L for k in ("resid_pre", "pattern", "attn_z", "resid_mid", "mlp_in", "mlp_out")}
    got: dict[str, Tensor] = {}
    handles = []

    def keep(key: str, layer: int, x: Tensor) -> None:
        rec[key][layer] = x[0].detach().float().cpu()

    def first(x: object) -> Tensor:
        return x[0] if isinstance(x, tuple) else x  # type: ignore[index]

    for layer, block in enumerate(hm.layers):
        def block_in(mod, args, kwargs, layer=layer):
            keep("resid_pre", layer, args[0] if args else kwargs["hidden_states"])
        handles.append(block.register_forward_pre_hook(block_in, with_kwargs=True))
        handles.append(hm.attention(layer).register_forward_hook(
            lambda m, a, out, layer=layer: keep("pattern", layer, out[1])))
        post = hm.post_attention_norm(layer)
        if post is not None:
            handles.append(post.register_forward_pre_hook(lambda m, a, layer=layer: keep("attn_z", layer, a[0])))
        else:
            handles.append(hm.attention(layer).register_forward_hook(
                lambda m, a, out, layer=layer: keep("attn_z", layer, first(out))))
        handles.append(_pre_mlp_norm(hm, layer).register_forward_pre_hook(
            lambda m, a, layer=layer: keep("resid_mid", layer, a[0])))
        handles.append(block.mlp.register_forward_pre_hook(lambda m, a, layer=layer: keep("mlp_in", layer, a[0])))
        out_mod = block.post_feedforward_layernorm if hm.arch == "gemma" else block.mlp
        handles.append(out_mod.register_forward_hook(
            lambda m, a, out, layer=layer: keep("mlp_out", layer, first(out))))
    handles.append(hm.final_norm().register_forward_pre_hook(
        lambda m, a: got.__setitem__("final", a[0][0].float().cpu())))
    handles.append(hm.model.get_input_embeddings().register_forward_hook(
        lambda m, a, out: got.__setitem__("embed", out[0].float().cpu())))
    try:
        with hm.eager_attention():
            logits = hm.model(input_ids=ids[None].to(hm.model.device), use_cache=False).logits[0].float().cpu()
    finally:
        for h in handles:
            h.remove()
    return CleanPass(got["embed"], rec["resid_pre"], rec["pattern"], rec["attn_z"], rec["resid_mid"], rec["mlp_in"],
                     rec["mlp_out"], got["final"], logits)


# ---- the frozen model ---------------------------------------------------------------------------------------------
class FrozenModel:
    """The local replacement model of one prompt (see the module docstring), with the node values of the clean pass."""

    def __init__(self, hm: HookedModel, tc: Transcoders, ids: Tensor) -> None:
        if tc.n_layers != hm.n_layers:
            raise SaescopeError(f"transcoders: {tc.n_layers} layers for a model with {hm.n_layers}; need one per layer")
        if getattr(hm.model.config, "final_logit_softcapping", None):
            raise SaescopeError(f"model {hm.name}: final logit softcapping is not linear; graphs need a plain "
                                "unembedding")
        self.hm, self.tc, self.ids = hm, tc, ids
        cp = clean_pass(hm, ids)
        self.clean = cp
        self.n_layers, self.n_pos, self.d = hm.n_layers, int(ids.numel()), hm.d_model
        group = hm.n_heads // hm.n_kv_heads
        self.layers: list[FrozenLayer] = []
        for layer in range(hm.n_layers):
            W_V, b_V = _value_weights(hm, layer)
            b_O = hm.attn_out_bias(layer)
            post = hm.post_attention_norm(layer)
            self.layers.append(FrozenLayer(
                FrozenNorm.of(hm, hm.layers[layer].ln_1 if hm.arch == "gpt2" else hm.layers[layer].input_layernorm,
                              cp.resid_pre[layer]),
                cp.pattern[layer],
                W_V, b_V, hm.W_O(layer).detach().float().cpu(), None if b_O is None else b_O.detach().float().cpu(),
                None if post is None else FrozenNorm.of(hm, post, cp.attn_z[layer]),
                FrozenNorm.of(hm, _pre_mlp_norm(hm, layer), cp.resid_mid[layer]),
                torch.arange(hm.n_heads) // group))
        self.final = FrozenNorm.of(hm, hm.final_norm(), cp.resid_final)
        self.W_U = hm.W_U().detach().float().cpu()  # [d, V]
        head_bias = getattr(hm.model.get_output_embeddings(), "bias", None)
        self.b_U = None if head_bias is None else head_bias.detach().float().cpu()
        self._node_values()

    # ---- node values at the clean pass ----------------------------------------------------------------------
    @torch.no_grad()
    def _node_values(self) -> None:
        tc, cp = self.tc, self.clean
        self.pos_const = cp.resid_pre[0] - cp.embed  # [T, d] GPT-2's position embeddings; 0 elsewhere
        self.pre = [cp.mlp_in[l] @ tc.W_enc[l] + tc.b_enc[l] for l in range(self.n_layers)]  # [T, F_l]
        self.acts = [tc.encode(l, cp.mlp_in[l]) for l in range(self.n_layers)]
        for a in self.acts:
            a[0] = 0.0  # no features at BOS
        recon = self.feature_writes(self.acts)
        self.bos_const = torch.zeros(self.n_layers, self.d)
        self.errors = torch.zeros(self.n_layers, self.n_pos, self.d)
        for l in range(self.n_layers):
            lin = recon[l] + tc.b_dec[l] + self._skip(l, cp.mlp_in[l])
            self.errors[l] = cp.mlp_out[l] - lin
            self.bos_const[l] = self.errors[l, 0]
            self.errors[l, 0] = 0.0

    def _skip(self, layer: int, x: Tensor) -> Tensor:
        W = self.tc.skip(layer)
        return torch.zeros_like(x) if W is None else x @ W

    def feature_writes(self, acts: list[Tensor]) -> list[Tensor]:
        """[..., T, d] per output layer: Σ over source layers l ≤ l' of a_l W_dec[l][:, l' − l]."""
        out = [torch.zeros(*acts[0].shape[:-1], self.d) for _ in range(self.n_layers)]
        for l, a in enumerate(acts):
            W = self.tc.W_dec[l]  # [F, n_out, d]
            for j in range(W.shape[1]):
                out[l + j] = out[l + j] + a @ W[:, j]
        return out

    # ---- forward (node values → targets) -------------------------------------------------------------------
    def attention(self, layer: int, x: Tensor) -> Tensor:
        """What frozen attention writes to the residual stream, for x [..., T, d]."""
        fl = self.layers[layer]
        v = torch.einsum("...sd,ndk->...snk", fl.norm1.apply(x), fl.W_V)  # [..., T, n_kv, dh]
        if fl.b_V is not None:
            v = v + fl.b_V
        zh = torch.einsum("hts,...shk->...thk", fl.pattern, v[..., fl.kv_of_head, :])  # [..., T, H, dh]
        z = torch.einsum("...thk,hkd->...td", zh, fl.W_O)
        if fl.b_O is not None:
            z = z + fl.b_O
        return z if fl.post_attn is None else fl.post_attn.apply(z)

    def forward(self, embed: Tensor, acts: list[Tensor], errors: Tensor) -> tuple[list[Tensor], Tensor]:
        """Node values (embeddings [T, d], activations [T, F_l] per layer, errors [L, T, d]) → (feature
        pre-activations [T, F_l] per layer, logits [T, V]) of the frozen model. Differentiable (the naive reference)."""
        writes = self.feature_writes(acts)
        x = embed + self.pos_const
        pres = []
        bos = torch.zeros(self.n_pos, 1)
        bos[0] = 1.0
        for l, fl in enumerate(self.layers):
            m = x + self.attention(l, x)
            mlp_in = fl.norm2.apply(m)
            pres.append(mlp_in @ self.tc.W_enc[l] + self.tc.b_enc[l])
            x = m + writes[l] + self.tc.b_dec[l] + errors[l] + self._skip(l, mlp_in) + bos * self.bos_const[l]
        logits = self.final.apply(x) @ self.W_U
        return pres, logits if self.b_U is None else logits + self.b_U

    # ---- backward (a batch of targets → gradients at every write point) ------------------------------------
    @torch.no_grad()
    def backward(self, layers: Tensor, positions: Tensor, vectors: Tensor) -> tuple[list[Tensor], Tensor]:
        """One row per target b: the gradient of vectors[b] · (mlp_in of layers[b] at positions[b]) — or, for
        layers[b] = n_layers, of vectors[b] · (final-norm output at positions[b]) — with respect to

        - every layer's MLP output slot (resid_post.l): G[l] [B, T', d] for l < len(G) (later layers: zero),
        - the embeddings (resid_pre.0): G_embed [B, T', d],

        where T' = the last target position + 1 (causal attention: nothing later matters)."""
        B = layers.numel()
        T = int(positions.max()) + 1
        top = int(layers.max())
        rows = torch.arange(B)
        g = torch.zeros(B, T, self.d)
        at_top = layers == self.n_layers
        if at_top.any():
            inj = torch.zeros(B, T, self.d)
            inj[rows[at_top], positions[at_top]] = vectors[at_top].float()
            g += self.final.vjp(inj)
        n_G = min(top + 1, self.n_layers)  # a target at layer L is injected inside layer L's MLP input
        G: list[Tensor] = [g] * n_G
        for l in range(n_G - 1, -1, -1):
            fl = self.layers[l]
            G[l] = g  # never modified in place below: every update makes a new tensor
            g_in = torch.zeros(B, T, self.d)
            W_skip = self.tc.skip(l)
            if W_skip is not None:
                g_in += g @ W_skip.T
            here = layers == l
            if here.any():
                g_in[rows[here], positions[here]] += vectors[here].float()
            g = g + fl.norm2.vjp(g_in)  # ∂/∂m_l
            g = g + self._attention_vjp(l, g, T)  # ∂/∂x_l
        return G, g

    def _attention_vjp(self, layer: int, g: Tensor, T: int) -> Tensor:
        """The transpose of `attention(layer, ·)` applied to g [B, T, d] (constants dropped)."""
        fl = self.layers[layer]
        gz = g if fl.post_attn is None else fl.post_attn.vjp(g)
        B = g.shape[0]
        H, dh, d = fl.W_O.shape
        gzh = (gz.reshape(B * T, d) @ fl.W_O.reshape(H * dh, d).T).view(B, T, H, dh)
        gvh = torch.einsum("hts,bthk->bshk", fl.pattern[:, :T, :T], gzh)  # [B, s, H, dh]
        n_kv = fl.W_V.shape[0]
        gv = gvh.view(B, T, n_kv, H // n_kv, dh).sum(3)  # heads of a group share their KV head (kv = h // group)
        ga = gv.reshape(B * T, n_kv * dh) @ fl.W_V_flat  # [B·T, d]
        return fl.norm1.vjp(ga.view(B, T, d))
