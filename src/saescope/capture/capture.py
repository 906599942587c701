"""Corpus capture: fixed-length contexts → hooked forward (stopped early) → activation store shards."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from saescope.config import DType, ModelConfig, middle_layer
from saescope.corpus import CorpusConfig
from saescope.errors import SaescopeError
from saescope.models import HookedModel
from saescope.io import read_json
from saescope.store import ActivationStore, StoreMeta, StoreWriter
from saescope.store.store import MANIFEST
from saescope.store.store import next_context as _next_context
from saescope.store.store import write_shard

log = logging.getLogger(__name__)


@dataclass
class CaptureOptions:
    """How corpus contexts are cut, batched and stored (`saescope run` nests these as its capture options)."""

    context_len: int = 128
    """Tokens per context, BOS included (BOS is not stored)."""
    batch_size: int = 16
    """Contexts per forward pass."""
    shard_contexts: int = 64
    """Contexts per shard: the unit of resume (a kill loses at most one shard)."""
    max_tokens: int = 0
    """Stop after this many stored tokens (0 = the whole corpus)."""
    store_dtype: DType = "float32"
    """dtype of stored activations."""

    def __post_init__(self) -> None:
        if self.context_len < 2:
            raise SaescopeError(f"--context_len {self.context_len}: must be at least 2")
        if self.batch_size < 1 or self.shard_contexts < 1:
            raise SaescopeError("--batch_size and --shard_contexts must be positive")
        if self.max_tokens < 0:
            raise SaescopeError("--max_tokens must be >= 0")


@dataclass
class CaptureConfig:
    """Capture activations from a corpus into a store, or (with --generate N) a seed-format dataset from prompts."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    capture: CaptureOptions = field(default_factory=CaptureOptions)
    out: str = "runs/default/store"
    """Output directory: an activation store (corpus mode) or a seed dataset folder (generate mode)."""
    hookpoints: str = ""
    """Comma-separated hookpoints or globs (resid_post.5, mlp_out.*). Default: the middle layer's resid_post."""
    overwrite: bool = False
    """Start over instead of resuming an existing store."""
    generate: int = 0
    """Generate mode: greedily generate up to N tokens per prompt and record their activations (seed format)."""
    prompts: str = ""
    """Generate mode: a file with one prompt per line (default: the 7 seed prompts)."""
    chat_template: bool = False
    """Generate mode: wrap prompts in the tokenizer's chat template (instruction-tuned models)."""

    def __post_init__(self) -> None:
        if self.generate < 0:
            raise SaescopeError("--generate must be >= 0")


def default_hookpoint(hm: HookedModel) -> str:
    return f"resid_post.{middle_layer(hm.n_layers)}"


def valid_mask(ids: Tensor, special: set[int]) -> Tensor:
    """[B, T] bool: positions whose activations are stored (not BOS, not padding)."""
    mask = torch.ones_like(ids, dtype=torch.bool)
    for s in special:
        mask &= ids != s
    return mask


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
    special = {t for t in (hm.tokenizer.bos_token_id, hm.tokenizer.pad_token_id) if t is not None}
    device = next(hm.model.parameters()).device
    contexts = iter_contexts(hm.tokenizer, cfg.data.texts(), opt.context_len)
    contexts = itertools.islice(contexts, start, None)
    per_ctx = opt.context_len - 1
    bar = tqdm(total=opt.max_tokens or None, initial=rows, unit="tok", unit_scale=True, desc=f"capture {hm.name}",
               smoothing=0.1, disable=not dist.is_main())
    initial = rows
    t0 = time.perf_counter()
    ctx_index = start
    # Rounds of `ws` shards of `shard_contexts` contexts: rank r captures the r-th of each round (one process: every
    # shard); rank 0 lists them in the manifest in context order after each round, so a killed run resumes there.
    while not (opt.max_tokens and rows >= opt.max_tokens):
        budget = -(-(opt.max_tokens - rows) // per_ctx) if opt.max_tokens else None  # contexts still wanted
        chunks = []
        for r in range(ws):  # every rank reads the round's contexts; it runs the model on its own chunk only
            chunk = list(itertools.islice(contexts, opt.shard_contexts))
            if budget is not None:  # stop near the budget: whole contexts, at most one over
                chunk = chunk[: max(0, budget - sum(len(c) for c in chunks))] if chunks else chunk[: max(1, budget)]
            chunks.append(chunk)
        if not chunks[0]:
            break
        mine, my_start = chunks[rank], ctx_index + sum(len(c) for c in chunks[:rank])
        info = None
        if mine:
            acts: dict[str, list[Tensor]] = {h: [] for h in hookpoints}
            tok, ctx, pos = [], [], []
            for b in range(0, len(mine), opt.batch_size):
                ids = torch.tensor(mine[b:b + opt.batch_size], device=device)  # [B, T]
                cache = hm.run_with_cache(ids, None, hookpoints)
                mask = valid_mask(ids, special)  # [B, T]
                for h in hookpoints:
                    acts[h].append(hm.token_rows(h, cache[h])[mask].float().cpu())  # [rows, width]
                tok.append(ids[mask].cpu())
                ci = torch.arange(my_start + b, my_start + b + ids.shape[0], device=device)[:, None].expand_as(ids)
                ctx.append(ci[mask].cpu())
                pos.append(torch.arange(ids.shape[1], device=device).expand_as(ids)[mask].cpu())
                bar.update(int(mask.sum()) * ws)
            info = write_shard(cfg.out, meta, n_shards + rank, {h: torch.cat(a) for h, a in acts.items()},
                               torch.cat(tok), torch.cat(ctx), torch.cat(pos), (my_start, my_start + len(mine)))
        infos = dist.gather_objects(info)
        n_new = sum(1 for x in infos if x is not None)
        if writer is not None:
            for x in infos:
                if x is not None:
                    writer.append(x)
        rows += sum(x["rows"] for x in infos if x is not None)
        n_shards += n_new
        ctx_index += sum(len(c) for c in chunks)
        if any(not c for c in chunks):  # the corpus (or the budget) ran out inside this round
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
