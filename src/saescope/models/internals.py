"""Model internals behind `HookedModel`: the architecture's blocks, projections, norms and weights, found by name
on GPT-2, Gemma 3 and Llama-family `transformers` models. Code outside `models/` asks for these, never for
submodules by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError


def _find_layers(model: nn.Module, n_layers: int) -> nn.ModuleList:
    for cand in ("transformer.h", "model.layers", "model.language_model.layers", "language_model.model.layers"):
        mod: Any = model
        try:
            for part in cand.split("."):
                mod = getattr(mod, part)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers:
            return mod
    raise SaescopeError(f"model {type(model).__name__}: cannot find its list of {n_layers} transformer blocks")


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


class ModelInternals:
    """The accessors of a causal LM's parts (the base of HookedModel)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        cfg = _text_config(model.config)
        self.n_layers: int = cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layer
        self.d_model: int = cfg.hidden_size
        self.n_heads: int = cfg.num_attention_heads
        self.n_kv_heads: int = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.d_head: int = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.layers = _find_layers(model, self.n_layers)
        block = self.layers[0]
        self.arch = "gpt2" if hasattr(block, "attn") and hasattr(block, "ln_1") else (
            "gemma" if hasattr(block, "pre_feedforward_layernorm") else "llama"
        )
        self.d_mlp: int = self._down_proj(0).weight.shape[0 if self.arch == "gpt2" else 1]

    def _attn(self, layer: int) -> nn.Module:
        block = self.layers[layer]
        return block.attn if self.arch == "gpt2" else block.self_attn

    def _down_proj(self, layer: int) -> nn.Module:
        mlp = self.layers[layer].mlp
        return mlp.c_proj if self.arch == "gpt2" else mlp.down_proj

    def attention(self, layer: int) -> nn.Module:
        """Layer `layer`'s attention module (its forward returns (output, pattern) under `eager_attention`)."""
        return self._attn(layer)

    def down_proj(self, layer: int) -> nn.Module:
        """Layer `layer`'s MLP output projection: its input is `mlp_post_act`, its output `mlp_out` (before Gemma's
        post-feedforward norm)."""
        return self._down_proj(layer)

    def o_proj(self, layer: int) -> nn.Module:
        """Layer `layer`'s attention output projection: its input is the heads' outputs [..., H·d_head]."""
        attn = self._attn(layer)
        return attn.c_proj if self.arch == "gpt2" else attn.o_proj

    def value_proj(self, layer: int) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
        """(the module whose output holds layer `layer`'s values, its output → the values [..., n_kv·d_head])."""
        attn = self._attn(layer)
        if self.arch == "gpt2":  # one c_attn writes [q | k | v]
            return attn.c_attn, lambda out: out[..., 2 * self.d_model:]
        return attn.v_proj, lambda out: out

    def attention_through(self, layer: int, side: str) -> list[Any]:
        """Forward hooks (handles) that detach two of layer `layer`'s query/key/value projections, keeping `side`
        (q, k or v): gradients then flow into its attention through that side only; values are unchanged."""
        attn = self._attn(layer)
        if self.arch == "gpt2":  # one c_attn writes [q | k | v]
            d = self.d_model

            def split(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
                parts = list(out.split(d, dim=-1))
                return torch.cat([p if s == side else p.detach() for s, p in zip("qkv", parts)], dim=-1)
            return [attn.c_attn.register_forward_hook(split)]
        proj = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}
        return [m.register_forward_hook(lambda mod, args, out: out.detach()) for s, m in proj.items() if s != side]

    def final_norm(self) -> nn.Module:
        """The norm between the last block and the unembedding (GPT-2 ln_f, Llama/Gemma norm)."""
        for name, mod in self.model.named_modules():
            if name.endswith("transformer.ln_f") or name in ("model.norm", "model.language_model.norm"):
                return mod
        raise SaescopeError(f"{type(self.model).__name__}: cannot find the final norm")

    def post_mlp_norm(self, layer: int) -> nn.Module | None:
        """Gemma's norm between the MLP output and the residual stream (None elsewhere)."""
        return self.layers[layer].post_feedforward_layernorm if self.arch == "gemma" else None

    def norm_gain(self, norm: nn.Module) -> Tensor:
        """The per-dimension scale a norm applies after normalising [d]: Gemma's 1 + weight, else its weight."""
        w = norm.weight.detach().float()
        return 1.0 + w if self.arch == "gemma" else w

    def W_O(self, layer: int) -> Tensor:
        """Per-head output projection, [n_heads, d_head, d_model]: head h writes z_h @ W_O[h]."""
        attn = self._attn(layer)
        if self.arch == "gpt2":
            w = attn.c_proj.weight  # Conv1D: [in = H*dh, out = d]
        else:
            w = attn.o_proj.weight.T  # Linear: [out = d, in = H*dh]
        return w.reshape(self.n_heads, self.d_head, self.d_model)

    def attn_out_bias(self, layer: int) -> Tensor | None:
        """The attention output projection's bias [d_model] (GPT-2), or None."""
        attn = self._attn(layer)
        proj = attn.c_proj if self.arch == "gpt2" else attn.o_proj
        return proj.bias

    def post_attention_norm(self, layer: int) -> nn.Module | None:
        """Gemma's norm between the attention output and the residual stream (None elsewhere)."""
        return self.layers[layer].post_attention_layernorm if self.arch == "gemma" else None

    def W_out_mlp(self, layer: int) -> Tensor:
        """MLP output weights, [d_mlp, d_model]: neuron i writes along row i."""
        w = self._down_proj(layer).weight
        return w if self.arch == "gpt2" else w.T

    def mlp_forward(self, layer: int, x_in: Tensor) -> Tensor:
        """What layer L's MLP writes to the residual given its input (mlp_in.L → mlp_out.L, Gemma's
        post-feedforward norm included): [..., d] → [..., d]. Calls the modules' `forward` directly, so the hooks
        of replace_mlps/patch on them do not fire (an oracle inside replace_mlps does not recurse)."""
        block = self.layers[layer]
        y = block.mlp.forward(x_in)
        return block.post_feedforward_layernorm.forward(y) if self.arch == "gemma" else y

    def W_U(self) -> Tensor:
        """Unembedding, [d_model, vocab]."""
        return self.model.get_output_embeddings().weight.T

    def head_write_norms(self, layer: int, values: Tensor) -> Tensor:
        """‖v_h[j] W_O[h]‖ for every head and key position: [B, T, n_kv, d_head] → [B, n_heads, T]."""
        group = self.n_heads // self.n_kv_heads
        v = values.repeat_interleave(group, dim=2)  # [B, T, H, dh] (grouped-query heads share a KV head)
        W_O = self.W_O(layer).to(v.dtype)  # [H, dh, d]
        writes = torch.einsum("bthk,hkd->bhtd", v, W_O)  # [B, H, T, d]
        return writes.norm(dim=-1)
