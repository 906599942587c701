"""The local replacement model of one prompt: every MLP replaced by its transcoder plus an error term, every attention
pattern and every norm's scale frozen at the prompt's clean values (circuit-tracer's conventions, see
shared/reference/circuit_tracing.md). What is left is affine in the node values, per layer l and position t:

    x_0        = e_t + p_t                                   token embedding e (a node) + constants (GPT-2 wpe)
    a          = N1(x_l)                                     N(x) = g ⊙ C(x) / σ_frozen + β   (C centres for LayerNorm)
    z          = Σ_h Σ_s A[h, t, s] · (a_s W_V[kv(h)] + b_V) W_O[h] + b_O,   attn_out = z  or  Gemma's N_post(z)
    m_l        = x_l + attn_out
    mlp_in_l   = N2(m_l);   pre_l = mlp_in_l W_enc + b_enc                (feature targets: pre-activations)
    mlp_out_l  = Σ_{sources k writing to l} a_k W_dec[k, l] + b_dec + err_l + mlp_in_l W_skip   (+ c_l at BOS)
    x_{l+1}    = m_l + mlp_out_l,  or m_l + N3(mlp_out_l) where the transcoders write before Gemma's post-MLP norm
    logits     = N_f(x_L) W_U + b_U                                           (logit targets: demeaned logits)

Feature activations a_k, errors err_l and embeddings e are the node values (inputs); everything else is a constant
or a frozen linear map. At the first position (BOS) no feature is active, the error is zero and the MLP output is
the constant c_l (plus the skip), as circuit-tracer does. `backward` is the transpose of this map, written out so a
batch of targets (one row each, injected at their own layer and position) needs no autograd graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.graph.clean import FrozenLayer, FrozenNorm, clean_pass, pre_mlp_norm, value_weights
from saescope.graph.transcoders import (  # noqa: F401 (re-exported: the set's adapters live in transcoders.py)
    Transcoders,
    from_transcoder_set,
    jumprelu_activation,
    topk_activation,
)
from saescope.models import HookedModel


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
            W_V, b_V = value_weights(hm, layer)
            b_O = hm.attn_out_bias(layer)
            post = hm.post_attention_norm(layer)
            self.layers.append(FrozenLayer(
                FrozenNorm.of(hm, hm.layers[layer].ln_1 if hm.arch == "gpt2" else hm.layers[layer].input_layernorm,
                              cp.resid_pre[layer]),
                cp.pattern[layer],
                W_V, b_V, hm.W_O(layer).detach().float().cpu(), None if b_O is None else b_O.detach().float().cpu(),
                None if post is None else FrozenNorm.of(hm, post, cp.attn_z[layer]),
                FrozenNorm.of(hm, pre_mlp_norm(hm, layer), cp.resid_mid[layer]),
                torch.arange(hm.n_heads) // group))
        # transcoders that write before Gemma's post-MLP norm: the norm (frozen) maps their output into the stream
        before = tc.write_point == "before_norm" and hm.post_mlp_norm(0) is not None
        self.post_mlp: list[FrozenNorm | None] = [
            FrozenNorm.of(hm, hm.post_mlp_norm(l), cp.mlp_raw[l]) if before else None for l in range(hm.n_layers)]
        self.target = cp.mlp_raw if before else cp.mlp_out
        """What the transcoders reconstruct, [T, d] per layer."""
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
            self.errors[l] = self.target[l] - lin
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
            out = writes[l] + self.tc.b_dec[l] + errors[l] + self._skip(l, mlp_in) + bos * self.bos_const[l]
            post = self.post_mlp[l]
            x = m + (out if post is None else post.apply(out))
        logits = self.final.apply(x) @ self.W_U
        return pres, logits if self.b_U is None else logits + self.b_U

    # ---- backward (a batch of targets → gradients at every write point) ------------------------------------
    @torch.no_grad()
    def backward(self, layers: Tensor, positions: Tensor, vectors: Tensor) -> tuple[list[Tensor], Tensor]:
        """One row per target b: the gradient of vectors[b] · (mlp_in of layers[b] at positions[b]) — or, for
        layers[b] = n_layers, of vectors[b] · (final-norm output at positions[b]) — with respect to

        - every layer's MLP output slot (what the transcoders write: resid_post.l, or the input of Gemma's post-MLP
          norm): G[l] [B, T', d] for l < len(G) (later layers: zero),
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
            post = self.post_mlp[l]
            G[l] = g if post is None else post.vjp(g)  # never modified in place below: updates make new tensors
            g_in = torch.zeros(B, T, self.d)
            W_skip = self.tc.skip(l)
            if W_skip is not None:
                g_in += G[l] @ W_skip.T
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
