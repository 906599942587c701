"""Shuffled batch iteration over shards, as a pure generator (seeded, deterministic, resumable by count)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor


class ShuffleBuffer:
    """An in-place shuffle buffer: rows go in as chunks; once `buffer_rows` rows are held, a seeded permutation drains
    half of them (whole batches), the rest moves to the front. Its state (rows held, generator, position in a drain)
    can be saved between batches and restored, so a stream fed from a model resumes exactly (`state_dict`).

    Memory: one buffer of (buffer_rows + one chunk) rows, filled in place, plus the half kept after a drain while it
    is moved to the front (a batch is gathered by index); concatenating and permuting copies of the whole buffer
    held three of them at once (1.8 GB for gemma-3-270m's 2,048 MLP neurons).
    """

    def __init__(self, batch_size: int, buffer_rows: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        self.batch_size, self.buffer_rows, self.dtype = batch_size, buffer_rows, dtype
        self.g = torch.Generator().manual_seed(seed)
        self.buf: Tensor | None = None  # [capacity, d]; rows [0, n) are live
        self.n = 0
        self.perm: Tensor | None = None  # the drain under way: batches are perm[pos:pos + batch], pos < n_out
        self.pos = self.n_out = 0

    def add(self, x: Tensor) -> Iterator[Tensor]:
        """Put a chunk [rows, d] in; yields the index tensors of the batches that become due (gather them with
        `self.buf[idx]` before asking for the next one)."""
        if self.buf is None or self.n + x.shape[0] > self.buf.shape[0]:  # (re)allocate: once, unless a chunk is larger
            grown = torch.empty(max(self.buffer_rows, self.n) + x.shape[0], x.shape[1], dtype=self.dtype)
            if self.buf is not None:
                grown[:self.n] = self.buf[:self.n]
            self.buf = grown
        self.buf[self.n:self.n + x.shape[0]] = x
        self.n += x.shape[0]
        if self.n < self.buffer_rows:
            return
        self.perm = torch.randperm(self.n, generator=self.g)
        self.pos, self.n_out = 0, (self.n // 2 // self.batch_size) * self.batch_size
        yield from self.drain()

    def drain(self) -> Iterator[Tensor]:
        """The rest of the drain under way (after `load_state_dict` mid-drain too), then the kept half to the front."""
        if self.perm is None:
            return
        while self.pos < self.n_out:
            s = self.pos
            self.pos += self.batch_size
            yield self.perm[s:s + self.batch_size]
        assert self.buf is not None
        rest = self.perm[self.n_out:]
        self.buf[:len(rest)] = self.buf[rest]
        self.n, self.perm, self.pos, self.n_out = len(rest), None, 0, 0

    def finish(self) -> Iterator[Tensor]:
        """At the end of the stream: every whole batch of what is left, in one last permutation."""
        yield from self.drain()
        if self.buf is not None and self.n >= self.batch_size:
            perm = torch.randperm(self.n, generator=self.g)
            for s in range(0, self.n - self.batch_size + 1, self.batch_size):
                yield perm[s:s + self.batch_size]
            self.n = 0

    def state_dict(self) -> dict[str, Tensor]:
        d = 0 if self.buf is None else self.buf.shape[1]
        rows = self.buf[:self.n].clone() if self.buf is not None else torch.empty(0, d, dtype=self.dtype)
        return {"rows": rows, "generator": self.g.get_state(),
                "perm": self.perm if self.perm is not None else torch.empty(0, dtype=torch.long),
                "pos": torch.tensor([self.pos, self.n_out, int(self.perm is not None)])}

    def load_state_dict(self, st: dict[str, Tensor]) -> None:
        rows = st["rows"].to(self.dtype)
        self.buf = torch.empty(max(self.buffer_rows, rows.shape[0]) + 1, rows.shape[1], dtype=self.dtype)
        self.buf[:rows.shape[0]] = rows
        self.n = rows.shape[0]
        self.g.set_state(st["generator"])
        self.pos, self.n_out, has_perm = (int(v) for v in st["pos"])
        self.perm = st["perm"].clone() if has_perm else None


def shuffled_batches(
    load: Callable[[int], Tensor],
    n_shards: int,
    batch_size: int,
    seed: int = 0,
    buffer_rows: int = 65536,
    epochs: int | None = None,
    skip_batches: int = 0,
    dtype: torch.dtype = torch.float32,
    shard_order: str = "random",
) -> Iterator[Tensor]:
    """Yield [batch_size, d] batches: shards in a seeded random order (or in order: `shard_order="sequential"`,
    the order a model produces them in online training) feed a `ShuffleBuffer`.

    Mixing across shards is what the buffer is for: a batch draws from every shard currently in the buffer. The
    stream is a pure function of (seed, shards), so a trainer resumes exactly by passing `skip_batches`.
    """
    sb = ShuffleBuffer(batch_size, buffer_rows, seed, dtype)
    epoch = emitted = 0
    while epochs is None or epoch < epochs:
        order = torch.randperm(n_shards, generator=sb.g).tolist() if shard_order == "random" else range(n_shards)
        for i in order:
            for idx in sb.add(load(i)):
                if emitted >= skip_batches:
                    yield sb.buf[idx]
                emitted += 1
        epoch += 1
        if n_shards == 0:
            return
    for idx in sb.finish():  # drain what is left after the last epoch
        if emitted >= skip_batches:
            yield sb.buf[idx]
        emitted += 1
