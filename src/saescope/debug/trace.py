"""One forward and one backward pass of a prompt, with every node the debugger ranks kept with its gradient.

Nodes: the embedding at each position, MLP neurons (layer, index, position), attention heads (layer, head, query
position; their activation is the head's output z_h[t] = o_in[t, h] before W_O), SAE latents spliced in with their
error term (`x' = x + decode(f) − decode(f)|detached`, f a leaf: the model's output and every upstream gradient are
unchanged, ∂B/∂f = W_dec·∂B/∂x), and the error term itself. The behaviour B is the target's logit at the last
position, minus the distractor's when one is given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError
from saescope.models import HookedModel, parse_hookpoint
from saescope.sae import BaseSAE

FREEZE_NORMS = ("none", "final", "all")
"""Which norms' scales the backward pass holds at their clean values: `none` (the exact gradient), `final` (the final
norm only, as TDB does; the default) or `all` (every norm, as circuit-tracer's local replacement model does)."""


def norm_modules(hm: HookedModel, which: str) -> list[nn.Module]:
    """The norms whose scale `which` (one of FREEZE_NORMS) freezes."""
    if which not in FREEZE_NORMS:
        raise SaescopeError(f"--freeze_norms {which!r}: use one of {', '.join(FREEZE_NORMS)}")
    if which == "none":
        return []
    if which == "final":
        return [hm.final_norm()]
    return [m for m in hm.model.modules() if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")]


def scale_frozen(hm: HookedModel, norm: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """y = norm(x) [..., d] unchanged in value, with the gradient of the norm whose scale (LayerNorm's σ, RMSNorm's
    rms) is a constant: a linear map, so ∂y/∂x = g ⊙ P / σ (P the centring for LayerNorm, the identity for RMSNorm)."""
    xf = x.float()
    if isinstance(norm, nn.LayerNorm):
        xf = xf - xf.mean(-1, keepdim=True)
        g = norm.weight.float() if norm.weight is not None else 1.0
        eps = norm.eps
    else:  # Gemma scales by (1 + weight), Llama by weight
        g = hm.norm_gain(norm)
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6)
    scale = torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps).detach()  # [..., 1]
    lin = g * xf / scale
    return y.detach() + (lin - lin.detach()).to(y.dtype)  # the value stays the module's own output, bit for bit


def _freeze_hooks(hm: HookedModel, which: str) -> list[Any]:
    def hook(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return scale_frozen(hm, mod, args[0], out)
    return [m.register_forward_hook(hook) for m in norm_modules(hm, which)]


def single_token(hm: HookedModel, text: str, what: str) -> tuple[int, list[str]]:
    """The token id of `text` (its first token when it splits, with the pieces reported)."""
    if not text:
        raise SaescopeError(f"--{what} is empty; give a token such as ' Paris' (leading space included)")
    ids = hm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SaescopeError(f"--{what} {text!r} encodes to no tokens")
    return ids[0], [hm.tokenizer.decode([i]) for i in ids]


def prompt_ids(hm: HookedModel, prompt: str) -> Tensor:
    """[1, T] ids with BOS; one-line errors for empty or over-long prompts."""
    if not prompt.strip():
        raise SaescopeError("--prompt is empty")
    ids = hm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = hm.tokenizer.bos_token_id
    ids = ([bos] if bos is not None else []) + ids
    cfg = hm.model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if limit and len(ids) > limit:
        raise SaescopeError(f"--prompt has {len(ids)} tokens, more than the model's context of {limit}")
    return torch.tensor([ids])


@dataclass
class Trace:
    """What one traced pass keeps (batch of one prompt, T positions); all tensors [T, ...] with .grad set."""

    ids: Tensor
    behaviour: float
    logits: Tensor
    """[V] at the last position."""
    emb: Tensor
    """[T, d] resid_pre.0."""
    resid_final: Tensor
    """[T, d] input of the final norm."""
    mlp_act: dict[int, Tensor] = field(default_factory=dict)
    """layer → [T, d_mlp] neurons (input of the down projection)."""
    mlp_z: dict[int, Tensor] = field(default_factory=dict)
    """layer → [T, d] down projection output (before Gemma's post-FFN norm)."""
    head_in: dict[int, Tensor] = field(default_factory=dict)
    """layer → [T, H, d_head] per-head outputs before W_O."""
    attn_z: dict[int, Tensor] = field(default_factory=dict)
    """layer → [T, d] attention output before Gemma's post-attention norm."""
    pattern: dict[int, Tensor] = field(default_factory=dict)
    """layer → [H, T, T]."""
    values: dict[int, Tensor] = field(default_factory=dict)
    """layer → [T, n_kv, d_head]."""
    latents: dict[str, Tensor] = field(default_factory=dict)
    """hookpoint → [T, F] SAE latents (leaves)."""
    spliced: dict[str, Tensor] = field(default_factory=dict)
    """hookpoint → [T, d] the hookpoint's value (its grad is ∂B/∂x there)."""
    errors: dict[str, Tensor] = field(default_factory=dict)
    """hookpoint → [T, d] SAE error term x − x̂."""
    sae_inputs: dict[str, Tensor] = field(default_factory=dict)
    """hookpoint → [1, T, d] the SAE's input, still in the graph (for tracing a latent upstream)."""


Edits = dict[tuple[str, Any], Any]
"""Interventions applied during the pass: (kind, key) → how; see `saescope.debug.intervene`."""


SIDES = ("q", "k", "v")
"""The three inputs of an attention layer; tracing a head through one side stops the gradient of the other two."""


def _edited(a: Tensor, edits: Edits, kind: str, layer: int) -> Tensor:
    """`a` [B, T, units, ...] with the edits of `kind` at `layer` applied (a copy only when one applies): an edit's
    key is (layer, unit, position)."""
    for (k, key), val in edits.items():
        if k == kind and key[0] == layer:
            a = a.clone()
            a[:, key[2], key[1]] = val
    return a


@contextlib.contextmanager
def _hooks(hm: HookedModel, tr: Trace, saes: dict[str, BaseSAE], edits: Edits,
           side: tuple[int, str] | None = None, freeze: str = "final") -> Iterator[None]:
    handles = [] if side is None else hm.attention_through(*side)
    handles += _freeze_hooks(hm, freeze)

    def first_block(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
        h = args[0] if args else kwargs["hidden_states"]
        leaf = h.detach().requires_grad_(True)  # every node below depends on this leaf: gradients need no params
        tr.emb = leaf
        return ((leaf, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": leaf})
    handles.append(hm.layers[0].register_forward_pre_hook(first_block, with_kwargs=True))

    for L in range(hm.n_layers):
        attn, o_proj = hm.attention(L), hm.o_proj(L)

        def mlp_in(mod: nn.Module, args: tuple, L: int = L) -> tuple:
            a = _edited(args[0], edits, "neuron", L)  # [B, T, d_mlp]
            a.retain_grad()
            tr.mlp_act[L] = a
            return (a, *args[1:])

        def mlp_out(mod: nn.Module, args: tuple, out: Tensor, L: int = L) -> None:
            tr.mlp_z[L] = out

        def heads_in(mod: nn.Module, args: tuple, L: int = L) -> tuple:
            a = _edited(args[0].unflatten(-1, (hm.n_heads, hm.d_head)), edits, "head", L)  # [B, T, H, d_head]
            a.retain_grad()
            tr.head_in[L] = a
            return (a.flatten(-2), *args[1:])

        def attn_out(mod: nn.Module, args: tuple, out: Tensor, L: int = L) -> None:
            out.retain_grad()
            tr.attn_z[L] = out

        def pat(mod: nn.Module, args: tuple, out: Any, L: int = L) -> None:
            tr.pattern[L] = out[1].detach()

        src, values_of = hm.value_proj(L)

        def val(mod: nn.Module, args: tuple, out: Tensor, L: int = L, values_of: Any = values_of) -> None:
            tr.values[L] = values_of(out).detach().unflatten(-1, (hm.n_kv_heads, hm.d_head))
        down = hm.down_proj(L)
        handles += [down.register_forward_pre_hook(mlp_in), down.register_forward_hook(mlp_out),
                    o_proj.register_forward_pre_hook(heads_in), o_proj.register_forward_hook(attn_out),
                    attn.register_forward_hook(pat), src.register_forward_hook(val)]

    def fin(mod: nn.Module, args: tuple) -> None:
        args[0].retain_grad()
        tr.resid_final = args[0]
    handles.append(hm.final_norm().register_forward_pre_hook(fin))
    stack = contextlib.ExitStack()
    for hp, sae in saes.items():
        def splice(x: Tensor, hp: str = hp, sae: BaseSAE = sae) -> Tensor:
            # BOS is left untouched (as in training and the spliced metrics): no latents, no error there
            keep = (tr.ids == hm.tokenizer.bos_token_id).to(x.device)[..., None]  # [1, T, 1]
            f = sae.encode(x.float()).detach().masked_fill(keep, 0.0)  # [1, T, F]
            x_hat = torch.where(keep, x.float(), sae.decode(f))
            f = f.clone()
            for (kind, key), v in edits.items():
                if kind == "latent" and key[0] == hp:
                    f[:, key[2], key[1]] = v
            f.requires_grad_(True)
            tr.latents[hp] = f
            tr.errors[hp] = (x.float() - x_hat).detach()[0]
            out = x + torch.where(keep, 0.0, sae.decode(f) - x_hat.detach()).to(x.dtype)  # = x unless edited
            out.retain_grad()
            tr.spliced[hp] = out
            tr.sae_inputs[hp] = x
            return out
        stack.enter_context(hm.patch(hp, splice))
    try:
        with stack, hm.eager_attention():
            yield
    finally:
        for h in handles:
            h.remove()


Behaviour = Callable[[Trace, Tensor], Tensor]
"""(trace so far, last-position logits [V]) → a scalar to explain."""


def logit_behaviour(target: int, distractor: int | None) -> Behaviour:
    return lambda tr, logits: logits[target] - (logits[distractor] if distractor is not None else 0.0)


def run_trace(hm: HookedModel, ids: Tensor, behaviour: Behaviour, saes: dict[str, BaseSAE],
              edits: Edits | None = None, backward: bool = True, side: tuple[int, str] | None = None,
              freeze_norms: str = "final") -> Trace:
    """Forward (and backward of the behaviour) on one prompt [1, T]; side=(layer, 'q'|'k'|'v') lets the gradient
    into that layer's attention through one of its three inputs only (tracing a head through one side);
    freeze_norms (FREEZE_NORMS) picks the norms whose scale the backward pass holds constant."""
    for hp in saes:
        parse_hookpoint(hp)
    tr = Trace(ids, 0.0, torch.empty(0), torch.empty(0), torch.empty(0))
    req = [p.requires_grad for p in hm.model.parameters()]
    hm.model.requires_grad_(False)
    try:
        with torch.enable_grad(), _hooks(hm, tr, saes, edits or {}, side, freeze_norms):
            logits = hm.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].float()  # [V]
            b = behaviour(tr, logits)
            if backward:
                b.backward()
    finally:
        for p, r in zip(hm.model.parameters(), req):
            p.requires_grad_(r)
    tr.behaviour, tr.logits = float(b.detach()), logits.detach()
    return tr
