"""Trainer checkpoints: tensors in safetensors, the rest in JSON, swapped into place atomically.

Layout: ``<out>/checkpoint/{state.safetensors, trainer_state.json}``. A new checkpoint is written to
``checkpoint.tmp`` and renamed over the old one (which is first moved to ``checkpoint.old``), so a kill at any
moment leaves one complete checkpoint on disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.io import read_json, write_json

STATE = "state.safetensors"
META = "trainer_state.json"


def save_checkpoint(out: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    final, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / STATE))
    write_json(tmp / META, meta)
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def find_checkpoint(out: Path) -> Path | None:
    for name in ("checkpoint", "checkpoint.old"):  # .old survives a kill between the two renames
        p = out / name
        if (p / STATE).is_file() and (p / META).is_file():
            return p
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    return load_file(str(path / STATE)), read_json(path / META, "trainer state")


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v if isinstance(v, Tensor) else torch.tensor(v)
    return tensors, sd["param_groups"]


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})
