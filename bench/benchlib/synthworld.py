"""SynthSAEBench worlds, their cache, and the benchmark's own scoring (bench-only: needs sae_lens).

A *world* is SAELens' `SyntheticModel` built from a `SyntheticModelConfig`; it is cached with `SyntheticModel.save`
under `<cache>/<config hash>/world/` (built in a temporary directory, then renamed: a half-built world is never
seen). A *stream* is a deterministic sequence of ground-truth feature activations drawn from the world's
`activation_generator`, cached as fixed-size CSR shards (`shard_00000.safetensors`: indptr, indices, values), each
drawn under its own seed, so a killed run resumes at the first missing shard and every trainer reads the same
samples. Hidden activations are `world.feature_dict(feature acts)`, SAELens' own map, computed on the fly (a
sample costs ~34 nonzeros on disk instead of 768 floats).

Scoring is SAELens' `eval_sae_on_synthetic_data` over a held-out stream replayed through a duck-typed generator,
so F1, MCC, uniqueness, explained variance, L0, dead latents and shrinkage are the benchmark's numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SHARD_FILE = "shard_{:05d}.safetensors"


def world_config(tiny: bool = False, features: int = 16_384, hidden_dim: int = 768, version: str = "v2") -> Any:
    """SynthSAEBench-16k's published `SyntheticModelConfig` (SAELens docs/synth_sae_bench.md): v2 with
    scale_children_by_parent (what SAELens recommends now), or v1 (`decoderesearch/synth-sae-bench-16k-v1`, the
    world the LISTA-Matryoshka recipe's 0.97 F1 was measured on: the same generator and config without
    scale_children_by_parent); `tiny` scales it down to a world that builds in seconds."""
    if version not in ("v1", "v2"):
        raise ValueError(f"SynthSAEBench world version {version!r}: choose v1 or v2")
    from sae_lens.synthetic import (
        FoldedNormalMagnitudeConfig,
        HierarchyConfig,
        LinearMagnitudeConfig,
        LowRankCorrelationConfig,
        OrthogonalizationConfig,
        SyntheticModelConfig,
        ZipfianFiringProbabilityConfig,
    )

    roots, depth, rank, steps, p_min = 128, 3, 25, 100, 5e-4
    if tiny:  # 8 trees of depth 2 (168 hierarchical features), shorter orthogonalisation, rarest p 5e-3
        roots, depth, rank, steps, p_min = max(1, features // 64), 2, 4, 20, 5e-3
    return SyntheticModelConfig(
        num_features=features,
        hidden_dim=hidden_dim,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=0.5, max_prob=0.4, min_prob=p_min),
        hierarchy=HierarchyConfig(
            total_root_nodes=roots, branching_factor=4, max_depth=depth, mutually_exclusive_portion=1.0,
            mutually_exclusive_min_depth=0, compensate_probabilities=True,
            scale_children_by_parent=version == "v2",
        ),
        orthogonalization=OrthogonalizationConfig(num_steps=steps, lr=3e-4),
        correlation=LowRankCorrelationConfig(rank=rank, correlation_scale=0.1),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        bias=0.5,
        seed=42,
    )


def config_hash(cfg: Any) -> str:
    """Short hash of the world config and the SAELens version that generates it (another version may build
    another world from the same config)."""
    import sae_lens

    blob = json.dumps({"cfg": cfg if isinstance(cfg, dict) else cfg.to_dict(), "sae_lens": sae_lens.__version__},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_root(cache_dir: str | None = None) -> Path:
    from saescope.io import cache_dir as saescope_cache

    return Path(cache_dir) if cache_dir else saescope_cache() / "synthsaebench"


DICTIONARY_FIELDS = ("num_features", "hidden_dim", "bias", "orthogonalization", "dtype", "seed")
"""The config fields SAELens' `FeatureDictionary` is built from (its own generator, seeded by `seed`): worlds that
agree on them (v1 and v2) have the same feature vectors, whatever their firing statistics."""


def dictionary_donor(cfg: Any, root: Path) -> Path | None:
    """A cached world, built by this SAELens version (its folder is named by `config_hash`, which includes the
    version), whose feature dictionary `cfg` would build again; or None."""
    want = {k: cfg.to_dict()[k] for k in DICTIONARY_FIELDS}
    for c in sorted(root.glob("*/world/synthetic_model_config.json")):
        try:
            theirs = json.loads(c.read_text())
        except (OSError, ValueError):
            continue
        if {k: theirs.get(k) for k in DICTIONARY_FIELDS} == want and c.parent.parent.name == config_hash(theirs):
            return c.parent
    return None


def load_or_build_world(cfg: Any, root: Path, device: str = "cpu") -> tuple[Any, Path]:
    """The cached world for `cfg` (built and saved first if missing). Returns (SyntheticModel, world dir).
    The feature dictionary (its orthogonalisation is ≈ 27 min of a 16k world's build on two cores) is taken from a
    cached world that shares `DICTIONARY_FIELDS` where there is one: building v2 after v1 takes seconds."""
    from sae_lens.synthetic import SyntheticModel

    world_dir = root / config_hash(cfg) / "world"
    if not (world_dir / "synthetic_model_config.json").is_file():
        world_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = world_dir.parent / f".world.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        donor = dictionary_donor(cfg, root)
        print(f"building world ({cfg.num_features} features, d={cfg.hidden_dim}) into {world_dir}"
              + (f", its feature dictionary from {donor}" if donor else ""), file=sys.stderr)
        fd = SyntheticModel.load_from_disk(donor, device=device).feature_dict if donor else None
        SyntheticModel(cfg, feature_dict=fd, device=device).save(tmp)
        (tmp / "build.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "device": device,
                                                    "dictionary_from": str(donor) if donor else None}))
        try:
            os.replace(tmp, world_dir)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    model = SyntheticModel.load_from_disk(world_dir, device=device)
    model.feature_dict.requires_grad_(False)
    return model, world_dir


class Stream:
    """A cached, deterministic stream of ground-truth feature activations in CSR shards of `shard_size` rows."""

    def __init__(self, model: Any, root: Path, name: str, seed: int, shard_size: int, n_samples: int) -> None:
        self.model, self.seed, self.shard_size = model, seed, shard_size
        self.n_shards = max(1, -(-n_samples // shard_size))
        self.dir = root / f"{name}-seed{seed}-shard{shard_size}"
        self.n_features = model.cfg.num_features

    def path(self, i: int) -> Path:
        return self.dir / SHARD_FILE.format(i)

    @torch.no_grad()
    def draw(self, i: int, chunk: int = 2048) -> tuple[Tensor, Tensor, Tensor]:
        """Shard i, drawn under its own seed: (indptr [S + 1], column indices [nnz], values [nnz])."""
        counts, idx, vals = [], [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + i)
            for s in range(0, self.shard_size, chunk):
                f = self.model.activation_generator.sample(min(chunk, self.shard_size - s)).float()  # [c, n]
                nz = f.nonzero()  # [nnz, 2] row-major, so columns come sorted within each row (on f's device)
                counts.append(torch.bincount(nz[:, 0], minlength=f.shape[0]).cpu())
                idx.append(nz[:, 1].cpu())
                vals.append(f[nz[:, 0], nz[:, 1]].cpu())
        indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cat(counts).cumsum(0)])
        return indptr, torch.cat(idx), torch.cat(vals)

    def ensure(self) -> None:
        """Draw and save every missing shard (resumable: existing shards are kept)."""
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        from saescope.io import atomic_path

        missing = [i for i in range(self.n_shards) if not self.path(i).is_file()]
        itype = torch.int16 if self.n_features <= 32767 else torch.int32
        for i in tqdm(missing, desc=f"sampling {self.dir.name}", unit="shard", disable=not missing):
            indptr, idx, vals = self.draw(i)
            with atomic_path(self.path(i)) as tmp:
                save_file({"indptr": indptr, "indices": idx.to(itype), "values": vals}, str(tmp))

    def shard(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """Shard i from the cache, or drawn now when it is not cached (`--no-cache-samples`: same values)."""
        from safetensors.torch import load_file

        if not self.path(i).is_file():
            return self.draw(i)
        t = load_file(str(self.path(i)))
        return t["indptr"], t["indices"].long(), t["values"]

    def rows(self, n_total: int, batch_size: int, dense: bool = False,
             device: str = "cpu") -> Iterator[Tensor]:
        """Batches of feature activations [batch_size, n_features] (sparse COO, or dense), `n_total` rows in all;
        wraps around to the first shard when the stream is shorter than `n_total`."""
        emitted, i = 0, 0
        pend_r: list[Tensor] = []
        pend_c: list[Tensor] = []
        pend_v: list[Tensor] = []
        have = 0
        while emitted < n_total:
            indptr, idx, vals = self.shard(i % self.n_shards)
            i += 1
            S = indptr.numel() - 1
            a = 0
            while a < S and emitted < n_total:
                want = min(batch_size, n_total - emitted) - have
                b = min(S, a + want)
                lo, hi = int(indptr[a]), int(indptr[b])
                r = torch.repeat_interleave(torch.arange(b - a), (indptr[a + 1:b + 1] - indptr[a:b])) + have  # [nnz]
                pend_r.append(r)
                pend_c.append(idx[lo:hi])
                pend_v.append(vals[lo:hi])
                have += b - a
                a = b
                if have == min(batch_size, n_total - emitted):
                    ij = torch.stack([torch.cat(pend_r), torch.cat(pend_c)])  # [2, nnz]
                    v = torch.cat(pend_v)
                    if dense:
                        out = torch.zeros(have, self.n_features)
                        out[ij[0], ij[1]] = v
                    else:
                        out = torch.sparse_coo_tensor(ij, v, (have, self.n_features), is_coalesced=True,
                                                      check_invariants=False)
                    yield out.to(device)
                    emitted += have
                    pend_r, pend_c, pend_v, have = [], [], [], 0


def bench_streams(model: Any, world_dir: Path, device: str, seed: int, shard_size: int, n_train: int,
                  n_eval: int) -> tuple[Stream, Stream]:
    """The bench's training and held-out streams of a world (cached beside it, named by device kind and seed)."""
    dev = device.split(":")[0]
    root = world_dir.parent / "samples"
    return (Stream(model, root, f"train-{dev}", seed + 1, shard_size, n_train),
            Stream(model, root, f"eval-{dev}", seed + 2, shard_size, n_eval))


def timed(it: Iterator[Tensor], stamps: list[float]) -> Iterator[Tensor]:
    """`it`, noting the time each item is handed out: consecutive stamps bracket one training step (data included)."""
    for x in it:
        stamps.append(time.perf_counter())
        yield x


def median_step_s(stamps: list[float]) -> float:
    """Median seconds per step: on a shared host, robust to the stalls that inflate the total wall time."""
    d = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    return d[len(d) // 2] if d else float("nan")


class Replay:
    """Stands in for SAELens' `ActivationGenerator` (`sample(n)` / `gen(n)`), replaying a cached stream."""

    def __init__(self, stream: Stream, n_total: int, batch_size: int, dense: bool, device: str = "cpu") -> None:
        self.batch_size = batch_size
        self.stamps: list[float] = []
        self.it = timed(stream.rows(n_total, batch_size, dense=dense, device=device), self.stamps)

    def sample(self, n: int) -> Tensor:
        if n != self.batch_size:
            raise ValueError(f"replay serves batches of {self.batch_size}, asked for {n}")
        return next(self.it)

    __call__ = sample


@torch.no_grad()
def hidden_batches(model: Any, stream: Stream, n_total: int, batch_size: int, device: str = "cpu") -> Iterator[Tensor]:
    """Hidden activations [batch_size, d] = world.feature_dict(feature acts): what SAELens' iterator yields."""
    for f in stream.rows(n_total, batch_size, dense=False, device=device):
        yield model.feature_dict(f)


def to_saelens(sae: Any, path: Path, device: str = "cpu") -> Any:
    """A saescope SAE as SAELens sees it: saved in the SAELens layout, loaded by `sae_lens.SAE.load_from_disk`."""
    from sae_lens import SAE

    sae.cpu().save(path)
    if not sae.cfg.lista_iters:
        return SAE.load_from_disk(str(path), device=device)
    # SAELens has no LISTA encoder: load the same weights without η, and route `encode` through saescope's
    from safetensors.torch import load_file, save_file

    from saescope.io import read_json, write_json

    w = load_file(str(path / "sae_weights.safetensors"))
    w.pop("lista_step")
    save_file(w, str(path / "sae_weights.safetensors"))
    cfg = read_json(path / "cfg.json", "SAE config")
    cfg.pop("lista_iters")
    write_json(path / "cfg.json", cfg)
    out = SAE.load_from_disk(str(path), device=device)
    ours = sae.to(device).eval()

    def encode(x: Tensor) -> Tensor:
        with torch.no_grad():
            return ours.encode(x.float()).to(x.dtype)
    out.encode = encode  # SAELens' saved copy is the linear part only: the bench keeps `saescope` beside it
    object.__setattr__(out, "saescope", ours)  # not a submodule: SAELens' state dict stays its own
    return out


@torch.no_grad()
def score(sae_lens_sae: Any, model: Any, stream: Stream, n_samples: int, batch_size: int = 1024,
          device: str = "cpu") -> dict[str, float]:
    """SAELens' `eval_sae_on_synthetic_data` on `n_samples` rows of a held-out stream."""
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    n = n_samples - n_samples % batch_size if n_samples >= batch_size else n_samples
    bs = min(batch_size, n)
    r = eval_sae_on_synthetic_data(sae_lens_sae.to(device), model.feature_dict,
                                   Replay(stream, n, bs, dense=True, device=device), num_samples=n, batch_size=bs)
    c = r.classification
    return {"f1": c.f1_score, "precision": c.precision, "recall": c.recall, "mcc": r.mcc,
            "uniqueness": r.uniqueness, "ve": r.explained_variance, "l0": r.sae_l0, "dead": r.dead_latents,
            "shrinkage": r.shrinkage, "true_l0": r.true_l0, "eval_samples": n}
