"""The hooked forward over GPT-2, Gemma 3 and Llama-family (Llama, Qwen2, SmolLM2) `transformers` models: capture,
patch and replace activations at uniform hookpoints (their names and shapes: `models/hookpoints.py`; the model's
parts: `models/internals.py`).

The forward stops after the deepest block a request needs (no later blocks, no unembedding). A store keeps every
hookpoint as per-token rows (`token_rows`). `replace_mlps` swaps every MLP for a function of its input (the
replacement model of circuit tracing).
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError
from saescope.models.hookpoints import (  # noqa: F401 - re-exported: hooks was their home
    ATTENTION_KINDS,
    HOOK_KINDS,
    TDB_ALIASES,
    canonical_hookpoint,
    natural_key,
    parse_hookpoint,
)
from saescope.models.internals import ModelInternals


class _StopForward(Exception):
    """Raised by a hook after the deepest needed block to skip the rest of the model."""


def merge_byte_tokens(ids: list[int], strs: list[str], decode: Any, max_run: int = 4) -> list[str]:
    """Token strings with runs that only decode together (pieces of one UTF-8 character) merged into the run's first
    token; the others become ''. Runs are at most `max_run` tokens (a UTF-8 character is at most 4 bytes)."""
    if not any("\ufffd" in t for t in strs):
        return strs
    out = list(strs)
    i = 0
    while i < len(ids):
        if "\ufffd" in out[i]:
            for j in range(i + 2, min(len(ids), i + max_run) + 1):
                joint = decode(ids[i:j])
                if "\ufffd" not in joint:
                    out[i:j] = [joint] + [""] * (j - i - 1)
                    i = j - 1
                    break
        i += 1
    return out


class HookedModel(ModelInternals):
    """A causal LM plus its tokenizer with hookpoints named the same way across architectures."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str = "model") -> None:
        super().__init__(model)
        self.tokenizer, self.name = tokenizer, name

    # ---- hookpoint names -----------------------------------------------------------------------------------
    def hookpoints(self) -> list[str]:
        return [f"{k}.{layer}" for layer in range(self.n_layers) for k in HOOK_KINDS]

    def select(self, patterns: str | Sequence[str]) -> list[str]:
        """Expand comma-separated names or globs (`resid_post.*`) into hookpoints, sorted naturally."""
        if isinstance(patterns, str):
            patterns = [p.strip() for p in patterns.split(",") if p.strip()]
        names: set[str] = set()
        every = self.hookpoints()
        for pat in patterns:
            if any(c in pat for c in "*?["):
                hits = fnmatch.filter(every, pat)
                if not hits:
                    raise SaescopeError(f"hookpoint pattern '{pat}' matches nothing; e.g. resid_post.* or mlp_out.3")
                names.update(hits)
            else:
                kind, layer = parse_hookpoint(pat)
                if layer >= self.n_layers:
                    raise SaescopeError(f"hookpoint '{pat}': layer {layer} out of range, model has {self.n_layers}")
                names.add(f"{kind}.{layer}")
        return sorted(names, key=natural_key)

    def width(self, hookpoint: str, context_len: int = 0) -> int:
        """Per-token vector size of a hookpoint, as `token_rows` lays it out: attn_pattern rows are the query's
        pattern over every key of the context ([heads × context_len], zeros after the query), attn_value rows
        [n_kv_heads × d_head]."""
        kind, _ = parse_hookpoint(hookpoint)
        if kind == "mlp_post_act":
            return self.d_mlp
        if kind == "attn_pattern":
            if context_len < 1:
                raise SaescopeError(f"hookpoint '{hookpoint}': its per-token width depends on the context length")
            return self.n_heads * context_len
        if kind == "attn_value":
            return self.n_kv_heads * self.d_head
        return self.d_model

    def token_rows(self, hookpoint: str, x: Tensor) -> Tensor:
        """A `run_with_cache` tensor as [B, T, width] per-token rows (what a store keeps)."""
        kind, _ = parse_hookpoint(hookpoint)
        if kind == "attn_pattern":  # [B, H, q, k] → [B, q, H·k]
            return x.permute(0, 2, 1, 3).flatten(2)
        if kind == "attn_value":  # [B, T, n_kv, d_head] → [B, T, n_kv·d_head]
            return x.flatten(2)
        return x

    def from_token_rows(self, hookpoint: str, rows: Tensor) -> Tensor:
        """The inverse of `token_rows` for rows [B, T, width] of a whole context (query and key 0..T−1)."""
        kind, _ = parse_hookpoint(hookpoint)
        B, T, _ = rows.shape
        if kind == "attn_pattern":
            return rows.view(B, T, self.n_heads, -1).permute(0, 2, 1, 3)  # [B, H, q, k]
        if kind == "attn_value":
            return rows.view(B, T, self.n_kv_heads, self.d_head)
        return rows

    # ---- running -------------------------------------------------------------------------------------------
    def eager_attention(self, needed: bool = True) -> contextlib.AbstractContextManager[None]:
        """Run attention eagerly inside (SDPA never materialises the pattern the attention hooks read)."""
        return self._eager_attention(needed)

    @contextlib.contextmanager
    def _eager_attention(self, needed: bool) -> Iterator[None]:
        # SDPA never materialises the pattern; eager returns it as the second output of the attention module.
        if not needed:
            yield
            return
        prev = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.model.set_attn_implementation(prev)

    def _register(self, hookpoint: str, out: dict[str, Tensor]) -> Any:
        kind, layer = parse_hookpoint(hookpoint)
        block = self.layers[layer]

        def first(x: Any) -> Tensor:
            return x[0] if isinstance(x, tuple) else x

        if kind == "resid_pre":
            def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
                out[hookpoint] = (args[0] if args else kwargs["hidden_states"]).detach()
            return block.register_forward_pre_hook(pre, with_kwargs=True)
        if kind in ("mlp_post_act", "mlp_in"):
            def pre_mod(mod: nn.Module, args: tuple) -> None:
                out[hookpoint] = args[0].detach()
            target = self._down_proj(layer) if kind == "mlp_post_act" else block.mlp
            return target.register_forward_pre_hook(pre_mod)

        if kind == "attn_pattern":
            def pat(mod: nn.Module, args: tuple, output: Any) -> None:
                out[hookpoint] = output[1].detach()
            return self._attn(layer).register_forward_hook(pat)
        if kind == "attn_value":
            src = self._attn(layer).c_attn if self.arch == "gpt2" else self._attn(layer).v_proj

            def val(mod: nn.Module, args: tuple, output: Tensor) -> None:
                v = output[..., 2 * self.d_model:] if self.arch == "gpt2" else output
                out[hookpoint] = v.detach().unflatten(-1, (self.n_kv_heads, self.d_head))
            return src.register_forward_hook(val)

        def post(mod: nn.Module, args: tuple, output: Any) -> None:
            out[hookpoint] = first(output).detach()
        return self._module_for(kind, layer).register_forward_hook(post)

    def _module_for(self, kind: str, layer: int) -> nn.Module:
        block = self.layers[layer]
        if kind == "resid_post":
            return block
        if kind == "mlp_out":
            return block.post_feedforward_layernorm if self.arch == "gemma" else block.mlp
        if kind == "attn_out":
            return block.post_attention_layernorm if self.arch == "gemma" else self._attn(layer)
        raise SaescopeError(f"hookpoint kind '{kind}' cannot be patched")

    @contextlib.contextmanager
    def patch(self, hookpoint: str, fn: Any) -> Iterator[None]:
        """Replace a per-token hookpoint's activation x [B, T, width] by fn(x) during the forward passes inside."""
        kind, layer = parse_hookpoint(hookpoint)
        if kind == "resid_pre":
            def pre(mod: nn.Module, args: tuple, kwargs: dict) -> tuple:
                if args:
                    return (fn(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
            handle = self.layers[layer].register_forward_pre_hook(pre, with_kwargs=True)
        elif kind in ("mlp_post_act", "mlp_in"):
            target = self._down_proj(layer) if kind == "mlp_post_act" else self.layers[layer].mlp
            handle = target.register_forward_pre_hook(lambda m, args: (fn(args[0]), *args[1:]))
        else:
            def post(mod: nn.Module, args: tuple, output: Any) -> Any:
                if isinstance(output, tuple):
                    return (fn(output[0]), *output[1:])
                return fn(output)
            handle = self._module_for(kind, layer).register_forward_hook(post)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def replace_mlps(self, fn: Callable[[int, Tensor, Tensor], Tensor], layers: Sequence[int] | None = None
                     ) -> Iterator[None]:
        """During the forward passes inside, what layer L's MLP writes to the residual stream (mlp_out.L) becomes
        fn(L, mlp_in [B, T, d], mlp_out [B, T, d]) -> [B, T, d], for every layer in `layers` (default all).

        Layers run in order, so a stateful `fn` sees layer 0's input before layer 1's (a cross-layer transcoder
        keeps the earlier layers' latents). The MLP itself still runs: its clean output is passed to fn (error
        terms, or fn may ignore it), and gradients flow through fn only if fn keeps them."""
        chosen = range(self.n_layers) if layers is None else layers
        handles = []
        for layer in chosen:
            seen: dict[str, Tensor] = {}

            def grab(mod: nn.Module, args: tuple, seen: dict[str, Tensor] = seen) -> None:
                seen["in"] = args[0]

            def swap(mod: nn.Module, args: tuple, output: Any, layer: int = layer,
                     seen: dict[str, Tensor] = seen) -> Any:
                x_in = seen.pop("in")
                if isinstance(output, tuple):
                    return (fn(layer, x_in, output[0]), *output[1:])
                return fn(layer, x_in, output)

            handles.append(self.layers[layer].mlp.register_forward_pre_hook(grab))
            handles.append(self._module_for("mlp_out", layer).register_forward_hook(swap))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def run_with_cache(
        self, input_ids: Tensor, attention_mask: Tensor | None, hookpoints: Sequence[str], stop_early: bool = True
    ) -> dict[str, Tensor]:
        """Run the model on [B, T] ids and return {hookpoint: tensor}; blocks after the deepest one are skipped.

        Shapes: per-token vectors [B, T, width]; attn_pattern [B, H, T, T]; attn_value [B, T, n_kv, d_head].
        """
        out: dict[str, Tensor] = {}
        deepest = max(parse_hookpoint(h)[1] for h in hookpoints)
        handles = [self._register(h, out) for h in hookpoints]
        if stop_early:
            def stop(mod: nn.Module, args: tuple, output: Any) -> None:
                raise _StopForward
            handles.append(self.layers[deepest].register_forward_hook(stop))
        needs_pattern = any(h.startswith("attn_pattern") for h in hookpoints)
        try:
            with self._eager_attention(needs_pattern):
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return out

    # ---- tokens --------------------------------------------------------------------------------------------
    def token_strings(self, ids: Sequence[int], cache: dict[int, str] | None = None) -> list[str]:
        """Decoded token strings with their leading spaces (TDB style: ' the', 'ulously'). A character split over
        several byte tokens (byte fallback, byte-level BPE), which decodes to '\ufffd' token by token, is given
        whole to the run's first token and '' to the rest, so the strings join to the text. `cache`: id → string."""
        ids = [int(i) for i in ids]
        strs = []
        for i in ids:
            if cache is None or i not in cache:
                t = self.tokenizer.decode([i])
                if cache is None:
                    strs.append(t)
                    continue
                cache[i] = t
            strs.append(cache[i])
        return merge_byte_tokens(ids, strs, self.tokenizer.decode)
