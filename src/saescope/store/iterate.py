"""Shuffled batch iteration over shards, as a pure generator (seeded, deterministic, resumable by count)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def shuffled_batches(
    load: Callable[[int], Tensor],
    n_shards: int,
    batch_size: int,
    seed: int = 0,
    buffer_rows: int = 65536,
    epochs: int | None = None,
    skip_batches: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Iterator[Tensor]:
    """Yield [batch_size, d] batches: shards in a seeded random order feed a buffer that is shuffled and half-drained.

    Mixing across shards is what the buffer is for: a batch draws from every shard currently in the buffer. The
    stream is a pure function of (seed, shards), so a trainer resumes exactly by passing `skip_batches`.
    """
    g = torch.Generator().manual_seed(seed)
    epoch = 0
    buf: Tensor | None = None
    emitted = 0
    while epochs is None or epoch < epochs:
        for i in torch.randperm(n_shards, generator=g).tolist():
            x = load(i).to(dtype)
            buf = x if buf is None else torch.cat([buf, x])
            if buf.shape[0] < buffer_rows:
                continue
            buf = buf[torch.randperm(buf.shape[0], generator=g)]
            n_out = (buf.shape[0] // 2 // batch_size) * batch_size
            for s in range(0, n_out, batch_size):
                if emitted >= skip_batches:
                    yield buf[s:s + batch_size]
                emitted += 1
            buf = buf[n_out:]
        epoch += 1
        if n_shards == 0:
            return
    if buf is not None and buf.shape[0] >= batch_size:  # drain what is left after the last epoch
        buf = buf[torch.randperm(buf.shape[0], generator=g)]
        for s in range(0, buf.shape[0] - batch_size + 1, batch_size):
            if emitted >= skip_batches:
                yield buf[s:s + batch_size]
            emitted += 1
