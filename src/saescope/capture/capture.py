"""Corpus capture: fixed-length contexts → hooked forward (stopped early) → activation store shards."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.activations import ActivationStream, default_hookpoint
from saescope.capture.config import CaptureConfig
from saescope.errors import SaescopeError
from saescope.io import read_json
from saescope.models import HookedModel
from saescope.store import ActivationStore, StoreMeta, StoreWriter
from saescope.store.store import MANIFEST, write_shard
from saescope.store.store import next_context as _next_context

log = logging.getLogger(__name__)


def capture_corpus(cfg: CaptureConfig, hm: HookedModel | None = None) -> ActivationStore:
    """Capture `cfg.data` into the store at `cfg.out`, resuming after its last complete shard."""
    from tqdm.auto import tqdm

    from saescope.corpus import iter_contexts

    hm = hm or cfg.model.load()
    opt = cfg.capture
    hookpoints = hm.select(cfg.hookpoints) if cfg.hookpoints else [default_hookpoint(hm)]
    meta = StoreMeta(
        model=hm.name, hookpoints={h: hm.width(h, opt.context_len) for h in hookpoints}, dtype=opt.store_dtype,
        context_len=opt.context_len, source={**cfg.data.describe(), "max_tokens": opt.max_tokens},
        tokenizer=getattr(hm.tokenizer, "name_or_path", ""), extra={"model_spec": cfg.model.model},
    )
    from saescope import distributed as dist

    dist.init_from_env()
    ws, rank = dist.world_size(), dist.rank()
    if ws > 1 and not dist.is_main():
        writer = None  # rank 0 owns the manifest; the others write their shards' files
        torch.distributed.barrier()  # after rank 0 has opened (or reset) the store
        manifest = read_json(Path(cfg.out) / MANIFEST, "store manifest")
        rows = sum(x["rows"] for x in manifest["shards"])
        done, start = manifest.get("complete") and rows > 0, _next_context(manifest)
        n_shards = len(manifest["shards"])
    else:
        writer = StoreWriter(cfg.out, meta, overwrite=cfg.overwrite)
        if ws > 1:
            torch.distributed.barrier()
        done, start, rows, n_shards = writer.complete, writer.next_context, writer.rows, len(writer.shards)
    if done:
        log.info("store %s is already complete (%d rows)", cfg.out, rows)
        dist.shutdown()
        return ActivationStore(cfg.out)
    contexts = iter_contexts(hm.tokenizer, cfg.data.texts(), opt.context_len)
    stream = ActivationStream(hm, itertools.islice(contexts, start, None), hookpoints, opt.batch_size, start)
    per_ctx = opt.context_len - 1
    bar = tqdm(total=opt.max_tokens or None, initial=rows, unit="tok", unit_scale=True, desc=f"capture {hm.name}",
               smoothing=0.1, disable=not dist.is_main())
    initial = rows
    t0 = time.perf_counter()
    # Rounds of `ws` shards of `shard_contexts` contexts: rank r captures the r-th of each round (one process: every
    # shard); rank 0 lists them in the manifest in context order after each round, so a killed run resumes there.
    while not (opt.max_tokens and rows >= opt.max_tokens):
        size = ws * opt.shard_contexts
        if opt.max_tokens:  # stop near the budget: whole contexts, at most one over
            size = min(size, -(-(opt.max_tokens - rows) // per_ctx))
        rnd = stream.next_round(size, per=opt.shard_contexts)
        if rnd is None:
            break
        info = None
        if rnd.mine:
            acts, tok, ctx, pos = _shard_rows(stream, rnd, hookpoints, lambda n: bar.update(n * ws))
            info = write_shard(cfg.out, meta, n_shards + rank, acts, tok, ctx, pos,
                               (rnd.offset, rnd.offset + len(rnd.mine)))
        infos = dist.gather_objects(info)
        n_new = sum(1 for x in infos if x is not None)
        if writer is not None:
            for x in infos:
                if x is not None:
                    writer.append(x)
        rows += sum(x["rows"] for x in infos if x is not None)
        n_shards += n_new
        if rnd.size < size:  # the corpus ran out inside this round
            break
    bar.close()
    elapsed = time.perf_counter() - t0
    if rows == 0:
        dist.shutdown()
        raise SaescopeError(f"corpus '{cfg.data.corpus}': produced no contexts of {opt.context_len} tokens; use a "
                            f"longer corpus (or a smaller --context_len)")
    if writer is not None:
        writer.finish(tokens_per_second=round((rows - initial) / max(elapsed, 1e-9), 1))
    dist.shutdown()
    return ActivationStore(cfg.out)


def _shard_rows(stream: ActivationStream, rnd: Any, hookpoints: list[str], progress: Any
                ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
    """This rank's contexts of a round through the model, as one shard's rows: ({hookpoint: [rows, width]}, token
    ids [rows], context index [rows], position [rows]), BOS and padding masked out; `progress(n)` per forward."""
    acts: dict[str, list[Tensor]] = {h: [] for h in hookpoints}
    tok, ctx, pos = [], [], []
    for f in stream.forwards(rnd):
        for h in hookpoints:
            acts[h].append(f.rows[h])  # [rows, width]
        tok.append(f.ids[f.mask].cpu())
        ci = torch.arange(f.first, f.first + f.ids.shape[0], device=f.ids.device)[:, None].expand_as(f.ids)
        ctx.append(ci[f.mask].cpu())
        pos.append(torch.arange(f.ids.shape[1], device=f.ids.device).expand_as(f.ids)[f.mask].cpu())
        progress(int(f.mask.sum()))
    return {h: torch.cat(a) for h, a in acts.items()}, torch.cat(tok), torch.cat(ctx), torch.cat(pos)

