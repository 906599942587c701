"""`saescope collate`: stream a corpus through the model once and write TDB NeuronRecords for every unit.

Layout (records as `saescope.compact_records`, or with --records json one `<index>.json` per unit)::

    <out>/<model>/manifest.json
    <out>/<model>/excerpts.safetensors                         (the excerpts' tokens, shared by every dataset)
    <out>/<model>/mlp_neurons/<layer>/records.safetensors
    <out>/<model>/attention_heads/<layer>/…                    (activations by token pair)
    <out>/<model>/sae_latents/<sae-name>/<layer>/…
    <out>/<model>/sae_latents/<sae-name>-by-token-pair/<layer>/…   (SAEs at attn_out: by token pair)
    <out>/<model>/transcoder_latents/<set-name>/<layer>/…      (per-layer transcoders, by token)
    <dataset>/summary.json                                     (one row per unit, for the viewer's index)
    <dataset>/histogram.safetensors                            (exact |activation| counts per log bin, every token)
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.activations import ActivationStream, rank_slice
from saescope.collate.collator import ExcerptTokens, GroupState, build_records
from saescope.collate.config import PAIR_SUFFIX, CollateConfig, CollateResult
from saescope.collate.pair_attribution import sae_pair_group
from saescope.collate.state import Moments
from saescope.config import middle_layer
from saescope.errors import SaescopeError
from saescope.io import atomic_dir, write_json
from saescope.models import HookedModel, parse_hookpoint
from saescope.models.hookpoints import ATTENTION_KINDS
from saescope.records import dumps, summary_row
from saescope.units import UnitGroup, UnitSet, dataset_path, kind_of_option

log = logging.getLogger(__name__)


def transcoders_at(spec: str, hm: HookedModel) -> list[tuple[Any, str, Path]]:
    """--transcoders DIR,...: every layer of each transcoder set, as (that layer's dictionary, mlp_in.L, the set's
    folder); the dataset is named after the set's folder (transcoder_latents/<set>/<layer>). A cross-layer
    transcoder's layer-L latents read mlp_in.L like a per-layer transcoder's (`TranscoderSet.layer_dictionary`)."""
    from saescope.sae.transcoder_io import load_transcoders

    out = []
    for d in [s.strip() for s in spec.split(",") if s.strip()]:
        ts = load_transcoders(d).to(next(hm.model.parameters()).device).eval()
        if max(ts.layers) >= hm.n_layers:
            raise SaescopeError(f"--transcoders {d}: transcoders for layers up to {max(ts.layers)}, but {hm.name} has "
                                f"{hm.n_layers} layers")
        out += [(ts.layer_dictionary(l), f"mlp_in.{l}", Path(d)) for l in ts.layers]
    return out


def make_groups(cfg: CollateConfig, hm: HookedModel) -> list[UnitGroup]:
    from saescope.sae import load_saes_at

    layers = [int(x) for x in cfg.layers.split(",") if x.strip()] if cfg.layers else [middle_layer(hm.n_layers)]
    for layer in layers:
        if not 0 <= layer < hm.n_layers:
            raise SaescopeError(f"--layers: layer {layer} out of range (model has {hm.n_layers})")
    kinds = cfg.collate.kinds()
    groups = []
    for layer in layers:
        groups += [UnitSet(kind_of_option(k).unit_type, layer).group(hm) for k in ("mlp", "heads") if k in kinds]
    for sae, hp, path in load_saes_at(cfg.sae, hm) + transcoders_at(cfg.transcoders, hm):
        name, source = path.name, str(path.resolve())
        kind = "transcoder_latents" if sae.is_transcoder else "sae_latents"
        groups.append(UnitSet(kind, parse_hookpoint(hp)[1], name, sae, hp, source).group(hm))
        if cfg.collate.token_pairs and parse_hookpoint(hp)[0] == "attn_out":  # attention latents: by pair too
            groups.append(sae_pair_group(hm, sae, hp, f"{name}{PAIR_SUFFIX}", source))
    if not groups:
        raise SaescopeError("nothing to collate: pass --units mlp,heads and/or --sae DIR / --transcoders DIR")
    return groups


def run(cfg: CollateConfig, hm: HookedModel | None = None) -> CollateResult | None:
    """Collate (see `collate`); the typed result, or None on a torchrun rank other than 0 (rank 0 writes)."""
    manifest = collate(cfg, hm)
    return CollateResult.from_manifest(Path(cfg.out) / manifest["model"], manifest) if manifest else None


def collate(cfg: CollateConfig, hm: HookedModel | None = None) -> dict[str, Any]:
    """Run the streaming pass and write every record; returns the manifest."""
    from tqdm.auto import tqdm

    from saescope import distributed as dist
    from saescope.corpus import iter_contexts

    dist.init_from_env()
    rank, world = dist.rank(), dist.world_size()
    hm = hm or cfg.model.load()
    opt = cfg.collate
    groups = make_groups(cfg, hm)
    T = opt.excerpt_len
    states = [GroupState.create(g, T * (T + 1) // 2 if g.by_token_pair else T, opt.sizes, opt.seed) for g in groups]
    tokens = ExcerptTokens()
    n_model = -(-opt.max_tokens // T) if opt.max_tokens else None  # excerpts that get a model pass
    if cfg.store:
        n_store = -(-opt.store_tokens // T) if opt.store_tokens else None  # excerpts read from the store
        source, stored, total = store_batches(cfg.store, hm, T, opt.batch_size, rank, world, n_store)
    else:
        contexts = iter_contexts(hm.tokenizer, cfg.data.texts(), T + 1)
        source, stored = corpus_batches(hm, itertools.islice(contexts, n_model), opt.batch_size), set()
        total = n_model
    # attention units (heads, token pairs) take the first --max_tokens, from the store or a model pass; with a store
    # the other units take its first --store_tokens (all of it by default)
    attention = {j for j, g in enumerate(groups) if g.unit_type == "attention_heads" or g.by_token_pair}
    from_store = [j for j, g in enumerate(groups) if set(g.hookpoints) <= stored and j not in attention]
    budget_store = [j for j, g in enumerate(groups) if set(g.hookpoints) <= stored and j in attention]
    from_model = [j for j in range(len(groups)) if j not in from_store and j not in budget_store]
    if cfg.store:
        log.info("collating from the store %s: %s on %s excerpts, %s on its first %s excerpts; with the model: %s",
                 cfg.store, ", ".join(groups[j].rel_dir for j in from_store) or "nothing", f"{total:,}",
                 ", ".join(groups[j].rel_dir for j in budget_store) or "nothing", n_model or "all",
                 ", ".join(groups[j].rel_dir for j in from_model) or "nothing")
    model_hps = sorted({h for j in from_model for h in groups[j].hookpoints})
    device = next(hm.model.parameters()).device
    bar = tqdm(total=total and total * T // world, unit="tok", unit_scale=True, desc=f"collate {hm.name}",
               disable=rank != 0)
    seen = [0] * len(groups)  # excerpts each group has seen
    t0, step = time.perf_counter(), 0
    for eids, ids, stored_acts in source:  # [B] global excerpt ids, [B, T+1] ids with BOS, stored activations
        stored_acts = {k: v.to(device) for k, v in stored_acts.items()}  # where the SAEs are
        parts = [(eids, stored_acts, from_store)]
        keep = eids < n_model if n_model is not None else torch.ones_like(eids, dtype=torch.bool)
        if budget_store and bool(keep.any()):
            parts.append((eids[keep], {k: v[keep] for k, v in stored_acts.items()}, budget_store))
        if model_hps and bool(keep.any()):  # what the store cannot feed (everything, without a store): a model pass
            cache = hm.run_with_cache(ids[keep].to(device), None, model_hps)
            parts.append((eids[keep], cache, from_model))
        with torch.no_grad():
            for ex, cache, js in parts:
                for j in js:
                    acts = groups[j].extract(cache)
                    states[j].update(acts if groups[j].sparse else acts.float().cpu(), ex)
                    seen[j] += len(ex)
        tokens.add(eids, ids[:, 1:].cpu())
        step += 1
        if step % 64 == 0:
            tokens.prune(torch.unique(torch.cat([st.referenced_ids() for st in states])))
            for st in states:
                st.prune()
        bar.update(len(eids) * T)
    bar.close()
    for st in states:
        st.prune()
    sizes = sorted(((st.nbytes(), st.group.rel_dir) for st in states), reverse=True)
    log.info("collation state: %.0f MB in %d groups (largest: %s)", sum(b for b, _ in sizes) / 1e6, len(sizes),
             ", ".join(f"{n} {b / 1e6:.0f} MB" for b, n in sizes[:3]))
    elapsed = time.perf_counter() - t0
    if world > 1:
        states, tokens, seen = merge_ranks(states, tokens, seen)
        if rank != 0:
            dist.shutdown()  # waits for rank 0 to write: a rank leaving an open group can abort in gloo's teardown
            return {}
    if max(seen) == 0:
        raise SaescopeError(f"{cfg.store or 'corpus ' + repr(cfg.data.corpus)} gave no excerpts of {T} tokens")
    source_info = {"store": cfg.store} if cfg.store else cfg.data.describe()
    manifest = write_outputs(cfg, hm, groups, states, tokens, seen, elapsed, source_info)
    dist.shutdown()
    return manifest


Batch = tuple[Tensor, Tensor, dict[str, Tensor]]
"""([B] global excerpt ids, [B, T+1] token ids with BOS, hookpoint → [B, T+1, d] activations already known)."""


def corpus_batches(hm: HookedModel, contexts: Iterator[list[int]], batch_size: int) -> Iterator[Batch]:
    """This rank's corpus contexts by the activation stream's rule (`batch_size` per rank per round; ids stay global
    so the merge is exact); the model runs later, on what the store cannot feed."""
    stream = ActivationStream(hm, contexts, [], batch_size)
    while (rnd := stream.next_round(batch_size * stream.world, per=batch_size)) is not None:
        if rnd.mine:
            yield torch.arange(rnd.offset, rnd.offset + len(rnd.mine)), torch.tensor(rnd.mine), {}


def store_batches(path: str, hm: HookedModel, T: int, batch_size: int, rank: int, world: int,
                  limit: int | None = None) -> tuple[Iterator[Batch], set[str], int]:
    """The store's contexts as excerpts (excerpt id = context index), with its activations at every hookpoint in
    `run_with_cache` shapes, BOS row in front (restored for attention, zeros elsewhere: the unit groups drop it);
    only its first `limit` contexts where a limit is given. Returns (batches, the hookpoints it can feed, excerpt
    count)."""
    from saescope.store import ActivationStore

    store = ActivationStore(path)  # checksums verified as every other reader does
    ctx_len = store.manifest.get("context_len")
    if ctx_len != T + 1:
        raise SaescopeError(f"{path}/manifest.json: context_len is {ctx_len}, but collating excerpts of {T} tokens "
                            f"needs {T + 1}; pass --excerpt_len {(ctx_len or 2) - 1} or recapture with "
                            f"--context_len {T + 1}")
    if store.model != hm.name:
        raise SaescopeError(f"{path}/manifest.json: captured from model {store.model}, not {hm.name}")
    bos = hm.tokenizer.bos_token_id
    total = sum(s["contexts"][1] - s["contexts"][0] for s in store.shards)
    total = min(total, limit) if limit is not None else total
    # The BOS row is not stored; attention needs it. BOS sits at position 0 of every context and attends only to
    # itself, so its pattern row is [1, 0, ...] and its values are the same in every context: one forward of BOS.
    hps = [hp for hp in store.hookpoints if bos is not None or parse_hookpoint(hp)[0] not in ATTENTION_KINDS]
    bos_rows: dict[str, Tensor] = {}
    for hp in hps:
        kind = parse_hookpoint(hp)[0]
        if kind == "attn_pattern":
            bos_rows[hp] = torch.zeros(hm.n_heads, T + 1).index_fill_(1, torch.tensor([0]), 1.0).flatten()
        elif kind == "attn_value":
            with torch.no_grad():
                one = hm.run_with_cache(torch.tensor([[bos]], device=next(hm.model.parameters()).device), None, [hp])
            bos_rows[hp] = hm.token_rows(hp, one[hp])[0, 0].float().cpu()

    def batches() -> Iterator[Batch]:
        for i in range(len(store.shards)):
            if limit is not None and store.shards[i]["contexts"][0] >= limit:
                return
            tok = store.load_tokens(i)
            ctx, pos = tok["context"].long(), tok["position"].long()
            acts = {hp: store.load_shard(hp, i) for hp in hps}
            whole = [c for c in torch.unique(ctx).tolist()
                     if int((ctx == c).sum()) == T and (limit is None or c < limit)]
            for b in range(0, len(whole), batch_size * world):  # the activation stream's rule, per shard
                lo, hi = rank_slice(len(whole[b:b + batch_size * world]), rank, world, batch_size)
                if hi == lo:
                    continue
                cs = torch.tensor(whole[b + lo:b + hi])  # [B] context ids
                rows = torch.stack([(ctx == c).nonzero().squeeze(1)[pos[ctx == c].argsort()] for c in cs])  # [B, T]
                ids = torch.cat([torch.full((len(cs), 1), bos if bos is not None else 0),
                                 tok["token_ids"][rows].long()], 1)  # [B, T+1]
                cache = {}
                for hp, a in acts.items():
                    first = bos_rows[hp] if hp in bos_rows else torch.zeros(a.shape[1])  # other kinds: dropped
                    full = torch.cat([first.to(a.dtype).expand(len(cs), 1, -1), a[rows]], 1)  # [B, T+1, width]
                    cache[hp] = hm.from_token_rows(hp, full)
                yield cs, ids, cache
    return batches(), set(hps), total


def merge_ranks(states: list[GroupState], tokens: ExcerptTokens,
                seen: list[int]) -> tuple[list[GroupState], ExcerptTokens, list[int]]:
    """Gather every rank's state on rank 0 and merge exactly (top-k ∪ top-k, keyed reservoirs, power sums)."""
    import torch.distributed as td

    payload = ([(s.top, s.pool, s.maxima, s.moments, s.vectors) for s in states], tokens.flat(), seen)
    gathered: list | None = [None] * td.get_world_size() if td.get_rank() == 0 else None
    td.gather_object(payload, gathered, dst=0)  # in-memory exchange between our own ranks only
    if td.get_rank() != 0:
        return states, tokens, seen
    assert gathered is not None
    for parts, toks, n in gathered[1:]:
        for st, (top, pool, maxima, moments, vectors) in zip(states, parts):
            st.merge(GroupState(st.group, top, pool, maxima, moments, st.seed, vectors))  # slots keep their unique_scores flag
        tokens.add(*toks)
        seen = [a + b for a, b in zip(seen, n)]
    return states, tokens, seen


HISTOGRAM_FILE = "histogram.safetensors"


def write_histogram(path: Path, moments: Moments) -> None:
    """Every unit's exact |activation| counts per log bin, positive and negative (Moments.hist), beside summary.json:
    counts [U, 2, HIST_BINS] int64, n [U] values seen (tokens, or token pairs for heads), edges [HIST_BINS + 1]."""
    from safetensors.torch import save_file

    from saescope.collate.state import hist_edges

    assert moments.hist is not None
    save_file({"counts": moments.hist.round().long().contiguous(), "n": moments.sums[:, 0].round().long().contiguous(),
               "edges": hist_edges()}, str(path))


def write_json_records(folder: Path, g: UnitGroup, st: GroupState, decode: Any, opt: Any) -> list[dict[str, Any]]:
    """One TDB NeuronRecord JSON file per unit (`--records json`; the reference the compact format is tested
    against); returns the unit table rows."""
    from tqdm.auto import tqdm

    density = st.moments.density()
    tokens_memo: dict[int, tuple[list[str], str]] = {}  # excerpt token list → its JSON (`decode` shares the lists)
    rows = []
    for r in tqdm(build_records(st, decode, opt.sizes), total=g.n_units, desc=f"write {g.rel_dir}/{g.layer}",
                  unit="rec", leave=False):
        (folder / f"{r.neuron_id.neuron_index}.json").write_text(dumps(r, tokens_memo), encoding="utf-8")
        rows.append({**summary_row(r, g.by_token_pair), "density": float(density[r.neuron_id.neuron_index])})
    return rows


def write_outputs(cfg: CollateConfig, hm: HookedModel, groups: list[UnitGroup], states: list[GroupState],
                  tokens: ExcerptTokens, seen: list[int], elapsed: float, source: dict[str, Any]) -> dict[str, Any]:
    """Records, summaries and the manifest; seen[j] = excerpts group j was collated from."""
    opt = cfg.collate
    T = opt.excerpt_len

    cache: dict[int, str] = {}  # token id → string
    decoded: dict[int, list[str]] = {}  # excerpt id → strings, decoded once per excerpt

    def decode(eid: int) -> list[str]:
        if eid not in decoded:  # byte pieces of one character merged (HookedModel.token_strings)
            decoded[eid] = hm.token_strings(tokens.get(eid), cache)
        return decoded[eid]

    root = Path(cfg.out) / hm.name
    datasets = []
    if opt.records == "compact":
        from saescope.collate.pack import write_packs
        from saescope.compact_records import EXCERPTS_FILE, write_pack

        packs = write_packs(root, states, opt.sizes, lambda e: (tokens.get(e), decode(e)))
    for g, st, n_seen in zip(groups, states, seen):
        # records and summary go to a temporary folder renamed into place: a crash leaves the earlier dataset
        with atomic_dir(root / g.rel_dir / str(g.layer)) as tmp:
            if opt.records == "compact":
                arrays, rows = next(packs)
                write_pack(tmp, arrays, g.layer, T * (T + 1) // 2 if g.by_token_pair else T, root / EXCERPTS_FILE)
            else:
                rows = write_json_records(tmp, g, st, decode, opt)
            write_json(tmp / "summary.json", {"unit_type": g.unit_type, "layer": g.layer,  # one line: C encoder
                                              "by_token_pair": g.by_token_pair, "units": rows}, indent=None)
            write_histogram(tmp / HISTOGRAM_FILE, st.moments)
        live = [x for x in rows if x["max_activation"] > 0]
        datasets.append({"unit_type": g.unit_type, "name": g.name, "layer": g.layer,
                         "path": dataset_path(g.unit_type, g.layer, g.name), "units": g.n_units,
                         "by_token_pair": g.by_token_pair, "hookpoints": g.hookpoints, "source": g.source,
                         "tokens": n_seen * opt.excerpt_len, "records": opt.records,
                         "live_units": len(live),
                         "live_with_20_firing_excerpts": sum(x["firing_excerpts"] >= 20 for x in live)})
    manifest_path = root / "manifest.json"
    old = []
    if manifest_path.exists():
        from saescope.io import read_json

        old = [d for d in read_json(manifest_path).get("datasets", []) if d["path"] not in {x["path"] for x in datasets}]
    manifest = {
        "format": "saescope-collated", "version": 1, "model": hm.name, "model_spec": cfg.model.model,
        "corpus": source, "excerpt_len": opt.excerpt_len, "excerpts": max(seen), "tokens": max(seen) * opt.excerpt_len,
        "tokens_per_second": max(seen) * opt.excerpt_len / max(elapsed, 1e-9), "sizes": asdict(opt.sizes),
        "seed": opt.seed, "datasets": old + datasets,
    }
    write_json(manifest_path, manifest)
    return manifest

