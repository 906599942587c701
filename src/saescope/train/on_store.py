"""Train an SAE on an activation store and evaluate it on the store's held-out shards (the CLI and `saescope run`; training
straight from the model is `online.py`)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from saescope import distributed as dist_utils
from saescope.config import resolve_device
from saescope.errors import SaescopeError
from saescope.io import write_json
from saescope.models.hookpoints import ATTENTION_KINDS, canonical_hookpoint
from saescope.store import ActivationStore, shuffled_batches
from saescope.train.config import EvalConfig, TrainConfig
from saescope.train.memory import release_freed_memory
from saescope.train.trainer import Trainer

log = logging.getLogger(__name__)


def split_shards(store: ActivationStore, holdout: int) -> tuple[list[int], list[int]]:
    """(training shards, evaluation shards): the last `holdout` are held out; 0 = train on all and evaluate on the
    last training shard (reported as training data, never as held-out)."""
    n = len(store.shards)
    if n == 0:
        raise SaescopeError(f"{store.root}: the store has no shards; capture some activations first")
    if holdout >= n:
        raise SaescopeError(f"--holdout_shards {holdout}: the store {store.root} has only {n} shard(s), so nothing "
                            f"would be left to train on; use at most {n - 1} (0 = evaluate on training data) or "
                            f"capture more (smaller --shard_contexts)")
    if holdout <= 0:
        return list(range(n)), list(range(n))[-1:]
    return list(range(n - holdout)), list(range(n - holdout, n))


def train_from_store(cfg: TrainConfig, progress: bool = True, hm: Any = None) -> dict[str, Any]:
    """Train (and with --e2e_contexts fine-tune in the model `hm`, loaded from the store's model if None), evaluate
    on the held-out shards without splicing, save; returns what metrics.json holds."""
    from saescope.train.evaluate import evaluate_batches

    if cfg.trainer.kind != "sae":
        from saescope.train.transcoders import train_transcoders_from_store

        return train_transcoders_from_store(cfg, progress)
    dist_utils.init_from_env()
    store = ActivationStore(cfg.store)
    inputs = [h for h in store.hookpoints if h.split(".")[0] not in ATTENTION_KINDS]  # what an SAE can read
    hp = canonical_hookpoint(cfg.hookpoint) if cfg.hookpoint else next(iter(inputs), "")
    if hp not in store.hookpoints:
        raise SaescopeError(f"{cfg.store}: no hookpoint '{hp}'; it has {', '.join(store.hookpoints)}")
    if hp not in inputs:
        raise SaescopeError(f"--hookpoint {hp}: attention patterns and values are kept for collation, not for SAEs; "
                            f"pick one of {', '.join(inputs)}")
    d = store.hookpoints[hp]
    tc = cfg.trainer
    ws = dist_utils.world_size()
    if tc.batch_size % ws:
        raise SaescopeError(f"--batch_size {tc.batch_size} is not divisible by the {ws} data-parallel ranks")
    train_ids, eval_ids = split_shards(store, tc.holdout_shards)
    train_rows = sum(store.shards[i]["rows"] for i in train_ids)
    tokens = tc.tokens or int(tc.epochs * train_rows)
    steps = max(1, tokens // tc.batch_size)
    device = resolve_device(cfg.device)
    if device.startswith("cuda") and dist_utils.is_distributed():
        device = f"cuda:{dist_utils.rank() % torch.cuda.device_count()}"
    out = Path(cfg.out)
    meta = {"model_name": store.model, "hook_name": hp, "context_size": store.manifest.get("context_len"),
            "prepend_bos": True, "dataset_path": str(store.root), "trained_with": "saescope"}
    if hm is None and (tc.input_weights == "read_gain" or tc.e2e_contexts):
        hm = _model_of(store, tc, hp, device)
    weights = _input_weights(tc, hm, hp)
    trainer = Trainer(tc, d, steps, metadata=meta, device=device, out=out, dim_weights=weights)
    if cfg.resume:
        trainer.try_resume()
    elif (out / "checkpoint").exists() and dist_utils.is_main():
        import shutil

        shutil.rmtree(out / "checkpoint")
    # The stream is a pure function of the seed, so skipping `step` batches resumes at the exact data position.
    batches = shuffled_batches(lambda i: store.load_shard(hp, train_ids[i]), len(train_ids), tc.batch_size,
                               seed=tc.seed, buffer_rows=tc.buffer_rows, skip_batches=trainer.step)
    log.info("training %s (F=%d, k=%d) on %s: %d steps x %d tokens (%d train rows)", tc.arch, tc.width, tc.k, hp,
             steps, tc.batch_size, train_rows)
    result = trainer.fit(batches, progress=progress)
    trainer.save_checkpoint()
    scale = trainer.scale
    # dead as SAELens counts it: no firing in the trainer's last window of tokens (the held-out shard, a few
    # thousand tokens, leaves rare latents unfired: eval's dead_fraction says that instead)
    dead_train = {"dead_fraction_training": trainer.dead_fraction(), "dead_window_tokens": int(trainer.dead_window)}
    sae = trainer.finalize(calibration_rows(store, hp, train_ids))
    batches.close()  # the shuffle buffer, now (a suspended generator would hold it until its frame is collected)
    del trainer, batches  # the optimizer state and the shuffle buffer
    release_freed_memory()
    if not dist_utils.is_main():
        dist_utils.shutdown()  # waits for rank 0 to finish writing
        return {}
    e2e = _finetune(cfg, store, train_ids, sae, hp, scale, hm) if tc.e2e_contexts else None
    ev = evaluate_batches(sae, (store.load_shard(hp, i) for i in eval_ids), device)
    density = ev.pop("_density")
    sae.cpu().save(out, sparsity=density.clamp_min(1e-10).log10().float())
    last = result.history[-1] if result.history else {}
    report = {"hookpoint": hp, "steps": result.steps, "tokens": result.tokens,
              "train_tokens_per_s": last.get("tokens_per_s"), "heldout": ev,
              "heldout_is_training_data": tc.holdout_shards == 0, **dead_train, "config": asdict(cfg),
              **({"e2e_finetune": e2e} if e2e else {})}
    write_json(out / "metrics.json", report)
    write_json(out / "train_history.json", result.history)
    release_freed_memory()  # what evaluation freed (measured: 0.64 → 0.28 GB anonymous after training mlp_post_act)
    dist_utils.shutdown()
    return report


def calibration_rows(store: ActivationStore, hp: str, shard_ids: list[int], n: int = 4096) -> torch.Tensor:
    """Up to n training rows [n, d] for `Trainer.finalize`'s threshold calibration: evenly strided rows of up to 16
    evenly spaced shards, so that the sample spans the store's articles (the first four shards' rows alone read
    L0 31.5 with a threshold that gives 32.0 over the whole store)."""
    picks = shard_ids[::max(1, -(-len(shard_ids) // 16))]
    per = -(-n // len(picks))
    rows = []
    for i in picks:
        x = store.load_shard(hp, i)
        rows.append(x[::max(1, len(x) // per)][:per])
    return torch.cat(rows)[:n].float()


def _model_of(store: ActivationStore, tc: Any, hp: str, device: str) -> Any:
    """The store's model, for --input_weights read_gain and --e2e_contexts."""
    from saescope.models import load_model

    spec = store.manifest.get("extra", {}).get("model_spec") or store.model
    try:
        hm = load_model(spec, device=device)
    except Exception as e:  # noqa: BLE001 — whatever fails, the fix is the same
        raise SaescopeError(f"--input_weights read_gain / --e2e_contexts need the store's model {spec}, which does "
                            f"not load ({e}); use --input_weights none --e2e_contexts 0") from e
    if hm.d_model != store.hookpoints[hp]:
        raise SaescopeError(f"--input_weights read_gain / --e2e_contexts: the store's model {spec} has width "
                            f"{hm.d_model}, not {hp}'s {store.hookpoints[hp]}")
    return hm


def _input_weights(tc: Any, hm: Any, hp: str) -> torch.Tensor | None:
    from saescope.models import parse_hookpoint
    from saescope.models.reads import residual_read_weights

    kind, layer = parse_hookpoint(hp)
    residual = kind in ("resid_post", "resid_pre")
    if tc.input_weights == "none" or hm is None or (tc.input_weights == "auto" and not residual):
        return None
    if not residual:
        raise SaescopeError(f"--input_weights read_gain: {hp} is not the residual stream; use resid_post/resid_pre "
                            f"or --input_weights none")
    return residual_read_weights(hm, layer + 1 if kind == "resid_post" else layer)


def _finetune(cfg: TrainConfig, store: ActivationStore, train_ids: list[int], sae: Any, hp: str,
              scale: float | torch.Tensor, hm: Any) -> dict[str, Any]:
    """--e2e_contexts: the spliced fine-tune on that many training contexts, drawn at random with the run's seed."""
    from saescope.train.finetune import finetune_spliced

    tc = cfg.trainer
    pool = contexts_from_store(store, train_ids, 1 << 30, hm.tokenizer.bos_token_id)  # [C, T] token ids only
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(tc.seed))[:tc.e2e_contexts]
    return finetune_spliced(hm, sae, hp, pool[pick], scale, tc.learning_rate() * tc.e2e_lr_mult)


def evaluate(cfg: EvalConfig, hm: Any = None) -> dict[str, Any]:
    return evaluate_many([cfg], hm)[0]


def evaluate_many(cfgs: list[EvalConfig], hm: Any = None) -> list[dict[str, Any]]:
    """`evaluate` of several SAEs; those spliced on the same store contexts share the clean forward pass."""
    from saescope.sae import load_sae
    from saescope.train.evaluate import evaluate_batches, spliced_metrics_many

    evs: list[dict[str, Any]] = []
    groups: dict[tuple[Any, ...], list[int]] = {}  # same contexts → one spliced pass
    loaded = []
    for n, cfg in enumerate(cfgs):
        sae = load_sae(cfg.sae)
        store = ActivationStore(cfg.store)
        hp = canonical_hookpoint(cfg.hookpoint or sae.cfg.metadata.get("hook_name") or next(iter(store.hookpoints)))
        if hp not in store.hookpoints:
            raise SaescopeError(f"{cfg.store}: no hookpoint '{hp}'; pass --hookpoint (store has "
                                f"{', '.join(store.hookpoints)})")
        if store.hookpoints[hp] != sae.cfg.d_in:
            raise SaescopeError(f"{cfg.sae}: d_in={sae.cfg.d_in} but {hp} in the store has d={store.hookpoints[hp]}")
        eval_ids = split_shards(store, cfg.holdout_shards)[1] if cfg.holdout_shards else list(range(len(store.shards)))
        log.info("evaluating %s on %d held-out shard(s)%s", hp, len(eval_ids),
                 f" and {cfg.contexts} spliced contexts" if cfg.spliced else "")
        ev = evaluate_batches(sae, (store.load_shard(hp, i) for i in eval_ids))
        ev.pop("_density")
        trained = Path(cfg.sae) / "metrics.json"  # saescope's own SAEs: the training window's dead fraction
        if trained.is_file():
            from saescope.io import read_json

            ev.update({k: v for k, v in read_json(trained).items() if k in ("dead_fraction_training",
                                                                            "dead_window_tokens")})
        evs.append(ev)
        loaded.append((sae, hp, store, eval_ids))
        if cfg.spliced:
            model = cfg.model or store.manifest.get("extra", {}).get("model_spec") or store.model
            key = (str(Path(cfg.store).resolve()), tuple(eval_ids), cfg.contexts, cfg.target_se, cfg.min_contexts,
                   cfg.max_seconds, model, cfg.spliced_from)
            groups.setdefault(key, []).append(n)
    for (_, eval_ids, contexts, target_se, min_contexts, max_seconds, model, source), members in groups.items():
        from saescope.models import load_model

        hm = hm or load_model(model)
        store = loaded[members[0]][2]
        ctx, where = None, "corpus"
        if source == "corpus":
            ctx = contexts_after_store(store, contexts, hm.tokenizer)
        if ctx is None or len(ctx) < min(contexts, min_contexts):
            if ctx is not None:
                log.warning("%s: its corpus holds %d contexts after the store's; splicing on the held-out shards "
                            "instead", store.root, len(ctx))
            ctx, where = contexts_from_store(store, list(eval_ids), contexts, hm.tokenizer.bos_token_id), "holdout"
        t0 = time.perf_counter()
        res = spliced_metrics_many(hm, [loaded[n][:2] for n in members], ctx, target_se=target_se,
                                   min_contexts=min_contexts, max_seconds=max_seconds)
        log.info("spliced metrics of %d SAE(s) on up to %d %s contexts: %.0f s", len(members), len(ctx), where,
                 time.perf_counter() - t0)
        for n, r in zip(members, res):
            evs[n] = {**r, "spliced_from": where, **evs[n]}  # ΔCE and KL lead the summary
            if target_se and r["delta_ce_se"] >= target_se:
                why = (f"the {max_seconds:g} s cap (--max_seconds) stopped it after {r['spliced_contexts']} of "
                       f"{len(ctx)} contexts" if r["spliced_contexts"] < len(ctx) else
                       f"with all {len(ctx)} {where} contexts; " + ("raise --contexts" if where == "corpus" else
                       "use --spliced_from corpus, or hold out more shards (--holdout_shards)"))
                log.warning("%s: ΔCE standard error %.3f nats is above --target_se %.3f: %s", cfgs[n].sae,
                            r["delta_ce_se"], target_se, why)
    return evs


def contexts_after_store(store: ActivationStore, n: int, tokenizer: Any) -> torch.Tensor:
    """Up to n contexts [n, T] of the store's corpus that come after the last one it holds (packed as the capture
    packed them, so that no dictionary trained on the store saw them), drawn at random (SPREAD); [0, T] where the
    corpus ends there or the store records none."""
    from saescope.corpus import CorpusConfig, iter_contexts

    src, T = store.manifest.get("source", {}), store.context_len
    if not src.get("path") or not T:
        return torch.zeros(0, T or 0, dtype=torch.long)  # a store of prompts (the seed dataset): no corpus
    corpus = CorpusConfig("wiki" if src.get("kind") == "wiki" else src["path"], src.get("text_field", "text"),
                          src.get("shuffle_docs", 0))
    skip = store.shards[-1]["contexts"][1] if store.shards else 0
    window = max(n, min(SPREAD * n, SPREAD_TOKENS // T))
    rest = [c for _, c in zip(range(skip + window), iter_contexts(tokenizer, corpus.texts(), T))][skip:]
    pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(0))[:n].tolist()
    return torch.tensor([rest[i] for i in pick], dtype=torch.long).view(len(pick), T)


SPREAD, SPREAD_TOKENS = 32, 1_000_000
"""`contexts_after_store` draws its n contexts at random from the next SPREAD·n of the corpus (at most
SPREAD_TOKENS tokens of it, and at least n contexts: tokenizing is the cost), in random order:
consecutive contexts share a document (the bundled Wikipedia sample's 106 articles are ~80 contexts of 65 tokens
each), so n consecutive ones would measure a handful of articles, and their standard error over contexts would
understate the spread between articles; any prefix of the draw (an SAE stops at its target SE) spans many."""


def contexts_from_store(store: ActivationStore, shard_ids: list[int], n: int, bos: int | None) -> torch.Tensor:
    """Rebuild up to n full contexts [n, T] from the token ids recorded in the store (BOS re-prepended)."""
    rows: list[torch.Tensor] = []
    for i in shard_ids:
        t = store.load_tokens(i)
        for c in torch.unique(t["context"]).tolist():
            ids = t["token_ids"][t["context"] == c].long()
            rows.append(torch.cat([torch.tensor([bos]), ids]) if bos is not None else ids)
            if len(rows) >= n:
                break
        if len(rows) >= n:
            break
    length = min(len(r) for r in rows)
    return torch.stack([r[:length] for r in rows])
