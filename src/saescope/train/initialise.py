"""How a dictionary starts: the untrained SAE, transcoder or CLT a TrainerConfig describes, and what its first
rows set (b_dec at their geometric median, the input scale, a skip transcoder's least-squares skip). The loop that
trains it is `trainer.Trainer`."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from saescope import distributed as dist_utils
from saescope.sae import SAEConfig, sae_class
from saescope.train.config import TrainerConfig


def geometric_median(x: Tensor, iters: int = 100, eps: float = 1e-6) -> Tensor:
    """Weiszfeld iterations on [N, d] → [d]."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(eps)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < eps * (1 + y.norm()):
            return y_new
        y = y_new
    return y


INIT_ROWS = 4096
"""Rows the least-squares skip fit reads (Trainer.init_batches)."""

SKIP_RIDGE = 1e-2
"""Ridge of the least-squares skip fit, relative to the mean eigenvalue of the inputs' covariance (with one
4,096-row buffer for 640 inputs, held-out FVU was lower at 1e-2 than at 1e-3)."""


@torch.no_grad()
def fit_skip(sae: Any, x: Tensor, y: Tensor) -> None:
    """W_skip, b_dec := the ridge least-squares affine map x → y (x [N, d], y [N, d_out]; a CLT's [N, L, ·], one
    map per layer), in float64."""
    if x.dim() == 2:
        x, y, w, b = x[:, None], y[:, None], sae.W_skip[None], sae.b_dec[None]
    else:
        w, b = sae.W_skip, sae.b_dec  # [L, d, d_out], [L, d_out]
    for l in range(x.shape[1]):
        xl, yl = x[:, l].double(), y[:, l].double()  # [N, d], [N, d_out]
        mx, my = xl.mean(0), yl.mean(0)
        xc = xl - mx
        g = xc.T @ xc  # [d, d]
        g.diagonal().add_(SKIP_RIDGE * float(g.diagonal().mean()) + 1e-12)
        wl = torch.linalg.solve(g, xc.T @ (yl - my))  # [d, d_out]
        w[l].copy_(wl)
        b[l].copy_(my - mx @ wl)


def build_dictionary(cfg: TrainerConfig, d_in: int, d_out: int = 0, n_layers: int = 1,
                     metadata: dict[str, Any] | None = None) -> Any:
    """The untrained SAE, transcoder or cross-layer transcoder that `cfg` (arch, kind, width, k) describes."""
    from saescope.sae.matryoshka import prefix_widths
    from saescope.sae.transcoder import CLTConfig, CrossLayerTranscoder, transcoder_class

    cls = sae_class(cfg.arch)
    if cfg.kind == "clt":
        return CrossLayerTranscoder(CLTConfig(cls.architecture, n_layers, d_in, cfg.width, d_out=d_out, k=cfg.k,
                                              metadata=metadata or {}))
    if cfg.kind != "sae":
        cls = transcoder_class(cls, cfg.kind == "skip_transcoder")
    widths = list(prefix_widths(cfg.matryoshka_widths, cfg.width)) if cls.architecture.startswith("matryoshka") else []
    sae = cls(SAEConfig(cls.architecture, d_in, cfg.width, k=cfg.k, metadata=metadata or {},
                        matryoshka_widths=widths, d_out=d_out if cfg.kind != "sae" else 0,
                        apply_b_dec_to_input=cfg.kind == "sae", lista_iters=cfg.lista_iters * (cfg.encoder == "lista")))
    if widths:
        sae.detach_inner = cfg.matryoshka_detach
        if cfg.matryoshka_sort == "frequency":
            sae.enable_frequency_sort()
    return sae


def split_rows(b: Tensor, kind: str, n_layers: int, d_in: int, d_out: int) -> tuple[Tensor, Tensor | None]:
    """`Trainer.split` without the trainer."""
    if kind == "sae":
        return b, None
    n_in = n_layers * d_in
    x, y = b[:, :n_in], b[:, n_in:]
    if kind == "clt":
        return x.unflatten(1, (n_layers, d_in)), y.unflatten(1, (n_layers, d_out))
    return x, y


def norm_scale(x: Tensor) -> float | Tensor:
    """The factor that makes E‖x‖ = √d: a float for rows [N, d], one per layer [L, 1] for a CLT's [N, L, d]."""
    d = x.shape[-1]
    if x.dim() == 2:
        return float(math.sqrt(d) / x.norm(dim=1).mean().clamp_min(1e-12))
    return (math.sqrt(d) / x.norm(dim=-1).mean(0).clamp_min(1e-12))[:, None]


def broadcast_scale(s: float | Tensor) -> float | Tensor:
    return dist_utils.broadcast_tensor(s.contiguous()) if isinstance(s, Tensor) else dist_utils.broadcast_float(s)


def peek(batches: Iterator[Tensor], n: int) -> tuple[Tensor | None, Iterator[Tensor]]:
    """The first n batches of a stream, concatenated (None where it has none), and the stream with them still at
    its front: a trainer initialises on them and then trains on them as usual."""
    head = list(itertools.islice(batches, n))
    return (torch.cat(head) if head else None), itertools.chain(head, batches)
