"""Why an SAE falls short on a SynthSAEBench world: its per-latent errors sorted by the world's own ground truth.

Every latent is judged, as SAELens' F1 does, as a detector of the true feature its decoder row matches best (cosine).
A latent that misses is put down to one mechanism:

- dead: never fires on the held-out samples;
- duplicate: its feature already has a latent with a higher F1 (uniqueness < 1);
- absorbed: its misses (feature on, latent off) fall mostly on samples where a child of the feature in the
  hierarchy is on (a child latent took the parent's direction: feature absorption);
- merged with siblings: its false alarms (latent on, feature off) fall mostly on samples where the feature's parent
  is on, i.e. it also fires for mutually exclusive siblings (the hierarchy merged into one latent);
- merged, other: its false alarms fall mostly elsewhere (correlated or superposed features merged);
- fine: F1 >= 0.5.

Also: how many true features have a latent at F1 >= 0.5, by firing frequency. `python bench/synthsaebench_diag.py SAE_DIR...`
(SAEs kept by `synthsaebench.py`) prints the table for each SAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def parents(world: Any) -> Tensor:
    """parent[j] = the hierarchy parent of feature j, or -1 (a root or outside the hierarchy)."""
    parent = torch.full((world.cfg.num_features,), -1, dtype=torch.long)
    stack = [(r, -1) for r in (world.hierarchy.roots if world.hierarchy is not None else [])]
    while stack:
        node, up = stack.pop()
        here = node.feature_index if node.feature_index is not None else up
        if node.feature_index is not None:
            parent[node.feature_index] = up
        stack += [(c, here) for c in node.children]
    return parent


@torch.no_grad()
def diagnose(sae: Any, world: Any, stream: Any, n_samples: int, batch_size: int = 1024) -> dict[str, Any]:
    """Counts of latents per mechanism (see the module doc) and features found per firing-frequency band."""
    from sae_lens.util import cosine_similarities

    gt_dirs = world.feature_dict.feature_vectors  # [N, d]
    match = cosine_similarities(sae.W_dec, gt_dirs).abs().argmax(1)  # [F] best true feature of each latent
    parent = parents(world)  # [N]
    has_parent = parent >= 0
    F, N = match.numel(), gt_dirs.shape[0]
    c = {k: torch.zeros(F) for k in ("tp", "fp", "fn", "fn_child", "fp_parent", "fired")}
    freq = torch.zeros(N)
    n = n_samples - n_samples % batch_size
    for f in stream.rows(n, batch_size, dense=True):  # [B, N] true feature acts
        gt = f > 0
        z = sae.encode(world.feature_dict(f)) != 0  # [B, F]
        child_on = torch.zeros(gt.shape).index_add_(1, parent[has_parent], gt[:, has_parent].float()) > 0  # [B, N]
        parent_on = torch.zeros(gt.shape, dtype=torch.bool)
        parent_on[:, has_parent] = gt[:, parent[has_parent]]
        g, zc, pc = gt[:, match], child_on[:, match], parent_on[:, match]  # [B, F] each, per latent
        c["tp"] += (z & g).sum(0)
        c["fp"] += (z & ~g).sum(0)
        c["fn"] += (~z & g).sum(0)
        c["fn_child"] += (~z & g & zc).sum(0)
        c["fp_parent"] += (z & ~g & pc).sum(0)
        c["fired"] += z.sum(0)
        freq += gt.sum(0)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)  # [F]
    best = torch.zeros(N).scatter_reduce(0, match, f1, "amax")  # best F1 of any latent per feature
    first = torch.zeros(N, dtype=torch.bool)
    duplicate = torch.zeros(F, dtype=torch.bool)
    for i in torch.argsort(f1, descending=True).tolist():  # the best latent of a feature is its own, the rest dupes
        j = int(match[i])
        duplicate[i] = bool(first[j])
        first[j] = True
    dead = c["fired"] == 0
    bad = (f1 < 0.5) & ~dead & ~duplicate
    recall_lost = fn / (tp + fn).clamp_min(1)
    precision_lost = fp / (tp + fp).clamp_min(1)
    absorbed = bad & (recall_lost >= precision_lost) & (c["fn_child"] > fn / 2)
    siblings = bad & ~absorbed & (c["fp_parent"] > fp / 2) & (fp > 0)
    other = bad & ~absorbed & ~siblings
    label = torch.zeros(F, dtype=torch.long)  # index into LABELS
    for i, m in enumerate([dead, duplicate & ~dead, absorbed, siblings, other], start=1):
        label[m] = i
    p = freq / n
    bands = {"p >= 1e-2": p >= 1e-2, "1e-3 <= p < 1e-2": (p >= 1e-3) & (p < 1e-2), "p < 1e-3": p < 1e-3}
    return {
        "latents": F, "fine": int(((f1 >= 0.5) & ~duplicate).sum()), "dead": int(dead.sum()),
        "duplicate": int((duplicate & ~dead).sum()), "absorbed": int(absorbed.sum()),
        "merged_siblings": int(siblings.sum()), "merged_other": int(other.sum()),
        "found_by_band": {k: f"{int((best[m] >= 0.5).sum())}/{int(m.sum())}" for k, m in bands.items()},
        "mean_f1": float(f1.mean()),
        "per_latent": {"match": match, "f1": f1, "label": label, **c},
    }


LABELS = ["fine", "dead", "duplicate", "absorbed", "merged_siblings", "merged_other"]
