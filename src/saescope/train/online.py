"""Train SAEs straight from the model: no store; one forward per batch of contexts feeds the SAE of every hookpoint.

    corpus ──contexts──▶ model forward (stops after the deepest hookpoint) ──rows──▶ one ShuffleBuffer holding every
        hookpoint's row side by side ──batches, split by hookpoint──▶ one Trainer per hookpoint

Memory is bounded by the buffer (buffer_rows + one forward's rows, of all hookpoints' widths), whatever the token
count. A checkpoint (`<out>/online_checkpoint`, written atomically every `checkpoint_every` steps) holds every
trainer's state, the buffer (its rows, generator and position in the drain under way) and the number of contexts
consumed, so `--resume` continues with the same batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.activations import ActivationStream, default_hookpoint
from saescope.config import resolve_device
from saescope.errors import SaescopeError
from saescope.io import write_json
from saescope.store.iterate import ShuffleBuffer
from saescope.train.config import OnlineConfig
from saescope.train.initialise import peek
from saescope.train.trainer import Trainer

log = logging.getLogger(__name__)
CHECKPOINT = "online_checkpoint"


def activation_chunks(hm: Any, contexts: Iterator[list[int]], hookpoints: list[str], forward_contexts: int,
                      counter: list[int]) -> Iterator[dict[str, Tensor]]:
    """One dict {hookpoint: rows [N, width] float32, cpu} per `forward_contexts` contexts (BOS and padding left out,
    rows non-finite at any hookpoint dropped at all of them); `counter[0]` counts contexts consumed. Under torchrun
    each rank runs the model on its slice of the contexts (`saescope.activations`) and the rows are gathered, in rank
    order, on every rank: the same chunk, row for row, as one process running them all."""
    from saescope import distributed as dist

    stream = ActivationStream(hm, contexts, hookpoints, forward_contexts)
    while (rnd := stream.next_round(forward_contexts)) is not None:
        fwd = next(stream.forwards(rnd), None)  # one forward: a rank's slice is at most forward_contexts
        rows = fwd.rows if fwd is not None else stream.empty_rows(rnd)  # a short last round leaves ranks without
        finite = torch.stack([r.isfinite().all(1) for r in rows.values()]).all(0) if rows else None
        if finite is not None and not bool(finite.all()):
            rows = {h: r[finite] for h, r in rows.items()}
        counter[0] += rnd.size
        yield {h: dist.gather_rows(r) for h, r in rows.items()}


def _save(out: Path, trainers: dict[str, Trainer], buffer: ShuffleBuffer, contexts: int) -> None:
    from saescope.train.checkpoint import save_checkpoint

    tensors: dict[str, Tensor] = {f"buffer/{k}": v for k, v in buffer.state_dict().items()}
    meta: dict[str, Any] = {"contexts": contexts, "trainers": {}}
    for h, tr in trainers.items():
        t, m = tr.state()
        tensors.update({f"{h}/{k}": v for k, v in t.items()})
        meta["trainers"][h] = m
    save_checkpoint(out / CHECKPOINT, tensors, meta)


def _restore(out: Path, trainers: dict[str, Trainer], buffer: ShuffleBuffer) -> int:
    """Restore every trainer and the buffer; the number of contexts already consumed (0 without a checkpoint)."""
    from saescope.train.checkpoint import find_checkpoint, load_checkpoint

    path = find_checkpoint(out / CHECKPOINT)
    if path is None:
        return 0
    tensors, meta = load_checkpoint(path)
    if set(meta["trainers"]) != set(trainers):
        raise SaescopeError(f"{path}: made for hookpoints {', '.join(meta['trainers'])}; use another --out or "
                            "--noresume")
    for h, tr in trainers.items():
        tr.load_state({k[len(h) + 1:]: v for k, v in tensors.items() if k.startswith(f"{h}/")},
                      meta["trainers"][h], str(path))
    buffer.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("buffer/")})
    return int(meta["contexts"])


def plan_groups(cfg: OnlineConfig, hm: Any) -> dict[str, list[str]]:
    """{trainer name: hookpoints whose rows, side by side, make its training row}: one SAE per hookpoint, or
    transcoders (one per layer, `layer_L`, or one CLT, `clt`) over the layers --hookpoints names."""
    from saescope.models.hookpoints import ATTENTION_KINDS

    tc = cfg.trainer
    if tc.kind != "sae":  # transcoders: --hookpoints names the layers (any kind; '' = every layer)
        from saescope.train.transcoders import pair_groups

        layers = sorted({int(h.split(".")[1]) for h in hm.select(cfg.hookpoints)}) if cfg.hookpoints else \
            list(range(hm.n_layers))
        groups = pair_groups(tc.kind, layers)
    else:
        sel = hm.select(cfg.hookpoints) if cfg.hookpoints else [default_hookpoint(hm)]
        groups = {h: [h] for h in sel}
    bad = [h for g in groups.values() for h in g if h.split(".")[0] in ATTENTION_KINDS]
    if bad:
        raise SaescopeError(f"--hookpoints: {', '.join(bad)} are attention patterns/values, not SAE inputs")
    return groups


def build_trainers(cfg: OnlineConfig, hm: Any, groups: dict[str, list[str]], steps: int,
                   device: str) -> dict[str, Trainer]:
    """One Trainer per group, with the SAELens metadata its saved directory carries."""
    tc = cfg.trainer
    trainers = {}
    for name, g in groups.items():
        n = len(g) // 2 if tc.kind == "clt" else 1
        meta = {"model_name": hm.name, "hook_name": g[0] if n == 1 else "mlp_in.*", "context_size": cfg.context_len,
                "prepend_bos": True, "dataset_path": cfg.data.corpus, "trained_with": "saescope (online)"}
        if tc.kind != "sae":
            meta["hook_name_out"] = g[-1] if n == 1 else "mlp_out.*"
        trainers[name] = Trainer(tc, hm.width(g[0], cfg.context_len), steps, metadata=meta, device=device,
                                 d_out=hm.width(g[-1], cfg.context_len), n_layers=n)
    return trainers


def fit_online(trainers: dict[str, Trainer], batches: Iterator[Tensor], widths: list[int], steps: int,
               progress: Callable[[int, int], None], checkpoint: Callable[[int], None]) -> tuple[int, float]:
    """Feed each global batch [N, Σ widths] to every trainer (its column slice; each rank trains on its slice of
    the rows) until `steps`; returns (steps done in total, seconds). `progress(step, step0)` after each step,
    `checkpoint(step)` where due."""
    from saescope import distributed as dist

    tc = next(iter(trainers.values())).cfg
    step0 = step = next(iter(trainers.values())).step
    t0 = time.perf_counter()
    if not all(tr.initialised for tr in trainers.values()):  # on the first batches (Trainer.init_batches)
        head, batches = peek(iter(batches), max(tr.init_batches for tr in trainers.values()))
        if head is not None:
            for tr, rows in zip(trainers.values(), head.split(widths, dim=1)):
                if not tr.initialised:
                    tr._initialise(*tr.split(dist.local_slice(rows).to(tr.device)))
    for b in batches:
        if step >= steps:
            break
        for (h, tr), rows in zip(trainers.items(), b.split(widths, dim=1)):
            x, y = tr.split(dist.local_slice(rows).to(tr.device))
            if not tr.initialised:
                tr._initialise(x, y)
            st = tr.train_step(x, y)
            if not math.isfinite(st["loss"]):
                raise SaescopeError(f"{h} step {tr.step}: loss is {st['loss']}; lower --lr or check the inputs")
            if tr.step % 10 == 0 or tr.step == steps:
                st["tokens_per_s"] = (tr.step - step0) * tc.batch_size / max(time.perf_counter() - t0, 1e-9)
                tr.history.append({"step": tr.step, **st})
        step += 1
        progress(step, step0)
        if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < steps and dist.is_main():
            checkpoint(step)
    return step, time.perf_counter() - t0


def write_reports(cfg: OnlineConfig, trainers: dict[str, Trainer], tokens_per_s: float,
                  contexts: int) -> dict[str, Any]:
    """Save every trained dictionary (<out>/<hookpoint or layer_L>/, a CLT in <out>/) with metrics.json and
    train_history.json; returns {name: report}."""
    out = Path(cfg.out)
    reports = {}
    for h, tr in trainers.items():
        sae = tr.finalize()
        d = out / h.replace(".", "_") if h != "clt" else out
        sae.cpu().save(d)
        last = tr.history[-1] if tr.history else {}
        reports[h] = {"hookpoint": h, "steps": tr.step, "tokens": tr.tokens, "fvu": last.get("fvu"),
                      "l0": last.get("l0"), "dead": last.get("dead"), "train_tokens_per_s": tokens_per_s,
                      "contexts": contexts, "config": asdict(cfg)}
        write_json(d / "metrics.json", reports[h])
        write_json(d / "train_history.json", tr.history)
    return reports


def _check(cfg: OnlineConfig, world: int) -> None:
    if cfg.trainer.tokens <= 0:
        raise SaescopeError("--tokens: online training needs a token budget (e.g. --tokens 50000000)")
    if cfg.trainer.batch_size % world:
        raise SaescopeError(f"--batch_size {cfg.trainer.batch_size} is not divisible by the {world} ranks")


def train_online(cfg: OnlineConfig, hm: Any = None, progress: bool = True) -> dict[str, Any]:
    """Train one SAE per hookpoint (or transcoders: one per layer, `layer_L`, or one CLT, `clt`, written to <out>/)
    from one model forward per batch of contexts; returns {hookpoint or name: report}."""
    from tqdm.auto import tqdm

    from saescope import distributed as dist
    from saescope.corpus import iter_contexts

    dist.init_from_env()
    hm = hm or cfg.model.load()
    tc = cfg.trainer
    groups = plan_groups(cfg, hm)
    _check(cfg, dist.world_size())
    hps = [h for g in groups.values() for h in g]
    steps = max(1, tc.tokens // tc.batch_size)
    out = Path(cfg.out)
    widths = [sum(hm.width(h, cfg.context_len) for h in g) for g in groups.values()]  # one slice per trainer
    trainers = build_trainers(cfg, hm, groups, steps, resolve_device(cfg.model.device))
    buffer = ShuffleBuffer(tc.batch_size, tc.buffer_rows, seed=tc.seed)  # every hookpoint's row side by side
    if cfg.resume:
        consumed = _restore(out, trainers, buffer)
    else:
        consumed = 0
        if (out / CHECKPOINT).exists():
            import shutil

            shutil.rmtree(out / CHECKPOINT)
    contexts = itertools.islice(iter_contexts(hm.tokenizer, cfg.data.texts(), cfg.context_len), consumed, None)
    counter = [consumed]  # contexts whose rows are in the buffer or already trained on
    chunks = activation_chunks(hm, contexts, hps, cfg.forward_contexts, counter)

    def batches() -> Iterator[Tensor]:
        yield from (buffer.buf[i] for i in buffer.drain())  # a drain a checkpoint cut short
        for chunk in chunks:
            yield from (buffer.buf[i] for i in buffer.add(torch.cat([chunk[h] for h in hps], dim=1)))
        yield from (buffer.buf[i] for i in buffer.finish())  # the corpus ran out before the token budget

    step0 = next(iter(trainers.values())).step
    buf_mb = (tc.buffer_rows * sum(widths) * 4) / 2**20
    what = f"{len(groups)} {'SAE' if tc.kind == 'sae' else tc.kind}{'s' * (len(groups) > 1)}"
    bar = tqdm(total=steps, initial=step0, unit="step", disable=not progress,
               desc=f"train {what} online (buffer {buf_mb:,.0f} MiB)")
    log.info("online training of %s (%s, F=%d, k=%d): %d steps x %d tokens, one forward per %d contexts", what,
             tc.arch, tc.width, tc.k, steps, tc.batch_size, cfg.forward_contexts)
    t0 = time.perf_counter()

    def tick(step: int, step0: int) -> None:
        bar.update(1)
        if step % 10 == 0:
            tps = (step - step0) * tc.batch_size / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(contexts=f"{counter[0]:,}", tok_s=f"{tps:,.0f}")

    step, elapsed = fit_online(trainers, batches(), widths, steps, tick,
                               lambda _: _save(out, trainers, buffer, counter[0]))
    bar.close()
    if step < steps:
        log.warning("the corpus ran out after %d of %d steps", step, steps)
    if not dist.is_main():
        dist.shutdown()  # waits for rank 0 to write the SAEs
        return {}
    reports = write_reports(cfg, trainers, (step - step0) * tc.batch_size / max(elapsed, 1e-9), counter[0])
    dist.shutdown()
    return reports
