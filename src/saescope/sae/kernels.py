"""Sparse encode/decode with sparse backward: the TopK family never pays for a dense backward.

A sparse code is COO: `rows` [nnz] (sorted), `cols` [nnz], `vals` [nnz]. The encoder pre-activations are computed
densely once without a graph (one matmul); the selected values are gathered through `GatherEncode`, whose backward
scatters into only the selected encoder columns. The decoder is `F.embedding_bag` (sum of the selected W_dec rows
weighted by the values), whose backward also touches only those rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK = 1 << 16  # nnz per scatter chunk: bounds the [nnz, d] temporary of the encoder backward


class GatherEncode(torch.autograd.Function):
    """vals[n] = pre[rows[n], cols[n]] where pre = x_in @ W_enc + b_enc; backward is sparse in (rows, cols)."""

    @staticmethod
    def forward(ctx: Any, x_in: Tensor, W_enc: Tensor, b_enc: Tensor, rows: Tensor, cols: Tensor, pre: Tensor) -> Tensor:
        ctx.save_for_backward(x_in, W_enc, rows, cols)
        return pre[rows, cols]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # grad: [nnz]
        x_in, W_enc, rows, cols = ctx.saved_tensors
        d, n_lat = W_enc.shape
        g_x = g_W = g_b = None
        if ctx.needs_input_grad[1]:
            g_WT = torch.zeros(n_lat, d, dtype=grad.dtype, device=grad.device)  # [F, d]: rows contiguous
            for s in range(0, grad.numel(), _CHUNK):
                r, c, g = rows[s:s + _CHUNK], cols[s:s + _CHUNK], grad[s:s + _CHUNK]
                g_WT.index_add_(0, c, x_in[r] * g[:, None])
            g_W = g_WT.T
        if ctx.needs_input_grad[2]:
            g_b = torch.zeros(n_lat, dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        if ctx.needs_input_grad[0]:
            g_x = torch.zeros_like(x_in).index_add_(0, rows, W_enc.T[cols] * grad[:, None])
        return g_x, g_W, g_b, None, None, None


def sparse_decode(rows: Tensor, cols: Tensor, vals: Tensor, W_dec: Tensor, n_rows: int) -> Tensor:
    """Σ_j vals_j W_dec[cols_j] per row: [n_rows, d]. `rows` must be sorted ascending."""
    counts = torch.bincount(rows, minlength=n_rows)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=vals, include_last_offset=False)


def topk_coo(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-row top-k of pre → (rows, cols), rows sorted. pre: [N, F]."""
    N = pre.shape[0]
    cols = pre.topk(k, dim=1, sorted=False).indices  # [N, k]
    rows = torch.arange(N, device=pre.device).repeat_interleave(k)
    return rows, cols.reshape(-1)


def batch_topk_coo(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top (k·N) entries of the whole batch (BatchTopK) → (rows, cols), rows sorted."""
    N, n_lat = pre.shape
    flat = pre.flatten().topk(min(k * N, pre.numel()), sorted=False).indices
    flat = flat.sort().values  # row-major order ⇒ rows ascending
    return flat // n_lat, flat % n_lat
